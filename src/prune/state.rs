//! Calibration state of a model being pruned. One forward over the calibration set gives
//! the last-token state at every boundary (for the reference's pair score), the channel
//! statistics the plan reads, and either per-layer block influence (one-shot methods) or
//! every boundary's hidden states as restart points in a [`BoundaryStore`] (iterative
//! methods), from which all-token scores are computed when asked. After a change at layer
//! `i`, only layers `>= i` are re-run, from the stored boundary `i`. Everything is
//! processed chunk by chunk, so nothing of size layers x tokens x hidden has to be
//! resident.

use super::stats::{LayerStats, StatKinds, StatsTap};
use super::store::{BoundaryStore, Shape};
use crate::error::Result;
use crate::model::forward::{layer_forward, Context, NoTap, Tap};
use crate::model::{Layer, Model};
use tch::{Kind, Tensor};

/// What a pruning method needs from the calibration set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// The token ids only (no forward: weight-only scores, or a method with its own pass).
    Ids,
    /// One forward for per-layer scores; nothing kept for re-scoring (one-shot methods).
    Scores,
    /// Scores, channel statistics and restart points for incremental re-scoring.
    Full,
}

pub struct CalibState {
    /// Token ids `[N, T]`.
    pub ids: Tensor,
    pub need: Need,
    /// Restart points: boundary `b` is the hidden state entering layer `b` (Full only).
    store: Option<BoundaryStore>,
    /// Channel statistics per layer (the sums `kinds` asks for).
    pub stats: Vec<LayerStats>,
    kinds: StatKinds,
    /// Per layer `l`, the sum over all tokens of cos(h_l, h_l+1) (one-shot scores only;
    /// with restart points, scores are computed from them when asked).
    cos1: Vec<f64>,
    /// Layers of the model the state describes.
    layers: usize,
    /// Last-token hidden state at every boundary, `[N, hidden]`.
    last: Vec<Tensor>,
    /// Sequences per forward chunk (bounds activation memory).
    pub chunk: i64,
    ctx: Context,
    /// Layers run since creation (for benchmarks).
    pub layer_passes: usize,
}

fn cosine_rows(a: &Tensor, b: &Tensor) -> Tensor {
    let a = a.to_kind(Kind::Float);
    let b = b.to_kind(Kind::Float);
    let dot = (&a * &b).sum_dim_intlist(-1, false, Kind::Double);
    let na = a.square().sum_dim_intlist(-1, false, Kind::Double).sqrt();
    let nb = b.square().sum_dim_intlist(-1, false, Kind::Double).sqrt();
    (dot / (na * nb).clamp_min(1e-12)).clamp(-1.0, 1.0)
}

fn angle(cos: &Tensor) -> Tensor {
    cos.arccos() / std::f64::consts::PI
}

fn total(t: &Tensor) -> f64 {
    t.sum(Kind::Double).double_value(&[])
}

impl CalibState {
    pub fn new(
        model: &Model,
        sequences: &[Vec<u32>],
        chunk: usize,
        need: Need,
        kinds: StatKinds,
    ) -> Result<Self> {
        let _g = tch::no_grad_guard();
        let n = sequences.len() as i64;
        let t = sequences.first().map_or(0, |s| s.len()) as i64;
        let flat: Vec<i64> = sequences.iter().flatten().map(|&x| x as i64).collect();
        let ids = Tensor::from_slice(&flat)
            .view([n, t])
            .to_device(model.device);
        let chunk = chunk.max(1) as i64;
        let ctx = model.context(&ids.narrow(0, 0, chunk.min(n)), None, None, 0)?;
        let store = match need {
            Need::Full => {
                let shape = Shape {
                    rows: n,
                    seqlen: t,
                    hidden: model.config.hidden_size,
                    kind: model.embed_tokens(&ids.narrow(0, 0, 1))?.kind(),
                };
                let mut s = BoundaryStore::new(shape, model.n_layers() + 1, model.device)?;
                let b = s.open_next()?;
                for c0 in (0..n).step_by(chunk as usize) {
                    let cn = chunk.min(n - c0);
                    s.put(b, c0, &model.embed_tokens(&ids.narrow(0, c0, cn))?)?;
                }
                Some(s)
            }
            _ => None,
        };
        let mut s = CalibState {
            ids,
            need,
            store,
            stats: vec![],
            kinds,
            cos1: vec![],
            layers: model.n_layers(),
            last: vec![],
            chunk,
            ctx,
            layer_passes: 0,
        };
        if need != Need::Ids {
            s.recompute_from(model, 0)?;
        }
        Ok(s)
    }

