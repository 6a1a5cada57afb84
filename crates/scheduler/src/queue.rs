//! The scheduling queue: an active queue ordered by priority then arrival, a backoff queue for
//! pods that failed recently, and the unschedulable pods, which wait for a cluster event that
//! may help them (a node added or changed, a pod deleted, ...).

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cache::{PodInfo, PodKey};

/// Pods that found no node come back after this long even without a cluster event (upstream's
/// `podMaxInUnschedulablePodsDuration`).
pub const MAX_UNSCHEDULABLE_DURATION: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Where {
    Active,
    Backoff,
    Unschedulable,
    /// Popped, being scheduled.
    InFlight,
}

#[derive(Debug)]
struct Entry {
    info: Arc<PodInfo>,
    attempts: u32,
    seq: u64,
    place: Where,
    since: Instant,
    backoff_until: Instant,
    /// Plugins that rejected the pod last time: which cluster events can help it.
    plugins: HashSet<&'static str>,
    /// The move cycle when the pod was popped: a move while in flight sends it to backoff.
    popped_at_move: u64,
}

#[derive(Debug, PartialEq, Eq)]
struct ActiveKey {
    priority: i32,
    seq: u64,
    key: PodKey,
}

impl Ord for ActiveKey {
    fn cmp(&self, o: &Self) -> Ordering {
        self.priority
            .cmp(&o.priority)
            .then_with(|| o.seq.cmp(&self.seq))
    }
}

impl PartialOrd for ActiveKey {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}

/// A popped pod: what the scheduling cycle works on.
#[derive(Debug, Clone)]
pub struct Popped {
    pub info: Arc<PodInfo>,
    pub attempts: u32,
}

/// Which cluster event happened, to decide which unschedulable pods it may help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterEvent {
    NodeAddOrUpdate,
    AssignedPodAdd,
    AssignedPodDelete,
    /// A PersistentVolume, PersistentVolumeClaim, StorageClass or CSINode added or changed.
    VolumeAddOrUpdate,
}

#[derive(Debug)]
pub struct Queue {
    entries: HashMap<PodKey, Entry>,
    active: BinaryHeap<ActiveKey>,
    backoff: BinaryHeap<Reverse<(Instant, u64, PodKey)>>,
    seq: u64,
    move_cycle: u64,
    /// Keys of the entries in `Where::Unschedulable`, so events need not scan every pod.
    unschedulable: HashSet<PodKey>,
    initial_backoff: Duration,
    max_backoff: Duration,
}

