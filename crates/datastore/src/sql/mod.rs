//! The SQL backends: SQLite, Postgres and MySQL/MariaDB through sqlx.
//!
//! The store is a log: table `rk3s_log` holds one row per version of a key, written by the
//! transaction whose revision is `rev` (a transaction that writes several keys writes several
//! rows with the same `rev` and increasing `sub`). A deletion is a row with `deleted = 1`. The
//! current value of a key is its row with the highest `rev`, unless that row is a deletion.
//!
//! Invariants:
//! - Every writing transaction first locks the `revision` row of `rk3s_meta` and takes the next
//!   revision from it, so commit order is revision order, there are no gaps, and a reader that
//!   sees revision N sees everything below it. A transaction that writes nothing, or rolls
//!   back, takes no revision.
//! - One writer task per process ([`writer`]) owns all writes, so writers of one process never
//!   contend on database locks; concurrent requests are committed together (group commit),
//!   each with its own revision.
//! - One hub task per process ([`hub`]) reads new rows in revision order and fans them out to
//!   watchers. Local commits wake it at once; writes of other processes wake it through
//!   Postgres LISTEN/NOTIFY or a short poll (SQLite, MySQL).
//! - Compaction ([`compact`]) removes rows superseded at or below the compact revision, in
//!   bounded batches; the latest version of every key at the compact revision is kept, so a
//!   read at any revision at or above it is exact.

mod compact;
mod dialect;
mod hub;
mod lease;
mod rows;
mod writer;

use std::sync::Arc;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyConnection, AnyPool, Connection as _, Executor as _};
use tokio::sync::{mpsc, oneshot, watch as tokio_watch};

use crate::Config;
use crate::backend::Backend;
use crate::endpoint::Endpoint;
use crate::error::{Error, Result};
use crate::types::{
    Lease, LeaseStatus, RangeRequest, RangeResponse, Status, TxnRequest, TxnResponse, WatchRequest,
};
use crate::watch::Watch;

pub(crate) use dialect::Dialect;
use hub::Hub;
use writer::{WriteJob, WriteRequest};

/// Characters escaped in a SQLite file path put in a URL.
const PATH_CHARS: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'/')
    .remove(b'.')
    .remove(b'-')
    .remove(b'_');

/// Meta rows.
const META_REVISION: &str = "revision";
const META_COMPACT: &str = "compact";
const META_COMPACTED: &str = "compacted";
const META_SCHEMA: &str = "schema";

/// A SQL-backed store. Cheap to share; the background tasks stop on [`Backend::close`].
#[derive(Debug)]
pub(crate) struct SqlBackend {
    shared: Arc<Shared>,
    writes: mpsc::Sender<WriteJob>,
    hub: Hub,
    shutdown: tokio_watch::Sender<bool>,
    tasks: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// What every task of a SQL store needs.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) dialect: Dialect,
    pub(crate) pool: AnyPool,
    /// The endpoint with its password hidden, for errors and logs.
    pub(crate) endpoint: String,
    /// The endpoint as given, password included.
    pub(crate) secret_url: SecretUrl,
    pub(crate) config: Config,
    /// Wakes the compactor when a compaction is declared.
    pub(crate) compact_wake: tokio::sync::Notify,
}

/// A URL that may hold a password: never printed.
pub(crate) struct SecretUrl(String);

impl SecretUrl {
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretUrl(***)")
    }
}

impl Shared {
    /// A query with `?` placeholders, in this dialect.
    pub(crate) fn query(
        &self,
        sql: &str,
    ) -> sqlx::query::Query<'static, sqlx::Any, sqlx::any::AnyArguments> {
        sqlx::query(sqlx::AssertSqlSafe(self.dialect.sql(sql).into_owned()))
    }

    pub(crate) fn sql_err(&self) -> impl Fn(sqlx::Error) -> Error + '_ {
        move |source| Error::Sql {
            backend: self.dialect.name(),
            source,
        }
    }

    pub(crate) async fn conn(&self) -> Result<sqlx::pool::PoolConnection<sqlx::Any>> {
        self.pool.acquire().await.map_err(self.sql_err())
    }
}

