//! ValidatingAdmissionPolicies and their bindings (`admissionregistration.k8s.io/v1`) seen
//! from kubectl and kube-rs: the Kubernetes docs' `replicas <= 5` policy denying with
//! upstream's message and allowing what it should (namespace selector of the binding),
//! `Warn` as kubectl's `Warning:` line, a ConfigMap param (found, and missing with `Deny`),
//! match conditions and variables with a `Forbidden` reason, deletes judged on the old object
//! with `resourceNames` narrowing the rule, invalid policies and bindings refused with
//! upstream's 422 causes, and `authorizer` checks (a resource in the object's namespace,
//! `requestResource`, a service account) decided by RBAC for the requesting user, and by the
//! node authorizer for a kubelet.

mod common;

use std::time::Duration;

use common::{TestServer, api_status, invalid_causes};
use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, PostParams};
use serde_json::{Value, json};

/// Polling deadline: policies reach the admission through the watch cache.
const DEADLINE: Duration = Duration::from_secs(20);

const DOCS_POLICY: &str = r#"
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata:
  name: "demo-policy.example.com"
spec:
  failurePolicy: Fail
  matchConstraints:
    resourceRules:
    - apiGroups:   ["apps"]
      apiVersions: ["v1"]
      operations:  ["CREATE", "UPDATE"]
      resources:   ["deployments"]
  validations:
    - expression: "object.spec.replicas <= 5"
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata:
  name: "demo-binding-test.example.com"
spec:
  policyName: "demo-policy.example.com"
  validationActions: [Deny]
  matchResources:
    namespaceSelector:
      matchLabels:
        environment: test
"#;

fn deployment(name: &str, replicas: i32) -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "c", "image": "nginx"}]},
            },
        },
    }))
    .expect("deployment")
}

async fn namespace(client: &kube::Client, name: &str, labels: Value) {
    let api: Api<Namespace> = Api::all(client.clone());
    let ns = serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}}))
        .expect("namespace");
    api.create(&PostParams::default(), &ns)
        .await
        .expect("namespace created");
}

async fn create_policy(client: &kube::Client, policy: Value, binding: Value) {
    let policies: Api<ValidatingAdmissionPolicy> = Api::all(client.clone());
    let bindings: Api<ValidatingAdmissionPolicyBinding> = Api::all(client.clone());
    policies
        .create(
            &PostParams::default(),
            &serde_json::from_value(policy).expect("policy"),
        )
        .await
        .expect("policy created");
    bindings
        .create(
            &PostParams::default(),
            &serde_json::from_value(binding).expect("binding"),
        )
        .await
        .expect("binding created");
}

