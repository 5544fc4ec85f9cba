//! Results in lm-evaluation-harness's JSON layout (same top-level keys and metric names,
//! e.g. `"acc,none"`, `"acc_stderr,none"`), plus a readable table.

use super::harness::TaskResult;
use super::perplexity::PplResult;
use serde_json::{json, Map, Value};

/// Extra facts recorded beside lm-eval's keys.
pub struct RunInfo {
    pub model: String,
    pub model_args: String,
    pub device: String,
    pub limit: Option<usize>,
    pub fraction: Option<f64>,
    pub seed: Option<u64>,
    pub batch_size: super::batching::BatchSize,
    /// The budget the first forward tried, and the one in use at the end (smaller after an
    /// out-of-memory back-off).
    pub token_budget: usize,
    pub final_token_budget: usize,
    pub threads: usize,
    /// Loading the model (and tokenizer) before the first task.
    pub load_seconds: f64,
    pub seconds: f64,
}

fn metric_entries(out: &mut Map<String, Value>, name: &str, v: &super::harness::MetricValue) {
    out.insert(format!("{name},none"), json!(v.value));
    let se = if v.stderr.is_finite() {
        json!(v.stderr)
    } else {
        json!("N/A")
    };
    out.insert(format!("{name}_stderr,none"), se);
}

/// The per-task sections of lm-eval's layout, each keyed by task name and filled in task
/// order (with `preserve_order`, insertion order is the order in the file).
#[derive(Default)]
struct TaskSections {
    results: Map<String, Value>,
    groups: Map<String, Value>,
    group_subtasks: Map<String, Value>,
    configs: Map<String, Value>,
    versions: Map<String, Value>,
    n_shot: Map<String, Value>,
    higher: Map<String, Value>,
    n_samples: Map<String, Value>,
}

impl TaskSections {
    fn build(tasks: &[TaskResult]) -> Self {
        let mut s = TaskSections::default();
        for t in tasks {
            s.add(t);
        }
        s
    }

    /// One task's entries in every section.
    fn add(&mut self, t: &TaskResult) {
        let mut r = Map::new();
        r.insert("alias".into(), json!(t.task));
        for (m, v) in &t.metrics {
            metric_entries(&mut r, m, v);
        }
        self.results
            .insert(t.task.clone(), Value::Object(r.clone()));
        if !t.groups.is_empty() {
            self.groups.insert(t.task.clone(), Value::Object(r));
            self.add_group_tree(t);
        }
        self.configs.insert(t.task.clone(), task_config(t));
        self.versions.insert(t.task.clone(), json!(1.0));
        self.n_shot.insert(t.task.clone(), json!(t.num_fewshot));
        self.higher.insert(
            t.task.clone(),
            json!(t
                .metrics
                .keys()
                .map(|m| (m.clone(), json!(true)))
                .collect::<Map<_, _>>()),
        );
        self.n_samples.insert(
            t.task.clone(),
            json!({"original": t.n_docs_total, "effective": t.n_docs}),
        );
    }

    /// lm-eval's tree for a grouped task: mmlu -> its four subject groups -> subjects;
    /// subjects outside the known groups (a user's own data) hang from the task directly.
    fn add_group_tree(&mut self, t: &TaskResult) {
        let entry = |alias: String, v: &super::harness::MetricValue| {
            let mut e = Map::new();
            e.insert("alias".into(), json!(alias));
            metric_entries(&mut e, "acc", v);
            Value::Object(e)
        };
        let mut top = vec![];
        for (c, v) in &t.categories {
            let name = format!("{}_{c}", t.task);
            self.results
                .insert(name.clone(), entry(format!(" - {c}"), v));
            self.groups
                .insert(name.clone(), entry(format!(" - {c}"), v));
            let mut subs = vec![];
            for (g, v) in &t.groups {
                if super::tasks::mmlu_category(g) == Some(c.as_str()) {
                    let sub = format!("{}_{g}", t.task);
                    self.results
                        .insert(sub.clone(), entry(format!("  - {g}"), v));
                    subs.push(sub);
                }
            }
            self.group_subtasks.insert(name.clone(), json!(subs));
            top.push(name);
        }
        for (g, v) in &t.groups {
            if super::tasks::mmlu_category(g).is_none() {
                let sub = format!("{}_{g}", t.task);
                self.results
                    .insert(sub.clone(), entry(format!(" - {g}"), v));
                top.push(sub);
            }
        }
        self.group_subtasks.insert(t.task.clone(), json!(top));
    }
}

