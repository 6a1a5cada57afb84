//! The datastore benchmark: `cargo xtask bench datastore [args]`, or
//! `cargo bench -p rk3s-datastore --bench datastore -- [--quick] [--backends LIST]`.
//!
//! Two tables, printed to stdout once everything has run (progress goes to stderr):
//!
//! 1. Each backend through [`rk3s_datastore::Store`] in this process: SQLite (a file in a temp
//!    dir), Postgres and MariaDB (fresh databases on the machine's servers, dropped afterwards)
//!    and etcd (a throwaway `etcd` process, through rk3s's etcd backend).
//! 2. The etcd v3 endpoint: [`rk3s_datastore::server::serve`] over a SQLite store against a real
//!    etcd 3.4, both driven by the same load generator through the `etcd-client` crate, with the
//!    ratio rk3s/etcd.
//!
//! Every target runs the same suite ([`run_suite`], generic over [`Target`]; every throughput
//! figure comes from one load loop, [`drive`]). Values are 1 KiB.
//! - writes/s, 1 and 16 clients: writes of distinct new keys (`Store::create` on the backends, a
//!   plain put through etcd-client), a fixed number of operations shared by the clients; the
//!   rate is operations / wall time from the first call to the last acknowledgement.
//! - reads/s, 16 clients: single-key gets of existing keys chosen pseudo-randomly.
//! - list: the time to read a prefix holding every key written above (10,000 keys of 1 KiB in
//!   the full run), values included; the median of a few runs.
//! - watch latency: a watcher on a fresh prefix, one writer writing a new key every 2 ms (or as
//!   soon as the previous write is acknowledged, if that takes longer). The latency of a write is
//!   from the instant just before the write call to the instant the watcher receives the event
//!   carrying it; p50 and p99 (nearest rank) over all the writes.
//!
//! A backend that cannot be reached or started is reported as `skipped: <reason>`; a phase that
//! fails or takes too long is reported as `error: <reason>`; neither stops the others.

use std::future::Future;
use std::io::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use async_trait::async_trait;
use rk3s_datastore::testing::{self, EtcdProcess};
use rk3s_datastore::{Config, ListOptions, Store, WatchResponse, WriteOutcome};
use tokio::task::JoinSet;

/// Concurrent clients of the concurrent phases.
const CLIENTS: usize = 16;
/// Size of every value written.
const VALUE_SIZE: usize = 1024;
/// Longest any one phase may take before it is reported as an error.
const PHASE_TIMEOUT: Duration = Duration::from_secs(300);
/// Longest a connection or a server start may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the watcher may lag behind the last write before missing events count as lost.
const WATCH_GRACE: Duration = Duration::from_secs(10);
/// etcd-client refuses responses over 4 MiB by default; a list of 10,000 1 KiB keys is ~11 MiB.
const MAX_MESSAGE: usize = 256 * 1024 * 1024;

const KV_PREFIX: &str = "/bench/kv/";
const WARMUP_PREFIX: &str = "/bench/warmup/";
const WATCH_PREFIX: &str = "/bench/watch/";
const WATCH_READY_KEY: &str = "/bench/watch/ready";

#[tokio::main(flavor = "multi_thread")]
async fn main() -> std::process::ExitCode {
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let args = match Args::parse(std::env::args().skip(1)) {
        Ok(Some(args)) => args,
        Ok(None) => {
            let _ = writeln!(std::io::stdout(), "{USAGE}");
            return std::process::ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("error: {e:#}\n\n{USAGE}");
            return std::process::ExitCode::from(2);
        }
    };
    let counts = if args.quick {
        Counts::QUICK
    } else {
        Counts::FULL
    };
    let started = Instant::now();
    let load_before = load_average();
    let mut sections = Vec::new();
    let mut comparison = None;
    for which in &args.backends {
        match which {
            Which::Endpoint => comparison = Some(run_endpoint_comparison(&counts).await),
            backend => sections.push(run_backend(*backend, &counts).await),
        }
    }
    // A closed stdout (`| head`) is not worth a panic.
    let _ = write!(
        std::io::stdout(),
        "{}",
        report(
            &load_before,
            &args,
            &counts,
            &sections,
            comparison.as_ref(),
            started.elapsed()
        )
    );
    std::process::ExitCode::SUCCESS
}

const USAGE: &str = "\
usage: cargo bench -p rk3s-datastore --bench datastore -- [--quick] [--backends LIST]

  --quick            about a tenth of the operations, for a fast look
  --backends LIST    comma-separated, in the order to run: sqlite, postgres, mysql (or
                     mariadb), etcd, endpoint (rk3s's etcd v3 endpoint against real etcd);
                     default: all of them";

// ---------------------------------------------------------------------------------------------
// Arguments and sizes

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Which {
    Sqlite,
    Postgres,
    Mysql,
    Etcd,
    Endpoint,
}

impl Which {
    const ALL: [Which; 5] = [
        Which::Sqlite,
        Which::Postgres,
        Which::Mysql,
        Which::Etcd,
        Which::Endpoint,
    ];

    fn parse(name: &str) -> anyhow::Result<Which> {
        Ok(match name.trim().to_ascii_lowercase().as_str() {
            "sqlite" => Which::Sqlite,
            "postgres" | "postgresql" | "pg" => Which::Postgres,
            "mysql" | "mariadb" => Which::Mysql,
            "etcd" => Which::Etcd,
            "endpoint" | "server" => Which::Endpoint,
            other => bail!("unknown backend {other:?}"),
        })
    }

    fn name(self) -> &'static str {
        match self {
            Which::Sqlite => "sqlite",
            Which::Postgres => "postgres",
            Which::Mysql => "mysql",
            Which::Etcd => "etcd",
            Which::Endpoint => "endpoint",
        }
    }
}

