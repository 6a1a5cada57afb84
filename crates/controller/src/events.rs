//! Event recording for the controllers, in the manner of client-go's `record` package (what
//! kube-controller-manager uses): core `v1` Events with `source.component` = the controller
//! (`deployment-controller`, `replicaset-controller`, ...), named `<object>.<hex nanos>`.
//!
//! - **Deduplication** (client-go's `EventCorrelator`/`eventLogger`): an event identical to one
//!   already written (same object, type, reason, message, component) within the cache's life is
//!   not written again; the existing Event's `count` goes up and its `lastTimestamp` moves, by a
//!   merge patch. If that Event is gone (404), a new one is created.
//! - **Aggregation** (client-go's `EventAggregator`): more than [`AGGREGATE_MAX`] events with the
//!   same object, type, reason and component but different messages within
//!   [`AGGREGATE_WINDOW`] are folded into one Event whose message is prefixed
//!   `(combined from similar events): `, counted like a duplicate.
//! - **Spam filter** (client-go's `EventSourceObjectSpamFilter`): per component, object, type
//!   and reason, a burst of [`SPAM_BURST`] events, then one per [`SPAM_REFILL`]; the rest are
//!   dropped.
//! - **Bounded, never blocking**: [`Recorder::event`] only queues (capacity [`QUEUE`]); a full
//!   queue drops the event with a warning. One background task writes, and gives up on an event
//!   after a write failure (events are best effort, as upstream's sink after its retries).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client, Resource, ResourceExt as _};
use serde_json::json;
use tokio::sync::mpsc;

/// Events waiting to be written; more are dropped.
pub(crate) const QUEUE: usize = 1000;
/// How many distinct events the deduplication cache remembers (client-go: 4096).
const CACHE_SIZE: usize = 4096;
/// Similar events (differing in message only) within this window are aggregated…
pub(crate) const AGGREGATE_WINDOW: Duration = Duration::from_secs(600);
/// …once there are more than this many of them (client-go: 10).
pub(crate) const AGGREGATE_MAX: usize = 10;

/// Spam filter per (component, object), client-go's `EventSourceObjectSpamFilter`: a token
/// bucket of this many events…
pub(crate) const SPAM_BURST: f64 = 25.0;
/// …refilled by one every this long.
pub(crate) const SPAM_REFILL: Duration = Duration::from_secs(300);

/// `Normal` or `Warning`, as upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EventType {
    Normal,
    Warning,
}

impl EventType {
    fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

/// One event to record.
#[derive(Debug, Clone)]
struct Pending {
    component: &'static str,
    regarding: ObjectReference,
    type_: EventType,
    reason: String,
    message: String,
}

/// The controllers' event recorder: cheap to clone, never blocks.
#[derive(Debug, Clone)]
pub(crate) struct Recorder {
    tx: mpsc::Sender<Pending>,
}

impl Recorder {
    /// A recorder writing through `client`; its writer task ends when the last clone is
    /// dropped.
    pub(crate) fn new(client: Client) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(write_loop(client, rx));
        Recorder { tx }
    }

    /// Records an event about `obj` by `component`. Never waits: when the queue is full the
    /// event is dropped (and logged).
    pub(crate) fn event<K: Resource<DynamicType = ()>>(
        &self,
        component: &'static str,
        obj: &K,
        type_: EventType,
        reason: &str,
        message: String,
    ) {
        self.event_ref(component, reference_of(obj), type_, reason, message);
    }

    /// Records an event about the object `regarding` names (upstream's controllers that build
    /// the reference themselves: the node lifecycle's node events, the taint manager's pod
    /// events without a uid).
    pub(crate) fn event_ref(
        &self,
        component: &'static str,
        regarding: ObjectReference,
        type_: EventType,
        reason: &str,
        message: String,
    ) {
        let pending = Pending {
            component,
            regarding,
            type_,
            reason: reason.to_string(),
            message,
        };
        if let Err(e) = self.tx.try_send(pending) {
            let p = match e {
                mpsc::error::TrySendError::Full(p) | mpsc::error::TrySendError::Closed(p) => p,
            };
            tracing::warn!(
                component,
                reason = %p.reason,
                object = %p.regarding.name.as_deref().unwrap_or(""),
                "event queue full, dropping event"
            );
        }
    }
}

/// The `ObjectReference` of an object, as client-go's `reference.GetReference`.
pub(crate) fn reference_of<K: Resource<DynamicType = ()>>(obj: &K) -> ObjectReference {
    let meta = obj.meta();
    ObjectReference {
        api_version: Some(K::api_version(&()).into_owned()),
        kind: Some(K::kind(&()).into_owned()),
        name: meta.name.clone(),
        namespace: meta.namespace.clone(),
        uid: meta.uid.clone(),
        resource_version: meta.resource_version.clone(),
        field_path: None,
    }
}

