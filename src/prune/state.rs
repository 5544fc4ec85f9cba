//! Calibration state of a model being pruned: the hidden state at every layer boundary for
//! every calibration sequence, and per-layer channel statistics. After a change at layer
//! `i`, only boundaries after `i` and statistics of layers `>= i` are recomputed.

use crate::error::Result;
use crate::model::forward::{layer_forward, Context, Tap};
use crate::model::{Layer, Model};
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
    fn zeros(m: &Model) -> Self {
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

/// Accumulates [`LayerStats`] for layers observed during a forward.
struct StatsTap<'a> {
    stats: &'a mut [LayerStats],
    /// Model layer index of `stats[0]`.
    offset: usize,
}

fn flat_sum(x: &Tensor, f: impl Fn(&Tensor) -> Tensor) -> Tensor {
    let last = *x.size().last().unwrap_or(&1);
    f(&x.to_kind(Kind::Float).reshape([-1, last])).sum_dim_intlist(0, false, Kind::Double)
}

impl Tap for StatsTap<'_> {
    fn attn_pre_o(&mut self, layer: usize, x: &Tensor, _: Option<&Tensor>) {
        let s = &mut self.stats[layer - self.offset];
        s.attn_abs += flat_sum(x, |t| t.abs());
        s.attn_sq += flat_sum(x, |t| t.square());
    }
    fn qk(&mut self, layer: usize, q: &Tensor, k: &Tensor, _: Option<&Tensor>) {
        let s = &mut self.stats[layer - self.offset];
        let (b, t) = (q.size()[0], q.size()[1]);
        s.q_abs += flat_sum(&q.reshape([b, t, -1]), |x| x.abs());
        s.k_abs += flat_sum(&k.reshape([b, t, -1]), |x| x.abs());
    }
    fn mlp_pre_down(&mut self, layer: usize, x: &Tensor, _: Option<&Tensor>) {
        let s = &mut self.stats[layer - self.offset];
        s.mlp_abs += flat_sum(x, |t| t.abs());
        s.mlp_sq += flat_sum(x, |t| t.square());
        s.tokens += x.size()[0] * x.size()[1];
    }
}

pub struct CalibState {
    /// Token ids `[N, T]`.
    pub ids: Tensor,
    /// `boundaries[b]`: hidden state entering layer b, `[N, T, hidden]` (b = n_layers:
    /// the output of the last layer).
    pub boundaries: Vec<Tensor>,
    pub stats: Vec<LayerStats>,
    /// Sequences per forward chunk (bounds activation memory).
    pub chunk: i64,
    ctx: Context,
    /// Layers run since creation (for the incremental-vs-full benchmark).
    pub layer_passes: usize,
}

impl CalibState {
    pub fn new(model: &Model, sequences: &[Vec<u32>], chunk: usize) -> Result<Self> {
        let _g = tch::no_grad_guard();
        let n = sequences.len() as i64;
        let t = sequences.first().map_or(0, |s| s.len()) as i64;
        let flat: Vec<i64> = sequences.iter().flatten().map(|&x| x as i64).collect();
        let ids = Tensor::from_slice(&flat)
            .view([n, t])
            .to_device(model.device);
        let chunk = chunk.max(1) as i64;
        let ctx = model.context(&ids.narrow(0, 0, chunk.min(n)), None, None, 0)?;
        let emb = model.embed_tokens(&ids)?;
        let mut s = CalibState {
            ids,
            boundaries: vec![emb],
            stats: vec![],
            chunk,
            ctx,
            layer_passes: 0,
        };
        s.recompute_from(model, 0);
        Ok(s)
    }

    pub fn n_layers(&self) -> usize {
        self.stats.len()
    }

    /// Recompute boundaries after `start` and statistics of layers `start..` from the
    /// stored boundary `start` (which must still be valid).
    pub fn recompute_from(&mut self, model: &Model, start: usize) {
        let _g = tch::no_grad_guard();
        let nl = model.n_layers();
        self.boundaries.truncate(start + 1);
        self.stats.truncate(start);
        self.stats
            .extend((start..nl).map(|_| LayerStats::zeros(model)));
        let n = self.ids.size()[0];
        let mut outs: Vec<Vec<Tensor>> = (start..nl).map(|_| vec![]).collect();
        let mut c0 = 0;
        while c0 < n {
            let cn = self.chunk.min(n - c0);
            let mut h = self.boundaries[start].narrow(0, c0, cn);
            let ctx = self.ctx_for(cn);
            let mut tap = StatsTap {
                stats: &mut self.stats[start..],
                offset: start,
            };
            for l in start..nl {
                h = layer_forward(
                    &model.config,
                    &model.layers[l],
                    l,
                    &h,
                    ctx.as_ref().unwrap_or(&self.ctx),
                    &mut tap,
                    None,
                );
                outs[l - start].push(h.shallow_clone());
            }
            c0 += cn;
        }
        self.layer_passes += (nl - start) * n as usize;
        for o in outs {
            self.boundaries.push(Tensor::cat(&o, 0));
        }
    }

