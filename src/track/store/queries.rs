//! Reading runs back: rows, filters, metrics, documents, parameters, artifacts,
//! environment, stages, and the difference between two runs.

use super::*;

const RUN_COLUMNS: &str =
    "id, hash, name, subgrid, status, config, created, started, finished, heartbeat, error, pid, host, attempts";

pub(super) struct RawRun {
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
    identity_version: i64,
}

pub(super) fn raw_run(r: &rusqlite::Row) -> rusqlite::Result<RawRun> {
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
        identity_version: r.get(14)?,
    })
}

pub(super) fn stage_row(r: &rusqlite::Row) -> rusqlite::Result<StageRecord> {
    Ok(StageRecord {
        stage: r.get(0)?,
        status: StageStatus::parse(&r.get::<_, String>(1)?),
        seconds: r.get(2)?,
        cache_key: r.get(3)?,
        output: r.get(4)?,
    })
}

impl Store {
    /// The columns `raw_run` reads; a store older than schema 3 has no identity version
    /// column and every run in it was hashed with version 1.
    fn run_columns(&self) -> String {
        let identity = if self.schema >= 3 {
            "identity_version"
        } else {
            "1"
        };
        format!("{RUN_COLUMNS}, {identity}")
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
                .prepare(&format!(
                    "SELECT {} FROM runs ORDER BY id",
                    self.run_columns()
                ))
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
                &format!("SELECT {} FROM runs WHERE id = ?1", self.run_columns()),
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
                &format!("SELECT {} FROM runs WHERE hash = ?1", self.run_columns()),
                [hash],
                raw_run,
            )
            .optional()
            .map_err(|e| self.err("read run", e))
        })?;
        raw.map(|r| self.run_row(r)).transpose()
    }

    pub(super) fn run_row(&self, r: RawRun) -> Result<RunRow> {
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
            identity_version: r.identity_version,
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
        if self.schema < 2 {
            return Ok(vec![]); // stores before version 2 kept no per-document scores
        }
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
}
