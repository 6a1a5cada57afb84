//! The disruption controller (upstream's `disruption`): the status of every
//! PodDisruptionBudget, which the apiserver's eviction subresource reads and decrements.
//!
//! - `expectedPods`, `desiredHealthy`: with `minAvailable` as a number, the selected pods and
//!   that number; with a percentage `minAvailable` or any `maxUnavailable`, the summed scale
//!   of the pods' controllers (Deployment through its ReplicaSet, ReplicaSet,
//!   ReplicationController, StatefulSet), and `desiredHealthy` = percent of it rounded up, or
//!   scale − maxUnavailable (rounded up) — upstream's `getExpectedPodCount`.
//! - `currentHealthy`: selected pods that are Ready and not being deleted, minus those in
//!   `disruptedPods` (evicted but not yet seen going away).
//! - `disruptedPods`: entries whose pod is gone or being deleted, or older than
//!   [`DELETION_TIMEOUT`], are dropped (the sync requeues for the earliest expiry).
//! - `disruptionsAllowed` = max(currentHealthy − desiredHealthy, 0), condition
//!   `DisruptionAllowed` (`SufficientPods`/`InsufficientPods`), `observedGeneration`. When the
//!   expected count cannot be computed (a pod without a supported controller), the fail-safe
//!   status: no disruptions, condition reason `SyncFailed`.
//!
//! The status is written with the budget's resourceVersion from the start of the sync, so an
//! eviction that took a disruption meanwhile makes the write conflict and the sync re-run:
//! a disruption is never given back by a stale recount.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{Pod, ReplicationController};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt as _};
use tokio::sync::watch;

use crate::ReconcileError;
use crate::util::{self, Backoff, Shared};

/// How long an evicted pod counts as disrupted before its deletion is seen (upstream's
/// `DeletionTimeout`: 2 minutes).
pub(crate) const DELETION_TIMEOUT: Duration = Duration::from_secs(120);

struct Ctx {
    shared: Arc<Shared>,
    backoff: Backoff,
}

/// The budgets of `ns` in the cache whose selector selects `labels` (all of the namespace's
/// with `None`: a controller's scale changed).
fn budgets_for(
    store: &Store<PodDisruptionBudget>,
    ns: Option<String>,
    labels: Option<&BTreeMap<String, String>>,
    all: bool,
) -> Vec<ObjectRef<PodDisruptionBudget>> {
    let Some(ns) = ns else { return Vec::new() };
    store
        .state()
        .iter()
        .filter(|b| b.namespace().as_deref() == Some(ns.as_str()))
        .filter(|b| {
            all || b
                .spec
                .as_ref()
                .and_then(|s| s.selector.as_ref())
                .is_some_and(|sel| util::selects(sel, labels).unwrap_or(false))
        })
        .map(|b| ObjectRef::from_obj(b.as_ref()))
        .collect()
}

pub(crate) async fn run(shared: Arc<Shared>, stop: watch::Receiver<bool>) {
    let client = shared.client.clone();
    let controller = Controller::new(
        Api::<PodDisruptionBudget>::all(client.clone()),
        watcher::Config::default(),
    );
    let store = controller.store();
    let (s1, s2, s3, s4) = (store.clone(), store.clone(), store.clone(), store);
    let controller = controller
        .watches(
            Api::<Pod>::all(client.clone()),
            watcher::Config::default(),
            move |p: Pod| budgets_for(&s1, p.namespace(), p.metadata.labels.as_ref(), false),
        )
        .watches(
            Api::<Deployment>::all(client.clone()),
            watcher::Config::default(),
            move |d: Deployment| budgets_for(&s2, d.namespace(), None, true),
        )
        .watches(
            Api::<ReplicaSet>::all(client.clone()),
            watcher::Config::default(),
            move |r: ReplicaSet| budgets_for(&s3, r.namespace(), None, true),
        )
        .watches(
            Api::<StatefulSet>::all(client),
            watcher::Config::default(),
            move |s: StatefulSet| budgets_for(&s4, s.namespace(), None, true),
        )
        .with_config(kube::runtime::controller::Config::default().concurrency(shared.concurrency))
        .graceful_shutdown_on(crate::stopped(stop.clone()));
    let abandon = util::abandon_unsynced(controller.store(), stop);
    let ctx = Arc::new(Ctx {
        shared,
        backoff: Backoff::default(),
    });
    util::drain(
        "disruption",
        abandon,
        controller.run(
            |b, ctx| async move {
                let key = util::key_of(b.meta());
                let r = sync(&b, &ctx.shared).await;
                if r.is_ok() {
                    ctx.backoff.success(&key);
                }
                r
            },
            |b, _e, ctx| util::error_action(&ctx.backoff, &util::key_of(b.meta())),
            ctx,
        ),
    )
    .await;
}

