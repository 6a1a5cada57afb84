//! core/v1 objects other than pods, pod templates, ConfigMaps and Secrets (those are in
//! `core`), and events.k8s.io Events, as upstream v1.33's `pkg/apis/core/validation`
//! (`validation.go`, `events.go`), with upstream's field paths (including its quirks, such as
//! a Node's taints under `metadata.taints`), reasons and messages:
//!
//! - Events (`ValidateEventCreate`/`ValidateEventUpdate`): the legacy rules for every Event
//!   (involved object's namespace; for events with an `eventTime`, the reporting controller,
//!   instance, action, reason and message), and for events.k8s.io/v1 requests the strict
//!   ones, on the core form the object converts to (upstream validates the internal
//!   `core.Event`, so its paths are core's: `involvedObject.namespace`, `firstTimestamp`):
//!   the name a DNS subdomain, `series`, `eventTime` required, `type` Normal/Warning, the
//!   deprecated fields unset on create, and on update everything immutable but `series`
//!   (and metadata).
//! - Endpoints (`ValidateEndpoints`): subsets with addresses, IPs (valid, and not
//!   unspecified, loopback, link-local or link-local multicast), hostnames, node names,
//!   ports (names, numbers, protocols, `appProtocol`).
//! - Nodes (`ValidateNode`, `ValidateNodeUpdate`): taints (key, value, effect, unique by key
//!   and effect), capacity and allocatable quantities, pod CIDRs (valid, one per family, no
//!   duplicates); on update pod CIDRs and `providerID` fixed once set, `externalID`, the
//!   deprecated `configSource`, duplicate status addresses.
//! - LimitRanges (`ValidateLimitRange`): types, resource names per type, `default`s
//!   forbidden for Pod items, min ≤ defaultRequest ≤ default ≤ max, `maxLimitRequestRatio`,
//!   PVC items' storage bounds, non-overcommitable resources' defaults.
//! - ResourceQuotas (`ValidateResourceQuota`, `ValidateResourceQuotaUpdate`): hard resource
//!   names and quantities, scopes (known, valid for the resources, not conflicting), the
//!   scope selector's operators and values; scopes immutable.
//! - PersistentVolumes (`ValidatePersistentVolume`, `...Update`): access modes, capacity,
//!   reclaim policy, node affinity, exactly one volume source (the required fields of
//!   hostPath, local, NFS and CSI sources), class name, volume mode; on update the source,
//!   volume mode and a set node affinity are immutable.
//! - PersistentVolumeClaim updates (`ValidatePersistentVolumeClaimUpdate`; the spec itself
//!   is checked by `core`): the spec is immutable except the volume name (once), the storage
//!   class (from the beta annotation or nil), and for bound claims the storage request,
//!   which may not go below `status.capacity`; `volumeMode`; the storage-class annotation.
//! - ReplicationControllers (`ValidateReplicationControllerSpec`; the template is checked
//!   by `core`): `minReadySeconds` and `replicas` not negative, a selector (the template's
//!   labels when empty, as upstream's defaulting sets it) matching the template's labels.
//! - ServiceAccounts: upstream validates only their metadata (`meta`).
//!
//! Go values that upstream prints with `%#v` (quantities, taints, lists of scopes) are
//! written in Go's syntax. Not covered: the volume sources' fields other than those named
//! above, the taints and preferAvoidPods node annotations, `status.config` of Nodes, the
//! VolumeAttributesClass and MutablePVNodeAffinity feature gates (off in v1.33), quantities
//! that upstream keeps as `inf.Dec` (shown by their value, not Go's pointer).

use std::collections::BTreeSet;

use serde_json::Value;

use super::{
    NameRule, dns_problems, duplicate, forbidden, invalid, ip, items, label_value_problems,
    not_supported, obj_of, port_num_problems, q, qualified_name_problems, required, str_of,
};
use crate::registry::ResourceInfo;
use crate::status::Cause;

/// The causes of `obj` (with the stored `old` on update).
pub(super) fn validate(info: &ResourceInfo, obj: &Value, old: Option<&Value>) -> Vec<Cause> {
    match (info.group, info.kind) {
        ("", "Event") => legacy_event(obj),
        ("events.k8s.io", "Event") => {
            let to_core = crate::conversion::EVENTS_V1.to_storage;
            let event = to_core(obj.clone());
            match old {
                None => events_v1_create(&event),
                Some(old) => events_v1_update(&event, &to_core(old.clone())),
            }
        }
        ("", "Endpoints") => endpoints(obj),
        ("", "Node") => node(obj, old),
        ("", "LimitRange") => limit_range(obj),
        ("", "ResourceQuota") => resource_quota(obj, old),
        ("", "PersistentVolume") => persistent_volume(obj, old),
        ("", "PersistentVolumeClaim") => old.map_or_else(Vec::new, |old| claim_update(obj, old)),
        ("", "ReplicationController") => replication_controller(obj),
        _ => Vec::new(),
    }
}

static NULL: Value = Value::Null;

fn child<'a>(v: &'a Value, field: &str) -> &'a Value {
    v.get(field).unwrap_or(&NULL)
}

fn is_set(v: &Value, field: &str) -> bool {
    v.get(field).is_some_and(|v| !v.is_null())
}

fn int_of(v: &Value, field: &str) -> i64 {
    v.get(field).and_then(Value::as_i64).unwrap_or(0)
}

fn meta_str<'a>(obj: &'a Value, field: &str) -> &'a str {
    str_of(child(obj, "metadata"), field)
}

/// `field.Invalid` with a value already shown as upstream shows it.
fn immutable(path: &str, shown: &str) -> Cause {
    invalid(path, shown, "field is immutable")
}

/// Go's `%#v` of a `[]string` (nil when absent).
fn go_strings(v: Option<&Value>, type_name: &str) -> String {
    match v.and_then(Value::as_array) {
        None => format!("[]{type_name}(nil)"),
        Some(a) => {
            let items: Vec<&str> = a.iter().map(|s| s.as_str().unwrap_or("")).collect();
            super::go_strings(&items).replacen("string", type_name, 1)
        }
    }
}

/// Go's `%#v` of a `map[string]string`.
fn go_string_map(v: Option<&Value>) -> String {
    match v.and_then(Value::as_object) {
        None => "map[string]string(nil)".into(),
        Some(m) => {
            let mut pairs: Vec<(&String, &str)> = m
                .iter()
                .map(|(k, v)| (k, v.as_str().unwrap_or("")))
                .collect();
            pairs.sort();
            let items: Vec<String> = pairs
                .iter()
                .map(|(k, v)| format!("{}:{}", q(k), q(v)))
                .collect();
            format!("map[string]string{{{}}}", items.join(", "))
        }
    }
}

// ---- quantities as Go's resource.Quantity ---------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    DecimalSi,
    BinarySi,
    DecimalExponent,
}

impl Format {
    fn name(self) -> &'static str {
        match self {
            Format::DecimalSi => "DecimalSI",
            Format::BinarySi => "BinarySI",
            Format::DecimalExponent => "DecimalExponent",
        }
    }
}

/// A quantity as upstream's `resource.Quantity` holds it after decoding and defaulting: an
/// `int64Amount` (`value × 10^scale`), its format, and the text it keeps (`s`: the input
/// when already canonical, else empty).
#[derive(Debug, Clone)]
pub(super) struct GoQuantity {
    value: i128,
    scale: i32,
    format: Format,
    cached: String,
}

impl GoQuantity {
    /// Upstream's `ParseQuantity` (the `int64Amount` path) and `SetDefaults_ResourceList`'s
    /// rounding up to milli-units. `None` when not a quantity or outside that path.
    pub(super) fn parse(v: &Value) -> Option<GoQuantity> {
        let text = match v {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            _ => return None,
        };
        let text = text.trim();
        rk3s_quota::parse(text)?;
        if text == "0" {
            return Some(GoQuantity {
                value: 0,
                scale: 0,
                format: Format::DecimalSi,
                cached: "0".into(),
            });
        }
        let (positive, rest) = match text.as_bytes().first() {
            Some(b'-') => (false, &text[1..]),
            Some(b'+') => (true, &text[1..]),
            _ => (true, text),
        };
        let end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, suffix) = rest.split_at(end);
        let (whole, denom) = number.split_once('.').unwrap_or((number, ""));
        let mut num = whole.trim_start_matches('0');
        if num.is_empty() {
            num = "0";
        }
        let (base2, exponent, format) = match suffix {
            "" => (false, 0, Format::DecimalSi),
            "Ki" => (true, 10, Format::BinarySi),
            "Mi" => (true, 20, Format::BinarySi),
            "Gi" => (true, 30, Format::BinarySi),
            "Ti" => (true, 40, Format::BinarySi),
            "Pi" => (true, 50, Format::BinarySi),
            "Ei" => (true, 60, Format::BinarySi),
            "n" => (false, -9, Format::DecimalSi),
            "u" => (false, -6, Format::DecimalSi),
            "m" => (false, -3, Format::DecimalSi),
            "k" => (false, 3, Format::DecimalSi),
            "M" => (false, 6, Format::DecimalSi),
            "G" => (false, 9, Format::DecimalSi),
            "T" => (false, 12, Format::DecimalSi),
            "P" => (false, 15, Format::DecimalSi),
            "E" => (false, 18, Format::DecimalSi),
            s => {
                let e = s.strip_prefix(['e', 'E'])?.parse::<i32>().ok()?;
                (false, e, Format::DecimalExponent)
            }
        };
        let digits = (num.len() + denom.len()) as i32;
        let (mut scale, precision, mantissa) = if base2 {
            if denom.is_empty() {
                let precision = 15 - num.len() as i32 - (exponent as f32 * 3.0 / 10.0) as i32 - 1;
                (0, precision, 1i128 << exponent)
            } else {
                (0, -1, 1)
            }
        } else {
            (exponent, 18 - digits, 1)
        };
        if precision < 0 {
            return None;
        }
        scale -= denom.len() as i32;
        if scale < -9 {
            return None;
        }
        let shifted = format!("{num}{denom}");
        let digits_value: i128 = shifted.parse().ok()?;
        let mut value = digits_value.checked_mul(mantissa)?;
        if value > i128::from(i64::MAX) {
            return None;
        }
        if !positive {
            value = -value;
        }
        let canonical = if base2 {
            exponent % 10 == 0 && digits_value & 0x07 != 0
        } else {
            scale % 3 == 0 && !shifted.ends_with("000") && !shifted.starts_with('0')
        };
        let mut qty = GoQuantity {
            value,
            scale,
            format,
            cached: if canonical {
                text.to_string()
            } else {
                String::new()
            },
        };
        if qty.scale < -3 {
            // RoundUp(-3): away from zero, to milli-units.
            let divisor = 10i128.pow((-3 - qty.scale).unsigned_abs());
            let mut v = qty.value / divisor;
            if qty.value % divisor != 0 {
                v += qty.value.signum();
            }
            qty.value = v;
            qty.scale = -3;
            qty.cached.clear();
        }
        Some(qty)
    }

    fn milli_value(&self) -> i128 {
        let exp = self.scale + 3;
        if exp >= 0 {
            self.value * 10i128.pow(exp.unsigned_abs())
        } else {
            let d = 10i128.pow(exp.unsigned_abs());
            let v = self.value / d;
            if self.value % d != 0 {
                v + self.value.signum()
            } else {
                v
            }
        }
    }

    /// Upstream's `Value()`: whole units, rounded away from zero.
    pub(super) fn int_value(&self) -> i128 {
        let m = self.milli_value();
        if m % 1000 != 0 {
            m / 1000 + m.signum()
        } else {
            m / 1000
        }
    }

    /// Upstream's `String()`: the canonical text.
    fn canonical(&self) -> String {
        if self.value == 0 {
            return "0".into();
        }
        let mut format = self.format;
        if format == Format::BinarySi {
            let whole = self.scale >= 0 || self.value % 10i128.pow(self.scale.unsigned_abs()) == 0;
            let small = self.milli_value().abs() < 1_024_000;
            if small || !whole {
                format = Format::DecimalSi;
            }
        }
        if format == Format::BinarySi {
            let mut v = if self.scale >= 0 {
                self.value * 10i128.pow(self.scale.unsigned_abs())
            } else {
                self.value / 10i128.pow(self.scale.unsigned_abs())
            };
            let mut times = 0;
            while v.abs() >= 1024 && v % 1024 == 0 && times < 6 {
                v /= 1024;
                times += 1;
            }
            let suffix = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"][times];
            return format!("{v}{suffix}");
        }
        let mut amount = self.value;
        let mut exponent = self.scale;
        while amount.abs() >= 10 && amount % 10 == 0 {
            amount /= 10;
            exponent += 1;
        }
        match exponent.rem_euclid(3) {
            1 => {
                amount *= 10;
                exponent -= 1;
            }
            2 => {
                amount *= 100;
                exponent -= 2;
            }
            _ => {}
        }
        let suffix = match (format, exponent) {
            (Format::DecimalExponent, 0) => String::new(),
            (Format::DecimalExponent, e) => format!("e{e}"),
            (_, -9) => "n".into(),
            (_, -6) => "u".into(),
            (_, -3) => "m".into(),
            (_, 0) => String::new(),
            (_, 3) => "k".into(),
            (_, 6) => "M".into(),
            (_, 9) => "G".into(),
            (_, 12) => "T".into(),
            (_, 15) => "P".into(),
            (_, 18) => "E".into(),
            (_, e) => format!("e{e}"),
        };
        format!("{amount}{suffix}")
    }

    /// Go's `%#v` of the quantity; `stringified`: upstream called `String()` on it first
    /// (which caches the canonical text).
    fn go_struct(&self, stringified: bool) -> String {
        let cached = if stringified {
            self.canonical()
        } else {
            self.cached.clone()
        };
        format!(
            "resource.Quantity{{i:resource.int64Amount{{value:{}, scale:{}}}, \
             d:resource.infDecAmount{{Dec:(*inf.Dec)(nil)}}, s:{}, Format:{}}}",
            self.value,
            self.scale,
            q(&cached),
            q(self.format.name())
        )
    }
}

