//! Calling webhooks: what admission webhooks and CRD conversion webhooks share (upstream's
//! `k8s.io/apiserver/pkg/util/webhook`).
//!
//! A `WebhookClientConfig` (`url`, or `service` with `namespace`, `name`, `path`, `port`
//! (443), and a `caBundle`) becomes an HTTPS `POST` of a JSON review with a deadline; the
//! answer's JSON body is handed back to the caller, which reads its own review out of it.
//!
//! - **URL**: dialled as given (host name or IP), TLS verified against the `caBundle` (or,
//!   without one, the system's trust store: `/etc/ssl/certs/ca-certificates.crt`).
//! - **Service**: the URL upstream shows is `https://<name>.<namespace>.svc:<port><path>`, and
//!   that is the name the webhook's certificate must carry; the address dialled is one of the
//!   service's endpoints (as upstream's apiserver with `--enable-aggregator-routing`: rk3s'
//!   apiserver may run where no service proxy is): the service port with that number, the
//!   `Endpoints` port of the same name, a random ready address. An `ExternalName` service is
//!   dialled at its external name. Endpoint addresses must be global unicast (loopback only
//!   with `Apiserver::proxy_to_loopback`, for test webhooks), as for the service proxy.
//! - Upstream adds `?timeout=<n>s` to the request so the webhook knows its deadline; so does
//!   this. Errors are worded as Go's `url.Error`: `Post "<url>?timeout=10s": <cause>`.
//!
//! - **Connections are pooled** (upstream keeps a client per configuration with keep-alive):
//!   HTTP/1.1 over TLS, kept idle after a call per destination — the CA bundle, the name the
//!   certificate is checked against and the address dialled — for the next call (at most 25
//!   per destination, 90 s idle, as Go's transport defaults that upstream's client uses); a
//!   changed `clientConfig` is another destination, so its calls never reuse a connection
//!   made for the old one, whose idle connections expire. A request that an idle connection
//!   could not take (the webhook closed it) goes on a new connection. The TLS configuration
//!   is built once per CA bundle (the system's CAs: read once), so new connections resume
//!   TLS sessions. The pool is the process's, shared by the apiservers it runs and by
//!   admission and CRD conversion webhooks. HTTP/2 is not used (upstream's Go client
//!   negotiates it).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, header};
use base64::Engine as _;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rand::Rng as _;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use tokio::net::TcpStream;

use crate::registry::REGISTRY;
use crate::rest::{address_allowed, decode_stored};
use crate::server::AppState;

/// Where the system keeps its trusted CAs (Debian's `ca-certificates`).
const SYSTEM_CA_FILE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The largest answer read from a webhook (upstream's client refuses bigger bodies too).
const MAX_RESPONSE_BYTES: usize = 3 * 1024 * 1024;

/// Why a webhook could not be called, worded as upstream words it.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WebhookError {
    /// The client configuration cannot be used (no URL and no service, a bad URL or CA).
    #[error("{0}")]
    Config(String),
    /// The service (or its endpoints) a configuration names cannot be resolved.
    #[error("{0}")]
    Resolve(String),
    /// The request failed on the way: dial, TLS, HTTP, deadline (`Post "<url>": <cause>`).
    #[error("Post \"{url}\": {cause}")]
    Call { url: String, cause: String },
    /// The webhook answered with a status other than 2xx.
    #[error("{message}")]
    Status { code: u16, message: String },
    /// The webhook answered with a body that is not JSON.
    #[error("{0}")]
    Response(String),
}

