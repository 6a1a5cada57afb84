//! The backend conformance suite: one set of behaviours, written once against [`Store`] and
//! [`rk3s_datastore::Backend`], run against every backend (SQLite, Postgres, MariaDB and a real
//! etcd). Each (backend, behaviour) pair is its own test, `<backend>::<behaviour>`, so
//! `cargo test -p rk3s-datastore --test conformance etcd::` runs one backend and
//! `cargo test ... ::watch_replay` one behaviour everywhere.
//!
//! Revisions are asserted exactly but relative to the store's revision at the start of each
//! step, never as absolute numbers.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use common::{
    Kind, TestBackend, WAIT, conflict, events, eventually, kv, next_response, summary, tombstone,
    written,
};
use rk3s_datastore::{
    Compare, CompareOp, CompareTarget, DeleteRequest, Error, Event, EventKind, KeyValue,
    ListOptions, PutRequest, PutResponse, RangeEnd, RangeRequest, Store, TxnOp, TxnOpResponse,
    TxnRequest, WatchRequest, WatchResponse, WriteOutcome,
};

/// Generates, for every backend, a module of one `#[tokio::test]` per behaviour.
macro_rules! conformance {
    ($($behaviour:ident),* $(,)?) => {
        conformance!(@backend sqlite, Kind::Sqlite, $($behaviour),*);
        conformance!(@backend postgres, Kind::Postgres, $($behaviour),*);
        conformance!(@backend mysql, Kind::Mysql, $($behaviour),*);
        conformance!(@backend etcd, Kind::Etcd, $($behaviour),*);
    };
    (@backend $module:ident, $kind:expr, $($behaviour:ident),*) => {
        mod $module {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $behaviour() {
                    run($kind, stringify!($behaviour), super::$behaviour).await;
                }
            )*
        }
    };
}

conformance!(
    status_names_backend,
    create_conflict,
    update_compare_and_swap,
    delete_guarded_and_unguarded,
    version_and_revisions,
    get_at_revision,
    list_prefix_limit_continue,
    list_at_revision,
    list_keys_only_count_only,
    txn_shares_one_revision,
    txn_failure_branch,
    txn_compares,
    txn_range_sees_put,
    delete_range,
    compaction,
    watch_replay,
    watch_from_now,
    watch_range_filter,
    watch_progress,
    watch_drop_and_unread,
    lease_attach_revoke,
    lease_unknown,
    lease_expiry,
    concurrent_writers_and_watchers,
    two_stores_see_each_other,
    txn_duplicate_key,
    put_ignore_value_and_lease,
    range_ends_and_binary_keys,
    large_value,
    concurrent_cas_one_wins,
    watch_behind_compaction,
    lease_keep_alive_extends,
);

/// Runs one behaviour on a fresh backend of `kind`, within a time limit.
async fn run(kind: Kind, name: &str, behaviour: impl AsyncFnOnce(&TestBackend)) {
    let backend = TestBackend::start(kind).await;
    let limit = Duration::from_secs(240);
    if tokio::time::timeout(limit, behaviour(&backend))
        .await
        .is_err()
    {
        panic!("{}::{name} did not finish within {limit:?}", kind.name());
    }
    backend.finish().await;
}

async fn rev(s: &Store) -> i64 {
    s.current_revision().await.expect("current revision")
}

async fn get(s: &Store, key: &str, revision: i64) -> Option<KeyValue> {
    s.get(key.as_bytes(), revision)
        .await
        .unwrap_or_else(|e| panic!("get {key} at {revision}: {e}"))
        .1
}

async fn create(s: &Store, key: &str, value: &str) -> i64 {
    written(
        s.create(key.as_bytes(), value.as_bytes().to_vec(), 0).await,
        &format!("create {key}"),
    )
}

async fn update(s: &Store, key: &str, value: &str, expected: i64) -> i64 {
    written(
        s.update(key.as_bytes(), value.as_bytes().to_vec(), expected, 0)
            .await,
        &format!("update {key} at {expected}"),
    )
}

async fn delete(s: &Store, key: &str) -> i64 {
    written(
        s.delete(key.as_bytes(), None).await,
        &format!("delete {key}"),
    )
}

async fn list(s: &Store, prefix: &str, opts: ListOptions) -> rk3s_datastore::RangeResponse {
    s.list(prefix.as_bytes(), opts.clone())
        .await
        .unwrap_or_else(|e| panic!("list {prefix} with {opts:?}: {e}"))
}

fn keys(kvs: &[KeyValue]) -> Vec<String> {
    kvs.iter()
        .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
        .collect()
}

async fn txn(s: &Store, req: TxnRequest) -> rk3s_datastore::TxnResponse {
    s.backend()
        .txn(req.clone())
        .await
        .unwrap_or_else(|e| panic!("txn {req:?}: {e}"))
}

fn put_op(key: &str, value: &str) -> TxnOp {
    TxnOp::Put(PutRequest {
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
        ..PutRequest::default()
    })
}

fn range_op(key: &str) -> TxnOp {
    TxnOp::Range(RangeRequest {
        key: key.as_bytes().to_vec(),
        ..RangeRequest::default()
    })
}

fn range_kvs(resp: &TxnOpResponse) -> &[KeyValue] {
    match resp {
        TxnOpResponse::Range(range) => &range.kvs,
        other => panic!("expected a range response, got {other:?}"),
    }
}

async fn watch(s: &Store, prefix: &str, start: i64, prev_kv: bool) -> rk3s_datastore::Watch {
    s.watch_prefix(prefix.as_bytes(), start, prev_kv)
        .await
        .unwrap_or_else(|e| panic!("watch {prefix} from {start}: {e}"))
}

fn put_event(kv: KeyValue, prev_kv: Option<KeyValue>) -> Event {
    Event {
        kind: EventKind::Put,
        kv,
        prev_kv,
    }
}

fn delete_event(kv: KeyValue, prev_kv: Option<KeyValue>) -> Event {
    Event {
        kind: EventKind::Delete,
        kv,
        prev_kv,
    }
}

// ---------------------------------------------------------------------------------------------
// Key-value basics

async fn status_names_backend(b: &TestBackend) {
    let s = b.connect().await;
    create(&s, "/st/a", "x").await;
    let status = s.status().await.expect("status");
    assert_eq!(status.backend, b.kind.name());
    assert_eq!(s.backend().name(), b.kind.name());
    assert_eq!(
        status.revision,
        rev(&s).await,
        "status revision is the current revision"
    );
    assert!(status.db_size > 0, "db size {}", status.db_size);
}

async fn create_conflict(b: &TestBackend) {
    let s = b.connect().await;
    let r0 = rev(&s).await;
    assert!(
        r0 >= 1,
        "a fresh store starts at revision 1 or later, got {r0}"
    );

    let r1 = create(&s, "/c/a", "one").await;
    assert_eq!(r1, r0 + 1, "a create takes the next revision");
    let (read_at, got) = s.get(b"/c/a", 0).await.expect("get /c/a");
    assert_eq!(
        read_at, r1,
        "a current read is served at the current revision"
    );
    let one = kv("/c/a", "one", r1, r1, 1, 0);
    assert_eq!(got, Some(one.clone()));

    let current = conflict(
        s.create(b"/c/a", b"two".to_vec(), 0).await,
        "create of an existing key",
    );
    assert_eq!(
        current,
        Some(one.clone()),
        "the conflict returns the key as it is"
    );
    assert_eq!(
        rev(&s).await,
        r1,
        "a refused create does not bump the revision"
    );
    assert_eq!(get(&s, "/c/a", 0).await, Some(one));

    // A different key is still free.
    let r2 = create(&s, "/c/b", "b").await;
    assert_eq!(r2, r1 + 1);
}

async fn update_compare_and_swap(b: &TestBackend) {
    let s = b.connect().await;
    let r1 = create(&s, "/u/a", "v1").await;
    let r2 = update(&s, "/u/a", "v2", r1).await;
    assert_eq!(r2, r1 + 1);
    let v2 = kv("/u/a", "v2", r1, r2, 2, 0);
    assert_eq!(get(&s, "/u/a", 0).await, Some(v2.clone()));

    let current = conflict(
        s.update(b"/u/a", b"stale".to_vec(), r1, 0).await,
        "update with a stale mod revision",
    );
    assert_eq!(current, Some(v2.clone()));
    let current = conflict(
        s.update(b"/u/a", b"future".to_vec(), r2 + 5, 0).await,
        "update with a mod revision from the future",
    );
    assert_eq!(current, Some(v2.clone()));
    assert_eq!(
        rev(&s).await,
        r2,
        "refused updates do not bump the revision"
    );
    assert_eq!(get(&s, "/u/a", 0).await, Some(v2));

    let current = conflict(
        s.update(b"/u/missing", b"x".to_vec(), r1, 0).await,
        "update of a missing key",
    );
    assert_eq!(current, None);
    assert!(
        matches!(
            s.update(b"/u/a", b"x".to_vec(), 0, 0).await,
            Err(Error::InvalidRequest(_))
        ),
        "an update needs a mod revision"
    );
    assert_eq!(rev(&s).await, r2);
}

