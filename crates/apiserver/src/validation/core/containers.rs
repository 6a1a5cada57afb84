//! The container rules of upstream v1.33's `ValidatePodSpec` that [`super`]'s
//! `validateContainerCommon` delegates here: `volumeDevices` (`ValidateVolumeDevices`: a
//! volume backed by a claim — `persistentVolumeClaim` or `ephemeral` —, unique names and
//! paths, no `..` in a path, no overlap with the container's `volumeMounts`, and the mounts'
//! side of that overlap), `resizePolicy` (`validateResizePolicy`: `cpu`/`memory` once each,
//! `NotRequired`/`RestartContainer`, only `NotRequired` in a pod with `restartPolicy: Never`),
//! what ephemeral containers may not set (`validateEphemeralContainers`: the fields outside
//! upstream's allow-list, a `targetContainerName` that names no container or init container,
//! `subPath`/`subPathExpr` in mounts) and the pod-only image check
//! (`validateContainerOnlyForPod`).
//!
//! In v1.33 `InPlacePodVerticalScaling` is on by default, so init containers may have a
//! `resizePolicy` (upstream's `AllowSidecarResizePolicy`), and a `devicePath` need not be
//! absolute (upstream checks only for `..`).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::super::{
    duplicate, forbidden, invalid, items, not_found, not_supported, q, required, str_of,
};
use super::volumes;
use crate::status::Cause;

/// A container's `volumeMounts` or `volumeDevices` as upstream's `GetVolumeMountMap` /
/// `GetVolumeDeviceMap` see them: name → path (the last entry of a name wins).
pub(super) fn path_map<'a>(
    c: &'a Value,
    list: &str,
    path_field: &str,
) -> BTreeMap<&'a str, &'a str> {
    items(c, list)
        .iter()
        .map(|m| (str_of(m, "name"), str_of(m, path_field)))
        .collect()
}

/// `ValidateVolumeMounts`' overlap checks of the mount `m` at `mp`: neither its name nor its
/// path may be one of the container's devices.
pub(super) fn mount_device_overlap(
    m: &Value,
    devices: &BTreeMap<&str, &str>,
    mp: &str,
) -> Vec<Cause> {
    let mut causes = Vec::new();
    let name = str_of(m, "name");
    if devices.contains_key(name) {
        causes.push(invalid(
            format!("{mp}.name"),
            &q(name),
            "must not already exist in volumeDevices",
        ));
    }
    let path = str_of(m, "mountPath");
    if devices.values().any(|d| *d == path) {
        causes.push(invalid(
            format!("{mp}.mountPath"),
            &q(path),
            "must not already exist as a path in volumeDevices",
        ));
    }
    causes
}

/// `ValidateVolumeDevices` of the container `c` (`path` is its `volumeDevices`): `volumes` are
/// the pod's valid volumes with their source's kind, `mounts` the container's mounts.
pub(super) fn volume_devices(
    c: &Value,
    volumes: &BTreeMap<String, Option<&'static str>>,
    mounts: &BTreeMap<&str, &str>,
    path: &str,
) -> Vec<Cause> {
    let mut causes = Vec::new();
    let mut names = BTreeSet::new();
    let mut paths = BTreeSet::new();
    for (i, dev) in items(c, "volumeDevices").iter().enumerate() {
        let p = format!("{path}[{i}]");
        let name = str_of(dev, "name");
        let dev_path = str_of(dev, "devicePath");
        if name.is_empty() {
            causes.push(required(format!("{p}.name"), ""));
        }
        if names.contains(name) {
            causes.push(invalid(format!("{p}.name"), &q(name), "must be unique"));
        }
        match volumes.get(name) {
            Some(kind) => {
                if !matches!(kind, Some("persistentVolumeClaim" | "ephemeral")) {
                    causes.push(invalid(
                        format!("{p}.name"),
                        &q(name),
                        "can only use volume source type of PersistentVolumeClaim or Ephemeral \
                         for block mode",
                    ));
                }
            }
            None => causes.push(not_found(format!("{p}.name"), &q(name))),
        }
        if dev_path.is_empty() {
            causes.push(required(format!("{p}.devicePath"), ""));
        }
        if paths.contains(dev_path) {
            causes.push(invalid(
                format!("{p}.devicePath"),
                &q(dev_path),
                "must be unique",
            ));
        }
        if !dev_path.is_empty() && !volumes::no_backsteps(dev_path, "").is_empty() {
            causes.push(invalid(
                format!("{p}.devicePath"),
                &q(dev_path),
                "can not contain backsteps ('..')",
            ));
        } else {
            paths.insert(dev_path);
        }
        if mounts.contains_key(name) {
            causes.push(invalid(
                format!("{p}.name"),
                &q(name),
                "must not already exist in volumeMounts",
            ));
        }
        if mounts.values().any(|m| *m == dev_path) {
            causes.push(invalid(
                format!("{p}.devicePath"),
                &q(dev_path),
                "must not already exist as a path in volumeMounts",
            ));
        }
        if !name.is_empty() {
            names.insert(name);
        }
    }
    causes
}