impl WebhookError {
    /// The webhook's own HTTP status, when it answered with an error.
    pub(crate) fn status(&self) -> Option<u16> {
        match self {
            WebhookError::Status { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// A webhook's `clientConfig` (`admissionregistration.k8s.io/v1` `WebhookClientConfig` and
/// `apiextensions.k8s.io/v1` `WebhookClientConfig` have the same shape).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ClientConfig {
    target: Target,
    /// PEM CA certificates, decoded from `caBundle`.
    ca_bundle: Option<Vec<u8>>,
}

#[derive(Clone, Debug, PartialEq)]
enum Target {
    Url(url::Url),
    Service {
        namespace: String,
        name: String,
        path: String,
        port: u16,
    },
}

impl ClientConfig {
    /// Reads a `clientConfig` object.
    pub(crate) fn parse(v: &Value) -> Result<Self, WebhookError> {
        let ca_bundle = match v.get("caBundle").and_then(Value::as_str) {
            None | Some("") => None,
            Some(b) => Some(
                base64::engine::general_purpose::STANDARD
                    .decode(b)
                    .map_err(|e| WebhookError::Config(format!("invalid caBundle: {e}")))?,
            ),
        };
        let target = if let Some(u) = v.get("url").and_then(Value::as_str) {
            let url = url::Url::parse(u)
                .map_err(|e| WebhookError::Config(format!("invalid url {u:?}: {e}")))?;
            if url.scheme() != "https" {
                return Err(WebhookError::Config(format!(
                    "invalid url {u:?}: 'https' is the only allowed URL scheme"
                )));
            }
            Target::Url(url)
        } else if let Some(s) = v.get("service") {
            let field = |k: &str| s.get(k).and_then(Value::as_str).unwrap_or_default();
            let port = match s.get("port").and_then(Value::as_i64) {
                None => 443,
                Some(p) => u16::try_from(p)
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| WebhookError::Config(format!("invalid service port {p}")))?,
            };
            let mut path = field("path").to_string();
            if path.is_empty() {
                path = "/".into();
            }
            Target::Service {
                namespace: field("namespace").to_string(),
                name: field("name").to_string(),
                path,
                port,
            }
        } else {
            return Err(WebhookError::Config(
                "webhook clientConfig has neither url nor service".into(),
            ));
        };
        Ok(Self { target, ca_bundle })
    }

    /// The URL upstream shows in its messages, with the `timeout` query it adds.
    pub(crate) fn display_url(&self, timeout: Duration) -> String {
        let base = match &self.target {
            Target::Url(u) => u.to_string(),
            Target::Service {
                namespace,
                name,
                path,
                port,
            } => format!("https://{name}.{namespace}.svc:{port}{path}"),
        };
        let sep = if base.contains('?') { '&' } else { '?' };
        format!("{base}{sep}timeout={}s", timeout.as_secs().max(1))
    }

    /// Posts `review` (JSON) and returns the webhook's JSON answer, within `timeout`.
    #[tracing::instrument(level = "debug", skip_all, fields(url))]
    pub(crate) async fn call(
        &self,
        state: &AppState,
        review: &Value,
        timeout: Duration,
    ) -> Result<Value, WebhookError> {
        let url = self.display_url(timeout);
        tracing::Span::current().record("url", url.as_str());
        let (host, port) = self.resolve(state).await?;
        let server_name = self.server_name()?;
        let tls = self.tls_cached()?;
        let path_and_query = match url::Url::parse(&url) {
            Ok(u) => match u.query() {
                Some(q) => format!("{}?{q}", u.path()),
                None => u.path().to_string(),
            },
            Err(e) => return Err(WebhookError::Config(format!("invalid url {url:?}: {e}"))),
        };
        let body = serde_json::to_vec(review).map_err(|e| WebhookError::Call {
            url: url.clone(),
            cause: e.to_string(),
        })?;
        let destination = Destination {
            ca_bundle: self.ca_bundle.clone(),
            server_name,
            authority: authority(&host, port),
        };
        let call = post(tls, destination, &path_and_query, body);
        let answer = match tokio::time::timeout(timeout, call).await {
            Ok(r) => r,
            Err(_) => Err("context deadline exceeded".to_string()),
        };
        let (status, bytes) = answer.map_err(|cause| WebhookError::Call {
            url: url.clone(),
            cause,
        })?;
        if !(200..300).contains(&status) {
            return Err(WebhookError::Status {
                code: status,
                message: format!(
                    "the server responded with status {status}: {}",
                    String::from_utf8_lossy(&bytes[..bytes.len().min(256)])
                ),
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| {
            WebhookError::Response(format!("failed to decode the webhook's response: {e}"))
        })
    }

    /// The name the webhook's certificate is checked against.
    fn server_name(&self) -> Result<ServerName<'static>, WebhookError> {
        let host = match &self.target {
            Target::Url(u) => match u.host() {
                Some(url::Host::Ipv4(ip)) => {
                    return Ok(ServerName::IpAddress(IpAddr::V4(ip).into()));
                }
                Some(url::Host::Ipv6(ip)) => {
                    return Ok(ServerName::IpAddress(IpAddr::V6(ip).into()));
                }
                Some(url::Host::Domain(d)) => d.to_string(),
                None => return Err(WebhookError::Config(format!("url {u} has no host"))),
            },
            Target::Service {
                namespace, name, ..
            } => format!("{name}.{namespace}.svc"),
        };
        ServerName::try_from(host.clone())
            .map_err(|e| WebhookError::Config(format!("invalid host {host:?}: {e}")))
    }

    /// [`ClientConfig::tls`], built once per CA bundle (and so with one TLS session cache
    /// per bundle: new connections resume sessions).
    fn tls_cached(&self) -> Result<Arc<rustls::ClientConfig>, WebhookError> {
        if let Some(tls) = lock(&POOL.tls).get(&self.ca_bundle) {
            return Ok(tls.clone());
        }
        let tls = self.tls()?;
        let mut cache = lock(&POOL.tls);
        if cache.len() >= MAX_TLS_CONFIGS {
            cache.clear();
        }
        cache.insert(self.ca_bundle.clone(), tls.clone());
        Ok(tls)
    }

    /// TLS trusting the `caBundle`, else the system's CAs.
    fn tls(&self) -> Result<Arc<rustls::ClientConfig>, WebhookError> {
        let pem = match &self.ca_bundle {
            Some(b) => b.clone(),
            None => std::fs::read(SYSTEM_CA_FILE).unwrap_or_default(),
        };
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| WebhookError::Config(format!("invalid caBundle: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| WebhookError::Config(format!("invalid caBundle: {e}")))?;
        }
        if self.ca_bundle.is_some() && roots.is_empty() {
            return Err(WebhookError::Config(
                "invalid caBundle: no certificate in it".into(),
            ));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| WebhookError::Config(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Arc::new(config))
    }

    /// The address to dial.
    async fn resolve(&self, state: &AppState) -> Result<(String, u16), WebhookError> {
        let (namespace, name, port) = match &self.target {
            Target::Url(u) => {
                let host = match u.host() {
                    Some(url::Host::Domain(d)) => d.to_string(),
                    Some(url::Host::Ipv4(ip)) => ip.to_string(),
                    Some(url::Host::Ipv6(ip)) => ip.to_string(),
                    None => return Err(WebhookError::Config(format!("url {u} has no host"))),
                };
                return Ok((host, u.port_or_known_default().unwrap_or(443)));
            }
            Target::Service {
                namespace,
                name,
                port,
                ..
            } => (namespace, name, *port),
        };
        let service = get(state, "services", namespace, name)
            .await?
            .ok_or_else(|| WebhookError::Resolve(format!("service \"{name}\" not found")))?;
        if service.pointer("/spec/type").and_then(Value::as_str) == Some("ExternalName") {
            let host = service
                .pointer("/spec/externalName")
                .and_then(Value::as_str)
                .unwrap_or_default();
            return Ok((host.to_string(), port));
        }
        let port_name = service
            .pointer("/spec/ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|p| p.get("port").and_then(Value::as_i64) == Some(i64::from(port)))
            .map(|p| {
                p.get("name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string()
            })
            .ok_or_else(|| {
                WebhookError::Resolve(format!("service \"{name}\" does not have port {port}"))
            })?;
        let endpoints = get(state, "endpoints", namespace, name)
            .await?
            .ok_or_else(|| WebhookError::Resolve(format!("endpoints \"{name}\" not found")))?;
        let mut candidates: Vec<(String, u16)> = Vec::new();
        for subset in endpoints
            .get("subsets")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let Some(target_port) = subset
                .get("ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .find(|p| p.get("name").and_then(Value::as_str).unwrap_or_default() == port_name)
                .and_then(|p| p.get("port").and_then(Value::as_i64))
                .and_then(|p| u16::try_from(p).ok())
            else {
                continue;
            };
            for a in subset
                .get("addresses")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(ip) = a.get("ip").and_then(Value::as_str)
                    && address_allowed(ip, state.proxy_loopback)
                {
                    candidates.push((ip.to_string(), target_port));
                }
            }
        }
        if candidates.is_empty() {
            return Err(WebhookError::Resolve(format!(
                "no endpoints available for service \"{name}\""
            )));
        }
        let pick = rand::rng().random_range(0..candidates.len());
        Ok(candidates.swap_remove(pick))
    }
}

/// A core/v1 object from the store, if it exists.
async fn get(
    state: &AppState,
    plural: &str,
    namespace: &str,
    name: &str,
) -> Result<Option<Value>, WebhookError> {
    let info = REGISTRY
        .find("", "v1", plural)
        .ok_or_else(|| WebhookError::Resolve(format!("{plural} are not registered")))?;
    let (_, kv) = state
        .store
        .get(&info.key(Some(namespace), name), 0)
        .await
        .map_err(|e| WebhookError::Resolve(e.to_string()))?;
    kv.map(|kv| decode_stored(&kv).map_err(|e| WebhookError::Resolve(e.message)))
        .transpose()
}

/// `host:port`, IPv6 addresses in brackets.
fn authority(host: &str, port: u16) -> String {
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V6(ip)) => format!("[{ip}]:{port}"),
        _ => format!("{host}:{port}"),
    }
}

/// How long an idle connection is kept (Go's `http.Transport` `IdleConnTimeout` default).
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Idle connections kept per destination (upstream's `utilnet.SetTransportDefaults`).
const MAX_IDLE_PER_DESTINATION: usize = 25;
/// TLS configurations kept; the cache starts over beyond (configurations come and go).
const MAX_TLS_CONFIGS: usize = 256;

/// What a connection can be reused for: the same trust, the same name checked in the
/// certificate and the same address. A changed `clientConfig` is another destination.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Destination {
    ca_bundle: Option<Vec<u8>>,
    server_name: ServerName<'static>,
    authority: String,
}

struct Idle {
    sender: SendRequest<Body>,
    since: Instant,
}

/// The connections and TLS configurations of this process's webhook calls.
#[derive(Default)]
struct Pool {
    tls: Mutex<HashMap<Option<Vec<u8>>, Arc<rustls::ClientConfig>>>,
    idle: Mutex<HashMap<Destination, Vec<Idle>>>,
}

static POOL: LazyLock<Pool> = LazyLock::new(Pool::default);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Pool {
    /// An idle connection to `to` that is still open (the newest first); drops the idle
    /// connections that are closed or expired, of every destination.
    async fn checkout(&self, to: &Destination) -> Option<SendRequest<Body>> {
        loop {
            let candidate = {
                let mut idle = lock(&self.idle);
                let now = Instant::now();
                idle.retain(|_, conns| {
                    conns.retain(|c| {
                        !c.sender.is_closed() && now.duration_since(c.since) < IDLE_TIMEOUT
                    });
                    !conns.is_empty()
                });
                idle.get_mut(to).and_then(Vec::pop)
            }?;
            let mut sender = candidate.sender;
            // Ready once the connection has finished the previous exchange.
            if sender.ready().await.is_ok() {
                return Some(sender);
            }
        }
    }

    /// Keeps a connection whose exchange is complete for the next call to `to`.
    fn checkin(&self, to: Destination, sender: SendRequest<Body>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = lock(&self.idle);
        let conns = idle.entry(to).or_default();
        if conns.len() < MAX_IDLE_PER_DESTINATION {
            conns.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }
}

/// A new TLS connection to `to`, its HTTP/1.1 exchange driven by its own task until the
/// last sender is dropped or the webhook closes it.
async fn dial(
    tls: Arc<rustls::ClientConfig>,
    to: &Destination,
) -> Result<SendRequest<Body>, String> {
    let authority = &to.authority;
    let tcp = TcpStream::connect(authority)
        .await
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::ConnectionRefused => {
                format!("dial tcp {authority}: connect: connection refused")
            }
            _ => format!("dial tcp {authority}: {e}"),
        })?;
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(to.server_name.clone(), tcp)
        .await
        .map_err(|e| format!("tls: failed to verify certificate: {e}"))?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "webhook connection ended");
        }
    });
    Ok(sender)
}

