//! The controller manager's configuration: serde defaults, validation without side effects.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Every controller this crate runs, by the name `--controllers` uses (upstream's names).
pub const CONTROLLERS: &[&str] = &[
    "replicaset",
    "replicationcontroller",
    "deployment",
    "garbagecollector",
    "endpoints",
    "endpointslice",
    "serviceaccount",
    "statefulset",
    "daemonset",
    "job",
    "cronjob",
    "ttl-after-finished",
    "resourcequota",
    "disruption",
];

/// Configuration of [`crate::run`]. Keys are kebab-case, as the flags of upstream's
/// kube-controller-manager name them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", default)]
pub struct Config {
    /// Controllers to run: `*` (all), a name, or `-name` to leave one out (upstream's syntax).
    pub controllers: Vec<String>,
    /// Take the `kube-system/kube-controller-manager` Lease before running any controller.
    pub leader_elect: bool,
    /// How long a lease holder keeps the lease without renewing it, in seconds.
    pub leader_elect_lease_duration: u64,
    /// How long the leader tries to renew before it gives up leading, in seconds.
    pub leader_elect_renew_deadline: u64,
    /// How often candidates retry and the leader renews, in seconds.
    pub leader_elect_retry_period: u64,
    /// Objects each controller reconciles at once.
    pub concurrent_syncs: u16,
    /// Identity in the Lease (default: host name plus a random suffix).
    pub identity: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            controllers: vec!["*".into()],
            leader_elect: true,
            leader_elect_lease_duration: 15,
            leader_elect_renew_deadline: 10,
            leader_elect_retry_period: 2,
            concurrent_syncs: 5,
            identity: None,
        }
    }
}

/// A configuration that cannot run.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// `controllers` names a controller that does not exist.
    #[error("unknown controller {0:?} (known: {known})", known = CONTROLLERS.join(", "))]
    UnknownController(String),
    /// Lease timings that cannot work.
    #[error(
        "leader election needs lease-duration > renew-deadline > retry-period > 0 (got {lease}s, {renew}s, {retry}s)"
    )]
    LeaseTimings {
        /// `leader-elect-lease-duration`
        lease: u64,
        /// `leader-elect-renew-deadline`
        renew: u64,
        /// `leader-elect-retry-period`
        retry: u64,
    },
    /// `concurrent-syncs` is zero.
    #[error("concurrent-syncs must be at least 1")]
    ZeroConcurrency,
}

impl Config {
    /// Checks the configuration; touches nothing.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for c in &self.controllers {
            let name = c.strip_prefix('-').unwrap_or(c);
            if name != "*" && !CONTROLLERS.contains(&name) {
                return Err(ConfigError::UnknownController(c.clone()));
            }
        }
        let (lease, renew, retry) = (
            self.leader_elect_lease_duration,
            self.leader_elect_renew_deadline,
            self.leader_elect_retry_period,
        );
        if !(lease > renew && renew > retry && retry > 0) {
            return Err(ConfigError::LeaseTimings {
                lease,
                renew,
                retry,
            });
        }
        if self.concurrent_syncs == 0 {
            return Err(ConfigError::ZeroConcurrency);
        }
        Ok(())
    }

    /// Whether controller `name` runs, by upstream's rules: an explicit name or `-name` wins,
    /// otherwise `*` turns everything on.
    pub fn enabled(&self, name: &str) -> bool {
        if self
            .controllers
            .iter()
            .any(|c| c.strip_prefix('-') == Some(name))
        {
            return false;
        }
        self.controllers.iter().any(|c| c == name || c == "*")
    }

    pub(crate) fn lease_duration(&self) -> Duration {
        Duration::from_secs(self.leader_elect_lease_duration)
    }

    pub(crate) fn renew_deadline(&self) -> Duration {
        Duration::from_secs(self.leader_elect_renew_deadline)
    }

    pub(crate) fn retry_period(&self) -> Duration {
        Duration::from_secs(self.leader_elect_retry_period)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_enable_everything() {
        let c = Config::default();
        c.validate().unwrap();
        for name in CONTROLLERS {
            assert!(c.enabled(name), "{name}");
        }
    }

    #[test]
    fn minus_disables_and_unknown_is_refused() {
        let c = Config {
            controllers: vec!["*".into(), "-garbagecollector".into()],
            ..Config::default()
        };
        c.validate().unwrap();
        assert!(!c.enabled("garbagecollector"));
        assert!(c.enabled("deployment"));
        let only = Config {
            controllers: vec!["deployment".into()],
            ..Config::default()
        };
        assert!(only.enabled("deployment") && !only.enabled("replicaset"));
        let bad = Config {
            controllers: vec!["nope".into()],
            ..Config::default()
        };
        assert_eq!(
            bad.validate(),
            Err(ConfigError::UnknownController("nope".into()))
        );
    }

    #[test]
    fn lease_timings_are_checked() {
        let c = Config {
            leader_elect_renew_deadline: 20,
            ..Config::default()
        };
        assert!(matches!(
            c.validate(),
            Err(ConfigError::LeaseTimings { .. })
        ));
    }
}
