//! Upstream v1.33's validation of the core/v1 objects other than pods, ConfigMaps and
//! Secrets — Events (core and events.k8s.io/v1), Endpoints, Nodes, LimitRanges,
//! ResourceQuotas, PersistentVolumes, PersistentVolumeClaim updates and
//! ReplicationControllers — through kube-rs (422 `Invalid` with upstream's causes) and kubectl
//! (its stderr, as users see it); typical objects of each kind are still accepted.

mod common;

use common::{TestServer, invalid_causes};
use k8s_openapi::api::core::v1::{
    Endpoints, Event as CoreEvent, LimitRange, Node, PersistentVolume, PersistentVolumeClaim,
    ReplicationController, ResourceQuota,
};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

fn obj<T: DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).expect("object")
}

fn stderr(out: &std::process::Output) -> String {
    assert!(!out.status.success(), "kubectl succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_validated_as_upstream() {
    let t = TestServer::start().await;
    let client = t.client().await;
    let core: Api<CoreEvent> = Api::namespaced(client.clone(), "default");
    let v1: Api<Event> = Api::namespaced(client.clone(), "default");

    // Core v1: the involved object's namespace must be the event's.
    let stray: CoreEvent = obj(json!({
        "metadata": {"name": "stray", "namespace": "default"},
        "involvedObject": {"kind": "Pod", "name": "p", "namespace": "other"},
        "reason": "Started", "message": "m", "type": "Normal",
    }));
    let err = core
        .create(&PostParams::default(), &stray)
        .await
        .expect_err("namespace mismatch");
    assert_eq!(
        invalid_causes(err),
        ["involvedObject.namespace: Invalid value: \"other\": does not match event.namespace"]
    );
    // A new-style core event (with an eventTime) needs its reporting fields.
    let reason = "R".repeat(129);
    let out = t
        .kubectl_stdin(
            &["create", "-f", "-"],
            &format!(
                "apiVersion: v1\nkind: Event\nmetadata: {{name: long, namespace: default}}\n\
                 involvedObject: {{kind: Pod, name: p, namespace: default}}\n\
                 eventTime: \"2026-01-01T00:00:00.000000Z\"\nreportingComponent: example.com/ctl\n\
                 reportingInstance: i\naction: Act\nreason: {reason}\ntype: Normal\n"
            ),
        )
        .await;
    let err = stderr(&out);
    assert!(
        err.contains("reason: Invalid value: \"\": can have at most 128 characters"),
        "{err}"
    );

    // events.k8s.io/v1 creates: strict, with the core field names upstream reports.
    let bad: Event = obj(json!({
        "metadata": {"name": "bad", "namespace": "default"},
        "regarding": {"kind": "Pod", "name": "p", "namespace": "default"},
        "eventTime": "2026-01-01T00:00:00.000000Z",
        "reportingController": "example.com/ctl", "reportingInstance": "i",
        "action": "Act", "reason": "Why", "type": "Info",
        "deprecatedCount": 2, "deprecatedSource": {"component": "kubelet"},
    }));
    let err = v1
        .create(&PostParams::default(), &bad)
        .await
        .expect_err("strict events.k8s.io create");
    assert_eq!(
        invalid_causes(err),
        [
            "type: Invalid value: \"\": has invalid value: Info",
            "count: Invalid value: \"\": needs to be unset",
            "source: Invalid value: \"\": needs to be unset",
        ]
    );
    let good: Event = obj(json!({
        "metadata": {"name": "good", "namespace": "default"},
        "regarding": {"kind": "Pod", "name": "p", "namespace": "default"},
        "eventTime": "2026-01-01T00:00:00.000000Z",
        "reportingController": "example.com/ctl", "reportingInstance": "i",
        "action": "Act", "reason": "Why", "note": "first", "type": "Normal",
    }));
    v1.create(&PostParams::default(), &good)
        .await
        .expect("a typical events.k8s.io event");
    // Updates: the series may change (and must be valid), the rest may not.
    v1.patch(
        "good",
        &PatchParams::default(),
        &Patch::Merge(json!({"series": {"count": 2,
            "lastObservedTime": "2026-01-01T00:01:00.000000Z"}})),
    )
    .await
    .expect("the series is updated");
    let err = v1
        .patch(
            "good",
            &PatchParams::default(),
            &Patch::Merge(json!({"note": "second", "series": {"count": 1}})),
        )
        .await
        .expect_err("note and a short series");
    assert_eq!(
        invalid_causes(err),
        [
            "series.count: Invalid value: \"\": should be at least 2",
            "message: Invalid value: \"second\": field is immutable",
        ]
    );
    // Core v1 updates of the same event are not checked for immutability (as upstream).
    core.patch(
        "good",
        &PatchParams::default(),
        &Patch::Merge(json!({"message": "changed through v1"})),
    )
    .await
    .expect("core v1 updates stay lenient");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_and_nodes_are_validated_as_upstream() {
    let t = TestServer::start().await;
    let client = t.client().await;
    let eps: Api<Endpoints> = Api::namespaced(client.clone(), "default");
    let bad: Endpoints = obj(json!({
        "metadata": {"name": "bad"},
        "subsets": [{"addresses": [{"ip": "127.0.0.1"}, {"ip": "10.0.0.1", "hostname": "Web_1"}],
                     "ports": [{"port": 80}, {"name": "dns", "port": 53, "protocol": "UDP"}]}],
    }));
    let got = invalid_causes(
        eps.create(&PostParams::default(), &bad)
            .await
            .expect_err("bad endpoints"),
    );
    assert_eq!(
        got[0],
        "subsets[0].addresses[0].ip: Invalid value: \"127.0.0.1\": may not be in the loopback range (127.0.0.0/8, ::1/128)"
    );
    assert!(
        got[1].starts_with(
            "subsets[0].addresses[1].hostname: Invalid value: \"Web_1\": a lowercase RFC 1123 label"
        ),
        "{got:?}"
    );
    assert_eq!(got[2..], ["subsets[0].ports[0].name: Required value"]);
    let out = t
        .kubectl_stdin(
            &["apply", "-f", "-"],
            "apiVersion: v1\nkind: Endpoints\nmetadata: {name: web}\nsubsets:\n\
             - addresses: [{ip: 10.42.0.7, nodeName: node-1, targetRef: {kind: Pod, name: web-1, namespace: default}}]\n\
             \x20 notReadyAddresses: [{ip: \"fd00::7\"}]\n\
             \x20 ports: [{name: http, port: 80, protocol: TCP}, {name: metrics, port: 9090}]\n",
        )
        .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = t
        .kubectl_stdin(
            &["apply", "-f", "-"],
            "apiVersion: v1\nkind: Endpoints\nmetadata: {name: odd}\nsubsets:\n\
             - addresses: [{ip: 169.254.169.254}]\n",
        )
        .await;
    let err = stderr(&out);
    assert!(
        err.contains(
            "subsets[0].addresses[0].ip: Invalid value: \"169.254.169.254\": may not be in the link-local range (169.254.0.0/16, fe80::/10)"
        ),
        "{err}"
    );

    let nodes: Api<Node> = Api::all(client.clone());
    let bad: Node = obj(json!({
        "metadata": {"name": "bad"},
        "spec": {"podCIDRs": ["10.42.0.0/24", "10.42.1.0/24"],
                 "taints": [{"key": "dedicated", "value": "db", "effect": "NoSchedule"},
                            {"key": "dedicated", "value": "web", "effect": "NoSchedule"},
                            {"key": "x", "effect": "Sometimes"}]},
    }));
    assert_eq!(
        invalid_causes(
            nodes
                .create(&PostParams::default(), &bad)
                .await
                .expect_err("bad node")
        ),
        [
            "metadata.taints[1]: Duplicate value: core.Taint{Key:\"dedicated\", Value:\"web\", Effect:\"NoSchedule\", TimeAdded:(*v1.Time)(nil)}: taints must be unique by key and effect pair",
            "metadata.taints[2].effect: Unsupported value: \"Sometimes\": supported values: \"NoSchedule\", \"PreferNoSchedule\", \"NoExecute\"",
            "spec.podCIDRs: Invalid value: []string{\"10.42.0.0/24\", \"10.42.1.0/24\"}: may specify no more than one CIDR for each IP family",
        ]
    );
    let good: Node = obj(json!({
        "metadata": {"name": "node-1", "labels": {"kubernetes.io/hostname": "node-1"}},
        "spec": {"taints": [{"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"},
                            {"key": "node.kubernetes.io/not-ready", "effect": "NoExecute"}]},
        "status": {"capacity": {"cpu": "4", "memory": "8Gi", "pods": "110"},
                   "allocatable": {"cpu": "3900m", "memory": "7Gi", "pods": "110"}},
    }));
    nodes
        .create(&PostParams::default(), &good)
        .await
        .expect("a typical node");
    // The pod CIDRs and the provider ID are set once.
    nodes
        .patch(
            "node-1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"podCIDR": "10.42.0.0/24",
                "podCIDRs": ["10.42.0.0/24", "fd00:42::/64"], "providerID": "k3s://node-1"}})),
        )
        .await
        .expect("pod CIDRs and provider ID assigned");
    let err = nodes
        .patch(
            "node-1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"providerID": "aws:///i-1",
                "podCIDR": "10.42.9.0/24", "podCIDRs": ["10.42.9.0/24"]}})),
        )
        .await
        .expect_err("changed");
    assert_eq!(
        invalid_causes(err),
        [
            "spec.podCIDRs: Forbidden: node updates may not change podCIDR except from \"\" to valid",
            "spec.providerID: Forbidden: node updates may not change providerID except from \"\" to valid",
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_ranges_and_quotas_are_validated_as_upstream() {
    let t = TestServer::start().await;
    let client = t.client().await;
    let out = t
        .kubectl_stdin(
            &["apply", "-f", "-"],
            "apiVersion: v1\nkind: LimitRange\nmetadata: {name: inverted}\nspec:\n  limits:\n\
             \x20 - type: Container\n    min: {memory: 1Gi}\n    max: {memory: 512Mi}\n",
        )
        .await;
    let err = stderr(&out);
    assert!(
        err.contains(
            "spec.limits[0].min[memory]: Invalid value: resource.Quantity{i:resource.int64Amount{value:1073741824, scale:0}, d:resource.infDecAmount{Dec:(*inf.Dec)(nil)}, s:\"1Gi\", Format:\"BinarySI\"}: min value 1Gi is greater than max value 512Mi"
        ),
        "{err}"
    );
    let limits: Api<LimitRange> = Api::namespaced(client.clone(), "default");
    let bad: LimitRange = obj(json!({
        "metadata": {"name": "bad"},
        "spec": {"limits": [{"type": "Pod", "default": {"cpu": "1"}},
                            {"type": "Volume", "max": {"storage": "1Gi"}},
                            {"type": "PersistentVolumeClaim", "max": {"cpu": "1"}}]},
    }));
    assert_eq!(
        invalid_causes(
            limits
                .create(&PostParams::default(), &bad)
                .await
                .expect_err("bad limit range")
        ),
        [
            "spec.limits[0].default: Forbidden: may not be specified when `type` is 'Pod'",
            "spec.limits[1].type: Invalid value: \"Volume\": must be a standard limit type or fully qualified",
            "spec.limits[2].limits: Required value: either minimum or maximum storage value is required, but neither was provided",
        ]
    );
    let out = t
        .kubectl_stdin(
            &["apply", "-f", "-"],
            "apiVersion: v1\nkind: LimitRange\nmetadata: {name: typical}\nspec:\n  limits:\n\
             \x20 - type: Container\n    max: {cpu: \"2\", memory: 1Gi}\n    min: {cpu: 100m, memory: 64Mi}\n\
             \x20   default: {cpu: 500m, memory: 512Mi}\n    defaultRequest: {cpu: 200m, memory: 128Mi}\n\
             \x20   maxLimitRequestRatio: {cpu: \"10\"}\n\
             \x20 - type: Pod\n    max: {cpu: \"4\"}\n\
             \x20 - type: PersistentVolumeClaim\n    min: {storage: 1Gi}\n    max: {storage: 10Gi}\n",
        )
        .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let quotas: Api<ResourceQuota> = Api::namespaced(client.clone(), "default");
    let bad: ResourceQuota = obj(json!({
        "metadata": {"name": "bad"},
        "spec": {"hard": {"pods": "-1", "widgets": "1", "cpu": "2"},
                 "scopes": ["BestEffort"]},
    }));
    assert_eq!(
        invalid_causes(
            quotas
                .create(&PostParams::default(), &bad)
                .await
                .expect_err("bad quota")
        ),
        [
            "spec.hard[pods]: Invalid value: \"-1\": must be greater than or equal to 0",
            "spec.hard[widgets]: Invalid value: widgets: must be a standard resource type or fully qualified",
            "spec.hard[widgets]: Invalid value: widgets: must be a standard resource for quota",
            "spec.scopes: Invalid value: []core.ResourceQuotaScope{\"BestEffort\"}: unsupported scope applied to resource",
        ]
    );
    let good: ResourceQuota = obj(json!({
        "metadata": {"name": "compute"},
        "spec": {"hard": {"pods": "10", "requests.cpu": "4", "limits.memory": "8Gi",
                          "count/deployments.apps": "5", "requests.nvidia.com/gpu": "2"},
                 "scopeSelector": {"matchExpressions": [
                     {"scopeName": "PriorityClass", "operator": "In", "values": ["high"]}]}},
    }));
    quotas
        .create(&PostParams::default(), &good)
        .await
        .expect("a typical quota");
    let err = quotas
        .patch(
            "compute",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"scopes": ["NotTerminating"]}})),
        )
        .await
        .expect_err("scopes are immutable");
    assert_eq!(
        invalid_causes(err),
        [
            "spec.scopes: Invalid value: []core.ResourceQuotaScope{\"NotTerminating\"}: field is immutable"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volumes_claims_and_replication_controllers_are_validated_as_upstream() {
    let t = TestServer::start().await;
    let client = t.client().await;
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    let bad: PersistentVolume = obj(json!({
        "metadata": {"name": "bad"},
        "spec": {"accessModes": ["ReadWriteOncePod", "ReadWriteOnce"],
                 "capacity": {"storage": "1Gi", "cpu": "1"},
                 "local": {"path": "/mnt/disk"}},
    }));
    assert_eq!(
        invalid_causes(
            pvs.create(&PostParams::default(), &bad)
                .await
                .expect_err("bad volume")
        ),
        [
            "spec.accessModes: Forbidden: may not use ReadWriteOncePod with other access modes",
            "spec.capacity: Unsupported value: core.ResourceList{\"cpu\":resource.Quantity{i:resource.int64Amount{value:1, scale:0}, d:resource.infDecAmount{Dec:(*inf.Dec)(nil)}, s:\"1\", Format:\"DecimalSI\"}, \"storage\":resource.Quantity{i:resource.int64Amount{value:1073741824, scale:0}, d:resource.infDecAmount{Dec:(*inf.Dec)(nil)}, s:\"1Gi\", Format:\"BinarySI\"}}: supported values: \"storage\"",
            "spec.nodeAffinity: Required value: Local volume requires node affinity",
        ]
    );
    let out = t
        .kubectl_stdin(
            &["apply", "-f", "-"],
            "apiVersion: v1\nkind: PersistentVolume\nmetadata: {name: two-sources}\nspec:\n\
             \x20 capacity: {storage: 1Gi}\n  accessModes: [ReadWriteOnce]\n\
             \x20 hostPath: {path: /data}\n  nfs: {server: nfs.example.com, path: /export}\n",
        )
        .await;
    let err = stderr(&out);
    assert!(
        err.contains("spec.nfs: Forbidden: may not specify more than 1 volume type"),
        "{err}"
    );
    let good: PersistentVolume = obj(json!({
        "metadata": {"name": "disk-1"},
        "spec": {"accessModes": ["ReadWriteOnce"], "capacity": {"storage": "5Gi"},
                 "storageClassName": "local-storage", "persistentVolumeReclaimPolicy": "Retain",
                 "local": {"path": "/mnt/disks/ssd1"},
                 "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                     {"key": "kubernetes.io/hostname", "operator": "In", "values": ["node-1"]}]}]}}},
    }));
    pvs.create(&PostParams::default(), &good)
        .await
        .expect("a typical local volume");
    let err = pvs
        .patch(
            "disk-1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"local": {"path": "/mnt/disks/ssd2"}}})),
        )
        .await
        .expect_err("the source is immutable");
    let got = invalid_causes(err);
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(
        got[0].starts_with(
            "spec.persistentvolumesource: Forbidden: spec.persistentvolumesource is immutable after creation\n"
        ),
        "{got:?}"
    );
    pvs.patch(
        "disk-1",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"persistentVolumeReclaimPolicy": "Delete"}})),
    )
    .await
    .expect("the reclaim policy may change");

    // Claims: the spec is fixed but for the storage request of a bound claim.
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), "default");
    let claim: PersistentVolumeClaim = obj(json!({
        "metadata": {"name": "data"},
        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "local-storage",
                 "resources": {"requests": {"storage": "2Gi"}}},
    }));
    claims
        .create(&PostParams::default(), &claim)
        .await
        .expect("a typical claim");
    let err = claims
        .patch(
            "data",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"resources": {"requests": {"storage": "4Gi"}}}})),
        )
        .await
        .expect_err("an unbound claim does not grow");
    let got = invalid_causes(err);
    assert!(
        got[0].starts_with(
            "spec: Forbidden: spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims\n"
        ),
        "{got:?}"
    );
    claims
        .patch(
            "data",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"volumeName": "disk-1"}})),
        )
        .await
        .expect("the volume name is set once");
    claims
        .patch_status(
            "data",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Bound", "capacity": {"storage": "2Gi"}}})),
        )
        .await
        .expect("bound");
    claims
        .patch(
            "data",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"resources": {"requests": {"storage": "4Gi"}}}})),
        )
        .await
        .expect("a bound claim grows");
    let err = claims
        .patch(
            "data",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"resources": {"requests": {"storage": "1Gi"}}}})),
        )
        .await
        .expect_err("below the capacity");
    assert_eq!(
        invalid_causes(err),
        ["spec.resources.requests.storage: Forbidden: field can not be less than status.capacity"]
    );

    // Replication controllers: the selector must match the template.
    let rcs: Api<ReplicationController> = Api::namespaced(client.clone(), "default");
    let template = json!({"metadata": {"labels": {"app": "web"}},
        "spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]}});
    let bad: ReplicationController = obj(json!({
        "metadata": {"name": "bad"},
        "spec": {"replicas": -1, "selector": {"app": "api"}, "template": template},
    }));
    assert_eq!(
        invalid_causes(
            rcs.create(&PostParams::default(), &bad)
                .await
                .expect_err("bad controller")
        ),
        [
            "spec.replicas: Invalid value: -1: must be greater than or equal to 0",
            "spec.template.metadata.labels: Invalid value: map[string]string{\"app\":\"web\"}: `selector` does not match template `labels`",
        ]
    );
    let out = t
        .kubectl_stdin(
            &["apply", "-f", "-"],
            "apiVersion: v1\nkind: ReplicationController\nmetadata: {name: web}\nspec:\n\
             \x20 replicas: 2\n  template:\n    metadata: {labels: {app: web}}\n    spec:\n\
             \x20     containers: [{name: web, image: \"nginx:1.27\"}]\n",
        )
        .await;
    assert!(
        out.status.success(),
        "a controller without a selector takes its template's labels: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
