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
  serviceAccountName: robot
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

/// `GET path` with a bearer token: (HTTP code, body).
async fn get_with_token(t: &TestServer, token: &str, path: &str) -> (u16, String) {
    curl(
        t,
        "GET",
        path,
        &["-H", &format!("Authorization: Bearer {token}")],
    )
    .await
}

/// A legacy Secret-based token (upstream's legacy claims) signed with `key_pem`.
fn legacy_token(key_pem: &str, sa: &str, sa_uid: &str, secret: &str) -> String {
    let claims = serde_json::json!({
        "iss": "kubernetes/serviceaccount",
        "sub": format!("system:serviceaccount:default:{sa}"),
        "kubernetes.io/serviceaccount/namespace": "default",
        "kubernetes.io/serviceaccount/secret.name": secret,
        "kubernetes.io/serviceaccount/service-account.name": sa,
        "kubernetes.io/serviceaccount/service-account.uid": sa_uid,
    });
    let key = jsonwebtoken::EncodingKey::from_ec_pem(key_pem.as_bytes()).expect("key");
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256),
        &claims,
        &key,
    )
    .expect("signed")
}

fn token_secret(name: &str, sa: Option<&str>, token: &str) -> serde_json::Value {
    use base64::Engine as _;
    let mut s = serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": { "name": name, "namespace": "default" },
        "type": "kubernetes.io/service-account-token",
        "data": { "token": base64::engine::general_purpose::STANDARD.encode(token) },
    });
    if let Some(sa) = sa {
        s["metadata"]["annotations"] =
            serde_json::json!({ "kubernetes.io/service-account.name": sa });
    }
    s
}

fn utc_day(offset_days: i64) -> String {
    let now = k8s_openapi::jiff::Timestamp::now();
    let then = now
        .checked_add(k8s_openapi::jiff::SignedDuration::from_hours(
            24 * offset_days,
        ))
        .expect("time");
    then.strftime("%Y-%m-%d").to_string()
}

