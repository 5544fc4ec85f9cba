//! The forward pass. One function serves evaluation, generation (with a KV cache),
//! calibration scoring and distillation targets: callers observe what they need through a
//! [`Tap`] (hidden states at layer boundaries, the attention output before `o_proj`, the
//! MLP activation before `down_proj`) instead of the model storing anything.

use super::config::ModelConfig;
use super::layer::{Layer, Linear};
use super::{rope, Model};
use crate::error::{Error, Result};
use tch::{Kind, Tensor};

/// Observer of intermediate activations. `valid` is the `[B, T]` bool mask of real
/// (non-padding) tokens when the batch is padded, so statistics can skip padding.
pub trait Tap {
    /// Hidden state entering layer `boundary` (`boundary == n_layers`: the last layer's
    /// output, before the final norm). `[B, T, hidden]`.
    fn hidden(&mut self, _boundary: usize, _h: &Tensor, _valid: Option<&Tensor>) {}
    /// Attention output of layer `layer` before `o_proj`, `[B, T, heads * head_dim]`.
    fn attn_pre_o(&mut self, _layer: usize, _x: &Tensor, _valid: Option<&Tensor>) {}
    /// Queries and keys of layer `layer` after q/k norms, before RoPE,
    /// `[B, T, heads, head_dim]` and `[B, T, kv_heads, head_dim]`.
    fn qk(&mut self, _layer: usize, _q: &Tensor, _k: &Tensor, _valid: Option<&Tensor>) {}
    /// MLP activation `silu(gate(x)) * up(x)` before `down_proj`, `[B, T, intermediate]`.
    fn mlp_pre_down(&mut self, _layer: usize, _x: &Tensor, _valid: Option<&Tensor>) {}
}

/// A tap that observes nothing.
pub struct NoTap;
impl Tap for NoTap {}

/// A tap that keeps copies of everything (tests, debugging, small distillation batches).
#[derive(Default)]
pub struct Recorder {
    pub hidden: Vec<(usize, Tensor)>,
    pub attn: Vec<(usize, Tensor)>,
    pub mlp: Vec<(usize, Tensor)>,
}

impl Tap for Recorder {
    fn hidden(&mut self, b: usize, h: &Tensor, _: Option<&Tensor>) {
        self.hidden.push((b, h.copy()));
    }
    fn attn_pre_o(&mut self, l: usize, x: &Tensor, _: Option<&Tensor>) {
        self.attn.push((l, x.copy()));
    }
    fn mlp_pre_down(&mut self, l: usize, x: &Tensor, _: Option<&Tensor>) {
        self.mlp.push((l, x.copy()));
    }
}

#[derive(Debug)]
pub enum AttnMask {
    /// Plain causal attention over the whole sequence (no padding, no cache).
    Causal,
    /// Every query attends to every key (one new token after a cache).
    Full,
    /// Explicit `[B, 1, Tq, Tk]` bool mask, true = attend.
    Explicit(Tensor),
}

/// Per-call state shared by every layer: rotary tables, mask and padding.
pub struct Context {
    pub cos: Tensor,
    pub sin: Tensor,
    pub mask: AttnMask,
    pub valid: Option<Tensor>,
    /// Set when hidden states hold only real tokens (`[1, T, hidden]`): the layers'
    /// projections then skip padding, and attention alone runs on the padded rows.
    pub unpadded: Option<Unpadded>,
}

/// Where each of `T` real tokens sits in the padded `[rows, width]` layout attention
/// runs on. Projections and MLPs cost per token, attention per row, so a batch of rows
/// of unequal length pays for its padding in attention only.
pub struct Unpadded {
    rows: i64,
    width: i64,
    /// Per token: its padded slot.
    token_slot: Tensor,
    /// Real tokens per row, for the fused CPU path.
    lens: Vec<usize>,
}

impl Unpadded {
    /// `lens[r]` real tokens in row `r`, in row order: row r's tokens are the next
    /// `lens[r]` of the flat sequence.
    pub fn new(lens: &[usize], device: tch::Device) -> Unpadded {
        let width = lens.iter().copied().max().unwrap_or(0).max(1);
        let token_slot: Vec<i64> = lens
            .iter()
            .enumerate()
            .flat_map(|(r, &len)| (0..len).map(move |i| (r * width + i) as i64))
            .collect();
        Unpadded {
            rows: lens.len() as i64,
            width: width as i64,
            token_slot: Tensor::from_slice(&token_slot).to_device(device),
            lens: lens.to_vec(),
        }
    }

