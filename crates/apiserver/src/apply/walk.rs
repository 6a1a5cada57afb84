//! Walking objects with a [`Schema`]: the field set of an object, the fields that changed
//! between two objects, merging an applied configuration, and removing fields.

use serde_json::{Map, Value};

use super::fieldset::{Elem, FieldSet, canonical};
use super::schema::{ListType, Schema};

/// An associative list item whose key cannot be computed, or a duplicate key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeyError {
    /// Where, as upstream prints paths (`.spec.containers`).
    pub(crate) path: String,
    pub(crate) message: String,
}

fn dotted(path: &[String]) -> String {
    path.iter().map(|p| format!(".{p}")).collect()
}

/// The `k:` element of `item` in a list keyed by `keys`.
fn item_key(
    schema: &dyn Schema,
    path: &[String],
    item: &Value,
    keys: &[&str],
) -> Result<Elem, String> {
    let Value::Object(o) = item else {
        return Err("associative list item is not an object".into());
    };
    let mut k = Map::new();
    for key in keys {
        match o
            .get(*key)
            .cloned()
            .or_else(|| schema.key_default(path, key))
        {
            Some(v) if !v.is_null() => {
                k.insert((*key).to_string(), v);
            }
            _ => {
                return Err(format!(
                    "associative list with keys has an element that omits key field {key:?} \
                     (and doesn't have default value)"
                ));
            }
        }
    }
    Ok(Elem::Key(canonical(&Value::Object(k))))
}

/// The keys of every item of an associative list, or why they cannot be had.
fn keyed_items<'v>(
    schema: &dyn Schema,
    path: &[String],
    list: &'v [Value],
    keys: &[&str],
) -> Result<Vec<(Elem, &'v Value)>, KeyError> {
    let mut out: Vec<(Elem, &Value)> = Vec::with_capacity(list.len());
    for (i, item) in list.iter().enumerate() {
        let e = item_key(schema, path, item, keys).map_err(|m| KeyError {
            path: dotted(path),
            message: format!("element {i}: {m}"),
        })?;
        if out.iter().any(|(o, _)| *o == e) {
            return Err(KeyError {
                path: dotted(path),
                message: format!("duplicate entries for key {}", key_display(&e)),
            });
        }
        out.push((e, item));
    }
    Ok(out)
}

fn key_display(e: &Elem) -> String {
    super::fieldset::path_string(std::slice::from_ref(e))
}

/// The field set of `v` below `node`. With `strict` (apply), an associative list whose items
/// lack their keys is an error. Otherwise (the fields an update adds) such a list is owned as
/// one field, since updates must not fail on what they did not touch, and a map with arbitrary
/// keys is a member itself (`.`), as upstream records an added map.
pub(crate) fn field_set(
    schema: &dyn Schema,
    path: &mut Vec<String>,
    v: &Value,
    node: &mut FieldSet,
    strict: bool,
) -> Result<(), KeyError> {
    match v {
        Value::Object(m) if !m.is_empty() && !schema.atomic_object(path) => {
            // A map an update adds is owned itself too; an applied one is not.
            if !strict && schema.is_map(path) {
                node.member = true;
            }
            for (k, c) in m {
                path.push(k.clone());
                let r = field_set(
                    schema,
                    path,
                    c,
                    node.child_mut(Elem::Field(k.clone())),
                    strict,
                );
                path.pop();
                r?;
            }
        }
        Value::Array(a) if !a.is_empty() => match schema.list_type(path) {
            ListType::Atomic => node.member = true,
            ListType::Set => {
                for item in a {
                    node.child_mut(Elem::Value(canonical(item))).member = true;
                }
            }
            ListType::Map(keys) => match keyed_items(schema, path, a, keys) {
                Ok(items) => {
                    for (e, item) in items {
                        let child = node.child_mut(e);
                        child.member = true;
                        field_set(schema, path, item, child, strict)?;
                    }
                }
                Err(e) if strict => return Err(e),
                Err(_) => node.member = true,
            },
        },
        _ => node.member = true,
    }
    Ok(())
}

