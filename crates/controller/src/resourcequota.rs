//! The ResourceQuota controller (upstream's `resourcequota`): keeps each quota's
//! `status.hard` (= `spec.hard`) and `status.used` (what the namespace's objects use, counted
//! by `rk3s_quota` exactly as the apiserver's quota admission counts them).
//!
//! A quota is synced when it changes, when a pod, service, claim, configmap or secret of its
//! namespace changes (upstream's "replenishment"), and every [`RESYNC`] (upstream's
//! `--resource-quota-sync-period`), which also catches `count/<resource>` of other kinds. The
//! status is written with the quota's resourceVersion read at the start of the sync: if the
//! admission charged the quota meanwhile, the write conflicts and the sync runs again, so a
//! recount never erases a charge it did not see. And since the admission charges before it
//! stores the object, a recount that would *lower* `used` waits for a second recount
//! ([`CONFIRM`] later, same count, quota unchanged) before it is written.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    ConfigMap, PersistentVolumeClaim, Pod, ResourceQuota, ResourceQuotaStatus, Secret, Service,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity as K8sQuantity;
use kube::api::{Api, DynamicObject, ListParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt as _};
use rk3s_quota::{Resource as QuotaResource, Usage};
use serde_json::Value;
use tokio::sync::watch;

use crate::ReconcileError;
use crate::util::{self, Backoff, Shared};

/// Full recount period (upstream's default `--resource-quota-sync-period`: 5 minutes).
pub(crate) const RESYNC: Duration = Duration::from_secs(300);

struct Ctx {
    shared: Arc<Shared>,
    backoff: Backoff,
    /// Recounts that would lower `used`, per quota: (the quota's resourceVersion, the count).
    /// A decrease is written only when a second recount, [`CONFIRM`] later, finds the same
    /// count on an unchanged quota (see [`sync`]).
    lowered: Mutex<Lowered>,
}

/// Quota key → (its resourceVersion, the lower count) awaiting confirmation.
type Lowered = HashMap<String, (String, BTreeMap<String, String>)>;

/// How long a recount that lowers `used` waits to be confirmed.
pub(crate) const CONFIRM: Duration = Duration::from_secs(1);

/// Every quota of `ns` in the cache.
fn quotas_in(store: &Store<ResourceQuota>, ns: Option<String>) -> Vec<ObjectRef<ResourceQuota>> {
    let Some(ns) = ns else { return Vec::new() };
    store
        .state()
        .iter()
        .filter(|q| q.namespace().as_deref() == Some(ns.as_str()))
        .map(|q| ObjectRef::from_obj(q.as_ref()))
        .collect()
}

pub(crate) async fn run(shared: Arc<Shared>, stop: watch::Receiver<bool>) {
    let client = shared.client.clone();
    let controller = Controller::new(
        Api::<ResourceQuota>::all(client.clone()),
        watcher::Config::default(),
    );
    let store = controller.store();
    let (s1, s2, s3, s4, s5) = (
        store.clone(),
        store.clone(),
        store.clone(),
        store.clone(),
        store,
    );
    let controller = controller
        .watches(
            Api::<Pod>::all(client.clone()),
            watcher::Config::default(),
            move |o: Pod| quotas_in(&s1, o.namespace()),
        )
        .watches(
            Api::<Service>::all(client.clone()),
            watcher::Config::default(),
            move |o: Service| quotas_in(&s2, o.namespace()),
        )
        .watches(
            Api::<PersistentVolumeClaim>::all(client.clone()),
            watcher::Config::default(),
            move |o: PersistentVolumeClaim| quotas_in(&s3, o.namespace()),
        )
        .watches(
            Api::<ConfigMap>::all(client.clone()),
            watcher::Config::default(),
            move |o: ConfigMap| quotas_in(&s4, o.namespace()),
        )
        .watches(
            Api::<Secret>::all(client),
            watcher::Config::default(),
            move |o: Secret| quotas_in(&s5, o.namespace()),
        )
        .with_config(kube::runtime::controller::Config::default().concurrency(shared.concurrency))
        .graceful_shutdown_on(crate::stopped(stop.clone()));
    let abandon = util::abandon_unsynced(controller.store(), stop);
    let ctx = Arc::new(Ctx {
        shared,
        backoff: Backoff::default(),
        lowered: Mutex::default(),
    });
    util::drain(
        "resourcequota",
        abandon,
        controller.run(
            |q, ctx| async move {
                let key = util::key_of(q.meta());
                let r = sync(&q, &ctx).await;
                if r.is_ok() {
                    ctx.backoff.success(&key);
                }
                r
            },
            |q, _e, ctx| util::error_action(&ctx.backoff, &util::key_of(q.meta())),
            ctx,
        ),
    )
    .await;
}

