//! Server-side apply and `metadata.managedFields`.
//!
//! Every write records who set which fields: `managedFields` holds one entry per manager,
//! operation (`Apply` for server-side apply, `Update` for everything else), apiVersion and
//! subresource, each with the [`FieldSet`] it owns in upstream's `FieldsV1` encoding.
//!
//! - [`track_update`] is the `Update` bookkeeping of create, update and patch: the writer owns
//!   the fields it changed, which other managers lose; removed fields leave every set.
//! - [`apply`] merges an applied configuration into the live object by the list types of
//!   [`schema`], refuses to change fields other managers own (409 with one cause per field)
//!   unless forced, and removes the fields the applier set before, omits now, and nobody else
//!   owns. The fields of an existing object without managed fields belong to
//!   `before-first-apply`, as upstream.
//!
//! `apiVersion`, `kind`, the server-owned metadata, `managedFields` itself, and the part of the
//! object a request may not change (`status` on a main resource with a status subresource,
//! everything else on `/status`) are never tracked.

mod fieldset;
mod managed;
mod schema;
mod walk;

use serde_json::{Value, json};

pub(crate) use fieldset::FieldSet;
use fieldset::{Elem, path_string};
use managed::{Entry, Managed, Operation};
use schema::{Schema, StructuralSchema, TypedSchema};
use walk::KeyError;

use crate::registry::ResourceInfo;
use crate::status::ApiError;

/// Metadata fields the server owns, never tracked.
const UNTRACKED_METADATA: &[&str] = &[
    "name",
    "namespace",
    "generateName",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "selfLink",
    "managedFields",
];

/// The manager of the fields of an object that has no managed fields when it is first applied.
const BEFORE_FIRST_APPLY: &str = "before-first-apply";

/// Longest `fieldManager` upstream accepts, and the length a User-Agent prefix is cut to.
pub(crate) const FIELD_MANAGER_MAX: usize = 128;

/// Who writes what: the part of the request that managed fields record.
#[derive(Debug, Clone)]
pub(crate) struct Writer<'a> {
    pub(crate) info: &'a ResourceInfo,
    pub(crate) manager: String,
    /// `""` for the main resource, `"status"`, ...
    pub(crate) subresource: &'a str,
    pub(crate) now: String,
}

impl Writer<'_> {
    /// The type's merge facts: the built-in type's, or a custom resource's structural schema.
    fn schema(&self) -> Box<dyn Schema + '_> {
        match self.info.custom.as_ref().and_then(|c| c.schema.as_ref()) {
            Some(root) => Box::new(StructuralSchema::new(root)),
            None => Box::new(TypedSchema::of(self.info)),
        }
    }

    fn api_version(&self) -> String {
        self.info.api_version()
    }

    fn is_status(&self) -> bool {
        self.subresource == "status"
    }
}

/// The manager of a non-apply write: `fieldManager`, else the User-Agent up to its first `/`
/// (`kubectl/v1.32.0 (...)` is `kubectl`), as upstream.
pub(crate) fn manager_of(field_manager: Option<&str>, user_agent: Option<&str>) -> String {
    if let Some(m) = field_manager.filter(|m| !m.is_empty()) {
        return m.to_string();
    }
    let ua = user_agent.unwrap_or("");
    let prefix = ua.split('/').next().unwrap_or("");
    prefix.chars().take(FIELD_MANAGER_MAX).collect()
}

/// The part of `obj` whose ownership is tracked for `writer`.
fn tracked(writer: &Writer<'_>, obj: &Value) -> Value {
    let Some(o) = obj.as_object() else {
        return json!({});
    };
    if writer.is_status() {
        return match o.get("status") {
            Some(s) => json!({ "status": s }),
            None => json!({}),
        };
    }
    let mut out = o.clone();
    out.remove("apiVersion");
    out.remove("kind");
    if writer.info.status_subresource {
        out.remove("status");
    }
    if let Some(Value::Object(meta)) = out.get_mut("metadata") {
        for f in UNTRACKED_METADATA {
            meta.remove(*f);
        }
        if meta.is_empty() {
            out.remove("metadata");
        }
    }
    Value::Object(out)
}

fn entries_of(obj: Option<&Value>) -> Vec<Entry> {
    match obj.map(managed::decode) {
        Some(Managed::Entries(e)) => e,
        _ => Vec::new(),
    }
}

