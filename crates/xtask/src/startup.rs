//! `cargo xtask bench startup`: how fast `rk3s server` is ready, how much memory it holds when
//! idle, how big it is — beside K3s's published figures.
//!
//! Each run spawns `rk3s server` with its own temp data dir, kubeconfig path, config file
//! (empty, so `/etc/rk3s/config.yaml` is never read) and a free loopback port (never
//! `/var/lib/rk3s` or 6443), in an environment without `RK3S_*`/`K3S_*`, and polls
//! `https://127.0.0.1:<port>/readyz` with curl until it answers `ok`. `/readyz` is only the
//! API: the scheduler and controller manager start after it, so each run also times the
//! systemd `READY=1` the server sends (through a `NOTIFY_SOCKET` the bench listens on, as
//! systemd would: the API answers and its clients run) and the moment both Leases
//! (`kube-scheduler`, `kube-controller-manager`) are held, read from the server's log — the
//! control plane at work. Cold runs start on an empty data dir (the PKI and the database are
//! created); warm runs on one a previous run left (SIGTERM, clean exit). Once all three are
//! reached it waits a few seconds and reads `VmRSS` from `/proc/<pid>/status`.
//!
//! Flags: `--runs N` (per kind, default 5), `--profile P` (cargo profile of the measured binary,
//! default `release`; `dist` measures the shipped one), `--bin PATH` (measure this binary, no
//! build), `--settle S` (seconds between ready and the RSS reading, default 5).

use std::net::TcpListener;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::dist;

/// Bound on one start, so that a broken server fails the bench instead of hanging it.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// Between two `/readyz` polls.
const POLL: Duration = Duration::from_millis(10);

/// K3s's published figures (docs.k3s.io, reference/resource-profiling, K3s v1.26.5 on an Intel
/// 8375C, kine/SQLite; README: "a single binary ... <70MB"). K3s publishes no startup time;
/// "tens of seconds" is the common experience this bench is compared with.
const K3S_RSS: &str = "1596 MiB server with a workload, 1428 MiB with one agent (SQLite)";
const K3S_SIZE: &str = "< 70 MB (K3s README; < 100 MB the usual quote)";
const K3S_READY: &str = "tens of seconds (no published figure)";

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Options {
    pub(crate) runs: usize,
    pub(crate) profile: String,
    pub(crate) bin: Option<PathBuf>,
    pub(crate) settle: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            runs: 5,
            profile: "release".into(),
            bin: None,
            settle: Duration::from_secs(5),
        }
    }
}

pub(crate) fn parse(args: &[String]) -> anyhow::Result<Options> {
    let mut options = Options::default();
    let mut args = args.iter();
    while let Some(flag) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .cloned()
                .with_context(|| format!("{name} needs a value"))
        };
        match flag.as_str() {
            "--runs" => {
                let v = value("--runs")?;
                options.runs = v
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .with_context(|| format!("--runs: {v:?} is not a positive number"))?;
            }
            "--profile" => options.profile = value("--profile")?,
            "--bin" => options.bin = Some(PathBuf::from(value("--bin")?)),
            "--settle" => {
                let v = value("--settle")?;
                let secs: u64 = v
                    .parse()
                    .with_context(|| format!("--settle: {v:?} is not a number of seconds"))?;
                options.settle = Duration::from_secs(secs);
            }
            // `cargo bench` passes `--bench` to bench targets; accept it here too.
            "--bench" => {}
            other => bail!(
                "unknown argument {other:?} (startup takes --runs N, --profile P, --bin PATH, \
                 --settle S)"
            ),
        }
    }
    Ok(options)
}

/// One measured start.
#[derive(Debug, Clone, Copy)]
struct Sample {
    /// To `/readyz` ok.
    ready: Duration,
    /// To the sd_notify `READY=1`.
    notified: Duration,
    /// To both Leases held (the scheduler and the controller manager leading).
    leading: Duration,
    rss_kib: u64,
}

/// Log lines of the scheduler and the controller manager taking their Leases
/// (`rk3s_common::leader`).
const LEASE_LINES: [&str; 2] = [
    "lease=kube-system/kube-scheduler",
    "lease=kube-system/kube-controller-manager",
];
const ACQUIRED: &str = "acquired the lease";

