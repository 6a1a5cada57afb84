//! The watch cache (upstream's "cacher", sized for rk3s): one datastore watch per storage
//! prefix feeds an in-memory copy of the prefix's objects and a ring of its recent changes;
//! every client watch is served from them.
//!
//! - A prefix's cache starts on the first watch of it (lazily: custom resources add prefixes at
//!   runtime, most built-in types are never watched, and a start-time list of every type would
//!   hold them all in memory for nothing). The first watch's resourceVersion, when it has one,
//!   is where the cache's initial list is read, so the informer that just listed at that
//!   revision is served instead of being sent back to list again.
//! - The ring keeps the last [`RING_CAPACITY`] changes. A watch from a revision the ring no
//!   longer covers gets 410 `Expired` ("too old resource version"), as upstream's cacher
//!   answers, even if the datastore could still replay it: clients list again.
//! - Changes are handed to each watcher through its own bounded channel
//!   ([`WATCHER_BUFFER`]). A watcher whose channel is full gets at most [`DISPATCH_BUDGET`]
//!   (shared by all such watchers of one batch) before it is terminated: its stream ends and
//!   its client watches again (and, if that is too old by then, lists again).
//! - If the datastore watch fails it is re-established from the cache's revision; if that
//!   history is compacted, the cache lists again, replaces its state, empties its ring and
//!   terminates every watcher (upstream does the same on a re-list).
//! - The cache stops with the server (`AppState.shutdown`) or when the store closes.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use axum::body::Bytes;
use rk3s_datastore::{Event, EventKind, ListOptions, WatchResponse};

use crate::storage::{Store, StoreError};
use serde_json::Value;
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;

use crate::rest::decode_stored;
use crate::status::ApiError;

/// How many recent changes a prefix's cache keeps for watches that resume from a revision.
pub(crate) const RING_CAPACITY: usize = 4096;
/// How many messages may wait for one watcher before it counts as slow.
pub(crate) const WATCHER_BUFFER: usize = 128;
/// How long one dispatch may wait, in total, for watchers whose buffers are full.
pub(crate) const DISPATCH_BUDGET: Duration = Duration::from_millis(100);
/// How often a watcher that allows bookmarks gets one.
pub(crate) const BOOKMARK_INTERVAL: Duration = Duration::from_secs(30);
/// How often the cache asks the store for progress while someone wants bookmarks.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(5);
/// How long a watch waits for the cache to reach the revision it asks for.
const FRESH_TIMEOUT: Duration = Duration::from_secs(3);
/// How often such a watch asks again for the store's progress.
const FRESH_RENOTIFY: Duration = Duration::from_millis(500);
/// Pause before the datastore watch or list is tried again after an error.
const RETRY: Duration = Duration::from_millis(500);

/// One object as the cache holds it: `metadata.resourceVersion` set, serialized at most once
/// however many watchers send it.
#[derive(Debug)]
pub(crate) struct CachedObject {
    pub(crate) value: Value,
    json: OnceLock<Bytes>,
}

impl CachedObject {
    pub(crate) fn new(value: Value) -> Arc<Self> {
        Arc::new(CachedObject {
            value,
            json: OnceLock::new(),
        })
    }

    /// The object's JSON.
    pub(crate) fn json(&self) -> &Bytes {
        self.json
            .get_or_init(|| Bytes::from(serde_json::to_vec(&self.value).unwrap_or_default()))
    }
}

/// One change of a key.
#[derive(Debug)]
pub(crate) struct CachedEvent {
    pub(crate) key: Vec<u8>,
    pub(crate) revision: i64,
    pub(crate) kind: EventKind,
    /// Put: the new object. Delete: the last state, with the deletion's resourceVersion.
    pub(crate) object: Arc<CachedObject>,
    /// The state before this change, if the key existed.
    pub(crate) prev: Option<Arc<CachedObject>>,
}

/// What a watcher receives, in revision order.
#[derive(Debug, Clone)]
pub(crate) enum Message {
    Event(Arc<CachedEvent>),
    /// Every change up to this revision has been sent.
    Bookmark(i64),
}

