//! The run store: one SQLite file (default `results/come.sqlite`) shared by every process
//! that runs a grid.
//!
//! Schema (version 2; `PRAGMA user_version`, `PRAGMA application_id` = [`APPLICATION_ID`]):
//!
//! | table | columns |
//! |---|---|
//! | `runs` | `id` pk, `hash` unique, `name`, `subgrid`, `status` (pending, running, finished, failed, interrupted), `config` (canonical JSON of the Experiment), `created` / `started` / `finished` / `heartbeat` (RFC 3339 UTC), `error`, `pid`, `host` (the owner while running), `attempts` |
//! | `params` | `run_id`, `key` (dotted path), `value` (JSON) |
//! | `metrics` | `run_id`, `task`, `name`, `value`, `stderr`, `context`, `step`; unique per (run, task, name, context, step). Naming: [`crate::names`] |
//! | `artifacts` | `run_id`, `path`, `sha256`, `kind` (see [`kinds`]), `bytes` |
//! | `environment` | `run_id`, `key`, `value` |
//! | `stages` | `run_id`, `stage`, `status`, `seconds`, `cache_key`, `output`, `updated` |
//! | `docs` (v2) | `run_id`, `task`, `doc_id`, `acc`, `acc_norm`: each scored document's correctness, for paired comparisons of two runs on the same items |
//!
//! Concurrency: WAL journal, a busy timeout, every write in one `BEGIN IMMEDIATE`
//! transaction and a retry loop with jittered back-off on `SQLITE_BUSY`, so several
//! processes can claim and finish runs on one file. A run is claimed atomically
//! ([`Store::claim`]) and finished atomically ([`Store::finish`]: metrics, artifacts and
//! the status in one transaction, so a run is never finished with partial metrics).
//!
//! Ownership: a claimed run records the claiming pid and host and a heartbeat the runner
//! refreshes ([`Store::heartbeat`], e.g. every minute). A `running` run whose process is
//! gone (pid not alive on this host) or whose heartbeat is older than
//! [`Store::stale_after`] counts as interrupted: [`Store::claim`] takes it over and
//! [`Store::reap_stale`] marks it.

use crate::experiment::RunSpec;
use crate::hashing::canonical_json;
use crate::rng::SplitMix64;
use polars::prelude::*;
use rusqlite::{
    params, Connection, ErrorCode, OptionalExtension, Transaction, TransactionBehavior,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// `PRAGMA application_id` of a run store ("CoMe" in ASCII).
pub const APPLICATION_ID: i32 = 0x436F_4D65;
/// The schema version this binary writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;
/// Default store location, relative to the project root.
pub const DEFAULT_PATH: &str = "results/come.sqlite";

/// Forward migrations: entry `i` upgrades version `i` to `i + 1`. Append, never edit.
const MIGRATIONS: &[&str] = &[
    // v1
    "CREATE TABLE runs (
        id INTEGER PRIMARY KEY,
        hash TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL,
        subgrid TEXT NOT NULL DEFAULT '',
        status TEXT NOT NULL CHECK (status IN ('pending','running','finished','failed','interrupted')),
        config TEXT NOT NULL,
        created TEXT NOT NULL,
        started TEXT,
        finished TEXT,
        heartbeat TEXT,
        error TEXT,
        pid INTEGER,
        host TEXT,
        attempts INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX runs_status ON runs(status);
    CREATE TABLE params (
        run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (run_id, key)
    );
    CREATE TABLE metrics (
        id INTEGER PRIMARY KEY,
        run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        task TEXT NOT NULL DEFAULT '',
        name TEXT NOT NULL,
        value REAL NOT NULL,
        stderr REAL,
        context TEXT NOT NULL DEFAULT '',
        step INTEGER NOT NULL DEFAULT 0,
        UNIQUE (run_id, task, name, context, step)
    );
    CREATE TABLE artifacts (
        run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        path TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        kind TEXT NOT NULL,
        bytes INTEGER,
        PRIMARY KEY (run_id, path)
    );
    CREATE TABLE environment (
        run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (run_id, key)
    );
    CREATE TABLE stages (
        run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        stage TEXT NOT NULL,
        status TEXT NOT NULL,
        seconds REAL,
        cache_key TEXT,
        output TEXT,
        updated TEXT NOT NULL,
        PRIMARY KEY (run_id, stage)
    );
    CREATE INDEX stages_cache ON stages(stage, cache_key);",
    // v2: per-document correctness (paired tests between runs).
    "CREATE TABLE docs (
        run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        task TEXT NOT NULL,
        doc_id INTEGER NOT NULL,
        acc REAL NOT NULL,
        acc_norm REAL NOT NULL,
        PRIMARY KEY (run_id, task, doc_id)
    );",
];

/// Artifact kinds the runner records.
pub mod kinds {
    pub const PRUNED_CHECKPOINT: &str = "pruned-checkpoint";
    pub const COME_JSON: &str = "come.json";
    pub const DISTILL_JSON: &str = "distill.json";
    pub const RESULTS_JSON: &str = "results.json";
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: not an SQLite database (wrong header); expected a run store such as results/come.sqlite")]
    NotSqlite { path: PathBuf },
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
    fn is_busy(&self) -> bool {
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

/// One scored document of a task: 1.0 where the gold answer won (acc) and where it won
/// by length-normalised likelihood (acc_norm), else 0.0.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DocScore {
    pub task: String,
    pub doc_id: i64,
    pub acc: f64,
    pub acc_norm: f64,
}

/// One measurement; naming in [`crate::names`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metric {
    /// lm-eval task name, a corpus for perplexities, or "" for whole-run measurements.
    pub task: String,
    pub name: String,
    pub value: f64,
    pub stderr: Option<f64>,
    /// Free-form qualifier, e.g. "n=100" or "dense".
    pub context: String,
    /// For curves (distillation steps); 0 otherwise.
    pub step: i64,
}

