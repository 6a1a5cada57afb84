//! kubectl against an in-process apiserver: what a user sees.

mod common;

use std::io::{BufRead as _, BufReader};
use std::process::Stdio;
use std::time::Duration;

use common::TestServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_and_system_namespaces() {
    let t = TestServer::start().await;
    let version = t.kubectl_ok(&["version"]).await;
    assert!(
        version.contains("Server Version: v1.33.0+rk3s"),
        "{version}"
    );
    let ns = t.kubectl_ok(&["get", "ns"]).await;
    let names: Vec<&str> = ns
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(
        names,
        ["default", "kube-node-lease", "kube-public", "kube-system"],
        "{ns}"
    );
    assert!(
        ns.lines()
            .next()
            .is_some_and(|h| h.split_whitespace().eq(["NAME", "STATUS", "AGE"])),
        "{ns}"
    );
    assert!(ns.contains("Active"), "{ns}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_verbose_lists_checks() {
    let t = TestServer::start().await;
    let out = t.kubectl_ok(&["get", "--raw", "/readyz?verbose"]).await;
    assert!(out.contains("[+]ping ok"), "{out}");
    assert!(out.contains("[+]etcd ok"), "{out}");
    assert!(out.contains("readyz check passed"), "{out}");
    assert_eq!(t.kubectl_ok(&["get", "--raw", "/livez"]).await, "ok");
    // Each check alone, as monitoring asks for them.
    assert_eq!(t.kubectl_ok(&["get", "--raw", "/readyz/etcd"]).await, "ok");
    assert_eq!(t.kubectl_ok(&["get", "--raw", "/livez/ping"]).await, "ok");
    let missing = t.kubectl(&["get", "--raw", "/readyz/no-such-check"]).await;
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("NotFound"),
        "{missing:?}"
    );
}

/// `kubectl get componentstatuses`: what the embedder reports of its components (a failing
/// one with its error) and the datastore as `etcd-0`; read-only, deprecated as upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn componentstatuses_report_the_embedders_components_and_the_datastore() {
    let health = rk3s_apiserver::ComponentHealth::new();
    let t = TestServer::start_configured({
        let health = health.clone();
        move |a| a.component_health(health)
    })
    .await;
    // A standalone apiserver (nothing reported): the datastore only.
    let rows = |out: &str| -> Vec<String> {
        out.lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect()
    };
    let out = t.kubectl(&["get", "cs"]).await;
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("Warning: v1 ComponentStatus is deprecated in v1.19+"),
        "{out:?}"
    );
    assert_eq!(
        rows(&String::from_utf8_lossy(&out.stdout)),
        ["NAME STATUS MESSAGE ERROR", "etcd-0 Healthy ok"]
    );

    health.report("scheduler", Ok(()));
    health.report(
        "controller-manager",
        Err("failed: lost its lease; restarting".into()),
    );
    let out = t.kubectl_ok(&["get", "componentstatuses"]).await;
    assert_eq!(
        rows(&out),
        [
            "NAME STATUS MESSAGE ERROR",
            "controller-manager Unhealthy failed: lost its lease; restarting",
            "scheduler Healthy ok",
            "etcd-0 Healthy ok",
        ]
    );
    let one = t
        .kubectl_ok(&["get", "cs", "controller-manager", "-o", "json"])
        .await;
    let one: serde_json::Value = serde_json::from_str(&one).expect("JSON");
    assert_eq!(
        one,
        serde_json::json!({"kind": "ComponentStatus", "apiVersion": "v1",
            "metadata": {"name": "controller-manager"},
            "conditions": [{"type": "Healthy", "status": "False",
                "error": "failed: lost its lease; restarting"}]})
    );
    let names = t
        .kubectl_ok(&[
            "get",
            "cs",
            "--field-selector=metadata.name=scheduler",
            "-o",
            "name",
        ])
        .await;
    assert_eq!(names.trim(), "componentstatus/scheduler");

    // Unknown names are 404; writes are not allowed (405), as upstream.
    let missing = t.kubectl(&["get", "cs", "kubelet"]).await;
    assert!(
        String::from_utf8_lossy(&missing.stderr)
            .contains(r#"componentstatuses "kubelet" not found"#),
        "{missing:?}"
    );
    let delete = t.kubectl(&["delete", "cs", "scheduler"]).await;
    assert!(
        String::from_utf8_lossy(&delete.stderr)
            .contains("the server does not allow this method on the requested resource"),
        "{delete:?}"
    );
}

