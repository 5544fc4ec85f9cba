//! The store's file format: its identity (`PRAGMA application_id`, `user_version`), the
//! forward migrations that build and upgrade it, and the checks that refuse a file that is
//! not a run store or is newer than this binary.

use super::*;

/// `PRAGMA application_id` of a run store ("CoMe" in ASCII).
pub const APPLICATION_ID: i32 = 0x436F_4D65;

/// The schema version this binary writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Forward migrations: entry `i` upgrades version `i` to `i + 1`. Append, never edit.
pub(super) const MIGRATIONS: &[&str] = &[
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
    // v3: the identity recipe each run's hash was computed with
    // (`experiment::IDENTITY_VERSION`); every run before it was hashed with version 1.
    "ALTER TABLE runs ADD COLUMN identity_version INTEGER NOT NULL DEFAULT 1;",
];

pub(super) const SQLITE_HEADER: &[u8; 16] = b"SQLite format 3\0";

impl Store {
    pub(super) fn init(&self) -> Result<()> {
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
    pub(super) fn identity(&self, c: &Connection) -> Result<(i32, i64, i64)> {
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
    pub(super) fn check_identity(&self, app: i32, version: i64, tables: i64) -> Result<()> {
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
}
