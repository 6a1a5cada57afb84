//! Helpers shared by the datastore's integration tests: the backends to run against (each test
//! gets a fresh SQLite file, Postgres or MariaDB database, or etcd process), connecting to them,
//! and reading watches with a timeout that fails the test with a message saying what it waited
//! for.

// Each test crate (conformance, crash, bloat) uses a different subset of these helpers.
#![allow(dead_code)]

use std::sync::Mutex;
use std::time::Duration;

use rk3s_datastore::{
    Config, Event, KeyValue, Store, Watch, WatchResponse, WriteOutcome, connect, testing,
};

/// How long a test waits for one watch response, a connection or a lease expiry before it fails.
/// Generous: the machine has two cores and runs two tests at once.
pub(crate) const WAIT: Duration = Duration::from_secs(30);

/// The backends the suite runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Sqlite,
    Postgres,
    Mysql,
    Etcd,
}

impl Kind {
    /// The name [`rk3s_datastore::Backend::name`] reports for this kind.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Sqlite => "sqlite",
            Kind::Postgres => "postgres",
            Kind::Mysql => "mysql",
            Kind::Etcd => "etcd",
        }
    }
}

/// One fresh backend for one test: its endpoint, and what keeps it alive (the SQLite directory,
/// the etcd process). The Postgres and MariaDB databases are dropped by [`TestBackend::finish`].
#[derive(Debug)]
pub(crate) struct TestBackend {
    pub(crate) kind: Kind,
    pub(crate) endpoint: String,
    dir: tempfile::TempDir,
    etcd: Option<testing::EtcdProcess>,
    stores: Mutex<Vec<Store>>,
}

impl TestBackend {
    /// A fresh, empty backend of this kind.
    pub(crate) async fn start(kind: Kind) -> TestBackend {
        init_tracing();
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut etcd = None;
        let endpoint = match kind {
            Kind::Sqlite => format!("sqlite://{}", dir.path().join("state.db").display()),
            Kind::Postgres => testing::postgres_endpoint("conf"),
            Kind::Mysql => testing::mysql_endpoint("conf"),
            Kind::Etcd => {
                let process = tokio::task::spawn_blocking(testing::EtcdProcess::start)
                    .await
                    .expect("etcd start task")
                    .unwrap_or_else(|e| panic!("cannot start etcd for the test: {e}"));
                let endpoint = process.endpoint.clone();
                etcd = Some(process);
                endpoint
            }
        };
        TestBackend {
            kind,
            endpoint,
            dir,
            etcd,
            stores: Mutex::new(Vec::new()),
        }
    }

    /// The directory of the SQLite file (also the data dir of every config).
    pub(crate) fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// The config [`TestBackend::connect`] uses.
    pub(crate) fn config(&self) -> Config {
        Config {
            data_dir: self.dir.path().to_path_buf(),
            ..Config::for_endpoint(&self.endpoint)
        }
    }

    /// A new store (a new "server") on this backend.
    pub(crate) async fn connect(&self) -> Store {
        self.connect_with(|_| {}).await
    }

    /// A new store on this backend, with a tweaked config.
    pub(crate) async fn connect_with(&self, tweak: impl FnOnce(&mut Config)) -> Store {
        let mut config = self.config();
        tweak(&mut config);
        let store = tokio::time::timeout(WAIT, connect(&config))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "connecting to {} at {} took over {WAIT:?}",
                    self.kind.name(),
                    self.endpoint
                )
            })
            .unwrap_or_else(|e| {
                panic!(
                    "cannot connect to {} at {}: {e}",
                    self.kind.name(),
                    self.endpoint
                )
            });
        self.stores.lock().expect("stores lock").push(store.clone());
        store
    }

    /// Closes every store and drops the test's database. Called when a test passed; a failed
    /// test leaves its database behind for a look.
    pub(crate) async fn finish(self) {
        let stores = std::mem::take(&mut *self.stores.lock().expect("stores lock"));
        for store in stores {
            store.close().await;
        }
        drop_database(self.kind, &self.endpoint).await;
    }
}

