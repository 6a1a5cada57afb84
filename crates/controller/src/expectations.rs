//! Upstream's `ControllerExpectations` / `UIDTrackingControllerExpectations` for controllers
//! that decide from a watch cache: after a burst of creations or deletions a controller
//! records what it expects to see, the cache's pod events lower the record, and the
//! controller does not create or delete again until the record is satisfied (everything
//! observed) or older than [`EXPECTATIONS_TIMEOUT`] — so a lagging cache never makes it act
//! twice for the same shortfall or surplus.
//!
//! Records are keyed by the controller object's uid (a recreated object with the same name
//! starts afresh). Deletions are tracked by pod key (`namespace/name`), so an observation of
//! the same deletion twice (a delete after a `deletionTimestamp` update) counts once.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Upstream's `ExpectationsTimeout`: a record this old is considered satisfied, so that a
/// lost event delays a controller by at most this long.
pub(crate) const EXPECTATIONS_TIMEOUT: Duration = Duration::from_secs(5 * 60);

#[derive(Debug)]
struct Record {
    creations: i64,
    deletions: HashSet<String>,
    set_at: Instant,
}

/// The expectations of one controller (one per kind).
#[derive(Debug, Default)]
pub(crate) struct Expectations {
    records: Mutex<HashMap<String, Record>>,
}

impl Expectations {
    fn records(&self) -> std::sync::MutexGuard<'_, HashMap<String, Record>> {
        self.records.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the controller `uid` may act on the cache: no record, everything observed, or
    /// the record expired.
    pub(crate) fn satisfied(&self, uid: &str) -> bool {
        self.satisfied_at(uid, Instant::now())
    }

    fn satisfied_at(&self, uid: &str, now: Instant) -> bool {
        let mut records = self.records();
        let Some(r) = records.get(uid) else {
            return true;
        };
        if r.creations <= 0 && r.deletions.is_empty() {
            records.remove(uid);
            return true;
        }
        if now.saturating_duration_since(r.set_at) > EXPECTATIONS_TIMEOUT {
            tracing::info!(
                controller = uid,
                creations = r.creations,
                deletions = r.deletions.len(),
                "expectations expired"
            );
            records.remove(uid);
            return true;
        }
        false
    }

    /// `uid` is about to create `n` pods (replaces any record, as upstream).
    pub(crate) fn expect_creations(&self, uid: &str, n: usize) {
        self.set(uid, i64::try_from(n).unwrap_or(i64::MAX), HashSet::new());
    }

    /// `uid` is about to delete these pods (`namespace/name`).
    pub(crate) fn expect_deletions(&self, uid: &str, pods: impl IntoIterator<Item = String>) {
        self.set(uid, 0, pods.into_iter().collect());
    }

    fn set(&self, uid: &str, creations: i64, deletions: HashSet<String>) {
        let now = Instant::now();
        let mut records = self.records();
        // Records of controllers that went away are dropped once they expire.
        records.retain(|_, r| now.saturating_duration_since(r.set_at) <= EXPECTATIONS_TIMEOUT);
        records.insert(
            uid.to_string(),
            Record {
                creations,
                deletions,
                set_at: now,
            },
        );
    }

    /// A pod of `uid` was seen created (or its creation failed: none will be seen).
    pub(crate) fn creation_observed(&self, uid: &str) {
        if let Some(r) = self.records().get_mut(uid) {
            r.creations -= 1;
        }
    }

    /// The pod `pod_key` of `uid` was seen deleted or terminating (or its deletion failed).
    pub(crate) fn deletion_observed(&self, uid: &str, pod_key: &str) {
        if let Some(r) = self.records().get_mut(uid) {
            r.deletions.remove(pod_key);
        }
    }

    /// What `uid` still waits for: (creations, deletions).
    #[cfg(test)]
    fn pending(&self, uid: &str) -> Option<(i64, usize)> {
        self.records()
            .get(uid)
            .map(|r| (r.creations, r.deletions.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creations_are_satisfied_by_observations() {
        let e = Expectations::default();
        assert!(e.satisfied("rs"));
        e.expect_creations("rs", 2);
        assert!(!e.satisfied("rs"));
        e.creation_observed("rs");
        assert!(!e.satisfied("rs"));
        assert_eq!(e.pending("rs"), Some((1, 0)));
        e.creation_observed("rs");
        assert!(e.satisfied("rs"));
        // A satisfied record is gone: late observations do not go negative.
        e.creation_observed("rs");
        assert_eq!(e.pending("rs"), None);
        // Other controllers are independent.
        e.expect_creations("other", 1);
        assert!(e.satisfied("rs"));
        assert!(!e.satisfied("other"));
    }

    #[test]
    fn deletions_count_each_pod_once() {
        let e = Expectations::default();
        e.expect_deletions("rs", ["ns/a".to_string(), "ns/b".to_string()]);
        e.deletion_observed("rs", "ns/a");
        e.deletion_observed("rs", "ns/a");
        e.deletion_observed("rs", "ns/c");
        assert!(!e.satisfied("rs"));
        e.deletion_observed("rs", "ns/b");
        assert!(e.satisfied("rs"));
    }

    #[test]
    fn records_expire() {
        let e = Expectations::default();
        e.expect_creations("rs", 5);
        let now = Instant::now();
        assert!(!e.satisfied_at("rs", now));
        assert!(e.satisfied_at("rs", now + EXPECTATIONS_TIMEOUT + Duration::from_secs(1)));
        assert_eq!(e.pending("rs"), None);
    }
}
