//! [`Store`]: the datastore as the apiserver sees it — [`rk3s_datastore::Store`] with the
//! values of encrypted resources transformed on the way in and out
//! ([`crate::encryption::Transformer`]). Every read path (get, list, transactions, watches, so
//! the watch cache, RBAC cache and CRD controller too) and every write path goes through it;
//! nothing in the apiserver touches the datastore's `Store` directly.
//!
//! A value that cannot be read back (missing or wrong key) is an error naming the key, which
//! the API answers as upstream does: 500 `InternalError`. In a watch it cannot be an error
//! (the watch would end and start again forever), so the event is passed on with an empty
//! value, which the watch cache and the RBAC cache log and skip.

use std::sync::{Arc, RwLock};

use rk3s_datastore::{
    Event, KeyValue, ListOptions, RangeResponse, TxnOp, TxnOpResponse, TxnRequest, TxnResponse,
    WatchResponse, WriteOutcome,
};

use crate::encryption::{TransformError, Transformer};

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StoreError {
    #[error(transparent)]
    Datastore(#[from] rk3s_datastore::Error),
    /// A stored value could not be decrypted (upstream: `storage.NewInternalError`). `listed`:
    /// the value was read by a list, whose message names the key (upstream's wording differs
    /// between get and list).
    #[error("{}", transform_message(.key, .error, *.listed))]
    Transform {
        key: Vec<u8>,
        error: TransformError,
        listed: bool,
    },
    /// A value could not be encrypted for writing.
    #[error("unable to transform key {:?}: {error}", String::from_utf8_lossy(.key))]
    Encrypt { key: Vec<u8>, error: TransformError },
}

fn transform_message(key: &[u8], error: &TransformError, listed: bool) -> String {
    if listed {
        format!(
            "unable to transform key {:?}: {error}",
            String::from_utf8_lossy(key)
        )
    } else {
        error.to_string()
    }
}

pub(crate) type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The transformer in use, replaceable while the apiserver runs (an `Arc` swap: readers
/// take the current `Arc` and keep it for one value; [`SharedTransformer::replace`] publishes
/// a whole new one). Cheap to clone: every clone sees the same current transformer.
#[derive(Debug, Clone, Default)]
pub(crate) struct SharedTransformer(Arc<RwLock<Arc<Transformer>>>);

impl SharedTransformer {
    pub(crate) fn new(transformer: Arc<Transformer>) -> Self {
        SharedTransformer(Arc::new(RwLock::new(transformer)))
    }

    /// The current transformer.
    pub(crate) fn current(&self) -> Arc<Transformer> {
        match self.0.read() {
            Ok(t) => t.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Makes `transformer` the one every later read and write uses.
    pub(crate) fn replace(&self, transformer: Transformer) {
        let new = Arc::new(transformer);
        match self.0.write() {
            Ok(mut t) => *t = new,
            Err(poisoned) => *poisoned.into_inner() = new,
        }
    }
}

/// The datastore with encryption at rest. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Store {
    inner: rk3s_datastore::Store,
    transformer: SharedTransformer,
}

impl Store {
    pub(crate) fn new(inner: rk3s_datastore::Store, transformer: SharedTransformer) -> Self {
        Store { inner, transformer }
    }

    /// The datastore underneath (for re-encryption, which reads values as stored).
    pub(crate) fn raw(&self) -> &rk3s_datastore::Store {
        &self.inner
    }

    /// The transformer, to replace it while serving.
    pub(crate) fn transformer(&self) -> &SharedTransformer {
        &self.transformer
    }

    fn read(&self, mut kv: KeyValue, listed: bool) -> Result<KeyValue> {
        match self.decrypt(&kv.key, std::mem::take(&mut kv.value)) {
            Ok(v) => {
                kv.value = v;
                Ok(kv)
            }
            Err(error) => Err(StoreError::Transform {
                key: kv.key,
                error,
                listed,
            }),
        }
    }

    fn decrypt(&self, key: &[u8], value: Vec<u8>) -> std::result::Result<Vec<u8>, TransformError> {
        let transformer = self.transformer.current();
        if !transformer.is_enabled() && !value.starts_with(crate::encryption::ENCRYPTED_PREFIX) {
            return Ok(value);
        }
        transformer
            .transform_from_storage(key, value)
            .map(|(v, _)| v)
    }

    fn write(&self, key: &[u8], value: Vec<u8>) -> Result<Vec<u8>> {
        let transformer = self.transformer.current();
        if !transformer.is_enabled() {
            return Ok(value);
        }
        transformer
            .transform_to_storage(key, value)
            .map_err(|error| StoreError::Encrypt {
                key: key.to_vec(),
                error,
            })
    }

    fn read_range(&self, mut resp: RangeResponse) -> Result<RangeResponse> {
        resp.kvs = std::mem::take(&mut resp.kvs)
            .into_iter()
            .map(|kv| self.read(kv, true))
            .collect::<Result<_>>()?;
        Ok(resp)
    }

    fn read_outcome(&self, outcome: WriteOutcome) -> Result<WriteOutcome> {
        Ok(match outcome {
            WriteOutcome::Conflict { current: Some(kv) } => WriteOutcome::Conflict {
                current: Some(self.read(kv, false)?),
            },
            other => other,
        })
    }

    /// The store's current revision.
    pub(crate) async fn current_revision(&self) -> Result<i64> {
        Ok(self.inner.current_revision().await?)
    }

    /// One key at a revision (0: current), decrypted.
    pub(crate) async fn get(&self, key: &[u8], revision: i64) -> Result<(i64, Option<KeyValue>)> {
        let (rev, kv) = self.inner.get(key, revision).await?;
        Ok((rev, kv.map(|kv| self.read(kv, false)).transpose()?))
    }

    /// Keys starting with `prefix`, decrypted; one value that cannot be read fails the list,
    /// as upstream.
    pub(crate) async fn list(&self, prefix: &[u8], opts: ListOptions) -> Result<RangeResponse> {
        let resp = self.inner.list(prefix, opts).await?;
        self.read_range(resp)
    }

    /// Creates `key` (encrypted if its resource is) if it does not exist.
    pub(crate) async fn create(
        &self,
        key: &[u8],
        value: Vec<u8>,
        lease: i64,
    ) -> Result<WriteOutcome> {
        let value = self.write(key, value)?;
        let outcome = self.inner.create(key, value, lease).await?;
        self.read_outcome(outcome)
    }

    /// Replaces `key` if its mod revision is still `expected_mod_revision`.
    pub(crate) async fn update(
        &self,
        key: &[u8],
        value: Vec<u8>,
        expected_mod_revision: i64,
        lease: i64,
    ) -> Result<WriteOutcome> {
        let value = self.write(key, value)?;
        let outcome = self
            .inner
            .update(key, value, expected_mod_revision, lease)
            .await?;
        self.read_outcome(outcome)
    }

    /// Deletes `key` (see [`rk3s_datastore::Store::delete`]).
    pub(crate) async fn delete(
        &self,
        key: &[u8],
        expected_mod_revision: Option<i64>,
    ) -> Result<WriteOutcome> {
        let outcome = self.inner.delete(key, expected_mod_revision).await?;
        self.read_outcome(outcome)
    }

    /// A transaction: values put are encrypted, values read decrypted.
    pub(crate) async fn txn(&self, mut req: TxnRequest) -> Result<TxnResponse> {
        for op in req.success.iter_mut().chain(req.failure.iter_mut()) {
            if let TxnOp::Put(put) = op {
                put.value = self.write(&put.key, std::mem::take(&mut put.value))?;
            }
        }
        let mut resp = self.inner.backend().txn(req).await?;
        for r in resp.responses.iter_mut() {
            if let TxnOpResponse::Range(range) = r {
                *range = self.read_range(std::mem::take(range))?;
            }
        }
        Ok(resp)
    }

    /// Watches keys starting with `prefix`; values are decrypted (an undecryptable one is
    /// logged and passed on empty).
    pub(crate) async fn watch_prefix(
        &self,
        prefix: &[u8],
        start_revision: i64,
        prev_kv: bool,
    ) -> Result<Watch> {
        let inner = self
            .inner
            .watch_prefix(prefix, start_revision, prev_kv)
            .await?;
        Ok(Watch {
            inner,
            store: self.clone(),
        })
    }

    /// Whether the value stored at `key` with `mod_revision` would be stored differently if
    /// written now: read with an older key, or unencrypted where it should be (upstream's
    /// "stale" read, which makes a no-op update write again — how `kubectl replace`
    /// re-encrypts).
    pub(crate) async fn needs_rewrite(&self, key: &[u8], mod_revision: i64) -> bool {
        let transformer = self.transformer.current();
        if !transformer.is_enabled() {
            return false;
        }
        match self.inner.get(key, 0).await {
            Ok((_, Some(kv))) if kv.mod_revision == mod_revision => transformer
                .transform_from_storage(key, kv.value)
                .is_ok_and(|(_, read)| read.stale),
            _ => false,
        }
    }

    fn read_event(&self, mut ev: Event) -> Event {
        let value = std::mem::take(&mut ev.kv.value);
        ev.kv.value = self.decrypt(&ev.kv.key, value).unwrap_or_else(|e| {
            tracing::warn!(
                key = %String::from_utf8_lossy(&ev.kv.key),
                error = %e,
                "watch: cannot read a stored value"
            );
            Vec::new()
        });
        if let Some(mut prev) = ev.prev_kv.take() {
            let value = std::mem::take(&mut prev.value);
            ev.prev_kv = self.decrypt(&prev.key, value).ok().map(|v| {
                prev.value = v;
                prev
            });
        }
        ev
    }
}

/// A datastore watch whose values are decrypted.
#[derive(Debug)]
pub(crate) struct Watch {
    inner: rk3s_datastore::Watch,
    store: Store,
}

impl Watch {
    /// The next response, or `None` when the watch has ended.
    pub(crate) async fn next(&mut self) -> Option<rk3s_datastore::Result<WatchResponse>> {
        let next = self.inner.next().await?;
        Some(next.map(|resp| {
            match resp {
                WatchResponse::Events { revision, events } => WatchResponse::Events {
                    revision,
                    events: events
                        .into_iter()
                        .map(|ev| self.store.read_event(ev))
                        .collect(),
                },
                other => other,
            }
        }))
    }

    /// See [`rk3s_datastore::Watch::request_progress`].
    pub(crate) fn request_progress(&self) {
        self.inner.request_progress()
    }
}

/// What [`reencrypt`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reencrypted {
    /// Values written again with the write key of their resource.
    pub rewritten: usize,
    /// Values already stored with it.
    pub unchanged: usize,
}

/// Writes again every stored value of the resources `transformer` covers that is not stored
/// with their write key (the first provider's first key): values of older keys, and values
/// stored before encryption was turned on (or, with `identity` first, encrypted values, which
/// become plain). Each rewrite is a compare-and-swap on the key's mod revision (a new revision,
/// as upstream's rewrite through the API), retried if the key changed meanwhile. A value that
/// no configured key reads stops it with an error naming the key.
pub async fn reencrypt(
    store: &rk3s_datastore::Store,
    transformer: &Transformer,
) -> crate::Result<Reencrypted> {
    let (prefixes, custom) = transformer.prefixes();
    let prefixes = if custom {
        vec!["/registry/".to_string()]
    } else {
        prefixes
    };
    let mut done = Reencrypted::default();
    for prefix in prefixes {
        let mut after = None;
        loop {
            let page = store
                .list(
                    prefix.as_bytes(),
                    ListOptions {
                        limit: 500,
                        continue_after: after.take(),
                        ..ListOptions::default()
                    },
                )
                .await?;
            for kv in &page.kvs {
                if reencrypt_one(store, transformer, kv.clone()).await? {
                    done.rewritten += 1;
                } else {
                    done.unchanged += 1;
                }
            }
            match page.kvs.last() {
                Some(last) if page.more => after = Some(last.key.clone()),
                _ => break,
            }
        }
    }
    Ok(done)
}

/// Rewrites one key if it is stale; whether it was written.
async fn reencrypt_one(
    store: &rk3s_datastore::Store,
    transformer: &Transformer,
    mut kv: KeyValue,
) -> crate::Result<bool> {
    let key = kv.key.clone();
    let unreadable = |e: TransformError| {
        crate::Error::Encryption(format!(
            "unable to transform key {:?}: {e}",
            String::from_utf8_lossy(&key)
        ))
    };
    for _ in 0..10 {
        let (plain, read) = transformer
            .transform_from_storage(&kv.key, kv.value.clone())
            .map_err(unreadable)?;
        if !read.stale {
            return Ok(false);
        }
        let value = transformer
            .transform_to_storage(&kv.key, plain)
            .map_err(unreadable)?;
        match store
            .update(&kv.key, value, kv.mod_revision, kv.lease)
            .await?
        {
            WriteOutcome::Written { .. } => return Ok(true),
            WriteOutcome::Conflict { current: Some(c) } => kv = c,
            WriteOutcome::Conflict { current: None } => return Ok(false),
        }
    }
    Err(crate::Error::Encryption(format!(
        "key {:?} kept changing while it was re-encrypted",
        String::from_utf8_lossy(&key)
    )))
}
