//! The secrets-encryption configuration shared by the servers of one datastore, as K3s keeps
//! it in its bootstrap data: the configuration and its stage are stored under one datastore
//! key, sealed with the server token ([`crate::sealed`]), and every server
//!
//! - at start adopts what the datastore holds (its own file is overwritten), or stores its own
//!   when there is nothing yet (a lost race: adopts the winner's);
//! - publishes every change it makes with compare-and-swap on that key (two servers changing
//!   the configuration at once: one is refused and asked to try again);
//! - watches the key and, when another server changed it, writes the file under its data dir
//!   and reloads its transformer in place;
//! - records the hash of the configuration it has loaded under `<key>/servers/<name>`,
//!   attached to a datastore lease (a server that is gone drops out when the lease expires),
//!   which `status` compares (K3s' "Server Encryption Hashes") and which a re-encryption waits
//!   for: no value is rewritten before every live server can read the new key, and no key is
//!   dropped before every live server writes with the new one.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rk3s_datastore::{
    EventKind, ListOptions, PutRequest, TxnOp, TxnRequest, WatchResponse, WriteOutcome,
};
use serde::{Deserialize, Serialize};

use super::{SecretsEncryptError, read_stage, write_config, write_stage};
use crate::encryption::{EncryptionConfiguration, Transformer};

/// Marks (and authenticates) a sealed secrets-encryption state.
const MAGIC: &[u8] = b"rk3s-secrets-encryption-v1";
/// Lifetime of a server's hash record without keep-alive.
const RECORD_TTL_SECS: i64 = 30;
const KEEPALIVE: Duration = Duration::from_secs(10);
/// How long a re-encryption waits for the other servers to load a new configuration.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(30);

/// Where and how the servers of one datastore share the configuration (set by the embedder,
/// `rk3s server`, from its token).
#[derive(Debug, Clone)]
pub struct SharedEncryption {
    /// The datastore key of the sealed configuration.
    pub key: String,
    /// The secret that seals it (the server token's).
    pub secret: String,
    /// This server's name in the hash records (its node name).
    pub server: String,
}

/// What the datastore holds: the configuration and the cluster's rotation stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct SharedState {
    config: EncryptionConfiguration,
    stage: String,
}

/// One server's record: the hash of the configuration it has loaded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    hash: String,
}

/// A server's handle on the shared configuration.
#[derive(Debug)]
pub(crate) struct Shared {
    settings: SharedEncryption,
    /// The mod revision of the key as this server last wrote or adopted it: a watch event at
    /// or below it is not news.
    rev: std::sync::Mutex<i64>,
    /// The lease of this server's record (0: none yet).
    lease: tokio::sync::Mutex<i64>,
}

fn datastore_err(e: impl std::fmt::Display) -> SecretsEncryptError {
    SecretsEncryptError::Shared(e.to_string())
}

impl Shared {
    pub(crate) fn new(settings: SharedEncryption) -> Self {
        Shared {
            settings,
            rev: std::sync::Mutex::new(0),
            lease: tokio::sync::Mutex::new(0),
        }
    }

    fn rev(&self) -> i64 {
        match self.rev.lock() {
            Ok(r) => *r,
            Err(p) => *p.into_inner(),
        }
    }

    fn set_rev(&self, rev: i64) {
        match self.rev.lock() {
            Ok(mut r) => *r = (*r).max(rev),
            Err(p) => {
                let mut r = p.into_inner();
                *r = (*r).max(rev);
            }
        }
    }

    fn records_prefix(&self) -> String {
        format!("{}/servers/", self.settings.key)
    }

    /// Seals or opens off the async threads (PBKDF2 takes a while).
    async fn seal(&self, state: &SharedState) -> Result<Vec<u8>, SecretsEncryptError> {
        let plain = serde_json::to_vec(state).map_err(datastore_err)?;
        let secret = self.settings.secret.clone();
        tokio::task::spawn_blocking(move || crate::sealed::seal(MAGIC, &secret, &plain))
            .await
            .map_err(datastore_err)?
            .map_err(|e| datastore_err(format!("sealing the configuration: {e}")))
    }

