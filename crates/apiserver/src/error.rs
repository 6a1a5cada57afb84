//! Errors of starting and running the apiserver (not the errors of API requests: those are
//! [`crate::status::ApiError`], answered to clients as `Status` objects).

use std::path::PathBuf;

/// Why the apiserver could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration value is wrong.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),

    /// The datastore could not be reached or refused a request at start.
    #[error("datastore: {0}")]
    Datastore(#[from] rk3s_datastore::Error),

    /// Reading or writing a file (certificates, keys).
    #[error("{}: {source}", path.display())]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// Generating or loading the serving certificate.
    #[error("TLS: {0}")]
    Tls(String),

    /// Binding the listening socket.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },

    /// The encryption provider configuration cannot be used, or a stored value cannot be
    /// re-encrypted.
    #[error("encryption at rest: {0}")]
    Encryption(String),

    /// Creating the bootstrap objects (the system namespaces) failed.
    #[error("bootstrap: {0}")]
    Bootstrap(String),
}

impl From<crate::storage::StoreError> for Error {
    fn from(e: crate::storage::StoreError) -> Self {
        match e {
            crate::storage::StoreError::Datastore(e) => Error::Datastore(e),
            other => Error::Encryption(other.to_string()),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
