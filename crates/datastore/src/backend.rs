//! The one trait every backend implements.

use crate::error::Result;
use crate::types::{
    Lease, LeaseStatus, RangeRequest, RangeResponse, Status, TxnRequest, TxnResponse, WatchRequest,
};
use crate::watch::Watch;

/// A revisioned key-value store with the etcd v3 semantics.
///
/// Invariants every implementation keeps:
/// - each transaction that writes gets the next revision, and revisions are visible to readers
///   and watchers in order, with no gaps;
/// - a watch delivers every change in its range from its start revision, once, in order, or
///   ends with [`crate::WatchResponse::Compacted`];
/// - an acknowledged write is durable.
#[async_trait::async_trait]
pub trait Backend: Send + Sync + std::fmt::Debug + 'static {
    /// `sqlite`, `postgres`, `mysql` or `etcd`.
    fn name(&self) -> &'static str;

    /// Reads a range of keys at a revision.
    async fn range(&self, req: RangeRequest) -> Result<RangeResponse>;

    /// Runs an atomic compare-and-swap transaction.
    async fn txn(&self, req: TxnRequest) -> Result<TxnResponse>;

    /// Forgets the history older than `revision`: reads and watches below it fail with
    /// [`crate::Error::Compacted`]. The latest value of every key is kept. Returns the current
    /// revision.
    async fn compact(&self, revision: i64) -> Result<i64>;

    /// Watches a range of keys from a revision.
    async fn watch(&self, req: WatchRequest) -> Result<Watch>;

    /// Grants a lease; `id` 0 lets the store choose one.
    async fn lease_grant(&self, id: i64, ttl: i64) -> Result<Lease>;

    /// Revokes a lease, deleting the keys attached to it. Returns the current revision.
    async fn lease_revoke(&self, id: i64) -> Result<i64>;

    /// Renews a lease for its full TTL.
    async fn lease_keep_alive(&self, id: i64) -> Result<Lease>;

    /// Time left on a lease, with its keys when `keys` is set.
    async fn lease_time_to_live(&self, id: i64, keys: bool) -> Result<LeaseStatus>;

    /// Every live lease.
    async fn leases(&self) -> Result<Vec<i64>>;

    /// Revision, compaction and size.
    async fn status(&self) -> Result<Status>;

    /// Stops background work and closes connections. Idempotent.
    async fn close(&self);
}
