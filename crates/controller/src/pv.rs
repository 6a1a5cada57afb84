//! The PersistentVolume controllers: the binder (`persistentvolume-binder`, upstream's
//! `pkg/controller/volume/persistentvolume`) and the `pvc-protection` / `pv-protection`
//! finalizer controllers.
//!
//! **Binder.** Two loops, one per kind, each one object at a time (upstream runs one worker
//! each), reading what they decide on from the apiserver (not a cache), so two claims never
//! take the same volume: a volume is taken by a `PUT` guarded by its resourceVersion.
//! - A claim without `pv.kubernetes.io/bind-completed` is *unbound*. Without `volumeName` it
//!   gets the best matching volume (upstream's `findByClaim`: volumes whose access modes
//!   include the claim's, fewest extra modes first, then the smallest capacity ≥ the request
//!   with the claim's storage class, volume mode and selector, `Available` and not being
//!   deleted; a volume pre-bound to the claim by `claimRef` wins). With a `WaitForFirstConsumer`
//!   class only pre-bound volumes are taken until the scheduler writes
//!   `volume.kubernetes.io/selected-node` (events `WaitForFirstConsumer` /
//!   `WaitForPodScheduled`). Nothing matching: a claim without class gets the default class
//!   (newest `storageclass.kubernetes.io/is-default-class: "true"` class; upstream's
//!   retroactive assignment); a claim with a class is handed to its external provisioner
//!   (`volume.kubernetes.io/storage-provisioner` and the beta annotation, event
//!   `ExternalProvisioning`; an unknown class is `ProvisioningFailed`; there are no in-tree
//!   provisioners); else `FailedBinding`. With `volumeName` (pre-bound by the user) the volume
//!   is checked (`VolumeMismatch`) and bound, or the claim waits.
//! - Binding writes, in order: the volume's `claimRef` (+ `pv.kubernetes.io/bound-by-controller`
//!   when the controller chose it), its phase `Bound`, the claim's `volumeName` (+
//!   `bound-by-controller` when chosen here) and `bind-completed`, the claim's phase `Bound`
//!   with the volume's access modes and capacity. Each step is idempotent, so a sync that
//!   fails half-way is finished by the next.
//! - A bound claim whose volume is gone or lost its reference becomes `Lost` (`ClaimLost`);
//!   two claims on one volume: `ClaimMisbound`.
//! - A volume without `claimRef` (or pre-bound by `claimRef` without uid) is `Available`; one
//!   whose claim is gone (or was re-created with another uid) is `Released` and reclaimed by
//!   its policy: Retain keeps it; Delete leaves volumes of external provisioners
//!   (`pv.kubernetes.io/provisioned-by` not `kubernetes.io/…`) to them and fails the others
//!   (`VolumeFailedDelete`: rk3s has no in-tree deleter); Recycle fails
//!   (`VolumeFailedRecycle`). A volume bound by the controller to a claim that went to
//!   another volume is unbound again.
//! - Everything not settled is synced again every `pvclaimbinder-sync-period` (15 s); a
//!   volume event also wakes the unbound claims.
//!
//! **Protection.** `kubernetes.io/pvc-protection` is added to every claim and removed from a
//! deleted claim once no scheduled pod uses it (live list, as upstream's check before
//! removal); `kubernetes.io/pv-protection` likewise on volumes, removed once the deleted
//! volume is not `Bound`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ObjectReference, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Resource as _, ResourceExt as _};
use rk3s_common::volume::{
    self, ANN_BETA_CLASS, ANN_BIND_COMPLETED, ANN_BOUND_BY_CONTROLLER, ANN_SELECTED_NODE,
    annotation, bound_to_claim, check_volume_satisfies_claim, claim_class, storage,
    volume_mode_mismatch, volume_name,
};
use tokio::sync::watch;

use crate::ReconcileError;
use crate::events::EventType;
use crate::settings::LoopConfig;
use crate::util::{self, Backoff, Shared};

/// Component name of the binder's events (upstream's).
const COMPONENT: &str = "persistentvolume-controller";
const ANN_STORAGE_PROVISIONER: &str = "volume.kubernetes.io/storage-provisioner";
const ANN_BETA_STORAGE_PROVISIONER: &str = "volume.beta.kubernetes.io/storage-provisioner";
const ANN_DYNAMICALLY_PROVISIONED: &str = "pv.kubernetes.io/provisioned-by";
const ANN_DEFAULT_CLASS: &str = "storageclass.kubernetes.io/is-default-class";
const ANN_BETA_DEFAULT_CLASS: &str = "storageclass.beta.kubernetes.io/is-default-class";
const PVC_FINALIZER: &str = "kubernetes.io/pvc-protection";
const PV_FINALIZER: &str = "kubernetes.io/pv-protection";

struct Ctx {
    shared: Arc<Shared>,
    backoff: Backoff,
    resync: Duration,
}

fn action(ctx: &Ctx, key: &str, r: &Result<Action, ReconcileError>) {
    if r.is_ok() {
        ctx.backoff.success(key);
    }
}

