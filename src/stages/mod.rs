//! The pipeline as stages, shared by the command line and the grid runner:
//!
//! ```text
//! model --> prune --> distill --> eval
//! ```
//!
//! Every stage keeps one contract ([`contract`]): a [`StageName`], a typed input (the
//! stage value: [`ModelStage`], [`PruneStage`], [`DistillStage`], [`EvalStage`]), the
//! cache key of its output computed in one place ([`Stage::cache_key`]), `run` against
//! the run's shared [`StageCtx`] (device, [`Cache`] layout and locks, events,
//! keep-alive), and a [`Done`] carrying its output and the metrics, artifacts and data
//! hashes it emits. The grid runner wraps each the same way; the `prune`, `distill` and
//! `eval` commands run the same stages through [`Stage::run`], with a context of their
//! own ([`StageCtx::standalone`]: no cache, no store) and the output written where the
//! user says ([`Dest::Dir`] in place of a grid's [`Dest::Cache`]).
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
//!   which [`eval_stage`] turns into metrics and per-document scores. No key: every run
//!   evaluates.
//!
//! A stage that writes a checkpoint builds it in a temporary sibling directory and renames
//! it into place ([`write_dir_atomically`](crate::publish::write_dir_atomically)), so a kill leaves no half artifact behind and
//! a cached output is complete whenever its record file exists.

pub mod contract;
pub mod distill;
pub mod eval;
pub mod eval_stage;
pub mod model;
pub mod prune;

pub use crate::distill::DistillRecord;
pub use contract::{Cache, Dest, Done, Stage, StageCtx, StageName};
pub use distill::{distill_checkpoint, DistillStage};
pub use eval::{evaluate, EvalHooks, EvalInputs, EvalOutcome, PplOutcome, PplText, Subset};
pub use eval_stage::{EvalData, EvalStage};
pub use model::{prepare_model, ModelStage};
pub use prune::{prune_checkpoint, PruneJob, PruneRecord, PruneStage};
