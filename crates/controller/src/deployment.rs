//! The Deployment controller: one ReplicaSet per pod template (label `pod-template-hash`),
//! rolling updates bounded by maxSurge/maxUnavailable, Recreate, revisions
//! (`deployment.kubernetes.io/revision`), history cleanup, pause/resume, proportional scaling
//! and the Progressing/Available conditions that `kubectl rollout status` reads — upstream's
//! `pkg/controller/deployment` behaviour, written from its documented rules.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt as _};
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::ReconcileError;
use crate::util::{self, Backoff, Shared};

pub(crate) const REVISION: &str = "deployment.kubernetes.io/revision";
const REVISION_HISTORY: &str = "deployment.kubernetes.io/revision-history";
const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
pub(crate) const HASH_LABEL: &str = "pod-template-hash";
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

struct Ctx {
    shared: Arc<Shared>,
    backoff: Backoff,
}

pub(crate) async fn run(shared: Arc<Shared>, stop: watch::Receiver<bool>) {
    let client = shared.client.clone();
    let controller = Controller::new(
        Api::<Deployment>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns(Api::<ReplicaSet>::all(client), watcher::Config::default())
    .with_config(kube::runtime::controller::Config::default().concurrency(shared.concurrency))
    .graceful_shutdown_on(crate::stopped(stop.clone()));
    let abandon = util::abandon_unsynced(controller.store(), stop);
    let ctx = Arc::new(Ctx {
        shared,
        backoff: Backoff::default(),
    });
    util::drain(
        "deployment",
        abandon,
        controller.run(
            |d, ctx| async move {
                let key = util::key_of(d.meta());
                let r = sync(&d, &ctx.shared).await;
                if r.is_ok() {
                    ctx.backoff.success(&key);
                }
                r
            },
            |d, _e, ctx| util::error_action(&ctx.backoff, &util::key_of(d.meta())),
            ctx,
        ),
    )
    .await;
}

/// Resolves an int-or-percent against `total`, rounding percentages up or down (upstream's
/// `GetScaledValueFromIntOrPercent`).
pub(crate) fn scaled(v: Option<&IntOrString>, default: &str, total: i32, round_up: bool) -> i32 {
    let s = match v {
        Some(IntOrString::Int(i)) => return *i,
        Some(IntOrString::String(s)) => s.as_str(),
        None => default,
    };
    let Some(p) = s.strip_suffix('%').and_then(|p| p.parse::<i64>().ok()) else {
        return s.parse().unwrap_or(0);
    };
    let prod = p * i64::from(total);
    let v = if round_up {
        (prod + 99).div_euclid(100)
    } else {
        prod.div_euclid(100)
    };
    i32::try_from(v).unwrap_or(i32::MAX)
}

/// (maxSurge, maxUnavailable) resolved for `replicas`; both zero becomes maxUnavailable 1
/// (upstream's `ResolveFenceposts`).
pub(crate) fn fenceposts(d: &Deployment) -> (i32, i32) {
    let replicas = replicas_of(d);
    let ru = d
        .spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.rolling_update.as_ref());
    let surge = scaled(ru.and_then(|r| r.max_surge.as_ref()), "25%", replicas, true);
    let unavailable = scaled(
        ru.and_then(|r| r.max_unavailable.as_ref()),
        "25%",
        replicas,
        false,
    );
    if surge == 0 && unavailable == 0 {
        return (0, 1);
    }
    (surge, unavailable)
}

fn replicas_of(d: &Deployment) -> i32 {
    d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

fn rs_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)
}

/// Available pods of a ReplicaSet, never more than its spec: a ReplicaSet just scaled down
/// still reports the pods it is about to delete, and counting them would let a rollout go
/// under `replicas - maxUnavailable`.
fn rs_available(rs: &ReplicaSet) -> i32 {
    rs.status
        .as_ref()
        .and_then(|s| s.available_replicas)
        .unwrap_or(0)
        .min(rs_replicas(rs))
}

/// Pods a ReplicaSet may have: its spec, or more while a scale-down is not done yet (so
/// that a surge is never counted twice).
fn rs_pods_bound(rs: &ReplicaSet) -> i32 {
    rs_replicas(rs).max(rs.status.as_ref().map_or(0, |s| s.replicas))
}

fn revision_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> i64 {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(REVISION))
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

