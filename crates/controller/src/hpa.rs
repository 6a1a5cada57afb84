//! The HorizontalPodAutoscaler controller (`horizontal-pod-autoscaling`, upstream's
//! `pkg/controller/podautoscaler`), on `autoscaling/v2`.
//!
//! Every `horizontal-pod-autoscaler-sync-period` (15 s; also after an error, as upstream's
//! fixed-interval queue) each HPA is reconciled as upstream's `reconcileAutoscaler`:
//! 1. the target's `scale` subresource is read (kind → resource by discovery);
//!    failures: `FailedGetScale` event and `AbleToScale=False`;
//! 2. replicas 0 with minReplicas > 0: `ScalingActive=False/ScalingDisabled`, nothing else;
//!    above `maxReplicas` or below `minReplicas`: scaled to the bound *without metrics*;
//! 3. otherwise each metric proposes a replica count: `Resource`/`ContainerResource` from
//!    `metrics.k8s.io` PodMetrics and the pods' requests (upstream's replica calculator with
//!    its handling of unready, missing and ignored pods, `cpu-initialization-period`,
//!    `initial-readiness-delay` and the tolerance), `Pods`/`Object` from
//!    `custom.metrics.k8s.io`, `External` from `external.metrics.k8s.io`. When an API is not
//!    served (rk3s serves none yet) the metric fails with upstream's messages:
//!    `ScalingActive=False` with `FailedGetResourceMetric` (…`PodsMetric`, …) and the events,
//!    then `FailedComputeMetricsReplicas`;
//! 4. the largest proposal is normalized: without `behavior`, upstream's 5-minute downscale
//!    stabilization and the scale-up limit max(2×current, 4); with `behavior`, the scale-up and
//!    scale-down stabilization windows and rate policies (`Pods`/`Percent`, `selectPolicy`
//!    Max/Min/Disabled) over the scale events this controller made (`AbleToScale` reasons
//!    `ScaleUpStabilized`/`ScaleDownStabilized`/`ReadyForNewScale`, `ScalingLimited` reasons
//!    `TooFewReplicas`/`TooManyReplicas`/`ScaleUpLimit`/`ScaleDownLimit`/`DesiredWithinRange`);
//! 5. a change is written to the scale subresource (guarded by its resourceVersion):
//!    `SuccessfulRescale` ("New size: N; reason: …") or `FailedRescale`;
//! 6. status (`currentReplicas`, `desiredReplicas`, `lastScaleTime`, `currentMetrics`,
//!    conditions) is written only when it changed.
//!
//! The recommendation and scale-event history is in memory, per HPA, as upstream's.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::autoscaling::v1::Scale;
use k8s_openapi::api::autoscaling::v2::{
    ContainerResourceMetricStatus, ExternalMetricStatus, HPAScalingPolicy, HPAScalingRules,
    HorizontalPodAutoscaler, HorizontalPodAutoscalerCondition, HorizontalPodAutoscalerStatus,
    MetricIdentifier, MetricSpec, MetricStatus, MetricTarget, MetricValueStatus,
    ObjectMetricStatus, PodsMetricStatus, ResourceMetricStatus,
};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity as K8sQuantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, PostParams};
use kube::core::GroupVersionKind;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Resource as _, ResourceExt as _};
use rk3s_quota::Quantity;
use tokio::sync::watch;

use crate::ReconcileError;
use crate::events::EventType;
use crate::settings::LoopConfig;
use crate::util::{self, Shared};

/// Component name of the events (upstream's).
const COMPONENT: &str = "horizontal-pod-autoscaler";
const SCALE_UP_LIMIT_FACTOR: f64 = 2.0;
const SCALE_UP_LIMIT_MINIMUM: f64 = 4.0;

/// The controller's settings, as durations.
#[derive(Debug, Clone)]
pub(crate) struct Tuning {
    pub(crate) sync_period: Duration,
    pub(crate) downscale_stabilization: Duration,
    pub(crate) tolerance: f64,
    pub(crate) cpu_initialization_period: Duration,
    pub(crate) initial_readiness_delay: Duration,
}

impl From<&LoopConfig> for Tuning {
    fn from(c: &LoopConfig) -> Self {
        Tuning {
            sync_period: Duration::from_secs(c.horizontal_pod_autoscaler_sync_period),
            downscale_stabilization: Duration::from_secs(
                c.horizontal_pod_autoscaler_downscale_stabilization,
            ),
            tolerance: c.horizontal_pod_autoscaler_tolerance,
            cpu_initialization_period: Duration::from_secs(
                c.horizontal_pod_autoscaler_cpu_initialization_period,
            ),
            initial_readiness_delay: Duration::from_secs(
                c.horizontal_pod_autoscaler_initial_readiness_delay,
            ),
        }
    }
}

struct Ctx {
    shared: Arc<Shared>,
    tuning: Tuning,
    history: Mutex<HashMap<String, History>>,
}

pub(crate) async fn run(shared: Arc<Shared>, config: LoopConfig, stop: watch::Receiver<bool>) {
    let controller = Controller::new(
        Api::<HorizontalPodAutoscaler>::all(shared.client.clone()),
        watcher::Config::default(),
    )
    .with_config(kube::runtime::controller::Config::default().concurrency(shared.concurrency))
    .graceful_shutdown_on(crate::stopped(stop.clone()));
    let store = controller.store();
    let abandon = util::abandon_unsynced(store.clone(), stop);
    let ctx = Arc::new(Ctx {
        shared,
        tuning: Tuning::from(&config),
        history: Mutex::default(),
    });
    util::drain(
        "horizontal-pod-autoscaling",
        abandon,
        controller.run(
            move |hpa, ctx| {
                // Forget the history of HPAs that are gone.
                let live: BTreeSet<String> = store
                    .state()
                    .iter()
                    .map(|h| util::key_of(h.meta()))
                    .collect();
                ctx.history
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .retain(|k, _| live.contains(k));
                async move { reconcile(&hpa, &ctx).await }
            },
            |_hpa, _e, ctx| Action::requeue(ctx.tuning.sync_period),
            ctx,
        ),
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// conditions and status

/// Upstream's `setConditionInList`: the transition time moves only when the status does.
pub(crate) fn set_condition(
    status: &mut HorizontalPodAutoscalerStatus,
    type_: &str,
    value: bool,
    reason: &str,
    message: impl Into<String>,
    now: Timestamp,
) {
    let conds = status.conditions.get_or_insert_with(Vec::new);
    let idx = match conds.iter().position(|c| c.type_ == type_) {
        Some(i) => i,
        None => {
            conds.push(HorizontalPodAutoscalerCondition {
                type_: type_.to_string(),
                ..HorizontalPodAutoscalerCondition::default()
            });
            conds.len() - 1
        }
    };
    let c = &mut conds[idx];
    let value = if value { "True" } else { "False" };
    if c.status != value {
        c.last_transition_time = Some(Time(now));
    }
    c.status = value.to_string();
    c.reason = Some(reason.to_string());
    c.message = Some(message.into());
}

// ---------------------------------------------------------------------------------------------
// replica computation (pure)

/// One pod as the replica calculator sees it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PodInfo {
    pub(crate) name: String,
    pub(crate) phase: String,
    pub(crate) deleting: bool,
    /// Ready condition: (status is True, last transition), if the pod has one.
    pub(crate) ready: Option<(bool, Option<Timestamp>)>,
    pub(crate) start_time: Option<Timestamp>,
    /// Sum of the requests of the resource (milli-units), None if a container lacks one.
    pub(crate) request: Option<i64>,
}

/// A pod's metric sample (milli-units).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Sample {
    pub(crate) value: i64,
    pub(crate) timestamp: Timestamp,
    pub(crate) window: Duration,
}

