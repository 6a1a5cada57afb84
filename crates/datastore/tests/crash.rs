//! Crash safety: a writer process killed with SIGKILL in the middle of its write loop loses no
//! acknowledged write, and the store it leaves behind is consistent (contiguous revisions, a
//! replayable history, and it takes new writes).
//!
//! The writer is this test binary itself, re-executed to run only [`crash_child_writer`] (an
//! ignored test that does nothing unless [`CHILD_ENV`] names an endpoint). It writes from a few
//! concurrent tasks and prints `ACK <key> <revision>` after each acknowledged write; the parent
//! kills it once it has read [`ACKS`] of them, then checks every acknowledged write.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use common::{Kind, TestBackend, events, summary, written};
use rk3s_datastore::{Config, KeyValue, ListOptions, connect};

/// The endpoint the child writes to; without it the child test returns at once.
const CHILD_ENV: &str = "RK3S_CRASH_CHILD";
/// The data dir of the child's config.
const CHILD_DATA_DIR_ENV: &str = "RK3S_CRASH_DATA_DIR";
/// Which round of writes this is (keys of different rounds differ).
const CHILD_ROUND_ENV: &str = "RK3S_CRASH_ROUND";
/// Acknowledgements the parent waits for before it kills the child.
const ACKS: usize = 200;
/// Concurrent writer tasks in the child.
const TASKS: usize = 4;
/// Kill/restart rounds per backend.
const ROUNDS: usize = 2;

