//! The Job controller (upstream's `pkg/controller/job`, v1.33 behaviour with its default
//! feature gates): run pods from the template until `completions` succeed (NonIndexed) or every
//! index in `0..completions` succeeded (Indexed), at most `parallelism` at once; recreate failed
//! pods with exponential backoff (10 s doubling, at most 10 min) until `backoffLimit` failures;
//! `podFailurePolicy`, `activeDeadlineSeconds`, `suspend`, `podReplacementPolicy`.
//!
//! Pods are counted with upstream's finalizer protocol: every pod carries
//! `batch.kubernetes.io/job-tracking`; a finished pod's uid is first written to
//! `status.uncountedTerminatedPods`, then its finalizer is removed, then the uid moves into the
//! `succeeded`/`failed` counters. So a pod is counted exactly once, also when the controller
//! restarts in between. Terminal conditions are two-step as in v1.33: `FailureTarget` or
//! `SuccessCriteriaMet` first (active pods are deleted), `Failed` or `Complete` once no pod is
//! terminating and nothing is left uncounted.
//!
//! Every sync reads the Job and its namespace's pods from the apiserver (consistent reads, no
//! expectations) and writes status with a `PUT /status` guarded by the resourceVersion it read,
//! so a sync never builds on a stale status. Orphaned pods that still carry the finalizer
//! (their Job was deleted or finished) are released by a second loop over pods.
//!
//! Events (component `job-controller`, upstream's reasons and messages): `SuccessfulCreate`
//! `Created pod: <pod>` / `FailedCreate` `Error creating: <error>`, `SuccessfulDelete`
//! `Deleted pod: <pod>` / `FailedDelete`, `Suspended` `Job suspended` / `Resumed` `Job
//! resumed` when the condition changes, and once the terminal condition is stored `Completed`
//! `Job completed` (with `TooManySucceededPods` past `completions`) or a Warning with the
//! `Failed` condition's reason and message (`BackoffLimitExceeded`, `DeadlineExceeded`,
//! `PodFailurePolicy`, `FailedIndexes`, `MaxFailedIndexesExceeded`).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt as _;
use futures::future::join_all;
use k8s_openapi::api::batch::v1::{
    Job, JobCondition, JobSpec, JobStatus, PodFailurePolicy, UncountedTerminatedPods,
};
use k8s_openapi::api::core::v1::{
    ContainerStatus, EnvVar, EnvVarSource, ObjectFieldSelector, Pod, PodTemplateSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::Resource as _;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use serde_json::json;
use tokio::sync::watch;

use crate::ReconcileError;
use crate::events::EventType;
use crate::replicaset::{api_error_text, pod_from_template, pods_to_delete, slow_start};
use crate::util::{self, Backoff, Shared};

/// The component name of this controller's events (upstream's `job-controller`).
const COMPONENT: &str = "job-controller";
/// Finalizer on every pod a Job controls until the pod is counted.
pub(crate) const TRACKING_FINALIZER: &str = "batch.kubernetes.io/job-tracking";
/// Annotation and label with an Indexed Job pod's completion index.
pub(crate) const COMPLETION_INDEX: &str = "batch.kubernetes.io/job-completion-index";
/// Failures of the pod's index before it (backoffLimitPerIndex).
const INDEX_FAILURE_COUNT: &str = "batch.kubernetes.io/job-index-failure-count";
/// Failures of the pod's index that the pod failure policy ignored.
const INDEX_IGNORED_FAILURE_COUNT: &str = "batch.kubernetes.io/job-index-ignored-failure-count";
/// `spec.managedBy` of Jobs this controller syncs (unset means the same).
const MANAGED_BY_US: &str = "kubernetes.io/job-controller";
/// First pod-recreation delay after a failure (upstream `DefaultJobPodFailureBackOff`).
const POD_FAILURE_BACKOFF: Duration = Duration::from_secs(10);
/// Upper bound of the recreation delay (upstream `MaxJobPodFailureBackOff`).
const MAX_POD_FAILURE_BACKOFF: Duration = Duration::from_secs(600);
/// Uids in `uncountedTerminatedPods` per sync (upstream `MaxUncountedPods`).
const MAX_UNCOUNTED: usize = 500;
/// Pod creations or deletions per sync (upstream `MaxPodCreateDeletePerSync`).
const MAX_CREATE_DELETE: usize = 500;
/// Requeues are never sooner than this (upstream's `syncJobBatchPeriod`).
const MIN_REQUEUE: Duration = Duration::from_secs(1);

/// Upstream's pod-failure backoff bookkeeping per Job: failures since the last success and
/// when the last of them finished. In memory, as upstream's `backoffStore`.
#[derive(Debug, Clone, Default, PartialEq)]
struct BackoffRecord {
    failures_after_last_success: u32,
    last_failure_time: Option<Timestamp>,
}

impl BackoffRecord {
    /// How long pod creation must still wait at `now`.
    fn remaining(&self, now: Timestamp) -> Duration {
        remaining_backoff(
            self.failures_after_last_success,
            self.last_failure_time,
            now,
        )
    }
}

/// `10 s × 2^(failures-1)`, at most 10 min, minus the time since the last failure.
fn remaining_backoff(failures: u32, last: Option<Timestamp>, now: Timestamp) -> Duration {
    let Some(last) = last else {
        return Duration::ZERO;
    };
    if failures == 0 {
        return Duration::ZERO;
    }
    let mut delay = POD_FAILURE_BACKOFF;
    for _ in 1..failures {
        delay = delay.saturating_mul(2);
        if delay >= MAX_POD_FAILURE_BACKOFF {
            delay = MAX_POD_FAILURE_BACKOFF;
            break;
        }
    }
    let elapsed = now.duration_since(last);
    let elapsed = Duration::try_from(elapsed).unwrap_or(Duration::ZERO);
    delay.saturating_sub(elapsed)
}

struct Ctx {
    shared: Arc<Shared>,
    backoff: Backoff,
    pod_backoff: Mutex<HashMap<String, BackoffRecord>>,
}

impl Ctx {
    fn record(&self, key: &str) -> BackoffRecord {
        let m = self.pod_backoff.lock().unwrap_or_else(|p| p.into_inner());
        m.get(key).cloned().unwrap_or_default()
    }
    fn set_record(&self, key: &str, r: BackoffRecord) {
        let mut m = self.pod_backoff.lock().unwrap_or_else(|p| p.into_inner());
        if r == BackoffRecord::default() {
            m.remove(key);
        } else {
            m.insert(key.to_string(), r);
        }
    }
}

pub(crate) async fn run(shared: Arc<Shared>, stop: watch::Receiver<bool>) {
    let client = shared.client.clone();
    let controller = Controller::new(Api::<Job>::all(client.clone()), watcher::Config::default())
        .owns(Api::<Pod>::all(client.clone()), watcher::Config::default())
        .with_config(kube::runtime::controller::Config::default().concurrency(shared.concurrency))
        .graceful_shutdown_on(crate::stopped(stop.clone()));
    let abandon = util::abandon_unsynced(controller.store(), stop.clone());
    let jobs = controller.store();
    let ctx = Arc::new(Ctx {
        shared: shared.clone(),
        backoff: Backoff::default(),
        pod_backoff: Mutex::new(HashMap::new()),
    });
    let main = util::drain(
        "job",
        abandon,
        controller.run(
            |job, ctx| async move {
                let key = util::key_of(job.meta());
                let r = sync(&ctx, &key).await;
                if r.is_ok() {
                    ctx.backoff.success(&key);
                }
                r
            },
            |job, _e, ctx| util::error_action(&ctx.backoff, &util::key_of(job.meta())),
            ctx,
        ),
    );
    let orphans = run_orphans(shared, jobs, stop);
    futures::join!(main, orphans);
}

/// The orphan loop: a pod with the tracking finalizer whose Job is gone, finished, or that has
/// no controller at all loses the finalizer (upstream's `orphanQueue`).
async fn run_orphans(shared: Arc<Shared>, jobs: Store<Job>, stop: watch::Receiver<bool>) {
    struct OrphanCtx {
        shared: Arc<Shared>,
        jobs: Store<Job>,
        backoff: Backoff,
    }
    let client = shared.client.clone();
    let controller = Controller::new(Api::<Pod>::all(client), watcher::Config::default())
        .with_config(kube::runtime::controller::Config::default().concurrency(shared.concurrency))
        .graceful_shutdown_on(crate::stopped(stop.clone()));
    let abandon = util::abandon_unsynced(controller.store(), stop);
    let ctx = Arc::new(OrphanCtx {
        shared,
        jobs,
        backoff: Backoff::default(),
    });
    controller
        .run(
            |pod, ctx| async move {
                let key = util::key_of(pod.meta());
                let r = sync_orphan(&pod, &ctx.shared, &ctx.jobs).await;
                if r.is_ok() {
                    ctx.backoff.success(&key);
                }
                r
            },
            |pod, _e, ctx| util::error_action(&ctx.backoff, &util::key_of(pod.meta())),
            ctx,
        )
        .take_until(abandon)
        .for_each(|r| async move {
            if let Err(kube::runtime::controller::Error::ReconcilerFailed(e, obj)) = r {
                tracing::warn!(controller = "job", pod = %obj, error = %e, "orphan pod finalizer removal failed; requeued");
            }
        })
        .await;
}

async fn sync_orphan(
    pod: &Pod,
    shared: &Shared,
    jobs: &Store<Job>,
) -> Result<Action, ReconcileError> {
    if !has_finalizer(pod) {
        return Ok(Action::await_change());
    }
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    if let Some(r) = util::controller_of(&pod.metadata) {
        if r.kind != "Job" || r.api_version != "batch/v1" {
            return Ok(Action::await_change());
        }
        // Still the Job's to count, or another controller's (`spec.managedBy`) to handle.
        let live = |j: &Job| {
            j.metadata.uid.as_deref() == Some(r.uid.as_str())
                && (!is_finished(j) || j.spec.as_ref().is_some_and(managed_elsewhere))
        };
        if jobs
            .get(&ObjectRef::<Job>::new(&r.name).within(&ns))
            .is_some_and(|j| live(&j))
        {
            return Ok(Action::await_change());
        }
        // The cache may lag: confirm with a live read before letting go of the pod.
        let fresh = Api::<Job>::namespaced(shared.client.clone(), &ns)
            .get_opt(&r.name)
            .await?;
        if fresh.as_ref().is_some_and(live) {
            return Ok(Action::await_change());
        }
    }
    let pods: Api<Pod> = Api::namespaced(shared.client.clone(), &ns);
    remove_finalizer(&pods, pod).await?;
    tracing::debug!(pod = %util::key_of(&pod.metadata), "removed the tracking finalizer of an orphan pod");
    Ok(Action::await_change())
}

fn managed_elsewhere(spec: &JobSpec) -> bool {
    spec.managed_by
        .as_deref()
        .is_some_and(|m| m != MANAGED_BY_US)
}

fn has_finalizer(pod: &Pod) -> bool {
    pod.metadata
        .finalizers
        .as_ref()
        .is_some_and(|f| f.iter().any(|f| f == TRACKING_FINALIZER))
}

/// Removes the tracking finalizer, if the pod's finalizers are still what we saw.
async fn remove_finalizer(api: &Api<Pod>, pod: &Pod) -> Result<(), ReconcileError> {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let old = pod.metadata.finalizers.clone().unwrap_or_default();
    let rest: Vec<&String> = old.iter().filter(|f| *f != TRACKING_FINALIZER).collect();
    let ops = if rest.is_empty() {
        json!([
            {"op": "test", "path": "/metadata/finalizers", "value": old},
            {"op": "remove", "path": "/metadata/finalizers"},
        ])
    } else {
        json!([
            {"op": "test", "path": "/metadata/finalizers", "value": old},
            {"op": "replace", "path": "/metadata/finalizers", "value": rest},
        ])
    };
    let patch: json_patch::Patch =
        serde_json::from_value(ops).map_err(|e| ReconcileError::Invalid(e.to_string()))?;
    match api
        .patch(&name, &PatchParams::default(), &Patch::<()>::Json(patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

pub(crate) fn condition<'a>(
    status: Option<&'a JobStatus>,
    type_: &str,
) -> Option<&'a JobCondition> {
    status?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_ && c.status == "True")
}

/// Complete or Failed (upstream `IsJobFinished`).
pub(crate) fn is_finished(job: &Job) -> bool {
    finished_condition(job).is_some()
}

/// The Complete or Failed condition that is True.
pub(crate) fn finished_condition(job: &Job) -> Option<&JobCondition> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
}

