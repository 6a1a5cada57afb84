//! Volume sources and downward API references as upstream v1.33's `validateVolumeSource` and
//! its helpers check them: exactly one source per volume (in upstream's order, with its own
//! field paths), `emptyDir.sizeLimit`, `hostPath` (path without `..`, `type`), `secret` and
//! `configMap` (name, `defaultMode`, items: key, relative path without `..`, `mode`), `nfs`,
//! `iscsi`, `persistentVolumeClaim`, `downwardAPI` (items' paths, `fieldRef` paths, resource
//! references, modes), `projected` (one source per item, duplicate paths, service account
//! tokens' expiration and path), `csi` (driver name, secret reference), `ephemeral` (the claim
//! template's metadata and spec), `image` (reference, pull policy), and the required fields of
//! the remaining in-tree sources; and env `fieldRef`/`resourceFieldRef` (`validEnvDownward
//! APIFieldPathExpressions`, `metadata.labels['k']`/`metadata.annotations['k']` subscripts,
//! `apiVersion` v1, resource names and divisors).
//!
//! Not covered: `clusterTrustBundle` projections beyond counting as a source, the name of the
//! claim an ephemeral volume creates (it needs the pod's name), `flexVolume` options,
//! `azureDisk`/`quobyte`/`fc` details beyond their required fields.

use std::collections::BTreeSet;

use serde_json::Value;

use super::super::{
    NameRule, dns_problems, forbidden, invalid, not_supported, q, qualified_name_problems,
    required, str_of, too_long,
};
use super::{claim_spec, list, quantity_text};
use crate::status::Cause;

/// Upstream's volume sources in `validateVolumeSource`'s order, with the path segment each
/// one's "more than 1 volume type" error uses (upstream's own spellings).
pub(super) const VOLUME_SOURCES: &[(&str, &str)] = &[
    ("emptyDir", "emptyDir"),
    ("hostPath", "hostPath"),
    ("gitRepo", "gitRepo"),
    ("gcePersistentDisk", "gcePersistentDisk"),
    ("awsElasticBlockStore", "awsElasticBlockStore"),
    ("secret", "secret"),
    ("nfs", "nfs"),
    ("iscsi", "iscsi"),
    ("glusterfs", "glusterfs"),
    ("flocker", "flocker"),
    ("persistentVolumeClaim", "persistentVolumeClaim"),
    ("rbd", "rbd"),
    ("cinder", "cinder"),
    ("cephfs", "cephFS"),
    ("quobyte", "quobyte"),
    ("downwardAPI", "downwarAPI"),
    ("fc", "fc"),
    ("flexVolume", "flexVolume"),
    ("configMap", "configMap"),
    ("azureFile", "azureFile"),
    ("vsphereVolume", "vsphereVolume"),
    ("photonPersistentDisk", "photonPersistentDisk"),
    ("portworxVolume", "portworxVolume"),
    ("azureDisk", "azureDisk"),
    ("storageos", "storageos"),
    ("projected", "projected"),
    ("scaleIO", "scaleIO"),
    ("csi", "csi"),
    ("ephemeral", "ephemeral"),
    ("image", "image"),
];

/// Whether `key` names one of a volume's sources (`SetDefaults_Volume` makes a volume without
/// one an `emptyDir`).
pub(crate) fn is_volume_source(key: &str) -> bool {
    VOLUME_SOURCES.iter().any(|(k, _)| *k == key)
}

const FILE_MODE: &str = "must be a number between 0 and 0777 (octal), both inclusive";

/// `validateVolumeSource` of the volume `vol` at `p`; the source's kind (first one set).
pub(super) fn volume_source(
    vol: &Value,
    p: &str,
    is_pod: bool,
) -> (Option<&'static str>, Vec<Cause>) {
    let mut causes = Vec::new();
    let mut kind = None;
    for (src, shown) in VOLUME_SOURCES {
        let Some(s) = vol.get(*src).filter(|v| !v.is_null()) else {
            continue;
        };
        if kind.is_some() {
            causes.push(forbidden(
                format!("{p}.{shown}"),
                "may not specify more than 1 volume type",
            ));
            continue;
        }
        kind = Some(*src);
        let sp = format!("{p}.{src}");
        causes.extend(source(src, s, &sp, p, str_of(vol, "name"), is_pod));
    }
    if kind.is_none() {
        causes.push(required(p, "must specify a volume type"));
    }
    (kind, causes)
}

fn req(s: &Value, field: &str, sp: &str, causes: &mut Vec<Cause>) {
    if str_of(s, field).is_empty() {
        causes.push(required(format!("{sp}.{field}"), ""));
    }
}

fn mode(s: &Value, field: &str, sp: &str, causes: &mut Vec<Cause>) {
    if let Some(m) = s.get(field).and_then(Value::as_i64)
        && !(0..=0o777).contains(&m)
    {
        causes.push(invalid(format!("{sp}.{field}"), &m.to_string(), FILE_MODE));
    }
}

