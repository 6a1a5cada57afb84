//! Servers of one cluster share its certificate authorities through the datastore, as K3s
//! does: the first server with a `--token` stores its CA certificates and keys and the
//! service-account key, encrypted with a key derived from the token, under
//! `/bootstrap/<hash of the token>`; a server that finds that key writes those files into its
//! `<data-dir>/server/tls` before it loads the PKI, so every server trusts and issues from the
//! same CAs (its own serving and client certificates are then issued from them).
//!
//! Encryption ([`rk3s_apiserver::sealed`]): PBKDF2-HMAC-SHA256 (a random 16-byte salt) derives
//! an AES-256-GCM key from the token; the stored value is `rk3s-bootstrap-v1` | salt | nonce |
//! ciphertext+tag of a JSON map file name → contents. The key name is the first 12 hex digits of the token's
//! SHA-256, so a server with another token finds another key (and is refused: the datastore
//! holds bootstrap data it cannot read).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rk3s_apiserver::sealed::SealError;
use rk3s_datastore::{ListOptions, Store, WriteOutcome};

/// The files shared between servers (the CAs and the service-account signing key); the leaves
/// are issued by each server from them.
pub const SHARED_FILES: &[&str] = &[
    "server-ca.crt",
    "server-ca.key",
    "client-ca.crt",
    "client-ca.key",
    "request-header-ca.crt",
    "request-header-ca.key",
    "service.key",
];

/// Datastore keys of bootstrap data start with this.
pub const PREFIX: &str = "/bootstrap/";
const MAGIC: &[u8] = b"rk3s-bootstrap-v1";

/// Why the shared CA material could not be read, stored or used.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("bootstrap data in the datastore: {0}")]
    Datastore(#[from] rk3s_datastore::Error),
    #[error(
        "the datastore holds bootstrap data of a cluster with another token ({key}); start this \
         server with that cluster's --token"
    )]
    OtherToken { key: String },
    #[error(
        "the datastore holds the bootstrap data of a cluster ({key}); start this server with \
         that cluster's --token (K3S_TOKEN)"
    )]
    TokenNeeded { key: String },
    #[error(
        "bootstrap data {key} cannot be decrypted with this --token (damaged or another token)"
    )]
    Decrypt { key: String },
    #[error("bootstrap data {key} is malformed: {reason}")]
    Malformed { key: String, reason: String },
    #[error("{}: {error}", path.display())]
    File {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("encrypting the bootstrap data failed")]
    Encrypt,
}

/// What [`fetch`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fetched {
    /// The cluster's CA files were written into the TLS directory.
    Written,
    /// No server stored bootstrap data for this token yet.
    Absent,
}

