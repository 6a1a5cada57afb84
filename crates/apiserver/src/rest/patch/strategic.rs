//! Strategic merge patch, with upstream's semantics (k8s.io/apimachinery `strategicpatch`, as
//! the apiserver applies it: parallel deletion lists merged, unmatched nulls ignored).
//!
//! - Maps merge recursively; `null` deletes a key; a field whose strategy is `replace` is
//!   replaced whole.
//! - Lists are replaced, unless their field's strategy is `merge`: lists of objects then merge
//!   item by item on the field's merge key, lists of scalars are a set union.
//! - Directives: `$patch: replace|delete` in a map or a list item (`merge` only as a no-op
//!   error, as upstream), `$deleteFromPrimitiveList/<field>`, `$setElementOrder/<field>`,
//!   `$retainKeys`.
//! - Order of merged lists: `$setElementOrder` first, then the patch's order, then the live
//!   object's (upstream's `normalizeElementOrder`).
//!
//! Errors carry upstream's messages and status codes: malformed directives are 400, lists of
//! lists 422, and the rest (a list item without its merge key, an unknown `$patch`) are what
//! upstream returns for a plain error, a 500 without a reason.

use std::cmp::Ordering;

use serde_json::{Map, Value};

use crate::patch_meta::{Node, Strategy};
use crate::status::ApiError;

const DIRECTIVE: &str = "$patch";
const RETAIN_KEYS: &str = "$retainKeys";
const DELETE_FROM_PRIMITIVE_LIST: &str = "$deleteFromPrimitiveList";
const SET_ELEMENT_ORDER: &str = "$setElementOrder";

/// Why a strategic merge patch could not be applied; messages as upstream's.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum SmpError {
    #[error("lists of lists are not supported")]
    NoListOfLists,
    #[error("invalid patch format of primitive list")]
    BadPrimitiveList,
    #[error("invalid patch format of retainKeys")]
    BadRetainKeys,
    #[error("invalid patch format of setElementOrder list")]
    BadSetElementOrder,
    #[error("map: {map} does not contain declared merge key: {key}")]
    NoMergeKey { map: String, key: String },
    #[error("unknown patch type: {kind} in map: {map}")]
    BadPatchType { kind: String, map: String },
    #[error("cannot merge lists without merge key for {0}")]
    NoMergeKeyDeclared(String),
    #[error("merging lists cannot yet be specified in the patch")]
    MergeInList,
    #[error("expected a {expected}, but received a {actual}")]
    BadArgType {
        expected: &'static str,
        actual: &'static str,
    },
    #[error("list element types are not identical: {0}")]
    MixedList(String),
    #[error("no elements in any of the given slices")]
    NoElements,
    #[error("The order in patch list:\n{patch}\n doesn't match $setElementOrder list:\n{order}\n")]
    OrderMismatch { patch: String, order: String },
}

impl From<SmpError> for ApiError {
    fn from(e: SmpError) -> Self {
        match e {
            SmpError::BadPrimitiveList | SmpError::BadRetainKeys | SmpError::BadSetElementOrder => {
                ApiError::bad_request(e.to_string())
            }
            SmpError::NoListOfLists => ApiError::new(422, "", e.to_string()),
            _ => ApiError::new(500, "", e.to_string()),
        }
    }
}

type Result<T> = std::result::Result<T, SmpError>;

/// Applies `patch` to `original` (both JSON objects), with the metadata of `node` (the
/// original's type).
pub(crate) fn apply(original: &Value, patch: &Value, node: Node<'_>) -> Result<Value> {
    let original = match original {
        Value::Object(m) => m.clone(),
        _ => Map::new(),
    };
    let Value::Object(patch) = patch else {
        return Err(SmpError::BadArgType {
            expected: "map[string]interface {}",
            actual: go_type(patch),
        });
    };
    merge_map(original, patch.clone(), node).map(Value::Object)
}

/// The kind of a JSON value, as Go's `reflect.TypeOf` of its decoded form tells them apart.
fn go_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "<nil>",
        Value::Bool(_) => "bool",
        Value::Number(_) => "float64",
        Value::String(_) => "string",
        Value::Array(_) => "[]interface {}",
        Value::Object(_) => "map[string]interface {}",
    }
}

