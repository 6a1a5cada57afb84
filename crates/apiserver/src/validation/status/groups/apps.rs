//! apps/v1 status updates: `ValidateDeploymentStatusUpdate`, `ValidateReplicaSetStatusUpdate`,
//! `ValidateStatefulSetStatusUpdate` and `ValidateDaemonSetStatusUpdate`.

use serde_json::Value;

use super::{collision_count_kept, int, nonnegative, status};
use crate::status::Cause;
use crate::validation::invalid;

const GREATER_THAN_REPLICAS: &str = "cannot be greater than status.replicas";

/// `count` of `status` may not be above `limit` of it (both unset: 0).
fn not_above(causes: &mut Vec<Cause>, s: &Value, count: &str, limit: &str, detail: &str) {
    let value = int(s, count).unwrap_or(0);
    if value > int(s, limit).unwrap_or(0) {
        causes.push(invalid(
            format!("status.{count}"),
            &value.to_string(),
            detail,
        ));
    }
}

/// The counts of `keys` not negative, in that order.
fn counts(causes: &mut Vec<Cause>, s: &Value, keys: &[&str]) {
    for key in keys {
        nonnegative(causes, s, key, &format!("status.{key}"));
    }
}

/// `ValidateDeploymentStatusUpdate`.
pub(super) fn deployment(obj: &Value, old: &Value) -> Vec<Cause> {
    let s = status(obj);
    let mut causes = Vec::new();
    counts(
        &mut causes,
        s,
        &[
            "observedGeneration",
            "replicas",
            "updatedReplicas",
            "readyReplicas",
            "availableReplicas",
            "unavailableReplicas",
            "collisionCount",
        ],
    );
    for count in ["updatedReplicas", "readyReplicas", "availableReplicas"] {
        not_above(&mut causes, s, count, "replicas", GREATER_THAN_REPLICAS);
    }
    not_above(
        &mut causes,
        s,
        "availableReplicas",
        "readyReplicas",
        "cannot be greater than readyReplicas",
    );
    collision_count_kept(&mut causes, obj, old);
    causes
}

/// `ValidateReplicaSetStatusUpdate` (and core's `ValidateReplicationControllerStatusUpdate`,
/// the same rules on the same fields).
pub(in crate::validation::status) fn replica_set(obj: &Value) -> Vec<Cause> {
    let s = status(obj);
    let mut causes = Vec::new();
    counts(
        &mut causes,
        s,
        &[
            "replicas",
            "fullyLabeledReplicas",
            "readyReplicas",
            "availableReplicas",
            "observedGeneration",
        ],
    );
    for count in ["fullyLabeledReplicas", "readyReplicas", "availableReplicas"] {
        not_above(&mut causes, s, count, "replicas", GREATER_THAN_REPLICAS);
    }
    not_above(
        &mut causes,
        s,
        "availableReplicas",
        "readyReplicas",
        "cannot be greater than readyReplicas",
    );
    causes
}

/// `ValidateStatefulSetStatusUpdate`.
pub(super) fn stateful_set(obj: &Value, old: &Value) -> Vec<Cause> {
    let s = status(obj);
    let mut causes = Vec::new();
    counts(
        &mut causes,
        s,
        &[
            "replicas",
            "readyReplicas",
            "currentReplicas",
            "updatedReplicas",
            "availableReplicas",
            "observedGeneration",
            "collisionCount",
        ],
    );
    for count in [
        "readyReplicas",
        "currentReplicas",
        "updatedReplicas",
        "availableReplicas",
    ] {
        not_above(&mut causes, s, count, "replicas", GREATER_THAN_REPLICAS);
    }
    not_above(
        &mut causes,
        s,
        "availableReplicas",
        "readyReplicas",
        "cannot be greater than status.readyReplicas",
    );
    collision_count_kept(&mut causes, obj, old);
    causes
}

/// `ValidateDaemonSetStatusUpdate`.
pub(super) fn daemon_set(obj: &Value, old: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    counts(
        &mut causes,
        status(obj),
        &[
            "currentNumberScheduled",
            "numberMisscheduled",
            "desiredNumberScheduled",
            "numberReady",
            "observedGeneration",
            "updatedNumberScheduled",
            "numberAvailable",
            "numberUnavailable",
            "collisionCount",
        ],
    );
    collision_count_kept(&mut causes, obj, old);
    causes
}

#[cfg(test)]
mod tests {
    use super::super::tests::{check, info};
    use serde_json::json;

