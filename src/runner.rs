//! Executes a grid: each run is claimed in the store, goes through its stages (model ->
//! prune -> distill -> eval, see [`crate::stages`]) and is finished in one transaction
//! with all its metrics. Shared work is cached on disk by content identity: an imported
//! model once per source file, a pruned checkpoint once per prune-config hash (reused by
//! every eval and recovery variant), a recovered checkpoint once per prune hash and
//! recovery config. Everything is
//! written to a temporary path and renamed into place, so a kill at any point leaves
//! either nothing or a complete artifact, and the store says `running` for a run whose
//! process is gone, which the next invocation re-claims.

use crate::distill::{DistillRecord, RecoveryConfig};
use crate::error::{Error, Result};
use crate::eval::ppl_corpus::Corpus;
use crate::eval::tasks::{load_task, TaskSource};
use crate::experiment::Experiment;
use crate::grid::{GridSpec, RunSpec};
use crate::memory::{PeakMemory, PeakWindow};
use crate::model::load::{load_model, LoadOptions};
use crate::model::tokenizer::Tokenizer;
use crate::names;
use crate::progress::{Event, Sink};
use crate::prune::PruneConfig;
use crate::stages::{
    self, distill_checkpoint, evaluate, prepare_model, prune_checkpoint, EvalHooks, EvalInputs,
    EvalOutcome, PplText, PruneRecord,
};
use crate::track::store::kinds;
use crate::track::{Artifact, Claim, DocScore, Metric, StageRecord, StageStatus, Store};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc::RecvTimeoutError;
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
    pub distill_devices: Vec<String>,
    /// Only this part of the grid (a task of a job array).
    pub shard: Option<crate::shard::Shard>,
    /// Run every stage on this device instead of the run's `runtime.device` (a grid
    /// worker's device). Not part of the run's identity: a result does not depend on
    /// which of a node's devices computed it.
    pub device: Option<String>,
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
    pub fn device_for<'a>(&'a self, exp: &'a Experiment) -> &'a str {
        self.device.as_deref().unwrap_or(&exp.runtime.device)
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
    let mut runs = select(spec.expand()?, opts)?;
    if let Some(p) = opts.prefer {
        let part = crate::shard::assign(&runs, p.count)?;
        let mut tagged: Vec<(bool, RunSpec)> =
            part.into_iter().map(|k| k != p.index).zip(runs).collect();
        // Stable: the grid's order within each half.
        tagged.sort_by_key(|(other, _)| *other);
        runs = tagged.into_iter().map(|(_, r)| r).collect();
    }
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
        let env = run_env(&env, run, opts);
        store.record_env(id, &env)?;
        // A bug in one run (a panic) fails that run, not the grid.
        let outcome = crate::panic_guard::catch(|| execute(spec, run, id, &store, opts, events));
        match outcome {
            Ok(out) => {
                store.finish_scored(id, &out.metrics, &out.artifacts, &out.docs)?;
                sum.ran += 1;
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
                break;
            }
            Err(e) => {
                store.fail(id, &e.to_string())?;
                events(Event::Note(format!("{}: FAILED: {e}", run.name)));
                sum.failed.push((run.name.clone(), e.to_string()));
                if opts.fail_fast {
                    CURRENT.store(-1, Ordering::SeqCst);
                    sum.stopped_at_failure = i + 1 < runs.len();
                    break;
                }
            }
        }
        CURRENT.store(-1, Ordering::SeqCst);
    }
    events(Event::Run {
        done: runs.len(),
        total: runs.len(),
        name: String::new(),
    });
    Ok(sum)
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
fn device_description(spec: &str) -> String {
    match crate::runtime::parse_device(spec) {
        Ok(tch::Device::Cuda(n)) => format!("cuda:{n} of {} GPU(s)", tch::Cuda::device_count()),
        Ok(d) => crate::runtime::device_name(d),
        Err(_) => spec.to_string(),
    }
}

/// The run being executed (for the Ctrl-C handler), -1 when none.
pub static CURRENT: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(-1);

