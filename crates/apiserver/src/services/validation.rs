//! Upstream v1.33's `ValidateService` and `ValidateServiceUpdate`
//! (`pkg/apis/core/validation`) on the JSON of a defaulted Service, with upstream's field
//! paths and messages (including its quirks, such as the field `spec.LoadBalancerSourceRanges`).
//! Values in `Invalid value:` messages are written as Go's `%#v`/`%q` shows them.

use std::collections::BTreeSet;
use std::net::IpAddr;

use serde_json::Value;

use crate::status::Cause;
use crate::validation::{
    NameRule, dns_problems, duplicate, forbidden, invalid, label_value_problems, not_supported,
    port_name_problems, port_num_problems, q, qualified_name_problems, required,
};

const PROTOCOLS: &[&str] = &["SCTP", "TCP", "UDP"];
const SESSION_AFFINITIES: &[&str] = &["ClientIP", "None"];
const TYPES: &[&str] = &["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"];
const TRAFFIC_POLICIES: &[&str] = &["Cluster", "Local"];
const IP_FAMILIES: &[&str] = &["IPv4", "IPv6"];
const IP_FAMILY_POLICIES: &[&str] = &["PreferDualStack", "RequireDualStack", "SingleStack"];
/// Upstream's `MaxClientIPServiceAffinitySeconds`.
const MAX_AFFINITY_SECONDS: i64 = 86400;
const TOPOLOGY_MODE: &str = "service.kubernetes.io/topology-mode";
const TOPOLOGY_HINTS: &str = "service.kubernetes.io/topology-aware-hints";
const SOURCE_RANGES: &str = "service.beta.kubernetes.io/load-balancer-source-ranges";

/// A string list as Go's `%#v` shows a `[]<type>`.
pub(super) fn go_list(type_name: &str, items: Option<&[String]>) -> String {
    match items {
        None => format!("[]{type_name}(nil)"),
        Some(items) => {
            let list: Vec<String> = items.iter().map(|s| q(s)).collect();
            format!("[]{type_name}{{{}}}", list.join(", "))
        }
    }
}

/// An optional string field (a Go `*string`-like pointer) as `Invalid value:` shows it.
fn go_ptr(v: Option<&str>) -> String {
    v.map(q).unwrap_or_else(|| "null".into())
}

fn spec(obj: &Value) -> &Value {
    obj.get("spec").unwrap_or(&Value::Null)
}

pub(super) fn str_of<'a>(v: &'a Value, field: &str) -> Option<&'a str> {
    v.get(field).and_then(Value::as_str)
}

/// A string list field (`None` when absent or null).
pub(super) fn strings_of(v: &Value, field: &str) -> Option<Vec<String>> {
    v.get(field).and_then(Value::as_array).map(|a| {
        a.iter()
            .map(|s| s.as_str().unwrap_or_default().to_string())
            .collect()
    })
}

fn int_of(v: &Value, field: &str) -> i64 {
    v.get(field).and_then(Value::as_i64).unwrap_or(0)
}

fn set(v: &Value, field: &str) -> bool {
    v.get(field).is_some_and(|f| !f.is_null())
}

/// The service type (defaulted to `ClusterIP` before validation).
pub(super) fn type_of(obj: &Value) -> &str {
    str_of(spec(obj), "type").unwrap_or("")
}

/// Upstream's `isHeadlessService`: `clusterIPs` is exactly `["None"]`.
pub(super) fn is_headless(obj: &Value) -> bool {
    strings_of(spec(obj), "clusterIPs").is_some_and(|ips| ips.len() == 1 && ips[0] == "None")
}

/// Upstream's `ExternallyAccessible`: node ports, a load balancer, or external IPs.
pub(super) fn externally_accessible(obj: &Value) -> bool {
    match type_of(obj) {
        "LoadBalancer" | "NodePort" => true,
        "ClusterIP" => strings_of(spec(obj), "externalIPs").is_some_and(|ips| !ips.is_empty()),
        _ => false,
    }
}

/// Upstream's `NeedsHealthCheck`: a `LoadBalancer` with `externalTrafficPolicy: Local`.
pub(super) fn needs_health_check(obj: &Value) -> bool {
    type_of(obj) == "LoadBalancer" && str_of(spec(obj), "externalTrafficPolicy") == Some("Local")
}

/// The family of a well-formed IP.
pub(super) fn family_of(ip: &str) -> &'static str {
    if ip.contains(':') { "IPv6" } else { "IPv4" }
}

