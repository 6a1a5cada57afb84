//! Where a pod may run and how it is named on the network, as upstream v1.33's
//! `ValidatePodSpec` checks it: `affinity` (node selector terms and requirements — operators
//! and their values, `matchFields` on `metadata.name` only —, preferred weights, pod
//! (anti-)affinity terms with label and namespace selectors, namespaces, `matchLabelKeys` and
//! `mismatchLabelKeys`, topology keys), `topologySpreadConstraints`, `dnsPolicy: None` and
//! `dnsConfig` limits (with `RelaxedDNSSearchValidation`, on in v1.33), `hostAliases`,
//! `readinessGates`, `schedulingGates` and `resourceClaims`.
//!
//! Label values in required node affinity and in selectors are checked strictly, as on a
//! create (upstream relaxes them on updates of objects that already hold invalid ones).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::super::{
    NameRule, dns_problems, duplicate, forbidden, invalid, label_value_problems, not_supported, q,
    qualified_name_problems, required, str_of,
};
use super::list;
use crate::status::Cause;

/// `ValidateLabelName`: a qualified name.
fn label_name(key: &str, path: &str) -> Vec<Cause> {
    qualified_name_problems(key)
        .into_iter()
        .map(|m| invalid(path, &q(key), &m))
        .collect()
}

fn strings(v: &Value, field: &str) -> Vec<String> {
    list(v, field)
        .iter()
        .map(|s| s.as_str().unwrap_or("").to_string())
        .collect()
}

/// Go's `%#v` of a `[]string`.
fn show_strings(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| q(s)).collect();
    format!("[]string{{{}}}", quoted.join(", "))
}

/// `validateAffinity`.
pub(super) fn affinity(spec: &Value, path: &str) -> Vec<Cause> {
    let mut causes = Vec::new();
    let Some(a) = spec.get("affinity").filter(|v| v.is_object()) else {
        return causes;
    };
    let path = format!("{path}.affinity");
    if let Some(na) = a.get("nodeAffinity").filter(|v| v.is_object()) {
        let np = format!("{path}.nodeAffinity");
        if let Some(sel) = na
            .get("requiredDuringSchedulingIgnoredDuringExecution")
            .filter(|v| v.is_object())
        {
            causes.extend(node_selector(
                sel,
                &format!("{np}.requiredDuringSchedulingIgnoredDuringExecution"),
            ));
        }
        let pp = format!("{np}.preferredDuringSchedulingIgnoredDuringExecution");
        for (i, term) in list(na, "preferredDuringSchedulingIgnoredDuringExecution")
            .iter()
            .enumerate()
        {
            causes.extend(weight(term, &format!("{pp}[{i}].weight")));
            causes.extend(node_selector_term(
                term.get("preference").unwrap_or(&Value::Null),
                false,
                &format!("{pp}[{i}].preference"),
            ));
        }
    }
    for kind in ["podAffinity", "podAntiAffinity"] {
        let Some(pa) = a.get(kind).filter(|v| v.is_object()) else {
            continue;
        };
        let kp = format!("{path}.{kind}");
        let rp = format!("{kp}.requiredDuringSchedulingIgnoredDuringExecution");
        for (i, term) in list(pa, "requiredDuringSchedulingIgnoredDuringExecution")
            .iter()
            .enumerate()
        {
            causes.extend(pod_affinity_term(term, &format!("{rp}[{i}]")));
        }
        let pp = format!("{kp}.preferredDuringSchedulingIgnoredDuringExecution");
        for (i, term) in list(pa, "preferredDuringSchedulingIgnoredDuringExecution")
            .iter()
            .enumerate()
        {
            causes.extend(weight(term, &format!("{pp}[{i}].weight")));
            causes.extend(pod_affinity_term(
                term.get("podAffinityTerm").unwrap_or(&Value::Null),
                &format!("{pp}[{i}].podAffinityTerm"),
            ));
        }
    }
    causes
}

