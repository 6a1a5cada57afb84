//! PersistentVolume ↔ PersistentVolumeClaim matching, upstream's
//! `component-helpers/storage/volume` (`FindMatchingVolume`, `CheckAccessModes`,
//! `CheckVolumeModeMismatches`, `IsVolumeBoundToClaim`, the class getters) and the PV
//! controller's `findByClaim` / `checkVolumeSatisfyClaim`. Two users: the scheduler's
//! VolumeBinding (a node given) and the controller's PV binder (no node), so both pick the
//! same volume for a claim.
//!
//! Sizes compare as upstream's `resource.Quantity` do: exactly (`Cmp`) when matching, in
//! whole units rounded up (`Value()`) in [`check_volume_satisfies_claim`]. Label selectors
//! and node affinity are the caller's (each component has its own selector code): they come in
//! as closures.

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity as K8sQuantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use rk3s_quota::Quantity;

pub const ANN_BIND_COMPLETED: &str = "pv.kubernetes.io/bind-completed";
pub const ANN_BOUND_BY_CONTROLLER: &str = "pv.kubernetes.io/bound-by-controller";
pub const ANN_SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
/// The beta class annotation, still read before the field.
pub const ANN_BETA_CLASS: &str = "volume.beta.kubernetes.io/storage-class";

pub fn annotation<'a>(meta: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    meta.annotations.as_ref()?.get(key).map(String::as_str)
}

/// `GetPersistentVolumeClaimClass`: the beta annotation, else the field ("" if neither).
pub fn claim_class(claim: &PersistentVolumeClaim) -> &str {
    if let Some(c) = annotation(&claim.metadata, ANN_BETA_CLASS) {
        return c;
    }
    claim
        .spec
        .as_ref()
        .and_then(|s| s.storage_class_name.as_deref())
        .unwrap_or_default()
}

/// `GetPersistentVolumeClass`.
pub fn volume_class(pv: &PersistentVolume) -> &str {
    if let Some(c) = annotation(&pv.metadata, ANN_BETA_CLASS) {
        return c;
    }
    pv.spec
        .as_ref()
        .and_then(|s| s.storage_class_name.as_deref())
        .unwrap_or_default()
}

/// The claim's `spec.volumeName` ("" if unset).
pub fn volume_name(claim: &PersistentVolumeClaim) -> &str {
    claim
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.as_deref())
        .unwrap_or_default()
}

/// The `storage` entry of a resource list (zero if missing or not a quantity, as Go's map
/// lookup gives the zero Quantity).
pub fn storage(map: Option<&BTreeMap<String, K8sQuantity>>) -> Quantity {
    map.and_then(|m| m.get("storage"))
        .and_then(|q| Quantity::parse(&q.0).ok())
        .unwrap_or_default()
}

/// The claim's storage request.
pub fn requested(claim: &PersistentVolumeClaim) -> Quantity {
    storage(
        claim
            .spec
            .as_ref()
            .and_then(|s| s.resources.as_ref())
            .and_then(|r| r.requests.as_ref()),
    )
}

/// The volume's storage capacity.
pub fn capacity(pv: &PersistentVolume) -> Quantity {
    storage(pv.spec.as_ref().and_then(|s| s.capacity.as_ref()))
}

/// `IsVolumeBoundToClaim`: the claimRef names the claim, and its uid (if any) is the claim's.
pub fn bound_to_claim(pv: &PersistentVolume, claim: &PersistentVolumeClaim) -> bool {
    let Some(r) = pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref()) else {
        return false;
    };
    if r.name != claim.metadata.name || r.namespace != claim.metadata.namespace {
        return false;
    }
    match r.uid.as_deref() {
        None | Some("") => true,
        Some(uid) => claim.metadata.uid.as_deref() == Some(uid),
    }
}

/// `CheckVolumeModeMismatches` (unset is Filesystem on both sides).
pub fn volume_mode_mismatch(claim: &PersistentVolumeClaim, pv: &PersistentVolume) -> bool {
    let c = claim
        .spec
        .as_ref()
        .and_then(|s| s.volume_mode.as_deref())
        .unwrap_or("Filesystem");
    let v = pv
        .spec
        .as_ref()
        .and_then(|s| s.volume_mode.as_deref())
        .unwrap_or("Filesystem");
    c != v
}

/// The claim's access modes.
pub fn claim_modes(claim: &PersistentVolumeClaim) -> BTreeSet<&str> {
    claim
        .spec
        .as_ref()
        .and_then(|s| s.access_modes.as_ref())
        .into_iter()
        .flatten()
        .map(String::as_str)
        .collect()
}

/// The volume's access modes.
pub fn volume_modes(pv: &PersistentVolume) -> BTreeSet<&str> {
    pv.spec
        .as_ref()
        .and_then(|s| s.access_modes.as_ref())
        .into_iter()
        .flatten()
        .map(String::as_str)
        .collect()
}

