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
    let (nh, nkv, hd) = (
        c.num_attention_heads as usize,
        c.num_key_value_heads as usize,
        c.head_dim,
    );
    let kv_alloc = allocate(shares, n_kv_out);
    let mlp_alloc = allocate(shares, n_mlp_out);
    let mut rec = ConcatRecord {
        shares: shares.to_vec(),
        mlp_kept: vec![],
        kv_heads_kept: vec![],
        q_heads_kept: vec![],
    };
    let (mut q, mut k, mut v, mut o) = (vec![], vec![], vec![], vec![]);
    let (mut qb, mut kb, mut vb) = (vec![], vec![], vec![]);
    let (mut gate, mut up, mut down) = (vec![], vec![], vec![]);
    let (mut gb, mut ub) = (vec![], vec![]);
    for (s, layer) in src.iter().enumerate() {
        if kv_alloc[s] > nkv || mlp_alloc[s] > c.intermediate_size as usize {
            return Err(Error::Invalid(format!(
                "source {s} would give {} KV heads / {} neurons but has {nkv} / {}",
                kv_alloc[s], mlp_alloc[s], c.intermediate_size
            )));
        }
        let kv_keep = top_k_in_order(&scores[s].kv, kv_alloc[s]);
        let q_keep = query_heads(&kv_keep, nh, nkv, gqa);
        let mlp_keep = top_k_in_order(&scores[s].mlp, mlp_alloc[s]);
        let kv_rows = head_rows(&kv_keep, hd);
        let q_rows = head_rows(&q_keep, hd);
        let m_rows: Vec<i64> = mlp_keep.iter().map(|&i| i as i64).collect();
        let (in_g, post_g) = match norm {
            NormMode::Mean => (None, None),
            NormMode::Fold => (Some(&layer.input_norm), Some(&layer.post_norm)),
        };
        let fold = |w: Tensor, g: Option<&Tensor>| match g {
            Some(g) => scale_cols(&w, g),
            None => w,
        };
        q.push(fold(rows(&layer.q_proj.weight, &q_rows), in_g));
        k.push(fold(rows(&layer.k_proj.weight, &kv_rows), in_g));
        v.push(fold(rows(&layer.v_proj.weight, &kv_rows), in_g));
        o.push(cols(&layer.o_proj.weight, &q_rows));
        if let Some(b) = &layer.q_proj.bias {
            qb.push(rows(b, &q_rows));
        }
        if let Some(b) = &layer.k_proj.bias {
            kb.push(rows(b, &kv_rows));
        }
        if let Some(b) = &layer.v_proj.bias {
            vb.push(rows(b, &kv_rows));
        }
        gate.push(fold(rows(&layer.gate_proj.weight, &m_rows), post_g));
        up.push(fold(rows(&layer.up_proj.weight, &m_rows), post_g));
        down.push(cols(&layer.down_proj.weight, &m_rows));
        if let Some(b) = &layer.gate_proj.bias {
            gb.push(rows(b, &m_rows));
        }
        if let Some(b) = &layer.up_proj.bias {
            ub.push(rows(b, &m_rows));
        }
        rec.mlp_kept.push(mlp_keep);
        rec.kv_heads_kept.push(kv_keep);
        rec.q_heads_kept.push(q_keep);
    }
    let cat0 = |ts: &[Tensor]| Tensor::cat(ts, 0);
    let cat1 = |ts: &[Tensor]| Tensor::cat(ts, 1);
    let bias = |ts: &[Tensor]| (!ts.is_empty()).then(|| Tensor::cat(ts, 0));
    let norm_w = |get: &dyn Fn(&Layer) -> &Tensor| -> Tensor {
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
    };
    // Per-head q/k norms cannot be folded (they act after normalisation): share-weighted.
    let qk_norm = |get: &dyn Fn(&Layer) -> Option<&Tensor>| -> Option<Tensor> {
        let mut acc: Option<Tensor> = None;
        for (l, r) in src.iter().zip(shares) {
            let w = get(l)? * *r;
            acc = Some(match acc {
                Some(a) => a + w,
                None => w,
            });
        }
        acc
    };
    let layer = Layer {
        input_norm: norm_w(&|l| &l.input_norm),
        q_proj: Linear::new(cat0(&q), bias(&qb)),
        k_proj: Linear::new(cat0(&k), bias(&kb)),
        v_proj: Linear::new(cat0(&v), bias(&vb)),
        o_proj: Linear::new(
            cat1(&o),
            sum_opt(
                &src.iter()
                    .map(|l| l.o_proj.bias.as_ref())
                    .collect::<Vec<_>>(),
            ),
        ),
        q_norm: qk_norm(&|l| l.q_norm.as_ref()),
        k_norm: qk_norm(&|l| l.k_norm.as_ref()),
        post_norm: norm_w(&|l| &l.post_norm),
        gate_proj: Linear::new(cat0(&gate), bias(&gb)),
        up_proj: Linear::new(cat0(&up), bias(&ub)),
        down_proj: Linear::new(
            cat1(&down),
            sum_opt(
                &src.iter()
                    .map(|l| l.down_proj.bias.as_ref())
                    .collect::<Vec<_>>(),
            ),
        ),
    };
    Ok((layer, rec))
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
