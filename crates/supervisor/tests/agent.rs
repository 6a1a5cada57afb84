//! `rk3s agent` joining `rk3s server` through the real binary: loopback, free ports, temp data
//! dirs (never /var/lib/rk3s, /etc/rk3s or 6443), an environment without the caller's
//! `RK3S_*`/`K3S_*`.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use rk3s_datastore::testing::free_port;

const RK3S: &str = env!("CARGO_BIN_EXE_rk3s");
/// Generous bound on startup, so that a broken process fails the test instead of hanging it.
const STARTUP: Duration = Duration::from_secs(90);
const SERVER_READY: &str = "rk3s server ready: kubeconfig ";
const AGENT_JOINED: &str = "the kubelet is not built yet, waiting for shutdown";

fn rk3s_cmd(home: &Path) -> Command {
    let mut cmd = Command::new(RK3S);
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        if k.starts_with("RK3S_") || k.starts_with("K3S_") {
            cmd.env_remove(&key);
        }
    }
    cmd.env("RUST_LOG", "info")
        .env("RUST_BACKTRACE", "0")
        .env("HOME", home);
    // Servers of parallel tests share the host: no scheduler or controller manager secure
    // port unless a test asks for one with the flags (which win over the environment).
    cmd.env("RK3S_KUBE_SCHEDULER_ARG", "secure-port=0")
        .env("RK3S_KUBE_CONTROLLER_MANAGER_ARG", "secure-port=0");
    cmd
}

/// A child whose stderr is collected line by line.
struct Process {
    child: Child,
    lines: mpsc::Receiver<String>,
    log: Vec<String>,
}

impl Process {
    fn start(mut cmd: Command) -> Process {
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("rk3s starts");
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
        Process {
            child,
            lines,
            log: Vec::new(),
        }
    }

