//! The writer task: the only code that writes the log of a SQL store.
//!
//! Requests queue on a channel; the task takes whatever is queued (up to [`MAX_BATCH`]) and
//! runs it in one database transaction — group commit: one lock, one fsync for many requests,
//! each request still getting its own revision and its own compare-and-swap evaluated against
//! the state left by the requests before it.

use std::time::{Duration, Instant};

use sqlx::{AnyConnection, Row as _};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::Instrument as _;

use super::hub::Hub;
use super::rows::{self, LogRow};
use super::{Dialect, META_COMPACT, META_REVISION, Shared};
use crate::error::{Error, Result};
use crate::types::{
    DeleteRequest, DeleteResponse, KeyValue, PutRequest, PutResponse, RangeRequest, TxnOp,
    TxnOpResponse, TxnRequest, TxnResponse,
};

/// Most requests committed in one database transaction.
const MAX_BATCH: usize = 256;
/// How long a write is retried while the database is unreachable.
pub(crate) const RETRY_FOR: Duration = Duration::from_secs(30);

/// A request for the writer.
#[derive(Debug)]
pub(crate) enum WriteRequest {
    Txn(TxnRequest),
    /// Deletes the keys attached to a lease, then the lease.
    RevokeLease(i64),
    /// Removes one window of compacted rows (SQLite: see `compact`). Runs alone.
    CompactStep,
    /// Checkpoints and truncates the SQLite WAL. Runs alone.
    Checkpoint,
}

impl WriteRequest {
    fn is_maintenance(&self) -> bool {
        matches!(self, WriteRequest::CompactStep | WriteRequest::Checkpoint)
    }
}

/// The writer's answer.
#[derive(Debug)]
pub(crate) enum WriteReply {
    Txn(TxnResponse),
    Revoked { revision: i64 },
    Compacted { more: bool },
    Checkpointed,
}

#[derive(Debug)]
pub(crate) struct WriteJob {
    pub(crate) request: WriteRequest,
    pub(crate) reply: oneshot::Sender<Result<WriteReply>>,
}

/// Runs until shutdown or until every sender is gone.
pub(crate) async fn run(
    shared: std::sync::Arc<Shared>,
    mut rx: mpsc::Receiver<WriteJob>,
    hub: Hub,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let first = tokio::select! {
            job = rx.recv() => match job {
                Some(job) => job,
                None => break,
            },
            _ = shutdown.changed() => break,
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let span = tracing::debug_span!(
            "write batch",
            backend = shared.dialect.name(),
            size = batch.len()
        );
        process(&shared, batch, &hub).instrument(span).await;
    }
    tracing::debug!("writer stopped");
}

/// Commits the writes of a batch together, then runs its maintenance requests alone.
async fn process(shared: &Shared, batch: Vec<WriteJob>, hub: &Hub) {
    let (maintenance, writes): (Vec<_>, Vec<_>) =
        batch.into_iter().partition(|j| j.request.is_maintenance());
    let (requests, replies): (Vec<_>, Vec<_>) =
        writes.into_iter().map(|j| (j.request, j.reply)).unzip();
    if !requests.is_empty() {
        let results = execute_batch(shared, &requests).await;
        hub.notify();
        for (reply, result) in replies.into_iter().zip(results) {
            // The requester may have given up; the write stands either way.
            let _ = reply.send(result);
        }
    }
    for job in maintenance {
        let result = match job.request {
            WriteRequest::CompactStep => super::compact::step(shared)
                .await
                .map(|more| WriteReply::Compacted { more }),
            _ => super::compact::sqlite_checkpoint(shared)
                .await
                .map(|()| WriteReply::Checkpointed),
        };
        let _ = job.reply.send(result);
    }
}

/// Runs a batch in one transaction, retrying transient failures; when the batch as a whole
/// fails for good, runs each request alone so that one bad request fails only itself.
async fn execute_batch(shared: &Shared, requests: &[WriteRequest]) -> Vec<Result<WriteReply>> {
    match execute_with_retry(shared, requests).await {
        Ok(results) => results,
        Err(err) if requests.len() == 1 => vec![Err(err)],
        Err(err) => {
            tracing::warn!(error = %err, "batched write failed; retrying each request alone");
            let mut results = Vec::with_capacity(requests.len());
            for request in requests {
                match execute_with_retry(shared, std::slice::from_ref(request)).await {
                    Ok(mut r) => results.push(
                        r.pop()
                            .unwrap_or(Err(Error::Internal("empty result".into()))),
                    ),
                    Err(err) => results.push(Err(err)),
                }
            }
            results
        }
    }
}

