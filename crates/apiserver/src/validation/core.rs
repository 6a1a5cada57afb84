//! core/v1 objects as upstream v1.33's `pkg/apis/core/validation`: `ValidatePodSpec`
//! ([`validate_pod_spec`], also for the pod templates of workloads), `ValidatePod`,
//! `ValidatePodUpdate`, `ValidateConfigMap(Update)` and `ValidateSecret(Update)`, with
//! upstream's field paths, reasons and messages. Values in `Invalid value:` messages are
//! written as Go's `%q`/`%v` shows them. Services are validated by `services/validation.rs`.
//! The pod spec's security contexts and OS rules are in [`security`], its scheduling and DNS
//! fields in [`placement`], volume sources and downward API references in [`volumes`].
//!
//! Volume devices, resize policies and what ephemeral containers may not set are in
//! [`containers`]. Pod-level `resources` are not validated: the `PodLevelResources` gate is off
//! in v1.33, so upstream drops the field before validating (rk3s drops it when defaulting,
//! `defaults::pod_spec`).
//!
//! Not covered: `imagePullSecrets` fields beyond the name, the seccomp/AppArmor annotations'
//! agreement with the fields, and what the pod strategy adds before validating (the selectors
//! `matchLabelKeys` stand for).

mod containers;
mod placement;

pub(super) use placement::node_selector;
mod security;
pub(super) use security::id_problems;
mod volumes;
pub(crate) use volumes::is_volume_source;

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::{
    NameRule, dns_problems, duplicate, forbidden, invalid, items, label_value_problems, not_found,
    not_supported, obj_of, one_of, port_name_problems, port_num_problems, q,
    qualified_name_problems, required, str_of, too_long,
};
use crate::registry::ResourceInfo;
use crate::status::Cause;

/// Upstream's `ValidatePodSpec` of a pod template's spec `spec` at `path`
/// (`spec.template.spec`): see [`pod_spec`].
pub(crate) fn validate_pod_spec(spec: &Value, path: &str) -> Vec<Cause> {
    pod_spec(spec, path, false)
}

/// Upstream's `ValidatePodSpec` of the pod spec `spec` at `path`, `is_pod` for a Pod's own
/// (`opts.ResourceIsPod`): containers, init and ephemeral containers (names, images, ports,
/// env and its downward API references, envFrom, volume mounts and devices, resources, resize
/// policies, probes and handlers, pull policies, security contexts; what ephemeral containers
/// may not set and their targets), volumes and their sources, restart and DNS
/// policies, DNS config, node selector, pod security context, affinity, topology spread,
/// readiness and scheduling gates, resource claims, tolerations, host aliases, host network
/// ports, `hostUsers`, `os`, `overhead`, `activeDeadlineSeconds`, and the DNS-label and name
/// fields. Defaults (`restartPolicy`, `dnsPolicy`, `terminationGracePeriodSeconds`,
/// protocols, pull policies, termination message policy, `httpGet` path and scheme, a host
/// network pod's host ports) are expected to have been applied.
fn pod_spec(spec: &Value, path: &str, is_pod: bool) -> Vec<Cause> {
    let mut causes = Vec::new();
    if spec
        .get("terminationGracePeriodSeconds")
        .is_none_or(Value::is_null)
    {
        causes.push(required(
            format!("{path}.terminationGracePeriodSeconds"),
            "",
        ));
    }
    let grace = spec
        .get("terminationGracePeriodSeconds")
        .and_then(Value::as_i64);
    let host_users = security::host_users_on(spec);
    let volumes = validate_volumes(spec, &format!("{path}.volumes"), is_pod, &mut causes);
    let ctx = Ctx {
        volumes: &volumes,
        host_users,
        restart_policy: str_of(spec, "restartPolicy"),
    };
    let containers = list(spec, "containers");
    let cpath = format!("{path}.containers");
    if containers.is_empty() {
        causes.push(required(&cpath, ""));
    }
    let mut names = BTreeSet::new();
    for (i, c) in containers.iter().enumerate() {
        let p = format!("{cpath}[{i}]");
        causes.extend(container_common(c, &ctx, &p));
        let name = str_of(c, "name");
        if !names.insert(name.to_string()) {
            causes.push(duplicate(format!("{p}.name"), &q(name)));
        }
        causes.extend(lifecycle(c, &p, grace));
        for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
            if let Some(pr) = c.get(probe).filter(|v| !v.is_null()) {
                causes.extend(validate_probe(probe, pr, &format!("{p}.{probe}")));
            }
        }
        if c.get("restartPolicy").is_some_and(|v| !v.is_null()) {
            causes.push(forbidden(
                format!("{p}.restartPolicy"),
                "may not be set for non-init containers",
            ));
        }
    }
    causes.extend(host_port_conflicts(&containers, &cpath));
    let ipath = format!("{path}.initContainers");
    for (i, c) in list(spec, "initContainers").iter().enumerate() {
        let p = format!("{ipath}[{i}]");
        causes.extend(container_common(c, &ctx, &p));
        // Init containers run one by one: each one's host ports alone.
        causes.extend(host_port_conflicts(&[*c], &ipath));
        let restart = c.get("restartPolicy").and_then(Value::as_str);
        if let Some(r) = restart
            && r != "Always"
        {
            causes.push(not_supported(
                format!("{p}.restartPolicy"),
                &q(r),
                &["Always"],
            ));
        }
        let name = str_of(c, "name");
        if names.contains(name) {
            causes.push(duplicate(format!("{p}.name"), &q(name)));
        } else if !name.is_empty() {
            names.insert(name.to_string());
        }
        for probe in [
            "lifecycle",
            "livenessProbe",
            "readinessProbe",
            "startupProbe",
        ] {
            let Some(v) = c.get(probe).filter(|v| !v.is_null()) else {
                continue;
            };
            if restart == Some("Always") {
                if probe == "lifecycle" {
                    causes.extend(lifecycle(c, &p, grace));
                } else {
                    causes.extend(validate_probe(probe, v, &format!("{p}.{probe}")));
                }
            } else {
                causes.push(forbidden(
                    format!("{p}.{probe}"),
                    "may not be set for init containers without restartPolicy=Always",
                ));
            }
        }
    }
    let epath = format!("{path}.ephemeralContainers");
    let others: BTreeSet<&str> = list(spec, "containers")
        .iter()
        .chain(list(spec, "initContainers").iter())
        .map(|c| str_of(c, "name"))
        .collect();
    for (i, c) in list(spec, "ephemeralContainers").iter().enumerate() {
        let p = format!("{epath}[{i}]");
        causes.extend(container_common(c, &ctx, &p));
        causes.extend(containers::image_whitespace(c, &p));
        let name = str_of(c, "name");
        if names.contains(name) {
            causes.push(duplicate(format!("{p}.name"), &q(name)));
        } else if !name.is_empty() {
            names.insert(name.to_string());
        }
        causes.extend(containers::ephemeral_rules(c, &others, &p));
    }
    causes.extend(host_network_ports(spec, path, is_pod));
    causes.extend(one_of(
        spec,
        "restartPolicy",
        &format!("{path}.restartPolicy"),
        &["Always", "OnFailure", "Never"],
    ));
    causes.extend(one_of(
        spec,
        "dnsPolicy",
        &format!("{path}.dnsPolicy"),
        &["ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"],
    ));
    causes.extend(validate_labels(
        spec.get("nodeSelector"),
        &format!("{path}.nodeSelector"),
    ));
    causes.extend(security::pod_security(spec, path));
    causes.extend(placement::affinity(spec, path));
    causes.extend(placement::dns_config(spec, path));
    causes.extend(placement::names_and_gates(spec, path));
    causes.extend(placement::topology_spread(spec, path));
    for (field, rule) in [
        ("serviceAccountName", NameRule::Subdomain),
        ("nodeName", NameRule::Subdomain),
        ("priorityClassName", NameRule::Subdomain),
        ("runtimeClassName", NameRule::Subdomain),
        ("hostname", NameRule::Label),
        ("subdomain", NameRule::Label),
    ] {
        let v = str_of(spec, field);
        if !v.is_empty() {
            for m in dns_problems(rule, v) {
                causes.push(invalid(format!("{path}.{field}"), &q(v), &m));
            }
        }
    }
    if let Some(ads) = spec.get("activeDeadlineSeconds").and_then(Value::as_i64)
        && !(1..=i64::from(i32::MAX)).contains(&ads)
    {
        causes.push(invalid(
            format!("{path}.activeDeadlineSeconds"),
            &ads.to_string(),
            &format!("must be between 1 and {}, inclusive", i32::MAX),
        ));
    }
    causes.extend(validate_tolerations(
        &list(spec, "tolerations"),
        &format!("{path}.tolerations"),
    ));
    if spec.get("preemptionPolicy").is_some_and(|v| !v.is_null()) {
        causes.extend(one_of(
            spec,
            "preemptionPolicy",
            &format!("{path}.preemptionPolicy"),
            &["PreemptLowerPriority", "Never"],
        ));
    }
    if let Some(overhead) = spec.get("overhead").filter(|v| v.is_object()) {
        causes.extend(resources(
            &serde_json::json!({ "limits": overhead }),
            &format!("{path}.overhead"),
        ));
    }
    causes.extend(security::pod_os(spec, path));
    causes
}

