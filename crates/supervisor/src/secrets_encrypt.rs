//! Secrets encryption as K3s does it: `rk3s server --secrets-encryption` keeps an upstream
//! `EncryptionConfiguration` in `<data-dir>/server/cred/encryption-config.json` (mode 0600;
//! generated on first start with one AES-CBC key named `aescbckey`, then `identity`), and
//! `rk3s secrets-encrypt` manages its keys.
//!
//! Unlike K3s, whose subcommand asks the running server (`/v1-k3s/encrypt/*`), `rk3s
//! secrets-encrypt` works **offline** on the data dir and the datastore, with the server
//! stopped: it rewrites the configuration file and, where K3s' server would re-encrypt,
//! re-encrypts every Secret itself through the datastore. A running server would keep
//! writing with the old key, so every command that changes something refuses to run while
//! the API answers on its port (`--force` skips that check). `status` only reads the file.
//!
//! Stages, as K3s names them (recorded in `encryption-state.json` next to the config):
//! `prepare` adds a new key behind the active one; `rotate` makes the newest key active;
//! `reencrypt` rewrites every Secret with the active key and drops the others
//! (`reencrypt_finished`); `rotate-keys` does all three at once. `enable`/`disable` put the
//! AES-CBC provider or `identity` first and re-encrypt (disable writes every Secret in clear).

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use rk3s_apiserver::encryption::{
    EncryptionConfiguration, IdentityConfiguration, KeysConfiguration, ProviderConfiguration,
    new_aescbc_key,
};

use crate::config::{ServerArgs, ServerConfig, load_config};

/// `rk3s secrets-encrypt`.
#[derive(Debug, Clone, clap::Args)]
#[command(
    about = "Manage secrets encryption at rest (offline: stop the server first)",
    after_help = "Works on the data dir and datastore of `rk3s server` (same flags, config file \
and environment) with the server stopped; `status` can run any time."
)]
pub struct SecretsEncryptArgs {
    /// What to do
    #[arg(value_enum)]
    pub action: Action,
    /// Do it even if the API answers on its port
    #[arg(short = 'f', long)]
    pub force: bool,
    #[command(flatten)]
    pub server: ServerArgs,
}

/// The `secrets-encrypt` actions, K3s' names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Action {
    /// Show whether encryption is on, the keys and the configuration's hash
    Status,
    /// Encrypt Secrets with the AES-CBC key (and re-encrypt the stored ones)
    Enable,
    /// Store Secrets in clear again (and rewrite the stored ones)
    Disable,
    /// Add a new AES-CBC key, not used for writing yet
    Prepare,
    /// Make the newest key the one that encrypts
    Rotate,
    /// Rewrite every Secret with the active key, then drop the other keys
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
    cred_dir(data_dir).join("encryption-config.json")
}

fn state_path(data_dir: &Path) -> PathBuf {
    cred_dir(data_dir).join("encryption-state.json")
}

/// The configuration of `rk3s server --secrets-encryption`: read, or generated (K3s' shape) on
/// first start.
pub fn load_or_create(data_dir: &Path) -> anyhow::Result<EncryptionConfiguration> {
    let path = config_path(data_dir);
    if path.exists() {
        return EncryptionConfiguration::load(&path).map_err(anyhow::Error::from);
    }
    let config = EncryptionConfiguration::generate_aescbc();
    write_config(data_dir, &config)?;
    write_stage(data_dir, "start")?;
    tracing::info!(path = %path.display(), "generated the secrets encryption configuration");
    Ok(config)
}

