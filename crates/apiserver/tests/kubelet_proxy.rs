//! The subresources the apiserver proxies to a kubelet (`pods/log`, `pods/exec`,
//! `pods/attach`, `pods/portforward`, `nodes/proxy`), driven by kubectl and kube-rs.
//!
//! There is no kubelet yet (it comes with the node-side issue): a **kubelet stand-in** plays
//! its role on :10250's API — an HTTPS server with a serving certificate from the cluster's
//! server CA that requires a client certificate from the client CA (as a real kubelet does),
//! serves `containerLogs`, and speaks the WebSocket `v5.channel.k8s.io` exec protocol for two
//! commands (`echo` prints its arguments, `cat` copies stdin to stdout) plus a raw echo for
//! upgraded port-forward streams. What is under test is the apiserver between the two.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use common::TestServer;
use futures::{SinkExt as _, StreamExt as _};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, AttachParams, LogParams};
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;

/// A whole body for the stand-in's responses.
fn full(s: impl Into<String>) -> axum::body::Body {
    axum::body::Body::from(s.into())
}

/// What the stand-in saw: the client identity of each connection and each request line.
#[derive(Default)]
struct Seen {
    clients: Vec<String>,
    requests: Vec<String>,
}

/// The kubelet stand-in: listens on 127.0.0.1:0 and serves until the test ends.
async fn start_kubelet(server: &TestServer) -> (SocketAddr, Arc<Mutex<Seen>>) {
    let pki = server.server.pki();
    let issuer = rcgen::Issuer::from_ca_cert_pem(
        &pki.server_ca.cert_pem,
        rcgen::KeyPair::from_pem(&pki.server_ca.key_pem).expect("server CA key"),
    )
    .expect("server CA");
    let key = rcgen::KeyPair::generate().expect("key");
    let params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "node-a".into()]).expect("params");
    let cert = params.signed_by(&key, &issuer).expect("serving cert");

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_der(&pki.client_ca.cert_pem) {
        roots.add(c).expect("client CA");
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .expect("verifier");
    let tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).expect("key der"),
        )
        .expect("tls config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(Mutex::new(Seen::default()));
    let seen2 = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let seen = seen2.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let client = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|c| common_name(c.as_ref()))
                    .unwrap_or_default();
                seen.lock().expect("lock").clients.push(client);
                let service = service_fn(move |req| handle(req, seen.clone()));
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    (addr, seen)
}

fn rustls_pki_der(pem: &str) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject as _;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .expect("pem")
}

fn common_name(der: &[u8]) -> String {
    let (_, cert) = x509_parser::parse_x509_certificate(der).expect("x509");
    cert.subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or_default()
        .to_string()
}

type Reply = Response<axum::body::Body>;

async fn handle(
    mut req: Request<Incoming>,
    seen: Arc<Mutex<Seen>>,
) -> Result<Reply, std::convert::Infallible> {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    seen.lock()
        .expect("lock")
        .requests
        .push(format!("{} {}", req.method(), req.uri()));
    let params: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let one: HashMap<String, String> = params.iter().cloned().collect();
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let reply = match segs.as_slice() {
        ["containerLogs", _ns, pod, container] => {
            let lines: Vec<String> = (1..=5)
                .map(|i| format!("{pod}/{container} line {i}\n"))
                .collect();
            let tail = one
                .get("tailLines")
                .and_then(|t| t.parse::<usize>().ok())
                .unwrap_or(lines.len())
                .min(lines.len());
            let lines = lines[lines.len() - tail..].to_vec();
            if one.get("follow").is_some_and(|f| f == "true") {
                // Streamed one line at a time, as a running container writes them.
                let stream = futures::stream::iter(lines).then(|l| async move {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    Ok::<_, std::io::Error>(l)
                });
                Response::new(axum::body::Body::from_stream(stream))
            } else {
                Response::new(full(lines.concat()))
            }
        }
        ["exec", _ns, _pod, _container] => {
            let commands: Vec<String> = params
                .iter()
                .filter(|(k, _)| k == "command")
                .map(|(_, v)| v.clone())
                .collect();
            websocket_exec(&mut req, commands)
        }
        ["portForward", _ns, _pod] => {
            // Any upgrade: switch, then echo every byte back.
            let upgrade = req
                .headers()
                .get("upgrade")
                .cloned()
                .unwrap_or_else(|| "SPDY/3.1".parse().expect("header"));
            let on = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                if let Ok(up) = on.await {
                    let mut io = TokioIo::new(up);
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = io.read(&mut buf).await {
                        if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            });
            Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header("connection", "Upgrade")
                .header("upgrade", upgrade)
                .body(full(""))
                .expect("response")
        }
        ["links"] => Response::builder()
            .header("content-type", "text/html")
            .body(full(
                r#"<a href="/logs/">logs</a> <a href="stats">stats</a>"#,
            ))
            .expect("response"),
        ["moved"] => Response::builder()
            .status(StatusCode::FOUND)
            .header("location", "/landing")
            .body(full(""))
            .expect("response"),
        _ => Response::builder()
            .header("content-type", "application/json")
            .body(full(json!({"path": path, "query": query}).to_string()))
            .expect("response"),
    };
    Ok(reply)
}