pub(crate) async fn run_binder(
    shared: Arc<Shared>,
    config: LoopConfig,
    stop: watch::Receiver<bool>,
) {
    let client = shared.client.clone();
    let ctx = Arc::new(Ctx {
        shared,
        backoff: Backoff::default(),
        resync: Duration::from_secs(config.pvclaimbinder_sync_period),
    });
    let one = kube::runtime::controller::Config::default().concurrency(1);

    let claims = Controller::new(
        Api::<PersistentVolumeClaim>::all(client.clone()),
        watcher::Config::default(),
    )
    .with_config(one.clone());
    let claim_store = claims.store();
    let claim_store2 = claim_store.clone();
    let unbound = move |store: &kube::runtime::reflector::Store<PersistentVolumeClaim>| {
        store
            .state()
            .iter()
            .filter(|c| !has_annotation(&c.metadata, ANN_BIND_COMPLETED))
            .map(|c| ObjectRef::from_obj(c.as_ref()))
            .collect::<Vec<_>>()
    };
    let claims = claims
        .watches(
            Api::<PersistentVolume>::all(client.clone()),
            watcher::Config::default(),
            move |pv: PersistentVolume| {
                let mut refs = unbound(&claim_store);
                if let Some(r) = pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref())
                    && let (Some(ns), Some(name)) = (&r.namespace, &r.name)
                {
                    refs.push(ObjectRef::new(name).within(ns));
                }
                refs
            },
        )
        .watches(
            Api::<StorageClass>::all(client.clone()),
            watcher::Config::default(),
            move |_sc: StorageClass| unbound(&claim_store2),
        )
        .graceful_shutdown_on(crate::stopped(stop.clone()));

    let volumes = Controller::new(
        Api::<PersistentVolume>::all(client.clone()),
        watcher::Config::default(),
    )
    .with_config(one);
    let volume_store = volumes.store();
    let volumes = volumes
        .watches(
            Api::<PersistentVolumeClaim>::all(client.clone()),
            watcher::Config::default(),
            move |claim: PersistentVolumeClaim| {
                let ns = claim.namespace().unwrap_or_default();
                let name = claim.name_any();
                let mut refs: Vec<ObjectRef<PersistentVolume>> = volume_store
                    .state()
                    .iter()
                    .filter(|v| {
                        v.spec
                            .as_ref()
                            .and_then(|s| s.claim_ref.as_ref())
                            .is_some_and(|r| {
                                r.namespace.as_deref() == Some(ns.as_str())
                                    && r.name.as_deref() == Some(name.as_str())
                            })
                    })
                    .map(|v| ObjectRef::from_obj(v.as_ref()))
                    .collect();
                if let Some(v) = claim.spec.as_ref().and_then(|s| s.volume_name.as_deref())
                    && !v.is_empty()
                {
                    refs.push(ObjectRef::new(v));
                }
                refs
            },
        )
        .graceful_shutdown_on(crate::stopped(stop.clone()));

    let ctx2 = ctx.clone();
    let claims_abandon = util::abandon_unsynced(claims.store(), stop.clone());
    let volumes_abandon = util::abandon_unsynced(volumes.store(), stop);
    let claims = util::drain(
        "persistentvolume-binder",
        claims_abandon,
        claims.run(
            |claim, ctx| async move {
                let key = util::key_of(claim.meta());
                let r = sync_claim(&claim, &ctx).await;
                action(&ctx, &key, &r);
                r
            },
            |claim, _e, ctx| util::error_action(&ctx.backoff, &util::key_of(claim.meta())),
            ctx,
        ),
    );
    let volumes = util::drain(
        "persistentvolume-binder",
        volumes_abandon,
        volumes.run(
            |pv, ctx| async move {
                let key = format!("pv/{}", pv.name_any());
                let r = sync_volume(&pv, &ctx).await;
                action(&ctx, &key, &r);
                r
            },
            |pv, _e, ctx| util::error_action(&ctx.backoff, &format!("pv/{}", pv.name_any())),
            ctx2,
        ),
    );
    futures::future::join(claims, volumes).await;
}

// ---------------------------------------------------------------------------------------------
// helpers on the objects

fn has_annotation(meta: &kube::core::ObjectMeta, key: &str) -> bool {
    meta.annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(key))
}

fn set_annotation(meta: &mut kube::core::ObjectMeta, key: &str, value: &str) {
    meta.annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(key.to_string(), value.to_string());
}

fn claim_has_class(claim: &PersistentVolumeClaim) -> bool {
    has_annotation(&claim.metadata, ANN_BETA_CLASS)
        || claim
            .spec
            .as_ref()
            .is_some_and(|s| s.storage_class_name.is_some())
}

fn claim_ref(pv: &PersistentVolume) -> Option<&ObjectReference> {
    pv.spec.as_ref()?.claim_ref.as_ref()
}

fn pv_phase(pv: &PersistentVolume) -> &str {
    pv.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

fn claim_phase(claim: &PersistentVolumeClaim) -> &str {
    claim
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

/// Upstream's `findByClaim` ([`volume::find_best_match`], shared with the scheduler): the
/// volumes whose access modes include the claim's, fewest modes first, each set searched by
/// `FindMatchingVolume` without a node.
pub(crate) fn find_best_match<'a>(
    claim: &PersistentVolumeClaim,
    volumes: &'a [PersistentVolume],
    delay_binding: bool,
) -> Result<Option<&'a PersistentVolume>, ReconcileError> {
    volume::find_best_match(claim, volumes, delay_binding, &util::selects)
}

// ---------------------------------------------------------------------------------------------
// claims

fn claims_api(shared: &Shared, claim: &PersistentVolumeClaim) -> Api<PersistentVolumeClaim> {
    Api::namespaced(
        shared.client.clone(),
        claim.metadata.namespace.as_deref().unwrap_or(""),
    )
}

#[tracing::instrument(skip_all, fields(claim = %util::key_of(&cached.metadata)))]
async fn sync_claim(cached: &PersistentVolumeClaim, ctx: &Ctx) -> Result<Action, ReconcileError> {
    let api = claims_api(&ctx.shared, cached);
    let Some(claim) = api.get_opt(&cached.name_any()).await? else {
        return Ok(Action::await_change());
    };
    if has_annotation(&claim.metadata, ANN_BIND_COMPLETED) {
        sync_bound_claim(claim, ctx).await
    } else {
        sync_unbound_claim(claim, ctx).await
    }
}

