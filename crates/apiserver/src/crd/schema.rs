//! Structural schemas (`openAPIV3Schema`) applied to custom resources, in upstream's order:
//! pruning of unknown fields, defaulting, then validation.
//!
//! Supported: `type`, `properties`, `items`, `additionalProperties`, `required`, `enum`,
//! `minimum`/`maximum` (and exclusive), `multipleOf`, `pattern`, `minLength`/`maxLength`,
//! `minItems`/`maxItems`, `minProperties`/`maxProperties`, `nullable`, `default`,
//! `x-kubernetes-int-or-string`, `x-kubernetes-preserve-unknown-fields`,
//! `x-kubernetes-embedded-resource` (apiVersion/kind required and well-formed, the names in
//! its `metadata`), `allOf`/`anyOf`/`oneOf`/`not` (kube-openapi's composite messages),
//! `format` ([`super::formats`]), `uniqueItems`, `x-kubernetes-list-type: set|map` uniqueness
//! (with `x-kubernetes-list-map-keys`), and the root `metadata.name`/`generateName`
//! restrictions. CEL rules (`x-kubernetes-validations`) are [`super::cel`]'s.

use serde_json::{Map, Value, json};

use crate::status::Cause;

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn flag(schema: &Value, key: &str) -> bool {
    schema.get(key).and_then(Value::as_bool) == Some(true)
}

/// The schema of object members other than `properties`: `additionalProperties` when it is
/// a schema.
fn additional(schema: &Value) -> Option<&Value> {
    schema.get("additionalProperties").filter(|a| a.is_object())
}

/// Removes fields the schema does not know; returns their paths (`spec.bogus`) for
/// `fieldValidation` warnings. `root` is the whole object (its apiVersion, kind and metadata
/// are kept; metadata is not pruned here).
pub(crate) fn prune(schema: &Value, obj: &mut Value) -> Vec<String> {
    let mut unknown = Vec::new();
    if let Some(map) = obj.as_object_mut() {
        prune_object(schema, map, "", true, &mut unknown);
    }
    unknown
}

fn prune_object(
    schema: &Value,
    map: &mut Map<String, Value>,
    path: &str,
    keep_type_meta: bool,
    unknown: &mut Vec<String>,
) {
    let preserve = flag(schema, "x-kubernetes-preserve-unknown-fields");
    let props = schema.get("properties").and_then(Value::as_object);
    let extra = additional(schema);
    let allow_any = schema.get("additionalProperties").and_then(Value::as_bool) == Some(true);
    let keys: Vec<String> = map.keys().cloned().collect();
    for k in keys {
        let child_path = join(path, &k);
        if keep_type_meta && matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
            continue;
        }
        let child_schema = props.and_then(|p| p.get(&k)).or(extra);
        match child_schema {
            Some(s) => {
                if let Some(v) = map.get_mut(&k) {
                    prune_value(s, v, &child_path, unknown);
                }
            }
            None if preserve || allow_any => {}
            None => {
                map.remove(&k);
                unknown.push(child_path);
            }
        }
    }
}

fn prune_value(schema: &Value, v: &mut Value, path: &str, unknown: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            let embedded = flag(schema, "x-kubernetes-embedded-resource");
            prune_object(schema, map, path, embedded, unknown);
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter_mut().enumerate() {
                    prune_value(item_schema, item, &format!("{path}[{i}]"), unknown);
                }
            }
        }
        _ => {}
    }
}

/// Applies `default`s: a missing property with a default gets it, and so does a `null` in a
/// field that is not nullable. Nulls of non-nullable fields without a default are dropped, as
/// upstream does.
pub(crate) fn apply_defaults(schema: &Value, obj: &mut Value) {
    default_value(schema, obj);
}

fn default_value(schema: &Value, v: &mut Value) {
    match v {
        Value::Object(map) => {
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                for (k, s) in props {
                    let missing = match map.get(k) {
                        None => true,
                        Some(Value::Null) => !flag(s, "nullable"),
                        Some(_) => false,
                    };
                    if missing {
                        match s.get("default") {
                            Some(d) => {
                                map.insert(k.clone(), d.clone());
                            }
                            None => {
                                if map.get(k).is_some_and(Value::is_null) {
                                    map.remove(k);
                                }
                            }
                        }
                    }
                    if let Some(child) = map.get_mut(k) {
                        default_value(s, child);
                    }
                }
            }
            if let Some(extra) = additional(schema) {
                let known = schema.get("properties").and_then(Value::as_object);
                for (k, child) in map.iter_mut() {
                    if known.is_none_or(|p| !p.contains_key(k)) {
                        default_value(extra, child);
                    }
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for item in items {
                    default_value(item_schema, item);
                }
            }
        }
        _ => {}
    }
}

