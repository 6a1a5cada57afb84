//! Errors of the datastore.

/// Everything that can go wrong in the store. The variants that a client can act on are
/// distinct (compacted, future revision, lease not found, bad request); backend failures keep
/// the endpoint they were about.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The revision asked for has been compacted away.
    #[error(
        "required revision {requested} has been compacted (compact revision {compact_revision})"
    )]
    Compacted {
        requested: i64,
        compact_revision: i64,
    },

    /// The revision asked for is newer than the store's.
    #[error("required revision {requested} is a future revision (current revision {current})")]
    FutureRevision { requested: i64, current: i64 },

    #[error("lease {0:x} not found")]
    LeaseNotFound(i64),

    #[error("lease {0:x} already exists")]
    LeaseExists(i64),

    /// A request the store understands but refuses (a duplicate key in one transaction, say).
    #[error("invalid request: {0}")]
    InvalidRequest(String),

    /// A request the store does not implement. Never answered silently wrong.
    #[error("unsupported request: {0}")]
    Unsupported(String),

    /// The `--datastore-endpoint` could not be understood.
    #[error("invalid datastore endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint { endpoint: String, reason: String },

    /// The backend could not be reached or refused to connect.
    #[error("cannot connect to datastore {endpoint}: {source}")]
    Connect {
        endpoint: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// A SQL statement failed.
    #[error("{backend} datastore: {source}")]
    Sql {
        backend: &'static str,
        #[source]
        source: sqlx::Error,
    },

    /// The etcd backend answered with an error.
    #[error("etcd datastore: {0}")]
    Etcd(#[from] etcd_client::Error),

    /// The store has been closed.
    #[error("datastore is closed")]
    Closed,

    /// Something that must not happen, with what was seen.
    #[error("internal datastore error: {0}")]
    Internal(String),
}

impl Error {
    /// Whether retrying the same request later may succeed (a lost connection, a busy database).
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Sql { source, .. } => is_transient_sql(source),
            Error::Connect { .. } => true,
            Error::Etcd(etcd_client::Error::GRpcStatus(status)) => matches!(
                status.code(),
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Aborted
            ),
            Error::Etcd(etcd_client::Error::TransportError(_)) => true,
            _ => false,
        }
    }
}

/// Whether a SQL error is worth a retry: the connection broke or the database asked us to try
/// again (serialization failure, deadlock, lock wait timeout, SQLITE_BUSY).
pub(crate) fn is_transient_sql(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => true,
        sqlx::Error::Protocol(_) | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            matches!(
                code.as_ref(),
                // Postgres: serialization_failure, deadlock_detected, admin/crash shutdown,
                // cannot_connect_now.
                "40001" | "40P01" | "57P01" | "57P02" | "57P03"
                // MySQL/MariaDB deadlocks are 40001 too; lock wait timeouts only say so in text.
                // SQLite: SQLITE_BUSY, SQLITE_LOCKED and their extended codes.
                | "5" | "6" | "261" | "517" | "262"
            ) || db.message().contains("Deadlock found")
                || db.message().contains("Lock wait timeout")
        }
        _ => false,
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
