//! The PersistentVolume binder and the pvc/pv-protection controllers against a real
//! in-process apiserver, with the controller manager running as `system:kube-controller-manager`
//! (its RBAC roles must cover what these controllers do).

#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use common::{TestCluster, eventually};
use k8s_openapi::api::core::v1::{Event, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

/// A cluster whose controller manager runs the volume controllers with the identity of
/// `rk3s server`'s controller manager.
struct Cluster {
    t: TestCluster,
    manager: tokio::task::JoinHandle<()>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.manager.abort();
    }
}

async fn start() -> Cluster {
    let t = TestCluster::start_with(rk3s_controller::Config {
        controllers: vec![],
        ..rk3s_controller::Config::default()
    })
    .await;
    let config = rk3s_controller::Config {
        controllers: vec![
            "persistentvolume-binder".into(),
            "pvc-protection".into(),
            "pv-protection".into(),
        ],
        leader_elect: false,
        loops: rk3s_controller::LoopConfig {
            pvclaimbinder_sync_period: 1,
            ..rk3s_controller::LoopConfig::default()
        },
        ..rk3s_controller::Config::default()
    };
    let connection = common::manager_connection(&t.apiserver).await;
    let config = common::manager_config(config);
    let manager = tokio::spawn(async move {
        rk3s_controller::run(config, connection, std::future::pending())
            .await
            .unwrap();
    });
    Cluster { t, manager }
}

fn pv(name: &str, size: &str, extra: serde_json::Value) -> PersistentVolume {
    let mut v = json!({
        "metadata": {"name": name},
        "spec": {"capacity": {"storage": size}, "accessModes": ["ReadWriteOnce"],
                 "hostPath": {"path": format!("/tmp/{name}")}},
    });
    json_patch::merge(&mut v, &extra);
    serde_json::from_value(v).unwrap()
}

fn pvc(name: &str, size: &str, extra: serde_json::Value) -> PersistentVolumeClaim {
    let mut v = json!({
        "metadata": {"name": name},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}},
    });
    json_patch::merge(&mut v, &extra);
    serde_json::from_value(v).unwrap()
}

fn claim_phase(c: &PersistentVolumeClaim) -> Option<String> {
    c.status.as_ref()?.phase.clone()
}

fn pv_phase(v: &PersistentVolume) -> Option<String> {
    v.status.as_ref()?.phase.clone()
}

fn annotation(meta: &kube::core::ObjectMeta, key: &str) -> Option<String> {
    meta.annotations.as_ref()?.get(key).cloned()
}

async fn event(client: &kube::Client, kind: &str, name: &str, reason: &str) -> Option<Event> {
    Api::<Event>::namespaced(client.clone(), "default")
        .list(&ListParams::default().fields(&format!(
            "involvedObject.kind={kind},involvedObject.name={name}"
        )))
        .await
        .ok()?
        .items
        .into_iter()
        .find(|e| e.reason.as_deref() == Some(reason))
}