/// Dry-run creates of `make()` until one fails (the policy is in force), returning its Status.
async fn first_denial<K>(api: &Api<K>, make: impl Fn() -> K) -> kube::core::Status
where
    K: kube::Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let start = std::time::Instant::now();
    let dry = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    loop {
        if let Err(e) = api.create(&dry, &make()).await {
            return api_status(e);
        }
        assert!(start.elapsed() < DEADLINE, "the policy never denied");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_docs_replicas_policy_denies_six_replicas_and_allows_three() {
    let t = TestServer::start().await;
    let client = t.client().await;
    namespace(&client, "test", json!({"environment": "test"})).await;
    namespace(&client, "other", json!({})).await;
    let applied = t.kubectl_stdin(&["apply", "-f", "-"], DOCS_POLICY).await;
    assert!(
        applied.status.success(),
        "{}",
        String::from_utf8_lossy(&applied.stderr)
    );
    let listed = t
        .kubectl_ok(&["get", "validatingadmissionpolicies", "-o", "name"])
        .await;
    assert_eq!(
        listed.trim(),
        "validatingadmissionpolicy.admissionregistration.k8s.io/demo-policy.example.com"
    );
    let explained = t
        .kubectl_ok(&["explain", "validatingadmissionpolicy.spec.validations"])
        .await;
    assert!(explained.contains("expression"), "{explained}");
    let policies: Api<ValidatingAdmissionPolicy> = Api::all(client.clone());
    let p = policies
        .get("demo-policy.example.com")
        .await
        .expect("policy");
    assert_eq!(p.metadata.generation, Some(1));

    let test: Api<Deployment> = Api::namespaced(client.clone(), "test");
    let status = first_denial(&test, || deployment("nginx", 6)).await;
    let inner = "ValidatingAdmissionPolicy 'demo-policy.example.com' with binding \
                 'demo-binding-test.example.com' denied request: failed expression: \
                 object.spec.replicas <= 5";
    assert_eq!((status.code, status.reason.as_str()), (422, "Invalid"));
    assert_eq!(
        status.message,
        format!("deployments.apps \"nginx\" is forbidden: {inner}")
    );
    let causes: Vec<String> = status
        .details
        .expect("details")
        .causes
        .into_iter()
        .map(|c| c.message)
        .collect();
    assert_eq!(causes, vec![inner.to_string()]);

    // kubectl shows it as upstream's does.
    let manifest = serde_json::to_string(&deployment("nginx", 6)).expect("json");
    let out = t
        .kubectl_stdin(&["apply", "-n", "test", "-f", "-"], &manifest)
        .await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("The deployments \"nginx\" is invalid: : {inner}")),
        "{stderr}"
    );

    // Three replicas pass; six pass where the binding does not select the namespace.
    test.create(&PostParams::default(), &deployment("nginx", 3))
        .await
        .expect("three replicas allowed");
    let other: Api<Deployment> = Api::namespaced(client.clone(), "other");
    other
        .create(&PostParams::default(), &deployment("nginx", 6))
        .await
        .expect("another namespace is not bound");
    // An update to six is denied too.
    let out = t
        .kubectl(&[
            "patch",
            "deployment/nginx",
            "-n",
            "test",
            "-p",
            r#"{"spec":{"replicas":6}}"#,
        ])
        .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains(inner), "{stderr}");
}

#[tokio::test]
async fn warn_gives_kubectl_a_warning_line() {
    let t = TestServer::start().await;
    let client = t.client().await;
    create_policy(
        &client,
        json!({"metadata": {"name": "warn.example.com"}, "spec": {
            "matchConstraints": {"resourceRules": [{"apiGroups": [""], "apiVersions": ["v1"],
                "operations": ["CREATE"], "resources": ["configmaps"]}]},
            "validations": [{"expression": "!has(object.data) || !('forbidden' in object.data)",
                "message": "no forbidden key"}],
        }}),
        json!({"metadata": {"name": "warn-binding"}, "spec": {
            "policyName": "warn.example.com", "validationActions": ["Warn"]}}),
    )
    .await;
    let warning = "Warning: Validation failed for ValidatingAdmissionPolicy 'warn.example.com' \
                   with binding 'warn-binding': no forbidden key";
    let start = std::time::Instant::now();
    loop {
        let out = t
            .kubectl(&[
                "create",
                "configmap",
                "probe",
                "--from-literal=forbidden=1",
                "--dry-run=server",
            ])
            .await;
        assert!(out.status.success(), "{out:?}");
        if String::from_utf8_lossy(&out.stderr).contains(warning) {
            break;
        }
        assert!(start.elapsed() < DEADLINE, "never warned");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = t
        .kubectl(&["create", "configmap", "c", "--from-literal=forbidden=1"])
        .await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stderr).trim(), warning);
    let out = t
        .kubectl(&["create", "configmap", "fine", "--from-literal=a=1"])
        .await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stderr).trim(), "");
}

