//! What a recovery stage does, as plain data: the method, the loss, the optimiser, the
//! token budget and the data. Every field has a default and is serialised, so the
//! canonical JSON of a `RecoveryConfig` is part of a run's identity. The paper publishes
//! none of these choices: every value here is ours, recorded in each run.

use crate::error::{Error, Result};
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

mod file;
use file::RecoveryFile;

/// How a pruned model is recovered (the grid's recovery axis).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
pub enum RecoveryMethod {
    /// No recovery: the pruned checkpoint as it is.
    #[default]
    #[serde(rename = "none")]
    #[value(name = "none")]
    None,
    /// Layer-local distillation of every merged layer on teacher states (CoMe, Fig. 1).
    #[serde(rename = "hierarchical")]
    #[value(name = "hierarchical")]
    Hierarchical,
    /// Hierarchical, then logit KD of the whole student, still training only merged layers.
    #[serde(rename = "hierarchical+kd")]
    #[value(name = "hierarchical+kd")]
    HierarchicalKd,
    /// LoRA adapters on all seven projections of every layer, LM loss, merged at the end.
    #[serde(rename = "lora")]
    #[value(name = "lora")]
    Lora,
}

impl RecoveryMethod {
    /// `RecoveryConfig` keys this method never reads. Tables leave them out of a run's
    /// label, so that a LoRA row is not labelled with a layer loss it did not use.
    pub fn unused_keys(self) -> &'static [&'static str] {
        const LORA: [&str; 4] = ["lora_rank", "lora_alpha", "lora_dropout", "lora_lr"];
        match self {
            RecoveryMethod::None => &[],
            RecoveryMethod::Hierarchical => {
                &["kd_tokens", "kd_lr", LORA[0], LORA[1], LORA[2], LORA[3]]
            }
            RecoveryMethod::HierarchicalKd => &LORA,
            RecoveryMethod::Lora => &[
                "loss",
                "attach",
                "inputs",
                "temperature",
                "kl_positions",
                "lr",
                "kd_tokens",
                "kd_lr",
            ],
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            RecoveryMethod::None => "none",
            RecoveryMethod::Hierarchical => "hierarchical",
            RecoveryMethod::HierarchicalKd => "hierarchical+kd",
            RecoveryMethod::Lora => "lora",
        }
    }
}

/// A per-layer loss between the student layer's output and the teacher's state.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum LossKind {
    /// Mean squared error over every element.
    Mse,
    /// 1 - cosine similarity per position, averaged.
    Cosine,
    /// KL(teacher || student) of softmaxes over the hidden dimension at temperature T,
    /// times T^2: the figure's L_KL read literally.
    KlHidden,
    /// KL(teacher || student) of the frozen final norm + LM head distributions, times T^2.
    KlLogits,
}

impl LossKind {
    pub const ALL: [LossKind; 4] = [
        LossKind::Mse,
        LossKind::Cosine,
        LossKind::KlHidden,
        LossKind::KlLogits,
    ];
    pub fn name(self) -> &'static str {
        match self {
            LossKind::Mse => "mse",
            LossKind::Cosine => "cosine",
            LossKind::KlHidden => "kl_hidden",
            LossKind::KlLogits => "kl_logits",
        }
    }
    pub fn parse(s: &str) -> Result<LossKind> {
        LossKind::ALL
            .into_iter()
            .find(|k| k.name() == s.trim())
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "unknown loss `{s}` (known: mse, cosine, kl_hidden, kl_logits)"
                ))
            })
    }
}

/// A weighted sum of losses. Written as `"mse"`, `"mse,cosine"` (weights 1) or a table
/// `{ mse = 1.0, cosine = 0.5 }`; serialised as the table, so either spelling hashes alike.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Losses(pub BTreeMap<LossKind, f64>);

/// Cosine: on SmolLM2's CoMe-30 % model it recovered best of the four at one budget
/// (WikiText-2 perplexity 1944 vs mse 2431, kl_logits 2622, kl_hidden 7706:
/// results/recovery/loss_ablation.md).
impl Default for Losses {
    fn default() -> Self {
        Losses(BTreeMap::from([(LossKind::Cosine, 1.0)]))
    }
}

