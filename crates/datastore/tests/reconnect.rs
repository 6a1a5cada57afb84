//! A lost database connection is retried without losing or duplicating writes.
//!
//! While a writer creates keys, another connection keeps killing every server-side session of
//! the store's database (Postgres `pg_terminate_backend`, MariaDB `KILL`). Every create must
//! succeed exactly once: a retried commit that had in fact happened must not turn into a
//! conflict, and one that had not must not be lost. The log must stay gapless.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use rk3s_datastore::{Config, ListOptions, WatchResponse, WriteOutcome, connect, testing};
use sqlx::Row as _;

const WRITES: usize = 300;

fn db_name(endpoint: &str) -> String {
    endpoint.rsplit('/').next().unwrap_or_default().to_string()
}

/// Kills every other session on `db` every 150 ms until `stop`; counts the sessions killed.
async fn kill_loop<F, Fut>(stop: Arc<AtomicBool>, killed: Arc<AtomicUsize>, kill: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = usize> + Send + 'static,
{
    while !stop.load(Ordering::Relaxed) {
        killed.fetch_add(kill().await, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

async fn write_through_kills<F, Fut>(endpoint: String, kill: F)
where
    F: Fn() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = usize> + Send + 'static,
{
    let store = connect(&Config::for_endpoint(endpoint))
        .await
        .expect("connect");
    let start = store.current_revision().await.expect("revision");

    let stop = Arc::new(AtomicBool::new(false));
    let killed = Arc::new(AtomicUsize::new(0));
    let killer = tokio::spawn(kill_loop(stop.clone(), killed.clone(), kill));

    let began = std::time::Instant::now();
    for i in 0..WRITES {
        let key = format!("/reconnect/{i:04}");
        match store.create(key.as_bytes(), vec![b'x'; 64], 0).await {
            Ok(WriteOutcome::Written { .. }) => {}
            Ok(WriteOutcome::Conflict { current }) => {
                panic!(
                    "create of {key} reported a conflict with {current:?}: a retried commit was applied twice"
                )
            }
            Err(e) => panic!("create of {key} failed through a lost connection: {e}"),
        }
    }
    stop.store(true, Ordering::Relaxed);
    killer.await.expect("killer task");
    eprintln!(
        "{WRITES} creates through {} killed sessions in {:?}",
        killed.load(Ordering::Relaxed),
        began.elapsed()
    );
    assert!(
        killed.load(Ordering::Relaxed) > 0,
        "the test killed no database session, so it showed nothing"
    );

    let end = store.current_revision().await.expect("revision");
    assert_eq!(
        end - start,
        WRITES as i64,
        "one revision per acknowledged create, no more"
    );
    let list = store
        .list(b"/reconnect/", ListOptions::default())
        .await
        .expect("list");
    assert_eq!(list.kvs.len(), WRITES);
    for kv in &list.kvs {
        assert_eq!(
            kv.version,
            1,
            "{} written more than once",
            String::from_utf8_lossy(&kv.key)
        );
    }

    // The log replays every create once, in revision order.
    let mut watch = store
        .watch_prefix(b"/reconnect/", start + 1, false)
        .await
        .expect("watch");
    let mut next = start + 1;
    while next <= end {
        let resp = tokio::time::timeout(Duration::from_secs(10), watch.next())
            .await
            .expect("replay stalled")
            .expect("watch ended")
            .expect("watch error");
        let WatchResponse::Events { events, .. } = resp else {
            panic!("unexpected {resp:?}");
        };
        for e in events {
            assert_eq!(e.kv.mod_revision, next, "replay out of order or with a gap");
            next += 1;
        }
    }
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_writes_survive_killed_connections() {
    let endpoint = testing::postgres_endpoint("reconnect");
    let db = db_name(&endpoint);
    let admin_url =
        std::env::var("RK3S_TEST_POSTGRES").unwrap_or_else(|_| testing::DEFAULT_POSTGRES.into());
    let admin = sqlx::PgPool::connect(&admin_url)
        .await
        .expect("admin connection to Postgres");
    write_through_kills(endpoint, move || {
        let admin = admin.clone();
        let db = db.clone();
        async move {
            let rows = sqlx::query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = $1 AND pid <> pg_backend_pid()",
            )
            .bind(db)
            .fetch_all(&admin)
            .await
            .unwrap_or_default();
            rows.len()
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_writes_survive_killed_connections() {
    let endpoint = testing::mysql_endpoint("reconnect");
    let db = db_name(&endpoint);
    let admin_url =
        std::env::var("RK3S_TEST_MYSQL").unwrap_or_else(|_| testing::DEFAULT_MYSQL.into());
    let admin = sqlx::MySqlPool::connect(&admin_url)
        .await
        .expect("admin connection to MariaDB");
    write_through_kills(endpoint, move || {
        let admin = admin.clone();
        let db = db.clone();
        async move {
            let ids = sqlx::query(
                "SELECT CAST(id AS SIGNED) FROM information_schema.processlist WHERE db = ?",
            )
            .bind(db)
            .fetch_all(&admin)
            .await
            .unwrap_or_default();
            let mut killed = 0;
            for row in ids {
                let Ok(id) = row.try_get::<i64, _>(0) else {
                    continue;
                };
                // The session may have ended by itself meanwhile.
                if sqlx::query(sqlx::AssertSqlSafe(format!("KILL {id}")))
                    .execute(&admin)
                    .await
                    .is_ok()
                {
                    killed += 1;
                }
            }
            killed
        }
    })
    .await;
}
