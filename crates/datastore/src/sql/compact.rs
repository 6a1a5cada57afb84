//! Compaction of a SQL store: forgetting history below a revision, in bounded batches.
//!
//! `compact` (the revision below which history is gone) is declared at once; the rows are
//! removed afterwards, a window of `datastore-compact-batch` revisions per transaction, and
//! `compacted` records how far that has got. A row goes when a newer version of its key at or
//! below the compact revision supersedes it (found through that version's `prev_rev`), and a
//! deletion row goes once it is below the compact revision. So the newest version of every key
//! at the compact revision stays, and reads at or above it are exact.
//!
//! On SQLite the removal runs in the writer task (SQLite has one writer; a second one would
//! only wait on its lock), followed by a WAL checkpoint that truncates the WAL file.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::Row as _;
use tokio::sync::{mpsc, oneshot, watch};

use super::writer::{WriteJob, WriteReply, WriteRequest};
use super::{Dialect, META_COMPACT, META_COMPACTED, META_REVISION, Shared, rows};
use crate::error::{Error, Result};

/// Declares `revision` the compact revision. Returns the current revision.
pub(crate) async fn declare(shared: &Shared, revision: i64) -> Result<i64> {
    let mut conn = shared.conn().await?;
    let head = rows::meta(&mut conn, shared, META_REVISION).await?;
    if revision > head {
        return Err(Error::FutureRevision {
            requested: revision,
            current: head,
        });
    }
    let updated = shared
        .query("UPDATE rk3s_meta SET value = ? WHERE name = ? AND value < ?")
        .bind(revision)
        .bind(META_COMPACT)
        .bind(revision)
        .execute(&mut *conn)
        .await
        .map_err(shared.sql_err())?;
    if updated.rows_affected() == 0 {
        let compact = rows::meta(&mut conn, shared, META_COMPACT).await?;
        return Err(Error::Compacted {
            requested: revision,
            compact_revision: compact,
        });
    }
    shared.compact_wake.notify_one();
    tracing::info!(revision, "compaction declared");
    Ok(head)
}

/// Removes one window of compacted rows. Returns whether more remain.
pub(crate) async fn step(shared: &Shared) -> Result<bool> {
    let err = shared.sql_err();
    let mut tx = shared.pool.begin().await.map_err(&err)?;
    // One compactor at a time across servers; writers are not held up.
    shared
        .query("UPDATE rk3s_meta SET value = value WHERE name = ?")
        .bind(META_COMPACTED)
        .execute(&mut *tx)
        .await
        .map_err(&err)?;
    let done = rows::meta(&mut tx, shared, META_COMPACTED).await?;
    let target = rows::meta(&mut tx, shared, META_COMPACT).await?;
    if done >= target {
        tx.rollback().await.map_err(&err)?;
        return Ok(false);
    }
    let hi = (done + shared.config.datastore_compact_batch).min(target);
    let superseded = shared
        .query("SELECT name, prev_rev FROM rk3s_log WHERE rev > ? AND rev <= ? AND prev_rev > 0")
        .bind(done)
        .bind(hi)
        .fetch_all(&mut *tx)
        .await
        .map_err(&err)?;
    for row in &superseded {
        let name: Vec<u8> = row.try_get(0).map_err(&err)?;
        let rev: i64 = row.try_get(1).map_err(&err)?;
        shared
            .query("DELETE FROM rk3s_log WHERE name = ? AND rev = ?")
            .bind(name)
            .bind(rev)
            .execute(&mut *tx)
            .await
            .map_err(&err)?;
    }
    shared
        .query("DELETE FROM rk3s_log WHERE deleted = 1 AND rev >= ? AND rev < ?")
        .bind(done)
        .bind(hi)
        .execute(&mut *tx)
        .await
        .map_err(&err)?;
    shared
        .query("UPDATE rk3s_meta SET value = ? WHERE name = ?")
        .bind(hi)
        .bind(META_COMPACTED)
        .execute(&mut *tx)
        .await
        .map_err(&err)?;
    tx.commit().await.map_err(&err)?;
    tracing::debug!(from = done, to = hi, rows = superseded.len(), "compacted");
    Ok(hi < target)
}