fn stage<T>(
    ctx: &Ctx,
    name: &str,
    cache_key: Option<String>,
    metrics: &mut Vec<Metric>,
    f: impl FnOnce() -> Result<(T, Option<String>, bool)>,
) -> Result<T> {
    check_stop()?;
    let t0 = Instant::now();
    let window = PeakWindow::start(ctx.device);
    // Caught here too, so the stage is recorded as failed with the panic.
    let r = crate::panic_guard::catch(f);
    let peak = window.finish();
    let (status, output, out) = match r {
        Ok((v, output, reused)) => (
            if reused {
                StageStatus::Reused
            } else {
                StageStatus::Finished
            },
            output,
            Ok(v),
        ),
        Err(e) => (StageStatus::Failed, None, Err(e)),
    };
    // A reused stage's peak is that of reading its output, not of making it.
    if status == StageStatus::Finished {
        metrics.extend(peak_metrics(name, &peak));
    }
    ctx.store.record_stage(
        ctx.id,
        &StageRecord {
            stage: name.into(),
            status,
            seconds: Some(t0.elapsed().as_secs_f64()),
            cache_key,
            output,
        },
    )?;
    out
}

/// A stage's peak memory as metrics, context `stage=<name>` (`,from=process` when the
/// kernel kept the process's high-water mark and the host peak may be an earlier one).
fn peak_metrics(stage: &str, peak: &PeakMemory) -> Vec<Metric> {
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
    let lo = LoadOptions {
        device: crate::runtime::parse_device(opts.device_for(exp))?,
        dtype: exp.runtime.dtype.kind(),
    };
    let ctx = Ctx {
        id,
        store,
        opts,
        device: lo.device,
    };
    let mut out = Outcome::default();
    events(Event::Stage {
        run: run.name.clone(),
        stage: "model",
    });
    let source = spec.model_source(&exp.model)?;
    let base = stage(&ctx, "model", None, &mut out.metrics, || {
        let (dir, reused) = prepare_model(&source, &opts.cache_dir.join("models"), &exp.model)?;
        Ok((dir.clone(), Some(dir.display().to_string()), reused))
    })?;
    let mut model_dir = base.clone();
    if let Some(pc) = &exp.prune {
        events(Event::Stage {
            run: run.name.clone(),
            stage: "prune",
        });
        model_dir = prune_stage(&ctx, exp, pc, &base, lo, &mut out, events)?;
    }
    if !exp.recovery.is_none() {
        events(Event::Stage {
            run: run.name.clone(),
            stage: "distill",
        });
        model_dir = distill_stage(&ctx, exp, &base, &model_dir, lo, &mut out, events)?;
    }
    events(Event::Stage {
        run: run.name.clone(),
        stage: "eval",
    });
    eval_stage(&ctx, exp, &model_dir, lo, &mut out, events)?;
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

/// What every stage of one run shares.
struct Ctx<'a> {
    id: i64,
    store: &'a Store,
    opts: &'a RunnerOptions,
    /// Where the run's model computes (its stages' device memory is sampled there).
    device: tch::Device,
}

/// The pruned checkpoint of `exp`, from the cache (`pruned/<prune_hash[..16]>`) or made.
fn prune_stage(
    ctx: &Ctx,
    exp: &Experiment,
    pc: &PruneConfig,
    base: &Path,
    lo: LoadOptions,
    out: &mut Outcome,
    events: Sink,
) -> Result<PathBuf> {
    let key = exp.prune_hash().unwrap_or_default();
    let dir = ctx.opts.cache_dir.join("pruned").join(&key[..16]);
    stage(ctx, "prune", Some(key.clone()), &mut out.metrics, || {
        let _lock = ctx.lock(&dir)?;
        let reused = dir.join(stages::prune::FILE).exists();
        if !reused {
            prune_checkpoint(base, pc, lo, &dir, &mut *events)?;
        }
        Ok(((), Some(dir.display().to_string()), reused))
    })?;
    let rec = PruneRecord::read(&dir)?;
    // The store refuses NaN.
    if rec.report.seconds.is_finite() {
        out.metrics.push(Metric::new(
            "",
            names::RUN_PRUNE_SECONDS,
            rec.report.seconds,
        ));
    }
    out.metrics.push(Metric::new(
        "",
        names::RUN_LAYERS_REMOVED,
        rec.report.target.layers_removed as f64,
    ));
    out.metrics.push(Metric::new(
        "",
        names::RUN_PRUNE_LAYER_PASSES,
        rec.report.layer_passes as f64,
    ));
    out.metrics.push(Metric::new(
        "",
        names::RUN_CALIB_WINDOWS,
        rec.report.calibration.n_sequences as f64,
    ));
    if let Some(rss) = rec.peak_rss_mib {
        out.metrics
            .push(Metric::new("", names::RUN_PRUNE_PEAK_RSS, rss));
    }
    out.artifacts.push(Artifact::from_path(
        dir.join(stages::prune::FILE),
        kinds::COME_JSON,
    )?);
    Ok(dir)
}