/// What the containers' checks need to know of their pod.
struct Ctx<'a> {
    /// The valid volumes by name, with their source's kind.
    volumes: &'a BTreeMap<String, Option<&'static str>>,
    /// The pod shares the host's user namespace.
    host_users: bool,
    /// The pod's `restartPolicy` (what a container's `resizePolicy` may say depends on it).
    restart_policy: &'a str,
}

/// `validateLifecycle`: the `postStart`/`preStop` handlers (a sleep within the grace period).
fn lifecycle(c: &Value, p: &str, grace: Option<i64>) -> Vec<Cause> {
    let mut causes = Vec::new();
    if let Some(lc) = c.get("lifecycle").filter(|v| v.is_object()) {
        for hook in ["postStart", "preStop"] {
            if let Some(h) = lc.get(hook).filter(|v| !v.is_null()) {
                let hp = format!("{p}.lifecycle.{hook}");
                causes.extend(validate_handler(h, &hp));
                if let (Some(secs), Some(grace)) = (
                    h.get("sleep")
                        .and_then(|s| s.get("seconds"))
                        .and_then(Value::as_i64),
                    grace,
                ) && (secs < 0 || secs > grace)
                {
                    causes.push(invalid(
                        format!("{hp}.sleep"),
                        &secs.to_string(),
                        &format!(
                            "must be non-negative and less than terminationGracePeriodSeconds \
                             ({grace})"
                        ),
                    ));
                }
            }
        }
    }
    causes
}

/// The causes of `obj` (with the stored `old` on update).
pub(super) fn validate(info: &ResourceInfo, obj: &Value, old: Option<&Value>) -> Vec<Cause> {
    match info.kind {
        "Pod" => {
            let spec = obj.get("spec").unwrap_or(&Value::Null);
            let mut causes = pod_spec(spec, "spec", true);
            // `validatePodMetadataAndSpec`'s pod-only part (ephemeral containers had theirs).
            for key in ["containers", "initContainers"] {
                for (i, c) in list(spec, key).iter().enumerate() {
                    causes.extend(containers::image_whitespace(c, &format!("spec.{key}[{i}]")));
                }
            }
            match old {
                None => {
                    if !list(spec, "ephemeralContainers").is_empty() {
                        causes.push(forbidden(
                            "spec.ephemeralContainers",
                            "cannot be set on create",
                        ));
                    }
                    if !str_of(spec, "nodeName").is_empty()
                        && !list(spec, "schedulingGates").is_empty()
                    {
                        causes.push(forbidden(
                            "spec.nodeName",
                            "cannot be set until all schedulingGates have been cleared",
                        ));
                    }
                }
                Some(old) => causes.extend(validate_pod_update(obj, old)),
            }
            causes
        }
        "ConfigMap" => validate_config_map(obj, old),
        "Secret" => validate_secret(obj, old),
        "PodTemplate" => template_spec(obj.get("template"), "template", false),
        "ReplicationController" => template_spec(
            obj.get("spec").and_then(|s| s.get("template")),
            "spec.template",
            true,
        ),
        "Namespace" => namespace_finalizers(obj),
        "PersistentVolumeClaim" => claim_spec(obj.get("spec").unwrap_or(&Value::Null), "spec"),
        _ => Vec::new(),
    }
}

/// The pod template of a PodTemplate or ReplicationController (`ValidatePodTemplateSpec`'s
/// spec part; a controller's template also as `ValidatePodTemplateSpecForRC`).
pub(super) fn template_spec(template: Option<&Value>, path: &str, controller: bool) -> Vec<Cause> {
    let Some(t) = template.filter(|t| !t.is_null()) else {
        return if controller {
            vec![required(path, "")]
        } else {
            Vec::new()
        };
    };
    // Upstream's paths of the template's metadata leave `metadata` out (`spec.template.labels`).
    let meta = t.get("metadata").unwrap_or(&Value::Null);
    let mut causes = validate_labels(meta.get("labels"), &format!("{path}.labels"));
    causes.extend(super::meta::annotations(
        meta.get("annotations"),
        &format!("{path}.annotations"),
    ));
    let spec = t.get("spec").unwrap_or(&Value::Null);
    let spath = format!("{path}.spec");
    causes.extend(validate_pod_spec(spec, &spath));
    if !list(spec, "ephemeralContainers").is_empty() {
        causes.push(forbidden(
            format!("{spath}.ephemeralContainers"),
            "ephemeral containers not allowed in pod template",
        ));
    }
    if controller {
        let policy = str_of(spec, "restartPolicy");
        if policy != "Always" {
            causes.push(not_supported(
                format!("{spath}.restartPolicy"),
                &q(policy),
                &["Always"],
            ));
        }
        if spec
            .get("activeDeadlineSeconds")
            .is_some_and(|v| !v.is_null())
        {
            causes.push(forbidden(
                format!("{spath}.activeDeadlineSeconds"),
                "activeDeadlineSeconds in ReplicationController is not Supported",
            ));
        }
    }
    causes
}

/// `ValidateNamespace`: `spec.finalizers` are qualified names, standard ones if unprefixed.
fn namespace_finalizers(obj: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let spec = obj.get("spec").unwrap_or(&Value::Null);
    for f in list(spec, "finalizers") {
        let f = f.as_str().unwrap_or("");
        for m in qualified_name_problems(f) {
            causes.push(invalid("spec.finalizers", &q(f), &m));
        }
        if !f.contains('/') && !["kubernetes", "orphan", "foregroundDeletion"].contains(&f) {
            causes.push(invalid(
                "spec.finalizers",
                &q(f),
                "name is neither a standard finalizer name nor is it fully qualified",
            ));
        }
    }
    causes
}

/// `ValidatePersistentVolumeClaimSpec`: access modes, the storage request, the class name,
/// the volume mode.
fn claim_spec(spec: &Value, path: &str) -> Vec<Cause> {
    const MODES: &[&str] = &[
        "ReadOnlyMany",
        "ReadWriteMany",
        "ReadWriteOnce",
        "ReadWriteOncePod",
    ];
    let mut causes = Vec::new();
    let modes = list(spec, "accessModes");
    if modes.is_empty() {
        causes.push(required(
            format!("{path}.accessModes"),
            "at least 1 access mode is required",
        ));
    }
    let (mut once_pod, mut other) = (false, false);
    for m in modes {
        let m = m.as_str().unwrap_or("");
        if !MODES.contains(&m) {
            causes.push(not_supported(format!("{path}.accessModes"), &q(m), MODES));
        } else if m == "ReadWriteOncePod" {
            once_pod = true;
        } else {
            other = true;
        }
    }
    if once_pod && other {
        causes.push(forbidden(
            format!("{path}.accessModes"),
            "may not use ReadWriteOncePod with other access modes",
        ));
    }
    let storage_path = format!("{path}.resources[storage]");
    match spec
        .get("resources")
        .and_then(|r| r.get("requests"))
        .and_then(|r| r.get("storage"))
    {
        None => causes.push(required(storage_path, "")),
        Some(v) => {
            if let Some(qty) = quantity_text(v).and_then(|t| rk3s_quota::parse(&t))
                && qty.0 <= rk3s_quota::Quantity::default()
            {
                causes.push(invalid(
                    storage_path,
                    &q(&rk3s_quota::text(qty)),
                    "must be greater than zero",
                ));
            }
        }
    }
    let class = str_of(spec, "storageClassName");
    if !class.is_empty() {
        for m in dns_problems(NameRule::Subdomain, class) {
            causes.push(invalid(format!("{path}.storageClassName"), &q(class), &m));
        }
    }
    if let Some(mode) = spec.get("volumeMode").and_then(Value::as_str)
        && !["Block", "Filesystem"].contains(&mode)
    {
        causes.push(not_supported(
            format!("{path}.volumeMode"),
            &q(mode),
            &["Block", "Filesystem"],
        ));
    }
    causes
}

