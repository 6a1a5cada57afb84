//! InterPodAffinity: required pod affinity and anti-affinity (the incoming pod's, and existing
//! pods' anti-affinity against it) filter; preferred terms (both ways) and existing pods'
//! required affinity score.

use std::collections::HashMap;

use super::{Failure, FilterResult, MAX_NODE_SCORE};
use crate::cache::{Cache, NodeInfo, PodInfo};

/// Weight of an existing pod's *required* affinity term that matches the incoming pod, when
/// scoring (upstream's `hardPodAffinityWeight` default).
const HARD_POD_AFFINITY_WEIGHT: i64 = 1;

type Counts = HashMap<(String, String), i64>;

#[derive(Debug, Default)]
pub struct State {
    /// Topology domains where an existing pod's required anti-affinity rejects this pod.
    existing_anti: Counts,
    /// Domains with pods matching all of the pod's required affinity terms.
    affinity: Counts,
    /// Domains with pods matching one of the pod's required anti-affinity terms.
    anti: Counts,
}

fn bump(counts: &mut Counts, node: &NodeInfo, key: &str) {
    if let Some(v) = node.labels.get(key) {
        *counts.entry((key.to_string(), v.clone())).or_default() += 1;
    }
}

impl State {
    pub fn new(pod: &PodInfo, cache: &Cache) -> State {
        let mut s = State::default();
        let own = !pod.required_affinity.is_empty() || !pod.required_anti_affinity.is_empty();
        if !own && cache.pods_with_affinity == 0 {
            return s;
        }
        let ns = &cache.namespaces;
        for node in cache.nodes().iter().filter(|n| n.node.is_some()) {
            if !own && node.pods_with_affinity == 0 {
                continue;
            }
            for existing in node.pods.values() {
                for t in &existing.required_anti_affinity {
                    if t.matches(pod, ns) {
                        bump(&mut s.existing_anti, node, &t.topology_key);
                    }
                }
                if !pod.required_affinity.is_empty()
                    && pod
                        .required_affinity
                        .iter()
                        .all(|t| t.matches(existing, ns))
                {
                    for t in &pod.required_affinity {
                        bump(&mut s.affinity, node, &t.topology_key);
                    }
                }
                for t in &pod.required_anti_affinity {
                    if t.matches(existing, ns) {
                        bump(&mut s.anti, node, &t.topology_key);
                    }
                }
            }
        }
        s
    }

    pub fn filter(&self, pod: &PodInfo, node: &NodeInfo) -> FilterResult {
        let count = |c: &Counts, key: &str| {
            node.labels
                .get(key)
                .and_then(|v| c.get(&(key.to_string(), v.clone())))
                .copied()
                .unwrap_or(0)
        };
        if !pod.required_affinity.is_empty() {
            let all_present = pod.required_affinity.iter().all(|t| {
                node.labels.contains_key(&t.topology_key)
                    && count(&self.affinity, &t.topology_key) > 0
            });
            // The first pod of a group that selects itself may go anywhere that has the keys.
            let first_of_group = self.affinity.is_empty()
                && pod.required_affinity.iter().all(|t| {
                    node.labels.contains_key(&t.topology_key) && t.matches(pod, &HashMap::new())
                });
            if !all_present && !first_of_group {
                return Err(Failure::unresolvable(
                    "InterPodAffinity",
                    "node(s) didn't match pod affinity rules",
                ));
            }
        }
        if pod
            .required_anti_affinity
            .iter()
            .any(|t| count(&self.anti, &t.topology_key) > 0)
        {
            return Err(Failure::unschedulable(
                "InterPodAffinity",
                "node(s) didn't match pod anti-affinity rules",
            ));
        }
        if !self.existing_anti.is_empty()
            && node
                .labels
                .iter()
                .any(|(k, v)| self.existing_anti.contains_key(&(k.clone(), v.clone())))
        {
            return Err(Failure::unschedulable(
                "InterPodAffinity",
                "node(s) didn't satisfy existing pods anti-affinity rules",
            ));
        }
        Ok(())
    }

