//! The audit log: upstream's Policy decides the level; events are `audit.k8s.io/v1` JSON lines.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::TestServer;
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ObjectMeta, PostParams, WatchParams};
use rk3s_apiserver::audit::{Audit, AuditConfig};
use serde_json::Value;

/// Starts a server auditing with `policy` (YAML) into `<dir>/audit.log`.
async fn start(policy: &str) -> (TestServer, tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let policy_file = dir.path().join("policy.yaml");
    std::fs::write(&policy_file, policy).expect("policy written");
    let log = dir.path().join("audit.log");
    let audit = Audit::from_config(&AuditConfig {
        policy_file: Some(policy_file),
        log_path: Some(log.clone()),
        ..AuditConfig::default()
    })
    .expect("audit configuration")
    .expect("audit on");
    let t = TestServer::start_configured(|a| a.audit(Some(audit))).await;
    (t, dir, log)
}

fn events(log: &Path) -> Vec<Value> {
    std::fs::read_to_string(log)
        .expect("audit log")
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON event per line"))
        .collect()
}

/// Waits (bounded) until an event matching `f` is in the log.
async fn wait_for(log: &Path, f: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..100 {
        if let Some(e) = events(log).into_iter().find(&f) {
            return e;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no such event in {:#?}", events(log));
}

fn configmap(name: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
        data: Some([("k".to_string(), "v".to_string())].into()),
        ..ConfigMap::default()
    }
}

const METADATA: &str = "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n- level: None\n  nonResourceURLs: ['/healthz*', '/readyz*', '/livez*']\n- level: Metadata\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_level_logs_allowed_and_denied_requests() {
    let (t, _dir, log) = start(METADATA).await;
    let cms: Api<ConfigMap> = Api::namespaced(t.client().await, "default");
    cms.create(&PostParams::default(), &configmap("cm1"))
        .await
        .expect("admin creates");

    // A `view` user may read but not create.
    t.kubectl_stdin(
        &["apply", "-f", "-"],
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {name: viewer-view}\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: view}\nsubjects:\n- {apiGroup: rbac.authorization.k8s.io, kind: User, name: viewer}\n",
    )
    .await;
    let viewer = t.user_kubeconfig("viewer", &[]);
    let out = t
        .kubectl_as(&viewer, &["create", "configmap", "cm2", "-n", "default"])
        .await;
    assert!(!out.status.success(), "a view user cannot create");

    let created = wait_for(&log, |e| {
        e["verb"] == "create" && e["objectRef"]["name"] == "cm1"
    })
    .await;
    assert_eq!(created["kind"], "Event");
    assert_eq!(created["apiVersion"], "audit.k8s.io/v1");
    assert_eq!(created["level"], "Metadata");
    assert_eq!(created["stage"], "ResponseComplete");
    assert!(
        created["requestURI"]
            .as_str()
            .expect("requestURI")
            .starts_with("/api/v1/namespaces/default/configmaps"),
        "{created}"
    );
    assert_eq!(created["objectRef"]["resource"], "configmaps");
    assert_eq!(created["objectRef"]["namespace"], "default");
    assert_eq!(created["objectRef"]["apiVersion"], "v1");
    assert_eq!(created["responseStatus"]["code"], 201);
    assert!(
        created["user"]["groups"]
            .as_array()
            .expect("groups")
            .contains(&"system:masters".into()),
        "{created}"
    );
    assert_eq!(
        created["annotations"]["authorization.k8s.io/decision"],
        "allow"
    );
    assert!(
        created["sourceIPs"]
            .as_array()
            .expect("source IPs")
            .contains(&"127.0.0.1".into())
    );
    assert!(!created["auditID"].as_str().expect("auditID").is_empty());
    assert!(created["requestReceivedTimestamp"].is_string());
    assert!(created["stageTimestamp"].is_string());
    assert!(created.get("requestObject").is_none(), "Metadata level");

    let denied = wait_for(&log, |e| {
        e["verb"] == "create" && e["user"]["username"] == "viewer"
    })
    .await;
    assert_eq!(denied["responseStatus"]["code"], 403);
    assert_eq!(denied["responseStatus"]["reason"], "Forbidden");
    assert_eq!(
        denied["annotations"]["authorization.k8s.io/decision"],
        "forbid"
    );
    assert_eq!(denied["objectRef"]["name"], "cm2");
    assert!(
        denied["userAgent"]
            .as_str()
            .expect("kubectl sends a User-Agent")
            .starts_with("kubectl"),
        "{denied}"
    );

    // A watch: ResponseStarted, then ResponseComplete when it ends.
    let mut w = cms
        .watch(&WatchParams::default().timeout(1), "0")
        .await
        .expect("watch")
        .boxed();
    while w.next().await.is_some() {}
    drop(w);
    let completed = wait_for(&log, |e| {
        e["verb"] == "watch" && e["stage"] == "ResponseComplete"
    })
    .await;
    let id = completed["auditID"].clone();
    let all = events(&log);
    assert!(
        all.iter()
            .any(|e| e["auditID"] == id && e["stage"] == "ResponseStarted"),
        "{all:#?}"
    );

    // Omitted stage and the None rule.
    assert!(all.iter().all(|e| e["stage"] != "RequestReceived"));
    assert!(all.iter().all(|e| {
        !e["requestURI"]
            .as_str()
            .unwrap_or("")
            .starts_with("/readyz")
    }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn level_none_writes_nothing() {
    let (t, _dir, log) =
        start("apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n- level: None\n").await;
    let cms: Api<ConfigMap> = Api::namespaced(t.client().await, "default");
    cms.create(&PostParams::default(), &configmap("cm1"))
        .await
        .expect("created");
    cms.get("cm1").await.expect("read");
    assert_eq!(std::fs::read_to_string(&log).expect("log"), "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_level_logs_the_request_object() {
    let (t, _dir, log) = start(
        "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n- level: RequestResponse\n  resources:\n  - group: ''\n    resources: [configmaps]\n    resourceNames: [full]\n- level: Request\n  verbs: [create]\n",
    )
    .await;
    let cms: Api<ConfigMap> = Api::namespaced(t.client().await, "default");
    cms.create(&PostParams::default(), &configmap("cm1"))
        .await
        .expect("created");
    cms.get("cm1").await.expect("read, not logged");
    let ev = wait_for(&log, |e| {
        e["verb"] == "create" && e["stage"] == "ResponseComplete"
    })
    .await;
    assert_eq!(ev["level"], "Request");
    assert_eq!(ev["requestObject"]["data"]["k"], "v");
    assert!(ev.get("responseObject").is_none());
    // Not omitted here: RequestReceived comes first, without a response status.
    let received = events(&log)
        .into_iter()
        .find(|e| e["auditID"] == ev["auditID"] && e["stage"] == "RequestReceived")
        .expect("RequestReceived");
    assert!(received.get("responseStatus").is_none());
    assert!(
        events(&log).iter().all(|e| e["verb"] != "get"),
        "gets match no rule"
    );

    // RequestResponse (resourceNames) logs the answer too.
    let mut cm = configmap("full");
    cm.data = Some([("x".to_string(), "y".to_string())].into());
    cms.create(&PostParams::default(), &cm)
        .await
        .expect("created");
    cms.get("full").await.expect("read");
    let ev = wait_for(&log, |e| {
        e["verb"] == "get" && e["stage"] == "ResponseComplete"
    })
    .await;
    assert_eq!(ev["level"], "RequestResponse");
    assert_eq!(ev["responseObject"]["data"]["x"], "y");
    assert_eq!(ev["responseObject"]["kind"], "ConfigMap");
}