/// A value as Go's `%v` prints its decoded form (`map[a:1 b:[x y]]`), for error messages.
pub(crate) fn go_fmt(v: &Value) -> String {
    match v {
        Value::Null => "<nil>".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => match n.as_f64() {
            Some(f) if f.fract() == 0.0 && f.abs() < 1e21 => format!("{f:.0}"),
            Some(f) => f.to_string(),
            None => n.to_string(),
        },
        Value::String(s) => s.clone(),
        Value::Array(a) => format!("[{}]", a.iter().map(go_fmt).collect::<Vec<_>>().join(" ")),
        Value::Object(m) => {
            // Go prints maps sorted by key.
            let mut entries: Vec<_> = m.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            let entries: Vec<String> = entries
                .into_iter()
                .map(|(k, v)| format!("{k}:{}", go_fmt(v)))
                .collect();
            format!("map[{}]", entries.join(" "))
        }
    }
}

fn no_merge_key(m: &Map<String, Value>, key: &str) -> SmpError {
    SmpError::NoMergeKey {
        map: go_fmt(&Value::Object(m.clone())),
        key: key.to_string(),
    }
}

/// The patch metadata of field `name` of the object at `node`: its strategy, merge key, and
/// the node of its value. Fields the schema does not know are untyped.
fn field_meta<'a>(node: Node<'a>, name: &str) -> (Strategy, &'a str, Node<'a>) {
    if let Some((f, child)) = node.field(name) {
        return (f.strategy, f.merge_key.unwrap_or(""), child);
    }
    match node.elements() {
        // A map's values (labels, resources.limits, ...).
        Some(values) if node.definition().is_none() => (Strategy::default(), "", values),
        _ => (Strategy::default(), "", Node::any()),
    }
}

/// The node of a list's items.
fn items(node: Node<'_>) -> Node<'_> {
    node.elements().unwrap_or_else(|| Node::any())
}

/// Splits `<prefix>/<field>` into the field; anything else under the prefix is malformed.
fn extract_key<'k>(key: &'k str, prefix: &str) -> Result<&'k str> {
    match key.split_once('/') {
        Some((p, rest)) if p == prefix => Ok(rest),
        _ if prefix == DELETE_FROM_PRIMITIVE_LIST => Err(SmpError::BadPrimitiveList),
        _ => Err(SmpError::BadSetElementOrder),
    }
}

fn merge_map(
    mut original: Map<String, Value>,
    mut patch: Map<String, Value>,
    node: Node<'_>,
) -> Result<Map<String, Value>> {
    if let Some(d) = patch.get(DIRECTIVE) {
        return match d.as_str() {
            Some("replace") => {
                patch.remove(DIRECTIVE);
                Ok(patch)
            }
            Some("delete") => Ok(Map::new()),
            _ => Err(SmpError::BadPatchType {
                kind: go_fmt(d),
                map: go_fmt(&Value::Object(patch.clone())),
            }),
        };
    }
    apply_retain_keys(&mut original, &mut patch)?;
    merge_set_element_order(&mut original, &mut patch, node)?;

    // Plain fields first, then the deletion lists of primitive lists (upstream's order is a Go
    // map's, i.e. random; this one is stable and gives what kubectl's patches mean).
    let (deletions, plain): (Vec<_>, Vec<_>) = patch
        .into_iter()
        .partition(|(k, _)| k.starts_with(DELETE_FROM_PRIMITIVE_LIST));
    for (key, mut patch_v) in plain.into_iter().chain(deletions) {
        let is_delete_list = key.starts_with(DELETE_FROM_PRIMITIVE_LIST);
        let k = if is_delete_list {
            extract_key(&key, DELETE_FROM_PRIMITIVE_LIST)?.to_string()
        } else {
            key
        };
        if patch_v.is_null() {
            original.remove(&k);
            continue;
        }
        let Some(orig_v) = original.get_mut(&k) else {
            if !is_delete_list {
                discard_nulls(&mut patch_v);
                if let Some(v) = remove_directives(patch_v) {
                    original.insert(k, v);
                }
            }
            continue;
        };
        if std::mem::discriminant(orig_v) != std::mem::discriminant(&patch_v) {
            if !is_delete_list {
                discard_nulls(&mut patch_v);
                match remove_directives(patch_v) {
                    Some(v) => *orig_v = v,
                    None => {
                        original.remove(&k);
                    }
                }
            }
            continue;
        }
        let (strategy, merge_key, child) = field_meta(node, &k);
        match (orig_v.take(), patch_v) {
            (Value::Object(o), Value::Object(p)) => {
                *orig_v = if strategy.replace {
                    Value::Object(p)
                } else {
                    Value::Object(merge_map(o, p, child)?)
                };
            }
            (Value::Array(o), Value::Array(p)) => {
                *orig_v = Value::Array(merge_slice_handler(
                    o,
                    p,
                    items(child),
                    strategy,
                    merge_key,
                    is_delete_list,
                )?);
            }
            (_, p) => *orig_v = p,
        }
    }
    Ok(original)
}