async fn delete_guarded_and_unguarded(b: &TestBackend) {
    let s = b.connect().await;
    let ra = create(&s, "/d/a", "a1").await;
    let ra2 = update(&s, "/d/a", "a2", ra).await;
    let rb = create(&s, "/d/b", "b").await;

    let current = conflict(
        s.delete(b"/d/a", Some(ra)).await,
        "delete with a stale mod revision",
    );
    assert_eq!(current, Some(kv("/d/a", "a2", ra, ra2, 2, 0)));
    assert_eq!(
        rev(&s).await,
        rb,
        "a refused delete does not bump the revision"
    );

    let rd = written(s.delete(b"/d/a", Some(ra2)).await, "guarded delete");
    assert_eq!(rd, rb + 1);
    assert_eq!(get(&s, "/d/a", 0).await, None);

    let rd2 = delete(&s, "/d/b").await;
    assert_eq!(rd2, rd + 1);
    assert_eq!(get(&s, "/d/b", 0).await, None);

    assert_eq!(
        conflict(s.delete(b"/d/b", None).await, "delete of a deleted key"),
        None
    );
    assert_eq!(
        conflict(
            s.delete(b"/d/b", Some(rb)).await,
            "guarded delete of a deleted key"
        ),
        None
    );
    assert_eq!(
        conflict(s.delete(b"/d/never", None).await, "delete of a missing key"),
        None
    );
    assert_eq!(
        rev(&s).await,
        rd2,
        "deletes of missing keys do not bump the revision"
    );
}

async fn version_and_revisions(b: &TestBackend) {
    let s = b.connect().await;
    let c1 = create(&s, "/v/x", "1").await;
    assert_eq!(
        get(&s, "/v/x", 0).await,
        Some(kv("/v/x", "1", c1, c1, 1, 0))
    );
    let m2 = update(&s, "/v/x", "2", c1).await;
    let m3 = update(&s, "/v/x", "3", m2).await;
    assert_eq!(
        get(&s, "/v/x", 0).await,
        Some(kv("/v/x", "3", c1, m3, 3, 0))
    );

    let d = written(s.delete(b"/v/x", Some(m3)).await, "delete /v/x");
    let c2 = create(&s, "/v/x", "again").await;
    assert_eq!(c2, d + 1);
    assert_eq!(
        get(&s, "/v/x", 0).await,
        Some(kv("/v/x", "again", c2, c2, 1, 0)),
        "a recreated key starts over: version 1, a new create revision"
    );
    let m4 = update(&s, "/v/x", "again2", c2).await;
    assert_eq!(
        get(&s, "/v/x", 0).await,
        Some(kv("/v/x", "again2", c2, m4, 2, 0))
    );

    // History keeps every incarnation.
    assert_eq!(
        get(&s, "/v/x", m2).await,
        Some(kv("/v/x", "2", c1, m2, 2, 0))
    );
    assert_eq!(
        get(&s, "/v/x", d).await,
        None,
        "absent at its deletion's revision"
    );
    assert_eq!(
        get(&s, "/v/x", c2).await,
        Some(kv("/v/x", "again", c2, c2, 1, 0))
    );
}

async fn get_at_revision(b: &TestBackend) {
    let s = b.connect().await;
    let r0 = rev(&s).await;
    let r1 = create(&s, "/g/k", "v1").await;
    let r2 = update(&s, "/g/k", "v2", r1).await;
    let r3 = create(&s, "/g/other", "o").await;
    let r4 = update(&s, "/g/k", "v3", r2).await;

    assert_eq!(get(&s, "/g/k", r0).await, None, "not yet created at {r0}");
    assert_eq!(
        get(&s, "/g/k", r1).await,
        Some(kv("/g/k", "v1", r1, r1, 1, 0))
    );
    assert_eq!(
        get(&s, "/g/k", r2).await,
        Some(kv("/g/k", "v2", r1, r2, 2, 0))
    );
    assert_eq!(
        get(&s, "/g/k", r3).await,
        Some(kv("/g/k", "v2", r1, r2, 2, 0)),
        "between its writes a key reads as its last write"
    );
    assert_eq!(
        get(&s, "/g/k", r4).await,
        Some(kv("/g/k", "v3", r1, r4, 3, 0))
    );
    assert_eq!(
        get(&s, "/g/k", 0).await,
        Some(kv("/g/k", "v3", r1, r4, 3, 0))
    );

    match s.get(b"/g/k", r4 + 1).await {
        Err(Error::FutureRevision { requested, .. }) => assert_eq!(requested, r4 + 1),
        other => panic!(
            "get at future revision {}: expected FutureRevision, got {other:?}",
            r4 + 1
        ),
    }
    match s
        .list(
            b"/g/",
            ListOptions {
                revision: r4 + 10,
                ..ListOptions::default()
            },
        )
        .await
    {
        Err(Error::FutureRevision { requested, .. }) => assert_eq!(requested, r4 + 10),
        other => panic!("list at future revision: expected FutureRevision, got {other:?}"),
    }
}

async fn list_prefix_limit_continue(b: &TestBackend) {
    let s = b.connect().await;
    // Written out of order, with neighbours just outside the prefix on both sides.
    for key in [
        "/l/c", "/l/a", "/l0", "/l/e", "/l", "/l/b", "/k/z", "/l/d", "/lx", "/l/",
    ] {
        create(&s, key, &format!("value of {key}")).await;
    }
    let all = ["/l/", "/l/a", "/l/b", "/l/c", "/l/d", "/l/e"];

    let resp = list(&s, "/l/", ListOptions::default()).await;
    assert_eq!(keys(&resp.kvs), all, "prefix list in key order");
    assert_eq!(resp.count, 6);
    assert!(!resp.more);
    assert_eq!(resp.revision, rev(&s).await);
    for kv in &resp.kvs {
        assert_eq!(
            kv.value,
            format!("value of {}", String::from_utf8_lossy(&kv.key)).into_bytes()
        );
        assert_eq!(kv.version, 1);
    }

    let resp = list(
        &s,
        "/l/",
        ListOptions {
            limit: 2,
            ..ListOptions::default()
        },
    )
    .await;
    assert_eq!(keys(&resp.kvs), ["/l/", "/l/a"]);
    assert!(resp.more, "more keys than the limit");
    assert_eq!(resp.count, 6, "count is every match, not the page");

    let resp = list(
        &s,
        "/l/",
        ListOptions {
            limit: 6,
            ..ListOptions::default()
        },
    )
    .await;
    assert_eq!(keys(&resp.kvs), all);
    assert!(
        !resp.more,
        "a limit equal to the number of matches leaves nothing more"
    );

    // A page from a continue key counts what is left from there, as etcd's range does.
    let resp = list(
        &s,
        "/l/",
        ListOptions {
            limit: 2,
            continue_after: Some(b"/l/b".to_vec()),
            ..ListOptions::default()
        },
    )
    .await;
    assert_eq!(keys(&resp.kvs), ["/l/c", "/l/d"]);
    assert!(resp.more);
    assert_eq!(resp.count, 3);

    // Paging walks every key exactly once, whatever the page size.
    let revision = rev(&s).await;
    for limit in 1..=4 {
        let mut seen = Vec::new();
        let mut after = None;
        for page in 0.. {
            assert!(page <= 6, "paging with limit {limit} does not end");
            let resp = list(
                &s,
                "/l/",
                ListOptions {
                    limit,
                    continue_after: after.clone(),
                    revision,
                    ..ListOptions::default()
                },
            )
            .await;
            assert!(
                resp.kvs.len() as i64 <= limit,
                "a page holds at most the limit"
            );
            seen.extend(keys(&resp.kvs));
            if !resp.more {
                break;
            }
            after = Some(
                resp.kvs
                    .last()
                    .expect("a page with more has keys")
                    .key
                    .clone(),
            );
        }
        assert_eq!(seen, all, "paging with limit {limit}");
    }
}

async fn list_at_revision(b: &TestBackend) {
    let s = b.connect().await;
    let ra = create(&s, "/s/a", "a").await;
    let rb = create(&s, "/s/b", "b1").await;
    let snapshot = rev(&s).await;
    create(&s, "/s/c", "c").await;
    delete(&s, "/s/a").await;
    let rb2 = update(&s, "/s/b", "b2", rb).await;

    let old = list(
        &s,
        "/s/",
        ListOptions {
            revision: snapshot,
            ..ListOptions::default()
        },
    )
    .await;
    assert_eq!(
        old.kvs,
        vec![
            kv("/s/a", "a", ra, ra, 1, 0),
            kv("/s/b", "b1", rb, rb, 1, 0)
        ],
        "the snapshot has the key deleted later and not the key created later"
    );
    assert_eq!(old.count, 2);

    let old = list(
        &s,
        "/s/",
        ListOptions {
            revision: snapshot,
            limit: 1,
            ..ListOptions::default()
        },
    )
    .await;
    assert_eq!(keys(&old.kvs), ["/s/a"]);
    assert!(old.more);
    assert_eq!(old.count, 2);

    let now = list(&s, "/s/", ListOptions::default()).await;
    assert_eq!(keys(&now.kvs), ["/s/b", "/s/c"]);
    assert_eq!(now.kvs[0], kv("/s/b", "b2", rb, rb2, 2, 0));
}

async fn list_keys_only_count_only(b: &TestBackend) {
    let s = b.connect().await;
    for key in ["/o/a", "/o/b", "/o/c"] {
        create(&s, key, "some value").await;
    }
    let full = list(&s, "/o/", ListOptions::default()).await;

    let only_keys = list(
        &s,
        "/o/",
        ListOptions {
            keys_only: true,
            ..ListOptions::default()
        },
    )
    .await;
    let expected: Vec<KeyValue> = full
        .kvs
        .iter()
        .map(|kv| KeyValue {
            value: Vec::new(),
            ..kv.clone()
        })
        .collect();
    assert_eq!(
        only_keys.kvs, expected,
        "keys only: everything but the values"
    );
    assert_eq!(only_keys.count, 3);

    let counted = list(
        &s,
        "/o/",
        ListOptions {
            count_only: true,
            ..ListOptions::default()
        },
    )
    .await;
    assert!(
        counted.kvs.is_empty(),
        "count only returns no keys: {:?}",
        counted.kvs
    );
    assert_eq!(counted.count, 3);

    let counted = list(
        &s,
        "/o/",
        ListOptions {
            count_only: true,
            continue_after: Some(b"/o/a".to_vec()),
            ..ListOptions::default()
        },
    )
    .await;
    assert_eq!(counted.count, 2);

    let none = list(
        &s,
        "/nothing/",
        ListOptions {
            count_only: true,
            ..ListOptions::default()
        },
    )
    .await;
    assert_eq!(none.count, 0);
}

