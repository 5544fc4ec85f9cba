//! A claimed run's stages in order, each wrapped the same way and recorded in the store.

use super::RunnerOptions;
use crate::cancel::check as check_stop;
use crate::error::Result;
use crate::grid::{GridSpec, RunSpec};
use crate::memory::{PeakMemory, PeakWindow};
use crate::model::load::LoadOptions;
use crate::names;
use crate::progress::{Event, Sink};
use crate::stages::{
    Cache, Dest, DistillStage, EvalStage, ModelStage, PruneStage, Stage, StageCtx, StageName,
};
use crate::track::{Artifact, DocScore, Metric, StageRecord, StageStatus, Store};
use std::time::{Duration, Instant};

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
pub(super) struct Outcome {
    pub metrics: Vec<Metric>,
    pub artifacts: Vec<Artifact>,
    pub docs: Vec<DocScore>,
}

/// How often a long stage refreshes the run's heartbeat in the store.
const HEARTBEAT: Duration = Duration::from_secs(15);

/// The run's stages in order: model -> prune (if any) -> distill (if any) -> eval.
pub(super) fn execute(
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
