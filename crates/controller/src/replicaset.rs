//! The ReplicaSet and ReplicationController controllers (upstream's `replicaset` package runs
//! both with the same logic): keep `replicas` active pods from the template, adopt matching
//! orphans, release owned pods that no longer match, and report status.
//!
//! Pods come from the manager's shared pod cache ([`crate::informer::PodCache`]): a sync reads
//! the pods its object controls and the orphans of its namespace from the cache's indexes, and
//! pod events sync the pod's controller (orphans: every matching owner). Because the cache may
//! lag the sync's own writes, creations and deletions are recorded as upstream's
//! expectations ([`crate::expectations`]): a sync creates or deletes only when every pod of
//! its previous burst has been observed (or the record is 5 minutes old).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use futures::future::join_all;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec, ReplicationController};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt as _};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::ReconcileError;
use crate::events::EventType;
use crate::expectations::Expectations;
use crate::informer::PodEvent;
use crate::util::{self, Backoff, Shared};

/// Upstream's `BurstReplicas`: at most this many creations or deletions per sync.
const BURST_REPLICAS: usize = 500;

/// What the ReplicaSet and ReplicationController controllers need from their object.
pub(crate) trait Replicated:
    Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
    + Clone
    + DeserializeOwned
    + Serialize
    + Debug
    + Send
    + Sync
    + 'static
{
    fn selector(&self) -> Option<LabelSelector>;
    fn replicas(&self) -> i32;
    fn min_ready_seconds(&self) -> i32;
    fn template(&self) -> Option<&PodTemplateSpec>;
    fn status_value(&self) -> Value;
    /// The `source.component` of this controller's events.
    const COMPONENT: &'static str;
}

/// An error as upstream's events show it: the API's message for an API error.
pub(crate) fn api_error_text(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => s.message.clone(),
        other => other.to_string(),
    }
}

impl Replicated for ReplicaSet {
    const COMPONENT: &'static str = "replicaset-controller";
    fn selector(&self) -> Option<LabelSelector> {
        self.spec.as_ref().map(|s| s.selector.clone())
    }
    fn replicas(&self) -> i32 {
        self.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
    }
    fn min_ready_seconds(&self) -> i32 {
        self.spec
            .as_ref()
            .and_then(|s| s.min_ready_seconds)
            .unwrap_or(0)
    }
    fn template(&self) -> Option<&PodTemplateSpec> {
        self.spec.as_ref()?.template.as_ref()
    }
    fn status_value(&self) -> Value {
        serde_json::to_value(&self.status).unwrap_or(Value::Null)
    }
}

impl Replicated for ReplicationController {
    const COMPONENT: &'static str = "replication-controller";
    fn selector(&self) -> Option<LabelSelector> {
        let spec = self.spec.as_ref()?;
        // An RC without a selector selects its template's labels (upstream defaulting).
        let labels = spec
            .selector
            .clone()
            .filter(|s| !s.is_empty())
            .or_else(|| spec.template.as_ref()?.metadata.as_ref()?.labels.clone())?;
        Some(LabelSelector {
            match_labels: Some(labels),
            match_expressions: None,
        })
    }
    fn replicas(&self) -> i32 {
        self.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
    }
    fn min_ready_seconds(&self) -> i32 {
        self.spec
            .as_ref()
            .and_then(|s| s.min_ready_seconds)
            .unwrap_or(0)
    }
    fn template(&self) -> Option<&PodTemplateSpec> {
        self.spec.as_ref()?.template.as_ref()
    }
    fn status_value(&self) -> Value {
        serde_json::to_value(&self.status).unwrap_or(Value::Null)
    }
}

struct Ctx {
    shared: Arc<Shared>,
    backoff: Backoff,
    expectations: Expectations,
}

pub(crate) async fn run_replicasets(shared: Arc<Shared>, stop: watch::Receiver<bool>) {
    run_kind::<ReplicaSet>("replicaset", shared, stop).await;
}

pub(crate) async fn run_replication_controllers(shared: Arc<Shared>, stop: watch::Receiver<bool>) {
    run_kind::<ReplicationController>("replicationcontroller", shared, stop).await;
}

