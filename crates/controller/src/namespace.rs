//! The namespace controller (upstream's `namespace`): empties a namespace being deleted, then
//! removes its `kubernetes` finalizer so that the apiserver can remove it.
//!
//! A DELETE of a namespace only marks it (`deletionTimestamp`, phase `Terminating`); its
//! `spec.finalizers: [kubernetes]` holds it. For such a namespace this controller discovers
//! every namespaced resource the apiserver serves that can be deleted (built-ins and custom
//! resources alike, the preferred version of each group), deletes each resource's objects in
//! the namespace (`deletecollection`, or list and delete one by one), lists again to see what
//! remains, and writes upstream's five deletion conditions on the namespace's status. When
//! nothing remains it `PUT`s `namespaces/<name>/finalize` without `kubernetes`; the apiserver
//! then deletes the namespace (unless other finalizers still hold it). While content remains
//! (pods terminating gracefully, objects held by finalizers) it looks again after upstream's
//! estimate.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, NamespaceCondition, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{APIResourceList, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::ApiResource;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Client, ResourceExt as _};
use serde_json::json;
use tokio::sync::watch;

use crate::ReconcileError;
use crate::util::{self, Backoff, Shared};

/// The finalizer this controller owns (`spec.finalizers`, not `metadata.finalizers`).
const FINALIZER: &str = "kubernetes";

/// Upstream's default estimate, in seconds, for objects held by finalizers.
const FINALIZER_ESTIMATE_SECONDS: i64 = 15;

struct Ctx {
    shared: Arc<Shared>,
    backoff: Backoff,
}

pub(crate) async fn run(shared: Arc<Shared>, stop: watch::Receiver<bool>) {
    let controller = Controller::new(
        Api::<Namespace>::all(shared.client.clone()),
        watcher::Config::default(),
    )
    .with_config(kube::runtime::controller::Config::default().concurrency(shared.concurrency))
    .graceful_shutdown_on(crate::stopped(stop.clone()));
    let abandon = util::abandon_unsynced(controller.store(), stop);
    let ctx = Arc::new(Ctx {
        shared,
        backoff: Backoff::default(),
    });
    util::drain(
        "namespace",
        abandon,
        controller.run(
            |ns, ctx| async move {
                let key = ns.name_any();
                let r = sync(&ns, &ctx.shared.client).await;
                if r.is_ok() {
                    ctx.backoff.success(&key);
                }
                r
            },
            |ns, _e, ctx| util::error_action(&ctx.backoff, &ns.name_any()),
            ctx,
        ),
    )
    .await;
}

#[tracing::instrument(skip_all, fields(namespace = %seen.name_any()))]
async fn sync(seen: &Namespace, client: &Client) -> Result<Action, ReconcileError> {
    if seen.metadata.deletion_timestamp.is_none() {
        return Ok(Action::await_change());
    }
    let api: Api<Namespace> = Api::all(client.clone());
    let name = seen.name_any();
    // Several writers edit a terminating namespace: act on its current state.
    let Some(ns) = api.get_opt(&name).await? else {
        return Ok(Action::await_change());
    };
    let Some(deleted_at) = ns.metadata.deletion_timestamp.clone() else {
        return Ok(Action::await_change());
    };
    if ns.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Terminating") {
        api.patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Terminating"}})),
        )
        .await?;
    }
    let finalizers = ns
        .spec
        .as_ref()
        .and_then(|s| s.finalizers.clone())
        .unwrap_or_default();
    if !finalizers.iter().any(|f| f == FINALIZER) {
        return Ok(Action::await_change());
    }

    let outcome = delete_all_content(client, &name, deleted_at.0).await;
    let old = ns
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    if let Some(conditions) = merge_conditions(&old, &outcome.conditions()) {
        // Upstream logs and goes on when this write fails.
        if let Err(e) = api
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"conditions": conditions}})),
            )
            .await
        {
            tracing::warn!(error = %e, "cannot update the namespace's deletion conditions");
        }
    }
    if !outcome.errors.is_empty() {
        return Err(ReconcileError::Invalid(format!(
            "namespace {name}: {}",
            outcome.errors.join("; ")
        )));
    }
    if outcome.remaining_total() > 0 || outcome.estimate > 0 {
        let secs = (outcome.estimate / 2 + 1).max(1);
        tracing::debug!(
            estimate = outcome.estimate,
            "content remains in the namespace; looking again in {secs}s"
        );
        return Ok(Action::requeue(Duration::from_secs(secs.unsigned_abs())));
    }

    // Empty: hand the namespace back to the apiserver without our finalizer.
    let mut finalize = ns.clone();
    if let Some(spec) = finalize.spec.as_mut() {
        spec.finalizers = Some(
            finalizers
                .iter()
                .filter(|f| *f != FINALIZER)
                .cloned()
                .collect(),
        );
    }
    match api
        .replace_subresource("finalize", &name, &PostParams::default(), &finalize)
        .await
    {
        Ok(_) => tracing::info!("namespace emptied and finalized"),
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => return Err(e.into()),
    }
    Ok(Action::await_change())
}

