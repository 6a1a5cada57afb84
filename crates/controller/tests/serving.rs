//! The controller manager's secure port (upstream's 10257): health checks and metrics over
//! HTTPS with a self-signed certificate.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::TestCluster;
use rk3s_common::serving::probe;

const TIMEOUT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_health_and_the_leader_status() {
    // The harness' own manager runs nothing and does not campaign.
    let t = TestCluster::start_with(rk3s_controller::Config {
        controllers: vec![],
        leader_elect: false,
        ..rk3s_controller::Config::default()
    })
    .await;
    let config = rk3s_controller::Config {
        controllers: vec!["namespace".into()],
        leader_elect_retry_period: 1,
        secure_port: rk3s_datastore::testing::free_port().unwrap(),
        ..common::manager_config(rk3s_controller::Config::default())
    };
    let started = rk3s_controller::start(config).await.unwrap();
    let addr = started.local_addr().expect("serving");
    assert_eq!(addr.ip().to_string(), "127.0.0.1");
    let connection = common::manager_connection(&t.apiserver).await;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let manager = tokio::spawn(started.run(connection, async {
        let _ = stopped.await;
    }));

    let metrics = common::eventually(30, "the lease held", || async {
        let (_, body) = probe(addr, "/metrics", TIMEOUT).await.unwrap();
        body.contains("leader_election_master_status{name=\"kube-controller-manager\"} 1\n")
            .then_some(body)
    })
    .await;
    assert!(
        metrics.contains("# TYPE leader_election_master_status gauge\n"),
        "{metrics}"
    );
    assert_eq!(
        probe(addr, "/healthz", TIMEOUT).await.unwrap(),
        (200, "ok".to_string())
    );
    assert_eq!(
        probe(addr, "/readyz?verbose", TIMEOUT).await.unwrap(),
        (
            200,
            "[+]ping ok\n[+]leaderElection ok\nreadyz check passed\n".to_string()
        )
    );

    // A second manager on the same port cannot start, and says where.
    let err = rk3s_controller::start(rk3s_controller::Config {
        secure_port: addr.port(),
        ..rk3s_controller::Config::default()
    })
    .await
    .unwrap_err();
    assert!(
        err.to_string()
            .starts_with(&format!("cannot listen on 127.0.0.1:{}: ", addr.port())),
        "{err}"
    );

    let _ = stop.send(());
    manager.await.unwrap().unwrap();
}
