//! [`Watch`]: the receiving end of a watch, the same for every backend.

use tokio::sync::mpsc;

use crate::error::Result;
use crate::types::WatchResponse;

/// Capacity of the channel between a backend's watch task and its consumer. A consumer that
/// falls further behind makes the task wait (and, on the SQL backends, catch up from the log
/// later): nothing is dropped.
pub(crate) const WATCH_CHANNEL: usize = 256;

/// A running watch. Responses arrive in revision order; the watch ends (`None`) when the store
/// closes, and after a [`WatchResponse::Compacted`] or an error. Dropping it cancels the watch.
#[derive(Debug)]
pub struct Watch {
    rx: mpsc::Receiver<Result<WatchResponse>>,
    progress: mpsc::Sender<()>,
}

/// The sending end, held by a backend's watch task.
#[derive(Debug)]
pub(crate) struct WatchSender {
    pub(crate) tx: mpsc::Sender<Result<WatchResponse>>,
    pub(crate) progress: mpsc::Receiver<()>,
}

impl Watch {
    /// A new watch and the sender its backend task feeds.
    pub(crate) fn channel() -> (Watch, WatchSender) {
        let (tx, rx) = mpsc::channel(WATCH_CHANNEL);
        let (ptx, prx) = mpsc::channel(4);
        (
            Watch { rx, progress: ptx },
            WatchSender { tx, progress: prx },
        )
    }

    /// The next response, or `None` when the watch has ended.
    pub async fn next(&mut self) -> Option<Result<WatchResponse>> {
        self.rx.recv().await
    }

    /// Asks for a [`WatchResponse::Progress`] once everything up to the store's current
    /// revision has been delivered. Requests made while one is pending are merged.
    pub fn request_progress(&self) {
        // A full channel means a request is already pending: merging is what we want.
        let _ = self.progress.try_send(());
    }
}
