//! The hub: one task per store that reads new log rows in revision order and fans them out to
//! every watcher through a broadcast channel.
//!
//! It is woken by this process's commits at once, by Postgres NOTIFY for other processes'
//! commits, and otherwise looks every `datastore-poll-interval` (SQLite and MySQL have no
//! notifications across processes). A watcher first subscribes, then replays history from the
//! log table up to the hub's head, then follows the broadcast; one that lags behind the
//! broadcast's buffer replays from the log again. So a watcher is never fed out of order and
//! never skips: it is caught up, or told its history was compacted.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Notify, broadcast, watch};

use super::rows;
use super::{Dialect, META_COMPACT, META_REVISION, Shared};
use crate::error::{Error, Result};
use crate::types::{Event, WatchRequest, WatchResponse};
use crate::watch::{Watch, WatchSender};

/// Batches the broadcast keeps for slow watchers before they must replay from the log.
const BROADCAST_CAPACITY: usize = 4096;
/// Revisions read per query, by the hub and by a replaying watcher.
const WINDOW: i64 = 1000;
/// How long the hub waits for a missing revision to become visible before going on.
const GAP_PATIENCE: Duration = Duration::from_secs(1);

/// New rows of one or more consecutive revisions, up to `revision`.
#[derive(Debug)]
struct Batch {
    revision: i64,
    events: Vec<(i64, Event)>,
}

/// A handle on the hub; cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Hub {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    shared: Arc<Shared>,
    wake: Notify,
    tx: broadcast::Sender<Arc<Batch>>,
    /// The last revision broadcast. Updated *before* the batch is sent, so that a watcher
    /// that subscribes and then reads it never misses a batch.
    head: watch::Sender<i64>,
    shutdown: watch::Receiver<bool>,
}

impl Hub {
    /// Starts the hub at the store's current revision.
    pub(crate) async fn start(
        shared: Arc<Shared>,
        shutdown: watch::Receiver<bool>,
    ) -> Result<(Hub, tokio::task::JoinHandle<()>)> {
        let head = {
            let mut conn = shared.conn().await?;
            rows::meta(&mut conn, &shared, META_REVISION).await?
        };
        let listener = match shared.dialect {
            Dialect::Postgres => Some(listen(&shared).await?),
            _ => None,
        };
        let (tx, _) = broadcast::channel(BROADCAST_CAPACITY);
        let (head_tx, _) = watch::channel(head);
        let hub = Hub {
            inner: Arc::new(Inner {
                shared,
                wake: Notify::new(),
                tx,
                head: head_tx,
                shutdown,
            }),
        };
        let task = tokio::spawn(hub.clone().run(head, listener));
        Ok((hub, task))
    }

    /// Tells the hub that this process committed something.
    pub(crate) fn notify(&self) {
        self.inner.wake.notify_one();
    }

    /// Starts a watcher task.
    pub(crate) async fn watch(&self, req: WatchRequest) -> Result<Watch> {
        if req.key.is_empty() {
            return Err(Error::InvalidRequest("key is not provided".into()));
        }
        let shared = &self.inner.shared;
        // Subscribe before reading anything, so nothing falls between the replay and the feed.
        let rx = self.inner.tx.subscribe();
        let (current, compact) = {
            let mut conn = shared.conn().await?;
            (
                rows::meta(&mut conn, shared, META_REVISION).await?,
                rows::meta(&mut conn, shared, META_COMPACT).await?,
            )
        };
        let next = if req.start_revision > 0 {
            req.start_revision
        } else {
            current + 1
        };
        let (watch, sender) = Watch::channel();
        if next < compact {
            let _ = sender
                .tx
                .send(Ok(WatchResponse::Compacted {
                    compact_revision: compact,
                }))
                .await;
            return Ok(watch);
        }
        let watcher = Watcher {
            hub: self.clone(),
            req,
            next,
            seen: next - 1,
            sender,
        };
        tokio::spawn(watcher.run(rx));
        Ok(watch)
    }

