//! `pods/proxy` and `services/proxy`: the apiserver as an HTTP proxy to pod IPs, driven by
//! kubectl (`get --raw`, `kubectl proxy`) and kube-rs.
//!
//! There are no real pods: a **pod stand-in** is a plain HTTP server on 127.0.0.2 (its pod's
//! `status.podIP`, written through the status subresource) that answers with what it was sent.
//! Upstream refuses loopback pod IPs ("address not allowed"), so the server under test is
//! started with `proxy_to_loopback(true)`; everything else is upstream's behaviour.

mod common;

use std::net::SocketAddr;

use common::TestServer;
use futures::{SinkExt as _, StreamExt as _};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;

const POD_IP: &str = "127.0.0.2";

/// The pod stand-in: echoes the request as JSON; `/redirect` answers 302 to `/landing`;
/// `/links` is an HTML page of links ([`html_page`]);
/// a WebSocket upgrade echoes every message.
async fn start_pod() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind((POD_IP, 0))
        .await
        .expect("bind 127.0.0.2");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service_fn(handle))
                    .with_upgrades()
                    .await;
            });
        }
    });
    addr
}

async fn handle(
    mut req: Request<Incoming>,
) -> Result<Response<axum::body::Body>, std::convert::Infallible> {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    if let Some(key) = header("sec-websocket-key") {
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let Ok(up) = on.await else { return };
            let mut ws =
                WebSocketStream::from_raw_socket(TokioIo::new(up), Role::Server, None).await;
            while let Some(Ok(msg)) = ws.next().await {
                if msg.is_close() || ws.send(msg).await.is_err() {
                    break;
                }
            }
        });
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
        return Ok(Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("connection", "Upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-accept", accept)
            .header("sec-websocket-protocol", "v4.channel.k8s.io")
            .body(axum::body::Body::empty())
            .expect("response"));
    }
    if req.uri().path() == "/links" {
        return Ok(html_page(
            req.uri().query().unwrap_or(""),
            &header("host").unwrap_or_default(),
        ));
    }
    if req.uri().path() == "/redirect" {
        return Ok(Response::builder()
            .status(StatusCode::FOUND)
            .header("location", "/landing")
            .body(axum::body::Body::empty())
            .expect("response"));
    }
    let seen = json!({
        "method": req.method().as_str(),
        "path": req.uri().path(),
        "query": req.uri().query().unwrap_or(""),
        "forwardedUri": header("x-forwarded-uri"),
        "authorization": header("authorization"),
        "impersonate": header("impersonate-user"),
    });
    let body = axum::body::to_bytes(axum::body::Body::new(req.into_body()), 1 << 20)
        .await
        .unwrap_or_default();
    let mut seen = seen;
    seen["body"] = String::from_utf8_lossy(&body).into_owned().into();
    Ok(Response::builder()
        .header("content-type", "application/json")
        .header("access-control-allow-origin", "*")
        .header("x-pod", "web")
        .body(axum::body::Body::from(seen.to_string()))
        .expect("response"))
}

/// An HTML page with links of every kind: absolute paths, the stand-in's own address (the
/// `Host` it was sent), relative, another host; `enc=gzip|deflate|br` encodes it (`br`: only
/// labelled), `type=` sets another content type.
fn html_page(query: &str, host: &str) -> Response<axum::body::Body> {
    use std::io::Write as _;
    let param = |k: &str| {
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
            .unwrap_or("")
            .to_string()
    };
    let html = html_links(&format!("http://{host}"));
    let body = match param("enc").as_str() {
        "gzip" => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(html.as_bytes()).expect("gzip");
            e.finish().expect("gzip")
        }
        "deflate" => {
            let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(html.as_bytes()).expect("deflate");
            e.finish().expect("deflate")
        }
        _ => html.into_bytes(),
    };
    let content_type = match param("type").as_str() {
        "" => "text/html; charset=utf-8".to_string(),
        t => t.replace("%2F", "/"),
    };
    let mut res = Response::builder()
        .header("content-type", content_type)
        .header("content-length", body.len());
    if !param("enc").is_empty() {
        res = res.header("content-encoding", param("enc"));
    }
    res.body(axum::body::Body::from(body)).expect("response")
}

