//! ServiceCIDRs and IPAddresses (networking.k8s.io/v1, KEP-1880) through kube-rs and kubectl:
//! a Service's cluster IP is an `IPAddress` object naming it, released with it; an `IPAddress`
//! a user creates reserves its IP; the default ServiceCIDR `kubernetes` is Ready; a second
//! ServiceCIDR extends the range when the first is full, and its deletion waits for the IPs
//! only it holds; older rk3s' IP records are moved to `IPAddress` objects on start; invalid
//! objects get upstream's causes.

mod common;

use std::time::Duration;

use common::{TestServer, api_status, invalid_causes};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::{IPAddress, ServiceCIDR};
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;

fn service(name: &str) -> Service {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"ports": [{"port": 80}]},
    }))
    .expect("service")
}

fn ip_address(name: &str, parent: serde_json::Value) -> IPAddress {
    serde_json::from_value(json!({"metadata": {"name": name}, "spec": {"parentRef": parent}}))
        .expect("ipaddress")
}

fn service_cidr(name: &str, cidrs: serde_json::Value) -> ServiceCIDR {
    serde_json::from_value(json!({"metadata": {"name": name}, "spec": {"cidrs": cidrs}}))
        .expect("servicecidr")
}

fn ready(cidr: &ServiceCIDR) -> Option<(String, String, String)> {
    cidr.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// Polls `check` until it holds (the controller runs on its own; no timing is asserted).
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..300 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("never: {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_services_cluster_ip_is_an_ipaddress_released_with_it() {
    let t = TestServer::start().await;
    let client = t.client().await;
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    let ips: Api<IPAddress> = Api::all(client);

    let created = svcs
        .create(&PostParams::default(), &service("web"))
        .await
        .expect("service created");
    let ip = created
        .spec
        .and_then(|s| s.cluster_ip)
        .expect("a cluster IP");
    let record = ips.get(&ip).await.expect("the IPAddress of the service");
    let labels = record.metadata.labels.clone().unwrap_or_default();
    assert_eq!(labels["ipaddress.kubernetes.io/ip-family"], "IPv4");
    assert_eq!(
        labels["ipaddress.kubernetes.io/managed-by"],
        "ipallocator.k8s.io"
    );
    let parent = record.spec.map(|s| s.parent_ref).expect("parentRef");
    assert_eq!(
        (
            parent.group.as_deref(),
            parent.resource.as_str(),
            parent.namespace.as_deref(),
            parent.name.as_str()
        ),
        (Some(""), "services", Some("default"), "web")
    );
    assert!(record.metadata.uid.is_some_and(|u| !u.is_empty()));
    assert!(record.metadata.creation_timestamp.is_some());
    assert!(
        record
            .metadata
            .resource_version
            .is_some_and(|rv| rv.parse::<i64>().is_ok_and(|n| n > 0))
    );
    // The `kubernetes` Service's IP is recorded the same way.
    let kubernetes = ips.get("10.43.0.1").await.expect("kubernetes service IP");
    assert_eq!(
        kubernetes.spec.map(|s| s.parent_ref.name),
        Some("kubernetes".to_string())
    );

    // kubectl shows upstream's columns.
    let out = t.kubectl_ok(&["get", "ipaddresses", &ip]).await;
    let lines: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        lines,
        vec![
            vec!["NAME", "PARENTREF"],
            vec![ip.as_str(), "services/default/web"]
        ],
        "{out}"
    );

    svcs.delete("web", &DeleteParams::default())
        .await
        .expect("service deleted");
    let gone = api_status(ips.get(&ip).await.expect_err("released with the service"));
    assert_eq!(gone.code, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_ipaddress_reserves_its_ip() {
    let t = TestServer::start().await;
    let client = t.client().await;
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    let ips: Api<IPAddress> = Api::all(client);
    ips.create(
        &PostParams::default(),
        &ip_address(
            "10.43.0.77",
            json!({"group": "example.com", "resource": "gateways", "namespace": "default", "name": "gw"}),
        ),
    )
    .await
    .expect("IPAddress created");
    let mut svc = service("taken");
    if let Some(spec) = svc.spec.as_mut() {
        spec.cluster_ip = Some("10.43.0.77".into());
    }
    let causes = invalid_causes(
        svcs.create(&PostParams::default(), &svc)
            .await
            .expect_err("the IP is reserved"),
    );
    assert_eq!(
        causes,
        [
            "spec.clusterIPs: Invalid value: []string{\"10.43.0.77\"}: failed to allocate IP 10.43.0.77: provided IP is already allocated"
        ]
    );
    let out = t.kubectl_ok(&["get", "ipaddress", "10.43.0.77"]).await;
    assert!(out.contains("gateways.example.com/default/gw"), "{out}");
    // Released, the IP can be had.
    ips.delete("10.43.0.77", &DeleteParams::default())
        .await
        .expect("IPAddress deleted");
    svcs.create(&PostParams::default(), &svc)
        .await
        .expect("the IP is free again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_service_cidr_is_ready() {
    let t = TestServer::start().await;
    let cidrs: Api<ServiceCIDR> = Api::all(t.client().await);
    let default = cidrs.get("kubernetes").await.expect("default ServiceCIDR");
    assert_eq!(
        default.spec.clone().and_then(|s| s.cidrs),
        Some(vec!["10.43.0.0/16".to_string()])
    );
    assert_eq!(
        ready(&default).map(|(s, _, m)| (s, m)),
        Some((
            "True".to_string(),
            "Kubernetes default Service CIDR is ready".to_string()
        ))
    );
    // The ServiceCIDR controller protects it.
    eventually("the default ServiceCIDR has the finalizer", || async {
        cidrs.get("kubernetes").await.is_ok_and(|c| {
            c.metadata.finalizers.is_some_and(|f| {
                f.iter()
                    .any(|f| f == "networking.k8s.io/service-cidr-finalizer")
            })
        })
    })
    .await;
    let out = t.kubectl_ok(&["get", "servicecidrs"]).await;
    let lines: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(lines[0], ["NAME", "CIDRS", "AGE"], "{out}");
    assert_eq!(lines[1][..2], ["kubernetes", "10.43.0.0/16"], "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_service_cidr_extends_the_range_and_waits_for_its_ips() {
    let t = TestServer::start_configured(|a| a.service_cidr("10.0.0.0/29".parse().expect("cidr")))
        .await;
    let client = t.client().await;
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    let cidrs: Api<ServiceCIDR> = Api::all(client.clone());
    let ips: Api<IPAddress> = Api::all(client);
    // 10.0.0.1 is the `kubernetes` Service's; five more addresses can be drawn.
    for i in 0..5 {
        svcs.create(&PostParams::default(), &service(&format!("s{i}")))
            .await
            .expect("an IP of the first range");
    }
    let full = api_status(
        svcs.create(&PostParams::default(), &service("extra"))
            .await
            .expect_err("the range is full"),
    );
    assert_eq!(
        (full.code, full.message.as_str()),
        (
            500,
            "Internal error occurred: failed to allocate a serviceIP: range is full"
        )
    );
    cidrs
        .create(
            &PostParams::default(),
            &service_cidr("more", json!(["10.1.0.0/29"])),
        )
        .await
        .expect("second ServiceCIDR");
    let extra = svcs
        .create(&PostParams::default(), &service("extra"))
        .await
        .expect("an IP of the second range");
    let ip = extra.spec.and_then(|s| s.cluster_ip).expect("cluster IP");
    assert!(ip.starts_with("10.1.0."), "{ip}");
    eventually("the controller makes the new ServiceCIDR Ready", || async {
        cidrs.get("more").await.is_ok_and(|c| {
            ready(&c)
                .is_some_and(|(s, _, m)| s == "True" && m == "Kubernetes Service CIDR is ready")
        })
    })
    .await;

    // Deleting it waits while the Service's IP would be orphaned.
    cidrs
        .delete("more", &DeleteParams::default())
        .await
        .expect("deletion accepted");
    eventually("the ServiceCIDR says why it stays", || async {
        cidrs.get("more").await.is_ok_and(|c| {
            ready(&c)
                == Some((
                    "False".into(),
                    "Terminating".into(),
                    "There are still IPAddresses referencing the ServiceCIDR, please remove them or create a new ServiceCIDR".into(),
                ))
        })
    })
    .await;
    let held = cidrs.get("more").await.expect("still there");
    assert!(held.metadata.deletion_timestamp.is_some());
    // A ServiceCIDR being deleted is not drawn from.
    let full = api_status(
        svcs.create(&PostParams::default(), &service("another"))
            .await
            .expect_err("no range left"),
    );
    assert_eq!(full.code, 500);
    svcs.delete("extra", &DeleteParams::default())
        .await
        .expect("service deleted");
    assert_eq!(
        api_status(ips.get(&ip).await.expect_err("released")).code,
        404
    );
    eventually("the ServiceCIDR goes once nothing is orphaned", || async {
        cidrs
            .get("more")
            .await
            .is_err_and(|e| api_status(e).code == 404)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_ip_records_become_ipaddresses_on_start() {
    let t = TestServer::start().await;
    let key = b"/registry/rk3s/serviceips/10.43.0.99";
    t.store
        .create(key, b"default/old".to_vec(), 0)
        .await
        .expect("legacy record written");
    let t = t.restart(|a| a).await;
    let ips: Api<IPAddress> = Api::all(t.client().await);
    let moved = ips.get("10.43.0.99").await.expect("moved to an IPAddress");
    let parent = moved.spec.map(|s| s.parent_ref).expect("parentRef");
    assert_eq!(
        (parent.namespace.as_deref(), parent.name.as_str()),
        (Some("default"), "old")
    );
    assert!(
        t.store.get(key, 0).await.expect("read").1.is_none(),
        "the old key is gone"
    );
    // Idempotent: a second start finds nothing to move and keeps the object.
    let t = t.restart(|a| a).await;
    let ips: Api<IPAddress> = Api::all(t.client().await);
    assert_eq!(
        ips.get("10.43.0.99").await.expect("kept").metadata.uid,
        moved.metadata.uid
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_ipaddresses_and_service_cidrs_are_refused_as_upstream() {
    let t = TestServer::start().await;
    let client = t.client().await;
    let ips: Api<IPAddress> = Api::all(client.clone());
    let cidrs: Api<ServiceCIDR> = Api::all(client);
    let pp = PostParams::default();

    let causes = invalid_causes(
        ips.create(
            &pp,
            &ip_address(
                "10.0.0.01",
                json!({"group": "", "resource": "", "name": ""}),
            ),
        )
        .await
        .expect_err("bad name and parentRef"),
    );
    assert_eq!(
        causes,
        [
            "metadata.name: Invalid value: \"10.0.0.01\": must not have leading 0s",
            "spec.parentRef.resource: Required value",
            "spec.parentRef.name: Required value",
        ]
    );
    let causes = invalid_causes(
        ips.create(
            &pp,
            &ip_address("2001:DB8::1", json!({"resource": "services", "name": "a"})),
        )
        .await
        .expect_err("not canonical"),
    );
    assert_eq!(
        causes,
        [
            "metadata.name: Invalid value: \"2001:DB8::1\": must be in canonical form (\"2001:db8::1\")"
        ]
    );
    let causes = invalid_causes(
        cidrs
            .create(&pp, &service_cidr("bad", json!(["10.2.0.1/24"])))
            .await
            .expect_err("bits beyond the prefix"),
    );
    assert_eq!(
        causes,
        [
            "spec.cidrs[0]: Invalid value: \"10.2.0.1/24\": must not have bits set beyond the prefix length"
        ]
    );
    let causes = invalid_causes(
        cidrs
            .create(
                &pp,
                &service_cidr("bad", json!(["10.2.0.0/24", "10.3.0.0/24"])),
            )
            .await
            .expect_err("two of one family"),
    );
    assert_eq!(
        causes,
        [
            "spec.cidrs: Invalid value: networking.ServiceCIDRSpec{CIDRs:[]string{\"10.2.0.0/24\", \"10.3.0.0/24\"}}: may specify no more than one IP for each IP family, i.e 192.168.0.0/24 and 2001:db8::/64"
        ]
    );
    let causes = invalid_causes(
        cidrs
            .create(&pp, &service_cidr("bad", json!([])))
            .await
            .expect_err("none"),
    );
    assert_eq!(
        causes,
        ["spec.cidrs: Required value: at least one CIDR required"]
    );

    // The CIDRs are immutable, through kubectl too.
    cidrs
        .create(&pp, &service_cidr("good", json!(["10.2.0.0/24"])))
        .await
        .expect("valid ServiceCIDR");
    let out = t
        .kubectl(&[
            "patch",
            "servicecidr",
            "good",
            "--type=merge",
            "-p",
            r#"{"spec":{"cidrs":["10.3.0.0/24"]}}"#,
        ])
        .await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "The ServiceCIDR \"good\" is invalid: spec.cidrs[0]: Invalid value: \"10.3.0.0/24\": field is immutable"
        ),
        "{stderr}"
    );
    // Adding the other family is the one change allowed (dual-stack upgrade).
    t.kubectl_ok(&[
        "patch",
        "servicecidr",
        "good",
        "--type=merge",
        "-p",
        r#"{"spec":{"cidrs":["10.2.0.0/24","2001:db8::/112"]}}"#,
    ])
    .await;
}
