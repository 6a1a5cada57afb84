//! The StatefulSet controller (upstream's `pkg/controller/statefulset`): pods with stable
//! names `<set>-<ordinal>` from `spec.ordinals.start`, created in ordinal order one at a time
//! and only after every predecessor is Running and Ready (OrderedReady) or all at once
//! (Parallel); removed in reverse ordinal order; PersistentVolumeClaims `<claim>-<set>-<ordinal>`
//! from `volumeClaimTemplates`, created before their pod, with owner references that follow
//! `persistentVolumeClaimRetentionPolicy`; rolling updates from the highest ordinal down to
//! `partition`, at most `maxUnavailable` pods at a time, or OnDelete; revisions kept as
//! ControllerRevisions (`history`), and the status `kubectl rollout status` reads.
//!
//! Every sync lists the namespace's pods and ControllerRevisions from the apiserver (consistent
//! reads), so no "expectations" bookkeeping is needed; pod events trigger the syncs.
//!
//! Events (component `statefulset-controller`, upstream's `recordPodEvent`/`recordClaimEvent`
//! texts): `SuccessfulCreate` `create Pod web-0 in StatefulSet web successful`, `create Claim
//! data-web-0 Pod web-0 in StatefulSet web success`, `SuccessfulDelete`, `SuccessfulUpdate`
//! (identity labels restored), their `Failed…` Warnings with the error, and
//! `RecreatingFailedPod` (Warning) / `RecreatingTerminatedPod` before a finished member is
//! deleted.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::future::join_all;
use k8s_openapi::api::apps::v1::{ControllerRevision, StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, Pod, PodTemplateSpec, Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt as _};
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::ReconcileError;
use crate::events::EventType;
use crate::history;
use crate::replicaset::api_error_text;
use crate::util::{self, Backoff, Shared};

/// Label with the pod's name, so that a Service can select one member.
pub(crate) const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
/// Label with the pod's ordinal (upstream's `PodIndexLabel`, on by default since 1.28).
pub(crate) const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";
/// Label with the name of the revision a pod was made from.
pub(crate) const REVISION_LABEL: &str = "controller-revision-hash";

/// The component name of this controller's events (upstream's `statefulset-controller`).
const COMPONENT: &str = "statefulset-controller";
/// Upstream's `MaxBatchSize`: Parallel creations per batch at most.
const MAX_BATCH: usize = 500;

struct Ctx {
    shared: Arc<Shared>,
    backoff: Backoff,
}

pub(crate) async fn run(shared: Arc<Shared>, stop: watch::Receiver<bool>) {
    let client = shared.client.clone();
    let controller = Controller::new(
        Api::<StatefulSet>::all(client.clone()),
        watcher::Config::default(),
    )
    .with_config(kube::runtime::controller::Config::default().concurrency(shared.concurrency));
    let store = controller.store();
    // A pod triggers its controller; an orphan every set of its namespace that would claim it.
    let controller = controller
        .watches(
            Api::<Pod>::all(client),
            watcher::Config::default(),
            move |pod: Pod| {
                let ns = pod.namespace().unwrap_or_default();
                match util::controller_of(&pod.metadata) {
                    Some(r) if r.kind == "StatefulSet" => {
                        vec![ObjectRef::<StatefulSet>::new(&r.name).within(&ns)]
                    }
                    Some(_) => Vec::new(),
                    None => store
                        .state()
                        .iter()
                        .filter(|s| s.namespace().as_deref() == Some(ns.as_str()))
                        .filter(|s| parent_and_ordinal(&pod.name_any()).0 == s.name_any())
                        .filter(|s| {
                            s.spec.as_ref().is_some_and(|spec| {
                                util::selects(&spec.selector, pod.metadata.labels.as_ref())
                                    .unwrap_or(false)
                            })
                        })
                        .map(|s| ObjectRef::from_obj(s.as_ref()))
                        .collect(),
                }
            },
        )
        .graceful_shutdown_on(crate::stopped(stop.clone()));
    let abandon = util::abandon_unsynced(controller.store(), stop);
    let ctx = Arc::new(Ctx {
        shared,
        backoff: Backoff::default(),
    });
    util::drain(
        "statefulset",
        abandon,
        controller.run(
            |set, ctx| async move {
                let key = util::key_of(set.meta());
                let r = sync(&set, &ctx.shared).await;
                if r.is_ok() {
                    ctx.backoff.success(&key);
                }
                r
            },
            |set, _e, ctx| util::error_action(&ctx.backoff, &util::key_of(set.meta())),
            ctx,
        ),
    )
    .await;
}

/// The parent name and ordinal of a pod name `<parent>-<ordinal>`, or `("", -1)`.
pub(crate) fn parent_and_ordinal(name: &str) -> (&str, i32) {
    match name.rsplit_once('-') {
        Some((parent, ord)) if !ord.is_empty() && ord.bytes().all(|b| b.is_ascii_digit()) => {
            match ord.parse::<i32>() {
                Ok(o) => (parent, o),
                Err(_) => (parent, -1),
            }
        }
        _ => ("", -1),
    }
}

fn ordinal_of(pod: &Pod) -> i32 {
    parent_and_ordinal(pod.metadata.name.as_deref().unwrap_or("")).1
}

fn start_ordinal(spec: &StatefulSetSpec) -> i32 {
    spec.ordinals
        .as_ref()
        .and_then(|o| o.start)
        .unwrap_or(0)
        .max(0)
}

fn replicas_of(spec: &StatefulSetSpec) -> i32 {
    spec.replicas.unwrap_or(1).max(0)
}

fn in_range(ordinal: i32, spec: &StatefulSetSpec) -> bool {
    let start = start_ordinal(spec);
    ordinal >= start && ordinal < start.saturating_add(replicas_of(spec))
}