#[derive(Debug)]
struct Args {
    quick: bool,
    backends: Vec<Which>,
}

impl Args {
    /// `Ok(None)` for `--help`.
    fn parse(args: impl IntoIterator<Item = String>) -> anyhow::Result<Option<Args>> {
        let mut quick = false;
        let mut backends = None;
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let list = match arg.as_str() {
                // `cargo bench` passes `--bench` to every bench target.
                "--bench" => continue,
                "--quick" => {
                    quick = true;
                    continue;
                }
                "-h" | "--help" => return Ok(None),
                "--backends" => args.next().context("--backends needs a list")?,
                other => match other.strip_prefix("--backends=") {
                    Some(list) => list.to_string(),
                    None => bail!("unknown argument {other:?}"),
                },
            };
            let mut chosen: Vec<Which> = Vec::new();
            for name in list.split(',').filter(|s| !s.trim().is_empty()) {
                let which = Which::parse(name)?;
                if !chosen.contains(&which) {
                    chosen.push(which);
                }
            }
            if chosen.is_empty() {
                bail!("--backends needs at least one backend");
            }
            backends = Some(chosen);
        }
        Ok(Some(Args {
            quick,
            backends: backends.unwrap_or_else(|| Which::ALL.to_vec()),
        }))
    }
}

/// How much work each phase does.
#[derive(Debug, Clone)]
struct Counts {
    label: &'static str,
    writes_1: usize,
    writes_16: usize,
    reads_16: usize,
    list_runs: usize,
    watch_writes: usize,
    watch_pace: Duration,
    warmup: usize,
}

impl Counts {
    /// The full run: the two write phases leave exactly 10,000 keys for the list.
    const FULL: Counts = Counts {
        label: "full",
        writes_1: 2000,
        writes_16: 8000,
        reads_16: 20_000,
        list_runs: 5,
        watch_writes: 1000,
        watch_pace: Duration::from_millis(2),
        warmup: 200,
    };
    const QUICK: Counts = Counts {
        label: "quick",
        writes_1: 200,
        writes_16: 800,
        reads_16: 2000,
        list_runs: 3,
        watch_writes: 200,
        watch_pace: Duration::from_millis(2),
        warmup: 50,
    };

    fn list_keys(&self) -> usize {
        self.writes_1 + self.writes_16
    }
}

// ---------------------------------------------------------------------------------------------
// What is driven: a store in this process, or an etcd v3 server through etcd-client

/// One client of the system under test. The suite only ever talks to it through this trait.
#[async_trait]
trait Target: Send + Sync + Sized + 'static {
    /// What a write is called in the details column.
    fn write_op(&self) -> &'static str;
    /// Another client of the same system (a handle clone, or a new connection).
    async fn client(&self) -> anyhow::Result<Self>;
    /// Writes a key that does not exist yet.
    async fn write(&self, key: Vec<u8>, value: Vec<u8>) -> anyhow::Result<()>;
    /// Reads one key, which must exist.
    async fn read(&self, key: Vec<u8>) -> anyhow::Result<()>;
    /// Reads every key (with values) under a prefix; returns how many there were.
    async fn list(&self, prefix: Vec<u8>) -> anyhow::Result<usize>;
    /// The current revision.
    async fn revision(&self) -> anyhow::Result<i64>;
    /// Watches a prefix from a revision.
    async fn watch(&self, prefix: Vec<u8>, start_revision: i64) -> anyhow::Result<Box<dyn Events>>;
}

/// The receiving end of a watch, reduced to what the latency measure needs.
#[async_trait]
trait Events: Send {
    /// The keys of the next response's events (possibly none); `None` once the watch ended.
    async fn next_keys(&mut self) -> anyhow::Result<Option<Vec<Vec<u8>>>>;
}

/// A backend through the `Store` API, as the rest of rk3s uses it.
#[derive(Debug, Clone)]
struct StoreTarget(Store);

#[async_trait]
impl Target for StoreTarget {
    fn write_op(&self) -> &'static str {
        "creates"
    }

    async fn client(&self) -> anyhow::Result<Self> {
        Ok(self.clone())
    }

    async fn write(&self, key: Vec<u8>, value: Vec<u8>) -> anyhow::Result<()> {
        match self.0.create(&key, value, 0).await? {
            WriteOutcome::Written { .. } => Ok(()),
            WriteOutcome::Conflict { .. } => {
                bail!(
                    "create of {} conflicted: the key exists",
                    String::from_utf8_lossy(&key)
                )
            }
        }
    }

    async fn read(&self, key: Vec<u8>) -> anyhow::Result<()> {
        match self.0.get(&key, 0).await? {
            (_, Some(_)) => Ok(()),
            (_, None) => bail!("key {} is missing", String::from_utf8_lossy(&key)),
        }
    }

    async fn list(&self, prefix: Vec<u8>) -> anyhow::Result<usize> {
        Ok(self
            .0
            .list(&prefix, ListOptions::default())
            .await?
            .kvs
            .len())
    }

    async fn revision(&self) -> anyhow::Result<i64> {
        Ok(self.0.current_revision().await?)
    }

    async fn watch(&self, prefix: Vec<u8>, start_revision: i64) -> anyhow::Result<Box<dyn Events>> {
        Ok(Box::new(
            self.0.watch_prefix(&prefix, start_revision, false).await?,
        ))
    }
}

