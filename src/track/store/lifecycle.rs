//! Writing a run's life: registering and claiming it (atomically, taking over runs whose
//! owner is gone), heartbeats, and ending it finished (metrics, artifacts and documents in
//! one transaction), failed or interrupted; its environment and stage records.

use super::*;

/// Is a process with this pid alive on this machine? Without /proc, assume it is (the
/// heartbeat then decides).
pub(super) fn pid_alive(pid: i64) -> bool {
    if pid <= 0 {
        return false;
    }
    let proc = Path::new("/proc");
    if !proc.join("self").exists() {
        return true;
    }
    proc.join(pid.to_string()).exists()
}

impl Store {
    /// Add runs as `pending` (those not yet in the store); returns how many were added.
    /// A run already there takes the grid's current name: names are labels derived from
    /// the grid (a sub-grid added beside a run can change its name), the hash is the
    /// identity and does not change.
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
                match exists {
                    None => {
                        self.insert_run(tx, r, Status::Pending)?;
                        added += 1;
                    }
                    Some(id) => {
                        tx.execute(
                            "UPDATE runs SET name = ?1 WHERE id = ?2 AND name <> ?1",
                            params![r.name, id],
                        )
                        .map_err(|e| self.err("register runs", e))?;
                    }
                }
            }
            Ok(added)
        })
    }

    pub(super) fn insert_run(&self, tx: &Transaction, r: &RunSpec, status: Status) -> Result<i64> {
        let e = |e| self.err("insert run", e);
        let now = now_rfc3339();
        let running = status == Status::Running;
        tx.execute(
            "INSERT INTO runs (hash, name, subgrid, status, config, created, started, heartbeat, pid, host, attempts, identity_version)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7, ?8, ?9, ?10, ?11)",
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
                crate::experiment::IDENTITY_VERSION,
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

    pub(super) fn owner_alive(
        &self,
        pid: Option<i64>,
        host: Option<&str>,
        heartbeat: Option<&str>,
    ) -> bool {
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
    pub(super) fn check_owner(&self, tx: &Transaction, id: i64, op: &str) -> Result<()> {
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

    pub(super) fn end(&self, id: i64, status: Status, error: Option<&str>) -> Result<()> {
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

    pub(super) fn exists(&self, tx: &Transaction, id: i64) -> Result<()> {
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
}
