//! Channel sensitivity (per MLP neuron and per KV head) from the calibration statistics.
//! Layer and pair scores (block influence, angular distances) live with the calibration
//! state that accumulates them.

use super::stats::LayerStats;
use crate::error::{Error, Result};
use crate::model::{Layer, ModelConfig};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// How a channel's importance is measured (the paper's is `act-l1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Sensitivity {
    /// mean |activation| x L1 norm of the output projection's column (paper/reference).
    #[default]
    ActL1,
    /// mean |activation| only.
    Activation,
    /// L1 norm of the output projection's column only.
    Weight,
    /// RMS activation x L2 norm of the column.
    L2,
    /// Attention heads from the input side: mean |q|, |k| x L1 norms of q/k_proj rows (ours;
    /// MLP neurons keep the default score).
    InputQk,
    /// Uniform random scores (seeded): the floor any score must beat.
    Random,
}

impl Sensitivity {
    /// The name configs, stores and the command line use.
    pub fn name(self) -> String {
        clap::ValueEnum::to_possible_value(&self)
            .map_or_else(|| format!("{self:?}"), |v| v.get_name().to_string())
    }

    /// The channel statistics this score reads.
    pub fn stat_kinds(self) -> super::stats::StatKinds {
        use super::stats::StatKinds;
        match self {
            Sensitivity::ActL1 | Sensitivity::Activation => StatKinds {
                abs: true,
                ..Default::default()
            },
            Sensitivity::L2 => StatKinds {
                sq: true,
                ..Default::default()
            },
            // MLP neurons keep the default (|a|) score.
            Sensitivity::InputQk => StatKinds {
                abs: true,
                qk: true,
                ..Default::default()
            },
            Sensitivity::Weight | Sensitivity::Random => StatKinds::default(),
        }
    }
}

/// Per-channel scores of one layer: `mlp` `[intermediate]`, `kv` `[kv_heads]` (f64, CPU).
#[derive(Debug)]
pub struct ChannelScores {
    pub mlp: Vec<f64>,
    pub kv: Vec<f64>,
}

fn col_norm(w: &Tensor, p: f64) -> Tensor {
    // Column norms of a [out, in] weight: one per input channel.
    w.to_kind(Kind::Double).norm_scalaropt_dim(p, [0i64], false)
}

fn row_norm(w: &Tensor, p: f64) -> Tensor {
    w.to_kind(Kind::Double).norm_scalaropt_dim(p, [1i64], false)
}

fn to_vec(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(
        t.to_kind(Kind::Double)
            .to_device(tch::Device::Cpu)
            .flatten(0, -1),
    )
    .unwrap_or_default()
}

/// Scores of one layer's channels. `stats` is `None` when the plan collected no
/// statistics, which only the weight-only variants (`weight`, `random`) may rely on:
/// [`Sensitivity::stat_kinds`] decides what is collected, so both read one table.
pub fn channel_scores(
    c: &ModelConfig,
    layer: &Layer,
    stats: Option<&LayerStats>,
    how: Sensitivity,
    seed: u64,
) -> Result<ChannelScores> {
    let needs = || {
        stats.ok_or_else(|| {
            Error::Invalid(format!(
                "channel sensitivity `{}` reads activation statistics, but none were collected for this layer",
                how.name()
            ))
        })
    };
    let l1 = |w: &Tensor| col_norm(w, 1.0);
    let (mlp, attn) = match how {
        Sensitivity::Weight => (l1(&layer.down_proj.weight), l1(&layer.o_proj.weight)),
        Sensitivity::Random => return Ok(random_scores(c, seed)),
        Sensitivity::InputQk => return Ok(input_qk_scores(c, layer, needs()?)),
        Sensitivity::ActL1 => {
            let (st, n) = with_tokens(needs()?);
            (
                (&st.mlp_abs / n) * l1(&layer.down_proj.weight),
                (&st.attn_abs / n) * l1(&layer.o_proj.weight),
            )
        }
        Sensitivity::Activation => {
            let (st, n) = with_tokens(needs()?);
            (&st.mlp_abs / n, &st.attn_abs / n)
        }
        Sensitivity::L2 => {
            let (st, n) = with_tokens(needs()?);
            (
                (&st.mlp_sq / n).sqrt() * col_norm(&layer.down_proj.weight, 2.0),
                (&st.attn_sq / n).sqrt() * col_norm(&layer.o_proj.weight, 2.0),
            )
        }
    };
    let (nh, nkv, hd) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
    // Average over head_dim, then over the query heads of each KV group.
    let per_q = attn.view([nh, hd]).mean_dim(1, false, Kind::Double);
    let kv = per_q.view([nkv, nh / nkv]).mean_dim(1, false, Kind::Double);
    Ok(ChannelScores {
        mlp: to_vec(&mlp),
        kv: to_vec(&kv),
    })
}

fn with_tokens(st: &LayerStats) -> (&LayerStats, f64) {
    (st, st.tokens.max(1) as f64)
}

/// Attention heads scored from the input side; MLP neurons keep the default (`act-l1`).
fn input_qk_scores(c: &ModelConfig, layer: &Layer, st: &LayerStats) -> ChannelScores {
    let (nh, nkv, hd) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
    let (st, n) = with_tokens(st);
    let mlp = (&st.mlp_abs / n) * col_norm(&layer.down_proj.weight, 1.0);
    let q = (&st.q_abs / n) * row_norm(&layer.q_proj.weight, 1.0);
    let k = (&st.k_abs / n) * row_norm(&layer.k_proj.weight, 1.0);
    // Per KV head: its keys plus the queries of its group (HF layout).
    let qh = q.view([nkv, -1]).sum_dim_intlist(1, false, Kind::Double);
    let kh = k.view([nkv, -1]).sum_dim_intlist(1, false, Kind::Double);
    let kv = (qh + kh) / ((nh / nkv + 1) * hd) as f64;
    ChannelScores {
        mlp: to_vec(&mlp),
        kv: to_vec(&kv),
    }
}

/// Uniform scores in [0, 1) from the seed: the floor any informed score must beat.
fn random_scores(c: &ModelConfig, seed: u64) -> ChannelScores {
    let mut r = crate::rng::SplitMix64::new(seed);
    let mut u = |k: i64| (0..k).map(|_| r.unit()).collect::<Vec<f64>>();
    ChannelScores {
        mlp: u(c.intermediate_size),
        kv: u(c.num_key_value_heads),
    }
}