async fn bound(claims: &Api<PersistentVolumeClaim>, name: &str) -> PersistentVolumeClaim {
    eventually(30, &format!("claim {name} bound"), || async {
        let c = claims.get(name).await.ok()?;
        (claim_phase(&c).as_deref() == Some("Bound")).then_some(c)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_bind_to_the_smallest_fitting_volume_and_release_it() {
    let c = start().await;
    let client = c.t.client.clone();
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), "default");
    let pp = PostParams::default();
    pvs.create(&pp, &pv("small", "1Gi", json!({})))
        .await
        .unwrap();
    pvs.create(&pp, &pv("medium", "5Gi", json!({})))
        .await
        .unwrap();
    pvs.create(&pp, &pv("large", "10Gi", json!({})))
        .await
        .unwrap();
    pvs.create(
        &pp,
        &pv("gold", "5Gi", json!({"spec": {"storageClassName": "gold"}})),
    )
    .await
    .unwrap();
    pvs.create(
        &pp,
        &pv(
            "wipe",
            "2Gi",
            json!({"spec": {"persistentVolumeReclaimPolicy": "Delete",
            "storageClassName": "scratch"}}),
        ),
    )
    .await
    .unwrap();
    eventually(30, "volumes Available", || async {
        let l = pvs.list(&ListParams::default()).await.ok()?;
        l.items
            .iter()
            .all(|v| pv_phase(v).as_deref() == Some("Available"))
            .then_some(())
    })
    .await;

    claims
        .create(&pp, &pvc("data", "3Gi", json!({})))
        .await
        .unwrap();
    let claim = bound(&claims, "data").await;
    let spec = claim.spec.as_ref().unwrap();
    assert_eq!(
        spec.volume_name.as_deref(),
        Some("medium"),
        "smallest fitting volume of the class"
    );
    assert_eq!(
        annotation(&claim.metadata, "pv.kubernetes.io/bind-completed").as_deref(),
        Some("yes")
    );
    assert_eq!(
        annotation(&claim.metadata, "pv.kubernetes.io/bound-by-controller").as_deref(),
        Some("yes")
    );
    let status = claim.status.as_ref().unwrap();
    assert_eq!(status.capacity.as_ref().unwrap()["storage"].0, "5Gi");
    assert_eq!(
        status.access_modes.as_deref(),
        Some(&["ReadWriteOnce".to_string()][..])
    );
    assert!(
        claim
            .metadata
            .finalizers
            .iter()
            .flatten()
            .any(|f| f == "kubernetes.io/pvc-protection"),
        "pvc-protection finalizer added"
    );
    let vol = eventually(30, "volume Bound", || async {
        let v = pvs.get("medium").await.ok()?;
        (pv_phase(&v).as_deref() == Some("Bound")).then_some(v)
    })
    .await;
    let r = vol.spec.as_ref().unwrap().claim_ref.as_ref().unwrap();
    assert_eq!(
        (r.namespace.as_deref(), r.name.as_deref()),
        (Some("default"), Some("data"))
    );
    assert_eq!(r.uid, claim.metadata.uid);
    assert_eq!(
        annotation(&vol.metadata, "pv.kubernetes.io/bound-by-controller").as_deref(),
        Some("yes")
    );
    assert!(
        vol.metadata
            .finalizers
            .iter()
            .flatten()
            .any(|f| f == "kubernetes.io/pv-protection")
    );
    let out = c.t.kubectl_ok(&["get", "pvc", "data"]).await;
    assert!(
        out.contains("Bound") && out.contains("medium") && out.contains("5Gi"),
        "{out}"
    );

    // Nothing fits: Pending with upstream's event; other volumes untouched.
    claims
        .create(&pp, &pvc("huge", "50Gi", json!({})))
        .await
        .unwrap();
    let e = eventually(30, "FailedBinding event", || {
        event(&client, "PersistentVolumeClaim", "huge", "FailedBinding")
    })
    .await;
    assert_eq!(
        e.message.as_deref(),
        Some("no persistent volumes available for this claim and no storage class is set")
    );
    // The event is queued before the claim's status is written (which a concurrent write,
    // the protection finalizer, can send round again).
    eventually(30, "huge Pending", || async {
        (claim_phase(&claims.get("huge").await.unwrap()).as_deref() == Some("Pending"))
            .then_some(())
    })
    .await;
    assert_eq!(
        pv_phase(&pvs.get("small").await.unwrap()).as_deref(),
        Some("Available")
    );

    // Deleting the claim (unused by pods) releases the Retain volume.
    claims
        .delete("data", &DeleteParams::default())
        .await
        .unwrap();
    eventually(30, "claim gone", || async {
        claims.get_opt("data").await.ok()?.is_none().then_some(())
    })
    .await;
    let vol = eventually(30, "volume Released", || async {
        let v = pvs.get("medium").await.ok()?;
        (pv_phase(&v).as_deref() == Some("Released")).then_some(v)
    })
    .await;
    assert!(
        vol.spec.as_ref().unwrap().claim_ref.is_some(),
        "Retain keeps the claimRef"
    );
    // A new claim does not get the Released volume.
    claims
        .create(&pp, &pvc("again", "3Gi", json!({})))
        .await
        .unwrap();
    let again = bound(&claims, "again").await;
    assert_eq!(
        again.spec.as_ref().unwrap().volume_name.as_deref(),
        Some("large")
    );

    // A Delete volume without a deleter fails, as upstream's without a plugin.
    claims
        .create(
            &pp,
            &pvc(
                "tmp",
                "1Gi",
                json!({"spec": {"storageClassName": "scratch"}}),
            ),
        )
        .await
        .unwrap();
    bound(&claims, "tmp").await;
    claims
        .delete("tmp", &DeleteParams::default())
        .await
        .unwrap();
    let vol = eventually(30, "volume Failed", || async {
        let v = pvs.get("wipe").await.ok()?;
        (pv_phase(&v).as_deref() == Some("Failed")).then_some(v)
    })
    .await;
    let msg = "error getting deleter volume plugin for volume \"wipe\": no deletable volume plugin matched";
    assert_eq!(vol.status.as_ref().unwrap().message.as_deref(), Some(msg));
    let e = eventually(30, "VolumeFailedDelete event", || {
        event(&client, "PersistentVolume", "wipe", "VolumeFailedDelete")
    })
    .await;
    assert_eq!(e.message.as_deref(), Some(msg));
    assert_eq!(e.type_.as_deref(), Some("Warning"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pre_bound_claims_and_volumes() {
    let c = start().await;
    let client = c.t.client.clone();
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), "default");
    let pp = PostParams::default();
    // A volume reserved for claim "mine" by claimRef, bigger than a free one.
    pvs.create(&pp, &pv("free", "1Gi", json!({})))
        .await
        .unwrap();
    pvs.create(
        &pp,
        &pv(
            "reserved",
            "8Gi",
            json!({"spec": {"claimRef": {"namespace": "default", "name": "mine"}}}),
        ),
    )
    .await
    .unwrap();
    pvs.create(&pp, &pv("tiny", "100Mi", json!({})))
        .await
        .unwrap();
    claims
        .create(&pp, &pvc("other", "1Gi", json!({})))
        .await
        .unwrap();
    let other = bound(&claims, "other").await;
    assert_eq!(
        other.spec.unwrap().volume_name.as_deref(),
        Some("free"),
        "reserved volume not taken"
    );
    claims
        .create(&pp, &pvc("mine", "1Gi", json!({})))
        .await
        .unwrap();
    let mine = bound(&claims, "mine").await;
    assert_eq!(
        mine.spec.as_ref().unwrap().volume_name.as_deref(),
        Some("reserved")
    );
    let vol = pvs.get("reserved").await.unwrap();
    assert_eq!(
        annotation(&vol.metadata, "pv.kubernetes.io/bound-by-controller"),
        None,
        "the user bound this volume"
    );
    assert_eq!(vol.spec.unwrap().claim_ref.unwrap().uid, mine.metadata.uid);

    // volumeName naming a volume that is too small: VolumeMismatch, Pending.
    claims
        .create(
            &pp,
            &pvc("named", "1Gi", json!({"spec": {"volumeName": "tiny"}})),
        )
        .await
        .unwrap();
    let e = eventually(30, "VolumeMismatch", || {
        event(&client, "PersistentVolumeClaim", "named", "VolumeMismatch")
    })
    .await;
    assert_eq!(
        e.message.as_deref(),
        Some("Cannot bind to requested volume \"tiny\": requested PV is too small")
    );
    // The event comes before the claim's status write, as upstream's order.
    eventually(30, "claim \"named\" Pending", || async {
        (claim_phase(&claims.get("named").await.unwrap()).as_deref() == Some("Pending"))
            .then_some(())
    })
    .await;
    assert_eq!(
        pv_phase(&pvs.get("tiny").await.unwrap()).as_deref(),
        Some("Available")
    );
    // volumeName naming a fitting volume binds it, without bound-by-controller on the claim.
    claims
        .create(
            &pp,
            &pvc("named2", "50Mi", json!({"spec": {"volumeName": "tiny"}})),
        )
        .await
        .unwrap();
    let named = bound(&claims, "named2").await;
    assert_eq!(
        annotation(&named.metadata, "pv.kubernetes.io/bound-by-controller"),
        None
    );
    assert_eq!(
        annotation(&named.metadata, "pv.kubernetes.io/bind-completed").as_deref(),
        Some("yes")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_for_first_consumer_default_class_and_external_provisioning() {
    let c = start().await;
    let client = c.t.client.clone();
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), "default");
    let classes: Api<StorageClass> = Api::all(client.clone());
    let pp = PostParams::default();
    classes
        .create(
            &pp,
            &serde_json::from_value(json!({
                "metadata": {"name": "local-path",
                    "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
                "provisioner": "rancher.io/local-path",
                "volumeBindingMode": "WaitForFirstConsumer",
                "reclaimPolicy": "Delete",
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    // A fitting volume of the class exists, but binding waits for a consumer.
    pvs.create(
        &pp,
        &pv(
            "lp",
            "1Gi",
            json!({"spec": {"storageClassName": "local-path"}}),
        ),
    )
    .await
    .unwrap();
    // No class given: the default class is assigned.
    claims
        .create(&pp, &pvc("web", "1Gi", json!({})))
        .await
        .unwrap();
    let claim = eventually(30, "default class assigned", || async {
        let c = claims.get("web").await.ok()?;
        (c.spec.as_ref()?.storage_class_name.as_deref() == Some("local-path")).then_some(c)
    })
    .await;
    assert!(claim.spec.unwrap().volume_name.is_none());
    let e = eventually(30, "WaitForFirstConsumer", || {
        event(
            &client,
            "PersistentVolumeClaim",
            "web",
            "WaitForFirstConsumer",
        )
    })
    .await;
    assert_eq!(
        e.message.as_deref(),
        Some("waiting for first consumer to be created before binding")
    );
    // An unscheduled pod using it changes the message.
    Api::<Pod>::namespaced(client.clone(), "default")
        .create(
            &pp,
            &serde_json::from_value(json!({
                "metadata": {"name": "consumer"},
                "spec": {"containers": [{"name": "c", "image": "busybox"}],
                    "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "web"}}]},
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    let e = eventually(30, "WaitForPodScheduled", || {
        event(
            &client,
            "PersistentVolumeClaim",
            "web",
            "WaitForPodScheduled",
        )
    })
    .await;
    assert_eq!(
        e.message.as_deref(),
        Some("waiting for pod consumer to be scheduled")
    );
    assert_eq!(
        claim_phase(&claims.get("web").await.unwrap()).as_deref(),
        Some("Pending")
    );
    assert_eq!(
        pv_phase(&pvs.get("lp").await.unwrap()).as_deref(),
        Some("Available")
    );

    // The scheduler picks a node: with no pre-bound volume the claim goes to the external
    // provisioner (the controller does not bind static volumes of a delayed class itself).
    claims
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"annotations": {"volume.kubernetes.io/selected-node": "n1"}}}),
            ),
        )
        .await
        .unwrap();
    let claim = eventually(30, "provisioner annotations", || async {
        let c = claims.get("web").await.ok()?;
        annotation(&c.metadata, "volume.kubernetes.io/storage-provisioner").map(|_| c)
    })
    .await;
    assert_eq!(
        annotation(&claim.metadata, "volume.kubernetes.io/storage-provisioner").as_deref(),
        Some("rancher.io/local-path")
    );
    assert_eq!(
        annotation(
            &claim.metadata,
            "volume.beta.kubernetes.io/storage-provisioner"
        )
        .as_deref(),
        Some("rancher.io/local-path")
    );
    let e = eventually(30, "ExternalProvisioning", || {
        event(
            &client,
            "PersistentVolumeClaim",
            "web",
            "ExternalProvisioning",
        )
    })
    .await;
    assert_eq!(
        e.message.as_deref(),
        Some(
            "Waiting for a volume to be created either by the external provisioner 'rancher.io/local-path' \
             or manually by the system administrator. If volume creation is delayed, please verify \
             that the provisioner is running and correctly registered."
        )
    );
    // The provisioner creates a volume pre-bound to the claim: the binder finishes it.
    pvs.create(
        &pp,
        &pv("pvc-web", "1Gi", json!({
            "metadata": {"annotations": {"pv.kubernetes.io/provisioned-by": "rancher.io/local-path"}},
            "spec": {"storageClassName": "local-path", "persistentVolumeReclaimPolicy": "Delete",
                "claimRef": {"namespace": "default", "name": "web", "uid": claim.metadata.uid}}})),
    )
    .await
    .unwrap();
    let claim = bound(&claims, "web").await;
    assert_eq!(claim.spec.unwrap().volume_name.as_deref(), Some("pvc-web"));
    // Deleted: the external provisioner's volume is Released and left to it (not Failed).
    Api::<Pod>::namespaced(client.clone(), "default")
        .delete(
            "consumer",
            &DeleteParams {
                grace_period_seconds: Some(0),
                ..DeleteParams::default()
            },
        )
        .await
        .unwrap();
    claims
        .delete("web", &DeleteParams::default())
        .await
        .unwrap();
    eventually(30, "provisioned volume Released", || async {
        let v = pvs.get("pvc-web").await.ok()?;
        (pv_phase(&v).as_deref() == Some("Released")).then_some(())
    })
    .await;

    // A class that does not exist: ProvisioningFailed.
    claims
        .create(
            &pp,
            &pvc("lost", "1Gi", json!({"spec": {"storageClassName": "nope"}})),
        )
        .await
        .unwrap();
    let e = eventually(30, "ProvisioningFailed", || {
        event(
            &client,
            "PersistentVolumeClaim",
            "lost",
            "ProvisioningFailed",
        )
    })
    .await;
    assert_eq!(
        e.message.as_deref(),
        Some("storageclass.storage.k8s.io \"nope\" not found")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protection_holds_claims_in_use_and_bound_volumes() {
    let c = start().await;
    let client = c.t.client.clone();
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pp = PostParams::default();
    pvs.create(&pp, &pv("vol", "1Gi", json!({}))).await.unwrap();
    claims
        .create(&pp, &pvc("used", "1Gi", json!({})))
        .await
        .unwrap();
    bound(&claims, "used").await;
    pods.create(
        &pp,
        &serde_json::from_value(json!({
            "metadata": {"name": "user"},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "busybox"}],
                "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "used"}}]},
        }))
        .unwrap(),
    )
    .await
    .unwrap();
    eventually(30, "finalizers on both", || async {
        let c = claims.get("used").await.ok()?;
        let v = pvs.get("vol").await.ok()?;
        (c.metadata.finalizers.is_some() && v.metadata.finalizers.is_some()).then_some(())
    })
    .await;
    // Spares, unused: their deletion shows that the controllers have looked.
    pvs.create(&pp, &pv("spare-vol", "1Gi", json!({})))
        .await
        .unwrap();
    claims
        .create(&pp, &pvc("spare", "5Gi", json!({})))
        .await
        .unwrap();
    eventually(30, "spare finalizers", || async {
        let c = claims.get("spare").await.ok()?;
        let v = pvs.get("spare-vol").await.ok()?;
        (c.metadata.finalizers.is_some() && v.metadata.finalizers.is_some()).then_some(())
    })
    .await;
    claims
        .delete("used", &DeleteParams::default())
        .await
        .unwrap();
    pvs.delete("vol", &DeleteParams::default()).await.unwrap();
    claims
        .delete("spare", &DeleteParams::default())
        .await
        .unwrap();
    pvs.delete("spare-vol", &DeleteParams::default())
        .await
        .unwrap();
    eventually(30, "spares deleted", || async {
        (claims.get_opt("spare").await.ok()?.is_none()
            && pvs.get_opt("spare-vol").await.ok()?.is_none())
        .then_some(())
    })
    .await;
    // The used claim and the bound volume stay, marked for deletion.
    let claim = claims.get("used").await.unwrap();
    assert!(claim.metadata.deletion_timestamp.is_some());
    assert!(
        claim
            .metadata
            .finalizers
            .iter()
            .flatten()
            .any(|f| f == "kubernetes.io/pvc-protection")
    );
    let vol = pvs.get("vol").await.unwrap();
    assert!(vol.metadata.deletion_timestamp.is_some());
    assert_eq!(pv_phase(&vol).as_deref(), Some("Bound"));
    // Without the pod the claim goes; then the volume is Released and goes too.
    pods.delete(
        "user",
        &DeleteParams {
            grace_period_seconds: Some(0),
            ..DeleteParams::default()
        },
    )
    .await
    .unwrap();
    eventually(30, "claim deleted", || async {
        claims.get_opt("used").await.ok()?.is_none().then_some(())
    })
    .await;
    eventually(30, "volume deleted", || async {
        pvs.get_opt("vol").await.ok()?.is_none().then_some(())
    })
    .await;
}
