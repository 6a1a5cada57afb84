//! CustomResourceDefinitions: the live registry of custom resources and the CRD controller.
//!
//! - [`CustomRegistry`] holds the served custom resources as an immutable [`Snapshot`] behind
//!   `RwLock<Arc<..>>`: a request clones the `Arc` (no lock held while serving) and finds its
//!   [`ResourceInfo`] there; built-ins never touch it (they stay `&'static` in
//!   [`crate::registry::REGISTRY`]). A new snapshot is built from all CRDs whenever one changes.
//! - [`spawn`] runs the controller: it lists the CRD prefix, then watches it, so CRDs written
//!   by this apiserver, found in the store at start, or written by another apiserver on the
//!   same datastore all reach the registry. For each CRD it does what upstream's naming,
//!   establishing and finalizer controllers do: `status.acceptedNames`, the `NamesAccepted` and
//!   `Established` conditions, `storedVersions`, and on deletion the removal of every custom
//!   resource before the `customresourcecleanup.apiextensions.k8s.io` finalizer is dropped.
//!   Status writes are compare-and-swap and skipped when nothing changes, so several apiservers
//!   on one datastore agree without coordination.
//! - [`schema`]: structural schema validation, pruning and defaulting of custom resources
//!   ([`formats`]: the string formats it checks); [`cel`]: `x-kubernetes-validations` rules;
//! - [`validation`]: upstream's validation of the CRD itself.
//! - [`conversion`]: the `Webhook` conversion strategy (`ConversionReview`s).

pub(crate) mod cel;
pub(crate) mod conversion;
mod formats;
pub(crate) mod schema;
mod validation;

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, LazyLock, Mutex, PoisonError, RwLock};
use std::time::Duration;

use rk3s_datastore::{EventKind, ListOptions, WatchResponse};
use serde_json::{Value, json};

use crate::registry::{ALL_VERBS, GroupVersion, REGISTRY, ResourceInfo};
use crate::rest::{decode_stored, guaranteed_update};
use crate::server::AppState;
use crate::status::ApiError;
use crate::validation::NameRule;

/// The finalizer that holds a deleted CRD until its custom resources are gone.
pub(crate) const CLEANUP_FINALIZER: &str = "customresourcecleanup.apiextensions.k8s.io";
/// Where CRDs are stored.
const CRD_PREFIX: &str = "/registry/apiextensions.k8s.io/customresourcedefinitions/";
const CRD_GROUP: &str = "apiextensions.k8s.io";
/// How long the controller waits before listing again after a store error.
const RETRY: Duration = Duration::from_secs(1);
/// How often a terminating CRD whose custom resources are held by finalizers is looked at again.
const RESYNC: Duration = Duration::from_secs(2);

/// What a custom resource's version takes from its CRD beyond the common registry fields.
#[derive(Debug)]
pub(crate) struct CustomVersion {
    /// `schema.openAPIV3Schema` of this version (structural), if any.
    pub(crate) schema: Option<Value>,
    pub(crate) columns: Vec<PrinterColumn>,
    pub(crate) scale: Option<ScalePaths>,
    /// The CRD is being deleted: no new custom resources.
    pub(crate) terminating: bool,
    /// The version objects are stored in (`spec.versions[].storage`).
    pub(crate) storage_version: &'static str,
}

/// One `additionalPrinterColumns` entry.
#[derive(Debug, Clone)]
pub(crate) struct PrinterColumn {
    pub(crate) name: String,
    pub(crate) kind: String,
    pub(crate) format: String,
    pub(crate) description: String,
    pub(crate) priority: i64,
    pub(crate) json_path: String,
}

/// The `scale` subresource's paths (`.spec.replicas` form).
#[derive(Debug, Clone)]
pub(crate) struct ScalePaths {
    pub(crate) spec_replicas: String,
    pub(crate) status_replicas: String,
    pub(crate) label_selector: Option<String>,
}

/// The served custom resources at one moment.
#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    /// One entry per served group version, groups sorted by name, versions by upstream's
    /// version priority (the first of a group is its preferred version).
    pub(crate) groups: Vec<GroupVersion>,
    /// The conversion webhooks of the CRDs whose strategy is `Webhook`, by storage
    /// (`<group>/<plural>`, [`ResourceInfo::storage`]).
    webhooks: BTreeMap<&'static str, Arc<conversion::Webhook>>,
}