    /// The shared context fits chunks of `self.chunk` rows; a shorter last chunk gets its
    /// own (its rotary tables are broadcast per row).
    fn ctx_for(&self, rows: i64) -> Option<Context> {
        (rows != self.ctx.cos.size()[0]).then(|| Context {
            cos: self.ctx.cos.narrow(0, 0, rows),
            sin: self.ctx.sin.narrow(0, 0, rows),
            mask: crate::model::forward::AttnMask::Causal,
            valid: None,
        })
    }

    /// Replace layers `at..at + k` by one layer: the model has already been changed; drop
    /// the stale boundaries and recompute from `at` (or from 0 if `incremental` is off).
    pub fn after_merge(&mut self, model: &Model, at: usize, removed: usize, incremental: bool) {
        for _ in 0..removed {
            if at + 1 < self.boundaries.len() {
                let _ = self.boundaries.remove(at + 1);
            }
        }
        self.recompute_from(model, if incremental { at } else { 0 });
    }

    /// Run the calibration set from boundary `start` through `replacement` and then the
    /// model's layers `resume..`; `f(first_row, last_hidden)` sees each chunk's output.
    pub fn run_with(
        &self,
        model: &Model,
        start: usize,
        replacement: &[&Layer],
        resume: usize,
        mut f: impl FnMut(i64, &Tensor),
    ) {
        let _g = tch::no_grad_guard();
        let n = self.ids.size()[0];
        let mut no = crate::model::forward::NoTap;
        let mut c0 = 0;
        while c0 < n {
            let cn = self.chunk.min(n - c0);
            let own = self.ctx_for(cn);
            let ctx = own.as_ref().unwrap_or(&self.ctx);
            let mut h = self.boundaries[start].narrow(0, c0, cn);
            for (k, layer) in replacement.iter().enumerate() {
                h = layer_forward(&model.config, layer, start + k, &h, ctx, &mut no, None);
            }
            for l in resume..model.n_layers() {
                h = layer_forward(&model.config, &model.layers[l], l, &h, ctx, &mut no, None);
            }
            f(c0, &h);
            c0 += cn;
        }
    }

    /// Mean next-token NLL of the calibration set when the layers from boundary `start` on
    /// are `replacement` followed by the model's layers `resume..`.
    pub fn nll_with(
        &self,
        model: &Model,
        start: usize,
        replacement: &[&Layer],
        resume: usize,
    ) -> f64 {
        let (mut total, mut count) = (0f64, 0i64);
        self.run_with(model, start, replacement, resume, |c0, h| {
            let (s, c) = lm_nll(model, h, &self.ids.narrow(0, c0, h.size()[0]));
            total += s;
            count += c;
        });
        total / count.max(1) as f64
    }

    /// Mean NLL of the model as it is (from the stored last boundary).
    pub fn nll(&self, model: &Model) -> f64 {
        let last = self.boundaries.len() - 1;
        let (s, c) = lm_nll(model, &self.boundaries[last], &self.ids);
        s / c.max(1) as f64
    }
}

/// Sum of next-token NLL over `[B, T]` given the last layer's output, chunked over
/// positions so the logits buffer stays small.
pub fn lm_nll(model: &Model, h: &Tensor, ids: &Tensor) -> (f64, i64) {
    let t = h.size()[1];
    let hn = model.final_norm(&h.narrow(1, 0, t - 1));
    let tgt = ids.narrow(1, 1, t - 1);
    let mut total = 0f64;
    let step = 256;
    let mut s = 0;
    while s < t - 1 {
        let k = step.min(t - 1 - s);
        let logp = model
            .lm_head(&hn.narrow(1, s, k))
            .to_kind(Kind::Float)
            .log_softmax(-1, Kind::Float);
        total -= logp
            .gather(-1, &tgt.narrow(1, s, k).unsqueeze(-1), false)
            .sum(Kind::Double)
            .double_value(&[]);
        s += k;
    }
    (total, h.size()[0] * (t - 1))
}
