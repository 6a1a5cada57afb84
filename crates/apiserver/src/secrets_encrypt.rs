//! K3s' secrets-encryption management on the running server: the configuration file of
//! `--secrets-encryption` (`<data-dir>/server/cred/encryption-config.json`, K3s' shape: one
//! AES-CBC provider then `identity` for `secrets`) and its rotation stages, driven through
//! `GET /v1-k3s/encrypt/status` and `PUT /v1-k3s/encrypt/config` (`crate::join`), which is
//! what `rk3s secrets-encrypt` calls, as `k3s secrets-encrypt` does.
//!
//! Every change rewrites the file (mode 0600, atomically) and then **reloads the apiserver's
//! transformer in place** ([`crate::storage::SharedTransformer::replace`]): later reads and
//! writes use the new keys without a restart. Re-encryption rewrites every stale value of the
//! covered resources through the datastore with compare-and-swap
//! ([`crate::storage::reencrypt`]) while the API keeps serving.
//!
//! Stages (K3s' names, kept in `encryption-state.json` next to the configuration): `start`;
//! `prepare` adds a new key behind the active one (allowed from `start` or
//! `reencrypt_finished`); `rotate` makes it active (from `prepare`); `reencrypt` (from
//! `rotate`) answers at once and rewrites every Secret in the background
//! (`reencrypt_active`), then drops the old key (`reencrypt_finished`; with `skip` keeps it
//! and goes back to `start`); `rotate-keys` does the three in one request and answers when
//! done. `force` skips the stage checks. `enable`/`disable` put the AES-CBC provider or
//! `identity` first and rewrite every Secret.
//!
//! Servers of one datastore share the configuration ([`SharedEncryption`], set by `rk3s
//! server` from its token): it is kept in the datastore sealed with the token, a change made
//! through one server reaches the others' files and transformers through a watch, and a
//! re-encryption waits until every live server has loaded the new keys (`shared`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::encryption::{
    EncryptionConfiguration, IdentityConfiguration, Key, KeysConfiguration, ProviderConfiguration,
    Transformer, new_aescbc_key,
};
use crate::storage::Store;

mod shared;

pub(crate) use shared::Shared;
pub use shared::SharedEncryption;

/// Stage names, as K3s'.
pub const STAGE_START: &str = "start";
pub const STAGE_PREPARE: &str = "prepare";
pub const STAGE_ROTATE: &str = "rotate";
pub const STAGE_REENCRYPT_ACTIVE: &str = "reencrypt_active";
pub const STAGE_REENCRYPT_FINISHED: &str = "reencrypt_finished";
/// The `stage` value of a rotate-keys request.
pub const STAGE_ROTATE_KEYS: &str = "rotate_keys";

/// K3s' `EncryptionState`: the answer of `GET /v1-k3s/encrypt/status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncryptionState {
    pub stage: String,
    /// `AES-CBC <key name>` of the key that encrypts, if any.
    #[serde(rename = "activekey")]
    pub active_key: String,
    /// `None`: no configuration file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enable: Option<bool>,
    #[serde(
        rename = "hashmatch",
        default,
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub hash_match: bool,
    #[serde(
        rename = "hasherror",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub hash_error: String,
    #[serde(
        rename = "inactivekeys",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub inactive_keys: Vec<String>,
}

/// K3s' `EncryptionRequest`: the body of `PUT /v1-k3s/encrypt/config`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncryptionRequest {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enable: Option<bool>,
    #[serde(default)]
    pub force: bool,
    #[serde(default)]
    pub skip: bool,
}

/// `<cred_dir>/encryption-config.json`.
pub fn config_path(cred_dir: &Path) -> PathBuf {
    cred_dir.join("encryption-config.json")
}

fn state_path(config: &Path) -> PathBuf {
    config.with_file_name("encryption-state.json")
}

