//! ResourceQuota admission, as upstream's `ResourceQuota` plugin: a new object is checked
//! against every quota of its namespace that covers it, and admitted only if each quota's
//! `status.used` plus the object's usage stays within `status.hard`. An update of the kinds
//! whose usage can change (upstream's evaluators that handle updates: Services — type
//! changes to `NodePort`/`LoadBalancer`, ports added — and PersistentVolumeClaims — a resize
//! of `requests.storage`) is charged what it adds over the object it replaces (never less
//! than nothing: shrinking gives back only through the controller's recount). The new usage is written
//! to the quotas' `status.used` **before** the object is stored, each quota by a
//! compare-and-swap on its mod revision (retried from a fresh read when another admission got
//! in between), so concurrent creates cannot overrun a quota. `status.hard`/`used` come from
//! the `resourcequota` controller (rk3s-controller), which also gives back usage that was
//! charged for objects that were never stored or are gone.
//!
//! What counts and how much: `rk3s_quota` (shared with the controller).

use std::collections::{BTreeMap, BTreeSet};

use rk3s_datastore::{KeyValue, ListOptions, WriteOutcome};
use serde_json::{Value, json};

use crate::registry::{REGISTRY, ResourceInfo};
use crate::rest::object_meta_str;
use crate::server::AppState;
use crate::status::ApiError;
use rk3s_quota::{COMPUTE, Resource, Usage, matches_scopes, missing_compute, parse, text, usage};

const MAX_RETRIES: usize = 16;

/// The quota evaluators' view of a registry entry.
fn resource(info: &ResourceInfo) -> Resource<'_> {
    Resource {
        group: info.group,
        plural: info.plural,
    }
}

