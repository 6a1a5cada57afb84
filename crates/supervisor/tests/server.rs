//! `rk3s server` and `rk3s kubectl` through the real binary, each test with its own data dir,
//! kubeconfig path and ports (never /var/lib/rk3s, /etc/rk3s or 6443).

mod common;

use std::io::{BufRead as _, BufReader};
use std::os::unix::fs::PermissionsExt as _;
use std::process::{Command, Stdio};

use common::{READY, Server, Setup, free_port, port_arg, rk3s_cmd};

const CONFIGMAP: &str = r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"survivor","namespace":"default"},"data":{"k":"v"}}"#;

const TOKEN_OBJECTS: &str = r#"{"apiVersion":"v1","kind":"List","items":[
{"apiVersion":"v1","kind":"ServiceAccount","metadata":{"name":"robot","namespace":"default"}},
{"apiVersion":"v1","kind":"Secret","type":"kubernetes.io/service-account-token","metadata":{"name":"robot-token","namespace":"default","annotations":{"kubernetes.io/service-account.name":"robot"}}}]}"#;

#[test]
fn server_serves_kubectl_and_keeps_objects_across_a_restart() {
    let setup = Setup::new("cluster-domain: cluster.local\n");
    let port = free_port().expect("free port");
    let (server, ready) =
        Server::start(setup.server_cmd(&["--https-listen-port", &port_arg(port)]));
    assert!(
        ready.contains(&format!(
            "{READY}{}, API https://127.0.0.1:{port}",
            setup.kubeconfig().display()
        )),
        "{ready}"
    );
    let mode = std::fs::metadata(setup.kubeconfig())
        .expect("kubeconfig written")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "kubeconfig mode {mode:o}");
    assert!(setup.data_dir().join("server/db/state.db").is_file());

    let namespaces = setup.kubectl_ok(&["get", "ns", "-o", "name"], "");
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        assert!(
            namespaces.contains(&format!("namespace/{ns}\n")),
            "{namespaces}"
        );
    }
    assert_eq!(setup.kubectl_ok(&["get", "--raw", "/readyz"], ""), "ok");
    setup.kubectl_ok(&["create", "-f", "-"], CONFIGMAP);

    // Legacy service-account tokens: the controller manager fills token Secrets (signing with
    // server/tls/service.key), and the token logs in as the service account.
    setup.kubectl_ok(&["create", "-f", "-"], TOKEN_OBJECTS);
    let mut token = String::new();
    for _ in 0..600 {
        let out = setup.kubectl(
            &[
                "get",
                "secret",
                "robot-token",
                "-o",
                "go-template={{if .data.token}}{{.data.token | base64decode}}{{end}}",
            ],
            "",
        );
        token = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !token.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(!token.is_empty(), "the token Secret was never filled");
    let out = Command::new("/usr/bin/kubectl")
        .args(["--kubeconfig", "/dev/null", "--server"])
        .arg(format!("https://127.0.0.1:{port}"))
        .arg("--certificate-authority")
        .arg(setup.data_dir().join("server/tls/server-ca.crt"))
        .args(["--token", &token, "auth", "whoami", "-o"])
        .arg("jsonpath={.status.userInfo.username}")
        .env("HOME", setup.dir.path())
        .output()
        .expect("kubectl runs");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "system:serviceaccount:default:robot",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // `rk3s kubectl` with the admin kubeconfig from RK3S_KUBECONFIG.
    let out = rk3s_cmd(setup.dir.path())
        .env("RK3S_KUBECONFIG", setup.kubeconfig())
        .args(["kubectl", "get", "ns", "kube-system", "-o", "name"])
        .output()
        .expect("rk3s kubectl runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "namespace/kube-system\n"
    );
    // Without RK3S_KUBECONFIG: `write-kubeconfig` from the config file.
    let kubectl_config = setup.path("kubectl-config.yaml");
    std::fs::write(
        &kubectl_config,
        format!("write-kubeconfig: {}\n", setup.kubeconfig().display()),
    )
    .expect("config written");
    let out = rk3s_cmd(setup.dir.path())
        .env("RK3S_CONFIG_FILE", &kubectl_config)
        .args(["kubectl", "get", "ns", "default", "-o", "name"])
        .output()
        .expect("rk3s kubectl runs");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "namespace/default\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // kubectl's own exit code comes back.
    let out = rk3s_cmd(setup.dir.path())
        .env("RK3S_KUBECONFIG", setup.kubeconfig())
        .args(["kubectl", "get", "configmap", "no-such-thing"])
        .output()
        .expect("rk3s kubectl runs");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not found"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // An open watch does not keep the server from stopping.
    let mut watch = Command::new("/usr/bin/kubectl")
        .arg("--kubeconfig")
        .arg(setup.kubeconfig())
        .args(["get", "configmaps", "--watch", "-o", "name"])
        .env("HOME", setup.dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("kubectl watch runs");
    let mut first = String::new();
    BufReader::new(watch.stdout.take().expect("stdout"))
        .read_line(&mut first)
        .expect("watch output");
    assert_eq!(first, "configmap/survivor\n");

    let (status, log) = server.terminate();
    let _ = watch.kill();
    let _ = watch.wait();
    assert!(
        status.success(),
        "exit status {status}; log:\n{}",
        log.join("\n")
    );
    let count = |needle: &str| log.iter().filter(|l| l.contains(needle)).count();
    assert_eq!(count("node half"), 1, "{}", log.join("\n"));
    assert_eq!(count("became leader; scheduling"), 1, "{}", log.join("\n"));
    assert_eq!(count("rk3s server stopped"), 1, "{}", log.join("\n"));

    // Same data dir, same port: the object is still there.
    std::fs::remove_file(setup.kubeconfig()).expect("kubeconfig removed");
    let (server, _) = Server::start(setup.server_cmd(&["--https-listen-port", &port_arg(port)]));
    let data = setup.kubectl_ok(
        &["get", "configmap", "survivor", "-o", "jsonpath={.data.k}"],
        "",
    );
    assert_eq!(data, "v");
    let (status, log) = server.terminate();
    assert!(
        status.success(),
        "exit status {status}; log:\n{}",
        log.join("\n")
    );
}

#[test]
fn file_env_and_flag_precedence() {
    let file_port = free_port().expect("free port");
    let env_port = free_port().expect("free port");
    let flag_port = free_port().expect("free port");
    let setup = Setup::new(&format!(
        "https-listen-port: {file_port}\nwrite-kubeconfig-mode: \"0640\"\n"
    ));
    let other_db = setup.path("other.db");

    // File < environment (RK3S_* and the K3s alias of the datastore endpoint).
    let mut cmd = setup.server_cmd(&[]);
    cmd.env("RK3S_HTTPS_LISTEN_PORT", env_port.to_string()).env(
        "K3S_DATASTORE_ENDPOINT",
        format!("sqlite://{}", other_db.display()),
    );
    let (server, ready) = Server::start(cmd);
    assert!(
        ready.ends_with(&format!("API https://127.0.0.1:{env_port}")),
        "{ready}"
    );
    let mode = std::fs::metadata(setup.kubeconfig())
        .expect("kubeconfig")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o640, "mode from the config file: {mode:o}");
    assert!(other_db.is_file(), "K3S_DATASTORE_ENDPOINT used");
    assert!(!setup.data_dir().join("server/db/state.db").exists());
    setup.kubectl_ok(&["get", "ns", "default"], "");
    let (status, _) = server.terminate();
    assert!(status.success());

    // Environment < flags.
    let mut cmd = setup.server_cmd(&["--https-listen-port", &port_arg(flag_port)]);
    cmd.env("RK3S_HTTPS_LISTEN_PORT", env_port.to_string());
    let (server, ready) = Server::start(cmd);
    assert!(
        ready.ends_with(&format!("API https://127.0.0.1:{flag_port}")),
        "{ready}"
    );
    setup.kubectl_ok(&["get", "ns", "default"], "");
    let (status, log) = server.signal("-INT");
    assert!(
        status.success(),
        "SIGINT: {status}; log:\n{}",
        log.join("\n")
    );
}