/// `$retainKeys`: keys of the original not listed are cleared; every key the patch sets must
/// be listed.
fn apply_retain_keys(
    original: &mut Map<String, Value>,
    patch: &mut Map<String, Value>,
) -> Result<()> {
    let Some(retain) = patch.remove(RETAIN_KEYS) else {
        return Ok(());
    };
    let Value::Array(retain) = retain else {
        return Err(SmpError::BadRetainKeys);
    };
    let listed = |k: &str| retain.iter().any(|r| r.as_str() == Some(k));
    for (k, v) in patch.iter() {
        if v.is_null()
            || k.starts_with(DELETE_FROM_PRIMITIVE_LIST)
            || k.starts_with(SET_ELEMENT_ORDER)
        {
            continue;
        }
        if !listed(k) {
            return Err(SmpError::BadRetainKeys);
        }
    }
    original.retain(|k, _| listed(k));
    Ok(())
}

fn as_list(v: &Value) -> Result<&Vec<Value>> {
    v.as_array().ok_or(SmpError::BadArgType {
        expected: "[]interface {}",
        actual: go_type(v),
    })
}

/// `$setElementOrder/<field>`: merges the field's list (if the patch has it) and orders the
/// result: listed items in the listed order, the live object's other items among them.
fn merge_set_element_order(
    original: &mut Map<String, Value>,
    patch: &mut Map<String, Value>,
    node: Node<'_>,
) -> Result<()> {
    let keys: Vec<String> = patch
        .keys()
        .filter(|k| k.starts_with(SET_ELEMENT_ORDER))
        .cloned()
        .collect();
    for key in keys {
        let Some(order) = patch.remove(&key) else {
            continue;
        };
        let order = as_list(&order)?.clone();
        let field = extract_key(&key, SET_ELEMENT_ORDER)?.to_string();
        let orig_list = original.get(&field).map(as_list).transpose()?.cloned();
        let patch_list = patch.get(&field).map(as_list).transpose()?.cloned();
        let (strategy, merge_key, child) = field_meta(node, &field);
        validate_with_set_order(patch_list.as_deref().unwrap_or(&[]), &order, merge_key)?;
        let merged = match (&orig_list, &patch_list) {
            (Some(o), None) => o.clone(),
            (None, Some(p)) => match remove_directives(Value::Array(p.clone())) {
                Some(Value::Array(v)) => v,
                _ => continue,
            },
            (Some(o), Some(p)) => merge_slice_handler(
                o.clone(),
                p.clone(),
                items(child),
                strategy,
                merge_key,
                false,
            )?,
            (None, None) => continue,
        };
        let (patch_items, server_only) = partition(merged, &order, merge_key)?;
        let orig_list = orig_list.unwrap_or_default();
        let kind = element_kind(&orig_list, patch_list.as_deref().unwrap_or(&[]))?;
        let both = normalize_element_order(
            patch_items,
            server_only,
            &order,
            &orig_list,
            merge_key,
            kind,
        )?;
        original.insert(field.clone(), Value::Array(both));
        patch.remove(&field);
    }
    Ok(())
}

/// The patch list's items (deletions and directives aside) must appear in the
/// `$setElementOrder` list, in the same relative order.
fn validate_with_set_order(patch: &[Value], order: &[Value], merge_key: &str) -> Result<()> {
    if patch.is_empty() || order.is_empty() {
        return Ok(());
    }
    let non_delete: Vec<&Value> = if merge_key.is_empty() {
        patch.iter().collect()
    } else {
        let mut out = Vec::new();
        for v in patch {
            let m = v.as_object().ok_or(SmpError::BadArgType {
                expected: "map[string]interface {}",
                actual: go_type(v),
            })?;
            if m.get(DIRECTIVE).and_then(Value::as_str) != Some("delete") {
                out.push(v);
            }
        }
        out
    };
    let (mut pi, mut si) = (0, 0);
    while pi < non_delete.len() && si < order.len() {
        if non_delete[pi]
            .as_object()
            .is_some_and(|m| m.contains_key(DIRECTIVE))
        {
            pi += 1;
            continue;
        }
        if merge_key_value_equal(non_delete[pi], &order[si], merge_key)? {
            pi += 1;
        }
        si += 1;
    }
    if pi < non_delete.len() && si >= order.len() {
        return Err(SmpError::OrderMismatch {
            patch: go_fmt(&Value::Array(patch.to_vec())),
            order: go_fmt(&Value::Array(order.to_vec())),
        });
    }
    Ok(())
}