fn new_condition(type_: &str, reason: &str, message: &str, now: Timestamp) -> JobCondition {
    JobCondition {
        type_: type_.into(),
        status: "True".into(),
        reason: (!reason.is_empty()).then(|| reason.into()),
        message: (!message.is_empty()).then(|| message.into()),
        last_probe_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    }
}

/// Appends the condition or updates it when status, reason or message differ; a False
/// condition is never added (upstream `ensureJobConditionStatus`).
fn ensure_condition(
    conditions: &mut Vec<JobCondition>,
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    now: Timestamp,
) -> bool {
    let mut fresh = new_condition(type_, reason, message, now);
    fresh.status = status.into();
    if let Some(c) = conditions.iter_mut().find(|c| c.type_ == type_) {
        if c.status != status
            || c.reason.as_deref().unwrap_or("") != reason
            || c.message.as_deref().unwrap_or("") != message
        {
            *c = fresh;
            return true;
        }
        return false;
    }
    if status != "False" {
        conditions.push(fresh);
        return true;
    }
    false
}

fn suspended(spec: &JobSpec) -> bool {
    spec.suspend == Some(true)
}

fn indexed(spec: &JobSpec) -> bool {
    spec.completion_mode.as_deref() == Some("Indexed")
}

/// Only Failed pods are replaced, terminating ones are waited for.
fn only_replace_failed(spec: &JobSpec) -> bool {
    spec.pod_replacement_policy.as_deref() == Some("Failed") || spec.pod_failure_policy.is_some()
}

/// A pod that counts as failed: phase Failed, or (unless only failed pods are replaced) being
/// deleted before it succeeded.
fn pod_failed(pod: &Pod, spec: &JobSpec) -> bool {
    let phase = util::pod_phase(pod);
    if phase == "Failed" {
        return true;
    }
    if only_replace_failed(spec) {
        return false;
    }
    pod.metadata.deletion_timestamp.is_some() && phase != "Succeeded"
}

/// Being deleted but not finished (upstream `IsPodTerminating`).
fn pod_terminating(pod: &Pod) -> bool {
    let phase = util::pod_phase(pod);
    pod.metadata.deletion_timestamp.is_some() && phase != "Succeeded" && phase != "Failed"
}

/// The completion index of a pod, from its annotation.
fn completion_index(pod: &Pod) -> Option<i32> {
    pod.metadata
        .annotations
        .as_ref()?
        .get(COMPLETION_INDEX)?
        .parse::<i32>()
        .ok()
        .filter(|i| *i >= 0)
}

fn valid_index(pod: &Pod, completions: i32) -> Option<i32> {
    completion_index(pod).filter(|i| *i < completions)
}

fn annotation_count(pod: &Pod, key: &str) -> u32 {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .and_then(|v| v.parse::<u32>().ok())
        .filter(|v| i32::try_from(*v).is_ok())
        .unwrap_or(0)
}

/// Counted plus ignored failures of the pod's index before it.
fn absolute_failures(pod: &Pod) -> u32 {
    annotation_count(pod, INDEX_FAILURE_COUNT) + annotation_count(pod, INDEX_IGNORED_FAILURE_COUNT)
}

/// Whether this failed pod fails its index: a FailIndex rule matched, or it is a counted
/// failure and its index already failed `backoffLimitPerIndex` times (upstream
/// `isIndexFailed`).
fn index_failed(spec: &JobSpec, pod: &Pod, limit: i32) -> bool {
    if !pod_failed(pod, spec) {
        return false;
    }
    let (_, counts, action) = match_pod_failure_policy(spec.pod_failure_policy.as_ref(), pod);
    if action.as_deref() == Some("FailIndex") {
        return true;
    }
    counts && i64::from(annotation_count(pod, INDEX_FAILURE_COUNT)) >= i64::from(limit)
}