/// The template as JSON without the `pod-template-hash` label (upstream's `EqualIgnoreHash`).
fn template_key(t: Option<&PodTemplateSpec>) -> Value {
    let mut v = serde_json::to_value(t).unwrap_or(Value::Null);
    if let Some(labels) = v
        .get_mut("metadata")
        .and_then(|m| m.get_mut("labels"))
        .and_then(Value::as_object_mut)
    {
        labels.remove(HASH_LABEL);
        if labels.is_empty()
            && let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut)
        {
            m.remove("labels");
        }
    }
    if v.get("metadata")
        .and_then(Value::as_object)
        .is_some_and(|m| m.is_empty())
        && let Some(o) = v.as_object_mut()
    {
        o.remove("metadata");
    }
    v
}

/// The pod-template-hash of a template: 32-bit FNV-1a over the template's JSON and the
/// collision count, written with upstream's `SafeEncodeString` alphabet (no vowels, no
/// look-alikes). Upstream hashes the Go struct dump, so values differ from kube-controller-
/// manager's; nothing compares them across implementations (RSes are matched by template).
pub(crate) fn template_hash(t: Option<&PodTemplateSpec>, collision_count: Option<i32>) -> String {
    const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut h: u32 = 0x811c_9dc5;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            h ^= u32::from(*b);
            h = h.wrapping_mul(0x0100_0193);
        }
    };
    feed(template_key(t).to_string().as_bytes());
    if let Some(c) = collision_count {
        feed(&c.to_le_bytes());
    }
    h.to_string()
        .bytes()
        .map(|b| char::from(ALPHANUMS[usize::from(b) % ALPHANUMS.len()]))
        .collect()
}

