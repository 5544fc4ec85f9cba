//! come-repro: a reproduction harness for CoMe layer-concatenation pruning.
//!
//! Stages, as data flows: `model` (load, run, save, import) -> `eval` (perplexity,
//! zero-shot tasks). Each stage takes and returns plain data.

pub mod calib;
pub mod error;
pub mod eval;
pub mod experiment;
pub mod generate;
pub mod model;
pub mod paths;
pub mod prune;
pub mod rng;
pub mod runtime;

pub use error::{Error, Result};
