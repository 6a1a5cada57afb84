//! The subresources served by a kubelet, proxied to it: `pods/log`, `pods/exec`, `pods/attach`,
//! `pods/portforward` and `nodes/proxy` (`pods/proxy` and `services/proxy` are dispatched from
//! here to [`super::pod_proxy`], which shares [`forward`]) (what `kubectl logs`, `exec`, `attach`, `cp`,
//! `port-forward` and `get --raw /api/v1/nodes/<n>/proxy/...` use).
//!
//! As upstream's apiserver: the pod's node is looked up, the kubelet's address is the node's
//! first address of the preferred types (`InternalIP`, `ExternalIP`, `Hostname`, K3s' order)
//! and port `status.daemonEndpoints.kubeletEndpoint.Port` (10250 when unset); the request goes
//! over TLS that trusts only the server CA (kubelets' serving certificates come from it) with
//! the apiserver's own client certificate (`system:apiserver`, [`crate::Pki::kubelet_client`]).
//! A plain response is streamed back as it arrives (`logs -f`); a protocol upgrade (WebSocket
//! `v5.channel.k8s.io` / `v4`, SPDY/3.1 with `X-Stream-Protocol-Version`, the port-forward
//! tunnel) is passed through untouched: the kubelet's `101 Switching Protocols` goes back to
//! the client, and from then on the two connections are joined byte for byte. The apiserver
//! does not translate between protocols, so the kubelet must speak what the client asks for.
//!
//! The client's own credentials never reach the kubelet: `Authorization` and the
//! `Impersonate-*` headers are dropped, with the hop-by-hop headers (but `Connection` and
//! `Upgrade` when upgrading). `nodes/proxy` answers go through upstream's proxy transport
//! ([`rewrite`]): a `Location` and the links of HTML bodies on the kubelet are rewritten
//! under the proxy path.

use std::net::IpAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, Request, StatusCode, Uri, header};
use axum::response::Response;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use serde_json::Value;
use tokio::net::TcpStream;
use tracing::Instrument as _;

use super::Target;
use super::object::decode_stored;

pub(super) mod rewrite;
use crate::registry::REGISTRY;
use crate::server::AppState;
use crate::status::ApiError;

/// The kubelet's port when the node does not publish one.
const DEFAULT_KUBELET_PORT: u16 = 10250;

/// The node address types tried, in order (K3s' `--kubelet-preferred-address-types`).
const PREFERRED_ADDRESS_TYPES: &[&str] = &["InternalIP", "ExternalIP", "Hostname"];

/// Headers that describe one hop, never forwarded (RFC 9110 §7.6.1), plus the client's
/// credentials.
const DROPPED_HEADERS: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "authorization",
    "host",
];

/// Whether `target` is one of the subresources this module serves.
pub(crate) fn is_proxied(target: &Target) -> bool {
    if !target.info.group.is_empty() || target.name.is_none() {
        return false;
    }
    matches!(
        (target.info.plural, target.subresource.as_deref()),
        (
            "pods",
            Some("log" | "exec" | "attach" | "portforward" | "proxy")
        ) | ("nodes" | "services", Some("proxy"))
    )
}

/// Takes the connection's pending upgrade out of a request, if the client asked for one.
#[derive(Debug)]
pub(crate) struct Upgrade(pub(crate) Option<OnUpgrade>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Upgrade {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Upgrade(parts.extensions.remove::<OnUpgrade>()))
    }
}

/// Where on the kubelet a request goes.
#[derive(Debug, PartialEq)]
struct Location {
    node: String,
    /// Path and query on the kubelet.
    path_and_query: String,
}

