//! `rk3s agent`: joining a node to a cluster, as K3s' agent does.
//!
//! 1. `GET <server>/cacerts` over TLS **without** verifying the server, and without any
//!    credential; the SHA-256 of the answer must equal the hash a full token (`K10<hash>::...`)
//!    pins. A mismatch ends here, before the token's secret is sent anywhere and before
//!    anything is written. (A short token pins nothing: the CA is trusted as received, with a
//!    warning, as K3s does.)
//! 2. From then on TLS trusts only that CA. The node password (`<data-dir>/agent/node-password`,
//!    random, created once, 0600) goes with every certificate request, with basic
//!    `node:<secret>` credentials (a bootstrap token `<id>.<secret>` from `rk3s token create`
//!    as a bearer token instead), to `/v1-k3s/client-kubelet.crt` and
//!    `/v1-k3s/serving-kubelet.crt` as certificate signing requests (the keys never leave
//!    this machine), then `/v1-k3s/client-ca.crt` and `/v1-k3s/server-ca.crt` are fetched.
//! 3. Everything is written to `<data-dir>/agent/` (`client-kubelet.crt/.key`,
//!    `serving-kubelet.crt/.key`, `client-ca.crt`, `server-ca.crt`, `kubelet.kubeconfig`; keys
//!    0600), and the agent waits for shutdown: the kubelet and the rest of the node half are
//!    not built yet.
//!
//! Settings: defaults < `--config` YAML (keys are the long flag names; keys of `rk3s server`
//! are ignored) < `RK3S_<FLAG>` environment, with K3s' `K3S_URL` and `K3S_TOKEN` below them <
//! flags.

use std::future::Future;
use std::io::Write as _;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Yaml};
use rk3s_apiserver::{CertKey, JoinToken, ca_hash};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::config::DEFAULT_CONFIG_FILE;

/// How long one request to the server may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest answer read from the join endpoints.
const MAX_RESPONSE: usize = 1 << 20;

/// Flags of `rk3s agent`; every value is optional here (see [`load_agent_config`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args, Serialize)]
#[command(
    after_help = "Settings come from, lowest first: defaults, the --config YAML file \
(keys are the long flag names), the environment (RK3S_<FLAG>; K3s' K3S_URL and K3S_TOKEN too), \
flags."
)]
#[serde(rename_all = "kebab-case")]
pub struct AgentArgs {
    /// YAML file keyed by the long flag names [default: /etc/rk3s/config.yaml, if present]
    #[arg(short = 'c', long, value_name = "FILE", env = "RK3S_CONFIG_FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// Directory of rk3s state [default: /var/lib/rk3s]
    #[arg(short = 'd', long, value_name = "DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,

    /// Server to join, https://host:6443 (K3S_URL)
    #[arg(short = 's', long, value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,

    /// Join token: the server's <data-dir>/server/token (K10<ca hash>::server:<secret>) or
    /// just <secret> (K3S_TOKEN)
    #[arg(short = 't', long, value_name = "TOKEN")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,

    /// File holding the join token
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,

    /// Node name [default: the hostname]
    #[arg(long, value_name = "NAME")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,

    /// This node's IP address(es), for the kubelet serving certificate (repeatable)
    #[arg(long = "node-ip", value_name = "IP")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub node_ip: Vec<IpAddr>,
}

/// The merged settings of `rk3s agent`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", default)]
pub struct AgentConfig {
    pub data_dir: PathBuf,
    pub server: Option<String>,
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
    pub node_name: Option<String>,
    pub node_ip: Vec<IpAddr>,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            data_dir: PathBuf::from("/var/lib/rk3s"),
            server: None,
            token: None,
            token_file: None,
            node_name: None,
            node_ip: Vec::new(),
        }
    }
}

const KEYS: &[&str] = &[
    "data-dir",
    "server",
    "token",
    "token-file",
    "node-name",
    "node-ip",
];
const K3S_ALIASES: &[(&str, &str)] = &[
    ("K3S_URL", "server"),
    ("K3S_TOKEN", "token"),
    ("K3S_TOKEN_FILE", "token-file"),
];