/// The recovered checkpoint of `exp`, from the cache (`distilled/<key[..16]>`) or made
/// by training `pruned` against `teacher`.
fn distill_stage(
    ctx: &Ctx,
    exp: &Experiment,
    teacher: &Path,
    pruned: &Path,
    lo: LoadOptions,
    out: &mut Outcome,
    events: Sink,
) -> Result<PathBuf> {
    let key = stages::distill::cache_key(exp)
        .ok_or_else(|| Error::Invalid("recovery needs a pruned model (set `prune`)".into()))?;
    let dir = ctx.opts.cache_dir.join("distilled").join(&key[..16]);
    let devices = ctx.devices(lo)?;
    stage(ctx, "distill", Some(key.clone()), &mut out.metrics, || {
        let _lock = ctx.lock(&dir)?;
        let reused = dir.join(crate::distill::record::FILE).exists();
        if !reused {
            let job = DistillJob {
                teacher,
                pruned,
                cfg: &exp.recovery,
                load: lo,
                devices,
                out: &dir,
                cache: &ctx.opts.cache_dir.join("teacher"),
            };
            job.run(ctx, &mut *events)?;
        }
        Ok(((), Some(dir.display().to_string()), reused))
    })?;
    let rec = DistillRecord::read(&dir)?;
    out.metrics.extend(distill_metrics(&rec));
    out.artifacts.push(Artifact::from_path(
        dir.join(crate::distill::record::FILE),
        kinds::DISTILL_JSON,
    )?);
    Ok(dir)
}

impl Ctx<'_> {
    /// The cache entry `dir` for this run alone, keeping the run's heartbeat fresh while
    /// another worker builds it.
    fn lock(&self, dir: &Path) -> Result<crate::publish::EntryLock> {
        let mut last = Instant::now();
        crate::publish::lock_entry(dir, || {
            if last.elapsed() >= HEARTBEAT {
                let _ = self.store.heartbeat(self.id);
                last = Instant::now();
            }
        })
    }

    /// Devices of the distillation workers: [`RunnerOptions::distill_devices`], else the
    /// run's device once.
    fn devices(&self, lo: LoadOptions) -> Result<Vec<tch::Device>> {
        if self.opts.distill_devices.is_empty() {
            return Ok(vec![lo.device]);
        }
        self.opts
            .distill_devices
            .iter()
            .map(|d| crate::runtime::parse_device(d))
            .collect()
    }
}

/// One recovery, run on a worker thread while this thread shows its progress and keeps
/// the run's heartbeat fresh (the store and the progress bars stay on this thread).
struct DistillJob<'a> {
    teacher: &'a Path,
    pruned: &'a Path,
    cfg: &'a RecoveryConfig,
    load: LoadOptions,
    devices: Vec<tch::Device>,
    out: &'a Path,
    cache: &'a Path,
}

impl DistillJob<'_> {
    fn run(self, ctx: &Ctx, events: Sink) -> Result<DistillRecord> {
        let (tx, rx) = std::sync::mpsc::channel::<Event>();
        std::thread::scope(|s| {
            let worker = s.spawn(move || {
                let mut on = move |e: Event| {
                    let _ = tx.send(e);
                };
                distill_checkpoint(
                    self.teacher,
                    self.pruned,
                    self.cfg,
                    self.load,
                    self.devices,
                    self.out,
                    Some(self.cache),
                    &mut on,
                )
            });
            let mut last = Instant::now();
            loop {
                match rx.recv_timeout(Duration::from_secs(1)) {
                    Ok(e) => events(e),
                    Err(RecvTimeoutError::Timeout) => {}
                    // The worker is done (its sender dropped).
                    Err(RecvTimeoutError::Disconnected) => break,
                }
                if last.elapsed() >= HEARTBEAT {
                    let _ = ctx.store.heartbeat(ctx.id);
                    last = Instant::now();
                }
            }
            worker
                .join()
                .unwrap_or_else(|_| Err(Error::Invalid("distillation panicked".into())))
        })
    }
}