async fn execute_with_retry(
    shared: &Shared,
    requests: &[WriteRequest],
) -> Result<Vec<Result<WriteReply>>> {
    let started = Instant::now();
    let mut backoff = Duration::from_millis(20);
    loop {
        match execute(shared, requests).await {
            Ok(results) => return Ok(results),
            Err(err) if err.is_transient() && started.elapsed() < RETRY_FOR => {
                tracing::warn!(error = %err, retry_in = ?backoff, "write failed, retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
            Err(err) => return Err(err),
        }
    }
}

/// The first row a transaction wrote, to tell after a failed commit whether it happened.
struct Written {
    rev: i64,
    name: Vec<u8>,
}

/// One database transaction for the whole batch.
async fn execute(shared: &Shared, requests: &[WriteRequest]) -> Result<Vec<Result<WriteReply>>> {
    let err = shared.sql_err();
    let mut tx = shared.pool.begin().await.map_err(&err)?;
    // Serializes writers of every process: the next revision is ours until commit.
    shared
        .query("UPDATE rk3s_meta SET value = value WHERE name = ?")
        .bind(META_REVISION)
        .execute(&mut *tx)
        .await
        .map_err(&err)?;
    let start = rows::meta(&mut tx, shared, META_REVISION).await?;
    let mut head = start;
    let mut first: Option<Written> = None;
    let mut results = Vec::with_capacity(requests.len());
    for request in requests {
        let result = match request {
            WriteRequest::Txn(txn) => apply_txn(&mut tx, shared, txn, &mut head, &mut first)
                .await
                .map(WriteReply::Txn),
            WriteRequest::RevokeLease(id) => revoke(&mut tx, shared, *id, &mut head, &mut first)
                .await
                .map(|revision| WriteReply::Revoked { revision }),
            WriteRequest::CompactStep | WriteRequest::Checkpoint => {
                Err(Error::Internal("maintenance inside a write batch".into()))
            }
        };
        let result = match result {
            Ok(reply) => Ok(reply),
            // A database failure fails the whole batch (the transaction is unusable).
            Err(e @ Error::Sql { .. }) => return Err(e),
            Err(e) => Err(e),
        };
        results.push(result);
    }
    if head == start {
        tx.rollback().await.map_err(&err)?;
        return Ok(results);
    }
    shared
        .query("UPDATE rk3s_meta SET value = ? WHERE name = ?")
        .bind(head)
        .bind(META_REVISION)
        .execute(&mut *tx)
        .await
        .map_err(&err)?;
    if shared.dialect == Dialect::Postgres {
        shared
            .query("SELECT pg_notify('rk3s_log', ?)")
            .bind(head.to_string())
            .execute(&mut *tx)
            .await
            .map_err(&err)?;
    }
    match tx.commit().await {
        Ok(()) => Ok(results),
        Err(commit_err) => {
            let error = err(commit_err);
            match first {
                Some(written) if committed_anyway(shared, &written).await => {
                    tracing::warn!(error = %error, "commit reported an error but the write is in the log");
                    Ok(results)
                }
                _ => Err(error),
            }
        }
    }
}

async fn first_name(conn: &mut AnyConnection, shared: &Shared, rev: i64) -> Result<Vec<u8>> {
    let row = shared
        .query("SELECT name FROM rk3s_log WHERE rev = ? ORDER BY sub LIMIT 1")
        .bind(rev)
        .fetch_one(conn)
        .await
        .map_err(shared.sql_err())?;
    row.try_get(0).map_err(shared.sql_err())
}

/// After a failed commit (a lost connection, say), looks whether the transaction's first row
/// is in the log. Retried for as long as writes are, since the answer decides whether the
/// batch is retried: guessing wrong would write twice or lose an acknowledged write.
async fn committed_anyway(shared: &Shared, written: &Written) -> bool {
    let started = Instant::now();
    while started.elapsed() < RETRY_FOR {
        let lookup = async {
            let mut conn = shared.conn().await?;
            first_name(&mut conn, shared, written.rev).await
        };
        match lookup.await {
            Ok(name) => return name == written.name,
            Err(Error::Sql {
                source: sqlx::Error::RowNotFound,
                ..
            }) => return false,
            Err(e) => {
                tracing::warn!(error = %e, "cannot tell yet whether a failed commit happened");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    false
}

async fn lease_exists(conn: &mut AnyConnection, shared: &Shared, id: i64) -> Result<bool> {
    let row = shared
        .query("SELECT id FROM rk3s_lease WHERE id = ?")
        .bind(id)
        .fetch_optional(conn)
        .await
        .map_err(shared.sql_err())?;
    Ok(row.is_some())
}

/// Evaluates and applies one transaction inside the batch's database transaction. `head` is
/// the revision so far; it moves on by one when the transaction writes.
async fn apply_txn(
    conn: &mut AnyConnection,
    shared: &Shared,
    txn: &TxnRequest,
    head: &mut i64,
    first: &mut Option<Written>,
) -> Result<TxnResponse> {
    let mut succeeded = true;
    for compare in &txn.compare {
        let current = rows::latest(conn, shared, &compare.key)
            .await?
            .filter(|r| !r.deleted);
        let current = current.map(LogRow::into_kv);
        if !compare.holds(current.as_ref()) {
            succeeded = false;
            break;
        }
    }
    let ops = if succeeded {
        &txn.success
    } else {
        &txn.failure
    };

    // Everything that can refuse is checked before the first write.
    for op in ops {
        if let TxnOp::Put(put) = op {
            if put.lease != 0 && !put.ignore_lease && !lease_exists(conn, shared, put.lease).await?
            {
                return Err(Error::LeaseNotFound(put.lease));
            }
            if (put.ignore_value || put.ignore_lease)
                && rows::latest(conn, shared, &put.key)
                    .await?
                    .is_none_or(|r| r.deleted)
            {
                return Err(Error::InvalidRequest("key not found".into()));
            }
        }
        if let TxnOp::Range(range) = op {
            check_revision(conn, shared, range.revision, *head).await?;
        }
    }

    let rev = *head + 1;
    let mut sub = 0;
    let mut responses = Vec::with_capacity(ops.len());
    for op in ops {
        // Reads see this transaction's earlier writes.
        let visible = if sub > 0 { rev } else { *head };
        let response = match op {
            TxnOp::Range(range) => {
                let at = if range.revision > 0 {
                    range.revision
                } else {
                    visible
                };
                let mut resp = rows::range_at(conn, shared, range, at).await?;
                resp.revision = visible;
                TxnOpResponse::Range(resp)
            }
            TxnOp::Put(put) => {
                TxnOpResponse::Put(put_row(conn, shared, put, rev, &mut sub, first).await?)
            }
            TxnOp::Delete(delete) => TxnOpResponse::Delete(
                delete_rows(conn, shared, delete, rev, visible, &mut sub, first).await?,
            ),
        };
        responses.push(response);
    }
    if sub > 0 {
        *head = rev;
    }
    // Range responses carry the revision after the transaction, as etcd's header does.
    for r in &mut responses {
        if let TxnOpResponse::Range(range) = r {
            range.revision = *head;
        }
    }
    Ok(TxnResponse {
        revision: *head,
        succeeded,
        responses,
    })
}

/// A read at an explicit revision inside a transaction must be neither compacted nor future.
async fn check_revision(
    conn: &mut AnyConnection,
    shared: &Shared,
    revision: i64,
    head: i64,
) -> Result<()> {
    if revision <= 0 {
        return Ok(());
    }
    if revision > head {
        return Err(Error::FutureRevision {
            requested: revision,
            current: head,
        });
    }
    let compact = rows::meta(conn, shared, META_COMPACT).await?;
    if revision < compact {
        return Err(Error::Compacted {
            requested: revision,
            compact_revision: compact,
        });
    }
    Ok(())
}

/// Writes one log row, and remembers the batch's first one (see [`committed_anyway`]).
async fn insert(
    conn: &mut AnyConnection,
    shared: &Shared,
    row: &LogRow,
    first: &mut Option<Written>,
) -> Result<()> {
    let sql = format!(
        "INSERT INTO rk3s_log ({}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        rows::COLUMNS
    );
    shared
        .query(&sql)
        .bind(row.rev)
        .bind(row.sub)
        .bind(row.name.clone())
        .bind(row.create_rev)
        .bind(row.prev_rev)
        .bind(row.version)
        .bind(row.lease)
        .bind(i64::from(row.deleted))
        .bind(row.value.clone())
        .execute(conn)
        .await
        .map_err(shared.sql_err())?;
    first.get_or_insert_with(|| Written {
        rev: row.rev,
        name: row.name.clone(),
    });
    Ok(())
}

async fn put_row(
    conn: &mut AnyConnection,
    shared: &Shared,
    put: &PutRequest,
    rev: i64,
    sub: &mut i64,
    first: &mut Option<Written>,
) -> Result<PutResponse> {
    let prev = rows::latest(conn, shared, &put.key)
        .await?
        .filter(|r| !r.deleted);
    let value = match (&prev, put.ignore_value) {
        (Some(prev), true) => prev.value.clone(),
        _ => put.value.clone(),
    };
    let lease = match (&prev, put.ignore_lease) {
        (Some(prev), true) => prev.lease,
        _ => put.lease,
    };
    let row = LogRow {
        rev,
        sub: *sub,
        name: put.key.clone(),
        create_rev: prev.as_ref().map_or(rev, |p| p.create_rev),
        prev_rev: prev.as_ref().map_or(0, |p| p.rev),
        version: prev.as_ref().map_or(1, |p| p.version + 1),
        lease,
        deleted: false,
        value,
    };
    insert(conn, shared, &row, first).await?;
    *sub += 1;
    Ok(PutResponse {
        prev_kv: if put.prev_kv {
            prev.map(LogRow::into_kv)
        } else {
            None
        },
    })
}

async fn delete_rows(
    conn: &mut AnyConnection,
    shared: &Shared,
    delete: &DeleteRequest,
    rev: i64,
    visible: i64,
    sub: &mut i64,
    first: &mut Option<Written>,
) -> Result<DeleteResponse> {
    let current = rows::range_at(
        conn,
        shared,
        &RangeRequest {
            key: delete.key.clone(),
            range_end: delete.range_end.clone(),
            ..RangeRequest::default()
        },
        visible,
    )
    .await?;
    let deleted = current.kvs.len() as i64;
    for kv in &current.kvs {
        tombstone(conn, shared, kv, rev, sub, first).await?;
    }
    Ok(DeleteResponse {
        deleted,
        prev_kvs: if delete.prev_kv {
            current.kvs
        } else {
            Vec::new()
        },
    })
}

async fn tombstone(
    conn: &mut AnyConnection,
    shared: &Shared,
    kv: &KeyValue,
    rev: i64,
    sub: &mut i64,
    first: &mut Option<Written>,
) -> Result<()> {
    let row = LogRow {
        rev,
        sub: *sub,
        name: kv.key.clone(),
        create_rev: kv.create_revision,
        prev_rev: kv.mod_revision,
        version: 0,
        lease: 0,
        deleted: true,
        value: Vec::new(),
    };
    insert(conn, shared, &row, first).await?;
    *sub += 1;
    Ok(())
}

/// Deletes a lease's keys (one revision for all) and the lease.
async fn revoke(
    conn: &mut AnyConnection,
    shared: &Shared,
    id: i64,
    head: &mut i64,
    first: &mut Option<Written>,
) -> Result<i64> {
    if !lease_exists(conn, shared, id).await? {
        return Err(Error::LeaseNotFound(id));
    }
    let keys = super::lease::attached(conn, shared, id).await?;
    let rev = *head + 1;
    let mut sub = 0;
    for key in &keys {
        // The key may have been rewritten without the lease earlier in this batch.
        if let Some(row) = rows::latest(conn, shared, key)
            .await?
            .filter(|r| !r.deleted && r.lease == id)
        {
            tombstone(conn, shared, &row.into_kv(), rev, &mut sub, first).await?;
        }
    }
    if sub > 0 {
        *head = rev;
    }
    shared
        .query("DELETE FROM rk3s_lease WHERE id = ?")
        .bind(id)
        .execute(conn)
        .await
        .map_err(shared.sql_err())?;
    Ok(*head)
}
