//! `ValidateObjectMeta` / `ValidateObjectMetaUpdate` of every built-in object (apimachinery's
//! `pkg/api/validation/objectmeta.go`): labels, annotations (keys and total size), owner
//! references, finalizers, and on update no new finalizers on an object being deleted;
//! [`managed_fields`] checks what the field manager keeps of the entries a client sent. The
//! name, `generateName` and namespace are checked by the handlers; the system fields (uid,
//! creation and deletion timestamps, generation, resourceVersion) are kept from the stored
//! object by the update handlers, so their update rules cannot fail here.

use std::collections::BTreeSet;

use serde_json::Value;

use super::core::validate_labels;
use super::qualified_name_problems;
use super::str_of;
use super::{duplicate, forbidden, invalid, not_supported, q, required, too_long};
use crate::registry::ResourceInfo;
use crate::status::Cause;

/// Upstream's `TotalAnnotationSizeLimitB`: keys and values together.
const ANNOTATIONS_MAX: usize = 256 * 1024;

const ORPHAN: &str = "orphan";
const FOREGROUND: &str = "foregroundDeletion";

/// The finalizer names a built-in object may carry without a `/` (upstream's
/// `standardFinalizers`).
const STANDARD_FINALIZERS: &[&str] = &["kubernetes", ORPHAN, FOREGROUND];

/// The causes of `obj` (with the stored `old` on update). Services' metadata is checked with
/// the rest of their validation, in the Service flow (`services`), through [`object_meta`].
pub(super) fn validate(info: &ResourceInfo, obj: &Value, old: Option<&Value>) -> Vec<Cause> {
    if info.group.is_empty() && info.kind == "Service" {
        return Vec::new();
    }
    object_meta(obj, old)
}

/// Core's `ValidateObjectMeta` (create) or `ValidateObjectMetaUpdate` (`old` given), in
/// upstream's order: on update first no new finalizers on an object being deleted; labels,
/// annotations, owner references; on create apimachinery's finalizer checks; then core's
/// per-index rule that an unprefixed finalizer is a standard one.
pub(crate) fn object_meta(obj: &Value, old: Option<&Value>) -> Vec<Cause> {
    let null = Value::Null;
    let meta = obj.get("metadata").unwrap_or(&null);
    let finalizers = strings(meta, "finalizers");
    let mut causes = Vec::new();
    if let Some(old_meta) = old.and_then(|o| o.get("metadata"))
        && !str_of(old_meta, "deletionTimestamp").is_empty()
    {
        let before: BTreeSet<String> = strings(old_meta, "finalizers").into_iter().collect();
        let extra: BTreeSet<&String> = finalizers.iter().filter(|f| !before.contains(*f)).collect();
        if !extra.is_empty() {
            let shown: Vec<String> = extra.iter().map(|f| q(f)).collect();
            causes.push(forbidden(
                "metadata.finalizers",
                &format!(
                    "no new finalizers can be added if the object is being deleted, found \
                         new finalizers []string{{{}}}",
                    shown.join(", ")
                ),
            ));
        }
    }
    causes.extend(validate_labels(meta.get("labels"), "metadata.labels"));
    causes.extend(annotations(meta.get("annotations"), "metadata.annotations"));
    causes.extend(owner_references(meta));
    if old.is_none() {
        causes.extend(finalizer_names(&finalizers));
    }
    for (i, f) in finalizers.iter().enumerate() {
        let path = format!("metadata.finalizers[{i}]");
        for m in qualified_name_problems(f) {
            causes.push(invalid(&path, &q(f), &m));
        }
        if !f.contains('/') && !STANDARD_FINALIZERS.contains(&f.as_str()) {
            causes.push(invalid(
                &path,
                &q(f),
                "name is neither a standard finalizer name nor is it fully qualified",
            ));
        }
    }
    causes
}

