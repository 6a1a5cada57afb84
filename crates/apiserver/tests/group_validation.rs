//! Upstream v1.33's validation of storage.k8s.io, NetworkPolicy, PriorityClass, RuntimeClass,
//! Lease and EndpointSlice objects (`validation::{storage, networking, scheduling, node,
//! coordination, discovery}`): the 422 `Invalid` causes kube-rs gets for invalid objects and
//! updates, what kubectl users see, and the typical objects (with upstream's defaults filled
//! in) that must still be accepted.

mod common;

use common::{TestServer, invalid_causes};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::node::v1::RuntimeClass;
use k8s_openapi::api::scheduling::v1::PriorityClass;
use k8s_openapi::api::storage::v1::{
    CSIDriver, CSINode, CSIStorageCapacity, StorageClass, VolumeAttachment,
};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

fn typed<T: DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).expect("a well-typed object")
}

/// Creates `obj`, expecting a 422, and returns its causes.
async fn refused<K>(api: &Api<K>, obj: Value) -> Vec<String>
where
    K: kube::Resource + Clone + DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let err = api
        .create(&PostParams::default(), &typed::<K>(obj))
        .await
        .expect_err("refused");
    invalid_causes(err)
}

async fn created<K>(api: &Api<K>, obj: Value) -> K
where
    K: kube::Resource + Clone + DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    api.create(&PostParams::default(), &typed::<K>(obj))
        .await
        .expect("created")
}

async fn patch_refused<K>(api: &Api<K>, name: &str, patch: Value) -> Vec<String>
where
    K: kube::Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let err = api
        .patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .expect_err("refused");
    invalid_causes(err)
}

#[tokio::test]
async fn storage_objects_are_validated_as_upstream() {
    let t = TestServer::start().await;
    let c = t.client().await;

    let classes: Api<StorageClass> = Api::all(c.clone());
    let class = created(
        &classes,
        json!({"metadata": {"name": "local-path"}, "provisioner": "rancher.io/local-path",
               "allowedTopologies": [{"matchLabelExpressions": [
                   {"key": "kubernetes.io/hostname", "values": ["node-1"]}]}]}),
    )
    .await;
    // Upstream's defaults.
    assert_eq!(class.reclaim_policy.as_deref(), Some("Delete"));
    assert_eq!(class.volume_binding_mode.as_deref(), Some("Immediate"));
    assert_eq!(
        refused(
            &classes,
            json!({"metadata": {"name": "bad"}, "provisioner": "",
                   "reclaimPolicy": "Recycle", "volumeBindingMode": "Later"}),
        )
        .await,
        [
            "provisioner: Required value",
            "reclaimPolicy: Unsupported value: \"Recycle\": supported values: \"Delete\", \"Retain\"",
            "volumeBindingMode: Unsupported value: \"Later\": supported values: \"Immediate\", \"WaitForFirstConsumer\"",
        ]
    );
    assert_eq!(
        patch_refused(
            &classes,
            "local-path",
            json!({"provisioner": "example.com/other", "volumeBindingMode": "WaitForFirstConsumer"}),
        )
        .await,
        [
            "provisioner: Forbidden: updates to provisioner are forbidden.",
            "volumeBindingMode: Invalid value: \"WaitForFirstConsumer\": field is immutable",
        ]
    );

    let drivers: Api<CSIDriver> = Api::all(c.clone());
    let driver = created(
        &drivers,
        json!({"metadata": {"name": "csi.example.com"}, "spec": {"podInfoOnMount": true}}),
    )
    .await;
    let spec = driver.spec;
    assert_eq!(spec.attach_required, Some(true));
    assert_eq!(
        spec.volume_lifecycle_modes,
        Some(vec!["Persistent".to_string()])
    );
    assert_eq!(
        refused(
            &drivers,
            json!({"metadata": {"name": "bad.example.com"}, "spec": {
                "tokenRequests": [{"audience": "a", "expirationSeconds": 60}, {"audience": "a"}],
                "volumeLifecycleModes": ["Forever"]}}),
        )
        .await,
        [
            "spec.tokenRequests[0].expirationSeconds: Invalid value: 60: may not specify a duration less than 10 minutes",
            "spec.tokenRequests[1].audience: Duplicate value: \"a\"",
            "spec.volumeLifecycleModes: Unsupported value: \"Forever\": supported values: \"Persistent\", \"Ephemeral\"",
        ]
    );
    assert_eq!(
        patch_refused(
            &drivers,
            "csi.example.com",
            json!({"spec": {"attachRequired": false}})
        )
        .await,
        ["spec.attachedRequired: Invalid value: false: field is immutable"]
    );
    // podInfoOnMount may change (upstream v1.33).
    drivers
        .patch(
            "csi.example.com",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"podInfoOnMount": false}})),
        )
        .await
        .expect("podInfoOnMount changes");

    let nodes: Api<CSINode> = Api::all(c.clone());
    assert_eq!(
        refused(
            &nodes,
            json!({"metadata": {"name": "node-1"}, "spec": {"drivers": [
                {"name": "csi.example.com", "nodeID": "node-1"},
                {"name": "csi.example.com", "nodeID": "", "topologyKeys": ["zone", "zone"]}]}}),
        )
        .await,
        [
            "spec.drivers[1].nodeID: Required value",
            "spec.drivers[1].name: Duplicate value: \"csi.example.com\"",
            "spec.drivers[1]: Duplicate value: \"zone\"",
        ]
    );

    let capacities: Api<CSIStorageCapacity> = Api::namespaced(c.clone(), "default");
    assert_eq!(
        refused(
            &capacities,
            json!({"metadata": {"name": "cap"}, "storageClassName": "local-path",
                   "capacity": "-1Gi", "nodeTopology": {"matchLabels": {"kubernetes.io/hostname": "node-1"}}}),
        )
        .await,
        ["capacity: Invalid value: \"-1Gi\": must be greater than or equal to 0"]
    );
    created(
        &capacities,
        json!({"metadata": {"name": "cap"}, "storageClassName": "local-path", "capacity": "10Gi",
               "nodeTopology": {"matchLabels": {"kubernetes.io/hostname": "node-1"}}}),
    )
    .await;

    let attachments: Api<VolumeAttachment> = Api::all(c.clone());
    assert_eq!(
        refused(
            &attachments,
            json!({"metadata": {"name": "bad"}, "spec": {"attacher": "csi.example.com",
                   "nodeName": "node-1", "source": {}}}),
        )
        .await,
        [
            "spec.source: Required value: must specify exactly one of inlineVolumeSpec and persistentVolumeName"
        ]
    );
    created(
        &attachments,
        json!({"metadata": {"name": "va"}, "spec": {"attacher": "csi.example.com",
               "nodeName": "node-1", "source": {"persistentVolumeName": "pv-1"}}}),
    )
    .await;
    assert_eq!(
        patch_refused(&attachments, "va", json!({"spec": {"nodeName": "node-2"}})).await,
        [
            "spec: Invalid value: storage.VolumeAttachmentSpec{Attacher:\"csi.example.com\", \
             Source:storage.VolumeAttachmentSource{PersistentVolumeName:(*string)(\"pv-1\"), \
             InlineVolumeSpec:(*core.PersistentVolumeSpec)(nil)}, NodeName:\"node-2\"}: field is immutable"
        ]
    );
}