fn list<'a>(v: &'a Value, field: &str) -> Vec<&'a Value> {
    items(v, field).iter().collect()
}

/// `ValidateLabels`: keys qualified names, values label values (the field is the map's).
pub(super) fn validate_labels(labels: Option<&Value>, path: &str) -> Vec<Cause> {
    let mut causes = Vec::new();
    let Some(labels) = labels.and_then(Value::as_object) else {
        return causes;
    };
    for (k, v) in labels {
        for m in qualified_name_problems(k) {
            causes.push(invalid(path, &q(k), &m));
        }
        let v = v.as_str().unwrap_or("");
        for m in label_value_problems(v) {
            causes.push(invalid(path, &q(v), &m));
        }
    }
    causes
}

// ---- containers ------------------------------------------------------------------------------

/// The printable-ASCII rule of env names (`RelaxedEnvironmentVariableValidation`, on in v1.33).
fn env_name_problems(name: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if name.is_empty() {
        errs.push("environment variable name must be non-empty".to_string());
    }
    if name.chars().any(|c| !(' '..='~').contains(&c) || c == '=') {
        errs.push(
            "a valid environment variable name must consist only of printable ASCII characters \
             other than '='"
                .into(),
        );
    }
    errs
}

/// Upstream's `IsConfigMapKey` (ConfigMap and Secret keys, key selectors).
pub(super) fn config_key_problems(key: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if key.len() > 253 {
        errs.push("must be no more than 253 characters".to_string());
    }
    if key.is_empty()
        || !key
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
    {
        errs.push(
            "a valid config key must consist of alphanumeric characters, '-', '_' or '.' \
             (e.g. 'key.name',  or 'KEY_NAME',  or 'key_name', regex used for validation is \
             '[-._a-zA-Z0-9]+')"
                .into(),
        );
    }
    if key == "." {
        errs.push("must not be '.'".into());
    } else if key == ".." {
        errs.push("must not be '..'".into());
    } else if key.starts_with("..") {
        errs.push("must not start with '..'".into());
    }
    errs
}

/// `validateContainerCommon`: what every kind of container must satisfy.
fn container_common(c: &Value, ctx: &Ctx<'_>, p: &str) -> Vec<Cause> {
    let mut causes = Vec::new();
    let name = str_of(c, "name");
    if name.is_empty() {
        causes.push(required(format!("{p}.name"), ""));
    } else {
        for m in dns_problems(NameRule::Label, name) {
            causes.push(invalid(format!("{p}.name"), &q(name), &m));
        }
    }
    if str_of(c, "image").is_empty() {
        causes.push(required(format!("{p}.image"), ""));
    }
    causes.extend(one_of(
        c,
        "terminationMessagePolicy",
        &format!("{p}.terminationMessagePolicy"),
        &["File", "FallbackToLogsOnError"],
    ));
    causes.extend(container_ports(&list(c, "ports"), &format!("{p}.ports")));
    for (i, e) in list(c, "env").iter().enumerate() {
        let ep = format!("{p}.env[{i}]");
        let n = str_of(e, "name");
        if n.is_empty() {
            causes.push(required(format!("{ep}.name"), ""));
        }
        for m in env_name_problems(n) {
            causes.push(invalid(format!("{ep}.name"), &q(n), &m));
        }
        if let Some(from) = e.get("valueFrom").filter(|v| !v.is_null()) {
            causes.extend(env_value_from(e, from, &format!("{ep}.valueFrom")));
        }
    }
    let fpath = format!("{p}.envFrom");
    for (i, e) in list(c, "envFrom").iter().enumerate() {
        let ep = format!("{fpath}[{i}]");
        let prefix = str_of(e, "prefix");
        if !prefix.is_empty() {
            for m in env_name_problems(prefix) {
                causes.push(invalid(format!("{ep}.prefix"), &q(prefix), &m));
            }
        }
        let mut n = 0;
        for src in ["configMapRef", "secretRef"] {
            if let Some(r) = e.get(src).filter(|v| !v.is_null()) {
                n += 1;
                let name = str_of(r, "name");
                if name.is_empty() {
                    causes.push(required(format!("{ep}.{src}.name"), ""));
                } else {
                    for m in dns_problems(NameRule::Subdomain, name) {
                        causes.push(invalid(format!("{ep}.{src}.name"), &q(name), &m));
                    }
                }
            }
        }
        if n == 0 {
            causes.push(invalid(
                &fpath,
                "\"\"",
                "must specify one of: `configMapRef` or `secretRef`",
            ));
        } else if n > 1 {
            causes.push(invalid(
                &fpath,
                "\"\"",
                "may not have more than one field specified at a time",
            ));
        }
    }
    let mounts = containers::path_map(c, "volumeMounts", "mountPath");
    let devices = containers::path_map(c, "volumeDevices", "devicePath");
    let mut mount_paths = BTreeSet::new();
    for (i, m) in list(c, "volumeMounts").iter().enumerate() {
        let mp = format!("{p}.volumeMounts[{i}]");
        let name = str_of(m, "name");
        if name.is_empty() {
            causes.push(required(format!("{mp}.name"), ""));
        }
        if !ctx.volumes.contains_key(name) {
            causes.push(not_found(format!("{mp}.name"), &q(name)));
        }
        let path = str_of(m, "mountPath");
        if path.is_empty() {
            causes.push(required(format!("{mp}.mountPath"), ""));
        }
        if !mount_paths.insert(path.to_string()) {
            causes.push(invalid(
                format!("{mp}.mountPath"),
                &q(path),
                "must be unique",
            ));
        }
        causes.extend(containers::mount_device_overlap(m, &devices, &mp));
        let privileged = c
            .get("securityContext")
            .and_then(|s| s.get("privileged"))
            .and_then(Value::as_bool)
            == Some(true);
        causes.extend(volumes::mount_extras(
            m,
            ctx.volumes.get(name).copied().flatten(),
            privileged,
            &mp,
            &format!("{p}.volumeMounts"),
        ));
    }
    causes.extend(containers::volume_devices(
        c,
        ctx.volumes,
        &mounts,
        &format!("{p}.volumeDevices"),
    ));
    causes.extend(one_of(
        c,
        "imagePullPolicy",
        &format!("{p}.imagePullPolicy"),
        &["Always", "IfNotPresent", "Never"],
    ));
    causes.extend(resources(
        c.get("resources").unwrap_or(&Value::Null),
        &format!("{p}.resources"),
    ));
    causes.extend(containers::resize_policy(
        c,
        ctx.restart_policy,
        &format!("{p}.resizePolicy"),
    ));
    causes.extend(security::container_security(c, p, ctx.host_users));
    causes
}

/// `validateContainerPorts`.
fn container_ports(ports: &[&Value], path: &str) -> Vec<Cause> {
    let mut causes = Vec::new();
    let mut names = BTreeSet::new();
    for (i, port) in ports.iter().enumerate() {
        let p = format!("{path}[{i}]");
        let name = str_of(port, "name");
        if !name.is_empty() {
            let problems = port_name_problems(name);
            if !problems.is_empty() {
                for m in problems {
                    causes.push(invalid(format!("{p}.name"), &q(name), &m));
                }
            } else if !names.insert(name.to_string()) {
                causes.push(duplicate(format!("{p}.name"), &q(name)));
            }
        }
        let cp = port
            .get("containerPort")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        if cp == 0 {
            causes.push(required(format!("{p}.containerPort"), ""));
        } else {
            for m in port_num_problems(cp) {
                causes.push(invalid(format!("{p}.containerPort"), &cp.to_string(), &m));
            }
        }
        let hp = port.get("hostPort").and_then(Value::as_i64).unwrap_or(0);
        if hp != 0 {
            for m in port_num_problems(hp) {
                causes.push(invalid(format!("{p}.hostPort"), &hp.to_string(), &m));
            }
        }
        let proto = str_of(port, "protocol");
        if proto.is_empty() {
            causes.push(required(format!("{p}.protocol"), ""));
        } else if !["SCTP", "TCP", "UDP"].contains(&proto) {
            causes.push(not_supported(
                format!("{p}.protocol"),
                &q(proto),
                &["SCTP", "TCP", "UDP"],
            ));
        }
    }
    causes
}