    async fn run(self, mut last: i64, mut listener: Option<sqlx::postgres::PgListener>) {
        let inner = &self.inner;
        let mut shutdown = inner.shutdown.clone();
        let poll = match inner.shared.dialect {
            // NOTIFY covers other servers; the poll only guards against a lost notification.
            Dialect::Postgres => Duration::from_secs(1),
            _ => inner.shared.config.poll_interval(),
        };
        loop {
            tokio::select! {
                _ = inner.wake.notified() => {}
                _ = tokio::time::sleep(poll) => {}
                notification = recv(&mut listener) => {
                    if let Err(e) = notification {
                        tracing::warn!(error = %e, "lost the Postgres notification channel; reconnecting");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        listener = listen(&inner.shared).await.ok();
                    }
                }
                _ = shutdown.changed() => break,
            }
            match self.read_new(last).await {
                Ok(new_last) => last = new_last,
                Err(e) => {
                    tracing::warn!(error = %e, "watch hub cannot read the log; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    inner.wake.notify_one();
                }
            }
        }
        tracing::debug!("watch hub stopped");
    }

    /// Broadcasts every row after `last`; returns the new last revision.
    async fn read_new(&self, mut last: i64) -> Result<i64> {
        let inner = &self.inner;
        let shared = &inner.shared;
        let mut conn = shared.conn().await?;
        let mut gap_since: Option<Instant> = None;
        loop {
            let events = rows::events(&mut conn, shared, last, last + WINDOW, None).await?;
            let Some(&(first, _)) = events.first() else {
                return Ok(last);
            };
            if first != last + 1 {
                // Revisions are gapless, except where compaction removed whole revisions.
                let compact = rows::meta(&mut conn, shared, META_COMPACT).await?;
                if first > compact {
                    let since = *gap_since.get_or_insert_with(Instant::now);
                    if since.elapsed() < GAP_PATIENCE {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        continue;
                    }
                    tracing::error!(
                        after = last,
                        next = first,
                        "revisions missing from the log; going on"
                    );
                }
            }
            gap_since = None;
            let revision = events.last().map_or(last, |(rev, _)| *rev);
            inner.head.send_replace(revision);
            // No receivers is fine.
            let _ = inner.tx.send(Arc::new(Batch { revision, events }));
            last = revision;
        }
    }
}

async fn listen(shared: &Shared) -> Result<sqlx::postgres::PgListener> {
    let mut listener = sqlx::postgres::PgListener::connect(shared.secret_url.expose())
        .await
        .map_err(|e| Error::Connect {
            endpoint: shared.endpoint.clone(),
            source: Box::new(e),
        })?;
    listener
        .listen("rk3s_log")
        .await
        .map_err(shared.sql_err())?;
    Ok(listener)
}

/// The next notification, or never when there is no listener.
async fn recv(listener: &mut Option<sqlx::postgres::PgListener>) -> Result<(), sqlx::Error> {
    match listener {
        Some(l) => l.recv().await.map(|_| ()),
        None => std::future::pending().await,
    }
}

/// One watch's task.
struct Watcher {
    hub: Hub,
    req: WatchRequest,
    /// The next revision to deliver.
    next: i64,
    /// Everything up to here has been delivered.
    seen: i64,
    sender: WatchSender,
}

/// Why a watcher stops.
enum Stop {
    /// The consumer is gone or the store closed.
    Done,
    /// The history it needs was compacted; tell the consumer.
    Compacted(i64),
    Failed(Error),
}

impl Watcher {
    async fn run(mut self, rx: broadcast::Receiver<Arc<Batch>>) {
        let stop = self.follow(rx).await;
        let last = match stop {
            Stop::Done => return,
            Stop::Compacted(compact_revision) => Ok(WatchResponse::Compacted { compact_revision }),
            Stop::Failed(e) => Err(e),
        };
        let _ = self.sender.tx.send(last).await;
    }

