//! PodTopologySpread: `whenUnsatisfiable: DoNotSchedule` constraints filter (maxSkew,
//! minDomains, node inclusion policies), `ScheduleAnyway` constraints score.
//!
//! Not done: the cluster-level default constraints upstream applies to pods that declare none.

use std::collections::HashMap;

use super::node_affinity;
use super::{Failure, FilterResult, MAX_NODE_SCORE};
use crate::cache::{Cache, NodeInfo, PodInfo};
use crate::labels::{self, Selector};

#[derive(Debug)]
struct Constraint {
    max_skew: i64,
    key: String,
    selector: Selector,
    min_domains: usize,
    honor_affinity: bool,
    honor_taints: bool,
    /// Pods per topology value (DoNotSchedule constraints only), over eligible nodes.
    counts: HashMap<String, i64>,
    self_match: i64,
}

#[derive(Debug, Default)]
pub struct State {
    hard: Vec<Constraint>,
    soft: Vec<Constraint>,
    /// For `nodeAffinityPolicy: Honor` while scoring.
    affinity: node_affinity::State,
}

impl Constraint {
    fn min_count(&self) -> i64 {
        if self.counts.len() < self.min_domains {
            return 0;
        }
        self.counts.values().copied().min().unwrap_or(0)
    }
}

fn matching_pods(node: &NodeInfo, pod: &PodInfo, sel: &Selector) -> i64 {
    node.pods
        .values()
        .filter(|p| p.namespace == pod.namespace && !p.terminating && sel.matches(&p.labels))
        .count() as i64
}

impl State {
    pub fn new(pod: &PodInfo, affinity: &node_affinity::State, cache: &Cache) -> State {
        let mut state = State {
            affinity: node_affinity::State::new(pod),
            ..State::default()
        };
        let Some(constraints) = pod
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.topology_spread_constraints.as_ref())
        else {
            return state;
        };
        for c in constraints {
            let selector = Selector::from_label_selector(c.label_selector.as_ref())
                .with_label_keys(c.match_label_keys.as_ref(), &pod.labels);
            let constraint = Constraint {
                max_skew: i64::from(c.max_skew),
                key: c.topology_key.clone(),
                self_match: i64::from(selector.matches(&pod.labels)),
                selector,
                min_domains: c.min_domains.unwrap_or(1).max(1) as usize,
                honor_affinity: c.node_affinity_policy.as_deref() != Some("Ignore"),
                honor_taints: c.node_taints_policy.as_deref() == Some("Honor"),
                counts: HashMap::new(),
            };
            if c.when_unsatisfiable == "DoNotSchedule" {
                state.hard.push(constraint);
            } else {
                state.soft.push(constraint);
            }
        }
        if state.hard.is_empty() {
            return state;
        }
        for node in cache.nodes().iter().filter(|n| n.node.is_some()) {
            if !state.hard.iter().all(|c| node.labels.contains_key(&c.key)) {
                continue;
            }
            for c in &mut state.hard {
                if !eligible(c, pod, affinity, node) {
                    continue;
                }
                let value = node.labels[&c.key].clone();
                *c.counts.entry(value).or_default() += matching_pods(node, pod, &c.selector);
            }
        }
        state
    }

    pub fn filter(&self, _pod: &PodInfo, node: &NodeInfo) -> FilterResult {
        for c in &self.hard {
            let Some(value) = node.labels.get(&c.key) else {
                return Err(Failure::unresolvable(
                    "PodTopologySpread",
                    "node(s) didn't match pod topology spread constraints (missing required label)",
                ));
            };
            let count = c.counts.get(value).copied().unwrap_or(0);
            if count + c.self_match - c.min_count() > c.max_skew {
                return Err(Failure::unschedulable(
                    "PodTopologySpread",
                    "node(s) didn't match pod topology spread constraints",
                ));
            }
        }
        Ok(())
    }

    /// Fewer matching pods in the node's domains is better; each constraint weighted by
    /// log(number of domains + 2). Nodes without every soft constraint's key score 0.
    pub fn scores(&self, pod: &PodInfo, cache: &Cache, nodes: &[&NodeInfo]) -> Vec<i64> {
        if self.soft.is_empty() {
            return vec![0; nodes.len()];
        }
        let mut counts: Vec<HashMap<&str, i64>> = vec![HashMap::new(); self.soft.len()];
        let hostname = |c: &Constraint| c.key == "kubernetes.io/hostname";
        for node in cache.nodes().iter().filter(|n| n.node.is_some()) {
            if !self.soft.iter().all(|c| node.labels.contains_key(&c.key)) {
                continue;
            }
            for (i, c) in self.soft.iter().enumerate() {
                if hostname(c) || !eligible(c, pod, &self.affinity, node) {
                    continue;
                }
                *counts[i].entry(node.labels[&c.key].as_str()).or_default() +=
                    matching_pods(node, pod, &c.selector);
            }
        }
        let weights: Vec<f64> = self
            .soft
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let domains = if hostname(c) {
                    nodes.len()
                } else {
                    counts[i].len()
                };
                ((domains + 2) as f64).ln()
            })
            .collect();
        let raw: Vec<Option<i64>> = nodes
            .iter()
            .map(|n| {
                if !self.soft.iter().all(|c| n.labels.contains_key(&c.key)) {
                    return None;
                }
                let mut s = 0.0;
                for (i, c) in self.soft.iter().enumerate() {
                    let cnt = if hostname(c) {
                        matching_pods(n, pod, &c.selector)
                    } else {
                        counts[i]
                            .get(n.labels[&c.key].as_str())
                            .copied()
                            .unwrap_or(0)
                    };
                    s += cnt as f64 * weights[i] + (c.max_skew - 1) as f64;
                }
                Some(s.round() as i64)
            })
            .collect();
        let present = raw.iter().flatten();
        let max = present.clone().copied().max().unwrap_or(0);
        let min = present.copied().min().unwrap_or(0);
        raw.iter()
            .map(|s| match s {
                None => 0,
                Some(_) if max == 0 => MAX_NODE_SCORE,
                Some(s) => MAX_NODE_SCORE * (max + min - s) / max,
            })
            .collect()
    }
}

