//! Merge operations: several layers in, one layer of the same shape out.
//! - `concat` (CoMe): each source layer contributes its most sensitive channels (MLP
//!   neurons and whole KV heads with their query heads), side by side;
//! - `linear`: weighted average of every tensor (plain or BI-weighted; MKA's alpha blend);
//! - `laco`: LaCo's difference folding `W_l + sum_k (W_{l+k} - W_l)`.

use super::score::ChannelScores;
use crate::error::{Error, Result};
use crate::model::{Layer, Linear, ModelConfig};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// How the merged layer's RMSNorm weights are formed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum NormMode {
    /// Plain mean of the sources' norm weights (reference).
    #[default]
    Mean,
    /// Fold each source's norm weight into the input columns of the projections it feeds,
    /// then use a unit norm weight: exact per channel (ours).
    Fold,
}

/// Which query heads travel with a kept KV head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum GqaMapping {
    /// Query head h reads KV head h / n_rep (Hugging Face layout): correct.
    #[default]
    Hf,
    /// The reference code's rule, query heads with h mod n_kv in the kept set: wrong for
    /// GQA models, offered to reproduce its numbers.
    Reference,
}

/// Options for the share of channels each source layer gives.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShareOptions {
    /// Shares are proportional to BI^power (reference default 1).
    pub power: f64,
    /// Upper bound on the largest share (None: no cap).
    pub cap: Option<f64>,
}

impl Default for ShareOptions {
    fn default() -> Self {
        ShareOptions {
            power: 1.0,
            cap: None,
        }
    }
}

impl crate::hashing::Identity for ShareOptions {
    fn identity(&self) -> serde_json::Value {
        let ShareOptions { power, cap } = self;
        crate::hashing::Fields::new()
            .leaf("power", power)
            .leaf("cap", cap)
            .done()
    }
}

/// Shares r_k from block influences (BI_k^p / sum), with the optional cap on the largest.
pub fn shares(bi: &[f64], opts: ShareOptions) -> Vec<f64> {
    let w: Vec<f64> = bi.iter().map(|b| b.max(0.0).powf(opts.power)).collect();
    let sum: f64 = w.iter().sum();
    let mut r: Vec<f64> = if sum > 0.0 && sum.is_finite() {
        w.iter().map(|x| x / sum).collect()
    } else {
        vec![1.0 / bi.len() as f64; bi.len()]
    };
    if let Some(cap) = opts.cap {
        let (imax, &rmax) = r
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .unwrap_or((0, &0.0));
        if rmax > cap && r.len() > 1 {
            let rest: f64 = 1.0 - rmax;
            for (k, x) in r.iter_mut().enumerate() {
                *x = if k == imax {
                    cap
                } else if rest > 0.0 {
                    *x / rest * (1.0 - cap)
                } else {
                    (1.0 - cap) / (bi.len() - 1) as f64
                };
            }
        }
    }
    r
}

/// Channels per source: every source but the largest share gets floor(n * r_k); the
/// largest gets the rest, so the counts always sum to `n`.
pub fn allocate(shares: &[f64], n: usize) -> Vec<usize> {
    if shares.is_empty() {
        return vec![];
    }
    let imax = shares
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|x| x.0)
        .unwrap_or(0);
    let mut out: Vec<usize> = shares
        .iter()
        .map(|r| ((n as f64) * r.clamp(0.0, 1.0)).floor() as usize)
        .collect();
    out[imax] = 0;
    let given: usize = out.iter().sum();
    out[imax] = n.saturating_sub(given);
    out
}

/// Indices of the `k` largest scores, returned in ascending index order.
pub fn top_k_in_order(scores: &[f64], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    // Stable on ties: the lower index wins, so results are deterministic.
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    let mut keep: Vec<usize> = idx.into_iter().take(k).collect();
    keep.sort_unstable();
    keep
}

/// What a concat merge kept from each source.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConcatRecord {
    #[serde(deserialize_with = "super::nan_as_null::vec")]
    pub shares: Vec<f64>,
    pub mlp_kept: Vec<Vec<usize>>,
    pub kv_heads_kept: Vec<Vec<usize>>,
    pub q_heads_kept: Vec<Vec<usize>>,
}

fn rows(t: &Tensor, idx: &[i64]) -> Tensor {
    t.index_select(0, &Tensor::from_slice(idx).to_device(t.device()))
}
fn cols(t: &Tensor, idx: &[i64]) -> Tensor {
    t.index_select(1, &Tensor::from_slice(idx).to_device(t.device()))
}

