//! `come-repro grid FILE`: run (or resume) a grid of experiments into the run store.

use super::bars::Bars;
use anyhow::{bail, Context, Result};
use clap::Args;
use come_repro::grid::GridSpec;
use come_repro::runner::{run_grid, select, RunnerOptions, CURRENT, STOP};
use come_repro::runtime::DeviceSpec;
use come_repro::track::{Status, Store};
use std::path::PathBuf;
use std::sync::atomic::Ordering;

#[derive(Args)]
pub struct GridArgs {
    /// Grid spec (TOML).
    pub file: PathBuf,
    /// Run store (SQLite) [default: results/come.sqlite, or with --shard
    /// results/shards/<grid>-<I>-of-<N>.sqlite].
    #[arg(long)]
    pub db: Option<PathBuf>,
    /// Run only part I of N of the grid (0 <= I < N), e.g. `--shard
    /// $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT`; runs sharing a pruned checkpoint
    /// stay in one part.
    #[arg(long)]
    pub shard: Option<come_repro::shard::Shard>,
    /// Show how many runs are finished, running, failed or pending in the store and in
    /// every shard store of this grid, and which shards to resubmit; run nothing.
    #[arg(long, conflicts_with = "dry_run")]
    pub status: bool,
    /// Cache of imported and pruned checkpoints.
    #[arg(long, default_value = "results/cache")]
    pub cache: PathBuf,
    /// Print the runs and which are already done; run nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Rerun finished (and failed) runs too.
    #[arg(long)]
    pub force: bool,
    /// Retry runs that failed in an earlier invocation (by default they stay failed, are
    /// listed at the end and make the exit status non-zero).
    #[arg(long)]
    pub retry_failed: bool,
    /// Stop at the first failed run instead of going on with the next one.
    #[arg(long)]
    pub fail_fast: bool,
    /// Only runs whose name contains this (repeatable).
    #[arg(long)]
    pub only: Vec<String>,
    /// Only runs whose parameter KEY equals VALUE, e.g. `--filter prune.method=come`.
    #[arg(long, value_parser = parse_filter)]
    pub filter: Vec<(String, String)>,
    #[arg(long, value_parser = super::common::at_least_one)]
    pub threads: Option<usize>,
    /// One worker process per device, all claiming runs from the same store
    /// (`--devices cuda:0,cuda:1`, or the flag repeated; `cpu,cpu` runs two CPU workers
    /// with half the threads each). Every stage of a run executes on its worker's
    /// device; the run hash does not change. Default: one process, each run on its
    /// `runtime.device`.
    #[arg(long, value_delimiter = ',', conflicts_with_all = ["status", "dry_run", "worker_device"])]
    pub devices: Vec<DeviceSpec>,
    /// Devices of the distillation workers within one run (CoMe-mp: merged layers
    /// trained in parallel), e.g. `--distill-devices cuda:0,cuda:1`; default: the run's
    /// device.
    #[arg(long, value_delimiter = ',')]
    pub distill_devices: Vec<DeviceSpec>,
    /// Set by `--devices` for each worker it starts: this worker's device.
    #[arg(long, hide = true)]
    pub worker_device: Option<DeviceSpec>,
    /// Set by `--devices` for each worker it starts: the part of the grid it tries first.
    #[arg(long, hide = true)]
    pub worker_prefer: Option<come_repro::shard::Shard>,
    #[command(flatten)]
    pub slurm: super::grid_slurm::SlurmArgs,
}

fn parse_filter(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected KEY=VALUE, got `{s}`"))
}

impl GridArgs {
    /// The store this invocation writes.
    pub fn db(&self) -> PathBuf {
        match (&self.db, self.shard) {
            (Some(db), _) => db.clone(),
            (None, Some(s)) => s.default_db(&self.file),
            (None, None) => PathBuf::from(come_repro::track::store::DEFAULT_PATH),
        }
    }
}

