//! rbac.authorization.k8s.io/v1: upstream's `ValidateRole`, `ValidateClusterRole`,
//! `ValidateRoleBinding`, `ValidateClusterRoleBinding` and their updates (`roleRef` never
//! changes). Names are path segments, checked with the other names.

use serde_json::Value;

use super::{
    NameRule, go_strings, invalid, items, label_selector_causes, not_supported, q, required,
    validate_name,
};
use crate::registry::ResourceInfo;
use crate::status::Cause;

const GROUP: &str = "rbac.authorization.k8s.io";

pub(super) fn validate(info: &ResourceInfo, obj: &Value, old: Option<&Value>) -> Vec<Cause> {
    match info.kind {
        "Role" => rules(obj, true),
        "ClusterRole" => {
            let mut causes = rules(obj, false);
            causes.extend(aggregation(obj));
            causes
        }
        "RoleBinding" | "ClusterRoleBinding" => {
            let mut causes = binding(obj, info.kind == "RoleBinding");
            if let Some(old) = old
                && obj.get("roleRef") != old.get("roleRef")
            {
                causes.push(invalid(
                    "roleRef",
                    &role_ref_go(obj.get("roleRef").unwrap_or(&Value::Null)),
                    "cannot change roleRef",
                ));
            }
            causes
        }
        _ => Vec::new(),
    }
}

fn strings<'a>(v: &'a Value, key: &str) -> Vec<&'a str> {
    v.get(key)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

/// `ValidatePolicyRule` of every rule.
fn rules(obj: &Value, namespaced: bool) -> Vec<Cause> {
    let mut causes = Vec::new();
    let rules = obj.get("rules").and_then(Value::as_array);
    for (i, rule) in rules.into_iter().flatten().enumerate() {
        let path = format!("rules[{i}]");
        if strings(rule, "verbs").is_empty() {
            causes.push(required(
                format!("{path}.verbs"),
                "verbs must contain at least one value",
            ));
        }
        let urls = strings(rule, "nonResourceURLs");
        if !urls.is_empty() {
            let shown = go_strings(&urls);
            if namespaced {
                causes.push(invalid(
                    format!("{path}.nonResourceURLs"),
                    &shown,
                    "namespaced rules cannot apply to non-resource URLs",
                ));
            }
            if ["apiGroups", "resources", "resourceNames"]
                .iter()
                .any(|k| !strings(rule, k).is_empty())
            {
                causes.push(invalid(
                    format!("{path}.nonResourceURLs"),
                    &shown,
                    "rules cannot apply to both regular resources and non-resource URLs",
                ));
            }
            continue;
        }
        if rule
            .get("apiGroups")
            .and_then(Value::as_array)
            .is_none_or(Vec::is_empty)
        {
            causes.push(required(
                format!("{path}.apiGroups"),
                "resource rules must supply at least one api group",
            ));
        }
        if strings(rule, "resources").is_empty() {
            causes.push(required(
                format!("{path}.resources"),
                "resource rules must supply at least one resource",
            ));
        }
    }
    causes
}

/// A ClusterRole's `aggregationRule`: at least one selector when present, each a valid
/// label selector.
fn aggregation(obj: &Value) -> Vec<Cause> {
    const FIELD: &str = "aggregationRule.clusterRoleSelectors";
    let Some(rule) = obj.get("aggregationRule").filter(|r| !r.is_null()) else {
        return Vec::new();
    };
    let selectors = items(rule, "clusterRoleSelectors");
    if selectors.is_empty() {
        return vec![required(
            FIELD,
            "at least one clusterRoleSelector required if aggregationRule is non-nil",
        )];
    }
    selectors
        .iter()
        .enumerate()
        .flat_map(|(i, sel)| label_selector_causes(sel, &format!("{FIELD}[{i}]")))
        .collect()
}

/// `ValidateRoleBinding` / `ValidateClusterRoleBinding`: the role reference and subjects.
fn binding(obj: &Value, namespaced: bool) -> Vec<Cause> {
    let mut causes = Vec::new();
    let role_ref = obj.get("roleRef").unwrap_or(&Value::Null);
    let field = |k: &str| role_ref.get(k).and_then(Value::as_str).unwrap_or("");
    if field("apiGroup") != GROUP {
        causes.push(not_supported(
            "roleRef.apiGroup",
            &q(field("apiGroup")),
            &[GROUP],
        ));
    }
    let kinds: &[&str] = if namespaced {
        &["Role", "ClusterRole"]
    } else {
        &["ClusterRole"]
    };
    if !kinds.contains(&field("kind")) {
        causes.push(not_supported("roleRef.kind", &q(field("kind")), kinds));
    }
    let name = field("name");
    if name.is_empty() {
        causes.push(required("roleRef.name", ""));
    } else {
        for msg in validate_name(NameRule::PathSegment, name) {
            causes.push(invalid("roleRef.name", &q(name), &msg));
        }
    }
    let subjects = obj.get("subjects").and_then(Value::as_array);
    for (i, subject) in subjects.into_iter().flatten().enumerate() {
        causes.extend(binding_subject(
            subject,
            namespaced,
            &format!("subjects[{i}]"),
        ));
    }
    causes
}

