//! `come-repro bench latency`: the speed-up a pruned model buys, as the paper reports it
//! (what is timed: [`come_repro::eval::latency`]). The first model is the reference of
//! the speed-up column. Sizes default to the protocol's own; a CPU run may scale them
//! down, and the printed and written context records what was used.

use super::common::{load, RuntimeArgs};
use anyhow::Result;
use clap::Args;
use come_repro::eval::latency::{measure, LatencySpec, Protocol};
use serde_json::json;
use std::path::PathBuf;

#[derive(Args)]
pub struct LatencyArgs {
    /// Checkpoints to time, the dense one first (repeat the flag).
    #[arg(long, required = true)]
    pub model: Vec<PathBuf>,
    /// `sleb`: SLEB's and CoMe's latency.py; `short`: batch-1 prefill then cached decode.
    #[arg(long, value_enum, default_value_t = Protocol::Sleb)]
    pub protocol: Protocol,
    /// Prompt tokens of the prefill phase (sleb 2048, short 512).
    #[arg(long, value_parser = super::common::at_least_one)]
    pub prefill_len: Option<usize>,
    /// Timed prefills (sleb 50, mean; short 5, median, for both phases).
    #[arg(long, value_parser = super::common::at_least_one)]
    pub prefill_iters: Option<usize>,
    /// Sequences generated together (sleb 64, short 1).
    #[arg(long, value_parser = super::common::at_least_one)]
    pub gen_batch: Option<usize>,
    /// Prompt tokens before generation (sleb 64; short: the prefill's prompt).
    #[arg(long, value_parser = super::common::at_least_one)]
    pub gen_prompt: Option<usize>,
    /// Tokens generated per sequence (sleb 128, short 64).
    #[arg(long, value_parser = super::common::at_least_one)]
    pub gen_new: Option<usize>,
    /// Timed generations (sleb 10, mean).
    #[arg(long, value_parser = super::common::at_least_one)]
    pub gen_iters: Option<usize>,
    /// Also write the table as JSON here.
    #[arg(long)]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    pub rt: RuntimeArgs,
}

impl LatencyArgs {
    /// The protocol's sizes with the flags given over them.
    fn spec(&self) -> LatencySpec {
        let d = self.protocol.spec();
        let prefill_len = self.prefill_len.unwrap_or(d.prefill_len);
        LatencySpec {
            protocol: self.protocol,
            prefill_len,
            prefill_iters: self.prefill_iters.unwrap_or(d.prefill_iters),
            gen_batch: self.gen_batch.unwrap_or(d.gen_batch),
            gen_prompt: match self.protocol {
                Protocol::Short => prefill_len,
                Protocol::Sleb => self.gen_prompt.unwrap_or(d.gen_prompt),
            },
            gen_new: self.gen_new.unwrap_or(d.gen_new),
            gen_iters: match self.protocol {
                Protocol::Short => self.prefill_iters.unwrap_or(d.gen_iters),
                Protocol::Sleb => self.gen_iters.unwrap_or(d.gen_iters),
            },
        }
    }
}

pub fn run(a: LatencyArgs) -> Result<()> {
    let spec = a.spec();
    let mut rows = vec![];
    for dir in &a.model {
        let (m, _) = load(dir, &a.rt)?;
        // Sizes asked for are timed as asked, or refused when they do not fit.
        let t = measure(&m, spec)?;
        let params = m.current_config().total_params();
        rows.push((dir.clone(), m.n_layers(), params, t));
    }
    let (p0, d0) = (rows[0].3.prefill_s, rows[0].3.decode_s);
    let scaled = if rows[0].3.spec.is_full() {
        "the protocol's own sizes"
    } else {
        "scaled down from the protocol's sizes"
    };
    println!(
        "{} ({scaled}), {} thread(s), {}",
        rows[0].3.spec.context(),
        tch::get_num_threads(),
        a.rt.dtype
    );
    println!(
        "| model | layers | params (M) | prefill s | generation s | prefill tok/s | generation tok/s | prefill speed-up | generation speed-up |"
    );
    println!("|---|--:|--:|--:|--:|--:|--:|--:|--:|");
    let mut out = vec![];
    for (dir, layers, params, t) in &rows {
        let (pre, dec) = (t.prefill_tokens_per_s(), t.decode_tokens_per_s());
        println!(
            "| {} | {layers} | {:.1} | {:.3} | {:.3} | {pre:.0} | {dec:.1} | {:.2}x | {:.2}x |",
            dir.display(),
            *params as f64 / 1e6,
            t.prefill_s,
            t.decode_s,
            p0 / t.prefill_s,
            d0 / t.decode_s
        );
        out.push(json!({
            "model": dir, "layers": layers, "params": params,
            "prefill_seconds": t.prefill_s, "generation_seconds": t.decode_s,
            "prefill_tokens_per_s": pre, "generation_tokens_per_s": dec,
            "prefill_speedup": p0 / t.prefill_s, "generation_speedup": d0 / t.decode_s,
            "context": t.spec.context(),
        }));
    }
    if let Some(path) = &a.output {
        let v = json!({
            "protocol": a.protocol, "full_sizes": rows[0].3.spec.is_full(),
            "context": rows[0].3.spec.context(),
            "threads": tch::get_num_threads(), "dtype": a.rt.dtype, "device": a.rt.device,
            "rows": out,
        });
        come_repro::publish::write_json(path, &v)?;
    }
    Ok(())
}
