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

    /// Creating the bootstrap objects (the system namespaces) failed.
    #[error("bootstrap: {0}")]
    Bootstrap(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