/// What makes two events the same (client-go's `getEventKey`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct DedupKey {
    component: &'static str,
    uid: String,
    kind: String,
    namespace: String,
    name: String,
    type_: &'static str,
    reason: String,
    message: String,
}

/// What makes two events similar (client-go's `EventAggregatorByReasonFunc`: all but the
/// message).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct SimilarKey {
    component: &'static str,
    uid: String,
    type_: &'static str,
    reason: String,
}

/// An Event already written: its name and count.
#[derive(Debug, Clone)]
struct Written {
    name: String,
    namespace: String,
    count: i32,
    first: Time,
}

/// The correlator's memory, bounded (oldest forgotten first).
#[derive(Debug, Default)]
struct Cache {
    written: HashMap<DedupKey, Written>,
    order: VecDeque<DedupKey>,
    similar: HashMap<SimilarKey, (Instant, Vec<String>)>,
    /// Token buckets of the spam filter: (tokens, last refill).
    buckets: HashMap<(&'static str, String), (f64, Instant)>,
}

impl Cache {
    fn remember(&mut self, key: DedupKey, w: Written) {
        if self.written.insert(key.clone(), w).is_none() {
            self.order.push_back(key);
        }
        while self.order.len() > CACHE_SIZE {
            if let Some(old) = self.order.pop_front() {
                self.written.remove(&old);
            }
        }
        if self.similar.len() > CACHE_SIZE {
            let now = Instant::now();
            self.similar
                .retain(|_, (t, _)| now.duration_since(*t) < AGGREGATE_WINDOW);
        }
    }

