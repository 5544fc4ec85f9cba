//! The library's error type. Every variant that concerns a file names it, so a user can
//! tell which input is wrong without a backtrace.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The cause is in the message, not chained as a source: `{:#}` would print it twice.
    #[error("{path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    /// The file exists but its bytes are not what the format says (truncated, corrupt).
    #[error("{path}: malformed file: {msg}")]
    Format { path: PathBuf, msg: String },
    /// A config or spec is syntactically fine but says something we cannot accept.
    #[error("{path}: invalid config: {msg}")]
    Config { path: PathBuf, msg: String },
    #[error("{path}: missing tensor `{name}`")]
    MissingTensor { path: PathBuf, name: String },
    #[error("{path}: tensor `{name}` has shape {got:?}, the config implies {want:?}")]
    Shape {
        path: PathBuf,
        name: String,
        got: Vec<i64>,
        want: Vec<i64>,
    },
    #[error("{path}: unsupported: {msg}")]
    Unsupported { path: PathBuf, msg: String },
    /// A data file (jsonl, csv, text) has a bad record; `line` is 1-based.
    #[error("{path}:{line}: {msg}")]
    Data {
        path: PathBuf,
        line: usize,
        msg: String,
    },
    #[error("tokenizer {path}: {msg}")]
    Tokenizer { path: PathBuf, msg: String },
    #[error("{0}")]
    Invalid(String),
    /// The user asked to stop (Ctrl-C); the work so far is not a result.
    #[error("interrupted")]
    Interrupted,
    #[error("torch: {0}")]
    Torch(#[from] tch::TchError),
    /// A forward did not fit in device memory, even after backing off.
    #[error("out of memory: {0}")]
    OutOfMemory(String),
    /// The disk under the calibration states' spill directory is too small (`need_mib` is
    /// 0 when it filled up during the run).
    #[error(
        "{path}: no room for the calibration states ({}{free_mib} MiB free); point COME_TMP at a directory with room, or raise COME_STATE_BUDGET_MIB to keep them in memory",
        if *need_mib > 0 { format!("{need_mib} MiB needed, ") } else { String::new() }
    )]
    NoSpace {
        path: PathBuf,
        need_mib: u64,
        free_mib: u64,
    },
    /// A remote service's error (`track::mlflow::MlflowError`), boxed like `Store`.
    #[error(transparent)]
    Remote(Box<dyn std::error::Error + Send + Sync>),
    /// The run store's error (`track::StoreError`), boxed so that this foundation type
    /// does not depend on the store.
    #[error(transparent)]
    Store(Box<dyn std::error::Error + Send + Sync>),
    /// A bug: code panicked where it should have returned an error. Caught per grid run
    /// (`panic_guard`) so one run's bug does not end the grid.
    #[error("panicked at {at}: {message}")]
    Panic { message: String, at: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().to_path_buf(),
            cause: source,
        }
    }
    pub fn format(path: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        Error::Format {
            path: path.as_ref().to_path_buf(),
            msg: msg.into(),
        }
    }
    pub fn config(path: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        Error::Config {
            path: path.as_ref().to_path_buf(),
            msg: msg.into(),
        }
    }
    pub fn unsupported(path: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        Error::Unsupported {
            path: path.as_ref().to_path_buf(),
            msg: msg.into(),
        }
    }
    pub fn data(path: impl AsRef<Path>, line: usize, msg: impl Into<String>) -> Self {
        Error::Data {
            path: path.as_ref().to_path_buf(),
            line,
            msg: msg.into(),
        }
    }
    pub fn tokenizer(path: impl AsRef<Path>, msg: impl ToString) -> Self {
        Error::Tokenizer {
            path: path.as_ref().to_path_buf(),
            msg: msg.to_string(),
        }
    }
}

/// Read a whole file, naming it in the error.
pub fn read_file(path: impl AsRef<Path>) -> Result<Vec<u8>> {
    std::fs::read(path.as_ref()).map_err(|e| Error::io(path, e))
}

pub fn read_to_string(path: impl AsRef<Path>) -> Result<String> {
    std::fs::read_to_string(path.as_ref()).map_err(|e| Error::io(path, e))
}

/// Read and parse a JSON file, naming it in the error.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    serde_json::from_str(&read_to_string(path)?).map_err(|e| Error::format(path, e.to_string()))
}