impl Losses {
    pub fn parse(s: &str) -> Result<Losses> {
        let mut m = BTreeMap::new();
        for part in s.split(',').filter(|p| !p.trim().is_empty()) {
            let (k, w) = match part.split_once(':') {
                Some((k, w)) => (
                    k,
                    w.trim()
                        .parse::<f64>()
                        .map_err(|_| Error::Invalid(format!("bad loss weight in `{part}`")))?,
                ),
                None => (part, 1.0),
            };
            m.insert(LossKind::parse(k)?, w);
        }
        let l = Losses(m);
        l.validate()?;
        Ok(l)
    }

    pub fn validate(&self) -> Result<()> {
        if self.0.is_empty() {
            return Err(Error::Invalid("recovery.loss names no loss".into()));
        }
        for (k, w) in &self.0 {
            if !w.is_finite() || *w <= 0.0 {
                return Err(Error::Invalid(format!(
                    "loss weight of {} must be a positive number, got {w}",
                    k.name()
                )));
            }
        }
        Ok(())
    }

    /// `mse` or `mse+0.5*cosine`: a label for tables.
    pub fn label(&self) -> String {
        self.0
            .iter()
            .map(|(k, w)| {
                if *w == 1.0 {
                    k.name().to_string()
                } else {
                    format!("{w}*{}", k.name())
                }
            })
            .collect::<Vec<_>>()
            .join("+")
    }
}

impl<'de> Deserialize<'de> for Losses {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            One(String),
            Table(BTreeMap<String, f64>),
        }
        let l = match Raw::deserialize(d)? {
            Raw::One(s) => Losses::parse(&s).map_err(serde::de::Error::custom)?,
            Raw::Table(t) => {
                let mut m = BTreeMap::new();
                for (k, w) in t {
                    m.insert(LossKind::parse(&k).map_err(serde::de::Error::custom)?, w);
                }
                let l = Losses(m);
                l.validate().map_err(serde::de::Error::custom)?;
                l
            }
        };
        Ok(l)
    }
}

/// Where removed layers of a drop method go for recovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Attach {
    /// A removed run of layers joins the kept layer before it (LLM-Streamline's setting);
    /// a run at the very start joins the first kept layer.
    #[default]
    Before,
    /// Only layers that merged several originals are trained.
    None,
}

/// What a merged layer trains on (hierarchical methods). Our reading of the paper's two
/// algorithms: `teacher` is CoMe-mp (every merged layer learns the teacher's map from its
/// input boundary to its target boundary, independently, so layers can train in parallel);
/// `student` is CoMe-sp (merged layers train in order, each on the hidden states of the
/// student as recovered so far, so it learns to correct the error of the layers before it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LayerInputs {
    /// The teacher's states at the unit's input boundary (units independent).
    #[default]
    Teacher,
    /// The recovered student's own states entering the layer (units in order, one worker).
    Student,
}

impl LayerInputs {
    pub fn is_teacher(&self) -> bool {
        *self == LayerInputs::Teacher
    }
}

/// Where recovery's validation text (best step, and the choice between settings) comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum Validation {
    /// The sequences right after the training text in the stream read for the budget:
    /// the slice moves with the budget, and a larger budget trains on a smaller one's
    /// validation text. Kept as the default so that earlier runs keep their hashes.
    #[default]
    Tail,
    /// The source's last [`super::data::HELD_OUT_ROWS`] rows, never trained on at any
    /// budget: on the shared WikiText-2 train prefix, the rows of the `wikitext2_val`
    /// perplexity (`eval.ppl_val`).
    HeldOut,
}

impl Validation {
    pub fn is_tail(&self) -> bool {
        *self == Validation::Tail
    }
}

/// The end-to-end logit-KD stage that follows the layer stage (`hierarchical+kd`).
#[derive(Debug, Clone, PartialEq)]
pub struct KdSettings {
    /// Tokens of the KD stage (None: the layer stage's `tokens`).
    pub tokens: Option<usize>,
    pub lr: f64,
}

impl Default for KdSettings {
    fn default() -> Self {
        KdSettings {
            tokens: None,
            lr: 2e-5,
        }
    }
}

/// LoRA adapters on all seven projections of every layer (Shortened LLaMA's defaults:
/// rank 8, alpha 16, dropout 0.05, lr 1e-4).
#[derive(Debug, Clone, PartialEq)]
pub struct LoraSettings {
    pub rank: usize,
    pub alpha: f64,
    pub dropout: f64,
    pub lr: f64,
}