/// An int-or-percent of `total`, percentages rounded up (upstream rounds up for both fields).
fn scaled_up(v: &IntOrString, total: i32) -> Result<i32, String> {
    match v {
        IntOrString::Int(i) => Ok(*i),
        IntOrString::String(s) => {
            let pct: i64 = s
                .strip_suffix('%')
                .and_then(|p| p.parse().ok())
                .ok_or_else(|| format!("invalid value for IntOrString: invalid value {s:?}"))?;
            let v = (pct * i64::from(total) + 99) / 100;
            Ok(i32::try_from(v).unwrap_or(i32::MAX))
        }
    }
}

/// The summed scale of the pods' controllers, each counted once (upstream's
/// `getExpectedScale`). An error names a pod without a supported controller.
async fn expected_scale(client: &kube::Client, ns: &str, pods: &[Pod]) -> Result<i32, String> {
    let mut seen: HashSet<String> = HashSet::new();
    let mut total = 0i32;
    for pod in pods {
        let Some(owner) = util::controller_of(&pod.metadata) else {
            return Err(format!("found no controllers for pod {:?}", pod.name_any()));
        };
        let (key, scale) = match owner.kind.as_str() {
            "ReplicaSet" => {
                let rs = Api::<ReplicaSet>::namespaced(client.clone(), ns)
                    .get_opt(&owner.name)
                    .await
                    .map_err(|e| e.to_string())?
                    .filter(|rs| rs.uid().as_deref() == Some(owner.uid.as_str()));
                let Some(rs) = rs else {
                    return Err(format!("found no controllers for pod {:?}", pod.name_any()));
                };
                // A ReplicaSet of a Deployment: the Deployment's scale.
                match util::controller_of(&rs.metadata).filter(|r| r.kind == "Deployment") {
                    Some(d) => {
                        let dep = Api::<Deployment>::namespaced(client.clone(), ns)
                            .get_opt(&d.name)
                            .await
                            .map_err(|e| e.to_string())?
                            .filter(|x| x.uid().as_deref() == Some(d.uid.as_str()));
                        match dep {
                            Some(dep) => (
                                d.uid.clone(),
                                dep.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
                            ),
                            None => {
                                return Err(format!(
                                    "found no controllers for pod {:?}",
                                    pod.name_any()
                                ));
                            }
                        }
                    }
                    None => (
                        owner.uid.clone(),
                        rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
                    ),
                }
            }
            "ReplicationController" => {
                let rc = Api::<ReplicationController>::namespaced(client.clone(), ns)
                    .get_opt(&owner.name)
                    .await
                    .map_err(|e| e.to_string())?;
                match rc {
                    Some(rc) => (
                        owner.uid.clone(),
                        rc.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
                    ),
                    None => {
                        return Err(format!("found no controllers for pod {:?}", pod.name_any()));
                    }
                }
            }
            "StatefulSet" => {
                let sts = Api::<StatefulSet>::namespaced(client.clone(), ns)
                    .get_opt(&owner.name)
                    .await
                    .map_err(|e| e.to_string())?;
                match sts {
                    Some(s) => (
                        owner.uid.clone(),
                        s.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
                    ),
                    None => {
                        return Err(format!("found no controllers for pod {:?}", pod.name_any()));
                    }
                }
            }
            _ => {
                return Err(format!("found no controllers for pod {:?}", pod.name_any()));
            }
        };
        if seen.insert(key) {
            total = total.saturating_add(scale);
        }
    }
    Ok(total)
}