/// `CheckAccessModes`: every mode the claim asks for, the volume has.
pub fn access_modes_ok(claim: &PersistentVolumeClaim, pv: &PersistentVolume) -> bool {
    claim_modes(claim).is_subset(&volume_modes(pv))
}

fn phase(pv: &PersistentVolume) -> &str {
    pv.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or_default()
}

/// Whether a claim's label selector selects a volume's labels: the caller's selector code
/// (its error: an invalid selector).
pub type Selects<'a, E> =
    dyn Fn(&LabelSelector, Option<&BTreeMap<String, String>>) -> Result<bool, E> + 'a;

/// The node side of [`find_matching_volume`]: the scheduler's path gives the node (as a test
/// of a volume's node affinity against it), the PV controller's has none.
pub enum Node<'a> {
    /// The controller's path; `true`: the claim's class binds `WaitForFirstConsumer`, so only
    /// a volume pre-bound to it is taken.
    None { delay_binding: bool },
    /// The scheduler's path: whether the volume's node affinity admits the node.
    Affinity(&'a dyn Fn(&PersistentVolume) -> bool),
}

impl std::fmt::Debug for Node<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Node::None { delay_binding } => f
                .debug_struct("None")
                .field("delay_binding", delay_binding)
                .finish(),
            Node::Affinity(_) => f.write_str("Affinity(..)"),
        }
    }
}

/// `FindMatchingVolume`: the volume pre-bound to the claim (by `claimRef`), else the smallest
/// `Available` one of the claim's class and volume mode, at least the requested size, its
/// labels selected by the claim's selector (`selects`), and, with a node, whose node affinity
/// admits it and which has the claim's access modes. Volumes named in `excluded` are not
/// looked at. VolumeAttributesClass is off by default in v1.33: a claim naming one matches
/// nothing, a volume naming one is never taken.
pub fn find_matching_volume<'a, V, E>(
    claim: &PersistentVolumeClaim,
    volumes: &'a [V],
    node: Node<'_>,
    excluded: &dyn Fn(&str) -> bool,
    selects: &Selects<'_, E>,
) -> Result<Option<&'a V>, E>
where
    V: Borrow<PersistentVolume>,
{
    let spec = claim.spec.as_ref();
    if spec
        .and_then(|s| s.volume_attributes_class_name.as_deref())
        .is_some_and(|c| !c.is_empty())
    {
        return Ok(None);
    }
    let want = requested(claim);
    let class = claim_class(claim);
    let selector = spec.and_then(|s| s.selector.as_ref());
    let mut best: Option<(&V, Quantity)> = None;
    for v in volumes {
        let pv: &PersistentVolume = v.borrow();
        if excluded(pv.metadata.name.as_deref().unwrap_or_default()) {
            continue;
        }
        let pv_spec = pv.spec.as_ref();
        let pre_bound = bound_to_claim(pv, claim);
        if pv_spec.and_then(|s| s.claim_ref.as_ref()).is_some() && !pre_bound {
            continue;
        }
        let cap = capacity(pv);
        if cap < want || volume_mode_mismatch(claim, pv) {
            continue;
        }
        if pv_spec
            .and_then(|s| s.volume_attributes_class_name.as_deref())
            .is_some_and(|c| !c.is_empty())
        {
            continue;
        }
        if pv.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let affinity_ok = match &node {
            Node::None { .. } => true,
            Node::Affinity(f) => f(pv),
        };
        if pre_bound {
            // Pre-bound: this one or none.
            return Ok(affinity_ok.then_some(v));
        }
        if let Node::None {
            delay_binding: true,
        } = node
        {
            // The scheduler binds it.
            continue;
        }
        if phase(pv) != "Available" {
            continue;
        }
        if let Some(sel) = selector
            && !selects(sel, pv.metadata.labels.as_ref())?
        {
            continue;
        }
        if volume_class(pv) != class || !affinity_ok {
            continue;
        }
        if matches!(node, Node::Affinity(_)) && !access_modes_ok(claim, pv) {
            continue;
        }
        if best.as_ref().is_none_or(|(_, q)| *q > cap) {
            best = Some((v, cap));
        }
    }
    Ok(best.map(|(v, _)| v))
}

