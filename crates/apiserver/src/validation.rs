//! Validation as upstream: names and the other rules of `k8s.io/apimachinery/pkg/util/validation`
//! with their messages (this file), and the per-type validation of built-in objects
//! (`pkg/apis/*/validation`: [`validate_builtin`]) — `metadata` of every object ([`meta`]),
//! core/v1 pods, pod templates, ConfigMaps and Secrets ([`core`]) and its other objects
//! ([`core_objects`]), the workload groups apps/v1 and batch/v1 ([`apps`]), CSRs
//! ([`certificates`]), RBAC ([`rbac`]), networking.k8s.io ([`networking`]), storage.k8s.io
//! ([`storage`]), admission configuration ([`admissionregistration`]), and the small groups
//! scheduling, node, coordination and discovery ([`scheduling`], [`node`], [`coordination`],
//! [`discovery`]).

mod admissionregistration;
mod apps;
mod certificates;
mod coordination;
mod core;
mod core_objects;
mod discovery;
pub(crate) mod ip;
mod meta;
mod networking;
mod node;
mod rbac;
mod scheduling;
mod servicecidr;
mod status;
mod storage;

pub(crate) use core::is_volume_source;
pub(crate) use meta::{field_manager, go_unicode, managed_fields};
use serde_json::Value;

use crate::registry::ResourceInfo;
use crate::status::Cause;

/// Upstream's validation of a built-in object as it will be stored (`ValidateXxx` on create,
/// `ValidateXxxUpdate` with the stored `old` on update of the main resource), as 422 causes.
/// Custom resources are validated by their schema instead (`crd`).
pub(crate) fn validate_builtin(
    info: &ResourceInfo,
    obj: &Value,
    old: Option<&Value>,
) -> Vec<Cause> {
    if info.custom.is_some() {
        return Vec::new();
    }
    let mut causes = meta::validate(info, obj, old);
    causes.extend(match info.group {
        "" => {
            let mut causes = core::validate(info, obj, old);
            causes.extend(core_objects::validate(info, obj, old));
            causes
        }
        "events.k8s.io" => core_objects::validate(info, obj, old),
        "apps" | "batch" | "policy" | "autoscaling" => apps::validate(info, obj, old),
        "certificates.k8s.io" => certificates::validate(info, obj, old),
        "rbac.authorization.k8s.io" => rbac::validate(info, obj, old),
        "networking.k8s.io" => networking::validate(info, obj, old),
        "storage.k8s.io" => storage::validate(info, obj, old),
        "admissionregistration.k8s.io" => admissionregistration::validate(info, obj, old),
        "scheduling.k8s.io" => scheduling::validate(info, obj, old),
        "node.k8s.io" => node::validate(info, obj, old),
        "coordination.k8s.io" => coordination::validate(info, obj, old),
        "discovery.k8s.io" => discovery::validate(info, obj, old),
        _ => Vec::new(),
    });
    causes
}

/// Core's `ValidateObjectMeta` (`ValidateObjectMetaUpdate` with the stored `old`) of a
/// built-in object's metadata, for flows that validate outside [`validate_builtin`] (Services).
pub(crate) fn object_meta(obj: &Value, old: Option<&Value>) -> Vec<Cause> {
    meta::object_meta(obj, old)
}

/// What upstream's decoding (v1 defaults, conversion) and status strategy do to a write through
/// `/status` of a built-in object before it is validated: `new` is the stored `old` with the
/// request's status.
pub(crate) fn prepare_status_update(info: &ResourceInfo, new: &mut Value, old: &Value) {
    if info.custom.is_none() {
        status::prepare(info, new, old);
    }
}

/// Upstream's validation of a write through `/status` of a built-in object
/// (`ValidateXxxStatusUpdate`): `obj` is the stored `old` with the request's status, as 422
/// causes. Custom resources are validated by their schema instead.
pub(crate) fn validate_status_update(info: &ResourceInfo, obj: &Value, old: &Value) -> Vec<Cause> {
    if info.custom.is_some() {
        return Vec::new();
    }
    status::validate(info, obj, old)
}

// ---- reading JSON objects -------------------------------------------------------------------

/// The string at `field` of `v`, `""` when absent or not a string (k8s-openapi writes a
/// missing required string as `""`, so the two are one case).
pub(crate) fn str_of<'a>(v: &'a Value, field: &str) -> &'a str {
    v.get(field).and_then(Value::as_str).unwrap_or("")
}