/// The store's view of a recovery: totals, and per unit its final training loss and best
/// validation loss (context `layer=<i>`, or `unit=<k>` for a whole-model unit).
fn distill_metrics(rec: &DistillRecord) -> Vec<Metric> {
    let mut m = vec![
        Metric::new("", names::RUN_RECOVERY_SECONDS, rec.seconds),
        Metric::new("", names::RUN_RECOVERY_TOKENS, rec.tokens as f64),
        Metric::new("", names::RUN_RECOVERY_TEXT_TOKENS, rec.text_tokens as f64),
        Metric::new(
            "",
            names::RUN_RECOVERY_LAYER_TOKEN_PASSES,
            rec.layer_token_passes as f64,
        ),
        Metric::new("", names::RUN_RECOVERY_TOKENS_PER_S, rec.tokens_per_s),
    ];
    for (k, u) in rec.units.iter().enumerate() {
        let context = match u.layer {
            Some(i) => format!("layer={i}"),
            None => format!("unit={k}"),
        };
        if let Some(&loss) = u.train_loss.last() {
            m.push(Metric::new("", names::DISTILL_LOSS, loss).with_context(context.clone()));
        }
        if let Some(v) = u.best_val_loss {
            m.push(Metric::new("", names::DISTILL_VAL_LOSS, v).with_context(context));
        }
    }
    // The store refuses NaN (a diverged loss is +inf, which it keeps).
    m.retain(|x| !x.value.is_nan());
    m
}

/// Load the model, evaluate it, and add every measurement to `out`.
fn eval_stage(
    ctx: &Ctx,
    exp: &Experiment,
    model_dir: &Path,
    lo: LoadOptions,
    out: &mut Outcome,
    events: Sink,
) -> Result<()> {
    let e = &exp.eval;
    // Task data and perplexity texts first: bad input fails before the model loads.
    let src = TaskSource {
        mmlu_fewshot: e.mmlu_fewshot,
        ..TaskSource::default()
    };
    let tasks = e
        .tasks
        .iter()
        .map(|t| load_task(t, &src))
        .collect::<Result<Vec<_>>>()?;
    let mut ppl = vec![];
    if e.ppl_seqlen.is_some() {
        ppl.push(PplText::read(Corpus::Wikitext2(
            crate::paths::wikitext2_test(),
        ))?);
        if e.ppl_c4 {
            ppl.push(PplText::read(Corpus::C4(crate::paths::c4_validation()))?);
        }
        if e.ppl_val {
            ppl.push(PplText::read(Corpus::parse(names::WIKITEXT2_VAL))?);
        }
        if e.ppl_ood {
            ppl.push(PplText::read(Corpus::parse(names::TASKS_OOD))?);
        }
    }
    let t_load = Instant::now();
    let (model, tok) = (load_model(model_dir, lo)?, Tokenizer::from_dir(model_dir)?);
    out.metrics.push(Metric::new(
        "",
        names::RUN_EVAL_LOAD_SECONDS,
        t_load.elapsed().as_secs_f64(),
    ));
    out.metrics
        .push(Metric::new("", names::RUN_LAYERS, model.n_layers() as f64));
    out.metrics.push(Metric::new(
        "",
        names::RUN_PARAMS,
        model.num_params() as f64,
    ));
    let inputs = EvalInputs {
        tasks: &tasks,
        subset: e.subset(),
        token_budget: e.token_budget.initial_tokens(model.device),
        add_special: true,
        ppl: &ppl,
        ppl_seqlen: e.ppl_seqlen.unwrap_or(0),
        ppl_windows: e.ppl_windows,
        ppl_protocol: e.ppl_protocol,
        latency: e.latency_spec(),
    };
    let t0 = Instant::now();
    let result = stage(ctx, "eval", None, &mut out.metrics, || {
        let mut hooks = RunHooks {
            ctx,
            events: &mut *events,
            last: Instant::now(),
        };
        Ok((evaluate(&model, &tok, &inputs, &mut hooks)?, None, false))
    })?;
    out.metrics.push(Metric::new(
        "",
        names::RUN_EVAL_SECONDS,
        t0.elapsed().as_secs_f64(),
    ));
    record_data_env(ctx, exp, &result)?;
    out.metrics.extend(eval_metrics(&result));
    out.docs.extend(result.tasks.iter().flat_map(|t| {
        t.docs.iter().map(|d| DocScore {
            task: t.task.clone(),
            doc_id: d.doc_id as i64,
            acc: d.acc,
            acc_norm: d.acc_norm,
        })
    }));
    Ok(())
}

