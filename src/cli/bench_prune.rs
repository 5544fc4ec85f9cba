//! `come-repro bench prune`: pruning cost at the scale that matters.
//!
//! - On a checkpoint (`--model`): each method in its own `come-repro prune` process (so
//!   peak RSS is its own), printing wall time, layer passes per calibration window and
//!   peak RSS against the model's f32 size, beside the authors' code's wall time where the
//!   reference run in `../shared/reference/come-smollm2` covers the method.
//! - On a random-init model of a published shape (`--synthetic llama2-7b`), built in
//!   memory on the run's device: CoMe from `--layers` layers to `--target-layers`, with
//!   seconds per stage and per merge round, layer passes, bytes of calibration state per
//!   token, peak host memory and the device memory held at the end.

use super::common::RuntimeArgs;
use anyhow::{bail, Context, Result};
use clap::Args;
use come_repro::model::synthetic::{hashed_model, Shape};
use come_repro::prune::merge::{GqaMapping, NormMode};
use come_repro::prune::{prune, Method, PruneConfig};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

#[derive(Args)]
pub struct PruneBenchArgs {
    /// Checkpoint to prune (one process per method).
    #[arg(
        long,
        conflicts_with = "synthetic",
        required_unless_present = "synthetic"
    )]
    pub model: Option<PathBuf>,
    /// A random-init model of this shape instead, built in memory.
    #[arg(long, value_enum)]
    pub synthetic: Option<Shape>,
    /// Layers of the synthetic model (default: the shape's own).
    #[arg(long)]
    pub layers: Option<usize>,
    /// Methods to time on a checkpoint.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "come,shortgpt"
    )]
    pub methods: Vec<Method>,
    /// Target depth (default: 21 on a checkpoint; 22/32 of the depth on a synthetic model).
    #[arg(long)]
    pub target_layers: Option<usize>,
    /// Calibration token ids (a checkpoint's default: the reference run's ids when present).
    #[arg(long)]
    pub calib_ids: Option<PathBuf>,
    /// Random calibration windows of a synthetic model (the paper's recipe gives 18).
    #[arg(long, default_value_t = 18)]
    pub calib_seqs: i64,
    #[arg(long, default_value_t = 2048)]
    pub calib_seqlen: i64,
    #[command(flatten)]
    pub rt: RuntimeArgs,
}

pub fn run(a: PruneBenchArgs) -> Result<()> {
    match (&a.model, a.synthetic) {
        (Some(m), _) => on_checkpoint(m, &a),
        (None, Some(s)) => synthetic(s, &a),
        (None, None) => bail!("give --model DIR or --synthetic SHAPE"),
    }
}

/// The reference run's record for a method, when the reference directory has one.
fn reference_record(method: Method) -> Option<Value> {
    let file = match method {
        Method::Come => "concat_merge_t21.json",
        Method::ShortGpt => "shortgpt_t21.json",
        _ => return None,
    };
    let p = come_repro::paths::reference_dir()
        .join("come-smollm2")
        .join(file);
    serde_json::from_str(&std::fs::read_to_string(p).ok()?).ok()
}