fn lun(s: &Value, sp: &str, causes: &mut Vec<Cause>) {
    if let Some(l) = s.get("lun").and_then(Value::as_i64)
        && !(0..=255).contains(&l)
    {
        causes.push(invalid(
            format!("{sp}.lun"),
            &l.to_string(),
            "must be between 0 and 255, inclusive",
        ));
    }
}

fn source(kind: &str, s: &Value, sp: &str, vp: &str, vol_name: &str, is_pod: bool) -> Vec<Cause> {
    let mut causes = Vec::new();
    match kind {
        "emptyDir" => {
            if let Some(limit) = s.get("sizeLimit").and_then(quantity_text)
                && rk3s_quota::parse(&limit).is_some_and(|l| l.0 < rk3s_quota::Quantity::default())
            {
                causes.push(forbidden(
                    format!("{sp}.sizeLimit"),
                    "SizeLimit field must be a valid resource quantity",
                ));
            }
        }
        "hostPath" => {
            let path = str_of(s, "path");
            if path.is_empty() {
                causes.push(required(format!("{sp}.path"), ""));
                return causes;
            }
            causes.extend(no_backsteps(path, &format!("{sp}.path")));
            if let Some(t) = s.get("type").filter(|v| !v.is_null()) {
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
                let t = t.as_str().unwrap_or("");
                if !TYPES.contains(&t) {
                    causes.push(not_supported(format!("{sp}.type"), &q(t), TYPES));
                }
            }
        }
        "gitRepo" => {
            req(s, "repository", sp, &mut causes);
            causes.extend(local_descending_path(
                str_of(s, "directory"),
                &format!("{sp}.directory"),
            ));
        }
        "gcePersistentDisk" | "awsElasticBlockStore" => {
            // Upstream checks a GCE disk under `persistentDisk`.
            let sp = if kind == "gcePersistentDisk" {
                format!("{vp}.persistentDisk")
            } else {
                sp.to_string()
            };
            let id = if kind == "gcePersistentDisk" {
                "pdName"
            } else {
                "volumeID"
            };
            req(s, id, &sp, &mut causes);
            if let Some(part) = s.get("partition").and_then(Value::as_i64)
                && !(0..=255).contains(&part)
            {
                causes.push(invalid(
                    format!("{sp}.partition"),
                    &part.to_string(),
                    "must be between 1 and 255, inclusive",
                ));
            }
        }
        "secret" | "configMap" => {
            req(
                s,
                if kind == "secret" {
                    "secretName"
                } else {
                    "name"
                },
                sp,
                &mut causes,
            );
            mode(s, "defaultMode", sp, &mut causes);
            for (i, kp) in list(s, "items").iter().enumerate() {
                causes.extend(key_to_path(kp, &format!("{sp}.items[{i}]")));
            }
        }
        "nfs" => {
            req(s, "server", sp, &mut causes);
            let path = str_of(s, "path");
            if path.is_empty() {
                causes.push(required(format!("{sp}.path"), ""));
            }
            if !path.starts_with('/') {
                causes.push(invalid(
                    format!("{sp}.path"),
                    &q(path),
                    "must be an absolute path",
                ));
            }
        }
        "iscsi" => causes.extend(iscsi(s, sp, vp, vol_name)),
        "glusterfs" => {
            req(s, "endpoints", sp, &mut causes);
            req(s, "path", sp, &mut causes);
        }
        "flocker" => {
            let (name, uuid) = (str_of(s, "datasetName"), str_of(s, "datasetUUID"));
            if name.is_empty() && uuid.is_empty() {
                causes.push(required(
                    sp,
                    "one of datasetName and datasetUUID is required",
                ));
            }
            if !name.is_empty() && !uuid.is_empty() {
                causes.push(invalid(
                    sp,
                    "\"resource\"",
                    "datasetName and datasetUUID can not be specified simultaneously",
                ));
            }
            if name.contains('/') {
                causes.push(invalid(
                    format!("{sp}.datasetName"),
                    &q(name),
                    "must not contain '/'",
                ));
            }
        }
        "persistentVolumeClaim" => req(s, "claimName", sp, &mut causes),
        "rbd" => {
            if list(s, "monitors").is_empty() {
                causes.push(required(format!("{sp}.monitors"), ""));
            }
            req(s, "image", sp, &mut causes);
        }
        "cinder" => {
            req(s, "volumeID", sp, &mut causes);
            if let Some(r) = s.get("secretRef").filter(|v| v.is_object()) {
                req(r, "name", &format!("{sp}.secretRef"), &mut causes);
            }
        }
        "cephfs" if list(s, "monitors").is_empty() => {
            causes.push(required(format!("{sp}.monitors"), ""));
        }
        "quobyte" => {
            if str_of(s, "registry").is_empty() {
                causes.push(required(
                    format!("{sp}.registry"),
                    "must be a host:port pair or multiple pairs separated by commas",
                ));
            }
            req(s, "volume", sp, &mut causes);
        }
        "downwardAPI" => {
            mode(s, "defaultMode", sp, &mut causes);
            for item in list(s, "items") {
                // Upstream reports the items' errors at the source's path, not the item's.
                causes.extend(downward_api_file(item, sp));
            }
        }
        "fc" => {
            let (wwns, wwids) = (list(s, "targetWWNs"), list(s, "wwids"));
            if wwns.is_empty() && wwids.is_empty() {
                causes.push(required(
                    format!("{sp}.targetWWNs"),
                    "must specify either targetWWNs or wwids, but not both",
                ));
            }
            if !wwns.is_empty() && s.get("lun").is_none_or(Value::is_null) {
                causes.push(required(
                    format!("{sp}.lun"),
                    "lun is required if targetWWNs is specified",
                ));
            } else if !wwns.is_empty() {
                lun(s, sp, &mut causes);
            }
        }
        "flexVolume" => req(s, "driver", sp, &mut causes),
        "azureFile" => {
            req(s, "secretName", sp, &mut causes);
            req(s, "shareName", sp, &mut causes);
        }
        "vsphereVolume" => req(s, "volumePath", sp, &mut causes),
        "photonPersistentDisk" => req(s, "pdID", sp, &mut causes),
        "portworxVolume" => req(s, "volumeID", sp, &mut causes),
        "azureDisk" => {
            req(s, "diskName", sp, &mut causes);
            req(s, "diskURI", sp, &mut causes);
        }
        "storageos" => {
            let name = str_of(s, "volumeName");
            if name.is_empty() {
                causes.push(required(format!("{sp}.volumeName"), ""));
            } else {
                for m in dns_problems(NameRule::Label, name) {
                    causes.push(invalid(format!("{sp}.volumeName"), &q(name), &m));
                }
            }
        }
        "projected" => {
            mode(s, "defaultMode", sp, &mut causes);
            causes.extend(projected(s, sp));
        }
        "scaleIO" => {
            for f in ["gateway", "system", "volumeName"] {
                req(s, f, sp, &mut causes);
            }
        }
        "csi" => {
            causes.extend(csi_driver_name(
                str_of(s, "driver"),
                &format!("{sp}.driver"),
            ));
            if let Some(r) = s.get("nodePublishSecretRef").filter(|v| v.is_object()) {
                let name = str_of(r, "name");
                if name.is_empty() {
                    causes.push(required(format!("{sp}.nodePublishSecretRef.name"), ""));
                } else {
                    // Upstream's path for a bad name is `csi.name`.
                    for m in dns_problems(NameRule::Subdomain, name) {
                        causes.push(invalid(format!("{sp}.name"), &q(name), &m));
                    }
                }
            }
        }
        "ephemeral" => match s.get("volumeClaimTemplate").filter(|v| v.is_object()) {
            None => causes.push(required(format!("{sp}.volumeClaimTemplate"), "")),
            Some(t) => {
                let tp = format!("{sp}.volumeClaimTemplate");
                let meta = t.get("metadata").unwrap_or(&Value::Null);
                causes.extend(super::super::meta::annotations(
                    meta.get("annotations"),
                    &format!("{tp}.metadata.annotations"),
                ));
                causes.extend(super::validate_labels(
                    meta.get("labels"),
                    &format!("{tp}.metadata.labels"),
                ));
                if let Some(m) = meta.as_object() {
                    for k in m.keys() {
                        if !["labels", "annotations"].contains(&k.as_str()) && !m[k].is_null() {
                            causes.push(forbidden(format!("{tp}.metadata.{k}"), "cannot be set"));
                        }
                    }
                }
                causes.extend(claim_spec(
                    t.get("spec").unwrap_or(&Value::Null),
                    &format!("{tp}.spec"),
                ));
            }
        },
        "image" => {
            if is_pod {
                req(s, "reference", sp, &mut causes);
            }
            let policy = str_of(s, "pullPolicy");
            if policy.is_empty() {
                causes.push(required(format!("{sp}.pullPolicy"), ""));
            } else if !["Always", "IfNotPresent", "Never"].contains(&policy) {
                causes.push(not_supported(
                    format!("{sp}.pullPolicy"),
                    &q(policy),
                    &["Always", "IfNotPresent", "Never"],
                ));
            }
        }
        _ => {}
    }
    causes
}

