//! Status updates of the API groups other than core/v1.

use serde_json::Value;

use crate::registry::ResourceInfo;
use crate::status::Cause;

/// The causes of the status update of an object of a named API group.
pub(super) fn validate(info: &ResourceInfo, obj: &Value, old: &Value) -> Vec<Cause> {
    let _ = (info, obj, old);
    Vec::new()
}
