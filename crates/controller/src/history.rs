//! ControllerRevision history, shared by the StatefulSet and DaemonSet controllers (upstream's
//! `pkg/controller/history` and the revision helpers of both controllers).
//!
//! A revision stores, in `data`, the strategic merge patch that restores its owner's pod
//! template: `{"spec": {"template": {…, "$patch": "replace"}}}` — what `kubectl rollout undo`
//! sends back to the owner, and what `kubectl rollout history --revision=N` applies to show a
//! template. Revisions are labelled with the owner's template labels (so the owner's selector
//! finds them, as kubectl's history listing expects) and carry a controller reference to it.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use kube::Resource;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use crate::ReconcileError;
use crate::util;

/// Label with the hash of a revision's data (upstream's `ControllerRevisionHashLabel`).
pub(crate) const HASH_LABEL: &str = "controller.kubernetes.io/hash";

/// Upstream's `rand.SafeEncodeString` alphabet: no vowels, no look-alike characters.
const SAFE_ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// Writes `s` with the safe alphabet, one character per byte (upstream's `SafeEncodeString`).
pub(crate) fn safe_encode(s: &str) -> String {
    s.bytes()
        .map(|b| char::from(SAFE_ALPHANUMS[usize::from(b) % SAFE_ALPHANUMS.len()]))
        .collect()
}

/// The hash of a revision's data: 32-bit FNV-1 over the data's JSON, then the collision
/// count in decimal, safe-encoded (upstream's `HashControllerRevision`). Upstream hashes the
/// bytes of Go's encoding of the patch, so values differ from kube-controller-manager's for
/// the same template; nothing compares them across implementations.
pub(crate) fn hash_data(data: &Value, collision_count: Option<i32>) -> String {
    let mut h: u32 = 0x811c_9dc5;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            h = h.wrapping_mul(0x0100_0193);
            h ^= u32::from(*b);
        }
    };
    feed(data.to_string().as_bytes());
    if let Some(c) = collision_count {
        feed(c.to_string().as_bytes());
    }
    safe_encode(&h.to_string())
}

/// `<prefix>-<hash>`, the prefix cut to 223 bytes so the name stays within 253.
pub(crate) fn revision_name(prefix: &str, hash: &str) -> String {
    let mut end = prefix.len().min(223);
    while !prefix.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}-{hash}", &prefix[..end])
}

/// The patch that restores `template` on its owner (upstream's `getPatch` of both
/// controllers).
pub(crate) fn template_patch(template: &PodTemplateSpec) -> Value {
    let mut t = serde_json::to_value(template).unwrap_or_else(|_| json!({}));
    if let Some(o) = t.as_object_mut() {
        o.insert("$patch".into(), json!("replace"));
    }
    json!({"spec": {"template": t}})
}

/// The pod template a revision restores.
pub(crate) fn template_of(rev: &ControllerRevision) -> Option<PodTemplateSpec> {
    let mut t = rev.data.as_ref()?.0.get("spec")?.get("template")?.clone();
    if let Some(o) = t.as_object_mut() {
        o.remove("$patch");
    }
    serde_json::from_value(t).ok()
}

/// Whether a revision holds `data` (compared as JSON values, so key order does not matter).
pub(crate) fn holds(rev: &ControllerRevision, data: &Value) -> bool {
    rev.data.as_ref().is_some_and(|d| &d.0 == data)
}

/// Sorts by revision number, then creation time, then name (upstream's `byRevision`).
pub(crate) fn sort(revs: &mut [ControllerRevision]) {
    revs.sort_by(|a, b| {
        (
            a.revision,
            a.metadata.creation_timestamp.as_ref().map(|t| t.0),
            a.metadata.name.as_deref(),
        )
            .cmp(&(
                b.revision,
                b.metadata.creation_timestamp.as_ref().map(|t| t.0),
                b.metadata.name.as_deref(),
            ))
    });
}