/// Where a watch starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Start {
    /// The current state (one ADDED per object), then the changes after it. The state is at
    /// least at `min_revision` (0: whatever the cache has).
    State { min_revision: i64 },
    /// The changes after this revision.
    After(i64),
}

/// A registered watch: what to send first, then `rx`.
#[derive(Debug)]
pub(crate) struct Subscription {
    /// For [`Start::State`]: the objects, in key order.
    pub(crate) objects: Vec<Arc<CachedObject>>,
    /// For [`Start::After`]: the ring's changes after the revision.
    pub(crate) events: Vec<Arc<CachedEvent>>,
    /// The revision `objects`/`events` bring the watcher to.
    pub(crate) revision: i64,
    /// Everything after `revision`; closed when the watcher is terminated or the cache stops.
    pub(crate) rx: mpsc::Receiver<Message>,
}

/// The caches of every watched storage prefix.
#[derive(Debug)]
pub(crate) struct WatchCaches {
    store: Store,
    shutdown: watch::Receiver<bool>,
    caches: Mutex<HashMap<Vec<u8>, Arc<Cache>>>,
}

impl WatchCaches {
    pub(crate) fn new(store: Store, shutdown: watch::Receiver<bool>) -> Self {
        WatchCaches {
            store,
            shutdown,
            caches: Mutex::new(HashMap::new()),
        }
    }

    /// Registers a watch of the keys under `key_prefix` (a namespace's part of `prefix`, or
    /// all of it), served by the cache of the storage prefix `prefix`.
    #[tracing::instrument(level = "debug", skip_all, fields(prefix = %String::from_utf8_lossy(prefix), ?start))]
    pub(crate) async fn subscribe(
        &self,
        prefix: &[u8],
        key_prefix: &[u8],
        start: Start,
        bookmarks: bool,
    ) -> Result<Subscription, ApiError> {
        let hint = match start {
            Start::After(rv) => rv,
            Start::State { .. } => 0,
        };
        let cache = self.cache(prefix, hint);
        let needed = match start {
            Start::After(rv) => rv,
            Start::State { min_revision } => min_revision,
        };
        cache.wait_fresh(needed).await?;
        cache.register(key_prefix, start, bookmarks)
    }

    /// The cache of `prefix`, started if it is not running yet.
    fn cache(&self, prefix: &[u8], hint: i64) -> Arc<Cache> {
        let mut caches = self.caches.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = caches.get(prefix) {
            return c.clone();
        }
        let cache = Arc::new(Cache::new(prefix.to_vec()));
        caches.insert(prefix.to_vec(), cache.clone());
        tokio::spawn(
            cache
                .clone()
                .run(self.store.clone(), self.shutdown.clone(), hint),
        );
        cache
    }
}

/// A watcher as the dispatcher sees it.
#[derive(Debug)]
struct Slot {
    key_prefix: Vec<u8>,
    tx: mpsc::Sender<Message>,
    /// When the next bookmark is due, if the watcher wants them.
    next_bookmark: Option<Instant>,
}

#[derive(Debug, Default)]
struct State {
    /// The prefix's objects at `revision`.
    objects: BTreeMap<Vec<u8>, Arc<CachedObject>>,
    /// Recent changes, in revision order.
    ring: VecDeque<Arc<CachedEvent>>,
    /// Every change after this revision is in the ring.
    oldest: i64,
    /// Every change up to this revision is applied.
    revision: i64,
    watchers: HashMap<u64, Slot>,
    next_id: u64,
    stopped: bool,
}

