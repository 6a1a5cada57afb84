//! HA on an external datastore: `rk3s server` processes (the real binary) on one datastore
//! with one token serve one cluster: shared CAs, each other's writes in their watches, one
//! scheduler and one controller manager through Leases, failing over when the leader's process
//! is killed. One scenario ([`scenario`]), run on each external datastore: Postgres and
//! MySQL/MariaDB (a fresh database per test on the machine's servers) with two servers, and a
//! real etcd (started by the test) with three. The tests run in parallel, so the suite waits
//! for about one lease expiry, not three.

mod common;

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};

use common::{Server, Setup, free_port, port_arg};

const TOKEN: &str = "ha-test-token";

/// `rk3s server` on `endpoint` with `token`, as node `node`; its API port.
fn server_cmd(setup: &Setup, endpoint: &str, token: &str, node: &str) -> (Command, u16) {
    let port = free_port().expect("free port");
    let mut cmd = setup.server_cmd(&[
        "--https-listen-port",
        &port_arg(port),
        "--node-name",
        node,
        "--datastore-endpoint",
        endpoint,
    ]);
    cmd.env("K3S_TOKEN", token);
    (cmd, port)
}

/// The holder of Lease `kube-system/<name>`, as seen through `setup`'s server.
fn holder(setup: &Setup, name: &str) -> String {
    let out = setup.kubectl(
        &[
            "get",
            "lease",
            "-n",
            "kube-system",
            name,
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ],
        "",
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const LEASES: [&str; 2] = ["kube-scheduler", "kube-controller-manager"];

/// The names of the servers of a scenario: the first is the leader that gets killed.
const NAMES: [&str; 3] = ["server-a", "server-b", "server-c"];

/// `count` servers (2 or 3) on `endpoint`: the first takes the Leases, the others join with
/// its token and share its CAs, see its writes in their watches and stay candidates; when the
/// first is killed (SIGKILL) the survivors take the Leases over and run a new Deployment.
fn scenario(endpoint: &str, count: usize) -> Vec<(Setup, Server)> {
    assert!((2..=NAMES.len()).contains(&count));
    let setups: Vec<Setup> = (0..count).map(|_| Setup::new("")).collect();
    let a = &setups[0];
    let (cmd, _) = server_cmd(a, endpoint, TOKEN, NAMES[0]);
    let (server_a, _) = Server::start(cmd);
    // Alone, server-a's scheduler and controller manager take the Leases.
    for lease in LEASES {
        a.wait_until(&format!("server-a holding {lease}"), || {
            holder(a, lease).starts_with("server-a_").then_some(())
        });
    }

    // The others are given the token in K3s' full form, as server-a wrote it (`K10<CA hash>::
    // server:<secret>`): the CA they fetch must match the hash.
    let full = std::fs::read_to_string(a.data_dir().join("server/token")).expect("token file");
    assert!(full.starts_with("K10"), "{full}");
    let mut servers = vec![server_a];
    let mut ports = Vec::new();
    for (setup, name) in setups.iter().zip(NAMES).skip(1) {
        let (cmd, port) = server_cmd(setup, endpoint, full.trim(), name);
        let (server, _) = Server::start(cmd);
        let log = server.log.join("\n");
        assert!(
            log.contains("using the cluster's certificate authorities from the datastore"),
            "{name}: {log}"
        );
        servers.push(server);
        ports.push(port);
    }

    // One PKI: the CAs came through the datastore, so server-a's admin kubeconfig works
    // against the others.
    for setup in &setups[1..] {
        for file in ["server-ca.crt", "client-ca.crt", "service.key"] {
            let tls = |s: &Setup| {
                std::fs::read_to_string(s.data_dir().join("server/tls").join(file)).expect(file)
            };
            assert_eq!(tls(a), tls(setup), "{file} differs");
        }
    }
    for port in &ports {
        let url = format!("https://127.0.0.1:{port}");
        let ns = a.kubectl_ok(
            &["--server", &url, "get", "ns", "kube-system", "-o", "name"],
            "",
        );
        assert_eq!(ns, "namespace/kube-system\n");
    }

    // A write through server-a shows in a watch on the last server.
    let last = &setups[count - 1];
    let mut watch = Command::new("/usr/bin/kubectl")
        .arg("--kubeconfig")
        .arg(last.kubeconfig())
        .args([
            "get",
            "configmaps",
            "-n",
            "default",
            "--watch-only",
            "-o",
            "name",
        ])
        .env("HOME", last.dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("kubectl watch runs");
    let mut lines = BufReader::new(watch.stdout.take().expect("stdout")).lines();
    // The watch is open once the server has answered it; a ConfigMap made before that would be
    // missed by --watch-only, so write until one is seen (each write is a new name).
    let seen = std::thread::spawn(move || lines.next().and_then(Result::ok));
    let mut written = Vec::new();
    a.wait_until("the last server's watch to see server-a's write", || {
        let name = format!("from-a-{}", written.len());
        a.kubectl_ok(&["create", "configmap", &name, "-n", "default"], "");
        written.push(name);
        seen.is_finished().then_some(())
    });
    let line = seen.join().expect("watch thread").expect("a watch line");
    let _ = watch.kill();
    let _ = watch.wait();
    assert!(
        written.iter().any(|n| line == format!("configmap/{n}")),
        "{line} not among {written:?}"
    );

    // The others are candidates, not leaders.
    for setup in &setups[1..] {
        for lease in LEASES {
            assert!(holder(setup, lease).starts_with("server-a_"), "{lease}");
        }
    }

    // kill -9 the leader: the survivors take both Leases once they expire (each Lease to one
    // of them, not necessarily the same).
    let mut server_a = servers.remove(0);
    server_a.child.kill().expect("SIGKILL");
    server_a.child.wait().expect("reaped");
    let mut setups = setups;
    drop(setups.remove(0));
    let survivor = &setups[0];
    let survivors = &NAMES[1..count];
    for lease in LEASES {
        survivor.wait_until(&format!("a survivor taking {lease}"), || {
            let h = holder(survivor, lease);
            survivors
                .iter()
                .any(|n| h.starts_with(&format!("{n}_")))
                .then_some(())
        });
    }

    // And works: a Deployment made after the kill gets its ReplicaSet and pods, bound to a node.
    survivor.create_node("node-1");
    survivor.kubectl_ok(
        &[
            "create",
            "deployment",
            "after-failover",
            "--image=busybox",
            "--replicas=2",
        ],
        "",
    );
    survivor.wait_until("pods of after-failover bound", || {
        let out = survivor.kubectl_ok(
            &[
                "get",
                "pods",
                "-l",
                "app=after-failover",
                "-o",
                "jsonpath={range .items[*]}{.spec.nodeName} {end}",
            ],
            "",
        );
        (out == "node-1 node-1 ").then_some(())
    });
    setups.into_iter().zip(servers).collect()
}

/// Stops the servers a scenario left running: SIGTERM, exit 0.
fn stop_all(servers: Vec<(Setup, Server)>) {
    for (_setup, server) in servers {
        let (status, log) = server.terminate();
        assert!(status.success(), "{status}; log:\n{}", log.join("\n"));
    }
}

#[test]
fn servers_on_postgres_share_one_cluster_and_survive_killing_the_leader() {
    let endpoint = rk3s_datastore::testing::postgres_endpoint("ha");
    let servers = scenario(&endpoint, 2);

    // A third server with another token is refused before it serves anything.
    let c = Setup::new("");
    let (mut cmd, _) = server_cmd(&c, &endpoint, "another-token", "server-c");
    let out = cmd.output().expect("rk3s runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("another token"), "{stderr}");
    assert!(!c.kubeconfig().exists());
    // And so is one without a token (it would make CAs of its own).
    let d = Setup::new("");
    let port = port_arg(free_port().expect("free port"));
    let out = d
        .server_cmd(&[
            "--https-listen-port",
            &port,
            "--datastore-endpoint",
            &endpoint,
        ])
        .output()
        .expect("rk3s runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("--token"), "{stderr}");
    assert!(!d.kubeconfig().exists());

    stop_all(servers);
}

#[test]
fn servers_on_mysql_share_one_cluster_and_survive_killing_the_leader() {
    let endpoint = rk3s_datastore::testing::mysql_endpoint("ha");
    stop_all(scenario(&endpoint, 2));
}

#[test]
fn three_servers_on_etcd_share_one_cluster_and_survive_killing_the_leader() {
    let etcd = rk3s_datastore::testing::EtcdProcess::start().expect("etcd starts");
    stop_all(scenario(&etcd.endpoint, 3));
}

/// `rk3s secrets-encrypt` on a text-mode status, through `setup`'s data dir and `port`.
fn secrets_encrypt(setup: &Setup, port: u16, token: &str, action: &str) -> String {
    let out = common::rk3s_cmd(setup.dir.path())
        .args(["secrets-encrypt", action, "--data-dir"])
        .arg(setup.data_dir())
        .args([
            "--server",
            &format!("https://127.0.0.1:{port}"),
            "--token",
            token,
        ])
        .output()
        .expect("rk3s secrets-encrypt runs");
    assert!(
        out.status.success(),
        "secrets-encrypt {action}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every key and value the Postgres database holds, in all stored revisions, as bytes.
fn postgres_rows(endpoint: &str) -> Vec<u8> {
    let out = Command::new("psql")
        .arg(endpoint)
        .args([
            "-At",
            "-c",
            "select encode(name, 'hex') || encode(value, 'hex') from rk3s_log",
        ])
        .output()
        .expect("psql runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let hex = String::from_utf8_lossy(&out.stdout).replace('\n', "");
    (0..hex.len() / 2)
        .filter_map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok())
        .collect()
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// The AES key secrets (base64) of an encryption configuration file.
fn key_secrets(config: &str) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_str(config).expect("configuration JSON");
    let mut out = Vec::new();
    for p in v["resources"][0]["providers"]
        .as_array()
        .expect("providers")
    {
        for k in p["aescbc"]["keys"].as_array().into_iter().flatten() {
            out.push(k["secret"].as_str().expect("secret").to_string());
        }
    }
    out
}

/// Two servers with `--secrets-encryption` on `endpoint`: the second adopts the first's key at
/// start; `rotate-keys` through server-a reaches server-b without a restart (its file, its
/// status, its reads and writes). `rows`, when given, reads every stored key and value: it must
/// hold no secret value and no key in clear.
fn shared_secrets_encryption(endpoint: &str, rows: Option<&dyn Fn() -> Vec<u8>>) {
    const VALUE: &str = "s3cr3t-value-xyz";
    const VALUE_B64: &str = "czNjcjN0LXZhbHVlLXh5eg==";
    let a = Setup::new("");
    let (mut cmd, port_a) = server_cmd(&a, endpoint, TOKEN, "server-a");
    cmd.arg("--secrets-encryption");
    let (server_a, _) = Server::start(cmd);
    let token = std::fs::read_to_string(a.data_dir().join("server/token")).expect("token file");
    let token = token.trim();
    let b = Setup::new("");
    let (mut cmd, port_b) = server_cmd(&b, endpoint, token, "server-b");
    cmd.arg("--secrets-encryption");
    let (server_b, _) = Server::start(cmd);
    let config = |s: &Setup| {
        std::fs::read_to_string(s.data_dir().join("server/cred/encryption-config.json"))
            .expect("encryption configuration")
    };
    let first = config(&a);
    assert_eq!(first, config(&b), "server-b adopted server-a's key");
    for (setup, port) in [(&a, port_a), (&b, port_b)] {
        let status = secrets_encrypt(setup, port, token, "status");
        assert!(status.contains("Encryption Status: Enabled"), "{status}");
        assert!(status.contains("All hashes match"), "{status}");
        assert!(status.contains(" *      AES-CBC   aescbckey\n"), "{status}");
    }
    b.kubectl_ok(
        &[
            "create",
            "secret",
            "generic",
            "s1",
            &format!("--from-literal=password={VALUE}"),
        ],
        "",
    );

    // Rotated through server-a; server-b follows while it serves.
    let printed = secrets_encrypt(&a, port_a, token, "rotate-keys");
    assert!(printed.contains("keys rotated"), "{printed}");
    let status_b = b.wait_until("server-b to load the rotated configuration", || {
        let status = secrets_encrypt(&b, port_b, token, "status");
        (status.contains("Current Rotation Stage: reencrypt_finished")
            && !status.contains("aescbckey\n"))
        .then_some(status)
    });
    assert!(
        status_b.contains(" *      AES-CBC   aescbckey-20"),
        "{status_b}"
    );
    assert!(status_b.contains("All hashes match"), "{status_b}");
    assert_eq!(secrets_encrypt(&a, port_a, token, "status"), status_b);
    let rotated = config(&a);
    assert_ne!(rotated, first);
    assert_eq!(rotated, config(&b), "server-b's file follows");

    // Both read the re-encrypted secret and what the other writes with the new key.
    let get = |s: &Setup, name: &str| {
        s.kubectl_ok(
            &["get", "secret", name, "-o", "jsonpath={.data.password}"],
            "",
        )
    };
    assert_eq!(get(&b, "s1"), VALUE_B64);
    assert_eq!(get(&a, "s1"), VALUE_B64);
    b.kubectl_ok(
        &[
            "create",
            "secret",
            "generic",
            "s2",
            &format!("--from-literal=password={VALUE}"),
        ],
        "",
    );
    assert_eq!(get(&a, "s2"), VALUE_B64);

    // The database: no secret value and no key, old or new, in clear.
    let Some(rows) = rows else {
        stop_all(vec![(a, server_a), (b, server_b)]);
        return;
    };
    let rows = rows();
    assert!(contains(&rows, "/registry/secrets/default/s2"), "rows read");
    assert!(!contains(&rows, VALUE) && !contains(&rows, VALUE_B64));
    for secret in key_secrets(&first).iter().chain(&key_secrets(&rotated)) {
        assert!(!contains(&rows, secret), "a key in clear in the database");
    }
    assert!(
        !contains(&rows, "EncryptionConfiguration"),
        "the configuration in clear"
    );

    stop_all(vec![(a, server_a), (b, server_b)]);
}

#[test]
fn secrets_encryption_is_shared_by_servers_on_postgres() {
    let endpoint = rk3s_datastore::testing::postgres_endpoint("se");
    shared_secrets_encryption(&endpoint, Some(&|| postgres_rows(&endpoint)));
}

#[test]
fn secrets_encryption_is_shared_by_servers_on_mysql() {
    shared_secrets_encryption(&rk3s_datastore::testing::mysql_endpoint("se"), None);
}

#[test]
fn secrets_encryption_is_shared_by_servers_on_etcd() {
    let etcd = rk3s_datastore::testing::EtcdProcess::start().expect("etcd starts");
    shared_secrets_encryption(&etcd.endpoint, None);
}
