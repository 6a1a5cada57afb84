//! NodeAffinity: `nodeSelector` and required node affinity filter, preferred node affinity
//! scores.

use k8s_openapi::api::core::v1::{NodeSelectorTerm, PreferredSchedulingTerm};

use super::{Failure, FilterResult, normalize};
use crate::cache::{NodeInfo, PodInfo};
use crate::labels::{self, Labels};

#[derive(Debug, Default)]
pub struct State {
    node_selector: Labels,
    required: Option<Vec<NodeSelectorTerm>>,
    preferred: Vec<PreferredSchedulingTerm>,
}

impl State {
    pub fn new(pod: &PodInfo) -> State {
        let spec = pod.pod.spec.as_ref();
        let na = spec
            .and_then(|s| s.affinity.as_ref())
            .and_then(|a| a.node_affinity.as_ref());
        State {
            node_selector: spec
                .and_then(|s| s.node_selector.clone())
                .unwrap_or_default(),
            required: na
                .and_then(|a| {
                    a.required_during_scheduling_ignored_during_execution
                        .as_ref()
                })
                .map(|r| r.node_selector_terms.clone()),
            preferred: na
                .and_then(|a| {
                    a.preferred_during_scheduling_ignored_during_execution
                        .clone()
                })
                .unwrap_or_default(),
        }
    }

    /// The pod's node selector and required affinity both match (what PodTopologySpread's
    /// `nodeAffinityPolicy: Honor` also uses).
    pub fn matches(&self, node: &NodeInfo) -> bool {
        self.node_selector
            .iter()
            .all(|(k, v)| node.labels.get(k) == Some(v))
            && self.required.as_ref().is_none_or(|terms| {
                labels::node_selector_terms_match(terms, &node.labels, &node.name)
            })
    }

    pub fn filter(&self, node: &NodeInfo) -> FilterResult {
        if self.matches(node) {
            Ok(())
        } else {
            Err(Failure::unresolvable(
                "NodeAffinity",
                "node(s) didn't match Pod's node affinity/selector",
            ))
        }
    }

    /// Sum of the weights of matching preferred terms, normalized.
    pub fn scores(&self, nodes: &[&NodeInfo]) -> Vec<i64> {
        let mut scores: Vec<i64> = nodes
            .iter()
            .map(|n| {
                self.preferred
                    .iter()
                    .filter(|p| p.weight != 0)
                    .filter(|p| {
                        labels::node_selector_term_matches(&p.preference, &n.labels, &n.name)
                    })
                    .map(|p| i64::from(p.weight))
                    .sum()
            })
            .collect();
        normalize(&mut scores, false);
        scores
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::testutil::*;
    use serde_json::json;

    #[test]
    fn selector_and_required_terms() {
        let c = cache(
            &[
                node("ssd", json!({"disk": "ssd", "zone": "a"}), json!({})),
                node("hdd", json!({"disk": "hdd", "zone": "a"}), json!({})),
            ],
            &[],
        );
        let p = pod("p", json!({}), json!({"nodeSelector": {"disk": "ssd"}}));
        let s = State::new(&p);
        assert!(s.filter(&info(&c, "ssd")).is_ok());
        assert_eq!(
            s.filter(&info(&c, "hdd")).unwrap_err().reasons,
            vec!["node(s) didn't match Pod's node affinity/selector"]
        );
        let p = pod(
            "p",
            json!({}),
            json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [
                {"matchExpressions": [{"key": "disk", "operator": "In", "values": ["nvme"]}]},
                {"matchExpressions": [{"key": "disk", "operator": "NotIn", "values": ["ssd"]}]}
            ]}}}}),
        );
        let s = State::new(&p);
        assert!(s.filter(&info(&c, "ssd")).is_err());
        assert!(s.filter(&info(&c, "hdd")).is_ok());
    }

    #[test]
    fn preferred_terms_score() {
        let c = cache(
            &[
                node("a", json!({"disk": "ssd"}), json!({})),
                node("b", json!({"disk": "hdd"}), json!({})),
            ],
            &[],
        );
        let p = pod(
            "p",
            json!({}),
            json!({"affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 10, "preference": {"matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd"]}]}}
            ]}}}),
        );
        let (a, b) = (info(&c, "a"), info(&c, "b"));
        assert_eq!(State::new(&p).scores(&[&a, &b]), vec![100, 0]);
    }
}
