//! storage.k8s.io/v1 as upstream v1.33's `pkg/apis/storage/validation` and its strategies'
//! `Validate`/`ValidateUpdate`, with upstream's field paths (its quirks included:
//! `spec.attachedRequired`, CSINode topology key errors at `spec.drivers[i]`, the 256 KiB
//! figure in a too-long volume error message) and messages:
//! - StorageClass: `provisioner` (required, qualified name), `parameters` (at most 512, no
//!   empty key, 256 KiB in all), `reclaimPolicy`, `volumeBindingMode`, `allowedTopologies`
//!   (values required and unique, keys label names and unique, no duplicate terms); on update
//!   `parameters`, `provisioner` and `reclaimPolicy` forbidden to change, `volumeBindingMode`
//!   immutable.
//! - CSIDriver: `attachRequired`, `podInfoOnMount`, `storageCapacity`, `seLinuxMount`
//!   required (the defaults fill them), `fsGroupPolicy`, `tokenRequests` (unique audiences,
//!   10 minutes to 2^32 seconds), `volumeLifecycleModes`,
//!   `nodeAllocatableUpdatePeriodSeconds` ≥ 10; on update `attachRequired` and
//!   `volumeLifecycleModes` immutable (the rest of the spec may change, as upstream v1.33).
//! - CSINode: drivers' names (CSI driver names), unique, `nodeID` (required, at most 256
//!   characters: upstream's strategy allows long IDs), topology keys (qualified names,
//!   unique), `allocatable.count` ≥ 0; on update an existing driver may not change but for
//!   its `allocatable` count — upstream v1.33 with the (alpha, off)
//!   `MutableCSINodeAllocatableCount` gate on; with it off upstream freezes the count too, but
//!   rk3s' scheduler tests raise it on a registered driver.
//! - CSIStorageCapacity: `nodeTopology` (a label selector), `storageClassName`, `capacity`
//!   ≥ 0; on update `nodeTopology` and `storageClassName` immutable.
//! - VolumeAttachment: `attacher` (a CSI driver name), `source` (exactly one of
//!   `persistentVolumeName`/`inlineVolumeSpec`, the volume name a DNS subdomain), `nodeName`,
//!   status metadata size and error messages/codes; on update the spec is immutable (and,
//!   as upstream's strategy, the object's own errors are reported twice).
//!
//! `/status` writes of VolumeAttachments run the same update validation
//! (`validation::status`). Not covered: the `inlineVolumeSpec` itself (core's
//! `ValidatePersistentVolumeSpec`) and the v1.33 feature-gated field
//! dropping of the strategies (`nodeAllocatableUpdatePeriodSeconds` is kept and validated).
//! Values of a whole struct in `Invalid value:` are Go's `%#v` layout, with a pointer
//! shown by its value (`(*int32)(5)`, `&T{...}`) where Go would print an address.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::apps::{show_selector, show_strings};
use super::label_selector_causes;
use super::{
    NameRule, dns_problems, duplicate, forbidden, invalid, items, not_supported, obj_of, q,
    qualified_name_problems, required, str_of, too_long,
};
use crate::registry::ResourceInfo;
use crate::status::Cause;

const PARAMETERS_MAX: usize = 512;
const PARAMETERS_SIZE_MAX: usize = 256 * 1024;
const ATTACHMENT_METADATA_MAX: usize = 256 * 1024;
const VOLUME_ERROR_MESSAGE_MAX: usize = 1024;
/// Upstream's `csiNodeIDLongerMaxLength` (its CSINode strategy sets `AllowLongNodeID`).
const NODE_ID_MAX: usize = 256;
const CSI_DRIVER_NAME_MAX: usize = 63;
const NULL: Value = Value::Null;

