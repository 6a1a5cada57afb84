//! `?watch=1`: a stream of newline-delimited JSON `WatchEvent`s (ADDED, MODIFIED, DELETED,
//! BOOKMARK, ERROR), served from the watch cache (`crate::watch_cache`) of the resource's
//! storage prefix, with this watch's own namespace and label/field selector filtering.
//!
//! Without a resourceVersion (or with "0"), or with `sendInitialEvents=true`, the stream begins
//! with an ADDED event per existing object, as upstream ("" reads a state at least as new as
//! the store's current revision, "0" whatever the cache has). A resourceVersion older than the
//! cache's ring is answered with an ERROR event carrying a 410 `Expired` Status, which clients
//! answer by listing again. A watcher too slow for its buffer is terminated: its stream ends.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::response::Response;
use rk3s_datastore::EventKind;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::handlers::{Ctx, Selectors};
use super::object::{served_object, served_objects, set_resource_version};
use super::table::{to_table, wants_table};
use super::{Query, flag, stream_response};
use crate::registry::ResourceInfo;
use crate::server::AppState;
use crate::status::ApiError;
use crate::watch_cache::{CachedEvent, CachedObject, Message, Start};

/// Everything the stream task needs, owned.
struct WatchSpec {
    info: ResourceInfo,
    selectors: Selectors,
    table: bool,
    query: Query,
    bookmarks: bool,
}

impl WatchSpec {
    fn line(&self, kind: &str, obj: Value) -> Bytes {
        let object = if self.table && kind != "BOOKMARK" && kind != "ERROR" {
            self.object_json(obj)
        } else {
            Bytes::from(serde_json::to_vec(&obj).unwrap_or_default())
        };
        wrap(kind, &object)
    }

    /// An object (served form) as this watch writes it: itself, or its Table.
    fn object_json(&self, obj: Value) -> Bytes {
        let object = if self.table {
            let rv = super::object::meta_str(&obj, "resourceVersion").to_string();
            to_table(&self.info, std::slice::from_ref(&obj), &rv, &self.query)
        } else {
            obj
        };
        Bytes::from(serde_json::to_vec(&object).unwrap_or_default())
    }

    /// Whether this watch decodes the objects it sends (a table, a version served by
    /// conversion): their encodings are shared through the events' `encoded`.
    fn decodes(&self) -> bool {
        self.table || self.info.conversion.is_some()
    }

    /// What the encoding of an event's object for this watch depends on (`which`: the new
    /// state or the previous one at the event's revision), when it decodes objects: the
    /// served version and, for tables, `includeObject` and, for custom resources, the columns
    /// of the CRD snapshot the watch started with.
    fn encoded_key(&self, which: &str) -> Option<String> {
        if !self.decodes() {
            return None;
        }
        let include = self.table.then(|| {
            self.query
                .get("includeObject")
                .map_or("Metadata", String::as_str)
        });
        let columns = match &self.info.custom {
            Some(custom) if self.table => format!(" {:?}", custom.columns),
            _ => String::new(),
        };
        Some(format!(
            "{which} {} {} {include:?}{columns}",
            self.info.api_version(),
            self.info.plural
        ))
    }

    /// The initial ADDED line of `obj`; `latest`: the change that made it (see
    /// `Subscription::latest`), whose encodings watches that decode objects share.
    fn initial_line(&self, obj: &CachedObject, latest: Option<&CachedEvent>) -> Bytes {
        match (latest, self.encoded_key("object")) {
            (Some(ev), Some(key)) => {
                let object = ev
                    .encoded
                    .get_or_encode(&key, || self.object_json(self.served(obj.to_value())));
                wrap("ADDED", &object)
            }
            _ => self.object_line("ADDED", obj),
        }
    }

    /// [`object_line`](Self::object_line) of an event's object, encoded once per event for
    /// all the watches that decode it the same way.
    fn event_object_line(&self, kind: &str, ev: &CachedEvent) -> Bytes {
        match self.encoded_key("object") {
            Some(key) => {
                let object = ev
                    .encoded
                    .get_or_encode(&key, || self.object_json(self.served(ev.object.to_value())));
                wrap(kind, &object)
            }
            None => self.object_line(kind, &ev.object),
        }
    }

    /// A stored object as this watch serves it: a custom resource in the version it is
    /// watched through (conversion `None`: only `apiVersion` changes).
    fn served(&self, obj: Value) -> Value {
        super::object::served_form(&self.info, obj)
    }

