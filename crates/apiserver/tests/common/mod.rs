//! Test harness: an apiserver in this process on 127.0.0.1:0 over a SQLite store in a temp
//! dir, with a kubeconfig for it.

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Output};

use rk3s_apiserver::{Apiserver, RunningApiserver};
use rk3s_datastore::Store;

/// A running apiserver and what clients need to reach it.
pub struct TestServer {
    pub server: RunningApiserver,
    pub store: Store,
    pub kubeconfig: PathBuf,
    pub dir: tempfile::TempDir,
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(rk3s_apiserver::AuthConfig::default()).await
    }

    /// Like [`TestServer::start`] with these authentication settings.
    pub async fn start_with(auth: rk3s_apiserver::AuthConfig) -> TestServer {
        Self::start_configured(|a| a.auth(auth)).await
    }

    /// A server that accepts a join token (K3s' join endpoints); returns the token too.
    pub async fn start_joinable() -> (TestServer, rk3s_apiserver::JoinToken) {
        let pki = rk3s_apiserver::Pki::generate(&rk3s_apiserver::PkiOptions {
            node_ips: vec!["127.0.0.1".parse().expect("ip")],
            ..rk3s_apiserver::PkiOptions::default()
        })
        .expect("PKI");
        let token = rk3s_apiserver::JoinToken::generate(&pki.server_ca.cert_pem, "server");
        let accepted = token.clone();
        let t = Self::start_configured(move |a| a.pki(pki).join_token(accepted)).await;
        (t, token)
    }

    /// Like [`TestServer::start`], with the apiserver configured by `configure` (encryption,
    /// audit, ...).
    pub async fn start_configured(configure: impl FnOnce(Apiserver) -> Apiserver) -> TestServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = dir.path().join("state.db");
        let store = rk3s_datastore::connect(&rk3s_datastore::Config {
            data_dir: dir.path().to_path_buf(),
            ..rk3s_datastore::Config::for_endpoint(format!("sqlite://{}", db.display()))
        })
        .await
        .expect("SQLite store");
        let listen: SocketAddr = "127.0.0.1:0".parse().expect("address");
        let server = configure(Apiserver::new(store.clone()))
            .serve(listen)
            .await
            .expect("apiserver starts");
        // The admin kubeconfig: the admin client certificate (system:masters).
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(&kubeconfig, server.admin_kubeconfig()).expect("kubeconfig written");
        TestServer {
            server,
            store,
            kubeconfig,
            dir,
        }
    }

    /// Stops this apiserver and starts another, configured by `configure`, on the same store
    /// and directory (a fresh PKI; the kubeconfig is rewritten).
    pub async fn restart(self, configure: impl FnOnce(Apiserver) -> Apiserver) -> TestServer {
        let TestServer {
            server,
            store,
            kubeconfig,
            dir,
        } = self;
        server.shutdown().await;
        let listen: SocketAddr = "127.0.0.1:0".parse().expect("address");
        let server = configure(Apiserver::new(store.clone()))
            .serve(listen)
            .await
            .expect("apiserver starts again");
        std::fs::write(&kubeconfig, server.admin_kubeconfig()).expect("kubeconfig written");
        TestServer {
            server,
            store,
            kubeconfig,
            dir,
        }
    }

    /// A kubectl command using this server.
    pub fn kubectl_cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(kubectl_bin());
        cmd.env("KUBECONFIG", &self.kubeconfig)
            .env("HOME", self.dir.path())
            .args(args);
        cmd
    }

    /// Runs kubectl (on a blocking thread, so the in-process server keeps serving).
    pub async fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_stdin(args, "").await
    }

    /// Runs kubectl with `stdin` as its standard input.
    pub async fn kubectl_stdin(&self, args: &[&str], stdin: &str) -> Output {
        let mut cmd = self.kubectl_cmd(args);
        let stdin = stdin.to_string();
        tokio::task::spawn_blocking(move || {
            use std::io::Write as _;
            use std::process::Stdio;
            let mut child = cmd
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("kubectl runs (install it at /usr/bin/kubectl or set RK3S_KUBECTL)");
            if let Some(mut input) = child.stdin.take() {
                input.write_all(stdin.as_bytes()).expect("stdin written");
            }
            child.wait_with_output().expect("kubectl finishes")
        })
        .await
        .expect("kubectl thread")
    }

    /// Runs kubectl and returns its stdout, failing the test if it fails.
    pub async fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args).await;
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub async fn client(&self) -> kube::Client {
        let kubeconfig = kube::config::Kubeconfig::read_from(&self.kubeconfig).expect("kubeconfig");
        let config = kube::Config::from_custom_kubeconfig(
            kubeconfig,
            &kube::config::KubeConfigOptions::default(),
        )
        .await
        .expect("kube config");
        kube::Client::try_from(config).expect("kube client")
    }
}

