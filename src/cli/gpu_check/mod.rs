//! `come-repro gpu-check`: every CUDA question in one run, from a self-contained bundle
//! (`scripts/bundle.sh`) on a GPU node without network or Rust. `prepare` writes the
//! bundle's inputs and CPU references here; `run` (what the bundle's `run.sh` calls) runs
//! the items in order, each independent: a failure (error or panic) is recorded with its
//! message and the next item runs. The summary JSON is rewritten after every item, so a
//! run cut short still leaves what it measured.

mod accuracy;
mod bundle;
mod scale;

use anyhow::{Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use come_repro::device_memory::{Nvml, PeakSampler};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Subcommand)]
pub enum GpuCheckCmd {
    /// Run the check from a bundle (what the bundle's run.sh calls).
    Run(RunArgs),
    /// Write a bundle's inputs and CPU references into DIR (scripts/bundle.sh calls this).
    Prepare(bundle::PrepareArgs),
}

/// The check's items, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Item {
    /// Device, driver, torch and memory.
    Device,
    /// Synthetic SmolLM2-shape model, f32 on the device vs the shipped CPU reference.
    SmolF32,
    /// The same in bf16: how far log-likelihoods and predictions move.
    SmolBf16,
    /// stories260K (real weights) on the device vs its CPU results, every metric.
    Stories,
    /// 7B shape in bf16: eval throughput on the seven tasks' requests, MFU, batch budget.
    #[value(name = "eval-7b")]
    Eval7b,
    /// CoMe 32 -> 22 on the 7B shape: seconds per stage and round, memory.
    #[value(name = "prune-7b")]
    Prune7b,
    /// Hierarchical distillation of one merged 7B-shape layer for a fixed number of steps.
    #[value(name = "distill-7b")]
    Distill7b,
    /// LoRA on the whole pruned 7B-shape student for a fixed number of steps.
    #[value(name = "lora-7b")]
    Lora7b,
    /// Prefill (1 x 2048) and generation (64 x 128 after 64) latency, dense vs pruned.
    #[value(name = "latency-7b")]
    Latency7b,
}

#[derive(Args)]
pub struct RunArgs {
    /// The bundle directory (tasks, references, models).
    #[arg(long)]
    pub bundle: PathBuf,
    /// Where the summary and logs go [default: $OUT, else BUNDLE/out].
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[arg(long, default_value = "cuda")]
    pub device: String,
    /// Small sizes throughout (a CPU proof that the bundle works, in a few minutes).
    #[arg(long)]
    pub quick: bool,
    /// Only these items (default: all, in order).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub only: Vec<Item>,
    /// The host's torch version as its Python reports it (run.sh passes it).
    #[arg(long)]
    pub torch_version: Option<String>,
    /// libtorch intra-op threads (default: all cores).
    #[arg(long, value_parser = super::common::at_least_one)]
    pub threads: Option<usize>,
}

pub fn run(cmd: GpuCheckCmd) -> Result<()> {
    match cmd {
        GpuCheckCmd::Run(a) => check(a),
        GpuCheckCmd::Prepare(a) => bundle::prepare(a),
    }
}

/// What every item reads: the bundle, the device, the sizes, and what earlier items left
/// for later ones (the pruned 7B-shape student).
pub struct Ctx {
    pub bundle: bundle::Bundle,
    pub device: tch::Device,
    pub quick: bool,
    pub nvml: Option<Arc<Nvml>>,
    pub torch_version: Option<String>,
    pub scratch: PathBuf,
    pub big: scale::BigModels,
}

impl Ctx {
    /// Device memory sampling around `f` (None off NVIDIA devices).
    pub fn peak_device<T>(&self, f: impl FnOnce() -> T) -> (T, Option<f64>) {
        let sampler = self
            .nvml
            .as_ref()
            .filter(|_| self.device.is_cuda())
            .map(|n| PeakSampler::start(n.clone(), Duration::from_millis(5)));
        let v = f();
        let peak = sampler.map(|s| s.finish() as f64 / (1u64 << 20) as f64);
        (v, peak)
    }

    pub fn sync(&self) {
        come_repro::runtime::synchronize(self.device);
    }
}