impl Queue {
    pub fn new(initial_backoff: Duration, max_backoff: Duration) -> Queue {
        Queue {
            entries: HashMap::new(),
            active: BinaryHeap::new(),
            backoff: BinaryHeap::new(),
            seq: 0,
            move_cycle: 0,
            unschedulable: HashSet::new(),
            initial_backoff,
            max_backoff,
        }
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    fn push_active(&mut self, key: &str) {
        self.unschedulable.remove(key);
        let seq = self.next_seq();
        if let Some(e) = self.entries.get_mut(key) {
            e.place = Where::Active;
            e.seq = seq;
            self.active.push(ActiveKey {
                priority: e.info.priority,
                seq,
                key: key.to_string(),
            });
        }
    }

    fn push_backoff(&mut self, key: &str, now: Instant) {
        self.unschedulable.remove(key);
        let seq = self.next_seq();
        if let Some(e) = self.entries.get_mut(key) {
            if e.backoff_until <= now {
                self.push_active(key);
                return;
            }
            e.place = Where::Backoff;
            e.seq = seq;
            self.backoff
                .push(Reverse((e.backoff_until, seq, key.to_string())));
        }
    }

    /// A pending pod was added or changed. A new pod goes to the active queue; a changed
    /// unschedulable pod gets another try (after its backoff).
    pub fn add_or_update(&mut self, info: Arc<PodInfo>, now: Instant) {
        let key = info.key.clone();
        match self.entries.get_mut(&key) {
            Some(e) => {
                let changed = !Arc::ptr_eq(&e.info.pod, &info.pod)
                    && e.info.pod.spec != info.pod.spec
                    || e.info.labels != info.labels;
                e.info = info;
                if e.place == Where::Unschedulable && changed {
                    self.push_backoff(&key, now);
                }
            }
            None => {
                self.entries.insert(
                    key.clone(),
                    Entry {
                        info,
                        attempts: 0,
                        seq: 0,
                        place: Where::Active,
                        since: now,
                        backoff_until: now,
                        plugins: HashSet::new(),
                        popped_at_move: 0,
                    },
                );
                self.push_active(&key);
            }
        }
    }

    pub fn delete(&mut self, key: &str) {
        self.unschedulable.remove(key);
        self.entries.remove(key);
    }

    /// Keeps only the pods in `keys` (after a relist).
    pub fn retain(&mut self, keys: &HashSet<PodKey>) {
        self.entries.retain(|k, _| keys.contains(k));
        self.unschedulable.retain(|k| keys.contains(k));
    }

    pub fn contains(&self, key: &str) -> bool {
        self.entries.contains_key(key)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// How many pods wait in the active queue, in backoff and as unschedulable (popped pods,
    /// being scheduled, in none): `scheduler_pending_pods`.
    pub fn counts(&self) -> [usize; 3] {
        let mut counts = [0; 3];
        for e in self.entries.values() {
            match e.place {
                Where::Active => counts[0] += 1,
                Where::Backoff => counts[1] += 1,
                Where::Unschedulable => counts[2] += 1,
                Where::InFlight => {}
            }
        }
        counts
    }

    /// Moves pods whose backoff is over to the active queue, and long-unschedulable pods back.
    pub fn flush(&mut self, now: Instant) {
        while let Some(Reverse((until, seq, key))) = self.backoff.peek().cloned() {
            if until > now {
                break;
            }
            self.backoff.pop();
            if self
                .entries
                .get(&key)
                .is_some_and(|e| e.seq == seq && e.place == Where::Backoff)
            {
                self.push_active(&key);
            }
        }
        let stale: Vec<PodKey> = self
            .unschedulable
            .iter()
            .filter(|k| {
                self.entries
                    .get(*k)
                    .is_some_and(|e| now.duration_since(e.since) >= MAX_UNSCHEDULABLE_DURATION)
            })
            .cloned()
            .collect();
        for k in stale {
            self.push_backoff(&k, now);
        }
    }

    /// The highest-priority, longest-waiting active pod.
    pub fn pop(&mut self, now: Instant) -> Option<Popped> {
        self.flush(now);
        while let Some(top) = self.active.pop() {
            let move_cycle = self.move_cycle;
            let Some(e) = self.entries.get_mut(&top.key) else {
                continue;
            };
            if e.seq != top.seq || e.place != Where::Active {
                continue;
            }
            e.place = Where::InFlight;
            e.attempts += 1;
            e.popped_at_move = move_cycle;
            return Some(Popped {
                info: e.info.clone(),
                attempts: e.attempts,
            });
        }
        None
    }

    /// When the next backed-off pod becomes active, if any.
    pub fn next_backoff(&self) -> Option<Instant> {
        self.backoff.peek().map(|Reverse((t, _, _))| *t)
    }

    /// The pod was assumed onto a node: it leaves the queue.
    pub fn done(&mut self, key: &str) {
        self.delete(key);
    }

    fn backoff_for(&self, attempts: u32) -> Duration {
        let exp = attempts.saturating_sub(1).min(20);
        self.initial_backoff
            .saturating_mul(1 << exp)
            .min(self.max_backoff)
    }

    /// The scheduling attempt failed. Rejected by plugins: the pod waits for a cluster event
    /// (or, if one happened while it was in flight, only for its backoff). An error (no
    /// plugins): backoff.
    pub fn failed(&mut self, key: &str, plugins: HashSet<&'static str>, now: Instant) {
        let backoff = match self.entries.get(key) {
            Some(e) => self.backoff_for(e.attempts),
            None => return,
        };
        let move_cycle = self.move_cycle;
        let Some(e) = self.entries.get_mut(key) else {
            return;
        };
        e.backoff_until = now + backoff;
        e.since = now;
        let moved_meanwhile = e.popped_at_move < move_cycle;
        let to_backoff = plugins.is_empty() || moved_meanwhile;
        e.plugins = plugins;
        if to_backoff {
            self.push_backoff(key, now);
        } else {
            e.place = Where::Unschedulable;
            self.unschedulable.insert(key.to_string());
        }
    }

    /// A binding failed: the pod is pending again, after its backoff.
    pub fn requeue(&mut self, info: Arc<PodInfo>, attempts: u32, now: Instant) {
        let key = info.key.clone();
        self.add_or_update(info, now);
        if let Some(e) = self.entries.get_mut(&key) {
            e.attempts = attempts;
        }
        self.failed(&key, HashSet::new(), now);
    }

    /// A cluster event: unschedulable pods it may help go to backoff or active.
    pub fn move_for(&mut self, event: ClusterEvent, now: Instant) {
        self.move_cycle += 1;
        let keys: Vec<PodKey> = self
            .unschedulable
            .iter()
            .filter_map(|k| self.entries.get(k).map(|e| (k, e)))
            .filter(|(_, e)| match event {
                ClusterEvent::NodeAddOrUpdate | ClusterEvent::AssignedPodDelete => true,
                ClusterEvent::AssignedPodAdd => {
                    e.plugins.contains("InterPodAffinity")
                        || e.plugins.contains("PodTopologySpread")
                }
                ClusterEvent::VolumeAddOrUpdate => {
                    e.plugins.contains("VolumeBinding")
                        || e.plugins.contains("VolumeZone")
                        || e.plugins.contains("VolumeRestrictions")
                        || e.plugins.contains("NodeVolumeLimits")
                }
            })
            .map(|(k, _)| (*k).clone())
            .collect();
        for k in keys {
            self.push_backoff(&k, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::testutil::pod;
    use serde_json::json;

    fn q() -> Queue {
        Queue::new(Duration::from_secs(1), Duration::from_secs(10))
    }

    #[test]
    fn priority_then_arrival() {
        let now = Instant::now();
        let mut q = q();
        q.add_or_update(pod("low", json!({}), json!({"priority": 1})), now);
        q.add_or_update(pod("high", json!({}), json!({"priority": 100})), now);
        q.add_or_update(pod("low2", json!({}), json!({"priority": 1})), now);
        let order: Vec<String> =
            std::iter::from_fn(|| q.pop(now).map(|p| p.info.name.clone())).collect();
        assert_eq!(order, vec!["high", "low", "low2"]);
    }

    #[test]
    fn counts_by_queue() {
        let now = Instant::now();
        let mut q = q();
        q.add_or_update(pod("a", json!({}), json!({})), now);
        q.add_or_update(pod("b", json!({}), json!({})), now);
        assert_eq!(q.counts(), [2, 0, 0]);
        let p = q.pop(now).unwrap();
        assert_eq!(q.counts(), [1, 0, 0]);
        q.failed(&p.info.key, HashSet::from(["NodeResourcesFit"]), now);
        assert_eq!(q.counts(), [1, 0, 1]);
    }

    #[test]
    fn unschedulable_waits_for_an_event_then_backs_off() {
        let now = Instant::now();
        let mut q = q();
        q.add_or_update(pod("p", json!({}), json!({})), now);
        let p = q.pop(now).unwrap();
        assert_eq!(p.attempts, 1);
        q.failed("default/p", HashSet::from(["NodeResourcesFit"]), now);
        assert!(q.pop(now + Duration::from_secs(60)).is_none());
        // An assigned pod appearing does not help a resources failure.
        q.move_for(ClusterEvent::AssignedPodAdd, now);
        assert!(q.pop(now + Duration::from_secs(60)).is_none());
        q.move_for(ClusterEvent::NodeAddOrUpdate, now);
        assert!(q.pop(now).is_none(), "still backing off");
        assert_eq!(q.next_backoff(), Some(now + Duration::from_secs(1)));
        let p = q.pop(now + Duration::from_secs(1)).unwrap();
        assert_eq!(p.attempts, 2);
        q.failed("default/p", HashSet::new(), now);
        assert!(q.pop(now + Duration::from_millis(1999)).is_none());
        assert!(q.pop(now + Duration::from_secs(2)).is_some());
    }

    #[test]
    fn an_event_while_in_flight_means_backoff_not_waiting() {
        let now = Instant::now();
        let mut q = q();
        q.add_or_update(pod("p", json!({}), json!({})), now);
        q.pop(now).unwrap();
        q.move_for(ClusterEvent::NodeAddOrUpdate, now);
        q.failed("default/p", HashSet::from(["NodeResourcesFit"]), now);
        assert!(q.pop(now + Duration::from_secs(1)).is_some());
    }

    #[test]
    fn long_unschedulable_pods_come_back() {
        let now = Instant::now();
        let mut q = q();
        q.add_or_update(pod("p", json!({}), json!({})), now);
        q.pop(now).unwrap();
        q.failed("default/p", HashSet::from(["TaintToleration"]), now);
        assert!(q.pop(now + MAX_UNSCHEDULABLE_DURATION).is_some());
    }
}
