//! core/v1 objects other than pods, pod templates, ConfigMaps and Secrets (`core`), and
//! events.k8s.io Events, as upstream v1.33's `pkg/apis/core/validation`. (Being written.)

use serde_json::Value;

use crate::registry::ResourceInfo;
use crate::status::Cause;

pub(super) fn validate(info: &ResourceInfo, obj: &Value, old: Option<&Value>) -> Vec<Cause> {
    let _ = (info, obj, old);
    Vec::new()
}