pub(crate) fn run(args: &[String]) -> anyhow::Result<ExitCode> {
    let options = parse(args)?;
    if !crate::cmd::on_path("curl") {
        bail!("the startup bench polls /readyz with curl: install Debian's curl");
    }
    let binary = match &options.bin {
        Some(bin) => bin.clone(),
        None => dist::build(&options.profile)?,
    };
    let scratch = Scratch::new()?;
    println!(
        "measuring {} ({} runs cold, {} warm, RSS {}s after ready)",
        binary.display(),
        options.runs,
        options.runs,
        options.settle.as_secs()
    );

    let mut cold = Vec::new();
    for i in 0..options.runs {
        let dir = scratch.path.join(format!("cold-{i}"));
        let sample = measure(&binary, &dir, options.settle)?;
        println!("  cold {}: {}", i + 1, show(&sample));
        cold.push(sample);
    }
    // Warm: the data dir of the first cold run, which stopped cleanly.
    let warm_dir = scratch.path.join("cold-0");
    let mut warm = Vec::new();
    for i in 0..options.runs {
        let sample = measure(&binary, &warm_dir, options.settle)?;
        println!("  warm {}: {}", i + 1, show(&sample));
        warm.push(sample);
    }

    let size = std::fs::metadata(&binary)
        .with_context(|| format!("stat {}", binary.display()))?
        .len();
    let dist_binary = if options.profile == dist::PROFILE && options.bin.is_none() {
        Some(binary.clone())
    } else {
        dist::sibling_build(&binary, dist::PROFILE)
    };
    let dist_size = match &dist_binary {
        Some(path) => {
            let len = std::fs::metadata(path)
                .with_context(|| format!("stat {}", path.display()))?
                .len();
            let stripped = match dist::is_stripped(path) {
                Some(true) => "stripped",
                Some(false) => "NOT stripped",
                None => "strip state unknown",
            };
            format!("{} ({stripped}, cargo xtask dist)", dist::mib(len))
        }
        None => "no dist build (run `cargo xtask dist`)".to_string(),
    };

    let rss: Vec<u64> = cold.iter().chain(&warm).map(|s| s.rss_kib).collect();
    println!();
    println!("{:<26} {:<46} K3s (published)", "", "rk3s (this machine)");
    row(
        "cold start to /readyz",
        &timing(&cold, |s| s.ready),
        K3S_READY,
    );
    row("cold start to READY=1", &timing(&cold, |s| s.notified), "");
    row(
        "cold start to Leases held",
        &timing(&cold, |s| s.leading),
        "",
    );
    row(
        "warm start to /readyz",
        &timing(&warm, |s| s.ready),
        K3S_READY,
    );
    row("warm start to READY=1", &timing(&warm, |s| s.notified), "");
    row(
        "warm start to Leases held",
        &timing(&warm, |s| s.leading),
        "",
    );
    row(
        "idle server RSS",
        &format!(
            "{} median (min {}, max {})",
            kib(median(&rss)),
            kib(min(&rss)),
            kib(max(&rss))
        ),
        K3S_RSS,
    );
    row(
        "binary size",
        &format!("{} (measured binary)", dist::mib(size)),
        K3S_SIZE,
    );
    row("dist binary", &dist_size, "");
    println!(
        "\nrk3s server is the control plane only today (datastore, apiserver, scheduler, controller \
         manager);\nK3s's RSS includes its agent, containerd and packaged add-ons."
    );
    Ok(ExitCode::SUCCESS)
}

fn row(what: &str, ours: &str, theirs: &str) {
    println!("{what:<26} {ours:<46} {theirs}");
}

fn show(sample: &Sample) -> String {
    format!(
        "/readyz {} ms, READY=1 {} ms, Leases {} ms, RSS {}",
        sample.ready.as_millis(),
        sample.notified.as_millis(),
        sample.leading.as_millis(),
        kib(sample.rss_kib)
    )
}

fn timing(samples: &[Sample], of: impl Fn(&Sample) -> Duration) -> String {
    let ms: Vec<u64> = samples
        .iter()
        .map(|s| u64::try_from(of(s).as_millis()).unwrap_or(u64::MAX))
        .collect();
    format!(
        "{} ms median (min {}, max {})",
        median(&ms),
        min(&ms),
        max(&ms)
    )
}

fn kib(kib: u64) -> String {
    dist::mib(kib * 1024)
}

pub(crate) fn median(values: &[u64]) -> u64 {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    match sorted.len() {
        0 => 0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2,
    }
}

fn min(values: &[u64]) -> u64 {
    values.iter().copied().min().unwrap_or(0)
}

fn max(values: &[u64]) -> u64 {
    values.iter().copied().max().unwrap_or(0)
}

