//! Upstream's validation of a CustomResourceDefinition itself (`ValidateCustomResourceDefinition`
//! and `...Update` of apiextensions-apiserver v1.33), with its field paths and messages: the
//! name, group, scope, names (DNS-1035 labels), versions (DNS-1035 names, unique, exactly one
//! storage version, a schema each, deprecation warnings), subresources and printer columns,
//! conversion strategy rules, the OpenAPI schema rules (forbidden keywords, `uniqueItems`,
//! `additionalProperties` with `properties`, list and map types, list-map keys), the
//! structural-schema rules (a `type` everywhere, value validations only under junctors,
//! `metadata` restricted to `name`/`generateName`, embedded resources) and the CEL rules
//! ([`super::cel::check_schema`]); on update, the immutable group, plural, and (once
//! established) scope and kind.
//!
//! Not checked: the API approval annotation of `*.k8s.io` groups, webhook URL/service
//! details, that defaults validate against their schema and are pruned, `storedVersions`,
//! the "identical per-version values" rules of the v1beta1 era, CEL cost limits.

use std::collections::HashSet;

use serde_json::{Map, Value};

use crate::status::Cause;
use crate::validation::{NameRule, validate_name};

fn req(field: impl Into<String>, detail: &str) -> Cause {
    Cause {
        reason: "FieldValueRequired",
        message: if detail.is_empty() {
            "Required value".into()
        } else {
            format!("Required value: {detail}")
        },
        field: field.into(),
    }
}

fn invalid(field: impl Into<String>, value: &str, detail: &str) -> Cause {
    Cause {
        reason: "FieldValueInvalid",
        message: format!("Invalid value: {value}: {detail}"),
        field: field.into(),
    }
}

fn forbidden(field: impl Into<String>, detail: &str) -> Cause {
    Cause {
        reason: "FieldValueForbidden",
        message: format!("Forbidden: {detail}"),
        field: field.into(),
    }
}

