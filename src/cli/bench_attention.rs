//! `come-repro bench attention`: scoring's attention on the CPU, libtorch's flash
//! attention on the padded layout against attention within packed rows
//! ([`come_repro::model::packed_attention`]), on row shapes of the seven tasks, at one
//! thread (what each scoring worker runs).

use anyhow::{bail, Result};
use clap::Args;
use come_repro::eval::latency::median;
use come_repro::model::packed_attention::{padded_reference, within_rows, Rows};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

#[derive(Args)]
pub struct AttentionArgs {
    /// Query heads, key/value heads and head size (default: SmolLM2-135M's).
    #[arg(long, default_value_t = 9)]
    pub heads: i64,
    #[arg(long, default_value_t = 3)]
    pub kv_heads: i64,
    #[arg(long, default_value_t = 64)]
    pub head_dim: i64,
    /// Timed calls per case and path; the median is shown.
    #[arg(long, default_value_t = 30, value_parser = super::common::at_least_one)]
    pub repeats: usize,
}

/// Row lengths of one forward, as scoring batches them (longest first, at most a tenth
/// padding): BoolQ-like passages, ARC-like questions, short rows.
const CASES: [(&str, &[usize]); 3] = [
    (
        "11 long rows",
        &[150, 140, 139, 138, 137, 130, 128, 127, 125, 120, 118],
    ),
    (
        "12 mid rows",
        &[70, 66, 64, 63, 62, 60, 60, 58, 58, 57, 56, 55],
    ),
    (
        "20 short rows",
        &[
            40, 40, 39, 39, 38, 38, 38, 37, 37, 37, 36, 36, 36, 36, 35, 35, 35, 35, 34, 34,
        ],
    ),
];

pub fn run(a: AttentionArgs) -> Result<()> {
    if a.kv_heads < 1 || a.heads % a.kv_heads != 0 || a.head_dim < 1 {
        bail!("--heads must be a multiple of --kv-heads, and both and --head-dim positive");
    }
    tch::set_num_threads(1);
    let _g = tch::no_grad_guard();
    println!(
        "attention within rows vs libtorch's padded flash attention, {} heads ({} kv) x {}, \
         f32, 1 thread, median of {}",
        a.heads, a.kv_heads, a.head_dim, a.repeats
    );
    println!(
        "| rows | tokens | mask | libtorch padded (ms) | within rows (ms) | speed-up | max diff |"
    );
    println!("|---|--:|---|--:|--:|--:|--:|");
    let opts = (Kind::Float, Device::Cpu);
    tch::manual_seed(0);
    for (name, lens) in CASES {
        let t: i64 = lens.iter().sum::<usize>() as i64;
        let q = Tensor::randn([1, t, a.heads, a.head_dim], opts);
        let k = Tensor::randn([1, t, a.kv_heads, a.head_dim], opts);
        let v = Tensor::randn([1, t, a.kv_heads, a.head_dim], opts);
        let rows = Rows {
            keys: lens,
            queries: lens,
        };
        let tree = causal_as_mask(lens);
        for (label, mask) in [("causal", None), ("prefix tree", Some(&tree))] {
            let Some(ours) = within_rows(&q, &k, &v, rows, mask) else {
                bail!("attention within rows does not apply here (no MKL in this libtorch?)");
            };
            let diff = f64::try_from(
                (&ours - padded_reference(&q, &k, &v, rows, mask))
                    .abs()
                    .max(),
            )?;
            let lib = time(a.repeats, || drop(padded_reference(&q, &k, &v, rows, mask)));
            let packed = time(a.repeats, || drop(within_rows(&q, &k, &v, rows, mask)));
            println!(
                "| {name} | {t} | {label} | {:.2} | {:.2} | {:.2}x | {diff:.1e} |",
                lib * 1e3,
                packed * 1e3,
                lib / packed
            );
        }
    }
    Ok(())
}

/// Causal attention as scoring's rows pass it, an explicit additive mask on the padded
/// layout (a prefix tree that is one chain per row).
fn causal_as_mask(lens: &[usize]) -> Tensor {
    let w = lens.iter().copied().max().unwrap_or(1);
    let mut m = vec![f32::NEG_INFINITY; lens.len() * w * w];
    for r in 0..lens.len() {
        for i in 0..w {
            m[(r * w + i) * w..][..=i].fill(0.0);
        }
    }
    Tensor::from_slice(&m).view([lens.len() as i64, 1, w as i64, w as i64])
}

/// Median seconds of `repeats` calls, after two untimed ones.
fn time(repeats: usize, mut f: impl FnMut()) -> f64 {
    f();
    f();
    let mut s: Vec<f64> = (0..repeats)
        .map(|_| {
            let t0 = Instant::now();
            f();
            t0.elapsed().as_secs_f64()
        })
        .collect();
    median(&mut s)
}
