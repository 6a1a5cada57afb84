//! The etcd backend against a real etcd (Debian's etcd 3.4): what is specific to etcd (error
//! mapping, compaction, progress, leases, reconnecting watches, connection errors). The
//! behaviours every backend shares are in the conformance suite.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rk3s_datastore::{
    Compare, CompareOp, CompareTarget, Config, DeleteRequest, Error, EventKind, KeyValue,
    ListOptions, PutRequest, RangeEnd, RangeRequest, Store, TxnOp, TxnOpResponse, TxnRequest,
    Watch, WatchResponse, WriteOutcome, connect, testing,
};

/// How long a test waits for one watch response, a connection or a lease expiry before it
/// fails. Generous: the machine has two cores and runs tests in parallel.
const WAIT: Duration = Duration::from_secs(30);

async fn start() -> (testing::EtcdProcess, Store) {
    let etcd = tokio::task::spawn_blocking(testing::EtcdProcess::start)
        .await
        .expect("etcd start task")
        .expect("start etcd");
    let store = connect(&Config::for_endpoint(etcd.endpoint.clone()))
        .await
        .expect("connect to etcd");
    (etcd, store)
}

async fn next(watch: &mut Watch, what: &str) -> WatchResponse {
    match tokio::time::timeout(WAIT, watch.next()).await {
        Ok(Some(Ok(resp))) => resp,
        Ok(Some(Err(e))) => panic!("watch failed while waiting for {what}: {e}"),
        Ok(None) => panic!("watch ended while waiting for {what}"),
        Err(_) => panic!("no watch response within {WAIT:?} while waiting for {what}"),
    }
}

fn written(outcome: WriteOutcome) -> i64 {
    match outcome {
        WriteOutcome::Written { revision } => revision,
        other => panic!("expected a write, got {other:?}"),
    }
}

async fn put(store: &Store, key: &str, value: &str) -> i64 {
    put_with_lease(store, key, value, 0).await
}