    pub fn n_layers(&self) -> usize {
        self.layers
    }

    /// Whether the restart points are on disk (see [`BoundaryStore`]).
    pub fn on_disk(&self) -> bool {
        self.store.as_ref().is_some_and(BoundaryStore::on_disk)
    }

    fn tokens(&self) -> f64 {
        self.ids.numel() as f64
    }

    /// Re-run layers `start..` from boundary `start` (which must still be valid): their
    /// scores, statistics and the boundaries after `start`.
    pub fn recompute_from(&mut self, model: &Model, start: usize) -> Result<()> {
        let _g = tch::no_grad_guard();
        let nl = model.n_layers();
        let start = if self.store.is_some() { start } else { 0 };
        self.layers = nl;
        if self.store.is_none() {
            self.cos1 = vec![0.0; nl];
        }
        self.last.truncate(start + 1);
        if self.kinds.any() {
            self.stats.truncate(start);
            self.stats
                .extend((start..nl).map(|_| LayerStats::zeros(model)));
        }
        if let Some(s) = self.store.as_mut() {
            s.truncate(start + 1);
            for _ in start..nl {
                s.open_next()?;
            }
        }
        let n = self.ids.size()[0];
        let first_last = self.last.len();
        let mut lasts: Vec<Vec<Tensor>> = (first_last..=nl).map(|_| vec![]).collect();
        for c0 in (0..n).step_by(self.chunk as usize) {
            let cn = self.chunk.min(n - c0);
            self.run_chunk(model, start, c0, cn, &mut lasts[..], first_last)?;
            crate::heap::trim();
        }
        self.layer_passes += (nl - start) * n as usize;
        for l in lasts {
            self.last.push(Tensor::cat(&l, 0));
        }
        Ok(())
    }

    /// One chunk of [`CalibState::recompute_from`]; `lasts[b - first_last]` collects the
    /// last-token states of boundary `b`.
    fn run_chunk(
        &mut self,
        model: &Model,
        start: usize,
        c0: i64,
        cn: i64,
        lasts: &mut [Vec<Tensor>],
        first_last: usize,
    ) -> Result<()> {
        let nl = model.n_layers();
        let own = self.ctx_for(cn);
        let ctx = own.as_ref().unwrap_or(&self.ctx);
        let mut h = match &self.store {
            Some(s) => s.get(start, c0, cn)?,
            None => model.embed_tokens(&self.ids.narrow(0, c0, cn))?,
        };
        // Copies: a view would keep the whole chunk's states alive.
        if first_last == 0 {
            lasts[0].push(h.select(1, -1).copy());
        }
        let mut no = NoTap;
        let mut stats_tap;
        let tap: &mut dyn Tap = if self.kinds.any() {
            stats_tap = StatsTap {
                stats: &mut self.stats[start..],
                offset: start,
                kinds: self.kinds,
            };
            &mut stats_tap
        } else {
            &mut no
        };
        for l in start..nl {
            let out = layer_forward(&model.config, &model.layers[l], l, &h, ctx, tap, None);
            lasts[l + 1 - first_last].push(out.select(1, -1).copy());
            match self.store.as_mut() {
                Some(s) => s.put(l + 1, c0, &out)?,
                None => self.cos1[l] += total(&cosine_rows(&h, &out)),
            }
            h = out;
        }
        Ok(())
    }

    /// The shared context fits chunks of `self.chunk` rows; a shorter last chunk gets its
    /// own (its rotary tables are broadcast per row).
    fn ctx_for(&self, rows: i64) -> Option<Context> {
        (rows != self.ctx.cos.size()[0]).then(|| Context {
            cos: self.ctx.cos.narrow(0, 0, rows),
            sin: self.ctx.sin.narrow(0, 0, rows),
            mask: crate::model::forward::AttnMask::Causal,
            valid: None,
            unpadded: None,
        })
    }

    /// Layers `at..` changed (a merge or a drop at `at`): re-score from `at` (from layer 0
    /// when `incremental` is off).
    pub fn after_change(&mut self, model: &Model, at: usize, incremental: bool) -> Result<()> {
        self.recompute_from(model, if incremental { at } else { 0 })
    }

    /// Free everything but the ids: a one-shot plan has used its scores.
    pub fn release(&mut self) {
        self.store = None;
        self.stats.clear();
        self.last.clear();
    }