/// Serves a proxied subresource (see [`is_proxied`]).
pub(crate) async fn serve(
    state: &AppState,
    target: &Target,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: axum::body::Bytes,
    upgrade: Option<OnUpgrade>,
) -> Result<Response, ApiError> {
    let name = target.name.as_deref().unwrap_or_default();
    let sub = target.subresource.as_deref().unwrap_or_default();
    if sub == "proxy" && target.info.plural != "nodes" {
        return super::pod_proxy::serve(state, target, method, uri, headers, body, upgrade).await;
    }
    let location = match target.info.plural {
        "nodes" => {
            check_method(
                method,
                &[
                    Method::GET,
                    Method::POST,
                    Method::PUT,
                    Method::PATCH,
                    Method::DELETE,
                    Method::HEAD,
                    Method::OPTIONS,
                ],
            )?;
            node_proxy_location(name, uri)?
        }
        _ => {
            let allowed: &[Method] = match sub {
                "log" => &[Method::GET],
                // WebSocket clients upgrade a GET, SPDY clients a POST.
                _ => &[Method::GET, Method::POST],
            };
            check_method(method, allowed)?;
            let ns = target.namespace.as_deref().unwrap_or("default");
            let pods = target.info.as_ref();
            let (_, kv) = state.store.get(&pods.key(Some(ns), name), 0).await?;
            let pod = decode_stored(&kv.ok_or_else(|| ApiError::not_found(pods, name))?)?;
            pod_location(&pod, ns, name, sub, uri.query().unwrap_or(""))?
        }
    };
    let (node_name, port_override) = split_node_port(&location.node);
    let nodes = REGISTRY
        .find("", "v1", "nodes")
        .ok_or_else(|| ApiError::internal("nodes are not registered"))?;
    let (_, kv) = state.store.get(&nodes.key(None, node_name), 0).await?;
    let node = decode_stored(&kv.ok_or_else(|| ApiError::not_found(nodes, node_name))?)?;
    let (host, port) = kubelet_address(&node, port_override)?;
    let span = tracing::debug_span!("kubelet", node = node_name, %host, port, subresource = sub);
    let url = format!(
        "https://{}{}",
        authority(&host, port),
        location.path_and_query
    );
    let fail = |what: String| ApiError::internal(format!("{} {url:?}: {what}", title(method)));
    let response = forward(
        Hop {
            tls: Some(state.kubelet_tls.clone()),
            host: &host,
            port,
            method,
            path_and_query: &location.path_and_query,
            headers,
            extra_headers: Vec::new(),
            body,
            upgrade,
        },
        &fail,
    )
    .instrument(span)
    .await?;
    if target.info.plural != "nodes" {
        return Ok(response);
    }
    // `nodes/proxy` goes through upstream's proxy transport: links back under the proxy path.
    let backend = authority(&host, port);
    let path = uri.path();
    let marker = format!("/nodes/{name}/proxy");
    let prefix = path
        .find(&marker)
        .map_or(path, |i| &path[..i + marker.len()]);
    let urls = rewrite::UrlRewriter {
        backend: &backend,
        request_host: super::pod_proxy::request_host(headers, uri),
        prefix,
    };
    rewrite::rewrite_response(response, urls).await
}

fn check_method(method: &Method, allowed: &[Method]) -> Result<(), ApiError> {
    if allowed.contains(method) {
        Ok(())
    } else {
        Err(ApiError::method_not_allowed())
    }
}

/// `nodes/<name>[:port]/proxy/<path>` → `<path>?<query>` on that node's kubelet.
fn node_proxy_location(name: &str, uri: &Uri) -> Result<Location, ApiError> {
    let path = uri.path();
    let marker = format!("/nodes/{name}/proxy");
    let rest = path
        .find(&marker)
        .map(|i| &path[i + marker.len()..])
        .ok_or_else(|| ApiError::bad_request(format!("invalid node proxy path {path:?}")))?;
    let mut path_and_query = if rest.starts_with('/') {
        rest.to_string()
    } else {
        format!("/{rest}")
    };
    if let Some(q) = uri.query() {
        path_and_query.push('?');
        path_and_query.push_str(q);
    }
    Ok(Location {
        node: name.to_string(),
        path_and_query,
    })
}

/// `name:port` (a node proxy to another port of the node) → (name, port).
fn split_node_port(node: &str) -> (&str, Option<u16>) {
    match node.rsplit_once(':') {
        Some((n, p)) => match p.parse() {
            Ok(port) => (n, Some(port)),
            Err(_) => (node, None),
        },
        None => (node, None),
    }
}