    /// The line for a cached object: its JSON is serialized once for all watchers (a custom
    /// resource gets the `apiVersion` it is watched through; tables and versions served by
    /// conversion decode the object).
    fn object_line(&self, kind: &str, obj: &CachedObject) -> Bytes {
        if self.table || self.info.conversion.is_some() {
            return self.line(kind, self.served(obj.to_value()));
        }
        let mut bytes = Vec::with_capacity(obj.item_json().len() + 96);
        bytes.extend_from_slice(b"{\"type\":\"");
        bytes.extend_from_slice(kind.as_bytes());
        bytes.extend_from_slice(b"\",\"object\":");
        let served_version = self.info.custom.is_some().then(|| self.info.api_version());
        obj.write_json_as(&mut bytes, served_version.as_deref());
        bytes.extend_from_slice(b"}\n");
        Bytes::from(bytes)
    }

    fn bookmark(&self, revision: i64, initial_end: bool) -> Bytes {
        let mut meta = json!({ "resourceVersion": revision.to_string() });
        if initial_end {
            meta["annotations"] = json!({ "k8s.io/initial-events-end": "true" });
        }
        self.line(
            "BOOKMARK",
            json!({ "kind": self.info.kind, "apiVersion": self.info.api_version(), "metadata": meta }),
        )
    }

    /// The watch event for one change, if this watcher sees it: a change into the selection
    /// is ADDED, out of it DELETED (the old state at the change's revision), as upstream.
    fn convert(&self, ev: &CachedEvent) -> Option<Bytes> {
        let prev_matches = ev
            .prev
            .as_ref()
            .is_some_and(|p| self.selectors.matches(&**p));
        match ev.kind {
            EventKind::Put => {
                let matches = self.selectors.matches(&*ev.object);
                match (&ev.prev, prev_matches, matches) {
                    (_, true, true) => Some(self.event_object_line("MODIFIED", ev)),
                    (_, false, true) => Some(self.event_object_line("ADDED", ev)),
                    (Some(prev), true, false) => {
                        let old = || {
                            let mut old = self.served(prev.to_value());
                            set_resource_version(&mut old, ev.revision);
                            old
                        };
                        let object = match self.encoded_key("previous") {
                            Some(key) => ev.encoded.get_or_encode(&key, || self.object_json(old())),
                            None => self.object_json(old()),
                        };
                        Some(wrap("DELETED", &object))
                    }
                    _ => None,
                }
            }
            EventKind::Delete => prev_matches.then(|| self.event_object_line("DELETED", ev)),
        }
    }
}

impl WatchSpec {
    /// The line for one change of a custom resource whose CRD converts by webhook, if this
    /// watcher sees it (the events of [`convert`](Self::convert)): its object converted once
    /// per event and served version for all the watchers of that version.
    async fn webhook_line(
        &self,
        state: &AppState,
        ev: &Arc<CachedEvent>,
    ) -> Result<Option<Bytes>, ApiError> {
        let prev_matches = ev
            .prev
            .as_ref()
            .is_some_and(|p| self.selectors.matches(&**p));
        let (kind, previous) = match ev.kind {
            EventKind::Put => match (&ev.prev, prev_matches, self.selectors.matches(&*ev.object)) {
                (_, true, true) => ("MODIFIED", false),
                (_, false, true) => ("ADDED", false),
                (Some(_), true, false) => ("DELETED", true),
                _ => return Ok(None),
            },
            EventKind::Delete if prev_matches => ("DELETED", false),
            EventKind::Delete => return Ok(None),
        };
        let which = if previous { "previous" } else { "object" };
        let key = format!("webhook {which} {}", self.info.api_version());
        let object = crate::crd::conversion::once_per_event(ev, &key, async {
            let stored = match (previous, &ev.prev) {
                (true, Some(prev)) => {
                    let mut old = prev.to_value();
                    set_resource_version(&mut old, ev.revision);
                    old
                }
                _ => ev.object.to_value(),
            };
            let served = served_object(state, &self.info, stored).await?;
            serde_json::to_vec(&served)
                .map(Bytes::from)
                .map_err(ApiError::internal)
        })
        .await?;
        if !self.table {
            return Ok(Some(wrap(kind, &object)));
        }
        let served: Value = serde_json::from_slice(&object).map_err(ApiError::internal)?;
        Ok(Some(wrap(kind, &self.object_json(served))))
    }