impl State {
    /// Applies one store event; `None` if its value cannot be read (logged, skipped).
    fn apply(&mut self, ev: Event) -> Option<Arc<CachedEvent>> {
        let revision = ev.kv.mod_revision;
        let key = ev.kv.key.clone();
        let cached = match ev.kind {
            EventKind::Put => {
                let obj = match decode_stored(&ev.kv) {
                    Ok(o) => CachedObject::new(o),
                    Err(e) => {
                        tracing::warn!(error = %e.message, "watch cache: skipping a change");
                        return None;
                    }
                };
                let prev = self.objects.insert(key.clone(), obj.clone());
                CachedEvent {
                    key,
                    revision,
                    kind: EventKind::Put,
                    object: obj,
                    prev,
                }
            }
            EventKind::Delete => {
                let prev = self
                    .objects
                    .remove(&key)
                    .or_else(|| {
                        let kv = ev.prev_kv.as_ref()?;
                        decode_stored(kv).ok().map(CachedObject::new)
                    })
                    .or_else(|| {
                        tracing::warn!(
                            key = %String::from_utf8_lossy(&key),
                            "watch cache: a delete without a previous value"
                        );
                        None
                    })?;
                let mut last = prev.value.clone();
                crate::rest::set_resource_version(&mut last, revision);
                CachedEvent {
                    key,
                    revision,
                    kind: EventKind::Delete,
                    object: CachedObject::new(last),
                    prev: Some(prev),
                }
            }
        };
        let cached = Arc::new(cached);
        self.ring.push_back(cached.clone());
        while self.ring.len() > RING_CAPACITY {
            if let Some(old) = self.ring.pop_front() {
                self.oldest = self.oldest.max(old.revision);
            }
        }
        self.revision = self.revision.max(revision);
        Some(cached)
    }

    /// A new state from a list at `revision`; every watcher is terminated.
    fn replace(&mut self, kvs: Vec<rk3s_datastore::KeyValue>, revision: i64) {
        self.objects = kvs
            .iter()
            .filter_map(|kv| match decode_stored(kv) {
                Ok(o) => Some((kv.key.clone(), CachedObject::new(o))),
                Err(e) => {
                    tracing::warn!(error = %e.message, "watch cache: skipping an object");
                    None
                }
            })
            .collect();
        self.ring.clear();
        self.oldest = revision;
        self.revision = revision;
        self.watchers.clear();
    }
}

#[derive(Debug)]
struct Cache {
    prefix: Vec<u8>,
    state: Mutex<State>,
    /// The applied revision, once the initial list is in (`None` before).
    revision: watch::Sender<Option<i64>>,
    /// Wakes the cache task to ask the store for progress (a watch waits for a revision).
    progress: Notify,
}

/// Why the datastore watch loop ended.
enum Ended {
    /// Re-establish the watch from the cache's revision.
    Retry,
    /// The history is gone: list again.
    Relist,
    /// The server or the store is shutting down.
    Stop,
}

impl Cache {
    fn new(prefix: Vec<u8>) -> Self {
        Cache {
            prefix,
            state: Mutex::new(State::default()),
            revision: watch::Sender::new(None),
            progress: Notify::new(),
        }
    }