/// `ValidateManagedFields` of `obj`: each entry's operation, fields type, manager and
/// subresource. Part of upstream's `ValidateObjectMeta`, but run on what the field manager
/// keeps (see [`crate::apply::track_client_update`]), not on what the client sent.
pub(crate) fn managed_fields(obj: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let entries = obj
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array);
    for (i, entry) in entries.into_iter().flatten().enumerate() {
        let path = format!("metadata.managedFields[{i}]");
        let operation = str_of(entry, "operation");
        if !matches!(operation, "Apply" | "Update") {
            causes.push(invalid(
                format!("{path}.operation"),
                &q(operation),
                "must be `Apply` or `Update`",
            ));
        }
        let fields_type = str_of(entry, "fieldsType");
        if !fields_type.is_empty() && fields_type != "FieldsV1" {
            causes.push(invalid(
                format!("{path}.fieldsType"),
                &q(fields_type),
                "must be `FieldsV1`",
            ));
        }
        causes.extend(field_manager(
            str_of(entry, "manager"),
            &format!("{path}.manager"),
        ));
        if str_of(entry, "subresource").len() > 256 {
            causes.push(too_long(format!("{path}.subresource"), 256));
        }
    }
    causes
}

/// `ValidateFieldManager`: at most 128 bytes, printable characters only.
pub(crate) fn field_manager(manager: &str, path: &str) -> Vec<Cause> {
    let mut causes = Vec::new();
    if manager.len() > crate::apply::FIELD_MANAGER_MAX {
        causes.push(too_long(path, crate::apply::FIELD_MANAGER_MAX));
    }
    for (i, c) in manager.char_indices() {
        if !super::is_go_printable(c) {
            causes.push(invalid(
                path,
                &q(manager),
                &format!("invalid character {} (at position {i})", go_unicode(c)),
            ));
        }
    }
    causes
}

/// Go's `%#U`: `U+0021 '!'`, the character itself only when printable.
pub(crate) fn go_unicode(c: char) -> String {
    if super::is_go_printable(c) {
        format!("U+{:04X} '{c}'", u32::from(c))
    } else {
        format!("U+{:04X}", u32::from(c))
    }
}