    async fn open(&self, value: Vec<u8>) -> Result<SharedState, SecretsEncryptError> {
        let secret = self.settings.secret.clone();
        let key = self.settings.key.clone();
        let plain =
            tokio::task::spawn_blocking(move || crate::sealed::open(MAGIC, &secret, &value))
                .await
                .map_err(datastore_err)?
                .map_err(|e| datastore_err(format!("{key}: {e}")))?;
        let state: SharedState = serde_json::from_slice(&plain)
            .map_err(|e| datastore_err(format!("{}: {e}", self.settings.key)))?;
        state.config.validate()?;
        Ok(state)
    }

    /// The shared state, its mod revision and the store's revision of the read.
    async fn load(
        &self,
        store: &rk3s_datastore::Store,
    ) -> Result<(Option<(SharedState, i64)>, i64), SecretsEncryptError> {
        let (revision, kv) = store
            .get(self.settings.key.as_bytes(), 0)
            .await
            .map_err(datastore_err)?;
        match kv {
            Some(kv) => Ok((
                Some((self.open(kv.value).await?, kv.mod_revision)),
                revision,
            )),
            None => Ok((None, revision)),
        }
    }

    /// At start: the datastore's configuration, written to `path` (or ours, stored for the
    /// others when the datastore has none). Returns the configuration to serve with and the
    /// store revision to watch from.
    pub(crate) async fn start(
        &self,
        store: &rk3s_datastore::Store,
        path: &Path,
    ) -> Result<(EncryptionConfiguration, i64), SecretsEncryptError> {
        for _ in 0..3 {
            if let (Some((state, rev)), revision) = self.load(store).await? {
                adopt_files(path, &state)?;
                self.set_rev(rev);
                tracing::info!(
                    key = %self.settings.key,
                    stage = %state.stage,
                    hash = %state.config.hash(),
                    "using the cluster's secrets encryption configuration from the datastore"
                );
                return Ok((state.config, revision));
            }
            let state = SharedState {
                config: EncryptionConfiguration::load(path)?,
                stage: read_stage(path),
            };
            let value = self.seal(&state).await?;
            match store
                .create(self.settings.key.as_bytes(), value, 0)
                .await
                .map_err(datastore_err)?
            {
                WriteOutcome::Written { revision } => {
                    self.set_rev(revision);
                    tracing::info!(
                        key = %self.settings.key,
                        "stored the secrets encryption configuration in the datastore, \
                         encrypted with the token"
                    );
                    return Ok((state.config, revision));
                }
                // Another server stored its configuration first: adopt it.
                WriteOutcome::Conflict { .. } => continue,
            }
        }
        Err(datastore_err(format!(
            "{}: the key keeps changing while this server starts",
            self.settings.key
        )))
    }

    /// Makes the shared state this server's (before it is applied here). Refused when another
    /// server changed it since this one last saw it.
    pub(crate) async fn publish(
        &self,
        store: &rk3s_datastore::Store,
        config: &EncryptionConfiguration,
        stage: &str,
    ) -> Result<(), SecretsEncryptError> {
        let value = self
            .seal(&SharedState {
                config: config.clone(),
                stage: stage.to_string(),
            })
            .await?;
        let key = self.settings.key.as_bytes();
        let rev = self.rev();
        let outcome = if rev == 0 {
            store.create(key, value, 0).await
        } else {
            store.update(key, value, rev, 0).await
        }
        .map_err(datastore_err)?;
        match outcome {
            WriteOutcome::Written { revision } => {
                self.set_rev(revision);
                Ok(())
            }
            WriteOutcome::Conflict { .. } => Err(SecretsEncryptError::Refused(
                "the secrets encryption configuration was changed on another server meanwhile: \
                 check `rk3s secrets-encrypt status` and try again"
                    .into(),
            )),
        }
    }

    /// Before an operation: this server's file made equal to the datastore's state (the watch
    /// normally did that already).
    pub(crate) async fn sync(
        &self,
        store: &crate::storage::Store,
        path: &Path,
    ) -> Result<(), SecretsEncryptError> {
        if let (Some((state, rev)), _) = self.load(store.raw()).await?
            && rev > self.rev()
        {
            self.adopt(store, path, state, rev).await?;
        }
        Ok(())
    }