/// Upstream's `IsValidIP`, without the leading zeros `ParseIPSloppy` accepts in IPv4 octets:
/// the allocator, the IPAddress objects and the proxy read service addresses in their plain
/// form (a deliberate difference from v1.33's lenient legacy fields).
fn ip_causes(field: String, ip: &str) -> Vec<Cause> {
    if ip.parse::<IpAddr>().is_ok() {
        Vec::new()
    } else {
        vec![invalid(field, &q(ip), crate::validation::ip::IP_INVALID)]
    }
}

/// Upstream's `IsValidCIDR`, as strict as [`ip_causes`].
fn cidr_causes(field: String, cidr: &str) -> Vec<Cause> {
    let ok = cidr.split_once('/').is_some_and(|(ip, bits)| {
        ip.parse::<IpAddr>().is_ok_and(|ip| {
            let max = if ip.is_ipv4() { 32 } else { 128 };
            !bits.is_empty()
                && bits.bytes().all(|b| b.is_ascii_digit())
                && bits.parse::<u8>().is_ok_and(|b| b <= max)
        })
    });
    if ok {
        Vec::new()
    } else {
        vec![invalid(
            field,
            &q(cidr),
            crate::validation::ip::CIDR_INVALID,
        )]
    }
}

/// Upstream's `validateServicePort`.
fn port_causes(
    port: &Value,
    require_name: bool,
    names: &mut BTreeSet<String>,
    path: &str,
) -> Vec<Cause> {
    let mut causes = Vec::new();
    let name = str_of(port, "name").unwrap_or("");
    if require_name && name.is_empty() {
        causes.push(required(format!("{path}.name"), ""));
    } else if !name.is_empty() {
        for m in dns_problems(NameRule::Label, name) {
            causes.push(invalid(format!("{path}.name"), &q(name), &m));
        }
        if !names.insert(name.to_string()) {
            causes.push(duplicate(format!("{path}.name"), &q(name)));
        }
    }
    let number = int_of(port, "port");
    for m in port_num_problems(number) {
        causes.push(invalid(format!("{path}.port"), &number.to_string(), &m));
    }
    match str_of(port, "protocol").unwrap_or("") {
        "" => causes.push(required(format!("{path}.protocol"), "")),
        p if !PROTOCOLS.contains(&p) => {
            causes.push(not_supported(format!("{path}.protocol"), &q(p), PROTOCOLS))
        }
        _ => {}
    }
    // Defaulting gives an unset, 0 or "" target port the port's number.
    match port.get("targetPort") {
        Some(Value::String(s)) if !s.is_empty() => {
            for m in port_name_problems(s) {
                causes.push(invalid(format!("{path}.targetPort"), &q(s), &m));
            }
        }
        Some(Value::Number(n)) if n.as_i64() != Some(0) => {
            let n = n.as_i64().unwrap_or(-1);
            for m in port_num_problems(n) {
                causes.push(invalid(format!("{path}.targetPort"), &n.to_string(), &m));
            }
        }
        _ => {
            for m in port_num_problems(number) {
                causes.push(invalid(
                    format!("{path}.targetPort"),
                    &number.to_string(),
                    &m,
                ));
            }
        }
    }
    if let Some(app) = str_of(port, "appProtocol") {
        for m in qualified_name_problems(app) {
            causes.push(invalid(format!("{path}.appProtocol"), &q(app), &m));
        }
    }
    causes
}

/// A `(protocol, port)` key as upstream's `Duplicate value:` shows the `core.ServicePort`.
fn service_port_key(protocol: &str, port: i64) -> String {
    format!(
        "core.ServicePort{{Name:\"\", Protocol:{}, AppProtocol:(*string)(nil), Port:{port}, \
         TargetPort:intstr.IntOrString{{Type:0, IntVal:0, StrVal:\"\"}}, NodePort:0}}",
        q(protocol)
    )
}

/// Upstream's `validateClientIPAffinityConfig`.
fn client_ip_affinity_causes(config: Option<&Value>) -> Vec<Cause> {
    const DETAIL: &str = "when session affinity type is ClientIP";
    let path = "spec.sessionAffinityConfig";
    let Some(config) = config.filter(|c| !c.is_null()) else {
        return vec![Cause {
            message: format!("Required value: {DETAIL}"),
            ..required(path, "")
        }];
    };
    let Some(client_ip) = config.get("clientIP").filter(|c| !c.is_null()) else {
        return vec![Cause {
            message: format!("Required value: {DETAIL}"),
            ..required(format!("{path}.clientIP"), "")
        }];
    };
    let Some(timeout) = client_ip.get("timeoutSeconds").and_then(Value::as_i64) else {
        return vec![Cause {
            message: format!("Required value: {DETAIL}"),
            ..required(format!("{path}.clientIP.timeoutSeconds"), "")
        }];
    };
    if timeout <= 0 || timeout > MAX_AFFINITY_SECONDS {
        return vec![invalid(
            format!("{path}.clientIP.timeoutSeconds"),
            &timeout.to_string(),
            &format!("must be greater than 0 and less than {MAX_AFFINITY_SECONDS}"),
        )];
    }
    Vec::new()
}

