//! The garbage collector: deletes objects whose owners are all gone (background
//! propagation), carries out foreground deletion (`foregroundDeletion` finalizer: delete the
//! dependents, wait for those with `blockOwnerDeletion`, then drop the finalizer) and orphaning
//! (`orphan` finalizer: remove the owner's references from its dependents, then drop the
//! finalizer), as upstream's `pkg/controller/garbagecollector`.
//!
//! It keeps a graph of the objects of the kinds in [`WATCHED`] (uid → owners, owner uid →
//! dependents) from one watch per kind. Owners of other kinds are looked up with a live GET
//! (discovery resolves their resource), and before deleting a dependent every owner that the
//! graph does not know is confirmed absent by a live GET, as upstream does — a stale cache
//! must never delete anything.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{
    Api, DeleteParams, DynamicObject, Patch, PatchParams, Preconditions, PropagationPolicy,
};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Client, Resource};
use serde_json::json;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::ReconcileError;
use crate::util::{Backoff, Shared};

pub(crate) const FOREGROUND: &str = "foregroundDeletion";
pub(crate) const ORPHAN: &str = "orphan";

/// (resource, namespaced) for every kind the collector watches: the kinds that own or are
/// owned in a cluster without add-ons.
fn watched() -> Vec<(ApiResource, bool)> {
    use k8s_openapi::api::discovery::v1 as discovery;
    use k8s_openapi::api::{apps::v1 as apps, batch::v1 as batch, core::v1 as core};
    vec![
        (ApiResource::erase::<core::Pod>(&()), true),
        (ApiResource::erase::<apps::ReplicaSet>(&()), true),
        (ApiResource::erase::<apps::Deployment>(&()), true),
        (ApiResource::erase::<apps::StatefulSet>(&()), true),
        (ApiResource::erase::<apps::DaemonSet>(&()), true),
        (ApiResource::erase::<apps::ControllerRevision>(&()), true),
        (ApiResource::erase::<core::ReplicationController>(&()), true),
        (ApiResource::erase::<batch::Job>(&()), true),
        (ApiResource::erase::<batch::CronJob>(&()), true),
        (ApiResource::erase::<core::Service>(&()), true),
        (ApiResource::erase::<core::Endpoints>(&()), true),
        (ApiResource::erase::<discovery::EndpointSlice>(&()), true),
        (ApiResource::erase::<core::ConfigMap>(&()), true),
        (ApiResource::erase::<core::Secret>(&()), true),
        (ApiResource::erase::<core::ServiceAccount>(&()), true),
        (ApiResource::erase::<core::PersistentVolumeClaim>(&()), true),
        (ApiResource::erase::<core::Node>(&()), false),
    ]
}

/// The kind names `watched()` covers, for documentation and tests.
#[cfg(test)]
const WATCHED: &[&str] = &[
    "Pod",
    "ReplicaSet",
    "Deployment",
    "StatefulSet",
    "DaemonSet",
    "ControllerRevision",
    "ReplicationController",
    "Job",
    "CronJob",
    "Service",
    "Endpoints",
    "EndpointSlice",
    "ConfigMap",
    "Secret",
    "ServiceAccount",
    "PersistentVolumeClaim",
    "Node",
];

#[derive(Debug, Clone)]
struct Node {
    kind: usize,
    namespace: Option<String>,
    name: String,
    owners: Vec<OwnerReference>,
    deleting: bool,
    finalizers: Vec<String>,
}

enum Msg {
    Apply(usize, DynamicObject),
    Delete(DynamicObject),
    Init(usize),
    InitDone(usize),
}

struct Graph {
    kinds: Vec<(ApiResource, bool)>,
    nodes: HashMap<String, Node>,
    dependents: HashMap<String, HashSet<String>>,
    /// Per kind: uids seen since the last (re)list began.
    relisting: HashMap<usize, HashSet<String>>,
    client: Client,
    queue: VecDeque<String>,
    queued: HashSet<String>,
    retries: BTreeMap<Instant, Vec<String>>,
    backoff: Backoff,
    /// Resolved resources of owner kinds outside `kinds`, by (group, kind).
    discovered: HashMap<(String, String), Option<(ApiResource, bool)>>,
}

