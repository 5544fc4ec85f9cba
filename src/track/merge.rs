//! Merging run stores: the stores written by the shards of a grid (one per array task, as
//! SQLite should not be shared over a network file system) are folded into one.
//!
//! Runs are matched by hash. A run the target lacks is copied with its parameters,
//! metrics, artifacts, environment and stages; a finished run replaces an unfinished copy;
//! two finished copies with the same metrics are one run; two finished copies whose
//! metrics differ are reported and the target's is kept. Merging the same shard twice
//! therefore changes nothing. A copied `running` run becomes `interrupted`: no process
//! owns it in the target. A shard of an older schema version is read as it is, never
//! migrated: what it predates takes the target's defaults (identity version 1, no
//! per-document scores).

use super::store::{Result, Status, Store, StoreError};
use rusqlite::{params, OptionalExtension, Transaction};
use std::path::Path;

/// What one merge did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MergeReport {
    /// Runs the target did not have.
    pub added: usize,
    /// Unfinished runs of the target replaced by a finished copy.
    pub replaced: usize,
    /// Runs already in the target as they are in the shard (or better: finished there).
    pub unchanged: usize,
    /// Finished in both with different metrics: the target's copy is kept.
    pub conflicts: Vec<Conflict>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Conflict {
    pub hash: String,
    pub name: String,
    /// `task/name: target value vs shard value`, for each metric that differs.
    pub differences: Vec<String>,
}

/// The columns of `runs` copied as they are (everything but the id), in a shard of
/// schema version 2 or older; version 3 adds [`RUN_COPY_V3`].
const RUN_COPY: &str =
    "hash, name, subgrid, status, config, created, started, finished, heartbeat, error, pid, host, attempts";
const RUN_COPY_V3: &str = "identity_version";

/// Child tables and their columns besides `run_id`.
const CHILDREN: &[(&str, &str)] = &[
    ("params", "key, value"),
    ("metrics", "task, name, value, stderr, context, step"),
    ("artifacts", "path, sha256, kind, bytes"),
    ("environment", "key, value"),
    (
        "stages",
        "stage, status, seconds, cache_key, output, updated",
    ),
    ("docs", "task, doc_id, acc, acc_norm"),
];

type Metrics = Vec<(String, String, String, i64, f64, Option<f64>)>;

impl Store {
    /// Fold the store at `shard` into this one (see the module documentation), in one
    /// transaction. A shard newer than this binary, or not a run store, is refused.
    pub fn merge_from(&self, shard: &Path) -> Result<MergeReport> {
        let version = check_shard(shard)?;
        let op = format!("merge {}", shard.display());
        let att = |e| self.sql_err(&op, e);
        self.connection()
            .execute("ATTACH DATABASE ?1 AS shard", [shard.to_string_lossy()])
            .map_err(att)?;
        let report = self.write_tx(&op, |tx| self.merge_attached(tx, &op, version));
        let detached = self
            .connection()
            .execute("DETACH DATABASE shard", [])
            .map_err(|e| self.sql_err(&op, e));
        let report = report?;
        detached?;
        Ok(report)
    }