/// The kubelet request for a pod subresource, with upstream's checks and messages.
fn pod_location(
    pod: &Value,
    ns: &str,
    name: &str,
    sub: &str,
    query: &str,
) -> Result<Location, ApiError> {
    let params: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let param = |k: &str| {
        params
            .iter()
            .rev()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    let node = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            ApiError::bad_request(format!("pod {name} does not have a host assigned"))
        })?;
    let mut out = url::form_urlencoded::Serializer::new(String::new());
    let path = match sub {
        "log" => {
            let container = container_of(pod, name, param("container"))?;
            for key in [
                "follow",
                "previous",
                "sinceSeconds",
                "sinceTime",
                "timestamps",
                "tailLines",
                "limitBytes",
                "stream",
            ] {
                if let Some(v) = param(key) {
                    out.append_pair(key, v);
                }
            }
            format!("/containerLogs/{ns}/{name}/{container}")
        }
        "exec" | "attach" => {
            let phase = pod
                .pointer("/status/phase")
                .and_then(Value::as_str)
                .unwrap_or("");
            if matches!(phase, "Succeeded" | "Failed") {
                return Err(ApiError::bad_request(format!(
                    "cannot {sub} into a container in a completed pod; current phase is {phase}"
                )));
            }
            let container = container_of(pod, name, param("container"))?;
            let flag = |k: &str| param(k).is_some_and(|v| v == "1" || v == "true");
            if !flag("stdin") && !flag("stdout") && !flag("stderr") {
                return Err(ApiError::bad_request(
                    "you must specify at least 1 of stdin, stdout, stderr",
                ));
            }
            if sub == "exec" {
                let commands: Vec<&str> = params
                    .iter()
                    .filter(|(k, _)| k == "command")
                    .map(|(_, v)| v.as_str())
                    .collect();
                if commands.is_empty() {
                    return Err(ApiError::bad_request(
                        "you must specify at least one command for the container",
                    ));
                }
                for c in commands {
                    out.append_pair("command", c);
                }
            }
            // Upstream's kubelet names the streams `input`, `output`, `error`.
            for (client, kubelet) in [
                ("stdin", "input"),
                ("stdout", "output"),
                ("stderr", "error"),
                ("tty", "tty"),
            ] {
                if flag(client) {
                    out.append_pair(kubelet, "1");
                }
            }
            format!("/{sub}/{ns}/{name}/{container}")
        }
        _ => {
            for (_, port) in params.iter().filter(|(k, _)| k == "ports") {
                for p in port.split(',').filter(|p| !p.is_empty()) {
                    let valid = p.trim().parse::<u16>().is_ok_and(|n| n > 0);
                    if !valid {
                        return Err(ApiError::bad_request(format!(
                            "invalid port {p:?}: must be between 1 and 65535"
                        )));
                    }
                    out.append_pair("port", p.trim());
                }
            }
            format!("/portForward/{ns}/{name}")
        }
    };
    let query = out.finish();
    Ok(Location {
        node: node.to_string(),
        path_and_query: if query.is_empty() {
            path
        } else {
            format!("{path}?{query}")
        },
    })
}

/// The container a log/exec/attach request is for: the one named, or the pod's only container.
fn container_of<'a>(
    pod: &'a Value,
    pod_name: &str,
    asked: Option<&'a str>,
) -> Result<&'a str, ApiError> {
    let names = |field: &str| -> Vec<&'a str> {
        pod.pointer(&format!("/spec/{field}"))
            .and_then(Value::as_array)
            .map(|cs| {
                cs.iter()
                    .filter_map(|c| c.get("name").and_then(Value::as_str))
                    .collect()
            })
            .unwrap_or_default()
    };
    let containers = names("containers");
    let init = names("initContainers");
    let ephemeral = names("ephemeralContainers");
    match asked.filter(|c| !c.is_empty()) {
        Some(c) => {
            if containers.contains(&c) || init.contains(&c) || ephemeral.contains(&c) {
                Ok(c)
            } else {
                Err(ApiError::bad_request(format!(
                    "container {c} is not valid for pod {pod_name}"
                )))
            }
        }
        None if containers.len() == 1 => Ok(containers[0]),
        None => {
            let mut message = format!(
                "a container name must be specified for pod {pod_name}, choose one of: [{}]",
                containers.join(" ")
            );
            if !init.is_empty() {
                message.push_str(&format!(
                    " or one of the init containers: [{}]",
                    init.join(" ")
                ));
            }
            if !ephemeral.is_empty() {
                message.push_str(&format!(
                    " or one of the ephemeral containers: [{}]",
                    ephemeral.join(" ")
                ));
            }
            Err(ApiError::bad_request(message))
        }
    }
}

