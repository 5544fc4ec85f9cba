//! Export a run store to an MLflow tracking server through its REST API
//! (`/api/2.0/mlflow/...`), so runs can be browsed and compared in the MLflow UI.
//!
//! Each store run becomes one MLflow run under a parent run for the store: params are the
//! resolved config's dotted keys, metrics every stored metric (with its step; standard
//! errors as `<key>_stderr`), tags the config hash (`come.config_hash`) with its identity
//! version (`come.identity_version`), the git commit
//! (`mlflow.source.git.commit`), the stage records (`come.stage.<name>`) and the run's
//! environment. Files the run recorded as artifacts go through the server's artifact proxy
//! (`mlflow-artifacts:` runs) where it offers one.
//!
//! Exporting is idempotent: a run is matched by its config hash tag, so a second export
//! creates nothing; a run whose status changed since (failed, then finished) is updated.
//! The store is only read. MLflow limits batches to 1000 metrics, 100 params and 100 tags,
//! and a param, once logged, cannot change; the config hash pins the params of a run.

use super::store::{now_ms, parse_rfc3339_ms, Store};
use super::{Metric, RunRow, Status};
use crate::error::{Error, Result};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why the server could not take the export.
#[derive(Debug, thiserror::Error)]
pub enum MlflowError {
    #[error("MLflow server at {url} is unreachable ({msg}); is it running? (scripts/mlflow-local.sh start for a local one)")]
    Unreachable { url: String, msg: String },
    #[error("MLflow {endpoint} answered HTTP {status}: {body}")]
    Status {
        endpoint: String,
        status: u16,
        body: String,
    },
    #[error("MLflow {endpoint}: unexpected answer: {msg}")]
    Protocol { endpoint: String, msg: String },
}

impl From<MlflowError> for Error {
    fn from(e: MlflowError) -> Self {
        Error::Remote(Box::new(e))
    }
}

const MAX_METRICS: usize = 1000;
const MAX_PARAMS: usize = 100;
const MAX_TAGS: usize = 100;
/// MLflow's longest param and tag values.
const MAX_PARAM_LEN: usize = 6000;
const MAX_TAG_LEN: usize = 8000;

/// A tracking server, by its base URL (`http://host:port`).
pub struct Client {
    base: String,
    agent: ureq::Agent,
}

impl Client {
    pub fn new(url: &str) -> Client {
        Client {
            base: url.trim_end_matches('/').to_string(),
            agent: ureq::AgentBuilder::new()
                .timeout(Duration::from_secs(60))
                .build(),
        }
    }

    fn answer(
        &self,
        endpoint: &str,
        r: std::result::Result<ureq::Response, ureq::Error>,
    ) -> std::result::Result<Value, MlflowError> {
        match r {
            Ok(resp) => {
                let text = resp.into_string().map_err(|e| MlflowError::Protocol {
                    endpoint: endpoint.into(),
                    msg: e.to_string(),
                })?;
                if text.trim().is_empty() {
                    return Ok(json!({}));
                }
                serde_json::from_str(&text).map_err(|e| MlflowError::Protocol {
                    endpoint: endpoint.into(),
                    msg: format!("{e}: {}", text.chars().take(200).collect::<String>()),
                })
            }
            Err(ureq::Error::Status(status, resp)) => Err(MlflowError::Status {
                endpoint: endpoint.into(),
                status,
                body: resp
                    .into_string()
                    .unwrap_or_default()
                    .chars()
                    .take(500)
                    .collect(),
            }),
            Err(e) => Err(MlflowError::Unreachable {
                url: self.base.clone(),
                msg: e.to_string(),
            }),
        }
    }

    fn post(&self, endpoint: &str, body: &Value) -> std::result::Result<Value, MlflowError> {
        let url = format!("{}/api/2.0/mlflow/{endpoint}", self.base);
        self.answer(endpoint, self.agent.post(&url).send_json(body.clone()))
    }

