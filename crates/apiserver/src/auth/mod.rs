//! Authentication and authorization of every request, in front of the router.
//!
//! Authentication, in upstream's order: a client certificate verified against the client CA
//! by the TLS handshake (user = CN, groups = O); a bearer token, from the static token file
//! (`--token-auth-file`), a bootstrap token ([`bootstrap`]) or a service-account JWT
//! ([`serviceaccount`]). A bearer token that
//! does not authenticate is a 401 even where anonymous requests are allowed (as upstream). A
//! request without credentials is `system:anonymous` in `system:unauthenticated` on
//! [`ANONYMOUS_PATHS`] only, 401 elsewhere. Every authenticated user is also in
//! `system:authenticated`.
//!
//! Authorization: `system:masters` may do anything (as upstream's privileged-group
//! authorizer); kubelets go through the node authorizer ([`node`]) first; then RBAC
//! ([`rbac`]); a denial is upstream's 403.

pub(crate) mod attributes;
pub mod bootstrap;
pub(crate) mod node;
pub(crate) mod policy;
pub(crate) mod rbac;
pub(crate) mod review;
pub(crate) mod serviceaccount;
pub(crate) mod token_file;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use crate::storage::Store;
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

pub(crate) use attributes::Attributes;

use crate::error::Result;
use crate::pki::{Pki, SYSTEM_MASTERS};
use crate::server::AppState;
use crate::status::ApiError;

/// Paths an anonymous request may reach (upstream's anonymous-authentication conditions as
/// K3s-like servers configure them); RBAC's `system:public-info-viewer` then allows them.
pub(crate) const ANONYMOUS_PATHS: &[&str] =
    &["/healthz", "/livez", "/readyz", "/version", "/version/"];

pub(crate) const SYSTEM_AUTHENTICATED: &str = "system:authenticated";
pub(crate) const SYSTEM_UNAUTHENTICATED: &str = "system:unauthenticated";
pub(crate) const SYSTEM_ANONYMOUS: &str = "system:anonymous";

/// The default service-account token issuer (and API audience), as K3s sets it.
pub const DEFAULT_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// Authentication settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthConfig {
    /// `--token-auth-file`: static bearer tokens, upstream's CSV format
    /// (`token,user,uid,"group1,group2"`).
    pub token_auth_file: Option<PathBuf>,
    /// `--service-account-issuer`: the `iss` of the tokens this server issues and accepts.
    pub service_account_issuer: String,
    /// `--api-audiences`: a service-account token must name one of these (default: the
    /// issuer).
    pub api_audiences: Vec<String>,
    /// `--requestheader-allowed-names`: the CNs a front proxy's certificate (signed by the
    /// request-header CA) may have; empty: any. Default: K3s' `system:auth-proxy`.
    pub requestheader_allowed_names: Vec<String>,
    /// Keep rk3s' `rk3s:kube-controller-manager` ClusterRole and its binding to the user
    /// `system:kube-controller-manager`: the union of the per-controller roles, for a
    /// controller manager that runs every loop on its own identity (rk3s-controller without
    /// `--use-service-account-credentials`). Off, the policy reconciliation deletes both, and
    /// the manager has upstream's `system:kube-controller-manager` role only. Default on;
    /// `rk3s server`, whose controller manager uses per-loop service-account credentials,
    /// turns it off.
    pub controller_manager_union_role: bool,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            token_auth_file: None,
            service_account_issuer: DEFAULT_ISSUER.into(),
            api_audiences: Vec::new(),
            requestheader_allowed_names: vec!["system:auth-proxy".into()],
            controller_manager_union_role: true,
        }
    }
}

/// Who made a request: upstream's `user.Info`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct UserInfo {
    pub(crate) name: String,
    pub(crate) uid: String,
    pub(crate) groups: Vec<String>,
    pub(crate) extra: BTreeMap<String, Vec<String>>,
}

impl UserInfo {
    pub(crate) fn new(name: impl Into<String>, groups: Vec<String>) -> Self {
        UserInfo {
            name: name.into(),
            groups,
            ..UserInfo::default()
        }
    }

    fn anonymous() -> Self {
        UserInfo::new(SYSTEM_ANONYMOUS, vec![SYSTEM_UNAUTHENTICATED.into()])
    }

