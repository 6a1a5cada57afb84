//! Scheduler configuration: serde with defaults (kebab-case keys, like the flags), validated
//! without side effects.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::Error;

/// What `rk3s-scheduler` is configured with. Every field has upstream's default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct Config {
    /// Pods whose `spec.schedulerName` is this are ours.
    pub scheduler_name: String,
    /// Take a Lease before scheduling, so that several schedulers can run safely.
    pub leader_elect: bool,
    pub leader_elect_resource_namespace: String,
    pub leader_elect_resource_name: String,
    pub leader_elect_lease_duration_seconds: u64,
    pub leader_elect_renew_deadline_seconds: u64,
    pub leader_elect_retry_period_seconds: u64,
    /// Lease holder identity; default `<hostname>_<random>`.
    pub leader_elect_identity: Option<String>,
    /// Share of nodes to find feasible before scoring; 0 = upstream's adaptive default
    /// (all nodes up to 100, then 50% − nodes/125, at least 5%).
    pub percentage_of_nodes_to_score: u32,
    /// Bindings in flight at once.
    pub parallel_binds: usize,
    pub pod_initial_backoff_seconds: u64,
    pub pod_max_backoff_seconds: u64,
    /// How long PreBind waits for the PV controller to bind a pod's claims (upstream's
    /// VolumeBinding `bindTimeoutSeconds`).
    pub bind_timeout_seconds: u64,
    /// HTTPS port of `/healthz`, `/livez`, `/readyz` and `/metrics` (upstream's 10259); 0:
    /// not served.
    pub secure_port: u16,
    /// Address the secure port listens on (127.0.0.1, as K3s sets it).
    pub bind_address: IpAddr,
    /// The secure port's certificate (PEM); unset: a self-signed one made at start.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_private_key_file: Option<PathBuf>,
}

/// kube-scheduler's secure port.
pub const DEFAULT_SECURE_PORT: u16 = 10259;

impl Default for Config {
    fn default() -> Config {
        Config {
            scheduler_name: "default-scheduler".into(),
            leader_elect: true,
            leader_elect_resource_namespace: "kube-system".into(),
            leader_elect_resource_name: "kube-scheduler".into(),
            leader_elect_lease_duration_seconds: 15,
            leader_elect_renew_deadline_seconds: 10,
            leader_elect_retry_period_seconds: 2,
            leader_elect_identity: None,
            percentage_of_nodes_to_score: 0,
            parallel_binds: 64,
            pod_initial_backoff_seconds: 1,
            pod_max_backoff_seconds: 10,
            bind_timeout_seconds: 600,
            secure_port: DEFAULT_SECURE_PORT,
            bind_address: IpAddr::V4(Ipv4Addr::LOCALHOST),
            tls_cert_file: None,
            tls_private_key_file: None,
        }
    }
}

impl Config {
    /// The Lease of `leader-elect-resource-namespace/-name`, timed by the `leader-elect-*`
    /// keys, held as `leader-elect-identity` (default `<hostname>_<random>`).
    pub fn lease_config(&self) -> rk3s_common::leader::LeaseConfig {
        rk3s_common::leader::LeaseConfig {
            namespace: self.leader_elect_resource_namespace.clone(),
            name: self.leader_elect_resource_name.clone(),
            identity: self
                .leader_elect_identity
                .clone()
                .unwrap_or_else(rk3s_common::leader::default_identity),
            lease_duration: std::time::Duration::from_secs(
                self.leader_elect_lease_duration_seconds,
            ),
            renew_deadline: std::time::Duration::from_secs(
                self.leader_elect_renew_deadline_seconds,
            ),
            retry_period: std::time::Duration::from_secs(self.leader_elect_retry_period_seconds),
        }
    }

    /// The secure port's settings.
    pub fn serving(&self) -> rk3s_common::serving::ServingConfig {
        rk3s_common::serving::ServingConfig {
            bind_address: self.bind_address,
            secure_port: self.secure_port,
            tls_cert_file: self.tls_cert_file.clone(),
            tls_private_key_file: self.tls_private_key_file.clone(),
        }
    }

