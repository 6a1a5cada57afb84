//! The apiserver benchmark: `cargo xtask bench apiserver [args]`, or
//! `cargo bench -p rk3s-apiserver --bench apiserver -- [--quick] [--pods N] [--watchers N]`.
//!
//! Runs the real `rk3s-apiserver` binary (release build, SQLite in a temp dir) as its own
//! process, so that its RSS is its own, and drives it over HTTPS with kube-rs clients from this
//! process, as the admin (the client certificate the apiserver writes to its data dir). Progress goes to stderr, the table to stdout. Phases:
//!
//! - RSS at idle: `VmRSS` of the server process once `/readyz` answers.
//! - creates/s: `--pods` pods (10,000 by default) created by 16 concurrent clients in one
//!   namespace; pods / wall time from the first call to the last response.
//! - get p50/p99: 2,000 sequential gets of pods chosen pseudo-randomly, one client.
//! - list: a full list of the namespace (every pod, JSON), the median of 5; once without a
//!   resourceVersion (a consistent list) and once with `resourceVersion=0` (any state).
//! - watch fan-out: `--watchers` watchers (1,000 by default) on a second namespace, then 100
//!   pods created there one after another; for each, the time from just before its create call
//!   to the moment the last watcher has received it; p50/p99.
//! - RSS after: with all the pods stored and the watchers still open; also read after the
//!   creates, the gets and the lists, to show which phase grows it.
//!
//! Upstream kube-apiserver publishes no throughput figures to compare with; the reference
//! printed is the Kubernetes scalability SLOs (API call latency p99 ≤ 1 s for single-object
//! calls, ≤ 30 s for cluster-wide lists), which every figure here must be far below.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};
use tokio::task::JoinSet;

const CLIENTS: usize = 16;
const GETS: usize = 2_000;
const FANOUT_EVENTS: usize = 100;

struct Args {
    pods: usize,
    watchers: usize,
}

impl Args {
    fn parse() -> anyhow::Result<Args> {
        let mut args = Args {
            pods: 10_000,
            watchers: 1_000,
        };
        let mut it = std::env::args().skip(1);
        while let Some(arg) = it.next() {
            match arg.as_str() {
                "--quick" => {
                    args.pods = 1_000;
                    args.watchers = 100;
                }
                "--pods" => args.pods = it.next().context("--pods N")?.parse()?,
                "--watchers" => args.watchers = it.next().context("--watchers N")?.parse()?,
                // `cargo bench` passes `--bench`.
                "--bench" => {}
                other => bail!("unknown argument {other:?} (--quick, --pods N, --watchers N)"),
            }
        }
        Ok(args)
    }
}

/// The apiserver process, killed when dropped.
struct Server {
    child: Child,
    _dir: tempfile::TempDir,
    kubeconfig: std::path::PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    async fn start() -> anyhow::Result<(Server, kube::Client)> {
        let dir = tempfile::tempdir()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let log = std::fs::File::create(dir.path().join("apiserver.log"))?;
        let child = Command::new(env!("CARGO_BIN_EXE_rk3s-apiserver"))
            .args(["--data-dir"])
            .arg(dir.path())
            .args(["--https-listen-port", &port.to_string()])
            .args(["--config", "/dev/null"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting rk3s-apiserver")?;
        let tls = dir.path().join("server/tls");
        let ca = tls.join("server-ca.crt");
        let (cert, key) = (tls.join("client-admin.crt"), tls.join("client-admin.key"));
        let kubeconfig = dir.path().join("kubeconfig");
        let mut server = Server {
            child,
            _dir: dir,
            kubeconfig,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !(ca.exists() && key.exists()) {
            if Instant::now() > deadline {
                bail!("the apiserver wrote no CA within 30 s");
            }
            if let Some(status) = server.child.try_wait()? {
                bail!("the apiserver exited: {status}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        std::fs::write(
            &server.kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: b\n  cluster:\n    server: https://127.0.0.1:{port}\n    certificate-authority: {}\ncontexts:\n- name: b\n  context: {{cluster: b, user: b}}\ncurrent-context: b\nusers:\n- name: b\n  user: {{client-certificate: {}, client-key: {}}}\n",
                ca.display(),
                cert.display(),
                key.display()
            ),
        )?;
        let client = server.client().await?;
        loop {
            let req = axum::http::Request::get("/readyz").body(Vec::new())?;
            if client.request_text(req).await.is_ok() {
                break;
            }
            if Instant::now() > deadline {
                bail!("/readyz did not answer within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok((server, client))
    }

    /// A new client, with its own connections.
    async fn client(&self) -> anyhow::Result<kube::Client> {
        let kubeconfig = kube::config::Kubeconfig::read_from(&self.kubeconfig)?;
        let config = kube::Config::from_custom_kubeconfig(
            kubeconfig,
            &kube::config::KubeConfigOptions::default(),
        )
        .await?;
        Ok(kube::Client::try_from(config)?)
    }

    fn rss_mib(&self) -> anyhow::Result<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .context("no VmRSS")?
            .parse()?;
        Ok(kib / 1024.0)
    }
}

fn pod(name: &str) -> anyhow::Result<Pod> {
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "bench", "tier": "web"}},
        "spec": {"containers": [{"name": "c", "image": "busybox:1.36",
                                  "command": ["sleep", "3600"]}]},
    }))?)
}

