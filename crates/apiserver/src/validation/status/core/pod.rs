//! `pods/status`: upstream v1.33's `ValidatePodStatusUpdate`, and what the pod status strategy
//! and the v1 → internal conversion do to the request's status before it (see [`prepare`]).

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

use crate::status::Cause;
use crate::validation::core::id_problems;
use crate::validation::ip::{legacy_ip_causes, parse_sloppy, to4};
use crate::validation::{
    NameRule, dns_problems, duplicate, forbidden, invalid, items, q, qualified_name_problems,
    str_of,
};

static NULL: Value = Value::Null;

fn child<'a>(v: &'a Value, field: &str) -> &'a Value {
    v.get(field).unwrap_or(&NULL)
}

/// The condition types the kubelet and scheduler own (`validatePodConditions` skips them).
const SYSTEM_CONDITIONS: &[&str] = &["PodScheduled", "Ready", "Initialized"];

const STATUS_LISTS: [&str; 3] = [
    "containerStatuses",
    "initContainerStatuses",
    "ephemeralContainerStatuses",
];

/// The pod status strategy's `PrepareForUpdate` and the v1 → internal conversion of the status
/// (`new` holds the stored spec and metadata already):
/// - an empty `qosClass` keeps the stored one (old kubelets dropped it);
/// - `allocatedResourcesStatus` is dropped (`ResourceHealthStatus`, alpha and off in v1.33);
/// - `resourceClaimStatuses` is dropped unless the pod has `spec.resourceClaims`
///   (`DynamicResourceAllocation` is off in v1.33 unless the pod already uses it);
/// - `podIP` is authoritative over `podIPs` (a `podIPs` whose first entry differs, or an empty
///   one, becomes `[podIP]`) and is `podIPs[0]` on the way out; `hostIP` likewise over
///   `hostIPs` (which is then checked against it).
pub(super) fn prepare(new: &mut Value, old: &Value) {
    let claims = !items(child(old, "spec"), "resourceClaims").is_empty();
    let old_qos = str_of(child(old, "status"), "qosClass").to_string();
    let Some(status) = new.get_mut("status").and_then(Value::as_object_mut) else {
        return;
    };
    if text(status, "qosClass").is_empty() && !old_qos.is_empty() {
        status.insert("qosClass".into(), json!(old_qos));
    }
    for list in STATUS_LISTS {
        if let Some(statuses) = status.get_mut(list).and_then(Value::as_array_mut) {
            for s in statuses.iter_mut().filter_map(Value::as_object_mut) {
                s.remove("allocatedResourcesStatus");
            }
        }
    }
    if !claims {
        status.remove("resourceClaimStatuses");
    }
    single_is_authoritative(status, "podIP", "podIPs");
    single_is_authoritative(status, "hostIP", "hostIPs");
    // The internal status has no `podIP`: v1's is `podIPs[0]`.
    let first = status
        .get("podIPs")
        .and_then(Value::as_array)
        .and_then(|l| l.first())
        .map(|p| str_of(p, "ip").to_string());
    if let Some(first) = first {
        status.insert("podIP".into(), json!(first));
    }
}

fn text<'a>(m: &'a Map<String, Value>, field: &str) -> &'a str {
    m.get(field).and_then(Value::as_str).unwrap_or("")
}

/// `Convert_v1_PodStatus_To_core_PodStatus` for one pair: a set `single` replaces a `list` that
/// is empty or starts with another address.
fn single_is_authoritative(status: &mut Map<String, Value>, single: &str, list: &str) {
    let ip = text(status, single).to_string();
    if ip.is_empty() {
        return;
    }
    let first = status
        .get(list)
        .and_then(Value::as_array)
        .and_then(|l| l.first())
        .map(|p| str_of(p, "ip"));
    if first != Some(ip.as_str()) {
        status.insert(list.into(), json!([{ "ip": ip }]));
    }
}