/// Writes a file with mode 0600, atomically (a temp file renamed over it).
fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let dir = path.parent().context("a file path has a parent")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(contents.as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

fn write_config(data_dir: &Path, config: &EncryptionConfiguration) -> anyhow::Result<()> {
    config.validate()?;
    write_private(&config_path(data_dir), &config.to_json())
}

fn write_stage(data_dir: &Path, stage: &str) -> anyhow::Result<()> {
    write_private(
        &state_path(data_dir),
        &serde_json_string(&[("stage", stage)]),
    )
}

fn serde_json_string(fields: &[(&str, &str)]) -> String {
    let body: Vec<String> = fields
        .iter()
        .map(|(k, v)| format!("{k:?}: {v:?}"))
        .collect();
    format!("{{{}}}\n", body.join(", "))
}

fn read_stage(data_dir: &Path) -> String {
    std::fs::read_to_string(state_path(data_dir))
        .ok()
        .and_then(|s| {
            let (_, rest) = s.split_once("\"stage\"")?;
            let rest = rest.trim_start().strip_prefix(':')?.trim();
            let rest = rest.strip_prefix('"')?;
            Some(rest.split('"').next()?.to_string())
        })
        .unwrap_or_else(|| "start".into())
}

/// Runs `rk3s secrets-encrypt <action>`.
pub async fn run(args: SecretsEncryptArgs) -> anyhow::Result<()> {
    let config = load_config(&args.server)?;
    let data_dir = config.data_dir.clone();
    let path = config_path(&data_dir);
    if args.action == Action::Status {
        print!("{}", status(&data_dir)?);
        return Ok(());
    }
    if !path.exists() {
        bail!(
            "{} does not exist: start the server with --secrets-encryption first",
            path.display()
        );
    }
    if !args.force
        && tokio::time::timeout(
            std::time::Duration::from_secs(1),
            tokio::net::TcpStream::connect(config.local_api_addr()),
        )
        .await
        .is_ok_and(|c| c.is_ok())
    {
        bail!(
            "a server answers on {}: stop it first (secrets-encrypt works on the data dir with \
             the server stopped), or pass --force",
            config.local_api_addr()
        );
    }
    let mut enc = EncryptionConfiguration::load(&path)?;
    let stage = match args.action {
        Action::Status => return Ok(()),
        Action::Prepare => {
            add_key(&mut enc, false)?;
            "prepare"
        }
        Action::Rotate => {
            rotate(&mut enc)?;
            "rotate"
        }
        Action::Enable => {
            put_first(&mut enc, true)?;
            "reencrypt_request"
        }
        Action::Disable => {
            put_first(&mut enc, false)?;
            "reencrypt_request"
        }
        Action::Reencrypt => "reencrypt_request",
        Action::RotateKeys => {
            add_key(&mut enc, true)?;
            "reencrypt_request"
        }
    };
    write_config(&data_dir, &enc)?;
    write_stage(&data_dir, stage)?;
    if stage == "reencrypt_request" {
        let done = reencrypt(&config, &enc).await?;
        let active_only = !matches!(args.action, Action::Enable | Action::Disable);
        if active_only {
            drop_inactive_keys(&mut enc);
        }
        write_config(&data_dir, &enc)?;
        write_stage(&data_dir, "reencrypt_finished")?;
        println!(
            "re-encrypted {} secrets ({} already current)",
            done.rewritten, done.unchanged
        );
    }
    print!("{}", status(&data_dir)?);
    Ok(())
}

async fn reencrypt(
    config: &ServerConfig,
    enc: &EncryptionConfiguration,
) -> anyhow::Result<rk3s_apiserver::Reencrypted> {
    let transformer = rk3s_apiserver::Transformer::new(enc)?;
    let store = rk3s_datastore::connect(&config.datastore())
        .await
        .context("connecting the datastore")?;
    let done = rk3s_apiserver::reencrypt(&store, &transformer).await;
    store.close().await;
    done.context("re-encrypting the secrets")
}

/// The providers of the `secrets` entry.
fn secrets_providers(
    enc: &mut EncryptionConfiguration,
) -> anyhow::Result<&mut Vec<ProviderConfiguration>> {
    Ok(&mut enc
        .secrets_entry_mut()
        .context("the encryption configuration has no entry for secrets")?
        .providers)
}

/// The `aescbc` provider's keys (created behind `identity` if missing).
fn aescbc_keys(
    providers: &mut Vec<ProviderConfiguration>,
) -> &mut Vec<rk3s_apiserver::encryption::Key> {
    if !providers.iter().any(|p| p.aescbc.is_some()) {
        providers.push(ProviderConfiguration {
            aescbc: Some(KeysConfiguration::default()),
            ..ProviderConfiguration::default()
        });
    }
    let i = providers
        .iter()
        .position(|p| p.aescbc.is_some())
        .unwrap_or_default();
    &mut providers[i]
        .aescbc
        .get_or_insert_with(KeysConfiguration::default)
        .keys
}

/// Adds a new AES-CBC key named `aescbckey-<UTC time>`, first (`active`) or second.
fn add_key(enc: &mut EncryptionConfiguration, active: bool) -> anyhow::Result<()> {
    let providers = secrets_providers(enc)?;
    let keys = aescbc_keys(providers);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let mut name = format!("aescbckey-{}", rfc3339ish(now.as_secs()));
    while keys.iter().any(|k| k.name == name) {
        name.push('x');
    }
    let key = new_aescbc_key(&name);
    if active || keys.is_empty() {
        keys.insert(0, key);
    } else {
        keys.insert(1, key);
    }
    Ok(())
}

/// Makes the second AES-CBC key (the one `prepare` added) the first.
fn rotate(enc: &mut EncryptionConfiguration) -> anyhow::Result<()> {
    let providers = secrets_providers(enc)?;
    let keys = aescbc_keys(providers);
    if keys.len() < 2 {
        bail!("no prepared key to rotate to: run `rk3s secrets-encrypt prepare` first");
    }
    keys.swap(0, 1);
    Ok(())
}

/// Puts the AES-CBC provider (`aescbc`) or `identity` first.
fn put_first(enc: &mut EncryptionConfiguration, aescbc: bool) -> anyhow::Result<()> {
    let providers = secrets_providers(enc)?;
    if aescbc && aescbc_keys(providers).is_empty() {
        aescbc_keys(providers).push(new_aescbc_key("aescbckey"));
    }
    if !providers.iter().any(|p| p.identity.is_some()) {
        providers.push(ProviderConfiguration {
            identity: Some(IdentityConfiguration {}),
            ..ProviderConfiguration::default()
        });
    }
    let i = providers
        .iter()
        .position(|p| {
            if aescbc {
                p.aescbc.is_some()
            } else {
                p.identity.is_some()
            }
        })
        .unwrap_or_default();
    let p = providers.remove(i);
    providers.insert(0, p);
    Ok(())
}

/// After a re-encryption: only the active AES-CBC key stays.
fn drop_inactive_keys(enc: &mut EncryptionConfiguration) {
    if let Some(entry) = enc.secrets_entry_mut() {
        for p in &mut entry.providers {
            if let Some(k) = &mut p.aescbc {
                k.keys.truncate(1);
            }
        }
    }
}

/// `2026-11-29T06-50-00` (UTC, no colons: key names may not contain `:`).
fn rfc3339ish(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}-{:02}-{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 → (year, month, day) (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// K3s-like `secrets-encrypt status` output.
pub fn status(data_dir: &Path) -> anyhow::Result<String> {
    let path = config_path(data_dir);
    if !path.exists() {
        return Ok("Encryption Status: Disabled, no configuration file found\n".into());
    }
    let enc = EncryptionConfiguration::load(&path)?;
    let transformer = rk3s_apiserver::Transformer::new(&enc)?;
    let entries = transformer.describe();
    let enabled = entries
        .iter()
        .any(|(_, keys)| keys.first().is_some_and(|k| k.kind != "Identity"));
    let mut out = String::new();
    out.push_str(&format!(
        "Encryption Status: {}\n",
        if enabled { "Enabled" } else { "Disabled" }
    ));
    out.push_str(&format!(
        "Current Rotation Stage: {}\n",
        read_stage(data_dir)
    ));
    out.push_str(&format!("Server Encryption Hash: {}\n", enc.hash()));
    out.push_str(&format!("Configuration: {}\n\n", path.display()));
    out.push_str("Active  Key Type  Name              Resources\n");
    out.push_str("------  --------  ----              ---------\n");
    for (resources, keys) in entries {
        for k in keys {
            out.push_str(&format!(
                " {:<6} {:<9} {:<17} {}\n",
                if k.active { "*" } else { "" },
                k.kind,
                k.name,
                resources.join(",")
            ));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_file_is_private_and_reused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("dir");
        let first = load_or_create(dir.path()).expect("created");
        let mode = std::fs::metadata(config_path(dir.path()))
            .expect("file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = load_or_create(dir.path()).expect("read");
        assert_eq!(first, again);
        let s = status(dir.path()).expect("status");
        assert!(s.contains("Encryption Status: Enabled"), "{s}");
        assert!(s.contains("Current Rotation Stage: start"), "{s}");
        assert!(s.contains("aescbckey"), "{s}");
    }

    #[test]
    fn prepare_rotate_and_drop_as_k3s() {
        let mut enc = EncryptionConfiguration::generate_aescbc();
        add_key(&mut enc, false).expect("prepare");
        let keys = |e: &mut EncryptionConfiguration| -> Vec<String> {
            aescbc_keys(secrets_providers(e).expect("entry"))
                .iter()
                .map(|k| k.name.clone())
                .collect()
        };
        let k = keys(&mut enc);
        assert_eq!(k[0], "aescbckey");
        assert!(k[1].starts_with("aescbckey-20"), "{k:?}");
        rotate(&mut enc).expect("rotate");
        assert!(keys(&mut enc)[0].starts_with("aescbckey-20"));
        drop_inactive_keys(&mut enc);
        assert_eq!(keys(&mut enc).len(), 1);
        put_first(&mut enc, false).expect("disable");
        assert!(
            secrets_providers(&mut enc).expect("entry")[0]
                .identity
                .is_some()
        );
        enc.validate().expect("still valid");
    }

    #[test]
    fn dates() {
        assert_eq!(rfc3339ish(0), "1970-01-01T00-00-00");
        assert_eq!(rfc3339ish(1_795_935_000), "2026-11-29T06-50-00");
    }
}
