//! The flat form in which grids and stores spell a recovery config: the method a name,
//! its settings keys beside the others. Reading drops the settings of other methods.

use super::{
    Attach, KdSettings, LayerInputs, LoraSettings, Losses, Recovery, RecoveryConfig,
    RecoveryMethod, Validation,
};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// [`RecoveryConfig`] as grids and stores spell it: one flat table, the method a name,
/// its settings keys beside the others.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RecoveryFile {
    method: RecoveryMethod,
    attach: Attach,
    /// Left out at its default, as in the files written before it existed.
    #[serde(skip_serializing_if = "LayerInputs::is_teacher")]
    inputs: LayerInputs,
    loss: Losses,
    temperature: f64,
    kl_positions: Option<usize>,
    tokens: usize,
    seqlen: usize,
    micro_batch: usize,
    accum: usize,
    lr: f64,
    min_lr: f64,
    warmup: f64,
    betas: [f64; 2],
    eps: f64,
    weight_decay: f64,
    clip: Option<f64>,
    val_tokens: usize,
    /// Left out at its default (files written before it existed).
    #[serde(skip_serializing_if = "Validation::is_tail")]
    validation: Validation,
    eval_every: Option<usize>,
    data: Option<PathBuf>,
    seed: u64,
    kd_tokens: Option<usize>,
    kd_lr: f64,
    lora_rank: usize,
    lora_alpha: f64,
    lora_dropout: f64,
    lora_lr: f64,
}

impl Default for RecoveryFile {
    fn default() -> Self {
        RecoveryConfig::default().into()
    }
}

impl From<RecoveryConfig> for RecoveryFile {
    fn from(c: RecoveryConfig) -> Self {
        let kd = c.method.kd().cloned().unwrap_or_default();
        let lora = c.method.lora().cloned().unwrap_or_default();
        RecoveryFile {
            method: c.method.kind(),
            attach: c.attach,
            inputs: c.inputs,
            loss: c.loss,
            temperature: c.temperature,
            kl_positions: c.kl_positions,
            tokens: c.tokens,
            seqlen: c.seqlen,
            micro_batch: c.micro_batch,
            accum: c.accum,
            lr: c.lr,
            min_lr: c.min_lr,
            warmup: c.warmup,
            betas: c.betas,
            eps: c.eps,
            weight_decay: c.weight_decay,
            clip: c.clip,
            val_tokens: c.val_tokens,
            validation: c.validation,
            eval_every: c.eval_every,
            data: c.data,
            seed: c.seed,
            kd_tokens: kd.tokens,
            kd_lr: kd.lr,
            lora_rank: lora.rank,
            lora_alpha: lora.alpha,
            lora_dropout: lora.dropout,
            lora_lr: lora.lr,
        }
    }
}

impl From<RecoveryFile> for RecoveryConfig {
    fn from(f: RecoveryFile) -> Self {
        let method = match f.method {
            RecoveryMethod::None => Recovery::None,
            RecoveryMethod::Hierarchical => Recovery::Hierarchical,
            RecoveryMethod::HierarchicalKd => Recovery::HierarchicalKd(KdSettings {
                tokens: f.kd_tokens,
                lr: f.kd_lr,
            }),
            RecoveryMethod::Lora => Recovery::Lora(LoraSettings {
                rank: f.lora_rank,
                alpha: f.lora_alpha,
                dropout: f.lora_dropout,
                lr: f.lora_lr,
            }),
        };
        RecoveryConfig {
            method,
            attach: f.attach,
            inputs: f.inputs,
            loss: f.loss,
            temperature: f.temperature,
            kl_positions: f.kl_positions,
            tokens: f.tokens,
            seqlen: f.seqlen,
            micro_batch: f.micro_batch,
            accum: f.accum,
            lr: f.lr,
            min_lr: f.min_lr,
            warmup: f.warmup,
            betas: f.betas,
            eps: f.eps,
            weight_decay: f.weight_decay,
            clip: f.clip,
            val_tokens: f.val_tokens,
            validation: f.validation,
            eval_every: f.eval_every,
            data: f.data,
            seed: f.seed,
        }
    }
}