/// Healthy pods and the disrupted-pod bookkeeping at `now` (upstream's `countHealthyPods`
/// and `buildDisruptedPodMap`).
pub(crate) fn count_healthy(
    pods: &[Pod],
    disrupted: &BTreeMap<String, Time>,
    now: Timestamp,
) -> (i32, BTreeMap<String, Time>, Option<Duration>) {
    let mut kept = BTreeMap::new();
    let mut next: Option<Duration> = None;
    for pod in pods {
        let name = pod.name_any();
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let Some(t) = disrupted.get(&name) else {
            continue;
        };
        let age = now.duration_since(t.0);
        let timeout = k8s_openapi::jiff::SignedDuration::try_from(DELETION_TIMEOUT)
            .unwrap_or(k8s_openapi::jiff::SignedDuration::from_secs(120));
        if age < timeout {
            kept.insert(name, t.clone());
            let left = Duration::try_from(timeout - age).unwrap_or(Duration::ZERO);
            next = Some(next.map_or(left, |n: Duration| n.min(left)));
        }
    }
    let healthy = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| util::pod_ready(p))
        .filter(|p| !kept.contains_key(&p.name_any()))
        .count();
    (i32::try_from(healthy).unwrap_or(i32::MAX), kept, next)
}

fn condition(
    old: Option<&Vec<Condition>>,
    status: &str,
    reason: &str,
    message: String,
    generation: Option<i64>,
) -> Vec<Condition> {
    let prev = old
        .into_iter()
        .flatten()
        .find(|c| c.type_ == "DisruptionAllowed");
    let transition = match prev {
        Some(p) if p.status == status => p.last_transition_time.clone(),
        _ => Time(Timestamp::now()),
    };
    let mut out: Vec<Condition> = old
        .into_iter()
        .flatten()
        .filter(|c| c.type_ != "DisruptionAllowed")
        .cloned()
        .collect();
    out.push(Condition {
        type_: "DisruptionAllowed".into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time: transition,
    });
    out
}