    /// The watcher's starting point and its channel, registered in one step with respect to
    /// dispatch: nothing is missed or sent twice between the two.
    fn register(
        &self,
        key_prefix: &[u8],
        start: Start,
        bookmarks: bool,
    ) -> Result<Subscription, ApiError> {
        let mut st = self.lock();
        if st.stopped {
            return Err(ApiError::new(
                503,
                "ServiceUnavailable",
                "the watch cache has stopped",
            ));
        }
        let (tx, rx) = mpsc::channel(WATCHER_BUFFER);
        let mut sub = Subscription {
            objects: Vec::new(),
            events: Vec::new(),
            revision: st.revision,
            rx,
        };
        match start {
            Start::State { .. } => {
                sub.objects = st
                    .objects
                    .range(key_prefix.to_vec()..)
                    .take_while(|(k, _)| k.starts_with(key_prefix))
                    .map(|(_, o)| o.clone())
                    .collect();
            }
            Start::After(rv) => {
                if rv < st.oldest {
                    return Err(ApiError::expired(format!(
                        "too old resource version: {rv} ({})",
                        st.oldest
                    )));
                }
                // The ring is in revision order: skip what the watcher has seen.
                let first = st.ring.partition_point(|e| e.revision <= rv);
                sub.events = st
                    .ring
                    .range(first..)
                    .filter(|e| e.key.starts_with(key_prefix))
                    .cloned()
                    .collect();
            }
        }
        let id = st.next_id;
        st.next_id += 1;
        st.watchers.insert(
            id,
            Slot {
                key_prefix: key_prefix.to_vec(),
                tx,
                next_bookmark: bookmarks.then(|| Instant::now() + BOOKMARK_INTERVAL),
            },
        );
        Ok(sub)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until the cache has applied everything up to `needed` (and its initial list).
    async fn wait_fresh(&self, needed: i64) -> Result<(), ApiError> {
        let mut rx = self.revision.subscribe();
        // The initial list: as long as the store takes.
        let current = loop {
            if self.lock().stopped {
                return Ok(());
            }
            if let Some(r) = *rx.borrow_and_update() {
                break r;
            }
            if rx.changed().await.is_err() {
                return Ok(());
            }
        };
        if current >= needed {
            return Ok(());
        }
        // Ask the store for progress (the prefix may be idle), again now and then in case an
        // answer raced with the revision this watch needs.
        let deadline = Instant::now() + FRESH_TIMEOUT;
        while Instant::now() < deadline {
            self.progress.notify_one();
            let step = (Instant::now() + FRESH_RENOTIFY).min(deadline);
            let fresh = tokio::time::timeout_at(step, rx.wait_for(|r| r.unwrap_or(0) >= needed));
            if fresh.await.is_ok() {
                return Ok(());
            }
        }
        let current = (*self.revision.borrow()).unwrap_or(0);
        Err(ApiError::new(
            504,
            "Timeout",
            format!("Too large resource version: {needed}, current: {current}"),
        ))
    }

    #[tracing::instrument(name = "watch_cache", skip_all, fields(prefix = %String::from_utf8_lossy(&self.prefix)))]
    async fn run(self: Arc<Self>, store: Store, mut shutdown: watch::Receiver<bool>, hint: i64) {
        let mut list_at = hint;
        let mut listed = false;
        loop {
            if *shutdown.borrow() {
                break;
            }
            if !listed {
                let opts = ListOptions {
                    revision: list_at,
                    ..ListOptions::default()
                };
                match store.list(&self.prefix, opts).await {
                    Ok(resp) => {
                        let revision = if list_at > 0 { list_at } else { resp.revision };
                        self.lock().replace(resp.kvs, revision);
                        self.revision.send_replace(Some(revision));
                        tracing::debug!(revision, "watch cache listed");
                        listed = true;
                    }
                    Err(StoreError::Datastore(rk3s_datastore::Error::Closed)) => break,
                    Err(e) if list_at > 0 => {
                        // Compacted or in the future: the current state will do.
                        tracing::debug!(error = %e, list_at, "watch cache: listing now instead");
                        list_at = 0;
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "watch cache: list failed; retrying");
                        if pause(&mut shutdown).await {
                            break;
                        }
                        continue;
                    }
                }
            }
            let from = self.lock().revision + 1;
            match self.follow(&store, &mut shutdown, from).await {
                Ended::Retry => {
                    if pause(&mut shutdown).await {
                        break;
                    }
                }
                Ended::Relist => {
                    listed = false;
                    list_at = 0;
                }
                Ended::Stop => break,
            }
        }
        let mut st = self.lock();
        st.stopped = true;
        st.watchers.clear();
        drop(st);
        // Wake anyone waiting for a revision: they will see `stopped`.
        self.revision.send_modify(|_| {});
    }