/// Why `rk3s agent` could not join.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("config file {}: no such file", .0.display())]
    MissingFile(PathBuf),
    #[error("invalid configuration: {0}")]
    Figment(Box<figment::Error>),
    #[error("invalid configuration: {key}: {reason}")]
    Invalid { key: &'static str, reason: String },
    /// The CA the server sent is not the one the token pins. Nothing was sent or written.
    #[error(
        "the CA certificate of {server} does not match the token: the token pins CA hash \
         {expected}, the server's CA bundle hashes to {actual}; refusing to send the token to it"
    )]
    CaHash {
        server: String,
        expected: String,
        actual: String,
    },
    /// The server refused the token (401).
    #[error("{server} refused the join token (401 Unauthorized) on {path}")]
    Unauthorized { server: String, path: String },
    /// A request failed or was answered with an error.
    #[error("{server}{path}: {reason}")]
    Request {
        server: String,
        path: String,
        reason: String,
    },
    #[error("{}: {source}", path.display())]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("certificates: {0}")]
    Tls(String),
}

fn invalid(key: &'static str, reason: impl Into<String>) -> AgentError {
    AgentError::Invalid {
        key,
        reason: reason.into(),
    }
}

/// Merges defaults, the config file, the environment and the flags; touches nothing.
pub fn load_agent_config(args: &AgentArgs) -> Result<AgentConfig, AgentError> {
    let mut figment = Figment::from(Serialized::defaults(AgentConfig::default()));
    match &args.config {
        Some(path) if !path.is_file() => return Err(AgentError::MissingFile(path.clone())),
        Some(path) => figment = figment.merge(Yaml::file_exact(path)),
        None => {
            let default = Path::new(DEFAULT_CONFIG_FILE);
            if default.is_file() {
                figment = figment.merge(Yaml::file_exact(default));
            }
        }
    }
    for (var, key) in K3S_ALIASES {
        figment = figment.merge(Env::raw().only(&[var]).map(move |_| (*key).into()));
    }
    let config: AgentConfig = figment
        .merge(Env::prefixed("RK3S_").filter_map(|key| {
            let key = key.as_str().to_ascii_lowercase().replace('_', "-");
            KEYS.contains(&key.as_str()).then(|| key.into())
        }))
        .merge(Serialized::defaults(args))
        .extract()
        .map_err(|e| AgentError::Figment(Box::new(e)))?;
    config.validate()?;
    Ok(config)
}

/// Where the server is: the URL as given (for messages), host and port.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ServerUrl {
    url: String,
    host: String,
    port: u16,
}