/// The writer process. Run by the crash tests, never on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the writer process of the crash tests, which start it themselves"]
async fn crash_child_writer() {
    let Ok(endpoint) = std::env::var(CHILD_ENV) else {
        return;
    };
    let data_dir = std::env::var(CHILD_DATA_DIR_ENV).expect("the parent sets the data dir");
    let round = std::env::var(CHILD_ROUND_ENV).expect("the parent sets the round");
    let config = Config {
        data_dir: data_dir.into(),
        ..Config::for_endpoint(endpoint)
    };
    let store = connect(&config).await.expect("the child connects");
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let store = store.clone();
            let round = round.clone();
            tokio::spawn(async move {
                // Bounded, in case the parent never kills us.
                for i in 0..100_000 {
                    let key = format!("/crash/r{round}/t{t}/k{i:05}");
                    let value = format!("value of {key}");
                    let revision = written(
                        store.create(key.as_bytes(), value.into_bytes(), 0).await,
                        &key,
                    );
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "ACK {key} {revision}").expect("write to the parent");
                    out.flush().expect("flush to the parent");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("writer task");
    }
}

/// Runs one child writer for `round`, kills it after [`ACKS`] acknowledgements and returns every
/// acknowledged write (also those printed between the last one read and the kill).
async fn write_and_kill(backend: &TestBackend, round: usize) -> BTreeMap<String, i64> {
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut child = Command::new(exe)
        .args([
            "--exact",
            "crash_child_writer",
            "--nocapture",
            "--ignored",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, &backend.endpoint)
        .env(CHILD_DATA_DIR_ENV, backend.dir())
        .env(CHILD_ROUND_ENV, round.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the writer process");
    let stdout = child.stdout.take().expect("the child's stdout");
    let pid = child.id();
    let reader = tokio::task::spawn_blocking(move || {
        let mut acks = BTreeMap::new();
        let lines = BufReader::new(stdout).lines();
        let mut killed = false;
        for line in lines {
            let line = line.expect("read the child's output");
            let Some(ack) = line.strip_prefix("ACK ") else {
                continue;
            };
            let (key, revision) = ack.split_once(' ').expect("ACK <key> <revision>");
            let revision: i64 = revision.parse().expect("a revision");
            assert!(
                acks.insert(key.to_string(), revision).is_none(),
                "{key} acknowledged twice"
            );
            if acks.len() >= ACKS && !killed {
                // SIGKILL on unix: no chance to flush or close anything.
                child.kill().expect("kill -9 the writer");
                killed = true;
            }
        }
        let status = child.wait().expect("reap the writer");
        assert!(
            killed,
            "the writer exited with {status} after only {} acknowledged writes",
            acks.len()
        );
        acks
    });
    match tokio::time::timeout(common::WAIT * 4, reader).await {
        Ok(acks) => acks.expect("the reader thread"),
        Err(_) => {
            // Our own child, by its id; the reader thread then sees the end of its output.
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!(
                "the writer process made no {ACKS} acknowledged writes in {:?}",
                common::WAIT * 4
            );
        }
    }
}

async fn crash_and_verify(kind: Kind) {
    let backend = TestBackend::start(kind).await;
    let mut acked: BTreeMap<String, i64> = BTreeMap::new();
    for round in 0..ROUNDS {
        let acks = write_and_kill(&backend, round).await;
        assert!(acks.len() >= ACKS);
        acked.extend(acks);

        // A new process, as after a restart.
        let store = backend.connect().await;
        let current = store
            .current_revision()
            .await
            .expect("current revision after the crash");
        // Everything in the store: the writers' keys and the writes made after each crash.
        let all = store
            .list(b"/", ListOptions::default())
            .await
            .expect("list after the crash")
            .kvs;
        let present: BTreeMap<String, &KeyValue> = all
            .iter()
            .map(|kv| (String::from_utf8_lossy(&kv.key).into_owned(), kv))
            .filter(|(key, _)| key.starts_with("/crash/"))
            .collect();

        // Every acknowledged write is there, as it was acknowledged.
        for (key, &revision) in &acked {
            let kv = present.get(key).unwrap_or_else(|| {
                panic!("round {round}: acknowledged write {key} at {revision} is lost")
            });
            assert_eq!(
                (
                    kv.value.as_slice(),
                    kv.mod_revision,
                    kv.create_revision,
                    kv.version
                ),
                (format!("value of {key}").as_bytes(), revision, revision, 1),
                "round {round}: {key} as acknowledged"
            );
        }
        // At most the writes in flight at the kill were committed without an acknowledgement,
        // and each task's keys are a gapless sequence (it waits for each write).
        let unacked = present.len() - acked.len();
        eprintln!(
            "{} round {round}: {} writes acknowledged in all, {unacked} committed without one, \
             revision {current}",
            kind.name(),
            acked.len()
        );
        assert!(
            unacked <= TASKS * (round + 1),
            "round {round}: {unacked} writes committed without an acknowledgement"
        );
        for r in 0..=round {
            for t in 0..TASKS {
                let prefix = format!("/crash/r{r}/t{t}/");
                let keys: Vec<&String> =
                    present.keys().filter(|k| k.starts_with(&prefix)).collect();
                let expected: Vec<String> = (0..keys.len())
                    .map(|i| format!("{prefix}k{i:05}"))
                    .collect();
                assert_eq!(
                    keys,
                    expected.iter().collect::<Vec<_>>(),
                    "round {round}: keys of {prefix}"
                );
            }
        }
        // Every committed write has its own revision, with no gaps up to the current one.
        let mut revisions: Vec<i64> = all.iter().map(|kv| kv.mod_revision).collect();
        revisions.sort();
        let first = revisions[0];
        assert_eq!(
            revisions,
            (first..=current).collect::<Vec<_>>(),
            "round {round}: revisions of the committed writes are contiguous up to the current revision"
        );
        assert!(
            current >= acked.len() as i64,
            "current revision {current} < {} acks",
            acked.len()
        );

        // The history replays whole.
        let mut w = store
            .watch_prefix(b"/", first, false)
            .await
            .expect("watch the history");
        let replay = events(
            &mut w,
            all.len(),
            "the replay of the history after the crash",
        )
        .await;
        let replayed: Vec<(i64, String)> = replay
            .iter()
            .map(|e| (summary(e).0, summary(e).1))
            .collect();
        let mut log: Vec<(i64, String)> = all
            .iter()
            .map(|kv| {
                (
                    kv.mod_revision,
                    String::from_utf8_lossy(&kv.key).into_owned(),
                )
            })
            .collect();
        log.sort();
        assert_eq!(replayed, log, "round {round}: the replayed history");

        // And the store takes new writes at the next revision.
        let key = format!("/after/{round}");
        let r = written(
            store.create(key.as_bytes(), b"x".to_vec(), 0).await,
            "a write after the crash",
        );
        assert_eq!(r, current + 1);
        store.close().await;
    }
    backend.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_kill_9_keeps_acknowledged_writes() {
    crash_and_verify(Kind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_kill_9_keeps_acknowledged_writes() {
    crash_and_verify(Kind::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_kill_9_keeps_acknowledged_writes() {
    crash_and_verify(Kind::Mysql).await;
}