impl Default for LoraSettings {
    fn default() -> Self {
        LoraSettings {
            rank: 8,
            alpha: 16.0,
            dropout: 0.05,
            lr: 1e-4,
        }
    }
}

/// A recovery method with the settings only it reads. In files (grids, stored runs) the
/// method is `recovery.method` and its settings are flat keys (`kd_lr`, `lora_rank`, ...);
/// a key of another method is not part of the run: it is dropped when read (so a grid may
/// set `lora_lr` in its base and cross methods) and written back at its default.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Recovery {
    #[default]
    None,
    Hierarchical,
    HierarchicalKd(KdSettings),
    Lora(LoraSettings),
}

impl Recovery {
    /// The method named `kind`, its settings at their defaults.
    pub fn of(kind: RecoveryMethod) -> Recovery {
        match kind {
            RecoveryMethod::None => Recovery::None,
            RecoveryMethod::Hierarchical => Recovery::Hierarchical,
            RecoveryMethod::HierarchicalKd => Recovery::HierarchicalKd(KdSettings::default()),
            RecoveryMethod::Lora => Recovery::Lora(LoraSettings::default()),
        }
    }

    pub fn kind(&self) -> RecoveryMethod {
        match self {
            Recovery::None => RecoveryMethod::None,
            Recovery::Hierarchical => RecoveryMethod::Hierarchical,
            Recovery::HierarchicalKd(_) => RecoveryMethod::HierarchicalKd,
            Recovery::Lora(_) => RecoveryMethod::Lora,
        }
    }

    pub fn name(&self) -> &'static str {
        self.kind().name()
    }

    pub fn kd(&self) -> Option<&KdSettings> {
        match self {
            Recovery::HierarchicalKd(k) => Some(k),
            _ => None,
        }
    }

    pub fn lora(&self) -> Option<&LoraSettings> {
        match self {
            Recovery::Lora(l) => Some(l),
            _ => None,
        }
    }
}

/// The recovery stage's settings. Defaults follow LLM-Streamline's layer training (AdamW
/// 2e-4, weight decay 1e-3, cosine to 5e-5, clip 5, 2048-token sequences; the loss is
/// the one our ablation measured best, cosine, where LLM-Streamline uses MSE) and
/// Shortened LLaMA's LoRA; the token budget is sized for a CPU. Read and written in the
/// flat form of [`RecoveryFile`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(from = "RecoveryFile", into = "RecoveryFile")]
pub struct RecoveryConfig {
    /// The method and the settings only it reads (KD's, LoRA's).
    pub method: Recovery,
    pub attach: Attach,
    pub inputs: LayerInputs,
    pub loss: Losses,
    /// Softmax temperature of the KL losses.
    pub temperature: f64,
    /// kl_logits: positions sampled per sequence and step (None: every position).
    pub kl_positions: Option<usize>,
    /// Training tokens per layer (hierarchical) or for the whole model (lora, kd).
    pub tokens: usize,
    pub seqlen: usize,
    /// Sequences per forward.
    pub micro_batch: usize,
    /// Micro-batches per optimiser step.
    pub accum: usize,
    /// Learning rate of the layer stage.
    pub lr: f64,
    /// Floor of the cosine decay.
    pub min_lr: f64,
    /// Linear warmup over this fraction of the steps.
    pub warmup: f64,
    pub betas: [f64; 2],
    pub eps: f64,
    pub weight_decay: f64,
    /// Global gradient-norm clip (None: no clipping).
    pub clip: Option<f64>,
    /// Held-out validation tokens (rounded up to whole sequences; 0: no validation and
    /// the last step's weights are kept).
    pub val_tokens: usize,
    pub validation: Validation,
    /// Validate every N optimiser steps (None: four times per layer, and at the end).
    pub eval_every: Option<usize>,
    /// Training text: a text file (one row per line) or jsonl with a `text` field. None:
    /// the shared WikiText-2 train prefix, rows not used by the pruning calibration.
    pub data: Option<PathBuf>,
    pub seed: u64,
}

impl Default for RecoveryConfig {
    fn default() -> Self {
        RecoveryConfig {
            method: Recovery::None,
            attach: Attach::Before,
            inputs: LayerInputs::Teacher,
            loss: Losses::default(),
            temperature: 1.0,
            kl_positions: Some(256),
            tokens: 65_536,
            seqlen: 2048,
            micro_batch: 1,
            accum: 1,
            lr: 2e-4,
            min_lr: 5e-5,
            warmup: 0.05,
            betas: [0.9, 0.999],
            eps: 1e-8,
            weight_decay: 1e-3,
            clip: Some(5.0),
            val_tokens: 4096,
            validation: Validation::Tail,
            eval_every: None,
            data: None,
            seed: 0,
        }
    }
}

