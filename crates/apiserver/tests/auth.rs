//! Authentication and authorization as clients see them: 401 without credentials, RBAC's 403,
//! bindings, escalation prevention, service-account tokens, x509 users, `kubectl auth`.

mod common;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use common::TestServer;

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// curl against the server: (HTTP code, body). `extra` adds arguments (certificates, headers).
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
    let text = stdout(&out);
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// Runs kubectl as `kubeconfig` until it succeeds (RBAC changes reach the authorizer through
/// a watch, within milliseconds), or fails the test after 10 s.
async fn eventually_ok(t: &TestServer, kubeconfig: &Path, args: &[&str]) -> String {
    let mut last = None;
    for _ in 0..100 {
        let out = t.kubectl_as(kubeconfig, args).await;
        if out.status.success() {
            return stdout(&out);
        }
        last = Some(out);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let last = last.expect("ran");
    panic!("kubectl {args:?} kept failing: {}", stderr(&last));
}

fn cluster_role_binding(name: &str, role: &str, user: &str) -> String {
    format!(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata:\n  name: {name}\nroleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: ClusterRole\n  name: {role}\nsubjects:\n- apiGroup: rbac.authorization.k8s.io\n  kind: User\n  name: {user}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_requests_get_401_except_health() {
    let t = TestServer::start().await;
    let (code, body) = curl(&t, "GET", "/api/v1/namespaces", &[]).await;
    assert_eq!(code, 401, "{body}");
    let status: serde_json::Value = serde_json::from_str(&body).expect("Status JSON");
    assert_eq!(status["kind"], "Status");
    assert_eq!(status["reason"], "Unauthorized");
    assert_eq!(status["message"], "Unauthorized");
    assert_eq!(status["code"], 401);
    for path in ["/api", "/apis", "/openapi/v3", "/metrics"] {
        assert_eq!(curl(&t, "GET", path, &[]).await.0, 401, "{path}");
    }
    for path in ["/healthz", "/livez", "/readyz", "/version"] {
        let (code, body) = curl(&t, "GET", path, &[]).await;
        assert_eq!(code, 200, "{path}: {body}");
    }
    // A bad token is refused even where anonymous requests are allowed, as upstream.
    let (code, _) = curl(&t, "GET", "/healthz", &["-H", "Authorization: Bearer nope"]).await;
    assert_eq!(code, 401);
    // The admin certificate works.
    let (cert, key) = t.admin_cert_files();
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    let (code, body) = curl(
        &t,
        "GET",
        "/api/v1/namespaces",
        &["--cert", &cert, "--key", &key],
    )
    .await;
    assert_eq!(code, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn view_user_lists_but_cannot_create() {
    let t = TestServer::start().await;
    let jane = t.user_kubeconfig("jane", &["dev"]);
    // No binding yet: forbidden, with upstream's message.
    let out = t.kubectl_as(&jane, &["get", "pods", "-n", "default"]).await;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(
            "pods is forbidden: User \"jane\" cannot list resource \"pods\" in API group \"\" in the namespace \"default\""
        ),
        "{}",
        stderr(&out)
    );
    // An authenticated user may use discovery.
    t.kubectl_as(&jane, &["api-resources"]).await;
    t.kubectl_stdin(
        &["apply", "-f", "-"],
        &cluster_role_binding("jane-view", "view", "jane"),
    )
    .await;
    eventually_ok(&t, &jane, &["get", "pods", "-n", "default"]).await;
    eventually_ok(&t, &jane, &["get", "deployments", "-A"]).await;
    let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c1\n  namespace: default\n";
    let out = {
        let mut cmd = t.kubectl_cmd(&["create", "-f", "-"]);
        cmd.env("KUBECONFIG", &jane);
        let cm = cm.to_string();
        tokio::task::spawn_blocking(move || {
            use std::io::Write as _;
            let mut child = cmd
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("kubectl");
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(cm.as_bytes())
                .expect("written");
            child.wait_with_output().expect("kubectl ends")
        })
        .await
        .expect("thread")
    };
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(
            "configmaps is forbidden: User \"jane\" cannot create resource \"configmaps\" in API group \"\" in the namespace \"default\""
        ),
        "{}",
        stderr(&out)
    );
    // `view` does not include secrets.
    let out = t
        .kubectl_as(&jane, &["get", "secrets", "-n", "default"])
        .await;
    assert!(
        stderr(&out).contains("cannot list resource \"secrets\""),
        "{}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_bindings_grant_in_their_namespace_and_resource_names() {
    let t = TestServer::start().await;
    let objects = "\
apiVersion: v1
kind: ConfigMap
metadata: {name: a, namespace: default}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: b, namespace: default}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: read-a, namespace: default}
rules:
- apiGroups: [\"\"]
  resources: [configmaps]
  resourceNames: [a]
  verbs: [get]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: bob-read-a, namespace: default}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: read-a}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: Group, name: readers}
";
    let out = t.kubectl_stdin(&["apply", "-f", "-"], objects).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let bob = t.user_kubeconfig("bob", &["readers"]);
    eventually_ok(&t, &bob, &["get", "configmap", "a", "-n", "default"]).await;
    let out = t
        .kubectl_as(&bob, &["get", "configmap", "b", "-n", "default"])
        .await;
    assert!(
        stderr(&out).contains(
            "configmaps \"b\" is forbidden: User \"bob\" cannot get resource \"configmaps\" in API group \"\" in the namespace \"default\""
        ),
        "{}",
        stderr(&out)
    );
    let out = t
        .kubectl_as(&bob, &["get", "configmaps", "-n", "default"])
        .await;
    assert!(!out.status.success(), "resourceNames do not grant list");
    let out = t
        .kubectl_as(&bob, &["get", "configmap", "a", "-n", "kube-system"])
        .await;
    assert!(stderr(&out).contains("forbidden"), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escalation_is_refused() {
    let t = TestServer::start().await;
    // Carol administers namespace default (the aggregated `admin` role, bound there).
    let binding = "\
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: carol-admin, namespace: default}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: admin}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: carol}
";
    let out = t.kubectl_stdin(&["apply", "-f", "-"], binding).await;
    assert!(out.status.success(), "{}", stderr(&out));
    // `admin` got its rules from the aggregated roles.
    let admin = t
        .kubectl_ok(&["get", "clusterrole", "admin", "-o", "json"])
        .await;
    assert!(admin.contains("rolebindings"), "{admin}");
    assert!(admin.contains("deployments"), "{admin}");
    let carol = t.user_kubeconfig("carol", &[]);
    eventually_ok(&t, &carol, &["get", "roles", "-n", "default"]).await;

    // What she holds she may grant.
    let ok_role = "\
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: pod-reader, namespace: default}
rules:
- {apiGroups: [\"\"], resources: [pods], verbs: [get, list]}
";
    let out = kubectl_stdin_as(&t, &carol, &["create", "-f", "-"], ok_role).await;
    assert!(out.status.success(), "{}", stderr(&out));

    // What she does not hold she may not.
    let bad_role = "\
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: node-reader, namespace: default}
rules:
- {apiGroups: [\"\"], resources: [nodes], verbs: [get]}
";
    let out = kubectl_stdin_as(&t, &carol, &["create", "-f", "-"], bad_role).await;
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(
            "roles.rbac.authorization.k8s.io \"node-reader\" is forbidden: user \"carol\""
        ),
        "{err}"
    );
    assert!(
        err.contains("is attempting to grant RBAC permissions not currently held"),
        "{err}"
    );
    assert!(err.contains("Resources:[\"nodes\"]"), "{err}");
    // Server-side apply goes through the same check, for a new role and for one she may edit.
    for name in ["node-reader", "pod-reader"] {
        let role = bad_role.replace("node-reader", name);
        let out = kubectl_stdin_as(&t, &carol, &["apply", "--server-side", "-f", "-"], &role).await;
        assert!(!out.status.success(), "{name}");
        let err = stderr(&out);
        assert!(
            err.contains("is attempting to grant RBAC permissions not currently held"),
            "{err}"
        );
    }

    // Nor bind a role with more than she holds.
    let bad_binding = "\
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: carol-cluster-admin, namespace: default}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: cluster-admin}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: carol}
";
    let out = kubectl_stdin_as(&t, &carol, &["create", "-f", "-"], bad_binding).await;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("attempting to grant RBAC permissions not currently held"),
        "{}",
        stderr(&out)
    );
    // Patching a role she may edit into one granting more is refused too.
    let out = t
        .kubectl_as(
            &carol,
            &[
                "patch",
                "role",
                "pod-reader",
                "-n",
                "default",
                "--type=json",
                "-p",
                r#"[{"op":"add","path":"/rules/-","value":{"apiGroups":[""],"resources":["nodes"],"verbs":["get"]}}]"#,
            ],
        )
        .await;
    assert!(
        stderr(&out).contains("not currently held"),
        "{}",
        stderr(&out)
    );
    // With `bind` on cluster-admin she may bind it (upstream's escape hatch).
    let grant = "\
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: bind-cluster-admin}
rules:
- {apiGroups: [rbac.authorization.k8s.io], resources: [clusterroles], verbs: [bind], resourceNames: [cluster-admin]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: carol-bind}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: bind-cluster-admin}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: carol}
";
    let out = t.kubectl_stdin(&["apply", "-f", "-"], grant).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let mut created = false;
    for _ in 0..50 {
        let out = kubectl_stdin_as(&t, &carol, &["create", "-f", "-"], bad_binding).await;
        if out.status.success() {
            created = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(created, "bind permission lets carol bind cluster-admin");
}

async fn kubectl_stdin_as(t: &TestServer, kubeconfig: &Path, args: &[&str], input: &str) -> Output {
    let mut cmd = t.kubectl_cmd(args);
    cmd.env("KUBECONFIG", kubeconfig);
    let input = input.to_string();
    tokio::task::spawn_blocking(move || {
        use std::io::Write as _;
        let mut child = cmd
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("kubectl");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("written");
        child.wait_with_output().expect("kubectl ends")
    })
    .await
    .expect("thread")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_auth_whoami_and_can_i() {
    let t = TestServer::start().await;
    let out = t.kubectl_ok(&["auth", "whoami"]).await;
    assert!(out.contains("system:admin"), "{out}");
    assert!(out.contains("system:masters"), "{out}");
    assert!(out.contains("system:authenticated"), "{out}");
    assert_eq!(
        t.kubectl_ok(&["auth", "can-i", "create", "pods"])
            .await
            .trim(),
        "yes"
    );

    let dave = t.user_kubeconfig("dave", &["team-a"]);
    let out = t.kubectl_as(&dave, &["auth", "whoami", "-o", "json"]).await;
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("JSON");
    assert_eq!(v["kind"], "SelfSubjectReview");
    assert_eq!(v["status"]["userInfo"]["username"], "dave");
    assert_eq!(
        v["status"]["userInfo"]["groups"],
        serde_json::json!(["team-a", "system:authenticated"])
    );
    let out = t
        .kubectl_as(&dave, &["auth", "can-i", "list", "pods"])
        .await;
    assert_eq!(stdout(&out).trim(), "no");
    assert!(!out.status.success());
    t.kubectl_stdin(
        &["apply", "-f", "-"],
        &cluster_role_binding("dave-view", "view", "dave"),
    )
    .await;
    let out = eventually_ok(&t, &dave, &["auth", "can-i", "list", "pods"]).await;
    assert_eq!(out.trim(), "yes");
    let out = t
        .kubectl_as(&dave, &["auth", "can-i", "delete", "pods"])
        .await;
    assert_eq!(stdout(&out).trim(), "no");
    // Admin asks on dave's behalf (SubjectAccessReview through impersonation-free `--as` is not
    // used: a SubjectAccessReview body is the upstream way).
    let out = t
        .kubectl_as(&dave, &["auth", "can-i", "--list", "-n", "default"])
        .await;
    let list = stdout(&out);
    assert!(
        list.contains("selfsubjectaccessreviews.authorization.k8s.io"),
        "{list}"
    );
    assert!(list.contains("pods "), "{list}");
    assert!(list.contains("[/healthz]"), "{list}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subject_access_and_token_reviews() {
    let t = TestServer::start().await;
    let client = t.client().await;
    let sar = serde_json::json!({
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": {
            "user": "erin",
            "groups": ["system:authenticated"],
            "resourceAttributes": { "verb": "create", "resource": "selfsubjectaccessreviews", "group": "authorization.k8s.io" },
        },
    });
    let req = http_post("/apis/authorization.k8s.io/v1/subjectaccessreviews", &sar);
    let resp: serde_json::Value = client.request(req).await.expect("SAR");
    assert_eq!(resp["status"]["allowed"], true, "{resp}");
    // Upstream's RBAC names what allows it.
    assert_eq!(
        resp["status"]["reason"],
        "RBAC: allowed by ClusterRoleBinding \"system:basic-user\" of ClusterRole \"system:basic-user\" to Group \"system:authenticated\""
    );
    let sar = serde_json::json!({
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": { "user": "erin", "nonResourceAttributes": { "verb": "get", "path": "/metrics" } },
    });
    let req = http_post("/apis/authorization.k8s.io/v1/subjectaccessreviews", &sar);
    let resp: serde_json::Value = client.request(req).await.expect("SAR");
    assert_eq!(resp["status"]["allowed"], false, "{resp}");
    // A SubjectAccessReview without user and groups is invalid.
    let bad = serde_json::json!({
        "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
        "spec": { "nonResourceAttributes": { "verb": "get", "path": "/metrics" } },
    });
    let req = http_post("/apis/authorization.k8s.io/v1/subjectaccessreviews", &bad);
    let err = client
        .request::<serde_json::Value>(req)
        .await
        .expect_err("invalid");
    assert!(
        err.to_string().contains("at least one of user or group"),
        "{err}"
    );
    // A LocalSubjectAccessReview answers for its namespace.
    let lsar = serde_json::json!({
        "apiVersion": "authorization.k8s.io/v1", "kind": "LocalSubjectAccessReview",
        "metadata": { "namespace": "default" },
        "spec": { "user": "erin", "resourceAttributes": { "verb": "get", "resource": "pods" } },
    });
    let req = http_post(
        "/apis/authorization.k8s.io/v1/namespaces/default/localsubjectaccessreviews",
        &lsar,
    );
    let resp: serde_json::Value = client.request(req).await.expect("LSAR");
    assert_eq!(resp["status"]["allowed"], false, "{resp}");
    assert_eq!(resp["spec"]["resourceAttributes"]["namespace"], "default");

    // TokenReview of a service-account token, and of garbage.
    let sa = "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: robot, namespace: default}\n";
    assert!(
        t.kubectl_stdin(&["apply", "-f", "-"], sa)
            .await
            .status
            .success()
    );
    let token = t
        .kubectl_ok(&["create", "token", "robot", "-n", "default"])
        .await;
    let review = |token: &str| {
        serde_json::json!({
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
            "spec": { "token": token.trim() },
        })
    };
    let req = http_post(
        "/apis/authentication.k8s.io/v1/tokenreviews",
        &review(&token),
    );
    let resp: serde_json::Value = client.request(req).await.expect("TokenReview");
    assert_eq!(resp["status"]["authenticated"], true, "{resp}");
    assert_eq!(
        resp["status"]["user"]["username"],
        "system:serviceaccount:default:robot"
    );
    let groups = resp["status"]["user"]["groups"].to_string();
    assert!(
        groups.contains("system:serviceaccounts:default"),
        "{groups}"
    );
    let req = http_post(
        "/apis/authentication.k8s.io/v1/tokenreviews",
        &review("garbage"),
    );
    let resp: serde_json::Value = client.request(req).await.expect("TokenReview");
    assert_eq!(resp["status"]["authenticated"], false, "{resp}");
}

fn http_post(path: &str, body: &serde_json::Value) -> axum::http::Request<Vec<u8>> {
    axum::http::Request::post(path)
        .header("content-type", "application/json")
        .body(serde_json::to_vec(body).expect("JSON"))
        .expect("request")
}

/// A service-account token signed with the server's key, with these claims changed.
fn forged_token(t: &TestServer, patch: serde_json::Value, sa_uid: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let mut claims = serde_json::json!({
        "iss": "https://kubernetes.default.svc.cluster.local",
        "sub": "system:serviceaccount:default:robot",
        "aud": ["https://kubernetes.default.svc.cluster.local"],
        "exp": now + 3600, "iat": now, "nbf": now, "jti": "j1",
        "kubernetes.io": { "namespace": "default", "serviceaccount": { "name": "robot", "uid": sa_uid } },
    });
    if let (Some(c), Some(p)) = (claims.as_object_mut(), patch.as_object()) {
        for (k, v) in p {
            c.insert(k.clone(), v.clone());
        }
    }
    let key =
        jsonwebtoken::EncodingKey::from_ec_pem(t.server.pki().service_account_key_pem.as_bytes())
            .expect("key");
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256),
        &claims,
        &key,
    )
    .expect("signed")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_account_tokens_are_checked() {
    let t = TestServer::start().await;
    let objects = "\
apiVersion: v1
kind: ServiceAccount
metadata: {name: robot, namespace: default}
---
apiVersion: v1
kind: Pod
metadata: {name: worker, namespace: default}
spec:
  containers: [{name: c, image: busybox}]
";
    let out = t.kubectl_stdin(&["apply", "-f", "-"], objects).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let sa_uid = t
        .kubectl_ok(&[
            "get",
            "sa",
            "robot",
            "-n",
            "default",
            "-o",
            "jsonpath={.metadata.uid}",
        ])
        .await;

    // A TokenRequest token works, and is the service account.
    let token = t
        .kubectl_ok(&["create", "token", "robot", "-n", "default"])
        .await;
    let kc = t.token_kubeconfig("robot", token.trim());
    let out = t.kubectl_as(&kc, &["auth", "whoami"]).await;
    assert!(
        stdout(&out).contains("system:serviceaccount:default:robot"),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    // It has no permissions yet: 403, not 401.
    let out = t.kubectl_as(&kc, &["get", "pods", "-n", "default"]).await;
    assert!(
        stderr(&out)
            .contains("User \"system:serviceaccount:default:robot\" cannot list resource \"pods\""),
        "{}",
        stderr(&out)
    );
    // A RoleBinding to the service account grants them.
    let binding = "\
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: robot-view, namespace: default}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: view}
subjects:
- {kind: ServiceAccount, name: robot}
";
    assert!(
        t.kubectl_stdin(&["apply", "-f", "-"], binding)
            .await
            .status
            .success()
    );
    eventually_ok(&t, &kc, &["get", "pods", "-n", "default"]).await;

    // Bound to the pod: valid while the pod lives, refused once it is gone.
    let bound = t
        .kubectl_ok(&[
            "create",
            "token",
            "robot",
            "-n",
            "default",
            "--bound-object-kind",
            "Pod",
            "--bound-object-name",
            "worker",
        ])
        .await;
    let bound_kc = t.token_kubeconfig("bound", bound.trim());
    let out = t
        .kubectl_as(&bound_kc, &["auth", "whoami", "-o", "json"])
        .await;
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("whoami JSON");
    assert_eq!(
        v["status"]["userInfo"]["extra"]["authentication.kubernetes.io/pod-name"],
        serde_json::json!(["worker"])
    );
    t.kubectl_ok(&[
        "delete",
        "pod",
        "worker",
        "-n",
        "default",
        "--grace-period=0",
        "--force",
    ])
    .await;
    let out = t
        .kubectl_as(&bound_kc, &["get", "pods", "-n", "default"])
        .await;
    assert!(stderr(&out).contains("Unauthorized"), "{}", stderr(&out));

    // Too short a lifetime is refused, as upstream.
    let out = t
        .kubectl(&["create", "token", "robot", "-n", "default", "--duration=1m"])
        .await;
    assert!(
        stderr(&out).contains("may not specify a duration less than 10 minutes"),
        "{}",
        stderr(&out)
    );

    // Forged tokens: correctly signed, but expired, for another audience, or for a service
    // account with another uid.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let good = forged_token(&t, serde_json::json!({}), &sa_uid);
    let (code, body) = curl(
        &t,
        "GET",
        "/api/v1/namespaces/default/pods",
        &["-H", &format!("Authorization: Bearer {good}")],
    )
    .await;
    assert_eq!(code, 200, "the forging works: {body}");
    for (what, patch, uid) in [
        (
            "expired",
            serde_json::json!({ "exp": now - 60, "iat": now - 7200, "nbf": now - 7200 }),
            sa_uid.as_str(),
        ),
        (
            "wrong audience",
            serde_json::json!({ "aud": ["https://elsewhere"] }),
            sa_uid.as_str(),
        ),
        (
            "wrong issuer",
            serde_json::json!({ "iss": "https://elsewhere" }),
            sa_uid.as_str(),
        ),
        (
            "recreated service account",
            serde_json::json!({}),
            "0000-other-uid",
        ),
    ] {
        let token = forged_token(&t, patch, uid);
        let (code, body) = curl(
            &t,
            "GET",
            "/api/v1/namespaces/default/pods",
            &["-H", &format!("Authorization: Bearer {token}")],
        )
        .await;
        assert_eq!(code, 401, "{what}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_and_untrusted_cas() {
    let t = TestServer::start().await;
    // A user from a certificate of the client CA: CN and O.
    let frank = t.user_kubeconfig("frank", &["ops"]);
    let out = t.kubectl_as(&frank, &["auth", "whoami"]).await;
    let who = stdout(&out);
    assert!(
        who.contains("frank") && who.contains("ops") && who.contains("system:authenticated"),
        "{who}"
    );

    // A client certificate from another CA: the handshake is refused.
    let other =
        rk3s_apiserver::Pki::generate(&rk3s_apiserver::PkiOptions::default()).expect("other PKI");
    let path = t.dir.path().join("kubeconfig-foreign");
    std::fs::write(
        &path,
        rk3s_apiserver::kubeconfig(&t.server.url(), t.server.ca_pem(), &other.admin),
    )
    .expect("written");
    let out = t.kubectl_as(&path, &["get", "ns"]).await;
    assert!(
        !out.status.success(),
        "a foreign admin certificate must not work"
    );

    // A client that trusts another CA refuses the server.
    let path = t.dir.path().join("kubeconfig-wrong-ca");
    std::fs::write(
        &path,
        rk3s_apiserver::kubeconfig(
            &t.server.url(),
            &other.server_ca.cert_pem,
            &t.server.pki().admin,
        ),
    )
    .expect("written");
    let out = t.kubectl_as(&path, &["get", "ns"]).await;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("certificate signed by unknown authority"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_token_file_users() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("tokens.csv");
    std::fs::write(
        &file,
        "s3cr3t,grace,1001,\"admins,system:masters\"\nplain,henry,1002\n",
    )
    .expect("written");
    let t = TestServer::start_with(rk3s_apiserver::AuthConfig {
        token_auth_file: Some(file),
        ..rk3s_apiserver::AuthConfig::default()
    })
    .await;
    let grace = t.token_kubeconfig("grace", "s3cr3t");
    let out = t.kubectl_as(&grace, &["get", "ns"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let who = stdout(&t.kubectl_as(&grace, &["auth", "whoami"]).await);
    assert!(
        who.contains("grace") && who.contains("1001") && who.contains("admins"),
        "{who}"
    );
    let henry = t.token_kubeconfig("henry", "plain");
    let out = t.kubectl_as(&henry, &["get", "ns"]).await;
    assert!(
        stderr(&out).contains("User \"henry\" cannot list resource \"namespaces\""),
        "{}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelets_read_only_what_their_pods_use() {
    let t = TestServer::start().await;
    let objects = "\
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
  containers:
  - name: c
    image: busybox
    env: [{name: A, valueFrom: {secretKeyRef: {name: s2, key: k}}}]
";
    let out = t.kubectl_stdin(&["apply", "-f", "-"], objects).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let kubelet = t.user_kubeconfig("system:node:n1", &["system:nodes"]);
    let out = t
        .kubectl_as(&kubelet, &["get", "secret", "s1", "-n", "default"])
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let out = t
        .kubectl_as(&kubelet, &["get", "secret", "s2", "-n", "default"])
        .await;
    assert!(
        stderr(&out).contains(
            "secrets \"s2\" is forbidden: User \"system:node:n1\" cannot get resource \"secrets\" in API group \"\" in the namespace \"default\""
        ),
        "{}",
        stderr(&out)
    );
    let out = t
        .kubectl_as(&kubelet, &["get", "secrets", "-n", "default"])
        .await;
    assert!(!out.status.success(), "a kubelet cannot list secrets");
    // Its own Node it may change, another's not.
    let out = t
        .kubectl_as(&kubelet, &["label", "node", "n1", "a=b"])
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let out = t
        .kubectl_as(&kubelet, &["label", "node", "n2", "a=b"])
        .await;
    assert!(stderr(&out).contains("forbidden"), "{}", stderr(&out));
    // Reading pods is in the system:node role.
    let out = t.kubectl_as(&kubelet, &["get", "pods", "-A"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    // The same certificate without the system:nodes group is nobody special.
    let fake = t.user_kubeconfig("system:node:n1", &[]);
    let out = t
        .kubectl_as(&fake, &["get", "secret", "s1", "-n", "default"])
        .await;
    assert!(stderr(&out).contains("forbidden"), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impersonation_needs_the_impersonate_verb() {
    let t = TestServer::start().await;
    // The admin may impersonate: `--as` answers for the impersonated user.
    let out = t
        .kubectl(&["auth", "can-i", "list", "secrets", "--as", "ivan"])
        .await;
    assert_eq!(stdout(&out).trim(), "no", "{}", stderr(&out));
    let out = t
        .kubectl_ok(&["auth", "whoami", "--as", "ivan", "--as-group", "g1"])
        .await;
    assert!(out.contains("ivan") && out.contains("g1"), "{out}");
    // Someone without `impersonate` may not.
    let judy = t.user_kubeconfig("judy", &[]);
    let out = t
        .kubectl_as(&judy, &["get", "ns", "--as", "system:admin"])
        .await;
    assert!(
        stderr(&out).contains("User \"judy\" cannot impersonate resource \"users\""),
        "{}",
        stderr(&out)
    );
}