pub(crate) async fn run(shared: Arc<Shared>, stop: watch::Receiver<bool>) {
    let kinds = watched();
    let (tx, mut rx) = mpsc::unbounded_channel::<Msg>();
    let mut watchers = Vec::new();
    for (i, (ar, _)) in kinds.iter().enumerate() {
        let api: Api<DynamicObject> = Api::all_with(shared.client.clone(), ar);
        let tx = tx.clone();
        watchers.push(tokio::spawn(async move {
            let mut s = watcher(api, watcher::Config::default())
                .default_backoff()
                .boxed();
            while let Some(ev) = s.next().await {
                let msg = match ev {
                    Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => Msg::Apply(i, o),
                    Ok(watcher::Event::Delete(o)) => Msg::Delete(o),
                    Ok(watcher::Event::Init) => Msg::Init(i),
                    Ok(watcher::Event::InitDone) => Msg::InitDone(i),
                    Err(e) => {
                        tracing::debug!(error = %e, "garbage collector watch failed; retrying");
                        continue;
                    }
                };
                if tx.send(msg).is_err() {
                    return;
                }
            }
        }));
    }
    drop(tx);
    let mut g = Graph {
        kinds,
        nodes: HashMap::new(),
        dependents: HashMap::new(),
        relisting: HashMap::new(),
        client: shared.client.clone(),
        queue: VecDeque::new(),
        queued: HashSet::new(),
        retries: BTreeMap::new(),
        backoff: Backoff::default(),
        discovered: HashMap::new(),
    };
    let stopped = crate::stopped(stop);
    tokio::pin!(stopped);
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            _ = &mut stopped => break,
            msg = rx.recv() => match msg {
                Some(m) => {
                    g.handle(m);
                    while let Ok(m) = rx.try_recv() {
                        g.handle(m);
                    }
                }
                None => break,
            },
            _ = tick.tick() => g.due_retries(),
        }
        // Work the queue, still taking events between items.
        while let Some(uid) = g.queue.pop_front() {
            g.queued.remove(&uid);
            match g.process(&uid).await {
                Ok(Some(after)) => g.retry_after(uid, after),
                Ok(None) => g.backoff.success(&uid),
                Err(e) => {
                    let delay = g.backoff.failure(&uid);
                    tracing::warn!(%uid, error = %e, ?delay, "garbage collection failed; requeued");
                    g.retry_after(uid, delay);
                }
            }
            while let Ok(m) = rx.try_recv() {
                g.handle(m);
            }
        }
    }
    for w in watchers {
        w.abort();
    }
}

impl Graph {
    fn enqueue(&mut self, uid: &str) {
        if self.queued.insert(uid.to_string()) {
            self.queue.push_back(uid.to_string());
        }
    }

    fn retry_after(&mut self, uid: String, after: Duration) {
        self.retries
            .entry(Instant::now() + after)
            .or_default()
            .push(uid);
    }