async fn run_kind<K: Replicated>(
    name: &'static str,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
) {
    // Subscribed before the wait: no pod event after it is missed.
    let pod_events = shared.pods.subscribe();
    if !shared.pods.wait_synced(stop.clone()).await {
        tracing::debug!(controller = name, "stopped before the pod cache synced");
        return;
    }
    let client = shared.client.clone();
    let controller = Controller::new(Api::<K>::all(client), watcher::Config::default())
        .with_config(kube::runtime::controller::Config::default().concurrency(shared.concurrency));
    let store = controller.store();
    let ctx = Arc::new(Ctx {
        shared,
        backoff: Backoff::default(),
        expectations: Expectations::default(),
    });
    // Pod events from the shared cache: expectations are lowered, then the pod's controller
    // (or, for an orphan, every matching owner in its namespace) is synced.
    let triggers = {
        let ctx = ctx.clone();
        futures::stream::unfold(pod_events, |mut rx| async move {
            rx.recv().await.map(|e| (e, rx))
        })
        .flat_map(move |event| {
            futures::stream::iter(owners_to_sync(&event, &store, &ctx.expectations))
        })
    };
    let controller = controller
        .reconcile_on(triggers)
        .graceful_shutdown_on(crate::stopped(stop.clone()));
    let abandon = util::abandon_unsynced(controller.store(), stop);
    util::drain(
        name,
        abandon,
        controller.run(
            |obj, ctx| async move {
                let key = util::key_of(obj.meta());
                let r = sync(obj.as_ref(), &ctx.shared, &ctx.expectations).await;
                if r.is_ok() {
                    ctx.backoff.success(&key);
                }
                r
            },
            |obj, _e, ctx| util::error_action(&ctx.backoff, &util::key_of(obj.meta())),
            ctx,
        ),
    )
    .await;
}

/// `namespace/name` of a pod, as deletion expectations name it.
fn pod_key(pod: &Pod) -> String {
    util::key_of(&pod.metadata)
}

/// Upstream's pod event handlers (`addPod`, `updatePod`, `deletePod`): the owners to sync
/// for one pod event, lowering the expectations of the pod's controller on the way.
pub(crate) fn owners_to_sync<K: Replicated>(
    event: &PodEvent,
    store: &Store<K>,
    expectations: &Expectations,
) -> Vec<ObjectRef<K>> {
    let kind = K::kind(&());
    // The pod's controller if it is one of ours: (uid, reference).
    let ours = |pod: &Pod| {
        let r = util::controller_of(&pod.metadata)?;
        (r.kind == kind).then(|| {
            let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
            (r.uid.clone(), ObjectRef::<K>::new(&r.name).within(ns))
        })
    };
    let deleted = |pod: &Pod| -> Vec<ObjectRef<K>> {
        ours(pod)
            .map(|(uid, r)| {
                expectations.deletion_observed(&uid, &pod_key(pod));
                r
            })
            .into_iter()
            .collect()
    };
    // Every owner in the pod's namespace whose selector matches it (for orphans).
    let matching = |pod: &Pod| -> Vec<ObjectRef<K>> {
        let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
        store
            .state()
            .iter()
            .filter(|o| o.meta().namespace.as_deref() == Some(ns))
            .filter(|o| {
                o.selector().is_some_and(|s| {
                    util::selects(&s, pod.metadata.labels.as_ref()).unwrap_or(false)
                })
            })
            .map(|o| ObjectRef::from_obj(o.as_ref()))
            .collect()
    };
    match event {
        // A pod that shows up already terminating (a relist) is a deletion, not a creation.
        PodEvent::Added(pod) if pod.metadata.deletion_timestamp.is_some() => deleted(pod),
        PodEvent::Added(pod) => match ours(pod) {
            Some((uid, r)) => {
                expectations.creation_observed(&uid);
                vec![r]
            }
            None if util::controller_of(&pod.metadata).is_none() => matching(pod),
            None => Vec::new(),
        },
        PodEvent::Updated { old, new } => {
            let labels_changed = old.metadata.labels != new.metadata.labels;
            if new.metadata.deletion_timestamp.is_some() {
                let mut out = deleted(new);
                if labels_changed || ours(old).map(|o| o.0) != ours(new).map(|n| n.0) {
                    out.extend(deleted(old));
                }
                return out;
            }
            let old_ctl = util::controller_of(&old.metadata).map(|r| r.uid.as_str());
            let new_ctl = util::controller_of(&new.metadata).map(|r| r.uid.as_str());
            let ctl_changed = old_ctl != new_ctl;
            let mut out = Vec::new();
            if ctl_changed && let Some((_, r)) = ours(old) {
                out.push(r);
            }
            match ours(new) {
                Some((_, r)) => out.push(r),
                None if new_ctl.is_none() && (labels_changed || ctl_changed) => {
                    out.extend(matching(new));
                }
                None => {}
            }
            out
        }
        PodEvent::Deleted(pod) => deleted(pod),
    }
}