/// `ValidateCSIDriverName`.
fn csi_driver_name(name: &str, path: &str) -> Vec<Cause> {
    let mut causes = Vec::new();
    if name.is_empty() {
        causes.push(required(path, ""));
    }
    if name.len() > 63 {
        causes.push(too_long(path, 63));
    }
    for m in dns_problems(NameRule::Subdomain, &name.to_lowercase()) {
        causes.push(invalid(path, &q(name), &m));
    }
    causes
}

/// `validateISCSIVolumeSource` and the volume-name length rule around it.
fn iscsi(s: &Value, sp: &str, vp: &str, vol_name: &str) -> Vec<Cause> {
    static IQN: std::sync::LazyLock<Option<regex::Regex>> = std::sync::LazyLock::new(|| {
        regex::Regex::new(r"iqn\.\d{4}-\d{2}\.([[:alnum:]\-.]+)(:[^,;*&$|\s]+)$").ok()
    });
    static EUI: std::sync::LazyLock<Option<regex::Regex>> =
        std::sync::LazyLock::new(|| regex::Regex::new(r"^eui.[[:alnum:]]{16}$").ok());
    static NAA: std::sync::LazyLock<Option<regex::Regex>> =
        std::sync::LazyLock::new(|| regex::Regex::new(r"^naa.[[:alnum:]]{32}$").ok());
    let matches = |re: &std::sync::LazyLock<Option<regex::Regex>>, v: &str| {
        re.as_ref().is_none_or(|re| re.is_match(v))
    };
    let format_ok = |v: &str| {
        (!v.starts_with("iqn") || matches(&IQN, v))
            && (!v.starts_with("eui") || matches(&EUI, v))
            && (!v.starts_with("naa") || matches(&NAA, v))
    };
    let known = |v: &str| ["iqn", "eui", "naa"].iter().any(|p| v.starts_with(p));
    let mut causes = Vec::new();
    req(s, "targetPortal", sp, &mut causes);
    let iqn = str_of(s, "iqn");
    if iqn.is_empty() {
        causes.push(required(format!("{sp}.iqn"), ""));
    } else if !known(iqn) {
        causes.push(invalid(
            format!("{sp}.iqn"),
            &q(iqn),
            "must be valid format starting with iqn, eui, or naa",
        ));
    } else if !format_ok(iqn) {
        causes.push(invalid(
            format!("{sp}.iqn"),
            &q(iqn),
            "must be valid format",
        ));
    }
    lun(s, sp, &mut causes);
    let chap = |f: &str| s.get(f).and_then(Value::as_bool) == Some(true);
    if (chap("chapAuthDiscovery") || chap("chapAuthSession"))
        && s.get("secretRef").is_none_or(Value::is_null)
    {
        causes.push(required(format!("{sp}.secretRef"), ""));
    }
    if let Some(init) = s.get("initiatorName").and_then(Value::as_str) {
        let ip = format!("{sp}.initiatorname");
        if !known(init) {
            causes.push(invalid(
                &ip,
                &q(init),
                "must be valid format starting with iqn, eui, or naa",
            ));
        }
        if !format_ok(init) {
            causes.push(invalid(&ip, &q(init), "must be valid format"));
        }
        if format!("{vol_name}:{}", str_of(s, "targetPortal")).len() > 64 {
            causes.push(invalid(
                format!("{vp}.name"),
                &q(vol_name),
                "Total length of <volume name>:<iscsi.targetPortal> must be under 64 \
                 characters if iscsi.initiatorName is specified.",
            ));
        }
    }
    causes
}

