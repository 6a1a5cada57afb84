//! Writes through `/status` of core/v1 objects, validated as upstream v1.33's status
//! strategies do (`ValidatePodStatusUpdate`, `ValidateNodeUpdate`,
//! `ValidateNamespaceStatusUpdate`, `ValidateServiceStatusUpdate`,
//! `ValidatePersistentVolumeClaimStatusUpdate`, `ValidateReplicationControllerStatusUpdate`,
//! `ValidateResourceQuotaStatusUpdate`): PUTs and PATCHes over HTTPS with kube-rs, 422
//! `Invalid` with upstream's causes; the status writes kubelets and controllers make still
//! pass.

mod common;

use common::{TestServer, api_status, invalid_causes, patch_status};
use k8s_openapi::api::core::v1::{
    Namespace, Node, PersistentVolume, PersistentVolumeClaim, Pod, ReplicationController,
    ResourceQuota, Service,
};
use kube::api::{Api, PostParams};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

fn obj<T: DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).expect("object")
}

/// PUT `/status` with `status` over the object as `api` reads it now.
async fn put_status<K>(api: &Api<K>, name: &str, status: Value) -> Result<K, kube::Error>
where
    K: kube::Resource + Clone + DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let mut current = serde_json::to_value(api.get(name).await.expect("get")).expect("json");
    current["status"] = status;
    let object: K = serde_json::from_value(current).expect("object");
    api.replace_status(name, &PostParams::default(), &object)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_status_is_validated_as_upstream() {
    let t = TestServer::start().await;
    let pods: Api<Pod> = Api::namespaced(t.client().await, "default");
    let pod: Pod = obj(json!({
        "metadata": {"name": "job-pod"},
        "spec": {"nodeName": "node-1", "restartPolicy": "Never",
                 "containers": [{"name": "main", "image": "busybox"}]},
    }));
    let created = pods
        .create(&PostParams::default(), &pod)
        .await
        .expect("create");
    // The QoS class is set on create, as upstream's pod strategy does.
    let status = created.status.expect("status");
    assert_eq!(status.qos_class.as_deref(), Some("BestEffort"));

    // What a kubelet reports once the pod runs: accepted; podIP is podIPs[0].
    let running = patch_status(
        &pods,
        "job-pod",
        json!({"phase": "Running", "qosClass": "BestEffort",
               "podIPs": [{"ip": "10.42.0.7"}, {"ip": "fd00:42::7"}],
               "hostIP": "192.168.1.10", "hostIPs": [{"ip": "192.168.1.10"}],
               "startTime": "2026-01-01T00:00:00Z",
               "conditions": [{"type": "Ready", "status": "True"},
                              {"type": "PodScheduled", "status": "True"}],
               "containerStatuses": [{"name": "main", "ready": true, "restartCount": 0,
                   "image": "busybox", "imageID": "", "started": true,
                   "state": {"running": {"startedAt": "2026-01-01T00:00:01Z"}}}]}),
    )
    .await
    .expect("kubelet status");
    let status = running.status.expect("status");
    assert_eq!(status.pod_ip.as_deref(), Some("10.42.0.7"));
    assert_eq!(status.qos_class.as_deref(), Some("BestEffort"));

    // A PUT with what upstream refuses.
    let err = put_status(
        &pods,
        "job-pod",
        json!({"phase": "Running", "qosClass": "Guaranteed",
               "nominatedNodeName": "Node_1",
               "podIPs": [{"ip": "10.42.0.7"}, {"ip": "10.42.0.8"}],
               "hostIP": "192.168.1.10",
               "hostIPs": [{"ip": "192.168.1.10"}, {"ip": "192.168.1.300"}],
               "conditions": [{"type": "not a type", "status": "True"}]}),
    )
    .await
    .expect_err("invalid status");
    let causes = invalid_causes(err);
    assert_eq!(causes.len(), 7, "{causes:?}");
    assert!(
        causes[0].starts_with(
            "metadata.conditions[0].Type: Invalid value: \"not a type\": name part must consist"
        ),
        "{causes:?}"
    );
    assert!(
        causes[1].starts_with(
            "status.nominatedNodeName: Invalid value: \"Node_1\": a lowercase RFC 1123 subdomain"
        ),
        "{causes:?}"
    );
    assert_eq!(
        causes[2..],
        [
            "status.qosClass: Invalid value: \"Guaranteed\": field is immutable",
            "status.podIPs: Invalid value: []core.PodIP{core.PodIP{IP:\"10.42.0.7\"}, \
             core.PodIP{IP:\"10.42.0.8\"}}: may specify no more than one IP for each IP family",
            "status.hostIPs[1]: Invalid value: \"192.168.1.300\": must be a valid IP address, \
             (e.g. 10.9.8.7 or 2001:db8::ffff)",
            "status.hostIPs: Internal error: failed to check for dual stack with error:invalid \
             IP[1]: 192.168.1.300",
            "status.hostIPs: Invalid value: []core.HostIP{core.HostIP{IP:\"192.168.1.10\"}, \
             core.HostIP{IP:\"192.168.1.300\"}}: may specify no more than one IP for each IP \
             family",
        ]
    );

    // The container ends; with restartPolicy Never it may not run again.
    patch_status(
        &pods,
        "job-pod",
        json!({"phase": "Succeeded", "containerStatuses": [{"name": "main", "ready": false,
            "restartCount": 0, "image": "busybox", "imageID": "",
            "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}]}),
    )
    .await
    .expect("terminated");
    let err = patch_status(
        &pods,
        "job-pod",
        json!({"containerStatuses": [{"name": "main", "ready": true, "restartCount": 1,
            "image": "busybox", "imageID": "", "state": {"running": {}}}]}),
    )
    .await
    .expect_err("restarted");
    let status = api_status(err);
    assert_eq!((status.code, status.reason.as_str()), (422, "Invalid"));
    let causes = status.details.expect("details").causes;
    assert_eq!(causes.len(), 1, "{causes:?}");
    assert_eq!(causes[0].field, "status.containerStatuses[0].state");
    assert_eq!(causes[0].reason, "FieldValueForbidden");
    assert_eq!(
        causes[0].message,
        "Forbidden: may not be transitioned to non-terminated state"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_status_is_the_node_update() {
    let t = TestServer::start().await;
    let nodes: Api<Node> = Api::all(t.client().await);
    nodes
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": "node-1"}})),
        )
        .await
        .expect("register");
    // A kubelet's heartbeat; allocatable defaults to the capacity.
    let node = patch_status(
        &nodes,
        "node-1",
        json!({"capacity": {"cpu": "4", "memory": "8Gi", "pods": "110"},
               "addresses": [{"type": "InternalIP", "address": "192.168.1.10"},
                             {"type": "Hostname", "address": "node-1"}],
               "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                   "lastHeartbeatTime": "2026-01-01T00:00:00Z",
                   "lastTransitionTime": "2026-01-01T00:00:00Z"}],
               "nodeInfo": {"machineID": "", "systemUUID": "", "bootID": "",
                   "kernelVersion": "6.1", "osImage": "Debian", "containerRuntimeVersion":
                   "containerd://2.0", "kubeletVersion": "v1.33.0", "kubeProxyVersion": "",
                   "operatingSystem": "linux", "architecture": "amd64"}}),
    )
    .await
    .expect("heartbeat");
    let status = node.status.expect("status");
    assert_eq!(status.allocatable, status.capacity);

    let err = put_status(
        &nodes,
        "node-1",
        json!({"capacity": {"cpu": "-4"}, "allocatable": {"pods": "1.5"},
               "addresses": [{"type": "Hostname", "address": "node-1"},
                             {"type": "Hostname", "address": "node-1"}]}),
    )
    .await
    .expect_err("invalid node status");
    let causes = invalid_causes(err);
    assert_eq!(causes.len(), 3, "{causes:?}");
    assert_eq!(
        causes[0],
        "status.capacity.cpu: Invalid value: \"-4\": must be greater than or equal to 0"
    );
    assert!(
        causes[1].starts_with("status.allocatable.pods: Invalid value: resource.Quantity{")
            && causes[1].ends_with(": must be an integer"),
        "{causes:?}"
    );
    assert_eq!(
        causes[2],
        "status.addresses[1]: Duplicate value: core.NodeAddress{Type:\"Hostname\", \
         Address:\"node-1\"}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_and_service_status() {
    let t = TestServer::start().await;
    let client = t.client().await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": "team"}})),
        )
        .await
        .expect("namespace");
    // Conditions without a phase: the phase is Active (the v1 default).
    let ns = put_status(
        &namespaces,
        "team",
        json!({"conditions": [{"type": "NamespaceDeletionDiscoveryFailure",
                               "status": "False", "reason": "ResourcesDiscovered"}]}),
    )
    .await
    .expect("conditions");
    assert_eq!(ns.status.expect("status").phase.as_deref(), Some("Active"));
    let err = patch_status(&namespaces, "team", json!({"phase": "Terminating"}))
        .await
        .expect_err("terminating while not deleted");
    assert_eq!(
        invalid_causes(err),
        [
            "status.Phase: Invalid value: \"Terminating\": may only be 'Active' if \
          `deletionTimestamp` is empty"
        ]
    );

    // As kubectl users see it.
    let out = t
        .kubectl(&[
            "patch",
            "namespace",
            "team",
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"phase":"Terminating"}}"#,
        ])
        .await;
    assert!(!out.status.success(), "kubectl succeeded");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "The Namespace \"team\" is invalid: status.Phase: Invalid value: \"Terminating\": \
             may only be 'Active' if `deletionTimestamp` is empty"
        ),
        "{stderr}"
    );

    let svcs: Api<Service> = Api::namespaced(client, "default");
    for (name, ty) in [("web", "ClusterIP"), ("lb", "LoadBalancer")] {
        svcs.create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": name},
                        "spec": {"type": ty, "ports": [{"port": 80}]}})),
        )
        .await
        .expect("service");
    }
    let err = patch_status(
        &svcs,
        "web",
        json!({"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}}),
    )
    .await
    .expect_err("not a load balancer");
    assert_eq!(
        invalid_causes(err),
        [
            "status.loadBalancer.ingress: Forbidden: may only be used when `spec.type` is \
          'LoadBalancer'"
        ]
    );
    // What a load balancer controller writes: the mode defaults to VIP.
    let lb = patch_status(
        &svcs,
        "lb",
        json!({"loadBalancer": {"ingress": [{"ip": "192.0.2.1"},
                                            {"hostname": "lb.example.com"}]}}),
    )
    .await
    .expect("load balancer status");
    let ingress = lb
        .status
        .and_then(|s| s.load_balancer)
        .and_then(|l| l.ingress)
        .expect("ingress");
    assert_eq!(ingress[0].ip_mode.as_deref(), Some("VIP"));
    let err = put_status(
        &svcs,
        "lb",
        json!({"loadBalancer": {"ingress": [{"ip": "192.0.2.1", "ipMode": "Direct"},
                                            {"hostname": "192.0.2.2", "ipMode": "Proxy"}]}}),
    )
    .await
    .expect_err("bad ingress");
    assert_eq!(
        invalid_causes(err),
        [
            "status.loadBalancer.ingress[0].ipMode: Unsupported value: \"Direct\": supported \
             values: \"Proxy\", \"VIP\"",
            "status.loadBalancer.ingress[1].ipMode: Forbidden: may not be specified when `ip` \
             is not set",
            "status.loadBalancer.ingress[1].hostname: Invalid value: \"192.0.2.2\": must be a \
             DNS name, not an IP address",
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volume_controller_and_quota_status() {
    let t = TestServer::start().await;
    let client = t.client().await;

    let volumes: Api<PersistentVolume> = Api::all(client.clone());
    volumes
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": "disk-1"},
                "spec": {"capacity": {"storage": "2Gi"}, "accessModes": ["ReadWriteOnce"],
                         "hostPath": {"path": "/srv/disk-1"}}})),
        )
        .await
        .expect("volume");
    let pv = patch_status(&volumes, "disk-1", json!({"phase": "Available"}))
        .await
        .expect("volume status");
    let status = pv.status.expect("status");
    assert_eq!(status.phase.as_deref(), Some("Available"));
    assert!(status.last_phase_transition_time.is_some());

    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), "default");
    claims
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": "data"},
                "spec": {"accessModes": ["ReadWriteOnce"],
                         "resources": {"requests": {"storage": "1Gi"}}}})),
        )
        .await
        .expect("claim");
    patch_status(
        &claims,
        "data",
        json!({"phase": "Bound", "accessModes": ["ReadWriteOnce"],
               "capacity": {"storage": "2Gi"}, "allocatedResources": {"storage": "2Gi"},
               "allocatedResourceStatuses": {"storage": "NodeResizePending"}}),
    )
    .await
    .expect("bound claim");
    let err = put_status(
        &claims,
        "data",
        json!({"phase": "Bound", "capacity": {"storage": "-2Gi"},
               "allocatedResources": {"memory": "1Gi"},
               "allocatedResourceStatuses": {"storage": "Shrinking"}}),
    )
    .await
    .expect_err("bad claim status");
    assert_eq!(
        invalid_causes(err),
        [
            "status.capacity[storage]: Invalid value: -2147483648: must be a valid resource \
             quantity",
            "status.allocatedResourceStatus: Unsupported value: storage: supported values: \
             \"ControllerResizeInProgress\", \"ControllerResizeInfeasible\", \
             \"NodeResizeInProgress\", \"NodeResizeInfeasible\", \"NodeResizePending\"",
            "status.allocatedResources: Unsupported value: \"memory\": supported values: \
             \"storage\"",
        ]
    );

    let rcs: Api<ReplicationController> = Api::namespaced(client.clone(), "default");
    rcs.create(
        &PostParams::default(),
        &obj(json!({"metadata": {"name": "rc"},
            "spec": {"replicas": 2, "selector": {"app": "rc"},
                     "template": {"metadata": {"labels": {"app": "rc"}},
                                  "spec": {"containers": [{"name": "c", "image": "nginx"}]}}}})),
    )
    .await
    .expect("rc");
    patch_status(
        &rcs,
        "rc",
        json!({"replicas": 2, "fullyLabeledReplicas": 2, "readyReplicas": 2,
               "availableReplicas": 2, "observedGeneration": 1}),
    )
    .await
    .expect("rc status");
    let err = patch_status(
        &rcs,
        "rc",
        json!({"replicas": -1, "readyReplicas": 1, "availableReplicas": 2}),
    )
    .await
    .expect_err("bad rc status");
    assert_eq!(
        invalid_causes(err),
        [
            "status.replicas: Invalid value: -1: must be greater than or equal to 0",
            "status.fullyLabeledReplicas: Invalid value: 2: cannot be greater than \
             status.replicas",
            "status.readyReplicas: Invalid value: 1: cannot be greater than status.replicas",
            "status.availableReplicas: Invalid value: 2: cannot be greater than status.replicas",
            "status.availableReplicas: Invalid value: 2: cannot be greater than readyReplicas",
        ]
    );

    let quotas: Api<ResourceQuota> = Api::namespaced(client, "default");
    quotas
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": "q"}, "spec": {"hard": {"pods": "10"}}})),
        )
        .await
        .expect("quota");
    patch_status(
        &quotas,
        "q",
        json!({"hard": {"pods": "10"}, "used": {"pods": "3"}}),
    )
    .await
    .expect("quota status");
    let err = put_status(
        &quotas,
        "q",
        json!({"hard": {"pods": "10", "gpus": "1"}, "used": {"pods": "-3"}}),
    )
    .await
    .expect_err("bad quota status");
    assert_eq!(
        invalid_causes(err),
        [
            "status.hard[gpus]: Invalid value: gpus: must be a standard resource type or fully \
             qualified",
            "status.hard[gpus]: Invalid value: gpus: must be a standard resource for quota",
            "status.used[pods]: Invalid value: \"-3\": must be greater than or equal to 0",
        ]
    );
}
