//! Executes a grid: each run is claimed in the store, goes through its stages (model ->
//! prune -> distill -> eval, see [`crate::stages`]) and is finished in one transaction
//! with all its metrics. Shared work is cached on disk by content identity: an imported
//! model once per source file, a pruned checkpoint once per prune-config hash (reused by
//! every eval and recovery variant), a recovered checkpoint once per prune hash and
//! recovery config. Everything is
//! written to a temporary path and renamed into place, so a kill at any point leaves
//! either nothing or a complete artifact, and the store says `running` for a run whose
//! process is gone, which the next invocation re-claims.

use crate::error::{Error, Result};
use crate::experiment::Experiment;
use crate::grid::{GridSpec, RunSpec};
use crate::memory::{PeakMemory, PeakWindow};
use crate::model::load::LoadOptions;
use crate::names;
use crate::progress::{Event, Sink};
use crate::runtime::DeviceSpec;
use crate::stages::{
    Cache, Dest, DistillStage, EvalStage, ModelStage, PruneStage, Stage, StageCtx, StageName,
};
use crate::track::{Artifact, Claim, DocScore, Metric, StageRecord, StageStatus, Store};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::cancel::check as check_stop;
pub use crate::cancel::STOP;

#[derive(Debug, Clone, Default)]
pub struct RunnerOptions {
    pub db: PathBuf,
    /// Where imported and pruned checkpoints are cached.
    pub cache_dir: PathBuf,
    pub force: bool,
    /// Only runs whose name contains one of these (empty: all).
    pub only: Vec<String>,
    /// Only runs whose flattened params match every `key=value`.
    pub filter: Vec<(String, String)>,
    pub threads: Option<usize>,
    /// Devices of the distillation workers within one run, one worker each (`cpu`,
    /// `cuda:1`, ...); empty: the run's device, once.
    pub distill_devices: Vec<DeviceSpec>,
    /// Only this part of the grid (a task of a job array).
    pub shard: Option<crate::shard::Shard>,
    /// Run every stage on this device instead of the run's `runtime.device` (a grid
    /// worker's device). Not part of the run's identity: a result does not depend on
    /// which of a node's devices computed it.
    pub device: Option<DeviceSpec>,
    /// Try the runs of this part of the grid first, then the others (a grid worker's own
    /// part: workers start on disjoint groups of runs sharing a pruned checkpoint and
    /// then help with what is left).
    pub prefer: Option<crate::shard::Shard>,
    /// Put the selection's failed runs back in the queue first (`--retry-failed`); by
    /// default a failed run stays failed and is reported, not retried.
    pub retry_failed: bool,
    /// Stop at the first failed run (`--fail-fast`) instead of going on with the next.
    pub fail_fast: bool,
}

impl RunnerOptions {
    /// The device runs execute on: the worker's, else the run's own.
    pub fn device_for(&self, exp: &Experiment) -> DeviceSpec {
        self.device.unwrap_or(exp.runtime.device)
    }
}

#[derive(Debug, Default, Clone)]
pub struct Summary {
    pub total: usize,
    pub ran: usize,
    pub skipped: usize,
    /// Runs that failed in this invocation: (name, error).
    pub failed: Vec<(String, String)>,
    /// Runs that had failed before and were not retried: (name, their error).
    pub failed_before: Vec<(String, String)>,
    pub busy: usize,
    pub interrupted: bool,
    /// `fail_fast` stopped the grid at a failure, with runs left.
    pub stopped_at_failure: bool,
}

/// Put the failed runs of the selection back in the queue (`--retry-failed`); returns
/// how many. A grid with several workers does this once, before they start, so that no
/// run is retried twice.
pub fn requeue_failed(spec: &GridSpec, opts: &RunnerOptions) -> Result<usize> {
    let runs = select(spec.expand()?, opts)?;
    let store = Store::open(&opts.db)?;
    let hashes: Vec<String> = runs.into_iter().map(|r| r.hash).collect();
    Ok(store.requeue_failed(&hashes)?)
}