/// Per index without a running pod, the latest failed pod that still carries the finalizer:
/// it stays until its replacement exists (upstream `getPodsWithDelayedDeletionPerIndex`).
fn delayed_deletions<'a>(
    spec: &JobSpec,
    pods: &'a [Pod],
    active: &[&Pod],
    succeeded: &BTreeSet<i32>,
    failed: &BTreeSet<i32>,
    completions: i32,
    now: Timestamp,
) -> HashMap<i32, &'a Pod> {
    let active_ix: HashSet<i32> = active.iter().filter_map(|p| completion_index(p)).collect();
    let mut out: HashMap<i32, &'a Pod> = HashMap::new();
    for p in pods {
        if !has_finalizer(p) || !pod_failed(p, spec) {
            continue;
        }
        let Some(ix) = valid_index(p, completions) else {
            continue;
        };
        if succeeded.contains(&ix) || failed.contains(&ix) || active_ix.contains(&ix) {
            continue;
        }
        let replace = match out.get(&ix) {
            Some(last) => {
                absolute_failures(last) <= absolute_failures(p)
                    && finish_time(p, now) >= finish_time(last, now)
            }
            None => true,
        };
        if replace {
            out.insert(ix, p);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Completed indexes: "1,3-5,7"

/// Parses `status.completedIndexes`-style intervals, dropping indexes `>= completions` and
/// anything malformed (upstream `parseIndexesFromString`).
pub(crate) fn parse_indexes(s: &str, completions: i32) -> BTreeSet<i32> {
    let mut out = BTreeSet::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (a.parse::<i32>(), b.parse::<i32>()),
            None => (part.parse::<i32>(), part.parse::<i32>()),
        };
        let (Ok(a), Ok(b)) = (a, b) else { continue };
        for i in a.max(0)..=b.min(completions - 1) {
            out.insert(i);
        }
    }
    out
}

/// Formats indexes as upstream does: ascending, runs of three or more as `first-last`, a
/// pair as `a,b`.
pub(crate) fn format_indexes(set: &BTreeSet<i32>) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut run: Option<(i32, i32)> = None;
    for &i in set {
        run = match run {
            Some((a, b)) if i == b + 1 => Some((a, i)),
            Some((a, b)) => {
                parts.push(run_str(a, b));
                Some((i, i))
            }
            None => Some((i, i)),
        };
    }
    if let Some((a, b)) = run {
        parts.push(run_str(a, b));
    }
    parts.join(",")
}