/// The roots go-restful serves with a trailing slash too (the Python client's paths).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roots_answer_with_a_trailing_slash() {
    let t = TestServer::start().await;
    for (path, kind) in [("/api/", "APIVersions"), ("/apis/", "APIGroupList")] {
        let out = t.kubectl_ok(&["get", "--raw", path]).await;
        let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
        assert_eq!(v["kind"], kind, "{path}: {out}");
    }
    let out = t.kubectl_ok(&["get", "--raw", "/version/"]).await;
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(v["major"], "1", "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_resources_lists_short_names_and_groups() {
    let t = TestServer::start().await;
    let out = t.kubectl_ok(&["api-resources"]).await;
    let row = |name: &str| {
        out.lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("{name} missing from:\n{out}"))
            .split_whitespace()
            .collect::<Vec<_>>()
    };
    assert_eq!(row("pods"), ["pods", "po", "v1", "true", "Pod"]);
    assert_eq!(
        row("namespaces"),
        ["namespaces", "ns", "v1", "false", "Namespace"]
    );
    assert_eq!(
        row("deployments"),
        ["deployments", "deploy", "apps/v1", "true", "Deployment"]
    );
    assert_eq!(
        row("leases"),
        ["leases", "coordination.k8s.io/v1", "true", "Lease"]
    );
    assert_eq!(
        row("cronjobs"),
        ["cronjobs", "cj", "batch/v1", "true", "CronJob"]
    );
    let all = t
        .kubectl_ok(&["api-resources", "--categories=all", "-o", "name"])
        .await;
    for r in [
        "pods",
        "services",
        "deployments.apps",
        "replicasets.apps",
        "jobs.batch",
    ] {
        assert!(
            all.lines().any(|l| l == r),
            "{r} not in category all:\n{all}"
        );
    }
    // The aggregated discovery document kubectl asked for is served too.
    let raw = t.kubectl_ok(&["get", "--raw", "/apis/apps/v1"]).await;
    assert!(raw.contains(r#""shortNames":["deploy"]"#), "{raw}");
}

const NS_AND_CM: &str = "apiVersion: v1
kind: Namespace
metadata:
  name: x
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: c1
  namespace: x
data:
  a: b
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_get_label_delete() {
    let t = TestServer::start().await;
    let out = t.kubectl_stdin(&["create", "-f", "-"], NS_AND_CM).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("namespace/x created") && stdout.contains("configmap/c1 created"),
        "{stdout}"
    );

    let yaml = t
        .kubectl_ok(&["-n", "x", "get", "cm", "c1", "-o", "yaml"])
        .await;
    for want in [
        "kind: ConfigMap",
        "name: c1",
        "namespace: x",
        "a: b",
        "uid: ",
        "resourceVersion: ",
        "creationTimestamp: ",
    ] {
        assert!(yaml.contains(want), "{want} missing:\n{yaml}");
    }
    let table = t.kubectl_ok(&["-n", "x", "get", "cm"]).await;
    assert!(
        table
            .lines()
            .nth(1)
            .is_some_and(|l| l.split_whitespace().take(2).eq(["c1", "1"])),
        "{table}"
    );

    t.kubectl_ok(&["-n", "x", "label", "cm", "c1", "tier=web"])
        .await;
    let selected = t
        .kubectl_ok(&[
            "-n",
            "x",
            "get",
            "cm",
            "-l",
            "tier in (web,db)",
            "-o",
            "name",
        ])
        .await;
    assert_eq!(selected.trim(), "configmap/c1");
    let none = t
        .kubectl(&["-n", "x", "get", "cm", "-l", "tier!=web", "-o", "name"])
        .await;
    assert_eq!(String::from_utf8_lossy(&none.stdout).trim(), "");

    // Creating it again: AlreadyExists, as upstream words it.
    let again = t.kubectl_stdin(&["create", "-f", "-"], NS_AND_CM).await;
    assert!(!again.status.success());
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains(r#"configmaps "c1" already exists"#), "{err}");

    let del = t.kubectl_ok(&["-n", "x", "delete", "cm", "c1"]).await;
    assert_eq!(del.trim(), r#"configmap "c1" deleted"#);
    let gone = t.kubectl(&["-n", "x", "get", "cm", "c1"]).await;
    let err = String::from_utf8_lossy(&gone.stderr);
    assert!(
        err.contains(r#"Error from server (NotFound): configmaps "c1" not found"#),
        "{err}"
    );

    // Without a namespace controller the namespace stays Terminating (kubectl would wait).
    t.kubectl_ok(&["delete", "ns", "x", "--wait=false"]).await;
    let phase = t
        .kubectl_ok(&["get", "ns", "x", "-o", "jsonpath={.status.phase}"])
        .await;
    assert_eq!(phase, "Terminating");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_shown_as_upstream() {
    let t = TestServer::start().await;
    let bad = t
        .kubectl_stdin(
            &["create", "-f", "-"],
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: Bad_Name\n",
        )
        .await;
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains(r#"ConfigMap "Bad_Name" is invalid: metadata.name: Invalid value: "Bad_Name": a lowercase RFC 1123 subdomain"#),
        "{err}"
    );
    let missing = t
        .kubectl_stdin(
            &["-n", "nope", "create", "-f", "-"],
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n",
        )
        .await;
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(err.contains(r#"namespaces "nope" not found"#), "{err}");
    let strict = t
        .kubectl_stdin(
            &["create", "-f", "-"],
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\nbogus: 1\n",
        )
        .await;
    let err = String::from_utf8_lossy(&strict.stderr);
    assert!(
        err.contains(r#"strict decoding error: unknown field "bogus""#),
        "{err}"
    );
    let forbidden = t.kubectl(&["delete", "ns", "kube-system"]).await;
    let err = String::from_utf8_lossy(&forbidden.stderr);
    assert!(err.contains("this namespace may not be deleted"), "{err}");
}

/// A PUT without `metadata.resourceVersion` overwrites a ConfigMap but is refused for a Lease
/// (upstream's `AllowUnconditionalUpdate`); RBAC objects are created by a PUT; write options
/// that are not upstream's (a misspelt `dryRun`) are refused before anything is written.
/// (`kubectl replace -f` fills in the resourceVersion it reads first, hence `--raw`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replace_and_write_options_follow_each_resources_policy() {
    let t = TestServer::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let raw = |verb: &'static str, path: &'static str, body: &str| {
        let file = dir.path().join("body.json");
        std::fs::write(&file, body).expect("write body");
        let mut args = vec![verb.to_string(), "--raw".into(), path.into()];
        if !body.is_empty() {
            args.extend(["-f".into(), file.display().to_string()]);
        }
        args
    };
    async fn run(t: &TestServer, args: Vec<String>) -> (bool, String) {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = t.kubectl(&args).await;
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    t.kubectl_ok(&["create", "configmap", "c", "--from-literal=v=1"])
        .await;
    let (ok, err) = run(
        &t,
        raw(
            "replace",
            "/api/v1/namespaces/default/configmaps/c",
            r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"c"},"data":{"v":"2"}}"#,
        ),
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(
        t.kubectl_ok(&["get", "cm", "c", "-o", "jsonpath={.data.v}"])
            .await,
        "2"
    );

    t.kubectl_stdin(
        &["create", "-f", "-"],
        "apiVersion: coordination.k8s.io/v1\nkind: Lease\nmetadata:\n  name: l\n\
         spec:\n  holderIdentity: a\n",
    )
    .await;
    let (ok, err) = run(
        &t,
        raw(
            "replace",
            "/apis/coordination.k8s.io/v1/namespaces/default/leases/l",
            r#"{"apiVersion":"coordination.k8s.io/v1","kind":"Lease","metadata":{"name":"l"},"spec":{"holderIdentity":"b"}}"#,
        ),
    )
    .await;
    assert!(!ok);
    assert!(
        err.contains(r#"The leases "l" is invalid: metadata.resourceVersion: Invalid value: 0x0: must be specified for an update"#),
        "{err}"
    );
    assert_eq!(
        t.kubectl_ok(&["get", "lease", "l", "-o", "jsonpath={.spec.holderIdentity}"])
            .await,
        "a"
    );

    let (ok, err) = run(
        &t,
        raw(
            "replace",
            "/apis/rbac.authorization.k8s.io/v1/namespaces/default/roles/r",
            r#"{"apiVersion":"rbac.authorization.k8s.io/v1","kind":"Role","metadata":{"name":"r"},"rules":[{"apiGroups":[""],"resources":["pods"],"verbs":["get"]}]}"#,
        ),
    )
    .await;
    assert!(ok, "a PUT creates a Role: {err}");
    t.kubectl_ok(&["get", "role", "r"]).await;

    let (ok, err) = run(
        &t,
        raw(
            "create",
            "/api/v1/namespaces/default/configmaps?dryRun=true",
            r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"d"}}"#,
        ),
    )
    .await;
    assert!(!ok);
    assert!(
        err.contains(r#"The CreateOptions "" is invalid: dryRun: Unsupported value: []string{"true"}: supported values: "All""#),
        "{err}"
    );
    let (exists, _) = run(&t, vec!["get".into(), "cm".into(), "d".into()]).await;
    assert!(!exists, "the refused create wrote nothing");
    let (ok, err) = run(
        &t,
        raw(
            "delete",
            "/api/v1/namespaces/default/configmaps/c?dryRun=yes",
            "",
        ),
    )
    .await;
    assert!(!ok);
    assert!(
        err.contains(
            r#"The DeleteOptions "" is invalid: dryRun: Unsupported value: []string{"yes"}"#
        ),
        "{err}"
    );
    t.kubectl_ok(&["get", "cm", "c"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replace_with_stale_resource_version_conflicts() {
    let t = TestServer::start().await;
    t.kubectl_stdin(
        &["create", "-f", "-"],
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\ndata:\n  v: \"1\"\n",
    )
    .await;
    let stale = t.kubectl_ok(&["get", "cm", "c", "-o", "yaml"]).await;
    t.kubectl_ok(&[
        "patch",
        "cm",
        "c",
        "--type=merge",
        "-p",
        r#"{"data":{"v":"2"}}"#,
    ])
    .await;
    let out = t.kubectl_stdin(&["replace", "-f", "-"], &stale).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(r#"Error from server (Conflict): error when replacing "STDIN": Operation cannot be fulfilled on configmaps "c": the object has been modified; please apply your changes to the latest version and try again"#),
        "{err}"
    );
    let v = t
        .kubectl_ok(&["get", "cm", "c", "-o", "jsonpath={.data.v}"])
        .await;
    assert_eq!(v, "2");
    // With the current version, replace works.
    let fresh = t
        .kubectl_ok(&["get", "cm", "c", "-o", "yaml"])
        .await
        .replace("v: \"2\"", "v: \"3\"");
    let out = t.kubectl_stdin(&["replace", "-f", "-"], &fresh).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        t.kubectl_ok(&["get", "cm", "c", "-o", "jsonpath={.data.v}"])
            .await,
        "3"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_watch_receives_events() {
    let t = TestServer::start().await;
    let mut child = t
        .kubectl_cmd(&["get", "cm", "-w", "-o", "name"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("kubectl get -w");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Create until the watcher reports it: kubectl may not have started watching yet.
    let mut seen = false;
    for i in 0..50 {
        let name = format!("w{i}");
        t.kubectl_stdin(
            &["create", "-f", "-"],
            &format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n"),
        )
        .await;
        if let Ok(Some(line)) = tokio::time::timeout(Duration::from_secs(2), rx.recv()).await {
            assert!(line.starts_with("configmap/w"), "{line}");
            seen = true;
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(seen, "kubectl get -w never printed an event");
}

const APP: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers: [{name: c, image: busybox}]
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector: {app: web}
  ports: [{port: 80, protocol: TCP}]
---
apiVersion: v1
kind: Pod
metadata:
  name: p1
spec:
  containers: [{name: c, image: busybox}]
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_and_get_all() {
    let t = TestServer::start().await;
    let out = t.kubectl_stdin(&["apply", "-f", "-"], APP).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("deployment.apps/web created"), "{stdout}");

    let all = t.kubectl_ok(&["get", "all", "-o", "name"]).await;
    let mut names: Vec<&str> = all.lines().collect();
    names.sort();
    assert_eq!(
        names,
        [
            "deployment.apps/web",
            "pod/p1",
            "service/kubernetes",
            "service/web"
        ]
    );
    let pods = t.kubectl_ok(&["get", "pods"]).await;
    let header: Vec<&str> = pods
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(header, ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]);
    assert!(
        pods.lines()
            .nth(1)
            .is_some_and(|l| l.split_whitespace().take(3).eq(["p1", "0/1", "Pending"])),
        "{pods}"
    );

    // Re-applying is a no-op; a changed replica count is a patch that bumps the generation.
    let again = t.kubectl_stdin(&["apply", "-f", "-"], APP).await;
    assert!(String::from_utf8_lossy(&again.stdout).contains("deployment.apps/web unchanged"));
    let scaled = APP.replace("replicas: 2", "replicas: 3");
    let out = t.kubectl_stdin(&["apply", "-f", "-"], &scaled).await;
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("deployment.apps/web configured"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let spec = t
        .kubectl_ok(&[
            "get",
            "deploy",
            "web",
            "-o",
            "jsonpath={.spec.replicas} {.metadata.generation}",
        ])
        .await;
    assert_eq!(spec, "3 2");

    // kubectl scale goes through the scale subresource.
    let out = t.kubectl_ok(&["scale", "deploy/web", "--replicas=5"]).await;
    assert_eq!(out.trim(), "deployment.apps/web scaled");
    let spec = t
        .kubectl_ok(&[
            "get",
            "deploy",
            "web",
            "-o",
            "jsonpath={.spec.replicas} {.metadata.generation}",
        ])
        .await;
    assert_eq!(spec, "5 3");
    let scale = t
        .kubectl_ok(&[
            "get",
            "--raw",
            "/apis/apps/v1/namespaces/default/deployments/web/scale",
        ])
        .await;
    assert!(scale.contains(r#""selector":"app=web""#), "{scale}");

    let out = t.kubectl_stdin(&["delete", "-f", "-"], APP).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let left = t.kubectl(&["get", "all", "-o", "name"]).await;
    assert_eq!(
        String::from_utf8_lossy(&left.stdout).trim(),
        "service/kubernetes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_reads_the_openapi_schemas() {
    let t = TestServer::start().await;
    let cm = t.kubectl_ok(&["explain", "configmap"]).await;
    assert!(cm.contains("KIND:       ConfigMap"), "{cm}");
    assert!(
        cm.contains("ConfigMap holds configuration data for pods to consume."),
        "{cm}"
    );
    let field = t
        .kubectl_ok(&["explain", "deploy.spec.strategy.type"])
        .await;
    assert!(field.contains("GROUP:      apps"), "{field}");
    assert!(field.contains("FIELD: type <string>"), "{field}");
}

/// `kubectl create -f` of a `List` (what `kubectl get -o yaml` prints) validates each item
/// with the server's OpenAPI v2 document, which kubectl reads as gnostic protobuf.
#[tokio::test]
async fn a_list_file_is_validated_with_openapi_v2_protobuf() {
    let t = TestServer::start().await;
    let list = r#"{"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "one"}, "data": {"a": "1"}},
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "two"}, "stringData": {"b": "2"}}
    ]}"#;
    let out = t.kubectl_stdin(&["create", "-f", "-"], list).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "configmap/one created\nsecret/two created\n"
    );
    // An unknown field in an item is found by kubectl's client-side (v2) validation.
    let bad = r#"{"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "three"}, "dta": {"a": "1"}}
    ]}"#;
    let out = t.kubectl_stdin(&["create", "-f", "-"], bad).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown field \"dta\""), "{err}");
    let out = t.kubectl(&["get", "configmap", "three"]).await;
    assert!(!out.status.success(), "nothing was created");
}