/// `ValidatePodStatusUpdate` of `pod` (the stored pod with the request's status, after
/// [`prepare`]) from `old`. Metadata and spec are the stored ones, so the checks of those
/// (`ValidateObjectMetaUpdate`, annotations, `spec.nodeName`) cannot fail and are left out.
pub(super) fn validate(pod: &Value, old: &Value) -> Vec<Cause> {
    let status = child(pod, "status");
    let old_status = child(old, "status");
    let spec = child(old, "spec");
    let mut causes = conditions(status);

    let nominated = str_of(status, "nominatedNodeName");
    if nominated != str_of(old_status, "nominatedNodeName") && !nominated.is_empty() {
        for m in dns_problems(NameRule::Subdomain, nominated) {
            causes.push(invalid("status.nominatedNodeName", &q(nominated), &m));
        }
    }

    // Immutable (set on create: `rk3s_quota::qos::qos_class`); pods stored without one may get a first value.
    let (qos, old_qos) = (str_of(status, "qosClass"), str_of(old_status, "qosClass"));
    if !old_qos.is_empty() && qos != old_qos {
        causes.push(invalid("status.qosClass", &q(qos), "field is immutable"));
    }

    let policy = match str_of(spec, "restartPolicy") {
        "" => "Always",
        p => p,
    };
    let restartable: Vec<&str> = items(spec, "initContainers")
        .iter()
        .filter(|c| str_of(c, "restartPolicy") == "Always")
        .map(|c| str_of(c, "name"))
        .collect();
    for (list, policy, restartable) in [
        ("containerStatuses", policy, &[][..]),
        ("initContainerStatuses", policy, &restartable[..]),
        // The kubelet never restarts ephemeral containers: an implicit `Never`.
        ("ephemeralContainerStatuses", "Never", &[][..]),
    ] {
        causes.extend(state_transitions(
            items(status, list),
            items(old_status, list),
            &format!("status.{list}"),
            policy,
            restartable,
        ));
    }
    causes.extend(resource_claim_statuses(status, spec));
    causes.extend(pod_ips(status));
    causes.extend(host_ips(status));

    let os = match spec.get("os").filter(|o| !o.is_null()) {
        Some(os) => str_of(os, "name"),
        None => "linux",
    };
    for list in STATUS_LISTS {
        causes.extend(users(items(status, list), &format!("status.{list}"), os));
    }
    causes
}

/// `validatePodConditions`: types other than the system ones are qualified names (upstream
/// reports them under `metadata`, with `Type` capitalised).
fn conditions(status: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    for (i, c) in items(status, "conditions").iter().enumerate() {
        let ty = str_of(c, "type");
        if SYSTEM_CONDITIONS.contains(&ty) {
            continue;
        }
        for m in qualified_name_problems(ty) {
            causes.push(invalid(
                format!("metadata.conditions[{i}].Type"),
                &q(ty),
                &m,
            ));
        }
    }
    causes
}

fn terminated(status: &Value) -> Option<&Value> {
    child(status, "state")
        .get("terminated")
        .filter(|t| t.is_object())
}

/// `ValidateContainerStateTransition` / `ValidateInitContainerStateTransition`: unless the
/// restart policy restarts it, a terminated container stays terminated. `restartable`: the
/// init containers with their own `restartPolicy: Always` (sidecars).
fn state_transitions(
    new: &[Value],
    old: &[Value],
    path: &str,
    policy: &str,
    restartable: &[&str],
) -> Vec<Cause> {
    let mut causes = Vec::new();
    if policy == "Always" {
        return causes;
    }
    for (i, o) in old.iter().enumerate() {
        let Some(term) = terminated(o) else {
            continue;
        };
        let exit = term.get("exitCode").and_then(Value::as_i64).unwrap_or(0);
        if exit != 0 && policy == "OnFailure" {
            continue;
        }
        let name = str_of(o, "name");
        if restartable.contains(&name) {
            continue;
        }
        for n in new {
            if str_of(n, "name") == name && terminated(n).is_none() {
                causes.push(forbidden(
                    format!("{path}[{i}].state"),
                    "may not be transitioned to non-terminated state",
                ));
            }
        }
    }
    causes
}

/// `validatePodResourceClaimStatuses`: each names one of `spec.resourceClaims`, once; a
/// `resourceClaimName` is a DNS subdomain (reported under `name`, as upstream).
fn resource_claim_statuses(status: &Value, spec: &Value) -> Vec<Cause> {
    let claims: Vec<&str> = items(spec, "resourceClaims")
        .iter()
        .map(|c| str_of(c, "name"))
        .collect();
    let mut seen = BTreeSet::new();
    let mut causes = Vec::new();
    for (i, s) in items(status, "resourceClaimStatuses").iter().enumerate() {
        let path = format!("status.resourceClaimStatuses[{i}].name");
        let name = str_of(s, "name");
        if !claims.contains(&name) {
            causes.push(invalid(
                path.as_str(),
                &q(name),
                "must match the name of an entry in `spec.resourceClaims`",
            ));
        }
        if !seen.insert(name) {
            causes.push(duplicate(path.as_str(), &q(name)));
        }
        if let Some(claim) = s.get("resourceClaimName").and_then(Value::as_str) {
            for m in dns_problems(NameRule::Subdomain, claim) {
                causes.push(invalid(path.as_str(), &q(claim), &m));
            }
        }
    }
    causes
}

