//! `rk3s server --secrets-encryption` and `rk3s secrets-encrypt` through the real binary, with
//! their own data dir and port.

use std::io::{BufRead as _, BufReader};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use rk3s_datastore::testing::free_port;

const RK3S: &str = env!("CARGO_BIN_EXE_rk3s");
const STARTUP: Duration = Duration::from_secs(90);
const READY: &str = "rk3s server ready: kubeconfig ";
const VALUE_B64: &str = "czNjcjN0LXZhbHVlLXh5eg==";

fn rk3s_cmd(dir: &Path) -> Command {
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
    cmd
}

struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port().expect("free port");
        std::fs::write(
            dir.path().join("config.yaml"),
            format!(
                "data-dir: {}\nhttps-listen-port: {port}\nwrite-kubeconfig: {}\n",
                dir.path().join("data").display(),
                dir.path().join("kubeconfig.yaml").display()
            ),
        )
        .expect("config written");
        Setup { dir }
    }
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    fn cred(&self, name: &str) -> PathBuf {
        self.path("data").join("server/cred").join(name)
    }
    /// `rk3s <sub> --config <ours>` + `args`.
    fn cmd(&self, sub: &[&str], args: &[&str]) -> Command {
        let mut cmd = rk3s_cmd(self.dir.path());
        cmd.args(sub)
            .arg("--config")
            .arg(self.path("config.yaml"))
            .args(args);
        cmd
    }
    fn secrets_encrypt(&self, action: &str) -> Output {
        self.cmd(&["secrets-encrypt", action], &[])
            .output()
            .expect("rk3s secrets-encrypt runs")
    }
    fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = Command::new("/usr/bin/kubectl")
            .arg("--kubeconfig")
            .arg(self.path("kubeconfig.yaml"))
            .args(args)
            .env("HOME", self.dir.path())
            .output()
            .expect("kubectl runs");
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
    /// The latest stored value of `key`, read from the SQLite datastore directly.
    fn stored(&self, key: &str) -> Vec<u8> {
        let db = self.path("data").join("server/db/state.db");
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        rt.block_on(async {
            let store = rk3s_datastore::connect(&rk3s_datastore::Config {
                data_dir: self.path("data"),
                ..rk3s_datastore::Config::for_endpoint(format!("sqlite://{}", db.display()))
            })
            .await
            .expect("datastore");
            let kv = store
                .get(key.as_bytes(), 0)
                .await
                .expect("read")
                .1
                .expect("key exists");
            store.close().await;
            kv.value
        })
    }
}

struct Server {
    child: Child,
}

impl Server {
    fn start(mut cmd: Command) -> Server {
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("rk3s server starts");
        let stderr = child.stderr.take().expect("stderr piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut log = Vec::new();
        loop {
            match rx.recv_timeout(STARTUP) {
                Ok(line) if line.contains(READY) => break,
                Ok(line) => log.push(line),
                Err(_) => {
                    let _ = child.kill();
                    panic!("server not ready; log:\n{}", log.join("\n"));
                }
            }
        }
        // Keep draining stderr so the server never blocks on it.
        std::thread::spawn(move || while rx.recv().is_ok() {});
        Server { child }
    }

    fn stop(mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
        let exit = self.child.wait().expect("server exits");
        assert!(exit.success(), "{exit}");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn prefix(v: &[u8]) -> String {
    String::from_utf8_lossy(&v[..v.len().min(40)]).into_owned()
}

#[test]
fn secrets_encryption_status_and_key_rotation() {
    let setup = Setup::new();
    let server = Server::start(setup.cmd(&["server"], &["--secrets-encryption"]));
    let config = setup.cred("encryption-config.json");
    let mode = std::fs::metadata(&config)
        .expect("configuration generated")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    setup.kubectl_ok(&[
        "create",
        "secret",
        "generic",
        "s1",
        "--from-literal=password=s3cr3t-value-xyz",
    ]);

    let out = setup.secrets_encrypt("status");
    let status = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(status.contains("Encryption Status: Enabled"), "{status}");
    assert!(status.contains("AES-CBC"), "{status}");
    assert!(status.contains("aescbckey"), "{status}");

    // Changing keys under a running server is refused.
    let out = setup.secrets_encrypt("rotate-keys");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("stop it first"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    server.stop();

    let before = setup.stored("/registry/secrets/default/s1");
    assert!(
        before.starts_with(b"k8s:enc:aescbc:v1:aescbckey:"),
        "{}",
        prefix(&before)
    );
    assert!(
        !before
            .windows(VALUE_B64.len())
            .any(|w| w == VALUE_B64.as_bytes())
    );

    let out = setup.secrets_encrypt("rotate-keys");
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(printed.contains("re-encrypted 1 secrets"), "{printed}");
    assert!(
        printed.contains("Current Rotation Stage: reencrypt_finished"),
        "{printed}"
    );
    let after = setup.stored("/registry/secrets/default/s1");
    assert!(
        after.starts_with(b"k8s:enc:aescbc:v1:aescbckey-20"),
        "{}",
        prefix(&after)
    );
    // Only the new key is left in the configuration.
    let text = std::fs::read_to_string(&config).expect("configuration");
    assert!(!text.contains("\"aescbckey\""), "{text}");

    // The restarted server reads the secret with the new key.
    let server = Server::start(setup.cmd(&["server"], &["--secrets-encryption"]));
    assert_eq!(
        setup.kubectl_ok(&["get", "secret", "s1", "-o", "jsonpath={.data.password}"]),
        VALUE_B64
    );
    server.stop();
}