/// One sync of one ReplicaSet or ReplicationController.
#[tracing::instrument(skip_all, fields(kind = %K::kind(&()), object = %util::key_of(rs.meta())))]
pub(crate) async fn sync<K: Replicated>(
    rs: &K,
    shared: &Shared,
    expectations: &Expectations,
) -> Result<Action, ReconcileError> {
    let client = &shared.client;
    let meta = rs.meta();
    let ns = meta.namespace.clone().unwrap_or_default();
    let name = meta.name.clone().unwrap_or_default();
    let uid = meta.uid.clone().unwrap_or_default();
    let deleting = meta.deletion_timestamp.is_some();
    let selector = rs
        .selector()
        .ok_or_else(|| ReconcileError::Invalid("no selector".into()))?;
    let pods_api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    // Expectations first, then the cache: once satisfied, every pod they waited for is in it.
    let needs_sync = expectations.satisfied(&uid);
    let (controlled, orphans) = shared
        .pods
        .read(|ix| (ix.controlled_by(&uid), ix.orphans_in(&ns)));

    // Claim: adopt matching orphans, release owned pods that stopped matching.
    let mut owned: Vec<Arc<Pod>> = Vec::new();
    for pod in controlled {
        let matches = util::selects(&selector, pod.metadata.labels.as_ref())?;
        if matches || deleting {
            owned.push(pod);
        } else {
            release(&pods_api, &pod, &uid).await?;
            tracing::info!(pod = %pod.name_any(), "released pod that no longer matches the selector");
        }
    }
    let mut can_adopt: Option<bool> = None;
    for pod in orphans {
        let matches = util::selects(&selector, pod.metadata.labels.as_ref())?;
        if !matches || deleting || pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        // Upstream re-reads the owner before adopting: a stale cache must not adopt for a
        // deleted or recreated owner.
        if can_adopt.is_none() {
            let fresh = Api::<K>::namespaced(client.clone(), &ns)
                .get_opt(&name)
                .await?;
            can_adopt = Some(fresh.is_some_and(|f| {
                f.meta().uid.as_deref() == Some(uid.as_str())
                    && f.meta().deletion_timestamp.is_none()
            }));
        }
        if can_adopt != Some(true) {
            break;
        }
        let pod_name = pod.name_any();
        if let Some(pod) = adopt(&pods_api, &pod, util::controller_ref(rs)).await? {
            tracing::info!(pod = %pod_name, "adopted orphan pod");
            owned.push(Arc::new(pod));
        }
    }
    let active: Vec<&Pod> = owned
        .iter()
        .map(AsRef::as_ref)
        .filter(|p| util::pod_active(p))
        .collect();

    // Manage replicas.
    let mut failure: Option<String> = None;
    if needs_sync && !deleting {
        let want = usize::try_from(rs.replicas().max(0)).unwrap_or(0);
        if active.len() < want {
            let n = (want - active.len()).min(BURST_REPLICAS);
            let template = rs
                .template()
                .ok_or_else(|| ReconcileError::Invalid("no pod template".into()))?;
            let pod = pod_from_template(template, &name, util::controller_ref(rs));
            expectations.expect_creations(&uid, n);
            let (created, err) = slow_start(n, || {
                let api = pods_api.clone();
                let pod = pod.clone();
                async move {
                    match api.create(&PostParams::default(), &pod).await {
                        Ok(p) => {
                            shared.events.event(
                                K::COMPONENT,
                                rs,
                                EventType::Normal,
                                "SuccessfulCreate",
                                format!("Created pod: {}", p.name_any()),
                            );
                            Ok(())
                        }
                        Err(e) => {
                            shared.events.event(
                                K::COMPONENT,
                                rs,
                                EventType::Warning,
                                "FailedCreate",
                                format!("Error creating: {}", api_error_text(&e)),
                            );
                            Err(e)
                        }
                    }
                }
            })
            .await;
            // Pods that failed or were never attempted will not be seen created.
            for _ in created..n {
                expectations.creation_observed(&uid);
            }
            tracing::info!(created, wanted = n, "created pods");
            if let Some(e) = err {
                failure = Some(e.to_string());
            }
        } else if active.len() > want {
            let n = (active.len() - want).min(BURST_REPLICAS);
            let victims = pods_to_delete(&active, n);
            expectations.expect_deletions(&uid, victims.iter().map(|p| pod_key(p)));
            let results = join_all(victims.iter().map(|p| {
                let api = pods_api.clone();
                let pname = p.metadata.name.clone().unwrap_or_default();
                let key = pod_key(p);
                let uid = uid.as_str();
                async move {
                    let r = api.delete(&pname, &DeleteParams::default()).await;
                    if r.is_err() {
                        // No deletion will be seen for this pod (404: it is gone already).
                        expectations.deletion_observed(uid, &key);
                    }
                    match r {
                        Ok(_) => {
                            shared.events.event(
                                K::COMPONENT,
                                rs,
                                EventType::Normal,
                                "SuccessfulDelete",
                                format!("Deleted pod: {pname}"),
                            );
                            Ok(())
                        }
                        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
                        Err(e) => {
                            shared.events.event(
                                K::COMPONENT,
                                rs,
                                EventType::Warning,
                                "FailedDelete",
                                format!("Error deleting: {}", api_error_text(&e)),
                            );
                            Err(e)
                        }
                    }
                }
            }))
            .await;
            tracing::info!(deleted = n, "deleted surplus pods");
            if let Some(Err(e)) = results.into_iter().find(Result::is_err) {
                failure = Some(e.to_string());
            }
        }
    }

    // Status, from the pods as they were at the start of this sync (as upstream).
    let now = util::now();
    let template_labels = rs
        .template()
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let fully_labeled = active
        .iter()
        .filter(|p| {
            let labels = p.metadata.labels.clone().unwrap_or_default();
            template_labels
                .iter()
                .all(|(k, v)| labels.get(k) == Some(v))
        })
        .count();
    let ready = active.iter().filter(|p| util::pod_ready(p)).count();
    let min_ready = rs.min_ready_seconds();
    let available = active
        .iter()
        .filter(|p| util::pod_available(p, min_ready, now))
        .count();
    let old_status = rs.status_value();
    let mut conditions: Vec<Value> = old_status
        .get("conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let had_failure = conditions.iter().any(|c| c["type"] == "ReplicaFailure");
    match &failure {
        Some(msg) if !had_failure => conditions.push(json!({
            "type": "ReplicaFailure",
            "status": "True",
            "lastTransitionTime": now.to_string(),
            "reason": if active.len() < usize::try_from(rs.replicas().max(0)).unwrap_or(0) {"FailedCreate"} else {"FailedDelete"},
            "message": msg,
        })),
        None if had_failure => conditions.retain(|c| c["type"] != "ReplicaFailure"),
        _ => {}
    }
    let mut status = json!({
        "replicas": active.len(),
        "fullyLabeledReplicas": fully_labeled,
        "readyReplicas": ready,
        "availableReplicas": available,
        "observedGeneration": meta.generation,
    });
    if !conditions.is_empty() {
        status["conditions"] = json!(conditions);
    }
    if status_differs(&old_status, &status) {
        let mut patch = status.clone();
        for k in ["fullyLabeledReplicas", "readyReplicas", "availableReplicas"] {
            if patch[k] == 0 {
                patch[k] = Value::Null; // omitempty upstream
            }
        }
        if conditions.is_empty() {
            patch["conditions"] = Value::Null;
        }
        Api::<K>::namespaced(client.clone(), &ns)
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": patch })),
            )
            .await?;
    }
    if let Some(msg) = failure {
        return Err(ReconcileError::Invalid(msg));
    }
    // Pods that are ready but not yet available become available later: look again then.
    if min_ready > 0 && ready > available {
        return Ok(Action::requeue(Duration::from_secs(
            u64::try_from(min_ready).unwrap_or(1).max(1),
        )));
    }
    Ok(Action::await_change())
}