/// `validateResizePolicy` of the container `c` (`path` is its `resizePolicy`) in a pod whose
/// `restartPolicy` is `pod_restart`. Upstream reports most of these at the list's path.
pub(super) fn resize_policy(c: &Value, pod_restart: &str, path: &str) -> Vec<Cause> {
    const RESOURCES: &[&str] = &["cpu", "memory"];
    const POLICIES: &[&str] = &["NotRequired", "RestartContainer"];
    let mut causes = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, p) in items(c, "resizePolicy").iter().enumerate() {
        let resource = str_of(p, "resourceName");
        if !seen.insert(resource) {
            causes.push(duplicate(format!("{path}[{i}]"), &q(resource)));
        }
        match resource {
            "cpu" | "memory" => {}
            "" => causes.push(required(path, "")),
            r => causes.push(not_supported(path, &q(r), RESOURCES)),
        }
        let policy = str_of(p, "restartPolicy");
        match policy {
            "NotRequired" | "RestartContainer" => {}
            "" => causes.push(required(path, "")),
            r => causes.push(not_supported(path, &q(r), POLICIES)),
        }
        if pod_restart == "Never" && policy != "NotRequired" {
            causes.push(invalid(
                path,
                &q(policy),
                "must be 'NotRequired' when `restartPolicy` is 'Never'",
            ));
        }
    }
    causes
}

/// The fields of an ephemeral container outside upstream's `allowedEphemeralContainerFields`,
/// in the order of the container's fields.
const EPHEMERAL_FORBIDDEN: &[&str] = &[
    "ports",
    "resources",
    "resizePolicy",
    "restartPolicy",
    "livenessProbe",
    "readinessProbe",
    "startupProbe",
    "lifecycle",
];

const EPHEMERAL_MSG: &str = "cannot be set for an Ephemeral Container";

/// Whether `field` of the container `c` differs from its Go zero value (a present list, even
/// empty, is set; `resources` is set when one of its own fields is).
fn is_set(c: &Value, field: &str) -> bool {
    match c.get(field) {
        None | Some(Value::Null) => false,
        Some(v) if field == "resources" => v
            .as_object()
            .is_some_and(|r| r.values().any(|x| !x.is_null())),
        Some(_) => true,
    }
}

/// What `validateEphemeralContainers` adds to the common checks for the ephemeral container
/// `c` at `p`: its `targetContainerName` must name one of `others` (the pod's containers and
/// init containers), the fields ephemeral containers may not set, and no mount `subPath` or
/// `subPathExpr`.
pub(super) fn ephemeral_rules(c: &Value, others: &BTreeSet<&str>, p: &str) -> Vec<Cause> {
    let mut causes = Vec::new();
    let target = str_of(c, "targetContainerName");
    if !target.is_empty() && !others.contains(target) {
        causes.push(not_found(format!("{p}.targetContainerName"), &q(target)));
    }
    for field in EPHEMERAL_FORBIDDEN {
        if is_set(c, field) {
            causes.push(forbidden(format!("{p}.{field}"), EPHEMERAL_MSG));
        }
    }
    for (i, m) in items(c, "volumeMounts").iter().enumerate() {
        for field in ["subPath", "subPathExpr"] {
            if !str_of(m, field).is_empty() {
                causes.push(forbidden(
                    format!("{p}.volumeMounts[{i}].{field}"),
                    EPHEMERAL_MSG,
                ));
            }
        }
    }
    causes
}

