//! scheduling.k8s.io/v1 PriorityClasses as upstream v1.33's `ValidatePriorityClass` /
//! `ValidatePriorityClassUpdate` (its strategy runs both on update): names with the
//! `system-` prefix are only upstream's two system classes with their values and
//! `globalDefault: false` (the ones `bootstrap` creates); other classes at most 1000000000;
//! `preemptionPolicy` `PreemptLowerPriority` or `Never`; on update `value` and
//! `preemptionPolicy` may not change. That only one class is `globalDefault` is the priority
//! admission's rule (`admission`), not validation's.

use serde_json::Value;

use super::{forbidden, invalid, not_supported, q, required};
use crate::registry::ResourceInfo;
use crate::status::Cause;

/// Upstream's `HighestUserDefinablePriority`.
const HIGHEST_USER_DEFINABLE: i64 = 1_000_000_000;
const SYSTEM_PREFIX: &str = "system-";

pub(super) fn validate(info: &ResourceInfo, obj: &Value, old: Option<&Value>) -> Vec<Cause> {
    if info.kind != "PriorityClass" {
        return Vec::new();
    }
    let mut causes = Vec::new();
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let value = obj.get("value").and_then(Value::as_i64).unwrap_or(0);
    let global_default = obj
        .get("globalDefault")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if name.starts_with(SYSTEM_PREFIX) {
        if let Err(why) = known_system_class(name, value, global_default) {
            causes.push(forbidden(
                "metadata.name",
                &format!(
                    "priority class names with '{SYSTEM_PREFIX}' prefix are reserved for system \
                     use only. error: {why}"
                ),
            ));
        }
    } else if value > HIGHEST_USER_DEFINABLE {
        causes.push(forbidden(
            "value",
            &format!(
                "maximum allowed value of a user defined priority is {HIGHEST_USER_DEFINABLE}"
            ),
        ));
    }
    if let Some(policy) = obj.get("preemptionPolicy").and_then(Value::as_str) {
        match policy {
            "PreemptLowerPriority" | "Never" => {}
            "" => causes.push(required("preemptionPolicy", "")),
            other => causes.push(not_supported(
                "preemptionPolicy",
                &q(other),
                &["PreemptLowerPriority", "Never"],
            )),
        }
    }
    if let Some(old) = old {
        let mut old = old.clone();
        // A class stored before defaulting existed compares as upstream would have stored it.
        crate::defaults::apply(info, &mut old, false);
        if old.get("value").and_then(Value::as_i64).unwrap_or(0) != value {
            causes.push(forbidden("value", "may not be changed in an update."));
        }
        let policy = obj.get("preemptionPolicy").and_then(Value::as_str);
        if old.get("preemptionPolicy").and_then(Value::as_str) != policy {
            let shown = policy.map_or_else(|| "null".to_string(), q);
            causes.push(invalid("preemptionPolicy", &shown, "field is immutable"));
        }
    }
    causes
}

/// Upstream's `IsKnownSystemPriorityClass`.
fn known_system_class(name: &str, value: i64, global_default: bool) -> Result<(), String> {
    let Some((_, wanted, _)) = crate::admission::SYSTEM_PRIORITY_CLASSES
        .iter()
        .find(|(n, _, _)| *n == name)
    else {
        return Err(format!("{name} is not a known system priority class"));
    };
    if *wanted != value {
        return Err(format!("value of {name} PriorityClass must be {wanted}"));
    }
    if global_default {
        return Err(format!(
            "globalDefault of {name} PriorityClass must be false"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(obj: Value, old: Option<Value>) -> Vec<String> {
        let i = crate::registry::REGISTRY
            .find("scheduling.k8s.io", "v1", "priorityclasses")
            .expect("registered");
        let defaulted = |mut o: Value| {
            crate::defaults::apply(i, &mut o, true);
            o
        };
        let old = old.map(defaulted);
        validate(i, &defaulted(obj), old.as_ref())
            .iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect()
    }

    #[test]
    fn values_names_and_policies() {
        assert!(
            check(
                json!({"metadata": {"name": "high"}, "value": 1_000_000_000}),
                None
            )
            .is_empty()
        );
        for (name, value, _) in crate::admission::SYSTEM_PRIORITY_CLASSES {
            assert!(check(json!({"metadata": {"name": name}, "value": value}), None).is_empty());
        }
        assert_eq!(
            check(
                json!({"metadata": {"name": "higher"}, "value": 1_000_000_001,
                         "preemptionPolicy": "Always"}),
                None
            ),
            [
                "value: Forbidden: maximum allowed value of a user defined priority is 1000000000",
                "preemptionPolicy: Unsupported value: \"Always\": supported values: \"PreemptLowerPriority\", \"Never\"",
            ]
        );
        assert_eq!(
            check(
                json!({"metadata": {"name": "system-mine"}, "value": 5}),
                None
            ),
            [
                "metadata.name: Forbidden: priority class names with 'system-' prefix are reserved for system use only. error: system-mine is not a known system priority class"
            ]
        );
        assert_eq!(
            check(
                json!({"metadata": {"name": "system-node-critical"}, "value": 5}),
                None
            ),
            [
                "metadata.name: Forbidden: priority class names with 'system-' prefix are reserved for system use only. error: value of system-node-critical PriorityClass must be 2000001000"
            ]
        );
        assert_eq!(
            check(
                json!({"metadata": {"name": "p"}, "value": 2, "preemptionPolicy": "Never"}),
                Some(json!({"metadata": {"name": "p"}, "value": 1}))
            ),
            [
                "value: Forbidden: may not be changed in an update.",
                "preemptionPolicy: Invalid value: \"Never\": field is immutable",
            ]
        );
    }
}
