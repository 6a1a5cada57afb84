//! A component's secure port on loopback: health and metrics over HTTPS (self-signed),
//! asked with the insecure probe the apiserver's componentstatuses uses.

#![cfg(feature = "health")]
#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rk3s_common::health::Checks;
use rk3s_common::metrics::Registry;
use rk3s_common::serving::{ProbeError, SecureServing, ServingConfig, probe};

fn config(port: u16) -> ServingConfig {
    ServingConfig {
        bind_address: IpAddr::V4(Ipv4Addr::LOCALHOST),
        secure_port: port,
        tls_cert_file: None,
        tls_private_key_file: None,
    }
}

const TIMEOUT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn serves_health_and_metrics_over_https() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let serving = SecureServing::bind(&config(port)).await.unwrap().unwrap();
    let addr = serving.local_addr();
    assert_eq!(addr.port(), port);

    // The same port again: a startup error naming it.
    let err = SecureServing::bind(&config(port)).await.unwrap_err();
    assert!(
        err.to_string()
            .starts_with(&format!("cannot listen on 127.0.0.1:{port}: ")),
        "{err}"
    );

    let failing = Arc::new(AtomicBool::new(false));
    let checks = Checks::new();
    checks.add("leaderElection", {
        let failing = failing.clone();
        move || match failing.load(Ordering::SeqCst) {
            true => Err("lease not renewed".into()),
            false => Ok(()),
        }
    });
    let registry = Registry::new();
    registry
        .counter("things_total", "[ALPHA] Things.", &["kind"])
        .inc(&["a"]);
    let task = serving.serve(checks, registry);

    for path in ["/healthz", "/livez", "/readyz", "/healthz/ping"] {
        assert_eq!(
            probe(addr, path, TIMEOUT).await.unwrap(),
            (200, "ok".to_string()),
            "{path}"
        );
    }
    let (code, body) = probe(addr, "/readyz?verbose", TIMEOUT).await.unwrap();
    assert_eq!(code, 200);
    assert_eq!(
        body,
        "[+]ping ok\n[+]leaderElection ok\nreadyz check passed\n"
    );
    let (code, body) = probe(addr, "/metrics", TIMEOUT).await.unwrap();
    assert_eq!(code, 200);
    assert!(
        body.contains("# TYPE things_total counter\nthings_total{kind=\"a\"} 1\n"),
        "{body}"
    );
    assert_eq!(probe(addr, "/nothing", TIMEOUT).await.unwrap().0, 404);

    failing.store(true, Ordering::SeqCst);
    let (code, body) = probe(addr, "/healthz", TIMEOUT).await.unwrap();
    assert_eq!(code, 500);
    assert!(
        body.contains("[-]leaderElection failed: reason withheld\nhealthz check failed\n"),
        "{body}"
    );

    // Stopped: the port refuses, in Go's words.
    drop(task);
    let mut refused = None;
    for _ in 0..500 {
        if let Err(e @ ProbeError::Connect { .. }) = probe(addr, "/healthz", TIMEOUT).await
            && e.to_string().ends_with("connection refused")
        {
            refused = Some(e);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let refused = refused.expect("the port closes once the task is dropped");
    assert_eq!(
        refused.to_string(),
        format!(
            "Get \"https://127.0.0.1:{port}/healthz\": dial tcp 127.0.0.1:{port}: connect: \
             connection refused"
        )
    );
}

#[tokio::test]
async fn port_zero_serves_nothing_and_a_certificate_needs_its_key() {
    assert!(SecureServing::bind(&config(0)).await.unwrap().is_none());
    let half = ServingConfig {
        tls_cert_file: Some("/nowhere/tls.crt".into()),
        ..config(1)
    };
    let err = SecureServing::bind(&half).await.unwrap_err();
    assert!(err.to_string().contains("tls-private-key-file"), "{err}");
}