/// The page [`html_page`] serves, its backend links on `backend` (`http://host:port`).
fn html_links(backend: &str) -> String {
    format!(
        "<!DOCTYPE html><html><head><link rel=\"stylesheet\" href=\"/style.css\"></head>\n\
         <body><a href=\"/abs/page?x=1&amp;y=2\">abs</a> <a href=\"rel/page\">rel</a>\n\
         <a href=\"{backend}/backend/\">backend</a> <a href=\"https://example.com/x\">other</a>\n\
         <img src=\"/img.png\" alt=\"/alt\"><p data-href=\"/not\">/text</p>\n\
         <form action=\"/submit\"><input formaction=\"/go\"></form></body></html>"
    )
}

/// A server that may dial loopback pod IPs, a pod `web` on the stand-in (its one declared
/// container port is the stand-in's), a service `web` with port `http` (80) whose Endpoints
/// hold that pod.
async fn cluster() -> (TestServer, SocketAddr) {
    let server = TestServer::start_configured(|a| a.proxy_to_loopback(true)).await;
    let pod = start_pod().await;
    server
        .kubectl_ok(&["create", "serviceaccount", "default"])
        .await;
    let docs = [
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
            "spec": {"containers": [
                {"name": "side", "image": "busybox"},
                {"name": "app", "image": "busybox", "ports": [{"containerPort": pod.port()}]},
            ]},
        }),
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "noip", "namespace": "default"},
            "spec": {"containers": [{"name": "app", "image": "busybox"}]},
        }),
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"selector": {"app": "web"}, "ports": [
                {"name": "http", "port": 80, "targetPort": pod.port()},
                {"name": "other", "port": 81, "targetPort": 9},
            ]},
        }),
        json!({
            "apiVersion": "v1", "kind": "Endpoints",
            "metadata": {"name": "web", "namespace": "default"},
            "subsets": [{
                "addresses": [{"ip": POD_IP, "targetRef": {"kind": "Pod", "namespace": "default", "name": "web"}}],
                "ports": [{"name": "http", "port": pod.port()}],
            }],
        }),
    ];
    for doc in docs {
        let out = server
            .kubectl_stdin(&["create", "-f", "-"], &doc.to_string())
            .await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let status = json!({"status": {"podIP": POD_IP, "podIPs": [{"ip": POD_IP}]}}).to_string();
    server
        .kubectl_ok(&[
            "patch",
            "pod",
            "web",
            "--subresource=status",
            "--type=merge",
            "-p",
            &status,
        ])
        .await;
    (server, pod)
}

/// `kubectl get --raw <path>` as JSON.
async fn raw_json(server: &TestServer, path: &str) -> Value {
    let out = server.kubectl_ok(&["get", "--raw", path]).await;
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{path}: {e}: {out}"))
}

/// The error kubectl prints for `get --raw <path>`.
async fn raw_error(server: &TestServer, path: &str) -> String {
    let out = server.kubectl(&["get", "--raw", path]).await;
    assert!(!out.status.success(), "{path} succeeded");
    String::from_utf8_lossy(&out.stderr).trim().to_string()
}

/// A raw request through kube-rs: status, headers, body.
async fn send(
    client: &kube::Client,
    method: &str,
    path: &str,
    body: &str,
) -> (StatusCode, http::HeaderMap, String) {
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .body(kube::client::Body::from(body.as_bytes().to_vec()))
        .expect("request");
    let res = client.send(req).await.expect("response");
    let (parts, body) = res.into_parts();
    let bytes = axum::body::to_bytes(axum::body::Body::new(body), 1 << 20)
        .await
        .expect("body");
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&bytes).into_owned(),
    )
}