    fn get(
        &self,
        endpoint: &str,
        query: &[(&str, &str)],
    ) -> std::result::Result<Value, MlflowError> {
        let url = format!("{}/api/2.0/mlflow/{endpoint}", self.base);
        let mut req = self.agent.get(&url);
        for (k, v) in query {
            req = req.query(k, v);
        }
        self.answer(endpoint, req.call())
    }

    /// The id of experiment `name`, created if missing.
    pub fn experiment_id(&self, name: &str) -> std::result::Result<String, MlflowError> {
        match self.get("experiments/get-by-name", &[("experiment_name", name)]) {
            Ok(v) => field_str(
                &v,
                &["experiment", "experiment_id"],
                "experiments/get-by-name",
            ),
            Err(MlflowError::Status { status: 404, .. }) => {
                let v = self.post("experiments/create", &json!({ "name": name }))?;
                field_str(&v, &["experiment_id"], "experiments/create")
            }
            Err(e) => Err(e),
        }
    }

    /// Runs of `experiment` whose tag `key` is `value`.
    pub fn find_runs(
        &self,
        experiment: &str,
        key: &str,
        value: &str,
    ) -> std::result::Result<Vec<Value>, MlflowError> {
        let mut out = vec![];
        let mut token: Option<String> = None;
        loop {
            let mut body = json!({
                "experiment_ids": [experiment],
                "filter": format!("tags.`{key}` = '{}'", value.replace('\'', "\\'")),
                "max_results": 1000,
            });
            if let Some(t) = &token {
                body["page_token"] = json!(t);
            }
            let v = self.post("runs/search", &body)?;
            out.extend(v["runs"].as_array().cloned().unwrap_or_default());
            match v["next_page_token"].as_str() {
                Some(t) if !t.is_empty() => token = Some(t.to_string()),
                _ => return Ok(out),
            }
        }
    }

    fn create_run(
        &self,
        experiment: &str,
        name: &str,
        start_ms: i64,
        tags: &[(String, String)],
    ) -> std::result::Result<(String, String), MlflowError> {
        let tags: Vec<Value> = tags
            .iter()
            .take(MAX_TAGS)
            .map(|(k, v)| json!({"key": k, "value": v}))
            .collect();
        let v = self.post(
            "runs/create",
            &json!({ "experiment_id": experiment, "run_name": name, "start_time": start_ms, "tags": tags }),
        )?;
        let id = field_str(&v, &["run", "info", "run_id"], "runs/create")?;
        let uri = field_str(&v, &["run", "info", "artifact_uri"], "runs/create")?;
        Ok((id, uri))
    }

    /// Metrics, params and tags in batches within the server's limits.
    fn log_batch(
        &self,
        run: &str,
        metrics: &[Value],
        params: &[(String, String)],
        tags: &[(String, String)],
    ) -> std::result::Result<(), MlflowError> {
        let kv = |v: &[(String, String)]| -> Vec<Value> {
            v.iter()
                .map(|(k, v)| json!({"key": k, "value": v}))
                .collect()
        };
        for chunk in metrics.chunks(MAX_METRICS) {
            self.post(
                "runs/log-batch",
                &json!({ "run_id": run, "metrics": chunk }),
            )?;
        }
        for chunk in params.chunks(MAX_PARAMS) {
            self.post(
                "runs/log-batch",
                &json!({ "run_id": run, "params": kv(chunk) }),
            )?;
        }
        for chunk in tags.chunks(MAX_TAGS) {
            self.post(
                "runs/log-batch",
                &json!({ "run_id": run, "tags": kv(chunk) }),
            )?;
        }
        Ok(())
    }

    fn update_run(
        &self,
        run: &str,
        status: &str,
        end_ms: Option<i64>,
    ) -> std::result::Result<(), MlflowError> {
        let mut body = json!({ "run_id": run, "status": status });
        if let Some(t) = end_ms {
            body["end_time"] = json!(t);
        }
        self.post("runs/update", &body).map(|_| ())
    }