    async fn follow(&mut self, mut rx: broadcast::Receiver<Arc<Batch>>) -> Stop {
        let mut shutdown = self.hub.inner.shutdown.clone();
        if let Err(stop) = self.replay().await {
            return stop;
        }
        let mut pending_progress: Option<i64> = None;
        loop {
            if let Some(target) = pending_progress
                && self.seen >= target
            {
                pending_progress = None;
                let progress = WatchResponse::Progress {
                    revision: self.seen,
                };
                if self.sender.tx.send(Ok(progress)).await.is_err() {
                    return Stop::Done;
                }
            }
            tokio::select! {
                batch = rx.recv() => match batch {
                    Ok(batch) => {
                        if let Err(stop) = self.deliver(&batch).await {
                            return stop;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::debug!(missed, next = self.next, "watcher lagged; replaying from the log");
                        rx = rx.resubscribe();
                        if let Err(stop) = self.replay().await {
                            return stop;
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return Stop::Done,
                },
                Some(()) = self.sender.progress.recv() => {
                    // Progress means "caught up with the store": with its current revision,
                    // not just with what the hub has read so far.
                    let target = match self.current_revision().await {
                        Ok(target) => target,
                        Err(stop) => return stop,
                    };
                    self.hub.notify();
                    pending_progress = Some(target);
                }
                _ = self.sender.tx.closed() => return Stop::Done,
                _ = shutdown.changed() => return Stop::Done,
            }
        }
    }

    async fn current_revision(&self) -> Result<i64, Stop> {
        let shared = &self.hub.inner.shared;
        let mut conn = shared.conn().await.map_err(Stop::Failed)?;
        rows::meta(&mut conn, shared, META_REVISION)
            .await
            .map_err(Stop::Failed)
    }

    fn wanted(&self, rev: i64, event: &Event) -> bool {
        rev >= self.next && self.req.range_end.contains(&self.req.key, &event.kv.key)
    }

    async fn deliver(&mut self, batch: &Batch) -> Result<(), Stop> {
        if batch.revision < self.next {
            return Ok(());
        }
        let events: Vec<Event> = batch
            .events
            .iter()
            .filter(|(rev, e)| self.wanted(*rev, e))
            .map(|(_, e)| self.shape(e.clone()))
            .collect();
        self.send(batch.revision, events).await
    }

    fn shape(&self, mut event: Event) -> Event {
        if !self.req.prev_kv {
            event.prev_kv = None;
        }
        event
    }

    async fn send(&mut self, revision: i64, events: Vec<Event>) -> Result<(), Stop> {
        if !events.is_empty() {
            let resp = WatchResponse::Events { revision, events };
            self.sender
                .tx
                .send(Ok(resp))
                .await
                .map_err(|_| Stop::Done)?;
        }
        self.next = revision + 1;
        self.seen = revision;
        Ok(())
    }

    /// Delivers from the log everything from `next` up to the hub's head.
    async fn replay(&mut self) -> Result<(), Stop> {
        let shared = self.hub.inner.shared.clone();
        let head = *self.hub.inner.head.borrow();
        while self.next <= head {
            let through = (self.next - 1 + WINDOW).min(head);
            let mut conn = shared.conn().await.map_err(Stop::Failed)?;
            let range = Some((self.req.key.as_slice(), &self.req.range_end));
            let events = rows::events(&mut conn, &shared, self.next - 1, through, range)
                .await
                .map_err(Stop::Failed)?;
            // Exact only if no compaction reached past `next` meanwhile.
            let compact = rows::meta(&mut conn, &shared, META_COMPACT)
                .await
                .map_err(Stop::Failed)?;
            if self.next < compact {
                return Err(Stop::Compacted(compact));
            }
            drop(conn);
            let events = events.into_iter().map(|(_, e)| self.shape(e)).collect();
            self.send(through, events).await?;
        }
        Ok(())
    }
}
