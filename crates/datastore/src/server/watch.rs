//! The Watch service: one bidirectional stream carries any number of watches.
//!
//! Each gRPC stream has a manager task that owns the stream's watches and writes every response,
//! and one small task per watch that forwards the store's [`crate::Watch`] to the manager. The
//! manager answering for the whole stream is what makes a progress request exact, as in etcd
//! 3.5: the answer carries the store's revision at the time of the request, and it is sent only
//! once every watch of the stream has delivered everything up to that revision, with no event
//! of a later revision sent before it (those wait in a small buffer for the moment).

use std::collections::{HashMap, HashSet, VecDeque};
use std::pin::Pin;
use std::sync::Arc;

use etcd_client::proto::{
    PbEvent, PbWatchRequest, PbWatchRequestUnion, PbWatchResponse, PbWatchService,
};
use futures::{Stream, StreamExt};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::kv::kv_to_pb;
use super::{Ctx, header, to_status};
use crate::error::{Error, Result};
use crate::types::{Event, EventKind, RangeEnd, WatchRequest, WatchResponse};
use crate::watch::Watch;

/// Responses queued for a client before the manager waits.
const OUTBOUND: usize = 64;
/// Messages queued from the watch tasks of one stream to its manager.
const INBOUND: usize = 64;
/// The watch ID etcd uses for responses about the whole stream.
const STREAM_WATCH_ID: i64 = -1;
// Values of watch_create_request::FilterType.
const FILTER_NOPUT: i32 = 0;
const FILTER_NODELETE: i32 = 1;

#[derive(Debug)]
pub(crate) struct WatchService {
    ctx: Ctx,
}

impl WatchService {
    pub(crate) fn new(ctx: Ctx) -> Self {
        WatchService { ctx }
    }
}

#[tonic::async_trait]
impl PbWatchService for WatchService {
    type WatchStream = ReceiverStream<Result<PbWatchResponse, Status>>;

