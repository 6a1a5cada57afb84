//! Leader election through the `kube-system/kube-controller-manager` Lease, as upstream's
//! client-go `leaderelection` does it: a candidate takes the Lease when it is free or its
//! holder has not renewed it for `leaseDurationSeconds` (measured on the candidate's own clock
//! from when it last saw the record change, so clock skew does not matter), the holder renews
//! every retry period and gives up when it could not renew within the renew deadline.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::Config;

const NAMESPACE: &str = "kube-system";
const NAME: &str = "kube-controller-manager";

/// `<hostname>_<random>`, as upstream builds its identity.
pub(crate) fn default_identity() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "rk3s".into());
    let suffix: u64 = rand::random();
    format!("{host}_{suffix:016x}")
}

/// One process competing for the Lease.
pub(crate) struct Candidate {
    api: Api<Lease>,
    identity: String,
    lease_duration: Duration,
    renew_deadline: Duration,
    retry: Duration,
}

/// The Lease, held: renewed in the background until lost or released.
pub(crate) struct Held {
    lost: watch::Receiver<bool>,
    renewer: tokio::task::JoinHandle<()>,
    api: Api<Lease>,
    identity: String,
}

impl std::fmt::Debug for Candidate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Candidate")
            .field("identity", &self.identity)
            .finish()
    }
}

impl Candidate {
    pub(crate) fn new(client: Client, identity: String, config: &Config) -> Candidate {
        Candidate {
            api: Api::namespaced(client, NAMESPACE),
            identity,
            lease_duration: config.lease_duration(),
            renew_deadline: config.renew_deadline(),
            retry: config.retry_period(),
        }
    }

    /// Waits until this process holds the Lease.
    pub(crate) async fn acquire(self) -> Held {
        let mut observed: Option<(String, Instant)> = None;
        loop {
            match self.try_acquire_or_renew(&mut observed).await {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => tracing::debug!(error = %e, "leader election: cannot reach the Lease"),
            }
            tokio::time::sleep(self.retry).await;
        }
        tracing::info!(identity = %self.identity, lease = NAME, "became leader");
        let (tx, lost) = watch::channel(false);
        let api = self.api.clone();
        let identity = self.identity.clone();
        let renewer = tokio::spawn(async move {
            let mut last_renew = Instant::now();
            loop {
                tokio::time::sleep(self.retry).await;
                let mut o = None;
                match self.try_acquire_or_renew(&mut o).await {
                    Ok(true) => last_renew = Instant::now(),
                    Ok(false) => {
                        let _ = tx.send(true);
                        return;
                    }
                    Err(e) => tracing::warn!(error = %e, "leader election: renewal failed"),
                }
                if last_renew.elapsed() > self.renew_deadline {
                    let _ = tx.send(true);
                    return;
                }
            }
        });
        Held {
            lost,
            renewer,
            api,
            identity,
        }
    }

    /// One attempt. `observed` remembers the last record seen and when, for expiry.
    async fn try_acquire_or_renew(
        &self,
        observed: &mut Option<(String, Instant)>,
    ) -> Result<bool, kube::Error> {
        let now = MicroTime(Timestamp::now());
        let secs = i32::try_from(self.lease_duration.as_secs()).unwrap_or(i32::MAX);
        let Some(mut lease) = self.api.get_opt(NAME).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(NAME.into()),
                    namespace: Some(NAMESPACE.into()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(secs),
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
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let record = format!(
            "{holder}/{:?}",
            spec.renew_time.as_ref().map(|t| t.0.as_millisecond())
        );
        if observed.as_ref().map(|o| &o.0) != Some(&record) {
            *observed = Some((record, Instant::now()));
        }
        let expired = observed
            .as_ref()
            .is_some_and(|(_, at)| at.elapsed() > self.lease_duration);
        let mine = holder == self.identity;
        if !holder.is_empty() && !mine && !expired {
            return Ok(false);
        }
        if !mine {
            spec.acquire_time = Some(now.clone());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            spec.holder_identity = Some(self.identity.clone());
        }
        spec.lease_duration_seconds = Some(secs);
        spec.renew_time = Some(now);
        match self.api.replace(NAME, &PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }
}

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Held")
            .field("identity", &self.identity)
            .finish()
    }
}

impl Held {
    /// Completes when the Lease is lost.
    pub(crate) async fn lost(&self) {
        let mut lost = self.lost.clone();
        let _ = lost.wait_for(|l| *l).await;
    }

    /// Stops renewing and hands the Lease back (empty holder), so that another candidate
    /// takes over without waiting for it to expire.
    pub(crate) async fn release(self) {
        self.renewer.abort();
        if *self.lost.borrow() {
            return;
        }
        if let Ok(Some(mut lease)) = self.api.get_opt(NAME).await {
            let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
            if spec.holder_identity.as_deref() == Some(self.identity.as_str()) {
                spec.holder_identity = None;
                spec.lease_duration_seconds = Some(1);
                let _ = self.api.replace(NAME, &PostParams::default(), &lease).await;
            }
        }
    }
}