/// Upstream's `ValidateServiceClusterIPsRelatedFields`: `clusterIP` and `clusterIPs` in sync,
/// supported and distinct families, a supported policy, valid IPs (`None` only alone), at most
/// one IP per family, IPs matching their families.
pub(super) fn cluster_ips_related(obj: &Value) -> Vec<Cause> {
    if type_of(obj) == "ExternalName" {
        return Vec::new();
    }
    let spec = spec(obj);
    let mut causes = Vec::new();
    let cluster_ip = str_of(spec, "clusterIP").unwrap_or("");
    let ips = strings_of(spec, "clusterIPs");
    let ips_shown = go_list("string", ips.as_deref());
    let ips = ips.unwrap_or_default();
    let families = strings_of(spec, "ipFamilies").unwrap_or_default();
    if !cluster_ip.is_empty() {
        if ips.is_empty() {
            causes.push(required("spec.clusterIPs", ""));
        } else if ips[0] != cluster_ip {
            causes.push(invalid(
                "spec.clusterIPs",
                &ips_shown,
                "first value must match `clusterIP`",
            ));
        }
    } else if !ips.is_empty() {
        causes.push(invalid(
            "spec.clusterIPs",
            &ips_shown,
            "must be empty when `clusterIP` is not specified",
        ));
    }
    let mut seen = BTreeSet::new();
    for (i, family) in families.iter().enumerate() {
        if !IP_FAMILIES.contains(&family.as_str()) {
            causes.push(not_supported(
                format!("spec.ipFamilies[{i}]"),
                &q(family),
                IP_FAMILIES,
            ));
        }
        if !seen.insert(family.clone()) {
            causes.push(duplicate(format!("spec.ipFamilies[{i}]"), &q(family)));
        }
    }
    if let Some(policy) = str_of(spec, "ipFamilyPolicy")
        && !IP_FAMILY_POLICIES.contains(&policy)
    {
        causes.push(not_supported(
            "spec.ipFamilyPolicy",
            &q(policy),
            IP_FAMILY_POLICIES,
        ));
    }
    let mut bad_ips = false;
    for (i, ip) in ips.iter().enumerate() {
        if i == 0 && ip == "None" {
            if ips.len() > 1 {
                bad_ips = true;
                causes.push(invalid(
                    "spec.clusterIPs",
                    &ips_shown,
                    "'None' must be the first and only value",
                ));
            }
            continue;
        }
        let found = ip_causes(format!("spec.clusterIPs[{i}]"), ip);
        bad_ips |= !found.is_empty();
        causes.extend(found);
    }
    if ips.len() > 2 {
        causes.push(invalid(
            "spec.clusterIPs",
            &ips_shown,
            "may only hold up to 2 values",
        ));
    }
    if bad_ips {
        return causes;
    }
    if ips.len() > 1 {
        let fams: BTreeSet<&str> = ips.iter().map(|ip| family_of(ip)).collect();
        if fams.len() != ips.len() {
            causes.push(invalid(
                "spec.clusterIPs",
                &ips_shown,
                "may specify no more than one IP for each IP family",
            ));
        }
    }
    if !is_headless(obj) {
        for (i, (ip, family)) in ips.iter().zip(&families).enumerate() {
            let actual = family_of(ip);
            if IP_FAMILIES.contains(&family.as_str()) && actual != family {
                causes.push(invalid(
                    format!("spec.clusterIPs[{i}]"),
                    &q(ip),
                    &format!("expected an {family} value as indicated by `ipFamilies[{i}]`"),
                ));
            }
        }
    }
    causes
}