async fn sync_unbound_claim(
    claim: PersistentVolumeClaim,
    ctx: &Ctx,
) -> Result<Action, ReconcileError> {
    let shared = &ctx.shared;
    let pvs: Api<PersistentVolume> = Api::all(shared.client.clone());
    let wanted = volume_name(&claim).to_string();
    if wanted.is_empty() {
        let classes: Api<StorageClass> = Api::all(shared.client.clone());
        let class = claim_class(&claim).to_string();
        let class_obj = if class.is_empty() {
            None
        } else {
            classes.get_opt(&class).await?
        };
        let delay_binding = class_obj
            .as_ref()
            .and_then(|c| c.volume_binding_mode.as_deref())
            == Some("WaitForFirstConsumer");
        let volumes = pvs.list(&ListParams::default()).await?.items;
        if let Some(pv) = find_best_match(&claim, &volumes, delay_binding)? {
            bind(shared, pv.clone(), claim).await?;
            return Ok(Action::requeue(ctx.resync));
        }
        if !claim_has_class(&claim)
            && let Some(default) = default_class(&classes.list(&ListParams::default()).await?.items)
        {
            let mut c = claim.clone();
            if let Some(spec) = c.spec.as_mut() {
                spec.storage_class_name = Some(default.clone());
            }
            tracing::info!(class = %default, "assigning the default storage class to the claim");
            claims_api(shared, &claim)
                .replace(&claim.name_any(), &PostParams::default(), &c)
                .await?;
            return Ok(Action::requeue(ctx.resync));
        }
        if delay_binding && !has_annotation(&claim.metadata, ANN_SELECTED_NODE) {
            wait_for_first_consumer(shared, &claim).await?;
        } else if !class.is_empty() {
            // The apiserver does not set the initial phase (upstream's strategy does).
            let claim = provision(shared, &claim, class_obj.as_ref(), &class).await?;
            update_claim_status(shared, &claim, "Pending", None).await?;
            return Ok(Action::requeue(ctx.resync));
        } else {
            shared.events.event(
                COMPONENT,
                &claim,
                EventType::Normal,
                "FailedBinding",
                "no persistent volumes available for this claim and no storage class is set".into(),
            );
        }
        update_claim_status(shared, &claim, "Pending", None).await?;
        return Ok(Action::requeue(ctx.resync));
    }
    // Pre-bound by the user to a volume.
    let Some(pv) = pvs.get_opt(&wanted).await? else {
        update_claim_status(shared, &claim, "Pending", None).await?;
        return Ok(Action::requeue(ctx.resync));
    };
    if claim_ref(&pv).is_none() {
        if let Err(why) = check_volume_satisfies_claim(&pv, &claim) {
            shared.events.event(
                COMPONENT,
                &claim,
                EventType::Warning,
                "VolumeMismatch",
                format!("Cannot bind to requested volume {wanted:?}: {why}"),
            );
            update_claim_status(shared, &claim, "Pending", None).await?;
        } else {
            bind(shared, pv, claim).await?;
        }
        return Ok(Action::requeue(ctx.resync));
    }
    if bound_to_claim(&pv, &claim) {
        bind(shared, pv, claim).await?;
        return Ok(Action::requeue(ctx.resync));
    }
    shared.events.event(
        COMPONENT,
        &claim,
        EventType::Warning,
        "FailedBinding",
        format!("volume {wanted:?} already bound to a different claim."),
    );
    if has_annotation(&claim.metadata, ANN_BOUND_BY_CONTROLLER) {
        let other = claim_ref(&pv)
            .map(|r| {
                format!(
                    "{}/{}",
                    r.namespace.as_deref().unwrap_or(""),
                    r.name.as_deref().unwrap_or("")
                )
            })
            .unwrap_or_default();
        return Err(ReconcileError::Invalid(format!(
            "invalid binding of claim {:?} to volume {wanted:?}: volume already claimed by {other:?}",
            util::key_of(&claim.metadata)
        )));
    }
    update_claim_status(shared, &claim, "Pending", None).await?;
    Ok(Action::requeue(ctx.resync))
}

/// The default class: the newest class marked default (upstream's `GetDefaultClass`).
fn default_class(classes: &[StorageClass]) -> Option<String> {
    classes
        .iter()
        .filter(|c| {
            annotation(&c.metadata, ANN_DEFAULT_CLASS) == Some("true")
                || annotation(&c.metadata, ANN_BETA_DEFAULT_CLASS) == Some("true")
        })
        .max_by(|a, b| {
            let t = |c: &StorageClass| c.metadata.creation_timestamp.as_ref().map(|t| t.0);
            t(a).cmp(&t(b))
                .then_with(|| b.metadata.name.cmp(&a.metadata.name))
        })
        .map(|c| c.name_any())
}

/// Upstream's `emitEventForUnboundDelayBindingClaim`.
async fn wait_for_first_consumer(
    shared: &Shared,
    claim: &PersistentVolumeClaim,
) -> Result<(), ReconcileError> {
    let pods: Api<Pod> = Api::namespaced(
        shared.client.clone(),
        claim.metadata.namespace.as_deref().unwrap_or(""),
    );
    let name = claim.name_any();
    let waiting: Vec<String> = pods
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|p| {
            p.spec
                .as_ref()
                .is_some_and(|s| s.node_name.as_deref().unwrap_or("").is_empty())
                && pod_claims(p).contains(&name)
        })
        .map(|p| p.name_any())
        .collect();
    let (reason, message) = match waiting.as_slice() {
        [] => (
            "WaitForFirstConsumer",
            "waiting for first consumer to be created before binding".to_string(),
        ),
        [one] => (
            "WaitForPodScheduled",
            format!("waiting for pod {one} to be scheduled"),
        ),
        many => (
            "WaitForPodScheduled",
            format!("waiting for pods {} to be scheduled", many.join(",")),
        ),
    };
    shared
        .events
        .event(COMPONENT, claim, EventType::Normal, reason, message);
    Ok(())
}

