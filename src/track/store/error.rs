//! What can go wrong with a store, each error naming the file.

use super::*;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: not an SQLite database (wrong header); expected a run store such as results/come.sqlite")]
    NotSqlite { path: PathBuf },
    #[error(
        "{path}: no run store here (run a grid into it first, or check the path given to --db)"
    )]
    Missing { path: PathBuf },
    #[error("{path}: corrupt or unreadable SQLite database: {msg}")]
    Corrupt { path: PathBuf, msg: String },
    #[error("{path}: an SQLite database of another application (application_id {found:#x}, expected {expected:#x}); refusing to use it as the run store", expected = APPLICATION_ID)]
    Foreign { path: PathBuf, found: i32 },
    #[error("{path}: store schema version {found} is newer than this binary supports ({supported}); use a newer come-repro")]
    TooNew {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    #[error("{path}: {op}: {cause}")]
    Sqlite {
        path: PathBuf,
        op: String,
        cause: rusqlite::Error,
    },
    #[error("{path}: {op}: the database stayed locked for {seconds:.0} s")]
    Busy {
        path: PathBuf,
        op: String,
        seconds: f64,
    },
    #[error("{path}: no run with id {id}")]
    NoSuchRun { path: PathBuf, id: i64 },
    #[error("{path}: run {id} is {status} (owner pid {pid:?} on {host:?}), not running under this process; it was finished, failed or taken over after a stale heartbeat")]
    NotOwner {
        path: PathBuf,
        id: i64,
        status: String,
        pid: Option<i64>,
        host: Option<String>,
    },
    #[error("{path}: {msg}")]
    Invalid { path: PathBuf, msg: String },
    /// The cause is in the message, not chained as a source: `{:#}` would print it twice.
    #[error("{path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{path}: export: {msg}")]
    Export { path: PathBuf, msg: String },
}

impl From<StoreError> for crate::error::Error {
    fn from(e: StoreError) -> Self {
        crate::error::Error::Store(Box::new(e))
    }
}

impl StoreError {
    pub(super) fn is_busy(&self) -> bool {
        match self {
            StoreError::Sqlite {
                cause: rusqlite::Error::SqliteFailure(e, _),
                ..
            } => {
                matches!(e.code, ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
            }
            _ => false,
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Corrupt / not-a-database conditions get their own error; the rest keep SQLite's.
pub(super) fn classify(path: &Path, op: &str, e: rusqlite::Error) -> StoreError {
    if let rusqlite::Error::SqliteFailure(f, msg) = &e {
        if matches!(f.code, ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) {
            return StoreError::Corrupt {
                path: path.to_path_buf(),
                msg: format!("{op}: {}", msg.clone().unwrap_or_else(|| f.to_string())),
            };
        }
    }
    StoreError::Sqlite {
        path: path.to_path_buf(),
        op: op.to_string(),
        cause: e,
    }
}
