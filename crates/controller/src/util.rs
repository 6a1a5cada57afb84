//! Helpers every controller shares: the context, per-object backoff, selectors, pod state.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Stream, StreamExt as _};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::jiff::Timestamp;
use kube::core::{Selector, SelectorExt as _};
use kube::runtime::controller::{Action, Error as ControllerError};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, Resource};

use crate::ReconcileError;

/// What every controller gets.
pub(crate) struct Shared {
    pub(crate) client: Client,
    pub(crate) concurrency: u16,
    /// "Now" for the time-driven controllers (Job deadlines and backoff, CronJob schedules,
    /// TTL-after-finished).
    pub(crate) clock: Arc<dyn Clock>,
    /// Where the controllers record their Events (bounded, never blocks).
    pub(crate) events: crate::events::Recorder,
    /// The shared pod cache (filled only when a controller that reads it is enabled).
    pub(crate) pods: Arc<crate::informer::PodCache>,
}

/// Where the time-driven controllers (Job, CronJob, TTL-after-finished) read the time, so
/// that tests can move it (upstream injects a `clock.WithTicker` the same way). Timers still
/// run in real time: a test that moves the clock then touches the object it wants synced.
pub trait Clock: Send + Sync + Debug {
    /// The current time.
    fn now(&self) -> Timestamp;
}

/// The system's clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

impl Shared {
    /// The same context for a loop that talks to the apiserver through `client` (its own
    /// service account's, `--use-service-account-credentials`); Events stay on the manager's.
    pub(crate) fn with_client(&self, client: Client) -> Shared {
        Shared {
            client,
            concurrency: self.concurrency,
            clock: self.clock.clone(),
            events: self.events.clone(),
            pods: self.pods.clone(),
        }
    }
}

impl Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("concurrency", &self.concurrency)
            .finish_non_exhaustive()
    }
}

/// Per-object failure counts: requeue after 5 ms × 2^failures, at most 1000 s (upstream's
/// `DefaultControllerRateLimiter` item backoff). A success forgets the object.
#[derive(Debug, Default)]
pub(crate) struct Backoff {
    failures: Mutex<HashMap<String, u32>>,
}

impl Backoff {
    pub(crate) fn failure(&self, key: &str) -> Duration {
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let n = f.entry(key.to_string()).or_insert(0);
        let delay = Duration::from_millis(5).saturating_mul(1u32 << (*n).min(20));
        *n += 1;
        delay.min(Duration::from_secs(1000))
    }

    pub(crate) fn success(&self, key: &str) {
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        f.remove(key);
    }
}

/// `namespace/name` of an object.
pub(crate) fn key_of(meta: &ObjectMeta) -> String {
    format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or(""),
        meta.name.as_deref().unwrap_or("")
    )
}

/// Whether `selector` selects `labels`. An empty selector selects everything, as
/// `metav1.LabelSelectorAsSelector` makes it.
pub(crate) fn selects(
    selector: &LabelSelector,
    labels: Option<&BTreeMap<String, String>>,
) -> Result<bool, ReconcileError> {
    let sel = Selector::try_from(selector.clone())
        .map_err(|e| ReconcileError::Selector(e.to_string()))?;
    let empty = BTreeMap::new();
    Ok(sel.matches(labels.unwrap_or(&empty)))
}

/// The owner reference with `controller: true`, if any.
pub(crate) fn controller_of(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references
        .as_ref()?
        .iter()
        .find(|r| r.controller == Some(true))
}