#[tracing::instrument(skip_all, fields(pdb = %util::key_of(b.meta())))]
async fn sync(b: &PodDisruptionBudget, shared: &Shared) -> Result<Action, ReconcileError> {
    let client = &shared.client;
    let ns = b.namespace().unwrap_or_default();
    let api: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), &ns);
    let Some(pdb) = api.get_opt(&b.name_any()).await? else {
        return Ok(Action::await_change());
    };
    if pdb.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let spec = pdb.spec.clone().unwrap_or_default();
    let old = pdb.status.clone().unwrap_or_default();
    let generation = pdb.meta().generation;
    // policy/v1: no selector selects nothing.
    let pods: Vec<Pod> = match &spec.selector {
        None => Vec::new(),
        Some(sel) => {
            let all = Api::<Pod>::namespaced(client.clone(), &ns)
                .list(&ListParams::default())
                .await?
                .items;
            let mut out = Vec::new();
            for p in all {
                if util::selects(sel, p.metadata.labels.as_ref())? {
                    out.push(p);
                }
            }
            out
        }
    };
    let now = Timestamp::now();
    let (current, disrupted, next_expiry) =
        count_healthy(&pods, &old.disrupted_pods.clone().unwrap_or_default(), now);
    let expected = match (&spec.max_unavailable, &spec.min_available) {
        (Some(max), _) => expected_scale(client, &ns, &pods)
            .await
            .and_then(|scale| Ok((scale, (scale - scaled_up(max, scale)?).max(0)))),
        (None, Some(IntOrString::Int(min))) => Ok((i32::try_from(pods.len()).unwrap_or(0), *min)),
        (None, Some(min)) => expected_scale(client, &ns, &pods)
            .await
            .and_then(|scale| Ok((scale, scaled_up(min, scale)?))),
        (None, None) => Ok((i32::try_from(pods.len()).unwrap_or(0), 0)),
    };
    let want = match expected {
        Ok((expected, desired)) => {
            let allowed = (current - desired).max(0);
            let (status, reason) = if allowed > 0 {
                ("True", "SufficientPods")
            } else {
                ("False", "InsufficientPods")
            };
            PodDisruptionBudgetStatus {
                current_healthy: current,
                desired_healthy: desired,
                expected_pods: expected,
                disruptions_allowed: allowed,
                disrupted_pods: (!disrupted.is_empty()).then_some(disrupted),
                observed_generation: generation,
                conditions: Some(condition(
                    old.conditions.as_ref(),
                    status,
                    reason,
                    String::new(),
                    generation,
                )),
            }
        }
        Err(why) => {
            tracing::info!(error = %why, "cannot compute the expected pods; fail-safe status");
            shared.events.event(
                "controllermanager",
                &pdb,
                crate::events::EventType::Normal,
                "NoControllers",
                why.clone(),
            );
            PodDisruptionBudgetStatus {
                current_healthy: current,
                desired_healthy: old.desired_healthy,
                expected_pods: old.expected_pods,
                disruptions_allowed: 0,
                disrupted_pods: (!disrupted.is_empty()).then_some(disrupted),
                observed_generation: generation,
                conditions: Some(condition(
                    old.conditions.as_ref(),
                    "False",
                    "SyncFailed",
                    why,
                    generation,
                )),
            }
        }
    };
    if want != old {
        let mut updated = pdb.clone();
        updated.status = Some(want);
        match api
            .replace_status(&pdb.name_any(), &PostParams::default(), &updated)
            .await
        {
            Ok(_) => tracing::debug!("pdb status updated"),
            // An eviction took a disruption meanwhile: recount.
            Err(kube::Error::Api(s)) if s.code == 409 => {
                return Ok(Action::requeue(Duration::from_millis(50)));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(match next_expiry {
        Some(d) => Action::requeue(d + Duration::from_millis(100)),
        None => Action::await_change(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_round_up() {
        assert_eq!(scaled_up(&IntOrString::String("50%".into()), 3), Ok(2));
        assert_eq!(scaled_up(&IntOrString::String("34%".into()), 3), Ok(2));
        assert_eq!(scaled_up(&IntOrString::String("0%".into()), 3), Ok(0));
        assert_eq!(scaled_up(&IntOrString::Int(2), 10), Ok(2));
        assert!(scaled_up(&IntOrString::String("x".into()), 3).is_err());
    }

    #[test]
    fn disrupted_pods_expire_and_do_not_count_as_healthy() {
        let now = Timestamp::now();
        let ready = |name: &str| -> Pod {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name},
                "status": {"conditions": [{"type": "Ready", "status": "True"}]},
            }))
            .expect("pod")
        };
        let pods = vec![ready("a"), ready("b"), ready("c")];
        let recent = Time(now - k8s_openapi::jiff::SignedDuration::from_secs(10));
        let old = Time(now - k8s_openapi::jiff::SignedDuration::from_secs(300));
        let disrupted = BTreeMap::from([
            ("a".to_string(), recent.clone()),
            ("b".to_string(), old),
            ("gone".to_string(), recent),
        ]);
        let (healthy, kept, next) = count_healthy(&pods, &disrupted, now);
        assert_eq!(healthy, 2);
        assert_eq!(kept.keys().collect::<Vec<_>>(), vec!["a"]);
        assert!(next.is_some_and(|d| d <= DELETION_TIMEOUT));
    }
}