impl Metric {
    pub fn new(task: impl Into<String>, name: impl Into<String>, value: f64) -> Metric {
        Metric {
            task: task.into(),
            name: name.into(),
            value,
            stderr: None,
            context: String::new(),
            step: 0,
        }
    }
    pub fn with_stderr(mut self, stderr: f64) -> Metric {
        self.stderr = Some(stderr);
        self
    }
    pub fn with_context(mut self, context: impl Into<String>) -> Metric {
        self.context = context.into();
        self
    }
    pub fn with_step(mut self, step: i64) -> Metric {
        self.step = step;
        self
    }
    /// `task/name[context]@step` (empty parts left out): a stable label for diffs.
    pub fn key(&self) -> String {
        let mut k = if self.task.is_empty() {
            self.name.clone()
        } else {
            format!("{}/{}", self.task, self.name)
        };
        if !self.context.is_empty() {
            k.push_str(&format!("[{}]", self.context));
        }
        if self.step != 0 {
            k.push_str(&format!("@{}", self.step));
        }
        k
    }
}

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
    let io = |e| StoreError::Io {
        path: path.to_path_buf(),
        cause: e,
    };
    let mut f = std::fs::File::open(path).map_err(io)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n: i64 = 0;
    loop {
        let k = f.read(&mut buf).map_err(io)?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as i64;
    }
    Ok((hex::encode(h.finalize()), n))
}

fn hash_dir(dir: &Path) -> Result<(String, i64)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
        for e in std::fs::read_dir(dir)? {
            let p = e?.path();
            if p.is_dir() {
                walk(&p, out)?;
            } else {
                out.push(p);
            }
        }
        Ok(())
    }
    let mut files = Vec::new();
    walk(dir, &mut files).map_err(|e| StoreError::Io {
        path: dir.to_path_buf(),
        cause: e,
    })?;
    files.sort();
    let mut h = Sha256::new();
    let mut total = 0;
    for f in files {
        let (s, n) = hash_file(&f)?;
        let rel = f
            .strip_prefix(dir)
            .unwrap_or(&f)
            .to_string_lossy()
            .into_owned();
        h.update(format!("{rel} {s}\n").as_bytes());
        total += n;
    }
    Ok((hex::encode(h.finalize()), total))
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
    fn parse(s: &str) -> StageStatus {
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

/// An open run store. Not `Sync`: open one per thread or process.
pub struct Store {
    conn: Connection,
    path: PathBuf,
    pid: i64,
    host: String,
    stale_after: Duration,
    busy_limit: Duration,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path)
            .field("pid", &self.pid)
            .field("host", &self.host)
            .finish()
    }
}

const SQLITE_HEADER: &[u8; 16] = b"SQLite format 3\0";