/// Go's `%#v` of a `core.ResourceList` (as it is when validated: nothing stringified).
fn go_resource_list(v: Option<&Value>) -> String {
    match v.and_then(Value::as_object) {
        None => "core.ResourceList(nil)".into(),
        Some(m) => {
            let sorted: std::collections::BTreeMap<&String, &Value> = m.iter().collect();
            let items: Vec<String> = sorted
                .into_iter()
                .map(|(k, v)| {
                    let shown = GoQuantity::parse(v)
                        .map_or_else(|| q(&v.to_string()), |qty| qty.go_struct(false));
                    format!("{}:{shown}", q(k))
                })
                .collect();
            format!("core.ResourceList{{{}}}", items.join(", "))
        }
    }
}

// ---- resource names (pkg/apis/core/helper) --------------------------------------------------

const STANDARD_RESOURCES: &[&str] = &[
    "cpu",
    "memory",
    "ephemeral-storage",
    "requests.cpu",
    "requests.memory",
    "requests.ephemeral-storage",
    "limits.cpu",
    "limits.memory",
    "limits.ephemeral-storage",
    "pods",
    "resourcequotas",
    "services",
    "replicationcontrollers",
    "secrets",
    "configmaps",
    "persistentvolumeclaims",
    "storage",
    "requests.storage",
    "services.nodeports",
    "services.loadbalancers",
];

const INTEGER_RESOURCES: &[&str] = &[
    "pods",
    "resourcequotas",
    "services",
    "replicationcontrollers",
    "secrets",
    "configmaps",
    "persistentvolumeclaims",
    "services.nodeports",
    "services.loadbalancers",
];

fn is_quota_hugepages(name: &str) -> bool {
    name.starts_with("hugepages-") || name.starts_with("requests.hugepages-")
}

fn is_standard_resource(name: &str) -> bool {
    STANDARD_RESOURCES.contains(&name) || is_quota_hugepages(name)
}

fn is_standard_quota_resource(name: &str) -> bool {
    (STANDARD_RESOURCES.contains(&name) && name != "storage") || is_quota_hugepages(name)
}

pub(super) fn is_native(name: &str) -> bool {
    !name.contains('/') || name.contains("kubernetes.io/")
}

fn is_extended(name: &str) -> bool {
    !is_native(name)
        && !name.starts_with("requests.")
        && qualified_name_problems(&format!("requests.{name}")).is_empty()
}

fn is_integer_resource(name: &str) -> bool {
    INTEGER_RESOURCES.contains(&name) || is_extended(name)
}

fn overcommit_allowed(name: &str) -> bool {
    is_native(name) && !name.starts_with("hugepages-")
}

/// `validateResourceName` (values printed unquoted: `core.ResourceName` is a Stringer).
fn resource_name(name: &str, path: &str) -> Vec<Cause> {
    let errs = qualified_name_problems(name);
    if !errs.is_empty() {
        return errs.iter().map(|m| invalid(path, name, m)).collect();
    }
    if !name.contains('/') && !is_standard_resource(name) {
        return vec![invalid(
            path,
            name,
            "must be a standard resource type or fully qualified",
        )];
    }
    Vec::new()
}

/// `validateContainerResourceName`.
fn container_resource_name(name: &str, path: &str) -> Vec<Cause> {
    let mut causes = resource_name(name, path);
    if !name.contains('/') {
        if !matches!(name, "cpu" | "memory" | "ephemeral-storage")
            && !name.starts_with("hugepages-")
        {
            causes.push(invalid(
                path,
                name,
                "must be a standard resource for containers",
            ));
        }
    } else if !is_native(name) && !is_extended(name) {
        causes.push(invalid(
            path,
            name,
            "doesn't follow extended resource name standard",
        ));
    }
    causes
}

/// `ValidateResourceQuotaResourceName`.
pub(super) fn quota_resource_name(name: &str, path: &str) -> Vec<Cause> {
    let mut causes = resource_name(name, path);
    if !name.contains('/') && !is_standard_quota_resource(name) {
        causes.push(invalid(path, name, "must be a standard resource for quota"));
    }
    causes
}

/// `ValidateResourceQuantityValue`: not negative, whole for integer resources.
pub(super) fn resource_quantity_value(name: &str, v: &Value, path: &str) -> Vec<Cause> {
    let mut causes = Vec::new();
    let Some(qty) = GoQuantity::parse(v) else {
        return causes;
    };
    if qty.value < 0 {
        causes.push(invalid(
            path,
            &q(&qty.canonical()),
            "must be greater than or equal to 0",
        ));
    }
    if is_integer_resource(name) && qty.milli_value() % 1000 != 0 {
        causes.push(invalid(path, &qty.go_struct(false), "must be an integer"));
    }
    causes
}

// ---- Events ---------------------------------------------------------------------------------

fn time_set(v: &Value, field: &str) -> bool {
    v.get(field)
        .and_then(Value::as_str)
        .is_some_and(|s| !s.is_empty())
}

/// `legacyValidateEvent` on the core form (`reportingComponent` is the internal
/// `ReportingController`).
fn legacy_event(e: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let ns = meta_str(e, "namespace");
    let involved_ns = str_of(child(e, "involvedObject"), "namespace");
    let mismatch = || {
        invalid(
            "involvedObject.namespace",
            &q(involved_ns),
            "does not match event.namespace",
        )
    };
    if !time_set(e, "eventTime") {
        if involved_ns.is_empty() {
            if !ns.is_empty() && ns != "default" {
                causes.push(mismatch());
            }
        } else if ns != involved_ns {
            causes.push(mismatch());
        }
        return causes;
    }
    if involved_ns.is_empty() && ns != "default" && ns != "kube-system" {
        causes.push(mismatch());
    }
    let controller = str_of(e, "reportingComponent");
    if controller.is_empty() {
        causes.push(required("reportingController", ""));
    }
    for m in qualified_name_problems(controller) {
        causes.push(invalid("reportingController", &q(controller), &m));
    }
    for (field, path, limit) in [
        ("reportingInstance", "reportingInstance", 128),
        ("action", "action", 128),
        ("reason", "reason", 128),
    ] {
        let v = str_of(e, field);
        if v.is_empty() {
            causes.push(required(path, ""));
        }
        if v.len() > limit {
            causes.push(invalid(
                path,
                "\"\"",
                &format!("can have at most {limit} characters"),
            ));
        }
    }
    if str_of(e, "message").len() > 1024 {
        causes.push(invalid(
            "message",
            "\"\"",
            "can have at most 1024 characters",
        ));
    }
    causes
}

/// `validateV1EventSeries`.
fn event_series(e: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    if let Some(series) = e.get("series").filter(|s| !s.is_null()) {
        if int_of(series, "count") < 2 {
            causes.push(invalid("series.count", "\"\"", "should be at least 2"));
        }
        if !time_set(series, "lastObservedTime") {
            causes.push(required("series.lastObservedTime", ""));
        }
    }
    causes
}

/// `ValidateEventCreate` for events.k8s.io/v1 (`e` in the core form).
fn events_v1_create(e: &Value) -> Vec<Cause> {
    let mut causes = legacy_event(e);
    let name = meta_str(e, "name");
    if !name.is_empty() {
        for m in dns_problems(NameRule::Subdomain, name) {
            causes.push(invalid("metadata.name", &q(name), &m));
        }
    }
    causes.extend(event_series(e));
    if !time_set(e, "eventTime") {
        causes.push(required("eventTime", ""));
    }
    let ty = str_of(e, "type");
    if ty != "Normal" && ty != "Warning" {
        causes.push(invalid("type", "\"\"", &format!("has invalid value: {ty}")));
    }
    for field in ["firstTimestamp", "lastTimestamp"] {
        if time_set(e, field) {
            causes.push(invalid(field, "\"\"", "needs to be unset"));
        }
    }
    if int_of(e, "count") != 0 {
        causes.push(invalid("count", "\"\"", "needs to be unset"));
    }
    let source = child(e, "source");
    if !str_of(source, "component").is_empty() || !str_of(source, "host").is_empty() {
        causes.push(invalid("source", "\"\"", "needs to be unset"));
    }
    causes
}