#[tokio::test]
async fn a_configmap_param_limits_replicas_and_a_missing_one_denies() {
    let t = TestServer::start().await;
    let client = t.client().await;
    namespace(&client, "p1", json!({})).await;
    namespace(&client, "p2", json!({})).await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "p1");
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "limits"},
            "data": {"maxReplicas": "2"}}))
        .expect("configmap"),
    )
    .await
    .expect("param created");
    create_policy(
        &client,
        json!({"metadata": {"name": "param.example.com"}, "spec": {
            "failurePolicy": "Fail",
            "paramKind": {"apiVersion": "v1", "kind": "ConfigMap"},
            "matchConstraints": {"resourceRules": [{"apiGroups": ["apps"],
                "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"],
                "resources": ["deployments"]}]},
            "validations": [{"expression": "object.spec.replicas <= int(params.data.maxReplicas)",
                "messageExpression": "'replicas ' + string(object.spec.replicas) + ' above ' + params.data.maxReplicas"}],
        }}),
        json!({"metadata": {"name": "param-binding"}, "spec": {
            "policyName": "param.example.com", "validationActions": ["Deny"],
            "paramRef": {"name": "limits", "parameterNotFoundAction": "Deny"}}}),
    )
    .await;
    let p1: Api<Deployment> = Api::namespaced(client.clone(), "p1");
    let status = first_denial(&p1, || deployment("d", 3)).await;
    assert_eq!(
        (status.code, status.message.as_str()),
        (
            422,
            "deployments.apps \"d\" is forbidden: ValidatingAdmissionPolicy \
             'param.example.com' with binding 'param-binding' denied request: replicas 3 \
             above 2"
        )
    );
    p1.create(&PostParams::default(), &deployment("d", 2))
        .await
        .expect("within the param's limit");
    let p2: Api<Deployment> = Api::namespaced(client.clone(), "p2");
    let e = p2
        .create(&PostParams::default(), &deployment("d", 1))
        .await
        .expect_err("no param in p2");
    assert_eq!(
        api_status(e).message,
        "deployments.apps \"d\" is forbidden: ValidatingAdmissionPolicy 'param.example.com' \
         with binding 'param-binding' denied request: failed to configure binding: no params \
         found for policy binding with `Deny` parameterNotFoundAction"
    );
}

#[tokio::test]
async fn match_conditions_and_variables_with_a_forbidden_reason() {
    let t = TestServer::start().await;
    let client = t.client().await;
    create_policy(
        &client,
        json!({"metadata": {"name": "keys.example.com"}, "spec": {
            "matchConstraints": {"resourceRules": [{"apiGroups": [""], "apiVersions": ["v1"],
                "operations": ["CREATE", "UPDATE"], "resources": ["configmaps"]}]},
            "matchConditions": [{"name": "not-skipped",
                "expression": "object.metadata.name != 'skip-me'"}],
            "variables": [{"name": "keys",
                "expression": "has(object.data) ? size(object.data) : 0"}],
            "validations": [{"expression": "variables.keys <= 1",
                "message": "at most one key", "reason": "Forbidden"}],
        }}),
        json!({"metadata": {"name": "keys-binding"}, "spec": {
            "policyName": "keys.example.com", "validationActions": ["Deny"]}}),
    )
    .await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let two = |name: &str| -> ConfigMap {
        serde_json::from_value(json!({"metadata": {"name": name}, "data": {"a": "1", "b": "2"}}))
            .expect("configmap")
    };
    let status = first_denial(&cms, || two("two")).await;
    assert_eq!(
        (status.code, status.reason.as_str(), status.message.as_str()),
        (
            403,
            "Forbidden",
            "configmaps \"two\" is forbidden: ValidatingAdmissionPolicy 'keys.example.com' \
             with binding 'keys-binding' denied request: at most one key"
        )
    );
    cms.create(&PostParams::default(), &two("skip-me"))
        .await
        .expect("a false match condition skips the policy");
    let out = t
        .kubectl(&["create", "configmap", "one", "--from-literal=a=1"])
        .await;
    assert!(out.status.success(), "{out:?}");
}

