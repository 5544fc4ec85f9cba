//! `come-repro distill`: recover a pruned checkpoint against its teacher (hierarchical
//! layer-local distillation, optionally followed by logit KD, or the LoRA baseline) and
//! save it as an HF checkpoint plus `distill.json`.

use super::bars::Bars;
use super::common::RuntimeArgs;
use anyhow::{bail, Context, Result};
use clap::Args;
use come_repro::distill::{
    Attach, LayerInputs, Losses, Recovery, RecoveryConfig, RecoveryMethod, Validation,
};
use come_repro::stages::{Dest, DistillRecord, DistillStage, Stage, StageCtx};
use std::path::PathBuf;

/// A repeated option takes its last value (scripts append overrides to a base command).
#[derive(Args)]
#[command(args_override_self = true)]
pub struct DistillArgs {
    /// The model before pruning (HF checkpoint directory).
    #[arg(long)]
    pub teacher: PathBuf,
    /// The pruned checkpoint (with the come.json that `prune` writes).
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, value_enum, default_value = "hierarchical")]
    pub method: RecoveryMethod,
    /// Loss terms: `mse`, `mse,cosine` or weighted `mse:1,cosine:0.5`
    /// (mse, cosine, kl_hidden, kl_logits).
    #[arg(long, value_parser = parse_losses)]
    pub loss: Option<Losses>,
    /// Training tokens per layer (hierarchical) or for the whole model (lora).
    #[arg(long)]
    pub tokens: Option<usize>,
    #[arg(long)]
    pub seqlen: Option<usize>,
    #[arg(long)]
    pub micro_batch: Option<usize>,
    #[arg(long)]
    pub accum: Option<usize>,
    #[arg(long)]
    pub lr: Option<f64>,
    #[arg(long)]
    pub min_lr: Option<f64>,
    /// Warmup as a fraction of the steps.
    #[arg(long)]
    pub warmup: Option<f64>,
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// Gradient-norm clip (0: none).
    #[arg(long)]
    pub clip: Option<f64>,
    #[arg(long)]
    pub temperature: Option<f64>,
    /// kl_logits positions per sequence and step (0: all).
    #[arg(long)]
    pub kl_positions: Option<usize>,
    #[arg(long)]
    pub val_tokens: Option<usize>,
    /// Validation text: `tail` (after the training text, moves with the budget) or
    /// `held_out` (the text's last 400 rows, never trained on).
    #[arg(long, value_enum)]
    pub validation: Option<Validation>,
    #[arg(long)]
    pub eval_every: Option<usize>,
    /// Training text (one row per line, or jsonl with `text`); default: the shared
    /// WikiText-2 train prefix without the pruning calibration's rows.
    #[arg(long)]
    pub data: Option<PathBuf>,
    #[arg(long)]
    pub seed: Option<u64>,
    #[arg(long, value_enum)]
    pub attach: Option<Attach>,
    /// What each merged layer trains on: the teacher's states (layers independent), or
    /// the student's own as recovered so far (layers in order, one worker).
    #[arg(long, value_enum)]
    pub inputs: Option<LayerInputs>,
    #[arg(long)]
    pub kd_tokens: Option<usize>,
    #[arg(long)]
    pub kd_lr: Option<f64>,
    #[arg(long)]
    pub lora_rank: Option<usize>,
    #[arg(long)]
    pub lora_alpha: Option<f64>,
    #[arg(long)]
    pub lora_dropout: Option<f64>,
    #[arg(long)]
    pub lora_lr: Option<f64>,
    /// Worker threads on the CPU (layers trained concurrently); see also --devices.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub workers: u16,
    /// One worker per device, e.g. `cuda:0,cuda:1` (overrides --workers).
    #[arg(long, value_delimiter = ',')]
    pub devices: Vec<String>,
    /// Keep teacher states here, reusable by later runs (default: memory, or a temp dir
    /// when they exceed 2 GiB).
    #[arg(long)]
    pub teacher_cache: Option<PathBuf>,
    /// Any other key a grid sets under `recovery` (repeatable, applied after the flags
    /// above), in the grid's syntax: `--set betas=[0.9,0.95] --set eps=1e-6`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub settings: Vec<String>,
    /// Replace an existing output directory.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub rt: RuntimeArgs,
}

fn parse_losses(s: &str) -> Result<Losses, String> {
    Losses::parse(s).map_err(|e| e.to_string())
}