fn not_supported(field: impl Into<String>, value: &str, allowed: &[&str]) -> Cause {
    Cause {
        reason: "FieldValueNotSupported",
        message: format!(
            "Unsupported value: {value:?}: supported values: {}",
            allowed
                .iter()
                .map(|a| format!("{a:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        field: field.into(),
    }
}

fn q(s: &str) -> String {
    format!("{s:?}")
}

fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

fn flag(v: &Value, key: &str) -> bool {
    v.get(key).and_then(Value::as_bool) == Some(true)
}

/// `IsDNS1035Label`'s messages (without the path-segment ones `validate_name` adds).
fn dns1035(value: &str) -> Vec<String> {
    validate_name(NameRule::Dns1035, value)
        .into_iter()
        .filter(|m| !m.starts_with("may not"))
        .collect()
}

/// Upstream's checks of a CRD; `old` is the stored CRD on update.
pub(crate) fn validate_crd(crd: &Value, old: Option<&Value>) -> Vec<Cause> {
    let mut out = Vec::new();
    let spec = crd.get("spec").cloned().unwrap_or(Value::Null);
    let group = s(&spec, "group");
    let names = spec.get("names").cloned().unwrap_or(Value::Null);
    let plural = s(&names, "plural");
    let name = crate::rest::object_meta_str(crd, "name");
    if old.is_none() && name != format!("{plural}.{group}") {
        out.push(invalid(
            "metadata.name",
            &q(name),
            "must be spec.names.plural+\".\"+spec.group",
        ));
    }
    if group.is_empty() {
        out.push(req("spec.group", ""));
    } else {
        let errs: Vec<String> = validate_name(NameRule::Subdomain, group)
            .into_iter()
            .filter(|m| !m.starts_with("may not"))
            .collect();
        if !errs.is_empty() {
            out.push(invalid("spec.group", &q(group), &errs.join(",")));
        } else if !group.contains('.') {
            out.push(invalid(
                "spec.group",
                &q(group),
                "should be a domain with at least one dot",
            ));
        }
    }
    match s(&spec, "scope") {
        "Cluster" | "Namespaced" => {}
        "" => out.push(req("spec.scope", "")),
        other => out.push(not_supported(
            "spec.scope",
            other,
            &["Cluster", "Namespaced"],
        )),
    }
    let versions: Vec<Value> = spec
        .get("versions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let shown_versions = format!(
        "[]apiextensions.CustomResourceDefinitionVersion{{{}}}",
        versions
            .iter()
            .map(|v| q(s(v, "name")))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut seen = HashSet::new();
    let mut unique = true;
    let mut storage = 0;
    for (i, v) in versions.iter().enumerate() {
        let at = format!("spec.versions[{i}]");
        let vname = s(v, "name");
        if flag(v, "storage") {
            storage += 1;
        }
        if !seen.insert(vname) {
            unique = false;
        }
        let errs = dns1035(vname);
        if !errs.is_empty() {
            out.push(invalid(format!("{at}.name"), &q(vname), &errs.join(",")));
        }
        validate_version(v, &at, &mut out);
    }
    if versions.is_empty() {
        out.push(invalid(
            "spec.versions",
            &shown_versions,
            "must have exactly one version marked as storage version",
        ));
    } else {
        if !unique {
            out.push(invalid(
                "spec.versions",
                &shown_versions,
                "must contain unique version names",
            ));
        }
        if storage != 1 {
            out.push(invalid(
                "spec.versions",
                &shown_versions,
                "must have exactly one version marked as storage version",
            ));
        }
    }
    for f in ["plural", "singular", "kind", "listKind"] {
        if s(&names, f).is_empty() {
            out.push(req(format!("spec.names.{f}"), ""));
        }
    }
    validate_names(&names, "spec.names", &mut out);
    validate_conversion(&spec, &mut out);
    if flag(&spec, "preserveUnknownFields") {
        out.push(invalid(
            "spec.preserveUnknownFields",
            "true",
            "cannot set to true, set x-preserve-unknown-fields to true in spec.versions[*].schema instead",
        ));
    }
    if let Some(old) = old {
        let old_spec = old.get("spec").cloned().unwrap_or(Value::Null);
        let immutable = |out: &mut Vec<Cause>, field: &str, new: &str, was: &str| {
            if new != was {
                out.push(invalid(field, &q(new), "field is immutable"));
            }
        };
        if super::condition_true(old, "Established") {
            immutable(
                &mut out,
                "spec.scope",
                s(&spec, "scope"),
                s(&old_spec, "scope"),
            );
            immutable(
                &mut out,
                "spec.names.kind",
                s(&names, "kind"),
                old_spec
                    .get("names")
                    .map(|n| s(n, "kind"))
                    .unwrap_or_default(),
            );
        }
        immutable(&mut out, "spec.group", group, s(&old_spec, "group"));
        immutable(
            &mut out,
            "spec.names.plural",
            plural,
            old_spec
                .get("names")
                .map(|n| s(n, "plural"))
                .unwrap_or_default(),
        );
    }
    out
}

/// `ValidateCustomResourceDefinitionNames` (also of `status.acceptedNames`).
pub(crate) fn validate_names(names: &Value, at: &str, out: &mut Vec<Cause>) {
    for f in ["plural", "singular"] {
        let v = s(names, f);
        let errs = dns1035(v);
        if !v.is_empty() && !errs.is_empty() {
            out.push(invalid(format!("{at}.{f}"), &q(v), &errs.join(",")));
        }
    }
    for f in ["kind", "listKind"] {
        let v = s(names, f);
        let errs = dns1035(&v.to_lowercase());
        if !v.is_empty() && !errs.is_empty() {
            out.push(invalid(
                format!("{at}.{f}"),
                &q(v),
                &format!(
                    "may have mixed case, but should otherwise match: {}",
                    errs.join(",")
                ),
            ));
        }
    }
    for list in ["shortNames", "categories"] {
        for (i, v) in names
            .get(list)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let v = v.as_str().unwrap_or("");
            let errs = dns1035(v);
            if !errs.is_empty() {
                out.push(invalid(format!("{at}.{list}[{i}]"), &q(v), &errs.join(",")));
            }
        }
    }
    let kind = s(names, "kind");
    if !kind.is_empty() && kind == s(names, "listKind") {
        out.push(invalid(
            format!("{at}.listKind"),
            &q(kind),
            "kind and listKind may not be the same",
        ));
    }
}

fn validate_conversion(spec: &Value, out: &mut Vec<Cause>) {
    let Some(conv) = spec.get("conversion").filter(|c| c.is_object()) else {
        return;
    };
    let at = "spec.conversion";
    let strategy = s(conv, "strategy");
    match strategy {
        "None" | "Webhook" => {}
        "" => out.push(req(format!("{at}.strategy"), "")),
        other => out.push(not_supported(
            format!("{at}.strategy"),
            other,
            &["None", "Webhook"],
        )),
    }
    let webhook = conv.get("webhook");
    if strategy == "Webhook" {
        match webhook.and_then(|w| w.get("clientConfig")) {
            None => out.push(req(
                format!("{at}.webhook"),
                "must be populated when strategy is set to Webhook",
            )),
            Some(cc) => {
                if cc.get("url").is_some() == cc.get("service").is_some() {
                    out.push(req(
                        format!("{at}.webhook.clientConfig"),
                        "exactly one of url or service is required",
                    ));
                }
            }
        }
        let versions: Vec<&str> = webhook
            .and_then(|w| w.get("conversionReviewVersions"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        if versions.is_empty() {
            out.push(req(format!("{at}.webhook.conversionReviewVersions"), ""));
        } else if !versions.iter().any(|v| matches!(*v, "v1" | "v1beta1")) {
            out.push(invalid(
                format!("{at}.webhook.conversionReviewVersions"),
                &format!(
                    "[]string{{{}}}",
                    versions.iter().map(|v| q(v)).collect::<Vec<_>>().join(", ")
                ),
                "must include at least one of v1, v1beta1",
            ));
        }
    } else if webhook.is_some() {
        out.push(forbidden(
            format!("{at}.webhook"),
            "should not be set when strategy is not set to Webhook",
        ));
    }
}

fn validate_version(v: &Value, at: &str, out: &mut Vec<Cause>) {
    let deprecated = flag(v, "deprecated");
    if let Some(w) = v.get("deprecationWarning").and_then(Value::as_str) {
        let field = format!("{at}.deprecationWarning");
        if !deprecated {
            out.push(invalid(
                &field,
                &q(w),
                "can only be set for deprecated versions",
            ));
        } else if w.len() > 256 {
            out.push(invalid(&field, &q(w), "must be <= 256 characters long"));
        } else if w.is_empty() {
            out.push(invalid(&field, &q(w), "must not be an empty string"));
        }
    }
    let subresources = v.get("subresources");
    let status = subresources.and_then(|s| s.get("status")).is_some();
    match v.get("schema").and_then(|s| s.get("openAPIV3Schema")) {
        None => out.push(req(
            format!("{at}.schema.openAPIV3Schema"),
            "schemas are required",
        )),
        Some(schema) => validate_schema_root(schema, &format!("{at}.schema"), status, out),
    }
    if let Some(scale) = subresources.and_then(|s| s.get("scale")) {
        let sc = format!("{at}.subresources.scale");
        for (key, prefix, what) in [
            (
                "specReplicasPath",
                ".spec.",
                "should be a json path under .spec",
            ),
            (
                "statusReplicasPath",
                ".status.",
                "should be a json path under .status",
            ),
        ] {
            let p = s(scale, key);
            if p.is_empty() {
                out.push(req(format!("{sc}.{key}"), ""));
            } else if !p.starts_with('.') {
                out.push(invalid(
                    format!("{sc}.{key}"),
                    &q(p),
                    "must be a simple json path starting with .",
                ));
            } else if !p.starts_with(prefix) {
                out.push(invalid(format!("{sc}.{key}"), &q(p), what));
            }
        }
        let p = s(scale, "labelSelectorPath");
        if !p.is_empty() {
            if !p.starts_with('.') {
                out.push(invalid(
                    format!("{sc}.labelSelectorPath"),
                    &q(p),
                    "must be a simple json path starting with .",
                ));
            } else if !p.starts_with(".spec.") && !p.starts_with(".status.") {
                out.push(invalid(
                    format!("{sc}.labelSelectorPath"),
                    &q(p),
                    "should be a json path under either .spec or .status",
                ));
            }
        }
    }
    const COLUMN_TYPES: &str = "boolean,date,integer,number,string";
    const COLUMN_FORMATS: &[&str] = &[
        "byte",
        "date",
        "date-time",
        "double",
        "float",
        "int32",
        "int64",
        "password",
    ];
    for (i, col) in v
        .get("additionalPrinterColumns")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let c = format!("{at}.additionalPrinterColumns[{i}]");
        if s(col, "name").is_empty() {
            out.push(req(format!("{c}.name"), ""));
        }
        let t = s(col, "type");
        if t.is_empty() {
            out.push(req(
                format!("{c}.type"),
                &format!("must be one of {COLUMN_TYPES}"),
            ));
        } else if !COLUMN_TYPES.split(',').any(|x| x == t) {
            out.push(invalid(
                format!("{c}.type"),
                &q(t),
                &format!("must be one of {COLUMN_TYPES}"),
            ));
        }
        let f = s(col, "format");
        if !f.is_empty() && !COLUMN_FORMATS.contains(&f) {
            out.push(invalid(
                format!("{c}.format"),
                &q(f),
                &format!("must be one of {}", COLUMN_FORMATS.join(",")),
            ));
        }
        let p = s(col, "jsonPath");
        if p.is_empty() {
            out.push(req(format!("{c}.JSONPath"), ""));
        } else if !p.starts_with('.') {
            out.push(invalid(
                format!("{c}.JSONPath"),
                &q(p),
                "must be a simple json path starting with .",
            ));
        }
    }
}

const OPENAPI_TYPES: &[&str] = &["array", "boolean", "integer", "number", "object", "string"];
/// The keywords allowed at the root of a schema whose CRD has the status subresource.
const ROOT_ALLOWED: &[&str] = &[
    "description",
    "type",
    "format",
    "title",
    "maximum",
    "exclusiveMaximum",
    "minimum",
    "exclusiveMinimum",
    "maxLength",
    "minLength",
    "pattern",
    "maxItems",
    "minItems",
    "uniqueItems",
    "multipleOf",
    "required",
    "items",
    "properties",
    "externalDocs",
    "example",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-validations",
];

fn validate_schema_root(schema: &Value, at: &str, status: bool, out: &mut Vec<Cause>) {
    let path = format!("{at}.openAPIV3Schema");
    if status && let Some(obj) = schema.as_object() {
        if let Some(t) = obj.get("type").and_then(Value::as_str)
            && t != "object"
        {
            out.push(invalid(
                format!("{path}.type"),
                &q(t),
                "only \"object\" is allowed as the type at the root of the schema if the status subresource is enabled",
            ));
        }
        if obj.keys().any(|k| !ROOT_ALLOWED.contains(&k.as_str())) {
            out.push(invalid(
                &path,
                "apiextensions.JSONSchemaProps{...}",
                "only Description, Type, Format, Title, Maximum, ExclusiveMaximum, Minimum, ExclusiveMinimum, MaxLength, MinLength, Pattern, MaxItems, MinItems, UniqueItems, MultipleOf, Required, Items, Properties, ExternalDocs, Example, XPreserveUnknownFields, XValidations fields are allowed at the root of the schema if the status subresource is enabled",
            ));
        }
    }
    if flag(schema, "nullable") {
        out.push(forbidden(
            format!("{path}.nullable"),
            "nullable cannot be true at the root",
        ));
    }
    let before = out.len();
    openapi_schema(schema, &path, true, false, None, out);
    let mut structural = Vec::new();
    structural_invariants(schema, Level::Root, &path, &mut structural);
    structural_completeness(schema, &path, &mut structural);
    structural.sort_by(|a, b| {
        format!("{}: {}", a.field, a.message).cmp(&format!("{}: {}", b.field, b.message))
    });
    out.extend(structural);
    if out.len() == before {
        super::cel::check_schema(schema, &path, out);
    }
}

/// `ValidateCustomResourceDefinitionOpenAPISchema` with the v3 validator: `meta` is whether
/// this schema applies to `apiVersion`/`kind`/`metadata` of a resource, `no_defaults` why
/// defaults are forbidden here.
fn openapi_schema(
    schema: &Value,
    path: &str,
    root: bool,
    meta: bool,
    no_defaults: Option<&str>,
    out: &mut Vec<Cause>,
) {
    let Some(obj) = schema.as_object() else {
        return;
    };
    let t = s(schema, "type");
    if !t.is_empty() && !OPENAPI_TYPES.contains(&t) {
        out.push(not_supported(format!("{path}.type"), t, OPENAPI_TYPES));
    }
    if obj.contains_key("default")
        && let Some(reason) = no_defaults
    {
        out.push(forbidden(
            format!("{path}.default"),
            &format!("must not be set {reason}"),
        ));
    }
    for (key, detail) in [
        ("id", "id is not supported"),
        ("additionalItems", "additionalItems is not supported"),
        ("patternProperties", "patternProperties is not supported"),
        ("definitions", "definitions is not supported"),
        ("dependencies", "dependencies is not supported"),
        ("$ref", "$ref is not supported"),
    ] {
        if obj.contains_key(key) {
            out.push(forbidden(format!("{path}.{key}"), detail));
        }
    }
    if t == "null" {
        out.push(forbidden(
            format!("{path}.type"),
            "type cannot be set to null, use nullable as an alternative",
        ));
    }
    if obj.get("items").is_some_and(Value::is_array) {
        out.push(forbidden(
            format!("{path}.items"),
            "items must be a schema object and not an array",
        ));
    }
    if meta && flag(schema, "x-kubernetes-embedded-resource") {
        out.push(forbidden(
            format!("{path}.x-kubernetes-embedded-resource"),
            "must not be used inside of resource meta",
        ));
    }
    if flag(schema, "uniqueItems") {
        out.push(forbidden(
            format!("{path}.uniqueItems"),
            "uniqueItems cannot be set to true since the runtime complexity becomes quadratic",
        ));
    }
    let props = obj.get("properties").and_then(Value::as_object);
    if let Some(extra) = obj.get("additionalProperties") {
        if props.is_some_and(|p| !p.is_empty())
            && (extra == &Value::Bool(false) || extra.is_object())
        {
            out.push(forbidden(
                format!("{path}.additionalProperties"),
                "additionalProperties and properties are mutual exclusive",
            ));
        }
        let reason = if meta {
            Some("inside additionalProperties applying to object metadata")
        } else {
            no_defaults
        };
        openapi_schema(
            extra,
            &format!("{path}.additionalProperties"),
            false,
            meta,
            reason,
            out,
        );
    }
    if let Some(props) = props {
        let embedded = flag(schema, "x-kubernetes-embedded-resource");
        for (k, p) in props {
            let is_meta =
                (root || embedded) && matches!(k.as_str(), "metadata" | "kind" | "apiVersion");
            let top = format!("in top-level {k}");
            let reason = if is_meta && root {
                Some(top.as_str())
            } else {
                no_defaults
            };
            openapi_schema(
                p,
                &format!("{path}.properties[{k}]"),
                false,
                meta || is_meta,
                reason,
                out,
            );
        }
    }
    // Nested schemas that inherit this one's context.
    let mut nested =
        |sub: &Value, at: String| openapi_schema(sub, &at, false, meta, no_defaults, out);
    if let Some(not) = obj.get("not") {
        nested(not, format!("{path}.not"));
    }
    for j in ["allOf", "oneOf", "anyOf"] {
        for (i, sub) in obj
            .get(j)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            nested(sub, format!("{path}.{j}[{i}]"));
        }
    }
    if let Some(items) = obj.get("items").filter(|i| i.is_object()) {
        nested(items, format!("{path}.items"));
    }
    if obj.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(false)) {
        out.push(invalid(
            format!("{path}.x-kubernetes-preserve-unknown-fields"),
            "false",
            "must be true or undefined",
        ));
    }
    // `type` must be `want` when `extension` is set: required if missing, invalid otherwise.
    let type_for = |want: &str, extension: &str, out: &mut Vec<Cause>| {
        let detail = format!("must be {want} if {extension} is specified");
        out.push(if t.is_empty() {
            req(format!("{path}.type"), &detail)
        } else {
            invalid(format!("{path}.type"), &q(t), &detail)
        });
    };
    let map_type = obj.get("x-kubernetes-map-type").and_then(Value::as_str);
    if map_type.is_some() && t != "object" {
        type_for("object", "x-kubernetes-map-type", out);
    }
    if let Some(m) = map_type
        && !matches!(m, "atomic" | "granular")
    {
        out.push(not_supported(
            format!("{path}.x-kubernetes-map-type"),
            m,
            &["atomic", "granular"],
        ));
    }
    let list_type = obj.get("x-kubernetes-list-type").and_then(Value::as_str);
    let items = obj.get("items").filter(|i| i.is_object());
    if list_type.is_some() && t != "array" {
        type_for("array", "x-kubernetes-list-type", out);
    } else if list_type == Some("set")
        && let Some(is) = items
    {
        match s(is, "type") {
            "array" => {
                if let Some(lt) = is.get("x-kubernetes-list-type").and_then(Value::as_str)
                    && lt != "atomic"
                {
                    out.push(invalid(
                        format!("{path}.items.x-kubernetes-list-type"),
                        &q(lt),
                        "must be atomic as item of a list with x-kubernetes-list-type=set",
                    ));
                }
            }
            "object" if s(is, "x-kubernetes-map-type") != "atomic" => {
                out.push(invalid(
                    format!("{path}.items.x-kubernetes-map-type"),
                    "(*string)(nil)",
                    "must be atomic as item of a list with x-kubernetes-list-type=set",
                ));
            }
            _ => {}
        }
    }
    if let Some(lt) = list_type
        && !matches!(lt, "atomic" | "set" | "map")
    {
        out.push(not_supported(
            format!("{path}.x-kubernetes-list-type"),
            lt,
            &["atomic", "set", "map"],
        ));
    }
    let keys: Vec<&str> = obj
        .get("x-kubernetes-list-map-keys")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let keys_shown = format!(
        "[]string{{{}}}",
        keys.iter().map(|k| q(k)).collect::<Vec<_>>().join(", ")
    );
    if !keys.is_empty() {
        let (field, detail) = (
            format!("{path}.x-kubernetes-list-type"),
            "must be map if x-kubernetes-list-map-keys is non-empty",
        );
        match list_type {
            None => out.push(req(field, detail)),
            Some("map") => {}
            Some(other) => out.push(invalid(field, &q(other), detail)),
        }
    }
    if list_type == Some("map") {
        if keys.is_empty() {
            out.push(req(
                format!("{path}.x-kubernetes-list-map-keys"),
                "must not be empty if x-kubernetes-list-type is map",
            ));
        }
        match items {
            None => out.push(req(
                format!("{path}.items"),
                "must have a schema if x-kubernetes-list-type is map",
            )),
            Some(is) if s(is, "type") != "object" => out.push(invalid(
                format!("{path}.items.type"),
                &q(s(is, "type")),
                "must be object if parent array's x-kubernetes-list-type is map",
            )),
            Some(is) => {
                let item_props = is.get("properties").and_then(Value::as_object);
                let mut seen = HashSet::new();
                for k in &keys {
                    match item_props.and_then(|p| p.get(*k)) {
                        Some(p) if matches!(s(p, "type"), "array" | "object") => out.push(invalid(
                            format!("{path}.items.properties[{k}].type"),
                            &q("object"),
                            "must be a scalar type if parent array's x-kubernetes-list-type is map",
                        )),
                        Some(_) => {}
                        None => out.push(invalid(
                            format!("{path}.x-kubernetes-list-map-keys"),
                            &keys_shown,
                            "entries must all be names of item properties",
                        )),
                    }
                    if !seen.insert(*k) {
                        out.push(invalid(
                            format!("{path}.x-kubernetes-list-map-keys"),
                            &keys_shown,
                            "must not contain duplicate entries",
                        ));
                    }
                }
            }
        }
    }
    // validateMapListKeysMapSet
    if let (Some(lt @ ("set" | "map")), Some(is)) = (list_type, items) {
        if flag(is, "nullable") {
            out.push(forbidden(
                format!("{path}.items.nullable"),
                &format!("cannot be nullable when x-kubernetes-list-type is {lt}"),
            ));
        }
        if lt == "map" {
            let required: Vec<&str> = is
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            for k in &keys {
                let Some(p) = is.get("properties").and_then(|p| p.get(*k)) else {
                    continue;
                };
                if !required.contains(k) && p.get("default").is_none() {
                    out.push(req(
                        format!("{path}.items.properties[{k}].default"),
                        "this property is in x-kubernetes-list-map-keys, so it must have a default or be a required property",
                    ));
                }
                if flag(p, "nullable") {
                    out.push(forbidden(
                        format!("{path}.items.properties[{k}].nullable"),
                        "this property is in x-kubernetes-list-map-keys, so it cannot be nullable",
                    ));
                }
            }
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Level {
    Root,
    Item,
    Field,
}

/// `validateStructuralInvariants` of upstream's structural schema package.
fn structural_invariants(schema: &Value, lvl: Level, path: &str, out: &mut Vec<Cause>) {
    let Some(obj) = schema.as_object() else {
        return;
    };
    let t = s(schema, "type");
    let items = obj.get("items").filter(|i| i.is_object());
    if t == "array" && items.is_none() {
        out.push(req(format!("{path}.items"), "must be specified"));
    }
    if let Some(items) = items {
        structural_invariants(items, Level::Item, &format!("{path}.items"), out);
    }
    let props = obj.get("properties").and_then(Value::as_object);
    for (k, p) in props.into_iter().flatten() {
        structural_invariants(p, Level::Field, &format!("{path}.properties[{k}]"), out);
    }
    if let Some(extra) = obj.get("additionalProperties").filter(|a| !a.is_null()) {
        if lvl == Level::Root {
            out.push(forbidden(
                format!("{path}.additionalProperties"),
                "must not be used at the root",
            ));
        }
        if extra.is_object() {
            structural_invariants(
                extra,
                Level::Field,
                &format!("{path}.additionalProperties"),
                out,
            );
        }
    }
    let int_or_string = flag(schema, "x-kubernetes-int-or-string");
    let preserve = flag(schema, "x-kubernetes-preserve-unknown-fields");
    let embedded = flag(schema, "x-kubernetes-embedded-resource");
    if int_or_string && preserve {
        out.push(invalid(
            format!("{path}.x-kubernetes-preserve-unknown-fields"),
            "true",
            "must be false if x-kubernetes-int-or-string is true",
        ));
    }
    if int_or_string && embedded {
        out.push(invalid(
            format!("{path}.x-kubernetes-embedded-resource"),
            "true",
            "must be false if x-kubernetes-int-or-string is true",
        ));
    }
    // Value validations under junctors (the int-or-string `anyOf: [integer, string]` forms
    // are the two exceptions).
    let int_or_string_any_of = |v: &Value| {
        v.as_array().is_some_and(|a| {
            a.len() == 2
                && a[0] == serde_json::json!({"type": "integer"})
                && a[1] == serde_json::json!({"type": "string"})
        })
    };
    if !(obj.get("anyOf").is_some_and(int_or_string_any_of)) {
        for (i, sub) in obj
            .get("anyOf")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            nested_value_validation(sub, &format!("{path}.anyOf[{i}]"), out);
        }
    }
    let skip_first_all_of = obj
        .get("allOf")
        .and_then(Value::as_array)
        .and_then(|a| a.first())
        .and_then(|f| f.get("anyOf"))
        .is_some_and(int_or_string_any_of);
    for (i, sub) in obj
        .get("allOf")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        if i == 0 && skip_first_all_of {
            let mut rest = sub.clone();
            if let Some(m) = rest.as_object_mut() {
                m.remove("anyOf");
            }
            nested_value_validation(&rest, &format!("{path}.allOf[{i}]"), out);
        } else {
            nested_value_validation(sub, &format!("{path}.allOf[{i}]"), out);
        }
    }
    for (i, sub) in obj
        .get("oneOf")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        nested_value_validation(sub, &format!("{path}.oneOf[{i}]"), out);
    }
    if let Some(not) = obj.get("not") {
        nested_value_validation(not, &format!("{path}.not"), out);
    }
    if let Some(p) = obj.get("pattern").and_then(Value::as_str)
        && let Err(e) = regex::Regex::new(p)
    {
        out.push(invalid(
            format!("{path}.pattern"),
            &q(p),
            &format!("must be a valid regular expression, but isn't: {e}"),
        ));
    }
    if embedded && t != "object" {
        if t.is_empty() {
            out.push(req(
                format!("{path}.type"),
                "must be object if x-kubernetes-embedded-resource is true",
            ));
        } else {
            out.push(invalid(
                format!("{path}.type"),
                &q(t),
                "must be object if x-kubernetes-embedded-resource is true",
            ));
        }
    } else if t.is_empty() && !int_or_string && !preserve {
        let detail = match lvl {
            Level::Root => "must not be empty at the root",
            Level::Item => "must not be empty for specified array items",
            Level::Field => "must not be empty for specified object fields",
        };
        out.push(req(format!("{path}.type"), detail));
    }
    if embedded
        && obj
            .get("additionalProperties")
            .is_some_and(|a| !a.is_null())
    {
        out.push(forbidden(
            format!("{path}.additionalProperties"),
            "must not be used if x-kubernetes-embedded-resource is set",
        ));
    }
    if lvl == Level::Root && !t.is_empty() && t != "object" {
        out.push(invalid(
            format!("{path}.type"),
            &q(t),
            "must be object at the root",
        ));
    }
    let check_meta = lvl == Level::Root || embedded;
    if check_meta && let Some(props) = props {
        for (k, want) in [
            ("kind", "string"),
            ("apiVersion", "string"),
            ("metadata", "object"),
        ] {
            if let Some(p) = props.get(k)
                && s(p, "type") != want
            {
                out.push(invalid(
                    format!("{path}.properties[{k}].type"),
                    &q(s(p, "type")),
                    &format!("must be {want}"),
                ));
            }
        }
    }
    if lvl == Level::Root
        && let Some(meta) = props
            .and_then(|p| p.get("metadata"))
            .and_then(Value::as_object)
    {
        let mut rest: Map<String, Value> = meta.clone();
        rest.remove("type");
        rest.remove("default");
        if let Some(mp) = rest.get("properties").and_then(Value::as_object) {
            let only_names = mp
                .keys()
                .all(|k| matches!(k.as_str(), "name" | "generateName"));
            if only_names {
                rest.remove("properties");
            }
        }
        if !rest.is_empty() {
            out.push(forbidden(
                format!("{path}.properties[metadata]"),
                "must not specify anything other than name and generateName, but metadata is implicitly specified",
            ));
        }
    }
    if embedded && !preserve && props.is_none_or(Map::is_empty) {
        out.push(req(
            format!("{path}.properties"),
            "must not be empty if x-kubernetes-embedded-resource is true without x-kubernetes-preserve-unknown-fields",
        ));
    }
}

/// What may not appear under `allOf`/`anyOf`/`oneOf`/`not` in a structural schema.
fn nested_value_validation(v: &Value, path: &str, out: &mut Vec<Cause>) {
    let Some(obj) = v.as_object() else {
        return;
    };
    for j in ["anyOf", "allOf", "oneOf"] {
        for (i, sub) in obj
            .get(j)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            nested_value_validation(sub, &format!("{path}.{j}[{i}]"), out);
        }
    }
    if let Some(not) = obj.get("not") {
        nested_value_validation(not, &format!("{path}.not"), out);
    }
    if let Some(items) = obj.get("items") {
        nested_value_validation(items, &format!("{path}.items"), out);
    }
    for (k, p) in obj
        .get("properties")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        nested_value_validation(p, &format!("{path}.properties[{k}]"), out);
    }
    let rules: [(&str, &str); 11] = [
        ("type", "must be empty to be structural"),
        ("additionalProperties", "must be undefined to be structural"),
        ("default", "must be undefined to be structural"),
        ("title", "must be empty to be structural"),
        ("description", "must be empty to be structural"),
        ("nullable", "must be false to be structural"),
        (
            "x-kubernetes-preserve-unknown-fields",
            "must be false to be structural",
        ),
        (
            "x-kubernetes-embedded-resource",
            "must be false to be structural",
        ),
        (
            "x-kubernetes-int-or-string",
            "must be false to be structural",
        ),
        (
            "x-kubernetes-list-map-keys",
            "must be empty to be structural",
        ),
        (
            "x-kubernetes-list-type",
            "must be undefined to be structural",
        ),
    ];
    for (key, detail) in rules {
        let set = match obj.get(key) {
            None | Some(Value::Null) | Some(Value::Bool(false)) => false,
            Some(Value::String(s)) => !s.is_empty(),
            Some(Value::Array(a)) => !a.is_empty(),
            Some(_) => true,
        };
        if set {
            out.push(forbidden(format!("{path}.{key}"), detail));
        }
    }
    if obj
        .get("properties")
        .and_then(Value::as_object)
        .is_some_and(|p| p.contains_key("metadata"))
    {
        out.push(forbidden(
            format!("{path}.properties[metadata]"),
            "must not be specified in a nested context",
        ));
    }
}