impl TestServer {
    /// A kubeconfig file for a user with a client certificate signed by the server's client CA:
    /// `user` in `groups`.
    pub fn user_kubeconfig(&self, user: &str, groups: &[&str]) -> PathBuf {
        let cert = self
            .server
            .pki()
            .issue_client_cert(user, groups)
            .expect("client certificate");
        let path = self
            .dir
            .path()
            .join(format!("kubeconfig-{}", user.replace(':', "_")));
        let contents = rk3s_apiserver::kubeconfig(&self.server.url(), self.server.ca_pem(), &cert);
        std::fs::write(&path, contents).expect("kubeconfig written");
        path
    }

    /// The admin client certificate and key as files (for curl's `--cert`/`--key`).
    pub fn admin_cert_files(&self) -> (PathBuf, PathBuf) {
        let (cert, key) = (
            self.dir.path().join("admin.crt"),
            self.dir.path().join("admin.key"),
        );
        std::fs::write(&cert, &self.server.pki().admin.cert_pem).expect("cert written");
        std::fs::write(&key, &self.server.pki().admin.key_pem).expect("key written");
        (cert, key)
    }

    /// A kubeconfig file authenticating with a bearer token.
    pub fn token_kubeconfig(&self, name: &str, token: &str) -> PathBuf {
        use base64::Engine as _;
        let ca = base64::engine::general_purpose::STANDARD.encode(self.server.ca_pem());
        let path = self.dir.path().join(format!("kubeconfig-token-{name}"));
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {}\n    certificate-authority-data: {ca}\ncontexts:\n- name: c\n  context: {{cluster: c, user: u}}\ncurrent-context: c\nusers:\n- name: u\n  user: {{token: {token}}}\n",
                self.server.url()
            ),
        )
        .expect("kubeconfig written");
        path
    }

    /// kubectl with another kubeconfig.
    pub async fn kubectl_as(&self, kubeconfig: &std::path::Path, args: &[&str]) -> Output {
        let mut cmd = Command::new(kubectl_bin());
        cmd.env("KUBECONFIG", kubeconfig)
            .env("HOME", self.dir.path())
            .args(args);
        tokio::task::spawn_blocking(move || cmd.output().expect("kubectl runs"))
            .await
            .expect("kubectl thread")
    }

    /// A kube client from a kubeconfig file.
    pub async fn client_from(&self, kubeconfig: &std::path::Path) -> kube::Client {
        let kubeconfig = kube::config::Kubeconfig::read_from(kubeconfig).expect("kubeconfig");
        let config = kube::Config::from_custom_kubeconfig(
            kubeconfig,
            &kube::config::KubeConfigOptions::default(),
        )
        .await
        .expect("kube config");
        kube::Client::try_from(config).expect("kube client")
    }
}

pub fn kubectl_bin() -> String {
    std::env::var("RK3S_KUBECTL").unwrap_or_else(|_| "/usr/bin/kubectl".to_string())
}