/// Expand head indices to row indices of a `[heads * head_dim, ...]` projection.
fn head_rows(heads: &[usize], hd: i64) -> Vec<i64> {
    heads
        .iter()
        .flat_map(|&h| (h as i64 * hd)..(h as i64 + 1) * hd)
        .collect()
}

/// Query heads that travel with kept KV heads.
pub fn query_heads(kv: &[usize], n_heads: usize, n_kv: usize, mapping: GqaMapping) -> Vec<usize> {
    let n_rep = n_heads / n_kv;
    match mapping {
        GqaMapping::Hf => kv
            .iter()
            .flat_map(|&g| g * n_rep..(g + 1) * n_rep)
            .collect(),
        GqaMapping::Reference => (0..n_heads).filter(|h| kv.contains(&(h % n_kv))).collect(),
    }
}

fn sum_opt(ts: &[Option<&Tensor>]) -> Option<Tensor> {
    let present: Vec<&Tensor> = ts.iter().flatten().copied().collect();
    if present.is_empty() {
        return None;
    }
    Some(
        present
            .iter()
            .skip(1)
            .fold(present[0].copy(), |acc, t| acc + *t),
    )
}

fn scale_cols(w: &Tensor, g: &Tensor) -> Tensor {
    w * g.to_kind(w.kind()).unsqueeze(0)
}

/// How a concat merge is shaped.
#[derive(Debug, Clone, Copy)]
pub struct ConcatOptions {
    pub norm: NormMode,
    pub gqa: GqaMapping,
    /// KV heads and MLP neurons of the merged layer: the original shape normally; tests
    /// use larger values to keep every channel.
    pub n_kv_out: usize,
    pub n_mlp_out: usize,
}

impl ConcatOptions {
    /// The original layer shape.
    pub fn same_shape(c: &ModelConfig, norm: NormMode, gqa: GqaMapping) -> Self {
        ConcatOptions {
            norm,
            gqa,
            n_kv_out: c.num_key_value_heads as usize,
            n_mlp_out: c.intermediate_size as usize,
        }
    }
}

/// Per-source channel choice: which KV heads, query heads and MLP neurons it keeps.
struct Kept {
    kv: Vec<usize>,
    q: Vec<usize>,
    mlp: Vec<usize>,
}

/// Pick source `s`'s most sensitive channels for its allocation (`n_kv` KV heads,
/// `n_mlp` neurons), refusing an allocation larger than the layer itself.
fn keep_channels(
    c: &ModelConfig,
    s: usize,
    scores: &ChannelScores,
    n_kv: usize,
    n_mlp: usize,
    gqa: GqaMapping,
) -> Result<Kept> {
    let (nh, nkv) = (
        c.num_attention_heads as usize,
        c.num_key_value_heads as usize,
    );
    if n_kv > nkv || n_mlp > c.intermediate_size as usize {
        return Err(Error::Invalid(format!(
            "source {s} would give {} KV heads / {} neurons but has {nkv} / {}",
            n_kv, n_mlp, c.intermediate_size
        )));
    }
    let kv = top_k_in_order(&scores.kv, n_kv);
    let q = query_heads(&kv, nh, nkv, gqa);
    let mlp = top_k_in_order(&scores.mlp, n_mlp);
    Ok(Kept { kv, q, mlp })
}

/// Scale the input columns of `w` by a folded norm weight, if there is one.
fn fold(w: Tensor, g: Option<&Tensor>) -> Tensor {
    match g {
        Some(g) => scale_cols(&w, g),
        None => w,
    }
}

/// The slices each source contributes, gathered in source order until they are
/// concatenated into the merged projections.
#[derive(Default)]
struct Pieces {
    q: Vec<Tensor>,
    k: Vec<Tensor>,
    v: Vec<Tensor>,
    o: Vec<Tensor>,
    qb: Vec<Tensor>,
    kb: Vec<Tensor>,
    vb: Vec<Tensor>,
    gate: Vec<Tensor>,
    up: Vec<Tensor>,
    down: Vec<Tensor>,
    gb: Vec<Tensor>,
    ub: Vec<Tensor>,
}

