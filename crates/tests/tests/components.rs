//! Every control-plane component as its own process, pointed at the others by URL and
//! kubeconfig, as the systemd units of `crates/deploy` run them:
//!
//! - `rk3s-datastore` serves the etcd v3 API over SQLite on a free loopback port;
//! - `rk3s-apiserver` stores through it (`--datastore-endpoint http://127.0.0.1:<port>`), creates
//!   its PKI and writes the components' kubeconfigs to `<data-dir>/server/cred/`;
//! - `rk3s-scheduler` and `rk3s-controller` run with those kubeconfigs (their own client
//!   certificates) and their own config files;
//!
//! and a Deployment gets its pods created (controller) and bound to the Node the test registers
//! (scheduler). No kubelet exists: the node is an API object and pods never run. Then the
//! apiserver alone on a real etcd (Debian's `etcd`, started by the test).
//!
//! The binaries come from the target dir (see the harness in `src/lib.rs`).

use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, ListParams, PostParams};
use rk3s_tests::{
    BINARIES, EtcdProcess, Process, command, eventually, free_port, make_node, port_open,
    ready_client,
};

/// Bound on each wait, so that a broken component fails the test instead of hanging it.
const WAIT: Duration = Duration::from_secs(60);

#[test]
fn every_binary_has_help_naming_its_config_file_flag() {
    let dir = tempfile::tempdir().expect("temp dir");
    for name in BINARIES {
        let args: &[&str] = if *name == "rk3s" {
            &["server", "--help"]
        } else {
            &["--help"]
        };
        let out = command(name, dir.path())
            .args(args)
            .output()
            .expect("binary runs");
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{name} {args:?}: {}", out.status);
        assert!(
            help.contains("--config"),
            "{name} --help names --config:\n{help}"
        );
        if matches!(*name, "rk3s-scheduler" | "rk3s-controller") {
            assert!(help.contains("--kubeconfig"), "{name}:\n{help}");
        }
        if matches!(*name, "rk3s-apiserver" | "rk3s-datastore") {
            assert!(help.contains("--datastore-endpoint"), "{name}:\n{help}");
        }
    }
}

/// A bad config file stops each component binary before it starts anything, with a message
/// naming the file and the key: a named file that is missing, a key that is no flag (a typo
/// must not fall back to a default), a value of the wrong type. A good file is read.
#[test]
fn every_component_refuses_a_bad_config_file_naming_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("c.yaml");
    let fails = |name: &str, what: &str, wanted: &[&str]| {
        let out = command(name, dir.path())
            .args(["--config", &file.display().to_string(), "--version"])
            .output()
            .expect("binary runs");
        // `--version` wins over a bad file: clap answers before the file is read.
        assert!(out.status.success(), "{name} --version");
        let out = command(name, dir.path())
            .args(["--config", &file.display().to_string()])
            .output()
            .expect("binary runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{name} with {what} starts:\n{stderr}"
        );
        for w in wanted {
            assert!(
                stderr.contains(w),
                "{name} with {what}: {w:?} not in\n{stderr}"
            );
        }
        // Refused before anything starts: no listener, no data dir, no log past the error.
        assert!(!stderr.contains("serving"), "{name}: {stderr}");
    };
    let path = file.display().to_string();
    for (name, key, bad) in [
        (
            "rk3s-datastore",
            "datastore-endpoint",
            "datastore-endpoint: [1]",
        ),
        (
            "rk3s-apiserver",
            "https-listen-port",
            "https-listen-port: many",
        ),
        ("rk3s-scheduler", "parallel-binds", "parallel-binds: many"),
        (
            "rk3s-controller",
            "concurrent-syncs",
            "concurrent-syncs: many",
        ),
    ] {
        let _ = std::fs::remove_file(&file);
        fails(name, "a missing file", &[&path]);
        std::fs::write(&file, format!("{key}-typo: 1\n")).expect("config");
        fails(name, "an unknown key", &[&path, &format!("{key}-typo")]);
        std::fs::write(&file, format!("{bad}\n")).expect("config");
        fails(name, "a bad value", &[&path, key]);
    }
    // A kubeconfig is a flag of the scheduler and the controller, not a key of their files.
    std::fs::write(&file, "kubeconfig: /nowhere\n").expect("config");
    fails(
        "rk3s-scheduler",
        "a kubeconfig key",
        &[&path, "kubeconfig only as flags"],
    );
}

/// The systemd units' command lines are accepted by the real binaries: each `ExecStart=` with
/// `--help` appended parses (an unknown flag or a bad value fails before help is printed).
#[test]
fn systemd_units_use_flags_the_binaries_accept() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut checked = 0;
    for unit in rk3s_deploy::SYSTEMD_UNITS {
        let Some(argv) = unit.exec_start() else {
            continue;
        };
        let (program, args) = argv.split_first().expect("a program");
        let name = Path::new(program)
            .file_name()
            .and_then(|n| n.to_str())
            .expect("program name");
        let out = command(name, dir.path())
            .args(args)
            .arg("--help")
            .output()
            .expect("binary runs");
        assert!(
            out.status.success(),
            "{}: `{} --help` fails: {}",
            unit.name,
            argv.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        checked += 1;
    }
    assert_eq!(checked, 5, "one command line per service");
}

