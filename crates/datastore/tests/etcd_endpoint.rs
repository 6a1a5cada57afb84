//! The etcd v3 endpoint over a SQLite store, driven with the `etcd-client` crate.

use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, DeleteOptions, EventType, GetOptions, PutOptions, SortOrder,
    SortTarget, Txn, TxnOp, TxnOpResponse, WatchOptions, WatchResponse, WatchStream,
};
use rk3s_datastore::server::{self, CLUSTER_ID, ETCD_VERSION, MEMBER_ID, ServeOptions};
use rk3s_datastore::{Config, connect};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Long enough for anything on a loaded machine; only reached when something is broken.
const PATIENCE: Duration = Duration::from_secs(30);

struct Endpoint {
    client: Client,
    url: String,
    stop: Option<oneshot::Sender<()>>,
    server: JoinHandle<Result<(), server::ServeError>>,
    _dir: tempfile::TempDir,
}

impl Endpoint {
    async fn start() -> Self {
        Self::start_with(ServeOptions::default()).await
    }

    async fn start_with(options: ServeOptions) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = Config {
            data_dir: dir.path().to_path_buf(),
            datastore_endpoint: Some(format!("sqlite://{}/state.db", dir.path().display())),
            ..Config::default()
        };
        let store = connect(&config).await.expect("connect to SQLite");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("local addr"));
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(server::serve_with_options(
            store,
            listener,
            async move {
                let _ = stopped.await;
            },
            options,
        ));
        let client = Client::connect([url.as_str()], None)
            .await
            .expect("connect client");
        Endpoint {
            client,
            url,
            stop: Some(stop),
            server,
            _dir: dir,
        }
    }

    /// Stops the server and checks that it ends cleanly.
    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let served = tokio::time::timeout(PATIENCE, &mut self.server)
            .await
            .expect("server stops after shutdown")
            .expect("server task");
        served.expect("server ran without error");
    }
}

fn status_of(err: etcd_client::Error) -> tonic::Status {
    match err {
        etcd_client::Error::GRpcStatus(status) => status,
        other => panic!("expected a gRPC status, got {other:?}"),
    }
}

fn rev(header: Option<&etcd_client::ResponseHeader>) -> i64 {
    header.expect("response header").revision()
}