/// The datastore key for `token`: `/bootstrap/<first 12 hex digits of its SHA-256>`.
pub fn key(token: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let hex: String = digest.as_ref()[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{PREFIX}{hex}")
}

/// Reads the bootstrap data for `token` and, if there is some, writes the shared files into
/// `tls_dir` (replacing what differs). Bootstrap data under another key is an error.
pub async fn fetch(store: &Store, token: &str, tls_dir: &Path) -> Result<Fetched, BootstrapError> {
    let key = key(token);
    let (_, kv) = store.get(key.as_bytes(), 0).await?;
    let Some(kv) = kv else {
        return match any_key(store).await? {
            Some(key) => Err(BootstrapError::OtherToken { key }),
            None => Ok(Fetched::Absent),
        };
    };
    let files = decrypt(&key, token, &kv.value)?;
    write_files(tls_dir, &files)?;
    Ok(Fetched::Written)
}

/// For a server without a token: an error if another server stored bootstrap data in this
/// datastore (this one would otherwise make CAs of its own, and the two would not trust each
/// other's clients).
pub async fn refuse_if_present(store: &Store) -> Result<(), BootstrapError> {
    match any_key(store).await? {
        Some(key) => Err(BootstrapError::TokenNeeded { key }),
        None => Ok(()),
    }
}

/// The first bootstrap key in the datastore, if any.
async fn any_key(store: &Store) -> Result<Option<String>, BootstrapError> {
    let found = store
        .list(
            PREFIX.as_bytes(),
            ListOptions {
                keys_only: true,
                limit: 1,
                ..ListOptions::default()
            },
        )
        .await?;
    Ok(found
        .kvs
        .first()
        .map(|kv| String::from_utf8_lossy(&kv.key).into_owned()))
}

/// Stores the shared files of `tls_dir` for `token`, unless another server stored them first:
/// then `Ok(false)`, and the caller [`fetch`]es theirs.
pub async fn store(store: &Store, token: &str, tls_dir: &Path) -> Result<bool, BootstrapError> {
    let mut files = BTreeMap::new();
    for name in SHARED_FILES {
        let path = tls_dir.join(name);
        let contents =
            std::fs::read_to_string(&path).map_err(|error| BootstrapError::File { path, error })?;
        files.insert((*name).to_string(), contents);
    }
    let value = encrypt(token, &files)?;
    match store.create(key(token).as_bytes(), value, 0).await? {
        WriteOutcome::Written { .. } => Ok(true),
        WriteOutcome::Conflict { .. } => Ok(false),
    }
}

fn write_files(tls_dir: &Path, files: &BTreeMap<String, String>) -> Result<(), BootstrapError> {
    let err = |path: &Path| {
        let path = path.to_path_buf();
        move |error| BootstrapError::File { path, error }
    };
    std::fs::create_dir_all(tls_dir).map_err(err(tls_dir))?;
    for name in SHARED_FILES {
        let Some(contents) = files.get(*name) else {
            continue;
        };
        let path = tls_dir.join(name);
        if std::fs::read_to_string(&path).is_ok_and(|have| &have == contents) {
            continue;
        }
        let mode = if name.ends_with(".key") { 0o600 } else { 0o644 };
        crate::kubeconfig::write(&path, contents, mode).map_err(|e| BootstrapError::File {
            path: e.path,
            error: e.error,
        })?;
        tracing::info!(file = %path.display(), "using the cluster's shared certificate material");
    }
    Ok(())
}

fn encrypt(token: &str, files: &BTreeMap<String, String>) -> Result<Vec<u8>, BootstrapError> {
    let data = serde_json::to_vec(files).map_err(|_| BootstrapError::Encrypt)?;
    rk3s_apiserver::sealed::seal(MAGIC, token, &data).map_err(|_| BootstrapError::Encrypt)
}

fn decrypt(
    key: &str,
    token: &str,
    value: &[u8],
) -> Result<BTreeMap<String, String>, BootstrapError> {
    let malformed = |reason: &str| BootstrapError::Malformed {
        key: key.to_string(),
        reason: reason.to_string(),
    };
    let plain = rk3s_apiserver::sealed::open(MAGIC, token, value).map_err(|e| match e {
        SealError::Decrypt => BootstrapError::Decrypt {
            key: key.to_string(),
        },
        SealError::Malformed(reason) => malformed(reason),
        SealError::Encrypt => BootstrapError::Encrypt,
    })?;
    serde_json::from_slice(&plain).map_err(|e| malformed(&e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_wrong_token() {
        let files: BTreeMap<String, String> =
            [("server-ca.crt".to_string(), "PEM".to_string())].into();
        let sealed = encrypt("secret", &files).expect("encrypt");
        assert!(!sealed.windows(3).any(|w| w == b"PEM"), "plaintext visible");
        assert_eq!(decrypt("k", "secret", &sealed).expect("decrypt"), files);
        assert!(matches!(
            decrypt("k", "other", &sealed),
            Err(BootstrapError::Decrypt { .. })
        ));
        assert!(matches!(
            decrypt("k", "secret", b"garbage"),
            Err(BootstrapError::Malformed { .. })
        ));
    }

    #[test]
    fn key_names_hide_the_token() {
        let k = key("secret");
        assert!(k.starts_with(PREFIX) && k.len() == PREFIX.len() + 12, "{k}");
        assert!(!k.contains("secret"));
        assert_ne!(k, key("secret2"));
    }
}
