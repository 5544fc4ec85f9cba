//! What a run measures, as plain data: metrics (named in [`crate::names`]), per-document
//! scores and the kinds of artifact a stage produces. The stages emit them; the run store
//! keeps them.

use serde::{Deserialize, Serialize};

/// Artifact kinds a stage records.
pub mod kinds {
    pub const PRUNED_CHECKPOINT: &str = "pruned-checkpoint";
    pub const COME_JSON: &str = "come.json";
    pub const DISTILL_JSON: &str = "distill.json";
    pub const RESULTS_JSON: &str = "results.json";
}

/// One scored document of a task: 1.0 where the gold answer won (acc) and where it won
/// by length-normalised likelihood (acc_norm), else 0.0.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DocScore {
    pub task: String,
    pub doc_id: i64,
    pub acc: f64,
    pub acc_norm: f64,
}

/// One measurement; naming in [`crate::names`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metric {
    /// lm-eval task name, a corpus for perplexities, or "" for whole-run measurements.
    pub task: String,
    pub name: String,
    pub value: f64,
    pub stderr: Option<f64>,
    /// Free-form qualifier, e.g. "n=100" or "dense".
    pub context: String,
    /// For curves (distillation steps); 0 otherwise.
    pub step: i64,
}

impl Metric {
    pub fn new(task: impl Into<String>, name: impl Into<String>, value: f64) -> Metric {
        Metric {
            task: task.into(),
            name: name.into(),
            value,
            stderr: None,
            context: String::new(),
            step: 0,
        }
    }
    pub fn with_stderr(mut self, stderr: f64) -> Metric {
        self.stderr = Some(stderr);
        self
    }
    pub fn with_context(mut self, context: impl Into<String>) -> Metric {
        self.context = context.into();
        self
    }
    pub fn with_step(mut self, step: i64) -> Metric {
        self.step = step;
        self
    }
    /// `task/name[context]@step` (empty parts left out): a stable label for diffs.
    pub fn key(&self) -> String {
        let mut k = if self.task.is_empty() {
            self.name.clone()
        } else {
            format!("{}/{}", self.task, self.name)
        };
        if !self.context.is_empty() {
            k.push_str(&format!("[{}]", self.context));
        }
        if self.step != 0 {
            k.push_str(&format!("@{}", self.step));
        }
        k
    }
}