/// Identity v1: the flat layout of the files, every key under its name (a method's
/// settings at their defaults when the method does not read them); `inputs` and
/// `validation` only away from their first defaults (they came later).
impl crate::hashing::Identity for RecoveryConfig {
    fn identity(&self) -> serde_json::Value {
        let RecoveryConfig {
            method,
            attach,
            inputs,
            loss,
            temperature,
            kl_positions,
            tokens,
            seqlen,
            micro_batch,
            accum,
            lr,
            min_lr,
            warmup,
            betas,
            eps,
            weight_decay,
            clip,
            val_tokens,
            validation,
            eval_every,
            data,
            seed,
        } = self;
        let kd = method.kd().cloned().unwrap_or_default();
        let lora = method.lora().cloned().unwrap_or_default();
        crate::hashing::Fields::new()
            .leaf("method", &method.kind())
            .leaf("attach", attach)
            .opt_in(!inputs.is_teacher(), "inputs", inputs)
            .leaf("loss", loss)
            .leaf("temperature", temperature)
            .leaf("kl_positions", kl_positions)
            .leaf("tokens", tokens)
            .leaf("seqlen", seqlen)
            .leaf("micro_batch", micro_batch)
            .leaf("accum", accum)
            .leaf("lr", lr)
            .leaf("min_lr", min_lr)
            .leaf("warmup", warmup)
            .leaf("betas", betas)
            .leaf("eps", eps)
            .leaf("weight_decay", weight_decay)
            .leaf("clip", clip)
            .leaf("val_tokens", val_tokens)
            .opt_in(!validation.is_tail(), "validation", validation)
            .leaf("eval_every", eval_every)
            .leaf("data", data)
            .leaf("seed", seed)
            .leaf("kd_tokens", &kd.tokens)
            .leaf("kd_lr", &kd.lr)
            .leaf("lora_rank", &lora.rank)
            .leaf("lora_alpha", &lora.alpha)
            .leaf("lora_dropout", &lora.dropout)
            .leaf("lora_lr", &lora.lr)
            .done()
    }
}

