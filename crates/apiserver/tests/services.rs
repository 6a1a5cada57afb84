//! Services through kube-rs: upstream v1.33's `ValidateService`/`ValidateServiceUpdate`
//! (422 with upstream's causes, the good inputs accepted) and health-check node ports.

mod common;

use common::TestServer;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};

fn service(value: serde_json::Value) -> Service {
    serde_json::from_value(value).expect("service")
}

fn api_error(err: kube::Error) -> kube::core::Status {
    match err {
        kube::Error::Api(status) => *status,
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// `field: message` of each cause of a 422, after checking it is one.
fn causes(err: kube::Error) -> Vec<String> {
    let status = api_error(err);
    assert_eq!(
        (status.code, status.reason.as_str()),
        (422, "Invalid"),
        "{}",
        status.message
    );
    status
        .details
        .expect("details")
        .causes
        .into_iter()
        .map(|c| format!("{}: {}", c.field, c.message))
        .collect()
}

async fn refused(svcs: &Api<Service>, value: serde_json::Value) -> Vec<String> {
    causes(
        svcs.create(&PostParams::default(), &service(value))
            .await
            .expect_err("refused"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_creates_are_validated_as_upstream() {
    let t = TestServer::start().await;
    let svcs: Api<Service> = Api::namespaced(t.client().await, "default");

    // An ExternalName service with a cluster IP: the whole upstream message.
    let status = api_error(
        svcs.create(
            &PostParams::default(),
            &service(serde_json::json!({
                "metadata": {"name": "ext"},
                "spec": {"type": "ExternalName", "externalName": "example.com",
                         "clusterIP": "10.43.0.50"},
            })),
        )
        .await
        .expect_err("a cluster IP on ExternalName"),
    );
    assert_eq!(status.code, 422);
    assert_eq!(
        status.message,
        "Service \"ext\" is invalid: spec.clusterIPs: Forbidden: may not be set for ExternalName services"
    );
    // Dry runs are validated too.
    let dry = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let err = svcs
        .create(
            &dry,
            &service(serde_json::json!({
                "metadata": {"name": "ext"},
                "spec": {"type": "ExternalName", "externalName": "example.com",
                         "clusterIP": "10.43.0.50"},
            })),
        )
        .await
        .expect_err("dry run refused");
    assert_eq!(
        causes(err),
        ["spec.clusterIPs: Forbidden: may not be set for ExternalName services"]
    );
    assert_eq!(
        refused(
            &svcs,
            serde_json::json!({"metadata": {"name": "ext"}, "spec": {"type": "ExternalName"}}),
        )
        .await,
        ["spec.externalName: Required value"]
    );
    let got = refused(
        &svcs,
        serde_json::json!({"metadata": {"name": "ext"},
            "spec": {"type": "ExternalName", "externalName": "not_a_dns_name"}}),
    )
    .await;
    assert_eq!(got.len(), 1);
    assert!(
        got[0].starts_with(
            "spec.externalName: Invalid value: \"not_a_dns_name\": a lowercase RFC 1123 subdomain"
        ),
        "{got:?}"
    );

    // Ports: names required and unique with more than one, protocols, numbers.
    let got = refused(
        &svcs,
        serde_json::json!({"metadata": {"name": "ports"}, "spec": {"ports": [
            {"port": 80},
            {"name": "b", "port": 81, "protocol": "HTTP"},
            {"name": "b", "port": 0},
        ]}}),
    )
    .await;
    for want in [
        "spec.ports[0].name: Required value",
        "spec.ports[1].protocol: Unsupported value: \"HTTP\": supported values: \"SCTP\", \"TCP\", \"UDP\"",
        "spec.ports[2].name: Duplicate value: \"b\"",
        "spec.ports[2].port: Invalid value: 0: must be between 1 and 65535, inclusive",
        "spec.ports[2].targetPort: Invalid value: 0: must be between 1 and 65535, inclusive",
    ] {
        assert!(
            got.iter().any(|g| g == want),
            "missing {want:?} in {got:#?}"
        );
    }
    assert_eq!(
        refused(
            &svcs,
            serde_json::json!({"metadata": {"name": "none"}, "spec": {}})
        )
        .await,
        ["spec.ports: Required value"]
    );
    // Fields of other types.
    let got = refused(
        &svcs,
        serde_json::json!({"metadata": {"name": "cip"}, "spec": {
            "ports": [{"port": 80, "nodePort": 30080}],
            "externalTrafficPolicy": "Local",
            "loadBalancerClass": "example.com/lb",
            "allocateLoadBalancerNodePorts": true,
        }}),
    )
    .await;
    assert_eq!(
        got,
        [
            "spec.ports[0].nodePort: Forbidden: may not be used when `type` is 'ClusterIP'",
            "spec.allocateLoadBalancerNodePorts: Forbidden: may only be used when `type` is 'LoadBalancer'",
            "spec.loadBalancerClass: Forbidden: may only be used when `type` is 'LoadBalancer'",
            "spec.externalTrafficPolicy: Invalid value: \"Local\": may only be set for externally-accessible services",
        ]
    );
    assert_eq!(
        refused(
            &svcs,
            serde_json::json!({"metadata": {"name": "np"}, "spec": {"type": "NodePort",
                "clusterIP": "None", "ports": [{"port": 80}]}}),
        )
        .await,
        [
            "spec.clusterIPs[0]: Invalid value: \"None\": may not be set to 'None' for NodePort services"
        ]
    );
    assert_eq!(
        refused(
            &svcs,
            serde_json::json!({"metadata": {"name": "aff"}, "spec": {"ports": [{"port": 80}],
                "sessionAffinity": "ClientIP",
                "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 0}}}}),
        )
        .await,
        [
            "spec.sessionAffinityConfig.clientIP.timeoutSeconds: Invalid value: 0: must be greater than 0 and less than 86400"
        ]
    );
    // IP families on this single-stack IPv4 cluster.
    assert_eq!(
        refused(
            &svcs,
            serde_json::json!({"metadata": {"name": "ds"}, "spec": {"ports": [{"port": 80}],
                "ipFamilyPolicy": "RequireDualStack"}}),
        )
        .await,
        [
            "spec.ipFamilyPolicy: Invalid value: \"RequireDualStack\": this cluster is not configured for dual-stack services"
        ]
    );
    assert_eq!(
        refused(
            &svcs,
            serde_json::json!({"metadata": {"name": "v6"}, "spec": {"ports": [{"port": 80}],
                "ipFamilies": ["IPv6"]}}),
        )
        .await,
        ["spec.ipFamilies[0]: Invalid value: \"IPv6\": not configured on this cluster"]
    );
    assert_eq!(
        refused(
            &svcs,
            serde_json::json!({"metadata": {"name": "ips"}, "spec": {"ports": [{"port": 80}],
                "clusterIP": "10.43.0.50", "clusterIPs": ["10.43.0.51"]}}),
        )
        .await,
        [
            "spec.clusterIPs: Invalid value: []string{\"10.43.0.51\"}: first value must match `clusterIP`"
        ]
    );

    // The good side of each.
    let ok = svcs
        .create(
            &PostParams::default(),
            &service(serde_json::json!({"metadata": {"name": "ext"},
                "spec": {"type": "ExternalName", "externalName": "example.com."}})),
        )
        .await
        .expect("ExternalName with a fully qualified name");
    assert_eq!(ok.spec.and_then(|s| s.cluster_ip), None);
    let ok = svcs
        .create(
            &PostParams::default(),
            &service(serde_json::json!({"metadata": {"name": "ports"}, "spec": {
                "ports": [{"name": "a", "port": 80}, {"name": "b", "port": 80, "protocol": "UDP"}],
                "sessionAffinity": "ClientIP", "ipFamilyPolicy": "PreferDualStack",
                "externalIPs": ["192.0.2.10"],
            }})),
        )
        .await
        .expect("named ports, ClientIP affinity, PreferDualStack");
    let spec = ok.spec.expect("spec");
    assert_eq!(
        spec.session_affinity_config
            .and_then(|c| c.client_ip)
            .and_then(|c| c.timeout_seconds),
        Some(10800),
        "defaulted"
    );
    assert_eq!(spec.ip_family_policy.as_deref(), Some("PreferDualStack"));
    assert_eq!(spec.ip_families, Some(vec!["IPv4".to_string()]));
    assert_eq!(
        spec.external_traffic_policy.as_deref(),
        Some("Cluster"),
        "external IPs make it externally accessible"
    );
    let headless = svcs
        .create(
            &PostParams::default(),
            &service(serde_json::json!({"metadata": {"name": "headless"},
                "spec": {"clusterIP": "None", "selector": {"app": "x"}}})),
        )
        .await
        .expect("a headless service needs no ports");
    let spec = headless.spec.expect("spec");
    assert_eq!(spec.cluster_ips, Some(vec!["None".to_string()]));
    assert_eq!(spec.ip_families, Some(vec!["IPv4".to_string()]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_updates_are_validated_as_upstream() {
    let t = TestServer::start().await;
    let svcs: Api<Service> = Api::namespaced(t.client().await, "default");
    let lb = svcs
        .create(
            &PostParams::default(),
            &service(serde_json::json!({"metadata": {"name": "lb"}, "spec": {
                "type": "LoadBalancer", "loadBalancerClass": "example.com/a",
                "ports": [{"port": 80}],
            }})),
        )
        .await
        .expect("create");
    let ip = lb.spec.and_then(|s| s.cluster_ip).expect("cluster IP");
    let patch = |v: serde_json::Value| Patch::Merge(v);
    let err = svcs
        .patch(
            "lb",
            &PatchParams::default(),
            &patch(serde_json::json!({"spec": {"clusterIP": "10.43.9.9"}})),
        )
        .await
        .expect_err("cluster IP changed");
    assert_eq!(
        causes(err),
        ["spec.clusterIPs[0]: Invalid value: []string{\"10.43.9.9\"}: may not change once set"]
    );
    let err = svcs
        .patch(
            "lb",
            &PatchParams::default(),
            &patch(serde_json::json!({"spec": {"loadBalancerClass": "example.com/b"}})),
        )
        .await
        .expect_err("class changed");
    assert_eq!(
        causes(err),
        ["spec.loadBalancerClass: Invalid value: \"example.com/b\": may not change once set"]
    );
    // Becoming ClusterIP drops what only a LoadBalancer has (unchanged fields, its status).
    svcs.patch_status(
        "lb",
        &PatchParams::default(),
        &patch(serde_json::json!({"status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}}})),
    )
    .await
    .expect("load balancer status");
    let cip = svcs
        .patch(
            "lb",
            &PatchParams::default(),
            &patch(serde_json::json!({"spec": {"type": "ClusterIP"}})),
        )
        .await
        .expect("LoadBalancer -> ClusterIP");
    let spec = cip.spec.expect("spec");
    assert_eq!(spec.cluster_ip, Some(ip));
    assert_eq!(
        (
            spec.load_balancer_class,
            spec.allocate_load_balancer_node_ports,
            spec.external_traffic_policy,
        ),
        (None, None, None)
    );
    assert!(spec.ports.expect("ports")[0].node_port.is_none());
    let status = cip
        .status
        .and_then(|s| s.load_balancer)
        .expect("load balancer status");
    assert_eq!(status.ingress, None, "cleared");
    // ClusterIP → ExternalName with a cluster IP of its own is refused.
    let err = svcs
        .patch(
            "lb",
            &PatchParams::default(),
            &patch(serde_json::json!({"spec": {"type": "ExternalName",
                "externalName": "example.com", "clusterIP": "10.43.9.9"}})),
        )
        .await
        .expect_err("ExternalName with an IP");
    assert!(causes(err).contains(
        &"spec.clusterIPs: Forbidden: may not be set for ExternalName services".to_string()
    ));
}

/// `externalTrafficPolicy: Local` load balancers get a health-check node port from the node
/// port range (or the one asked for), released when the service stops needing it or is
/// deleted; one taken is upstream's 500 (the allocator's error wrapped as an internal error).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_check_node_ports_are_allocated_and_released() {
    let t = TestServer::start().await;
    let svcs: Api<Service> = Api::namespaced(t.client().await, "default");
    let local = |name: &str, hc: Option<i32>| {
        service(serde_json::json!({"metadata": {"name": name}, "spec": {
            "type": "LoadBalancer", "externalTrafficPolicy": "Local",
            "healthCheckNodePort": hc, "ports": [{"port": 80}],
        }}))
    };
    let a = svcs
        .create(&PostParams::default(), &local("a", None))
        .await
        .expect("create");
    let spec = a.spec.expect("spec");
    let hc = spec.health_check_node_port.expect("allocated");
    let node_port = spec.ports.expect("ports")[0].node_port.expect("node port");
    assert!((30000..=32767).contains(&hc) && hc != node_port, "{hc}");

    // Taken (by a's health check, or by a's node port): upstream's internal error.
    for taken in [hc, node_port] {
        let status = api_error(
            svcs.create(&PostParams::default(), &local("b", Some(taken)))
                .await
                .expect_err("taken"),
        );
        assert_eq!(
            (status.code, status.reason.as_str(), status.message),
            (
                500,
                "InternalError",
                format!(
                    "Internal error occurred: failed to allocate requested HealthCheck NodePort {taken}: provided port is already allocated"
                )
            )
        );
    }
    // …and a node port may not take a's health-check port either.
    let status = api_error(
        svcs.create(
            &PostParams::default(),
            &service(serde_json::json!({"metadata": {"name": "np"},
                "spec": {"type": "NodePort", "ports": [{"port": 80, "nodePort": hc}]}})),
        )
        .await
        .expect_err("held as a health check port"),
    );
    assert_eq!(status.code, 422, "{}", status.message);
    // A health-check port only where it is needed; immutable while it is.
    let err = svcs
        .create(
            &PostParams::default(),
            &service(serde_json::json!({"metadata": {"name": "c"}, "spec": {
                "type": "LoadBalancer", "healthCheckNodePort": 31000, "ports": [{"port": 80}],
            }})),
        )
        .await
        .expect_err("Cluster policy");
    assert_eq!(
        causes(err),
        [
            "spec.healthCheckNodePort: Invalid value: 31000: may only be set when `type` is 'LoadBalancer' and `externalTrafficPolicy` is 'Local'"
        ]
    );
    let err = svcs
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"healthCheckNodePort": 31000}})),
        )
        .await
        .expect_err("immutable");
    assert_eq!(
        causes(err),
        ["spec.healthCheckNodePort: Forbidden: field is immutable"]
    );
    // An update that leaves it out keeps it.
    let mut kept = svcs.get("a").await.expect("get");
    if let Some(s) = kept.spec.as_mut() {
        s.health_check_node_port = None;
    }
    let kept = svcs
        .replace("a", &PostParams::default(), &kept)
        .await
        .expect("replace");
    assert_eq!(kept.spec.and_then(|s| s.health_check_node_port), Some(hc));

    // Policy Cluster: dropped and released.
    let cluster = svcs
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"externalTrafficPolicy": "Cluster"}})),
        )
        .await
        .expect("to Cluster");
    assert_eq!(cluster.spec.and_then(|s| s.health_check_node_port), None);
    let b = svcs
        .create(&PostParams::default(), &local("b", Some(hc)))
        .await
        .expect("the released port, asked for");
    assert_eq!(b.spec.and_then(|s| s.health_check_node_port), Some(hc));
    // Back to Local: a new one is allocated.
    let again = svcs
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"externalTrafficPolicy": "Local"}})),
        )
        .await
        .expect("to Local");
    let hc2 = again
        .spec
        .and_then(|s| s.health_check_node_port)
        .expect("allocated again");
    assert!((30000..=32767).contains(&hc2) && hc2 != hc);
    // Asking for one taken on the way to Local: the internal error, nothing changed.
    svcs.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {"externalTrafficPolicy": "Cluster"}})),
    )
    .await
    .expect("to Cluster");
    let status = api_error(
        svcs.patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(
                serde_json::json!({"spec": {"externalTrafficPolicy": "Local", "healthCheckNodePort": hc}}),
            ),
        )
        .await
        .expect_err("held by b"),
    );
    assert_eq!(
        (status.code, status.reason.as_str()),
        (500, "InternalError")
    );
    // Deleting b releases its port.
    svcs.delete("b", &DeleteParams::default())
        .await
        .expect("delete");
    let a = svcs
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(
                serde_json::json!({"spec": {"externalTrafficPolicy": "Local", "healthCheckNodePort": hc}}),
            ),
        )
        .await
        .expect("released by the delete");
    assert_eq!(a.spec.and_then(|s| s.health_check_node_port), Some(hc));
}