#[async_trait]
impl Events for rk3s_datastore::Watch {
    async fn next_keys(&mut self) -> anyhow::Result<Option<Vec<Vec<u8>>>> {
        match self.next().await {
            None => Ok(None),
            Some(Err(e)) => Err(e.into()),
            Some(Ok(WatchResponse::Events { events, .. })) => {
                Ok(Some(events.into_iter().map(|e| e.kv.key).collect()))
            }
            Some(Ok(WatchResponse::Progress { .. })) => Ok(Some(Vec::new())),
            Some(Ok(WatchResponse::Compacted { compact_revision })) => {
                bail!("watch compacted at revision {compact_revision}")
            }
        }
    }
}

/// An etcd v3 server (real etcd, or rk3s's endpoint) through the `etcd-client` crate; each
/// client has its own connection.
#[derive(Clone)]
struct EtcdTarget {
    endpoint: String,
    kv: etcd_client::KvClient,
    watch: etcd_client::WatchClient,
    maintenance: etcd_client::MaintenanceClient,
}

impl EtcdTarget {
    async fn connect(endpoint: &str) -> anyhow::Result<EtcdTarget> {
        let options = etcd_client::ConnectOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_timeout(PHASE_TIMEOUT);
        let client = etcd_client::Client::connect([endpoint], Some(options))
            .await
            .with_context(|| format!("connecting to {endpoint}"))?;
        Ok(EtcdTarget {
            endpoint: endpoint.to_string(),
            kv: client.kv_client().max_decoding_message_size(MAX_MESSAGE),
            watch: client.watch_client().max_decoding_message_size(MAX_MESSAGE),
            maintenance: client.maintenance_client(),
        })
    }

    /// The server's version, from the Maintenance Status call.
    async fn version(&self) -> String {
        match self.maintenance.clone().status().await {
            Ok(status) => status.version().to_string(),
            Err(e) => format!("unknown (status failed: {e})"),
        }
    }
}

#[async_trait]
impl Target for EtcdTarget {
    fn write_op(&self) -> &'static str {
        "puts"
    }

    async fn client(&self) -> anyhow::Result<Self> {
        EtcdTarget::connect(&self.endpoint).await
    }

    async fn write(&self, key: Vec<u8>, value: Vec<u8>) -> anyhow::Result<()> {
        self.kv.clone().put(key, value, None).await?;
        Ok(())
    }

    async fn read(&self, key: Vec<u8>) -> anyhow::Result<()> {
        let resp = self.kv.clone().get(key.clone(), None).await?;
        if resp.kvs().is_empty() {
            bail!("key {} is missing", String::from_utf8_lossy(&key));
        }
        Ok(())
    }

    async fn list(&self, prefix: Vec<u8>) -> anyhow::Result<usize> {
        let options = etcd_client::GetOptions::new().with_prefix();
        Ok(self
            .kv
            .clone()
            .get(prefix, Some(options))
            .await?
            .kvs()
            .len())
    }

    async fn revision(&self) -> anyhow::Result<i64> {
        let resp = self.kv.clone().get(vec![0], None).await?;
        resp.header()
            .map(|h| h.revision())
            .context("range response without a header")
    }

    async fn watch(&self, prefix: Vec<u8>, start_revision: i64) -> anyhow::Result<Box<dyn Events>> {
        let options = etcd_client::WatchOptions::new()
            .with_prefix()
            .with_start_revision(start_revision);
        Ok(Box::new(
            self.watch.clone().watch(prefix, Some(options)).await?,
        ))
    }
}

#[async_trait]
impl Events for etcd_client::WatchStream {
    async fn next_keys(&mut self) -> anyhow::Result<Option<Vec<Vec<u8>>>> {
        let Some(resp) = self.message().await? else {
            return Ok(None);
        };
        if resp.canceled() {
            bail!(
                "watch canceled (compact revision {}): {}",
                resp.compact_revision(),
                resp.cancel_reason()
            );
        }
        Ok(Some(
            resp.events()
                .iter()
                .filter_map(|e| e.kv().map(|kv| kv.key().to_vec()))
                .collect(),
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// The load generator and the suite

/// `ops` operations shared by the clients: each client runs one operation at a time, taking the
/// next index until none is left. Returns the wall time from start to the last completion.
async fn drive<T, F, Fut>(clients: &[Arc<T>], ops: usize, op: F) -> anyhow::Result<Duration>
where
    T: Send + Sync + 'static,
    F: Fn(Arc<T>, usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let op = Arc::new(op);
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = JoinSet::new();
    let start = Instant::now();
    for client in clients {
        let (client, op, next) = (client.clone(), op.clone(), next.clone());
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= ops {
                    return anyhow::Ok(());
                }
                op(client.clone(), i)
                    .await
                    .with_context(|| format!("operation #{i}"))?;
            }
        });
    }
    // The first failure ends the phase; dropping the set aborts the other clients.
    while let Some(joined) = tasks.join_next().await {
        joined.context("a load task panicked")??;
    }
    Ok(start.elapsed())
}

/// Runs `fut`, failing if it takes longer than `limit`.
async fn within<T>(
    limit: Duration,
    what: &str,
    fut: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    tokio::time::timeout(limit, fut)
        .await
        .map_err(|_| anyhow!("{what} did not finish within {} s", limit.as_secs()))?
}

/// Which way a figure is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unit {
    /// Operations per second: higher is better.
    PerSec,
    /// A time: lower is better.
    Millis,
}