#[tracing::instrument(skip_all, fields(deployment = %util::key_of(d.meta())))]
async fn sync(d: &Deployment, shared: &Shared) -> Result<Action, ReconcileError> {
    let client = &shared.client;
    let ns = d.namespace().unwrap_or_default();
    let uid = d.uid().unwrap_or_default();
    tracing::trace!(deployment = %d.name_any(), "sync");
    let spec = d
        .spec
        .as_ref()
        .ok_or_else(|| ReconcileError::Invalid("no spec".into()))?;
    let rs_api = RsApi {
        api: Api::namespaced(client.clone(), &ns),
        events: &shared.events,
        deployment: d,
    };
    let deleting = d.meta().deletion_timestamp.is_some();

    // Claim ReplicaSets: owned, adopted orphans that match, release owned ones that stopped.
    let mut owned: Vec<ReplicaSet> = Vec::new();
    for rs in rs_api.list(&ListParams::default()).await?.items {
        let labels = rs.metadata.labels.as_ref();
        let matches = util::selects(&spec.selector, labels)?;
        match util::controller_of(&rs.metadata) {
            Some(r) if r.uid == uid => {
                if matches || deleting {
                    owned.push(rs);
                } else {
                    set_owner(&rs_api, &rs, None).await?;
                }
            }
            Some(_) => {}
            None if matches && !deleting && rs.metadata.deletion_timestamp.is_none() => {
                if let Some(rs) = set_owner(&rs_api, &rs, Some(util::controller_ref(d))).await? {
                    owned.push(rs);
                }
            }
            None => {}
        }
    }
    owned.sort_by_key(|rs| {
        (
            rs.metadata.creation_timestamp.as_ref().map(|t| t.0),
            rs.name_any(),
        )
    });
    if deleting {
        write_status(d, shared, &owned, None, None).await?;
        return Ok(Action::await_change());
    }

    let paused = spec.paused == Some(true);
    let recreate = spec.strategy.as_ref().and_then(|s| s.type_.as_deref()) == Some("Recreate");
    let want = template_key(Some(&spec.template));
    let new_idx = owned
        .iter()
        .position(|rs| template_key(rs.spec.as_ref().and_then(|s| s.template.as_ref())) == want);
    let mut new_rs = new_idx.map(|i| owned[i].clone());
    let mut old: Vec<ReplicaSet> = owned
        .iter()
        .enumerate()
        .filter(|(i, _)| Some(*i) != new_idx)
        .map(|(_, rs)| rs.clone())
        .collect();
    let max_old_revision = old
        .iter()
        .map(|rs| revision_of(&rs.metadata))
        .max()
        .unwrap_or(0);
    let new_revision = max_old_revision + 1;
    let replicas = replicas_of(d);
    let (surge, max_unavailable) = fenceposts(d);
    let mut new_condition: Option<(&str, String)> = None;

    // Bring an existing new ReplicaSet's revision and annotations up to date (rollback).
    if let Some(rs) = new_rs.clone() {
        let current = revision_of(&rs.metadata);
        if current < new_revision && !paused {
            let mut ann = json!({ REVISION: new_revision.to_string() });
            if current > 0 {
                let mut history: Vec<String> = rs
                    .annotations()
                    .get(REVISION_HISTORY)
                    .map(|h| h.split(',').map(str::to_string).collect())
                    .unwrap_or_default();
                history.push(current.to_string());
                ann[REVISION_HISTORY] = json!(history.join(","));
            }
            let patched = rs_api
                .patch(
                    &rs.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(json!({"metadata": {"annotations": ann}})),
                )
                .await?;
            new_rs = Some(patched);
        }
        if d.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_none_or(|c| !c.iter().any(|c| c.type_ == "Progressing"))
        {
            new_condition = Some((
                "FoundNewReplicaSet",
                format!("Found new replica set \"{}\"", rs.name_any()),
            ));
        }
    }

    if paused {
        // Paused: only scaling, no rollout.
        scale_proportionally(d, &rs_api, new_rs.as_mut(), &mut old, surge).await?;
        let paused_cond = Some(("DeploymentPaused", "Deployment is paused".to_string()));
        write_status(
            d,
            shared,
            &owned_now(&new_rs, &old),
            new_rs.as_ref(),
            paused_cond,
        )
        .await?;
        return Ok(Action::await_change());
    }

    // A change of spec.replicas alone (every active RS's desired-replicas annotation is stale)
    // is scaling, not a rollout.
    let active: Vec<&ReplicaSet> = new_rs
        .iter()
        .chain(old.iter())
        .filter(|rs| rs_replicas(rs) > 0)
        .collect();
    let scaling = new_rs.is_some()
        && active.iter().any(|rs| {
            rs.annotations().get(DESIRED_REPLICAS).map(String::as_str)
                != Some(replicas.to_string().as_str())
        });
    if scaling && !recreate {
        scale_proportionally(d, &rs_api, new_rs.as_mut(), &mut old, surge).await?;
    } else if recreate {
        // Recreate: old pods all gone before the new ReplicaSet scales up.
        for rs in old.iter_mut() {
            if rs_replicas(rs) > 0 {
                scale_rs(&rs_api, rs, 0, replicas, replicas).await?;
            }
        }
        let old_uids: Vec<String> = old.iter().filter_map(|rs| rs.uid()).collect();
        let pods = Api::<Pod>::namespaced(client.clone(), &ns)
            .list(&ListParams::default())
            .await?
            .items;
        let old_running = pods.iter().any(|p| {
            util::controller_of(&p.metadata).is_some_and(|r| old_uids.contains(&r.uid))
                && !matches!(util::pod_phase(p), "Succeeded" | "Failed")
        });
        if !old_running {
            if new_rs.is_none() {
                let rs = create_new_rs(d, &rs_api, new_revision, 0, surge).await?;
                new_condition = Some((
                    "NewReplicaSetCreated",
                    format!("Created new replica set \"{}\"", rs.name_any()),
                ));
                new_rs = Some(rs);
            }
            if let Some(rs) = new_rs.as_mut()
                && rs_replicas(rs) != replicas
            {
                scale_rs(&rs_api, rs, replicas, replicas, replicas).await?;
            }
        }
    } else {
        // RollingUpdate.
        if new_rs.is_none() {
            let current: i32 = old.iter().map(rs_replicas).sum();
            let first = if current == 0 {
                replicas
            } else {
                ((replicas + surge) - current).clamp(0, replicas)
            };
            let rs = create_new_rs(d, &rs_api, new_revision, first, surge).await?;
            new_condition = Some((
                "NewReplicaSetCreated",
                format!("Created new replica set \"{}\"", rs.name_any()),
            ));
            new_rs = Some(rs);
        }
        if let Some(rs) = new_rs.as_mut() {
            // Scale the new ReplicaSet up within maxSurge.
            let cur = rs_replicas(rs);
            let target = if cur > replicas {
                replicas
            } else {
                let total: i32 = rs_pods_bound(rs) + old.iter().map(rs_pods_bound).sum::<i32>();
                let max_total = replicas + surge;
                if total >= max_total {
                    cur
                } else {
                    cur + (max_total - total).min(replicas - cur)
                }
            };
            if target != cur || stale_annotations(rs, replicas, replicas + surge) {
                scale_rs(&rs_api, rs, target, replicas, replicas + surge).await?;
            }
            scale_down_old(&rs_api, rs, &mut old, replicas, max_unavailable).await?;
        }
    }

    let complete = new_rs.as_ref().is_some_and(|rs| {
        rs_replicas(rs) == replicas
            && rs.status.as_ref().is_some_and(|s| {
                s.replicas == replicas && s.available_replicas.unwrap_or(0) >= replicas
            })
            && old
                .iter()
                .all(|o| o.status.as_ref().is_none_or(|s| s.replicas == 0))
    });
    if complete {
        cleanup_history(d, &rs_api, &old).await?;
    }
    let requeue = write_status(
        d,
        shared,
        &owned_now(&new_rs, &old),
        new_rs.as_ref(),
        new_condition,
    )
    .await?;
    Ok(requeue)
}