    /// Upload a file through the artifact proxy of a run whose artifact URI is
    /// `mlflow-artifacts:/<path>`; false where the run's artifacts live elsewhere.
    fn put_artifact(
        &self,
        artifact_uri: &str,
        rel: &str,
        bytes: &[u8],
    ) -> std::result::Result<bool, MlflowError> {
        let Some(root) = artifact_uri.strip_prefix("mlflow-artifacts:") else {
            return Ok(false);
        };
        let root = root.trim_start_matches('/');
        let url = format!(
            "{}/api/2.0/mlflow-artifacts/artifacts/{root}/{rel}",
            self.base
        );
        let endpoint = "mlflow-artifacts/artifacts";
        self.answer(
            endpoint,
            self.agent
                .put(&url)
                .set("Content-Type", "application/octet-stream")
                .send_bytes(bytes),
        )
        .map(|_| true)
    }

    /// A run as the server has it (`runs/get`).
    pub fn get_run(&self, run: &str) -> std::result::Result<Value, MlflowError> {
        self.get("runs/get", &[("run_id", run)])
    }

    /// Every value of metric `key` of a run, with steps (`metrics/get-history`).
    pub fn metric_history(
        &self,
        run: &str,
        key: &str,
    ) -> std::result::Result<Vec<Value>, MlflowError> {
        let v = self.get(
            "metrics/get-history",
            &[("run_id", run), ("metric_key", key)],
        )?;
        Ok(v["metrics"].as_array().cloned().unwrap_or_default())
    }
}

fn field_str(v: &Value, path: &[&str], endpoint: &str) -> std::result::Result<String, MlflowError> {
    let mut x = v;
    for p in path {
        x = &x[*p];
    }
    x.as_str()
        .map(str::to_string)
        .ok_or_else(|| MlflowError::Protocol {
            endpoint: endpoint.into(),
            msg: format!(
                "no `{}` in {}",
                path.join("."),
                v.to_string().chars().take(200).collect::<String>()
            ),
        })
}

/// MLflow's name for a store status.
pub fn run_status(s: Status) -> &'static str {
    match s {
        Status::Pending => "SCHEDULED",
        Status::Running => "RUNNING",
        Status::Finished => "FINISHED",
        Status::Failed => "FAILED",
        Status::Interrupted => "KILLED",
    }
}

/// A metric's MLflow key: `task/name`, then its context, with every character MLflow does
/// not allow in a key (it takes letters, digits, `_ - . /`, space and `:`) as `_`.
pub fn metric_key(m: &Metric) -> String {
    let mut k = if m.task.is_empty() {
        m.name.clone()
    } else {
        format!("{}/{}", m.task, m.name)
    };
    if !m.context.is_empty() {
        k.push('/');
        k.push_str(&m.context);
    }
    k.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_-./ :".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// A param's value: strings as they are, everything else as JSON, cut to MLflow's limit.
fn param_value(v: &Value) -> String {
    let s = match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    truncate(s, MAX_PARAM_LEN)
}

fn truncate(s: String, max: usize) -> String {
    if s.chars().count() <= max {
        return s;
    }
    s.chars().take(max).collect()
}

/// What an export did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportReport {
    pub experiment_id: String,
    pub created: usize,
    pub updated: usize,
    pub unchanged: usize,
    pub metrics: usize,
    pub params: usize,
    pub artifacts: usize,
}

/// Tag that marks the parent run of a store, and the tag with a run's config hash.
pub const PARENT_TAG: &str = "come.store";
pub const HASH_TAG: &str = "come.config_hash";
pub const STATUS_TAG: &str = "come.status";
/// The identity recipe the config hash was computed with.
pub const IDENTITY_TAG: &str = "come.identity_version";

