//! `come-repro bench precision`: the same documents scored under several dtypes, each
//! against the first: speed, scores, and how far the per-choice log-likelihoods and the
//! predictions move. Answers "may my tables use bf16?" for a given model and machine.

use super::common::bar;
use super::eval::expand_tasks;
use anyhow::{Context, Result};
use clap::Args;
use come_repro::eval::batching::BatchSize;
use come_repro::eval::harness::{evaluate_task, EvalOptions, TaskResult};
use come_repro::eval::loglik::ScoreOptions;
use come_repro::eval::shift::Shift;
use come_repro::eval::tasks::{load_task, subset, TaskData, TaskSource};
use come_repro::model::load::{load_model, LoadOptions};
use come_repro::model::tokenizer::Tokenizer;
use come_repro::runtime;
use std::path::PathBuf;

#[derive(Args)]
pub struct PrecisionArgs {
    #[arg(long)]
    pub model: PathBuf,
    /// Tasks (as for `eval`).
    #[arg(long, value_delimiter = ',', default_value = "all7")]
    pub tasks: Vec<String>,
    /// First N documents of each task.
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
    /// Dtypes to compare; the first is the reference.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "f32,bf16")]
    pub dtypes: Vec<runtime::Dtype>,
    #[arg(long, default_value = "auto")]
    pub batch_size: BatchSize,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[arg(long, value_parser = super::common::at_least_one)]
    pub threads: Option<usize>,
    /// Also write the comparison as JSON here.
    #[arg(long)]
    pub output: Option<PathBuf>,
}

/// One dtype's run of every task.
struct DtypeRun {
    dtype: String,
    tasks: Vec<TaskResult>,
    seconds: f64,
}

/// How one task's documents moved between the reference and another dtype.
fn shift(task: &TaskData, a: &TaskResult, b: &TaskResult) -> Shift {
    let mut s = Shift::default();
    for (x, y) in a.docs.iter().zip(&b.docs) {
        if let Some(doc) = task.docs.get(x.doc_id) {
            s.add(doc, &x.loglik, &y.loglik);
        }
    }
    s
}

fn metric(r: &TaskResult, m: &str) -> Option<f64> {
    r.metrics.get(m).map(|v| 100.0 * v.value)
}

pub fn run(a: PrecisionArgs) -> Result<()> {
    let threads = runtime::set_threads(a.threads);
    let device = runtime::parse_device(&a.device)?;
    let names = expand_tasks(&a.tasks)?;
    let src = TaskSource::new(come_repro::paths::data_dir());
    let data: Vec<_> = names
        .iter()
        .map(|t| load_task(t, &src))
        .collect::<Result<_, _>>()?;
    let tok = Tokenizer::from_dir(&a.model)
        .with_context(|| format!("loading tokenizer from {}", a.model.display()))?;
    let mut runs: Vec<DtypeRun> = vec![];
    for d in &a.dtypes {
        runs.push(run_dtype(&a, *d, device, &tok, &data)?);
    }
    let reference = &runs[0];
    let forwarded: usize = reference.tasks.iter().map(|t| t.tokens_forwarded).sum();
    println!(
        "{} tasks x {} docs on {}, {threads} thread(s); reference {}",
        data.len(),
        a.limit,
        runtime::device_name(device),
        reference.dtype
    );
    let json_rows = print_tasks(&runs, &data);
    let summary = print_speed(&runs, forwarded);
    if let Some(out) = &a.output {
        let v = serde_json::json!({
            "model": a.model.display().to_string(), "device": runtime::device_name(device),
            "threads": threads, "limit": a.limit, "tokens_forwarded": forwarded,
            "runs": summary, "tasks": json_rows,
        });
        std::fs::write(out, serde_json::to_string_pretty(&v)? + "\n")
            .with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(())
}

/// Loads the model as `d` and scores the first `a.limit` documents of every task.
fn run_dtype(
    a: &PrecisionArgs,
    d: runtime::Dtype,
    device: tch::Device,
    tok: &Tokenizer,
    data: &[TaskData],
) -> Result<DtypeRun> {
    let dtype = d.kind();
    let model = load_model(&a.model, LoadOptions { device, dtype })
        .with_context(|| format!("loading {} as {d}", a.model.display()))?;
    let mut opts = EvalOptions {
        score: ScoreOptions {
            max_length: model.config.max_position_embeddings.max(1) as usize,
            token_budget: a.batch_size.initial_tokens(device),
        },
        add_special: true,
    };
    let mut tasks = vec![];
    let t0 = std::time::Instant::now();
    for task in data {
        let idx = subset(task.docs.len(), Some(a.limit), None, None);
        let pb = bar(idx.len() as u64, &format!("{} {d}", task.name));
        let r = evaluate_task(&model, tok, task, &idx, &mut opts, |done, _| {
            pb.set_position(done as u64)
        })?;
        pb.finish_and_clear();
        tasks.push(r);
    }
    Ok(DtypeRun {
        dtype: runtime::dtype_name(dtype).to_string(),
        tasks,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// Prints the per-task table (each dtype against the first) and returns its JSON rows.
fn print_tasks(runs: &[DtypeRun], data: &[TaskData]) -> Vec<serde_json::Value> {
    let reference = &runs[0];
    println!(
        "  {:<14} {:>5} {:>7} {:>9} {:>10} {:>11} {:>8} {:>8}",
        "task", "dtype", "acc", "acc_norm", "max|dLL|", "mean|dLL|", "acc chg", "norm chg"
    );
    let mut json_rows = vec![];
    for (i, t) in reference.tasks.iter().enumerate() {
        for run in runs {
            let r = &run.tasks[i];
            let s = shift(&data[i], t, r);
            let has_norm = t.metrics.contains_key("acc_norm");
            let fmt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
            println!(
                "  {:<14} {:>5} {:>7} {:>9} {:>10.4} {:>11.5} {:>8} {:>8}",
                t.task,
                run.dtype,
                fmt(metric(r, "acc")),
                fmt(metric(r, "acc_norm")),
                s.max_abs_loglik,
                s.mean_abs_loglik,
                s.changed_acc,
                if has_norm {
                    s.changed_acc_norm.to_string()
                } else {
                    "-".into()
                }
            );
            json_rows.push(serde_json::json!({
                "task": t.task, "dtype": run.dtype, "n_docs": r.n_docs,
                "acc": metric(r, "acc"), "acc_norm": metric(r, "acc_norm"), "shift": s,
            }));
        }
    }
    json_rows
}

/// Prints each dtype's speed and average score and returns them as JSON rows;
/// `forwarded` is the reference's number of tokens forwarded.
fn print_speed(runs: &[DtypeRun], forwarded: usize) -> Vec<serde_json::Value> {
    let reference = &runs[0];
    let avg = |run: &DtypeRun| {
        let v: Vec<f64> = run
            .tasks
            .iter()
            .filter_map(|t| metric(t, "acc_norm").or_else(|| metric(t, "acc")))
            .collect();
        v.iter().sum::<f64>() / v.len().max(1) as f64
    };
    let mut summary = vec![];
    for run in runs {
        println!(
            "  {:>5}: {:>7.1} s, {:>6.0} tok/s, {:.2}x the reference's speed; average (acc_norm where defined) {:.2}",
            run.dtype,
            run.seconds,
            forwarded as f64 / run.seconds,
            reference.seconds / run.seconds,
            avg(run)
        );
        summary.push(serde_json::json!({
            "dtype": run.dtype, "seconds": run.seconds,
            "tokens_per_s": forwarded as f64 / run.seconds, "average": avg(run),
        }));
    }
    summary
}
