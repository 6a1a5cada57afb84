//! The generic REST layer: one handler for every resource in the [`crate::registry`].
//!
//! A request path is parsed into a [`Target`] (resource, namespace, name, subresource), then
//! dispatched on the HTTP method: GET (get, list, watch), POST (create), PUT (update), PATCH,
//! DELETE (delete, deletecollection). Objects are kept in the datastore as JSON bytes under
//! the upstream keys, without `metadata.resourceVersion`: that is the key's mod revision,
//! filled in on every read.

pub(crate) mod components;
mod eviction;
mod handlers;
mod object;
mod options;
mod patch;
mod pod_proxy;
mod proxy;
mod scale;
mod table;
mod watch;

use std::borrow::Cow;
use std::collections::HashMap;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use tracing::Instrument as _;

use crate::registry::{REGISTRY, ResourceInfo};
use crate::server::AppState;
use crate::status::ApiError;

pub(crate) use handlers::{DeleteOptions, create_object, delete_object, guaranteed_update};
pub(crate) use object::{
    FieldValidation, decode_stored, encode_for_store, labels as object_labels,
    meta_str as object_meta_str, metadata_mut, new_uid, served_form, served_object,
    set_resource_version,
};
pub(crate) use patch::{PatchKind, apply as apply_patch};
pub(crate) use pod_proxy::address_allowed;

/// What a request path names.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// Borrowed from the static registry for built-ins, owned for custom resources.
    pub(crate) info: Cow<'static, ResourceInfo>,
    /// The namespace in the path (`/namespaces/<ns>/...`), if any.
    pub(crate) namespace: Option<String>,
    pub(crate) name: Option<String>,
    pub(crate) subresource: Option<String>,
    /// The legacy `/watch/` path prefix was used.
    pub(crate) watch_path: bool,
}

/// What the path under `/api/v1` or `/apis/<group>/<version>` names.
#[derive(Debug)]
pub(crate) enum Parsed {
    /// The group version itself: its APIResourceList.
    Discovery,
    Resource(Box<Target>),
}

/// Parses the segments after the group version. `None`: nothing served there.
pub(crate) fn parse_path(
    custom: &crate::crd::CustomRegistry,
    group: &str,
    version: &str,
    segs: &[&str],
) -> Option<Parsed> {
    if REGISTRY.group_version(group, version).is_none() {
        custom.snapshot().group_version(group, version)?;
    }
    let mut segs = segs;
    let watch_path = segs.first() == Some(&"watch");
    if watch_path {
        segs = &segs[1..];
    }
    if segs.is_empty() {
        return (!watch_path).then_some(Parsed::Discovery);
    }
    let find = |plural: &str| REGISTRY.lookup(custom, group, version, plural);
    let target = |info: Cow<'static, ResourceInfo>,
                  namespace: Option<&str>,
                  name: Option<&str>,
                  sub: Option<&str>| {
        Some(Parsed::Resource(Box::new(Target {
            info,
            namespace: namespace.map(str::to_string),
            name: name.map(str::to_string),
            subresource: sub.map(str::to_string),
            watch_path,
        })))
    };
    // `/namespaces/<ns>/<resource>...` names a namespaced resource when group version has it.
    if let ["namespaces", ns, plural, rest @ ..] = segs
        && let Some(info) = find(plural).filter(|i| i.namespaced)
    {
        return match rest {
            [] => target(info, Some(ns), None, None),
            [name] => target(info, Some(ns), Some(name), None),
            [name, sub] => target(info, Some(ns), Some(name), Some(sub)),
            [name, "proxy", ..] => target(info, Some(ns), Some(name), Some("proxy")),
            _ => None,
        };
    }
    let info = find(segs[0])?;
    match &segs[1..] {
        [] => target(info, None, None, None),
        [name] if !info.namespaced => target(info, None, Some(name), None),
        [name, sub] if !info.namespaced => target(info, None, Some(name), Some(sub)),
        [name, "proxy", ..] if !info.namespaced => target(info, None, Some(name), Some("proxy")),
        _ => None,
    }
}

/// Query parameters, last one wins.
pub(crate) type Query = HashMap<String, String>;