/// Upstream's `groupPods`: (ready count, unready, missing, ignored).
pub(crate) fn group_pods(
    pods: &[PodInfo],
    metrics: &BTreeMap<String, Sample>,
    cpu: bool,
    tuning: &Tuning,
    now: Timestamp,
) -> (usize, BTreeSet<String>, BTreeSet<String>, BTreeSet<String>) {
    let (mut ready, mut unready, mut missing, mut ignored) =
        (0, BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    let add = |t: Timestamp, d: Duration| {
        t.checked_add(k8s_openapi::jiff::SignedDuration::try_from(d).unwrap_or_default())
            .unwrap_or(t)
    };
    for p in pods {
        if p.deleting || p.phase == "Failed" {
            ignored.insert(p.name.clone());
            continue;
        }
        if p.phase == "Pending" {
            unready.insert(p.name.clone());
            continue;
        }
        let Some(m) = metrics.get(&p.name) else {
            missing.insert(p.name.clone());
            continue;
        };
        if cpu {
            let not_ready = match (p.ready, p.start_time) {
                (Some((is_ready, since)), Some(start)) => {
                    let since = since.unwrap_or(Timestamp::MIN);
                    if add(start, tuning.cpu_initialization_period) > now {
                        !is_ready || m.timestamp < add(since, m.window)
                    } else {
                        !is_ready && add(start, tuning.initial_readiness_delay) > since
                    }
                }
                _ => true,
            };
            if not_ready {
                unready.insert(p.name.clone());
                continue;
            }
        }
        ready += 1;
    }
    (ready, unready, missing, ignored)
}

fn within(tolerance: f64, ratio: f64) -> bool {
    (1.0 - ratio).abs() <= tolerance
}

/// Upstream's `GetResourceUtilizationRatio`: (ratio, utilization %, raw average).
fn utilization_ratio(
    metrics: &BTreeMap<String, i64>,
    requests: &BTreeMap<String, i64>,
    target: i32,
) -> Result<(f64, i32, i64), String> {
    let (mut total, mut req, mut n) = (0i64, 0i64, 0i64);
    for (pod, v) in metrics {
        if let Some(r) = requests.get(pod) {
            total += v;
            req += r;
            n += 1;
        }
    }
    if req == 0 {
        return Err("no metrics returned matched known pods".into());
    }
    let util = i32::try_from(total * 100 / req).unwrap_or(i32::MAX);
    Ok((f64::from(util) / f64::from(target), util, total / n.max(1)))
}

/// Upstream's `GetResourceReplicas` after the fetches: (replicas, utilization %, raw
/// average in milli-units).
pub(crate) fn resource_replicas(
    current: i32,
    target_utilization: i32,
    pods: &[PodInfo],
    samples: &BTreeMap<String, Sample>,
    cpu: bool,
    tuning: &Tuning,
    now: Timestamp,
) -> Result<(i32, i32, i64), String> {
    if pods.is_empty() {
        return Err("no pods returned by selector while calculating replica count".into());
    }
    let (ready, unready, missing, ignored) = group_pods(pods, samples, cpu, tuning, now);
    let mut metrics: BTreeMap<String, i64> = samples
        .iter()
        .filter(|(k, _)| !ignored.contains(*k) && !unready.contains(*k))
        .map(|(k, s)| (k.clone(), s.value))
        .collect();
    if metrics.is_empty() {
        return Err("did not receive metrics for targeted pods (pods might be unready)".into());
    }
    let mut requests = BTreeMap::new();
    for p in pods {
        match p.request {
            Some(r) => {
                requests.insert(p.name.clone(), r);
            }
            None => return Err(format!("missing request for {}", p.name)),
        }
    }
    let (ratio, util, raw) = utilization_ratio(&metrics, &requests, target_utilization)?;
    let scale_up_with_unready = !unready.is_empty() && ratio > 1.0;
    if !scale_up_with_unready && missing.is_empty() {
        if within(tuning.tolerance, ratio) {
            return Ok((current, util, raw));
        }
        return Ok(((ratio * ready as f64).ceil() as i32, util, raw));
    }
    if !missing.is_empty() {
        for m in &missing {
            let v = if ratio < 1.0 {
                requests.get(m).copied().unwrap_or(0) * i64::from(target_utilization.max(100)) / 100
            } else {
                0
            };
            if ratio != 1.0 {
                metrics.insert(m.clone(), v);
            }
        }
    }
    if scale_up_with_unready {
        for u in &unready {
            metrics.insert(u.clone(), 0);
        }
    }
    let (new_ratio, _, _) = utilization_ratio(&metrics, &requests, target_utilization)?;
    if within(tuning.tolerance, new_ratio)
        || (ratio < 1.0 && new_ratio > 1.0)
        || (ratio > 1.0 && new_ratio < 1.0)
    {
        return Ok((current, util, raw));
    }
    let n = (new_ratio * metrics.len() as f64).ceil() as i32;
    if (new_ratio < 1.0 && n > current) || (new_ratio > 1.0 && n < current) {
        return Ok((current, util, raw));
    }
    Ok((n, util, raw))
}

/// Upstream's `calcPlainMetricReplicas` (average value per pod): (replicas, average usage).
pub(crate) fn plain_replicas(
    current: i32,
    target: i64,
    pods: &[PodInfo],
    samples: &BTreeMap<String, Sample>,
    cpu: bool,
    tuning: &Tuning,
    now: Timestamp,
) -> Result<(i32, i64), String> {
    if pods.is_empty() {
        return Err("no pods returned by selector while calculating replica count".into());
    }
    let (ready, unready, missing, ignored) = group_pods(pods, samples, cpu, tuning, now);
    let mut metrics: BTreeMap<String, i64> = samples
        .iter()
        .filter(|(k, _)| !ignored.contains(*k) && !unready.contains(*k))
        .map(|(k, s)| (k.clone(), s.value))
        .collect();
    if metrics.is_empty() {
        return Err("did not receive metrics for targeted pods (pods might be unready)".into());
    }
    let ratio_of = |m: &BTreeMap<String, i64>| {
        let usage = m.values().sum::<i64>() / m.len().max(1) as i64;
        (usage as f64 / target as f64, usage)
    };
    let (ratio, usage) = ratio_of(&metrics);
    let scale_up_with_unready = !unready.is_empty() && ratio > 1.0;
    if !scale_up_with_unready && missing.is_empty() {
        if within(tuning.tolerance, ratio) {
            return Ok((current, usage));
        }
        return Ok(((ratio * ready as f64).ceil() as i32, usage));
    }
    for m in &missing {
        metrics.insert(m.clone(), if ratio < 1.0 { target } else { 0 });
    }
    if scale_up_with_unready {
        for u in &unready {
            metrics.insert(u.clone(), 0);
        }
    }
    let (new_ratio, _) = ratio_of(&metrics);
    if within(tuning.tolerance, new_ratio)
        || (ratio < 1.0 && new_ratio > 1.0)
        || (ratio > 1.0 && new_ratio < 1.0)
    {
        return Ok((current, usage));
    }
    let n = (new_ratio * metrics.len() as f64).ceil() as i32;
    if (new_ratio < 1.0 && n > current) || (new_ratio > 1.0 && n < current) {
        return Ok((current, usage));
    }
    Ok((n, usage))
}

/// Upstream's `getUsageRatioReplicaCount` (Object and External `Value` targets).
pub(crate) fn usage_ratio_replicas(
    current: i32,
    ratio: f64,
    ready_pods: usize,
    tolerance: f64,
) -> i32 {
    if current != 0 {
        if within(tolerance, ratio) {
            return current;
        }
        (ratio * ready_pods as f64).ceil() as i32
    } else {
        ratio.ceil() as i32
    }
}

/// Upstream's per-pod `AverageValue` of an Object or External metric: (replicas, usage per
/// pod).
pub(crate) fn per_pod_replicas(
    current: i32,
    status_replicas: i32,
    usage: i64,
    target_average: i64,
    tolerance: f64,
) -> (i32, i64) {
    let reps = status_replicas.max(1);
    let ratio = usage as f64 / (target_average as f64 * f64::from(reps));
    let n = if within(tolerance, ratio) {
        current
    } else {
        (usage as f64 / target_average as f64).ceil() as i32
    };
    (n, (usage as f64 / f64::from(reps)).ceil() as i64)
}

// ---------------------------------------------------------------------------------------------
// normalization (pure, with the history)

/// What upstream keeps per HPA: recommendations and the scale events of the behaviors.
#[derive(Debug, Default, Clone)]
pub(crate) struct History {
    recommendations: Vec<(i32, Instant)>,
    scale_up: Vec<ScaleEvent>,
    scale_down: Vec<ScaleEvent>,
}

#[derive(Debug, Clone, Copy)]
struct ScaleEvent {
    change: i32,
    at: Instant,
    outdated: bool,
}

/// A normalization's result: replicas and the two conditions it sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Normalized {
    pub(crate) replicas: i32,
    /// `AbleToScale=True` reason and message.
    pub(crate) able: (&'static str, &'static str),
    /// `ScalingLimited`: limited?, reason, message.
    pub(crate) limited: (bool, &'static str, &'static str),
}

fn before(now: Instant, d: Duration) -> Option<Instant> {
    now.checked_sub(d)
}

impl History {
    /// Upstream's `recordInitialRecommendation`.
    pub(crate) fn initial(&mut self, current: i32, now: Instant) {
        if self.recommendations.is_empty() {
            self.recommendations.push((current, now));
        }
    }