/// Node inclusion policies: whether the node's pods count for the constraint at all.
fn eligible(
    c: &Constraint,
    pod: &PodInfo,
    affinity: &node_affinity::State,
    node: &NodeInfo,
) -> bool {
    (!c.honor_affinity || affinity.matches(node))
        && (!c.honor_taints
            || node.taints.iter().all(|t| {
                !(t.effect == "NoSchedule" || t.effect == "NoExecute")
                    || labels::tolerated(&pod.tolerations, t)
            }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::testutil::*;
    use serde_json::json;

    fn spread_pod(name: &str, when: &str) -> std::sync::Arc<PodInfo> {
        pod(
            name,
            json!({"app": "web"}),
            json!({"topologySpreadConstraints": [{
                "maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": when,
                "labelSelector": {"matchLabels": {"app": "web"}}
            }]}),
        )
    }

    #[test]
    fn max_skew_is_enforced_per_zone() {
        let c = cache(
            &[
                node("a1", json!({"zone": "a"}), json!({})),
                node("b1", json!({"zone": "b"}), json!({})),
                node("nolabel", json!({}), json!({})),
            ],
            &[(spread_pod("x", "DoNotSchedule"), "a1")],
        );
        let p = spread_pod("p", "DoNotSchedule");
        let na = node_affinity::State::new(&p);
        let s = State::new(&p, &na, &c);
        assert_eq!(
            s.filter(&p, &info(&c, "a1")).unwrap_err().reasons,
            vec!["node(s) didn't match pod topology spread constraints"]
        );
        assert!(s.filter(&p, &info(&c, "b1")).is_ok());
        let err = s.filter(&p, &info(&c, "nolabel")).unwrap_err();
        assert!(err.unresolvable);
        assert_eq!(
            err.reasons,
            vec!["node(s) didn't match pod topology spread constraints (missing required label)"]
        );
    }

    #[test]
    fn min_domains_counts_missing_domains_as_empty() {
        let p = pod(
            "p",
            json!({"app": "web"}),
            json!({"topologySpreadConstraints": [{
                "maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule",
                "minDomains": 3, "labelSelector": {"matchLabels": {"app": "web"}}
            }]}),
        );
        let c = cache(
            &[
                node("a1", json!({"zone": "a"}), json!({})),
                node("b1", json!({"zone": "b"}), json!({})),
            ],
            &[
                (spread_pod("x", "DoNotSchedule"), "a1"),
                (spread_pod("y", "DoNotSchedule"), "b1"),
            ],
        );
        let s = State::new(&p, &node_affinity::State::new(&p), &c);
        // Global minimum is 0 with only 2 of 3 domains: 1 + 1 - 0 > 1 everywhere.
        assert!(s.filter(&p, &info(&c, "a1")).is_err());
        assert!(s.filter(&p, &info(&c, "b1")).is_err());
    }

    #[test]
    fn schedule_anyway_scores_emptier_zones_higher() {
        let c = cache(
            &[
                node("a1", json!({"zone": "a"}), json!({})),
                node("b1", json!({"zone": "b"}), json!({})),
            ],
            &[(spread_pod("x", "ScheduleAnyway"), "a1")],
        );
        let p = spread_pod("p", "ScheduleAnyway");
        let s = State::new(&p, &node_affinity::State::new(&p), &c);
        assert!(s.filter(&p, &info(&c, "a1")).is_ok());
        let (a, b) = (info(&c, "a1"), info(&c, "b1"));
        let scores = s.scores(&p, &c, &[&a, &b]);
        assert!(scores[1] > scores[0], "{scores:?}");
    }
}