/// Legacy Secret-based tokens as upstream's legacy validator checks them, each rule with the
/// side that is accepted and the side that is refused; the Secret validation on create; the
/// last-used label (at most one write a day).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_secret_tokens_are_checked() {
    use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
    use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
    let t = TestServer::start().await;
    let client = t.client().await;
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    let pp = PostParams::default();
    let sa = sas
        .create(
            &pp,
            &serde_json::from_value(serde_json::json!({ "metadata": { "name": "robot" } }))
                .expect("sa"),
        )
        .await
        .expect("sa created");
    let sa_uid = sa.metadata.uid.clone().expect("uid");
    let key = t.server.pki().service_account_key_pem.clone();

    // A token Secret must name its service account (upstream's 422), then it is accepted.
    let token = legacy_token(&key, "robot", &sa_uid, "robot-token");
    let req = http_post(
        "/api/v1/namespaces/default/secrets",
        &token_secret("robot-token", None, &token),
    );
    let err = client
        .request::<serde_json::Value>(req)
        .await
        .expect_err("no annotation");
    match err {
        kube::Error::Api(s) => {
            assert_eq!(s.code, 422);
            assert_eq!(
                s.message,
                "Secret \"robot-token\" is invalid: metadata.annotations[kubernetes.io/service-account.name]: Required value"
            );
        }
        e => panic!("unexpected {e}"),
    }
    let req = http_post(
        "/api/v1/namespaces/default/secrets",
        &token_secret("robot-token", Some("robot"), &token),
    );
    client
        .request::<serde_json::Value>(req)
        .await
        .expect("annotated token Secret created");

    // Accepted: the service account's identity, without credential id (as upstream's
    // legacy tokens).
    assert_eq!(get_with_token(&t, &token, "/apis").await.0, 200);
    let kc = t.token_kubeconfig("legacy", &token);
    let who: serde_json::Value = serde_json::from_str(&stdout(
        &t.kubectl_as(&kc, &["auth", "whoami", "-o", "json"]).await,
    ))
    .expect("whoami JSON");
    let user = &who["status"]["userInfo"];
    assert_eq!(
        user["username"], "system:serviceaccount:default:robot",
        "{who}"
    );
    assert_eq!(user["uid"], sa_uid.as_str());
    assert_eq!(
        user["groups"],
        serde_json::json!([
            "system:serviceaccounts",
            "system:serviceaccounts:default",
            "system:authenticated"
        ])
    );
    assert!(user.get("extra").is_none(), "{who}");

    // The last-used label: today, written once a day only.
    let s = secrets.get("robot-token").await.expect("secret");
    let labels = s.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels.get("kubernetes.io/legacy-token-last-used"),
        Some(&utc_day(0))
    );
    let rv = s.metadata.resource_version.clone();
    assert_eq!(get_with_token(&t, &token, "/apis").await.0, 200);
    let again = secrets.get("robot-token").await.expect("secret");
    assert_eq!(
        again.metadata.resource_version, rv,
        "used again today: no write"
    );
    let label = |v: Option<&str>, key: &str| {
        let mut labels = serde_json::Map::new();
        labels.insert(key.into(), serde_json::json!(v));
        Patch::Merge(serde_json::json!({ "metadata": { "labels": labels } }))
    };
    secrets
        .patch(
            "robot-token",
            &PatchParams::default(),
            &label(Some("2020-01-01"), "kubernetes.io/legacy-token-last-used"),
        )
        .await
        .expect("patched");
    assert_eq!(get_with_token(&t, &token, "/apis").await.0, 200);
    let s = secrets.get("robot-token").await.expect("secret");
    assert_eq!(
        s.metadata
            .labels
            .unwrap_or_default()
            .get("kubernetes.io/legacy-token-last-used"),
        Some(&utc_day(0)),
        "an old date is replaced by today"
    );

    // TokenReview: good for the API audiences only (a legacy token has none of its own).
    let review = |aud: Option<&str>| {
        let mut spec = serde_json::json!({ "token": token });
        if let Some(a) = aud {
            spec["audiences"] = serde_json::json!([a]);
        }
        http_post(
            "/apis/authentication.k8s.io/v1/tokenreviews",
            &serde_json::json!({ "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": spec }),
        )
    };
    let r: serde_json::Value = client.request(review(None)).await.expect("review");
    assert_eq!(r["status"]["authenticated"], true, "{r}");
    let r: serde_json::Value = client
        .request(review(Some("https://kubernetes.default.svc.cluster.local")))
        .await
        .expect("review");
    assert_eq!(r["status"]["authenticated"], true, "{r}");
    let r: serde_json::Value = client
        .request(review(Some("https://elsewhere")))
        .await
        .expect("review");
    assert_eq!(r["status"]["authenticated"], false, "{r}");

    // Marked invalid: refused (and still tracked) until the label goes.
    secrets
        .patch(
            "robot-token",
            &PatchParams::default(),
            &label(
                Some("2024-01-01"),
                "kubernetes.io/legacy-token-invalid-since",
            ),
        )
        .await
        .expect("patched");
    assert_eq!(get_with_token(&t, &token, "/apis").await.0, 401);
    secrets
        .patch(
            "robot-token",
            &PatchParams::default(),
            &label(None, "kubernetes.io/legacy-token-invalid-since"),
        )
        .await
        .expect("patched");
    assert_eq!(get_with_token(&t, &token, "/apis").await.0, 200);

    // Signed with another key: refused.
    let other_key = rcgen::KeyPair::generate().expect("key").serialize_pem();
    let forged = legacy_token(&other_key, "robot", &sa_uid, "robot-token");
    assert_eq!(get_with_token(&t, &forged, "/apis").await.0, 401);

    // The Secret holds another token: the old one is refused, the new one accepted.
    let token2 = legacy_token(&key, "robot", &sa_uid, "robot-token");
    assert_ne!(token, token2);
    use base64::Engine as _;
    secrets
        .patch(
            "robot-token",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({ "data": {
                "token": base64::engine::general_purpose::STANDARD.encode(&token2) } })),
        )
        .await
        .expect("patched");
    assert_eq!(get_with_token(&t, &token, "/apis").await.0, 401);
    assert_eq!(get_with_token(&t, &token2, "/apis").await.0, 200);

    // A token naming another uid of the service account: refused.
    let stale = legacy_token(&key, "robot", "0000-other-uid", "robot-stale");
    let req = http_post(
        "/api/v1/namespaces/default/secrets",
        &token_secret("robot-stale", Some("robot"), &stale),
    );
    client
        .request::<serde_json::Value>(req)
        .await
        .expect("created");
    assert_eq!(get_with_token(&t, &stale, "/apis").await.0, 401);

    // A Secret being deleted (held by a finalizer): refused.
    secrets
        .patch(
            "robot-token",
            &PatchParams::default(),
            &Patch::Merge(
                serde_json::json!({ "metadata": { "finalizers": ["example.com/hold"] } }),
            ),
        )
        .await
        .expect("patched");
    secrets
        .delete("robot-token", &DeleteParams::default())
        .await
        .expect("deleting");
    assert_eq!(get_with_token(&t, &token2, "/apis").await.0, 401);
    secrets
        .patch(
            "robot-token",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({ "metadata": { "finalizers": null } })),
        )
        .await
        .expect("released");
    assert_eq!(get_with_token(&t, &token2, "/apis").await.0, 401, "deleted");

    // The service account re-created (another uid): its old tokens are refused.
    let token3 = legacy_token(&key, "robot", &sa_uid, "robot-token3");
    let req = http_post(
        "/api/v1/namespaces/default/secrets",
        &token_secret("robot-token3", Some("robot"), &token3),
    );
    client
        .request::<serde_json::Value>(req)
        .await
        .expect("created");
    assert_eq!(get_with_token(&t, &token3, "/apis").await.0, 200);
    sas.delete("robot", &DeleteParams::default())
        .await
        .expect("sa deleted");
    assert_eq!(get_with_token(&t, &token3, "/apis").await.0, 401);
    sas.create(
        &pp,
        &serde_json::from_value(serde_json::json!({ "metadata": { "name": "robot" } }))
            .expect("sa"),
    )
    .await
    .expect("sa re-created");
    assert_eq!(get_with_token(&t, &token3, "/apis").await.0, 401);
}

