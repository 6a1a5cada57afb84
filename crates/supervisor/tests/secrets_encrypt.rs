//! `rk3s server --secrets-encryption` and `rk3s secrets-encrypt` (a client of the running
//! server, as K3s') through the real binary, with their own data dir and port.

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
    // Servers of parallel tests share the host: no scheduler or controller manager secure
    // port unless a test asks for one with the flags (which win over the environment).
    cmd.env("RK3S_KUBE_SCHEDULER_ARG", "secure-port=0")
        .env("RK3S_KUBE_CONTROLLER_MANAGER_ARG", "secure-port=0");
    cmd
}

struct Setup {
    dir: tempfile::TempDir,
    port: u16,
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
        Setup { dir, port }
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
    /// `rk3s secrets-encrypt <action> --data-dir <ours> --server <ours>` + `args`.
    fn secrets_encrypt(&self, action: &str, args: &[&str]) -> Output {
        let mut cmd = rk3s_cmd(self.dir.path());
        cmd.args(["secrets-encrypt", action, "--data-dir"])
            .arg(self.path("data"))
            .arg("--server")
            .arg(format!("https://127.0.0.1:{}", self.port))
            .args(args);
        cmd.output().expect("rk3s secrets-encrypt runs")
    }
    /// [`Setup::secrets_encrypt`], which must succeed; its standard output.
    fn secrets_encrypt_ok(&self, action: &str) -> String {
        let out = self.secrets_encrypt(action, &[]);
        assert!(
            out.status.success(),
            "secrets-encrypt {action}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
    /// The bytes of the SQLite database and its WAL, as they are on disk.
    fn database_bytes(&self) -> Vec<u8> {
        let db = self.path("data").join("server/db");
        let mut all = Vec::new();
        for entry in std::fs::read_dir(db).expect("db dir").flatten() {
            all.extend(std::fs::read(entry.path()).unwrap_or_default());
        }
        all
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

/// The key name of an `aescbc` value (`k8s:enc:aescbc:v1:<name>:...`).
fn key_name(value: &[u8]) -> String {
    let rest = value
        .strip_prefix(b"k8s:enc:aescbc:v1:")
        .expect("an aescbc value");
    let end = rest.iter().position(|b| *b == b':').expect("name ends");
    String::from_utf8_lossy(&rest[..end]).into_owned()
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[test]
fn secrets_encryption_is_managed_on_the_running_server() {
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
    let before = setup.stored("/registry/secrets/default/s1");
    assert!(
        before.starts_with(b"k8s:enc:aescbc:v1:aescbckey:"),
        "{}",
        prefix(&before)
    );

    let status = setup.secrets_encrypt_ok("status");
    assert!(status.contains("Encryption Status: Enabled"), "{status}");
    assert!(status.contains("Current Rotation Stage: start"), "{status}");
    assert!(status.contains(" *      AES-CBC   aescbckey\n"), "{status}");
    let json = setup.secrets_encrypt("status", &["-o", "json"]);
    let json: serde_json::Value = serde_json::from_slice(&json.stdout).expect("JSON status");
    assert_eq!(json["enable"], true);
    assert_eq!(json["activekey"], "AES-CBC aescbckey");

    // A wrong token is refused before anything changes.
    let out = setup.secrets_encrypt("rotate-keys", &["--token", "wrong"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("401"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Out of order: rotate needs a prepared key.
    let out = setup.secrets_encrypt("rotate", &[]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("current stage is start"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // rotate-keys on the running server: a new active key, every secret rewritten with it,
    // the old key dropped — no restart.
    let printed = setup.secrets_encrypt_ok("rotate-keys");
    assert!(printed.contains("keys rotated"), "{printed}");
    let status = setup.secrets_encrypt_ok("status");
    assert!(
        status.contains("Current Rotation Stage: reencrypt_finished"),
        "{status}"
    );
    assert!(status.contains("AES-CBC   aescbckey-20"), "{status}");
    assert!(!status.contains("aescbckey\n"), "old key dropped: {status}");
    let after = setup.stored("/registry/secrets/default/s1");
    assert!(
        after.starts_with(b"k8s:enc:aescbc:v1:aescbckey-20"),
        "{}",
        prefix(&after)
    );
    let text = std::fs::read_to_string(&config).expect("configuration");
    assert!(!text.contains("\"aescbckey\""), "{text}");
    // The old secret reads back through the reloaded configuration, and a new one is written
    // with the new key.
    assert_eq!(
        setup.kubectl_ok(&["get", "secret", "s1", "-o", "jsonpath={.data.password}"]),
        VALUE_B64
    );
    setup.kubectl_ok(&[
        "create",
        "secret",
        "generic",
        "s2",
        "--from-literal=password=s3cr3t-value-xyz",
    ]);
    assert!(
        setup
            .stored("/registry/secrets/default/s2")
            .starts_with(b"k8s:enc:aescbc:v1:aescbckey-20")
    );

    // K3s' staged rotation: prepare, rotate, then reencrypt in the background.
    assert!(
        setup
            .secrets_encrypt_ok("prepare")
            .contains("prepare completed")
    );
    let status = setup.secrets_encrypt_ok("status");
    assert!(
        status.contains("Current Rotation Stage: prepare"),
        "{status}"
    );
    let out = setup.secrets_encrypt("prepare", &[]);
    assert!(!out.status.success(), "a second prepare is out of order");
    assert!(
        setup
            .secrets_encrypt_ok("rotate")
            .contains("rotate completed")
    );
    assert!(
        setup
            .secrets_encrypt_ok("reencrypt")
            .contains("reencryption started")
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let status = setup.secrets_encrypt_ok("status");
        if status.contains("Current Rotation Stage: reencrypt_finished") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{status}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let current = setup.stored("/registry/secrets/default/s1");
    assert_ne!(
        key_name(&current),
        key_name(&after),
        "re-encrypted with the rotated key"
    );
    let status = setup.secrets_encrypt_ok("status");
    assert!(
        status.contains(&format!(" *      AES-CBC   {}\n", key_name(&current))),
        "{status}"
    );
    assert_eq!(
        setup.kubectl_ok(&["get", "secret", "s2", "-o", "jsonpath={.data.password}"]),
        VALUE_B64
    );

    // Nowhere in the database file is the secret in clear text (raw or base64).
    server.stop();
    let bytes = setup.database_bytes();
    assert!(!bytes.is_empty());
    assert!(!contains(&bytes, "s3cr3t-value-xyz"));
    assert!(!contains(&bytes, VALUE_B64));

    // The restarted server reads the secrets with the current key.
    let server = Server::start(setup.cmd(&["server"], &["--secrets-encryption"]));
    assert_eq!(
        setup.kubectl_ok(&["get", "secret", "s1", "-o", "jsonpath={.data.password}"]),
        VALUE_B64
    );
    server.stop();
}