fn weight(term: &Value, path: &str) -> Vec<Cause> {
    let w = term.get("weight").and_then(Value::as_i64).unwrap_or(0);
    if (1..=100).contains(&w) {
        Vec::new()
    } else {
        vec![invalid(path, &w.to_string(), "must be in the range 1-100")]
    }
}

/// `ValidateNodeSelector` (pods' required node affinity, PersistentVolumes' node affinity).
pub(crate) fn node_selector(sel: &Value, path: &str) -> Vec<Cause> {
    let terms = list(sel, "nodeSelectorTerms");
    let tp = format!("{path}.nodeSelectorTerms");
    if terms.is_empty() {
        return vec![required(tp, "must have at least one node selector term")];
    }
    terms
        .iter()
        .enumerate()
        .flat_map(|(i, t)| node_selector_term(t, true, &format!("{tp}[{i}]")))
        .collect()
}

/// `ValidateNodeSelectorTerm` (`strict_values`: label values checked, as in required terms).
fn node_selector_term(term: &Value, strict_values: bool, path: &str) -> Vec<Cause> {
    let mut causes = Vec::new();
    for (j, req) in list(term, "matchExpressions").iter().enumerate() {
        let p = format!("{path}.matchExpressions[{j}]");
        let values = strings(req, "values");
        let op = str_of(req, "operator");
        match op {
            "In" | "NotIn" if values.is_empty() => causes.push(required(
                format!("{p}.values"),
                "must be specified when `operator` is 'In' or 'NotIn'",
            )),
            "Exists" | "DoesNotExist" if !values.is_empty() => causes.push(forbidden(
                format!("{p}.values"),
                "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
            )),
            "Gt" | "Lt" if values.len() != 1 => causes.push(required(
                format!("{p}.values"),
                "must be specified single value when `operator` is 'Lt' or 'Gt'",
            )),
            "In" | "NotIn" | "Exists" | "DoesNotExist" | "Gt" | "Lt" => {}
            _ => causes.push(invalid(
                format!("{p}.operator"),
                &q(op),
                "not a valid selector operator",
            )),
        }
        causes.extend(label_name(str_of(req, "key"), &format!("{p}.key")));
        if strict_values {
            for (k, v) in values.iter().enumerate() {
                for m in label_value_problems(v) {
                    causes.push(invalid(format!("{p}.values[{k}]"), &q(v), &m));
                }
            }
        }
    }
    for (j, req) in list(term, "matchFields").iter().enumerate() {
        let p = format!("{path}.matchFields[{j}]");
        let values = strings(req, "values");
        let op = str_of(req, "operator");
        match op {
            "In" | "NotIn" => {
                if values.len() != 1 {
                    causes.push(required(
                        format!("{p}.values"),
                        "must be only one value when `operator` is 'In' or 'NotIn' for node \
                         field selector",
                    ));
                }
            }
            _ => causes.push(invalid(
                format!("{p}.operator"),
                &q(op),
                "not a valid selector operator",
            )),
        }
        let key = str_of(req, "key");
        if key != "metadata.name" {
            causes.push(invalid(
                format!("{p}.key"),
                &q(key),
                "not a valid field selector key",
            ));
        } else {
            for (k, v) in values.iter().enumerate() {
                for m in dns_problems(NameRule::Subdomain, v) {
                    causes.push(invalid(format!("{p}.values[{k}]"), &q(v), &m));
                }
            }
        }
    }
    causes
}