fn pod_name(set: &str, ordinal: i32) -> String {
    format!("{set}-{ordinal}")
}

fn claim_name(template: &str, set: &str, ordinal: i32) -> String {
    format!("{template}-{set}-{ordinal}")
}

fn revision_of(pod: &Pod) -> &str {
    pod.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(REVISION_LABEL))
        .map_or("", String::as_str)
}

/// Created and kept by the apiserver (upstream's `isCreated`: it has a phase).
fn created(pod: &Pod) -> bool {
    !util::pod_phase(pod).is_empty()
}

fn terminating(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

fn running_and_ready(pod: &Pod) -> bool {
    util::pod_phase(pod) == "Running" && util::pod_ready(pod)
}

fn running_and_available(pod: &Pod, min_ready: i32) -> bool {
    running_and_ready(pod) && util::pod_available(pod, min_ready, util::now())
}

fn healthy(pod: &Pod) -> bool {
    running_and_ready(pod) && !terminating(pod)
}

/// `persistentVolumeClaimRetentionPolicy` as (whenDeleted deletes, whenScaled deletes);
/// absent or unknown values retain.
fn retention(spec: &StatefulSetSpec) -> (bool, bool) {
    let p = spec.persistent_volume_claim_retention_policy.as_ref();
    let del = |v: Option<&String>| v.map(String::as_str) == Some("Delete");
    (
        del(p.and_then(|p| p.when_deleted.as_ref())),
        del(p.and_then(|p| p.when_scaled.as_ref())),
    )
}

/// The claims of the pod with `ordinal`, keyed by template name: the template with its
/// name made per pod and the selector's matchLabels added to its labels.
fn claims_for(set: &StatefulSet, ordinal: i32) -> Vec<(String, PersistentVolumeClaim)> {
    let Some(spec) = set.spec.as_ref() else {
        return Vec::new();
    };
    let set_name = set.name_any();
    spec.volume_claim_templates
        .iter()
        .flatten()
        .map(|t| {
            let tname = t.metadata.name.clone().unwrap_or_default();
            let mut claim = t.clone();
            claim.status = None;
            claim.metadata.name = Some(claim_name(&tname, &set_name, ordinal));
            claim.metadata.namespace = set.namespace();
            let mut labels = claim.metadata.labels.take().unwrap_or_default();
            for (k, v) in spec.selector.match_labels.iter().flatten() {
                labels.insert(k.clone(), v.clone());
            }
            claim.metadata.labels = (!labels.is_empty()).then_some(labels);
            (tname, claim)
        })
        .collect()
}

/// A new member of `set` at `ordinal` from `template`, labelled with `revision`
/// (upstream's `newVersionedStatefulSetPod` once the revision is chosen).
fn new_pod(set: &StatefulSet, template: &PodTemplateSpec, ordinal: i32, revision: &str) -> Pod {
    let set_name = set.name_any();
    let tmeta = template.metadata.clone().unwrap_or_default();
    let name = pod_name(&set_name, ordinal);
    let mut labels = tmeta.labels.unwrap_or_default();
    labels.insert(POD_NAME_LABEL.into(), name.clone());
    labels.insert(POD_INDEX_LABEL.into(), ordinal.to_string());
    labels.insert(REVISION_LABEL.into(), revision.into());
    let mut spec = template.spec.clone().unwrap_or_default();
    spec.hostname = Some(name.clone());
    spec.subdomain = set
        .spec
        .as_ref()
        .and_then(|s| s.service_name.clone())
        .filter(|s| !s.is_empty());
    let claims = claims_for(set, ordinal);
    let mut volumes: Vec<Volume> = claims
        .iter()
        .map(|(tname, claim)| Volume {
            name: tname.clone(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim.metadata.name.clone().unwrap_or_default(),
                read_only: None,
            }),
            ..Volume::default()
        })
        .collect();
    for v in spec.volumes.take().into_iter().flatten() {
        if !claims.iter().any(|(t, _)| *t == v.name) {
            volumes.push(v);
        }
    }
    spec.volumes = (!volumes.is_empty()).then_some(volumes);
    Pod {
        metadata: ObjectMeta {
            name: Some(name),
            generate_name: Some(format!("{set_name}-")),
            namespace: set.namespace(),
            labels: Some(labels),
            annotations: tmeta.annotations,
            finalizers: tmeta.finalizers,
            owner_references: Some(vec![util::controller_ref(set)]),
            ..ObjectMeta::default()
        },
        spec: Some(spec),
        status: None,
    }
}

fn identity_matches(set: &StatefulSet, pod: &Pod) -> bool {
    let name = pod.name_any();
    let (parent, ordinal) = parent_and_ordinal(&name);
    ordinal >= 0
        && parent == set.name_any()
        && pod.namespace() == set.namespace()
        && pod.labels().get(POD_NAME_LABEL) == Some(&name)
}

fn storage_matches(set: &StatefulSet, pod: &Pod) -> bool {
    let ordinal = ordinal_of(pod);
    if ordinal < 0 {
        return false;
    }
    let volumes = pod.spec.as_ref().and_then(|s| s.volumes.as_ref());
    claims_for(set, ordinal).iter().all(|(tname, claim)| {
        volumes.is_some_and(|vs| {
            vs.iter().any(|v| {
                v.name == *tname
                    && v.persistent_volume_claim.as_ref().map(|p| &p.claim_name)
                        == claim.metadata.name.as_ref()
            })
        })
    })
}

/// One step of the replica and condemned loops: go on, or stop this sync here.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Step {
    Continue,
    Exit,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Counts {
    replicas: i32,
    ready: i32,
    available: i32,
    current: i32,
    updated: i32,
}