fn owned_now(new_rs: &Option<ReplicaSet>, old: &[ReplicaSet]) -> Vec<ReplicaSet> {
    new_rs.iter().cloned().chain(old.iter().cloned()).collect()
}

fn stale_annotations(rs: &ReplicaSet, desired: i32, max: i32) -> bool {
    let a = rs.annotations();
    a.get(DESIRED_REPLICAS) != Some(&desired.to_string())
        || a.get(MAX_REPLICAS) != Some(&max.to_string())
}

/// The ReplicaSets of one Deployment's namespace, with what recording the Deployment's
/// events needs.
struct RsApi<'a> {
    api: Api<ReplicaSet>,
    events: &'a crate::events::Recorder,
    deployment: &'a Deployment,
}

impl std::ops::Deref for RsApi<'_> {
    type Target = Api<ReplicaSet>;
    fn deref(&self) -> &Api<ReplicaSet> {
        &self.api
    }
}

impl RsApi<'_> {
    /// Upstream's `ScalingReplicaSet` event on the Deployment.
    fn scaled(&self, rs: &str, from: i32, to: i32) {
        let direction = if to > from { "up" } else { "down" };
        self.events.event(
            COMPONENT,
            self.deployment,
            crate::events::EventType::Normal,
            "ScalingReplicaSet",
            format!("Scaled {direction} replica set {rs} from {from} to {to}"),
        );
    }
}

/// The component name of this controller's events.
const COMPONENT: &str = "deployment-controller";

