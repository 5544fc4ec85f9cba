//! `come-repro check`: the CI regression check. Runs a grid into a fresh store and compares
//! every metric with a committed baseline; any move beyond its tolerance fails with a
//! readable diff. `--update` rewrites the baseline (an explicit, reviewable change).

use super::bars::Bars;
use anyhow::{bail, Result};
use clap::Args;
use come_repro::grid::GridSpec;
use come_repro::runner::{run_grid, RunnerOptions};
use come_repro::track::{baseline, Store};
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
    let names: BTreeMap<String, String> = come_repro::runner::select(spec.expand()?, &opts)?
        .into_iter()
        .map(|r| (r.hash, r.name))
        .collect();
    let current = baseline::finished_metrics(&store, &names)?;
    let _ = std::fs::remove_dir_all(&tmp);
    if a.update {
        let old = baseline::read(&a.baseline).ok();
        let v = baseline::updated(old.as_ref(), &a.grid, &current, !a.only.is_empty());
        come_repro::publish::write_json(&a.baseline, &v)?;
        println!(
            "baseline {} updated: {} runs",
            a.baseline.display(),
            current.len()
        );
        return Ok(());
    }
    let base = baseline::read(&a.baseline)?;
    let c = baseline::compare(&base, &current, !a.only.is_empty());
    if c.problems.is_empty() {
        println!(
            "check passed: {} metrics of {} runs within tolerance of {}",
            c.compared,
            c.runs,
            a.baseline.display()
        );
        Ok(())
    } else {
        for p in &c.problems {
            eprintln!("  {p}");
        }
        bail!(
            "check failed: {} difference(s) from {}",
            c.problems.len(),
            a.baseline.display()
        )
    }
}
