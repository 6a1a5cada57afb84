//! core/v1 status updates.

use serde_json::Value;

use crate::registry::ResourceInfo;
use crate::status::Cause;

/// The causes of the status update of a core/v1 object.
pub(super) fn validate(info: &ResourceInfo, obj: &Value, old: &Value) -> Vec<Cause> {
    let _ = (info, obj, old);
    Vec::new()
}
