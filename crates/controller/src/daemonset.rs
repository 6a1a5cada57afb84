//! The DaemonSet controller (upstream's `pkg/controller/daemon`): one pod per eligible node —
//! the node passes the template's nodeSelector and required node affinity, and every taint
//! with effect NoSchedule or NoExecute is tolerated, counting the tolerations every daemon pod
//! gets — created with a required node affinity `metadata.name In [<node>]` so that the
//! scheduler binds it there; pods leave nodes that stop matching or get an untolerated
//! NoExecute taint (pods bound to a node that is gone are PodGC's, as upstream; unscheduled
//! ones for such a node are deleted here); rolling updates within maxUnavailable/maxSurge, or OnDelete;
//! revisions kept as ControllerRevisions with the `controller-revision-hash` and
//! `pod-template-generation` pod labels; the status `kubectl rollout status` reads.
//!
//! Every sync lists the namespace's pods and ControllerRevisions from the apiserver
//! (consistent reads); nodes come from a watch cache whose scheduling-relevant changes
//! (labels, taints) trigger a sync of every DaemonSet.
//!
//! Events (component `daemonset-controller`, upstream's texts): `SuccessfulCreate` `Created
//! pod: <pod>` / `FailedCreate`, `SuccessfulDelete` `Deleted pod: <pod>` / `FailedDelete`,
//! `FailedDaemonPod` (Warning) / `SucceededDaemonPod` `Found failed|succeeded daemon pod
//! <ns>/<pod> on node <node>, will try to kill|delete it`, `SelectingAll` for an empty selector.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use futures::future::join_all;
use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet, DaemonSetSpec};
use k8s_openapi::api::core::v1::{
    Affinity, Node, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod,
    PodSpec, Taint, Toleration,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Resource, ResourceExt as _};
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::ReconcileError;
use crate::events::EventType;
use crate::history;
use crate::replicaset::api_error_text;
use crate::util::{self, Backoff, Shared};

/// Pod label with the hash of the revision the pod was made from (upstream's
/// `DefaultDaemonSetUniqueLabelKey`); also the revisions' hash label.
pub(crate) const HASH_LABEL: &str = "controller-revision-hash";
/// Pod label with the DaemonSet's template generation.
pub(crate) const GENERATION_LABEL: &str = "pod-template-generation";
/// Where upstream's apiserver keeps the template generation of an apps/v1 DaemonSet.
const GENERATION_ANNOTATION: &str = "deprecated.daemonset.template.generation";
/// The component name of this controller's events (upstream's `daemonset-controller`).
const COMPONENT: &str = "daemonset-controller";
/// Upstream's `BurstReplicas` for DaemonSets: creations per sync at most.
const BURST: usize = 250;
/// Backoff for deleting failed daemon pods on one node: 1 s doubling to 15 min.
const FAILED_BACKOFF_INITIAL: Duration = Duration::from_secs(1);
const FAILED_BACKOFF_MAX: Duration = Duration::from_secs(15 * 60);

struct Ctx {
    shared: Arc<Shared>,
    backoff: Backoff,
    nodes: Store<Node>,
    /// Per `<ds uid>/<node>`: when a failed pod was last deleted there, and the delay.
    failed: Mutex<HashMap<String, (Instant, Duration)>>,
}

pub(crate) async fn run(shared: Arc<Shared>, stop: watch::Receiver<bool>) {
    let client = shared.client.clone();
    let (nodes, writer) = reflector::store::<Node>();
    // Node events that can change where daemon pods belong: a new or deleted node, or new
    // labels or taints (heartbeats and other status writes do not trigger anything).
    let seen: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    let node_events = reflector::reflector(
        writer,
        watcher(Api::<Node>::all(client.clone()), watcher::Config::default()),
    )
    .default_backoff()
    .filter_map(move |ev| {
        let seen = seen.clone();
        async move {
            let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
            match ev {
                Ok(watcher::Event::Apply(n) | watcher::Event::InitApply(n)) => {
                    let fp = node_fingerprint(&n);
                    let prev = seen.insert(n.name_any(), fp.clone());
                    (prev.as_ref() != Some(&fp)).then_some(Ok(n))
                }
                Ok(watcher::Event::Delete(n)) => {
                    seen.remove(&n.name_any());
                    Some(Ok(n))
                }
                Ok(_) => None,
                Err(e) => Some(Err(e)),
            }
        }
    });
    let controller = Controller::new(
        Api::<DaemonSet>::all(client.clone()),
        watcher::Config::default(),
    )
    .with_config(kube::runtime::controller::Config::default().concurrency(shared.concurrency));
    let sets = controller.store();
    let sets2 = sets.clone();
    let controller = controller
        .watches_stream(node_events, move |_node: Node| {
            sets.state()
                .iter()
                .map(|d| ObjectRef::from_obj(d.as_ref()))
                .collect::<Vec<_>>()
        })
        .watches(
            Api::<Pod>::all(client),
            watcher::Config::default(),
            move |pod: Pod| {
                let ns = pod.namespace().unwrap_or_default();
                match util::controller_of(&pod.metadata) {
                    Some(r) if r.kind == "DaemonSet" => {
                        vec![ObjectRef::<DaemonSet>::new(&r.name).within(&ns)]
                    }
                    Some(_) => Vec::new(),
                    None => sets2
                        .state()
                        .iter()
                        .filter(|d| d.namespace().as_deref() == Some(ns.as_str()))
                        .filter(|d| {
                            d.spec.as_ref().is_some_and(|s| {
                                util::selects(&s.selector, pod.metadata.labels.as_ref())
                                    .unwrap_or(false)
                            })
                        })
                        .map(|d| ObjectRef::from_obj(d.as_ref()))
                        .collect(),
                }
            },
        )
        .graceful_shutdown_on(crate::stopped(stop.clone()));
    let abandon = util::abandon_unsynced(controller.store(), stop);
    let ctx = Arc::new(Ctx {
        shared,
        backoff: Backoff::default(),
        nodes,
        failed: Mutex::default(),
    });
    util::drain(
        "daemonset",
        abandon,
        controller.run(
            |ds, ctx| async move {
                let key = util::key_of(ds.meta());
                // Never wait for the node cache inside a reconcile: its stream is polled by
                // this same controller.
                if !matches!(
                    futures::FutureExt::now_or_never(ctx.nodes.wait_until_ready()),
                    Some(Ok(()))
                ) {
                    return Ok(Action::requeue(Duration::from_millis(200)));
                }
                let r = sync(&ds, &ctx).await;
                if r.is_ok() {
                    ctx.backoff.success(&key);
                }
                r
            },
            |ds, _e, ctx| util::error_action(&ctx.backoff, &util::key_of(ds.meta())),
            ctx,
        ),
    )
    .await;
}