/// The next revision number: one more than the highest (1 for an empty history).
pub(crate) fn next_revision(revs: &[ControllerRevision]) -> i64 {
    revs.iter().map(|r| r.revision).max().unwrap_or(0) + 1
}

/// A new revision of `owner` (not yet created): the owner's template labels plus
/// `hash_label: hash`, the given annotations, a controller reference, `data` and `revision`.
/// Its name is `<owner>-<hash>`.
pub(crate) fn new_revision<K: Resource<DynamicType = ()>>(
    owner: &K,
    template_labels: Option<&BTreeMap<String, String>>,
    annotations: Option<BTreeMap<String, String>>,
    data: Value,
    revision: i64,
    (hash_label, hash): (&str, &str),
) -> ControllerRevision {
    let meta = owner.meta();
    let mut labels = template_labels.cloned().unwrap_or_default();
    labels.insert(hash_label.into(), hash.into());
    ControllerRevision {
        metadata: ObjectMeta {
            name: Some(revision_name(meta.name.as_deref().unwrap_or(""), hash)),
            namespace: meta.namespace.clone(),
            labels: Some(labels),
            annotations: annotations.filter(|a| !a.is_empty()),
            owner_references: Some(vec![util::controller_ref(owner)]),
            ..ObjectMeta::default()
        },
        data: Some(RawExtension(data)),
        revision,
    }
}

/// Claims the revisions of `owner` in its namespace as upstream's `ClaimControllerRevisions`:
/// those it controls that match `selector` are kept, those it controls that stopped matching
/// are released, orphans that match are adopted (when `can_adopt`). Sorted by revision.
pub(crate) async fn claim<K: Resource<DynamicType = ()>>(
    api: &Api<ControllerRevision>,
    owner: &K,
    selector: &LabelSelector,
    can_adopt: bool,
) -> Result<Vec<ControllerRevision>, ReconcileError> {
    let uid = owner.meta().uid.clone().unwrap_or_default();
    let mut out = Vec::new();
    for rev in api.list(&ListParams::default()).await?.items {
        let matches = util::selects(selector, rev.metadata.labels.as_ref())?;
        let name = rev.metadata.name.clone().unwrap_or_default();
        match util::controller_of(&rev.metadata) {
            Some(r) if r.uid == uid => {
                if matches {
                    out.push(rev);
                } else {
                    let refs: Vec<_> = rev
                        .metadata
                        .owner_references
                        .clone()
                        .unwrap_or_default()
                        .into_iter()
                        .filter(|r| r.uid != uid)
                        .collect();
                    let patch = json!({"metadata": {
                        "ownerReferences": if refs.is_empty() { Value::Null } else { json!(refs) },
                        "uid": rev.metadata.uid,
                    }});
                    ignore_gone(
                        api.patch(&name, &PatchParams::default(), &Patch::Merge(patch))
                            .await
                            .map(|_| ()),
                    )?;
                }
            }
            Some(_) => {}
            None if matches && can_adopt && rev.metadata.deletion_timestamp.is_none() => {
                let mut refs = rev.metadata.owner_references.clone().unwrap_or_default();
                refs.push(util::controller_ref(owner));
                let patch = json!({"metadata": {"ownerReferences": refs, "uid": rev.metadata.uid}});
                match api
                    .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
                    .await
                {
                    Ok(r) => out.push(r),
                    Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
                    Err(e) => return Err(e.into()),
                }
            }
            None => {}
        }
    }
    sort(&mut out);
    Ok(out)
}