/// `validateKeyToPath`.
fn key_to_path(kp: &Value, p: &str) -> Vec<Cause> {
    let mut causes = Vec::new();
    req(kp, "key", p, &mut causes);
    let path = str_of(kp, "path");
    if path.is_empty() {
        causes.push(required(format!("{p}.path"), ""));
    }
    causes.extend(local_non_reserved_path(path, &format!("{p}.path")));
    mode(kp, "mode", p, &mut causes);
    causes
}

/// `validatePathNoBacksteps`.
pub(super) fn no_backsteps(path: &str, field: &str) -> Vec<Cause> {
    if path.split('/').any(|part| part == "..") {
        vec![invalid(field, &q(path), "must not contain '..'")]
    } else {
        Vec::new()
    }
}

/// `validateLocalDescendingPath`: relative, without `..` elements.
pub(super) fn local_descending_path(path: &str, field: &str) -> Vec<Cause> {
    let mut causes = Vec::new();
    if path.starts_with('/') {
        causes.push(invalid(field, &q(path), "must be a relative path"));
    }
    causes.extend(no_backsteps(path, field));
    causes
}

/// `ValidateLocalNonReservedPath`: also not starting with `..`.
fn local_non_reserved_path(path: &str, field: &str) -> Vec<Cause> {
    let mut causes = local_descending_path(path, field);
    if path.starts_with("..") && !path.starts_with("../") {
        causes.push(invalid(field, &q(path), "must not start with '..'"));
    }
    causes
}