impl SqlBackend {
    /// Connects (creating the database if it does not exist), migrates the schema and starts
    /// the writer, hub, compactor and lease tasks.
    pub(crate) async fn connect(endpoint: &Endpoint, config: &Config) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let (dialect, url) = match endpoint {
            Endpoint::Sqlite { path } => {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(|e| Error::Connect {
                        endpoint: endpoint.redacted(),
                        source: format!("cannot create {}: {e}", dir.display()).into(),
                    })?;
                }
                let path = path.to_string_lossy();
                let encoded = percent_encoding::utf8_percent_encode(&path, PATH_CHARS);
                (Dialect::Sqlite, format!("sqlite://{encoded}?mode=rwc"))
            }
            Endpoint::Postgres { url } => (Dialect::Postgres, url.clone()),
            Endpoint::Mysql { url } => (Dialect::Mysql, url.clone()),
            Endpoint::Etcd { .. } => {
                return Err(Error::Internal(
                    "etcd endpoint given to the SQL backend".into(),
                ));
            }
        };
        let redacted = endpoint.redacted();
        create_database_if_missing(dialect, &url, &redacted).await?;
        let pool = open_pool(dialect, &url, &redacted).await?;
        let shared = Arc::new(Shared {
            dialect,
            pool,
            endpoint: redacted,
            secret_url: SecretUrl(url),
            config: config.clone(),
            compact_wake: tokio::sync::Notify::new(),
        });
        migrate(&shared).await?;

        let (shutdown, shutdown_rx) = tokio_watch::channel(false);
        let (hub, hub_task) = Hub::start(shared.clone(), shutdown_rx.clone()).await?;
        let (writes, writes_rx) = mpsc::channel(1024);
        let mut tasks = vec![hub_task];
        tasks.push(tokio::spawn(writer::run(
            shared.clone(),
            writes_rx,
            hub.clone(),
            shutdown_rx.clone(),
        )));
        tasks.push(tokio::spawn(compact::run(
            shared.clone(),
            writes.clone(),
            shutdown_rx.clone(),
        )));
        tasks.push(tokio::spawn(lease::run_expiry(
            shared.clone(),
            writes.clone(),
            shutdown_rx,
        )));
        tracing::info!(backend = dialect.name(), "datastore ready");
        Ok(SqlBackend {
            shared,
            writes,
            hub,
            shutdown,
            tasks: std::sync::Mutex::new(tasks),
        })
    }

    async fn submit(&self, request: WriteRequest) -> Result<writer::WriteReply> {
        let (reply, rx) = oneshot::channel();
        self.writes
            .send(WriteJob { request, reply })
            .await
            .map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)?
    }
}

/// Postgres and MySQL: connect to the server's maintenance database and create ours when the
/// first connection says it does not exist (K3s does the same).
async fn create_database_if_missing(dialect: Dialect, url: &str, redacted: &str) -> Result<()> {
    if dialect == Dialect::Sqlite {
        return Ok(());
    }
    let options: AnyConnectOptions =
        url.parse()
            .map_err(|e: sqlx::Error| Error::InvalidEndpoint {
                endpoint: redacted.to_string(),
                reason: e.to_string(),
            })?;
    let err = match AnyConnection::connect_with(&options).await {
        Ok(conn) => {
            let _ = conn.close().await;
            return Ok(());
        }
        Err(err) => err,
    };
    let missing = match &err {
        sqlx::Error::Database(db) => {
            // Postgres: invalid_catalog_name; MySQL: ER_BAD_DB_ERROR.
            db.code().as_deref() == Some("3D000")
                || db.code().as_deref() == Some("42000")
                    && db.message().contains("Unknown database")
        }
        _ => false,
    };
    if !missing {
        return Err(Error::Connect {
            endpoint: redacted.to_string(),
            source: Box::new(err),
        });
    }
    let mut parsed = url::Url::parse(url).map_err(|e| Error::InvalidEndpoint {
        endpoint: redacted.to_string(),
        reason: e.to_string(),
    })?;
    let db = parsed.path().trim_start_matches('/').to_string();
    if db.is_empty()
        || !db
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(Error::InvalidEndpoint {
            endpoint: redacted.to_string(),
            reason: format!(
                "database {db:?} does not exist and its name is not one rk3s creates (letters, digits, _ and - only)"
            ),
        });
    }
    let (admin_db, create) = match dialect {
        Dialect::Postgres => ("postgres", format!("CREATE DATABASE \"{db}\"")),
        _ => ("", format!("CREATE DATABASE IF NOT EXISTS `{db}`")),
    };
    parsed.set_path(admin_db);
    let admin: AnyConnectOptions =
        parsed
            .as_str()
            .parse()
            .map_err(|e: sqlx::Error| Error::Connect {
                endpoint: redacted.to_string(),
                source: Box::new(e),
            })?;
    let mut conn = AnyConnection::connect_with(&admin)
        .await
        .map_err(|e| Error::Connect {
            endpoint: redacted.to_string(),
            source: Box::new(e),
        })?;
    match conn.execute(sqlx::AssertSqlSafe(create)).await {
        Ok(_) => tracing::info!(database = %db, "created database"),
        // Another server created it first.
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => {}
        Err(e) => {
            return Err(Error::Connect {
                endpoint: redacted.to_string(),
                source: Box::new(e),
            });
        }
    }
    let _ = conn.close().await;
    Ok(())
}

async fn open_pool(dialect: Dialect, url: &str, redacted: &str) -> Result<AnyPool> {
    let setup = dialect.session_setup();
    AnyPoolOptions::new()
        // SQLite has one writer anyway; readers share the rest.
        .max_connections(if dialect == Dialect::Sqlite { 8 } else { 16 })
        .acquire_timeout(Duration::from_secs(30))
        .after_connect(move |conn, _| {
            Box::pin(async move {
                for stmt in setup {
                    conn.execute(*stmt).await?;
                }
                Ok(())
            })
        })
        .connect(url)
        .await
        .map_err(|e| Error::Connect {
            endpoint: redacted.to_string(),
            source: Box::new(e),
        })
}