    /// Adds `system:authenticated` (upstream's AuthenticatedGroupAdder).
    fn authenticated(mut self) -> Self {
        if !self.groups.iter().any(|g| g == SYSTEM_AUTHENTICATED) {
            self.groups.push(SYSTEM_AUTHENTICATED.into());
        }
        self
    }

    pub(crate) fn is_superuser(&self) -> bool {
        self.groups.iter().any(|g| g == SYSTEM_MASTERS)
    }

    /// As the `UserInfo` of TokenReview and SelfSubjectReview status.
    pub(crate) fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::json!({ "username": self.name, "groups": self.groups });
        if !self.uid.is_empty() {
            v["uid"] = self.uid.clone().into();
        }
        if !self.extra.is_empty() {
            v["extra"] = serde_json::json!(self.extra);
        }
        v
    }
}

/// The verified client certificate of a connection: (CN, O values), if one was offered, and
/// whether the request-header CA signed it (a front proxy's).
#[derive(Debug, Clone)]
pub(crate) struct PeerCert(pub(crate) Option<(String, Vec<String>)>, pub(crate) bool);

/// What authenticates and authorizes requests.
#[derive(Debug)]
pub(crate) struct Auth {
    tokens: HashMap<String, UserInfo>,
    requestheader_allowed_names: Vec<String>,
    pub(crate) service_accounts: serviceaccount::Tokens,
    pub(crate) rbac: rbac::Cache,
    /// [`AuthConfig::controller_manager_union_role`].
    pub(crate) controller_manager_union_role: bool,
}

impl Auth {
    pub(crate) fn new(config: &AuthConfig, pki: &Pki, store: Store) -> Result<Self> {
        let tokens = match &config.token_auth_file {
            Some(path) => token_file::load(path)?,
            None => HashMap::new(),
        };
        let audiences = if config.api_audiences.is_empty() {
            vec![config.service_account_issuer.clone()]
        } else {
            config.api_audiences.clone()
        };
        Ok(Auth {
            tokens,
            requestheader_allowed_names: config.requestheader_allowed_names.clone(),
            service_accounts: serviceaccount::Tokens::new(
                &pki.service_account_key_pem,
                config.service_account_issuer.clone(),
                audiences,
            )?,
            rbac: rbac::Cache::new(store),
            controller_manager_union_role: config.controller_manager_union_role,
        })
    }

    /// Authenticates a bearer token. `Ok(None)`: not a token any authenticator knows.
    pub(crate) async fn authenticate_token(
        &self,
        store: &Store,
        token: &str,
        audiences: Option<&[String]>,
    ) -> Option<(UserInfo, Option<&'static str>)> {
        if let Some(user) = self.tokens.get(token) {
            return Some((user.clone(), None));
        }
        if bootstrap::parse(token).is_some() {
            return bootstrap::authenticate(store, token)
                .await
                .map(|u| (u, None));
        }
        match self
            .service_accounts
            .authenticate(store, token, audiences)
            .await
        {
            Ok(found) => Some(found),
            Err(why) => {
                tracing::debug!(%why, "bearer token rejected");
                None
            }
        }
    }
}

/// The JSON of a request body of `kind` to the auth APIs, decoding protobuf (kubectl's typed
/// clients send it) when that is the body's content type. These APIs only create, and a
/// request's `status` is the server's to fill: it is dropped (protobuf bodies carry an empty
/// one, with a zero `expirationTimestamp` that is not a valid time).
pub(crate) fn body_json(
    headers: &axum::http::HeaderMap,
    body: &[u8],
    kind: &str,
) -> std::result::Result<serde_json::Value, ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mut v = if ct.split(';').next().map(str::trim) == Some(crate::protobuf::MEDIA_TYPE) {
        crate::protobuf::decode(body)
            .map_err(|e| ApiError::bad_request(format!("invalid {kind}: {e}")))?
    } else {
        serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("invalid {kind}: {e}")))?
    };
    if let Some(o) = v.as_object_mut() {
        o.remove("status");
    }
    Ok(v)
}