/// The items of the list at `field` of `v` (none when absent or not a list).
pub(crate) fn items<'a>(v: &'a Value, field: &str) -> &'a [Value] {
    v.get(field)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// The object at `field` of `v`, if it is one.
pub(crate) fn obj_of<'a>(v: &'a Value, field: &str) -> Option<&'a serde_json::Map<String, Value>> {
    v.get(field).and_then(Value::as_object)
}

/// A string field with a fixed set of values: `Required` when empty, `Unsupported` otherwise.
pub(crate) fn one_of(v: &Value, field: &str, path: &str, valid: &[&str]) -> Vec<Cause> {
    let s = str_of(v, field);
    if s.is_empty() {
        vec![required(path, "")]
    } else if !valid.contains(&s) {
        vec![not_supported(path, &q(s), valid)]
    } else {
        Vec::new()
    }
}

tokio::task_local! {
    static LOOPBACK_ENDPOINTS: bool;
}

/// Serves `f` with Endpoints and EndpointSlices allowed to hold loopback addresses when
/// `allow` (a server built with `Apiserver::proxy_to_loopback`, for tests and embedding: its
/// proxies and webhook client dial loopback endpoints; upstream refuses them).
pub(crate) async fn with_loopback_endpoints<F: std::future::Future>(
    allow: bool,
    f: F,
) -> F::Output {
    LOOPBACK_ENDPOINTS.scope(allow, f).await
}

/// Whether the request being served may write loopback endpoint addresses.
pub(crate) fn loopback_endpoints_allowed() -> bool {
    LOOPBACK_ENDPOINTS.try_with(|a| *a).unwrap_or(false)
}

/// Which rule an object's name follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NameRule {
    /// DNS-1123 subdomain: most resources.
    Subdomain,
    /// DNS-1123 label: namespaces.
    Label,
    /// DNS-1035 label: services.
    Dns1035,
    /// Anything usable as a path segment: events.
    PathSegment,
}

const LABEL_MAX: usize = 63;
const SUBDOMAIN_MAX: usize = 253;

fn is_alnum(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

fn is_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && is_alnum(b[0])
        && is_alnum(b[b.len() - 1])
        && b.iter().all(|&c| is_alnum(c) || c == b'-')
}

fn is_subdomain(s: &str) -> bool {
    s.split('.').all(is_label)
}

fn is_1035(s: &str) -> bool {
    is_label(s) && s.as_bytes()[0].is_ascii_lowercase()
}

/// The problems with `name` under `rule`, as upstream words them (empty: valid).
pub(crate) fn validate_name(rule: NameRule, name: &str) -> Vec<String> {
    let mut errs = Vec::new();
    match rule {
        NameRule::Subdomain => {
            if name.len() > SUBDOMAIN_MAX {
                errs.push(format!("must be no more than {SUBDOMAIN_MAX} characters"));
            }
            if !is_subdomain(name) {
                errs.push(
                    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric \
                     characters, '-' or '.', and must start and end with an alphanumeric \
                     character (e.g. 'example.com', regex used for validation is \
                     '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
                        .into(),
                );
            }
        }
        NameRule::Label => {
            if name.len() > LABEL_MAX {
                errs.push(format!("must be no more than {LABEL_MAX} characters"));
            }
            if !is_label(name) {
                errs.push(
                    "a lowercase RFC 1123 label must consist of lower case alphanumeric \
                     characters or '-', and must start and end with an alphanumeric character \
                     (e.g. 'my-name',  or '123-abc', regex used for validation is \
                     '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
                        .into(),
                );
            }
        }
        NameRule::Dns1035 => {
            if name.len() > LABEL_MAX {
                errs.push(format!("must be no more than {LABEL_MAX} characters"));
            }
            if !is_1035(name) {
                errs.push(
                    "a DNS-1035 label must consist of lower case alphanumeric characters or \
                     '-', start with an alphabetic character, and end with an alphanumeric \
                     character (e.g. 'my-name',  or 'abc-123', regex used for validation is \
                     '[a-z]([-a-z0-9]*[a-z0-9])?')"
                        .into(),
                );
            }
        }
        NameRule::PathSegment => {}
    }
    errs.extend(path_segment_problems(name));
    errs
}

/// Upstream's `IsDNS1123Label` / `IsDNS1123Subdomain` messages alone (no path-segment
/// rule): for values that are not object names (port names, external names).
pub(crate) fn dns_problems(rule: NameRule, value: &str) -> Vec<String> {
    let mut errs = validate_name(rule, value);
    let path = path_segment_problems(value);
    errs.retain(|e| !path.contains(e));
    errs
}

/// The regular expression of a qualified name's name part and of label values.
const QUALIFIED_NAME_FMT: &str = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]";

