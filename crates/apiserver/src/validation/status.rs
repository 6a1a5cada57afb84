//! Writes through `/status` of built-in objects, as upstream's status strategies validate them
//! (`ValidateXxxStatusUpdate`, and for a few kinds the whole `ValidateXxxUpdate`). The object
//! checked is the stored one with the request's status: `/status` changes nothing else
//! (`rest::handlers::merge_update`), so only the status and its relation to the spec and the
//! old status are judged here. core/v1 kinds are in [`core`], the other groups in [`groups`].

mod core;
mod groups;

use serde_json::Value;

use crate::registry::ResourceInfo;
use crate::status::Cause;

/// What upstream does to a `/status` write before validating it: the v1 defaults of the status
/// and the status strategy's `PrepareForUpdate` (`new` is the stored `old` with the request's
/// status).
pub(super) fn prepare(info: &ResourceInfo, new: &mut Value, old: &Value) {
    if info.group.is_empty() {
        core::prepare(info, new, old);
    }
}

/// The causes of the status update of `obj` from `old`.
pub(super) fn validate(info: &ResourceInfo, obj: &Value, old: &Value) -> Vec<Cause> {
    match info.group {
        "" => core::validate(info, obj, old),
        _ => groups::validate(info, obj, old),
    }
}