#[tokio::test]
async fn network_policies_are_validated_as_upstream() {
    let t = TestServer::start().await;
    let c = t.client().await;
    let policies: Api<NetworkPolicy> = Api::namespaced(c.clone(), "default");
    let allow = created(
        &policies,
        json!({"metadata": {"name": "allow-web"}, "spec": {
            "podSelector": {"matchLabels": {"app": "web"}},
            "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "a"}},
                                   "podSelector": {"matchLabels": {"role": "client"}}},
                                  {"ipBlock": {"cidr": "172.17.0.0/16", "except": ["172.17.1.0/24"]}}],
                         "ports": [{"port": 80}, {"port": 32000, "endPort": 32768}]}],
            "egress": [{"ports": [{"protocol": "UDP", "port": 53}]}]}}),
    )
    .await;
    let spec = allow.spec.expect("spec");
    assert_eq!(
        spec.policy_types,
        Some(vec!["Ingress".to_string(), "Egress".to_string()])
    );
    created(
        &policies,
        json!({"metadata": {"name": "default-deny"}, "spec": {"podSelector": {}}}),
    )
    .await;
    assert_eq!(
        refused(
            &policies,
            json!({"metadata": {"name": "bad"}, "spec": {"podSelector": {},
                "ingress": [{"from": [{}, {"podSelector": {}, "ipBlock": {"cidr": "10.0.0.0/16"}},
                                      {"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.1.0.0/24"]}}],
                             "ports": [{"protocol": "ICMP"}, {"port": 90, "endPort": 80},
                                       {"port": "http", "endPort": 90}]}],
                "policyTypes": ["Ingress", "Sideways"]}}),
        )
        .await,
        [
            "spec.ingress[0].ports[0].protocol: Unsupported value: \"ICMP\": supported values: \"TCP\", \"UDP\", \"SCTP\"",
            "spec.ingress[0].ports[1].endPort: Invalid value: 90: must be greater than or equal to `port`",
            "spec.ingress[0].ports[2].endPort: Invalid value: 90: may not be specified when `port` is non-numeric",
            "spec.ingress[0].from[0]: Required value: must specify a peer",
            "spec.ingress[0].from[1]: Forbidden: may not specify both ipBlock and another peer",
            "spec.ingress[0].from[2].ipBlock.except[0]: Invalid value: \"10.1.0.0/24\": must be a strict subset of `cidr`",
            "spec.policyTypes[1]: Unsupported value: \"Sideways\": supported values: \"Ingress\", \"Egress\"",
        ]
    );
}

