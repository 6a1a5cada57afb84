//! coordination.k8s.io/v1 Leases as upstream v1.33's `ValidateLease` /
//! `ValidateLeaseUpdate`: `leaseDurationSeconds` > 0, `leaseTransitions` ≥ 0, `strategy`
//! (`OldestEmulationVersion`, or a qualified name with a `/`; upstream's path
//! `spec.strategy.strategy`) and `preferredHolder` only with a strategy. Holder identity and
//! times are not checked upstream either. Not covered: upstream's strategy drops `strategy`
//! and `preferredHolder` while the `CoordinatedLeaderElection` gate is off (v1.33's default);
//! here they are kept and validated.

use serde_json::Value;

use super::{forbidden, invalid, not_supported, q, qualified_name_problems};
use crate::registry::ResourceInfo;
use crate::status::Cause;

const STRATEGIES: &[&str] = &["OldestEmulationVersion"];

pub(super) fn validate(info: &ResourceInfo, obj: &Value, old: Option<&Value>) -> Vec<Cause> {
    let _ = old; // the update validates the new spec the same way
    if info.kind != "Lease" {
        return Vec::new();
    }
    let null = Value::Null;
    let spec = obj.get("spec").unwrap_or(&null);
    let mut causes = Vec::new();
    if let Some(secs) = spec.get("leaseDurationSeconds").and_then(Value::as_i64)
        && secs <= 0
    {
        causes.push(invalid(
            "spec.leaseDurationSeconds",
            &secs.to_string(),
            "must be greater than 0",
        ));
    }
    if let Some(n) = spec.get("leaseTransitions").and_then(Value::as_i64)
        && n < 0
    {
        causes.push(invalid(
            "spec.leaseTransitions",
            &n.to_string(),
            "must be greater than or equal to 0",
        ));
    }
    let strategy = spec.get("strategy").and_then(Value::as_str);
    if let Some(strategy) = strategy {
        let path = "spec.strategy.strategy";
        if strategy.contains('/') {
            for m in qualified_name_problems(strategy) {
                causes.push(invalid(path, &q(strategy), &m));
            }
        } else if !STRATEGIES.contains(&strategy) {
            causes.push(not_supported(path, &q(strategy), STRATEGIES));
        }
    }
    let holder = spec.get("preferredHolder").and_then(Value::as_str);
    if holder.is_some_and(|h| !h.is_empty()) && strategy.is_none_or(str::is_empty) {
        causes.push(forbidden(
            "spec.preferredHolder",
            "may only be specified if `strategy` is defined",
        ));
    }
    causes
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(obj: Value) -> Vec<String> {
        let i = crate::registry::REGISTRY
            .find("coordination.k8s.io", "v1", "leases")
            .expect("registered");
        validate(i, &obj, None)
            .iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect()
    }

    #[test]
    fn leases() {
        let node_lease = json!({"spec": {"holderIdentity": "node-1", "leaseDurationSeconds": 40,
            "renewTime": "2026-01-01T00:00:00.000000Z"}});
        assert!(check(node_lease).is_empty());
        let election = json!({"spec": {"holderIdentity": "a", "leaseDurationSeconds": 15,
            "leaseTransitions": 0, "strategy": "OldestEmulationVersion", "preferredHolder": "b"}});
        assert!(check(election).is_empty());
        assert_eq!(
            check(
                json!({"spec": {"leaseDurationSeconds": 0, "leaseTransitions": -1,
                                  "strategy": "Newest", "preferredHolder": "b"}})
            ),
            [
                "spec.leaseDurationSeconds: Invalid value: 0: must be greater than 0",
                "spec.leaseTransitions: Invalid value: -1: must be greater than or equal to 0",
                "spec.strategy.strategy: Unsupported value: \"Newest\": supported values: \"OldestEmulationVersion\"",
            ]
        );
        assert_eq!(
            check(json!({"spec": {"preferredHolder": "b"}})),
            ["spec.preferredHolder: Forbidden: may only be specified if `strategy` is defined"]
        );
        assert_eq!(
            check(json!({"spec": {"strategy": "example.com/mine"}})).len(),
            0
        );
    }
}