/// `validateStructuralCompleteness`: every property and `items` a junctor speaks about must
/// also be specified outside of the junctors.
fn structural_completeness(schema: &Value, path: &str, out: &mut Vec<Cause>) {
    fn covers(s: &Value, v: &Value, s_path: &str, v_path: &str, out: &mut Vec<Cause>) {
        if let Some(vp) = v.get("properties").and_then(Value::as_object) {
            for (k, vf) in vp {
                let s_child = s
                    .get("properties")
                    .and_then(|p| p.get(k))
                    .or_else(|| s.get("additionalProperties").filter(|a| a.is_object()));
                let sp = format!("{s_path}.properties[{k}]");
                let vpp = format!("{v_path}.properties[{k}]");
                match s_child {
                    Some(sc) => covers(sc, vf, &sp, &vpp, out),
                    None => out.push(req(sp, &format!("because it is defined in {vpp}"))),
                }
            }
        }
        if let Some(vi) = v.get("items") {
            let sp = format!("{s_path}.items");
            let vpp = format!("{v_path}.items");
            match s.get("items") {
                Some(si) => covers(si, vi, &sp, &vpp, out),
                None => out.push(req(sp, &format!("because it is defined in {vpp}"))),
            }
        }
        for j in ["allOf", "anyOf", "oneOf"] {
            for (i, sub) in v
                .get(j)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                covers(s, sub, s_path, &format!("{v_path}.{j}[{i}]"), out);
            }
        }
        if let Some(not) = v.get("not") {
            covers(s, not, s_path, &format!("{v_path}.not"), out);
        }
    }
    let Some(obj) = schema.as_object() else {
        return;
    };
    for j in ["allOf", "anyOf", "oneOf"] {
        for (i, sub) in obj
            .get(j)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            covers(schema, sub, path, &format!("{path}.{j}[{i}]"), out);
        }
    }
    if let Some(not) = obj.get("not") {
        covers(schema, not, path, &format!("{path}.not"), out);
    }
    for (k, p) in obj
        .get("properties")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        structural_completeness(p, &format!("{path}.properties[{k}]"), out);
    }
    if let Some(items) = obj.get("items") {
        structural_completeness(items, &format!("{path}.items"), out);
    }
    if let Some(extra) = obj.get("additionalProperties").filter(|a| a.is_object()) {
        structural_completeness(extra, &format!("{path}.additionalProperties"), out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn crd(schema: Value) -> Value {
        json!({
            "metadata": {"name": "foos.example.com"},
            "spec": {
                "group": "example.com", "scope": "Namespaced",
                "names": {"plural": "foos", "singular": "foo", "kind": "Foo", "listKind": "FooList"},
                "conversion": {"strategy": "None"},
                "versions": [{"name": "v1", "served": true, "storage": true,
                              "schema": {"openAPIV3Schema": schema}}],
            },
        })
    }

    use crate::status::cause_lines as messages;

    #[test]
    fn a_good_crd_passes() {
        let c = crd(json!({"type": "object", "properties": {
            "metadata": {"type": "object", "properties": {"name": {"type": "string", "maxLength": 10}}},
            "spec": {"type": "object",
                     "anyOf": [{"required": ["a"]}, {"required": ["b"]}],
                     "properties": {
                         "a": {"type": "string", "format": "email"},
                         "b": {"x-kubernetes-int-or-string": true,
                               "anyOf": [{"type": "integer"}, {"type": "string"}]},
                         "ports": {"type": "array", "x-kubernetes-list-type": "map",
                                   "x-kubernetes-list-map-keys": ["name"],
                                   "items": {"type": "object", "required": ["name"],
                                             "properties": {"name": {"type": "string"}}}},
                         "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                         "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                     },
                     "x-kubernetes-validations": [{"rule": "has(self.a) || has(self.b)"}]},
        }}));
        assert_eq!(messages(&validate_crd(&c, None)), Vec::<String>::new());
    }

    #[test]
    fn non_structural_schemas_are_refused_with_upstream_messages() {
        let c = crd(json!({"type": "object", "properties": {
            "metadata": {"type": "object", "properties": {"labels": {"type": "object"}}},
            "spec": {"type": "object",
                     "properties": {"x": {"description": "no type"}},
                     "additionalProperties": {"type": "string"},
                     "anyOf": [{"type": "object", "properties": {"y": {"minimum": 1}}}]},
            "list": {"type": "array", "uniqueItems": true, "items": {"type": "string"}},
            "keep": {"type": "object", "x-kubernetes-preserve-unknown-fields": false},
        }}));
        let got = messages(&validate_crd(&c, None));
        let at = "spec.versions[0].schema.openAPIV3Schema";
        for want in [
            format!(
                "{at}.properties[spec].additionalProperties: Forbidden: additionalProperties and properties are mutual exclusive"
            ),
            format!(
                "{at}.properties[list].uniqueItems: Forbidden: uniqueItems cannot be set to true since the runtime complexity becomes quadratic"
            ),
            format!(
                "{at}.properties[keep].x-kubernetes-preserve-unknown-fields: Invalid value: false: must be true or undefined"
            ),
        ] {
            assert!(got.contains(&want), "{want} not in {got:?}");
        }
        // Structural errors come only when the OpenAPI rules pass: check them alone.
        let c = crd(json!({"type": "object", "properties": {
            "metadata": {"type": "object", "properties": {"labels": {"type": "object"}}},
            "spec": {"type": "object",
                     "properties": {"x": {"description": "no type"}},
                     "anyOf": [{"type": "object", "properties": {"y": {"minimum": 1}}}]},
        }}));
        let got = messages(&validate_crd(&c, None));
        for want in [
            format!(
                "{at}.properties[spec].properties[x].type: Required value: must not be empty for specified object fields"
            ),
            format!(
                "{at}.properties[spec].anyOf[0].type: Forbidden: must be empty to be structural"
            ),
            format!(
                "{at}.properties[spec].properties[y]: Required value: because it is defined in {at}.properties[spec].anyOf[0].properties[y]"
            ),
            format!(
                "{at}.properties[metadata]: Forbidden: must not specify anything other than name and generateName, but metadata is implicitly specified"
            ),
        ] {
            assert!(got.contains(&want), "{want} not in {got:?}");
        }
    }

    #[test]
    fn names_versions_and_conversion() {
        let mut c = crd(json!({"type": "object"}));
        c["spec"]["versions"] = json!([
            {"name": "V1", "served": true, "storage": true, "schema": {"openAPIV3Schema": {"type": "object"}}},
            {"name": "v2", "served": true, "storage": true},
        ]);
        c["spec"]["names"]["listKind"] = json!("Foo");
        c["spec"]["names"]["shortNames"] = json!(["f_o"]);
        c["spec"]["conversion"] = json!({"strategy": "Magic"});
        let got = messages(&validate_crd(&c, None));
        for want in [
            "spec.versions[0].name: Invalid value: \"V1\": a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')",
            "spec.versions[1].schema.openAPIV3Schema: Required value: schemas are required",
            "spec.versions: Invalid value: []apiextensions.CustomResourceDefinitionVersion{\"V1\", \"v2\"}: must have exactly one version marked as storage version",
            "spec.names.listKind: Invalid value: \"Foo\": kind and listKind may not be the same",
            "spec.conversion.strategy: Unsupported value: \"Magic\": supported values: \"None\", \"Webhook\"",
        ] {
            assert!(got.iter().any(|g| g == want), "{want} not in {got:?}");
        }
        assert!(
            got.iter()
                .any(|g| g.starts_with("spec.names.shortNames[0]: Invalid value: \"f_o\""))
        );
        let old = crd(json!({"type": "object"}));
        let mut new = old.clone();
        new["spec"]["group"] = json!("other.com");
        let got = messages(&validate_crd(&new, Some(&old)));
        assert!(
            got.contains(
                &"spec.group: Invalid value: \"other.com\": field is immutable".to_string()
            ),
            "{got:?}"
        );
    }
}
