//! The etcd backend: the [`Backend`] trait on a real etcd cluster through `etcd-client`.
//!
//! Most operations map one to one onto the etcd v3 API. What needs care:
//!
//! - **Compaction errors.** etcd answers "required revision has been compacted" without saying
//!   what the compact revision is. We find it by bisecting with cheap count-only reads of one key
//!   (a read below the compact revision fails, one at or above it succeeds), falling back to the
//!   highest compaction made through this backend.
//! - **Watch progress.** etcd 3.4 answers a progress request on a separate control path, so the
//!   answer can overtake events of the same or older revisions still queued for the watcher
//!   (etcd issue 15220), and a watcher that is still catching up on history is answered with the
//!   store's revision before it has caught up. We therefore only report progress after a second
//!   progress round trip, and only once the watcher is known to be in sync (see
//!   [`WatchTask::on_progress`]).
//! - **Lost connections.** A watch whose stream breaks is re-opened from the first revision not
//!   yet delivered, so nothing is lost or repeated; after [`WATCH_GIVE_UP`] of failures the watch
//!   ends with an error.
//! - **Status.** etcd 3.4 does not report its compact revision in `Status`; we use the same
//!   bisection as for compaction errors.

use std::borrow::Cow;
use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{
    Certificate, Client, ConnectOptions, DeleteOptions, EventType, GetOptions, Identity, KvClient,
    LeaseGrantOptions, LeaseTimeToLiveOptions, PutOptions, TlsOptions, Txn, WatchOptions,
    WatchStream,
};
use tokio::sync::watch as signal;
use tokio::time::Instant;

use crate::backend::Backend;
use crate::endpoint::Endpoint;
use crate::error::{Error, Result};
use crate::types::{
    Compare, CompareOp, CompareTarget, DeleteRequest, DeleteResponse, Event, EventKind, KeyValue,
    Lease, LeaseStatus, PutRequest, PutResponse, RangeEnd, RangeRequest, RangeResponse, Status,
    TxnOp, TxnOpResponse, TxnRequest, TxnResponse, WatchRequest, WatchResponse,
};
use crate::watch::{Watch, WatchSender};

/// How long connecting and the first request may take.
/// Largest response accepted from etcd: a list of a whole resource type is one message
/// (kube-apiserver allows about 2 GiB too; tonic's default of 4 MiB breaks big lists).
const MAX_MESSAGE: usize = 2 * 1024 * 1024 * 1024 - 1;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 keep-alive pings on open streams (etcd refuses pings more often than every 5s).
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a broken watch keeps trying to re-open before it ends with an error.
const WATCH_GIVE_UP: Duration = Duration::from_secs(30);
const WATCH_BACKOFF_MIN: Duration = Duration::from_millis(100);
const WATCH_BACKOFF_MAX: Duration = Duration::from_secs(2);
/// etcd moves a watcher that starts in the past into sync every 100 ms; after this long a
/// watcher is taken to be in sync even if no event said so.
const WATCH_SYNC_GRACE: Duration = Duration::from_secs(1);
/// The most revisions etcd (3.4, `watchBatchMaxRevs`) sends in one catch-up response.
const ETCD_WATCH_BATCH_REVS: usize = 1000;

// The texts of the etcd errors we turn into our own variants.
const ERR_COMPACTED: &str = "required revision has been compacted";
const ERR_FUTURE_REV: &str = "required revision is a future revision";
const ERR_LEASE_NOT_FOUND: &str = "requested lease not found";
const ERR_LEASE_EXISTS: &str = "lease already exists";

/// Connects to the etcd cluster of `endpoint` and checks that it answers.
pub(crate) async fn connect(
    endpoint: &Endpoint,
    config: &crate::Config,
) -> Result<Arc<dyn Backend>> {
    Ok(Arc::new(EtcdBackend::connect(endpoint, config).await?))
}

/// A [`Backend`] on a real etcd.
pub(crate) struct EtcdBackend {
    /// The endpoints, redacted, for errors and logs.
    endpoint: String,
    /// `None` once closed.
    client: Mutex<Option<Client>>,
    /// Set to `true` on close; watch tasks end when it changes.
    shutdown: signal::Sender<bool>,
    /// The highest revision compacted through this backend, a floor for the compact revision.
    compacted: AtomicI64,
}

