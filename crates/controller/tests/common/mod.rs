//! Test harness: an apiserver embedded in this process (`rk3s_apiserver::EmbeddedApiserver`:
//! 127.0.0.1:0, SQLite and certificates in the test's temp dir), the controller manager
//! running against it, and a "kubelet stand-in".
//!
//! The controller manager runs as `rk3s server` runs it: as `system:kube-controller-manager`
//! (the apiserver's controller certificate) with `use-service-account-credentials`, and the
//! apiserver without the `rk3s:kube-controller-manager` union role, so every loop works
//! through its own service account's least-privilege roles.
//!
//! No kubelet or containers exist in these tests: the stand-in plays the node's part by
//! patching pod status (phase Running, a pod IP, Ready=True) so that the controllers see
//! pods become ready. It never runs anything.

#![allow(dead_code, unreachable_pub)]

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::watcher;
use rk3s_apiserver::EmbeddedApiserver;
use serde_json::json;

pub struct TestCluster {
    pub apiserver: EmbeddedApiserver,
    pub kubeconfig: PathBuf,
    pub dir: tempfile::TempDir,
    pub client: kube::Client,
    stop_controllers: Option<tokio::sync::oneshot::Sender<()>>,
    controllers: Option<tokio::task::JoinHandle<()>>,
    /// While true, the kubelet stand-in marks new pods Running and Ready.
    pub kubelet_ready: Arc<AtomicBool>,
    kubelet: Option<tokio::task::JoinHandle<()>>,
}

impl TestCluster {
    /// Apiserver + controller manager (all controllers) + kubelet stand-in.
    pub async fn start() -> TestCluster {
        TestCluster::start_with(rk3s_controller::Config::default()).await
    }

    pub async fn start_with(config: rk3s_controller::Config) -> TestCluster {
        TestCluster::start_configured(|_| config).await
    }

    /// With the time-driven controllers (Job, CronJob, TTL) reading `clock`.
    pub async fn start_with_clock(
        config: rk3s_controller::Config,
        clock: Arc<dyn rk3s_controller::Clock>,
    ) -> TestCluster {
        TestCluster::start_inner(|_| config, clock).await
    }

    /// Like [`TestCluster::start_with`], with a configuration that may name files in the
    /// test's directory (the cluster's CAs are in `<dir>/tls`).
    pub async fn start_configured(
        config: impl FnOnce(&std::path::Path) -> rk3s_controller::Config,
    ) -> TestCluster {
        TestCluster::start_inner(config, Arc::new(rk3s_controller::SystemClock)).await
    }

    /// [`TestCluster::start_configured`] with the time-driven controllers reading `clock`.
    pub async fn start_configured_with_clock(
        config: impl FnOnce(&std::path::Path) -> rk3s_controller::Config,
        clock: Arc<dyn rk3s_controller::Clock>,
    ) -> TestCluster {
        TestCluster::start_inner(config, clock).await
    }

    async fn start_inner(
        config: impl FnOnce(&std::path::Path) -> rk3s_controller::Config,
        clock: Arc<dyn rk3s_controller::Clock>,
    ) -> TestCluster {
        let _ = tracing_subscriber_init();
        let dir = tempfile::tempdir().expect("temp dir");
        let config = manager_config(config(dir.path()));
        // Certificates kept in the test's directory (`<dir>/tls`): a restarted apiserver has
        // the same CAs, and tests may name the CA files in the controller's config.
        let apiserver = EmbeddedApiserver::builder()
            .data_dir(dir.path())
            .persistent_pki(true)
            .auth(rk3s_apiserver::AuthConfig {
                controller_manager_union_role: false,
                ..rk3s_apiserver::AuthConfig::default()
            })
            .start()
            .await
            .expect("apiserver starts");
        // The tests' own client: the admin client certificate (system:masters).
        let kubeconfig = apiserver.kubeconfig_path().to_path_buf();
        let client = client_for(&kubeconfig).await;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let connection = manager_connection(&apiserver).await;
        let controllers = tokio::spawn(async move {
            rk3s_controller::run_with_clock(
                config,
                connection,
                async {
                    let _ = rx.await;
                },
                clock,
            )
            .await
            .expect("controller manager runs");
        });
        let kubelet_ready = Arc::new(AtomicBool::new(true));
        let kubelet = tokio::spawn(kubelet_stand_in(client.clone(), kubelet_ready.clone()));
        TestCluster {
            apiserver,
            kubeconfig,
            dir,
            client,
            stop_controllers: Some(tx),
            controllers: Some(controllers),
            kubelet_ready,
            kubelet: Some(kubelet),
        }
    }

