//! Leader election through the `kube-system/kube-scheduler` Lease on a real apiserver.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::TestServer;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use rk3s_scheduler::leader::{LeaderElector, LeaseConfig};

fn config(identity: &str) -> LeaseConfig {
    LeaseConfig {
        namespace: "kube-system".into(),
        name: "kube-scheduler".into(),
        identity: identity.into(),
        lease_duration: Duration::from_secs(2),
        renew_deadline: Duration::from_millis(1500),
        retry_period: Duration::from_millis(200),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_at_a_time_and_takeover_after_expiry_or_release() {
    let t = TestServer::start().await;
    let c = t.client().await;
    let mut a = LeaderElector::new(c.clone(), config("a"));
    let mut b = LeaderElector::new(c.clone(), config("b"));
    assert!(a.try_acquire_or_renew().await.unwrap());
    assert!(!b.try_acquire_or_renew().await.unwrap());
    assert!(a.try_acquire_or_renew().await.unwrap(), "the holder renews");
    let lease = Api::<Lease>::namespaced(c.clone(), "kube-system")
        .get("kube-scheduler")
        .await
        .unwrap();
    let spec = lease.spec.unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("a"));
    assert_eq!(spec.lease_duration_seconds, Some(2));

    // a stops renewing: b takes over once it has seen the same record for a lease duration.
    tokio::time::timeout(Duration::from_secs(5), b.acquire())
        .await
        .expect("b acquires after expiry");
    assert!(!a.try_acquire_or_renew().await.unwrap(), "a lost it");
    let lease = Api::<Lease>::namespaced(c.clone(), "kube-system")
        .get("kube-scheduler")
        .await
        .unwrap();
    let spec = lease.spec.unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("b"));
    assert_eq!(spec.lease_transitions, Some(1));

    // Releasing lets a take it at once.
    b.release().await;
    tokio::time::timeout(Duration::from_millis(900), a.acquire())
        .await
        .expect("a acquires right after release");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_with_leader_election_schedules() {
    let t = TestServer::start().await;
    let c = t.client().await;
    common::make_node(&c, "n1", "4", serde_json::json!({}), serde_json::json!([])).await;
    let config = rk3s_scheduler::Config {
        leader_elect_retry_period_seconds: 1,
        secure_port: 0,
        ..rk3s_scheduler::Config::default()
    };
    let client = c.clone();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        rk3s_scheduler::run(config, client, async {
            let _ = rx.await;
        })
        .await
    });
    common::make_pod(&c, "p", serde_json::json!({}), serde_json::json!({})).await;
    assert_eq!(common::wait_bound(&c, &["p"]).await, vec!["n1"]);
    tx.send(()).unwrap();
    task.await.unwrap().unwrap();
    // Released on shutdown.
    let lease = Api::<Lease>::namespaced(c.clone(), "kube-system")
        .get("kube-scheduler")
        .await
        .unwrap();
    assert_eq!(lease.spec.unwrap().holder_identity, None);
}