/// Upstream's `ValidateService` on a defaulted Service (what create and update check),
/// without the metadata rules ([`object_meta`]).
pub(crate) fn validate(obj: &Value) -> Vec<Cause> {
    let spec = spec(obj);
    let ty = type_of(obj);
    let headless = is_headless(obj);
    let mut causes = Vec::new();
    let annotations = obj
        .pointer("/metadata/annotations")
        .cloned()
        .unwrap_or_default();
    if let (Some(mode), Some(hints)) = (
        str_of(&annotations, TOPOLOGY_MODE),
        str_of(&annotations, TOPOLOGY_HINTS),
    ) && mode != hints
    {
        causes.push(invalid(
            format!("metadata.annotations[{TOPOLOGY_MODE}]"),
            &q(mode),
            &format!("must match annotations[{TOPOLOGY_HINTS}] when both are specified"),
        ));
    }
    let ports: Vec<Value> = spec
        .get("ports")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if ports.is_empty() && !headless && ty != "ExternalName" {
        causes.push(required("spec.ports", ""));
    }
    match ty {
        "LoadBalancer" | "NodePort" if headless => causes.push(invalid(
            "spec.clusterIPs[0]",
            &q("None"),
            &format!("may not be set to 'None' for {ty} services"),
        )),
        "ExternalName" => {
            if strings_of(spec, "clusterIPs").is_some_and(|ips| !ips.is_empty()) {
                causes.push(forbidden(
                    "spec.clusterIPs",
                    "may not be set for ExternalName services",
                ));
            }
            if strings_of(spec, "ipFamilies").is_some_and(|f| !f.is_empty()) {
                causes.push(forbidden(
                    "spec.ipFamilies",
                    "may not be set for ExternalName services",
                ));
            }
            if set(spec, "ipFamilyPolicy") {
                causes.push(forbidden(
                    "spec.ipFamilyPolicy",
                    "may not be set for ExternalName services",
                ));
            }
            let name = str_of(spec, "externalName").unwrap_or("");
            let cname = name.strip_suffix('.').unwrap_or(name);
            if cname.is_empty() {
                causes.push(required("spec.externalName", ""));
            } else {
                for m in dns_problems(NameRule::Subdomain, cname) {
                    causes.push(invalid("spec.externalName", &q(cname), &m));
                }
            }
        }
        _ => {}
    }
    let mut names = BTreeSet::new();
    for (i, p) in ports.iter().enumerate() {
        causes.extend(port_causes(
            p,
            ports.len() > 1,
            &mut names,
            &format!("spec.ports[{i}]"),
        ));
    }
    if let Some(selector) = spec.get("selector").and_then(Value::as_object) {
        for (k, v) in selector {
            for m in qualified_name_problems(k) {
                causes.push(invalid("spec.selector", &q(k), &m));
            }
            let v = v.as_str().unwrap_or_default();
            for m in label_value_problems(v) {
                causes.push(invalid("spec.selector", &q(v), &m));
            }
        }
    }
    let affinity = str_of(spec, "sessionAffinity").unwrap_or("");
    match affinity {
        "" => causes.push(required("spec.sessionAffinity", "")),
        a if !SESSION_AFFINITIES.contains(&a) => causes.push(not_supported(
            "spec.sessionAffinity",
            &q(a),
            SESSION_AFFINITIES,
        )),
        _ => {}
    }
    if affinity == "ClientIP" {
        causes.extend(client_ip_affinity_causes(spec.get("sessionAffinityConfig")));
    } else if affinity == "None" && set(spec, "sessionAffinityConfig") {
        causes.push(forbidden(
            "spec.sessionAffinityConfig",
            "must not be set when session affinity is None",
        ));
    }
    causes.extend(cluster_ips_related(obj));
    for (i, ip) in strings_of(spec, "externalIPs")
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let field = format!("spec.externalIPs[{i}]");
        let bad = ip_causes(field.clone(), ip);
        if bad.is_empty() {
            causes.extend(crate::validation::ip::non_special_ip(&field, ip, false));
        } else {
            causes.extend(bad);
        }
    }
    match ty {
        "" => causes.push(required("spec.type", "")),
        t if !TYPES.contains(&t) => causes.push(not_supported("spec.type", &q(t), TYPES)),
        _ => {}
    }
    if ty == "ClusterIP" {
        for (i, p) in ports.iter().enumerate() {
            if int_of(p, "nodePort") != 0 {
                causes.push(forbidden(
                    format!("spec.ports[{i}].nodePort"),
                    "may not be used when `type` is 'ClusterIP'",
                ));
            }
        }
    }
    let protocol = |p: &Value| str_of(p, "protocol").unwrap_or("").to_string();
    let mut node_ports = BTreeSet::new();
    for (i, p) in ports.iter().enumerate() {
        let node_port = int_of(p, "nodePort");
        if node_port != 0 && !node_ports.insert((protocol(p), node_port)) {
            causes.push(duplicate(
                format!("spec.ports[{i}].nodePort"),
                &node_port.to_string(),
            ));
        }
    }
    let mut port_keys = BTreeSet::new();
    for (i, p) in ports.iter().enumerate() {
        let (proto, number) = (protocol(p), int_of(p, "port"));
        if !port_keys.insert((proto.clone(), number)) {
            causes.push(duplicate(
                format!("spec.ports[{i}]"),
                &service_port_key(&proto, number),
            ));
        }
    }
    let ranges = strings_of(spec, "loadBalancerSourceRanges").unwrap_or_default();
    if !ranges.is_empty() {
        let field = "spec.LoadBalancerSourceRanges";
        if ty != "LoadBalancer" {
            causes.push(forbidden(
                field,
                "may only be used when `type` is 'LoadBalancer'",
            ));
        }
        for (i, r) in ranges.iter().enumerate() {
            causes.extend(cidr_causes(format!("{field}[{i}]"), r.trim()));
        }
    } else if let Some(value) = str_of(&annotations, SOURCE_RANGES) {
        let field = format!("metadata.annotations[{SOURCE_RANGES}]");
        if ty != "LoadBalancer" {
            causes.push(forbidden(
                field.clone(),
                "may only be used when `type` is 'LoadBalancer'",
            ));
        }
        let value = value.trim();
        if !value.is_empty() {
            for r in value.split(',') {
                causes.extend(cidr_causes(field.clone(), r.trim()));
            }
        }
    }
    if set(spec, "allocateLoadBalancerNodePorts") && ty != "LoadBalancer" {
        causes.push(forbidden(
            "spec.allocateLoadBalancerNodePorts",
            "may only be used when `type` is 'LoadBalancer'",
        ));
    }
    if ty == "LoadBalancer" && !set(spec, "allocateLoadBalancerNodePorts") {
        // Upstream's path (sic: without `spec.`); defaulting makes it unreachable.
        causes.push(required("allocateLoadBalancerNodePorts", ""));
    }
    causes.extend(load_balancer_class_causes(None, obj));
    causes.extend(external_traffic_causes(obj));
    if let Some(p) = str_of(spec, "internalTrafficPolicy")
        && !TRAFFIC_POLICIES.contains(&p)
    {
        causes.push(not_supported(
            "spec.internalTrafficPolicy",
            &q(p),
            TRAFFIC_POLICIES,
        ));
    }
    if let Some(d) = str_of(spec, "trafficDistribution")
        && d != "PreferClose"
    {
        causes.push(not_supported(
            "spec.trafficDistribution",
            &q(d),
            &["PreferClose"],
        ));
    }
    causes
}