fn count<'a>(
    pods: impl Iterator<Item = &'a Pod>,
    min_ready: i32,
    current: &str,
    update: &str,
) -> Counts {
    let mut c = Counts::default();
    for p in pods {
        if created(p) {
            c.replicas += 1;
        }
        if running_and_ready(p) {
            c.ready += 1;
            if running_and_available(p, min_ready) {
                c.available += 1;
            }
        }
        if created(p) && !terminating(p) {
            if revision_of(p) == current {
                c.current += 1;
            }
            if revision_of(p) == update {
                c.updated += 1;
            }
        }
    }
    c
}

struct Sync<'a> {
    shared: &'a Shared,
    set: &'a StatefulSet,
    spec: &'a StatefulSetSpec,
    pods: Api<Pod>,
    claims: Api<PersistentVolumeClaim>,
    /// A claim still refers to a deleted pod of the same name: look again soon.
    stale_claim: AtomicBool,
}

#[tracing::instrument(skip_all, fields(statefulset = %util::key_of(set.meta())))]
async fn sync(set: &StatefulSet, shared: &Shared) -> Result<Action, ReconcileError> {
    let client = &shared.client;
    let spec = set
        .spec
        .as_ref()
        .ok_or_else(|| ReconcileError::Invalid("no spec".into()))?;
    let ns = set.namespace().unwrap_or_default();
    let name = set.name_any();
    let uid = set.uid().unwrap_or_default();
    let deleting = set.metadata.deletion_timestamp.is_some();
    let selector = &spec.selector;
    if selector
        .match_labels
        .as_ref()
        .is_none_or(BTreeMap::is_empty)
        && selector
            .match_expressions
            .as_ref()
            .is_none_or(Vec::is_empty)
    {
        tracing::warn!("StatefulSet has an empty selector; ignoring it");
        return Ok(Action::await_change());
    }
    let pods_api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let revs_api: Api<ControllerRevision> = Api::namespaced(client.clone(), &ns);

    // Adopt only for a set that is still there and not being deleted (a fresh read, as
    // upstream's `RecheckDeletionTimestamp`).
    let can_adopt = !deleting
        && Api::<StatefulSet>::namespaced(client.clone(), &ns)
            .get_opt(&name)
            .await?
            .is_some_and(|f| {
                f.uid().as_deref() == Some(uid.as_str()) && f.metadata.deletion_timestamp.is_none()
            });

    // Claim pods: members (by name) matching the selector.
    let candidates = pods_api.list(&ListParams::default()).await?.items;
    let pods = util::claim_pods(
        &pods_api,
        candidates,
        util::controller_ref(set),
        can_adopt,
        |pod| {
            Ok(parent_and_ordinal(&pod.name_any()).0 == name
                && util::selects(selector, pod.metadata.labels.as_ref())?)
        },
    )
    .await?;

    // Revisions: the update revision is the current template's; an older revision with the
    // same template is brought forward (a rollback); the current revision is the status's.
    let mut revisions = history::claim(&revs_api, set, selector, can_adopt).await?;
    let status = set.status.clone().unwrap_or_default();
    let mut collision_count = status.collision_count.unwrap_or(0);
    let data = history::template_patch(&spec.template);
    let next = history::next_revision(&revisions);
    let update_rev = match revisions.iter().rposition(|r| history::holds(r, &data)) {
        Some(i) if i + 1 == revisions.len() => revisions[i].clone(),
        Some(i) => {
            let r = history::set_revision(&revs_api, &revisions[i], next).await?;
            revisions[i] = r.clone();
            r
        }
        None => {
            let hash = history::hash_data(&data, Some(collision_count));
            let rev = history::new_revision(
                set,
                spec.template
                    .metadata
                    .as_ref()
                    .and_then(|m| m.labels.as_ref()),
                set.metadata.annotations.clone(),
                data.clone(),
                next,
                (history::HASH_LABEL, &hash),
            );
            history::create(&revs_api, rev, &name, &mut collision_count, |c| {
                history::hash_data(&data, Some(c))
            })
            .await?
        }
    };
    let current_rev = revisions
        .iter()
        .find(|r| r.metadata.name.is_some() && r.metadata.name == status.current_revision)
        .cloned()
        .unwrap_or_else(|| update_rev.clone());
    let update_name = update_rev.metadata.name.clone().unwrap_or_default();
    let current_name = current_rev.metadata.name.clone().unwrap_or_default();

    let sync = Sync {
        shared,
        set,
        spec,
        pods: pods_api,
        claims: Api::namespaced(client.clone(), &ns),
        stale_claim: AtomicBool::new(false),
    };
    let result = sync
        .update(&pods, &current_rev, &update_rev, deleting)
        .await;
    let (counts, step_err) = match result {
        Ok(c) => (c, None),
        Err((c, e)) => (c, Some(e)),
    };

    // Status, with a finished rolling update made current (upstream's completeRollingUpdate).
    let replicas = replicas_of(spec);
    let rolling = strategy_type(spec) == "RollingUpdate";
    let mut current_revision = current_name;
    let mut current = counts.current;
    if rolling
        && counts.updated == replicas
        && counts.ready == replicas
        && counts.replicas == replicas
    {
        current = counts.updated;
        current_revision = update_name.clone();
    }
    let new_status = json!({
        "observedGeneration": set.metadata.generation,
        "replicas": counts.replicas,
        "readyReplicas": counts.ready,
        "availableReplicas": counts.available,
        "currentReplicas": current,
        "updatedReplicas": counts.updated,
        "currentRevision": current_revision,
        "updateRevision": update_name,
        "collisionCount": collision_count,
    });
    let old_status = serde_json::to_value(&set.status).unwrap_or(Value::Null);
    if status_differs(&old_status, &new_status) {
        Api::<StatefulSet>::namespaced(client.clone(), &ns)
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": new_status })),
            )
            .await?;
    }

    // Keep revisionHistoryLimit revisions besides the live ones (current, update, pods').
    let live: HashSet<&str> = [current_revision.as_str(), update_name.as_str()]
        .into_iter()
        .chain(pods.iter().map(revision_of))
        .collect();
    let old: Vec<&ControllerRevision> = revisions
        .iter()
        .filter(|r| !live.contains(r.metadata.name.as_deref().unwrap_or("")))
        .collect();
    let limit = usize::try_from(spec.revision_history_limit.unwrap_or(10).max(0)).unwrap_or(0);
    if old.len() > limit {
        for r in &old[..old.len() - limit] {
            history::delete(&revs_api, r).await?;
        }
    }

    if let Some(e) = step_err {
        return Err(e);
    }
    if sync.stale_claim.load(Ordering::Relaxed) {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    if min_ready > 0 && counts.available != replicas {
        return Ok(Action::requeue(Duration::from_secs(
            u64::try_from(min_ready).unwrap_or(1),
        )));
    }
    Ok(Action::await_change())
}