/// The JSON type name of a value, as upstream names it in type errors.
fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(n) if n.as_f64().is_some_and(|f| f.fract() == 0.0) => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// A value as upstream's field errors print it (Go `%#v`-like: strings quoted).
fn shown(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        Value::Object(_) => "\"object\"".into(),
        Value::Array(_) => "\"array\"".into(),
        other => other.to_string(),
    }
}

fn cause(reason: &'static str, field: &str, message: String) -> Cause {
    Cause {
        reason,
        message,
        field: field.to_string(),
    }
}

fn invalid(field: &str, value: &Value, detail: String) -> Cause {
    cause(
        "FieldValueInvalid",
        field,
        format!("Invalid value: {}: {detail}", shown(value)),
    )
}

/// Validates a custom resource against its schema (after pruning and defaulting). The root's
/// apiVersion and kind are checked elsewhere; of the root `metadata`, only `name` and
/// `generateName` are checked against the schema (the only restrictions a structural schema
/// may put there).
///
/// On update, `old` is the stored object and validation ratchets as upstream's
/// (`CRDValidationRatcheting`, GA in v1.33): a value equal to its correlated old value (by
/// property name, map key, `x-kubernetes-list-map-keys` of `map` lists, or the element itself
/// in `set` lists) is not checked again, so an update may keep an invalid value it does not
/// touch.
pub(crate) fn validate(schema: &Value, obj: &Value) -> Vec<Cause> {
    validate_update(schema, obj, None)
}

/// [`validate`] with the stored object for ratcheting.
pub(crate) fn validate_update(schema: &Value, obj: &Value, old: Option<&Value>) -> Vec<Cause> {
    let mut out = Vec::new();
    if let Some(map) = obj.as_object() {
        validate_object(schema, map, old, "", true, &mut out);
        if let (Some(meta_schema), Some(meta)) = (
            schema.get("properties").and_then(|p| p.get("metadata")),
            map.get("metadata").and_then(Value::as_object),
        ) {
            for f in ["name", "generateName"] {
                if let (Some(s), Some(v)) = (
                    meta_schema.get("properties").and_then(|p| p.get(f)),
                    meta.get(f),
                ) {
                    let was = old.and_then(|o| o.get("metadata")).and_then(|m| m.get(f));
                    validate_value(s, v, was, &format!("metadata.{f}"), &mut out);
                }
            }
        }
    }
    out
}

fn validate_object(
    schema: &Value,
    map: &Map<String, Value>,
    old: Option<&Value>,
    path: &str,
    root: bool,
    out: &mut Vec<Cause>,
) {
    for r in schema
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        if root && matches!(r, "apiVersion" | "kind" | "metadata") {
            continue;
        }
        if map.get(r).is_none_or(Value::is_null) {
            out.push(cause(
                "FieldValueRequired",
                &join(path, r),
                "Required value".into(),
            ));
        }
    }
    let n = map.len() as u64;
    let here = if path.is_empty() { "<root>" } else { path };
    if let Some(min) = schema.get("minProperties").and_then(Value::as_u64)
        && n < min
    {
        out.push(invalid(
            here,
            &json!(n),
            format!("{here} in body should have at least {min} properties"),
        ));
    }
    if let Some(max) = schema.get("maxProperties").and_then(Value::as_u64)
        && n > max
    {
        out.push(cause(
            "FieldValueTooMany",
            here,
            format!("Too many: {n}: must have at most {max} items"),
        ));
    }
    let props = schema.get("properties").and_then(Value::as_object);
    for (k, v) in map {
        if root && matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
            continue;
        }
        if let Some(s) = props.and_then(|p| p.get(k)).or_else(|| additional(schema)) {
            validate_value(s, v, old.and_then(|o| o.get(k)), &join(path, k), out);
        }
    }
}

/// The junctors' composite errors, as kube-openapi reports them: no field (`<nil>`), the path
/// quoted in the message.
fn composite(message: String) -> Cause {
    cause(
        "FieldValueInvalid",
        "<nil>",
        format!("Invalid value: \"\": {message}"),
    )
}

