//! The join endpoints K3s serves next to the Kubernetes API on the same port (its
//! `pkg/server/handlers`), so that an agent holding the join token can become a node:
//!
//! - `GET /cacerts` (anonymous): the server CA bundle, whose SHA-256 a full token pins; the
//!   agent checks it before trusting the connection. `GET /ping`: `pong`.
//! - `/v1-k3s/client-kubelet.crt` and `/v1-k3s/serving-kubelet.crt`: the kubelet's client
//!   certificate (`system:node:<name>` in `system:nodes`, client CA) and serving certificate
//!   (CN and DNS SANs the node name and `localhost`, IP SANs 127.0.0.1 and the `K3s-Node-IP`
//!   header's addresses, server CA). `POST` with a PKCS#10 request (DER) as the body signs the
//!   requester's key and answers the certificate and its CA; `GET` (K3s' legacy form) answers
//!   a new key too. Both need the headers `K3s-Node-Name` and `K3s-Node-Password` (`rk3s-`
//!   prefixes are accepted as well): the password is checked against the node's
//!   `kube-system/<node>.node-password.k3s` Secret (its `hash`), which the first request for
//!   the node creates, so that an agent cannot take over another agent's node name.
//! - `/v1-k3s/client-ca.crt`, `/v1-k3s/server-ca.crt`: the two CAs. `/v1-k3s/readyz`: `ok`.
//!
//! Every `/v1-k3s/` request must authenticate: basic `node:<password>` or `server:<password>`
//! with the server's join token password, or a verified kubelet client certificate
//! (`system:node:<name>`, renewing), whose node must exist and match the header. A wrong or
//! missing credential is 401 with nothing issued; a wrong node password 403.
//!
//! These routes sit outside the Kubernetes authentication middleware (they have their own).

use std::net::IpAddr;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use base64::Engine as _;
use serde_json::json;
use sha2::Digest as _;

use crate::auth::PeerCert;
use crate::join_token::JoinToken;
use crate::pki::{Pki, SYSTEM_NODES};
use crate::registry::REGISTRY;
use crate::rest::FieldValidation;
use crate::server::AppState;
use crate::status::ApiError;

/// Header prefixes of the node headers: K3s' program name, and ours.
const HEADER_PREFIXES: &[&str] = &["k3s", "rk3s"];
/// Where node password Secrets live.
const NODE_PASSWORD_NAMESPACE: &str = "kube-system";

/// What the join endpoints need: the PKI to sign with and the tokens to check.
#[derive(Debug)]
pub(crate) struct JoinState {
    pub(crate) pki: Pki,
    /// The server token. `None`: no token configured, every `/v1-k3s/` request without a
    /// kubelet certificate or bootstrap token is refused.
    pub(crate) token: Option<JoinToken>,
    /// `--agent-token`: joins agents (user `node`) only.
    pub(crate) agent_token: Option<JoinToken>,
    /// `--secrets-encryption`'s file, managed through `/v1-k3s/encrypt/*`.
    pub(crate) encryption: Option<crate::secrets_encrypt::SecretsEncryption>,
}

/// The routes, to be merged outside the authentication middleware.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/cacerts", get(cacerts))
        .route(
            "/ping",
            get(|| async { text(StatusCode::OK, "pong".into()) }),
        )
        .route("/v1-k3s/encrypt/{what}", any(encrypt))
        .route("/v1-k3s/{file}", any(supervisor))
}

fn text(code: StatusCode, body: String) -> Response {
    (code, [(header::CONTENT_TYPE, "text/plain")], body).into_response()
}

fn error(code: StatusCode, message: &str) -> Response {
    tracing::debug!(code = code.as_u16(), message, "join request refused");
    text(code, format!("{message}\n"))
}

async fn cacerts(State(state): State<AppState>) -> Response {
    text(StatusCode::OK, state.join.pki.server_ca.cert_pem.clone())
}