    /// `x` (`[1, T, heads, d]`), rotated by the RoPE `tables` when given, in the padded
    /// layout: one pass on the CPU ([`super::fused::rope_scatter`]).
    pub(super) fn pad_rotated(&self, x: &Tensor, tables: Option<(&Tensor, &Tensor)>) -> Tensor {
        if let Some(p) = super::fused::rope_scatter(x, tables, &self.lens, self.width as usize) {
            let s = x.size();
            return p.view([self.rows, self.width, s[2], s[3]]).transpose(1, 2);
        }
        self.pad(&rotated(x, tables))
    }

    /// Attention within each row of this layout's tokens (keys and values `k`, `v`), for
    /// queries `q` laid out by `queries` (this layout itself for every token), causal or by
    /// `mask` on the padded layouts, behind `cache` when given (its columns come first in
    /// the mask, and it then takes the rows' keys and values, as [`through_cache`] does):
    /// `[1, queries, heads * d]`. None, with the cache untouched, where the CPU path
    /// ([`super::packed_attention`]) does not apply. Queries and keys are rotated first.
    pub(super) fn attend_within_rows(
        &self,
        q: Rotary,
        queries: &Unpadded,
        k: Rotary,
        v: &Tensor,
        mask: Option<&Tensor>,
        cache: Option<(&mut Option<Tensor>, &mut Option<Tensor>)>,
    ) -> Option<Tensor> {
        let (q, k) = (q.rotated()?, k.rotated()?);
        let past = cache
            .as_ref()
            .and_then(|(ck, cv)| ck.as_ref().zip(cv.as_ref()));
        let (keys, values, lens) = match past {
            None => (k.shallow_clone(), v.shallow_clone(), self.lens.clone()),
            Some((pk, pv)) => self.behind(pk, pv, &k, v)?,
        };
        let rows = super::packed_attention::Rows {
            keys: &lens,
            queries: &queries.lens,
        };
        let attn = super::packed_attention::within_rows(&q, &keys, &values, rows, mask)?;
        if cache.is_some() {
            let _ = through_cache(self.pad(&k), self.pad(v), cache);
        }
        Some(attn)
    }

    /// Each row's cached keys (`pk`, `[rows, heads, past, d]`, or values `pv`) followed by
    /// its own (`k`, `v`, `[1, T, heads, d]`), rows end to end: `[1, sum of (past + len),
    /// heads, d]` each, and the rows' lengths. None where the cache has another shape.
    fn behind(
        &self,
        pk: &Tensor,
        pv: &Tensor,
        k: &Tensor,
        v: &Tensor,
    ) -> Option<(Tensor, Tensor, Vec<usize>)> {
        let s = pk.size();
        let ks = k.size();
        if s.len() != 4 || s[0] != self.rows || pv.size() != s || ks.len() != 4 || s[1] != ks[2] {
            return None;
        }
        let past = usize::try_from(s[2]).ok()?;
        let (kt, vt) = (k.squeeze_dim(0), v.squeeze_dim(0));
        let (mut kp, mut vp) = (vec![], vec![]);
        let mut at = 0;
        for (r, &len) in self.lens.iter().enumerate() {
            kp.push(pk.select(0, r as i64).transpose(0, 1));
            kp.push(kt.narrow(0, at, len as i64));
            vp.push(pv.select(0, r as i64).transpose(0, 1));
            vp.push(vt.narrow(0, at, len as i64));
            at += len as i64;
        }
        let lens = self.lens.iter().map(|&n| past + n).collect();
        Some((
            Tensor::cat(&kp, 0).unsqueeze(0),
            Tensor::cat(&vp, 0).unsqueeze(0),
            lens,
        ))
    }

    /// `[1, T, heads, d]` -> `[rows, heads, width, d]` (padding slots zero).
    pub(super) fn pad(&self, x: &Tensor) -> Tensor {
        let s = x.size();
        let (h, d) = (s[2], s[3]);
        // Tokens scattered into zeros (differentiable too: the zeros are no leaf).
        let mut padded = Tensor::zeros([self.rows * self.width, h, d], (x.kind(), x.device()));
        let _ = padded.index_copy_(0, &self.token_slot, &x.squeeze_dim(0));
        padded.view([self.rows, self.width, h, d]).transpose(1, 2)
    }