/// The kubelet's host and port from the Node object.
fn kubelet_address(node: &Value, port_override: Option<u16>) -> Result<(String, u16), ApiError> {
    let name = node
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let addresses = node
        .pointer("/status/addresses")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let host = PREFERRED_ADDRESS_TYPES
        .iter()
        .find_map(|ty| {
            addresses.iter().find_map(|a| {
                (a.get("type").and_then(Value::as_str) == Some(*ty))
                    .then(|| a.get("address").and_then(Value::as_str))
                    .flatten()
                    .filter(|s| !s.is_empty())
            })
        })
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "no preferred addresses found; known addresses: {}",
                serde_json::to_string(&addresses).unwrap_or_default()
            ))
        })?
        .to_string();
    let published = node
        .pointer("/status/daemonEndpoints/kubeletEndpoint/Port")
        .and_then(Value::as_u64)
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0);
    let port = port_override.or(published).unwrap_or(DEFAULT_KUBELET_PORT);
    tracing::trace!(node = name, %host, port, "kubelet address");
    Ok((host, port))
}

/// One request to a backend (a kubelet, a pod).
pub(super) struct Hop<'a> {
    /// TLS towards the backend, or plain HTTP.
    pub(super) tls: Option<Arc<rustls::ClientConfig>>,
    pub(super) host: &'a str,
    pub(super) port: u16,
    pub(super) method: &'a Method,
    pub(super) path_and_query: &'a str,
    /// The client's headers (hop-by-hop ones and credentials are not forwarded).
    pub(super) headers: &'a HeaderMap,
    /// Headers the proxy adds (`X-Forwarded-*`).
    pub(super) extra_headers: Vec<(header::HeaderName, HeaderValue)>,
    pub(super) body: axum::body::Bytes,
    pub(super) upgrade: Option<OnUpgrade>,
}

/// `host:port`, with IPv6 addresses in brackets.
pub(super) fn authority(host: &str, port: u16) -> String {
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V6(ip)) => format!("[{ip}]:{port}"),
        _ => format!("{host}:{port}"),
    }
}

/// Go's wording of a failed dial (`dial tcp 10.0.0.5:10250: connect: connection refused`).
pub(super) fn dial_error(authority: &str, e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => {
            format!("dial tcp {authority}: connect: connection refused")
        }
        _ => format!("dial tcp {authority}: {e}"),
    }
}