fn restore(new: &mut Value, from: Option<&Value>) {
    let raw = from.and_then(managed::raw).cloned();
    if let Some(meta) = new.get_mut("metadata").and_then(Value::as_object_mut) {
        match raw {
            Some(r) => meta.insert("managedFields".into(), r),
            None => meta.remove("managedFields"),
        };
    }
}

/// [`track_update`] of a client's write, whose `managedFields` may be the client's: then
/// the entries kept must be valid (upstream validates them after its field manager ran).
pub(crate) fn track_client_update(
    writer: &Writer<'_>,
    old: Option<&Value>,
    new: &mut Value,
) -> Result<(), crate::status::ApiError> {
    track_update(writer, old, new);
    let causes = crate::validation::managed_fields(new);
    if causes.is_empty() {
        Ok(())
    } else {
        let name = new
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("");
        Err(crate::status::ApiError::invalid(writer.info, name, causes))
    }
}

/// Records an `Update` of `old` (`None` for a create) into `new` by `writer`: sets
/// `new.metadata.managedFields`.
///
/// Managed fields the client sent replace the stored ones if they differ from them (that is how
/// clients edit them); `[{}]` clears them (the object is stored without any).
pub(crate) fn track_update(writer: &Writer<'_>, old: Option<&Value>, new: &mut Value) {
    let schema = writer.schema();
    let sent = managed::raw(new)
        .filter(|r| r.as_array().is_some_and(|a| !a.is_empty()))
        .filter(|r| Some(*r) != old.and_then(managed::raw))
        .cloned();
    let mut entries = match &sent {
        Some(_) => match managed::decode(new) {
            Managed::Reset => {
                restore(new, None);
                return;
            }
            Managed::Entries(e) => e,
        },
        None => entries_of(old),
    };
    let old_t = old.map(|o| tracked(writer, o));
    let new_t = tracked(writer, new);
    let (mut changed, mut removed) = (FieldSet::default(), FieldSet::default());
    walk::diff(
        schema.as_ref(),
        &mut Vec::new(),
        old_t.as_ref(),
        Some(&new_t),
        &mut changed,
        &mut removed,
    );
    // The root is never a member: an empty object owns nothing.
    changed.member = false;
    removed.member = false;
    changed.prune();
    removed.prune();
    if changed.is_empty() && removed.is_empty() && sent.is_none() {
        restore(new, old);
        return;
    }
    let api_version = writer.api_version();
    let mut mine = None;
    for (i, e) in entries.iter_mut().enumerate() {
        e.fields.remove_subtrees_of(&removed);
        if e.is(
            &writer.manager,
            Operation::Update,
            &api_version,
            writer.subresource,
        ) {
            mine = Some(i);
        } else {
            e.fields = e.fields.difference(&changed);
        }
    }
    if !changed.is_empty() {
        let i = match mine {
            Some(i) => i,
            None => {
                entries.push(Entry {
                    manager: writer.manager.clone(),
                    operation: Operation::Update,
                    api_version: api_version.clone(),
                    time: None,
                    subresource: writer.subresource.to_string(),
                    fields: FieldSet::default(),
                });
                entries.len() - 1
            }
        };
        entries[i].fields.union(&changed);
        entries[i].time = Some(writer.now.clone());
    }
    managed::encode(new, entries);
}

/// One field another manager owns with a different value.
struct Conflict {
    manager: String,
    path: Vec<Elem>,
}

/// How upstream names a manager in conflicts: `"m"`, `"m" with subresource "status"`, and for
/// updates `... using apps/v1 at <time>`.
fn print_manager(e: &Entry) -> String {
    let mut s = format!("{:?}", e.manager);
    if !e.subresource.is_empty() {
        s = format!("{s} with subresource {:?}", e.subresource);
    }
    if e.operation == Operation::Update {
        s = format!("{s} using {}", e.api_version);
        if let Some(t) = &e.time {
            s = format!("{s} at {t}");
        }
    }
    s
}