// ---------------------------------------------------------------------------------------------
// Transactions

async fn txn_shares_one_revision(b: &TestBackend) {
    let s = b.connect().await;
    let rc = create(&s, "/t/c", "c").await;
    let ra = create(&s, "/t/a", "a0").await;

    let resp = txn(
        &s,
        TxnRequest {
            compare: vec![],
            success: vec![
                TxnOp::Put(PutRequest {
                    key: b"/t/a".to_vec(),
                    value: b"a1".to_vec(),
                    prev_kv: true,
                    ..PutRequest::default()
                }),
                put_op("/t/b", "b"),
                TxnOp::Delete(DeleteRequest {
                    key: b"/t/c".to_vec(),
                    prev_kv: true,
                    ..DeleteRequest::default()
                }),
            ],
            failure: vec![],
        },
    )
    .await;
    let r = ra + 1;
    assert!(resp.succeeded, "a transaction without compares succeeds");
    assert_eq!(
        resp.revision, r,
        "every write of a transaction shares the next revision"
    );
    assert_eq!(
        resp.responses,
        vec![
            TxnOpResponse::Put(PutResponse {
                prev_kv: Some(kv("/t/a", "a0", ra, ra, 1, 0))
            }),
            TxnOpResponse::Put(PutResponse { prev_kv: None }),
            TxnOpResponse::Delete(rk3s_datastore::DeleteResponse {
                deleted: 1,
                prev_kvs: vec![kv("/t/c", "c", rc, rc, 1, 0)],
            }),
        ]
    );
    assert_eq!(rev(&s).await, r);
    assert_eq!(
        get(&s, "/t/a", 0).await,
        Some(kv("/t/a", "a1", ra, r, 2, 0))
    );
    assert_eq!(get(&s, "/t/b", 0).await, Some(kv("/t/b", "b", r, r, 1, 0)));
    assert_eq!(get(&s, "/t/c", 0).await, None);

    // The watch sees the three changes at one revision, in the order they were made.
    let mut w = watch(&s, "/t/", r, false).await;
    let got: Vec<_> = events(&mut w, 3, "the transaction's events")
        .await
        .iter()
        .map(summary)
        .collect();
    assert_eq!(
        got,
        vec![
            (r, "/t/a".to_string(), Some("a1".to_string())),
            (r, "/t/b".to_string(), Some("b".to_string())),
            (r, "/t/c".to_string(), None),
        ]
    );
}

async fn txn_failure_branch(b: &TestBackend) {
    let s = b.connect().await;
    let ra = create(&s, "/tf/a", "a").await;

    // A failed compare with only reads in the failure branch changes nothing.
    let resp = txn(
        &s,
        TxnRequest {
            compare: vec![Compare::new(
                "/tf/a",
                CompareOp::Equal,
                CompareTarget::Value(b"nope".to_vec()),
            )],
            success: vec![put_op("/tf/a", "success"), put_op("/tf/s", "s")],
            failure: vec![range_op("/tf/a")],
        },
    )
    .await;
    assert!(!resp.succeeded);
    assert_eq!(
        resp.revision, ra,
        "a transaction that writes nothing keeps the revision"
    );
    assert_eq!(resp.responses.len(), 1);
    assert_eq!(
        range_kvs(&resp.responses[0]),
        [kv("/tf/a", "a", ra, ra, 1, 0)]
    );
    assert_eq!(rev(&s).await, ra);
    assert_eq!(
        get(&s, "/tf/s", 0).await,
        None,
        "the success branch did not run"
    );

    // Writes in the failure branch happen, at the next revision.
    let resp = txn(
        &s,
        TxnRequest {
            compare: vec![Compare::new(
                "/tf/a",
                CompareOp::Equal,
                CompareTarget::ModRevision(ra + 100),
            )],
            success: vec![put_op("/tf/s", "s")],
            failure: vec![put_op("/tf/f", "f"), range_op("/tf/f")],
        },
    )
    .await;
    assert!(!resp.succeeded);
    assert_eq!(resp.revision, ra + 1);
    assert_eq!(resp.responses.len(), 2);
    assert_eq!(
        range_kvs(&resp.responses[1]),
        [kv("/tf/f", "f", ra + 1, ra + 1, 1, 0)]
    );
    assert_eq!(get(&s, "/tf/s", 0).await, None);
    assert_eq!(
        get(&s, "/tf/f", 0).await,
        Some(kv("/tf/f", "f", ra + 1, ra + 1, 1, 0))
    );

    // A successful transaction that only reads keeps the revision too.
    let resp = txn(
        &s,
        TxnRequest {
            compare: vec![Compare::new(
                "/tf/a",
                CompareOp::Equal,
                CompareTarget::Version(1),
            )],
            success: vec![range_op("/tf/a")],
            failure: vec![],
        },
    )
    .await;
    assert!(resp.succeeded);
    assert_eq!(resp.revision, ra + 1);
}

async fn txn_compares(b: &TestBackend) {
    let s = b.connect().await;
    let lease = s
        .backend()
        .lease_grant(0, 600)
        .await
        .expect("lease grant")
        .id;
    let c = written(s.create(b"/tc/k", b"v1".to_vec(), 0).await, "create /tc/k");
    let m = written(
        s.update(b"/tc/k", b"v2".to_vec(), c, lease).await,
        "update /tc/k with a lease",
    );
    assert_eq!(
        get(&s, "/tc/k", 0).await,
        Some(kv("/tc/k", "v2", c, m, 2, lease))
    );
    let r = rev(&s).await;

    use CompareOp::{Equal as Eq, Greater as Gt, Less as Lt, NotEqual as Ne};
    use CompareTarget::{CreateRevision, Lease, ModRevision, Value, Version};
    let v = |s: &str| Value(s.as_bytes().to_vec());
    let cases: Vec<(&str, CompareOp, CompareTarget, bool)> = vec![
        ("/tc/k", Eq, Version(2), true),
        ("/tc/k", Eq, Version(1), false),
        ("/tc/k", Ne, Version(1), true),
        ("/tc/k", Ne, Version(2), false),
        ("/tc/k", Gt, Version(1), true),
        ("/tc/k", Gt, Version(2), false),
        ("/tc/k", Lt, Version(3), true),
        ("/tc/k", Lt, Version(2), false),
        ("/tc/k", Eq, CreateRevision(c), true),
        ("/tc/k", Eq, CreateRevision(m), false),
        ("/tc/k", Ne, CreateRevision(m), true),
        ("/tc/k", Gt, CreateRevision(c - 1), true),
        ("/tc/k", Gt, CreateRevision(c), false),
        ("/tc/k", Lt, CreateRevision(m), true),
        ("/tc/k", Lt, CreateRevision(c), false),
        ("/tc/k", Eq, ModRevision(m), true),
        ("/tc/k", Eq, ModRevision(c), false),
        ("/tc/k", Ne, ModRevision(c), true),
        ("/tc/k", Gt, ModRevision(c), true),
        ("/tc/k", Gt, ModRevision(m), false),
        ("/tc/k", Lt, ModRevision(m + 1), true),
        ("/tc/k", Lt, ModRevision(m), false),
        ("/tc/k", Eq, v("v2"), true),
        ("/tc/k", Eq, v("v1"), false),
        ("/tc/k", Ne, v("v1"), true),
        ("/tc/k", Ne, v("v2"), false),
        ("/tc/k", Gt, v("v1"), true),
        ("/tc/k", Gt, v("v3"), false),
        ("/tc/k", Lt, v("v3"), true),
        ("/tc/k", Lt, v("v2"), false),
        ("/tc/k", Gt, v("v"), true),
        ("/tc/k", Lt, v("v20"), true),
        ("/tc/k", Eq, Lease(lease), true),
        ("/tc/k", Eq, Lease(0), false),
        ("/tc/k", Ne, Lease(0), true),
        ("/tc/k", Ne, Lease(lease), false),
        ("/tc/k", Gt, Lease(lease - 1), true),
        ("/tc/k", Gt, Lease(lease), false),
        ("/tc/k", Lt, Lease(lease + 1), true),
        ("/tc/k", Lt, Lease(lease), false),
        // A missing key has version, revisions and lease 0, and no value.
        ("/tc/missing", Eq, Version(0), true),
        ("/tc/missing", Gt, Version(0), false),
        ("/tc/missing", Eq, CreateRevision(0), true),
        ("/tc/missing", Eq, ModRevision(0), true),
        ("/tc/missing", Lt, ModRevision(1), true),
        ("/tc/missing", Eq, Lease(0), true),
        ("/tc/missing", Eq, v(""), false),
    ];
    for (key, op, target, expected) in cases {
        let compare = Compare::new(key, op, target);
        let resp = txn(
            &s,
            TxnRequest {
                compare: vec![compare.clone()],
                success: vec![range_op(key)],
                failure: vec![],
            },
        )
        .await;
        assert_eq!(resp.succeeded, expected, "compare {compare:?}");
        assert_eq!(resp.revision, r);
    }

    // Every compare must hold.
    let both = |second| TxnRequest {
        compare: vec![Compare::new("/tc/k", Eq, Version(2)), second],
        success: vec![],
        failure: vec![],
    };
    assert!(
        txn(&s, both(Compare::new("/tc/k", Eq, ModRevision(m))))
            .await
            .succeeded
    );
    assert!(
        !txn(&s, both(Compare::new("/tc/k", Eq, ModRevision(c))))
            .await
            .succeeded
    );
    assert_eq!(rev(&s).await, r, "compares never write");
}