/// The `v5.channel.k8s.io` side of the kubelet: channel 0 stdin, 1 stdout, 3 the final Status,
/// 255 a close signal for a channel.
fn websocket_exec(req: &mut Request<Incoming>, commands: Vec<String>) -> Reply {
    let protocols = req
        .headers()
        .get("sec-websocket-protocol")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        return Response::builder()
            .status(StatusCode::BAD_REQUEST)
            .body(full("websocket upgrade expected"))
            .expect("response");
    };
    let protocol = ["v5.channel.k8s.io", "v4.channel.k8s.io"]
        .into_iter()
        .find(|p| protocols.split(',').any(|q| q.trim() == *p))
        .unwrap_or("v4.channel.k8s.io");
    let on = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let Ok(up) = on.await else { return };
        let mut ws = WebSocketStream::from_raw_socket(TokioIo::new(up), Role::Server, None).await;
        let send = |channel: u8, data: &[u8]| {
            let mut frame = vec![channel];
            frame.extend_from_slice(data);
            Message::binary(frame)
        };
        match commands.first().map(String::as_str) {
            Some("echo") => {
                let line = format!("{}\n", commands[1..].join(" "));
                let _ = ws.send(send(1, line.as_bytes())).await;
            }
            Some("cat") => {
                while let Some(Ok(msg)) = ws.next().await {
                    let data = msg.into_data();
                    match data.first() {
                        Some(0) => {
                            let _ = ws.send(send(1, &data[1..])).await;
                        }
                        // v5: "close stdin".
                        Some(255) => break,
                        _ => {}
                    }
                }
            }
            _ => {
                let status = json!({
                    "metadata": {}, "status": "Failure",
                    "message": "command terminated with non-zero exit code",
                    "reason": "NonZeroExitCode",
                    "details": {"causes": [{"reason": "ExitCode", "message": "3"}]},
                });
                let _ = ws.send(send(3, status.to_string().as_bytes())).await;
                let _ = ws.close(Some(normal_close())).await;
                return;
            }
        }
        let ok = json!({"metadata": {}, "status": "Success"});
        let _ = ws.send(send(3, ok.to_string().as_bytes())).await;
        let _ = ws.close(Some(normal_close())).await;
    });
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-accept", accept)
        .header("sec-websocket-protocol", protocol)
        .body(full(""))
        .expect("response")
}

/// Close code 1000: kubectl reads anything else (even 1005, no code) as an error.
fn normal_close() -> tokio_tungstenite::tungstenite::protocol::CloseFrame {
    tokio_tungstenite::tungstenite::protocol::CloseFrame {
        code: tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Normal,
        reason: "".into(),
    }
}

/// A node whose kubelet is the stand-in, and pods on it.
async fn cluster_with_kubelet() -> (TestServer, Arc<Mutex<Seen>>) {
    let server = TestServer::start().await;
    let (addr, seen) = start_kubelet(&server).await;
    let node = json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "node-a"},
        "status": {
            "addresses": [
                {"type": "Hostname", "address": "node-a"},
                {"type": "InternalIP", "address": "127.0.0.1"},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": addr.port()}},
        },
    });
    let web = json!(
    {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"nodeName": "node-a", "containers": [
            {"name": "app", "image": "busybox"},
            {"name": "sidecar", "image": "busybox"},
        ]},
    });
    let pending = json!(
    {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "pending", "namespace": "default"},
        "spec": {"containers": [{"name": "app", "image": "busybox"}]},
    });
    server
        .kubectl_ok(&["create", "serviceaccount", "default"])
        .await;
    for doc in [node, web, pending] {
        let out = server
            .kubectl_stdin(&["create", "-f", "-"], &doc.to_string())
            .await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    server
        .kubectl_ok(&["get", "node/node-a", "pod/web", "pod/pending"])
        .await;
    (server, seen)
}