/// `a=1,b=2`, sorted by name (upstream's `prettyPrint`).
fn pretty(u: &BTreeMap<String, String>) -> String {
    u.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn string_map(v: Option<&Value>) -> BTreeMap<String, String> {
    v.and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// What admitting the object does to one quota: its new `status.used`, or the refusal.
/// `usage` is the object's whole usage (which resources the quota restricts for it), `charge`
/// what is added to `used` (the whole usage on create, the growth on update).
fn check(
    quota: &Value,
    info: &ResourceInfo,
    obj: &Value,
    usage: &Usage,
    charge: &Usage,
) -> Result<Option<Value>, String> {
    let name = object_meta_str(quota, "name");
    if !matches_scopes(quota, resource(info), obj) {
        return Ok(None);
    }
    let spec_hard = string_map(quota.pointer("/spec/hard"));
    let restricted: BTreeSet<&str> = spec_hard
        .keys()
        .map(String::as_str)
        .filter(|r| usage.contains_key(*r) || (info.kind == "Pod" && COMPUTE.contains(r)))
        .collect();
    if restricted.is_empty() {
        return Ok(None);
    }
    if info.group.is_empty() && info.kind == "Pod" {
        let missing = missing_compute(obj.get("spec").unwrap_or(&Value::Null), &restricted);
        if !missing.is_empty() {
            return Err(format!(
                "failed quota: {name}: must specify {}",
                missing.into_iter().collect::<Vec<_>>().join(",")
            ));
        }
    }
    let hard = string_map(quota.pointer("/status/hard"));
    let used = string_map(quota.pointer("/status/used"));
    let unknown: Vec<&str> = restricted
        .iter()
        .copied()
        .filter(|r| !hard.contains_key(*r) || !used.contains_key(*r))
        .collect();
    if !unknown.is_empty() {
        return Err(format!(
            "status unknown for quota: {name}, resources: {}",
            unknown.join(",")
        ));
    }
    let mut new_used = used.clone();
    let (mut req, mut was, mut lim) = (BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
    for r in &restricted {
        let Some(amount) = charge.get(*r) else {
            continue;
        };
        let old = used.get(*r).and_then(|s| parse(s)).unwrap_or_default();
        let limit = hard.get(*r).and_then(|s| parse(s)).unwrap_or_default();
        let sum = (old.0 + amount.0, old.1 || amount.1);
        if sum.0 > limit.0 {
            req.insert((*r).to_string(), text(*amount));
            was.insert((*r).to_string(), used.get(*r).cloned().unwrap_or_default());
            lim.insert((*r).to_string(), hard.get(*r).cloned().unwrap_or_default());
        }
        new_used.insert((*r).to_string(), text(sum));
    }
    if !req.is_empty() {
        return Err(format!(
            "exceeded quota: {name}, requested: {}, used: {}, limited: {}",
            pretty(&req),
            pretty(&was),
            pretty(&lim)
        ));
    }
    if new_used == used {
        return Ok(None);
    }
    let mut q = quota.clone();
    q["status"]["used"] = json!(new_used);
    Ok(Some(q))
}

/// Admits a new object of `info` in namespace `ns` against the namespace's quotas, charging
/// its usage to them (not with `dry_run`). 403 with upstream's message when a quota would be
/// exceeded.
pub(crate) async fn admit_create(
    state: &AppState,
    info: &ResourceInfo,
    ns: &str,
    obj: &Value,
    dry_run: bool,
) -> Result<(), ApiError> {
    let usage = usage(resource(info), obj);
    admit(state, info, ns, obj, &usage, &usage, dry_run).await
}

/// Whether updates of `info` can change its quota usage (upstream's evaluators that handle
/// `Update`: services and persistentvolumeclaims; pods only through `pods/resize`, which is
/// not served).
pub(crate) fn handles_update(info: &ResourceInfo) -> bool {
    info.group.is_empty() && matches!(info.plural, "services" | "persistentvolumeclaims")
}

/// What one update request has charged so far, across the compare-and-swap retries of its
/// write.
#[derive(Debug, Default)]
pub(crate) struct Charged(Usage);

/// Admits an update of `old` to `new` (main resource only; upstream ignores subresources),
/// charging what `new` uses beyond `old`, less what this request has already charged
/// (`charged`: an update retried after a compare-and-swap conflict is admitted again, against
/// the object it then replaces, but pays only for what it adds beyond its earlier attempts).
pub(crate) async fn admit_update(
    state: &AppState,
    info: &ResourceInfo,
    old: &Value,
    new: &Value,
    dry_run: bool,
    charged: &mut Charged,
) -> Result<(), ApiError> {
    let ns = object_meta_str(new, "namespace");
    if !handles_update(info) || ns.is_empty() {
        return Ok(());
    }
    let usage = usage(resource(info), new);
    let growth = rk3s_quota::growth(&usage, &rk3s_quota::usage(resource(info), old));
    let charge = rk3s_quota::growth(&growth, &charged.0);
    admit(state, info, ns, new, &usage, &charge, dry_run).await?;
    if !dry_run {
        for (name, amount) in charge {
            rk3s_quota::add(&mut charged.0, &name, amount);
        }
    }
    Ok(())
}

async fn admit(
    state: &AppState,
    info: &ResourceInfo,
    ns: &str,
    obj: &Value,
    usage: &Usage,
    charge: &Usage,
    dry_run: bool,
) -> Result<(), ApiError> {
    let Some(quotas) = REGISTRY.find("", "v1", "resourcequotas") else {
        return Ok(());
    };
    // Quotas already charged in this admission (by key), when a later one raced.
    let mut charged: BTreeSet<Vec<u8>> = BTreeSet::new();
    let name = match object_meta_str(obj, "name") {
        "" => object_meta_str(obj, "generateName"),
        n => n,
    };
    'retry: for _ in 0..MAX_RETRIES {
        let listed = state
            .store
            .list(&quotas.prefix(Some(ns)), ListOptions::default())
            .await?;
        let mut updates: Vec<(&KeyValue, Value)> = Vec::new();
        for kv in &listed.kvs {
            if charged.contains(&kv.key) {
                continue;
            }
            let quota: Value = serde_json::from_slice(&kv.value).map_err(|e| {
                ApiError::internal(format!("a stored ResourceQuota is not JSON: {e}"))
            })?;
            match check(&quota, info, obj, usage, charge) {
                Ok(Some(q)) => updates.push((kv, q)),
                Ok(None) => {}
                Err(why) => return Err(ApiError::forbidden(info, name, &why)),
            }
        }
        if dry_run {
            return Ok(());
        }
        for (kv, q) in updates {
            let bytes = crate::rest::encode_for_store(&q)?;
            match state
                .store
                .update(&kv.key, bytes, kv.mod_revision, 0)
                .await?
            {
                WriteOutcome::Written { .. } => {
                    charged.insert(kv.key.clone());
                }
                WriteOutcome::Conflict { .. } => continue 'retry,
            }
        }
        return Ok(());
    }
    Err(ApiError::new(
        409,
        "Conflict",
        format!(
            "Operation cannot be fulfilled on resourcequotas: too many concurrent updates while admitting {name}"
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(plural: &str) -> &'static ResourceInfo {
        REGISTRY.find("", "v1", plural).expect("registered")
    }

    fn pod(cpu: &str, mem: &str) -> Value {
        json!({"metadata": {"name": "p"}, "spec": {"containers": [
            {"name": "a", "resources": {"requests": {"cpu": cpu, "memory": mem},
                                         "limits": {"cpu": cpu, "memory": mem}}},
        ]}})
    }

    fn usage_of(plural: &str, obj: &Value) -> Usage {
        usage(resource(info(plural)), obj)
    }

    #[test]
    fn exceeding_is_refused_with_upstreams_message() {
        let quota = json!({"metadata": {"name": "q"},
            "spec": {"hard": {"pods": "2", "requests.cpu": "3"}},
            "status": {"hard": {"pods": "2", "requests.cpu": "3"},
                       "used": {"pods": "2", "requests.cpu": "1"}}});
        let p = pod("500m", "1Mi");
        let u = usage_of("pods", &p);
        let err = check(&quota, info("pods"), &p, &u, &u).expect_err("over");
        assert_eq!(
            err,
            "exceeded quota: q, requested: pods=1, used: pods=2, limited: pods=2"
        );
        let mut ok_quota = quota.clone();
        ok_quota["status"]["used"]["pods"] = json!("1");
        let updated = check(&ok_quota, info("pods"), &p, &u, &u)
            .expect("fits")
            .expect("charged");
        assert_eq!(
            updated["status"]["used"],
            json!({"pods": "2", "requests.cpu": "1500m"})
        );
    }

    #[test]
    fn an_update_is_charged_what_it_adds() {
        let quota = json!({"metadata": {"name": "q"},
            "spec": {"hard": {"services.nodeports": "2", "services": "5"}},
            "status": {"hard": {"services.nodeports": "2", "services": "5"},
                       "used": {"services.nodeports": "1", "services": "3"}}});
        let services = info("services");
        let old = json!({"spec": {"type": "ClusterIP", "ports": [{"port": 80}, {"port": 81}]}});
        let mut new = old.clone();
        new["spec"]["type"] = json!("NodePort");
        let full = usage_of("services", &new);
        let growth = rk3s_quota::growth(&full, &usage_of("services", &old));
        // The service itself was counted when it was created: only its node ports are new.
        assert_eq!(
            check(&quota, services, &new, &full, &growth).expect_err("over"),
            "exceeded quota: q, requested: services.nodeports=2, used: services.nodeports=1, limited: services.nodeports=2"
        );
        // Nothing added (a label change, or back to ClusterIP): nothing to charge.
        let none = rk3s_quota::growth(&usage_of("services", &old), &full);
        assert!(none.is_empty());
        assert_eq!(check(&quota, services, &old, &full, &none), Ok(None));
    }

    #[test]
    fn unknown_status_and_missing_requests_are_refused() {
        let quota = json!({"metadata": {"name": "q"}, "spec": {"hard": {"limits.memory": "1Gi"}}});
        let p = json!({"spec": {"containers": [{"name": "a"}]}});
        let u = usage_of("pods", &p);
        assert_eq!(
            check(&quota, info("pods"), &p, &u, &u).expect_err("no limits"),
            "failed quota: q: must specify limits.memory"
        );
        let p = pod("1", "1Mi");
        let u = usage_of("pods", &p);
        assert_eq!(
            check(&quota, info("pods"), &p, &u, &u).expect_err("no status"),
            "status unknown for quota: q, resources: limits.memory"
        );
    }
}
