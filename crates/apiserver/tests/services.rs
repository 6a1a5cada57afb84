//! Services through kube-rs: upstream v1.33's `ValidateService`/`ValidateServiceUpdate`
//! (422 with upstream's causes, the good inputs accepted) and health-check node ports.

mod common;

use common::{TestServer, api_status, invalid_causes};
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};

fn service(value: serde_json::Value) -> Service {
    serde_json::from_value(value).expect("service")
}

async fn refused(svcs: &Api<Service>, value: serde_json::Value) -> Vec<String> {
    invalid_causes(
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
    let status = api_status(
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
        invalid_causes(err),
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
        invalid_causes(err),
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
        invalid_causes(err),
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
    assert!(invalid_causes(err).contains(
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
        let status = api_status(
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
    let status = api_status(
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
        invalid_causes(err),
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
        invalid_causes(err),
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
    let status = api_status(
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

/// Cluster IPs, node ports and health-check node ports are checked as upstream's allocation
/// (the generic store's `BeginCreate`/`BeginUpdate`) checks them: before the validation, so a
/// request failing both gets the allocation's error, and on dry runs too, which take nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocations_are_checked_before_validation_and_on_dry_runs() {
    let t = TestServer::start().await;
    let svcs: Api<Service> = Api::namespaced(t.client().await, "default");
    svcs.create(
        &PostParams::default(),
        &service(serde_json::json!({"metadata": {"name": "holder"}, "spec": {
            "type": "LoadBalancer", "externalTrafficPolicy": "Local",
            "clusterIP": "10.43.0.100", "healthCheckNodePort": 30101,
            "ports": [{"port": 80, "nodePort": 30100}],
        }})),
    )
    .await
    .expect("create");
    let dry = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let port_taken =
        "spec.ports[0].nodePort: Invalid value: 30100: provided port is already allocated";
    let ip_taken = "spec.clusterIPs: Invalid value: []string{\"10.43.0.100\"}: failed to allocate IP 10.43.0.100: provided IP is already allocated";

    // Dry runs: what a real create would find taken is refused with the same error.
    let node_port = serde_json::json!({"metadata": {"name": "b"},
        "spec": {"type": "NodePort", "ports": [{"port": 80, "nodePort": 30100}]}});
    for params in [&dry, &PostParams::default()] {
        let err = svcs
            .create(params, &service(node_port.clone()))
            .await
            .expect_err("node port taken");
        assert_eq!(invalid_causes(err), [port_taken]);
    }
    let err = svcs
        .create(
            &dry,
            &service(serde_json::json!({"metadata": {"name": "b"},
                "spec": {"clusterIP": "10.43.0.100", "ports": [{"port": 80}]}})),
        )
        .await
        .expect_err("cluster IP taken");
    assert_eq!(invalid_causes(err), [ip_taken]);
    let status = api_status(
        svcs.create(
            &dry,
            &service(serde_json::json!({"metadata": {"name": "b"}, "spec": {
                "type": "LoadBalancer", "externalTrafficPolicy": "Local",
                "healthCheckNodePort": 30101, "ports": [{"port": 80}],
            }})),
        )
        .await
        .expect_err("health-check port taken"),
    );
    assert_eq!(
        (status.code, status.message.as_str()),
        (
            500,
            "Internal error occurred: failed to allocate requested HealthCheck NodePort 30101: provided port is already allocated"
        )
    );

    // Taken and invalid (a bad protocol, a bad label): the allocation's error comes first.
    let err = svcs
        .create(
            &PostParams::default(),
            &service(
                serde_json::json!({"metadata": {"name": "b", "labels": {"a b": "c"}},
                "spec": {"type": "NodePort", "ports": [
                    {"name": "x", "port": 80, "nodePort": 30100},
                    {"name": "y", "port": 81, "protocol": "HTTP"},
                ]}}),
            ),
        )
        .await
        .expect_err("taken and invalid");
    assert_eq!(invalid_causes(err), [port_taken]);

    // A dry run gets what a real create would allocate, and takes none of it.
    let drawn = svcs
        .create(
            &dry,
            &service(serde_json::json!({"metadata": {"name": "b"}, "spec": {
                "type": "LoadBalancer", "externalTrafficPolicy": "Local",
                "ports": [{"port": 80}],
            }})),
        )
        .await
        .expect("dry run");
    let spec = drawn.spec.expect("spec");
    let ip = spec.cluster_ip.clone().expect("a cluster IP");
    let np = spec.ports.expect("ports")[0]
        .node_port
        .expect("a node port");
    let hc = spec.health_check_node_port.expect("a health-check port");
    assert!(ip.starts_with("10.43.") && ip != "10.43.0.100", "{ip}");
    assert!((30000..=32767).contains(&np) && (30000..=32767).contains(&hc) && np != hc);
    assert_eq!(spec.ip_families, Some(vec!["IPv4".to_string()]));
    assert!(svcs.get_opt("b").await.expect("get").is_none());
    svcs.create(
        &PostParams::default(),
        &service(serde_json::json!({"metadata": {"name": "b"}, "spec": {
            "type": "LoadBalancer", "externalTrafficPolicy": "Local",
            "clusterIP": ip, "healthCheckNodePort": hc,
            "ports": [{"port": 80, "nodePort": np}],
        }})),
    )
    .await
    .expect("what the dry run showed is still free");

    // Updates: the same checks before the validation, dry runs included.
    svcs.create(
        &PostParams::default(),
        &service(serde_json::json!({"metadata": {"name": "c"},
            "spec": {"ports": [{"port": 80}]}})),
    )
    .await
    .expect("create");
    let to_node_port = serde_json::json!({"spec": {"type": "NodePort",
        "ports": [{"port": 80, "nodePort": 30100}]}});
    let dry_patch = PatchParams {
        dry_run: true,
        ..PatchParams::default()
    };
    for params in [&dry_patch, &PatchParams::default()] {
        let err = svcs
            .patch("c", params, &Patch::Merge(to_node_port.clone()))
            .await
            .expect_err("taken");
        assert_eq!(invalid_causes(err), [port_taken]);
    }
    let err = svcs
        .patch(
            "c",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"metadata": {"labels": {"a b": "c"}},
                "spec": {"type": "NodePort", "sessionAffinity": "Sticky",
                         "ports": [{"port": 80, "nodePort": 30100}]}})),
        )
        .await
        .expect_err("taken and invalid");
    assert_eq!(invalid_causes(err), [port_taken]);
    let free = svcs
        .patch(
            "c",
            &dry_patch,
            &Patch::Merge(serde_json::json!({"spec": {"type": "NodePort"}})),
        )
        .await
        .expect("dry run");
    let np = free.spec.and_then(|s| s.ports).expect("ports")[0]
        .node_port
        .expect("a node port drawn");
    let c = svcs.get("c").await.expect("get");
    assert_eq!(c.spec.and_then(|s| s.type_).as_deref(), Some("ClusterIP"));
    svcs.create(
        &PostParams::default(),
        &service(serde_json::json!({"metadata": {"name": "d"},
            "spec": {"type": "NodePort", "ports": [{"port": 80, "nodePort": np}]}})),
    )
    .await
    .expect("the dry run took nothing");
}

/// A Service's `metadata` is validated as core's `ValidateObjectMeta`/`ValidateObjectMetaUpdate`
/// (labels, annotations, owner references, finalizer names), on every update — one that
/// changes only the metadata too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_metadata_is_validated_on_create_and_every_update() {
    let t = TestServer::start().await;
    let svcs: Api<Service> = Api::namespaced(t.client().await, "default");
    let got = refused(
        &svcs,
        serde_json::json!({"metadata": {"name": "m",
            "labels": {"a b": "ok", "k": "-bad"},
            "annotations": {"Example.com/OK": "x", "bad key": "y"},
            "finalizers": ["plain", "example.com/f"],
            "ownerReferences": [{"apiVersion": "", "kind": "K", "name": "o", "uid": "u"}],
        }, "spec": {"ports": [{"port": 80}]}}),
    )
    .await;
    let fields: Vec<&str> = got
        .iter()
        .map(|c| c.split(": ").next().unwrap_or_default())
        .collect();
    assert_eq!(
        fields,
        [
            "metadata.labels",
            "metadata.labels",
            "metadata.annotations",
            "metadata.ownerReferences.apiVersion",
            "metadata.finalizers[0]",
        ],
        "{got:?}"
    );
    assert!(got[0].starts_with("metadata.labels: Invalid value: \"a b\": name part must consist of alphanumeric characters"), "{got:?}");
    assert!(
        got[1].starts_with(
            "metadata.labels: Invalid value: \"-bad\": a valid label must be an empty string"
        ),
        "{got:?}"
    );
    assert_eq!(
        got[3..],
        [
            "metadata.ownerReferences.apiVersion: Invalid value: \"\": version must not be empty",
            "metadata.finalizers[0]: Invalid value: \"plain\": name is neither a standard finalizer name nor is it fully qualified",
        ]
    );

    svcs.create(
        &PostParams::default(),
        &service(
            serde_json::json!({"metadata": {"name": "m", "labels": {"app": "m"}},
            "spec": {"ports": [{"port": 80}]}}),
        ),
    )
    .await
    .expect("create");
    // Metadata-only updates: the good ones pass, the bad ones are refused.
    let patch = |v: serde_json::Value| Patch::Merge(v);
    svcs.patch(
        "m",
        &PatchParams::default(),
        &patch(serde_json::json!({"metadata": {"labels": {"tier": "web"},
            "annotations": {"example.com/note": "x"}}})),
    )
    .await
    .expect("valid metadata");
    let err = svcs
        .patch(
            "m",
            &PatchParams::default(),
            &patch(serde_json::json!({"metadata": {"annotations": {"bad key": "x"}}})),
        )
        .await
        .expect_err("bad annotation");
    let got = invalid_causes(err);
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(
        got[0].starts_with(
            "metadata.annotations: Invalid value: \"bad key\": name part must consist"
        ),
        "{got:?}"
    );
    let big = "x".repeat(256 * 1024);
    let err = svcs
        .patch(
            "m",
            &PatchParams::default(),
            &patch(serde_json::json!({"metadata": {"annotations": {"example.com/big": big}}})),
        )
        .await
        .expect_err("annotations too large");
    assert_eq!(
        invalid_causes(err),
        ["metadata.annotations: Too long: may not be more than 262144 bytes"]
    );
    // No finalizer may be added while the service is being deleted.
    svcs.patch(
        "m",
        &PatchParams::default(),
        &patch(serde_json::json!({"metadata": {"finalizers": ["example.com/a"]}})),
    )
    .await
    .expect("a finalizer");
    svcs.delete("m", &DeleteParams::default())
        .await
        .expect("delete");
    let err = svcs
        .patch(
            "m",
            &PatchParams::default(),
            &patch(
                serde_json::json!({"metadata": {"finalizers": ["example.com/a", "example.com/b"]}}),
            ),
        )
        .await
        .expect_err("new finalizer while deleting");
    assert_eq!(
        invalid_causes(err),
        [
            "metadata.finalizers: Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers []string{\"example.com/b\"}"
        ]
    );
    svcs.patch(
        "m",
        &PatchParams::default(),
        &patch(serde_json::json!({"metadata": {"finalizers": null}})),
    )
    .await
    .expect("the last finalizer removed");
    assert!(svcs.get_opt("m").await.expect("get").is_none());
}

/// An update retried after a compare-and-swap conflict is charged to the namespace's quotas
/// once: a Service turned into a `NodePort` one while other writers change its labels (its
/// write loses compare-and-swaps and is admitted again against the object it then replaces)
/// adds one node port to `status.used`, however many attempts it took. A race: each round
/// gives the retry a chance; with the double charge, some round shows two.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retried_update_charges_the_quota_once() {
    use k8s_openapi::api::core::v1::ResourceQuota;
    let t = TestServer::start().await;
    let client = t.client().await;
    let quotas: Api<ResourceQuota> = Api::namespaced(client.clone(), "default");
    let hard = serde_json::json!({"services.nodeports": "1000"});
    quotas
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({
                "metadata": {"name": "q"}, "spec": {"hard": hard},
            }))
            .expect("quota"),
        )
        .await
        .expect("create quota");
    // What the resourcequota controller would write (there is none here).
    quotas
        .patch_status(
            "q",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"status": {"hard": hard,
                "used": {"services.nodeports": "0"}}})),
        )
        .await
        .expect("quota status");
    let svcs: Api<Service> = Api::namespaced(client, "default");
    svcs.create(
        &PostParams::default(),
        &service(serde_json::json!({"metadata": {"name": "s"},
            "spec": {"ports": [{"port": 80}]}})),
    )
    .await
    .expect("create");
    let set_type = |ty: &str| Patch::Merge(serde_json::json!({"spec": {"type": ty}}));
    for round in 1..=15 {
        let writers: Vec<_> = (0..8)
            .map(|i| {
                let svcs = svcs.clone();
                let mut labels = serde_json::Map::new();
                labels.insert(format!("w{i}"), round.to_string().into());
                tokio::spawn(async move {
                    svcs.patch(
                        "s",
                        &PatchParams::default(),
                        &Patch::Merge(serde_json::json!({"metadata": {"labels": labels}})),
                    )
                    .await
                })
            })
            .collect();
        svcs.patch("s", &PatchParams::default(), &set_type("NodePort"))
            .await
            .expect("to NodePort");
        for w in writers {
            w.await.expect("writer").expect("label");
        }
        // Back to ClusterIP: nothing is given back (the controller's recount would).
        svcs.patch("s", &PatchParams::default(), &set_type("ClusterIP"))
            .await
            .expect("to ClusterIP");
        let used = quotas
            .get("q")
            .await
            .expect("quota")
            .status
            .and_then(|s| s.used)
            .and_then(|u| u.get("services.nodeports").cloned())
            .expect("used");
        assert_eq!(used.0, round.to_string(), "round {round}");
    }
}
