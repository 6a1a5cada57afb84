//! SQLite bloat under churn: with background compaction every second, the database file and
//! its WAL stay bounded however long a fixed set of keys keeps being rewritten (K3s users report
//! SQLite/WAL files that grow without end; this is the regression test for that).
//!
//! The churn rewrites [`KEYS`] keys of [`VALUE_SIZE`] bytes [`TOTAL_WRITES`] times in all, from
//! [`WRITERS`] concurrent tasks, so that far more bytes are written than any bound asserted here
//! (see [`absolute_cap`]). Counts, not durations, bound the test, so it asserts the same thing
//! in debug and release builds.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Kind, TestBackend, eventually};
use rk3s_datastore::{ListOptions, PutRequest, Store, TxnOp, TxnRequest};
use sqlx::Connection;

const KEYS: usize = 200;
const VALUE_SIZE: usize = 4096;
const WRITERS: usize = 4;
const TOTAL_WRITES: usize = 24_000;
/// Writes before the size is first measured: enough for compaction, checkpoints and the free
/// page list to reach their steady state.
const WARMUP_WRITES: usize = 6_000;
const RETENTION: i64 = 100;

/// The hard cap on `state.db` + `state.db-wal`, at any point after the warm-up: 30 MiB, less
/// than a third of the 94 MiB the churn writes, so a store that kept its history or never reset
/// its WAL would break it.
///
/// What a bounded store holds: the live data, `KEYS * VALUE_SIZE` = 0.8 MiB; the retained
/// history, 100 revisions of one key each, 0.4 MiB; what the churn writes between two
/// compactions (one second apart; about 2 MiB at the 500 writes/s of a debug build on two
/// cores), whose pages are reused once compacted; and the WAL, which holds what was written
/// since its last checkpoint: one follows each compaction, SQLite checkpoints by itself every
/// 1000 pages (4 MiB), and `journal_size_limit` truncates it to 16 MiB at most. Measured on the
/// development machine: about 12 MiB at the largest.
fn absolute_cap() -> u64 {
    30 * 1024 * 1024
}

fn sizes(dir: &Path) -> (u64, u64) {
    let size = |name: &str| std::fs::metadata(dir.join(name)).map_or(0, |m| m.len());
    (size("state.db"), size("state.db-wal"))
}

/// Rows of the log table, read through a connection of our own (read-only, closed at once so
/// that it never holds a checkpoint back).
async fn history_rows(db: &Path) -> i64 {
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(db)
        .read_only(true);
    let mut conn = sqlx::SqliteConnection::connect_with(&options)
        .await
        .expect("open state.db to count rows");
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM rk3s_log")
        .fetch_one(&mut conn)
        .await
        .expect("count the log rows");
    conn.close().await.expect("close the counting connection");
    rows
}

fn value(key: usize, round: usize) -> Vec<u8> {
    let mut value = format!("key {key} round {round} ").into_bytes();
    let fill = b'a' + (round % 26) as u8;
    value.resize(VALUE_SIZE, fill);
    value
}

fn key(i: usize) -> Vec<u8> {
    format!("/bloat/k{i:03}").into_bytes()
}

