//! Request-header (front proxy) authentication: a client certificate signed by the
//! request-header CA with an allowed CN names the user in `X-Remote-*` headers; nobody else
//! can.

mod common;

use common::TestServer;
use serde_json::Value;

/// curl as the holder of `cert` with `headers`: (status code, body).
async fn curl(t: &TestServer, cert: &rk3s_apiserver::CertKey, headers: &[&str]) -> (u16, String) {
    let dir = t.dir.path();
    let n = rand_suffix();
    let (ca, crt, key) = (
        dir.join(format!("ca-{n}.crt")),
        dir.join(format!("c-{n}.crt")),
        dir.join(format!("c-{n}.key")),
    );
    std::fs::write(&ca, t.server.ca_pem()).expect("CA written");
    std::fs::write(&crt, &cert.cert_pem).expect("cert written");
    std::fs::write(&key, &cert.key_pem).expect("key written");
    let mut cmd = tokio::process::Command::new("curl");
    // HTTP/1.1: over HTTP/2 curl sometimes reports a stream error when a 401 comes before it
    // finished sending the body.
    cmd.args([
        "-sS",
        "--http1.1",
        "-X",
        "POST",
        "-w",
        "\n%{http_code}",
        "--cacert",
    ])
    .arg(&ca)
    .arg("--cert")
    .arg(&crt)
    .arg("--key")
    .arg(&key)
    .args(["-H", "Content-Type: application/json", "-d"])
    .arg(r#"{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}"#);
    for h in headers {
        cmd.args(["-H", h]);
    }
    let out = cmd
        .arg(format!(
            "{}/apis/authentication.k8s.io/v1/selfsubjectreviews",
            t.server.url()
        ))
        .output()
        .await
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_front_proxy_names_the_user_in_headers() {
    let t = TestServer::start().await;
    let proxy = t
        .server
        .pki()
        .issue_proxy_client_cert("system:auth-proxy")
        .expect("proxy certificate");
    let (code, body) = curl(
        &t,
        &proxy,
        &[
            "X-Remote-User: alice",
            "X-Remote-Group: devs",
            "X-Remote-Group: ops",
            "X-Remote-Extra-Scopes: read",
            "X-Remote-Extra-Acme.com%2Fproject: p1",
        ],
    )
    .await;
    assert_eq!(code, 201, "{body}");
    let v: Value = serde_json::from_str(&body).expect("JSON");
    let info = &v["status"]["userInfo"];
    assert_eq!(info["username"], "alice", "{v}");
    assert_eq!(
        info["groups"],
        serde_json::json!(["devs", "ops", "system:authenticated"])
    );
    assert_eq!(info["extra"]["scopes"], serde_json::json!(["read"]));
    assert_eq!(info["extra"]["acme.com/project"], serde_json::json!(["p1"]));

    // Without a user header the proxy's certificate authenticates nobody.
    let (code, body) = curl(&t, &proxy, &[]).await;
    assert_eq!(code, 401, "{body}");

    // A request-header certificate with a CN that is not allowed: 401.
    let other = t
        .server
        .pki()
        .issue_proxy_client_cert("not-the-proxy")
        .expect("certificate");
    let (code, _) = curl(&t, &other, &["X-Remote-User: alice"]).await;
    assert_eq!(code, 401);

    // A client certificate of the client CA cannot use the headers: it stays who it is.
    let jane = t
        .server
        .pki()
        .issue_client_cert("jane", &[])
        .expect("certificate");
    let (code, body) = curl(&t, &jane, &["X-Remote-User: alice"]).await;
    assert_eq!(code, 201, "{body}");
    let v: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(v["status"]["userInfo"]["username"], "jane");
}
