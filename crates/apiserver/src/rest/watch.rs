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
use super::object::set_resource_version;
use super::table::{to_table, wants_table};
use super::{Query, flag, stream_response};
use crate::registry::ResourceInfo;
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
            let rv = super::object::meta_str(&obj, "resourceVersion").to_string();
            to_table(&self.info, std::slice::from_ref(&obj), &rv, &self.query)
        } else {
            obj
        };
        let mut bytes =
            serde_json::to_vec(&json!({ "type": kind, "object": object })).unwrap_or_default();
        bytes.push(b'\n');
        Bytes::from(bytes)
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
                    (_, true, true) => Some(self.object_line("MODIFIED", &ev.object)),
                    (_, false, true) => Some(self.object_line("ADDED", &ev.object)),
                    (Some(prev), true, false) => {
                        let mut old = self.served(prev.to_value());
                        set_resource_version(&mut old, ev.revision);
                        Some(self.line("DELETED", old))
                    }
                    _ => None,
                }
            }
            EventKind::Delete => prev_matches.then(|| self.object_line("DELETED", &ev.object)),
        }
    }
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
    let sub = ctx
        .state
        .watch_cache
        .subscribe(info, &scope, exact, start, spec.bookmarks)
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
    tokio::spawn(async move {
        for obj in std::mem::take(&mut sub.objects) {
            if spec.selectors.matches(&*obj)
                && tx.send(Ok(spec.object_line("ADDED", &obj))).await.is_err()
            {
                return;
            }
        }
        if send_initial && spec.bookmarks {
            let _ = tx.send(Ok(spec.bookmark(sub.revision, true))).await;
        }
        for ev in std::mem::take(&mut sub.events) {
            if let Some(line) = spec.convert(&ev)
                && tx.send(Ok(line)).await.is_err()
            {
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
                    Some(Message::Event(ev)) => match spec.convert(&ev) {
                        Some(line) => line,
                        None => continue,
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
        };
        assert_eq!(
            event_type(&spec, &del),
            Some(("DELETED".into(), "10".into()))
        );
        let del_other = CachedEvent {
            object: obj("b", db.clone(), 11),
            prev: Some(obj("b", db, 8)),
            ..del
        };
        assert_eq!(event_type(&spec, &del_other), None);
    }
}
