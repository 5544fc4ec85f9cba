//! `come-repro check`: the CI regression check. Runs a grid into a fresh store and compares
//! every metric with a committed baseline; any move beyond its tolerance fails with a
//! readable diff. `--update` rewrites the baseline (an explicit, reviewable change).

use super::bars::Bars;
use anyhow::{bail, Context, Result};
use clap::Args;
use come_repro::grid::GridSpec;
use come_repro::runner::{run_grid, RunnerOptions};
use come_repro::track::{RunFilter, Status, Store};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Args)]
pub struct CheckArgs {
    #[arg(long)]
    pub grid: PathBuf,
    #[arg(long)]
    pub baseline: PathBuf,
    /// Store to run into (default: a fresh temporary one, so nothing is reused). Several
    /// (`--db A --db B`, e.g. the shard stores of a Slurm run) are merged into a temporary
    /// store first; runs finished there are compared, not recomputed.
    #[arg(long)]
    pub db: Vec<PathBuf>,
    /// Checkpoint cache (default: a fresh temporary one, so every stage is recomputed).
    #[arg(long)]
    pub cache: Option<PathBuf>,
    /// Write the current metrics as the new baseline instead of comparing.
    #[arg(long)]
    pub update: bool,
    #[arg(long, value_parser = super::common::at_least_one)]
    pub threads: Option<usize>,
    /// Only runs whose name contains this (repeatable).
    #[arg(long)]
    pub only: Vec<String>,
}

/// Tolerance for a metric name: absolute for accuracies (identical predictions are
/// expected, so any flipped item shows), relative for perplexities.
fn tolerance(tol: &Value, metric: &str) -> (f64, f64) {
    let name = metric.rsplit('/').next().unwrap_or(metric);
    let name = name.split('[').next().unwrap_or(name);
    let t = tol.get(name).or_else(|| tol.get("default"));
    let abs = t
        .and_then(|t| t.get("abs"))
        .and_then(Value::as_f64)
        .unwrap_or(1e-6);
    let rel = t
        .and_then(|t| t.get("rel"))
        .and_then(Value::as_f64)
        .unwrap_or(0.0);
    (abs, rel)
}

