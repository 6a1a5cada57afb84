//! Secrets encryption as K3s does it: `rk3s server --secrets-encryption` keeps an upstream
//! `EncryptionConfiguration` in `<data-dir>/server/cred/encryption-config.json` (mode 0600;
//! generated on first start with one AES-CBC key named `aescbckey`, then `identity`), and the
//! running server manages it (`rk3s_apiserver::secrets_encrypt`: the stages, the reload, the
//! re-encryption).
//!
//! `rk3s secrets-encrypt <action>` is a client of that server, as `k3s secrets-encrypt`: it
//! reads the token (`--token`/`K3S_TOKEN`, else `<data-dir>/server/token`), checks the
//! server's CA against it, and calls `GET /v1-k3s/encrypt/status` or `PUT
//! /v1-k3s/encrypt/config` on `--server` (default `https://127.0.0.1:6443`) as the `server`
//! user. The server re-encrypts while it serves; no restart is needed.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use rk3s_apiserver::encryption::EncryptionConfiguration;
use rk3s_apiserver::secrets_encrypt::{
    EncryptionRequest, EncryptionState, STAGE_PREPARE, STAGE_REENCRYPT_ACTIVE, STAGE_ROTATE,
    STAGE_ROTATE_KEYS,
};

use crate::agent::ServerAccess;

/// `rk3s secrets-encrypt`.
#[derive(Debug, Clone, clap::Args)]
#[command(about = "Control secrets encryption on the running server (status, keys, re-encryption)")]
pub struct SecretsEncryptArgs {
    /// What to do
    #[arg(value_enum)]
    pub action: Action,
    /// Directory of rk3s state (where the server token is read from)
    #[arg(short = 'd', long, value_name = "DIR", default_value = "/var/lib/rk3s")]
    pub data_dir: PathBuf,
    /// The server to ask
    #[arg(
        short = 's',
        long,
        value_name = "URL",
        env = "K3S_URL",
        default_value = "https://127.0.0.1:6443"
    )]
    pub server: String,
    /// The server token [default: <data-dir>/server/token]
    #[arg(short = 't', long, value_name = "TOKEN", env = "K3S_TOKEN")]
    pub token: Option<String>,
    /// Skip the stage checks (prepare, rotate, reencrypt)
    #[arg(short = 'f', long)]
    pub force: bool,
    /// reencrypt: keep the old key and go back to stage `start`
    #[arg(long)]
    pub skip: bool,
    /// status: `text` or `json`
    #[arg(short = 'o', long, value_name = "FORMAT", default_value = "text")]
    pub output: String,
}

/// The `secrets-encrypt` actions, K3s' names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Action {
    /// Show whether encryption is on, the rotation stage and the keys
    Status,
    /// Encrypt Secrets with the AES-CBC key (and re-encrypt the stored ones)
    Enable,
    /// Store Secrets in clear again (and rewrite the stored ones)
    Disable,
    /// Add a new AES-CBC key, not used for writing yet
    Prepare,
    /// Make the newest key the one that encrypts
    Rotate,
    /// Rewrite every Secret with the active key (in the background), then drop the old key
    Reencrypt,
    /// prepare + rotate + reencrypt in one step
    RotateKeys,
}

/// `<data-dir>/server/cred`.
pub fn cred_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("server").join("cred")
}

/// `<data-dir>/server/cred/encryption-config.json`.
pub fn config_path(data_dir: &Path) -> PathBuf {
    rk3s_apiserver::secrets_encrypt::config_path(&cred_dir(data_dir))
}

/// The configuration of `rk3s server --secrets-encryption`: read, or generated (K3s' shape) on
/// first start.
pub fn load_or_create(data_dir: &Path) -> anyhow::Result<EncryptionConfiguration> {
    Ok(rk3s_apiserver::secrets_encrypt::load_or_create(
        &config_path(data_dir),
    )?)
}

/// The token the CLI authenticates with: `--token`, else `<data-dir>/server/token`.
pub(crate) fn server_token(data_dir: &Path, token: Option<&str>) -> anyhow::Result<String> {
    match token.map(str::trim).filter(|t| !t.is_empty()) {
        Some(t) => Ok(t.to_string()),
        None => {
            let path = data_dir.join("server").join("token");
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading the server token from {}", path.display()))?;
            Ok(text.trim().to_string())
        }
    }
}