/// The fields set or changed (`changed`) and removed (`removed`) from `old` to `new`.
pub(crate) fn diff(
    schema: &dyn Schema,
    path: &mut Vec<String>,
    old: Option<&Value>,
    new: Option<&Value>,
    changed: &mut FieldSet,
    removed: &mut FieldSet,
) {
    let (old, new) = match (old, new) {
        (None, None) => return,
        (Some(_), None) => {
            removed.member = true;
            return;
        }
        (None, Some(n)) => {
            let _ = field_set(schema, path, n, changed, false);
            return;
        }
        (Some(o), Some(n)) => (o, n),
    };
    if old == new {
        return;
    }
    match (old, new) {
        (Value::Object(o), Value::Object(n))
            if !o.is_empty() && !n.is_empty() && !schema.atomic_object(path) =>
        {
            for (k, nv) in n {
                path.push(k.clone());
                let e = Elem::Field(k.clone());
                diff(
                    schema,
                    path,
                    o.get(k),
                    Some(nv),
                    changed.child_mut(e.clone()),
                    removed.child_mut(e),
                );
                path.pop();
            }
            for k in o.keys().filter(|k| !n.contains_key(*k)) {
                removed.child_mut(Elem::Field(k.clone())).member = true;
            }
        }
        (Value::Array(o), Value::Array(n)) => match schema.list_type(path) {
            ListType::Atomic => changed.member = true,
            ListType::Set => {
                let oc: Vec<String> = o.iter().map(canonical).collect();
                let nc: Vec<String> = n.iter().map(canonical).collect();
                for v in nc.iter().filter(|v| !oc.contains(v)) {
                    changed.child_mut(Elem::Value(v.clone())).member = true;
                }
                for v in oc.iter().filter(|v| !nc.contains(v)) {
                    removed.child_mut(Elem::Value(v.clone())).member = true;
                }
            }
            ListType::Map(keys) => {
                let (Ok(oi), Ok(ni)) = (
                    keyed_items(schema, path, o, keys),
                    keyed_items(schema, path, n, keys),
                ) else {
                    changed.member = true;
                    return;
                };
                for (e, nv) in &ni {
                    match oi.iter().find(|(k, _)| k == e) {
                        Some((_, ov)) => diff(
                            schema,
                            path,
                            Some(ov),
                            Some(nv),
                            changed.child_mut(e.clone()),
                            removed.child_mut(e.clone()),
                        ),
                        None => {
                            let child = changed.child_mut(e.clone());
                            child.member = true;
                            let _ = field_set(schema, path, nv, child, false);
                        }
                    }
                }
                for (e, _) in oi.iter().filter(|(k, _)| !ni.iter().any(|(n, _)| n == k)) {
                    removed.child_mut(e.clone()).member = true;
                }
            }
        },
        (o, n) => {
            // A scalar changed, or the value changed shape: the new value replaces the old,
            // and what was below the old one is gone.
            if o.is_object() || o.is_array() {
                removed.member = true;
            }
            let _ = field_set(schema, path, n, changed, false);
            changed.member = true;
        }
    }
}

/// Merges an applied configuration into `live`: maps and structs field by field, sets by
/// value, associative lists by key, anything else replaced. `null` removes a field.
pub(crate) fn merge(
    schema: &dyn Schema,
    path: &mut Vec<String>,
    live: &mut Value,
    applied: &Value,
) -> Result<(), KeyError> {
    match (live, applied) {
        (Value::Object(l), Value::Object(a)) if !schema.atomic_object(path) => {
            for (k, av) in a {
                if av.is_null() {
                    l.remove(k);
                    continue;
                }
                path.push(k.clone());
                let r = merge(schema, path, l.entry(k.clone()).or_insert(Value::Null), av);
                path.pop();
                r?;
            }
        }
        (Value::Array(l), Value::Array(a)) => match schema.list_type(path) {
            ListType::Atomic => *l = a.clone(),
            ListType::Set => {
                for item in a {
                    if !l.contains(item) {
                        l.push(item.clone());
                    }
                }
            }
            ListType::Map(keys) => {
                let applied_items = keyed_items(schema, path, a, keys)?;
                for (e, av) in applied_items {
                    let found = l
                        .iter()
                        .position(|li| item_key(schema, path, li, keys).is_ok_and(|k| k == e));
                    match found {
                        Some(i) => merge(schema, path, &mut l[i], av)?,
                        None => l.push(av.clone()),
                    }
                }
            }
        },
        (live, applied) => *live = applied.clone(),
    }
    Ok(())
}

