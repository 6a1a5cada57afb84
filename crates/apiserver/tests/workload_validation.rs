//! Upstream v1.33's validation of apps/v1 and batch/v1 objects (`validation::apps`): what
//! kubectl users see for invalid workloads, the 422 `Invalid` causes kube-rs gets, and the
//! valid creates and updates that must still pass.

mod common;

use common::TestServer;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

fn typed<T: DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).expect("a well-typed object")
}

fn deployment(name: &str, selector: Value, labels: Value) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": selector,
            "template": {"metadata": {"labels": labels},
                "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}},
        },
    })
}

fn job(name: &str, restart: &str) -> Value {
    json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name},
        "spec": {"template": {"spec": {"restartPolicy": restart,
            "containers": [{"name": "c", "image": "busybox:1.36"}]}}},
    })
}

fn cronjob(name: &str, schedule: &str) -> Value {
    json!({
        "apiVersion": "batch/v1", "kind": "CronJob",
        "metadata": {"name": name},
        "spec": {"schedule": schedule, "jobTemplate": {"spec": {"template": {"spec": {
            "restartPolicy": "OnFailure",
            "containers": [{"name": "c", "image": "busybox:1.36"}]}}}}},
    })
}

fn statefulset(name: &str, service: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": name},
        "spec": {
            "serviceName": service,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}},
        },
    })
}

/// The 422 `Invalid` status of a refused request, with its causes as (reason, field, message).
fn invalid(err: kube::Error) -> (String, Vec<(String, String, String)>) {
    let kube::Error::Api(status) = err else {
        panic!("expected an API error, got {err:?}");
    };
    assert_eq!(
        (status.code, status.reason.as_str()),
        (422, "Invalid"),
        "{status:?}"
    );
    let causes = status
        .details
        .map(|d| d.causes)
        .unwrap_or_default()
        .into_iter()
        .map(|c| (c.reason, c.field, c.message))
        .collect();
    (status.message, causes)
}

fn cause(reason: &str, field: &str, message: &str) -> (String, String, String) {
    (reason.into(), field.into(), message.into())
}

