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
//! - Pods are indexed by `spec.nodeName` (upstream's trigger and indexer of pods): a watch
//!   whose field selector requires one node name (a kubelet's) is offered only the changes of
//!   pods whose old or new node name is that one, and a list with that selector reads the
//!   index instead of scanning ([`indexed_field`]). Upstream indexes nothing else (no labels).
//! - The cache stops with the server (`AppState.shutdown`) or when the store closes; a custom
//!   resource's cache also when its CRD is deleted or no longer served
//!   ([`WatchCaches::stop_unserved`]), giving its memory back (a re-created CRD starts a new
//!   one). Built-in types' caches are never stopped, as upstream's.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::Bytes;
use rk3s_datastore::{Event, EventKind, ListOptions, WatchResponse};

use crate::storage::{Store, StoreError};
use serde_json::Value;
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;

use crate::registry::ResourceInfo;
use crate::rest::decode_stored;
use crate::selectors::{FieldSelector, Selectable, field_at, field_text};
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
/// `retryAfterSeconds` of the 504 for a revision the cache did not reach in time (upstream's).
const TOO_LARGE_RETRY_SECONDS: u32 = 1;
/// Pause before the datastore watch or list is tried again after an error.
const RETRY: Duration = Duration::from_millis(500);

/// One object as the cache holds it (`metadata.resourceVersion` set): its JSON, encoded once
/// however many watchers and lists send it, and what selectors read — never the decoded
/// object, which is several times its JSON in memory. Whoever needs the whole object (tables,
/// versions served by conversion, a watch's DELETED for a change out of its selection, a
/// delete's last state) decodes it: [`CachedObject::to_value`].
#[derive(Debug)]
pub(crate) struct CachedObject {
    /// The JSON without `apiVersion` and `kind` (a list item as upstream writes it; watch
    /// events put the two back in front).
    item: Bytes,
    api_version: Option<Box<str>>,
    kind: Option<Box<str>>,
    pub(crate) name: Box<str>,
    /// Empty for cluster-scoped objects.
    pub(crate) namespace: Box<str>,
    /// `metadata.labels` with string values, by key.
    labels: Box<[(Box<str>, Box<str>)]>,
    /// The text of each selectable field of the cache's type (see [`selectable_fields`]), as
    /// field selectors compare it.
    fields: Box<[(&'static str, Box<str>)]>,
}

/// A JSON object without its `apiVersion` and `kind`.
pub(crate) struct WithoutType<'a>(pub(crate) &'a serde_json::Map<String, Value>);

impl serde::Serialize for WithoutType<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        let mut m = s.serialize_map(None)?;
        for (k, v) in self.0 {
            if k != "apiVersion" && k != "kind" {
                m.serialize_entry(k, v)?;
            }
        }
        m.end()
    }
}

/// The field paths whose values a cache of `info`'s storage keeps per object: the resource's
/// field selector labels, mapped to the stored form for a version served by conversion
/// (selectors run on the stored form). `metadata.name` and `metadata.namespace` are always
/// kept.
pub(crate) fn selectable_fields(info: &ResourceInfo) -> Vec<&'static str> {
    info.fields
        .iter()
        .map(|f| info.conversion.map_or(*f, |c| c.field_label(f)))
        .filter(|f| *f != "metadata.name" && *f != "metadata.namespace")
        .collect()
}

/// The field a cache of `info`'s storage indexes its objects and watchers by, as upstream's
/// `TriggerFunc`/`Indexers`: pods by `spec.nodeName` (what each kubelet watches). Upstream
/// indexes no other type this way (nodes by `metadata.name`, which the exact-key scope of a
/// watch already covers).
pub(crate) fn indexed_field(info: &ResourceInfo) -> Option<&'static str> {
    (info.storage == "pods" && info.custom.is_none() && info.fields.contains(&"spec.nodeName"))
        .then_some("spec.nodeName")
}

/// The value of `info`'s indexed field that `fields` requires (`spec.nodeName=<node>`, also
/// an empty one), if it requires one: upstream's `RequiresExactMatch` on the trigger field.
pub(crate) fn index_value<'a>(info: &ResourceInfo, fields: &'a FieldSelector) -> Option<&'a str> {
    let field = indexed_field(info)?;
    fields
        .terms
        .iter()
        .find(|t| t.equal && t.field == field)
        .map(|t| t.value.as_str())
}

impl CachedObject {
    /// `value` encoded once, with what selectors read of it (`fields`: the selectable field
    /// paths of its type); `value` itself is dropped.
    pub(crate) fn new(value: Value, fields: &[&'static str]) -> Arc<Self> {
        let text = |v: Option<&Value>| -> Box<str> {
            v.and_then(Value::as_str).unwrap_or_default().into()
        };
        let meta = value.get("metadata");
        let labels = meta
            .and_then(|m| m.get("labels"))
            .and_then(Value::as_object)
            .map(|l| {
                // A serde_json map iterates in key order: the slice is sorted.
                l.iter()
                    .filter_map(|(k, v)| Some((k.as_str().into(), v.as_str()?.into())))
                    .collect()
            })
            .unwrap_or_default();
        let fields = fields
            .iter()
            .map(|path| (*path, field_text(field_at(&value, path)).into()))
            .collect();
        let item = match value.as_object() {
            Some(map) => serde_json::to_vec(&WithoutType(map)),
            None => serde_json::to_vec(&value),
        };
        Arc::new(CachedObject {
            item: Bytes::from(item.unwrap_or_default()),
            api_version: value
                .get("apiVersion")
                .and_then(Value::as_str)
                .map(Into::into),
            kind: value.get("kind").and_then(Value::as_str).map(Into::into),
            name: text(meta.and_then(|m| m.get("name"))),
            namespace: text(meta.and_then(|m| m.get("namespace"))),
            labels,
            fields,
        })
    }

    /// The object's JSON without `apiVersion` and `kind`, as a list item.
    pub(crate) fn item_json(&self) -> &Bytes {
        &self.item
    }

    /// Appends the object's whole JSON (`apiVersion` and `kind` first) to `out`.
    pub(crate) fn write_json(&self, out: &mut Vec<u8>) {
        self.write_json_as(out, None);
    }

    /// [`CachedObject::write_json`] with `api_version` instead of the stored one, if given
    /// (a custom resource served in another version than it is stored in: conversion `None`).
    pub(crate) fn write_json_as(&self, out: &mut Vec<u8>, api_version: Option<&str>) {
        let api_version = api_version.or(self.api_version.as_deref());
        let kind = self.kind.as_deref();
        if api_version.is_none() && kind.is_none() {
            out.extend_from_slice(&self.item);
            return;
        }
        out.reserve(self.item.len() + 64);
        out.push(b'{');
        let mut first = true;
        for (key, v) in [("apiVersion", api_version), ("kind", kind)] {
            if let Some(v) = v {
                if !first {
                    out.push(b',');
                }
                first = false;
                // Strings: cannot fail.
                let _ = serde_json::to_writer(&mut *out, key);
                out.push(b':');
                let _ = serde_json::to_writer(&mut *out, v);
            }
        }
        // `item` is `{...}`: its members follow.
        let members = self
            .item
            .get(1..self.item.len().saturating_sub(1))
            .unwrap_or(&[]);
        if !members.is_empty() {
            out.push(b',');
            out.extend_from_slice(members);
        }
        out.push(b'}');
    }

    /// The whole object, decoded from its JSON (for what needs more than the JSON, the labels
    /// and the selectable fields).
    pub(crate) fn to_value(&self) -> Value {
        let mut out = Vec::new();
        self.write_json(&mut out);
        // Written from a `Value` by `new`: it parses.
        serde_json::from_slice(&out).unwrap_or(Value::Null)
    }

    /// The same object at another resourceVersion (a delete's last state).
    fn at_revision(&self, revision: i64, fields: &[&'static str]) -> Arc<Self> {
        let mut value = self.to_value();
        crate::rest::set_resource_version(&mut value, revision);
        CachedObject::new(value, fields)
    }
}

impl Selectable for CachedObject {
    fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .binary_search_by(|(k, _)| (**k).cmp(key))
            .ok()
            .and_then(|i| self.labels.get(i))
            .map(|(_, v)| &**v)
    }

    fn field(&self, path: &str) -> Cow<'_, str> {
        match path {
            "metadata.name" => Cow::Borrowed(&self.name),
            "metadata.namespace" => Cow::Borrowed(&self.namespace),
            _ => match self.fields.iter().find(|(p, _)| *p == path) {
                Some((_, v)) => Cow::Borrowed(v),
                // A field the cache does not keep (a CRD's selectable fields changed since
                // the cache started): read from the object.
                None => Cow::Owned(self.to_value().field(path).into_owned()),
            },
        }
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
    /// This change's objects as the watches that decode them write them (a version served
    /// by conversion, `as=Table`): encoded by the first watcher that needs one, shared by
    /// the others.
    pub(crate) encoded: Encoded,
}

/// Encodings of an event's objects, by what they depend on (see `rest::watch`).
#[derive(Debug, Default)]
pub(crate) struct Encoded(Mutex<Vec<(Box<str>, Bytes)>>);

impl Encoded {
    /// The encoding under `key`, made by `encode` if no watcher made it yet. The lock is held
    /// while encoding, so each encoding is made once however many watchers ask at once.
    pub(crate) fn get_or_encode(&self, key: &str, encode: impl FnOnce() -> Bytes) -> Bytes {
        let mut done = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((_, bytes)) = done.iter().find(|(k, _)| &**k == key) {
            return bytes.clone();
        }
        let bytes = encode();
        done.push((key.into(), bytes.clone()));
        bytes
    }

