//! node.k8s.io/v1 RuntimeClasses as upstream v1.33's `ValidateRuntimeClass` /
//! `ValidateRuntimeClassUpdate` (its strategy runs both on update): `handler` a DNS label,
//! immutable; `overhead.podFixed` as container limits (core's resource names and
//! non-negative quantities, reported at upstream's `overhead.limits[<name>]`);
//! `scheduling.nodeSelector` labels and `scheduling.tolerations` (core's toleration rules,
//! no two with the same key, operator, value and effect).

use std::collections::BTreeSet;

use serde_json::{Value, json};

use super::core::{resources, toleration_struct, validate_labels, validate_tolerations};
use super::{NameRule, dns_problems, duplicate, invalid, items, q, str_of};
use crate::registry::ResourceInfo;
use crate::status::Cause;

pub(super) fn validate(info: &ResourceInfo, obj: &Value, old: Option<&Value>) -> Vec<Cause> {
    if info.kind != "RuntimeClass" {
        return Vec::new();
    }
    let handler = str_of(obj, "handler");
    let mut causes: Vec<Cause> = dns_problems(NameRule::Label, handler)
        .into_iter()
        .map(|m| invalid("handler", &q(handler), &m))
        .collect();
    if let Some(fixed) = obj
        .get("overhead")
        .and_then(|o| o.get("podFixed"))
        .filter(|f| !f.is_null())
    {
        causes.extend(resources(&json!({ "limits": fixed }), "overhead"));
    }
    if let Some(scheduling) = obj.get("scheduling").filter(|s| !s.is_null()) {
        causes.extend(validate_labels(
            scheduling.get("nodeSelector"),
            "scheduling.nodeSelector",
        ));
        let tolerations: Vec<&Value> = items(scheduling, "tolerations").iter().collect();
        causes.extend(validate_tolerations(&tolerations, "scheduling.tolerations"));
        let mut seen = BTreeSet::new();
        for (i, t) in tolerations.iter().enumerate() {
            let key = ["key", "operator", "value", "effect"].map(|f| str_of(t, f));
            if !seen.insert(key) {
                causes.push(duplicate(
                    format!("scheduling.tolerations[{i}]"),
                    &toleration_struct(t),
                ));
            }
        }
    }
    if let Some(old) = old {
        let before = str_of(old, "handler");
        if before != handler {
            causes.push(invalid("handler", &q(handler), "field is immutable"));
        }
    }
    causes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(obj: Value, old: Option<Value>) -> Vec<String> {
        let i = crate::registry::REGISTRY
            .find("node.k8s.io", "v1", "runtimeclasses")
            .expect("registered");
        validate(i, &obj, old.as_ref())
            .iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect()
    }

    #[test]
    fn runtime_classes() {
        let good = json!({"handler": "runc", "overhead": {"podFixed": {"cpu": "250m", "memory": "64Mi"}},
            "scheduling": {"nodeSelector": {"runtime": "gvisor"},
                           "tolerations": [{"key": "runtime", "operator": "Exists", "effect": "NoSchedule"}]}});
        assert!(check(good.clone(), None).is_empty());
        let t = json!({"key": "a", "operator": "Equal", "value": "b", "effect": "NoSchedule"});
        let bad = json!({"handler": "Run_C", "overhead": {"podFixed": {"cpu": "-1"}},
            "scheduling": {"nodeSelector": {"a b": "c"}, "tolerations": [t, t]}});
        let got = check(bad, None);
        assert_eq!(got.len(), 4, "{got:?}");
        assert!(
            got[0].starts_with("handler: Invalid value: \"Run_C\": a lowercase RFC 1123 label")
        );
        assert_eq!(
            got[1],
            "overhead.limits[cpu]: Invalid value: \"-1\": must be greater than or equal to 0"
        );
        assert!(got[2].starts_with("scheduling.nodeSelector: Invalid value: \"a b\""));
        assert_eq!(
            got[3],
            "scheduling.tolerations[1]: Duplicate value: core.Toleration{Key:\"a\", Operator:\"Equal\", Value:\"b\", Effect:\"NoSchedule\", TolerationSeconds:(*int64)(nil)}"
        );
        let mut changed = good.clone();
        changed["handler"] = json!("kata");
        assert_eq!(
            check(changed, Some(good)),
            ["handler: Invalid value: \"kata\": field is immutable"]
        );
    }
}
