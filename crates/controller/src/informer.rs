//! The controller manager's shared, watch-backed pod cache (upstream's shared pod informer):
//! one pod watch per manager run, a store indexed by namespace, by controller (the
//! `controller: true` owner reference's uid) and by namespace for orphans, a "has synced"
//! wait that gives way to the stop signal, and a feed of add/update/delete events for every
//! controller that subscribes.
//!
//! Invariants:
//! - An event is delivered to subscribers only after the store holds its effect, so a
//!   controller told about a pod finds it (or its absence) in the store.
//! - A (re)list replaces the store at once when it completes (as kube-runtime's reflector
//!   does) and is delivered as the differences against the previous store: pods that appeared
//!   are adds, pods that changed are updates, pods that vanished are deletes (upstream's
//!   `DeltaFIFO.Replace`), so that a watch gap neither loses nor repeats events.
//! - Subscribers never miss an event after they subscribed (unbounded channels: a slow
//!   controller delays only itself).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock};

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::{WatchStreamExt as _, watcher};
use tokio::sync::{mpsc, watch};

/// A change of a pod as the cache saw it.
#[derive(Debug, Clone)]
pub(crate) enum PodEvent {
    Added(Arc<Pod>),
    Updated { old: Arc<Pod>, new: Arc<Pod> },
    Deleted(Arc<Pod>),
}

/// `(namespace, name)`.
type Key = (String, String);

fn key_of(pod: &Pod) -> Key {
    (
        pod.metadata.namespace.clone().unwrap_or_default(),
        pod.metadata.name.clone().unwrap_or_default(),
    )
}

fn controller_uid(pod: &Pod) -> Option<&str> {
    crate::util::controller_of(&pod.metadata).map(|r| r.uid.as_str())
}

/// The pods and their indexes. Every pod is in `pods`, in `by_namespace`, and in exactly one
/// of `by_controller` (it has a controller reference) or `orphans` (it has none).
#[derive(Debug, Default)]
pub(crate) struct PodIndex {
    pods: HashMap<Key, Arc<Pod>>,
    by_namespace: HashMap<String, BTreeSet<String>>,
    by_controller: HashMap<String, BTreeSet<Key>>,
    orphans: HashMap<String, BTreeSet<String>>,
}

impl PodIndex {
    fn index(&mut self, key: &Key, pod: &Pod) {
        self.by_namespace
            .entry(key.0.clone())
            .or_default()
            .insert(key.1.clone());
        match controller_uid(pod) {
            Some(uid) => {
                self.by_controller
                    .entry(uid.to_string())
                    .or_default()
                    .insert(key.clone());
            }
            None => {
                self.orphans
                    .entry(key.0.clone())
                    .or_default()
                    .insert(key.1.clone());
            }
        }
    }

    fn unindex(&mut self, key: &Key, pod: &Pod) {
        fn remove<K: Eq + std::hash::Hash, V: Ord>(
            map: &mut HashMap<K, BTreeSet<V>>,
            k: &K,
            v: &V,
        ) {
            if let Some(set) = map.get_mut(k) {
                set.remove(v);
                if set.is_empty() {
                    map.remove(k);
                }
            }
        }
        remove(&mut self.by_namespace, &key.0, &key.1);
        match controller_uid(pod) {
            Some(uid) => remove(&mut self.by_controller, &uid.to_string(), key),
            None => remove(&mut self.orphans, &key.0, &key.1),
        }
    }

    /// Stores `pod`; the event that describes the change, `None` when nothing changed (same
    /// resourceVersion).
    pub(crate) fn apply(&mut self, pod: Pod) -> Option<PodEvent> {
        let key = key_of(&pod);
        let new = Arc::new(pod);
        let old = self.pods.insert(key.clone(), new.clone());
        if let Some(old) = &old {
            if old.metadata.resource_version.is_some()
                && old.metadata.resource_version == new.metadata.resource_version
            {
                return None;
            }
            self.unindex(&key, old);
        }
        self.index(&key, &new);
        Some(match old {
            Some(old) => PodEvent::Updated { old, new },
            None => PodEvent::Added(new),
        })
    }

    /// Forgets `pod`; the delete event (with the last state the store had, or `pod` itself).
    pub(crate) fn delete(&mut self, pod: Pod) -> PodEvent {
        let key = key_of(&pod);
        match self.pods.remove(&key) {
            Some(old) => {
                self.unindex(&key, &old);
                PodEvent::Deleted(Arc::new(pod))
            }
            None => PodEvent::Deleted(Arc::new(pod)),
        }
    }

    /// Replaces the whole store with a fresh list; the differences as events.
    pub(crate) fn replace(&mut self, pods: Vec<Pod>) -> Vec<PodEvent> {
        let mut old = std::mem::take(self);
        let mut events = Vec::new();
        for pod in pods {
            let key = key_of(&pod);
            match old.pods.remove(&key) {
                Some(prev) => {
                    // Keep the old entry as the base so that `apply` reports an update (or
                    // nothing for the same resourceVersion).
                    self.pods.insert(key.clone(), prev.clone());
                    self.index(&key, &prev);
                    events.extend(self.apply(pod));
                }
                None => events.extend(self.apply(pod)),
            }
        }
        events.extend(
            old.pods
                .into_values()
                .map(|gone| PodEvent::Deleted(gone.clone())),
        );
        events
    }