pub fn run(a: CheckArgs) -> Result<()> {
    come_repro::runtime::set_threads(a.threads);
    let spec = GridSpec::load(&a.grid)?;
    let tmp = come_repro::paths::work_dir().join(format!("check-{}", std::process::id()));
    let db = match a.db.as_slice() {
        [] => tmp.join("check.sqlite"),
        [one] => one.clone(),
        many => super::runs::merge(many, &tmp.join("merged.sqlite"))?
            .path()
            .to_path_buf(),
    };
    let cache = a.cache.clone().unwrap_or_else(|| tmp.join("cache"));
    let opts = RunnerOptions {
        db: db.clone(),
        cache_dir: cache,
        force: a.db.is_empty(),
        only: a.only.clone(),
        filter: vec![],
        threads: a.threads,
        ..Default::default()
    };
    let sum = run_grid(&spec, &opts, &mut Bars::new().sink())?;
    let failed: Vec<_> = sum.failed.iter().chain(&sum.failed_before).collect();
    if !failed.is_empty() {
        bail!("{} run(s) failed: {failed:?}", failed.len());
    }
    let store = Store::open(&db)?;
    let hashes: BTreeMap<String, String> = come_repro::runner::select(spec.expand()?, &opts)?
        .into_iter()
        .map(|r| (r.hash, r.name))
        .collect();
    let mut current: BTreeMap<String, BTreeMap<String, f64>> = BTreeMap::new();
    for row in store.runs(&RunFilter {
        status: Some(Status::Finished),
        ..Default::default()
    })? {
        let Some(name) = hashes.get(&row.hash) else {
            continue;
        };
        let m = current.entry(name.clone()).or_default();
        for x in store.metrics(row.id)? {
            if !come_repro::names::is_machine_measurement(&x.key()) {
                m.insert(x.key(), x.value);
            }
        }
    }
    let _ = std::fs::remove_dir_all(&tmp);
    if a.update {
        let old: Value = std::fs::read_to_string(&a.baseline)
            .ok()
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or(json!({}));
        // Accuracies may move by one item (0.05 on 20 documents) when a near-tie flips on
        // another CPU's float rounding; perplexity catches any real change of the logits.
        let tol = old.get("tolerance").cloned().unwrap_or(json!({
            "default": {"abs": 1e-6},
            "acc": {"abs": 0.051},
            "acc_norm": {"abs": 0.051},
            "ppl_wikitext2": {"rel": 1e-3},
            "distill_loss": {"rel": 1e-2},
            "distill_val_loss": {"rel": 1e-2},
            "params": {"abs": 0.0},
            "layers": {"abs": 0.0},
            "layers_removed": {"abs": 0.0},
            "n": {"abs": 0.0},
        }));
        // With --only, the selected runs replace theirs and the others stay as they were.
        let mut runs: serde_json::Map<String, Value> = match old.get("runs") {
            Some(Value::Object(m)) if !a.only.is_empty() => m.clone(),
            _ => serde_json::Map::new(),
        };
        for (name, m) in &current {
            runs.insert(name.clone(), json!(m));
        }
        let v = json!({
            "grid": a.grid,
            "note": "Written by `come-repro check --update`; compared by `come-repro check`. Accuracies may move by one item (0.05 on 20 documents); perplexities are compared relatively, counts exactly.",
            "tolerance": tol,
            "runs": runs,
        });
        come_repro::publish::write_json(&a.baseline, &v)?;
        println!(
            "baseline {} updated: {} runs",
            a.baseline.display(),
            current.len()
        );
        return Ok(());
    }
    let base: Value = serde_json::from_str(
        &std::fs::read_to_string(&a.baseline)
            .with_context(|| format!("reading {}", a.baseline.display()))?,
    )
    .with_context(|| format!("{} is not valid JSON", a.baseline.display()))?;
    let tol = base.get("tolerance").cloned().unwrap_or(json!({}));
    let want = base
        .get("runs")
        .and_then(Value::as_object)
        .ok_or_else(|| anyhow::anyhow!("{}: no `runs` object", a.baseline.display()))?;
    let mut problems = vec![];
    let mut compared = 0;
    for (run, metrics) in want {
        let Some(got) = current.get(run) else {
            // With --only, runs left out of the selection are not compared.
            if !a.only.is_empty() {
                continue;
            }
            problems.push(format!(
                "{run}: in the baseline but not produced by the grid"
            ));
            continue;
        };
        for (k, v) in metrics.as_object().into_iter().flatten() {
            let Some(w) = v.as_f64() else { continue };
            match got.get(k) {
                None => problems.push(format!("{run}: {k}: missing (baseline {w})")),
                Some(&g) => {
                    compared += 1;
                    let (abs, rel) = tolerance(&tol, k);
                    let allowed = abs.max(rel * w.abs());
                    if (g - w).abs() > allowed || g.is_nan() != w.is_nan() {
                        problems.push(format!("{run}: {k}: {g:.6} vs baseline {w:.6} (diff {:+.6}, tolerance {allowed:.2e})", g - w));
                    }
                }
            }
        }
    }
    for run in current.keys() {
        if !want.contains_key(run) {
            problems.push(format!(
                "{run}: produced by the grid but not in the baseline (run with --update to add it)"
            ));
        }
    }
    if problems.is_empty() {
        println!(
            "check passed: {compared} metrics of {} runs within tolerance of {}",
            want.len(),
            a.baseline.display()
        );
        Ok(())
    } else {
        for p in &problems {
            eprintln!("  {p}");
        }
        bail!(
            "check failed: {} difference(s) from {}",
            problems.len(),
            a.baseline.display()
        )
    }
}