/// `validatePodAffinityTerm`.
fn pod_affinity_term(term: &Value, path: &str) -> Vec<Cause> {
    let mut causes = Vec::new();
    for sel in ["labelSelector", "namespaceSelector"] {
        if let Some(s) = term.get(sel).filter(|v| v.is_object()) {
            causes.extend(crate::validation::label_selector_causes(
                s,
                &format!("{path}.{sel}"),
            ));
        }
    }
    for ns in strings(term, "namespaces") {
        // Upstream's path is `namespace`, not `namespaces[i]`.
        for m in dns_problems(NameRule::Label, &ns) {
            causes.push(invalid(format!("{path}.namespace"), &q(&ns), &m));
        }
    }
    causes.extend(match_label_keys(term, path));
    let key = str_of(term, "topologyKey");
    if key.is_empty() {
        causes.push(required(format!("{path}.topologyKey"), "can not be empty"));
    }
    causes.extend(label_name(key, &format!("{path}.topologyKey")));
    causes
}

/// The keys of a label selector's `matchLabels` and `matchExpressions`.
fn selector_keys(sel: &Value) -> BTreeSet<String> {
    let mut keys: BTreeSet<String> = sel
        .get("matchLabels")
        .and_then(Value::as_object)
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    keys.extend(
        list(sel, "matchExpressions")
            .iter()
            .map(|e| str_of(e, "key").to_string()),
    );
    keys
}

/// `validateMatchLabelKeysAndMismatchLabelKeys`.
fn match_label_keys(term: &Value, path: &str) -> Vec<Cause> {
    let mut causes = Vec::new();
    let selector = term.get("labelSelector").filter(|v| v.is_object());
    let matching = strings(term, "matchLabelKeys");
    let mismatching = strings(term, "mismatchLabelKeys");
    for (field, keys) in [
        ("matchLabelKeys", &matching),
        ("mismatchLabelKeys", &mismatching),
    ] {
        if keys.is_empty() {
            continue;
        }
        let fp = format!("{path}.{field}");
        if selector.is_none() {
            causes.push(forbidden(
                fp,
                "must not be specified when labelSelector is not set",
            ));
            continue;
        }
        for (i, k) in keys.iter().enumerate() {
            causes.extend(label_name(k, &format!("{fp}[{i}]")));
        }
    }
    if let Some(sel) = selector {
        // A key of matchLabelKeys both in matchLabels and in an expression (the expression
        // the server adds for it, and the user's own).
        let index: BTreeMap<&str, usize> = matching
            .iter()
            .enumerate()
            .map(|(i, k)| (k.as_str(), i))
            .collect();
        let mut seen: BTreeSet<String> = sel
            .get("matchLabels")
            .and_then(Value::as_object)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        for e in list(sel, "matchExpressions") {
            let key = str_of(e, "key");
            if let Some(i) = index.get(key)
                && seen.contains(key)
            {
                causes.push(invalid(
                    format!("{path}[{i}]"),
                    &q(key),
                    "exists in both matchLabelKeys and labelSelector",
                ));
            }
            seen.insert(key.to_string());
        }
    }
    let mismatch: BTreeSet<&String> = mismatching.iter().collect();
    for (i, k) in matching.iter().enumerate() {
        if mismatch.contains(k) {
            causes.push(invalid(
                format!("{path}.matchLabelKeys[{i}]"),
                &q(k),
                "exists in both matchLabelKeys and mismatchLabelKeys",
            ));
        }
    }
    causes
}

