//! ServiceAccount tokens: ES256 JWTs signed with the key in `server/tls/service.key`, with
//! upstream's claims (`iss`, `sub`, `aud`, `exp`, `iat`, `nbf`, `jti`, and `kubernetes.io` naming
//! the namespace, service account and bound pod/secret/node), issued by the TokenRequest API
//! (`POST .../serviceaccounts/<name>/token`) and verified on every request: signature, issuer,
//! audience, expiry, and that the service account and bound object still exist with the same
//! uid.
//!
//! Also the legacy Secret-based tokens that rk3s-controller's `serviceaccount-token` loop puts
//! in `kubernetes.io/service-account-token` Secrets (issuer [`LEGACY_ISSUER`], no expiry, no
//! audience), checked as upstream's legacy validator: accepted only while the Secret exists,
//! is not being deleted, holds that exact token and is not labelled
//! [`INVALID_SINCE_LABEL`], and the service account exists with the uid the token names;
//! each use sets the Secret's [`LAST_USED_LABEL`] to today (at most one write a day). And the
//! OIDC discovery documents of the issuer (`/.well-known/openid-configuration`,
//! `/openid/v1/jwks`).

use std::collections::BTreeMap;

use crate::storage::Store;
use axum::http::StatusCode;
use axum::response::Response;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rcgen::PublicKeyData as _;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::Digest as _;

use super::UserInfo;
use crate::error::{Error, Result};
use crate::registry::REGISTRY;
use crate::status::ApiError;

/// Default and minimum `expirationSeconds` of a TokenRequest, as upstream.
const DEFAULT_EXPIRATION: i64 = 3600;
const MIN_EXPIRATION: i64 = 600;
/// Upstream caps requested lifetimes at 2^32 seconds.
const MAX_EXPIRATION: i64 = 1 << 32;

/// The `iss` of legacy Secret-based tokens (upstream's `serviceaccount.LegacyIssuer`).
pub(crate) const LEGACY_ISSUER: &str = "kubernetes/serviceaccount";
/// The label upstream's legacy token tracking sets on a token Secret, to the day (UTC) the
/// token was last used.
pub(crate) const LAST_USED_LABEL: &str = "kubernetes.io/legacy-token-last-used";
/// A token Secret with this label is refused (upstream's legacy token clean-up marks unused
/// auto-generated tokens with it before deleting them).
pub(crate) const INVALID_SINCE_LABEL: &str = "kubernetes.io/legacy-token-invalid-since";
/// The Secret type of legacy tokens, and its keys and annotations.
pub(crate) const TOKEN_SECRET_TYPE: &str = "kubernetes.io/service-account-token";
pub(crate) const SA_NAME_ANNOTATION: &str = "kubernetes.io/service-account.name";

