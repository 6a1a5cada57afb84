//! `rk3s kubectl ...`: the system kubectl, with `KUBECONFIG` set to the admin kubeconfig.

use std::ffi::OsString;
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;

use crate::config::ServerArgs;

/// Everything after `rk3s kubectl` goes to kubectl unchanged (`--help` included).
#[derive(Debug, Clone, clap::Args)]
#[command(disable_help_flag = true)]
pub struct KubectlArgs {
    /// Arguments for kubectl
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
    pub args: Vec<OsString>,
}

/// Why kubectl could not be run.
#[derive(Debug, thiserror::Error)]
pub enum KubectlError {
    /// The config (file or environment) that names the kubeconfig is broken.
    #[error("finding the admin kubeconfig: {0}")]
    Config(crate::config::ConfigError),
    #[error("cannot run {}: {error}", binary.display())]
    Exec {
        binary: PathBuf,
        error: std::io::Error,
    },
}

/// The admin kubeconfig: `$RK3S_KUBECONFIG`, else `write-kubeconfig` from the server's
/// configuration (the config file — `$RK3S_CONFIG_FILE` or `/etc/rk3s/config.yaml` — and
/// `RK3S_WRITE_KUBECONFIG`), else `/etc/rk3s/rk3s.yaml`.
pub fn admin_kubeconfig() -> Result<PathBuf, KubectlError> {
    if let Some(path) = std::env::var_os("RK3S_KUBECONFIG").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(path));
    }
    let args = ServerArgs {
        config: std::env::var_os("RK3S_CONFIG_FILE")
            .filter(|p| !p.is_empty())
            .map(PathBuf::from),
        ..ServerArgs::default()
    };
    let figment = crate::config::figment(&args).map_err(KubectlError::Config)?;
    let path: PathBuf = figment
        .extract_inner("write-kubeconfig")
        .map_err(|e| KubectlError::Config(crate::config::ConfigError::Figment(Box::new(e))))?;
    Ok(path)
}

/// The kubectl binary: `$RK3S_KUBECTL`, `/usr/bin/kubectl`, or `kubectl` from `PATH`.
pub fn kubectl_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("RK3S_KUBECTL").filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    let system = PathBuf::from("/usr/bin/kubectl");
    if system.is_file() {
        system
    } else {
        PathBuf::from("kubectl")
    }
}

/// Replaces this process with kubectl; returns only if that fails.
pub fn exec(args: KubectlArgs) -> Result<(), KubectlError> {
    let kubeconfig = admin_kubeconfig()?;
    let binary = kubectl_binary();
    let error = std::process::Command::new(&binary)
        .args(&args.args)
        .env("KUBECONFIG", &kubeconfig)
        .exec();
    Err(KubectlError::Exec { binary, error })
}
