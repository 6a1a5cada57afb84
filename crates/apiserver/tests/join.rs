//! Joining nodes (K3s' join endpoints next to the API) and what a kubelet may then do
//! (node authorizer + NodeRestriction), against an in-process apiserver.

mod common;

use std::process::Output;
use std::time::Duration;

use common::TestServer;
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod, Secret, ServiceAccount};
use kube::api::{Api, PostParams};

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// curl against the server: (HTTP code, body). `extra` adds arguments (credentials, headers).
async fn curl(t: &TestServer, method: &str, path: &str, extra: &[&str]) -> (u16, String) {
    let ca = t.dir.path().join("ca.crt");
    std::fs::write(&ca, t.server.ca_pem()).expect("CA written");
    let out = tokio::process::Command::new("curl")
        .args(["-s", "-X", method, "-w", "\n%{http_code}", "--cacert"])
        .arg(&ca)
        .args(extra)
        .arg(format!("{}{path}", t.server.url()))
        .output()
        .await
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// The node password Secrets in kube-system.
async fn node_password_secrets(t: &TestServer) -> Vec<String> {
    let secrets: Api<Secret> = Api::namespaced(t.client().await, "kube-system");
    secrets
        .list(&Default::default())
        .await
        .expect("secrets listed")
        .items
        .into_iter()
        .filter_map(|s| s.metadata.name)
        .filter(|n| n.ends_with(".node-password.k3s"))
        .collect()
}

/// Splits what a certificate endpoint answered (GET form) into (certificate chain, key).
fn cert_and_key(body: &str) -> (String, String) {
    let at = body
        .find("-----BEGIN PRIVATE KEY-----")
        .expect("a key in the answer");
    (body[..at].to_string(), body[at..].to_string())
}

const OBJECTS: &str = "\
apiVersion: v1
kind: ServiceAccount
metadata: {name: default, namespace: default}
---
apiVersion: v1
kind: Node
metadata: {name: n1}
---
apiVersion: v1
kind: Node
metadata: {name: n2}
---
apiVersion: v1
kind: Secret
metadata: {name: s1, namespace: default}
stringData: {k: v}
---
apiVersion: v1
kind: Secret
metadata: {name: s2, namespace: default}
stringData: {k: v}
---
apiVersion: v1
kind: Pod
metadata: {name: p1, namespace: default}
spec:
  nodeName: n1
  containers: [{name: c, image: busybox}]
  volumes: [{name: v, secret: {secretName: s1}}]
---
apiVersion: v1
kind: Pod
metadata: {name: p2, namespace: default}
spec:
  nodeName: n2
  containers: [{name: c, image: busybox}]
  volumes: [{name: v, secret: {secretName: s2}}]
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_endpoints_issue_kubelet_certificates_only_for_the_token() {
    let (t, token) = TestServer::start_joinable().await;
    let out = t.kubectl_stdin(&["apply", "-f", "-"], OBJECTS).await;
    assert!(out.status.success(), "{}", stderr(&out));

    // The CA bundle is anonymous, and is what the token pins.
    let (code, ca) = curl(&t, "GET", "/cacerts", &[]).await;
    assert_eq!(code, 200);
    assert_eq!(ca, t.server.ca_pem());
    assert_eq!(Some(rk3s_apiserver::ca_hash(&ca)), token.ca_hash);
    assert_eq!(curl(&t, "GET", "/ping", &[]).await, (200, "pong".into()));

    // Wrong or missing credentials: 401, nothing issued, no node password stored.
    let node = ["-H", "K3s-Node-Name: n1", "-H", "K3s-Node-Password: pw1"];
    let good = format!("node:{}", token.password);
    for creds in [None, Some("node:wrong"), Some("admin:x")] {
        let mut args: Vec<&str> = node.to_vec();
        if let Some(c) = creds {
            args.extend(["-u", c]);
        }
        let (code, body) = curl(&t, "GET", "/v1-k3s/client-kubelet.crt", &args).await;
        assert_eq!(code, 401, "{creds:?}: {body}");
        assert!(!body.contains("CERTIFICATE"), "{body}");
        let (code, _) = curl(&t, "GET", "/v1-k3s/client-ca.crt", &args).await;
        assert_eq!(code, 401);
    }
    let mut wrong_user = node.to_vec();
    let as_admin = format!("admin:{}", token.password);
    wrong_user.extend(["-u", &as_admin]);
    assert_eq!(
        curl(&t, "GET", "/v1-k3s/client-kubelet.crt", &wrong_user)
            .await
            .0,
        401
    );
    assert!(node_password_secrets(&t).await.is_empty());
    // Without the node headers: 400.
    let (code, body) = curl(&t, "GET", "/v1-k3s/client-kubelet.crt", &["-u", &good]).await;
    assert_eq!(code, 400, "{body}");

    // The token: a client certificate for system:node:n1 (with a new key, GET form), and the
    // node's password is remembered.
    let mut args = node.to_vec();
    args.extend(["-u", &good]);
    let (code, body) = curl(&t, "GET", "/v1-k3s/client-kubelet.crt", &args).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(node_password_secrets(&t).await, ["n1.node-password.k3s"]);
    let secrets: Api<Secret> = Api::namespaced(t.client().await, "kube-system");
    let stored = secrets.get("n1.node-password.k3s").await.expect("secret");
    assert_eq!(stored.immutable, Some(true));
    let hash = String::from_utf8(stored.data.expect("data")["hash"].0.clone()).expect("text");
    assert!(
        !hash.contains("pw1"),
        "the password is stored hashed: {hash}"
    );
    let (client_crt, client_key) = cert_and_key(&body);
    let (code, client_ca) = curl(&t, "GET", "/v1-k3s/client-ca.crt", &args).await;
    assert_eq!(code, 200);
    assert_eq!(client_ca, t.server.pki().client_ca.cert_pem);
    assert_eq!(
        curl(&t, "GET", "/v1-k3s/server-ca.crt", &args).await,
        (200, t.server.ca_pem().to_string())
    );

    // Another agent claiming n1 with another password: 403, nothing issued.
    let thief = [
        "-u",
        &good,
        "-H",
        "K3s-Node-Name: n1",
        "-H",
        "K3s-Node-Password: other",
    ];
    let (code, body) = curl(&t, "GET", "/v1-k3s/client-kubelet.crt", &thief).await;
    assert_eq!(code, 403, "{body}");
    assert!(!body.contains("CERTIFICATE"), "{body}");

    // A serving certificate with the node's addresses.
    let mut serving = args.clone();
    serving.extend(["-H", "rk3s-Node-IP: 10.1.2.3"]);
    let (code, body) = curl(&t, "GET", "/v1-k3s/serving-kubelet.crt", &serving).await;
    assert_eq!(code, 200, "{body}");
    let (serving_crt, _) = cert_and_key(&body);
    let out = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-text"])
        .stdin({
            let path = t.dir.path().join("serving.crt");
            std::fs::write(&path, &serving_crt).expect("written");
            std::fs::File::open(path).expect("open")
        })
        .output()
        .expect("openssl runs");
    let text = String::from_utf8_lossy(&out.stdout);
    for want in [
        "DNS:n1",
        "DNS:localhost",
        "IP Address:10.1.2.3",
        "IP Address:127.0.0.1",
        "Subject: CN = n1",
    ] {
        assert!(text.contains(want), "{want} missing: {text}");
    }

    // The issued client certificate authenticates as system:node:n1 in system:nodes: it can
    // read its Node and the secret of the pod bound to it, not another node's pod's secret.
    let kubeconfig = t.dir.path().join("kubelet.kubeconfig");
    std::fs::write(
        &kubeconfig,
        rk3s_apiserver::kubeconfig(
            &t.server.url(),
            t.server.ca_pem(),
            &rk3s_apiserver::CertKey {
                cert_pem: client_crt.clone(),
                key_pem: client_key.clone(),
            },
        ),
    )
    .expect("kubeconfig written");
    let kubelet = t.client_from(&kubeconfig).await;
    let nodes: Api<Node> = Api::all(kubelet.clone());
    nodes.get("n1").await.expect("a kubelet reads its node");
    let secrets: Api<Secret> = Api::namespaced(kubelet.clone(), "default");
    secrets.get("s1").await.expect("the secret of a pod on n1");
    match secrets.get("s2").await {
        Err(kube::Error::Api(e)) => assert_eq!(e.code, 403, "{e:?}"),
        other => panic!("the secret of a pod on n2 must be forbidden: {other:?}"),
    }
    let out = t
        .kubectl_as(
            &kubeconfig,
            &[
                "auth",
                "whoami",
                "-o",
                "jsonpath={.status.userInfo.username} {.status.userInfo.groups}",
            ],
        )
        .await;
    let who = String::from_utf8_lossy(&out.stdout);
    assert!(
        who.starts_with("system:node:n1 ") && who.contains("system:nodes"),
        "{who} {}",
        stderr(&out)
    );

    // Renewal with the kubelet certificate itself: for its own node only.
    let (crt, key) = (t.dir.path().join("n1.crt"), t.dir.path().join("n1.key"));
    std::fs::write(&crt, &client_crt).expect("written");
    std::fs::write(&key, &client_key).expect("written");
    let (crt, key) = (crt.display().to_string(), key.display().to_string());
    let with_cert = |name: &'static str| {
        vec![
            "--cert".to_string(),
            crt.clone(),
            "--key".into(),
            key.clone(),
            "-H".into(),
            format!("K3s-Node-Name: {name}"),
            "-H".into(),
            "K3s-Node-Password: pw1".into(),
        ]
    };
    let own = with_cert("n1");
    let own: Vec<&str> = own.iter().map(String::as_str).collect();
    assert_eq!(
        curl(&t, "GET", "/v1-k3s/client-kubelet.crt", &own).await.0,
        200
    );
    let other = with_cert("n2");
    let other: Vec<&str> = other.iter().map(String::as_str).collect();
    assert_eq!(
        curl(&t, "GET", "/v1-k3s/client-kubelet.crt", &other)
            .await
            .0,
        400
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_restriction_limits_kubelets_to_their_own_node() {
    let t = TestServer::start().await;
    let out = t.kubectl_stdin(&["apply", "-f", "-"], OBJECTS).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let kubeconfig = t.user_kubeconfig("system:node:n1", &["system:nodes"]);

    // Labels of its own Node: ordinary ones yes, node-restriction and unknown kubernetes.io
    // ones no.
    let out = t
        .kubectl_as(
            &kubeconfig,
            &[
                "label",
                "node",
                "n1",
                "example.com/team=a",
                "node.kubernetes.io/pool=x",
            ],
        )
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let out = t
        .kubectl_as(
            &kubeconfig,
            &[
                "label",
                "node",
                "n1",
                "node-restriction.kubernetes.io/dedicated=db",
            ],
        )
        .await;
    assert!(
        stderr(&out).contains(
            "nodes \"n1\" is forbidden: is not allowed to modify labels: node-restriction.kubernetes.io/dedicated"
        ),
        "{}",
        stderr(&out)
    );
    let out = t
        .kubectl_as(
            &kubeconfig,
            &["label", "node", "n1", "kubernetes.io/role=master"],
        )
        .await;
    assert!(
        stderr(&out).contains("is not allowed to modify labels: kubernetes.io/role"),
        "{}",
        stderr(&out)
    );
    let out = t
        .kubectl_as(&kubeconfig, &["taint", "node", "n1", "k=v:NoSchedule"])
        .await;
    assert!(
        stderr(&out).contains("node \"n1\" is not allowed to modify taints"),
        "{}",
        stderr(&out)
    );
    // Another Node: not at all.
    let out = t
        .kubectl_as(&kubeconfig, &["label", "node", "n2", "a=b"])
        .await;
    assert!(stderr(&out).contains("forbidden"), "{}", stderr(&out));
    let kubelet = t.client_from(&kubeconfig).await;
    let nodes: Api<Node> = Api::all(kubelet.clone());
    let n3: Node =
        serde_json::from_value(serde_json::json!({ "metadata": { "name": "n3" } })).expect("node");
    match nodes.create(&PostParams::default(), &n3).await {
        Err(kube::Error::Api(e)) => {
            assert_eq!(e.code, 403);
            assert_eq!(
                e.message,
                "nodes \"n3\" is forbidden: node \"n1\" is not allowed to modify node \"n3\""
            );
        }
        other => panic!("creating another node must be forbidden: {other:?}"),
    }
    // Registering with a node-restriction label is refused too (as n1, after deleting it).
    t.kubectl_ok(&["delete", "node", "n1"]).await;
    let labelled: Node = serde_json::from_value(serde_json::json!({
        "metadata": { "name": "n1", "labels": { "node-restriction.kubernetes.io/x": "y", "kubernetes.io/hostname": "n1" } }
    }))
    .expect("node");
    match nodes.create(&PostParams::default(), &labelled).await {
        Err(kube::Error::Api(e)) => assert_eq!(
            e.message,
            "nodes \"n1\" is forbidden: node \"n1\" is not allowed to set the following labels: node-restriction.kubernetes.io/x"
        ),
        other => panic!("{other:?}"),
    }
    let plain: Node = serde_json::from_value(serde_json::json!({
        "metadata": { "name": "n1", "labels": { "kubernetes.io/hostname": "n1", "kubernetes.io/os": "linux" } }
    }))
    .expect("node");
    let n1 = nodes
        .create(&PostParams::default(), &plain)
        .await
        .expect("registers itself");

    // Pods: only mirror pods bound to itself; deletes only of its own pods.
    let pods: Api<Pod> = Api::namespaced(kubelet.clone(), "default");
    let pod = |annotated: bool, node: &str| -> Pod {
        let mut meta = serde_json::json!({
            "name": format!("static-{node}-{annotated}"),
            "ownerReferences": [{ "apiVersion": "v1", "kind": "Node", "name": "n1", "uid": n1.metadata.uid.clone().unwrap_or_default(), "controller": true }],
        });
        if annotated {
            meta["annotations"] = serde_json::json!({ "kubernetes.io/config.mirror": "hash" });
        }
        serde_json::from_value(serde_json::json!({
            "metadata": meta,
            "spec": { "nodeName": node, "containers": [{ "name": "c", "image": "busybox" }] },
        }))
        .expect("pod")
    };
    match pods.create(&PostParams::default(), &pod(false, "n1")).await {
        Err(kube::Error::Api(e)) => assert!(
            e.message.ends_with("pod does not have \"kubernetes.io/config.mirror\" annotation, node \"n1\" can only create mirror pods"),
            "{}",
            e.message
        ),
        other => panic!("{other:?}"),
    }
    match pods.create(&PostParams::default(), &pod(true, "n2")).await {
        Err(kube::Error::Api(e)) => assert!(
            e.message
                .ends_with("node \"n1\" can only create pods with spec.nodeName set to itself"),
            "{}",
            e.message
        ),
        other => panic!("{other:?}"),
    }
    let mut wrong_uid = pod(true, "n1");
    wrong_uid.metadata.owner_references.as_mut().expect("owner")[0].uid = "not-the-node".into();
    match pods.create(&PostParams::default(), &wrong_uid).await {
        Err(kube::Error::Api(e)) => assert!(e.message.contains("UID mismatch"), "{}", e.message),
        other => panic!("{other:?}"),
    }
    let mirror = pods
        .create(&PostParams::default(), &pod(true, "n1"))
        .await
        .expect("a mirror pod of its own");
    assert_eq!(mirror.spec.and_then(|s| s.service_account_name), None);
    match pods.delete("p2", &Default::default()).await {
        Err(kube::Error::Api(e)) => assert_eq!(
            e.message,
            "pods \"p2\" is forbidden: node \"n1\" can only delete pods with spec.nodeName set to itself"
        ),
        other => panic!("{other:?}"),
    }
    // Service account tokens: only bound to a pod on its node.
    let admin_pods: Api<Pod> = Api::namespaced(t.client().await, "default");
    let uid_of = |p: Pod| p.metadata.uid.unwrap_or_default();
    let p1_uid = uid_of(admin_pods.get("p1").await.expect("p1"));
    let p2_uid = uid_of(admin_pods.get("p2").await.expect("p2"));
    let sas: Api<ServiceAccount> = Api::namespaced(kubelet.clone(), "default");
    let request = |bound: Option<(&str, &str)>| -> TokenRequest {
        let mut spec = serde_json::json!({ "audiences": [] });
        if let Some((name, uid)) = bound {
            spec["boundObjectRef"] =
                serde_json::json!({ "apiVersion": "v1", "kind": "Pod", "name": name, "uid": uid });
        }
        serde_json::from_value(serde_json::json!({ "spec": spec })).expect("token request")
    };
    for (bound, why) in [
        (None, "node requested token not bound to a pod"),
        (
            Some(("p2", p2_uid.as_str())),
            "node requested token bound to a pod scheduled on a different node",
        ),
    ] {
        match sas
            .create_token_request("default", &PostParams::default(), &request(bound))
            .await
        {
            Err(kube::Error::Api(e)) => assert_eq!(
                e.message,
                format!("serviceaccounts \"default\" is forbidden: {why}")
            ),
            other => panic!("{other:?}"),
        }
    }
    sas.create_token_request(
        "default",
        &PostParams::default(),
        &request(Some(("p1", p1_uid.as_str()))),
    )
    .await
    .expect("a token for its own pod");
    pods.delete("p1", &Default::default())
        .await
        .expect("its own pod");

    // Leases: its own, in kube-node-lease.
    let leases: Api<Lease> = Api::namespaced(kubelet.clone(), "kube-node-lease");
    let lease = |name: &str| -> Lease {
        serde_json::from_value(serde_json::json!({ "metadata": { "name": name } })).expect("lease")
    };
    leases
        .create(&PostParams::default(), &lease("n1"))
        .await
        .expect("its lease");
    match leases.create(&PostParams::default(), &lease("n2")).await {
        Err(kube::Error::Api(e)) => assert_eq!(e.code, 403, "{e:?}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controllers_have_their_own_roles() {
    let t = TestServer::start().await;
    for (role, binding_sa) in [
        (
            "system:controller:deployment-controller",
            "deployment-controller",
        ),
        (
            "system:controller:replicaset-controller",
            "replicaset-controller",
        ),
        (
            "system:controller:namespace-controller",
            "namespace-controller",
        ),
        ("system:controller:job-controller", "job-controller"),
        (
            "system:controller:generic-garbage-collector",
            "generic-garbage-collector",
        ),
    ] {
        t.kubectl_ok(&["get", "clusterrole", role]).await;
        let subjects = t
            .kubectl_ok(&[
                "get",
                "clusterrolebinding",
                role,
                "-o",
                "jsonpath={.subjects[0].namespace}/{.subjects[0].name}",
            ])
            .await;
        assert_eq!(subjects, format!("kube-system/{binding_sa}"));
    }
    // Least privilege: the deployment controller manages replicasets, not secrets.
    let sa = "system:serviceaccount:kube-system:deployment-controller";
    let can = |verb: &'static str, what: &'static str| {
        let t = &t;
        async move {
            let out = t
                .kubectl(&["auth", "can-i", verb, what, "--as", sa, "-A"])
                .await;
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        }
    };
    // RBAC reaches the authorizer through a watch: wait for the first grant.
    let mut ok = String::new();
    for _ in 0..100 {
        ok = can("create", "replicasets.apps").await;
        if ok == "yes" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ok, "yes");
    assert_eq!(can("get", "secrets").await, "no");
    assert_eq!(can("delete", "deployments.apps").await, "no");
}

const BOOTSTRAP_TOKENS: &str = "\
apiVersion: v1
kind: Secret
metadata: {name: bootstrap-token-abcdef, namespace: kube-system}
type: bootstrap.kubernetes.io/token
stringData:
  token-id: abcdef
  token-secret: 0123456789abcdef
  expiration: \"2099-01-01T00:00:00Z\"
  usage-bootstrap-authentication: \"true\"
  usage-bootstrap-signing: \"true\"
  auth-extra-groups: system:bootstrappers:rk3s:default-node-token
---
apiVersion: v1
kind: Secret
metadata: {name: bootstrap-token-expird, namespace: kube-system}
type: bootstrap.kubernetes.io/token
stringData:
  token-id: expird
  token-secret: 0123456789abcdef
  expiration: \"2020-01-01T00:00:00Z\"
  usage-bootstrap-authentication: \"true\"
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_and_agent_tokens_join_agents_only() {
    let pki = rk3s_apiserver::Pki::generate(&rk3s_apiserver::PkiOptions {
        node_ips: vec!["127.0.0.1".parse().expect("ip")],
        ..rk3s_apiserver::PkiOptions::default()
    })
    .expect("PKI");
    let token = rk3s_apiserver::JoinToken::generate(&pki.server_ca.cert_pem, "server");
    let agent = rk3s_apiserver::JoinToken::generate(&pki.server_ca.cert_pem, "node");
    let (accepted, agent_accepted) = (token.clone(), agent.clone());
    let t = TestServer::start_configured(move |a| {
        a.pki(pki).join_token(accepted).agent_token(agent_accepted)
    })
    .await;
    let out = t
        .kubectl_stdin(&["apply", "-f", "-"], BOOTSTRAP_TOKENS)
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let node = |n: &'static str| ["-H", n, "-H", "K3s-Node-Password: pw"];

    // A bootstrap token (bearer) joins an agent; the node password is kept as K3s' scrypt hash.
    let mut args = node("K3s-Node-Name: b1").to_vec();
    args.extend(["-H", "Authorization: Bearer abcdef.0123456789abcdef"]);
    let (code, body) = curl(&t, "GET", "/v1-k3s/client-kubelet.crt", &args).await;
    assert_eq!(code, 200, "{body}");
    let secrets: Api<Secret> = Api::namespaced(t.client().await, "kube-system");
    let stored = secrets.get("b1.node-password.k3s").await.expect("secret");
    let hash = String::from_utf8(stored.data.expect("data")["hash"].0.clone()).expect("text");
    assert!(
        hash.starts_with("$1:") && hash.contains(":15:8:1:"),
        "{hash}"
    );
    // Expired, wrong secret, unknown id: 401 and nothing issued.
    for bad in [
        "expird.0123456789abcdef",
        "abcdef.0123456789abcdee",
        "zzzzzz.0123456789abcdef",
    ] {
        let mut args = node("K3s-Node-Name: b2").to_vec();
        let header = format!("Authorization: Bearer {bad}");
        args.extend(["-H", &header]);
        let (code, body) = curl(&t, "GET", "/v1-k3s/client-kubelet.crt", &args).await;
        assert_eq!(code, 401, "{bad}: {body}");
    }
    assert!(
        secrets
            .get_opt("b2.node-password.k3s")
            .await
            .expect("get")
            .is_none()
    );

    // The bootstrap token authenticates to the API as system:bootstrap:<id>; the expired one
    // does not.
    let kc = t.token_kubeconfig("bootstrap", "abcdef.0123456789abcdef");
    let out = t
        .kubectl_as(
            &kc,
            &[
                "auth",
                "whoami",
                "-o",
                "jsonpath={.status.userInfo.username} {.status.userInfo.groups}",
            ],
        )
        .await;
    let who = String::from_utf8_lossy(&out.stdout);
    assert!(
        who.starts_with("system:bootstrap:abcdef ")
            && who.contains("\"system:bootstrappers\"")
            && who.contains("system:bootstrappers:rk3s:default-node-token"),
        "{who} {}",
        stderr(&out)
    );
    let kc = t.token_kubeconfig("expired", "expird.0123456789abcdef");
    let out = t.kubectl_as(&kc, &["auth", "whoami"]).await;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("Unauthorized"), "{}", stderr(&out));

    // The agent token joins agents (user node) but is not the server token.
    let with_agent = format!("node:{}", agent.password);
    let mut args = node("K3s-Node-Name: a1").to_vec();
    args.extend(["-u", &with_agent]);
    assert_eq!(
        curl(&t, "GET", "/v1-k3s/client-kubelet.crt", &args).await.0,
        200
    );
    let as_server = format!("server:{}", agent.password);
    let mut args = node("K3s-Node-Name: a2").to_vec();
    args.extend(["-u", &as_server]);
    assert_eq!(
        curl(&t, "GET", "/v1-k3s/client-kubelet.crt", &args).await.0,
        401
    );
    // The server token still joins agents.
    let with_server = format!("node:{}", token.password);
    let mut args = node("K3s-Node-Name: a3").to_vec();
    args.extend(["-u", &with_server]);
    assert_eq!(
        curl(&t, "GET", "/v1-k3s/client-kubelet.crt", &args).await.0,
        200
    );

    // The secrets-encrypt endpoints: the server token and admin certificates only.
    let server_creds = format!("server:{}", token.password);
    let (code, body) = curl(&t, "GET", "/v1-k3s/encrypt/status", &["-u", &server_creds]).await;
    assert_eq!(code, 200, "{body}");
    let state: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert!(state.get("enable").is_none(), "no configuration: {state}");
    let (crt, key) = t.admin_cert_files();
    let (crt, key) = (crt.display().to_string(), key.display().to_string());
    let (code, _) = curl(
        &t,
        "GET",
        "/v1-k3s/encrypt/status",
        &["--cert", &crt, "--key", &key],
    )
    .await;
    assert_eq!(code, 200);
    for creds in [with_agent.as_str(), with_server.as_str()] {
        let (code, _) = curl(&t, "GET", "/v1-k3s/encrypt/status", &["-u", creds]).await;
        assert_eq!(code, 403, "{creds}");
    }
    let (code, _) = curl(
        &t,
        "GET",
        "/v1-k3s/encrypt/status",
        &["-H", "Authorization: Bearer abcdef.0123456789abcdef"],
    )
    .await;
    assert_eq!(code, 403);
    assert_eq!(curl(&t, "GET", "/v1-k3s/encrypt/status", &[]).await.0, 401);
    // Without --secrets-encryption there is nothing to change.
    let (code, body) = curl(
        &t,
        "PUT",
        "/v1-k3s/encrypt/config",
        &["-u", &server_creds, "-d", r#"{"stage":"prepare"}"#],
    )
    .await;
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("--secrets-encryption"), "{body}");
}