    /// Stops the apiserver, waits `down`, and starts a new one on the same address, store and
    /// certificates.
    pub async fn restart_apiserver(&mut self, down: Duration) {
        self.apiserver
            .restart(down)
            .await
            .expect("apiserver restarts");
    }

    /// Another controller manager against this cluster (as the first one: its own identity,
    /// per-loop service accounts), stopped by the returned sender.
    pub async fn spawn_controller_manager(
        &self,
        config: rk3s_controller::Config,
    ) -> (
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    ) {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let config = manager_config(config);
        let c = manager_connection(&self.apiserver).await;
        let h = tokio::spawn(async move {
            rk3s_controller::run(config, c, async {
                let _ = rx.await;
            })
            .await
            .expect("controller manager runs");
        });
        (tx, h)
    }

    /// Stops the controller manager and waits for it to finish.
    pub async fn stop_controllers(&mut self) {
        if let Some(tx) = self.stop_controllers.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.controllers.take() {
            h.await.expect("controller manager task");
        }
    }

    /// Runs kubectl against this cluster (on a blocking thread).
    pub async fn kubectl(&self, args: &[&str]) -> std::process::Output {
        let mut cmd = std::process::Command::new(
            std::env::var("RK3S_KUBECTL").unwrap_or_else(|_| "/usr/bin/kubectl".into()),
        );
        cmd.env("KUBECONFIG", &self.kubeconfig)
            .env("HOME", self.dir.path())
            .args(args);
        tokio::task::spawn_blocking(move || cmd.output().expect("kubectl runs"))
            .await
            .expect("kubectl thread")
    }

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
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        if let Some(h) = self.kubelet.take() {
            h.abort();
        }
        if let Some(h) = self.controllers.take() {
            h.abort();
        }
    }
}

fn tracing_subscriber_init() -> Option<()> {
    // Logs only when asked for (RUST_LOG), and only once per test binary.
    std::env::var("RUST_LOG").ok()?;
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init()
        .ok()
}

/// `config` as the harness runs every controller manager: with per-loop service accounts,
/// without a secure port.
pub fn manager_config(config: rk3s_controller::Config) -> rk3s_controller::Config {
    rk3s_controller::Config {
        use_service_account_credentials: true,
        // Tests run in parallel: no secure port (tests/serving.rs serves one).
        secure_port: 0,
        ..config
    }
}

/// The controller manager's own connection: `system:kube-controller-manager` (the apiserver's
/// controller client certificate), as `rk3s server` gives it.
pub async fn manager_connection(apiserver: &EmbeddedApiserver) -> rk3s_controller::Connection {
    let yaml = rk3s_apiserver::kubeconfig(
        &apiserver.url(),
        apiserver.ca_pem(),
        &apiserver.pki().controller,
    );
    let kubeconfig = kube::config::Kubeconfig::from_yaml(&yaml).expect("kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .expect("kube config");
    rk3s_controller::Connection::new(config).expect("kube client")
}

/// The one place tests build a client (authentication will change it).
pub async fn client_for(kubeconfig: &std::path::Path) -> kube::Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(kubeconfig).expect("kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .expect("kube config");
    kube::Client::try_from(config).expect("kube client")
}

/// A client of the admin credentials impersonating `user` in `groups` (the apiserver's
/// impersonation: what the admin may do for anyone).
pub async fn client_as(kubeconfig: &std::path::Path, user: &str, groups: &[&str]) -> kube::Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(kubeconfig).expect("kubeconfig");
    let mut config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .expect("kube config");
    config.auth_info.impersonate = Some(user.to_string());
    config.auth_info.impersonate_groups = Some(groups.iter().map(|g| g.to_string()).collect());
    kube::Client::try_from(config).expect("kube client")
}

