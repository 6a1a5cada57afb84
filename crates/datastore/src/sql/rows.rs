//! Reading the log: rows, ranges at a revision, meta values.

use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row as _};

use super::{META_COMPACT, META_REVISION, Shared};
use crate::error::{Error, Result};
use crate::types::{Event, EventKind, KeyValue, RangeEnd, RangeRequest, RangeResponse};

/// The columns of a log row, in [`LogRow::decode`] order.
pub(crate) const COLUMNS: &str =
    "rev, sub, name, create_rev, prev_rev, version, lease, deleted, value";

/// One row of `rk3s_log`: one version of one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LogRow {
    pub(crate) rev: i64,
    pub(crate) sub: i64,
    pub(crate) name: Vec<u8>,
    pub(crate) create_rev: i64,
    /// Revision of the key's previous live version, 0 if the key did not exist before.
    pub(crate) prev_rev: i64,
    pub(crate) version: i64,
    pub(crate) lease: i64,
    pub(crate) deleted: bool,
    pub(crate) value: Vec<u8>,
}

impl LogRow {
    /// Decodes the [`COLUMNS`] starting at column `at`.
    pub(crate) fn decode(row: &AnyRow, at: usize) -> Result<Self, sqlx::Error> {
        Ok(LogRow {
            rev: row.try_get(at)?,
            sub: row.try_get(at + 1)?,
            name: row.try_get(at + 2)?,
            create_rev: row.try_get(at + 3)?,
            prev_rev: row.try_get(at + 4)?,
            version: row.try_get(at + 5)?,
            lease: row.try_get(at + 6)?,
            deleted: row.try_get::<i64, _>(at + 7)? != 0,
            value: row.try_get(at + 8)?,
        })
    }

    /// The key-value this row makes current (for a live row).
    pub(crate) fn into_kv(self) -> KeyValue {
        KeyValue {
            key: self.name,
            create_revision: self.create_rev,
            mod_revision: self.rev,
            version: self.version,
            value: self.value,
            lease: self.lease,
        }
    }

    /// The watch event of this row, with the previous version when known.
    pub(crate) fn into_event(self, prev: Option<KeyValue>) -> Event {
        if self.deleted {
            Event {
                kind: EventKind::Delete,
                kv: KeyValue {
                    key: self.name,
                    mod_revision: self.rev,
                    ..KeyValue::default()
                },
                prev_kv: prev,
            }
        } else {
            Event {
                kind: EventKind::Put,
                kv: self.into_kv(),
                prev_kv: prev,
            }
        }
    }
}

/// The SQL condition selecting a range of `name`s, and its bind values.
pub(crate) fn range_condition(column: &str, key: &[u8], end: &RangeEnd) -> (String, Vec<Vec<u8>>) {
    match end {
        RangeEnd::Single => (format!("{column} = ?"), vec![key.to_vec()]),
        RangeEnd::Unbounded => (format!("{column} >= ?"), vec![key.to_vec()]),
        RangeEnd::Before(end) => (
            format!("{column} >= ? AND {column} < ?"),
            vec![key.to_vec(), end.clone()],
        ),
    }
}

/// A meta value.
pub(crate) async fn meta(conn: &mut AnyConnection, shared: &Shared, name: &str) -> Result<i64> {
    shared
        .query("SELECT value FROM rk3s_meta WHERE name = ?")
        .bind(name.to_string())
        .fetch_one(conn)
        .await
        .map(|row| row.try_get::<i64, _>(0))
        .and_then(|v| v)
        .map_err(shared.sql_err())
}

/// The current version of a key, as this connection sees it (inside a write transaction, that
/// includes the transaction's own writes).
pub(crate) async fn latest(
    conn: &mut AnyConnection,
    shared: &Shared,
    key: &[u8],
) -> Result<Option<LogRow>> {
    let sql = format!("SELECT {COLUMNS} FROM rk3s_log WHERE name = ? ORDER BY rev DESC LIMIT 1");
    let row = shared
        .query(&sql)
        .bind(key.to_vec())
        .fetch_optional(conn)
        .await
        .map_err(shared.sql_err())?;
    row.map(|r| LogRow::decode(&r, 0))
        .transpose()
        .map_err(shared.sql_err())
}

/// Reads a range. `revision` 0 is the current revision; inside a write transaction pass
/// `in_txn` so that the transaction's own writes are visible.
pub(crate) async fn range(
    conn: &mut AnyConnection,
    shared: &Shared,
    req: &RangeRequest,
) -> Result<RangeResponse> {
    let head = meta(conn, shared, META_REVISION).await?;
    let at = match req.revision {
        r if r <= 0 => head,
        r if r > head => {
            return Err(Error::FutureRevision {
                requested: r,
                current: head,
            });
        }
        r => r,
    };
    let mut resp = range_at(conn, shared, req, at).await?;
    resp.revision = head;
    if req.revision > 0 {
        // A compaction declared before this read finished may have removed rows it needed.
        let compact = meta(conn, shared, META_COMPACT).await?;
        if req.revision < compact {
            return Err(Error::Compacted {
                requested: req.revision,
                compact_revision: compact,
            });
        }
    }
    Ok(resp)
}