/// `validateTopologySpreadConstraints`.
pub(super) fn topology_spread(spec: &Value, path: &str) -> Vec<Cause> {
    let mut causes = Vec::new();
    let constraints = list(spec, "topologySpreadConstraints");
    let path = format!("{path}.topologySpreadConstraints");
    for (i, c) in constraints.iter().enumerate() {
        let p = format!("{path}[{i}]");
        let skew = c.get("maxSkew").and_then(Value::as_i64).unwrap_or(0);
        if skew <= 0 {
            causes.push(invalid(
                format!("{p}.maxSkew"),
                &skew.to_string(),
                "must be greater than zero",
            ));
        }
        let key = str_of(c, "topologyKey");
        if key.is_empty() {
            causes.push(required(format!("{p}.topologyKey"), "can not be empty"));
        }
        let action = str_of(c, "whenUnsatisfiable");
        const ACTIONS: &[&str] = &["DoNotSchedule", "ScheduleAnyway"];
        if !ACTIONS.contains(&action) {
            causes.push(not_supported(
                format!("{p}.whenUnsatisfiable"),
                &q(action),
                ACTIONS,
            ));
        }
        if constraints[i + 1..]
            .iter()
            .any(|o| str_of(o, "topologyKey") == key && str_of(o, "whenUnsatisfiable") == action)
        {
            causes.push(duplicate(
                format!("{p}.{{topologyKey, whenUnsatisfiable}}"),
                &q(&format!("{{{key}, {action}}}")),
            ));
        }
        if let Some(min) = c.get("minDomains").and_then(Value::as_i64) {
            let mp = format!("{p}.minDomains");
            if min <= 0 {
                causes.push(invalid(&mp, &min.to_string(), "must be greater than zero"));
            }
            if action != "DoNotSchedule" {
                causes.push(invalid(
                    &mp,
                    &min.to_string(),
                    &format!(
                        "can only use minDomains if whenUnsatisfiable=DoNotSchedule, not {action}"
                    ),
                ));
            }
        }
        for policy in ["nodeAffinityPolicy", "nodeTaintsPolicy"] {
            if let Some(v) = c.get(policy).filter(|v| !v.is_null()) {
                let v = v.as_str().unwrap_or("");
                if !["Honor", "Ignore"].contains(&v) {
                    causes.push(not_supported(
                        format!("{p}.{policy}"),
                        &q(v),
                        &["Honor", "Ignore"],
                    ));
                }
            }
        }
        let selector = c.get("labelSelector").filter(|v| v.is_object());
        let keys = strings(c, "matchLabelKeys");
        if !keys.is_empty() {
            let kp = format!("{p}.matchLabelKeys");
            let in_selector = selector.map(selector_keys).unwrap_or_default();
            if selector.is_none() {
                causes.push(forbidden(
                    &kp,
                    "must not be specified when labelSelector is not set",
                ));
            }
            for (j, k) in keys.iter().enumerate() {
                causes.extend(label_name(k, &format!("{kp}[{j}]")));
                if in_selector.contains(k) {
                    causes.push(invalid(
                        format!("{kp}[{j}]"),
                        &q(k),
                        "exists in both matchLabelKeys and labelSelector",
                    ));
                }
            }
        }
        if let Some(sel) = selector {
            causes.extend(crate::validation::label_selector_causes(
                sel,
                &format!("{p}.labelSelector"),
            ));
        }
    }
    causes
}

/// `IsDNS1123SubdomainWithUnderscore`.
fn subdomain_with_underscore_problems(v: &str) -> Vec<String> {
    const FMT: &str = r"_?[a-z0-9]([-_a-z0-9]*[a-z0-9])?(\._?[a-z0-9]([-_a-z0-9]*[a-z0-9])?)*";
    let label_ok = |l: &str| {
        let l = l.strip_prefix('_').unwrap_or(l);
        let b = l.as_bytes();
        !b.is_empty()
            && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
            && (b[b.len() - 1].is_ascii_lowercase() || b[b.len() - 1].is_ascii_digit())
            && b.iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'-' | b'_'))
    };
    let mut errs = Vec::new();
    if v.len() > 253 {
        errs.push("must be no more than 253 characters".to_string());
    }
    if !v.split('.').all(label_ok) {
        errs.push(format!(
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, \
             '_', '-' or '.', and must start and end with an alphanumeric character (e.g. \
             'example.com', regex used for validation is '{FMT}')"
        ));
    }
    errs
}

