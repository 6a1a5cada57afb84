//! Conversion of custom resources between the versions of their CRD (upstream's
//! `crConverter` with the `nopConverter` or the `webhookConverter`).
//!
//! - Strategy `None`: only `apiVersion` changes (`rest::object::served_form`/`encode_as`,
//!   synchronous; nothing here is called).
//! - Strategy `Webhook`: objects whose `apiVersion` is not the desired one are posted in one
//!   `ConversionReview` (`apiextensions.k8s.io/v1` or `v1beta1`, the first of the CRD's
//!   `conversionReviewVersions` this server speaks) to the CRD's `clientConfig`
//!   ([`crate::webhook::ClientConfig`], 30 s as upstream); the answer is checked as upstream
//!   checks it (review kind and `uid` for v1, `result.status`, as many objects as sent, each
//!   with the desired `apiVersion`, the same kind, name, namespace and uid), and each converted
//!   object gets the original's `metadata` back except its labels and annotations
//!   (`restoreObjectMeta`, which validates changed ones). The converted object is pruned and
//!   defaulted with the target version's schema (upstream's `schemaCoercingConverter` and
//!   storage decoder). Failures are upstream's errors: 500 with an empty reason and
//!   `conversion webhook for <group/version>, Kind=<Kind> failed: ...` (or `returned ...`).
//!
//! Reads convert from the stored version to the one asked for, writes from the request's
//! version to the storage version: `rest::object::{decode_served, served_objects,
//! encode_stored}` call [`convert`] when [`by_webhook`] says so. A watch converts each event
//! once per served version for all its watchers ([`once_per_event`]).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, LazyLock, Mutex, PoisonError, Weak};
use std::time::Duration;

use axum::body::Bytes;
use serde_json::{Map, Value, json};

use crate::registry::ResourceInfo;
use crate::server::AppState;
use crate::status::ApiError;
use crate::watch_cache::CachedEvent;
use crate::webhook::ClientConfig;

/// How long a conversion webhook may take (upstream's webhook client default; the request
/// carries `?timeout=30s`).
const TIMEOUT: Duration = Duration::from_secs(30);

/// The `Webhook` conversion strategy of one CRD.
#[derive(Debug)]
pub(crate) struct Webhook {
    /// `spec.conversion.webhook.clientConfig`, or why it cannot be used.
    client: Result<ClientConfig, String>,
    /// `spec.conversion.webhook.conversionReviewVersions`.
    review_versions: Vec<String>,
    /// `openAPIV3Schema` by version name: what converted objects are pruned and defaulted with.
    schemas: BTreeMap<String, Value>,
}

impl Webhook {
    /// The webhook strategy of `crd`, if it has one.
    pub(crate) fn of(crd: &Value) -> Option<Webhook> {
        let spec = crd.get("spec")?;
        let conversion = spec.get("conversion")?;
        if conversion.get("strategy").and_then(Value::as_str) != Some("Webhook") {
            return None;
        }
        let webhook = conversion.get("webhook").unwrap_or(&Value::Null);
        let client = match webhook.get("clientConfig") {
            Some(c) => ClientConfig::parse(c).map_err(|e| e.to_string()),
            None => Err("webhook clientConfig has neither url nor service".into()),
        };
        let review_versions = webhook
            .get("conversionReviewVersions")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        let schemas = spec
            .get("versions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|v| {
                let name = v.get("name").and_then(Value::as_str)?;
                let schema = v.get("schema")?.get("openAPIV3Schema")?;
                Some((name.to_string(), schema.clone()))
            })
            .collect();
        Some(Webhook {
            client,
            review_versions,
            schemas,
        })
    }
}

/// The webhook that converts `info`'s objects, if its CRD's strategy is `Webhook`.
pub(crate) fn webhook_of(state: &AppState, info: &ResourceInfo) -> Option<Arc<Webhook>> {
    info.custom.as_ref()?;
    state.crds.snapshot().webhook(info.storage)
}