pub(super) fn validate(info: &ResourceInfo, obj: &Value, old: Option<&Value>) -> Vec<Cause> {
    // Objects stored before defaulting existed compare as upstream would have stored them.
    let old = old.map(|o| {
        let mut o = o.clone();
        crate::defaults::apply(info, &mut o, false);
        o
    });
    let old = old.as_ref();
    match info.kind {
        "StorageClass" => {
            let mut causes = storage_class(obj);
            if let Some(old) = old {
                causes.extend(storage_class_update(obj, old));
            }
            causes
        }
        "CSIDriver" => {
            let spec = obj.get("spec").unwrap_or(&NULL);
            let mut causes = csi_driver_spec(spec);
            if let Some(old) = old {
                let old_spec = old.get("spec").unwrap_or(&NULL);
                let (new_attach, old_attach) = (
                    spec.get("attachRequired").unwrap_or(&NULL),
                    old_spec.get("attachRequired").unwrap_or(&NULL),
                );
                if new_attach != old_attach {
                    causes.push(invalid(
                        "spec.attachedRequired",
                        &show_scalar(new_attach),
                        "field is immutable",
                    ));
                }
                let (new_modes, old_modes) = (
                    spec.get("volumeLifecycleModes"),
                    old_spec.get("volumeLifecycleModes"),
                );
                if non_empty(new_modes) != non_empty(old_modes) {
                    causes.push(invalid(
                        "spec.volumeLifecycleModes",
                        &show_string_list("storage.VolumeLifecycleMode", new_modes),
                        "field is immutable",
                    ));
                }
            }
            causes
        }
        "CSINode" => {
            let mut causes = csi_node_drivers(items(obj.get("spec").unwrap_or(&NULL), "drivers"));
            if let Some(old) = old {
                let new_drivers = items(obj.get("spec").unwrap_or(&NULL), "drivers");
                for before in items(old.get("spec").unwrap_or(&NULL), "drivers") {
                    for after in new_drivers {
                        if str_of(before, "name") == str_of(after, "name")
                            && normalized_driver(before) != normalized_driver(after)
                        {
                            causes.push(invalid(
                                "spec.drivers",
                                &show_csi_node_driver(&normalized_driver(after)),
                                "field is immutable",
                            ));
                        }
                    }
                }
            }
            causes
        }
        "CSIStorageCapacity" => {
            let mut causes = csi_storage_capacity(obj);
            if let Some(old) = old {
                let topology = obj.get("nodeTopology").unwrap_or(&NULL);
                if topology != old.get("nodeTopology").unwrap_or(&NULL) {
                    causes.push(invalid(
                        "nodeTopology",
                        &show_selector(topology),
                        "field is immutable",
                    ));
                }
                let class = str_of(obj, "storageClassName");
                if class != str_of(old, "storageClassName") {
                    causes.push(invalid("storageClassName", &q(class), "field is immutable"));
                }
            }
            causes
        }
        "VolumeAttachment" => match old {
            None => {
                let mut causes = volume_attachment(obj);
                causes.extend(volume_attachment_v1(obj));
                causes
            }
            Some(old) => {
                // Upstream's strategy validates the object, then `ValidateVolumeAttachmentUpdate`
                // validates it again before comparing the specs.
                let mut causes = volume_attachment(obj);
                causes.extend(volume_attachment(obj));
                let spec = obj.get("spec").unwrap_or(&NULL);
                if spec != old.get("spec").unwrap_or(&NULL) {
                    causes.push(invalid(
                        "spec",
                        &show_attachment_spec(spec),
                        "field is immutable",
                    ));
                }
                causes
            }
        },
        _ => Vec::new(),
    }
}

// ---- StorageClass ------------------------------------------------------------------------

fn storage_class(obj: &Value) -> Vec<Cause> {
    let mut causes = provisioner(str_of(obj, "provisioner"), "provisioner");
    causes.extend(parameters(obj.get("parameters"), "parameters"));
    let policy = str_of(obj, "reclaimPolicy");
    if !policy.is_empty() && !["Delete", "Retain"].contains(&policy) {
        causes.push(not_supported(
            "reclaimPolicy",
            &q(policy),
            &["Delete", "Retain"],
        ));
    }
    match obj.get("volumeBindingMode").and_then(Value::as_str) {
        None => causes.push(required("volumeBindingMode", "")),
        Some(mode) if !["Immediate", "WaitForFirstConsumer"].contains(&mode) => {
            causes.push(not_supported(
                "volumeBindingMode",
                &q(mode),
                &["Immediate", "WaitForFirstConsumer"],
            ));
        }
        Some(_) => {}
    }
    causes.extend(allowed_topologies(items(obj, "allowedTopologies")));
    causes
}