/// `checkHostPortConflicts`: a host port (IP, protocol) once per pod's containers.
fn host_port_conflicts(containers: &[&Value], path: &str) -> Vec<Cause> {
    let mut seen = BTreeSet::new();
    let mut causes = Vec::new();
    for (ci, c) in containers.iter().enumerate() {
        for (pi, port) in list(c, "ports").iter().enumerate() {
            let hp = port.get("hostPort").and_then(Value::as_i64).unwrap_or(0);
            if hp == 0 {
                continue;
            }
            let key = format!(
                "{}/{}/{hp}",
                str_of(port, "protocol"),
                str_of(port, "hostIP")
            );
            if !seen.insert(key.clone()) {
                causes.push(duplicate(
                    format!("{path}[{ci}].ports[{pi}].hostPort"),
                    &q(&key),
                ));
            }
        }
    }
    causes
}

/// `validatePodHostNetworkDeps`: with `hostNetwork`, a host port is the container port (in a
/// pod template it may be left out: the pod's defaulting fills it in).
fn host_network_ports(spec: &Value, path: &str, is_pod: bool) -> Vec<Cause> {
    let mut causes = Vec::new();
    if spec.get("hostNetwork").and_then(Value::as_bool) != Some(true) {
        return causes;
    }
    for (ci, c) in list(spec, "containers").iter().enumerate() {
        for (pi, port) in list(c, "ports").iter().enumerate() {
            let hp = port.get("hostPort").and_then(Value::as_i64).unwrap_or(0);
            let cp = port
                .get("containerPort")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            if (is_pod || hp != 0) && hp != cp {
                causes.push(invalid(
                    format!("{path}.containers[{ci}].ports[{pi}].hostPort"),
                    &hp.to_string(),
                    "must match `containerPort` when `hostNetwork` is true",
                ));
            }
        }
    }
    causes
}

/// `validateEnvVarValueFrom`.
fn env_value_from(env: &Value, from: &Value, path: &str) -> Vec<Cause> {
    let mut causes = Vec::new();
    let mut n = 0;
    for src in [
        "fieldRef",
        "resourceFieldRef",
        "configMapKeyRef",
        "secretKeyRef",
    ] {
        let Some(r) = from.get(src).filter(|v| !v.is_null()) else {
            continue;
        };
        n += 1;
        match src {
            "fieldRef" => causes.extend(volumes::object_field_selector(
                r,
                volumes::ENV_FIELD_PATHS,
                &format!("{path}.fieldRef"),
            )),
            "resourceFieldRef" => causes.extend(volumes::resource_field_selector(
                r,
                &format!("{path}.resourceFieldRef"),
                false,
            )),
            _ => {
                let name = str_of(r, "name");
                for m in dns_problems(NameRule::Subdomain, name) {
                    causes.push(invalid(format!("{path}.{src}.name"), &q(name), &m));
                }
                let key = str_of(r, "key");
                if key.is_empty() {
                    causes.push(required(format!("{path}.{src}.key"), ""));
                } else {
                    for m in config_key_problems(key) {
                        causes.push(invalid(format!("{path}.{src}.key"), &q(key), &m));
                    }
                }
            }
        }
    }
    if n == 0 {
        causes.push(invalid(
            path,
            "\"\"",
            "must specify one of: `fieldRef`, `resourceFieldRef`, `configMapKeyRef` or \
             `secretKeyRef`",
        ));
    } else if !str_of(env, "value").is_empty() {
        causes.push(invalid(
            path,
            "\"\"",
            "may not be specified when `value` is not empty",
        ));
    } else if n > 1 {
        causes.push(invalid(
            path,
            "\"\"",
            "may not have more than one field specified at a time",
        ));
    }
    causes
}

/// A quantity field's text (clients send strings; numbers are accepted too).
fn quantity_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

const CONTAINER_RESOURCES: &[&str] = &["cpu", "memory", "ephemeral-storage"];
const OTHER_STANDARD_RESOURCES: &[&str] = &[
    "pods",
    "services",
    "replicationcontrollers",
    "resourcequotas",
    "secrets",
    "configmaps",
    "persistentvolumeclaims",
    "storage",
    "requests.cpu",
    "requests.memory",
    "requests.storage",
    "requests.ephemeral-storage",
    "limits.cpu",
    "limits.memory",
    "limits.ephemeral-storage",
    "services.nodeports",
    "services.loadbalancers",
];

fn is_native(name: &str) -> bool {
    !name.contains('/') || name.contains("kubernetes.io/")
}

/// Hugepages and extended resources may not be overcommitted (`IsOvercommitAllowed`).
fn overcommit_allowed(name: &str) -> bool {
    is_native(name) && !name.starts_with("hugepages-")
}

/// `ValidateContainerResourceName`.
fn resource_name_problems(name: &str) -> Vec<String> {
    let errs = qualified_name_problems(name);
    if !errs.is_empty() || name.contains('/') {
        return errs;
    }
    if CONTAINER_RESOURCES.contains(&name) || name.starts_with("hugepages-") {
        Vec::new()
    } else if OTHER_STANDARD_RESOURCES.contains(&name) {
        vec!["must be a standard resource for containers".into()]
    } else {
        vec!["must be a standard resource type or fully qualified".into()]
    }
}

/// `ValidateContainerResourceRequirements`: names, non-negative quantities, requests ≤ limits
/// (= for resources that cannot be overcommitted).
pub(super) fn resources(r: &Value, path: &str) -> Vec<Cause> {
    let mut causes = Vec::new();
    let parse = |v: &Value| quantity_text(v).and_then(|t| rk3s_quota::parse(&t));
    let limits = obj_of(r, "limits");
    let zero = rk3s_quota::Quantity::default();
    for (name, v) in limits.into_iter().flatten() {
        let fp = format!("{path}.limits[{name}]");
        for m in resource_name_problems(name) {
            causes.push(invalid(&fp, &q(name), &m));
        }
        if let Some(qty) = parse(v)
            && qty.0 < zero
        {
            causes.push(invalid(
                &fp,
                &q(&rk3s_quota::text(qty)),
                "must be greater than or equal to 0",
            ));
        }
    }
    for (name, v) in obj_of(r, "requests").into_iter().flatten() {
        let fp = format!("{path}.requests[{name}]");
        for m in resource_name_problems(name) {
            causes.push(invalid(&fp, &q(name), &m));
        }
        let Some(qty) = parse(v) else { continue };
        if qty.0 < zero {
            causes.push(invalid(
                &fp,
                &q(&rk3s_quota::text(qty)),
                "must be greater than or equal to 0",
            ));
        }
        match limits.and_then(|l| l.get(name)).and_then(parse) {
            Some(limit) => {
                let req_text = q(&rk3s_quota::text(qty));
                let limit_text = rk3s_quota::text(limit);
                if qty.0 != limit.0 && !overcommit_allowed(name) {
                    causes.push(invalid(
                        format!("{path}.requests"),
                        &req_text,
                        &format!("must be equal to {name} limit of {limit_text}"),
                    ));
                } else if qty.0 > limit.0 {
                    causes.push(invalid(
                        format!("{path}.requests"),
                        &req_text,
                        &format!("must be less than or equal to {name} limit of {limit_text}"),
                    ));
                }
            }
            None if !overcommit_allowed(name) => causes.push(required(
                format!("{path}.limits"),
                "Limit must be set for non overcommitable resources",
            )),
            None => {}
        }
    }
    causes
}