async fn txn_range_sees_put(b: &TestBackend) {
    let s = b.connect().await;
    create(&s, "/tr/y", "y").await;
    let ro = create(&s, "/tr/x", "old").await;
    let r = ro + 1;
    let resp = txn(
        &s,
        TxnRequest {
            compare: vec![],
            success: vec![
                put_op("/tr/x", "new"),
                put_op("/tr/z", "z"),
                range_op("/tr/x"),
                TxnOp::Delete(DeleteRequest {
                    key: b"/tr/y".to_vec(),
                    ..DeleteRequest::default()
                }),
                range_op("/tr/y"),
                TxnOp::Range(RangeRequest {
                    key: b"/tr/".to_vec(),
                    range_end: RangeEnd::prefix(b"/tr/"),
                    ..RangeRequest::default()
                }),
            ],
            failure: vec![],
        },
    )
    .await;
    assert!(resp.succeeded);
    assert_eq!(resp.revision, r);
    assert_eq!(resp.responses.len(), 6);
    assert_eq!(
        range_kvs(&resp.responses[2]),
        [kv("/tr/x", "new", ro, r, 2, 0)],
        "a read after a put in one transaction sees the put"
    );
    assert_eq!(
        range_kvs(&resp.responses[4]),
        [],
        "a read after a delete sees the key gone"
    );
    assert_eq!(
        range_kvs(&resp.responses[5]),
        [
            kv("/tr/x", "new", ro, r, 2, 0),
            kv("/tr/z", "z", r, r, 1, 0)
        ]
    );
}

async fn delete_range(b: &TestBackend) {
    let s = b.connect().await;
    let ra = create(&s, "/dr/a", "a").await;
    let rb = create(&s, "/dr/b", "b").await;
    let rc = create(&s, "/dr/c", "c").await;
    create(&s, "/dr0", "outside").await;
    create(&s, "/dq", "outside").await;
    let r0 = rev(&s).await;
    let mut w = watch(&s, "/dr/", 0, true).await;

    let delete_prefix = |prefix: &str| TxnRequest {
        compare: vec![],
        success: vec![TxnOp::Delete(DeleteRequest {
            key: prefix.as_bytes().to_vec(),
            range_end: RangeEnd::prefix(prefix.as_bytes()),
            prev_kv: true,
        })],
        failure: vec![],
    };
    let resp = txn(&s, delete_prefix("/dr/")).await;
    let r = r0 + 1;
    assert!(resp.succeeded);
    assert_eq!(resp.revision, r, "a range delete is one revision");
    let prev = vec![
        kv("/dr/a", "a", ra, ra, 1, 0),
        kv("/dr/b", "b", rb, rb, 1, 0),
        kv("/dr/c", "c", rc, rc, 1, 0),
    ];
    assert_eq!(
        resp.responses,
        vec![TxnOpResponse::Delete(rk3s_datastore::DeleteResponse {
            deleted: 3,
            prev_kvs: prev.clone()
        })]
    );
    assert_eq!(
        list(
            &s,
            "/dr/",
            ListOptions {
                count_only: true,
                ..ListOptions::default()
            }
        )
        .await
        .count,
        0
    );
    assert!(
        get(&s, "/dr0", 0).await.is_some(),
        "a key outside the range survives"
    );
    assert!(
        get(&s, "/dq", 0).await.is_some(),
        "a key outside the range survives"
    );

    let got = events(&mut w, 3, "the range delete's events").await;
    let expected: Vec<Event> = prev
        .iter()
        .map(|p| {
            delete_event(
                tombstone(&String::from_utf8_lossy(&p.key), r),
                Some(p.clone()),
            )
        })
        .collect();
    assert_eq!(got, expected);

    // Deleting an empty range writes nothing.
    let resp = txn(&s, delete_prefix("/dr/")).await;
    assert_eq!(
        resp.responses,
        vec![TxnOpResponse::Delete(rk3s_datastore::DeleteResponse {
            deleted: 0,
            prev_kvs: vec![]
        })]
    );
    assert_eq!(resp.revision, r, "deleting nothing keeps the revision");
    assert_eq!(rev(&s).await, r);
}

// ---------------------------------------------------------------------------------------------
// Compaction

async fn compaction(b: &TestBackend) {
    let s = b.connect().await;
    let r_old = create(&s, "/cp/old", "written long before").await;
    let r_gone = create(&s, "/cp/gone", "deleted before the compaction").await;
    let r_gone_d = delete(&s, "/cp/gone").await;
    let mut m = create(&s, "/cp/a", "0").await;
    let mut revs = vec![m];
    for i in 1..10 {
        m = update(&s, "/cp/a", &i.to_string(), m).await;
        revs.push(m);
    }
    let at = revs[5];
    let last = rev(&s).await;
    assert!(r_gone < r_gone_d && r_gone_d < at);

    let after = s
        .compact(at)
        .await
        .unwrap_or_else(|e| panic!("compact at {at}: {e}"));
    assert_eq!(after, last, "compact returns the current revision");

    match s.get(b"/cp/a", at - 1).await {
        Err(Error::Compacted {
            requested,
            compact_revision,
        }) => {
            assert_eq!((requested, compact_revision), (at - 1, at));
        }
        other => panic!("get below the compact revision: expected Compacted, got {other:?}"),
    }
    match s
        .list(
            b"/cp/",
            ListOptions {
                revision: at - 1,
                ..ListOptions::default()
            },
        )
        .await
    {
        Err(Error::Compacted {
            compact_revision, ..
        }) => assert_eq!(compact_revision, at),
        other => panic!("list below the compact revision: expected Compacted, got {other:?}"),
    }
    let c = revs[0];
    assert_eq!(
        get(&s, "/cp/a", at).await,
        Some(kv("/cp/a", "5", c, at, 6, 0)),
        "reads at the compact revision work"
    );
    assert_eq!(
        get(&s, "/cp/a", revs[7]).await,
        Some(kv("/cp/a", "7", c, revs[7], 8, 0))
    );
    assert_eq!(
        get(&s, "/cp/old", at).await,
        Some(kv("/cp/old", "written long before", r_old, r_old, 1, 0)),
        "a key last written before the compact revision still reads at it"
    );
    assert_eq!(get(&s, "/cp/gone", at).await, None);
    let snapshot = list(
        &s,
        "/cp/",
        ListOptions {
            revision: at,
            ..ListOptions::default()
        },
    )
    .await;
    assert_eq!(keys(&snapshot.kvs), ["/cp/a", "/cp/old"]);

    // The latest value of every key survives.
    let now = list(&s, "/cp/", ListOptions::default()).await;
    assert_eq!(
        now.kvs,
        vec![
            kv("/cp/a", "9", c, last, 10, 0),
            kv("/cp/old", "written long before", r_old, r_old, 1, 0)
        ]
    );

    for again in [at, at - 1] {
        match s.compact(again).await {
            Err(Error::Compacted { .. }) => {}
            other => panic!(
                "compact at {again} after compacting at {at}: expected Compacted, got {other:?}"
            ),
        }
    }
    match s.compact(last + 1).await {
        Err(Error::FutureRevision { requested, .. }) => assert_eq!(requested, last + 1),
        other => panic!("compact at a future revision: expected FutureRevision, got {other:?}"),
    }

    // A watch that needs the history gets told, and ends.
    let mut w = watch(&s, "/cp/", at - 1, false).await;
    match next_response(&mut w, "the compaction notice").await {
        WatchResponse::Compacted { compact_revision } => assert_eq!(compact_revision, at),
        other => panic!("watch from below the compact revision: expected Compacted, got {other:?}"),
    }
    match tokio::time::timeout(WAIT, w.next()).await {
        Ok(None) => {}
        Ok(Some(other)) => panic!("a compacted watch must end, got {other:?}"),
        Err(_) => panic!("a compacted watch did not end within {WAIT:?}"),
    }
    // From the compact revision on, the history is there.
    let mut w = watch(&s, "/cp/", at, false).await;
    let got: Vec<_> = events(&mut w, 5, "history from the compact revision")
        .await
        .iter()
        .map(summary)
        .collect();
    let expected: Vec<_> = (5..10)
        .map(|i| (revs[i], "/cp/a".to_string(), Some(i.to_string())))
        .collect();
    assert_eq!(got, expected);

    // The store keeps working after a compaction.
    let r = create(&s, "/cp/new", "n").await;
    assert_eq!(r, last + 1);
}

// ---------------------------------------------------------------------------------------------
// Watch