fn storage_class_update(obj: &Value, old: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    // An absent map and an empty one are the same parameters (upstream stores neither).
    let params = |v: &Value| obj_of(v, "parameters").cloned().unwrap_or_default();
    if params(obj) != params(old) {
        causes.push(forbidden(
            "parameters",
            "updates to parameters are forbidden.",
        ));
    }
    if str_of(obj, "provisioner") != str_of(old, "provisioner") {
        causes.push(forbidden(
            "provisioner",
            "updates to provisioner are forbidden.",
        ));
    }
    if str_of(obj, "reclaimPolicy") != str_of(old, "reclaimPolicy") {
        causes.push(forbidden(
            "reclaimPolicy",
            "updates to reclaimPolicy are forbidden.",
        ));
    }
    let mode = obj.get("volumeBindingMode").unwrap_or(&NULL);
    if mode != old.get("volumeBindingMode").unwrap_or(&NULL) {
        causes.push(invalid(
            "volumeBindingMode",
            &show_scalar(mode),
            "field is immutable",
        ));
    }
    causes
}

/// `validateProvisioner`: required, a qualified name once lowercased.
fn provisioner(value: &str, path: &str) -> Vec<Cause> {
    if value.is_empty() {
        return vec![required(path, "")];
    }
    let lower = value.to_lowercase();
    qualified_name_problems(&lower)
        .into_iter()
        .map(|m| invalid(path, &q(&lower), &m))
        .collect()
}

/// `validateParameters` (empty maps allowed).
fn parameters(params: Option<&Value>, path: &str) -> Vec<Cause> {
    let Some(map) = params.and_then(Value::as_object) else {
        return Vec::new();
    };
    if map.len() > PARAMETERS_MAX {
        return vec![too_long(path, PARAMETERS_MAX)];
    }
    let mut causes = Vec::new();
    let mut size = 0;
    for (k, v) in map {
        if k.is_empty() {
            causes.push(invalid(path, &q(k), "field can not be empty."));
        }
        size += k.len() + v.as_str().map_or(0, str::len);
    }
    if size > PARAMETERS_SIZE_MAX {
        causes.push(too_long(path, PARAMETERS_SIZE_MAX));
    }
    causes
}

/// `validateAllowedTopologies` with core's `ValidateTopologySelectorTerm`. Upstream compares
/// each term's key → values map with the maps before it, starting from as many nil maps as
/// there are terms: a term without expressions is reported once for each of them.
fn allowed_topologies(terms: &[Value]) -> Vec<Cause> {
    let mut causes = Vec::new();
    let mut seen: Vec<BTreeMap<String, BTreeSet<String>>> = vec![BTreeMap::new(); terms.len()];
    for (i, term) in terms.iter().enumerate() {
        let path = format!("allowedTopologies[{i}]");
        let mut exprs: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (j, req) in items(term, "matchLabelExpressions").iter().enumerate() {
            let rp = format!("{path}.matchLabelExpressions[{j}]");
            let values = items(req, "values");
            if values.is_empty() {
                causes.push(required(format!("{rp}.values"), ""));
            }
            let mut set = BTreeSet::new();
            for (k, v) in values.iter().enumerate() {
                let v = v.as_str().unwrap_or_default();
                if !set.insert(v.to_string()) {
                    causes.push(duplicate(format!("{rp}.values[{k}]"), &q(v)));
                }
            }
            let key = str_of(req, "key");
            for m in qualified_name_problems(key) {
                causes.push(invalid(format!("{rp}.key"), &q(key), &m));
            }
            if exprs.contains_key(key) {
                causes.push(duplicate(format!("{rp}.key"), &q(key)));
            }
            exprs.insert(key.to_string(), set);
        }
        for before in &seen {
            if *before == exprs {
                causes.push(duplicate(format!("{path}.matchLabelExpressions"), "\"\""));
            }
        }
        seen.push(exprs);
    }
    causes
}