async fn put_with_lease(store: &Store, key: &str, value: &str, lease: i64) -> i64 {
    let resp = store
        .backend()
        .txn(TxnRequest {
            success: vec![TxnOp::Put(PutRequest {
                key: key.into(),
                value: value.into(),
                lease,
                ..PutRequest::default()
            })],
            ..TxnRequest::default()
        })
        .await
        .expect("put");
    assert!(resp.succeeded);
    resp.revision
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guarded_create_update_delete() {
    let (_etcd, store) = start().await;
    assert_eq!(store.backend().name(), "etcd");

    let created = written(store.create(b"/a", b"1".to_vec(), 0).await.expect("create"));
    match store
        .create(b"/a", b"2".to_vec(), 0)
        .await
        .expect("second create")
    {
        WriteOutcome::Conflict { current: Some(kv) } => {
            assert_eq!(kv.value, b"1");
            assert_eq!(kv.mod_revision, created);
            assert_eq!(kv.create_revision, created);
            assert_eq!(kv.version, 1);
        }
        other => panic!("create of an existing key must conflict with it, got {other:?}"),
    }

    let updated = written(
        store
            .update(b"/a", b"2".to_vec(), created, 0)
            .await
            .expect("update"),
    );
    assert_eq!(updated, created + 1);
    match store
        .update(b"/a", b"3".to_vec(), created, 0)
        .await
        .expect("stale update")
    {
        WriteOutcome::Conflict { current: Some(kv) } => {
            assert_eq!(
                (kv.value.as_slice(), kv.mod_revision, kv.version),
                (&b"2"[..], updated, 2)
            );
        }
        other => panic!("stale update must conflict, got {other:?}"),
    }

    match store
        .delete(b"/a", Some(created))
        .await
        .expect("stale delete")
    {
        WriteOutcome::Conflict { current: Some(kv) } => assert_eq!(kv.mod_revision, updated),
        other => panic!("stale delete must conflict, got {other:?}"),
    }
    let deleted = written(store.delete(b"/a", Some(updated)).await.expect("delete"));
    assert_eq!(deleted, updated + 1);
    assert_eq!(store.get(b"/a", 0).await.expect("get").1, None);
    match store.delete(b"/a", None).await.expect("delete missing") {
        WriteOutcome::Conflict { current: None } => {}
        other => panic!("deleting a missing key is a conflict with nothing, got {other:?}"),
    }
    assert_eq!(store.current_revision().await.expect("revision"), deleted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_limit_more_count() {
    let (_etcd, store) = start().await;
    for i in 0..5 {
        put(&store, &format!("/pods/p{i}"), &format!("v{i}")).await;
    }
    put(&store, "/pods0", "outside").await;
    put(&store, "/other", "outside").await;

    let page = store
        .list(
            b"/pods/",
            ListOptions {
                limit: 2,
                ..ListOptions::default()
            },
        )
        .await
        .expect("first page");
    assert_eq!(keys(&page.kvs), ["/pods/p0", "/pods/p1"]);
    assert!(page.more);
    assert_eq!(page.count, 5);

    let rest = store
        .list(
            b"/pods/",
            ListOptions {
                continue_after: Some(b"/pods/p1".to_vec()),
                ..ListOptions::default()
            },
        )
        .await
        .expect("rest");
    assert_eq!(keys(&rest.kvs), ["/pods/p2", "/pods/p3", "/pods/p4"]);
    assert!(!rest.more);
    assert_eq!(rest.count, 3);

    let keys_only = store
        .list(
            b"/pods/",
            ListOptions {
                keys_only: true,
                ..ListOptions::default()
            },
        )
        .await
        .expect("keys only");
    assert_eq!(keys_only.kvs.len(), 5);
    assert!(
        keys_only
            .kvs
            .iter()
            .all(|kv| kv.value.is_empty() && kv.mod_revision > 0)
    );

    let count = store
        .list(
            b"/pods/",
            ListOptions {
                count_only: true,
                ..ListOptions::default()
            },
        )
        .await
        .expect("count only");
    assert!(count.kvs.is_empty());
    assert_eq!(count.count, 5);

    // The empty prefix is every key.
    let all = store
        .list(b"", ListOptions::default())
        .await
        .expect("all keys");
    assert_eq!(all.count, 7);
}

fn keys(kvs: &[KeyValue]) -> Vec<String> {
    kvs.iter()
        .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_at_old_revisions_and_compaction() {
    let (_etcd, store) = start().await;
    let r1 = put(&store, "/k", "one").await;
    let r2 = put(&store, "/k", "two").await;
    let r3 = put(&store, "/k", "three").await;

    let (at, kv) = store.get(b"/k", r1).await.expect("get at r1");
    assert_eq!(kv.expect("key at r1").value, b"one");
    assert_eq!(at, r3, "etcd reports its current revision in the header");
    let list = store
        .list(
            b"/",
            ListOptions {
                revision: r2,
                ..ListOptions::default()
            },
        )
        .await
        .expect("list at r2");
    assert_eq!(list.kvs[0].value, b"two");

    let status = store.status().await.expect("status");
    assert_eq!(status.backend, "etcd");
    assert!(status.version.starts_with("3."), "{status:?}");
    assert_eq!(status.revision, r3);
    assert_eq!(status.compact_revision, 0);
    assert!(status.db_size > 0);

    let head = store.compact(r2).await.expect("compact");
    assert_eq!(head, r3);
    assert_eq!(store.status().await.expect("status").compact_revision, r2);

    match store.get(b"/k", r1).await {
        Err(Error::Compacted {
            requested,
            compact_revision,
        }) => {
            assert_eq!((requested, compact_revision), (r1, r2));
        }
        other => panic!("a read below the compact revision must fail, got {other:?}"),
    }
    let (_, kv) = store
        .get(b"/k", r2)
        .await
        .expect("the compact revision itself stays readable");
    assert_eq!(kv.expect("key at r2").value, b"two");

    match store.compact(r2).await {
        Err(Error::Compacted {
            requested,
            compact_revision,
        }) => {
            assert_eq!((requested, compact_revision), (r2, r2));
        }
        other => panic!("compacting again at the compact revision must fail, got {other:?}"),
    }
    match store.compact(r3 + 10).await {
        Err(Error::FutureRevision { requested, current }) => {
            assert_eq!((requested, current), (r3 + 10, r3));
        }
        other => panic!("compacting a future revision must fail, got {other:?}"),
    }
    match store.get(b"/k", r3 + 1).await {
        Err(Error::FutureRevision { requested, current }) => {
            assert_eq!((requested, current), (r3 + 1, r3));
        }
        other => panic!("a read at a future revision must fail, got {other:?}"),
    }

    // A transaction reading below the compact revision fails the same way.
    let txn = store
        .backend()
        .txn(TxnRequest {
            success: vec![TxnOp::Range(RangeRequest {
                key: b"/k".to_vec(),
                revision: r1,
                ..RangeRequest::default()
            })],
            ..TxnRequest::default()
        })
        .await;
    assert!(
        matches!(txn, Err(Error::Compacted { requested, compact_revision }) if requested == r1 && compact_revision == r2),
        "{txn:?}"
    );

    // A watch from a compacted revision says so and ends.
    let mut watch = store.watch_prefix(b"/", r1, false).await.expect("watch");
    assert_eq!(
        next(&mut watch, "the compaction notice").await,
        WatchResponse::Compacted {
            compact_revision: r2
        }
    );
    assert!(
        tokio::time::timeout(WAIT, watch.next())
            .await
            .expect("watch ends")
            .is_none(),
        "a compacted watch ends"
    );

    // A watch from the compact revision replays from there.
    let mut watch = store
        .watch_prefix(b"/", r2, false)
        .await
        .expect("watch at r2");
    let mut seen = Vec::new();
    while seen.len() < 2 {
        match next(&mut watch, "the replay from the compact revision").await {
            WatchResponse::Events { events, .. } => {
                seen.extend(events.into_iter().map(|e| (e.kv.mod_revision, e.kv.value)));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(seen, [(r2, b"two".to_vec()), (r3, b"three".to_vec())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_with_prev_kv_across_put_and_delete() {
    let (_etcd, store) = start().await;
    let mut watch = store.watch_prefix(b"/w/", 0, true).await.expect("watch");
    let r1 = put(&store, "/w/a", "1").await;
    put(&store, "/elsewhere", "x").await;
    let r2 = put(&store, "/w/a", "2").await;
    let r3 = written(store.delete(b"/w/a", None).await.expect("delete"));

    let mut events = Vec::new();
    while events.len() < 3 {
        match next(&mut watch, "three events").await {
            WatchResponse::Events {
                revision,
                events: batch,
            } => {
                let last = batch
                    .last()
                    .expect("an events response has events")
                    .kv
                    .mod_revision;
                assert!(
                    revision >= last,
                    "response revision {revision} below its events' {last}"
                );
                events.extend(batch);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(events[0].kind, EventKind::Put);
    assert_eq!(
        events[0].kv,
        KeyValue {
            key: b"/w/a".to_vec(),
            create_revision: r1,
            mod_revision: r1,
            version: 1,
            value: b"1".to_vec(),
            lease: 0
        }
    );
    assert_eq!(events[0].prev_kv, None);
    assert_eq!(events[1].kind, EventKind::Put);
    assert_eq!((events[1].kv.mod_revision, events[1].kv.version), (r2, 2));
    assert_eq!(
        events[1].prev_kv.as_ref().map(|kv| kv.value.clone()),
        Some(b"1".to_vec())
    );
    assert_eq!(events[2].kind, EventKind::Delete);
    assert_eq!(
        events[2].kv,
        KeyValue {
            key: b"/w/a".to_vec(),
            mod_revision: r3,
            ..KeyValue::default()
        }
    );
    assert_eq!(
        events[2]
            .prev_kv
            .as_ref()
            .map(|kv| (kv.value.clone(), kv.mod_revision)),
        Some((b"2".to_vec(), r2))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_requests_are_answered_after_pending_events() {
    let (_etcd, store) = start().await;

    // A watch in sync: the answer covers writes made before the request, in range or not.
    let mut watch = store.watch_prefix(b"/p/", 0, false).await.expect("watch");
    let in_range = put(&store, "/p/x", "1").await;
    match next(&mut watch, "the put").await {
        WatchResponse::Events { events, .. } => assert_eq!(events[0].kv.mod_revision, in_range),
        other => panic!("unexpected {other:?}"),
    }
    let outside = put(&store, "/q", "1").await;
    watch.request_progress();
    match next(&mut watch, "the progress answer").await {
        WatchResponse::Progress { revision } => {
            assert!(revision >= outside, "{revision} < {outside}")
        }
        other => panic!("expected progress, got {other:?}"),
    }

    // A watch that starts in the past and is asked at once: every event of its history
    // arrives before the answer.
    let mut revisions = Vec::new();
    for i in 0..20 {
        revisions.push(put(&store, &format!("/p/k{i}"), "v").await);
    }
    let mut watch = store
        .watch_prefix(b"/p/", in_range, false)
        .await
        .expect("watch from the past");
    watch.request_progress();
    let mut seen = Vec::new();
    let progress = loop {
        match next(&mut watch, "history, then progress").await {
            WatchResponse::Events { events, .. } => {
                seen.extend(events.iter().map(|e| e.kv.mod_revision))
            }
            WatchResponse::Progress { revision } => break revision,
            other => panic!("unexpected {other:?}"),
        }
    };
    let mut expected = vec![in_range];
    expected.extend(&revisions);
    assert_eq!(seen, expected, "the progress answer overtook events");
    assert!(progress >= *revisions.last().expect("revisions"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn txn_maps_every_operation() {
    let (_etcd, store) = start().await;
    let r1 = put(&store, "/t/a", "a1").await;
    put(&store, "/t/b", "b1").await;
    let resp = store
        .backend()
        .txn(TxnRequest {
            compare: vec![
                Compare::new(
                    "/t/a",
                    CompareOp::Equal,
                    CompareTarget::Value(b"a1".to_vec()),
                ),
                Compare::new("/t/a", CompareOp::Less, CompareTarget::ModRevision(r1 + 1)),
                Compare::new("/t/missing", CompareOp::Equal, CompareTarget::Version(0)),
            ],
            success: vec![
                TxnOp::Put(PutRequest {
                    key: b"/t/a".to_vec(),
                    value: b"a2".to_vec(),
                    prev_kv: true,
                    ..PutRequest::default()
                }),
                TxnOp::Delete(DeleteRequest {
                    key: b"/t/b".to_vec(),
                    range_end: RangeEnd::Before(b"/t/c".to_vec()),
                    prev_kv: true,
                }),
                TxnOp::Range(RangeRequest {
                    key: b"/t/".to_vec(),
                    range_end: RangeEnd::prefix(b"/t/"),
                    ..RangeRequest::default()
                }),
            ],
            failure: vec![],
        })
        .await
        .expect("txn");
    assert!(resp.succeeded);
    assert_eq!(resp.responses.len(), 3);
    match &resp.responses[0] {
        TxnOpResponse::Put(p) => {
            assert_eq!(
                p.prev_kv.as_ref().map(|kv| kv.value.clone()),
                Some(b"a1".to_vec())
            );
        }
        other => panic!("expected a put response, got {other:?}"),
    }
    match &resp.responses[1] {
        TxnOpResponse::Delete(d) => {
            assert_eq!(d.deleted, 1);
            assert_eq!(keys(&d.prev_kvs), ["/t/b"]);
        }
        other => panic!("expected a delete response, got {other:?}"),
    }
    match &resp.responses[2] {
        TxnOpResponse::Range(r) => {
            assert_eq!(keys(&r.kvs), ["/t/a"]);
            assert_eq!(
                r.kvs[0].mod_revision, resp.revision,
                "the range sees the put"
            );
            assert_eq!(r.revision, resp.revision);
        }
        other => panic!("expected a range response, got {other:?}"),
    }

    // A failing compare runs the failure branch and writes nothing.
    let resp2 = store
        .backend()
        .txn(TxnRequest {
            compare: vec![Compare::new(
                "/t/a",
                CompareOp::Equal,
                CompareTarget::Version(1),
            )],
            success: vec![TxnOp::Delete(DeleteRequest {
                key: b"/t/a".to_vec(),
                ..DeleteRequest::default()
            })],
            failure: vec![TxnOp::Range(RangeRequest {
                key: b"/t/a".to_vec(),
                ..RangeRequest::default()
            })],
        })
        .await
        .expect("failing txn");
    assert!(!resp2.succeeded);
    assert_eq!(resp2.revision, resp.revision);

    // ignore_value keeps the value and moves the key to a new lease.
    let lease = store.backend().lease_grant(0, 60).await.expect("grant");
    let resp3 = store
        .backend()
        .txn(TxnRequest {
            success: vec![TxnOp::Put(PutRequest {
                key: b"/t/a".to_vec(),
                lease: lease.id,
                ignore_value: true,
                ..PutRequest::default()
            })],
            ..TxnRequest::default()
        })
        .await
        .expect("ignore_value put");
    let (_, kv) = store.get(b"/t/a", 0).await.expect("get");
    let kv = kv.expect("key");
    assert_eq!(
        (kv.value.as_slice(), kv.lease, kv.mod_revision),
        (&b"a2"[..], lease.id, resp3.revision)
    );

    // ignore_value on a missing key is a bad request, not a backend failure.
    let err = store
        .backend()
        .txn(TxnRequest {
            success: vec![TxnOp::Put(PutRequest {
                key: b"/t/missing".to_vec(),
                ignore_value: true,
                ..PutRequest::default()
            })],
            ..TxnRequest::default()
        })
        .await
        .expect_err("ignore_value on a missing key");
    assert!(matches!(err, Error::InvalidRequest(_)), "{err:?}");

    // A put with an unknown lease is refused as such.
    let err = store
        .backend()
        .txn(TxnRequest {
            success: vec![TxnOp::Put(PutRequest {
                key: b"/t/z".to_vec(),
                value: b"z".to_vec(),
                lease: 0x1234,
                ..PutRequest::default()
            })],
            ..TxnRequest::default()
        })
        .await
        .expect_err("unknown lease");
    assert!(matches!(err, Error::LeaseNotFound(0x1234)), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_grant_keep_alive_revoke() {
    let (_etcd, store) = start().await;
    let backend = store.backend();

    let chosen = backend.lease_grant(0, 60).await.expect("grant");
    assert!(chosen.id != 0);
    assert_eq!(chosen.ttl, 60);
    let mine = backend
        .lease_grant(0x7e57, 60)
        .await
        .expect("grant with id");
    assert_eq!(mine.id, 0x7e57);
    assert!(matches!(
        backend.lease_grant(0x7e57, 60).await,
        Err(Error::LeaseExists(0x7e57))
    ));

    put_with_lease(&store, "/l/a", "a", mine.id).await;
    put_with_lease(&store, "/l/b", "b", mine.id).await;
    let status = backend
        .lease_time_to_live(mine.id, true)
        .await
        .expect("time to live");
    assert_eq!(status.id, mine.id);
    assert_eq!(status.granted_ttl, 60);
    assert!(status.ttl > 0 && status.ttl <= 60, "{status:?}");
    let mut lease_keys = status.keys.clone();
    lease_keys.sort();
    assert_eq!(lease_keys, [b"/l/a".to_vec(), b"/l/b".to_vec()]);
    assert!(
        backend
            .lease_time_to_live(mine.id, false)
            .await
            .expect("ttl")
            .keys
            .is_empty()
    );

    let mut leases = backend.leases().await.expect("leases");
    leases.sort();
    let mut expected = vec![chosen.id, mine.id];
    expected.sort();
    assert_eq!(leases, expected);

    let kept = backend.lease_keep_alive(mine.id).await.expect("keep alive");
    assert_eq!(
        kept,
        rk3s_datastore::Lease {
            id: mine.id,
            ttl: 60
        }
    );

    let before = store.current_revision().await.expect("revision");
    let revoked_at = backend.lease_revoke(mine.id).await.expect("revoke");
    assert_eq!(
        revoked_at,
        before + 1,
        "revoking deletes both keys in one revision"
    );
    assert_eq!(store.get(b"/l/a", 0).await.expect("get").1, None);
    assert_eq!(store.get(b"/l/b", 0).await.expect("get").1, None);
    let gone = backend
        .lease_time_to_live(mine.id, true)
        .await
        .expect("ttl of a revoked lease");
    assert_eq!((gone.ttl, gone.keys.len()), (-1, 0));
    assert!(matches!(
        backend.lease_keep_alive(mine.id).await,
        Err(Error::LeaseNotFound(0x7e57))
    ));
    assert!(matches!(
        backend.lease_revoke(mine.id).await,
        Err(Error::LeaseNotFound(0x7e57))
    ));
    assert_eq!(backend.leases().await.expect("leases"), [chosen.id]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_lease_deletes_its_keys() {
    let (_etcd, store) = start().await;
    let lease = store.backend().lease_grant(0, 1).await.expect("grant");
    let mut watch = store.watch_prefix(b"/e/", 0, false).await.expect("watch");
    let written_at = put_with_lease(&store, "/e/k", "v", lease.id).await;
    match next(&mut watch, "the put").await {
        WatchResponse::Events { events, .. } => assert_eq!(events[0].kind, EventKind::Put),
        other => panic!("unexpected {other:?}"),
    }
    // No keep-alive: etcd expires the lease (its minimum TTL is a few seconds) and deletes the key.
    match next(&mut watch, "the expiry's delete").await {
        WatchResponse::Events { events, .. } => {
            assert_eq!(events[0].kind, EventKind::Delete);
            assert_eq!(events[0].kv.key, b"/e/k");
            assert!(events[0].kv.mod_revision > written_at);
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(store.get(b"/e/k", 0).await.expect("get").1, None);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let status = store
            .backend()
            .lease_time_to_live(lease.id, false)
            .await
            .expect("ttl");
        if status.ttl == -1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "lease still alive: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_is_idempotent_and_ends_watches() {
    let (_etcd, store) = start().await;
    let mut watch = store.watch_prefix(b"/c/", 0, false).await.expect("watch");
    store.close().await;
    store.close().await;
    assert!(
        tokio::time::timeout(WAIT, watch.next())
            .await
            .expect("watch ends on close")
            .is_none(),
        "the watch ends when the store closes"
    );
    assert!(matches!(store.get(b"/c/a", 0).await, Err(Error::Closed)));
    assert!(matches!(
        store.watch_prefix(b"/c/", 0, false).await,
        Err(Error::Closed)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_endpoint_is_named() {
    let port = testing::free_port().expect("free port");
    let endpoint = format!("http://127.0.0.1:{port}");
    let err = connect(&Config::for_endpoint(endpoint.clone()))
        .await
        .expect_err("nothing listens there");
    assert!(matches!(err, Error::Connect { .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains(&endpoint),
        "the error names the endpoint: {message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_tls_file_is_named() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = dir.path().join("no-such-ca.pem");
    let port = testing::free_port().expect("free port");
    let config = Config {
        datastore_cafile: Some(ca.clone()),
        ..Config::for_endpoint(format!("https://127.0.0.1:{port}"))
    };
    let message = connect(&config)
        .await
        .expect_err("missing CA file")
        .to_string();
    assert!(
        message.contains(&ca.display().to_string()),
        "the error names the file: {message}"
    );

    // A certificate without a readable key names the key file.
    let cert = dir.path().join("client.pem");
    std::fs::write(&cert, "not really a certificate").expect("write cert");
    let key = dir.path().join("no-such-key.pem");
    let config = Config {
        datastore_certfile: Some(cert),
        datastore_keyfile: Some(key.clone()),
        ..Config::for_endpoint(format!("https://127.0.0.1:{port}"))
    };
    let message = connect(&config)
        .await
        .expect_err("missing key file")
        .to_string();
    assert!(
        message.contains(&key.display().to_string()),
        "the error names the file: {message}"
    );
}

/// An etcd we can stop and start again on the same ports and data, optionally serving TLS.
struct RestartableEtcd {
    dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
    tls: Option<TlsFiles>,
    child: Option<Child>,
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, made with `openssl`.
struct TlsFiles {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

impl TlsFiles {
    fn generate(dir: &Path) -> Self {
        let script = r#"
            set -e
            openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=rk3s-test-ca \
                -keyout ca.key -out ca.pem 2>/dev/null
            for who in server client; do
                openssl req -newkey rsa:2048 -nodes -subj /CN=rk3s-test-$who \
                    -keyout $who.key -out $who.csr 2>/dev/null
            done
            printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' > server.ext
            printf 'extendedKeyUsage=clientAuth\n' > client.ext
            for who in server client; do
                openssl x509 -req -days 1 -in $who.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
                    -extfile $who.ext -out $who.pem 2>/dev/null
            done
        "#;
        let status = Command::new("sh")
            .arg("-c")
            .arg(script)
            .current_dir(dir)
            .status()
            .expect("run openssl");
        assert!(status.success(), "openssl failed to make test certificates");
        TlsFiles {
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.key"),
        }
    }
}

impl RestartableEtcd {
    fn new() -> Self {
        RestartableEtcd {
            dir: tempfile::tempdir().expect("etcd dir"),
            client_port: testing::free_port().expect("free port"),
            peer_port: testing::free_port().expect("free port"),
            tls: None,
            child: None,
        }
    }

    /// An etcd that serves clients over TLS and requires a client certificate.
    fn with_tls() -> Self {
        let mut etcd = Self::new();
        etcd.tls = Some(TlsFiles::generate(etcd.dir.path()));
        etcd
    }

    fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    /// A config that can talk to this etcd.
    fn config(&self) -> Config {
        let mut config = Config::for_endpoint(self.endpoint());
        if let Some(tls) = &self.tls {
            config.datastore_cafile = Some(tls.ca.clone());
            config.datastore_certfile = Some(tls.client_cert.clone());
            config.datastore_keyfile = Some(tls.client_key.clone());
        }
        config
    }

    async fn start(&mut self) {
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let data: PathBuf = self.dir.path().join("data");
        let bin = std::env::var("RK3S_ETCD_BIN").unwrap_or_else(|_| "etcd".to_string());
        let mut command = Command::new(bin);
        command
            .arg("--name=rk3s-restart")
            .arg(format!("--data-dir={}", data.display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=rk3s-restart={peer}"))
            .arg("--log-level=error")
            .env_remove("ETCDCTL_API")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(tls) = &self.tls {
            command
                .arg(format!("--cert-file={}", tls.server_cert.display()))
                .arg(format!("--key-file={}", tls.server_key.display()))
                .arg(format!("--trusted-ca-file={}", tls.ca.display()))
                .arg("--client-cert-auth");
        }
        self.child = Some(command.spawn().expect("spawn etcd"));
        // Ready when a fresh client can read.
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Ok(store) = connect(&self.config()).await
                && store.current_revision().await.is_ok()
            {
                store.close().await;
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "etcd did not come up at {client}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RestartableEtcd {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_resumes_after_etcd_restart() {
    let mut etcd = RestartableEtcd::new();
    etcd.start().await;
    let store = connect(&etcd.config()).await.expect("connect");
    let mut watch = store.watch_prefix(b"/r/", 0, false).await.expect("watch");
    let first = put(&store, "/r/a", "1").await;
    match next(&mut watch, "the first put").await {
        WatchResponse::Events { events, .. } => assert_eq!(events[0].kv.mod_revision, first),
        other => panic!("unexpected {other:?}"),
    }

    etcd.stop();
    etcd.start().await;
    // Written while the watch may still be re-connecting: it must arrive, once.
    let writer = connect(&Config::for_endpoint(etcd.endpoint()))
        .await
        .expect("second client");
    let second = put(&writer, "/r/b", "2").await;
    let third = put(&writer, "/r/c", "3").await;

    let mut seen = Vec::new();
    while seen.len() < 2 {
        match next(&mut watch, "the writes after the restart").await {
            WatchResponse::Events { events, .. } => {
                seen.extend(events.iter().map(|e| e.kv.mod_revision))
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        seen,
        [second, third],
        "nothing lost or repeated across the restart"
    );
    writer.close().await;
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_gives_up_when_etcd_stays_away() {
    let mut etcd = RestartableEtcd::new();
    etcd.start().await;
    let store = connect(&etcd.config()).await.expect("connect");
    let mut watch = store.watch_prefix(b"/g/", 0, false).await.expect("watch");
    etcd.stop();
    // The watch retries for about 30 s, then ends with an error naming the endpoint.
    let patience = WAIT * 3;
    match tokio::time::timeout(patience, watch.next()).await {
        Ok(Some(Err(err @ Error::Connect { .. }))) => {
            assert!(err.to_string().contains(&etcd.endpoint()), "{err}");
        }
        other => panic!("expected the watch to fail with a connect error, got {other:?}"),
    }
    assert!(
        tokio::time::timeout(WAIT, watch.next())
            .await
            .expect("the watch ends")
            .is_none(),
        "nothing follows the error"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_client_certificate() {
    let mut etcd = RestartableEtcd::with_tls();
    etcd.start().await;
    let store = connect(&etcd.config()).await.expect("connect over TLS");
    let revision = put(&store, "/tls/k", "v").await;
    let (_, kv) = store.get(b"/tls/k", 0).await.expect("get over TLS");
    assert_eq!(kv.expect("key").mod_revision, revision);
    let mut watch = store
        .watch_prefix(b"/tls/", revision, false)
        .await
        .expect("watch over TLS");
    match next(&mut watch, "the put, over TLS").await {
        WatchResponse::Events { events, .. } => assert_eq!(events[0].kv.value, b"v"),
        other => panic!("unexpected {other:?}"),
    }
    store.close().await;

    // Without a client certificate etcd refuses us, and the error names the endpoint.
    let config = Config {
        datastore_certfile: None,
        datastore_keyfile: None,
        ..etcd.config()
    };
    let err = connect(&config).await.expect_err("no client certificate");
    assert!(matches!(err, Error::Connect { .. }), "{err:?}");
    assert!(err.to_string().contains(&etcd.endpoint()), "{err}");
}
