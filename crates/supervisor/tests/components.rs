//! The scheduler and the controller manager inside `rk3s server`, through the real binary and
//! kubectl: their own identities and kubeconfigs, their RBAC, their Leases, and their work (a
//! Deployment becomes a ReplicaSet whose pods are bound to a node). No kubelet exists: nodes are
//! API objects the test creates, and pods are never run.

mod common;

use std::os::unix::fs::PermissionsExt as _;

use common::{Server, Setup, free_port, port_arg};

/// `rk3s server` on free ports with `--node-name` and extra `args`.
fn start(setup: &Setup, node: &str, args: &[&str]) -> Server {
    let port = port_arg(free_port().expect("free port"));
    let mut all = vec!["--https-listen-port", &port, "--node-name", node];
    all.extend(args);
    let (server, _) = Server::start(setup.server_cmd(&all));
    server
}

#[test]
fn scheduler_and_controller_run_with_their_own_identities() {
    let setup = Setup::new("");
    let server = start(&setup, "server-a", &[]);

    // `kubectl get componentstatuses` (deprecated upstream, still served): the components this
    // process runs, as their supervisor reports them, and the datastore.
    let rows = setup.wait_until("the scheduler and controller manager to be listed", || {
        let out = setup.kubectl(&["get", "componentstatuses"], "");
        assert!(out.status.success(), "{out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr)
                .contains("Warning: v1 ComponentStatus is deprecated in v1.19+"),
            "{out:?}"
        );
        let rows: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        (rows.len() == 4).then_some(rows)
    });
    assert_eq!(
        rows,
        [
            "NAME STATUS MESSAGE ERROR",
            "controller-manager Healthy ok",
            "scheduler Healthy ok",
            "etcd-0 Healthy ok",
        ]
    );

    // K3s' layout: one kubeconfig per component, readable by root only.
    let cred = setup.data_dir().join("server/cred");
    for (file, user) in [
        ("scheduler.kubeconfig", "system:kube-scheduler"),
        ("controller.kubeconfig", "system:kube-controller-manager"),
    ] {
        let path = cred.join(file);
        let mode = std::fs::metadata(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{file} mode {mode:o}");
        // The kubeconfig authenticates as the component's user (a real request).
        let who = setup.kubectl_as(
            &path,
            &[
                "auth",
                "whoami",
                "-o",
                "jsonpath={.status.userInfo.username}",
            ],
        );
        assert_eq!(who, user, "{file}");
    }

    // RBAC lets each do its work, and no more than upstream's roles give it.
    let sched = cred.join("scheduler.kubeconfig");
    let ctrl = cred.join("controller.kubeconfig");
    for (kubeconfig, args, want) in [
        (
            &sched,
            &["create", "pods", "--subresource=binding", "-n", "default"][..],
            "yes",
        ),
        (
            &sched,
            &["patch", "pods", "--subresource=status", "-n", "default"][..],
            "yes",
        ),
        (
            &sched,
            &["update", "leases/kube-scheduler", "-n", "kube-system"][..],
            "yes",
        ),
        (
            &sched,
            &["create", "deployments", "-n", "default"][..],
            "no",
        ),
        // The controller manager's own identity: upstream's system:kube-controller-manager
        // role (its Lease, the loops' service accounts and their tokens), not the loops' work,
        // which each loop does as its own service account.
        (
            &ctrl,
            &[
                "update",
                "leases/kube-controller-manager",
                "-n",
                "kube-system",
            ][..],
            "yes",
        ),
        (
            &ctrl,
            &["create", "serviceaccounts", "-n", "kube-system"][..],
            "yes",
        ),
        (
            &ctrl,
            &[
                "create",
                "serviceaccounts",
                "--subresource=token",
                "-n",
                "kube-system",
            ][..],
            "yes",
        ),
        (&ctrl, &["create", "pods", "-n", "default"][..], "no"),
        (
            &ctrl,
            &["create", "replicasets.apps", "-n", "default"][..],
            "no",
        ),
        (&ctrl, &["create", "nodes"][..], "no"),
        (&ctrl, &["create", "clusterrolebindings"][..], "no"),
    ] {
        let mut all = vec!["auth", "can-i"];
        all.extend(args);
        let out = setup.kubectl_with(kubeconfig, &all);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            want,
            "{} can-i {args:?}: {}",
            kubeconfig.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // The loops' service accounts: upstream's per-controller roles (plus rk3s' supplements).
    let admin = setup.kubeconfig();
    for (account, args, want) in [
        (
            "deployment-controller",
            &["create", "replicasets.apps", "-n", "default"][..],
            "yes",
        ),
        (
            "deployment-controller",
            &[
                "patch",
                "deployments.apps",
                "--subresource=status",
                "-n",
                "default",
            ][..],
            "yes",
        ),
        (
            "deployment-controller",
            &["create", "pods", "-n", "default"][..],
            "no",
        ),
        (
            "replicaset-controller",
            &["create", "pods", "-n", "default"][..],
            "yes",
        ),
        (
            "statefulset-controller",
            &["create", "controllerrevisions.apps", "-n", "default"][..],
            "yes",
        ),
        (
            "cronjob-controller",
            &["create", "jobs.batch", "-n", "default"][..],
            "yes",
        ),
        (
            "resourcequota-controller",
            &[
                "update",
                "resourcequotas",
                "--subresource=status",
                "-n",
                "default",
            ][..],
            "yes",
        ),
        (
            "token-cleaner",
            &["delete", "secrets", "-n", "kube-system"][..],
            "yes",
        ),
        (
            "token-cleaner",
            &["delete", "secrets", "-n", "default"][..],
            "no",
        ),
        (
            "generic-garbage-collector",
            &["create", "clusterrolebindings"][..],
            "no",
        ),
    ] {
        let user = format!("--as=system:serviceaccount:kube-system:{account}");
        let mut all = vec!["auth", "can-i", user.as_str()];
        all.extend(args);
        let out = setup.kubectl_with(&admin, &all);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            want,
            "{account} can-i {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // Both elected themselves, under this server's identity.
    for lease in ["kube-scheduler", "kube-controller-manager"] {
        let holder = setup.wait_until(&format!("lease {lease}"), || {
            let out = setup.kubectl(
                &[
                    "get",
                    "lease",
                    "-n",
                    "kube-system",
                    lease,
                    "-o",
                    "jsonpath={.spec.holderIdentity}",
                ],
                "",
            );
            let holder = String::from_utf8_lossy(&out.stdout).into_owned();
            (out.status.success() && !holder.is_empty()).then_some(holder)
        });
        assert!(holder.starts_with("server-a_"), "{lease}: {holder}");
    }

    // Their work: a Deployment's ReplicaSet and pods, bound to the one Ready node.
    setup.create_node("node-1");
    setup.kubectl_ok(&["create", "-f", "-"], &deployment("web", 2));
    let rs = setup.wait_until("the Deployment's ReplicaSet", || {
        let out = setup.kubectl_ok(
            &[
                "get",
                "replicasets",
                "-l",
                "app=web",
                "-o",
                "jsonpath={range .items[*]}{.metadata.ownerReferences[0].kind}/{.metadata.ownerReferences[0].name}{end}",
            ],
            "",
        );
        (!out.is_empty()).then_some(out)
    });
    assert_eq!(rs, "Deployment/web");
    let nodes = setup.wait_until("both pods bound", || {
        let out = setup.kubectl_ok(
            &[
                "get",
                "pods",
                "-l",
                "app=web",
                "-o",
                "jsonpath={range .items[*]}{.spec.nodeName} {end}",
            ],
            "",
        );
        (out == "node-1 node-1 ").then_some(out)
    });
    assert_eq!(nodes, "node-1 node-1 ");
    // A DaemonSet and a StatefulSet (ControllerRevisions, created as the controller manager).
    setup.kubectl_ok(&["create", "-f", "-"], DAEMONSET);
    setup.kubectl_ok(&["create", "-f", "-"], STATEFULSET);
    for (selector, what) in [
        ("app=ds", "the DaemonSet's pod"),
        ("app=sts", "the StatefulSet's pod"),
    ] {
        setup.wait_until(what, || {
            let out = setup.kubectl_ok(
                &[
                    "get",
                    "pods",
                    "-l",
                    selector,
                    "-o",
                    "jsonpath={.items[*].spec.nodeName}",
                ],
                "",
            );
            (out == "node-1").then_some(())
        });
    }
    // The scheduler's event, written as system:kube-scheduler.
    let events = setup.kubectl_ok(
        &[
            "get",
            "events",
            "--field-selector",
            "reason=Scheduled",
            "-o",
            "jsonpath={range .items[*]}{.message}{\"\\n\"}{end}",
        ],
        "",
    );
    assert!(events.contains("to node-1"), "{events}");

    let (status, log) = server.terminate();
    assert!(status.success(), "{status}; log:\n{}", log.join("\n"));
    let count = |needle: &str| log.iter().filter(|l| l.contains(needle)).count();
    assert_eq!(count("became leader; scheduling"), 1, "{}", log.join("\n"));
    assert_eq!(count("component failed"), 0, "{}", log.join("\n"));
    assert_eq!(count("did not stop in time"), 0, "{}", log.join("\n"));

    // A restart keeps everything, and the components carry on.
    let server = start(&setup, "server-a", &[]);
    let nodes = setup.kubectl_ok(
        &[
            "get",
            "pods",
            "-l",
            "app=web",
            "-o",
            "jsonpath={range .items[*]}{.spec.nodeName} {end}",
        ],
        "",
    );
    assert_eq!(nodes, "node-1 node-1 ");
    setup.kubectl_ok(&["scale", "deployment", "web", "--replicas=3"], "");
    setup.wait_until("the third pod bound", || {
        let out = setup.kubectl_ok(
            &[
                "get",
                "pods",
                "-l",
                "app=web",
                "-o",
                "jsonpath={range .items[*]}{.spec.nodeName} {end}",
            ],
            "",
        );
        (out == "node-1 node-1 node-1 ").then_some(())
    });
    let (status, log) = server.terminate();
    assert!(status.success(), "{status}; log:\n{}", log.join("\n"));
}

/// `GET https://127.0.0.1:<port><path>` without verifying the self-signed certificate.
fn get(port: u16, path: &str) -> Result<(u16, String), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    runtime
        .block_on(rk3s_common::serving::probe(
            addr,
            path,
            std::time::Duration::from_secs(10),
        ))
        .map_err(|e| e.to_string())
}

/// The scheduler and controller manager serve `/healthz` (and the rest of their secure port)
/// on the ports `--kube-scheduler-arg` and `--kube-controller-manager-arg` give them.
#[test]
fn scheduler_and_controller_serve_health_on_the_ports_given() {
    let setup = Setup::new("");
    let (scheduler, controller) = (
        free_port().expect("free port"),
        free_port().expect("free port"),
    );
    let scheduler_arg = format!("secure-port={scheduler}");
    // The `=` form, with the component's own flag spelling.
    let controller_arg = format!("--kube-controller-manager-arg=--secure-port={controller}");
    let server = start(
        &setup,
        "server-h",
        &[
            "--kube-scheduler-arg",
            &scheduler_arg,
            "--kube-scheduler-arg",
            "bind-address=127.0.0.1",
            &controller_arg,
        ],
    );
    for port in [scheduler, controller] {
        let ok = setup.wait_until("the secure port", || get(port, "/healthz").ok());
        assert_eq!(ok, (200, "ok".to_string()), "port {port}");
        // Both lead (one server): their Lease check is listed.
        let verbose = setup.wait_until("the lease held", || {
            get(port, "/metrics")
                .ok()
                .filter(|(_, m)| m.contains("leader_election_master_status{name=\"kube-"))
                .filter(|(_, m)| m.contains("} 1\n"))
                .and_then(|_| get(port, "/healthz?verbose").ok())
        });
        assert_eq!(
            verbose,
            (
                200,
                "[+]ping ok\n[+]leaderElection ok\nhealthz check passed\n".to_string()
            ),
            "port {port}"
        );
    }
    let (status, log) = server.terminate();
    assert!(status.success(), "{status}; log:\n{}", log.join("\n"));
    // Stopped with the server.
    assert!(get(scheduler, "/healthz").is_err());
}

/// A key the component does not take is refused before anything starts, naming the flag; a
/// taken secure port stops the server with an error naming the address.
#[test]
fn bad_component_args_and_taken_ports_are_clear_errors() {
    let setup = Setup::new("");
    for (flag, value) in [
        ("--kube-scheduler-arg", "profiling=false"),
        ("--kube-controller-manager-arg", "secure-port=many"),
    ] {
        let out = setup
            .server_cmd(&[flag, value])
            .output()
            .expect("rk3s runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "should fail: {stderr}");
        assert!(
            stderr.contains(&format!("invalid configuration: {}", &flag[2..])),
            "{stderr}"
        );
        assert!(!setup.kubeconfig().exists(), "nothing started: {stderr}");
    }

    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let arg = format!("secure-port={port}");
    let api = port_arg(free_port().expect("free port"));
    let mut server = Server::spawn(setup.server_cmd(&[
        "--https-listen-port",
        &api,
        "--kube-scheduler-arg",
        &arg,
    ]));
    let line = server.wait_for("cannot start scheduler");
    assert!(
        line.contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{line}"
    );
    let status = server.child.wait().expect("exits");
    assert!(!status.success());
}

#[test]
fn disabled_components_do_not_run() {
    let setup = Setup::new("disable-controller-manager: true\n");
    let server = start(&setup, "server-b", &[]);
    setup.create_node("node-1");
    // The scheduler runs: a bare pod gets bound.
    setup.kubectl_ok(&["create", "-f", "-"], POD);
    setup.wait_until("the pod bound", || {
        let out = setup.kubectl_ok(
            &["get", "pod", "lone", "-o", "jsonpath={.spec.nodeName}"],
            "",
        );
        (out == "node-1").then_some(())
    });
    let (status, log) = server.terminate();
    assert!(status.success(), "{status}; log:\n{}", log.join("\n"));
    let count = |needle: &str| log.iter().filter(|l| l.contains(needle)).count();
    assert_eq!(
        count("--disable-controller-manager: not running the controller manager"),
        1,
        "{}",
        log.join("\n")
    );
    assert_eq!(count("rk3s-controller"), 0, "{}", log.join("\n"));

    // And the other way round, from a flag.
    let setup = Setup::new("");
    let server = start(&setup, "server-c", &["--disable-scheduler"]);
    setup.kubectl_ok(&["create", "-f", "-"], &deployment("web", 1));
    setup.wait_until("the pod created", || {
        let out = setup.kubectl_ok(&["get", "pods", "-l", "app=web", "-o", "name"], "");
        (!out.is_empty()).then_some(())
    });
    let (status, log) = server.terminate();
    assert!(status.success(), "{status}; log:\n{}", log.join("\n"));
    let count = |needle: &str| log.iter().filter(|l| l.contains(needle)).count();
    assert_eq!(count("--disable-scheduler: not running the scheduler"), 1);
    assert_eq!(count("became leader; scheduling"), 0, "{}", log.join("\n"));
}

const DAEMONSET: &str = r#"{"apiVersion":"apps/v1","kind":"DaemonSet","metadata":{"name":"ds","namespace":"default"},
"spec":{"selector":{"matchLabels":{"app":"ds"}},"template":{"metadata":{"labels":{"app":"ds"}},"spec":{"containers":[{"name":"c","image":"busybox"}]}}}}"#;

const STATEFULSET: &str = r#"{"apiVersion":"apps/v1","kind":"StatefulSet","metadata":{"name":"sts","namespace":"default"},
"spec":{"replicas":1,"serviceName":"sts","selector":{"matchLabels":{"app":"sts"}},"template":{"metadata":{"labels":{"app":"sts"}},"spec":{"containers":[{"name":"c","image":"busybox"}]}}}}"#;

const POD: &str = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"lone","namespace":"default"},"spec":{"containers":[{"name":"c","image":"busybox"}]}}"#;

fn deployment(name: &str, replicas: u32) -> String {
    format!(
        r#"{{"apiVersion":"apps/v1","kind":"Deployment","metadata":{{"name":"{name}","namespace":"default"}},
"spec":{{"replicas":{replicas},"selector":{{"matchLabels":{{"app":"{name}"}}}},
"template":{{"metadata":{{"labels":{{"app":"{name}"}}}},"spec":{{"containers":[{{"name":"c","image":"busybox"}}]}}}}}}}}"#
    )
}
