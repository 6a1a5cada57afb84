//! kubectl's generators (`kubectl create <kind>`, `kubectl run`) send their objects as
//! `application/vnd.kubernetes.protobuf`: each must be created as upstream creates it.

mod common;

use common::TestServer;
use serde_json::{Value, json};

async fn get_json(t: &TestServer, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    let at = all
        .iter()
        .position(|a| !a.starts_with('-') && *a != "team-a")
        .unwrap_or(0);
    all.insert(at, "get");
    all.extend_from_slice(&["-o", "json"]);
    serde_json::from_str(&t.kubectl_ok(&all).await).expect("kubectl prints JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_create_generators_send_protobuf() {
    let t = TestServer::start().await;
    let ok = |out: String, what: &str| assert!(out.contains(what), "{out}");
    ok(
        t.kubectl_ok(&["create", "namespace", "team-a", "-v=8"])
            .await,
        "namespace/team-a created",
    );
    // The body really was protobuf (-v=8 logs the request headers on stderr).
    let verbose = t.kubectl(&["create", "namespace", "team-b", "-v=8"]).await;
    let stderr = String::from_utf8_lossy(&verbose.stderr);
    assert!(
        stderr.contains("Content-Type: application/vnd.kubernetes.protobuf"),
        "{stderr}"
    );
    assert!(verbose.status.success(), "{stderr}");

    // The namespace goes first: generators take everything after `--` as the command.
    let run = |args: &'static [&'static str]| {
        let mut all: Vec<&str> = vec!["-n", "team-a"];
        all.extend_from_slice(args);
        all
    };
    for args in [
        run(&[
            "create",
            "configmap",
            "c1",
            "--from-literal=a=b",
            "--from-literal=empty=",
        ]),
        run(&[
            "create",
            "secret",
            "generic",
            "s1",
            "--from-literal=password=hunter2",
        ]),
        run(&[
            "create",
            "deployment",
            "web",
            "--image=busybox",
            "--replicas=0",
            "--port=8080",
            "--",
            "sleep",
            "3600",
        ]),
        run(&["create", "service", "clusterip", "web", "--tcp=80:8080"]),
        run(&["create", "job", "j1", "--image=busybox", "--", "true"]),
        run(&["create", "role", "r1", "--verb=get", "--resource=pods"]),
        run(&["create", "serviceaccount", "sa1"]),
        run(&[
            "create",
            "cronjob",
            "cj",
            "--image=busybox",
            "--schedule=*/5 * * * *",
        ]),
        run(&[
            "run",
            "p1",
            "--image=busybox",
            "--restart=Never",
            "--",
            "sleep",
            "1",
        ]),
        run(&[
            "create",
            "pdb",
            "pdb",
            "--selector=app=web",
            "--min-available=0",
        ]),
        run(&["create", "quota", "q", "--hard=pods=10"]),
        vec!["create", "priorityclass", "low", "--value=0"],
        vec![
            "create",
            "clusterrolebinding",
            "crb",
            "--clusterrole=view",
            "--user=alice",
        ],
    ] {
        let out = t.kubectl_ok(&args).await;
        assert!(out.contains("created"), "{args:?}: {out}");
    }

    let cm = get_json(&t, &run(&["configmap", "c1"])).await;
    assert_eq!(cm["data"], json!({"a": "b", "empty": ""}));
    let secret = get_json(&t, &run(&["secret", "s1"])).await;
    assert_eq!(secret["data"], json!({"password": "aHVudGVyMg=="}));
    assert_eq!(secret["type"], "Opaque");

    let deploy = get_json(&t, &run(&["deployment", "web"])).await;
    let spec = &deploy["spec"];
    // An explicit zero survives (a pointer field), and defaulting ran as for JSON bodies.
    assert_eq!(spec["replicas"], 0);
    assert_eq!(spec["strategy"]["rollingUpdate"]["maxSurge"], "25%");
    let container = &spec["template"]["spec"]["containers"][0];
    assert_eq!(container["image"], "busybox");
    assert_eq!(container["command"], json!(["sleep", "3600"]));
    assert_eq!(
        container["ports"],
        json!([{"containerPort": 8080, "protocol": "TCP"}])
    );
    assert_eq!(container["imagePullPolicy"], "Always");
    assert_eq!(
        spec["template"]["spec"]["terminationGracePeriodSeconds"],
        30
    );
    // Zero values of non-pointer fields are absent, as upstream shows them.
    for absent in ["stdin", "tty"] {
        assert!(container.get(absent).is_none(), "{container}");
    }
    assert!(spec.get("paused").is_none(), "{spec}");

    let svc = get_json(&t, &run(&["service", "web"])).await;
    assert_eq!(
        svc["spec"]["ports"],
        json!([{"name": "80-8080", "port": 80, "protocol": "TCP", "targetPort": 8080}])
    );
    assert!(
        svc["spec"]["clusterIP"]
            .as_str()
            .is_some_and(|ip| ip.starts_with("10.43."))
    );

    let role = get_json(&t, &run(&["role", "r1"])).await;
    assert_eq!(
        role["rules"],
        json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}])
    );
    let pod = get_json(&t, &run(&["pod", "p1"])).await;
    assert_eq!(pod["spec"]["restartPolicy"], "Never");
    assert_eq!(pod["spec"]["containers"][0]["args"], json!(["sleep", "1"]));
    let pdb = get_json(&t, &run(&["pdb", "pdb"])).await;
    assert_eq!(pdb["spec"]["minAvailable"], 0);
    let quota = get_json(&t, &run(&["quota", "q"])).await;
    assert_eq!(quota["spec"]["hard"], json!({"pods": "10"}));
    let pc = get_json(&t, &["priorityclass", "low"]).await;
    assert_eq!(pc["value"], 0);
    let crb = get_json(&t, &["clusterrolebinding", "crb"]).await;
    assert_eq!(crb["roleRef"]["name"], "view");
    assert_eq!(crb["subjects"][0]["name"], "alice");
    let cj = get_json(&t, &run(&["cronjob", "cj"])).await;
    assert_eq!(cj["spec"]["schedule"], "*/5 * * * *");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_protobuf_body_is_a_400_status() {
    let t = TestServer::start().await;
    let client = t.client().await;
    for (body, says) in [
        (
            b"{\"kind\":\"Namespace\"}".to_vec(),
            "Kubernetes protobuf prefix",
        ),
        (b"k8s\0\x0a\x10\x0a".to_vec(), "truncated or malformed"),
    ] {
        let req = axum::http::Request::post("/api/v1/namespaces")
            .header("content-type", "application/vnd.kubernetes.protobuf")
            .body(body)
            .expect("request");
        let err = client
            .request::<kube::core::Status>(req)
            .await
            .expect_err("refused");
        let kube::Error::Api(status) = err else {
            panic!("not a Status: {err:?}")
        };
        assert_eq!((status.code, status.reason.as_str()), (400, "BadRequest"));
        assert!(status.message.contains(says), "{}", status.message);
    }
}
