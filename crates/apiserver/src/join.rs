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
use std::sync::Arc;

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

/// What the join endpoints need: the PKI to sign with and the token to check.
#[derive(Debug)]
pub(crate) struct JoinState {
    pub(crate) pki: Pki,
    /// `None`: no token configured, every `/v1-k3s/` request without a kubelet certificate is
    /// refused.
    pub(crate) token: Option<JoinToken>,
}

/// The routes, to be merged outside the authentication middleware.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/cacerts", get(cacerts))
        .route(
            "/ping",
            get(|| async { text(StatusCode::OK, "pong".into()) }),
        )
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

/// Who called a `/v1-k3s/` endpoint.
enum Caller {
    /// Basic credentials with the join token's password.
    Token,
    /// A kubelet's verified client certificate for this node.
    Node(String),
}

fn authenticate(join: &JoinState, headers: &HeaderMap, cert: Option<&PeerCert>) -> Option<Caller> {
    if let Some((cn, orgs)) = cert.and_then(|c| c.0.as_ref())
        && orgs.iter().any(|o| o == SYSTEM_NODES)
        && let Some(node) = cn.strip_prefix("system:node:").filter(|n| !n.is_empty())
    {
        return Some(Caller::Node(node.to_string()));
    }
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, creds) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(creds.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, password) = decoded.split_once(':')?;
    join.token
        .as_ref()
        .is_some_and(|t| t.accepts(user, password))
        .then_some(Caller::Token)
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

#[tracing::instrument(name = "join", skip_all, fields(file = %file, node))]
async fn supervisor(
    State(state): State<AppState>,
    Path(file): Path<String>,
    cert: Option<axum::Extension<PeerCert>>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let join = state.join.clone();
    let Some(caller) = authenticate(&join, &headers, cert.as_deref()) else {
        return error(StatusCode::UNAUTHORIZED, "Unauthorized");
    };
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

/// `<salt hex>:<sha256 hex of salt + password>`. (K3s keeps an scrypt hash; node passwords are
/// random 128-bit secrets, so a salted SHA-256 is as good against guessing.)
fn hash_password(salt: &str, password: &str) -> String {
    let digest = sha2::Sha256::digest(format!("{salt}{password}").as_bytes());
    format!("$rk3s-sha256${salt}${digest:x}")
}

fn verify_hash(stored: &str, password: &str) -> bool {
    let mut parts = stored.splitn(4, '$');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(""), Some("rk3s-sha256"), Some(salt), Some(_)) => {
            let want = hash_password(salt, password);
            want.len() == stored.len()
                && want
                    .bytes()
                    .zip(stored.bytes())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0
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
            return match stored {
                Some(h) if verify_hash(&h, password) => Ok(()),
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
        let salt: [u8; 16] = rand::random();
        let salt: String = salt.iter().map(|b| format!("{b:02x}")).collect();
        let hash = hash_password(&salt, password);
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

/// The join state of a server with `pki` and `token`.
pub(crate) fn state(pki: Pki, token: Option<JoinToken>) -> Arc<JoinState> {
    Arc::new(JoinState { pki, token })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_hashes_verify_only_the_password() {
        let h = hash_password("abcd", "s3cret");
        assert!(verify_hash(&h, "s3cret"));
        assert!(!verify_hash(&h, "s3cret2"));
        assert!(!verify_hash("s3cret", "s3cret"));
        assert_ne!(hash_password("abce", "s3cret"), h);
    }
}
