//! NodeUnschedulable, NodeName, TaintToleration and NodePorts.

use k8s_openapi::api::core::v1::Taint;

use super::{Failure, FilterResult, normalize};
use crate::cache::{NodeInfo, PodInfo};
use crate::labels;

/// The taint a cordoned node is treated as having.
pub const UNSCHEDULABLE_TAINT: &str = "node.kubernetes.io/unschedulable";

pub fn node_unschedulable(pod: &PodInfo, node: &NodeInfo) -> FilterResult {
    if !node.unschedulable {
        return Ok(());
    }
    let taint = Taint {
        key: UNSCHEDULABLE_TAINT.to_string(),
        effect: "NoSchedule".to_string(),
        ..Default::default()
    };
    if labels::tolerated(&pod.tolerations, &taint) {
        return Ok(());
    }
    Err(Failure::unresolvable(
        "NodeUnschedulable",
        "node(s) were unschedulable",
    ))
}

pub fn node_name(pod: &PodInfo, node: &NodeInfo) -> FilterResult {
    match pod.node_name() {
        Some(n) if n != node.name => Err(Failure::unresolvable(
            "NodeName",
            "node(s) didn't match the requested node name",
        )),
        _ => Ok(()),
    }
}

/// NoSchedule and NoExecute taints must be tolerated; the first that is not is the reason.
pub fn taint_toleration(pod: &PodInfo, node: &NodeInfo) -> FilterResult {
    let untolerated = node.taints.iter().find(|t| {
        (t.effect == "NoSchedule" || t.effect == "NoExecute")
            && !labels::tolerated(&pod.tolerations, t)
    });
    match untolerated {
        None => Ok(()),
        Some(t) => Err(Failure::unresolvable(
            "TaintToleration",
            format!(
                "node(s) had untolerated taint {{{}: {}}}",
                t.key,
                t.value.as_deref().unwrap_or_default()
            ),
        )),
    }
}

/// Fewer untolerated PreferNoSchedule taints is better (only tolerations with no effect or
/// PreferNoSchedule count).
pub fn taint_toleration_scores(pod: &PodInfo, nodes: &[&NodeInfo]) -> Vec<i64> {
    let tolerations: Vec<_> = pod
        .tolerations
        .iter()
        .filter(|t| {
            matches!(
                t.effect.as_deref(),
                None | Some("") | Some("PreferNoSchedule")
            )
        })
        .cloned()
        .collect();
    let mut scores: Vec<i64> = nodes
        .iter()
        .map(|n| {
            n.taints
                .iter()
                .filter(|t| t.effect == "PreferNoSchedule" && !labels::tolerated(&tolerations, t))
                .count() as i64
        })
        .collect();
    normalize(&mut scores, true);
    scores
}

pub fn node_ports(pod: &PodInfo, node: &NodeInfo) -> FilterResult {
    let conflict = pod
        .host_ports
        .iter()
        .any(|want| node.used_ports.iter().any(|used| used.conflicts(want)));
    if conflict {
        return Err(Failure::unschedulable(
            "NodePorts",
            "node(s) didn't have free ports for the requested pod ports",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::testutil::*;
    use serde_json::json;

    #[test]
    fn cordoned_nodes_unless_tolerated() {
        let c = cache(&[node("n", json!({}), json!({"unschedulable": true}))], &[]);
        let n = info(&c, "n");
        let plain = pod("p", json!({}), json!({}));
        let err = node_unschedulable(&plain, &n).unwrap_err();
        assert_eq!(err.reasons, vec!["node(s) were unschedulable"]);
        assert!(err.unresolvable);
        let tolerant = pod(
            "p",
            json!({}),
            json!({"tolerations": [{"key": UNSCHEDULABLE_TAINT, "operator": "Exists", "effect": "NoSchedule"}]}),
        );
        assert!(node_unschedulable(&tolerant, &n).is_ok());
    }

    #[test]
    fn node_name_must_match() {
        let c = cache(&[node("n", json!({}), json!({}))], &[]);
        let p = pod("p", json!({}), json!({"nodeName": "other"}));
        assert!(node_name(&p, &info(&c, "n")).is_err());
        let p = pod("p", json!({}), json!({"nodeName": "n"}));
        assert!(node_name(&p, &info(&c, "n")).is_ok());
    }

    #[test]
    fn taints_filter_and_score() {
        let c = cache(
            &[
                node(
                    "hard",
                    json!({}),
                    json!({"taints": [{"key": "k", "value": "v", "effect": "NoExecute"}]}),
                ),
                node(
                    "soft",
                    json!({}),
                    json!({"taints": [{"key": "s", "effect": "PreferNoSchedule"}]}),
                ),
                node("clean", json!({}), json!({})),
            ],
            &[],
        );
        let p = pod("p", json!({}), json!({}));
        let err = taint_toleration(&p, &info(&c, "hard")).unwrap_err();
        assert_eq!(err.reasons, vec!["node(s) had untolerated taint {k: v}"]);
        assert!(taint_toleration(&p, &info(&c, "soft")).is_ok());
        let tolerant = pod(
            "p",
            json!({}),
            json!({"tolerations": [{"key": "k", "operator": "Equal", "value": "v"}]}),
        );
        assert!(taint_toleration(&tolerant, &info(&c, "hard")).is_ok());

        let soft = info(&c, "soft");
        let clean = info(&c, "clean");
        assert_eq!(taint_toleration_scores(&p, &[&soft, &clean]), vec![0, 100]);
    }

    #[test]
    fn host_port_conflicts() {
        let on = pod(
            "a",
            json!({}),
            json!({"containers": [{"name": "c", "ports": [{"containerPort": 80, "hostPort": 80}]}]}),
        );
        let c = cache(&[node("n", json!({}), json!({}))], &[(on, "n")]);
        let same = pod(
            "b",
            json!({}),
            json!({"containers": [{"name": "c", "ports": [{"containerPort": 81, "hostPort": 80, "hostIP": "10.0.0.1"}]}]}),
        );
        let udp = pod(
            "c",
            json!({}),
            json!({"containers": [{"name": "c", "ports": [{"containerPort": 80, "hostPort": 80, "protocol": "UDP"}]}]}),
        );
        assert_eq!(
            node_ports(&same, &info(&c, "n")).unwrap_err().reasons,
            vec!["node(s) didn't have free ports for the requested pod ports"]
        );
        assert!(node_ports(&udp, &info(&c, "n")).is_ok());
    }
}