#[derive(Debug, Clone)]
struct Figure {
    value: f64,
    unit: Unit,
    detail: String,
}

impl Figure {
    fn rate(ops: usize, elapsed: Duration, detail: String) -> Figure {
        Figure {
            value: ops as f64 / elapsed.as_secs_f64().max(1e-9),
            unit: Unit::PerSec,
            detail,
        }
    }

    fn time(d: Duration, detail: String) -> Figure {
        Figure {
            value: d.as_secs_f64() * 1000.0,
            unit: Unit::Millis,
            detail,
        }
    }

    fn shown(&self) -> String {
        match self.unit {
            Unit::PerSec => format!("{:.0} /s", self.value),
            Unit::Millis => fmt_ms(self.value),
        }
    }
}

fn fmt_ms(ms: f64) -> String {
    if ms < 10.0 {
        format!("{ms:.2} ms")
    } else if ms < 1000.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{ms:.0} ms")
    }
}

fn fmt_duration(d: Duration) -> String {
    fmt_ms(d.as_secs_f64() * 1000.0)
}

/// One line of a table: a measure and its figure, or why there is none.
#[derive(Debug, Clone)]
struct Row {
    measure: String,
    figure: Result<Figure, String>,
}

fn kv_key(i: usize) -> Vec<u8> {
    format!("{KV_PREFIX}{i:08}").into_bytes()
}

