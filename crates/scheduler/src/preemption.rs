//! DefaultPreemption: when a pod fits nowhere, find the node where evicting the fewest and
//! least important lower-priority pods makes it fit.
//!
//! Only decides; the scheduler carries the decision out (nominate, delete the victims).
//! Known simplification: after removing victims, the node is re-checked with the pod's
//! precomputed topology-spread and inter-pod-affinity counts, which still include the victims.

use std::collections::HashMap;
use std::sync::Arc;

use crate::cache::{Cache, PodInfo};
use crate::plugins::{CycleState, Failure, fit_error_message};

/// The chosen node and the pods to evict from it.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub node: String,
    pub victims: Vec<Arc<PodInfo>>,
}

/// `Ok(candidate)`, or `Err(message)` for the `preemption: ...` part of the failure message.
pub fn preempt(
    state: &CycleState,
    cache: &Cache,
    failures: &HashMap<String, Failure>,
) -> Result<Candidate, String> {
    let pod = &state.pod;
    let spec = pod.pod.spec.as_ref();
    if spec.and_then(|s| s.preemption_policy.as_deref()) == Some("Never") {
        return Err("not eligible due to preemptionPolicy=Never.".into());
    }
    if let Some(nominated) = pod
        .pod
        .status
        .as_ref()
        .and_then(|s| s.nominated_node_name.as_deref())
        && let Some(node) = cache.node(nominated)
        && node
            .pods
            .values()
            .any(|p| p.terminating && p.priority < pod.priority)
    {
        return Err("not eligible due to a terminating pod on the nominated node.".into());
    }
    let mut statuses: HashMap<String, Failure> = HashMap::new();
    let mut best: Option<((i32, i64, usize), Candidate)> = None;
    for (name, failure) in failures {
        if failure.unresolvable {
            statuses.insert(
                name.clone(),
                Failure::unresolvable(
                    "DefaultPreemption",
                    "Preemption is not helpful for scheduling",
                ),
            );
            continue;
        }
        match victims_on(state, cache, name) {
            Some(victims) => {
                let rank = (
                    victims.iter().map(|v| v.priority).max().unwrap_or(i32::MIN),
                    victims.iter().map(|v| i64::from(v.priority)).sum::<i64>(),
                    victims.len(),
                );
                if best.as_ref().is_none_or(|(r, _)| rank < *r) {
                    best = Some((
                        rank,
                        Candidate {
                            node: name.clone(),
                            victims,
                        },
                    ));
                }
            }
            None => {
                statuses.insert(
                    name.clone(),
                    Failure::unschedulable(
                        "DefaultPreemption",
                        "No preemption victims found for incoming pod",
                    ),
                );
            }
        }
    }
    match best {
        Some((_, c)) => Ok(c),
        None => Err(fit_error_message(cache.node_count(), &statuses)),
    }
}

/// The smallest set of lower-priority pods whose removal lets the pod fit on `node`: remove
/// them all, then put back the most important ones while it still fits.
fn victims_on(state: &CycleState, cache: &Cache, node: &str) -> Option<Vec<Arc<PodInfo>>> {
    let pod = &state.pod;
    let mut info = cache.node(node)?.clone();
    let mut candidates: Vec<Arc<PodInfo>> = info
        .pods
        .values()
        .filter(|p| p.priority < pod.priority && !p.terminating)
        .cloned()
        .collect();
    for p in &candidates {
        info.remove_pod(&p.key);
    }
    if state.filter(&info).is_err() {
        return None;
    }
    candidates.sort_by(|a, b| b.priority.cmp(&a.priority).then_with(|| a.key.cmp(&b.key)));
    let mut victims = Vec::new();
    for p in candidates {
        info.add_pod(p.clone());
        if state.filter(&info).is_err() {
            info.remove_pod(&p.key);
            victims.push(p);
        }
    }
    Some(victims)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::testutil::*;
    use serde_json::json;

    fn prio_pod(name: &str, cpu: &str, priority: i32) -> Arc<PodInfo> {
        pod(
            name,
            json!({}),
            json!({"priority": priority, "containers": [{"name": "c", "resources": {"requests": {"cpu": cpu}}}]}),
        )
    }

    fn failures(c: &Cache, state: &CycleState) -> HashMap<String, Failure> {
        c.nodes()
            .iter()
            .filter_map(|n| state.filter(n).err().map(|f| (n.name.clone(), f)))
            .collect()
    }

    #[test]
    fn evicts_the_fewest_least_important_pods() {
        let c = cache(
            &[
                node("a", json!({}), json!({})),
                node("b", json!({}), json!({})),
            ],
            &[
                (prio_pod("a-low", "2", 1), "a"),
                (prio_pod("a-mid", "2", 5), "a"),
                (prio_pod("b-mid1", "2", 5), "b"),
                (prio_pod("b-mid2", "2", 5), "b"),
            ],
        );
        let p = prio_pod("vip", "2", 10);
        let state = CycleState::new(p, &c);
        let f = failures(&c, &state);
        assert_eq!(f.len(), 2);
        let cand = preempt(&state, &c, &f).unwrap();
        assert_eq!(cand.node, "a");
        let names: Vec<&str> = cand.victims.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, vec!["a-low"]);
    }

    #[test]
    fn nothing_to_evict_says_why() {
        let c = cache(
            &[
                node("a", json!({}), json!({})),
                node(
                    "t",
                    json!({}),
                    json!({"taints": [{"key": "k", "value": "v", "effect": "NoSchedule"}]}),
                ),
            ],
            &[(prio_pod("high", "4", 100), "a")],
        );
        let state = CycleState::new(prio_pod("p", "1", 10), &c);
        let msg = preempt(&state, &c, &failures(&c, &state)).unwrap_err();
        assert_eq!(
            msg,
            "0/2 nodes are available: 1 No preemption victims found for incoming pod, \
             1 Preemption is not helpful for scheduling."
        );
        let never = pod(
            "n",
            json!({}),
            json!({"preemptionPolicy": "Never", "priority": 1000}),
        );
        let state = CycleState::new(never, &c);
        assert_eq!(
            preempt(&state, &c, &HashMap::new()).unwrap_err(),
            "not eligible due to preemptionPolicy=Never."
        );
    }
}
