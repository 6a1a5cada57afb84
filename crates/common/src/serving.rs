//! A component's secure port, as upstream's `--secure-port`/`--bind-address`: HTTPS (a
//! self-signed certificate made at start unless `--tls-cert-file`/`--tls-private-key-file`
//! name one) serving the [`health`](crate::health) endpoints and `/metrics`.
//!
//! Binding is separate from serving ([`SecureServing::bind`], then
//! [`SecureServing::serve`]), so that a taken port is an error of the component's start.
//! Unlike upstream, nothing here authenticates or authorizes: `/metrics` is open to whoever
//! reaches the address (127.0.0.1 by default).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::health::{Answer, Checks};
use crate::metrics::{self, Registry};

/// How long a client may take over its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where and how a component serves: its `secure-port` (0: not at all), `bind-address`, and
/// optionally its own certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServingConfig {
    pub bind_address: IpAddr,
    pub secure_port: u16,
    pub tls_cert_file: Option<PathBuf>,
    pub tls_private_key_file: Option<PathBuf>,
}

/// Why the secure port cannot serve.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The address is taken or not ours.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The certificate or key cannot be read, made or used.
    #[error("serving certificate: {0}")]
    Tls(String),
}

/// A bound secure port, not serving yet.
pub struct SecureServing {
    listener: TcpListener,
    acceptor: TlsAcceptor,
    addr: SocketAddr,
}

impl std::fmt::Debug for SecureServing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecureServing")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// Stops the serving task when dropped.
#[derive(Debug)]
pub struct ServingTask(tokio::task::JoinHandle<()>);

impl Drop for ServingTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl ServingConfig {
    /// Checks the values without touching anything: a certificate needs its key.
    pub fn validate(&self) -> Result<(), String> {
        if self.tls_cert_file.is_some() != self.tls_private_key_file.is_some() {
            return Err("tls-cert-file and tls-private-key-file go together".into());
        }
        Ok(())
    }
}

impl SecureServing {
    /// Binds `bind-address:secure-port` and prepares the certificate; `None` when the port is
    /// 0 (serving disabled, as upstream).
    pub async fn bind(config: &ServingConfig) -> Result<Option<SecureServing>, ServeError> {
        if config.secure_port == 0 {
            return Ok(None);
        }
        config.validate().map_err(ServeError::Tls)?;
        let addr = SocketAddr::new(config.bind_address, config.secure_port);
        let tls = tls_config(config)?;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Bind { addr, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| ServeError::Bind { addr, source })?;
        Ok(Some(SecureServing {
            listener,
            acceptor: TlsAcceptor::from(tls),
            addr,
        }))
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves `checks` and `metrics` in a task of their own, until the returned handle is
    /// dropped.
    pub fn serve(self, checks: Checks, metrics: Registry) -> ServingTask {
        tracing::info!(addr = %self.addr, "serving health and metrics over HTTPS");
        let app = axum::Router::new()
            .route("/healthz", get(healthz))
            .route("/livez", get(livez))
            .route("/readyz", get(readyz))
            .route("/healthz/{check}", get(one))
            .route("/livez/{check}", get(one))
            .route("/readyz/{check}", get(one))
            .route("/metrics", get(render_metrics))
            .fallback(not_found)
            .with_state(Arc::new((checks, metrics)));
        ServingTask(tokio::spawn(accept_loop(self.listener, self.acceptor, app)))
    }
}

type AppState = State<Arc<(Checks, Registry)>>;

/// The certificate and key files, or a self-signed certificate for `localhost`, 127.0.0.1 and
/// the bind address (upstream makes one the same way when it is given none).
fn tls_config(config: &ServingConfig) -> Result<Arc<rustls::ServerConfig>, ServeError> {
    let tls = |e: String| ServeError::Tls(e);
    let (certs, key) = match (&config.tls_cert_file, &config.tls_private_key_file) {
        (Some(cert), Some(key)) => {
            let certs = CertificateDer::pem_file_iter(cert)
                .and_then(|i| i.collect::<Result<Vec<_>, _>>())
                .map_err(|e| tls(format!("{}: {e}", cert.display())))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| tls(format!("{}: {e}", key.display())))?;
            (certs, key)
        }
        _ => {
            let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
            if !config.bind_address.is_unspecified() && !config.bind_address.is_loopback() {
                names.push(config.bind_address.to_string());
            }
            let made = rcgen::generate_simple_self_signed(names)
                .map_err(|e| tls(format!("making a self-signed certificate: {e}")))?;
            let key = PrivatePkcs8KeyDer::from(made.signing_key.serialize_der());
            (vec![made.cert.der().clone()], PrivateKeyDer::Pkcs8(key))
        }
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| tls(e.to_string()))?;
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(server))
}