/// Creates `rev`, renaming it on a name collision with a revision that holds other data
/// (upstream's `CreateControllerRevision`): the collision count goes up and the hash (its
/// `controller.kubernetes.io/hash` label), computed by `hash_of(collision_count)`, changes. An
/// existing revision with the same data is returned as it is.
pub(crate) async fn create(
    api: &Api<ControllerRevision>,
    mut rev: ControllerRevision,
    prefix: &str,
    collision_count: &mut i32,
    hash_of: impl Fn(i32) -> String,
) -> Result<ControllerRevision, ReconcileError> {
    let data = rev
        .data
        .as_ref()
        .map(|d| d.0.clone())
        .unwrap_or(Value::Null);
    for _ in 0..100 {
        let hash = hash_of(*collision_count);
        rev.metadata.name = Some(revision_name(prefix, &hash));
        if let Some(l) = rev.metadata.labels.as_mut() {
            l.insert(HASH_LABEL.into(), hash.clone());
        }
        match api.create(&PostParams::default(), &rev).await {
            Ok(r) => return Ok(r),
            Err(kube::Error::Api(s)) if s.code == 409 => {
                let name = rev.metadata.name.clone().unwrap_or_default();
                if let Some(existing) = api.get_opt(&name).await?
                    && holds(&existing, &data)
                {
                    return Ok(existing);
                }
                *collision_count += 1;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(ReconcileError::Invalid(
        "too many revision name collisions".into(),
    ))
}

/// Gives `rev` the revision number `revision` (a rollback to an older template).
pub(crate) async fn set_revision(
    api: &Api<ControllerRevision>,
    rev: &ControllerRevision,
    revision: i64,
) -> Result<ControllerRevision, ReconcileError> {
    if rev.revision == revision {
        return Ok(rev.clone());
    }
    let name = rev.metadata.name.clone().unwrap_or_default();
    let patch = json!({"revision": revision, "metadata": {"resourceVersion": rev.metadata.resource_version}});
    Ok(api
        .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
        .await?)
}

/// Deletes a revision; one already gone is fine.
pub(crate) async fn delete(
    api: &Api<ControllerRevision>,
    rev: &ControllerRevision,
) -> Result<(), ReconcileError> {
    let name = rev.metadata.name.clone().unwrap_or_default();
    ignore_gone(
        api.delete(&name, &DeleteParams::default())
            .await
            .map(|_| ()),
    )
}

fn ignore_gone(r: Result<(), kube::Error>) -> Result<(), ReconcileError> {
    match r {
        Ok(()) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn hash_changes_with_data_and_collision_count_and_is_safe() {
        let a = json!({"spec": {"template": {"x": 1}}});
        let b = json!({"spec": {"template": {"x": 2}}});
        assert_eq!(hash_data(&a, None), hash_data(&a, None));
        assert_ne!(hash_data(&a, None), hash_data(&b, None));
        assert_ne!(hash_data(&a, Some(0)), hash_data(&a, Some(1)));
        assert!(
            hash_data(&a, None)
                .bytes()
                .all(|c| SAFE_ALPHANUMS.contains(&c))
        );
    }

    #[test]
    fn names_are_cut_to_fit() {
        assert_eq!(revision_name("web", "abc"), "web-abc");
        let long = "a".repeat(300);
        assert_eq!(revision_name(&long, "h").len(), 225);
    }

    #[test]
    fn template_round_trips_through_the_patch() {
        let t: PodTemplateSpec = serde_json::from_value(json!({
            "metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "c", "image": "busybox:1"}]}
        }))
        .unwrap();
        let patch = template_patch(&t);
        assert_eq!(patch["spec"]["template"]["$patch"], "replace");
        let rev = ControllerRevision {
            data: Some(RawExtension(patch.clone())),
            ..ControllerRevision::default()
        };
        assert_eq!(template_of(&rev), Some(t));
        assert!(holds(&rev, &patch));
    }

    #[test]
    fn sorting_is_by_revision_then_name() {
        let r = |n: &str, v: i64| ControllerRevision {
            metadata: ObjectMeta {
                name: Some(n.into()),
                ..ObjectMeta::default()
            },
            revision: v,
            data: None,
        };
        let mut revs = vec![r("c", 2), r("b", 1), r("a", 2)];
        sort(&mut revs);
        let names: Vec<_> = revs
            .iter()
            .map(|r| r.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(names, ["b", "a", "c"]);
        assert_eq!(next_revision(&revs), 3);
        assert_eq!(next_revision(&[]), 1);
    }
}