    /// Follows the datastore watch from `from` until it ends.
    async fn follow(
        &self,
        store: &Store,
        shutdown: &mut watch::Receiver<bool>,
        from: i64,
    ) -> Ended {
        let mut w = match store.watch_prefix(&self.prefix, from, true).await {
            Ok(w) => w,
            Err(StoreError::Datastore(rk3s_datastore::Error::Compacted { .. })) => {
                return Ended::Relist;
            }
            Err(StoreError::Datastore(rk3s_datastore::Error::Closed)) => return Ended::Stop,
            Err(e) => {
                tracing::warn!(error = %e, "watch cache: datastore watch failed; retrying");
                return Ended::Retry;
            }
        };
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        let mut last_progress = Instant::now();
        loop {
            tokio::select! {
                _ = shutdown.changed() => return Ended::Stop,
                _ = self.progress.notified() => w.request_progress(),
                _ = ticker.tick() => {
                    if last_progress.elapsed() >= PROGRESS_INTERVAL && self.wants_bookmarks() {
                        w.request_progress();
                        last_progress = Instant::now();
                    }
                    self.send_bookmarks();
                }
                next = w.next() => match next {
                    None => return Ended::Retry,
                    Some(Ok(WatchResponse::Events { revision, events })) => {
                        self.dispatch(events, revision).await;
                    }
                    Some(Ok(WatchResponse::Progress { revision })) => {
                        let mut st = self.lock();
                        st.revision = st.revision.max(revision);
                        let r = st.revision;
                        drop(st);
                        self.revision.send_replace(Some(r));
                    }
                    Some(Ok(WatchResponse::Compacted { .. }))
                    | Some(Err(rk3s_datastore::Error::Compacted { .. })) => return Ended::Relist,
                    Some(Err(rk3s_datastore::Error::Closed)) => return Ended::Stop,
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "watch cache: datastore watch failed; retrying");
                        return Ended::Retry;
                    }
                }
            }
        }
    }

    fn wants_bookmarks(&self) -> bool {
        self.lock()
            .watchers
            .values()
            .any(|s| s.next_bookmark.is_some())
    }

    /// Sends a bookmark at the cache's revision to every watcher that is due one (a watcher
    /// whose buffer is full gets it on a later tick).
    fn send_bookmarks(&self) {
        let now = Instant::now();
        let mut st = self.lock();
        let revision = st.revision;
        for slot in st.watchers.values_mut() {
            if let Some(due) = slot.next_bookmark
                && due <= now
                && slot.tx.try_send(Message::Bookmark(revision)).is_ok()
            {
                slot.next_bookmark = Some(now + BOOKMARK_INTERVAL);
            }
        }
    }

    /// Applies a batch of changes and hands them to the watchers, in order.
    async fn dispatch(&self, events: Vec<Event>, revision: i64) {
        // Watchers whose buffer filled up, with what they still have to get, in order.
        let mut blocked: Vec<(u64, mpsc::Sender<Message>, Vec<Message>)> = Vec::new();
        let current = {
            let mut st = self.lock();
            let mut closed = Vec::new();
            for ev in events {
                let Some(ev) = st.apply(ev) else { continue };
                for (id, slot) in &st.watchers {
                    if !ev.key.starts_with(&slot.key_prefix) {
                        continue;
                    }
                    let msg = Message::Event(ev.clone());
                    if let Some(b) = blocked.iter_mut().find(|b| b.0 == *id) {
                        b.2.push(msg);
                        continue;
                    }
                    match slot.tx.try_send(msg) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Closed(_)) => closed.push(*id),
                        Err(mpsc::error::TrySendError::Full(msg)) => {
                            blocked.push((*id, slot.tx.clone(), vec![msg]));
                        }
                    }
                }
            }
            for id in closed {
                st.watchers.remove(&id);
            }
            st.revision = st.revision.max(revision);
            st.revision
        };
        self.revision.send_replace(Some(current));
        if blocked.is_empty() {
            return;
        }
        // The slow watchers share one budget; whoever does not make it is terminated. Nothing
        // else is dispatched meanwhile, so no watcher sees changes out of order.
        let deadline = Instant::now() + DISPATCH_BUDGET;
        for (id, tx, msgs) in blocked {
            for msg in msgs {
                if tokio::time::timeout_at(deadline, tx.send(msg))
                    .await
                    .map_or(true, |r| r.is_err())
                {
                    tracing::info!(
                        watcher = id,
                        "watch cache: terminating an unresponsive watcher"
                    );
                    self.lock().watchers.remove(&id);
                    break;
                }
            }
        }
    }
}

