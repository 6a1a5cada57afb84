//! Leader election through a `coordination.k8s.io/v1` Lease, as client-go's `leaderelection`
//! does it, for any component that must run once per cluster (the scheduler's
//! `kube-system/kube-scheduler`, the controller manager's `kube-system/kube-controller-manager`).
//!
//! - A candidate takes the Lease when it does not exist, has no holder, or its holder has not
//!   renewed it for the record's `leaseDurationSeconds`. "Not renewed" is measured on the
//!   candidate's own clock, from when it first saw the current (holder, `renewTime`) record, so
//!   clock skew between machines does not matter. Taking it over sets `acquireTime` and counts
//!   `leaseTransitions`.
//! - The holder renews `renewTime` every retry period ([`LeaderElector::keep`]) and gives
//!   leadership up when another holder wrote the Lease or it could not renew within the renew
//!   deadline.
//! - On shutdown the holder empties `holderIdentity` ([`LeaderElector::release`]) so that the
//!   next candidate need not wait for the Lease to expire.
//!
//! Every write is an update guarded by the read `resourceVersion`, so two candidates racing
//! for the Lease cannot both win: the loser gets a conflict and stays a candidate.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use tokio::time::Instant;

/// Where the Lease is, who competes for it, and how it is timed (upstream's
/// `--leader-elect-*` flags).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// The holder identity this process writes (`<hostname>_<random>` by default).
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

/// `<hostname>_<16 random hex digits>`, as upstream's `<hostname>_<uuid>`: unique per process,
/// and naming the machine that holds a Lease.
pub fn default_identity() -> String {
    let host = hostname::get()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    format!("{host}_{:016x}", rand::random::<u64>())
}

/// The other holder's record as last seen, and since when (on this process' clock).
#[derive(Debug, Clone, PartialEq)]
struct Observed {
    holder: String,
    renew_time: Option<MicroTime>,
    since: Instant,
}

/// Whether this process leads, and when it last renewed its Lease: shared by the elector with
/// a component's health check (`leaderElection`) and metrics (`leader_election_master_status`).
/// Cloning shares it.
#[derive(Debug, Clone, Default)]
pub struct LeaderStatus(Arc<Mutex<Option<Instant>>>);

/// How long past its lease duration a leader may go without renewing before its
/// `leaderElection` check fails (upstream's scheduler and controller manager allow 20 s).
pub const HEALTH_TOLERANCE: Duration = Duration::from_secs(20);

impl LeaderStatus {
    fn set(&self, renewed: Option<Instant>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = renewed;
    }

    fn renewed(&self) -> Option<Instant> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn is_leader(&self) -> bool {
        self.renewed().is_some()
    }

    /// The `leaderElection` health check, as upstream's: healthy unless this process leads
    /// and has not renewed `lease` for its duration plus `tolerance`.
    pub fn check(&self, lease: &LeaseConfig, tolerance: Duration) -> Result<(), String> {
        match self.renewed() {
            Some(at) if at.elapsed() > lease.lease_duration + tolerance => Err(format!(
                "failed election to renew leadership on lease {}",
                lease.name
            )),
            _ => Ok(()),
        }
    }
}

/// One candidate for one Lease.
#[derive(Debug)]
pub struct LeaderElector {
    api: Api<Lease>,
    config: LeaseConfig,
    observed: Option<Observed>,
    status: LeaderStatus,
}

impl LeaderElector {
    pub fn new(client: kube::Client, config: LeaseConfig) -> LeaderElector {
        LeaderElector {
            api: Api::namespaced(client, &config.namespace),
            config,
            observed: None,
            status: LeaderStatus::default(),
        }
    }

    /// Reports into `status` (shared with health checks and metrics).
    pub fn with_status(mut self, status: LeaderStatus) -> LeaderElector {
        self.status = status;
        self
    }

    pub fn status(&self) -> &LeaderStatus {
        &self.status
    }

    pub fn identity(&self) -> &str {
        &self.config.identity
    }

    pub fn config(&self) -> &LeaseConfig {
        &self.config
    }