/// Runs `rk3s server` that must fail before starting anything; returns its stderr.
fn fails(setup: &Setup, cmd: &mut Command) -> String {
    let out = cmd.output().expect("rk3s runs");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "should fail: {stderr}");
    assert!(
        !setup.kubeconfig().exists(),
        "no kubeconfig after a failed start"
    );
    stderr
}

#[test]
fn bad_configuration_fails_naming_the_key_before_starting() {
    for (body, key) in [
        ("https-listen-port: \"abc\"\n", "https-listen-port"),
        ("write-kubeconfig-mode: 999\n", "write-kubeconfig-mode"),
        ("datastore-endpiont: sqlite:///x.db\n", "datastore-endpiont"),
        ("cluster-cidr: 10.42.0.0\n", "cluster-cidr"),
    ] {
        let setup = Setup::new(body);
        let stderr = fails(&setup, &mut setup.server_cmd(&[]));
        assert!(stderr.contains(key), "{key}: {stderr}");
        assert!(!setup.data_dir().exists(), "nothing started for {key}");
        let file = setup.path("config.yaml").display().to_string();
        assert!(stderr.contains(&file), "names the file: {stderr}");
    }

    // A bad value in the environment names the variable's key.
    let setup = Setup::new("");
    let stderr = fails(
        &setup,
        setup
            .server_cmd(&[])
            .env("RK3S_HTTPS_LISTEN_PORT", "not-a-port"),
    );
    assert!(
        stderr.to_lowercase().contains("https-listen-port"),
        "{stderr}"
    );

    // An explicitly named config file that does not exist.
    let setup = Setup::new("");
    let missing = setup.path("missing.yaml");
    let stderr = fails(
        &setup,
        rk3s_cmd(setup.dir.path())
            .arg("server")
            .arg("--config")
            .arg(&missing)
            .arg("--data-dir")
            .arg(setup.data_dir())
            .arg("--write-kubeconfig")
            .arg(setup.kubeconfig()),
    );
    assert!(stderr.contains(&missing.display().to_string()), "{stderr}");
}

