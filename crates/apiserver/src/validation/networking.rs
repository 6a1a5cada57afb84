//! networking.k8s.io/v1: upstream's `ValidateIngressCreate`/`ValidateIngressUpdate` (rules,
//! paths, backends, TLS hosts and secrets, the class name and the legacy class annotation),
//! `ValidateIngressClass`/`ValidateIngressClassUpdate`, and v1.33's
//! `ValidateNetworkPolicy`/`ValidateNetworkPolicyUpdate`: the pod selector, ports (protocol,
//! port number or name, `endPort` only after a numeric `port` and not below it), peers (a
//! pod and/or namespace selector, or an `ipBlock` alone, whose `cidr` and `except` entries are
//! CIDRs parsed as Go's sloppy parser does — leading zeros and host bits allowed, the
//! `StrictIPCIDRValidation` gate being off — each `except` strictly inside the `cidr`) and
//! `policyTypes`. Not covered: on update, upstream lets an already invalid label value in the
//! stored pod selector stay (`AllowInvalidLabelValueInSelector`); here it is refused.

use std::net::IpAddr;

use serde_json::Value;

use super::label_selector_causes;
use super::{
    NameRule, dns_problems, forbidden, invalid, ip, items, not_supported, port_name_problems,
    port_num_problems, q, required, str_of, too_long, validate_name,
};
use crate::registry::ResourceInfo;
use crate::status::Cause;

const CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";
const PATH_TYPES: &[&str] = &["Exact", "ImplementationSpecific", "Prefix"];
const INVALID_SEQUENCES: &[&str] = &["//", "/./", "/../", "%2f", "%2F"];
const INVALID_SUFFIXES: &[&str] = &["/..", "/."];
const CONTROLLER_MAX: usize = 250;

pub(super) fn validate(info: &ResourceInfo, obj: &Value, old: Option<&Value>) -> Vec<Cause> {
    match info.kind {
        "Ingress" => ingress(obj),
        "IngressClass" => ingress_class(obj, old),
        "NetworkPolicy" => network_policy(obj),
        "IPAddress" => super::servicecidr::ip_address(obj, old),
        "ServiceCIDR" => super::servicecidr::service_cidr(obj, old),
        _ => Vec::new(),
    }
}

fn ingress(obj: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let spec = obj.get("spec").unwrap_or(&Value::Null);
    let rules = spec.get("rules").and_then(Value::as_array);
    let backend = spec.get("defaultBackend").filter(|b| !b.is_null());
    if rules.is_none_or(Vec::is_empty) && backend.is_none() {
        let shown = match rules {
            None => "[]networking.IngressRule(nil)",
            Some(_) => "[]networking.IngressRule{}",
        };
        causes.push(invalid(
            "spec",
            shown,
            "either `defaultBackend` or `rules` must be specified",
        ));
    }
    if let Some(b) = backend {
        causes.extend(ingress_backend(b, "spec.defaultBackend"));
    }
    for (i, rule) in rules.into_iter().flatten().enumerate() {
        let path = format!("spec.rules[{i}]");
        let host = str_of(rule, "host");
        if !host.is_empty() {
            if host.parse::<std::net::IpAddr>().is_ok() {
                causes.push(invalid(
                    format!("{path}.host"),
                    &q(host),
                    "must be a DNS name, not an IP address",
                ));
            }
            for msg in host_problems(host) {
                causes.push(invalid(format!("{path}.host"), &q(host), &msg));
            }
        }
        if let Some(http) = rule.get("http").filter(|h| !h.is_null()) {
            let paths = items(http, "paths");
            if paths.is_empty() {
                causes.push(required(format!("{path}.http.paths"), ""));
            }
            for (j, p) in paths.iter().enumerate() {
                causes.extend(http_path(p, &format!("{path}.http.paths[{j}]")));
            }
        }
    }
    for (i, tls) in items(spec, "tls").iter().enumerate() {
        for (j, host) in items(tls, "hosts")
            .iter()
            .filter_map(Value::as_str)
            .enumerate()
        {
            for msg in host_problems(host) {
                causes.push(invalid(format!("spec.tls[{i}].hosts[{j}]"), &q(host), &msg));
            }
        }
        let secret = str_of(tls, "secretName");
        if !secret.is_empty() {
            for msg in validate_name(NameRule::Subdomain, secret) {
                causes.push(invalid(
                    format!("spec.tls[{i}].secretName"),
                    &q(secret),
                    &msg,
                ));
            }
        }
    }
    if let Some(class) = spec.get("ingressClassName").and_then(Value::as_str) {
        for msg in validate_name(NameRule::Subdomain, class) {
            causes.push(invalid("spec.ingressClassName", &q(class), &msg));
        }
        if let Some(annotation) = obj
            .pointer("/metadata/annotations")
            .and_then(|a| a.get(CLASS_ANNOTATION))
            .and_then(Value::as_str)
        {
            // Upstream's path leaves `metadata` out.
            causes.push(invalid(
                format!("annotations.{CLASS_ANNOTATION}"),
                &q(annotation),
                "can not be set when the class field is also set",
            ));
        }
    }
    causes
}