/// `validateProbe` with the liveness/readiness/startup rules.
fn validate_probe(kind: &str, probe: &Value, path: &str) -> Vec<Cause> {
    let mut causes = validate_handler(probe, path);
    for f in [
        "initialDelaySeconds",
        "timeoutSeconds",
        "periodSeconds",
        "successThreshold",
        "failureThreshold",
    ] {
        if let Some(n) = probe.get(f).and_then(Value::as_i64)
            && n < 0
        {
            causes.push(invalid(
                format!("{path}.{f}"),
                &n.to_string(),
                "must be greater than or equal to 0",
            ));
        }
    }
    if let Some(t) = probe
        .get("terminationGracePeriodSeconds")
        .and_then(Value::as_i64)
    {
        if kind == "readinessProbe" {
            causes.push(invalid(
                format!("{path}.terminationGracePeriodSeconds"),
                &t.to_string(),
                "must not be set for readinessProbes",
            ));
        } else if t <= 0 {
            causes.push(invalid(
                format!("{path}.terminationGracePeriodSeconds"),
                &t.to_string(),
                "must be greater than 0",
            ));
        }
    }
    if kind != "readinessProbe"
        && let Some(s) = probe.get("successThreshold").and_then(Value::as_i64)
        && s != 1
    {
        causes.push(invalid(
            format!("{path}.successThreshold"),
            &s.to_string(),
            "must be 1",
        ));
    }
    causes
}

/// `validateHandler`: exactly one of exec, httpGet, tcpSocket, grpc, sleep.
fn validate_handler(h: &Value, path: &str) -> Vec<Cause> {
    let mut causes = Vec::new();
    let mut n = 0;
    for kind in ["exec", "httpGet", "tcpSocket", "grpc", "sleep"] {
        let Some(a) = h.get(kind).filter(|v| !v.is_null()) else {
            continue;
        };
        if n > 0 {
            causes.push(forbidden(
                format!("{path}.{kind}"),
                "may not specify more than 1 handler type",
            ));
            continue;
        }
        n += 1;
        let p = format!("{path}.{kind}");
        match kind {
            "exec" if list(a, "command").is_empty() => {
                causes.push(required(format!("{p}.command"), ""));
            }
            "httpGet" => {
                if str_of(a, "path").is_empty() {
                    causes.push(required(format!("{p}.path"), ""));
                }
                causes.extend(port_num_or_name(a.get("port"), &p));
                let scheme = str_of(a, "scheme");
                if !["HTTP", "HTTPS"].contains(&scheme) {
                    causes.push(not_supported(
                        format!("{p}.scheme"),
                        &q(scheme),
                        &["HTTP", "HTTPS"],
                    ));
                }
                for h in list(a, "httpHeaders") {
                    let name = str_of(h, "name");
                    let ok = !name.is_empty()
                        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
                    if !ok {
                        causes.push(invalid(
                            format!("{p}.httpHeaders"),
                            &q(name),
                            "a valid HTTP header must consist of alphanumeric characters or \
                             '-' (e.g. 'X-Header-Name', regex used for validation is \
                             '[-A-Za-z0-9]+')",
                        ));
                    }
                }
            }
            "tcpSocket" => causes.extend(port_num_or_name(a.get("port"), &p)),
            "grpc" => {
                let port = a.get("port").and_then(Value::as_i64).unwrap_or(0);
                for m in port_num_problems(port) {
                    causes.push(invalid(format!("{p}.port"), &port.to_string(), &m));
                }
            }
            _ => {}
        }
    }
    if n == 0 {
        causes.push(required(path, "must specify a handler type"));
    }
    causes
}

fn port_num_or_name(port: Option<&Value>, p: &str) -> Vec<Cause> {
    let field = format!("{p}.port");
    match port {
        Some(Value::String(s)) => port_name_problems(s)
            .into_iter()
            .map(|m| invalid(&field, &q(s), &m))
            .collect(),
        Some(v) => {
            let n = v.as_i64().unwrap_or(0);
            port_num_problems(n)
                .into_iter()
                .map(|m| invalid(&field, &n.to_string(), &m))
                .collect()
        }
        None => port_num_problems(0)
            .into_iter()
            .map(|m| invalid(&field, "0", &m))
            .collect(),
    }
}

// ---- volumes ---------------------------------------------------------------------------------

/// `ValidateVolumes`: names (DNS labels, unique), exactly one source and its fields
/// ([`volumes::volume_source`]). Returns the valid volumes (what mounts may reference) with
/// their source's kind.
fn validate_volumes(
    spec: &Value,
    path: &str,
    is_pod: bool,
    causes: &mut Vec<Cause>,
) -> BTreeMap<String, Option<&'static str>> {
    let mut names = BTreeMap::new();
    for (i, vol) in list(spec, "volumes").iter().enumerate() {
        let p = format!("{path}[{i}]");
        let (kind, mut errs) = volumes::volume_source(vol, &p, is_pod);
        let name = str_of(vol, "name");
        if name.is_empty() {
            errs.push(required(format!("{p}.name"), ""));
        } else {
            for m in dns_problems(NameRule::Label, name) {
                errs.push(invalid(format!("{p}.name"), &q(name), &m));
            }
        }
        if names.contains_key(name) {
            errs.push(duplicate(format!("{p}.name"), &q(name)));
        }
        if errs.is_empty() {
            names.insert(name.to_string(), kind);
        } else {
            causes.extend(errs);
        }
    }
    names
}

// ---- tolerations -----------------------------------------------------------------------------

/// `ValidateTolerations`.
pub(super) fn validate_tolerations(tolerations: &[&Value], path: &str) -> Vec<Cause> {
    let mut causes = Vec::new();
    for (i, t) in tolerations.iter().enumerate() {
        let p = format!("{path}[{i}]");
        let key = str_of(t, "key");
        let op = str_of(t, "operator");
        let effect = str_of(t, "effect");
        if !key.is_empty() {
            for m in qualified_name_problems(key) {
                causes.push(invalid(format!("{p}.key"), &q(key), &m));
            }
        }
        if key.is_empty() && op != "Exists" {
            causes.push(invalid(
                format!("{p}.operator"),
                &q(op),
                "operator must be Exists when `key` is empty, which means \"match all values \
                 and all keys\"",
            ));
        }
        if t.get("tolerationSeconds").is_some_and(|v| !v.is_null()) && effect != "NoExecute" {
            causes.push(invalid(
                format!("{p}.effect"),
                &q(effect),
                "effect must be 'NoExecute' when `tolerationSeconds` is set",
            ));
        }
        let value = str_of(t, "value");
        match op {
            "Equal" | "" => {
                let errs = label_value_problems(value);
                if !errs.is_empty() {
                    causes.push(invalid(format!("{p}.operator"), &q(value), &errs.join(";")));
                }
            }
            "Exists" => {
                if !value.is_empty() {
                    causes.push(invalid(
                        format!("{p}.operator"),
                        &toleration_struct(t),
                        "value must be empty when `operator` is 'Exists'",
                    ));
                }
            }
            _ => causes.push(not_supported(
                format!("{p}.operator"),
                &q(op),
                &["Equal", "Exists"],
            )),
        }
        if !effect.is_empty() && !["NoSchedule", "PreferNoSchedule", "NoExecute"].contains(&effect)
        {
            causes.push(not_supported(
                format!("{p}.effect"),
                &q(effect),
                &["NoSchedule", "PreferNoSchedule", "NoExecute"],
            ));
        }
    }
    causes
}

/// A toleration as Go's `%#v` shows `core.Toleration` (the seconds pointer as its value).
pub(super) fn toleration_struct(t: &Value) -> String {
    let secs = match t.get("tolerationSeconds").and_then(Value::as_i64) {
        Some(s) => format!("(*int64)({s})"),
        None => "(*int64)(nil)".into(),
    };
    format!(
        "core.Toleration{{Key:{}, Operator:{}, Value:{}, Effect:{}, TolerationSeconds:{secs}}}",
        q(str_of(t, "key")),
        q(str_of(t, "operator")),
        q(str_of(t, "value")),
        q(str_of(t, "effect")),
    )
}

// ---- pod update ------------------------------------------------------------------------------

const POD_UPDATE_FORBIDDEN: &str = "pod updates may not change fields other than \
    `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,\
    `spec.tolerations` (only additions to existing tolerations),\
    `spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)";