fn parse_server(url: &str) -> Result<ServerUrl, AgentError> {
    let bad = |why: &str| invalid("server", format!("{url:?}: {why}"));
    let rest = url
        .trim()
        .strip_prefix("https://")
        .ok_or_else(|| bad("must be an https:// URL"))?;
    let authority = rest.split('/').next().unwrap_or("");
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or_else(|| bad("unclosed ["))?;
        (host, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    let port = match port {
        Some(p) => p.parse().map_err(|_| bad("bad port"))?,
        None => 6443,
    };
    Ok(ServerUrl {
        url: format!("https://{authority}"),
        host: host.to_string(),
        port,
    })
}

impl AgentConfig {
    /// Checks every value without touching anything.
    pub fn validate(&self) -> Result<(), AgentError> {
        if self.data_dir.as_os_str().is_empty() {
            return Err(invalid("data-dir", "must not be empty"));
        }
        match self.server.as_deref().map(str::trim) {
            None | Some("") => {
                return Err(invalid(
                    "server",
                    "rk3s agent needs --server https://<server>:6443 (or K3S_URL)",
                ));
            }
            Some(url) => {
                parse_server(url)?;
            }
        }
        let token = self.token.as_deref().map(str::trim).unwrap_or("");
        if token.is_empty() && self.token_file.is_none() {
            return Err(invalid(
                "token",
                "rk3s agent needs --token (or K3S_TOKEN, or --token-file): the server's \
                 <data-dir>/server/token",
            ));
        }
        if !token.is_empty() {
            JoinToken::parse(token).map_err(|e| invalid("token", e.to_string()))?;
        }
        if let Some(name) = &self.node_name
            && (name.is_empty() || name.to_ascii_lowercase() != *name)
        {
            return Err(invalid(
                "node-name",
                format!("{name:?} is not a lowercase name"),
            ));
        }
        Ok(())
    }

    /// `<data-dir>/agent`.
    pub fn agent_dir(&self) -> PathBuf {
        self.data_dir.join("agent")
    }
}

/// Joins the server and then waits for `shutdown` (the node half is not built yet).
pub async fn run_agent(
    config: AgentConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    let joined = join(&config).await?;
    tracing::info!(
        node = %joined.node,
        dir = %config.agent_dir().display(),
        "rk3s agent joined {}: kubelet credentials written; the kubelet is not built yet, \
         waiting for shutdown",
        joined.server
    );
    shutdown.await;
    tracing::info!("rk3s agent stopped");
    Ok(())
}

/// What [`join`] obtained.
#[derive(Debug)]
pub struct Joined {
    pub server: String,
    pub node: String,
}

/// Steps 1–3 of the module doc: verify the CA, get the kubelet certificates, write them.
#[tracing::instrument(name = "join", skip_all, fields(server = config.server.as_deref().unwrap_or("")))]
pub async fn join(config: &AgentConfig) -> Result<Joined, AgentError> {
    config.validate()?;
    let server = parse_server(config.server.as_deref().unwrap_or(""))?;
    let token_text = match (&config.token, &config.token_file) {
        (Some(t), _) if !t.trim().is_empty() => t.clone(),
        (_, Some(path)) => std::fs::read_to_string(path).map_err(|source| AgentError::File {
            path: path.clone(),
            source,
        })?,
        _ => String::new(),
    };
    let token = JoinToken::parse(&token_text).map_err(|e| invalid("token", e.to_string()))?;
    let node = match &config.node_name {
        Some(n) => n.clone(),
        None => hostname()?,
    };

    // 1. The CA, unverified and without credentials; checked against the token's hash.
    let insecure = client_config(None)?;
    let (code, body) = request(&server, &insecure, "GET", "/cacerts", &[], None).await?;
    if code != 200 {
        return Err(AgentError::Request {
            server: server.url.clone(),
            path: "/cacerts".into(),
            reason: format!("answered {code}"),
        });
    }
    let ca_pem = String::from_utf8(body).map_err(|_| AgentError::Request {
        server: server.url.clone(),
        path: "/cacerts".into(),
        reason: "the CA bundle is not text".into(),
    })?;
    match &token.ca_hash {
        Some(expected) if *expected != ca_hash(&ca_pem) => {
            return Err(AgentError::CaHash {
                server: server.url.clone(),
                expected: expected.clone(),
                actual: ca_hash(&ca_pem),
            });
        }
        Some(_) => tracing::info!("the server's CA matches the token's CA hash"),
        None => tracing::warn!(
            "the token does not pin the cluster CA (short form): trusting the CA the server \
             sent; use the full token from the server's <data-dir>/server/token to verify it"
        ),
    }

    // 2. Everything else over TLS pinned to that CA, with the token's secret.
    let pinned = client_config(Some(&ca_pem))?;
    let agent_dir = config.agent_dir();
    let password = node_password(&agent_dir)?;
    // A bootstrap token is a bearer token (K3s' clientaccess); anything else is basic
    // credentials of the `node` user.
    let auth = if token.is_bootstrap() {
        format!("Bearer {}", token.password)
    } else {
        format!(
            "Basic {}",
            base64(format!("node:{}", token.password).as_bytes())
        )
    };
    let ips = config
        .node_ip
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let mut headers = vec![
        ("Authorization", auth.as_str()),
        ("K3s-Node-Name", node.as_str()),
        ("K3s-Node-Password", password.as_str()),
    ];
    if !ips.is_empty() {
        headers.push(("K3s-Node-IP", ips.as_str()));
    }
    let get_ok = |path: &'static str, method: &'static str, body: Option<Vec<u8>>| {
        let (server, pinned, headers) = (&server, &pinned, &headers);
        async move {
            let (code, answer) =
                request(server, pinned, method, path, headers, body.as_deref()).await?;
            let text = String::from_utf8_lossy(&answer).trim().to_string();
            match code {
                200 => Ok(String::from_utf8_lossy(&answer).into_owned()),
                401 => Err(AgentError::Unauthorized {
                    server: server.url.clone(),
                    path: path.into(),
                }),
                _ => Err(AgentError::Request {
                    server: server.url.clone(),
                    path: path.into(),
                    reason: format!("answered {code}: {text}"),
                }),
            }
        }
    };
    let (client_key, client_csr) = rk3s_apiserver::new_key_and_csr(&format!("system:node:{node}"))
        .map_err(|e| AgentError::Tls(e.to_string()))?;
    let client_crt = get_ok("/v1-k3s/client-kubelet.crt", "POST", Some(client_csr)).await?;
    let (serving_key, serving_csr) =
        rk3s_apiserver::new_key_and_csr(&node).map_err(|e| AgentError::Tls(e.to_string()))?;
    let serving_crt = get_ok("/v1-k3s/serving-kubelet.crt", "POST", Some(serving_csr)).await?;
    let client_ca = get_ok("/v1-k3s/client-ca.crt", "GET", None).await?;
    let server_ca = get_ok("/v1-k3s/server-ca.crt", "GET", None).await?;

    // 3. Written together, keys private.
    let kubeconfig = rk3s_apiserver::kubeconfig(
        &server.url,
        &ca_pem,
        &CertKey {
            cert_pem: client_crt.clone(),
            key_pem: client_key.clone(),
        },
    );
    for (file, contents, mode) in [
        ("client-kubelet.crt", &client_crt, 0o644),
        ("client-kubelet.key", &client_key, 0o600),
        ("serving-kubelet.crt", &serving_crt, 0o644),
        ("serving-kubelet.key", &serving_key, 0o600),
        ("client-ca.crt", &client_ca, 0o644),
        ("server-ca.crt", &server_ca, 0o644),
        ("kubelet.kubeconfig", &kubeconfig, 0o600),
    ] {
        crate::kubeconfig::write(&agent_dir.join(file), contents, mode).map_err(|e| {
            AgentError::File {
                path: e.path,
                source: e.error,
            }
        })?;
    }
    Ok(Joined {
        server: server.url,
        node,
    })
}

/// A verified connection to a server's `/v1-k3s/` endpoints with a token, as K3s'
/// `clientaccess.ParseAndValidateToken`: the CA from `/cacerts` checked against the token's
/// hash (a short token trusts it as received), then TLS pinned to it, with the token's
/// credentials as `user` (a bootstrap token as a bearer token).
#[derive(Debug)]
pub(crate) struct ServerAccess {
    server: ServerUrl,
    tls: Arc<rustls::ClientConfig>,
    auth: String,
}

impl ServerAccess {
    pub(crate) async fn connect(url: &str, token: &str, user: &str) -> Result<Self, AgentError> {
        let server = parse_server(url)?;
        let token = JoinToken::parse(token).map_err(|e| invalid("token", e.to_string()))?;
        let insecure = client_config(None)?;
        let (code, body) = request(&server, &insecure, "GET", "/cacerts", &[], None).await?;
        if code != 200 {
            return Err(AgentError::Request {
                server: server.url.clone(),
                path: "/cacerts".into(),
                reason: format!("answered {code}"),
            });
        }
        let ca_pem = String::from_utf8_lossy(&body).into_owned();
        if let Some(expected) = &token.ca_hash
            && *expected != ca_hash(&ca_pem)
        {
            return Err(AgentError::CaHash {
                server: server.url.clone(),
                expected: expected.clone(),
                actual: ca_hash(&ca_pem),
            });
        }
        let auth = if token.is_bootstrap() {
            format!("Bearer {}", token.password)
        } else {
            format!(
                "Basic {}",
                base64(format!("{user}:{}", token.password).as_bytes())
            )
        };
        Ok(ServerAccess {
            tls: client_config(Some(&ca_pem))?,
            server,
            auth,
        })
    }

    /// One request; the body of a 2xx answer, else an error with the status and body.
    pub(crate) async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<Vec<u8>, AgentError> {
        let headers = [
            ("Authorization", self.auth.as_str()),
            ("Content-Type", "application/json"),
        ];
        let (code, answer) = request(&self.server, &self.tls, method, path, &headers, body).await?;
        match code {
            200..=299 => Ok(answer),
            401 => Err(AgentError::Unauthorized {
                server: self.server.url.clone(),
                path: path.into(),
            }),
            _ => Err(AgentError::Request {
                server: self.server.url.clone(),
                path: path.into(),
                reason: format!(
                    "answered {code}: {}",
                    String::from_utf8_lossy(&answer).trim()
                ),
            }),
        }
    }
}

/// Standard base64 with padding (basic credentials).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn hostname() -> Result<String, AgentError> {
    let path = Path::new("/proc/sys/kernel/hostname");
    let name = std::fs::read_to_string(path).map_err(|source| AgentError::File {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(name.trim().to_ascii_lowercase())
}

/// The node password: `<agent_dir>/node-password`, created (random, 0600) on first join.
fn node_password(agent_dir: &Path) -> Result<String, AgentError> {
    let path = agent_dir.join("node-password");
    let err = |source| AgentError::File {
        path: path.clone(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(p) if !p.trim().is_empty() => return Ok(p.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    std::fs::create_dir_all(agent_dir).map_err(err)?;
    let mut random = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut random))
        .map_err(err)?;
    let password: String = random.iter().map(|b| format!("{b:02x}")).collect();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(err)?;
    f.write_all(format!("{password}\n").as_bytes())
        .map_err(err)?;
    Ok(password)
}

/// A TLS client trusting exactly `ca_pem`, or (`None`) trusting any server: only for
/// fetching the CA whose hash is checked before it is used.
fn client_config(ca_pem: Option<&str>) -> Result<Arc<rustls::ClientConfig>, AgentError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| AgentError::Tls(e.to_string()))?;
    let config = match ca_pem {
        Some(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                let cert = cert.map_err(|e| AgentError::Tls(format!("server CA: {e}")))?;
                roots
                    .add(cert)
                    .map_err(|e| AgentError::Tls(format!("server CA: {e}")))?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(rk3s_common::serving::AnyServerCert::new(
                provider,
            )))
            .with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// One HTTP/1.1 request (`Connection: close`); the status code and the body.
async fn request(
    server: &ServerUrl,
    tls: &Arc<rustls::ClientConfig>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Result<(u16, Vec<u8>), AgentError> {
    let fail = |reason: String| AgentError::Request {
        server: server.url.clone(),
        path: path.to_string(),
        reason,
    };
    let exchange = async {
        let name = match server.host.parse::<IpAddr>() {
            Ok(ip) => ServerName::IpAddress(ip.into()),
            Err(_) => ServerName::try_from(server.host.clone())
                .map_err(|e| fail(format!("bad host name: {e}")))?,
        };
        let tcp = tokio::net::TcpStream::connect((server.host.as_str(), server.port))
            .await
            .map_err(|e| fail(format!("cannot connect: {e}")))?;
        let mut stream = tokio_rustls::TlsConnector::from(tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| fail(format!("TLS: {e}")))?;
        let body = body.unwrap_or_default();
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}:{}\r\nConnection: close\r\nUser-Agent: rk3s-agent\r\nContent-Length: {}\r\n",
            server.host,
            server.port,
            body.len()
        );
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        stream
            .write_all(head.as_bytes())
            .await
            .map_err(|e| fail(e.to_string()))?;
        stream
            .write_all(body)
            .await
            .map_err(|e| fail(e.to_string()))?;
        let mut response = Vec::new();
        let read = (&mut stream)
            .take(MAX_RESPONSE as u64)
            .read_to_end(&mut response)
            .await;
        // The server may close without a TLS close_notify; what was read is what counts.
        if let Err(e) = read
            && response.is_empty()
        {
            return Err(fail(e.to_string()));
        }
        parse_response(&response).map_err(fail)
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .map_err(|_| fail(format!("no answer within {REQUEST_TIMEOUT:?}")))?
}

/// The status and body of an HTTP/1.1 response (`Content-Length`, chunked, or until close).
fn parse_response(raw: &[u8]) -> Result<(u16, Vec<u8>), String> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("truncated response")?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let rest = &raw[split + 4..];
    let mut lines = head.lines();
    let code = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or("no status line")?;
    let mut chunked = false;
    let mut length = None;
    for line in lines {
        if let Some((k, v)) = line.split_once(':') {
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
            if k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked") {
                chunked = true;
            } else if k == "content-length" {
                length = v.parse::<usize>().ok();
            }
        }
    }
    let body = if chunked {
        let mut out = Vec::new();
        let mut rest = rest;
        loop {
            let eol = rest
                .windows(2)
                .position(|w| w == b"\r\n")
                .ok_or("truncated chunk")?;
            let size_text = String::from_utf8_lossy(&rest[..eol]);
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| "bad chunk size")?;
            rest = &rest[eol + 2..];
            if size == 0 {
                break;
            }
            if rest.len() < size {
                return Err("truncated chunk".into());
            }
            out.extend_from_slice(&rest[..size]);
            rest = rest.get(size + 2..).unwrap_or_default();
        }
        out
    } else {
        match length {
            Some(n) if rest.len() >= n => rest[..n].to_vec(),
            Some(_) => return Err("truncated body".into()),
            None => rest.to_vec(),
        }
    };
    Ok((code, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials() {
        assert_eq!(base64(b"node:s3cret"), "bm9kZTpzM2NyZXQ=");
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(base64(b"abc"), "YWJj");
        assert_eq!(base64(b""), "");
    }

    #[test]
    fn server_urls() {
        let s = parse_server("https://10.0.0.1:7443/").expect("url");
        assert_eq!((s.host.as_str(), s.port), ("10.0.0.1", 7443));
        assert_eq!(s.url, "https://10.0.0.1:7443");
        let s = parse_server("https://srv.example").expect("url");
        assert_eq!((s.host.as_str(), s.port), ("srv.example", 6443));
        let s = parse_server("https://[::1]:6443").expect("url");
        assert_eq!((s.host.as_str(), s.port), ("::1", 6443));
        assert!(parse_server("http://10.0.0.1:6443").is_err());
        assert!(parse_server("https://:6443").is_err());
    }

    #[test]
    fn responses() {
        let (code, body) =
            parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nabcdef").expect("ok");
        assert_eq!((code, body.as_slice()), (200, b"abc".as_slice()));
        let (code, body) = parse_response(
            b"HTTP/1.1 401 Unauthorized\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        )
        .expect("chunked");
        assert_eq!((code, body.as_slice()), (401, b"abcde".as_slice()));
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n").is_err());
    }

    #[test]
    fn config_needs_server_and_token() {
        let c = AgentConfig::default();
        assert!(
            c.validate()
                .expect_err("no server")
                .to_string()
                .contains("server")
        );
        let c = AgentConfig {
            server: Some("https://127.0.0.1:6443".into()),
            ..AgentConfig::default()
        };
        assert!(
            c.validate()
                .expect_err("no token")
                .to_string()
                .contains("token")
        );
        let c = AgentConfig {
            token: Some("K10abc::server:x".into()),
            ..c
        };
        assert!(
            c.validate()
                .expect_err("bad token")
                .to_string()
                .contains("token")
        );
        let c = AgentConfig {
            token: Some("s3cret".into()),
            ..c
        };
        c.validate().expect("valid");
    }
}
