//! The etcd v3 gRPC endpoint: serves KV, Watch, Lease, Maintenance and Cluster over any
//! [`crate::Store`], so that etcd clients (etcdctl, kube-apiserver, `etcd-client`) can use the
//! SQL backends.
//!
//! The endpoint is one member of a one-member "cluster": every response carries
//! [`CLUSTER_ID`], [`MEMBER_ID`] and [`RAFT_TERM`] in its header, and the store's revision after
//! the operation. Requests the store cannot answer exactly get a gRPC error
//! (`Unimplemented`, `InvalidArgument`, ...) with etcd's message where etcd has one, never a
//! silently wrong answer.

mod args;
mod authority;
mod cluster;
mod kv;
mod lease;
mod maintenance;
mod watch;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use etcd_client::proto::{
    PbClusterServer, PbKvServer, PbLeaseServer, PbMaintenanceServer, PbResponseHeader,
    PbWatchServer,
};
use futures::StreamExt;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

use crate::error::Error;
use crate::store::Store;

pub use args::{Args, DEFAULT_LISTEN_ADDRESS, RunError, ServerConfig, load_config, run};

/// The cluster ID the endpoint reports (a fixed value: the endpoint is its own cluster).
pub const CLUSTER_ID: u64 = 0x726b_3373_6461_7461; // "rk3sdata"
/// The member ID of the endpoint, also reported as the leader.
pub const MEMBER_ID: u64 = 0x726b_3373_0000_0001;
/// The raft term the endpoint reports: there is no raft, and no election ever happens.
pub const RAFT_TERM: u64 = 2;
/// The etcd version the endpoint claims in `Status`: the 3.5 API it implements, including the
/// watch progress semantics clients check the version for.
pub const ETCD_VERSION: &str = "3.5.16";
/// How often watches created with `progress_notify` get a progress notification, as in etcd.
pub const DEFAULT_PROGRESS_NOTIFY_INTERVAL: Duration = Duration::from_secs(600);

/// Why the endpoint stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The listener has no local address.
    #[error("etcd endpoint: cannot read the listen address: {0}")]
    ListenAddress(#[source] std::io::Error),
    /// The gRPC server failed.
    #[error("etcd endpoint: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Tunables of the endpoint; [`ServeOptions::default`] matches etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeOptions {
    /// Period of the progress notifications of watches created with `progress_notify`.
    pub progress_notify_interval: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            progress_notify_interval: DEFAULT_PROGRESS_NOTIFY_INTERVAL,
        }
    }
}

/// Serves the etcd v3 API (plain HTTP/2 gRPC) on `listener` until `shutdown` completes. Watch
/// and lease keep-alive streams are ended at shutdown, so that the server can finish.
pub async fn serve(
    store: Store,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    serve_with_options(store, listener, shutdown, ServeOptions::default()).await
}

/// [`serve`] with explicit [`ServeOptions`].
#[tracing::instrument(skip_all, fields(listen = tracing::field::Empty))]
pub async fn serve_with_options(
    store: Store,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    options: ServeOptions,
) -> Result<(), ServeError> {
    let addr = listener.local_addr().map_err(ServeError::ListenAddress)?;
    tracing::Span::current().record("listen", tracing::field::display(addr));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let ctx = Ctx {
        store,
        stop: stop_rx,
        addr,
        options,
    };

    let incoming = TcpListenerStream::new(listener).map(|conn| {
        conn.map(|stream| {
            if let Err(err) = stream.set_nodelay(true) {
                tracing::debug!(%err, "cannot set TCP_NODELAY");
            }
            authority::FixAuthority::new(stream)
        })
    });
    let signal = async move {
        shutdown.await;
        tracing::debug!("etcd endpoint shutting down");
        // Ends the long-lived streams (watch, lease keep-alive) so that the server can finish.
        let _ = stop_tx.send(true);
    };
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .add_service(
            PbKvServer::new(kv::KvService::new(ctx.clone()))
                .max_decoding_message_size(MAX_REQUEST_BYTES),
        )
        .add_service(PbWatchServer::new(watch::WatchService::new(ctx.clone())))
        .add_service(PbLeaseServer::new(lease::LeaseService::new(ctx.clone())))
        .add_service(PbMaintenanceServer::new(
            maintenance::MaintenanceService::new(ctx.clone()),
        ))
        .add_service(PbClusterServer::new(cluster::ClusterService::new(ctx)))
        .serve_with_incoming_shutdown(incoming, signal)
        .await?;
    Ok(())
}

