//! discovery.k8s.io/v1 EndpointSlices as upstream v1.33's `ValidateEndpointSliceCreate` /
//! `ValidateEndpointSliceUpdate`: `addressType` (required, `IPv4`/`IPv6`/`FQDN`, immutable),
//! at most 1000 endpoints, each with 1 to 100 addresses valid for the address type (IPs of
//! the family, parsed as Go's sloppy parser does, and not unspecified, loopback, link-local
//! or link-local multicast; FQDNs of at least two DNS labels), `nodeName` (a DNS subdomain),
//! `deprecatedTopology` (at most 16 labels), `hostname` (a DNS label), zone hints (at most 8,
//! unique label values) and node hints (at most 8, unique node names); at most 20000 ports
//! (upstream's limit), each with a DNS-label name unique in the slice, a protocol
//! (`TCP`/`UDP`/`SCTP`) and a qualified-name `appProtocol`. Upstream checks neither
//! `conditions`, `zone`, the port number nor the `kubernetes.io/service-name` label; neither
//! does this. Not covered: upstream's strategy drops `hints.forNodes` while its feature gate
//! is off (v1.33's default); here they are kept and validated.

use std::collections::BTreeSet;

use serde_json::Value;

use super::core_objects::non_special_ip;
use super::{
    NameRule, dns_problems, duplicate, invalid, items, label_value_problems, not_supported, q,
    qualified_name_problems, required, str_of,
};
use crate::registry::ResourceInfo;
use crate::status::Cause;

const ADDRESS_TYPES: &[&str] = &["FQDN", "IPv4", "IPv6"];
const PROTOCOLS: &[&str] = &["SCTP", "TCP", "UDP"];
const MAX_TOPOLOGY_LABELS: usize = 16;
const MAX_ADDRESSES: usize = 100;
const MAX_PORTS: usize = 20000;
const MAX_ENDPOINTS: usize = 1000;
const MAX_ZONE_HINTS: usize = 8;
const MAX_NODE_HINTS: usize = 8;

pub(super) fn validate(info: &ResourceInfo, obj: &Value, old: Option<&Value>) -> Vec<Cause> {
    if info.kind != "EndpointSlice" {
        return Vec::new();
    }
    let address_type = str_of(obj, "addressType");
    let mut causes = Vec::new();
    if address_type.is_empty() {
        causes.push(required("addressType", ""));
    } else if !ADDRESS_TYPES.contains(&address_type) {
        causes.push(not_supported(
            "addressType",
            &q(address_type),
            ADDRESS_TYPES,
        ));
    }
    causes.extend(endpoints(items(obj, "endpoints"), address_type));
    causes.extend(ports(items(obj, "ports")));
    if let Some(old) = old
        && str_of(old, "addressType") != address_type
    {
        causes.push(invalid(
            "addressType",
            &q(address_type),
            "field is immutable",
        ));
    }
    causes
}

/// `field.TooMany`.
fn too_many(field: impl Into<String>, actual: usize, max: usize) -> Cause {
    Cause {
        reason: "FieldValueTooMany",
        message: format!("Too many: {actual}: must have at most {max} items"),
        field: field.into(),
    }
}

fn endpoints(endpoints: &[Value], address_type: &str) -> Vec<Cause> {
    if endpoints.len() > MAX_ENDPOINTS {
        return vec![too_many("endpoints", endpoints.len(), MAX_ENDPOINTS)];
    }
    let mut causes = Vec::new();
    for (i, endpoint) in endpoints.iter().enumerate() {
        let path = format!("endpoints[{i}]");
        let addresses = items(endpoint, "addresses");
        let apath = format!("{path}.addresses");
        if addresses.is_empty() {
            causes.push(required(&apath, "must contain at least 1 address"));
        } else if addresses.len() > MAX_ADDRESSES {
            causes.push(too_many(&apath, addresses.len(), MAX_ADDRESSES));
        }
        for (j, address) in addresses.iter().enumerate() {
            let address = address.as_str().unwrap_or_default();
            let field = format!("{apath}[{j}]");
            match address_type {
                "IPv4" | "IPv6" => {
                    causes.extend(ip_of_family(address, address_type, &field));
                    causes.extend(non_special_ip(address, &field));
                }
                "FQDN" => causes.extend(fqdn(address, &field)),
                // Unknown types are reported above and their addresses left alone.
                _ => {}
            }
        }
        if let Some(node) = endpoint.get("nodeName").and_then(Value::as_str) {
            for m in dns_problems(NameRule::Subdomain, node) {
                causes.push(invalid(format!("{path}.nodeName"), &q(node), &m));
            }
        }
        let tpath = format!("{path}.deprecatedTopology");
        if let Some(topology) = endpoint
            .get("deprecatedTopology")
            .and_then(Value::as_object)
        {
            if topology.len() > MAX_TOPOLOGY_LABELS {
                causes.push(too_many(&tpath, topology.len(), MAX_TOPOLOGY_LABELS));
            }
            causes.extend(super::core::validate_labels(
                endpoint.get("deprecatedTopology"),
                &tpath,
            ));
        }
        if let Some(hostname) = endpoint.get("hostname").and_then(Value::as_str) {
            for m in dns_problems(NameRule::Label, hostname) {
                causes.push(invalid(format!("{path}.hostname"), &q(hostname), &m));
            }
        }
        if let Some(hints) = endpoint.get("hints").filter(|h| !h.is_null()) {
            causes.extend(endpoint_hints(hints, &format!("{path}.hints")));
        }
    }
    causes
}