/// `validateDownwardAPIVolumeFile`, its errors at `p`.
fn downward_api_file(file: &Value, p: &str) -> Vec<Cause> {
    let mut causes = Vec::new();
    let path = str_of(file, "path");
    if path.is_empty() {
        causes.push(required(format!("{p}.path"), ""));
    }
    causes.extend(local_non_reserved_path(path, &format!("{p}.path")));
    let field_ref = file.get("fieldRef").filter(|v| !v.is_null());
    let resource_ref = file.get("resourceFieldRef").filter(|v| !v.is_null());
    if let Some(fr) = field_ref {
        causes.extend(object_field_selector(
            fr,
            VOLUME_FIELD_PATHS,
            &format!("{p}.fieldRef"),
        ));
        if resource_ref.is_some() {
            causes.push(invalid(
                p,
                "\"resource\"",
                "fieldRef and resourceFieldRef can not be specified simultaneously",
            ));
        }
    } else if let Some(rr) = resource_ref {
        causes.extend(resource_field_selector(
            rr,
            &format!("{p}.resourceFieldRef"),
            true,
        ));
    } else {
        causes.push(required(
            p,
            "one of fieldRef and resourceFieldRef is required",
        ));
    }
    mode(file, "mode", p, &mut causes);
    causes
}

/// `validateProjectionSources`.
fn projected(s: &Value, sp: &str) -> Vec<Cause> {
    let mut causes = Vec::new();
    let mut paths = BTreeSet::new();
    for (i, src) in list(s, "sources").iter().enumerate() {
        let srcp = format!("{sp}.sources[{i}]");
        let mut n = 0;
        for kind in ["secret", "configMap"] {
            let Some(r) = src.get(kind).filter(|v| !v.is_null()) else {
                continue;
            };
            n += 1;
            let pp = format!("{srcp}.{kind}");
            req(r, "name", &pp, &mut causes);
            for (j, kp) in list(r, "items").iter().enumerate() {
                causes.extend(key_to_path(kp, &format!("{pp}.items[{j}]")));
                let path = str_of(kp, "path");
                if !path.is_empty() && !paths.insert(path.to_string()) {
                    causes.push(invalid(
                        sp,
                        &q(str_of(r, "name")),
                        "conflicting duplicate paths",
                    ));
                }
            }
        }
        if let Some(d) = src.get("downwardAPI").filter(|v| !v.is_null()) {
            n += 1;
            let pp = format!("{srcp}.downwardAPI");
            for item in list(d, "items") {
                causes.extend(downward_api_file(item, &pp));
                let path = str_of(item, "path");
                if !path.is_empty() && !paths.insert(path.to_string()) {
                    causes.push(invalid(sp, &q(path), "conflicting duplicate paths"));
                }
            }
        }
        if let Some(t) = src.get("serviceAccountToken").filter(|v| !v.is_null()) {
            n += 1;
            let pp = format!("{srcp}.serviceAccountToken");
            let exp = t
                .get("expirationSeconds")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            if exp < 600 {
                causes.push(invalid(
                    format!("{pp}.expirationSeconds"),
                    &exp.to_string(),
                    "may not specify a duration less than 10 minutes",
                ));
            }
            if exp > 1 << 32 {
                causes.push(invalid(
                    format!("{pp}.expirationSeconds"),
                    &exp.to_string(),
                    "may not specify a duration larger than 2^32 seconds",
                ));
            }
            // Upstream reports the token's path at the projected source's path.
            let path = str_of(t, "path");
            if path.is_empty() {
                causes.push(required(format!("{sp}.path"), ""));
            } else {
                causes.extend(local_non_reserved_path(path, &format!("{sp}.path")));
            }
        }
        if src.get("clusterTrustBundle").is_some_and(|v| !v.is_null()) {
            n += 1;
        }
        if n > 1 {
            causes.push(forbidden(
                &srcp,
                "may not specify more than 1 volume type per source",
            ));
        }
    }
    causes
}

/// `validEnvDownwardAPIFieldPathExpressions` (sorted as upstream lists them).
pub(super) const ENV_FIELD_PATHS: &[&str] = &[
    "metadata.name",
    "metadata.namespace",
    "metadata.uid",
    "spec.nodeName",
    "spec.serviceAccountName",
    "status.hostIP",
    "status.hostIPs",
    "status.podIP",
    "status.podIPs",
];

/// `validVolumeDownwardAPIFieldPathExpressions`.
const VOLUME_FIELD_PATHS: &[&str] = &[
    "metadata.annotations",
    "metadata.labels",
    "metadata.name",
    "metadata.namespace",
    "metadata.uid",
];

/// `fieldpath.SplitMaybeSubscriptedPath`: `metadata.labels['key']` → (`metadata.labels`, `key`).
fn split_subscript(path: &str) -> Option<(&str, &str)> {
    let s = path.strip_suffix("']")?;
    let (head, sub) = s.split_once("['")?;
    (!head.is_empty()).then_some((head, sub))
}

