//! `ValidateObjectMeta` / `ValidateObjectMetaUpdate` of every built-in object (apimachinery's
//! `pkg/api/validation/objectmeta.go`): labels, annotations (keys and total size), owner
//! references, finalizers, and on update no new finalizers on an object being deleted. The
//! name, `generateName` and namespace are checked by the handlers; the system fields (uid,
//! creation and deletion timestamps, generation, resourceVersion) are kept from the stored
//! object by the update handlers, so their update rules cannot fail here.

use std::collections::BTreeSet;

use serde_json::Value;

use super::core::validate_labels;
use super::qualified_name_problems;
use super::str_of;
use super::{forbidden, invalid, q, too_long};
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::REGISTRY;
    use serde_json::json;

    fn configmaps() -> &'static ResourceInfo {
        REGISTRY.find("", "v1", "configmaps").expect("configmaps")
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
}