impl Snapshot {
    pub(crate) fn group_version(&self, group: &str, version: &str) -> Option<&GroupVersion> {
        self.groups
            .iter()
            .find(|g| g.group == group && g.version == version)
    }

    pub(crate) fn find(&self, group: &str, version: &str, plural: &str) -> Option<&ResourceInfo> {
        self.group_version(group, version)?
            .resources
            .iter()
            .find(|r| r.plural == plural)
    }

    /// The conversion webhook of the custom resources stored under `storage`, if any.
    pub(crate) fn webhook(&self, storage: &str) -> Option<Arc<conversion::Webhook>> {
        self.webhooks.get(storage).cloned()
    }
}

/// The live registry of custom resources of one apiserver.
#[derive(Debug, Default)]
pub(crate) struct CustomRegistry {
    current: RwLock<Arc<Snapshot>>,
}

impl CustomRegistry {
    /// The current snapshot (cheap: an `Arc` clone).
    pub(crate) fn snapshot(&self) -> Arc<Snapshot> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn publish(&self, snapshot: Snapshot) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(snapshot);
    }
}

/// Leaks each distinct string once: registry entries want `&'static str`, and the set of
/// names a cluster ever serves is small, so re-registering a CRD does not grow memory.
fn intern(s: &str) -> &'static str {
    static SET: LazyLock<Mutex<HashSet<&'static str>>> = LazyLock::new(Default::default);
    let mut set = SET.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(found) = set.get(s) {
        return found;
    }
    let leaked: &'static str = Box::leak(s.to_string().into_boxed_str());
    set.insert(leaked);
    leaked
}

/// Like [`intern`], for lists of names (short names, categories).
pub(crate) fn intern_list(items: &[String]) -> &'static [&'static str] {
    static SET: LazyLock<Mutex<HashSet<&'static [&'static str]>>> = LazyLock::new(Default::default);
    let interned: Vec<&'static str> = items.iter().map(|s| intern(s)).collect();
    let mut set = SET.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(found) = set.get(interned.as_slice()) {
        return found;
    }
    let leaked: &'static [&'static str] = Box::leak(interned.into_boxed_slice());
    set.insert(leaked);
    leaked
}

fn custom_roundtrip(v: Value) -> Result<Value, String> {
    Ok(v)
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    let mut cur = v;
    for p in path {
        cur = cur.get(*p).unwrap_or(&Value::Null);
    }
    cur.as_str().unwrap_or("")
}

fn strings_at(v: &Value, path: &[&str]) -> Vec<String> {
    let mut cur = v;
    for p in path {
        cur = cur.get(*p).unwrap_or(&Value::Null);
    }
    cur.as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// Whether condition `kind` of a CRD is `True`.
pub(crate) fn condition_true(crd: &Value, kind: &str) -> bool {
    crd.get("status")
        .and_then(|s| s.get("conditions"))
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter().any(|c| {
                c.get("type").and_then(Value::as_str) == Some(kind)
                    && c.get("status").and_then(Value::as_str) == Some("True")
            })
        })
}

/// Upstream's ordering of version names: GA before beta before alpha, higher numbers first,
/// then anything else alphabetically.
pub(crate) fn version_priority(
    v: &str,
) -> (u8, std::cmp::Reverse<u64>, std::cmp::Reverse<u64>, String) {
    use std::cmp::Reverse;
    let parsed = v.strip_prefix('v').and_then(|rest| {
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        let major: u64 = digits.parse().ok()?;
        let tail = &rest[digits.len()..];
        if tail.is_empty() {
            return Some((0, major, 0));
        }
        for (label, rank) in [("beta", 1u8), ("alpha", 2u8)] {
            if let Some(n) = tail.strip_prefix(label) {
                let minor: u64 = n.parse().ok()?;
                return Some((rank, major, minor));
            }
        }
        None
    });
    match parsed {
        Some((rank, major, minor)) => (rank, Reverse(major), Reverse(minor), String::new()),
        None => (3, Reverse(0), Reverse(0), v.to_string()),
    }
}