    /// Applies another server's change here: the file, the stage, the transformer, the record.
    async fn adopt(
        &self,
        store: &crate::storage::Store,
        path: &Path,
        state: SharedState,
        rev: i64,
    ) -> Result<(), SecretsEncryptError> {
        let transformer = Transformer::new(&state.config)?;
        let reload = store.transformer().current().config() != Some(&state.config);
        if reload {
            store.transformer().replace(transformer);
        }
        // The record before the files: `status` reads the stage from the files, so a status
        // that shows the new stage finds this server's new hash already recorded.
        self.report(store.raw(), &state.config.hash()).await;
        let changed = adopt_files(path, &state)?;
        if changed || reload {
            tracing::info!(
                stage = %state.stage,
                hash = %state.config.hash(),
                "secrets encryption configuration changed by another server: reloaded"
            );
        }
        self.set_rev(rev);
        Ok(())
    }

    /// Records the hash of the configuration this server has loaded. Failures are logged: the
    /// record only informs status and re-encryption, which then wait or report a mismatch.
    pub(crate) async fn report(&self, store: &rk3s_datastore::Store, hash: &str) {
        if let Err(e) = self.try_report(store, hash).await {
            tracing::warn!(error = %e, "could not record this server's encryption hash");
        }
    }

    async fn try_report(
        &self,
        store: &rk3s_datastore::Store,
        hash: &str,
    ) -> Result<(), rk3s_datastore::Error> {
        let mut lease = self.lease.lock().await;
        if *lease == 0 {
            *lease = store.backend().lease_grant(0, RECORD_TTL_SECS).await?.id;
        }
        let value = serde_json::to_vec(&Record {
            hash: hash.to_string(),
        })
        .unwrap_or_default();
        let key = format!("{}{}", self.records_prefix(), self.settings.server);
        let put = |lease: i64| TxnRequest {
            compare: Vec::new(),
            success: vec![TxnOp::Put(PutRequest {
                key: key.clone().into_bytes(),
                value: value.clone(),
                lease,
                ..PutRequest::default()
            })],
            failure: Vec::new(),
        };
        if store.backend().txn(put(*lease)).await.is_err() {
            // The lease expired (the datastore was away longer than its TTL): a new one.
            *lease = store.backend().lease_grant(0, RECORD_TTL_SECS).await?.id;
            store.backend().txn(put(*lease)).await?;
        }
        Ok(())
    }

    async fn keep_alive(&self, store: &rk3s_datastore::Store, path: &Path) {
        let id = *self.lease.lock().await;
        let alive = id != 0 && store.backend().lease_keep_alive(id).await.is_ok();
        if !alive {
            *self.lease.lock().await = 0;
            if let Ok(config) = EncryptionConfiguration::load(path) {
                self.report(store, &config.hash()).await;
            }
        }
    }

    /// The live servers' hashes, by server name.
    async fn records(
        &self,
        store: &rk3s_datastore::Store,
    ) -> Result<Vec<(String, String)>, SecretsEncryptError> {
        let prefix = self.records_prefix();
        let found = store
            .list(prefix.as_bytes(), ListOptions::default())
            .await
            .map_err(datastore_err)?;
        Ok(found
            .kvs
            .into_iter()
            .filter_map(|kv| {
                let name = String::from_utf8_lossy(&kv.key[prefix.len()..]).into_owned();
                let record: Record = serde_json::from_slice(&kv.value).ok()?;
                Some((name, record.hash))
            })
            .collect())
    }

    /// K3s' hash check: `Ok` when every live server has loaded the same configuration, else
    /// the message naming two that differ.
    pub(crate) async fn hashes_match(
        &self,
        store: &rk3s_datastore::Store,
    ) -> Result<Result<(), String>, SecretsEncryptError> {
        let records = self.records(store).await?;
        let mut iter = records.iter();
        let Some((first, hash)) = iter.next() else {
            return Ok(Ok(()));
        };
        match iter.find(|(_, h)| h != hash) {
            Some((other, _)) => Ok(Err(format!(
                "hash does not match between {first} and {other}"
            ))),
            None => Ok(Ok(())),
        }
    }