/// Sends the request to the backend and relays the answer (or joins the upgraded
/// connections); `fail` words what goes wrong on the way.
pub(super) async fn forward(
    hop: Hop<'_>,
    fail: &(dyn Fn(String) -> ApiError + Sync),
) -> Result<Response, ApiError> {
    let Hop {
        tls,
        host,
        port,
        method,
        path_and_query,
        headers,
        extra_headers,
        body,
        upgrade,
    } = hop;
    let authority = authority(host, port);
    let tcp = TcpStream::connect(&authority)
        .await
        .map_err(|e| fail(dial_error(&authority, &e)))?;
    let mut sender = match tls {
        Some(tls) => {
            let server_name = ServerName::try_from(host.to_string())
                .map_err(|e| fail(format!("invalid host {host:?}: {e}")))?;
            let tls_stream = tokio_rustls::TlsConnector::from(tls)
                .connect(server_name, tcp)
                .await
                .map_err(|e| fail(format!("tls: {e}")))?;
            handshake(TokioIo::new(tls_stream), fail).await?
        }
        None => handshake(TokioIo::new(tcp), fail).await?,
    };

    let upgrading = upgrade.is_some() && wants_upgrade(headers);
    let mut request = Request::builder()
        .method(method.clone())
        .uri(path_and_query)
        .header(header::HOST, &authority);
    for (k, v) in headers {
        let name = k.as_str();
        if DROPPED_HEADERS.contains(&name) || name.starts_with("impersonate-") {
            continue;
        }
        request = request.header(k, v);
    }
    if upgrading {
        for h in [header::CONNECTION, header::UPGRADE] {
            if let Some(v) = headers.get(&h) {
                request = request.header(h, v);
            }
        }
    }
    for (k, v) in extra_headers {
        request = request.header(k, v);
    }
    let request = request
        .body(Body::from(body))
        .map_err(|e| fail(e.to_string()))?;
    let mut response = sender
        .send_request(request)
        .await
        .map_err(|e| fail(e.to_string()))?;
    let status = response.status();

    if status == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_upgrade) = upgrade.filter(|_| upgrading) else {
            return Err(fail("the backend switched protocols unasked".into()));
        };
        let kubelet_upgrade = hyper::upgrade::on(&mut response);
        tokio::spawn(
            async move {
                let (client, kubelet) = match tokio::try_join!(client_upgrade, kubelet_upgrade) {
                    Ok(both) => both,
                    Err(e) => {
                        tracing::debug!(error = %e, "upgrade failed");
                        return;
                    }
                };
                let mut client = TokioIo::new(client);
                let mut kubelet = TokioIo::new(kubelet);
                match tokio::io::copy_bidirectional(&mut client, &mut kubelet).await {
                    Ok((up, down)) => tracing::debug!(up, down, "upgraded stream closed"),
                    Err(e) => tracing::debug!(error = %e, "upgraded stream ended"),
                }
            }
            .in_current_span(),
        );
        let mut out = Response::builder().status(StatusCode::SWITCHING_PROTOCOLS);
        for (k, v) in response.headers() {
            out = out.header(k, v);
        }
        return out
            .body(Body::empty())
            .map_err(|e| ApiError::internal(e.to_string()));
    }

    let mut out = Response::builder().status(status);
    for (k, v) in response.headers() {
        if !DROPPED_HEADERS.contains(&k.as_str()) {
            out = out.header(k, v);
        }
    }
    if !response.headers().contains_key(header::CACHE_CONTROL) {
        out = out.header(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-cache, private"),
        );
    }
    out.body(Body::new(response.into_body()))
        .map_err(|e| ApiError::internal(e.to_string()))
}

/// An HTTP/1.1 client connection over `io`, driven by its own task (upgrades included).
async fn handshake<T>(
    io: TokioIo<T>,
    fail: &(dyn Fn(String) -> ApiError + Sync),
) -> Result<hyper::client::conn::http1::SendRequest<Body>, ApiError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| fail(e.to_string()))?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "backend connection ended");
        }
    });
    Ok(sender)
}

/// Whether the client asked to switch protocols (`Connection: Upgrade` + `Upgrade: ...`).
fn wants_upgrade(headers: &HeaderMap) -> bool {
    let connection_upgrade = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    connection_upgrade && headers.contains_key(header::UPGRADE)
}