    fn due_retries(&mut self) {
        let now = Instant::now();
        let later = self.retries.split_off(&now);
        let due = std::mem::replace(&mut self.retries, later);
        for uid in due.into_values().flatten() {
            self.enqueue(&uid);
        }
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Init(k) => {
                self.relisting.insert(k, HashSet::new());
            }
            Msg::InitDone(k) => {
                let seen = self.relisting.remove(&k).unwrap_or_default();
                let gone: Vec<String> = self
                    .nodes
                    .iter()
                    .filter(|(uid, n)| n.kind == k && !seen.contains(*uid))
                    .map(|(uid, _)| uid.clone())
                    .collect();
                for uid in gone {
                    self.remove(&uid);
                }
            }
            Msg::Apply(k, obj) => {
                let Some(uid) = obj.meta().uid.clone() else {
                    return;
                };
                if let Some(seen) = self.relisting.get_mut(&k) {
                    seen.insert(uid.clone());
                }
                let meta = obj.meta();
                let node = Node {
                    kind: k,
                    namespace: meta.namespace.clone(),
                    name: meta.name.clone().unwrap_or_default(),
                    owners: meta.owner_references.clone().unwrap_or_default(),
                    deleting: meta.deletion_timestamp.is_some(),
                    finalizers: meta.finalizers.clone().unwrap_or_default(),
                };
                if let Some(old) = self.nodes.get(&uid) {
                    for o in &old.owners {
                        if let Some(d) = self.dependents.get_mut(&o.uid) {
                            d.remove(&uid);
                        }
                    }
                }
                for o in &node.owners {
                    self.dependents
                        .entry(o.uid.clone())
                        .or_default()
                        .insert(uid.clone());
                }
                let interesting = !node.owners.is_empty()
                    || (node.deleting
                        && node
                            .finalizers
                            .iter()
                            .any(|f| f == FOREGROUND || f == ORPHAN));
                let foreground = node.deleting && node.finalizers.iter().any(|f| f == FOREGROUND);
                let owners: Vec<String> = node.owners.iter().map(|o| o.uid.clone()).collect();
                self.nodes.insert(uid.clone(), node);
                if interesting {
                    self.enqueue(&uid);
                }
                if foreground {
                    let deps: Vec<String> = self
                        .dependents
                        .get(&uid)
                        .into_iter()
                        .flatten()
                        .cloned()
                        .collect();
                    for d in deps {
                        self.enqueue(&d);
                    }
                }
                // A dependent that starts or finishes deleting may unblock an owner.
                for o in owners {
                    if self.nodes.get(&o).is_some_and(|n| n.deleting) {
                        self.enqueue(&o);
                    }
                }
            }
            Msg::Delete(obj) => {
                if let Some(uid) = obj.meta().uid.clone() {
                    self.remove(&uid);
                }
            }
        }
    }

    /// An object is gone: its dependents may be garbage now, and its deleting owners may be
    /// unblocked.
    fn remove(&mut self, uid: &str) {
        let Some(node) = self.nodes.remove(uid) else {
            return;
        };
        for o in &node.owners {
            if let Some(d) = self.dependents.get_mut(&o.uid) {
                d.remove(uid);
            }
            if self.nodes.contains_key(&o.uid) {
                self.enqueue(&o.uid.clone());
            }
        }
        let deps: Vec<String> = self
            .dependents
            .get(uid)
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        for d in deps {
            self.enqueue(&d);
        }
    }

    fn api_for(&self, kind: usize, namespace: Option<&str>) -> Api<DynamicObject> {
        let (ar, namespaced) = &self.kinds[kind];
        match (namespaced, namespace) {
            (true, Some(ns)) => Api::namespaced_with(self.client.clone(), ns, ar),
            _ => Api::all_with(self.client.clone(), ar),
        }
    }

    /// Resolves an owner reference's kind to its resource.
    async fn resolve(&mut self, r: &OwnerReference) -> Option<(ApiResource, bool)> {
        let (group, version) = match r.api_version.split_once('/') {
            Some((g, v)) => (g.to_string(), v.to_string()),
            None => (String::new(), r.api_version.clone()),
        };
        if let Some((ar, ns)) = self
            .kinds
            .iter()
            .find(|(ar, _)| ar.group == group && ar.kind == r.kind)
        {
            return Some((ar.clone(), *ns));
        }
        let key = (group.clone(), r.kind.clone());
        if let Some(hit) = self.discovered.get(&key) {
            return hit.clone();
        }
        let gvk = GroupVersionKind::gvk(&group, &version, &r.kind);
        let found = match kube::discovery::pinned_kind(&self.client, &gvk).await {
            Ok((ar, caps)) => Some((ar, caps.scope == kube::discovery::Scope::Namespaced)),
            Err(e) => {
                tracing::debug!(kind = %r.kind, error = %e, "owner kind not served");
                None
            }
        };
        self.discovered.insert(key, found.clone());
        found
    }

    /// Whether the owner exists with the referenced uid, by a live read. `None` = unknown kind.
    async fn owner_exists(
        &mut self,
        r: &OwnerReference,
        namespace: Option<&str>,
    ) -> Result<Option<bool>, ReconcileError> {
        let Some((ar, namespaced)) = self.resolve(r).await else {
            return Ok(None);
        };
        let api: Api<DynamicObject> = match (namespaced, namespace) {
            (true, Some(ns)) => Api::namespaced_with(self.client.clone(), ns, &ar),
            (true, None) => return Ok(Some(false)),
            (false, _) => Api::all_with(self.client.clone(), &ar),
        };
        Ok(Some(api.get_opt(&r.name).await?.is_some_and(|o| {
            o.meta().uid.as_deref() == Some(r.uid.as_str())
        })))
    }

    /// One item. `Ok(Some(d))` = look again after `d`.
    #[tracing::instrument(skip(self))]
    async fn process(&mut self, uid: &str) -> Result<Option<Duration>, ReconcileError> {
        let Some(node) = self.nodes.get(uid).cloned() else {
            return Ok(None);
        };
        let api = self.api_for(node.kind, node.namespace.as_deref());
        if node.deleting && node.finalizers.iter().any(|f| f == ORPHAN) {
            return self.orphan_dependents(uid, &node, &api).await;
        }
        if node.deleting && node.finalizers.iter().any(|f| f == FOREGROUND) {
            return self.delete_dependents(uid, &node, &api).await;
        }
        if node.owners.is_empty() || node.deleting {
            return Ok(None);
        }
        // Classify the owners.
        let mut solid = Vec::new();
        let mut dangling = Vec::new();
        let mut waiting = Vec::new();
        let mut unknown_kind = false;
        for r in &node.owners {
            if let Some(owner) = self.nodes.get(&r.uid) {
                if owner.deleting && owner.finalizers.iter().any(|f| f == FOREGROUND) {
                    waiting.push(r.clone());
                } else {
                    solid.push(r.clone());
                }
                continue;
            }
            match self.owner_exists(r, node.namespace.as_deref()).await? {
                Some(true) => solid.push(r.clone()),
                Some(false) => dangling.push(r.clone()),
                None => {
                    unknown_kind = true;
                    solid.push(r.clone());
                }
            }
        }
        if solid.is_empty() {
            // Every owner is gone or waiting for its dependents: delete this one, in the
            // foreground when an owner waits and this object has dependents of its own.
            let has_dependents = self.dependents.get(uid).is_some_and(|d| !d.is_empty());
            let policy = if !waiting.is_empty() && has_dependents {
                PropagationPolicy::Foreground
            } else {
                PropagationPolicy::Background
            };
            tracing::info!(object = %node.name, kind = %self.kinds[node.kind].0.kind, ?policy, "deleting object whose owners are gone");
            delete(&api, &node.name, uid, policy).await?;
            return Ok(None);
        }
        if !dangling.is_empty() || waiting.iter().any(|w| w.block_owner_deletion == Some(true)) {
            // Some owners remain: drop the references to the gone ones and stop blocking the
            // ones being deleted in the foreground.
            let gone: HashSet<&str> = dangling.iter().map(|r| r.uid.as_str()).collect();
            let waiting_uids: HashSet<&str> = waiting.iter().map(|r| r.uid.as_str()).collect();
            let refs: Vec<OwnerReference> = node
                .owners
                .iter()
                .filter(|r| !gone.contains(r.uid.as_str()))
                .map(|r| {
                    let mut r = r.clone();
                    if waiting_uids.contains(r.uid.as_str()) {
                        r.block_owner_deletion = Some(false);
                    }
                    r
                })
                .collect();
            patch_owner_refs(&api, &node.name, &node.owners, &refs).await?;
        }
        // Owners whose kind the collector does not watch send no events: look again later.
        Ok(unknown_kind.then_some(Duration::from_secs(60)))
    }

    async fn orphan_dependents(
        &mut self,
        uid: &str,
        node: &Node,
        api: &Api<DynamicObject>,
    ) -> Result<Option<Duration>, ReconcileError> {
        let deps: Vec<String> = self
            .dependents
            .get(uid)
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        for d in deps {
            let Some(dep) = self.nodes.get(&d).cloned() else {
                continue;
            };
            let refs: Vec<OwnerReference> = dep
                .owners
                .iter()
                .filter(|r| r.uid != uid)
                .cloned()
                .collect();
            let dapi = self.api_for(dep.kind, dep.namespace.as_deref());
            patch_owner_refs(&dapi, &dep.name, &dep.owners, &refs).await?;
        }
        tracing::info!(object = %node.name, "orphaned dependents");
        remove_finalizer(api, &node.name, &node.finalizers, ORPHAN).await?;
        Ok(None)
    }

    async fn delete_dependents(
        &mut self,
        uid: &str,
        node: &Node,
        api: &Api<DynamicObject>,
    ) -> Result<Option<Duration>, ReconcileError> {
        let deps: Vec<String> = self
            .dependents
            .get(uid)
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        let mut blocking = 0;
        for d in deps {
            let Some(dep) = self.nodes.get(&d).cloned() else {
                continue;
            };
            let Some(r) = dep.owners.iter().find(|r| r.uid == uid) else {
                continue;
            };
            let blocks = r.block_owner_deletion == Some(true);
            if blocks {
                blocking += 1;
            }
            if dep.deleting {
                continue;
            }
            let has_dependents = self.dependents.get(&d).is_some_and(|x| !x.is_empty());
            // Only this owner keeps the dependent? Then it goes; with other live owners it
            // stays (the owner-ref cleanup above unblocks it instead).
            let other_owners = dep.owners.iter().any(|o| {
                o.uid != uid
                    && self.nodes.get(&o.uid).is_some_and(|n| {
                        !(n.deleting && n.finalizers.iter().any(|f| f == FOREGROUND))
                    })
            });
            let dapi = self.api_for(dep.kind, dep.namespace.as_deref());
            if other_owners {
                if blocks {
                    let refs: Vec<OwnerReference> = dep
                        .owners
                        .iter()
                        .map(|o| {
                            let mut o = o.clone();
                            if o.uid == uid {
                                o.block_owner_deletion = Some(false);
                            }
                            o
                        })
                        .collect();
                    patch_owner_refs(&dapi, &dep.name, &dep.owners, &refs).await?;
                    blocking -= 1;
                }
                continue;
            }
            let policy = if blocks && has_dependents {
                PropagationPolicy::Foreground
            } else {
                PropagationPolicy::Background
            };
            tracing::info!(owner = %node.name, dependent = %dep.name, ?policy, "foreground deletion: deleting dependent");
            delete(&dapi, &dep.name, &d, policy).await?;
        }
        if blocking == 0 {
            tracing::info!(object = %node.name, "foreground deletion: no blocking dependents left");
            remove_finalizer(api, &node.name, &node.finalizers, FOREGROUND).await?;
            return Ok(None);
        }
        // Dependents' deletions come back as events; look again anyway in a while.
        Ok(Some(Duration::from_secs(30)))
    }
}