#[tokio::test]
async fn kubectl_logs_reach_the_kubelet_as_the_apiserver() {
    let (server, seen) = cluster_with_kubelet().await;
    let out = server
        .kubectl_ok(&["logs", "web", "-c", "sidecar", "--tail=2"])
        .await;
    assert_eq!(out, "web/sidecar line 4\nweb/sidecar line 5\n");
    let out = server.kubectl_ok(&["logs", "-f", "web", "-c", "app"]).await;
    assert_eq!(out.lines().count(), 5, "{out}");
    assert!(out.ends_with("web/app line 5\n"), "{out}");
    {
        let seen = seen.lock().expect("lock");
        assert!(
            seen.clients.iter().all(|c| c == "system:apiserver"),
            "the apiserver presents its own certificate: {:?}",
            seen.clients
        );
        assert!(
            seen.requests
                .contains(&"GET /containerLogs/default/web/sidecar?tailLines=2".to_string()),
            "{:?}",
            seen.requests
        );
    }

    // Upstream's refusals, before anything reaches a kubelet.
    let out = server.kubectl(&["logs", "pending"]).await;
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "Error from server (BadRequest): pod pending does not have a host assigned"
    );
    // (kubectl checks container names itself; the raw request shows the server's answer.)
    let out = server
        .kubectl(&[
            "get",
            "--raw",
            "/api/v1/namespaces/default/pods/web/log?container=nope",
        ])
        .await;
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "Error from server (BadRequest): container nope is not valid for pod web"
    );
    let out = server
        .kubectl(&[
            "get",
            "--raw",
            "/api/v1/namespaces/default/pods/missing/log",
        ])
        .await;
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "Error from server (NotFound): pods \"missing\" not found"
    );
}

#[tokio::test]
async fn kubectl_exec_runs_over_websockets_through_the_apiserver() {
    let (server, seen) = cluster_with_kubelet().await;
    let out = server
        .kubectl_ok(&[
            "exec", "web", "-c", "app", "--", "echo", "hello", "&&", "world",
        ])
        .await;
    assert_eq!(out, "hello && world\n");
    // stdin flows the other way through the same joined connection.
    let out = server
        .kubectl_stdin(
            &["exec", "-i", "web", "-c", "app", "--", "cat"],
            "one\ntwo\n",
        )
        .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "one\ntwo\n");
    // The kubelet's exit status comes back to kubectl.
    let out = server
        .kubectl(&["exec", "web", "-c", "app", "--", "false"])
        .await;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("exit code 3"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let requests = seen.lock().expect("lock").requests.clone();
    assert!(
        requests.iter().any(|r| r.starts_with(
            "GET /exec/default/web/app?command=echo&command=hello&command=%26%26&command=world"
        )),
        "{requests:?}"
    );

    // kubectl's RBAC view: `view` may read logs but not exec.
    let viewer = server.user_kubeconfig("viewer", &[]);
    server
        .kubectl_ok(&[
            "create",
            "clusterrolebinding",
            "viewer",
            "--clusterrole=view",
            "--user=viewer",
        ])
        .await;
    let out = server
        .kubectl_as(&viewer, &["exec", "web", "-c", "app", "--", "echo", "x"])
        .await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot create resource \"pods/exec\""),
        "{err}"
    );
    let out = server
        .kubectl_as(&viewer, &["logs", "web", "-c", "app", "--tail=1"])
        .await;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "web/app line 5\n");
}

#[tokio::test]
async fn kube_rs_logs_and_exec() {
    let (server, _seen) = cluster_with_kubelet().await;
    let pods: Api<Pod> = Api::default_namespaced(server.client().await);
    let logs = pods
        .logs(
            "web",
            &LogParams {
                container: Some("app".into()),
                tail_lines: Some(1),
                ..LogParams::default()
            },
        )
        .await
        .expect("logs");
    assert_eq!(logs, "web/app line 5\n");
    let mut attached = pods
        .exec(
            "web",
            ["echo", "from", "kube-rs"],
            &AttachParams::default().container("app").stderr(false),
        )
        .await
        .expect("exec");
    let mut stdout = attached.stdout().expect("stdout");
    let mut text = String::new();
    stdout.read_to_string(&mut text).await.expect("read");
    assert_eq!(text, "from kube-rs\n");
    let status = attached
        .take_status()
        .expect("status")
        .await
        .expect("a status");
    assert_eq!(status.status.as_deref(), Some("Success"));
}