/// What of a node decides where daemon pods go.
fn node_fingerprint(n: &Node) -> String {
    json!([
        n.metadata.uid,
        n.metadata.labels,
        n.spec.as_ref().and_then(|s| s.taints.as_ref())
    ])
    .to_string()
}

/// The tolerations every daemon pod gets (upstream's `AddOrUpdateDaemonPodTolerations`), so
/// that node problems do not evict it and do not keep it off a node.
fn add_daemon_tolerations(spec: &mut PodSpec) {
    let mut wanted = vec![
        ("node.kubernetes.io/not-ready", "NoExecute"),
        ("node.kubernetes.io/unreachable", "NoExecute"),
        ("node.kubernetes.io/disk-pressure", "NoSchedule"),
        ("node.kubernetes.io/memory-pressure", "NoSchedule"),
        ("node.kubernetes.io/pid-pressure", "NoSchedule"),
        ("node.kubernetes.io/unschedulable", "NoSchedule"),
    ];
    if spec.host_network == Some(true) {
        wanted.push(("node.kubernetes.io/network-unavailable", "NoSchedule"));
    }
    let tolerations = spec.tolerations.get_or_insert_with(Vec::new);
    for (key, effect) in wanted {
        let t = Toleration {
            key: Some(key.into()),
            operator: Some("Exists".into()),
            effect: Some(effect.into()),
            ..Toleration::default()
        };
        // The same key, operator, value and effect is replaced (tolerationSeconds dropped).
        match tolerations.iter_mut().find(|o| {
            o.key == t.key && o.operator == t.operator && o.value == t.value && o.effect == t.effect
        }) {
            Some(o) => *o = t,
            None => tolerations.push(t),
        }
    }
}

fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    if t.effect
        .as_deref()
        .is_some_and(|e| !e.is_empty() && e != taint.effect)
    {
        return false;
    }
    if t.key
        .as_deref()
        .is_some_and(|k| !k.is_empty() && k != taint.key)
    {
        return false;
    }
    match t.operator.as_deref().unwrap_or("Equal") {
        "Exists" => true,
        "Equal" | "" => t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or(""),
        _ => false,
    }
}

/// Whether some taint with an effect in `effects` is not tolerated.
fn untolerated(taints: &[Taint], tolerations: &[Toleration], effects: &[&str]) -> bool {
    taints
        .iter()
        .filter(|t| effects.contains(&t.effect.as_str()))
        .any(|taint| !tolerations.iter().any(|t| tolerates(t, taint)))
}

fn requirement_matches(r: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = r.values.as_deref().unwrap_or(&[]);
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => value.is_none_or(|v| !values.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(v), [bound]) = (value.and_then(|v| v.parse::<i64>().ok()), values) else {
                return false;
            };
            let Ok(bound) = bound.parse::<i64>() else {
                return false;
            };
            if r.operator == "Gt" {
                v > bound
            } else {
                v < bound
            }
        }
        _ => false,
    }
}

fn term_matches(term: &NodeSelectorTerm, node: &Node) -> bool {
    let exprs = term.match_expressions.as_deref().unwrap_or(&[]);
    let fields = term.match_fields.as_deref().unwrap_or(&[]);
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    let labels = node.metadata.labels.clone().unwrap_or_default();
    exprs
        .iter()
        .all(|e| requirement_matches(e, labels.get(&e.key).map(String::as_str)))
        && fields.iter().all(|f| {
            f.key == "metadata.name" && requirement_matches(f, node.metadata.name.as_deref())
        })
}

/// nodeSelector and required node affinity (upstream's `GetRequiredNodeAffinity().Match`).
fn affinity_matches(spec: &PodSpec, node: &Node) -> bool {
    let labels = node.metadata.labels.clone().unwrap_or_default();
    if let Some(sel) = &spec.node_selector
        && !sel.iter().all(|(k, v)| labels.get(k) == Some(v))
    {
        return false;
    }
    match spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|n| {
            n.required_during_scheduling_ignored_during_execution
                .as_ref()
        }) {
        Some(required) => required
            .node_selector_terms
            .iter()
            .any(|t| term_matches(t, node)),
        None => true,
    }
}