/// A time as Go's `time.Time.String()` shows an RFC 3339 UTC time (`metav1.Time`,
/// `metav1.MicroTime`); the zero time when unset.
fn go_time(v: &Value) -> String {
    let s = v.as_str().unwrap_or("");
    if s.is_empty() {
        return "0001-01-01 00:00:00 +0000 UTC".into();
    }
    let Some(utc) = s.strip_suffix('Z') else {
        return s.to_string();
    };
    let (date, time) = utc.split_once('T').unwrap_or((utc, ""));
    let time = match time.split_once('.') {
        Some((hms, frac)) => {
            let frac = frac.trim_end_matches('0');
            if frac.is_empty() {
                hms.to_string()
            } else {
                format!("{hms}.{frac}")
            }
        }
        None => time.to_string(),
    };
    format!("{date} {time} +0000 UTC")
}

/// Go's `%#v` of a `core.ObjectReference`.
fn go_object_reference(r: &Value) -> String {
    let f = |k: &str| q(str_of(r, k));
    format!(
        "core.ObjectReference{{Kind:{}, Namespace:{}, Name:{}, UID:{}, APIVersion:{}, \
         ResourceVersion:{}, FieldPath:{}}}",
        f("kind"),
        f("namespace"),
        f("name"),
        f("uid"),
        f("apiVersion"),
        f("resourceVersion"),
        f("fieldPath")
    )
}

/// Semantic equality of two JSON values (absent, null and empty lists alike).
fn same(a: &Value, b: &Value) -> bool {
    super::core::normalized(a) == super::core::normalized(b)
}

/// `ValidateEventUpdate` for events.k8s.io/v1 (`e`, `old` in the core form).
fn events_v1_update(e: &Value, old: &Value) -> Vec<Cause> {
    let mut causes = legacy_event(e);
    if !same(child(e, "series"), child(old, "series")) {
        causes.extend(event_series(e));
    }
    let changed = |field: &str| !same(child(e, field), child(old, field));
    if changed("involvedObject") {
        causes.push(immutable(
            "involvedObject",
            &go_object_reference(child(e, "involvedObject")),
        ));
    }
    let string_field = |causes: &mut Vec<Cause>, field: &str, path: &str| {
        if str_of(e, field) != str_of(old, field) {
            causes.push(immutable(path, &q(str_of(e, field))));
        }
    };
    string_field(&mut causes, "reason", "reason");
    string_field(&mut causes, "message", "message");
    let source = |v: &Value| {
        let s = child(v, "source");
        (
            str_of(s, "component").to_string(),
            str_of(s, "host").to_string(),
        )
    };
    if source(e) != source(old) {
        let (component, host) = source(e);
        causes.push(immutable(
            "source",
            &format!(
                "core.EventSource{{Component:{}, Host:{}}}",
                q(&component),
                q(&host)
            ),
        ));
    }
    for field in ["firstTimestamp", "lastTimestamp"] {
        if str_of(e, field) != str_of(old, field) {
            causes.push(immutable(field, &go_time(child(e, field))));
        }
    }
    if int_of(e, "count") != int_of(old, "count") {
        causes.push(immutable("count", &int_of(e, "count").to_string()));
    }
    string_field(&mut causes, "reason", "reason");
    string_field(&mut causes, "type", "type");
    if str_of(e, "eventTime") != str_of(old, "eventTime") {
        causes.push(immutable("eventTime", &go_time(child(e, "eventTime"))));
    }
    string_field(&mut causes, "action", "action");
    if changed("related") {
        let related = child(e, "related");
        let shown = if related.is_null() {
            "null".to_string()
        } else {
            go_object_reference(related)
        };
        causes.push(immutable("related", &shown));
    }
    string_field(&mut causes, "reportingComponent", "reportingController");
    string_field(&mut causes, "reportingInstance", "reportingInstance");
    causes
}

// ---- Endpoints ------------------------------------------------------------------------------

/// `ValidateNonSpecialIP` for an endpoint address (Endpoints and EndpointSlices). A server
/// that dials loopback endpoints (`Apiserver::proxy_to_loopback`, tests and embedding) accepts
/// loopback addresses ([`super::loopback_endpoints_allowed`]).
pub(super) fn non_special_ip(ip: &str, path: &str) -> Vec<Cause> {
    ip::non_special_ip(path, ip, super::loopback_endpoints_allowed())
}

const PROTOCOLS: &[&str] = &["SCTP", "TCP", "UDP"];

/// `ValidateEndpoints` (create and update). The apiserver's own `default/kubernetes`
/// Endpoints may hold a loopback address: rk3s serves on 127.0.0.1 by default, an address
/// upstream's apiserver would not advertise (and see [`non_special_ip`]).
fn endpoints(obj: &Value) -> Vec<Cause> {
    let own = meta_str(obj, "namespace") == "default" && meta_str(obj, "name") == "kubernetes";
    let mut causes = Vec::new();
    for (i, ss) in items(obj, "subsets").iter().enumerate() {
        let p = format!("subsets[{i}]");
        if items(ss, "addresses").is_empty() && items(ss, "notReadyAddresses").is_empty() {
            causes.push(required(
                &p,
                "must specify `addresses` or `notReadyAddresses`",
            ));
        }
        for list in ["addresses", "notReadyAddresses"] {
            for (j, a) in items(ss, list).iter().enumerate() {
                let mut found = endpoint_address(a, &format!("{p}.{list}[{j}]"));
                if own {
                    found.retain(|c| !c.message.contains("loopback"));
                }
                causes.extend(found);
            }
        }
        let ports = items(ss, "ports");
        for (j, port) in ports.iter().enumerate() {
            causes.extend(endpoint_port(
                port,
                ports.len() > 1,
                &format!("{p}.ports[{j}]"),
            ));
        }
    }
    causes
}

fn endpoint_address(a: &Value, path: &str) -> Vec<Cause> {
    let mut causes = Vec::new();
    let ip = str_of(a, "ip");
    let ip_path = format!("{path}.ip");
    causes.extend(ip::legacy_ip_causes(&ip_path, ip));
    let hostname = str_of(a, "hostname");
    if !hostname.is_empty() {
        for m in dns_problems(NameRule::Label, hostname) {
            causes.push(invalid(format!("{path}.hostname"), &q(hostname), &m));
        }
    }
    if let Some(node) = a.get("nodeName").and_then(Value::as_str) {
        for m in dns_problems(NameRule::Subdomain, node) {
            causes.push(invalid(format!("{path}.nodeName"), &q(node), &m));
        }
    }
    causes.extend(non_special_ip(ip, &ip_path));
    causes
}

fn endpoint_port(port: &Value, require_name: bool, path: &str) -> Vec<Cause> {
    let mut causes = Vec::new();
    let name = str_of(port, "name");
    if require_name && name.is_empty() {
        causes.push(required(format!("{path}.name"), ""));
    } else if !name.is_empty() {
        for m in dns_problems(NameRule::Label, name) {
            causes.push(invalid(format!("{path}.name"), &q(name), &m));
        }
    }
    let number = int_of(port, "port");
    for m in port_num_problems(number) {
        causes.push(invalid(format!("{path}.port"), &number.to_string(), &m));
    }
    // An empty protocol is upstream's default, TCP.
    let protocol = str_of(port, "protocol");
    if !protocol.is_empty() && !PROTOCOLS.contains(&protocol) {
        causes.push(not_supported(
            format!("{path}.protocol"),
            &q(protocol),
            PROTOCOLS,
        ));
    }
    if let Some(app) = port.get("appProtocol").and_then(Value::as_str) {
        for m in qualified_name_problems(app) {
            causes.push(invalid(format!("{path}.appProtocol"), &q(app), &m));
        }
    }
    causes
}

// ---- Nodes ----------------------------------------------------------------------------------

const TAINT_EFFECTS: &[&str] = &["NoSchedule", "PreferNoSchedule", "NoExecute"];

/// `validateNodeTaints` (upstream passes `metadata.taints` as the path).
fn node_taints(taints: &[Value], path: &str) -> Vec<Cause> {
    let mut causes = Vec::new();
    let mut seen: BTreeSet<(String, String)> = BTreeSet::new();
    for (i, t) in taints.iter().enumerate() {
        let p = format!("{path}[{i}]");
        let key = str_of(t, "key");
        for m in qualified_name_problems(key) {
            causes.push(invalid(format!("{p}.key"), &q(key), &m));
        }
        let value = str_of(t, "value");
        let errs = label_value_problems(value);
        if !errs.is_empty() {
            causes.push(invalid(format!("{p}.value"), &q(value), &errs.join(";")));
        }
        let effect = str_of(t, "effect");
        if effect.is_empty() {
            causes.push(required(format!("{p}.effect"), ""));
        } else if !TAINT_EFFECTS.contains(&effect) {
            causes.push(not_supported(
                format!("{p}.effect"),
                &q(effect),
                TAINT_EFFECTS,
            ));
        }
        if !seen.insert((effect.to_string(), key.to_string())) {
            let added = if is_set(t, "timeAdded") {
                // A pointer: Go prints its address; the time is what can be shown.
                format!("(*v1.Time)({})", go_time(child(t, "timeAdded")))
            } else {
                "(*v1.Time)(nil)".into()
            };
            let mut d = duplicate(
                &p,
                &format!(
                    "core.Taint{{Key:{}, Value:{}, Effect:{}, TimeAdded:{added}}}",
                    q(key),
                    q(value),
                    q(effect)
                ),
            );
            d.message
                .push_str(": taints must be unique by key and effect pair");
            causes.push(d);
        }
    }
    causes
}

/// `ValidateNodeResources`: capacity and allocatable quantities.
fn node_resources(obj: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let status = child(obj, "status");
    for list in ["capacity", "allocatable"] {
        let sorted: std::collections::BTreeMap<&String, &Value> =
            obj_of(status, list).into_iter().flatten().collect();
        for (k, v) in sorted {
            causes.extend(resource_quantity_value(k, v, &format!("status.{list}.{k}")));
        }
    }
    causes
}

/// The internal `PodCIDRs` of a v1 Node (`podCIDR` when `podCIDRs` is empty).
fn pod_cidrs(spec: &Value) -> Vec<String> {
    let list: Vec<String> = items(spec, "podCIDRs")
        .iter()
        .map(|c| c.as_str().unwrap_or("").to_string())
        .collect();
    if list.is_empty() && !str_of(spec, "podCIDR").is_empty() {
        return vec![str_of(spec, "podCIDR").to_string()];
    }
    list
}