/// Writer `w` rewrites its own keys (`i % WRITERS == w`) in rounds `from..to`, one
/// transaction per write.
async fn churn(store: &Store, from: usize, to: usize) {
    let per_writer = |w: usize| {
        let store = store.clone();
        async move {
            for round in from..to {
                for i in (w..KEYS).step_by(WRITERS) {
                    let put = TxnOp::Put(PutRequest {
                        key: key(i),
                        value: value(i, round),
                        ..PutRequest::default()
                    });
                    store
                        .backend()
                        .txn(TxnRequest {
                            compare: vec![],
                            success: vec![put],
                            failure: vec![],
                        })
                        .await
                        .unwrap_or_else(|e| panic!("write {i} of round {round}: {e}"));
                }
            }
        }
    };
    let tasks: Vec<_> = (0..WRITERS).map(|w| tokio::spawn(per_writer(w))).collect();
    for task in tasks {
        task.await.expect("writer task");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_stays_bounded_under_churn() {
    let backend = TestBackend::start(Kind::Sqlite).await;
    let store = backend
        .connect_with(|c| {
            c.datastore_compact_interval = 1;
            c.datastore_compact_retention = RETENTION;
            c.datastore_compact_batch = 500;
        })
        .await;
    let dir = backend.dir().to_path_buf();
    let db = dir.join("state.db");
    let rounds = TOTAL_WRITES / KEYS;
    let warmup_rounds = WARMUP_WRITES / KEYS;
    let start_revision = store.current_revision().await.expect("revision");

    // The size after the warm-up: the largest of a few samples, as the WAL comes and goes
    // with checkpoints.
    let mut warm = 0;
    for step in 0..3 {
        let (from, to) = (warmup_rounds * step / 3, warmup_rounds * (step + 1) / 3);
        churn(&store, from, to).await;
        let (db_size, wal_size) = sizes(&dir);
        eprintln!(
            "warm-up, after {} writes: state.db {db_size} B, WAL {wal_size} B",
            to * KEYS
        );
        warm = warm.max(db_size + wal_size);
    }

    // The rest of the churn, in steps, measuring after each.
    let steps = 6;
    let mut largest = 0;
    for step in 0..steps {
        let from = warmup_rounds + (rounds - warmup_rounds) * step / steps;
        let to = warmup_rounds + (rounds - warmup_rounds) * (step + 1) / steps;
        churn(&store, from, to).await;
        let (db_size, wal_size) = sizes(&dir);
        let rows = history_rows(&db).await;
        eprintln!(
            "after {} writes: state.db {db_size} B, WAL {wal_size} B, {rows} log rows",
            to * KEYS
        );
        largest = largest.max(db_size + wal_size);
        assert!(
            db_size + wal_size <= absolute_cap(),
            "state.db ({db_size} B) + WAL ({wal_size} B) after {} writes exceed the cap of {} B",
            to * KEYS,
            absolute_cap()
        );
        // Compaction keeps up while the churn goes on: each step takes seconds, so compactions
        // (one a second) run during it, and the log holds at most the live keys, the retained
        // revisions and the writes of this step and the one before.
        let step_writes = ((to - from) * KEYS) as i64;
        assert!(
            rows <= KEYS as i64 + RETENTION + 2 * step_writes,
            "{rows} log rows after {} writes: compaction does not keep up with the churn",
            to * KEYS
        );
    }
    let end_revision = store.current_revision().await.expect("revision");
    assert_eq!(
        end_revision - start_revision,
        (rounds * KEYS) as i64,
        "one revision per write"
    );
    assert!(
        largest <= 2 * warm,
        "the files grew from {warm} B after the warm-up to {largest} B: more than twice"
    );

    // Once the churn stops, compaction catches up: what is left is the newest version of each
    // key and the retained revisions.
    assert!(absolute_cap() < (TOTAL_WRITES * VALUE_SIZE) as u64 / 3);
    let rows = eventually(
        Duration::from_secs(30),
        "compaction to catch up",
        || async {
            let rows = history_rows(&db).await;
            (rows <= KEYS as i64 + RETENTION).then_some(rows)
        },
    )
    .await;
    let status = store.status().await.expect("status");
    assert!(
        status.compact_revision >= end_revision - RETENTION,
        "compact revision {} lags the head {end_revision} by more than the retention",
        status.compact_revision
    );
    let (db_size, wal_size) = sizes(&dir);
    eprintln!("settled: state.db {db_size} B, WAL {wal_size} B, {rows} log rows");

    // Nothing live was lost to compaction.
    let listed = store
        .list(b"/bloat/", ListOptions::default())
        .await
        .expect("list")
        .kvs;
    assert_eq!(listed.len(), KEYS);
    for (i, kv) in listed.iter().enumerate() {
        assert_eq!(kv.key, key(i));
        assert_eq!(kv.version, rounds as i64, "every write of {i} counted");
        assert!(
            kv.value == value(i, rounds - 1),
            "key {i} holds its last value"
        );
    }
    backend.finish().await;
}