/// Who called a `/v1-k3s/` endpoint, with K3s' roles: the server token is `k3s:server` (and
/// may join agents too), the agent token `k3s:agent`, a bootstrap token
/// `system:bootstrappers`, a kubelet certificate `system:nodes`, an admin certificate
/// `system:masters`.
enum Caller {
    /// Basic `server:<server token password>`.
    Server,
    /// Basic `node:<password>` with the server or the agent token's password.
    Agent,
    /// A bootstrap token (`Bearer <id>.<secret>`), as `system:bootstrap:<id>`.
    Bootstrap(String),
    /// A kubelet's verified client certificate for this node.
    Node(String),
    /// A verified client certificate in `system:masters`.
    Admin,
}

impl Caller {
    /// K3s' `k3s:agent`, `system:nodes` and `system:bootstrappers` routes (certificates, CAs,
    /// readyz); the server token may use them too.
    fn may_join(&self) -> bool {
        !matches!(self, Caller::Admin)
    }

    /// K3s' `k3s:server` routes (`/v1-k3s/encrypt/*`); rk3s lets `system:masters` in too.
    fn may_manage(&self) -> bool {
        matches!(self, Caller::Server | Caller::Admin)
    }
}

async fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
    cert: Option<&PeerCert>,
) -> Option<Caller> {
    let join = &state.join;
    if let Some(PeerCert(Some((cn, orgs)), false)) = cert {
        if orgs.iter().any(|o| o == SYSTEM_NODES)
            && let Some(node) = cn.strip_prefix("system:node:").filter(|n| !n.is_empty())
        {
            return Some(Caller::Node(node.to_string()));
        }
        if orgs.iter().any(|o| o == crate::pki::SYSTEM_MASTERS) {
            return Some(Caller::Admin);
        }
    }
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, creds) = value.trim().split_once(' ')?;
    if scheme.eq_ignore_ascii_case("bearer") {
        let user = crate::auth::bootstrap::authenticate(&state.store, creds.trim()).await?;
        return Some(Caller::Bootstrap(user.name));
    }
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(creds.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, password) = decoded.split_once(':')?;
    if join
        .token
        .as_ref()
        .is_some_and(|t| t.accepts(user, password))
    {
        return Some(if user == "server" {
            Caller::Server
        } else {
            Caller::Agent
        });
    }
    join.agent_token
        .as_ref()
        .is_some_and(|t| t.accepts_agent(user, password))
        .then_some(Caller::Agent)
}

/// `GET /v1-k3s/encrypt/status`, `PUT /v1-k3s/encrypt/config` (K3s' secrets-encrypt
/// endpoints, for the server token or an admin certificate).
#[tracing::instrument(name = "secrets-encrypt", skip_all, fields(what = %what))]
async fn encrypt(
    State(state): State<AppState>,
    Path(what): Path<String>,
    cert: Option<axum::Extension<PeerCert>>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(caller) = authenticate(&state, &headers, cert.as_deref()).await else {
        return error(StatusCode::UNAUTHORIZED, "Unauthorized");
    };
    if !caller.may_manage() {
        return error(StatusCode::FORBIDDEN, "forbidden");
    }
    let enc = state.join.encryption.as_ref();
    match (what.as_str(), &method) {
        ("status", &Method::GET) => {
            let status = match enc {
                Some(enc) => match enc.status(&state.store).await {
                    Ok(s) => s,
                    Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
                },
                None => crate::secrets_encrypt::EncryptionState::default(),
            };
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                serde_json::to_string(&status).unwrap_or_default(),
            )
                .into_response()
        }
        ("config", &Method::PUT) => {
            let req: crate::secrets_encrypt::EncryptionRequest = match serde_json::from_slice(&body)
            {
                Ok(r) => r,
                Err(e) => return error(StatusCode::BAD_REQUEST, &e.to_string()),
            };
            let Some(enc) = enc else {
                return error(
                    StatusCode::BAD_REQUEST,
                    "secrets encryption is not configured: start the server with --secrets-encryption",
                );
            };
            match enc.apply(&state.store, &req).await {
                Ok(()) => StatusCode::OK.into_response(),
                Err(e) => {
                    tracing::warn!(error = %e, "secrets-encrypt request failed");
                    error(StatusCode::BAD_REQUEST, &e.to_string())
                }
            }
        }
        ("status" | "config", _) => error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
        _ => error(StatusCode::NOT_FOUND, "404 page not found"),
    }
}