/// `validateContainerOnlyForPod`: a pod's container image (not a template's) has no leading
/// or trailing whitespace.
pub(super) fn image_whitespace(c: &Value, p: &str) -> Vec<Cause> {
    let image = str_of(c, "image");
    if image.trim() == image {
        return Vec::new();
    }
    vec![invalid(
        format!("{p}.image"),
        &q(image),
        "must not have leading or trailing whitespace",
    )]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    use crate::status::cause_lines as fields;

    fn volumes() -> BTreeMap<String, Option<&'static str>> {
        [
            ("claim", Some("persistentVolumeClaim")),
            ("scratch", Some("ephemeral")),
            ("cache", Some("emptyDir")),
        ]
        .into_iter()
        .map(|(n, k)| (n.to_string(), k))
        .collect()
    }

    #[test]
    fn devices_need_claims_unique_names_and_paths() {
        let c = json!({"volumeMounts": [{"name": "cache", "mountPath": "/dev/xvdb"}],
        "volumeDevices": [
            {"name": "claim", "devicePath": "/dev/xvda"},
            {"name": "claim", "devicePath": "/dev/xvda"},
            {"name": "cache", "devicePath": "/dev/xvdb"},
            {"name": "nope", "devicePath": "/dev/../sda"},
            {"name": "scratch", "devicePath": ""},
            {"name": "", "devicePath": "dev/rel"},
        ]});
        let mounts = path_map(&c, "volumeMounts", "mountPath");
        let got = fields(&volume_devices(
            &c,
            &volumes(),
            &mounts,
            "spec.containers[0].volumeDevices",
        ));
        let p = "spec.containers[0].volumeDevices";
        let want = [
            format!("{p}[1].name: Invalid value: \"claim\": must be unique"),
            format!("{p}[1].devicePath: Invalid value: \"/dev/xvda\": must be unique"),
            format!(
                "{p}[2].name: Invalid value: \"cache\": can only use volume source type of \
                 PersistentVolumeClaim or Ephemeral for block mode"
            ),
            format!(
                "{p}[2].name: Invalid value: \"cache\": must not already exist in volumeMounts"
            ),
            format!(
                "{p}[2].devicePath: Invalid value: \"/dev/xvdb\": must not already exist as a \
                 path in volumeMounts"
            ),
            format!("{p}[3].name: Not found: \"nope\""),
            format!(
                "{p}[3].devicePath: Invalid value: \"/dev/../sda\": can not contain backsteps ('..')"
            ),
            format!("{p}[4].devicePath: Required value"),
            format!("{p}[5].name: Required value"),
            format!("{p}[5].name: Not found: \"\""),
        ];
        assert_eq!(got, want);
        let devices = path_map(&c, "volumeDevices", "devicePath");
        let mount = json!({"name": "claim", "mountPath": "/dev/xvda"});
        assert_eq!(
            fields(&mount_device_overlap(&mount, &devices, "m")),
            [
                "m.name: Invalid value: \"claim\": must not already exist in volumeDevices",
                "m.mountPath: Invalid value: \"/dev/xvda\": must not already exist as a path in volumeDevices",
            ]
        );
    }

    #[test]
    fn resize_policies() {
        let c = json!({"resizePolicy": [
            {"resourceName": "cpu", "restartPolicy": "NotRequired"},
            {"resourceName": "memory", "restartPolicy": "RestartContainer"},
            {"resourceName": "cpu", "restartPolicy": "Sometimes"},
            {"resourceName": "disk"},
        ]});
        let p = "spec.containers[0].resizePolicy";
        assert_eq!(
            fields(&resize_policy(&c, "Always", p)),
            [
                format!("{p}[2]: Duplicate value: \"cpu\""),
                format!(
                    "{p}: Unsupported value: \"Sometimes\": supported values: \"NotRequired\", \
                     \"RestartContainer\""
                ),
                format!("{p}: Unsupported value: \"disk\": supported values: \"cpu\", \"memory\""),
                format!("{p}: Required value"),
            ]
        );
        let never = fields(&resize_policy(&c, "Never", p));
        assert_eq!(
            never[0],
            format!(
                "{p}: Invalid value: \"RestartContainer\": must be 'NotRequired' when \
                 `restartPolicy` is 'Never'"
            )
        );
        assert_eq!(never.len(), 7);
        assert!(resize_policy(&json!({}), "Never", p).is_empty());
    }

    #[test]
    fn ephemeral_containers_may_not_set_workload_fields() {
        let c = json!({"name": "debug", "image": "busybox", "targetContainerName": "gone",
            "ports": [{"containerPort": 80}], "resources": {"limits": {"cpu": "1"}},
            "resizePolicy": [], "restartPolicy": "Always", "livenessProbe": {},
            "readinessProbe": {}, "startupProbe": {}, "lifecycle": {},
            "volumeMounts": [{"name": "v", "mountPath": "/v", "subPath": "a", "subPathExpr": "b"}]});
        let others = BTreeSet::from(["app"]);
        let p = "spec.ephemeralContainers[0]";
        let mut want = vec![format!("{p}.targetContainerName: Not found: \"gone\"")];
        for f in EPHEMERAL_FORBIDDEN {
            want.push(format!("{p}.{f}: Forbidden: {EPHEMERAL_MSG}"));
        }
        for f in ["subPath", "subPathExpr"] {
            want.push(format!(
                "{p}.volumeMounts[0].{f}: Forbidden: {EPHEMERAL_MSG}"
            ));
        }
        assert_eq!(fields(&ephemeral_rules(&c, &others, p)), want);
        // Defaulted empty resources and a known target are fine.
        let ok = json!({"name": "debug", "image": "busybox", "targetContainerName": "app",
            "resources": {}, "stdin": true, "tty": true});
        assert!(ephemeral_rules(&ok, &others, p).is_empty());
        assert_eq!(
            fields(&image_whitespace(&json!({"image": " busybox"}), p)),
            [format!(
                "{p}.image: Invalid value: \" busybox\": must not have leading or trailing whitespace"
            )]
        );
    }
}