/// Upstream's `provisionClaim` for external provisioners: the provisioner annotations, then
/// the `ExternalProvisioning` event.
async fn provision(
    shared: &Shared,
    claim: &PersistentVolumeClaim,
    class: Option<&StorageClass>,
    class_name: &str,
) -> Result<PersistentVolumeClaim, ReconcileError> {
    let Some(class) = class else {
        shared.events.event(
            COMPONENT,
            claim,
            EventType::Warning,
            "ProvisioningFailed",
            format!("storageclass.storage.k8s.io {class_name:?} not found"),
        );
        return Ok(claim.clone());
    };
    let provisioner = class.provisioner.clone();
    if provisioner.starts_with("kubernetes.io/") {
        // In-tree provisioners: rk3s has none.
        shared.events.event(
            COMPONENT,
            claim,
            EventType::Warning,
            "ProvisioningFailed",
            format!("no volume plugin matched name: {provisioner}"),
        );
        return Ok(claim.clone());
    }
    let mut claim = claim.clone();
    if annotation(&claim.metadata, ANN_STORAGE_PROVISIONER) != Some(provisioner.as_str())
        || annotation(&claim.metadata, ANN_BETA_STORAGE_PROVISIONER) != Some(provisioner.as_str())
    {
        set_annotation(&mut claim.metadata, ANN_STORAGE_PROVISIONER, &provisioner);
        set_annotation(
            &mut claim.metadata,
            ANN_BETA_STORAGE_PROVISIONER,
            &provisioner,
        );
        match claims_api(shared, &claim)
            .replace(&claim.name_any(), &PostParams::default(), &claim)
            .await
        {
            Ok(c) => claim = c,
            Err(e) => {
                shared.events.event(
                    COMPONENT,
                    &claim,
                    EventType::Warning,
                    "ProvisioningFailed",
                    format!("Error saving claim: {e}"),
                );
                return Err(e.into());
            }
        }
    }
    shared.events.event(
        COMPONENT,
        &claim,
        EventType::Normal,
        "ExternalProvisioning",
        format!(
            "Waiting for a volume to be created either by the external provisioner '{provisioner}' \
             or manually by the system administrator. If volume creation is delayed, please verify \
             that the provisioner is running and correctly registered."
        ),
    );
    Ok(claim)
}

async fn sync_bound_claim(
    claim: PersistentVolumeClaim,
    ctx: &Ctx,
) -> Result<Action, ReconcileError> {
    let shared = &ctx.shared;
    let wanted = volume_name(&claim).to_string();
    if wanted.is_empty() {
        lose(
            shared,
            &claim,
            "ClaimLost",
            "Bound claim has lost reference to PersistentVolume. Data on the volume is lost!",
        )
        .await?;
        return Ok(Action::await_change());
    }
    let pvs: Api<PersistentVolume> = Api::all(shared.client.clone());
    let Some(pv) = pvs.get_opt(&wanted).await? else {
        lose(
            shared,
            &claim,
            "ClaimLost",
            "Bound claim has lost its PersistentVolume. Data on the volume is lost!",
        )
        .await?;
        return Ok(Action::await_change());
    };
    match claim_ref(&pv).map(|r| r.uid.clone()) {
        Some(uid) if uid != claim.metadata.uid => {
            lose(
                shared,
                &claim,
                "ClaimMisbound",
                "Two claims are bound to the same volume, this one is bound incorrectly",
            )
            .await?;
            Ok(Action::await_change())
        }
        _ => {
            bind(shared, pv, claim).await?;
            Ok(Action::requeue(ctx.resync))
        }
    }
}

/// Upstream's `updateClaimStatusWithEvent(…, Lost, …)`: the event only on the transition.
async fn lose(
    shared: &Shared,
    claim: &PersistentVolumeClaim,
    reason: &str,
    message: &str,
) -> Result<(), ReconcileError> {
    if claim_phase(claim) == "Lost" {
        return Ok(());
    }
    shared
        .events
        .event(COMPONENT, claim, EventType::Warning, reason, message.into());
    update_claim_status(shared, claim, "Lost", None).await
}

/// Upstream's `updateClaimStatus`: phase, and the access modes and capacity of the volume
/// (cleared without one); written only when something changes.
async fn update_claim_status(
    shared: &Shared,
    claim: &PersistentVolumeClaim,
    phase: &str,
    volume: Option<&PersistentVolume>,
) -> Result<(), ReconcileError> {
    let mut next = claim.clone();
    let status = next.status.get_or_insert_with(Default::default);
    let old_phase = status.phase.clone().unwrap_or_default();
    match volume {
        None => {
            status.access_modes = None;
            status.capacity = None;
        }
        Some(pv) => {
            status.access_modes = pv.spec.as_ref().and_then(|s| s.access_modes.clone());
            if old_phase != phase {
                let cap = pv.spec.as_ref().and_then(|s| s.capacity.clone());
                if cap.as_ref().is_none_or(|c| !c.contains_key("storage")) {
                    return Err(ReconcileError::Invalid(format!(
                        "PersistentVolume {:?} is without a storage capacity",
                        pv.name_any()
                    )));
                }
                let old_cap = storage(status.capacity.as_ref());
                if status
                    .capacity
                    .as_ref()
                    .is_none_or(|c| !c.contains_key("storage"))
                    || old_cap != storage(cap.as_ref())
                {
                    status.capacity = cap;
                }
            }
        }
    }
    status.phase = Some(phase.to_string());
    if next.status == claim.status {
        return Ok(());
    }
    claims_api(shared, claim)
        .replace_status(&claim.name_any(), &PostParams::default(), &next)
        .await?;
    tracing::debug!(phase, "claim status updated");
    Ok(())
}

