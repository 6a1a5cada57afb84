//! The CronJob controller against a real in-process apiserver.
//!
//! Schedules are minutes apart, so these tests do not wait for the wall clock: the controller
//! manager reads the time from a test clock (`rk3s_controller::run_with_clock`) that stands
//! still until a test moves it. After moving it, a test touches the CronJob (an annotation),
//! which is what wakes the controller, as its requeue timers still run on real time.
//!
//! No kubelet runs: the harness's stand-in marks pods Running, and `finish_job` plays the
//! kubelet's last part by patching a Job's pod to Succeeded or Failed with an exit code.

#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use std::sync::{Arc, Mutex};

use common::{TestCluster, eventually, expect_event};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

/// A clock that stands still until moved.
#[derive(Debug)]
struct TestClock(Mutex<Timestamp>);

impl rk3s_controller::Clock for TestClock {
    fn now(&self) -> Timestamp {
        *self.0.lock().unwrap()
    }
}

impl TestClock {
    fn set(&self, t: Timestamp) {
        *self.0.lock().unwrap() = t;
    }
}

struct Fixture {
    _cluster: TestCluster,
    clock: Arc<TestClock>,
    cronjobs: Api<CronJob>,
    jobs: Api<Job>,
    pods: Api<Pod>,
    pokes: std::sync::atomic::AtomicU32,
}

impl Fixture {
    async fn start() -> Fixture {
        let clock = Arc::new(TestClock(Mutex::new(Timestamp::now())));
        let t =
            TestCluster::start_with_clock(rk3s_controller::Config::default(), clock.clone()).await;
        Fixture {
            cronjobs: Api::namespaced(t.client.clone(), "default"),
            jobs: Api::namespaced(t.client.clone(), "default"),
            pods: Api::namespaced(t.client.clone(), "default"),
            _cluster: t,
            clock,
            pokes: std::sync::atomic::AtomicU32::new(0),
        }
    }

    /// Creates the CronJob; returns the first schedule time after its creation (a minute
    /// boundary), which tests then move the clock past.
    async fn create(&self, name: &str, extra: Value) -> Timestamp {
        let mut spec = json!({
            "schedule": "* * * * *",
            "timeZone": "Etc/UTC",
            "jobTemplate": {"spec": {"backoffLimit": 0, "template": {"spec": {
                "restartPolicy": "Never",
                "containers": [{"name": "main", "image": "busybox"}]
            }}}}
        });
        for (k, v) in extra.as_object().unwrap() {
            spec[k] = v.clone();
        }
        let cj: CronJob =
            serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap();
        let created = self
            .cronjobs
            .create(&PostParams::default(), &cj)
            .await
            .unwrap();
        let at = created.metadata.creation_timestamp.unwrap().0;
        let base = at.max(self.clock_now());
        Timestamp::from_second((base.as_second() / 60 + 1) * 60).unwrap()
    }

    fn clock_now(&self) -> Timestamp {
        use rk3s_controller::Clock as _;
        self.clock.now()
    }