/// Issues and verifies service-account tokens.
pub(crate) struct Tokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    key_id: String,
    /// The public key as a JWK set (`/openid/v1/jwks`).
    jwks: Value,
    pub(crate) issuer: String,
    pub(crate) audiences: Vec<String>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("issuer", &self.issuer)
            .field("audiences", &self.audiences)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Ref {
    name: String,
    uid: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Private {
    namespace: String,
    serviceaccount: Ref,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pod: Option<Ref>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    secret: Option<Ref>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    node: Option<Ref>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Claims {
    iss: String,
    sub: String,
    aud: Vec<String>,
    exp: i64,
    iat: i64,
    nbf: i64,
    jti: String,
    #[serde(rename = "kubernetes.io")]
    k8s: Private,
}

/// What a token is bound to, besides its service account.
#[derive(Debug, Clone, Default)]
pub(crate) struct Binding {
    pub(crate) pod: Option<(String, String)>,
    pub(crate) secret: Option<(String, String)>,
    pub(crate) node: Option<(String, String)>,
}

impl Tokens {
    pub(crate) fn new(key_pem: &str, issuer: String, audiences: Vec<String>) -> Result<Self> {
        let key = rcgen::KeyPair::from_pem(key_pem)
            .map_err(|e| Error::Tls(format!("service-account key: {e}")))?;
        let encoding = EncodingKey::from_ec_pem(key_pem.as_bytes())
            .map_err(|e| Error::Tls(format!("service-account key: {e}")))?;
        let decoding = DecodingKey::from_ec_pem(key.public_key_pem().as_bytes())
            .map_err(|e| Error::Tls(format!("service-account key: {e}")))?;
        // As upstream: the key id is the unpadded base64url SHA-256 of the public key (DER).
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let key_id = b64.encode(sha2::Sha256::digest(key.subject_public_key_info()));
        // An uncompressed P-256 point: 0x04, then x and y (32 bytes each).
        let point = key.public_key_raw();
        if point.len() != 65 || point.first() != Some(&4) {
            return Err(Error::Tls(
                "service-account key: not an ECDSA P-256 key".into(),
            ));
        }
        let jwks = json!({ "keys": [{
            "use": "sig",
            "kty": "EC",
            "kid": key_id,
            "crv": "P-256",
            "alg": "ES256",
            "x": b64.encode(&point[1..33]),
            "y": b64.encode(&point[33..]),
        }]});
        Ok(Tokens {
            encoding,
            decoding,
            key_id,
            jwks,
            issuer,
            audiences,
        })
    }

    /// Signs a token for `namespace`/`name` (uid `sa_uid`) valid for `seconds`.
    pub(crate) fn issue(
        &self,
        namespace: &str,
        name: &str,
        sa_uid: &str,
        audiences: Vec<String>,
        seconds: i64,
        binding: &Binding,
    ) -> std::result::Result<(String, i64), String> {
        let now = crate::time::unix_now();
        let r = |b: &Option<(String, String)>| {
            b.as_ref().map(|(name, uid)| Ref {
                name: name.clone(),
                uid: uid.clone(),
            })
        };
        let claims = Claims {
            iss: self.issuer.clone(),
            sub: format!("system:serviceaccount:{namespace}:{name}"),
            aud: audiences,
            exp: now + seconds,
            iat: now,
            nbf: now,
            jti: crate::rest::new_uid(),
            k8s: Private {
                namespace: namespace.into(),
                serviceaccount: Ref {
                    name: name.into(),
                    uid: sa_uid.into(),
                },
                pod: r(&binding.pod),
                secret: r(&binding.secret),
                node: r(&binding.node),
            },
        };
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.key_id.clone());
        let token =
            jsonwebtoken::encode(&header, &claims, &self.encoding).map_err(|e| e.to_string())?;
        Ok((token, claims.exp))
    }

    /// Verifies `token`; `audiences` (TokenReview's) replace the API audiences when given.
    pub(crate) async fn authenticate(
        &self,
        store: &Store,
        token: &str,
        audiences: Option<&[String]>,
    ) -> std::result::Result<UserInfo, String> {
        if unverified_issuer(token).as_deref() == Some(LEGACY_ISSUER) {
            return self.authenticate_legacy(store, token, audiences).await;
        }
        let mut validation = Validation::new(Algorithm::ES256);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(audiences.unwrap_or(&self.audiences));
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = 0;
        validation.validate_nbf = true;
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation)
            .map_err(|e| e.to_string())?;
        let c = data.claims;
        let ns = &c.k8s.namespace;
        let sa = &c.k8s.serviceaccount;
        if c.sub != format!("system:serviceaccount:{ns}:{}", sa.name) {
            return Err("sub does not match the service account".into());
        }
        check_live(store, "serviceaccounts", Some(ns), sa).await?;
        if let Some(pod) = &c.k8s.pod {
            check_live(store, "pods", Some(ns), pod).await?;
        }
        if let Some(secret) = &c.k8s.secret {
            check_live(store, "secrets", Some(ns), secret).await?;
        }
        // As upstream: a pod-bound token's node claim is information only (the pod is
        // checked); a token bound to a node alone needs that node.
        if let Some(node) = &c.k8s.node
            && c.k8s.pod.is_none()
        {
            check_live(store, "nodes", None, node).await?;
        }
        let mut extra = BTreeMap::new();
        if let Some(pod) = &c.k8s.pod {
            extra.insert(
                "authentication.kubernetes.io/pod-name".into(),
                vec![pod.name.clone()],
            );
            extra.insert(
                "authentication.kubernetes.io/pod-uid".into(),
                vec![pod.uid.clone()],
            );
        }
        if let Some(node) = &c.k8s.node {
            extra.insert(
                "authentication.kubernetes.io/node-name".into(),
                vec![node.name.clone()],
            );
            if !node.uid.is_empty() {
                extra.insert(
                    "authentication.kubernetes.io/node-uid".into(),
                    vec![node.uid.clone()],
                );
            }
        }
        extra.insert(
            "authentication.kubernetes.io/credential-id".into(),
            vec![format!("JTI={}", c.jti)],
        );
        Ok(UserInfo {
            name: c.sub,
            uid: sa.uid.clone(),
            groups: vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{ns}"),
            ],
            extra,
        })
    }
}