async fn delete(
    api: &Api<DynamicObject>,
    name: &str,
    uid: &str,
    policy: PropagationPolicy,
) -> Result<(), ReconcileError> {
    let dp = DeleteParams {
        propagation_policy: Some(policy),
        preconditions: Some(Preconditions {
            uid: Some(uid.to_string()),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match api.delete(name, &dp).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Replaces the owner references, if they are still `old` (a JSON patch `test`).
async fn patch_owner_refs(
    api: &Api<DynamicObject>,
    name: &str,
    old: &[OwnerReference],
    new: &[OwnerReference],
) -> Result<(), ReconcileError> {
    let ops = if new.is_empty() {
        json!([
            {"op": "test", "path": "/metadata/ownerReferences", "value": old},
            {"op": "remove", "path": "/metadata/ownerReferences"},
        ])
    } else {
        json!([
            {"op": "test", "path": "/metadata/ownerReferences", "value": old},
            {"op": "replace", "path": "/metadata/ownerReferences", "value": new},
        ])
    };
    json_patch(api, name, ops).await
}

async fn remove_finalizer(
    api: &Api<DynamicObject>,
    name: &str,
    finalizers: &[String],
    which: &str,
) -> Result<(), ReconcileError> {
    let rest: Vec<&String> = finalizers.iter().filter(|f| *f != which).collect();
    let ops = if rest.is_empty() {
        json!([
            {"op": "test", "path": "/metadata/finalizers", "value": finalizers},
            {"op": "remove", "path": "/metadata/finalizers"},
        ])
    } else {
        json!([
            {"op": "test", "path": "/metadata/finalizers", "value": finalizers},
            {"op": "replace", "path": "/metadata/finalizers", "value": rest},
        ])
    };
    json_patch(api, name, ops).await
}

async fn json_patch(
    api: &Api<DynamicObject>,
    name: &str,
    ops: serde_json::Value,
) -> Result<(), ReconcileError> {
    let patch: json_patch::Patch =
        serde_json::from_value(ops).map_err(|e| ReconcileError::Invalid(e.to_string()))?;
    match api
        .patch(name, &PatchParams::default(), &Patch::<()>::Json(patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn watched_table_matches_its_documentation() {
        let kinds: Vec<String> = watched().into_iter().map(|(ar, _)| ar.kind).collect();
        assert_eq!(kinds, WATCHED);
    }
}