/// `allOf`, `anyOf`, `oneOf` and `not` (value validations only, in a structural schema),
/// with kube-openapi's messages; the errors of a failing branch are reported too.
fn validate_junctors(
    schema: &Value,
    v: &Value,
    old: Option<&Value>,
    path: &str,
    out: &mut Vec<Cause>,
) {
    let branches = |key: &str| -> Vec<Vec<Cause>> {
        schema
            .get(key)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|s| {
                let mut errs = Vec::new();
                validate_value(s, v, old, path, &mut errs);
                errs
            })
            .collect()
    };
    // The failing branch reported is the one closest to passing (fewest errors).
    let best = |results: &[Vec<Cause>]| -> Vec<Cause> {
        results
            .iter()
            .filter(|r| !r.is_empty())
            .min_by_key(|r| r.len())
            .cloned()
            .unwrap_or_default()
    };
    let any = branches("anyOf");
    if !any.is_empty() && !any.iter().any(Vec::is_empty) {
        out.push(composite(format!(
            "{path:?} must validate at least one schema (anyOf)"
        )));
        out.extend(best(&any));
    }
    let one = branches("oneOf");
    if !one.is_empty() {
        let valid = one.iter().filter(|r| r.is_empty()).count();
        if valid != 1 {
            let detail = if valid == 0 {
                "Found none valid".to_string()
            } else {
                format!("Found {valid} valid alternatives")
            };
            out.push(composite(format!(
                "{path:?} must validate one and only one schema (oneOf). {detail}"
            )));
            if valid == 0 {
                out.extend(best(&one));
            }
        }
    }
    let all = branches("allOf");
    if !all.is_empty() {
        let valid = all.iter().filter(|r| r.is_empty()).count();
        for r in &all {
            out.extend(r.iter().cloned());
        }
        if valid != all.len() {
            let detail = if valid == 0 { ". None validated" } else { "" };
            out.push(composite(format!(
                "{path:?} must validate all the schemas (allOf){detail}"
            )));
        }
    }
    if let Some(not) = schema.get("not").filter(|n| n.is_object()) {
        let mut errs = Vec::new();
        validate_value(not, v, old, path, &mut errs);
        if errs.is_empty() {
            out.push(composite(format!(
                "{path:?} must not validate the schema (not)"
            )));
        }
    }
}