/// Creates the schema, or checks that an existing one is one this build understands.
async fn migrate(shared: &Shared) -> Result<()> {
    let err = shared.sql_err();
    let mut conn = shared.conn().await?;
    for stmt in shared.dialect.create_schema() {
        conn.execute(stmt).await.map_err(&err)?;
    }
    for (name, value) in [
        (META_REVISION, 1),
        (META_COMPACT, 0),
        (META_COMPACTED, 0),
        (META_SCHEMA, dialect::SCHEMA_VERSION),
    ] {
        shared
            .query(shared.dialect.insert_meta_if_absent())
            .bind(name)
            .bind(value)
            .execute(&mut *conn)
            .await
            .map_err(&err)?;
    }
    let schema = rows::meta(&mut conn, shared, META_SCHEMA).await?;
    if schema > dialect::SCHEMA_VERSION {
        return Err(Error::Connect {
            endpoint: shared.endpoint.clone(),
            source: format!(
                "the database has schema version {schema}, newer than this rk3s understands ({})",
                dialect::SCHEMA_VERSION
            )
            .into(),
        });
    }
    Ok(())
}

#[async_trait::async_trait]
impl Backend for SqlBackend {
    fn name(&self) -> &'static str {
        self.shared.dialect.name()
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = self.name(), rev = req.revision))]
    async fn range(&self, req: RangeRequest) -> Result<RangeResponse> {
        // Reads are idempotent: retried through a lost connection like writes are.
        let started = std::time::Instant::now();
        let mut backoff = Duration::from_millis(20);
        loop {
            let attempt = async {
                let mut conn = self.shared.conn().await?;
                rows::range(&mut conn, &self.shared, &req).await
            };
            match attempt.await {
                Err(e) if e.is_transient() && started.elapsed() < writer::RETRY_FOR => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "read failed, retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
                result => return result,
            }
        }
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = self.name()))]
    async fn txn(&self, req: TxnRequest) -> Result<TxnResponse> {
        req.validate()?;
        match self.submit(WriteRequest::Txn(req)).await? {
            writer::WriteReply::Txn(resp) => Ok(resp),
            other => Err(Error::Internal(format!(
                "writer answered a txn with {other:?}"
            ))),
        }
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = self.name(), revision))]
    async fn compact(&self, revision: i64) -> Result<i64> {
        compact::declare(&self.shared, revision).await
    }

    async fn watch(&self, req: WatchRequest) -> Result<Watch> {
        self.hub.watch(req).await
    }

    async fn lease_grant(&self, id: i64, ttl: i64) -> Result<Lease> {
        lease::grant(&self.shared, id, ttl).await
    }

    async fn lease_revoke(&self, id: i64) -> Result<i64> {
        match self.submit(WriteRequest::RevokeLease(id)).await? {
            writer::WriteReply::Revoked { revision } => Ok(revision),
            other => Err(Error::Internal(format!(
                "writer answered a revoke with {other:?}"
            ))),
        }
    }

    async fn lease_keep_alive(&self, id: i64) -> Result<Lease> {
        lease::keep_alive(&self.shared, id).await
    }

    async fn lease_time_to_live(&self, id: i64, keys: bool) -> Result<LeaseStatus> {
        lease::time_to_live(&self.shared, id, keys).await
    }

    async fn leases(&self) -> Result<Vec<i64>> {
        lease::list(&self.shared).await
    }

    async fn status(&self) -> Result<Status> {
        let err = self.shared.sql_err();
        let mut conn = self.shared.conn().await?;
        let revision = rows::meta(&mut conn, &self.shared, META_REVISION).await?;
        let compact_revision = rows::meta(&mut conn, &self.shared, META_COMPACT).await?;
        let db_size: i64 = sqlx::query_scalar(self.shared.dialect.size_query())
            .fetch_one(&mut *conn)
            .await
            .map_err(&err)?;
        let version: String = sqlx::query_scalar(self.shared.dialect.version_query())
            .fetch_one(&mut *conn)
            .await
            .map_err(&err)?;
        Ok(Status {
            backend: self.name(),
            version,
            revision,
            compact_revision,
            db_size,
        })
    }

    async fn close(&self) {
        let _ = self.shutdown.send(true);
        let tasks: Vec<_> = match self.tasks.lock() {
            Ok(mut tasks) => tasks.drain(..).collect(),
            Err(poisoned) => poisoned.into_inner().drain(..).collect(),
        };
        for mut task in tasks {
            // Background tasks finish what they are doing (a write batch, say) and stop.
            if tokio::time::timeout(Duration::from_secs(5), &mut task)
                .await
                .is_err()
            {
                task.abort();
                let _ = task.await;
            }
        }
        self.shared.pool.close().await;
    }
}