// ---- CSIDriver ---------------------------------------------------------------------------

fn csi_driver_spec(spec: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    for (field, path) in [
        ("attachRequired", "spec.attachedRequired"),
        ("podInfoOnMount", "spec.podInfoOnMount"),
        ("storageCapacity", "spec.storageCapacity"),
    ] {
        if spec.get(field).is_none_or(Value::is_null) {
            causes.push(required(path, ""));
        }
    }
    if let Some(policy) = spec.get("fsGroupPolicy").and_then(Value::as_str) {
        let valid = ["File", "None", "ReadWriteOnceWithFSType"];
        if !valid.contains(&policy) {
            causes.push(not_supported("spec.fsGroupPolicy", &q(policy), &valid));
        }
    }
    let mut audiences = BTreeSet::new();
    for (i, request) in items(spec, "tokenRequests").iter().enumerate() {
        let path = format!("spec.tokenRequests[{i}]");
        let audience = str_of(request, "audience");
        if !audiences.insert(audience) {
            causes.push(duplicate(format!("{path}.audience"), &q(audience)));
            continue;
        }
        let Some(secs) = request.get("expirationSeconds").and_then(Value::as_i64) else {
            continue;
        };
        if secs < 600 {
            causes.push(invalid(
                format!("{path}.expirationSeconds"),
                &secs.to_string(),
                "may not specify a duration less than 10 minutes",
            ));
        }
        if secs > 1 << 32 {
            causes.push(invalid(
                format!("{path}.expirationSeconds"),
                &secs.to_string(),
                "may not specify a duration larger than 2^32 seconds",
            ));
        }
    }
    for mode in items(spec, "volumeLifecycleModes") {
        let mode = mode.as_str().unwrap_or_default();
        if !["Persistent", "Ephemeral"].contains(&mode) {
            causes.push(not_supported(
                "spec.volumeLifecycleModes",
                &q(mode),
                &["Persistent", "Ephemeral"],
            ));
        }
    }
    // `SELinuxMountReadWriteOncePod` is on in v1.33: the field is required (and defaulted).
    if spec.get("seLinuxMount").is_none_or(Value::is_null) {
        causes.push(required("spec.seLinuxMount", ""));
    }
    if let Some(period) = spec
        .get("nodeAllocatableUpdatePeriodSeconds")
        .and_then(Value::as_i64)
        && period < 10
    {
        causes.push(invalid(
            "spec.nodeAllocatableUpdatePeriodSeconds",
            &period.to_string(),
            "must be greater than or equal to 10 seconds",
        ));
    }
    causes
}

fn non_empty(v: Option<&Value>) -> Option<&Value> {
    v.filter(|v| !v.is_null() && v.as_array().is_none_or(|a| !a.is_empty()))
}

// ---- CSINode -----------------------------------------------------------------------------

/// Core's `ValidateCSIDriverName`: required, at most 63 characters, a DNS subdomain once
/// lowercased.
fn csi_driver_name(name: &str, path: &str) -> Vec<Cause> {
    let mut causes = Vec::new();
    if name.is_empty() {
        causes.push(required(path, ""));
    }
    if name.len() > CSI_DRIVER_NAME_MAX {
        causes.push(too_long(path, CSI_DRIVER_NAME_MAX));
    }
    for m in dns_problems(NameRule::Subdomain, &name.to_lowercase()) {
        causes.push(invalid(path, &q(name), &m));
    }
    causes
}

