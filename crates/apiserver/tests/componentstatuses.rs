//! `kubectl get componentstatuses` against a standalone apiserver (no embedder reporting):
//! the scheduler's and controller manager's secure ports are probed, as upstream does.

mod common;

use std::net::SocketAddr;

use common::TestServer;
use rk3s_common::health::Checks;
use rk3s_common::metrics::Registry;
use rk3s_common::serving::{SecureServing, ServingConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standalone_apiserver_probes_the_components_health() {
    // A component answering on its secure port, and one whose port refuses.
    let serving = SecureServing::bind(&ServingConfig {
        bind_address: [127, 0, 0, 1].into(),
        secure_port: rk3s_datastore::testing::free_port().expect("free port"),
        tls_cert_file: None,
        tls_private_key_file: None,
    })
    .await
    .expect("binds")
    .expect("serves");
    let healthy = serving.local_addr();
    let _serving = serving.serve(Checks::new(), Registry::new());
    let refused = rk3s_datastore::testing::free_port().expect("free port");
    let unreachable = SocketAddr::from(([127, 0, 0, 1], refused));

    let t = TestServer::start_configured(move |a| {
        a.component_probes(vec![
            ("scheduler".into(), healthy),
            ("controller-manager".into(), unreachable),
        ])
    })
    .await;
    let out = t.kubectl_ok(&["get", "componentstatuses"]).await;
    let rows: Vec<String> = out
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    let refused_message = format!(
        "Get \"https://127.0.0.1:{refused}/healthz\": dial tcp 127.0.0.1:{refused}: connect: \
         connection refused"
    );
    assert_eq!(
        rows,
        [
            "NAME STATUS MESSAGE ERROR".to_string(),
            format!("controller-manager Unhealthy {refused_message}"),
            "scheduler Healthy ok".to_string(),
            "etcd-0 Healthy ok".to_string(),
        ]
    );
    let one = t
        .kubectl_ok(&["get", "cs", "controller-manager", "-o", "json"])
        .await;
    let one: serde_json::Value = serde_json::from_str(&one).expect("JSON");
    assert_eq!(
        one["conditions"],
        serde_json::json!([{"type": "Healthy", "status": "False", "message": refused_message}])
    );
}