/// Go's `%#v` of an unstructured value, as upstream's `Duplicate value` errors print it.
fn go_repr(v: &Value) -> String {
    match v {
        Value::Null => "interface {}(nil)".into(),
        Value::String(s) => format!("{s:?}"),
        Value::Number(n) => match n.as_f64() {
            Some(f) if !(n.is_i64() || n.is_u64()) && f.fract() == 0.0 && f.abs() < 1e21 => {
                format!("{}", f as i64)
            }
            _ => n.to_string(),
        },
        Value::Bool(b) => b.to_string(),
        Value::Array(a) => format!(
            "[]interface {{}}{{{}}}",
            a.iter().map(go_repr).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            format!(
                "map[string]interface {{}}{{{}}}",
                keys.iter()
                    .map(|k| format!("{k:?}:{}", go_repr(&m[*k])))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    }
}

fn duplicate(path: &str, shown: String) -> Cause {
    cause(
        "FieldValueDuplicate",
        path,
        format!("Duplicate value: {shown}"),
    )
}

/// The upstream form of a duplicate's value: strings quoted, numbers and booleans plain,
/// compound values as Go prints them.
fn duplicate_value(v: &Value) -> String {
    go_repr(v)
}

/// `x-kubernetes-list-type: set|map` uniqueness (upstream's `ValidateListSetsAndMaps`): every
/// later repetition of an element (set) or of a key (map, by `x-kubernetes-list-map-keys`) is
/// a `Duplicate value` at its index.
fn validate_list_type(schema: &Value, items: &[Value], path: &str, out: &mut Vec<Cause>) {
    match schema.get("x-kubernetes-list-type").and_then(Value::as_str) {
        Some("set") => {
            for i in repeated(items.iter().map(|x| x.to_string())) {
                out.push(duplicate(
                    &format!("{path}[{i}]"),
                    duplicate_value(&items[i]),
                ));
            }
        }
        Some("map") => {
            if let Some((i, x)) = items
                .iter()
                .enumerate()
                .find(|(_, x)| !x.is_null() && !x.is_object())
            {
                out.push(invalid(
                    &format!("{path}[{i}]"),
                    x,
                    "must be an object for an array of list-type map".into(),
                ));
                return;
            }
            let keys: Vec<&str> = schema
                .get("x-kubernetes-list-map-keys")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            let key_of = |x: &Value| -> Map<String, Value> {
                keys.iter()
                    .filter_map(|k| x.get(*k).map(|v| ((*k).to_string(), v.clone())))
                    .collect()
            };
            let item_keys: Vec<Map<String, Value>> = items.iter().map(key_of).collect();
            for i in repeated(
                item_keys
                    .iter()
                    .map(|k| Value::Object(k.clone()).to_string()),
            ) {
                out.push(duplicate(
                    &format!("{path}[{i}]"),
                    go_repr(&Value::Object(item_keys[i].clone())),
                ));
            }
        }
        _ => {}
    }
}

/// The index of the second appearance of every value that appears more than once.
fn repeated(values: impl Iterator<Item = String>) -> Vec<usize> {
    let mut seen: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    let mut out = Vec::new();
    for (i, v) in values.enumerate() {
        let n = seen.entry(v).or_insert(0);
        *n += 1;
        if *n == 2 {
            out.push(i);
        }
    }
    out
}

/// The checks upstream makes of an `x-kubernetes-embedded-resource` object: `apiVersion` and
/// `kind` present and well-formed, and the names in its `metadata`.
fn validate_embedded(map: &Map<String, Value>, path: &str, out: &mut Vec<Cause>) {
    for f in ["apiVersion", "kind"] {
        if !map.contains_key(f) {
            out.push(cause(
                "FieldValueRequired",
                &join(path, f),
                "Required value: must not be empty".into(),
            ));
        }
    }
    if let Some(v) = map.get("apiVersion") {
        let field = join(path, "apiVersion");
        match v.as_str() {
            None => out.push(invalid(&field, v, "must be a string".into())),
            Some("") => out.push(invalid(&field, v, "must not be empty".into())),
            Some(s) if s.matches('/').count() > 1 => out.push(invalid(
                &field,
                v,
                format!("unexpected GroupVersion string: {s}"),
            )),
            Some(_) => {}
        }
    }
    if let Some(v) = map.get("kind") {
        let field = join(path, "kind");
        match v.as_str() {
            None => out.push(invalid(&field, v, "must be a string".into())),
            Some("") => out.push(invalid(&field, v, "must not be empty".into())),
            Some(kind) => {
                let errs = crate::validation::validate_name(
                    crate::validation::NameRule::Dns1035,
                    &kind.to_lowercase(),
                );
                if !errs.is_empty() {
                    out.push(invalid(
                        &field,
                        v,
                        format!(
                            "may have mixed case, but should otherwise match: {}",
                            errs.join(",")
                        ),
                    ));
                }
            }
        }
    }
    if let Some(meta) = map.get("metadata").and_then(Value::as_object) {
        let meta_path = join(path, "metadata");
        use crate::validation::{NameRule, validate_name};
        if let Some(name) = meta.get("name").and_then(Value::as_str)
            && !name.is_empty()
        {
            for e in validate_name(NameRule::PathSegment, name) {
                out.push(invalid(&join(&meta_path, "name"), &json!(name), e));
            }
        }
        if let Some(prefix) = meta.get("generateName").and_then(Value::as_str) {
            for e in validate_name(NameRule::PathSegment, prefix)
                .into_iter()
                .filter(|e| e.starts_with("may not contain"))
            {
                out.push(invalid(
                    &join(&meta_path, "generateName"),
                    &json!(prefix),
                    e,
                ));
            }
        }
        if let Some(ns) = meta.get("namespace").and_then(Value::as_str)
            && !ns.is_empty()
        {
            for e in validate_name(NameRule::Label, ns) {
                out.push(invalid(&join(&meta_path, "namespace"), &json!(ns), e));
            }
        }
    }
}

/// The element of `old` (a list) that `item` of a list with `schema` correlates with:
/// `map` lists by their keys, `set` lists by value; other lists do not correlate.
pub(crate) fn correlated_item<'a>(
    schema: &Value,
    item: &Value,
    old: Option<&'a Value>,
) -> Option<&'a Value> {
    let olds = old?.as_array()?;
    match schema.get("x-kubernetes-list-type").and_then(Value::as_str) {
        Some("set") => olds.iter().find(|o| *o == item),
        Some("map") => {
            let keys: Vec<&str> = schema
                .get("x-kubernetes-list-map-keys")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            if keys.is_empty() || !item.is_object() {
                return None;
            }
            olds.iter()
                .find(|o| keys.iter().all(|k| o.get(*k) == item.get(*k)))
        }
        _ => None,
    }
}