/// Go's way of naming a request in errors (`Get "https://..."`).
fn title(method: &Method) -> String {
    let m = method.as_str().to_ascii_lowercase();
    let mut chars = m.chars();
    match chars.next() {
        Some(first) => first.to_ascii_uppercase().to_string() + chars.as_str(),
        None => m,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod() -> Value {
        json!({
            "metadata": {"name": "p", "namespace": "ns"},
            "spec": {
                "nodeName": "n1",
                "containers": [{"name": "a"}, {"name": "b"}],
                "initContainers": [{"name": "init"}],
            },
            "status": {"phase": "Running"},
        })
    }

    #[test]
    fn logs_need_a_container_when_the_pod_has_several() {
        let e = pod_location(&pod(), "ns", "p", "log", "").unwrap_err();
        assert_eq!(e.code, 400);
        assert_eq!(
            e.message,
            "a container name must be specified for pod p, choose one of: [a b] or one of the init containers: [init]"
        );
        let e = pod_location(&pod(), "ns", "p", "log", "container=zz").unwrap_err();
        assert_eq!(e.message, "container zz is not valid for pod p");
        let l = pod_location(
            &pod(),
            "ns",
            "p",
            "log",
            "container=b&follow=true&tailLines=5&pretty=1",
        )
        .unwrap();
        assert_eq!(l.node, "n1");
        assert_eq!(
            l.path_and_query,
            "/containerLogs/ns/p/b?follow=true&tailLines=5"
        );
    }

    #[test]
    fn exec_keeps_every_command_word_and_renames_the_streams() {
        let l = pod_location(
            &pod(),
            "ns",
            "p",
            "exec",
            "container=a&command=sh&command=-c&command=echo+hi+%26%26+ls&stdout=true&stderr=true",
        )
        .unwrap();
        assert_eq!(
            l.path_and_query,
            "/exec/ns/p/a?command=sh&command=-c&command=echo+hi+%26%26+ls&output=1&error=1"
        );
        let e = pod_location(&pod(), "ns", "p", "exec", "container=a&command=ls").unwrap_err();
        assert_eq!(
            e.message,
            "you must specify at least 1 of stdin, stdout, stderr"
        );
        let e = pod_location(&pod(), "ns", "p", "exec", "container=a&stdout=1").unwrap_err();
        assert_eq!(
            e.message,
            "you must specify at least one command for the container"
        );
    }

    #[test]
    fn completed_and_unscheduled_pods_are_refused() {
        let mut done = pod();
        done["status"]["phase"] = json!("Succeeded");
        let e = pod_location(&done, "ns", "p", "attach", "container=a&stdout=1").unwrap_err();
        assert_eq!(
            e.message,
            "cannot attach into a container in a completed pod; current phase is Succeeded"
        );
        let mut pending = pod();
        pending["spec"]["nodeName"] = json!("");
        let e = pod_location(&pending, "ns", "p", "log", "container=a").unwrap_err();
        assert_eq!(e.message, "pod p does not have a host assigned");
    }

    #[test]
    fn port_forward_passes_the_ports() {
        let l = pod_location(&pod(), "ns", "p", "portforward", "ports=8080,9090").unwrap();
        assert_eq!(l.path_and_query, "/portForward/ns/p?port=8080&port=9090");
        let e = pod_location(&pod(), "ns", "p", "portforward", "ports=0").unwrap_err();
        assert_eq!(e.code, 400);
    }

    #[test]
    fn node_proxy_keeps_the_rest_of_the_path_and_the_query() {
        let uri: Uri = "/api/v1/nodes/n1:10255/proxy/stats/summary?only_cpu=1"
            .parse()
            .unwrap();
        let l = node_proxy_location("n1:10255", &uri).unwrap();
        assert_eq!(l.path_and_query, "/stats/summary?only_cpu=1");
        assert_eq!(split_node_port(&l.node), ("n1", Some(10255)));
        let uri: Uri = "/api/v1/nodes/n1/proxy".parse().unwrap();
        assert_eq!(node_proxy_location("n1", &uri).unwrap().path_and_query, "/");
    }

    #[test]
    fn the_kubelet_address_follows_the_preferred_types() {
        let node = json!({
            "metadata": {"name": "n1"},
            "status": {
                "addresses": [
                    {"type": "Hostname", "address": "n1"},
                    {"type": "InternalIP", "address": "10.0.0.5"},
                ],
                "daemonEndpoints": {"kubeletEndpoint": {"Port": 10350}},
            },
        });
        assert_eq!(
            kubelet_address(&node, None).unwrap(),
            ("10.0.0.5".into(), 10350)
        );
        assert_eq!(kubelet_address(&node, Some(4194)).unwrap().1, 4194);
        let bare = json!({"metadata": {"name": "n2"}, "status": {}});
        assert_eq!(kubelet_address(&bare, None).unwrap_err().code, 400);
    }
}