/// Marks every Pending pod Running and Ready with a fresh pod IP, while `ready` is on.
async fn kubelet_stand_in(client: kube::Client, ready: Arc<AtomicBool>) {
    let pods: Api<Pod> = Api::all(client.clone());
    let next_ip = AtomicU32::new(2);
    let mut events = watcher(pods, watcher::Config::default()).boxed();
    let mut pending: Vec<Pod> = Vec::new();
    loop {
        let ev = tokio::time::timeout(Duration::from_millis(200), events.next()).await;
        match ev {
            Ok(Some(Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)))) => {
                pending.push(p)
            }
            Ok(None) => return,
            _ => {}
        }
        if !ready.load(Ordering::SeqCst) {
            continue;
        }
        for p in std::mem::take(&mut pending) {
            let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
            if !matches!(phase, None | Some("Pending")) || p.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let ns = p.metadata.namespace.clone().unwrap_or_default();
            let name = p.metadata.name.clone().unwrap_or_default();
            let n = next_ip.fetch_add(1, Ordering::SeqCst);
            let ip = format!("10.42.{}.{}", n / 250, n % 250 + 2);
            let now = k8s_openapi::jiff::Timestamp::now().to_string();
            let patch = json!({"status": {
                "phase": "Running",
                "podIP": ip,
                "podIPs": [{"ip": ip}],
                "conditions": [
                    {"type": "Ready", "status": "True", "lastTransitionTime": now},
                    {"type": "ContainersReady", "status": "True", "lastTransitionTime": now},
                ],
            }});
            if let Err(e) = Api::<Pod>::namespaced(client.clone(), &ns)
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(patch))
                .await
            {
                eprintln!("kubelet stand-in: cannot mark {ns}/{name} ready: {e}");
            }
        }
    }
}

/// Polls `f` every 100 ms until it returns Some, for at most `secs` seconds.
pub async fn eventually<T, F, Fut>(secs: u64, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {secs}s waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The Events in `ns` about the object `kind`/`name` (what `kubectl describe` lists).
pub async fn events_about(
    client: &kube::Client,
    ns: &str,
    kind: &str,
    name: &str,
) -> Vec<k8s_openapi::api::core::v1::Event> {
    Api::<k8s_openapi::api::core::v1::Event>::namespaced(client.clone(), ns)
        .list(&kube::api::ListParams::default().fields(&format!(
            "involvedObject.kind={kind},involvedObject.name={name}"
        )))
        .await
        .map(|l| l.items)
        .unwrap_or_default()
}

/// Waits (at most `secs`) for an Event in `ns` about `kind`/`name` with `reason` and
/// `message`, and checks the fields `kubectl describe` shows: the type, the source component
/// and the involved object.
pub async fn expect_event(
    client: &kube::Client,
    ns: &str,
    (kind, name): (&str, &str),
    (type_, reason, message): (&str, &str, &str),
    component: &str,
) -> k8s_openapi::api::core::v1::Event {
    let ev = eventually(
        30,
        &format!("a {reason} event about {kind} {name}: {message}"),
        || async {
            events_about(client, ns, kind, name)
                .await
                .into_iter()
                .find(|e| {
                    e.reason.as_deref() == Some(reason) && e.message.as_deref() == Some(message)
                })
        },
    )
    .await;
    assert_eq!(ev.type_.as_deref(), Some(type_), "{ev:?}");
    assert_eq!(
        ev.source.as_ref().and_then(|s| s.component.as_deref()),
        Some(component),
        "{ev:?}"
    );
    assert_eq!(ev.involved_object.kind.as_deref(), Some(kind));
    assert_eq!(ev.involved_object.name.as_deref(), Some(name));
    ev
}