fn on_checkpoint(model: &Path, a: &PruneBenchArgs) -> Result<()> {
    let exe = std::env::current_exe().context("locating the come-repro binary")?;
    let tmp = come_repro::paths::work_dir().join(format!("bench-prune-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let ids = a.calib_ids.clone().or_else(|| {
        let p = come_repro::paths::reference_dir().join("come-smollm2/calib_ids.json");
        p.exists().then_some(p)
    });
    let target = a.target_layers.unwrap_or(21);
    println!(
        "prune {} -> {target} layers; calibration: {}; reference GQA rule, mean norms",
        model.display(),
        ids.as_ref()
            .map_or("the paper recipe".into(), |p| p.display().to_string())
    );
    println!(
        "  {:<10} {:>8} {:>8} {:>8} {:>11} {:>9} {:>7} {:>6} {:>14}",
        "method",
        "wall s",
        "prune s",
        "passes",
        "per window",
        "peak MiB",
        "x f32",
        "disk",
        "authors' wall s"
    );
    for &method in &a.methods {
        let name = method.name();
        let out = tmp.join(name);
        let mut cmd = Command::new(&exe);
        cmd.args(["prune", "--force", "--method", name, "--model"])
            .arg(model)
            .arg("--out")
            .arg(&out)
            .args(["--target-layers", &target.to_string()])
            .args(["--gqa-mapping", "reference", "--norm", "mean"])
            .args([
                "--device",
                &a.rt.device.to_string(),
                "--dtype",
                a.rt.dtype.name(),
            ]);
        if let Some(p) = &ids {
            cmd.arg("--calib-ids").arg(p);
        }
        if let Some(t) = a.rt.threads {
            cmd.args(["--threads", &t.to_string()]);
        }
        let t0 = Instant::now();
        let st = cmd.status().context("running come-repro prune")?;
        if !st.success() {
            bail!("come-repro prune --method {name} failed");
        }
        let wall = t0.elapsed().as_secs_f64();
        let rec: Value = serde_json::from_str(
            &std::fs::read_to_string(out.join("come.json")).context("reading come.json")?,
        )?;
        let r = &rec["report"];
        let windows = r["calibration"]["n_sequences"].as_u64().unwrap_or(1).max(1);
        let passes = r["layer_passes"].as_u64().unwrap_or(0);
        let rss = rec["peak_rss_mib"].as_f64().unwrap_or(f64::NAN);
        let f32_mib = r["params_before"].as_f64().unwrap_or(f64::NAN) * 4.0 / (1 << 20) as f64;
        let theirs = reference_record(method)
            .and_then(|v| v["pruning_wall_s"].as_f64())
            .map_or("-".into(), |s| format!("{s:.0}"));
        println!(
            "  {name:<10} {wall:>8.1} {:>8.1} {passes:>8} {:>11.1} {rss:>9.0} {:>7.2} {:>6} {theirs:>14}",
            r["seconds"].as_f64().unwrap_or(f64::NAN),
            passes as f64 / windows as f64,
            rss / f32_mib,
            rec["report"]["state_on_disk"].as_bool().map_or("-", |d| if d { "yes" } else { "no" }),
        );
    }
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}

/// Device memory this process holds now (the caching allocator keeps what it reached),
/// from nvidia-smi; None off CUDA or without it.
fn device_mib() -> Option<f64> {
    let out = Command::new("nvidia-smi")
        .args([
            "--query-compute-apps=pid,used_memory",
            "--format=csv,noheader,nounits",
        ])
        .output()
        .ok()?;
    let me = std::process::id().to_string();
    String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
        let (pid, mib) = l.split_once(',')?;
        (pid.trim() == me).then(|| mib.trim().parse().ok())?
    })
}

/// A pruned model of a published shape: weights from [`hashed_model`] (seed 0) on the
/// device, CoMe to `target` layers on `seqs` x `seqlen` seeded random ids.
pub struct SyntheticPrune {
    pub model: come_repro::model::Model,
    pub report: come_repro::prune::PruneReport,
    pub build_s: f64,
    pub prune_s: f64,
    /// Peak resident host memory while pruning, from after the build (None where the
    /// kernel does not let the high-water mark be reset).
    pub prune_peak_rss_mib: Option<f64>,
    /// The process's peak before pruning: the build's (hashed weights made in f32 first).
    pub build_peak_rss_mib: f64,
}

