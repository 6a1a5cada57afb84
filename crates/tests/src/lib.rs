//! End-to-end test harness: the workspace's real binaries as child processes, on loopback, each
//! with its own temp dir, free ports and an environment without `RK3S_*`/`K3S_*` (never
//! `/var/lib/rk3s`, `/etc/rk3s` or port 6443).
//!
//! The binaries are taken from the target directory of the running test (`target/debug/`);
//! `cargo test --workspace` builds them (every crate with a binary has integration tests). A
//! test run alone (`cargo test -p rk3s-tests`) needs them built first:
//! `cargo build -p rk3s -p rk3s-datastore -p rk3s-apiserver -p rk3s-scheduler -p rk3s-controller`.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub use rk3s_datastore::testing::{EtcdProcess, free_port};

/// The binaries the end-to-end tests run.
pub const BINARIES: &[&str] = &[
    "rk3s",
    "rk3s-datastore",
    "rk3s-apiserver",
    "rk3s-scheduler",
    "rk3s-controller",
];

/// The path of workspace binary `name` (also its package's name), built in the same profile as the running test.
///
/// # Panics
/// If it is not built, with the command that builds it.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    // target/<profile>/deps/<test>-<hash> → target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test runs from target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is not built: run `cargo build -p {}` (or `cargo test --workspace`, which builds every \
         binary) first",
        path.display(),
        name
    );
    path
}

/// A command for binary `name` with an environment free of the caller's rk3s/K3s settings,
/// `HOME` in `dir`, and logs at `info`.
pub fn command(name: &str, dir: &Path) -> Command {
    let mut cmd = Command::new(bin(name));
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        if k.starts_with("RK3S_")
            || k.starts_with("K3S_")
            || k == "KUBECONFIG"
            || k == "NOTIFY_SOCKET"
        {
            cmd.env_remove(&key);
        }
    }
    cmd.env("HOME", dir)
        .env("RUST_LOG", "info")
        .env("RUST_BACKTRACE", "1");
    cmd
}

/// A running binary whose output goes to `<dir>/<name>.log`. Killed on drop; the log is
/// printed when the test fails (panics) while it runs. It runs as under a systemd
/// `Type=notify` unit: `NOTIFY_SOCKET` is a datagram socket of its own, `<dir>/<name>.notify`,
/// whose messages [`Process::notified`] returns.
#[derive(Debug)]
pub struct Process {
    pub name: String,
    child: Child,
    log: PathBuf,
    notify: std::os::unix::net::UnixDatagram,
    notified: Vec<String>,
}

impl Process {
    /// Starts binary `name` with `args`, its log in `dir`.
    pub fn spawn<I, S>(name: &str, dir: &Path, args: I) -> Process
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).expect("log file");
        // Some binaries log to stdout, some to stderr: both go to the log.
        let out = file.try_clone().expect("log file handle");
        let socket = dir.join(format!("{name}.notify"));
        let _ = std::fs::remove_file(&socket);
        let notify = std::os::unix::net::UnixDatagram::bind(&socket).expect("notify socket");
        notify
            .set_nonblocking(true)
            .expect("non-blocking notify socket");
        let child = command(name, dir)
            .env("NOTIFY_SOCKET", &socket)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("{name} starts: {e}"));
        Process {
            name: name.to_string(),
            child,
            log,
            notify,
            notified: Vec::new(),
        }
    }

    /// Every `sd_notify` message (`READY=1\nSTATUS=...`) it sent so far, in order.
    pub fn notified(&mut self) -> &[String] {
        let mut buf = [0u8; 4096];
        while let Ok(n) = self.notify.recv(&mut buf) {
            self.notified
                .push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        &self.notified
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Panics (with the log) if it has exited.
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("{} exited with {status}; log:\n{}", self.name, self.log());
        }
    }

    /// Waits (polling, at most `timeout`) for a `READY=1` message and returns it; panics with
    /// the log if the process exits or the time runs out first.
    pub async fn ready_notified(&mut self, timeout: Duration) -> String {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(m) = self
                .notified()
                .iter()
                .find(|m| m.lines().any(|l| l == "READY=1"))
            {
                return m.clone();
            }
            self.assert_running();
            assert!(
                std::time::Instant::now() < deadline,
                "{} sent no READY=1 within {timeout:?}; log:\n{}",
                self.name,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM, then waits for the exit.
    pub fn terminate(self) -> ExitStatus {
        self.terminate_notified().0
    }

    /// SIGTERM, then waits for the exit; also returns the `sd_notify` messages it sent.
    pub fn terminate_notified(mut self) -> (ExitStatus, Vec<String>) {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill runs");
        assert!(sent.success(), "kill -TERM {pid}");
        let status = self.child.wait().expect("process exits");
        let notified = self.notified().to_vec();
        (status, notified)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let running = matches!(self.child.try_wait(), Ok(None));
        if running {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- {} log ----\n{}", self.name, self.log());
        }
    }
}

/// Polls `f` every 100 ms until it returns `Some`, for at most `timeout`; each poll first checks
/// that `processes` are still running (a crashed component fails the test at once, with its log).
pub async fn eventually<T, F, Fut>(
    what: &str,
    timeout: Duration,
    processes: &mut [&mut Process],
    mut f: F,
) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        for p in processes.iter_mut() {
            p.assert_running();
        }
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether something accepts TCP connections on `127.0.0.1:port`.
pub fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .is_ok()
}

/// A kube-rs client from a kubeconfig file, or `None` if the file is not there (yet) or does
/// not make a client.
pub async fn client(kubeconfig: &Path) -> Option<kube::Client> {
    let kubeconfig = kube::config::Kubeconfig::read_from(kubeconfig).ok()?;
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .ok()?;
    kube::Client::try_from(config).ok()
}

/// A client from `kubeconfig` once the apiserver behind it answers `/version`.
pub async fn ready_client(
    kubeconfig: &Path,
    timeout: Duration,
    processes: &mut [&mut Process],
) -> kube::Client {
    eventually(
        &format!("an apiserver answering with {}", kubeconfig.display()),
        timeout,
        processes,
        || async {
            let c = client(kubeconfig).await?;
            c.apiserver_version().await.ok()?;
            Some(c)
        },
    )
    .await
}

/// Registers a Node as a kubelet would (create, then its status: Ready, 4 CPUs, 8 GiB,
/// 110 pods). No kubelet exists: the node is an API object only.
pub async fn make_node(client: &kube::Client, name: &str) {
    use k8s_openapi::api::core::v1::Node;
    use kube::api::{Api, Patch, PatchParams, PostParams};
    let nodes: Api<Node> = Api::all(client.clone());
    let node: Node = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
    }))
    .expect("node");
    nodes
        .create(&PostParams::default(), &node)
        .await
        .expect("node created");
    let status = serde_json::json!({"status": {
        "capacity": {"cpu": "4", "memory": "8Gi", "pods": "110"},
        "allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"},
        "conditions": [{"type": "Ready", "status": "True"}],
    }});
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("node status");
}