    /// How many encodings were made.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }
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
    /// For [`Start::State`], when asked for (`share`): for each object of `objects`, the
    /// change in the ring that made it what it is, if the ring still has it — its `encoded`
    /// is where the watches that decode objects share the object's encodings.
    pub(crate) latest: Vec<Option<Arc<CachedEvent>>>,
    /// For [`Start::After`]: the ring's changes after the revision.
    pub(crate) events: Vec<Arc<CachedEvent>>,
    /// The revision `objects`/`events` bring the watcher to.
    pub(crate) revision: i64,
    /// Everything after `revision`; closed when the watcher is terminated or the cache stops.
    pub(crate) rx: mpsc::Receiver<Message>,
}

/// A list served by a cache: the objects (key order) and the revision they are at.
#[derive(Debug)]
pub(crate) struct CachedList {
    /// (storage key, object)
    pub(crate) objects: Vec<(Vec<u8>, Arc<CachedObject>)>,
    pub(crate) revision: i64,
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

    /// Registers a watch of the keys under `key_prefix` (a namespace's part of `info`'s
    /// storage prefix, or all of it; `exact`: of the one key `key_prefix`), served by the cache
    /// of `info`'s storage prefix. `value`: the value of the type's indexed field its selector
    /// requires ([`index_value`]): it is offered only the changes of objects that have (or had)
    /// that value. `share`: fill [`Subscription::latest`] (for a watch that decodes objects).
    #[allow(clippy::too_many_arguments)]
    #[tracing::instrument(level = "debug", skip_all, fields(resource = info.plural, ?start))]
    pub(crate) async fn subscribe(
        &self,
        info: &ResourceInfo,
        key_prefix: &[u8],
        exact: bool,
        value: Option<&str>,
        start: Start,
        bookmarks: bool,
        share: bool,
    ) -> Result<Subscription, ApiError> {
        let hint = match start {
            Start::After(rv) => rv,
            Start::State { .. } => 0,
        };
        let cache = self.cache(info, hint);
        let needed = match start {
            Start::After(rv) => rv,
            Start::State { min_revision } => min_revision,
        };
        cache.wait_fresh(needed).await?;
        cache.register_indexed(key_prefix, exact, value, start, bookmarks, share)
    }

    /// A list from the cache of `info`'s storage prefix: the objects whose keys start with
    /// `key_prefix` (or, `exact`, the one object with that key; `value`: only those whose
    /// indexed field has that value, read from the index), in key order, at the cache's
    /// revision once it has reached `min_revision` (0: whatever it has). A `get` with a
    /// resourceVersion is the `exact` list of its key (upstream's `Cacher.Get`). Waits at most [`FRESH_TIMEOUT`] for that revision,
    /// then 504 (upstream's "Too large resource version"). `None` while the cache is not
    /// running or has not finished its initial list (or has stopped): the caller reads the
    /// store, as upstream does while its cacher initializes, and starts the cache
    /// ([`WatchCaches::start`]) at the revision it read.
    #[tracing::instrument(level = "debug", skip_all, fields(resource = info.plural, min_revision))]
    pub(crate) async fn list(
        &self,
        info: &ResourceInfo,
        key_prefix: &[u8],
        exact: bool,
        value: Option<&str>,
        min_revision: i64,
    ) -> Result<Option<CachedList>, ApiError> {
        let running = self
            .caches
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&info.prefix(None))
            .cloned();
        let Some(cache) = running.filter(|c| c.ready()) else {
            return Ok(None);
        };
        cache.wait_fresh(min_revision).await?;
        let st = cache.lock();
        if st.stopped {
            return Ok(None);
        }
        let objects = st
            .select(key_prefix, exact, value)
            .into_iter()
            .map(|(k, o)| (k.clone(), o.clone()))
            .collect();
        Ok(Some(CachedList {
            objects,
            revision: st.revision,
        }))
    }

    /// Starts the cache of `info`'s storage prefix if it is not running, listing at
    /// `revision` (that of a list just read from the store: a watch from the list's
    /// resourceVersion is then served from the cache instead of being too old for it).
    pub(crate) fn start(&self, info: &ResourceInfo, revision: i64) {
        let _ = self.cache(info, revision);
    }

    /// The cache of `info`'s storage prefix, started if it is not running yet (keeping the
    /// selectable fields of `info` per object).
    fn cache(&self, info: &ResourceInfo, hint: i64) -> Arc<Cache> {
        let prefix = info.prefix(None);
        let mut caches = self.caches.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = caches.get(&prefix) {
            return c.clone();
        }
        let mut cache = Cache::new(prefix.clone(), selectable_fields(info));
        cache.custom = info.custom.is_some();
        cache.lock().set_index(indexed_field(info));
        let cache = Arc::new(cache);
        caches.insert(prefix, cache.clone());
        tokio::spawn(
            cache
                .clone()
                .run(self.store.clone(), self.shutdown.clone(), hint),
        );
        cache
    }

