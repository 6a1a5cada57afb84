//! Label selectors, node selector terms and tolerations, matched as upstream matches them.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{NodeSelectorRequirement, NodeSelectorTerm, Taint, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

pub type Labels = BTreeMap<String, String>;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Requirement {
    key: String,
    op: Op,
    values: Vec<String>,
}

/// A compiled `metav1.LabelSelector`. `Selector::nothing()` stands for a nil selector where
/// upstream treats nil as matching nothing (affinity terms, spread constraints).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    reqs: Vec<Requirement>,
    nothing: bool,
}

impl Selector {
    pub fn nothing() -> Selector {
        Selector {
            reqs: Vec::new(),
            nothing: true,
        }
    }

    /// Compiles a selector; an invalid operator makes it match nothing (as upstream's
    /// conversion error does).
    pub fn from_label_selector(sel: Option<&LabelSelector>) -> Selector {
        let Some(sel) = sel else {
            return Selector::nothing();
        };
        let mut reqs = Vec::new();
        for (k, v) in sel.match_labels.iter().flatten() {
            reqs.push(Requirement {
                key: k.clone(),
                op: Op::In,
                values: vec![v.clone()],
            });
        }
        for e in sel.match_expressions.iter().flatten() {
            let op = match e.operator.as_str() {
                "In" => Op::In,
                "NotIn" => Op::NotIn,
                "Exists" => Op::Exists,
                "DoesNotExist" => Op::DoesNotExist,
                _ => return Selector::nothing(),
            };
            reqs.push(Requirement {
                key: e.key.clone(),
                op,
                values: e.values.clone().unwrap_or_default(),
            });
        }
        Selector {
            reqs,
            nothing: false,
        }
    }

    /// Adds `key in (value)` for each of `keys` the pod has (`matchLabelKeys`).
    pub fn with_label_keys(mut self, keys: Option<&Vec<String>>, labels: &Labels) -> Selector {
        for k in keys.into_iter().flatten() {
            if let Some(v) = labels.get(k) {
                self.reqs.push(Requirement {
                    key: k.clone(),
                    op: Op::In,
                    values: vec![v.clone()],
                });
            }
        }
        self
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        if self.nothing {
            return false;
        }
        self.reqs.iter().all(|r| {
            let v = labels.get(&r.key);
            match r.op {
                Op::In => v.is_some_and(|v| r.values.contains(v)),
                Op::NotIn => v.is_none_or(|v| !r.values.contains(v)),
                Op::Exists => v.is_some(),
                Op::DoesNotExist => v.is_none(),
            }
        })
    }
}

fn node_requirement_matches(r: &NodeSelectorRequirement, value: Option<&String>) -> bool {
    let values = r.values.as_deref().unwrap_or_default();
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.contains(v)),
        "NotIn" => value.is_none_or(|v| !values.contains(v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(v), [bound]) = (value, values) else {
                return false;
            };
            let (Ok(v), Ok(bound)) = (v.parse::<i64>(), bound.parse::<i64>()) else {
                return false;
            };
            if r.operator == "Gt" {
                v > bound
            } else {
                v < bound
            }
        }
        _ => false,
    }
}

/// One node selector term: all its expressions and fields match. A term with neither matches
/// no node.
pub fn node_selector_term_matches(term: &NodeSelectorTerm, labels: &Labels, name: &str) -> bool {
    let exprs = term.match_expressions.as_deref().unwrap_or_default();
    let fields = term.match_fields.as_deref().unwrap_or_default();
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    let name = name.to_string();
    exprs
        .iter()
        .all(|r| node_requirement_matches(r, labels.get(&r.key)))
        && fields
            .iter()
            .all(|r| r.key == "metadata.name" && node_requirement_matches(r, Some(&name)))
}

/// Terms are ORed; an empty list matches nothing.
pub fn node_selector_terms_match(terms: &[NodeSelectorTerm], labels: &Labels, name: &str) -> bool {
    terms
        .iter()
        .any(|t| node_selector_term_matches(t, labels, name))
}

/// Whether `toleration` tolerates `taint` (upstream `Toleration.ToleratesTaint`).
pub fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    if let Some(effect) = toleration.effect.as_deref()
        && !effect.is_empty()
        && effect != taint.effect
    {
        return false;
    }
    let key = toleration.key.as_deref().unwrap_or_default();
    if !key.is_empty() && key != taint.key {
        return false;
    }
    match toleration.operator.as_deref().unwrap_or("Equal") {
        "Exists" => true,
        "Equal" | "" => {
            toleration.value.as_deref().unwrap_or_default()
                == taint.value.as_deref().unwrap_or_default()
        }
        _ => false,
    }
}

pub fn tolerated(tolerations: &[Toleration], taint: &Taint) -> bool {
    tolerations.iter().any(|t| tolerates(t, taint))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn label_selectors() {
        let sel: LabelSelector = serde_json::from_value(json!({
            "matchLabels": {"app": "web"},
            "matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["db"]}]
        }))
        .unwrap();
        let s = Selector::from_label_selector(Some(&sel));
        assert!(s.matches(&labels(&[("app", "web")])));
        assert!(!s.matches(&labels(&[("app", "web"), ("tier", "db")])));
        assert!(!Selector::nothing().matches(&labels(&[])));
        assert!(
            Selector::from_label_selector(Some(&LabelSelector::default())).matches(&labels(&[]))
        );
    }

    #[test]
    fn node_terms_with_gt_and_fields() {
        let term: NodeSelectorTerm = serde_json::from_value(json!({
            "matchExpressions": [{"key": "cores", "operator": "Gt", "values": ["4"]}],
            "matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]
        }))
        .unwrap();
        assert!(node_selector_term_matches(
            &term,
            &labels(&[("cores", "8")]),
            "n1"
        ));
        assert!(!node_selector_term_matches(
            &term,
            &labels(&[("cores", "4")]),
            "n1"
        ));
        assert!(!node_selector_term_matches(
            &term,
            &labels(&[("cores", "8")]),
            "n2"
        ));
        assert!(!node_selector_term_matches(
            &NodeSelectorTerm::default(),
            &labels(&[]),
            "n1"
        ));
    }

    #[test]
    fn tolerations() {
        let taint = Taint {
            key: "k".into(),
            value: Some("v".into()),
            effect: "NoSchedule".into(),
            ..Default::default()
        };
        let equal: Toleration =
            serde_json::from_value(json!({"key": "k", "value": "v", "effect": "NoSchedule"}))
                .unwrap();
        let other_value: Toleration =
            serde_json::from_value(json!({"key": "k", "value": "w"})).unwrap();
        let exists_all: Toleration = serde_json::from_value(json!({"operator": "Exists"})).unwrap();
        let wrong_effect: Toleration = serde_json::from_value(
            json!({"key": "k", "operator": "Exists", "effect": "NoExecute"}),
        )
        .unwrap();
        assert!(tolerates(&equal, &taint));
        assert!(!tolerates(&other_value, &taint));
        assert!(tolerates(&exists_all, &taint));
        assert!(!tolerates(&wrong_effect, &taint));
    }
}