/// Whether `info`'s objects are converted by a webhook (else conversion is synchronous).
pub(crate) fn by_webhook(state: &AppState, info: &ResourceInfo) -> bool {
    webhook_of(state, info).is_some()
}

/// A conversion failure as upstream answers it: 500, reason `Unknown` (empty).
fn failure(message: String) -> ApiError {
    tracing::debug!(%message, "conversion webhook");
    ApiError::new(500, "", message)
}

/// Go's `GroupVersionKind.String()` of an object: `group/version, Kind=Kind`.
fn gvk_text(api_version: &str, kind: &str) -> String {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    format!("{group}/{version}, Kind={kind}")
}

/// Go's `GroupVersion.String()` of an `apiVersion` (`v1` for the core group).
fn gv_text(api_version: &str) -> &str {
    api_version.strip_prefix('/').unwrap_or(api_version)
}

fn str_of<'a>(v: &'a Value, field: &str) -> &'a str {
    v.get(field).and_then(Value::as_str).unwrap_or("")
}

fn meta_of<'a>(v: &'a Value, field: &str) -> &'a str {
    v.get("metadata")
        .and_then(|m| m.get(field))
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// Go's name of the type a JSON value decodes to in an unstructured object.
fn go_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "<nil>",
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_f64() => "float64",
        Value::Number(_) => "int64",
        Value::String(_) => "string",
        Value::Array(_) => "[]interface {}",
        Value::Object(_) => "map[string]interface {}",
    }
}

/// `objects` of `info`'s resource in `version`: those already in it are kept, the others
/// converted by the CRD's webhook in one review (`list`: the objects are a list's items,
/// which words the errors as upstream's list conversion does). Without a webhook, only
/// `apiVersion` changes.
pub(crate) async fn convert(
    state: &AppState,
    info: &ResourceInfo,
    mut objects: Vec<Value>,
    version: &str,
    list: bool,
) -> Result<Vec<Value>, ApiError> {
    let desired = format!("{}/{version}", info.group);
    let pending: Vec<usize> = objects
        .iter()
        .enumerate()
        .filter(|(_, o)| str_of(o, "apiVersion") != desired)
        .map(|(i, _)| i)
        .collect();
    if pending.is_empty() {
        return Ok(objects);
    }
    let Some(webhook) = webhook_of(state, info) else {
        for i in pending {
            if let Some(o) = objects[i].as_object_mut() {
                o.insert("apiVersion".into(), json!(desired));
            }
        }
        return Ok(objects);
    };
    // What upstream names in its messages: the object converted, or the list.
    let what = if list {
        gvk_text(&desired, info.list_kind)
    } else {
        gvk_text(
            str_of(&objects[pending[0]], "apiVersion"),
            str_of(&objects[pending[0]], "kind"),
        )
    };
    let sent: Vec<Value> = pending.iter().map(|i| objects[*i].clone()).collect();
    let converted = call(state, &webhook, &desired, sent, &what).await?;
    if converted.len() != pending.len() {
        return Err(failure(format!(
            "conversion webhook for {what} returned {} objects, expected {}",
            converted.len(),
            pending.len()
        )));
    }
    let schema = webhook.schemas.get(version);
    for (n, (i, mut out)) in pending.into_iter().zip(converted).enumerate() {
        let original = &objects[i];
        checked(original, &mut out, &desired).map_err(|why| {
            failure(format!(
                "conversion webhook for {what} {}",
                why.worded(list, n)
            ))
        })?;
        if let Some(schema) = schema {
            crate::crd::schema::prune(schema, &mut out);
            crate::crd::schema::apply_defaults(schema, &mut out);
        }
        objects[i] = out;
    }
    Ok(objects)
}

/// Why a converted object is refused, and how upstream words it for one object or a list.
#[derive(Debug)]
enum Refusal {
    /// Not an object at all.
    Decode(String),
    GroupVersion(String, String),
    Kind(String, String),
    Invalid(String),
    Metadata(String),
}

