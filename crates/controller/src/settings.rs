//! Settings of the PersistentVolume binder, PodGC and HorizontalPodAutoscaler controllers
//! (flattened into [`crate::Config`]; keys are upstream's kube-controller-manager flag names,
//! durations in seconds).

use serde::{Deserialize, Serialize};

/// PV binder, PodGC and HPA settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", default)]
pub struct LoopConfig {
    /// `--pvclaimbinder-sync-period`: how often unbound claims and volumes are synced again
    /// (15 s).
    pub pvclaimbinder_sync_period: u64,
    /// `--terminated-pod-gc-threshold`: terminated pods kept before PodGC deletes the oldest
    /// (12500; 0 turns that part off).
    pub terminated_pod_gc_threshold: u32,
    /// How often PodGC looks at the pods (upstream's constant `gcCheckPeriod`, 20 s; rk3s
    /// makes it a setting so that tests need not wait).
    pub pod_gc_period: u64,
    /// How long a node must stay missing before PodGC deletes its pods (upstream's constant
    /// `quarantineTime`, 40 s; a setting here for the same reason).
    pub pod_gc_quarantine: u64,
    /// `--horizontal-pod-autoscaler-sync-period` (15 s).
    pub horizontal_pod_autoscaler_sync_period: u64,
    /// `--horizontal-pod-autoscaler-downscale-stabilization` (300 s).
    pub horizontal_pod_autoscaler_downscale_stabilization: u64,
    /// `--horizontal-pod-autoscaler-tolerance`: usage ratios within `1 ± tolerance` do not
    /// scale (0.1).
    pub horizontal_pod_autoscaler_tolerance: f64,
    /// `--horizontal-pod-autoscaler-cpu-initialization-period` (300 s).
    pub horizontal_pod_autoscaler_cpu_initialization_period: u64,
    /// `--horizontal-pod-autoscaler-initial-readiness-delay` (30 s).
    pub horizontal_pod_autoscaler_initial_readiness_delay: u64,
    /// `--legacy-service-account-token-clean-up-period`: how long an auto-generated legacy
    /// token may go unused before it is marked invalid, and then stay invalid before it is
    /// deleted, in seconds (one year).
    pub legacy_service_account_token_clean_up_period: u64,
    /// How often the legacy token cleaner looks at the token Secrets (upstream's
    /// `DefaultCleanerSyncInterval`, 24 h; a setting here so that tests need not wait).
    pub legacy_service_account_token_sync_period: u64,
}

impl Default for LoopConfig {
    fn default() -> Self {
        LoopConfig {
            pvclaimbinder_sync_period: 15,
            terminated_pod_gc_threshold: 12500,
            pod_gc_period: 20,
            pod_gc_quarantine: 40,
            horizontal_pod_autoscaler_sync_period: 15,
            horizontal_pod_autoscaler_downscale_stabilization: 300,
            horizontal_pod_autoscaler_tolerance: 0.1,
            horizontal_pod_autoscaler_cpu_initialization_period: 300,
            horizontal_pod_autoscaler_initial_readiness_delay: 30,
            legacy_service_account_token_clean_up_period: 365 * 24 * 3600,
            legacy_service_account_token_sync_period: 24 * 3600,
        }
    }
}

impl LoopConfig {
    /// Checks the values; touches nothing.
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.pvclaimbinder_sync_period == 0
            || self.pod_gc_period == 0
            || self.horizontal_pod_autoscaler_sync_period == 0
            || self.legacy_service_account_token_clean_up_period == 0
            || self.legacy_service_account_token_sync_period == 0
        {
            return Err(
                "pvclaimbinder-sync-period, pod-gc-period, horizontal-pod-autoscaler-sync-period and the legacy-service-account-token periods must be > 0"
                    .into(),
            );
        }
        if !(self.horizontal_pod_autoscaler_tolerance >= 0.0
            && self.horizontal_pod_autoscaler_tolerance.is_finite())
        {
            return Err("horizontal-pod-autoscaler-tolerance must be >= 0".into());
        }
        Ok(())
    }
}