/// Upstream's `bind`: volume → claim, volume phase, claim → volume, claim phase; each step
/// written only when it changes something.
async fn bind(
    shared: &Shared,
    pv: PersistentVolume,
    claim: PersistentVolumeClaim,
) -> Result<(), ReconcileError> {
    let pvs: Api<PersistentVolume> = Api::all(shared.client.clone());
    // The volume's claimRef.
    let mut next = pv.clone();
    let by_controller = !bound_to_claim(&pv, &claim);
    let mut dirty = false;
    let same = claim_ref(&pv).is_some_and(|r| {
        r.name == claim.metadata.name
            && r.namespace == claim.metadata.namespace
            && r.uid == claim.metadata.uid
    });
    if !same {
        if let Some(spec) = next.spec.as_mut() {
            let mut r = crate::events::reference_of(&claim);
            r.api_version = Some("v1".into());
            spec.claim_ref = Some(r);
        }
        dirty = true;
    }
    if by_controller && !has_annotation(&next.metadata, ANN_BOUND_BY_CONTROLLER) {
        set_annotation(&mut next.metadata, ANN_BOUND_BY_CONTROLLER, "yes");
        dirty = true;
    }
    let pv = if dirty {
        let pv = pvs
            .replace(&pv.name_any(), &PostParams::default(), &next)
            .await?;
        tracing::info!(volume = %pv.name_any(), "volume bound to claim");
        pv
    } else {
        pv
    };
    let pv = update_volume_phase(shared, pv, "Bound", None).await?;
    // The claim's volumeName and annotations.
    let mut next = claim.clone();
    let mut dirty = false;
    let chosen_here = volume_name(&claim) != pv.name_any();
    if chosen_here {
        if let Some(spec) = next.spec.as_mut() {
            spec.volume_name = Some(pv.name_any());
        }
        dirty = true;
    }
    if chosen_here && !has_annotation(&next.metadata, ANN_BOUND_BY_CONTROLLER) {
        set_annotation(&mut next.metadata, ANN_BOUND_BY_CONTROLLER, "yes");
        dirty = true;
    }
    if !has_annotation(&next.metadata, ANN_BIND_COMPLETED) {
        set_annotation(&mut next.metadata, ANN_BIND_COMPLETED, "yes");
        dirty = true;
    }
    let claim = if dirty {
        claims_api(shared, &claim)
            .replace(&claim.name_any(), &PostParams::default(), &next)
            .await?
    } else {
        claim
    };
    update_claim_status(shared, &claim, "Bound", Some(&pv)).await
}

// ---------------------------------------------------------------------------------------------
// volumes

/// Upstream's `updateVolumePhase` (written only on change; `lastPhaseTransitionTime` moves
/// with the phase).
async fn update_volume_phase(
    shared: &Shared,
    pv: PersistentVolume,
    phase: &str,
    message: Option<&str>,
) -> Result<PersistentVolume, ReconcileError> {
    let status = pv.status.clone().unwrap_or_default();
    if status.phase.as_deref() == Some(phase) && status.message.as_deref() == message {
        return Ok(pv);
    }
    let mut next = pv.clone();
    let s = next.status.get_or_insert_with(Default::default);
    if s.phase.as_deref() != Some(phase) {
        s.last_phase_transition_time = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            util::now(),
        ));
    }
    s.phase = Some(phase.to_string());
    s.message = message.map(str::to_string);
    let api: Api<PersistentVolume> = Api::all(shared.client.clone());
    let pv = api
        .replace_status(&pv.name_any(), &PostParams::default(), &next)
        .await?;
    tracing::info!(volume = %pv.name_any(), phase, "volume phase updated");
    Ok(pv)
}

/// Upstream's `updateVolumePhaseWithEvent`: the event only on the transition.
async fn fail_volume(
    shared: &Shared,
    pv: PersistentVolume,
    reason: &str,
    message: String,
) -> Result<(), ReconcileError> {
    if pv_phase(&pv) == "Failed" {
        return Ok(());
    }
    shared
        .events
        .event(COMPONENT, &pv, EventType::Warning, reason, message.clone());
    update_volume_phase(shared, pv, "Failed", Some(&message)).await?;
    Ok(())
}

#[tracing::instrument(skip_all, fields(volume = %cached.name_any()))]
async fn sync_volume(cached: &PersistentVolume, ctx: &Ctx) -> Result<Action, ReconcileError> {
    let shared = &ctx.shared;
    let pvs: Api<PersistentVolume> = Api::all(shared.client.clone());
    let Some(pv) = pvs.get_opt(&cached.name_any()).await? else {
        return Ok(Action::await_change());
    };
    let Some(r) = claim_ref(&pv).cloned() else {
        update_volume_phase(shared, pv, "Available", None).await?;
        return Ok(Action::await_change());
    };
    if r.uid.as_deref().unwrap_or("").is_empty() {
        // Pre-bound to a claim by the user; the claim's sync binds it.
        update_volume_phase(shared, pv, "Available", None).await?;
        return Ok(Action::requeue(ctx.resync));
    }
    let claims: Api<PersistentVolumeClaim> =
        Api::namespaced(shared.client.clone(), r.namespace.as_deref().unwrap_or(""));
    let claim = claims
        .get_opt(r.name.as_deref().unwrap_or(""))
        .await?
        .filter(|c| c.metadata.uid == r.uid);
    let Some(claim) = claim else {
        let pv = if matches!(pv_phase(&pv), "Released" | "Failed") {
            pv
        } else {
            update_volume_phase(shared, pv, "Released", None).await?
        };
        reclaim(shared, pv).await?;
        return Ok(Action::requeue(ctx.resync));
    };
    let claimed = volume_name(&claim);
    if claimed.is_empty() {
        if volume_mode_mismatch(&claim, &pv) {
            shared.events.event(
                COMPONENT,
                &pv,
                EventType::Warning,
                "VolumeMismatch",
                format!(
                    "Cannot bind PersistentVolume to requested PersistentVolumeClaim {:?} due to incompatible volumeMode.",
                    claim.name_any()
                ),
            );
            shared.events.event(
                COMPONENT,
                &claim,
                EventType::Warning,
                "VolumeMismatch",
                format!(
                    "Cannot bind PersistentVolume {:?} to requested PersistentVolumeClaim due to incompatible volumeMode.",
                    pv.name_any()
                ),
            );
        }
        // The claim's sync finishes the binding.
        return Ok(Action::requeue(ctx.resync));
    }
    if claimed == pv.name_any() {
        update_volume_phase(shared, pv, "Bound", None).await?;
        return Ok(Action::requeue(ctx.resync));
    }
    // The claim went to another volume.
    let dynamic_delete = has_annotation(&pv.metadata, ANN_DYNAMICALLY_PROVISIONED)
        && reclaim_policy(&pv) == "Delete";
    if dynamic_delete {
        let pv = if matches!(pv_phase(&pv), "Released" | "Failed") {
            pv
        } else {
            update_volume_phase(shared, pv, "Released", None).await?
        };
        reclaim(shared, pv).await?;
        return Ok(Action::requeue(ctx.resync));
    }
    unbind(shared, pv).await?;
    Ok(Action::requeue(ctx.resync))
}