impl Store {
    /// Open (creating it and its directory if needed) and upgrade a store. A file that is
    /// not SQLite, is corrupt, belongs to another application, or has a newer schema is a
    /// clear error naming the file.
    pub fn open(path: impl AsRef<Path>) -> Result<Store> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::Io {
                path: dir.to_path_buf(),
                cause: e,
            })?;
        }
        match std::fs::metadata(&path) {
            Ok(m) if m.is_dir() => {
                return Err(StoreError::Invalid {
                    path,
                    msg: "is a directory, expected an SQLite file".into(),
                })
            }
            Ok(m) if m.len() > 0 => {
                let mut head = [0u8; 16];
                let mut f = std::fs::File::open(&path).map_err(|e| StoreError::Io {
                    path: path.clone(),
                    cause: e,
                })?;
                let n = read_up_to(&mut f, &mut head).map_err(|e| StoreError::Io {
                    path: path.clone(),
                    cause: e,
                })?;
                if n < 16 || &head != SQLITE_HEADER {
                    return Err(StoreError::NotSqlite { path });
                }
            }
            _ => {}
        }
        let conn = Connection::open(&path).map_err(|e| classify(&path, "open", e))?;
        let store = Store {
            conn,
            path,
            pid: i64::from(std::process::id()),
            host: super::env::hostname(),
            stale_after: Duration::from_secs(10 * 60),
            busy_limit: Duration::from_secs(120),
        };
        store
            .conn
            .busy_timeout(Duration::from_secs(5))
            .map_err(|e| store.err("busy_timeout", e))?;
        store.init()?;
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A running run whose heartbeat is older than this counts as interrupted (default
    /// 10 minutes).
    pub fn stale_after(&self) -> Duration {
        self.stale_after
    }
    pub fn set_stale_after(&mut self, d: Duration) {
        self.stale_after = d;
    }
    /// How long a write keeps retrying while the database is locked (default 120 s).
    pub fn set_busy_limit(&mut self, d: Duration) {
        self.busy_limit = d;
    }

    fn err(&self, op: &str, e: rusqlite::Error) -> StoreError {
        classify(&self.path, op, e)
    }

    // For sibling modules that extend the store (merge).
    pub(super) fn sql_err(&self, op: &str, e: rusqlite::Error) -> StoreError {
        self.err(op, e)
    }
    pub(super) fn connection(&self) -> &Connection {
        &self.conn
    }
    pub(super) fn write_tx<T>(
        &self,
        op: &str,
        f: impl FnMut(&Transaction) -> Result<T>,
    ) -> Result<T> {
        self.write(op, f)
    }

    fn init(&self) -> Result<()> {
        // One read transaction, so that a concurrent first-time migration is seen whole.
        let (app, version, tables) = self.retry("read the store header", |c| {
            let tx = Transaction::new_unchecked(c, TransactionBehavior::Deferred)
                .map_err(|e| self.err("read the store header", e))?;
            let id = self.identity(&tx)?;
            tx.commit()
                .map_err(|e| self.err("read the store header", e))?;
            Ok(id)
        })?;
        self.check_identity(app, version, tables)?;
        self.retry("enable WAL", |c| {
            c.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get::<_, String>(0))
                .map_err(|e| self.err("enable WAL", e))
        })?;
        self.conn
            .pragma_update(None, "foreign_keys", "ON")
            .map_err(|e| self.err("enable foreign keys", e))?;
        if version < SCHEMA_VERSION {
            self.write("migrate", |tx| {
                // Re-read inside the lock: another process may have migrated meanwhile.
                let (app, v, tables) = self.identity(tx)?;
                self.check_identity(app, v, tables)?;
                for (i, sql) in MIGRATIONS
                    .iter()
                    .enumerate()
                    .skip(usize::try_from(v).unwrap_or(0))
                {
                    tx.execute_batch(sql).map_err(|e| {
                        self.err(&format!("migrate to schema version {}", i + 1), e)
                    })?;
                }
                tx.pragma_update(None, "user_version", SCHEMA_VERSION)
                    .map_err(|e| self.err("migrate", e))?;
                tx.pragma_update(None, "application_id", APPLICATION_ID)
                    .map_err(|e| self.err("migrate", e))?;
                Ok(())
            })?;
        }
        Ok(())
    }

    /// (application_id, user_version, number of schema objects).
    fn identity(&self, c: &Connection) -> Result<(i32, i64, i64)> {
        let e = |e| self.err("read the store header", e);
        let app: i32 = c
            .pragma_query_value(None, "application_id", |r| r.get(0))
            .map_err(e)?;
        let version: i64 = c
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(e)?;
        let tables: i64 = c
            .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
            .map_err(e)?;
        Ok((app, version, tables))
    }

    /// A run store, or an empty file that becomes one; anything else is refused.
    fn check_identity(&self, app: i32, version: i64, tables: i64) -> Result<()> {
        let fresh = app == 0 && version == 0 && tables == 0;
        if app != APPLICATION_ID && !fresh {
            return Err(StoreError::Foreign {
                path: self.path.clone(),
                found: app,
            });
        }
        if version > SCHEMA_VERSION {
            return Err(StoreError::TooNew {
                path: self.path.clone(),
                found: version,
                supported: SCHEMA_VERSION,
            });
        }
        Ok(())
    }

    /// Run `f`, retrying with jittered back-off while SQLite reports busy/locked.
    fn retry<T>(&self, op: &str, mut f: impl FnMut(&Connection) -> Result<T>) -> Result<T> {
        let t0 = Instant::now();
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos() as u64);
        let mut rng = SplitMix64::new(nanos ^ (self.pid as u64).rotate_left(32));
        let mut wait_ms = 5u64;
        loop {
            match f(&self.conn) {
                Err(e) if e.is_busy() => {
                    if t0.elapsed() >= self.busy_limit {
                        return Err(StoreError::Busy {
                            path: self.path.clone(),
                            op: op.to_string(),
                            seconds: t0.elapsed().as_secs_f64(),
                        });
                    }
                    std::thread::sleep(Duration::from_millis(wait_ms + rng.below(wait_ms)));
                    wait_ms = (wait_ms * 2).min(500);
                }
                other => return other,
            }
        }
    }

    /// One `BEGIN IMMEDIATE` transaction (all or nothing), retried while busy.
    fn write<T>(&self, op: &str, mut f: impl FnMut(&Transaction) -> Result<T>) -> Result<T> {
        self.retry(op, |c| {
            let tx = Transaction::new_unchecked(c, TransactionBehavior::Immediate)
                .map_err(|e| self.err(op, e))?;
            let v = f(&tx)?;
            tx.commit().map_err(|e| self.err(op, e))?;
            Ok(v)
        })
    }

    /// Add runs as `pending` (those not yet in the store); returns how many were added.
    pub fn register(&self, runs: &[RunSpec]) -> Result<usize> {
        self.write("register runs", |tx| {
            let mut added = 0;
            for r in runs {
                let exists: Option<i64> = tx
                    .query_row("SELECT id FROM runs WHERE hash = ?1", [&r.hash], |row| {
                        row.get(0)
                    })
                    .optional()
                    .map_err(|e| self.err("register runs", e))?;
                if exists.is_none() {
                    self.insert_run(tx, r, Status::Pending)?;
                    added += 1;
                }
            }
            Ok(added)
        })
    }

    fn insert_run(&self, tx: &Transaction, r: &RunSpec, status: Status) -> Result<i64> {
        let e = |e| self.err("insert run", e);
        let now = now_rfc3339();
        let running = status == Status::Running;
        tx.execute(
            "INSERT INTO runs (hash, name, subgrid, status, config, created, started, heartbeat, pid, host, attempts)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7, ?8, ?9, ?10)",
            params![
                r.hash,
                r.name,
                r.subgrid,
                status.as_str(),
                canonical_json(&r.experiment.to_value()),
                now,
                running.then_some(&now),
                running.then_some(self.pid),
                running.then_some(&self.host),
                i64::from(running),
            ],
        )
        .map_err(e)?;
        let id = tx.last_insert_rowid();
        let mut st = tx
            .prepare_cached("INSERT INTO params (run_id, key, value) VALUES (?1, ?2, ?3)")
            .map_err(e)?;
        for (k, v) in r.params() {
            st.execute(params![id, k, v.to_string()]).map_err(e)?;
        }
        Ok(id)
    }

    /// Claim a run atomically: `Skip` if it is finished and `Failed` if it failed (unless
    /// `force`), `Busy` if a live process runs it, else mark it `running` under this
    /// pid/host and return `Run(id)`. Interrupted, pending and abandoned runs (owner gone or
    /// heartbeat stale) are re-claimed; a re-claimed run loses the metrics and artifacts of
    /// earlier attempts.
    pub fn claim(&self, run: &RunSpec, force: bool) -> Result<Claim> {
        self.write("claim run", |tx| {
            let e = |e| self.err("claim run", e);
            type Row = (i64, String, Option<i64>, Option<String>, Option<String>, Option<String>);
            let row: Option<Row> = tx
                .query_row("SELECT id, status, pid, host, heartbeat, error FROM runs WHERE hash = ?1", [&run.hash], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?))
                })
                .optional()
                .map_err(e)?;
            let Some((id, status, pid, host, heartbeat, error)) = row else {
                return Ok(Claim::Run(self.insert_run(tx, run, Status::Running)?));
            };
            match Status::parse(&status) {
                Some(Status::Finished) if !force => return Ok(Claim::Skip(id)),
                Some(Status::Failed) if !force => return Ok(Claim::Failed { id, error }),
                Some(Status::Running) if self.owner_alive(pid, host.as_deref(), heartbeat.as_deref()) => {
                    return Ok(Claim::Busy { id, pid, host })
                }
                _ => {}
            }
            let now = now_rfc3339();
            tx.execute(
                "UPDATE runs SET status = 'running', name = ?2, subgrid = ?3, started = ?4, heartbeat = ?4,
                 finished = NULL, error = NULL, pid = ?5, host = ?6, attempts = attempts + 1 WHERE id = ?1",
                params![id, run.name, run.subgrid, now, self.pid, self.host],
            )
            .map_err(e)?;
            for t in ["metrics", "artifacts", "docs"] {
                tx.execute(&format!("DELETE FROM {t} WHERE run_id = ?1"), [id])
                    .map_err(e)?;
            }
            Ok(Claim::Run(id))
        })
    }

    fn owner_alive(&self, pid: Option<i64>, host: Option<&str>, heartbeat: Option<&str>) -> bool {
        let fresh = heartbeat
            .and_then(parse_rfc3339_ms)
            .is_some_and(|t| now_ms().saturating_sub(t) < self.stale_after.as_millis() as i64);
        if !fresh {
            return false;
        }
        match (pid, host) {
            (Some(p), Some(h)) if h == self.host => pid_alive(p),
            _ => true,
        }
    }

    /// Mark every `running` run whose owner is gone or silent as `interrupted`; returns
    /// their ids.
    pub fn reap_stale(&self) -> Result<Vec<i64>> {
        self.write("reap stale runs", |tx| {
            let e = |e| self.err("reap stale runs", e);
            let mut st = tx.prepare("SELECT id, pid, host, heartbeat FROM runs WHERE status = 'running'").map_err(e)?;
            type Owner = (i64, Option<i64>, Option<String>, Option<String>);
            let rows: Vec<Owner> = st
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                .map_err(e)?
                .collect::<std::result::Result<_, _>>()
                .map_err(e)?;
            let mut out = Vec::new();
            for (id, pid, host, hb) in rows {
                if !self.owner_alive(pid, host.as_deref(), hb.as_deref()) {
                    tx.execute(
                        "UPDATE runs SET status = 'interrupted', finished = ?2, error = 'owner process gone or heartbeat stale' WHERE id = ?1",
                        params![id, now_rfc3339()],
                    )
                    .map_err(e)?;
                    out.push(id);
                }
            }
            Ok(out)
        })
    }

    /// The run must be `running` under this process.
    fn check_owner(&self, tx: &Transaction, id: i64, op: &str) -> Result<()> {
        let row: Option<(String, Option<i64>, Option<String>)> = tx
            .query_row(
                "SELECT status, pid, host FROM runs WHERE id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .map_err(|e| self.err(op, e))?;
        match row {
            None => Err(StoreError::NoSuchRun {
                path: self.path.clone(),
                id,
            }),
            Some((s, pid, host))
                if s == "running"
                    && pid == Some(self.pid)
                    && host.as_deref() == Some(self.host.as_str()) =>
            {
                Ok(())
            }
            Some((status, pid, host)) => Err(StoreError::NotOwner {
                path: self.path.clone(),
                id,
                status,
                pid,
                host,
            }),
        }
    }

    /// Refresh the heartbeat of a run this process owns.
    pub fn heartbeat(&self, id: i64) -> Result<()> {
        self.write("heartbeat", |tx| {
            self.check_owner(tx, id, "heartbeat")?;
            tx.execute(
                "UPDATE runs SET heartbeat = ?2 WHERE id = ?1",
                params![id, now_rfc3339()],
            )
            .map_err(|e| self.err("heartbeat", e))?;
            Ok(())
        })
    }

    /// Record metrics and artifacts and mark the run finished, in one transaction: on any
    /// error nothing is written and the run stays `running`. A NaN value is refused (before
    /// anything is written); infinite values (a diverged perplexity) are kept; a
    /// non-finite standard error is stored as missing.
    pub fn finish(&self, id: i64, metrics: &[Metric], artifacts: &[Artifact]) -> Result<()> {
        self.finish_scored(id, metrics, artifacts, &[])
    }

    /// [`Store::finish`] with the run's per-document scores, in the same transaction.
    pub fn finish_scored(
        &self,
        id: i64,
        metrics: &[Metric],
        artifacts: &[Artifact],
        docs: &[DocScore],
    ) -> Result<()> {
        if let Some(m) = metrics.iter().find(|m| m.value.is_nan()) {
            return Err(StoreError::Invalid {
                path: self.path.clone(),
                msg: format!("run {id}: metric {} is NaN, not a number", m.key()),
            });
        }
        self.write("finish run", |tx| {
            let e = |e| self.err("finish run", e);
            self.check_owner(tx, id, "finish run")?;
            for t in ["metrics", "artifacts", "docs"] {
                tx.execute(&format!("DELETE FROM {t} WHERE run_id = ?1"), [id])
                    .map_err(e)?;
            }
            let mut st = tx
                .prepare_cached(
                    "INSERT INTO docs (run_id, task, doc_id, acc, acc_norm) VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .map_err(e)?;
            for d in docs {
                st.execute(params![id, d.task, d.doc_id, d.acc, d.acc_norm])
                    .map_err(e)?;
            }
            let mut st = tx
                .prepare_cached(
                    "INSERT INTO metrics (run_id, task, name, value, stderr, context, step) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )
                .map_err(e)?;
            for m in metrics {
                let stderr = m.stderr.filter(|x| x.is_finite());
                st.execute(params![id, m.task, m.name, m.value, stderr, m.context, m.step]).map_err(e)?;
            }
            let mut st = tx
                .prepare_cached("INSERT INTO artifacts (run_id, path, sha256, kind, bytes) VALUES (?1, ?2, ?3, ?4, ?5)")
                .map_err(e)?;
            for a in artifacts {
                st.execute(params![id, a.path, a.sha256, a.kind, a.bytes]).map_err(e)?;
            }
            tx.execute(
                "UPDATE runs SET status = 'finished', finished = ?2, heartbeat = ?2, error = NULL WHERE id = ?1",
                params![id, now_rfc3339()],
            )
            .map_err(e)?;
            Ok(())
        })
    }

    fn end(&self, id: i64, status: Status, error: Option<&str>) -> Result<()> {
        let op = format!("mark run {}", status.as_str());
        self.write(&op, |tx| {
            self.check_owner(tx, id, &op)?;
            tx.execute(
                "UPDATE runs SET status = ?2, finished = ?3, error = ?4 WHERE id = ?1",
                params![id, status.as_str(), now_rfc3339(), error],
            )
            .map_err(|e| self.err(&op, e))?;
            Ok(())
        })
    }

    /// Put the failed runs among `hashes` back to `pending` (their error stays until they
    /// are claimed), so the next claims retry them; returns how many.
    pub fn requeue_failed(&self, hashes: &[String]) -> Result<usize> {
        self.write("requeue failed runs", |tx| {
            let e = |e| self.err("requeue failed runs", e);
            let mut st = tx
                .prepare_cached(
                    "UPDATE runs SET status = 'pending' WHERE hash = ?1 AND status = 'failed'",
                )
                .map_err(e)?;
            let mut n = 0;
            for h in hashes {
                n += st.execute([h]).map_err(e)?;
            }
            Ok(n)
        })
    }

    /// Mark a run this process owns as failed, with the error text.
    pub fn fail(&self, id: i64, error: &str) -> Result<()> {
        self.end(id, Status::Failed, Some(error))
    }

    /// Mark a run this process owns as interrupted (e.g. on Ctrl-C).
    pub fn interrupt(&self, id: i64) -> Result<()> {
        self.end(id, Status::Interrupted, Some("interrupted"))
    }

    /// Add or replace environment entries of a run (see [`crate::track::env::collect`]).
    pub fn record_env(&self, id: i64, env: &BTreeMap<String, String>) -> Result<()> {
        self.write("record environment", |tx| {
            let e = |e| self.err("record environment", e);
            self.exists(tx, id)?;
            let mut st = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO environment (run_id, key, value) VALUES (?1, ?2, ?3)",
                )
                .map_err(e)?;
            for (k, v) in env {
                st.execute(params![id, k, v]).map_err(e)?;
            }
            Ok(())
        })
    }

    fn exists(&self, tx: &Transaction, id: i64) -> Result<()> {
        let n: i64 = tx
            .query_row("SELECT count(*) FROM runs WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .map_err(|e| self.err("find run", e))?;
        if n == 0 {
            return Err(StoreError::NoSuchRun {
                path: self.path.clone(),
                id,
            });
        }
        Ok(())
    }

    /// Add or replace the record of one stage of a run.
    pub fn record_stage(&self, id: i64, stage: &StageRecord) -> Result<()> {
        self.write("record stage", |tx| {
            self.exists(tx, id)?;
            tx.execute(
                "INSERT OR REPLACE INTO stages (run_id, stage, status, seconds, cache_key, output, updated)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![id, stage.stage, stage.status.as_str(), stage.seconds, stage.cache_key, stage.output, now_rfc3339()],
            )
            .map_err(|e| self.err("record stage", e))?;
            Ok(())
        })
    }

    pub fn stages(&self, id: i64) -> Result<Vec<StageRecord>> {
        self.retry("read stages", |c| {
            let e = |e| self.err("read stages", e);
            let mut st = c
                .prepare("SELECT stage, status, seconds, cache_key, output FROM stages WHERE run_id = ?1 ORDER BY updated, stage")
                .map_err(e)?;
            let rows = st.query_map([id], stage_row).map_err(e)?;
            rows.collect::<std::result::Result<Vec<_>, _>>().map_err(e)
        })
    }

    /// The latest finished stage `stage` with `cache_key`, from any run: (run id, record).
    pub fn cached_stage(&self, stage: &str, cache_key: &str) -> Result<Option<(i64, StageRecord)>> {
        self.retry("find cached stage", |c| {
            c.query_row(
                "SELECT stage, status, seconds, cache_key, output, run_id FROM stages
                 WHERE stage = ?1 AND cache_key = ?2 AND status = 'finished' ORDER BY updated DESC LIMIT 1",
                params![stage, cache_key],
                |r| Ok((r.get::<_, i64>(5)?, stage_row(r)?)),
            )
            .optional()
            .map_err(|e| self.err("find cached stage", e))
        })
    }

    /// Runs matching `filter`, by id.
    pub fn runs(&self, filter: &RunFilter) -> Result<Vec<RunRow>> {
        let rows = self.retry("list runs", |c| {
            let e = |e| self.err("list runs", e);
            let mut st = c
                .prepare(&format!("SELECT {RUN_COLUMNS} FROM runs ORDER BY id"))
                .map_err(e)?;
            let rows = st.query_map([], raw_run).map_err(e)?;
            rows.collect::<std::result::Result<Vec<_>, _>>().map_err(e)
        })?;
        let mut out = Vec::new();
        for raw in rows {
            let r = self.run_row(raw)?;
            let keep = filter.status.is_none_or(|s| s == r.status)
                && filter
                    .subgrid
                    .as_ref()
                    .is_none_or(|g| r.subgrid.split(',').any(|x| x == g))
                && filter
                    .name_contains
                    .as_ref()
                    .is_none_or(|n| r.name.contains(n.as_str()))
                && filter
                    .hash_prefix
                    .as_ref()
                    .is_none_or(|h| r.hash.starts_with(h.as_str()));
            if keep {
                out.push(r);
            }
        }
        Ok(out)
    }

    pub fn run(&self, id: i64) -> Result<RunRow> {
        let raw = self.retry("read run", |c| {
            c.query_row(
                &format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = ?1"),
                [id],
                raw_run,
            )
            .optional()
            .map_err(|e| self.err("read run", e))
        })?;
        match raw {
            Some(r) => self.run_row(r),
            None => Err(StoreError::NoSuchRun {
                path: self.path.clone(),
                id,
            }),
        }
    }

    pub fn run_by_hash(&self, hash: &str) -> Result<Option<RunRow>> {
        let raw = self.retry("read run", |c| {
            c.query_row(
                &format!("SELECT {RUN_COLUMNS} FROM runs WHERE hash = ?1"),
                [hash],
                raw_run,
            )
            .optional()
            .map_err(|e| self.err("read run", e))
        })?;
        raw.map(|r| self.run_row(r)).transpose()
    }

    fn run_row(&self, r: RawRun) -> Result<RunRow> {
        let status = Status::parse(&r.status).ok_or_else(|| StoreError::Corrupt {
            path: self.path.clone(),
            msg: format!("run {} has unknown status `{}`", r.id, r.status),
        })?;
        let config = serde_json::from_str(&r.config).map_err(|e| StoreError::Corrupt {
            path: self.path.clone(),
            msg: format!("run {}: config is not JSON: {e}", r.id),
        })?;
        Ok(RunRow {
            id: r.id,
            hash: r.hash,
            name: r.name,
            subgrid: r.subgrid,
            status,
            config,
            created: r.created,
            started: r.started,
            finished: r.finished,
            heartbeat: r.heartbeat,
            error: r.error,
            pid: r.pid,
            host: r.host,
            attempts: r.attempts,
        })
    }

    /// Metrics of a run, in insertion order.
    pub fn metrics(&self, id: i64) -> Result<Vec<Metric>> {
        self.retry("read metrics", |c| {
            let e = |e| self.err("read metrics", e);
            let mut st = c
                .prepare("SELECT task, name, value, stderr, context, step FROM metrics WHERE run_id = ?1 ORDER BY id")
                .map_err(e)?;
            let rows = st
                .query_map([id], |r| {
                    Ok(Metric {
                        task: r.get(0)?,
                        name: r.get(1)?,
                        value: r.get(2)?,
                        stderr: r.get(3)?,
                        context: r.get(4)?,
                        step: r.get(5)?,
                    })
                })
                .map_err(e)?;
            rows.collect::<std::result::Result<Vec<_>, _>>().map_err(e)
        })
    }

    /// Per-document scores of a run, by task and document.
    pub fn doc_scores(&self, id: i64) -> Result<Vec<DocScore>> {
        self.retry("read document scores", |c| {
            let e = |e| self.err("read document scores", e);
            let mut st = c
                .prepare(
                    "SELECT task, doc_id, acc, acc_norm FROM docs WHERE run_id = ?1 ORDER BY task, doc_id",
                )
                .map_err(e)?;
            let rows = st
                .query_map([id], |r| {
                    Ok(DocScore {
                        task: r.get(0)?,
                        doc_id: r.get(1)?,
                        acc: r.get(2)?,
                        acc_norm: r.get(3)?,
                    })
                })
                .map_err(e)?;
            rows.collect::<std::result::Result<Vec<_>, _>>().map_err(e)
        })
    }

    /// Flattened parameters of a run (dotted path -> JSON value).
    pub fn params(&self, id: i64) -> Result<BTreeMap<String, Value>> {
        let rows: Vec<(String, String)> = self.retry("read params", |c| {
            let e = |e| self.err("read params", e);
            let mut st = c
                .prepare("SELECT key, value FROM params WHERE run_id = ?1")
                .map_err(e)?;
            let rows = st
                .query_map([id], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(e)?;
            rows.collect::<std::result::Result<Vec<_>, _>>().map_err(e)
        })?;
        rows.into_iter()
            .map(|(k, v)| {
                let value = serde_json::from_str(&v).map_err(|err| StoreError::Corrupt {
                    path: self.path.clone(),
                    msg: format!("run {id}: param {k} is not JSON: {err}"),
                })?;
                Ok((k, value))
            })
            .collect()
    }

    pub fn artifacts(&self, id: i64) -> Result<Vec<Artifact>> {
        self.retry("read artifacts", |c| {
            let e = |e| self.err("read artifacts", e);
            let mut st = c.prepare("SELECT path, sha256, kind, bytes FROM artifacts WHERE run_id = ?1 ORDER BY path").map_err(e)?;
            let rows = st
                .query_map([id], |r| Ok(Artifact { path: r.get(0)?, sha256: r.get(1)?, kind: r.get(2)?, bytes: r.get(3)? }))
                .map_err(e)?;
            rows.collect::<std::result::Result<Vec<_>, _>>().map_err(e)
        })
    }

    pub fn environment(&self, id: i64) -> Result<BTreeMap<String, String>> {
        self.retry("read environment", |c| {
            let e = |e| self.err("read environment", e);
            let mut st = c
                .prepare("SELECT key, value FROM environment WHERE run_id = ?1")
                .map_err(e)?;
            let rows = st
                .query_map([id], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(e)?;
            rows.collect::<std::result::Result<BTreeMap<_, _>, _>>()
                .map_err(e)
        })
    }

    /// Parameters and metrics that differ between runs `a` and `b`.
    pub fn diff(&self, a: i64, b: i64) -> Result<RunDiff> {
        self.run(a)?;
        self.run(b)?;
        let (pa, pb) = (self.params(a)?, self.params(b)?);
        let keys: BTreeSet<&String> = pa.keys().chain(pb.keys()).collect();
        let params = keys
            .into_iter()
            .filter_map(|k| {
                let (x, y) = (pa.get(k), pb.get(k));
                (x != y).then(|| (k.clone(), x.cloned(), y.cloned()))
            })
            .collect();
        let ma: BTreeMap<String, f64> = self
            .metrics(a)?
            .into_iter()
            .map(|m| (m.key(), m.value))
            .collect();
        let mb: BTreeMap<String, f64> = self
            .metrics(b)?
            .into_iter()
            .map(|m| (m.key(), m.value))
            .collect();
        let keys: BTreeSet<&String> = ma.keys().chain(mb.keys()).collect();
        let metrics = keys
            .into_iter()
            .filter_map(|k| {
                let (x, y) = (ma.get(k).copied(), mb.get(k).copied());
                (x != y).then(|| (k.clone(), x, y))
            })
            .collect();
        Ok(RunDiff {
            a,
            b,
            params,
            metrics,
        })
    }

    /// One row per (run, metric) of every run that has metrics, with the run's
    /// parameters as columns (named by their dotted path; numbers and booleans typed,
    /// everything else as JSON text, strings raw).
    pub fn metrics_frame(&self) -> Result<DataFrame> {
        type Row = (
            i64,
            String,
            String,
            String,
            String,
            String,
            String,
            f64,
            Option<f64>,
            String,
            i64,
        );
        let rows: Vec<Row> = self.retry("export", |c| {
            let e = |e| self.err("export", e);
            let mut st = c
                .prepare(
                    "SELECT r.id, r.hash, r.name, r.subgrid, r.status, m.task, m.name, m.value, m.stderr, m.context, m.step
                     FROM metrics m JOIN runs r ON r.id = m.run_id ORDER BY r.id, m.id",
                )
                .map_err(e)?;
            let rows = st
                .query_map([], |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                        r.get(6)?,
                        r.get(7)?,
                        r.get(8)?,
                        r.get(9)?,
                        r.get(10)?,
                    ))
                })
                .map_err(e)?;
            rows.collect::<std::result::Result<Vec<_>, _>>().map_err(e)
        })?;
        let mut params: BTreeMap<i64, BTreeMap<String, Value>> = BTreeMap::new();
        for r in &rows {
            if let std::collections::btree_map::Entry::Vacant(slot) = params.entry(r.0) {
                slot.insert(self.params(r.0)?);
            }
        }
        let keys: BTreeSet<String> = params.values().flat_map(|p| p.keys().cloned()).collect();
        let col_s = |name: &str, f: &dyn Fn(&Row) -> String| {
            Column::new(name.into(), rows.iter().map(f).collect::<Vec<_>>())
        };
        let mut cols = vec![
            Column::new(
                "run_id".into(),
                rows.iter().map(|r| r.0).collect::<Vec<_>>(),
            ),
            col_s("hash", &|r| r.1.clone()),
            col_s("name", &|r| r.2.clone()),
            col_s("subgrid", &|r| r.3.clone()),
            col_s("status", &|r| r.4.clone()),
            col_s("task", &|r| r.5.clone()),
            col_s("metric", &|r| r.6.clone()),
            Column::new("value".into(), rows.iter().map(|r| r.7).collect::<Vec<_>>()),
            Column::new(
                "stderr".into(),
                rows.iter().map(|r| r.8).collect::<Vec<_>>(),
            ),
            col_s("context", &|r| r.9.clone()),
            Column::new("step".into(), rows.iter().map(|r| r.10).collect::<Vec<_>>()),
        ];
        for k in keys {
            let vals: Vec<Option<&Value>> = rows
                .iter()
                .map(|r| {
                    params
                        .get(&r.0)
                        .and_then(|p| p.get(&k))
                        .filter(|v| !v.is_null())
                })
                .collect();
            let col = if vals.iter().flatten().all(|v| v.is_i64()) {
                Column::new(
                    k.as_str().into(),
                    vals.iter()
                        .map(|v| v.and_then(Value::as_i64))
                        .collect::<Vec<_>>(),
                )
            } else if vals.iter().flatten().all(|v| v.is_number()) {
                Column::new(
                    k.as_str().into(),
                    vals.iter()
                        .map(|v| v.and_then(Value::as_f64))
                        .collect::<Vec<_>>(),
                )
            } else if vals.iter().flatten().all(|v| v.is_boolean()) {
                Column::new(
                    k.as_str().into(),
                    vals.iter()
                        .map(|v| v.and_then(Value::as_bool))
                        .collect::<Vec<_>>(),
                )
            } else {
                let text = |v: &Value| match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                Column::new(
                    k.as_str().into(),
                    vals.iter().map(|v| v.map(text)).collect::<Vec<_>>(),
                )
            };
            cols.push(col);
        }
        DataFrame::new(cols).map_err(|e| StoreError::Export {
            path: self.path.clone(),
            msg: e.to_string(),
        })
    }

    /// [`Store::metrics_frame`] written as CSV.
    pub fn export_csv(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let mut df = self.metrics_frame()?;
        let mut f = create_file(path)?;
        CsvWriter::new(&mut f)
            .finish(&mut df)
            .map_err(|e| StoreError::Export {
                path: path.to_path_buf(),
                msg: e.to_string(),
            })
    }

    /// [`Store::metrics_frame`] written as Parquet.
    pub fn export_parquet(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let mut df = self.metrics_frame()?;
        let f = create_file(path)?;
        ParquetWriter::new(f)
            .finish(&mut df)
            .map(|_| ())
            .map_err(|e| StoreError::Export {
                path: path.to_path_buf(),
                msg: e.to_string(),
            })
    }
}

fn create_file(path: &Path) -> Result<std::fs::File> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Io {
            path: dir.to_path_buf(),
            cause: e,
        })?;
    }
    std::fs::File::create(path).map_err(|e| StoreError::Io {
        path: path.to_path_buf(),
        cause: e,
    })
}

