//! Patches: JSON merge patch (RFC 7386), JSON patch (RFC 6902), and strategic merge patch
//! (`strategic`, with the patch metadata of [`crate::patch_meta`]).

mod strategic;

use serde_json::Value;

use crate::patch_meta::Node;
use crate::status::ApiError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PatchKind {
    Merge,
    Json,
    Strategic,
}

impl PatchKind {
    pub(crate) fn from_media_type(ct: &str) -> Option<Self> {
        match ct {
            "application/merge-patch+json" => Some(PatchKind::Merge),
            "application/json-patch+json" => Some(PatchKind::Json),
            "application/strategic-merge-patch+json" => Some(PatchKind::Strategic),
            _ => None,
        }
    }
}

/// Applies a patch to `doc`. `meta` is the patch metadata of the document's type; without it
/// (custom resources) a strategic merge patch is refused with 415, as upstream does.
pub(crate) fn apply(
    kind: PatchKind,
    doc: &Value,
    patch: &Value,
    meta: Option<Node<'_>>,
) -> Result<Value, ApiError> {
    match kind {
        PatchKind::Merge => {
            if !patch.is_object() {
                return Err(ApiError::bad_request("a merge patch must be a JSON object"));
            }
            let mut out = doc.clone();
            merge_patch(&mut out, patch);
            Ok(out)
        }
        PatchKind::Strategic => {
            let Some(meta) = meta else {
                return Err(ApiError::new(
                    415,
                    "UnsupportedMediaType",
                    "the body of the request was in an unknown format - accepted media types \
                     include: application/json-patch+json, application/merge-patch+json, \
                     application/apply-patch+yaml",
                ));
            };
            Ok(strategic::apply(doc, patch, meta)?)
        }
        PatchKind::Json => json_patch(doc, patch),
    }
}