#[tokio::test]
async fn invalid_policies_and_bindings_are_refused_with_upstreams_causes() {
    let t = TestServer::start().await;
    let client = t.client().await;
    let policies: Api<ValidatingAdmissionPolicy> = Api::all(client.clone());
    let bad: ValidatingAdmissionPolicy = serde_json::from_value(json!({
        "metadata": {"name": "bad"},
        "spec": {"validations": [{"expression": "object.spec.replicas <="}]},
    }))
    .expect("policy");
    let causes = invalid_causes(
        policies
            .create(&PostParams::default(), &bad)
            .await
            .expect_err("refused"),
    );
    assert_eq!(causes.len(), 2, "{causes:?}");
    assert_eq!(causes[0], "spec.matchConstraints: Required value");
    assert!(
        causes[1].starts_with(
            "spec.validations[0].expression: Invalid value: \"object.spec.replicas <=\": \
             compilation failed: ERROR: <input>:1:"
        ),
        "{causes:?}"
    );
    let bindings: Api<ValidatingAdmissionPolicyBinding> = Api::all(client.clone());
    let bad: ValidatingAdmissionPolicyBinding = serde_json::from_value(json!({
        "metadata": {"name": "bad"},
        "spec": {"policyName": "p", "validationActions": ["Deny", "Deny"],
                 "paramRef": {"parameterNotFoundAction": "Deny"}},
    }))
    .expect("binding");
    assert_eq!(
        invalid_causes(
            bindings
                .create(&PostParams::default(), &bad)
                .await
                .expect_err("refused")
        ),
        vec![
            "spec.paramRef: Required value: one of name or selector must be specified",
            "spec.validationActions[1]: Duplicate value: \"Deny\"",
        ]
    );
    // A webhook configuration is validated too.
    let out = t
        .kubectl_stdin(
            &["apply", "-f", "-"],
            r#"{"apiVersion": "admissionregistration.k8s.io/v1",
                "kind": "ValidatingWebhookConfiguration", "metadata": {"name": "w"},
                "webhooks": [{"name": "w.example.com", "sideEffects": "None",
                  "admissionReviewVersions": ["v1"], "timeoutSeconds": 60,
                  "clientConfig": {"url": "https://example.com/x"}}]}"#,
        )
        .await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "webhooks[0].timeoutSeconds: Invalid value: 60: the timeout value must be between 1 \
             and 30 seconds"
        ),
        "{stderr}"
    );
}

#[tokio::test]
async fn deletes_see_the_old_object_and_resource_names_narrow_the_rule() {
    let t = TestServer::start().await;
    let client = t.client().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    for name in ["keep-me", "free"] {
        cms.create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": name,
                "labels": {"protected": "true"}}}))
            .expect("configmap"),
        )
        .await
        .expect("created");
    }
    create_policy(
        &client,
        json!({"metadata": {"name": "protect.example.com"}, "spec": {
            "matchConstraints": {"resourceRules": [{"apiGroups": [""], "apiVersions": ["v1"],
                "operations": ["DELETE"], "resources": ["configmaps"],
                "resourceNames": ["keep-me"]}]},
            "validations": [{"expression": "object == null && oldObject.metadata.labels.protected != 'true'",
                "message": "protected"}],
        }}),
        json!({"metadata": {"name": "protect-binding"}, "spec": {
            "policyName": "protect.example.com", "validationActions": ["Deny"]}}),
    )
    .await;
    let dry = kube::api::DeleteParams {
        dry_run: true,
        ..kube::api::DeleteParams::default()
    };
    let start = std::time::Instant::now();
    let status = loop {
        if let Err(e) = cms.delete("keep-me", &dry).await {
            break api_status(e);
        }
        assert!(start.elapsed() < DEADLINE, "the policy never denied");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        (status.code, status.message.as_str()),
        (
            422,
            "configmaps \"keep-me\" is forbidden: ValidatingAdmissionPolicy \
             'protect.example.com' with binding 'protect-binding' denied request: protected"
        )
    );
    cms.delete("free", &kube::api::DeleteParams::default())
        .await
        .expect("not named by the rule");
}