/// Reads a range as of revision `at` (no checks).
pub(crate) async fn range_at(
    conn: &mut AnyConnection,
    shared: &Shared,
    req: &RangeRequest,
    at: i64,
) -> Result<RangeResponse> {
    let err = shared.sql_err();
    let (cond, binds) = range_condition("l.name", &req.key, &req.range_end);
    // The newest version of each key at `at`, when it is not a deletion. Rows come in primary
    // key order (name, rev), and the newer-version probe is a seek next to the row, so a
    // limited list stops early.
    let visible = format!(
        "FROM rk3s_log l WHERE {cond} AND l.rev <= ? AND l.deleted = 0 AND NOT EXISTS \
         (SELECT 1 FROM rk3s_log n WHERE n.name = l.name AND n.rev > l.rev AND n.rev <= ?)"
    );
    let count_sql = format!("SELECT COUNT(*) {visible}");
    if req.count_only {
        let count = count_rows(conn, shared, &count_sql, &binds, at).await?;
        return Ok(RangeResponse {
            revision: at,
            kvs: Vec::new(),
            more: false,
            count,
        });
    }
    let limit = if req.limit > 0 {
        req.limit.saturating_add(1)
    } else {
        i64::MAX
    };
    let columns = COLUMNS
        .split(", ")
        .map(|c| format!("l.{c}"))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!("SELECT {columns} {visible} ORDER BY l.name LIMIT ?");
    let mut q = shared.query(&sql);
    for b in &binds {
        q = q.bind(b.clone());
    }
    let rows = q
        .bind(at)
        .bind(at)
        .bind(limit)
        .fetch_all(&mut *conn)
        .await
        .map_err(&err)?;
    let mut kvs = rows
        .iter()
        .map(|r| LogRow::decode(r, 0).map(LogRow::into_kv))
        .collect::<Result<Vec<_>, _>>()
        .map_err(&err)?;
    let more = req.limit > 0 && kvs.len() as i64 > req.limit;
    let count = if more {
        kvs.truncate(req.limit as usize);
        count_rows(conn, shared, &count_sql, &binds, at).await?
    } else {
        kvs.len() as i64
    };
    if req.keys_only {
        for kv in &mut kvs {
            kv.value = Vec::new();
        }
    }
    Ok(RangeResponse {
        revision: at,
        kvs,
        more,
        count,
    })
}

async fn count_rows(
    conn: &mut AnyConnection,
    shared: &Shared,
    sql: &str,
    binds: &[Vec<u8>],
    at: i64,
) -> Result<i64> {
    let mut q = shared.query(sql);
    for b in binds {
        q = q.bind(b.clone());
    }
    let row = q
        .bind(at)
        .bind(at)
        .fetch_one(conn)
        .await
        .map_err(shared.sql_err())?;
    row.try_get::<i64, _>(0).map_err(shared.sql_err())
}

/// The log rows after revision `after` up to `through`, optionally restricted to a range, each
/// with the key's previous version, in revision order.
pub(crate) async fn events(
    conn: &mut AnyConnection,
    shared: &Shared,
    after: i64,
    through: i64,
    range: Option<(&[u8], &RangeEnd)>,
) -> Result<Vec<(i64, Event)>> {
    let err = shared.sql_err();
    let columns = COLUMNS
        .split(", ")
        .map(|c| format!("l.{c}"))
        .collect::<Vec<_>>()
        .join(", ");
    let (cond, binds) = match range {
        Some((key, end)) => {
            let (cond, binds) = range_condition("l.name", key, end);
            (format!(" AND {cond}"), binds)
        }
        None => (String::new(), Vec::new()),
    };
    let sql = format!(
        "SELECT {columns}, p.create_rev, p.version, p.lease, p.value \
         FROM rk3s_log l LEFT JOIN rk3s_log p ON p.name = l.name AND p.rev = l.prev_rev \
         WHERE l.rev > ? AND l.rev <= ?{cond} ORDER BY l.rev, l.sub"
    );
    let mut q = shared.query(&sql).bind(after).bind(through);
    for b in binds {
        q = q.bind(b);
    }
    let rows = q.fetch_all(conn).await.map_err(&err)?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        let row = LogRow::decode(r, 0).map_err(&err)?;
        let prev = match r.try_get::<Option<i64>, _>(9).map_err(&err)? {
            Some(create_rev) if row.prev_rev > 0 => Some(KeyValue {
                key: row.name.clone(),
                create_revision: create_rev,
                mod_revision: row.prev_rev,
                version: r.try_get(10).map_err(&err)?,
                lease: r.try_get(11).map_err(&err)?,
                value: r.try_get(12).map_err(&err)?,
            }),
            _ => None,
        };
        out.push((row.rev, row.into_event(prev)));
    }
    Ok(out)
}