/// Waits for the apiserver's kubeconfig `file` under `<data>/server/cred` and a client that
/// reaches it.
async fn cred_client(data: &Path, file: &str, processes: &mut [&mut Process]) -> kube::Client {
    ready_client(&data.join("server/cred").join(file), WAIT, processes).await
}

#[tokio::test(flavor = "multi_thread")]
async fn components_alone_run_a_deployment() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let etcd_port = free_port().expect("free port");
    let api_port = free_port().expect("free port");

    let mut datastore = Process::spawn(
        "rk3s-datastore",
        dir.path(),
        [
            "--listen-address".to_string(),
            format!("127.0.0.1:{etcd_port}"),
            "--data-dir".into(),
            data.display().to_string(),
        ],
    );
    // Its own log line, not just an open port: another test's etcd may have taken the port
    // between `free_port` and the bind (then the datastore exits and this fails saying so).
    let deadline = std::time::Instant::now() + WAIT;
    while !(datastore.log().contains("serving the etcd v3 API") && port_open(etcd_port)) {
        datastore.assert_running();
        assert!(
            std::time::Instant::now() < deadline,
            "the datastore did not serve within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        data.join("server/db/state.db").is_file(),
        "SQLite in the data dir"
    );
    // systemd's Type=notify (the units in crates/deploy): READY=1 once it serves.
    let ready = datastore.ready_notified(WAIT).await;
    assert!(
        ready.contains(&format!(
            "STATUS=serving the etcd v3 API on 127.0.0.1:{etcd_port}"
        )),
        "{ready:?}"
    );

    // The apiserver's own config file (its flags' keys), so /etc/rk3s/apiserver.yaml is never
    // read.
    let api_config = dir.path().join("config.yaml");
    std::fs::write(&api_config, format!("https-listen-port: {api_port}\n")).expect("config");
    let mut apiserver = Process::spawn(
        "rk3s-apiserver",
        dir.path(),
        [
            "--config".to_string(),
            api_config.display().to_string(),
            "--data-dir".into(),
            data.display().to_string(),
            "--datastore-endpoint".into(),
            format!("http://127.0.0.1:{etcd_port}"),
        ],
    );
    let admin = cred_client(
        &data,
        "admin.kubeconfig",
        &mut [&mut datastore, &mut apiserver],
    )
    .await;
    // READY=1 only once /readyz is ok and the kubeconfigs exist: they are read below.
    let ready = apiserver.ready_notified(WAIT).await;
    assert!(
        ready.contains(&format!(
            "STATUS=serving the API on https://127.0.0.1:{api_port}"
        )),
        "{ready:?}"
    );
    for file in ["admin", "controller", "scheduler"] {
        let path = data.join(format!("server/cred/{file}.kubeconfig"));
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).expect("kubeconfig").permissions(),
        );
        assert_eq!(mode & 0o777, 0o600, "{} mode {mode:o}", path.display());
        let text = std::fs::read_to_string(&path).expect("kubeconfig");
        assert!(
            text.contains(&format!("https://127.0.0.1:{api_port}")),
            "{text}"
        );
    }

    // Scheduler and controller, each with its own config file and kubeconfig.
    let scheduler_config = dir.path().join("scheduler.yaml");
    std::fs::write(
        &scheduler_config,
        "scheduler-name: e2e-scheduler\nleader-elect-identity: e2e-scheduler-1\n",
    )
    .expect("config");
    let controller_config = dir.path().join("controller.yaml");
    std::fs::write(&controller_config, "identity: e2e-controller-1\n").expect("config");
    let cred = data.join("server/cred");
    // Their secure ports on free ports, not upstream's 10259/10257 a cluster on this machine
    // may hold.
    let scheduler_port = free_port().expect("free port");
    let controller_port = free_port().expect("free port");
    let mut scheduler = Process::spawn(
        "rk3s-scheduler",
        dir.path(),
        [
            "--config".to_string(),
            scheduler_config.display().to_string(),
            "--kubeconfig".into(),
            cred.join("scheduler.kubeconfig").display().to_string(),
            "--secure-port".into(),
            scheduler_port.to_string(),
        ],
    );
    let mut controller = Process::spawn(
        "rk3s-controller",
        dir.path(),
        [
            "--config".to_string(),
            controller_config.display().to_string(),
            "--kubeconfig".into(),
            cred.join("controller.kubeconfig").display().to_string(),
            "--secure-port".into(),
            controller_port.to_string(),
        ],
    );

    make_node(&admin, "node-a").await;
    let deployment: Deployment = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                // The scheduler's config file names it so: only it schedules these pods.
                "spec": {
                    "schedulerName": "e2e-scheduler",
                    "containers": [{"name": "c", "image": "busybox"}],
                },
            },
        },
    }))
    .expect("deployment");
    Api::<Deployment>::namespaced(admin.clone(), "default")
        .create(&PostParams::default(), &deployment)
        .await
        .expect("deployment created");

    let pods: Api<Pod> = Api::namespaced(admin.clone(), "default");
    let bound = eventually(
        "two pods of the Deployment bound to node-a",
        WAIT,
        &mut [
            &mut datastore,
            &mut apiserver,
            &mut scheduler,
            &mut controller,
        ],
        || async {
            let list = pods
                .list(&ListParams::default().labels("app=web"))
                .await
                .ok()?;
            let nodes: Vec<String> = list
                .items
                .iter()
                .filter_map(|p| p.spec.as_ref()?.node_name.clone())
                .collect();
            (list.items.len() == 2 && nodes.len() == 2).then_some(list.items)
        },
    )
    .await;
    for pod in &bound {
        let owner = &pod.metadata.owner_references.as_ref().expect("owner")[0];
        assert_eq!(owner.kind, "ReplicaSet", "the controller made the pod");
        assert_eq!(
            pod.spec.as_ref().and_then(|s| s.node_name.as_deref()),
            Some("node-a")
        );
    }

    // Both hold their Leases, under the identities their config files gave them.
    let leases: Api<Lease> = Api::namespaced(admin.clone(), "kube-system");
    for (lease, holder) in [
        ("kube-scheduler", "e2e-scheduler-1"),
        ("kube-controller-manager", "e2e-controller-1"),
    ] {
        let got = leases.get(lease).await.expect("lease");
        let identity = got.spec.and_then(|s| s.holder_identity).unwrap_or_default();
        assert!(identity.starts_with(holder), "{lease} held by {identity:?}");
    }

    // Each answers its health check on its secure port (HTTPS, self-signed).
    for port in [scheduler_port, controller_port] {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let got = rk3s_common::serving::probe(addr, "/healthz", WAIT)
            .await
            .expect("health probe");
        assert_eq!(got, (200, "ok".to_string()), "port {port}");
    }

    // SIGTERM stops each cleanly, last started first, each telling systemd STOPPING=1.
    for p in [&mut scheduler, &mut controller] {
        p.ready_notified(WAIT).await;
    }
    for p in [controller, scheduler, apiserver, datastore] {
        let name = p.name.clone();
        let (status, notified) = p.terminate_notified();
        assert!(status.success(), "{name} exits 0 on SIGTERM: {status}");
        assert_eq!(
            notified.last().map(|m| m.trim_end()),
            Some("STOPPING=1"),
            "{name}: {notified:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn apiserver_alone_on_a_real_etcd() {
    let etcd = EtcdProcess::start().expect("etcd starts (Debian etcd-server)");
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let api_port = free_port().expect("free port");
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, "").expect("config");
    let args = [
        "--config".to_string(),
        config.display().to_string(),
        "--data-dir".into(),
        data.display().to_string(),
        "--https-listen-port".into(),
        api_port.to_string(),
        "--datastore-endpoint".into(),
        etcd.endpoint.clone(),
    ];
    let mut apiserver = Process::spawn("rk3s-apiserver", dir.path(), &args);
    let admin = cred_client(&data, "admin.kubeconfig", &mut [&mut apiserver]).await;
    let cm: ConfigMap = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "in-etcd"},
        "data": {"k": "v"},
    }))
    .expect("configmap");
    Api::<ConfigMap>::namespaced(admin, "default")
        .create(&PostParams::default(), &cm)
        .await
        .expect("created");
    assert!(
        !data.join("server/db/state.db").exists(),
        "no SQLite file: the objects are in etcd"
    );

    // The object is in etcd, under its upstream key.
    let out = std::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args([
            "--endpoints",
            &etcd.endpoint,
            "get",
            "--keys-only",
            "/registry/configmaps/default/in-etcd",
        ])
        .output()
        .expect("etcdctl runs (Debian etcd-client)");
    let keys = String::from_utf8_lossy(&out.stdout);
    assert!(
        keys.contains("/registry/configmaps/default/in-etcd"),
        "etcdctl: {keys}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A restarted apiserver on the same etcd serves it.
    let status = apiserver.terminate();
    assert!(status.success(), "apiserver exits 0 on SIGTERM: {status}");
    let mut apiserver = Process::spawn("rk3s-apiserver", dir.path(), &args);
    let admin = cred_client(&data, "admin.kubeconfig", &mut [&mut apiserver]).await;
    let got = Api::<ConfigMap>::namespaced(admin, "default")
        .get("in-etcd")
        .await
        .expect("object survives the restart");
    assert_eq!(
        got.data.and_then(|d| d.get("k").cloned()).as_deref(),
        Some("v")
    );
}