fn reclaim_policy(pv: &PersistentVolume) -> &str {
    pv.spec
        .as_ref()
        .and_then(|s| s.persistent_volume_reclaim_policy.as_deref())
        .unwrap_or("Retain")
}

/// Upstream's `unbindVolume`: a volume the controller bound loses its claimRef and the
/// annotation; one the user pre-bound keeps the claimRef without uid. Then `Available`.
async fn unbind(shared: &Shared, pv: PersistentVolume) -> Result<(), ReconcileError> {
    let mut next = pv.clone();
    if has_annotation(&pv.metadata, ANN_BOUND_BY_CONTROLLER) {
        if let Some(spec) = next.spec.as_mut() {
            spec.claim_ref = None;
        }
        if let Some(a) = next.metadata.annotations.as_mut() {
            a.remove(ANN_BOUND_BY_CONTROLLER);
            if a.is_empty() {
                next.metadata.annotations = None;
            }
        }
    } else if let Some(r) = next.spec.as_mut().and_then(|s| s.claim_ref.as_mut()) {
        r.uid = None;
    }
    let api: Api<PersistentVolume> = Api::all(shared.client.clone());
    let pv = api
        .replace(&pv.name_any(), &PostParams::default(), &next)
        .await?;
    tracing::info!(volume = %pv.name_any(), "volume unbound");
    update_volume_phase(shared, pv, "Available", None).await?;
    Ok(())
}

/// Upstream's `reclaimVolume` with no in-tree deleters or recyclers.
async fn reclaim(shared: &Shared, pv: PersistentVolume) -> Result<(), ReconcileError> {
    match reclaim_policy(&pv) {
        "Retain" => Ok(()),
        "Recycle" => {
            fail_volume(
                shared,
                pv,
                "VolumeFailedRecycle",
                "No recycler plugin found for the volume!".into(),
            )
            .await
        }
        "Delete" => {
            if let Some(by) = annotation(&pv.metadata, ANN_DYNAMICALLY_PROVISIONED)
                && !by.is_empty()
            {
                if !by.starts_with("kubernetes.io/") {
                    // An external provisioner deletes its volumes.
                    return Ok(());
                }
                let message = format!("no deletable volume plugin matched name: {by}");
                return fail_volume(shared, pv, "VolumeFailedDelete", message).await;
            }
            let message = format!(
                "error getting deleter volume plugin for volume {:?}: no deletable volume plugin matched",
                pv.name_any()
            );
            fail_volume(shared, pv, "VolumeFailedDelete", message).await
        }
        other => {
            tracing::warn!(policy = other, "unknown reclaim policy");
            Ok(())
        }
    }
}

// ---------------------------------------------------------------------------------------------
// protection