async fn watch_replay(b: &TestBackend) {
    let s = b.connect().await;
    let r1 = create(&s, "/w/a", "v1").await;
    let r2 = update(&s, "/w/a", "v2", r1).await;
    let r3 = create(&s, "/w/b", "b").await;
    let r4 = delete(&s, "/w/a").await;
    create(&s, "/x/outside", "o").await;
    let r6 = create(&s, "/w/c", "c").await;

    let a1 = kv("/w/a", "v1", r1, r1, 1, 0);
    let a2 = kv("/w/a", "v2", r1, r2, 2, 0);
    let bb = kv("/w/b", "b", r3, r3, 1, 0);
    let cc = kv("/w/c", "c", r6, r6, 1, 0);
    let with_prev = vec![
        put_event(a1.clone(), None),
        put_event(a2.clone(), Some(a1.clone())),
        put_event(bb.clone(), None),
        delete_event(tombstone("/w/a", r4), Some(a2.clone())),
        put_event(cc.clone(), None),
    ];

    let mut w = watch(&s, "/w/", r1, true).await;
    assert_eq!(events(&mut w, 5, "replay with prev_kv").await, with_prev);

    let mut w = watch(&s, "/w/", r1, false).await;
    let without: Vec<Event> = with_prev
        .iter()
        .map(|e| Event {
            prev_kv: None,
            ..e.clone()
        })
        .collect();
    assert_eq!(events(&mut w, 5, "replay without prev_kv").await, without);

    let mut w = watch(&s, "/w/", r3, true).await;
    assert_eq!(
        events(&mut w, 3, "replay from the middle").await,
        with_prev[2..].to_vec()
    );

    // A replaying watch goes on with live events.
    let r7 = update(&s, "/w/c", "c2", r6).await;
    assert_eq!(
        events(&mut w, 1, "a live event after the replay").await,
        vec![put_event(kv("/w/c", "c2", r6, r7, 2, 0), Some(cc))]
    );
}

async fn watch_from_now(b: &TestBackend) {
    let s = b.connect().await;
    let ra = create(&s, "/n/a", "before").await;
    let mut w = watch(&s, "/n/", 0, true).await;
    let rb = create(&s, "/n/b", "b").await;
    let ra2 = update(&s, "/n/a", "after", ra).await;
    let rd = delete(&s, "/n/b").await;
    let bb = kv("/n/b", "b", rb, rb, 1, 0);
    assert_eq!(
        events(&mut w, 3, "events after the watch started").await,
        vec![
            put_event(bb.clone(), None),
            put_event(
                kv("/n/a", "after", ra, ra2, 2, 0),
                Some(kv("/n/a", "before", ra, ra, 1, 0))
            ),
            delete_event(tombstone("/n/b", rd), Some(bb)),
        ],
        "a watch from revision 0 sees only what happens after it started"
    );
}

async fn watch_range_filter(b: &TestBackend) {
    let s = b.connect().await;
    let mut w = watch(&s, "/r/", 0, false).await;
    let mut single = s
        .backend()
        .watch(WatchRequest {
            key: b"/r/in".to_vec(),
            ..WatchRequest::default()
        })
        .await
        .expect("watch one key");
    for key in ["/q", "/r", "/r0", "/s/x", "/", "/r.x"] {
        create(&s, key, "outside").await;
    }
    // In the prefix, not the single key.
    let r0 = create(&s, "/r/in2", "other key").await;
    let r1 = create(&s, "/r/in", "in").await;
    let r2 = create(&s, "/r/", "the prefix itself").await;
    let r3 = update(&s, "/r/in", "in2", r1).await;
    assert_eq!(
        events(&mut w, 4, "prefix watch")
            .await
            .iter()
            .map(summary)
            .collect::<Vec<_>>(),
        vec![
            (r0, "/r/in2".to_string(), Some("other key".to_string())),
            (r1, "/r/in".to_string(), Some("in".to_string())),
            (r2, "/r/".to_string(), Some("the prefix itself".to_string())),
            (r3, "/r/in".to_string(), Some("in2".to_string())),
        ],
        "the first events are the ones in the range: those outside were skipped"
    );
    assert_eq!(
        events(&mut single, 2, "single-key watch")
            .await
            .iter()
            .map(summary)
            .collect::<Vec<_>>(),
        vec![
            (r1, "/r/in".to_string(), Some("in".to_string())),
            (r3, "/r/in".to_string(), Some("in2".to_string()))
        ],
        "a single-key watch skips /r/in2"
    );
}

async fn watch_progress(b: &TestBackend) {
    let s = b.connect().await;
    // On an idle watch.
    let before = rev(&s).await;
    let mut w = watch(&s, "/p/", 0, false).await;
    w.request_progress();
    match next_response(&mut w, "progress on an idle watch").await {
        WatchResponse::Progress { revision } => {
            assert!(revision >= before, "progress {revision} < {before}")
        }
        other => panic!("expected progress, got {other:?}"),
    }

    // After writes, in and out of the range: once the event is in, a progress covers the last
    // write to the store, also the one outside the watched range.
    let ra = create(&s, "/p/a", "a").await;
    let rb = create(&s, "/other", "b").await;
    let got: Vec<_> = events(&mut w, 1, "the write in range")
        .await
        .iter()
        .map(summary)
        .collect();
    assert_eq!(got, vec![(ra, "/p/a".to_string(), Some("a".to_string()))]);
    w.request_progress();
    match next_response(&mut w, "progress after writes").await {
        WatchResponse::Progress { revision } => {
            assert!(
                revision >= rb,
                "progress at {revision} does not cover the last write {rb}"
            )
        }
        other => panic!("expected progress, got {other:?}"),
    }
    // And the watch goes on.
    let rc = create(&s, "/p/c", "c").await;
    let got: Vec<_> = events(&mut w, 1, "a write after the progress")
        .await
        .iter()
        .map(summary)
        .collect();
    assert_eq!(got, vec![(rc, "/p/c".to_string(), Some("c".to_string()))]);
}

async fn watch_drop_and_unread(b: &TestBackend) {
    let s = b.connect().await;
    let start = rev(&s).await + 1;
    let dropped = watch(&s, "/dw/", start, false).await;
    let mut unread = watch(&s, "/dw/", start, false).await;
    drop(dropped);
    // More writes than a watch channel holds, while one watch is gone and one is not read:
    // neither may hold the writers up.
    let n = 600;
    let mut expected = Vec::new();
    for i in 0..n {
        let key = format!("/dw/k{:02}", i % 50);
        let value = i.to_string();
        let put = TxnRequest {
            compare: vec![],
            success: vec![put_op(&key, &value)],
            failure: vec![],
        };
        let r = txn(&s, put).await.revision;
        expected.push((r, key, Some(value)));
    }
    assert_eq!(expected.first().map(|e| e.0), Some(start));
    let got: Vec<_> = events(&mut unread, n, "the unread watch")
        .await
        .iter()
        .map(summary)
        .collect();
    assert_eq!(
        got, expected,
        "a watch read late still gets every event, in order"
    );
}

// ---------------------------------------------------------------------------------------------
// Leases

async fn lease_attach_revoke(b: &TestBackend) {
    let s = b.connect().await;
    let backend = s.backend();
    let lease = backend.lease_grant(0, 60).await.expect("lease grant");
    assert_ne!(lease.id, 0, "the store picks a lease id");
    assert_eq!(lease.ttl, 60);
    assert!(backend.leases().await.expect("leases").contains(&lease.id));

    let mut w = watch(&s, "/ls/", 0, false).await;
    let ra = written(
        s.create(b"/ls/a", b"a".to_vec(), lease.id).await,
        "create /ls/a with the lease",
    );
    let rb = written(
        s.create(b"/ls/b", b"b".to_vec(), lease.id).await,
        "create /ls/b with the lease",
    );
    let rc = create(&s, "/ls/c", "no lease").await;
    assert_eq!(
        get(&s, "/ls/a", 0).await,
        Some(kv("/ls/a", "a", ra, ra, 1, lease.id))
    );

    let status = backend
        .lease_time_to_live(lease.id, true)
        .await
        .expect("time to live");
    assert_eq!(status.id, lease.id);
    assert_eq!(status.granted_ttl, 60);
    assert!(
        status.ttl > 0 && status.ttl <= 60,
        "ttl left {}",
        status.ttl
    );
    let mut attached = status.keys.clone();
    attached.sort();
    assert_eq!(attached, vec![b"/ls/a".to_vec(), b"/ls/b".to_vec()]);
    let status = backend
        .lease_time_to_live(lease.id, false)
        .await
        .expect("time to live");
    assert!(
        status.keys.is_empty(),
        "keys only when asked: {:?}",
        status.keys
    );

    let kept = backend
        .lease_keep_alive(lease.id)
        .await
        .expect("keep alive");
    assert_eq!(
        kept,
        rk3s_datastore::Lease {
            id: lease.id,
            ttl: 60
        }
    );

    let revoked_at = backend.lease_revoke(lease.id).await.expect("revoke");
    assert_eq!(
        revoked_at,
        rc + 1,
        "revoking deletes the keys at one new revision"
    );
    assert_eq!(get(&s, "/ls/a", 0).await, None);
    assert_eq!(get(&s, "/ls/b", 0).await, None);
    assert!(
        get(&s, "/ls/c", 0).await.is_some(),
        "a key without the lease stays"
    );

    let got: Vec<_> = events(&mut w, 5, "puts and the revocation's deletes")
        .await
        .iter()
        .map(summary)
        .collect();
    assert_eq!(
        got,
        vec![
            (ra, "/ls/a".to_string(), Some("a".to_string())),
            (rb, "/ls/b".to_string(), Some("b".to_string())),
            (rc, "/ls/c".to_string(), Some("no lease".to_string())),
            (revoked_at, "/ls/a".to_string(), None),
            (revoked_at, "/ls/b".to_string(), None),
        ]
    );

    let status = backend
        .lease_time_to_live(lease.id, true)
        .await
        .expect("time to live of a revoked lease");
    assert_eq!(status.ttl, -1, "a revoked lease has no time left");
    assert!(!backend.leases().await.expect("leases").contains(&lease.id));
    match backend.lease_revoke(lease.id).await {
        Err(Error::LeaseNotFound(id)) => assert_eq!(id, lease.id),
        other => panic!("revoking a revoked lease: expected LeaseNotFound, got {other:?}"),
    }
}