    /// `[rows, heads, width, d]` -> `[1, T, heads * d]`.
    pub(super) fn unpad(&self, x: &Tensor) -> Tensor {
        let s = x.size();
        let (h, d) = (s[1], s[3]);
        x.transpose(1, 2)
            .reshape([self.rows * self.width, h * d])
            .index_select(0, &self.token_slot)
            .unsqueeze(0)
    }
}

/// Unpadded projections `[1, n, heads, d]` and the RoPE tables of their tokens.
pub(super) struct Rotary<'a> {
    pub x: &'a Tensor,
    pub tables: (&'a Tensor, &'a Tensor),
}

impl Rotary<'_> {
    /// Rotated in one pass on the CPU (None where that path does not apply).
    fn rotated(&self) -> Option<Tensor> {
        let s = self.x.size();
        let n = usize::try_from(*s.get(1)?).ok()?;
        let r = super::fused::rope_scatter(self.x, Some(self.tables), &[n], n)?;
        Some(r.unsqueeze(0))
    }
}

/// Keys and values of earlier tokens, per layer, for incremental decoding.
#[derive(Default)]
pub struct KvCache {
    pub k: Vec<Option<Tensor>>,
    pub v: Vec<Option<Tensor>>,
}

impl KvCache {
    pub fn new(n_layers: usize) -> Self {
        KvCache {
            k: (0..n_layers).map(|_| None).collect(),
            v: (0..n_layers).map(|_| None).collect(),
        }
    }
    pub fn len(&self) -> i64 {
        self.k
            .first()
            .and_then(|k| k.as_ref())
            .map(|k| k.size()[2])
            .unwrap_or(0)
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// RMSNorm as transformers computes it: statistics in f32 (f64 for an f64 model), result
/// cast back, then scaled.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Tensor {
    let d = *x.size().last().unwrap_or(&1);
    let wide = matches!(x.kind(), Kind::Float | Kind::Double);
    if wide && weight.kind() == x.kind() {
        if let Some(y) = super::fused::rms_norm(x, weight, eps) {
            return y;
        }
        return x.rms_norm([d], Some(weight), eps);
    }
    let x32 = x.to_kind(Kind::Float);
    let var = x32.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float);
    let normed = (x32 * (var + eps).rsqrt()).to_kind(x.kind());
    weight * normed
}

impl Model {
    /// Build the per-call context. `attention_mask` (`[B, past + T]`, 1 = token) covers the
    /// cached tokens too, as in transformers; positions follow it (left padding works).
    pub fn context(
        &self,
        ids: &Tensor,
        attention_mask: Option<&Tensor>,
        position_ids: Option<&Tensor>,
        past: i64,
    ) -> Result<Context> {
        let size = ids.size();
        if size.len() != 2 {
            return Err(Error::Invalid(format!(
                "input ids must be [batch, seq], got {size:?}"
            )));
        }
        let (b, t) = (size[0], size[1]);
        let dev = self.device;
        let mask = match attention_mask {
            Some(m) => {
                if m.size() != [b, past + t] {
                    return Err(Error::Invalid(format!(
                        "attention mask has shape {:?}, expected [{b}, {}]",
                        m.size(),
                        past + t
                    )));
                }
                let m = m.to_device(dev).to_kind(Kind::Bool);
                // An all-ones mask is no mask; skip building one.
                if m.all().int64_value(&[]) == 1 {
                    None
                } else {
                    Some(m)
                }
            }
            None => None,
        };
        let positions = match (position_ids, &mask) {
            (Some(p), _) => p.to_device(dev).to_kind(Kind::Int64),
            (None, Some(m)) => (m.to_kind(Kind::Int64).cumsum(1, Kind::Int64) - 1)
                .clamp_min(0)
                .narrow(1, past, t),
            (None, None) => Tensor::arange_start(past, past + t, (Kind::Int64, dev))
                .unsqueeze(0)
                .expand([b, t], true),
        };
        let (cos, sin) = self.rope_cos_sin(&positions);
        let total = past + t;
        let window_bites = self.config.sliding_window.is_some_and(|w| total > w);
        let attn = if mask.is_none() && !window_bites {
            if past == 0 {
                AttnMask::Causal
            } else if t == 1 {
                AttnMask::Full
            } else {
                AttnMask::Explicit(causal_mask(
                    b,
                    t,
                    past,
                    None,
                    self.config.sliding_window,
                    dev,
                ))
            }
        } else {
            AttnMask::Explicit(causal_mask(
                b,
                t,
                past,
                mask.as_ref(),
                self.config.sliding_window,
                dev,
            ))
        };
        let valid = mask.map(|m| m.narrow(1, past, t));
        Ok(Context {
            cos: cos.to_kind(self.dtype),
            sin: sin.to_kind(self.dtype),
            mask: attn,
            valid,
            unpadded: None,
        })
    }

