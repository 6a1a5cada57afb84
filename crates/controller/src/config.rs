//! The controller manager's configuration: serde defaults, validation without side effects.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
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
    "namespace",
    "nodelifecycle",
    "taint-eviction-controller",
    "nodeipam",
    "csrapproving",
    "csrsigning",
    "persistentvolume-binder",
    "pvc-protection",
    "pv-protection",
    "pod-garbage-collector",
    "horizontal-pod-autoscaling",
    "tokencleaner",
    "nodepassword",
    "serviceaccount-token",
    "legacy-serviceaccount-token-cleaner",
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
    /// Run each controller loop as its own service account (`kube-system/<account>`, see
    /// [`crate::account_of`]) with a token from the TokenRequest API, instead of on the
    /// manager's identity (upstream's flag; off by default, `rk3s server` turns it on as K3s
    /// does).
    pub use_service_account_credentials: bool,
    /// `--service-account-private-key-file`: the PEM key (ECDSA P-256, the apiserver's
    /// `server/tls/service.key`) the `serviceaccount-token` controller signs legacy
    /// Secret-based tokens with. Unset: that controller does not run (as upstream).
    pub service_account_private_key_file: Option<PathBuf>,
    /// `--root-ca-file`: the CA bundle put in token Secrets as `ca.crt` (K3s:
    /// `server/tls/server-ca.crt`).
    pub root_ca_file: Option<PathBuf>,
    /// HTTPS port of `/healthz`, `/livez`, `/readyz` and `/metrics` (upstream's 10257); 0:
    /// not served.
    pub secure_port: u16,
    /// Address the secure port listens on (127.0.0.1, as K3s sets it).
    pub bind_address: IpAddr,
    /// The secure port's certificate (PEM); unset: a self-signed one made at start.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_private_key_file: Option<PathBuf>,
    /// Node lifecycle, node IPAM and CSR signing settings (upstream's flag names).
    #[serde(flatten)]
    pub nodes: NodeConfig,
    /// PV binder, PodGC and HPA settings (upstream's flag names).
    #[serde(flatten)]
    pub loops: crate::settings::LoopConfig,
}

/// Settings of the node lifecycle, node IPAM and CSR controllers, named as upstream's
/// kube-controller-manager flags (durations in seconds).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", default)]
pub struct NodeConfig {
    /// How often node health is checked, in seconds.
    pub node_monitor_period: u64,
    /// How long a node may go without a heartbeat (Lease renewal or Ready condition
    /// heartbeat) before it is marked `Ready=Unknown`, in seconds.
    pub node_monitor_grace_period: u64,
    /// Nodes tainted for eviction per second in a healthy zone.
    pub node_eviction_rate: f64,
    /// Nodes tainted for eviction per second in a partially disrupted zone of a large cluster.
    pub secondary_node_eviction_rate: f64,
    /// Fraction of not-ready nodes (at least 3) at which a zone counts as partially disrupted.
    pub unhealthy_zone_threshold: f64,
    /// Zones with at most this many nodes stop evicting when partially disrupted.
    pub large_cluster_size_threshold: u32,
    /// Whether the node IPAM controller gives nodes a pod CIDR.
    pub allocate_node_cidrs: bool,
    /// The pod network, one CIDR or an IPv4 and an IPv6 CIDR separated by a comma.
    pub cluster_cidr: String,
    /// Prefix length of each node's IPv4 pod CIDR.
    pub node_cidr_mask_size_ipv4: u8,
    /// Prefix length of each node's IPv6 pod CIDR.
    pub node_cidr_mask_size_ipv6: u8,
    /// CA certificate (PEM) the CSR signer signs with, for every signer without its own.
    pub cluster_signing_cert_file: Option<PathBuf>,
    /// Its private key (PEM).
    pub cluster_signing_key_file: Option<PathBuf>,
    /// CA for `kubernetes.io/kubelet-serving`.
    pub cluster_signing_kubelet_serving_cert_file: Option<PathBuf>,
    /// Its private key.
    pub cluster_signing_kubelet_serving_key_file: Option<PathBuf>,
    /// CA for `kubernetes.io/kube-apiserver-client-kubelet`.
    pub cluster_signing_kubelet_client_cert_file: Option<PathBuf>,
    /// Its private key.
    pub cluster_signing_kubelet_client_key_file: Option<PathBuf>,
    /// CA for `kubernetes.io/kube-apiserver-client`.
    pub cluster_signing_kube_apiserver_client_cert_file: Option<PathBuf>,
    /// Its private key.
    pub cluster_signing_kube_apiserver_client_key_file: Option<PathBuf>,
    /// CA for `kubernetes.io/legacy-unknown`.
    pub cluster_signing_legacy_unknown_cert_file: Option<PathBuf>,
    /// Its private key.
    pub cluster_signing_legacy_unknown_key_file: Option<PathBuf>,
    /// Longest validity of a signed certificate, in seconds (a CSR's `expirationSeconds` may
    /// ask for less).
    pub cluster_signing_duration: u64,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            node_monitor_period: 5,
            node_monitor_grace_period: 40,
            node_eviction_rate: 0.1,
            secondary_node_eviction_rate: 0.01,
            unhealthy_zone_threshold: 0.55,
            large_cluster_size_threshold: 50,
            allocate_node_cidrs: true,
            cluster_cidr: "10.42.0.0/16".into(),
            node_cidr_mask_size_ipv4: 24,
            node_cidr_mask_size_ipv6: 64,
            cluster_signing_cert_file: None,
            cluster_signing_key_file: None,
            cluster_signing_kubelet_serving_cert_file: None,
            cluster_signing_kubelet_serving_key_file: None,
            cluster_signing_kubelet_client_cert_file: None,
            cluster_signing_kubelet_client_key_file: None,
            cluster_signing_kube_apiserver_client_cert_file: None,
            cluster_signing_kube_apiserver_client_key_file: None,
            cluster_signing_legacy_unknown_cert_file: None,
            cluster_signing_legacy_unknown_key_file: None,
            cluster_signing_duration: 365 * 24 * 3600,
        }
    }
}

