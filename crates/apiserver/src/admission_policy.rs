//! Validating admission policies: upstream's ValidatingAdmissionPolicy plugin
//! (`k8s.io/apiserver/pkg/admission/plugin/policy/validating`) on the
//! `admissionregistration.k8s.io/v1` `ValidatingAdmissionPolicy`s and their bindings.
//! (Being written.)
//!
//! [`validate`] runs where the validating webhooks run (`admission_webhook::validate`), before
//! them, on the same requests.

use serde_json::Value;

use crate::admission_webhook::{Operation, Request};
use crate::registry::ResourceInfo;
use crate::server::AppState;
use crate::status::ApiError;

/// Runs the validating admission policies bound to a create or update (`obj`, and `old` for
/// updates) or a delete (`old`: the object being deleted) of the request `req`.
pub(crate) async fn validate(
    state: &AppState,
    req: &Request,
    info: &ResourceInfo,
    op: Operation,
    obj: Option<&Value>,
    old: Option<&Value>,
) -> Result<(), ApiError> {
    let _ = (state, req, info, op, obj, old);
    Ok(())
}
