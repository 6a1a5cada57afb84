//! `pods/proxy` and `services/proxy`: HTTP to a pod's IP, straight from the apiserver (what
//! `kubectl proxy` and `kubectl get --raw /api/v1/namespaces/<ns>/services/<svc>/proxy/...`
//! use).
//!
//! As upstream's `ResourceLocation`s: the name in the path is `name`, `name:port` or
//! `scheme:name:port` (scheme `http` or `https`; anything else is 400 `invalid pod request`).
//! A pod is reached at its first IP (`status.podIPs[0]`, else `status.podIP`) and the port
//! asked for, else its first declared container port, else none (port 80); an IP that is not
//! a global unicast address (none yet, loopback, link-local, multicast) is 400 `address not
//! allowed`. A service's port is a port name, or a number mapped to the name of the service
//! port with that number (503 `no service port <n> found for service "<s>"`); the backend is
//! an address of the service's `Endpoints` that carries that port name and belongs to a pod
//! of the namespace that has that IP (random start, as upstream), else 503 `no endpoints
//! available for service`. Upstream reads `Endpoints`, not EndpointSlices, and so does this.
//!
//! The request goes as upstream's `UpgradeAwareHandler` sends it: path `<rest after /proxy>`
//! (cleaned, trailing slash kept; a GET of `.../proxy` without the slash is redirected to
//! it), the query, the client's headers but its credentials and the hop-by-hop ones, plus
//! `X-Forwarded-Uri`; `https` backends are not verified (upstream's proxy transport skips
//! verification: pods are reached by IP). Upgrades are passed through. From the answer, the
//! CORS headers are dropped, and a `Location` on the backend and the links of HTML bodies
//! are rewritten under the proxy path (upstream's proxy transport: see
//! [`super::proxy::rewrite`]); an unreachable backend is 503 `error trying to reach service:
//! <dial error>`.

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::Response;
use hyper::upgrade::OnUpgrade;
use rand::Rng as _;
use serde_json::Value;
use tracing::Instrument as _;

use super::Target;
use super::object::decode_stored;
use super::proxy::rewrite::{UrlRewriter, rewrite_response};
use super::proxy::{Hop, forward};
use crate::registry::REGISTRY;
use crate::server::AppState;
use crate::status::ApiError;

/// The methods a proxy subresource accepts (upstream's `proxyMethods`).
const PROXY_METHODS: &[Method] = &[
    Method::GET,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
    Method::HEAD,
    Method::OPTIONS,
];

/// Response headers upstream's proxy removes (`removeCORSHeaders`).
const CORS_HEADERS: &[&str] = &[
    "access-control-allow-credentials",
    "access-control-allow-headers",
    "access-control-allow-methods",
    "access-control-allow-origin",
];

/// Where a proxied request goes.
#[derive(Debug, PartialEq)]
struct Backend {
    https: bool,
    ip: String,
    port: u16,
}