    /// The line for one change: [`convert`](Self::convert), or [`webhook_line`](Self::webhook_line).
    async fn event_line(
        &self,
        state: &AppState,
        webhook: bool,
        ev: &Arc<CachedEvent>,
    ) -> Result<Option<Bytes>, ApiError> {
        if webhook {
            self.webhook_line(state, ev).await
        } else {
            Ok(self.convert(ev))
        }
    }
}

/// A watch event line around an encoded object.
fn wrap(kind: &str, object: &[u8]) -> Bytes {
    let mut bytes = Vec::with_capacity(object.len() + 32);
    bytes.extend_from_slice(b"{\"type\":\"");
    bytes.extend_from_slice(kind.as_bytes());
    bytes.extend_from_slice(b"\",\"object\":");
    bytes.extend_from_slice(object);
    bytes.extend_from_slice(b"}\n");
    Bytes::from(bytes)
}

fn error_line(err: &ApiError) -> Bytes {
    let mut bytes = serde_json::to_vec(&json!({ "type": "ERROR", "object": err.to_status() }))
        .unwrap_or_default();
    bytes.push(b'\n');
    Bytes::from(bytes)
}

pub(crate) async fn serve(ctx: Ctx<'_>) -> Result<Response, ApiError> {
    let info = ctx.info();
    let q = ctx.query;
    let selectors = Selectors::from_query(info, q)?;
    let timeout = match q.get("timeoutSeconds").filter(|t| !t.is_empty()) {
        Some(t) => Duration::from_secs(
            t.parse()
                .map_err(|_| ApiError::bad_request(format!("invalid timeoutSeconds {t:?}")))?,
        ),
        // Upstream spreads watch lifetimes between the minimum request timeout and twice it.
        None => Duration::from_secs(1800 + rand::random_range(0..1800)),
    };
    let send_initial = flag(q, "sendInitialEvents");
    let rv = q.get("resourceVersion").map_or("", String::as_str);
    let start = match rv {
        // The most recent state: at least the store's current revision.
        "" => Start::State {
            min_revision: ctx.state.store.current_revision().await?,
        },
        "0" => Start::State { min_revision: 0 },
        rv => {
            let rv = rv
                .parse::<i64>()
                .map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv:?}")))?;
            if send_initial {
                Start::State { min_revision: rv }
            } else {
                Start::After(rv)
            }
        }
    };
    let spec = Arc::new(WatchSpec {
        info: info.clone(),
        selectors,
        table: wants_table(ctx.headers),
        query: q.clone(),
        bookmarks: flag(q, "allowWatchBookmarks"),
    });

    // A watch of one object by name (a field selector on `metadata.name`) is offered only
    // that object's changes.
    let (scope, exact) = match spec.selectors.fields.exact_name() {
        Some(name) if ctx.ns().is_some() || !info.namespaced => (info.key(ctx.ns(), name), true),
        _ => (info.prefix(ctx.ns()), false),
    };
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(64);
    // A watch that requires one node name (a kubelet's) is offered only the changes of pods
    // that are or were on that node.
    let value = crate::watch_cache::index_value(info, &spec.selectors.fields);
    let sub = ctx
        .state
        .watch_cache
        .subscribe(
            info,
            &scope,
            exact,
            value,
            start,
            spec.bookmarks,
            spec.decodes(),
        )
        .await;
    let mut sub = match sub {
        Ok(sub) => sub,
        // As upstream's cacher: past the request's validation, a watch that cannot be served
        // (too old: 410, too new: 504) is established and ends with the error.
        Err(e) => {
            let _ = tx.try_send(Ok(error_line(&e)));
            drop(tx);
            return Ok(stream_response(
                "application/json",
                Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx)),
            ));
        }
    };
    let mut shutdown = ctx.state.shutdown.clone();
    // A CRD converting by webhook: objects are converted by calling it (a failure ends the
    // watch with an ERROR event).
    let webhook = crate::crd::conversion::by_webhook(ctx.state, info);
    let state = ctx.state.clone();
    tokio::spawn(async move {
        let objects = std::mem::take(&mut sub.objects);
        let latest = std::mem::take(&mut sub.latest);
        if webhook {
            // The initial state in one review, as a list.
            let stored: Vec<Value> = objects
                .iter()
                .filter(|o| spec.selectors.matches(&***o))
                .map(|o| o.to_value())
                .collect();
            match served_objects(&state, &spec.info, stored).await {
                Ok(served) => {
                    for obj in served {
                        if tx.send(Ok(spec.line("ADDED", obj))).await.is_err() {
                            return;
                        }
                    }
                }
                Err(e) => {
                    let _ = tx.send(Ok(error_line(&e))).await;
                    return;
                }
            }
        } else {
            let mut latest = latest.into_iter();
            for obj in objects {
                let made_by = latest.next().flatten();
                if spec.selectors.matches(&*obj)
                    && tx
                        .send(Ok(spec.initial_line(&obj, made_by.as_deref())))
                        .await
                        .is_err()
                {
                    return;
                }
            }
        }
        if send_initial && spec.bookmarks {
            let _ = tx.send(Ok(spec.bookmark(sub.revision, true))).await;
        }
        for ev in std::mem::take(&mut sub.events) {
            let line = match spec.event_line(&state, webhook, &ev).await {
                Ok(Some(line)) => line,
                Ok(None) => continue,
                Err(e) => {
                    let _ = tx.send(Ok(error_line(&e))).await;
                    return;
                }
            };
            if tx.send(Ok(line)).await.is_err() {
                return;
            }
        }
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        loop {
            let line = tokio::select! {
                _ = &mut deadline => return,
                _ = shutdown.changed() => return,
                _ = tx.closed() => return,
                msg = sub.rx.recv() => match msg {
                    // Terminated (too slow) or the cache stopped: the client watches again.
                    None => return,
                    Some(Message::Event(ev)) => match spec.event_line(&state, webhook, &ev).await {
                        Ok(Some(line)) => line,
                        Ok(None) => continue,
                        Err(e) => {
                            let _ = tx.send(Ok(error_line(&e))).await;
                            return;
                        }
                    },
                    Some(Message::Bookmark(revision)) if spec.bookmarks => {
                        spec.bookmark(revision, false)
                    }
                    Some(Message::Bookmark(_)) => continue,
                }
            };
            if tx.send(Ok(line)).await.is_err() {
                return;
            }
        }
    });
    Ok(stream_response(
        "application/json",
        Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx)),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::REGISTRY;

    fn obj(name: &str, labels: Value, rev: i64) -> Arc<CachedObject> {
        CachedObject::new(
            json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": name, "namespace": "default", "labels": labels,
                             "resourceVersion": rev.to_string()},
            }),
            &[],
        )
    }

    fn put(prev: Option<Arc<CachedObject>>, now: Arc<CachedObject>, rev: i64) -> CachedEvent {
        CachedEvent {
            key: b"/registry/configmaps/default/x".to_vec(),
            revision: rev,
            kind: EventKind::Put,
            object: now,
            prev,
            encoded: Default::default(),
        }
    }

    fn event_type(spec: &WatchSpec, ev: &CachedEvent) -> Option<(String, String)> {
        let line = spec.convert(ev)?;
        assert!(line.ends_with(b"\n"));
        let v: Value = serde_json::from_slice(&line).expect("json line");
        Some((
            v["type"].as_str().unwrap_or("").to_string(),
            v["object"]["metadata"]["resourceVersion"]
                .as_str()
                .unwrap_or("")
                .to_string(),
        ))
    }

    #[test]
    fn selector_transitions_become_added_and_deleted() {
        let info = REGISTRY.find("", "v1", "configmaps").expect("cm");
        let mut q = Query::new();
        q.insert("labelSelector".into(), "app=web".into());
        let spec = WatchSpec {
            info: info.clone(),
            selectors: Selectors::from_query(info, &q).expect("selector"),
            table: false,
            query: q,
            bookmarks: false,
        };
        let web = json!({"app": "web"});
        let db = json!({"app": "db"});
        // Created matching: ADDED; created not matching: nothing.
        assert_eq!(
            event_type(&spec, &put(None, obj("a", web.clone(), 5), 5)),
            Some(("ADDED".into(), "5".into()))
        );
        assert_eq!(
            event_type(&spec, &put(None, obj("b", db.clone(), 6), 6)),
            None
        );
        // Still matching: MODIFIED; starts matching: ADDED; stops matching: DELETED.
        let ev = put(Some(obj("a", web.clone(), 5)), obj("a", web.clone(), 7), 7);
        assert_eq!(event_type(&spec, &ev).map(|e| e.0), Some("MODIFIED".into()));
        let ev = put(Some(obj("b", db.clone(), 6)), obj("b", web.clone(), 8), 8);
        assert_eq!(event_type(&spec, &ev).map(|e| e.0), Some("ADDED".into()));
        let ev = put(Some(obj("a", web.clone(), 7)), obj("a", db.clone(), 9), 9);
        assert_eq!(event_type(&spec, &ev), Some(("DELETED".into(), "9".into())));
        // A delete reports the last state at the deletion's revision.
        let del = CachedEvent {
            key: b"/registry/configmaps/default/a".to_vec(),
            revision: 10,
            kind: EventKind::Delete,
            object: obj("a", web.clone(), 10),
            prev: Some(obj("a", web, 7)),
            encoded: Default::default(),
        };
        assert_eq!(
            event_type(&spec, &del),
            Some(("DELETED".into(), "10".into()))
        );
        let del_other = CachedEvent {
            object: obj("b", db.clone(), 11),
            prev: Some(obj("b", db, 8)),
            encoded: Default::default(),
            ..del
        };
        assert_eq!(event_type(&spec, &del_other), None);
    }

    /// A watch that decodes objects writes an initial ADDED with the encoding of the change
    /// that made the object (shared with the other such watches, and with that change's own
    /// line), and without one as before.
    #[test]
    fn initial_added_lines_share_the_encoding_of_the_latest_change() {
        let info = REGISTRY.find("", "v1", "configmaps").expect("cm");
        let table = || WatchSpec {
            info: info.clone(),
            selectors: Selectors::from_query(info, &Query::new()).expect("selector"),
            table: true,
            query: Query::new(),
            bookmarks: false,
        };
        let object = obj("a", json!({"app": "web"}), 5);
        let ev = put(None, object.clone(), 5);
        let lines: Vec<Bytes> = (0..3)
            .map(|_| table().initial_line(&object, Some(&ev)))
            .collect();
        assert_eq!(ev.encoded.len(), 1, "one encoding for three watches");
        assert!(lines.iter().all(|l| *l == lines[0]));
        assert_eq!(lines[0], table().object_line("ADDED", &object));
        // The change's own ADDED line is that encoding too.
        assert_eq!(table().convert(&ev).as_ref(), Some(&lines[0]));
        assert_eq!(ev.encoded.len(), 1);
        // Without the change (no longer in the ring): encoded for the watch alone.
        assert_eq!(table().initial_line(&object, None), lines[0]);
        // A plain watch writes the cached JSON and keeps no encoding.
        let plain = WatchSpec {
            table: false,
            ..table()
        };
        let other = put(None, object.clone(), 5);
        let line = plain.initial_line(&object, Some(&other));
        assert_eq!(other.encoded.len(), 0);
        assert_eq!(line, plain.object_line("ADDED", &object));
    }

    /// Table watches of a custom resource share an event's Table while their CRD's columns are
    /// the same; a watch that started with other columns gets its own.
    #[test]
    fn custom_resource_tables_are_shared_by_watches_with_the_same_columns() {
        let crd = |column: &str| {
            let crd = json!({
                "metadata": {"name": "widgets.example.com"},
                "spec": {"group": "example.com", "scope": "Namespaced",
                         "names": {"plural": "widgets", "kind": "Widget"},
                         "versions": [{"name": "v1", "served": true, "storage": true,
                             "additionalPrinterColumns": [
                                 {"name": column, "type": "string", "jsonPath": ".spec.size"}]}]},
                "status": {"acceptedNames": {"plural": "widgets", "kind": "Widget"},
                           "conditions": [{"type": "Established", "status": "True"}]},
            });
            let snapshot = crate::crd::build_snapshot(&std::collections::BTreeMap::from([(
                "widgets.example.com".into(),
                crd,
            )]));
            snapshot
                .find("example.com", "v1", "widgets")
                .expect("served")
                .clone()
        };
        let table = |info: &ResourceInfo| WatchSpec {
            info: info.clone(),
            selectors: Selectors::from_query(info, &Query::new()).expect("selector"),
            table: true,
            query: Query::new(),
            bookmarks: false,
        };
        let size = crd("Size");
        let widget = CachedObject::new(
            json!({
                "apiVersion": "example.com/v1", "kind": "Widget",
                "metadata": {"name": "w", "namespace": "default", "resourceVersion": "7"},
                "spec": {"size": "big"},
            }),
            &[],
        );
        let ev = put(None, widget, 7);
        let lines: Vec<Bytes> = (0..3).filter_map(|_| table(&size).convert(&ev)).collect();
        assert_eq!(lines.len(), 3);
        assert!(lines.iter().all(|l| *l == lines[0]));
        assert_eq!(ev.encoded.len(), 1, "one Table for the three watches");
        // Another snapshot with the same columns shares it too.
        assert_eq!(table(&crd("Size")).convert(&ev).as_ref(), Some(&lines[0]));
        assert_eq!(ev.encoded.len(), 1);
        let other = table(&crd("Bigness")).convert(&ev).expect("line");
        assert_eq!(ev.encoded.len(), 2, "other columns: another Table");
        let v: Value = serde_json::from_slice(&other).expect("json");
        assert_eq!(v["object"]["columnDefinitions"][1]["name"], "Bigness");
        assert_eq!(v["object"]["rows"][0]["cells"], json!(["w", "big"]));
        let v: Value = serde_json::from_slice(&lines[0]).expect("json");
        assert_eq!(v["object"]["columnDefinitions"][1]["name"], "Size");
    }

    /// Watches that decode objects (tables, versions served by conversion) share one encoding
    /// per event and (version, format); plain watches write the cached JSON and keep none.
    #[test]
    fn decoded_lines_are_encoded_once_per_event_and_format() {
        let info = REGISTRY.find("", "v1", "configmaps").expect("cm");
        let spec = |table: bool, include: Option<&str>| {
            let mut q = Query::new();
            if let Some(i) = include {
                q.insert("includeObject".into(), i.into());
            }
            WatchSpec {
                info: info.clone(),
                selectors: Selectors::from_query(info, &q).expect("selector"),
                table,
                query: q,
                bookmarks: false,
            }
        };
        let ev = put(None, obj("a", json!({"app": "web"}), 5), 5);
        let plain = spec(false, None);
        let line = plain.convert(&ev).expect("line");
        assert_eq!(ev.encoded.len(), 0);
        let v: Value = serde_json::from_slice(&line).expect("json");
        assert_eq!(
            (v["type"].as_str(), v["object"]["kind"].as_str()),
            (Some("ADDED"), Some("ConfigMap"))
        );

        let tables: Vec<WatchSpec> = (0..3).map(|_| spec(true, None)).collect();
        let lines: Vec<Bytes> = tables.iter().filter_map(|s| s.convert(&ev)).collect();
        assert_eq!(lines.len(), 3);
        assert!(lines.iter().all(|l| *l == lines[0]));
        assert_eq!(
            ev.encoded.len(),
            1,
            "one Table encoding for the three watches"
        );
        let v: Value = serde_json::from_slice(&lines[0]).expect("json");
        assert_eq!(v["object"]["kind"], "Table");
        assert_eq!(
            v["object"]["rows"][0]["object"]["kind"],
            "PartialObjectMetadata"
        );
        let full = spec(true, Some("Object")).convert(&ev).expect("line");
        assert_eq!(
            ev.encoded.len(),
            2,
            "includeObject=Object is another encoding"
        );
        let v: Value = serde_json::from_slice(&full).expect("json");
        assert_eq!(v["object"]["rows"][0]["object"]["kind"], "ConfigMap");

        // A version served by conversion: core Events through events.k8s.io/v1.
        let events = REGISTRY
            .find("events.k8s.io", "v1", "events")
            .expect("events");
        let converted = |_: usize| WatchSpec {
            info: events.clone(),
            selectors: Selectors::from_query(events, &Query::new()).expect("selector"),
            table: false,
            query: Query::new(),
            bookmarks: false,
        };
        let core_event = CachedObject::new(
            json!({
                "apiVersion": "v1", "kind": "Event",
                "metadata": {"name": "e", "namespace": "default", "resourceVersion": "6"},
                "involvedObject": {"kind": "Pod", "name": "p"}, "message": "hello",
                "reason": "Started", "type": "Normal",
            }),
            &[],
        );
        let ev = put(None, core_event, 6);
        let lines: Vec<Bytes> = (0..2).filter_map(|i| converted(i).convert(&ev)).collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0], lines[1]);
        assert_eq!(ev.encoded.len(), 1);
        let v: Value = serde_json::from_slice(&lines[0]).expect("json");
        assert_eq!(v["object"]["apiVersion"], "events.k8s.io/v1");
        assert_eq!(v["object"]["note"], "hello");
    }
}