fn merge_key_value_equal(left: &Value, right: &Value, merge_key: &str) -> Result<bool> {
    if merge_key.is_empty() {
        return Ok(left == right);
    }
    let as_map = |v: &'_ Value| {
        v.as_object().cloned().ok_or(SmpError::BadArgType {
            expected: "map[string]interface {}",
            actual: go_type(v),
        })
    };
    let (l, r) = (as_map(left)?, as_map(right)?);
    let lk = l
        .get(merge_key)
        .ok_or_else(|| no_merge_key(&l, merge_key))?;
    let rk = r
        .get(merge_key)
        .ok_or_else(|| no_merge_key(&r, merge_key))?;
    Ok(lk == rk)
}

fn merge_slice_handler(
    original: Vec<Value>,
    patch: Vec<Value>,
    items: Node<'_>,
    strategy: Strategy,
    merge_key: &str,
    is_delete_list: bool,
) -> Result<Vec<Value>> {
    if strategy.merge || is_delete_list {
        merge_slice(original, patch, items, merge_key, is_delete_list)
    } else {
        Ok(patch)
    }
}

/// What a list holds, for merging: objects or scalars.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ElementKind {
    Object,
    Scalar,
}

/// The common kind of the items of the lists: all must be of one JSON type, and not lists.
fn element_kind(a: &[Value], b: &[Value]) -> Result<ElementKind> {
    let mut first: Option<&Value> = None;
    for v in a.iter().chain(b) {
        match first {
            None => {
                if v.is_array() {
                    return Err(SmpError::NoListOfLists);
                }
                first = Some(v);
            }
            Some(f) if std::mem::discriminant(f) != std::mem::discriminant(v) => {
                return Err(SmpError::MixedList(format!(
                    "[{} {}]",
                    go_fmt(&Value::Array(a.to_vec())),
                    go_fmt(&Value::Array(b.to_vec()))
                )));
            }
            Some(_) => {}
        }
    }
    match first {
        None => Err(SmpError::NoElements),
        Some(Value::Object(_)) => Ok(ElementKind::Object),
        Some(_) => Ok(ElementKind::Scalar),
    }
}

fn merge_slice(
    original: Vec<Value>,
    patch: Vec<Value>,
    items: Node<'_>,
    merge_key: &str,
    is_delete_list: bool,
) -> Result<Vec<Value>> {
    if original.is_empty() && patch.is_empty() {
        return Ok(original);
    }
    let kind = element_kind(&original, &patch)?;
    let (original, patch, merged) = match kind {
        ElementKind::Scalar => {
            if is_delete_list {
                return Ok(original
                    .into_iter()
                    .filter(|v| !patch.contains(v))
                    .collect());
            }
            let mut merged: Vec<Value> = Vec::with_capacity(original.len() + patch.len());
            for v in original.iter().chain(&patch) {
                if !merged.contains(v) {
                    merged.push(v.clone());
                }
            }
            (original, patch, merged)
        }
        ElementKind::Object => {
            if merge_key.is_empty() {
                let name = items
                    .definition()
                    .map_or("", |d| d.name.rsplit('.').next().unwrap_or(""));
                return Err(SmpError::NoMergeKeyDeclared(name.to_string()));
            }
            let (original, patch) = merge_special_elements(original, patch, merge_key)?;
            let merged = merge_plain_elements(original.clone(), &patch, merge_key, items)?;
            (original, patch, merged)
        }
    };
    let (patch_items, server_only) = partition(merged, &patch, merge_key)?;
    normalize_element_order(patch_items, server_only, &patch, &original, merge_key, kind)
}

/// Applies the `$patch` items of a list of objects: `delete` removes the items with the
/// item's merge key value, `replace` makes the list the patch's other items.
fn merge_special_elements(
    mut original: Vec<Value>,
    patch: Vec<Value>,
    merge_key: &str,
) -> Result<(Vec<Value>, Vec<Value>)> {
    let mut plain = Vec::with_capacity(patch.len());
    let mut replace = false;
    for v in patch {
        let Value::Object(m) = &v else {
            plain.push(v);
            continue;
        };
        let Some(directive) = m.get(DIRECTIVE) else {
            plain.push(v);
            continue;
        };
        match directive.as_str() {
            Some("delete") => {
                let value = m.get(merge_key).ok_or_else(|| no_merge_key(m, merge_key))?;
                original.retain(|o| o.get(merge_key) != Some(value));
            }
            Some("replace") => replace = true,
            Some("merge") => return Err(SmpError::MergeInList),
            _ => {
                return Err(SmpError::BadPatchType {
                    kind: go_fmt(directive),
                    map: go_fmt(&v),
                });
            }
        }
    }
    if replace {
        Ok((plain, Vec::new()))
    } else {
        Ok((original, plain))
    }
}

