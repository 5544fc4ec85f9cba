//! come-repro: a reproduction harness for CoMe layer-concatenation pruning.
//!
//! Stages, as data flows: `model` (load, run, save, import) -> `prune` -> `distill`
//! (recovery) -> `eval` (perplexity, zero-shot tasks); [`stages`] runs each one once,
//! with a typed record and a cache key, for the CLI and the grid runner alike.

pub mod calib;
pub mod cancel;
pub mod device_memory;
pub mod distill;
pub mod dl;
pub mod error;
pub mod eval;
pub mod experiment;
pub mod generate;
pub mod grid;
pub mod hashing;
pub mod heap;
pub mod measure;
pub mod memory;
pub mod mkl_dispatch;
pub mod model;
pub mod names;
pub mod panic_guard;
pub mod paths;
pub mod progress;
pub mod prune;
pub mod publish;
pub mod report;
pub mod rng;
pub mod runner;
pub mod runtime;
pub mod shard;
pub mod slurm;
pub mod stages;
pub mod track;

pub use error::{Error, Result};

/// The git commit of the working tree (with `-dirty` when it has changes), if any.
pub fn track_git_sha() -> Option<String> {
    let out = std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let sha = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let dirty = std::process::Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
        .map(|o| !o.stdout.is_empty())
        .unwrap_or(false);
    Some(if dirty { format!("{sha}-dirty") } else { sha })
}