/// The (group, plural) whose objects a quota resource name counts (upstream's evaluators).
pub(crate) fn source_of(resource: &str) -> (String, String) {
    if let Some(rest) = resource.strip_prefix("count/") {
        return match rest.split_once('.') {
            Some((plural, group)) => (group.to_string(), plural.to_string()),
            None => (String::new(), rest.to_string()),
        };
    }
    let core = |p: &str| (String::new(), p.to_string());
    match resource {
        "pods"
        | "services"
        | "secrets"
        | "configmaps"
        | "persistentvolumeclaims"
        | "replicationcontrollers"
        | "resourcequotas" => core(resource),
        r if r.starts_with("services.") => core("services"),
        r if r == "requests.storage" || r.contains(".storageclass.storage.k8s.io/") => {
            core("persistentvolumeclaims")
        }
        _ => core("pods"),
    }
}

/// The namespace's objects of one resource, as JSON.
async fn list_json(
    client: &kube::Client,
    ns: &str,
    group: &str,
    plural: &str,
) -> Result<Vec<Value>, ReconcileError> {
    let ar = if group.is_empty() && core_kind(plural).is_some() {
        let kind = core_kind(plural).unwrap_or_default();
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("", "v1", kind), plural)
    } else {
        let g = kube::discovery::group(client, group).await?;
        match g
            .recommended_resources()
            .into_iter()
            .find(|(r, _)| r.plural == plural)
        {
            Some((r, _)) => r,
            // Not served (yet): nothing of it exists.
            None => return Ok(Vec::new()),
        }
    };
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
    let items = api.list(&ListParams::default()).await?.items;
    Ok(items
        .into_iter()
        .filter_map(|o| serde_json::to_value(o).ok())
        .collect())
}

fn core_kind(plural: &str) -> Option<&'static str> {
    Some(match plural {
        "pods" => "Pod",
        "services" => "Service",
        "secrets" => "Secret",
        "configmaps" => "ConfigMap",
        "persistentvolumeclaims" => "PersistentVolumeClaim",
        "replicationcontrollers" => "ReplicationController",
        "resourcequotas" => "ResourceQuota",
        _ => return None,
    })
}

/// `used` for the quota's hard resources, from the namespace's objects.
pub(crate) fn compute_used(
    quota: &Value,
    hard: &BTreeSet<String>,
    objects: &BTreeMap<(String, String), Vec<Value>>,
    now_rfc3339: &str,
) -> BTreeMap<String, String> {
    let mut total = Usage::new();
    for ((group, plural), items) in objects {
        let r = QuotaResource { group, plural };
        for obj in items {
            if group.is_empty() && plural == "pods" && !rk3s_quota::pod_counts(obj, now_rfc3339) {
                continue;
            }
            if !rk3s_quota::matches_scopes(quota, r, obj) {
                continue;
            }
            for (name, amount) in rk3s_quota::usage(r, obj) {
                if hard.contains(&name) {
                    rk3s_quota::add(&mut total, &name, amount);
                }
            }
        }
    }
    hard.iter()
        .map(|name| {
            let text = total
                .get(name)
                .map_or_else(|| "0".to_string(), |a| rk3s_quota::text(*a));
            (name.clone(), text)
        })
        .collect()
}

/// Whether some resource of `new` is below its amount in `old`.
fn lowers(old: Option<&BTreeMap<String, K8sQuantity>>, new: &BTreeMap<String, String>) -> bool {
    new.iter().any(|(k, v)| {
        let before = old
            .and_then(|o| o.get(k))
            .and_then(|q| rk3s_quota::Quantity::parse(&q.0).ok());
        let after = rk3s_quota::Quantity::parse(v).ok();
        matches!((before, after), (Some(b), Some(a)) if a < b)
    })
}

