//! The pipeline as stages, shared by the command line and the grid runner:
//!
//! ```text
//! model --> prune --> distill --> eval
//! ```
//!
//! Each stage, its record and the cache key of its output:
//!
//! - [`model`]: a grid's model source as an HF directory, a GGUF or llama2.c file imported
//!   once. Record: the directory. Key: the source file's sha256 (12 hex digits, in the
//!   directory name).
//! - [`prune`]: calibration sample, prune, save. Record: [`PruneRecord`] (`come.json`).
//!   Key: [`Experiment::prune_hash`](crate::experiment::Experiment::prune_hash) (model,
//!   prune config, dtype).
//! - [`distill`]: recover the pruned model against the model before pruning (runs only
//!   when `recovery.method` is not `none`). Record: [`DistillRecord`] (`distill.json`).
//!   Key: [`distill::cache_key`] (the prune key and the recovery config).
//! - [`eval`]: zero-shot tasks and perplexity on a loaded model. Record: [`EvalOutcome`],
//!   which the runner turns into store metrics. No key: every run evaluates.
//!
//! A stage that writes a checkpoint builds it in a temporary sibling directory and renames
//! it into place ([`write_dir_atomically`]), so a kill leaves no half artifact behind and
//! a cached output is complete whenever its record file exists.

pub mod distill;
pub mod eval;
pub mod lock;
pub mod model;
pub mod prune;

pub use crate::distill::DistillRecord;
pub use distill::distill_checkpoint;
pub use eval::{evaluate, EvalHooks, EvalInputs, EvalOutcome, PplOutcome, PplText, Subset};
pub use lock::{lock_entry, EntryLock};
pub use model::prepare_model;
pub use prune::{prune_checkpoint, PruneJob, PruneRecord};

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// A temporary sibling of `out` (`NAME.partial-PID`), on the same file system.
pub fn partial_path(out: &Path) -> Result<PathBuf> {
    let name = out
        .file_name()
        .ok_or_else(|| Error::Invalid(format!("output path {} has no file name", out.display())))?;
    let mut tmp = name.to_os_string();
    tmp.push(format!(".partial-{}", std::process::id()));
    Ok(out.with_file_name(tmp))
}

/// Build a directory with `fill` in a temporary sibling of `out`, then rename it to `out`
/// (replacing what was there). On error the temporary directory is removed and `out` is
/// left as it was.
pub fn write_dir_atomically<T>(out: &Path, fill: impl FnOnce(&Path) -> Result<T>) -> Result<T> {
    let tmp = partial_path(out)?;
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    let _ = std::fs::remove_dir_all(&tmp);
    let value = match fill(&tmp) {
        Ok(v) => v,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    if out.exists() {
        std::fs::remove_dir_all(out).map_err(|e| Error::io(out, e))?;
    }
    std::fs::rename(&tmp, out).map_err(|e| Error::io(out, e))?;
    Ok(value)
}