fn validate_value(
    schema: &Value,
    v: &Value,
    old: Option<&Value>,
    path: &str,
    out: &mut Vec<Cause>,
) {
    // Ratcheting: an unchanged value is not checked again.
    if old == Some(v) {
        return;
    }
    if v.is_null() {
        if flag(schema, "nullable") {
            return;
        }
        if let Some(t) = schema.get("type").and_then(Value::as_str) {
            out.push(cause(
                "FieldValueTypeInvalid",
                path,
                format!("Invalid value: \"null\": {path} in body must be of type {t}: \"null\""),
            ));
        }
        return;
    }
    let actual = type_name(v);
    if flag(schema, "x-kubernetes-int-or-string") {
        if !matches!(actual, "integer" | "string") {
            out.push(cause(
                "FieldValueTypeInvalid",
                path,
                format!(
                    "Invalid value: \"{actual}\": {path} in body must be of type integer,string: \"{actual}\""
                ),
            ));
            return;
        }
    } else if let Some(t) = schema.get("type").and_then(Value::as_str) {
        let ok = actual == t || (t == "number" && actual == "integer");
        if !ok {
            out.push(cause(
                "FieldValueTypeInvalid",
                path,
                format!(
                    "Invalid value: \"{actual}\": {path} in body must be of type {t}: \"{actual}\""
                ),
            ));
            return;
        }
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(v)
    {
        let list: Vec<String> = allowed.iter().map(shown).collect();
        out.push(cause(
            "FieldValueNotSupported",
            path,
            format!(
                "Unsupported value: {}: supported values: {}",
                shown(v),
                list.join(", ")
            ),
        ));
    }
    match v {
        Value::Number(n) => validate_number(schema, v, n.as_f64().unwrap_or(0.0), path, out),
        Value::String(s) => validate_string(schema, v, s, path, out),
        Value::Array(items) => {
            let n = items.len() as u64;
            if let Some(min) = schema.get("minItems").and_then(Value::as_u64)
                && n < min
            {
                out.push(invalid(
                    path,
                    v,
                    format!("{path} in body should have at least {min} items"),
                ));
            }
            if let Some(max) = schema.get("maxItems").and_then(Value::as_u64)
                && n > max
            {
                out.push(cause(
                    "FieldValueTooMany",
                    path,
                    format!("Too many: {n}: must have at most {max} items"),
                ));
            }
            if flag(schema, "uniqueItems")
                && !repeated(items.iter().map(|x| x.to_string())).is_empty()
            {
                out.push(invalid(
                    path,
                    &json!(""),
                    format!("{path} in body shouldn't contain duplicates"),
                ));
            }
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    let was = correlated_item(schema, item, old);
                    validate_value(item_schema, item, was, &format!("{path}[{i}]"), out);
                }
            }
            validate_list_type(schema, items, path, out);
        }
        Value::Object(map) => {
            let embedded = flag(schema, "x-kubernetes-embedded-resource");
            if embedded {
                validate_embedded(map, path, out);
            }
            validate_object(schema, map, old, path, embedded, out);
        }
        _ => {}
    }
    validate_junctors(schema, v, old, path, out);
}

fn validate_number(schema: &Value, v: &Value, x: f64, path: &str, out: &mut Vec<Cause>) {
    if let Some(min) = schema.get("minimum").and_then(Value::as_f64) {
        let exclusive = flag(schema, "exclusiveMinimum");
        if (exclusive && x <= min) || (!exclusive && x < min) {
            let how = if exclusive {
                "greater than"
            } else {
                "greater than or equal to"
            };
            out.push(invalid(
                path,
                v,
                format!(
                    "{path} in body should be {how} {}",
                    num(schema.get("minimum"))
                ),
            ));
        }
    }
    if let Some(max) = schema.get("maximum").and_then(Value::as_f64) {
        let exclusive = flag(schema, "exclusiveMaximum");
        if (exclusive && x >= max) || (!exclusive && x > max) {
            let how = if exclusive {
                "less than"
            } else {
                "less than or equal to"
            };
            out.push(invalid(
                path,
                v,
                format!(
                    "{path} in body should be {how} {}",
                    num(schema.get("maximum"))
                ),
            ));
        }
    }
    if let Some(m) = schema.get("multipleOf").and_then(Value::as_f64)
        && m > 0.0
        && (x / m).fract() != 0.0
    {
        out.push(invalid(
            path,
            v,
            format!(
                "{path} in body should be a multiple of {}",
                num(schema.get("multipleOf"))
            ),
        ));
    }
}

/// A schema bound as upstream prints it (Go's `%v` of a float64: `1`, not `1.0`). Stored
/// CRDs carry bounds as floats (`JSONSchemaProps.minimum` is a double).
fn num(v: Option<&Value>) -> String {
    match v.and_then(Value::as_f64) {
        Some(f) if f.fract() == 0.0 && f.abs() < 1e15 => format!("{}", f as i64),
        Some(f) => f.to_string(),
        None => String::new(),
    }
}