fn node_header<'h>(headers: &'h HeaderMap, field: &str) -> Option<&'h str> {
    HEADER_PREFIXES.iter().find_map(|p| {
        headers
            .get(format!("{p}-Node-{field}"))
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
    })
}

#[tracing::instrument(name = "join", skip_all, fields(file = %file, node, user))]
async fn supervisor(
    State(state): State<AppState>,
    Path(file): Path<String>,
    cert: Option<axum::Extension<PeerCert>>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let join = state.join.clone();
    let Some(caller) = authenticate(&state, &headers, cert.as_deref()).await else {
        return error(StatusCode::UNAUTHORIZED, "Unauthorized");
    };
    if !caller.may_join() {
        return error(StatusCode::FORBIDDEN, "forbidden");
    }
    if let Caller::Bootstrap(user) = &caller {
        tracing::Span::current().record("user", user.as_str());
    }
    match (file.as_str(), &method) {
        ("client-ca.crt", &Method::GET) => {
            text(StatusCode::OK, join.pki.client_ca.cert_pem.clone())
        }
        ("server-ca.crt", &Method::GET) => {
            text(StatusCode::OK, join.pki.server_ca.cert_pem.clone())
        }
        ("readyz", &Method::GET) => text(StatusCode::OK, "ok".into()),
        ("client-kubelet.crt" | "serving-kubelet.crt", &Method::GET | &Method::POST) => {
            let node = match node_auth(&state, &caller, &headers).await {
                Ok(node) => node,
                Err(response) => return response,
            };
            tracing::Span::current().record("node", node.as_str());
            let csr = (method == Method::POST).then_some(body.as_ref());
            let issued = if file == "client-kubelet.crt" {
                join.pki.kubelet_client_cert(&node, csr)
            } else {
                let ips = match node_ips(&headers) {
                    Ok(ips) => ips,
                    Err(bad) => {
                        return error(
                            StatusCode::BAD_REQUEST,
                            &format!("invalid node IP address {bad}"),
                        );
                    }
                };
                join.pki.kubelet_serving_cert(&node, &ips, csr)
            };
            match issued {
                Ok(ck) => {
                    tracing::info!(node, file, "issued a kubelet certificate to a joining node");
                    text(StatusCode::OK, format!("{}{}", ck.cert_pem, ck.key_pem))
                }
                Err(e) => error(StatusCode::BAD_REQUEST, &e.to_string()),
            }
        }
        (
            "client-ca.crt"
            | "server-ca.crt"
            | "readyz"
            | "client-kubelet.crt"
            | "serving-kubelet.crt",
            _,
        ) => error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
        _ => error(StatusCode::NOT_FOUND, "404 page not found"),
    }
}

fn node_ips(headers: &HeaderMap) -> Result<Vec<IpAddr>, String> {
    node_header(headers, "IP")
        .map(|v| {
            v.split(',')
                .map(|s| s.trim().parse::<IpAddr>().map_err(|_| s.to_string()))
                .collect()
        })
        .unwrap_or(Ok(Vec::new()))
}

