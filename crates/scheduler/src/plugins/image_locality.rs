//! ImageLocality: nodes that already have the pod's images score higher, scaled by how many
//! nodes have them (an image everywhere says little).

use super::MAX_NODE_SCORE;
use crate::cache::{Cache, NodeInfo, PodInfo, normalize_image};

const MB: i64 = 1024 * 1024;
/// Below this, having the image is not worth anything (upstream's `minThreshold`).
const MIN_THRESHOLD: i64 = 23 * MB;
/// Per container, the size at which the score is full.
const MAX_CONTAINER_THRESHOLD: i64 = 1000 * MB;

pub fn scores(pod: &PodInfo, cache: &Cache, nodes: &[&NodeInfo]) -> Vec<i64> {
    let Some(spec) = pod.pod.spec.as_ref() else {
        return vec![0; nodes.len()];
    };
    let images: Vec<String> = spec
        .init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
        .filter_map(|c| c.image.as_deref())
        .map(normalize_image)
        .filter(|img| cache.image_node_count(img) > 0)
        .collect();
    if images.is_empty() {
        return vec![0; nodes.len()];
    }
    let total_nodes = cache.node_count().max(1) as i64;
    let max_threshold = MAX_CONTAINER_THRESHOLD * spec.containers.len().max(1) as i64;
    nodes
        .iter()
        .map(|n| {
            let sum: i64 = images
                .iter()
                .filter_map(|img| {
                    let size = n.images.get(img)?;
                    let spread = cache.image_node_count(img) as i64;
                    Some((*size as f64 * (spread as f64 / total_nodes as f64)) as i64)
                })
                .sum();
            let clamped = sum.clamp(MIN_THRESHOLD, max_threshold);
            MAX_NODE_SCORE * (clamped - MIN_THRESHOLD) / (max_threshold - MIN_THRESHOLD)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::testutil::*;
    use serde_json::json;
    use std::sync::Arc;

    #[test]
    fn nodes_with_the_image_score_higher() {
        let mut with = node("with", json!({}), json!({}));
        Arc::make_mut(&mut with).status.as_mut().unwrap().images = Some(vec![
            serde_json::from_value(
                json!({"names": ["docker.io/library/big:1"], "sizeBytes": 800 * MB}),
            )
            .unwrap(),
        ]);
        let c = cache(&[with, node("without", json!({}), json!({}))], &[]);
        let p = pod(
            "p",
            json!({}),
            json!({"containers": [{"name": "c", "image": "big:1"}]}),
        );
        let (a, b) = (info(&c, "with"), info(&c, "without"));
        let s = scores(&p, &c, &[&a, &b]);
        assert!(s[0] > 0 && s[1] == 0, "{s:?}");
    }
}
