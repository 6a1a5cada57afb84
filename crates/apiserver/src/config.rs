//! [`Config`]: the apiserver's settings, with the names of the K3s flags.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Configuration of the apiserver. The datastore settings (`data-dir`, `datastore-endpoint`,
/// ...) are flattened in, so one YAML file or flag set configures both.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case", default)]
pub struct Config {
    /// Address the HTTPS listener binds (default 127.0.0.1).
    pub bind_address: IpAddr,
    /// Port of the HTTPS listener.
    pub https_listen_port: u16,
    /// The range Service cluster IPs come from (IPv4).
    pub service_cidr: String,
    /// This node's name: a SAN of the serving certificate.
    pub node_name: Option<String>,
    /// `--tls-san`: extra names or addresses of the serving certificate.
    pub tls_san: Vec<String>,
    /// `--token-auth-file`: static bearer tokens (CSV: `token,user,uid,"group1,group2"`).
    pub token_auth_file: Option<PathBuf>,
    /// `--token`: the join token (either K3s form); default: `<data-dir>/server/token`,
    /// created on first start.
    pub token: Option<String>,
    /// `--service-account-issuer`.
    pub service_account_issuer: String,
    /// `--api-audiences` (default: the issuer).
    pub api_audiences: Vec<String>,
    /// `--requestheader-allowed-names`: CNs a front proxy's certificate (signed by
    /// `server/tls/request-header-ca.crt`) may have; empty: any (default: `system:auth-proxy`).
    pub requestheader_allowed_names: Vec<String>,
    /// Keep the `rk3s:kube-controller-manager` union role bound to
    /// `system:kube-controller-manager` (for an rk3s-controller without
    /// `--use-service-account-credentials`; see [`crate::AuthConfig`]). Default on.
    pub controller_manager_union_role: bool,
    /// `--encryption-provider-config`: upstream's `EncryptionConfiguration` file; the
    /// resources it lists are encrypted at rest. Unset: nothing is encrypted.
    pub encryption_provider_config: Option<PathBuf>,
    /// `--audit-policy-file`: upstream's audit `Policy`; with `audit-log-path`, turns the
    /// audit log on.
    pub audit_policy_file: Option<PathBuf>,
    /// `--audit-log-path` (`-`: standard output).
    pub audit_log_path: Option<PathBuf>,
    /// `--audit-log-maxage`: days to keep rotated audit logs (0: no limit).
    pub audit_log_maxage: u64,
    /// `--audit-log-maxbackup`: rotated audit logs to keep (0: no limit).
    pub audit_log_maxbackup: usize,
    /// `--audit-log-maxsize`: megabytes before the audit log is rotated (0: never).
    pub audit_log_maxsize: u64,
    /// The datastore, including `data-dir`.
    #[serde(flatten)]
    pub datastore: rk3s_datastore::Config,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            bind_address: IpAddr::V4(Ipv4Addr::LOCALHOST),
            https_listen_port: 6443,
            service_cidr: "10.43.0.0/16".into(),
            node_name: None,
            tls_san: Vec::new(),
            token_auth_file: None,
            token: None,
            service_account_issuer: crate::auth::DEFAULT_ISSUER.into(),
            api_audiences: Vec::new(),
            requestheader_allowed_names: vec!["system:auth-proxy".into()],
            controller_manager_union_role: true,
            encryption_provider_config: None,
            audit_policy_file: None,
            audit_log_path: None,
            audit_log_maxage: 0,
            audit_log_maxbackup: 0,
            audit_log_maxsize: 0,
            datastore: rk3s_datastore::Config::default(),
        }
    }
}

impl Config {
    /// Where rk3s keeps its state.
    pub fn data_dir(&self) -> &Path {
        &self.datastore.data_dir
    }

    /// Where the serving certificate and its CA live: `<data-dir>/server/tls`.
    pub fn tls_dir(&self) -> PathBuf {
        self.data_dir().join("server").join("tls")
    }

    /// Where the server's own state lives: `<data-dir>/server` (the join token file).
    pub fn server_dir(&self) -> PathBuf {
        self.data_dir().join("server")
    }

    /// Where the components' kubeconfigs are written: `<data-dir>/server/cred`.
    pub fn cred_dir(&self) -> PathBuf {
        self.data_dir().join("server").join("cred")
    }