/// What one pass over a namespace's content found.
#[derive(Debug, Default)]
struct Outcome {
    discovery_error: Option<String>,
    group_version_error: Option<String>,
    /// One message per resource whose deletion failed.
    content_errors: Vec<String>,
    /// Every error, for the requeue.
    errors: Vec<String>,
    /// `<resource>.<group>` → objects left.
    remaining: BTreeMap<String, usize>,
    /// finalizer → objects it holds.
    finalizers: BTreeMap<String, usize>,
    /// Seconds until the content is expected to be gone.
    estimate: i64,
}

impl Outcome {
    fn remaining_total(&self) -> usize {
        self.remaining.values().sum()
    }

    /// Upstream's five conditions: each failing one True with its reason and message, the
    /// others False with the "ok" reason and message.
    fn conditions(&self) -> Vec<(&'static str, bool, &'static str, String)> {
        let mut out = Vec::new();
        out.push(match &self.discovery_error {
            Some(m) => (
                "NamespaceDeletionDiscoveryFailure",
                true,
                "DiscoveryFailed",
                m.clone(),
            ),
            None => (
                "NamespaceDeletionDiscoveryFailure",
                false,
                "ResourcesDiscovered",
                "All resources successfully discovered".into(),
            ),
        });
        out.push(match &self.group_version_error {
            Some(m) => (
                "NamespaceDeletionGroupVersionParsingFailure",
                true,
                "GroupVersionParsingFailed",
                m.clone(),
            ),
            None => (
                "NamespaceDeletionGroupVersionParsingFailure",
                false,
                "ParsedGroupVersions",
                "All legacy kube types successfully parsed".into(),
            ),
        });
        out.push(if self.content_errors.is_empty() {
            (
                "NamespaceDeletionContentFailure",
                false,
                "ContentDeleted",
                "All content successfully deleted, may be waiting on finalization".into(),
            )
        } else {
            let mut msgs = self.content_errors.clone();
            msgs.sort();
            (
                "NamespaceDeletionContentFailure",
                true,
                "ContentDeletionFailed",
                format!(
                    "Failed to delete all resource types, {} remaining: {}",
                    msgs.len(),
                    msgs.join(", ")
                ),
            )
        });
        let remaining: Vec<String> = self
            .remaining
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(r, n)| format!("{r} has {n} resource instances"))
            .collect();
        out.push(if remaining.is_empty() {
            (
                "NamespaceContentRemaining",
                false,
                "ContentRemoved",
                "All content successfully removed".into(),
            )
        } else {
            (
                "NamespaceContentRemaining",
                true,
                "SomeResourcesRemain",
                format!("Some resources are remaining: {}", remaining.join(", ")),
            )
        });
        let finalizers: Vec<String> = self
            .finalizers
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(f, n)| format!("{f} in {n} resource instances"))
            .collect();
        out.push(if finalizers.is_empty() {
            (
                "NamespaceFinalizersRemaining",
                false,
                "ContentHasNoFinalizers",
                "All content-preserving finalizers finished".into(),
            )
        } else {
            (
                "NamespaceFinalizersRemaining",
                true,
                "SomeFinalizersRemain",
                format!(
                    "Some content in the namespace has finalizers remaining: {}",
                    finalizers.join(", ")
                ),
            )
        });
        out
    }
}