    fn merge_attached(&self, tx: &Transaction, op: &str, version: i64) -> Result<MergeReport> {
        let e = |e| self.sql_err(op, e);
        let mut runs = tx
            .prepare("SELECT id, hash, name, status FROM shard.runs ORDER BY id")
            .map_err(e)?;
        let rows: Vec<(i64, String, String, String)> = runs
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .map_err(e)?
            .collect::<rusqlite::Result<_>>()
            .map_err(e)?;
        let mut rep = MergeReport::default();
        for (sid, hash, name, status) in rows {
            let finished = status == Status::Finished.as_str();
            let target: Option<(i64, String)> = tx
                .query_row(
                    "SELECT id, status FROM runs WHERE hash = ?1",
                    [&hash],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .map_err(e)?;
            match target {
                None => {
                    copy_run(tx, sid, None, version).map_err(e)?;
                    rep.added += 1;
                }
                Some((tid, ts)) if ts != Status::Finished.as_str() && finished => {
                    copy_run(tx, sid, Some(tid), version).map_err(e)?;
                    rep.replaced += 1;
                }
                Some((tid, ts)) if ts == Status::Finished.as_str() && finished => {
                    let (a, b) = (metrics(tx, "main", tid), metrics(tx, "shard", sid));
                    let (a, b) = (a.map_err(e)?, b.map_err(e)?);
                    if a == b {
                        rep.unchanged += 1;
                    } else {
                        rep.conflicts.push(Conflict {
                            hash,
                            name,
                            differences: differences(&a, &b),
                        });
                    }
                }
                Some(_) => rep.unchanged += 1,
            }
        }
        Ok(rep)
    }
}

/// The shard must be a run store no newer than this binary: the reading open's checks
/// (it is neither created nor migrated). Returns its schema version.
fn check_shard(shard: &Path) -> Result<i64> {
    let version = Store::open_read(shard)?.schema_version();
    if version < 1 {
        return Err(StoreError::Invalid {
            path: shard.to_path_buf(),
            msg: "not a run store (schema version 0)".into(),
        });
    }
    Ok(version)
}

/// Copy shard run `sid` into the target: as a new run, or over run `tid` (whose
/// children are replaced). `version` is the shard's schema version.
fn copy_run(tx: &Transaction, sid: i64, tid: Option<i64>, version: i64) -> rusqlite::Result<()> {
    let run_copy = if version >= 3 {
        format!("{RUN_COPY}, {RUN_COPY_V3}")
    } else {
        RUN_COPY.to_string()
    };
    // The docs table arrived with version 2.
    let children = || {
        CHILDREN
            .iter()
            .filter(move |(t, _)| version >= 2 || *t != "docs")
    };
    let id = match tid {
        Some(tid) => {
            for (t, _) in CHILDREN {
                tx.execute(&format!("DELETE FROM {t} WHERE run_id = ?1"), [tid])?;
            }
            let sets: Vec<String> = run_copy
                .split(", ")
                .filter(|c| *c != "hash")
                .map(|c| format!("{c} = (SELECT {c} FROM shard.runs WHERE id = ?1)"))
                .collect();
            tx.execute(
                &format!("UPDATE runs SET {} WHERE id = ?2", sets.join(", ")),
                params![sid, tid],
            )?;
            tid
        }
        None => {
            tx.execute(
                &format!(
                    "INSERT INTO runs ({run_copy}) SELECT {run_copy} FROM shard.runs WHERE id = ?1"
                ),
                [sid],
            )?;
            tx.last_insert_rowid()
        }
    };
    // Nobody owns a copied run while it claims to be running.
    tx.execute(
        "UPDATE runs SET status = 'interrupted', pid = NULL, host = NULL WHERE id = ?1 AND status = 'running'",
        [id],
    )?;
    for (t, cols) in children() {
        tx.execute(
            &format!("INSERT INTO {t} (run_id, {cols}) SELECT ?1, {cols} FROM shard.{t} WHERE run_id = ?2"),
            params![id, sid],
        )?;
    }
    Ok(())
}

fn metrics(tx: &Transaction, db: &str, id: i64) -> rusqlite::Result<Metrics> {
    let mut st = tx.prepare(&format!(
        "SELECT task, name, context, step, value, stderr FROM {db}.metrics WHERE run_id = ?1 \
         ORDER BY task, name, context, step"
    ))?;
    let rows = st.query_map([id], |r| {
        let name: String = r.get(1)?;
        Ok((r.get(0)?, name, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?))
    })?;
    let all: Metrics = rows.collect::<rusqlite::Result<_>>()?;
    // Timings and memory measure the machine, not the result.
    Ok(all
        .into_iter()
        .filter(|m| !crate::names::is_machine_measurement(&m.1))
        .collect())
}

fn differences(a: &Metrics, b: &Metrics) -> Vec<String> {
    let key = |m: &(String, String, String, i64, f64, Option<f64>)| {
        (m.0.clone(), m.1.clone(), m.2.clone(), m.3)
    };
    let am: std::collections::BTreeMap<_, _> = a.iter().map(|m| (key(m), m.4)).collect();
    let bm: std::collections::BTreeMap<_, _> = b.iter().map(|m| (key(m), m.4)).collect();
    let mut out = vec![];
    for k in am
        .keys()
        .chain(bm.keys())
        .collect::<std::collections::BTreeSet<_>>()
    {
        let (x, y) = (am.get(k), bm.get(k));
        if x != y {
            let show = |v: Option<&f64>| v.map_or("absent".to_string(), |v| v.to_string());
            out.push(format!("{}/{}: {} vs {}", k.0, k.1, show(x), show(y)));
        }
    }
    out
}