/// The PV controller's `findByClaim`: the volumes grouped by their access-mode sets; the sets
/// holding every mode the claim asks for are tried fewest modes first, each with
/// [`find_matching_volume`] (no node).
pub fn find_best_match<'a, E>(
    claim: &PersistentVolumeClaim,
    volumes: &'a [PersistentVolume],
    delay_binding: bool,
    selects: &Selects<'_, E>,
) -> Result<Option<&'a PersistentVolume>, E> {
    let want = claim_modes(claim);
    let mut groups: BTreeMap<(usize, Vec<&str>), Vec<&PersistentVolume>> = BTreeMap::new();
    for pv in volumes {
        let modes = volume_modes(pv);
        if !want.is_subset(&modes) {
            continue;
        }
        groups
            .entry((modes.len(), modes.into_iter().collect()))
            .or_default()
            .push(pv);
    }
    for group in groups.values() {
        if let Some(pv) = find_matching_volume(
            claim,
            group,
            Node::None { delay_binding },
            &|_| false,
            selects,
        )? {
            return Ok(Some(*pv));
        }
    }
    Ok(None)
}

/// Upstream's `Quantity.Value()`: whole units, rounded up. (`rk3s_quota::Quantity` keeps its
/// nano-units private; its canonical text is whole units, `m` or `n`.)
fn units_rounded_up(q: Quantity) -> i128 {
    let text = q.to_text(false);
    let (digits, per_unit) = if let Some(m) = text.strip_suffix('m') {
        (m, 1_000)
    } else if let Some(n) = text.strip_suffix('n') {
        (n, 1_000_000_000)
    } else {
        (text.as_str(), 1)
    };
    let v: i128 = digits.parse().unwrap_or_default();
    v.div_euclid(per_unit) + i128::from(v.rem_euclid(per_unit) != 0)
}