/// The namespace's conditions with `new` merged in as upstream's `updateConditions` does
/// (lastTransitionTime moves only when the status does), or `None` when nothing changes.
fn merge_conditions(
    old: &[NamespaceCondition],
    new: &[(&'static str, bool, &'static str, String)],
) -> Option<Vec<NamespaceCondition>> {
    let mut out = old.to_vec();
    let mut changed = false;
    let now = Time(Timestamp::now());
    for (type_, status, reason, message) in new {
        let status = if *status { "True" } else { "False" };
        match out.iter_mut().find(|c| c.type_ == *type_) {
            None => {
                out.push(NamespaceCondition {
                    type_: (*type_).into(),
                    status: status.into(),
                    reason: Some((*reason).into()),
                    message: Some(message.clone()),
                    last_transition_time: Some(now.clone()),
                });
                changed = true;
            }
            Some(c) => {
                if c.status != status
                    || c.reason.as_deref() != Some(reason)
                    || c.message.as_deref() != Some(message.as_str())
                {
                    if c.status != status {
                        c.last_transition_time = Some(now.clone());
                    }
                    c.status = status.into();
                    c.reason = Some((*reason).into());
                    c.message = Some(message.clone());
                    changed = true;
                }
            }
        }
    }
    changed.then_some(out)
}

/// A namespaced resource that can be deleted, with the verbs that say how.
struct Deletable {
    resource: ApiResource,
    deletecollection: bool,
    list: bool,
}

/// Discovery (preferred version of every group), filtered to namespaced resources with
/// `delete`. Failing groups are reported and skipped, as upstream does.
async fn discover(client: &Client, outcome: &mut Outcome) -> Vec<Deletable> {
    let mut lists: Vec<APIResourceList> = Vec::new();
    let mut failed: Vec<String> = Vec::new();
    match client.list_core_api_resources("v1").await {
        Ok(l) => lists.push(l),
        Err(e) => failed.push(format!("v1: {e}")),
    }
    match client.list_api_groups().await {
        Ok(groups) => {
            for g in groups.groups {
                let Some(gv) = g
                    .preferred_version
                    .map(|p| p.group_version)
                    .or_else(|| g.versions.first().map(|v| v.group_version.clone()))
                else {
                    continue;
                };
                match client.list_api_group_resources(&gv).await {
                    Ok(l) => lists.push(l),
                    Err(e) => failed.push(format!("{gv}: {e}")),
                }
            }
        }
        Err(e) => failed.push(format!("groups: {e}")),
    }
    if !failed.is_empty() {
        let msg = format!(
            "Discovery failed for some groups, {} failing: unable to retrieve the complete list of server APIs: {}",
            failed.len(),
            failed.join(", ")
        );
        outcome.errors.push(msg.clone());
        outcome.discovery_error = Some(msg);
    }
    let mut out = Vec::new();
    let mut bad_gvs = Vec::new();
    for list in lists {
        let gv = list.group_version.as_str();
        let (group, version) = match gv.split('/').collect::<Vec<_>>()[..] {
            [v] => ("", v),
            [g, v] => (g, v),
            _ => {
                bad_gvs.push(format!("unexpected GroupVersion string: {gv}"));
                continue;
            }
        };
        for r in list.resources {
            if !r.namespaced || r.name.contains('/') || !r.verbs.iter().any(|v| v == "delete") {
                continue;
            }
            out.push(Deletable {
                resource: ApiResource {
                    group: group.into(),
                    version: version.into(),
                    api_version: gv.into(),
                    kind: r.kind.clone(),
                    plural: r.name.clone(),
                },
                deletecollection: r.verbs.iter().any(|v| v == "deletecollection"),
                list: r.verbs.iter().any(|v| v == "list"),
            });
        }
    }
    if !bad_gvs.is_empty() {
        let msg = bad_gvs.join(", ");
        outcome.errors.push(msg.clone());
        outcome.group_version_error = Some(msg);
    }
    // Pods first, so that they terminate before what they use goes.
    out.sort_by_key(|d| !(d.resource.group.is_empty() && d.resource.plural == "pods"));
    out
}

async fn delete_all_content(client: &Client, ns: &str, deleted_at: Timestamp) -> Outcome {
    let mut outcome = Outcome::default();
    for d in discover(client, &mut outcome).await {
        if let Err(e) = delete_resource(client, ns, &d, deleted_at, &mut outcome).await {
            let msg = format!("{}.{}: {e}", d.resource.plural, d.resource.group);
            outcome.errors.push(msg.clone());
            outcome.content_errors.push(msg);
        }
    }
    outcome
}