    async fn watch(
        &self,
        request: Request<Streaming<PbWatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let inbound = request.into_inner();
        let (out, rx) = mpsc::channel(OUTBOUND);
        let (task_tx, task_rx) = mpsc::channel(INBOUND);
        let manager = Manager {
            ctx: self.ctx.clone(),
            out,
            task_tx,
            watches: HashMap::new(),
            ids: HashMap::new(),
            next_key: 0,
            next_auto_id: 0,
            round: None,
            round_again: false,
        };
        tokio::spawn(manager.run(Box::pin(inbound), task_rx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

type Inbound = Pin<Box<dyn Stream<Item = Result<PbWatchRequest, Status>> + Send>>;

/// What a watch task tells the manager: its internal key and the store's answer (`None` when
/// the watch ended).
type TaskMessage = (u64, Option<Result<WatchResponse>>);

/// The client went away: stop.
#[derive(Debug)]
struct Gone;

#[derive(Debug)]
struct Entry {
    /// Internal key, unique in the stream even when the client reuses a watch ID.
    key: u64,
    no_put: bool,
    no_delete: bool,
    progress_notify: bool,
    /// A periodic progress notification waits for the watch's progress answer.
    notify_pending: bool,
    /// The watch has delivered every change of its range up to this revision.
    synced: i64,
    poke: Arc<Notify>,
    task: JoinHandle<()>,
}

/// A stream-wide progress request being answered.
#[derive(Debug)]
struct Round {
    /// The store's revision when the request came: the revision the answer carries.
    target: i64,
    /// Watches not yet known to have delivered everything up to `target`.
    awaiting: HashSet<i64>,
    /// Responses held back until the answer is sent: they carry later revisions (or follow
    /// such responses of the same watch).
    buffer: VecDeque<(i64, PbWatchResponse)>,
}

#[derive(Debug)]
struct Manager {
    ctx: Ctx,
    out: mpsc::Sender<Result<PbWatchResponse, Status>>,
    task_tx: mpsc::Sender<TaskMessage>,
    watches: HashMap<i64, Entry>,
    /// Internal key -> watch ID.
    ids: HashMap<u64, i64>,
    next_key: u64,
    next_auto_id: i64,
    round: Option<Round>,
    /// Another progress request came while a round was running.
    round_again: bool,
}

impl Manager {
    #[tracing::instrument(name = "watch_stream", level = "debug", skip_all)]
    async fn run(mut self, mut inbound: Inbound, mut task_rx: mpsc::Receiver<TaskMessage>) {
        let period = self.ctx.options.progress_notify_interval;
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let stopped = self.ctx.stopped();
        tokio::pin!(stopped);
        let mut reading = true;
        loop {
            let step = tokio::select! {
                _ = &mut stopped => break,
                _ = self.out.closed() => break,
                req = inbound.next(), if reading => match req {
                    Some(Ok(req)) => self.handle_request(req).await,
                    // The client closed its side; etcd keeps sending until it goes away.
                    None => {
                        reading = false;
                        Ok(())
                    }
                    Some(Err(status)) => {
                        tracing::debug!(%status, "watch stream broke");
                        break;
                    }
                },
                Some((key, msg)) = task_rx.recv() => self.handle_task(key, msg).await,
                _ = ticker.tick() => {
                    self.progress_notify();
                    Ok(())
                }
            };
            if step.is_err() {
                break;
            }
        }
        for (_, entry) in self.watches.drain() {
            entry.task.abort();
        }
    }

    async fn send(&self, resp: PbWatchResponse) -> Result<(), Gone> {
        self.out.send(Ok(resp)).await.map_err(|_| Gone)
    }

    /// Sends a response about watch `id`, or holds it back behind that watch's held responses.
    async fn emit(&mut self, id: i64, resp: PbWatchResponse) -> Result<(), Gone> {
        if let Some(round) = &mut self.round
            && round.buffer.iter().any(|(held, _)| *held == id)
        {
            round.buffer.push_back((id, resp));
            return Ok(());
        }
        self.send(resp).await
    }

    async fn handle_request(&mut self, req: PbWatchRequest) -> Result<(), Gone> {
        match req.request_union {
            Some(PbWatchRequestUnion::CreateRequest(c)) => {
                let filters = c.filters.iter().copied().collect::<HashSet<_>>();
                self.create(
                    c.key,
                    c.range_end,
                    c.start_revision,
                    c.prev_kv,
                    c.progress_notify,
                    c.watch_id,
                    filters.contains(&FILTER_NOPUT),
                    filters.contains(&FILTER_NODELETE),
                )
                .await
            }
            Some(PbWatchRequestUnion::CancelRequest(c)) => self.cancel(c.watch_id).await,
            Some(PbWatchRequestUnion::ProgressRequest(_)) => {
                if self.round.is_some() {
                    self.round_again = true;
                    Ok(())
                } else {
                    self.start_round().await
                }
            }
            None => Ok(()),
        }
    }

    #[allow(clippy::too_many_arguments)]
    #[tracing::instrument(level = "debug", skip(self, key, range_end))]
    async fn create(
        &mut self,
        mut key: Vec<u8>,
        range_end: Vec<u8>,
        start_revision: i64,
        prev_kv: bool,
        progress_notify: bool,
        watch_id: i64,
        no_put: bool,
        no_delete: bool,
    ) -> Result<(), Gone> {
        // The empty key is the smallest key, as in etcd.
        if key.is_empty() {
            key = vec![0];
        }
        let range_end = RangeEnd::from_etcd(&range_end);
        if let RangeEnd::Before(end) = &range_end
            && key >= *end
        {
            return self.refuse(watch_id, "mvcc: watcher range is empty").await;
        }
        let id = if watch_id != 0 {
            if self.watches.contains_key(&watch_id) {
                return self
                    .refuse(
                        STREAM_WATCH_ID,
                        "mvcc: duplicate watch ID provided on the WatchStream",
                    )
                    .await;
            }
            watch_id
        } else {
            while self.watches.contains_key(&self.next_auto_id) {
                self.next_auto_id += 1;
            }
            let id = self.next_auto_id;
            self.next_auto_id += 1;
            id
        };
        let current = match self.ctx.store.current_revision().await {
            Ok(rev) => rev,
            Err(err) => return self.refuse(id, to_status(err).message()).await,
        };
        // Start right after the revision the created response reports: no change is missed
        // between the two.
        let start = if start_revision > 0 {
            start_revision
        } else {
            current + 1
        };
        let request = WatchRequest {
            key,
            range_end,
            start_revision: start,
            prev_kv,
        };
        let created = PbWatchResponse {
            header: header(current),
            watch_id: id,
            created: true,
            ..PbWatchResponse::default()
        };
        let watch = match self.ctx.store.backend().watch(request).await {
            Ok(watch) => watch,
            Err(Error::Compacted {
                compact_revision, ..
            }) => {
                // etcd creates the watch, then cancels it as compacted.
                self.send(created).await?;
                return self.send(compacted(id, compact_revision)).await;
            }
            Err(err) => return self.refuse(id, to_status(err).message()).await,
        };
        self.send(created).await?;

        let key = self.next_key;
        self.next_key += 1;
        let poke = Arc::new(Notify::new());
        let task = tokio::spawn(forward(key, watch, poke.clone(), self.task_tx.clone()));
        let entry = Entry {
            key,
            no_put,
            no_delete,
            progress_notify,
            notify_pending: false,
            synced: start - 1,
            poke,
            task,
        };
        if let Some(round) = &mut self.round
            && entry.synced < round.target
        {
            round.awaiting.insert(id);
            entry.poke.notify_one();
        }
        self.ids.insert(key, id);
        self.watches.insert(id, entry);
        Ok(())
    }

    /// Answers a create request that made no watch.
    async fn refuse(&self, id: i64, reason: &str) -> Result<(), Gone> {
        self.send(PbWatchResponse {
            header: header(0),
            watch_id: id,
            created: true,
            canceled: true,
            cancel_reason: reason.to_string(),
            ..PbWatchResponse::default()
        })
        .await
    }

    async fn cancel(&mut self, id: i64) -> Result<(), Gone> {
        let Some(entry) = self.remove(id) else {
            // etcd ignores the cancellation of an unknown watch.
            return Ok(());
        };
        if let Some(round) = &mut self.round {
            // The client forgets the watch: its held responses would be dropped anyway.
            round.buffer.retain(|(held, _)| *held != id);
        }
        let revision = match self.ctx.store.current_revision().await {
            Ok(rev) => rev,
            Err(_) => entry.synced,
        };
        self.send(PbWatchResponse {
            header: header(revision),
            watch_id: id,
            canceled: true,
            ..PbWatchResponse::default()
        })
        .await?;
        self.finish_round_if_done().await
    }

    /// Forgets a watch and stops its task.
    fn remove(&mut self, id: i64) -> Option<Entry> {
        let entry = self.watches.remove(&id)?;
        entry.task.abort();
        self.ids.remove(&entry.key);
        if let Some(round) = &mut self.round {
            round.awaiting.remove(&id);
        }
        Some(entry)
    }

    async fn handle_task(
        &mut self,
        key: u64,
        msg: Option<Result<WatchResponse>>,
    ) -> Result<(), Gone> {
        let Some(&id) = self.ids.get(&key) else {
            // A message of a watch cancelled since.
            return Ok(());
        };
        match msg {
            Some(Ok(WatchResponse::Events { revision, events })) => {
                self.events(id, revision, events).await?;
            }
            Some(Ok(WatchResponse::Progress { revision })) => self.progress(id, revision).await?,
            Some(Ok(WatchResponse::Compacted { compact_revision }))
            | Some(Err(Error::Compacted {
                compact_revision, ..
            })) => {
                self.remove(id);
                self.emit(id, compacted(id, compact_revision)).await?;
            }
            Some(Err(err)) => {
                let entry = self.remove(id);
                tracing::warn!(watch_id = id, %err, "watch failed");
                let resp = canceled(id, entry.map_or(0, |e| e.synced), to_status(err).message());
                self.emit(id, resp).await?;
            }
            None => {
                let entry = self.remove(id);
                let resp = canceled(
                    id,
                    entry.map_or(0, |e| e.synced),
                    "etcdserver: watch ended: the datastore is closing",
                );
                self.emit(id, resp).await?;
            }
        }
        self.finish_round_if_done().await
    }

    async fn events(&mut self, id: i64, revision: i64, events: Vec<Event>) -> Result<(), Gone> {
        let Some(entry) = self.watches.get_mut(&id) else {
            return Ok(());
        };
        entry.synced = entry.synced.max(revision);
        let (no_put, no_delete, synced) = (entry.no_put, entry.no_delete, entry.synced);
        let events: Vec<PbEvent> = events
            .into_iter()
            .filter(|e| match e.kind {
                EventKind::Put => !no_put,
                EventKind::Delete => !no_delete,
            })
            .map(event_to_pb)
            .collect();
        let response = |header_rev: i64, events: Vec<PbEvent>| PbWatchResponse {
            header: header(header_rev),
            watch_id: id,
            events,
            ..PbWatchResponse::default()
        };
        if let Some(round) = &mut self.round {
            if synced >= round.target {
                round.awaiting.remove(&id);
            }
            // Events up to the round's revision go out now; later ones wait for the answer.
            let target = round.target;
            let (now, later): (Vec<_>, Vec<_>) = events
                .into_iter()
                .partition(|e| e.kv.as_ref().map_or(0, |kv| kv.mod_revision) <= target);
            if !now.is_empty() {
                self.emit(id, response(target.min(revision), now)).await?;
            }
            if !later.is_empty()
                && let Some(round) = &mut self.round
            {
                round.buffer.push_back((id, response(revision, later)));
            }
            return Ok(());
        }
        if events.is_empty() {
            return Ok(());
        }
        self.send(response(revision, events)).await
    }

    async fn progress(&mut self, id: i64, revision: i64) -> Result<(), Gone> {
        let Some(entry) = self.watches.get_mut(&id) else {
            return Ok(());
        };
        entry.synced = entry.synced.max(revision);
        let notify = std::mem::take(&mut entry.notify_pending);
        let (synced, poke) = (entry.synced, entry.poke.clone());
        if let Some(round) = &mut self.round
            && round.awaiting.contains(&id)
        {
            if synced >= round.target {
                round.awaiting.remove(&id);
            } else {
                // An answer to an earlier request: ask again.
                poke.notify_one();
            }
        }
        if notify {
            let resp = PbWatchResponse {
                header: header(revision),
                watch_id: id,
                ..PbWatchResponse::default()
            };
            match &mut self.round {
                Some(round) if revision > round.target => round.buffer.push_back((id, resp)),
                _ => self.emit(id, resp).await?,
            }
        }
        Ok(())
    }

    /// Starts answering a stream-wide progress request.
    async fn start_round(&mut self) -> Result<(), Gone> {
        let target = match self.ctx.store.current_revision().await {
            Ok(rev) => rev,
            Err(err) => {
                // No answer is better than a wrong one; the client asks again.
                tracing::warn!(%err, "cannot answer a watch progress request");
                return Ok(());
            }
        };
        let mut awaiting = HashSet::new();
        for (id, entry) in &self.watches {
            if entry.synced < target {
                awaiting.insert(*id);
                entry.poke.notify_one();
            }
        }
        self.round = Some(Round {
            target,
            awaiting,
            buffer: VecDeque::new(),
        });
        self.finish_round_if_done().await
    }

    async fn finish_round_if_done(&mut self) -> Result<(), Gone> {
        loop {
            let Some(round) = &self.round else {
                return Ok(());
            };
            if !round.awaiting.is_empty() {
                return Ok(());
            }
            let Some(round) = self.round.take() else {
                return Ok(());
            };
            self.send(PbWatchResponse {
                header: header(round.target),
                watch_id: STREAM_WATCH_ID,
                ..PbWatchResponse::default()
            })
            .await?;
            for (_, resp) in round.buffer {
                self.send(resp).await?;
            }
            if !std::mem::take(&mut self.round_again) {
                return Ok(());
            }
            // Boxed: start_round calls back into this function.
            Box::pin(self.start_round()).await?;
        }
    }

    /// The periodic notification of watches created with `progress_notify`.
    fn progress_notify(&mut self) {
        for entry in self.watches.values_mut().filter(|e| e.progress_notify) {
            entry.notify_pending = true;
            entry.poke.notify_one();
        }
    }
}

/// Forwards one watch to its stream's manager, and the manager's progress requests to the
/// watch.
async fn forward(key: u64, mut watch: Watch, poke: Arc<Notify>, tx: mpsc::Sender<TaskMessage>) {
    loop {
        tokio::select! {
            msg = watch.next() => {
                let end = !matches!(msg, Some(Ok(WatchResponse::Events { .. } | WatchResponse::Progress { .. })));
                if tx.send((key, msg)).await.is_err() || end {
                    return;
                }
            }
            _ = poke.notified() => watch.request_progress(),
        }
    }
}

fn event_to_pb(event: Event) -> PbEvent {
    PbEvent {
        r#type: match event.kind {
            EventKind::Put => 0,
            EventKind::Delete => 1,
        },
        kv: Some(kv_to_pb(event.kv)),
        prev_kv: event.prev_kv.map(kv_to_pb),
    }
}

/// A watch cancelled because its history is compacted. etcd leaves the header revision 0.
fn compacted(id: i64, compact_revision: i64) -> PbWatchResponse {
    PbWatchResponse {
        header: header(0),
        watch_id: id,
        canceled: true,
        compact_revision,
        ..PbWatchResponse::default()
    }
}

fn canceled(id: i64, revision: i64, reason: &str) -> PbWatchResponse {
    PbWatchResponse {
        header: header(revision),
        watch_id: id,
        canceled: true,
        cancel_reason: reason.to_string(),
        ..PbWatchResponse::default()
    }
}