    /// Upstream's `stabilizeRecommendation` (no behavior): the highest recommendation of the
    /// window.
    fn stabilize(&mut self, desired: i32, window: Duration, now: Instant) -> i32 {
        let cutoff = before(now, window);
        let mut max = desired;
        let mut old = None;
        for (i, (r, t)) in self.recommendations.iter().enumerate() {
            if cutoff.is_some_and(|c| *t < c) {
                old = Some(i);
            } else if *r > max {
                max = *r;
            }
        }
        match old {
            Some(i) => self.recommendations[i] = (desired, now),
            None => self.recommendations.push((desired, now)),
        }
        max
    }

    /// Upstream's `normalizeDesiredReplicas`.
    pub(crate) fn normalize(
        &mut self,
        current: i32,
        desired: i32,
        min: i32,
        max: i32,
        window: Duration,
        now: Instant,
    ) -> Normalized {
        let stabilized = self.stabilize(desired, window, now);
        let able = if stabilized != desired {
            (
                "ScaleDownStabilized",
                "recent recommendations were higher than current one, applying the highest recent recommendation",
            )
        } else {
            ("ReadyForNewScale", "recommended size matches current size")
        };
        let scale_up_limit =
            (SCALE_UP_LIMIT_FACTOR * f64::from(current)).max(SCALE_UP_LIMIT_MINIMUM) as i32;
        let (maximum, reason, message) = if max > scale_up_limit {
            (
                scale_up_limit,
                "ScaleUpLimit",
                "the desired replica count is increasing faster than the maximum scale rate",
            )
        } else {
            (
                max,
                "TooManyReplicas",
                "the desired replica count is more than the maximum replica count",
            )
        };
        let (replicas, reason, message) = if stabilized < min {
            (
                min,
                "TooFewReplicas",
                "the desired replica count is less than the minimum replica count",
            )
        } else if stabilized > maximum {
            (maximum, reason, message)
        } else {
            (
                stabilized,
                "DesiredWithinRange",
                "the desired count is within the acceptable range",
            )
        };
        Normalized {
            replicas,
            able,
            limited: (replicas != stabilized, reason, message),
        }
    }

    /// Upstream's `normalizeDesiredReplicasWithBehaviors` (`rules` already defaulted).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn normalize_with_behavior(
        &mut self,
        current: i32,
        desired: i32,
        min: i32,
        max: i32,
        up: &HPAScalingRules,
        down: &HPAScalingRules,
        now: Instant,
    ) -> Normalized {
        // Stabilization.
        let secs = |r: &HPAScalingRules| {
            Duration::from_secs(
                u64::try_from(r.stabilization_window_seconds.unwrap_or(0)).unwrap_or(0),
            )
        };
        let up_cutoff = before(now, secs(up));
        let down_cutoff = before(now, secs(down));
        let (mut up_rec, mut down_rec) = (desired, desired);
        let mut old = None;
        for (i, (r, t)) in self.recommendations.iter().enumerate() {
            let after_up = up_cutoff.is_none_or(|c| *t > c);
            let after_down = down_cutoff.is_none_or(|c| *t > c);
            if after_up {
                up_rec = up_rec.min(*r);
            }
            if after_down {
                down_rec = down_rec.max(*r);
            }
            if up_cutoff.is_some_and(|c| *t < c) && down_cutoff.is_some_and(|c| *t < c) {
                old = Some(i);
            }
        }
        let mut stabilized = current.max(up_rec);
        stabilized = stabilized.min(down_rec);
        match old {
            Some(i) => self.recommendations[i] = (desired, now),
            None => self.recommendations.push((desired, now)),
        }
        let able = if stabilized != desired {
            if desired >= current {
                (
                    "ScaleUpStabilized",
                    "recent recommendations were lower than current one, applying the lowest recent recommendation",
                )
            } else {
                (
                    "ScaleDownStabilized",
                    "recent recommendations were higher than current one, applying the highest recent recommendation",
                )
            }
        } else {
            ("ReadyForNewScale", "recommended size matches current size")
        };
        // Rate limits.
        let mut result = (
            stabilized,
            "DesiredWithinRange",
            "the desired count is within the acceptable range",
        );
        if stabilized > current {
            let limit =
                scale_limit(current, &self.scale_up, &self.scale_down, up, true, now).max(current);
            let (maximum, reason, message) = if max > limit {
                (
                    limit,
                    "ScaleUpLimit",
                    "the desired replica count is increasing faster than the maximum scale rate",
                )
            } else {
                (
                    max,
                    "TooManyReplicas",
                    "the desired replica count is more than the maximum replica count",
                )
            };
            if stabilized > maximum {
                result = (maximum, reason, message);
            }
        } else if stabilized < current {
            let limit = scale_limit(current, &self.scale_up, &self.scale_down, down, false, now)
                .min(current);
            let (minimum, reason, message) = if min < limit {
                (
                    limit,
                    "ScaleDownLimit",
                    "the desired replica count is decreasing faster than the maximum scale rate",
                )
            } else {
                (
                    min,
                    "TooFewReplicas",
                    "the desired replica count is less than the minimum replica count",
                )
            };
            if stabilized < minimum {
                result = (minimum, reason, message);
            }
        }
        Normalized {
            replicas: result.0,
            able,
            limited: (result.0 != stabilized, result.1, result.2),
        }
    }

    /// Upstream's `storeScaleEvent` (only with a behavior).
    pub(crate) fn record_scale(
        &mut self,
        rules: &HPAScalingRules,
        from: i32,
        to: i32,
        now: Instant,
    ) {
        let longest = rules
            .policies
            .iter()
            .flatten()
            .map(|p| p.period_seconds)
            .max()
            .unwrap_or(0);
        let cutoff = before(
            now,
            Duration::from_secs(u64::try_from(longest).unwrap_or(0)),
        );
        let events = if to > from {
            &mut self.scale_up
        } else {
            &mut self.scale_down
        };
        for e in events.iter_mut() {
            if cutoff.is_some_and(|c| e.at < c) {
                e.outdated = true;
            }
        }
        let new = ScaleEvent {
            change: (to - from).abs(),
            at: now,
            outdated: false,
        };
        match events.iter_mut().find(|e| e.outdated) {
            Some(e) => *e = new,
            None => events.push(new),
        }
    }
}

fn change_in_period(period_seconds: i32, events: &[ScaleEvent], now: Instant) -> i32 {
    let cutoff = before(
        now,
        Duration::from_secs(u64::try_from(period_seconds).unwrap_or(0)),
    );
    events
        .iter()
        .filter(|e| cutoff.is_none_or(|c| e.at > c))
        .map(|e| e.change)
        .sum()
}

/// Upstream's `calculateScaleUpLimitWithScalingRules` / `calculateScaleDownLimitWithBehaviors`.
fn scale_limit(
    current: i32,
    ups: &[ScaleEvent],
    downs: &[ScaleEvent],
    rules: &HPAScalingRules,
    up: bool,
    now: Instant,
) -> i32 {
    let select = rules.select_policy.as_deref().unwrap_or("Max");
    if select == "Disabled" {
        return current;
    }
    // For scaling up "Max" picks the largest proposal; for scaling down the smallest.
    let pick_max = (select == "Max") == up;
    let mut result = if pick_max { i32::MIN } else { i32::MAX };
    for p in rules.policies.iter().flatten() {
        let start = current - change_in_period(p.period_seconds, ups, now)
            + change_in_period(p.period_seconds, downs, now);
        let proposed = match (p.type_.as_str(), up) {
            ("Pods", true) => start + p.value,
            ("Pods", false) => start - p.value,
            ("Percent", true) => {
                (f64::from(start) * (1.0 + f64::from(p.value) / 100.0)).ceil() as i32
            }
            ("Percent", false) => (f64::from(start) * (1.0 - f64::from(p.value) / 100.0)) as i32,
            _ => continue,
        };
        result = if pick_max {
            result.max(proposed)
        } else {
            result.min(proposed)
        };
    }
    result
}

/// The behavior's rules with upstream's defaults (`GenerateHPAScaleUpRules` /
/// `GenerateHPAScaleDownRules`; the scale-down window defaults to the controller's
/// `downscale-stabilization`).
pub(crate) fn defaulted_rules(
    rules: Option<&HPAScalingRules>,
    up: bool,
    downscale_window: Duration,
) -> HPAScalingRules {
    let policy = |type_: &str, value: i32| HPAScalingPolicy {
        type_: type_.into(),
        value,
        period_seconds: 15,
    };
    let default_policies = if up {
        vec![policy("Percent", 100), policy("Pods", 4)]
    } else {
        vec![policy("Percent", 100)]
    };
    let mut r = rules.cloned().unwrap_or_default();
    if r.stabilization_window_seconds.is_none() {
        r.stabilization_window_seconds = Some(if up {
            0
        } else {
            i32::try_from(downscale_window.as_secs()).unwrap_or(i32::MAX)
        });
    }
    if r.select_policy.is_none() {
        r.select_policy = Some("Max".into());
    }
    if r.policies.as_ref().is_none_or(Vec::is_empty) {
        r.policies = Some(default_policies);
    }
    r
}

