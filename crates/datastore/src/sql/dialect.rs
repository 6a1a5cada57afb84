//! What differs between SQLite, Postgres and MySQL: connection setup, column types and
//! placeholders. Every statement is written once with `?` placeholders.

use std::borrow::Cow;

/// The three SQL databases rk3s stores its log in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    Sqlite,
    Postgres,
    Mysql,
}

/// The version of the schema this build writes. Bump it with a migration step in
/// [`Dialect::migrations`].
pub(crate) const SCHEMA_VERSION: i64 = 1;

impl Dialect {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Dialect::Sqlite => "sqlite",
            Dialect::Postgres => "postgres",
            Dialect::Mysql => "mysql",
        }
    }

    /// Rewrites `?` placeholders into `$1, $2, ...` for Postgres.
    pub(crate) fn sql(self, sql: &str) -> Cow<'_, str> {
        if self != Dialect::Postgres {
            return Cow::Borrowed(sql);
        }
        let mut out = String::with_capacity(sql.len() + 8);
        let mut n = 0;
        for c in sql.chars() {
            if c == '?' {
                n += 1;
                out.push('$');
                out.push_str(&n.to_string());
            } else {
                out.push(c);
            }
        }
        Cow::Owned(out)
    }

    /// Statements run on every new connection.
    pub(crate) fn session_setup(self) -> &'static [&'static str] {
        match self {
            // WAL for concurrent readers; FULL sync so that an acknowledged write survives power
            // loss, not only a crash; a bounded WAL file.
            Dialect::Sqlite => &[
                "PRAGMA journal_mode = WAL",
                "PRAGMA synchronous = FULL",
                "PRAGMA busy_timeout = 30000",
                "PRAGMA journal_size_limit = 16777216",
            ],
            Dialect::Postgres => &["SET TIME ZONE 'UTC'"],
            // Each statement sees the latest committed data, as on Postgres.
            Dialect::Mysql => &["SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED"],
        }
    }

    /// The statements that create schema version 1 from nothing. Idempotent.
    ///
    /// The log is clustered by key (`PRIMARY KEY (name, rev)`; SQLite `WITHOUT ROWID` and InnoDB
    /// store rows in primary-key order), so a list reads one contiguous range; the unique
    /// `(rev, sub)` index serves the watch hub, which reads by revision.
    pub(crate) fn create_schema(self) -> Vec<&'static str> {
        match self {
            Dialect::Sqlite => vec![
                // Must precede the first table to take effect.
                "PRAGMA auto_vacuum = INCREMENTAL",
                "CREATE TABLE IF NOT EXISTS rk3s_meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
                "CREATE TABLE IF NOT EXISTS rk3s_log (
                    rev INTEGER NOT NULL,
                    sub INTEGER NOT NULL,
                    name BLOB NOT NULL,
                    create_rev INTEGER NOT NULL,
                    prev_rev INTEGER NOT NULL,
                    version INTEGER NOT NULL,
                    lease INTEGER NOT NULL,
                    deleted INTEGER NOT NULL,
                    value BLOB NOT NULL,
                    PRIMARY KEY (name, rev)
                ) WITHOUT ROWID",
                "CREATE UNIQUE INDEX IF NOT EXISTS rk3s_log_rev ON rk3s_log (rev, sub)",
                "CREATE INDEX IF NOT EXISTS rk3s_log_lease ON rk3s_log (lease) WHERE lease <> 0",
                "CREATE TABLE IF NOT EXISTS rk3s_lease (
                    id INTEGER PRIMARY KEY,
                    ttl INTEGER NOT NULL,
                    expires_ms INTEGER NOT NULL
                )",
            ],
            Dialect::Postgres => vec![
                "CREATE TABLE IF NOT EXISTS rk3s_meta (name TEXT PRIMARY KEY, value BIGINT NOT NULL)",
                "CREATE TABLE IF NOT EXISTS rk3s_log (
                    rev BIGINT NOT NULL,
                    sub BIGINT NOT NULL,
                    name BYTEA NOT NULL,
                    create_rev BIGINT NOT NULL,
                    prev_rev BIGINT NOT NULL,
                    version BIGINT NOT NULL,
                    lease BIGINT NOT NULL,
                    deleted BIGINT NOT NULL,
                    value BYTEA NOT NULL,
                    PRIMARY KEY (name, rev)
                )",
                "CREATE UNIQUE INDEX IF NOT EXISTS rk3s_log_rev ON rk3s_log (rev, sub)",
                "CREATE INDEX IF NOT EXISTS rk3s_log_lease ON rk3s_log (lease) WHERE lease <> 0",
                "CREATE TABLE IF NOT EXISTS rk3s_lease (
                    id BIGINT PRIMARY KEY,
                    ttl BIGINT NOT NULL,
                    expires_ms BIGINT NOT NULL
                )",
            ],
            // Keys are limited to 1024 bytes here (the index must fit InnoDB's 3072 bytes);
            // Kubernetes keys are far shorter.
            Dialect::Mysql => vec![
                "CREATE TABLE IF NOT EXISTS rk3s_meta (
                    name VARCHAR(64) NOT NULL PRIMARY KEY,
                    value BIGINT NOT NULL
                ) ENGINE = InnoDB",
                "CREATE TABLE IF NOT EXISTS rk3s_log (
                    rev BIGINT NOT NULL,
                    sub BIGINT NOT NULL,
                    name VARBINARY(1024) NOT NULL,
                    create_rev BIGINT NOT NULL,
                    prev_rev BIGINT NOT NULL,
                    version BIGINT NOT NULL,
                    lease BIGINT NOT NULL,
                    deleted BIGINT NOT NULL,
                    value LONGBLOB NOT NULL,
                    PRIMARY KEY (name, rev),
                    UNIQUE INDEX rk3s_log_rev (rev, sub),
                    INDEX rk3s_log_lease (lease)
                ) ENGINE = InnoDB",
                "CREATE TABLE IF NOT EXISTS rk3s_lease (
                    id BIGINT NOT NULL PRIMARY KEY,
                    ttl BIGINT NOT NULL,
                    expires_ms BIGINT NOT NULL
                ) ENGINE = InnoDB",
            ],
        }
    }

    /// Inserts a meta row unless it exists.
    pub(crate) fn insert_meta_if_absent(self) -> &'static str {
        match self {
            Dialect::Sqlite => "INSERT OR IGNORE INTO rk3s_meta (name, value) VALUES (?, ?)",
            Dialect::Postgres => {
                "INSERT INTO rk3s_meta (name, value) VALUES (?, ?) ON CONFLICT (name) DO NOTHING"
            }
            Dialect::Mysql => "INSERT IGNORE INTO rk3s_meta (name, value) VALUES (?, ?)",
        }
    }

    /// Bytes the store takes on disk, as one `BIGINT` column.
    pub(crate) fn size_query(self) -> &'static str {
        match self {
            Dialect::Sqlite => {
                "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()"
            }
            Dialect::Postgres => {
                "SELECT (pg_total_relation_size('rk3s_log') + pg_total_relation_size('rk3s_lease') \
                 + pg_total_relation_size('rk3s_meta'))::BIGINT"
            }
            Dialect::Mysql => {
                "SELECT CAST(COALESCE(SUM(data_length + index_length), 0) AS SIGNED) \
                 FROM information_schema.tables \
                 WHERE table_schema = DATABASE() AND table_name LIKE 'rk3s\\_%'"
            }
        }
    }

    /// The server's version, as one text column.
    pub(crate) fn version_query(self) -> &'static str {
        match self {
            Dialect::Sqlite => "SELECT 'SQLite ' || sqlite_version()",
            Dialect::Postgres => "SELECT current_setting('server_version')",
            Dialect::Mysql => "SELECT VERSION()",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_placeholders_are_numbered() {
        assert_eq!(
            Dialect::Postgres.sql("SELECT a FROM t WHERE b = ? AND c > ?"),
            "SELECT a FROM t WHERE b = $1 AND c > $2"
        );
        assert_eq!(Dialect::Mysql.sql("x = ?"), "x = ?");
    }
}
