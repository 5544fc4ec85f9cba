//! `come-repro prune`: prune a checkpoint and save it as a standard HF checkpoint plus
//! `come.json` (config, target mapping, layer correspondence, per-step scores, channels
//! kept, calibration sample, timings).

use super::bars::Bars;
use super::common::RuntimeArgs;
use anyhow::Result;
use clap::Args;
use come_repro::calib::{CalibConfig, Shuffle};
use come_repro::prune::merge::{GqaMapping, NormMode};
use come_repro::prune::score::Sensitivity;
use come_repro::prune::{MergeOp, Method, PairScore, PruneConfig};
use come_repro::stages::{Dest, PruneRecord, PruneStage, Stage, StageCtx};
use std::path::PathBuf;
use std::time::Instant;

/// The flags' defaults are the config's (one default each, shared with the grids).
static DEFAULT: std::sync::LazyLock<PruneConfig> = std::sync::LazyLock::new(PruneConfig::default);

#[derive(Args)]
pub struct PruneArgs {
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, value_enum, default_value_t = DEFAULT.method)]
    pub method: Method,
    /// The merge operation of the CoMe schedule.
    #[arg(long, value_enum, default_value_t = DEFAULT.merge)]
    pub merge: MergeOp,
    #[arg(long, conflicts_with = "target_layers")]
    pub sparsity: Option<f64>,
    #[arg(long)]
    pub target_layers: Option<usize>,
    /// Channel importance (act-l1 is the paper's).
    #[arg(long, value_enum, default_value_t = DEFAULT.sensitivity)]
    pub sensitivity: Sensitivity,
    #[arg(long, value_enum, default_value_t = DEFAULT.pair_score)]
    pub pair_score: PairScore,
    /// Merged RMSNorm weights: mean (reference) or fold.
    #[arg(long, value_enum, default_value_t = DEFAULT.norm)]
    pub norm: NormMode,
    /// hf (correct) or reference (the reference code's GQA head rule).
    #[arg(long, value_enum, default_value_t = DEFAULT.gqa_mapping)]
    pub gqa_mapping: GqaMapping,
    /// Allow merging already merged layers.
    #[arg(long)]
    pub allow_repeat: bool,
    #[arg(long, default_value_t = DEFAULT.comep_grid)]
    pub comep_grid: usize,
    /// Calibration text (default: the shared WikiText-2 train prefix).
    #[arg(long)]
    pub calib_source: Option<PathBuf>,
    /// `calib.nrows` (`--calib-rows` is accepted too).
    #[arg(long = "calib-nrows", alias = "calib-rows", default_value_t = DEFAULT.calib.nrows)]
    pub calib_nrows: usize,
    #[arg(long, default_value_t = DEFAULT.calib.seqlen)]
    pub calib_seqlen: usize,
    /// `calib.max_sequences`: keep at most this many windows (default: every whole window,
    /// as the paper's code; `--calib-seqs` is accepted too).
    #[arg(long = "calib-max-sequences", alias = "calib-seqs")]
    pub calib_max_sequences: Option<usize>,
    #[arg(long, default_value_t = DEFAULT.calib.seed)]
    pub calib_seed: u64,
    /// Row order before the first `--calib-nrows` are taken: numpy is the paper's draw.
    #[arg(long, value_enum, default_value_t = DEFAULT.calib.shuffle)]
    pub calib_shuffle: Shuffle,
    /// Explicit calibration token ids (JSON list of token-id lists, or a 2-d .npy array)
    /// instead of the text recipe.
    #[arg(long)]
    pub calib_ids: Option<PathBuf>,
    /// Re-score from layer 0 every round instead of from the merge position.
    #[arg(long)]
    pub full_rescore: bool,
    #[arg(long, default_value_t = DEFAULT.seed)]
    pub seed: u64,
    /// Any other key a grid sets under `prune` (repeatable, applied after the flags
    /// above), in the grid's syntax: `--set laco_span=4 --set calib.nrows=64`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub settings: Vec<String>,
    /// Replace an existing output directory.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub rt: RuntimeArgs,
}