fn strings(v: &Value, field: &str) -> Vec<String> {
    v.get(field)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|s| s.as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// `ValidateAnnotations`: keys are qualified names (case-insensitively), at most 256 KiB in all.
pub(super) fn annotations(annotations: Option<&Value>, path: &str) -> Vec<Cause> {
    let mut causes = Vec::new();
    let Some(map) = annotations.and_then(Value::as_object) else {
        return causes;
    };
    let mut size = 0;
    for (k, v) in map {
        for m in qualified_name_problems(&k.to_lowercase()) {
            causes.push(invalid(path, &q(k), &m));
        }
        size += k.len() + v.as_str().map_or(0, str::len);
    }
    if size > ANNOTATIONS_MAX {
        causes.push(too_long(path, ANNOTATIONS_MAX));
    }
    causes
}

/// `ValidateOwnerReferences`: apiVersion (with a version), kind, name and uid set; no Event
/// owners; at most one controller.
fn owner_references(meta: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let refs = meta
        .get("ownerReferences")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let path = "metadata.ownerReferences";
    let mut controller: Option<String> = None;
    for r in &refs {
        let api_version = str_of(r, "apiVersion");
        // `schema.FromAPIVersionAndKind`: `version` or `group/version`, else no version.
        let version = match api_version.split('/').collect::<Vec<_>>().as_slice() {
            [version] | [_, version] => *version,
            _ => "",
        };
        if version.is_empty() {
            causes.push(invalid(
                format!("{path}.apiVersion"),
                &q(api_version),
                "version must not be empty",
            ));
        }
        let kind = str_of(r, "kind");
        for (field, value) in [
            ("kind", kind),
            ("name", str_of(r, "name")),
            ("uid", str_of(r, "uid")),
        ] {
            if value.is_empty() {
                causes.push(invalid(
                    format!("{path}.{field}"),
                    "\"\"",
                    &format!("{field} must not be empty"),
                ));
            }
        }
        if api_version == "v1" && kind == "Event" {
            causes.push(invalid(
                path,
                &owner_struct(r),
                "/v1, Kind=Event is disallowed from being an owner",
            ));
        }
        if r.get("controller").and_then(Value::as_bool) == Some(true) {
            let current = format!("{kind}/{}", str_of(r, "name"));
            match &controller {
                Some(first) => causes.push(invalid(
                    path,
                    &format!(
                        "[]v1.OwnerReference{{{}}}",
                        refs.iter().map(owner_struct).collect::<Vec<_>>().join(", ")
                    ),
                    &format!(
                        "Only one reference can have Controller set to true. Found \"true\" in \
                         references for {first} and {current}"
                    ),
                )),
                None => controller = Some(current),
            }
        }
    }
    causes
}

/// An owner reference as Go's `%#v` shows it (pointers as their values: upstream prints
/// addresses).
fn owner_struct(r: &Value) -> String {
    let ptr = |f: &str| match r.get(f).and_then(Value::as_bool) {
        Some(b) => format!("(*bool)({b})"),
        None => "(*bool)(nil)".into(),
    };
    format!(
        "v1.OwnerReference{{APIVersion:{}, Kind:{}, Name:{}, UID:{}, Controller:{}, \
         BlockOwnerDeletion:{}}}",
        q(str_of(r, "apiVersion")),
        q(str_of(r, "kind")),
        q(str_of(r, "name")),
        q(str_of(r, "uid")),
        ptr("controller"),
        ptr("blockOwnerDeletion"),
    )
}

/// `ValidateFinalizers`: qualified names, not both `orphan` and `foregroundDeletion`.
fn finalizer_names(finalizers: &[String]) -> Vec<Cause> {
    let mut causes = Vec::new();
    for f in finalizers {
        for m in qualified_name_problems(f) {
            causes.push(invalid("metadata.finalizers", &q(f), &m));
        }
    }
    if finalizers.iter().any(|f| f == ORPHAN) && finalizers.iter().any(|f| f == FOREGROUND) {
        let shown: Vec<String> = finalizers.iter().map(|f| q(f)).collect();
        causes.push(invalid(
            "metadata.finalizers",
            &format!("[]string{{{}}}", shown.join(", ")),
            &format!("finalizer {ORPHAN} and {FOREGROUND} cannot be both set"),
        ));
    }
    causes
}

/// The longest metav1 condition `reason` and `message` (upstream's `maxReasonLen`,
/// `maxMessageLen`).
const CONDITION_REASON_MAX: usize = 1024;
const CONDITION_MESSAGE_MAX: usize = 32 * 1024;
const CONDITION_STATUSES: &[&str] = &["False", "True", "Unknown"];
const CONDITION_REASON_FMT: &str = "[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?";

/// Upstream's `metav1validation.ValidateConditions` of a list of `metav1.Condition`s at
/// `path` (the status of many kinds): unique types, each a qualified name, a known status, no
/// negative `observedGeneration`, a `lastTransitionTime`, a `reason` of the condition-reason
/// form and length, a `message` of at most 32 KiB.
pub(crate) fn metav1_conditions(conditions: &[Value], path: &str) -> Vec<Cause> {
    let mut causes = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, c) in conditions.iter().enumerate() {
        let at = format!("{path}[{i}]");
        let ty = str_of(c, "type");
        if !seen.insert(ty) {
            causes.push(duplicate(format!("{at}.type"), &q(ty)));
        }
        for m in qualified_name_problems(ty) {
            causes.push(invalid(format!("{at}.type"), &q(ty), &m));
        }
        let status = str_of(c, "status");
        if !CONDITION_STATUSES.contains(&status) {
            causes.push(not_supported(
                format!("{at}.status"),
                &q(status),
                CONDITION_STATUSES,
            ));
        }
        if let Some(g) = c.get("observedGeneration").and_then(Value::as_i64)
            && g < 0
        {
            causes.push(invalid(
                format!("{at}.observedGeneration"),
                &g.to_string(),
                "must be greater than or equal to zero",
            ));
        }
        let transition = str_of(c, "lastTransitionTime");
        if transition.is_empty() || transition.starts_with("0001-01-01T00:00:00") {
            causes.push(required(format!("{at}.lastTransitionTime"), "must be set"));
        }
        let reason = str_of(c, "reason");
        if reason.is_empty() {
            causes.push(required(format!("{at}.reason"), "must be set"));
        } else {
            if !is_condition_reason(reason) {
                causes.push(invalid(
                    format!("{at}.reason"),
                    &q(reason),
                    &format!(
                        "a condition reason must start with alphabetic character, optionally \
                         followed by a string of alphanumeric characters or '_,:', and must end \
                         with an alphanumeric character or '_' (e.g. 'my_name',  or 'MY_NAME',  \
                         or 'MyName',  or 'ReasonA,ReasonB',  or 'ReasonA:ReasonB', regex used \
                         for validation is '{CONDITION_REASON_FMT}')"
                    ),
                ));
            }
            if reason.len() > CONDITION_REASON_MAX {
                causes.push(too_long(format!("{at}.reason"), CONDITION_REASON_MAX));
            }
        }
        if str_of(c, "message").len() > CONDITION_MESSAGE_MAX {
            causes.push(too_long(format!("{at}.message"), CONDITION_MESSAGE_MAX));
        }
    }
    causes
}

