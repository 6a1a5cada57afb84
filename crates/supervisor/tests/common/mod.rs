//! The harness of the end-to-end tests: the real `rk3s` binary, each test with its own data
//! dir, kubeconfig path and ports (never /var/lib/rk3s, /etc/rk3s or 6443), and kubectl.

#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub use rk3s_datastore::testing::free_port;

pub const RK3S: &str = env!("CARGO_BIN_EXE_rk3s");
/// Generous bound on startup, so that a broken server fails the test instead of hanging it.
pub const STARTUP: Duration = Duration::from_secs(90);
pub const READY: &str = "rk3s server ready: kubeconfig ";

/// `rk3s` with an environment free of the caller's rk3s/K3s settings.
pub fn rk3s_cmd(dir: &Path) -> Command {
    let mut cmd = Command::new(RK3S);
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        if k.starts_with("RK3S_") || k.starts_with("K3S_") {
            cmd.env_remove(&key);
        }
    }
    cmd.env("RUST_LOG", "info")
        .env("RUST_BACKTRACE", "0")
        .env("HOME", dir);
    // Servers of parallel tests share the host: no scheduler or controller manager secure
    // port unless a test asks for one with the flags (which win over the environment).
    cmd.env("RK3S_KUBE_SCHEDULER_ARG", "secure-port=0")
        .env("RK3S_KUBE_CONTROLLER_MANAGER_ARG", "secure-port=0");
    cmd
}

/// A temp dir with a config file (so that /etc/rk3s/config.yaml is never read) and paths.
pub struct Setup {
    pub dir: tempfile::TempDir,
}

impl Setup {
    pub fn new(config: &str) -> Setup {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("config.yaml"), config).expect("config written");
        Setup { dir }
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    pub fn data_dir(&self) -> PathBuf {
        self.path("data")
    }
    pub fn kubeconfig(&self) -> PathBuf {
        self.path("kubeconfig.yaml")
    }
    /// `rk3s server --config <ours> --data-dir <ours> --write-kubeconfig <ours>` + `args`.
    pub fn server_cmd(&self, args: &[&str]) -> Command {
        let mut cmd = rk3s_cmd(self.dir.path());
        cmd.arg("server")
            .arg("--config")
            .arg(self.path("config.yaml"))
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--write-kubeconfig")
            .arg(self.kubeconfig())
            .args(args);
        cmd
    }

    pub fn kubectl(&self, args: &[&str], stdin: &str) -> Output {
        let mut child = Command::new("/usr/bin/kubectl")
            .arg("--kubeconfig")
            .arg(self.kubeconfig())
            .args(args)
            .env("HOME", self.dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl runs");
        if let Some(mut input) = child.stdin.take() {
            input.write_all(stdin.as_bytes()).expect("stdin written");
        }
        child.wait_with_output().expect("kubectl finishes")
    }

    pub fn kubectl_ok(&self, args: &[&str], stdin: &str) -> String {
        let out = self.kubectl(args, stdin);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Setup {
    /// kubectl with another kubeconfig; the output, successful or not.
    pub fn kubectl_with(&self, kubeconfig: &Path, args: &[&str]) -> Output {
        Command::new("/usr/bin/kubectl")
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(args)
            .env("HOME", self.dir.path())
            .output()
            .expect("kubectl runs")
    }

    /// kubectl with another kubeconfig, which must succeed; its stdout.
    pub fn kubectl_as(&self, kubeconfig: &Path, args: &[&str]) -> String {
        let out = self.kubectl_with(kubeconfig, args);
        assert!(
            out.status.success(),
            "kubectl {args:?} as {}: {}",
            kubeconfig.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Asks `probe` every 200 ms until it answers; gives up (fails the test) after
    /// [`STARTUP`]. A bound against hanging, not a timing assertion.
    pub fn wait_until<T>(&self, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
        let deadline = std::time::Instant::now() + STARTUP;
        loop {
            if let Some(v) = probe() {
                return v;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "gave up waiting for {what}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// A Ready node with 4 CPUs, 8 GiB and 110 pods, created and given its status as a kubelet
    /// would (there is no kubelet).
    pub fn create_node(&self, name: &str) {
        let node = format!(
            r#"{{"apiVersion":"v1","kind":"Node","metadata":{{"name":"{name}","labels":{{"kubernetes.io/hostname":"{name}"}}}}}}"#
        );
        self.kubectl_ok(&["create", "-f", "-"], &node);
        let status = r#"{"status":{"capacity":{"cpu":"4","memory":"8Gi","pods":"110"},"allocatable":{"cpu":"4","memory":"8Gi","pods":"110"},"conditions":[{"type":"Ready","status":"True","reason":"KubeletReady","message":"no kubelet: a test node"}]}}"#;
        self.kubectl_ok(
            &[
                "patch",
                "node",
                name,
                "--subresource=status",
                "--type=merge",
                "-p",
                status,
            ],
            "",
        );
    }
}

/// A running `rk3s server` whose stderr is collected line by line.
pub struct Server {
    pub child: Child,
    lines: mpsc::Receiver<String>,
    pub log: Vec<String>,
}

impl Server {
    /// Starts the server and waits for its ready line, which it returns.
    pub fn start(cmd: Command) -> (Server, String) {
        let mut server = Server::spawn(cmd);
        let ready = server.wait_for(READY);
        (server, ready)
    }

    /// Starts the server without waiting for anything.
    pub fn spawn(mut cmd: Command) -> Server {
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("rk3s server starts");
        let stderr = child.stderr.take().expect("stderr piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Server {
            child,
            lines,
            log: Vec::new(),
        }
    }

    /// Waits for a log line containing `needle`.
    pub fn wait_for(&mut self, needle: &str) -> String {
        loop {
            match self.lines.recv_timeout(STARTUP) {
                Ok(line) => {
                    self.log.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => {
                    let _ = self.child.kill();
                    panic!("no log line with {needle:?}; log:\n{}", self.log.join("\n"));
                }
            }
        }
    }

    /// SIGTERM, then waits for the exit; returns the status and the rest of the log.
    pub fn terminate(self) -> (ExitStatus, Vec<String>) {
        self.signal("-TERM")
    }

    /// Sends `signal` (`-TERM`, `-INT`), then waits for the exit.
    pub fn signal(mut self, signal: &str) -> (ExitStatus, Vec<String>) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {signal} failed");
        let status = self.child.wait().expect("server exits");
        self.log.extend(self.lines.iter());
        (status, std::mem::take(&mut self.log))
    }
}

impl Server {
    /// Sends `signal`, then waits at most `bound` for the exit (a generous bound: a hang fails
    /// the test instead of blocking it; how fast is the benchmark's business).
    pub fn signal_within(mut self, signal: &str, bound: Duration) -> (ExitStatus, Vec<String>) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {signal} failed");
        let deadline = std::time::Instant::now() + bound;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                self.log.extend(self.lines.iter());
                return (status, std::mem::take(&mut self.log));
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                self.log.extend(self.lines.iter());
                panic!(
                    "still running {bound:?} after {signal}; log:\n{}",
                    self.log.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn port_arg(port: u16) -> String {
    port.to_string()
}