    /// Returns once this candidate holds the Lease (trying every retry period; errors of the
    /// API are logged and retried). Cancel-safe: drop it to stop campaigning.
    pub async fn acquire(&mut self) {
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => {
                    tracing::info!(
                        identity = %self.config.identity,
                        lease = %format_args!("{}/{}", self.config.namespace, self.config.name),
                        "acquired the lease"
                    );
                    return;
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(
                    error = %e,
                    lease = %self.config.name,
                    "leader election: cannot read or write the lease"
                ),
            }
            tokio::time::sleep(self.config.retry_period).await;
        }
    }

    /// Renews every retry period; returns when leadership is lost: another holder wrote the
    /// Lease, or it could not be renewed within the renew deadline.
    pub async fn keep(&mut self) {
        let mut last_renew = Instant::now();
        loop {
            tokio::time::sleep(self.config.retry_period).await;
            match self.try_acquire_or_renew().await {
                Ok(true) => last_renew = Instant::now(),
                Ok(false) => {
                    tracing::warn!(lease = %self.config.name, "another holder took the lease");
                    self.status.set(None);
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, lease = %self.config.name, "renewing the lease failed");
                    if last_renew.elapsed() >= self.config.renew_deadline {
                        self.status.set(None);
                        return;
                    }
                }
            }
        }
    }

    /// Gives the Lease up (empty holder, a one-second duration) if this candidate holds it, so
    /// that another candidate need not wait for it to expire.
    pub async fn release(&mut self) {
        self.status.set(None);
        let mut lease = match self.api.get_opt(&self.config.name).await {
            Ok(Some(lease)) => lease,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, lease = %self.config.name, "releasing the lease failed");
                return;
            }
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return;
        }
        let now = MicroTime(Timestamp::now());
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(now.clone());
        spec.acquire_time = Some(now);
        if let Err(e) = self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            tracing::warn!(error = %e, lease = %self.config.name, "releasing the lease failed");
        }
    }

    /// One round: create, take over or renew the Lease if this candidate may. `Ok(true)` if it
    /// holds the Lease afterwards; `Ok(false)` if another holder has it (or won a race).
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool, kube::Error> {
        let held = self.round().await;
        match held {
            Ok(true) => self.status.set(Some(Instant::now())),
            Ok(false) => self.status.set(None),
            // Unknown: a leader stays one until its renew deadline (`keep`).
            Err(_) => {}
        }
        held
    }

    async fn round(&mut self) -> Result<bool, kube::Error> {
        let now = MicroTime(Timestamp::now());
        let duration = seconds(self.config.lease_duration);
        let Some(mut lease) = self.api.get_opt(&self.config.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.name.clone()),
                    namespace: Some(self.config.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.config.identity.clone()),
                    lease_duration_seconds: Some(duration),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        let ours = match decide(spec, &self.config, &mut self.observed, Instant::now()) {
            Decision::Wait => return Ok(false),
            Decision::Renew => true,
            Decision::Take => false,
        };
        if !ours {
            spec.acquire_time = Some(now.clone());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            spec.holder_identity = Some(self.config.identity.clone());
        }
        spec.lease_duration_seconds = Some(duration);
        spec.renew_time = Some(now);
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }
}

fn seconds(d: Duration) -> i32 {
    i32::try_from(d.as_secs()).unwrap_or(i32::MAX)
}

/// What one round does with an existing Lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decision {
    /// We hold it: renew.
    Renew,
    /// Free, or its holder let it expire: take it over.
    Take,
    /// Another holder's, still valid: leave it.
    Wait,
}