pub(crate) fn parse_query(uri: &Uri) -> Query {
    url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

/// Whether a boolean query parameter is set (`1`, `true`).
pub(crate) fn flag(q: &Query, key: &str) -> bool {
    q.get(key)
        .is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

/// A JSON response.
pub(crate) fn json_response(code: StatusCode, body: &Value) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    (code, [(header::CONTENT_TYPE, "application/json")], bytes).into_response()
}

/// The upstream verb name for metrics and logs.
fn verb_of(method: &Method, target: &Target, q: &Query) -> &'static str {
    let watch = target.watch_path || flag(q, "watch");
    match *method {
        Method::GET if target.name.is_none() && watch => "WATCH",
        Method::GET if target.name.is_none() => "LIST",
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE if target.name.is_none() => "DELETECOLLECTION",
        Method::DELETE => "DELETE",
        _ => "UNKNOWN",
    }
}

/// The entry point for `/api/...` and `/apis/...` resource paths.
pub(crate) async fn serve(
    State(state): State<AppState>,
    axum::Extension(user): axum::Extension<crate::auth::UserInfo>,
    proxy::Upgrade(upgrade): proxy::Upgrade,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let loopback = state.proxy_loopback;
    crate::validation::with_loopback_endpoints(
        loopback,
        serve_resource(state, user, upgrade, method, uri, headers, body),
    )
    .await
}