    #[test]
    fn deployments() {
        let d = info("apps", "v1", "deployments");
        let old = json!({"spec": {"replicas": 3}, "status": {"collisionCount": 2}});
        assert!(
            check(
                d,
                &old,
                json!({"observedGeneration": 1, "replicas": 3, "updatedReplicas": 3,
                       "readyReplicas": 2, "availableReplicas": 2, "unavailableReplicas": 1,
                       "collisionCount": 2})
            )
            .is_empty()
        );
        assert_eq!(
            check(
                d,
                &old,
                json!({"observedGeneration": -1, "replicas": 1, "updatedReplicas": 2,
                       "readyReplicas": 2, "availableReplicas": 3, "unavailableReplicas": -1,
                       "collisionCount": 1})
            ),
            [
                "status.observedGeneration: Invalid value: -1: must be greater than or equal to 0",
                "status.unavailableReplicas: Invalid value: -1: must be greater than or equal to 0",
                "status.updatedReplicas: Invalid value: 2: cannot be greater than status.replicas",
                "status.readyReplicas: Invalid value: 2: cannot be greater than status.replicas",
                "status.availableReplicas: Invalid value: 3: cannot be greater than status.replicas",
                "status.availableReplicas: Invalid value: 3: cannot be greater than readyReplicas",
                "status.collisionCount: Invalid value: 1: cannot be decremented",
            ]
        );
        // Unset after set is a decrement too, shown as 0.
        assert_eq!(
            check(d, &old, json!({"replicas": 0})),
            ["status.collisionCount: Invalid value: 0: cannot be decremented"]
        );
    }

    #[test]
    fn replica_sets() {
        let rs = info("apps", "v1", "replicasets");
        let old = json!({"spec": {"replicas": 2}});
        assert!(
            check(
                rs,
                &old,
                json!({"replicas": 2, "fullyLabeledReplicas": 2, "readyReplicas": 1,
                       "availableReplicas": 1, "observedGeneration": 1})
            )
            .is_empty()
        );
        assert_eq!(
            check(
                rs,
                &old,
                json!({"replicas": -1, "fullyLabeledReplicas": 1, "availableReplicas": 1})
            ),
            [
                "status.replicas: Invalid value: -1: must be greater than or equal to 0",
                "status.fullyLabeledReplicas: Invalid value: 1: cannot be greater than status.replicas",
                // An unset count is 0, and 0 > -1.
                "status.readyReplicas: Invalid value: 0: cannot be greater than status.replicas",
                "status.availableReplicas: Invalid value: 1: cannot be greater than status.replicas",
                "status.availableReplicas: Invalid value: 1: cannot be greater than readyReplicas",
            ]
        );
    }

    #[test]
    fn stateful_sets() {
        let sts = info("apps", "v1", "statefulsets");
        let old = json!({"spec": {"replicas": 2}});
        assert!(
            check(
                sts,
                &old,
                json!({"replicas": 2, "readyReplicas": 2, "currentReplicas": 2,
                       "updatedReplicas": 2, "availableReplicas": 2, "collisionCount": 0})
            )
            .is_empty()
        );
        assert_eq!(
            check(
                sts,
                &old,
                json!({"replicas": 1, "readyReplicas": 1, "currentReplicas": 2,
                       "availableReplicas": 2, "collisionCount": -1})
            ),
            [
                "status.collisionCount: Invalid value: -1: must be greater than or equal to 0",
                "status.currentReplicas: Invalid value: 2: cannot be greater than status.replicas",
                "status.availableReplicas: Invalid value: 2: cannot be greater than status.replicas",
                "status.availableReplicas: Invalid value: 2: cannot be greater than status.readyReplicas",
            ]
        );
    }

    #[test]
    fn daemon_sets() {
        let ds = info("apps", "v1", "daemonsets");
        let old = json!({"spec": {}, "status": {"collisionCount": 1}});
        assert!(
            check(
                ds,
                &old,
                json!({"currentNumberScheduled": 1, "numberMisscheduled": 0,
                       "desiredNumberScheduled": 1, "numberReady": 1, "collisionCount": 1})
            )
            .is_empty()
        );
        assert_eq!(
            check(
                ds,
                &old,
                json!({"currentNumberScheduled": 0, "numberMisscheduled": -1,
                       "desiredNumberScheduled": 0, "numberReady": -2, "numberUnavailable": -3})
            ),
            [
                "status.numberMisscheduled: Invalid value: -1: must be greater than or equal to 0",
                "status.numberReady: Invalid value: -2: must be greater than or equal to 0",
                "status.numberUnavailable: Invalid value: -3: must be greater than or equal to 0",
                "status.collisionCount: Invalid value: 0: cannot be decremented",
            ]
        );
    }
}
