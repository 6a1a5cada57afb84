//! HA on an external datastore: `rk3s server` processes (the real binary) on one Postgres
//! database (a fresh one per test on the machine's server, 127.0.0.1:5432) with one token serve
//! one cluster: shared CAs, each other's writes in their watches, one scheduler and one
//! controller manager through Leases, failing over when the leader's process is killed.

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

#[test]
fn servers_on_postgres_share_one_cluster_and_survive_killing_the_leader() {
    let endpoint = rk3s_datastore::testing::postgres_endpoint("ha");
    let a = Setup::new("");
    let b = Setup::new("");

    let (cmd, _) = server_cmd(&a, &endpoint, TOKEN, "server-a");
    let (mut server_a, _) = Server::start(cmd);
    // Alone, server-a's scheduler and controller manager take the Leases.
    for lease in LEASES {
        a.wait_until(&format!("server-a holding {lease}"), || {
            holder(&a, lease).starts_with("server-a_").then_some(())
        });
    }

    // server-b is given the token in K3s' full form, as server-a wrote it (`K10<CA hash>::
    // server:<secret>`): the CA it fetches must match the hash.
    let full = std::fs::read_to_string(a.data_dir().join("server/token")).expect("token file");
    assert!(full.starts_with("K10"), "{full}");
    let (cmd, port_b) = server_cmd(&b, &endpoint, full.trim(), "server-b");
    let (server_b, _) = Server::start(cmd);
    let log = server_b.log.join("\n");
    assert!(
        log.contains("using the cluster's certificate authorities from the datastore"),
        "{log}"
    );

    // One PKI: the CAs came through the datastore, so server-a's admin kubeconfig works
    // against server-b.
    for file in ["server-ca.crt", "client-ca.crt", "service.key"] {
        let tls = |s: &Setup| {
            std::fs::read_to_string(s.data_dir().join("server/tls").join(file)).expect(file)
        };
        assert_eq!(tls(&a), tls(&b), "{file} differs");
    }
    let b_url = format!("https://127.0.0.1:{port_b}");
    let ns = a.kubectl_ok(
        &["--server", &b_url, "get", "ns", "kube-system", "-o", "name"],
        "",
    );
    assert_eq!(ns, "namespace/kube-system\n");

    // A write through server-a shows in a watch on server-b.
    let mut watch = Command::new("/usr/bin/kubectl")
        .arg("--kubeconfig")
        .arg(b.kubeconfig())
        .args([
            "get",
            "configmaps",
            "-n",
            "default",
            "--watch-only",
            "-o",
            "name",
        ])
        .env("HOME", b.dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("kubectl watch runs");
    let mut lines = BufReader::new(watch.stdout.take().expect("stdout")).lines();
    // The watch is open once server-b has answered it; a ConfigMap made before that would be
    // missed by --watch-only, so write until one is seen (each write is a new name).
    let seen = std::thread::spawn(move || lines.next().and_then(Result::ok));
    let mut written = Vec::new();
    a.wait_until("server-b's watch to see server-a's write", || {
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

    // server-b is a candidate, not a leader.
    for lease in LEASES {
        assert!(holder(&b, lease).starts_with("server-a_"), "{lease}");
    }

    // kill -9 the leader: server-b takes both Leases once they expire.
    server_a.child.kill().expect("SIGKILL");
    server_a.child.wait().expect("reaped");
    for lease in LEASES {
        b.wait_until(&format!("server-b taking {lease}"), || {
            holder(&b, lease).starts_with("server-b_").then_some(())
        });
    }

    // And works: a Deployment made after the kill gets its ReplicaSet and pods, bound to a node.
    b.create_node("node-1");
    b.kubectl_ok(
        &[
            "create",
            "deployment",
            "after-failover",
            "--image=busybox",
            "--replicas=2",
        ],
        "",
    );
    b.wait_until("pods of after-failover bound", || {
        let out = b.kubectl_ok(
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

    let (status, log) = server_b.terminate();
    assert!(status.success(), "{status}; log:\n{}", log.join("\n"));
}
