//! The distill (recovery) stage: train a pruned checkpoint against the model it was
//! pruned from, and save the recovered checkpoint with its [`DistillRecord`]
//! (`distill.json`). The work is [`crate::distill::recover`]; this is its place in the
//! pipeline: inputs, and the cache key of its output.

use super::contract::{Dest, Done, Stage, StageCtx, StageName};
use crate::distill::{recover, DistillRecord, Event, RecoverInputs, RecoveryConfig};
use crate::error::{Error, Result};
use crate::experiment::Experiment;
use crate::hashing::{hash_value, Identity};
use crate::measure::{kinds, Metric};
use crate::model::load::LoadOptions;
use crate::names;
use std::path::{Path, PathBuf};
use std::sync::mpsc::RecvTimeoutError;
use std::time::Duration;

/// Recover `pruned` against `teacher` (the model before pruning) with `cfg`, writing the
/// recovered checkpoint and `distill.json` to `out` (atomically). `devices`: one worker
/// per entry. `cache_dir`: where teacher states may be cached (None: not on disk).
#[allow(clippy::too_many_arguments)]
pub fn distill_checkpoint(
    teacher: &Path,
    pruned: &Path,
    cfg: &RecoveryConfig,
    load: LoadOptions,
    devices: Vec<tch::Device>,
    out: &Path,
    cache_dir: Option<&Path>,
    on: &mut (dyn FnMut(Event) + Send),
) -> Result<DistillRecord> {
    let inputs = RecoverInputs {
        teacher,
        student: pruned,
        out,
        cfg,
        load,
        devices,
        cache_dir,
    };
    recover(&inputs, on)
}

/// Identity of a run's recovered checkpoint: the pruned checkpoint's identity
/// ([`Experiment::prune_hash`]) and the recovery settings. None when the run recovers
/// nothing (no recovery, or a dense run).
pub fn cache_key(exp: &Experiment) -> Option<String> {
    if exp.recovery.is_none() {
        return None;
    }
    let prune = exp.prune_hash()?;
    Some(hash_value(
        &serde_json::json!({ "prune": prune, "recovery": exp.recovery.identity() }),
    ))
}

/// The recovery stage of a run: the pruned checkpoint trained against the model it was
/// pruned from, cached under [`cache_key`].
pub struct DistillStage<'a> {
    /// The model before pruning.
    pub teacher: &'a Path,
    pub pruned: &'a Path,
    pub cfg: &'a RecoveryConfig,
    pub dest: Dest,
    /// Where teacher states are kept for reuse (None: the cache's, or none without one).
    pub teacher_cache: Option<PathBuf>,
}

impl<'a> DistillStage<'a> {
    /// The recovery of `exp`; an error when it has nothing to recover (no prune).
    pub fn new(exp: &'a Experiment, teacher: &'a Path, pruned: &'a Path) -> Result<Self> {
        let key = cache_key(exp)
            .ok_or_else(|| Error::Invalid("recovery needs a pruned model (set `prune`)".into()))?;
        Ok(DistillStage {
            teacher,
            pruned,
            cfg: &exp.recovery,
            dest: Dest::Cache(key),
            teacher_cache: None,
        })
    }
}

impl Stage for DistillStage<'_> {
    const NAME: StageName = StageName::Distill;
    type Output = PathBuf;

    fn cache_key(&self) -> Option<String> {
        self.dest.key()
    }

    fn run(self, ctx: &mut StageCtx) -> Result<Done<PathBuf>> {
        let (dir, reused) = ctx.produce(
            Self::NAME,
            &self.dest,
            crate::distill::record::FILE,
            |ctx, dir| self.train(ctx, dir).map(|_| ()),
        )?;
        let rec = DistillRecord::read(&dir)?;
        let mut done = Done::new(dir.clone(), reused).at(&dir);
        done.metrics = distill_metrics(&rec);
        done.artifacts
            .push((dir.join(crate::distill::record::FILE), kinds::DISTILL_JSON));
        Ok(done)
    }
}

impl DistillStage<'_> {
    /// Recover into `out` on a worker thread while this thread passes its events on and
    /// keeps the run alive (sinks and keep-alives need not be shareable across threads).
    fn train(&self, ctx: &mut StageCtx, out: &Path) -> Result<DistillRecord> {
        let devices = if ctx.distill_devices.is_empty() {
            vec![ctx.load.device]
        } else {
            ctx.distill_devices.clone()
        };
        let load = ctx.load;
        let teacher_cache = (self.teacher_cache.clone()).or_else(|| ctx.cache.map(|c| c.teacher()));
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
                    load,
                    devices,
                    out,
                    teacher_cache.as_deref(),
                    &mut on,
                )
            });
            loop {
                match rx.recv_timeout(Duration::from_secs(1)) {
                    Ok(e) => (ctx.events)(e),
                    Err(RecvTimeoutError::Timeout) => {}
                    // The worker is done (its sender dropped).
                    Err(RecvTimeoutError::Disconnected) => break,
                }
                (ctx.keepalive)();
            }
            worker
                .join()
                .unwrap_or_else(|_| Err(Error::Invalid("distillation panicked".into())))
        })
    }
}

/// The store's view of a recovery: totals, and per unit its final training loss and best
/// validation loss (context `layer=<i>`, or `unit=<k>` for a whole-model unit).
pub fn distill_metrics(rec: &DistillRecord) -> Vec<Metric> {
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