impl Tokens {
    /// Verifies a legacy Secret-based token, as upstream's legacy validator with lookup on.
    async fn authenticate_legacy(
        &self,
        store: &Store,
        token: &str,
        audiences: Option<&[String]>,
    ) -> std::result::Result<UserInfo, String> {
        let mut validation = Validation::new(Algorithm::ES256);
        validation.set_issuer(&[LEGACY_ISSUER]);
        validation.set_required_spec_claims(&["iss"]);
        validation.validate_exp = false;
        validation.validate_aud = false;
        let c = jsonwebtoken::decode::<LegacyClaims>(token, &self.decoding, &validation)
            .map_err(|e| e.to_string())?
            .claims;
        // A legacy token has no audience: it is good for the API audiences only.
        if let Some(wanted) = audiences
            && !wanted.iter().any(|a| self.audiences.contains(a))
        {
            return Err(format!(
                "token audiences {:?} is invalid for the target audiences {wanted:?}",
                self.audiences
            ));
        }
        let ns = c.namespace.as_str();
        let sa_name = c.service_account_name.as_str();
        for (value, what) in [
            (c.sub.as_str(), "sub claim is missing"),
            (ns, "namespace claim is missing"),
            (c.secret_name.as_str(), "secretName claim is missing"),
            (sa_name, "serviceAccountName claim is missing"),
            (
                c.service_account_uid.as_str(),
                "serviceAccountUID claim is missing",
            ),
        ] {
            if value.is_empty() {
                return Err(what.into());
            }
        }
        if c.sub != format!("system:serviceaccount:{ns}:{sa_name}") {
            return Err("sub claim is invalid".into());
        }
        let invalidated = || "Token has been invalidated".to_string();
        let secret = read(store, "secrets", Some(ns), &c.secret_name)
            .await
            .map_err(|e| e.message)?
            .ok_or_else(invalidated)?;
        if secret["metadata"]["deletionTimestamp"].is_string() {
            return Err(invalidated());
        }
        let stored = secret["data"]["token"]
            .as_str()
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
            .unwrap_or_default();
        if !constant_time_eq(&stored, token.as_bytes()) {
            return Err("Token does not match server's copy".into());
        }
        let sa = read(store, "serviceaccounts", Some(ns), sa_name)
            .await
            .map_err(|e| e.message)?
            .ok_or_else(|| format!("serviceaccounts {sa_name:?} not found"))?;
        if sa["metadata"]["deletionTimestamp"].is_string() {
            return Err(format!("ServiceAccount {ns}/{sa_name} has been deleted"));
        }
        let sa_uid = sa["metadata"]["uid"].as_str().unwrap_or("");
        if sa_uid != c.service_account_uid {
            return Err(format!(
                "ServiceAccount UID ({sa_uid}) does not match claim ({})",
                c.service_account_uid
            ));
        }
        let marked_invalid = secret["metadata"]["labels"][INVALID_SINCE_LABEL]
            .as_str()
            .is_some_and(|v| !v.is_empty());
        mark_last_used(store, &secret).await;
        if marked_invalid {
            return Err(format!(
                "the token in secret {ns}/{} for service account {ns}/{sa_name} has been marked invalid. Use tokens from the TokenRequest API or manually created secret-based tokens, or remove the '{INVALID_SINCE_LABEL}' label from the secret to temporarily allow use of this token",
                c.secret_name
            ));
        }
        Ok(UserInfo {
            name: c.sub,
            uid: c.service_account_uid,
            groups: vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{ns}"),
            ],
            extra: BTreeMap::new(),
        })
    }

    /// `GET /.well-known/openid-configuration`: upstream's OIDC discovery document, with
    /// `jwks_uri` on this server's external address (upstream's default without
    /// `--service-account-jwks-uri`).
    pub(crate) fn openid_configuration(&self, server_address: &str) -> Value {
        json!({
            "issuer": self.issuer,
            "jwks_uri": format!("https://{server_address}{JWKS_PATH}"),
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
        })
    }
}