fn run_str(a: i32, b: i32) -> String {
    match b - a {
        0 => a.to_string(),
        1 => format!("{a},{b}"),
        _ => format!("{a}-{b}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Pod failure policy

/// What a failed pod means under the policy: a FailJob message, whether it counts towards
/// `backoffLimit`, and the matched action (upstream `matchPodFailurePolicy`).
pub(crate) fn match_pod_failure_policy(
    policy: Option<&PodFailurePolicy>,
    pod: &Pod,
) -> (Option<String>, bool, Option<String>) {
    let Some(policy) = policy else {
        return (None, true, None);
    };
    let status = pod.status.clone().unwrap_or_default();
    let ns = pod.metadata.namespace.as_deref().unwrap_or("");
    let name = pod.metadata.name.as_deref().unwrap_or("");
    for (index, rule) in policy.rules.iter().enumerate() {
        let matched: Option<String> = if let Some(req) = &rule.on_exit_codes {
            let find = |list: &Option<Vec<ContainerStatus>>| -> Option<(String, i32)> {
                list.iter().flatten().find_map(|cs| {
                    let code = cs.state.as_ref()?.terminated.as_ref()?.exit_code;
                    let name_ok = req.container_name.as_ref().is_none_or(|n| *n == cs.name);
                    let op_ok = match req.operator.as_str() {
                        "In" => req.values.contains(&code),
                        "NotIn" => !req.values.contains(&code),
                        _ => false,
                    };
                    (name_ok && code != 0 && op_ok).then(|| (cs.name.clone(), code))
                })
            };
            find(&status.container_statuses)
                .or_else(|| find(&status.init_container_statuses))
                .map(|(c, code)| {
                    format!(
                        "Container {c} for pod {ns}/{name} failed with exit code {code} matching {} rule at index {index}",
                        rule.action
                    )
                })
        } else if let Some(patterns) = &rule.on_pod_conditions {
            status.conditions.iter().flatten().find_map(|c| {
                patterns
                    .iter()
                    .any(|p| p.type_ == c.type_ && p.status == c.status)
                    .then(|| {
                        format!(
                            "Pod {ns}/{name} has condition {} matching {} rule at index {index}",
                            c.type_, rule.action
                        )
                    })
            })
        } else {
            None
        };
        let Some(msg) = matched else { continue };
        match rule.action.as_str() {
            "Ignore" => return (None, false, Some("Ignore".into())),
            // Without backoffLimitPerIndex an index cannot fail on its own: count it.
            "FailIndex" => return (None, true, Some("FailIndex".into())),
            "Count" => return (None, true, Some("Count".into())),
            "FailJob" => return (Some(msg), true, Some("FailJob".into())),
            _ => {}
        }
    }
    (None, true, None)
}

// ---------------------------------------------------------------------------------------------
// The sync

/// The pods' finish time for backoff: the latest container termination, else the deletion
/// time, else now (upstream `getFinishedTime`).
fn finish_time(pod: &Pod, now: Timestamp) -> Timestamp {
    let status = pod.status.as_ref();
    let latest = status
        .into_iter()
        .flat_map(|s| {
            s.container_statuses
                .iter()
                .flatten()
                .chain(s.init_container_statuses.iter().flatten())
        })
        .filter_map(|cs| cs.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref())
        .map(|t| t.0)
        .max();
    latest
        .or_else(|| pod.metadata.deletion_timestamp.as_ref().map(|t| t.0))
        .unwrap_or(now)
}

/// Upstream's `newBackoffRecord`: failures since the last success among the newly finished
/// pods, added to what the Job had.
fn next_record(
    old: BackoffRecord,
    new_succeeded: &[&Pod],
    new_failed: &[&Pod],
    now: Timestamp,
) -> BackoffRecord {
    let mut failed: Vec<Timestamp> = new_failed.iter().map(|p| finish_time(p, now)).collect();
    failed.sort();
    if new_succeeded.is_empty() {
        let Some(last) = failed.last() else {
            return old;
        };
        return BackoffRecord {
            failures_after_last_success: old.failures_after_last_success
                + u32::try_from(failed.len()).unwrap_or(u32::MAX),
            last_failure_time: Some(*last),
        };
    }
    let last_success = new_succeeded
        .iter()
        .map(|p| finish_time(p, now))
        .max()
        .unwrap_or(now);
    let after: Vec<&Timestamp> = failed.iter().filter(|t| **t > last_success).collect();
    BackoffRecord {
        failures_after_last_success: u32::try_from(after.len()).unwrap_or(u32::MAX),
        last_failure_time: after.last().map(|t| **t),
    }
}

/// What one sync works from.
struct Facts<'a> {
    key: &'a str,
    spec: &'a JobSpec,
    pods: &'a [Pod],
    completions: i32,
    now: Timestamp,
    /// With backoffLimitPerIndex: the failed indexes.
    failed_indexes: Option<BTreeSet<i32>>,
    /// With backoffLimitPerIndex: per index, the failed pod kept (finalizer and all) until its
    /// replacement carries its failure count.
    delayed: HashMap<i32, &'a Pod>,
}

#[tracing::instrument(skip_all, fields(job = %key))]
async fn sync(ctx: &Ctx, key: &str) -> Result<Action, ReconcileError> {
    let client = &ctx.shared.client;
    let (ns, name) = key.split_once('/').unwrap_or(("", key));
    let jobs: Api<Job> = Api::namespaced(client.clone(), ns);
    let pods_api: Api<Pod> = Api::namespaced(client.clone(), ns);
    // A consistent read: never act on a status older than our own last write.
    let Some(mut job) = jobs.get_opt(name).await? else {
        ctx.set_record(key, BackoffRecord::default());
        return Ok(Action::await_change());
    };
    let spec = job
        .spec
        .clone()
        .ok_or_else(|| ReconcileError::Invalid("job without spec".into()))?;
    if managed_elsewhere(&spec) {
        return Ok(Action::await_change());
    }
    if is_finished(&job) {
        ctx.set_record(key, BackoffRecord::default());
        return Ok(Action::await_change());
    }
    if let Some(mode) = spec.completion_mode.as_deref()
        && mode != "NonIndexed"
        && mode != "Indexed"
    {
        tracing::warn!(mode, "unknown completion mode; not syncing");
        return Ok(Action::await_change());
    }
    let is_indexed = indexed(&spec);
    let completions = spec.completions.unwrap_or(0);
    if is_indexed && spec.completions.is_none() {
        return Err(ReconcileError::Invalid(
            "Indexed job without completions".into(),
        ));
    }
    let now = ctx.shared.clock.now();
    let original = job.status.clone().unwrap_or_default();
    let mut status = original.clone();
    let uncounted = status.uncounted_terminated_pods.clone().unwrap_or_default();
    let uncounted_succeeded: HashSet<String> = uncounted
        .succeeded
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    let uncounted_failed: HashSet<String> = uncounted
        .failed
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();

    let pods = claim_pods(&job, &spec, &pods_api).await?;
    let mut facts = Facts {
        key,
        spec: &spec,
        pods: &pods,
        completions,
        now,
        failed_indexes: None,
        delayed: HashMap::new(),
    };
    let active_pods: Vec<&Pod> = pods.iter().filter(|p| util::pod_active(p)).collect();
    let mut terminating = pods.iter().filter(|p| pod_terminating(p)).count();
    let mut ready = active_pods.iter().filter(|p| util::pod_ready(p)).count();
    let mut active = active_pods.len();

    // Finished pods not yet counted (they still carry the finalizer).
    let countable = |p: &&Pod| {
        let uid = p.metadata.uid.as_deref().unwrap_or("");
        has_finalizer(p)
            && !uncounted_succeeded.contains(uid)
            && !uncounted_failed.contains(uid)
            && (!is_indexed || valid_index(p, completions).is_some())
    };
    let new_succeeded: Vec<&Pod> = pods
        .iter()
        .filter(countable)
        .filter(|p| util::pod_phase(p) == "Succeeded")
        .collect();
    let new_failed: Vec<&Pod> = pods
        .iter()
        .filter(countable)
        .filter(|p| pod_failed(p, &spec))
        .collect();
    let counted_new_failed = new_failed
        .iter()
        .filter(|p| match_pod_failure_policy(spec.pod_failure_policy.as_ref(), p).1)
        .count();
    let mut succeeded = count(status.succeeded) + new_succeeded.len() + uncounted_succeeded.len();
    let failed = count(status.failed) + counted_new_failed + uncounted_failed.len();

    if status.start_time.is_none() && !suspended(&spec) {
        status.start_time = Some(Time(now));
    }
    let record = next_record(ctx.record(key), &new_succeeded, &new_failed, now);

    let mut requeue: Option<Duration> = None;
    let backoff_limit = usize::try_from(spec.backoff_limit.unwrap_or(6).max(0)).unwrap_or(0);
    let mut finished: Option<JobCondition> =
        condition(Some(&status), "SuccessCriteriaMet").cloned();
    if finished.is_none() {
        if let Some(ft) = condition(Some(&status), "FailureTarget") {
            finished = Some(new_condition(
                "Failed",
                ft.reason.as_deref().unwrap_or(""),
                ft.message.as_deref().unwrap_or(""),
                now,
            ));
        } else if let Some(msg) = fail_job_message(&spec, &pods) {
            finished = Some(new_condition(
                "FailureTarget",
                "PodFailurePolicy",
                &msg,
                now,
            ));
        }
    }
    if finished.is_none() {
        if failed > backoff_limit || past_backoff_limit_on_failure(&spec, &pods) {
            finished = Some(new_condition(
                "FailureTarget",
                "BackoffLimitExceeded",
                "Job has reached the specified backoff limit",
                now,
            ));
        } else if let Some(left) = deadline_left(&spec, &status, now) {
            if left.is_zero() {
                finished = Some(new_condition(
                    "FailureTarget",
                    "DeadlineExceeded",
                    "Job was active longer than specified deadline",
                    now,
                ));
            } else {
                requeue = Some(left);
            }
        }
    }

    let mut prev_succeeded_indexes = BTreeSet::new();
    let mut succeeded_indexes = BTreeSet::new();
    if is_indexed {
        prev_succeeded_indexes = parse_indexes(
            status.completed_indexes.as_deref().unwrap_or(""),
            completions,
        );
        succeeded_indexes = prev_succeeded_indexes.clone();
        for p in &pods {
            if util::pod_phase(p) == "Succeeded"
                && has_finalizer(p)
                && let Some(i) = valid_index(p, completions)
            {
                succeeded_indexes.insert(i);
            }
        }
        succeeded = succeeded_indexes.len();
        if let Some(limit) = spec.backoff_limit_per_index {
            let mut failed_ix =
                parse_indexes(status.failed_indexes.as_deref().unwrap_or(""), completions);
            for p in &pods {
                if has_finalizer(p)
                    && let Some(i) = valid_index(p, completions)
                    && index_failed(&spec, p, limit)
                {
                    failed_ix.insert(i);
                }
            }
            if finished.is_none() {
                let max = spec
                    .max_failed_indexes
                    .and_then(|m| usize::try_from(m).ok());
                if max.is_some_and(|m| failed_ix.len() > m) {
                    finished = Some(new_condition(
                        "FailureTarget",
                        "MaxFailedIndexesExceeded",
                        "Job has exceeded the specified maximal number of failed indexes",
                        now,
                    ));
                } else if !failed_ix.is_empty()
                    && failed_ix.len() + succeeded_indexes.len()
                        >= usize::try_from(completions).unwrap_or(0)
                {
                    finished = Some(new_condition(
                        "FailureTarget",
                        "FailedIndexes",
                        "Job has failed indexes",
                        now,
                    ));
                }
            }
            facts.delayed = delayed_deletions(
                &spec,
                &pods,
                &active_pods,
                &succeeded_indexes,
                &failed_ix,
                completions,
                now,
            );
            facts.failed_indexes = Some(failed_ix);
        }
        if finished.is_none()
            && let Some(msg) = match_success_policy(&spec, completions, &succeeded_indexes)
        {
            finished = Some(new_condition(
                "SuccessCriteriaMet",
                "SuccessPolicy",
                &msg,
                now,
            ));
        }
    }

    let deleting = job.metadata.deletion_timestamp.is_some();
    let mut errors: Vec<ReconcileError> = Vec::new();
    if finished.is_some() {
        let (deleted_ready, deleted, err) =
            delete_active(&ctx.shared, &job, &pods_api, &active_pods, false).await;
        if deleted != active {
            // Not finished while a pod we could not delete still runs.
            finished = None;
        }
        active -= deleted;
        terminating += deleted;
        ready = ready.saturating_sub(deleted_ready);
        errors.extend(err);
    } else {
        let mut managed = false;
        if !deleting {
            let out = manage(
                &ctx.shared,
                &facts,
                &job,
                &pods_api,
                &active_pods,
                terminating,
                succeeded,
                &succeeded_indexes,
                &record,
            )
            .await;
            active = out.active;
            terminating += out.removed;
            ready = ready.saturating_sub(out.removed_ready);
            requeue = min_requeue(requeue, out.requeue);
            errors.extend(out.error);
            managed = true;
        }
        let complete = match spec.completions {
            None => succeeded > 0 && active == 0,
            Some(c) => succeeded >= usize::try_from(c.max(0)).unwrap_or(0) && active == 0,
        };
        if complete {
            finished = Some(new_condition(
                "SuccessCriteriaMet",
                "CompletionsReached",
                "Reached expected number of succeeded pods",
                now,
            ));
        } else if managed {
            let conditions = status.conditions.get_or_insert_with(Vec::new);
            if suspended(&spec) {
                if ensure_condition(
                    conditions,
                    "Suspended",
                    "True",
                    "JobSuspended",
                    "Job suspended",
                    now,
                ) {
                    ctx.shared.events.event(
                        COMPONENT,
                        &job,
                        EventType::Normal,
                        "Suspended",
                        "Job suspended".into(),
                    );
                }
            } else if ensure_condition(
                conditions,
                "Suspended",
                "False",
                "JobResumed",
                "Job resumed",
                now,
            ) {
                ctx.shared.events.event(
                    COMPONENT,
                    &job,
                    EventType::Normal,
                    "Resumed",
                    "Job resumed".into(),
                );
                // ActiveDeadlineSeconds counts from the resume (upstream resets startTime).
                status.start_time = Some(Time(now));
            }
            if conditions.is_empty() {
                status.conditions = None;
            }
        }
    }

    status.active = nonzero(active);
    status.ready = Some(i32::try_from(ready).unwrap_or(i32::MAX));
    status.terminating = Some(i32::try_from(terminating).unwrap_or(i32::MAX));
    job.status = Some(status);
    let tracked = Tracking {
        facts: &facts,
        original: &original,
        uncounted_succeeded: &uncounted_succeeded,
        uncounted_failed: &uncounted_failed,
        prev_succeeded_indexes: &prev_succeeded_indexes,
        succeeded_indexes,
        terminating,
        record,
    };
    track(ctx, &jobs, &pods_api, job, finished, tracked).await?;
    if let Some(e) = errors.into_iter().next() {
        return Err(e);
    }
    Ok(match requeue {
        Some(d) => Action::requeue(d.max(MIN_REQUEUE)),
        None => Action::await_change(),
    })
}

fn count(v: Option<i32>) -> usize {
    usize::try_from(v.unwrap_or(0).max(0)).unwrap_or(0)
}

fn nonzero(n: usize) -> Option<i32> {
    (n > 0).then(|| i32::try_from(n).unwrap_or(i32::MAX))
}

fn min_requeue(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

/// The first FailJob message of a failed pod under the policy.
fn fail_job_message(spec: &JobSpec, pods: &[Pod]) -> Option<String> {
    let policy = spec.pod_failure_policy.as_ref()?;
    pods.iter()
        .filter(|p| pod_failed(p, spec))
        .find_map(|p| match_pod_failure_policy(Some(policy), p).0)
}

/// With `restartPolicy: OnFailure`, container restarts of running pods count as failures.
fn past_backoff_limit_on_failure(spec: &JobSpec, pods: &[Pod]) -> bool {
    let policy = spec
        .template
        .spec
        .as_ref()
        .and_then(|s| s.restart_policy.as_deref());
    if policy != Some("OnFailure") {
        return false;
    }
    let restarts: i64 = pods
        .iter()
        .filter(|p| matches!(util::pod_phase(p), "Running" | "Pending"))
        .filter_map(|p| p.status.as_ref())
        .flat_map(|s| {
            s.init_container_statuses
                .iter()
                .flatten()
                .chain(s.container_statuses.iter().flatten())
        })
        .map(|c| i64::from(c.restart_count))
        .sum();
    let limit = i64::from(spec.backoff_limit.unwrap_or(6));
    if limit == 0 {
        restarts > 0
    } else {
        restarts >= limit
    }
}

/// Time left before `activeDeadlineSeconds` (zero when past it); None without a deadline, a
/// start time, or while suspended.
fn deadline_left(spec: &JobSpec, status: &JobStatus, now: Timestamp) -> Option<Duration> {
    let ads = spec.active_deadline_seconds?;
    if suspended(spec) {
        return None;
    }
    let start = status.start_time.as_ref()?.0;
    let allowed = Duration::from_secs(u64::try_from(ads.max(0)).unwrap_or(0));
    let elapsed = Duration::try_from(now.duration_since(start)).unwrap_or(Duration::ZERO);
    Some(allowed.saturating_sub(elapsed))
}

/// The message of the first success-policy rule the succeeded indexes meet.
fn match_success_policy(
    spec: &JobSpec,
    completions: i32,
    succeeded: &BTreeSet<i32>,
) -> Option<String> {
    let policy = spec.success_policy.as_ref()?;
    for (index, rule) in policy.rules.iter().enumerate() {
        let met = match (&rule.succeeded_indexes, rule.succeeded_count) {
            (Some(ix), count) => {
                let wanted = parse_indexes(ix, completions);
                let have = wanted.intersection(succeeded).count();
                match count {
                    Some(c) => have >= usize::try_from(c.max(0)).unwrap_or(0),
                    None => have == wanted.len(),
                }
            }
            (None, Some(c)) => succeeded.len() >= usize::try_from(c.max(0)).unwrap_or(0),
            (None, None) => false,
        };
        if met {
            return Some(format!("Matched rules at index {index}"));
        }
    }
    None
}

/// Adopts matching orphans (with the tracking finalizer) and releases owned pods that no
/// longer match; returns the pods the Job controls.
async fn claim_pods(
    job: &Job,
    spec: &JobSpec,
    pods_api: &Api<Pod>,
) -> Result<Vec<Pod>, ReconcileError> {
    let uid = job.metadata.uid.clone().unwrap_or_default();
    let selector = spec
        .selector
        .clone()
        .ok_or_else(|| ReconcileError::Invalid("job without selector".into()))?;
    let deleting = job.metadata.deletion_timestamp.is_some();
    let all = pods_api.list(&ListParams::default()).await?.items;
    let mut owned = Vec::new();
    for pod in all {
        let matches = util::selects(&selector, pod.metadata.labels.as_ref())?;
        match util::controller_of(&pod.metadata) {
            Some(r) if r.uid == uid => {
                if matches || deleting {
                    owned.push(pod);
                } else {
                    release(pods_api, &pod, &uid).await?;
                }
            }
            Some(_) => {}
            None => {
                if !matches || deleting || pod.metadata.deletion_timestamp.is_some() {
                    continue;
                }
                if let Some(p) = adopt(pods_api, &pod, job).await? {
                    owned.push(p);
                }
            }
        }
    }
    Ok(owned)
}

async fn adopt(api: &Api<Pod>, pod: &Pod, job: &Job) -> Result<Option<Pod>, ReconcileError> {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let mut refs = pod.metadata.owner_references.clone().unwrap_or_default();
    refs.push(util::controller_ref(job));
    let mut finalizers = pod.metadata.finalizers.clone().unwrap_or_default();
    if !finalizers.iter().any(|f| f == TRACKING_FINALIZER) {
        finalizers.push(TRACKING_FINALIZER.into());
    }
    let patch = json!({"metadata": {
        "ownerReferences": refs,
        "finalizers": finalizers,
        "uid": pod.metadata.uid,
        "resourceVersion": pod.metadata.resource_version,
    }});
    match api
        .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
        .await
    {
        Ok(p) => {
            tracing::info!(pod = %name, "adopted orphan pod");
            Ok(Some(p))
        }
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(None),
        Err(e) => Err(e.into()),
    }
}

async fn release(api: &Api<Pod>, pod: &Pod, uid: &str) -> Result<(), ReconcileError> {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let refs: Vec<_> = pod
        .metadata
        .owner_references
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r.uid != uid)
        .collect();
    let finalizers: Vec<String> = pod
        .metadata
        .finalizers
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|f| f != TRACKING_FINALIZER)
        .collect();
    let patch = json!({"metadata": {
        "ownerReferences": if refs.is_empty() { serde_json::Value::Null } else { json!(refs) },
        "finalizers": if finalizers.is_empty() { serde_json::Value::Null } else { json!(finalizers) },
        "uid": pod.metadata.uid,
        "resourceVersion": pod.metadata.resource_version,
    }});
    match api
        .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
        .await
    {
        Ok(_) => {
            tracing::info!(pod = %name, "released pod that no longer matches the selector");
            Ok(())
        }
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Deletes pods; with `drop_finalizer` the tracking finalizer goes first (the pod is then
/// never counted, as for surplus or suspended pods). Returns (ready deleted, deleted, error).
/// Each deletion is recorded on the Job as upstream's pod control does (`SuccessfulDelete`
/// `Deleted pod: <name>`, `FailedDelete` `Error deleting: <error>`; nothing for a pod already
/// gone).
async fn delete_active(
    shared: &Shared,
    job: &Job,
    api: &Api<Pod>,
    pods: &[&Pod],
    drop_finalizer: bool,
) -> (usize, usize, Option<ReconcileError>) {
    let results = join_all(pods.iter().map(|p| async move {
        if drop_finalizer && has_finalizer(p) {
            remove_finalizer(api, p).await?;
        }
        let name = p.metadata.name.clone().unwrap_or_default();
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {
                shared.events.event(
                    COMPONENT,
                    job,
                    EventType::Normal,
                    "SuccessfulDelete",
                    format!("Deleted pod: {name}"),
                );
                Ok(())
            }
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => {
                shared.events.event(
                    COMPONENT,
                    job,
                    EventType::Warning,
                    "FailedDelete",
                    format!("Error deleting: {}", api_error_text(&e)),
                );
                Err(ReconcileError::from(e))
            }
        }
    }))
    .await;
    let mut deleted = 0;
    let mut deleted_ready = 0;
    let mut error = None;
    for (p, r) in pods.iter().zip(results) {
        match r {
            Ok(()) => {
                deleted += 1;
                if util::pod_ready(p) {
                    deleted_ready += 1;
                }
            }
            Err(e) => error = Some(e),
        }
    }
    (deleted_ready, deleted, error)
}

struct Managed {
    active: usize,
    removed: usize,
    removed_ready: usize,
    requeue: Option<Duration>,
    error: Option<ReconcileError>,
}

/// Creates or deletes pods so that the right number runs (upstream `manageJob`).
#[allow(clippy::too_many_arguments)]
async fn manage(
    shared: &Shared,
    f: &Facts<'_>,
    job: &Job,
    pods_api: &Api<Pod>,
    active_pods: &[&Pod],
    terminating: usize,
    succeeded: usize,
    succeeded_indexes: &BTreeSet<i32>,
    record: &BackoffRecord,
) -> Managed {
    let spec = f.spec;
    let active = active_pods.len();
    let mut out = Managed {
        active,
        removed: 0,
        removed_ready: 0,
        requeue: None,
        error: None,
    };
    if suspended(spec) {
        if !active_pods.is_empty() {
            tracing::info!(active, "deleting the pods of a suspended job");
        }
        let (ready, removed, err) = delete_active(shared, job, pods_api, active_pods, true).await;
        out.active -= removed;
        out.removed = removed;
        out.removed_ready = ready;
        out.error = err;
        return out;
    }
    let parallelism = usize::try_from(spec.parallelism.unwrap_or(1).max(0)).unwrap_or(0);
    let want = match spec.completions {
        None if succeeded > 0 => active,
        None => parallelism,
        Some(c) => usize::try_from(c.max(0))
            .unwrap_or(0)
            .saturating_sub(succeeded)
            .min(parallelism),
    };
    let rm_at_least = active.saturating_sub(want);
    let mut to_delete = pods_for_removal(spec, active_pods, rm_at_least, f.completions);
    to_delete.truncate(MAX_CREATE_DELETE);
    if !to_delete.is_empty() {
        tracing::info!(deleting = to_delete.len(), want, "too many pods running");
        let (ready, removed, err) = delete_active(shared, job, pods_api, &to_delete, true).await;
        out.active -= removed;
        out.removed = removed;
        out.removed_ready = ready;
        out.error = err;
        return out;
    }
    let waiting = if only_replace_failed(spec) {
        terminating
    } else {
        0
    };
    let mut diff = want.saturating_sub(waiting).saturating_sub(active);
    if diff == 0 {
        return out;
    }
    let per_index = spec.backoff_limit_per_index.is_some() && indexed(spec);
    let remaining = if per_index {
        Duration::ZERO
    } else {
        record.remaining(f.now)
    };
    if !remaining.is_zero() {
        tracing::debug!(?remaining, "pod creation held back by failure backoff");
        out.requeue = Some(remaining.max(MIN_REQUEUE));
        return out;
    }
    diff = diff.min(MAX_CREATE_DELETE);
    let mut indexes: Vec<i32> = Vec::new();
    if indexed(spec) {
        indexes = first_pending_indexes(f, active_pods, succeeded_indexes, diff);
        if per_index {
            // Each index waits out its own failure backoff.
            let wait = |ix: &i32| {
                f.delayed.get(ix).map_or(Duration::ZERO, |p| {
                    remaining_backoff(absolute_failures(p) + 1, Some(finish_time(p, f.now)), f.now)
                })
            };
            let (now_ready, later): (Vec<i32>, Vec<i32>) =
                indexes.iter().partition(|ix| wait(ix).is_zero());
            if now_ready.is_empty() && !later.is_empty() {
                let soonest = later.iter().map(wait).min().unwrap_or(MIN_REQUEUE);
                out.requeue = Some(soonest.max(MIN_REQUEUE));
                return out;
            }
            indexes = now_ready;
        }
        diff = indexes.len();
    }
    let job_name = job.metadata.name.clone().unwrap_or_default();
    let mut template: PodTemplateSpec = spec.template.clone();
    if indexed(spec) {
        add_index_env(&mut template);
    }
    let meta = template.metadata.get_or_insert_with(Default::default);
    let finalizers = meta.finalizers.get_or_insert_with(Vec::new);
    if !finalizers.iter().any(|f| f == TRACKING_FINALIZER) {
        finalizers.push(TRACKING_FINALIZER.into());
    }
    let base = pod_from_template(&template, &job_name, util::controller_ref(job));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let (created, err) = slow_start(diff, || {
        let mut pod = base.clone();
        let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if let Some(ix) = indexes.get(i) {
            let ix_s = ix.to_string();
            pod.metadata
                .annotations
                .get_or_insert_with(Default::default)
                .insert(COMPLETION_INDEX.into(), ix_s.clone());
            pod.metadata
                .labels
                .get_or_insert_with(Default::default)
                .insert(COMPLETION_INDEX.into(), ix_s);
            pod.metadata.generate_name = Some(generate_name_with_index(&job_name, *ix));
            if per_index {
                let (counted, ignored) = f.delayed.get(ix).map_or((0, 0), |p| {
                    let c = annotation_count(p, INDEX_FAILURE_COUNT);
                    let i = annotation_count(p, INDEX_IGNORED_FAILURE_COUNT);
                    if match_pod_failure_policy(spec.pod_failure_policy.as_ref(), p).1 {
                        (c + 1, i)
                    } else {
                        (c, i + 1)
                    }
                });
                let ann = pod
                    .metadata
                    .annotations
                    .get_or_insert_with(Default::default);
                ann.insert(INDEX_FAILURE_COUNT.into(), counted.to_string());
                if ignored > 0 {
                    ann.insert(INDEX_IGNORED_FAILURE_COUNT.into(), ignored.to_string());
                }
            }
            if let Some(s) = pod.spec.as_mut() {
                s.hostname = Some(format!("{job_name}-{ix}"));
            }
        }
        let api = pods_api.clone();
        async move {
            match api.create(&PostParams::default(), &pod).await {
                Ok(p) => {
                    shared.events.event(
                        COMPONENT,
                        job,
                        EventType::Normal,
                        "SuccessfulCreate",
                        format!("Created pod: {}", p.metadata.name.unwrap_or_default()),
                    );
                    Ok(())
                }
                Err(e) => {
                    shared.events.event(
                        COMPONENT,
                        job,
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
    if created > 0 {
        tracing::info!(created, wanted = diff, "created pods");
    }
    out.active += created;
    out.error = err.map(ReconcileError::from);
    out
}

/// `<job>-<index>-`, with the job name cut so that the generated name fits (upstream
/// `podGenerateNameWithIndex`).
fn generate_name_with_index(job: &str, index: i32) -> String {
    const MAX_GENERATED_NAME: usize = 63 - 5;
    let suffix = format!("-{index}-");
    let keep = MAX_GENERATED_NAME.saturating_sub(suffix.len());
    let prefix: String = job.chars().take(keep).collect();
    format!("{prefix}{suffix}")
}

/// `JOB_COMPLETION_INDEX` from the index label (PodIndexLabel is GA), in every container
/// that lacks it.
fn add_index_env(template: &mut PodTemplateSpec) {
    let Some(spec) = template.spec.as_mut() else {
        return;
    };
    let env = EnvVar {
        name: "JOB_COMPLETION_INDEX".into(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                api_version: None,
                field_path: format!("metadata.labels['{COMPLETION_INDEX}']"),
            }),
            ..EnvVarSource::default()
        }),
    };
    let containers = spec
        .init_containers
        .iter_mut()
        .flatten()
        .chain(spec.containers.iter_mut());
    for c in containers {
        let vars = c.env.get_or_insert_with(Vec::new);
        if !vars.iter().any(|e| e.name == env.name) {
            vars.push(env.clone());
        }
    }
}

/// Surplus pods to delete: for Indexed Jobs first those with a missing, out-of-range or
/// repeated index, then the least advanced (upstream `activePodsForRemoval`).
fn pods_for_removal<'a>(
    spec: &JobSpec,
    active: &[&'a Pod],
    rm_at_least: usize,
    completions: i32,
) -> Vec<&'a Pod> {
    let mut rm: Vec<&Pod> = Vec::new();
    let mut left: Vec<&Pod> = Vec::new();
    if indexed(spec) {
        let mut by_index: HashMap<i32, Vec<&Pod>> = HashMap::new();
        for p in active {
            match valid_index(p, completions) {
                Some(i) => by_index.entry(i).or_default().push(p),
                None => rm.push(p),
            }
        }
        for (_, group) in by_index {
            if group.len() == 1 {
                left.extend(group);
            } else {
                // Keep the most advanced pod of the index.
                let n = group.len();
                let order = pods_to_delete(&group, n);
                rm.extend(order.iter().take(n - 1));
                left.extend(order.iter().skip(n - 1));
            }
        }
    } else {
        left = active.to_vec();
    }
    if rm.len() < rm_at_least {
        let more = rm_at_least - rm.len();
        rm.extend(pods_to_delete(&left, more));
    }
    rm
}

/// The lowest indexes that neither succeeded nor have an active (or, when only failed pods
/// are replaced, terminating) pod.
fn first_pending_indexes(
    f: &Facts<'_>,
    active: &[&Pod],
    succeeded: &BTreeSet<i32>,
    count: usize,
) -> Vec<i32> {
    let mut busy: HashSet<i32> = succeeded.iter().copied().collect();
    busy.extend(f.failed_indexes.iter().flatten().copied());
    busy.extend(active.iter().filter_map(|p| completion_index(p)));
    if only_replace_failed(f.spec) {
        busy.extend(
            f.pods
                .iter()
                .filter(|p| pod_terminating(p))
                .filter_map(completion_index),
        );
    }
    (0..f.completions)
        .filter(|i| !busy.contains(i))
        .take(count)
        .collect()
}

/// Inputs of the status tracking step.
struct Tracking<'a> {
    facts: &'a Facts<'a>,
    original: &'a JobStatus,
    uncounted_succeeded: &'a HashSet<String>,
    uncounted_failed: &'a HashSet<String>,
    prev_succeeded_indexes: &'a BTreeSet<i32>,
    succeeded_indexes: BTreeSet<i32>,
    terminating: usize,
    record: BackoffRecord,
}

/// Upstream's `trackJobStatusAndRemoveFinalizers`: (1) write the uids of newly finished pods
/// to `uncountedTerminatedPods` (and an interim FailureTarget/SuccessCriteriaMet condition),
/// (2) remove their finalizers, (3) move the uids whose finalizer is gone into the counters,
/// (4) add Complete/Failed when nothing is uncounted and nothing terminates. Status is
/// written only when it changed, with the resourceVersion read at the start of the sync.
async fn track(
    ctx: &Ctx,
    jobs: &Api<Job>,
    pods_api: &Api<Pod>,
    mut job: Job,
    mut finished: Option<JobCondition>,
    t: Tracking<'_>,
) -> Result<(), ReconcileError> {
    let f = t.facts;
    let spec = f.spec;
    let is_indexed = indexed(spec);
    let mut status = job.status.take().unwrap_or_default();
    let mut uncounted = status.uncounted_terminated_pods.take().unwrap_or_default();
    let mut unc_succeeded: Vec<String> = uncounted.succeeded.take().unwrap_or_default();
    let mut unc_failed: Vec<String> = uncounted.failed.take().unwrap_or_default();

    let mut pods: Vec<&Pod> = f.pods.iter().collect();
    if is_indexed {
        pods.sort_by_key(|p| completion_index(p).unwrap_or(i32::MAX));
    }
    let mut with_finalizer: HashSet<String> = pods
        .iter()
        .filter(|p| has_finalizer(p))
        .filter_map(|p| p.metadata.uid.clone())
        .collect();
    clean_uncounted(
        &mut status,
        &mut unc_succeeded,
        &mut unc_failed,
        &with_finalizer,
    );

    let deleting = job.metadata.deletion_timestamp.is_some();
    let mut to_remove: Vec<&Pod> = Vec::new();
    let mut new_indexes: Vec<i32> = Vec::new();
    let mut reached_max = false;
    for pod in &pods {
        if !has_finalizer(pod) {
            continue;
        }
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let considered_failed = pod_failed(pod, spec);
        let kept_for_replacement = completion_index(pod)
            .and_then(|ix| f.delayed.get(&ix))
            .is_some_and(|d| d.metadata.uid == pod.metadata.uid);
        let can_remove = deleting
            || finished.is_some()
            || util::pod_phase(pod) == "Succeeded"
            || (considered_failed && !kept_for_replacement);
        if !can_remove {
            continue;
        }
        to_remove.push(pod);
        if util::pod_phase(pod) == "Succeeded" && !t.uncounted_failed.contains(&uid) {
            if is_indexed {
                if let Some(ix) = valid_index(pod, f.completions)
                    && !t.prev_succeeded_indexes.contains(&ix)
                {
                    new_indexes.push(ix);
                }
            } else if !t.uncounted_succeeded.contains(&uid) && !unc_succeeded.contains(&uid) {
                unc_succeeded.push(uid);
            }
        } else if considered_failed
            || finished
                .as_ref()
                .is_some_and(|c| c.type_ != "SuccessCriteriaMet")
        {
            let index_ok = !is_indexed || valid_index(pod, f.completions).is_some();
            if !t.uncounted_failed.contains(&uid) && !unc_failed.contains(&uid) && index_ok {
                let counts = match_pod_failure_policy(spec.pod_failure_policy.as_ref(), pod).1;
                if counts {
                    unc_failed.push(uid);
                }
            }
        }
        if new_indexes.len() + unc_succeeded.len() + unc_failed.len() >= MAX_UNCOUNTED {
            reached_max = true;
            break;
        }
    }
    if is_indexed {
        let mut all = t.succeeded_indexes.clone();
        all.extend(new_indexes);
        status.succeeded = nonzero(all.len());
        let s = format_indexes(&all);
        status.completed_indexes = (!s.is_empty()).then_some(s);
        status.failed_indexes = f.failed_indexes.as_ref().map(format_indexes);
    }
    let conditions = status.conditions.get_or_insert_with(Vec::new);
    match finished.as_ref().map(|c| c.type_.as_str()) {
        Some("FailureTarget") => {
            let Some(ft) = finished.take() else {
                return Ok(());
            };
            conditions.push(ft.clone());
            finished = Some(new_condition(
                "Failed",
                ft.reason.as_deref().unwrap_or(""),
                ft.message.as_deref().unwrap_or(""),
                f.now,
            ));
        }
        Some("SuccessCriteriaMet") => {
            let Some(sc) = finished.take() else {
                return Ok(());
            };
            if !conditions
                .iter()
                .any(|c| c.type_ == "SuccessCriteriaMet" && c.status == "True")
            {
                conditions.push(sc.clone());
            }
            finished = Some(new_condition(
                "Complete",
                sc.reason.as_deref().unwrap_or(""),
                sc.message.as_deref().unwrap_or(""),
                f.now,
            ));
        }
        _ => {}
    }
    if conditions.is_empty() {
        status.conditions = None;
    }

    // (1) Flush the uncounted uids before any finalizer goes.
    let mut written = t.original.clone();
    set_uncounted(&mut status, &unc_succeeded, &unc_failed);
    job = write_status(jobs, job, &status, &mut written).await?;
    ctx.set_record(f.key, t.record.clone());

    // (2) Remove finalizers.
    let results = join_all(to_remove.iter().map(|p| remove_finalizer(pods_api, p))).await;
    let mut rm_error = None;
    for (p, r) in to_remove.iter().zip(results) {
        match r {
            Ok(()) => {
                if let Some(uid) = &p.metadata.uid {
                    with_finalizer.remove(uid);
                }
            }
            Err(e) => rm_error = Some(e),
        }
    }
    // (3) Count the uids whose finalizer is gone.
    clean_uncounted(
        &mut status,
        &mut unc_succeeded,
        &mut unc_failed,
        &with_finalizer,
    );
    set_uncounted(&mut status, &unc_succeeded, &unc_failed);
    if let Some(e) = rm_error {
        write_status(jobs, job, &status, &mut written).await?;
        return Err(e);
    }
    // (4) The terminal condition.
    let mut just_finished = None;
    if !reached_max
        && let Some(cond) = finished
        && unc_succeeded.is_empty()
        && unc_failed.is_empty()
        && t.terminating == 0
    {
        let conditions = status.conditions.get_or_insert_with(Vec::new);
        if ensure_condition(
            conditions,
            &cond.type_,
            "True",
            cond.reason.as_deref().unwrap_or(""),
            cond.message.as_deref().unwrap_or(""),
            f.now,
        ) {
            just_finished = Some(cond.clone());
        }
        if cond.type_ == "Complete" {
            status.completion_time = Some(Time(f.now));
        }
        tracing::info!(condition = %cond.type_, reason = cond.reason.as_deref().unwrap_or(""), "job finished");
    }
    let job = write_status(jobs, job, &status, &mut written).await?;
    if let Some(cond) = just_finished {
        record_finished(&ctx.shared, &job, spec, &status, &cond);
    }
    Ok(())
}

/// The events of a Job that just finished, once its terminal condition is stored (upstream
/// `recordJobFinished`): `Completed` (and `TooManySucceededPods` past `completions`), or a
/// Warning with the `Failed` condition's reason and message.
fn record_finished(
    shared: &Shared,
    job: &Job,
    spec: &JobSpec,
    status: &JobStatus,
    cond: &JobCondition,
) {
    if cond.type_ == "Complete" {
        if let Some(c) = spec.completions
            && status.succeeded.unwrap_or(0) > c
        {
            shared.events.event(
                COMPONENT,
                job,
                EventType::Warning,
                "TooManySucceededPods",
                "Too many succeeded pods running after completion count reached".into(),
            );
        }
        shared.events.event(
            COMPONENT,
            job,
            EventType::Normal,
            "Completed",
            "Job completed".into(),
        );
    } else {
        shared.events.event(
            COMPONENT,
            job,
            EventType::Warning,
            cond.reason.as_deref().unwrap_or(""),
            cond.message.clone().unwrap_or_default(),
        );
    }
}

fn set_uncounted(status: &mut JobStatus, succeeded: &[String], failed: &[String]) {
    status.uncounted_terminated_pods = Some(UncountedTerminatedPods {
        succeeded: (!succeeded.is_empty()).then(|| succeeded.to_vec()),
        failed: (!failed.is_empty()).then(|| failed.to_vec()),
    });
}

/// Moves uncounted uids whose pod no longer has the finalizer into the counters.
fn clean_uncounted(
    status: &mut JobStatus,
    succeeded: &mut Vec<String>,
    failed: &mut Vec<String>,
    with_finalizer: &HashSet<String>,
) {
    let before = succeeded.len();
    succeeded.retain(|u| with_finalizer.contains(u));
    let moved = before - succeeded.len();
    if moved > 0 {
        status.succeeded = nonzero(count(status.succeeded) + moved);
    }
    let before = failed.len();
    failed.retain(|u| with_finalizer.contains(u));
    let moved = before - failed.len();
    if moved > 0 {
        status.failed = nonzero(count(status.failed) + moved);
    }
}

/// `PUT /status` when `status` differs from what was last written; returns the Job as stored.
async fn write_status(
    jobs: &Api<Job>,
    mut job: Job,
    status: &JobStatus,
    written: &mut JobStatus,
) -> Result<Job, ReconcileError> {
    if status == written {
        return Ok(job);
    }
    job.status = Some(status.clone());
    let name = job.metadata.name.clone().unwrap_or_default();
    let stored = jobs
        .replace_status(&name, &PostParams::default(), &job)
        .await?;
    *written = status.clone();
    Ok(stored)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn indexes_round_trip_in_upstream_form() {
        let set = parse_indexes("0,2-4,7,9-10", 10);
        assert_eq!(set.iter().copied().collect::<Vec<_>>(), [0, 2, 3, 4, 7, 9]);
        assert_eq!(format_indexes(&set), "0,2-4,7,9");
        let pair: BTreeSet<i32> = [3, 4].into_iter().collect();
        assert_eq!(format_indexes(&pair), "3,4");
        assert_eq!(format_indexes(&BTreeSet::new()), "");
        assert!(parse_indexes("x,1-", 5).is_empty());
    }

    #[test]
    fn backoff_doubles_from_ten_seconds_and_caps_at_ten_minutes() {
        let last = ts("2026-01-01T00:00:00Z");
        assert_eq!(remaining_backoff(0, Some(last), last), Duration::ZERO);
        assert_eq!(
            remaining_backoff(1, Some(last), last),
            Duration::from_secs(10)
        );
        assert_eq!(
            remaining_backoff(2, Some(last), last),
            Duration::from_secs(20)
        );
        assert_eq!(
            remaining_backoff(3, Some(last), last),
            Duration::from_secs(40)
        );
        assert_eq!(
            remaining_backoff(30, Some(last), last),
            Duration::from_secs(600)
        );
        let later = ts("2026-01-01T00:00:15Z");
        assert_eq!(
            remaining_backoff(2, Some(last), later),
            Duration::from_secs(5)
        );
        assert_eq!(remaining_backoff(1, Some(last), later), Duration::ZERO);
    }

    fn failed_pod(code: i32, conditions: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns"},
            "status": {
                "phase": "Failed",
                "conditions": conditions,
                "containerStatuses": [{
                    "name": "main", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
                    "state": {"terminated": {"exitCode": code}}
                }]
            }
        }))
        .unwrap()
    }

    #[test]
    fn pod_failure_policy_matches_rules_in_order() {
        let policy: PodFailurePolicy = serde_json::from_value(json!({"rules": [
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
            {"action": "FailJob", "onExitCodes": {"containerName": "main", "operator": "In", "values": [42]}},
            {"action": "Count", "onExitCodes": {"operator": "NotIn", "values": [1]}},
        ]}))
        .unwrap();
        let (msg, counts, action) =
            match_pod_failure_policy(Some(&policy), &failed_pod(42, json!([])));
        assert_eq!(
            msg.as_deref(),
            Some(
                "Container main for pod ns/p failed with exit code 42 matching FailJob rule at index 1"
            )
        );
        assert!(counts);
        assert_eq!(action.as_deref(), Some("FailJob"));
        let disrupted = failed_pod(42, json!([{"type": "DisruptionTarget", "status": "True"}]));
        assert_eq!(
            match_pod_failure_policy(Some(&policy), &disrupted),
            (None, false, Some("Ignore".into()))
        );
        assert_eq!(
            match_pod_failure_policy(Some(&policy), &failed_pod(7, json!([]))),
            (None, true, Some("Count".into()))
        );
        // Exit code 1 matches nothing: counted, no action.
        assert_eq!(
            match_pod_failure_policy(Some(&policy), &failed_pod(1, json!([]))),
            (None, true, None)
        );
    }

    #[test]
    fn backoff_record_counts_failures_after_the_last_success() {
        let pod = |phase: &str, at: &str| -> Pod {
            serde_json::from_value(json!({"status": {"phase": phase, "containerStatuses": [{
                "name": "c", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": 1, "finishedAt": at}}}]}}))
            .unwrap()
        };
        let now = ts("2026-01-01T01:00:00Z");
        let f1 = pod("Failed", "2026-01-01T00:00:01Z");
        let f2 = pod("Failed", "2026-01-01T00:00:03Z");
        let s = pod("Succeeded", "2026-01-01T00:00:02Z");
        let r = next_record(BackoffRecord::default(), &[], &[&f1], now);
        assert_eq!(r.failures_after_last_success, 1);
        let r = next_record(r, &[], &[&f2], now);
        assert_eq!(r.failures_after_last_success, 2);
        assert_eq!(r.last_failure_time, Some(ts("2026-01-01T00:00:03Z")));
        let r = next_record(r, &[&s], &[&f1, &f2], now);
        assert_eq!(r.failures_after_last_success, 1);
        let r = next_record(r, &[&s], &[], now);
        assert_eq!(r, BackoffRecord::default());
    }

    #[test]
    fn generated_names_keep_the_index() {
        assert_eq!(generate_name_with_index("job", 3), "job-3-");
        let long = "a".repeat(70);
        let g = generate_name_with_index(&long, 12);
        assert!(g.ends_with("-12-"));
        assert_eq!(g.len(), 58);
    }
}