#[tokio::test]
async fn an_upgraded_port_forward_stream_is_joined_byte_for_byte() {
    let (server, _seen) = cluster_with_kubelet().await;
    // A raw client: what kubectl port-forward's SPDY dialer sends, then arbitrary bytes.
    let (cert, key) = server.admin_cert_files();
    let config = {
        use rustls::pki_types::pem::PemObject as _;
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pki_der(server.server.ca_pem()) {
            roots.add(c).expect("ca");
        }
        let certs = rustls_pki_der(&std::fs::read_to_string(cert).expect("cert"));
        let key = rustls::pki_types::PrivateKeyDer::from_pem_file(key).expect("key");
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .expect("client config")
    };
    let addr: SocketAddr = server
        .server
        .url()
        .trim_start_matches("https://")
        .parse()
        .expect("addr");
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(
            rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name"),
            tcp,
        )
        .await
        .expect("tls");
    tls.write_all(
        b"POST /api/v1/namespaces/default/pods/web/portforward?ports=8080 HTTP/1.1\r\n\
          Host: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\
          X-Stream-Protocol-Version: portforward.k8s.io\r\nContent-Length: 0\r\n\r\n",
    )
    .await
    .expect("request");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tls.read_exact(&mut byte).await.expect("response head");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: spdy/3.1"), "{head}");
    for chunk in [&b"\x80\x03\x00\x01binary"[..], b"and more", &[0u8; 700][..]] {
        tls.write_all(chunk).await.expect("write");
        let mut back = vec![0u8; chunk.len()];
        tls.read_exact(&mut back).await.expect("echo");
        assert_eq!(back, chunk);
    }
}

#[tokio::test]
async fn nodes_proxy_forwards_the_path_and_query() {
    let (server, seen) = cluster_with_kubelet().await;
    let out = server
        .kubectl_ok(&[
            "get",
            "--raw",
            "/api/v1/nodes/node-a/proxy/stats/summary?only_cpu_and_memory=true",
        ])
        .await;
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["path"], "/stats/summary");
    assert_eq!(v["query"], "only_cpu_and_memory=true");
    // A node that is not there, and one without an address.
    let out = server
        .kubectl(&["get", "--raw", "/api/v1/nodes/ghost/proxy/healthz"])
        .await;
    assert!(String::from_utf8_lossy(&out.stderr).contains("NotFound"));
    server
        .kubectl_stdin(
            &["create", "-f", "-"],
            &json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "bare"}}).to_string(),
        )
        .await;
    let out = server
        .kubectl(&["get", "--raw", "/api/v1/nodes/bare/proxy/healthz"])
        .await;
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no preferred addresses found"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !seen
            .lock()
            .expect("lock")
            .requests
            .iter()
            .any(|r| r.contains("healthz"))
    );
    // Discovery lists the proxied subresources as upstream does.
    let list = server.kubectl_ok(&["get", "--raw", "/api/v1"]).await;
    let list: serde_json::Value = serde_json::from_str(&list).expect("json");
    let names: Vec<&str> = list["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    for sub in [
        "pods/log",
        "pods/exec",
        "pods/attach",
        "pods/portforward",
        "nodes/proxy",
    ] {
        assert!(names.contains(&sub), "{sub} in {names:?}");
    }
}

/// `nodes/proxy` answers go through upstream's proxy transport: links of HTML pages and
/// redirects on the kubelet come back under the proxy path.
#[tokio::test]
async fn nodes_proxy_rewrites_links_and_redirects() {
    let (server, _seen) = cluster_with_kubelet().await;
    let out = server
        .kubectl_ok(&["get", "--raw", "/api/v1/nodes/node-a/proxy/links"])
        .await;
    assert_eq!(
        out.trim(),
        r#"<a href="/api/v1/nodes/node-a/proxy/logs/">logs</a> <a href="stats">stats</a>"#
    );
    let client = server.client().await;
    let req = http::Request::builder()
        .uri("/api/v1/nodes/node-a/proxy/moved")
        .body(kube::client::Body::empty())
        .expect("request");
    let res = client.send(req).await.expect("response");
    assert_eq!(res.status(), StatusCode::FOUND);
    assert_eq!(
        res.headers().get("location").and_then(|l| l.to_str().ok()),
        Some("/api/v1/nodes/node-a/proxy/landing")
    );
}