// ---------------------------------------------------------------------------------------------
// the reconcile

/// A metric that could not be computed: the condition reason and the error text.
struct MetricError {
    reason: &'static str,
    /// The error as the event and the condition show it.
    inner: String,
    /// The error with the per-type "failed to get … value:" prefix that upstream's
    /// `computeReplicasForMetric` adds for the returned error.
    error: String,
}

impl MetricError {
    fn new(reason: &'static str, wrap: &str, inner: String) -> Self {
        MetricError {
            reason,
            error: format!("{wrap}: {inner}"),
            inner,
        }
    }
}

/// A metric's proposal.
struct Proposal {
    replicas: i32,
    name: String,
    status: MetricStatus,
}

fn milli(q: &K8sQuantity) -> i64 {
    Quantity::parse(&q.0)
        .map(|v| v.ratio(Quantity::parse("1m").unwrap_or_default()).ceil() as i64)
        .unwrap_or(0)
}

fn from_milli(v: i64) -> K8sQuantity {
    let q = Quantity::parse(&format!("{v}m")).unwrap_or_default();
    K8sQuantity(q.to_text(false))
}

fn not_served(resource: &str) -> String {
    format!("the server could not find the requested resource (get {resource})")
}

fn api_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => s.message.clone(),
        other => other.to_string(),
    }
}

#[tracing::instrument(skip_all, fields(hpa = %util::key_of(&cached.metadata)))]
async fn reconcile(cached: &HorizontalPodAutoscaler, ctx: &Ctx) -> Result<Action, ReconcileError> {
    let shared = &ctx.shared;
    let key = util::key_of(&cached.metadata);
    let ns = cached.metadata.namespace.clone().unwrap_or_default();
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(shared.client.clone(), &ns);
    let Some(hpa) = hpas.get_opt(&cached.name_any()).await? else {
        return Ok(Action::await_change());
    };
    let Some(spec) = hpa.spec.clone() else {
        return Ok(Action::await_change());
    };
    let original = hpa.status.clone();
    let mut status = hpa.status.clone().unwrap_or_default();
    let now_ts = util::now();
    let target = &spec.scale_target_ref;
    let reference = format!("{}/{}/{}", target.kind, ns, target.name);

    // The target's scale.
    let scale = get_scale(shared, &ns, target).await;
    let (scale, scales) = match scale {
        Ok(v) => v,
        Err(msg) => {
            shared.events.event(
                COMPONENT,
                &hpa,
                EventType::Warning,
                "FailedGetScale",
                msg.clone(),
            );
            set_condition(
                &mut status,
                "AbleToScale",
                false,
                "FailedGetScale",
                format!("the HPA controller was unable to get the target's current scale: {msg}"),
                now_ts,
            );
            write_status(shared, &hpa, original.as_ref(), status).await?;
            return Err(ReconcileError::Invalid(format!(
                "failed to query scale subresource for {reference}: {msg}"
            )));
        }
    };
    set_condition(
        &mut status,
        "AbleToScale",
        true,
        "SucceededGetScale",
        "the HPA controller was able to get the target's current scale",
        now_ts,
    );
    let current = scale.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
    let now = Instant::now();
    ctx.history
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(key.clone())
        .or_default()
        .initial(current, now);
    let min = spec.min_replicas.unwrap_or(1);
    let max = spec.max_replicas;
    // Upstream clears the metrics when it does not compute them (bounds, disabled).
    let mut metric_statuses: Option<Vec<MetricStatus>> = None;
    let mut rescale = true;
    let mut reason = String::new();
    let mut ret_err = None;
    let desired;
    if current == 0 && min != 0 {
        desired = 0;
        rescale = false;
        set_condition(
            &mut status,
            "ScalingActive",
            false,
            "ScalingDisabled",
            "scaling is disabled since the replica count of the target is zero",
            now_ts,
        );
    } else if current > max {
        reason = "Current number of replicas above Spec.MaxReplicas".into();
        desired = max;
    } else if current < min {
        reason = "Current number of replicas below Spec.MinReplicas".into();
        desired = min;
    } else {
        let metrics = spec.metrics.clone().unwrap_or_default();
        let computed = compute_for_metrics(ctx, &hpa, &scale, &metrics, &mut status, now_ts).await;
        metric_statuses = Some(computed.statuses);
        let Some(proposal) = computed.replicas else {
            status.current_replicas = Some(current);
            status.current_metrics = metric_statuses;
            write_status(shared, &hpa, original.as_ref(), status).await?;
            let err = computed.error.unwrap_or_default();
            shared.events.event(
                COMPONENT,
                &hpa,
                EventType::Warning,
                "FailedComputeMetricsReplicas",
                err.clone(),
            );
            return Err(ReconcileError::Invalid(format!(
                "failed to compute desired number of replicas based on listed metrics for {reference}: {err}"
            )));
        };
        ret_err = computed.error;
        let metric_desired = proposal.0;
        if metric_desired > current {
            reason = format!("{} above target", proposal.1);
        }
        if metric_desired < current {
            reason = "All metrics below target".into();
        }
        let mut history = ctx.history.lock().unwrap_or_else(|p| p.into_inner());
        let h = history.entry(key.clone()).or_default();
        let n = match spec.behavior.as_ref() {
            None => h.normalize(
                current,
                metric_desired,
                min,
                max,
                ctx.tuning.downscale_stabilization,
                now,
            ),
            Some(b) => {
                let up = defaulted_rules(
                    b.scale_up.as_ref(),
                    true,
                    ctx.tuning.downscale_stabilization,
                );
                let down = defaulted_rules(
                    b.scale_down.as_ref(),
                    false,
                    ctx.tuning.downscale_stabilization,
                );
                h.normalize_with_behavior(current, metric_desired, min, max, &up, &down, now)
            }
        };
        drop(history);
        set_condition(&mut status, "AbleToScale", true, n.able.0, n.able.1, now_ts);
        set_condition(
            &mut status,
            "ScalingLimited",
            n.limited.0,
            n.limited.1,
            n.limited.2,
            now_ts,
        );
        desired = n.replicas;
        rescale = desired != current;
    }

    let desired = if rescale {
        let mut next = scale.clone();
        if let Some(s) = next.spec.as_mut() {
            s.replicas = Some(desired);
        } else {
            next.spec = Some(k8s_openapi::api::autoscaling::v1::ScaleSpec {
                replicas: Some(desired),
            });
        }
        if let Err(e) = scales
            .replace_scale(&target.name, &PostParams::default(), &next)
            .await
        {
            let msg = api_message(&e);
            shared.events.event(
                COMPONENT,
                &hpa,
                EventType::Warning,
                "FailedRescale",
                format!("New size: {desired}; reason: {reason}; error: {msg}"),
            );
            set_condition(
                &mut status,
                "AbleToScale",
                false,
                "FailedUpdateScale",
                format!("the HPA controller was unable to update the target scale: {msg}"),
                now_ts,
            );
            status.current_replicas = Some(current);
            status.current_metrics = metric_statuses;
            write_status(shared, &hpa, original.as_ref(), status).await?;
            return Err(ReconcileError::Invalid(format!(
                "failed to rescale {reference}: {msg}"
            )));
        }
        set_condition(
            &mut status,
            "AbleToScale",
            true,
            "SucceededRescale",
            format!("the HPA controller was able to update the target scale to {desired}"),
            now_ts,
        );
        shared.events.event(
            COMPONENT,
            &hpa,
            EventType::Normal,
            "SuccessfulRescale",
            format!("New size: {desired}; reason: {reason}"),
        );
        if let Some(b) = spec.behavior.as_ref() {
            let rules = if desired > current {
                defaulted_rules(
                    b.scale_up.as_ref(),
                    true,
                    ctx.tuning.downscale_stabilization,
                )
            } else {
                defaulted_rules(
                    b.scale_down.as_ref(),
                    false,
                    ctx.tuning.downscale_stabilization,
                )
            };
            ctx.history
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(key.clone())
                .or_default()
                .record_scale(&rules, current, desired, Instant::now());
        }
        tracing::info!(from = current, to = desired, %reason, "successfully rescaled");
        status.last_scale_time = Some(Time(util::now()));
        desired
    } else {
        current
    };
    status.current_replicas = Some(current);
    status.desired_replicas = desired;
    status.current_metrics = metric_statuses.filter(|m| !m.is_empty());
    write_status(shared, &hpa, original.as_ref(), status).await?;
    match ret_err {
        Some(e) => Err(ReconcileError::Invalid(e)),
        None => Ok(Action::requeue(ctx.tuning.sync_period)),
    }
}

