//! `?watch=1`: a stream of newline-delimited JSON `WatchEvent`s (ADDED, MODIFIED, DELETED,
//! BOOKMARK, ERROR) from a datastore watch on the resource's key prefix.
//!
//! Without a resourceVersion (or with "0"), the stream begins with an ADDED event per existing
//! object, as upstream. A resourceVersion whose history is compacted ends the stream with an
//! ERROR event carrying a 410 `Expired` Status, which clients answer by listing again.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::response::Response;
use rk3s_datastore::{Event, EventKind, KeyValue, WatchResponse};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::handlers::{Ctx, Selectors, list_items};
use super::object::{decode_as, set_resource_version};
use super::table::{to_table, wants_table};
use super::{Query, flag, stream_response};
use crate::registry::ResourceInfo;
use crate::status::ApiError;

/// How often a watch that allows bookmarks asks the store for progress.
const BOOKMARK_INTERVAL: Duration = Duration::from_secs(30);

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

    /// The watch event for one store event, if the watcher sees it.
    fn convert(&self, ev: &Event) -> Result<Option<Bytes>, ApiError> {
        let prev = ev
            .prev_kv
            .as_ref()
            .map(|kv| decode_as(&self.info, kv))
            .transpose()?;
        let prev_matches = prev.as_ref().is_some_and(|p| self.selectors.matches(p));
        match ev.kind {
            EventKind::Put => {
                let obj = decode_as(&self.info, &ev.kv)?;
                let matches = self.selectors.matches(&obj);
                Ok(match (prev.is_some(), prev_matches, matches) {
                    (_, true, true) => Some(self.line("MODIFIED", obj)),
                    (_, false, true) => Some(self.line("ADDED", obj)),
                    (true, true, false) => {
                        let mut old = prev.unwrap_or(Value::Null);
                        set_resource_version(&mut old, ev.kv.mod_revision);
                        Some(self.line("DELETED", old))
                    }
                    _ => None,
                })
            }
            EventKind::Delete => {
                let mut old = match prev {
                    Some(p) if prev_matches => p,
                    Some(_) => return Ok(None),
                    None => self.stub(&ev.kv),
                };
                set_resource_version(&mut old, ev.kv.mod_revision);
                Ok(Some(self.line("DELETED", old)))
            }
        }
    }

    /// An object that only names a deleted key, for a delete event without its previous value.
    fn stub(&self, kv: &KeyValue) -> Value {
        let key = String::from_utf8_lossy(&kv.key);
        let mut parts = key.rsplit('/');
        let name = parts.next().unwrap_or("");
        let mut meta = json!({ "name": name });
        if self.info.namespaced {
            meta["namespace"] = json!(parts.next().unwrap_or(""));
        }
        json!({ "kind": self.info.kind, "apiVersion": self.info.api_version(), "metadata": meta })
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
    let start: Option<i64> = match rv {
        "" | "0" => None,
        rv => Some(
            rv.parse::<i64>()
                .map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv:?}")))?,
        ),
    };
    let spec = WatchSpec {
        info: info.clone(),
        selectors,
        table: wants_table(ctx.headers),
        query: q.clone(),
        bookmarks: flag(q, "allowWatchBookmarks"),
    };

    // The initial state, when the client has none.
    let mut initial = Vec::new();
    let from = match start {
        Some(rv) if !send_initial => rv,
        _ => {
            let mut lq = q.clone();
            lq.remove("limit");
            lq.remove("continue");
            lq.remove("resourceVersionMatch");
            let (items, revision, _) =
                list_items(ctx.state, info, ctx.ns(), &spec.selectors, &lq).await?;
            initial = items.into_iter().map(|o| spec.line("ADDED", o)).collect();
            if send_initial && spec.bookmarks {
                initial.push(spec.bookmark(revision, true));
            }
            revision
        }
    };

    let prefix = info.prefix(ctx.ns());
    let store = ctx.state.store.clone();
    let mut shutdown = ctx.state.shutdown.clone();
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(64);
    tokio::spawn(async move {
        for line in initial {
            if tx.send(Ok(line)).await.is_err() {
                return;
            }
        }
        let mut watch = match store.watch_prefix(&prefix, from + 1, true).await {
            Ok(w) => w,
            Err(e) => {
                let _ = tx.send(Ok(error_line(&ApiError::from(e)))).await;
                return;
            }
        };
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut ticker = tokio::time::interval(BOOKMARK_INTERVAL);
        ticker.tick().await;
        loop {
            let lines: Vec<Bytes> = tokio::select! {
                _ = &mut deadline => return,
                _ = shutdown.changed() => return,
                _ = tx.closed() => return,
                _ = ticker.tick(), if spec.bookmarks => {
                    watch.request_progress();
                    continue;
                }
                next = watch.next() => match next {
                    None => return,
                    Some(Ok(WatchResponse::Events { events, .. })) => {
                        let mut out = Vec::new();
                        for ev in &events {
                            match spec.convert(ev) {
                                Ok(Some(line)) => out.push(line),
                                Ok(None) => {}
                                Err(e) => out.push(error_line(&e)),
                            }
                        }
                        out
                    }
                    Some(Ok(WatchResponse::Progress { revision })) => {
                        if spec.bookmarks { vec![spec.bookmark(revision, false)] } else { continue }
                    }
                    Some(Ok(WatchResponse::Compacted { compact_revision })) => {
                        let e = ApiError::expired(format!(
                            "too old resource version: {from} ({compact_revision})"
                        ));
                        let _ = tx.send(Ok(error_line(&e))).await;
                        return;
                    }
                    Some(Err(e)) => {
                        let e = match e {
                            rk3s_datastore::Error::Compacted { compact_revision, .. } => {
                                ApiError::expired(format!(
                                    "too old resource version: {from} ({compact_revision})"
                                ))
                            }
                            other => ApiError::from(other),
                        };
                        let _ = tx.send(Ok(error_line(&e))).await;
                        return;
                    }
                }
            };
            for line in lines {
                if tx.send(Ok(line)).await.is_err() {
                    return;
                }
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

    fn kv(name: &str, labels: Value, rev: i64) -> KeyValue {
        KeyValue {
            key: format!("/registry/configmaps/default/{name}").into_bytes(),
            value: serde_json::to_vec(&json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": name, "namespace": "default", "labels": labels},
            }))
            .expect("json"),
            mod_revision: rev,
            create_revision: rev,
            version: 1,
            lease: 0,
        }
    }

    fn event_type(spec: &WatchSpec, ev: &Event) -> Option<(String, String)> {
        let line = spec.convert(ev).expect("converts")?;
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
        let put = |prev: Option<KeyValue>, now: KeyValue| Event {
            kind: EventKind::Put,
            kv: now,
            prev_kv: prev,
        };
        let web = json!({"app": "web"});
        let db = json!({"app": "db"});
        // Created matching: ADDED; created not matching: nothing.
        assert_eq!(
            event_type(&spec, &put(None, kv("a", web.clone(), 5))),
            Some(("ADDED".into(), "5".into()))
        );
        assert_eq!(event_type(&spec, &put(None, kv("b", db.clone(), 6))), None);
        // Still matching: MODIFIED; starts matching: ADDED; stops matching: DELETED.
        assert_eq!(
            event_type(
                &spec,
                &put(Some(kv("a", web.clone(), 5)), kv("a", web.clone(), 7))
            )
            .map(|e| e.0),
            Some("MODIFIED".into())
        );
        assert_eq!(
            event_type(
                &spec,
                &put(Some(kv("b", db.clone(), 6)), kv("b", web.clone(), 8))
            )
            .map(|e| e.0),
            Some("ADDED".into())
        );
        assert_eq!(
            event_type(
                &spec,
                &put(Some(kv("a", web.clone(), 7)), kv("a", db.clone(), 9))
            ),
            Some(("DELETED".into(), "9".into()))
        );
        // A delete reports the last state at the deletion's revision.
        let del = Event {
            kind: EventKind::Delete,
            kv: KeyValue {
                key: b"/registry/configmaps/default/a".to_vec(),
                mod_revision: 10,
                ..KeyValue::default()
            },
            prev_kv: Some(kv("a", web, 7)),
        };
        assert_eq!(
            event_type(&spec, &del),
            Some(("DELETED".into(), "10".into()))
        );
        let del_other = Event {
            prev_kv: Some(kv("b", db, 8)),
            ..del
        };
        assert_eq!(event_type(&spec, &del_other), None);
    }
}