pub fn options(a: &GridArgs) -> RunnerOptions {
    RunnerOptions {
        db: a.db(),
        shard: a.shard,
        cache_dir: a.cache.clone(),
        force: a.force,
        only: a.only.clone(),
        filter: a.filter.clone(),
        threads: a.threads,
        distill_devices: a.distill_devices.clone(),
        device: a.worker_device,
        prefer: a.worker_prefer,
        retry_failed: a.retry_failed,
        fail_fast: a.fail_fast,
    }
}

/// First Ctrl-C: stop after the current stage and mark the run interrupted. Second: mark
/// it interrupted now and exit.
pub fn install_ctrlc(db: PathBuf) {
    let _ = ctrlc::set_handler(move || {
        if STOP.swap(true, Ordering::SeqCst) {
            let id = CURRENT.load(Ordering::SeqCst);
            if id >= 0 {
                if let Ok(s) = Store::open(&db) {
                    let _ = s.interrupt(id);
                }
            }
            eprintln!("\ninterrupted");
            std::process::exit(130);
        }
        eprintln!("\nstopping after the current stage (Ctrl-C again to stop now)");
    });
}

pub fn run(a: GridArgs) -> Result<()> {
    come_repro::runtime::set_threads(a.threads);
    let spec = GridSpec::load(&a.file)?;
    let opts = options(&a);
    // Planning works without the weights; running does not.
    if a.status || a.dry_run {
        for m in spec.missing_models() {
            eprintln!("warning: {}: {m} (a run would refuse)", a.file.display());
        }
    } else {
        spec.require_models()?;
    }
    if a.status {
        return super::grid_status::show(&a, &spec);
    }
    if a.slurm.slurm {
        return super::grid_slurm::submit(&a, &spec);
    }
    if a.dry_run {
        let runs = select(spec.expand()?, &opts)?;
        // Planning reads the store; it neither creates nor migrates it.
        let store = if opts.db.exists() {
            Some(Store::open_read(&opts.db)?)
        } else {
            None
        };
        println!("{} run(s) in {}:", runs.len(), a.file.display());
        let mut done = 0;
        for r in &runs {
            let status = match &store {
                Some(s) => s.run_by_hash(&r.hash)?.map(|row| row.status),
                None => None,
            };
            let st = status.map_or("new".to_string(), |s| s.as_str().to_string());
            if status == Some(Status::Finished) {
                done += 1;
            }
            println!("  {:<11} {}  {}", st, &r.hash[..12], r.name);
        }
        println!("{done} finished, {} to run", runs.len() - done);
        return Ok(());
    }
    if !a.devices.is_empty() {
        return super::grid_workers::run(&a, &spec);
    }
    install_ctrlc(opts.db.clone());
    let mut bars = Bars::new();
    let t0 = std::time::Instant::now();
    let sum = run_grid(&spec, &opts, &mut bars.sink())
        .with_context(|| format!("running {}", a.file.display()))?;
    report(&a, &sum, t0.elapsed());
    if sum.interrupted {
        bail!("interrupted: rerun the same command to resume");
    }
    let failed = sum.failed.len() + sum.failed_before.len();
    if failed > 0 {
        bail!("{failed} run(s) failed");
    }
    Ok(())
}

/// The closing summary: counts, then every failed run with its error.
fn report(a: &GridArgs, sum: &come_repro::runner::Summary, took: std::time::Duration) {
    eprintln!(
        "{}: {} run(s): {} ran, {} already finished, {} failed, {} failed earlier (not retried), {} busy elsewhere, in {:.1} min",
        a.file.display(),
        sum.total,
        sum.ran,
        sum.skipped,
        sum.failed.len(),
        sum.failed_before.len(),
        sum.busy,
        took.as_secs_f64() / 60.0
    );
    for (name, e) in &sum.failed {
        eprintln!("  failed: {name}: {e}");
    }
    for (name, e) in &sum.failed_before {
        eprintln!("  failed earlier: {name}: {e}");
    }
    if !sum.failed_before.is_empty() {
        eprintln!("  (rerun with --retry-failed to try the runs that failed earlier again)");
    }
    if sum.stopped_at_failure {
        eprintln!("  --fail-fast: stopped at the first failure; rerun to go on");
    }
}
