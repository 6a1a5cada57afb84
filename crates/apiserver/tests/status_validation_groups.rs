//! Upstream v1.33's validation of writes through `/status` of the named API groups
//! (`validation::status::groups`): the 422 `Invalid` Status kube-rs gets for a bad status of a
//! Deployment, ReplicaSet, StatefulSet, DaemonSet, Job, HorizontalPodAutoscaler (v1 and v2),
//! PodDisruptionBudget, CertificateSigningRequest, Ingress, ValidatingAdmissionPolicy and
//! CustomResourceDefinition, and the status writes the controllers make that must still pass.

mod common;

use base64::Engine as _;
use common::{TestServer, invalid_status, patch_status};
use k8s_openapi::api::admissionregistration::v1::ValidatingAdmissionPolicy;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::autoscaling::{v1 as autoscaling_v1, v2 as autoscaling_v2};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, PostParams};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

fn typed<T: DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).expect("a well-typed object")
}

async fn created<K>(api: &Api<K>, obj: Value) -> K
where
    K: kube::Resource + Clone + DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    api.create(&PostParams::default(), &typed::<K>(obj))
        .await
        .expect("created")
}

/// `reason field: message` of each cause of a 422 `Invalid` Status (checked to be one, with
/// upstream's message naming the object).
fn causes(err: kube::Error, object: &str) -> Vec<String> {
    let status = invalid_status(err);
    assert!(
        status
            .message
            .starts_with(&format!("{object} is invalid: ")),
        "{}",
        status.message
    );
    status
        .details
        .expect("details")
        .causes
        .into_iter()
        .map(|c| format!("{} {}: {}", c.reason, c.field, c.message))
        .collect()
}

fn deployment(name: &str) -> Value {
    json!({
        "metadata": {"name": name},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}}},
    })
}

