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
use crate::progress::{Event, Sink};
use crate::runtime::DeviceSpec;
use crate::track::{Claim, Store};
use std::path::PathBuf;
use std::sync::atomic::Ordering;

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

mod env;
mod pipeline;
mod select;

pub use select::{requeue_failed, select};

use env::run_env;
use pipeline::execute;
use select::preferred_first;

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

/// The run being executed (for the Ctrl-C handler), -1 when none.
pub static CURRENT: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(-1);