/// `ValidatePodUpdate`: only container images, `activeDeadlineSeconds` (set, or lowered),
/// added tolerations (or changed `tolerationSeconds`), removed scheduling gates and a negative
/// `terminationGracePeriodSeconds` set to 1 may change in a pod's spec.
fn validate_pod_update(new: &Value, old: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let null = Value::Null;
    let (ns, os) = (
        new.get("spec").unwrap_or(&null),
        old.get("spec").unwrap_or(&null),
    );
    for key in ["containers", "initContainers"] {
        let (nc, oc) = (list(ns, key), list(os, key));
        let path = format!("spec.{key}");
        if nc.len() != oc.len() {
            causes.push(forbidden(
                path,
                "pod updates may not add or remove containers",
            ));
            return causes;
        }
        for (i, c) in nc.iter().enumerate() {
            let image = str_of(c, "image");
            if image.is_empty() {
                causes.push(required(format!("{path}[{i}].image"), ""));
            }
            if image.trim() != image {
                causes.push(invalid(
                    format!("{path}[{i}].image"),
                    &q(image),
                    "must not have leading or trailing whitespace",
                ));
            }
        }
    }
    let new_ads = ns.get("activeDeadlineSeconds").and_then(Value::as_i64);
    let old_ads = os.get("activeDeadlineSeconds").and_then(Value::as_i64);
    match (new_ads, old_ads) {
        (Some(n), _) if !(0..=i64::from(i32::MAX)).contains(&n) => {
            causes.push(invalid(
                "spec.activeDeadlineSeconds",
                &n.to_string(),
                &format!("must be between 0 and {}, inclusive", i32::MAX),
            ));
            return causes;
        }
        (Some(n), Some(o)) if o < n => {
            causes.push(invalid(
                "spec.activeDeadlineSeconds",
                &n.to_string(),
                "must be less than or equal to previous value",
            ));
            return causes;
        }
        (None, Some(_)) => causes.push(invalid(
            "spec.activeDeadlineSeconds",
            "null",
            "must not update from a positive integer to nil value",
        )),
        _ => {}
    }
    // Only additions to tolerations (an existing one may change its tolerationSeconds).
    let new_tols = list(ns, "tolerations");
    for o in list(os, "tolerations") {
        let found = new_tols.iter().any(|n| {
            let mut o = o.clone();
            let mut n = (*n).clone();
            if let (Some(o), Some(n)) = (o.as_object_mut(), n.as_object_mut()) {
                o.remove("tolerationSeconds");
                n.remove("tolerationSeconds");
            }
            normalized(&o) == normalized(&n)
        });
        if !found {
            causes.push(forbidden(
                "spec.tolerations",
                "existing toleration can not be modified except its tolerationSeconds",
            ));
            break;
        }
    }
    // Only deletions of scheduling gates.
    let old_gates: BTreeSet<&str> = list(os, "schedulingGates")
        .iter()
        .map(|g| str_of(g, "name"))
        .collect();
    for (i, g) in list(ns, "schedulingGates").iter().enumerate() {
        let name = str_of(g, "name");
        if !old_gates.contains(name) {
            causes.push(forbidden(
                format!("spec.schedulingGates[{i}].name"),
                &format!("only deletion is allowed, but found new scheduling gate '{name}'"),
            ));
        }
    }
    // The rest of the spec must be unchanged.
    let mut munged = ns.clone();
    if let Some(m) = munged.as_object_mut() {
        for key in ["containers", "initContainers"] {
            if let Some(cs) = m.get_mut(key).and_then(Value::as_array_mut) {
                for (c, o) in cs.iter_mut().zip(list(os, key)) {
                    if let Some(c) = c.as_object_mut() {
                        match o.get("image") {
                            Some(img) => c.insert("image".into(), img.clone()),
                            None => c.remove("image"),
                        };
                    }
                }
            }
        }
        for key in ["activeDeadlineSeconds", "schedulingGates", "tolerations"] {
            match os.get(key) {
                Some(v) => m.insert(key.into(), v.clone()),
                None => m.remove(key),
            };
        }
        let old_grace = os
            .get("terminationGracePeriodSeconds")
            .and_then(Value::as_i64);
        if old_grace.is_some_and(|g| g < 0)
            && m.get("terminationGracePeriodSeconds")
                .and_then(Value::as_i64)
                == Some(1)
            && let Some(g) = os.get("terminationGracePeriodSeconds")
        {
            m.insert("terminationGracePeriodSeconds".into(), g.clone());
        }
    }
    let (munged, old_spec) = (normalized(&munged), normalized(os));
    if munged != old_spec {
        let mut diff = Vec::new();
        json_diff("", &old_spec, &munged, &mut diff);
        causes.push(forbidden(
            "spec",
            &format!("{POD_UPDATE_FORBIDDEN}\n{}", diff.join("\n")),
        ));
    }
    causes
}

/// A JSON value with nulls and empty lists left out (as upstream's semantic equality treats
/// a nil list as an empty one).
pub(super) fn normalized(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(_, v)| !v.is_null() && !v.as_array().is_some_and(Vec::is_empty))
                .map(|(k, v)| (k.clone(), normalized(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(normalized).collect()),
        other => other.clone(),
    }
}

/// The changed leaves between `old` and `new`, as `-path: old` / `+path: new` lines (upstream
/// prints a `cmp.Diff` of the Go structs here).
pub(super) fn json_diff(path: &str, old: &Value, new: &Value, out: &mut Vec<String>) {
    match (old, new) {
        (Value::Object(o), Value::Object(n)) => {
            let keys: BTreeSet<&String> = o.keys().chain(n.keys()).collect();
            for k in keys {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                json_diff(
                    &p,
                    o.get(k).unwrap_or(&Value::Null),
                    n.get(k).unwrap_or(&Value::Null),
                    out,
                );
            }
        }
        (Value::Array(o), Value::Array(n)) if o.len() == n.len() => {
            for (i, (a, b)) in o.iter().zip(n).enumerate() {
                json_diff(&format!("{path}[{i}]"), a, b, out);
            }
        }
        (a, b) if a == b => {}
        (a, b) => {
            if !a.is_null() {
                out.push(format!("- {path}: {a}"));
            }
            if !b.is_null() {
                out.push(format!("+ {path}: {b}"));
            }
        }
    }
}

// ---- ConfigMap and Secret --------------------------------------------------------------------

/// Upstream's `MaxSecretSize` (also a ConfigMap's limit).
const MAX_DATA_SIZE: usize = 1024 * 1024;

/// `ValidateConfigMap` / `ValidateConfigMapUpdate`.
fn validate_config_map(obj: &Value, old: Option<&Value>) -> Vec<Cause> {
    let mut causes = Vec::new();
    if let Some(old) = old {
        causes.extend(immutable_data(obj, old, &["data", "binaryData"]));
    }
    let data = obj_of(obj, "data");
    let binary = obj_of(obj, "binaryData");
    let mut total = 0;
    for (k, v) in data.into_iter().flatten() {
        for m in config_key_problems(k) {
            causes.push(invalid(format!("data[{k}]"), &q(k), &m));
        }
        if binary.is_some_and(|b| b.contains_key(k)) {
            causes.push(invalid(
                format!("data[{k}]"),
                &q(k),
                "duplicate of key present in binaryData",
            ));
        }
        total += v.as_str().map_or(0, str::len);
    }
    for (k, v) in binary.into_iter().flatten() {
        for m in config_key_problems(k) {
            causes.push(invalid(format!("binaryData[{k}]"), &q(k), &m));
        }
        if data.is_some_and(|d| d.contains_key(k)) {
            causes.push(invalid(
                format!("binaryData[{k}]"),
                &q(k),
                "duplicate of key present in data",
            ));
        }
        total += decoded(v).map_or(0, |b| b.len());
    }
    if total > MAX_DATA_SIZE {
        causes.push(too_long("", MAX_DATA_SIZE));
    }
    causes
}

fn decoded(v: &Value) -> Option<Vec<u8>> {
    use base64::Engine as _;
    v.as_str()
        .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
}

/// An `immutable: true` object refuses to become mutable and changes to its data.
fn immutable_data(obj: &Value, old: &Value, fields: &[&str]) -> Vec<Cause> {
    let mut causes = Vec::new();
    if old.get("immutable").and_then(Value::as_bool) != Some(true) {
        return causes;
    }
    const MSG: &str = "field is immutable when `immutable` is set";
    if obj.get("immutable").and_then(Value::as_bool) != Some(true) {
        causes.push(forbidden("immutable", MSG));
    }
    let empty = Value::Object(serde_json::Map::new());
    for f in fields {
        let n = obj.get(*f).filter(|v| !v.is_null()).unwrap_or(&empty);
        let o = old.get(*f).filter(|v| !v.is_null()).unwrap_or(&empty);
        if n != o {
            causes.push(forbidden(*f, MSG));
        }
    }
    causes
}

