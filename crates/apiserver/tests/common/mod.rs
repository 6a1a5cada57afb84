//! Test harness: an apiserver in this process on 127.0.0.1:0 over a SQLite store in a temp
//! dir, with a kubeconfig for it.

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Output};

use rk3s_apiserver::{Apiserver, RunningApiserver};
use rk3s_datastore::Store;

/// The audit log's file name in a [`TestServer::start_audited`] server's directory.
const AUDIT_LOG: &str = "audit.log";

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
        Self::start_in(tempfile::tempdir().expect("temp dir"), configure).await
    }

    async fn start_in(
        dir: tempfile::TempDir,
        configure: impl FnOnce(Apiserver) -> Apiserver,
    ) -> TestServer {
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

    /// Like [`TestServer::start`], writing an audit log of ConfigMap requests at level
    /// `Metadata` (stage `RequestReceived` omitted); read with [`TestServer::audit_event`].
    pub async fn start_audited() -> TestServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let policy = dir.path().join("audit-policy.yaml");
        std::fs::write(
            &policy,
            "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n\
             - level: Metadata\n  resources: [{group: \"\", resources: [configmaps]}]\n",
        )
        .expect("policy written");
        let audit =
            rk3s_apiserver::audit::Audit::from_config(&rk3s_apiserver::audit::AuditConfig {
                policy_file: Some(policy),
                log_path: Some(dir.path().join(AUDIT_LOG)),
                ..rk3s_apiserver::audit::AuditConfig::default()
            })
            .expect("audit configuration")
            .expect("audit on");
        Self::start_in(dir, |a| a.audit(Some(audit))).await
    }

    /// The audit event of the `verb` request on the object `name` (a server from
    /// [`TestServer::start_audited`]).
    pub fn audit_event(&self, verb: &str, name: &str) -> serde_json::Value {
        let events = std::fs::read_to_string(self.dir.path().join(AUDIT_LOG)).expect("audit log");
        events
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("JSON"))
            .find(|e| e["objectRef"]["name"] == name && e["verb"] == verb)
            .unwrap_or_else(|| panic!("no audit event of {verb} {name} in {events}"))
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

/// A webhook on loopback for admission and conversion tests: HTTPS with its own CA (hand
/// `ca_bundle` to the webhook configuration), every `POST` answered by `reply`, which gets
/// the request's path and query, and its JSON body (the review).
pub struct TestWebhook {
    pub addr: SocketAddr,
    /// Base64 of the CA's PEM, as `clientConfig.caBundle` takes it.
    pub ca_bundle: String,
    /// Every request seen: path and query, and body.
    pub seen: std::sync::Arc<std::sync::Mutex<Vec<(String, serde_json::Value)>>>,
    /// TLS connections accepted so far.
    pub connections: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

type WebhookReply = dyn Fn(&str, &serde_json::Value) -> serde_json::Value + Send + Sync;

impl TestWebhook {
    /// Starts a webhook whose certificate names `127.0.0.1` and `names` (e.g. a service's
    /// `<name>.<namespace>.svc`).
    pub async fn start(
        names: &[&str],
        reply: impl Fn(&str, &serde_json::Value) -> serde_json::Value + Send + Sync + 'static,
    ) -> TestWebhook {
        use base64::Engine as _;
        use std::sync::Arc;

        let ca_key = rcgen::KeyPair::generate().expect("CA key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).expect("CA");
        let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_cert.pem(), ca_key).expect("issuer");
        let key = rcgen::KeyPair::generate().expect("key");
        let mut sans = vec!["127.0.0.1".to_string()];
        sans.extend(names.iter().map(|n| n.to_string()));
        let cert = rcgen::CertificateParams::new(sans)
            .expect("params")
            .signed_by(&key, &issuer)
            .expect("serving cert");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).expect("key"),
            )
            .expect("tls config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let reply: Arc<WebhookReply> = Arc::new(reply);
        let seen2 = seen.clone();
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let accepted = connections.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, seen, reply) = (acceptor.clone(), seen2.clone(), reply.clone());
                let accepted = accepted.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let service = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let (seen, reply) = (seen.clone(), reply.clone());
                            async move {
                                let at = req
                                    .uri()
                                    .path_and_query()
                                    .map(|p| p.to_string())
                                    .unwrap_or_default();
                                let body = axum::body::to_bytes(
                                    axum::body::Body::new(req.into_body()),
                                    usize::MAX,
                                )
                                .await
                                .unwrap_or_default();
                                let review: serde_json::Value =
                                    serde_json::from_slice(&body).unwrap_or_default();
                                let answer = reply(&at, &review);
                                seen.lock().expect("lock").push((at, review));
                                Ok::<_, std::convert::Infallible>(
                                    hyper::Response::builder()
                                        .header("content-type", "application/json")
                                        .body(axum::body::Body::from(answer.to_string()))
                                        .expect("response"),
                                )
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        TestWebhook {
            addr,
            ca_bundle: base64::engine::general_purpose::STANDARD.encode(ca_cert.pem()),
            seen,
            connections,
        }
    }

    /// `https://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.addr)
    }
}

/// The Status of a failed API call (panics on any other error).
pub fn api_status(err: kube::Error) -> kube::core::Status {
    match err {
        kube::Error::Api(status) => *status,
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// The Status of a 422 `Invalid`, after checking it is one.
pub fn invalid_status(err: kube::Error) -> kube::core::Status {
    let status = api_status(err);
    assert_eq!(
        (status.code, status.reason.as_str()),
        (422, "Invalid"),
        "{}",
        status.message
    );
    status
}

/// `field: message` of each cause of a 422 `Invalid`, after checking it is one.
pub fn invalid_causes(err: kube::Error) -> Vec<String> {
    invalid_status(err)
        .details
        .expect("details")
        .causes
        .into_iter()
        .map(|c| format!("{}: {}", c.field, c.message))
        .collect()
}

/// Merge-patches `status` through the object's `/status`.
pub async fn patch_status<K>(
    api: &kube::Api<K>,
    name: &str,
    status: serde_json::Value,
) -> Result<K, kube::Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.patch_status(
        name,
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(serde_json::json!({ "status": status })),
    )
    .await
}