/// A well-mixed function of `i`, so that every target reads the same "random" keys.
fn mix(i: usize) -> u64 {
    let mut z = (i as u64).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A 1 KiB printable value that does not compress to nothing.
fn value() -> Arc<Vec<u8>> {
    Arc::new(
        (0..VALUE_SIZE)
            .map(|i| b'a' + (mix(i) % 26) as u8)
            .collect(),
    )
}

fn measure_names(counts: &Counts) -> [String; 6] {
    [
        "writes/s, 1 client".into(),
        format!("writes/s, {CLIENTS} clients"),
        format!("reads/s, {CLIENTS} clients"),
        format!(
            "list {} keys (median of {})",
            counts.list_keys(),
            counts.list_runs
        ),
        "watch latency p50".into(),
        "watch latency p99".into(),
    ]
}

/// Every row failing for the same reason.
fn failed_rows(counts: &Counts, reason: &str) -> Vec<Row> {
    measure_names(counts)
        .into_iter()
        .map(|measure| Row {
            measure,
            figure: Err(reason.to_string()),
        })
        .collect()
}

/// The whole suite against one target. Progress goes to stderr under `label`.
async fn run_suite<T: Target>(label: &str, target: T, counts: &Counts) -> Vec<Row> {
    let write_op = target.write_op();
    let clients = match within(CONNECT_TIMEOUT, "opening the clients", open_clients(target)).await {
        Ok(clients) => clients,
        Err(e) => {
            return failed_rows(
                counts,
                &format!("error: opening {CLIENTS} clients: {}", chain(&e)),
            );
        }
    };
    let value = value();
    let [m_write1, m_write16, m_read, m_list, m_p50, m_p99] = measure_names(counts);

    progress(label, "warm-up");
    let warmup = {
        let value = value.clone();
        let n = counts.warmup;
        within(
            PHASE_TIMEOUT,
            "the warm-up",
            drive(&clients, n, move |c, i| {
                let value = value.to_vec();
                async move {
                    let key = format!("{WARMUP_PREFIX}{i:08}").into_bytes();
                    c.write(key.clone(), value).await?;
                    c.read(key).await
                }
            }),
        )
        .await
    };
    if let Err(e) = warmup {
        return failed_rows(counts, &format!("error: warm-up failed: {}", chain(&e)));
    }

    progress(label, &m_write1);
    let n1 = counts.writes_1;
    let write1 = within(
        PHASE_TIMEOUT,
        &m_write1,
        write_keys(&clients[..1], 0, n1, value.clone()),
    )
    .await
    .map(|d| Figure::rate(n1, d, format!("{n1} {write_op} in {}", fmt_duration(d))));

    progress(label, &m_write16);
    let n16 = counts.writes_16;
    let write16 = within(
        PHASE_TIMEOUT,
        &m_write16,
        write_keys(&clients, n1, n16, value.clone()),
    )
    .await
    .map(|d| Figure::rate(n16, d, format!("{n16} {write_op} in {}", fmt_duration(d))));

    let total = counts.list_keys();
    let (read, list) = if write1.is_ok() && write16.is_ok() {
        progress(label, &m_read);
        let nr = counts.reads_16;
        let read = within(
            PHASE_TIMEOUT,
            &m_read,
            drive(&clients, nr, move |c, i| async move {
                c.read(kv_key(mix(i) as usize % total)).await
            }),
        )
        .await
        .map(|d| Figure::rate(nr, d, format!("{nr} gets in {}", fmt_duration(d))));

        progress(label, &m_list);
        let list = within(
            PHASE_TIMEOUT,
            &m_list,
            list_median(clients[0].as_ref(), total, counts.list_runs),
        )
        .await;
        (read.map_err(error), list.map_err(error))
    } else {
        let skipped = || Err("skipped: the write phases failed".to_string());
        (skipped(), skipped())
    };

    progress(label, "watch latency");
    let watch = within(
        PHASE_TIMEOUT,
        "the watch phase",
        watch_latency(clients[0].as_ref(), counts),
    )
    .await;
    let (p50, p99) = match watch {
        Ok((p50, p99)) => (Ok(p50), Ok(p99)),
        Err(e) => {
            let reason = error(e);
            (Err(reason.clone()), Err(reason))
        }
    };

    vec![
        Row {
            measure: m_write1,
            figure: write1.map_err(error),
        },
        Row {
            measure: m_write16,
            figure: write16.map_err(error),
        },
        Row {
            measure: m_read,
            figure: read,
        },
        Row {
            measure: m_list,
            figure: list,
        },
        Row {
            measure: m_p50,
            figure: p50,
        },
        Row {
            measure: m_p99,
            figure: p99,
        },
    ]
}

/// Writes keys `first..first + n` of the list prefix.
async fn write_keys<T: Target>(
    clients: &[Arc<T>],
    first: usize,
    n: usize,
    value: Arc<Vec<u8>>,
) -> anyhow::Result<Duration> {
    drive(clients, n, move |c, i| {
        let value = value.to_vec();
        async move { c.write(kv_key(first + i), value).await }
    })
    .await
}

fn error(e: anyhow::Error) -> String {
    format!("error: {}", chain(&e))
}

/// An error and its causes, like `{:#}`, but without a cause whose text its parent already
/// repeats (errors that print their source and also return it from `source()`).
fn chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

fn progress(label: &str, what: &str) {
    eprintln!("[bench {label}] {what}");
}

async fn open_clients<T: Target>(target: T) -> anyhow::Result<Vec<Arc<T>>> {
    let mut clients = Vec::with_capacity(CLIENTS);
    for _ in 1..CLIENTS {
        clients.push(Arc::new(target.client().await?));
    }
    clients.insert(0, Arc::new(target));
    Ok(clients)
}

/// The median time of `runs` reads of the whole key prefix, each checked to hold `expected` keys.
async fn list_median<T: Target>(
    client: &T,
    expected: usize,
    runs: usize,
) -> anyhow::Result<Figure> {
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs.max(1) {
        let start = Instant::now();
        let got = client.list(KV_PREFIX.as_bytes().to_vec()).await?;
        times.push(start.elapsed());
        if got != expected {
            bail!("listed {got} keys, expected {expected}");
        }
    }
    times.sort();
    let median = times[times.len() / 2];
    let all: Vec<String> = times.iter().map(|d| fmt_duration(*d)).collect();
    Ok(Figure::time(median, format!("runs: {}", all.join(", "))))
}

/// Watch latency p50 and p99: see the module documentation for the definition.
async fn watch_latency<T: Target>(client: &T, counts: &Counts) -> anyhow::Result<(Figure, Figure)> {
    let n = counts.watch_writes;
    let start_revision = client.revision().await? + 1;
    let mut events = client
        .watch(WATCH_PREFIX.as_bytes().to_vec(), start_revision)
        .await?;

    // Receive times, by write number; shared so that they survive the watcher being stopped.
    let received: Arc<Mutex<Vec<Option<Instant>>>> = Arc::new(Mutex::new(vec![None; n]));
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
    let watcher = {
        let received = received.clone();
        tokio::spawn(async move {
            let mut ready_tx = Some(ready_tx);
            let mut left = n;
            while left > 0 {
                let Some(keys) = events.next_keys().await? else {
                    bail!("the watch ended with {left} events still to come");
                };
                let now = Instant::now();
                let mut received = received.lock().unwrap_or_else(PoisonError::into_inner);
                for key in keys {
                    if key == WATCH_READY_KEY.as_bytes() {
                        if let Some(tx) = ready_tx.take() {
                            let _ = tx.send(());
                        }
                        continue;
                    }
                    let seq = std::str::from_utf8(&key)
                        .ok()
                        .and_then(|k| k.strip_prefix(WATCH_PREFIX))
                        .and_then(|s| s.parse::<usize>().ok())
                        .filter(|seq| *seq < n)
                        .with_context(|| {
                            format!(
                                "unexpected key {} in the watch",
                                String::from_utf8_lossy(&key)
                            )
                        })?;
                    if received[seq].is_none() {
                        received[seq] = Some(now);
                        left -= 1;
                    }
                }
            }
            anyhow::Ok(())
        })
    };
    let _abort = AbortOnDrop(watcher.abort_handle());

    // One unmeasured write first: once its event arrives, the watch is surely live.
    let value = value();
    client
        .write(WATCH_READY_KEY.as_bytes().to_vec(), value.to_vec())
        .await?;
    tokio::time::timeout(WATCH_GRACE, ready_rx)
        .await
        .map_err(|_| {
            anyhow!(
                "the watcher did not see the first write within {} s",
                WATCH_GRACE.as_secs()
            )
        })?
        .map_err(|_| anyhow!("the watcher stopped before the first write arrived"))?;

    let mut issued = Vec::with_capacity(n);
    let mut tick = tokio::time::interval(counts.watch_pace);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let writing = Instant::now();
    for seq in 0..n {
        tick.tick().await;
        let key = format!("{WATCH_PREFIX}{seq:08}").into_bytes();
        issued.push(Instant::now());
        client
            .write(key, value.to_vec())
            .await
            .with_context(|| format!("watched write #{seq}"))?;
    }
    let write_time = writing.elapsed();

    // A watcher still waiting after the grace time leaves its missing events unset: see below.
    if let Ok(joined) = tokio::time::timeout(WATCH_GRACE, watcher).await {
        joined.context("the watcher panicked")??;
    }
    let received = received
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let mut latencies = Vec::with_capacity(n);
    for (seq, got) in received.iter().enumerate() {
        match got {
            Some(at) => latencies.push(at.saturating_duration_since(issued[seq])),
            None => {
                let missing = received.iter().filter(|r| r.is_none()).count();
                bail!(
                    "{missing} of {n} watch events (first: write #{seq}) did not arrive within {} s of the last write",
                    WATCH_GRACE.as_secs()
                );
            }
        }
    }
    latencies.sort();
    let pct = |p: f64| latencies[((p * n as f64).ceil() as usize).clamp(1, n) - 1];
    let detail = format!(
        "{n} writes in {}, max {}",
        fmt_duration(write_time),
        fmt_duration(latencies[n - 1])
    );
    Ok((
        Figure::time(pct(0.50), detail.clone()),
        Figure::time(pct(0.99), detail),
    ))
}

/// Aborts a spawned task when dropped (the watcher, when the watch phase ends early).
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

// ---------------------------------------------------------------------------------------------
// The backends

/// The result of one backend: its version and rows, or why it was skipped.
#[derive(Debug)]
struct Section {
    name: &'static str,
    setup: String,
    outcome: Result<(String, Vec<Row>), String>,
}

async fn run_backend(which: Which, counts: &Counts) -> Section {
    let name = which.name();
    eprintln!("[bench {name}] starting");
    let (setup, outcome) = match which {
        Which::Sqlite => (
            "a file in a temp dir".to_string(),
            bench_sqlite(counts).await,
        ),
        Which::Postgres => {
            let url = testing::postgres_endpoint("bench");
            let setup = format!("fresh database {}", db_name(&url));
            (setup, bench_sql(name, url, counts).await)
        }
        Which::Mysql => {
            let url = testing::mysql_endpoint("bench");
            let setup = format!("fresh database {}", db_name(&url));
            (setup, bench_sql(name, url, counts).await)
        }
        Which::Etcd => (
            "rk3s etcd backend -> etcd process on loopback".to_string(),
            bench_etcd(counts).await,
        ),
        Which::Endpoint => ("".to_string(), Err("not a Store backend".to_string())),
    };
    Section {
        name,
        setup,
        outcome,
    }
}

/// Connects a store, or says why the backend is skipped.
async fn connect_store(config: &Config) -> Result<Store, String> {
    match tokio::time::timeout(CONNECT_TIMEOUT, rk3s_datastore::connect(config)).await {
        Ok(Ok(store)) => Ok(store),
        Ok(Err(e)) => Err(format!("skipped: {e}")),
        Err(_) => Err(format!(
            "skipped: no connection within {} s",
            CONNECT_TIMEOUT.as_secs()
        )),
    }
}

/// Runs the suite on a connected store and closes it.
async fn bench_store(name: &str, store: Store, counts: &Counts) -> (String, Vec<Row>) {
    let version = match store.status().await {
        Ok(status) => status.version,
        Err(e) => format!("unknown (status failed: {e})"),
    };
    let rows = run_suite(name, StoreTarget(store.clone()), counts).await;
    store.close().await;
    (version, rows)
}

async fn bench_sqlite(counts: &Counts) -> Result<(String, Vec<Row>), String> {
    let dir = tempfile::tempdir().map_err(|e| format!("skipped: temp dir: {e}"))?;
    let config = Config {
        data_dir: dir.path().to_path_buf(),
        datastore_endpoint: Some(format!(
            "sqlite://{}",
            dir.path().join("state.db").display()
        )),
        ..Config::default()
    };
    let store = connect_store(&config).await?;
    Ok(bench_store("sqlite", store, counts).await)
}

async fn bench_sql(name: &str, url: String, counts: &Counts) -> Result<(String, Vec<Row>), String> {
    let store = connect_store(&Config::for_endpoint(url.clone())).await?;
    let result = bench_store(name, store, counts).await;
    if let Err(e) = drop_database(&url).await {
        eprintln!(
            "[bench {name}] warning: could not drop database {}: {}",
            db_name(&url),
            chain(&e)
        );
    }
    Ok(result)
}

async fn bench_etcd(counts: &Counts) -> Result<(String, Vec<Row>), String> {
    let etcd = start_etcd().await?;
    let store = connect_store(&Config::for_endpoint(etcd.endpoint.clone())).await?;
    let result = bench_store("etcd", store, counts).await;
    drop(etcd);
    Ok(result)
}

async fn start_etcd() -> Result<EtcdProcess, String> {
    match tokio::task::spawn_blocking(EtcdProcess::start).await {
        Ok(Ok(etcd)) => Ok(etcd),
        Ok(Err(e)) => Err(format!("skipped: {e}")),
        Err(e) => Err(format!("skipped: starting etcd panicked: {e}")),
    }
}

fn db_name(url: &str) -> &str {
    url.rsplit('/').next().unwrap_or_default()
}

/// Drops the throwaway database the SQL backend created, through the same admin URL the test
/// helpers use.
async fn drop_database(url: &str) -> anyhow::Result<()> {
    use sqlx::Connection as _;
    let db = db_name(url);
    if !db.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        bail!("unexpected database name {db:?}");
    }
    if url.starts_with("postgres") {
        let admin = std::env::var("RK3S_TEST_POSTGRES")
            .unwrap_or_else(|_| testing::DEFAULT_POSTGRES.to_string());
        let mut conn = sqlx::PgConnection::connect(&admin).await?;
        let sql = format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)");
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut conn)
            .await?;
    } else {
        let admin =
            std::env::var("RK3S_TEST_MYSQL").unwrap_or_else(|_| testing::DEFAULT_MYSQL.to_string());
        let mut conn = sqlx::MySqlConnection::connect(&admin).await?;
        let sql = format!("DROP DATABASE IF EXISTS `{db}`");
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut conn)
            .await?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The etcd v3 endpoint against real etcd