    pub fn validate(&self) -> Result<(), Error> {
        let bad = |m: &str| Err(Error::Config(m.to_string()));
        self.serving().validate().map_err(Error::Config)?;
        if self.scheduler_name.is_empty() {
            return bad("scheduler-name must not be empty");
        }
        if self.percentage_of_nodes_to_score > 100 {
            return bad("percentage-of-nodes-to-score must be between 0 and 100");
        }
        if self.parallel_binds == 0 {
            return bad("parallel-binds must be at least 1");
        }
        if self.pod_initial_backoff_seconds == 0
            || self.pod_initial_backoff_seconds > self.pod_max_backoff_seconds
        {
            return bad(
                "pod-initial-backoff-seconds must be positive and at most pod-max-backoff-seconds",
            );
        }
        if self.bind_timeout_seconds == 0 {
            return bad("bind-timeout-seconds must be positive");
        }
        if self.leader_elect {
            if self.leader_elect_retry_period_seconds == 0
                || self.leader_elect_retry_period_seconds
                    >= self.leader_elect_renew_deadline_seconds
                || self.leader_elect_renew_deadline_seconds
                    >= self.leader_elect_lease_duration_seconds
            {
                return bad(
                    "leader election needs 0 < retry-period < renew-deadline < lease-duration",
                );
            }
            if self.leader_elect_resource_name.is_empty()
                || self.leader_elect_resource_namespace.is_empty()
            {
                return bad("leader-elect-resource-name and -namespace must not be empty");
            }
        }
        Ok(())
    }

    /// How many feasible nodes to find before scoring, out of `all` (upstream's
    /// `numFeasibleNodesToFind`).
    pub fn nodes_to_find(&self, all: usize) -> usize {
        const MIN_FEASIBLE: usize = 100;
        const MIN_PERCENT: usize = 5;
        if all < MIN_FEASIBLE {
            return all;
        }
        let mut pct = self.percentage_of_nodes_to_score as usize;
        if pct == 0 {
            pct = 50usize.saturating_sub(all / 125).max(MIN_PERCENT);
        }
        if pct >= 100 {
            return all;
        }
        (all * pct / 100).max(MIN_FEASIBLE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_bad_values_do_not() {
        Config::default().validate().unwrap();
        let c = Config {
            percentage_of_nodes_to_score: 101,
            ..Config::default()
        };
        assert!(c.validate().is_err());
        let c = Config {
            leader_elect_renew_deadline_seconds: 20,
            ..Config::default()
        };
        assert!(c.validate().is_err());
        let c: Config = serde_json::from_str(r#"{"scheduler-name": "mine"}"#).unwrap();
        assert_eq!(c.scheduler_name, "mine");
        assert!(c.leader_elect);
        assert_eq!(
            (c.secure_port, c.bind_address.to_string().as_str()),
            (10259, "127.0.0.1")
        );
        let c: Config =
            serde_json::from_str(r#"{"secure-port": 0, "bind-address": "0.0.0.0"}"#).unwrap();
        assert_eq!(c.serving().secure_port, 0);
        assert!(c.bind_address.is_unspecified());
        let c = Config {
            tls_cert_file: Some("/x.crt".into()),
            ..Config::default()
        };
        assert!(c.validate().is_err());
    }

    #[test]
    fn adaptive_sampling_like_upstream() {
        let c = Config::default();
        assert_eq!(c.nodes_to_find(50), 50);
        assert_eq!(c.nodes_to_find(1000), 420);
        assert_eq!(c.nodes_to_find(5000), 500);
        assert_eq!(c.nodes_to_find(100_000), 5000);
        let all = Config {
            percentage_of_nodes_to_score: 100,
            ..Config::default()
        };
        assert_eq!(all.nodes_to_find(5000), 5000);
    }
}
