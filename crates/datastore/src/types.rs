//! The data model of the store: key-values, ranges, transactions, watch events and leases.
//!
//! These mirror the etcd v3 model (revisions, create/mod revisions, versions, leases, compare
//! and swap transactions) without depending on its protobuf types, so that the SQL backends, the
//! etcd backend and the etcd v3 endpoint all speak one language.

/// A key with its value as of some revision.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeyValue {
    pub key: Vec<u8>,
    /// Revision of the write that created the key (since its last deletion).
    pub create_revision: i64,
    /// Revision of the last write to the key.
    pub mod_revision: i64,
    /// Number of writes since the key was created; a deletion resets it to 0.
    pub version: i64,
    pub value: Vec<u8>,
    /// Lease the key is attached to, or 0.
    pub lease: i64,
}

/// Reads the keys in `[key, range_end)` as of a revision.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RangeRequest {
    pub key: Vec<u8>,
    /// End of the range, exclusive. See [`RangeEnd`].
    pub range_end: RangeEnd,
    /// Revision to read at; 0 means the current revision.
    pub revision: i64,
    /// At most this many keys; 0 means no limit.
    pub limit: i64,
    /// Return keys with empty values.
    pub keys_only: bool,
    /// Return only the count.
    pub count_only: bool,
}

/// Where a range ends.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum RangeEnd {
    /// Just the one key.
    #[default]
    Single,
    /// Every key from `key` on.
    Unbounded,
    /// Keys up to this one, exclusive.
    Before(Vec<u8>),
}

impl RangeEnd {
    /// The etcd wire form: empty for one key, `\0` for "all keys from key on", else the end key.
    pub fn from_etcd(range_end: &[u8]) -> Self {
        match range_end {
            [] => RangeEnd::Single,
            [0] => RangeEnd::Unbounded,
            end => RangeEnd::Before(end.to_vec()),
        }
    }

    /// The inverse of [`RangeEnd::from_etcd`].
    pub fn to_etcd(&self) -> Vec<u8> {
        match self {
            RangeEnd::Single => Vec::new(),
            RangeEnd::Unbounded => vec![0],
            RangeEnd::Before(end) => end.clone(),
        }
    }

    /// Whether `key` is in the range that starts at `start` and ends here.
    pub fn contains(&self, start: &[u8], key: &[u8]) -> bool {
        match self {
            RangeEnd::Single => key == start,
            RangeEnd::Unbounded => key >= start,
            RangeEnd::Before(end) => key >= start && key < end.as_slice(),
        }
    }

    /// The range end that selects every key starting with `prefix`.
    pub fn prefix(prefix: &[u8]) -> Self {
        match prefix_end(prefix) {
            Some(end) => RangeEnd::Before(end),
            None => RangeEnd::Unbounded,
        }
    }
}

/// The smallest key greater than every key that starts with `prefix`, or `None` when there is
/// none (the prefix is empty or all `0xff`).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// The answer to a [`RangeRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RangeResponse {
    /// The store's current revision when the read was served (also for a read at an older
    /// revision, as etcd's response header reports it).
    pub revision: i64,
    pub kvs: Vec<KeyValue>,
    /// Whether more keys matched than `limit` allowed.
    pub more: bool,
    /// How many keys matched in all, regardless of `limit`.
    pub count: i64,
}

/// A write of one key.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PutRequest {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub lease: i64,
    /// Return the previous value in the response.
    pub prev_kv: bool,
    /// Keep the current value (error if the key does not exist).
    pub ignore_value: bool,
    /// Keep the current lease (error if the key does not exist).
    pub ignore_lease: bool,
}

/// The answer to a [`PutRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PutResponse {
    pub prev_kv: Option<KeyValue>,
}

/// Deletes the keys in a range.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeleteRequest {
    pub key: Vec<u8>,
    pub range_end: RangeEnd,
    pub prev_kv: bool,
}

/// The answer to a [`DeleteRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeleteResponse {
    pub deleted: i64,
    pub prev_kvs: Vec<KeyValue>,
}

/// What a compare looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompareTarget {
    Version(i64),
    CreateRevision(i64),
    ModRevision(i64),
    Value(Vec<u8>),
    Lease(i64),
}

/// How a compare compares: `actual <op> expected`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    Equal,
    NotEqual,
    Greater,
    Less,
}