#[derive(Debug)]
struct Comparison {
    rk3s: Result<(String, Vec<Row>), String>,
    etcd: Result<(String, Vec<Row>), String>,
}

async fn run_endpoint_comparison(counts: &Counts) -> Comparison {
    eprintln!("[bench endpoint] starting");
    let rk3s = bench_rk3s_endpoint(counts).await;
    let etcd = async {
        let etcd = start_etcd().await?;
        let target = EtcdTarget::connect(&etcd.endpoint)
            .await
            .map_err(|e| format!("skipped: {}", chain(&e)))?;
        let version = target.version().await;
        let rows = run_suite("etcd 3.4 (etcd-client)", target, counts).await;
        drop(etcd);
        Ok((format!("etcd {version}"), rows))
    }
    .await;
    Comparison { rk3s, etcd }
}

async fn bench_rk3s_endpoint(counts: &Counts) -> Result<(String, Vec<Row>), String> {
    let dir = tempfile::tempdir().map_err(|e| format!("skipped: temp dir: {e}"))?;
    let config = Config {
        data_dir: dir.path().to_path_buf(),
        datastore_endpoint: Some(format!(
            "sqlite://{}",
            dir.path().join("state.db").display()
        )),
        ..Config::default()
    };
    let store = connect_store(&config).await?;
    let sqlite_version = match store.status().await {
        Ok(status) => status.version,
        Err(e) => format!("unknown (status failed: {e})"),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("skipped: binding 127.0.0.1:0: {e}"))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("skipped: listener address: {e}"))?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(rk3s_datastore::server::serve(
        store.clone(),
        listener,
        async move {
            let _ = stop_rx.await;
        },
    ));
    let result = async {
        let target = EtcdTarget::connect(&format!("http://{addr}"))
            .await
            .map_err(|e| format!("skipped: {}", chain(&e)))?;
        let version = target.version().await;
        let rows = run_suite("rk3s endpoint (etcd-client)", target, counts).await;
        Ok((
            format!("rk3s endpoint (reports etcd version {version}) over {sqlite_version}"),
            rows,
        ))
    }
    .await;
    let _ = stop_tx.send(());
    match tokio::time::timeout(CONNECT_TIMEOUT, server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => eprintln!("[bench endpoint] warning: the rk3s server failed: {e}"),
        Ok(Err(e)) => eprintln!("[bench endpoint] warning: the rk3s server task: {e}"),
        Err(_) => eprintln!("[bench endpoint] warning: the rk3s server did not stop in time"),
    }
    store.close().await;
    result
}

