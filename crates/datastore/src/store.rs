//! [`Store`]: the handle the rest of rk3s uses, with the key-value operations of a Kubernetes
//! storage layer (get, list, create, update and delete guarded by mod revision) built on a
//! [`Backend`]'s transactions.

use std::sync::Arc;

use crate::backend::Backend;
use crate::error::Result;
use crate::types::{
    Compare, CompareOp, CompareTarget, DeleteRequest, KeyValue, PutRequest, RangeEnd, RangeRequest,
    RangeResponse, Status, TxnOp, TxnOpResponse, TxnRequest, WatchRequest,
};
use crate::watch::Watch;

/// A cheap, clonable handle on a backend.
#[derive(Debug, Clone)]
pub struct Store {
    backend: Arc<dyn Backend>,
}

/// Options of [`Store::list`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListOptions {
    /// Revision to read at; 0 reads the current one.
    pub revision: i64,
    /// At most this many keys; 0 means all.
    pub limit: i64,
    /// Start after this key (a continue token), instead of at the prefix.
    pub continue_after: Option<Vec<u8>>,
    pub keys_only: bool,
    pub count_only: bool,
}

/// The outcome of a guarded write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The write happened at this revision.
    Written { revision: i64 },
    /// The guard failed; this is the key as it is now (`None` if absent).
    Conflict { current: Option<KeyValue> },
}

impl Store {
    pub fn new(backend: Arc<dyn Backend>) -> Self {
        Store { backend }
    }

    /// The backend behind this handle.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// The store's current revision.
    pub async fn current_revision(&self) -> Result<i64> {
        let resp = self
            .backend
            .range(RangeRequest {
                key: vec![0],
                count_only: true,
                ..RangeRequest::default()
            })
            .await?;
        Ok(resp.revision)
    }

    /// One key at a revision (0: current). Returns the revision read at and the key.
    pub async fn get(&self, key: &[u8], revision: i64) -> Result<(i64, Option<KeyValue>)> {
        let resp = self
            .backend
            .range(RangeRequest {
                key: key.to_vec(),
                revision,
                ..RangeRequest::default()
            })
            .await?;
        Ok((resp.revision, resp.kvs.into_iter().next()))
    }

    /// Keys starting with `prefix`, in key order.
    pub async fn list(&self, prefix: &[u8], opts: ListOptions) -> Result<RangeResponse> {
        let start = match opts.continue_after {
            // The smallest key after the continue key.
            Some(mut after) => {
                after.push(0);
                after
            }
            None => prefix.to_vec(),
        };
        self.backend
            .range(RangeRequest {
                key: start,
                range_end: RangeEnd::prefix(prefix),
                revision: opts.revision,
                limit: opts.limit,
                keys_only: opts.keys_only,
                count_only: opts.count_only,
            })
            .await
    }

    /// Creates `key` if it does not exist.
    pub async fn create(&self, key: &[u8], value: Vec<u8>, lease: i64) -> Result<WriteOutcome> {
        self.guarded_put(key, value, lease, 0).await
    }

    /// Replaces `key` if its mod revision is still `expected_mod_revision`.
    pub async fn update(
        &self,
        key: &[u8],
        value: Vec<u8>,
        expected_mod_revision: i64,
        lease: i64,
    ) -> Result<WriteOutcome> {
        if expected_mod_revision <= 0 {
            return Err(crate::Error::InvalidRequest(
                "update needs the mod revision of the key it replaces".into(),
            ));
        }
        self.guarded_put(key, value, lease, expected_mod_revision)
            .await
    }

    /// Deletes `key` if its mod revision is `expected_mod_revision`, or whatever it is when
    /// `None`. Deleting a missing key is a conflict with `current: None`.
    pub async fn delete(
        &self,
        key: &[u8],
        expected_mod_revision: Option<i64>,
    ) -> Result<WriteOutcome> {
        let compare = match expected_mod_revision {
            Some(rev) => Compare::new(key, CompareOp::Equal, CompareTarget::ModRevision(rev)),
            None => Compare::new(key, CompareOp::Greater, CompareTarget::ModRevision(0)),
        };
        let resp = self
            .backend
            .txn(TxnRequest {
                compare: vec![compare],
                success: vec![TxnOp::Delete(DeleteRequest {
                    key: key.to_vec(),
                    ..DeleteRequest::default()
                })],
                failure: vec![get_op(key)],
            })
            .await?;
        outcome(resp)
    }

    /// Watches keys starting with `prefix` from `start_revision` (0: from now on).
    pub async fn watch_prefix(
        &self,
        prefix: &[u8],
        start_revision: i64,
        prev_kv: bool,
    ) -> Result<Watch> {
        self.backend
            .watch(WatchRequest {
                key: prefix.to_vec(),
                range_end: RangeEnd::prefix(prefix),
                start_revision,
                prev_kv,
            })
            .await
    }

    /// Compacts the history below `revision`.
    pub async fn compact(&self, revision: i64) -> Result<i64> {
        self.backend.compact(revision).await
    }

    pub async fn status(&self) -> Result<Status> {
        self.backend.status().await
    }

    pub async fn close(&self) {
        self.backend.close().await
    }

    async fn guarded_put(
        &self,
        key: &[u8],
        value: Vec<u8>,
        lease: i64,
        expected_mod_revision: i64,
    ) -> Result<WriteOutcome> {
        let resp = self
            .backend
            .txn(TxnRequest {
                compare: vec![Compare::new(
                    key,
                    CompareOp::Equal,
                    CompareTarget::ModRevision(expected_mod_revision),
                )],
                success: vec![TxnOp::Put(PutRequest {
                    key: key.to_vec(),
                    value,
                    lease,
                    ..PutRequest::default()
                })],
                failure: vec![get_op(key)],
            })
            .await?;
        outcome(resp)
    }
}

fn get_op(key: &[u8]) -> TxnOp {
    TxnOp::Range(RangeRequest {
        key: key.to_vec(),
        ..RangeRequest::default()
    })
}

fn outcome(resp: crate::types::TxnResponse) -> Result<WriteOutcome> {
    if resp.succeeded {
        return Ok(WriteOutcome::Written {
            revision: resp.revision,
        });
    }
    match resp.responses.into_iter().next() {
        Some(TxnOpResponse::Range(range)) => Ok(WriteOutcome::Conflict {
            current: range.kvs.into_iter().next(),
        }),
        other => Err(crate::Error::Internal(format!(
            "failed guarded write answered with {other:?} instead of the key"
        ))),
    }
}