/// One guard of a transaction, on one key. A missing key has version, create and mod revision
/// and lease 0 and no value (a value compare on it is false), as in etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compare {
    pub key: Vec<u8>,
    pub op: CompareOp,
    pub target: CompareTarget,
}

impl Compare {
    pub fn new(key: impl Into<Vec<u8>>, op: CompareOp, target: CompareTarget) -> Self {
        Compare {
            key: key.into(),
            op,
            target,
        }
    }

    /// Evaluates the compare against the key's current state.
    pub fn holds(&self, current: Option<&KeyValue>) -> bool {
        use std::cmp::Ordering;
        let ordering = match (&self.target, current) {
            (CompareTarget::Value(_), None) => return false,
            (CompareTarget::Value(expected), Some(kv)) => kv.value.as_slice().cmp(expected),
            (CompareTarget::Version(e), kv) => kv.map_or(0, |kv| kv.version).cmp(e),
            (CompareTarget::CreateRevision(e), kv) => kv.map_or(0, |kv| kv.create_revision).cmp(e),
            (CompareTarget::ModRevision(e), kv) => kv.map_or(0, |kv| kv.mod_revision).cmp(e),
            (CompareTarget::Lease(e), kv) => kv.map_or(0, |kv| kv.lease).cmp(e),
        };
        match self.op {
            CompareOp::Equal => ordering == Ordering::Equal,
            CompareOp::NotEqual => ordering != Ordering::Equal,
            CompareOp::Greater => ordering == Ordering::Greater,
            CompareOp::Less => ordering == Ordering::Less,
        }
    }
}

/// One step of a transaction branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOp {
    Range(RangeRequest),
    Put(PutRequest),
    Delete(DeleteRequest),
}

/// The result of one [`TxnOp`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOpResponse {
    Range(RangeResponse),
    Put(PutResponse),
    Delete(DeleteResponse),
}

/// An atomic compare-and-swap: if every compare holds, run `success`, else `failure`. All writes
/// of a transaction share one new revision; a transaction that writes nothing leaves the
/// revision unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TxnRequest {
    pub compare: Vec<Compare>,
    pub success: Vec<TxnOp>,
    pub failure: Vec<TxnOp>,
}

impl TxnRequest {
    /// Refuses what etcd refuses before running anything: an empty key, and a branch that
    /// writes a key twice (two puts, or a put inside a range the branch deletes).
    pub fn validate(&self) -> Result<(), crate::Error> {
        let refuse = |msg: &str| Err(crate::Error::InvalidRequest(msg.to_string()));
        if self.compare.iter().any(|c| c.key.is_empty()) {
            return refuse("key is not provided");
        }
        for branch in [&self.success, &self.failure] {
            let mut puts = std::collections::HashSet::new();
            let mut deletes: Vec<(&[u8], &RangeEnd)> = Vec::new();
            for op in branch {
                let key = match op {
                    TxnOp::Put(p) => &p.key,
                    TxnOp::Delete(d) => &d.key,
                    TxnOp::Range(r) => &r.key,
                };
                if key.is_empty() {
                    return refuse("key is not provided");
                }
                match op {
                    TxnOp::Put(p) if !puts.insert(p.key.as_slice()) => {
                        return refuse("duplicate key given in txn request");
                    }
                    TxnOp::Delete(d) => deletes.push((&d.key, &d.range_end)),
                    _ => {}
                }
            }
            if puts
                .iter()
                .any(|key| deletes.iter().any(|(start, end)| end.contains(start, key)))
            {
                return refuse("duplicate key given in txn request");
            }
        }
        Ok(())
    }
}

/// The answer to a [`TxnRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TxnResponse {
    /// The store's revision after the transaction.
    pub revision: i64,
    pub succeeded: bool,
    pub responses: Vec<TxnOpResponse>,
}

/// What happened to a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change in the log. For a delete, `kv` holds the key and the deletion's revision as
/// `mod_revision`, everything else zero, as etcd reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    pub kv: KeyValue,
    /// The key's value before this change, when the watch asked for it and it exists.
    pub prev_kv: Option<KeyValue>,
}

/// Starts a watch on `[key, range_end)`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WatchRequest {
    pub key: Vec<u8>,
    pub range_end: RangeEnd,
    /// First revision to deliver; 0 means only changes after the current revision.
    pub start_revision: i64,
    pub prev_kv: bool,
}

