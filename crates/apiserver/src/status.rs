//! [`ApiError`]: a failed API request, answered as an upstream `Status` object.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::registry::ResourceInfo;

/// One reason an object is invalid, as a `StatusCause`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Cause {
    /// `FieldValueInvalid`, `FieldValueRequired`, ...
    pub(crate) reason: &'static str,
    pub(crate) message: String,
    pub(crate) field: String,
}

/// Causes as `field: message` lines, the form unit tests compare.
#[cfg(test)]
pub(crate) fn cause_lines(causes: &[Cause]) -> Vec<String> {
    causes
        .iter()
        .map(|c| format!("{}: {}", c.field, c.message))
        .collect()
}

/// Causes as `reason field: message` lines.
#[cfg(test)]
pub(crate) fn cause_lines_with_reasons(causes: &[Cause]) -> Vec<String> {
    causes
        .iter()
        .map(|c| format!("{} {}: {}", c.reason, c.field, c.message))
        .collect()
}

/// A failed request: the HTTP code and the `Status` body upstream answers with.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ApiError {
    pub(crate) code: u16,
    /// The `StatusReason`: `NotFound`, `AlreadyExists`, `Conflict`, `Invalid`, ...
    pub(crate) reason: &'static str,
    pub(crate) message: String,
    /// `details`, if any.
    pub(crate) details: Option<Value>,
}

/// `resource` or `resource.group`, as upstream messages name a resource.
pub(crate) fn qualified(info: &ResourceInfo) -> String {
    if info.group.is_empty() {
        info.plural.to_string()
    } else {
        format!("{}.{}", info.plural, info.group)
    }
}

fn details(info: &ResourceInfo, name: &str) -> Value {
    let mut d = json!({ "name": name, "kind": info.plural });
    if !info.group.is_empty() {
        d["group"] = json!(info.group);
    }
    d
}

impl ApiError {
    pub(crate) fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    pub(crate) fn not_found(info: &ResourceInfo, name: &str) -> Self {
        ApiError {
            details: Some(details(info, name)),
            ..Self::new(
                404,
                "NotFound",
                format!("{} \"{name}\" not found", qualified(info)),
            )
        }
    }

    /// A path the server does not serve.
    pub(crate) fn no_route() -> Self {
        ApiError {
            details: Some(json!({})),
            ..Self::new(
                404,
                "NotFound",
                "the server could not find the requested resource",
            )
        }
    }

    pub(crate) fn already_exists(info: &ResourceInfo, name: &str) -> Self {
        ApiError {
            details: Some(details(info, name)),
            ..Self::new(
                409,
                "AlreadyExists",
                format!("{} \"{name}\" already exists", qualified(info)),
            )
        }
    }