async fn namespace(client: &kube::Client, name: &str) -> anyhow::Result<()> {
    let ns: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": name}}))?;
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await?;
    Ok(())
}

/// Nearest-rank percentile of sorted durations, in milliseconds.
fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1].as_secs_f64() * 1e3
}

async fn creates(server: &Server, pods: usize) -> anyhow::Result<f64> {
    let mut tasks = JoinSet::new();
    let start = Instant::now();
    for c in 0..CLIENTS {
        let api: Api<Pod> = Api::namespaced(server.client().await?, "bench");
        tasks.spawn(async move {
            for i in (c..pods).step_by(CLIENTS) {
                api.create(&PostParams::default(), &pod(&format!("p-{i:06}"))?)
                    .await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    Ok(pods as f64 / start.elapsed().as_secs_f64())
}

async fn gets(client: &kube::Client, pods: usize) -> anyhow::Result<Vec<Duration>> {
    let api: Api<Pod> = Api::namespaced(client.clone(), "bench");
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut lat = Vec::with_capacity(GETS);
    for _ in 0..GETS {
        // xorshift: a fixed pseudo-random sequence of pods.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let name = format!("p-{:06}", x as usize % pods);
        let t = Instant::now();
        api.get(&name).await?;
        lat.push(t.elapsed());
    }
    lat.sort();
    Ok(lat)
}

async fn list(client: &kube::Client, pods: usize, any: bool) -> anyhow::Result<f64> {
    let api: Api<Pod> = Api::namespaced(client.clone(), "bench");
    let params = if any {
        ListParams::default().match_any()
    } else {
        ListParams::default()
    };
    let mut times = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let list = api.list(&params).await?;
        times.push(t.elapsed());
        if list.items.len() != pods {
            bail!("listed {} pods, expected {pods}", list.items.len());
        }
    }
    times.sort();
    Ok(times[times.len() / 2].as_secs_f64() * 1e3)
}

/// Opens the watchers, then creates the events one by one; returns the sorted fan-out
/// latencies and the watcher tasks (still open, for the RSS reading).
async fn fanout(
    server: &Server,
    client: &kube::Client,
    watchers: usize,
) -> anyhow::Result<(Vec<Duration>, JoinSet<()>)> {
    namespace(client, "fanout").await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, Instant)>();
    let ready = Arc::new(tokio::sync::Semaphore::new(0));
    let mut tasks = JoinSet::new();
    // A few clients, each with its own connection pool, share the watchers.
    let mut clients = Vec::new();
    for _ in 0..8 {
        clients.push(server.client().await?);
    }
    for w in 0..watchers {
        let api: Api<Pod> = Api::namespaced(clients[w % clients.len()].clone(), "fanout");
        let tx = tx.clone();
        let ready = ready.clone();
        tasks.spawn(async move {
            let Ok(stream) = api.watch(&WatchParams::default(), "0").await else {
                return;
            };
            ready.add_permits(1);
            let mut stream = stream.boxed();
            while let Ok(Some(event)) = stream.try_next().await {
                if let WatchEvent::Added(p) = event
                    && let Some(i) = p
                        .metadata
                        .name
                        .and_then(|n| n.strip_prefix("f-").and_then(|i| i.parse().ok()))
                {
                    let _ = tx.send((i, Instant::now()));
                }
            }
        });
    }
    drop(tx);
    let all_ready = ready.acquire_many(u32::try_from(watchers)?);
    tokio::time::timeout(Duration::from_secs(120), all_ready)
        .await
        .context("watchers did not all start within 120 s")??
        .forget();
    let api: Api<Pod> = Api::namespaced(client.clone(), "fanout");
    let mut lat = Vec::with_capacity(FANOUT_EVENTS);
    for i in 0..FANOUT_EVENTS {
        let start = Instant::now();
        api.create(&PostParams::default(), &pod(&format!("f-{i}"))?)
            .await?;
        let mut seen = 0;
        let mut last = start;
        while seen < watchers {
            let (j, at) = tokio::time::timeout(Duration::from_secs(30), rx.recv())
                .await
                .context("a watcher missed an event for 30 s")?
                .context("every watcher ended")?;
            if j == i {
                seen += 1;
                last = at;
            }
        }
        lat.push(last - start);
    }
    lat.sort();
    Ok((lat, tasks))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let (server, client) = Server::start().await?;
    let idle = server.rss_mib()?;
    namespace(&client, "bench").await?;
    eprintln!("creating {} pods with {CLIENTS} clients ...", args.pods);
    let creates = creates(&server, args.pods).await?;
    let after_creates = server.rss_mib()?;
    eprintln!("getting {GETS} pods ...");
    let gets = gets(&client, args.pods).await?;
    let after_gets = server.rss_mib()?;
    eprintln!("listing {} pods ...", args.pods);
    let list_consistent = list(&client, args.pods, false).await?;
    let list_any = list(&client, args.pods, true).await?;
    let after_lists = server.rss_mib()?;
    eprintln!("{} watchers, {FANOUT_EVENTS} events ...", args.watchers);
    let (fan, watchers) = fanout(&server, &client, args.watchers).await?;
    let after = server.rss_mib()?;
    drop(watchers);

    println!(
        "rk3s-apiserver (release, SQLite), {} pods, {} watchers",
        args.pods, args.watchers
    );
    println!("{:<44} {:>12}", "metric", "rk3s");
    println!("{:<44} {:>12.0}", "creates/s (16 clients)", creates);
    println!(
        "{:<44} {:>12.2}",
        "get p50 ms (1 client)",
        percentile(&gets, 50.0)
    );
    println!(
        "{:<44} {:>12.2}",
        "get p99 ms (1 client)",
        percentile(&gets, 99.0)
    );
    println!(
        "{:<44} {:>12.0}",
        format!("list of {} pods, ms (median of 5)", args.pods),
        list_consistent
    );
    println!(
        "{:<44} {:>12.0}",
        format!("list of {} pods, resourceVersion=0, ms", args.pods),
        list_any
    );
    println!(
        "{:<44} {:>12.2}",
        format!("watch fan-out to {} watchers p50 ms", args.watchers),
        percentile(&fan, 50.0)
    );
    println!(
        "{:<44} {:>12.2}",
        format!("watch fan-out to {} watchers p99 ms", args.watchers),
        percentile(&fan, 99.0)
    );
    println!("{:<44} {:>12.1}", "RSS idle, MiB", idle);
    println!(
        "{:<44} {:>12.1}",
        "RSS after the creates, MiB", after_creates
    );
    println!("{:<44} {:>12.1}", "RSS after the gets, MiB", after_gets);
    println!("{:<44} {:>12.1}", "RSS after the lists, MiB", after_lists);
    println!(
        "{:<44} {:>12.1}",
        format!("RSS with {} pods + watchers, MiB", args.pods),
        after
    );
    println!(
        "reference (Kubernetes scalability SLOs): single-object API call p99 <= 1000 ms; \
         list p99 <= 30000 ms"
    );
    Ok(())
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> std::process::ExitCode {
    let result = match Args::parse() {
        Ok(args) => run(args).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