async fn lease_unknown(b: &TestBackend) {
    let s = b.connect().await;
    let backend = s.backend();
    let r = rev(&s).await;
    match s.create(b"/lu/a", b"a".to_vec(), 0x7777).await {
        Err(Error::LeaseNotFound(id)) => assert_eq!(id, 0x7777),
        other => panic!("a put with an unknown lease: expected LeaseNotFound, got {other:?}"),
    }
    assert_eq!(rev(&s).await, r, "the refused put wrote nothing");
    assert_eq!(get(&s, "/lu/a", 0).await, None);

    let lease = backend
        .lease_grant(4242, 30)
        .await
        .expect("grant with a chosen id");
    assert_eq!(lease, rk3s_datastore::Lease { id: 4242, ttl: 30 });
    match backend.lease_grant(4242, 30).await {
        Err(Error::LeaseExists(id)) => assert_eq!(id, 4242),
        other => panic!("granting an existing lease id: expected LeaseExists, got {other:?}"),
    }
    written(
        s.create(b"/lu/a", b"a".to_vec(), 4242).await,
        "create with the chosen lease",
    );
    let revoked_at = backend.lease_revoke(4242).await.expect("revoke");
    assert_eq!(revoked_at, r + 2);
    assert_eq!(get(&s, "/lu/a", 0).await, None);
}

async fn lease_expiry(b: &TestBackend) {
    let s = b.connect().await;
    let lease = s.backend().lease_grant(0, 1).await.expect("lease grant");
    assert!(lease.ttl >= 1, "granted ttl {}", lease.ttl);
    let mut w = watch(&s, "/le/", 0, false).await;
    let r = written(
        s.create(b"/le/a", b"a".to_vec(), lease.id).await,
        "create with the lease",
    );
    create(&s, "/le/b", "no lease").await;

    let s2 = s.clone();
    eventually(
        Duration::from_secs(15),
        "the key of an expired 1s lease to disappear",
        move || {
            let s = s2.clone();
            async move {
                s.get(b"/le/a", 0)
                    .await
                    .expect("get /le/a")
                    .1
                    .is_none()
                    .then_some(())
            }
        },
    )
    .await;
    let got: Vec<_> = events(&mut w, 3, "the expiry's delete")
        .await
        .iter()
        .map(summary)
        .collect();
    assert_eq!(got[0], (r, "/le/a".to_string(), Some("a".to_string())));
    assert_eq!(got[2].1, "/le/a");
    assert_eq!(got[2].2, None, "the expiry is a delete event");
    assert!(get(&s, "/le/b", 0).await.is_some());
    let status = s
        .backend()
        .lease_time_to_live(lease.id, true)
        .await
        .expect("time to live");
    assert_eq!(status.ttl, -1, "an expired lease has no time left");
}

// ---------------------------------------------------------------------------------------------
// Concurrency

const WRITERS: usize = 16;
const WRITES_PER_WRITER: usize = 40;
const CONC_KEYS: usize = 12;

/// One committed write: revision, key, value (`None` for a delete).
type Write = (i64, String, Option<String>);

async fn writer(s: Store, id: usize) -> (Vec<Write>, usize) {
    let mut done = Vec::new();
    let mut conflicts = 0;
    for i in 0..WRITES_PER_WRITER {
        let key = format!("/cc/k{:02}", (id * 7 + i * 5) % CONC_KEYS);
        let value = format!("w{id}-{i}");
        if i % 10 == 9 {
            match s.delete(key.as_bytes(), None).await.expect("delete") {
                WriteOutcome::Written { revision } => done.push((revision, key, None)),
                WriteOutcome::Conflict { current } => assert_eq!(current, None),
            }
            continue;
        }
        let mut current = s.get(key.as_bytes(), 0).await.expect("get").1;
        loop {
            let outcome = match &current {
                None => {
                    s.create(key.as_bytes(), value.clone().into_bytes(), 0)
                        .await
                }
                Some(kv) => {
                    s.update(
                        key.as_bytes(),
                        value.clone().into_bytes(),
                        kv.mod_revision,
                        0,
                    )
                    .await
                }
            };
            match outcome.unwrap_or_else(|e| panic!("writer {id}: write {i} of {key}: {e}")) {
                WriteOutcome::Written { revision } => {
                    done.push((revision, key, Some(value)));
                    break;
                }
                WriteOutcome::Conflict { current: now } => {
                    conflicts += 1;
                    current = now;
                }
            }
        }
    }
    (done, conflicts)
}