// ---------------------------------------------------------------------------------------------
// The report

fn report(
    load_before: &str,
    args: &Args,
    counts: &Counts,
    sections: &[Section],
    comparison: Option<&Comparison>,
    elapsed: Duration,
) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "rk3s datastore benchmark");
    let _ = writeln!(out, "========================");
    let _ = writeln!(out, "machine: {}", machine_facts());
    let _ = writeln!(
        out,
        "mode:    {} (backends: {}); values {VALUE_SIZE} B; writes {} x 1 client + {} x {CLIENTS}; \
         reads {} x {CLIENTS}; list {} keys, median of {}; watch {} writes paced every {} ms",
        counts.label,
        args.backends
            .iter()
            .map(|w| w.name())
            .collect::<Vec<_>>()
            .join(","),
        counts.writes_1,
        counts.writes_16,
        counts.reads_16,
        counts.list_keys(),
        counts.list_runs,
        counts.watch_writes,
        counts.watch_pace.as_millis(),
    );
    let _ = writeln!(
        out,
        "total time: {:.0} s; load average (1/5/15 min) {load_before} before, {} after \
         (other work on the machine skews the figures)",
        elapsed.as_secs_f64(),
        load_average(),
    );
    let _ = writeln!(out, "versions:");
    for s in sections {
        let version = match &s.outcome {
            Ok((version, _)) => version.as_str(),
            Err(_) => "skipped (see below)",
        };
        let _ = writeln!(out, "  {:<9} {version} ({})", s.name, s.setup);
    }
    if let Some(c) = comparison {
        for (side, r) in [("endpoint", &c.rk3s), ("vs", &c.etcd)] {
            let v = match r {
                Ok((version, _)) => version.as_str(),
                Err(_) => "skipped (see below)",
            };
            let _ = writeln!(out, "  {side:<9} {v}");
        }
    }

    if !sections.is_empty() {
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "Backends through rk3s_datastore::Store (writes are Store::create of new keys, reads \
             Store::get, list Store::list, watch Store::watch_prefix):"
        );
        let mut rows = Vec::new();
        for s in sections {
            match &s.outcome {
                Ok((_, backend_rows)) => {
                    for r in backend_rows {
                        let (value, detail) = cells(&r.figure);
                        rows.push(vec![s.name.to_string(), r.measure.clone(), value, detail]);
                    }
                }
                Err(reason) => {
                    let (value, detail) = split_reason(reason);
                    rows.push(vec![s.name.to_string(), "-".into(), value, detail]);
                }
            }
        }
        out.push_str(&table(&["backend", "measure", "result", "details"], &rows));
    }

    if let Some(c) = comparison {
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "etcd v3 endpoint: rk3s_datastore::server::serve over SQLite vs real etcd, the same \
             etcd-client load generator (writes are plain puts), same machine, same run."
        );
        let _ = writeln!(
            out,
            "ratio = rk3s / etcd. 'better' is the direction that favours rk3s: for throughput \
             (/s) higher is better (ratio > 1: rk3s faster); for times and latencies lower is \
             better (ratio < 1: rk3s faster)."
        );
        // A side that did not run at all fails every measure for the same reason.
        let side = |r: &Result<(String, Vec<Row>), String>| match r {
            Ok((_, rows)) => rows.clone(),
            Err(reason) => failed_rows(counts, reason),
        };
        let (rk3s, etcd) = (side(&c.rk3s), side(&c.etcd));
        let rows: Vec<Vec<String>> = rk3s
            .iter()
            .zip(&etcd)
            .map(|(ra, rb)| {
                let (ratio, direction) = match (&ra.figure, &rb.figure) {
                    (Ok(fa), Ok(fb)) => (
                        format!("{:.2}", fa.value / fb.value.max(f64::MIN_POSITIVE)),
                        better(fa.unit),
                    ),
                    (Ok(f), _) | (_, Ok(f)) => ("-".into(), better(f.unit)),
                    _ => ("-".into(), ""),
                };
                vec![
                    ra.measure.clone(),
                    cells(&ra.figure).0,
                    cells(&rb.figure).0,
                    ratio,
                    direction.to_string(),
                ]
            })
            .collect();
        out.push_str(&table(
            &["measure", "rk3s endpoint", "etcd", "rk3s/etcd", "better"],
            &rows,
        ));
        let mut details = Vec::new();
        for (name, rows) in [("rk3s", &rk3s), ("etcd", &etcd)] {
            for row in rows {
                details.push(vec![
                    name.to_string(),
                    row.measure.clone(),
                    cells(&row.figure).1,
                ]);
            }
        }
        let _ = writeln!(out);
        out.push_str(&table(&["side", "measure", "details"], &details));
    }
    out
}

