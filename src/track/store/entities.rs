//! What the store holds, as plain data: a run's status and row, metrics, per-document
//! scores, artifacts (with their content hashes), stage records, filters and diffs.

use super::*;

pub use crate::measure::kinds;

/// Life cycle of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pending,
    Running,
    Finished,
    Failed,
    Interrupted,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Running => "running",
            Status::Finished => "finished",
            Status::Failed => "failed",
            Status::Interrupted => "interrupted",
        }
    }
    pub fn parse(s: &str) -> Option<Status> {
        Some(match s {
            "pending" => Status::Pending,
            "running" => Status::Running,
            "finished" => Status::Finished,
            "failed" => Status::Failed,
            "interrupted" => Status::Interrupted,
            _ => return None,
        })
    }
}

/// What [`Store::claim`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// This process owns the run now: execute it, then `finish` / `fail` / `interrupt`.
    Run(i64),
    /// Already finished (and not forced).
    Skip(i64),
    /// Failed in an earlier attempt, with its error: not retried unless forced or put
    /// back with [`Store::requeue_failed`] (`grid --retry-failed`).
    Failed { id: i64, error: Option<String> },
    /// Another live process is running it.
    Busy {
        id: i64,
        pid: Option<i64>,
        host: Option<String>,
    },
}

pub use crate::measure::{DocScore, Metric};

/// A file (or directory) a run produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    pub path: String,
    pub sha256: String,
    pub kind: String,
    pub bytes: Option<i64>,
}

impl Artifact {
    /// Hash a file, or a directory (sha256 over `relative-path sha256\n` lines of its files
    /// in sorted order), and record its size in bytes.
    pub fn from_path(path: impl AsRef<Path>, kind: impl Into<String>) -> Result<Artifact> {
        let path = path.as_ref();
        let (sha256, bytes) = if path.is_dir() {
            hash_dir(path)?
        } else {
            hash_file(path)?
        };
        Ok(Artifact {
            path: path.to_string_lossy().into_owned(),
            sha256,
            kind: kind.into(),
            bytes: Some(bytes),
        })
    }
}

/// sha256 (hex) and length of a file, streamed.
pub fn hash_file(path: &Path) -> Result<(String, i64)> {
    let (sha, n) = crate::hashing::sha256_file(path).map_err(|e| StoreError::Io {
        path: path.to_path_buf(),
        cause: e,
    })?;
    Ok((sha, n as i64))
}

pub(super) fn hash_dir(dir: &Path) -> Result<(String, i64)> {
    let (sha, n) = crate::hashing::sha256_dir(dir, |_| true).map_err(|e| StoreError::Io {
        path: dir.to_path_buf(),
        cause: e,
    })?;
    Ok((sha, n as i64))
}

/// Stage bookkeeping, so that shared work (e.g. one pruned checkpoint evaluated several
/// ways) can be found by its cache key and reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StageStatus {
    Running,
    Finished,
    Failed,
    /// Taken from another run's finished stage with the same cache key.
    Reused,
}

impl StageStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            StageStatus::Running => "running",
            StageStatus::Finished => "finished",
            StageStatus::Failed => "failed",
            StageStatus::Reused => "reused",
        }
    }
    pub(super) fn parse(s: &str) -> StageStatus {
        match s {
            "running" => StageStatus::Running,
            "finished" => StageStatus::Finished,
            "reused" => StageStatus::Reused,
            _ => StageStatus::Failed,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageRecord {
    pub stage: String,
    pub status: StageStatus,
    pub seconds: Option<f64>,
    /// Identity of the stage's output (e.g. `Experiment::prune_hash`).
    pub cache_key: Option<String>,
    /// Where the output lives (e.g. the pruned checkpoint directory).
    pub output: Option<String>,
}

/// One row of `runs`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunRow {
    pub id: i64,
    pub hash: String,
    pub name: String,
    pub subgrid: String,
    pub status: Status,
    /// The canonical Experiment JSON.
    pub config: Value,
    pub created: String,
    pub started: Option<String>,
    pub finished: Option<String>,
    pub heartbeat: Option<String>,
    pub error: Option<String>,
    pub pid: Option<i64>,
    pub host: Option<String>,
    pub attempts: i64,
    /// The identity recipe `hash` was computed with ([`crate::experiment::IDENTITY_VERSION`]
    /// when this binary registered it).
    pub identity_version: i64,
}

/// Selects runs in [`Store::runs`]; empty fields match everything.
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    pub status: Option<Status>,
    /// Matches runs whose comma-separated sub-grid list contains this name.
    pub subgrid: Option<String>,
    pub name_contains: Option<String>,
    pub hash_prefix: Option<String>,
}

/// What differs between two runs (entries equal in both are left out).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunDiff {
    pub a: i64,
    pub b: i64,
    /// (key, value in a, value in b); None where the key is absent.
    pub params: Vec<(String, Option<Value>, Option<Value>)>,
    /// (metric key, value in a, value in b).
    pub metrics: Vec<(String, Option<f64>, Option<f64>)>,
}
