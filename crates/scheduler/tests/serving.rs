//! The scheduler's secure port (upstream's 10259): health checks and metrics over HTTPS with
//! a self-signed certificate, against a real in-process apiserver.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use rk3s_common::serving::probe;
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_health_and_metrics_that_count_what_it_did() {
    let t = TestServer::start().await;
    let c = t.client().await;
    make_node(&c, "n1", "1", json!({}), json!([])).await;
    let config = rk3s_scheduler::Config {
        secure_port: rk3s_datastore::testing::free_port().unwrap(),
        leader_elect_retry_period_seconds: 1,
        ..rk3s_scheduler::Config::default()
    };
    let started = rk3s_scheduler::start(config).await.unwrap();
    let addr = started.local_addr().expect("serving");
    assert_eq!(addr.ip().to_string(), "127.0.0.1");
    let _s = RunningScheduler::spawn({
        let c = c.clone();
        async move { started.run(c, std::future::pending()).await.unwrap() }
    });

    make_pod(&c, "fits", json!({}), json!({})).await;
    let big = json!({"containers": [{"name": "c", "image": "busybox",
        "resources": {"requests": {"cpu": "2"}}}]});
    make_pod(&c, "too-big", json!({}), big).await;
    assert_eq!(wait_bound(&c, &["fits"]).await, vec!["n1"]);

    assert_eq!(
        probe(addr, "/healthz", TIMEOUT).await.unwrap(),
        (200, "ok".to_string())
    );
    let (code, verbose) = probe(addr, "/healthz?verbose", TIMEOUT).await.unwrap();
    assert_eq!(code, 200);
    assert_eq!(
        verbose,
        "[+]ping ok\n[+]leaderElection ok\nhealthz check passed\n"
    );
    assert_eq!(probe(addr, "/readyz", TIMEOUT).await.unwrap().1, "ok");
    assert_eq!(
        probe(addr, "/livez/leaderElection", TIMEOUT)
            .await
            .unwrap()
            .1,
        "ok"
    );

    let metrics = eventually("the unschedulable attempt counted", || async {
        let (_, body) = probe(addr, "/metrics", TIMEOUT).await.unwrap();
        body.contains(
            "scheduler_schedule_attempts_total{profile=\"default-scheduler\",result=\"unschedulable\"}",
        )
        .then_some(body)
    })
    .await;
    for line in [
        "# TYPE scheduler_schedule_attempts_total counter",
        "scheduler_schedule_attempts_total{profile=\"default-scheduler\",result=\"scheduled\"} 1\n",
        "leader_election_master_status{name=\"kube-scheduler\"} 1\n",
        "scheduler_pending_pods{queue=\"active\"} 0\n",
        // The pod that does not fit waits for a cluster event.
        "scheduler_pending_pods{queue=\"unschedulable\"} 1\n",
    ] {
        assert!(metrics.contains(line), "{line:?} in\n{metrics}");
    }
}

/// A taken secure port is a startup error naming the address; port 0 serves nothing.
#[tokio::test]
async fn a_taken_port_fails_the_start() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let err = rk3s_scheduler::start(rk3s_scheduler::Config {
        secure_port: port,
        ..rk3s_scheduler::Config::default()
    })
    .await
    .unwrap_err();
    assert!(
        err.to_string()
            .starts_with(&format!("cannot listen on 127.0.0.1:{port}: ")),
        "{err}"
    );
    let none = rk3s_scheduler::start(rk3s_scheduler::Config {
        secure_port: 0,
        ..rk3s_scheduler::Config::default()
    })
    .await
    .unwrap();
    assert_eq!(none.local_addr(), None);
}