    /// A context with caller-made positions `[B, N]` and bool mask `[B, 1, N, N]` (true =
    /// attend), for packed layouts such as several continuations sharing one prefix.
    pub fn context_explicit(
        &self,
        positions: &Tensor,
        mask: Tensor,
        valid: Option<Tensor>,
    ) -> Context {
        let (cos, sin) = self.rope_cos_sin(&positions.to_device(self.device));
        Context {
            cos: cos.to_kind(self.dtype),
            sin: sin.to_kind(self.dtype),
            mask: AttnMask::Explicit(mask.to_device(self.device)),
            valid: valid.map(|v| v.to_device(self.device)),
            unpadded: None,
        }
    }

    /// A context for unpadded hidden states (`[1, T, hidden]`, see [`Unpadded`]):
    /// positions `[1, T]` per real token, and the attention mask on the padded layout
    /// (`[rows, 1, width, past + width]`, bool or additive), or causal when None (each
    /// row's real tokens first, then padding, which causal attention keeps out).
    pub fn context_unpadded(
        &self,
        positions: &Tensor,
        mask: Option<Tensor>,
        layout: Unpadded,
    ) -> Context {
        let (cos, sin) = self.rope_cos_sin(&positions.to_device(self.device));
        Context {
            cos: cos.to_kind(self.dtype),
            sin: sin.to_kind(self.dtype),
            mask: match mask {
                Some(m) => AttnMask::Explicit(m.to_device(self.device)),
                None => AttnMask::Causal,
            },
            valid: None,
            unpadded: Some(layout),
        }
    }

    fn rope_cos_sin(&self, positions: &Tensor) -> (Tensor, Tensor) {
        self.rope.cos_sin(positions)
    }

    pub fn embed_tokens(&self, ids: &Tensor) -> Result<Tensor> {
        let max = ids.max().int64_value(&[]);
        let min = ids.min().int64_value(&[]);
        if min < 0 || max >= self.config.vocab_size {
            return Err(Error::Invalid(format!(
                "token id out of range [0, {}): saw {min}..={max}",
                self.config.vocab_size
            )));
        }
        Ok(Tensor::embedding(
            &self.embed,
            &ids.to_device(self.device),
            -1,
            false,
            false,
        ))
    }

    /// Run layers `range` on `h`; the tap sees boundaries `range.start ..= range.end`.
    pub fn run_layers(
        &self,
        mut h: Tensor,
        range: std::ops::Range<usize>,
        ctx: &Context,
        tap: &mut dyn Tap,
        mut cache: Option<&mut KvCache>,
    ) -> Tensor {
        for i in range.clone() {
            tap.hidden(i, &h, ctx.valid.as_ref());
            let kv = cache.as_deref_mut().map(|c| (&mut c.k[i], &mut c.v[i]));
            h = layer_forward(&self.config, &self.layers[i], i, &h, ctx, tap, kv);
        }
        tap.hidden(range.end, &h, ctx.valid.as_ref());
        h
    }

    /// Hidden state after the last layer, before the final norm: `[B, T, hidden]`.
    pub fn forward_hidden(
        &self,
        ids: &Tensor,
        attention_mask: Option<&Tensor>,
        tap: &mut dyn Tap,
    ) -> Result<Tensor> {
        let ctx = self.context(ids, attention_mask, None, 0)?;
        let h = self.embed_tokens(ids)?;
        Ok(self.run_layers(h, 0..self.layers.len(), &ctx, tap, None))
    }

    pub fn final_norm(&self, h: &Tensor) -> Tensor {
        rms_norm(h, &self.norm, self.config.rms_norm_eps)
    }

    /// Logits from final-normed hidden states (any leading shape).
    pub fn lm_head(&self, normed: &Tensor) -> Tensor {
        normed.linear::<&Tensor>(self.head_weight(), None)
    }

    /// Full logits `[B, T, vocab]` in the model dtype.
    pub fn forward(&self, ids: &Tensor, attention_mask: Option<&Tensor>) -> Result<Tensor> {
        let h = self.forward_hidden(ids, attention_mask, &mut NoTap)?;
        Ok(self.lm_head(&self.final_norm(&h)))
    }