/// (should run, should continue running) — upstream's `NodeShouldRunDaemonPod`.
fn should_run(ds: &DaemonSet, node: &Node) -> (bool, bool) {
    let Some(template) = ds.spec.as_ref().and_then(|s| s.template.spec.as_ref()) else {
        return (false, false);
    };
    let node_name = node.name_any();
    if template
        .node_name
        .as_deref()
        .is_some_and(|n| !n.is_empty() && n != node_name)
    {
        return (false, false);
    }
    let mut spec = template.clone();
    add_daemon_tolerations(&mut spec);
    if !affinity_matches(&spec, node) {
        return (false, false);
    }
    let taints = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or(&[]);
    let tolerations = spec.tolerations.as_deref().unwrap_or(&[]);
    if untolerated(taints, tolerations, &["NoSchedule", "NoExecute"]) {
        return (false, !untolerated(taints, tolerations, &["NoExecute"]));
    }
    (true, true)
}

/// The node a daemon pod is for: its nodeName, or the `metadata.name In [node]` of its
/// required node affinity (upstream's `GetTargetNodeName`).
fn target_node(pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    if let Some(n) = spec.node_name.as_ref().filter(|n| !n.is_empty()) {
        return Some(n.clone());
    }
    let required = spec
        .affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?;
    required.node_selector_terms.iter().find_map(|t| {
        t.match_fields.iter().flatten().find_map(|f| {
            (f.key == "metadata.name" && f.operator == "In")
                .then_some(f.values.as_deref())
                .flatten()
                .and_then(|v| match v {
                    [one] => Some(one.clone()),
                    _ => None,
                })
        })
    })
}

/// The pod's required node affinity becomes exactly `metadata.name In [node]` (upstream's
/// `ReplaceDaemonSetPodNodeNameNodeAffinity`); preferred terms and pod affinities stay.
fn pin_to_node(spec: &mut PodSpec, node: &str) {
    let term = NodeSelectorTerm {
        match_fields: Some(vec![NodeSelectorRequirement {
            key: "metadata.name".into(),
            operator: "In".into(),
            values: Some(vec![node.into()]),
        }]),
        match_expressions: None,
    };
    let affinity = spec.affinity.get_or_insert_with(Affinity::default);
    let na = affinity
        .node_affinity
        .get_or_insert_with(NodeAffinity::default);
    na.required_during_scheduling_ignored_during_execution = Some(NodeSelector {
        node_selector_terms: vec![term],
    });
}

fn template_generation(ds: &DaemonSet) -> Option<String> {
    ds.annotations()
        .get(GENERATION_ANNOTATION)
        .cloned()
        .or_else(|| ds.metadata.generation.map(|g| g.to_string()))
}

/// Made from the current revision: its hash, or its template generation.
fn pod_updated(pod: &Pod, hash: &str, generation: Option<&str>) -> bool {
    let labels = pod.labels();
    (!hash.is_empty() && labels.get(HASH_LABEL).map(String::as_str) == Some(hash))
        || generation.is_some_and(|g| labels.get(GENERATION_LABEL).map(String::as_str) == Some(g))
}

/// Scheduled first, then older first, then by name (upstream's
/// `podByCreationTimestampAndPhase`).
fn sort_pods(pods: &mut [&Pod]) {
    pods.sort_by(|a, b| {
        let key = |p: &Pod| {
            (
                p.spec
                    .as_ref()
                    .and_then(|s| s.node_name.as_ref())
                    .is_none_or(String::is_empty),
                p.metadata.creation_timestamp.as_ref().map(|t| t.0),
                p.name_any(),
            )
        };
        key(a).cmp(&key(b))
    });
}

fn strategy_type(spec: &DaemonSetSpec) -> &str {
    spec.update_strategy
        .as_ref()
        .and_then(|s| s.type_.as_deref())
        .unwrap_or("RollingUpdate")
}

/// (maxSurge, maxUnavailable) for `desired` nodes, percentages rounded up; both zero becomes
/// maxUnavailable 1 (upstream's `updatedDesiredNodeCounts`).
fn surge_and_unavailable(spec: &DaemonSetSpec, desired: i32) -> (usize, usize) {
    if strategy_type(spec) != "RollingUpdate" {
        return (0, 0);
    }
    let ru = spec
        .update_strategy
        .as_ref()
        .and_then(|s| s.rolling_update.as_ref());
    let surge =
        crate::deployment::scaled(ru.and_then(|r| r.max_surge.as_ref()), "0", desired, true);
    let unavailable = crate::deployment::scaled(
        ru.and_then(|r| r.max_unavailable.as_ref()),
        "1",
        desired,
        true,
    );
    let (surge, unavailable) = (
        usize::try_from(surge.max(0)).unwrap_or(0),
        usize::try_from(unavailable.max(0)).unwrap_or(0),
    );
    if desired > 0 && surge == 0 && unavailable == 0 {
        return (0, 1);
    }
    (surge, unavailable)
}

/// Deletions and creations one sync decided.
#[derive(Default)]
struct Plan {
    delete: Vec<String>,
    create: Vec<String>,
    /// Failed pods wait for their node's backoff: look again after this long.
    retry_after: Option<Duration>,
}