#[tokio::test]
async fn priority_classes_runtime_classes_and_leases_are_validated_as_upstream() {
    let t = TestServer::start().await;
    let c = t.client().await;

    // The system classes the server creates are valid: an update of one passes validation.
    let classes: Api<PriorityClass> = Api::all(c.clone());
    classes
        .patch(
            "system-node-critical",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"checked": "yes"}}})),
        )
        .await
        .expect("the bootstrap class stays valid");
    let high = created(
        &classes,
        json!({"metadata": {"name": "high"}, "value": 1_000_000_000}),
    )
    .await;
    assert_eq!(
        high.preemption_policy.as_deref(),
        Some("PreemptLowerPriority")
    );
    assert_eq!(
        refused(
            &classes,
            json!({"metadata": {"name": "higher"}, "value": 1_000_000_001, "preemptionPolicy": "Always"}),
        )
        .await,
        [
            "value: Forbidden: maximum allowed value of a user defined priority is 1000000000",
            "preemptionPolicy: Unsupported value: \"Always\": supported values: \"PreemptLowerPriority\", \"Never\"",
        ]
    );
    assert_eq!(
        refused(
            &classes,
            json!({"metadata": {"name": "system-mine"}, "value": 10}),
        )
        .await,
        [
            "metadata.name: Forbidden: priority class names with 'system-' prefix are reserved for system use only. error: system-mine is not a known system priority class"
        ]
    );
    assert_eq!(
        patch_refused(
            &classes,
            "high",
            json!({"value": 5, "preemptionPolicy": "Never"})
        )
        .await,
        [
            "value: Forbidden: may not be changed in an update.",
            "preemptionPolicy: Invalid value: \"Never\": field is immutable",
        ]
    );

    let runtimes: Api<RuntimeClass> = Api::all(c.clone());
    created(
        &runtimes,
        json!({"metadata": {"name": "gvisor"}, "handler": "runsc",
               "overhead": {"podFixed": {"cpu": "250m", "memory": "64Mi"}},
               "scheduling": {"nodeSelector": {"runtime": "gvisor"},
                              "tolerations": [{"key": "runtime", "operator": "Exists", "effect": "NoSchedule"}]}}),
    )
    .await;
    assert_eq!(
        refused(
            &runtimes,
            json!({"metadata": {"name": "bad"}, "handler": "runsc",
                   "overhead": {"podFixed": {"cpu": "-1"}},
                   "scheduling": {"tolerations": [
                       {"key": "a", "operator": "Equal", "value": "b", "effect": "NoSchedule"},
                       {"key": "a", "operator": "Equal", "value": "b", "effect": "NoSchedule"}]}}),
        )
        .await,
        [
            "overhead.limits[cpu]: Invalid value: \"-1\": must be greater than or equal to 0",
            "scheduling.tolerations[1]: Duplicate value: core.Toleration{Key:\"a\", Operator:\"Equal\", Value:\"b\", Effect:\"NoSchedule\", TolerationSeconds:(*int64)(nil)}",
        ]
    );
    assert_eq!(
        patch_refused(&runtimes, "gvisor", json!({"handler": "kata"})).await,
        ["handler: Invalid value: \"kata\": field is immutable"]
    );

    let leases: Api<Lease> = Api::namespaced(c.clone(), "kube-node-lease");
    created(
        &leases,
        json!({"metadata": {"name": "node-1"}, "spec": {"holderIdentity": "node-1",
               "leaseDurationSeconds": 40, "renewTime": "2026-01-01T00:00:00.000000Z"}}),
    )
    .await;
    assert_eq!(
        refused(
            &leases,
            json!({"metadata": {"name": "bad"}, "spec": {"leaseDurationSeconds": 0,
                   "leaseTransitions": -1, "preferredHolder": "b"}}),
        )
        .await,
        [
            "spec.leaseDurationSeconds: Invalid value: 0: must be greater than 0",
            "spec.leaseTransitions: Invalid value: -1: must be greater than or equal to 0",
            "spec.preferredHolder: Forbidden: may only be specified if `strategy` is defined",
        ]
    );
}