async fn serve_resource(
    state: AppState,
    user: crate::auth::UserInfo,
    upgrade: Option<hyper::upgrade::OnUpgrade>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().trim_end_matches('/');
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api"] => return crate::discovery::api_versions(&state, &headers),
        ["apis"] => return crate::discovery::api_groups(&state, &headers),
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group] => return crate::discovery::api_group(&state, group),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return ApiError::no_route().into_response(),
    };
    let parsed = match parse_path(&state.crds, group, version, rest) {
        Some(p) => p,
        None => return ApiError::no_route().into_response(),
    };
    let target = match parsed {
        Parsed::Discovery => return crate::discovery::resource_list(&state, group, version),
        Parsed::Resource(t) => *t,
    };
    if proxy::is_proxied(&target) {
        // The kubelet answers in its own media types (text logs, upgraded streams). Admission
        // sees the CONNECTs (exec, attach, portforward, proxy) first.
        let admission = crate::admission_webhook::Request::connect(&target, &user);
        let connect = async {
            let uri = match crate::admission_webhook::admit_connect(&state, &target, &uri).await {
                Ok(uri) => uri,
                Err(e) => return e.into_response(),
            };
            proxy::serve(&state, &target, &method, &uri, &headers, body, upgrade)
                .await
                .unwrap_or_else(IntoResponse::into_response)
        };
        let response = crate::admission_webhook::scope(admission, connect).await;
        state.metrics.record(
            verb_of(&method, &target, &Query::new()),
            &target.info,
            target.subresource.as_deref(),
            response.status().as_u16(),
        );
        return response;
    }
    if !accepts_json(&headers) {
        return ApiError::not_acceptable().into_response();
    }
    if target.info.group.is_empty() && target.info.plural == "componentstatuses" {
        let q = parse_query(&uri);
        return components::serve(&state, &method, &target, &headers, &q)
            .await
            .unwrap_or_else(IntoResponse::into_response);
    }
    if matches!(
        target.info.group,
        "authentication.k8s.io" | "authorization.k8s.io"
    ) {
        return crate::auth::review::serve(&state, &user, &method, &target, &headers, &body)
            .await
            .unwrap_or_else(IntoResponse::into_response);
    }
    if let ("serviceaccounts", Some(ns), Some(name), Some("token")) = (
        target.info.plural,
        target.namespace.as_deref(),
        target.name.as_deref(),
        target.subresource.as_deref(),
    ) && target.info.group.is_empty()
        && method == Method::POST
    {
        if let Some(node) = crate::auth::node::node_of(&user) {
            let request =
                crate::auth::body_json(&headers, &body, "TokenRequest").unwrap_or(Value::Null);
            if let Err(e) =
                crate::node_restriction::admit_token_request(&state, node, ns, name, &request).await
            {
                return e.into_response();
            }
        }
        // Admission webhooks see the TokenRequest (a CREATE of `serviceaccounts/token`).
        let q = parse_query(&uri);
        let admission = crate::admission_webhook::Request::new(&method, &target, &user, &q, &body);
        let info = target.info.as_ref();
        let request = async {
            let admitted = crate::admission_webhook::admit_token_request(
                &state, info, ns, name, &headers, &body,
            )
            .await;
            let (headers, body) = match admitted {
                Ok(None) => (headers.clone(), body.to_vec()),
                Ok(Some(changed)) => {
                    let mut headers = headers.clone();
                    headers.insert(
                        header::CONTENT_TYPE,
                        header::HeaderValue::from_static("application/json"),
                    );
                    (headers, changed)
                }
                Err(e) => return e.into_response(),
            };
            crate::auth::serviceaccount::token_request(&state, ns, name, &headers, &body)
                .await
                .unwrap_or_else(IntoResponse::into_response)
        };
        return crate::admission_webhook::scope(admission, request).await;
    }
    if target.info.group == crate::auth::rbac::GROUP
        && let Err(e) = check_rbac_write(&state, &user, &method, &target, &headers, &body).await
    {
        return e.into_response();
    }
    let q = parse_query(&uri);
    let verb = verb_of(&method, &target, &q);
    let span = tracing::debug_span!(
        "request",
        verb,
        resource = target.info.plural,
        namespace = target.namespace.as_deref(),
        name = target.name.as_deref(),
    );
    let ctx = handlers::Ctx {
        state: &state,
        target: &target,
        query: &q,
        headers: &headers,
        user: &user,
        node: crate::auth::node::node_of(&user),
    };
    let admission = crate::admission_webhook::Request::new(&method, &target, &user, &q, &body);
    let write = match method {
        Method::POST => Some(options::Write::Create),
        Method::PUT => Some(options::Write::Update),
        Method::PATCH => Some(options::Write::Patch {
            apply: handlers::content_type(&headers) == handlers::APPLY_PATCH,
        }),
        Method::DELETE => Some(options::Write::Delete),
        _ => None,
    };
    if let Some(write) = write
        && let Err(e) = options::validate(write, &q)
    {
        return e.into_response();
    }
    let response = async {
        let result = match method {
            Method::GET => handlers::get_or_list(ctx).await,
            Method::POST => handlers::create(ctx, &body).await,
            Method::PUT => handlers::update(ctx, &body).await,
            Method::PATCH => handlers::patch(ctx, &body).await,
            Method::DELETE => handlers::delete(ctx, &body).await,
            _ => Err(ApiError::method_not_allowed()),
        };
        result.unwrap_or_else(|e| {
            tracing::debug!(code = e.code, reason = e.reason, message = %e.message, "request failed");
            e.into_response()
        })
    }
    .instrument(span);
    let response = crate::admission_webhook::scope(admission, response).await;
    state.metrics.record(
        verb,
        &target.info,
        target.subresource.as_deref(),
        response.status().as_u16(),
    );
    response
}

/// Escalation prevention for writes of roles and bindings: the object as it would be written
/// (the body of a create or update, the stored object with the patch applied) may grant only
/// what the user holds (see `auth::rbac::check_escalation`).
async fn check_rbac_write(
    state: &AppState,
    user: &crate::auth::UserInfo,
    method: &Method,
    target: &Target,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), ApiError> {
    let ns = target.namespace.as_deref().unwrap_or("");
    let obj: Value = match *method {
        Method::POST | Method::PUT => match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(_) => return Ok(()), // the handler answers the bad body
        },
        Method::PATCH => {
            let Some(name) = target.name.as_deref() else {
                return Ok(());
            };
            let ct = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .split(';')
                .next()
                .unwrap_or("")
                .trim();
            if ct == handlers::APPLY_PATCH {
                // Server-side apply: the applied configuration is what would be granted (the
                // rules and subjects of RBAC objects are atomic lists, replaced whole).
                match handlers::apply_body(body) {
                    Ok(v) => v,
                    Err(_) => return Ok(()), // the handler answers the bad body
                }
            } else {
                let (Some(kind), Ok(patch)) = (
                    PatchKind::from_media_type(ct),
                    serde_json::from_slice::<Value>(body),
                ) else {
                    return Ok(());
                };
                let (_, kv) = state
                    .store
                    .get(&target.info.key(target.namespace.as_deref(), name), 0)
                    .await?;
                let Some(kv) = kv else { return Ok(()) };
                let meta = crate::patch_meta::for_resource(&target.info);
                apply_patch(kind, &decode_stored(&kv)?, &patch, meta)?
            }
        }
        _ => return Ok(()),
    };
    crate::auth::rbac::check_escalation(&state.auth.rbac, user, target.info.plural, ns, &obj)
}