/// What a watch delivers, in revision order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchResponse {
    /// Changes, all of one or more consecutive revisions, in order. `revision` is the store's
    /// revision the watcher has been brought up to (at least the last event's).
    Events { revision: i64, events: Vec<Event> },
    /// Every change up to `revision` has been delivered (an answer to a progress request).
    Progress { revision: i64 },
    /// The history the watch needs is gone: it cannot go on. Start again from a fresh read.
    Compacted { compact_revision: i64 },
}

/// A lease as granted or kept alive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub id: i64,
    /// Seconds the lease lives without a keep-alive.
    pub ttl: i64,
}

/// What [`crate::Backend::lease_time_to_live`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseStatus {
    pub id: i64,
    /// Seconds left; -1 when the lease has expired or does not exist.
    pub ttl: i64,
    pub granted_ttl: i64,
    pub keys: Vec<Vec<u8>>,
}

/// Health and size of a backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// `sqlite`, `postgres`, `mysql` or `etcd`.
    pub backend: &'static str,
    /// Version of the server behind the backend, where it tells one.
    pub version: String,
    pub revision: i64,
    pub compact_revision: i64,
    /// Bytes the backend's files or tables take, where it can tell.
    pub db_size: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_last_byte() {
        assert_eq!(
            prefix_end(b"/registry/pods/"),
            Some(b"/registry/pods0".to_vec())
        );
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
        assert_eq!(prefix_end(b""), None);
    }

    #[test]
    fn range_end_round_trips_etcd_form() {
        for end in [
            RangeEnd::Single,
            RangeEnd::Unbounded,
            RangeEnd::Before(b"b".to_vec()),
        ] {
            assert_eq!(RangeEnd::from_etcd(&end.to_etcd()), end);
        }
    }

    #[test]
    fn compare_on_missing_key_sees_zeroes() {
        let c = Compare::new("k", CompareOp::Equal, CompareTarget::ModRevision(0));
        assert!(c.holds(None));
        let c = Compare::new("k", CompareOp::Equal, CompareTarget::Value(Vec::new()));
        assert!(!c.holds(None), "a value compare on a missing key is false");
    }

    #[test]
    fn compare_orders_actual_against_expected() {
        let kv = KeyValue {
            key: b"k".to_vec(),
            mod_revision: 5,
            version: 2,
            ..KeyValue::default()
        };
        let holds = |op, target| Compare::new("k", op, target).holds(Some(&kv));
        assert!(holds(CompareOp::Greater, CompareTarget::ModRevision(4)));
        assert!(!holds(CompareOp::Greater, CompareTarget::ModRevision(5)));
        assert!(holds(CompareOp::Less, CompareTarget::Version(3)));
        assert!(holds(CompareOp::NotEqual, CompareTarget::Version(1)));
        assert!(holds(CompareOp::Equal, CompareTarget::Lease(0)));
    }

    fn put(key: &str) -> TxnOp {
        TxnOp::Put(PutRequest {
            key: key.into(),
            ..PutRequest::default()
        })
    }

    #[test]
    fn duplicate_puts_are_refused() {
        let req = TxnRequest {
            success: vec![put("a"), put("a")],
            ..TxnRequest::default()
        };
        assert!(
            matches!(req.validate(), Err(crate::Error::InvalidRequest(m)) if m.contains("duplicate"))
        );
    }

    #[test]
    fn put_inside_deleted_range_is_refused() {
        let del = TxnOp::Delete(DeleteRequest {
            key: b"a".to_vec(),
            range_end: RangeEnd::Before(b"c".to_vec()),
            prev_kv: false,
        });
        let req = TxnRequest {
            failure: vec![del, put("b")],
            ..TxnRequest::default()
        };
        assert!(req.validate().is_err());
    }

    #[test]
    fn same_key_in_both_branches_is_fine() {
        let req = TxnRequest {
            compare: vec![Compare::new(
                "a",
                CompareOp::Equal,
                CompareTarget::Version(0),
            )],
            success: vec![put("a")],
            failure: vec![put("a")],
        };
        assert!(req.validate().is_ok());
    }

    #[test]
    fn empty_key_is_refused() {
        let req = TxnRequest {
            success: vec![put("")],
            ..TxnRequest::default()
        };
        assert!(
            matches!(req.validate(), Err(crate::Error::InvalidRequest(m)) if m.contains("not provided"))
        );
    }
}