    /// Moves the clock to `t` and touches the CronJob so that it syncs.
    async fn at(&self, name: &str, t: Timestamp) {
        self.clock.set(t);
        let n = self.pokes.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.cronjobs
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"annotations": {"test/poke": n.to_string()}}})),
            )
            .await
            .unwrap();
    }

    async fn job_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .jobs
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|j| j.metadata.deletion_timestamp.is_none())
            .filter_map(|j| j.metadata.name)
            .collect();
        names.sort();
        names
    }

    async fn wait_jobs(&self, want: &[String]) {
        let mut want = want.to_vec();
        want.sort();
        eventually(30, &format!("jobs {want:?}"), || async {
            (self.job_names().await == want).then_some(())
        })
        .await;
    }

    /// Plays the kubelet: the job's running pod exits with `code`; waits for the job to finish.
    async fn finish_job(&self, job: &str, code: i32) {
        let pod = eventually(20, "a running pod", || async {
            self.pods
                .list(&ListParams::default().labels(&format!("batch.kubernetes.io/job-name={job}")))
                .await
                .ok()?
                .items
                .into_iter()
                .find(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        })
        .await;
        let now = Timestamp::now().to_string();
        let status = json!({"status": {
            "phase": if code == 0 { "Succeeded" } else { "Failed" },
            "containerStatuses": [{
                "name": "main", "image": "busybox", "imageID": "", "ready": false,
                "restartCount": 0,
                "state": {"terminated": {"exitCode": code, "finishedAt": now}},
            }],
        }});
        self.pods
            .patch_status(
                pod.metadata.name.as_deref().unwrap(),
                &PatchParams::default(),
                &Patch::Merge(status),
            )
            .await
            .unwrap();
        eventually(30, "job finished", || async {
            let j = self.jobs.get(job).await.ok()?;
            j.status?
                .conditions?
                .iter()
                .any(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
                .then_some(())
        })
        .await;
    }

    /// Waits for the CronJob event `reason` with `message` (type, component, object checked).
    async fn event(&self, cronjob: &str, type_: &str, reason: &str, message: &str) {
        expect_event(
            &self._cluster.client,
            "default",
            ("CronJob", cronjob),
            (type_, reason, message),
            "cronjob-controller",
        )
        .await;
    }

    async fn active(&self, name: &str) -> Vec<String> {
        let cj = self.cronjobs.get(name).await.unwrap();
        cj.status
            .and_then(|s| s.active)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|r| r.name)
            .collect()
    }
}

fn job_name(cj: &str, t: Timestamp) -> String {
    format!("{cj}-{}", t.as_second() / 60)
}

