//! Leases of a SQL store: rows in `rk3s_lease` with an expiry time, and a task that revokes
//! expired leases (deleting their keys through the writer, like any other write).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::{AnyConnection, Row as _};
use tokio::sync::{mpsc, oneshot, watch};

use super::Shared;
use super::writer::{WriteJob, WriteRequest};
use crate::error::{Error, Result};
use crate::types::{Lease, LeaseStatus};

/// The shortest TTL granted, in seconds; shorter requests get this (etcd does the same with
/// its default election timeout).
pub(crate) const MIN_TTL: i64 = 2;
/// The longest TTL accepted, in seconds (etcd's limit).
pub(crate) const MAX_TTL: i64 = 9_000_000_000;
/// How often expired leases are looked for.
const EXPIRY_CHECK: Duration = Duration::from_millis(500);

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

pub(crate) async fn grant(shared: &Shared, id: i64, ttl: i64) -> Result<Lease> {
    if ttl > MAX_TTL {
        return Err(Error::InvalidRequest("lease TTL too large".into()));
    }
    if id < 0 {
        return Err(Error::InvalidRequest("lease ID must be positive".into()));
    }
    let ttl = ttl.max(MIN_TTL);
    let id = if id == 0 {
        rand::random::<i64>().abs().max(1)
    } else {
        id
    };
    let mut conn = shared.conn().await?;
    let exists = shared
        .query("SELECT id FROM rk3s_lease WHERE id = ?")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await
        .map_err(shared.sql_err())?;
    if exists.is_some() {
        return Err(Error::LeaseExists(id));
    }
    shared
        .query("INSERT INTO rk3s_lease (id, ttl, expires_ms) VALUES (?, ?, ?)")
        .bind(id)
        .bind(ttl)
        .bind(now_ms() + ttl * 1000)
        .execute(&mut *conn)
        .await
        .map_err(|e| match &e {
            // Granted concurrently by someone else.
            sqlx::Error::Database(db) if db.is_unique_violation() => Error::LeaseExists(id),
            _ => Error::Sql {
                backend: shared.dialect.name(),
                source: e,
            },
        })?;
    Ok(Lease { id, ttl })
}

pub(crate) async fn keep_alive(shared: &Shared, id: i64) -> Result<Lease> {
    let mut conn = shared.conn().await?;
    let ttl = live_ttl(&mut conn, shared, id)
        .await?
        .ok_or(Error::LeaseNotFound(id))?;
    let updated = shared
        .query("UPDATE rk3s_lease SET expires_ms = ? WHERE id = ?")
        .bind(now_ms() + ttl * 1000)
        .bind(id)
        .execute(&mut *conn)
        .await
        .map_err(shared.sql_err())?;
    if updated.rows_affected() == 0 {
        return Err(Error::LeaseNotFound(id));
    }
    Ok(Lease { id, ttl })
}

/// The granted TTL of a lease that has not expired.
async fn live_ttl(conn: &mut AnyConnection, shared: &Shared, id: i64) -> Result<Option<i64>> {
    let row = shared
        .query("SELECT ttl FROM rk3s_lease WHERE id = ? AND expires_ms > ?")
        .bind(id)
        .bind(now_ms())
        .fetch_optional(conn)
        .await
        .map_err(shared.sql_err())?;
    row.map(|r| r.try_get::<i64, _>(0))
        .transpose()
        .map_err(shared.sql_err())
}

pub(crate) async fn time_to_live(shared: &Shared, id: i64, keys: bool) -> Result<LeaseStatus> {
    let mut conn = shared.conn().await?;
    let row = shared
        .query("SELECT ttl, expires_ms FROM rk3s_lease WHERE id = ?")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await
        .map_err(shared.sql_err())?;
    let Some(row) = row else {
        return Ok(LeaseStatus {
            id,
            ttl: -1,
            granted_ttl: 0,
            keys: Vec::new(),
        });
    };
    let granted_ttl: i64 = row.try_get(0).map_err(shared.sql_err())?;
    let expires_ms: i64 = row.try_get(1).map_err(shared.sql_err())?;
    let left_ms = expires_ms - now_ms();
    if left_ms <= 0 {
        return Ok(LeaseStatus {
            id,
            ttl: -1,
            granted_ttl: 0,
            keys: Vec::new(),
        });
    }
    let keys = if keys {
        attached(&mut conn, shared, id).await?
    } else {
        Vec::new()
    };
    // Whole seconds left, rounded down as etcd reports them.
    Ok(LeaseStatus {
        id,
        ttl: left_ms / 1000,
        granted_ttl,
        keys,
    })
}

pub(crate) async fn list(shared: &Shared) -> Result<Vec<i64>> {
    let mut conn = shared.conn().await?;
    let rows = shared
        .query("SELECT id FROM rk3s_lease WHERE expires_ms > ? ORDER BY id")
        .bind(now_ms())
        .fetch_all(&mut *conn)
        .await
        .map_err(shared.sql_err())?;
    rows.iter()
        .map(|r| r.try_get::<i64, _>(0))
        .collect::<Result<_, _>>()
        .map_err(shared.sql_err())
}

/// The keys whose current version is attached to the lease, in key order.
pub(crate) async fn attached(
    conn: &mut AnyConnection,
    shared: &Shared,
    id: i64,
) -> Result<Vec<Vec<u8>>> {
    let rows = shared
        .query(
            "SELECT l.name FROM rk3s_log l WHERE l.lease = ? AND l.deleted = 0 \
             AND l.rev = (SELECT MAX(n.rev) FROM rk3s_log n WHERE n.name = l.name) ORDER BY l.name",
        )
        .bind(id)
        .fetch_all(conn)
        .await
        .map_err(shared.sql_err())?;
    rows.iter()
        .map(|r| r.try_get::<Vec<u8>, _>(0))
        .collect::<Result<_, _>>()
        .map_err(shared.sql_err())
}

/// Revokes expired leases until shutdown. With several servers on one database each one
/// does this; a lease revoked by another is simply gone.
pub(crate) async fn run_expiry(
    shared: std::sync::Arc<Shared>,
    writes: mpsc::Sender<WriteJob>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(EXPIRY_CHECK) => {}
            _ = shutdown.changed() => break,
        }
        let expired = async {
            let mut conn = shared.conn().await?;
            let rows = shared
                .query("SELECT id FROM rk3s_lease WHERE expires_ms <= ?")
                .bind(now_ms())
                .fetch_all(&mut *conn)
                .await
                .map_err(shared.sql_err())?;
            rows.iter()
                .map(|r| r.try_get::<i64, _>(0))
                .collect::<Result<Vec<_>, _>>()
                .map_err(shared.sql_err())
        };
        let expired = match expired.await {
            Ok(ids) => ids,
            Err(e) => {
                tracing::warn!(error = %e, "cannot look for expired leases");
                continue;
            }
        };
        for id in expired {
            let (reply, rx) = oneshot::channel();
            if writes
                .send(WriteJob {
                    request: WriteRequest::RevokeLease(id),
                    reply,
                })
                .await
                .is_err()
            {
                return;
            }
            match rx.await {
                Ok(Ok(_)) => tracing::debug!(lease = id, "lease expired"),
                Ok(Err(Error::LeaseNotFound(_))) => {}
                Ok(Err(e)) => tracing::warn!(lease = id, error = %e, "cannot revoke expired lease"),
                Err(_) => return,
            }
        }
    }
}