impl Pieces {
    /// Attention: q/k/v rows (and biases) of the kept heads, with the input norm folded
    /// in when `in_g` is given, and the matching o_proj input columns.
    fn push_attention(
        &mut self,
        layer: &Layer,
        q_rows: &[i64],
        kv_rows: &[i64],
        in_g: Option<&Tensor>,
    ) {
        self.q.push(fold(rows(&layer.q_proj.weight, q_rows), in_g));
        self.k.push(fold(rows(&layer.k_proj.weight, kv_rows), in_g));
        self.v.push(fold(rows(&layer.v_proj.weight, kv_rows), in_g));
        self.o.push(cols(&layer.o_proj.weight, q_rows));
        if let Some(b) = &layer.q_proj.bias {
            self.qb.push(rows(b, q_rows));
        }
        if let Some(b) = &layer.k_proj.bias {
            self.kb.push(rows(b, kv_rows));
        }
        if let Some(b) = &layer.v_proj.bias {
            self.vb.push(rows(b, kv_rows));
        }
    }

    /// MLP: gate/up rows (and biases) of the kept neurons, with the post-attention norm
    /// folded in when `post_g` is given, and the matching down_proj input columns.
    fn push_mlp(&mut self, layer: &Layer, m_rows: &[i64], post_g: Option<&Tensor>) {
        self.gate
            .push(fold(rows(&layer.gate_proj.weight, m_rows), post_g));
        self.up
            .push(fold(rows(&layer.up_proj.weight, m_rows), post_g));
        self.down.push(cols(&layer.down_proj.weight, m_rows));
        if let Some(b) = &layer.gate_proj.bias {
            self.gb.push(rows(b, m_rows));
        }
        if let Some(b) = &layer.up_proj.bias {
            self.ub.push(rows(b, m_rows));
        }
    }
}

/// Row-stacked projection; its bias likewise when the sources have one.
fn cat_rows(w: &[Tensor], b: &[Tensor]) -> Linear {
    Linear::new(
        Tensor::cat(w, 0),
        (!b.is_empty()).then(|| Tensor::cat(b, 0)),
    )
}

/// Column-stacked output projection: its outputs add up, so the biases are summed.
fn cat_cols(w: &[Tensor], src: &[&Layer], get: &dyn Fn(&Layer) -> &Linear) -> Linear {
    Linear::new(
        Tensor::cat(w, 1),
        sum_opt(&src.iter().map(|l| get(l).bias.as_ref()).collect::<Vec<_>>()),
    )
}

/// RMSNorm weight of the merged layer: the sources' mean, or ones when folded.
fn merged_norm(src: &[&Layer], norm: NormMode, get: &dyn Fn(&Layer) -> &Tensor) -> Tensor {
    match norm {
        NormMode::Mean => {
            let sum = src
                .iter()
                .skip(1)
                .fold(get(src[0]).copy(), |acc, l| acc + get(l));
            sum / src.len() as f64
        }
        NormMode::Fold => get(src[0]).ones_like(),
    }
}

/// Per-head q/k norms cannot be folded (they act after normalisation): share-weighted.
fn merged_qk_norm(
    src: &[&Layer],
    shares: &[f64],
    get: &dyn Fn(&Layer) -> Option<&Tensor>,
) -> Option<Tensor> {
    let mut acc: Option<Tensor> = None;
    for (l, r) in src.iter().zip(shares) {
        let w = get(l)? * *r;
        acc = Some(match acc {
            Some(a) => a + w,
            None => w,
        });
    }
    acc
}

/// Build the merged layer from the gathered pieces and the sources' norms and biases.
fn assemble(src: &[&Layer], shares: &[f64], norm: NormMode, p: &Pieces) -> Layer {
    Layer {
        input_norm: merged_norm(src, norm, &|l| &l.input_norm),
        q_proj: cat_rows(&p.q, &p.qb),
        k_proj: cat_rows(&p.k, &p.kb),
        v_proj: cat_rows(&p.v, &p.vb),
        o_proj: cat_cols(&p.o, src, &|l| &l.o_proj),
        q_norm: merged_qk_norm(src, shares, &|l| l.q_norm.as_ref()),
        k_norm: merged_qk_norm(src, shares, &|l| l.k_norm.as_ref()),
        post_norm: merged_norm(src, norm, &|l| &l.post_norm),
        gate_proj: cat_rows(&p.gate, &p.gb),
        up_proj: cat_rows(&p.up, &p.ub),
        down_proj: cat_cols(&p.down, src, &|l| &l.down_proj),
    }
}