/// `validatePodDNSConfig`.
pub(super) fn dns_config(spec: &Value, path: &str) -> Vec<Cause> {
    let mut causes = Vec::new();
    let path = format!("{path}.dnsConfig");
    let config = spec.get("dnsConfig").filter(|v| v.is_object());
    if str_of(spec, "dnsPolicy") == "None" {
        let Some(c) = config else {
            return vec![required(
                path,
                "must provide `dnsConfig` when `dnsPolicy` is None",
            )];
        };
        if list(c, "nameservers").is_empty() {
            return vec![required(
                format!("{path}.nameservers"),
                "must provide at least one DNS nameserver when `dnsPolicy` is None",
            )];
        }
    }
    let Some(c) = config else {
        return causes;
    };
    let servers = strings(c, "nameservers");
    if servers.len() > 3 {
        causes.push(invalid(
            format!("{path}.nameservers"),
            &show_strings(&servers),
            "must not have more than 3 nameservers",
        ));
    }
    for (i, ns) in servers.iter().enumerate() {
        causes.extend(crate::validation::ip::legacy_ip_causes(
            &format!("{path}.nameservers[{i}]"),
            ns,
        ));
    }
    let searches = strings(c, "searches");
    if searches.len() > 32 {
        causes.push(invalid(
            format!("{path}.searches"),
            &show_strings(&searches),
            "must not have more than 32 search paths",
        ));
    }
    if searches.join(" ").len() > 2048 {
        causes.push(invalid(
            format!("{path}.searches"),
            &show_strings(&searches),
            "must not have more than 2048 characters (including spaces) in the search list",
        ));
    }
    for (i, s) in searches.iter().enumerate() {
        if s == "." {
            continue;
        }
        let s = s.strip_suffix('.').unwrap_or(s);
        for m in subdomain_with_underscore_problems(s) {
            causes.push(invalid(format!("{path}.searches[{i}]"), &q(s), &m));
        }
    }
    for (i, o) in list(c, "options").iter().enumerate() {
        if str_of(o, "name").is_empty() {
            causes.push(required(
                format!("{path}.options[{i}]"),
                "must not be empty",
            ));
        }
    }
    causes
}