async fn next(stream: &mut WatchStream) -> WatchResponse {
    tokio::time::timeout(PATIENCE, stream.message())
        .await
        .expect("a watch response in time")
        .expect("watch stream healthy")
        .expect("watch stream open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_put_get_range_delete() {
    let ep = Endpoint::start().await;
    let mut c = ep.client.clone();

    let put = c.put("a", "1", None).await.expect("put a");
    let header = put.header().expect("header");
    assert_eq!(header.cluster_id(), CLUSTER_ID);
    assert_eq!(header.member_id(), MEMBER_ID);
    assert_eq!(
        header.revision(),
        2,
        "an empty store is at revision 1; the first write is 2"
    );

    let put = c
        .put("a", "2", Some(PutOptions::new().with_prev_key()))
        .await
        .expect("put a again");
    assert_eq!(rev(put.header()), 3);
    let prev = put.prev_key().expect("prev kv");
    assert_eq!(
        (prev.value(), prev.mod_revision(), prev.version()),
        (&b"1"[..], 2, 1)
    );

    for (k, v) in [("p/1", "x"), ("p/2", "y"), ("p/3", "z"), ("q", "w")] {
        c.put(k, v, None).await.expect("put");
    }
    // Revisions: p/1=4, p/2=5, p/3=6, q=7.
    let got = c.get("a", None).await.expect("get a");
    assert_eq!(rev(got.header()), 7);
    let kv = &got.kvs()[0];
    assert_eq!((kv.key(), kv.value()), (&b"a"[..], &b"2"[..]));
    assert_eq!(
        (kv.create_revision(), kv.mod_revision(), kv.version()),
        (2, 3, 2)
    );

    let missing = c
        .get("nope", None)
        .await
        .expect("a missing key is not an error");
    assert!(missing.kvs().is_empty());
    assert_eq!(missing.count(), 0);

    let old = c
        .get("a", Some(GetOptions::new().with_revision(2)))
        .await
        .expect("get at rev 2");
    assert_eq!(old.kvs()[0].value(), b"1");

    let page = c
        .get("p/", Some(GetOptions::new().with_prefix().with_limit(2)))
        .await
        .expect("list");
    let keys: Vec<_> = page
        .kvs()
        .iter()
        .map(|kv| kv.key_str().expect("utf8").to_string())
        .collect();
    assert_eq!(keys, ["p/1", "p/2"]);
    assert!(page.more());
    assert_eq!(page.count(), 3);

    let keys_only = c
        .get("p/", Some(GetOptions::new().with_prefix().with_keys_only()))
        .await
        .expect("keys");
    assert_eq!(keys_only.kvs().len(), 3);
    assert!(keys_only.kvs().iter().all(|kv| kv.value().is_empty()));

    let count = c
        .get(
            "p/",
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .expect("count");
    assert_eq!((count.count(), count.kvs().len()), (3, 0));

    let desc = c
        .get(
            "p/",
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_sort(SortTarget::Key, SortOrder::Descend)
                    .with_limit(2),
            ),
        )
        .await
        .expect("descending");
    let keys: Vec<_> = desc.kvs().iter().map(|kv| kv.key().to_vec()).collect();
    assert_eq!(keys, [b"p/3".to_vec(), b"p/2".to_vec()]);
    assert!(desc.more());

    let by_mod = c
        .get(
            "",
            Some(
                GetOptions::new()
                    .with_all_keys()
                    .with_sort(SortTarget::Mod, SortOrder::Descend),
            ),
        )
        .await
        .expect("by mod revision");
    let mods: Vec<_> = by_mod.kvs().iter().map(|kv| kv.mod_revision()).collect();
    assert_eq!(mods, [7, 6, 5, 4, 3]);

    let del = c
        .delete(
            "p/",
            Some(DeleteOptions::new().with_prefix().with_prev_key()),
        )
        .await
        .expect("delete prefix");
    assert_eq!(del.deleted(), 3);
    assert_eq!(
        rev(del.header()),
        8,
        "one delete of three keys is one revision"
    );
    let prev: Vec<_> = del
        .prev_kvs()
        .iter()
        .map(|kv| kv.value().to_vec())
        .collect();
    assert_eq!(prev, [b"x".to_vec(), b"y".to_vec(), b"z".to_vec()]);
    let none = c
        .delete("p/", Some(DeleteOptions::new().with_prefix()))
        .await
        .expect("delete none");
    assert_eq!(none.deleted(), 0);
    assert_eq!(rev(none.header()), 8, "deleting nothing writes nothing");

    let err = status_of(c.put("", "v", None).await.expect_err("empty key"));
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert_eq!(err.message(), "etcdserver: key is not provided");

    ep.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn txn_in_the_shapes_kube_apiserver_uses() {
    let ep = Endpoint::start().await;
    let mut c = ep.client.clone();
    let key = "/registry/pods/default/p";

    // Create if absent.
    let create = || {
        Txn::new()
            .when([Compare::mod_revision(key, CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, "v1", None)])
            .or_else([TxnOp::get(key, None)])
    };
    let created = c.txn(create()).await.expect("create");
    assert!(created.succeeded());
    assert_eq!(rev(created.header()), 2);
    let again = c.txn(create()).await.expect("create again");
    assert!(!again.succeeded());
    assert_eq!(rev(again.header()), 2, "a failed guard writes nothing");
    match &again.op_responses()[..] {
        [TxnOpResponse::Get(get)] => assert_eq!(get.kvs()[0].value(), b"v1"),
        other => panic!("expected the current key, got {other:?}"),
    }

    // Update if the mod revision still matches.
    let update = |expected: i64, value: &str| {
        Txn::new()
            .when([Compare::mod_revision(key, CompareOp::Equal, expected)])
            .and_then([TxnOp::put(key, value, None)])
            .or_else([TxnOp::get(key, None)])
    };
    let updated = c.txn(update(2, "v2")).await.expect("update");
    assert!(updated.succeeded());
    assert_eq!(rev(updated.header()), 3);
    let stale = c.txn(update(2, "v3")).await.expect("stale update");
    assert!(!stale.succeeded());
    match &stale.op_responses()[..] {
        [TxnOpResponse::Get(get)] => assert_eq!(get.kvs()[0].mod_revision(), 3),
        other => panic!("expected the current key, got {other:?}"),
    }

    // Other compares: version, value, create revision, lease; NOT_EQUAL, GREATER, LESS.
    let checks = Txn::new()
        .when([
            Compare::version(key, CompareOp::Equal, 2),
            Compare::value(key, CompareOp::Equal, "v2"),
            Compare::create_revision(key, CompareOp::Less, 3),
            Compare::mod_revision(key, CompareOp::Greater, 2),
            Compare::lease(key, CompareOp::Equal, 0),
            Compare::value(key, CompareOp::NotEqual, "v1"),
        ])
        .and_then([TxnOp::get(key, None)]);
    assert!(c.txn(checks).await.expect("compares").succeeded());

    // Delete if the mod revision matches.
    let delete = |expected: i64| {
        Txn::new()
            .when([Compare::mod_revision(key, CompareOp::Equal, expected)])
            .and_then([TxnOp::delete(
                key,
                Some(DeleteOptions::new().with_prev_key()),
            )])
            .or_else([TxnOp::get(key, None)])
    };
    assert!(!c.txn(delete(2)).await.expect("stale delete").succeeded());
    let deleted = c.txn(delete(3)).await.expect("delete");
    assert!(deleted.succeeded());
    assert_eq!(rev(deleted.header()), 4);
    match &deleted.op_responses()[..] {
        [TxnOpResponse::Delete(d)] => {
            assert_eq!(d.deleted(), 1);
            assert_eq!(d.prev_kvs()[0].value(), b"v2");
        }
        other => panic!("expected a delete, got {other:?}"),
    }

    // Several writes in one transaction share one revision.
    let multi = Txn::new().and_then([TxnOp::put("m1", "a", None), TxnOp::put("m2", "b", None)]);
    assert_eq!(rev(c.txn(multi).await.expect("multi put").header()), 5);
    let m = c
        .get("m", Some(GetOptions::new().with_prefix()))
        .await
        .expect("get m");
    assert!(m.kvs().iter().all(|kv| kv.mod_revision() == 5));

    // Refused shapes.
    let dup = Txn::new().and_then([TxnOp::put("d", "1", None), TxnOp::put("d", "2", None)]);
    let err = status_of(c.txn(dup).await.expect_err("duplicate key"));
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        err.message(),
        "etcdserver: duplicate key given in txn request"
    );
    let nested = Txn::new().and_then([TxnOp::txn(Txn::new())]);
    let err = status_of(c.txn(nested).await.expect_err("nested txn"));
    assert_eq!(err.code(), tonic::Code::Unimplemented);
    let ranged = Txn::new()
        .when([Compare::version("a", CompareOp::Equal, 0).with_prefix()])
        .and_then([TxnOp::put("a", "1", None)]);
    let err = status_of(c.txn(ranged).await.expect_err("compare over a range"));
    assert_eq!(err.code(), tonic::Code::Unimplemented);
    assert_eq!(
        rev(c.get("m1", None).await.expect("get").header()),
        5,
        "refused txns write nothing"
    );

    ep.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_makes_old_revisions_unreadable() {
    let ep = Endpoint::start().await;
    let mut c = ep.client.clone();
    for v in ["1", "2", "3", "4"] {
        c.put("k", v, None).await.expect("put");
    }
    // k was written at revisions 2..=5.
    c.compact(4, None).await.expect("compact");
    let got = c
        .get("k", Some(GetOptions::new().with_revision(4)))
        .await
        .expect("read at 4");
    assert_eq!(got.kvs()[0].value(), b"3");

    let err = status_of(
        c.get("k", Some(GetOptions::new().with_revision(3)))
            .await
            .expect_err("3"),
    );
    assert_eq!(err.code(), tonic::Code::OutOfRange);
    assert_eq!(
        err.message(),
        "etcdserver: mvcc: required revision has been compacted"
    );
    let err = status_of(
        c.compact(3, None)
            .await
            .expect_err("compact below the compaction"),
    );
    assert_eq!(err.code(), tonic::Code::OutOfRange);
    assert_eq!(
        err.message(),
        "etcdserver: mvcc: required revision has been compacted"
    );
    let err = status_of(
        c.get("k", Some(GetOptions::new().with_revision(99)))
            .await
            .expect_err("future"),
    );
    assert_eq!(err.code(), tonic::Code::OutOfRange);
    assert_eq!(
        err.message(),
        "etcdserver: mvcc: required revision is a future revision"
    );

    // A watch from a compacted revision is created, then cancelled as compacted.
    let mut w = c
        .watch("k", Some(WatchOptions::new().with_start_revision(2)))
        .await
        .expect("watch");
    let created = next(&mut w).await;
    assert!(created.created());
    let compacted = next(&mut w).await;
    assert!(compacted.canceled());
    assert_eq!(compacted.compact_revision(), 4);

    ep.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_from_revision_with_prev_kv_progress_and_cancel() {
    let ep = Endpoint::start().await;
    let mut c = ep.client.clone();
    c.put("w/a", "1", None).await.expect("put"); // 2
    c.put("w/b", "1", None).await.expect("put"); // 3
    c.put("w/a", "2", None).await.expect("put"); // 4
    c.put("other", "x", None).await.expect("put"); // 5
    c.delete("w/b", None).await.expect("delete"); // 6

    let mut w = c
        .watch(
            "w/",
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(3)
                    .with_prev_key(),
            ),
        )
        .await
        .expect("watch");
    let created = next(&mut w).await;
    assert!(created.created());
    let id = created.watch_id();
    assert_eq!(rev(created.header()), 6);

    let mut seen = Vec::new();
    while seen.len() < 3 {
        let resp = next(&mut w).await;
        assert_eq!(resp.watch_id(), id);
        for e in resp.events() {
            let kv = e.kv().expect("kv");
            let prev = e.prev_kv().map(|p| p.value().to_vec());
            seen.push((e.event_type(), kv.key().to_vec(), kv.mod_revision(), prev));
        }
    }
    assert_eq!(
        seen,
        [
            (EventType::Put, b"w/b".to_vec(), 3, None),
            (EventType::Put, b"w/a".to_vec(), 4, Some(b"1".to_vec())),
            (EventType::Delete, b"w/b".to_vec(), 6, Some(b"1".to_vec())),
        ]
    );

    // A live change, then a progress request: the answer comes after it, at its revision.
    c.put("w/c", "1", None).await.expect("put"); // 7
    let live = next(&mut w).await;
    assert_eq!(live.events()[0].kv().expect("kv").mod_revision(), 7);
    w.request_progress().await.expect("progress request");
    let progress = next(&mut w).await;
    assert!(progress.events().is_empty() && !progress.canceled());
    assert_eq!(
        progress.watch_id(),
        -1,
        "a stream-wide answer, as etcd sends it"
    );
    assert_eq!(rev(progress.header()), 7);

    // A second watch on the same stream, with a filter; then cancel the first.
    w.watch(
        "w/",
        Some(
            WatchOptions::new()
                .with_prefix()
                .with_filters([etcd_client::WatchFilterType::NoPut]),
        ),
    )
    .await
    .expect("second watch");
    let created2 = next(&mut w).await;
    assert!(created2.created());
    let id2 = created2.watch_id();
    assert_ne!(id2, id);
    w.cancel(id).await.expect("cancel");
    let canceled = next(&mut w).await;
    assert!(canceled.canceled());
    assert_eq!(canceled.watch_id(), id);
    c.put("w/d", "1", None).await.expect("put"); // 8: filtered out of watch 2
    c.delete("w/d", None).await.expect("delete"); // 9
    let resp = next(&mut w).await;
    assert_eq!(resp.watch_id(), id2);
    let events: Vec<_> = resp.events().iter().map(|e| e.event_type()).collect();
    assert_eq!(events, [EventType::Delete]);
    assert_eq!(resp.events()[0].kv().expect("kv").mod_revision(), 9);

    // The server shuts down with the watch stream still open.
    ep.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_progress_notifications() {
    let ep = Endpoint::start_with(ServeOptions {
        progress_notify_interval: Duration::from_millis(100),
    })
    .await;
    let mut c = ep.client.clone();
    c.put("n", "1", None).await.expect("put"); // 2
    let mut w = c
        .watch("n", Some(WatchOptions::new().with_progress_notify()))
        .await
        .expect("watch");
    let created = next(&mut w).await;
    let id = created.watch_id();
    let notification = next(&mut w).await;
    assert_eq!(notification.watch_id(), id);
    assert!(notification.events().is_empty() && !notification.canceled());
    assert_eq!(rev(notification.header()), 2);
    ep.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_grant_keepalive_ttl_revoke() {
    let ep = Endpoint::start().await;
    let mut c = ep.client.clone();
    let lease = c.lease_grant(60, None).await.expect("grant");
    assert_eq!(lease.ttl(), 60);
    let id = lease.id();
    assert_ne!(id, 0);
    c.put("l/a", "1", Some(PutOptions::new().with_lease(id)))
        .await
        .expect("put with lease");
    c.put("l/b", "1", Some(PutOptions::new().with_lease(id)))
        .await
        .expect("put with lease");
    assert_eq!(c.get("l/a", None).await.expect("get").kvs()[0].lease(), id);

    let ttl = c
        .lease_time_to_live(
            id,
            Some(etcd_client::LeaseTimeToLiveOptions::new().with_keys()),
        )
        .await
        .expect("ttl");
    assert_eq!(ttl.granted_ttl(), 60);
    assert!(ttl.ttl() > 0 && ttl.ttl() <= 60, "ttl {}", ttl.ttl());
    let mut keys = ttl.keys().to_vec();
    keys.sort();
    assert_eq!(keys, [b"l/a".to_vec(), b"l/b".to_vec()]);

    let (mut keeper, mut stream) = c.lease_keep_alive(id).await.expect("keep alive");
    keeper.keep_alive().await.expect("send keep alive");
    let resp = tokio::time::timeout(PATIENCE, stream.message())
        .await
        .expect("keep alive answer in time")
        .expect("keep alive stream")
        .expect("keep alive response");
    assert_eq!((resp.id(), resp.ttl()), (id, 60));

    let leases = c.leases().await.expect("leases");
    assert!(leases.leases().iter().any(|l| l.id() == id));

    let before = rev(c.get("l/a", None).await.expect("get").header());
    let revoked = c.lease_revoke(id).await.expect("revoke");
    assert_eq!(
        rev(revoked.header()),
        before + 1,
        "the keys go in one revision"
    );
    let left = c
        .get("l/", Some(GetOptions::new().with_prefix()))
        .await
        .expect("get");
    assert!(left.kvs().is_empty(), "revoking deletes the lease's keys");
    let gone = c
        .lease_time_to_live(id, None)
        .await
        .expect("ttl of a revoked lease");
    assert_eq!(gone.ttl(), -1);

    let err = status_of(c.lease_revoke(id).await.expect_err("revoke twice"));
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert_eq!(err.message(), "etcdserver: requested lease not found");
    let err = status_of(
        c.put("l/c", "1", Some(PutOptions::new().with_lease(id)))
            .await
            .expect_err("dead lease"),
    );
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert_eq!(err.message(), "etcdserver: requested lease not found");

    ep.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_status_members_and_unsupported_requests() {
    let ep = Endpoint::start().await;
    let mut c = ep.client.clone();
    c.put("s", "1", None).await.expect("put");
    let status = c.status().await.expect("status");
    assert_eq!(status.version(), ETCD_VERSION);
    assert_eq!(status.leader(), MEMBER_ID);
    assert!(status.db_size() > 0, "db size {}", status.db_size());
    assert_eq!(rev(status.header()), 2);

    let members = c.member_list().await.expect("member list");
    let [member] = members.members() else {
        panic!("one member: {:?}", members.members())
    };
    assert_eq!(member.id(), MEMBER_ID);
    assert_eq!(member.client_urls(), std::slice::from_ref(&ep.url));

    let alarms = c
        .alarm(
            etcd_client::AlarmAction::Get,
            etcd_client::AlarmType::None,
            None,
        )
        .await;
    assert!(alarms.expect("alarm list").alarms().is_empty());

    let err = status_of(c.defragment().await.expect_err("defragment"));
    assert_eq!(err.code(), tonic::Code::Unimplemented);
    // The refusal comes with the call or as the stream's first message.
    let err = match c.snapshot().await {
        Err(err) => status_of(err),
        Ok(mut snapshot) => match snapshot.message().await {
            Err(err) => status_of(err),
            Ok(other) => panic!("snapshot should fail, got {other:?}"),
        },
    };
    assert_eq!(err.code(), tonic::Code::Unimplemented);
    let err = status_of(c.hash_kv(0).await.expect_err("hash kv"));
    assert_eq!(err.code(), tonic::Code::Unimplemented);

    ep.stop().await;
}

/// Two watches on one stream, one catching up on history, while a writer runs: every progress
/// answer comes after every event up to its revision on both watches, before any later event,
/// and is at least the revision the store had when it was asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_answers_are_exact_on_a_busy_stream() {
    let ep = Endpoint::start().await;
    let mut c = ep.client.clone();
    let mut a_revs = Vec::new();
    for i in 0..100 {
        let prefix = if i % 2 == 0 { "a" } else { "b" };
        let put = c
            .put(format!("{prefix}/{i}"), "v", None)
            .await
            .expect("put");
        if prefix == "a" {
            a_revs.push(rev(put.header()));
        }
    }

    let mut w = c
        .watch(
            "a/",
            Some(WatchOptions::new().with_prefix().with_start_revision(2)),
        )
        .await
        .expect("watch a");
    w.watch("b/", Some(WatchOptions::new().with_prefix()))
        .await
        .expect("watch b");
    // Responses in arrival order: (watch id, event revisions) or a progress answer.
    let mut ids = Vec::new();
    let mut b_start = 0;
    let mut seen: std::collections::HashMap<i64, Vec<i64>> = Default::default();
    while ids.len() < 2 {
        let resp = next(&mut w).await;
        if resp.created() {
            ids.push(resp.watch_id());
            if ids.len() == 2 {
                b_start = rev(resp.header());
            }
        }
        let revs = resp
            .events()
            .iter()
            .map(|e| e.kv().expect("kv").mod_revision());
        seen.entry(resp.watch_id()).or_default().extend(revs);
    }
    let (a_id, b_id) = (ids[0], ids[1]);

    let mut writer_client = c.clone();
    let writer = tokio::spawn(async move {
        let mut written = Vec::new();
        for i in 100..300 {
            let prefix = if i % 2 == 0 { "a" } else { "b" };
            let put = writer_client
                .put(format!("{prefix}/{i}"), "v", None)
                .await
                .expect("put");
            written.push((prefix, rev(put.header())));
        }
        written
    });

    let mut answers = Vec::new();
    for _ in 0..5 {
        let asked_at = rev(c.get("a/0", None).await.expect("get").header());
        w.request_progress().await.expect("progress request");
        loop {
            let resp = next(&mut w).await;
            if resp.watch_id() == -1 {
                let p = rev(resp.header());
                assert!(
                    p >= asked_at,
                    "progress {p} below the revision {asked_at} asked at"
                );
                for (id, revs) in &seen {
                    assert!(
                        revs.iter().all(|r| *r <= p),
                        "watch {id} sent an event after {p} early"
                    );
                }
                answers.push((p, seen.clone()));
                break;
            }
            let revs = resp
                .events()
                .iter()
                .map(|e| e.kv().expect("kv").mod_revision());
            seen.entry(resp.watch_id()).or_default().extend(revs);
        }
    }
    let written = writer.await.expect("writer");
    for (prefix, r) in &written {
        if *prefix == "a" {
            a_revs.push(*r);
        }
    }
    let b_revs: Vec<i64> = written
        .iter()
        .filter(|(p, _)| *p == "b")
        .map(|(_, r)| *r)
        .collect();
    // Drain the rest of the events.
    let want_a = a_revs.len();
    let want_b = b_revs.iter().filter(|r| **r > b_start).count();
    while seen.get(&a_id).map_or(0, Vec::len) < want_a
        || seen.get(&b_id).map_or(0, Vec::len) < want_b
    {
        let resp = next(&mut w).await;
        let revs = resp
            .events()
            .iter()
            .map(|e| e.kv().expect("kv").mod_revision());
        seen.entry(resp.watch_id()).or_default().extend(revs);
    }
    assert_eq!(seen[&a_id], a_revs, "watch a: every event once, in order");
    let b_want: Vec<i64> = b_revs.iter().copied().filter(|r| *r > b_start).collect();
    assert_eq!(
        seen[&b_id], b_want,
        "watch b: every event after its start, once, in order"
    );
    for (p, before) in answers {
        let a_upto: Vec<i64> = a_revs.iter().copied().filter(|r| *r <= p).collect();
        assert_eq!(
            before[&a_id], a_upto,
            "watch a had sent everything up to {p}"
        );
        let b_upto: Vec<i64> = b_want.iter().copied().filter(|r| *r <= p).collect();
        assert_eq!(
            before.get(&b_id).cloned().unwrap_or_default(),
            b_upto,
            "watch b up to {p}"
        );
    }
    ep.stop().await;
}