impl RecoveryConfig {
    /// Keys left out of the canonical JSON at their default (so that earlier hashes
    /// stay), with that default: a run without the key has this value.
    pub fn opt_in_defaults() -> [(&'static str, serde_json::Value); 2] {
        let d = RecoveryConfig::default();
        [
            ("inputs", serde_json::to_value(d.inputs).unwrap_or_default()),
            (
                "validation",
                serde_json::to_value(d.validation).unwrap_or_default(),
            ),
        ]
    }

    pub fn is_none(&self) -> bool {
        self.method == Recovery::None
    }

    /// Whether the file key `key` (under `recovery`, e.g. `lr`, `lora_lr`, `loss.mse`) can
    /// change what this config's method does. Generous where a key matters to only some
    /// settings of a method (`temperature` only with a KL loss): grids use it to refuse a
    /// key no run of a sub-grid reads, which must never refuse a key that one does.
    pub fn reads(&self, key: &str) -> bool {
        let (hierarchical, kd, lora) = match self.method {
            Recovery::None => return key == "method",
            Recovery::Hierarchical => (true, false, false),
            Recovery::HierarchicalKd(_) => (true, true, false),
            Recovery::Lora(_) => (false, false, true),
        };
        match key.split('.').next().unwrap_or(key) {
            "attach" | "inputs" | "loss" | "lr" => hierarchical,
            "temperature" | "kl_positions" => hierarchical || kd,
            "kd_tokens" | "kd_lr" => kd,
            "lora_rank" | "lora_alpha" | "lora_dropout" | "lora_lr" => lora,
            _ => true,
        }
    }

    /// Tokens per optimiser step.
    pub fn tokens_per_step(&self) -> usize {
        self.seqlen * self.micro_batch * self.accum
    }

    /// Optimiser steps that spend `tokens` (at least one).
    pub fn steps_for(&self, tokens: usize) -> usize {
        tokens.div_ceil(self.tokens_per_step().max(1)).max(1)
    }

    /// Refuse settings that cannot train, before any work starts.
    pub fn validate(&self) -> Result<()> {
        self.loss.validate()?;
        self.validate_budget()?;
        self.validate_optimiser()?;
        self.validate_loss_settings()?;
        self.validate_lora()
    }

    /// The token budget and the shape of one optimiser step: a positive budget, sequences
    /// of at least two tokens, at least one step's worth of tokens per stage, and held-out
    /// validation text when asked for.
    fn validate_budget(&self) -> Result<()> {
        if self.tokens == 0 {
            return bad("a zero token budget trains nothing (recovery.tokens must be > 0)".into());
        }
        if self.seqlen < 2 {
            return bad(format!("seqlen must be at least 2, got {}", self.seqlen));
        }
        if self.micro_batch == 0 || self.accum == 0 {
            return bad("micro_batch and accum must be at least 1".into());
        }
        // A budget below one step would silently train a whole step on more text.
        let step = self.tokens_per_step();
        let kd = (self.method.kd()).map(|k| ("kd_tokens", k.tokens.unwrap_or(self.tokens)));
        for (name, t) in [("tokens", self.tokens)].into_iter().chain(kd) {
            if t < step {
                return bad(format!(
                    "recovery.{name} = {t} is less than one optimiser step of {step} tokens \
                     (seqlen {} x micro_batch {} x accum {}); raise it or shorten the step",
                    self.seqlen, self.micro_batch, self.accum
                ));
            }
        }
        if self.validation == Validation::HeldOut && self.val_tokens == 0 {
            return bad("validation = held_out needs val_tokens > 0".into());
        }
        Ok(())
    }

    /// AdamW and its schedule: learning rates, the decay floor, warmup, betas, eps,
    /// weight decay and the gradient clip.
    fn validate_optimiser(&self) -> Result<()> {
        let kd_lr = self.method.kd().map(|k| ("kd_lr", k.lr));
        let lora_lr = self.method.lora().map(|l| ("lora_lr", l.lr));
        for (name, v) in [("lr", self.lr)].into_iter().chain(kd_lr).chain(lora_lr) {
            if !(v.is_finite() && v > 0.0) {
                return bad(format!("{name} must be a positive number, got {v}"));
            }
        }
        if !(self.min_lr.is_finite() && self.min_lr >= 0.0 && self.min_lr <= self.lr) {
            return bad(format!("min_lr must be in [0, lr], got {}", self.min_lr));
        }
        if !(0.0..1.0).contains(&self.warmup) {
            return bad(format!(
                "warmup is a fraction in [0, 1), got {}",
                self.warmup
            ));
        }
        if !self.betas.iter().all(|b| (0.0..1.0).contains(b))
            || self.eps.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater)
        {
            return bad("betas must be in [0, 1) and eps > 0".into());
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad(format!(
                "weight_decay must be >= 0, got {}",
                self.weight_decay
            ));
        }
        if self.clip.is_some_and(|c| !(c.is_finite() && c > 0.0)) {
            return bad("clip must be a positive number".into());
        }
        Ok(())
    }

    /// The KL temperature, the sampled positions of `kl_logits` and the validation period.
    fn validate_loss_settings(&self) -> Result<()> {
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return bad(format!("temperature must be > 0, got {}", self.temperature));
        }
        if self.kl_positions == Some(0) || self.eval_every == Some(0) {
            return bad("kl_positions and eval_every must be at least 1".into());
        }
        Ok(())
    }

    /// The adapters' rank, alpha and dropout, checked for LoRA recovery only.
    fn validate_lora(&self) -> Result<()> {
        let Some(lora) = self.method.lora() else {
            return Ok(());
        };
        if lora.rank == 0 {
            return bad("lora_rank must be at least 1".into());
        }
        if !(lora.alpha.is_finite() && lora.alpha > 0.0) {
            return bad(format!(
                "lora_alpha must be a positive number, got {}",
                lora.alpha
            ));
        }
        if !(0.0..1.0).contains(&lora.dropout) {
            return bad(format!(
                "lora_dropout must be in [0, 1), got {}",
                lora.dropout
            ));
        }
        Ok(())
    }
}

/// A refused recovery setting, prefixed `recovery: `.
fn bad(m: String) -> Result<()> {
    Err(Error::Invalid(format!("recovery: {m}")))
}