/// Whether `item` is the associative list item named by the `k:` element `key`.
fn matches_key(item: &Value, key: &Value) -> bool {
    let (Value::Object(i), Value::Object(k)) = (item, key) else {
        return false;
    };
    k.iter().all(|(name, want)| match i.get(name) {
        Some(v) => v == want,
        None => name == "protocol" && want == "TCP",
    })
}

/// Removes the members of `set` (with what lies below them) from `v`.
pub(crate) fn remove_fields(v: &mut Value, set: &FieldSet) {
    for (e, child) in &set.children {
        match (e, &mut *v) {
            (Elem::Field(f), Value::Object(m)) => {
                if child.member {
                    m.remove(f);
                } else if let Some(c) = m.get_mut(f) {
                    remove_fields(c, child);
                    // A map emptied by the removal goes too, as an omitted Go map would.
                    if c.as_object().is_some_and(Map::is_empty) {
                        m.remove(f);
                    }
                }
            }
            (Elem::Key(k), Value::Array(a)) => {
                let Ok(key) = serde_json::from_str::<Value>(k) else {
                    continue;
                };
                if child.member {
                    a.retain(|item| !matches_key(item, &key));
                } else if let Some(item) = a.iter_mut().find(|item| matches_key(item, &key)) {
                    remove_fields(item, child);
                }
            }
            (Elem::Value(val), Value::Array(a)) => {
                a.retain(|item| canonical(item) != *val);
            }
            (Elem::Index(i), Value::Array(a)) if child.member && *i < a.len() => {
                a.remove(*i);
            }
            _ => {}
        }
    }
}

/// The value at a field path, if there is one.
pub(crate) fn value_at<'v>(v: &'v Value, path: &[Elem]) -> Option<&'v Value> {
    let Some((e, rest)) = path.split_first() else {
        return Some(v);
    };
    let next = match (e, v) {
        (Elem::Field(f), Value::Object(m)) => m.get(f),
        (Elem::Key(k), Value::Array(a)) => {
            let key = serde_json::from_str::<Value>(k).ok()?;
            a.iter().find(|item| matches_key(item, &key))
        }
        (Elem::Value(val), Value::Array(a)) => a.iter().find(|item| canonical(item) == *val),
        (Elem::Index(i), Value::Array(a)) => a.get(*i),
        _ => None,
    }?;
    value_at(next, rest)
}

#[cfg(test)]
mod tests {
    use super::super::schema::TypedSchema;
    use super::*;
    use crate::registry::REGISTRY;
    use serde_json::json;
    use std::sync::LazyLock;

    static DEPLOY: LazyLock<TypedSchema> = LazyLock::new(|| {
        TypedSchema::of(
            REGISTRY
                .find("apps", "v1", "deployments")
                .expect("deployments"),
        )
    });

    fn set_of(v: &Value) -> FieldSet {
        let mut s = FieldSet::default();
        field_set(&*DEPLOY, &mut Vec::new(), v, &mut s, true).expect("keys");
        s
    }