/// `podshelper.ConvertDownwardAPIFieldLabel`'s error for a pod field path (v1).
fn convert_field_label(version: &str, label: &str) -> Option<String> {
    if version != "v1" {
        return Some(format!("unsupported pod version: {version}"));
    }
    if let Some((path, _)) = split_subscript(label) {
        return (!["metadata.annotations", "metadata.labels"].contains(&path))
            .then(|| format!("field label does not support subscript: {label}"));
    }
    const KNOWN: &[&str] = &[
        "metadata.annotations",
        "metadata.labels",
        "metadata.name",
        "metadata.namespace",
        "metadata.uid",
        "spec.nodeName",
        "spec.restartPolicy",
        "spec.serviceAccountName",
        "spec.schedulerName",
        "status.phase",
        "status.hostIP",
        "status.hostIPs",
        "status.podIP",
        "status.podIPs",
        "spec.host",
    ];
    (!KNOWN.contains(&label)).then(|| format!("field label not supported: {label}"))
}

/// `validateObjectFieldSelector` with the allowed field paths.
pub(super) fn object_field_selector(fs: &Value, allowed: &[&str], p: &str) -> Vec<Cause> {
    let version = str_of(fs, "apiVersion");
    if version.is_empty() {
        return vec![required(format!("{p}.apiVersion"), "")];
    }
    let field_path = str_of(fs, "fieldPath");
    if field_path.is_empty() {
        return vec![required(format!("{p}.fieldPath"), "")];
    }
    if let Some(err) = convert_field_label(version, field_path) {
        return vec![invalid(
            format!("{p}.fieldPath"),
            &q(field_path),
            &format!("error converting fieldPath: {err}"),
        )];
    }
    // The old `spec.host` is `spec.nodeName`.
    let internal = if field_path == "spec.host" {
        "spec.nodeName"
    } else {
        field_path
    };
    match split_subscript(internal) {
        Some((path, sub)) => {
            let key = if path == "metadata.annotations" {
                sub.to_lowercase()
            } else {
                sub.to_string()
            };
            qualified_name_problems(&key)
                .into_iter()
                .map(|m| invalid(p, &q(&key), &m))
                .collect()
        }
        None if !allowed.contains(&internal) => {
            vec![not_supported(
                format!("{p}.fieldPath"),
                &q(internal),
                allowed,
            )]
        }
        None => Vec::new(),
    }
}

const RESOURCE_PATHS: &[&str] = &[
    "limits.cpu",
    "limits.ephemeral-storage",
    "limits.memory",
    "requests.cpu",
    "requests.ephemeral-storage",
    "requests.memory",
];

/// `validateContainerResourceFieldSelector` with `validateContainerResourceDivisor`.
pub(super) fn resource_field_selector(fs: &Value, p: &str, volume: bool) -> Vec<Cause> {
    let mut causes = Vec::new();
    let resource = str_of(fs, "resource");
    let huge =
        resource.starts_with("requests.hugepages-") || resource.starts_with("limits.hugepages-");
    if volume && str_of(fs, "containerName").is_empty() {
        causes.push(required(format!("{p}.containerName"), ""));
    } else if resource.is_empty() {
        causes.push(required(format!("{p}.resource"), ""));
    } else if !RESOURCE_PATHS.contains(&resource) && !huge {
        causes.push(not_supported(
            format!("{p}.resource"),
            &q(resource),
            RESOURCE_PATHS,
        ));
    }
    let Some(divisor) = fs
        .get("divisor")
        .and_then(quantity_text)
        .and_then(|t| rk3s_quota::parse(&t))
    else {
        return causes;
    };
    if divisor.0 == rk3s_quota::Quantity::default() {
        return causes;
    }
    let text = rk3s_quota::text(divisor);
    const MEMORY: &[&str] = &[
        "1", "1k", "1M", "1G", "1T", "1P", "1E", "1Ki", "1Mi", "1Gi", "1Ti", "1Pi", "1Ei",
    ];
    let values = "1, 1k, 1M, 1G, 1T, 1P, 1E, 1Ki, 1Mi, 1Gi, 1Ti, 1Pi, 1Ei";
    let what = match resource {
        "limits.cpu" | "requests.cpu" if !["1m", "1"].contains(&text.as_str()) => {
            Some("only divisor's values 1m and 1 are supported with the cpu resource".to_string())
        }
        "limits.memory" | "requests.memory" if !MEMORY.contains(&text.as_str()) => Some(format!(
            "only divisor's values {values} are supported with the memory resource"
        )),
        "limits.ephemeral-storage" | "requests.ephemeral-storage"
            if !MEMORY.contains(&text.as_str()) =>
        {
            Some(format!(
                "only divisor's values {values} are supported with the local ephemeral storage \
                 resource"
            ))
        }
        _ if huge && !MEMORY.contains(&text.as_str()) => Some(format!(
            "only divisor's values {values} are supported with the hugepages resource"
        )),
        _ => None,
    };
    if let Some(m) = what {
        causes.push(invalid(format!("{p}.divisor"), &q(resource), &m));
    }
    causes
}