/// Sets a ReplicaSet's replicas with the desired/max annotations, as upstream's
/// `scaleReplicaSet`.
async fn scale_rs(
    api: &RsApi<'_>,
    rs: &mut ReplicaSet,
    replicas: i32,
    desired: i32,
    max: i32,
) -> Result<(), ReconcileError> {
    if rs_replicas(rs) == replicas && !stale_annotations(rs, desired, max) {
        return Ok(());
    }
    let from = rs_replicas(rs);
    tracing::info!(replicaset = %rs.name_any(), from, to = replicas, "scaling replica set");
    let patch = json!({
        "metadata": {"annotations": {
            DESIRED_REPLICAS: desired.to_string(),
            MAX_REPLICAS: max.to_string(),
        }},
        "spec": {"replicas": replicas},
    });
    *rs = api
        .patch(
            &rs.name_any(),
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .await?;
    if from != replicas {
        api.scaled(&rs.name_any(), from, replicas);
    }
    Ok(())
}

/// Scales old ReplicaSets down without going under `replicas - maxUnavailable` available pods:
/// first their unhealthy replicas, then healthy ones, oldest first (upstream's
/// `reconcileOldReplicaSets`).
async fn scale_down_old(
    api: &RsApi<'_>,
    new_rs: &ReplicaSet,
    old: &mut [ReplicaSet],
    replicas: i32,
    max_unavailable: i32,
) -> Result<(), ReconcileError> {
    let old_count: i32 = old.iter().map(rs_replicas).sum();
    if old_count == 0 {
        return Ok(());
    }
    let all: i32 = old_count + rs_replicas(new_rs);
    let min_available = replicas - max_unavailable;
    let new_unavailable = rs_replicas(new_rs) - rs_available(new_rs);
    let mut max_scale_down = all - min_available - new_unavailable;
    if max_scale_down <= 0 {
        return Ok(());
    }
    // Unhealthy replicas first: they do not count toward availability.
    let max_of = |rs: &ReplicaSet| rs.annotations().get(MAX_REPLICAS).cloned();
    for rs in old.iter_mut() {
        if max_scale_down <= 0 {
            break;
        }
        let unhealthy = rs_replicas(rs) - rs_available(rs);
        if rs_replicas(rs) == 0 || unhealthy <= 0 {
            continue;
        }
        let down = unhealthy.min(max_scale_down);
        let to = rs_replicas(rs) - down;
        let max = max_of(rs).and_then(|m| m.parse().ok()).unwrap_or(replicas);
        scale_rs(api, rs, to, replicas, max).await?;
        max_scale_down -= down;
    }
    // Then healthy ones, while availability stays above the floor.
    let available: i32 = old.iter().map(rs_available).sum::<i32>() + rs_available(new_rs);
    if available <= min_available {
        return Ok(());
    }
    let mut total = available - min_available;
    for rs in old.iter_mut() {
        if total <= 0 {
            break;
        }
        let cur = rs_replicas(rs);
        if cur == 0 {
            continue;
        }
        let down = cur.min(total);
        let max = max_of(rs).and_then(|m| m.parse().ok()).unwrap_or(replicas);
        scale_rs(api, rs, cur - down, replicas, max).await?;
        total -= down;
    }
    Ok(())
}

/// Scaling without a template change: the difference goes to the active ReplicaSets in
/// proportion to their size (upstream's `scale`), the rounding leftover to the largest
/// (newer first when growing, older first when shrinking).
async fn scale_proportionally(
    d: &Deployment,
    api: &RsApi<'_>,
    new_rs: Option<&mut ReplicaSet>,
    old: &mut [ReplicaSet],
    surge: i32,
) -> Result<(), ReconcileError> {
    let replicas = replicas_of(d);
    let max = replicas + surge;
    let mut all: Vec<&mut ReplicaSet> = new_rs.into_iter().chain(old.iter_mut()).collect();
    let active: Vec<usize> = (0..all.len())
        .filter(|i| rs_replicas(all[*i]) > 0)
        .collect();
    if active.is_empty() {
        // Nothing runs: the newest ReplicaSet gets everything (if there is one).
        if let Some(rs) = all.first_mut() {
            scale_rs(api, rs, replicas, replicas, max).await?;
        }
        return Ok(());
    }
    if active.len() == 1 {
        let i = active[0];
        // With a single active ReplicaSet that is not the new one during a rollout, let the
        // rollout handle it; otherwise it takes the new size.
        scale_rs(api, all[i], replicas, replicas, max).await?;
        return Ok(());
    }
    let current: i32 = active.iter().map(|i| rs_replicas(all[*i])).sum();
    let allowed = if d
        .spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.type_.as_deref())
        == Some("Recreate")
    {
        replicas
    } else {
        max
    };
    let to_add = allowed - current;
    if to_add == 0 {
        for i in active {
            let r = rs_replicas(all[i]);
            scale_rs(api, all[i], r, replicas, max).await?;
        }
        return Ok(());
    }
    let mut order = active.clone();
    let created = |rs: &ReplicaSet| rs.metadata.creation_timestamp.as_ref().map(|t| t.0);
    if to_add > 0 {
        order.sort_by_key(|i| {
            (
                std::cmp::Reverse(rs_replicas(all[*i])),
                std::cmp::Reverse(created(all[*i])),
            )
        });
    } else {
        order.sort_by_key(|i| (std::cmp::Reverse(rs_replicas(all[*i])), created(all[*i])));
    }
    let mut sizes: BTreeMap<usize, i32> = BTreeMap::new();
    let mut added = 0;
    for i in &order {
        let r = rs_replicas(all[*i]);
        let share = i32::try_from(i64::from(r) * i64::from(to_add) / i64::from(current.max(1)))
            .unwrap_or(0);
        let share = if to_add > 0 {
            share.min(to_add - added)
        } else {
            share.max(to_add - added)
        };
        added += share;
        sizes.insert(*i, r + share);
    }
    if let Some(first) = order.first()
        && let Some(s) = sizes.get_mut(first)
    {
        *s = (*s + to_add - added).max(0);
    }
    for (i, size) in sizes {
        scale_rs(api, all[i], size.max(0), replicas, max).await?;
    }
    Ok(())
}

