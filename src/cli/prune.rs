//! `come-repro prune`: prune a checkpoint and save it as a standard HF checkpoint plus
//! `come.json` (config, target mapping, layer correspondence, per-step scores, channels
//! kept, calibration sample, timings).

use super::common::{bar, load, note, RuntimeArgs};
use anyhow::{Context, Result};
use clap::Args;
use come_repro::calib::{self, CalibConfig};
use come_repro::model::save::save_model;
use come_repro::prune::merge::{GqaMapping, NormMode};
use come_repro::prune::score::Sensitivity;
use come_repro::prune::{prune, target_layers, MergeOp, Method, PairScore, PruneConfig};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args)]
pub struct PruneArgs {
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long)]
    pub out: PathBuf,
    /// come, come-p, shortgpt, sleb, reverse, magnitude, magnitude+, taylor, taylor+, laco, mka.
    #[arg(long, default_value = "come")]
    pub method: String,
    /// For the CoMe schedule: concat, linear, linear-bi or drop.
    #[arg(long, default_value = "concat")]
    pub merge: String,
    #[arg(long, conflicts_with = "target_layers")]
    pub sparsity: Option<f64>,
    #[arg(long)]
    pub target_layers: Option<usize>,
    /// act-l1, activation, weight, l2, input-qk, random.
    #[arg(long, default_value = "act-l1")]
    pub sensitivity: String,
    /// sbi, sbi-all or nll.
    #[arg(long, default_value = "sbi")]
    pub pair_score: String,
    /// mean (reference) or fold.
    #[arg(long, default_value = "mean")]
    pub norm: String,
    /// hf (correct) or reference (the reference code's GQA head rule).
    #[arg(long, default_value = "hf")]
    pub gqa_mapping: String,
    /// Allow merging already merged layers.
    #[arg(long)]
    pub allow_repeat: bool,
    #[arg(long, default_value_t = 20)]
    pub comep_grid: usize,
    /// Calibration text (default: the shared WikiText-2 train prefix).
    #[arg(long)]
    pub calib_source: Option<PathBuf>,
    #[arg(long, default_value_t = 256)]
    pub calib_rows: usize,
    #[arg(long, default_value_t = 2048)]
    pub calib_seqlen: usize,
    #[arg(long, default_value_t = 8)]
    pub calib_seqs: usize,
    #[arg(long, default_value_t = 10)]
    pub calib_seed: u64,
    /// Re-score from layer 0 every round instead of from the merge position.
    #[arg(long)]
    pub full_rescore: bool,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Replace an existing output directory.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub rt: RuntimeArgs,
}

fn parse<T: serde::de::DeserializeOwned>(what: &str, s: &str) -> Result<T> {
    serde_json::from_value(serde_json::Value::String(s.into()))
        .map_err(|_| anyhow::anyhow!("unknown {what} `{s}`"))
}

impl PruneArgs {
    pub fn config(&self) -> Result<PruneConfig> {
        Ok(PruneConfig {
            method: Method::parse(&self.method)?,
            merge: MergeOp::parse(&self.merge)?,
            target_layers: self.target_layers,
            sparsity: self.sparsity,
            sensitivity: Sensitivity::parse(&self.sensitivity)?,
            pair_score: parse::<PairScore>("pair score (sbi, sbi-all, nll)", &self.pair_score)?,
            norm: parse::<NormMode>("norm (mean, fold)", &self.norm)?,
            gqa_mapping: parse::<GqaMapping>("gqa mapping (hf, reference)", &self.gqa_mapping)?,
            no_repeat: !self.allow_repeat,
            comep_grid: self.comep_grid,
            calib: CalibConfig {
                source: self.calib_source.clone(),
                nrows: self.calib_rows,
                seqlen: self.calib_seqlen,
                seed: self.calib_seed,
                max_sequences: Some(self.calib_seqs),
            },
            incremental: !self.full_rescore,
            seed: self.seed,
            ..Default::default()
        })
    }
}

pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |k| k / 1024.0)
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
    let (mut model, tok) = load(&a.model, &a.rt)?;
    // Validate the target before the (slow) calibration pass.
    let mapping = target_layers(&model, &cfg)?;
    let cal = calib::sample(&tok, &cfg.calib)?;
    eprintln!(
        "{}: {} -> {} layers with {} ({} calibration sequences of {} tokens)",
        a.model.display(),
        mapping.layers_before,
        mapping.target_layers,
        cfg.method.name(),
        cal.n_sequences,
        cal.seqlen
    );
    let pb = bar(mapping.layers_removed as u64, "steps");
    let report = prune(&mut model, cal, &cfg, |done, what| {
        pb.set_position(done as u64);
        note(&pb, &format!("  {what}"));
    })?;
    pb.finish_and_clear();
    let tmp = a.out.with_extension("partial");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).with_context(|| format!("removing {}", tmp.display()))?;
    }
    save_model(&model, &tmp, Some(&a.model))?;
    let record = serde_json::json!({
        "source_model": a.model,
        "report": report,
        "peak_rss_mib": peak_rss_mib(),
        "total_seconds": t0.elapsed().as_secs_f64(),
        "threads": tch::get_num_threads(),
        "crate_version": env!("CARGO_PKG_VERSION"),
    });
    std::fs::write(
        tmp.join("come.json"),
        serde_json::to_string_pretty(&record)? + "\n",
    )?;
    if a.out.exists() {
        std::fs::remove_dir_all(&a.out).with_context(|| format!("removing {}", a.out.display()))?;
    }
    std::fs::rename(&tmp, &a.out)?;
    println!(
        "pruned {} -> {} layers in {:.1}s (prune {:.1}s, {} layer passes), {} -> {} params, peak RSS {:.0} MiB: {}",
        mapping.layers_before,
        model.n_layers(),
        t0.elapsed().as_secs_f64(),
        report.seconds,
        report.layer_passes,
        report.params_before,
        report.params_after,
        peak_rss_mib(),
        a.out.display()
    );
    println!("correspondence: {:?}", report.correspondence);
    Ok(())
}