const RUN_COLUMNS: &str =
    "id, hash, name, subgrid, status, config, created, started, finished, heartbeat, error, pid, host, attempts";

struct RawRun {
    id: i64,
    hash: String,
    name: String,
    subgrid: String,
    status: String,
    config: String,
    created: String,
    started: Option<String>,
    finished: Option<String>,
    heartbeat: Option<String>,
    error: Option<String>,
    pid: Option<i64>,
    host: Option<String>,
    attempts: i64,
}

fn raw_run(r: &rusqlite::Row) -> rusqlite::Result<RawRun> {
    Ok(RawRun {
        id: r.get(0)?,
        hash: r.get(1)?,
        name: r.get(2)?,
        subgrid: r.get(3)?,
        status: r.get(4)?,
        config: r.get(5)?,
        created: r.get(6)?,
        started: r.get(7)?,
        finished: r.get(8)?,
        heartbeat: r.get(9)?,
        error: r.get(10)?,
        pid: r.get(11)?,
        host: r.get(12)?,
        attempts: r.get(13)?,
    })
}

fn stage_row(r: &rusqlite::Row) -> rusqlite::Result<StageRecord> {
    Ok(StageRecord {
        stage: r.get(0)?,
        status: StageStatus::parse(&r.get::<_, String>(1)?),
        seconds: r.get(2)?,
        cache_key: r.get(3)?,
        output: r.get(4)?,
    })
}