impl Refusal {
    /// The message after `conversion webhook for <gvk> `. Upstream's list conversion counts
    /// the object before it checks it: its index in messages is one past the object's.
    fn worded(&self, list: bool, n: usize) -> String {
        let (object, at) = if list {
            ("converted object", n + 1)
        } else {
            ("object", 0)
        };
        match self {
            Refusal::Decode(e) if list => {
                format!("returned invalid converted object at index {n}: {e}")
            }
            Refusal::Decode(e) => format!("failed: {e}"),
            Refusal::GroupVersion(want, got) => format!(
                "returned invalid {object} at index {at}: invalid groupVersion (expected {want}, received {got})"
            ),
            Refusal::Kind(want, got) => format!(
                "returned invalid {object} at index {at}: invalid kind (expected {want}, received {got})"
            ),
            Refusal::Invalid(e) if list => {
                format!("returned invalid converted object at index {at}: {e}")
            }
            Refusal::Invalid(e) => format!("returned invalid object: {e}"),
            Refusal::Metadata(e) if list => {
                format!("returned invalid metadata in object at index {at}: {e}")
            }
            Refusal::Metadata(e) => format!("returned invalid metadata: {e}"),
        }
    }
}

/// Upstream's checks of one converted object, and its `restoreObjectMeta`.
fn checked(original: &Value, out: &mut Value, desired: &str) -> Result<(), Refusal> {
    if !out.is_object() {
        return Err(Refusal::Decode(format!(
            "json: cannot unmarshal {} into Go value of type map[string]interface {{}}",
            go_type(out)
        )));
    }
    let got = str_of(out, "apiVersion");
    if got != desired {
        return Err(Refusal::GroupVersion(
            gv_text(desired).to_string(),
            gv_text(got).to_string(),
        ));
    }
    let (want_kind, got_kind) = (str_of(original, "kind"), str_of(out, "kind"));
    if want_kind != got_kind {
        return Err(Refusal::Kind(want_kind.into(), got_kind.into()));
    }
    // validateConvertedObject: the object's identity is the original's.
    for (field, what) in [("name", "name"), ("namespace", "namespace"), ("uid", "UID")] {
        let (a, b) = (meta_of(original, field), meta_of(out, field));
        if a != b {
            return Err(Refusal::Invalid(format!(
                "must have the same {what}: {a} != {b}"
            )));
        }
    }
    restore_object_meta(original, out).map_err(Refusal::Metadata)
}

/// Upstream's `restoreObjectMeta`: the converted object gets the original's `metadata`, with
/// the labels and annotations the webhook returned (validated if they changed).
fn restore_object_meta(original: &Value, out: &mut Value) -> Result<(), String> {
    let response_meta = match out.get("metadata") {
        None => return Err("missing metadata in converted object".into()),
        Some(Value::Object(m)) => m.clone(),
        Some(other) => {
            return Err(format!(
                "invalid metadata of type {} in converted object",
                go_type(other)
            ));
        }
    };
    let mut meta = match original.get("metadata") {
        Some(Value::Object(m)) => m.clone(),
        Some(other) => {
            return Err(format!(
                "invalid metadata of type {} in input object",
                go_type(other)
            ));
        }
        None => Map::new(),
    };
    for field in ["labels", "annotations"] {
        let response = match response_meta.get(field) {
            None | Some(Value::Null) => {
                meta.remove(field);
                continue;
            }
            Some(Value::Object(m)) => m,
            Some(other) => {
                return Err(format!(
                    "invalid metadata.{field} of type {} in converted object",
                    go_type(other)
                ));
            }
        };
        let before = match meta.get(field) {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(m)) => m.clone(),
            Some(other) => {
                return Err(format!(
                    "invalid metadata.{field} of type {} in original object",
                    go_type(other)
                ));
            }
        };
        let mut changed = before.len() != response.len();
        for (k, v) in response {
            if !v.is_string() {
                return Err(format!(
                    "metadata.{field}[{k}] must be a string, but is {} in converted object",
                    go_type(v)
                ));
            }
            if before.get(k) != Some(v) {
                changed = true;
            }
        }
        if changed {
            let errors = if field == "labels" {
                label_errors(response)
            } else {
                annotation_errors(response)
            };
            match errors.len() {
                0 => {}
                1 => return Err(errors.concat()),
                _ => return Err(format!("[{}]", errors.join(", "))),
            }
        }
        meta.insert(field.into(), Value::Object(response.clone()));
    }
    if let Some(o) = out.as_object_mut() {
        o.insert("metadata".into(), Value::Object(meta));
    }
    Ok(())
}