/// A host is a DNS-1123 subdomain, or a wildcard one (`*.example.com`).
fn host_problems(host: &str) -> Vec<String> {
    match host.strip_prefix("*.") {
        _ if !host.contains('*') => dns_problems(NameRule::Subdomain, host),
        Some(rest) if !rest.contains('*') && dns_problems(NameRule::Subdomain, rest).is_empty() => {
            Vec::new()
        }
        _ => vec![
            "a wildcard DNS-1123 subdomain must start with '*.', followed by a valid DNS \
             subdomain, which must consist of lower case alphanumeric characters, '-' or '.' \
             and end with an alphanumeric character (e.g. '*.example.com', regex used for \
             validation is '\\*\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
                .into(),
        ],
    }
}

fn http_path(p: &Value, path: &str) -> Vec<Cause> {
    let mut causes = Vec::new();
    // The typed round trip writes a missing `pathType` as "" (k8s-openapi's field is not
    // optional): both are upstream's nil.
    let Some(kind) = p
        .get("pathType")
        .and_then(Value::as_str)
        .filter(|k| !k.is_empty())
    else {
        causes.push(required(
            format!("{path}.pathType"),
            "pathType must be specified",
        ));
        return causes;
    };
    let value = str_of(p, "path");
    let field = format!("{path}.path");
    match kind {
        "Exact" | "Prefix" => {
            if !value.starts_with('/') {
                causes.push(invalid(&field, &q(value), "must be an absolute path"));
            }
            if !value.is_empty() {
                for seq in INVALID_SEQUENCES.iter().filter(|s| value.contains(**s)) {
                    causes.push(invalid(
                        &field,
                        &q(value),
                        &format!("must not contain '{seq}'"),
                    ));
                }
                for suffix in INVALID_SUFFIXES.iter().filter(|s| value.ends_with(**s)) {
                    causes.push(invalid(
                        &field,
                        &q(value),
                        &format!("cannot end with '{suffix}'"),
                    ));
                }
            }
        }
        "ImplementationSpecific" => {
            if !value.is_empty() && !value.starts_with('/') {
                causes.push(invalid(&field, &q(value), "must be an absolute path"));
            }
        }
        other => causes.push(not_supported(
            format!("{path}.pathType"),
            &q(other),
            PATH_TYPES,
        )),
    }
    causes.extend(ingress_backend(
        p.get("backend").unwrap_or(&Value::Null),
        &format!("{path}.backend"),
    ));
    causes
}