/// RFC 7386: objects merge recursively, `null` removes, anything else replaces.
pub(crate) fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(serde_json::Map::new());
    }
    if let Value::Object(t) = target {
        for (k, v) in p {
            if v.is_null() {
                t.remove(k);
            } else {
                merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

fn unescape_token(t: &str) -> String {
    t.replace("~1", "/").replace("~0", "~")
}

/// Splits a JSON pointer into its parent's tokens and its last token.
fn split_pointer(path: &str) -> Result<(Vec<String>, String), ApiError> {
    if path.is_empty() {
        return Err(ApiError::bad_request(
            "JSON patch: the root cannot be the target",
        ));
    }
    if !path.starts_with('/') {
        return Err(ApiError::bad_request(format!(
            "JSON patch: invalid path {path:?}"
        )));
    }
    let mut tokens: Vec<String> = path[1..].split('/').map(unescape_token).collect();
    let last = tokens.pop().unwrap_or_default();
    Ok((tokens, last))
}

fn resolve<'a>(
    doc: &'a mut Value,
    tokens: &[String],
    path: &str,
) -> Result<&'a mut Value, ApiError> {
    let mut cur = doc;
    for t in tokens {
        cur = match cur {
            Value::Object(m) => m.get_mut(t),
            Value::Array(a) => t.parse::<usize>().ok().and_then(|i| a.get_mut(i)),
            _ => None,
        }
        .ok_or_else(|| {
            ApiError::bad_request(format!("JSON patch: path {path:?} does not exist"))
        })?;
    }
    Ok(cur)
}

fn get_at(doc: &Value, path: &str) -> Result<Value, ApiError> {
    if path.is_empty() {
        return Ok(doc.clone());
    }
    doc.pointer(path)
        .cloned()
        .ok_or_else(|| ApiError::bad_request(format!("JSON patch: path {path:?} does not exist")))
}

fn remove_at(doc: &mut Value, path: &str) -> Result<Value, ApiError> {
    let (parent, last) = split_pointer(path)?;
    let missing = || ApiError::bad_request(format!("JSON patch: path {path:?} does not exist"));
    match resolve(doc, &parent, path)? {
        Value::Object(m) => m.remove(&last).ok_or_else(missing),
        Value::Array(a) => {
            let i: usize = last.parse().map_err(|_| missing())?;
            (i < a.len()).then(|| a.remove(i)).ok_or_else(missing)
        }
        _ => Err(missing()),
    }
}

fn add_at(doc: &mut Value, path: &str, value: Value, replace: bool) -> Result<(), ApiError> {
    let (parent, last) = split_pointer(path)?;
    let missing = || ApiError::bad_request(format!("JSON patch: path {path:?} does not exist"));
    match resolve(doc, &parent, path)? {
        Value::Object(m) => {
            if replace && !m.contains_key(&last) {
                return Err(missing());
            }
            m.insert(last, value);
            Ok(())
        }
        Value::Array(a) => {
            if last == "-" && !replace {
                a.push(value);
                return Ok(());
            }
            let i: usize = last.parse().map_err(|_| missing())?;
            if replace {
                let slot = a.get_mut(i).ok_or_else(missing)?;
                *slot = value;
            } else if i <= a.len() {
                a.insert(i, value);
            } else {
                return Err(missing());
            }
            Ok(())
        }
        _ => Err(missing()),
    }
}

/// RFC 6902.
pub(crate) fn json_patch(doc: &Value, patch: &Value) -> Result<Value, ApiError> {
    let ops = patch
        .as_array()
        .ok_or_else(|| ApiError::bad_request("a JSON patch must be a JSON array"))?;
    let mut doc = doc.clone();
    for op in ops {
        let name = op.get("op").and_then(Value::as_str).unwrap_or("");
        let path = op.get("path").and_then(Value::as_str).unwrap_or("");
        let from = op.get("from").and_then(Value::as_str).unwrap_or("");
        let value = || {
            op.get("value")
                .cloned()
                .ok_or_else(|| ApiError::bad_request(format!("JSON patch: {name} needs a value")))
        };
        match name {
            "add" => add_at(&mut doc, path, value()?, false)?,
            "replace" => add_at(&mut doc, path, value()?, true)?,
            "remove" => {
                remove_at(&mut doc, path)?;
            }
            "move" => {
                let v = remove_at(&mut doc, from)?;
                add_at(&mut doc, path, v, false)?;
            }
            "copy" => {
                let v = get_at(&doc, from)?;
                add_at(&mut doc, path, v, false)?;
            }
            "test" => {
                if get_at(&doc, path)? != value()? {
                    return Err(ApiError::new(
                        422,
                        "Invalid",
                        format!("JSON patch: test operation failed at {path:?}"),
                    ));
                }
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "JSON patch: unknown operation {other:?}"
                )));
            }
        }
    }
    Ok(doc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_rfc7386() {
        let doc = json!({"a": "b", "c": {"d": "e", "f": "g"}, "l": [1, 2]});
        let out = apply(
            PatchKind::Merge,
            &doc,
            &json!({"a": "z", "c": {"f": null}, "l": [3], "n": {"x": 1}}),
            None,
        )
        .expect("applies");
        assert_eq!(
            out,
            json!({"a": "z", "c": {"d": "e"}, "l": [3], "n": {"x": 1}})
        );
        assert!(apply(PatchKind::Merge, &doc, &json!([1]), None).is_err());
    }

    #[test]
    fn strategic_patch_needs_patch_metadata() {
        let doc = json!({"spec": {"x": [1]}});
        let err = apply(
            PatchKind::Strategic,
            &doc,
            &json!({"spec": {"x": [2]}}),
            None,
        )
        .expect_err("no metadata, as for custom resources");
        assert_eq!(err.code, 415);
        assert!(
            err.message
                .contains("application/json-patch+json, application/merge-patch+json"),
            "{}",
            err.message
        );
        let out = apply(
            PatchKind::Strategic,
            &doc,
            &json!({"spec": {"x": [2]}}),
            Some(Node::any()),
        )
        .expect("untyped lists are replaced");
        assert_eq!(out, json!({"spec": {"x": [2]}}));
    }

    #[test]
    fn json_patch_rfc6902() {
        let doc = json!({"metadata": {"labels": {"a/b": "1"}}, "l": [1, 2, 3]});
        let out = json_patch(
            &doc,
            &json!([
                {"op": "add", "path": "/metadata/labels/x", "value": "y"},
                {"op": "remove", "path": "/metadata/labels/a~1b"},
                {"op": "replace", "path": "/l/0", "value": 9},
                {"op": "add", "path": "/l/-", "value": 4},
                {"op": "add", "path": "/l/1", "value": 5},
                {"op": "copy", "from": "/l/0", "path": "/c"},
                {"op": "move", "from": "/c", "path": "/m"},
                {"op": "test", "path": "/m", "value": 9},
            ]),
        )
        .expect("applies");
        assert_eq!(
            out,
            json!({"metadata": {"labels": {"x": "y"}}, "l": [9, 5, 2, 3, 4], "m": 9})
        );
        let err = json_patch(&doc, &json!([{"op": "test", "path": "/l/0", "value": 7}]))
            .expect_err("test fails");
        assert_eq!(err.code, 422);
        assert!(json_patch(&doc, &json!([{"op": "remove", "path": "/nope"}])).is_err());
        assert!(
            json_patch(
                &doc,
                &json!([{"op": "replace", "path": "/nope", "value": 1}])
            )
            .is_err()
        );
    }
}