/// The pure part of a round: `observed` remembers the other holder's record and since when it
/// is unchanged; the record expires `leaseDurationSeconds` (the record's own, else ours) after
/// it was first seen.
fn decide(
    spec: &LeaseSpec,
    config: &LeaseConfig,
    observed: &mut Option<Observed>,
    now: Instant,
) -> Decision {
    let holder = spec.holder_identity.clone().unwrap_or_default();
    if holder.is_empty() {
        *observed = None;
        return Decision::Take;
    }
    if holder == config.identity {
        *observed = None;
        return Decision::Renew;
    }
    let same = observed
        .as_ref()
        .is_some_and(|o| o.holder == holder && o.renew_time == spec.renew_time);
    if !same {
        *observed = Some(Observed {
            holder,
            renew_time: spec.renew_time.clone(),
            since: now,
        });
    }
    let since = observed.as_ref().map_or(now, |o| o.since);
    let their_duration = spec
        .lease_duration_seconds
        .and_then(|s| u64::try_from(s).ok())
        .map(Duration::from_secs)
        .unwrap_or(config.lease_duration);
    if now.saturating_duration_since(since) >= their_duration {
        Decision::Take
    } else {
        Decision::Wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(identity: &str) -> LeaseConfig {
        LeaseConfig {
            namespace: "kube-system".into(),
            name: "kube-scheduler".into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }

    fn spec(holder: Option<&str>, renew_ms: i64, duration: Option<i32>) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(String::from),
            renew_time: Some(MicroTime(Timestamp::from_millisecond(renew_ms).unwrap())),
            lease_duration_seconds: duration,
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn free_lease_is_taken_and_own_lease_renewed() {
        let mut o = None;
        let t0 = Instant::now();
        assert_eq!(
            decide(&spec(None, 0, Some(15)), &config("me"), &mut o, t0),
            Decision::Take
        );
        assert_eq!(
            decide(&spec(Some(""), 0, Some(15)), &config("me"), &mut o, t0),
            Decision::Take,
            "an empty holder (a released lease) is free"
        );
        assert_eq!(
            decide(&spec(Some("me"), 0, Some(15)), &config("me"), &mut o, t0),
            Decision::Renew
        );
        assert_eq!(o, None);
    }

    #[test]
    fn another_holder_expires_a_lease_duration_after_its_record_was_first_seen() {
        let c = config("me");
        let mut o = None;
        let t0 = Instant::now();
        let theirs = spec(Some("other"), 1_000, Some(15));
        assert_eq!(decide(&theirs, &c, &mut o, t0), Decision::Wait);
        assert_eq!(
            decide(&theirs, &c, &mut o, t0 + Duration::from_secs(14)),
            Decision::Wait
        );
        assert_eq!(
            decide(&theirs, &c, &mut o, t0 + Duration::from_secs(15)),
            Decision::Take
        );
    }

    #[test]
    fn a_renewal_restarts_the_clock_whatever_the_timestamps_say() {
        let c = config("me");
        let mut o = None;
        let t0 = Instant::now();
        // The holder's clock is far behind ours: its renew times mean nothing to us, only
        // that they change.
        assert_eq!(
            decide(&spec(Some("other"), 5, Some(15)), &c, &mut o, t0),
            Decision::Wait
        );
        let renewed = spec(Some("other"), 6, Some(15));
        assert_eq!(
            decide(&renewed, &c, &mut o, t0 + Duration::from_secs(10)),
            Decision::Wait
        );
        assert_eq!(
            decide(&renewed, &c, &mut o, t0 + Duration::from_secs(20)),
            Decision::Wait,
            "15 s from the renewal, not from the first sighting"
        );
        assert_eq!(
            decide(&renewed, &c, &mut o, t0 + Duration::from_secs(25)),
            Decision::Take
        );
    }

    #[test]
    fn the_records_own_duration_counts() {
        let c = config("me");
        let mut o = None;
        let t0 = Instant::now();
        // A released lease (duration 1 s) whose holder field was not emptied, or a holder with
        // a shorter duration than ours.
        let short = spec(Some("other"), 1, Some(1));
        assert_eq!(decide(&short, &c, &mut o, t0), Decision::Wait);
        assert_eq!(
            decide(&short, &c, &mut o, t0 + Duration::from_secs(1)),
            Decision::Take
        );
        // No duration in the record: ours.
        let mut o = None;
        let none = spec(Some("other"), 1, None);
        assert_eq!(
            decide(&none, &c, &mut o, t0 + Duration::from_secs(1)),
            Decision::Wait
        );
        assert_eq!(
            decide(&none, &c, &mut o, t0 + Duration::from_secs(16)),
            Decision::Take
        );
    }

    #[test]
    fn identity_names_the_host_and_differs_per_process() {
        let a = default_identity();
        let b = default_identity();
        assert_ne!(a, b);
        let (host, suffix) = a.rsplit_once('_').unwrap();
        assert!(!host.is_empty());
        assert_eq!(suffix.len(), 16);
        assert!(suffix.chars().all(|c| c.is_ascii_hexdigit()));
    }
}