/// An owner reference with controller=true and blockOwnerDeletion=true to `owner`.
pub(crate) fn controller_ref<K: Resource<DynamicType = ()>>(owner: &K) -> OwnerReference {
    let meta = owner.meta();
    OwnerReference {
        api_version: K::api_version(&()).into_owned(),
        kind: K::kind(&()).into_owned(),
        name: meta.name.clone().unwrap_or_default(),
        uid: meta.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

pub(crate) fn now() -> Timestamp {
    Timestamp::now()
}

/// A pod that counts: not finished and not being deleted (upstream's `IsPodActive`).
pub(crate) fn pod_active(pod: &Pod) -> bool {
    let phase = pod_phase(pod);
    phase != "Succeeded" && phase != "Failed" && pod.metadata.deletion_timestamp.is_none()
}

pub(crate) fn pod_phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

/// The pod's Ready condition is True; returns when it last changed.
pub(crate) fn pod_ready_since(pod: &Pod) -> Option<Option<Timestamp>> {
    let cond = pod
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")?;
    (cond.status == "True").then(|| cond.last_transition_time.as_ref().map(|t| t.0))
}

pub(crate) fn pod_ready(pod: &Pod) -> bool {
    pod_ready_since(pod).is_some()
}

/// Ready for at least `min_ready_seconds` at `now` (upstream's `IsPodAvailable`).
pub(crate) fn pod_available(pod: &Pod, min_ready_seconds: i32, now: Timestamp) -> bool {
    match pod_ready_since(pod) {
        None => false,
        Some(_) if min_ready_seconds <= 0 => true,
        Some(None) => false,
        Some(Some(since)) => {
            let ready_for = now.duration_since(since);
            ready_for.as_secs() >= i64::from(min_ready_seconds)
        }
    }
}

/// Completes once `stop` turns true while `store` (a `Controller`'s own, `Controller::store`)
/// has not finished its first list yet; never completes otherwise.
///
/// kube-runtime's `Controller` holds its runner until its store is ready, and a graceful
/// shutdown cuts the watch that would make it ready: a controller stopped during its first
/// list (an early SIGTERM, leadership lost at once) would wait forever. Nothing has been
/// reconciled before the store is ready, so ending the controller's stream then loses nothing.
/// Once the store is ready the graceful shutdown runs as usual (in-flight reconciles finish).
pub(crate) async fn abandon_unsynced<K>(
    store: kube::runtime::reflector::Store<K>,
    stop: tokio::sync::watch::Receiver<bool>,
) where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    crate::stopped(stop).await;
    if futures::FutureExt::now_or_never(store.wait_until_ready()).is_none() {
        return;
    }
    std::future::pending::<()>().await
}

/// Logs what a kube-runtime `Controller` reports, until the stream ends (the controller
/// stopped) or `abandon` ([`abandon_unsynced`]) completes.
pub(crate) async fn drain<K, E>(
    name: &'static str,
    abandon: impl std::future::Future<Output = ()>,
    stream: impl Stream<Item = Result<(ObjectRef<K>, Action), ControllerError<E, watcher::Error>>>,
) where
    K: Resource,
    K::DynamicType: Debug,
    E: std::error::Error + 'static,
{
    stream
        .take_until(abandon)
        .for_each(|r| async move {
            match r {
                Ok((obj, _)) => tracing::trace!(controller = name, %obj, "reconciled"),
                Err(ControllerError::ReconcilerFailed(e, obj)) => {
                    tracing::warn!(controller = name, %obj, error = %e, "reconcile failed; requeued with backoff")
                }
                Err(ControllerError::QueueError(e)) => {
                    tracing::warn!(controller = name, error = %e, "watch failed; retrying with backoff")
                }
                Err(e) => tracing::debug!(controller = name, error = %e, "controller"),
            }
        })
        .await;
}

/// Runs a kube-runtime `controller` of `K` whose reconcile is `sync(object, shared)`: at
/// `shared.concurrency`, stopping gracefully when `stop` turns true ([`abandon_unsynced`] and
/// [`drain`] wired in), each object's [`Backoff`] forgotten on success and used on failure.
/// The controller comes with its watches (`Controller::new(...).watches(...)`), nothing more.
pub(crate) async fn run_controller<K, F, Fut>(
    name: &'static str,
    shared: Arc<Shared>,
    controller: kube::runtime::Controller<K>,
    stop: tokio::sync::watch::Receiver<bool>,
    sync: F,
) where
    K: Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + Debug
        + Send
        + Sync
        + 'static,
    F: Fn(Arc<K>, Arc<Shared>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Action, ReconcileError>> + Send + 'static,
{
    struct Ctx<F> {
        shared: Arc<Shared>,
        backoff: Backoff,
        sync: F,
    }
    let controller = controller
        .with_config(kube::runtime::controller::Config::default().concurrency(shared.concurrency))
        .graceful_shutdown_on(crate::stopped(stop.clone()));
    let abandon = abandon_unsynced(controller.store(), stop);
    let ctx = Arc::new(Ctx {
        shared,
        backoff: Backoff::default(),
        sync,
    });
    drain(
        name,
        abandon,
        controller.run(
            |obj, ctx| {
                let key = key_of(obj.meta());
                let fut = (ctx.sync)(obj, ctx.shared.clone());
                async move {
                    let r = fut.await;
                    if r.is_ok() {
                        ctx.backoff.success(&key);
                    }
                    r
                }
            },
            |obj, _e, ctx| error_action(&ctx.backoff, &key_of(obj.meta())),
            ctx,
        ),
    )
    .await;
}

/// Requeue on error with the object's backoff.
pub(crate) fn error_action(backoff: &Backoff, key: &str) -> Action {
    Action::requeue(backoff.failure(key))
}

/// Adopts (`Some(owner)`) or releases (`None`) a pod, guarded by its uid.
pub(crate) async fn set_pod_owner(
    api: &kube::Api<Pod>,
    pod: &Pod,
    owner_uid: &str,
    owner: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference>,
) -> Result<Option<Pod>, ReconcileError> {
    let mut refs: Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference> = pod
        .metadata
        .owner_references
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r.uid != owner_uid)
        .collect();
    let adopting = owner.is_some();
    refs.extend(owner);
    let patch = serde_json::json!({"metadata": {
        "ownerReferences": if refs.is_empty() { serde_json::Value::Null } else { serde_json::json!(refs) },
        "uid": pod.metadata.uid,
    }});
    match api
        .patch(
            &kube::ResourceExt::name_any(pod),
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(patch),
        )
        .await
    {
        Ok(p) => {
            tracing::info!(pod = %kube::ResourceExt::name_any(pod), adopting, "pod ownership changed");
            Ok(adopting.then_some(p))
        }
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Upstream's `ClaimPods`: of `candidates`, the pods `owner` controls and still `selects`.
/// Owned pods it no longer selects are released; selected orphans that are not being deleted
/// are adopted when `can_adopt` (the owner re-read, still there and not being deleted).
pub(crate) async fn claim_pods(
    api: &kube::Api<Pod>,
    candidates: Vec<Pod>,
    owner: OwnerReference,
    can_adopt: bool,
    selects: impl Fn(&Pod) -> Result<bool, ReconcileError>,
) -> Result<Vec<Pod>, ReconcileError> {
    let mut pods = Vec::new();
    for pod in candidates {
        let matches = selects(&pod)?;
        let terminating = pod.metadata.deletion_timestamp.is_some();
        match controller_of(&pod.metadata) {
            Some(r) if r.uid == owner.uid => {
                if matches {
                    pods.push(pod);
                } else if !terminating {
                    set_pod_owner(api, &pod, &owner.uid, None).await?;
                }
            }
            None if matches && can_adopt && !terminating => {
                if let Some(p) = set_pod_owner(api, &pod, &owner.uid, Some(owner.clone())).await? {
                    pods.push(p);
                }
            }
            _ => {}
        }
    }
    Ok(pods)
}

/// A reflector's store and the future that keeps it filled (errors logged, retried with
/// backoff).
pub(crate) fn reflect<K>(
    api: kube::Api<K>,
) -> (
    kube::runtime::reflector::Store<K>,
    impl std::future::Future<Output = ()> + Send,
)
where
    K: Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    use kube::runtime::WatchStreamExt as _;
    let (store, writer) = kube::runtime::reflector::store::<K>();
    let stream = kube::runtime::reflector::reflector(
        writer,
        kube::runtime::watcher(api, kube::runtime::watcher::Config::default()),
    )
    .default_backoff()
    .for_each(|r| {
        if let Err(e) = r {
            tracing::debug!(kind = %K::kind(&()), error = %e, "watch failed; retrying");
        }
        futures::future::ready(())
    });
    (store, stream)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps_and_resets() {
        let b = Backoff::default();
        assert_eq!(b.failure("a"), Duration::from_millis(5));
        assert_eq!(b.failure("a"), Duration::from_millis(10));
        assert_eq!(b.failure("a"), Duration::from_millis(20));
        for _ in 0..30 {
            b.failure("a");
        }
        assert_eq!(b.failure("a"), Duration::from_secs(1000));
        b.success("a");
        assert_eq!(b.failure("a"), Duration::from_millis(5));
    }

    #[test]
    fn selectors_match_labels_and_expressions() {
        let sel: LabelSelector = serde_json::from_value(serde_json::json!({
            "matchLabels": {"app": "web"},
            "matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["db"]}]
        }))
        .unwrap();
        let l = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>()
        };
        assert!(selects(&sel, Some(&l(&[("app", "web")]))).unwrap());
        assert!(!selects(&sel, Some(&l(&[("app", "web"), ("tier", "db")]))).unwrap());
        assert!(!selects(&sel, None).unwrap());
        assert!(selects(&LabelSelector::default(), None).unwrap());
    }
}