/// The registry entries of one CRD: one per served version, if it is established.
fn entries_of(crd: &Value) -> Vec<ResourceInfo> {
    if !condition_true(crd, "Established") {
        return Vec::new();
    }
    let group = str_at(crd, &["spec", "group"]);
    let names = crd
        .get("status")
        .and_then(|s| s.get("acceptedNames"))
        .unwrap_or(&Value::Null);
    let plural = str_at(names, &["plural"]);
    let kind = str_at(names, &["kind"]);
    if group.is_empty() || plural.is_empty() || kind.is_empty() {
        return Vec::new();
    }
    let list_kind = match str_at(names, &["listKind"]) {
        "" => format!("{kind}List"),
        l => l.to_string(),
    };
    let singular = match str_at(names, &["singular"]) {
        "" => kind.to_lowercase(),
        s => s.to_string(),
    };
    let terminating = !crate::rest::object_meta_str(crd, "deletionTimestamp").is_empty();
    let namespaced = str_at(crd, &["spec", "scope"]) != "Cluster";
    let storage_version = crd
        .get("spec")
        .and_then(|s| s.get("versions"))
        .and_then(Value::as_array)
        .and_then(|vs| {
            vs.iter()
                .find(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
        })
        .and_then(|v| v.get("name"))
        .and_then(Value::as_str)
        .map(intern);
    let versions = crd
        .get("spec")
        .and_then(|s| s.get("versions"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    versions
        .iter()
        .filter(|v| v.get("served").and_then(Value::as_bool) == Some(true))
        .filter_map(|v| {
            let version = v.get("name").and_then(Value::as_str)?;
            let subresources = v.get("subresources");
            let status = subresources.and_then(|s| s.get("status")).is_some();
            let scale = subresources
                .and_then(|s| s.get("scale"))
                .map(|s| ScalePaths {
                    spec_replicas: str_at(s, &["specReplicasPath"]).to_string(),
                    status_replicas: str_at(s, &["statusReplicasPath"]).to_string(),
                    label_selector: Some(str_at(s, &["labelSelectorPath"]).to_string())
                        .filter(|p| !p.is_empty()),
                });
            let columns = match v.get("additionalPrinterColumns").and_then(Value::as_array) {
                Some(cols) => cols
                    .iter()
                    .map(|c| PrinterColumn {
                        name: str_at(c, &["name"]).to_string(),
                        kind: str_at(c, &["type"]).to_string(),
                        format: str_at(c, &["format"]).to_string(),
                        description: str_at(c, &["description"]).to_string(),
                        priority: c.get("priority").and_then(Value::as_i64).unwrap_or(0),
                        json_path: str_at(c, &["jsonPath"]).to_string(),
                    })
                    .collect(),
                // Upstream's default: an Age column.
                None => vec![PrinterColumn {
                    name: "Age".into(),
                    kind: "date".into(),
                    format: String::new(),
                    description: "CreationTimestamp is a timestamp representing the server \
                                  time when this object was created."
                        .into(),
                    priority: 0,
                    json_path: ".metadata.creationTimestamp".into(),
                }],
            };
            // `selectableFields` (`.spec.size`) become field selector paths (`spec.size`).
            let selectable: Vec<String> = v
                .get("selectableFields")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|f| str_at(f, &["jsonPath"]).trim_start_matches('.').to_string())
                .filter(|p| !p.is_empty())
                .collect();
            let schema = v
                .get("schema")
                .and_then(|s| s.get("openAPIV3Schema"))
                .cloned();
            Some(ResourceInfo {
                group: intern(group),
                version: intern(version),
                kind: intern(kind),
                list_kind: intern(&list_kind),
                plural: intern(plural),
                singular: singular.clone(),
                namespaced,
                short_names: intern_list(&strings_at(names, &["shortNames"])),
                categories: intern_list(&strings_at(names, &["categories"])),
                verbs: ALL_VERBS,
                status_subresource: status,
                scale_subresource: scale.is_some(),
                // Custom resources always carry a generation (bumped on changes outside
                // metadata, and outside status when the status subresource is on).
                generation: true,
                create_on_update: false,
                // A PUT must name the version it replaces, as upstream's custom resources.
                unconditional_update: false,
                storage: intern(&format!("{group}/{plural}")),
                name_rule: NameRule::Subdomain,
                fields: intern_list(&selectable),
                roundtrip: custom_roundtrip,
                schema: crate::registry::schema_of::<Value>,
                custom: Some(Arc::new(CustomVersion {
                    schema,
                    columns,
                    scale,
                    terminating,
                    storage_version: storage_version.unwrap_or_else(|| intern(version)),
                })),
                conversion: None,
            })
        })
        .collect()
}

/// The snapshot serving `crds`.
pub(crate) fn build_snapshot(crds: &BTreeMap<String, Value>) -> Snapshot {
    let mut by_gv: BTreeMap<(String, String), Vec<ResourceInfo>> = BTreeMap::new();
    let mut webhooks = BTreeMap::new();
    for crd in crds.values() {
        let entries = entries_of(crd);
        if let (Some(first), Some(webhook)) = (entries.first(), conversion::Webhook::of(crd)) {
            webhooks.insert(first.storage, Arc::new(webhook));
        }
        for info in entries {
            // A built-in group version is never shadowed.
            if REGISTRY.group_version(info.group, info.version).is_some() {
                continue;
            }
            by_gv
                .entry((info.group.to_string(), info.version.to_string()))
                .or_default()
                .push(info);
        }
    }
    let mut groups: Vec<GroupVersion> = by_gv
        .into_values()
        .filter_map(|mut resources| {
            resources.sort_by(|a, b| a.plural.cmp(b.plural));
            let first = resources.first()?;
            Some(GroupVersion {
                group: first.group,
                version: first.version,
                resources,
            })
        })
        .collect();
    groups.sort_by(|a, b| {
        a.group
            .cmp(b.group)
            .then_with(|| version_priority(a.version).cmp(&version_priority(b.version)))
    });
    Snapshot { groups, webhooks }
}

// ---------------------------------------------------------------------------------------------
// CRD defaults and status

/// Upstream's defaults of a CRD (`SetDefaults_CustomResourceDefinition*`): singular and
/// listKind names, the conversion strategy.
pub(crate) fn default_crd(obj: &mut Value) {
    let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    if let Some(names) = spec.get_mut("names").and_then(Value::as_object_mut) {
        let kind = names
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if names
            .get("singular")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            names.insert("singular".into(), json!(kind.to_lowercase()));
        }
        if names
            .get("listKind")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
            && !kind.is_empty()
        {
            names.insert("listKind".into(), json!(format!("{kind}List")));
        }
    }
    let conversion = spec
        .entry("conversion")
        .or_insert_with(|| json!({"strategy": "None"}));
    if conversion.get("strategy").is_none() {
        conversion["strategy"] = json!("None");
    }
}

/// A condition entry; the transition time is kept when the status did not change.
fn set_condition(status: &mut Value, kind: &str, value: &str, reason: &str, message: &str) {
    if !status.get("conditions").is_some_and(Value::is_array) {
        status["conditions"] = json!([]);
    }
    let Some(conditions) = status["conditions"].as_array_mut() else {
        return;
    };
    let now = crate::time::now_rfc3339();
    if let Some(c) = conditions
        .iter_mut()
        .find(|c| c.get("type").and_then(Value::as_str) == Some(kind))
    {
        if c.get("status").and_then(Value::as_str) != Some(value) {
            c["lastTransitionTime"] = json!(now);
        }
        c["status"] = json!(value);
        c["reason"] = json!(reason);
        c["message"] = json!(message);
    } else {
        conditions.push(json!({
            "type": kind, "status": value, "lastTransitionTime": now,
            "reason": reason, "message": message,
        }));
    }
}

/// The names of `names` that another CRD of the same group already has accepted, as
/// upstream's naming controller checks them; `Err` carries the reason and message.
fn check_names(
    name: &str,
    crd: &Value,
    all: &BTreeMap<String, Value>,
) -> Result<(), (&'static str, String)> {
    let group = str_at(crd, &["spec", "group"]);
    let names = crd
        .get("spec")
        .and_then(|s| s.get("names"))
        .unwrap_or(&Value::Null);
    let plural = str_at(names, &["plural"]);
    let singular = str_at(names, &["singular"]);
    let kind = str_at(names, &["kind"]);
    let list_kind = str_at(names, &["listKind"]);
    let short = strings_at(names, &["shortNames"]);
    // Built-ins of the same group (a CRD cannot take over `deployments.apps`).
    for gv in REGISTRY.groups.iter().filter(|g| g.group == group) {
        for r in &gv.resources {
            if r.plural == plural || r.singular == singular || r.short_names.contains(&plural) {
                return Err(("NameConflict", format!("{plural:?} is already in use")));
            }
            if r.kind == kind || r.list_kind == list_kind {
                return Err(("KindConflict", format!("{kind:?} is already in use")));
            }
        }
    }
    for (other_name, other) in all {
        if other_name == name || str_at(other, &["spec", "group"]) != group {
            continue;
        }
        let accepted = other
            .get("status")
            .and_then(|s| s.get("acceptedNames"))
            .unwrap_or(&Value::Null);
        let o_plural = str_at(accepted, &["plural"]);
        if o_plural.is_empty() {
            continue;
        }
        let o_singular = str_at(accepted, &["singular"]);
        let o_short = strings_at(accepted, &["shortNames"]);
        let taken = |n: &str| {
            !n.is_empty() && (n == o_plural || n == o_singular || o_short.iter().any(|s| s == n))
        };
        if taken(plural) {
            return Err(("NameConflict", format!("{plural:?} is already in use")));
        }
        if taken(singular) {
            return Err(("NameConflict", format!("{singular:?} is already in use")));
        }
        if let Some(s) = short.iter().find(|s| taken(s)) {
            return Err(("NameConflict", format!("{s:?} is already in use")));
        }
        let o_kind = str_at(accepted, &["kind"]);
        let o_list = str_at(accepted, &["listKind"]);
        if kind == o_kind || kind == o_list {
            return Err(("KindConflict", format!("{kind:?} is already in use")));
        }
        if list_kind == o_kind || list_kind == o_list {
            return Err(("KindConflict", format!("{list_kind:?} is already in use")));
        }
    }
    Ok(())
}

pub(crate) use validation::{validate_crd, validate_names};

/// What upstream's custom resource strategy validates, on the object as it will be stored:
/// the structural schema (ratcheting against `old` on updates), then, unless that found a
/// blocking problem (a wrong type, a missing required field, an unsupported enum value, too
/// long or too many), the CEL rules.
pub(crate) fn validate_custom_resource(
    schema: &Value,
    new: &Value,
    old: Option<&Value>,
) -> Vec<crate::status::Cause> {
    let mut causes = schema::validate_update(schema, new, old);
    if !cel::has_rules(schema) {
        return causes;
    }
    let blocking = causes.iter().any(|c| {
        matches!(
            c.reason,
            "FieldValueNotSupported"
                | "FieldValueRequired"
                | "FieldValueTooLong"
                | "FieldValueTooMany"
                | "FieldValueTypeInvalid"
        )
    });
    if blocking {
        causes.push(crate::status::Cause {
            reason: "FieldValueInvalid",
            message: "Invalid value: \"null\": some validation rules were not checked because \
                      the object was invalid; correct the existing errors to complete validation"
                .into(),
            field: "<nil>".into(),
        });
    } else {
        causes.extend(cel::validate(schema, new, old));
    }
    causes
}

/// The status a CRD should have: accepted names and conditions, stored versions.
pub(crate) fn desired_status(name: &str, crd: &Value, all: &BTreeMap<String, Value>) -> Value {
    let mut status = crd.get("status").cloned().unwrap_or_else(|| json!({}));
    if !status.is_object() {
        status = json!({});
    }
    match check_names(name, crd, all) {
        Ok(()) => {
            let names = crd
                .get("spec")
                .and_then(|s| s.get("names"))
                .cloned()
                .unwrap_or_else(|| json!({}));
            status["acceptedNames"] = names;
            set_condition(
                &mut status,
                "NamesAccepted",
                "True",
                "NoConflicts",
                "no conflicts found",
            );
            set_condition(
                &mut status,
                "Established",
                "True",
                "InitialNamesAccepted",
                "the initial names have been accepted",
            );
        }
        Err((reason, message)) => {
            if status.get("acceptedNames").is_none() {
                status["acceptedNames"] = json!({"plural": "", "kind": ""});
            }
            set_condition(&mut status, "NamesAccepted", "False", reason, &message);
            if !condition_true(&json!({ "status": status.clone() }), "Established") {
                set_condition(
                    &mut status,
                    "Established",
                    "False",
                    "NotAccepted",
                    "not all names are accepted",
                );
            }
        }
    }
    // storedVersions: every version ever marked storage, in order.
    let mut stored = strings_at(&status, &["storedVersions"]);
    if let Some(storage) = crd
        .get("spec")
        .and_then(|s| s.get("versions"))
        .and_then(Value::as_array)
        .and_then(|vs| {
            vs.iter()
                .find(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
        })
        .and_then(|v| v.get("name"))
        .and_then(Value::as_str)
        && !stored.iter().any(|s| s == storage)
    {
        stored.push(storage.to_string());
    }
    status["storedVersions"] = json!(stored);
    status
}

/// What the CRD delete handler does to the CRD instead of removing it: upstream's REST
/// delete of CRDs adds the cleanup finalizer and the `Terminating` condition, so that the
/// custom resources are removed first (by the controller here).
pub(crate) fn prepare_delete(crd: &mut Value) {
    if let Some(meta) = crd.get_mut("metadata").and_then(Value::as_object_mut) {
        let fins = meta.entry("finalizers").or_insert_with(|| json!([]));
        if let Some(list) = fins.as_array_mut()
            && !list.iter().any(|f| f == CLEANUP_FINALIZER)
        {
            list.push(json!(CLEANUP_FINALIZER));
        }
    }
    if !crd.get("status").is_some_and(Value::is_object) {
        crd["status"] = json!({});
    }
    set_condition(
        &mut crd["status"],
        "Terminating",
        "True",
        "InstanceDeletionPending",
        "CustomResourceDefinition marked for deletion; CustomResource deletion will begin soon",
    );
}

// ---------------------------------------------------------------------------------------------
// the controller

fn crd_info() -> Result<&'static ResourceInfo, ApiError> {
    REGISTRY
        .find(CRD_GROUP, "v1", "customresourcedefinitions")
        .ok_or_else(|| ApiError::internal("customresourcedefinitions are not registered"))
}

/// Lists the CRDs, publishes their snapshot; returns them and the revision read.
async fn load(state: &AppState) -> Result<(BTreeMap<String, Value>, i64), ApiError> {
    let resp = state
        .store
        .list(CRD_PREFIX.as_bytes(), ListOptions::default())
        .await?;
    let mut crds = BTreeMap::new();
    for kv in &resp.kvs {
        let obj = decode_stored(kv)?;
        crds.insert(crate::rest::object_meta_str(&obj, "name").to_string(), obj);
    }
    publish(state, &crds, resp.revision);
    Ok((crds, resp.revision))
}

/// Serves `crds` (as of `revision`), and stops the watch caches of the custom resources they
/// no longer serve (upstream tears down a removed CRD's storage and its cacher).
fn publish(state: &AppState, crds: &BTreeMap<String, Value>, revision: i64) {
    let snapshot = build_snapshot(crds);
    let served: HashSet<Vec<u8>> = snapshot
        .groups
        .iter()
        .flat_map(|g| &g.resources)
        .map(|r| r.prefix(None))
        .collect();
    state.crds.publish(snapshot);
    state.watch_cache.stop_unserved(&served, revision);
}

/// Serves the CRDs already in the store right away (called before the listener opens).
pub(crate) async fn initial_load(state: &AppState) -> Result<(), ApiError> {
    load(state).await.map(|_| ())
}

/// Starts the CRD controller; it ends on server shutdown.
pub(crate) fn spawn(state: AppState) {
    tokio::spawn(async move {
        let mut shutdown = state.shutdown.clone();
        loop {
            tokio::select! {
                r = run_once(&state) => {
                    if let Err(e) = r {
                        tracing::warn!(error = %e.message, "CRD controller: restarting");
                    } else {
                        return;
                    }
                }
                _ = shutdown.changed() => return,
            }
            if *shutdown.borrow() {
                return;
            }
            tokio::time::sleep(RETRY).await;
        }
    });
}

/// List, reconcile all, then follow the watch; returns `Ok` when the store's watch ends.
#[tracing::instrument(name = "crd_controller", skip_all)]
async fn run_once(state: &AppState) -> Result<(), ApiError> {
    let (mut crds, revision) = load(state).await?;
    let names: Vec<String> = crds.keys().cloned().collect();
    for name in names {
        reconcile(state, &crds, &name).await;
    }
    let mut watch = state
        .store
        .watch_prefix(CRD_PREFIX.as_bytes(), revision + 1, false)
        .await?;
    let mut resync = tokio::time::interval(RESYNC);
    resync.tick().await;
    loop {
        let next = tokio::select! {
            next = watch.next() => next,
            _ = resync.tick() => {
                let terminating: Vec<String> = crds
                    .iter()
                    .filter(|(_, c)| !crate::rest::object_meta_str(c, "deletionTimestamp").is_empty())
                    .map(|(n, _)| n.clone())
                    .collect();
                for name in terminating {
                    reconcile(state, &crds, &name).await;
                }
                continue;
            }
        };
        let Some(next) = next else {
            return Ok(());
        };
        let (events, revision) = match next? {
            WatchResponse::Events { events, revision } => (events, revision),
            WatchResponse::Progress { .. } => continue,
            WatchResponse::Compacted { .. } => {
                return Err(ApiError::internal("CRD watch compacted"));
            }
        };
        let mut touched = Vec::new();
        for ev in &events {
            let key = String::from_utf8_lossy(&ev.kv.key);
            let name = key.trim_start_matches(CRD_PREFIX).to_string();
            match ev.kind {
                EventKind::Put => {
                    crds.insert(name.clone(), decode_stored(&ev.kv)?);
                }
                EventKind::Delete => {
                    crds.remove(&name);
                }
            }
            touched.push(name);
        }
        publish(state, &crds, revision);
        // A name freed by a deleted CRD may let another one's names be accepted.
        let names: Vec<String> = crds.keys().cloned().collect();
        for name in names {
            if touched.contains(&name) || !condition_true(&crds[&name], "NamesAccepted") {
                reconcile(state, &crds, &name).await;
            }
        }
    }
}

/// Brings one CRD's status up to date, and finishes its deletion.
async fn reconcile(state: &AppState, crds: &BTreeMap<String, Value>, name: &str) {
    let result = async {
        let Some(crd) = crds.get(name) else {
            return Ok(());
        };
        let info = crd_info()?;
        let key = info.key(None, name);
        if !crate::rest::object_meta_str(crd, "deletionTimestamp").is_empty() {
            return finish_delete(state, info, &key, name, crd).await;
        }
        guaranteed_update(state, info, &key, name, false, |current| {
            if !crate::rest::object_meta_str(current, "deletionTimestamp").is_empty() {
                return Ok(current.clone());
            }
            let mut new = current.clone();
            new["status"] = desired_status(name, current, crds);
            Ok(new)
        })
        .await
        .map(|_| ())
    }
    .await;
    match result {
        Ok(()) => {}
        Err(e) if e.code == 404 => {}
        Err(e) => tracing::warn!(crd = name, error = %e.message, "CRD status update failed"),
    }
}

/// Deletes every custom resource of a deleted CRD, then drops the cleanup finalizer (the
/// CRD goes away with its last finalizer). A custom resource with finalizers is marked for
/// deletion and waited for (the resync looks again), as upstream's finalizer controller does.
async fn finish_delete(
    state: &AppState,
    info: &ResourceInfo,
    key: &[u8],
    name: &str,
    crd: &Value,
) -> Result<(), ApiError> {
    let has_finalizer = crd
        .get("metadata")
        .and_then(|m| m.get("finalizers"))
        .and_then(Value::as_array)
        .is_some_and(|f| f.iter().any(|f| f == CLEANUP_FINALIZER));
    if !has_finalizer {
        return Ok(());
    }
    let group = str_at(crd, &["spec", "group"]);
    let plural = match str_at(crd, &["status", "acceptedNames", "plural"]) {
        "" => str_at(crd, &["spec", "names", "plural"]),
        p => p,
    };
    let mut remaining = 0;
    if !group.is_empty() && !plural.is_empty() {
        let prefix = format!("/registry/{group}/{plural}/");
        let resp = state
            .store
            .list(prefix.as_bytes(), ListOptions::default())
            .await?;
        for kv in resp.kvs {
            let mut obj = decode_stored(&kv)?;
            let held = obj
                .get("metadata")
                .and_then(|m| m.get("finalizers"))
                .and_then(Value::as_array)
                .is_some_and(|f| !f.is_empty());
            if !held {
                // Lost a race with a writer: count it, the resync comes back for it.
                if let rk3s_datastore::WriteOutcome::Conflict { .. } =
                    state.store.delete(&kv.key, Some(kv.mod_revision)).await?
                {
                    remaining += 1;
                }
                continue;
            }
            remaining += 1;
            if crate::rest::object_meta_str(&obj, "deletionTimestamp").is_empty()
                && let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut)
            {
                meta.insert(
                    "deletionTimestamp".into(),
                    json!(crate::time::now_rfc3339()),
                );
                meta.insert("deletionGracePeriodSeconds".into(), json!(0));
                let bytes = crate::rest::encode_for_store(&obj)?;
                state
                    .store
                    .update(&kv.key, bytes, kv.mod_revision, 0)
                    .await?;
            }
        }
    }
    if remaining > 0 {
        let message =
            format!("could not confirm zero CustomResources remaining: {remaining} remaining");
        guaranteed_update(state, info, key, name, false, |current| {
            let mut new = current.clone();
            if new.get("status").is_some_and(Value::is_object) {
                set_condition(
                    &mut new["status"],
                    "Terminating",
                    "True",
                    "InstanceDeletionCheck",
                    &message,
                );
            }
            Ok(new)
        })
        .await?;
        return Ok(());
    }
    tracing::info!(crd = name, "custom resources deleted");
    guaranteed_update(state, info, key, name, false, |current| {
        let mut new = current.clone();
        if let Some(f) = new
            .get_mut("metadata")
            .and_then(|m| m.get_mut("finalizers"))
            .and_then(Value::as_array_mut)
        {
            f.retain(|f| f != CLEANUP_FINALIZER);
        }
        if new.get("status").is_some_and(Value::is_object) {
            set_condition(
                &mut new["status"],
                "Terminating",
                "False",
                "InstanceDeletionCompleted",
                "removed all instances",
            );
        }
        Ok(new)
    })
    .await
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crd(name: &str, plural: &str, kind: &str) -> Value {
        json!({
            "metadata": {"name": name},
            "spec": {
                "group": "example.com", "scope": "Namespaced",
                "names": {"plural": plural, "singular": kind.to_lowercase(), "kind": kind,
                          "listKind": format!("{kind}List"), "shortNames": ["x"]},
                "versions": [
                    {"name": "v1beta1", "served": true, "storage": false},
                    {"name": "v1", "served": true, "storage": true,
                     "subresources": {"status": {}}},
                ],
            },
        })
    }

    #[test]
    fn names_are_accepted_and_conflicts_refused() {
        let mut all = BTreeMap::new();
        let a = crd("foos.example.com", "foos", "Foo");
        let status = desired_status("foos.example.com", &a, &all);
        assert_eq!(status["acceptedNames"]["plural"], "foos");
        assert_eq!(status["storedVersions"], json!(["v1"]));
        let mut a = a;
        a["status"] = status;
        assert!(condition_true(&a, "Established"));
        all.insert("foos.example.com".to_string(), a);
        // Another CRD of the group with the same short name: NamesAccepted False.
        let b = crd("bars.example.com", "bars", "Bar");
        let status = desired_status("bars.example.com", &b, &all);
        let cond = status["conditions"]
            .as_array()
            .expect("conditions")
            .iter()
            .find(|c| c["type"] == "NamesAccepted")
            .cloned()
            .expect("NamesAccepted");
        assert_eq!(cond["status"], "False");
        assert_eq!(cond["reason"], "NameConflict");
        assert_eq!(cond["message"], "\"x\" is already in use");
        let mut b = b;
        b["status"] = status;
        assert!(!condition_true(&b, "Established"));
    }

    #[test]
    fn snapshot_serves_established_versions_in_priority_order() {
        let mut a = crd("foos.example.com", "foos", "Foo");
        a["status"] = desired_status("foos.example.com", &a, &BTreeMap::new());
        let mut all = BTreeMap::new();
        all.insert("foos.example.com".to_string(), a);
        let snap = build_snapshot(&all);
        let versions: Vec<&str> = snap.groups.iter().map(|g| g.version).collect();
        assert_eq!(versions, ["v1", "v1beta1"]);
        let foo = snap.find("example.com", "v1", "foos").expect("foos");
        assert_eq!(foo.storage, "example.com/foos");
        assert_eq!(foo.key(Some("ns"), "a"), b"/registry/example.com/foos/ns/a");
        assert!(foo.status_subresource);
        assert!(
            !snap
                .find("example.com", "v1beta1", "foos")
                .expect("beta")
                .status_subresource
        );
        assert_eq!(
            intern("foos").as_ptr(),
            foo.plural.as_ptr(),
            "interned once"
        );
    }

    #[test]
    fn version_priority_orders_like_upstream() {
        let mut vs = vec![
            "v1alpha1",
            "foo",
            "v2",
            "v1beta2",
            "v1",
            "v1beta1",
            "v11alpha2",
        ];
        vs.sort_by_key(|v| version_priority(v));
        assert_eq!(
            vs,
            [
                "v2",
                "v1",
                "v1beta2",
                "v1beta1",
                "v11alpha2",
                "v1alpha1",
                "foo"
            ]
        );
    }
}