/// Go's `%q` of a string, close enough for label keys and values.
fn quoted(s: &str) -> String {
    Value::String(s.to_string()).to_string()
}

/// Upstream's `ValidateLabels` (path `metadata.labels`).
fn label_errors(labels: &Map<String, Value>) -> Vec<String> {
    let mut out = Vec::new();
    for (k, v) in labels {
        for p in crate::validation::qualified_name_problems(k) {
            out.push(format!(
                "metadata.labels: Invalid value: {}: {p}",
                quoted(k)
            ));
        }
        let v = v.as_str().unwrap_or_default();
        for p in crate::validation::label_value_problems(v) {
            out.push(format!(
                "metadata.labels: Invalid value: {}: {p}",
                quoted(v)
            ));
        }
    }
    out
}

/// Upstream's `ValidateAnnotations` (path `metadata.annotation`, sic): qualified keys (checked
/// lower-cased) and at most 256 KiB in all.
fn annotation_errors(annotations: &Map<String, Value>) -> Vec<String> {
    const TOTAL_MAX: usize = 256 * 1024;
    let mut out = Vec::new();
    let mut total = 0;
    for (k, v) in annotations {
        for p in crate::validation::qualified_name_problems(&k.to_lowercase()) {
            out.push(format!(
                "metadata.annotation: Invalid value: {}: {p}",
                quoted(k)
            ));
        }
        total += k.len() + v.as_str().map_or(0, str::len);
    }
    if total > TOTAL_MAX {
        out.push(format!(
            "metadata.annotation: Too long: may not be more than {TOTAL_MAX} bytes"
        ));
    }
    out
}

/// Posts the review and returns the converted objects of a successful answer, or upstream's
/// `conversion webhook for <what> failed: ...`.
async fn call(
    state: &AppState,
    webhook: &Webhook,
    desired: &str,
    objects: Vec<Value>,
    what: &str,
) -> Result<Vec<Value>, ApiError> {
    let failed = |why: String| failure(format!("conversion webhook for {what} failed: {why}"));
    let client = webhook.client.as_ref().map_err(|e| failed(e.clone()))?;
    let Some(review_version) = webhook
        .review_versions
        .iter()
        .find(|v| *v == "v1" || *v == "v1beta1")
    else {
        return Err(failure("no supported conversion review versions".into()));
    };
    let uid = crate::rest::new_uid();
    let review_api_version = format!("apiextensions.k8s.io/{review_version}");
    let review = json!({
        "kind": "ConversionReview",
        "apiVersion": review_api_version,
        "request": {"uid": uid, "desiredAPIVersion": desired, "objects": objects},
        // Upstream sends its empty response struct along.
        "response": {"uid": "", "convertedObjects": null, "result": {"metadata": {}}},
    });
    tracing::debug!(desired, count = objects_len(&review), %uid, "calling the conversion webhook");
    let answer = client
        .call(state, &review, TIMEOUT)
        .await
        .map_err(|e| failed(e.to_string()))?;
    if review_version == "v1" {
        let (got_version, got_kind) = (str_of(&answer, "apiVersion"), str_of(&answer, "kind"));
        if got_version != review_api_version || got_kind != "ConversionReview" {
            return Err(failed(format!(
                "expected webhook response of {}, got {}",
                gvk_text(&review_api_version, "ConversionReview"),
                gvk_text(got_version, got_kind)
            )));
        }
    }
    let response = match answer.get("response") {
        Some(r) if r.is_object() => r,
        _ => return Err(failed("no response provided".into())),
    };
    // v1beta1 answers were never checked for their uid (upstream keeps that).
    if review_version == "v1" && str_of(response, "uid") != uid {
        return Err(failed(format!(
            "expected response.uid={}, got {}",
            quoted(&uid),
            quoted(str_of(response, "uid"))
        )));
    }
    let result = response.get("result").unwrap_or(&Value::Null);
    let status = str_of(result, "status");
    if status != "Success" {
        let message = str_of(result, "message");
        return Err(failed(if message.is_empty() {
            format!("response.result.status was '{status}', not 'Success'")
        } else {
            message.to_string()
        }));
    }
    Ok(response
        .get("convertedObjects")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default())
}