impl PruneArgs {
    pub fn config(&self) -> Result<PruneConfig> {
        let flags = PruneConfig {
            method: self.method,
            merge: self.merge,
            target_layers: self.target_layers,
            sparsity: self.sparsity,
            sensitivity: self.sensitivity,
            pair_score: self.pair_score,
            norm: self.norm,
            gqa_mapping: self.gqa_mapping,
            no_repeat: !self.allow_repeat,
            comep_grid: self.comep_grid,
            calib: CalibConfig {
                source: self.calib_source.clone(),
                nrows: self.calib_nrows,
                seqlen: self.calib_seqlen,
                seed: self.calib_seed,
                max_sequences: self.calib_max_sequences,
                shuffle: self.calib_shuffle,
                ids: self.calib_ids.clone(),
                ids_sha256: None,
            },
            incremental: !self.full_rescore,
            seed: self.seed,
            ..Default::default()
        };
        let cfg = come_repro::grid::apply_settings(&flags, "prune", &self.settings)?;
        cfg.validate()?;
        refuse_unread(&cfg)?;
        Ok(cfg)
    }
}

/// A setting the chosen method does not read is an error here (a grid's base may hold it
/// for the other methods it crosses; one `prune` has one method).
fn refuse_unread(cfg: &PruneConfig) -> Result<()> {
    let unread = cfg.unread_settings();
    if unread.is_empty() {
        return Ok(());
    }
    let lines: Vec<String> = unread
        .iter()
        .map(|(key, readers)| {
            let names: Vec<&str> = readers.iter().map(|m| m.name()).collect();
            format!(
                "`{key}` ({}) is read by --method {}",
                flag_of(key),
                names.join(", ")
            )
        })
        .collect();
    anyhow::bail!(
        "--method {} does not read settings given away from their defaults:\n  {}",
        cfg.method.name(),
        lines.join("\n  ")
    )
}

/// The flag that sets a top-level prune key (`--set` for the keys without one).
fn flag_of(key: &str) -> String {
    match key {
        "no_repeat" => "--allow-repeat".into(),
        "incremental" => "--full-rescore".into(),
        "calib" => "--calib-*".into(),
        "merge" | "sensitivity" | "pair_score" | "norm" | "gqa_mapping" | "comep_grid" | "seed" => {
            format!("--{}", key.replace('_', "-"))
        }
        _ => format!("--set {key}=..."),
    }
}

pub fn run(a: PruneArgs) -> Result<()> {
    let cfg = a.config()?;
    if a.out.exists() && !a.force {
        anyhow::bail!(
            "{} already exists (use --force to replace it)",
            a.out.display()
        );
    }
    let t0 = Instant::now();
    let lo = a.rt.load_options()?;
    let mut bars = Bars::new();
    let mut sink = bars.sink();
    let mut alive = || {};
    let mut ctx = StageCtx::standalone(lo, &mut sink, &mut alive);
    let stage = PruneStage {
        base: &a.model,
        cfg: &cfg,
        dest: Dest::Dir(a.out.clone()),
    };
    stage.run(&mut ctx)?;
    drop(sink);
    bars.finish();
    let rec = PruneRecord::read(&a.out)?;
    let report = &rec.report;
    println!(
        "pruned {} -> {} layers in {:.1}s (prune {:.1}s, {} layer passes), {} -> {} params, peak RSS {:.0} MiB: {}",
        report.target.layers_before,
        report.correspondence.len(),
        t0.elapsed().as_secs_f64(),
        report.seconds,
        report.layer_passes,
        report.params_before,
        report.params_after,
        rec.peak_rss_mib.unwrap_or(f64::NAN),
        a.out.display()
    );
    println!("correspondence: {:?}", report.correspondence);
    Ok(())
}