/// The node a certificate request is for, after checking its password (K3s' node password
/// validation): 400 without the headers, 401 for a kubelet certificate of another or a
/// deleted node, 403 for a password that does not match the node's Secret.
async fn node_auth(
    state: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
) -> Result<String, Response> {
    let Some(name) = node_header(headers, "Name").map(str::to_ascii_lowercase) else {
        return Err(error(StatusCode::BAD_REQUEST, "node name not set"));
    };
    let Some(password) = node_header(headers, "Password") else {
        return Err(error(StatusCode::BAD_REQUEST, "node password not set"));
    };
    if !crate::validation::validate_name(crate::validation::NameRule::Subdomain, &name).is_empty() {
        return Err(error(
            StatusCode::BAD_REQUEST,
            &format!("invalid node name {name:?}"),
        ));
    }
    if let Caller::Node(own) = caller {
        if *own != name {
            return Err(error(
                StatusCode::BAD_REQUEST,
                "header node name does not match auth node name",
            ));
        }
        if read(state, "nodes", None, &name)
            .await
            .map_err(|e| e.into_response())?
            .is_none()
        {
            return Err(error(
                StatusCode::UNAUTHORIZED,
                &format!("unable to verify node identity: node {name:?} not found"),
            ));
        }
    }
    ensure_node_password(state, &name, password).await?;
    Ok(name)
}

async fn read(
    state: &AppState,
    plural: &str,
    ns: Option<&str>,
    name: &str,
) -> Result<Option<serde_json::Value>, ApiError> {
    let info = REGISTRY
        .find("", "v1", plural)
        .ok_or_else(|| ApiError::internal(format!("{plural} are not registered")))?;
    let (_, kv) = state.store.get(&info.key(ns, name), 0).await?;
    kv.map(|kv| crate::rest::decode_stored(&kv)).transpose()
}

/// K3s' node password hash: `$1:<salt hex>:<log2 N>:<r>:<p>:<key, unpadded base64>`, scrypt
/// with N = 2^15, r = 8, p = 1, a 64-byte key and an 8-byte salt (K3s' `hash.NewSCrypt`).
fn hash_password(password: &str) -> String {
    let salt: [u8; 8] = rand::random();
    let salt_hex: String = salt.iter().map(|b| format!("{b:02x}")).collect();
    let key = scrypt_key(password, &salt, SCRYPT_LOG_N, 8, 1, 64).unwrap_or_default();
    format!(
        "$1:{salt_hex}:{SCRYPT_LOG_N}:8:1:{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(key)
    )
}

const SCRYPT_LOG_N: u8 = 15;

fn scrypt_key(
    password: &str,
    salt: &[u8],
    log_n: u8,
    r: u32,
    p: u32,
    len: usize,
) -> Option<Vec<u8>> {
    let params = scrypt::Params::new(log_n, r, p, len).ok()?;
    let mut out = vec![0u8; len];
    scrypt::scrypt(password.as_bytes(), salt, &params, &mut out).ok()?;
    Some(out)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Verifies `password` against a stored hash: K3s' scrypt form, or the salted SHA-256 form
/// (`$rk3s-sha256$<salt>$<hex>`) earlier rk3s versions wrote.
fn verify_hash(stored: &str, password: &str) -> bool {
    if let Some(rest) = stored.strip_prefix("$1:") {
        let parts: Vec<&str> = rest.split(':').collect();
        let [salt_hex, log_n, r, p, key] = parts.as_slice() else {
            return false;
        };
        let salt: Option<Vec<u8>> = (0..salt_hex.len())
            .step_by(2)
            .map(|i| {
                salt_hex
                    .get(i..i + 2)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
            })
            .collect();
        let (Some(salt), Ok(log_n), Ok(r), Ok(p), Ok(want)) = (
            salt,
            log_n.parse::<u8>(),
            r.parse::<u32>(),
            p.parse::<u32>(),
            base64::engine::general_purpose::STANDARD_NO_PAD.decode(key),
        ) else {
            return false;
        };
        // Bounded so that a stored hash cannot make verification take unbounded memory.
        if log_n > 20 || r > 32 || p > 16 || want.is_empty() {
            return false;
        }
        return scrypt_key(password, &salt, log_n, r, p, want.len())
            .is_some_and(|got| constant_time_eq(&got, &want));
    }
    let mut parts = stored.splitn(4, '$');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(""), Some("rk3s-sha256"), Some(salt), Some(hex)) => {
            let digest = sha2::Sha256::digest(format!("{salt}{password}").as_bytes());
            constant_time_eq(format!("{digest:x}").as_bytes(), hex.as_bytes())
        }
        _ => false,
    }
}