#[tokio::test]
async fn pods_proxy_reaches_the_pod_ip() {
    let (server, pod) = cluster().await;
    // No port: the first declared container port.
    let v = raw_json(
        &server,
        "/api/v1/namespaces/default/pods/web/proxy/echo/a/?x=1&y=2",
    )
    .await;
    assert_eq!(v["method"], "GET");
    assert_eq!(v["path"], "/echo/a/");
    assert_eq!(v["query"], "x=1&y=2");
    assert_eq!(
        v["forwardedUri"],
        "/api/v1/namespaces/default/pods/web/proxy/echo/a/"
    );
    assert_eq!(v["authorization"], Value::Null, "credentials stay here");
    // `name:port` and `scheme:name:port`.
    let port = pod.port();
    let v = raw_json(
        &server,
        &format!("/api/v1/namespaces/default/pods/web:{port}/proxy/healthz"),
    )
    .await;
    assert_eq!(v["path"], "/healthz");
    let v = raw_json(
        &server,
        &format!("/api/v1/namespaces/default/pods/http:web:{port}/proxy/"),
    )
    .await;
    assert_eq!(v["path"], "/");

    // Other methods, with their bodies; what the backend sent comes back untouched but for
    // the CORS headers.
    let client = server.client().await;
    let base = format!("/api/v1/namespaces/default/pods/web:{port}/proxy");
    for method in ["POST", "PUT", "PATCH", "DELETE"] {
        let (status, headers, body) =
            send(&client, method, &format!("{base}/items"), "payload").await;
        assert_eq!(status, StatusCode::OK, "{method}: {body}");
        let v: Value = serde_json::from_str(&body).expect("json");
        assert_eq!(
            (v["method"].as_str(), v["body"].as_str()),
            (Some(method), Some("payload"))
        );
        assert_eq!(
            headers.get("x-pod").map(|v| v.as_bytes()),
            Some(&b"web"[..])
        );
        assert!(headers.get("access-control-allow-origin").is_none());
    }
    // `.../proxy` without the slash is redirected to it; the backend's own redirects stay
    // under the proxy path.
    let (status, headers, _) = send(&client, "GET", &format!("{base}?a=b"), "").await;
    assert_eq!(status, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(
        headers.get("location").and_then(|v| v.to_str().ok()),
        Some(format!("{base}/?a=b").as_str())
    );
    let (status, headers, _) = send(&client, "GET", &format!("{base}/redirect"), "").await;
    assert_eq!(status, StatusCode::FOUND);
    assert_eq!(
        headers.get("location").and_then(|v| v.to_str().ok()),
        Some(format!("{base}/landing").as_str())
    );

    // Upstream's refusals.
    assert_eq!(
        raw_error(&server, "/api/v1/namespaces/default/pods/noip/proxy/").await,
        "Error from server (BadRequest): address not allowed"
    );
    assert_eq!(
        raw_error(&server, "/api/v1/namespaces/default/pods/ftp:web:21/proxy/").await,
        "Error from server (BadRequest): invalid pod request \"ftp:web:21\""
    );
    assert_eq!(
        raw_error(&server, "/api/v1/namespaces/default/pods/ghost/proxy/").await,
        "Error from server (NotFound): pods \"ghost\" not found"
    );
    let closed = {
        let l = std::net::TcpListener::bind((POD_IP, 0)).expect("bind");
        l.local_addr().expect("addr").port()
    };
    assert_eq!(
        raw_error(
            &server,
            &format!("/api/v1/namespaces/default/pods/web:{closed}/proxy/")
        )
        .await,
        format!(
            "Error from server (ServiceUnavailable): error trying to reach service: dial tcp {POD_IP}:{closed}: connect: connection refused"
        )
    );
}

#[tokio::test]
async fn services_proxy_goes_to_an_endpoint_of_the_named_port() {
    let (server, _pod) = cluster().await;
    // The port by number (→ its name), by name, with a scheme, or none (the unnamed port).
    for id in ["web:80", "web:http", "http:web:http"] {
        let v = raw_json(
            &server,
            &format!("/api/v1/namespaces/default/services/{id}/proxy/status?full=1"),
        )
        .await;
        assert_eq!(v["path"], "/status", "{id}");
        assert_eq!(v["query"], "full=1");
        assert_eq!(
            v["forwardedUri"],
            format!("/api/v1/namespaces/default/services/{id}/proxy/status")
        );
    }
    // Upstream's 503s and 404s.
    assert_eq!(
        raw_error(
            &server,
            "/api/v1/namespaces/default/services/web:8080/proxy/"
        )
        .await,
        "Error from server (ServiceUnavailable): no service port 8080 found for service \"web\""
    );
    assert_eq!(
        raw_error(
            &server,
            "/api/v1/namespaces/default/services/web:other/proxy/"
        )
        .await,
        "Error from server (ServiceUnavailable): no endpoints available for service \"web:other\""
    );
    assert_eq!(
        raw_error(&server, "/api/v1/namespaces/default/services/web/proxy/").await,
        "Error from server (ServiceUnavailable): no endpoints available for service \"web\"",
        "no port name: the unnamed port, which the endpoints do not carry"
    );
    assert_eq!(
        raw_error(
            &server,
            "/api/v1/namespaces/default/services/ghost:80/proxy/"
        )
        .await,
        "Error from server (NotFound): services \"ghost\" not found"
    );
    assert_eq!(
        raw_error(&server, "/api/v1/namespaces/default/services/ghost/proxy/").await,
        "Error from server (NotFound): endpoints \"ghost\" not found"
    );
    // Endpoints without subsets, and an address whose pod does not have that IP.
    for doc in [
        json!({"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "empty", "namespace": "default"}}),
        json!({
            "apiVersion": "v1", "kind": "Endpoints",
            "metadata": {"name": "stale", "namespace": "default"},
            "subsets": [{
                "addresses": [{"ip": "127.0.0.3", "targetRef": {"kind": "Pod", "namespace": "default", "name": "web"}}],
                "ports": [{"name": "http", "port": 80}],
            }],
        }),
    ] {
        server
            .kubectl_stdin(&["create", "-f", "-"], &doc.to_string())
            .await;
    }
    assert_eq!(
        raw_error(
            &server,
            "/api/v1/namespaces/default/services/empty:http/proxy/"
        )
        .await,
        "Error from server (ServiceUnavailable): no endpoints available for service \"empty\""
    );
    assert_eq!(
        raw_error(
            &server,
            "/api/v1/namespaces/default/services/stale:http/proxy/"
        )
        .await,
        "Error from server (ServiceUnavailable): no endpoints available for service \"stale:http\""
    );
}

#[tokio::test]
async fn proxy_verbs_follow_the_method() {
    let (server, _pod) = cluster().await;
    let reader = server.user_kubeconfig("reader", &[]);
    let out = server
        .kubectl_stdin(
            &["apply", "-f", "-"],
            &json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                "metadata": {"name": "proxy-reader", "namespace": "default"},
                "rules": [{"apiGroups": [""], "resources": ["services/proxy", "pods/proxy"], "verbs": ["get"]}],
            })
            .to_string(),
        )
        .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    server
        .kubectl_ok(&[
            "create",
            "rolebinding",
            "proxy-reader",
            "--role=proxy-reader",
            "--user=reader",
        ])
        .await;
    let path = "/api/v1/namespaces/default/services/web:http/proxy/x";
    // RBAC follows its watch: wait until the binding is in effect.
    let mut allowed = false;
    for _ in 0..200 {
        if server
            .kubectl_as(&reader, &["get", "--raw", path])
            .await
            .status
            .success()
        {
            allowed = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert!(allowed, "get on services/proxy is allowed");
    let client = server.client_from(&reader).await;
    let (status, _, body) = send(&client, "POST", path, "x").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let v: Value = serde_json::from_str(&body).expect("status");
    assert_eq!(
        v["message"],
        "services \"web:http\" is forbidden: User \"reader\" cannot create resource \"services/proxy\" in API group \"\" in the namespace \"default\""
    );
    let out = server
        .kubectl_as(
            &reader,
            &["get", "--raw", "/api/v1/namespaces/default/pods/web/log"],
        )
        .await;
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot get resource \"pods/log\""),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn upgrades_pass_through_to_the_pod() {
    let (server, _pod) = cluster().await;
    let client = server.client().await;
    let req = http::Request::builder()
        .uri("/api/v1/namespaces/default/pods/web/proxy/ws")
        .body(Vec::new())
        .expect("request");
    let mut ws = client.connect(req).await.expect("upgraded").into_stream();
    for text in ["one", "two"] {
        ws.send(Message::text(text)).await.expect("send");
        let back = ws.next().await.expect("message").expect("frame");
        assert_eq!(back.into_text().expect("text").as_str(), text);
    }
}

#[tokio::test]
async fn kubectl_proxy_serves_service_paths() {
    let (server, _pod) = cluster().await;
    let mut child = tokio::process::Command::new(common::kubectl_bin())
        .env("KUBECONFIG", &server.kubeconfig)
        .env("HOME", server.dir.path())
        .args(["proxy", "--port=0"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("kubectl proxy");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    tokio::io::BufReader::new(stdout)
        .read_line(&mut line)
        .await
        .expect("first line");
    // "Starting to serve on 127.0.0.1:<port>"
    let addr = line.trim().rsplit(' ').next().expect("address").to_string();
    let mut tcp = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    tcp.write_all(
        format!(
            "GET /api/v1/namespaces/default/services/http:web:http/proxy/page?q=1 HTTP/1.0\r\nHost: {addr}\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .expect("request");
    let mut response = String::new();
    tcp.read_to_string(&mut response).await.expect("response");
    assert!(response.starts_with("HTTP/1.0 200"), "{response}");
    let body = response.split("\r\n\r\n").nth(1).expect("body");
    let v: Value = serde_json::from_str(body).expect("json");
    assert_eq!(
        (v["path"].as_str(), v["query"].as_str()),
        (Some("/page"), Some("q=1"))
    );
    child.kill().await.expect("kill kubectl proxy");
}

/// HTML answers have their links on the backend rewritten under the proxy path, as upstream's
/// proxy transport (`atomsToAttrs`): plain, gzip and deflate bodies (sent encoded as they
/// came); other content types, unknown encodings and relative or foreign links untouched.
#[tokio::test]
async fn html_links_are_rewritten_under_the_proxy_path() {
    use std::io::Read as _;
    let (server, pod) = cluster().await;
    let client = server.client().await;
    let backend = format!("http://{pod}");
    let expected = |p: &str| {
        format!(
            "<!DOCTYPE html><html><head><link rel=\"stylesheet\" href=\"{p}/style.css\"></head>\n\
             <body><a href=\"{p}/abs/page?x=1&amp;y=2\">abs</a> <a href=\"rel/page\">rel</a>\n\
             <a href=\"{p}/backend/\">backend</a> <a href=\"https://example.com/x\">other</a>\n\
             <img src=\"{p}/img.png\" alt=\"/alt\"><p data-href=\"/not\">/text</p>\n\
             <form action=\"{p}/submit\"><input formaction=\"{p}/go\"></form></body></html>"
        )
    };
    let raw = |client: kube::Client, path: String| async move {
        let req = http::Request::builder()
            .uri(&path)
            .body(kube::client::Body::empty())
            .expect("request");
        let res = client.send(req).await.expect("response");
        let (parts, body) = res.into_parts();
        let bytes = axum::body::to_bytes(axum::body::Body::new(body), 1 << 20)
            .await
            .expect("body");
        assert_eq!(parts.status, StatusCode::OK, "{path}");
        (parts.headers, bytes.to_vec())
    };
    for prefix in [
        "/api/v1/namespaces/default/pods/web/proxy",
        "/api/v1/namespaces/default/services/web:http/proxy",
    ] {
        let (headers, body) = raw(client.clone(), format!("{prefix}/links")).await;
        assert_eq!(String::from_utf8_lossy(&body), expected(prefix));
        assert_ne!(
            headers.get("content-length").and_then(|v| v.to_str().ok()),
            Some(html_links(&backend).len().to_string().as_str()),
            "the backend's length is not passed on"
        );
        for enc in ["gzip", "deflate"] {
            let (headers, body) = raw(client.clone(), format!("{prefix}/links?enc={enc}")).await;
            assert_eq!(
                headers
                    .get("content-encoding")
                    .and_then(|v| v.to_str().ok()),
                Some(enc)
            );
            let mut html = String::new();
            match enc {
                "gzip" => flate2::read::GzDecoder::new(&body[..])
                    .read_to_string(&mut html)
                    .expect("gzip"),
                _ => flate2::read::DeflateDecoder::new(&body[..])
                    .read_to_string(&mut html)
                    .expect("deflate"),
            };
            assert_eq!(html, expected(prefix), "{enc}");
        }
    }
    // Not HTML, or in an encoding the proxy does not understand: as the backend sent it.
    let prefix = "/api/v1/namespaces/default/pods/web/proxy";
    for query in [
        "type=text%2Fplain",
        "enc=br",
        "type=application%2Fxhtml%2Bxml",
    ] {
        let (_, body) = raw(client.clone(), format!("{prefix}/links?{query}")).await;
        assert_eq!(
            String::from_utf8_lossy(&body),
            html_links(&backend),
            "{query}"
        );
    }
}