/// Runs selected by `--only` / `--filter`, then `--shard`.
pub fn select(runs: Vec<RunSpec>, opts: &RunnerOptions) -> Result<Vec<RunSpec>> {
    let runs = select_by_name_and_params(runs, opts);
    match opts.shard {
        Some(s) => crate::shard::select(runs, s),
        None => Ok(runs),
    }
}

fn select_by_name_and_params(runs: Vec<RunSpec>, opts: &RunnerOptions) -> Vec<RunSpec> {
    runs.into_iter()
        .filter(|r| opts.only.is_empty() || opts.only.iter().any(|o| r.name.contains(o.as_str())))
        .filter(|r| {
            let p = r.params();
            opts.filter.iter().all(|(k, v)| {
                p.get(k).is_some_and(|x| match x {
                    serde_json::Value::String(s) => s == v,
                    other => &other.to_string() == v,
                })
            })
        })
        .collect()
}

pub fn run_grid(spec: &GridSpec, opts: &RunnerOptions, events: Sink) -> Result<Summary> {
    spec.require_models()?;
    let runs = preferred_first(select(spec.expand()?, opts)?, opts)?;
    let store = Store::open(&opts.db)?;
    store.register(&runs)?;
    if opts.retry_failed {
        let hashes: Vec<String> = runs.iter().map(|r| r.hash.clone()).collect();
        let n = store.requeue_failed(&hashes)?;
        if n > 0 {
            events(Event::Note(format!("retrying {n} failed run(s)")));
        }
    }
    let env = crate::track::env::collect();
    let mut sum = Summary {
        total: runs.len(),
        ..Default::default()
    };
    for (i, run) in runs.iter().enumerate() {
        if STOP.load(Ordering::SeqCst) {
            sum.interrupted = true;
            break;
        }
        events(Event::Run {
            done: i,
            total: runs.len(),
            name: run.name.clone(),
        });
        let id = match store.claim(run, opts.force)? {
            Claim::Skip(_) => {
                sum.skipped += 1;
                continue;
            }
            Claim::Failed { error, .. } => {
                let error = error.unwrap_or_else(|| "no error recorded".into());
                sum.failed_before.push((run.name.clone(), error));
                continue;
            }
            Claim::Busy { .. } => {
                sum.busy += 1;
                continue;
            }
            Claim::Run(id) => id,
        };
        CURRENT.store(id, Ordering::SeqCst);
        store.record_env(id, &run_env(&env, run, opts))?;
        let next = run_claimed(spec, run, id, &store, opts, &mut sum, &mut *events);
        CURRENT.store(-1, Ordering::SeqCst);
        if !next? {
            // Not interrupted: `fail_fast` stopped at this failure.
            sum.stopped_at_failure = !sum.interrupted && i + 1 < runs.len();
            break;
        }
    }
    events(Event::Run {
        done: runs.len(),
        total: runs.len(),
        name: String::new(),
    });
    Ok(sum)
}

/// With a preferred part (a grid worker's own), that part's runs first, then the others,
/// each half in the grid's order.
fn preferred_first(runs: Vec<RunSpec>, opts: &RunnerOptions) -> Result<Vec<RunSpec>> {
    let Some(p) = opts.prefer else {
        return Ok(runs);
    };
    let part = crate::shard::assign(&runs, p.count)?;
    let mut tagged: Vec<(bool, RunSpec)> =
        part.into_iter().map(|k| k != p.index).zip(runs).collect();
    // Stable: the grid's order within each half.
    tagged.sort_by_key(|(other, _)| *other);
    Ok(tagged.into_iter().map(|(_, r)| r).collect())
}