#[test]
fn a_taken_port_is_a_clear_startup_error() {
    let setup = Setup::new("");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let stderr = fails(
        &setup,
        &mut setup.server_cmd(&["--https-listen-port", &port_arg(port)]),
    );
    assert!(
        stderr.contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{stderr}"
    );
}

#[test]
fn an_unreachable_datastore_is_a_clear_startup_error() {
    let setup = Setup::new("");
    let closed = free_port().expect("free port");
    let endpoint = format!("postgres://rk3s:secret@127.0.0.1:{closed}/rk3s");
    let port = free_port().expect("free port");
    let stderr = fails(
        &setup,
        &mut setup.server_cmd(&[
            "--https-listen-port",
            &port_arg(port),
            "--datastore-endpoint",
            &endpoint,
        ]),
    );
    assert!(
        stderr.contains(&format!("postgres://rk3s:***@127.0.0.1:{closed}/rk3s")),
        "names the endpoint: {stderr}"
    );
    assert!(!stderr.contains("secret"), "password shown: {stderr}");
}

#[test]
fn datastore_listen_serves_etcdctl_over_the_same_store() {
    let setup = Setup::new("disable-agent: true\n");
    let port = free_port().expect("free port");
    let etcd_port = free_port().expect("free port");
    let etcd = format!("127.0.0.1:{etcd_port}");
    let mut cmd = setup.server_cmd(&[
        "--https-listen-port",
        &port_arg(port),
        "--datastore-listen",
        &etcd,
    ]);
    cmd.env("K3S_TOKEN", "k3s-style-token");
    let (server, _) = Server::start(cmd);
    let etcdctl = |args: &[&str]| {
        let out = Command::new("/usr/bin/etcdctl")
            .env("ETCDCTL_API", "3")
            .arg("--endpoints")
            .arg(&etcd)
            .args(args)
            .output()
            .expect("etcdctl runs");
        assert!(
            out.status.success(),
            "etcdctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let status = etcdctl(&["endpoint", "status"]);
    assert!(status.contains(&etcd), "{status}");
    let keys = etcdctl(&["get", "--prefix", "--keys-only", "/registry/namespaces/"]);
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        assert!(
            keys.contains(&format!("/registry/namespaces/{ns}\n")),
            "{keys}"
        );
    }
    // A write through the API is visible through the etcd endpoint.
    setup.kubectl_ok(&["create", "-f", "-"], CONFIGMAP);
    let keys = etcdctl(&[
        "get",
        "--prefix",
        "--keys-only",
        "/registry/configmaps/default/",
    ]);
    assert!(
        keys.contains("/registry/configmaps/default/survivor"),
        "{keys}"
    );

    let (status, log) = server.terminate();
    assert!(
        status.success(),
        "exit status {status}; log:\n{}",
        log.join("\n")
    );
    let count = |needle: &str| log.iter().filter(|l| l.contains(needle)).count();
    assert_eq!(count("--disable-agent"), 1, "{}", log.join("\n"));
    // K3S_TOKEN is the join token: written in the full form to server/token.
    let token = std::fs::read_to_string(setup.data_dir().join("server/token")).expect("token");
    assert!(
        token.starts_with("K10") && token.trim_end().ends_with("::server:k3s-style-token"),
        "K3S_TOKEN: {token}"
    );
    assert!(
        !log.iter().any(|l| l.contains("k3s-style-token")),
        "token logged"
    );
}

#[test]
fn version() {
    let out = rk3s_cmd(std::path::Path::new("/"))
        .arg("--version")
        .output()
        .expect("rk3s runs");
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("rk3s {}\n", env!("CARGO_PKG_VERSION"))
    );
}