/// Compares the status fields this controller owns (absent = 0).
fn status_differs(old: &Value, new: &Value) -> bool {
    let num = |v: &Value, k: &str| v.get(k).and_then(Value::as_i64).unwrap_or(0);
    [
        "replicas",
        "fullyLabeledReplicas",
        "readyReplicas",
        "availableReplicas",
        "observedGeneration",
    ]
    .iter()
    .any(|k| num(old, k) != num(new, k))
        || old.get("conditions").cloned().unwrap_or(json!([]))
            != new.get("conditions").cloned().unwrap_or(json!([]))
}

/// Creates up to `count` things in batches of 1, 2, 4, ... and stops at the first batch with
/// a failure (upstream's `slowStartBatch`): a broken template fails one create, not 500.
pub(crate) async fn slow_start<F, Fut>(count: usize, make: F) -> (usize, Option<kube::Error>)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<(), kube::Error>>,
{
    let mut done = 0;
    let mut batch = 1;
    while done < count {
        let size = batch.min(count - done);
        let results = join_all((0..size).map(|_| make())).await;
        let mut err = None;
        for r in results {
            match r {
                Ok(()) => done += 1,
                Err(e) => err = Some(e),
            }
        }
        if err.is_some() {
            return (done, err);
        }
        batch *= 2;
    }
    (done, None)
}