#[tracing::instrument(skip_all, fields(daemonset = %util::key_of(ds.meta())))]
async fn sync(ds: &DaemonSet, ctx: &Ctx) -> Result<Action, ReconcileError> {
    let client = &ctx.shared.client;
    if ds.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let spec = ds
        .spec
        .as_ref()
        .ok_or_else(|| ReconcileError::Invalid("no spec".into()))?;
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
        tracing::warn!("DaemonSet has an empty selector; ignoring it");
        ctx.shared.events.event(
            COMPONENT,
            ds,
            EventType::Warning,
            "SelectingAll",
            "This daemon set is selecting all pods. A non-empty selector is required.".into(),
        );
        return Ok(Action::await_change());
    }
    let ns = ds.namespace().unwrap_or_default();
    let name = ds.name_any();
    let uid = ds.uid().unwrap_or_default();
    let pods_api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let revs_api: Api<ControllerRevision> = Api::namespaced(client.clone(), &ns);
    let mut nodes: Vec<Arc<Node>> = ctx.nodes.state();
    nodes.sort_by_key(|n| n.name_any());

    let can_adopt = Api::<DaemonSet>::namespaced(client.clone(), &ns)
        .get_opt(&name)
        .await?
        .is_some_and(|f| {
            f.uid().as_deref() == Some(uid.as_str()) && f.metadata.deletion_timestamp.is_none()
        });

    // Claim pods.
    let candidates = pods_api.list(&ListParams::default()).await?.items;
    let pods = util::claim_pods(
        &pods_api,
        candidates,
        util::controller_ref(ds),
        can_adopt,
        |pod| util::selects(selector, pod.metadata.labels.as_ref()),
    )
    .await?;

    // History: the revision holding the current template (made if missing), the rest old.
    let (cur, old) = construct_history(ds, spec, &revs_api, &pods_api, &pods, can_adopt).await?;
    let hash = cur
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(HASH_LABEL))
        .cloned()
        .unwrap_or_default();
    let generation = template_generation(ds);

    // Pods by the node they are for.
    let mut by_node: BTreeMap<String, Vec<&Pod>> = BTreeMap::new();
    for p in &pods {
        match target_node(p) {
            Some(n) => by_node.entry(n).or_default().push(p),
            None => tracing::warn!(pod = %p.name_any(), "daemon pod names no node; ignored"),
        }
    }

    let now = util::now();
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let mut plan = Plan::default();
    let surge_allowed = surge_and_unavailable(spec, 1).0 > 0;
    for node in &nodes {
        plan_node(ds, node, &by_node, &hash, surge_allowed, ctx, &mut plan);
    }
    // Unscheduled pods for nodes that no longer exist (upstream's
    // `getUnscheduledPodsWithoutNode`): no scheduler will bind them and PodGC only collects
    // pods bound to a vanished node, so they are deleted here. Bound pods of such nodes are
    // PodGC's.
    for (node, ps) in &by_node {
        if nodes.iter().any(|n| n.name_any() == *node) {
            continue;
        }
        for p in ps {
            if p.spec
                .as_ref()
                .and_then(|s| s.node_name.as_ref())
                .is_none_or(String::is_empty)
            {
                plan.delete.push(p.name_any());
            }
        }
    }
    let changed = !(plan.delete.is_empty() && plan.create.is_empty());
    // A rolling update step only once the basic placement needs nothing (upstream waits for
    // its expectations the same way).
    if !changed && strategy_type(spec) == "RollingUpdate" {
        rolling_update(
            ds,
            spec,
            &nodes,
            &by_node,
            &hash,
            generation.as_deref(),
            &mut plan,
        );
    }
    let result = execute(
        &ctx.shared,
        ds,
        spec,
        &pods_api,
        &plan,
        &hash,
        generation.as_deref(),
    )
    .await;

    // History beyond revisionHistoryLimit, oldest first, except revisions live pods use.
    let limit = usize::try_from(spec.revision_history_limit.unwrap_or(10).max(0)).unwrap_or(0);
    if old.len() > limit {
        let live: Vec<&str> = pods
            .iter()
            .filter_map(|p| p.labels().get(HASH_LABEL).map(String::as_str))
            .collect();
        let mut to_kill = old.len() - limit;
        for r in &old {
            if to_kill == 0 {
                break;
            }
            let h = r
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(HASH_LABEL))
                .map_or("", String::as_str);
            if live.contains(&h) {
                continue;
            }
            history::delete(&revs_api, r).await?;
            to_kill -= 1;
        }
    }

    // Status from the pods as they were at the start of this sync (as upstream's cache).
    let mut st = DsStatus::default();
    for node in &nodes {
        let (run, _) = should_run(ds, node);
        let mut on_node: Vec<&Pod> = by_node
            .get(&node.name_any())
            .map(|ps| {
                ps.iter()
                    .copied()
                    .filter(|p| {
                        !(p.metadata.deletion_timestamp.is_some()
                            && matches!(util::pod_phase(p), "Succeeded" | "Failed"))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let scheduled = !on_node.is_empty();
        if run {
            st.desired += 1;
            if !scheduled {
                continue;
            }
            st.current += 1;
            sort_pods(&mut on_node);
            let p = on_node[0];
            if util::pod_ready(p) {
                st.ready += 1;
                if util::pod_available(p, min_ready, now) {
                    st.available += 1;
                }
            }
            if pod_updated(p, &hash, generation.as_deref()) {
                st.updated += 1;
            }
        } else if scheduled {
            st.misscheduled += 1;
        }
    }
    write_status(ds, client, &st).await?;
    result?;

    let mut requeue = plan.retry_after;
    if min_ready > 0 && st.ready != st.available {
        let d = Duration::from_secs(u64::try_from(min_ready).unwrap_or(1));
        requeue = Some(requeue.map_or(d, |r| r.min(d)));
    }
    Ok(requeue.map_or_else(Action::await_change, Action::requeue))
}

/// Upstream's `podsShouldBeOnNode`: what one node needs.
fn plan_node(
    ds: &DaemonSet,
    node: &Node,
    by_node: &BTreeMap<String, Vec<&Pod>>,
    hash: &str,
    surge_allowed: bool,
    ctx: &Ctx,
    plan: &mut Plan,
) {
    let node_name = node.name_any();
    let (run, keep) = should_run(ds, node);
    let pods = by_node.get(&node_name);
    let min_ready = ds
        .spec
        .as_ref()
        .and_then(|s| s.min_ready_seconds)
        .unwrap_or(0);
    match pods {
        None if run => plan.create.push(node_name),
        Some(pods) if keep => {
            let mut running: Vec<&Pod> = Vec::new();
            for p in pods {
                if p.metadata.deletion_timestamp.is_some() {
                    continue;
                }
                match util::pod_phase(p) {
                    "Failed" => {
                        // Kubelets may keep rejecting a pod: delete failed pods with backoff.
                        let key = format!("{}/{node_name}", ds.uid().unwrap_or_default());
                        let mut failed = ctx.failed.lock().unwrap_or_else(|e| e.into_inner());
                        let now = Instant::now();
                        match failed.get(&key).copied() {
                            Some((at, delay)) if now < at + delay => {
                                let left = at + delay - now;
                                plan.retry_after =
                                    Some(plan.retry_after.map_or(left, |r| r.min(left)));
                            }
                            prev => {
                                let delay = match prev {
                                    Some((at, d)) if now < at + 2 * FAILED_BACKOFF_MAX => {
                                        (d * 2).min(FAILED_BACKOFF_MAX)
                                    }
                                    _ => FAILED_BACKOFF_INITIAL,
                                };
                                failed.insert(key, (now, delay));
                                tracing::warn!(pod = %p.name_any(), node = %node_name, "found failed daemon pod; deleting it");
                                ctx.shared.events.event(
                                    COMPONENT,
                                    ds,
                                    EventType::Warning,
                                    "FailedDaemonPod",
                                    format!(
                                        "Found failed daemon pod {}/{} on node {node_name}, will try to kill it",
                                        p.namespace().unwrap_or_default(),
                                        p.name_any()
                                    ),
                                );
                                plan.delete.push(p.name_any());
                            }
                        }
                    }
                    "Succeeded" => {
                        ctx.shared.events.event(
                            COMPONENT,
                            ds,
                            EventType::Normal,
                            "SucceededDaemonPod",
                            format!(
                                "Found succeeded daemon pod {}/{} on node {node_name}, will try to delete it",
                                p.namespace().unwrap_or_default(),
                                p.name_any()
                            ),
                        );
                        plan.delete.push(p.name_any());
                    }
                    _ => running.push(p),
                }
            }
            sort_pods(&mut running);
            if !surge_allowed {
                // More than one: keep the oldest.
                for p in running.iter().skip(1) {
                    plan.delete.push(p.name_any());
                }
                return;
            }
            if running.is_empty() {
                if run {
                    plan.create.push(node_name);
                }
                return;
            }
            // With surge, an old and a new pod may share the node until the new one is
            // available (or the old one is not ready); everything else goes.
            let mut oldest_new: Option<&Pod> = None;
            let mut oldest_old: Option<&Pod> = None;
            for p in running {
                let is_new = p.labels().get(HASH_LABEL).map(String::as_str) == Some(hash);
                let slot = if is_new {
                    &mut oldest_new
                } else {
                    &mut oldest_old
                };
                if slot.is_none() {
                    *slot = Some(p);
                } else {
                    plan.delete.push(p.name_any());
                }
            }
            if let (Some(new), Some(old)) = (oldest_new, oldest_old)
                && (!util::pod_ready(old) || util::pod_available(new, min_ready, util::now()))
            {
                plan.delete.push(old.name_any());
            }
        }
        Some(pods) if !keep => {
            for p in pods {
                if p.metadata.deletion_timestamp.is_none() {
                    tracing::info!(pod = %p.name_any(), node = %node_name, "daemon pod no longer fits its node; deleting it");
                    plan.delete.push(p.name_any());
                }
            }
        }
        _ => {}
    }
}

/// The new and the old pod on a node, not counting pods being deleted; `None` when there are
/// more than one of either (upstream's `findUpdatedPodsOnNode`).
fn new_and_old<'a>(
    pods: &[&'a Pod],
    hash: &str,
    generation: Option<&str>,
) -> Option<(Option<&'a Pod>, Option<&'a Pod>)> {
    let (mut new, mut old) = (None, None);
    for p in pods {
        if p.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let slot = if pod_updated(p, hash, generation) {
            &mut new
        } else {
            &mut old
        };
        if slot.is_some() {
            return None;
        }
        *slot = Some(*p);
    }
    Some((new, old))
}

/// Upstream's `rollingUpdate`: without surge, delete old pods while at most maxUnavailable
/// nodes lack an available new pod (the placement step then makes the replacements); with
/// surge, make new pods beside available old ones (at most maxSurge at a time) and delete the
/// old pod once the new one is available.
fn rolling_update(
    ds: &DaemonSet,
    spec: &DaemonSetSpec,
    nodes: &[Arc<Node>],
    by_node: &BTreeMap<String, Vec<&Pod>>,
    hash: &str,
    generation: Option<&str>,
    plan: &mut Plan,
) {
    let now = util::now();
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let mut by_node: BTreeMap<String, Vec<&Pod>> = by_node.clone();
    let mut desired = 0;
    for n in nodes {
        if should_run(ds, n).0 {
            desired += 1;
            by_node.entry(n.name_any()).or_default();
        }
    }
    let (max_surge, max_unavailable) = surge_and_unavailable(spec, desired);
    let available = |p: &Pod| util::pod_available(p, min_ready, now);
    let node_of = |name: &str| nodes.iter().find(|n| n.name_any() == name);

    if max_surge == 0 {
        let mut unavailable = 0;
        let mut replace: Vec<String> = Vec::new();
        let mut candidates: Vec<String> = Vec::new();
        for pods in by_node.values() {
            let Some((new, old)) = new_and_old(pods, hash, generation) else {
                unavailable += 1;
                continue;
            };
            match (new, old) {
                (None, None) | (Some(_), Some(_)) => unavailable += 1,
                (Some(new), None) => {
                    if !available(new) {
                        unavailable += 1;
                    }
                }
                (None, Some(old)) => {
                    if !available(old) {
                        replace.push(old.name_any());
                        unavailable += 1;
                    } else if unavailable < max_unavailable {
                        candidates.push(old.name_any());
                    }
                }
            }
        }
        let room = max_unavailable
            .saturating_sub(unavailable)
            .min(candidates.len());
        plan.delete.extend(replace);
        plan.delete.extend(candidates.into_iter().take(room));
        return;
    }

    let mut surging = 0;
    let mut available_count = 0;
    let mut allowed_new: Vec<String> = Vec::new();
    let mut candidates: Vec<String> = Vec::new();
    let mut misplaced_old: Vec<String> = Vec::new();
    for (node_name, pods) in &by_node {
        let Some((new, old)) = new_and_old(pods, hash, generation) else {
            surging += 1;
            continue;
        };
        if let Some(p) = old.or(new)
            && available(p)
        {
            available_count += 1;
        }
        match (new, old) {
            (_, None) => {}
            (None, Some(old)) => {
                let runs = node_of(node_name).is_some_and(|n| should_run(ds, n).0);
                if !available(old) {
                    if runs {
                        allowed_new.push(node_name.clone());
                    } else {
                        plan.delete.push(old.name_any());
                    }
                } else if !runs {
                    misplaced_old.push(old.name_any());
                } else if surging < max_surge {
                    candidates.push(node_name.clone());
                }
            }
            (Some(new), Some(old)) => {
                if available(new) {
                    plan.delete.push(old.name_any());
                } else {
                    surging += 1;
                }
            }
        }
    }
    // Old pods on nodes that no longer fit go only while enough others are available.
    let deletable = usize::try_from(available_count - desired).unwrap_or(0);
    plan.delete
        .extend(misplaced_old.into_iter().take(deletable));
    let room = max_surge.saturating_sub(surging).min(candidates.len());
    plan.create.extend(allowed_new);
    plan.create.extend(candidates.into_iter().take(room));
}

/// Deletes and creates what the plan says (creations in batches of 1, 2, 4, …).
/// Deletes and creates the planned pods, each recorded on the DaemonSet as upstream's pod
/// control does (`SuccessfulCreate` `Created pod: <name>`, `SuccessfulDelete`, `FailedCreate`,
/// `FailedDelete`).
async fn execute(
    shared: &Shared,
    ds: &DaemonSet,
    spec: &DaemonSetSpec,
    api: &Api<Pod>,
    plan: &Plan,
    hash: &str,
    generation: Option<&str>,
) -> Result<(), ReconcileError> {
    let results = join_all(plan.delete.iter().map(|n| async move {
        tracing::info!(pod = %n, "deleting daemon pod");
        match api.delete(n, &DeleteParams::default()).await {
            Ok(_) => {
                shared.events.event(
                    COMPONENT,
                    ds,
                    EventType::Normal,
                    "SuccessfulDelete",
                    format!("Deleted pod: {n}"),
                );
                Ok(())
            }
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => {
                shared.events.event(
                    COMPONENT,
                    ds,
                    EventType::Warning,
                    "FailedDelete",
                    format!("Error deleting: {}", api_error_text(&e)),
                );
                Err(e)
            }
        }
    }))
    .await;
    if let Some(Err(e)) = results.into_iter().find(Result::is_err) {
        return Err(e.into());
    }
    let nodes: Vec<&String> = plan.create.iter().take(BURST).collect();
    let mut template = spec.template.clone();
    let tmeta = template.metadata.get_or_insert_with(ObjectMeta::default);
    let labels = tmeta.labels.get_or_insert_with(BTreeMap::new);
    if let Some(g) = generation {
        labels.insert(GENERATION_LABEL.into(), g.into());
    }
    if !hash.is_empty() {
        labels.insert(HASH_LABEL.into(), hash.into());
    }
    let mut done = 0;
    let mut batch = 1;
    while done < nodes.len() {
        let end = (done + batch).min(nodes.len());
        let results = join_all(nodes[done..end].iter().map(|node| {
            let pod = new_pod(ds, &template, node);
            async move {
                match api.create(&PostParams::default(), &pod).await {
                    Ok(p) => {
                        tracing::info!(pod = %p.name_any(), node = %node, "created daemon pod");
                        shared.events.event(
                            COMPONENT,
                            ds,
                            EventType::Normal,
                            "SuccessfulCreate",
                            format!("Created pod: {}", p.name_any()),
                        );
                        Ok(())
                    }
                    Err(e) => {
                        shared.events.event(
                            COMPONENT,
                            ds,
                            EventType::Warning,
                            "FailedCreate",
                            format!("Error creating: {}", api_error_text(&e)),
                        );
                        Err(e)
                    }
                }
            }
        }))
        .await;
        if let Some(Err(e)) = results.into_iter().find(Result::is_err) {
            return Err(e.into());
        }
        done = end;
        batch *= 2;
    }
    Ok(())
}

fn new_pod(
    ds: &DaemonSet,
    template: &k8s_openapi::api::core::v1::PodTemplateSpec,
    node: &str,
) -> Pod {
    let tmeta = template.metadata.clone().unwrap_or_default();
    let mut spec = template.spec.clone().unwrap_or_default();
    add_daemon_tolerations(&mut spec);
    pin_to_node(&mut spec, node);
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}-", ds.name_any())),
            namespace: ds.namespace(),
            labels: tmeta.labels,
            annotations: tmeta.annotations,
            finalizers: tmeta.finalizers,
            owner_references: Some(vec![util::controller_ref(ds)]),
            ..ObjectMeta::default()
        },
        spec: Some(spec),
        status: None,
    }
}