fn csi_node_drivers(drivers: &[Value]) -> Vec<Cause> {
    let mut causes = Vec::new();
    let mut names = BTreeSet::new();
    for (i, driver) in drivers.iter().enumerate() {
        let path = format!("spec.drivers[{i}]");
        let name = str_of(driver, "name");
        causes.extend(csi_driver_name(name, &format!("{path}.name")));
        let node_id = str_of(driver, "nodeID");
        if node_id.is_empty() {
            causes.push(required(format!("{path}.nodeID"), ""));
        }
        if node_id.len() > NODE_ID_MAX {
            causes.push(invalid(
                format!("{path}.nodeID"),
                &q(node_id),
                &format!("must be {NODE_ID_MAX} characters or less"),
            ));
        }
        if let Some(count) = driver
            .get("allocatable")
            .and_then(|a| a.get("count"))
            .and_then(Value::as_i64)
            && count < 0
        {
            causes.push(invalid(
                format!("{path}.allocatable.count"),
                &count.to_string(),
                "must be greater than or equal to 0",
            ));
        }
        if !names.insert(name) {
            causes.push(duplicate(format!("{path}.name"), &q(name)));
        }
        let mut keys = BTreeSet::new();
        for key in items(driver, "topologyKeys") {
            let key = key.as_str().unwrap_or_default();
            if key.is_empty() {
                causes.push(required(&path, ""));
            }
            if !keys.insert(key) {
                causes.push(duplicate(&path, &q(key)));
            }
            for m in qualified_name_problems(key) {
                causes.push(invalid(&path, &q(key), &m));
            }
        }
    }
    causes
}

/// A driver as compared on update, without `allocatable` (upstream's rule with
/// `MutableCSINodeAllocatableCount` on: the count may change); an absent and an empty key
/// list are the same.
fn normalized_driver(d: &Value) -> Value {
    let mut d = d.clone();
    if let Some(o) = d.as_object_mut() {
        o.remove("allocatable");
        o.retain(|_, v| !v.is_null() && v.as_array().is_none_or(|a| !a.is_empty()));
    }
    d
}

/// A `storage.CSINodeDriver` as Go's `%#v` shows it.
fn show_csi_node_driver(d: &Value) -> String {
    let allocatable = match d.get("allocatable").filter(|a| !a.is_null()) {
        None => "(*storage.VolumeNodeResources)(nil)".to_string(),
        Some(a) => format!(
            "&storage.VolumeNodeResources{{Count:{}}}",
            show_pointer("int32", a.get("count"))
        ),
    };
    format!(
        "storage.CSINodeDriver{{Name:{}, NodeID:{}, TopologyKeys:{}, Allocatable:{allocatable}}}",
        q(str_of(d, "name")),
        q(str_of(d, "nodeID")),
        show_strings(d.get("topologyKeys")),
    )
}

// ---- CSIStorageCapacity ------------------------------------------------------------------

fn csi_storage_capacity(obj: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    if let Some(sel) = obj.get("nodeTopology").filter(|s| !s.is_null()) {
        causes.extend(label_selector_causes(sel, "nodeTopology"));
    }
    let class = str_of(obj, "storageClassName");
    for m in dns_problems(NameRule::Subdomain, class) {
        causes.push(invalid("storageClassName", &q(class), &m));
    }
    if let Some(text) = obj.get("capacity").and_then(quantity_text)
        && let Some(qty) = rk3s_quota::parse(&text)
        && qty.0 < rk3s_quota::Quantity::default()
    {
        causes.push(invalid(
            "capacity",
            &q(&rk3s_quota::text(qty)),
            "must be greater than or equal to 0",
        ));
    }
    causes
}

fn quantity_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

// ---- VolumeAttachment --------------------------------------------------------------------

