//! Object helpers: the stored form, metadata access, the system fields set on create.

use std::collections::BTreeMap;

use rk3s_datastore::KeyValue;
use serde_json::{Map, Value, json};

use crate::crd::conversion;
use crate::registry::ResourceInfo;
use crate::server::AppState;
use crate::status::ApiError;

/// An object as read from the store, with `metadata.resourceVersion` set to the key's mod
/// revision.
pub(crate) fn decode_stored(kv: &KeyValue) -> Result<Value, ApiError> {
    let mut obj: Value = serde_json::from_slice(&kv.value).map_err(|e| {
        ApiError::internal(format!(
            "stored object {} is not JSON: {e}",
            String::from_utf8_lossy(&kv.key)
        ))
    })?;
    set_resource_version(&mut obj, kv.mod_revision);
    Ok(obj)
}

/// A stored object (as [`decode_stored`] returns it) in the form `info` serves: converted
/// for a built-in served by conversion, with the served `apiVersion` for a custom resource
/// (conversion `None`; a CRD converting by webhook needs [`served_object`]).
pub(crate) fn served_form(info: &ResourceInfo, mut obj: Value) -> Value {
    if let Some(conversion) = info.conversion {
        return (conversion.from_storage)(obj);
    }
    if info.custom.is_some()
        && let Some(o) = obj.as_object_mut()
    {
        o.insert("apiVersion".into(), json!(info.api_version()));
    }
    obj
}

/// The bytes stored for an object of `info`: a custom resource is stored in its CRD's storage
/// version (conversion `None`: only `apiVersion` changes; a CRD converting by webhook needs
/// [`encode_stored`]), as upstream.
pub(crate) fn encode_as(info: &ResourceInfo, obj: &Value) -> Result<Vec<u8>, ApiError> {
    if let Some(conversion) = info.conversion {
        return encode_for_store(&(conversion.to_storage)(obj.clone()));
    }
    match info.custom.as_ref().map(|c| c.storage_version) {
        Some(storage) if storage != info.version => {
            let mut obj = obj.clone();
            if let Some(o) = obj.as_object_mut() {
                o.insert(
                    "apiVersion".into(),
                    json!(format!("{}/{storage}", info.group)),
                );
            }
            encode_for_store(&obj)
        }
        _ => encode_for_store(obj),
    }
}

/// An object of `info` as read from the store, in the form `info` serves ([`served_object`]):
/// a custom resource is shown in the version it is read through (conversion `None`: only
/// `apiVersion` changes; a CRD converting by webhook is called, see `crate::crd::conversion`).
pub(crate) async fn decode_served(
    state: &AppState,
    info: &ResourceInfo,
    kv: &KeyValue,
) -> Result<Value, ApiError> {
    served_object(state, info, decode_stored(kv)?).await
}

/// One stored object (as [`decode_stored`] returns it) in the form `info` serves: by webhook,
/// or [`served_form`].
pub(crate) async fn served_object(
    state: &AppState,
    info: &ResourceInfo,
    stored: Value,
) -> Result<Value, ApiError> {
    if !conversion::by_webhook(state, info) {
        return Ok(served_form(info, stored));
    }
    let mut served = conversion::convert(state, info, vec![stored], info.version, false).await?;
    served
        .pop()
        .ok_or_else(|| ApiError::internal("conversion lost the object"))
}

/// What a write of `bytes` at `revision` (`None`: a dry run) answers when its CRD converts by
/// webhook: what was stored, converted again to the version written through (upstream
/// decodes what it stored through the same conversion: a lossy webhook shows).
pub(crate) async fn read_back(
    state: &AppState,
    info: &ResourceInfo,
    bytes: &[u8],
    revision: Option<i64>,
) -> Result<Value, ApiError> {
    let mut stored: Value = serde_json::from_slice(bytes).map_err(ApiError::internal)?;
    if let Some(revision) = revision {
        set_resource_version(&mut stored, revision);
    }
    served_object(state, info, stored).await
}

