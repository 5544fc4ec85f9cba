//! The run store: one SQLite file (default `results/come.sqlite`) shared by every process
//! that runs a grid.
//!
//! Schema (version 3; `PRAGMA user_version`, `PRAGMA application_id` = [`APPLICATION_ID`]):
//!
//! | table | columns |
//! |---|---|
//! | `runs` | `id` pk, `hash` unique, `identity_version` (v3: the recipe `hash` was computed with, [`crate::experiment::IDENTITY_VERSION`]), `name`, `subgrid`, `status` (pending, running, finished, failed, interrupted), `config` (canonical JSON of the Experiment), `created` / `started` / `finished` / `heartbeat` (RFC 3339 UTC), `error`, `pid`, `host` (the owner while running), `attempts` |
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
use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

mod clock;
mod entities;
mod error;
mod export;
mod lifecycle;
mod queries;
mod schema;

pub use clock::{format_rfc3339_ms, now_ms, now_rfc3339, parse_rfc3339_ms};
pub use entities::{
    hash_file, kinds, Artifact, Claim, DocScore, Metric, RunDiff, RunFilter, RunRow, StageRecord,
    StageStatus, Status,
};
use error::classify;
pub use error::{Result, StoreError};
use schema::SQLITE_HEADER;
pub use schema::{APPLICATION_ID, SCHEMA_VERSION};

/// Default store location, relative to the project root.
pub const DEFAULT_PATH: &str = "results/come.sqlite";

/// An open run store. Not `Sync`: open one per thread or process.
pub struct Store {
    conn: Connection,
    path: PathBuf,
    pid: i64,
    host: String,
    stale_after: Duration,
    busy_limit: Duration,
    /// See [`Store::schema_version`].
    schema: i64,
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
        check_header(&path)?;
        let conn = Connection::open(&path).map_err(|e| classify(&path, "open", e))?;
        let mut store = Store::new(conn, path)?;
        store.init()?;
        store.schema = SCHEMA_VERSION;
        Ok(store)
    }

    /// Open an existing store for reading (what `tables`, `runs ls` and other reading
    /// commands use): a missing file is an error rather than a new empty store, and the
    /// file is neither migrated nor written (`PRAGMA query_only`), so a committed store
    /// stays byte for byte what it was. Older schema versions are read as they are: what
    /// they predate reads as absent (no per-document scores before version 2, identity
    /// version 1 before version 3).
    pub fn open_read(path: impl AsRef<Path>) -> Result<Store> {
        let path = path.as_ref().to_path_buf();
        match std::fs::metadata(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::Missing { path })
            }
            Ok(m) if m.is_file() && m.len() == 0 => {
                return Err(StoreError::Invalid {
                    path,
                    msg: "is an empty file, not a run store".into(),
                })
            }
            _ => {}
        }
        check_header(&path)?;
        // Read-write without create (read-only where the OS forbids writing): a read-only
        // connection could not remove the WAL side files when it closes.
        let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE
            | rusqlite::OpenFlags::SQLITE_OPEN_URI
            | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn =
            Connection::open_with_flags(&path, flags).map_err(|e| classify(&path, "open", e))?;
        let mut store = Store::new(conn, path)?;
        store
            .conn
            .pragma_update(None, "query_only", "ON")
            .map_err(|e| store.err("open for reading", e))?;
        let (app, version, tables) = store.retry("read the store header", |c| store.identity(c))?;
        if app == 0 && version == 0 && tables == 0 {
            return Err(StoreError::Invalid {
                path: store.path.clone(),
                msg: "is an empty SQLite database, not a run store".into(),
            });
        }
        store.check_identity(app, version, tables)?;
        store.schema = version;
        Ok(store)
    }

    fn new(conn: Connection, path: PathBuf) -> Result<Store> {
        let store = Store {
            conn,
            path,
            pid: i64::from(std::process::id()),
            host: super::env::hostname(),
            stale_after: Duration::from_secs(10 * 60),
            busy_limit: Duration::from_secs(120),
            schema: 0,
        };
        store
            .conn
            .busy_timeout(Duration::from_secs(5))
            .map_err(|e| store.err("busy_timeout", e))?;
        Ok(store)
    }

    /// The schema version of the open file: [`SCHEMA_VERSION`] once opened for writing
    /// (which migrates it), the file's own version when opened for reading.
    pub fn schema_version(&self) -> i64 {
        self.schema
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
}

/// A non-empty file must start with SQLite's header; a directory is refused.
fn check_header(path: &Path) -> Result<()> {
    let io = |cause| StoreError::Io {
        path: path.to_path_buf(),
        cause,
    };
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => Err(StoreError::Invalid {
            path: path.to_path_buf(),
            msg: "is a directory, expected an SQLite file".into(),
        }),
        Ok(m) if m.len() > 0 => {
            let mut head = [0u8; 16];
            let mut f = std::fs::File::open(path).map_err(io)?;
            let n = read_up_to(&mut f, &mut head).map_err(io)?;
            if n < 16 || &head != SQLITE_HEADER {
                return Err(StoreError::NotSqlite {
                    path: path.to_path_buf(),
                });
            }
            Ok(())
        }
        _ => Ok(()),
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