/// `ValidateVolumeAttachment`: the spec and the status.
fn volume_attachment(obj: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let spec = obj.get("spec").unwrap_or(&NULL);
    if str_of(spec, "attacher").is_empty() {
        causes.push(required("spec.attacher", ""));
    }
    let source = spec.get("source").unwrap_or(&NULL);
    let pv = source.get("persistentVolumeName").and_then(Value::as_str);
    let inline = source.get("inlineVolumeSpec").filter(|s| !s.is_null());
    let exactly_one = "must specify exactly one of inlineVolumeSpec and persistentVolumeName";
    match (pv, inline) {
        (None, None) => causes.push(required("spec.source", exactly_one)),
        (Some(_), Some(_)) => causes.push(forbidden("spec.source", exactly_one)),
        (Some(""), None) => causes.push(required(
            "spec.source.persistentVolumeName",
            "must specify non empty persistentVolumeName",
        )),
        _ => {}
    }
    let node = str_of(spec, "nodeName");
    for m in dns_problems(NameRule::Subdomain, node) {
        causes.push(invalid("spec.nodeName", &q(node), &m));
    }
    let status = obj.get("status").unwrap_or(&NULL);
    if let Some(meta) = obj_of(status, "attachmentMetadata") {
        let size: usize = meta
            .iter()
            .map(|(k, v)| k.len() + v.as_str().map_or(0, str::len))
            .sum();
        if size > ATTACHMENT_METADATA_MAX {
            causes.push(too_long(
                "status.attachmentMetadata",
                ATTACHMENT_METADATA_MAX,
            ));
        }
    }
    for which in ["attachError", "detachError"] {
        let Some(err) = status.get(which).filter(|e| !e.is_null()) else {
            continue;
        };
        if str_of(err, "message").len() > VOLUME_ERROR_MESSAGE_MAX {
            // Upstream reports the metadata limit here.
            causes.push(too_long(
                format!("status.{which}.message"),
                ATTACHMENT_METADATA_MAX,
            ));
        }
        if let Some(code) = err.get("errorCode").and_then(Value::as_i64)
            && code < 0
        {
            causes.push(invalid(
                format!("status.{which}.errorCode"),
                &code.to_string(),
                &format!("must be between 0 and {}, inclusive", i32::MAX),
            ));
        }
    }
    causes
}

/// `ValidateVolumeAttachmentV1`: what the v1 API checks on create beyond the above.
fn volume_attachment_v1(obj: &Value) -> Vec<Cause> {
    let spec = obj.get("spec").unwrap_or(&NULL);
    let mut causes = csi_driver_name(str_of(spec, "attacher"), "spec.attacher");
    if let Some(pv) = spec
        .get("source")
        .and_then(|s| s.get("persistentVolumeName"))
        .and_then(Value::as_str)
    {
        for m in dns_problems(NameRule::Subdomain, pv) {
            causes.push(invalid("spec.source.persistentVolumeName", &q(pv), &m));
        }
    }
    causes
}

/// A `storage.VolumeAttachmentSpec` as Go's `%#v` shows it (an inline volume spec only as
/// present or not).
fn show_attachment_spec(spec: &Value) -> String {
    let source = spec.get("source").unwrap_or(&NULL);
    let inline = if source.get("inlineVolumeSpec").is_none_or(Value::is_null) {
        "(*core.PersistentVolumeSpec)(nil)"
    } else {
        "&core.PersistentVolumeSpec{...}"
    };
    format!(
        "storage.VolumeAttachmentSpec{{Attacher:{}, Source:storage.VolumeAttachmentSource{{\
         PersistentVolumeName:{}, InlineVolumeSpec:{inline}}}, NodeName:{}}}",
        q(str_of(spec, "attacher")),
        show_pointer("string", source.get("persistentVolumeName")),
        q(str_of(spec, "nodeName")),
    )
}

// ---- showing values as Go does -------------------------------------------------------------

/// A pointer field's value: `(*T)(nil)`, or its value where Go would print the address.
fn show_pointer(ty: &str, v: Option<&Value>) -> String {
    match v.filter(|v| !v.is_null()) {
        None => format!("(*{ty})(nil)"),
        Some(v) => format!("(*{ty})({})", show_scalar(v)),
    }
}

/// A scalar (or a dereferenced pointer to one) as `field.Error` shows it: strings quoted,
/// numbers and booleans plain, nil `null`.
fn show_scalar(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::String(s) => q(s),
        other => other.to_string(),
    }
}