    /// What the serving certificate must cover.
    pub fn pki_options(&self, service_cidr: &crate::ServiceCidr) -> crate::PkiOptions {
        crate::PkiOptions {
            node_name: self.node_name.clone(),
            node_ips: vec![self.bind_address],
            tls_sans: self.tls_san.clone(),
            service_ip: IpAddr::V4(service_cidr.first()),
        }
    }

    /// The authentication settings.
    pub fn auth_config(&self) -> Result<crate::AuthConfig> {
        if self.service_account_issuer.is_empty() {
            return Err(Error::InvalidConfig(
                "service-account-issuer: must not be empty".into(),
            ));
        }
        Ok(crate::AuthConfig {
            token_auth_file: self.token_auth_file.clone(),
            service_account_issuer: self.service_account_issuer.clone(),
            api_audiences: self.api_audiences.clone(),
            requestheader_allowed_names: self.requestheader_allowed_names.clone(),
            controller_manager_union_role: self.controller_manager_union_role,
        })
    }

    /// The encryption at rest of `--encryption-provider-config` (identity when unset).
    pub fn encryption(&self) -> Result<crate::Transformer> {
        match &self.encryption_provider_config {
            None => Ok(crate::Transformer::identity()),
            Some(path) => crate::Transformer::from_file(path)
                .map_err(|e| Error::InvalidConfig(format!("encryption-provider-config: {e}"))),
        }
    }

    /// The audit settings.
    pub fn audit_config(&self) -> crate::audit::AuditConfig {
        crate::audit::AuditConfig {
            policy_file: self.audit_policy_file.clone(),
            log_path: self.audit_log_path.clone(),
            max_age_days: self.audit_log_maxage,
            max_backups: self.audit_log_maxbackup,
            max_size_mb: self.audit_log_maxsize,
        }
    }

    /// The socket address to listen on.
    pub fn listen_addr(&self) -> SocketAddr {
        SocketAddr::new(self.bind_address, self.https_listen_port)
    }

    /// Checks the values without touching anything.
    pub fn validate(&self) -> Result<()> {
        self.datastore
            .validate()
            .map_err(|e| Error::InvalidConfig(e.to_string()))?;
        self.service_cidr
            .parse::<crate::services::ServiceCidr>()
            .map_err(|e| Error::InvalidConfig(format!("service-cidr: {e}")))?;
        if self.data_dir().as_os_str().is_empty() {
            return Err(Error::InvalidConfig("data-dir: must not be empty".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_k3s_defaults() {
        let c = Config::default();
        assert_eq!(c.listen_addr().to_string(), "127.0.0.1:6443");
        assert_eq!(c.data_dir(), Path::new("/var/lib/rk3s"));
        assert_eq!(c.tls_dir(), Path::new("/var/lib/rk3s/server/tls"));
        c.validate().expect("defaults are valid");
    }

    #[test]
    fn reads_kebab_case_with_datastore_flattened() {
        let c: Config = serde_json::from_value(serde_json::json!({
            "bind-address": "0.0.0.0",
            "https-listen-port": 7443,
            "data-dir": "/tmp/x",
            "datastore-endpoint": "sqlite:///tmp/x/state.db",
        }))
        .expect("config parses");
        assert_eq!(c.listen_addr().to_string(), "0.0.0.0:7443");
        assert_eq!(c.data_dir(), Path::new("/tmp/x"));
        assert_eq!(
            c.datastore.datastore_endpoint.as_deref(),
            Some("sqlite:///tmp/x/state.db")
        );
    }

    #[test]
    fn keys_of_other_components_are_ignored() {
        // One K3s-style config file configures every component.
        let c: Config = serde_json::from_value(serde_json::json!({
            "node-name": "n1",
            "cluster-cidr": "10.42.0.0/16",
            "service-cidr": "10.45.0.0/16",
        }))
        .expect("config parses");
        assert_eq!(c.service_cidr, "10.45.0.0/16");
        let bad = Config {
            service_cidr: "10.45.0.0".into(),
            ..Config::default()
        };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn validation_reports_datastore_errors() {
        let mut c = Config::default();
        c.datastore.datastore_endpoint = Some("ftp://nope".into());
        let err = c.validate().expect_err("bad endpoint");
        assert!(err.to_string().contains("ftp"), "{err}");
    }
}