/// Creates the ReplicaSet of the current template, `<deployment>-<hash>`.
async fn create_new_rs(
    d: &Deployment,
    api: &RsApi<'_>,
    revision: i64,
    replicas: i32,
    surge: i32,
) -> Result<ReplicaSet, ReconcileError> {
    let spec = d
        .spec
        .as_ref()
        .ok_or_else(|| ReconcileError::Invalid("no spec".into()))?;
    let collisions = d.status.as_ref().and_then(|s| s.collision_count);
    let hash = template_hash(Some(&spec.template), collisions);
    let mut template = spec.template.clone();
    let tmeta = template.metadata.get_or_insert_with(Default::default);
    tmeta
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(HASH_LABEL.into(), hash.clone());
    let mut selector = spec.selector.clone();
    selector
        .match_labels
        .get_or_insert_with(BTreeMap::new)
        .insert(HASH_LABEL.into(), hash.clone());
    let mut annotations: BTreeMap<String, String> = d
        .annotations()
        .iter()
        .filter(|(k, _)| {
            k.as_str() != LAST_APPLIED && k.as_str() != REVISION && k.as_str() != REVISION_HISTORY
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    annotations.insert(REVISION.into(), revision.to_string());
    annotations.insert(DESIRED_REPLICAS.into(), replicas_of(d).to_string());
    annotations.insert(MAX_REPLICAS.into(), (replicas_of(d) + surge).to_string());
    let name = format!("{}-{hash}", d.name_any());
    let rs: ReplicaSet = serde_json::from_value(json!({
        "metadata": {
            "name": name,
            "namespace": d.namespace(),
            "labels": tmeta.labels,
            "annotations": annotations,
            "ownerReferences": [util::controller_ref(d)],
        },
        "spec": {
            "replicas": replicas,
            "minReadySeconds": spec.min_ready_seconds.unwrap_or(0),
            "selector": selector,
            "template": template,
        }
    }))
    .map_err(|e| ReconcileError::Invalid(e.to_string()))?;
    match api.create(&PostParams::default(), &rs).await {
        Ok(rs) => {
            tracing::info!(replicaset = %name, replicas, revision, "created new replica set");
            if replicas > 0 {
                api.scaled(&name, 0, replicas);
            }
            Ok(rs)
        }
        Err(kube::Error::Api(s)) if s.code == 409 => {
            // Same name: ours with an equal template is the one we want (a stale read);
            // anything else is a hash collision: count it and try another name next time.
            let existing = api.get(&name).await?;
            let ours = util::controller_of(&existing.metadata)
                .is_some_and(|r| Some(&r.uid) == d.meta().uid.as_ref());
            if ours
                && template_key(existing.spec.as_ref().and_then(|s| s.template.as_ref()))
                    == template_key(Some(&spec.template))
            {
                return Ok(existing);
            }
            let count = collisions.unwrap_or(0) + 1;
            Api::<Deployment>::namespaced(
                api.api.clone().into_client(),
                &d.namespace().unwrap_or_default(),
            )
            .patch_status(
                &d.name_any(),
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"collisionCount": count}})),
            )
            .await?;
            Err(ReconcileError::Invalid(format!(
                "hash collision on replica set {name}; collisionCount is now {count}"
            )))
        }
        Err(e) => Err(e.into()),
    }
}

