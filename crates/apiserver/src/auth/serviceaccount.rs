//! ServiceAccount tokens: ES256 JWTs signed with the key in `server/tls/service.key`, with
//! upstream's claims (`iss`, `sub`, `aud`, `exp`, `iat`, `nbf`, `jti`, and `kubernetes.io` naming
//! the namespace, service account and bound pod/secret/node), issued by the TokenRequest API
//! (`POST .../serviceaccounts/<name>/token`) and verified on every request: signature, issuer,
//! audience, expiry, and that the service account and bound object still exist with the same
//! uid.

use std::collections::BTreeMap;

use crate::storage::Store;
use axum::http::StatusCode;
use axum::response::Response;
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

/// Issues and verifies service-account tokens.
pub(crate) struct Tokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    key_id: String,
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
        use base64::Engine as _;
        let key_id = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(sha2::Sha256::digest(key.subject_public_key_info()));
        Ok(Tokens {
            encoding,
            decoding,
            key_id,
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
        if let Some(node) = &c.k8s.node {
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
            extra.insert(
                "authentication.kubernetes.io/node-uid".into(),
                vec![node.uid.clone()],
            );
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