/// One recount. The admission charges a quota *before* it stores the object, so a recount
/// that lands between the two sees the charge but not the object: a recount that would lower
/// `used` is only written when confirmed [`CONFIRM`] later by the same count on an unchanged
/// quota (increases are written at once).
#[tracing::instrument(skip_all, fields(quota = %util::key_of(q.meta())))]
async fn sync(q: &ResourceQuota, ctx: &Ctx) -> Result<Action, ReconcileError> {
    let client = &ctx.shared.client;
    let ns = q.namespace().unwrap_or_default();
    let api: Api<ResourceQuota> = Api::namespaced(client.clone(), &ns);
    // A fresh read: its resourceVersion guards the status write.
    let Some(fresh) = api.get_opt(&q.name_any()).await? else {
        return Ok(Action::await_change());
    };
    let spec_hard: BTreeMap<String, K8sQuantity> = fresh
        .spec
        .as_ref()
        .and_then(|s| s.hard.clone())
        .unwrap_or_default();
    let names: BTreeSet<String> = spec_hard.keys().cloned().collect();
    let mut objects: BTreeMap<(String, String), Vec<Value>> = BTreeMap::new();
    let sources: BTreeSet<(String, String)> = names.iter().map(|n| source_of(n)).collect();
    for source in sources {
        let items = list_json(client, &ns, &source.0, &source.1).await?;
        objects.insert(source, items);
    }
    let quota_json = serde_json::to_value(&fresh)
        .map_err(|e| ReconcileError::Invalid(format!("quota does not serialize: {e}")))?;
    let now = k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let used = compute_used(&quota_json, &names, &objects, &now);
    let current = fresh.status.clone().unwrap_or_default();
    let key = util::key_of(fresh.meta());
    let rv = fresh.resource_version().unwrap_or_default();
    if lowers(current.used.as_ref(), &used) {
        let mut lowered = ctx.lowered.lock().unwrap_or_else(|p| p.into_inner());
        let confirmed = lowered
            .get(&key)
            .is_some_and(|(seen_rv, seen)| *seen_rv == rv && *seen == used);
        if !confirmed {
            lowered.insert(key, (rv, used));
            return Ok(Action::requeue(CONFIRM));
        }
        lowered.remove(&key);
    } else {
        ctx.lowered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key);
    }
    let want = ResourceQuotaStatus {
        hard: Some(spec_hard),
        used: Some(used.into_iter().map(|(k, v)| (k, K8sQuantity(v))).collect()),
    };
    if !same_status(&current, &want) {
        let mut updated = fresh.clone();
        updated.status = Some(want);
        match api
            .replace_status(&fresh.name_any(), &PostParams::default(), &updated)
            .await
        {
            Ok(_) => tracing::debug!("quota status updated"),
            // Charged by an admission meanwhile: recount from the new state.
            Err(kube::Error::Api(s)) if s.code == 409 => {
                return Ok(Action::requeue(Duration::from_millis(50)));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Action::requeue(RESYNC))
}

/// Equal as quantities, not as text (`1000m` is `1`).
fn same_status(a: &ResourceQuotaStatus, b: &ResourceQuotaStatus) -> bool {
    let norm = |m: &Option<BTreeMap<String, K8sQuantity>>| -> BTreeMap<String, Option<rk3s_quota::Quantity>> {
        m.iter()
            .flatten()
            .map(|(k, v)| (k.clone(), rk3s_quota::Quantity::parse(&v.0).ok()))
            .collect()
    };
    norm(&a.hard) == norm(&b.hard)
        && norm(&a.used) == norm(&b.used)
        && a.hard.is_some() == b.hard.is_some()
        && a.used.is_some() == b.used.is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn resource_names_map_to_their_objects() {
        assert_eq!(source_of("pods"), (String::new(), "pods".into()));
        assert_eq!(source_of("requests.cpu"), (String::new(), "pods".into()));
        assert_eq!(source_of("memory"), (String::new(), "pods".into()));
        assert_eq!(
            source_of("count/deployments.apps"),
            ("apps".into(), "deployments".into())
        );
        assert_eq!(
            source_of("count/configmaps"),
            (String::new(), "configmaps".into())
        );
        assert_eq!(
            source_of("services.nodeports"),
            (String::new(), "services".into())
        );
        assert_eq!(
            source_of("gold.storageclass.storage.k8s.io/requests.storage"),
            (String::new(), "persistentvolumeclaims".into())
        );
    }

    #[test]
    fn lowering_is_detected_as_quantities() {
        let old = BTreeMap::from([
            ("pods".to_string(), K8sQuantity("2".into())),
            ("requests.cpu".to_string(), K8sQuantity("1".into())),
        ]);
        let same = BTreeMap::from([
            ("pods".to_string(), "2".to_string()),
            ("requests.cpu".to_string(), "1000m".to_string()),
        ]);
        assert!(!lowers(Some(&old), &same));
        let fewer = BTreeMap::from([("pods".to_string(), "1".to_string())]);
        assert!(lowers(Some(&old), &fewer));
        assert!(!lowers(None, &fewer));
    }

    #[test]
    fn used_counts_live_pods_only() {
        let quota = json!({"spec": {"hard": {"pods": "5", "requests.cpu": "2"}}});
        let hard: BTreeSet<String> = ["pods".to_string(), "requests.cpu".to_string()].into();
        let pod = |phase: &str| {
            json!({"spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": "250m"}}}]},
                   "status": {"phase": phase}})
        };
        let objects = BTreeMap::from([(
            (String::new(), "pods".to_string()),
            vec![pod("Running"), pod("Pending"), pod("Succeeded")],
        )]);
        let used = compute_used(&quota, &hard, &objects, "2026-01-01T00:00:00Z");
        assert_eq!(used["pods"], "2");
        assert_eq!(used["requests.cpu"], "500m");
    }
}