/// The 409 of an apply that would change fields other managers own.
fn conflict_error(mut conflicts: Vec<Conflict>) -> ApiError {
    conflicts.sort_by(|a, b| a.manager.cmp(&b.manager).then_with(|| a.path.cmp(&b.path)));
    let causes: Vec<Value> = conflicts
        .iter()
        .map(|c| {
            json!({
                "reason": "FieldManagerConflict",
                "message": format!("conflict with {}", c.manager),
                "field": path_string(&c.path),
            })
        })
        .collect();
    let message = if let [c] = conflicts.as_slice() {
        format!(
            "Apply failed with 1 conflict: conflict with {}: {}",
            c.manager,
            path_string(&c.path)
        )
    } else {
        let mut lines = Vec::new();
        let mut last: Option<&str> = None;
        for c in &conflicts {
            if last != Some(c.manager.as_str()) {
                lines.push(format!("conflicts with {}:", c.manager));
                last = Some(&c.manager);
            }
            lines.push(format!("- {}", path_string(&c.path)));
        }
        format!(
            "Apply failed with {} conflicts: {}",
            conflicts.len(),
            lines.join("\n")
        )
    };
    ApiError {
        details: Some(json!({ "causes": causes })),
        ..ApiError::new(409, "Conflict", message)
    }
}

fn key_error(info: &ResourceInfo, name: &str, e: KeyError) -> ApiError {
    ApiError::invalid(
        info,
        name,
        vec![crate::status::Cause {
            reason: "FieldValueInvalid",
            message: format!("Invalid value: {}", e.message),
            field: e.path.trim_start_matches('.').to_string(),
        }],
    )
}