/// Upstream's `validateServiceExternalTrafficPolicy`.
fn external_traffic_causes(obj: &Value) -> Vec<Cause> {
    let spec = spec(obj);
    let mut causes = Vec::new();
    let policy = str_of(spec, "externalTrafficPolicy").unwrap_or("");
    if !externally_accessible(obj) {
        if !policy.is_empty() {
            causes.push(invalid(
                "spec.externalTrafficPolicy",
                &q(policy),
                "may only be set for externally-accessible services",
            ));
        }
    } else if policy.is_empty() {
        causes.push(required("spec.externalTrafficPolicy", ""));
    } else if !TRAFFIC_POLICIES.contains(&policy) {
        causes.push(not_supported(
            "spec.externalTrafficPolicy",
            &q(policy),
            TRAFFIC_POLICIES,
        ));
    }
    let port = int_of(spec, "healthCheckNodePort");
    if !needs_health_check(obj) {
        if port != 0 {
            causes.push(invalid(
                "spec.healthCheckNodePort",
                &port.to_string(),
                "may only be set when `type` is 'LoadBalancer' and `externalTrafficPolicy` is 'Local'",
            ));
        }
    } else if port == 0 {
        causes.push(required("spec.healthCheckNodePort", ""));
    } else {
        for m in port_num_problems(port) {
            causes.push(invalid("spec.healthCheckNodePort", &port.to_string(), &m));
        }
    }
    causes
}

/// Upstream's `validateLoadBalancerClassField`: immutable while the service stays a
/// `LoadBalancer`, a qualified name, only on `LoadBalancer` services.
fn load_balancer_class_causes(old: Option<&Value>, obj: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let class = str_of(spec(obj), "loadBalancerClass");
    if let Some(old) = old
        && type_of(old) == "LoadBalancer"
        && type_of(obj) == "LoadBalancer"
        && str_of(spec(old), "loadBalancerClass") != class
    {
        causes.push(invalid(
            "spec.loadBalancerClass",
            &go_ptr(class),
            "may not change once set",
        ));
    }
    match class {
        Some(c) if type_of(obj) == "LoadBalancer" => {
            for m in qualified_name_problems(c) {
                causes.push(invalid("spec.loadBalancerClass", &q(c), &m));
            }
        }
        Some(_) => causes.push(forbidden(
            "spec.loadBalancerClass",
            "may only be used when `type` is 'LoadBalancer'",
        )),
        None => {}
    }
    causes
}