/// kube-controller-manager's secure port.
pub const DEFAULT_SECURE_PORT: u16 = 10257;

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
            use_service_account_credentials: false,
            service_account_private_key_file: None,
            root_ca_file: None,
            secure_port: DEFAULT_SECURE_PORT,
            bind_address: IpAddr::V4(Ipv4Addr::LOCALHOST),
            tls_cert_file: None,
            tls_private_key_file: None,
            nodes: NodeConfig::default(),
            loops: crate::settings::LoopConfig::default(),
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
    /// A node controller setting that cannot work.
    #[error("{0}")]
    Nodes(String),
    /// The secure port's settings do not go together.
    #[error("{0}")]
    Serving(String),
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
        self.serving().validate().map_err(ConfigError::Serving)?;
        self.nodes.validate().map_err(ConfigError::Nodes)?;
        self.loops.validate().map_err(ConfigError::Nodes)
    }
}

impl NodeConfig {
    fn validate(&self) -> Result<(), String> {
        if self.node_monitor_period == 0 || self.node_monitor_grace_period == 0 {
            return Err("node-monitor-period and node-monitor-grace-period must be > 0".into());
        }
        if !(self.node_eviction_rate >= 0.0 && self.secondary_node_eviction_rate >= 0.0) {
            return Err("node eviction rates must be >= 0".into());
        }
        if !(self.unhealthy_zone_threshold > 0.0 && self.unhealthy_zone_threshold <= 1.0) {
            return Err("unhealthy-zone-threshold must be in (0, 1]".into());
        }
        if self.allocate_node_cidrs {
            crate::nodeipam::ClusterCidrs::parse(
                &self.cluster_cidr,
                self.node_cidr_mask_size_ipv4,
                self.node_cidr_mask_size_ipv6,
            )?;
        }
        let pairs = [
            (
                "cluster-signing",
                &self.cluster_signing_cert_file,
                &self.cluster_signing_key_file,
            ),
            (
                "cluster-signing-kubelet-serving",
                &self.cluster_signing_kubelet_serving_cert_file,
                &self.cluster_signing_kubelet_serving_key_file,
            ),
            (
                "cluster-signing-kubelet-client",
                &self.cluster_signing_kubelet_client_cert_file,
                &self.cluster_signing_kubelet_client_key_file,
            ),
            (
                "cluster-signing-kube-apiserver-client",
                &self.cluster_signing_kube_apiserver_client_cert_file,
                &self.cluster_signing_kube_apiserver_client_key_file,
            ),
            (
                "cluster-signing-legacy-unknown",
                &self.cluster_signing_legacy_unknown_cert_file,
                &self.cluster_signing_legacy_unknown_key_file,
            ),
        ];
        for (name, cert, key) in pairs {
            if cert.is_some() != key.is_some() {
                return Err(format!("{name}-cert-file and {name}-key-file go together"));
            }
        }
        if self.cluster_signing_duration == 0 {
            return Err("cluster-signing-duration must be > 0".into());
        }
        Ok(())
    }
}

impl Config {
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

    /// The secure port's settings.
    pub fn serving(&self) -> rk3s_common::serving::ServingConfig {
        rk3s_common::serving::ServingConfig {
            bind_address: self.bind_address,
            secure_port: self.secure_port,
            tls_cert_file: self.tls_cert_file.clone(),
            tls_private_key_file: self.tls_private_key_file.clone(),
        }
    }

    /// The `kube-system/kube-controller-manager` Lease, timed by the `leader-elect-*` keys,
    /// held as `identity`.
    pub(crate) fn lease_config(&self, identity: String) -> rk3s_common::leader::LeaseConfig {
        rk3s_common::leader::LeaseConfig {
            namespace: "kube-system".into(),
            name: "kube-controller-manager".into(),
            identity,
            lease_duration: Duration::from_secs(self.leader_elect_lease_duration),
            renew_deadline: Duration::from_secs(self.leader_elect_renew_deadline),
            retry_period: Duration::from_secs(self.leader_elect_retry_period),
        }
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