/// Reads a watch until it has delivered revision `until` (sent once the writers are done).
async fn consume(
    mut w: rk3s_datastore::Watch,
    mut until: tokio::sync::watch::Receiver<i64>,
    slow: bool,
    name: String,
) -> Vec<Event> {
    let mut got: Vec<Event> = Vec::new();
    if slow {
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    loop {
        let target = *until.borrow();
        if got.last().is_some_and(|e| e.kv.mod_revision >= target) {
            return got;
        }
        tokio::select! {
            changed = until.changed() => changed.expect("target sender"),
            resp = tokio::time::timeout(WAIT, w.next()) => {
                let what = format!("{name} after {} events", got.len());
                match resp {
                    Err(_) => panic!("{what}: no response within {WAIT:?}"),
                    Ok(None) => panic!("{what}: the watch ended"),
                    Ok(Some(Err(e))) => panic!("{what}: {e}"),
                    Ok(Some(Ok(WatchResponse::Events { events, .. }))) => {
                        got.extend(events);
                        if slow {
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    }
                    Ok(Some(Ok(WatchResponse::Progress { .. }))) => {}
                    Ok(Some(Ok(WatchResponse::Compacted { compact_revision }))) => {
                        panic!("{what}: compacted at {compact_revision}, but nothing compacts in this test")
                    }
                }
            }
        }
    }
}

async fn concurrent_writers_and_watchers(b: &TestBackend) {
    // No background compaction: every watcher must get everything.
    let s = b.connect_with(|c| c.datastore_compact_interval = 0).await;
    let start = rev(&s).await + 1;
    let (target_tx, target_rx) = tokio::sync::watch::channel(i64::MAX);
    let mut watchers = Vec::new();
    for i in 0..5 {
        let w = watch(&s, "/cc/", start, true).await;
        let slow = i == 4;
        let name = if slow {
            "the slow watcher".to_string()
        } else {
            format!("watcher {i}")
        };
        watchers.push((
            name.clone(),
            tokio::spawn(consume(w, target_rx.clone(), slow, name)),
        ));
    }

    let writers: Vec<_> = (0..WRITERS)
        .map(|id| tokio::spawn(writer(s.clone(), id)))
        .collect();
    let mut log: Vec<Write> = Vec::new();
    let mut conflicts = 0;
    for task in writers {
        let (done, c) = task.await.expect("writer task");
        log.extend(done);
        conflicts += c;
    }
    log.sort();
    let end = rev(&s).await;
    let revisions: Vec<i64> = log.iter().map(|w| w.0).collect();
    assert_eq!(
        revisions,
        (start..=end).collect::<Vec<_>>(),
        "every write has its own revision, with no gaps ({conflicts} CAS conflicts were retried)"
    );
    target_tx.send(end).expect("watchers listen");

    for (name, task) in watchers {
        let got = task.await.unwrap_or_else(|e| panic!("{name}: {e}"));
        let summaries: Vec<Write> = got.iter().map(summary).collect();
        if summaries != log {
            let first = summaries.iter().zip(&log).position(|(a, b)| a != b);
            panic!(
                "{name} saw {} events, the log has {}; first difference at index {first:?}: saw {:?}, log {:?}",
                summaries.len(),
                log.len(),
                first.and_then(|i| summaries.get(i)),
                first.and_then(|i| log.get(i)),
            );
        }
        // prev_kv, versions and create revisions follow from the history itself.
        let mut state: HashMap<Vec<u8>, KeyValue> = HashMap::new();
        for event in &got {
            let prev = state.get(&event.kv.key).cloned();
            assert_eq!(
                event.prev_kv,
                prev,
                "{name}: prev_kv of {:?}",
                summary(event)
            );
            match event.kind {
                EventKind::Put => {
                    let (create, version) = prev.map_or((event.kv.mod_revision, 1), |p| {
                        (p.create_revision, p.version + 1)
                    });
                    assert_eq!(
                        (event.kv.create_revision, event.kv.version),
                        (create, version),
                        "{name}: create revision and version of {:?}",
                        summary(event)
                    );
                    state.insert(event.kv.key.clone(), event.kv.clone());
                }
                EventKind::Delete => {
                    state.remove(&event.kv.key);
                }
            }
        }
        let listed = list(
            &s,
            "/cc/",
            ListOptions {
                revision: end,
                ..ListOptions::default()
            },
        )
        .await;
        let from_events: BTreeMap<Vec<u8>, KeyValue> = state.into_iter().collect();
        assert_eq!(
            listed.kvs,
            from_events.into_values().collect::<Vec<_>>(),
            "{name}: the final list equals the last event of each key"
        );
    }
}

async fn two_stores_see_each_other(b: &TestBackend) {
    let a = b.connect().await;
    let other = b.connect().await;
    let mut wa = watch(&a, "/x2/", 0, true).await;
    let mut wb = watch(&other, "/x2/", 0, false).await;

    // Writes through B reach a watch on A, in order, and reads on A see them at once.
    let mut log: Vec<Write> = Vec::new();
    let mut mods = HashMap::new();
    for i in 0..30 {
        let key = format!("/x2/k{}", i % 7);
        let value = format!("b{i}");
        let r = match mods.get(&key) {
            None => create(&other, &key, &value).await,
            Some(&m) => update(&other, &key, &value, m).await,
        };
        mods.insert(key.clone(), r);
        let seen = get(&a, &key, 0).await.map(|kv| kv.mod_revision);
        assert_eq!(
            seen,
            Some(r),
            "a read on store A right after B's write of {key}"
        );
        log.push((r, key, Some(value)));
    }
    let rd = delete(&other, "/x2/k0").await;
    log.push((rd, "/x2/k0".to_string(), None));
    let got: Vec<_> = events(&mut wa, log.len(), "B's writes on A's watch")
        .await
        .iter()
        .map(summary)
        .collect();
    assert_eq!(got, log);

    // Both stores writing at once share one sequence of revisions, seen whole on both sides.
    let start = rev(&a).await + 1;
    let mut wa = watch(&a, "/y2/", start, false).await;
    let write_many = |s: Store, name: &'static str| async move {
        let mut done = Vec::new();
        for i in 0..50 {
            let key = format!("/y2/{name}{i:02}");
            let r = written(
                s.create(key.as_bytes(), name.as_bytes().to_vec(), 0).await,
                "create",
            );
            done.push((r, key, Some(name.to_string())));
        }
        done
    };
    let (from_a, from_b) = tokio::join!(
        tokio::spawn(write_many(a.clone(), "a")),
        tokio::spawn(write_many(other.clone(), "b"))
    );
    let mut both: Vec<Write> = from_a
        .expect("writer A")
        .into_iter()
        .chain(from_b.expect("writer B"))
        .collect();
    both.sort();
    assert_eq!(
        both.iter().map(|w| w.0).collect::<Vec<_>>(),
        (start..start + 100).collect::<Vec<_>>(),
        "two stores on one database allocate revisions from one sequence"
    );
    let got: Vec<_> = events(&mut wa, 100, "both stores' writes on A's watch")
        .await
        .iter()
        .map(summary)
        .collect();
    assert_eq!(got, both);

    // And A's writes reach B's watch (which saw B's own writes first).
    let rx = create(&a, "/x2/from-a", "a").await;
    let mut expected: Vec<Write> = log;
    expected.push((rx, "/x2/from-a".to_string(), Some("a".to_string())));
    let got: Vec<_> = events(&mut wb, expected.len(), "all /x2/ writes on B's watch")
        .await
        .iter()
        .map(summary)
        .collect();
    assert_eq!(got, expected);

    // Leases are shared: granted through A, used and revoked through B.
    let lease = a
        .backend()
        .lease_grant(0, 600)
        .await
        .expect("lease grant on A");
    written(
        other.create(b"/x2/leased", b"l".to_vec(), lease.id).await,
        "create through B with A's lease",
    );
    let status = other
        .backend()
        .lease_time_to_live(lease.id, true)
        .await
        .expect("time to live on B");
    assert_eq!(status.keys, vec![b"/x2/leased".to_vec()]);
    other
        .backend()
        .lease_revoke(lease.id)
        .await
        .expect("revoke on B");
    assert_eq!(
        get(&a, "/x2/leased", 0).await,
        None,
        "revoked through B, gone on A"
    );

    // A compaction through A holds for B.
    let at = rev(&a).await - 10;
    a.compact(at).await.expect("compact through A");
    match other.get(b"/x2/k1", at - 1).await {
        Err(Error::Compacted {
            compact_revision, ..
        }) => assert_eq!(compact_revision, at),
        other => panic!("a read on B below A's compaction: expected Compacted, got {other:?}"),
    }
    assert!(other.get(b"/x2/k1", at).await.is_ok());
}

async fn txn_duplicate_key(b: &TestBackend) {
    let s = b.connect().await;
    create(&s, "/dup/a", "a").await;
    let r = rev(&s).await;
    let delete_op = |key: &str, range_end: RangeEnd| {
        TxnOp::Delete(DeleteRequest {
            key: key.as_bytes().to_vec(),
            range_end,
            prev_kv: false,
        })
    };
    let refused = [
        (
            "two puts of one key",
            vec![put_op("/dup/a", "1"), put_op("/dup/a", "2")],
        ),
        (
            "a put and a delete of one key",
            vec![put_op("/dup/a", "1"), delete_op("/dup/a", RangeEnd::Single)],
        ),
        (
            "a put into a deleted range",
            vec![
                delete_op("/dup/", RangeEnd::prefix(b"/dup/")),
                put_op("/dup/b", "1"),
            ],
        ),
    ];
    for (what, success) in refused {
        let req = TxnRequest {
            compare: vec![],
            success,
            failure: vec![],
        };
        match s.backend().txn(req).await {
            Err(Error::InvalidRequest(_)) => {}
            other => panic!("{what} in one transaction: expected InvalidRequest, got {other:?}"),
        }
    }
    assert_eq!(rev(&s).await, r, "refused transactions write nothing");
    assert_eq!(
        get(&s, "/dup/a", 0).await.map(|kv| kv.value),
        Some(b"a".to_vec())
    );

    // The same key in the two branches is fine.
    let resp = txn(
        &s,
        TxnRequest {
            compare: vec![Compare::new(
                "/dup/a",
                CompareOp::Equal,
                CompareTarget::Version(1),
            )],
            success: vec![put_op("/dup/a", "s")],
            failure: vec![put_op("/dup/a", "f")],
        },
    )
    .await;
    assert!(resp.succeeded);
    assert_eq!(resp.revision, r + 1);
}

async fn put_ignore_value_and_lease(b: &TestBackend) {
    let s = b.connect().await;
    let lease = s
        .backend()
        .lease_grant(0, 600)
        .await
        .expect("lease grant")
        .id;
    let r1 = written(
        s.create(b"/pi/a", b"v".to_vec(), lease).await,
        "create with a lease",
    );
    let put = |req: PutRequest| TxnRequest {
        compare: vec![],
        success: vec![TxnOp::Put(req)],
        failure: vec![],
    };
    let resp = txn(
        &s,
        put(PutRequest {
            key: b"/pi/a".to_vec(),
            ignore_value: true,
            lease,
            ..PutRequest::default()
        }),
    )
    .await;
    assert_eq!(resp.revision, r1 + 1);
    assert_eq!(
        get(&s, "/pi/a", 0).await,
        Some(kv("/pi/a", "v", r1, r1 + 1, 2, lease)),
        "ignore_value keeps the value"
    );
    txn(
        &s,
        put(PutRequest {
            key: b"/pi/a".to_vec(),
            value: b"w".to_vec(),
            ignore_lease: true,
            ..PutRequest::default()
        }),
    )
    .await;
    assert_eq!(
        get(&s, "/pi/a", 0).await,
        Some(kv("/pi/a", "w", r1, r1 + 2, 3, lease)),
        "ignore_lease keeps the lease"
    );
    for (what, req) in [
        (
            "ignore_value",
            PutRequest {
                key: b"/pi/missing".to_vec(),
                ignore_value: true,
                ..PutRequest::default()
            },
        ),
        (
            "ignore_lease",
            PutRequest {
                key: b"/pi/missing".to_vec(),
                value: b"x".to_vec(),
                ignore_lease: true,
                ..PutRequest::default()
            },
        ),
    ] {
        let result = s.backend().txn(put(req)).await;
        assert!(
            result.is_err(),
            "{what} on a missing key must fail, got {result:?}"
        );
    }
    assert_eq!(rev(&s).await, r1 + 2);
    assert_eq!(get(&s, "/pi/missing", 0).await, None);
}

async fn range_ends_and_binary_keys(b: &TestBackend) {
    let s = b.connect().await;
    let all: Vec<Vec<u8>> = vec![
        b"/re/\x00".to_vec(),
        b"/re/a".to_vec(),
        b"/re/b".to_vec(),
        b"/re/c".to_vec(),
        b"/re/\xff".to_vec(),
        b"/re/\xff\xff".to_vec(),
        b"/rf".to_vec(),
    ];
    let binary_value: Vec<u8> = (0..=255u8).collect();
    // Written in reverse, so that key order is not write order.
    for key in all.iter().rev() {
        written(
            s.create(key, binary_value.clone(), 0).await,
            "create a binary key",
        );
    }
    let range = |key: &[u8], range_end: RangeEnd| RangeRequest {
        key: key.to_vec(),
        range_end,
        ..RangeRequest::default()
    };
    let read = async |req: RangeRequest| -> Vec<Vec<u8>> {
        let resp = s
            .backend()
            .range(req.clone())
            .await
            .unwrap_or_else(|e| panic!("{req:?}: {e}"));
        assert_eq!(resp.count, resp.kvs.len() as i64, "{req:?}");
        for kv in &resp.kvs {
            assert_eq!(kv.value, binary_value, "binary values round-trip");
        }
        resp.kvs.into_iter().map(|kv| kv.key).collect()
    };
    assert_eq!(
        read(range(b"/re/", RangeEnd::prefix(b"/re/"))).await,
        all[..6],
        "bytewise key order"
    );
    assert_eq!(
        read(range(b"/re/a", RangeEnd::Before(b"/re/c".to_vec()))).await,
        all[1..3]
    );
    assert_eq!(read(range(b"/re/b", RangeEnd::Unbounded)).await, all[2..]);
    assert_eq!(read(range(b"/re/b", RangeEnd::Single)).await, all[2..3]);
    assert_eq!(
        read(range(b"/re/bb", RangeEnd::Single)).await,
        Vec::<Vec<u8>>::new()
    );
    assert_eq!(read(range(b"\x00", RangeEnd::Unbounded)).await, all);
    assert_eq!(
        read(range(b"/re/\xff", RangeEnd::prefix(b"/re/\xff"))).await,
        all[4..6],
        "a prefix ending in 0xff"
    );
    let resp = s
        .backend()
        .range(RangeRequest {
            key: vec![0],
            range_end: RangeEnd::Unbounded,
            count_only: true,
            ..RangeRequest::default()
        })
        .await
        .expect("count everything");
    assert_eq!(resp.count, 7);

    let start = rev(&s).await + 1;
    let mut w = s
        .watch_prefix(b"/re/\xff", 0, false)
        .await
        .expect("watch a binary prefix");
    for key in &all {
        let (_, current) = s.get(key, 0).await.expect("get");
        let current = current.expect("written above");
        written(
            s.update(key, b"x".to_vec(), current.mod_revision, 0).await,
            "update a binary key",
        );
    }
    let got: Vec<_> = events(&mut w, 2, "the binary prefix watch")
        .await
        .into_iter()
        .map(|e| (e.kv.mod_revision, e.kv.key))
        .collect();
    assert_eq!(
        got,
        vec![(start + 4, all[4].clone()), (start + 5, all[5].clone())]
    );
}

async fn large_value(b: &TestBackend) {
    let s = b.connect().await;
    let value: Vec<u8> = (0..1024 * 1024).map(|i: u32| (i % 251) as u8).collect();
    let mut w = watch(&s, "/big/", 0, true).await;
    let r1 = written(
        s.create(b"/big/a", value.clone(), 0).await,
        "create a 1 MiB value",
    );
    let got = get(&s, "/big/a", 0).await.expect("the large key");
    assert!(got.value == value, "the 1 MiB value reads back intact");
    let mut second = value.clone();
    second.reverse();
    let r2 = written(
        s.update(b"/big/a", second.clone(), r1, 0).await,
        "update it",
    );
    let got = events(&mut w, 2, "the large value's events").await;
    assert!(
        got[0].kv.value == value && got[1].kv.value == second,
        "values in events"
    );
    assert!(
        got[1].prev_kv.as_ref().is_some_and(|p| p.value == value),
        "prev_kv carries the large value"
    );
    assert_eq!((got[0].kv.mod_revision, got[1].kv.mod_revision), (r1, r2));
}

async fn concurrent_cas_one_wins(b: &TestBackend) {
    let s = b.connect().await;
    const RACERS: usize = 16;
    let r0 = rev(&s).await;
    for round in 0..8 {
        let key = format!("/cas/k{round}");
        let race = |op: u8, expected: i64| {
            let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(RACERS));
            let tasks: Vec<_> = (0..RACERS)
                .map(|i| {
                    let s = s.clone();
                    let key = key.clone();
                    let barrier = barrier.clone();
                    tokio::spawn(async move {
                        barrier.wait().await;
                        let value = format!("racer {i}").into_bytes();
                        let outcome = match op {
                            0 => s.create(key.as_bytes(), value, 0).await,
                            1 => s.update(key.as_bytes(), value, expected, 0).await,
                            _ => s.delete(key.as_bytes(), Some(expected)).await,
                        };
                        (
                            i,
                            outcome.unwrap_or_else(|e| panic!("racer {i} on {key}: {e}")),
                        )
                    })
                })
                .collect();
            async move {
                let mut results = Vec::new();
                for task in tasks {
                    results.push(task.await.expect("racer task"));
                }
                results
            }
        };
        for (op, what) in [(0u8, "create"), (1, "update"), (2, "delete")] {
            let expected = get(&s, &key, 0).await.map_or(0, |kv| kv.mod_revision);
            let results = race(op, expected).await;
            let winners: Vec<(usize, i64)> = results
                .iter()
                .filter_map(|(i, o)| match o {
                    WriteOutcome::Written { revision } => Some((*i, *revision)),
                    WriteOutcome::Conflict { .. } => None,
                })
                .collect();
            assert_eq!(
                winners.len(),
                1,
                "round {round}: one {what} of {key} wins: {results:?}"
            );
            let (winner, revision) = winners[0];
            let now = get(&s, &key, 0).await;
            match op {
                2 => assert_eq!(now, None),
                _ => {
                    let now = now.expect("written");
                    assert_eq!(now.value, format!("racer {winner}").into_bytes());
                    assert_eq!(now.mod_revision, revision);
                }
            }
            for (i, outcome) in &results {
                if let WriteOutcome::Conflict { current } = outcome {
                    assert_eq!(
                        current,
                        &get(&s, &key, 0).await,
                        "round {round}: racer {i} lost the {what} and sees the winner's key"
                    );
                }
            }
        }
    }
    assert_eq!(rev(&s).await, r0 + 8 * 3, "exactly one write per race");
}