/// Writes the status when it differs from what was read (upstream's `updateStatusIfNeeded`).
async fn write_status(
    shared: &Shared,
    hpa: &HorizontalPodAutoscaler,
    original: Option<&HorizontalPodAutoscalerStatus>,
    status: HorizontalPodAutoscalerStatus,
) -> Result<(), ReconcileError> {
    if original == Some(&status) {
        return Ok(());
    }
    let mut next = hpa.clone();
    next.status = Some(status);
    let api: Api<HorizontalPodAutoscaler> = Api::namespaced(
        shared.client.clone(),
        hpa.metadata.namespace.as_deref().unwrap_or(""),
    );
    if let Err(e) = api
        .replace_status(&hpa.name_any(), &PostParams::default(), &next)
        .await
    {
        shared.events.event(
            COMPONENT,
            hpa,
            EventType::Warning,
            "FailedUpdateStatus",
            api_message(&e),
        );
        return Err(e.into());
    }
    Ok(())
}

/// The scale subresource of the target and the API to write it back.
async fn get_scale(
    shared: &Shared,
    ns: &str,
    target: &k8s_openapi::api::autoscaling::v2::CrossVersionObjectReference,
) -> Result<(Scale, Api<DynamicObject>), String> {
    let api_version = target.api_version.as_deref().unwrap_or("");
    let (group, version) = match api_version.split('/').collect::<Vec<_>>().as_slice() {
        [v] if !v.is_empty() => (String::new(), (*v).to_string()),
        [g, v] if !v.is_empty() => ((*g).to_string(), (*v).to_string()),
        _ => return Err(format!("unexpected GroupVersion string: {api_version}")),
    };
    let gvk = GroupVersionKind::gvk(&group, &version, &target.kind);
    let (ar, _caps) = kube::discovery::pinned_kind(&shared.client, &gvk)
        .await
        .map_err(|_| format!("no matches for kind {:?} in group {:?}", target.kind, group))?;
    let api: Api<DynamicObject> = Api::namespaced_with(shared.client.clone(), ns, &ar);
    let scale = api
        .get_scale(&target.name)
        .await
        .map_err(|e| api_message(&e))?;
    Ok((scale, api))
}

/// What `compute_for_metrics` found.
struct Computed {
    /// (replicas, metric name) unless every metric failed (or some failed and the rest would
    /// scale down).
    replicas: Option<(i32, String)>,
    statuses: Vec<MetricStatus>,
    error: Option<String>,
}

/// Upstream's `computeReplicasForMetrics`.
async fn compute_for_metrics(
    ctx: &Ctx,
    hpa: &HorizontalPodAutoscaler,
    scale: &Scale,
    metrics: &[MetricSpec],
    status: &mut HorizontalPodAutoscalerStatus,
    now: Timestamp,
) -> Computed {
    let shared = &ctx.shared;
    let selector = scale
        .status
        .as_ref()
        .and_then(|s| s.selector.clone())
        .unwrap_or_default();
    if selector.is_empty() {
        shared.events.event(
            COMPONENT,
            hpa,
            EventType::Warning,
            "SelectorRequired",
            "selector is required".into(),
        );
        set_condition(
            status,
            "ScalingActive",
            false,
            "InvalidSelector",
            "the HPA target's scale is missing a selector",
            now,
        );
        return Computed {
            replicas: None,
            statuses: Vec::new(),
            error: Some("selector is required".into()),
        };
    }
    let spec_replicas = scale.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
    let status_replicas = scale.status.as_ref().map(|s| s.replicas).unwrap_or(0);
    let mut statuses = vec![MetricStatus::default(); metrics.len()];
    let mut best: Option<(i32, String)> = None;
    let mut invalid = 0usize;
    let mut first: Option<MetricError> = None;
    for (i, m) in metrics.iter().enumerate() {
        match compute_for_metric(ctx, hpa, m, spec_replicas, status_replicas, &selector, now).await
        {
            Ok(p) => {
                statuses[i] = p.status;
                if best
                    .as_ref()
                    .is_none_or(|(r, _)| *r == 0 || p.replicas > *r)
                {
                    best = Some((p.replicas, p.name));
                }
            }
            Err(e) => {
                shared.events.event(
                    COMPONENT,
                    hpa,
                    EventType::Warning,
                    e.reason,
                    e.inner.clone(),
                );
                if first.is_none() {
                    first = Some(e);
                }
                invalid += 1;
            }
        }
    }
    let error = first.as_ref().map(|e| {
        format!(
            "invalid metrics ({invalid} invalid out of {}), first error is: {}",
            metrics.len(),
            e.error
        )
    });
    let replicas = best.as_ref().map(|b| b.0).unwrap_or(0);
    if invalid >= metrics.len() || (invalid > 0 && replicas < spec_replicas) {
        if let Some(e) = &first {
            set_condition(
                status,
                "ScalingActive",
                false,
                e.reason,
                format!(
                    "the HPA was unable to compute the replica count: {}",
                    e.inner
                ),
                now,
            );
        }
        return Computed {
            replicas: None,
            statuses,
            error: error.or_else(|| Some("no metrics".into())),
        };
    }
    let best = best.unwrap_or((0, String::new()));
    set_condition(
        status,
        "ScalingActive",
        true,
        "ValidMetricFound",
        format!(
            "the HPA was able to successfully calculate a replica count from {}",
            best.1
        ),
        now,
    );
    Computed {
        replicas: Some(best),
        statuses,
        error,
    }
}

fn selector_text(sel: Option<&LabelSelector>) -> String {
    let Some(sel) = sel else {
        return String::new();
    };
    let mut parts: Vec<String> = sel
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for e in sel.match_expressions.iter().flatten() {
        let vals = e.values.clone().unwrap_or_default().join(",");
        parts.push(match e.operator.as_str() {
            "In" => format!("{} in ({vals})", e.key),
            "NotIn" => format!("{} notin ({vals})", e.key),
            "Exists" => e.key.clone(),
            "DoesNotExist" => format!("!{}", e.key),
            _ => continue,
        });
    }
    parts.join(",")
}