/// Upstream's `constructHistory`: the revision holding the current template (created if
/// missing, deduplicated, given the highest revision number) and the old ones, oldest first.
async fn construct_history(
    ds: &DaemonSet,
    spec: &DaemonSetSpec,
    api: &Api<ControllerRevision>,
    pods_api: &Api<Pod>,
    pods: &[Pod],
    can_adopt: bool,
) -> Result<(ControllerRevision, Vec<ControllerRevision>), ReconcileError> {
    let revisions = history::claim(api, ds, &spec.selector, can_adopt).await?;
    let data = history::template_patch(&spec.template);
    let (mut current, old): (Vec<_>, Vec<_>) = revisions
        .into_iter()
        .partition(|r| history::holds(r, &data));
    let next = old.iter().map(|r| r.revision).max().unwrap_or(0) + 1;
    let cur = if current.is_empty() {
        snapshot(ds, spec, api, &data, next).await?
    } else {
        // Keep the newest duplicate; pods of the others move to its hash.
        current.sort_by_key(|r| r.revision);
        let keep = current.pop().unwrap_or_default();
        let keep_hash = keep
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(HASH_LABEL))
            .cloned()
            .unwrap_or_default();
        for dup in &current {
            let dup_hash = dup.metadata.labels.as_ref().and_then(|l| l.get(HASH_LABEL));
            for p in pods
                .iter()
                .filter(|p| p.labels().get(HASH_LABEL) == dup_hash)
            {
                let patch = json!({"metadata": {"labels": {HASH_LABEL: keep_hash}}});
                match pods_api
                    .patch(&p.name_any(), &PatchParams::default(), &Patch::Merge(patch))
                    .await
                {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.code == 404 => {}
                    Err(e) => return Err(e.into()),
                }
            }
            history::delete(api, dup).await?;
        }
        if keep.revision < next {
            history::set_revision(api, &keep, next).await?
        } else {
            keep
        }
    };
    Ok((cur, old))
}