/// `ValidateHostAliases`, `validateReadinessGates`, `validateSchedulingGates` and
/// `validatePodResourceClaims`.
pub(super) fn names_and_gates(spec: &Value, path: &str) -> Vec<Cause> {
    let mut causes = Vec::new();
    for (i, alias) in list(spec, "hostAliases").iter().enumerate() {
        let p = format!("{path}.hostAliases[{i}]");
        causes.extend(crate::validation::ip::legacy_ip_causes(
            &format!("{p}.ip"),
            str_of(alias, "ip"),
        ));
        for (j, h) in strings(alias, "hostnames").iter().enumerate() {
            for m in dns_problems(NameRule::Subdomain, h) {
                causes.push(invalid(format!("{p}.hostnames[{j}]"), &q(h), &m));
            }
        }
    }
    for (i, g) in list(spec, "readinessGates").iter().enumerate() {
        let t = str_of(g, "conditionType");
        causes.extend(label_name(
            t,
            &format!("{path}.readinessGates[{i}].conditionType"),
        ));
    }
    let mut seen = BTreeSet::new();
    for (i, g) in list(spec, "schedulingGates").iter().enumerate() {
        let name = str_of(g, "name");
        let p = format!("{path}.schedulingGates[{i}]");
        causes.extend(label_name(name, &p));
        if !seen.insert(name.to_string()) {
            causes.push(duplicate(&p, &q(name)));
        }
    }
    let mut claims = BTreeSet::new();
    for (i, c) in list(spec, "resourceClaims").iter().enumerate() {
        let p = format!("{path}.resourceClaims[{i}]");
        let name = str_of(c, "name");
        if name.is_empty() {
            causes.push(required(format!("{p}.name"), ""));
        } else if claims.contains(name) {
            causes.push(duplicate(format!("{p}.name"), &q(name)));
        } else {
            for m in dns_problems(NameRule::Label, name) {
                causes.push(invalid(format!("{p}.name"), &q(name), &m));
            }
            claims.insert(name.to_string());
        }
        let claim = c.get("resourceClaimName").and_then(Value::as_str);
        let template = c.get("resourceClaimTemplateName").and_then(Value::as_str);
        let shown = format!(
            "core.PodResourceClaim{{Name:{}, ResourceClaimName:{}, ResourceClaimTemplateName:{}}}",
            q(name),
            claim.map_or("(*string)(nil)".into(), |s| format!("(*string)({})", q(s))),
            template.map_or("(*string)(nil)".into(), |s| format!("(*string)({})", q(s))),
        );
        match (claim, template) {
            (Some(_), Some(_)) => causes.push(invalid(
                &p,
                &shown,
                "at most one of `resourceClaimName` or `resourceClaimTemplateName` may be \
                 specified",
            )),
            (None, None) => causes.push(invalid(
                &p,
                &shown,
                "must specify one of: `resourceClaimName`, `resourceClaimTemplateName`",
            )),
            _ => {}
        }
        for (field, v) in [
            ("resourceClaimName", claim),
            ("resourceClaimTemplateName", template),
        ] {
            if let Some(v) = v {
                for m in dns_problems(NameRule::Subdomain, v) {
                    causes.push(invalid(format!("{p}.{field}"), &q(v), &m));
                }
            }
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
    fn node_and_pod_affinity() {
        let spec = json!({"affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{
                    "matchExpressions": [
                        {"key": "zone", "operator": "In"},
                        {"key": "gpu", "operator": "Gt", "values": ["1", "2"]},
                        {"key": "x", "operator": "Near", "values": ["bad value!"]}],
                    "matchFields": [{"key": "metadata.labels", "operator": "In", "values": ["n"]}],
                }]},
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {"weight": 0, "preference": {"matchExpressions": [
                        {"key": "disk", "operator": "In", "values": ["bad value!"]}]}}],
            },
            "podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "",
                 "matchLabelKeys": ["pod-template-hash"], "mismatchLabelKeys": ["pod-template-hash"]}]},
        }});
        let got = fields(&affinity(&spec, "spec"));
        let na = "spec.affinity.nodeAffinity";
        let term =
            format!("{na}.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0]");
        let pa = "spec.affinity.podAntiAffinity.requiredDuringSchedulingIgnoredDuringExecution[0]";
        assert_eq!(
            got[..6],
            [
                format!(
                    "{term}.matchExpressions[0].values: Required value: must be specified when `operator` is 'In' or 'NotIn'"
                ),
                format!(
                    "{term}.matchExpressions[1].values: Required value: must be specified single value when `operator` is 'Lt' or 'Gt'"
                ),
                format!(
                    "{term}.matchExpressions[2].operator: Invalid value: \"Near\": not a valid selector operator"
                ),
                format!(
                    "{term}.matchExpressions[2].values[0]: Invalid value: \"bad value!\": a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"
                ),
                format!(
                    "{term}.matchFields[0].key: Invalid value: \"metadata.labels\": not a valid field selector key"
                ),
                format!(
                    "{na}.preferredDuringSchedulingIgnoredDuringExecution[0].weight: Invalid value: 0: must be in the range 1-100"
                ),
            ]
        );
        assert_eq!(
            got[6],
            format!(
                "{pa}.matchLabelKeys[0]: Invalid value: \"pod-template-hash\": exists in both matchLabelKeys and mismatchLabelKeys"
            )
        );
        assert_eq!(
            got[7],
            format!("{pa}.topologyKey: Required value: can not be empty")
        );
        assert!(got[8].starts_with(&format!(
            "{pa}.topologyKey: Invalid value: \"\": name part must be non-empty"
        )));
    }

    #[test]
    fn spread_constraints() {
        let spec = json!({"topologySpreadConstraints": [
            {"maxSkew": 0, "topologyKey": "zone", "whenUnsatisfiable": "ScheduleAnyway",
             "minDomains": 2, "nodeAffinityPolicy": "Always"},
            {"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "ScheduleAnyway",
             "matchLabelKeys": ["app"], "labelSelector": {"matchLabels": {"app": "web"}}},
        ]});
        let p = "spec.topologySpreadConstraints";
        assert_eq!(
            fields(&topology_spread(&spec, "spec")),
            vec![
                format!("{p}[0].maxSkew: Invalid value: 0: must be greater than zero"),
                format!(
                    "{p}[0].{{topologyKey, whenUnsatisfiable}}: Duplicate value: \"{{zone, ScheduleAnyway}}\""
                ),
                format!(
                    "{p}[0].minDomains: Invalid value: 2: can only use minDomains if whenUnsatisfiable=DoNotSchedule, not ScheduleAnyway"
                ),
                format!(
                    "{p}[0].nodeAffinityPolicy: Unsupported value: \"Always\": supported values: \"Honor\", \"Ignore\""
                ),
                format!(
                    "{p}[1].matchLabelKeys[0]: Invalid value: \"app\": exists in both matchLabelKeys and labelSelector"
                ),
            ]
        );
    }

    #[test]
    fn dns_aliases_and_gates() {
        let none = json!({"dnsPolicy": "None"});
        assert_eq!(
            fields(&dns_config(&none, "spec")),
            vec![
                "spec.dnsConfig: Required value: must provide `dnsConfig` when `dnsPolicy` is None"
            ]
        );
        let spec = json!({"dnsPolicy": "ClusterFirst", "dnsConfig": {
            "nameservers": ["1.1.1.1", "8.8.8.8", "9.9.9.9", "not-an-ip"],
            "searches": ["svc.cluster.local.", "_tcp.example.com", "Bad"],
            "options": [{"name": "ndots", "value": "2"}, {"value": "x"}]}});
        let got = fields(&dns_config(&spec, "spec"));
        assert_eq!(
            got[0],
            "spec.dnsConfig.nameservers: Invalid value: []string{\"1.1.1.1\", \"8.8.8.8\", \"9.9.9.9\", \"not-an-ip\"}: must not have more than 3 nameservers"
        );
        assert_eq!(
            got[1],
            "spec.dnsConfig.nameservers[3]: Invalid value: \"not-an-ip\": must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"
        );
        assert!(got[2].starts_with("spec.dnsConfig.searches[2]: Invalid value: \"Bad\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '_', '-' or '.'"));
        assert_eq!(
            got[3],
            "spec.dnsConfig.options[1]: Required value: must not be empty"
        );
        assert_eq!(got.len(), 4);
        let spec = json!({
            "hostAliases": [{"ip": "10.0.0.300", "hostnames": ["ok.example", "No"]}],
            "readinessGates": [{"conditionType": "example.com/ready"}, {"conditionType": "bad type"}],
            "schedulingGates": [{"name": "example.com/wait"}, {"name": "example.com/wait"}],
            "resourceClaims": [{"name": "gpu"}],
        });
        let got = fields(&names_and_gates(&spec, "spec"));
        assert_eq!(
            got[0],
            "spec.hostAliases[0].ip: Invalid value: \"10.0.0.300\": must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"
        );
        assert!(got[1].starts_with("spec.hostAliases[0].hostnames[1]: Invalid value: \"No\": a lowercase RFC 1123 subdomain"));
        assert!(got[2].starts_with("spec.readinessGates[1].conditionType: Invalid value: \"bad type\": name part must consist of"));
        assert_eq!(
            got[3],
            "spec.schedulingGates[1]: Duplicate value: \"example.com/wait\""
        );
        assert_eq!(
            got[4],
            "spec.resourceClaims[0]: Invalid value: core.PodResourceClaim{Name:\"gpu\", ResourceClaimName:(*string)(nil), ResourceClaimTemplateName:(*string)(nil)}: must specify one of: `resourceClaimName`, `resourceClaimTemplateName`"
        );
        assert_eq!(got.len(), 5);
    }
}