async fn accept_loop(listener: TcpListener, acceptor: TlsAcceptor, app: axum::Router) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (acceptor, app) = (acceptor.clone(), app.clone());
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let builder = auto::Builder::new(TokioExecutor::new());
            if let Err(e) = builder
                .serve_connection(TokioIo::new(tls), TowerToHyperService::new(app))
                .await
            {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}

fn text(answer: Answer) -> Response {
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        answer.body,
    )
        .into_response()
}

async fn healthz(State(s): AppState, RawQuery(q): RawQuery) -> Response {
    text(s.0.answer("healthz", q.as_deref()))
}

async fn livez(State(s): AppState, RawQuery(q): RawQuery) -> Response {
    text(s.0.answer("livez", q.as_deref()))
}

async fn readyz(State(s): AppState, RawQuery(q): RawQuery) -> Response {
    text(s.0.answer("readyz", q.as_deref()))
}

async fn one(State(s): AppState, Path(check): Path<String>) -> Response {
    text(s.0.answer_one(&check))
}

async fn render_metrics(State(s): AppState) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        s.1.render(),
    )
        .into_response()
}

async fn not_found() -> Response {
    text(Answer {
        status: 404,
        body: "404 page not found\n".into(),
    })
}

/// A failed [`probe`], in the words of Go's HTTP client (what upstream's componentstatuses
/// shows).
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("Get \"{url}\": dial tcp {addr}: connect: {reason}")]
    Connect {
        url: String,
        addr: SocketAddr,
        reason: String,
    },
    #[error("Get \"{url}\": {reason}")]
    Request { url: String, reason: String },
}

/// `GET https://<addr><path>` without verifying the server's certificate (as upstream's
/// componentstatuses probe asks the scheduler and controller manager): the status code and
/// the body. The whole exchange is bounded by `timeout`.
pub async fn probe(
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<(u16, String), ProbeError> {
    let url = format!("https://{addr}{path}");
    match tokio::time::timeout(timeout, probe_inner(addr, path, &url)).await {
        Ok(result) => result,
        Err(_) => Err(ProbeError::Request {
            url,
            reason: "context deadline exceeded (Client.Timeout exceeded while awaiting headers)"
                .into(),
        }),
    }
}

async fn probe_inner(addr: SocketAddr, path: &str, url: &str) -> Result<(u16, String), ProbeError> {
    let request_error = |reason: String| ProbeError::Request {
        url: url.to_string(),
        reason,
    };
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| ProbeError::Connect {
            url: url.to_string(),
            addr,
            reason: match e.kind() {
                std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
                _ => e.to_string(),
            },
        })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| request_error(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServerCert::new(provider)))
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| request_error(e.to_string()))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| request_error(e.to_string()))?;
    let conn = tokio::spawn(conn);
    let request = axum::http::Request::get(path)
        .header(header::HOST, addr.to_string())
        .body(axum::body::Body::empty())
        .map_err(|e| request_error(e.to_string()))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| request_error(e.to_string()))?;
    let status = response.status().as_u16();
    let body = axum::body::to_bytes(axum::body::Body::new(response.into_body()), 1 << 20)
        .await
        .map_err(|e| request_error(e.to_string()))?;
    conn.abort();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// A TLS client's verifier that accepts any server certificate (the handshake's signatures
/// are still checked against the certificate's key): for probes and proxies that, as
/// upstream's, do not verify whom they talk to, and for fetching a CA to pin by its hash
/// before trusting it.
#[derive(Debug)]
pub struct AnyServerCert(Arc<rustls::crypto::CryptoProvider>);

impl AnyServerCert {
    /// The verifier, checking signatures with `provider`'s algorithms.
    pub fn new(provider: Arc<rustls::crypto::CryptoProvider>) -> Self {
        AnyServerCert(provider)
    }
}

impl rustls::client::danger::ServerCertVerifier for AnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
