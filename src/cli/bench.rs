//! `come-repro bench`: speed and memory measurements printed next to their reference.

use super::common::RuntimeArgs;
use anyhow::{bail, Context, Result};
use clap::Subcommand;
use come_repro::model::load::load_model;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;
use tch::{Kind, Tensor};

#[derive(Subcommand)]
pub enum BenchCmd {
    /// Forward throughput (full logits) at batch x seqlen, optionally next to transformers.
    Forward {
        #[arg(long)]
        model: PathBuf,
        #[arg(long, default_value_t = 4)]
        batch: i64,
        #[arg(long, default_value_t = 512)]
        seqlen: i64,
        #[arg(long, default_value_t = 3)]
        iters: usize,
        /// Also run benches/hf_forward.py (transformers) with the same settings.
        #[arg(long)]
        hf: bool,
        /// Alternate come-repro and transformers this many times (machine noise affects
        /// both sides alike); medians over all rounds are compared.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        #[command(flatten)]
        rt: RuntimeArgs,
    },
    /// Pruning cost: methods on a checkpoint (wall, layer passes, peak RSS, beside the
    /// authors' code), or CoMe on a random-init model of a published shape
    /// (`--synthetic llama2-7b [--layers N]`).
    Prune(super::bench_prune::PruneBenchArgs),
    /// Zero-shot scoring of the same documents in several dtypes (default f32 vs bf16):
    /// speed, scores, and how far log-likelihoods and predictions move.
    Precision(super::bench_precision::PrecisionArgs),
    /// Prefill and decode tokens/s at batch 1 (KV-cached, warm, median of repeats) of
    /// several checkpoints, with the speed-up over the first (the dense model).
    Latency(super::bench_latency::LatencyArgs),
    /// Scoring's attention on the CPU: within packed rows against libtorch's padded flash
    /// attention, on the seven tasks' row shapes.
    Attention(super::bench_attention::AttentionArgs),
    /// Peak resident memory of loading a checkpoint, against its f32 size.
    Load {
        #[arg(long)]
        model: PathBuf,
        #[command(flatten)]
        rt: RuntimeArgs,
    },
}

pub fn run(cmd: BenchCmd) -> Result<()> {
    match cmd {
        BenchCmd::Forward {
            model,
            batch,
            seqlen,
            iters,
            hf,
            rounds,
            rt,
        } => forward(model, batch, seqlen, iters, hf, rounds, rt),
        BenchCmd::Load { model, rt } => load(model, rt),
        BenchCmd::Precision(a) => super::bench_precision::run(a),
        BenchCmd::Prune(a) => super::bench_prune::run(a),
        BenchCmd::Latency(a) => super::bench_latency::run(a),
        BenchCmd::Attention(a) => super::bench_attention::run(a),
    }
}

use come_repro::eval::latency::median;

fn forward(
    dir: PathBuf,
    batch: i64,
    seqlen: i64,
    iters: usize,
    hf: bool,
    rounds: usize,
    rt: RuntimeArgs,
) -> Result<()> {
    let opts = rt.load_options()?;
    let threads = tch::get_num_threads();
    let model = load_model(&dir, opts)?;
    let _g = tch::no_grad_guard();
    tch::manual_seed(0);
    let ids = Tensor::randint(
        model.config.vocab_size,
        [batch, seqlen],
        (Kind::Int64, opts.device),
    );
    // One warm-up pass: first calls allocate and pick kernels.
    let _ = model.forward(&ids, None)?;
    let (mut ours, mut theirs) = (vec![], vec![]);
    let mut versions = String::new();
    for _ in 0..rounds.max(1) {
        for _ in 0..iters.max(1) {
            let t0 = Instant::now();
            let logits = model.forward(&ids, None)?;
            let _ = logits.sum(Kind::Float).double_value(&[]);
            ours.push(t0.elapsed().as_secs_f64());
        }
        if hf {
            let (times, v) = hf_forward(&dir, batch, seqlen, iters, threads)?;
            theirs.extend(times);
            versions = v;
        }
    }
    let tok = (batch * seqlen) as f64;
    let (n_ours, n_theirs) = (ours.len(), theirs.len());
    let mo = median(&mut ours);
    println!(
        "forward {batch}x{seqlen} (full logits), {threads} threads, {}, {} round(s):",
        come_repro::runtime::dtype_name(opts.dtype),
        rounds.max(1)
    );
    println!(
        "  come-repro    {:>8.0} tok/s   (median of {n_ours} passes, {mo:.3}s each)",
        tok / mo
    );
    if hf && !theirs.is_empty() {
        let mt = median(&mut theirs);
        println!("  transformers  {:>8.0} tok/s   (median of {n_theirs} passes, {mt:.3}s each; {versions})", tok / mt);
        println!("  ratio         {:>8.2}x  (goal >= 1.0)", mt / mo);
    }
    Ok(())
}

/// One run of benches/hf_forward.py (transformers) with the same settings: its pass
/// times in seconds and the torch and transformers versions it reports.
fn hf_forward(
    dir: &Path,
    batch: i64,
    seqlen: i64,
    iters: usize,
    threads: i32,
) -> Result<(Vec<f64>, String)> {
    let py = PathBuf::from(".venv/bin/python");
    let out = Command::new(&py)
        .args(["benches/hf_forward.py", "--model"])
        .arg(dir)
        .args([
            "--batch",
            &batch.to_string(),
            "--seqlen",
            &seqlen.to_string(),
        ])
        .args([
            "--iters",
            &iters.to_string(),
            "--threads",
            &threads.to_string(),
        ])
        .output()
        .with_context(|| format!("running {} benches/hf_forward.py", py.display()))?;
    if !out.status.success() {
        bail!(
            "benches/hf_forward.py failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("parsing hf_forward.py output")?;
    let times = v["times_s"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|x| x.as_f64())
        .collect();
    let versions = format!("torch {}, transformers {}", v["torch"], v["transformers"]);
    Ok((times, versions))
}

fn load(dir: PathBuf, rt: RuntimeArgs) -> Result<()> {
    let opts = rt.load_options()?;
    // Touch libtorch first so its own start-up memory is not charged to loading.
    let _ = Tensor::zeros([1], (Kind::Float, tch::Device::Cpu));
    let base = come_repro::memory::status_kib("VmRSS:").unwrap_or(0);
    let t0 = Instant::now();
    let model = load_model(&dir, opts)?;
    let dt = t0.elapsed().as_secs_f64();
    let peak = come_repro::memory::status_kib("VmHWM:").unwrap_or(0);
    let f32_bytes = model.num_params() as f64 * 4.0;
    let mib = |k: u64| k as f64 / 1024.0;
    println!("load {} in {dt:.2}s", dir.display());
    println!("  parameters          {}", model.num_params());
    println!(
        "  f32 size            {:>8.1} MiB",
        f32_bytes / (1 << 20) as f64
    );
    println!(
        "  RSS before load     {:>8.1} MiB (libtorch runtime)",
        mib(base)
    );
    println!("  peak RSS            {:>8.1} MiB", mib(peak));
    println!(
        "  peak / f32 size     {:>8.2}x   (goal <= 2.0x)",
        peak as f64 * 1024.0 / f32_bytes
    );
    println!(
        "  (peak - base) / f32 {:>8.2}x",
        (peak - base.min(peak)) as f64 * 1024.0 / f32_bytes
    );
    Ok(())
}