/// Whether the `Accept` header allows a JSON answer (all this server speaks).
fn accepts_json(headers: &HeaderMap) -> bool {
    let accept: Vec<&str> = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|e| e.split(';').next().unwrap_or("").trim())
        .filter(|e| !e.is_empty())
        .collect();
    accept.is_empty()
        || accept
            .iter()
            .any(|m| matches!(*m, "application/json" | "application/*" | "*/*"))
}

/// A successful JSON body.
pub(crate) fn ok(code: StatusCode, body: &Value) -> Result<Response, ApiError> {
    Ok(json_response(code, body))
}

/// A complete JSON body already encoded.
pub(crate) fn bytes_response(code: StatusCode, body: Vec<u8>) -> Response {
    (code, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// A streaming body.
pub(crate) fn stream_response(content_type: &'static str, body: Body) -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache, private"),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resource(group: &str, version: &str, path: &str) -> Target {
        let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        match parse_path(&Default::default(), group, version, &segs) {
            Some(Parsed::Resource(t)) => *t,
            other => panic!("{path}: {other:?}"),
        }
    }

    #[test]
    fn accept_negotiation() {
        use axum::http::HeaderValue;
        let mut h = HeaderMap::new();
        assert!(accepts_json(&h));
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/vnd.kubernetes.protobuf,application/json"),
        );
        assert!(accepts_json(&h));
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/vnd.kubernetes.protobuf"),
        );
        assert!(!accepts_json(&h));
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/json;as=Table;v=v1;g=meta.k8s.io"),
        );
        assert!(accepts_json(&h));
    }

    #[test]
    fn paths() {
        let t = resource("", "v1", "namespaces/default/configmaps/x");
        assert_eq!(
            (t.info.plural, t.namespace.as_deref(), t.name.as_deref()),
            ("configmaps", Some("default"), Some("x"))
        );
        let t = resource("", "v1", "namespaces/default");
        assert_eq!(
            (t.info.plural, t.name.as_deref()),
            ("namespaces", Some("default"))
        );
        let t = resource("", "v1", "namespaces/default/status");
        assert_eq!(
            (t.info.plural, t.name.as_deref(), t.subresource.as_deref()),
            ("namespaces", Some("default"), Some("status"))
        );
        let t = resource("", "v1", "pods");
        assert!(t.namespace.is_none() && t.name.is_none());
        let t = resource("", "v1", "namespaces/a/pods/p/status");
        assert_eq!(t.subresource.as_deref(), Some("status"));
        let t = resource("apps", "v1", "namespaces/a/deployments");
        assert_eq!(t.info.kind, "Deployment");
        let t = resource("", "v1", "watch/namespaces/a/configmaps");
        assert!(t.watch_path);
        let t = resource("", "v1", "nodes/n1");
        assert_eq!(t.name.as_deref(), Some("n1"));
        assert!(
            parse_path(&Default::default(), "", "v1", &["pods", "p"]).is_none(),
            "namespaced object needs a namespace"
        );
        assert!(parse_path(&Default::default(), "", "v1", &["bogus"]).is_none());
        assert!(parse_path(&Default::default(), "apps", "v2", &[]).is_none());
        assert!(matches!(
            parse_path(&Default::default(), "apps", "v1", &[]),
            Some(Parsed::Discovery)
        ));
    }
}
