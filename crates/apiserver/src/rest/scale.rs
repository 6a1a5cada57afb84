//! The `scale` subresource (`autoscaling/v1` `Scale`) of deployments, replicasets,
//! statefulsets and replicationcontrollers: what `kubectl scale` and autoscalers use.

use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};

use super::handlers::{Ctx, body_json, content_type, guaranteed_update, merge_update};
use super::object::{meta_str, request_resource_version};
use super::ok;
use crate::status::ApiError;

/// A label selector object (`matchLabels`, `matchExpressions`) as selector text, or a plain
/// map (replicationcontrollers) as `k=v,...`.
fn selector_string(sel: Option<&Value>) -> String {
    let Some(sel) = sel.and_then(Value::as_object) else {
        return String::new();
    };
    let has_structure = sel.contains_key("matchLabels") || sel.contains_key("matchExpressions");
    let mut parts = Vec::new();
    let labels = if has_structure {
        sel.get("matchLabels").and_then(Value::as_object)
    } else {
        Some(sel)
    };
    if let Some(labels) = labels {
        for (k, v) in labels {
            parts.push(format!("{k}={}", v.as_str().unwrap_or("")));
        }
    }
    for e in sel
        .get("matchExpressions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let key = e.get("key").and_then(Value::as_str).unwrap_or("");
        let values: Vec<&str> = e
            .get("values")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        match e.get("operator").and_then(Value::as_str).unwrap_or("") {
            "In" => parts.push(format!("{key} in ({})", values.join(","))),
            "NotIn" => parts.push(format!("{key} notin ({})", values.join(","))),
            "Exists" => parts.push(key.to_string()),
            "DoesNotExist" => parts.push(format!("!{key}")),
            _ => {}
        }
    }
    parts.join(",")
}

/// The Scale view of a workload.
pub(crate) fn to_scale(obj: &Value) -> Value {
    let meta = obj.get("metadata").cloned().unwrap_or_else(|| json!({}));
    let mut m = json!({});
    for f in [
        "name",
        "namespace",
        "uid",
        "resourceVersion",
        "creationTimestamp",
    ] {
        if let Some(v) = meta.get(f) {
            m[f] = v.clone();
        }
    }
    let spec = obj.get("spec");
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": m,
        "spec": { "replicas": spec.and_then(|s| s.get("replicas")).and_then(Value::as_i64).unwrap_or(0) },
        "status": {
            "replicas": obj.get("status").and_then(|s| s.get("replicas")).and_then(Value::as_i64).unwrap_or(0),
            "selector": selector_string(spec.and_then(|s| s.get("selector"))),
        },
    })
}

pub(crate) async fn get(ctx: Ctx<'_>, name: &str) -> Result<Response, ApiError> {
    let info = ctx.info();
    let (_, kv) = ctx.state.store.get(&info.key(ctx.ns(), name), 0).await?;
    let kv = kv.ok_or_else(|| ApiError::not_found(info, name))?;
    ok(
        StatusCode::OK,
        &to_scale(&super::object::decode_stored(&kv)?),
    )
}

/// How the new Scale is made from the current one.
enum Change {
    Replace(Value),
    Patch(super::patch::PatchKind, Value),
}

async fn write(ctx: Ctx<'_>, name: &str, change: Change) -> Result<Response, ApiError> {
    let info = ctx.info();
    let key = info.key(ctx.ns(), name);
    let writer = crate::apply::Writer {
        subresource: "scale",
        ..ctx.writer()
    };
    let obj = guaranteed_update(ctx.state, info, &key, name, ctx.dry_run(), |old| {
        let current = to_scale(old);
        let scale = match &change {
            Change::Replace(s) => s.clone(),
            Change::Patch(kind, p) => {
                super::patch::apply(*kind, &current, p, Some(crate::patch_meta::Node::any()))?
            }
        };
        if let Some(rv) = request_resource_version(&scale)?
            && meta_str(old, "resourceVersion") != rv.to_string()
        {
            return Err(ApiError::conflict(info, name));
        }
        let replicas = scale
            .get("spec")
            .and_then(|s| s.get("replicas"))
            .and_then(Value::as_i64)
            .unwrap_or(0);
        if replicas < 0 {
            return Err(ApiError::new(
                422,
                "Invalid",
                format!(
                    "Scale.autoscaling \"{name}\" is invalid: spec.replicas: Invalid value: {replicas}: must be greater than or equal to 0"
                ),
            ));
        }
        let mut new = old.clone();
        new["spec"]["replicas"] = json!(replicas);
        let mut new = merge_update(info, old, &new, false)?;
        // Recorded on the parent, as upstream does: `spec.replicas` with subresource `scale`.
        crate::apply::track_update(&writer, Some(old), &mut new);
        Ok(new)
    })
    .await?;
    ok(StatusCode::OK, &to_scale(&obj))
}

pub(crate) async fn update(ctx: Ctx<'_>, name: &str, body: &[u8]) -> Result<Response, ApiError> {
    let scale = body_json(ctx.headers, body)?;
    write(ctx, name, Change::Replace(scale)).await
}

pub(crate) async fn patch(ctx: Ctx<'_>, name: &str, body: &[u8]) -> Result<Response, ApiError> {
    let ct = content_type(ctx.headers);
    let kind = super::patch::PatchKind::from_media_type(&ct)
        .ok_or_else(|| ApiError::unsupported_media_type(&ct))?;
    let patch: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the patch is not valid JSON: {e}")))?;
    write(ctx, name, Change::Patch(kind, patch)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_view_of_a_deployment() {
        let d = json!({"metadata": {"name": "d", "namespace": "n", "resourceVersion": "4", "labels": {"x": "y"}},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "d"},
                "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]}]}},
            "status": {"replicas": 2}});
        let s = to_scale(&d);
        assert_eq!(s["spec"]["replicas"], 3);
        assert_eq!(s["status"]["replicas"], 2);
        assert_eq!(s["status"]["selector"], "app=d,tier in (a,b)");
        assert_eq!(s["metadata"]["resourceVersion"], "4");
        assert!(s["metadata"].get("labels").is_none());
        assert_eq!(selector_string(Some(&json!({"app": "rc"}))), "app=rc");
    }
}
