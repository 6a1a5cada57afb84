//! `pods/eviction` (`policy/v1` `Eviction`): deletes a pod only when its PodDisruptionBudget
//! allows one more disruption — what `kubectl drain` and the cluster autoscaler use.
//!
//! As upstream: a pod that is terminal or pending (it disrupts nothing), or already being
//! deleted, is deleted without looking at budgets; a pod covered by no budget is deleted; a
//! pod covered by two or more is refused (500); with one budget, the budget must have been
//! processed by the disruption controller (`status.observedGeneration` ≥ `generation`) and
//! allow a disruption (`status.disruptionsAllowed` > 0), which the eviction then takes: the
//! budget's `disruptionsAllowed` is decremented and the pod recorded in `disruptedPods`, in the
//! budget's own compare-and-swap, before the pod is deleted. Otherwise 429 TooManyRequests with
//! a `DisruptionBudget` cause: clients retry.

use axum::http::StatusCode;
use axum::response::Response;
use rk3s_datastore::ListOptions;
use serde_json::{Value, json};

use super::handlers::{Ctx, DeleteOptions, body_json, delete_object, guaranteed_update};
use super::object::{decode_stored, labels, meta_str};
use super::ok;
use crate::registry::REGISTRY;
use crate::selectors::{LabelSelector, selector_text};
use crate::status::ApiError;

/// Upstream's message for every refusal on account of a budget.
const VIOLATES: &str = "Cannot evict pod as it would violate the pod's disruption budget.";

pub(crate) async fn evict(ctx: Ctx<'_>, name: &str, body: &[u8]) -> Result<Response, ApiError> {
    let pods = ctx.info();
    let eviction = body_json(ctx.headers, body)?;
    if let Some(n) = eviction
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .filter(|n| *n != name)
    {
        return Err(ApiError::bad_request(format!(
            "name in URL does not match name in Eviction object: {name} vs {n}"
        )));
    }
    let mut opts: DeleteOptions = match eviction.get("deleteOptions") {
        Some(o) if !o.is_null() => serde_json::from_value(o.clone())
            .map_err(|e| ApiError::bad_request(format!("invalid deleteOptions: {e}")))?,
        _ => DeleteOptions::default(),
    };
    if ctx.dry_run() {
        opts.dry_run = Some(vec!["All".into()]);
    }
    let dry_run = opts.is_dry_run();
    let ns = ctx.ns().unwrap_or("default");
    let (_, kv) = ctx.state.store.get(&pods.key(Some(ns), name), 0).await?;
    let pod = decode_stored(&kv.ok_or_else(|| ApiError::not_found(pods, name))?)?;

    let phase = pod
        .get("status")
        .and_then(|s| s.get("phase"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let disrupts = !matches!(phase, "Succeeded" | "Failed" | "Pending")
        && meta_str(&pod, "deletionTimestamp").is_empty();
    if disrupts {
        take_disruption(ctx, ns, name, &pod, dry_run).await?;
    }
    delete_object(ctx.state, pods, Some(ns), name, &opts).await?;
    ok(
        StatusCode::CREATED,
        &json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "code": 201,
        }),
    )
}

/// Checks the pod's budget and, if it allows, takes one disruption from it.
async fn take_disruption(
    ctx: Ctx<'_>,
    ns: &str,
    pod_name: &str,
    pod: &Value,
    dry_run: bool,
) -> Result<(), ApiError> {
    let Some(pdbs) = REGISTRY.find("policy", "v1", "poddisruptionbudgets") else {
        return Ok(());
    };
    let pod_labels = labels(pod);
    let listed = ctx
        .state
        .store
        .list(&pdbs.prefix(Some(ns)), ListOptions::default())
        .await?;
    let mut matching = Vec::new();
    for kv in &listed.kvs {
        let pdb = decode_stored(kv)?;
        // policy/v1: a missing selector selects nothing, an empty one every pod.
        let Some(selector) = pdb.get("spec").and_then(|s| s.get("selector")) else {
            continue;
        };
        let selects = LabelSelector::parse(&selector_text(Some(selector)))
            .is_ok_and(|s| s.matches(&pod_labels));
        if selects {
            matching.push(pdb);
        }
    }
    let pdb = match matching.as_slice() {
        [] => return Ok(()),
        [pdb] => pdb,
        _ => {
            return Err(ApiError::new(
                500,
                "InternalError",
                "This pod has more than one PodDisruptionBudget, which the eviction subresource \
                 does not support.",
            ));
        }
    };
    let pdb_name = meta_str(pdb, "name").to_string();
    let status = |obj: &Value, field: &str| {
        obj.get("status")
            .and_then(|s| s.get(field))
            .and_then(Value::as_i64)
            .unwrap_or(0)
    };
    let ready = pod
        .get("status")
        .and_then(|s| s.get("conditions"))
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter().any(|c| {
                c.get("type").and_then(Value::as_str) == Some("Ready")
                    && c.get("status").and_then(Value::as_str) == Some("True")
            })
        });
    let generation = pdb
        .get("metadata")
        .and_then(|m| m.get("generation"))
        .and_then(Value::as_i64)
        .unwrap_or(0);
    if status(pdb, "observedGeneration") < generation {
        return Err(too_many_requests(format!(
            "The disruption budget {pdb_name} is still being processed by the server."
        )));
    }
    if !ready {
        // An unhealthy pod disrupts nothing the budget protects when the budget is met
        // (IfHealthyBudget, the default), or always (AlwaysAllow).
        let always = pdb
            .get("spec")
            .and_then(|s| s.get("unhealthyPodEvictionPolicy"))
            .and_then(Value::as_str)
            == Some("AlwaysAllow");
        let desired = status(pdb, "desiredHealthy");
        if always || (desired > 0 && status(pdb, "currentHealthy") >= desired) {
            return Ok(());
        }
    }
    let key = pdbs.key(Some(ns), &pdb_name);
    guaranteed_update(ctx.state, pdbs, &key, &pdb_name, dry_run, |old| {
        let allowed = status(old, "disruptionsAllowed");
        if allowed < 0 {
            return Err(ApiError::new(
                403,
                "Forbidden",
                "pdb disruptions allowed is negative",
            ));
        }
        if allowed == 0 {
            return Err(too_many_requests(format!(
                "The disruption budget {pdb_name} needs {} healthy pods and has {} currently",
                status(old, "desiredHealthy"),
                status(old, "currentHealthy"),
            )));
        }
        let mut new = old.clone();
        new["status"]["disruptionsAllowed"] = json!(allowed - 1);
        if !new["status"]
            .get("disruptedPods")
            .is_some_and(Value::is_object)
        {
            new["status"]["disruptedPods"] = json!({});
        }
        new["status"]["disruptedPods"][pod_name] = json!(crate::time::now_rfc3339());
        Ok(new)
    })
    .await?;
    Ok(())
}

fn too_many_requests(cause: String) -> ApiError {
    ApiError {
        details: Some(json!({"causes": [{"reason": "DisruptionBudget", "message": cause}]})),
        ..ApiError::new(429, "TooManyRequests", VIOLATES)
    }
}