/// The PV controller's `checkVolumeSatisfyClaim`, for a claim that names its volume: the
/// reason it cannot take it, in upstream's words.
pub fn check_volume_satisfies_claim(
    pv: &PersistentVolume,
    claim: &PersistentVolumeClaim,
) -> Result<(), String> {
    if pv.metadata.deletion_timestamp.is_some() {
        return Err(format!(
            "the volume is marked for deletion {:?}",
            pv.metadata.name.as_deref().unwrap_or_default()
        ));
    }
    // Whole units, rounded up (`Value()`).
    if units_rounded_up(capacity(pv)) < units_rounded_up(requested(claim)) {
        return Err("requested PV is too small".into());
    }
    if volume_class(pv) != claim_class(claim) {
        return Err("storageClassName does not match".into());
    }
    if volume_mode_mismatch(claim, pv) {
        return Err("incompatible volumeMode".into());
    }
    if !access_modes_ok(claim, pv) {
        return Err("incompatible accessMode".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};
    use std::convert::Infallible;

    fn pv(name: &str, size: &str, modes: &[&str], extra: Value) -> PersistentVolume {
        let mut v = json!({
            "metadata": {"name": name},
            "spec": {"capacity": {"storage": size}, "accessModes": modes},
            "status": {"phase": "Available"},
        });
        merge(&mut v, extra);
        serde_json::from_value(v).unwrap()
    }

    fn claim(size: &str, modes: &[&str], extra: Value) -> PersistentVolumeClaim {
        let mut v = json!({
            "metadata": {"name": "c", "namespace": "ns", "uid": "u1"},
            "spec": {"accessModes": modes, "resources": {"requests": {"storage": size}}},
        });
        merge(&mut v, extra);
        serde_json::from_value(v).unwrap()
    }

    fn merge(a: &mut Value, b: Value) {
        match (a, b) {
            (Value::Object(a), Value::Object(b)) => {
                for (k, v) in b {
                    merge(a.entry(k).or_insert(Value::Null), v);
                }
            }
            (a, b) => *a = b,
        }
    }

    /// `app In [...]` selectors only, enough for the tests.
    fn selects(
        sel: &LabelSelector,
        labels: Option<&BTreeMap<String, String>>,
    ) -> Result<bool, Infallible> {
        Ok(sel
            .match_labels
            .iter()
            .flatten()
            .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v)))
    }

    fn best(c: &PersistentVolumeClaim, vs: &[PersistentVolume], delay: bool) -> Option<String> {
        find_best_match(c, vs, delay, &selects)
            .unwrap()
            .and_then(|v| v.metadata.name.clone())
    }

    #[test]
    fn sizes_compare_exactly_when_matching_and_rounded_up_when_checking() {
        // 1500m is less than 2, though both are 2 in whole units rounded up.
        let vs = [pv("small", "1500m", &["ReadWriteOnce"], json!({}))];
        let c = claim("2", &["ReadWriteOnce"], json!({}));
        assert_eq!(best(&c, &vs, false), None);
        let c = claim("1500m", &["ReadWriteOnce"], json!({}));
        assert_eq!(best(&c, &vs, false).as_deref(), Some("small"));
        assert_eq!(
            check_volume_satisfies_claim(&vs[0], &claim("2", &["ReadWriteOnce"], json!({}))),
            Ok(()),
            "Value() of 1500m is 2"
        );
        assert_eq!(
            check_volume_satisfies_claim(&vs[0], &claim("2001m", &["ReadWriteOnce"], json!({}))),
            Err("requested PV is too small".into())
        );
    }

    #[test]
    fn whole_units_round_up() {
        let u = |s: &str| units_rounded_up(Quantity::parse(s).unwrap());
        assert_eq!(u("2"), 2);
        assert_eq!(u("1500m"), 2);
        assert_eq!(u("1n"), 1);
        assert_eq!(u("1Gi"), 1 << 30);
        assert_eq!(u("0"), 0);
        assert_eq!(u("-1500m"), -1);
    }

    #[test]
    fn fewest_extra_modes_then_smallest_then_pre_bound_wins() {
        let vs = [
            pv(
                "rwx-1g",
                "1Gi",
                &["ReadWriteOnce", "ReadWriteMany"],
                json!({}),
            ),
            pv("rwo-5g", "5Gi", &["ReadWriteOnce"], json!({})),
            pv("rwo-2g", "2Gi", &["ReadWriteOnce"], json!({})),
        ];
        let c = claim("1Gi", &["ReadWriteOnce"], json!({}));
        assert_eq!(best(&c, &vs, false).as_deref(), Some("rwo-2g"));
        let mut vs = vs.to_vec();
        vs.push(pv(
            "mine",
            "10Gi",
            &["ReadWriteOnce"],
            json!({"spec": {"claimRef": {"name": "c", "namespace": "ns"}},
                   "status": {"phase": "Released"}}),
        ));
        assert_eq!(best(&c, &vs, false).as_deref(), Some("mine"));
        // Delayed binding: only the pre-bound one.
        assert_eq!(best(&c, &vs, true).as_deref(), Some("mine"));
        assert_eq!(best(&c, &vs[..3], true), None);
    }

    #[test]
    fn the_scheduler_path_checks_affinity_access_modes_and_exclusions() {
        let vs = [
            pv(
                "a",
                "1Gi",
                &["ReadWriteOnce"],
                json!({"metadata": {"labels": {"n": "1"}}}),
            ),
            pv(
                "b",
                "2Gi",
                &["ReadWriteOnce"],
                json!({"metadata": {"labels": {"n": "2"}}}),
            ),
            pv("rox", "1Gi", &["ReadOnlyMany"], json!({})),
        ];
        let c = claim("1Gi", &["ReadWriteOnce"], json!({}));
        let on = |n: &'static str| {
            move |pv: &PersistentVolume| {
                pv.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get("n"))
                    .map(String::as_str)
                    == Some(n)
            }
        };
        let pick = |f: &dyn Fn(&PersistentVolume) -> bool, ex: &dyn Fn(&str) -> bool| {
            find_matching_volume(&c, &vs, Node::Affinity(f), ex, &selects)
                .unwrap()
                .and_then(|v| v.metadata.name.clone())
        };
        assert_eq!(pick(&on("2"), &|_| false).as_deref(), Some("b"));
        assert_eq!(pick(&|_| true, &|_| false).as_deref(), Some("a"));
        assert_eq!(pick(&|_| true, &|n| n == "a").as_deref(), Some("b"));
        let rox = claim("1Gi", &["ReadWriteMany"], json!({}));
        assert_eq!(
            find_matching_volume(&rox, &vs, Node::Affinity(&|_| true), &|_| false, &selects)
                .unwrap()
                .map(|v| v.metadata.name.clone()),
            None
        );
        // A selector and a class.
        let sel = claim(
            "1Gi",
            &["ReadWriteOnce"],
            json!({"spec": {"selector": {"matchLabels": {"n": "2"}}}}),
        );
        assert_eq!(
            find_matching_volume(&sel, &vs, Node::Affinity(&|_| true), &|_| false, &selects)
                .unwrap()
                .and_then(|v| v.metadata.name.clone())
                .as_deref(),
            Some("b")
        );
        let classy = claim(
            "1Gi",
            &["ReadWriteOnce"],
            json!({"spec": {"storageClassName": "x"}}),
        );
        assert!(
            find_matching_volume(
                &classy,
                &vs,
                Node::Affinity(&|_| true),
                &|_| false,
                &selects
            )
            .unwrap()
            .is_none()
        );
    }

    #[test]
    fn volume_attributes_classes_never_match() {
        let vs = [pv(
            "vac",
            "1Gi",
            &["ReadWriteOnce"],
            json!({"spec": {"volumeAttributesClassName": "gold"}}),
        )];
        assert_eq!(
            best(&claim("1Gi", &["ReadWriteOnce"], json!({})), &vs, false),
            None
        );
        let plain = [pv("p", "1Gi", &["ReadWriteOnce"], json!({}))];
        let c = claim(
            "1Gi",
            &["ReadWriteOnce"],
            json!({"spec": {"volumeAttributesClassName": "gold"}}),
        );
        assert_eq!(best(&c, &plain, false), None);
    }
}