#[tokio::test]
async fn endpoint_slices_are_validated_as_upstream() {
    let t = TestServer::start().await;
    let c = t.client().await;
    let slices: Api<EndpointSlice> = Api::namespaced(c.clone(), "default");
    let slice = created(
        &slices,
        json!({"metadata": {"name": "web-abc12", "labels": {"kubernetes.io/service-name": "web"}},
               "addressType": "IPv4",
               "endpoints": [{"addresses": ["10.42.0.5"], "nodeName": "node-1",
                              "conditions": {"ready": true, "serving": true, "terminating": false},
                              "targetRef": {"kind": "Pod", "name": "web-0", "namespace": "default"}}],
               "ports": [{"name": "http", "port": 80, "appProtocol": "http"}]}),
    )
    .await;
    let port = &slice.ports.expect("ports")[0];
    assert_eq!(port.protocol.as_deref(), Some("TCP"));
    assert_eq!(
        refused(
            &slices,
            json!({"metadata": {"name": "bad"}, "addressType": "IPv4",
                   "endpoints": [{"addresses": []},
                                 {"addresses": ["127.0.0.1", "fd00::1"], "hostname": "a.b"}],
                   "ports": [{"name": "http", "protocol": "ICMP"}, {"name": "http"}]}),
        )
        .await,
        [
            "endpoints[0].addresses: Required value: must contain at least 1 address",
            "endpoints[1].addresses[0]: Invalid value: \"127.0.0.1\": may not be in the loopback range (127.0.0.0/8, ::1/128)",
            "endpoints[1].addresses[1]: Invalid value: \"fd00::1\": must be a valid IPv4 address",
            "endpoints[1].hostname: Invalid value: \"a.b\": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')",
            "ports[0].protocol: Unsupported value: \"ICMP\": supported values: \"SCTP\", \"TCP\", \"UDP\"",
            "ports[1].name: Duplicate value: \"http\"",
        ]
    );
    assert_eq!(
        patch_refused(
            &slices,
            "web-abc12",
            json!({"addressType": "IPv6", "endpoints": []})
        )
        .await,
        ["addressType: Invalid value: \"IPv6\": field is immutable"]
    );
}

fn stderr(out: &std::process::Output) -> String {
    assert!(!out.status.success(), "kubectl succeeded: {out:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn kubectl_shows_upstreams_messages_and_applies_typical_manifests() {
    let t = TestServer::start().await;
    let good = "\
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: local-path}
provisioner: rancher.io/local-path
volumeBindingMode: WaitForFirstConsumer
reclaimPolicy: Delete
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny-ingress, namespace: default}
spec:
  podSelector: {}
  policyTypes: [Ingress]
---
apiVersion: scheduling.k8s.io/v1
kind: PriorityClass
metadata: {name: batch-low}
value: -10
preemptionPolicy: Never
---
apiVersion: node.k8s.io/v1
kind: RuntimeClass
metadata: {name: runc}
handler: runc
---
apiVersion: coordination.k8s.io/v1
kind: Lease
metadata: {name: my-controller, namespace: default}
spec: {holderIdentity: pod-a, leaseDurationSeconds: 15, leaseTransitions: 0}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: external-abc12
  namespace: default
  labels: {kubernetes.io/service-name: external}
addressType: FQDN
endpoints:
- addresses: [db.example.com]
ports:
- {name: pg, port: 5432, protocol: TCP}
";
    let out = t.kubectl_stdin(&["apply", "-f", "-"], good).await;
    assert!(out.status.success(), "{out:?}");
    // Applying the same manifests again changes nothing and passes the update rules.
    let out = t.kubectl_stdin(&["apply", "-f", "-"], good).await;
    assert!(out.status.success(), "{out:?}");
    let columns = t
        .kubectl_ok(&["get", "storageclass", "local-path", "--no-headers"])
        .await;
    assert!(columns.contains("WaitForFirstConsumer"), "{columns}");

    let bad = "\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: default}
spec:
  podSelector: {}
  ingress:
  - from:
    - ipBlock: {cidr: 10.0.0.0/33}
";
    let err = stderr(&t.kubectl_stdin(&["apply", "-f", "-"], bad).await);
    assert!(
        err.contains(
            "The NetworkPolicy \"web\" is invalid: spec.ingress[0].from[0].ipBlock.cidr: Invalid \
             value: \"10.0.0.0/33\": must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)"
        ),
        "{err}"
    );
    let err = stderr(
        &t.kubectl(&[
            "patch",
            "storageclass",
            "local-path",
            "-p",
            r#"{"reclaimPolicy":"Retain"}"#,
        ])
        .await,
    );
    assert!(
        err.contains(
            "The StorageClass \"local-path\" is invalid: reclaimPolicy: Forbidden: updates to \
             reclaimPolicy are forbidden."
        ),
        "{err}"
    );
    let err = stderr(
        &t.kubectl(&["create", "priorityclass", "too-high", "--value=2000000000"])
            .await,
    );
    assert!(
        err.contains(
            "error: failed to create priorityclass: PriorityClass.scheduling.k8s.io \"too-high\" \
             is invalid: value: Forbidden: maximum allowed value of a user defined priority is \
             1000000000"
        ),
        "{err}"
    );
}