/// A pod from `template`, named `<owner>-<random>` by the apiserver, controlled by `owner`.
pub(crate) fn pod_from_template(
    template: &PodTemplateSpec,
    owner_name: &str,
    owner: OwnerReference,
) -> Pod {
    let tmeta = template.metadata.clone().unwrap_or_default();
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{owner_name}-")),
            labels: tmeta.labels,
            annotations: tmeta.annotations,
            finalizers: tmeta.finalizers,
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        spec: template.spec.clone(),
        status: None,
    }
}

async fn adopt(
    api: &Api<Pod>,
    pod: &Pod,
    owner: OwnerReference,
) -> Result<Option<Pod>, ReconcileError> {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let mut refs = pod.metadata.owner_references.clone().unwrap_or_default();
    refs.push(owner);
    let patch = json!({"metadata": {
        "ownerReferences": refs,
        "uid": pod.metadata.uid,
    }});
    match api
        .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
        .await
    {
        Ok(p) => Ok(Some(p)),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(None),
        Err(e) => Err(e.into()),
    }
}

async fn release(api: &Api<Pod>, pod: &Pod, owner_uid: &str) -> Result<(), ReconcileError> {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let refs: Vec<_> = pod
        .metadata
        .owner_references
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r.uid != owner_uid)
        .collect();
    let patch = json!({"metadata": {
        "ownerReferences": if refs.is_empty() { Value::Null } else { json!(refs) },
        "uid": pod.metadata.uid,
    }});
    match api
        .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The `n` pods to delete first, in upstream's order (`ActivePodsWithRanks`): unscheduled
/// before scheduled; Pending before Unknown before Running; not ready before ready; lower
/// `controller.kubernetes.io/pod-deletion-cost` first; more sibling pods on the same node
/// first; ready for a shorter time first; more container restarts first; newer first.
pub(crate) fn pods_to_delete<'a>(pods: &[&'a Pod], n: usize) -> Vec<&'a Pod> {
    let mut on_node: HashMap<&str, usize> = HashMap::new();
    for p in pods {
        if let Some(node) = p.spec.as_ref().and_then(|s| s.node_name.as_deref()) {
            *on_node.entry(node).or_default() += 1;
        }
    }
    let mut ranked: Vec<&Pod> = pods.to_vec();
    ranked.sort_by(|a, b| {
        let key = |p: &Pod| {
            let node = p.spec.as_ref().and_then(|s| s.node_name.as_deref());
            let phase = match util::pod_phase(p) {
                "Unknown" => 1,
                "Running" => 2,
                _ => 0,
            };
            let cost: i64 = p
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get("controller.kubernetes.io/pod-deletion-cost"))
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            let siblings = node.map_or(0, |n| on_node.get(n).copied().unwrap_or(0));
            let ready_since = util::pod_ready_since(p).flatten();
            let restarts: i32 = p
                .status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .map_or(0, |cs| cs.iter().map(|c| c.restart_count).sum());
            let created = p.metadata.creation_timestamp.as_ref().map(|t| t.0);
            (
                node.is_some(),
                phase,
                util::pod_ready(p),
                cost,
                std::cmp::Reverse(siblings),
                std::cmp::Reverse(ready_since),
                std::cmp::Reverse(restarts),
                std::cmp::Reverse(created),
            )
        };
        key(a).cmp(&key(b))
    });
    ranked.truncate(n);
    ranked
}