    #[test]
    fn field_sets_use_list_keys_values_and_atomic_structs() {
        let s = set_of(&json!({
            "metadata": {"labels": {"app": "a"}, "finalizers": ["x"]},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "a"}},
                "template": {"spec": {"containers": [
                    {"name": "c", "image": "i", "ports": [{"containerPort": 80}], "args": ["a"]},
                ]}},
            },
        }));
        assert_eq!(
            s.to_fields_v1(),
            json!({
                "f:metadata": {"f:finalizers": {"v:\"x\"": {}}, "f:labels": {"f:app": {}}},
                "f:spec": {
                    "f:replicas": {},
                    "f:selector": {},
                    "f:template": {"f:spec": {"f:containers": {"k:{\"name\":\"c\"}": {
                        ".": {},
                        "f:args": {},
                        "f:image": {},
                        "f:name": {},
                        "f:ports": {"k:{\"containerPort\":80,\"protocol\":\"TCP\"}": {
                            ".": {}, "f:containerPort": {},
                        }},
                    }}}},
                },
            })
        );
        let err = field_set(
            &*DEPLOY,
            &mut Vec::new(),
            &json!({"spec": {"template": {"spec": {"containers": [{"image": "i"}]}}}}),
            &mut FieldSet::default(),
            true,
        )
        .expect_err("no key");
        assert_eq!(err.path, ".spec.template.spec.containers");
        assert!(
            err.message.contains("omits key field \"name\""),
            "{}",
            err.message
        );
    }

    #[test]
    fn merge_keeps_other_items_and_replaces_atomic_lists() {
        let mut live = json!({"spec": {"replicas": 1, "template": {"spec": {"containers": [
            {"name": "a", "image": "a:1", "args": ["x", "y"]},
            {"name": "b", "image": "b:1"},
        ]}}}});
        merge(
            &*DEPLOY,
            &mut Vec::new(),
            &mut live,
            &json!({"spec": {"replicas": null, "template": {"spec": {"containers": [
                {"name": "a", "args": ["z"]},
                {"name": "c", "image": "c:1"},
            ]}}}}),
        )
        .expect("merges");
        assert_eq!(
            live,
            json!({"spec": {"template": {"spec": {"containers": [
                {"name": "a", "image": "a:1", "args": ["z"]},
                {"name": "b", "image": "b:1"},
                {"name": "c", "image": "c:1"},
            ]}}}})
        );
    }

    #[test]
    fn diff_reports_changed_and_removed_fields() {
        let old = json!({"spec": {"replicas": 1, "paused": true, "template": {"spec": {
            "containers": [{"name": "a", "image": "a:1"}, {"name": "b", "image": "b:1"}]}}}});
        let new = json!({"spec": {"replicas": 2, "template": {"spec": {
            "containers": [{"name": "a", "image": "a:2"}, {"name": "c", "image": "c:1"}]}}}});
        let (mut changed, mut removed) = (FieldSet::default(), FieldSet::default());
        diff(
            &*DEPLOY,
            &mut Vec::new(),
            Some(&old),
            Some(&new),
            &mut changed,
            &mut removed,
        );
        changed.prune();
        removed.prune();
        let c = r#"k:{"name":"c"}"#;
        assert_eq!(
            changed.to_fields_v1(),
            json!({"f:spec": {"f:replicas": {}, "f:template": {"f:spec": {"f:containers": {
                "k:{\"name\":\"a\"}": {"f:image": {}},
                c: {".": {}, "f:image": {}, "f:name": {}},
            }}}}})
        );
        assert_eq!(
            removed.to_fields_v1(),
            json!({"f:spec": {"f:paused": {}, "f:template": {"f:spec": {"f:containers": {
                "k:{\"name\":\"b\"}": {},
            }}}}})
        );
        // Removing what the diff says was removed from the old object leaves only new items.
        let mut o = old.clone();
        remove_fields(&mut o, &removed);
        assert_eq!(o["spec"].get("paused"), None);
        assert_eq!(
            o["spec"]["template"]["spec"]["containers"]
                .as_array()
                .map(Vec::len),
            Some(1)
        );
    }

    #[test]
    fn values_are_found_by_path() {
        let v = json!({"spec": {"ports": [{"port": 80, "name": "http"}]}});
        let svc = TypedSchema::of(REGISTRY.find("", "v1", "services").expect("services"));
        let mut s = FieldSet::default();
        field_set(&svc, &mut Vec::new(), &v, &mut s, true).expect("keys");
        let paths = s.members();
        let name = paths
            .iter()
            .find(|p| p.last() == Some(&Elem::Field("name".into())))
            .expect("name path");
        assert_eq!(value_at(&v, name), Some(&json!("http")));
    }
}