fn is_qualified_name_part(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// Upstream's `IsQualifiedName` (label keys, `appProtocol`, `loadBalancerClass`): an optional
/// DNS-1123 subdomain prefix and `/`, then a name of at most 63 characters.
pub(crate) fn qualified_name_problems(value: &str) -> Vec<String> {
    let regex = format!(
        "must consist of alphanumeric characters, '-', '_' or '.', and must start and end \
         with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex \
         used for validation is '{QUALIFIED_NAME_FMT}')"
    );
    let mut errs = Vec::new();
    let parts: Vec<&str> = value.split('/').collect();
    let name = match parts.as_slice() {
        [name] => *name,
        [prefix, name] => {
            if prefix.is_empty() {
                errs.push("prefix part must be non-empty".to_string());
            } else {
                errs.extend(
                    dns_problems(NameRule::Subdomain, prefix)
                        .into_iter()
                        .map(|m| format!("prefix part {m}")),
                );
            }
            *name
        }
        _ => {
            return vec![format!(
                "a qualified name {regex} with an optional DNS subdomain prefix and '/' (e.g. \
                 'example.com/MyName')"
            )];
        }
    };
    if name.is_empty() {
        errs.push("name part must be non-empty".into());
    } else if name.len() > LABEL_MAX {
        errs.push(format!(
            "name part must be no more than {LABEL_MAX} characters"
        ));
    }
    if !is_qualified_name_part(name) {
        errs.push(format!("name part {regex}"));
    }
    errs
}

/// Upstream's `IsValidLabelValue`.
pub(crate) fn label_value_problems(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > LABEL_MAX {
        errs.push(format!("must be no more than {LABEL_MAX} characters"));
    }
    if !value.is_empty() && !is_qualified_name_part(value) {
        errs.push(format!(
            "a valid label must be an empty string or consist of alphanumeric characters, '-', \
             '_' or '.', and must start and end with an alphanumeric character \
             (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is \
             '({QUALIFIED_NAME_FMT})?')"
        ));
    }
    errs
}

/// Upstream's `ValidateLabelSelector` (`metav1validation`) of the `LabelSelector` `sel` at
/// `field`: `matchLabels` keys and values, `matchExpressions` operators, keys and values.
/// A null selector is valid.
pub(crate) fn label_selector_causes(sel: &Value, field: &str) -> Vec<Cause> {
    let mut causes = Vec::new();
    if sel.is_null() {
        return causes;
    }
    if let Some(labels) = obj_of(sel, "matchLabels") {
        let path = format!("{field}.matchLabels");
        for (k, v) in labels {
            let v = v.as_str().unwrap_or_default();
            for m in qualified_name_problems(k) {
                causes.push(invalid(path.as_str(), &q(k), &m));
            }
            for m in label_value_problems(v) {
                causes.push(invalid(path.as_str(), &q(v), &m));
            }
        }
    }
    for (i, r) in items(sel, "matchExpressions").iter().enumerate() {
        let path = format!("{field}.matchExpressions[{i}]");
        let values = items(r, "values");
        let op = str_of(r, "operator");
        match op {
            "In" | "NotIn" => {
                if values.is_empty() {
                    causes.push(required(
                        format!("{path}.values"),
                        "must be specified when `operator` is 'In' or 'NotIn'",
                    ));
                }
            }
            "Exists" | "DoesNotExist" => {
                if !values.is_empty() {
                    causes.push(forbidden(
                        format!("{path}.values"),
                        "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
                    ));
                }
            }
            _ => causes.push(invalid(
                format!("{path}.operator"),
                &q(op),
                "not a valid selector operator",
            )),
        }
        let key = str_of(r, "key");
        for m in qualified_name_problems(key) {
            causes.push(invalid(format!("{path}.key"), &q(key), &m));
        }
        for (j, v) in values.iter().enumerate() {
            let v = v.as_str().unwrap_or_default();
            for m in label_value_problems(v) {
                causes.push(invalid(format!("{path}.values[{j}]"), &q(v), &m));
            }
        }
    }
    causes
}

/// Upstream's `IsValidPortNum`.
pub(crate) fn port_num_problems(port: i64) -> Vec<String> {
    if (1..=65535).contains(&port) {
        Vec::new()
    } else {
        vec!["must be between 1 and 65535, inclusive".into()]
    }
}

/// Upstream's `IsValidPortName` (a named `targetPort`).
pub(crate) fn port_name_problems(port: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if port.len() > 15 {
        errs.push("must be no more than 15 characters".to_string());
    }
    if port.is_empty()
        || !port
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
    {
        errs.push("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)".into());
    }
    if !port.bytes().any(|c| c.is_ascii_lowercase()) {
        errs.push("must contain at least one letter (a-z)".into());
    }
    if port.contains("--") {
        errs.push("must not contain consecutive hyphens".into());
    }
    if port.starts_with('-') || port.ends_with('-') {
        errs.push("must not begin or end with a hyphen".into());
    }
    errs
}

/// Names that cannot appear in a URL path (upstream `IsValidPathSegmentName`).
fn path_segment_problems(name: &str) -> Vec<String> {
    if name == "." || name == ".." {
        return vec![format!("may not be '{name}'")];
    }
    ["/", "%"]
        .iter()
        .filter(|bad| name.contains(*bad))
        .map(|bad| format!("may not contain '{bad}'"))
        .collect()
}

/// The longest `generateName` prefix kept before the random suffix (upstream keeps 58
/// characters and adds 5).
pub(crate) const GENERATE_NAME_PREFIX_MAX: usize = 58;
const GENERATE_SUFFIX_CHARS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// A name from a `generateName` prefix: the prefix, cut to 58 characters, and 5 random
/// characters from upstream's alphabet (no vowels, no confusable characters).
pub(crate) fn generate_name(prefix: &str) -> String {
    let mut cut = prefix.len().min(GENERATE_NAME_PREFIX_MAX);
    while !prefix.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut name = prefix[..cut].to_string();
    for _ in 0..5 {
        let i = rand::random_range(0..GENERATE_SUFFIX_CHARS.len());
        name.push(char::from(GENERATE_SUFFIX_CHARS[i]));
    }
    name
}

// ---- causes, as apimachinery's `field.Error`s -----------------------------------------------

pub(crate) fn required(field: impl Into<String>, detail: &str) -> Cause {
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

pub(crate) fn forbidden(field: impl Into<String>, detail: &str) -> Cause {
    Cause {
        reason: "FieldValueForbidden",
        message: format!("Forbidden: {detail}"),
        field: field.into(),
    }
}

/// `field.Invalid`: `Invalid value: <shown>: <detail>` (no detail: no colon after the value).
pub(crate) fn invalid(field: impl Into<String>, shown: &str, detail: &str) -> Cause {
    Cause {
        reason: "FieldValueInvalid",
        message: if detail.is_empty() {
            format!("Invalid value: {shown}")
        } else {
            format!("Invalid value: {shown}: {detail}")
        },
        field: field.into(),
    }
}

pub(crate) fn not_supported(field: impl Into<String>, shown: &str, valid: &[&str]) -> Cause {
    let list: Vec<String> = valid.iter().map(|v| q(v)).collect();
    Cause {
        reason: "FieldValueNotSupported",
        message: format!(
            "Unsupported value: {shown}: supported values: {}",
            list.join(", ")
        ),
        field: field.into(),
    }
}

pub(crate) fn duplicate(field: impl Into<String>, shown: &str) -> Cause {
    Cause {
        reason: "FieldValueDuplicate",
        message: format!("Duplicate value: {shown}"),
        field: field.into(),
    }
}

pub(crate) fn not_found(field: impl Into<String>, shown: &str) -> Cause {
    Cause {
        reason: "FieldValueNotFound",
        message: format!("Not found: {shown}"),
        field: field.into(),
    }
}

/// `field.TooLong` with a byte limit (its value is not shown).
pub(crate) fn too_long(field: impl Into<String>, max: usize) -> Cause {
    Cause {
        reason: "FieldValueTooLong",
        message: format!("Too long: may not be more than {max} bytes"),
        field: field.into(),
    }
}

/// A string as Go's `%q` (`strconv.Quote`) shows it: printable characters as they are,
/// `\a \b \f \n \r \t \v`, other control bytes as `\xNN`, other unprintable characters as
/// `\uNNNN` or `\UNNNNNNNN`.
pub(crate) fn q(s: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if is_go_printable(c) => out.push(c),
            c if (c as u32) < 0x10000 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => {
                let _ = write!(out, "\\U{:08x}", c as u32);
            }
        }
    }
    out.push('"');
    out
}