/// Property tests of JSON merge patch (RFC 7386) and JSON patch (RFC 6902).
#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::{any, prop, prop_assert_eq, prop_oneof, proptest};
    use proptest::strategy::{Just, Strategy};
    use serde_json::json;

    fn tree(nulls: bool) -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            any::<bool>().prop_map(Value::from),
            (-3i64..3).prop_map(Value::from),
            "[a-b]{0,2}".prop_map(Value::from),
        ];
        let leaf = if nulls {
            prop_oneof![4 => leaf, 1 => Just(Value::Null)].boxed()
        } else {
            leaf.boxed()
        };
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::btree_map("[a-c]", inner.clone(), 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
                prop::collection::vec(inner, 0..3).prop_map(Value::Array),
            ]
        })
    }

    fn object(v: Value) -> Value {
        if v.is_object() { v } else { json!({"v": v}) }
    }

    /// RFC 7386's `MergePatch` function, written straight from the RFC's pseudocode.
    fn rfc7386(target: &Value, patch: &Value) -> Value {
        let Value::Object(p) = patch else {
            return patch.clone();
        };
        let mut t = match target {
            Value::Object(t) => t.clone(),
            _ => serde_json::Map::new(),
        };
        for (k, v) in p {
            if v.is_null() {
                t.remove(k);
            } else {
                let merged = rfc7386(t.get(k).unwrap_or(&Value::Null), v);
                t.insert(k.clone(), merged);
            }
        }
        Value::Object(t)
    }

    proptest! {
        #[test]
        fn merge_patch_follows_the_rfc_and_is_idempotent(
            doc in tree(false).prop_map(object),
            patch in tree(true).prop_map(object),
        ) {
            let mut once = doc.clone();
            merge_patch(&mut once, &patch);
            prop_assert_eq!(&once, &rfc7386(&doc, &patch));
            let mut twice = once.clone();
            merge_patch(&mut twice, &patch);
            prop_assert_eq!(twice, once);
        }

        #[test]
        fn json_patch_add_then_remove_restores_and_test_checks(
            doc in tree(false).prop_map(object),
            value in tree(false),
        ) {
            // A key the document does not have: add it, read it back, remove it.
            let added = json_patch(&doc, &json!([{"op": "add", "path": "/zz", "value": value}]))
                .expect("add applies");
            prop_assert_eq!(&added["zz"], &value);
            json_patch(&added, &json!([{"op": "test", "path": "/zz", "value": value}]))
                .expect("test of what was added passes");
            let removed = json_patch(&added, &json!([{"op": "remove", "path": "/zz"}]))
                .expect("remove applies");
            prop_assert_eq!(removed, doc.clone());
            // A failing `test` fails the whole patch and changes nothing.
            let failed = json_patch(&doc, &json!([
                {"op": "add", "path": "/zz", "value": 1},
                {"op": "test", "path": "/zz", "value": 2},
            ]));
            prop_assert_eq!(failed.map_err(|e| e.code), Err(422));
        }
    }
}
