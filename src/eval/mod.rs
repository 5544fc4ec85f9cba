//! Evaluators: perplexity and lm-eval-identical zero-shot scoring.

pub mod batching;
pub mod harness;
pub mod head;
pub mod latency;
pub mod loglik;
pub mod perplexity;
pub mod pool;
pub mod ppl_corpus;
pub mod prefix_cache;
pub mod profile;
pub mod results;
mod rows;
mod shared_prefix;
pub mod shift;
pub mod tasks;
pub mod workers;