/// Upstream's warning on requests authenticated with an auto-generated legacy token (one its
/// service account lists in `secrets`), on allowed and forbidden answers alike, and none for a
/// manually created token Secret; the last-used label is owned in managedFields by
/// `kube-apiserver` (an `Update`), as upstream's merge patch through its loopback client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_generated_legacy_tokens_are_warned_about() {
    use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
    use kube::api::{Api, Patch, PatchParams, PostParams};
    const WARNING: &str = "warning: 299 - \"Use tokens from the TokenRequest API or manually created secret-based tokens instead of auto-generated secret-based tokens.\"";
    let t = TestServer::start().await;
    let client = t.client().await;
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    let sa = sas
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({ "metadata": { "name": "bot" } }))
                .expect("sa"),
        )
        .await
        .expect("sa created");
    let sa_uid = sa.metadata.uid.clone().expect("uid");
    let key = t.server.pki().service_account_key_pem.clone();
    let token = legacy_token(&key, "bot", &sa_uid, "bot-token");
    client
        .request::<serde_json::Value>(http_post(
            "/api/v1/namespaces/default/secrets",
            &token_secret("bot-token", Some("bot"), &token),
        ))
        .await
        .expect("token Secret created");
    // The answer's headers (curl -D -) in lower case, whatever the HTTP version.
    let headers = |path: &'static str| {
        let auth = format!("Authorization: Bearer {token}");
        let t = &t;
        async move {
            let (code, text) = curl(t, "GET", path, &["-H", &auth, "-D", "-"]).await;
            (code, text.to_ascii_lowercase())
        }
    };
    let warned = |text: &str| {
        text.lines()
            .any(|l| l.trim() == WARNING.to_ascii_lowercase())
    };

    // Manually created (the service account does not list it): no warning.
    let (code, text) = headers("/apis").await;
    assert_eq!(code, 200, "{text}");
    assert!(!warned(&text), "{text}");

    // Auto-generated (listed by the service account): warned, allowed or not.
    sas.patch(
        "bot",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({ "secrets": [{ "name": "bot-token" }] })),
    )
    .await
    .expect("sa lists the token");
    let (code, text) = headers("/apis").await;
    assert_eq!(code, 200, "{text}");
    assert!(warned(&text), "{text}");
    let (code, text) = headers("/api/v1/namespaces/kube-system/secrets").await;
    assert_eq!(code, 403, "{text}");
    assert!(warned(&text), "{text}");

    // The last-used label, owned by kube-apiserver through an Update.
    let s = secrets.get("bot-token").await.expect("secret");
    let entry = s
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .find(|e| e.manager.as_deref() == Some("kube-apiserver"))
        .expect("an entry of kube-apiserver");
    assert_eq!(entry.operation.as_deref(), Some("Update"));
    assert_eq!(entry.api_version.as_deref(), Some("v1"));
    let fields = serde_json::to_value(entry.fields_v1.expect("fieldsV1")).expect("json");
    assert_eq!(
        fields,
        // The Secret had no labels: the map is this manager's too (".").
        serde_json::json!({ "f:metadata": { "f:labels": { ".": {},
            "f:kubernetes.io/legacy-token-last-used": {} } } }),
    );
}