    pub(crate) fn get(&self, namespace: &str, name: &str) -> Option<Arc<Pod>> {
        self.pods
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }

    /// Every pod of `namespace` (for the per-namespace readers still listing live: Job,
    /// disruption).
    #[allow(dead_code)]
    pub(crate) fn in_namespace(&self, namespace: &str) -> Vec<Arc<Pod>> {
        self.by_namespace
            .get(namespace)
            .into_iter()
            .flatten()
            .filter_map(|name| self.get(namespace, name))
            .collect()
    }

    /// The pods whose controller reference names `uid`.
    pub(crate) fn controlled_by(&self, uid: &str) -> Vec<Arc<Pod>> {
        self.by_controller
            .get(uid)
            .into_iter()
            .flatten()
            .filter_map(|k| self.pods.get(k).cloned())
            .collect()
    }

    /// The pods of `namespace` without a controller reference.
    pub(crate) fn orphans_in(&self, namespace: &str) -> Vec<Arc<Pod>> {
        self.orphans
            .get(namespace)
            .into_iter()
            .flatten()
            .filter_map(|name| self.get(namespace, name))
            .collect()
    }

    pub(crate) fn len(&self) -> usize {
        self.pods.len()
    }
}

/// The shared pod cache (in [`crate::util::Shared`]). Filled by [`PodCache::run`], which
/// `start_controllers` starts once per manager run when a controller that reads it is
/// enabled.
#[derive(Debug)]
pub(crate) struct PodCache {
    index: RwLock<PodIndex>,
    synced: watch::Sender<bool>,
    subscribers: Mutex<Vec<mpsc::UnboundedSender<PodEvent>>>,
}

impl Default for PodCache {
    fn default() -> Self {
        PodCache {
            index: RwLock::default(),
            synced: watch::Sender::new(false),
            subscribers: Mutex::default(),
        }
    }
}

impl PodCache {
    /// Reads the store.
    pub(crate) fn read<T>(&self, f: impl FnOnce(&PodIndex) -> T) -> T {
        let index = self.index.read().unwrap_or_else(|p| p.into_inner());
        f(&index)
    }