fn validate_string(schema: &Value, v: &Value, s: &str, path: &str, out: &mut Vec<Cause>) {
    if let Some(format) = schema.get("format").and_then(Value::as_str)
        && super::formats::check(format, s) == Some(false)
    {
        out.push(cause(
            "FieldValueTypeInvalid",
            path,
            format!(
                "Invalid value: {}: {path} in body must be of type {format}: {}",
                shown(v),
                shown(v)
            ),
        ));
    }
    let len = s.chars().count() as u64;
    if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
        && len > max
    {
        out.push(cause(
            "FieldValueTooLong",
            path,
            format!("Too long: may not be more than {max} bytes"),
        ));
    }
    if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
        && len < min
    {
        out.push(invalid(
            path,
            v,
            format!("{path} in body should be at least {min} chars long"),
        ));
    }
    if let Some(p) = schema.get("pattern").and_then(Value::as_str) {
        match regex::Regex::new(p) {
            Ok(re) if !re.is_match(s) => out.push(invalid(
                path,
                v,
                format!("{path} in body should match '{p}'"),
            )),
            Ok(_) => {}
            Err(_) => out.push(invalid(
                path,
                v,
                format!("{path} in body has an invalid pattern '{p}'"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> Value {
        json!({
            "type": "object",
            "properties": {
                "spec": {
                    "type": "object",
                    "required": ["size"],
                    "properties": {
                        "replicas": {"type": "integer", "minimum": 1.0, "maximum": 10, "default": 1},
                        "size": {"type": "string", "enum": ["S", "M", "L"]},
                        "name": {"type": "string", "pattern": "^[a-z]+$", "minLength": 2, "maxLength": 5},
                        "tags": {"type": "array", "maxItems": 2, "minItems": 1, "items": {"type": "string"}},
                        "port": {"x-kubernetes-int-or-string": true},
                        "note": {"type": "string", "nullable": true},
                        "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                        "template": {"type": "object", "x-kubernetes-embedded-resource": true,
                                     "properties": {"spec": {"type": "object"}}},
                    },
                },
                "status": {"type": "object", "properties": {"ready": {"type": "boolean"}}},
            },
        })
    }

    use crate::status::cause_lines_with_reasons as messages;

    #[test]
    fn type_errors_read_like_upstream() {
        let obj = json!({"spec": {"replicas": "three", "size": "M"}});
        assert_eq!(
            messages(&validate(&schema(), &obj)),
            [
                "FieldValueTypeInvalid spec.replicas: Invalid value: \"string\": spec.replicas in body must be of type integer: \"string\""
            ]
        );
    }

    #[test]
    fn value_constraints() {
        let obj = json!({"spec": {"replicas": 0, "name": "Ab1", "tags": ["a", "b", "c"],
            "port": true, "size": "XL", "labels": {"a": 1}, "note": null}});
        let got = messages(&validate(&schema(), &obj));
        assert!(got.contains(&"FieldValueInvalid spec.replicas: Invalid value: 0: spec.replicas in body should be greater than or equal to 1".to_string()), "{got:?}");
        assert!(got.contains(&"FieldValueInvalid spec.name: Invalid value: \"Ab1\": spec.name in body should match '^[a-z]+$'".to_string()), "{got:?}");
        assert!(
            got.contains(
                &"FieldValueTooMany spec.tags: Too many: 3: must have at most 2 items".to_string()
            ),
            "{got:?}"
        );
        assert!(got.contains(&"FieldValueTypeInvalid spec.port: Invalid value: \"boolean\": spec.port in body must be of type integer,string: \"boolean\"".to_string()), "{got:?}");
        assert!(got.contains(&"FieldValueNotSupported spec.size: Unsupported value: \"XL\": supported values: \"S\", \"M\", \"L\"".to_string()), "{got:?}");
        assert!(
            got.iter()
                .any(|m| m.starts_with("FieldValueTypeInvalid spec.labels.a:")),
            "{got:?}"
        );
        assert_eq!(got.len(), 6, "nullable note is fine: {got:?}");
        let missing = messages(&validate(&schema(), &json!({"spec": {}})));
        assert_eq!(missing, ["FieldValueRequired spec.size: Required value"]);
        let long = messages(&validate(
            &schema(),
            &json!({"spec": {"size": "S", "name": "abcdef"}}),
        ));
        assert_eq!(
            long,
            ["FieldValueTooLong spec.name: Too long: may not be more than 5 bytes"]
        );
    }

    #[test]
    fn pruning_keeps_known_and_preserved_fields() {
        let mut obj = json!({
            "apiVersion": "x/v1", "kind": "K", "metadata": {"name": "a"},
            "spec": {"size": "S", "bogus": 1, "free": {"any": {"thing": 1}},
                     "labels": {"k": "v"},
                     "template": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
                                  "spec": {"x": 1}, "junk": 2}},
            "top": true,
        });
        let mut unknown = prune(&schema(), &mut obj);
        unknown.sort();
        assert_eq!(
            unknown,
            [
                "spec.bogus",
                "spec.template.junk",
                "spec.template.spec.x",
                "top"
            ]
        );
        assert_eq!(obj["spec"]["free"]["any"]["thing"], 1);
        assert_eq!(obj["spec"]["labels"]["k"], "v");
        assert_eq!(obj["spec"]["template"]["kind"], "Pod");
        assert_eq!(obj["metadata"]["name"], "a");
    }

    #[test]
    fn defaults_fill_missing_and_null_fields() {
        let mut obj = json!({"spec": {"size": "S"}});
        apply_defaults(&schema(), &mut obj);
        assert_eq!(obj["spec"]["replicas"], 1);
        let mut obj = json!({"spec": {"size": "S", "replicas": null, "name": null, "note": null}});
        apply_defaults(&schema(), &mut obj);
        assert_eq!(obj["spec"]["replicas"], 1);
        assert!(obj["spec"].get("name").is_none(), "null dropped");
        assert!(obj["spec"]["note"].is_null(), "nullable null kept");
        let mut none = json!({});
        apply_defaults(&schema(), &mut none);
        assert!(none.get("spec").is_none(), "no default for spec itself");
    }

    #[test]
    fn junctors_report_composites_and_the_failing_branch() {
        let s = json!({"type": "object", "properties": {"spec": {
            "type": "object",
            "anyOf": [{"required": ["a"]}, {"required": ["b"]}],
            "oneOf": [{"required": ["x"]}, {"required": ["y"]}],
            "not": {"required": ["z"]},
            "allOf": [{"properties": {"n": {"minimum": 1}}}],
            "properties": {"a": {"type": "string"}, "b": {"type": "string"},
                           "x": {"type": "string"}, "y": {"type": "string"},
                           "z": {"type": "string"}, "n": {"type": "integer"}}}}});
        assert!(validate(&s, &json!({"spec": {"a": "1", "x": "1", "n": 2}})).is_empty());
        let got = messages(&validate(
            &s,
            &json!({"spec": {"x": "1", "y": "1", "z": "1", "n": 0}}),
        ));
        assert_eq!(
            got,
            [
                "FieldValueInvalid <nil>: Invalid value: \"\": \"spec\" must validate at least one schema (anyOf)",
                "FieldValueRequired spec.a: Required value",
                "FieldValueInvalid <nil>: Invalid value: \"\": \"spec\" must validate one and only one schema (oneOf). Found 2 valid alternatives",
                "FieldValueInvalid spec.n: Invalid value: 0: spec.n in body should be greater than or equal to 1",
                "FieldValueInvalid <nil>: Invalid value: \"\": \"spec\" must validate all the schemas (allOf). None validated",
                "FieldValueInvalid <nil>: Invalid value: \"\": \"spec\" must not validate the schema (not)",
            ]
        );
        let none = messages(&validate(&s, &json!({"spec": {"a": "1", "n": 1}})));
        assert_eq!(
            none[0],
            "FieldValueInvalid <nil>: Invalid value: \"\": \"spec\" must validate one and only one schema (oneOf). Found none valid"
        );
    }

    #[test]
    fn formats_unique_items_and_list_types() {
        let s = json!({"type": "object", "properties": {"spec": {"type": "object", "properties": {
            "ip": {"type": "string", "format": "ipv4"},
            "count": {"type": "integer", "format": "int32"},
            "legacy": {"type": "array", "uniqueItems": true, "items": {"type": "integer"}},
            "set": {"type": "array", "x-kubernetes-list-type": "set", "items": {"type": "integer"}},
            "map": {"type": "array", "x-kubernetes-list-type": "map",
                    "x-kubernetes-list-map-keys": ["name"],
                    "items": {"type": "object", "properties": {"name": {"type": "string"}}}}}}}});
        let ok = json!({"spec": {"ip": "10.0.0.1", "count": 3, "legacy": [1, 2],
                                 "set": [1, 2], "map": [{"name": "a"}, {"name": "b"}]}});
        assert!(validate(&s, &ok).is_empty());
        let bad = json!({"spec": {"ip": "10.0.0.300", "legacy": [1, 1], "set": [1, 2, 1, 1],
                                  "map": [{"name": "a"}, {"name": "a"}, "x"]}});
        let got = messages(&validate(&s, &bad));
        assert_eq!(
            got,
            [
                "FieldValueTypeInvalid spec.ip: Invalid value: \"10.0.0.300\": spec.ip in body must be of type ipv4: \"10.0.0.300\"",
                "FieldValueInvalid spec.legacy: Invalid value: \"\": spec.legacy in body shouldn't contain duplicates",
                "FieldValueTypeInvalid spec.map[2]: Invalid value: \"string\": spec.map[2] in body must be of type object: \"string\"",
                "FieldValueInvalid spec.map[2]: Invalid value: \"x\": must be an object for an array of list-type map",
                "FieldValueDuplicate spec.set[2]: Duplicate value: 1",
            ]
        );
        let dup = json!({"spec": {"map": [{"name": "a"}, {"name": "a"}]}});
        assert_eq!(
            messages(&validate(&s, &dup)),
            [
                "FieldValueDuplicate spec.map[1]: Duplicate value: map[string]interface {}{\"name\":\"a\"}"
            ]
        );
    }

    #[test]
    fn embedded_resources_and_metadata_names() {
        let s = json!({"type": "object", "properties": {
            "metadata": {"type": "object", "properties": {"name": {"type": "string", "pattern": "^a"}}},
            "spec": {"type": "object", "properties": {"t": {"type": "object",
                "x-kubernetes-embedded-resource": true, "x-kubernetes-preserve-unknown-fields": true}}}}});
        let ok = json!({"metadata": {"name": "abc"},
                        "spec": {"t": {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}}}});
        assert!(validate(&s, &ok).is_empty());
        let bad = json!({"metadata": {"name": "zed"},
                         "spec": {"t": {"apiVersion": "a/b/c", "kind": "", "metadata": {"name": "..", "namespace": "Bad"}}}});
        let got = messages(&validate(&s, &bad));
        assert!(got.contains(&"FieldValueInvalid spec.t.apiVersion: Invalid value: \"a/b/c\": unexpected GroupVersion string: a/b/c".to_string()), "{got:?}");
        assert!(
            got.contains(
                &"FieldValueInvalid spec.t.kind: Invalid value: \"\": must not be empty"
                    .to_string()
            ),
            "{got:?}"
        );
        assert!(
            got.contains(
                &"FieldValueInvalid spec.t.metadata.name: Invalid value: \"..\": may not be '..'"
                    .to_string()
            ),
            "{got:?}"
        );
        assert!(got.iter().any(|g| g.starts_with("FieldValueInvalid spec.t.metadata.namespace: Invalid value: \"Bad\": a lowercase RFC 1123 label")), "{got:?}");
        assert!(got.contains(&"FieldValueInvalid metadata.name: Invalid value: \"zed\": metadata.name in body should match '^a'".to_string()), "{got:?}");
        let missing = messages(&validate(&s, &json!({"spec": {"t": {}}})));
        assert_eq!(
            missing,
            [
                "FieldValueRequired spec.t.apiVersion: Required value: must not be empty",
                "FieldValueRequired spec.t.kind: Required value: must not be empty",
            ]
        );
    }

    #[test]
    fn updates_ratchet_unchanged_values() {
        let s = json!({"type": "object", "properties": {"spec": {"type": "object",
            "required": ["size"],
            "properties": {
                "name": {"type": "string", "maxLength": 3},
                "size": {"type": "string"},
                "ports": {"type": "array", "x-kubernetes-list-type": "map",
                          "x-kubernetes-list-map-keys": ["name"],
                          "items": {"type": "object", "properties": {
                              "name": {"type": "string"}, "port": {"type": "integer", "maximum": 100}}}}}}}});
        let old = json!({"spec": {"name": "toolong", "ports": [{"name": "a", "port": 500}]}});
        // Unchanged invalid values (and an unchanged missing required field in an unchanged
        // object) pass; the same values on create do not.
        assert!(validate_update(&s, &old, Some(&old)).is_empty());
        assert_eq!(validate(&s, &old).len(), 3);
        let new = json!({"spec": {"name": "toolong", "size": "S",
                                  "ports": [{"name": "b", "port": 1}, {"name": "a", "port": 500}]}});
        assert!(
            validate_update(&s, &new, Some(&old)).is_empty(),
            "moved map entry correlates by key"
        );
        let changed = json!({"spec": {"name": "stilltoolong", "size": "S",
                                      "ports": [{"name": "a", "port": 501}]}});
        assert_eq!(
            messages(&validate_update(&s, &changed, Some(&old))),
            [
                "FieldValueTooLong spec.name: Too long: may not be more than 3 bytes",
                "FieldValueInvalid spec.ports[0].port: Invalid value: 501: spec.ports[0].port in body should be less than or equal to 100",
            ]
        );
    }
}