#[tokio::test]
async fn apps_status_counts_are_validated() {
    let t = TestServer::start().await;
    let c = t.client().await;

    let deployments: Api<Deployment> = Api::namespaced(c.clone(), "default");
    created(&deployments, deployment("web")).await;
    // What the deployment controller writes.
    let ok = patch_status(
        &deployments,
        "web",
        json!({"observedGeneration": 1, "replicas": 2, "updatedReplicas": 2, "readyReplicas": 1,
               "availableReplicas": 1, "unavailableReplicas": 1, "collisionCount": 1,
               "conditions": [{"type": "Available", "status": "False",
                               "reason": "MinimumReplicasUnavailable",
                               "message": "Deployment does not have minimum availability.",
                               "lastUpdateTime": "2026-01-01T00:00:00Z",
                               "lastTransitionTime": "2026-01-01T00:00:00Z"}]}),
    )
    .await
    .expect("a controller's status");
    assert_eq!(ok.status.and_then(|s| s.ready_replicas), Some(1));
    let err = patch_status(
        &deployments,
        "web",
        json!({"replicas": 1, "updatedReplicas": 1, "readyReplicas": 2, "availableReplicas": 2,
               "unavailableReplicas": -1, "collisionCount": 0}),
    )
    .await
    .expect_err("refused");
    assert_eq!(
        causes(err, "Deployment.apps \"web\""),
        [
            "FieldValueInvalid status.unavailableReplicas: Invalid value: -1: must be greater than or equal to 0",
            "FieldValueInvalid status.readyReplicas: Invalid value: 2: cannot be greater than status.replicas",
            "FieldValueInvalid status.availableReplicas: Invalid value: 2: cannot be greater than status.replicas",
            "FieldValueInvalid status.collisionCount: Invalid value: 0: cannot be decremented",
        ]
    );
    // Nothing was stored.
    let stored = deployments.get("web").await.expect("get");
    assert_eq!(stored.status.and_then(|s| s.collision_count), Some(1));

    // A full replace of the status is judged the same way.
    let mut web = deployments.get("web").await.expect("get");
    if let Some(s) = web.status.as_mut() {
        s.replicas = Some(-2);
    }
    let err = deployments
        .replace_status("web", &PostParams::default(), &web)
        .await
        .expect_err("refused");
    let got = causes(err, "Deployment.apps \"web\"");
    assert_eq!(
        got[0],
        "FieldValueInvalid status.replicas: Invalid value: -2: must be greater than or equal to 0"
    );

    let replicasets: Api<ReplicaSet> = Api::namespaced(c.clone(), "default");
    let mut rs = deployment("web-1");
    rs["spec"]["minReadySeconds"] = json!(0);
    created(&replicasets, rs).await;
    patch_status(
        &replicasets,
        "web-1",
        json!({"replicas": 2, "fullyLabeledReplicas": 2, "readyReplicas": 2,
               "availableReplicas": 2, "observedGeneration": 1}),
    )
    .await
    .expect("a controller's status");
    let err = patch_status(
        &replicasets,
        "web-1",
        json!({"replicas": 2, "availableReplicas": 2, "readyReplicas": 1}),
    )
    .await
    .expect_err("refused");
    assert_eq!(
        causes(err, "ReplicaSet.apps \"web-1\""),
        [
            "FieldValueInvalid status.availableReplicas: Invalid value: 2: cannot be greater than readyReplicas"
        ]
    );

    let statefulsets: Api<StatefulSet> = Api::namespaced(c.clone(), "default");
    let mut sts = deployment("db");
    sts["spec"]["serviceName"] = json!("db");
    created(&statefulsets, sts).await;
    patch_status(
        &statefulsets,
        "db",
        json!({"replicas": 2, "readyReplicas": 1, "currentReplicas": 2, "updatedReplicas": 2,
               "availableReplicas": 1, "observedGeneration": 1, "collisionCount": 0,
               "currentRevision": "db-1", "updateRevision": "db-1"}),
    )
    .await
    .expect("a controller's status");
    let err = patch_status(&statefulsets, "db", json!({"currentReplicas": 3}))
        .await
        .expect_err("refused");
    assert_eq!(
        causes(err, "StatefulSet.apps \"db\""),
        [
            "FieldValueInvalid status.currentReplicas: Invalid value: 3: cannot be greater than status.replicas"
        ]
    );

    let daemonsets: Api<DaemonSet> = Api::namespaced(c, "default");
    let mut ds = deployment("agent");
    if let Some(spec) = ds["spec"].as_object_mut() {
        spec.remove("replicas");
    }
    created(&daemonsets, ds).await;
    patch_status(
        &daemonsets,
        "agent",
        json!({"currentNumberScheduled": 1, "numberMisscheduled": 0, "desiredNumberScheduled": 1,
               "numberReady": 1, "numberAvailable": 1, "updatedNumberScheduled": 1,
               "observedGeneration": 1}),
    )
    .await
    .expect("a controller's status");
    let err = patch_status(&daemonsets, "agent", json!({"numberMisscheduled": -1}))
        .await
        .expect_err("refused");
    assert_eq!(
        causes(err, "DaemonSet.apps \"agent\""),
        [
            "FieldValueInvalid status.numberMisscheduled: Invalid value: -1: must be greater than or equal to 0"
        ]
    );
}

