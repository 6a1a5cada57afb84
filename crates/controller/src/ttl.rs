//! The TTL-after-finished controller (upstream's `pkg/controller/ttlafterfinished`): deletes a
//! finished Job (Complete or Failed) `ttlSecondsAfterFinished` seconds after the finishing
//! condition's `lastTransitionTime`, with foreground propagation so that its pods go first.
//! Before deleting it re-reads the Job and deletes with that resourceVersion as a
//! precondition, so a TTL changed in the meantime is honoured.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Preconditions, PropagationPolicy};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use tokio::sync::watch;

use crate::ReconcileError;
use crate::job::finished_condition;
use crate::util::{self, Shared};

pub(crate) async fn run(shared: Arc<Shared>, stop: watch::Receiver<bool>) {
    let controller = Controller::new(
        Api::<Job>::all(shared.client.clone()),
        watcher::Config::default(),
    );
    util::run_controller(
        "ttl-after-finished",
        shared,
        controller,
        stop,
        |job, shared| async move { sync(&job, &shared).await },
    )
    .await;
}

/// Time left before the Job expires: None when it has no TTL, is not finished or is already
/// being deleted; zero when expired.
pub(crate) fn time_left(job: &Job, now: Timestamp) -> Option<Duration> {
    if job.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let ttl = job.spec.as_ref()?.ttl_seconds_after_finished?;
    let finished_at = finished_condition(job)?.last_transition_time.as_ref()?.0;
    if finished_at > now {
        tracing::warn!(
            job = %util::key_of(&job.metadata),
            "found a job finished in the future; likely clock skew, cleanup deferred"
        );
    }
    let expire_at = finished_at
        .checked_add(k8s_openapi::jiff::SignedDuration::from_secs(i64::from(
            ttl.max(0),
        )))
        .ok()?;
    Some(Duration::try_from(expire_at.duration_since(now)).unwrap_or(Duration::ZERO))
}

#[tracing::instrument(skip_all, fields(job = %util::key_of(&cached.metadata)))]
async fn sync(cached: &Job, shared: &Shared) -> Result<Action, ReconcileError> {
    let now = shared.clock.now();
    match time_left(cached, now) {
        None => return Ok(Action::await_change()),
        Some(left) if !left.is_zero() => return Ok(Action::requeue(left)),
        Some(_) => {}
    }
    // The cached TTL may be stale: check again on a fresh read, and delete only that version.
    let ns = cached.metadata.namespace.clone().unwrap_or_default();
    let name = cached.metadata.name.clone().unwrap_or_default();
    let jobs: Api<Job> = Api::namespaced(shared.client.clone(), &ns);
    let Some(fresh) = jobs.get_opt(&name).await? else {
        return Ok(Action::await_change());
    };
    match time_left(&fresh, now) {
        None => return Ok(Action::await_change()),
        Some(left) if !left.is_zero() => return Ok(Action::requeue(left)),
        Some(_) => {}
    }
    let dp = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Foreground),
        preconditions: Some(Preconditions {
            uid: fresh.metadata.uid.clone(),
            resource_version: fresh.metadata.resource_version.clone(),
        }),
        ..DeleteParams::default()
    };
    match jobs.delete(&name, &dp).await {
        Ok(_) => {
            tracing::info!("deleted job whose TTL after finishing expired");
            Ok(Action::await_change())
        }
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(Action::await_change()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ttl_counts_from_the_finishing_condition() {
        let job = |ttl: Option<i32>, cond: &str| -> Job {
            serde_json::from_value(json!({
                "metadata": {"name": "j", "namespace": "d"},
                "spec": {"ttlSecondsAfterFinished": ttl, "template": {}},
                "status": {"conditions": [{"type": cond, "status": "True",
                    "lastTransitionTime": "2026-01-01T00:00:00Z"}]}
            }))
            .unwrap()
        };
        let now: Timestamp = "2026-01-01T00:00:30Z".parse().unwrap();
        assert_eq!(
            time_left(&job(Some(100), "Complete"), now),
            Some(Duration::from_secs(70))
        );
        assert_eq!(
            time_left(&job(Some(10), "Failed"), now),
            Some(Duration::ZERO)
        );
        assert_eq!(time_left(&job(None, "Complete"), now), None);
        assert_eq!(time_left(&job(Some(10), "Suspended"), now), None);
    }
}