impl std::fmt::Debug for EtcdBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdBackend")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl EtcdBackend {
    #[tracing::instrument(level = "debug", skip_all, fields(endpoint = %endpoint))]
    pub(crate) async fn connect(endpoint: &Endpoint, config: &crate::Config) -> Result<Self> {
        let Endpoint::Etcd { endpoints } = endpoint else {
            return Err(Error::Internal(format!(
                "etcd backend asked to connect to {endpoint}"
            )));
        };
        let redacted = endpoint.redacted();
        let connect_err = |source: Box<dyn std::error::Error + Send + Sync>| Error::Connect {
            endpoint: redacted.clone(),
            source,
        };

        let mut options = ConnectOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_keep_alive(KEEP_ALIVE_INTERVAL, KEEP_ALIVE_TIMEOUT)
            .with_keep_alive_while_idle(false);
        if let Some(tls) = tls_options(endpoints, config).await? {
            options = options.with_tls(tls);
        }

        probe_tcp(endpoints)
            .await
            .map_err(|e| connect_err(e.into()))?;

        let client =
            tokio::time::timeout(CONNECT_TIMEOUT, Client::connect(endpoints, Some(options)))
                .await
                .map_err(|_| connect_err(format!("no answer within {CONNECT_TIMEOUT:?}").into()))?
                .map_err(|e| connect_err(Box::new(e)))?;
        // The channel connects lazily: make sure a member really answers.
        let mut maintenance = client.maintenance_client();
        let status = tokio::time::timeout(CONNECT_TIMEOUT, maintenance.status())
            .await
            .map_err(|_| {
                connect_err(
                    format!("etcd did not answer a status request within {CONNECT_TIMEOUT:?}")
                        .into(),
                )
            })?
            .map_err(|e| connect_err(Box::new(e)))?;
        tracing::debug!(version = status.version(), "connected to etcd");

        let (shutdown, _) = signal::channel(false);
        Ok(EtcdBackend {
            endpoint: redacted,
            client: Mutex::new(Some(client)),
            shutdown,
            compacted: AtomicI64::new(0),
        })
    }

    fn client(&self) -> Result<Client> {
        let guard = self
            .client
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        guard.clone().ok_or(Error::Closed)
    }

    fn kv(&self) -> Result<KvClient> {
        Ok(self
            .client()?
            .kv_client()
            .max_decoding_message_size(MAX_MESSAGE))
    }

    /// The store's current revision.
    async fn head(&self) -> Result<i64> {
        let resp = self
            .kv()?
            .get(vec![0], Some(GetOptions::new().with_count_only()))
            .await?;
        Ok(header_revision(resp.header()))
    }

    /// The revision etcd has compacted to: the smallest revision still readable, or 0 when
    /// nothing has been compacted.
    async fn compact_revision(&self) -> Result<i64> {
        let floor = self.compacted.load(Ordering::Relaxed);
        let kv = self.kv()?;
        // Whether a read at `rev` is still possible.
        let readable = |rev: i64| {
            let mut kv = kv.clone();
            async move {
                match kv
                    .get(
                        vec![0],
                        Some(GetOptions::new().with_count_only().with_revision(rev)),
                    )
                    .await
                {
                    Ok(_) => Ok(true),
                    Err(e) if grpc_message(&e).is_some_and(|m| m.contains(ERR_COMPACTED)) => {
                        Ok(false)
                    }
                    Err(e) => Err(Error::from(e)),
                }
            }
        };
        let head = header_revision(
            kv.clone()
                .get(vec![0], Some(GetOptions::new().with_count_only()))
                .await?
                .header(),
        );
        let mut low = floor.max(1);
        if low > head {
            return Ok(floor);
        }
        if readable(low).await? {
            return Ok(floor);
        }
        // `low` is compacted away; `head` is always readable.
        let mut high = head;
        while high - low > 1 {
            let mid = low + (high - low) / 2;
            if readable(mid).await? {
                high = mid;
            } else {
                low = mid;
            }
        }
        Ok(high)
    }

    /// Turns an etcd error into ours: compaction, future revision and lease errors get their
    /// own variants. `requested` is the revision the request asked for, `lease` the lease it
    /// was about.
    async fn map_err(&self, err: etcd_client::Error, requested: i64, lease: i64) -> Error {
        let Some(message) = grpc_message(&err) else {
            return Error::Etcd(err);
        };
        if message.contains(ERR_COMPACTED) {
            let compact_revision = match self.compact_revision().await {
                Ok(rev) => rev,
                Err(e) => {
                    tracing::debug!(error = %e, "cannot find the compact revision");
                    self.compacted.load(Ordering::Relaxed)
                }
            };
            Error::Compacted {
                requested,
                compact_revision,
            }
        } else if message.contains(ERR_FUTURE_REV) {
            let current = self.head().await.unwrap_or_default();
            Error::FutureRevision { requested, current }
        } else if message.contains(ERR_LEASE_NOT_FOUND) {
            Error::LeaseNotFound(lease)
        } else if message.contains(ERR_LEASE_EXISTS) {
            Error::LeaseExists(lease)
        } else if is_invalid_argument(&err) {
            // A duplicate key in one transaction, an empty key, ignore_value on a missing key.
            Error::InvalidRequest(message.trim_start_matches("etcdserver: ").to_string())
        } else {
            Error::Etcd(err)
        }
    }
}