    pub fn scores(&self, pod: &PodInfo, cache: &Cache, nodes: &[&NodeInfo]) -> Vec<i64> {
        let own = !pod.preferred_affinity.is_empty() || !pod.preferred_anti_affinity.is_empty();
        if !own && cache.pods_with_affinity == 0 {
            return vec![0; nodes.len()];
        }
        let ns = &cache.namespaces;
        let mut topo: HashMap<(String, String), i64> = HashMap::new();
        let mut add = |node: &NodeInfo, key: &str, w: i64| {
            if let Some(v) = node.labels.get(key) {
                *topo.entry((key.to_string(), v.clone())).or_default() += w;
            }
        };
        for node in cache.nodes().iter().filter(|n| n.node.is_some()) {
            if !own && node.pods_with_affinity == 0 {
                continue;
            }
            for existing in node.pods.values() {
                for (w, t) in &pod.preferred_affinity {
                    if t.matches(existing, ns) {
                        add(node, &t.topology_key, i64::from(*w));
                    }
                }
                for (w, t) in &pod.preferred_anti_affinity {
                    if t.matches(existing, ns) {
                        add(node, &t.topology_key, -i64::from(*w));
                    }
                }
                for t in &existing.required_affinity {
                    if t.matches(pod, ns) {
                        add(node, &t.topology_key, HARD_POD_AFFINITY_WEIGHT);
                    }
                }
                for (w, t) in &existing.preferred_affinity {
                    if t.matches(pod, ns) {
                        add(node, &t.topology_key, i64::from(*w));
                    }
                }
                for (w, t) in &existing.preferred_anti_affinity {
                    if t.matches(pod, ns) {
                        add(node, &t.topology_key, -i64::from(*w));
                    }
                }
            }
        }
        let raw: Vec<i64> = nodes
            .iter()
            .map(|n| {
                n.labels
                    .iter()
                    .filter_map(|(k, v)| topo.get(&(k.clone(), v.clone())))
                    .sum()
            })
            .collect();
        let max = raw.iter().copied().max().unwrap_or(0);
        let min = raw.iter().copied().min().unwrap_or(0);
        raw.iter()
            .map(|s| {
                if max > min {
                    MAX_NODE_SCORE * (s - min) / (max - min)
                } else {
                    0
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::testutil::*;
    use serde_json::json;

    fn zones() -> Vec<std::sync::Arc<k8s_openapi::api::core::v1::Node>> {
        vec![
            node("a1", json!({"zone": "a"}), json!({})),
            node("b1", json!({"zone": "b"}), json!({})),
        ]
    }

    #[test]
    fn required_affinity_follows_matching_pods_or_lets_the_first_in() {
        let with_db = |name: &str| {
            pod(
                name,
                json!({"app": "web"}),
                json!({"affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                    {"topologyKey": "zone", "labelSelector": {"matchLabels": {"app": "db"}}}]}}}),
            )
        };
        let db = pod("db", json!({"app": "db"}), json!({}));
        let c = cache(&zones(), &[(db, "b1")]);
        let p = with_db("p");
        let s = State::new(&p, &c);
        assert_eq!(
            s.filter(&p, &info(&c, "a1")).unwrap_err().reasons,
            vec!["node(s) didn't match pod affinity rules"]
        );
        assert!(s.filter(&p, &info(&c, "b1")).is_ok());

        // Nobody matches and the pod does not match itself: nowhere.
        let empty = cache(&zones(), &[]);
        let s = State::new(&p, &empty);
        assert!(s.filter(&p, &info(&empty, "a1")).is_err());
        // A pod that matches its own term is the first of its group.
        let selfish = pod(
            "s",
            json!({"app": "db"}),
            json!({"affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                {"topologyKey": "zone", "labelSelector": {"matchLabels": {"app": "db"}}}]}}}),
        );
        let s = State::new(&selfish, &empty);
        assert!(s.filter(&selfish, &info(&empty, "a1")).is_ok());
    }

    #[test]
    fn anti_affinity_both_ways() {
        let anti = |name: &str| {
            pod(
                name,
                json!({"app": "web"}),
                json!({"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                    {"topologyKey": "zone", "labelSelector": {"matchLabels": {"app": "web"}}}]}}}),
            )
        };
        let c = cache(&zones(), &[(anti("x"), "a1")]);
        let p = anti("p");
        let s = State::new(&p, &c);
        assert_eq!(
            s.filter(&p, &info(&c, "a1")).unwrap_err().reasons,
            vec!["node(s) didn't match pod anti-affinity rules"]
        );
        assert!(s.filter(&p, &info(&c, "b1")).is_ok());
        // A plain pod with the label is kept away by the existing pod's rule.
        let plain = pod("q", json!({"app": "web"}), json!({}));
        let s = State::new(&plain, &c);
        assert_eq!(
            s.filter(&plain, &info(&c, "a1")).unwrap_err().reasons,
            vec!["node(s) didn't satisfy existing pods anti-affinity rules"]
        );
    }

    #[test]
    fn preferred_affinity_scores() {
        let db = pod("db", json!({"app": "db"}), json!({}));
        let c = cache(&zones(), &[(db, "b1")]);
        let p = pod(
            "p",
            json!({}),
            json!({"affinity": {"podAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 50, "podAffinityTerm": {"topologyKey": "zone", "labelSelector": {"matchLabels": {"app": "db"}}}}]}}}),
        );
        let s = State::new(&p, &c);
        let (a, b) = (info(&c, "a1"), info(&c, "b1"));
        assert_eq!(s.scores(&p, &c, &[&a, &b]), vec![0, 100]);
    }
}