/// Where the issuer's keys are served.
pub(crate) const JWKS_PATH: &str = "/openid/v1/jwks";
/// Where the issuer's discovery document is served.
pub(crate) const OPENID_CONFIG_PATH: &str = "/.well-known/openid-configuration";

/// The handlers of the two discovery documents, behind authentication and authorization
/// (upstream binds `system:service-account-issuer-discovery` to `system:serviceaccounts`).
/// As upstream, they are served only for an `https` issuer without query or fragment
/// (else 404).
pub(crate) async fn discovery(
    axum::extract::State(state): axum::extract::State<crate::server::AppState>,
    uri: axum::http::Uri,
) -> Response {
    use axum::response::IntoResponse as _;
    let tokens = &state.auth.service_accounts;
    let servable = url::Url::parse(&tokens.issuer)
        .is_ok_and(|u| u.scheme() == "https" && u.query().is_none() && u.fragment().is_none());
    let (body, content_type) = match uri.path() {
        _ if !servable => {
            return (
                StatusCode::NOT_FOUND,
                [(
                    axum::http::header::CONTENT_TYPE,
                    "text/plain; charset=utf-8",
                )],
                "404 page not found\n",
            )
                .into_response();
        }
        OPENID_CONFIG_PATH => (
            tokens.openid_configuration(&state.server_address),
            "application/json",
        ),
        _ => (tokens.jwks.clone(), "application/jwk-set+json"),
    };
    (
        StatusCode::OK,
        [
            (axum::http::header::CONTENT_TYPE, content_type),
            (axum::http::header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        body.to_string(),
    )
        .into_response()
}

/// Upstream's `ValidateSecret` rule for legacy token Secrets: the
/// `kubernetes.io/service-account.name` annotation is required (the rest, the uid annotation
/// and the data, is the token controller's to add).
pub(crate) fn validate_token_secret(
    info: &crate::registry::ResourceInfo,
    obj: &Value,
) -> Vec<crate::status::Cause> {
    let is_token_secret = info.group.is_empty()
        && info.kind == "Secret"
        && obj["type"].as_str() == Some(TOKEN_SECRET_TYPE);
    if !is_token_secret
        || obj["metadata"]["annotations"][SA_NAME_ANNOTATION]
            .as_str()
            .is_some_and(|n| !n.is_empty())
    {
        return Vec::new();
    }
    vec![crate::status::Cause {
        reason: "FieldValueRequired",
        message: "Required value".into(),
        field: format!("metadata.annotations[{SA_NAME_ANNOTATION}]"),
    }]
}

/// The claims of a legacy token (upstream's `legacyPrivateClaims` with `iss` and `sub`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct LegacyClaims {
    #[serde(default)]
    pub(crate) iss: String,
    #[serde(default)]
    pub(crate) sub: String,
    #[serde(rename = "kubernetes.io/serviceaccount/namespace", default)]
    pub(crate) namespace: String,
    #[serde(rename = "kubernetes.io/serviceaccount/secret.name", default)]
    pub(crate) secret_name: String,
    #[serde(rename = "kubernetes.io/serviceaccount/service-account.name", default)]
    pub(crate) service_account_name: String,
    #[serde(rename = "kubernetes.io/serviceaccount/service-account.uid", default)]
    pub(crate) service_account_uid: String,
}

/// The `iss` of a compact JWT, read before verifying it (upstream's `hasCorrectIssuer`
/// picks the authenticator this way).
fn unverified_issuer(token: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: Value = serde_json::from_slice(&bytes).ok()?;
    claims.get("iss")?.as_str().map(str::to_string)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Upstream's legacy token tracking: sets the Secret's [`LAST_USED_LABEL`] to today (UTC)
/// unless it already says today or tomorrow (a clock ahead elsewhere), so a token costs at
/// most one write a day. The write is guarded by the Secret's uid and mod revision; a
/// failure is logged, never fails the request (as upstream).
async fn mark_last_used(store: &Store, secret: &Value) {
    let today = &crate::time::now_rfc3339()[..10];
    let tomorrow = &crate::time::rfc3339_after(24 * 3600)[..10];
    let last = secret["metadata"]["labels"][LAST_USED_LABEL]
        .as_str()
        .unwrap_or("");
    if last == today || last == tomorrow {
        return;
    }
    let ns = crate::rest::object_meta_str(secret, "namespace").to_string();
    let name = crate::rest::object_meta_str(secret, "name").to_string();
    let uid = crate::rest::object_meta_str(secret, "uid").to_string();
    if let Err(e) = set_label(store, &ns, &name, &uid, today).await {
        tracing::warn!(secret = %format!("{ns}/{name}"), error = %e, "could not label a legacy service account token with its last-used date");
    }
}

async fn set_label(
    store: &Store,
    ns: &str,
    name: &str,
    uid: &str,
    today: &str,
) -> std::result::Result<(), String> {
    let info = REGISTRY
        .find("", "v1", "secrets")
        .ok_or("secrets are not registered")?;
    let key = info.key(Some(ns), name);
    for _ in 0..3 {
        let (_, kv) = store.get(&key, 0).await.map_err(|e| e.to_string())?;
        let Some(kv) = kv else {
            return Ok(());
        };
        let mut obj = crate::rest::decode_stored(&kv).map_err(|e| e.message)?;
        if crate::rest::object_meta_str(&obj, "uid") != uid {
            return Ok(());
        }
        let meta = crate::rest::metadata_mut(&mut obj).ok_or("not an object")?;
        let labels = meta
            .entry("labels")
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .ok_or("labels are not an object")?;
        labels.insert(LAST_USED_LABEL.into(), json!(today));
        let value = crate::rest::encode_for_store(&obj).map_err(|e| e.message)?;
        match store
            .update(&key, value, kv.mod_revision, kv.lease)
            .await
            .map_err(|e| e.to_string())?
        {
            rk3s_datastore::WriteOutcome::Written { .. } => return Ok(()),
            rk3s_datastore::WriteOutcome::Conflict { .. } => continue,
        }
    }
    Err("the secret kept changing".into())
}

/// The stored object, if it exists.
async fn read(
    store: &Store,
    plural: &str,
    ns: Option<&str>,
    name: &str,
) -> std::result::Result<Option<Value>, ApiError> {
    let info = REGISTRY
        .find("", "v1", plural)
        .ok_or_else(|| ApiError::internal(format!("{plural} are not registered")))?;
    let (_, kv) = store.get(&info.key(ns, name), 0).await?;
    kv.map(|kv| crate::rest::decode_stored(&kv)).transpose()
}

/// The object a token names still exists, with the same uid, and is not being deleted.
async fn check_live(
    store: &Store,
    plural: &str,
    ns: Option<&str>,
    r: &Ref,
) -> std::result::Result<(), String> {
    let obj = read(store, plural, ns, &r.name)
        .await
        .map_err(|e| e.message)?
        .ok_or_else(|| format!("{plural} {:?} not found", r.name))?;
    let uid = obj["metadata"]["uid"].as_str().unwrap_or("");
    if !r.uid.is_empty() && uid != r.uid {
        return Err(format!(
            "{plural} {:?} has uid {uid}, the token names {}",
            r.name, r.uid
        ));
    }
    if plural == "pods" && obj["metadata"]["deletionTimestamp"].is_string() {
        return Err(format!("pod {:?} is being deleted", r.name));
    }
    Ok(())
}

/// `POST /api/v1/namespaces/<ns>/serviceaccounts/<name>/token`: a TokenRequest.
pub(crate) async fn token_request(
    state: &crate::server::AppState,
    ns: &str,
    name: &str,
    headers: &axum::http::HeaderMap,
    body: &[u8],
) -> std::result::Result<Response, ApiError> {
    let sa_info = REGISTRY
        .find("", "v1", "serviceaccounts")
        .ok_or_else(|| ApiError::internal("serviceaccounts are not registered"))?;
    let mut req = super::body_json(headers, body, "TokenRequest")?;
    if !req["spec"].is_object() {
        req["spec"] = json!({});
    }
    let typed: k8s_openapi::api::authentication::v1::TokenRequest =
        serde_json::from_value(req.clone())
            .map_err(|e| ApiError::bad_request(format!("invalid TokenRequest: {e}")))?;
    let sa = read(&state.store, "serviceaccounts", Some(ns), name)
        .await?
        .ok_or_else(|| ApiError::not_found(sa_info, name))?;
    let sa_uid = sa["metadata"]["uid"].as_str().unwrap_or("").to_string();
    let tokens = &state.auth.service_accounts;
    let seconds = typed.spec.expiration_seconds.unwrap_or(DEFAULT_EXPIRATION);
    let invalid = |field: &str, message: String| ApiError {
        details: Some(json!({
            "name": name, "group": "authentication.k8s.io", "kind": "TokenRequest",
            "causes": [{ "reason": "FieldValueInvalid", "message": message, "field": field }],
        })),
        ..ApiError::new(
            422,
            "Invalid",
            format!("TokenRequest.authentication.k8s.io \"{name}\" is invalid: {field}: {message}"),
        )
    };
    if seconds < MIN_EXPIRATION {
        return Err(invalid(
            "spec.expirationSeconds",
            format!("Invalid value: {seconds}: may not specify a duration less than 10 minutes"),
        ));
    }
    if seconds > MAX_EXPIRATION {
        return Err(invalid(
            "spec.expirationSeconds",
            format!(
                "Invalid value: {seconds}: may not specify a duration larger than 2^32 seconds"
            ),
        ));
    }
    let audiences = if typed.spec.audiences.is_empty() {
        tokens.audiences.clone()
    } else {
        typed.spec.audiences.clone()
    };
    let mut binding = Binding::default();
    if let Some(bound) = &typed.spec.bound_object_ref {
        let bound_name = bound.name.clone().unwrap_or_default();
        let (plural, bound_ns) = match bound.kind.as_deref() {
            Some("Pod") => ("pods", Some(ns)),
            Some("Secret") => ("secrets", Some(ns)),
            Some("Node") => ("nodes", None),
            other => {
                return Err(invalid(
                    "spec.boundObjectRef.kind",
                    format!(
                        "Unsupported value: {:?}: supported values: \"Pod\", \"Secret\", \"Node\"",
                        other.unwrap_or("")
                    ),
                ));
            }
        };
        let info = REGISTRY
            .find("", "v1", plural)
            .ok_or_else(|| ApiError::internal("not registered"))?;
        let obj = read(&state.store, plural, bound_ns, &bound_name)
            .await?
            .ok_or_else(|| ApiError::not_found(info, &bound_name))?;
        let uid = obj["metadata"]["uid"].as_str().unwrap_or("").to_string();
        if let Some(want) = bound.uid.as_deref().filter(|u| !u.is_empty())
            && want != uid
        {
            return Err(ApiError::new(
                409,
                "Conflict",
                format!(
                    "the UID in the bound object reference ({want}) does not match the UID in record. The object might have been deleted and then recreated"
                ),
            ));
        }
        if plural == "pods" {
            let runs_as = obj["spec"]["serviceAccountName"].as_str().unwrap_or("");
            if runs_as != name {
                return Err(ApiError::bad_request(format!(
                    "cannot bind token for serviceaccount {name:?} to pod running with different serviceaccount name."
                )));
            }
            // ServiceAccountTokenPodNodeInfo (on by default in v1.33): the pod's node, by
            // name, with its uid when the Node exists.
            let node = obj["spec"]["nodeName"].as_str().unwrap_or("");
            if !node.is_empty() {
                let node_uid = read(&state.store, "nodes", None, node)
                    .await?
                    .map(|n| n["metadata"]["uid"].as_str().unwrap_or("").to_string())
                    .unwrap_or_default();
                binding.node = Some((node.to_string(), node_uid));
            }
        }
        let r = Some((bound_name, uid.clone()));
        match plural {
            "pods" => binding.pod = r,
            "secrets" => binding.secret = r,
            _ => binding.node = r,
        }
        req["spec"]["boundObjectRef"]["uid"] = json!(uid);
    }
    let (token, exp) = tokens
        .issue(ns, name, &sa_uid, audiences.clone(), seconds, &binding)
        .map_err(ApiError::internal)?;
    req["apiVersion"] = json!("authentication.k8s.io/v1");
    req["kind"] = json!("TokenRequest");
    req["metadata"] = json!({
        "name": name,
        "namespace": ns,
        "creationTimestamp": crate::time::now_rfc3339(),
    });
    req["spec"]["audiences"] = json!(audiences);
    req["spec"]["expirationSeconds"] = json!(seconds);
    req["status"] = json!({
        "token": token,
        "expirationTimestamp": crate::time::rfc3339_after(exp - crate::time::unix_now()),
    });
    Ok(crate::rest::json_response(StatusCode::CREATED, &req))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn tokens_carry_upstream_claims() {
        let key = rcgen::KeyPair::generate().unwrap().serialize_pem();
        let t = Tokens::new(
            &key,
            super::super::DEFAULT_ISSUER.into(),
            vec!["api".into()],
        )
        .unwrap();
        let binding = Binding {
            pod: Some(("p".into(), "pod-uid".into())),
            ..Binding::default()
        };
        let (token, exp) = t
            .issue("ns", "sa", "sa-uid", vec!["api".into()], 600, &binding)
            .unwrap();
        assert!(exp > crate::time::unix_now() + 590);
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.alg, Algorithm::ES256);
        assert!(header.kid.is_some());
        let mut v = Validation::new(Algorithm::ES256);
        v.set_audience(&["api"]);
        let c = jsonwebtoken::decode::<Value>(&token, &t.decoding, &v)
            .unwrap()
            .claims;
        assert_eq!(c["sub"], "system:serviceaccount:ns:sa");
        assert_eq!(c["iss"], "https://kubernetes.default.svc.cluster.local");
        assert_eq!(c["kubernetes.io"]["pod"]["uid"], "pod-uid");
        assert_eq!(c["kubernetes.io"]["serviceaccount"]["uid"], "sa-uid");
    }
}