fn plus(t: Timestamp, secs: i64) -> Timestamp {
    t.checked_add(SignedDuration::from_secs(secs)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cronjob_creates_a_job_per_schedule_time() {
    let f = Fixture::start().await;
    let b1 = f.create("tick", json!({})).await;
    // Before the first schedule time: nothing.
    f.at("tick", plus(b1, -5)).await;
    let b2 = plus(b1, 60);
    f.at("tick", plus(b1, 5)).await;
    let j1 = job_name("tick", b1);
    f.wait_jobs(std::slice::from_ref(&j1)).await;
    let job = f.jobs.get(&j1).await.unwrap();
    let ann = job.metadata.annotations.clone().unwrap();
    assert_eq!(
        ann["batch.kubernetes.io/cronjob-scheduled-timestamp"],
        b1.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
    );
    let r = &job.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!((r.kind.as_str(), r.name.as_str()), ("CronJob", "tick"));
    assert_eq!(
        (r.controller, r.block_owner_deletion),
        (Some(true), Some(true))
    );
    assert_eq!(job.spec.as_ref().unwrap().backoff_limit, Some(0));

    // The next minute: a second job (concurrencyPolicy Allow), both active.
    f.at("tick", plus(b2, 1)).await;
    let j2 = job_name("tick", b2);
    f.wait_jobs(&[j1.clone(), j2.clone()]).await;
    let status = eventually(20, "both active", || async {
        let cj = f.cronjobs.get("tick").await.ok()?;
        let s = cj.status?;
        (s.active.as_ref()?.len() == 2).then_some(s)
    })
    .await;
    assert_eq!(status.last_schedule_time.unwrap().0, b2);
    // Status is written only when it changes.
    let rv = |cj: CronJob| cj.metadata.resource_version;
    let before = rv(f.cronjobs.get("tick").await.unwrap());
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert_eq!(before, rv(f.cronjobs.get("tick").await.unwrap()));

    // A finished job leaves the active list and sets lastSuccessfulTime.
    f.finish_job(&j1, 0).await;
    let status = eventually(20, "j1 no longer active", || async {
        let s = f.cronjobs.get("tick").await.ok()?.status?;
        (f.active("tick").await == [j2.clone()] && s.last_successful_time.is_some()).then_some(s)
    })
    .await;
    let done = f
        .jobs
        .get(&j1)
        .await
        .unwrap()
        .status
        .unwrap()
        .completion_time
        .unwrap();
    assert_eq!(status.last_successful_time.unwrap(), done);
    f.event(
        "tick",
        "Normal",
        "SuccessfulCreate",
        &format!("Created job {j1}"),
    )
    .await;
    f.event(
        "tick",
        "Normal",
        "SuccessfulCreate",
        &format!("Created job {j2}"),
    )
    .await;
    f.event(
        "tick",
        "Normal",
        "SawCompletedJob",
        &format!("Saw completed job: {j1}, condition: Complete"),
    )
    .await;
    let out = f
        ._cluster
        .kubectl_ok(&["describe", "cronjob", "tick"])
        .await;
    assert!(
        out.contains("SawCompletedJob") && out.contains(&format!("Created job {j2}")),
        "{out}"
    );

    // Suspended: no job for the next minute.
    f.cronjobs
        .patch(
            "tick",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"suspend": true}})),
        )
        .await
        .unwrap();
    f.at("tick", plus(b2, 61)).await;
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert_eq!(f.job_names().await, [j1.clone(), j2.clone()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbid_skips_while_a_job_runs_and_replace_replaces_it() {
    let f = Fixture::start().await;
    let b1 = f
        .create("forbid", json!({"concurrencyPolicy": "Forbid"}))
        .await;
    f.at("forbid", plus(b1, 2)).await;
    let j1 = job_name("forbid", b1);
    f.wait_jobs(std::slice::from_ref(&j1)).await;
    let b2 = plus(b1, 60);
    f.at("forbid", plus(b2, 2)).await;
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert_eq!(
        f.job_names().await,
        std::slice::from_ref(&j1),
        "Forbid: no second job"
    );
    f.event(
        "forbid",
        "Normal",
        "JobAlreadyActive",
        "Not starting job because prior execution is running and concurrency policy is Forbid",
    )
    .await;
    // When the running job finishes, the missed time b2 is still due: it starts late.
    f.finish_job(&j1, 0).await;
    let j2 = job_name("forbid", b2);
    f.wait_jobs(&[j1.clone(), j2.clone()]).await;

    let r1 = f
        .create("replace", json!({"concurrencyPolicy": "Replace"}))
        .await;
    f.at("replace", plus(r1, 2)).await;
    let k1 = job_name("replace", r1);
    eventually(20, "replace job 1", || async {
        f.job_names().await.contains(&k1).then_some(())
    })
    .await;
    let r2 = plus(r1, 60);
    f.at("replace", plus(r2, 2)).await;
    let k2 = job_name("replace", r2);
    eventually(30, "job 1 replaced by job 2", || async {
        let names = f.job_names().await;
        (names.contains(&k2) && !names.contains(&k1)).then_some(())
    })
    .await;
    eventually(20, "active is job 2", || async {
        (f.active("replace").await == [k2.clone()]).then_some(())
    })
    .await;
    f.event(
        "replace",
        "Normal",
        "SuccessfulDelete",
        &format!("Deleted job {k1}"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_jobs_beyond_the_history_limits_are_deleted() {
    let f = Fixture::start().await;
    let b = f
        .create(
            "hist",
            json!({"successfulJobsHistoryLimit": 1, "failedJobsHistoryLimit": 1}),
        )
        .await;
    let mut names = Vec::new();
    // Runs at b, b+1m, b+2m, b+3m: succeed, fail, succeed, fail.
    for (i, code) in [0, 1, 0, 1].into_iter().enumerate() {
        let t = plus(b, 60 * i64::try_from(i).unwrap());
        f.at("hist", plus(t, 2)).await;
        let name = job_name("hist", t);
        eventually(20, &format!("job {name}"), || async {
            f.job_names().await.contains(&name).then_some(())
        })
        .await;
        f.finish_job(&name, code).await;
        names.push(name);
    }
    // Newest succeeded (run 3) and newest failed (run 4) are kept.
    f.wait_jobs(&[names[2].clone(), names[3].clone()]).await;
    for n in &names[..2] {
        f.event(
            "hist",
            "Normal",
            "SuccessfulDelete",
            &format!("Deleted job {n}"),
        )
        .await;
    }
    f.event(
        "hist",
        "Normal",
        "SawCompletedJob",
        &format!("Saw completed job: {}, condition: Failed", names[1]),
    )
    .await;
}