/// Serves `pods/<id>/proxy/...` and `services/<id>/proxy/...`.
pub(crate) async fn serve(
    state: &AppState,
    target: &Target,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: axum::body::Bytes,
    upgrade: Option<OnUpgrade>,
) -> Result<Response, ApiError> {
    if !PROXY_METHODS.contains(method) {
        return Err(ApiError::method_not_allowed());
    }
    let id = target.name.as_deref().unwrap_or_default();
    let ns = target.namespace.as_deref().unwrap_or("default");
    let (prefix, rest) = split_proxy_path(uri.path(), id)?;
    if rest.is_empty() && matches!(*method, Method::GET | Method::HEAD) {
        // Upstream redirects `.../proxy` to `.../proxy/` (kubernetes#4958).
        let mut location = format!("{prefix}/");
        if let Some(q) = uri.query() {
            location.push('?');
            location.push_str(q);
        }
        return Response::builder()
            .status(StatusCode::MOVED_PERMANENTLY)
            .header(header::LOCATION, location)
            .body(axum::body::Body::empty())
            .map_err(|e| ApiError::internal(e.to_string()));
    }
    let backend = match target.info.plural {
        "pods" => pod_backend(state, target, ns, id).await?,
        _ => service_backend(state, ns, id).await?,
    };
    let mut path_and_query = if rest.is_empty() {
        "/".to_string()
    } else {
        rest
    };
    if let Some(q) = uri.query() {
        path_and_query.push('?');
        path_and_query.push_str(q);
    }
    let span = tracing::debug_span!(
        "proxy",
        resource = target.info.plural,
        namespace = ns,
        id,
        ip = %backend.ip,
        port = backend.port
    );
    let tls = backend.https.then(insecure_tls);
    let forwarded_uri = HeaderValue::from_str(&format!(
        "{prefix}{}",
        path_and_query.split('?').next().unwrap_or("/")
    ))
    .map_err(|e| ApiError::internal(e.to_string()))?;
    let fail = |what: String| {
        ApiError::new(
            503,
            "ServiceUnavailable",
            format!("error trying to reach service: {what}"),
        )
    };
    let mut response = forward(
        Hop {
            tls,
            host: &backend.ip,
            port: backend.port,
            method,
            path_and_query: &path_and_query,
            headers,
            extra_headers: vec![(
                header::HeaderName::from_static("x-forwarded-uri"),
                forwarded_uri,
            )],
            body,
            upgrade,
        },
        &fail,
    )
    .instrument(span)
    .await?;
    let out = response.headers_mut();
    for h in CORS_HEADERS {
        out.remove(*h);
    }
    let backend_authority = super::proxy::authority(&backend.ip, backend.port);
    let urls = UrlRewriter {
        backend: &backend_authority,
        request_host: request_host(headers, uri),
        prefix: &prefix,
    };
    rewrite_response(response, urls).await
}

/// The host the client asked for: its `Host` header, else the authority of an HTTP/2
/// request (what Go's `Request.Host` holds).
pub(super) fn request_host<'a>(headers: &'a HeaderMap, uri: &'a Uri) -> &'a str {
    headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()))
        .unwrap_or_default()
}

/// The request path up to and including `/proxy`, and the cleaned rest (`""` when the path
/// ends at `/proxy`; otherwise starting with `/`, a trailing slash kept).
fn split_proxy_path(path: &str, id: &str) -> Result<(String, String), ApiError> {
    let marker = format!("/{id}/proxy");
    let at = path
        .find(&format!("{marker}/"))
        .or_else(|| path.ends_with(&marker).then(|| path.len() - marker.len()))
        .ok_or_else(|| ApiError::bad_request(format!("invalid proxy path {path:?}")))?;
    let end = at + marker.len();
    let (prefix, rest) = path.split_at(end);
    Ok((prefix.to_string(), clean_path(rest)))
}

/// Go's `path.Join` of the rest (no `.`, `..` or empty segments), with a trailing slash kept
/// as upstream's `JoinPreservingTrailingSlash` does; `""` for nothing.
fn clean_path(rest: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for seg in rest.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    if out.is_empty() {
        return if rest.is_empty() {
            String::new()
        } else {
            "/".into()
        };
    }
    let mut p = format!("/{}", out.join("/"));
    if rest.ends_with('/') {
        p.push('/');
    }
    p
}

/// Upstream's `SplitSchemeNamePort`: `name`, `name:port`, `scheme:name:port`.
fn split_scheme_name_port(id: &str) -> Option<(&str, &str, &str)> {
    let parts: Vec<&str> = id.split(':').collect();
    let (scheme, name, port) = match parts.as_slice() {
        [name] => ("", *name, ""),
        [name, port] => ("", *name, *port),
        [scheme, name, port] => (*scheme, *name, *port),
        _ => return None,
    };
    (!name.is_empty() && matches!(scheme, "" | "http" | "https")).then_some((scheme, name, port))
}

/// A pod's primary IP: `status.podIPs[0].ip`, else `status.podIP`.
fn pod_ips(pod: &Value) -> Vec<&str> {
    let mut ips: Vec<&str> = pod
        .pointer("/status/podIPs")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|p| p.get("ip").and_then(Value::as_str))
                .collect()
        })
        .unwrap_or_default();
    if ips.is_empty()
        && let Some(ip) = pod.pointer("/status/podIP").and_then(Value::as_str)
    {
        ips.push(ip);
    }
    ips
}