impl DistillArgs {
    /// The method with its own flags applied; a flag of another method is refused (it
    /// would be silently unused).
    fn method_settings(&self) -> Result<Recovery> {
        let mut m = Recovery::of(self.method);
        let kd = [
            ("--kd-tokens", self.kd_tokens.is_some()),
            ("--kd-lr", self.kd_lr.is_some()),
        ];
        let lora = [
            ("--lora-rank", self.lora_rank.is_some()),
            ("--lora-alpha", self.lora_alpha.is_some()),
            ("--lora-dropout", self.lora_dropout.is_some()),
            ("--lora-lr", self.lora_lr.is_some()),
        ];
        for (of, flags) in [
            (RecoveryMethod::HierarchicalKd, &kd[..]),
            (RecoveryMethod::Lora, &lora),
        ] {
            if let Some((flag, _)) = flags.iter().find(|(_, given)| *given && of != self.method) {
                anyhow::bail!(
                    "{flag} is a setting of --method {}, not of {}",
                    of.name(),
                    self.method.name()
                );
            }
        }
        match &mut m {
            Recovery::HierarchicalKd(kd) => {
                kd.tokens = self.kd_tokens.or(kd.tokens);
                kd.lr = self.kd_lr.unwrap_or(kd.lr);
            }
            Recovery::Lora(l) => {
                l.rank = self.lora_rank.unwrap_or(l.rank);
                l.alpha = self.lora_alpha.unwrap_or(l.alpha);
                l.dropout = self.lora_dropout.unwrap_or(l.dropout);
                l.lr = self.lora_lr.unwrap_or(l.lr);
            }
            Recovery::None | Recovery::Hierarchical => {}
        }
        Ok(m)
    }

    pub fn config(&self) -> Result<RecoveryConfig> {
        let mut c = RecoveryConfig {
            method: self.method_settings()?,
            ..Default::default()
        };
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = self.$f.clone() { c.$f = v; } )* };
        }
        set!(
            loss,
            tokens,
            seqlen,
            micro_batch,
            accum,
            lr,
            min_lr,
            warmup,
            weight_decay,
            temperature,
            val_tokens,
            validation,
            seed,
            attach,
            inputs
        );
        if let Some(x) = self.clip {
            c.clip = (x > 0.0).then_some(x);
        }
        if let Some(k) = self.kl_positions {
            c.kl_positions = (k > 0).then_some(k);
        }
        c.eval_every = self.eval_every.or(c.eval_every);
        c.data = self.data.clone().or(c.data);
        Ok(come_repro::grid::apply_settings(
            &c,
            "recovery",
            &self.settings,
        )?)
    }
}

pub fn run(a: DistillArgs) -> Result<()> {
    let cfg = a.config()?;
    cfg.validate()?;
    if a.out.exists() && !a.force {
        bail!(
            "{} already exists (use --force to replace it)",
            a.out.display()
        );
    }
    let load = a.rt.load_options()?;
    let devices = if a.devices.is_empty() {
        vec![load.device; a.workers as usize]
    } else {
        a.devices
            .iter()
            .map(|d| come_repro::runtime::parse_device(d.trim()))
            .collect::<Result<_, _>>()?
    };
    let mut bars = Bars::new();
    let mut sink = bars.sink();
    let mut alive = || {};
    let mut ctx = StageCtx::standalone(load, &mut sink, &mut alive);
    ctx.distill_devices = devices;
    let stage = DistillStage {
        teacher: &a.teacher,
        pruned: &a.model,
        cfg: &cfg,
        dest: Dest::Dir(a.out.clone()),
        teacher_cache: a.teacher_cache.clone(),
    };
    stage.run(&mut ctx).with_context(|| {
        format!(
            "recovering {} against {}",
            a.model.display(),
            a.teacher.display()
        )
    })?;
    drop(sink);
    bars.finish();
    let rec = DistillRecord::read(&a.out)?;
    for u in &rec.units {
        let what = u
            .layer
            .map_or("whole model".to_string(), |l| format!("layer {l}"));
        let first = u.train_loss.first().copied().unwrap_or(f64::NAN);
        let last = u.train_loss.last().copied().unwrap_or(f64::NAN);
        let val = u
            .best_val_loss
            .map_or("-".into(), |v| format!("{v:.4e} (step {})", u.best_step));
        println!(
            "{what:>12}: {} steps, loss {first:.4e} -> {last:.4e}, best val {val}, {:.0} tok/s",
            u.steps, u.tokens_per_s
        );
    }
    println!(
        "recovered with {} in {:.1}s ({} tokens, {:.0} tok/s, teacher states {:.1}s{}), peak RSS {:.0} MiB: {}",
        cfg.method.name(),
        rec.seconds,
        rec.tokens,
        rec.tokens_per_s,
        rec.teacher_seconds,
        if rec.teacher_cached { " cached" } else { "" },
        rec.peak_rss_mib,
        a.out.display()
    );
    Ok(())
}