/// `validateIngressBackend`: a service (name, port name xor number) or a resource.
fn ingress_backend(b: &Value, path: &str) -> Vec<Cause> {
    let mut causes = Vec::new();
    let resource = b.get("resource").filter(|r| !r.is_null());
    let service = b.get("service").filter(|s| !s.is_null());
    match (resource, service) {
        (Some(_), Some(_)) => causes.push(invalid(
            path,
            "\"\"",
            "cannot set both resource and service backends",
        )),
        (Some(r), None) => causes.extend(typed_reference(r, &format!("{path}.resource"))),
        (None, Some(s)) => {
            let name = str_of(s, "name");
            if name.is_empty() {
                causes.push(required(format!("{path}.service.name"), ""));
            } else {
                for msg in dns_problems(NameRule::Dns1035, name) {
                    causes.push(invalid(format!("{path}.service.name"), &q(name), &msg));
                }
            }
            let port = s.get("port").unwrap_or(&Value::Null);
            let port_name = str_of(port, "name");
            let number = port.get("number").and_then(Value::as_i64).unwrap_or(0);
            match (port_name.is_empty(), number == 0) {
                (false, false) => causes.push(invalid(
                    path,
                    "\"\"",
                    "cannot set both port name & port number",
                )),
                (false, true) => {
                    for msg in port_name_problems(port_name) {
                        causes.push(invalid(
                            format!("{path}.service.port.name"),
                            &q(port_name),
                            &msg,
                        ));
                    }
                }
                (true, false) => {
                    for msg in port_num_problems(number) {
                        causes.push(invalid(
                            format!("{path}.service.port.number"),
                            &number.to_string(),
                            &msg,
                        ));
                    }
                }
                (true, true) => causes.push(required(path, "port name or number is required")),
            }
        }
        (None, None) => causes.push(invalid(
            path,
            "\"\"",
            "resource or service backend is required",
        )),
    }
    causes
}

/// `validateIngressTypedLocalObjectReference`.
fn typed_reference(r: &Value, path: &str) -> Vec<Cause> {
    let mut causes = Vec::new();
    if let Some(group) = r.get("apiGroup").and_then(Value::as_str) {
        for msg in dns_problems(NameRule::Subdomain, group) {
            causes.push(invalid(format!("{path}.apiGroup"), &q(group), &msg));
        }
    }
    for (key, what) in [("kind", "kind is required"), ("name", "name is required")] {
        let value = str_of(r, key);
        if value.is_empty() {
            causes.push(required(format!("{path}.{key}"), what));
        } else {
            for msg in validate_name(NameRule::PathSegment, value) {
                causes.push(invalid(format!("{path}.{key}"), &q(value), &msg));
            }
        }
    }
    causes
}

fn ingress_class(obj: &Value, old: Option<&Value>) -> Vec<Cause> {
    let mut causes = Vec::new();
    let spec = obj.get("spec").unwrap_or(&Value::Null);
    let controller = str_of(spec, "controller");
    if let Some(old) = old {
        let before = old
            .pointer("/spec/controller")
            .and_then(Value::as_str)
            .unwrap_or("");
        if before != controller {
            causes.push(invalid(
                "spec.controller",
                &q(controller),
                "field is immutable",
            ));
        }
    }
    if controller.len() > CONTROLLER_MAX {
        causes.push(too_long("spec.controller", CONTROLLER_MAX));
    }
    causes.extend(domain_prefixed_path("spec.controller", controller));
    if let Some(params) = spec.get("parameters").filter(|p| !p.is_null()) {
        causes.extend(typed_reference(params, "spec.parameters"));
        if let Some(scope) = params.get("scope").and_then(Value::as_str) {
            let namespace = str_of(params, "namespace");
            match scope {
                "Namespace" if namespace.is_empty() => causes.push(required(
                    "spec.parameters.namespace",
                    "`parameters.scope` is set to 'Namespace'",
                )),
                "Cluster" if !namespace.is_empty() => causes.push(forbidden(
                    "spec.parameters.namespace",
                    "`parameters.scope` is set to 'Cluster'",
                )),
                "Namespace" | "Cluster" => {}
                other => causes.push(not_supported(
                    "spec.parameters.scope",
                    &q(other),
                    &["Cluster", "Namespace"],
                )),
            }
        }
    }
    causes
}

/// apimachinery's `IsDomainPrefixedPath`: `<DNS subdomain>/<path>`.
fn domain_prefixed_path(field: &str, value: &str) -> Vec<Cause> {
    if value.is_empty() {
        return vec![required(field, "")];
    }
    let Some((host, path)) = value
        .split_once('/')
        .filter(|(h, p)| !h.is_empty() && !p.is_empty())
    else {
        return vec![invalid(
            field,
            &q(value),
            "must be a domain-prefixed path (such as \"acme.io/foo\")",
        )];
    };
    let mut causes: Vec<Cause> = dns_problems(NameRule::Subdomain, host)
        .into_iter()
        .map(|msg| invalid(field, &q(host), &msg))
        .collect();
    let path_ok = path
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "/-._~%!$&'()*+,;=:".contains(c));
    if !path_ok {
        causes.push(invalid(field, &q(path), "Invalid path"));
    }
    causes
}

