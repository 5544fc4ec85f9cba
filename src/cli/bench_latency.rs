//! `come-repro bench latency`: the speed-up a pruned model buys, as the paper reports it
//! (what is timed: [`come_repro::eval::latency`]). The first model is the reference of
//! the speed-up column.

use super::common::{load, RuntimeArgs};
use anyhow::Result;
use clap::Args;
use come_repro::eval::latency::{measure, LatencySpec};
use serde_json::json;
use std::path::PathBuf;

#[derive(Args)]
pub struct LatencyArgs {
    /// Checkpoints to time, the dense one first (repeat the flag).
    #[arg(long, required = true)]
    pub model: Vec<PathBuf>,
    #[arg(long, default_value_t = 512, value_parser = super::common::at_least_one)]
    pub prompt_len: usize,
    #[arg(long, default_value_t = 64, value_parser = super::common::at_least_one)]
    pub new_tokens: usize,
    #[arg(long, default_value_t = 5, value_parser = super::common::at_least_one)]
    pub repeats: usize,
    /// Prompts decoded together (generation throughput; SLEB measures at 64).
    #[arg(long, default_value_t = 1, value_parser = super::common::at_least_one)]
    pub batch: usize,
    /// Also write the table as JSON here.
    #[arg(long)]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    pub rt: RuntimeArgs,
}

pub fn run(a: LatencyArgs) -> Result<()> {
    let spec = LatencySpec {
        prompt_len: a.prompt_len,
        new_tokens: a.new_tokens,
        repeats: a.repeats,
        batch: a.batch,
    };
    let mut rows = vec![];
    for dir in &a.model {
        let (m, _) = load(dir, &a.rt)?;
        let t = measure(&m, spec)?;
        let params = m.current_config().total_params();
        rows.push((dir.clone(), m.n_layers(), params, t));
    }
    let (p0, d0) = (rows[0].3.prefill_s, rows[0].3.decode_s);
    println!(
        "prompt {} tokens, {} decoded, batch {}, median of {}, {} thread(s), {}",
        a.prompt_len,
        a.new_tokens,
        a.batch,
        a.repeats,
        tch::get_num_threads(),
        a.rt.dtype
    );
    println!(
        "| model | layers | params (M) | prefill tok/s | decode tok/s | prefill speed-up | decode speed-up |"
    );
    println!("|---|--:|--:|--:|--:|--:|--:|");
    let mut out = vec![];
    for (dir, layers, params, t) in &rows {
        let (pre, dec) = (t.prefill_tokens_per_s(), t.decode_tokens_per_s());
        println!(
            "| {} | {layers} | {:.1} | {pre:.0} | {dec:.1} | {:.2}x | {:.2}x |",
            dir.display(),
            *params as f64 / 1e6,
            p0 / t.prefill_s,
            d0 / t.decode_s
        );
        out.push(json!({
            "model": dir, "layers": layers, "params": params,
            "prefill_tokens_per_s": pre, "decode_tokens_per_s": dec,
            "prefill_speedup": p0 / t.prefill_s, "decode_speedup": d0 / t.decode_s,
        }));
    }
    if let Some(path) = &a.output {
        let v = json!({
            "prompt_len": a.prompt_len, "new_tokens": a.new_tokens, "repeats": a.repeats,
            "threads": tch::get_num_threads(), "dtype": a.rt.dtype, "device": a.rt.device,
            "rows": out,
        });
        come_repro::publish::write_json(path, &v)?;
    }
    Ok(())
}