/// Verifies `password` against the node's password Secret, creating the Secret when the node
/// has none (first join).
async fn ensure_node_password(
    state: &AppState,
    node: &str,
    password: &str,
) -> Result<(), Response> {
    let secret_name = format!("{node}.node-password.k3s");
    let internal = |e: ApiError| e.into_response();
    for _ in 0..2 {
        if let Some(secret) = read(
            state,
            "secrets",
            Some(NODE_PASSWORD_NAMESPACE),
            &secret_name,
        )
        .await
        .map_err(internal)?
        {
            let stored = secret["data"]["hash"]
                .as_str()
                .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
                .and_then(|b| String::from_utf8(b).ok());
            let verified = match stored.clone() {
                Some(h) => {
                    let owned = password.to_string();
                    tokio::task::spawn_blocking(move || verify_hash(&h, &owned))
                        .await
                        .unwrap_or(false)
                }
                None => false,
            };
            return match stored {
                Some(_) if verified => Ok(()),
                Some(_) => Err(error(
                    StatusCode::FORBIDDEN,
                    &format!("unable to verify password for node '{node}'"),
                )),
                None => Err(error(
                    StatusCode::FORBIDDEN,
                    &format!("unable to locate hash data for node secret '{secret_name}'"),
                )),
            };
        }
        let owned = password.to_string();
        let hash = tokio::task::spawn_blocking(move || hash_password(&owned))
            .await
            .map_err(|e| {
                ApiError::internal(format!("hashing the node password: {e}")).into_response()
            })?;
        let info = REGISTRY
            .find("", "v1", "secrets")
            .ok_or_else(|| ApiError::internal("secrets are not registered").into_response())?;
        let secret = json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": { "name": secret_name, "namespace": NODE_PASSWORD_NAMESPACE },
            "immutable": true,
            "type": "Opaque",
            "data": { "hash": base64::engine::general_purpose::STANDARD.encode(hash) },
        });
        match crate::rest::create_object(
            state,
            info,
            Some(NODE_PASSWORD_NAMESPACE),
            secret,
            false,
            FieldValidation::Strict,
        )
        .await
        {
            Ok(_) => {
                tracing::info!(node, "stored the password of a new node");
                return Ok(());
            }
            // Created concurrently: verify against that one.
            Err(e) if e.reason == "AlreadyExists" => continue,
            Err(e) => return Err(e.into_response()),
        }
    }
    Err(error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "node password secret changed concurrently",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_hashes_verify_only_the_password() {
        let h = hash_password("s3cret");
        assert!(h.starts_with("$1:") && h.contains(":15:8:1:"), "{h}");
        assert!(verify_hash(&h, "s3cret"));
        assert!(!verify_hash(&h, "s3cret2"));
        assert!(!verify_hash("s3cret", "s3cret"));
        assert_ne!(hash_password("s3cret"), h, "salted");
        // A hash K3s wrote (its format and parameters, computed independently here with a
        // small N so that the test is fast).
        let salt = [1u8, 2, 3, 4, 5, 6, 7, 8];
        let key = scrypt_key("pw", &salt, 4, 8, 1, 64).expect("scrypt");
        let k3s = format!(
            "$1:0102030405060708:4:8:1:{}",
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(key)
        );
        assert!(verify_hash(&k3s, "pw") && !verify_hash(&k3s, "px"));
        // The salted SHA-256 hashes of earlier rk3s versions still verify.
        let digest = sha2::Sha256::digest(b"abcds3cret");
        let old = format!("$rk3s-sha256$abcd${digest:x}");
        assert!(verify_hash(&old, "s3cret") && !verify_hash(&old, "s3cret2"));
    }
}