/// Runs `rk3s secrets-encrypt <action>`.
pub async fn run(args: SecretsEncryptArgs) -> anyhow::Result<()> {
    let token = server_token(&args.data_dir, args.token.as_deref())?;
    let access = ServerAccess::connect(&args.server, &token, "server").await?;
    let stage = |s: &str| Some(s.to_string());
    let (request, done) = match args.action {
        Action::Status => {
            let body = access
                .call("GET", "/v1-k3s/encrypt/status", None)
                .await
                .context("see the server log for details")?;
            let state: EncryptionState =
                serde_json::from_slice(&body).context("the server's status answer")?;
            if args.output.eq_ignore_ascii_case("json") {
                println!("{}", serde_json::to_string_pretty(&state)?);
            } else {
                print!("{}", render_status(&state));
            }
            return Ok(());
        }
        Action::Enable => (
            EncryptionRequest {
                enable: Some(true),
                ..EncryptionRequest::default()
            },
            "secrets-encryption enabled",
        ),
        Action::Disable => (
            EncryptionRequest {
                enable: Some(false),
                ..EncryptionRequest::default()
            },
            "secrets-encryption disabled",
        ),
        Action::Prepare => (
            EncryptionRequest {
                stage: stage(STAGE_PREPARE),
                force: args.force,
                ..EncryptionRequest::default()
            },
            "prepare completed successfully",
        ),
        Action::Rotate => (
            EncryptionRequest {
                stage: stage(STAGE_ROTATE),
                force: args.force,
                ..EncryptionRequest::default()
            },
            "rotate completed successfully",
        ),
        Action::Reencrypt => (
            EncryptionRequest {
                stage: stage(STAGE_REENCRYPT_ACTIVE),
                force: args.force,
                skip: args.skip,
                ..EncryptionRequest::default()
            },
            "reencryption started",
        ),
        Action::RotateKeys => (
            EncryptionRequest {
                stage: stage(STAGE_ROTATE_KEYS),
                ..EncryptionRequest::default()
            },
            "keys rotated, reencryption finished",
        ),
    };
    let body = serde_json::to_vec(&request)?;
    access
        .call("PUT", "/v1-k3s/encrypt/config", Some(&body))
        .await
        .context("see the server log for details")?;
    println!("{done}");
    Ok(())
}

/// K3s' text form of the status.
pub fn render_status(state: &EncryptionState) -> String {
    let Some(enabled) = state.enable else {
        return "Encryption Status: Disabled, no configuration file found\n".into();
    };
    let mut out = format!(
        "Encryption Status: {}\nCurrent Rotation Stage: {}\n",
        if enabled { "Enabled" } else { "Disabled" },
        state.stage
    );
    if state.hash_match {
        out.push_str("Server Encryption Hashes: All hashes match\n");
    } else {
        out.push_str(&format!("Server Encryption Hashes: {}\n", state.hash_error));
    }
    out.push_str("\nActive  Key Type  Name\n------  --------  ----\n");
    let split = |k: &str| -> (String, String) {
        match k.split_once(' ') {
            Some((t, n)) => (t.to_string(), n.to_string()),
            None => ("AES-CBC".into(), k.to_string()),
        }
    };
    if !state.active_key.is_empty() {
        let (t, n) = split(&state.active_key);
        out.push_str(&format!(" *      {t:<8}  {n}\n"));
    }
    for k in &state.inactive_keys {
        let (t, n) = split(k);
        out.push_str(&format!("        {t:<8}  {n}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_text_as_k3s() {
        let state = EncryptionState {
            stage: "start".into(),
            active_key: "AES-CBC aescbckey".into(),
            enable: Some(true),
            hash_match: true,
            inactive_keys: vec!["AES-CBC aescbckey-2026".into()],
            ..EncryptionState::default()
        };
        let text = render_status(&state);
        assert!(
            text.starts_with("Encryption Status: Enabled\nCurrent Rotation Stage: start\n"),
            "{text}"
        );
        assert!(text.contains("All hashes match"), "{text}");
        assert!(text.contains(" *      AES-CBC   aescbckey\n"), "{text}");
        assert!(
            text.contains("        AES-CBC   aescbckey-2026\n"),
            "{text}"
        );
        assert_eq!(
            render_status(&EncryptionState::default()),
            "Encryption Status: Disabled, no configuration file found\n"
        );
    }
}