/// Labels of a pod template, for callers that build selectors.
#[allow(dead_code)]
pub(crate) fn template_labels(t: &PodTemplateSpec) -> BTreeMap<String, String> {
    t.metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn pod(name: &str, node: Option<&str>, phase: &str, ready: bool) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"containers": [], "nodeName": node},
            "status": {"phase": phase, "conditions": [
                {"type": "Ready", "status": if ready {"True"} else {"False"},
                 "lastTransitionTime": "2026-01-01T00:00:10Z"}
            ]}
        }))
        .unwrap()
    }

    #[test]
    fn deletion_prefers_unscheduled_then_pending_then_not_ready() {
        let running_ready = pod("a", Some("n1"), "Running", true);
        let running_not_ready = pod("b", Some("n1"), "Running", false);
        let pending = pod("c", Some("n1"), "Pending", false);
        let unscheduled = pod("d", None, "Pending", false);
        let all = [&running_ready, &running_not_ready, &pending, &unscheduled];
        let order: Vec<_> = pods_to_delete(&all, 4)
            .iter()
            .map(|p| p.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(order, ["d", "c", "b", "a"]);
        assert_eq!(pods_to_delete(&all, 1).len(), 1);
    }

    /// A ReplicaSet synced again and again while the pod cache lags (it has not seen the
    /// pods of the first burst) never creates more than `replicas` pods: its expectations
    /// hold it back until the cache's events report them. Against a real apiserver.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lagging_cache_never_creates_more_than_replicas() {
        use k8s_openapi::api::core::v1::ServiceAccount;
        use kube::api::ListParams;

        let apiserver = rk3s_apiserver::EmbeddedApiserver::start().await.unwrap();
        let client = apiserver.client().await.unwrap();
        let sa: ServiceAccount =
            serde_json::from_value(json!({"metadata": {"name": "default"}})).unwrap();
        Api::<ServiceAccount>::namespaced(client.clone(), "default")
            .create(&PostParams::default(), &sa)
            .await
            .unwrap();
        let shared = Shared {
            client: client.clone(),
            concurrency: 1,
            clock: Arc::new(crate::util::SystemClock),
            events: crate::events::Recorder::new(client.clone()),
            pods: Arc::default(),
        };
        let rs_api: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
        let pods_api: Api<Pod> = Api::namespaced(client.clone(), "default");
        let rs: ReplicaSet = serde_json::from_value(json!({
            "metadata": {"name": "web"},
            "spec": {
                "replicas": 5,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}},
                             "spec": {"containers": [{"name": "c", "image": "busybox"}]}}
            }
        }))
        .unwrap();
        let rs = rs_api.create(&PostParams::default(), &rs).await.unwrap();
        let uid = rs.metadata.uid.clone().unwrap();
        let expectations = Expectations::default();

        // The cache never saw a pod: three syncs, one burst.
        for _ in 0..3 {
            sync(&rs, &shared, &expectations).await.unwrap();
        }
        let pods = pods_api.list(&ListParams::default()).await.unwrap().items;
        assert_eq!(pods.len(), 5, "one burst of 5, not one per sync");
        assert!(!expectations.satisfied(&uid));

        // The cache catches up; its events (through the controller's handler) satisfy the
        // expectations and name the ReplicaSet.
        let mut events = shared.pods.subscribe();
        shared
            .pods
            .update(|ix| pods.into_iter().filter_map(|p| ix.apply(p)).collect());
        let (store, _writer) = kube::runtime::reflector::store::<ReplicaSet>();
        let mut seen = 0;
        while let Ok(event) = events.try_recv() {
            let owners = owners_to_sync(&event, &store, &expectations);
            assert_eq!(owners, [ObjectRef::from_obj(&rs)]);
            seen += 1;
        }
        assert_eq!(seen, 5);
        assert!(expectations.satisfied(&uid));

        // Now the sync counts the pods, creates none and reports them.
        sync(&rs, &shared, &expectations).await.unwrap();
        assert_eq!(
            pods_api
                .list(&ListParams::default())
                .await
                .unwrap()
                .items
                .len(),
            5
        );
        let status = rs_api.get("web").await.unwrap().status.unwrap();
        assert_eq!(status.replicas, 5);
    }

    #[tokio::test]
    async fn slow_start_doubles_batches_and_stops_at_failure() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let calls = AtomicUsize::new(0);
        let (done, err) = slow_start(10, || {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                if n == 4 {
                    Err(kube::Error::LinesCodecMaxLineLengthExceeded)
                } else {
                    Ok(())
                }
            }
        })
        .await;
        // Batches 1, 2, then 4 of which one fails: 6 successes, 7 calls, no fourth batch.
        assert_eq!(calls.load(Ordering::SeqCst), 7);
        assert_eq!(done, 6);
        assert!(err.is_some());
    }
}