/// Go's `json.Unmarshal` error for `bytes` decoded into a `map[string]interface{}` (the
/// common cases; `None` when it decodes).
fn go_json_object_error(bytes: &[u8]) -> Option<String> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(_)) => None,
        Ok(v) => {
            let kind = match v {
                Value::Array(_) => "array",
                Value::String(_) => "string",
                Value::Number(_) => "number",
                Value::Bool(_) => "bool",
                _ => return None,
            };
            Some(format!(
                "json: cannot unmarshal {kind} into Go value of type map[string]interface {{}}"
            ))
        }
        Err(e) if e.is_eof() => Some("unexpected end of JSON input".into()),
        Err(e) => {
            let first = bytes
                .iter()
                .find(|b| !b.is_ascii_whitespace())
                .map(|&b| char::from(b));
            match first {
                Some(c) if !matches!(c, '{' | '[' | '"' | '-' | '0'..='9' | 't' | 'f' | 'n') => {
                    Some(format!(
                        "invalid character '{c}' looking for beginning of value"
                    ))
                }
                _ => Some(e.to_string()),
            }
        }
    }
}

/// `ValidateSecret` / `ValidateSecretUpdate` (the service-account-token annotation is checked
/// by the token code, not here).
fn validate_secret(obj: &Value, old: Option<&Value>) -> Vec<Cause> {
    let mut causes = Vec::new();
    let type_of = |v: &Value| match str_of(v, "type") {
        "" => "Opaque".to_string(),
        t => t.to_string(),
    };
    let ty = type_of(obj);
    if let Some(old) = old {
        if type_of(old) != ty {
            causes.push(invalid("type", &q(&ty), "field is immutable"));
        }
        causes.extend(immutable_data(obj, old, &["data"]));
    }
    let data = obj_of(obj, "data");
    let mut total = 0;
    for (k, v) in data.into_iter().flatten() {
        for m in config_key_problems(k) {
            causes.push(invalid(format!("data[{k}]"), &q(k), &m));
        }
        total += decoded(v).map_or(0, |b| b.len());
    }
    if total > MAX_DATA_SIZE {
        causes.push(too_long("data", MAX_DATA_SIZE));
    }
    let has = |k: &str| data.is_some_and(|d| d.contains_key(k));
    match ty.as_str() {
        "kubernetes.io/dockercfg" | "kubernetes.io/dockerconfigjson" => {
            let key = if ty == "kubernetes.io/dockercfg" {
                ".dockercfg"
            } else {
                ".dockerconfigjson"
            };
            match data.and_then(|d| d.get(key)) {
                None => causes.push(required(format!("data[{key}]"), "")),
                Some(v) => {
                    if let Some(err) = go_json_object_error(&decoded(v).unwrap_or_default()) {
                        causes.push(invalid(
                            format!("data[{key}]"),
                            "\"<secret contents redacted>\"",
                            &err,
                        ));
                    }
                }
            }
        }
        "kubernetes.io/basic-auth" if !has("username") && !has("password") => {
            causes.push(required("data[username]", ""));
            causes.push(required("data[password]", ""));
        }
        "kubernetes.io/ssh-auth" => {
            let empty = data
                .and_then(|d| d.get("ssh-privatekey"))
                .and_then(decoded)
                .is_none_or(|b| b.is_empty());
            if empty {
                causes.push(required("data[ssh-privatekey]", ""));
            }
        }
        "kubernetes.io/tls" => {
            for key in ["tls.crt", "tls.key"] {
                if !has(key) {
                    causes.push(required(format!("data[{key}]"), ""));
                }
            }
        }
        _ => {}
    }
    causes
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    use crate::status::cause_lines as fields;

    fn pod_spec(containers: Value) -> Value {
        json!({
            "containers": containers,
            "restartPolicy": "Always",
            "dnsPolicy": "ClusterFirst",
            "terminationGracePeriodSeconds": 30,
        })
    }

    fn container(name: &str, image: &str) -> Value {
        json!({
            "name": name, "image": image, "imagePullPolicy": "IfNotPresent",
            "terminationMessagePolicy": "File",
        })
    }

    #[test]
    fn a_typical_pod_spec_is_valid() {
        let mut c = container("web", "nginx:1.27");
        c["ports"] = json!([{"name": "http", "containerPort": 80, "protocol": "TCP"}]);
        c["env"] = json!([{"name": "A", "value": "1"},
            {"name": "POD", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}}]);
        c["volumeMounts"] = json!([{"name": "data", "mountPath": "/data"}]);
        c["resources"] =
            json!({"requests": {"cpu": "100m"}, "limits": {"cpu": "1", "memory": "1Gi"}});
        c["livenessProbe"] = json!({"httpGet": {"port": "http", "path": "/", "scheme": "HTTP"}, "successThreshold": 1});
        let mut spec = pod_spec(json!([c]));
        spec["volumes"] = json!([{"name": "data", "emptyDir": {}}]);
        spec["tolerations"] = json!([{"key": "node.kubernetes.io/not-ready", "operator": "Exists",
            "effect": "NoExecute", "tolerationSeconds": 300}]);
        spec["nodeSelector"] = json!({"kubernetes.io/os": "linux"});
        assert_eq!(
            fields(&validate_pod_spec(&spec, "spec")),
            Vec::<String>::new()
        );
    }

    #[test]
    fn bad_containers() {
        let spec = pod_spec(json!([container("C_bad", ""), container("C_bad", "x")]));
        let got = fields(&validate_pod_spec(&spec, "spec"));
        assert!(got[0].starts_with(
            "spec.containers[0].name: Invalid value: \"C_bad\": a lowercase RFC 1123 label"
        ));
        assert!(got.contains(&"spec.containers[0].image: Required value".to_string()));
        assert!(got.contains(&"spec.containers[1].name: Duplicate value: \"C_bad\"".to_string()));
        let empty = fields(&validate_pod_spec(&pod_spec(json!([])), "spec"));
        assert_eq!(empty, vec!["spec.containers: Required value".to_string()]);
    }

    #[test]
    fn ports_env_mounts_resources_probes() {
        let mut c = container("a", "x");
        c["ports"] = json!([{"containerPort": 70000, "protocol": "HTTP"}]);
        c["env"] = json!([{"name": "A=B"}]);
        c["volumeMounts"] = json!([{"name": "nope", "mountPath": "/x"}]);
        c["resources"] = json!({"requests": {"cpu": "2"}, "limits": {"cpu": "1"}});
        c["readinessProbe"] = json!({"exec": {"command": ["true"]}, "tcpSocket": {"port": 80}});
        let got = fields(&validate_pod_spec(&pod_spec(json!([c])), "spec"));
        let want = [
            "spec.containers[0].ports[0].containerPort: Invalid value: 70000: must be between 1 and 65535, inclusive",
            "spec.containers[0].ports[0].protocol: Unsupported value: \"HTTP\": supported values: \"SCTP\", \"TCP\", \"UDP\"",
            "spec.containers[0].env[0].name: Invalid value: \"A=B\": a valid environment variable name must consist only of printable ASCII characters other than '='",
            "spec.containers[0].volumeMounts[0].name: Not found: \"nope\"",
            "spec.containers[0].resources.requests: Invalid value: \"2\": must be less than or equal to cpu limit of 1",
            "spec.containers[0].readinessProbe.tcpSocket: Forbidden: may not specify more than 1 handler type",
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn volumes_policies_tolerations() {
        let mut spec = pod_spec(json!([container("a", "x")]));
        spec["volumes"] =
            json!([{"name": "v"}, {"name": "w", "emptyDir": {}, "hostPath": {"path": "/"}}]);
        spec["restartPolicy"] = json!("Sometimes");
        spec["tolerations"] = json!([{"operator": "Equal", "value": "x"}, {"key": "k", "operator": "Maybe", "effect": "Never"}]);
        let got = fields(&validate_pod_spec(&spec, "spec"));
        let want = [
            "spec.volumes[0]: Required value: must specify a volume type",
            "spec.volumes[1].hostPath: Forbidden: may not specify more than 1 volume type",
            "spec.restartPolicy: Unsupported value: \"Sometimes\": supported values: \"Always\", \"OnFailure\", \"Never\"",
            "spec.tolerations[0].operator: Invalid value: \"Equal\": operator must be Exists when `key` is empty, which means \"match all values and all keys\"",
            "spec.tolerations[1].operator: Unsupported value: \"Maybe\": supported values: \"Equal\", \"Exists\"",
            "spec.tolerations[1].effect: Unsupported value: \"Never\": supported values: \"NoSchedule\", \"PreferNoSchedule\", \"NoExecute\"",
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn pod_updates() {
        let old = json!({"spec": pod_spec(json!([container("a", "x")]))});
        let mut image = old.clone();
        image["spec"]["containers"][0]["image"] = json!("y");
        image["spec"]["activeDeadlineSeconds"] = json!(30);
        assert!(validate_pod_update(&image, &old).is_empty());
        let mut args = old.clone();
        args["spec"]["containers"][0]["args"] = json!(["--x"]);
        let got = validate_pod_update(&args, &old);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].field, "spec");
        assert!(
            got[0]
                .message
                .starts_with(&format!("Forbidden: {POD_UPDATE_FORBIDDEN}\n"))
        );
        let mut more = old.clone();
        more["spec"]["containers"] = json!([container("a", "x"), container("b", "x")]);
        assert_eq!(
            fields(&validate_pod_update(&more, &old)),
            vec!["spec.containers: Forbidden: pod updates may not add or remove containers"]
        );
    }

    #[test]
    fn templates_namespaces_and_claims() {
        let rc = json!({"spec": {"template": {"metadata": {"labels": {"app": "bad value!"}}, "spec": {
            "containers": [container("a", "x")], "restartPolicy": "Never", "dnsPolicy": "ClusterFirst",
            "terminationGracePeriodSeconds": 30,
        }}}});
        let got = fields(&template_spec(
            rc["spec"].get("template"),
            "spec.template",
            true,
        ));
        assert!(got[0].starts_with("spec.template.labels: Invalid value: \"bad value!\""));
        assert_eq!(
            got[1..],
            vec![
                "spec.template.spec.restartPolicy: Unsupported value: \"Never\": supported values: \"Always\""
            ]
        );
        let ns = json!({"spec": {"finalizers": ["kubernetes", "custom"]}});
        assert_eq!(
            fields(&namespace_finalizers(&ns)),
            vec![
                "spec.finalizers: Invalid value: \"custom\": name is neither a standard finalizer name nor is it fully qualified"
            ]
        );
        let claim = json!({"accessModes": ["ReadWriteOnce", "ReadWriteOncePod", "Sometimes"],
            "resources": {"requests": {"storage": "0"}}});
        assert_eq!(
            fields(&claim_spec(&claim, "spec")),
            vec![
                "spec.accessModes: Unsupported value: \"Sometimes\": supported values: \"ReadOnlyMany\", \"ReadWriteMany\", \"ReadWriteOnce\", \"ReadWriteOncePod\"",
                "spec.accessModes: Forbidden: may not use ReadWriteOncePod with other access modes",
                "spec.resources[storage]: Invalid value: \"0\": must be greater than zero",
            ]
        );
        assert_eq!(
            fields(&claim_spec(&json!({}), "spec")),
            vec![
                "spec.accessModes: Required value: at least 1 access mode is required",
                "spec.resources[storage]: Required value"
            ]
        );
    }

    #[test]
    fn devices_resize_policies_and_ephemeral_containers_in_a_pod() {
        let mut c = container("app", "nginx");
        c["volumeDevices"] = json!([{"name": "cache", "devicePath": "/dev/xvda"}]);
        c["volumeMounts"] = json!([{"name": "data", "mountPath": "/dev/xvda"}]);
        c["resizePolicy"] = json!([{"resourceName": "cpu", "restartPolicy": "RestartContainer"}]);
        let mut init = container("init", "busybox");
        init["resizePolicy"] = json!([{"resourceName": "memory", "restartPolicy": "NotRequired"}]);
        let mut debug = container("debug", " busybox");
        debug["targetContainerName"] = json!("init");
        debug["ports"] = json!([{"containerPort": 80, "protocol": "TCP"}]);
        debug["resources"] = json!({});
        let mut spec = pod_spec(json!([c]));
        spec["restartPolicy"] = json!("Never");
        spec["initContainers"] = json!([init]);
        spec["ephemeralContainers"] = json!([debug]);
        spec["volumes"] = json!([{"name": "data", "persistentVolumeClaim": {"claimName": "d"}},
            {"name": "cache", "emptyDir": {}}]);
        let pod = json!({ "spec": spec });
        let pods = crate::registry::REGISTRY
            .find("", "v1", "pods")
            .expect("pods");
        let got = fields(&validate(pods, &pod, None));
        let want = [
            "spec.containers[0].volumeMounts[0].mountPath: Invalid value: \"/dev/xvda\": must not already exist as a path in volumeDevices",
            "spec.containers[0].volumeDevices[0].name: Invalid value: \"cache\": can only use volume source type of PersistentVolumeClaim or Ephemeral for block mode",
            "spec.containers[0].volumeDevices[0].devicePath: Invalid value: \"/dev/xvda\": must not already exist as a path in volumeMounts",
            "spec.containers[0].resizePolicy: Invalid value: \"RestartContainer\": must be 'NotRequired' when `restartPolicy` is 'Never'",
            "spec.ephemeralContainers[0].image: Invalid value: \" busybox\": must not have leading or trailing whitespace",
            "spec.ephemeralContainers[0].ports: Forbidden: cannot be set for an Ephemeral Container",
            "spec.ephemeralContainers: Forbidden: cannot be set on create",
        ];
        assert_eq!(got, want);
        // A pod's own containers' images are checked too (a template's are not).
        let mut spec = pod_spec(json!([container("app", "nginx ")]));
        assert_eq!(
            fields(&validate(pods, &json!({ "spec": spec.clone() }), None)),
            [
                "spec.containers[0].image: Invalid value: \"nginx \": must not have leading or trailing whitespace"
            ]
        );
        spec["activeDeadlineSeconds"] = json!(30);
        let rc = crate::registry::REGISTRY
            .find("", "v1", "replicationcontrollers")
            .expect("replicationcontrollers");
        let obj = json!({"spec": {"template": {"metadata": {"labels": {"a": "b"}}, "spec": spec}}});
        assert_eq!(
            fields(&validate(rc, &obj, None)),
            [
                "spec.template.spec.activeDeadlineSeconds: Forbidden: activeDeadlineSeconds in ReplicationController is not Supported"
            ]
        );
    }

    #[test]
    fn config_maps_and_secrets() {
        let cm = json!({"data": {"bad key!": "v", "k": "v"}, "binaryData": {"k": "dg=="}});
        let got = fields(&validate_config_map(&cm, None));
        assert!(got[0].starts_with("data[bad key!]: Invalid value: \"bad key!\": a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name'"));
        assert_eq!(
            got[1],
            "data[k]: Invalid value: \"k\": duplicate of key present in binaryData"
        );
        assert_eq!(
            got[2],
            "binaryData[k]: Invalid value: \"k\": duplicate of key present in data"
        );
        let old = json!({"immutable": true, "data": {"a": "1"}});
        let new = json!({"immutable": true, "data": {"a": "2"}});
        assert_eq!(
            fields(&validate_config_map(&new, Some(&old))),
            vec!["data: Forbidden: field is immutable when `immutable` is set"]
        );
        let tls = json!({"type": "kubernetes.io/tls", "data": {"tls.crt": ""}});
        assert_eq!(
            fields(&validate_secret(&tls, None)),
            vec!["data[tls.key]: Required value"]
        );
        // "[]" in base64.
        let docker = json!({"type": "kubernetes.io/dockerconfigjson", "data": {".dockerconfigjson": "W10="}});
        assert_eq!(
            fields(&validate_secret(&docker, None)),
            vec![
                "data[.dockerconfigjson]: Invalid value: \"<secret contents redacted>\": json: cannot unmarshal array into Go value of type map[string]interface {}"
            ]
        );
        let changed = json!({"type": "kubernetes.io/tls", "data": {"tls.crt": "", "tls.key": ""}});
        let opaque = json!({"type": "Opaque"});
        assert_eq!(
            fields(&validate_secret(&changed, Some(&opaque))),
            vec!["type: Invalid value: \"kubernetes.io/tls\": field is immutable"]
        );
    }
}