/// Whether an error means "this resource does not support the operation".
fn unsupported(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404 || s.code == 405)
}

async fn delete_resource(
    client: &Client,
    ns: &str,
    d: &Deletable,
    deleted_at: Timestamp,
    outcome: &mut Outcome,
) -> Result<(), kube::Error> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &d.resource);
    let is_pods = d.resource.group.is_empty() && d.resource.plural == "pods";
    let mut estimate = 0;
    if is_pods {
        estimate = pod_termination_estimate(client, ns, deleted_at).await?;
    }
    let dp = DeleteParams::background();
    let mut collected = false;
    if d.deletecollection {
        match api.delete_collection(&dp, &ListParams::default()).await {
            Ok(_) => collected = true,
            Err(e) if unsupported(&e) => {}
            Err(e) => return Err(e),
        }
    }
    if !d.list {
        outcome.estimate = outcome.estimate.max(estimate);
        return Ok(());
    }
    if !collected {
        let items = match api.list(&ListParams::default()).await {
            Ok(l) => l.items,
            Err(e) if unsupported(&e) => return Ok(()),
            Err(e) => return Err(e),
        };
        for item in items {
            match api.delete(&item.name_any(), &dp).await {
                Ok(_) => {}
                Err(e) if unsupported(&e) => {}
                Err(e) => return Err(e),
            }
        }
    }
    let left = match api.list(&ListParams::default()).await {
        Ok(l) => l.items,
        Err(e) if unsupported(&e) => return Ok(()),
        Err(e) => return Err(e),
    };
    if !left.is_empty() {
        let key = format!("{}.{}", d.resource.plural, d.resource.group);
        *outcome.remaining.entry(key).or_default() += left.len();
        let mut with_finalizers = false;
        for item in &left {
            for f in item.finalizers() {
                with_finalizers = true;
                *outcome.finalizers.entry(f.clone()).or_default() += 1;
            }
        }
        if estimate == 0 && with_finalizers {
            estimate = FINALIZER_ESTIMATE_SECONDS;
        }
    }
    outcome.estimate = outcome.estimate.max(estimate);
    Ok(())
}

/// Upstream's `estimateGracefulTerminationForPods`: the longest grace period left of the
/// namespace's unfinished pods, counted from the namespace's deletion.
async fn pod_termination_estimate(
    client: &Client,
    ns: &str,
    deleted_at: Timestamp,
) -> Result<i64, kube::Error> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let items = match pods.list(&ListParams::default()).await {
        Ok(l) => l.items,
        Err(e) if unsupported(&e) => return Ok(0),
        Err(e) => return Err(e),
    };
    let elapsed = Timestamp::now().duration_since(deleted_at).as_secs();
    let mut estimate = 0;
    for p in items {
        if matches!(util::pod_phase(&p), "Succeeded" | "Failed") {
            continue;
        }
        let grace = p
            .metadata
            .deletion_grace_period_seconds
            .or_else(|| p.spec.as_ref()?.termination_grace_period_seconds)
            .unwrap_or(30);
        estimate = estimate.max(grace - elapsed);
    }
    Ok(estimate.max(0))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn conditions_are_written_only_when_they_change() {
        let ok = Outcome::default();
        let first = merge_conditions(&[], &ok.conditions()).unwrap();
        assert_eq!(first.len(), 5);
        assert!(first.iter().all(|c| c.status == "False"));
        assert!(merge_conditions(&first, &ok.conditions()).is_none());

        let mut held = Outcome::default();
        held.remaining.insert("widgets.example.com".into(), 2);
        held.finalizers.insert("example.com/hold".into(), 2);
        let second = merge_conditions(&first, &held.conditions()).unwrap();
        let get = |t: &str| second.iter().find(|c| c.type_ == t).unwrap();
        assert_eq!(get("NamespaceContentRemaining").status, "True");
        assert_eq!(
            get("NamespaceContentRemaining").message.as_deref(),
            Some("Some resources are remaining: widgets.example.com has 2 resource instances")
        );
        assert_eq!(
            get("NamespaceFinalizersRemaining").message.as_deref(),
            Some(
                "Some content in the namespace has finalizers remaining: example.com/hold in 2 resource instances"
            )
        );
        assert_eq!(get("NamespaceDeletionDiscoveryFailure").status, "False");
    }
}