/// Execute a claimed run and record how it ended: finished with its results, interrupted,
/// or failed. Returns whether the grid goes on with the next run.
fn run_claimed(
    spec: &GridSpec,
    run: &RunSpec,
    id: i64,
    store: &Store,
    opts: &RunnerOptions,
    sum: &mut Summary,
    events: Sink,
) -> Result<bool> {
    // A bug in one run (a panic) fails that run, not the grid.
    let outcome = crate::panic_guard::catch(|| execute(spec, run, id, store, opts, events));
    match outcome {
        Ok(out) => {
            store.finish_scored(id, &out.metrics, &out.artifacts, &out.docs)?;
            sum.ran += 1;
            Ok(true)
        }
        Err(e) if matches!(e, Error::Interrupted) || STOP.load(Ordering::SeqCst) => {
            // A second Ctrl-C marks the run itself (then exits): not an error here.
            if let Err(err) = store.interrupt(id) {
                if store.run(id)?.status != crate::track::Status::Interrupted {
                    return Err(err.into());
                }
            }
            sum.interrupted = true;
            events(Event::Note(format!("{}: interrupted ({e})", run.name)));
            Ok(false)
        }
        Err(e) => {
            store.fail(id, &e.to_string())?;
            events(Event::Note(format!("{}: FAILED: {e}", run.name)));
            sum.failed.push((run.name.clone(), e.to_string()));
            Ok(!opts.fail_fast)
        }
    }
}

/// The machine's environment plus what this run adds: threads, device, seeds.
fn run_env(
    machine: &std::collections::BTreeMap<String, String>,
    run: &RunSpec,
    opts: &RunnerOptions,
) -> std::collections::BTreeMap<String, String> {
    let mut env = machine.clone();
    env.insert("threads".into(), tch::get_num_threads().to_string());
    let exp = &run.experiment;
    env.insert("device".into(), device_description(opts.device_for(exp)));
    if let Some(p) = &exp.prune {
        env.insert("seed.prune".into(), p.seed.to_string());
        env.insert("seed.calibration".into(), p.calib.seed.to_string());
    }
    if !exp.recovery.is_none() {
        env.insert("seed.recovery".into(), exp.recovery.seed.to_string());
    }
    env.insert(
        "seed.eval_subset".into(),
        exp.eval
            .seed
            .map_or("none (first N)".into(), |s| s.to_string()),
    );
    env
}

/// "cpu", or the CUDA device index with the GPU count.
fn device_description(spec: DeviceSpec) -> String {
    match spec.resolve() {
        Ok(tch::Device::Cuda(n)) => format!("cuda:{n} of {} GPU(s)", tch::Cuda::device_count()),
        Ok(d) => crate::runtime::device_name(d),
        Err(_) => spec.to_string(),
    }
}

/// The run being executed (for the Ctrl-C handler), -1 when none.
pub static CURRENT: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(-1);

/// One stage of a run, wrapped as every stage is: Ctrl-C checked first, its time and peak
/// memory measured, a panic inside it caught, its record written to the store (finished,
/// reused from the cache, or failed), and what it measured added to the run's outcome.
fn run_stage<S: Stage>(
    run: &RunRef,
    ctx: &mut StageCtx,
    out: &mut Outcome,
    stage: S,
) -> Result<S::Output> {
    (ctx.events)(Event::Stage {
        run: run.name.to_string(),
        stage: S::NAME.as_str(),
    });
    check_stop()?;
    let cache_key = stage.cache_key();
    let t0 = Instant::now();
    let window = PeakWindow::start(ctx.load.device);
    let r = crate::panic_guard::catch(|| stage.run(ctx));
    let peak = window.finish();
    let status = match &r {
        Ok(done) if done.reused => StageStatus::Reused,
        Ok(_) => StageStatus::Finished,
        Err(_) => StageStatus::Failed,
    };
    // A reused stage's peak is that of reading its output, not of making it.
    if status == StageStatus::Finished {
        out.metrics.extend(peak_metrics(S::NAME, &peak));
    }
    let output = r.as_ref().ok().and_then(|d| d.output.clone());
    run.store.record_stage(
        run.id,
        &StageRecord {
            stage: S::NAME.as_str().into(),
            status,
            seconds: Some(t0.elapsed().as_secs_f64()),
            cache_key,
            output: output.map(|p| p.display().to_string()),
        },
    )?;
    let done = r?;
    out.metrics.extend(done.metrics);
    for (path, kind) in done.artifacts {
        out.artifacts.push(Artifact::from_path(path, kind)?);
    }
    if !done.env.is_empty() {
        run.store.record_env(run.id, &done.env)?;
    }
    out.docs.extend(done.docs);
    Ok(done.value)
}