/// A task's entry under `configs`: the subset of lm-eval's task config that applies,
/// plus the dataset files and their hashes.
fn task_config(t: &TaskResult) -> Value {
    let metric_names: Vec<&String> = t.metrics.keys().collect();
    json!({
        "task": t.task,
        "output_type": "multiple_choice",
        "num_fewshot": t.num_fewshot,
        "target_delimiter": " ",
        "metric_list": metric_names.iter().map(|m| json!({"metric": m, "aggregation": "mean", "higher_is_better": true})).collect::<Vec<_>>(),
        "dataset_files": t.files.iter().map(|(p, h)| json!({"path": p, "sha256": h})).collect::<Vec<_>>(),
    })
}

/// The run-wide `config` section (lm-eval's keys).
fn run_config(info: &RunInfo) -> Value {
    json!({
        "model": "come-repro",
        "model_args": info.model_args,
        "batch_size": info.batch_size.to_string(),
        "device": info.device,
        "limit": info.limit,
        "fraction": info.fraction,
        "random_seed": info.seed,
    })
}

/// The `come_repro` section: facts lm-eval has no key for (threads, MKL settings, token
/// budgets, throughput and the score profile).
fn come_repro_section(tasks: &[TaskResult], info: &RunInfo) -> Value {
    let forwarded: usize = tasks.iter().map(|t| t.tokens_forwarded).sum();
    let task_seconds: f64 = tasks.iter().map(|t| t.seconds).sum();
    let total = super::profile::ScoreProfile::total(tasks.iter().map(|t| &t.profile));
    let per_task: Map<String, Value> = tasks
        .iter()
        .map(|t| (t.task.clone(), json!(t.profile)))
        .collect();
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "model": info.model,
        "threads": info.threads,
        "mkl": crate::mkl_dispatch::settings()
            .into_iter()
            .map(|(k, v)| (k.to_string(), Value::from(v)))
            .collect::<Map<String, Value>>(),
        "token_budget": {"initial": info.token_budget, "final": info.final_token_budget},
        "tokens_forwarded": forwarded,
        "task_seconds": task_seconds,
        "tokens_per_second": forwarded as f64 / task_seconds.max(1e-9),
        "profile": {
            "model_load_s": info.load_seconds,
            "total": total,
            "tasks": per_task,
        },
    })
}

/// The whole results file in lm-evaluation-harness's layout, with `perplexity` added when
/// there are perplexity results.
pub fn lm_eval_json(tasks: &[TaskResult], ppl: &[(String, PplResult)], info: &RunInfo) -> Value {
    let s = TaskSections::build(tasks);
    let mut out = json!({
        "results": s.results,
        "groups": s.groups,
        "group_subtasks": s.group_subtasks,
        "configs": s.configs,
        "versions": s.versions,
        "n-shot": s.n_shot,
        "higher_is_better": s.higher,
        "n-samples": s.n_samples,
        // lm-eval's per-task SHA-256 over documents, prompts and targets: equal hashes
        // mean byte-identical prompts (see eval::tasks::lm_hash).
        "task_hashes": tasks
            .iter()
            .flat_map(|t| t.task_hashes.iter().map(|(k, v)| (k.clone(), json!(v))))
            .collect::<Map<String, Value>>(),
        "config": run_config(info),
        "git_hash": crate::track_git_sha(),
        "date": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0),
        "total_evaluation_time_seconds": format!("{:.3}", info.seconds),
        "come_repro": come_repro_section(tasks, info),
    });
    if !ppl.is_empty() {
        let m: Map<String, Value> = ppl.iter().map(|(n, p)| (n.clone(), json!(p))).collect();
        out["perplexity"] = Value::Object(m);
    }
    out
}

/// A Markdown table like lm-eval's summary.
pub fn table(tasks: &[TaskResult], ppl: &[(String, PplResult)]) -> String {
    let mut s = String::from("|Task|n|Metric|Value|Stderr|\n|---|---:|---|---:|---:|\n");
    for t in tasks {
        for (m, v) in &t.metrics {
            s += &format!(
                "|{}|{}|{}|{:.4}|{:.4}|\n",
                t.task, t.n_docs, m, v.value, v.stderr
            );
        }
        for (c, v) in &t.categories {
            s += &format!("| - {}_{c}| |acc|{:.4}|{:.4}|\n", t.task, v.value, v.stderr);
        }
    }
    for (name, p) in ppl {
        let how = p.context().replace(',', ", ").replace('=', " ");
        s += &format!("|{name} ({how})|{}|ppl|{:.4}| |\n", p.windows, p.ppl);
    }
    s
}