/// Upstream's `computeReplicasForMetric`.
#[allow(clippy::too_many_arguments)]
async fn compute_for_metric(
    ctx: &Ctx,
    hpa: &HorizontalPodAutoscaler,
    spec: &MetricSpec,
    spec_replicas: i32,
    status_replicas: i32,
    selector: &str,
    now: Timestamp,
) -> Result<Proposal, MetricError> {
    let ns = hpa.metadata.namespace.clone().unwrap_or_default();
    match spec.type_.as_str() {
        "Resource" | "ContainerResource" => {
            let (name, container, target) = match (&spec.resource, &spec.container_resource) {
                (Some(r), _) if spec.type_ == "Resource" => {
                    (r.name.clone(), None, r.target.clone())
                }
                (_, Some(c)) if spec.type_ == "ContainerResource" => {
                    (c.name.clone(), Some(c.container.clone()), c.target.clone())
                }
                _ => {
                    return Err(unknown_type(spec));
                }
            };
            let (reason, wrap) = match &container {
                None => (
                    "FailedGetResourceMetric",
                    format!("failed to get {name} resource metric value"),
                ),
                Some(c) => (
                    "FailedGetContainerResourceMetric",
                    format!("failed to get {c} container metric value"),
                ),
            };
            let r = resource_metric(
                ctx,
                &ns,
                &name,
                container.as_deref(),
                &target,
                spec_replicas,
                selector,
                now,
            )
            .await
            .map_err(|e| MetricError::new(reason, &wrap, e))?;
            let (replicas, current, metric_name) = r;
            let status = match container {
                None => MetricStatus {
                    type_: "Resource".into(),
                    resource: Some(ResourceMetricStatus {
                        name: name.clone(),
                        current,
                    }),
                    ..MetricStatus::default()
                },
                Some(c) => MetricStatus {
                    type_: "ContainerResource".into(),
                    container_resource: Some(ContainerResourceMetricStatus {
                        name: name.clone(),
                        container: c,
                        current,
                    }),
                    ..MetricStatus::default()
                },
            };
            Ok(Proposal {
                replicas,
                name: metric_name,
                status,
            })
        }
        "Pods" => {
            let Some(p) = &spec.pods else {
                return Err(unknown_type(spec));
            };
            let fail = |e: String| {
                MetricError::new("FailedGetPodsMetric", "failed to get pods metric value", e)
            };
            let target = p.target.average_value.as_ref().map(milli).unwrap_or(0);
            let samples = custom_pod_metrics(ctx, &ns, &p.metric, selector)
                .await
                .map_err(|e| fail(format!("unable to get metric {}: {e}", p.metric.name)))?;
            let pods = pod_infos(ctx, &ns, selector, None, None)
                .await
                .map_err(fail)?;
            let (replicas, usage) = plain_replicas(
                spec_replicas,
                target,
                &pods,
                &samples,
                false,
                &ctx.tuning,
                now,
            )
            .map_err(fail)?;
            Ok(Proposal {
                replicas,
                name: format!("pods metric {}", p.metric.name),
                status: MetricStatus {
                    type_: "Pods".into(),
                    pods: Some(PodsMetricStatus {
                        metric: p.metric.clone(),
                        current: MetricValueStatus {
                            average_value: Some(from_milli(usage)),
                            ..MetricValueStatus::default()
                        },
                    }),
                    ..MetricStatus::default()
                },
            })
        }
        "Object" => {
            let Some(o) = &spec.object else {
                return Err(unknown_type(spec));
            };
            let fail = |e: String| {
                MetricError::new(
                    "FailedGetObjectMetric",
                    "failed to get object metric value",
                    e,
                )
            };
            let usage = object_metric(ctx, &ns, o).await.map_err(|e| {
                fail(format!(
                    "unable to get metric {}: {} on {} {}/{}",
                    o.metric.name, e, o.described_object.kind, ns, o.described_object.name
                ))
            })?;
            let (replicas, current) = value_target_replicas(
                ctx,
                &ns,
                selector,
                &o.target,
                usage,
                spec_replicas,
                status_replicas,
            )
            .await
            .map_err(fail)?;
            Ok(Proposal {
                replicas,
                name: format!("{} metric {}", o.described_object.kind, o.metric.name),
                status: MetricStatus {
                    type_: "Object".into(),
                    object: Some(ObjectMetricStatus {
                        described_object: o.described_object.clone(),
                        metric: o.metric.clone(),
                        current,
                    }),
                    ..MetricStatus::default()
                },
            })
        }
        "External" => {
            let Some(x) = &spec.external else {
                return Err(unknown_type(spec));
            };
            let wrap = format!("failed to get {} external metric value", x.metric.name);
            let fail = |e: String| MetricError::new("FailedGetExternalMetric", &wrap, e);
            let usage = external_metric(ctx, &ns, &x.metric).await.map_err(|e| {
                fail(format!(
                    "unable to get external metric {ns}/{}/{}: {e}",
                    x.metric.name,
                    selector_text(x.metric.selector.as_ref())
                ))
            })?;
            let (replicas, current) = value_target_replicas(
                ctx,
                &ns,
                selector,
                &x.target,
                usage,
                spec_replicas,
                status_replicas,
            )
            .await
            .map_err(fail)?;
            Ok(Proposal {
                replicas,
                name: format!(
                    "external metric {}({})",
                    x.metric.name,
                    selector_text(x.metric.selector.as_ref())
                ),
                status: MetricStatus {
                    type_: "External".into(),
                    external: Some(ExternalMetricStatus {
                        metric: x.metric.clone(),
                        current,
                    }),
                    ..MetricStatus::default()
                },
            })
        }
        _ => Err(unknown_type(spec)),
    }
}

fn unknown_type(spec: &MetricSpec) -> MetricError {
    let e = format!("unknown metric source type {:?}", spec.type_);
    MetricError {
        reason: "InvalidMetricSourceType",
        inner: e.clone(),
        error: e,
    }
}

/// Object/External targets: `Value` (ratio against the target, times the ready pods) or
/// `AverageValue` (per pod of the scale's status replicas).
async fn value_target_replicas(
    ctx: &Ctx,
    ns: &str,
    selector: &str,
    target: &MetricTarget,
    usage: i64,
    spec_replicas: i32,
    status_replicas: i32,
) -> Result<(i32, MetricValueStatus), String> {
    if let Some(v) = target.value.as_ref() {
        let t = milli(v);
        let ratio = usage as f64 / t as f64;
        let ready = if spec_replicas != 0 && !within(ctx.tuning.tolerance, ratio) {
            let pods = pod_infos(ctx, ns, selector, None, None).await?;
            if pods.is_empty() {
                return Err("no pods returned by selector while calculating replica count".into());
            }
            pods.iter()
                .filter(|p| p.phase == "Running" && p.ready.is_some_and(|r| r.0))
                .count()
        } else {
            0
        };
        let n = usage_ratio_replicas(spec_replicas, ratio, ready, ctx.tuning.tolerance);
        return Ok((
            n,
            MetricValueStatus {
                value: Some(from_milli(usage)),
                ..MetricValueStatus::default()
            },
        ));
    }
    if let Some(v) = target.average_value.as_ref() {
        let (n, per_pod) = per_pod_replicas(
            spec_replicas,
            status_replicas,
            usage,
            milli(v),
            ctx.tuning.tolerance,
        );
        return Ok((
            n,
            MetricValueStatus {
                average_value: Some(from_milli(per_pod)),
                ..MetricValueStatus::default()
            },
        ));
    }
    Err(
        "invalid object metric source: neither a value target nor an average value target was set"
            .into(),
    )
}

/// `Resource`/`ContainerResource`: (replicas, current value, metric name).
#[allow(clippy::too_many_arguments)]
async fn resource_metric(
    ctx: &Ctx,
    ns: &str,
    resource: &str,
    container: Option<&str>,
    target: &MetricTarget,
    current: i32,
    selector: &str,
    now: Timestamp,
) -> Result<(i32, MetricValueStatus, String), String> {
    let label = if container.is_some() {
        "container resource"
    } else {
        "resource"
    };
    if let Some(avg) = target.average_value.as_ref() {
        let samples = pod_metrics(ctx, ns, resource, container, selector)
            .await
            .map_err(|e| format!("failed to get {resource} usage: unable to get metrics for resource {resource}: {e}"))?;
        let pods = pod_infos(ctx, ns, selector, Some(resource), container)
            .await
            .map_err(|e| format!("failed to get {resource} usage: {e}"))?;
        let (n, usage) = plain_replicas(
            current,
            milli(avg),
            &pods,
            &samples,
            resource == "cpu",
            &ctx.tuning,
            now,
        )
        .map_err(|e| format!("failed to get {resource} usage: {e}"))?;
        return Ok((
            n,
            MetricValueStatus {
                average_value: Some(from_milli(usage)),
                ..MetricValueStatus::default()
            },
            format!("{resource} {label}"),
        ));
    }
    let Some(util) = target.average_utilization else {
        return Err("invalid resource metric source: neither an average utilization target nor an average value (usage) target was set".into());
    };
    let samples = pod_metrics(ctx, ns, resource, container, selector)
        .await
        .map_err(|e| format!("failed to get {resource} utilization: unable to get metrics for resource {resource}: {e}"))?;
    let pods = pod_infos(ctx, ns, selector, Some(resource), container)
        .await
        .map_err(|e| format!("failed to get {resource} utilization: {e}"))?;
    let (n, pct, raw) = resource_replicas(
        current,
        util,
        &pods,
        &samples,
        resource == "cpu",
        &ctx.tuning,
        now,
    )
    .map_err(|e| format!("failed to get {resource} utilization: {e}"))?;
    Ok((
        n,
        MetricValueStatus {
            average_utilization: Some(pct),
            average_value: Some(from_milli(raw)),
            ..MetricValueStatus::default()
        },
        format!("{resource} {label} utilization (percentage of request)"),
    ))
}

/// The selected pods with their requests of `resource` (summed over the containers, or of
/// `container`).
async fn pod_infos(
    ctx: &Ctx,
    ns: &str,
    selector: &str,
    resource: Option<&str>,
    container: Option<&str>,
) -> Result<Vec<PodInfo>, String> {
    let pods: Api<Pod> = Api::namespaced(ctx.shared.client.clone(), ns);
    let list = pods
        .list(&ListParams::default().labels(selector))
        .await
        .map_err(|e| {
            format!(
                "unable to get pods while calculating replica count: {}",
                api_message(&e)
            )
        })?;
    Ok(list
        .items
        .iter()
        .map(|p| {
            let status = p.status.as_ref();
            let ready = status
                .and_then(|s| s.conditions.as_ref())
                .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
                .map(|c| {
                    (
                        c.status == "True",
                        c.last_transition_time.as_ref().map(|t| t.0),
                    )
                });
            let request = resource.and_then(|r| {
                let mut sum = 0i64;
                for c in p
                    .spec
                    .as_ref()
                    .map(|s| s.containers.as_slice())
                    .unwrap_or(&[])
                {
                    if container.is_some_and(|want| want != c.name) {
                        continue;
                    }
                    let q = c.resources.as_ref()?.requests.as_ref()?.get(r)?;
                    sum += milli(q);
                }
                Some(sum)
            });
            PodInfo {
                name: p.name_any(),
                phase: util::pod_phase(p).to_string(),
                deleting: p.metadata.deletion_timestamp.is_some(),
                ready,
                start_time: status.and_then(|s| s.start_time.as_ref()).map(|t| t.0),
                request: if resource.is_some() { request } else { Some(0) },
            }
        })
        .collect())
}