/// Deletes the oldest fully scaled-down ReplicaSets beyond `revisionHistoryLimit`.
async fn cleanup_history(
    d: &Deployment,
    api: &RsApi<'_>,
    old: &[ReplicaSet],
) -> Result<(), ReconcileError> {
    let limit = d
        .spec
        .as_ref()
        .and_then(|s| s.revision_history_limit)
        .unwrap_or(10);
    let mut dead: Vec<&ReplicaSet> = old
        .iter()
        .filter(|rs| {
            rs_replicas(rs) == 0
                && rs.status.as_ref().is_none_or(|s| {
                    s.replicas == 0 && s.observed_generation == rs.metadata.generation
                })
                && rs.metadata.deletion_timestamp.is_none()
        })
        .collect();
    let excess = dead
        .len()
        .saturating_sub(usize::try_from(limit.max(0)).unwrap_or(0));
    if excess == 0 {
        return Ok(());
    }
    dead.sort_by_key(|rs| {
        (
            revision_of(&rs.metadata),
            rs.metadata.creation_timestamp.as_ref().map(|t| t.0),
        )
    });
    for rs in dead.into_iter().take(excess) {
        tracing::info!(replicaset = %rs.name_any(), "deleting old replica set beyond revisionHistoryLimit");
        match api
            .delete(&rs.name_any(), &DeleteParams::background())
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

async fn set_owner(
    api: &RsApi<'_>,
    rs: &ReplicaSet,
    owner: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference>,
) -> Result<Option<ReplicaSet>, ReconcileError> {
    let mut refs: Vec<_> = rs
        .metadata
        .owner_references
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r.controller != Some(true))
        .collect();
    refs.extend(owner);
    let patch = json!({"metadata": {
        "ownerReferences": if refs.is_empty() { Value::Null } else { json!(refs) },
        "uid": rs.metadata.uid,
    }});
    match api
        .patch(
            &rs.name_any(),
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .await
    {
        Ok(rs) => Ok(Some(rs)),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Computes and writes the status (only when it changed); returns when to look again for the
/// progress deadline.
async fn write_status(
    d: &Deployment,
    shared: &Shared,
    all: &[ReplicaSet],
    new_rs: Option<&ReplicaSet>,
    event: Option<(&str, String)>,
) -> Result<Action, ReconcileError> {
    let spec = d
        .spec
        .as_ref()
        .ok_or_else(|| ReconcileError::Invalid("no spec".into()))?;
    let replicas = replicas_of(d);
    let (_, max_unavailable) = fenceposts(d);
    let st = |rs: &ReplicaSet| rs.status.clone().unwrap_or_default();
    let total: i32 = all.iter().map(|rs| st(rs).replicas).sum();
    let updated = new_rs.map_or(0, |rs| st(rs).replicas);
    let ready: i32 = all
        .iter()
        .map(|rs| st(rs).ready_replicas.unwrap_or(0))
        .sum();
    let available: i32 = all
        .iter()
        .map(|rs| st(rs).available_replicas.unwrap_or(0))
        .sum();
    let unavailable = (replicas - available).max(0);
    let old = d.status.clone().unwrap_or_default();
    let now = util::now();
    let mut conditions: Vec<Value> = old
        .conditions
        .iter()
        .flatten()
        .map(|c| serde_json::to_value(c).unwrap_or(Value::Null))
        .collect();

    let available_cond = if available >= replicas - max_unavailable {
        (
            "True",
            "MinimumReplicasAvailable",
            "Deployment has minimum availability.".to_string(),
        )
    } else {
        (
            "False",
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.".to_string(),
        )
    };
    set_condition(&mut conditions, "Available", available_cond, now, false);

    let paused = spec.paused == Some(true);
    let deadline = spec.progress_deadline_seconds.unwrap_or(600);
    let rs_name = new_rs.map(|rs| rs.name_any()).unwrap_or_default();
    let progressing = conditions
        .iter()
        .find(|c| c["type"] == "Progressing")
        .cloned();
    let prog_reason = progressing
        .as_ref()
        .and_then(|c| c["reason"].as_str().map(str::to_string))
        .unwrap_or_default();
    let complete =
        new_rs.is_some() && updated == replicas && available == replicas && total == replicas;
    let mut requeue = Action::await_change();
    if paused {
        if prog_reason != "DeploymentPaused" {
            set_condition(
                &mut conditions,
                "Progressing",
                ("Unknown", "DeploymentPaused", "Deployment is paused".into()),
                now,
                true,
            );
        }
    } else if prog_reason == "DeploymentPaused" {
        set_condition(
            &mut conditions,
            "Progressing",
            (
                "Unknown",
                "DeploymentResumed",
                "Deployment is resumed".into(),
            ),
            now,
            true,
        );
    } else if let Some((reason, msg)) = event {
        set_condition(
            &mut conditions,
            "Progressing",
            ("True", reason, msg),
            now,
            true,
        );
    } else if complete {
        set_condition(
            &mut conditions,
            "Progressing",
            (
                "True",
                "NewReplicaSetAvailable",
                format!("ReplicaSet \"{rs_name}\" has successfully progressed."),
            ),
            now,
            prog_reason != "NewReplicaSetAvailable",
        );
    } else if new_rs.is_some() {
        let advanced = updated > old.updated_replicas.unwrap_or(0)
            || ready > old.ready_replicas.unwrap_or(0)
            || available > old.available_replicas.unwrap_or(0)
            || total < old.replicas.unwrap_or(0)
            || prog_reason.is_empty();
        if advanced {
            set_condition(
                &mut conditions,
                "Progressing",
                (
                    "True",
                    "ReplicaSetUpdated",
                    format!("ReplicaSet \"{rs_name}\" is progressing."),
                ),
                now,
                true,
            );
        } else if prog_reason != "ProgressDeadlineExceeded" {
            let last = progressing
                .as_ref()
                .and_then(|c| c["lastUpdateTime"].as_str())
                .and_then(|t| t.parse::<Timestamp>().ok())
                .unwrap_or(now);
            if now.duration_since(last).as_secs() >= i64::from(deadline) {
                set_condition(
                    &mut conditions,
                    "Progressing",
                    (
                        "False",
                        "ProgressDeadlineExceeded",
                        format!("ReplicaSet \"{rs_name}\" has timed out progressing."),
                    ),
                    now,
                    true,
                );
            }
        }
    }
    // Not complete and still within the deadline: look again when it would pass, even if
    // nothing changes (upstream requeues after the remaining time too).
    let cond = conditions.iter().find(|c| c["type"] == "Progressing");
    if !complete
        && !paused
        && cond.is_some_and(|c| c["reason"] != "ProgressDeadlineExceeded")
        && let Some(last) = cond
            .and_then(|c| c["lastUpdateTime"].as_str())
            .and_then(|t| t.parse::<Timestamp>().ok())
    {
        let left = i64::from(deadline) - now.duration_since(last).as_secs();
        requeue = Action::requeue(Duration::from_secs(u64::try_from(left.max(1)).unwrap_or(1)));
    }

    let mut status = json!({
        "observedGeneration": d.meta().generation,
        "replicas": total,
        "updatedReplicas": updated,
        "readyReplicas": ready,
        "availableReplicas": available,
        "unavailableReplicas": unavailable,
        "conditions": conditions,
    });
    if let Some(c) = old.collision_count {
        status["collisionCount"] = json!(c);
    }
    let old_value = serde_json::to_value(&old).unwrap_or(Value::Null);
    let num = |v: &Value, k: &str| v.get(k).and_then(Value::as_i64).unwrap_or(0);
    let changed = [
        "observedGeneration",
        "replicas",
        "updatedReplicas",
        "readyReplicas",
        "availableReplicas",
        "unavailableReplicas",
    ]
    .iter()
    .any(|k| num(&old_value, k) != num(&status, k))
        || old_value.get("conditions").cloned().unwrap_or(json!([])) != status["conditions"];
    let api =
        Api::<Deployment>::namespaced(shared.client.clone(), &d.namespace().unwrap_or_default());
    if changed {
        for k in [
            "updatedReplicas",
            "readyReplicas",
            "availableReplicas",
            "unavailableReplicas",
            "replicas",
        ] {
            if status[k] == 0 {
                status[k] = Value::Null;
            }
        }
        api.patch_status(
            &d.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"status": status})),
        )
        .await?;
    }
    // The Deployment carries its newest revision too (kubectl rollout history reads it).
    if let Some(rs) = new_rs {
        let rev = revision_of(&rs.metadata);
        if rev > 0 && revision_of(d.meta()) != rev {
            api.patch(
                &d.name_any(),
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"annotations": {REVISION: rev.to_string()}}})),
            )
            .await?;
        }
    }
    Ok(requeue)
}