/// The claims a pod's volumes name (`persistentVolumeClaim`, and `<pod>-<volume>` for
/// generic ephemeral volumes).
fn pod_claims(pod: &Pod) -> Vec<String> {
    let name = pod.name_any();
    pod.spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .map(|vs| {
            vs.iter()
                .filter_map(|v| {
                    if let Some(c) = &v.persistent_volume_claim {
                        Some(c.claim_name.clone())
                    } else {
                        v.ephemeral.as_ref().map(|_| format!("{name}-{}", v.name))
                    }
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Upstream's `podIsShutDown`: the kubelet is done with it or it was force-deleted.
fn pod_shut_down(pod: &Pod) -> bool {
    matches!(util::pod_phase(pod), "Succeeded" | "Failed")
        || (pod.metadata.deletion_timestamp.is_some()
            && pod.metadata.deletion_grace_period_seconds == Some(0))
}

/// Upstream's `podUsesPVC`: only scheduled pods count (the kubelet refuses to start a pod
/// whose claim is being deleted).
pub(crate) fn pod_uses_claim(pod: &Pod, claim: &PersistentVolumeClaim) -> bool {
    let Some(spec) = pod.spec.as_ref() else {
        return false;
    };
    if spec.node_name.as_deref().unwrap_or("").is_empty() {
        return false;
    }
    let name = claim.name_any();
    let pod_name = pod.name_any();
    spec.volumes.iter().flatten().any(|v| {
        if let Some(c) = &v.persistent_volume_claim {
            return c.claim_name == name;
        }
        v.ephemeral.is_some()
            && !pod_shut_down(pod)
            && format!("{pod_name}-{}", v.name) == name
            && util::controller_of(&claim.metadata)
                .is_some_and(|r| Some(&r.uid) == pod.metadata.uid.as_ref())
    })
}

fn has_finalizer(meta: &kube::core::ObjectMeta, f: &str) -> bool {
    meta.finalizers
        .as_ref()
        .is_some_and(|fs| fs.iter().any(|x| x == f))
}

fn with_finalizer(meta: &mut kube::core::ObjectMeta, f: &str, present: bool) {
    let fs = meta.finalizers.get_or_insert_with(Vec::new);
    fs.retain(|x| x != f);
    if present {
        fs.push(f.to_string());
    }
    if fs.is_empty() {
        meta.finalizers = None;
    }
}

pub(crate) async fn run_pvc_protection(shared: Arc<Shared>, stop: watch::Receiver<bool>) {
    let client = shared.client.clone();
    let controller = Controller::new(
        Api::<PersistentVolumeClaim>::all(client.clone()),
        watcher::Config::default(),
    )
    .watches(
        Api::<Pod>::all(client),
        watcher::Config::default(),
        |pod: Pod| {
            let ns = pod.namespace().unwrap_or_default();
            pod_claims(&pod)
                .into_iter()
                .map(|c| ObjectRef::<PersistentVolumeClaim>::new(&c).within(&ns))
                .collect::<Vec<_>>()
        },
    );
    util::run_controller(
        "pvc-protection",
        shared,
        controller,
        stop,
        |claim, shared| async move { sync_pvc_protection(&claim, &shared).await },
    )
    .await;
}

#[tracing::instrument(skip_all, fields(claim = %util::key_of(&cached.metadata)))]
async fn sync_pvc_protection(
    cached: &PersistentVolumeClaim,
    shared: &Shared,
) -> Result<Action, ReconcileError> {
    let deleting = cached.metadata.deletion_timestamp.is_some();
    let has = has_finalizer(&cached.metadata, PVC_FINALIZER);
    if deleting != has {
        // Not deleting and protected, or deleting and already released.
        return Ok(Action::await_change());
    }
    let api = claims_api(shared, cached);
    let Some(claim) = api.get_opt(&cached.name_any()).await? else {
        return Ok(Action::await_change());
    };
    let deleting = claim.metadata.deletion_timestamp.is_some();
    let has = has_finalizer(&claim.metadata, PVC_FINALIZER);
    if !deleting && !has {
        let mut next = claim.clone();
        with_finalizer(&mut next.metadata, PVC_FINALIZER, true);
        api.replace(&claim.name_any(), &PostParams::default(), &next)
            .await?;
        tracing::debug!("added the pvc-protection finalizer");
    } else if deleting && has {
        let pods: Api<Pod> = Api::namespaced(
            shared.client.clone(),
            claim.metadata.namespace.as_deref().unwrap_or(""),
        );
        let used = pods
            .list(&ListParams::default())
            .await?
            .items
            .iter()
            .any(|p| pod_uses_claim(p, &claim));
        if used {
            tracing::debug!("claim is still used by a pod; keeping the finalizer");
            return Ok(Action::await_change());
        }
        let mut next = claim.clone();
        with_finalizer(&mut next.metadata, PVC_FINALIZER, false);
        match api
            .replace(&claim.name_any(), &PostParams::default(), &next)
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
        tracing::info!("removed the pvc-protection finalizer");
    }
    Ok(Action::await_change())
}

pub(crate) async fn run_pv_protection(shared: Arc<Shared>, stop: watch::Receiver<bool>) {
    let controller = Controller::new(
        Api::<PersistentVolume>::all(shared.client.clone()),
        watcher::Config::default(),
    );
    util::run_controller(
        "pv-protection",
        shared,
        controller,
        stop,
        |pv, shared| async move { sync_pv_protection(&pv, &shared).await },
    )
    .await;
}

#[tracing::instrument(skip_all, fields(volume = %cached.name_any()))]
async fn sync_pv_protection(
    cached: &PersistentVolume,
    shared: &Shared,
) -> Result<Action, ReconcileError> {
    let deleting = cached.metadata.deletion_timestamp.is_some();
    let has = has_finalizer(&cached.metadata, PV_FINALIZER);
    if deleting != has {
        return Ok(Action::await_change());
    }
    let api: Api<PersistentVolume> = Api::all(shared.client.clone());
    let Some(pv) = api.get_opt(&cached.name_any()).await? else {
        return Ok(Action::await_change());
    };
    let deleting = pv.metadata.deletion_timestamp.is_some();
    let has = has_finalizer(&pv.metadata, PV_FINALIZER);
    if !deleting && !has {
        let mut next = pv.clone();
        with_finalizer(&mut next.metadata, PV_FINALIZER, true);
        api.replace(&pv.name_any(), &PostParams::default(), &next)
            .await?;
    } else if deleting && has {
        if pv_phase(&pv) == "Bound" {
            tracing::debug!("volume is bound; keeping the finalizer");
            return Ok(Action::await_change());
        }
        let mut next = pv.clone();
        with_finalizer(&mut next.metadata, PV_FINALIZER, false);
        match api
            .replace(&pv.name_any(), &PostParams::default(), &next)
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
        tracing::info!("removed the pv-protection finalizer");
    }
    Ok(Action::await_change())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pv(name: &str, size: &str, modes: &[&str], extra: serde_json::Value) -> PersistentVolume {
        let mut v = json!({
            "metadata": {"name": name, "labels": {"tier": name}},
            "spec": {"capacity": {"storage": size}, "accessModes": modes,
                     "hostPath": {"path": "/tmp"}},
            "status": {"phase": "Available"},
        });
        json_patch::merge(&mut v, &extra);
        serde_json::from_value(v).unwrap()
    }

    fn claim(size: &str, modes: &[&str], extra: serde_json::Value) -> PersistentVolumeClaim {
        let mut v = json!({
            "metadata": {"name": "c", "namespace": "d", "uid": "u1"},
            "spec": {"accessModes": modes, "resources": {"requests": {"storage": size}}},
        });
        json_patch::merge(&mut v, &extra);
        serde_json::from_value(v).unwrap()
    }

    fn best(c: &PersistentVolumeClaim, vs: &[PersistentVolume], delay: bool) -> Option<String> {
        find_best_match(c, vs, delay).unwrap().map(|v| v.name_any())
    }

    #[test]
    fn the_smallest_fitting_volume_with_the_fewest_extra_modes_wins() {
        let vs = vec![
            pv("big", "10Gi", &["ReadWriteOnce"], json!({})),
            pv("small", "1Gi", &["ReadWriteOnce"], json!({})),
            pv("fits", "2Gi", &["ReadWriteOnce"], json!({})),
            pv(
                "multi",
                "2Gi",
                &["ReadWriteOnce", "ReadOnlyMany"],
                json!({}),
            ),
        ];
        let c = claim("1500Mi", &["ReadWriteOnce"], json!({}));
        assert_eq!(best(&c, &vs, false).as_deref(), Some("fits"));
        // ReadOnlyMany only exists in the two-mode set.
        let c = claim("1Gi", &["ReadOnlyMany"], json!({}));
        assert_eq!(best(&c, &vs, false).as_deref(), Some("multi"));
        // Too big for all.
        let c = claim("20Gi", &["ReadWriteOnce"], json!({}));
        assert_eq!(best(&c, &vs, false), None);
        // RWX exists nowhere.
        let c = claim("1Gi", &["ReadWriteMany"], json!({}));
        assert_eq!(best(&c, &vs, false), None);
    }

    #[test]
    fn class_mode_selector_phase_and_deletion_filter() {
        let vs = vec![
            pv(
                "gold",
                "1Gi",
                &["ReadWriteOnce"],
                json!({"spec": {"storageClassName": "gold"}}),
            ),
            pv(
                "block",
                "1Gi",
                &["ReadWriteOnce"],
                json!({"spec": {"volumeMode": "Block"}}),
            ),
            pv(
                "released",
                "1Gi",
                &["ReadWriteOnce"],
                json!({"status": {"phase": "Released"}}),
            ),
            pv("plain", "5Gi", &["ReadWriteOnce"], json!({})),
            pv(
                "going",
                "1Gi",
                &["ReadWriteOnce"],
                json!({"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z"}}),
            ),
        ];
        let c = claim(
            "1Gi",
            &["ReadWriteOnce"],
            json!({"spec": {"storageClassName": "gold"}}),
        );
        assert_eq!(best(&c, &vs, false).as_deref(), Some("gold"));
        let c = claim(
            "1Gi",
            &["ReadWriteOnce"],
            json!({"spec": {"volumeMode": "Block"}}),
        );
        assert_eq!(best(&c, &vs, false).as_deref(), Some("block"));
        let c = claim("1Gi", &["ReadWriteOnce"], json!({}));
        assert_eq!(best(&c, &vs, false).as_deref(), Some("plain"));
        let c = claim(
            "1Gi",
            &["ReadWriteOnce"],
            json!({"spec": {"selector": {"matchLabels": {"tier": "gold"}}}}),
        );
        assert_eq!(
            best(&c, &vs, false),
            None,
            "selector and class both must match"
        );
        let c = claim(
            "1Gi",
            &["ReadWriteOnce"],
            json!({"spec": {"storageClassName": "gold", "selector": {"matchLabels": {"tier": "gold"}}}}),
        );
        assert_eq!(best(&c, &vs, false).as_deref(), Some("gold"));
    }

    #[test]
    fn claim_ref_pre_binding_wins_and_survives_delayed_binding() {
        let vs = vec![
            pv("small", "1Gi", &["ReadWriteOnce"], json!({})),
            pv(
                "mine",
                "8Gi",
                &["ReadWriteOnce"],
                json!({"spec": {"claimRef": {"namespace": "d", "name": "c"}}, "status": {"phase": "Available"}}),
            ),
            pv(
                "theirs",
                "1Gi",
                &["ReadWriteOnce"],
                json!({"spec": {"claimRef": {"namespace": "d", "name": "other"}}}),
            ),
        ];
        let c = claim("1Gi", &["ReadWriteOnce"], json!({}));
        assert_eq!(best(&c, &vs, false).as_deref(), Some("mine"));
        assert_eq!(best(&c, &vs, true).as_deref(), Some("mine"));
        let unbound_only = &vs[..1];
        assert_eq!(
            best(&c, unbound_only, true),
            None,
            "WaitForFirstConsumer waits"
        );
        // A claimRef with another uid is not ours.
        let c2 = claim(
            "1Gi",
            &["ReadWriteOnce"],
            json!({"metadata": {"uid": "u2"}}),
        );
        let vs2 = vec![pv(
            "mine",
            "8Gi",
            &["ReadWriteOnce"],
            json!({"spec": {"claimRef": {"namespace": "d", "name": "c", "uid": "u1"}}}),
        )];
        assert_eq!(best(&c2, &vs2, false), None);
    }

    #[test]
    fn a_named_volume_is_checked() {
        let c = claim("2Gi", &["ReadWriteMany"], json!({}));
        let v = pv("v", "1Gi", &["ReadWriteMany"], json!({}));
        assert_eq!(
            check_volume_satisfies_claim(&v, &c),
            Err("requested PV is too small".into())
        );
        let v = pv("v", "2Gi", &["ReadWriteOnce"], json!({}));
        assert_eq!(
            check_volume_satisfies_claim(&v, &c),
            Err("incompatible accessMode".into())
        );
        let v = pv(
            "v",
            "2Gi",
            &["ReadWriteMany"],
            json!({"spec": {"storageClassName": "x"}}),
        );
        assert_eq!(
            check_volume_satisfies_claim(&v, &c),
            Err("storageClassName does not match".into())
        );
        let v = pv("v", "2Gi", &["ReadWriteMany"], json!({}));
        assert_eq!(check_volume_satisfies_claim(&v, &c), Ok(()));
    }

    #[test]
    fn only_scheduled_pods_hold_a_claim() {
        let c = claim("1Gi", &["ReadWriteOnce"], json!({}));
        let pod = |node: Option<&str>| -> Pod {
            serde_json::from_value(json!({
                "metadata": {"name": "p", "namespace": "d"},
                "spec": {"nodeName": node, "containers": [],
                         "volumes": [{"name": "v", "persistentVolumeClaim": {"claimName": "c"}}]},
            }))
            .unwrap()
        };
        assert!(pod_uses_claim(&pod(Some("n1")), &c));
        assert!(!pod_uses_claim(&pod(None), &c));
    }
}