#[async_trait::async_trait]
impl Backend for EtcdBackend {
    fn name(&self) -> &'static str {
        "etcd"
    }

    #[tracing::instrument(level = "debug", skip_all, fields(key = %show(&req.key), revision = req.revision))]
    async fn range(&self, req: RangeRequest) -> Result<RangeResponse> {
        let requested = req.revision;
        let key = etcd_key(&req.key, &req.range_end);
        let result = self.kv()?.get(key, Some(get_options(&req))).await;
        match result {
            Ok(mut resp) => Ok(RangeResponse {
                revision: header_revision(resp.header()),
                more: resp.more(),
                count: resp.count(),
                kvs: resp.take_kvs().into_iter().map(kv_from_etcd).collect(),
            }),
            Err(e) => Err(self.map_err(e, requested, 0).await),
        }
    }

    #[tracing::instrument(level = "debug", skip_all, fields(key = %txn_key(&req), compares = req.compare.len(), ops = req.success.len()))]
    async fn txn(&self, req: TxnRequest) -> Result<TxnResponse> {
        // What an error would be about.
        let ops = req.success.iter().chain(&req.failure);
        let requested = ops
            .clone()
            .filter_map(|op| match op {
                TxnOp::Range(r) => Some(r.revision),
                _ => None,
            })
            .max()
            .unwrap_or_default();
        let lease = ops
            .filter_map(|op| match op {
                TxnOp::Put(p) if p.lease != 0 => Some(p.lease),
                _ => None,
            })
            .next()
            .unwrap_or_default();

        let txn = Txn::new()
            .when(req.compare.iter().map(compare_to_etcd).collect::<Vec<_>>())
            .and_then(req.success.iter().map(op_to_etcd).collect::<Vec<_>>())
            .or_else(req.failure.iter().map(op_to_etcd).collect::<Vec<_>>());
        let resp = match self.kv()?.txn(txn).await {
            Ok(resp) => resp,
            Err(e) => return Err(self.map_err(e, requested, lease).await),
        };
        let revision = header_revision(resp.header());
        let responses = resp
            .op_responses()
            .into_iter()
            .map(|op| op_response_from_etcd(op, revision))
            .collect::<Result<Vec<_>>>()?;
        Ok(TxnResponse {
            revision,
            succeeded: resp.succeeded(),
            responses,
        })
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn compact(&self, revision: i64) -> Result<i64> {
        match self.kv()?.compact(revision, None).await {
            Ok(resp) => {
                self.compacted.fetch_max(revision, Ordering::Relaxed);
                Ok(header_revision(resp.header()))
            }
            Err(e) => Err(self.map_err(e, revision, 0).await),
        }
    }

    #[tracing::instrument(level = "debug", skip_all, fields(key = %show(&req.key), revision = req.start_revision))]
    async fn watch(&self, req: WatchRequest) -> Result<Watch> {
        if req.key.is_empty() && req.range_end == RangeEnd::Single {
            return Err(Error::InvalidRequest("watch of an empty key".into()));
        }
        if req.start_revision < 0 {
            return Err(Error::InvalidRequest(format!(
                "negative watch start revision {}",
                req.start_revision
            )));
        }
        let client = self.client()?;
        // "From now on" is from the revision after the current one, fixed before we return:
        // the etcd watch itself is opened by the task, maybe after further writes.
        let start_revision = match req.start_revision {
            0 => self.head().await? + 1,
            rev => rev,
        };
        let (watch, sender) = Watch::channel();
        let task = WatchTask {
            client,
            endpoint: self.endpoint.clone(),
            key: etcd_key(&req.key, &req.range_end),
            range_end: req.range_end.to_etcd(),
            prev_kv: req.prev_kv,
            next_rev: start_revision,
            last_rev: 0,
            sender,
            shutdown: self.shutdown.subscribe(),
            progress: ProgressState::Idle,
            resend_at: None,
        };
        tokio::spawn(tracing::Instrument::in_current_span(task.run()));
        Ok(watch)
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn lease_grant(&self, id: i64, ttl: i64) -> Result<Lease> {
        let options = (id != 0).then(|| LeaseGrantOptions::new().with_id(id));
        match self.client()?.lease_client().grant(ttl, options).await {
            Ok(resp) if resp.error().is_empty() => Ok(Lease {
                id: resp.id(),
                ttl: resp.ttl(),
            }),
            Ok(resp) if resp.error().contains(ERR_LEASE_EXISTS) => Err(Error::LeaseExists(id)),
            Ok(resp) => Err(Error::InvalidRequest(format!(
                "lease grant: {}",
                resp.error()
            ))),
            Err(e) => Err(self.map_err(e, 0, id).await),
        }
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn lease_revoke(&self, id: i64) -> Result<i64> {
        match self.client()?.lease_client().revoke(id).await {
            Ok(resp) => Ok(header_revision(resp.header())),
            Err(e) => Err(self.map_err(e, 0, id).await),
        }
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn lease_keep_alive(&self, id: i64) -> Result<Lease> {
        // Opening the keeper sends one keep-alive and reads its answer (failing if the lease is
        // gone); the second round trip tells us the TTL it was renewed for.
        let (mut keeper, mut stream) = match self.client()?.lease_client().keep_alive(id).await {
            Ok(pair) => pair,
            Err(etcd_client::Error::LeaseKeepAliveError(_)) => {
                return Err(Error::LeaseNotFound(id));
            }
            Err(e) => return Err(self.map_err(e, 0, id).await),
        };
        keeper.keep_alive().await?;
        match stream.message().await? {
            Some(resp) if resp.ttl() > 0 => Ok(Lease {
                id: resp.id(),
                ttl: resp.ttl(),
            }),
            Some(_) => Err(Error::LeaseNotFound(id)),
            None => Err(Error::Internal(format!(
                "lease {id:x} keep-alive stream ended unanswered"
            ))),
        }
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn lease_time_to_live(&self, id: i64, keys: bool) -> Result<LeaseStatus> {
        let options = keys.then(|| LeaseTimeToLiveOptions::new().with_keys());
        match self
            .client()?
            .lease_client()
            .time_to_live(id, options)
            .await
        {
            Ok(resp) if resp.ttl() < 0 => Ok(LeaseStatus {
                id,
                ttl: -1,
                granted_ttl: 0,
                keys: Vec::new(),
            }),
            Ok(resp) => Ok(LeaseStatus {
                id: resp.id(),
                ttl: resp.ttl(),
                granted_ttl: resp.granted_ttl(),
                keys: resp.keys().to_vec(),
            }),
            Err(e) if grpc_message(&e).is_some_and(|m| m.contains(ERR_LEASE_NOT_FOUND)) => {
                Ok(LeaseStatus {
                    id,
                    ttl: -1,
                    granted_ttl: 0,
                    keys: Vec::new(),
                })
            }
            Err(e) => Err(e.into()),
        }
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn leases(&self) -> Result<Vec<i64>> {
        let resp = self.client()?.lease_client().leases().await?;
        Ok(resp.leases().iter().map(|l| l.id()).collect())
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn status(&self) -> Result<Status> {
        let status = self.client()?.maintenance_client().status().await?;
        let compact_revision = match self.compact_revision().await {
            Ok(rev) => rev,
            Err(e) => {
                tracing::debug!(error = %e, "cannot find the compact revision");
                self.compacted.load(Ordering::Relaxed)
            }
        };
        Ok(Status {
            backend: "etcd",
            version: status.version().to_string(),
            revision: header_revision(status.header()),
            compact_revision,
            db_size: status.db_size(),
        })
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn close(&self) {
        self.shutdown.send_replace(true);
        let client = self
            .client
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        drop(client);
    }
}

// ---------------------------------------------------------------------------------------------
// Connecting.

/// TLS settings from the configured files, for `https` endpoints.
async fn tls_options(endpoints: &[String], config: &crate::Config) -> Result<Option<TlsOptions>> {
    let files = [
        &config.datastore_cafile,
        &config.datastore_certfile,
        &config.datastore_keyfile,
    ];
    let https = endpoints.iter().any(|e| e.starts_with("https://"));
    if !https {
        if files.iter().any(|f| f.is_some()) {
            return Err(Error::InvalidRequest(
                "datastore-cafile/certfile/keyfile: TLS files need https:// etcd endpoints".into(),
            ));
        }
        return Ok(None);
    }
    if endpoints.iter().any(|e| !e.starts_with("https://")) {
        return Err(Error::InvalidRequest(
            "etcd endpoints mix http:// and https://: use one scheme".into(),
        ));
    }
    let mut tls = TlsOptions::new();
    if let Some(ca) = &config.datastore_cafile {
        tls = tls.ca_certificate(Certificate::from_pem(
            read_tls_file(ca, "datastore-cafile").await?,
        ));
    }
    if let (Some(cert), Some(key)) = (&config.datastore_certfile, &config.datastore_keyfile) {
        let cert = read_tls_file(cert, "datastore-certfile").await?;
        let key = read_tls_file(key, "datastore-keyfile").await?;
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Ok(Some(tls))
}

async fn read_tls_file(path: &Path, flag: &str) -> Result<Vec<u8>> {
    tokio::fs::read(path)
        .await
        .map_err(|e| Error::InvalidRequest(format!("{flag} {}: cannot read: {e}", path.display())))
}

/// Checks that at least one endpoint accepts TCP connections, for a clear error when none
/// does (the etcd client would only time out).
async fn probe_tcp(endpoints: &[String]) -> std::result::Result<(), String> {
    let mut errors = Vec::new();
    for endpoint in endpoints {
        let addr = match url::Url::parse(endpoint) {
            Ok(url) => match (url.host_str(), url.port_or_known_default()) {
                (Some(host), Some(port)) => format!("{}:{port}", host.trim_matches(['[', ']'])),
                _ => {
                    errors.push(format!("{endpoint}: no host and port"));
                    continue;
                }
            },
            Err(e) => {
                errors.push(format!("{endpoint}: {e}"));
                continue;
            }
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(&addr)).await {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(e)) => errors.push(format!("{endpoint}: {e}")),
            Err(_) => errors.push(format!("{endpoint}: no answer within {CONNECT_TIMEOUT:?}")),
        }
    }
    Err(errors.join("; "))
}

// ---------------------------------------------------------------------------------------------
// Conversions.

fn show(key: &[u8]) -> Cow<'_, str> {
    String::from_utf8_lossy(key)
}

/// The key a transaction is mostly about, for its span: the first compared or written key.
fn txn_key(req: &TxnRequest) -> Cow<'_, str> {
    let first_op = req
        .success
        .iter()
        .chain(&req.failure)
        .next()
        .map(|op| match op {
            TxnOp::Range(r) => &r.key,
            TxnOp::Put(p) => &p.key,
            TxnOp::Delete(d) => &d.key,
        });
    req.compare
        .first()
        .map(|c| &c.key)
        .or(first_op)
        .map_or(Cow::Borrowed(""), |k| show(k))
}

fn is_invalid_argument(err: &etcd_client::Error) -> bool {
    matches!(err, etcd_client::Error::GRpcStatus(status) if status.code() == tonic::Code::InvalidArgument)
}

fn grpc_message(err: &etcd_client::Error) -> Option<&str> {
    match err {
        etcd_client::Error::GRpcStatus(status) => Some(status.message()),
        _ => None,
    }
}

fn header_revision(header: Option<&etcd_client::ResponseHeader>) -> i64 {
    header.map_or(0, |h| h.revision())
}

/// etcd refuses an empty key; for a range, "from the empty key" is "from `\0`".
fn etcd_key(key: &[u8], range_end: &RangeEnd) -> Vec<u8> {
    if key.is_empty() && *range_end != RangeEnd::Single {
        vec![0]
    } else {
        key.to_vec()
    }
}

fn get_options(req: &RangeRequest) -> GetOptions {
    let mut options = GetOptions::new()
        .with_limit(req.limit)
        .with_revision(req.revision);
    if req.range_end != RangeEnd::Single {
        options = options.with_range(req.range_end.to_etcd());
    }
    if req.keys_only {
        options = options.with_keys_only();
    }
    if req.count_only {
        options = options.with_count_only();
    }
    options
}

fn kv_from_etcd(kv: etcd_client::KeyValue) -> KeyValue {
    let (create_revision, mod_revision, version, lease) = (
        kv.create_revision(),
        kv.mod_revision(),
        kv.version(),
        kv.lease(),
    );
    let (key, value) = kv.into_key_value();
    KeyValue {
        key,
        create_revision,
        mod_revision,
        version,
        value,
        lease,
    }
}

fn kv_ref_from_etcd(kv: &etcd_client::KeyValue) -> KeyValue {
    KeyValue {
        key: kv.key().to_vec(),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
        version: kv.version(),
        value: kv.value().to_vec(),
        lease: kv.lease(),
    }
}

fn compare_to_etcd(c: &Compare) -> etcd_client::Compare {
    use etcd_client::CompareOp as Op;
    let op = match c.op {
        CompareOp::Equal => Op::Equal,
        CompareOp::NotEqual => Op::NotEqual,
        CompareOp::Greater => Op::Greater,
        CompareOp::Less => Op::Less,
    };
    let key = c.key.clone();
    match &c.target {
        CompareTarget::Version(v) => etcd_client::Compare::version(key, op, *v),
        CompareTarget::CreateRevision(r) => etcd_client::Compare::create_revision(key, op, *r),
        CompareTarget::ModRevision(r) => etcd_client::Compare::mod_revision(key, op, *r),
        CompareTarget::Value(v) => etcd_client::Compare::value(key, op, v.clone()),
        CompareTarget::Lease(l) => etcd_client::Compare::lease(key, op, *l),
    }
}

fn op_to_etcd(op: &TxnOp) -> etcd_client::TxnOp {
    match op {
        TxnOp::Range(r) => {
            etcd_client::TxnOp::get(etcd_key(&r.key, &r.range_end), Some(get_options(r)))
        }
        TxnOp::Put(p) => {
            etcd_client::TxnOp::put(p.key.clone(), p.value.clone(), Some(put_options(p)))
        }
        TxnOp::Delete(d) => {
            etcd_client::TxnOp::delete(etcd_key(&d.key, &d.range_end), Some(delete_options(d)))
        }
    }
}

fn put_options(p: &PutRequest) -> PutOptions {
    let mut options = PutOptions::new().with_lease(p.lease);
    if p.prev_kv {
        options = options.with_prev_key();
    }
    if p.ignore_value {
        options = options.with_ignore_value();
    }
    if p.ignore_lease {
        options = options.with_ignore_lease();
    }
    options
}

fn delete_options(d: &DeleteRequest) -> DeleteOptions {
    let mut options = DeleteOptions::new();
    if d.range_end != RangeEnd::Single {
        options = options.with_range(d.range_end.to_etcd());
    }
    if d.prev_kv {
        options = options.with_prev_key();
    }
    options
}

/// One response of a transaction; reads report the transaction's revision.
fn op_response_from_etcd(op: etcd_client::TxnOpResponse, revision: i64) -> Result<TxnOpResponse> {
    Ok(match op {
        etcd_client::TxnOpResponse::Get(mut get) => TxnOpResponse::Range(RangeResponse {
            revision,
            more: get.more(),
            count: get.count(),
            kvs: get.take_kvs().into_iter().map(kv_from_etcd).collect(),
        }),
        etcd_client::TxnOpResponse::Put(mut put) => TxnOpResponse::Put(PutResponse {
            prev_kv: put.take_prev_key().map(kv_from_etcd),
        }),
        etcd_client::TxnOpResponse::Delete(mut delete) => TxnOpResponse::Delete(DeleteResponse {
            deleted: delete.deleted(),
            prev_kvs: delete
                .take_prev_kvs()
                .into_iter()
                .map(kv_from_etcd)
                .collect(),
        }),
        etcd_client::TxnOpResponse::Txn(_) => {
            return Err(Error::Internal(
                "etcd answered a nested transaction we did not send".into(),
            ));
        }
    })
}

fn event_from_etcd(event: &etcd_client::Event) -> Event {
    let kind = match event.event_type() {
        EventType::Put => EventKind::Put,
        EventType::Delete => EventKind::Delete,
    };
    Event {
        kind,
        kv: event.kv().map(kv_ref_from_etcd).unwrap_or_default(),
        prev_kv: event.prev_kv().map(kv_ref_from_etcd),
    }
}

// ---------------------------------------------------------------------------------------------
// Watches.

/// Where an outstanding progress request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProgressState {
    /// None asked for.
    Idle,
    /// The consumer asked; a progress request is out to etcd.
    Asked,
    /// etcd answered with this revision; a second request is out to make sure every event
    /// up to it has arrived first.
    Confirming(i64),
}

/// Why [`WatchTask::serve`] returned.
enum Ended {
    /// The watch is over: consumer gone, store closed, compacted or refused.
    Done,
    /// The stream broke; re-open it.
    Broken(String),
}

/// The task behind one [`Watch`]: one etcd watch stream, re-opened when it breaks.
struct WatchTask {
    client: Client,
    endpoint: String,
    key: Vec<u8>,
    range_end: Vec<u8>,
    prev_kv: bool,
    /// The first revision not delivered yet.
    next_rev: i64,
    /// The highest revision reported to the consumer.
    last_rev: i64,
    sender: WatchSender,
    shutdown: signal::Receiver<bool>,
    progress: ProgressState,
    /// When to repeat a progress request that etcd answered before the watcher was in sync.
    resend_at: Option<Instant>,
}

impl WatchTask {
    async fn run(mut self) {
        let mut failing_since: Option<Instant> = None;
        let mut backoff = WATCH_BACKOFF_MIN;
        loop {
            if *self.shutdown.borrow() || self.sender.tx.is_closed() {
                return;
            }
            let problem = match self.open().await {
                Ok(Some((stream, created_rev, watch_id))) => {
                    failing_since = None;
                    backoff = WATCH_BACKOFF_MIN;
                    match self.serve(stream, created_rev, watch_id).await {
                        Ended::Done => return,
                        Ended::Broken(problem) => problem,
                    }
                }
                Ok(None) => return,
                Err(e) => e.to_string(),
            };
            let since = *failing_since.get_or_insert_with(Instant::now);
            tracing::debug!(problem = %problem, next_rev = self.next_rev, "etcd watch broke; re-opening");
            if since.elapsed() >= WATCH_GIVE_UP {
                let err = Error::Connect {
                    endpoint: self.endpoint.clone(),
                    source: format!("watch lost for {WATCH_GIVE_UP:?}: {problem}").into(),
                };
                let _ = self.sender.tx.send(Err(err)).await;
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = self.shutdown.changed() => return,
                _ = self.sender.tx.closed() => return,
            }
            backoff = (backoff * 2).min(WATCH_BACKOFF_MAX);
        }
    }

    /// Opens the etcd watch from `next_rev` and reads its "created" answer. `Ok(None)` when the
    /// watch is over (compacted or refused; the consumer has been told).
    async fn open(&mut self) -> Result<Option<(WatchStream, i64, i64)>, etcd_client::Error> {
        let mut options = WatchOptions::new().with_start_revision(self.next_rev);
        if !self.range_end.is_empty() {
            options = options.with_range(self.range_end.clone());
        }
        if self.prev_kv {
            options = options.with_prev_key();
        }
        let mut client = self
            .client
            .watch_client()
            .max_decoding_message_size(MAX_MESSAGE);
        let key = self.key.clone();
        let opening = async move {
            let mut stream = client.watch(key, Some(options)).await?;
            let created = stream.message().await?;
            Ok::<_, etcd_client::Error>((stream, created))
        };
        let mut shutdown = self.shutdown.clone();
        let tx = self.sender.tx.clone();
        let (stream, created) = tokio::select! {
            opened = tokio::time::timeout(CONNECT_TIMEOUT, opening) => match opened {
                Ok(opened) => opened?,
                Err(_) => {
                    return Err(etcd_client::Error::WatchError(format!(
                        "no answer to the watch request within {CONNECT_TIMEOUT:?}"
                    )));
                }
            },
            _ = shutdown.changed() => return Ok(None),
            _ = tx.closed() => return Ok(None),
        };
        let Some(created) = created else {
            return Err(etcd_client::Error::WatchError(
                "watch stream ended before it was created".into(),
            ));
        };
        if created.compact_revision() > 0 {
            let compact_revision = created.compact_revision();
            let _ = self
                .sender
                .tx
                .send(Ok(WatchResponse::Compacted { compact_revision }))
                .await;
            return Ok(None);
        }
        if created.canceled() {
            let reason = created.cancel_reason().to_string();
            let _ = self
                .sender
                .tx
                .send(Err(Error::InvalidRequest(format!(
                    "watch refused: {reason}"
                ))))
                .await;
            return Ok(None);
        }
        let created_rev = header_revision(created.header());
        Ok(Some((stream, created_rev, created.watch_id())))
    }

    /// Forwards what the open stream says until it breaks or the watch is over.
    async fn serve(&mut self, mut stream: WatchStream, created_rev: i64, watch_id: i64) -> Ended {
        let mut sync = SyncState {
            created_rev,
            created_at: Instant::now(),
            // A watcher that starts in the past catches up before it is in sync with the store.
            synced: self.next_rev > created_rev,
        };
        self.resend_at = None;
        if self.progress != ProgressState::Idle {
            // A request was out on the broken stream: ask again on this one.
            self.progress = ProgressState::Asked;
            if let Err(e) = stream.request_progress().await {
                return Ended::Broken(e.to_string());
            }
        }
        loop {
            let resend_at = self.resend_at;
            let idle = self.progress == ProgressState::Idle;
            let ask = tokio::select! {
                _ = self.shutdown.changed() => return Ended::Done,
                _ = self.sender.tx.closed() => {
                    let _ = stream.cancel(watch_id).await;
                    return Ended::Done;
                }
                Some(()) = self.sender.progress.recv(), if idle => {
                    // Requests already queued are answered by this round too.
                    while self.sender.progress.try_recv().is_ok() {}
                    self.progress = ProgressState::Asked;
                    true
                }
                _ = sleep_until_some(resend_at), if resend_at.is_some() => {
                    self.resend_at = None;
                    true
                }
                msg = stream.message() => match msg {
                    Ok(Some(resp)) => match self.forward(resp, &mut sync).await {
                        Forwarded::Continue => false,
                        Forwarded::AskProgress => true,
                        Forwarded::Done => return Ended::Done,
                    },
                    Ok(None) => return Ended::Broken("etcd closed the watch stream".into()),
                    Err(e) => return Ended::Broken(e.to_string()),
                },
            };
            if ask && let Err(e) = stream.request_progress().await {
                return Ended::Broken(e.to_string());
            }
        }
    }

    /// Passes one etcd watch response on to the consumer.
    async fn forward(
        &mut self,
        resp: etcd_client::WatchResponse,
        sync: &mut SyncState,
    ) -> Forwarded {
        if resp.compact_revision() > 0 {
            let compact_revision = resp.compact_revision();
            let _ = self
                .sender
                .tx
                .send(Ok(WatchResponse::Compacted { compact_revision }))
                .await;
            return Forwarded::Done;
        }
        if resp.canceled() {
            let reason = resp.cancel_reason().to_string();
            let err = Error::Internal(format!("etcd canceled the watch: {reason}"));
            let _ = self.sender.tx.send(Err(err)).await;
            return Forwarded::Done;
        }
        if resp.created() {
            return Forwarded::Continue;
        }
        let header_rev = header_revision(resp.header());
        if resp.events().is_empty() {
            let synced = sync.synced || sync.created_at.elapsed() >= WATCH_SYNC_GRACE;
            return match self.on_progress(header_rev, synced, sync.created_at) {
                Some(Action::Ask) => Forwarded::AskProgress,
                Some(Action::Report(revision)) => {
                    let progress = WatchResponse::Progress { revision };
                    match self.sender.tx.send(Ok(progress)).await {
                        Ok(()) => Forwarded::Continue,
                        Err(_) => Forwarded::Done,
                    }
                }
                None => Forwarded::Continue,
            };
        }
        let events: Vec<Event> = resp.events().iter().map(event_from_etcd).collect();
        let mut revs = events.iter().map(|e| e.kv.mod_revision).collect::<Vec<_>>();
        revs.dedup();
        let last_event_rev = revs.iter().copied().max().unwrap_or_default();
        // A catch-up batch carries the store's revision in its header; etcd splits catch-ups
        // into batches of at most ETCD_WATCH_BATCH_REVS revisions, so a smaller batch at or
        // past the creation revision means the watcher is in sync.
        if header_rev >= sync.created_rev && revs.len() < ETCD_WATCH_BATCH_REVS {
            sync.synced = true;
        }
        let revision = header_rev.max(last_event_rev).max(self.last_rev);
        self.next_rev = self.next_rev.max(last_event_rev + 1);
        self.last_rev = revision;
        match self
            .sender
            .tx
            .send(Ok(WatchResponse::Events { revision, events }))
            .await
        {
            Ok(()) => Forwarded::Continue,
            Err(_) => Forwarded::Done,
        }
    }

    /// What to do about a progress answer from etcd at `revision`.
    fn on_progress(&mut self, revision: i64, synced: bool, created_at: Instant) -> Option<Action> {
        match self.progress {
            // Nobody asked (etcd sends none unasked, but be safe).
            ProgressState::Idle => None,
            ProgressState::Asked if synced => {
                self.progress = ProgressState::Confirming(revision);
                Some(Action::Ask)
            }
            ProgressState::Asked => {
                // Still catching up: ask again once the watcher has had time to get in sync.
                self.resend_at = Some(created_at + WATCH_SYNC_GRACE);
                None
            }
            ProgressState::Confirming(first) => {
                // Everything etcd had queued when it answered the first request has arrived.
                self.progress = ProgressState::Idle;
                let revision = first.max(self.last_rev);
                self.last_rev = revision;
                self.next_rev = self.next_rev.max(first + 1);
                Some(Action::Report(revision))
            }
        }
    }
}

/// Whether the watcher of the current stream has caught up with the store.
struct SyncState {
    /// The store's revision when the watch was created.
    created_rev: i64,
    created_at: Instant,
    synced: bool,
}

/// What [`WatchTask::forward`] did.
enum Forwarded {
    Continue,
    /// Send etcd a progress request.
    AskProgress,
    /// The watch is over.
    Done,
}

enum Action {
    /// Send etcd another progress request.
    Ask,
    /// Tell the consumer everything up to this revision has been delivered.
    Report(i64),
}

async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
