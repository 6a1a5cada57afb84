//! NodeResourcesFit (filter, LeastAllocated score) and NodeResourcesBalancedAllocation.

use super::{Failure, FilterResult, MAX_NODE_SCORE};
use crate::cache::{NodeInfo, PodInfo};

/// The pod's requests plus what is on the node must fit the node's allocatable. Every
/// resource that does not fit is a reason; if the pod alone exceeds the node, preempting
/// cannot help.
pub fn fit(pod: &PodInfo, node: &NodeInfo) -> FilterResult {
    let mut reasons = Vec::new();
    let mut unresolvable = false;
    let alloc = &node.allocatable;
    let used = &node.requested;
    if used.pods + 1 > alloc.pods {
        reasons.push("Too many pods".to_string());
    }
    let req = &pod.requests;
    if !req.is_zero() {
        let mut check = |name: &str, want: i64, have: i64, used: i64| {
            if want > 0 && have < want + used {
                reasons.push(format!("Insufficient {name}"));
                unresolvable |= want > have;
            }
        };
        check("cpu", req.milli_cpu, alloc.milli_cpu, used.milli_cpu);
        check("memory", req.memory, alloc.memory, used.memory);
        check(
            "ephemeral-storage",
            req.ephemeral_storage,
            alloc.ephemeral_storage,
            used.ephemeral_storage,
        );
        for (name, want) in &req.scalar {
            let have = alloc.scalar.get(name).copied().unwrap_or(0);
            let used = used.scalar.get(name).copied().unwrap_or(0);
            check(name, *want, have, used);
        }
    }
    if reasons.is_empty() {
        return Ok(());
    }
    Err(Failure {
        plugin: "NodeResourcesFit",
        reasons,
        unresolvable,
    })
}

/// `(cpu fraction, memory fraction)` of the node with the pod on it, each at most 1, and
/// `None` for a resource the node has none of.
fn fractions(pod: &PodInfo, node: &NodeInfo) -> [(i64, i64); 2] {
    [
        (
            node.non_zero_requested.0 + pod.non_zero.0,
            node.allocatable.milli_cpu,
        ),
        (
            node.non_zero_requested.1 + pod.non_zero.1,
            node.allocatable.memory,
        ),
    ]
}

/// LeastAllocated: the more free CPU and memory after placing the pod, the better
/// (each weighted 1).
pub fn least_allocated_scores(pod: &PodInfo, nodes: &[&NodeInfo]) -> Vec<i64> {
    nodes
        .iter()
        .map(|n| {
            let per: Vec<i64> = fractions(pod, n)
                .iter()
                .map(|(req, cap)| {
                    if *cap == 0 || req > cap {
                        0
                    } else {
                        (cap - req) * MAX_NODE_SCORE / cap
                    }
                })
                .collect();
            per.iter().sum::<i64>() / per.len() as i64
        })
        .collect()
}

/// BalancedAllocation: CPU and memory used in similar proportions is better
/// (score = (1 − standard deviation of the fractions) × 100).
pub fn balanced_allocation_scores(pod: &PodInfo, nodes: &[&NodeInfo]) -> Vec<i64> {
    nodes
        .iter()
        .map(|n| {
            let f: Vec<f64> = fractions(pod, n)
                .iter()
                .filter(|(_, cap)| *cap > 0)
                .map(|(req, cap)| (*req as f64 / *cap as f64).min(1.0))
                .collect();
            let std = match f.as_slice() {
                [a, b] => (a - b).abs() / 2.0,
                _ => 0.0,
            };
            ((1.0 - std) * MAX_NODE_SCORE as f64) as i64
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::testutil::*;
    use serde_json::json;

    #[test]
    fn cpu_memory_pods_and_extended_resources() {
        let c = cache(
            &[node("n", json!({}), json!({}))],
            &[(cpu_pod("a", "3"), "n")],
        );
        let n = info(&c, "n");
        assert!(fit(&cpu_pod("b", "1"), &n).is_ok());
        let err = fit(&cpu_pod("b", "1500m"), &n).unwrap_err();
        assert_eq!(err.reasons, vec!["Insufficient cpu"]);
        assert!(!err.unresolvable);
        assert!(fit(&cpu_pod("b", "5"), &n).unwrap_err().unresolvable);

        let gpu = pod(
            "g",
            json!({}),
            json!({"containers": [{"name": "c", "resources": {"requests": {"example.com/gpu": "1", "memory": "9Gi"}}}]}),
        );
        assert_eq!(
            fit(&gpu, &n).unwrap_err().reasons,
            vec!["Insufficient memory", "Insufficient example.com/gpu"]
        );
    }

    #[test]
    fn pod_count_is_checked_even_without_requests() {
        let mut full = node("n", json!({}), json!({}));
        let status = std::sync::Arc::make_mut(&mut full).status.as_mut().unwrap();
        status.allocatable.as_mut().unwrap().insert(
            "pods".into(),
            k8s_openapi::apimachinery::pkg::api::resource::Quantity("1".into()),
        );
        let c = cache(&[full], &[(pod("a", json!({}), json!({})), "n")]);
        assert_eq!(
            fit(&pod("b", json!({}), json!({})), &info(&c, "n"))
                .unwrap_err()
                .reasons,
            vec!["Too many pods"]
        );
    }

    #[test]
    fn least_allocated_prefers_emptier_nodes_and_balanced_prefers_even_use() {
        let c = cache(
            &[
                node("busy", json!({}), json!({})),
                node("idle", json!({}), json!({})),
            ],
            &[(cpu_pod("a", "3"), "busy")],
        );
        let (busy, idle) = (info(&c, "busy"), info(&c, "idle"));
        let p = cpu_pod("p", "1");
        let s = least_allocated_scores(&p, &[&busy, &idle]);
        assert!(s[1] > s[0], "{s:?}");
        let b = balanced_allocation_scores(&p, &[&busy, &idle]);
        assert!(b[1] > b[0], "{b:?}");
    }
}
