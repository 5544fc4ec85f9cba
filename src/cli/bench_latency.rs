//! `come-repro bench latency`: the speed-up a pruned model buys, as the paper reports it.
//! Prefill: tokens/s of one forward over a fixed-length prompt into an empty KV cache
//! (batch 1). Decode: tokens/s of greedy single-token steps on that cache (batch 1), the
//! LM head included. Warm (one untimed round first), median of `--repeats`; every model
//! sees the same seeded prompt. The first model is the reference of the speed-up column.

use super::common::{load, RuntimeArgs};
use anyhow::{bail, Result};
use clap::Args;
use come_repro::model::forward::KvCache;
use come_repro::model::Model;
use serde_json::json;
use std::path::PathBuf;
use std::time::Instant;
use tch::Tensor;

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
    /// Also write the table as JSON here.
    #[arg(long)]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    pub rt: RuntimeArgs,
}

/// Median prefill and decode seconds of one model.
struct Timing {
    prefill_s: f64,
    decode_s: f64,
}

fn sync(m: &Model) {
    if let tch::Device::Cuda(i) = m.device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// One prefill of `prompt`, then `new` greedy steps; (prefill s, decode s).
fn once(m: &Model, prompt: &Tensor, new: usize) -> Result<(f64, f64)> {
    let _g = tch::no_grad_guard();
    let mut cache = KvCache::new(m.n_layers());
    sync(m);
    let t0 = Instant::now();
    let h = m.forward_cached(prompt, None, &mut cache)?;
    let mut next = m.lm_head(&h.select(1, -1)).argmax(-1, false).unsqueeze(0);
    sync(m);
    let prefill = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    for _ in 0..new {
        let h = m.forward_cached(&next, None, &mut cache)?;
        next = m.lm_head(&h.select(1, -1)).argmax(-1, false).unsqueeze(0);
    }
    // Reading the last id waits for the device.
    let _ = next.int64_value(&[0, 0]);
    Ok((prefill, t1.elapsed().as_secs_f64()))
}

fn time(m: &Model, a: &LatencyArgs) -> Result<Timing> {
    let max = m.config.max_position_embeddings as usize;
    if a.prompt_len + a.new_tokens > max {
        bail!(
            "--prompt-len {} + --new-tokens {} exceed max_position_embeddings ({max})",
            a.prompt_len,
            a.new_tokens
        );
    }
    // The same prompt for every model: seeded ids, none of them special.
    let mut rng = come_repro::rng::SplitMix64::new(0);
    let vocab = m.config.vocab_size as u64;
    let ids: Vec<i64> = (0..a.prompt_len)
        .map(|_| 3 + rng.below(vocab.saturating_sub(3).max(1)) as i64)
        .collect();
    let prompt = Tensor::from_slice(&ids).unsqueeze(0).to_device(m.device);
    once(m, &prompt, a.new_tokens)?;
    let (mut p, mut d) = (vec![], vec![]);
    for _ in 0..a.repeats {
        let (x, y) = once(m, &prompt, a.new_tokens)?;
        p.push(x);
        d.push(y);
    }
    Ok(Timing {
        prefill_s: super::bench::median(&mut p),
        decode_s: super::bench::median(&mut d),
    })
}

pub fn run(a: LatencyArgs) -> Result<()> {
    let mut rows = vec![];
    for dir in &a.model {
        let (m, _) = load(dir, &a.rt)?;
        let t = time(&m, &a)?;
        let params = m.current_config().total_params();
        rows.push((dir.clone(), m.n_layers(), params, t));
    }
    let (p0, d0) = (rows[0].3.prefill_s, rows[0].3.decode_s);
    println!(
        "prompt {} tokens, {} decoded, batch 1, median of {}, {} thread(s), {}",
        a.prompt_len,
        a.new_tokens,
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
        let pre = a.prompt_len as f64 / t.prefill_s;
        let dec = a.new_tokens as f64 / t.decode_s;
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
        come_repro::model::save::write_json(path, &v)?;
    }
    Ok(())
}