    /// Whether the spam filter lets `p` through (takes a token if so).
    fn allow(&mut self, p: &Pending, now: Instant) -> bool {
        let object = format!(
            "{}/{}/{}/{}/{}/{}",
            p.regarding.kind.as_deref().unwrap_or(""),
            p.regarding.namespace.as_deref().unwrap_or(""),
            p.regarding.name.as_deref().unwrap_or(""),
            p.regarding.uid.as_deref().unwrap_or(""),
            p.type_.as_str(),
            p.reason
        );
        if self.buckets.len() > CACHE_SIZE {
            // Forget full buckets: they behave as new ones.
            self.buckets.retain(|_, (tokens, last)| {
                *tokens + now.duration_since(*last).as_secs_f64() / SPAM_REFILL.as_secs_f64()
                    < SPAM_BURST
            });
        }
        let (tokens, last) = self
            .buckets
            .entry((p.component, object))
            .or_insert((SPAM_BURST, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() / SPAM_REFILL.as_secs_f64())
            .min(SPAM_BURST);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// The message to record for `p`: its own, or the aggregate one once too many similar
    /// events with different messages came within the window.
    fn aggregate(&mut self, p: &Pending) -> String {
        let key = SimilarKey {
            component: p.component,
            uid: p.regarding.uid.clone().unwrap_or_default(),
            type_: p.type_.as_str(),
            reason: p.reason.clone(),
        };
        let now = Instant::now();
        let entry = self.similar.entry(key).or_insert_with(|| (now, Vec::new()));
        if now.duration_since(entry.0) > AGGREGATE_WINDOW {
            *entry = (now, Vec::new());
        }
        if !entry.1.contains(&p.message) {
            entry.1.push(p.message.clone());
        }
        if entry.1.len() > AGGREGATE_MAX {
            format!("(combined from similar events): {}", p.message)
        } else {
            p.message.clone()
        }
    }
}

async fn write_loop(client: Client, mut rx: mpsc::Receiver<Pending>) {
    let mut cache = Cache::default();
    while let Some(p) = rx.recv().await {
        if !cache.allow(&p, Instant::now()) {
            tracing::debug!(component = p.component, reason = %p.reason, "event dropped by the spam filter");
            continue;
        }
        let message = cache.aggregate(&p);
        // An aggregated event is deduplicated on its reason alone.
        let dedup_message = if message == p.message {
            message.clone()
        } else {
            String::new()
        };
        let key = DedupKey {
            component: p.component,
            uid: p.regarding.uid.clone().unwrap_or_default(),
            kind: p.regarding.kind.clone().unwrap_or_default(),
            namespace: p.regarding.namespace.clone().unwrap_or_default(),
            name: p.regarding.name.clone().unwrap_or_default(),
            type_: p.type_.as_str(),
            reason: p.reason.clone(),
            message: dedup_message,
        };
        let now = Time(Timestamp::now());
        if let Some(w) = cache.written.get(&key).cloned() {
            match bump(&client, &w, &message, &now).await {
                Ok(()) => {
                    cache.remember(
                        key,
                        Written {
                            count: w.count + 1,
                            ..w
                        },
                    );
                    continue;
                }
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => {
                    tracing::warn!(error = %e, reason = %p.reason, "could not update event");
                    continue;
                }
            }
        }
        match create(&client, &p, &message, &now).await {
            Ok(ev) => cache.remember(
                key,
                Written {
                    name: ev.name_any(),
                    namespace: ev.namespace().unwrap_or_default(),
                    count: 1,
                    first: now,
                },
            ),
            Err(e) => tracing::warn!(error = %e, reason = %p.reason, "could not write event"),
        }
    }
}

/// The namespace an event about `r` goes to: the object's, or `default` for cluster-scoped
/// objects (as upstream).
fn event_namespace(r: &ObjectReference) -> String {
    r.namespace
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "default".into())
}

async fn create(
    client: &Client,
    p: &Pending,
    message: &str,
    now: &Time,
) -> Result<Event, kube::Error> {
    let ns = event_namespace(&p.regarding);
    let nanos = now.0.as_nanosecond();
    let ev = Event {
        metadata: ObjectMeta {
            name: Some(format!(
                "{}.{:x}",
                p.regarding.name.as_deref().unwrap_or(""),
                nanos
            )),
            namespace: Some(ns.clone()),
            ..ObjectMeta::default()
        },
        involved_object: p.regarding.clone(),
        reason: Some(p.reason.clone()),
        message: Some(message.to_string()),
        type_: Some(p.type_.as_str().to_string()),
        source: Some(EventSource {
            component: Some(p.component.to_string()),
            host: None,
        }),
        count: Some(1),
        first_timestamp: Some(now.clone()),
        last_timestamp: Some(now.clone()),
        reporting_component: Some(p.component.to_string()),
        reporting_instance: Some(p.component.to_string()),
        ..Event::default()
    };
    Api::<Event>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &ev)
        .await
}

async fn bump(client: &Client, w: &Written, message: &str, now: &Time) -> Result<(), kube::Error> {
    let patch = json!({
        "count": w.count + 1,
        "message": message,
        "firstTimestamp": w.first,
        "lastTimestamp": now,
    });
    Api::<Event>::namespaced(client.clone(), &w.namespace)
        .patch(&w.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(message: &str) -> Pending {
        Pending {
            component: "replicaset-controller",
            regarding: ObjectReference {
                uid: Some("u1".into()),
                name: Some("rs".into()),
                ..ObjectReference::default()
            },
            type_: EventType::Normal,
            reason: "SuccessfulCreate".into(),
            message: message.into(),
        }
    }

    #[test]
    fn aggregates_after_ten_distinct_messages() {
        let mut cache = Cache::default();
        for i in 0..AGGREGATE_MAX {
            let m = format!("Created pod: p{i}");
            assert_eq!(cache.aggregate(&pending(&m)), m);
        }
        // A repeat of a known message does not count as new.
        assert_eq!(
            cache.aggregate(&pending("Created pod: p0")),
            "Created pod: p0"
        );
        assert_eq!(
            cache.aggregate(&pending("Created pod: p10")),
            "(combined from similar events): Created pod: p10"
        );
    }

    #[test]
    fn spam_filter_allows_a_burst_then_one_per_refill() {
        let mut cache = Cache::default();
        let start = Instant::now();
        for _ in 0..25 {
            assert!(cache.allow(&pending("m"), start));
        }
        assert!(!cache.allow(&pending("m"), start));
        assert!(cache.allow(&pending("m"), start + SPAM_REFILL));
        assert!(!cache.allow(&pending("m"), start + SPAM_REFILL));
        // Another object has its own bucket.
        let mut other = pending("m");
        other.regarding.uid = Some("u2".into());
        assert!(cache.allow(&other, start));
    }

    #[test]
    fn cache_is_bounded() {
        let mut cache = Cache::default();
        for i in 0..CACHE_SIZE + 10 {
            let key = DedupKey {
                component: "c",
                uid: i.to_string(),
                kind: String::new(),
                namespace: String::new(),
                name: String::new(),
                type_: "Normal",
                reason: String::new(),
                message: String::new(),
            };
            cache.remember(
                key,
                Written {
                    name: String::new(),
                    namespace: String::new(),
                    count: 1,
                    first: Time(Timestamp::now()),
                },
            );
        }
        assert_eq!(cache.written.len(), CACHE_SIZE);
        assert_eq!(cache.order.len(), CACHE_SIZE);
    }
}
