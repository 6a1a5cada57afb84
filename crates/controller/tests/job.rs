//! The Job and TTL-after-finished controllers against a real in-process apiserver.
//!
//! No kubelet runs here: the harness's kubelet stand-in marks new pods Running and Ready, and
//! these tests play the kubelet's last part themselves — `finish` patches a pod's status to
//! Succeeded or Failed with a terminated container and its exit code, as a kubelet would
//! report a container that exited.

#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use common::{TestCluster, events_about, eventually, expect_event};
use k8s_openapi::api::batch::v1::{Job, JobCondition};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

const FINALIZER: &str = "batch.kubernetes.io/job-tracking";
const JOB_CONTROLLER: &str = "job-controller";

/// Waits for the Job event `reason` with `message` (type, component and object checked).
async fn job_event(t: &TestCluster, job: &str, type_: &str, reason: &str, message: &str) {
    expect_event(
        &t.client,
        "default",
        ("Job", job),
        (type_, reason, message),
        JOB_CONTROLLER,
    )
    .await;
}

fn job(name: &str, spec: Value) -> Job {
    let mut spec = spec;
    spec["template"] = json!({
        "spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "main", "image": "busybox"}]
        }
    });
    serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap()
}

/// The job's pods, oldest first.
async fn pods_of(pods: &Api<Pod>, job: &str) -> Vec<Pod> {
    let mut list = pods
        .list(&ListParams::default().labels(&format!("batch.kubernetes.io/job-name={job}")))
        .await
        .unwrap()
        .items;
    list.sort_by_key(|p| {
        (
            p.metadata.creation_timestamp.clone().map(|t| t.0),
            p.metadata.name.clone(),
        )
    });
    list
}

fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

/// Pods the kubelet stand-in has marked Running (and that are not being deleted).
async fn running(pods: &Api<Pod>, job: &str) -> Vec<Pod> {
    pods_of(pods, job)
        .await
        .into_iter()
        .filter(|p| phase(p) == "Running" && p.metadata.deletion_timestamp.is_none())
        .collect()
}

/// Plays the kubelet: the pod's container exited with `code` (0: Succeeded, else Failed).
async fn finish(pods: &Api<Pod>, name: &str, code: i32) {
    let now = Timestamp::now().to_string();
    let status = json!({"status": {
        "phase": if code == 0 { "Succeeded" } else { "Failed" },
        "conditions": [
            {"type": "Ready", "status": "False", "lastTransitionTime": now},
        ],
        "containerStatuses": [{
            "name": "main", "image": "busybox", "imageID": "", "ready": false,
            "restartCount": 0,
            "state": {"terminated": {
                "exitCode": code, "reason": if code == 0 { "Completed" } else { "Error" },
                "startedAt": now, "finishedAt": now,
            }},
        }],
    }});
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(status))
        .await
        .unwrap();
}

fn cond<'a>(job: &'a Job, type_: &str) -> Option<&'a JobCondition> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
}

fn finished(job: &Job) -> bool {
    ["Complete", "Failed"]
        .iter()
        .any(|t| cond(job, t).is_some_and(|c| c.status == "True"))
}

async fn wait_finished(jobs: &Api<Job>, name: &str) -> Job {
    eventually(30, "job finished", || async {
        jobs.get(name).await.ok().filter(finished)
    })
    .await
}