/// `IsValidIPv4Address` / `IsValidIPv6Address`: an IPv4-mapped IPv6 address is IPv4 (Go's
/// `To4`).
fn ip_of_family(address: &str, family: &str, field: &str) -> Vec<Cause> {
    let ip = super::ip::parse_sloppy(address);
    let v4 = ip.and_then(super::ip::to4).is_some();
    let ok = match family {
        "IPv4" => v4,
        _ => ip.is_some() && !v4,
    };
    if ok {
        Vec::new()
    } else {
        vec![invalid(
            field,
            &q(address),
            &format!("must be a valid {family} address"),
        )]
    }
}

/// apimachinery's `IsFullyQualifiedDomainName` (a trailing dot allowed).
fn fqdn(address: &str, field: &str) -> Vec<Cause> {
    if address.is_empty() {
        return vec![required(field, "")];
    }
    let name = address.strip_suffix('.').unwrap_or(address);
    let errs = dns_problems(NameRule::Subdomain, name);
    if !errs.is_empty() {
        return vec![invalid(field, &q(name), &errs.join(","))];
    }
    if name.split('.').count() < 2 {
        return vec![invalid(
            field,
            &q(name),
            "should be a domain with at least two segments separated by dots",
        )];
    }
    for label in name.split('.') {
        let errs = dns_problems(NameRule::Label, label);
        if !errs.is_empty() {
            return vec![invalid(field, &q(label), &errs.join(","))];
        }
    }
    Vec::new()
}

fn endpoint_hints(hints: &Value, path: &str) -> Vec<Cause> {
    let mut causes = Vec::new();
    let zones = items(hints, "forZones");
    let zpath = format!("{path}.forZones");
    if zones.len() > MAX_ZONE_HINTS {
        return vec![too_many(zpath, zones.len(), MAX_ZONE_HINTS)];
    }
    let mut seen = BTreeSet::new();
    for (i, zone) in zones.iter().enumerate() {
        let field = format!("{zpath}[{i}].name");
        let name = str_of(zone, "name");
        if !seen.insert(name) {
            causes.push(duplicate(&field, &q(name)));
        }
        for m in label_value_problems(name) {
            causes.push(invalid(&field, &q(name), &m));
        }
    }
    let nodes = items(hints, "forNodes");
    let npath = format!("{path}.forNodes");
    if nodes.len() > MAX_NODE_HINTS {
        causes.push(too_many(npath, nodes.len(), MAX_NODE_HINTS));
        return causes;
    }
    let mut seen = BTreeSet::new();
    for (i, node) in nodes.iter().enumerate() {
        let field = format!("{npath}[{i}].name");
        let name = str_of(node, "name");
        if !seen.insert(name) {
            causes.push(duplicate(&field, &q(name)));
        }
        for m in dns_problems(NameRule::Subdomain, name) {
            causes.push(invalid(&field, &q(name), &m));
        }
    }
    causes
}