/// `netutils.ParseCIDRSloppy`: the address family of a valid CIDR (IPv6: `true`).
fn cidr_family(c: &str) -> Option<bool> {
    ip::parse_cidr_sloppy(c).map(|(ip, _)| ip.is_ipv6())
}

pub(super) fn node(obj: &Value, old: Option<&Value>) -> Vec<Cause> {
    let spec = child(obj, "spec");
    let mut causes = Vec::new();
    if old.is_none() {
        causes.extend(node_taints(items(spec, "taints"), "metadata.taints"));
    }
    causes.extend(node_resources(obj));
    let Some(old) = old else {
        let cidrs = pod_cidrs(spec);
        let mut families = Vec::new();
        for (i, c) in cidrs.iter().enumerate() {
            match cidr_family(c) {
                Some(f) => families.push(f),
                None => causes.push(invalid(
                    format!("spec.podCIDRs[{i}]"),
                    &q(c),
                    "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)",
                )),
            }
        }
        if cidrs.len() > 1 {
            let dual = families.len() == cidrs.len()
                && families.iter().any(|f| *f)
                && families.iter().any(|f| !*f);
            if !dual || cidrs.len() > 2 {
                let list: Vec<String> = cidrs.iter().map(|c| q(c)).collect();
                causes.push(invalid(
                    "spec.podCIDRs",
                    &format!("[]string{{{}}}", list.join(", ")),
                    "may specify no more than one CIDR for each IP family",
                ));
            }
            let mut seen = BTreeSet::new();
            for (i, c) in cidrs.iter().enumerate() {
                if !seen.insert(c) {
                    causes.push(duplicate(format!("spec.podCIDRs[{i}]"), &q(c)));
                }
            }
        }
        return causes;
    };
    let mut addresses = BTreeSet::new();
    for (i, a) in items(child(obj, "status"), "addresses").iter().enumerate() {
        let (ty, address) = (str_of(a, "type"), str_of(a, "address"));
        if !addresses.insert((ty, address)) {
            causes.push(duplicate(
                format!("status.addresses[{i}]"),
                &format!("core.NodeAddress{{Type:{}, Address:{}}}", q(ty), q(address)),
            ));
        }
    }
    let old_spec = child(old, "spec");
    let (new_cidrs, old_cidrs) = (pod_cidrs(spec), pod_cidrs(old_spec));
    const CIDR_MSG: &str = "node updates may not change podCIDR except from \"\" to valid";
    if !old_cidrs.is_empty() {
        if old_cidrs.len() != new_cidrs.len() {
            causes.push(forbidden("spec.podCIDRs", CIDR_MSG));
        } else {
            for (a, b) in old_cidrs.iter().zip(&new_cidrs) {
                if a != b {
                    causes.push(forbidden("spec.podCIDRs", CIDR_MSG));
                }
            }
        }
    }
    let (provider, old_provider) = (str_of(spec, "providerID"), str_of(old_spec, "providerID"));
    if !old_provider.is_empty() && old_provider != provider {
        causes.push(forbidden(
            "spec.providerID",
            "node updates may not change providerID except from \"\" to valid",
        ));
    }
    if let Some(source) = spec.get("configSource").filter(|s| !s.is_null()) {
        causes.extend(node_config_source(source, "spec.configSource", false));
    }
    causes.extend(node_taints(items(spec, "taints"), "metadata.taints"));
    if str_of(spec, "externalID") != str_of(old_spec, "externalID") {
        causes.push(forbidden("spec.externalID", "may not be updated"));
    }
    causes
}

/// `validateNodeConfigSourceSpec` (the deprecated dynamic kubelet configuration), or with
/// `in_status` `validateNodeConfigSourceStatus` (of `status.config`'s sources, which carry the
/// ConfigMap's `uid` and `resourceVersion`).
pub(super) fn node_config_source(source: &Value, path: &str, in_status: bool) -> Vec<Cause> {
    let mut causes = Vec::new();
    let Some(cm) = source.get("configMap").filter(|c| !c.is_null()) else {
        causes.push(invalid(
            path,
            "core.NodeConfigSource{ConfigMap:(*core.ConfigMapNodeConfigSource)(nil)}",
            "exactly one reference subfield must be non-nil",
        ));
        return causes;
    };
    let p = format!("{path}.configMap");
    for field in ["uid", "resourceVersion"] {
        match (in_status, str_of(cm, field).is_empty()) {
            (true, true) => causes.push(required(
                format!("{p}.{field}"),
                &format!("{field} must be set in status"),
            )),
            (false, false) => causes.push(forbidden(
                format!("{p}.{field}"),
                &format!("{field} must not be set in spec"),
            )),
            _ => {}
        }
    }
    for (field, rule, msg) in [
        ("namespace", NameRule::Label, "namespace must be set"),
        ("name", NameRule::Subdomain, "name must be set"),
    ] {
        let v = str_of(cm, field);
        if v.is_empty() {
            causes.push(required(format!("{p}.{field}"), msg));
        } else {
            for m in super::validate_name(rule, v) {
                causes.push(invalid(format!("{p}.{field}"), &q(v), &m));
            }
        }
    }
    let key = str_of(cm, "kubeletConfigKey");
    if key.is_empty() {
        causes.push(required(
            format!("{p}.kubeletConfigKey"),
            "kubeletConfigKey must be set",
        ));
    } else {
        for m in super::core::config_key_problems(key) {
            causes.push(invalid(format!("{p}.kubeletConfigKey"), &q(key), &m));
        }
    }
    causes
}

// ---- LimitRanges ----------------------------------------------------------------------------

/// `ValidateLimitRange`.
fn limit_range(obj: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let mut types = BTreeSet::new();
    for (i, item) in items(child(obj, "spec"), "limits").iter().enumerate() {
        let p = format!("spec.limits[{i}]");
        let ty = str_of(item, "type");
        let type_path = format!("{p}.type");
        let errs = qualified_name_problems(ty);
        if !errs.is_empty() {
            causes.extend(errs.iter().map(|m| invalid(&type_path, &q(ty), m)));
        } else if !ty.contains('/') && !["Pod", "Container", "PersistentVolumeClaim"].contains(&ty)
        {
            causes.push(invalid(
                &type_path,
                &q(ty),
                "must be a standard limit type or fully qualified",
            ));
        }
        if !types.insert(ty) {
            causes.push(duplicate(&type_path, &q(ty)));
        }
        let name_check = |name: &str, path: &str| {
            if matches!(ty, "Pod" | "Container") {
                container_resource_name(name, path)
            } else {
                resource_name(name, path)
            }
        };
        let mut keys = BTreeSet::new();
        let mut list = |field: &str, causes: &mut Vec<Cause>| {
            for (k, _) in obj_of(item, field).into_iter().flatten() {
                causes.extend(name_check(k, &format!("{p}.{field}[{k}]")));
                keys.insert(k.clone());
            }
        };
        list("max", &mut causes);
        list("min", &mut causes);
        if ty == "Pod" {
            for field in ["default", "defaultRequest"] {
                if obj_of(item, field).is_some_and(|m| !m.is_empty()) {
                    causes.push(forbidden(
                        format!("{p}.{field}"),
                        "may not be specified when `type` is 'Pod'",
                    ));
                }
            }
        } else {
            list("default", &mut causes);
            list("defaultRequest", &mut causes);
        }
        if ty == "PersistentVolumeClaim" {
            let has = |f: &str| obj_of(item, f).is_some_and(|m| m.contains_key("storage"));
            if !has("min") && !has("max") {
                causes.push(required(
                    format!("{p}.limits"),
                    "either minimum or maximum storage value is required, but neither was provided",
                ));
            }
        }
        list("maxLimitRequestRatio", &mut causes);
        for k in &keys {
            causes.extend(limit_bounds(item, ty, k, &p));
        }
    }
    causes
}

/// The comparisons of one resource of a LimitRange item.
fn limit_bounds(item: &Value, ty: &str, k: &str, p: &str) -> Vec<Cause> {
    let get = |field: &str| {
        if ty == "Pod" && matches!(field, "default" | "defaultRequest") {
            return None;
        }
        obj_of(item, field)
            .and_then(|m| m.get(k))
            .and_then(GoQuantity::parse)
    };
    let (min, max, def, req, ratio) = (
        get("min"),
        get("max"),
        get("default"),
        get("defaultRequest"),
        get("maxLimitRequestRatio"),
    );
    let cmp = |a: &GoQuantity, b: &GoQuantity| a.milli_value().cmp(&b.milli_value());
    let s = GoQuantity::canonical;
    let mut causes = Vec::new();
    let mut push = |field: &str, shown: &GoQuantity, detail: String| {
        causes.push(invalid(
            format!("{p}.{field}[{k}]"),
            &shown.go_struct(true),
            &detail,
        ));
    };
    // (greater name, greater, lesser name, lesser, field reported, value shown): the value
    // named first may not exceed the second.
    let orderings = [
        ("min", &min, "max", &max, "min", &min),
        ("min", &min, "default request", &req, "defaultRequest", &req),
        ("default request", &req, "max", &max, "defaultRequest", &req),
        (
            "default request",
            &req,
            "default limit",
            &def,
            "defaultRequest",
            &req,
        ),
        ("min", &min, "default", &def, "default", &min),
        ("default", &def, "max", &max, "default", &max),
    ];
    for (a_name, a, b_name, b, field, shown) in orderings {
        if let (Some(a), Some(b), Some(shown)) = (a, b, shown)
            && cmp(a, b) == std::cmp::Ordering::Greater
        {
            push(
                field,
                shown,
                format!(
                    "{a_name} value {} is greater than {b_name} value {}",
                    s(a),
                    s(b)
                ),
            );
        }
    }
    if let Some(ratio) = &ratio {
        if ratio.milli_value() < 1000 {
            push(
                "maxLimitRequestRatio",
                ratio,
                format!("ratio {} is less than 1", s(ratio)),
            );
        }
        if let (Some(min), Some(max)) = (&min, &max) {
            // Upstream compares in milli-units when they fit, else in whole units.
            const MAX_MILLI: i128 = (i64::MAX / 1000) as i128;
            let (r, lo, hi) = if ratio.int_value() < MAX_MILLI
                && min.int_value() < MAX_MILLI
                && max.int_value() < MAX_MILLI
            {
                (
                    ratio.milli_value() as f64 / 1000.0,
                    min.milli_value(),
                    max.milli_value(),
                )
            } else {
                (ratio.int_value() as f64, min.int_value(), max.int_value())
            };
            let limit = hi as f64 / lo as f64;
            if r > limit {
                push(
                    "maxLimitRequestRatio",
                    ratio,
                    format!("ratio {} is greater than max/min = {limit:.6}", s(ratio)),
                );
            }
        }
    }
    if !overcommit_allowed(k)
        && let (Some(def), Some(req)) = (&def, &req)
        && cmp(def, req) != std::cmp::Ordering::Equal
    {
        push(
            "defaultRequest",
            req,
            format!(
                "default value {} must equal to defaultRequest value {} in {k}",
                s(def),
                s(req)
            ),
        );
    }
    causes
}