/// K3s' way to configure the API server's audit log: `--kube-apiserver-arg`.
#[test]
fn kube_apiserver_args_turn_the_audit_log_on() {
    let setup = Setup::new("");
    let policy = setup.path("audit-policy.yaml");
    std::fs::write(
        &policy,
        "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n- level: Metadata\n  resources: [{group: \"\", resources: [configmaps]}]\n- level: None\n",
    )
    .expect("policy written");
    let log = setup.path("audit.log");
    let port = free_port().expect("free port");
    let path_arg = format!("--kube-apiserver-arg=audit-log-path={}", log.display());
    let policy_arg = format!("audit-policy-file={}", policy.display());
    let (server, _) = Server::start(setup.server_cmd(&[
        "--https-listen-port",
        &port_arg(port),
        &path_arg,
        "--kube-apiserver-arg",
        &policy_arg,
    ]));
    setup.kubectl_ok(
        &["create", "configmap", "audited", "--from-literal=k=v"],
        "",
    );
    setup.kubectl_ok(&["get", "namespaces"], "");
    let events = setup.wait_until("the audit event of the create", || {
        let text = std::fs::read_to_string(&log).ok()?;
        text.contains("\"name\":\"audited\"").then_some(text)
    });
    let create: serde_json::Value = events
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|e| e["verb"] == "create" && e["stage"] == "ResponseComplete")
        .expect("a ResponseComplete event of the create");
    assert_eq!(create["kind"], "Event");
    assert_eq!(create["apiVersion"], "audit.k8s.io/v1");
    assert_eq!(create["level"], "Metadata");
    assert_eq!(create["user"]["username"], "system:admin");
    assert_eq!(create["objectRef"]["resource"], "configmaps");
    assert_eq!(create["responseStatus"]["code"], 201);
    // The policy's `None` rule: namespaces are not audited.
    assert!(!events.contains("\"resource\":\"namespaces\""), "{events}");
    let (status, _) = server.terminate();
    assert!(status.success());

    // A flag rk3s' apiserver does not have stops the server before it starts, naming it.
    let setup = Setup::new("");
    let stderr = fails(
        &setup,
        &mut setup.server_cmd(&["--kube-apiserver-arg", "enable-admission-plugins=Foo"]),
    );
    assert!(
        stderr.contains("kube-apiserver-arg") && stderr.contains("enable-admission-plugins"),
        "{stderr}"
    );
    assert!(!setup.data_dir().exists());
}