/// The volume-mount rules beyond names and paths (`ValidateVolumeMounts`): sub-paths (none in
/// image volumes), mount propagation, recursive read-only.
pub(super) fn mount_extras(
    m: &Value,
    kind: Option<&str>,
    privileged: bool,
    mp: &str,
    mounts_path: &str,
) -> Vec<Cause> {
    let mut causes = Vec::new();
    let sub = str_of(m, "subPath");
    let expr = str_of(m, "subPathExpr");
    if kind == Some("image") {
        if !sub.is_empty() {
            causes.push(invalid(
                format!("{mp}.subPath"),
                &q(sub),
                "not allowed in image volume sources",
            ));
        }
        if !expr.is_empty() {
            causes.push(invalid(
                format!("{mp}.subPathExpr"),
                &q(expr),
                "not allowed in image volume sources",
            ));
        }
    }
    // Upstream's paths here are the list's, not the item's.
    if !sub.is_empty() {
        causes.extend(local_descending_path(
            sub,
            &format!("{mounts_path}.subPath"),
        ));
    }
    if !expr.is_empty() {
        if !sub.is_empty() {
            causes.push(invalid(
                format!("{mp}.subPathExpr"),
                &q(expr),
                "subPathExpr and subPath are mutually exclusive",
            ));
        }
        causes.extend(local_descending_path(
            expr,
            &format!("{mounts_path}.subPathExpr"),
        ));
    }
    let propagation = m.get("mountPropagation").and_then(Value::as_str);
    if let Some(prop) = propagation {
        let pp = format!("{mounts_path}.mountPropagation");
        const MODES: &[&str] = &["Bidirectional", "HostToContainer", "None"];
        if !MODES.contains(&prop) {
            causes.push(not_supported(&pp, &q(prop), MODES));
        }
        if prop == "Bidirectional" && !privileged {
            causes.push(forbidden(
                &pp,
                "Bidirectional mount propagation is available only to privileged containers",
            ));
        }
    }
    if let Some(rro) = m.get("recursiveReadOnly").and_then(Value::as_str) {
        let rp = format!("{mounts_path}.recursiveReadOnly");
        match rro {
            "Disabled" => {}
            "Enabled" | "IfPossible" => {
                if m.get("readOnly").and_then(Value::as_bool) != Some(true) {
                    causes.push(forbidden(
                        &rp,
                        "may only be specified when readOnly is true",
                    ));
                }
                if propagation.is_some_and(|p| p != "None") {
                    causes.push(forbidden(
                        &rp,
                        "may only be specified when mountPropagation is None or not specified",
                    ));
                }
            }
            other => causes.push(not_supported(
                &rp,
                &q(other),
                &["Disabled", "Enabled", "IfPossible"],
            )),
        }
    }
    causes
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    use crate::status::cause_lines as fields;

    fn check(vol: Value) -> Vec<String> {
        fields(&volume_source(&vol, "spec.volumes[0]", true).1)
    }

    #[test]
    fn sources_and_their_fields() {
        assert_eq!(
            check(json!({"name": "v", "hostPath": {"path": "/a/../b", "type": "Dir"}})),
            vec![
                "spec.volumes[0].hostPath.path: Invalid value: \"/a/../b\": must not contain '..'",
                "spec.volumes[0].hostPath.type: Unsupported value: \"Dir\": supported values: \"\", \"BlockDevice\", \"CharDevice\", \"Directory\", \"DirectoryOrCreate\", \"File\", \"FileOrCreate\", \"Socket\"",
            ]
        );
        assert_eq!(
            check(json!({"name": "v", "emptyDir": {"sizeLimit": "-1Gi"}, "downwardAPI": {}})),
            vec![
                "spec.volumes[0].emptyDir.sizeLimit: Forbidden: SizeLimit field must be a valid resource quantity",
                "spec.volumes[0].downwarAPI: Forbidden: may not specify more than 1 volume type",
            ]
        );
        assert_eq!(
            check(
                json!({"name": "v", "configMap": {"name": "c", "defaultMode": 511,
                "items": [{"key": "k", "path": "/abs"}, {"key": "", "path": "..x", "mode": 4096}]}})
            ),
            vec![
                "spec.volumes[0].configMap.items[0].path: Invalid value: \"/abs\": must be a relative path",
                "spec.volumes[0].configMap.items[1].key: Required value",
                "spec.volumes[0].configMap.items[1].path: Invalid value: \"..x\": must not start with '..'",
                "spec.volumes[0].configMap.items[1].mode: Invalid value: 4096: must be a number between 0 and 0777 (octal), both inclusive",
            ]
        );
        assert_eq!(
            check(json!({"name": "v", "nfs": {"server": "nfs", "path": "exports"}})),
            vec!["spec.volumes[0].nfs.path: Invalid value: \"exports\": must be an absolute path"]
        );
        assert_eq!(
            check(json!({"name": "v", "csi": {"driver": "Bad_Driver"}})).len(),
            1
        );
        assert_eq!(
            check(json!({"name": "v", "image": {"pullPolicy": "IfNotPresent"}})),
            vec!["spec.volumes[0].image.reference: Required value"]
        );
        assert_eq!(
            check(json!({"name": "v", "ephemeral": {"volumeClaimTemplate": {
                "metadata": {"name": "x"}, "spec": {"accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "1Gi"}}}}}})),
            vec![
                "spec.volumes[0].ephemeral.volumeClaimTemplate.metadata.name: Forbidden: cannot be set"
            ]
        );
    }

    #[test]
    fn projections_and_downward_api() {
        let got = check(json!({"name": "v", "projected": {"sources": [
            {"serviceAccountToken": {"path": "token", "expirationSeconds": 60}},
            {"configMap": {"name": "c", "items": [{"key": "a", "path": "ca.crt"}]},
             "secret": {"name": "s", "items": [{"key": "b", "path": "ca.crt"}]}},
            {"downwardAPI": {"items": [{"path": "labels", "fieldRef": {"apiVersion": "v1", "fieldPath": "status.phase"}}]}},
        ]}}));
        assert_eq!(
            got,
            vec![
                "spec.volumes[0].projected.sources[0].serviceAccountToken.expirationSeconds: Invalid value: 60: may not specify a duration less than 10 minutes",
                "spec.volumes[0].projected: Invalid value: \"c\": conflicting duplicate paths",
                "spec.volumes[0].projected.sources[1]: Forbidden: may not specify more than 1 volume type per source",
                "spec.volumes[0].projected.sources[2].downwardAPI.fieldRef.fieldPath: Unsupported value: \"status.phase\": supported values: \"metadata.annotations\", \"metadata.labels\", \"metadata.name\", \"metadata.namespace\", \"metadata.uid\"",
            ]
        );
    }

    #[test]
    fn env_field_and_resource_references() {
        let sel = |path: &str| json!({"apiVersion": "v1", "fieldPath": path});
        assert!(object_field_selector(&sel("status.podIP"), ENV_FIELD_PATHS, "f").is_empty());
        assert!(
            object_field_selector(&sel("metadata.labels['app']"), ENV_FIELD_PATHS, "f").is_empty()
        );
        assert_eq!(
            fields(&object_field_selector(
                &sel("metadata.labels"),
                ENV_FIELD_PATHS,
                "f"
            )),
            vec![
                "f.fieldPath: Unsupported value: \"metadata.labels\": supported values: \"metadata.name\", \"metadata.namespace\", \"metadata.uid\", \"spec.nodeName\", \"spec.serviceAccountName\", \"status.hostIP\", \"status.hostIPs\", \"status.podIP\", \"status.podIPs\""
            ]
        );
        assert_eq!(
            fields(&object_field_selector(
                &sel("spec.bogus"),
                ENV_FIELD_PATHS,
                "f"
            )),
            vec![
                "f.fieldPath: Invalid value: \"spec.bogus\": error converting fieldPath: field label not supported: spec.bogus"
            ]
        );
        assert_eq!(
            fields(&object_field_selector(
                &json!({"apiVersion": "v2", "fieldPath": "metadata.name"}),
                ENV_FIELD_PATHS,
                "f"
            )),
            vec![
                "f.fieldPath: Invalid value: \"metadata.name\": error converting fieldPath: unsupported pod version: v2"
            ]
        );
        assert_eq!(
            fields(&resource_field_selector(
                &json!({"resource": "limits.cpu", "divisor": "1Mi"}),
                "r",
                false
            )),
            vec![
                "r.divisor: Invalid value: \"limits.cpu\": only divisor's values 1m and 1 are supported with the cpu resource"
            ]
        );
        assert_eq!(
            fields(&resource_field_selector(
                &json!({"resource": "limits.gpu"}),
                "r",
                false
            )),
            vec![
                "r.resource: Unsupported value: \"limits.gpu\": supported values: \"limits.cpu\", \"limits.ephemeral-storage\", \"limits.memory\", \"requests.cpu\", \"requests.ephemeral-storage\", \"requests.memory\""
            ]
        );
        assert!(
            resource_field_selector(
                &json!({"resource": "requests.memory", "divisor": "1Mi"}),
                "r",
                false
            )
            .is_empty()
        );
    }
}