/// Go's `IP.IsGlobalUnicast` (loopback let through when the server is configured for
/// stand-in pods on loopback).
pub(crate) fn address_allowed(ip: &str, loopback_ok: bool) -> bool {
    let Ok(ip) = ip.parse::<IpAddr>() else {
        return false;
    };
    if ip.is_loopback() {
        return loopback_ok;
    }
    match ip {
        IpAddr::V4(v4) => {
            !v4.is_broadcast() && !v4.is_unspecified() && !v4.is_multicast() && !v4.is_link_local()
        }
        IpAddr::V6(v6) => {
            !v6.is_unspecified() && !v6.is_multicast() && (v6.segments()[0] & 0xffc0) != 0xfe80
        }
    }
}

async fn get_object(
    state: &AppState,
    plural: &str,
    ns: &str,
    name: &str,
) -> Result<Value, ApiError> {
    let info = REGISTRY
        .find("", "v1", plural)
        .ok_or_else(|| ApiError::internal(format!("{plural} are not registered")))?;
    let (_, kv) = state.store.get(&info.key(Some(ns), name), 0).await?;
    decode_stored(&kv.ok_or_else(|| ApiError::not_found(info, name))?)
}

async fn pod_backend(
    state: &AppState,
    target: &Target,
    ns: &str,
    id: &str,
) -> Result<Backend, ApiError> {
    let (scheme, name, port) = split_scheme_name_port(id)
        .ok_or_else(|| ApiError::bad_request(format!("invalid pod request {id:?}")))?;
    let (_, kv) = state.store.get(&target.info.key(Some(ns), name), 0).await?;
    let pod = decode_stored(&kv.ok_or_else(|| ApiError::not_found(&target.info, name))?)?;
    let mut port = port.to_string();
    if port.is_empty()
        && let Some(p) = pod
            .pointer("/spec/containers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find_map(|c| c.pointer("/ports/0/containerPort").and_then(Value::as_i64))
    {
        port = p.to_string();
    }
    let ip = pod_ips(&pod)
        .first()
        .copied()
        .unwrap_or_default()
        .to_string();
    if !address_allowed(&ip, state.proxy_loopback) {
        return Err(ApiError::bad_request("address not allowed"));
    }
    let https = scheme == "https";
    let port = if port.is_empty() {
        if https { 443 } else { 80 }
    } else {
        // Go's dialer looks names up in the services database; the two that matter here:
        match port.as_str() {
            "http" => 80,
            "https" => 443,
            _ => port.parse::<u16>().map_err(|_| {
                ApiError::new(
                    503,
                    "ServiceUnavailable",
                    format!(
                        "error trying to reach service: dial tcp: lookup tcp/{port}: unknown port"
                    ),
                )
            })?,
        }
    };
    Ok(Backend { https, ip, port })
}

async fn service_backend(state: &AppState, ns: &str, id: &str) -> Result<Backend, ApiError> {
    let (scheme, name, port) = split_scheme_name_port(id)
        .ok_or_else(|| ApiError::bad_request(format!("invalid service request {id:?}")))?;
    let mut port_name = port.to_string();
    if let Ok(number) = port.parse::<i64>() {
        let service = get_object(state, "services", ns, name).await?;
        port_name = service
            .pointer("/spec/ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|p| p.get("port").and_then(Value::as_i64) == Some(number))
            .map(|p| {
                p.get("name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string()
            })
            .ok_or_else(|| {
                ApiError::new(
                    503,
                    "ServiceUnavailable",
                    format!("no service port {number} found for service {name:?}"),
                )
            })?;
    }
    let endpoints = get_object(state, "endpoints", ns, name).await?;
    let subsets = endpoints
        .get("subsets")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let unavailable = |what: &str| {
        ApiError::new(
            503,
            "ServiceUnavailable",
            format!("no endpoints available for service {what:?}"),
        )
    };
    if subsets.is_empty() {
        return Err(unavailable(name));
    }
    let https = scheme == "https";
    let seed = rand::rng().random_range(0..subsets.len());
    for i in 0..subsets.len() {
        let subset = &subsets[(seed + i) % subsets.len()];
        let addresses = subset
            .get("addresses")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if addresses.is_empty() {
            continue;
        }
        let ports = subset.get("ports").and_then(Value::as_array);
        for p in ports.into_iter().flatten() {
            if p.get("name").and_then(Value::as_str).unwrap_or_default() != port_name {
                continue;
            }
            let Some(number) = p
                .get("port")
                .and_then(Value::as_u64)
                .and_then(|n| u16::try_from(n).ok())
            else {
                continue;
            };
            let start = rand::rng().random_range(0..addresses.len());
            for j in 0..addresses.len() {
                let address = &addresses[(start + j) % addresses.len()];
                match valid_address(state, ns, address).await {
                    Ok(ip) => {
                        return Ok(Backend {
                            https,
                            ip,
                            port: number,
                        });
                    }
                    Err(why) => tracing::debug!(%why, ?address, "endpoint address skipped"),
                }
            }
        }
    }
    Err(unavailable(id))
}

/// Upstream's `isValidAddress`: the address names a pod of this namespace that has that IP.
/// Also refuses what upstream's Endpoints validation would never have stored (loopback,
/// link-local, multicast, unspecified), which rk3s does not validate on write.
async fn valid_address(state: &AppState, ns: &str, address: &Value) -> Result<String, String> {
    let ip = address
        .get("ip")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let target = address
        .get("targetRef")
        .ok_or("address has no target ref")?;
    if target.get("namespace").and_then(Value::as_str) != Some(ns) {
        return Err("address namespace doesn't match the request's".into());
    }
    let pod_name = target
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let pod = get_object(state, "pods", ns, pod_name)
        .await
        .map_err(|e| e.message)?;
    if !pod_ips(&pod).contains(&ip.as_str()) {
        return Err(format!("pod ip(s) doesn't match endpoint ip {ip}"));
    }
    if !address_allowed(&ip, state.proxy_loopback) {
        return Err(format!("address {ip} not allowed"));
    }
    Ok(ip)
}

/// TLS towards `https` backends without verifying them, as upstream's proxy transport
/// (`InsecureSkipVerify`: pods are dialled by IP, their certificates name services).
fn insecure_tls() -> Arc<rustls::ClientConfig> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let verifier = Arc::new(rk3s_common::serving::AnyServerCert::new(provider.clone()));
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map(|b| {
                    b.dangerous()
                        .with_custom_certificate_verifier(verifier)
                        .with_no_client_auth()
                });
            match config {
                Ok(c) => Arc::new(c),
                Err(e) => {
                    // The ring provider supports the default versions; unreachable in practice.
                    tracing::error!(error = %e, "no TLS configuration for proxying to pods");
                    Arc::new(
                        rustls::ClientConfig::builder()
                            .with_root_certificates(rustls::RootCertStore::empty())
                            .with_no_client_auth(),
                    )
                }
            }
        })
        .clone()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_split_as_upstream() {
        assert_eq!(split_scheme_name_port("web"), Some(("", "web", "")));
        assert_eq!(split_scheme_name_port("web:80"), Some(("", "web", "80")));
        assert_eq!(
            split_scheme_name_port("https:web:https"),
            Some(("https", "web", "https"))
        );
        assert_eq!(split_scheme_name_port("ftp:web:21"), None);
        assert_eq!(split_scheme_name_port(":80"), None);
        assert_eq!(split_scheme_name_port("a:b:c:d"), None);
    }

    #[test]
    fn proxy_paths_keep_the_trailing_slash() {
        let p = "/api/v1/namespaces/d/pods/web:8080/proxy/a//b/../c/";
        assert_eq!(
            split_proxy_path(p, "web:8080").unwrap(),
            (
                "/api/v1/namespaces/d/pods/web:8080/proxy".to_string(),
                "/a/c/".to_string()
            )
        );
        let p = "/api/v1/namespaces/d/services/web/proxy";
        assert_eq!(split_proxy_path(p, "web").unwrap().1, "");
        let p = "/api/v1/namespaces/d/services/web/proxy/";
        assert_eq!(split_proxy_path(p, "web").unwrap().1, "/");
        let p = "/api/v1/namespaces/d/services/web/proxy/healthz";
        assert_eq!(split_proxy_path(p, "web").unwrap().1, "/healthz");
    }

    #[test]
    fn only_global_unicast_addresses_are_dialled() {
        assert!(address_allowed("10.42.0.7", false));
        assert!(address_allowed("fd00::1", false));
        for ip in [
            "",
            "127.0.0.1",
            "0.0.0.0",
            "169.254.1.1",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "fe80::1",
            "nonsense",
        ] {
            assert!(!address_allowed(ip, false), "{ip}");
        }
        assert!(address_allowed("127.0.0.9", true));
    }
}