// ---- NetworkPolicy ---------------------------------------------------------------------------

/// `ValidateNetworkPolicySpec` (create and update alike).
fn network_policy(obj: &Value) -> Vec<Cause> {
    let null = Value::Null;
    let spec = obj.get("spec").unwrap_or(&null);
    let empty = Value::Object(serde_json::Map::new());
    let pod_selector = spec
        .get("podSelector")
        .filter(|s| !s.is_null())
        .unwrap_or(&empty);
    let mut causes = label_selector_causes(pod_selector, "spec.podSelector");
    for (direction, peers) in [("ingress", "from"), ("egress", "to")] {
        for (i, rule) in items(spec, direction).iter().enumerate() {
            let path = format!("spec.{direction}[{i}]");
            for (j, port) in items(rule, "ports").iter().enumerate() {
                causes.extend(network_policy_port(port, &format!("{path}.ports[{j}]")));
            }
            for (j, peer) in items(rule, peers).iter().enumerate() {
                causes.extend(network_policy_peer(peer, &format!("{path}.{peers}[{j}]")));
            }
        }
    }
    let types = items(spec, "policyTypes");
    if types.len() > 2 {
        let shown: Vec<String> = types
            .iter()
            .map(|t| q(t.as_str().unwrap_or_default()))
            .collect();
        causes.push(invalid(
            "spec.policyTypes",
            &format!("[]networking.PolicyType{{{}}}", shown.join(", ")),
            "may not specify more than two policyTypes",
        ));
        return causes;
    }
    for (i, t) in types.iter().enumerate() {
        let t = t.as_str().unwrap_or_default();
        if !["Ingress", "Egress"].contains(&t) {
            causes.push(not_supported(
                format!("spec.policyTypes[{i}]"),
                &q(t),
                &["Ingress", "Egress"],
            ));
        }
    }
    causes
}

/// `ValidateNetworkPolicyPort`.
fn network_policy_port(port: &Value, path: &str) -> Vec<Cause> {
    let mut causes = Vec::new();
    if let Some(protocol) = port.get("protocol").and_then(Value::as_str)
        && !["TCP", "UDP", "SCTP"].contains(&protocol)
    {
        causes.push(not_supported(
            format!("{path}.protocol"),
            &q(protocol),
            &["TCP", "UDP", "SCTP"],
        ));
    }
    let end = port.get("endPort").and_then(Value::as_i64);
    let end_path = format!("{path}.endPort");
    match port.get("port").filter(|p| !p.is_null()) {
        Some(Value::String(name)) => {
            if let Some(end) = end {
                causes.push(invalid(
                    &end_path,
                    &end.to_string(),
                    "may not be specified when `port` is non-numeric",
                ));
            }
            for m in port_name_problems(name) {
                causes.push(invalid(format!("{path}.port"), &q(name), &m));
            }
        }
        Some(number) => {
            let number = number.as_i64().unwrap_or(0);
            for m in port_num_problems(number) {
                causes.push(invalid(format!("{path}.port"), &number.to_string(), &m));
            }
            if let Some(end) = end {
                if end < number {
                    // Upstream shows the port, not the end port.
                    causes.push(invalid(
                        &end_path,
                        &number.to_string(),
                        "must be greater than or equal to `port`",
                    ));
                }
                for m in port_num_problems(end) {
                    causes.push(invalid(&end_path, &end.to_string(), &m));
                }
            }
        }
        None => {
            if let Some(end) = end {
                causes.push(invalid(
                    &end_path,
                    &end.to_string(),
                    "may not be specified when `port` is not specified",
                ));
            }
        }
    }
    causes
}

/// `ValidateNetworkPolicyPeer`: selectors, or an `ipBlock` alone.
fn network_policy_peer(peer: &Value, path: &str) -> Vec<Cause> {
    let mut causes = Vec::new();
    let mut peers = 0;
    for selector in ["podSelector", "namespaceSelector"] {
        if let Some(sel) = peer.get(selector).filter(|s| !s.is_null()) {
            peers += 1;
            causes.extend(label_selector_causes(sel, &format!("{path}.{selector}")));
        }
    }
    let block = peer.get("ipBlock").filter(|b| !b.is_null());
    if let Some(block) = block {
        peers += 1;
        causes.extend(ip_block(block, &format!("{path}.ipBlock")));
    }
    if peers == 0 {
        causes.push(required(path, "must specify a peer"));
    } else if peers > 1 && block.is_some() {
        causes.push(forbidden(
            path,
            "may not specify both ipBlock and another peer",
        ));
    }
    causes
}