/// Go's `unicode.IsPrint`, closely enough for messages: no control, format, separator
/// (other than the ASCII space) or private-use characters.
pub(crate) fn is_go_printable(c: char) -> bool {
    if c == ' ' {
        return true;
    }
    !(c.is_control()
        || c.is_whitespace()
        || matches!(c as u32,
            0xad | 0x600..=0x605 | 0x61c | 0x6dd | 0x70f | 0x180e | 0x200b..=0x200f
            | 0x202a..=0x202e | 0x2060..=0x2064 | 0x2066..=0x206f | 0xfeff | 0xfff9..=0xfffb
            | 0xe000..=0xf8ff | 0xf0000..=0x10ffff)
        || (0xd800..=0xdfff).contains(&(c as u32)))
}

/// Go's `%#v` of a `[]string`.
pub(crate) fn go_strings<S: AsRef<str>>(items: &[S]) -> String {
    let shown: Vec<String> = items.iter().map(|s| q(s.as_ref())).collect();
    format!("[]string{{{}}}", shown.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_quoted_as_go_quotes_them() {
        assert_eq!(q("plain"), r#""plain""#);
        assert_eq!(q("a\"b\\c"), r#""a\"b\\c""#);
        assert_eq!(q("a\u{1}b\tc\u{7f}"), r#""a\x01b\tc\x7f""#);
        assert_eq!(q("é ü 日本"), r#""é ü 日本""#);
        assert_eq!(q("a\u{200b}b\u{a0}"), r#""a\u200bb\u00a0""#);
        assert_eq!(q("\u{f0000}"), r#""\U000f0000""#);
        assert_eq!(go_strings(&["a", "b"]), r#"[]string{"a", "b"}"#);
        assert_eq!(go_strings::<&str>(&[]), "[]string{}");
    }

    #[test]
    fn subdomains() {
        for ok in ["a", "abc", "a-b.c-d", "0.1", "x".repeat(253).as_str()] {
            assert!(validate_name(NameRule::Subdomain, ok).is_empty(), "{ok}");
        }
        for bad in ["", "A", "a_b", "-a", "a-", "a..b", ".a", "a/b"] {
            assert!(
                !validate_name(NameRule::Subdomain, bad).is_empty(),
                "{bad:?}"
            );
        }
        let long = "x".repeat(254);
        assert_eq!(
            validate_name(NameRule::Subdomain, &long),
            vec!["must be no more than 253 characters".to_string()]
        );
    }

    #[test]
    fn labels_and_dns1035() {
        assert!(validate_name(NameRule::Label, "kube-system").is_empty());
        assert!(validate_name(NameRule::Label, "1abc").is_empty());
        assert!(!validate_name(NameRule::Label, "a.b").is_empty());
        assert!(!validate_name(NameRule::Label, &"x".repeat(64)).is_empty());
        assert!(validate_name(NameRule::Dns1035, "my-svc").is_empty());
        assert!(!validate_name(NameRule::Dns1035, "1svc").is_empty());
        let msg = &validate_name(NameRule::Label, "Bad")[0];
        assert!(msg.starts_with("a lowercase RFC 1123 label"), "{msg}");
    }

    #[test]
    fn path_segments() {
        assert!(validate_name(NameRule::PathSegment, "Pod.X_1").is_empty());
        assert_eq!(
            validate_name(NameRule::PathSegment, "a/b"),
            vec!["may not contain '/'".to_string()]
        );
        assert!(!validate_name(NameRule::PathSegment, "..").is_empty());
    }

    #[test]
    fn generated_names_keep_prefix_and_add_five() {
        let n = generate_name("web-");
        assert_eq!(n.len(), 9);
        assert!(n.starts_with("web-"));
        assert!(validate_name(NameRule::Subdomain, &n).is_empty(), "{n}");
        let long = generate_name(&"a".repeat(100));
        assert_eq!(long.len(), 63);
    }
}