/// One `POST` to `to`, over an idle connection of the pool if there is one (a request that
/// an idle connection closed by the webhook could not take is sent again on a new one),
/// else a new one, kept for the next call once the answer is read: the status and the body.
async fn post(
    tls: Arc<rustls::ClientConfig>,
    to: Destination,
    path_and_query: &str,
    body: Vec<u8>,
) -> Result<(u16, Vec<u8>), String> {
    let mut request = Request::builder()
        .method("POST")
        .uri(path_and_query)
        .header(header::HOST, &to.authority)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::ACCEPT, "application/json, */*")
        .body(Body::from(body))
        .map_err(|e| e.to_string())?;
    if let Some(mut sender) = POOL.checkout(&to).await {
        match sender.try_send_request(request).await {
            Ok(response) => return read(to, sender, response).await,
            Err(mut e) => match e.take_message() {
                // Never sent: a new connection takes it.
                Some(unsent) => request = unsent,
                None => return Err(e.into_error().to_string()),
            },
        }
    }
    let mut sender = dial(tls, &to).await?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    read(to, sender, response).await
}

/// Reads the answer, then keeps the connection for the next call.
async fn read(
    to: Destination,
    sender: SendRequest<Body>,
    response: hyper::Response<hyper::body::Incoming>,
) -> Result<(u16, Vec<u8>), String> {
    let status = response.status().as_u16();
    let bytes = axum::body::to_bytes(Body::new(response.into_body()), MAX_RESPONSE_BYTES)
        .await
        .map_err(|e| format!("reading the response: {e}"))?;
    POOL.checkin(to, sender);
    Ok((status, bytes.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_service_config_defaults_its_port_and_path_and_shows_upstreams_url() {
        let c = ClientConfig::parse(&json!({
            "service": {"namespace": "webhooks", "name": "guard"}
        }))
        .expect("valid");
        assert_eq!(
            c.display_url(Duration::from_secs(10)),
            "https://guard.webhooks.svc:443/?timeout=10s"
        );
        let c = ClientConfig::parse(&json!({
            "service": {"namespace": "w", "name": "g", "path": "/validate", "port": 8443}
        }))
        .expect("valid");
        assert_eq!(
            c.display_url(Duration::from_secs(5)),
            "https://g.w.svc:8443/validate?timeout=5s"
        );
        assert_eq!(
            c.server_name().expect("valid"),
            ServerName::try_from("g.w.svc").expect("valid")
        );
    }

    #[test]
    fn a_url_config_keeps_its_query_and_must_be_https() {
        let c = ClientConfig::parse(&json!({"url": "https://127.0.0.1:9443/convert?x=1"}))
            .expect("valid");
        assert_eq!(
            c.display_url(Duration::from_secs(30)),
            "https://127.0.0.1:9443/convert?x=1&timeout=30s"
        );
        assert!(matches!(
            c.server_name().expect("valid"),
            ServerName::IpAddress(_)
        ));
        let e = ClientConfig::parse(&json!({"url": "http://example.com/"})).expect_err("refused");
        assert!(
            e.to_string()
                .contains("'https' is the only allowed URL scheme"),
            "{e}"
        );
        let e = ClientConfig::parse(&json!({})).expect_err("refused");
        assert!(e.to_string().contains("neither url nor service"), "{e}");
        let e = ClientConfig::parse(&json!({"url": "https://a/", "caBundle": "%%"}))
            .expect_err("refused");
        assert!(e.to_string().starts_with("invalid caBundle"), "{e}");
    }

    #[test]
    fn a_ca_bundle_without_certificates_is_refused() {
        let bundle = base64::engine::general_purpose::STANDARD.encode("not a certificate");
        let c =
            ClientConfig::parse(&json!({"url": "https://a/", "caBundle": bundle})).expect("valid");
        let e = c.tls().expect_err("refused");
        assert!(e.to_string().contains("no certificate"), "{e}");
    }

    #[test]
    fn only_global_unicast_endpoints_are_dialled() {
        assert!(address_allowed("10.42.0.5", false));
        assert!(!address_allowed("127.0.0.1", false));
        assert!(address_allowed("127.0.0.1", true));
        assert!(!address_allowed("169.254.1.1", true));
        assert!(!address_allowed("not-an-ip", true));
    }
}
