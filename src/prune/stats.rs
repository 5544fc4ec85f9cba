//! Per-layer channel statistics over the calibration tokens, accumulated by a forward tap;
//! every channel-sensitivity variant is computed from them.

use crate::model::forward::Tap;
use crate::model::Model;
use tch::{Kind, Tensor};

/// Sums over calibration tokens of per-channel activation magnitudes (f64 on the model's
/// device), from which every sensitivity variant is computed.
#[derive(Debug)]
pub struct LayerStats {
    /// MLP activation before down_proj: sum |a| and sum a^2, `[intermediate]`.
    pub mlp_abs: Tensor,
    pub mlp_sq: Tensor,
    /// Attention output before o_proj: `[heads * head_dim]`.
    pub attn_abs: Tensor,
    pub attn_sq: Tensor,
    /// Queries and keys (pre-RoPE): `[heads * head_dim]`, `[kv_heads * head_dim]`.
    pub q_abs: Tensor,
    pub k_abs: Tensor,
    pub tokens: i64,
}

impl LayerStats {
    pub fn zeros(m: &Model) -> Self {
        let c = &m.config;
        let z = |n: i64| Tensor::zeros([n], (Kind::Double, m.device));
        let qd = c.num_attention_heads * c.head_dim;
        LayerStats {
            mlp_abs: z(c.intermediate_size),
            mlp_sq: z(c.intermediate_size),
            attn_abs: z(qd),
            attn_sq: z(qd),
            q_abs: z(qd),
            k_abs: z(c.num_key_value_heads * c.head_dim),
            tokens: 0,
        }
    }
}

/// Which sums a plan reads; the others are not accumulated (each is a pass over an
/// activation tensor per layer and window).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatKinds {
    /// Sums of |a| (MLP and attention outputs).
    pub abs: bool,
    /// Sums of a^2.
    pub sq: bool,
    /// Sums of |q| and |k|.
    pub qk: bool,
}

impl StatKinds {
    pub fn any(self) -> bool {
        self.abs || self.sq || self.qk
    }
}

/// Accumulates [`LayerStats`] for layers observed during a forward.
pub struct StatsTap<'a> {
    pub stats: &'a mut [LayerStats],
    /// Model layer index of `stats[0]`.
    pub offset: usize,
    pub kinds: StatKinds,
}

fn flat_sum(x: &Tensor, f: impl Fn(&Tensor) -> Tensor) -> Tensor {
    let last = *x.size().last().unwrap_or(&1);
    f(&x.to_kind(Kind::Float).reshape([-1, last])).sum_dim_intlist(0, false, Kind::Double)
}

impl Tap for StatsTap<'_> {
    fn attn_pre_o(&mut self, layer: usize, x: &Tensor, _: Option<&Tensor>) {
        let s = &mut self.stats[layer - self.offset];
        if self.kinds.abs {
            s.attn_abs += flat_sum(x, |t| t.abs());
        }
        if self.kinds.sq {
            s.attn_sq += flat_sum(x, |t| t.square());
        }
    }
    fn qk(&mut self, layer: usize, q: &Tensor, k: &Tensor, _: Option<&Tensor>) {
        if !self.kinds.qk {
            return;
        }
        let s = &mut self.stats[layer - self.offset];
        let (b, t) = (q.size()[0], q.size()[1]);
        s.q_abs += flat_sum(&q.reshape([b, t, -1]), |x| x.abs());
        s.k_abs += flat_sum(&k.reshape([b, t, -1]), |x| x.abs());
    }
    fn mlp_pre_down(&mut self, layer: usize, x: &Tensor, _: Option<&Tensor>) {
        let s = &mut self.stats[layer - self.offset];
        if self.kinds.abs {
            s.mlp_abs += flat_sum(x, |t| t.abs());
        }
        if self.kinds.sq {
            s.mlp_sq += flat_sum(x, |t| t.square());
        }
        s.tokens += x.size()[0] * x.size()[1];
    }
}