/// Upstream's `validateUpgradeDowngradeClusterIPs`: the primary cluster IP never changes; a
/// secondary one is released only with `ipFamilyPolicy: SingleStack`.
fn cluster_ips_update_causes(old: &Value, new: &Value) -> Vec<Cause> {
    if type_of(old) == "ExternalName" || type_of(new) == "ExternalName" {
        return Vec::new();
    }
    if is_headless(old) && is_headless(new) {
        return Vec::new();
    }
    let before = strings_of(spec(old), "clusterIPs").unwrap_or_default();
    let after_field = strings_of(spec(new), "clusterIPs");
    let shown = go_list("string", after_field.as_deref());
    let after = after_field.unwrap_or_default();
    let mut causes = Vec::new();
    let changed = |i: usize| {
        invalid(
            format!("spec.clusterIPs[{i}]"),
            &shown,
            "may not change once set",
        )
    };
    if before.len() == after.len() {
        for (i, ip) in before.iter().enumerate() {
            if *ip != after[i] {
                causes.push(changed(i));
            }
        }
    } else if before.len() > after.len() {
        if after.is_empty() {
            causes.push(invalid(
                "spec.clusterIPs[0]",
                &shown,
                "primary clusterIP can not be unset",
            ));
        }
        if !after.is_empty() && after[0] != before[0] {
            causes.push(changed(0));
        }
        if after.len() == 1 && str_of(spec(new), "ipFamilyPolicy") != Some("SingleStack") {
            causes.push(invalid(
                "spec.ipFamilyPolicy",
                &go_ptr(str_of(spec(new), "ipFamilyPolicy")),
                "must be set to 'SingleStack' when releasing the secondary clusterIP",
            ));
        }
    } else if !before.is_empty() && after[0] != before[0] {
        causes.push(changed(0));
    }
    causes
}

/// Upstream's `validateUpgradeDowngradeIPFamilies`.
fn ip_families_update_causes(old: &Value, new: &Value) -> Vec<Cause> {
    if type_of(old) == "ExternalName" || type_of(new) == "ExternalName" {
        return Vec::new();
    }
    if is_headless(old) || is_headless(new) {
        return Vec::new();
    }
    let before = strings_of(spec(old), "ipFamilies").unwrap_or_default();
    let after_field = strings_of(spec(new), "ipFamilies");
    let shown = go_list("core.IPFamily", after_field.as_deref());
    let after = after_field.unwrap_or_default();
    let ips_shown = go_list("string", strings_of(spec(new), "clusterIPs").as_deref());
    let no_ips = strings_of(spec(new), "clusterIPs").is_none_or(|ips| ips.is_empty());
    let mut causes = Vec::new();
    if before.len() == after.len() {
        for (i, f) in before.iter().enumerate() {
            if *f != after[i] {
                causes.push(invalid(
                    "spec.ipFamilies[0]",
                    &shown,
                    "may not change once set",
                ));
            }
        }
    } else if before.len() > after.len() {
        if no_ips {
            causes.push(invalid(
                "spec.ipFamilies[0]",
                &shown,
                "primary ipFamily can not be unset",
            ));
        }
        if !after.is_empty() && after[0] != before[0] {
            causes.push(invalid(
                "spec.ipFamilies[0]",
                &ips_shown,
                "may not change once set",
            ));
        }
        if after.len() == 1 && str_of(spec(new), "ipFamilyPolicy") != Some("SingleStack") {
            causes.push(invalid(
                "spec.ipFamilyPolicy",
                &go_ptr(str_of(spec(new), "ipFamilyPolicy")),
                "must be set to 'SingleStack' when releasing the secondary ipFamily",
            ));
        }
    } else if !before.is_empty() && !after.is_empty() && after[0] != before[0] {
        causes.push(invalid(
            "spec.ipFamilies[0]",
            &ips_shown,
            "may not change once set",
        ));
    }
    causes
}