/// `ValidateIPBlock`: CIDRs parsed sloppily (host bits and leading zeros accepted).
fn ip_block(block: &Value, path: &str) -> Vec<Cause> {
    let cidr = str_of(block, "cidr");
    if cidr.is_empty() {
        return vec![required(format!("{path}.cidr"), "")];
    }
    let Some((net, prefix)) = ip::parse_cidr_sloppy(cidr) else {
        return vec![invalid(format!("{path}.cidr"), &q(cidr), ip::CIDR_INVALID)];
    };
    let net = ip::masked(net, prefix);
    let mut causes = Vec::new();
    for (i, except) in items(block, "except").iter().enumerate() {
        let except = except.as_str().unwrap_or_default();
        let field = format!("{path}.except[{i}]");
        let Some((inner, inner_prefix)) = ip::parse_cidr_sloppy(except) else {
            causes.push(invalid(&field, &q(except), ip::CIDR_INVALID));
            continue;
        };
        // Go's `IPNet.Contains`: an IPv4-mapped address is matched as IPv4.
        let inner = ip::masked(inner, inner_prefix);
        let inner = ip::to4(inner).map_or(inner, IpAddr::V4);
        let contained = inner.is_ipv4() == net.is_ipv4() && ip::masked(inner, prefix) == net;
        if !contained || prefix >= inner_prefix {
            causes.push(invalid(
                &field,
                &q(except),
                "must be a strict subset of `cidr`",
            ));
        }
    }
    causes
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn info(plural: &str) -> &'static ResourceInfo {
        crate::registry::REGISTRY
            .find("networking.k8s.io", "v1", plural)
            .expect("registered")
    }

    use crate::status::cause_lines as fields;

    #[test]
    fn ingresses_need_rules_or_a_backend_and_valid_paths_and_backends() {
        assert_eq!(
            fields(&validate(info("ingresses"), &json!({"spec": {}}), None)),
            [
                "spec: Invalid value: []networking.IngressRule(nil): either `defaultBackend` or `rules` must be specified"
            ]
        );
        let ing = json!({"spec": {"ingressClassName": "nginx", "rules": [
            {"host": "10.0.0.1", "http": {"paths": [
                {"path": "api", "pathType": "Prefix",
                 "backend": {"service": {"name": "web", "port": {"number": 80}}}},
                {"path": "/x", "backend": {"service": {"name": "web", "port": {"number": 80}}}},
                {"path": "/y//z", "pathType": "Exact",
                 "backend": {"service": {"name": "web", "port": {"name": "http", "number": 80}}}},
                {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "web"}}},
            ]}},
            {"host": "*.example.com", "http": {"paths": [
                {"path": "/", "pathType": "Prefix",
                 "backend": {"service": {"name": "web", "port": {"number": 80}}}}]}},
        ], "tls": [{"hosts": ["*.*.example.com"], "secretName": "ok"}]},
        "metadata": {"annotations": {CLASS_ANNOTATION: "nginx"}}});
        assert_eq!(
            fields(&validate(info("ingresses"), &ing, None)),
            [
                "spec.rules[0].host: Invalid value: \"10.0.0.1\": must be a DNS name, not an IP address",
                "spec.rules[0].http.paths[0].path: Invalid value: \"api\": must be an absolute path",
                "spec.rules[0].http.paths[1].pathType: Required value: pathType must be specified",
                "spec.rules[0].http.paths[2].path: Invalid value: \"/y//z\": must not contain '//'",
                "spec.rules[0].http.paths[2].backend: Invalid value: \"\": cannot set both port name & port number",
                "spec.rules[0].http.paths[3].backend: Required value: port name or number is required",
                "spec.tls[0].hosts[0]: Invalid value: \"*.*.example.com\": a wildcard DNS-1123 subdomain must start with '*.', followed by a valid DNS subdomain, which must consist of lower case alphanumeric characters, '-' or '.' and end with an alphanumeric character (e.g. '*.example.com', regex used for validation is '\\*\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')",
                "annotations.kubernetes.io/ingress.class: Invalid value: \"nginx\": can not be set when the class field is also set",
            ]
        );
    }

    #[test]
    fn ingress_classes_need_a_domain_prefixed_controller_that_never_changes() {
        let good = json!({"spec": {"controller": "k8s.io/ingress-nginx"}});
        assert!(validate(info("ingressclasses"), &good, None).is_empty());
        assert_eq!(
            fields(&validate(
                info("ingressclasses"),
                &json!({"spec": {"controller": "nginx"}}),
                None
            )),
            [
                "spec.controller: Invalid value: \"nginx\": must be a domain-prefixed path (such as \"acme.io/foo\")"
            ]
        );
        let moved = json!({"spec": {"controller": "example.com/other"}});
        assert_eq!(
            fields(&validate(info("ingressclasses"), &moved, Some(&good))),
            ["spec.controller: Invalid value: \"example.com/other\": field is immutable"]
        );
    }

    #[test]
    fn network_policies() {
        let i = info("networkpolicies");
        let defaulted = |v: Value| {
            let mut v = v;
            crate::defaults::apply(i, &mut v, true);
            v
        };
        let good = defaulted(
            json!({"spec": {"podSelector": {"matchLabels": {"app": "web"}},
            "ingress": [{"from": [{"podSelector": {}, "namespaceSelector": {}},
                                  {"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.0.1.0/24"]}}],
                         "ports": [{"port": 80}, {"port": "http"}, {"port": 8000, "endPort": 9000}]}],
            "egress": [{"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}], "ports": [{"protocol": "UDP", "port": 53}]}]}}),
        );
        assert!(validate(i, &good, None).is_empty());
        let bad = defaulted(json!({"spec": {"podSelector": {},
            "ingress": [{"from": [{}, {"podSelector": {}, "ipBlock": {"cidr": "10.0.0.0/16"}},
                                  {"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.1.0.0/24", "10.0.0.0/16", "x"]}},
                                  {"ipBlock": {"cidr": "10.0.0.0/33"}}],
                         "ports": [{"protocol": "ICMP", "port": 0}, {"port": 90, "endPort": 80},
                                   {"port": "http", "endPort": 90}, {"endPort": 90}]}],
            "policyTypes": ["Ingress", "Sideways"]}}));
        assert_eq!(
            fields(&validate(i, &bad, None)),
            [
                "spec.ingress[0].ports[0].protocol: Unsupported value: \"ICMP\": supported values: \"TCP\", \"UDP\", \"SCTP\"",
                "spec.ingress[0].ports[0].port: Invalid value: 0: must be between 1 and 65535, inclusive",
                "spec.ingress[0].ports[1].endPort: Invalid value: 90: must be greater than or equal to `port`",
                "spec.ingress[0].ports[2].endPort: Invalid value: 90: may not be specified when `port` is non-numeric",
                "spec.ingress[0].ports[3].endPort: Invalid value: 90: may not be specified when `port` is not specified",
                "spec.ingress[0].from[0]: Required value: must specify a peer",
                "spec.ingress[0].from[1]: Forbidden: may not specify both ipBlock and another peer",
                "spec.ingress[0].from[2].ipBlock.except[0]: Invalid value: \"10.1.0.0/24\": must be a strict subset of `cidr`",
                "spec.ingress[0].from[2].ipBlock.except[1]: Invalid value: \"10.0.0.0/16\": must be a strict subset of `cidr`",
                "spec.ingress[0].from[2].ipBlock.except[2]: Invalid value: \"x\": must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)",
                "spec.ingress[0].from[3].ipBlock.cidr: Invalid value: \"10.0.0.0/33\": must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)",
                "spec.policyTypes[1]: Unsupported value: \"Sideways\": supported values: \"Ingress\", \"Egress\"",
            ]
        );
        // Go's sloppy parsing: host bits and leading zeros are accepted.
        let block = json!({"cidr": "010.0.0.1/8", "except": ["10.1.0.0/16", "2001:db8::/64"]});
        assert_eq!(
            ip_block(&block, "b")
                .iter()
                .map(|c| c.field.as_str())
                .collect::<Vec<_>>(),
            ["b.except[1]"]
        );
    }
}
