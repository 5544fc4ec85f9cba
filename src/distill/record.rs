//! `distill.json`: what a recovery stage did, per layer and in total. Plain data, read back
//! by the grid runner (metrics) and by resumption (finished layers).

use super::config::RecoveryConfig;
use crate::error::Result;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// One trained unit: a student layer (hierarchical), or the whole model (lora, kd).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LayerRecord {
    /// Student layer index (None: the whole model).
    pub layer: Option<usize>,
    /// Teacher layers the unit stands for: input enters `originals.0`, the target leaves
    /// `originals.1` (inclusive).
    pub originals: Option<(usize, usize)>,
    pub steps: usize,
    pub tokens: usize,
    /// Mean training loss per optimiser step.
    pub train_loss: Vec<f64>,
    /// (step, validation loss); step 0 is before any update.
    pub val_loss: Vec<(usize, f64)>,
    /// The step whose weights were kept (the best validation loss, or the last step).
    pub best_step: usize,
    pub best_val_loss: Option<f64>,
    pub seconds: f64,
    pub tokens_per_s: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DistillRecord {
    pub teacher: PathBuf,
    pub student: PathBuf,
    pub config: RecoveryConfig,
    /// Pruning correspondence of the student: new layer i <- original layers.
    pub correspondence: Vec<Vec<usize>>,
    pub units: Vec<LayerRecord>,
    /// Training data: file, its sha256, train and validation sequences.
    pub data: DataRecord,
    pub workers: Vec<String>,
    /// Teacher-state computation (seconds, cached or not).
    pub teacher_seconds: f64,
    pub teacher_cached: bool,
    /// Tokens summed over the units (a hierarchical run of 11 layers at 32k tokens per
    /// layer: 360k). Not comparable across methods: see the two counts below.
    pub tokens: usize,
    /// Training text the stage read: the most any unit saw (units reread the same text).
    /// Equal text budgets of two methods mean equal values here.
    #[serde(default)]
    pub text_tokens: usize,
    /// Compute, as token passes through a decoder layer (forward + backward): a layer
    /// unit's tokens count once, a whole-model unit's (LoRA, KD) once per layer.
    #[serde(default)]
    pub layer_token_passes: usize,
    pub seconds: f64,
    pub tokens_per_s: f64,
    pub peak_rss_mib: f64,
    pub threads: i32,
    pub crate_version: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DataRecord {
    pub source: PathBuf,
    pub sha256: String,
    pub rows_available: usize,
    pub rows_excluded: usize,
    pub train_sequences: usize,
    pub val_sequences: usize,
    pub seqlen: usize,
    pub note: String,
}

pub const FILE: &str = "distill.json";

impl LayerRecord {
    /// The record of a unit that trained `steps` optimiser steps over `tokens` tokens.
    pub fn from_outcome(
        layer: Option<usize>,
        originals: Option<(usize, usize)>,
        steps: usize,
        tokens: usize,
        out: super::train::Outcome,
        seconds: f64,
    ) -> LayerRecord {
        LayerRecord {
            layer,
            originals,
            steps,
            tokens,
            train_loss: out.train_loss,
            val_loss: out.val_loss,
            best_step: out.best_step,
            best_val_loss: out.best_val,
            seconds,
            tokens_per_s: tokens as f64 / seconds.max(1e-9),
        }
    }
}

impl DistillRecord {
    pub fn read(dir: &Path) -> Result<DistillRecord> {
        crate::error::read_json(&dir.join(FILE))
    }

    pub fn write(&self, dir: &Path) -> Result<()> {
        crate::publish::write_json(&dir.join(FILE), self)
    }

    /// `text_tokens` and `layer_token_passes` of `units` in a student of `layers` layers.
    pub fn token_counts(units: &[LayerRecord], layers: usize) -> (usize, usize) {
        let text = units.iter().map(|u| u.tokens).max().unwrap_or(0);
        let passes = units
            .iter()
            .map(|u| u.tokens * if u.layer.is_some() { 1 } else { layers })
            .sum();
        (text, passes)
    }

    /// Final training loss of each trained unit, for the store.
    pub fn final_losses(&self) -> Vec<(Option<usize>, f64)> {
        self.units
            .iter()
            .filter_map(|u| u.train_loss.last().map(|l| (u.layer, *l)))
            .collect()
    }
}