/// CoMe's concatenation merge of `src` (in model order) with channel scores and shares.
pub fn concat(
    c: &ModelConfig,
    src: &[&Layer],
    scores: &[&ChannelScores],
    shares: &[f64],
    opts: ConcatOptions,
) -> Result<(Layer, ConcatRecord)> {
    let ConcatOptions {
        norm,
        gqa,
        n_kv_out,
        n_mlp_out,
    } = opts;
    if src.len() < 2 || scores.len() != src.len() || shares.len() != src.len() {
        return Err(Error::Invalid(
            "concat needs >= 2 layers with one score set and share each".into(),
        ));
    }
    let hd = c.head_dim;
    let kv_alloc = allocate(shares, n_kv_out);
    let mlp_alloc = allocate(shares, n_mlp_out);
    let mut rec = ConcatRecord {
        shares: shares.to_vec(),
        mlp_kept: vec![],
        kv_heads_kept: vec![],
        q_heads_kept: vec![],
    };
    let mut pieces = Pieces::default();
    for (s, layer) in src.iter().enumerate() {
        let kept = keep_channels(c, s, scores[s], kv_alloc[s], mlp_alloc[s], gqa)?;
        let kv_rows = head_rows(&kept.kv, hd);
        let q_rows = head_rows(&kept.q, hd);
        let m_rows: Vec<i64> = kept.mlp.iter().map(|&i| i as i64).collect();
        let (in_g, post_g) = match norm {
            NormMode::Mean => (None, None),
            NormMode::Fold => (Some(&layer.input_norm), Some(&layer.post_norm)),
        };
        pieces.push_attention(layer, &q_rows, &kv_rows, in_g);
        pieces.push_mlp(layer, &m_rows, post_g);
        rec.mlp_kept.push(kept.mlp);
        rec.kv_heads_kept.push(kept.kv);
        rec.q_heads_kept.push(kept.q);
    }
    Ok((assemble(src, shares, norm, &pieces), rec))
}

/// Apply `f` to corresponding tensors of every source layer, building a new layer.
fn map_layers(src: &[&Layer], f: impl Fn(&[&Tensor]) -> Tensor) -> Layer {
    let lin = |get: &dyn Fn(&Layer) -> &Linear| -> Linear {
        let w: Vec<&Tensor> = src.iter().map(|l| &get(l).weight).collect();
        let b: Option<Vec<&Tensor>> = src.iter().map(|l| get(l).bias.as_ref()).collect();
        Linear::new(f(&w), b.map(|b| f(&b)))
    };
    let opt = |get: &dyn Fn(&Layer) -> Option<&Tensor>| -> Option<Tensor> {
        let ts: Option<Vec<&Tensor>> = src.iter().map(|l| get(l)).collect();
        ts.map(|t| f(&t))
    };
    Layer {
        input_norm: f(&src.iter().map(|l| &l.input_norm).collect::<Vec<_>>()),
        q_proj: lin(&|l| &l.q_proj),
        k_proj: lin(&|l| &l.k_proj),
        v_proj: lin(&|l| &l.v_proj),
        o_proj: lin(&|l| &l.o_proj),
        q_norm: opt(&|l| l.q_norm.as_ref()),
        k_norm: opt(&|l| l.k_norm.as_ref()),
        post_norm: f(&src.iter().map(|l| &l.post_norm).collect::<Vec<_>>()),
        gate_proj: lin(&|l| &l.gate_proj),
        up_proj: lin(&|l| &l.up_proj),
        down_proj: lin(&|l| &l.down_proj),
    }
}

/// Weighted sum of every tensor: `sum_k w_k * W_k` (weights are used as given).
pub fn linear(src: &[&Layer], weights: &[f64]) -> Result<Layer> {
    if src.is_empty() || src.len() != weights.len() {
        return Err(Error::Invalid(
            "linear merge needs one weight per layer".into(),
        ));
    }
    Ok(map_layers(src, |ts| {
        let acc = ts[0].to_kind(Kind::Float) * weights[0];
        let acc = ts
            .iter()
            .zip(weights)
            .skip(1)
            .fold(acc, |a, (t, w)| a + t.to_kind(Kind::Float) * *w);
        acc.to_kind(ts[0].kind())
    }))
}

/// LaCo's reserving-differences merge: `W_0 + sum_{k>0} (W_k - W_0)`.
pub fn laco(src: &[&Layer]) -> Layer {
    map_layers(src, |ts| {
        let base = ts[0].to_kind(Kind::Float);
        let acc = ts
            .iter()
            .skip(1)
            .fold(base.copy(), |a, t| a + (t.to_kind(Kind::Float) - &base));
        acc.to_kind(ts[0].kind())
    })
}