#[tokio::test]
async fn job_status_transitions_are_validated() {
    let t = TestServer::start().await;
    let c = t.client().await;
    let jobs: Api<Job> = Api::namespaced(c, "default");
    created(
        &jobs,
        json!({"metadata": {"name": "pi"},
               "spec": {"completions": 1, "template": {"spec": {"restartPolicy": "Never",
                   "containers": [{"name": "c", "image": "busybox:1.36"}]}}}}),
    )
    .await;
    // The job controller's writes: running, success criteria met, complete.
    let start = "2026-01-01T00:00:00Z";
    patch_status(
        &jobs,
        "pi",
        json!({"startTime": start, "active": 1, "ready": 0, "terminating": 0,
               "uncountedTerminatedPods": {}}),
    )
    .await
    .expect("running");
    let done = "2026-01-01T00:00:30Z";
    let condition = |ty: &str| {
        json!({"type": ty, "status": "True", "reason": "CompletionsReached",
               "message": "Reached expected number of succeeded pods",
               "lastProbeTime": done, "lastTransitionTime": done})
    };
    patch_status(
        &jobs,
        "pi",
        json!({"active": 0, "ready": 0, "succeeded": 1,
               "conditions": [condition("SuccessCriteriaMet")]}),
    )
    .await
    .expect("success criteria met");

    // Complete without a completion time, and Failed at the same time.
    let err = patch_status(
        &jobs,
        "pi",
        json!({"conditions": [condition("SuccessCriteriaMet"), condition("Complete"),
                              condition("Failed")]}),
    )
    .await
    .expect_err("refused");
    assert_eq!(
        causes(err, "Job.batch \"pi\""),
        [
            "FieldValueInvalid status.conditions: Invalid value: cannot set Complete=True and Failed=true conditions",
            "FieldValueRequired status.completionTime: Required value: completionTime is required for Complete jobs",
            "FieldValueInvalid status.conditions: Invalid value: cannot set Failed=True condition without the FailureTarget=true condition",
            "FieldValueInvalid status.conditions: Invalid value: cannot set SuccessCriteriaMet=True and Failed=true conditions",
        ]
    );
    let complete = patch_status(
        &jobs,
        "pi",
        json!({"completionTime": done,
               "conditions": [condition("SuccessCriteriaMet"), condition("Complete")]}),
    )
    .await
    .expect("complete");
    assert!(complete.status.and_then(|s| s.completion_time).is_some());

    // A finished Job stays finished, its counters and times stay.
    let err = patch_status(
        &jobs,
        "pi",
        json!({"succeeded": 0, "completionTime": "2026-01-01T00:01:00Z",
               "conditions": [condition("SuccessCriteriaMet")]}),
    )
    .await
    .expect_err("refused");
    assert_eq!(
        causes(err, "Job.batch \"pi\""),
        [
            "FieldValueInvalid status.completionTime: Invalid value: 2026-01-01 00:01:00 +0000 UTC: cannot set completionTime when there is no Complete=True condition",
            "FieldValueInvalid status.conditions: Invalid value: cannot disable the terminal Complete=True condition",
            "FieldValueInvalid status.succeeded: Invalid value: 0: cannot decrease the succeeded counter",
            "FieldValueInvalid status.completionTime: Invalid value: 2026-01-01 00:01:00 +0000 UTC: completionTime cannot be mutated",
        ]
    );
    let err = patch_status(&jobs, "pi", json!({"completedIndexes": "0", "ready": 1}))
        .await
        .expect_err("refused");
    assert_eq!(
        causes(err, "Job.batch \"pi\""),
        [
            "FieldValueInvalid status.completedIndexes: Invalid value: \"0\": cannot set non-empty completedIndexes when non-indexed completion mode",
            "FieldValueInvalid status.ready: Invalid value: 1: cannot set more ready pods than active",
        ]
    );
}