/// SQLite housekeeping after compaction: checkpoint and truncate the WAL, and give free pages
/// back when more than a quarter of the file is free.
pub(crate) async fn sqlite_checkpoint(shared: &Shared) -> Result<()> {
    let err = shared.sql_err();
    let mut conn = shared.conn().await?;
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
        .execute(&mut *conn)
        .await
        .map_err(&err)?;
    let row = sqlx::query("SELECT (SELECT freelist_count FROM pragma_freelist_count()), (SELECT page_count FROM pragma_page_count())")
        .fetch_one(&mut *conn)
        .await
        .map_err(&err)?;
    let free: i64 = row.try_get(0).map_err(&err)?;
    let pages: i64 = row.try_get(1).map_err(&err)?;
    if pages > 0 && free * 4 > pages {
        sqlx::query("PRAGMA incremental_vacuum")
            .execute(&mut *conn)
            .await
            .map_err(&err)?;
        sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&mut *conn)
            .await
            .map_err(&err)?;
    }
    Ok(())
}

/// The compactor: declares automatic compactions every `datastore-compact-interval` (keeping
/// `datastore-compact-retention` revisions), and removes compacted rows whenever there are any.
pub(crate) async fn run(
    shared: Arc<Shared>,
    writes: mpsc::Sender<WriteJob>,
    mut shutdown: watch::Receiver<bool>,
) {
    let interval = shared.config.compact_interval();
    let mut last_auto = Instant::now();
    // Leftover work from before a restart is picked up at once.
    shared.compact_wake.notify_one();
    loop {
        let wait = interval.map_or(Duration::from_secs(3600), |i| {
            i.saturating_sub(last_auto.elapsed())
        });
        tokio::select! {
            _ = shared.compact_wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => break,
        }
        if interval.is_some_and(|i| last_auto.elapsed() >= i) {
            last_auto = Instant::now();
            if let Err(e) = auto_declare(&shared).await {
                tracing::warn!(error = %e, "automatic compaction failed");
            }
        }
        let mut stepped = false;
        loop {
            let more = match shared.dialect {
                Dialect::Sqlite => through_writer(&writes, WriteRequest::CompactStep).await,
                _ => step(&shared).await,
            };
            match more {
                Ok(more) => {
                    stepped = true;
                    if !more {
                        break;
                    }
                }
                // The store is closing.
                Err(Error::Closed) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "compaction step failed; will retry");
                    break;
                }
            }
            if *shutdown.borrow() {
                return;
            }
        }
        if stepped && shared.dialect == Dialect::Sqlite {
            match through_writer(&writes, WriteRequest::Checkpoint).await {
                Ok(_) => {}
                Err(Error::Closed) => return,
                Err(e) => tracing::warn!(error = %e, "WAL checkpoint failed"),
            }
        }
    }
}

async fn auto_declare(shared: &Shared) -> Result<()> {
    let mut conn = shared.conn().await?;
    let head = rows::meta(&mut conn, shared, META_REVISION).await?;
    let compact = rows::meta(&mut conn, shared, META_COMPACT).await?;
    drop(conn);
    let target = head - shared.config.datastore_compact_retention;
    if target > compact {
        match declare(shared, target).await {
            Ok(_) | Err(Error::Compacted { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

async fn through_writer(writes: &mpsc::Sender<WriteJob>, request: WriteRequest) -> Result<bool> {
    let (reply, rx) = oneshot::channel();
    writes
        .send(WriteJob { request, reply })
        .await
        .map_err(|_| Error::Closed)?;
    match rx.await.map_err(|_| Error::Closed)?? {
        WriteReply::Compacted { more } => Ok(more),
        WriteReply::Checkpointed => Ok(false),
        other => Err(Error::Internal(format!(
            "writer answered maintenance with {other:?}"
        ))),
    }
}
