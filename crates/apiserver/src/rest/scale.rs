//! The `scale` subresource (`autoscaling/v1` `Scale`) of deployments, replicasets,
//! statefulsets and replicationcontrollers: what `kubectl scale` and autoscalers use. Writes
//! are admitted by the admission webhooks as UPDATEs of the Scale (see [`write`]).

use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};

use super::handlers::{Ctx, body_json, content_type, guaranteed_update, merge_update};
use super::object::{meta_str, request_resource_version};
use super::ok;
use crate::admission_webhook::Operation;
use crate::registry::ResourceInfo;
use crate::status::ApiError;

/// The segments of a scale path (`.spec.replicas`).
fn segments(path: &str) -> Vec<&str> {
    path.split('.').filter(|s| !s.is_empty()).collect()
}

fn value_at<'a>(obj: &'a Value, path: &str) -> Option<&'a Value> {
    segments(path)
        .into_iter()
        .try_fold(obj, |v, seg| v.get(seg))
}

/// Sets `value` at `path`, creating the objects on the way.
fn set_at(obj: &mut Value, path: &str, value: Value) {
    let segs = segments(path);
    let Some((last, parents)) = segs.split_last() else {
        return;
    };
    let mut cur = obj;
    for seg in parents {
        if !cur.get(*seg).is_some_and(Value::is_object) {
            cur[*seg] = json!({});
        }
        cur = &mut cur[*seg];
    }
    cur[*last] = value;
}

/// The Scale view of an object of `info`: a built-in workload (`spec.replicas`,
/// `status.replicas`, `spec.selector`), or a custom resource through its CRD's scale paths.
pub(crate) fn to_scale_of(info: &ResourceInfo, obj: &Value) -> Value {
    let Some(paths) = info.custom.as_ref().and_then(|c| c.scale.as_ref()) else {
        return to_scale(obj);
    };
    let mut scale = to_scale(obj);
    let int = |p: &str| value_at(obj, p).and_then(Value::as_i64).unwrap_or(0);
    scale["spec"]["replicas"] = json!(int(&paths.spec_replicas));
    scale["status"]["replicas"] = json!(int(&paths.status_replicas));
    scale["status"]["selector"] = json!(
        paths
            .label_selector
            .as_deref()
            .and_then(|p| value_at(obj, p))
            .and_then(Value::as_str)
            .unwrap_or("")
    );
    scale
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
            "selector": crate::selectors::selector_text(spec.and_then(|s| s.get("selector"))),
        },
    })
}

pub(crate) async fn get(ctx: Ctx<'_>, name: &str) -> Result<Response, ApiError> {
    let info = ctx.info();
    let (_, kv) = ctx.state.store.get(&info.key(ctx.ns(), name), 0).await?;
    let kv = kv.ok_or_else(|| ApiError::not_found(info, name))?;
    ok(
        StatusCode::OK,
        &to_scale_of(
            info,
            &super::object::decode_served(ctx.state, info, &kv).await?,
        ),
    )
}

/// How the new Scale is made from the current one.
enum Change {
    Replace(Value),
    Patch(super::patch::PatchKind, Value),
}

/// How often the Scale is admitted again when the object changed under the admission.
const MAX_ADMISSIONS: usize = 16;

impl Change {
    /// The Scale the request makes of the `current` one.
    fn apply(&self, current: &Value) -> Result<Value, ApiError> {
        match self {
            Change::Replace(s) => Ok(s.clone()),
            Change::Patch(kind, p) => {
                super::patch::apply(*kind, current, p, Some(crate::patch_meta::Node::any()))
            }
        }
    }
}

/// `spec.replicas` of a Scale, refused when negative (upstream's `ValidateScale`).
fn replicas_of(scale: &Value, name: &str) -> Result<i64, ApiError> {
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
    Ok(replicas)
}

/// Writes a Scale. Admission webhooks see it as upstream sends it: an UPDATE of the
/// `autoscaling/v1` `Scale` (old: the current object's Scale), mutating ones before its
/// validation, validating ones after; when the object changed since, it is admitted again.
async fn write(ctx: Ctx<'_>, name: &str, change: Change) -> Result<Response, ApiError> {
    let info = ctx.info();
    let key = info.key(ctx.ns(), name);
    let writer = crate::apply::Writer {
        subresource: "scale",
        ..ctx.writer()
    };
    let state = ctx.state;
    for _ in 0..MAX_ADMISSIONS {
        let (_, kv) = state.store.get(&key, 0).await?;
        let kv = kv.ok_or_else(|| ApiError::not_found(info, name))?;
        let read = super::object::decode_served(state, info, &kv).await?;
        let old_scale = to_scale_of(info, &read);
        let mut scale = change.apply(&old_scale)?;
        let update = Operation::Update;
        crate::admission_webhook::mutate(state, info, update, Some(&mut scale), Some(&old_scale))
            .await?;
        replicas_of(&scale, name)?;
        crate::admission_webhook::validate(state, info, update, Some(&scale), Some(&old_scale))
            .await?;
        let read_version = meta_str(&read, "resourceVersion").to_string();
        let mut moved = false;
        let result = guaranteed_update(state, info, &key, name, ctx.dry_run(), |old| {
            if meta_str(old, "resourceVersion") != read_version {
                moved = true;
                return Err(ApiError::conflict(info, name));
            }
            if let Some(rv) = request_resource_version(&scale)?
                && meta_str(old, "resourceVersion") != rv.to_string()
            {
                return Err(ApiError::conflict(info, name));
            }
            let replicas = replicas_of(&scale, name)?;
            let mut new = old.clone();
            let path = info
                .custom
                .as_ref()
                .and_then(|c| c.scale.as_ref())
                .map_or(".spec.replicas", |s| s.spec_replicas.as_str());
            set_at(&mut new, path, json!(replicas));
            // A custom resource's schema still holds (e.g. a `maximum` on the replicas field).
            if let Some(schema) = info.custom.as_ref().and_then(|c| c.schema.as_ref()) {
                let causes = crate::crd::schema::validate(schema, &new);
                if !causes.is_empty() {
                    return Err(ApiError::invalid(info, name, causes));
                }
            }
            let mut new = merge_update(info, old, &new, false)?;
            // Recorded on the parent, as upstream does: `spec.replicas` with subresource `scale`.
            crate::apply::track_update(&writer, Some(old), &mut new);
            Ok(new)
        })
        .await;
        if moved {
            // Changed since the admission: admitted again on what it is now.
            continue;
        }
        return ok(StatusCode::OK, &to_scale_of(info, &result?));
    }
    Err(ApiError::conflict(info, name))
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
        assert_eq!(
            crate::selectors::selector_text(Some(&json!({"app": "rc"}))),
            "app=rc"
        );
    }
}