/// Export every run of `store` into experiment `experiment` of the server `client`; the
/// files under `tables` (files or directories, e.g. what `tables --out` wrote) go to the
/// store's parent run under `tables/`.
pub fn export_store(
    store: &Store,
    client: &Client,
    experiment: &str,
    tables: &[PathBuf],
) -> Result<ExportReport> {
    // Missing table files are an error before anything is sent.
    let tables = table_files(tables)?;
    let exp = client.experiment_id(experiment)?;
    let store_id = store.path().display().to_string();
    let (parent, parent_uri) = match client.find_runs(&exp, PARENT_TAG, &store_id)?.first() {
        Some(r) => (
            field_str(r, &["info", "run_id"], "runs/search")?,
            field_str(r, &["info", "artifact_uri"], "runs/search")?,
        ),
        None => {
            let name = store
                .path()
                .file_stem()
                .map_or("store".into(), |s| s.to_string_lossy().to_string());
            let tags = vec![(PARENT_TAG.to_string(), store_id.clone())];
            let (id, uri) = client.create_run(&exp, &name, now_ms(), &tags)?;
            client.update_run(&id, "FINISHED", Some(now_ms()))?;
            (id, uri)
        }
    };
    let mut report = ExportReport {
        experiment_id: exp.clone(),
        ..Default::default()
    };
    for (rel, path) in tables {
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        if client.put_artifact(&parent_uri, &format!("tables/{rel}"), &bytes)? {
            report.artifacts += 1;
        }
    }
    for run in store.runs(&Default::default())? {
        export_run(store, client, &exp, &parent, &run, &mut report)?;
    }
    Ok(report)
}

fn export_run(
    store: &Store,
    client: &Client,
    exp: &str,
    parent: &str,
    run: &RunRow,
    report: &mut ExportReport,
) -> Result<()> {
    let status = run_status(run.status);
    let existing = client.find_runs(exp, HASH_TAG, &run.hash)?;
    let (id, artifact_uri) = match existing.first() {
        Some(r) => {
            let same = r["data"]["tags"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|t| t["key"] == STATUS_TAG && t["value"] == run.status.as_str());
            if same {
                report.unchanged += 1;
                return Ok(());
            }
            report.updated += 1;
            (
                field_str(r, &["info", "run_id"], "runs/search")?,
                field_str(r, &["info", "artifact_uri"], "runs/search")?,
            )
        }
        None => {
            let start = run
                .started
                .as_deref()
                .or(Some(run.created.as_str()))
                .and_then(parse_rfc3339_ms)
                .unwrap_or_else(now_ms);
            let tags = vec![
                (HASH_TAG.to_string(), run.hash.clone()),
                ("mlflow.parentRunId".to_string(), parent.to_string()),
            ];
            report.created += 1;
            client.create_run(exp, &run.name, start, &tags)?
        }
    };
    let at = run
        .finished
        .as_deref()
        .and_then(parse_rfc3339_ms)
        .unwrap_or_else(now_ms);
    let metrics = run_metrics(&store.metrics(run.id)?, at);
    let params: Vec<(String, String)> = store
        .params(run.id)?
        .iter()
        .map(|(k, v)| (k.clone(), param_value(v)))
        .collect();
    let tags = run_tags(store, run, parent)?;
    client.log_batch(&id, &metrics, &params, &tags)?;
    report.metrics += metrics.len();
    report.params += params.len();
    report.artifacts += upload_artifacts(store, client, run, &artifact_uri)?;
    let record = serde_json::to_vec_pretty(&run_record(store, run)?)
        .map_err(|e| Error::Invalid(format!("run {}: {e}", run.id)))?;
    if client.put_artifact(&artifact_uri, RUN_RECORD, &record)? {
        report.artifacts += 1;
    }
    let end = run.finished.as_deref().and_then(parse_rfc3339_ms);
    client.update_run(&id, status, end)?;
    Ok(())
}

/// Every metric at the run's finishing time, standard errors as `<key>_stderr`.
fn run_metrics(metrics: &[Metric], at_ms: i64) -> Vec<Value> {
    let mut out = vec![];
    for m in metrics {
        let key = metric_key(m);
        out.push(json!({"key": key, "value": m.value, "timestamp": at_ms, "step": m.step}));
        if let Some(se) = m.stderr {
            out.push(json!({"key": format!("{key}_stderr"), "value": se, "timestamp": at_ms, "step": m.step}));
        }
    }
    out
}