fn stderr(out: &std::process::Output) -> String {
    assert!(!out.status.success(), "kubectl succeeded: {out:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_shows_upstreams_messages_for_invalid_workloads() {
    let t = TestServer::start().await;

    let bad = deployment(
        "web",
        json!({"matchLabels": {"app": "web"}}),
        json!({"app": "other"}),
    );
    let err = stderr(
        &t.kubectl_stdin(&["apply", "-f", "-"], &bad.to_string())
            .await,
    );
    assert!(
        err.contains(
            "The Deployment \"web\" is invalid: spec.template.metadata.labels: Invalid value: \
             map[string]string{\"app\":\"other\"}: `selector` does not match template `labels`"
        ),
        "{err}"
    );

    let bad = cronjob("nightly", "bogus");
    let err = stderr(
        &t.kubectl_stdin(&["apply", "-f", "-"], &bad.to_string())
            .await,
    );
    assert!(
        err.contains(
            "The CronJob \"nightly\" is invalid: spec.schedule: Invalid value: \"bogus\": \
             expected exactly 5 fields, found 1: [bogus]"
        ),
        "{err}"
    );

    // An immutable selector on update.
    let good = deployment(
        "web",
        json!({"matchLabels": {"app": "web"}}),
        json!({"app": "web"}),
    );
    t.kubectl_stdin(&["apply", "-f", "-"], &good.to_string())
        .await
        .status
        .success()
        .then_some(())
        .expect("a valid deployment is created");
    let patch = r#"{"spec":{"selector":{"matchLabels":{"app":"web","v":"2"}},"template":{"metadata":{"labels":{"v":"2"}}}}}"#;
    let err = stderr(
        &t.kubectl(&["patch", "deployment", "web", "-p", patch])
            .await,
    );
    assert!(
        err.contains(
            "The Deployment \"web\" is invalid: spec.selector: Invalid value: \
             v1.LabelSelector{MatchLabels:map[string]string{\"app\":\"web\", \"v\":\"2\"}, \
             MatchExpressions:[]v1.LabelSelectorRequirement(nil)}: field is immutable"
        ),
        "{err}"
    );

    // A Job's pod template cannot change once created (it is not suspended).
    t.kubectl_stdin(&["apply", "-f", "-"], &job("once", "Never").to_string())
        .await
        .status
        .success()
        .then_some(())
        .expect("a valid job is created");
    let patch = r#"{"spec":{"template":{"spec":{"activeDeadlineSeconds":5}}}}"#;
    let err = stderr(&t.kubectl(&["patch", "job", "once", "-p", patch]).await);
    assert!(
        err.contains("The Job \"once\" is invalid: spec.template: Invalid value: ")
            && err.contains(": field is immutable"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_workloads_are_422_with_upstreams_causes() {
    let t = TestServer::start().await;
    let client = t.client().await;
    let pp = PostParams::default();

    let deployments: Api<Deployment> = Api::default_namespaced(client.clone());
    let mut d = deployment(
        "neg",
        json!({"matchLabels": {"app": "a"}}),
        json!({"app": "a"}),
    );
    d["spec"]["replicas"] = json!(-1);
    d["spec"]["strategy"] = json!({"type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 0}});
    let (message, causes) = invalid(
        deployments
            .create(&pp, &typed(d))
            .await
            .expect_err("refused"),
    );
    assert_eq!(
        causes,
        [
            cause(
                "FieldValueInvalid",
                "spec.replicas",
                "Invalid value: -1: must be greater than or equal to 0"
            ),
            cause(
                "FieldValueInvalid",
                "spec.strategy.rollingUpdate.maxUnavailable",
                "Invalid value: intstr.IntOrString{Type:0, IntVal:0, StrVal:\"\"}: may not be 0 \
                 when `maxSurge` is 0"
            ),
        ]
    );
    // Upstream writes the kind with its group (`Deployment.apps`).
    assert!(
        message
            .starts_with("Deployment.apps \"neg\" is invalid: [spec.replicas: Invalid value: -1: "),
        "{message}"
    );

    let d = deployment("empty", json!({}), json!({"app": "a"}));
    let (_, causes) = invalid(
        deployments
            .create(&pp, &typed(d))
            .await
            .expect_err("refused"),
    );
    assert_eq!(
        causes,
        [cause(
            "FieldValueInvalid",
            "spec.selector",
            "Invalid value: v1.LabelSelector{MatchLabels:map[string]string(nil), \
             MatchExpressions:[]v1.LabelSelectorRequirement(nil)}: empty selector is invalid for \
             deployment"
        )]
    );

    let d = deployment(
        "expr",
        json!({"matchExpressions": [{"key": "app", "operator": "In"}]}),
        json!({"app": "a"}),
    );
    let (_, causes) = invalid(
        deployments
            .create(&pp, &typed(d))
            .await
            .expect_err("refused"),
    );
    assert_eq!(
        causes[0],
        cause(
            "FieldValueRequired",
            "spec.selector.matchExpressions[0].values",
            "Required value: must be specified when `operator` is 'In' or 'NotIn'"
        )
    );

    let daemonsets: Api<DaemonSet> = Api::default_namespaced(client.clone());
    let mut ds = deployment(
        "ds",
        json!({"matchLabels": {"app": "x"}}),
        json!({"app": "x"}),
    );
    ds["kind"] = json!("DaemonSet");
    if let Some(spec) = ds["spec"].as_object_mut() {
        spec.remove("replicas");
    }
    ds["spec"]["template"]["spec"]["restartPolicy"] = json!("OnFailure");
    let (_, causes) = invalid(
        daemonsets
            .create(&pp, &typed(ds))
            .await
            .expect_err("refused"),
    );
    assert_eq!(
        causes,
        [cause(
            "FieldValueNotSupported",
            "spec.template.spec.restartPolicy",
            "Unsupported value: \"OnFailure\": supported values: \"Always\""
        )]
    );

    let jobs: Api<Job> = Api::default_namespaced(client.clone());
    let mut j = job("j", "Always");
    j["spec"]["backoffLimit"] = json!(-2);
    let (_, causes) = invalid(jobs.create(&pp, &typed(j)).await.expect_err("refused"));
    assert_eq!(
        causes,
        [
            cause(
                "FieldValueInvalid",
                "spec.backoffLimit",
                "Invalid value: -2: must be greater than or equal to 0"
            ),
            cause(
                "FieldValueRequired",
                "spec.template.spec.restartPolicy",
                "Required value: valid values: \"OnFailure\", \"Never\""
            ),
        ]
    );
    let mut j = job("manual", "Never");
    j["spec"]["manualSelector"] = json!(true);
    let (_, causes) = invalid(jobs.create(&pp, &typed(j)).await.expect_err("refused"));
    assert_eq!(
        causes,
        [cause(
            "FieldValueRequired",
            "spec.selector",
            "Required value"
        )]
    );

    let cronjobs: Api<CronJob> = Api::default_namespaced(client.clone());
    let mut c = cronjob("cj", "61 * * * *");
    c["spec"]["timeZone"] = json!("Mars/Olympus");
    c["spec"]["concurrencyPolicy"] = json!("Sometimes");
    let (_, causes) = invalid(cronjobs.create(&pp, &typed(c)).await.expect_err("refused"));
    assert_eq!(
        causes,
        [
            cause(
                "FieldValueInvalid",
                "spec.schedule",
                "Invalid value: \"61 * * * *\": end of range (61) above maximum (59): 61"
            ),
            cause(
                "FieldValueInvalid",
                "spec.timeZone",
                "Invalid value: \"Mars/Olympus\": unknown time zone Mars/Olympus"
            ),
            cause(
                "FieldValueNotSupported",
                "spec.concurrencyPolicy",
                "Unsupported value: \"Sometimes\": supported values: \"Allow\", \"Forbid\", \
                 \"Replace\""
            ),
        ]
    );

    let pdbs: Api<PodDisruptionBudget> = Api::default_namespaced(client.clone());
    let pdb = json!({"metadata": {"name": "both"},
        "spec": {"minAvailable": 1, "maxUnavailable": 1, "selector": {"matchLabels": {"a": "b"}}}});
    let (_, causes) = invalid(pdbs.create(&pp, &typed(pdb)).await.expect_err("refused"));
    assert_eq!(causes.len(), 1, "{causes:?}");
    assert_eq!(
        (causes[0].0.as_str(), causes[0].1.as_str()),
        ("FieldValueInvalid", "spec")
    );
    assert!(
        causes[0]
            .2
            .ends_with(": minAvailable and maxUnavailable cannot be both set"),
        "{causes:?}"
    );
    let hpas: Api<HorizontalPodAutoscaler> = Api::default_namespaced(client.clone());
    let hpa = json!({"metadata": {"name": "h"}, "spec": {"minReplicas": 3, "maxReplicas": 2,
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"}}});
    let (_, causes) = invalid(hpas.create(&pp, &typed(hpa)).await.expect_err("refused"));
    assert_eq!(
        causes,
        [cause(
            "FieldValueInvalid",
            "spec.maxReplicas",
            "Invalid value: 2: must be greater than or equal to `minReplicas`"
        )]
    );

    // StatefulSet updates may change only some fields.
    let sets: Api<StatefulSet> = Api::default_namespaced(client.clone());
    sets.create(&pp, &typed(statefulset("db", "db")))
        .await
        .expect("a valid statefulset is created");
    let err = sets
        .patch(
            "db",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"serviceName": "other"}})),
        )
        .await
        .expect_err("refused");
    let (_, causes) = invalid(err);
    assert_eq!(
        causes,
        [cause(
            "FieldValueForbidden",
            "spec",
            "Forbidden: updates to statefulset spec for fields other than 'replicas', \
             'ordinals', 'template', 'updateStrategy', 'revisionHistoryLimit', \
             'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden"
        )]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_workloads_and_allowed_updates_pass() {
    let t = TestServer::start().await;
    let client = t.client().await;
    let pp = PostParams::default();
    let merge = |v: Value| Patch::Merge(v);
    let params = PatchParams::default();

    let deployments: Api<Deployment> = Api::default_namespaced(client.clone());
    deployments
        .create(
            &pp,
            &typed(deployment(
                "web",
                json!({"matchLabels": {"app": "web"}}),
                json!({"app": "web"}),
            )),
        )
        .await
        .expect("deployment");
    deployments
        .patch(
            "web",
            &params,
            &merge(json!({"spec": {"replicas": 3,
            "strategy": {"rollingUpdate": {"maxSurge": 0, "maxUnavailable": "50%"}},
            "template": {"metadata": {"labels": {"tier": "front"}}}}})),
        )
        .await
        .expect("replicas, strategy and template change");

    let sets: Api<StatefulSet> = Api::default_namespaced(client.clone());
    sets.create(&pp, &typed(statefulset("db", "db")))
        .await
        .expect("statefulset");
    sets.patch(
        "db",
        &params,
        &merge(json!({"spec": {"replicas": 2, "minReadySeconds": 3,
        "updateStrategy": {"type": "OnDelete", "rollingUpdate": null}}})),
    )
    .await
    .expect("replicas, minReadySeconds and updateStrategy change");

    let daemonsets: Api<DaemonSet> = Api::default_namespaced(client.clone());
    let mut ds = deployment(
        "agent",
        json!({"matchLabels": {"app": "agent"}}),
        json!({"app": "agent"}),
    );
    ds["kind"] = json!("DaemonSet");
    if let Some(spec) = ds["spec"].as_object_mut() {
        spec.remove("replicas");
    }
    daemonsets.create(&pp, &typed(ds)).await.expect("daemonset");

    // A Job gets its generated selector; updates keep it and may change other fields.
    let jobs: Api<Job> = Api::default_namespaced(client.clone());
    let created = jobs
        .create(&pp, &typed(job("once", "OnFailure")))
        .await
        .expect("job");
    assert!(
        created
            .spec
            .as_ref()
            .and_then(|s| s.selector.as_ref())
            .is_some()
    );
    jobs.patch(
        "once",
        &params,
        &merge(json!({"metadata": {"labels": {"a": "b"}},
        "spec": {"activeDeadlineSeconds": 100, "backoffLimit": 2}})),
    )
    .await
    .expect("metadata and mutable spec fields change");
    // A suspended job that never started may change its scheduling directives.
    let mut s = job("later", "Never");
    s["spec"]["suspend"] = json!(true);
    jobs.create(&pp, &typed(s)).await.expect("suspended job");
    jobs.patch(
        "later",
        &params,
        &merge(json!({"spec": {"template": {"spec": {
        "nodeSelector": {"zone": "a"}}}}})),
    )
    .await
    .expect("a suspended job's node selector changes");
    // Indexed jobs may scale completions together with parallelism.
    let mut ix = job("indexed", "Never");
    ix["spec"]["completionMode"] = json!("Indexed");
    ix["spec"]["completions"] = json!(2);
    ix["spec"]["parallelism"] = json!(2);
    jobs.create(&pp, &typed(ix)).await.expect("indexed job");
    jobs.patch(
        "indexed",
        &params,
        &merge(json!({"spec": {"completions": 4, "parallelism": 4}})),
    )
    .await
    .expect("elastic indexed job");

    let cronjobs: Api<CronJob> = Api::default_namespaced(client.clone());
    for (name, schedule) in [
        ("a", "*/5 * * * *"),
        ("b", "@hourly"),
        ("c", "@every 90m"),
        ("d", "0 9 * JAN-MAR mon-fri"),
    ] {
        cronjobs
            .create(&pp, &typed(cronjob(name, schedule)))
            .await
            .expect(schedule);
    }
    let pdbs: Api<PodDisruptionBudget> = Api::default_namespaced(client.clone());
    let pdb = json!({"metadata": {"name": "half"},
        "spec": {"maxUnavailable": "50%", "selector": {"matchLabels": {"app": "web"}}}});
    pdbs.create(&pp, &typed(pdb)).await.expect("pdb");
    let hpas: Api<HorizontalPodAutoscaler> = Api::default_namespaced(client.clone());
    let hpa = json!({"metadata": {"name": "web"}, "spec": {"maxReplicas": 5,
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"}}});
    hpas.create(&pp, &typed(hpa)).await.expect("hpa");

    let mut z = cronjob("zoned", "0 0 * * *");
    z["spec"]["timeZone"] = json!("Europe/Paris");
    cronjobs
        .create(&pp, &typed(z))
        .await
        .expect("a cronjob with a time zone");
}