/// Server-side apply of the configuration `config` by `writer` to `live` (`None`: the object
/// does not exist yet). Returns the merged object with its managed fields, ready for the
/// usual typed check, defaulting and storage.
pub(crate) fn apply(
    writer: &Writer<'_>,
    live: Option<&Value>,
    config: &Value,
    force: bool,
) -> Result<Value, ApiError> {
    let schema = writer.schema();
    let name = config
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    let config_t = tracked(writer, config);
    let mut applied = FieldSet::default();
    walk::field_set(
        schema.as_ref(),
        &mut Vec::new(),
        &config_t,
        &mut applied,
        true,
    )
    .map_err(|e| key_error(writer.info, name, e))?;
    applied.member = false;
    applied.prune();

    let live_obj = match live {
        Some(l) => l.clone(),
        None => {
            let mut meta = serde_json::Map::new();
            for f in ["name", "namespace"] {
                if let Some(v) = config.pointer(&format!("/metadata/{f}")) {
                    meta.insert(f.into(), v.clone());
                }
            }
            json!({
                "apiVersion": config.get("apiVersion").cloned().unwrap_or(Value::Null),
                "kind": config.get("kind").cloned().unwrap_or(Value::Null),
                "metadata": meta,
            })
        }
    };
    let live_t = tracked(writer, &live_obj);
    let mut entries = entries_of(Some(&live_obj));
    let api_version = writer.api_version();
    // An existing object nobody is recorded for (created before tracking, or cleared): its
    // fields belong to `before-first-apply`, as upstream, so the first apply conflicts where it
    // changes them.
    if live.is_some() && entries.is_empty() {
        let mut fields = FieldSet::default();
        let _ = walk::field_set(
            schema.as_ref(),
            &mut Vec::new(),
            &live_t,
            &mut fields,
            false,
        );
        fields.member = false;
        fields.prune();
        entries.push(Entry {
            manager: BEFORE_FIRST_APPLY.into(),
            operation: Operation::Update,
            api_version: api_version.clone(),
            time: None,
            subresource: String::new(),
            fields,
        });
    }
    let is_mine = |e: &Entry| {
        e.is(
            &writer.manager,
            Operation::Apply,
            &api_version,
            writer.subresource,
        )
    };

    // Fields another manager owns that this apply would change.
    let mut conflicts = Vec::new();
    for (i, e) in entries.iter().enumerate().filter(|(_, e)| !is_mine(e)) {
        for path in e.fields.intersection(&applied).members() {
            if matches!(path.last(), Some(Elem::Key(_) | Elem::Value(_))) {
                continue;
            }
            if walk::value_at(&live_t, &path) != walk::value_at(&config_t, &path) {
                conflicts.push((i, path));
            }
        }
    }
    if !conflicts.is_empty() {
        if !force {
            return Err(conflict_error(
                conflicts
                    .into_iter()
                    .map(|(i, path)| Conflict {
                        manager: print_manager(&entries[i]),
                        path,
                    })
                    .collect(),
            ));
        }
        for (i, path) in &conflicts {
            entries[*i].fields.remove_subtree(path);
            entries[*i].fields.prune();
        }
    }

    let mut merged = live_obj.clone();
    walk::merge(schema.as_ref(), &mut Vec::new(), &mut merged, &config_t)
        .map_err(|e| key_error(writer.info, name, e))?;

    // What this manager applied before, omits now, and nobody else owns goes away.
    let previous = entries
        .iter()
        .find(|e| is_mine(e))
        .map(|e| e.fields.clone())
        .unwrap_or_default();
    let mut others = FieldSet::default();
    for e in entries.iter().filter(|e| !is_mine(e)) {
        others.union(&e.fields);
    }
    let dropped = previous.difference(&applied).difference(&others);
    walk::remove_fields(&mut merged, &dropped);

    // A no-op apply leaves the object, and so its managed fields, as they are.
    if live.is_some() && !force && previous == applied && tracked(writer, &merged) == live_t {
        return Ok(live_obj);
    }
    entries.retain(|e| !is_mine(e));
    entries.push(Entry {
        manager: writer.manager.clone(),
        operation: Operation::Apply,
        api_version,
        time: Some(writer.now.clone()),
        subresource: writer.subresource.to_string(),
        fields: applied,
    });
    managed::encode(&mut merged, entries);
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::REGISTRY;

    fn writer(manager: &str) -> Writer<'static> {
        Writer {
            info: REGISTRY
                .find("apps", "v1", "deployments")
                .expect("deployments"),
            manager: manager.into(),
            subresource: "",
            now: "2026-11-29T00:00:00Z".into(),
        }
    }

    fn deploy(replicas: i64, image: &str) -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "d", "namespace": "default", "labels": {"app": "d"}},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": "d"}},
                "template": {"metadata": {"labels": {"app": "d"}},
                    "spec": {"containers": [{"name": "c", "image": image}]}},
            },
        })
    }

    fn entry<'v>(obj: &'v Value, manager: &str) -> &'v Value {
        obj["metadata"]["managedFields"]
            .as_array()
            .and_then(|a| a.iter().find(|e| e["manager"] == manager))
            .unwrap_or_else(|| panic!("no entry for {manager} in {obj}"))
    }

    #[test]
    fn managers_come_from_field_manager_or_the_user_agent() {
        assert_eq!(manager_of(Some("m"), Some("kubectl/v1.32")), "m");
        assert_eq!(
            manager_of(
                Some(""),
                Some("kubectl-edit/v1.32.0 (linux/amd64) kubernetes/abc")
            ),
            "kubectl-edit"
        );
        assert_eq!(manager_of(None, None), "");
    }

    #[test]
    fn create_update_and_status_are_tracked() {
        let w = writer("creator");
        let mut created = deploy(1, "a");
        created["status"] = json!({"replicas": 0});
        track_update(&w, None, &mut created);
        let e = entry(&created, "creator");
        assert_eq!(e["operation"], "Update");
        assert_eq!(e["apiVersion"], "apps/v1");
        assert_eq!(e["fieldsV1"]["f:spec"]["f:replicas"], json!({}));
        assert!(e["fieldsV1"].get("f:status").is_none());
        assert!(e["fieldsV1"]["f:metadata"].get("f:name").is_none());
        // A map an update adds is owned itself too.
        assert_eq!(
            e["fieldsV1"]["f:metadata"]["f:labels"],
            json!({".": {}, "f:app": {}})
        );

        // Another manager changes replicas: it owns them now, the creator does not.
        let w2 = writer("scaler");
        let mut scaled = created.clone();
        scaled["spec"]["replicas"] = json!(3);
        track_update(&w2, Some(&created), &mut scaled);
        assert_eq!(
            entry(&scaled, "scaler")["fieldsV1"],
            json!({"f:spec": {"f:replicas": {}}})
        );
        assert!(
            entry(&scaled, "creator")["fieldsV1"]["f:spec"]
                .get("f:replicas")
                .is_none()
        );

        // A write that changes nothing leaves managed fields alone.
        let mut same = scaled.clone();
        track_update(&writer("other"), Some(&scaled), &mut same);
        assert_eq!(same, scaled);

        // /status is its own entry and only sees the status.
        let ws = Writer {
            subresource: "status",
            ..writer("ctrl")
        };
        let mut st = scaled.clone();
        st["status"] = json!({"replicas": 3});
        track_update(&ws, Some(&scaled), &mut st);
        let e = entry(&st, "ctrl");
        assert_eq!(e["subresource"], "status");
        assert_eq!(e["fieldsV1"], json!({"f:status": {"f:replicas": {}}}));

        // `[{}]` clears them.
        let mut cleared = st.clone();
        cleared["metadata"]["managedFields"] = json!([{}]);
        track_update(&w, Some(&st), &mut cleared);
        assert!(cleared["metadata"].get("managedFields").is_none());
    }

    #[test]
    fn apply_conflicts_force_and_removal() {
        let a = writer("a");
        let mut first = deploy(1, "x");
        first["metadata"]["annotations"] = json!({"note": "a's"});
        let created = apply(&a, None, &first, false).expect("creates");
        assert_eq!(entry(&created, "a")["operation"], "Apply");

        // Same value: shared, no conflict.
        let b = writer("b");
        let shared = apply(&b, Some(&created), &deploy(1, "x"), false).expect("shares");
        assert_eq!(
            entry(&shared, "b")["fieldsV1"]["f:spec"]["f:replicas"],
            json!({})
        );

        // Different value: conflict naming the field and the manager.
        let err = apply(&b, Some(&created), &deploy(2, "x"), false).expect_err("conflict");
        assert_eq!(err.code, 409);
        assert_eq!(err.reason, "Conflict");
        assert_eq!(
            err.message,
            "Apply failed with 1 conflict: conflict with \"a\": .spec.replicas"
        );
        let causes = &err.details.as_ref().expect("details")["causes"];
        assert_eq!(causes[0]["reason"], "FieldManagerConflict");
        assert_eq!(causes[0]["field"], ".spec.replicas");

        // Forced: b takes replicas from a.
        let forced = apply(&b, Some(&created), &deploy(2, "x"), true).expect("forced");
        assert_eq!(forced["spec"]["replicas"], 2);
        assert!(
            entry(&forced, "a")["fieldsV1"]["f:spec"]
                .get("f:replicas")
                .is_none()
        );

        // a drops its annotation and replicas: the annotation goes (only a owned it), replicas
        // stay (b owns them now).
        let mut cfg = deploy(2, "x");
        cfg["spec"]
            .as_object_mut()
            .expect("spec")
            .remove("replicas");
        let out = apply(&a, Some(&forced), &cfg, false).expect("applies");
        assert!(out["metadata"].get("annotations").is_none(), "{out}");
        assert_eq!(out["metadata"]["labels"]["app"], "d");
        assert_eq!(out["spec"]["replicas"], 2);
        // Applying the same again is a no-op.
        assert_eq!(apply(&a, Some(&out), &cfg, false).expect("no-op"), out);
    }

    #[test]
    fn untracked_fields_belong_to_before_first_apply() {
        let mut live = deploy(1, "x");
        live["metadata"]["resourceVersion"] = json!("5");
        let err = apply(&writer("a"), Some(&live), &deploy(3, "x"), false).expect_err("conflict");
        assert_eq!(
            err.message,
            "Apply failed with 1 conflict: conflict with \"before-first-apply\" using apps/v1: \
             .spec.replicas"
        );
        // Same values and new fields: no conflict; the fields are shared.
        let mut cfg = deploy(1, "x");
        cfg["metadata"]["labels"]["extra"] = json!("1");
        let out = apply(&writer("a"), Some(&live), &cfg, false).expect("same values");
        assert_eq!(entry(&out, "before-first-apply")["operation"], "Update");
        assert_eq!(out["metadata"]["labels"]["extra"], "1");
        assert_eq!(
            entry(&out, "a")["fieldsV1"]["f:spec"]["f:replicas"],
            json!({})
        );
    }

    #[test]
    fn containers_merge_by_name_across_managers() {
        let a = writer("a");
        let one = apply(&a, None, &deploy(1, "x"), false).expect("creates");
        let mut sidecar = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "d", "namespace": "default"},
            "spec": {"template": {"spec": {"containers": [{"name": "side", "image": "s"}]}}},
        });
        let two = apply(&writer("b"), Some(&one), &sidecar, false).expect("merges");
        let names: Vec<&str> = two["spec"]["template"]["spec"]["containers"]
            .as_array()
            .expect("list")
            .iter()
            .filter_map(|c| c["name"].as_str())
            .collect();
        assert_eq!(names, ["c", "side"]);
        // b drops its container: it goes, a's stays.
        sidecar["spec"]["template"]["spec"]["containers"] = json!([]);
        let three = apply(&writer("b"), Some(&two), &sidecar, false).expect("removes");
        let names: Vec<&str> = three["spec"]["template"]["spec"]["containers"]
            .as_array()
            .expect("list")
            .iter()
            .filter_map(|c| c["name"].as_str())
            .collect();
        assert_eq!(names, ["c"]);
    }
}