/// Merges each patch item into the original item with its merge key value, or appends it.
fn merge_plain_elements(
    mut original: Vec<Value>,
    patch: &[Value],
    merge_key: &str,
    items: Node<'_>,
) -> Result<Vec<Value>> {
    for v in patch {
        let Value::Object(m) = v else { continue };
        let value = m.get(merge_key).ok_or_else(|| no_merge_key(m, merge_key))?;
        let found = original
            .iter()
            .position(|o| o.as_object().and_then(|o| o.get(merge_key)) == Some(value));
        match found {
            Some(i) => {
                let o = match original[i].take() {
                    Value::Object(o) => o,
                    _ => Map::new(),
                };
                original[i] = Value::Object(merge_map(o, m.clone(), items)?);
            }
            None => original.push(v.clone()),
        }
    }
    Ok(original)
}

/// Splits `merged` into the items present in `by` and the others, keeping their order.
fn partition(
    merged: Vec<Value>,
    by: &[Value],
    merge_key: &str,
) -> Result<(Vec<Value>, Vec<Value>)> {
    let mut present = Vec::with_capacity(merged.len());
    let mut others = Vec::new();
    for v in merged {
        let found = if merge_key.is_empty() {
            by.contains(&v)
        } else {
            let m = v.as_object().ok_or(SmpError::BadArgType {
                expected: "map[string]interface {}",
                actual: go_type(&v),
            })?;
            let value = m.get(merge_key).ok_or_else(|| no_merge_key(m, merge_key))?;
            by.iter()
                .any(|b| b.as_object().and_then(|b| b.get(merge_key)) == Some(value))
        };
        if found {
            present.push(v);
        } else {
            others.push(v);
        }
    }
    Ok((present, others))
}

/// The position of `v` in `list`, by merge key value (objects) or value (scalars).
fn index_of(list: &[Value], v: &Value, merge_key: &str, kind: ElementKind) -> Option<usize> {
    let key_of = |x: &'_ Value| -> Option<Value> {
        match kind {
            ElementKind::Object => x.as_object().and_then(|m| m.get(merge_key)).cloned(),
            ElementKind::Scalar => Some(x.clone()),
        }
    };
    let target = key_of(v);
    list.iter().position(|x| key_of(x) == target)
}

/// Sorts `to_sort` by the positions of its items in `order` (items not there first, as
/// upstream's comparator leaves them); `$patch: delete` items go last.
fn normalize_slice_order(
    to_sort: Vec<Value>,
    order: &[Value],
    merge_key: &str,
    kind: ElementKind,
) -> Result<Vec<Value>> {
    let (mut keep, deletes) = if kind == ElementKind::Object {
        for v in to_sort.iter().chain(order) {
            if let Value::Object(m) = v
                && !m.contains_key(merge_key)
            {
                return Err(no_merge_key(m, merge_key));
            }
        }
        to_sort
            .into_iter()
            .partition::<Vec<_>, _>(|v| v.get(DIRECTIVE).and_then(Value::as_str) != Some("delete"))
    } else {
        (to_sort, Vec::new())
    };
    keep.sort_by(|a, b| {
        match (
            index_of(order, a, merge_key, kind),
            index_of(order, b, merge_key, kind),
        ) {
            (Some(x), Some(y)) => x.cmp(&y),
            (None, Some(_)) => Ordering::Less,
            _ => Ordering::Equal,
        }
    });
    keep.extend(deletes);
    Ok(keep)
}

/// Interleaves the patch's items and the live object's other items: each keeps its own
/// order, and a live item goes before a patch item when it comes first in the live list.
fn normalize_element_order(
    patch: Vec<Value>,
    server_only: Vec<Value>,
    patch_order: &[Value],
    server_order: &[Value],
    merge_key: &str,
    kind: ElementKind,
) -> Result<Vec<Value>> {
    let patch = normalize_slice_order(patch, patch_order, merge_key, kind)?;
    let server_only = normalize_slice_order(server_only, server_order, merge_key, kind)?;
    let mut out = Vec::with_capacity(patch.len() + server_only.len());
    let mut left = server_only.into_iter().peekable();
    let mut right = patch.into_iter().peekable();
    loop {
        let take_left = match (left.peek(), right.peek()) {
            (None, None) => break,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some(l), Some(r)) => matches!(
                (
                    index_of(server_order, l, merge_key, kind),
                    index_of(server_order, r, merge_key, kind),
                ),
                (Some(li), Some(ri)) if li < ri
            ),
        };
        let next = if take_left { left.next() } else { right.next() };
        out.extend(next);
    }
    Ok(out)
}

