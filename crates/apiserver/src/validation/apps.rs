//! apps/v1 and batch/v1: `ValidateDeployment`, ReplicaSet, StatefulSet, DaemonSet, Job, CronJob and their updates (not yet written).

use serde_json::Value;

use crate::registry::ResourceInfo;
use crate::status::Cause;

/// The causes of `obj` (with the stored `old` on update).
pub(super) fn validate(_info: &ResourceInfo, _obj: &Value, _old: Option<&Value>) -> Vec<Cause> {
    Vec::new()
}