/// Corrupt / not-a-database conditions get their own error; the rest keep SQLite's.
fn classify(path: &Path, op: &str, e: rusqlite::Error) -> StoreError {
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

fn read_up_to(f: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        let k = f.read(&mut buf[n..])?;
        if k == 0 {
            break;
        }
        n += k;
    }
    Ok(n)
}

/// Is a process with this pid alive on this machine? Without /proc, assume it is (the
/// heartbeat then decides).
fn pid_alive(pid: i64) -> bool {
    if pid <= 0 {
        return false;
    }
    let proc = Path::new("/proc");
    if !proc.join("self").exists() {
        return true;
    }
    proc.join(pid.to_string()).exists()
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Now as RFC 3339 UTC with milliseconds, e.g. `2025-01-31T12:00:00.000Z`.
pub fn now_rfc3339() -> String {
    format_rfc3339_ms(now_ms())
}

/// Milliseconds since the Unix epoch -> RFC 3339 UTC.
pub fn format_rfc3339_ms(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let milli = ms.rem_euclid(1000);
    let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{milli:03}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

/// RFC 3339 UTC (`Z` suffix, optional fraction) -> milliseconds since the Unix epoch.
pub fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut dp = date.splitn(3, '-');
    let (y, m, d): (i64, i64, i64) = (
        dp.next()?.parse().ok()?,
        dp.next()?.parse().ok()?,
        dp.next()?.parse().ok()?,
    );
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut tp = hms.splitn(3, ':');
    let (hh, mm, ss): (i64, i64, i64) = (
        tp.next()?.parse().ok()?,
        tp.next()?.parse().ok()?,
        tp.next()?.parse().ok()?,
    );
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    let milli = if frac.is_empty() {
        0
    } else {
        let digits: String = frac.chars().chain("000".chars()).take(3).collect();
        digits.parse::<i64>().ok()?
    };
    let days = days_from_civil(y, m, d);
    Some(((days * 86_400 + hh * 3600 + mm * 60 + ss) * 1000) + milli)
}

/// Days since 1970-01-01 -> (year, month, day), proleptic Gregorian (H. Hinnant's method).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_known_instants() {
        // Instants checked against `date -u -d @SECONDS`.
        assert_eq!(format_rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            format_rfc3339_ms(951_782_400_000),
            "2000-02-29T00:00:00.000Z"
        );
        assert_eq!(
            format_rfc3339_ms(1_700_000_000_123),
            "2023-11-14T22:13:20.123Z"
        );
        assert_eq!(format_rfc3339_ms(-86_400_000), "1969-12-31T00:00:00.000Z");
        for ms in [0, 951_782_400_000, 1_700_000_000_123, 4_102_444_799_999] {
            assert_eq!(parse_rfc3339_ms(&format_rfc3339_ms(ms)), Some(ms));
        }
        assert_eq!(
            parse_rfc3339_ms("2023-11-14T22:13:20Z"),
            Some(1_700_000_000_000)
        );
        assert_eq!(parse_rfc3339_ms("2023-13-14T22:13:20Z"), None);
        assert_eq!(parse_rfc3339_ms("yesterday"), None);
    }
}