/// `ValidateRoleBindingSubject`.
fn binding_subject(subject: &Value, namespaced: bool, path: &str) -> Vec<Cause> {
    let mut causes = Vec::new();
    let field = |k: &str| subject.get(k).and_then(Value::as_str).unwrap_or("");
    let name = field("name");
    if name.is_empty() {
        causes.push(required(format!("{path}.name"), ""));
    }
    match field("kind") {
        "ServiceAccount" => {
            if !name.is_empty() {
                for msg in validate_name(NameRule::Subdomain, name) {
                    causes.push(invalid(format!("{path}.name"), &q(name), &msg));
                }
            }
            if !field("apiGroup").is_empty() {
                causes.push(not_supported(
                    format!("{path}.apiGroup"),
                    &q(field("apiGroup")),
                    &[""],
                ));
            }
            if !namespaced && field("namespace").is_empty() {
                causes.push(required(format!("{path}.namespace"), ""));
            }
        }
        "User" | "Group" => {
            if field("apiGroup") != GROUP {
                causes.push(not_supported(
                    format!("{path}.apiGroup"),
                    &q(field("apiGroup")),
                    &[GROUP],
                ));
            }
        }
        kind => causes.push(not_supported(
            format!("{path}.kind"),
            &q(kind),
            &["ServiceAccount", "User", "Group"],
        )),
    }
    causes
}

/// Go's `%#v` of an `rbac.RoleRef`.
fn role_ref_go(r: &Value) -> String {
    let field = |k: &str| r.get(k).and_then(Value::as_str).unwrap_or("");
    format!(
        "rbac.RoleRef{{APIGroup:{}, Kind:{}, Name:{}}}",
        q(field("apiGroup")),
        q(field("kind")),
        q(field("name"))
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn info(kind: &str) -> &'static ResourceInfo {
        let plural = match kind {
            "Role" => "roles",
            "ClusterRole" => "clusterroles",
            "RoleBinding" => "rolebindings",
            _ => "clusterrolebindings",
        };
        crate::registry::REGISTRY
            .find(GROUP, "v1", plural)
            .expect("registered")
    }

    use crate::status::cause_lines as fields;

    #[test]
    fn rules_need_verbs_and_groups_and_resources_or_urls() {
        let role = json!({"rules": [
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]},
            {"apiGroups": [""], "resources": ["pods"]},
            {"verbs": ["get"]},
            {"verbs": ["get"], "nonResourceURLs": ["/healthz"], "resources": ["pods"]},
        ]});
        assert_eq!(
            fields(&validate(info("Role"), &role, None)),
            [
                "rules[1].verbs: Required value: verbs must contain at least one value",
                "rules[2].apiGroups: Required value: resource rules must supply at least one api group",
                "rules[2].resources: Required value: resource rules must supply at least one resource",
                "rules[3].nonResourceURLs: Invalid value: []string{\"/healthz\"}: namespaced rules cannot apply to non-resource URLs",
                "rules[3].nonResourceURLs: Invalid value: []string{\"/healthz\"}: rules cannot apply to both regular resources and non-resource URLs",
            ]
        );
        let cluster = json!({"rules": [{"verbs": ["get"], "nonResourceURLs": ["/healthz"]}],
            "aggregationRule": {}});
        assert_eq!(
            fields(&validate(info("ClusterRole"), &cluster, None)),
            [
                "aggregationRule.clusterRoleSelectors: Required value: at least one clusterRoleSelector required if aggregationRule is non-nil"
            ]
        );
        let cluster = json!({"aggregationRule": {"clusterRoleSelectors": [
            {"matchLabels": {"rbac.example.com/aggregate-to-monitoring": "true"}},
            {"matchExpressions": [{"key": "bad key", "operator": "Near"}]}]}});
        assert_eq!(
            fields(&validate(info("ClusterRole"), &cluster, None)),
            [
                "aggregationRule.clusterRoleSelectors[1].matchExpressions[0].operator: Invalid value: \"Near\": not a valid selector operator",
                "aggregationRule.clusterRoleSelectors[1].matchExpressions[0].key: Invalid value: \"bad key\": name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')",
            ]
        );
    }

    #[test]
    fn bindings_check_the_role_and_subjects_and_keep_the_role() {
        let good = json!({
        "roleRef": {"apiGroup": GROUP, "kind": "ClusterRole", "name": "view"},
        "subjects": [
            {"kind": "ServiceAccount", "name": "default", "namespace": "ns", "apiGroup": ""},
            {"kind": "User", "name": "alice", "apiGroup": GROUP},
        ]});
        assert!(validate(info("ClusterRoleBinding"), &good, None).is_empty());
        let bad = json!({
        "roleRef": {"apiGroup": "", "kind": "Role", "name": ""},
        "subjects": [
            {"kind": "ServiceAccount", "name": "Bad_SA", "apiGroup": ""},
            {"kind": "Robot", "name": "r"},
        ]});
        let c = fields(&validate(info("ClusterRoleBinding"), &bad, None));
        assert_eq!(
            c[..3],
            [
                "roleRef.apiGroup: Unsupported value: \"\": supported values: \"rbac.authorization.k8s.io\"",
                "roleRef.kind: Unsupported value: \"Role\": supported values: \"ClusterRole\"",
                "roleRef.name: Required value",
            ]
        );
        assert!(
            c[3].starts_with("subjects[0].name: Invalid value: \"Bad_SA\""),
            "{c:?}"
        );
        assert_eq!(c[4], "subjects[0].namespace: Required value");
        assert_eq!(
            c[5],
            "subjects[1].kind: Unsupported value: \"Robot\": supported values: \"ServiceAccount\", \"User\", \"Group\""
        );
        let mut changed = good.clone();
        changed["roleRef"]["name"] = json!("edit");
        assert_eq!(
            fields(&validate(info("ClusterRoleBinding"), &changed, Some(&good))),
            [
                "roleRef: Invalid value: rbac.RoleRef{APIGroup:\"rbac.authorization.k8s.io\", Kind:\"ClusterRole\", Name:\"edit\"}: cannot change roleRef"
            ]
        );
    }
}