// ---- ResourceQuotas -------------------------------------------------------------------------

const QUOTA_SCOPES: &[&str] = &[
    "Terminating",
    "NotTerminating",
    "BestEffort",
    "NotBestEffort",
    "PriorityClass",
    "CrossNamespacePodAffinity",
];

/// `IsResourceQuotaScopeValidForResource`.
fn scope_valid_for(scope: &str, resource: &str) -> bool {
    const COMPUTE: &[&str] = &[
        "cpu",
        "memory",
        "limits.cpu",
        "limits.memory",
        "requests.cpu",
        "requests.memory",
    ];
    match scope {
        "Terminating"
        | "NotTerminating"
        | "NotBestEffort"
        | "PriorityClass"
        | "CrossNamespacePodAffinity" => resource == "pods" || COMPUTE.contains(&resource),
        "BestEffort" => resource == "pods",
        _ => true,
    }
}

fn go_scopes(spec: &Value) -> String {
    go_strings(
        spec.get("scopes").filter(|v| !v.is_null()),
        "core.ResourceQuotaScope",
    )
}

/// Go's `%#v` of a `core.ScopeSelector`.
fn go_scope_selector(sel: &Value) -> String {
    let reqs: Vec<String> = items(sel, "matchExpressions")
        .iter()
        .map(|r| {
            format!(
                "core.ScopedResourceSelectorRequirement{{ScopeName:{}, Operator:{}, Values:{}}}",
                q(str_of(r, "scopeName")),
                q(str_of(r, "operator")),
                go_strings(r.get("values").filter(|v| !v.is_null()), "string")
            )
        })
        .collect();
    let list = if sel.get("matchExpressions").is_some_and(|v| !v.is_null()) {
        format!(
            "[]core.ScopedResourceSelectorRequirement{{{}}}",
            reqs.join(", ")
        )
    } else {
        "[]core.ScopedResourceSelectorRequirement(nil)".into()
    };
    format!("core.ScopeSelector{{MatchExpressions:{list}}}")
}

fn conflicting(scopes: &BTreeSet<&str>) -> usize {
    [
        ("BestEffort", "NotBestEffort"),
        ("Terminating", "NotTerminating"),
    ]
    .iter()
    .filter(|(a, b)| scopes.contains(a) && scopes.contains(b))
    .count()
}

/// `ValidateResourceQuotaSpec` (create and update) and the scopes' immutability.
fn resource_quota(obj: &Value, old: Option<&Value>) -> Vec<Cause> {
    let spec = child(obj, "spec");
    let mut causes = Vec::new();
    let hard: std::collections::BTreeMap<&String, &Value> =
        obj_of(spec, "hard").into_iter().flatten().collect();
    for (k, v) in &hard {
        let p = format!("spec.hard[{k}]");
        causes.extend(quota_resource_name(k, &p));
        causes.extend(resource_quantity_value(k, v, &p));
    }
    let hard_names: BTreeSet<&str> = hard.keys().map(|k| k.as_str()).collect();
    let scopes: Vec<&str> = items(spec, "scopes")
        .iter()
        .map(|s| s.as_str().unwrap_or(""))
        .collect();
    if !scopes.is_empty() {
        let shown = go_scopes(spec);
        for scope in &scopes {
            if !QUOTA_SCOPES.contains(scope) {
                causes.push(invalid("spec.scopes", &shown, "unsupported scope"));
            }
            for k in &hard_names {
                if is_standard_quota_resource(k) && !scope_valid_for(scope, k) {
                    causes.push(invalid(
                        "spec.scopes",
                        &shown,
                        "unsupported scope applied to resource",
                    ));
                }
            }
        }
        let set: BTreeSet<&str> = scopes.iter().copied().collect();
        for _ in 0..conflicting(&set) {
            causes.push(invalid("spec.scopes", &shown, "conflicting scopes"));
        }
    }
    if let Some(sel) = spec.get("scopeSelector").filter(|s| !s.is_null()) {
        let p = "spec.scopeSelector.matchExpressions";
        let mut set = BTreeSet::new();
        for r in items(sel, "matchExpressions") {
            let scope = str_of(r, "scopeName");
            let op = str_of(r, "operator");
            if !QUOTA_SCOPES.contains(&scope) {
                causes.push(invalid(
                    format!("{p}.scopeName"),
                    &q(scope),
                    "unsupported scope",
                ));
            }
            for k in &hard_names {
                if is_standard_quota_resource(k) && !scope_valid_for(scope, k) {
                    causes.push(invalid(
                        p,
                        &go_scope_selector(sel),
                        "unsupported scope applied to resource",
                    ));
                }
            }
            if matches!(
                scope,
                "BestEffort"
                    | "NotBestEffort"
                    | "Terminating"
                    | "NotTerminating"
                    | "CrossNamespacePodAffinity"
            ) && op != "Exists"
            {
                causes.push(invalid(
                    format!("{p}.operator"),
                    &q(op),
                    "must be 'Exists' when scope is any of ResourceQuotaScopeTerminating, \
                     ResourceQuotaScopeNotTerminating, ResourceQuotaScopeBestEffort, \
                     ResourceQuotaScopeNotBestEffort or ResourceQuotaScopeCrossNamespacePodAffinity",
                ));
            }
            let values = items(r, "values");
            match op {
                "In" | "NotIn" => {
                    if values.is_empty() {
                        causes.push(required(
                            format!("{p}.values"),
                            "must be at least one value when `operator` is 'In' or 'NotIn' for \
                             scope selector",
                        ));
                    }
                }
                "Exists" | "DoesNotExist" => {
                    if !values.is_empty() {
                        causes.push(invalid(
                            format!("{p}.values"),
                            &go_strings(r.get("values"), "string"),
                            "must be no value when `operator` is 'Exist' or 'DoesNotExist' for \
                             scope selector",
                        ));
                    }
                }
                _ => causes.push(invalid(
                    format!("{p}.operator"),
                    &q(op),
                    "not a valid selector operator",
                )),
            }
            set.insert(scope);
        }
        for _ in 0..conflicting(&set) {
            causes.push(invalid(p, &go_scopes(spec), "conflicting scopes"));
        }
    }
    if let Some(old) = old {
        let set = |v: &Value| -> BTreeSet<String> {
            items(child(v, "spec"), "scopes")
                .iter()
                .map(|s| s.as_str().unwrap_or("").to_string())
                .collect()
        };
        if set(obj) != set(old) {
            causes.push(immutable("spec.scopes", &go_scopes(spec)));
        }
    }
    causes
}

// ---- PersistentVolumes ----------------------------------------------------------------------

const ACCESS_MODES: &[&str] = &[
    "ReadOnlyMany",
    "ReadWriteMany",
    "ReadWriteOnce",
    "ReadWriteOncePod",
];

/// The volume sources of a PersistentVolume, in the order upstream checks them.
const PV_SOURCES: &[&str] = &[
    "hostPath",
    "gcePersistentDisk",
    "awsElasticBlockStore",
    "glusterfs",
    "flocker",
    "nfs",
    "rbd",
    "quobyte",
    "cephfs",
    "iscsi",
    "cinder",
    "fc",
    "flexVolume",
    "azureFile",
    "vsphereVolume",
    "photonPersistentDisk",
    "portworxVolume",
    "azureDisk",
    "scaleIO",
    "local",
    "storageos",
    "csi",
];

/// Upstream's path of a source's errors (`gcePersistentDisk` is checked as `persistentDisk`).
fn source_path(source: &str) -> &str {
    match source {
        "gcePersistentDisk" => "persistentDisk",
        s => s,
    }
}

fn no_backsteps(path_value: &str, path: &str) -> Vec<Cause> {
    if path_value.split(['/', '\\']).any(|p| p == "..") {
        vec![invalid(path, &q(path_value), "must not contain '..'")]
    } else {
        Vec::new()
    }
}

/// The checks of the common sources' own fields.
fn pv_source(name: &str, src: &Value, path: &str) -> Vec<Cause> {
    let mut causes = Vec::new();
    let req = |causes: &mut Vec<Cause>, field: &str| {
        if str_of(src, field).is_empty() {
            causes.push(required(format!("{path}.{field}"), ""));
            true
        } else {
            false
        }
    };
    match name {
        // (`req` records a missing path; the rest is checked only with one.)
        "hostPath" if !req(&mut causes, "path") => {
            causes.extend(no_backsteps(str_of(src, "path"), &format!("{path}.path")));
            const TYPES: &[&str] = &[
                "",
                "BlockDevice",
                "CharDevice",
                "Directory",
                "DirectoryOrCreate",
                "File",
                "FileOrCreate",
                "Socket",
            ];
            if let Some(t) = src.get("type").and_then(Value::as_str)
                && !TYPES.contains(&t)
            {
                causes.push(not_supported(format!("{path}.type"), &q(t), TYPES));
            }
        }
        "local" if !req(&mut causes, "path") => {
            causes.extend(no_backsteps(str_of(src, "path"), &format!("{path}.path")));
        }
        "nfs" => {
            req(&mut causes, "server");
            req(&mut causes, "path");
            let p = str_of(src, "path");
            if !p.starts_with('/') {
                causes.push(invalid(
                    format!("{path}.path"),
                    &q(p),
                    "must be an absolute path",
                ));
            }
        }
        "csi" => {
            if !req(&mut causes, "driver") {
                let driver = str_of(src, "driver");
                if driver.len() > 63 {
                    causes.push(super::too_long(format!("{path}.driver"), 63));
                }
                for m in dns_problems(NameRule::Subdomain, &driver.to_lowercase()) {
                    causes.push(invalid(format!("{path}.driver"), &q(driver), &m));
                }
            }
            req(&mut causes, "volumeHandle");
        }
        _ => {}
    }
    causes
}