    /// Forward new tokens after `cache` (which grows); returns final-normed hidden states.
    pub fn forward_cached(
        &self,
        ids: &Tensor,
        attention_mask: Option<&Tensor>,
        cache: &mut KvCache,
    ) -> Result<Tensor> {
        let past = cache.len();
        let ctx = self.context(ids, attention_mask, None, past)?;
        let h = self.embed_tokens(ids)?;
        let h = self.run_layers(h, 0..self.layers.len(), &ctx, &mut NoTap, Some(cache));
        Ok(self.final_norm(&h))
    }
}

/// Bool mask `[B or 1, 1, T, past + T]`: causal, restricted to valid keys and to the
/// sliding window. The diagonal stays open so rows of padding never become all-masked
/// (which would make softmax produce NaN); their outputs are ignored anyway.
fn causal_mask(
    b: i64,
    t: i64,
    past: i64,
    valid: Option<&Tensor>,
    window: Option<i64>,
    dev: tch::Device,
) -> Tensor {
    let q = Tensor::arange_start(past, past + t, (Kind::Int64, dev)).view([t, 1]);
    let k = Tensor::arange(past + t, (Kind::Int64, dev)).view([1, past + t]);
    let mut allowed = k.le_tensor(&q);
    if let Some(w) = window {
        allowed = allowed.logical_and(&(&q - &k).lt(w));
    }
    let diag = k.eq_tensor(&q);
    let mut m = allowed.view([1, 1, t, past + t]);
    if let Some(v) = valid {
        m = m.logical_and(&v.view([b, 1, 1, past + t]));
    }
    m.logical_or(&diag.view([1, 1, t, past + t]))
}

/// One decoder layer. Free of `Model` so pruning and distillation can run layers that are
/// not (yet) part of a model.
pub fn layer_forward(
    c: &ModelConfig,
    layer: &Layer,
    idx: usize,
    x: &Tensor,
    ctx: &Context,
    tap: &mut dyn Tap,
    cache: Option<(&mut Option<Tensor>, &mut Option<Tensor>)>,
) -> Tensor {
    let h = residual(x, attention_block(c, layer, idx, x, ctx, tap, cache));
    let out = mlp_block(c, layer, idx, &h, ctx, tap);
    residual(&h, out)
}

/// `x + branch`. At inference the sum goes into the branch's fresh output (the same
/// numbers: addition commutes), sparing a hidden-sized buffer per add.
pub(super) fn residual(x: &Tensor, mut branch: Tensor) -> Tensor {
    let same = branch.size() == x.size() && branch.kind() == x.kind();
    if x.requires_grad() || branch.requires_grad() || !same {
        return x + branch;
    }
    branch += x;
    branch
}

/// The attention branch of a layer (input norm through `o_proj`), without the residual.
pub fn attention_block(
    c: &ModelConfig,
    layer: &Layer,
    idx: usize,
    x: &Tensor,
    ctx: &Context,
    tap: &mut dyn Tap,
    cache: Option<(&mut Option<Tensor>, &mut Option<Tensor>)>,
) -> Tensor {
    let size = x.size();
    let (b, t) = (size[0], size[1]);
    let (nh, nkv, hd) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
    let eps = c.rms_norm_eps;
    let xn = rms_norm(x, &layer.input_norm, eps);
    let q = heads(&layer.q_proj, layer.q_norm.as_ref(), &xn, nh, hd, eps);
    let k = heads(&layer.k_proj, layer.k_norm.as_ref(), &xn, nkv, hd, eps);
    let v = heads(&layer.v_proj, None, &xn, nkv, hd, eps);
    tap.qk(idx, &q, &k, ctx.valid.as_ref());
    let layout = ctx.unpadded.as_ref();
    let mut cache = cache;
    if let Some(u) = layout {
        let mask = match &ctx.mask {
            AttnMask::Causal => Some(None),
            AttnMask::Explicit(m) => Some(Some(m)),
            AttnMask::Full => None,
        };
        let tables = (&ctx.cos, &ctx.sin);
        let (q, k) = (Rotary { x: &q, tables }, Rotary { x: &k, tables });
        let kv = cache.as_mut().map(|(ck, cv)| (&mut **ck, &mut **cv));
        if let Some(attn) = mask.and_then(|m| u.attend_within_rows(q, u, k, &v, m, kv)) {
            tap.attn_pre_o(idx, &attn, ctx.valid.as_ref());
            return layer.o_proj.forward(&attn);
        }
    }
    let tables = Some((&ctx.cos, &ctx.sin));
    let q = attention_layout(&q, tables, layout);
    let k = attention_layout(&k, tables, layout);
    let (k, v) = through_cache(k, attention_layout(&v, None, layout), cache);
    let (mask, causal) = match &ctx.mask {
        AttnMask::Causal => (None, true),
        AttnMask::Full => (None, false),
        AttnMask::Explicit(m) => (Some(m), false),
    };
    let attn = sdpa(&q, &k, &v, mask, causal, nh != nkv);
    let attn = match layout {
        Some(u) => u.unpad(&attn),
        None => attn.transpose(1, 2).reshape([b, t, nh * hd]),
    };
    tap.attn_pre_o(idx, &attn, ctx.valid.as_ref());
    layer.o_proj.forward(&attn)
}