    /// Every pod event from now on.
    pub(crate) fn subscribe(&self) -> mpsc::UnboundedReceiver<PodEvent> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.subscribers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(tx);
        rx
    }

    /// Whether the first list completed.
    pub(crate) fn has_synced(&self) -> bool {
        *self.synced.borrow()
    }

    /// Waits until the first list completed (`true`) or `stop` turned true first (`false`):
    /// a controller waiting for the cache never holds up a shutdown.
    pub(crate) async fn wait_synced(&self, stop: watch::Receiver<bool>) -> bool {
        let mut synced = self.synced.subscribe();
        tokio::select! {
            r = synced.wait_for(|s| *s) => r.is_ok(),
            () = crate::stopped(stop) => self.has_synced(),
        }
    }

    /// Changes the store with `f` and hands the resulting events to the subscribers (after
    /// the store holds them).
    pub(crate) fn update(&self, f: impl FnOnce(&mut PodIndex) -> Vec<PodEvent>) {
        let events = {
            let mut index = self.index.write().unwrap_or_else(|p| p.into_inner());
            f(&mut index)
        };
        if events.is_empty() {
            return;
        }
        let mut subscribers = self.subscribers.lock().unwrap_or_else(|p| p.into_inner());
        subscribers.retain(|tx| events.iter().all(|e| tx.send(e.clone()).is_ok()));
    }

    fn mark_synced(&self) {
        self.synced
            .send_if_modified(|s| !std::mem::replace(s, true));
    }

    /// The pod watch (all namespaces, reconnecting with backoff) feeding the store, until
    /// `stop` turns true.
    pub(crate) async fn run(self: Arc<Self>, client: kube::Client, stop: watch::Receiver<bool>) {
        let mut stream = watcher::watcher(Api::<Pod>::all(client), watcher::Config::default())
            .default_backoff()
            .take_until(crate::stopped(stop))
            .boxed();
        // A (re)list in progress: its pods so far.
        let mut listing: Option<Vec<Pod>> = None;
        while let Some(event) = stream.next().await {
            match event {
                Ok(watcher::Event::Init) => listing = Some(Vec::new()),
                Ok(watcher::Event::InitApply(pod)) => listing.get_or_insert_default().push(pod),
                Ok(watcher::Event::InitDone) => {
                    let pods = listing.take().unwrap_or_default();
                    self.update(|index| index.replace(pods));
                    self.mark_synced();
                    tracing::debug!(pods = self.read(PodIndex::len), "pod cache listed");
                }
                Ok(watcher::Event::Apply(pod)) => {
                    self.update(|index| index.apply(pod).into_iter().collect());
                }
                Ok(watcher::Event::Delete(pod)) => {
                    self.update(|index| vec![index.delete(pod)]);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "pod cache watch failed; retrying with backoff")
                }
            }
        }
        tracing::debug!("pod cache stopped");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(ns: &str, name: &str, rv: &str, owner: Option<&str>) -> Pod {
        let refs = owner.map(|uid| {
            json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs",
                     "uid": uid, "controller": true}])
        });
        serde_json::from_value(json!({
            "metadata": {"namespace": ns, "name": name, "resourceVersion": rv,
                          "ownerReferences": refs},
        }))
        .unwrap()
    }

    fn names(pods: Vec<Arc<Pod>>) -> Vec<String> {
        let mut v: Vec<String> = pods
            .iter()
            .map(|p| p.metadata.name.clone().unwrap())
            .collect();
        v.sort();
        v
    }

    fn kinds(events: &[PodEvent]) -> Vec<String> {
        let mut v: Vec<String> = events
            .iter()
            .map(|e| match e {
                PodEvent::Added(p) => format!("add {}", p.metadata.name.clone().unwrap()),
                PodEvent::Updated { new, .. } => {
                    format!("update {}", new.metadata.name.clone().unwrap())
                }
                PodEvent::Deleted(p) => format!("delete {}", p.metadata.name.clone().unwrap()),
            })
            .collect();
        v.sort();
        v
    }

    #[test]
    fn indexes_follow_adds_updates_and_deletes() {
        let mut ix = PodIndex::default();
        assert!(matches!(
            ix.apply(pod("a", "p1", "1", Some("u1"))),
            Some(PodEvent::Added(_))
        ));
        ix.apply(pod("a", "p2", "2", None));
        ix.apply(pod("b", "p3", "3", Some("u1")));
        assert_eq!(names(ix.in_namespace("a")), ["p1", "p2"]);
        assert_eq!(names(ix.controlled_by("u1")), ["p1", "p3"]);
        assert_eq!(names(ix.orphans_in("a")), ["p2"]);
        assert!(ix.orphans_in("b").is_empty());

        // Adoption moves a pod from the orphans to its controller; release moves it back.
        assert!(matches!(
            ix.apply(pod("a", "p2", "4", Some("u2"))),
            Some(PodEvent::Updated { .. })
        ));
        assert!(ix.orphans_in("a").is_empty());
        assert_eq!(names(ix.controlled_by("u2")), ["p2"]);
        ix.apply(pod("a", "p1", "5", None));
        assert_eq!(names(ix.controlled_by("u1")), ["p3"]);
        assert_eq!(names(ix.orphans_in("a")), ["p1"]);

        // The same resourceVersion again is no change.
        assert!(ix.apply(pod("a", "p1", "5", None)).is_none());

        assert!(matches!(
            ix.delete(pod("b", "p3", "6", Some("u1"))),
            PodEvent::Deleted(_)
        ));
        assert!(ix.controlled_by("u1").is_empty());
        assert!(ix.in_namespace("b").is_empty());
        assert_eq!(ix.len(), 2);
        // Empty index entries are dropped.
        assert!(!ix.by_controller.contains_key("u1"));
        assert!(!ix.by_namespace.contains_key("b"));
    }

    #[test]
    fn relist_reports_the_differences() {
        let mut ix = PodIndex::default();
        ix.apply(pod("a", "same", "1", Some("u1")));
        ix.apply(pod("a", "changed", "1", None));
        ix.apply(pod("a", "gone", "1", Some("u1")));
        let events = ix.replace(vec![
            pod("a", "same", "1", Some("u1")),
            pod("a", "changed", "2", Some("u1")),
            pod("a", "new", "3", Some("u2")),
        ]);
        assert_eq!(kinds(&events), ["add new", "delete gone", "update changed"]);
        assert_eq!(names(ix.controlled_by("u1")), ["changed", "same"]);
        assert_eq!(names(ix.controlled_by("u2")), ["new"]);
        assert!(ix.orphans_in("a").is_empty());
        assert_eq!(ix.len(), 3);
    }

    #[tokio::test]
    async fn subscribers_see_events_after_the_store_and_synced_wait_yields_to_stop() {
        let cache = PodCache::default();
        let mut rx = cache.subscribe();
        cache.update(|ix| ix.apply(pod("a", "p1", "1", None)).into_iter().collect());
        let PodEvent::Added(p) = rx.recv().await.unwrap() else {
            panic!("expected an add");
        };
        assert!(cache.read(|ix| ix.get("a", "p1")).is_some());
        assert_eq!(p.metadata.name.as_deref(), Some("p1"));

        // Not synced: the wait ends with the stop signal, reporting false.
        let (stop_tx, stop_rx) = watch::channel(false);
        let waiting = cache.wait_synced(stop_rx.clone());
        stop_tx.send(true).unwrap();
        assert!(!waiting.await);
        cache.mark_synced();
        assert!(cache.wait_synced(watch::channel(false).1).await);
    }
}