/// A stage's peak memory as metrics, context `stage=<name>` (`,from=process` when the
/// kernel kept the process's high-water mark and the host peak may be an earlier one).
fn peak_metrics(stage: StageName, peak: &PeakMemory) -> Vec<Metric> {
    let mut context = format!("stage={stage}");
    if !peak.host_from_start {
        context.push_str(",from=process");
    }
    let mut m = vec![];
    if let Some(v) = peak.host_mib {
        m.push(Metric::new("", names::STAGE_PEAK_RSS_MIB, v).with_context(context));
    }
    if let Some(v) = peak.device_mib {
        m.push(
            Metric::new("", names::STAGE_PEAK_DEVICE_MIB, v).with_context(format!("stage={stage}")),
        );
    }
    m
}

/// What a run leaves in the store.
#[derive(Default)]
struct Outcome {
    metrics: Vec<Metric>,
    artifacts: Vec<Artifact>,
    docs: Vec<DocScore>,
}

/// How often a long stage refreshes the run's heartbeat in the store.
const HEARTBEAT: Duration = Duration::from_secs(15);

/// The run's stages in order: model -> prune (if any) -> distill (if any) -> eval.
fn execute(
    spec: &GridSpec,
    run: &RunSpec,
    id: i64,
    store: &Store,
    opts: &RunnerOptions,
    events: Sink,
) -> Result<Outcome> {
    let exp = &run.experiment;
    inject_panic(&run.name);
    let load = LoadOptions {
        device: opts.device_for(exp).resolve()?,
        dtype: exp.runtime.dtype.kind(),
    };
    let cache = Cache::new(&opts.cache_dir);
    let mut last = Instant::now();
    let mut keepalive = || {
        if last.elapsed() >= HEARTBEAT {
            let _ = store.heartbeat(id);
            last = Instant::now();
        }
    };
    let mut ctx = StageCtx {
        load,
        cache: Some(&cache),
        events,
        keepalive: &mut keepalive,
        distill_devices: opts
            .distill_devices
            .iter()
            .map(|d| d.resolve())
            .collect::<Result<_>>()?,
    };
    let r = RunRef {
        id,
        name: &run.name,
        store,
    };
    let mut out = Outcome::default();
    let source = spec.model_source(&exp.model)?;
    let model = ModelStage {
        source: &source,
        name: &exp.model,
    };
    let base = run_stage(&r, &mut ctx, &mut out, model)?;
    let mut model_dir = base.clone();
    if let Some(cfg) = &exp.prune {
        let prune = PruneStage {
            base: &base,
            cfg,
            dest: Dest::Cache(exp.prune_hash().unwrap_or_default()),
        };
        model_dir = run_stage(&r, &mut ctx, &mut out, prune)?;
    }
    if !exp.recovery.is_none() {
        let distill = DistillStage::new(exp, &base, &model_dir)?;
        model_dir = run_stage(&r, &mut ctx, &mut out, distill)?;
    }
    let eval = EvalStage::of_run(&exp.eval, &model_dir);
    run_stage(&r, &mut ctx, &mut out, eval)?;
    Ok(out)
}

/// Fault injection for the tests: a run whose name contains `COME_INJECT_PANIC` panics at
/// its start, which shows that a bug in one run fails that run and not the grid.
fn inject_panic(run: &str) {
    if let Some(pat) = std::env::var_os("COME_INJECT_PANIC") {
        let pat = pat.to_string_lossy();
        if !pat.is_empty() && run.contains(pat.as_ref()) {
            panic!("injected panic in {run} (COME_INJECT_PANIC)");
        }
    }
}

/// The run whose stages are executing, as the store knows it.
struct RunRef<'a> {
    id: i64,
    name: &'a str,
    store: &'a Store,
}