/// `netutils.IsDualStackIPStrings`: one address of each family (an IPv4-mapped IPv6 address
/// counts as IPv4); an address that does not parse is an error.
fn dual_stack(ips: &[&str]) -> Result<bool, String> {
    let (mut v4, mut v6) = (false, false);
    for (i, ip) in ips.iter().enumerate() {
        match parse_sloppy(ip) {
            Some(addr) if to4(addr).is_some() => v4 = true,
            Some(_) => v6 = true,
            None => return Err(format!("invalid IP[{i}]: {ip}")),
        }
    }
    Ok(v4 && v6)
}

/// `field.InternalError`.
fn internal(field: &str, detail: &str) -> Cause {
    Cause {
        reason: "InternalError",
        message: format!("Internal error: {detail}"),
        field: field.into(),
    }
}

/// The `ip`s of a `podIPs`/`hostIPs` list.
fn ips<'a>(status: &'a Value, list: &str) -> Vec<&'a str> {
    items(status, list)
        .iter()
        .map(|p| str_of(p, "ip"))
        .collect()
}

/// Go's `%#v` of a `[]core.PodIP` / `[]core.HostIP`.
fn go_ip_list(type_name: &str, ips: &[&str]) -> String {
    let shown: Vec<String> = ips
        .iter()
        .map(|ip| format!("core.{type_name}{{IP:{}}}", q(ip)))
        .collect();
    format!("[]core.{type_name}{{{}}}", shown.join(", "))
}

fn family_causes(field: &str, type_name: &str, ips: &[&str]) -> Vec<Cause> {
    let mut causes = Vec::new();
    let dual = match dual_stack(ips) {
        Ok(dual) => dual,
        Err(e) => {
            causes.push(internal(
                field,
                &format!("failed to check for dual stack with error:{e}"),
            ));
            false
        }
    };
    if !dual || ips.len() > 2 {
        causes.push(invalid(
            field,
            &go_ip_list(type_name, ips),
            "may specify no more than one IP for each IP family",
        ));
    }
    causes
}

fn duplicate_causes(field: &str, type_name: &str, ips: &[&str]) -> Vec<Cause> {
    let mut seen = BTreeSet::new();
    let mut causes = Vec::new();
    for (i, ip) in ips.iter().enumerate() {
        if !seen.insert(*ip) {
            causes.push(duplicate(
                format!("{field}[{i}]"),
                &format!("core.{type_name}{{IP:{}}}", q(ip)),
            ));
        }
    }
    causes
}

/// `validatePodIPs`: valid addresses; more than one: one per family, no duplicates.
fn pod_ips(status: &Value) -> Vec<Cause> {
    const FIELD: &str = "status.podIPs";
    let list = ips(status, "podIPs");
    let mut causes = Vec::new();
    for (i, ip) in list.iter().enumerate() {
        causes.extend(legacy_ip_causes(&format!("{FIELD}[{i}]"), ip));
    }
    if list.len() > 1 {
        causes.extend(family_causes(FIELD, "PodIP", &list));
        causes.extend(duplicate_causes(FIELD, "PodIP", &list));
    }
    causes
}

/// `validateHostIPs`: the first is `hostIP`; valid addresses; more than one: no duplicates,
/// one per family.
fn host_ips(status: &Value) -> Vec<Cause> {
    const FIELD: &str = "status.hostIPs";
    let list = ips(status, "hostIPs");
    let mut causes = Vec::new();
    let Some(first) = list.first() else {
        return causes;
    };
    if str_of(status, "hostIP") != *first {
        causes.push(invalid(
            format!("{FIELD}[0].ip"),
            &q(first),
            "must be equal to `hostIP`",
        ));
    }
    for (i, ip) in list.iter().enumerate() {
        causes.extend(legacy_ip_causes(&format!("{FIELD}[{i}]"), ip));
    }
    if list.len() > 1 {
        causes.extend(duplicate_causes(FIELD, "HostIP", &list));
        causes.extend(family_causes(FIELD, "HostIP", &list));
    }
    causes
}