/// Why a secrets-encryption operation failed (answered 400 with the message, as K3s).
#[derive(Debug, thiserror::Error)]
pub enum SecretsEncryptError {
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Config(#[from] crate::encryption::ConfigError),
    #[error("{path}: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("re-encrypting: {0}")]
    Reencrypt(String),
    /// The configuration shared through the datastore cannot be read or written.
    #[error("secrets encryption configuration in the datastore: {0}")]
    Shared(String),
}

fn refused(msg: impl Into<String>) -> SecretsEncryptError {
    SecretsEncryptError::Refused(msg.into())
}

/// The configuration of `--secrets-encryption` at `path`: read, or generated (K3s' shape, one
/// AES-CBC key `aescbckey`) with stage `start` when missing.
pub fn load_or_create(path: &Path) -> Result<EncryptionConfiguration, SecretsEncryptError> {
    if path.exists() {
        return Ok(EncryptionConfiguration::load(path)?);
    }
    let config = EncryptionConfiguration::generate_aescbc();
    write_config(path, &config)?;
    write_stage(path, STAGE_START)?;
    tracing::info!(path = %path.display(), "generated the secrets encryption configuration");
    Ok(config)
}

/// Writes a file with mode 0600, atomically (a temp file renamed over it).
fn write_private(path: &Path, contents: &str) -> Result<(), SecretsEncryptError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let file_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SecretsEncryptError::File { path, source }
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(file_err(dir))?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(file_err(&tmp))?;
    f.write_all(contents.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(file_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(file_err(path))
}

pub(crate) fn write_config(
    path: &Path,
    config: &EncryptionConfiguration,
) -> Result<(), SecretsEncryptError> {
    config.validate()?;
    write_private(path, &config.to_json())
}

pub(crate) fn write_stage(path: &Path, stage: &str) -> Result<(), SecretsEncryptError> {
    write_private(
        &state_path(path),
        &format!("{}\n", serde_json::json!({ "stage": stage })),
    )
}

/// The recorded stage (`start` when none is).
pub fn read_stage(path: &Path) -> String {
    std::fs::read_to_string(state_path(path))
        .ok()
        .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
        .and_then(|v| v["stage"].as_str().map(str::to_string))
        .unwrap_or_else(|| STAGE_START.into())
}

/// The status of the configuration at `path`.
pub fn status(path: &Path) -> Result<EncryptionState, SecretsEncryptError> {
    if !path.exists() {
        return Ok(EncryptionState::default());
    }
    let mut config = EncryptionConfiguration::load(path)?;
    let mut state = EncryptionState {
        stage: read_stage(path),
        // This server's view; `SecretsEncryption::status` compares the shared records.
        hash_match: true,
        ..EncryptionState::default()
    };
    let providers = secrets_providers(&mut config)?;
    state.enable = Some(
        providers
            .first()
            .is_some_and(|p| p.aescbc.is_some() || p.aesgcm.is_some()),
    );
    let mut active = true;
    for p in providers.iter() {
        for (kind, keys) in [("AES-CBC", &p.aescbc), ("AES-GCM", &p.aesgcm)] {
            for k in keys.iter().flat_map(|k| &k.keys) {
                let name = format!("{kind} {}", k.name);
                if active {
                    state.active_key = name;
                    active = false;
                } else {
                    state.inactive_keys.push(name);
                }
            }
        }
        if p.identity.is_some() {
            active = false;
        }
    }
    Ok(state)
}

/// The providers of the `secrets` entry.
fn secrets_providers(
    enc: &mut EncryptionConfiguration,
) -> Result<&mut Vec<ProviderConfiguration>, SecretsEncryptError> {
    Ok(&mut enc
        .secrets_entry_mut()
        .ok_or_else(|| refused("the encryption configuration has no entry for secrets"))?
        .providers)
}

/// The `aescbc` provider's keys (the provider created behind the others if missing).
fn aescbc_keys(providers: &mut Vec<ProviderConfiguration>) -> &mut Vec<Key> {
    let i = match providers.iter().position(|p| p.aescbc.is_some()) {
        Some(i) => i,
        None => {
            providers.push(ProviderConfiguration {
                aescbc: Some(KeysConfiguration::default()),
                ..ProviderConfiguration::default()
            });
            providers.len() - 1
        }
    };
    &mut providers[i]
        .aescbc
        .get_or_insert_with(KeysConfiguration::default)
        .keys
}

/// Adds a new AES-CBC key named `aescbckey-<UTC time>`, first (`active`) or second.
pub fn add_key(enc: &mut EncryptionConfiguration, active: bool) -> Result<(), SecretsEncryptError> {
    let keys = aescbc_keys(secrets_providers(enc)?);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let mut name = format!("aescbckey-{}", key_time(now.as_secs()));
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
pub fn rotate(enc: &mut EncryptionConfiguration) -> Result<(), SecretsEncryptError> {
    let keys = aescbc_keys(secrets_providers(enc)?);
    if keys.len() < 2 {
        return Err(refused(
            "no prepared key to rotate to: run `rk3s secrets-encrypt prepare` first",
        ));
    }
    keys.swap(0, 1);
    Ok(())
}

/// Puts the AES-CBC provider (`aescbc`) or `identity` first.
pub fn put_first(
    enc: &mut EncryptionConfiguration,
    aescbc: bool,
) -> Result<(), SecretsEncryptError> {
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
pub fn drop_inactive_keys(enc: &mut EncryptionConfiguration) {
    if let Some(entry) = enc.secrets_entry_mut() {
        for p in &mut entry.providers {
            if let Some(k) = &mut p.aescbc {
                k.keys.truncate(1);
            }
        }
    }
}

/// `2026-11-29T06-50-00` (UTC, no colons: key names may not contain `:`).
fn key_time(secs: u64) -> String {
    k8s_openapi::jiff::Timestamp::from_second(i64::try_from(secs).unwrap_or(0))
        .map(|t| t.strftime("%Y-%m-%dT%H-%M-%S").to_string())
        .unwrap_or_else(|_| secs.to_string())
}

/// The file-backed configuration of a running apiserver and what applies it.
#[derive(Debug)]
pub(crate) struct SecretsEncryption {
    path: PathBuf,
    /// One operation at a time (a background re-encryption holds it until done).
    busy: Arc<tokio::sync::Mutex<()>>,
    /// The configuration shared with the other servers of the datastore, if any.
    shared: Option<Arc<Shared>>,
}

impl SecretsEncryption {
    pub(crate) fn new(path: PathBuf, shared: Option<Arc<Shared>>) -> Self {
        SecretsEncryption {
            path,
            busy: Arc::default(),
            shared,
        }
    }

    /// This server's status; shared, whether every live server has loaded the same
    /// configuration (K3s' "Server Encryption Hashes").
    pub(crate) async fn status(
        &self,
        store: &Store,
    ) -> Result<EncryptionState, SecretsEncryptError> {
        let mut state = status(&self.path)?;
        if let (Some(shared), Some(_)) = (&self.shared, state.enable)
            && let Err(msg) = shared.hashes_match(store.raw()).await?
        {
            state.hash_match = false;
            state.hash_error = msg;
        }
        Ok(state)
    }

    /// Applies a request; `Ok` once the configuration is written and loaded (for `reencrypt`,
    /// the rewriting goes on in the background).
    pub(crate) async fn apply(
        &self,
        store: &Store,
        req: &EncryptionRequest,
    ) -> Result<(), SecretsEncryptError> {
        let Ok(guard) = self.busy.clone().try_lock_owned() else {
            return Err(refused(
                "another secrets-encrypt operation is in progress on this server",
            ));
        };
        if !self.path.exists() {
            return Err(refused(format!(
                "{} does not exist: start the server with --secrets-encryption",
                self.path.display()
            )));
        }
        let shared = self.shared.clone();
        if let Some(shared) = &shared {
            shared.sync(store, &self.path).await?;
        }
        let mut enc = EncryptionConfiguration::load(&self.path)?;
        let stage = read_stage(&self.path);
        let expect = |allowed: &[&str]| {
            if req.force || allowed.contains(&stage.as_str()) {
                Ok(())
            } else {
                Err(refused(format!(
                    "current stage is {stage}, this operation needs stage {}",
                    allowed.join(" or ")
                )))
            }
        };
        let ctx = Ctx {
            path: self.path.clone(),
            store: store.clone(),
            shared,
        };
        match (req.stage.as_deref(), req.enable) {
            (Some(STAGE_PREPARE), _) => {
                expect(&[STAGE_START, STAGE_REENCRYPT_FINISHED])?;
                add_key(&mut enc, false)?;
                ctx.save(&enc, STAGE_PREPARE).await?;
            }
            (Some(STAGE_ROTATE), _) => {
                expect(&[STAGE_PREPARE])?;
                rotate(&mut enc)?;
                ctx.save(&enc, STAGE_ROTATE).await?;
            }
            (Some(STAGE_REENCRYPT_ACTIVE), _) => {
                expect(&[STAGE_ROTATE])?;
                ctx.save(&enc, STAGE_REENCRYPT_ACTIVE).await?;
                let skip = req.skip;
                tokio::spawn(async move {
                    let _guard = guard;
                    if let Err(e) = ctx.reencrypt_and_finish(enc, !skip).await {
                        tracing::error!(error = %e, "secrets re-encryption failed");
                    }
                });
            }
            (Some(STAGE_ROTATE_KEYS), _) => {
                expect(&[STAGE_START, STAGE_REENCRYPT_FINISHED])?;
                add_key(&mut enc, true)?;
                ctx.save(&enc, STAGE_REENCRYPT_ACTIVE).await?;
                ctx.reencrypt_and_finish(enc, true).await?;
            }
            (Some(other), _) => return Err(refused(format!("unknown stage {other} requested"))),
            (None, Some(enable)) => {
                let on = status(&self.path)?.enable == Some(true);
                if on == enable {
                    tracing::info!(enable, "secrets encryption already in the requested state");
                    return Ok(());
                }
                put_first(&mut enc, enable)?;
                ctx.save(&enc, &stage).await?;
                ctx.reencrypt_and_finish(enc, false).await?;
            }
            (None, None) => return Err(refused("the request names neither a stage nor enable")),
        }
        Ok(())
    }
}

/// What one operation works on.
struct Ctx {
    path: PathBuf,
    store: Store,
    shared: Option<Arc<Shared>>,
}

impl Ctx {
    /// Publishes the configuration and stage to the other servers (if shared), writes them
    /// here, then loads them into the running apiserver.
    async fn save(
        &self,
        enc: &EncryptionConfiguration,
        stage: &str,
    ) -> Result<(), SecretsEncryptError> {
        let transformer = Transformer::new(enc)?;
        if let Some(shared) = &self.shared {
            shared.publish(self.store.raw(), enc, stage).await?;
        }
        write_config(&self.path, enc)?;
        write_stage(&self.path, stage)?;
        self.store.transformer().replace(transformer);
        if let Some(shared) = &self.shared {
            shared.report(self.store.raw(), &enc.hash()).await;
        }
        tracing::info!(stage, hash = %enc.hash(), "secrets encryption configuration reloaded");
        Ok(())
    }

    /// Shared: waits until every live server has loaded `enc`.
    async fn converge(&self, enc: &EncryptionConfiguration) -> Result<(), SecretsEncryptError> {
        match &self.shared {
            Some(shared) => shared.converge(self.store.raw(), &enc.hash()).await,
            None => Ok(()),
        }
    }

    /// Rewrites every stale value with the active key (twice: a write that took the previous
    /// transformer just before the reload is caught by the second pass), then, with
    /// `drop_old`, drops the inactive keys; stage `reencrypt_finished` (or `start` when keys
    /// are kept after a `skip`). Shared: nothing is rewritten before every live server writes
    /// with the active key and can read it.
    async fn reencrypt_and_finish(
        &self,
        mut enc: EncryptionConfiguration,
        drop_old: bool,
    ) -> Result<(), SecretsEncryptError> {
        self.converge(&enc).await?;
        let transformer = self.store.transformer().current();
        let mut rewritten = 0;
        for _ in 0..2 {
            let done = crate::storage::reencrypt(self.store.raw(), &transformer)
                .await
                .map_err(|e| SecretsEncryptError::Reencrypt(e.to_string()))?;
            rewritten += done.rewritten;
        }
        tracing::info!(rewritten, "secrets re-encrypted with the active key");
        if drop_old {
            drop_inactive_keys(&mut enc);
            self.save(&enc, STAGE_REENCRYPT_FINISHED).await
        } else {
            let stage = if read_stage(&self.path) == STAGE_REENCRYPT_ACTIVE {
                STAGE_START
            } else {
                STAGE_REENCRYPT_FINISHED
            };
            self.save(&enc, stage).await
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn generated_file_is_private_and_reused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = config_path(dir.path());
        let first = load_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(first, load_or_create(&path).unwrap());
        let s = status(&path).unwrap();
        assert_eq!(s.enable, Some(true));
        assert_eq!(s.stage, STAGE_START);
        assert_eq!(s.active_key, "AES-CBC aescbckey");
        assert!(s.inactive_keys.is_empty());
        assert_eq!(status(&dir.path().join("none")).unwrap().enable, None);
    }

    #[test]
    fn prepare_rotate_and_drop_as_k3s() {
        let mut enc = EncryptionConfiguration::generate_aescbc();
        add_key(&mut enc, false).unwrap();
        let keys = |e: &mut EncryptionConfiguration| -> Vec<String> {
            aescbc_keys(secrets_providers(e).unwrap())
                .iter()
                .map(|k| k.name.clone())
                .collect()
        };
        let k = keys(&mut enc);
        assert_eq!(k[0], "aescbckey");
        assert!(k[1].starts_with("aescbckey-20"), "{k:?}");
        rotate(&mut enc).unwrap();
        assert!(keys(&mut enc)[0].starts_with("aescbckey-20"));
        drop_inactive_keys(&mut enc);
        assert_eq!(keys(&mut enc).len(), 1);
        put_first(&mut enc, false).unwrap();
        assert!(secrets_providers(&mut enc).unwrap()[0].identity.is_some());
        enc.validate().unwrap();
        assert_eq!(key_time(1_795_935_000), "2026-11-29T06-50-00");
    }
}