/// Upstream's `ValidateServiceUpdate` without the metadata rules ([`object_meta_update`]).
pub(crate) fn validate_update(old: &Value, new: &Value) -> Vec<Cause> {
    let mut causes = cluster_ips_update_causes(old, new);
    causes.extend(ip_families_update_causes(old, new));
    causes.extend(load_balancer_class_causes(Some(old), new));
    if needs_health_check(old)
        && needs_health_check(new)
        && int_of(spec(old), "healthCheckNodePort") != int_of(spec(new), "healthCheckNodePort")
    {
        causes.push(forbidden("spec.healthCheckNodePort", "field is immutable"));
    }
    // The update's own class checks are already in; `validate` adds the create-time ones.
    let mut all = validate(new);
    all.retain(|c| !(c.field == "spec.loadBalancerClass" && causes.contains(c)));
    causes.extend(all);
    causes
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    use crate::status::cause_lines as fields;

    fn svc(spec: Value) -> Value {
        json!({"metadata": {"name": "s"}, "spec": spec})
    }

    #[test]
    fn a_defaulted_service_is_valid() {
        let s = svc(json!({
            "type": "ClusterIP", "sessionAffinity": "None", "internalTrafficPolicy": "Cluster",
            "ports": [{"port": 80, "protocol": "TCP", "targetPort": 8080}],
            "selector": {"app": "web"},
        }));
        assert!(validate(&s).is_empty(), "{:?}", fields(&validate(&s)));
    }

    #[test]
    fn ports_protocols_and_names() {
        let s = svc(json!({
            "type": "ClusterIP", "sessionAffinity": "None",
            "ports": [
                {"port": 80, "protocol": "TCP"},
                {"name": "Web", "port": 70000, "protocol": "HTTP", "targetPort": "x--"},
                {"name": "a", "port": 80, "protocol": "TCP", "appProtocol": "-bad"},
                {"name": "a", "port": 81, "protocol": "UDP"},
            ],
        }));
        let got = fields(&validate(&s));
        for want in [
            "spec.ports[0].name: Required value",
            "spec.ports[1].port: Invalid value: 70000: must be between 1 and 65535, inclusive",
            "spec.ports[1].protocol: Unsupported value: \"HTTP\": supported values: \"SCTP\", \"TCP\", \"UDP\"",
            "spec.ports[1].targetPort: Invalid value: \"x--\": must not contain consecutive hyphens",
            "spec.ports[3].name: Duplicate value: \"a\"",
            "spec.ports[2]: Duplicate value: core.ServicePort{Name:\"\", Protocol:\"TCP\", AppProtocol:(*string)(nil), Port:80, TargetPort:intstr.IntOrString{Type:0, IntVal:0, StrVal:\"\"}, NodePort:0}",
        ] {
            assert!(got.iter().any(|g| g == want), "missing {want}\n{got:#?}");
        }
        assert!(got.iter().any(|g| g.starts_with(
            "spec.ports[1].name: Invalid value: \"Web\": a lowercase RFC 1123 label"
        )));
        assert!(got.iter().any(|g| g.starts_with(
            "spec.ports[2].appProtocol: Invalid value: \"-bad\": name part must consist of"
        )));
    }

    #[test]
    fn external_name_rules() {
        let s = svc(json!({
            "type": "ExternalName", "sessionAffinity": "None", "externalName": "Not_A_Name",
            "clusterIP": "10.43.0.9", "clusterIPs": ["10.43.0.9"], "ipFamilyPolicy": "SingleStack",
        }));
        let got = fields(&validate(&s));
        assert!(
            got.contains(
                &"spec.clusterIPs: Forbidden: may not be set for ExternalName services".to_string()
            ),
            "{got:#?}"
        );
        assert!(got.contains(
            &"spec.ipFamilyPolicy: Forbidden: may not be set for ExternalName services".to_string()
        ));
        assert!(got.iter().any(|g| g.starts_with(
            "spec.externalName: Invalid value: \"Not_A_Name\": a lowercase RFC 1123 subdomain"
        )));
        let s = svc(json!({"type": "ExternalName", "sessionAffinity": "None"}));
        assert_eq!(fields(&validate(&s)), ["spec.externalName: Required value"]);
        let s = svc(
            json!({"type": "ExternalName", "sessionAffinity": "None", "externalName": "example.com."}),
        );
        assert!(validate(&s).is_empty());
    }

    #[test]
    fn type_dependent_fields() {
        let s = svc(json!({
            "type": "ClusterIP", "sessionAffinity": "None",
            "ports": [{"port": 80, "protocol": "TCP", "nodePort": 30001}],
            "externalTrafficPolicy": "Local", "healthCheckNodePort": 30002,
            "loadBalancerClass": "example.com/lb", "allocateLoadBalancerNodePorts": true,
            "loadBalancerSourceRanges": ["10.0.0.0/8", "nope"],
        }));
        let got = fields(&validate(&s));
        for want in [
            "spec.ports[0].nodePort: Forbidden: may not be used when `type` is 'ClusterIP'",
            "spec.externalTrafficPolicy: Invalid value: \"Local\": may only be set for externally-accessible services",
            "spec.healthCheckNodePort: Invalid value: 30002: may only be set when `type` is 'LoadBalancer' and `externalTrafficPolicy` is 'Local'",
            "spec.loadBalancerClass: Forbidden: may only be used when `type` is 'LoadBalancer'",
            "spec.allocateLoadBalancerNodePorts: Forbidden: may only be used when `type` is 'LoadBalancer'",
            "spec.LoadBalancerSourceRanges: Forbidden: may only be used when `type` is 'LoadBalancer'",
            "spec.LoadBalancerSourceRanges[1]: Invalid value: \"nope\": must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)",
        ] {
            assert!(got.iter().any(|g| g == want), "missing {want}\n{got:#?}");
        }
        let lb = svc(json!({
            "type": "LoadBalancer", "sessionAffinity": "None", "allocateLoadBalancerNodePorts": true,
            "ports": [{"port": 80, "protocol": "TCP", "nodePort": 30001}],
            "externalTrafficPolicy": "Local",
        }));
        assert_eq!(
            fields(&validate(&lb)),
            ["spec.healthCheckNodePort: Required value"]
        );
    }

    #[test]
    fn affinity_and_ip_families() {
        let s = svc(json!({
            "type": "ClusterIP", "sessionAffinity": "ClientIP",
            "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 90000}},
            "ports": [{"port": 80, "protocol": "TCP"}],
            "clusterIP": "10.43.0.5", "clusterIPs": ["10.43.0.6"],
            "ipFamilies": ["IPv4", "IPv4"], "ipFamilyPolicy": "Sometimes",
        }));
        let got = fields(&validate(&s));
        for want in [
            "spec.sessionAffinityConfig.clientIP.timeoutSeconds: Invalid value: 90000: must be greater than 0 and less than 86400",
            "spec.clusterIPs: Invalid value: []string{\"10.43.0.6\"}: first value must match `clusterIP`",
            "spec.ipFamilies[1]: Duplicate value: \"IPv4\"",
            "spec.ipFamilyPolicy: Unsupported value: \"Sometimes\": supported values: \"PreferDualStack\", \"RequireDualStack\", \"SingleStack\"",
        ] {
            assert!(got.iter().any(|g| g == want), "missing {want}\n{got:#?}");
        }
        let s = svc(json!({
            "type": "ClusterIP", "sessionAffinity": "None", "sessionAffinityConfig": {},
            "ports": [{"port": 80, "protocol": "TCP"}],
        }));
        assert_eq!(
            fields(&validate(&s)),
            [
                "spec.sessionAffinityConfig: Forbidden: must not be set when session affinity is None"
            ]
        );
    }

    #[test]
    fn updates_keep_cluster_ips_class_and_health_check_port() {
        let old = svc(json!({
            "type": "LoadBalancer", "sessionAffinity": "None", "allocateLoadBalancerNodePorts": true,
            "ports": [{"port": 80, "protocol": "TCP", "nodePort": 30001}],
            "clusterIP": "10.43.0.5", "clusterIPs": ["10.43.0.5"], "ipFamilies": ["IPv4"],
            "ipFamilyPolicy": "SingleStack", "externalTrafficPolicy": "Local",
            "healthCheckNodePort": 30002, "loadBalancerClass": "example.com/a",
        }));
        assert!(
            validate_update(&old, &old).is_empty(),
            "{:?}",
            fields(&validate_update(&old, &old))
        );
        let mut new = old.clone();
        new["spec"]["clusterIP"] = json!("10.43.0.6");
        new["spec"]["clusterIPs"] = json!(["10.43.0.6"]);
        new["spec"]["healthCheckNodePort"] = json!(30003);
        new["spec"]["loadBalancerClass"] = json!("example.com/b");
        assert_eq!(
            fields(&validate_update(&old, &new)),
            [
                "spec.clusterIPs[0]: Invalid value: []string{\"10.43.0.6\"}: may not change once set",
                "spec.loadBalancerClass: Invalid value: \"example.com/b\": may not change once set",
                "spec.healthCheckNodePort: Forbidden: field is immutable",
            ]
        );
    }
}