/// The eval stage's hooks in a grid: progress to the bars, a heartbeat at least every
/// [`HEARTBEAT`] while items move, Ctrl-C between tasks.
struct RunHooks<'a, 'p> {
    ctx: &'a Ctx<'a>,
    events: Sink<'p>,
    last: Instant,
}

impl EvalHooks for RunHooks<'_, '_> {
    fn event(&mut self, e: Event) {
        (self.events)(e);
        if self.last.elapsed() >= HEARTBEAT {
            let _ = self.ctx.store.heartbeat(self.ctx.id);
            self.last = Instant::now();
        }
    }
}

/// Every dataset file read, with its sha256, joins the run's environment.
fn record_data_env(ctx: &Ctx, exp: &Experiment, r: &EvalOutcome) -> Result<()> {
    let mut data_env = std::collections::BTreeMap::new();
    for t in &r.tasks {
        for (path, sha) in &t.files {
            data_env.insert(format!("data.sha256:{}", path.display()), sha.clone());
        }
    }
    let mut files: Vec<PathBuf> = r.ppl.iter().flat_map(|p| p.sources.clone()).collect();
    if let Some(pc) = &exp.prune {
        files.push(pc.calib.source_path());
    }
    for p in files {
        let sha = crate::track::env::sha256_file(&p)?;
        data_env.insert(format!("data.sha256:{}", p.display()), sha);
    }
    ctx.store.record_env(ctx.id, &data_env)?;
    Ok(())
}

/// Accuracies (with standard errors) and counts per task; perplexities per corpus.
fn eval_metrics(r: &EvalOutcome) -> Vec<Metric> {
    let mut metrics = vec![];
    for t in &r.tasks {
        for (m, v) in &t.metrics {
            let mut x = Metric::new(&t.task, m, v.value);
            if v.stderr.is_finite() {
                x = x.with_stderr(v.stderr);
            }
            metrics.push(x);
        }
        metrics.push(Metric::new(&t.task, names::N, t.n_docs as f64));
        let p = &t.profile;
        for (name, v) in [
            (names::PROFILE_TOKENIZE_SECONDS, p.tokenize_s),
            (names::PROFILE_INPUTS_SECONDS, p.inputs_s),
            (names::PROFILE_FORWARD_SECONDS, p.forward_s),
            (names::PROFILE_HEAD_SECONDS, p.head_s),
            (names::PROFILE_OTHER_SECONDS, p.other_s),
            (names::TOKENS_FORWARDED, p.forwarded_tokens as f64),
            (names::TOKENS_PADDED, p.padded_tokens as f64),
            (names::HEAD_POSITIONS, p.head_positions as f64),
            (names::FORWARDS, p.forwards as f64),
        ] {
            metrics.push(Metric::new(&t.task, name, v));
        }
    }
    for p in &r.ppl {
        let (task, metric) = p.corpus.recorded_as();
        let res = &p.result;
        metrics.push(Metric::new(&task, &metric, res.ppl).with_context(res.context()));
        metrics.push(Metric::new(&task, names::N, res.windows as f64));
    }
    if let Some(l) = &r.latency {
        let ctx = l.spec.context();
        for (name, v) in [
            (names::RUN_PREFILL_TOKENS_PER_S, l.prefill_tokens_per_s()),
            (names::RUN_DECODE_TOKENS_PER_S, l.decode_tokens_per_s()),
        ] {
            metrics.push(Metric::new("", name, v).with_context(ctx.clone()));
        }
    }
    metrics
}