/// A list of a named string type as Go's `%#v` shows it.
fn show_string_list(ty: &str, v: Option<&Value>) -> String {
    match v.and_then(Value::as_array) {
        None => format!("[]{ty}(nil)"),
        Some(a) => {
            let shown: Vec<String> = a
                .iter()
                .map(|s| q(s.as_str().unwrap_or_default()))
                .collect();
            format!("[]{ty}{{{}}}", shown.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn info(plural: &str) -> &'static ResourceInfo {
        crate::registry::REGISTRY
            .find("storage.k8s.io", "v1", plural)
            .unwrap_or_else(|| panic!("{plural}"))
    }

    /// What the server validates: the defaulted object.
    fn check(plural: &str, obj: Value, old: Option<Value>) -> Vec<String> {
        let i = info(plural);
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
    fn storage_classes() {
        let good = json!({"provisioner": "rancher.io/local-path", "parameters": {"a": "b"},
            "allowedTopologies": [{"matchLabelExpressions": [
                {"key": "topology.kubernetes.io/zone", "values": ["a", "b"]}]}]});
        assert!(check("storageclasses", good.clone(), None).is_empty());
        let bad = json!({"provisioner": "", "reclaimPolicy": "Recycle",
            "volumeBindingMode": "Later",
            "allowedTopologies": [
                {"matchLabelExpressions": [{"key": "a b", "values": ["x", "x"]},
                                           {"key": "a b", "values": []}]}]});
        assert_eq!(
            check("storageclasses", bad, None),
            [
                "provisioner: Required value",
                "reclaimPolicy: Unsupported value: \"Recycle\": supported values: \"Delete\", \"Retain\"",
                "volumeBindingMode: Unsupported value: \"Later\": supported values: \"Immediate\", \"WaitForFirstConsumer\"",
                "allowedTopologies[0].matchLabelExpressions[0].values[1]: Duplicate value: \"x\"",
                "allowedTopologies[0].matchLabelExpressions[0].key: Invalid value: \"a b\": name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')",
                "allowedTopologies[0].matchLabelExpressions[1].values: Required value",
                "allowedTopologies[0].matchLabelExpressions[1].key: Invalid value: \"a b\": name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')",
                "allowedTopologies[0].matchLabelExpressions[1].key: Duplicate value: \"a b\"",
            ]
        );
        let changed = json!({"provisioner": "example.com/other", "parameters": {"a": "c"},
            "reclaimPolicy": "Retain", "volumeBindingMode": "WaitForFirstConsumer"});
        assert_eq!(
            check("storageclasses", changed, Some(good)),
            [
                "parameters: Forbidden: updates to parameters are forbidden.",
                "provisioner: Forbidden: updates to provisioner are forbidden.",
                "reclaimPolicy: Forbidden: updates to reclaimPolicy are forbidden.",
                "volumeBindingMode: Invalid value: \"WaitForFirstConsumer\": field is immutable",
            ]
        );
        // An object stored without the defaults still compares as defaulted.
        let stored = json!({"provisioner": "p.io/x"});
        assert!(
            validate(
                info("storageclasses"),
                &json!({"provisioner": "p.io/x", "reclaimPolicy": "Delete",
                        "volumeBindingMode": "Immediate"}),
                Some(&stored)
            )
            .is_empty()
        );
    }

    #[test]
    fn csi_drivers_and_nodes() {
        let good = json!({"spec": {"tokenRequests": [{"audience": "a"}]}});
        assert!(check("csidrivers", good.clone(), None).is_empty());
        let bad = json!({"spec": {"fsGroupPolicy": "Some",
            "tokenRequests": [{"audience": "a", "expirationSeconds": 60}, {"audience": "a"}],
            "volumeLifecycleModes": ["Forever"]}});
        assert_eq!(
            check("csidrivers", bad, None),
            [
                "spec.fsGroupPolicy: Unsupported value: \"Some\": supported values: \"File\", \"None\", \"ReadWriteOnceWithFSType\"",
                "spec.tokenRequests[0].expirationSeconds: Invalid value: 60: may not specify a duration less than 10 minutes",
                "spec.tokenRequests[1].audience: Duplicate value: \"a\"",
                "spec.volumeLifecycleModes: Unsupported value: \"Forever\": supported values: \"Persistent\", \"Ephemeral\"",
            ]
        );
        let changed = json!({"spec": {"attachRequired": false, "podInfoOnMount": true,
            "volumeLifecycleModes": ["Ephemeral"]}});
        assert_eq!(
            check("csidrivers", changed, Some(good)),
            [
                "spec.attachedRequired: Invalid value: false: field is immutable",
                "spec.volumeLifecycleModes: Invalid value: []storage.VolumeLifecycleMode{\"Ephemeral\"}: field is immutable",
            ]
        );
        let node = json!({"spec": {"drivers": [
            {"name": "csi.example.com", "nodeID": "n1", "topologyKeys": ["zone"]},
            {"name": "csi.example.com", "nodeID": "", "topologyKeys": ["z", "z"],
             "allocatable": {"count": -1}}]}});
        assert_eq!(
            check("csinodes", node, None),
            [
                "spec.drivers[1].nodeID: Required value",
                "spec.drivers[1].allocatable.count: Invalid value: -1: must be greater than or equal to 0",
                "spec.drivers[1].name: Duplicate value: \"csi.example.com\"",
                "spec.drivers[1]: Duplicate value: \"z\"",
            ]
        );
        let before = json!({"spec": {"drivers": [{"name": "d.io", "nodeID": "n1",
            "allocatable": {"count": 1}}]}});
        let raised = json!({"spec": {"drivers": [{"name": "d.io", "nodeID": "n1",
            "allocatable": {"count": 2}}]}});
        assert!(check("csinodes", raised, Some(before.clone())).is_empty());
        let after = json!({"spec": {"drivers": [{"name": "d.io", "nodeID": "n2",
            "allocatable": {"count": 1}}]}});
        assert_eq!(
            check("csinodes", after, Some(before)),
            [
                "spec.drivers: Invalid value: storage.CSINodeDriver{Name:\"d.io\", NodeID:\"n2\", TopologyKeys:[]string(nil), Allocatable:(*storage.VolumeNodeResources)(nil)}: field is immutable"
            ]
        );
    }

    #[test]
    fn capacities_and_attachments() {
        let cap = json!({"storageClassName": "Fast", "capacity": "-1Gi",
            "nodeTopology": {"matchLabels": {"a": "b c"}}});
        let got = check("csistoragecapacities", cap, None);
        assert_eq!(got.len(), 3, "{got:?}");
        assert!(got[0].starts_with("nodeTopology.matchLabels: Invalid value: \"b c\""));
        assert!(got[1].starts_with(
            "storageClassName: Invalid value: \"Fast\": a lowercase RFC 1123 subdomain"
        ));
        assert_eq!(
            got[2],
            "capacity: Invalid value: \"-1Gi\": must be greater than or equal to 0"
        );

        let va = json!({"spec": {"attacher": "csi.example.com", "nodeName": "node-1",
            "source": {"persistentVolumeName": "pv-1"}}});
        assert!(check("volumeattachments", va.clone(), None).is_empty());
        assert_eq!(
            check(
                "volumeattachments",
                json!({"spec": {"attacher": "a.io", "nodeName": "n", "source": {}}}),
                None
            ),
            [
                "spec.source: Required value: must specify exactly one of inlineVolumeSpec and persistentVolumeName"
            ]
        );
        let moved = json!({"spec": {"attacher": "csi.example.com", "nodeName": "node-2",
            "source": {"persistentVolumeName": "pv-1"}}});
        assert_eq!(
            check("volumeattachments", moved, Some(va)),
            [
                "spec: Invalid value: storage.VolumeAttachmentSpec{Attacher:\"csi.example.com\", Source:storage.VolumeAttachmentSource{PersistentVolumeName:(*string)(\"pv-1\"), InlineVolumeSpec:(*core.PersistentVolumeSpec)(nil)}, NodeName:\"node-2\"}: field is immutable"
            ]
        );
        let long = json!({"spec": {"attacher": "a.io", "nodeName": "n",
            "source": {"persistentVolumeName": "pv"}},
            "status": {"attached": false, "attachError": {"message": "x".repeat(1025), "errorCode": -2}}});
        assert_eq!(
            check("volumeattachments", long, None),
            [
                "status.attachError.message: Too long: may not be more than 262144 bytes",
                "status.attachError.errorCode: Invalid value: -2: must be between 0 and 2147483647, inclusive",
            ]
        );
    }
}