/// Status is written only when it changes: a job whose pods do nothing is not rewritten (a
/// rewrite would trigger its own sync again: a hot loop).
async fn assert_unchanged(jobs: &Api<Job>, name: &str) {
    let before = jobs.get(name).await.unwrap().metadata.resource_version;
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let after = jobs.get(name).await.unwrap().metadata.resource_version;
    assert_eq!(before, after, "job {name} rewritten while nothing changed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_with_completions_and_parallelism_completes() {
    let t = TestCluster::start().await;
    let jobs: Api<Job> = Api::namespaced(t.client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(t.client.clone(), "default");
    let created = jobs
        .create(
            &PostParams::default(),
            &job("work", json!({"completions": 3, "parallelism": 2})),
        )
        .await
        .unwrap();
    let uid = created.metadata.uid.clone().unwrap();

    let first = eventually(20, "2 running pods", || async {
        let r = running(&pods, "work").await;
        (r.len() == 2).then_some(r)
    })
    .await;
    for p in &first {
        let labels = p.metadata.labels.clone().unwrap();
        assert_eq!(labels["batch.kubernetes.io/job-name"], "work");
        assert_eq!(labels["job-name"], "work");
        assert_eq!(labels["batch.kubernetes.io/controller-uid"], uid);
        assert_eq!(labels["controller-uid"], uid);
        let r = &p.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!((r.kind.as_str(), r.name.as_str()), ("Job", "work"));
        assert_eq!(
            (r.controller, r.block_owner_deletion),
            (Some(true), Some(true))
        );
        assert!(
            p.metadata
                .finalizers
                .as_ref()
                .unwrap()
                .contains(&FINALIZER.to_string())
        );
        assert!(p.metadata.name.as_deref().unwrap().starts_with("work-"));
    }
    let s = eventually(20, "status active=2 ready=2", || async {
        let s = jobs.get("work").await.ok()?.status?;
        (s.active == Some(2) && s.ready == Some(2)).then_some(s)
    })
    .await;
    assert!(s.start_time.is_some());
    assert_eq!(s.terminating, Some(0));
    assert_unchanged(&jobs, "work").await;

    // One succeeds: it is counted, loses its finalizer, and a third pod starts (parallelism 2,
    // one completion left for each of the two running... three in all).
    finish(&pods, first[0].metadata.name.as_deref().unwrap(), 0).await;
    eventually(20, "succeeded=1 and a third pod", || async {
        let s = jobs.get("work").await.ok()?.status?;
        let all = pods_of(&pods, "work").await;
        (s.succeeded == Some(1) && all.len() == 3 && running(&pods, "work").await.len() == 2)
            .then_some(())
    })
    .await;
    let done = pods
        .get(first[0].metadata.name.as_deref().unwrap())
        .await
        .unwrap();
    assert!(
        done.metadata
            .finalizers
            .as_ref()
            .is_none_or(|f| !f.contains(&FINALIZER.to_string())),
        "a counted pod keeps no tracking finalizer"
    );
    for p in running(&pods, "work").await {
        finish(&pods, p.metadata.name.as_deref().unwrap(), 0).await;
    }
    let j = wait_finished(&jobs, "work").await;
    let s = j.status.clone().unwrap();
    assert_eq!(s.succeeded, Some(3));
    assert_eq!(s.failed, None);
    assert_eq!(s.active, None);
    assert_eq!(s.ready, Some(0));
    assert!(s.completion_time.is_some());
    let u = s.uncounted_terminated_pods.clone().unwrap_or_default();
    assert!(u.succeeded.is_none() && u.failed.is_none());
    let sc = cond(&j, "SuccessCriteriaMet").expect("SuccessCriteriaMet");
    assert_eq!(sc.reason.as_deref(), Some("CompletionsReached"));
    let c = cond(&j, "Complete").expect("Complete");
    assert_eq!(c.status, "True");
    assert_eq!(c.reason.as_deref(), Some("CompletionsReached"));
    assert_eq!(
        c.message.as_deref(),
        Some("Reached expected number of succeeded pods")
    );
    // Never more than `parallelism` pods were created beyond the completions needed.
    let all = pods_of(&pods, "work").await;
    assert_eq!(all.len(), 3);
    let out = t.kubectl_ok(&["get", "job", "work", "--no-headers"]).await;
    assert!(out.contains("3/3"), "{out}");

    // Upstream's events: one SuccessfulCreate per pod, then Completed.
    for p in &all {
        let msg = format!("Created pod: {}", p.metadata.name.as_deref().unwrap());
        job_event(&t, "work", "Normal", "SuccessfulCreate", &msg).await;
    }
    let ev = expect_event(
        &t.client,
        "default",
        ("Job", "work"),
        ("Normal", "Completed", "Job completed"),
        JOB_CONTROLLER,
    )
    .await;
    assert_eq!(ev.involved_object.uid.as_deref(), Some(uid.as_str()));
    assert_eq!(ev.involved_object.api_version.as_deref(), Some("batch/v1"));
    let out = t.kubectl_ok(&["describe", "job", "work"]).await;
    assert!(
        out.contains("SuccessfulCreate")
            && out.contains("Completed")
            && out.contains("Job completed")
            && out.contains(JOB_CONTROLLER),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_pods_are_retried_with_backoff_until_the_backoff_limit() {
    let t = TestCluster::start().await;
    let jobs: Api<Job> = Api::namespaced(t.client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(t.client.clone(), "default");
    jobs.create(
        &PostParams::default(),
        &job("flaky", json!({"backoffLimit": 1})),
    )
    .await
    .unwrap();
    let first = eventually(20, "a running pod", || async {
        running(&pods, "flaky").await.into_iter().next()
    })
    .await;
    let first_name = first.metadata.name.clone().unwrap();
    // Before the failure is written: the controller cannot see it earlier.
    let failed_at = Timestamp::now();
    finish(&pods, &first_name, 1).await;
    // The failure is counted and a replacement comes after the 10 s pod-failure backoff.
    let second = eventually(40, "a replacement pod", || async {
        running(&pods, "flaky")
            .await
            .into_iter()
            .find(|p| p.metadata.name.as_deref() != Some(first_name.as_str()))
    })
    .await;
    let created = second.metadata.creation_timestamp.clone().unwrap().0;
    // The pod's finishedAt (where the backoff counts from) and creationTimestamp both have
    // whole seconds: up to 2 s of the 10 s are lost to truncation; no backoff would be 0–1 s.
    assert!(
        created.duration_since(failed_at).as_secs() >= 8,
        "replacement created {created}, failure at {failed_at}"
    );
    let s = jobs.get("flaky").await.unwrap().status.unwrap();
    assert_eq!(s.failed, Some(1));
    assert!(cond(&jobs.get("flaky").await.unwrap(), "Failed").is_none());

    // The second failure exceeds backoffLimit 1.
    finish(&pods, second.metadata.name.as_deref().unwrap(), 1).await;
    let j = wait_finished(&jobs, "flaky").await;
    let s = j.status.clone().unwrap();
    assert_eq!(s.failed, Some(2));
    assert_eq!(s.succeeded, None);
    assert!(s.completion_time.is_none());
    let ft = cond(&j, "FailureTarget").expect("FailureTarget first");
    assert_eq!(ft.reason.as_deref(), Some("BackoffLimitExceeded"));
    let f = cond(&j, "Failed").unwrap();
    assert_eq!(f.status, "True");
    assert_eq!(f.reason.as_deref(), Some("BackoffLimitExceeded"));
    assert_eq!(
        f.message.as_deref(),
        Some("Job has reached the specified backoff limit")
    );
    assert_eq!(pods_of(&pods, "flaky").await.len(), 2, "no third pod");
    job_event(
        &t,
        "flaky",
        "Warning",
        "BackoffLimitExceeded",
        "Job has reached the specified backoff limit",
    )
    .await;
    // Recorded once: the finished Job is not synced again.
    let failed: Vec<_> = events_about(&t.client, "default", "Job", "flaky")
        .await
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("BackoffLimitExceeded"))
        .collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].count, Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn indexed_job_runs_each_index_once() {
    let t = TestCluster::start().await;
    let jobs: Api<Job> = Api::namespaced(t.client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(t.client.clone(), "default");
    jobs.create(
        &PostParams::default(),
        &job(
            "idx",
            json!({"completions": 3, "parallelism": 2, "completionMode": "Indexed"}),
        ),
    )
    .await
    .unwrap();
    let key = "batch.kubernetes.io/job-completion-index";
    let index_of = |p: &Pod| -> String { p.metadata.annotations.as_ref().unwrap()[key].clone() };
    let first = eventually(20, "2 running pods", || async {
        let r = running(&pods, "idx").await;
        (r.len() == 2).then_some(r)
    })
    .await;
    let mut indexes: Vec<String> = first.iter().map(index_of).collect();
    indexes.sort();
    assert_eq!(indexes, ["0", "1"], "the lowest indexes first");
    for p in &first {
        let ix = index_of(p);
        assert_eq!(p.metadata.labels.as_ref().unwrap()[key], ix);
        let spec = p.spec.as_ref().unwrap();
        assert_eq!(spec.hostname.as_deref(), Some(format!("idx-{ix}").as_str()));
        assert!(
            p.metadata
                .name
                .as_deref()
                .unwrap()
                .starts_with(&format!("idx-{ix}-"))
        );
        let env = spec.containers[0].env.as_ref().unwrap();
        let e = env
            .iter()
            .find(|e| e.name == "JOB_COMPLETION_INDEX")
            .unwrap();
        assert_eq!(
            e.value_from
                .as_ref()
                .unwrap()
                .field_ref
                .as_ref()
                .unwrap()
                .field_path,
            format!("metadata.labels['{key}']")
        );
    }
    let one = first.iter().find(|p| index_of(p) == "1").unwrap();
    finish(&pods, one.metadata.name.as_deref().unwrap(), 0).await;
    eventually(20, "completedIndexes 1 and index 2 started", || async {
        let s = jobs.get("idx").await.ok()?.status?;
        let r = running(&pods, "idx").await;
        let mut ix: Vec<String> = r.iter().map(index_of).collect();
        ix.sort();
        (s.completed_indexes.as_deref() == Some("1") && ix == ["0", "2"]).then_some(())
    })
    .await;
    for p in running(&pods, "idx").await {
        finish(&pods, p.metadata.name.as_deref().unwrap(), 0).await;
    }
    let j = wait_finished(&jobs, "idx").await;
    let s = j.status.clone().unwrap();
    assert_eq!(s.completed_indexes.as_deref(), Some("0-2"));
    assert_eq!(s.succeeded, Some(3));
    assert_eq!(cond(&j, "Complete").unwrap().status, "True");
    assert_eq!(pods_of(&pods, "idx").await.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_failure_policy_fails_the_job_on_an_exit_code() {
    let t = TestCluster::start().await;
    let jobs: Api<Job> = Api::namespaced(t.client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(t.client.clone(), "default");
    jobs.create(
        &PostParams::default(),
        &job(
            "pfp",
            json!({
                "completions": 2, "parallelism": 2, "backoffLimit": 6,
                "podFailurePolicy": {"rules": [
                    {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
                    {"action": "FailJob", "onExitCodes": {"containerName": "main", "operator": "In", "values": [42]}},
                ]}
            }),
        ),
    )
    .await
    .unwrap();
    let r = eventually(20, "2 running pods", || async {
        let r = running(&pods, "pfp").await;
        (r.len() == 2).then_some(r)
    })
    .await;
    let victim = r[0].metadata.name.clone().unwrap();
    finish(&pods, &victim, 42).await;
    let j = wait_finished(&jobs, "pfp").await;
    let want = format!(
        "Container main for pod default/{victim} failed with exit code 42 matching FailJob rule at index 1"
    );
    let ft = cond(&j, "FailureTarget").unwrap();
    assert_eq!(ft.reason.as_deref(), Some("PodFailurePolicy"));
    let f = cond(&j, "Failed").unwrap();
    assert_eq!(f.reason.as_deref(), Some("PodFailurePolicy"));
    assert_eq!(f.message.as_deref(), Some(want.as_str()));
    // The other pod was deleted (and counted as failed) before the job was marked Failed.
    let s = j.status.clone().unwrap();
    assert_eq!(s.failed, Some(2));
    assert_eq!(s.active, None);
    assert_eq!(s.terminating, Some(0));
    eventually(20, "the other pod gone", || async {
        let left = pods_of(&pods, "pfp").await;
        left.iter().all(|p| phase(p) == "Failed").then_some(())
    })
    .await;
    job_event(&t, "pfp", "Warning", "PodFailurePolicy", &want).await;
    let other = r[1].metadata.name.clone().unwrap();
    job_event(
        &t,
        "pfp",
        "Normal",
        "SuccessfulDelete",
        &format!("Deleted pod: {other}"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspended_job_runs_no_pods_until_resumed() {
    let t = TestCluster::start().await;
    let jobs: Api<Job> = Api::namespaced(t.client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(t.client.clone(), "default");
    jobs.create(
        &PostParams::default(),
        &job(
            "sus",
            json!({"suspend": true, "parallelism": 2, "completions": 4}),
        ),
    )
    .await
    .unwrap();
    let j = eventually(20, "Suspended condition", || async {
        let j = jobs.get("sus").await.ok()?;
        cond(&j, "Suspended").is_some().then_some(j)
    })
    .await;
    let c = cond(&j, "Suspended").unwrap();
    assert_eq!(
        (c.status.as_str(), c.reason.as_deref()),
        ("True", Some("JobSuspended"))
    );
    assert_eq!(c.message.as_deref(), Some("Job suspended"));
    let s = j.status.clone().unwrap();
    assert!(s.start_time.is_none(), "a suspended job has not started");
    assert_unchanged(&jobs, "sus").await;
    assert!(pods_of(&pods, "sus").await.is_empty());

    let resume = |v: bool| {
        let jobs = jobs.clone();
        async move {
            jobs.patch(
                "sus",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"suspend": v}})),
            )
            .await
            .unwrap();
        }
    };
    resume(false).await;
    let j = eventually(20, "resumed with 2 running pods", || async {
        let j = jobs.get("sus").await.ok()?;
        let c = cond(&j, "Suspended")?;
        (c.status == "False" && running(&pods, "sus").await.len() == 2).then_some(j)
    })
    .await;
    let c = cond(&j, "Suspended").unwrap();
    assert_eq!(c.reason.as_deref(), Some("JobResumed"));
    assert!(j.status.as_ref().unwrap().start_time.is_some());

    // Suspending again deletes the running pods without counting them as failed.
    resume(true).await;
    let j = eventually(20, "pods gone after suspend", || async {
        let j = jobs.get("sus").await.ok()?;
        let c = cond(&j, "Suspended")?;
        (c.status == "True" && pods_of(&pods, "sus").await.is_empty()).then_some(j)
    })
    .await;
    let s = j.status.unwrap();
    assert_eq!(s.failed, None);
    assert_eq!(s.active, None);

    job_event(&t, "sus", "Normal", "Resumed", "Job resumed").await;
    job_event(&t, "sus", "Normal", "Suspended", "Job suspended").await;
    // Suspended twice: one Event, counted twice; one SuccessfulDelete per running pod.
    eventually(
        20,
        "Suspended counted twice and 2 SuccessfulDelete",
        || async {
            let evs = events_about(&t.client, "default", "Job", "sus").await;
            let suspended = evs
                .iter()
                .filter(|e| e.reason.as_deref() == Some("Suspended"))
                .map(|e| e.count)
                .collect::<Vec<_>>();
            let deleted = evs
                .iter()
                .filter(|e| e.reason.as_deref() == Some("SuccessfulDelete"))
                .count();
            (suspended == [Some(2)] && deleted == 2).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_deadline_fails_the_job() {
    let t = TestCluster::start().await;
    let jobs: Api<Job> = Api::namespaced(t.client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(t.client.clone(), "default");
    jobs.create(
        &PostParams::default(),
        &job("deadline", json!({"activeDeadlineSeconds": 2})),
    )
    .await
    .unwrap();
    eventually(20, "a running pod", || async {
        running(&pods, "deadline").await.into_iter().next()
    })
    .await;
    // Nothing finishes the pod: the deadline (a requeue, not a poll) fails the job.
    let j = wait_finished(&jobs, "deadline").await;
    let f = cond(&j, "Failed").unwrap();
    assert_eq!(f.reason.as_deref(), Some("DeadlineExceeded"));
    assert_eq!(
        f.message.as_deref(),
        Some("Job was active longer than specified deadline")
    );
    assert_eq!(
        cond(&j, "FailureTarget").unwrap().reason.as_deref(),
        Some("DeadlineExceeded")
    );
    let s = j.status.unwrap();
    assert_eq!(s.active, None);
    assert_eq!(s.failed, Some(1), "the deleted pod counts as failed");
    eventually(20, "pod deleted", || async {
        pods_of(&pods, "deadline").await.is_empty().then_some(())
    })
    .await;
    job_event(
        &t,
        "deadline",
        "Warning",
        "DeadlineExceeded",
        "Job was active longer than specified deadline",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_job_is_deleted_after_its_ttl_and_deleted_jobs_release_their_pods() {
    let t = TestCluster::start().await;
    let jobs: Api<Job> = Api::namespaced(t.client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(t.client.clone(), "default");
    jobs.create(
        &PostParams::default(),
        &job("ttl", json!({"ttlSecondsAfterFinished": 2})),
    )
    .await
    .unwrap();
    let p = eventually(20, "a running pod", || async {
        running(&pods, "ttl").await.into_iter().next()
    })
    .await;
    finish(&pods, p.metadata.name.as_deref().unwrap(), 0).await;
    wait_finished(&jobs, "ttl").await;
    // Deleted (foreground: its pod first) two seconds after it finished.
    eventually(30, "job and pod deleted", || async {
        let gone = jobs.get_opt("ttl").await.ok()?.is_none();
        (gone && pods_of(&pods, "ttl").await.is_empty()).then_some(())
    })
    .await;

    // A running job deleted in the background: its pods lose the tracking finalizer and go.
    jobs.create(
        &PostParams::default(),
        &job("bg", json!({"parallelism": 2, "completions": 2})),
    )
    .await
    .unwrap();
    eventually(20, "2 running pods", || async {
        (running(&pods, "bg").await.len() == 2).then_some(())
    })
    .await;
    jobs.delete("bg", &DeleteParams::background())
        .await
        .unwrap();
    eventually(30, "orphaned pods deleted", || async {
        pods_of(&pods, "bg").await.is_empty().then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backoff_limit_per_index_fails_only_the_index() {
    let t = TestCluster::start().await;
    let jobs: Api<Job> = Api::namespaced(t.client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(t.client.clone(), "default");
    let created = jobs
        .create(
            &PostParams::default(),
            &job(
                "perix",
                json!({"completions": 2, "parallelism": 2, "completionMode": "Indexed",
                       "backoffLimitPerIndex": 1}),
            ),
        )
        .await
        .unwrap();
    // The apiserver's default for the global limit when failures count per index.
    assert_eq!(created.spec.unwrap().backoff_limit, Some(i32::MAX));
    let ix = "batch.kubernetes.io/job-completion-index";
    let count = "batch.kubernetes.io/job-index-failure-count";
    let pod_of = |list: &[Pod], i: &str| -> Option<Pod> {
        list.iter()
            .find(|p| p.metadata.annotations.as_ref().unwrap()[ix] == i)
            .cloned()
    };
    let first = eventually(20, "2 running pods", || async {
        let r = running(&pods, "perix").await;
        (r.len() == 2).then_some(r)
    })
    .await;
    let zero = pod_of(&first, "0").unwrap();
    assert_eq!(zero.metadata.annotations.as_ref().unwrap()[count], "0");
    finish(&pods, zero.metadata.name.as_deref().unwrap(), 1).await;
    finish(
        &pods,
        pod_of(&first, "1")
            .unwrap()
            .metadata
            .name
            .as_deref()
            .unwrap(),
        0,
    )
    .await;
    // Index 0 comes back after its backoff, carrying one failure.
    let again = eventually(40, "index 0 recreated", || async {
        let r = running(&pods, "perix").await;
        pod_of(&r, "0")
    })
    .await;
    assert_eq!(again.metadata.annotations.as_ref().unwrap()[count], "1");
    let s = jobs.get("perix").await.unwrap().status.unwrap();
    assert_eq!(s.failed_indexes.as_deref(), Some(""));
    assert_eq!(s.completed_indexes.as_deref(), Some("1"));
    // Its second failure fails index 0, and with every index decided, the job.
    finish(&pods, again.metadata.name.as_deref().unwrap(), 1).await;
    let j = wait_finished(&jobs, "perix").await;
    let f = cond(&j, "Failed").unwrap();
    assert_eq!(f.reason.as_deref(), Some("FailedIndexes"));
    assert_eq!(f.message.as_deref(), Some("Job has failed indexes"));
    let s = j.status.unwrap();
    assert_eq!(s.failed_indexes.as_deref(), Some("0"));
    assert_eq!(s.completed_indexes.as_deref(), Some("1"));
    assert_eq!((s.failed, s.succeeded), (Some(2), Some(1)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_finished_while_the_controller_is_down_are_counted_once() {
    let mut t = TestCluster::start().await;
    let jobs: Api<Job> = Api::namespaced(t.client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(t.client.clone(), "default");
    jobs.create(
        &PostParams::default(),
        &job("restart", json!({"completions": 3, "parallelism": 3})),
    )
    .await
    .unwrap();
    let r = eventually(20, "3 running pods", || async {
        let r = running(&pods, "restart").await;
        (r.len() == 3).then_some(r)
    })
    .await;
    finish(&pods, r[0].metadata.name.as_deref().unwrap(), 0).await;
    eventually(20, "one counted", || async {
        let s = jobs.get("restart").await.ok()?.status?;
        (s.succeeded == Some(1)).then_some(())
    })
    .await;
    // The controller manager goes away; the other two pods finish meanwhile (their
    // finalizers hold them), one success, one failure.
    t.stop_controllers().await;
    finish(&pods, r[1].metadata.name.as_deref().unwrap(), 0).await;
    finish(&pods, r[2].metadata.name.as_deref().unwrap(), 1).await;
    let (_stop, _handle) = t
        .spawn_controller_manager(rk3s_controller::Config::default())
        .await;
    // The failure is replaced and the replacement succeeds.
    let extra = eventually(40, "a replacement pod", || async {
        running(&pods, "restart").await.into_iter().next()
    })
    .await;
    // Counted in the same sync that created the replacement (just after it).
    eventually(20, "succeeded=2 failed=1", || async {
        let s = jobs.get("restart").await.ok()?.status?;
        ((s.succeeded, s.failed) == (Some(2), Some(1))).then_some(())
    })
    .await;
    finish(&pods, extra.metadata.name.as_deref().unwrap(), 0).await;
    let j = wait_finished(&jobs, "restart").await;
    let s = j.status.unwrap();
    assert_eq!((s.succeeded, s.failed), (Some(3), Some(1)));
    assert_eq!(
        cond(&jobs.get("restart").await.unwrap(), "Complete")
            .unwrap()
            .status,
        "True"
    );
}