fn ar(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource {
        group: group.into(),
        version: version.into(),
        api_version: format!("{group}/{version}"),
        kind: kind.into(),
        plural: plural.into(),
    }
}

fn parse_window(s: Option<&str>) -> Duration {
    s.and_then(|w| w.parse::<k8s_openapi::jiff::SignedDuration>().ok())
        .and_then(|d| Duration::try_from(d).ok())
        .unwrap_or(Duration::from_secs(30))
}

/// `metrics.k8s.io/v1beta1` PodMetrics of the selected pods (upstream's resource metrics
/// client): the resource's usage per pod, summed over its containers (or of one).
async fn pod_metrics(
    ctx: &Ctx,
    ns: &str,
    resource: &str,
    container: Option<&str>,
    selector: &str,
) -> Result<BTreeMap<String, Sample>, String> {
    let api: Api<DynamicObject> = Api::namespaced_with(
        ctx.shared.client.clone(),
        ns,
        &ar("metrics.k8s.io", "v1beta1", "PodMetrics", "pods"),
    );
    let list = match api.list(&ListParams::default().labels(selector)).await {
        Ok(l) => l,
        Err(kube::Error::Api(s)) if s.code == 404 => {
            return Err(format!(
                "unable to fetch metrics from resource metrics API: {}",
                not_served("pods.metrics.k8s.io")
            ));
        }
        Err(e) => {
            return Err(format!(
                "unable to fetch metrics from resource metrics API: {}",
                api_message(&e)
            ));
        }
    };
    if list.items.is_empty() {
        return Err("unable to fetch metrics from resource metrics API: no metrics returned from resource metrics API".into());
    }
    let mut out = BTreeMap::new();
    for item in &list.items {
        let d = &item.data;
        let timestamp = d
            .get("timestamp")
            .and_then(|t| t.as_str())
            .and_then(|t| t.parse::<Timestamp>().ok())
            .unwrap_or_else(util::now);
        let window = parse_window(d.get("window").and_then(|w| w.as_str()));
        let mut sum = 0i64;
        let mut found = false;
        for c in d
            .get("containers")
            .and_then(|c| c.as_array())
            .into_iter()
            .flatten()
        {
            let name = c.get("name").and_then(|n| n.as_str()).unwrap_or("");
            if container.is_some_and(|want| want != name) {
                continue;
            }
            if let Some(q) = c
                .get("usage")
                .and_then(|u| u.get(resource))
                .and_then(|q| q.as_str())
            {
                sum += milli(&K8sQuantity(q.to_string()));
                found = true;
            } else {
                // A container without the resource: upstream drops the whole pod.
                found = false;
                break;
            }
        }
        if found {
            out.insert(
                item.name_any(),
                Sample {
                    value: sum,
                    timestamp,
                    window,
                },
            );
        }
    }
    Ok(out)
}

/// Whether an API group is served (discovery).
async fn served(ctx: &Ctx, group: &str) -> bool {
    ctx.shared
        .client
        .list_api_groups()
        .await
        .map(|g| g.groups.iter().any(|x| x.name == group))
        .unwrap_or(false)
}

/// `custom.metrics.k8s.io`: a metric of the selected pods. Only the API's absence is
/// handled (rk3s serves no custom metrics API; reading one that an aggregated API server
/// provides is not built yet).
async fn custom_pod_metrics(
    ctx: &Ctx,
    _ns: &str,
    _metric: &MetricIdentifier,
    _selector: &str,
) -> Result<BTreeMap<String, Sample>, String> {
    if !served(ctx, "custom.metrics.k8s.io").await {
        return Err("unable to fetch metrics from custom metrics API: no custom metrics API (custom.metrics.k8s.io) registered".into());
    }
    Err(
        "unable to fetch metrics from custom metrics API: custom metrics are not read by rk3s yet"
            .into(),
    )
}

/// `custom.metrics.k8s.io`: a metric of one object.
async fn object_metric(
    ctx: &Ctx,
    _ns: &str,
    _o: &k8s_openapi::api::autoscaling::v2::ObjectMetricSource,
) -> Result<i64, String> {
    if !served(ctx, "custom.metrics.k8s.io").await {
        return Err("unable to fetch metrics from custom metrics API: no custom metrics API (custom.metrics.k8s.io) registered".into());
    }
    Err(
        "unable to fetch metrics from custom metrics API: object metrics are not read by rk3s yet"
            .into(),
    )
}