#[tokio::test]
async fn audit_actions_and_annotations_reach_the_audit_log() {
    let t = TestServer::start_audited().await;
    let client = t.client().await;
    create_policy(
        &client,
        json!({"metadata": {"name": "audit.example.com"}, "spec": {
            "matchConstraints": {"resourceRules": [{"apiGroups": [""], "apiVersions": ["v1"],
                "operations": ["CREATE"], "resources": ["configmaps"]}]},
            "validations": [
                {"expression": "true"},
                {"expression": "!('forbidden' in object.data)", "message": "no forbidden key"}],
            "auditAnnotations": [{"key": "keys",
                "valueExpression": "'keys-' + string(size(object.data))"}],
        }}),
        json!({"metadata": {"name": "audit-binding"}, "spec": {
            "policyName": "audit.example.com", "validationActions": ["Audit", "Warn"]}}),
    )
    .await;
    // In force once the Warn action shows.
    let start = std::time::Instant::now();
    loop {
        let out = t
            .kubectl(&[
                "create",
                "configmap",
                "probe",
                "--from-literal=forbidden=1",
                "--dry-run=server",
            ])
            .await;
        if String::from_utf8_lossy(&out.stderr).contains("no forbidden key") {
            break;
        }
        assert!(start.elapsed() < DEADLINE, "never in force");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = t
        .kubectl(&[
            "create",
            "configmap",
            "audited",
            "--from-literal=forbidden=1",
            "--from-literal=b=2",
        ])
        .await;
    assert!(out.status.success(), "{out:?}");
    let event = t.audit_event("create", "audited");
    let notes = &event["annotations"];
    assert_eq!(notes["audit.example.com/keys"], "keys-2", "{event}");
    let failures: Value = serde_json::from_str(
        notes["validation.policy.admission.k8s.io/validation_failure"]
            .as_str()
            .expect("the Audit action's annotation"),
    )
    .expect("JSON");
    assert_eq!(
        failures,
        json!([{"message": "no forbidden key", "policy": "audit.example.com",
            "binding": "audit-binding", "expressionIndex": 1,
            "validationActions": ["Audit", "Warn"]}])
    );
}

const AUTHZ_RBAC: &str = r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: writer, namespace: vault}
rules:
- {apiGroups: [""], resources: [configmaps], verbs: [create, delete]}
- {apiGroups: [""], resources: [secrets], verbs: [get]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: creator, namespace: vault}
rules:
- {apiGroups: [""], resources: [configmaps], verbs: [create]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: creator-reader, namespace: vault}
rules:
- {apiGroups: [""], resources: [configmaps], verbs: [create]}
- {apiGroups: [""], resources: [secrets], verbs: [get]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: pod-lister, namespace: vault}
rules:
- {apiGroups: [""], resources: [pods], verbs: [list]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: alice, namespace: vault}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: writer}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: alice}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: bob, namespace: vault}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: creator}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: bob}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: carol, namespace: vault}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: creator-reader}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: carol}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: robot, namespace: vault}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: pod-lister}
subjects: [{kind: ServiceAccount, name: robot, namespace: vault}]
"#;

fn configmap(name: &str, data: Value) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name}, "data": data})).expect("configmap")
}