/// `Authorization: Bearer <token>`, if sent.
fn bearer(req: &Request) -> Option<&str> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// The middleware: authenticate, authorize, then hand the request on with its [`UserInfo`].
pub(crate) async fn middleware(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    let audit = req.extensions().get::<crate::audit::Slot>().cloned();
    let (cert, from_proxy) = req
        .extensions()
        .get::<PeerCert>()
        .map(|p| (p.0.clone(), p.1))
        .unwrap_or((None, false));
    let proxied = match (&cert, from_proxy) {
        (Some((cn, _)), true) => match request_header_user(&state.auth, cn, req.headers()) {
            Ok(user) => user,
            Err(why) => {
                tracing::debug!(%why, "request-header authentication failed");
                return unauthorized();
            }
        },
        _ => None,
    };
    // A warning the authenticator adds to the answer, whatever it is (upstream's
    // `warning.AddWarning` on the request's context).
    let mut warning = None;
    let user = if let Some(user) = proxied {
        user.authenticated()
    } else if let (Some((cn, orgs)), false) = (cert, from_proxy) {
        UserInfo::new(cn, orgs).authenticated()
    } else if let Some(token) = bearer(&req) {
        match state
            .auth
            .authenticate_token(&state.store, token, None)
            .await
        {
            Some((user, w)) => {
                warning = w;
                user.authenticated()
            }
            None => return unauthorized(),
        }
    } else if ANONYMOUS_PATHS.contains(&req.uri().path()) {
        UserInfo::anonymous()
    } else {
        return unauthorized();
    };
    if let Some(a) = &audit {
        a.update(|r| r.user = Some(user.clone()));
    }
    let user = match impersonate(&state, user, req.headers()).await {
        Ok(u) => u,
        Err(e) => return with_warning(e.into_response(), warning),
    };
    let attrs = Attributes::from_request(&user, req.method(), req.uri());
    let allowed = authorize(&state, &attrs).await;
    if let Some(a) = &audit {
        a.update(|r| {
            if r.user.as_ref() != Some(&user) {
                r.impersonated = Some(user.clone());
            }
            r.allowed = Some(allowed);
        });
    }
    if !allowed {
        tracing::debug!(user = %user.name, verb = %attrs.verb, resource = %attrs.resource, "forbidden");
        return with_warning(attrs.forbidden("").into_response(), warning);
    }
    req.extensions_mut().insert(user);
    with_warning(next.run(req).await, warning)
}

/// `resp` with a `Warning: 299 - "<text>"` header, as upstream's warning recorder writes it.
fn with_warning(mut resp: Response, warning: Option<&str>) -> Response {
    if let Some(text) = warning {
        let value = format!("299 - {}", serde_json::Value::String(text.to_string()));
        if let Ok(v) = header::HeaderValue::from_str(&value) {
            resp.headers_mut().append(header::WARNING, v);
        }
    }
    resp
}

/// Upstream's request-header authenticator, K3s' settings: a front proxy (its certificate
/// signed by the request-header CA, CN in `--requestheader-allowed-names`) names the user in
/// `X-Remote-User`, its groups in `X-Remote-Group` (one per header), extras in
/// `X-Remote-Extra-<key>` (key percent-decoded, lower case). `Ok(None)`: no user header (other
/// authenticators may still apply).
fn request_header_user(
    auth: &Auth,
    cn: &str,
    headers: &axum::http::HeaderMap,
) -> std::result::Result<Option<UserInfo>, String> {
    if !auth.requestheader_allowed_names.is_empty()
        && !auth.requestheader_allowed_names.iter().any(|n| n == cn)
    {
        return Err(format!(
            "request header authentication: the client certificate's CN {cn:?} is not in the allowed names {:?}",
            auth.requestheader_allowed_names
        ));
    }
    let Some(name) = headers
        .get_all("x-remote-user")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::trim)
        .find(|v| !v.is_empty())
    else {
        return Ok(None);
    };
    let groups = headers
        .get_all("x-remote-group")
        .iter()
        .filter_map(|v| v.to_str().ok().map(str::to_string))
        .collect();
    let mut user = UserInfo::new(name, groups);
    for (header, value) in headers {
        if let Some(key) = header.as_str().strip_prefix("x-remote-extra-")
            && let Ok(v) = value.to_str()
        {
            user.extra
                .entry(percent_decode(key).to_lowercase())
                .or_default()
                .push(v.to_string());
        }
    }
    Ok(Some(user))
}

/// The authorizer chain, as upstream's `Node,RBAC`: `system:masters`, then the node
/// authorizer for kubelets, then RBAC.
pub(crate) async fn authorize(state: &AppState, attrs: &Attributes) -> bool {
    if attrs.user.is_superuser() {
        return true;
    }
    if let Some(node) = node::node_of(&attrs.user)
        && node::allows(state, node, attrs).await
    {
        return true;
    }
    state.auth.rbac.allows(attrs)
}