/// `external.metrics.k8s.io`: an external metric, summed over its series.
async fn external_metric(ctx: &Ctx, _ns: &str, metric: &MetricIdentifier) -> Result<i64, String> {
    if !served(ctx, "external.metrics.k8s.io").await {
        return Err(format!(
            "unable to fetch metrics from external metrics API: {}",
            not_served(&format!("{}.external.metrics.k8s.io", metric.name))
        ));
    }
    Err("unable to fetch metrics from external metrics API: external metrics are not read by rk3s yet".into())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn tuning() -> Tuning {
        Tuning::from(&LoopConfig::default())
    }

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    /// A Running, Ready pod started long ago, requesting `request` milli-units.
    fn pod(name: &str, request: i64) -> PodInfo {
        PodInfo {
            name: name.into(),
            phase: "Running".into(),
            deleting: false,
            ready: Some((true, Some(ts("2026-01-01T00:00:00Z")))),
            start_time: Some(ts("2026-01-01T00:00:00Z")),
            request: Some(request),
        }
    }

    fn samples(values: &[(&str, i64)]) -> BTreeMap<String, Sample> {
        values
            .iter()
            .map(|(n, v)| {
                (
                    n.to_string(),
                    Sample {
                        value: *v,
                        timestamp: ts("2026-01-01T01:00:00Z"),
                        window: Duration::from_secs(30),
                    },
                )
            })
            .collect()
    }

    const NOW: &str = "2026-01-01T01:00:30Z";

    #[test]
    fn utilization_scales_by_the_usage_ratio_outside_the_tolerance() {
        let pods = vec![pod("a", 100), pod("b", 100)];
        // 160% of request against a 80% target: ratio 2 → 4 pods.
        let m = samples(&[("a", 160), ("b", 160)]);
        assert_eq!(
            resource_replicas(2, 80, &pods, &m, true, &tuning(), ts(NOW)).unwrap(),
            (4, 160, 160)
        );
        // 85% against 80%: ratio 1.06, within the 0.1 tolerance.
        let m = samples(&[("a", 85), ("b", 85)]);
        assert_eq!(
            resource_replicas(2, 80, &pods, &m, true, &tuning(), ts(NOW))
                .unwrap()
                .0,
            2
        );
        // 20% against 80%: ratio 0.25 → ceil(0.5) = 1.
        let m = samples(&[("a", 20), ("b", 20)]);
        assert_eq!(
            resource_replicas(2, 80, &pods, &m, true, &tuning(), ts(NOW))
                .unwrap()
                .0,
            1
        );
    }

    #[test]
    fn missing_and_unready_pods_dampen_the_change() {
        // Scale-up: the pod without metrics counts as 0% → (200 + 0) / 200 req = 100%
        // against 50% → ratio 2 over 2 pods = 4 (vs. 2 × 4 = ... without the missing pod).
        let pods = vec![pod("a", 100), pod("b", 100)];
        let m = samples(&[("a", 200)]);
        assert_eq!(
            resource_replicas(2, 50, &pods, &m, true, &tuning(), ts(NOW))
                .unwrap()
                .0,
            4
        );
        // Scale-down: the missing pod counts as 100% of its request: (10 + 100) / 200 = 55%
        // against 50%: within the tolerance → no change.
        let m = samples(&[("a", 10)]);
        assert_eq!(
            resource_replicas(2, 50, &pods, &m, true, &tuning(), ts(NOW))
                .unwrap()
                .0,
            2
        );
        // A Pending pod is unready; on a scale-up it counts as 0.
        let mut pending = pod("c", 100);
        pending.phase = "Pending".into();
        let pods = vec![pod("a", 100), pod("b", 100), pending];
        let m = samples(&[("a", 100), ("b", 100)]);
        // Ready-only ratio 100/50 = 2; with c at 0: 200/300 = 66% → ratio 1.33 → ceil(4) = 4.
        assert_eq!(
            resource_replicas(3, 50, &pods, &m, true, &tuning(), ts(NOW))
                .unwrap()
                .0,
            4
        );
        // Failed and deleting pods are ignored entirely.
        let mut failed = pod("f", 100);
        failed.phase = "Failed".into();
        let pods = vec![pod("a", 100), failed];
        let m = samples(&[("a", 200), ("f", 900)]);
        assert_eq!(
            resource_replicas(2, 100, &pods, &m, true, &tuning(), ts(NOW))
                .unwrap()
                .0,
            2
        );
        assert!(resource_replicas(1, 80, &[], &m, true, &tuning(), ts(NOW)).is_err());
    }

    #[test]
    fn a_pod_in_its_cpu_initialization_period_with_a_stale_sample_is_unready() {
        let mut young = pod("y", 100);
        young.start_time = Some(ts("2026-01-01T00:59:00Z"));
        young.ready = Some((true, Some(ts("2026-01-01T00:59:50Z"))));
        // Sample taken at 01:00:00 with a 30 s window: before ready-transition + window.
        let (_, unready, _, _) = group_pods(
            &[young.clone()],
            &samples(&[("y", 1)]),
            true,
            &tuning(),
            ts(NOW),
        );
        assert!(unready.contains("y"));
        // Memory is not subject to it.
        let (ready, _, _, _) =
            group_pods(&[young], &samples(&[("y", 1)]), false, &tuning(), ts(NOW));
        assert_eq!(ready, 1);
    }

    #[test]
    fn plain_average_values() {
        let pods = vec![pod("a", 0), pod("b", 0)];
        let m = samples(&[("a", 3000), ("b", 1000)]);
        // Average 2000 against 1000 → ratio 2 → 4.
        assert_eq!(
            plain_replicas(2, 1000, &pods, &m, false, &tuning(), ts(NOW)).unwrap(),
            (4, 2000)
        );
        assert_eq!(usage_ratio_replicas(3, 2.0, 3, 0.1), 6);
        assert_eq!(usage_ratio_replicas(3, 1.05, 3, 0.1), 3);
        assert_eq!(usage_ratio_replicas(0, 2.5, 0, 0.1), 3);
        assert_eq!(per_pod_replicas(2, 2, 9000, 1000, 0.1), (9, 4500));
    }

    #[test]
    fn without_behavior_scale_down_is_stabilized_and_scale_up_limited() {
        let w = Duration::from_secs(300);
        let t0 = Instant::now();
        let mut h = History::default();
        h.initial(5, t0);
        // Recommendation 2 while 5 was recommended < 5 min ago: stays at 5.
        let n = h.normalize(5, 2, 1, 10, w, t0 + Duration::from_secs(60));
        assert_eq!(n.replicas, 5);
        assert_eq!(n.able.0, "ScaleDownStabilized");
        assert!(!n.limited.0);
        // After the window the old samples expire: 2 (the latest sample of 2 is 5 min old
        // and still within reach only until it too expires).
        let n = h.normalize(5, 2, 1, 10, w, t0 + Duration::from_secs(400));
        assert_eq!(n.replicas, 2);
        assert_eq!(n.able.0, "ReadyForNewScale");
        // Scale-up limit: max(2×current, 4).
        let mut h = History::default();
        let n = h.normalize(3, 20, 1, 100, w, t0);
        assert_eq!(
            (n.replicas, n.limited),
            (
                6,
                (
                    true,
                    "ScaleUpLimit",
                    "the desired replica count is increasing faster than the maximum scale rate"
                )
            )
        );
        let n = h.normalize(3, 20, 1, 5, w, t0);
        assert_eq!(
            (n.replicas, n.limited.0, n.limited.1),
            (5, true, "TooManyReplicas")
        );
        let n = h.normalize(3, 0, 2, 5, Duration::ZERO, t0 + Duration::from_secs(1));
        assert_eq!((n.replicas, n.limited.1), (2, "TooFewReplicas"));
    }

    fn rules(window: i32, select: &str, policies: &[(&str, i32, i32)]) -> HPAScalingRules {
        HPAScalingRules {
            stabilization_window_seconds: Some(window),
            select_policy: Some(select.into()),
            policies: Some(
                policies
                    .iter()
                    .map(|(t, v, p)| HPAScalingPolicy {
                        type_: (*t).into(),
                        value: *v,
                        period_seconds: *p,
                    })
                    .collect(),
            ),
            tolerance: None,
        }
    }

    #[test]
    fn behavior_policies_limit_the_rate_and_remember_scale_events() {
        let t0 = Instant::now();
        let up = rules(0, "Max", &[("Pods", 2, 60)]);
        let down = rules(0, "Max", &[("Percent", 50, 60)]);
        let mut h = History::default();
        h.initial(2, t0);
        // Up by at most 2 pods per minute.
        let n = h.normalize_with_behavior(2, 10, 1, 20, &up, &down, t0);
        assert_eq!((n.replicas, n.limited.1), (4, "ScaleUpLimit"));
        h.record_scale(&up, 2, 4, t0);
        // 30 s later the 2 pods of the period are spent: no further scale-up.
        let n = h.normalize_with_behavior(4, 10, 1, 20, &up, &down, t0 + Duration::from_secs(30));
        assert_eq!(n.replicas, 4);
        // After the period, 2 more.
        let n = h.normalize_with_behavior(4, 10, 1, 20, &up, &down, t0 + Duration::from_secs(61));
        assert_eq!(n.replicas, 6);
        // Down by at most 50% per minute.
        let n = h.normalize_with_behavior(10, 1, 1, 20, &up, &down, t0 + Duration::from_secs(200));
        assert_eq!((n.replicas, n.limited.1), (5, "ScaleDownLimit"));
        // Disabled scale-down never shrinks.
        let off = rules(0, "Disabled", &[("Percent", 50, 60)]);
        let n = h.normalize_with_behavior(10, 1, 1, 20, &up, &off, t0 + Duration::from_secs(300));
        assert_eq!(n.replicas, 10);
        // Min picks the smaller change: Pods 4 vs Percent 10% of 10 = 1.
        let min_up = rules(0, "Min", &[("Pods", 4, 60), ("Percent", 10, 60)]);
        let mut h = History::default();
        let n = h.normalize_with_behavior(10, 30, 1, 50, &min_up, &down, t0);
        assert_eq!(n.replicas, 11);
    }

    #[test]
    fn behavior_stabilization_windows() {
        let t0 = Instant::now();
        let up = rules(60, "Max", &[("Pods", 100, 15)]);
        let down = rules(120, "Max", &[("Percent", 100, 15)]);
        let mut h = History::default();
        h.initial(4, t0);
        // Up-window: the lowest recommendation of the last 60 s (4) holds a jump to 8.
        let n = h.normalize_with_behavior(4, 8, 1, 20, &up, &down, t0 + Duration::from_secs(10));
        assert_eq!((n.replicas, n.able.0), (4, "ScaleUpStabilized"));
        // Once the 4 is older than 60 s, 8 goes through.
        let n = h.normalize_with_behavior(4, 8, 1, 20, &up, &down, t0 + Duration::from_secs(75));
        assert_eq!(n.replicas, 8);
        // Down-window: the highest recommendation of the last 120 s (8) holds a drop to 2.
        let n = h.normalize_with_behavior(8, 2, 1, 20, &up, &down, t0 + Duration::from_secs(80));
        assert_eq!((n.replicas, n.able.0), (8, "ScaleDownStabilized"));
    }

    #[test]
    fn behavior_defaults_are_upstreams() {
        let up = defaulted_rules(None, true, Duration::from_secs(300));
        assert_eq!(up.stabilization_window_seconds, Some(0));
        assert_eq!(up.policies.as_ref().unwrap().len(), 2);
        let down = defaulted_rules(None, false, Duration::from_secs(300));
        assert_eq!(down.stabilization_window_seconds, Some(300));
        assert_eq!(down.select_policy.as_deref(), Some("Max"));
    }

    #[test]
    fn conditions_move_their_transition_time_only_on_change() {
        let mut s = HorizontalPodAutoscalerStatus::default();
        let t1 = ts("2026-01-01T00:00:00Z");
        let t2 = ts("2026-01-01T00:01:00Z");
        set_condition(&mut s, "ScalingActive", false, "A", "a", t1);
        set_condition(&mut s, "ScalingActive", false, "B", "b", t2);
        let c = &s.conditions.as_ref().unwrap()[0];
        assert_eq!(c.last_transition_time, Some(Time(t1)));
        assert_eq!(c.reason.as_deref(), Some("B"));
        set_condition(&mut s, "ScalingActive", true, "C", "c", t2);
        assert_eq!(
            s.conditions.as_ref().unwrap()[0].last_transition_time,
            Some(Time(t2))
        );
    }
}