fn strategy_type(spec: &StatefulSetSpec) -> &str {
    spec.update_strategy
        .as_ref()
        .and_then(|s| s.type_.as_deref())
        .unwrap_or("RollingUpdate")
}

fn status_differs(old: &Value, new: &Value) -> bool {
    let num = |v: &Value, k: &str| v.get(k).and_then(Value::as_i64).unwrap_or(0);
    let text = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    [
        "observedGeneration",
        "replicas",
        "readyReplicas",
        "availableReplicas",
        "currentReplicas",
        "updatedReplicas",
        "collisionCount",
    ]
    .iter()
    .any(|k| num(old, k) != num(new, k))
        || ["currentRevision", "updateRevision"]
            .iter()
            .any(|k| text(old, k) != text(new, k))
}

impl Sync<'_> {
    /// Records a pod operation on the set as upstream's `recordPodEvent` does: `Successful<Verb>`
    /// `<verb> Pod <pod> in StatefulSet <set> successful`, or `Failed<Verb>` with the error.
    fn pod_event(&self, verb: &str, pod: &str, err: Option<&str>) {
        let set = self.set.name_any();
        let title = title_case(verb);
        match err {
            None => self.shared.events.event(
                COMPONENT,
                self.set,
                EventType::Normal,
                &format!("Successful{title}"),
                format!("{verb} Pod {pod} in StatefulSet {set} successful"),
            ),
            Some(e) => self.shared.events.event(
                COMPONENT,
                self.set,
                EventType::Warning,
                &format!("Failed{title}"),
                format!("{verb} Pod {pod} in StatefulSet {set} failed error: {e}"),
            ),
        }
    }

    /// Upstream's `recordClaimEvent` for a claim created for `pod`.
    fn claim_event(&self, claim: &str, pod: &str, err: Option<&str>) {
        let set = self.set.name_any();
        match err {
            None => self.shared.events.event(
                COMPONENT,
                self.set,
                EventType::Normal,
                "SuccessfulCreate",
                format!("create Claim {claim} Pod {pod} in StatefulSet {set} success"),
            ),
            Some(e) => self.shared.events.event(
                COMPONENT,
                self.set,
                EventType::Warning,
                "FailedCreate",
                format!(
                    "create Claim {claim} for Pod {pod} in StatefulSet {set} failed error: {e}"
                ),
            ),
        }
    }

    /// Upstream's `updateStatefulSet`: returns the pod counts, or the counts so far and the
    /// error that stopped it.
    async fn update(
        &self,
        pods: &[Pod],
        current_rev: &ControllerRevision,
        update_rev: &ControllerRevision,
        deleting: bool,
    ) -> Result<Counts, (Counts, ReconcileError)> {
        let spec = self.spec;
        let min_ready = spec.min_ready_seconds.unwrap_or(0);
        let current_name = current_rev.metadata.name.clone().unwrap_or_default();
        let update_name = update_rev.metadata.name.clone().unwrap_or_default();
        if deleting {
            return Ok(count(pods.iter(), min_ready, &current_name, &update_name));
        }
        let current_template =
            history::template_of(current_rev).unwrap_or_else(|| spec.template.clone());
        let update_template =
            history::template_of(update_rev).unwrap_or_else(|| spec.template.clone());

        // Members in range by ordinal (missing ones made at the right revision), and the
        // condemned (out of range), highest ordinal first.
        let start = start_ordinal(spec);
        let replica_count = replicas_of(spec);
        let mut replicas: Vec<Option<Pod>> =
            vec![None; usize::try_from(replica_count).unwrap_or(0)];
        let mut condemned: Vec<Pod> = Vec::new();
        for p in pods {
            let ord = ordinal_of(p);
            if in_range(ord, spec) {
                if let Some(slot) = usize::try_from(ord - start)
                    .ok()
                    .and_then(|i| replicas.get_mut(i))
                {
                    *slot = Some(p.clone());
                }
            } else if ord >= 0 {
                condemned.push(p.clone());
            }
        }
        let partition = rolling_partition(spec);
        let replicas: Vec<Pod> = replicas
            .into_iter()
            .enumerate()
            .map(|(i, p)| {
                p.unwrap_or_else(|| {
                    let ord = start + i32::try_from(i).unwrap_or(0);
                    // Below the partition (or, without a rollingUpdate block, below the
                    // current replica count) a new pod gets the current revision.
                    let at_current = match strategy_type(spec) {
                        "RollingUpdate" => match partition {
                            Some(p) => ord < start + p,
                            None => {
                                ord < start
                                    + self
                                        .set
                                        .status
                                        .as_ref()
                                        .and_then(|s| s.current_replicas)
                                        .unwrap_or(0)
                            }
                        },
                        _ => false,
                    };
                    if at_current {
                        new_pod(self.set, &current_template, ord, &current_name)
                    } else {
                        new_pod(self.set, &update_template, ord, &update_name)
                    }
                })
            })
            .collect();
        condemned.sort_by_key(|p| std::cmp::Reverse(ordinal_of(p)));
        let counts = count(
            replicas.iter().chain(condemned.iter()),
            min_ready,
            &current_name,
            &update_name,
        );
        let first_unhealthy: Option<String> = replicas
            .iter()
            .find(|p| !healthy(p))
            .or_else(|| condemned.iter().rev().find(|p| !healthy(p)))
            .map(|p| p.name_any());
        let monotonic = spec.pod_management_policy.as_deref() != Some("Parallel");

        // Replicas first: create, recreate failed ones, wait for predecessors (OrderedReady).
        if monotonic {
            for p in &replicas {
                match self.process_replica(p, true).await {
                    Ok(Step::Continue) => {}
                    Ok(Step::Exit) => return Ok(counts),
                    Err(e) => return Err((counts, e)),
                }
            }
        } else {
            let mut i = 0;
            let mut batch = 1;
            while i < replicas.len() {
                let end = (i + batch).min(replicas.len());
                let results = join_all(
                    replicas[i..end]
                        .iter()
                        .map(|p| self.process_replica(p, false)),
                )
                .await;
                if let Some(Err(e)) = results.into_iter().find(Result::is_err) {
                    return Err((counts, e));
                }
                i = end;
                batch = (batch * 2).min(MAX_BATCH);
            }
        }

        // Claims of condemned pods follow the retention policy before the pods go.
        for p in &condemned {
            if let Err(e) = self.fix_claims(p).await {
                return Err((counts, e));
            }
        }

        // Scale down: highest ordinal first; one at a time, and only when every other pod
        // is healthy (or the pod is the first unhealthy one), in OrderedReady.
        for p in &condemned {
            if terminating(p) {
                if monotonic {
                    return Ok(counts);
                }
                continue;
            }
            let is_first_unhealthy = first_unhealthy.as_deref() == Some(p.name_any().as_str());
            if monotonic
                && !is_first_unhealthy
                && (!running_and_ready(p) || !running_and_available(p, min_ready))
            {
                return Ok(counts);
            }
            tracing::info!(pod = %p.name_any(), "deleting pod for scale down");
            if let Err(e) = self.delete_pod(p).await {
                return Err((counts, e));
            }
            if monotonic {
                return Ok(counts);
            }
        }

        if strategy_type(spec) == "OnDelete" {
            return Ok(counts);
        }

        // Rolling update: from the highest ordinal down to the partition, at most
        // maxUnavailable pods unhealthy at a time.
        let max_unavailable = max_unavailable(spec);
        let unavailable = replicas.iter().filter(|p| !healthy(p)).count();
        if unavailable >= max_unavailable {
            return Ok(counts);
        }
        let mut budget = max_unavailable - unavailable;
        let update_min = usize::try_from(partition.unwrap_or(0).max(0)).unwrap_or(0);
        let mut counts = counts;
        for (idx, p) in replicas.iter().enumerate().rev() {
            if idx < update_min || budget == 0 {
                break;
            }
            if revision_of(p) != update_name && !terminating(p) {
                tracing::info!(pod = %p.name_any(), revision = %update_name, "deleting pod for update");
                if let Err(e) = self.delete_pod(p).await {
                    return Err((counts, e));
                }
                budget -= 1;
                counts.current -= 1;
            }
        }
        Ok(counts)
    }

    /// Upstream's `processReplica`.
    async fn process_replica(&self, pod: &Pod, monotonic: bool) -> Result<Step, ReconcileError> {
        let min_ready = self.spec.min_ready_seconds.unwrap_or(0);
        let phase = util::pod_phase(pod);
        if phase == "Failed" || phase == "Succeeded" {
            // A finished member is deleted; the next sync makes it again.
            if !terminating(pod) {
                tracing::info!(pod = %pod.name_any(), phase, "recreating terminated pod");
                let (type_, reason, what) = if phase == "Failed" {
                    (EventType::Warning, "RecreatingFailedPod", "failed")
                } else {
                    (EventType::Normal, "RecreatingTerminatedPod", "terminated")
                };
                self.shared.events.event(
                    COMPONENT,
                    self.set,
                    type_,
                    reason,
                    format!(
                        "StatefulSet {}/{} is recreating {what} Pod {}",
                        self.set.namespace().unwrap_or_default(),
                        self.set.name_any(),
                        pod.name_any()
                    ),
                );
                self.delete_pod(pod).await?;
            }
            return Ok(Step::Exit);
        }
        if !created(pod) {
            if self.claim_is_stale(pod).await? {
                self.stale_claim.store(true, Ordering::Relaxed);
                return Ok(Step::Exit);
            }
            self.create_pod(pod).await?;
            return Ok(if monotonic {
                Step::Exit
            } else {
                Step::Continue
            });
        }
        if phase == "Pending" {
            self.create_claims(ordinal_of(pod)).await?;
        }
        if monotonic
            && (terminating(pod)
                || !running_and_ready(pod)
                || !running_and_available(pod, min_ready))
        {
            return Ok(Step::Exit);
        }
        let retention_ok = self.claims_match_policy(pod).await.unwrap_or(true);
        if identity_matches(self.set, pod) && storage_matches(self.set, pod) && retention_ok {
            return Ok(Step::Continue);
        }
        self.repair_pod(pod).await?;
        Ok(Step::Continue)
    }

    /// Claims first, then the pod; then the claims' owners for the retention policy.
    async fn create_pod(&self, pod: &Pod) -> Result<(), ReconcileError> {
        let ordinal = ordinal_of(pod);
        if let Err(e) = self.create_claims(ordinal).await {
            self.pod_event("create", &pod.name_any(), Some(&e.to_string()));
            return Err(e);
        }
        let created = match self.pods.create(&PostParams::default(), pod).await {
            Ok(p) => p,
            Err(kube::Error::Api(s)) if s.code == 409 => return Ok(()),
            Err(e) => {
                self.pod_event("create", &pod.name_any(), Some(&api_error_text(&e)));
                return Err(e.into());
            }
        };
        self.pod_event("create", &created.name_any(), None);
        tracing::info!(pod = %created.name_any(), revision = revision_of(&created), "created pod");
        self.update_claims_for_policy(&created).await
    }

    /// Creates the missing claims of the pod with `ordinal`; a claim being deleted is an error
    /// (the pod must wait for it to go).
    async fn create_claims(&self, ordinal: i32) -> Result<(), ReconcileError> {
        let mut errors = Vec::new();
        let pod = pod_name(&self.set.name_any(), ordinal);
        for (_, claim) in claims_for(self.set, ordinal) {
            let cname = claim.metadata.name.clone().unwrap_or_default();
            match self.claims.get_opt(&cname).await? {
                None => match self.claims.create(&PostParams::default(), &claim).await {
                    Ok(_) => {
                        tracing::info!(claim = %cname, "created PersistentVolumeClaim");
                        self.claim_event(&cname, &pod, None);
                    }
                    Err(kube::Error::Api(s)) if s.code == 409 => {}
                    Err(e) => {
                        let text = api_error_text(&e);
                        self.claim_event(&cname, &pod, Some(&text));
                        errors.push(format!("failed to create PVC {cname}: {text}"));
                    }
                },
                Some(c) if c.metadata.deletion_timestamp.is_some() => {
                    errors.push(format!("pvc {cname} is being deleted"));
                }
                Some(_) => {}
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ReconcileError::Invalid(errors.join("; ")))
        }
    }

    /// With whenScaled=Delete, a claim that still names an earlier pod of the same name as
    /// its owner must be collected before the new pod is made (upstream's `PodClaimIsStale`).
    async fn claim_is_stale(&self, pod: &Pod) -> Result<bool, ReconcileError> {
        if !retention(self.spec).1 {
            return Ok(false);
        }
        for (_, claim) in claims_for(self.set, ordinal_of(pod)) {
            let cname = claim.metadata.name.clone().unwrap_or_default();
            if let Some(c) = self.claims.get_opt(&cname).await?
                && stale_ref(&c, &pod_ref_kind(), &pod.name_any(), pod.uid().as_deref())
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    async fn claims_match_policy(&self, pod: &Pod) -> Result<bool, ReconcileError> {
        for (_, claim) in claims_for(self.set, ordinal_of(pod)) {
            let cname = claim.metadata.name.clone().unwrap_or_default();
            if let Some(c) = self.claims.get_opt(&cname).await?
                && !claim_owner_up_to_date(&c, self.set, pod)
            {
                return Ok(false);
            }
        }
        Ok(true)
    }

    async fn update_claims_for_policy(&self, pod: &Pod) -> Result<(), ReconcileError> {
        for (_, claim) in claims_for(self.set, ordinal_of(pod)) {
            let cname = claim.metadata.name.clone().unwrap_or_default();
            let Some(c) = self.claims.get_opt(&cname).await? else {
                continue;
            };
            if claim_owner_up_to_date(&c, self.set, pod) {
                continue;
            }
            let refs = claim_owner_refs(&c, self.set, pod);
            let patch = json!({"metadata": {
                "ownerReferences": if refs.is_empty() { Value::Null } else { json!(refs) },
                "resourceVersion": c.metadata.resource_version,
            }});
            self.claims
                .patch(&cname, &PatchParams::default(), &Patch::Merge(patch))
                .await?;
            tracing::info!(claim = %cname, "owner references follow the retention policy");
        }
        Ok(())
    }

    async fn fix_claims(&self, pod: &Pod) -> Result<(), ReconcileError> {
        if !self.claims_match_policy(pod).await? {
            self.update_claims_for_policy(pod).await?;
        }
        Ok(())
    }

    /// Restores a member's identity labels, its missing claims and their owners. A pod's
    /// volumes cannot change after creation, so a pod whose volumes do not name its claims
    /// is left as it is (upstream's update of it would be refused too).
    async fn repair_pod(&self, pod: &Pod) -> Result<(), ReconcileError> {
        let name = pod.name_any();
        if !identity_matches(self.set, pod) {
            let ordinal = ordinal_of(pod);
            let patch = json!({"metadata": {
                "labels": {POD_NAME_LABEL: name, POD_INDEX_LABEL: ordinal.to_string()},
                "resourceVersion": pod.metadata.resource_version,
            }});
            match self
                .pods
                .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
                .await
            {
                Ok(_) => self.pod_event("update", &name, None),
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => {
                    self.pod_event("update", &name, Some(&api_error_text(&e)));
                    return Err(e.into());
                }
            }
        }
        if !storage_matches(self.set, pod) {
            self.create_claims(ordinal_of(pod)).await?;
        }
        self.update_claims_for_policy(pod).await
    }

    async fn delete_pod(&self, pod: &Pod) -> Result<(), ReconcileError> {
        let name = pod.name_any();
        match self.pods.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {
                self.pod_event("delete", &name, None);
                Ok(())
            }
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => {
                self.pod_event("delete", &name, Some(&api_error_text(&e)));
                Err(e.into())
            }
        }
    }
}