/// Build and prune (shared by `bench prune --synthetic` and the GPU check).
pub fn synthetic_prune(
    config: &come_repro::model::ModelConfig,
    opts: come_repro::model::load::LoadOptions,
    seqs: i64,
    seqlen: i64,
    target: usize,
) -> Result<SyntheticPrune> {
    let t0 = Instant::now();
    let mut model = hashed_model(config, 0, opts.device, opts.dtype);
    let build_s = t0.elapsed().as_secs_f64();
    let mut rng = come_repro::rng::SplitMix64::new(1);
    let seqs: Vec<Vec<u32>> = (0..seqs)
        .map(|_| {
            (0..seqlen)
                .map(|_| rng.below(config.vocab_size as u64) as u32)
                .collect()
        })
        .collect();
    let calib = come_repro::calib::CalibSet::from_sequences(seqs, "uniform random token ids");
    let cfg = PruneConfig {
        method: Method::Come,
        target_layers: Some(target),
        norm: NormMode::Mean,
        gqa_mapping: GqaMapping::Hf,
        ..Default::default()
    };
    // The build's transient copies are not the pruning's memory.
    let build_peak_rss_mib = come_repro::memory::peak_rss_mib();
    let reset = come_repro::memory::reset_peak_rss();
    let t1 = Instant::now();
    let report = prune(&mut model, calib, &cfg, &mut come_repro::progress::ignore)?;
    let prune_s = t1.elapsed().as_secs_f64();
    Ok(SyntheticPrune {
        model,
        report,
        build_s,
        prune_s,
        prune_peak_rss_mib: reset.then(come_repro::memory::peak_rss_mib),
        build_peak_rss_mib,
    })
}

fn synthetic(shape: Shape, a: &PruneBenchArgs) -> Result<()> {
    let opts = a.rt.load_options()?;
    let config = shape.config(a.layers)?;
    let n = config.num_hidden_layers as usize;
    let target = a
        .target_layers
        .unwrap_or(((n * 22) as f64 / 32.0).round() as usize);
    let params = config.total_params();
    let tokens = a.calib_seqs * a.calib_seqlen;
    println!(
        "synthetic {shape:?}: {n} layers ({:.2} B params, {:?} on {:?}), CoMe {n} -> {target}, {} x {} random calibration tokens",
        params as f64 / 1e9, opts.dtype, opts.device, a.calib_seqs, a.calib_seqlen
    );
    let SyntheticPrune {
        report: rep,
        build_s,
        prune_s,
        prune_peak_rss_mib: prune_peak,
        build_peak_rss_mib: build_peak,
        ..
    } = synthetic_prune(&config, opts, a.calib_seqs, a.calib_seqlen, target)?;
    let rounds: f64 = rep.steps.iter().map(|s| s.seconds).sum();
    let state_bytes =
        config.hidden_size as f64 * opts.dtype.elt_size_in_bytes() as f64 * (n + 1) as f64;
    println!("  model build       {build_s:>9.1} s");
    println!(
        "  first pass        {:>9.1} s ({n} layers)",
        prune_s - rounds
    );
    for s in &rep.steps {
        println!(
            "  round {:<2}          {:>9.1} s  {}",
            s.round + 1,
            s.seconds,
            s.action
        );
    }
    println!(
        "  total prune       {prune_s:>9.1} s, {} layer passes",
        rep.layer_passes
    );
    let per_pass = prune_s / rep.layer_passes.max(1) as f64;
    println!(
        "  per layer pass    {:>9.3} s per window of {} ({:.1} µs per token)",
        per_pass,
        a.calib_seqlen,
        per_pass / a.calib_seqlen as f64 * 1e6
    );
    println!(
        "  calibration state {:>9.0} bytes per token (every boundary), {:.2} GiB for these {tokens} tokens; state on disk: {}",
        state_bytes,
        state_bytes * tokens as f64 / (1u64 << 30) as f64,
        rep.state_on_disk
    );
    println!(
        "  peak host RSS     {:>9.0} MiB while pruning ({:.0} MiB while building the weights); model {:.0} MiB",
        prune_peak.unwrap_or(f64::NAN),
        build_peak,
        params as f64 * opts.dtype.elt_size_in_bytes() as f64 / (1 << 20) as f64
    );
    if let Some(m) = device_mib() {
        println!("  device memory     {m:>9.0} MiB held at the end (nvidia-smi)");
    }
    Ok(())
}