/// `ValidatePersistentVolume` (and `...Update` with `old`).
fn persistent_volume(obj: &Value, old: Option<&Value>) -> Vec<Cause> {
    let spec = child(obj, "spec");
    let mut causes = Vec::new();
    let modes = items(spec, "accessModes");
    if modes.is_empty() {
        causes.push(required("spec.accessModes", ""));
    }
    let (mut once_pod, mut other) = (false, false);
    for m in modes {
        let m = m.as_str().unwrap_or("");
        if !ACCESS_MODES.contains(&m) {
            causes.push(not_supported("spec.accessModes", &q(m), ACCESS_MODES));
        } else if m == "ReadWriteOncePod" {
            once_pod = true;
        } else {
            other = true;
        }
    }
    if once_pod && other {
        causes.push(forbidden(
            "spec.accessModes",
            "may not use ReadWriteOncePod with other access modes",
        ));
    }
    let capacity = obj_of(spec, "capacity");
    if capacity.is_none_or(|c| c.is_empty()) {
        causes.push(required("spec.capacity", ""));
    }
    if capacity.is_none_or(|c| !c.contains_key("storage") || c.len() > 1) {
        causes.push(not_supported(
            "spec.capacity",
            &go_resource_list(spec.get("capacity")),
            &["storage"],
        ));
    }
    let sorted: std::collections::BTreeMap<&String, &Value> =
        capacity.into_iter().flatten().collect();
    for (k, v) in sorted {
        let p = format!("spec.capacity[{k}]");
        if let Some(qty) = GoQuantity::parse(v) {
            if qty.int_value() < 0 {
                causes.push(invalid(
                    &p,
                    &qty.int_value().to_string(),
                    "must be a valid resource quantity",
                ));
            }
            if qty.value <= 0 {
                causes.push(invalid(
                    &p,
                    &q(&qty.canonical()),
                    "must be greater than zero",
                ));
            }
        }
    }
    let policy = str_of(spec, "persistentVolumeReclaimPolicy");
    const POLICIES: &[&str] = &["Delete", "Recycle", "Retain"];
    if !policy.is_empty() && !POLICIES.contains(&policy) {
        causes.push(not_supported(
            "spec.persistentVolumeReclaimPolicy",
            &q(policy),
            POLICIES,
        ));
    }
    let affinity = spec.get("nodeAffinity").filter(|a| !a.is_null());
    if let Some(a) = affinity {
        match a.get("required").filter(|r| !r.is_null()) {
            Some(r) => causes.extend(super::core::node_selector(r, "spec.nodeAffinity.required")),
            None => causes.push(required(
                "spec.nodeAffinity.required",
                "must specify required node constraints",
            )),
        }
    }
    let mut count = 0;
    for source in PV_SOURCES {
        let Some(src) = spec.get(*source).filter(|s| !s.is_null()) else {
            continue;
        };
        // Upstream counts flexVolume without checking for an earlier source.
        if count > 0 && *source != "flexVolume" {
            causes.push(forbidden(
                format!("spec.{source}"),
                "may not specify more than 1 volume type",
            ));
            continue;
        }
        count += 1;
        causes.extend(pv_source(
            source,
            src,
            &format!("spec.{}", source_path(source)),
        ));
        if *source == "local" && affinity.is_none() {
            causes.push(required(
                "spec.nodeAffinity",
                "Local volume requires node affinity",
            ));
        }
    }
    if count == 0 {
        causes.push(required("spec", "must specify a volume type"));
    }
    let host_path = str_of(child(spec, "hostPath"), "path");
    if is_set(spec, "hostPath")
        && policy == "Recycle"
        && host_path.trim_end_matches('/').is_empty()
        && !host_path.is_empty()
    {
        causes.push(forbidden(
            "spec.persistentVolumeReclaimPolicy",
            "may not be 'recycle' for a hostPath mount of '/'",
        ));
    }
    let class = str_of(spec, "storageClassName");
    if !class.is_empty() {
        for m in dns_problems(NameRule::Subdomain, class) {
            causes.push(invalid("spec.storageClassName", &q(class), &m));
        }
    }
    if let Some(mode) = spec.get("volumeMode").and_then(Value::as_str)
        && !["Block", "Filesystem"].contains(&mode)
    {
        causes.push(not_supported(
            "spec.volumeMode",
            &q(mode),
            &["Block", "Filesystem"],
        ));
    }
    let Some(old) = old else { return causes };
    let old_spec = child(old, "spec");
    let source_of = |spec: &Value, keep_expand_ref: bool| -> Value {
        let mut m = serde_json::Map::new();
        for s in PV_SOURCES {
            if let Some(v) = spec.get(*s).filter(|v| !v.is_null()) {
                m.insert((*s).to_string(), v.clone());
            }
        }
        if !keep_expand_ref && let Some(csi) = m.get_mut("csi").and_then(Value::as_object_mut) {
            csi.remove("controllerExpandSecretRef");
        }
        super::core::normalized(&Value::Object(m))
    };
    let old_had_ref = is_set(child(old_spec, "csi"), "controllerExpandSecretRef");
    let (new_source, old_source) = (source_of(spec, old_had_ref), source_of(old_spec, true));
    if new_source != old_source {
        let mut diff = Vec::new();
        super::core::json_diff("", &old_source, &new_source, &mut diff);
        causes.push(forbidden(
            "spec.persistentvolumesource",
            &format!(
                "spec.persistentvolumesource is immutable after creation\n{}",
                diff.join("\n")
            ),
        ));
    }
    let mode = |v: &Value| {
        v.get("volumeMode")
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    if mode(spec) != mode(old_spec) {
        causes.push(immutable(
            "volumeMode",
            &mode(spec).map_or_else(|| "null".into(), |m| q(&m)),
        ));
    }
    if is_set(old_spec, "nodeAffinity")
        && !same(child(spec, "nodeAffinity"), child(old_spec, "nodeAffinity"))
    {
        causes.push(immutable(
            "nodeAffinity",
            &child(spec, "nodeAffinity").to_string(),
        ));
    }
    if child(spec, "volumeAttributesClassName") != child(old_spec, "volumeAttributesClassName") {
        causes.push(forbidden(
            "spec.volumeAttributesClassName",
            "update is forbidden when the VolumeAttributesClass feature gate is disabled",
        ));
    }
    causes
}

// ---- PersistentVolumeClaim updates ----------------------------------------------------------

const BETA_CLASS: &str = "volume.beta.kubernetes.io/storage-class";

/// A claim spec with its storage quantities written canonically (upstream compares them by
/// value).
fn comparable_claim_spec(spec: &Value) -> Value {
    let mut spec = super::core::normalized(spec);
    for list in ["requests", "limits"] {
        if let Some(m) = spec
            .get_mut("resources")
            .and_then(|r| r.get_mut(list))
            .and_then(Value::as_object_mut)
        {
            for v in m.values_mut() {
                if let Some(qty) = GoQuantity::parse(v) {
                    *v = Value::String(qty.canonical());
                }
            }
        }
    }
    spec
}

fn set_field(v: &mut Value, field: &str, value: Option<Value>) {
    if let Some(o) = v.as_object_mut() {
        match value {
            Some(x) if !x.is_null() => o.insert(field.to_string(), x),
            _ => o.remove(field),
        };
    }
}

/// `ValidatePersistentVolumeClaimUpdate` (the spec's own rules are `core`'s).
fn claim_update(obj: &Value, old: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let (spec, old_spec) = (child(obj, "spec"), child(old, "spec"));
    let mut new_clone = comparable_claim_spec(spec);
    let mut old_clone = comparable_claim_spec(old_spec);
    if str_of(old_spec, "volumeName").is_empty() {
        set_field(
            &mut old_clone,
            "volumeName",
            spec.get("volumeName").cloned(),
        );
    }
    let annotation = |v: &Value| {
        child(child(v, "metadata"), "annotations")
            .get(BETA_CLASS)
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let (new_ann, old_ann) = (annotation(obj), annotation(old));
    let class = |v: &Value| {
        v.get("storageClassName")
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let (new_class, old_class) = (class(spec), class(old_spec));
    let from_annotation = old_ann.is_some()
        && old_class.is_none()
        && new_class.is_some()
        && new_class == old_ann
        && (new_ann.is_none() || new_ann == old_ann);
    if from_annotation {
        set_field(&mut new_clone, "storageClassName", None);
    } else {
        if new_ann != old_ann {
            causes.push(immutable(
                format!("metadata.annotations.{BETA_CLASS}").as_str(),
                &q(new_ann.as_deref().unwrap_or("")),
            ));
        }
        let from_nil = old_class.is_none()
            && new_class.as_deref().is_some_and(|c| !c.is_empty())
            && (old_ann.is_none() || new_class == old_ann);
        if from_nil {
            set_field(&mut new_clone, "storageClassName", None);
        }
    }
    let bound = str_of(child(obj, "status"), "phase") == "Bound";
    let storage = |v: &Value| {
        child(child(child(v, "spec"), "resources"), "requests")
            .get("storage")
            .and_then(GoQuantity::parse)
    };
    if bound {
        if let Some(req) = new_clone
            .get_mut("resources")
            .and_then(|r| r.get_mut("requests"))
            .and_then(Value::as_object_mut)
        {
            match old_clone.pointer("/resources/requests/storage").cloned() {
                Some(s) => req.insert("storage".into(), s),
                None => req.remove("storage"),
            };
        }
        if is_set(&new_clone, "volumeAttributesClassName") {
            let v = old_clone.get("volumeAttributesClassName").cloned();
            set_field(&mut new_clone, "volumeAttributesClassName", v);
        }
    }
    if new_clone != old_clone {
        let mut diff = Vec::new();
        super::core::json_diff("", &old_clone, &new_clone, &mut diff);
        causes.push(forbidden(
            "spec",
            &format!(
                "spec is immutable after creation except resources.requests and \
                 volumeAttributesClassName for bound claims\n{}",
                diff.join("\n")
            ),
        ));
    }
    let milli = |q: Option<GoQuantity>| q.map_or(0, |q| q.milli_value());
    let (new_size, old_size) = (milli(storage(obj)), milli(storage(old)));
    let status_size = milli(
        child(child(old, "status"), "capacity")
            .get("storage")
            .and_then(GoQuantity::parse),
    );
    // RecoverVolumeExpansionFailure (on in v1.33): down to above the recorded capacity.
    if new_size < old_size && new_size <= status_size {
        causes.push(forbidden(
            "spec.resources.requests.storage",
            "field can not be less than status.capacity",
        ));
    }
    let mode = |v: &Value| {
        v.get("volumeMode")
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    if mode(spec) != mode(old_spec) {
        causes.push(immutable(
            "volumeMode",
            &mode(spec).map_or_else(|| "null".into(), |m| q(&m)),
        ));
    }
    if child(spec, "volumeAttributesClassName") != child(old_spec, "volumeAttributesClassName") {
        causes.push(forbidden(
            "spec.volumeAttributesClassName",
            "update is forbidden when the VolumeAttributesClass feature gate is disabled",
        ));
    }
    causes
}

// ---- ReplicationControllers -----------------------------------------------------------------

/// `ValidateReplicationControllerSpec` without the template's own rules (`core`).
fn replication_controller(obj: &Value) -> Vec<Cause> {
    let spec = child(obj, "spec");
    let mut causes = Vec::new();
    let min_ready = int_of(spec, "minReadySeconds");
    if min_ready < 0 {
        causes.push(invalid(
            "spec.minReadySeconds",
            &min_ready.to_string(),
            "must be greater than or equal to 0",
        ));
    }
    let template = spec.get("template").filter(|t| !t.is_null());
    let labels = template.and_then(|t| child(t, "metadata").get("labels"));
    // Defaulting (`defaults.rs`) has given a controller without a selector its template's
    // labels, as upstream's.
    let selector = obj_of(spec, "selector").filter(|s| !s.is_empty());
    if selector.is_none() {
        causes.push(required("spec.selector", ""));
    }
    let replicas = int_of(spec, "replicas");
    if replicas < 0 {
        causes.push(invalid(
            "spec.replicas",
            &replicas.to_string(),
            "must be greater than or equal to 0",
        ));
    }
    if let (Some(_), Some(selector)) = (template, selector) {
        let label_map = labels.and_then(Value::as_object);
        let matches = selector
            .iter()
            .all(|(k, v)| label_map.and_then(|l| l.get(k)) == Some(v));
        if !matches {
            causes.push(invalid(
                "spec.template.metadata.labels",
                &go_string_map(labels),
                "`selector` does not match template `labels`",
            ));
        }
    }
    causes
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    use crate::status::cause_lines as fields;

    #[test]
    fn quantities_print_as_go() {
        let q = |s: &str| GoQuantity::parse(&json!(s)).expect("quantity");
        assert_eq!(
            q("500m").go_struct(false),
            "resource.Quantity{i:resource.int64Amount{value:500, scale:-3}, \
             d:resource.infDecAmount{Dec:(*inf.Dec)(nil)}, s:\"500m\", Format:\"DecimalSI\"}"
        );
        assert_eq!(
            q("2Gi").go_struct(false),
            "resource.Quantity{i:resource.int64Amount{value:2147483648, scale:0}, \
             d:resource.infDecAmount{Dec:(*inf.Dec)(nil)}, s:\"2Gi\", Format:\"BinarySI\"}"
        );
        assert!(q("1.5").go_struct(false).contains("value:15, scale:-1}"));
        assert!(q("1.5").go_struct(false).contains("s:\"\""));
        assert!(q("0").go_struct(false).contains("s:\"0\""));
        assert_eq!(q("1000").canonical(), "1k");
        assert_eq!(q("1024Mi").canonical(), "1Gi");
        assert_eq!(q("100Mi").canonical(), "100Mi");
        assert_eq!(q("0.5").canonical(), "500m");
        assert_eq!(q("512").canonical(), "512");
        assert_eq!(q("1e3").canonical(), "1e3");
        assert_eq!(q("-1").canonical(), "-1");
    }

    #[test]
    fn events_legacy_and_strict() {
        let ev = json!({"metadata": {"name": "e", "namespace": "default"},
            "involvedObject": {"kind": "Pod", "name": "p", "namespace": "other"}});
        assert_eq!(
            fields(&legacy_event(&ev)),
            vec![
                "involvedObject.namespace: Invalid value: \"other\": does not match event.namespace"
            ]
        );
        // A new-style event without its reporting fields.
        let new_style = json!({"metadata": {"name": "e", "namespace": "default"},
            "involvedObject": {"kind": "Pod", "name": "p", "namespace": "default"},
            "eventTime": "2026-01-01T00:00:00.000000Z", "reason": "R", "type": "Normal"});
        let got = fields(&legacy_event(&new_style));
        assert_eq!(got[0], "reportingController: Required value");
        assert!(
            got[1].starts_with(
                "reportingController: Invalid value: \"\": name part must be non-empty"
            )
        );
        assert_eq!(
            got[3..],
            [
                "reportingInstance: Required value",
                "action: Required value"
            ]
        );
        // Strict rules on events.k8s.io/v1 creates.
        let v1 = json!({"metadata": {"name": "Bad_Name", "namespace": "default"},
            "regarding": {"kind": "Pod", "name": "p", "namespace": "default"},
            "reportingController": "example.com/ctl", "reportingInstance": "i", "action": "A",
            "reason": "R", "type": "Info", "deprecatedCount": 3,
            "series": {"count": 1}});
        let core = (crate::conversion::EVENTS_V1.to_storage)(v1);
        let got = fields(&events_v1_create(&core));
        assert!(got[0].starts_with(
            "metadata.name: Invalid value: \"Bad_Name\": a lowercase RFC 1123 subdomain"
        ));
        assert_eq!(
            got[1..],
            [
                "series.count: Invalid value: \"\": should be at least 2",
                "series.lastObservedTime: Required value",
                "eventTime: Required value",
                "type: Invalid value: \"\": has invalid value: Info",
                "count: Invalid value: \"\": needs to be unset",
            ]
        );
    }

    #[test]
    fn events_v1_updates_change_only_the_series() {
        let old = json!({"metadata": {"name": "e", "namespace": "default"},
            "involvedObject": {"kind": "Pod", "name": "p", "namespace": "default"},
            "eventTime": "2026-01-01T00:00:00.000000Z", "reportingComponent": "ctl",
            "reportingInstance": "i", "action": "A", "reason": "R", "type": "Normal",
            "message": "m"});
        let mut ok = old.clone();
        ok["series"] = json!({"count": 2, "lastObservedTime": "2026-01-01T00:01:00.000000Z"});
        assert!(events_v1_update(&ok, &old).is_empty());
        let mut bad = old.clone();
        bad["message"] = json!("changed");
        bad["type"] = json!("Warning");
        bad["series"] = json!({"count": 1, "lastObservedTime": "2026-01-01T00:01:00.000000Z"});
        assert_eq!(
            fields(&events_v1_update(&bad, &old)),
            vec![
                "series.count: Invalid value: \"\": should be at least 2",
                "message: Invalid value: \"changed\": field is immutable",
                "type: Invalid value: \"Warning\": field is immutable",
            ]
        );
    }

    #[test]
    fn endpoints_addresses_and_ports() {
        let ep = json!({"subsets": [
            {"addresses": [{"ip": "127.0.0.1"}, {"ip": "10.0.0.300", "hostname": "Bad"}],
             "ports": [{"port": 0, "protocol": "HTTP"}, {"name": "b", "port": 80}]},
            {"ports": [{"port": 80}]},
        ]});
        let got = fields(&endpoints(&ep));
        assert_eq!(
            got[0],
            "subsets[0].addresses[0].ip: Invalid value: \"127.0.0.1\": may not be in the loopback range (127.0.0.0/8, ::1/128)"
        );
        assert_eq!(
            got[1],
            "subsets[0].addresses[1].ip: Invalid value: \"10.0.0.300\": must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"
        );
        assert!(got[2].starts_with(
            "subsets[0].addresses[1].hostname: Invalid value: \"Bad\": a lowercase RFC 1123 label"
        ));
        assert_eq!(
            got[3..],
            [
                "subsets[0].addresses[1].ip: Invalid value: \"10.0.0.300\": must be a valid IP address",
                "subsets[0].ports[0].name: Required value",
                "subsets[0].ports[0].port: Invalid value: 0: must be between 1 and 65535, inclusive",
                "subsets[0].ports[0].protocol: Unsupported value: \"HTTP\": supported values: \"SCTP\", \"TCP\", \"UDP\"",
                "subsets[1]: Required value: must specify `addresses` or `notReadyAddresses`",
            ]
        );
        let good = json!({"subsets": [{"addresses": [{"ip": "10.42.0.5", "nodeName": "node-1",
            "targetRef": {"kind": "Pod", "name": "web", "namespace": "default"}}],
            "notReadyAddresses": [{"ip": "fd00::5"}],
            "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}]});
        assert!(endpoints(&good).is_empty());
        assert_eq!(
            fields(&non_special_ip("169.254.1.1", "ip")),
            vec![
                "ip: Invalid value: \"169.254.1.1\": may not be in the link-local range (169.254.0.0/16, fe80::/10)"
            ]
        );
        assert_eq!(fields(&non_special_ip("224.0.0.1", "ip")).len(), 1);
        assert_eq!(fields(&non_special_ip("::", "ip")).len(), 1);
    }

    #[test]
    fn nodes_taints_cidrs_and_updates() {
        let node_obj = json!({"metadata": {"name": "n"}, "spec": {
            "podCIDRs": ["10.42.0.0/24", "10.43.0.0/24"],
            "taints": [{"key": "a", "effect": "NoSchedule"}, {"key": "a", "effect": "NoSchedule"},
                       {"key": "b", "value": "bad value", "effect": "Never"}]},
            "status": {"capacity": {"cpu": "-1", "pods": "1.5"}}});
        let got = fields(&node(&node_obj, None));
        assert_eq!(
            got,
            vec![
                "metadata.taints[1]: Duplicate value: core.Taint{Key:\"a\", Value:\"\", Effect:\"NoSchedule\", TimeAdded:(*v1.Time)(nil)}: taints must be unique by key and effect pair".to_string(),
                format!("metadata.taints[2].value: Invalid value: \"bad value\": {}", label_value_problems("bad value").join(";")),
                "metadata.taints[2].effect: Unsupported value: \"Never\": supported values: \"NoSchedule\", \"PreferNoSchedule\", \"NoExecute\"".to_string(),
                "status.capacity.cpu: Invalid value: \"-1\": must be greater than or equal to 0".to_string(),
                "status.capacity.pods: Invalid value: resource.Quantity{i:resource.int64Amount{value:15, scale:-1}, d:resource.infDecAmount{Dec:(*inf.Dec)(nil)}, s:\"\", Format:\"DecimalSI\"}: must be an integer".to_string(),
                "spec.podCIDRs: Invalid value: []string{\"10.42.0.0/24\", \"10.43.0.0/24\"}: may specify no more than one CIDR for each IP family".to_string(),
            ]
        );
        let old = json!({"spec": {"podCIDR": "10.42.0.0/24", "podCIDRs": ["10.42.0.0/24"], "providerID": "k3s://n"}});
        let new = json!({"spec": {"podCIDR": "10.42.1.0/24", "podCIDRs": ["10.42.1.0/24"], "providerID": "other://n",
            "configSource": {"configMap": {"name": "c", "namespace": "kube-system"}}}});
        assert_eq!(
            fields(&node(&new, Some(&old))),
            vec![
                "spec.podCIDRs: Forbidden: node updates may not change podCIDR except from \"\" to valid",
                "spec.providerID: Forbidden: node updates may not change providerID except from \"\" to valid",
                "spec.configSource.configMap.kubeletConfigKey: Required value: kubeletConfigKey must be set",
            ]
        );
        // Assigning a pod CIDR and a provider ID the first time is allowed.
        let fresh = json!({"spec": {}});
        let assigned = json!({"spec": {"podCIDR": "10.42.0.0/24", "podCIDRs": ["10.42.0.0/24", "fd00::/64"], "providerID": "k3s://n"}});
        assert!(node(&assigned, Some(&fresh)).is_empty());
        assert!(node(&assigned, None).is_empty());
    }

    #[test]
    fn limit_ranges() {
        let lr = json!({"spec": {"limits": [
            {"type": "Container", "min": {"cpu": "2"}, "max": {"cpu": "1"}, "default": {"cpu": "1"},
             "defaultRequest": {"cpu": "1"}, "maxLimitRequestRatio": {"cpu": "500m"}},
            {"type": "Pod", "default": {"memory": "1Gi"}, "max": {"pods": "1"}},
            {"type": "PersistentVolumeClaim"},
            {"type": "Container"},
            {"type": "Nodes"},
        ]}});
        let got = fields(&limit_range(&lr));
        let qs = |v: i64, s: &str| {
            format!(
                "resource.Quantity{{i:resource.int64Amount{{value:{v}, scale:0}}, d:resource.infDecAmount{{Dec:(*inf.Dec)(nil)}}, s:\"{s}\", Format:\"DecimalSI\"}}"
            )
        };
        let ratio = "resource.Quantity{i:resource.int64Amount{value:500, scale:-3}, d:resource.infDecAmount{Dec:(*inf.Dec)(nil)}, s:\"500m\", Format:\"DecimalSI\"}";
        assert_eq!(
            got,
            vec![
                format!("spec.limits[0].min[cpu]: Invalid value: {}: min value 2 is greater than max value 1", qs(2, "2")),
                format!("spec.limits[0].defaultRequest[cpu]: Invalid value: {}: min value 2 is greater than default request value 1", qs(1, "1")),
                format!("spec.limits[0].default[cpu]: Invalid value: {}: min value 2 is greater than default value 1", qs(2, "2")),
                format!("spec.limits[0].maxLimitRequestRatio[cpu]: Invalid value: {ratio}: ratio 500m is less than 1"),
                "spec.limits[1].max[pods]: Invalid value: pods: must be a standard resource for containers".into(),
                "spec.limits[1].default: Forbidden: may not be specified when `type` is 'Pod'".into(),
                "spec.limits[2].limits: Required value: either minimum or maximum storage value is required, but neither was provided".into(),
                "spec.limits[3].type: Duplicate value: \"Container\"".into(),
                "spec.limits[4].type: Invalid value: \"Nodes\": must be a standard limit type or fully qualified".into(),
            ]
        );
        let good = json!({"spec": {"limits": [{"type": "Container",
            "max": {"cpu": "2", "memory": "1Gi"}, "min": {"cpu": "100m", "memory": "64Mi"},
            "default": {"cpu": "500m", "memory": "512Mi"}, "defaultRequest": {"cpu": "200m", "memory": "128Mi"},
            "maxLimitRequestRatio": {"cpu": "10"}},
            {"type": "PersistentVolumeClaim", "max": {"storage": "10Gi"}, "min": {"storage": "1Gi"}}]}});
        assert_eq!(fields(&limit_range(&good)), Vec::<String>::new());
    }

    #[test]
    fn resource_quotas() {
        let rq = json!({"spec": {"hard": {"foo": "1", "storage": "1", "pods": "-1", "count/deployments.apps": "1.5", "cpu": "1"},
            "scopes": ["BestEffort", "NotBestEffort", "Bogus"],
            "scopeSelector": {"matchExpressions": [{"scopeName": "PriorityClass", "operator": "Exists", "values": ["high"]}]}}});
        let got = fields(&resource_quota(&rq, None));
        let scopes = "[]core.ResourceQuotaScope{\"BestEffort\", \"NotBestEffort\", \"Bogus\"}";
        assert_eq!(
            got,
            vec![
                "spec.hard[count/deployments.apps]: Invalid value: resource.Quantity{i:resource.int64Amount{value:15, scale:-1}, d:resource.infDecAmount{Dec:(*inf.Dec)(nil)}, s:\"\", Format:\"DecimalSI\"}: must be an integer".to_string(),
                "spec.hard[foo]: Invalid value: foo: must be a standard resource type or fully qualified".into(),
                "spec.hard[foo]: Invalid value: foo: must be a standard resource for quota".into(),
                "spec.hard[pods]: Invalid value: \"-1\": must be greater than or equal to 0".into(),
                "spec.hard[storage]: Invalid value: storage: must be a standard resource for quota".into(),
                format!("spec.scopes: Invalid value: {scopes}: unsupported scope applied to resource"),
                format!("spec.scopes: Invalid value: {scopes}: unsupported scope"),
                format!("spec.scopes: Invalid value: {scopes}: conflicting scopes"),
                "spec.scopeSelector.matchExpressions.values: Invalid value: []string{\"high\"}: must be no value when `operator` is 'Exist' or 'DoesNotExist' for scope selector".into(),
            ]
        );
        let good = json!({"spec": {"hard": {"pods": "10", "requests.cpu": "4", "limits.memory": "8Gi",
            "count/deployments.apps": "5", "requests.nvidia.com/gpu": "2"},
            "scopeSelector": {"matchExpressions": [{"scopeName": "PriorityClass", "operator": "In", "values": ["high"]}]}}});
        assert_eq!(fields(&resource_quota(&good, None)), Vec::<String>::new());
        let mut scoped = good.clone();
        scoped["spec"]["scopes"] = json!(["NotTerminating"]);
        assert_eq!(
            fields(&resource_quota(&scoped, Some(&good))),
            vec![
                "spec.scopes: Invalid value: []core.ResourceQuotaScope{\"NotTerminating\"}: field is immutable"
            ]
        );
    }

    #[test]
    fn persistent_volumes() {
        let pv = json!({"spec": {"accessModes": ["ReadWriteSometimes"], "capacity": {"storage": "0"},
            "persistentVolumeReclaimPolicy": "Keep", "hostPath": {"path": "/data/../etc"}, "nfs": {"server": "s", "path": "/x"},
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [{"key": "k", "operator": "In"}]}]}}}});
        let got = fields(&persistent_volume(&pv, None));
        assert_eq!(
            got,
            vec![
                "spec.accessModes: Unsupported value: \"ReadWriteSometimes\": supported values: \"ReadOnlyMany\", \"ReadWriteMany\", \"ReadWriteOnce\", \"ReadWriteOncePod\"",
                "spec.capacity[storage]: Invalid value: \"0\": must be greater than zero",
                "spec.persistentVolumeReclaimPolicy: Unsupported value: \"Keep\": supported values: \"Delete\", \"Recycle\", \"Retain\"",
                "spec.nodeAffinity.required.nodeSelectorTerms[0].matchExpressions[0].values: Required value: must be specified when `operator` is 'In' or 'NotIn'",
                "spec.hostPath.path: Invalid value: \"/data/../etc\": must not contain '..'",
                "spec.nfs: Forbidden: may not specify more than 1 volume type",
            ]
        );
        assert_eq!(
            fields(&persistent_volume(
                &json!({"spec": {"accessModes": ["ReadWriteOnce"]}}),
                None
            )),
            vec![
                "spec.capacity: Required value",
                "spec.capacity: Unsupported value: core.ResourceList(nil): supported values: \"storage\"",
                "spec: Required value: must specify a volume type",
            ]
        );
        let good = json!({"spec": {"accessModes": ["ReadWriteOnce"], "capacity": {"storage": "5Gi"},
            "persistentVolumeReclaimPolicy": "Retain", "volumeMode": "Filesystem", "storageClassName": "local-path",
            "local": {"path": "/mnt/disk"},
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": ["node-1"]}]}]}}}});
        assert!(persistent_volume(&good, None).is_empty());
        let mut moved = good.clone();
        moved["spec"]["local"]["path"] = json!("/mnt/other");
        moved["spec"]["volumeMode"] = json!("Block");
        moved["spec"]["persistentVolumeReclaimPolicy"] = json!("Delete");
        let got = fields(&persistent_volume(&moved, Some(&good)));
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(got[0].starts_with("spec.persistentvolumesource: Forbidden: spec.persistentvolumesource is immutable after creation\n"));
        assert_eq!(
            got[1],
            "volumeMode: Invalid value: \"Block\": field is immutable"
        );
    }

    #[test]
    fn claim_updates() {
        let old = json!({"spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}},
            "storageClassName": "local-path", "volumeMode": "Filesystem"},
            "status": {"phase": "Bound", "capacity": {"storage": "1Gi"}}});
        let mut bound = old.clone();
        bound["spec"]["volumeName"] = json!("pvc-1");
        assert!(
            claim_update(&bound, &old).is_empty(),
            "volumeName may be set once"
        );
        let mut grown = bound.clone();
        grown["spec"]["resources"]["requests"]["storage"] = json!("2Gi");
        assert!(claim_update(&grown, &bound).is_empty());
        let mut same_size = bound.clone();
        same_size["spec"]["resources"]["requests"]["storage"] = json!("1024Mi");
        assert!(claim_update(&same_size, &bound).is_empty());
        let mut shrunk = bound.clone();
        shrunk["spec"]["resources"]["requests"]["storage"] = json!("512Mi");
        assert_eq!(
            fields(&claim_update(&shrunk, &bound)),
            vec![
                "spec.resources.requests.storage: Forbidden: field can not be less than status.capacity"
            ]
        );
        let mut modes = bound.clone();
        modes["spec"]["accessModes"] = json!(["ReadWriteMany"]);
        let got = fields(&claim_update(&modes, &bound));
        assert_eq!(got.len(), 1);
        assert!(got[0].starts_with("spec: Forbidden: spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims\n"), "{got:?}");
        let mut pending = old.clone();
        pending["status"] = json!({"phase": "Pending"});
        let mut pending_grown = pending.clone();
        pending_grown["spec"]["resources"]["requests"]["storage"] = json!("2Gi");
        assert_eq!(
            claim_update(&pending_grown, &pending).len(),
            1,
            "only bound claims grow"
        );
    }

    #[test]
    fn replication_controllers() {
        let rc = json!({"spec": {"replicas": -1, "minReadySeconds": -2, "selector": {"app": "web"},
            "template": {"metadata": {"labels": {"app": "api"}}}}});
        assert_eq!(
            fields(&replication_controller(&rc)),
            vec![
                "spec.minReadySeconds: Invalid value: -2: must be greater than or equal to 0",
                "spec.replicas: Invalid value: -1: must be greater than or equal to 0",
                "spec.template.metadata.labels: Invalid value: map[string]string{\"app\":\"api\"}: `selector` does not match template `labels`",
            ]
        );
        let selected = json!({"spec": {"replicas": 1, "selector": {"app": "web"},
            "template": {"metadata": {"labels": {"app": "web"}}}}});
        assert!(replication_controller(&selected).is_empty());
        let none = json!({"spec": {"replicas": 1, "template": {"metadata": {}}}});
        assert_eq!(
            fields(&replication_controller(&none)),
            vec!["spec.selector: Required value"]
        );
    }
}