/// A projection of `x` (`[B, T, in]`) split into `n` heads, `[B, T, n, head_dim]`, with
/// its per-head norm (Qwen3) when it has one.
pub(super) fn heads(
    lin: &Linear,
    norm: Option<&Tensor>,
    x: &Tensor,
    n: i64,
    hd: i64,
    eps: f64,
) -> Tensor {
    let s = x.size();
    let y = lin.forward(x).view([s[0], s[1], n, hd]);
    match norm {
        Some(w) => rms_norm(&y, w, eps),
        None => y,
    }
}

/// `[B, T, heads, d]`, rotated by the RoPE `tables` when given (queries and keys), ->
/// attention's `[B, heads, T, d]`, on the padded rows when the hidden states are unpadded.
pub(super) fn attention_layout(
    x: &Tensor,
    tables: Option<(&Tensor, &Tensor)>,
    unpadded: Option<&Unpadded>,
) -> Tensor {
    match unpadded {
        Some(u) => u.pad_rotated(x, tables),
        None => rotated(x, tables).transpose(1, 2),
    }
}

fn rotated(x: &Tensor, tables: Option<(&Tensor, &Tensor)>) -> Tensor {
    match tables {
        Some((cos, sin)) => rope::apply(x, cos, sin),
        None => x.shallow_clone(),
    }
}

/// Keys and values behind the cached ones, and the cache extended with them.
pub(super) fn through_cache(
    mut k: Tensor,
    mut v: Tensor,
    cache: Option<(&mut Option<Tensor>, &mut Option<Tensor>)>,
) -> (Tensor, Tensor) {
    if let Some((ck, cv)) = cache {
        if let (Some(pk), Some(pv)) = (ck.as_ref(), cv.as_ref()) {
            k = Tensor::cat(&[pk, &k], 2);
            v = Tensor::cat(&[pv, &v], 2);
        }
        *ck = Some(k.shallow_clone());
        *cv = Some(v.shallow_clone());
    }
    (k, v)
}

/// The MLP branch of a layer (post-attention norm through `down_proj`), without the residual.
pub fn mlp_block(
    c: &ModelConfig,
    layer: &Layer,
    idx: usize,
    h: &Tensor,
    ctx: &Context,
    tap: &mut dyn Tap,
) -> Tensor {
    let hn = rms_norm(h, &layer.post_norm, c.rms_norm_eps);
    let mut gate = layer.gate_proj.forward(&hn);
    let act = if gate.requires_grad() {
        gate.silu() * layer.up_proj.forward(&hn)
    } else {
        // Inference: in place, saving two [tokens, intermediate] buffers per layer
        // (fresh large buffers cost page faults on CPU).
        let up = layer.up_proj.forward(&hn);
        if !super::fused::silu_mul_(&mut gate, &up) {
            let _ = gate.silu_();
            gate *= up;
        }
        gate
    };
    tap.mlp_pre_down(idx, &act, ctx.valid.as_ref());
    layer.down_proj.forward(&act)
}

/// Scaled dot-product attention; grouped-query heads share their key/value head
/// (query head h reads kv head h / n_rep, the Hugging Face layout), which libtorch's
/// `enable_gqa` does without materialising repeated keys and values.
pub(super) fn sdpa(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    causal: bool,
    gqa: bool,
) -> Tensor {
    Tensor::scaled_dot_product_attention(q, k, v, mask, 0.0, causal, None, gqa)
}