    fn wait_for(&mut self, needle: &str) -> String {
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

    /// SIGTERM and wait; whether it exited with success.
    fn terminate(mut self) -> bool {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.child.wait().expect("exits").success()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Dirs {
    dir: tempfile::TempDir,
}

impl Dirs {
    fn new() -> Dirs {
        let dir = tempfile::tempdir().expect("temp dir");
        // An empty config file, so that /etc/rk3s/config.yaml is never read.
        std::fs::write(dir.path().join("config.yaml"), "{}\n").expect("config written");
        Dirs { dir }
    }
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    fn kubectl(&self, kubeconfig: &Path, args: &[&str], stdin: &str) -> Output {
        let mut child = Command::new("/usr/bin/kubectl")
            .arg("--kubeconfig")
            .arg(kubeconfig)
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
    /// `rk3s agent` with its own data dir `data-<name>`.
    fn agent_cmd(&self, name: &str) -> Command {
        let mut cmd = rk3s_cmd(self.dir.path());
        cmd.arg("agent")
            .arg("--config")
            .arg(self.path("config.yaml"))
            .arg("--data-dir")
            .arg(self.path(&format!("data-{name}")));
        cmd
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

const OBJECTS: &str = "\
apiVersion: v1
kind: Node
metadata: {name: n1}
---
apiVersion: v1
kind: Node
metadata: {name: n2}
---
apiVersion: v1
kind: Secret
metadata: {name: s1, namespace: default}
stringData: {k: v}
---
apiVersion: v1
kind: Secret
metadata: {name: s2, namespace: default}
stringData: {k: v}
---
apiVersion: v1
kind: Pod
metadata: {name: p1, namespace: default}
spec:
  nodeName: n1
  containers: [{name: c, image: busybox}]
  volumes: [{name: v, secret: {secretName: s1}}]
---
apiVersion: v1
kind: Pod
metadata: {name: p2, namespace: default}
spec:
  nodeName: n2
  containers: [{name: c, image: busybox}]
  volumes: [{name: v, secret: {secretName: s2}}]
";

const AGENT_FILES: &[&str] = &[
    "client-kubelet.crt",
    "client-kubelet.key",
    "serving-kubelet.crt",
    "serving-kubelet.key",
    "client-ca.crt",
    "server-ca.crt",
    "kubelet.kubeconfig",
];

#[test]
fn agent_joins_with_the_server_token_and_authenticates_as_its_node() {
    let dirs = Dirs::new();
    let port = free_port().expect("free port").to_string();
    let server_data = dirs.path("data-server");
    let admin = dirs.path("admin.yaml");
    let mut cmd = rk3s_cmd(dirs.dir.path());
    cmd.arg("server")
        .arg("--config")
        .arg(dirs.path("config.yaml"))
        .arg("--data-dir")
        .arg(&server_data)
        .arg("--write-kubeconfig")
        .arg(&admin)
        .args(["--https-listen-port", &port]);
    let mut server = Process::start(cmd);
    server.wait_for(SERVER_READY);

    // The server wrote its token (full form, 0600) and K3s' node-token link.
    let token_file = server_data.join("server/token");
    let token = std::fs::read_to_string(&token_file).expect("server/token");
    let token = token.trim().to_string();
    assert!(
        token.starts_with("K10") && token.contains("::server:"),
        "{token}"
    );
    let mode = std::fs::metadata(&token_file)
        .expect("token")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(
        std::fs::read_to_string(server_data.join("server/node-token")).expect("node-token"),
        format!("{token}\n")
    );
    let out = dirs.kubectl(&admin, &["apply", "-f", "-"], OBJECTS);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let url = format!("https://127.0.0.1:{port}");

    // A token with the right CA but the wrong secret: refused, nothing written.
    let (hash, _) = token.split_once("::").expect("full token");
    let wrong = format!("{hash}::server:not-the-secret");
    let out = dirs
        .agent_cmd("wrong")
        .args(["--server", &url, "--token", &wrong, "--node-name", "n1"])
        .output()
        .expect("agent runs");
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("refused the join token (401 Unauthorized)"),
        "{}",
        text(&out.stderr)
    );
    for f in AGENT_FILES {
        assert!(
            !dirs.path("data-wrong/agent").join(f).exists(),
            "{f} written after a refusal"
        );
    }

    // The right token, through K3s' environment names.
    let mut agent = Process::start({
        let mut cmd = dirs.agent_cmd("n1");
        cmd.env("K3S_URL", &url).env("K3S_TOKEN", &token).args([
            "--node-name",
            "n1",
            "--node-ip",
            "127.0.0.1",
        ]);
        cmd
    });
    agent.wait_for(AGENT_JOINED);
    let agent_dir = dirs.path("data-n1/agent");
    for f in AGENT_FILES {
        let meta = std::fs::metadata(agent_dir.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        if f.ends_with(".key") || f.ends_with(".kubeconfig") {
            assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{f}");
        }
    }
    let server_ca =
        std::fs::read_to_string(server_data.join("server/tls/server-ca.crt")).expect("server CA");
    assert_eq!(
        std::fs::read_to_string(agent_dir.join("server-ca.crt")).expect("server-ca.crt"),
        server_ca
    );

    // The kubelet's credentials: system:node:n1 in system:nodes, which reads its own Node and
    // the secret of its pod, not the secret of a pod on n2.
    let kubelet = agent_dir.join("kubelet.kubeconfig");
    let out = dirs.kubectl(
        &kubelet,
        &[
            "auth",
            "whoami",
            "-o",
            "jsonpath={.status.userInfo.username} {.status.userInfo.groups}",
        ],
        "",
    );
    let who = text(&out.stdout);
    assert!(
        who.starts_with("system:node:n1 ") && who.contains("system:nodes"),
        "{who}{}",
        text(&out.stderr)
    );
    let out = dirs.kubectl(&kubelet, &["get", "node", "n1", "-o", "name"], "");
    assert_eq!(text(&out.stdout), "node/n1\n", "{}", text(&out.stderr));
    let out = dirs.kubectl(&kubelet, &["get", "secret", "s1", "-o", "name"], "");
    assert_eq!(text(&out.stdout), "secret/s1\n", "{}", text(&out.stderr));
    let out = dirs.kubectl(&kubelet, &["get", "secret", "s2"], "");
    assert!(
        text(&out.stderr).contains("secrets \"s2\" is forbidden: User \"system:node:n1\""),
        "{}",
        text(&out.stderr)
    );
    // The server remembers the node's password.
    let out = dirs.kubectl(
        &admin,
        &[
            "get",
            "secret",
            "-n",
            "kube-system",
            "n1.node-password.k3s",
            "-o",
            "name",
        ],
        "",
    );
    assert_eq!(
        text(&out.stdout),
        "secret/n1.node-password.k3s\n",
        "{}",
        text(&out.stderr)
    );
    assert!(agent.terminate(), "the agent stops cleanly on SIGTERM");

    // Joining again with the same data dir (same node password) works; another data dir
    // claiming n1 (another password) is refused.
    let out = dirs
        .agent_cmd("thief")
        .args(["--server", &url, "--token", &token, "--node-name", "n1"])
        .output()
        .expect("agent runs");
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("403"), "{}", text(&out.stderr));
    let mut again = Process::start({
        let mut cmd = dirs.agent_cmd("n1");
        cmd.args(["--server", &url, "--token", &token, "--node-name", "n1"]);
        cmd
    });
    again.wait_for(AGENT_JOINED);
    assert!(again.terminate());
    assert!(server.terminate());
}

/// A TLS server on a port of the kernel's choosing (bound here, so no other test can take it
/// between choosing and binding) that records every request and answers `/cacerts` with a CA
/// of its own. Returns its port and that CA.
fn fake_server(seen: Arc<Mutex<Vec<String>>>) -> (u16, String) {
    let pki = rk3s_apiserver::Pki::generate(&rk3s_apiserver::PkiOptions {
        node_ips: vec!["127.0.0.1".parse().expect("ip")],
        ..rk3s_apiserver::PkiOptions::default()
    })
    .expect("PKI");
    let ca = pki.server_ca.cert_pem.clone();
    let config = pki.server_config().expect("TLS config");
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).expect("bind");
    let port = listener.local_addr().expect("local address").port();
    let answer = ca.clone();
    std::thread::spawn(move || {
        for tcp in listener.incoming() {
            let Ok(mut tcp) = tcp else { continue };
            let Ok(mut conn) = rustls::ServerConnection::new(config.clone()) else {
                continue;
            };
            let mut tls = rustls::Stream::new(&mut conn, &mut tcp);
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match tls.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let request = String::from_utf8_lossy(&request).into_owned();
            let first = request.lines().next().unwrap_or("").to_string();
            seen.lock().expect("lock").push(request);
            let (status, body) = if first.starts_with("GET /cacerts ") {
                ("200 OK", answer.clone())
            } else {
                ("404 Not Found", String::new())
            };
            let _ = write!(
                tls,
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = tls.flush();
        }
    });
    (port, ca)
}

#[test]
fn agent_refuses_a_ca_that_does_not_match_before_sending_the_secret() {
    let dirs = Dirs::new();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (port, served_ca) = fake_server(seen.clone());
    let pinned = rk3s_apiserver::ca_hash("a different CA");
    let token = format!("K10{pinned}::server:topsecret");
    let out = dirs
        .agent_cmd("a")
        .args([
            "--server",
            &format!("https://127.0.0.1:{port}"),
            "--token",
            &token,
            "--node-name",
            "n1",
        ])
        .output()
        .expect("agent runs");
    let err = text(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("does not match the token"), "{err}");
    assert!(err.contains(&pinned), "names the pinned hash: {err}");
    assert!(
        err.contains(&rk3s_apiserver::ca_hash(&served_ca)),
        "names the server's hash: {err}"
    );
    let seen = seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), 1, "only the CA was asked for: {seen:?}");
    assert!(seen[0].starts_with("GET /cacerts HTTP/1.1\r\n"), "{seen:?}");
    let lower = seen[0].to_ascii_lowercase();
    assert!(!lower.contains("authorization"), "{seen:?}");
    assert!(!seen[0].contains("topsecret"), "{seen:?}");
    assert!(
        !dirs.path("data-a/agent").exists(),
        "nothing written after a CA mismatch"
    );
}

/// `rk3s token` (bootstrap tokens), `--agent-token`, the token cleaner and the node password
/// Secret's lifetime, as K3s.
#[test]
fn agents_join_with_bootstrap_and_agent_tokens() {
    let dirs = Dirs::new();
    let port = free_port().expect("free port").to_string();
    let server_data = dirs.path("data-server");
    let admin = dirs.path("admin.yaml");
    let mut cmd = rk3s_cmd(dirs.dir.path());
    cmd.arg("server")
        .arg("--config")
        .arg(dirs.path("config.yaml"))
        .arg("--data-dir")
        .arg(&server_data)
        .arg("--write-kubeconfig")
        .arg(&admin)
        .args(["--https-listen-port", &port, "--agent-token", "agentsecret"]);
    let mut server = Process::start(cmd);
    server.wait_for(SERVER_READY);
    let url = format!("https://127.0.0.1:{port}");
    let server_token = std::fs::read_to_string(server_data.join("server/token")).expect("token");
    let (hash, _) = server_token.trim().split_once("::").expect("full token");
    let agent_token =
        std::fs::read_to_string(server_data.join("server/agent-token")).expect("agent-token");
    assert_eq!(agent_token, format!("{hash}::node:agentsecret\n"));
    let token_cmd = |args: &[&str]| -> Output {
        rk3s_cmd(dirs.dir.path())
            .arg("token")
            .args(args)
            .arg("--kubeconfig")
            .arg(&admin)
            .output()
            .expect("rk3s token runs")
    };

    // A bootstrap token, printed in the full form with the cluster CA's hash.
    let out = token_cmd(&["create", "--description", "for b1"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let bootstrap = text(&out.stdout).trim().to_string();
    let (pin, creds) = bootstrap.split_once("::").expect("full form");
    assert_eq!(pin, hash);
    let (id, secret) = creds.split_once('.').expect("<id>.<secret>");
    assert_eq!((id.len(), secret.len()), (6, 16), "{creds}");
    let out = token_cmd(&["list"]);
    let listed = text(&out.stdout);
    assert!(listed.starts_with("TOKEN"), "{listed}");
    let row = listed.lines().find(|l| l.starts_with(id)).expect("listed");
    for want in [
        "authentication,signing",
        "for b1",
        "system:bootstrappers:rk3s:default-node-token",
    ] {
        assert!(row.contains(want), "{want}: {row}");
    }

    // An agent joins with it (bearer) and with the agent token (basic node:<secret>).
    for (node, token) in [("b1", bootstrap.as_str()), ("a1", "agentsecret")] {
        let mut agent = Process::start({
            let mut cmd = dirs.agent_cmd(node);
            cmd.args(["--server", &url, "--token", token, "--node-name", node]);
            cmd
        });
        agent.wait_for(AGENT_JOINED);
        assert!(agent.terminate());
    }

    // Once the Node exists its password Secret is owned by it, and goes with it.
    let out = dirs.kubectl(
        &admin,
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: Node\nmetadata: {name: b1}\n",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let owner = |dirs: &Dirs| {
        let out = dirs.kubectl(
            &admin,
            &[
                "get",
                "secret",
                "-n",
                "kube-system",
                "b1.node-password.k3s",
                "-o",
                "jsonpath={.metadata.ownerReferences[0].kind}/{.metadata.ownerReferences[0].name}",
            ],
            "",
        );
        (text(&out.stdout), text(&out.stderr))
    };
    let deadline = std::time::Instant::now() + STARTUP;
    while owner(&dirs).0 != "Node/b1" {
        assert!(std::time::Instant::now() < deadline, "{:?}", owner(&dirs));
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = dirs.kubectl(&admin, &["delete", "node", "b1"], "");
    assert!(out.status.success(), "{}", text(&out.stderr));
    while !owner(&dirs).1.contains("NotFound") {
        assert!(std::time::Instant::now() < deadline, "{:?}", owner(&dirs));
        std::thread::sleep(Duration::from_millis(200));
    }

    // A deleted bootstrap token joins nothing.
    let out = token_cmd(&["delete", id]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        format!("bootstrap token {id:?} deleted\n")
    );
    let out = dirs
        .agent_cmd("b2")
        .args(["--server", &url, "--token", &bootstrap, "--node-name", "b2"])
        .output()
        .expect("agent runs");
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("401 Unauthorized"),
        "{}",
        text(&out.stderr)
    );
    assert!(!dirs.path("data-b2/agent/client-kubelet.crt").exists());

    // The token cleaner deletes expired tokens.
    let out = token_cmd(&["create", "--ttl", "1s"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let short = text(&out.stdout);
    let (_, creds) = short.trim().split_once("::").expect("full form");
    let short_id = creds.split('.').next().expect("id").to_string();
    let deadline = std::time::Instant::now() + STARTUP;
    loop {
        let listed = text(&token_cmd(&["list"]).stdout);
        if !listed.contains(&short_id) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{listed}");
        std::thread::sleep(Duration::from_millis(300));
    }
    // A bootstrap token cannot be the server token.
    let out = rk3s_cmd(dirs.dir.path())
        .arg("server")
        .arg("--config")
        .arg(dirs.path("config.yaml"))
        .arg("--data-dir")
        .arg(dirs.path("data-other"))
        .arg("--write-kubeconfig")
        .arg(dirs.path("other.yaml"))
        .args([
            "--https-listen-port",
            &free_port().expect("port").to_string(),
        ])
        .args(["--token", "abcdef.0123456789abcdef"])
        .output()
        .expect("server runs");
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("bootstrap token"),
        "{}",
        text(&out.stderr)
    );
    drop(server);
}