/// Dry-run creates of a ConfigMap (`data`) in `vault` as `client` until `done` accepts the
/// result (RBAC and the policy reach the server through watches).
async fn create_until(
    client: &kube::Client,
    data: Value,
    done: impl Fn(&Result<ConfigMap, kube::Error>) -> bool,
) -> Result<ConfigMap, kube::Error> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "vault");
    let dry = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let start = std::time::Instant::now();
    loop {
        let result = api.create(&dry, &configmap("c", data.clone())).await;
        if done(&result) {
            return result;
        }
        assert!(start.elapsed() < DEADLINE, "never settled: {result:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn authorizer_checks_are_decided_by_rbac_for_the_requesting_user() {
    let t = TestServer::start().await;
    let client = t.client().await;
    namespace(&client, "vault", json!({})).await;
    let applied = t.kubectl_stdin(&["apply", "-f", "-"], AUTHZ_RBAC).await;
    assert!(
        applied.status.success(),
        "{}",
        String::from_utf8_lossy(&applied.stderr)
    );
    let secrets = "authorizer.group('').resource('secrets')\
                   .namespace(object.metadata.namespace).check('get').allowed()";
    let sa = "!has(object.data) || !('sa' in object.data) || \
              authorizer.serviceAccount(object.metadata.namespace, object.data.sa)\
              .group('').resource('pods').namespace(object.metadata.namespace)\
              .check('list').allowed()";
    create_policy(
        &client,
        json!({"metadata": {"name": "authz.example.com"}, "spec": {
            "matchConstraints": {"resourceRules": [{"apiGroups": [""], "apiVersions": ["v1"],
                "operations": ["CREATE"], "resources": ["configmaps"]}]},
            "variables": [{"name": "mayDelete",
                "expression": "authorizer.requestResource.check('delete').allowed()"}],
            "validations": [
                {"expression": secrets, "message": "only secret readers", "reason": "Forbidden"},
                {"expression": "variables.mayDelete", "message": "only deleters",
                 "reason": "Forbidden"},
                {"expression": sa, "message": "the service account cannot list pods",
                 "reason": "Forbidden"},
            ],
        }}),
        json!({"metadata": {"name": "authz-binding"}, "spec": {
            "policyName": "authz.example.com", "validationActions": ["Deny"],
            "matchResources": {"namespaceSelector": {"matchLabels":
                {"kubernetes.io/metadata.name": "vault"}}}}}),
    )
    .await;
    let denied = |message: &str| {
        format!(
            "configmaps \"c\" is forbidden: ValidatingAdmissionPolicy 'authz.example.com' with \
             binding 'authz-binding' denied request: {message}"
        )
    };
    let is_denial = |r: &Result<ConfigMap, kube::Error>| matches!(r, Err(kube::Error::Api(s)) if s.message.contains("ValidatingAdmissionPolicy"));

    // bob may create configmaps, but not get secrets (nor delete configmaps).
    let bob = t.client_from(&t.user_kubeconfig("bob", &[])).await;
    let status = api_status(
        create_until(&bob, json!({}), is_denial)
            .await
            .expect_err("bob denied"),
    );
    assert_eq!((status.code, status.reason.as_str()), (403, "Forbidden"));
    assert_eq!(status.message, denied("only secret readers"));

    // carol may get secrets: only `authorizer.requestResource` (delete configmaps) fails.
    let carol = t.client_from(&t.user_kubeconfig("carol", &[])).await;
    let status = api_status(
        create_until(&carol, json!({}), is_denial)
            .await
            .expect_err("carol denied"),
    );
    assert_eq!(status.message, denied("only deleters"));

    // alice passes every check; the service account `robot` may list pods, `nobody` not.
    let alice = t.client_from(&t.user_kubeconfig("alice", &[])).await;
    create_until(&alice, json!({"sa": "robot"}), Result::is_ok)
        .await
        .expect("alice allowed");
    let status = api_status(
        create_until(&alice, json!({"sa": "nobody"}), |r| r.is_err())
            .await
            .expect_err("nobody cannot list pods"),
    );
    assert_eq!(
        status.message,
        denied("the service account cannot list pods")
    );
    // An invalid service account name is an evaluation error (failurePolicy Fail).
    let status = api_status(
        create_until(&alice, json!({"sa": "Not_Valid"}), |r| r.is_err())
            .await
            .expect_err("invalid name"),
    );
    assert!(
        status
            .message
            .ends_with("resulted in error: Invalid service account name"),
        "{}",
        status.message
    );
}

/// A kubelet's checks go through the node authorizer, which reads the pods on its node: the
/// kubelet of the node running a pod that uses the secret may get it, another not.
#[tokio::test]
async fn a_kubelets_checks_go_through_the_node_authorizer() {
    let t = TestServer::start().await;
    let client = t.client().await;
    let objects = "
apiVersion: v1
kind: Node
metadata: {name: n1}
---
apiVersion: v1
kind: Node
metadata: {name: n2}
---
apiVersion: v1
kind: Pod
metadata: {name: p1, namespace: default}
spec:
  nodeName: n1
  containers: [{name: c, image: busybox}]
  volumes: [{name: v, secret: {secretName: s1}}]
";
    let out = t.kubectl_stdin(&["apply", "-f", "-"], objects).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    create_policy(
        &client,
        json!({"metadata": {"name": "node-secret.example.com"}, "spec": {
            "matchConstraints": {"resourceRules": [{"apiGroups": [""], "apiVersions": ["v1"],
                "operations": ["UPDATE"], "resources": ["nodes"]}]},
            "validations": [{"expression": "authorizer.group('').resource('secrets')\
                .namespace('default').name('s1').check('get').allowed()",
                "message": "may not read s1"}],
        }}),
        json!({"metadata": {"name": "node-secret-binding"}, "spec": {
            "policyName": "node-secret.example.com", "validationActions": ["Deny"]}}),
    )
    .await;
    let label = |node: &'static str, n: usize| {
        let kubeconfig = t.user_kubeconfig(&format!("system:node:{node}"), &["system:nodes"]);
        let t = &t;
        async move {
            t.kubectl_as(
                &kubeconfig,
                &["label", "--overwrite", "node", node, &format!("a=v{n}")],
            )
            .await
        }
    };
    let start = std::time::Instant::now();
    let mut n = 0;
    loop {
        n += 1;
        let out = label("n2", n).await;
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        if !out.status.success() {
            assert!(
                stderr.contains(
                    "ValidatingAdmissionPolicy 'node-secret.example.com' with binding \
                     'node-secret-binding' denied request: may not read s1"
                ),
                "{stderr}"
            );
            break;
        }
        assert!(start.elapsed() < DEADLINE, "the policy never denied");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = label("n1", n).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