    pub(crate) fn conflict(info: &ResourceInfo, name: &str) -> Self {
        ApiError {
            details: Some(details(info, name)),
            ..Self::new(
                409,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; \
                     please apply your changes to the latest version and try again",
                    qualified(info)
                ),
            )
        }
    }

    /// 422: the object is invalid, with one cause per problem.
    pub(crate) fn invalid(info: &ResourceInfo, name: &str, causes: Vec<Cause>) -> Self {
        // Upstream names the kind with the group of its stored (internal) type:
        // `Deployment.apps`, `Foo.example.com`, `Pod`; `events.k8s.io` Events are core's.
        let group = info.conversion.map_or(info.group, |c| c.storage_group);
        let mut e = Self::invalid_of(group, info.kind, name, causes);
        // ... while the details carry the served group.
        if let Some(d) = e.details.as_mut().and_then(Value::as_object_mut) {
            match info.group {
                "" => d.remove("group"),
                g => d.insert("group".into(), json!(g)),
            };
        }
        e
    }

    /// 422 `Invalid` of a `group`/`kind` (upstream's `NewInvalid(GroupKind, name, errs)`):
    /// `<kind>.<group> "<name>" is invalid: <field>: <message>` (several in brackets), one
    /// cause per error.
    pub(crate) fn invalid_of(group: &str, kind: &str, name: &str, causes: Vec<Cause>) -> Self {
        let list: Vec<String> = causes
            .iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect();
        let qualified = if group.is_empty() {
            kind.to_string()
        } else {
            format!("{kind}.{group}")
        };
        let message = if list.len() == 1 {
            format!("{qualified} \"{name}\" is invalid: {}", list[0])
        } else {
            format!("{qualified} \"{name}\" is invalid: [{}]", list.join(", "))
        };
        let mut d = serde_json::Map::new();
        if !name.is_empty() {
            d.insert("name".into(), json!(name));
        }
        if !group.is_empty() {
            d.insert("group".into(), json!(group));
        }
        d.insert("kind".into(), json!(kind));
        d.insert(
            "causes".into(),
            causes
                .iter()
                .map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field}))
                .collect(),
        );
        ApiError {
            details: Some(Value::Object(d)),
            ..Self::new(422, "Invalid", message)
        }
    }

    /// 422 for a PUT without `metadata.resourceVersion` of a resource that does not allow
    /// unconditional updates. Upstream builds this error with the resource (plural) as kind.
    pub(crate) fn resource_version_required(info: &ResourceInfo, name: &str) -> Self {
        Self::invalid_of(
            info.group,
            info.plural,
            name,
            vec![Cause {
                reason: "FieldValueInvalid",
                message: "Invalid value: 0x0: must be specified for an update".into(),
                field: "metadata.resourceVersion".into(),
            }],
        )
    }

    pub(crate) fn method_not_allowed() -> Self {
        ApiError {
            details: Some(json!({})),
            ..Self::new(
                405,
                "MethodNotAllowed",
                "the server does not allow this method on the requested resource",
            )
        }
    }

    pub(crate) fn unsupported_media_type(content_type: &str) -> Self {
        ApiError {
            details: Some(json!({})),
            ..Self::new(
                415,
                "UnsupportedMediaType",
                format!(
                    "the body of the request was in an unknown format - accepted media types \
                     include: application/json, application/vnd.kubernetes.protobuf (got \
                     {content_type:?})"
                ),
            )
        }
    }

    /// 406: the client accepts no media type this server produces.
    pub(crate) fn not_acceptable() -> Self {
        ApiError {
            details: Some(json!({})),
            ..Self::new(
                406,
                "NotAcceptable",
                "only the following media types are accepted: application/json, \
                 application/json;as=Table;v=v1;g=meta.k8s.io",
            )
        }
    }

    /// 410 Gone, reason `Expired`: a continue token or resource version is too old.
    pub(crate) fn expired(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    /// 504 `Timeout`: a read needs a revision newer than the server has (upstream's
    /// `NewTooLargeResourceVersionError`): a `ResourceVersionTooLarge` cause and, when the
    /// client should retry, `retryAfterSeconds` (also sent as `Retry-After`).
    pub(crate) fn too_large_resource_version(requested: i64, current: i64, retry: u32) -> Self {
        let mut details = json!({
            "causes": [{
                "reason": "ResourceVersionTooLarge",
                "message": "Too large resource version",
            }],
        });
        if retry > 0 {
            details["retryAfterSeconds"] = json!(retry);
        }
        ApiError {
            details: Some(details),
            ..Self::new(
                504,
                "Timeout",
                format!("Timeout: Too large resource version: {requested}, current: {current}"),
            )
        }
    }

    /// 422 `Invalid` list options (upstream validates `ListOptions` of `meta.k8s.io`).
    pub(crate) fn invalid_list_options(causes: Vec<Cause>) -> Self {
        Self::invalid_of("meta.k8s.io", "ListOptions", "", causes)
    }

    pub(crate) fn forbidden(info: &ResourceInfo, name: &str, why: &str) -> Self {
        ApiError {
            details: Some(details(info, name)),
            ..Self::new(
                403,
                "Forbidden",
                format!("{} \"{name}\" is forbidden: {why}", qualified(info)),
            )
        }
    }

    pub(crate) fn internal(message: impl std::fmt::Display) -> Self {
        Self::new(
            500,
            "InternalError",
            format!("Internal error occurred: {message}"),
        )
    }

    /// The `Status` object.
    pub(crate) fn to_status(&self) -> Value {
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            s["details"] = d.clone();
        }
        // Upstream's `StatusReasonUnknown` is empty and omitted.
        if self.reason.is_empty()
            && let Some(m) = s.as_object_mut()
        {
            m.remove("reason");
        }
        if self.reason == "InternalError" {
            s["details"] = json!({ "causes": [{ "message": self.message }] });
        }
        s
    }
}

impl From<rk3s_datastore::Error> for ApiError {
    fn from(e: rk3s_datastore::Error) -> Self {
        match e {
            rk3s_datastore::Error::Compacted {
                requested,
                compact_revision,
            } => ApiError::expired(format!(
                "too old resource version: {requested} ({compact_revision})"
            )),
            rk3s_datastore::Error::FutureRevision { requested, current } => {
                ApiError::too_large_resource_version(requested, current, 0)
            }
            other => {
                tracing::warn!(error = %other, "datastore error");
                ApiError::internal(other)
            }
        }
    }
}

impl From<crate::storage::StoreError> for ApiError {
    fn from(e: crate::storage::StoreError) -> Self {
        match e {
            crate::storage::StoreError::Datastore(e) => e.into(),
            other => {
                tracing::warn!(error = %other, "storage transform error");
                ApiError::internal(other)
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = crate::rest::json_response(code, &self.to_status());
        // As upstream: a Status that says when to retry says it in `Retry-After` too.
        if let Some(retry) = self
            .details
            .as_ref()
            .and_then(|d| d.get("retryAfterSeconds"))
            .and_then(Value::as_u64)
            .filter(|r| *r > 0)
        {
            resp.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, retry.into());
        }
        resp
    }
}