/// Stored objects (as [`decode_stored`] returns them) in the form `info` serves, the items of
/// one list: by webhook in one review for all those stored in another version, or
/// [`served_form`].
pub(crate) async fn served_objects(
    state: &AppState,
    info: &ResourceInfo,
    stored: Vec<Value>,
) -> Result<Vec<Value>, ApiError> {
    if !conversion::by_webhook(state, info) {
        return Ok(stored.into_iter().map(|o| served_form(info, o)).collect());
    }
    conversion::convert(state, info, stored, info.version, true).await
}

/// [`encode_as`] for any conversion strategy: a custom resource whose CRD converts by webhook
/// is converted to the storage version by calling it.
pub(crate) async fn encode_stored(
    state: &AppState,
    info: &ResourceInfo,
    obj: &Value,
) -> Result<Vec<u8>, ApiError> {
    let Some(custom) = info
        .custom
        .as_ref()
        .filter(|_| conversion::by_webhook(state, info))
    else {
        return encode_as(info, obj);
    };
    let mut stored = conversion::convert(
        state,
        info,
        vec![obj.clone()],
        custom.storage_version,
        false,
    )
    .await?;
    let stored = stored
        .pop()
        .ok_or_else(|| ApiError::internal("conversion lost the object"))?;
    encode_for_store(&stored)
}

/// The bytes stored for an object: without `metadata.resourceVersion`, which the store owns.
pub(crate) fn encode_for_store(obj: &Value) -> Result<Vec<u8>, ApiError> {
    let mut obj = obj.clone();
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("resourceVersion");
    }
    serde_json::to_vec(&obj).map_err(ApiError::internal)
}

pub(crate) fn set_resource_version(obj: &mut Value, revision: i64) {
    if let Some(meta) = metadata_mut(obj) {
        meta.insert("resourceVersion".into(), json!(revision.to_string()));
    }
}

/// `metadata`, created if missing; `None` if the object is not a JSON object.
pub(crate) fn metadata_mut(obj: &mut Value) -> Option<&mut Map<String, Value>> {
    let o = obj.as_object_mut()?;
    let meta = o
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    if !meta.is_object() {
        *meta = Value::Object(Map::new());
    }
    meta.as_object_mut()
}

/// A string field of `metadata`, empty when absent.
pub(crate) fn meta_str<'a>(obj: &'a Value, field: &str) -> &'a str {
    obj.get("metadata")
        .and_then(|m| m.get(field))
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// `metadata.labels`.
pub(crate) fn labels(obj: &Value) -> BTreeMap<String, String> {
    obj.get("metadata")
        .and_then(|m| m.get("labels"))
        .and_then(Value::as_object)
        .map(|l| {
            l.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// The parsed `metadata.resourceVersion` of a request object, if set. A non-numeric one is a
/// 400, as upstream.
pub(crate) fn request_resource_version(obj: &Value) -> Result<Option<i64>, ApiError> {
    match meta_str(obj, "resourceVersion") {
        "" => Ok(None),
        rv => rv
            .parse::<i64>()
            .map(Some)
            .map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv:?}"))),
    }
}

/// A random UUID (version 4), the form of `metadata.uid`.
pub(crate) fn new_uid() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Checks `apiVersion`/`kind` of a request body against the resource, filling them in when
/// absent. A mismatch is a 400, as upstream.
pub(crate) fn check_type(obj: &mut Value, info: &ResourceInfo) -> Result<(), ApiError> {
    let api_version = info.api_version();
    let o = obj
        .as_object_mut()
        .ok_or_else(|| ApiError::bad_request("the request body is not a JSON object"))?;
    match o.get("apiVersion").and_then(Value::as_str) {
        None | Some("") => {
            o.insert("apiVersion".into(), json!(api_version));
        }
        Some(v) if v == api_version => {}
        Some(v) => {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({v}) does not match the expected API version \
                 ({api_version})"
            )));
        }
    }
    match o.get("kind").and_then(Value::as_str) {
        None | Some("") => {
            o.insert("kind".into(), json!(info.kind));
        }
        Some(k) if k == info.kind => {}
        Some(k) => {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({k}) does not match the expected kind ({})",
                info.kind
            )));
        }
    }
    Ok(())
}