/// `create` → `Create`, as Go's `strings.Title` for one word.
fn title_case(word: &str) -> String {
    let mut chars = word.chars();
    match chars.next() {
        Some(c) => c.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

fn rolling_partition(spec: &StatefulSetSpec) -> Option<i32> {
    spec.update_strategy
        .as_ref()
        .and_then(|s| s.rolling_update.as_ref())
        .map(|r| r.partition.unwrap_or(0))
}

/// `rollingUpdate.maxUnavailable` for the set's replica count: default 1, percentages
/// rounded down, never below 1 (upstream's `getStatefulSetMaxUnavailable`).
fn max_unavailable(spec: &StatefulSetSpec) -> usize {
    let v = spec
        .update_strategy
        .as_ref()
        .and_then(|s| s.rolling_update.as_ref())
        .and_then(|r| r.max_unavailable.as_ref());
    let n = crate::deployment::scaled(v, "1", replicas_of(spec), false);
    usize::try_from(n.max(1)).unwrap_or(1)
}

fn pod_ref_kind() -> (String, String) {
    ("v1".into(), "Pod".into())
}

fn set_ref_kind() -> (String, String) {
    ("apps/v1".into(), "StatefulSet".into())
}

fn matches_ref(r: &OwnerReference, kind: &(String, String), name: &str) -> bool {
    r.api_version == kind.0 && r.kind == kind.1 && r.name == name
}

/// The claim's first reference to `(kind, name)` has another uid than `uid`.
fn stale_ref(
    claim: &PersistentVolumeClaim,
    kind: &(String, String),
    name: &str,
    uid: Option<&str>,
) -> bool {
    claim
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|r| matches_ref(r, kind, name))
        .is_some_and(|r| Some(r.uid.as_str()) != uid)
}

fn has_ref(claim: &PersistentVolumeClaim, uid: Option<&str>) -> bool {
    uid.is_some_and(|u| {
        claim
            .metadata
            .owner_references
            .iter()
            .flatten()
            .any(|r| r.uid == u)
    })
}

/// Another controller owns the claim (only matters when something is to be deleted).
fn unexpected_controller(claim: &PersistentVolumeClaim, set: &StatefulSet, pod: &Pod) -> bool {
    let Some(spec) = set.spec.as_ref() else {
        return false;
    };
    let (when_deleted, when_scaled) = retention(spec);
    if !when_deleted && !when_scaled {
        return false;
    }
    let set_uid = set.uid().unwrap_or_default();
    let pod_uid = pod.uid().unwrap_or_default();
    for r in claim.metadata.owner_references.iter().flatten() {
        if matches_ref(r, &set_ref_kind(), &set.name_any()) {
            if r.uid != set_uid {
                return true;
            }
            continue;
        }
        if matches_ref(r, &pod_ref_kind(), &pod.name_any()) {
            if r.uid != pod_uid {
                return true;
            }
            continue;
        }
        if r.controller == Some(true) {
            return true;
        }
    }
    false
}

/// Upstream's `isClaimOwnerUpToDate`: the claim's references to the set and the pod are what
/// the retention policy asks for — none (Retain/Retain); the set (whenDeleted=Delete); the
/// pod once scaled away (whenScaled=Delete) — both as controller references.
fn claim_owner_up_to_date(claim: &PersistentVolumeClaim, set: &StatefulSet, pod: &Pod) -> bool {
    let Some(spec) = set.spec.as_ref() else {
        return true;
    };
    let set_uid = set.uid();
    let pod_uid = pod.uid();
    if stale_ref(claim, &set_ref_kind(), &set.name_any(), set_uid.as_deref())
        || stale_ref(claim, &pod_ref_kind(), &pod.name_any(), pod_uid.as_deref())
    {
        return true;
    }
    if unexpected_controller(claim, set, pod) {
        return !(has_ref(claim, set_uid.as_deref()) || has_ref(claim, pod_uid.as_deref()));
    }
    let non_controller = claim.metadata.owner_references.iter().flatten().any(|r| {
        (Some(r.uid.as_str()) == set_uid.as_deref() || Some(r.uid.as_str()) == pod_uid.as_deref())
            && r.controller != Some(true)
    });
    if non_controller {
        return false;
    }
    let scaled_down = !in_range(ordinal_of(pod), spec);
    let has_set = has_ref(claim, set_uid.as_deref());
    let has_pod = has_ref(claim, pod_uid.as_deref());
    match retention(spec) {
        (false, false) => !has_set && !has_pod,
        (true, false) => has_set && !has_pod,
        (false, true) => !has_set && scaled_down == has_pod,
        (true, true) => scaled_down != has_set && scaled_down == has_pod,
    }
}

/// Upstream's `updateClaimOwnerRefForSetAndPod`: the claim's references with those to the
/// set and the pod replaced by what the policy asks for.
fn claim_owner_refs(
    claim: &PersistentVolumeClaim,
    set: &StatefulSet,
    pod: &Pod,
) -> Vec<OwnerReference> {
    let unexpected = unexpected_controller(claim, set, pod);
    let mut refs: Vec<OwnerReference> = claim
        .metadata
        .owner_references
        .iter()
        .flatten()
        .filter(|r| {
            !matches_ref(r, &set_ref_kind(), &set.name_any())
                && !matches_ref(r, &pod_ref_kind(), &pod.name_any())
        })
        .cloned()
        .collect();
    if unexpected {
        return refs;
    }
    let Some(spec) = set.spec.as_ref() else {
        return refs;
    };
    let scaled_down = !in_range(ordinal_of(pod), spec);
    let (when_deleted, when_scaled) = retention(spec);
    let want_set = when_deleted && !(when_scaled && scaled_down);
    let want_pod = when_scaled && scaled_down && pod.uid().is_some();
    if want_set {
        refs.push(util::controller_ref(set));
    }
    if want_pod {
        refs.push(util::controller_ref(pod));
    }
    refs
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn set(policy: Value) -> StatefulSet {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "ns", "uid": "set-uid"},
            "spec": {
                "replicas": 2,
                "ordinals": {"start": 3},
                "serviceName": "web",
                "selector": {"matchLabels": {"app": "web"}},
                "persistentVolumeClaimRetentionPolicy": policy,
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "c", "image": "i"}],
                             "volumes": [{"name": "data", "emptyDir": {}}, {"name": "other", "emptyDir": {}}]}
                },
                "volumeClaimTemplates": [{"metadata": {"name": "data", "labels": {"x": "y"}},
                                          "spec": {"accessModes": ["ReadWriteOnce"]}}]
            }
        }))
        .unwrap()
    }

    #[test]
    fn names_and_ordinals() {
        assert_eq!(parent_and_ordinal("web-12"), ("web", 12));
        assert_eq!(parent_and_ordinal("my-web-0"), ("my-web", 0));
        assert_eq!(parent_and_ordinal("web-x"), ("", -1));
        assert_eq!(parent_and_ordinal("web"), ("", -1));
        assert_eq!(parent_and_ordinal("web-"), ("", -1));
    }

    #[test]
    fn new_pods_have_identity_storage_and_revision() {
        let s = set(json!({}));
        let spec = s.spec.as_ref().unwrap();
        assert!(in_range(3, spec) && in_range(4, spec) && !in_range(5, spec) && !in_range(2, spec));
        let pod = new_pod(&s, &spec.template, 4, "web-abc");
        assert_eq!(pod.metadata.name.as_deref(), Some("web-4"));
        let labels = pod.metadata.labels.clone().unwrap();
        assert_eq!(labels[POD_NAME_LABEL], "web-4");
        assert_eq!(labels[POD_INDEX_LABEL], "4");
        assert_eq!(labels[REVISION_LABEL], "web-abc");
        assert_eq!(labels["app"], "web");
        let pspec = pod.spec.clone().unwrap();
        assert_eq!(pspec.hostname.as_deref(), Some("web-4"));
        assert_eq!(pspec.subdomain.as_deref(), Some("web"));
        let vols = pspec.volumes.unwrap();
        assert_eq!(
            vols.len(),
            2,
            "the claim replaces the template's volume of its name"
        );
        assert_eq!(
            vols[0].persistent_volume_claim.as_ref().unwrap().claim_name,
            "data-web-4"
        );
        assert!(identity_matches(&s, &pod) && storage_matches(&s, &pod));
        let claims = claims_for(&s, 4);
        let labels = claims[0].1.metadata.labels.clone().unwrap();
        assert_eq!((labels["x"].as_str(), labels["app"].as_str()), ("y", "web"));
    }

    fn pvc(refs: Value) -> PersistentVolumeClaim {
        serde_json::from_value(json!({"metadata": {"name": "data-web-3", "ownerReferences": refs}}))
            .unwrap()
    }

    fn pod(name: &str, uid: &str) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": name, "uid": uid}})).unwrap()
    }

    #[test]
    fn claim_owners_follow_the_retention_policy() {
        let live = pod("web-3", "pod-uid");
        let gone = pod("web-9", "pod9-uid");
        // Retain/Retain: no references.
        let s = set(json!({"whenDeleted": "Retain", "whenScaled": "Retain"}));
        assert!(claim_owner_up_to_date(&pvc(json!([])), &s, &live));
        // whenDeleted=Delete: a controller reference to the set.
        let s = set(json!({"whenDeleted": "Delete", "whenScaled": "Retain"}));
        let c = pvc(json!([]));
        assert!(!claim_owner_up_to_date(&c, &s, &live));
        let refs = claim_owner_refs(&c, &s, &live);
        assert_eq!(refs.len(), 1);
        assert_eq!(
            (refs[0].kind.as_str(), refs[0].controller),
            ("StatefulSet", Some(true))
        );
        // whenScaled=Delete: the pod once scaled away, and not the set.
        let s = set(json!({"whenDeleted": "Delete", "whenScaled": "Delete"}));
        let c = pvc(
            json!([{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "web",
                             "uid": "set-uid", "controller": true}]),
        );
        assert!(claim_owner_up_to_date(&c, &s, &live));
        assert!(!claim_owner_up_to_date(&c, &s, &gone));
        let refs = claim_owner_refs(&c, &s, &gone);
        assert_eq!(refs.len(), 1);
        assert_eq!(
            (refs[0].kind.as_str(), refs[0].uid.as_str()),
            ("Pod", "pod9-uid")
        );
        // A reference to an earlier pod of the same name is stale.
        let c = pvc(json!([{"apiVersion": "v1", "kind": "Pod", "name": "web-3", "uid": "old"}]));
        assert!(stale_ref(&c, &pod_ref_kind(), "web-3", None));
        assert!(!stale_ref(&c, &pod_ref_kind(), "web-3", Some("old")));
    }

    #[test]
    fn max_unavailable_defaults_to_one_and_rounds_down() {
        let mut s = set(json!({}));
        let spec = s.spec.as_mut().unwrap();
        assert_eq!(max_unavailable(spec), 1);
        spec.replicas = Some(10);
        spec.update_strategy = Some(
            serde_json::from_value(json!({"type": "RollingUpdate",
            "rollingUpdate": {"maxUnavailable": "25%"}}))
            .unwrap(),
        );
        assert_eq!(max_unavailable(spec), 2);
        spec.update_strategy = Some(
            serde_json::from_value(json!({"type": "RollingUpdate",
            "rollingUpdate": {"maxUnavailable": "1%"}}))
            .unwrap(),
        );
        assert_eq!(max_unavailable(spec), 1);
    }
}