    /// `f(cos)` summed over all tokens, where `cos` is the per-token cosine between
    /// boundaries `a` and `b` (read back chunk by chunk from the restart points).
    fn sum_cos(&self, a: usize, b: usize, f: impl Fn(&Tensor) -> Tensor) -> Result<f64> {
        let _g = tch::no_grad_guard();
        let n = self.ids.size()[0];
        let mut sum = 0.0;
        for c0 in (0..n).step_by(self.chunk as usize) {
            let cn = self.chunk.min(n - c0);
            let cos = cosine_rows(&self.store().get(a, c0, cn)?, &self.store().get(b, c0, cn)?);
            sum += total(&f(&cos));
        }
        Ok(sum)
    }

    /// Block influence of layer `l`: 1 - cos(h_in, h_out) averaged over all tokens.
    pub fn block_influence(&self, l: usize) -> Result<f64> {
        let cos = match self.store {
            Some(_) => self.sum_cos(l, l + 1, Tensor::shallow_clone)?,
            None => self.cos1[l],
        };
        Ok(1.0 - cos / self.tokens())
    }

    /// Block influence of every layer.
    pub fn block_influences(&self) -> Result<Vec<f64>> {
        (0..self.n_layers())
            .map(|l| self.block_influence(l))
            .collect()
    }

    /// Angular distance (arccos cos / pi) between the input and output of layer `l`,
    /// averaged over all tokens.
    pub fn layer_distance(&self, l: usize) -> Result<f64> {
        Ok(self.sum_cos(l, l + 1, angle)? / self.tokens())
    }

    /// Angular distance between the input of layer `l` and the output of layer `l + 1`:
    /// on the last token of each sequence (the reference's pair score) or over all tokens.
    pub fn pair_distance(&self, l: usize, all_tokens: bool) -> Result<f64> {
        if all_tokens {
            return Ok(self.sum_cos(l, l + 2, angle)? / self.tokens());
        }
        Ok(angle(&cosine_rows(&self.last[l], &self.last[l + 2]))
            .mean(Kind::Double)
            .double_value(&[]))
    }

    fn store(&self) -> &BoundaryStore {
        self.store
            .as_ref()
            .expect("re-scoring needs the Full calibration state (Method::need)")
    }

    /// Boundary `b` of every sequence (LaCo's reference output).
    pub fn boundary(&self, b: usize) -> Result<Tensor> {
        self.store().get(b, 0, self.ids.size()[0])
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
    ) -> Result<()> {
        let _g = tch::no_grad_guard();
        let n = self.ids.size()[0];
        let mut no = NoTap;
        for c0 in (0..n).step_by(self.chunk as usize) {
            let cn = self.chunk.min(n - c0);
            let own = self.ctx_for(cn);
            let ctx = own.as_ref().unwrap_or(&self.ctx);
            let mut h = self.store().get(start, c0, cn)?;
            for (k, layer) in replacement.iter().enumerate() {
                h = layer_forward(&model.config, layer, start + k, &h, ctx, &mut no, None);
            }
            for l in resume..model.n_layers() {
                h = layer_forward(&model.config, &model.layers[l], l, &h, ctx, &mut no, None);
            }
            f(c0, &h);
        }
        Ok(())
    }

    /// Mean next-token NLL of the calibration set when the layers from boundary `start` on
    /// are `replacement` followed by the model's layers `resume..`.
    pub fn nll_with(
        &self,
        model: &Model,
        start: usize,
        replacement: &[&Layer],
        resume: usize,
    ) -> Result<f64> {
        let (mut sum, mut count) = (0f64, 0i64);
        self.run_with(model, start, replacement, resume, |c0, h| {
            let (s, c) = lm_nll(model, h, &self.ids.narrow(0, c0, h.size()[0]));
            sum += s;
            count += c;
        })?;
        Ok(sum / count.max(1) as f64)
    }
}

/// Sum of next-token NLL over `[B, T]` given the last layer's output, chunked over
/// positions so the logits buffer stays small.
pub fn lm_nll(model: &Model, h: &Tensor, ids: &Tensor) -> (f64, i64) {
    let t = h.size()[1];
    let hn = model.final_norm(&h.narrow(1, 0, t - 1));
    let tgt = ids.narrow(1, 1, t - 1);
    let mut sum = 0f64;
    let step = 256;
    let mut s = 0;
    while s < t - 1 {
        let k = step.min(t - 1 - s);
        let logp = model
            .lm_head(&hn.narrow(1, s, k))
            .to_kind(Kind::Float)
            .log_softmax(-1, Kind::Float);
        sum -= logp
            .gather(-1, &tgt.narrow(1, s, k).unsqueeze(-1), false)
            .sum(Kind::Double)
            .double_value(&[]);
        s += k;
    }
    (sum, h.size()[0] * (t - 1))
}