/// Creates the revision of the current template, named `<ds>-<hash>` with the template hash
/// (the Deployment controller's); a name taken by another template bumps
/// `status.collisionCount` and fails this sync, so the next one uses a new name.
async fn snapshot(
    ds: &DaemonSet,
    spec: &DaemonSetSpec,
    api: &Api<ControllerRevision>,
    data: &Value,
    revision: i64,
) -> Result<ControllerRevision, ReconcileError> {
    let collision = ds.status.as_ref().and_then(|s| s.collision_count);
    let hash = crate::deployment::template_hash(Some(&spec.template), collision);
    let rev = history::new_revision(
        ds,
        spec.template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.as_ref()),
        ds.metadata.annotations.clone(),
        data.clone(),
        revision,
        (HASH_LABEL, &hash),
    );
    let name = rev.metadata.name.clone().unwrap_or_default();
    match api.create(&PostParams::default(), &rev).await {
        Ok(r) => Ok(r),
        Err(kube::Error::Api(s)) if s.code == 409 => {
            if let Some(existing) = api.get_opt(&name).await?
                && history::holds(&existing, data)
            {
                return Ok(existing);
            }
            let ns = ds.namespace().unwrap_or_default();
            let fresh = Api::<DaemonSet>::namespaced(api.clone().into_client(), &ns)
                .get(&ds.name_any())
                .await?;
            let fresh_count = fresh.status.as_ref().and_then(|s| s.collision_count);
            if fresh_count == collision {
                let patch = json!({"status": {"collisionCount": collision.unwrap_or(0) + 1}});
                Api::<DaemonSet>::namespaced(api.clone().into_client(), &ns)
                    .patch_status(
                        &ds.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(patch),
                    )
                    .await?;
            }
            Err(ReconcileError::Invalid(format!(
                "ControllerRevision {name} exists with another template; collision count raised"
            )))
        }
        Err(e) => Err(e.into()),
    }
}