fn objects_len(review: &Value) -> usize {
    review
        .pointer("/request/objects")
        .and_then(Value::as_array)
        .map_or(0, Vec::len)
}

// ---------------------------------------------------------------------------------------------
// watch events: one conversion per event and served version

/// The conversions made for watch events, by event and what was converted: each is made
/// once, by the first watcher that needs it, and shared by the others (the event's
/// `CachedEvent.encoded` takes only encodings made synchronously). Entries of events no
/// longer held (by the cache's ring or a watcher) are dropped as new ones come.
struct Flights {
    by_event: HashMap<(usize, String), Flight>,
    prune_at: usize,
}

/// One event's conversion: the event (to tell a live entry from a reused address) and its
/// result once made.
type Flight = (Weak<CachedEvent>, Arc<tokio::sync::OnceCell<Bytes>>);

static FLIGHTS: LazyLock<Mutex<Flights>> = LazyLock::new(|| {
    Mutex::new(Flights {
        by_event: HashMap::new(),
        prune_at: 256,
    })
});

/// `make`'s result for `(ev, key)`, made once however many watchers ask (concurrently or
/// later, while the event is held). A failure is not kept: the next watcher tries again.
pub(crate) async fn once_per_event<F>(
    ev: &Arc<CachedEvent>,
    key: &str,
    make: F,
) -> Result<Bytes, ApiError>
where
    F: Future<Output = Result<Bytes, ApiError>>,
{
    let cell = {
        let mut flights = FLIGHTS.lock().unwrap_or_else(PoisonError::into_inner);
        let id = (Arc::as_ptr(ev) as usize, key.to_string());
        let live = flights
            .by_event
            .get(&id)
            .filter(|(w, _)| w.upgrade().is_some_and(|e| Arc::ptr_eq(&e, ev)))
            .map(|(_, c)| c.clone());
        match live {
            Some(cell) => cell,
            None => {
                if flights.by_event.len() >= flights.prune_at {
                    flights.by_event.retain(|_, (w, _)| w.strong_count() > 0);
                    flights.prune_at = (flights.by_event.len() * 2).max(256);
                }
                let cell = Arc::new(tokio::sync::OnceCell::new());
                flights
                    .by_event
                    .insert(id, (Arc::downgrade(ev), cell.clone()));
                cell
            }
        }
    };
    cell.get_or_try_init(|| make).await.cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(api_version: &str, name: &str) -> Value {
        json!({
            "apiVersion": api_version, "kind": "CronTab",
            "metadata": {"name": name, "namespace": "default", "uid": "u-1",
                         "resourceVersion": "7", "labels": {"a": "1"},
                         "annotations": {"n": "x"}, "generation": 2},
            "spec": {"hostPort": "h:1"},
        })
    }

    #[test]
    fn converted_objects_get_their_metadata_back_but_labels_and_annotations() {
        let original = obj("stable.example.com/v2", "a");
        let mut out = json!({
            "apiVersion": "stable.example.com/v1", "kind": "CronTab",
            "metadata": {"name": "a", "namespace": "default", "uid": "u-1",
                         "generation": 99, "labels": {"b": "2"}},
            "spec": {"host": "h", "port": 1},
        });
        checked(&original, &mut out, "stable.example.com/v1").expect("valid");
        assert_eq!(out["metadata"]["generation"], 2);
        assert_eq!(out["metadata"]["resourceVersion"], "7");
        assert_eq!(out["metadata"]["labels"], json!({"b": "2"}));
        assert!(out["metadata"].get("annotations").is_none(), "{out}");
        assert_eq!(out["spec"], json!({"host": "h", "port": 1}));
    }

    #[test]
    fn refusals_are_worded_as_upstream() {
        let original = obj("stable.example.com/v2", "a");
        let refused = |mut out: Value| {
            checked(&original, &mut out, "stable.example.com/v1").expect_err("refused")
        };
        let mut wrong_version = original.clone();
        wrong_version["apiVersion"] = json!("stable.example.com/v3");
        assert_eq!(
            refused(wrong_version.clone()).worded(false, 0),
            "returned invalid object at index 0: invalid groupVersion (expected \
             stable.example.com/v1, received stable.example.com/v3)"
        );
        assert_eq!(
            refused(wrong_version).worded(true, 0),
            "returned invalid converted object at index 1: invalid groupVersion (expected \
             stable.example.com/v1, received stable.example.com/v3)"
        );
        let mut renamed = original.clone();
        renamed["apiVersion"] = json!("stable.example.com/v1");
        renamed["metadata"]["name"] = json!("b");
        assert_eq!(
            refused(renamed).worded(false, 0),
            "returned invalid object: must have the same name: a != b"
        );
        let mut bad_label = original.clone();
        bad_label["apiVersion"] = json!("stable.example.com/v1");
        bad_label["metadata"]["labels"] = json!({"a": "-x"});
        let why = refused(bad_label).worded(false, 0);
        assert!(
            why.starts_with("returned invalid metadata: metadata.labels: Invalid value: \"-x\": "),
            "{why}"
        );
        let mut no_meta = original.clone();
        no_meta["apiVersion"] = json!("stable.example.com/v1");
        no_meta.as_object_mut().expect("object").remove("metadata");
        // The identity is checked first (upstream's order): no metadata, no name.
        assert_eq!(
            refused(no_meta).worded(false, 0),
            "returned invalid object: must have the same name: a != "
        );
        let mut bad_meta = original.clone();
        bad_meta["apiVersion"] = json!("stable.example.com/v1");
        bad_meta["metadata"]["labels"] = json!("x");
        assert_eq!(
            refused(bad_meta).worded(true, 2),
            "returned invalid metadata in object at index 3: invalid metadata.labels of type \
             string in converted object"
        );
        assert_eq!(
            gvk_text("stable.example.com/v2", "CronTab"),
            "stable.example.com/v2, Kind=CronTab"
        );
        assert_eq!(gvk_text("", ""), "/, Kind=");
    }

    #[test]
    fn only_a_webhook_strategy_makes_a_webhook() {
        let crd = |conversion: Value| {
            json!({"spec": {"conversion": conversion, "versions": [
                {"name": "v1", "schema": {"openAPIV3Schema": {"type": "object"}}},
                {"name": "v2"},
            ]}})
        };
        assert!(Webhook::of(&crd(json!({"strategy": "None"}))).is_none());
        let w = Webhook::of(&crd(json!({"strategy": "Webhook", "webhook": {
            "clientConfig": {"url": "https://127.0.0.1:1/convert"},
            "conversionReviewVersions": ["v2", "v1beta1"],
        }})))
        .expect("webhook");
        assert!(w.client.is_ok());
        assert_eq!(w.review_versions, ["v2", "v1beta1"]);
        assert_eq!(w.schemas.keys().collect::<Vec<_>>(), ["v1"]);
    }
}