/// Starts `rk3s server` on `dir` (created if missing), waits for `/readyz`, `READY=1` and both
/// Leases, lets it settle, reads its RSS, stops it with SIGTERM and checks it exits 0.
fn measure(binary: &Path, dir: &Path, settle: Duration) -> anyhow::Result<Sample> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let config = dir.join("config.yaml");
    std::fs::write(&config, "# startup bench: defaults only\n")
        .with_context(|| format!("write {}", config.display()))?;
    let port = free_port()?;
    let log_path = dir.join(format!("server-{port}.log"));
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("create {}", log_path.display()))?;
    let notify_path = dir.join(format!("notify-{port}.sock"));
    let _ = std::fs::remove_file(&notify_path);
    let notify = UnixDatagram::bind(&notify_path)
        .with_context(|| format!("bind {}", notify_path.display()))?;
    notify
        .set_nonblocking(true)
        .context("non-blocking notify socket")?;
    let mut command = Command::new(binary);
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        if k.starts_with("RK3S_") || k.starts_with("K3S_") {
            command.env_remove(&key);
        }
    }
    command
        .arg("server")
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--write-kubeconfig")
        .arg(dir.join("kubeconfig.yaml"))
        .arg("--https-listen-port")
        .arg(port.to_string())
        .env("HOME", dir)
        .env("RUST_LOG", "info")
        .env("NOTIFY_SOCKET", &notify_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    let started = Instant::now();
    let child = command
        .spawn()
        .with_context(|| format!("cannot start {}", binary.display()))?;
    let mut server = Running { child };
    let url = format!("https://127.0.0.1:{port}/readyz");
    let (mut ready, mut notified, mut leading) = (None, None, None);
    let mut buf = [0u8; 4096];
    loop {
        if let Some(status) = server.child.try_wait().context("wait for rk3s server")? {
            bail!(
                "rk3s server exited before it was ready ({status}); its log: {}",
                log_path.display()
            );
        }
        if ready.is_none() && readyz_ok(&url) {
            ready = Some(started.elapsed());
        }
        while notified.is_none() {
            match notify.recv(&mut buf) {
                Ok(n) => {
                    if buf[..n].split(|b| *b == b'\n').any(|l| l == b"READY=1") {
                        notified = Some(started.elapsed());
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e).context("read the notify socket"),
            }
        }
        if leading.is_none() && leases_held(&log_path) {
            leading = Some(started.elapsed());
        }
        if let (Some(ready), Some(notified), Some(leading)) = (ready, notified, leading) {
            std::thread::sleep(settle);
            let rss_kib = vm_rss_kib(server.child.id())?;
            server.terminate(&log_path)?;
            return Ok(Sample {
                ready,
                notified,
                leading,
                rss_kib,
            });
        }
        if started.elapsed() > START_TIMEOUT {
            bail!(
                "rk3s server was not ready (/readyz {ready:?}, READY=1 {notified:?}, Leases \
                 {leading:?}) within {START_TIMEOUT:?}; its log: {}",
                log_path.display()
            );
        }
        std::thread::sleep(POLL);
    }
}

/// The server's log says both Leases were taken.
fn leases_held(log: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(log) else {
        return false;
    };
    LEASE_LINES.iter().all(|lease| {
        text.lines()
            .any(|l| l.contains(ACQUIRED) && l.contains(lease))
    })
}

/// `curl -k https://.../readyz` answers `ok`. `-k`: the CA does not exist before a cold start;
/// the bench measures readiness, not trust.
fn readyz_ok(url: &str) -> bool {
    Command::new("curl")
        .args(["-sk", "--max-time", "2", url])
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|out| out.status.success() && out.stdout.trim_ascii() == b"ok")
}

/// `VmRSS` of `/proc/<pid>/status`, in KiB.
fn vm_rss_kib(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    parse_vm_rss(&status).with_context(|| format!("{path} has no VmRSS line"))
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .context("find a free loopback port")?
        .port())
}

/// A spawned server, killed if the bench fails on the way.
struct Running {
    child: Child,
}

impl Running {
    /// SIGTERM (through kill(1): xtask has no libc binding), then the exit status must be 0.
    fn terminate(mut self, log: &Path) -> anyhow::Result<()> {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .context("run kill")?;
        if !sent.success() {
            bail!("kill -TERM {pid} failed");
        }
        let status = self.child.wait().context("wait for rk3s server")?;
        if !status.success() {
            bail!(
                "rk3s server did not exit cleanly on SIGTERM ({status}); its log: {}",
                log.display()
            );
        }
        Ok(())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A temp directory for the runs, removed at the end.
struct Scratch {
    path: PathBuf,
}

impl Scratch {
    fn new() -> anyhow::Result<Scratch> {
        let path = std::env::temp_dir().join(format!("rk3s-bench-startup-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).with_context(|| format!("create {}", path.display()))?;
        Ok(Scratch { path })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<String> {
        line.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn flags() {
        assert_eq!(parse(&[]).expect("no flags"), Options::default());
        let o = parse(&args("--runs 3 --profile dist --settle 2 --bin /x/rk3s")).expect("flags");
        assert_eq!(o.runs, 3);
        assert_eq!(o.profile, "dist");
        assert_eq!(o.settle, Duration::from_secs(2));
        assert_eq!(o.bin, Some(PathBuf::from("/x/rk3s")));
        assert!(parse(&args("--runs 0")).is_err());
        assert!(parse(&args("--runs")).is_err());
        assert!(parse(&args("--fast")).is_err());
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[5, 1, 3]), 3);
        assert_eq!(median(&[4, 1, 3, 2]), 2);
        assert_eq!(median(&[]), 0);
    }

    #[test]
    fn rss_from_proc_status() {
        let status = "Name:\trk3s\nVmPeak:\t  100 kB\nVmRSS:\t   42424 kB\nThreads:\t9\n";
        assert_eq!(parse_vm_rss(status), Some(42424));
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
        let own = vm_rss_kib(std::process::id()).expect("our own RSS");
        assert!(own > 0);
    }
}