/// The result and details cells of a figure; a failure shows as `error` or `skipped`, with its
/// reason in the details (the last column, so a long reason does not widen the table).
fn cells(figure: &Result<Figure, String>) -> (String, String) {
    match figure {
        Ok(f) => (f.shown(), f.detail.clone()),
        Err(reason) => split_reason(reason),
    }
}

/// `"error: why"` into `("error", "why")`.
fn split_reason(reason: &str) -> (String, String) {
    match reason.split_once(": ") {
        Some((kind @ ("error" | "skipped"), why)) => (kind.to_string(), why.to_string()),
        _ => ("error".to_string(), reason.to_string()),
    }
}

fn better(unit: Unit) -> &'static str {
    match unit {
        Unit::PerSec => "higher",
        Unit::Millis => "lower",
    }
}

/// Left-aligned columns, two spaces apart, with a rule under the header.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(header.to_vec());
    out.push_str(&line(
        widths
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .iter()
            .map(String::as_str)
            .collect(),
    ));
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// The 1, 5 and 15 minute load averages.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join("/"))
        .unwrap_or_else(|_| "unknown".into())
}

/// CPUs, CPU model, memory, kernel and the temp dir's file system.
fn machine_facts() -> String {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .and_then(|r| r.split_once(':'))
                .map(|(_, m)| m.trim())
        })
        .unwrap_or("unknown CPU");
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|r| r.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| format!("{:.1} GiB RAM", kb / 1024.0 / 1024.0))
        .unwrap_or_else(|| "unknown RAM".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    let tmp = std::env::temp_dir();
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let tmp_fs = mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_dev, mount, fs) = (f.next()?, f.next()?, f.next()?);
            tmp.starts_with(mount)
                .then(|| (mount.len(), fs.to_string()))
        })
        .max()
        .map(|(_, fs)| fs)
        .unwrap_or_else(|| "unknown fs".into());
    format!(
        "nproc {cpus}, {model}, {mem_gib}, Linux {kernel}; temp dir {} on {tmp_fs}",
        tmp.display()
    )
}