    /// Stops the caches of custom resources whose storage prefix is not in `served` (their
    /// CRD was deleted or no longer serves them), as upstream tears down a removed CRD's
    /// storage: their memory is given back, their watchers' streams end, and the next use of
    /// the prefix (a re-created CRD) starts a new cache from the store. Each stops once it has
    /// applied the changes up to `revision` (the CRD change's: the deletes of the custom
    /// resources reach its watchers first), or after [`FRESH_TIMEOUT`]. Built-in types'
    /// caches are never stopped.
    pub(crate) fn stop_unserved(&self, served: &HashSet<Vec<u8>>, revision: i64) {
        let mut stopping = Vec::new();
        self.caches
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|prefix, cache| {
                let keep = !cache.custom || served.contains(prefix);
                if !keep {
                    stopping.push(cache.clone());
                }
                keep
            });
        for cache in stopping {
            tracing::info!(
                prefix = %String::from_utf8_lossy(&cache.prefix),
                "watch cache: stopping (the custom resource is no longer served)"
            );
            tokio::spawn(async move {
                // Too large (it did not catch up in time): stop all the same.
                let _ = cache.wait_fresh(revision).await;
                cache.stop.send_replace(true);
            });
        }
    }

    /// How many caches are running.
    #[cfg(test)]
    fn running(&self) -> usize {
        self.caches.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// A watcher as the dispatcher sees it.
#[derive(Debug)]
struct Slot {
    /// The keys it sees: those starting with `scope`, or (`exact`) that one key.
    scope: Vec<u8>,
    exact: bool,
    /// The value of the cache's indexed field its selector requires (never with `exact`):
    /// it is in `State.value_watchers` instead of `State.by_scope`.
    value: Option<Box<str>>,
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
    /// The watchers by `Slot.scope`: a change is offered to those of the storage prefix, of
    /// its key's namespace and of its key only, not to every watcher of the prefix.
    by_scope: HashMap<Vec<u8>, Vec<u64>>,
    /// The field objects and watchers are indexed by ([`indexed_field`]), if any.
    index: Option<&'static str>,
    /// The keys of the objects by the value of their indexed field.
    by_value: HashMap<Box<str>, BTreeSet<Vec<u8>>>,
    /// The watchers that require a value of the indexed field (`Slot.value`), by that value:
    /// a change is offered to those of its object's new and previous values only.
    value_watchers: HashMap<Box<str>, Vec<u64>>,
    next_id: u64,
    stopped: bool,
    /// The field paths each object keeps the values of ([`selectable_fields`]).
    fields: Vec<&'static str>,
}

impl State {
    /// Applies one store event; `None` if its value cannot be read (logged, skipped).
    fn apply(&mut self, ev: Event) -> Option<Arc<CachedEvent>> {
        let revision = ev.kv.mod_revision;
        let key = ev.kv.key.clone();
        let cached = match ev.kind {
            EventKind::Put => {
                let obj = match decode_stored(&ev.kv) {
                    Ok(o) => CachedObject::new(o, &self.fields),
                    Err(e) => {
                        tracing::warn!(error = %e.message, "watch cache: skipping a change");
                        return None;
                    }
                };
                let prev = self.objects.insert(key.clone(), obj.clone());
                self.reindex(&key, prev.as_deref(), Some(&obj));
                CachedEvent {
                    key,
                    revision,
                    kind: EventKind::Put,
                    object: obj,
                    prev,
                    encoded: Encoded::default(),
                }
            }
            EventKind::Delete => {
                let removed = self.objects.remove(&key);
                self.reindex(&key, removed.as_deref(), None);
                let prev = removed
                    .or_else(|| {
                        let kv = ev.prev_kv.as_ref()?;
                        decode_stored(kv)
                            .ok()
                            .map(|o| CachedObject::new(o, &self.fields))
                    })
                    .or_else(|| {
                        tracing::warn!(
                            key = %String::from_utf8_lossy(&key),
                            "watch cache: a delete without a previous value"
                        );
                        None
                    })?;
                CachedEvent {
                    key,
                    revision,
                    kind: EventKind::Delete,
                    object: prev.at_revision(revision, &self.fields),
                    prev: Some(prev),
                    encoded: Encoded::default(),
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
        let fields = &self.fields;
        self.objects = kvs
            .into_iter()
            .filter_map(|kv| match decode_stored(&kv) {
                Ok(o) => Some((kv.key, CachedObject::new(o, fields))),
                Err(e) => {
                    tracing::warn!(error = %e.message, "watch cache: skipping an object");
                    None
                }
            })
            .collect();
        self.by_value.clear();
        if let Some(field) = self.index {
            for (key, obj) in &self.objects {
                self.by_value
                    .entry(obj.field(field).into())
                    .or_default()
                    .insert(key.clone());
            }
        }
        self.ring.clear();
        self.oldest = revision;
        self.revision = revision;
        self.clear_watchers();
    }

    /// Indexes objects and watchers by `index` (set before the initial list).
    fn set_index(&mut self, index: Option<&'static str>) {
        self.index = index;
    }

    /// Moves `key` in the index from its value in `before` to its value in `after`.
    fn reindex(&mut self, key: &[u8], before: Option<&CachedObject>, after: Option<&CachedObject>) {
        let Some(field) = self.index else {
            return;
        };
        let old = before.map(|o| o.field(field));
        let new = after.map(|o| o.field(field));
        if old == new {
            return;
        }
        if let Some(old) = old
            && let Some(keys) = self.by_value.get_mut(&*old)
        {
            keys.remove(key);
            if keys.is_empty() {
                self.by_value.remove(&*old);
            }
        }
        if let Some(new) = new {
            match self.by_value.get_mut(&*new) {
                Some(keys) => {
                    keys.insert(key.to_vec());
                }
                None => {
                    self.by_value
                        .insert(new.into(), BTreeSet::from([key.to_vec()]));
                }
            }
        }
    }

    /// The objects under `key_prefix` (`exact`: the one with that key; `value`: those whose
    /// indexed field has that value, read from the index), in key order.
    fn select(
        &self,
        key_prefix: &[u8],
        exact: bool,
        value: Option<&str>,
    ) -> Vec<(&Vec<u8>, &Arc<CachedObject>)> {
        if exact {
            return self.objects.get_key_value(key_prefix).into_iter().collect();
        }
        if let (Some(value), Some(_)) = (value, self.index) {
            return self
                .by_value
                .get(value)
                .into_iter()
                .flatten()
                .filter(|k| k.starts_with(key_prefix))
                .filter_map(|k| self.objects.get_key_value(k))
                .collect();
        }
        self.objects
            .range(key_prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(key_prefix))
            .collect()
    }

    fn add_watcher(&mut self, id: u64, slot: Slot) {
        match &slot.value {
            Some(value) => self
                .value_watchers
                .entry(value.clone())
                .or_default()
                .push(id),
            None => self
                .by_scope
                .entry(slot.scope.clone())
                .or_default()
                .push(id),
        }
        self.watchers.insert(id, slot);
    }

    fn remove_watcher(&mut self, id: u64) {
        let Some(slot) = self.watchers.remove(&id) else {
            return;
        };
        let remove = |ids: &mut Vec<u64>| {
            ids.retain(|i| *i != id);
            ids.is_empty()
        };
        match &slot.value {
            Some(value) => {
                if self.value_watchers.get_mut(value).is_some_and(remove) {
                    self.value_watchers.remove(value);
                }
            }
            None => {
                if self.by_scope.get_mut(&slot.scope).is_some_and(remove) {
                    self.by_scope.remove(&slot.scope);
                }
            }
        }
    }

    fn clear_watchers(&mut self) {
        self.watchers.clear();
        self.by_scope.clear();
        self.value_watchers.clear();
    }

    /// The watchers that see the change `ev` under the storage prefix `prefix`: those of the
    /// prefix, of the key's namespace and of the key, and those requiring the new or the
    /// previous value of the indexed field (upstream's trigger values of an event) whose
    /// scope holds the key.
    fn watchers_of(&self, prefix: &[u8], ev: &CachedEvent) -> Vec<u64> {
        let mut ids = self.scope_watchers_of(prefix, &ev.key);
        if let Some(field) = self.index
            && !self.value_watchers.is_empty()
        {
            let new = ev.object.field(field);
            let old = ev.prev.as_ref().map(|p| p.field(field));
            let values = std::iter::once(&new).chain(old.as_ref().filter(|o| **o != new));
            for value in values {
                for id in self.value_watchers.get(&**value).into_iter().flatten() {
                    if self
                        .watchers
                        .get(id)
                        .is_some_and(|s| ev.key.starts_with(&s.scope))
                    {
                        ids.push(*id);
                    }
                }
            }
        }
        ids
    }

    /// The watchers (not indexed by value) that see a change of `key` under the storage
    /// prefix `prefix`.
    fn scope_watchers_of(&self, prefix: &[u8], key: &[u8]) -> Vec<u64> {
        let namespace = key
            .get(prefix.len()..)
            .and_then(|rest| rest.iter().position(|b| *b == b'/'))
            .map(|slash| &key[..prefix.len() + slash + 1]);
        let mut ids = Vec::new();
        let scopes = [
            Some((prefix, false)),
            namespace.map(|n| (n, false)),
            Some((key, true)),
        ];
        for (scope, exact) in scopes.into_iter().flatten() {
            for id in self.by_scope.get(scope).into_iter().flatten() {
                if self.watchers.get(id).is_some_and(|s| s.exact == exact) {
                    ids.push(*id);
                }
            }
        }
        ids
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
    /// A custom resource's cache ([`WatchCaches::stop_unserved`] may stop it).
    custom: bool,
    /// Set to stop the cache before the server stops.
    stop: watch::Sender<bool>,
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
    fn new(prefix: Vec<u8>, fields: Vec<&'static str>) -> Self {
        Cache {
            prefix,
            state: Mutex::new(State {
                fields,
                ..State::default()
            }),
            revision: watch::Sender::new(None),
            progress: Notify::new(),
            custom: false,
            stop: watch::Sender::new(false),
        }
    }

    /// [`Cache::register_indexed`] of a watcher that requires no value of the indexed field.
    #[cfg(test)]
    fn register(
        &self,
        key_prefix: &[u8],
        exact: bool,
        start: Start,
        bookmarks: bool,
    ) -> Result<Subscription, ApiError> {
        self.register_indexed(key_prefix, exact, None, start, bookmarks, false)
    }

    /// The watcher's starting point and its channel, registered in one step with respect to
    /// dispatch: nothing is missed or sent twice between the two. `value`: the value of the
    /// indexed field the watcher's selector requires (ignored for `exact` watchers and caches
    /// without an index). `share`: fill [`Subscription::latest`].
    fn register_indexed(
        &self,
        key_prefix: &[u8],
        exact: bool,
        value: Option<&str>,
        start: Start,
        bookmarks: bool,
        share: bool,
    ) -> Result<Subscription, ApiError> {
        let mut st = self.lock();
        let value = value.filter(|_| !exact && st.index.is_some());
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
            latest: Vec::new(),
            events: Vec::new(),
            revision: st.revision,
            rx,
        };
        match start {
            Start::State { .. } => {
                let selected = st.select(key_prefix, exact, value);
                if share && !st.ring.is_empty() {
                    // The last change of each key in the ring, if the object is still its.
                    let mut last: HashMap<&[u8], &Arc<CachedEvent>> = HashMap::new();
                    for ev in st.ring.iter().rev() {
                        if ev.key.starts_with(key_prefix) {
                            last.entry(&ev.key[..]).or_insert(ev);
                        }
                    }
                    sub.latest = selected
                        .iter()
                        .map(|(k, o)| {
                            last.get(&k[..])
                                .filter(|ev| Arc::ptr_eq(&ev.object, o))
                                .map(|ev| Arc::clone(ev))
                        })
                        .collect();
                }
                sub.objects = selected.into_iter().map(|(_, o)| o.clone()).collect();
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
                    .filter(|e| {
                        if exact {
                            e.key == key_prefix
                        } else {
                            e.key.starts_with(key_prefix)
                        }
                    })
                    .cloned()
                    .collect();
            }
        }
        let id = st.next_id;
        st.next_id += 1;
        st.add_watcher(
            id,
            Slot {
                scope: key_prefix.to_vec(),
                exact,
                value: value.map(Into::into),
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
        // Upstream's watch cache asks the client to come back in a second.
        Err(ApiError::too_large_resource_version(
            needed,
            current,
            TOO_LARGE_RETRY_SECONDS,
        ))
    }

    /// Whether the initial list is in (and the cache has not stopped).
    fn ready(&self) -> bool {
        self.revision.borrow().is_some() && !self.lock().stopped
    }

    #[tracing::instrument(name = "watch_cache", skip_all, fields(prefix = %String::from_utf8_lossy(&self.prefix)))]
    async fn run(self: Arc<Self>, store: Store, shutdown: watch::Receiver<bool>, hint: i64) {
        let mut stop = self.stop.subscribe();
        tokio::select! {
            _ = self.clone().follow_store(store, shutdown, hint, false) => {}
            _ = stop.wait_for(|s| *s) => {
                tracing::debug!("watch cache stopped");
                self.finish();
            }
        }
    }

    /// Marks the cache stopped: its watchers' streams end (after what they were sent), and
    /// whoever waits for a revision is woken.
    fn finish(&self) {
        let mut st = self.lock();
        st.stopped = true;
        st.clear_watchers();
        // Nothing reads a stopped cache: its memory goes back now, whoever still holds it.
        st.objects = BTreeMap::new();
        st.by_value = HashMap::new();
        st.ring = VecDeque::new();
        drop(st);
        self.revision.send_modify(|_| {});
    }

    /// The cache's task: list (unless `listed`: the state is already at the cache's
    /// revision), follow the datastore watch, list again when its history is gone.
    async fn follow_store(
        self: Arc<Self>,
        store: Store,
        mut shutdown: watch::Receiver<bool>,
        hint: i64,
        mut listed: bool,
    ) {
        let mut list_at = hint;
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
        self.finish();
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
                for id in st.watchers_of(&self.prefix, &ev) {
                    let Some(slot) = st.watchers.get(&id) else {
                        continue;
                    };
                    let id = &id;
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
                st.remove_watcher(id);
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
                    self.lock().remove_watcher(id);
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
        let cache = Cache::new(PREFIX.to_vec(), Vec::new());
        cache.lock().replace(Vec::new(), revision);
        cache.revision.send_replace(Some(revision));
        cache
    }

    fn revs(events: &[Arc<CachedEvent>]) -> Vec<i64> {
        events.iter().map(|e| e.revision).collect()
    }

    fn rv_of(obj: &CachedObject) -> i64 {
        obj.to_value()["metadata"]["resourceVersion"]
            .as_str()
            .and_then(|rv| rv.parse().ok())
            .unwrap_or(0)
    }

    #[test]
    fn state_and_ring_follow_puts_and_deletes() {
        let mut st = State::default();
        st.replace(vec![kv("a", "x", 3)], 5);
        assert_eq!((st.oldest, st.revision, st.objects.len()), (5, 5, 1));
        st.apply(put("a", "y", 6)).expect("put");
        let modified = st.apply(put("a", "x", 7)).expect("put");
        assert_eq!(modified.prev.as_deref().map(rv_of), Some(3));
        let deleted = st.apply(delete("a", "y", 8)).expect("delete");
        // A delete carries the last state, at the deletion's revision.
        assert_eq!(deleted.kind, EventKind::Delete);
        assert_eq!(rv_of(&deleted.object), 8);
        assert_eq!(deleted.prev.as_deref().map(rv_of), Some(6));
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
            .register(PREFIX, false, Start::After(14), false)
            .expect_err("too old");
        assert_eq!(err.code, 410);
        assert_eq!(err.message, "too old resource version: 14 (15)");
        let sub = cache
            .register(PREFIX, false, Start::After(15), false)
            .expect("cached");
        assert_eq!(sub.events.len(), RING_CAPACITY);
        assert_eq!(sub.events.first().map(|e| e.revision), Some(16));
        let sub = cache
            .register(PREFIX, false, Start::After(4000), false)
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
            .register(a, false, Start::State { min_revision: 0 }, false)
            .expect("state");
        let names: Vec<&str> = sub.objects.iter().map(|o| &*o.name).collect();
        assert_eq!((names, sub.revision), (vec!["y"], 5));
        let sub = cache
            .register(a, false, Start::After(2), false)
            .expect("ring");
        assert_eq!(revs(&sub.events), [4, 5]);
        let sub = cache
            .register(PREFIX, false, Start::After(1), false)
            .expect("ring");
        assert_eq!(revs(&sub.events), [2, 3, 4, 5]);
    }

    #[tokio::test]
    async fn dispatch_fans_out_in_order_and_cuts_off_a_slow_watcher() {
        let cache = cache_at(1);
        let mut fast = cache
            .register(b"/registry/configmaps/a/", false, Start::After(1), false)
            .expect("fast");
        let mut other_ns = cache
            .register(b"/registry/configmaps/b/", false, Start::After(1), false)
            .expect("other");
        let slow = cache
            .register(PREFIX, false, Start::After(1), false)
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
        let mut sub = cache
            .register(PREFIX, false, Start::After(1), true)
            .expect("sub");
        let mut plain = cache
            .register(PREFIX, false, Start::After(1), false)
            .expect("sub");
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

    #[tokio::test]
    async fn a_change_is_offered_to_its_prefix_namespace_and_key_watchers_only() {
        let cache = cache_at(1);
        let mut all = cache
            .register(PREFIX, false, Start::After(1), false)
            .expect("all");
        let mut ns_a = cache
            .register(b"/registry/configmaps/a/", false, Start::After(1), false)
            .expect("a");
        let mut ns_b = cache
            .register(b"/registry/configmaps/b/", false, Start::After(1), false)
            .expect("b");
        let mut x = cache
            .register(b"/registry/configmaps/a/x", true, Start::After(1), false)
            .expect("x");
        // `a/x` is not a prefix of `a/xy` for an exact watcher.
        let mut xy = cache
            .register(b"/registry/configmaps/a/xy", true, Start::After(1), false)
            .expect("xy");
        cache
            .dispatch(vec![put("a", "x", 2), put("b", "y", 3)], 3)
            .await;
        let revs = |rx: &mut mpsc::Receiver<Message>| {
            let mut out = Vec::new();
            while let Ok(Message::Event(ev)) = rx.try_recv() {
                out.push(ev.revision);
            }
            out
        };
        assert_eq!(revs(&mut all.rx), [2, 3]);
        assert_eq!(revs(&mut ns_a.rx), [2]);
        assert_eq!(revs(&mut ns_b.rx), [3]);
        assert_eq!(revs(&mut x.rx), [2]);
        assert!(revs(&mut xy.rx).is_empty());
        // A watcher of one key starts from that key's state and ring only.
        let again = cache
            .register(b"/registry/configmaps/a/x", true, Start::After(1), false)
            .expect("x again");
        assert_eq!(revs_of(&again.events), [2]);
        let sub = cache
            .register(
                b"/registry/configmaps/a/x",
                true,
                Start::State { min_revision: 0 },
                false,
            )
            .expect("x state");
        assert_eq!(sub.objects.len(), 1);
        // Gone watchers leave the index.
        drop((all, ns_a, ns_b, x, xy, again, sub));
        // (A watcher whose client is gone is dropped when a change is next offered to it.)
        cache
            .dispatch(
                vec![put("a", "x", 4), put("b", "y", 5), put("a", "xy", 6)],
                6,
            )
            .await;
        let st = cache.lock();
        assert!(st.watchers.is_empty() && st.by_scope.is_empty());
    }

    const PODS: &[u8] = b"/registry/pods/";

    /// A pod's change: `node` its `spec.nodeName` (`None`: not scheduled).
    fn pod(ns: &str, name: &str, node: Option<&str>, rev: i64) -> Event {
        let mut spec = json!({"containers": [{"name": "c", "image": "busybox"}]});
        if let Some(node) = node {
            spec["nodeName"] = json!(node);
        }
        Event {
            kind: EventKind::Put,
            kv: KeyValue {
                key: format!("/registry/pods/{ns}/{name}").into_bytes(),
                value: serde_json::to_vec(&json!({
                    "apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": name, "namespace": ns}, "spec": spec,
                }))
                .expect("json"),
                mod_revision: rev,
                create_revision: rev,
                version: 1,
                lease: 0,
            },
            prev_kv: None,
        }
    }

    fn pod_delete(ns: &str, name: &str, rev: i64) -> Event {
        Event {
            kind: EventKind::Delete,
            kv: KeyValue {
                key: format!("/registry/pods/{ns}/{name}").into_bytes(),
                mod_revision: rev,
                ..KeyValue::default()
            },
            prev_kv: None,
        }
    }

    /// A cache of pods, as `WatchCaches` starts it, listed at `revision` with nothing in it.
    fn pod_cache_at(revision: i64) -> Cache {
        let info = crate::registry::REGISTRY
            .find("", "v1", "pods")
            .expect("pods are served");
        assert_eq!(indexed_field(info), Some("spec.nodeName"));
        let cache = Cache::new(PODS.to_vec(), selectable_fields(info));
        cache.lock().set_index(indexed_field(info));
        cache.lock().replace(Vec::new(), revision);
        cache.revision.send_replace(Some(revision));
        cache
    }

    fn names(objects: &[Arc<CachedObject>]) -> Vec<&str> {
        objects.iter().map(|o| &*o.name).collect()
    }

    /// 1000 kubelets, each watching the pods of its node: a pod's change is offered to the
    /// watcher of its node (and, when it moves, of the node it leaves) and to the watchers of
    /// all pods, never to the other 999 (upstream's trigger index of pods by node).
    #[tokio::test]
    async fn a_pod_change_is_offered_to_the_watchers_of_its_old_and_new_node_only() {
        const NODES: usize = 1000;
        let cache = pod_cache_at(1);
        let mut kubelets: Vec<Subscription> = (0..NODES)
            .map(|i| {
                let node = format!("n{i}");
                cache
                    .register_indexed(PODS, false, Some(&node), Start::After(1), false, false)
                    .expect("kubelet")
            })
            .collect();
        // The scheduler's view of unscheduled pods (`spec.nodeName=`) and a watcher of all.
        let mut unscheduled = cache
            .register_indexed(PODS, false, Some(""), Start::After(1), false, false)
            .expect("unscheduled");
        let mut all = cache
            .register(PODS, false, Start::After(1), false)
            .expect("all");
        // A kubelet's watch of one namespace sees only that namespace's pods of its node.
        let mut ns_b = cache
            .register_indexed(
                b"/registry/pods/b/",
                false,
                Some("n7"),
                Start::After(1),
                false,
                false,
            )
            .expect("namespace b");
        let offered = |ev: Event| {
            let mut st = cache.lock();
            let ev = st.apply(ev).expect("applied");
            st.watchers_of(PODS, &ev).len()
        };
        // Created unscheduled: the unscheduled watcher and the watcher of all.
        assert_eq!(offered(pod("a", "p", None, 2)), 2);
        // Bound to n7: n7's kubelet, the unscheduled watcher (it leaves ""), all.
        assert_eq!(offered(pod("a", "p", Some("n7"), 3)), 3);
        // Changed on n7: n7's kubelet and all.
        assert_eq!(offered(pod("a", "p", Some("n7"), 4)), 2);
        // Moved to n8: both kubelets and all.
        assert_eq!(offered(pod("a", "p", Some("n8"), 5)), 3);
        // Deleted: n8's kubelet and all.
        assert_eq!(offered(pod_delete("a", "p", 6)), 2);
        // In namespace b on n7: n7's kubelets (all namespaces, and b's) and all.
        assert_eq!(offered(pod("b", "q", Some("n7"), 7)), 3);

        // Through dispatch: each watcher gets what it is offered, nobody else anything.
        cache.dispatch(vec![pod("b", "r", Some("n9"), 8)], 8).await;
        let count = |sub: &mut Subscription| {
            let mut n = 0;
            while sub.rx.try_recv().is_ok() {
                n += 1;
            }
            n
        };
        assert_eq!(count(&mut kubelets[9]), 1);
        assert_eq!(count(&mut all), 1);
        assert_eq!(count(&mut unscheduled), 0);
        assert_eq!(count(&mut ns_b), 0);
        assert_eq!(
            kubelets.iter_mut().map(count).sum::<usize>(),
            0,
            "no other kubelet is offered the change"
        );

        // Lists and initial states of one node read the index, in key order, within the
        // scope asked for.
        cache.dispatch(vec![pod("a", "s", Some("n9"), 9)], 9).await;
        {
            let st = cache.lock();
            let listed: Vec<&str> = st
                .select(PODS, false, Some("n9"))
                .iter()
                .map(|(_, o)| &*o.name)
                .collect();
            assert_eq!(listed, ["s", "r"]);
            let in_b: Vec<&str> = st
                .select(b"/registry/pods/b/", false, Some("n9"))
                .iter()
                .map(|(_, o)| &*o.name)
                .collect();
            assert_eq!(in_b, ["r"]);
            assert_eq!(st.select(PODS, false, Some("n8")).len(), 0);
            assert_eq!(st.by_value.get("n7").map(BTreeSet::len), Some(1));
        }
        let sub = cache
            .register_indexed(
                PODS,
                false,
                Some("n9"),
                Start::State { min_revision: 0 },
                false,
                true,
            )
            .expect("state");
        assert_eq!(names(&sub.objects), ["s", "r"]);
        // With the changes that made them (still in the ring), for shared encodings.
        let made: Vec<Option<i64>> = sub
            .latest
            .iter()
            .map(|e| e.as_ref().map(|e| e.revision))
            .collect();
        assert_eq!(made, [Some(9), Some(8)]);
        // Gone watchers leave the index.
        drop((kubelets, unscheduled, all, ns_b, sub));
        cache
            .dispatch(
                vec![pod("a", "t", Some("n1"), 10), pod("a", "t", None, 11)],
                11,
            )
            .await;
        // (Offered: n1's kubelet and all, then the unscheduled watcher.)
        let st = cache.lock();
        assert!(!st.value_watchers.contains_key("n1") && !st.value_watchers.contains_key(""));
        assert_eq!(st.watchers.len(), NODES + 4 - 3);
    }

    /// Time per pod change with 1000 kubelets watching `spec.nodeName=<their node>`: the
    /// dispatch and each offered watcher's selector check (what its watch task does with it;
    /// not the task's wake-ups),
    /// with the node index and with every kubelet as a watcher of all pods (before it).
    /// `cargo test -p rk3s-apiserver --lib -- --ignored --exact --nocapture
    /// watch_cache::tests::time_of_a_pod_change_with_1000_kubelets`.
    #[tokio::test]
    #[ignore = "a measurement: run alone"]
    async fn time_of_a_pod_change_with_1000_kubelets() {
        const NODES: usize = 1000;
        const CHANGES: i64 = 2000;
        let info = crate::registry::REGISTRY
            .find("", "v1", "pods")
            .expect("pods are served");
        for indexed in [true, false] {
            let cache = pod_cache_at(1);
            let mut kubelets: Vec<(Subscription, FieldSelector)> = (0..NODES)
                .map(|i| {
                    let selectors =
                        FieldSelector::parse(&format!("spec.nodeName=n{i}"), info.fields)
                            .expect("selector");
                    let value = indexed.then(|| format!("n{i}"));
                    let sub = cache
                        .register_indexed(
                            PODS,
                            false,
                            value.as_deref(),
                            Start::After(1),
                            false,
                            false,
                        )
                        .expect("kubelet");
                    (sub, selectors)
                })
                .collect();
            let started = Instant::now();
            let mut seen = 0;
            for i in 0..CHANGES {
                let node = format!("n{}", i as usize % NODES);
                cache
                    .dispatch(vec![pod("a", &format!("p{i}"), Some(&node), 2 + i)], 2 + i)
                    .await;
                // Each watcher's task takes what it was sent (here: every 100 changes, within
                // the channels' buffers; an idle one costs nothing then).
                if (i + 1) % 100 != 0 {
                    continue;
                }
                for (sub, selectors) in &mut kubelets {
                    while let Ok(Message::Event(ev)) = sub.rx.try_recv() {
                        if selectors.matches(&*ev.object) {
                            seen += 1;
                        }
                    }
                }
            }
            let per_change = started.elapsed() / CHANGES as u32;
            println!(
                "{NODES} kubelets, index {indexed}: {per_change:?} per pod change ({seen} seen)"
            );
            assert_eq!(seen, CHANGES);
        }
    }

    /// The index follows the objects through a re-list.
    #[test]
    fn a_relist_rebuilds_the_index() {
        let cache = pod_cache_at(1);
        let mut st = cache.lock();
        st.apply(pod("a", "old", Some("n1"), 2));
        let kvs = vec![pod("a", "p", Some("n1"), 3).kv, pod("a", "q", None, 4).kv];
        st.replace(kvs, 4);
        let on = |st: &State, node: &str| -> Vec<String> {
            st.select(PODS, false, Some(node))
                .iter()
                .map(|(_, o)| o.name.to_string())
                .collect()
        };
        assert_eq!(on(&st, "n1"), ["p"]);
        assert_eq!(on(&st, ""), ["q"]);
        assert_eq!(st.by_value.len(), 2);
    }

    fn revs_of(events: &[Arc<CachedEvent>]) -> Vec<i64> {
        revs(events)
    }

    #[test]
    fn cached_json_is_the_object_with_and_without_its_type() {
        let value = json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "x", "resourceVersion": "3"}, "data": {"k": "v"},
        });
        let obj = CachedObject::new(value.clone(), &[]);
        let item: Value = serde_json::from_slice(obj.item_json()).expect("item json");
        assert_eq!(
            item,
            json!({"metadata": {"name": "x", "resourceVersion": "3"}, "data": {"k": "v"}})
        );
        let mut whole = Vec::new();
        obj.write_json(&mut whole);
        assert!(whole.starts_with(br#"{"apiVersion":"v1","kind":"ConfigMap","#));
        let whole: Value = serde_json::from_slice(&whole).expect("json");
        assert_eq!(whole, value);
        assert_eq!(obj.to_value(), value);
        // Another served version (a custom resource's): only `apiVersion` differs.
        let mut other = Vec::new();
        obj.write_json_as(&mut other, Some("example.com/v2"));
        let mut expected = value.clone();
        expected["apiVersion"] = json!("example.com/v2");
        assert_eq!(
            serde_json::from_slice::<Value>(&other).expect("json"),
            expected
        );
        // Nothing but the type.
        let bare_value = json!({"apiVersion": "v1", "kind": "ConfigMap"});
        let bare = CachedObject::new(bare_value.clone(), &[]);
        let mut out = Vec::new();
        bare.write_json(&mut out);
        assert_eq!(
            serde_json::from_slice::<Value>(&out).expect("json"),
            bare_value
        );
    }

    /// What selectors read of a cached object is what they read of the object itself: labels,
    /// name and namespace, the selectable fields kept, and any other field (decoded).
    #[test]
    fn a_cached_object_answers_selectors_as_the_object_does() {
        use crate::selectors::{FieldSelector, LabelSelector, Selectable};
        let value = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": "a", "resourceVersion": "12",
                         "labels": {"app": "web", "tier": "front", "n": "5"}},
            "spec": {"nodeName": "n1", "hostNetwork": true, "priority": 7},
            "status": {"phase": "Running"},
        });
        let obj = CachedObject::new(value.clone(), &["spec.nodeName", "status.phase"]);
        assert_eq!((&*obj.name, &*obj.namespace), ("p", "a"));
        for key in ["app", "tier", "n", "missing"] {
            assert_eq!(obj.label(key), value.label(key), "{key}");
        }
        for path in [
            "metadata.name",
            "metadata.namespace",
            "spec.nodeName",
            "status.phase",
            // Not kept: read from the JSON.
            "spec.hostNetwork",
            "spec.priority",
            "spec.missing",
        ] {
            assert_eq!(obj.field(path), value.field(path), "{path}");
        }
        assert_eq!(obj.field("spec.hostNetwork"), "true");
        for (labels, fields, expected) in [
            ("app=web,tier in (front,back)", "spec.nodeName=n1", true),
            ("app=web,n>3", "status.phase!=Running", false),
            ("!app", "", false),
            ("", "metadata.namespace=a,spec.hostNetwork=true", true),
        ] {
            let l = LabelSelector::parse(labels).expect("labels");
            let f = FieldSelector::parse(
                fields,
                &["spec.nodeName", "status.phase", "spec.hostNetwork"],
            )
            .expect("fields");
            let on_cached = l.matches_labels_of(&|k| obj.label(k)) && f.matches(&*obj);
            let on_value = l.matches_labels_of(&|k| value.label(k)) && f.matches(&value);
            assert_eq!(
                (on_cached, on_value),
                (expected, expected),
                "{labels} {fields}"
            );
        }
    }

    /// VmRSS of this process, in KiB.
    fn vm_rss_kib() -> u64 {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            })
            .unwrap_or(0)
    }

    /// A pod as the apiserver stores it for the apiserver benchmark's creates: the bench's pod,
    /// defaulted and admitted (service account volume, tolerations), with server metadata.
    fn stored_pod(i: usize) -> Vec<u8> {
        let info = crate::registry::REGISTRY
            .find("", "v1", "pods")
            .expect("pods are served");
        let mut pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": format!("pod-{i}"), "namespace": "bench",
                "labels": {"app": "bench", "tier": "web"},
                "uid": format!("2f0a63f1-5a4e-4e4b-9d8e-{i:012}"),
                "creationTimestamp": "2026-11-29T13:00:00Z",
                "managedFields": [{
                    "manager": "apiserver", "operation": "Update", "apiVersion": "v1",
                    "time": "2026-11-29T13:00:00Z", "fieldsType": "FieldsV1",
                    "fieldsV1": {"f:metadata": {"f:labels": {".": {}, "f:app": {}, "f:tier": {}}},
                        "f:spec": {"f:containers": {"k:{\"name\":\"c\"}": {".": {},
                        "f:command": {}, "f:image": {}, "f:imagePullPolicy": {}, "f:name": {},
                        "f:resources": {}, "f:terminationMessagePath": {},
                        "f:terminationMessagePolicy": {}}}, "f:dnsPolicy": {},
                        "f:enableServiceLinks": {}, "f:restartPolicy": {},
                        "f:schedulerName": {}, "f:securityContext": {},
                        "f:terminationGracePeriodSeconds": {}}},
                }],
            },
            "spec": {"containers": [{"name": "c", "image": "busybox:1.36",
                                     "command": ["sleep", "3600"]}]},
            "status": {"phase": "Pending", "qosClass": "BestEffort"},
        });
        crate::defaults::apply(info, &mut pod, true);
        serde_json::to_vec(&pod).expect("json")
    }

    const MEASURED_PODS: usize = 10_000;

    /// VmRSS growth, in bytes per pod, while `hold` turns the stored values of
    /// [`MEASURED_PODS`] pods (the apiserver benchmark's load) into what it keeps; the stored
    /// values stay alive meanwhile, so that their memory is not reused. Printed with the JSON
    /// sizes.
    fn rss_per_pod<T>(what: &str, hold: impl FnOnce(Vec<KeyValue>) -> T) -> usize {
        let kvs: Vec<KeyValue> = (0..MEASURED_PODS)
            .map(|i| KeyValue {
                key: format!("/registry/pods/bench/pod-{i}").into_bytes(),
                value: stored_pod(i),
                mod_revision: 10 + i as i64,
                create_revision: 10 + i as i64,
                version: 1,
                lease: 0,
            })
            .collect();
        let json_bytes: usize = kvs.iter().map(|kv| kv.value.len()).sum();
        let input = kvs.clone();
        let before = vm_rss_kib();
        let held = hold(input);
        let after = vm_rss_kib();
        let per_pod = (after.saturating_sub(before) * 1024) as usize / MEASURED_PODS;
        println!(
            "{what}: {MEASURED_PODS} pods of {} B of JSON: VmRSS {before} -> {after} KiB \
             (+{} KiB, {per_pod} B per pod)",
            json_bytes / MEASURED_PODS,
            after.saturating_sub(before),
        );
        drop((held, kvs));
        per_pod
    }

    /// Memory of the cache's state of 10,000 pods: what it holds per object is its JSON and
    /// what selectors read. A measurement, run alone (one process per measurement):
    /// `cargo test -p rk3s-apiserver --lib -- --ignored --exact --nocapture
    /// watch_cache::tests::memory_of_10k_cached_pods`.
    #[test]
    #[ignore = "a measurement of this process' RSS: run alone"]
    fn memory_of_10k_cached_pods() {
        let pods = crate::registry::REGISTRY
            .find("", "v1", "pods")
            .expect("pods are served");
        let per_pod = rss_per_pod("cached", |kvs| {
            let mut st = State {
                fields: selectable_fields(pods),
                index: indexed_field(pods),
                ..State::default()
            };
            st.replace(kvs, 10 + MEASURED_PODS as i64);
            st
        });
        // The JSON (~2.4 KiB) and a few hundred bytes besides.
        assert!(per_pod < 4 * 1024, "{per_pod} B per cached pod");
    }

    /// For comparison, what the cache held per object before it kept only the JSON: the
    /// decoded object and its JSON (`cargo test ... -- --ignored --exact --nocapture
    /// watch_cache::tests::memory_of_10k_decoded_pods`).
    #[test]
    #[ignore = "a measurement of this process' RSS: run alone"]
    fn memory_of_10k_decoded_pods() {
        rss_per_pod("decoded + JSON", |kvs| {
            kvs.iter()
                .map(|kv| {
                    let value = decode_stored(kv).expect("decodes");
                    let json = match value.as_object() {
                        Some(map) => serde_json::to_vec(&WithoutType(map)),
                        None => serde_json::to_vec(&value),
                    };
                    (value, Bytes::from(json.unwrap_or_default()))
                })
                .collect::<Vec<_>>()
        });
    }

    /// A custom resource's cache stops when its type is no longer served: it leaves the
    /// running caches, its watchers' streams end, lists read the store, and the next use
    /// starts a new cache. Built-in types' caches stay.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unserved_custom_resource_cache_stops_and_a_new_one_starts() {
        let dir = tempfile::tempdir().expect("temp dir");
        let inner = rk3s_datastore::connect(&rk3s_datastore::Config {
            data_dir: dir.path().to_path_buf(),
            ..rk3s_datastore::Config::for_endpoint(format!(
                "sqlite://{}",
                dir.path().join("state.db").display()
            ))
        })
        .await
        .expect("SQLite store");
        let store = Store::new(inner, crate::storage::SharedTransformer::default());
        let (_stop, shutdown) = watch::channel(false);
        let caches = WatchCaches::new(store.clone(), shutdown);
        let crd = json!({
            "metadata": {"name": "widgets.example.com"},
            "spec": {"group": "example.com", "scope": "Namespaced",
                     "names": {"plural": "widgets", "kind": "Widget"},
                     "versions": [{"name": "v1", "served": true, "storage": true}]},
            "status": {"acceptedNames": {"plural": "widgets", "kind": "Widget"},
                       "conditions": [{"type": "Established", "status": "True"}]},
        });
        let snapshot =
            crate::crd::build_snapshot(&BTreeMap::from([("widgets.example.com".into(), crd)]));
        let widgets = snapshot
            .find("example.com", "v1", "widgets")
            .expect("served")
            .clone();
        let pods = crate::registry::REGISTRY
            .find("", "v1", "pods")
            .expect("pods are served");
        let key = b"/registry/example.com/widgets/a/w";
        store
            .create(
                key,
                serde_json::to_vec(&json!({
                    "apiVersion": "example.com/v1", "kind": "Widget",
                    "metadata": {"name": "w", "namespace": "a"},
                }))
                .expect("json"),
                0,
            )
            .await
            .expect("create");
        let state = Start::State { min_revision: 0 };
        let prefix = widgets.prefix(None);
        let mut watcher = caches
            .subscribe(&widgets, &prefix, false, None, state, false, false)
            .await
            .expect("widget watcher");
        assert_eq!(names(&watcher.objects), ["w"]);
        let pod_watcher = caches
            .subscribe(pods, PODS, false, None, state, false, false)
            .await
            .expect("pod watcher");
        assert_eq!(caches.running(), 2);
        let caches = &caches;
        let list = || {
            let prefix = widgets.prefix(None);
            let widgets = widgets.clone();
            async move { caches.list(&widgets, &prefix, false, None, 0).await }
        };
        assert!(list().await.expect("list").is_some());

        // Still served: nothing stops.
        caches.stop_unserved(&HashSet::from([prefix.clone()]), 0);
        assert_eq!(caches.running(), 2);
        // No longer served: the widgets' cache stops, the pods' stays.
        let revision = store.current_revision().await.expect("revision");
        caches.stop_unserved(&HashSet::new(), revision);
        assert_eq!(caches.running(), 1);
        let ended = tokio::time::timeout(Duration::from_secs(60), watcher.rx.recv())
            .await
            .expect("the watcher's stream ends");
        assert!(ended.is_none(), "{ended:?}");
        assert!(list().await.expect("list").is_none(), "read the store");
        assert!(!pod_watcher.rx.is_closed());
        // The next use starts a new cache, from the store.
        let again = caches
            .subscribe(&widgets, &prefix, false, None, state, false, false)
            .await
            .expect("a new cache");
        assert_eq!(names(&again.objects), ["w"]);
        assert_eq!(caches.running(), 2);
    }

    /// A cache whose datastore watch cannot be re-established because the history after its
    /// revision was compacted lists again: its state becomes the store's, its watchers are
    /// terminated (they watch again), and it follows the store from there.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_compacted_datastore_watch_makes_the_cache_list_again() {
        let dir = tempfile::tempdir().expect("temp dir");
        let inner = rk3s_datastore::connect(&rk3s_datastore::Config {
            data_dir: dir.path().to_path_buf(),
            ..rk3s_datastore::Config::for_endpoint(format!(
                "sqlite://{}",
                dir.path().join("state.db").display()
            ))
        })
        .await
        .expect("SQLite store");
        let store = Store::new(inner.clone(), crate::storage::SharedTransformer::default());
        let value = |name: &str, v: &str| {
            serde_json::to_vec(&json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": name, "namespace": "a"}, "data": {"v": v},
            }))
            .expect("json")
        };
        let key = |name: &str| format!("/registry/configmaps/a/{name}").into_bytes();
        for name in ["x", "y"] {
            store
                .create(&key(name), value(name, "1"), 0)
                .await
                .expect("create");
        }
        // The cache as it was when it lost its datastore watch: listed at `before`.
        let listed = store
            .list(PREFIX, ListOptions::default())
            .await
            .expect("list");
        let before = listed.revision;
        let cache = Arc::new(Cache::new(PREFIX.to_vec(), Vec::new()));
        cache.lock().replace(listed.kvs, before);
        cache.revision.send_replace(Some(before));
        let mut old = cache
            .register(PREFIX, false, Start::After(before), false)
            .expect("watcher");
        // Meanwhile: x deleted, y changed, z created, and that history compacted away.
        store.delete(&key("x"), None).await.expect("delete");
        let (_, y) = store.get(&key("y"), 0).await.expect("get");
        let y = y.expect("y");
        store
            .update(&key("y"), value("y", "2"), y.mod_revision, 0)
            .await
            .expect("update");
        store
            .create(&key("z"), value("z", "1"), 0)
            .await
            .expect("create");
        let now = store.current_revision().await.expect("revision");
        inner.compact(now).await.expect("compact");

        let (_stop, shutdown) = watch::channel(false);
        tokio::spawn(cache.clone().follow_store(store.clone(), shutdown, 0, true));
        // The old watcher is terminated (its channel ends without the lost changes) ...
        let ended = tokio::time::timeout(Duration::from_secs(60), old.rx.recv())
            .await
            .expect("the watcher is terminated");
        assert!(ended.is_none(), "{ended:?}");
        // ... and the state is the store's at `now`, with nothing in the ring before it.
        cache.wait_fresh(now).await.expect("fresh");
        {
            let st = cache.lock();
            let names: Vec<(&str, i64)> =
                st.objects.values().map(|o| (&*o.name, rv_of(o))).collect();
            assert_eq!(names.len(), 2);
            assert_eq!(names[0].0, "y");
            assert_eq!(names[1], ("z", now));
            assert!(st.ring.is_empty());
            assert_eq!(st.oldest, now);
        }
        let err = cache
            .register(PREFIX, false, Start::After(before), false)
            .expect_err("the lost history is not replayed");
        assert_eq!(err.code, 410);
        // The cache follows the store again: a new change reaches a new watcher.
        let mut new = cache
            .register(PREFIX, false, Start::After(now), false)
            .expect("watcher");
        store
            .create(&key("w"), value("w", "1"), 0)
            .await
            .expect("create");
        let got = tokio::time::timeout(Duration::from_secs(60), new.rx.recv())
            .await
            .expect("an event");
        match got {
            Some(Message::Event(ev)) => {
                assert_eq!(ev.key, key("w"));
                assert_eq!(ev.revision, now + 1);
            }
            other => panic!("expected the create of w, got {other:?}"),
        }
    }
}