/// Drops a throwaway Postgres or MariaDB database (best effort: a failure is printed, the test
/// has passed already).
pub(crate) async fn drop_database(kind: Kind, endpoint: &str) {
    use sqlx::{Connection, Executor};
    let Some((_, db)) = endpoint.rsplit_once('/') else {
        return;
    };
    let result = match kind {
        Kind::Postgres => {
            let admin = std::env::var("RK3S_TEST_POSTGRES")
                .unwrap_or_else(|_| testing::DEFAULT_POSTGRES.to_string());
            match sqlx::PgConnection::connect(&admin).await {
                Ok(mut conn) => {
                    let sql = format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)");
                    conn.execute(sqlx::raw_sql(sqlx::AssertSqlSafe(sql)))
                        .await
                        .map(drop)
                }
                Err(e) => Err(e),
            }
        }
        Kind::Mysql => {
            let admin = std::env::var("RK3S_TEST_MYSQL")
                .unwrap_or_else(|_| testing::DEFAULT_MYSQL.to_string());
            match sqlx::MySqlConnection::connect(&admin).await {
                Ok(mut conn) => {
                    let sql = format!("DROP DATABASE IF EXISTS `{db}`");
                    conn.execute(sqlx::raw_sql(sqlx::AssertSqlSafe(sql)))
                        .await
                        .map(drop)
                }
                Err(e) => Err(e),
            }
        }
        Kind::Sqlite | Kind::Etcd => Ok(()),
    };
    if let Err(e) = result {
        eprintln!("could not drop test database {db}: {e}");
    }
}

/// Logs of the store under test, shown for failed tests. The store's debug spans and events
/// are on unless `RUST_LOG` says otherwise, so that the suite runs the code paths a debugging
/// operator turns on too.
pub(crate) fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rk3s_datastore=debug"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// The revision of a write that must have happened.
pub(crate) fn written(result: rk3s_datastore::Result<WriteOutcome>, what: &str) -> i64 {
    match result {
        Ok(WriteOutcome::Written { revision }) => revision,
        Ok(WriteOutcome::Conflict { current }) => {
            panic!("{what}: expected the write to happen, got a conflict with {current:?}")
        }
        Err(e) => panic!("{what}: {e}"),
    }
}

/// The current key of a write that must have been refused.
pub(crate) fn conflict(
    result: rk3s_datastore::Result<WriteOutcome>,
    what: &str,
) -> Option<KeyValue> {
    match result {
        Ok(WriteOutcome::Conflict { current }) => current,
        Ok(WriteOutcome::Written { revision }) => {
            panic!("{what}: expected a conflict, the write happened at revision {revision}")
        }
        Err(e) => panic!("{what}: {e}"),
    }
}

/// The next response of a watch, failing the test after [`WAIT`] or when the watch ends or
/// fails.
pub(crate) async fn next_response(watch: &mut Watch, what: &str) -> WatchResponse {
    match tokio::time::timeout(WAIT, watch.next()).await {
        Err(_) => panic!("waited {WAIT:?} for a watch response ({what}); none came"),
        Ok(None) => panic!("the watch ended while waiting for {what}"),
        Ok(Some(Err(e))) => panic!("the watch failed while waiting for {what}: {e}"),
        Ok(Some(Ok(resp))) => resp,
    }
}

/// Reads responses until at least `n` events have arrived (skipping progress notifications)
/// and returns every event read, in order: more than `n` when the last response carried more.
/// Fails on a compaction, a timeout or an end of the watch, and when a response's revision is
/// below its last event's.
pub(crate) async fn events(watch: &mut Watch, n: usize, what: &str) -> Vec<Event> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let context = format!("{what}: {} of {n} events so far", out.len());
        match next_response(watch, &context).await {
            WatchResponse::Events { revision, events } => {
                assert!(!events.is_empty(), "{context}: a response with no events");
                let last = events.last().map_or(0, |e| e.kv.mod_revision);
                assert!(
                    revision >= last,
                    "{context}: response revision {revision} below its last event's {last}"
                );
                out.extend(events);
            }
            WatchResponse::Progress { .. } => {}
            WatchResponse::Compacted { compact_revision } => {
                panic!("{context}: unexpected compaction at {compact_revision}")
            }
        }
    }
    out
}

/// The revision, key and value (`None` for a delete) of an event, for comparisons.
pub(crate) fn summary(event: &Event) -> (i64, String, Option<String>) {
    let value = match event.kind {
        rk3s_datastore::EventKind::Put => {
            Some(String::from_utf8_lossy(&event.kv.value).into_owned())
        }
        rk3s_datastore::EventKind::Delete => None,
    };
    (
        event.kv.mod_revision,
        String::from_utf8_lossy(&event.kv.key).into_owned(),
        value,
    )
}

/// A key-value as it should read back.
pub(crate) fn kv(
    key: &str,
    value: &str,
    create: i64,
    modified: i64,
    version: i64,
    lease: i64,
) -> KeyValue {
    KeyValue {
        key: key.as_bytes().to_vec(),
        create_revision: create,
        mod_revision: modified,
        version,
        value: value.as_bytes().to_vec(),
        lease,
    }
}

/// The key of a delete event: the key and the deletion's revision, everything else zero.
pub(crate) fn tombstone(key: &str, revision: i64) -> KeyValue {
    KeyValue {
        key: key.as_bytes().to_vec(),
        mod_revision: revision,
        ..KeyValue::default()
    }
}

/// Polls `check` every 100 ms until it returns `Some`, failing after `limit` with `what`.
pub(crate) async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("waited {limit:?} for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