fn check(a: RunArgs) -> Result<()> {
    come_repro::runtime::set_threads(a.threads);
    let device = come_repro::runtime::parse_device(&a.device)?;
    let out = a
        .out
        .clone()
        .or_else(|| std::env::var_os("OUT").map(PathBuf::from))
        .unwrap_or_else(|| a.bundle.join("out"));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let bundle = bundle::Bundle::open(&a.bundle)?;
    let scratch = tempfile::tempdir().context("creating a scratch directory")?;
    let index = match device {
        tch::Device::Cuda(i) => i as u32,
        _ => 0,
    };
    let mut ctx = Ctx {
        bundle,
        device,
        quick: a.quick,
        nvml: Nvml::open(index).map(Arc::new),
        torch_version: a.torch_version.clone(),
        scratch: scratch.path().to_path_buf(),
        big: scale::BigModels::default(),
    };
    let items: Vec<Item> = if a.only.is_empty() {
        Item::value_variants().to_vec()
    } else {
        Item::value_variants()
            .iter()
            .copied()
            .filter(|i| a.only.contains(i))
            .collect()
    };
    let t0 = Instant::now();
    let mut summary = json!({
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "bundle": ctx.bundle.info,
        "device": a.device,
        "quick": a.quick,
        "items": {},
    });
    let path = out.join("summary.json");
    let failed = run_items(&items, &mut ctx, &mut summary, &path, t0)?;
    summary["goals_met"] = json!(goals_met(&summary));
    write_summary(&path, &summary)?;
    println!(
        "gpu-check: {} in {:.1} s, summary in {}",
        if failed.is_empty() {
            "every item ran".to_string()
        } else {
            format!("failed: {}", failed.join(", "))
        },
        t0.elapsed().as_secs_f64(),
        path.display()
    );
    if !failed.is_empty() {
        anyhow::bail!("{} item(s) failed", failed.len());
    }
    Ok(())
}

/// Run `items` in order, each caught on its own; the summary is rewritten after each.
/// Returns the names of those that failed.
fn run_items(
    items: &[Item],
    ctx: &mut Ctx,
    summary: &mut Value,
    path: &Path,
    t0: Instant,
) -> Result<Vec<String>> {
    let mut failed = vec![];
    for &item in items {
        let name = item_name(item);
        println!("== {name}");
        let t = Instant::now();
        let r = come_repro::panic_guard::catch(|| {
            run_item(item, ctx).map_err(|e| come_repro::Error::Invalid(format!("{e:#}")))
        });
        let seconds = t.elapsed().as_secs_f64();
        let entry = match r {
            Ok(v) => {
                println!("{}", serde_json::to_string_pretty(&v)?);
                json!({ "ok": true, "seconds": seconds, "result": v })
            }
            Err(e) => {
                println!("FAILED: {e}");
                failed.push(name.clone());
                json!({ "ok": false, "seconds": seconds, "error": e.to_string() })
            }
        };
        println!("-- {name}: {seconds:.1} s");
        summary["items"][&name] = entry;
        summary["seconds"] = json!(t0.elapsed().as_secs_f64());
        write_summary(path, summary)?;
    }
    Ok(failed)
}

fn item_name(i: Item) -> String {
    i.to_possible_value()
        .map_or_else(|| format!("{i:?}"), |v| v.get_name().to_string())
}

fn run_item(item: Item, ctx: &mut Ctx) -> Result<Value> {
    match item {
        Item::Device => device_info(ctx),
        Item::SmolF32 => accuracy::smol(ctx, tch::Kind::Float),
        Item::SmolBf16 => accuracy::smol(ctx, tch::Kind::BFloat16),
        Item::Stories => accuracy::stories(ctx),
        Item::Eval7b => scale::eval(ctx),
        Item::Prune7b => scale::prune(ctx),
        Item::Distill7b => scale::distill(ctx),
        Item::Lora7b => scale::lora(ctx),
        Item::Latency7b => scale::latency(ctx),
    }
}

fn device_info(ctx: &Ctx) -> Result<Value> {
    let mib = |b: Option<u64>| b.map(|b| b as f64 / (1u64 << 20) as f64);
    let nvml = ctx.nvml.as_deref();
    Ok(json!({
        "device": come_repro::runtime::device_name(ctx.device),
        "cuda_available": tch::Cuda::is_available(),
        "cuda_devices": tch::Cuda::device_count(),
        "cudnn_available": tch::Cuda::cudnn_is_available(),
        "gpu": nvml.and_then(Nvml::name),
        "driver": nvml.and_then(Nvml::driver_version),
        "memory_total_mib": mib(nvml.and_then(Nvml::total_bytes)),
        "memory_used_mib": mib(nvml.and_then(Nvml::used_bytes)),
        "torch_host": ctx.torch_version,
        "torch_built_for": ctx.bundle.info.torch,
        "threads": tch::get_num_threads(),
    }))
}

/// Every `goal_met` flag in the items, and whether all hold.
fn goals_met(summary: &Value) -> Value {
    let mut all = true;
    let mut goals = serde_json::Map::new();
    if let Some(items) = summary["items"].as_object() {
        for (name, entry) in items {
            if let Some(g) = entry["result"]["goals"].as_object() {
                for (k, v) in g {
                    let met = v["met"].as_bool().unwrap_or(false);
                    all &= met;
                    goals.insert(format!("{name}.{k}"), json!(met));
                }
            }
        }
    }
    json!({ "all": all, "each": goals })
}

fn write_summary(path: &Path, v: &Value) -> Result<()> {
    come_repro::publish::write_json(path, v).with_context(|| format!("writing {}", path.display()))
}

/// A goal as the summary records it: the measured value, the bound, whether it is met.
pub fn goal(value: f64, at_most: f64) -> Value {
    json!({ "value": value, "at_most": at_most, "met": value <= at_most })
}