/// Drops objects that carry `$patch` (and their keys) from a value taken from the patch.
fn remove_directives(v: Value) -> Option<Value> {
    match v {
        Value::Object(m) => {
            if m.contains_key(DIRECTIVE) {
                return None;
            }
            Some(Value::Object(
                m.into_iter()
                    .filter_map(|(k, v)| remove_directives(v).map(|v| (k, v)))
                    .collect(),
            ))
        }
        Value::Array(a) => Some(Value::Array(
            a.into_iter().filter_map(remove_directives).collect(),
        )),
        v => Some(v),
    }
}

/// Removes `null` members from every object in a value taken from the patch.
fn discard_nulls(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|_, v| !v.is_null());
            m.values_mut().for_each(discard_nulls);
        }
        Value::Array(a) => a.iter_mut().for_each(discard_nulls),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::patch_meta::SCHEMAS;
    use proptest::prelude::{Just, any, prop, prop_assert, prop_assert_eq, prop_oneof, proptest};
    use proptest::strategy::Strategy as _;
    use serde_json::json;

    fn deployment() -> Node<'static> {
        SCHEMAS
            .root("apps", "v1", "Deployment")
            .expect("deployments")
    }
    fn pod() -> Node<'static> {
        SCHEMAS.root("", "v1", "Pod").expect("pods")
    }
    fn smp(node: Node<'static>, doc: Value, patch: Value) -> Value {
        apply(&doc, &patch, node).expect("applies")
    }

    #[test]
    fn containers_merge_on_name_and_lists_without_strategy_are_replaced() {
        let doc = json!({"spec": {"containers": [
            {"name": "a", "image": "a:1", "args": ["x", "y"], "env": [{"name": "E", "value": "1"}]},
            {"name": "b", "image": "b:1"},
        ]}});
        let out = smp(
            pod(),
            doc,
            json!({"spec": {"containers": [{"name": "a", "image": "a:2", "args": ["z"]}]}}),
        );
        assert_eq!(
            out["spec"]["containers"],
            json!([
                {"name": "a", "image": "a:2", "args": ["z"], "env": [{"name": "E", "value": "1"}]},
                {"name": "b", "image": "b:1"},
            ])
        );
    }

    #[test]
    fn new_items_go_first_without_an_order_and_where_set_element_order_says_with_one() {
        let doc = json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}]}});
        let out = smp(
            pod(),
            doc.clone(),
            json!({"spec": {"containers": [{"name": "c"}]}}),
        );
        assert_eq!(
            out["spec"]["containers"],
            json!([{"name": "c"}, {"name": "a"}, {"name": "b"}])
        );
        let out = smp(
            pod(),
            doc,
            json!({"spec": {
                "$setElementOrder/containers": [{"name": "a"}, {"name": "c"}, {"name": "b"}],
                "containers": [{"name": "c", "image": "c"}],
            }}),
        );
        assert_eq!(
            out["spec"]["containers"],
            json!([{"name": "a"}, {"name": "c", "image": "c"}, {"name": "b"}])
        );
    }

    #[test]
    fn patch_directives_in_lists_and_maps() {
        let doc = json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}, {"name": "c"}]},
                         "metadata": {"labels": {"x": "1", "y": "2"}}});
        let out = smp(
            pod(),
            doc.clone(),
            json!({"spec": {"containers": [{"name": "b", "$patch": "delete"}]}}),
        );
        assert_eq!(
            out["spec"]["containers"],
            json!([{"name": "a"}, {"name": "c"}])
        );
        let out = smp(
            pod(),
            doc.clone(),
            json!({"spec": {"containers": [{"name": "z"}, {"$patch": "replace"}]}}),
        );
        assert_eq!(out["spec"]["containers"], json!([{"name": "z"}]));
        let out = smp(
            pod(),
            doc.clone(),
            json!({"metadata": {"labels": {"z": "3", "$patch": "replace"}}}),
        );
        assert_eq!(out["metadata"]["labels"], json!({"z": "3"}));
        let out = smp(
            pod(),
            doc.clone(),
            json!({"metadata": {"labels": {"$patch": "delete"}}}),
        );
        assert_eq!(out["metadata"]["labels"], json!({}));
        // A new subtree loses its directive-carrying objects.
        let out = smp(
            pod(),
            json!({}),
            json!({"spec": {"volumes": [{"name": "v", "$patch": "delete"}, {"name": "w"}]}}),
        );
        assert_eq!(out["spec"]["volumes"], json!([{"name": "w"}]));
    }

    #[test]
    fn primitive_lists_with_merge_strategy_are_sets() {
        let doc = json!({"metadata": {"finalizers": ["a", "b"]}});
        let out = smp(
            pod(),
            doc.clone(),
            json!({"metadata": {"finalizers": ["b", "c"]}}),
        );
        assert_eq!(out["metadata"]["finalizers"], json!(["a", "b", "c"]));
        let out = smp(
            pod(),
            doc.clone(),
            json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}}),
        );
        assert_eq!(out["metadata"]["finalizers"], json!(["b"]));
        let out = smp(
            pod(),
            doc,
            json!({"metadata": {
                "$setElementOrder/finalizers": ["c", "b"],
                "$deleteFromPrimitiveList/finalizers": ["a"],
                "finalizers": ["c"],
            }}),
        );
        assert_eq!(out["metadata"]["finalizers"], json!(["c", "b"]));
    }

    #[test]
    fn set_element_order_orders_env_and_nulls_delete() {
        let doc = json!({"spec": {"containers": [{"name": "a", "image": "i", "env": [
            {"name": "A", "value": "1"}, {"name": "B", "value": "2"},
        ]}]}});
        let out = smp(
            pod(),
            doc,
            json!({"spec": {
                "$setElementOrder/containers": [{"name": "a"}],
                "containers": [{
                    "name": "a",
                    "image": null,
                    "$setElementOrder/env": [{"name": "C"}, {"name": "B"}],
                    "env": [{"name": "C", "value": "3"}, {"name": "A", "$patch": "delete"}],
                }],
            }}),
        );
        assert_eq!(
            out["spec"]["containers"],
            json!([{"name": "a", "env": [{"name": "C", "value": "3"}, {"name": "B", "value": "2"}]}])
        );
    }

    #[test]
    fn retain_keys_clears_the_other_members_of_a_union() {
        let doc = json!({"spec": {
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}},
            "template": {"spec": {"volumes": [{"name": "v", "emptyDir": {}}]}},
        }});
        let out = smp(
            deployment(),
            doc,
            json!({"spec": {
                "strategy": {"$retainKeys": ["type"], "type": "Recreate"},
                "template": {"spec": {"volumes": [
                    {"name": "v", "$retainKeys": ["configMap", "name"], "configMap": {"name": "c"}},
                ]}},
            }}),
        );
        assert_eq!(out["spec"]["strategy"], json!({"type": "Recreate"}));
        assert_eq!(
            out["spec"]["template"]["spec"]["volumes"],
            json!([{"name": "v", "configMap": {"name": "c"}}])
        );
    }

    #[test]
    fn replace_strategy_replaces_maps() {
        let pdb = SCHEMAS
            .root("policy", "v1", "PodDisruptionBudget")
            .expect("pdb");
        let out = smp(
            pdb,
            json!({"spec": {"selector": {"matchLabels": {"a": "1"}}}}),
            json!({"spec": {"selector": {"matchLabels": {"b": "2"}}}}),
        );
        assert_eq!(out["spec"]["selector"], json!({"matchLabels": {"b": "2"}}));
    }

    #[test]
    fn errors_as_upstream() {
        let doc = json!({"spec": {"containers": [{"name": "a"}]}});
        let err = apply(
            &doc,
            &json!({"spec": {"containers": [{"image": "x"}]}}),
            pod(),
        )
        .expect_err("no merge key");
        assert_eq!(
            err.to_string(),
            "map: map[image:x] does not contain declared merge key: name"
        );
        assert_eq!(ApiError::from(err).code, 500);
        let err = apply(
            &doc,
            &json!({"spec": {"containers": [{"name": "a", "$patch": "bogus"}]}}),
            pod(),
        )
        .expect_err("bad directive");
        assert_eq!(
            err.to_string(),
            "unknown patch type: bogus in map: map[$patch:bogus name:a]"
        );
        let err = apply(
            &doc,
            &json!({"spec": {"containers": [{"name": "a", "$patch": "merge"}]}}),
            pod(),
        )
        .expect_err("merge in a list");
        assert_eq!(err, SmpError::MergeInList);
        let err = apply(
            &json!({"metadata": {"finalizers": ["a"]}}),
            &json!({"metadata": {"$deleteFromPrimitiveListfinalizers": ["a"]}}),
            pod(),
        )
        .expect_err("bad prefix");
        assert_eq!(ApiError::from(err).code, 400);
        let err = apply(&doc, &json!({"spec": {"$setElementOrder": []}}), pod())
            .expect_err("bad order key");
        assert_eq!(err, SmpError::BadSetElementOrder);
        let err = apply(
            &json!({"spec": {"strategy": {"type": "Recreate"}}}),
            &json!({"spec": {"strategy": {"$retainKeys": "type", "type": "Recreate"}}}),
            deployment(),
        )
        .expect_err("retainKeys not a list");
        assert_eq!(err, SmpError::BadRetainKeys);
        let err = apply(
            &json!({"spec": {"strategy": {"type": "Recreate"}}}),
            &json!({"spec": {"strategy": {"$retainKeys": ["type"], "rollingUpdate": {}}}}),
            deployment(),
        )
        .expect_err("key not retained");
        assert_eq!(ApiError::from(err).code, 400);
        let err = apply(
            &json!({"metadata": {"finalizers": [["a"]]}}),
            &json!({"metadata": {"finalizers": [["b"]]}}),
            pod(),
        )
        .expect_err("list of lists");
        assert_eq!(ApiError::from(err).code, 422);
        let err = apply(
            &doc,
            &json!({"spec": {
                "$setElementOrder/containers": [{"name": "a"}],
                "containers": [{"name": "b"}],
            }}),
            pod(),
        )
        .expect_err("order mismatch");
        assert!(matches!(err, SmpError::OrderMismatch { .. }), "{err}");
    }

    /// JSON without lists: objects of scalars and objects, with nulls in patches.
    fn tree(nulls: bool) -> impl proptest::strategy::Strategy<Value = Value> {
        let leaf = prop_oneof![
            any::<bool>().prop_map(Value::from),
            (-5i64..5).prop_map(Value::from),
            "[a-c]{0,2}".prop_map(Value::from),
        ];
        let leaf = if nulls {
            prop_oneof![4 => leaf, 1 => Just(Value::Null)].boxed()
        } else {
            leaf.boxed()
        };
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop::collection::btree_map("[a-d]", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect()))
        })
    }

    fn object(v: Value) -> Value {
        if v.is_object() { v } else { json!({"v": v}) }
    }

    proptest! {
        #[test]
        fn without_lists_and_directives_it_is_a_merge_patch(
            doc in tree(false).prop_map(object),
            patch in tree(true).prop_map(object),
        ) {
            let mut expected = doc.clone();
            crate::rest::patch::merge_patch(&mut expected, &patch);
            prop_assert_eq!(apply(&doc, &patch, Node::any()).expect("applies"), expected.clone());
            // Labels and annotations are typed maps of strings: the same there.
            let labels = |v: &Value| json!({"metadata": {"annotations": v}});
            let mut expected = labels(&doc);
            crate::rest::patch::merge_patch(&mut expected, &labels(&patch));
            prop_assert_eq!(
                apply(&labels(&doc), &labels(&patch), pod()).expect("applies"),
                expected
            );
        }

        #[test]
        fn setting_fields_of_merged_list_items_is_idempotent(
            names in prop::collection::vec("[a-e]", 1..5),
            patch_names in prop::collection::vec("[a-g]", 1..4),
            image in "[x-z]",
            env in prop::collection::btree_map("[A-D]", "[0-3]", 0..3),
            finalizers in prop::collection::vec("[p-s]", 0..3),
        ) {
            let containers: Vec<Value> = names
                .iter()
                .map(|n| json!({"name": n, "image": "old", "env": [{"name": "Z", "value": "z"}]}))
                .collect();
            let doc = json!({"metadata": {"finalizers": ["p"]}, "spec": {"containers": containers}});
            let mut seen = Vec::new();
            let patch_containers: Vec<Value> = patch_names
                .iter()
                .filter(|n| { let new = !seen.contains(n); seen.push(*n); new })
                .map(|n| json!({
                    "name": n,
                    "image": image,
                    "env": env.iter().map(|(k, v)| json!({"name": k, "value": v})).collect::<Vec<_>>(),
                }))
                .collect();
            let patch = json!({
                "metadata": {"finalizers": finalizers},
                "spec": {"containers": patch_containers},
            });
            let once = apply(&doc, &patch, pod()).expect("applies");
            let twice = apply(&once, &patch, pod()).expect("applies again");
            prop_assert_eq!(&once, &twice);
            // Every patched container has the image, and no container was lost.
            let out = once["spec"]["containers"].as_array().expect("list");
            for n in &patch_names {
                let c = out.iter().find(|c| c["name"] == json!(n)).expect("present");
                prop_assert_eq!(&c["image"], &json!(image));
            }
            for n in &names {
                prop_assert!(out.iter().any(|c| c["name"] == json!(n)));
            }
        }
    }
}