fn ports(ports: &[Value]) -> Vec<Cause> {
    if ports.len() > MAX_PORTS {
        return vec![too_many("ports", ports.len(), MAX_PORTS)];
    }
    let mut causes = Vec::new();
    let mut names = BTreeSet::new();
    for (i, port) in ports.iter().enumerate() {
        let path = format!("ports[{i}]");
        let name = str_of(port, "name");
        if !name.is_empty() {
            for m in dns_problems(NameRule::Label, name) {
                causes.push(invalid(format!("{path}.name"), &q(name), &m));
            }
        }
        if !names.insert(name) {
            causes.push(duplicate(format!("{path}.name"), &q(name)));
        }
        match port.get("protocol").and_then(Value::as_str) {
            None => causes.push(required(format!("{path}.protocol"), "")),
            Some(p) if !PROTOCOLS.contains(&p) => {
                causes.push(not_supported(format!("{path}.protocol"), &q(p), PROTOCOLS));
            }
            Some(_) => {}
        }
        if let Some(app) = port.get("appProtocol").and_then(Value::as_str) {
            for m in qualified_name_problems(app) {
                causes.push(invalid(format!("{path}.appProtocol"), &q(app), &m));
            }
        }
    }
    causes
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(obj: Value, old: Option<Value>) -> Vec<String> {
        let i = crate::registry::REGISTRY
            .find("discovery.k8s.io", "v1", "endpointslices")
            .expect("registered");
        let defaulted = |mut o: Value| {
            crate::defaults::apply(i, &mut o, true);
            o
        };
        let old = old.map(defaulted);
        validate(i, &defaulted(obj), old.as_ref())
            .iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect()
    }

    #[test]
    fn a_typical_slice_is_valid() {
        let slice = json!({"addressType": "IPv4",
            "endpoints": [{"addresses": ["10.42.0.5"], "conditions": {"ready": true},
                           "nodeName": "node-1", "hostname": "web-0", "zone": "a",
                           "hints": {"forZones": [{"name": "a"}]}}],
            "ports": [{"name": "http", "port": 80, "protocol": "TCP", "appProtocol": "http"},
                      {"name": "https", "port": 443}]});
        assert!(check(slice, None).is_empty());
        let fq = json!({"addressType": "FQDN", "endpoints": [{"addresses": ["example.com."]}],
            "ports": [{"port": 80}]});
        assert!(check(fq, None).is_empty());
    }

    #[test]
    fn bad_slices() {
        let slice = json!({"addressType": "IPv4",
            "endpoints": [
                {"addresses": []},
                {"addresses": ["fd00::1", "127.0.0.1", "0.0.0.0", "169.254.1.1", "x"],
                 "nodeName": "Node_1", "hostname": "a.b"}],
            "ports": [{"name": "http", "protocol": "ICMP"}, {"name": "http", "appProtocol": "a/b/c"},
                      {"name": "Bad"}]});
        assert_eq!(
            check(slice, None),
            [
                "endpoints[0].addresses: Required value: must contain at least 1 address",
                "endpoints[1].addresses[0]: Invalid value: \"fd00::1\": must be a valid IPv4 address",
                "endpoints[1].addresses[1]: Invalid value: \"127.0.0.1\": may not be in the loopback range (127.0.0.0/8, ::1/128)",
                "endpoints[1].addresses[2]: Invalid value: \"0.0.0.0\": may not be unspecified (0.0.0.0)",
                "endpoints[1].addresses[3]: Invalid value: \"169.254.1.1\": may not be in the link-local range (169.254.0.0/16, fe80::/10)",
                "endpoints[1].addresses[4]: Invalid value: \"x\": must be a valid IPv4 address",
                "endpoints[1].addresses[4]: Invalid value: \"x\": must be a valid IP address",
                "endpoints[1].nodeName: Invalid value: \"Node_1\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')",
                "endpoints[1].hostname: Invalid value: \"a.b\": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')",
                "ports[0].protocol: Unsupported value: \"ICMP\": supported values: \"SCTP\", \"TCP\", \"UDP\"",
                "ports[1].name: Duplicate value: \"http\"",
                "ports[1].appProtocol: Invalid value: \"a/b/c\": a qualified name must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]') with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')",
                "ports[2].name: Invalid value: \"Bad\": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')",
            ]
        );
        let many: Vec<Value> = (0..1001)
            .map(|_| json!({"addresses": ["10.0.0.1"]}))
            .collect();
        assert_eq!(
            check(json!({"addressType": "IPv4", "endpoints": many}), None),
            ["endpoints: Too many: 1001: must have at most 1000 items"]
        );
        assert_eq!(
            check(
                json!({"addressType": "IPv6"}),
                Some(json!({"addressType": "IPv4"}))
            ),
            ["addressType: Invalid value: \"IPv6\": field is immutable"]
        );
        assert_eq!(
            check(
                json!({"addressType": "FQDN", "endpoints": [{"addresses": ["localhost"]}]}),
                None
            ),
            [
                "endpoints[0].addresses[0]: Invalid value: \"localhost\": should be a domain with at least two segments separated by dots"
            ]
        );
    }
}