/// [`authorize`] with the reason upstream's authorizers give for an allow: RBAC names the
/// binding that allows it; `system:masters` and the node authorizer give none.
pub(crate) async fn authorize_with_reason(state: &AppState, attrs: &Attributes) -> (bool, String) {
    if attrs.user.is_superuser() {
        return (true, String::new());
    }
    if let Some(node) = node::node_of(&attrs.user)
        && node::allows(state, node, attrs).await
    {
        return (true, String::new());
    }
    match state.auth.rbac.reason(attrs) {
        Some(reason) => (true, reason),
        None => (false, String::new()),
    }
}

/// Upstream's impersonation: `Impersonate-User`, `Impersonate-Group`, `Impersonate-Uid`,
/// `Impersonate-Extra-<key>` headers, each allowed by the `impersonate` verb on `users` (or
/// `serviceaccounts`), `groups`, `uids`, `userextras/<key>`. The request then runs as that
/// user. Groups or extras without a user are a 400, as upstream.
async fn impersonate(
    state: &AppState,
    user: UserInfo,
    headers: &axum::http::HeaderMap,
) -> std::result::Result<UserInfo, ApiError> {
    let values = |name: &str| -> Vec<String> {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_string))
            .collect()
    };
    let target = values("impersonate-user").into_iter().next();
    let groups = values("impersonate-group");
    let uid = values("impersonate-uid").into_iter().next();
    let mut extra: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in headers {
        if let Some(key) = name.as_str().strip_prefix("impersonate-extra-")
            && let Ok(v) = value.to_str()
        {
            let key = percent_decode(key);
            extra.entry(key).or_default().push(v.to_string());
        }
    }
    let Some(target) = target else {
        if groups.is_empty() && uid.is_none() && extra.is_empty() {
            return Ok(user);
        }
        return Err(ApiError::bad_request(
            "requested impersonation of groups, a uid or extras without impersonating a user",
        ));
    };
    let check = |resource: &str, ns: &str, name: &str, sub: &str| {
        Attributes::resource(
            user.clone(),
            "impersonate",
            if resource == "serviceaccounts" {
                ""
            } else {
                "authentication.k8s.io"
            },
            resource,
            sub,
            ns,
            name,
        )
    };
    let mut asks = Vec::new();
    let mut new_groups = groups.clone();
    match target
        .strip_prefix("system:serviceaccount:")
        .and_then(|r| r.split_once(':'))
    {
        Some((ns, name)) => {
            asks.push(check("serviceaccounts", ns, name, ""));
            if groups.is_empty() {
                new_groups = vec![
                    "system:serviceaccounts".into(),
                    format!("system:serviceaccounts:{ns}"),
                ];
            }
        }
        None => asks.push(check("users", "", &target, "")),
    }
    for g in &groups {
        asks.push(check("groups", "", g, ""));
    }
    if let Some(uid) = &uid {
        asks.push(check("uids", "", uid, ""));
    }
    for (key, vals) in &extra {
        for v in vals {
            asks.push(check("userextras", "", v, key));
        }
    }
    for a in &asks {
        if !authorize(state, a).await {
            let what = if a.resource == "users" || a.resource == "serviceaccounts" {
                format!("{} \"{}\"", a.resource.trim_end_matches('s'), a.name)
            } else {
                format!("{} \"{}\"", a.resource, a.name)
            };
            let mut e = a.forbidden("");
            e.message = format!(
                "{} is forbidden: User \"{}\" cannot impersonate resource \"{}\" in API group \"{}\"{}",
                a.resource,
                user.name,
                a.resource,
                a.api_group,
                if a.namespace.is_empty() {
                    " at the cluster scope".to_string()
                } else {
                    format!(" in the namespace \"{}\"", a.namespace)
                }
            );
            tracing::debug!(user = %user.name, %what, "impersonation refused");
            return Err(e);
        }
    }
    let impersonated = UserInfo {
        name: target,
        uid: uid.unwrap_or_default(),
        groups: new_groups,
        extra,
    };
    Ok(if impersonated.name == SYSTEM_ANONYMOUS {
        impersonated
    } else {
        impersonated.authenticated()
    })
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("k={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| s.to_string())
}

/// 401 with upstream's `Status` body.
fn unauthorized() -> Response {
    ApiError::new(401, "Unauthorized", "Unauthorized").into_response()
}
