//! The review APIs: `authentication.k8s.io/v1` TokenReview and SelfSubjectReview
//! (`kubectl auth whoami`), `authorization.k8s.io/v1` SubjectAccessReview,
//! SelfSubjectAccessReview, LocalSubjectAccessReview (`kubectl auth can-i`) and
//! SelfSubjectRulesReview (`kubectl auth can-i --list`). Each is create-only and stores
//! nothing: the answer is the request with `status` filled in.

use std::collections::BTreeMap;

use axum::http::{Method, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};

use super::{Attributes, UserInfo};
use crate::rest::Target;
use crate::server::AppState;
use crate::status::ApiError;

/// Serves a request to one of the review resources.
pub(crate) async fn serve(
    state: &AppState,
    user: &UserInfo,
    method: &Method,
    target: &Target,
    headers: &axum::http::HeaderMap,
    body: &[u8],
) -> Result<Response, ApiError> {
    if *method != Method::POST || target.name.is_some() {
        return Err(ApiError::method_not_allowed());
    }
    let mut req = super::body_json(headers, body, target.info.kind)?;
    if !req.is_object() {
        return Err(ApiError::bad_request("the body must be a JSON object"));
    }
    let kind = target.info.kind;
    let spec = req.get("spec").cloned().unwrap_or(json!({}));
    let invalid = |field: &str, message: &str| ApiError {
        details: Some(json!({
            "group": target.info.group, "kind": kind,
            "causes": [{ "reason": "FieldValueInvalid", "message": message, "field": field }],
        })),
        ..ApiError::new(
            422,
            "Invalid",
            format!(
                "{kind}.{} \"\" is invalid: {field}: {message}",
                target.info.group
            ),
        )
    };
    let status = match kind {
        "SelfSubjectReview" => json!({ "userInfo": user.to_json() }),
        "TokenReview" => {
            let token = spec["token"].as_str().unwrap_or("");
            if token.is_empty() {
                return Err(invalid("spec.token", "Required value"));
            }
            let audiences: Option<Vec<String>> = spec["audiences"]
                .as_array()
                .filter(|a| !a.is_empty())
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect()
                });
            match state
                .auth
                .authenticate_token(&state.store, token, audiences.as_deref())
                .await
            {
                Some((u, _)) => {
                    let u = u.authenticated();
                    let auds =
                        audiences.unwrap_or_else(|| state.auth.service_accounts.audiences.clone());
                    json!({ "authenticated": true, "user": u.to_json(), "audiences": auds })
                }
                None => {
                    json!({ "authenticated": false, "user": {}, "error": "invalid bearer token" })
                }
            }
        }
        "SelfSubjectRulesReview" => {
            let ns = spec["namespace"].as_str().unwrap_or("");
            let (resource, non_resource) = super::rbac::rules_review(&state.auth.rbac, user, ns);
            json!({ "resourceRules": resource, "nonResourceRules": non_resource, "incomplete": false })
        }
        "SubjectAccessReview" | "SelfSubjectAccessReview" | "LocalSubjectAccessReview" => {
            let subject = if kind == "SelfSubjectAccessReview" {
                user.clone()
            } else {
                let name = spec["user"].as_str().unwrap_or("").to_string();
                let groups: Vec<String> = spec["groups"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|g| g.as_str().map(str::to_string))
                    .collect();
                if name.is_empty() && groups.is_empty() {
                    return Err(invalid(
                        "spec.user",
                        "Invalid value: \"\": at least one of user or group must be specified",
                    ));
                }
                let extra: BTreeMap<String, Vec<String>> =
                    serde_json::from_value(spec["extra"].clone()).unwrap_or_default();
                UserInfo {
                    name,
                    uid: spec["uid"].as_str().unwrap_or("").to_string(),
                    groups,
                    extra,
                }
            };
            let ra = spec.get("resourceAttributes").filter(|v| v.is_object());
            let nra = spec.get("nonResourceAttributes").filter(|v| v.is_object());
            let s = |v: &Value, f: &str| v[f].as_str().unwrap_or("").to_string();
            let attrs = match (ra, nra) {
                (Some(ra), None) => {
                    let mut ns = s(ra, "namespace");
                    if kind == "LocalSubjectAccessReview" {
                        let path_ns = target.namespace.clone().unwrap_or_default();
                        if ns.is_empty() {
                            ns = path_ns.clone();
                            req["spec"]["resourceAttributes"]["namespace"] = json!(ns);
                        }
                        if ns != path_ns {
                            return Err(invalid(
                                "spec.resourceAttributes.namespace",
                                "Invalid value: must match the namespace of the request",
                            ));
                        }
                    }
                    Attributes::resource(
                        subject,
                        &s(ra, "verb"),
                        &s(ra, "group"),
                        &s(ra, "resource"),
                        &s(ra, "subresource"),
                        &ns,
                        &s(ra, "name"),
                    )
                }
                (None, Some(nra)) if kind != "LocalSubjectAccessReview" => Attributes {
                    user: subject,
                    verb: s(nra, "verb"),
                    resource_request: false,
                    api_group: String::new(),
                    api_version: String::new(),
                    namespace: String::new(),
                    resource: String::new(),
                    subresource: String::new(),
                    name: String::new(),
                    path: s(nra, "path"),
                },
                _ => {
                    return Err(invalid(
                        "spec.resourceAttributes",
                        "Invalid value: exactly one of nonResourceAttributes or resourceAttributes must be specified",
                    ));
                }
            };
            match super::authorize_with_reason(state, &attrs).await {
                (true, reason) if !reason.is_empty() => {
                    json!({ "allowed": true, "reason": reason })
                }
                (allowed, _) => json!({ "allowed": allowed }),
            }
        }
        _ => return Err(ApiError::method_not_allowed()),
    };
    req["apiVersion"] = json!(target.info.api_version());
    req["kind"] = json!(kind);
    if !req["metadata"].is_object() {
        req["metadata"] = json!({});
    }
    req["metadata"]["creationTimestamp"] = Value::Null;
    if !req["spec"].is_object() {
        req["spec"] = json!({});
    }
    req["status"] = status;
    Ok(crate::rest::json_response(StatusCode::CREATED, &req))
}