/// Largest request accepted (etcd accepts 1.5 MiB values plus the envelope by default; a
/// little more room does no harm).
const MAX_REQUEST_BYTES: usize = 8 * 1024 * 1024;

/// What every service shares.
#[derive(Debug, Clone)]
pub(crate) struct Ctx {
    pub(crate) store: Store,
    /// Turns `true` when the server shuts down.
    pub(crate) stop: tokio::sync::watch::Receiver<bool>,
    pub(crate) addr: SocketAddr,
    pub(crate) options: ServeOptions,
}

impl Ctx {
    /// The store's current revision, as a gRPC result.
    pub(crate) async fn current_revision(&self) -> Result<i64, tonic::Status> {
        self.store.current_revision().await.map_err(to_status)
    }

    /// Resolves when the server shuts down.
    pub(crate) fn stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut stop = self.stop.clone();
        async move {
            // An error means the sender is gone: the server is gone too.
            let _ = stop.wait_for(|stopped| *stopped).await;
        }
    }
}

/// The header of every response: the store's revision after the operation.
pub(crate) fn header(revision: i64) -> Option<PbResponseHeader> {
    Some(PbResponseHeader {
        cluster_id: CLUSTER_ID,
        member_id: MEMBER_ID,
        revision,
        raft_term: RAFT_TERM,
    })
}

/// etcd's message for a compacted revision.
pub(crate) const COMPACTED_MSG: &str = "etcdserver: mvcc: required revision has been compacted";
/// etcd's message for a future revision.
pub(crate) const FUTURE_REV_MSG: &str = "etcdserver: mvcc: required revision is a future revision";
/// etcd's message for an unknown lease.
pub(crate) const LEASE_NOT_FOUND_MSG: &str = "etcdserver: requested lease not found";

/// Maps a store error to the gRPC status etcd would answer with.
pub(crate) fn to_status(err: Error) -> tonic::Status {
    use tonic::Status;
    match err {
        Error::Compacted { .. } => Status::out_of_range(COMPACTED_MSG),
        Error::FutureRevision { .. } => Status::out_of_range(FUTURE_REV_MSG),
        Error::LeaseNotFound(_) => Status::not_found(LEASE_NOT_FOUND_MSG),
        Error::LeaseExists(_) => Status::failed_precondition("etcdserver: lease already exists"),
        Error::InvalidRequest(msg) => {
            let msg = if msg.starts_with("etcdserver: ") {
                msg
            } else {
                format!("etcdserver: {msg}")
            };
            Status::invalid_argument(msg)
        }
        Error::Unsupported(msg) => Status::unimplemented(format!("rk3s: not supported: {msg}")),
        Error::Closed => Status::unavailable("etcdserver: datastore is closed"),
        err if err.is_transient() => {
            tracing::warn!(%err, "transient datastore error");
            Status::unavailable(format!("etcdserver: {err}"))
        }
        err => {
            tracing::error!(%err, "datastore error");
            Status::internal(format!("etcdserver: {err}"))
        }
    }
}

/// The etcd error for an empty key.
pub(crate) fn key_not_provided() -> tonic::Status {
    tonic::Status::invalid_argument("etcdserver: key is not provided")
}

/// An `Unimplemented` status for an etcd RPC the endpoint does not serve.
pub(crate) fn unimplemented(what: &str) -> tonic::Status {
    tonic::Status::unimplemented(format!(
        "rk3s: {what} is not supported by the rk3s etcd endpoint"
    ))
}