#[tokio::test]
async fn autoscaler_and_disruption_budget_status() {
    let t = TestServer::start().await;
    let c = t.client().await;

    let v2: Api<autoscaling_v2::HorizontalPodAutoscaler> = Api::namespaced(c.clone(), "default");
    created(
        &v2,
        json!({"metadata": {"name": "web"},
               "spec": {"maxReplicas": 3,
                        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"}}}),
    )
    .await;
    patch_status(
        &v2,
        "web",
        json!({"currentReplicas": 1, "desiredReplicas": 2,
               "lastScaleTime": "2026-01-01T00:00:00Z"}),
    )
    .await
    .expect("the autoscaler's status");
    let err = patch_status(&v2, "web", json!({"desiredReplicas": -1}))
        .await
        .expect_err("refused");
    assert_eq!(
        causes(err, "HorizontalPodAutoscaler.autoscaling \"web\""),
        [
            "FieldValueInvalid status.desiredReplicas: Invalid value: -1: must be greater than or equal to 0"
        ]
    );
    let v1: Api<autoscaling_v1::HorizontalPodAutoscaler> = Api::namespaced(c.clone(), "default");
    let err = patch_status(
        &v1,
        "web",
        json!({"currentReplicas": -3, "desiredReplicas": 1}),
    )
    .await
    .expect_err("refused");
    assert_eq!(
        causes(err, "HorizontalPodAutoscaler.autoscaling \"web\""),
        [
            "FieldValueInvalid status.currentReplicas: Invalid value: -3: must be greater than or equal to 0"
        ]
    );

    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(c, "default");
    created(
        &pdbs,
        json!({"metadata": {"name": "web"},
               "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "web"}}}}),
    )
    .await;
    patch_status(
        &pdbs,
        "web",
        json!({"observedGeneration": 1, "disruptionsAllowed": 0, "currentHealthy": 1,
               "desiredHealthy": 1, "expectedPods": 1,
               "conditions": [{"type": "DisruptionAllowed", "status": "False",
                               "reason": "InsufficientPods", "message": "",
                               "observedGeneration": 1,
                               "lastTransitionTime": "2026-01-01T00:00:00Z"}]}),
    )
    .await
    .expect("the disruption controller's status");
    let err = patch_status(
        &pdbs,
        "web",
        json!({"currentHealthy": -1,
               "conditions": [{"type": "DisruptionAllowed", "status": "Yes", "reason": "",
                               "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}),
    )
    .await
    .expect_err("refused");
    assert_eq!(
        causes(err, "PodDisruptionBudget.policy \"web\""),
        [
            "FieldValueNotSupported status.conditions[0].status: Unsupported value: \"Yes\": supported values: \"False\", \"True\", \"Unknown\"",
            "FieldValueRequired status.conditions[0].reason: Required value: must be set",
            "FieldValueInvalid status.currentHealthy: Invalid value: -1: must be greater than or equal to 0",
        ]
    );
}

#[tokio::test]
async fn csr_ingress_policy_and_crd_status() {
    let t = TestServer::start().await;
    let c = t.client().await;

    // A signer issues a certificate once, and only a certificate.
    let request = {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::default();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "alice");
        params
            .serialize_request(&key)
            .expect("request")
            .pem()
            .expect("pem")
    };
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let csrs: Api<CertificateSigningRequest> = Api::all(c.clone());
    created(
        &csrs,
        json!({"metadata": {"name": "alice"},
               "spec": {"request": b64(&request), "signerName": "example.com/signer",
                        "usages": ["client auth"]}}),
    )
    .await;
    let err = patch_status(
        &csrs,
        "alice",
        json!({"certificate": b64("not a certificate")}),
    )
    .await
    .expect_err("refused");
    assert_eq!(
        causes(
            err,
            "CertificateSigningRequest.certificates.k8s.io \"alice\""
        ),
        [
            "FieldValueInvalid status.certificate: Invalid value: \"<certificate data>\": must contain at least one CERTIFICATE PEM block"
        ]
    );
    let cert = {
        let key = rcgen::KeyPair::generate().expect("key");
        rcgen::CertificateParams::new(vec!["alice".to_string()])
            .expect("params")
            .self_signed(&key)
            .expect("cert")
            .pem()
    };
    patch_status(&csrs, "alice", json!({"certificate": b64(&cert)}))
        .await
        .expect("issued");
    let err = patch_status(
        &csrs,
        "alice",
        json!({"certificate": b64(&cert.replace("CERTIFICATE", "X")),
               "conditions": [{"type": "Failed", "status": "False", "reason": "SignerFailed"}]}),
    )
    .await
    .expect_err("refused");
    assert_eq!(
        causes(
            err,
            "CertificateSigningRequest.certificates.k8s.io \"alice\""
        ),
        [
            "FieldValueNotSupported status.conditions[0].status: Unsupported value: \"False\": supported values: \"True\"",
            "FieldValueInvalid status.certificate: Invalid value: \"<certificate data>\": only CERTIFICATE PEM blocks are allowed, found \"X\"",
            "FieldValueForbidden status.certificate: Forbidden: updates may not modify existing certificate content",
        ]
    );

    let ingresses: Api<Ingress> = Api::namespaced(c.clone(), "default");
    created(
        &ingresses,
        json!({"metadata": {"name": "web"},
               "spec": {"defaultBackend": {"service": {"name": "web", "port": {"number": 80}}}}}),
    )
    .await;
    patch_status(
        &ingresses,
        "web",
        json!({"loadBalancer": {"ingress": [{"ip": "10.0.0.10",
                                             "ports": [{"port": 80, "protocol": "TCP"}]}]}}),
    )
    .await
    .expect("a load balancer's status");
    let err = patch_status(
        &ingresses,
        "web",
        json!({"loadBalancer": {"ingress": [{"ip": "10.0.0"}, {"hostname": "10.0.0.1"}]}}),
    )
    .await
    .expect_err("refused");
    assert_eq!(
        causes(err, "Ingress.networking.k8s.io \"web\""),
        [
            "FieldValueInvalid status.loadBalancer.ingress[0].ip: Invalid value: \"10.0.0\": must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
            "FieldValueInvalid status.loadBalancer.ingress[1].hostname: Invalid value: \"10.0.0.1\": must be a DNS name, not an IP address",
        ]
    );

    let policies: Api<ValidatingAdmissionPolicy> = Api::all(c.clone());
    created(
        &policies,
        json!({"metadata": {"name": "replicas"},
               "spec": {"matchConstraints": {"resourceRules": [{"apiGroups": ["apps"],
                            "apiVersions": ["v1"], "operations": ["CREATE"],
                            "resources": ["deployments"]}]},
                        "validations": [{"expression": "object.spec.replicas <= 5"}]}}),
    )
    .await;
    patch_status(
        &policies,
        "replicas",
        json!({"observedGeneration": 1, "typeChecking": {"expressionWarnings": []}}),
    )
    .await
    .expect("a type checker's status");
    let err = patch_status(
        &policies,
        "replicas",
        json!({"typeChecking": {"expressionWarnings": [
                   {"fieldRef": "spec.validations[0", "warning": "no such field"}]},
               "conditions": [{"type": "Checked", "status": "True", "reason": "Done",
                               "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"},
                              {"type": "Checked", "status": "True", "reason": "Done",
                               "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}),
    )
    .await
    .expect_err("refused");
    assert_eq!(
        causes(
            err,
            "ValidatingAdmissionPolicy.admissionregistration.k8s.io \"replicas\""
        ),
        [
            "FieldValueInvalid status.typeChecking.expressionWarnings[0].fieldRef: Invalid value: \"spec.validations[0\": invalid JSONPath: unterminated array",
            "FieldValueDuplicate status.conditions[1].type: Duplicate value: \"Checked\"",
        ]
    );

    let crds: Api<CustomResourceDefinition> = Api::all(c);
    let crd = created(
        &crds,
        json!({"metadata": {"name": "widgets.example.com"},
               "spec": {"group": "example.com", "scope": "Namespaced",
                        "names": {"plural": "widgets", "singular": "widget", "kind": "Widget",
                                  "listKind": "WidgetList"},
                        "versions": [{"name": "v1", "served": true, "storage": true,
                                      "schema": {"openAPIV3Schema": {"type": "object"}}}]}}),
    )
    .await;
    assert_eq!(crd.metadata.name.as_deref(), Some("widgets.example.com"));
    let err = patch_status(
        &crds,
        "widgets.example.com",
        json!({"acceptedNames": {"plural": "widgets", "kind": "Widget", "listKind": "Widget"}}),
    )
    .await
    .expect_err("refused");
    assert_eq!(
        causes(
            err,
            "CustomResourceDefinition.apiextensions.k8s.io \"widgets.example.com\""
        ),
        [
            "FieldValueInvalid status.acceptedNames.listKind: Invalid value: \"Widget\": kind and listKind may not be the same"
        ]
    );
    patch_status(
        &crds,
        "widgets.example.com",
        json!({"acceptedNames": {"plural": "widgets", "singular": "widget", "kind": "Widget",
                                 "listKind": "WidgetList"},
               "storedVersions": ["v1"]}),
    )
    .await
    .expect("the names controller's status");
}