/// `[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?`
fn is_condition_reason(reason: &str) -> bool {
    let b = reason.as_bytes();
    let inner = |c: &u8| c.is_ascii_alphanumeric() || matches!(c, b'_' | b',' | b':');
    let last = |c: &u8| c.is_ascii_alphanumeric() || *c == b'_';
    b.first().is_some_and(u8::is_ascii_alphabetic)
        && b.last().is_some_and(last)
        && b.iter().all(inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::REGISTRY;
    use serde_json::json;

    fn configmaps() -> &'static ResourceInfo {
        REGISTRY.find("", "v1", "configmaps").expect("configmaps")
    }

    #[test]
    fn managed_fields_entries() {
        let long = "m".repeat(129);
        let obj = json!({"metadata": {"managedFields": [
            {"manager": "kubectl", "operation": "Update", "fieldsType": "FieldsV1"},
            {"manager": long, "operation": "Replace", "fieldsType": "FieldsV2",
             "subresource": "s".repeat(257)},
            {"manager": "a\tb", "operation": "Apply"},
        ]}});
        assert_eq!(
            crate::status::cause_lines(&managed_fields(&obj)),
            [
                "metadata.managedFields[1].operation: Invalid value: \"Replace\": must be \
                 `Apply` or `Update`",
                "metadata.managedFields[1].fieldsType: Invalid value: \"FieldsV2\": must be \
                 `FieldsV1`",
                "metadata.managedFields[1].manager: Too long: may not be more than 128 bytes",
                "metadata.managedFields[1].subresource: Too long: may not be more than 256 \
                 bytes",
                "metadata.managedFields[2].manager: Invalid value: \"a\\tb\": invalid \
                 character U+0009 (at position 1)",
            ]
        );
    }

    #[test]
    fn labels_annotations_owners_finalizers() {
        let obj = json!({"metadata": {
            "labels": {"bad label": "x", "ok": "bad value!"},
            "annotations": {"Example.com/Fine": "x", "a b": "y"},
            "ownerReferences": [
                {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "a", "uid": "1", "controller": true},
                {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "b", "uid": "", "controller": true},
            ],
            "finalizers": ["ok.example.com/f", "bad finalizer"],
        }});
        let got: Vec<String> = validate(configmaps(), &obj, None)
            .iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect();
        assert_eq!(got.len(), 8, "{got:#?}");
        assert!(got[0].starts_with(
            "metadata.labels: Invalid value: \"bad label\": name part must consist of"
        ));
        assert!(
            got[1].starts_with(
                "metadata.labels: Invalid value: \"bad value!\": a valid label must be"
            )
        );
        assert!(got[2].starts_with(
            "metadata.annotations: Invalid value: \"a b\": name part must consist of"
        ));
        assert_eq!(
            got[3],
            "metadata.ownerReferences.uid: Invalid value: \"\": uid must not be empty"
        );
        assert!(
            got[4].starts_with("metadata.ownerReferences: Invalid value: []v1.OwnerReference{")
        );
        assert!(got[4].ends_with("Only one reference can have Controller set to true. Found \"true\" in references for ReplicaSet/a and ReplicaSet/b"));
        assert!(got[5].starts_with("metadata.finalizers: Invalid value: \"bad finalizer\""));
        // Core's per-index rule repeats the name check, then wants a standard name or a prefix.
        assert!(got[6].starts_with("metadata.finalizers[1]: Invalid value: \"bad finalizer\""));
        assert_eq!(
            got[7],
            "metadata.finalizers[1]: Invalid value: \"bad finalizer\": name is neither a \
             standard finalizer name nor is it fully qualified"
        );
        // On update apimachinery's finalizer checks are left out; the per-index rule stays.
        let old = json!({"metadata": {"finalizers": []}});
        let obj = json!({"metadata": {"finalizers": ["kubernetes", "custom"]}});
        let got: Vec<String> = validate(configmaps(), &obj, Some(&old))
            .iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect();
        assert_eq!(
            got,
            [
                "metadata.finalizers[1]: Invalid value: \"custom\": name is neither a standard \
              finalizer name nor is it fully qualified"
            ]
        );
        // `schema.FromAPIVersionAndKind`: three parts are no version at all.
        let obj = json!({"metadata": {"ownerReferences": [
            {"apiVersion": "a/b/v1", "kind": "K", "name": "n", "uid": "u"}]}});
        let got = validate(configmaps(), &obj, None);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].field, "metadata.ownerReferences.apiVersion");
    }

    #[test]
    fn annotation_size_and_finalizers_of_deleted_objects() {
        let big = "x".repeat(ANNOTATIONS_MAX);
        let obj = json!({"metadata": {"annotations": {"a": big}}});
        let got = validate(configmaps(), &obj, None);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].reason, "FieldValueTooLong");
        assert_eq!(
            got[0].message,
            "Too long: may not be more than 262144 bytes"
        );
        let old = json!({"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z", "finalizers": ["a.io/x"]}});
        let new = json!({"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z", "finalizers": ["a.io/x", "b.io/y"]}});
        let got = validate(configmaps(), &new, Some(&old));
        assert_eq!(got.len(), 1);
        assert_eq!(
            got[0].message,
            "Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers []string{\"b.io/y\"}"
        );
        let services = REGISTRY.find("", "v1", "services").expect("services");
        let bad = json!({"metadata": {"labels": {"bad label": "x"}}});
        assert!(validate(services, &bad, None).is_empty());
    }

    #[test]
    fn metav1_conditions_as_upstream() {
        let good = json!([{"type": "example.com/Ready", "status": "True", "reason": "A_b,c:D",
                           "message": "", "observedGeneration": 3,
                           "lastTransitionTime": "2026-01-01T00:00:00Z"}]);
        assert!(metav1_conditions(good.as_array().expect("list"), "status.conditions").is_empty());
        let bad = json!([
            {"type": "", "status": "", "reason": "x".repeat(1025), "message": "m".repeat(32 * 1024 + 1),
             "lastTransitionTime": "0001-01-01T00:00:00Z"},
            {"type": "", "status": "False", "reason": "Ends,", "lastTransitionTime": "2026-01-01T00:00:00Z"},
        ]);
        let got: Vec<String> = metav1_conditions(bad.as_array().expect("list"), "c")
            .iter()
            .map(|c| format!("{} {}: {}", c.reason, c.field, c.message))
            .collect();
        assert_eq!(got.len(), 10, "{got:#?}");
        assert_eq!(
            got[0],
            "FieldValueInvalid c[0].type: Invalid value: \"\": name part must be non-empty"
        );
        assert!(got[1].starts_with(
            "FieldValueInvalid c[0].type: Invalid value: \"\": name part must consist of"
        ));
        assert_eq!(
            got[2],
            "FieldValueNotSupported c[0].status: Unsupported value: \"\": supported values: \"False\", \"True\", \"Unknown\""
        );
        assert_eq!(
            got[3],
            "FieldValueRequired c[0].lastTransitionTime: Required value: must be set"
        );
        assert_eq!(
            got[4],
            "FieldValueTooLong c[0].reason: Too long: may not be more than 1024 bytes"
        );
        assert_eq!(
            got[5],
            "FieldValueTooLong c[0].message: Too long: may not be more than 32768 bytes"
        );
        assert_eq!(
            got[6],
            "FieldValueDuplicate c[1].type: Duplicate value: \"\""
        );
        assert!(got[9].starts_with(
            "FieldValueInvalid c[1].reason: Invalid value: \"Ends,\": a condition reason must start"
        ));
    }
}