async fn watch_behind_compaction(b: &TestBackend) {
    let s = b.connect_with(|c| c.datastore_compact_interval = 0).await;
    let start = rev(&s).await + 1;
    // Not read while the history is written and compacted.
    let mut w = watch(&s, "/wc/", start, false).await;
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let s = s.clone();
            tokio::spawn(async move {
                let mut done = Vec::new();
                for i in 0..75 {
                    let key = format!("/wc/t{t}-{i}");
                    let r = written(s.create(key.as_bytes(), b"v".to_vec(), 0).await, &key);
                    done.push((r, key, Some("v".to_string())));
                }
                done
            })
        })
        .collect();
    let mut log: Vec<Write> = Vec::new();
    for task in tasks {
        log.extend(task.await.expect("writer"));
    }
    log.sort();
    let head = rev(&s).await;
    let at = head - 5;
    s.compact(at).await.expect("compact");

    // The watch is either caught up in full, or delivers a gapless prefix and then says it
    // was compacted, and ends.
    let mut got: Vec<Write> = Vec::new();
    let mut compacted = None;
    while got.len() < log.len() {
        match next_response(&mut w, "a watch behind a compaction").await {
            WatchResponse::Events { events, .. } => got.extend(events.iter().map(summary)),
            WatchResponse::Progress { .. } => {}
            WatchResponse::Compacted { compact_revision } => {
                compacted = Some(compact_revision);
                break;
            }
        }
    }
    assert!(got.len() <= log.len(), "more events than writes");
    assert_eq!(
        got,
        log[..got.len()],
        "what was delivered is the history, in order, without gaps"
    );
    match compacted {
        Some(compact_revision) => {
            assert_eq!(compact_revision, at);
            assert!(
                matches!(tokio::time::timeout(WAIT, w.next()).await, Ok(None)),
                "the watch ends after telling it was compacted"
            );
        }
        None => assert_eq!(got.len(), log.len()),
    }
}

async fn lease_keep_alive_extends(b: &TestBackend) {
    let s = b.connect().await;
    let backend = s.backend();
    let lease = backend.lease_grant(0, 3).await.expect("lease grant");
    written(
        s.create(b"/lk/a", b"a".to_vec(), lease.id).await,
        "create with the lease",
    );
    // Kept alive every 300 ms for twice its TTL, the lease and its key live on.
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let kept = backend
            .lease_keep_alive(lease.id)
            .await
            .expect("keep alive");
        assert_eq!(kept, lease);
    }
    assert!(
        get(&s, "/lk/a", 0).await.is_some(),
        "a kept-alive lease keeps its key"
    );
    // Left alone, it expires.
    let s2 = s.clone();
    eventually(
        Duration::from_secs(20),
        "the lease to expire after the keep-alives stop",
        move || {
            let s = s2.clone();
            async move {
                s.get(b"/lk/a", 0)
                    .await
                    .expect("get")
                    .1
                    .is_none()
                    .then_some(())
            }
        },
    )
    .await;
    match backend.lease_keep_alive(lease.id).await {
        Err(Error::LeaseNotFound(id)) => assert_eq!(id, lease.id),
        other => panic!("keep-alive of an expired lease: expected LeaseNotFound, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// A watcher far behind: more batches than the SQL hub's broadcast buffer keeps (4096), so it must
// catch up from the log. Only on the backends fast enough to write that much in seconds here:
// SQLite (the hub is the same code for all three SQL databases) and etcd.

const LAGGING_WRITES: usize = 6000;

async fn watch_lagging_consumer(b: &TestBackend) {
    let s = b.connect_with(|c| c.datastore_compact_interval = 0).await;
    let start = rev(&s).await + 1;
    let mut w = watch(&s, "/lag/", start, true).await;
    // One write at a time, so that each is a batch of its own.
    let mut log: Vec<Write> = Vec::with_capacity(LAGGING_WRITES);
    for i in 0..LAGGING_WRITES {
        let key = format!("/lag/k{:02}", i % 100);
        let value = i.to_string();
        let put = TxnRequest {
            compare: vec![],
            success: vec![put_op(&key, &value)],
            failure: vec![],
        };
        log.push((txn(&s, put).await.revision, key, Some(value)));
    }
    assert_eq!(log[0].0, start);
    let got = events(&mut w, LAGGING_WRITES, "the lagging watcher").await;
    let summaries: Vec<Write> = got.iter().map(summary).collect();
    assert!(
        summaries == log,
        "the lagging watcher's events differ from the log"
    );
    let mut last: HashMap<Vec<u8>, KeyValue> = HashMap::new();
    for event in got {
        assert_eq!(
            event.prev_kv,
            last.get(&event.kv.key).cloned(),
            "prev_kv of {:?}",
            summary(&event)
        );
        last.insert(event.kv.key.clone(), event.kv);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_watch_lagging_consumer() {
    run(
        Kind::Sqlite,
        "watch_lagging_consumer",
        watch_lagging_consumer,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_watch_lagging_consumer() {
    run(Kind::Etcd, "watch_lagging_consumer", watch_lagging_consumer).await;
}