/// OIDC discovery (`/.well-known/openid-configuration`, `/openid/v1/jwks`) for
/// `system:service-account-issuer-discovery`, a real token verified with the published key;
/// and the TokenRequest rules for pod-bound tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuer_discovery_and_pod_bound_tokens() {
    let t = TestServer::start().await;
    let client = t.client().await;
    let objects = "\
apiVersion: v1
kind: ServiceAccount
metadata: {name: robot, namespace: default}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: other, namespace: default}
---
apiVersion: v1
kind: Node
metadata: {name: n1}
---
apiVersion: v1
kind: Pod
metadata: {name: worker, namespace: default}
spec:
  serviceAccountName: robot
  nodeName: n1
  containers: [{name: c, image: busybox}]
---
apiVersion: v1
kind: Pod
metadata: {name: stranger, namespace: default}
spec:
  serviceAccountName: other
  nodeName: gone
  containers: [{name: c, image: busybox}]
";
    let out = t.kubectl_stdin(&["apply", "-f", "-"], objects).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let node_uid = t
        .kubectl_ok(&["get", "node", "n1", "-o", "jsonpath={.metadata.uid}"])
        .await;

    let token_request = |sa: &str, pod: Option<&str>| {
        let mut spec = serde_json::json!({});
        if let Some(p) = pod {
            spec["boundObjectRef"] =
                serde_json::json!({ "kind": "Pod", "apiVersion": "v1", "name": p });
        }
        http_post(
            &format!("/api/v1/namespaces/default/serviceaccounts/{sa}/token"),
            &serde_json::json!({ "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec }),
        )
    };
    let claims_of = |token: &str| -> serde_json::Value {
        use base64::Engine as _;
        let payload = token.split('.').nth(1).expect("JWT");
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .expect("base64"),
        )
        .expect("claims")
    };

    // TokenRequest: a pod running as another service account is refused (400) ...
    let err = client
        .request::<serde_json::Value>(token_request("robot", Some("stranger")))
        .await
        .expect_err("another service account's pod");
    match err {
        kube::Error::Api(s) => {
            assert_eq!(s.code, 400);
            assert_eq!(s.reason, "BadRequest");
            assert_eq!(
                s.message,
                "cannot bind token for serviceaccount \"robot\" to pod running with different serviceaccount name."
            );
        }
        e => panic!("unexpected {e}"),
    }
    // ... its own pod is bound, with the pod's node (name and uid) in the claims.
    let r: serde_json::Value = client
        .request(token_request("robot", Some("worker")))
        .await
        .expect("bound token");
    let bound = r["status"]["token"].as_str().expect("token").to_string();
    let c = claims_of(&bound);
    assert_eq!(c["kubernetes.io"]["pod"]["name"], "worker");
    assert_eq!(
        c["kubernetes.io"]["node"],
        serde_json::json!({ "name": "n1", "uid": node_uid })
    );
    let kc = t.token_kubeconfig("bound", &bound);
    let who: serde_json::Value = serde_json::from_str(&stdout(
        &t.kubectl_as(&kc, &["auth", "whoami", "-o", "json"]).await,
    ))
    .expect("whoami JSON");
    let extra = &who["status"]["userInfo"]["extra"];
    assert_eq!(
        extra["authentication.kubernetes.io/node-name"],
        serde_json::json!(["n1"])
    );
    assert_eq!(
        extra["authentication.kubernetes.io/node-uid"],
        serde_json::json!([node_uid])
    );
    // A pod on a node that does not exist: the node's name only; the token still works (a
    // pod-bound token's node is not checked).
    let r: serde_json::Value = client
        .request(token_request("other", Some("stranger")))
        .await
        .expect("bound token");
    let on_gone = r["status"]["token"].as_str().expect("token").to_string();
    assert_eq!(
        claims_of(&on_gone)["kubernetes.io"]["node"],
        serde_json::json!({ "name": "gone", "uid": "" })
    );
    let kc_gone = t.token_kubeconfig("gone", &on_gone);
    let who: serde_json::Value = serde_json::from_str(&stdout(
        &t.kubectl_as(&kc_gone, &["auth", "whoami", "-o", "json"])
            .await,
    ))
    .expect("whoami JSON");
    let extra = &who["status"]["userInfo"]["extra"];
    assert_eq!(
        extra["authentication.kubernetes.io/node-name"],
        serde_json::json!(["gone"])
    );
    assert!(
        extra.get("authentication.kubernetes.io/node-uid").is_none(),
        "{who}"
    );

    // Discovery: anonymous 401 (rk3s allows anonymous on health paths only, as K3s' servers
    // run without anonymous auth), a user without the role 403, service accounts (bound to
    // system:service-account-issuer-discovery by default) 200.
    for path in ["/.well-known/openid-configuration", "/openid/v1/jwks"] {
        assert_eq!(curl(&t, "GET", path, &[]).await.0, 401, "{path}");
        let alice = t.user_kubeconfig("alice", &[]);
        let out = t.kubectl_as(&alice, &["get", "--raw", path]).await;
        assert!(
            stderr(&out).contains("Forbidden") || stderr(&out).contains("forbidden"),
            "{path}: {}",
            stderr(&out)
        );
    }
    let headers = t.dir.path().join("headers");
    let headers_arg = headers.display().to_string();
    let (code, body) = curl(
        &t,
        "GET",
        "/.well-known/openid-configuration",
        &[
            "-H",
            &format!("Authorization: Bearer {bound}"),
            "-D",
            &headers_arg,
        ],
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let head = std::fs::read_to_string(&headers)
        .expect("headers")
        .to_lowercase();
    assert!(
        head.contains("content-type: application/json\r\n"),
        "{head}"
    );
    assert!(
        head.contains("cache-control: public, max-age=3600"),
        "{head}"
    );
    let config: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(
        config,
        serde_json::json!({
            "issuer": "https://kubernetes.default.svc.cluster.local",
            "jwks_uri": format!("{}/openid/v1/jwks", t.server.url()),
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
        })
    );
    let (code, body) = curl(
        &t,
        "GET",
        "/openid/v1/jwks",
        &[
            "-H",
            &format!("Authorization: Bearer {bound}"),
            "-D",
            &headers_arg,
        ],
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let head = std::fs::read_to_string(&headers)
        .expect("headers")
        .to_lowercase();
    assert!(
        head.contains("content-type: application/jwk-set+json"),
        "{head}"
    );
    let jwks: jsonwebtoken::jwk::JwkSet = serde_json::from_str(&body).expect("JWK set");
    assert_eq!(jwks.keys.len(), 1);
    let jwk = &jwks.keys[0];

    // The published key verifies a real token (its kid names that key); a token signed with
    // another key does not verify.
    let header = jsonwebtoken::decode_header(&bound).expect("header");
    assert_eq!(header.kid, jwk.common.key_id);
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).expect("decoding key");
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    v.set_audience(&["https://kubernetes.default.svc.cluster.local"]);
    v.set_issuer(&["https://kubernetes.default.svc.cluster.local"]);
    let verified = jsonwebtoken::decode::<serde_json::Value>(&bound, &key, &v).expect("verified");
    assert_eq!(
        verified.claims["sub"],
        "system:serviceaccount:default:robot"
    );
    let other = rcgen::KeyPair::generate().expect("key").serialize_pem();
    let forged = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256),
        &verified.claims,
        &jsonwebtoken::EncodingKey::from_ec_pem(other.as_bytes()).expect("key"),
    )
    .expect("signed");
    assert!(jsonwebtoken::decode::<serde_json::Value>(&forged, &key, &v).is_err());
}