/// Sets condition `type_`; `lastTransitionTime` changes only with the status, and
/// `lastUpdateTime` when `touch` (a new reason or progress).
fn set_condition(
    conditions: &mut Vec<Value>,
    type_: &str,
    (status, reason, message): (&str, &str, String),
    now: Timestamp,
    touch: bool,
) {
    let now = now.to_string();
    if let Some(c) = conditions.iter_mut().find(|c| c["type"] == type_) {
        let same = c["status"] == status && c["reason"] == reason && c["message"] == message;
        if same && !touch {
            return;
        }
        if c["status"] != status {
            c["lastTransitionTime"] = json!(now);
        }
        if touch || !same {
            c["lastUpdateTime"] = json!(now);
        }
        c["status"] = json!(status);
        c["reason"] = json!(reason);
        c["message"] = json!(message);
    } else {
        conditions.push(json!({
            "type": type_, "status": status, "reason": reason, "message": message,
            "lastUpdateTime": now, "lastTransitionTime": now,
        }));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn percentages_round_as_upstream() {
        let p = |s: &str| IntOrString::String(s.into());
        // maxSurge rounds up, maxUnavailable down.
        assert_eq!(scaled(Some(&p("25%")), "", 10, true), 3);
        assert_eq!(scaled(Some(&p("25%")), "", 10, false), 2);
        assert_eq!(scaled(Some(&p("25%")), "", 1, true), 1);
        assert_eq!(scaled(Some(&p("25%")), "", 1, false), 0);
        assert_eq!(scaled(Some(&IntOrString::Int(2)), "", 10, false), 2);
        assert_eq!(scaled(None, "25%", 4, false), 1);
    }

    #[test]
    fn fenceposts_never_both_zero() {
        let d: Deployment = serde_json::from_value(json!({
            "metadata": {"name": "d"},
            "spec": {"replicas": 1, "selector": {}, "template": {},
                     "strategy": {"rollingUpdate": {"maxSurge": 0, "maxUnavailable": "25%"}}}
        }))
        .unwrap();
        assert_eq!(fenceposts(&d), (0, 1));
    }

    #[test]
    fn template_hash_ignores_its_own_label_and_uses_the_safe_alphabet() {
        let t: PodTemplateSpec = serde_json::from_value(json!({
            "metadata": {"labels": {"app": "a"}},
            "spec": {"containers": [{"name": "c", "image": "x"}]}
        }))
        .unwrap();
        let mut labelled = t.clone();
        labelled
            .metadata
            .as_mut()
            .unwrap()
            .labels
            .as_mut()
            .unwrap()
            .insert(HASH_LABEL.into(), "abc".into());
        let h = template_hash(Some(&t), None);
        assert_eq!(h, template_hash(Some(&labelled), None));
        assert_ne!(h, template_hash(Some(&t), Some(1)));
        assert!(
            h.chars().all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c)),
            "{h}"
        );
    }
}