fn run_tags(store: &Store, run: &RunRow, parent: &str) -> Result<Vec<(String, String)>> {
    let mut tags: BTreeMap<String, String> = BTreeMap::new();
    tags.insert(HASH_TAG.into(), run.hash.clone());
    tags.insert(STATUS_TAG.into(), run.status.as_str().into());
    tags.insert(IDENTITY_TAG.into(), run.identity_version.to_string());
    tags.insert("mlflow.runName".into(), run.name.clone());
    tags.insert("mlflow.parentRunId".into(), parent.into());
    tags.insert("come.store_run_id".into(), run.id.to_string());
    tags.insert("come.subgrid".into(), run.subgrid.clone());
    tags.insert("come.attempts".into(), run.attempts.to_string());
    if let Some(e) = &run.error {
        tags.insert("come.error".into(), e.clone());
    }
    let env = store.environment(run.id)?;
    if let Some(sha) = env.get("git.sha") {
        tags.insert("mlflow.source.git.commit".into(), sha.clone());
    }
    for (k, v) in env {
        tags.insert(format!("come.env.{k}"), v);
    }
    for st in store.stages(run.id)? {
        let mut v = format!("{} {:.1}s", st.status.as_str(), st.seconds.unwrap_or(0.0));
        if let Some(k) = &st.cache_key {
            v.push_str(&format!(" key={k}"));
        }
        if let Some(o) = &st.output {
            v.push_str(&format!(" output={o}"));
        }
        tags.insert(format!("come.stage.{}", st.stage), v);
    }
    Ok(tags
        .into_iter()
        .map(|(k, v)| (k, truncate(v, MAX_TAG_LEN)))
        .collect())
}

/// Where each run's results JSON goes among its artifacts.
pub const RUN_RECORD: &str = "results/run.json";

/// A run's results as one JSON file: what it is (hash, name, status, times, error), its
/// resolved config, and every metric as the store keeps it (task, name, value, standard
/// error, context, step).
pub fn run_record(store: &Store, run: &RunRow) -> Result<Value> {
    Ok(json!({
        "hash": run.hash,
        "name": run.name,
        "subgrid": run.subgrid,
        "status": run.status.as_str(),
        "created": run.created,
        "started": run.started,
        "finished": run.finished,
        "error": run.error,
        "config": run.config,
        "metrics": store.metrics(run.id)?,
    }))
}

/// The files of `roots` with their paths relative to the root they came from (a file given
/// directly keeps its name), sorted. Hidden files are left out.
fn table_files(roots: &[PathBuf]) -> Result<Vec<(String, PathBuf)>> {
    fn walk(dir: &Path, rel: &str, out: &mut Vec<(String, PathBuf)>) -> Result<()> {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .map_err(|e| Error::io(dir, e))?
            .filter_map(|e| e.ok())
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let name = e.file_name().to_string_lossy().to_string();
            if name.starts_with('.') {
                continue;
            }
            let r = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let p = e.path();
            if p.is_dir() {
                walk(&p, &r, out)?;
            } else {
                out.push((r, p));
            }
        }
        Ok(())
    }
    let mut out = vec![];
    for root in roots {
        if root.is_dir() {
            walk(root, "", &mut out)?;
        } else if root.is_file() {
            let name = root
                .file_name()
                .map_or("table".into(), |n| n.to_string_lossy().to_string());
            out.push((name, root.clone()));
        } else {
            return Err(Error::io(
                root,
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no such table file or directory",
                ),
            ));
        }
    }
    Ok(out)
}

/// The run's recorded files (directories are left out) under `<kind>/<file name>`.
fn upload_artifacts(store: &Store, client: &Client, run: &RunRow, uri: &str) -> Result<usize> {
    let mut n = 0;
    for a in store.artifacts(run.id)? {
        let p = Path::new(&a.path);
        if !p.is_file() {
            continue;
        }
        let bytes = std::fs::read(p).map_err(|e| Error::io(p, e))?;
        let name = p
            .file_name()
            .map_or("artifact".into(), |s| s.to_string_lossy().to_string());
        if client.put_artifact(uri, &format!("{}/{name}", a.kind), &bytes)? {
            n += 1;
        }
    }
    Ok(n)
}
