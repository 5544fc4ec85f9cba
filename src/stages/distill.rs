//! The distill (recovery) stage: train a pruned checkpoint against the model it was
//! pruned from, and save the recovered checkpoint with its [`DistillRecord`]
//! (`distill.json`). The work is [`crate::distill::recover`]; this is its place in the
//! pipeline: inputs, and the cache key of its output.

use crate::distill::{recover, DistillRecord, Event, RecoverInputs, RecoveryConfig};
use crate::error::Result;
use crate::experiment::Experiment;
use crate::hashing::hash_value;
use crate::model::load::LoadOptions;
use std::path::Path;

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
        &serde_json::json!({ "prune": prune, "recovery": exp.recovery }),
    ))
}