    /// Waits until every live server has loaded the configuration with `hash`.
    pub(crate) async fn converge(
        &self,
        store: &rk3s_datastore::Store,
        hash: &str,
    ) -> Result<(), SecretsEncryptError> {
        let deadline = tokio::time::Instant::now() + CONVERGE_TIMEOUT;
        loop {
            let behind: Vec<String> = self
                .records(store)
                .await?
                .into_iter()
                .filter(|(_, h)| h != hash)
                .map(|(name, _)| name)
                .collect();
            if behind.is_empty() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(SecretsEncryptError::Refused(format!(
                    "server(s) {} have not loaded the new secrets encryption configuration \
                     within {CONVERGE_TIMEOUT:?}: nothing was re-encrypted",
                    behind.join(", ")
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Follows the key until `shutdown`: another server's change is adopted here; the hash
    /// record is kept alive. On shutdown the record is removed (its lease revoked).
    pub(crate) fn spawn(
        self: Arc<Self>,
        store: crate::storage::Store,
        path: PathBuf,
        from_revision: i64,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        tokio::spawn(async move {
            let mut from = from_revision + 1;
            let mut keepalive = tokio::time::interval(KEEPALIVE);
            'outer: loop {
                let watch = store
                    .raw()
                    .watch_prefix(self.settings.key.as_bytes(), from, false)
                    .await;
                let mut watch = match watch {
                    Ok(w) => w,
                    Err(e) => {
                        tracing::warn!(error = %e, "watching the secrets encryption configuration");
                        tokio::select! {
                            _ = shutdown.changed() => break 'outer,
                            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        }
                        from = self.resync(&store, &path).await.unwrap_or(from);
                        continue;
                    }
                };
                loop {
                    tokio::select! {
                        _ = shutdown.changed() => break 'outer,
                        _ = keepalive.tick() => self.keep_alive(store.raw(), &path).await,
                        response = watch.next() => match response {
                            Some(Ok(WatchResponse::Events { revision, events })) => {
                                for event in events {
                                    // Only the key itself (the prefix also covers the records).
                                    if event.kv.key != self.settings.key.as_bytes()
                                        || event.kind != EventKind::Put
                                        || event.kv.mod_revision <= self.rev()
                                    {
                                        continue;
                                    }
                                    let rev = event.kv.mod_revision;
                                    let adopted = match self.open(event.kv.value).await {
                                        Ok(state) => self.adopt(&store, &path, state, rev).await,
                                        Err(e) => Err(e),
                                    };
                                    if let Err(e) = adopted {
                                        tracing::error!(
                                            error = %e,
                                            "cannot apply the secrets encryption configuration \
                                             from the datastore"
                                        );
                                    }
                                }
                                from = revision + 1;
                            }
                            Some(Ok(WatchResponse::Progress { revision })) => from = revision + 1,
                            // Compacted, failed or ended: read the key again, watch from there.
                            _ => {
                                from = self.resync(&store, &path).await.unwrap_or(from);
                                continue 'outer;
                            }
                        }
                    }
                }
            }
            let id = *self.lease.lock().await;
            if id != 0 {
                let _ = store.raw().backend().lease_revoke(id).await;
            }
        });
    }

    /// Reads the key again and adopts it if it changed; the revision to watch from.
    async fn resync(&self, store: &crate::storage::Store, path: &Path) -> Option<i64> {
        match self.load(store.raw()).await {
            Ok((Some((state, rev)), revision)) => {
                if rev > self.rev()
                    && let Err(e) = self.adopt(store, path, state, rev).await
                {
                    tracing::error!(error = %e, "cannot apply the secrets encryption configuration");
                }
                Some(revision + 1)
            }
            Ok((None, revision)) => Some(revision + 1),
            Err(e) => {
                tracing::warn!(error = %e, "reading the secrets encryption configuration");
                None
            }
        }
    }
}

/// Writes `state` to the file and stage file at `path` where they differ; whether anything
/// changed.
fn adopt_files(path: &Path, state: &SharedState) -> Result<bool, SecretsEncryptError> {
    let mut changed = false;
    if EncryptionConfiguration::load(path).ok().as_ref() != Some(&state.config) {
        write_config(path, &state.config)?;
        changed = true;
    }
    if read_stage(path) != state.stage {
        write_stage(path, &state.stage)?;
        changed = true;
    }
    Ok(changed)
}