/// Decodes into the typed form and back (schema check, unknown fields dropped).
pub(crate) fn typed_roundtrip(obj: Value, info: &ResourceInfo) -> Result<Value, ApiError> {
    (info.roundtrip)(obj).map_err(|e| {
        ApiError::bad_request(format!(
            "{kind} in version \"{version}\" cannot be handled as a {kind}: {e}",
            kind = info.kind,
            version = info.version
        ))
    })
}

/// How unknown fields in a request are treated (`fieldValidation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FieldValidation {
    Ignore,
    /// The default: accept, drop, and warn.
    Warn,
    Strict,
}

impl FieldValidation {
    pub(crate) fn from_query(q: &super::Query) -> Result<Self, ApiError> {
        match q.get("fieldValidation").map(String::as_str) {
            None | Some("") | Some("Warn") => Ok(FieldValidation::Warn),
            Some("Ignore") => Ok(FieldValidation::Ignore),
            Some("Strict") => Ok(FieldValidation::Strict),
            Some(other) => Err(ApiError::bad_request(format!(
                "fieldValidation must be one of Ignore, Warn or Strict, not {other:?}"
            ))),
        }
    }
}

/// Paths (`spec.foo`, `spec.containers[0].bogus`) present with a value in `original` and gone
/// from its typed round trip: the unknown fields.
pub(crate) fn unknown_fields(original: &Value, typed: &Value) -> Vec<String> {
    fn walk(o: &Value, t: &Value, path: &str, out: &mut Vec<String>) {
        match (o, t) {
            (Value::Object(om), Value::Object(tm)) => {
                for (k, v) in om {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    match tm.get(k) {
                        Some(tv) => walk(v, tv, &p, out),
                        None if !v.is_null() => out.push(p),
                        None => {}
                    }
                }
            }
            (Value::Array(oa), Value::Array(ta)) => {
                for (i, (ov, tv)) in oa.iter().zip(ta).enumerate() {
                    walk(ov, tv, &format!("{path}[{i}]"), out);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(original, typed, "", &mut out);
    out
}

/// The typed round trip under a field validation directive: Strict refuses unknown fields,
/// Warn returns them as warnings.
pub(crate) fn typed_roundtrip_checked(
    obj: Value,
    info: &ResourceInfo,
    validation: FieldValidation,
) -> Result<(Value, Vec<String>), ApiError> {
    if let Some(custom) = &info.custom {
        return custom_checked(obj, info, custom, validation);
    }
    let typed = typed_roundtrip(obj.clone(), info)?;
    if validation == FieldValidation::Ignore {
        return Ok((typed, Vec::new()));
    }
    let unknown: Vec<String> = unknown_fields(&obj, &typed)
        .into_iter()
        .map(|f| format!("unknown field \"{f}\""))
        .collect();
    if validation == FieldValidation::Strict && !unknown.is_empty() {
        return Err(ApiError::bad_request(format!(
            "{kind} in version \"{version}\" cannot be handled as a {kind}: strict decoding error: {}",
            unknown.join(", "),
            kind = info.kind,
            version = info.version,
        )));
    }
    Ok((typed, unknown))
}

/// [`typed_roundtrip_checked`] for a custom resource: `metadata` through the typed
/// `ObjectMeta`, then the CRD's structural schema: pruning (unknown fields reported as for
/// built-ins) and defaults.
fn custom_checked(
    mut obj: Value,
    info: &ResourceInfo,
    custom: &crate::crd::CustomVersion,
    validation: FieldValidation,
) -> Result<(Value, Vec<String>), ApiError> {
    let cannot = |e: String| {
        ApiError::bad_request(format!(
            "{kind} in version \"{version}\" cannot be handled as a {kind}: {e}",
            kind = info.kind,
            version = info.version
        ))
    };
    let Some(o) = obj.as_object_mut() else {
        return Err(cannot("the object is not a JSON object".into()));
    };
    let meta = o.get("metadata").cloned().unwrap_or_else(|| json!({}));
    let typed: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta =
        serde_json::from_value(meta.clone()).map_err(|e| cannot(e.to_string()))?;
    let typed = serde_json::to_value(typed).map_err(|e| cannot(e.to_string()))?;
    let mut unknown: Vec<String> = unknown_fields(&meta, &typed)
        .into_iter()
        .map(|f| format!("metadata.{f}"))
        .collect();
    o.insert("metadata".into(), typed);
    if let Some(schema) = &custom.schema {
        unknown.extend(crate::crd::schema::prune(schema, &mut obj));
    }
    let unknown: Vec<String> = unknown
        .into_iter()
        .map(|f| format!("unknown field \"{f}\""))
        .collect();
    if validation == FieldValidation::Strict && !unknown.is_empty() {
        return Err(cannot(format!(
            "strict decoding error: {}",
            unknown.join(", ")
        )));
    }
    // Validation (schema and CEL) runs on the object as it will be stored, with the stored
    // object on updates: `check_crd` in the handlers.
    if let Some(schema) = &custom.schema {
        crate::crd::schema::apply_defaults(schema, &mut obj);
    }
    let warnings = if validation == FieldValidation::Ignore {
        Vec::new()
    } else {
        unknown
    };
    Ok((obj, warnings))
}

/// Everything but `metadata` and `status`: what a generation bump looks at.
pub(crate) fn spec_part(obj: &Value) -> Value {
    let mut o = obj.clone();
    if let Some(m) = o.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
        m.remove("apiVersion");
        m.remove("kind");
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_unknown_fields() {
        let cm = crate::registry::REGISTRY
            .find("", "v1", "configmaps")
            .expect("cm");
        let obj = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "a", "bogus": 1, "creationTimestamp": null}, "data": {"k": "v"}, "extra": {}});
        let (_, warnings) =
            typed_roundtrip_checked(obj.clone(), cm, FieldValidation::Warn).expect("warn");
        assert_eq!(
            warnings,
            vec![
                r#"unknown field "extra""#.to_string(),
                r#"unknown field "metadata.bogus""#.to_string()
            ]
        );
        let err =
            typed_roundtrip_checked(obj.clone(), cm, FieldValidation::Strict).expect_err("strict");
        assert_eq!(err.code, 400);
        assert!(
            err.message.ends_with(
                r#"strict decoding error: unknown field "extra", unknown field "metadata.bogus""#
            ),
            "{}",
            err.message
        );
        let (_, none) = typed_roundtrip_checked(obj, cm, FieldValidation::Ignore).expect("ignore");
        assert!(none.is_empty());
    }

    #[test]
    fn uids_are_v4() {
        let u = new_uid();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert!(matches!(&u[19..20], "8" | "9" | "a" | "b"));
        assert_ne!(u, new_uid());
    }

    #[test]
    fn stored_form_has_no_resource_version() {
        let obj = json!({"metadata": {"name": "a", "resourceVersion": "7"}});
        let bytes = encode_for_store(&obj).expect("encodes");
        let kv = KeyValue {
            key: b"k".to_vec(),
            value: bytes.clone(),
            mod_revision: 9,
            ..KeyValue::default()
        };
        assert!(!String::from_utf8_lossy(&bytes).contains("resourceVersion"));
        assert_eq!(
            decode_stored(&kv).expect("decodes")["metadata"]["resourceVersion"],
            "9"
        );
    }
}