/// Waits [`RETRY`]; `true` if the server shuts down meanwhile.
async fn pause(shutdown: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = shutdown.changed() => true,
        _ = tokio::time::sleep(RETRY) => *shutdown.borrow(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rk3s_datastore::KeyValue;
    use serde_json::json;

    const PREFIX: &[u8] = b"/registry/configmaps/";

    fn kv(ns: &str, name: &str, rev: i64) -> KeyValue {
        KeyValue {
            key: format!("/registry/configmaps/{ns}/{name}").into_bytes(),
            value: serde_json::to_vec(&json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": name, "namespace": ns},
            }))
            .expect("json"),
            mod_revision: rev,
            create_revision: rev,
            version: 1,
            lease: 0,
        }
    }

    fn put(ns: &str, name: &str, rev: i64) -> Event {
        Event {
            kind: EventKind::Put,
            kv: kv(ns, name, rev),
            prev_kv: None,
        }
    }

    fn delete(ns: &str, name: &str, rev: i64) -> Event {
        Event {
            kind: EventKind::Delete,
            kv: KeyValue {
                key: format!("/registry/configmaps/{ns}/{name}").into_bytes(),
                mod_revision: rev,
                ..KeyValue::default()
            },
            prev_kv: None,
        }
    }

    /// A cache listed at `revision` with nothing in it.
    fn cache_at(revision: i64) -> Cache {
        let cache = Cache::new(PREFIX.to_vec());
        cache.lock().replace(Vec::new(), revision);
        cache.revision.send_replace(Some(revision));
        cache
    }

    fn revs(events: &[Arc<CachedEvent>]) -> Vec<i64> {
        events.iter().map(|e| e.revision).collect()
    }

    fn rv_of(obj: &CachedObject) -> &str {
        obj.value["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or("")
    }

    #[test]
    fn state_and_ring_follow_puts_and_deletes() {
        let mut st = State::default();
        st.replace(vec![kv("a", "x", 3)], 5);
        assert_eq!((st.oldest, st.revision, st.objects.len()), (5, 5, 1));
        st.apply(put("a", "y", 6)).expect("put");
        let modified = st.apply(put("a", "x", 7)).expect("put");
        assert_eq!(modified.prev.as_deref().map(rv_of), Some("3"));
        let deleted = st.apply(delete("a", "y", 8)).expect("delete");
        // A delete carries the last state, at the deletion's revision.
        assert_eq!(deleted.kind, EventKind::Delete);
        assert_eq!(rv_of(&deleted.object), "8");
        assert_eq!(deleted.prev.as_deref().map(rv_of), Some("6"));
        assert_eq!(st.objects.keys().count(), 1);
        assert_eq!(st.revision, 8);
        assert_eq!(
            revs(&st.ring.iter().cloned().collect::<Vec<_>>()),
            [6, 7, 8]
        );
        // A delete of a key the cache never had (and without a previous value) is skipped.
        assert!(st.apply(delete("a", "ghost", 9)).is_none());
    }

    #[test]
    fn the_ring_is_bounded_and_knows_what_it_no_longer_covers() {
        let cache = cache_at(10);
        {
            let mut st = cache.lock();
            for i in 0..(RING_CAPACITY as i64 + 5) {
                st.apply(put("a", &format!("o{i}"), 11 + i)).expect("put");
            }
            assert_eq!(st.ring.len(), RING_CAPACITY);
            // Changes 11..=15 fell out: a watch must start at 15 or later.
            assert_eq!(st.oldest, 15);
        }
        let err = cache
            .register(PREFIX, Start::After(14), false)
            .expect_err("too old");
        assert_eq!(err.code, 410);
        assert_eq!(err.message, "too old resource version: 14 (15)");
        let sub = cache
            .register(PREFIX, Start::After(15), false)
            .expect("cached");
        assert_eq!(sub.events.len(), RING_CAPACITY);
        assert_eq!(sub.events.first().map(|e| e.revision), Some(16));
        let sub = cache
            .register(PREFIX, Start::After(4000), false)
            .expect("cached");
        assert_eq!(sub.events.first().map(|e| e.revision), Some(4001));
    }

    #[test]
    fn a_watch_starts_from_the_state_or_the_ring_of_its_namespace() {
        let cache = cache_at(1);
        {
            let mut st = cache.lock();
            st.apply(put("a", "x", 2));
            st.apply(put("b", "x", 3));
            st.apply(put("a", "y", 4));
            st.apply(delete("a", "x", 5));
        }
        let a = b"/registry/configmaps/a/";
        let sub = cache
            .register(a, Start::State { min_revision: 0 }, false)
            .expect("state");
        let names: Vec<&str> = sub
            .objects
            .iter()
            .map(|o| o.value["metadata"]["name"].as_str().unwrap_or(""))
            .collect();
        assert_eq!((names, sub.revision), (vec!["y"], 5));
        let sub = cache.register(a, Start::After(2), false).expect("ring");
        assert_eq!(revs(&sub.events), [4, 5]);
        let sub = cache
            .register(PREFIX, Start::After(1), false)
            .expect("ring");
        assert_eq!(revs(&sub.events), [2, 3, 4, 5]);
    }

    #[tokio::test]
    async fn dispatch_fans_out_in_order_and_cuts_off_a_slow_watcher() {
        let cache = cache_at(1);
        let mut fast = cache
            .register(b"/registry/configmaps/a/", Start::After(1), false)
            .expect("fast");
        let mut other_ns = cache
            .register(b"/registry/configmaps/b/", Start::After(1), false)
            .expect("other");
        let slow = cache
            .register(PREFIX, Start::After(1), false)
            .expect("slow");
        let total = WATCHER_BUFFER as i64 + 10;
        let mut got = Vec::new();
        let started = Instant::now();
        for i in 0..total {
            cache
                .dispatch(vec![put("a", &format!("o{i}"), 2 + i)], 2 + i)
                .await;
            while let Ok(Message::Event(ev)) = fast.rx.try_recv() {
                got.push(ev.revision);
            }
        }
        // The slow watcher cost at most one budget, then was dropped.
        assert!(started.elapsed() < DISPATCH_BUDGET * 10);
        assert_eq!(cache.lock().watchers.len(), 2);
        assert_eq!(got, (2..2 + total).collect::<Vec<_>>());
        // The slow one gets what fit in its buffer, then its channel ends.
        let mut rx = slow.rx;
        let mut n = 0;
        while rx.recv().await.is_some() {
            n += 1;
        }
        assert_eq!(n, WATCHER_BUFFER);
        // The other namespace's watcher saw nothing.
        assert!(other_ns.rx.try_recv().is_err());
        assert_eq!(cache.lock().revision, 1 + total);
    }

    #[tokio::test]
    async fn bookmarks_carry_the_revision_in_order_with_events() {
        let cache = cache_at(1);
        let mut sub = cache.register(PREFIX, Start::After(1), true).expect("sub");
        let mut plain = cache.register(PREFIX, Start::After(1), false).expect("sub");
        cache.dispatch(vec![put("a", "x", 7)], 9).await;
        // Not due yet.
        cache.send_bookmarks();
        for slot in cache.lock().watchers.values_mut() {
            slot.next_bookmark = slot.next_bookmark.map(|_| Instant::now());
        }
        cache.send_bookmarks();
        assert!(matches!(sub.rx.recv().await, Some(Message::Event(e)) if e.revision == 7));
        assert!(matches!(sub.rx.recv().await, Some(Message::Bookmark(9))));
        assert!(sub.rx.try_recv().is_err());
        assert!(matches!(plain.rx.recv().await, Some(Message::Event(_))));
        assert!(plain.rx.try_recv().is_err());
    }
}