/// `validateContainerStatusUsers`: a Windows pod reports no Linux user; a Linux one valid ids
/// (upstream's paths leave out `user`).
fn users(statuses: &[Value], path: &str, os: &str) -> Vec<Cause> {
    let mut causes = Vec::new();
    for (i, s) in statuses.iter().enumerate() {
        let Some(user) = s.get("user").filter(|u| u.is_object()) else {
            continue;
        };
        let linux = child(user, "linux");
        let p = format!("{path}[{i}].linux");
        match os {
            "windows" if !linux.is_null() => {
                causes.push(forbidden(p, "cannot be set for a windows pod"));
            }
            "linux" if linux.is_object() => causes.extend(linux_user(linux, &p)),
            _ => {}
        }
    }
    causes
}

/// `validateLinuxContainerUser`.
fn linux_user(linux: &Value, path: &str) -> Vec<Cause> {
    let mut causes = Vec::new();
    let id = |field: &str| linux.get(field).and_then(Value::as_i64).unwrap_or(0);
    for field in ["uid", "gid"] {
        if let Some(m) = id_problems(id(field)) {
            causes.push(invalid(
                format!("{path}.{field}"),
                &id(field).to_string(),
                &m,
            ));
        }
    }
    for (g, gid) in items(linux, "supplementalGroups").iter().enumerate() {
        let gid = gid.as_i64().unwrap_or(0);
        if let Some(m) = id_problems(gid) {
            causes.push(invalid(
                format!("{path}.supplementalGroups[{g}]"),
                &gid.to_string(),
                &m,
            ));
        }
    }
    causes
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::status::cause_lines as fields;

    fn pod(spec: Value, status: Value) -> Value {
        json!({"metadata": {"name": "p", "namespace": "default"}, "spec": spec, "status": status})
    }

    /// The status `request` gives the stored `old`, prepared and validated as `/status` does.
    fn update(old: &Value, request: Value) -> (Value, Vec<String>) {
        let mut new = old.clone();
        new["status"] = request;
        prepare(&mut new, old);
        let causes = fields(&validate(&new, old));
        (new, causes)
    }

    fn running() -> Value {
        pod(
            json!({"restartPolicy": "Always", "nodeName": "n1",
                   "containers": [{"name": "app", "image": "nginx"}]}),
            json!({"phase": "Pending", "qosClass": "BestEffort"}),
        )
    }

    #[test]
    fn a_kubelet_status_is_accepted_and_normalised() {
        let old = running();
        let (new, causes) = update(
            &old,
            json!({"phase": "Running", "podIP": "10.42.0.5",
                   "podIPs": [{"ip": "10.42.0.5"}, {"ip": "fd00::5"}],
                   "hostIP": "192.168.1.10", "hostIPs": [{"ip": "192.168.1.10"}],
                   "conditions": [{"type": "Ready", "status": "True"},
                                  {"type": "example.com/gate", "status": "True"}],
                   "containerStatuses": [{"name": "app", "ready": true, "restartCount": 0,
                       "image": "nginx", "imageID": "", "state": {"running": {}},
                       "user": {"linux": {"uid": 0, "gid": 0, "supplementalGroups": [1]}}}]}),
        );
        assert!(causes.is_empty(), "{causes:?}");
        // The QoS class the kubelet left out is kept.
        assert_eq!(new["status"]["qosClass"], "BestEffort");

        // podIP is authoritative; podIP follows podIPs[0] on the way out.
        let (new, causes) = update(
            &old,
            json!({"podIP": "10.42.0.9", "podIPs": [{"ip": "10.42.0.5"}]}),
        );
        assert!(causes.is_empty(), "{causes:?}");
        assert_eq!(new["status"]["podIPs"], json!([{"ip": "10.42.0.9"}]));
        let (new, _) = update(&old, json!({"podIPs": [{"ip": "10.42.0.7"}]}));
        assert_eq!(new["status"]["podIP"], "10.42.0.7");
        let (new, _) = update(&old, json!({"hostIP": "192.168.1.10"}));
        assert_eq!(new["status"]["hostIPs"], json!([{"ip": "192.168.1.10"}]));
    }

    #[test]
    fn conditions_nominated_node_and_qos() {
        let old = running();
        let (_, causes) = update(
            &old,
            json!({"qosClass": "Guaranteed", "nominatedNodeName": "Node_1",
                   "conditions": [{"type": "PodScheduled"}, {"type": "bad type!"}]}),
        );
        assert_eq!(
            causes,
            [
                "metadata.conditions[1].Type: Invalid value: \"bad type!\": name part must \
                 consist of alphanumeric characters, '-', '_' or '.', and must start and end \
                 with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', \
                 regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')",
                "status.nominatedNodeName: Invalid value: \"Node_1\": a lowercase RFC 1123 \
                 subdomain must consist of lower case alphanumeric characters, '-' or '.', and \
                 must start and end with an alphanumeric character (e.g. 'example.com', regex \
                 used for validation is \
                 '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')",
                "status.qosClass: Invalid value: \"Guaranteed\": field is immutable",
            ]
        );
        // An unchanged nominated node is not checked again.
        let mut stored = old.clone();
        stored["status"]["nominatedNodeName"] = json!("Node_1");
        let (_, causes) = update(
            &stored,
            json!({"nominatedNodeName": "Node_1", "qosClass": "BestEffort"}),
        );
        assert!(causes.is_empty(), "{causes:?}");
    }

    fn with_terminated(policy: &str, exit: i64) -> Value {
        pod(
            json!({"restartPolicy": policy,
                   "initContainers": [{"name": "init", "image": "busybox"},
                                      {"name": "sidecar", "image": "envoy",
                                       "restartPolicy": "Always"}],
                   "containers": [{"name": "app", "image": "nginx"}]}),
            json!({"phase": "Running",
                   "initContainerStatuses": [
                       {"name": "init", "state": {"terminated": {"exitCode": exit}}},
                       {"name": "sidecar", "state": {"terminated": {"exitCode": 0}}}],
                   "containerStatuses": [
                       {"name": "app", "state": {"terminated": {"exitCode": exit}}}],
                   "ephemeralContainerStatuses": [
                       {"name": "debug", "state": {"terminated": {"exitCode": 1}}}]}),
        )
    }

    fn restarted() -> Value {
        json!({"phase": "Running",
               "initContainerStatuses": [{"name": "init", "state": {"running": {}}},
                                         {"name": "sidecar", "state": {"running": {}}}],
               "containerStatuses": [{"name": "app", "state": {"waiting": {}}}],
               "ephemeralContainerStatuses": [{"name": "debug", "state": {"running": {}}}]})
    }

    #[test]
    fn terminated_containers_stay_terminated_unless_restarted() {
        const MSG: &str = "Forbidden: may not be transitioned to non-terminated state";
        let (_, causes) = update(&with_terminated("Never", 0), restarted());
        assert_eq!(
            causes,
            [
                format!("status.containerStatuses[0].state: {MSG}"),
                format!("status.initContainerStatuses[0].state: {MSG}"),
                format!("status.ephemeralContainerStatuses[0].state: {MSG}"),
            ]
        );
        // OnFailure restarts failed containers; Always restarts all but ephemeral ones.
        let (_, causes) = update(&with_terminated("OnFailure", 1), restarted());
        assert_eq!(
            causes,
            [format!("status.ephemeralContainerStatuses[0].state: {MSG}")]
        );
        let (_, causes) = update(&with_terminated("OnFailure", 0), restarted());
        assert_eq!(causes.len(), 3, "{causes:?}");
        let (_, causes) = update(&with_terminated("Always", 0), restarted());
        assert_eq!(
            causes,
            [format!("status.ephemeralContainerStatuses[0].state: {MSG}")]
        );
    }

    #[test]
    fn pod_and_host_ips() {
        let old = running();
        let (_, causes) = update(
            &old,
            json!({"podIPs": [{"ip": "10.0.0.1"}, {"ip": "10.0.0.1"}, {"ip": "bogus"}],
                   "hostIPs": [{"ip": "192.168.0.1"}, {"ip": "192.168.0.1"}]}),
        );
        assert_eq!(
            causes,
            [
                "status.podIPs[2]: Invalid value: \"bogus\": must be a valid IP address, (e.g. \
                 10.9.8.7 or 2001:db8::ffff)",
                "status.podIPs: Internal error: failed to check for dual stack with \
                 error:invalid IP[2]: bogus",
                "status.podIPs: Invalid value: []core.PodIP{core.PodIP{IP:\"10.0.0.1\"}, \
                 core.PodIP{IP:\"10.0.0.1\"}, core.PodIP{IP:\"bogus\"}}: may specify no more \
                 than one IP for each IP family",
                "status.podIPs[1]: Duplicate value: core.PodIP{IP:\"10.0.0.1\"}",
                "status.hostIPs[0].ip: Invalid value: \"192.168.0.1\": must be equal to \
                 `hostIP`",
                "status.hostIPs[1]: Duplicate value: core.HostIP{IP:\"192.168.0.1\"}",
                "status.hostIPs: Invalid value: []core.HostIP{core.HostIP{IP:\"192.168.0.1\"}, \
                 core.HostIP{IP:\"192.168.0.1\"}}: may specify no more than one IP for each IP \
                 family",
            ]
        );
        // Dual stack in either order, sloppy IPv4 as the legacy fields allow.
        let (_, causes) = update(
            &old,
            json!({"podIPs": [{"ip": "fd00::1"}, {"ip": "010.000.000.001"}],
                   "hostIP": "::1", "hostIPs": [{"ip": "::1"}, {"ip": "127.0.0.1"}]}),
        );
        assert!(causes.is_empty(), "{causes:?}");
    }

    #[test]
    fn resource_claim_statuses() {
        let mut old = running();
        old["spec"]["resourceClaims"] = json!([{"name": "gpu", "resourceClaimName": "gpu-1"}]);
        let (_, causes) = update(
            &old,
            json!({"qosClass": "BestEffort", "resourceClaimStatuses": [
                {"name": "gpu", "resourceClaimName": "gpu-1"},
                {"name": "gpu", "resourceClaimName": "Bad_Claim"},
                {"name": "tpu"}]}),
        );
        assert_eq!(causes.len(), 3, "{causes:?}");
        assert_eq!(
            causes[0],
            "status.resourceClaimStatuses[1].name: Duplicate value: \"gpu\""
        );
        assert!(
            causes[1].starts_with(
                "status.resourceClaimStatuses[1].name: Invalid value: \"Bad_Claim\": a \
                 lowercase RFC 1123 subdomain"
            ),
            "{causes:?}"
        );
        assert_eq!(
            causes[2],
            "status.resourceClaimStatuses[2].name: Invalid value: \"tpu\": must match the name \
             of an entry in `spec.resourceClaims`"
        );
        // Without claims in the spec the statuses are dropped (the feature is off in v1.33).
        let (new, causes) = update(
            &running(),
            json!({"resourceClaimStatuses": [{"name": "tpu"}]}),
        );
        assert!(causes.is_empty(), "{causes:?}");
        assert!(new["status"].get("resourceClaimStatuses").is_none());
    }

    #[test]
    fn container_users_and_dropped_resource_health() {
        let old = running();
        let (new, causes) = update(
            &old,
            json!({"containerStatuses": [{"name": "app",
                "allocatedResourcesStatus": [{"name": "bogus"}],
                "user": {"linux": {"uid": -1, "gid": 2147483648u64,
                                   "supplementalGroups": [5, -5]}}}]}),
        );
        assert_eq!(
            causes,
            [
                "status.containerStatuses[0].linux.uid: Invalid value: -1: must be between 0 \
                 and 2147483647, inclusive",
                "status.containerStatuses[0].linux.gid: Invalid value: 2147483648: must be \
                 between 0 and 2147483647, inclusive",
                "status.containerStatuses[0].linux.supplementalGroups[1]: Invalid value: -5: \
                 must be between 0 and 2147483647, inclusive",
            ]
        );
        assert!(
            new["status"]["containerStatuses"][0]
                .get("allocatedResourcesStatus")
                .is_none()
        );
        let mut windows = running();
        windows["spec"]["os"] = json!({"name": "windows"});
        let (_, causes) = update(
            &windows,
            json!({"qosClass": "BestEffort", "initContainerStatuses": [{"name": "i",
                "user": {"linux": {"uid": 0, "gid": 0}}}]}),
        );
        assert_eq!(
            causes,
            ["status.initContainerStatuses[0].linux: Forbidden: cannot be set for a windows pod"]
        );
    }
}