#[derive(Debug, Default, PartialEq, Eq)]
struct DsStatus {
    desired: i32,
    current: i32,
    misscheduled: i32,
    ready: i32,
    available: i32,
    updated: i32,
}

async fn write_status(
    ds: &DaemonSet,
    client: &kube::Client,
    st: &DsStatus,
) -> Result<(), ReconcileError> {
    let old = ds.status.clone().unwrap_or_default();
    let unavailable = st.desired - st.available;
    let same = old.desired_number_scheduled == st.desired
        && old.current_number_scheduled == st.current
        && old.number_misscheduled == st.misscheduled
        && old.number_ready == st.ready
        && old.number_available.unwrap_or(0) == st.available
        && old.updated_number_scheduled.unwrap_or(0) == st.updated
        && old.number_unavailable.unwrap_or(0) == unavailable
        && old.observed_generation >= ds.metadata.generation;
    if same {
        return Ok(());
    }
    let opt = |v: i32| if v == 0 { Value::Null } else { json!(v) };
    let patch = json!({"status": {
        "desiredNumberScheduled": st.desired,
        "currentNumberScheduled": st.current,
        "numberMisscheduled": st.misscheduled,
        "numberReady": st.ready,
        "numberAvailable": opt(st.available),
        "updatedNumberScheduled": opt(st.updated),
        "numberUnavailable": opt(unavailable),
        "observedGeneration": ds.metadata.generation,
    }});
    Api::<DaemonSet>::namespaced(client.clone(), &ds.namespace().unwrap_or_default())
        .patch_status(
            &ds.name_any(),
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .await?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ds(template_spec: Value) -> DaemonSet {
        serde_json::from_value(json!({
            "metadata": {"name": "agent", "namespace": "ns", "uid": "u", "generation": 1},
            "spec": {
                "selector": {"matchLabels": {"app": "agent"}},
                "template": {"metadata": {"labels": {"app": "agent"}}, "spec": template_spec}
            }
        }))
        .unwrap()
    }

    fn node(name: &str, labels: Value, taints: Value) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": name, "labels": labels},
            "spec": {"taints": taints}
        }))
        .unwrap()
    }

    #[test]
    fn default_tolerations_are_added_once_and_replace_equal_ones() {
        let mut spec: PodSpec = serde_json::from_value(json!({
            "containers": [], "hostNetwork": true,
            "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists",
                             "effect": "NoExecute", "tolerationSeconds": 300}]
        }))
        .unwrap();
        add_daemon_tolerations(&mut spec);
        add_daemon_tolerations(&mut spec);
        let t = spec.tolerations.unwrap();
        assert_eq!(t.len(), 7);
        assert_eq!(
            t[0].toleration_seconds, None,
            "replaced by the infinite toleration"
        );
        assert_eq!(
            t[6].key.as_deref(),
            Some("node.kubernetes.io/network-unavailable")
        );
    }

    #[test]
    fn taints_selectors_and_affinity_decide_placement() {
        let d = ds(json!({"containers": [], "nodeSelector": {"role": "edge"}}));
        let plain = node("a", json!({"role": "edge"}), json!([]));
        assert_eq!(should_run(&d, &plain), (true, true));
        let other = node("b", json!({"role": "core"}), json!([]));
        assert_eq!(should_run(&d, &other), (false, false));
        // NoSchedule: not placed, but a running pod stays; NoExecute: neither.
        let no_sched = node(
            "c",
            json!({"role": "edge"}),
            json!([{"key": "k", "effect": "NoSchedule"}]),
        );
        assert_eq!(should_run(&d, &no_sched), (false, true));
        let no_exec = node(
            "d",
            json!({"role": "edge"}),
            json!([{"key": "k", "value": "v", "effect": "NoExecute"}]),
        );
        assert_eq!(should_run(&d, &no_exec), (false, false));
        // Default tolerations cover unschedulable and not-ready nodes.
        let cordoned = node(
            "e",
            json!({"role": "edge"}),
            json!([
            {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"},
            {"key": "node.kubernetes.io/not-ready", "effect": "NoExecute"}]),
        );
        assert_eq!(should_run(&d, &cordoned), (true, true));
        // A toleration of the pod.
        let tolerant = ds(json!({"containers": [], "tolerations": [
            {"key": "k", "operator": "Equal", "value": "v", "effect": "NoExecute"}]}));
        assert_eq!(should_run(&tolerant, &no_exec), (true, true));
        // Required node affinity with expressions and fields.
        let aff = ds(json!({"containers": [], "affinity": {"nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["z1"]}]},
            {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["b"]}]}
        ]}}}}));
        assert!(should_run(&aff, &node("x", json!({"zone": "z1"}), json!([]))).0);
        assert!(should_run(&aff, &other).0);
        assert!(!should_run(&aff, &plain).0);
    }

    #[test]
    fn pods_are_pinned_to_their_node() {
        let d = ds(json!({"containers": [], "affinity": {"nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["z1"]}]}]},
            "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 1, "preference":
                {"matchExpressions": [{"key": "fast", "operator": "Exists"}]}}]}}}));
        let pod = new_pod(&d, &d.spec.as_ref().unwrap().template, "n1");
        assert_eq!(target_node(&pod).as_deref(), Some("n1"));
        let na = pod
            .spec
            .as_ref()
            .unwrap()
            .affinity
            .clone()
            .unwrap()
            .node_affinity
            .unwrap();
        let terms = na
            .required_during_scheduling_ignored_during_execution
            .unwrap()
            .node_selector_terms;
        assert_eq!(terms.len(), 1);
        assert_eq!(
            terms[0].match_fields.as_ref().unwrap()[0].key,
            "metadata.name"
        );
        assert!(
            na.preferred_during_scheduling_ignored_during_execution
                .is_some()
        );
        assert_eq!(pod.metadata.generate_name.as_deref(), Some("agent-"));
    }

    #[test]
    fn surge_and_unavailable_round_up_with_a_floor() {
        let mut d = ds(json!({"containers": []}));
        let spec = d.spec.as_mut().unwrap();
        assert_eq!(surge_and_unavailable(spec, 10), (0, 1));
        spec.update_strategy = Some(
            serde_json::from_value(json!({"type": "RollingUpdate",
            "rollingUpdate": {"maxUnavailable": "15%", "maxSurge": 0}}))
            .unwrap(),
        );
        assert_eq!(surge_and_unavailable(spec, 10), (0, 2));
        spec.update_strategy = Some(
            serde_json::from_value(json!({"type": "RollingUpdate",
            "rollingUpdate": {"maxUnavailable": 0, "maxSurge": "10%"}}))
            .unwrap(),
        );
        assert_eq!(surge_and_unavailable(spec, 10), (1, 0));
        spec.update_strategy = Some(serde_json::from_value(json!({"type": "OnDelete"})).unwrap());
        assert_eq!(surge_and_unavailable(spec, 10), (0, 0));
    }
}
