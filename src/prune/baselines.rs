//! Plans other than CoMe's progressive concat: CoMe-P's ratio search and the baselines the
//! paper compares against. Each drives the shared [`Pruner`].

use super::merge;
use super::spec::{Channels, Laco, Protect};
use super::{best_pair, concat_pair, PairScore, Pruner, Step};
use crate::error::{Error, Result};
use crate::model::Layer;
use std::time::Instant;
use tch::{Kind, Tensor};

fn step(action: String, positions: Vec<usize>, originals: Vec<usize>, score: Option<f64>) -> Step {
    Step {
        round: 0,
        action,
        positions,
        originals,
        score,
        bi: vec![],
        concat: None,
        ratio: None,
        nll: None,
        seconds: 0.0,
    }
}

/// Remove the layers at `victims` (any order, no repeats) from `model`.
pub fn drop_layers(model: &mut crate::model::Model, victims: &[usize]) -> Result<()> {
    let mut v = victims.to_vec();
    v.sort_unstable();
    v.dedup();
    if v.len() != victims.len()
        || v.last().is_some_and(|&x| x >= model.n_layers())
        || v.len() >= model.n_layers()
    {
        return Err(Error::Invalid(format!(
            "cannot drop layers {victims:?} from a {}-layer model",
            model.n_layers()
        )));
    }
    for &i in v.iter().rev() {
        model.layers.remove(i);
    }
    Ok(())
}

/// Remove the layers at `victims` (any order) in one shot, recording each drop.
fn drop_all(p: &mut Pruner, mut victims: Vec<(usize, f64)>, what: &str) -> Result<()> {
    let t0 = Instant::now();
    victims.sort_by_key(|v| std::cmp::Reverse(v.0));
    for (v, s) in &victims {
        let originals = p.corr[*v].clone();
        let _ = p.model.layers.remove(*v);
        p.corr.remove(*v);
        p.record(
            step(format!("{what}: drop {v}"), vec![*v], originals, Some(*s)),
            t0,
        )?;
    }
    // One-shot plans end here: nothing re-scores the pruned model.
    p.state.release();
    Ok(())
}

/// CoMe-P: the pair by all-token angular distance, then the split r in {0, 1/G, .., 1}
/// (0 and 1 drop one layer outright) with the lowest calibration NLL.
pub fn come_p(p: &mut Pruner, target: usize, grid: usize, channels: Channels) -> Result<()> {
    let g = grid.max(1);
    while p.model.n_layers() > target {
        let t0 = Instant::now();
        let (l, s) = best_pair(p, PairScore::SbiAll)?;
        let bi = vec![p.state.block_influence(l)?, p.state.block_influence(l + 1)?];
        let mut best: Option<(f64, f64, Layer, Option<merge::ConcatRecord>)> = None;
        for k in 0..=g {
            let r = k as f64 / g as f64;
            let (cand, rec) = if k == 0 {
                (p.model.layers[l + 1].shallow_clone(), None)
            } else if k == g {
                (p.model.layers[l].shallow_clone(), None)
            } else {
                let (layer, rec) = concat_pair(p, l, &[r, 1.0 - r], &channels)?;
                (layer, Some(rec))
            };
            let nll = p.state.nll_with(p.model, l, &[&cand], l + 2)?;
            if best.as_ref().is_none_or(|b| nll < b.0) {
                best = Some((nll, r, cand, rec));
            }
        }
        let (nll, r, layer, rec) =
            best.ok_or_else(|| Error::Invalid("CoMe-P found no candidate".into()))?;
        let mut st = step(
            format!("come-p {l}+{} r={r:.2}", l + 1),
            vec![l, l + 1],
            [p.corr[l].clone(), p.corr[l + 1].clone()].concat(),
            Some(s),
        );
        st.bi = bi;
        st.ratio = Some(r);
        st.nll = Some(nll);
        st.concat = rec;
        p.apply(l, 2, Some(layer))?;
        p.record(st, t0)?;
    }
    Ok(())
}

/// ShortGPT: drop the lowest-BI layers in one shot.
pub fn shortgpt(p: &mut Pruner, target: usize) -> Result<()> {
    let bi = p.state.block_influences()?;
    let mut idx: Vec<usize> = (0..bi.len()).collect();
    idx.sort_by(|&a, &b| bi[a].total_cmp(&bi[b]));
    let k = p.model.n_layers() - target;
    let victims = idx.into_iter().take(k).map(|i| (i, bi[i])).collect();
    drop_all(p, victims, "shortgpt")
}

/// SLEB: repeatedly drop the layer whose removal raises calibration NLL least (first and
/// last layers are kept), re-scoring after each removal.
pub fn sleb(p: &mut Pruner, target: usize) -> Result<()> {
    while p.model.n_layers() > target {
        let t0 = Instant::now();
        let n = p.model.n_layers();
        if n < 3 {
            return Err(Error::Invalid(
                "SLEB keeps the first and last layers: cannot go below 2".into(),
            ));
        }
        let mut scored = vec![];
        for l in 1..n - 1 {
            scored.push((l, p.state.nll_with(p.model, l, &[], l + 1)?));
        }
        let (l, nll) = scored
            .into_iter()
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .ok_or_else(|| Error::Invalid("SLEB found no candidate".into()))?;
        let mut st = step(
            format!("sleb: drop {l}"),
            vec![l],
            p.corr[l].clone(),
            Some(nll),
        );
        st.nll = Some(nll);
        p.apply(l, 1, None)?;
        p.record(st, t0)?;
    }
    Ok(())
}

/// Reverse order: drop the layers just below the last one.
pub fn reverse(p: &mut Pruner, target: usize) -> Result<()> {
    let n = p.model.n_layers();
    let k = n - target;
    let victims = (n - 1 - k..n - 1).map(|i| (i, 0.0)).collect();
    drop_all(p, victims, "reverse")
}

/// Layers allowed to go under the "+" variants (first/last protected).
fn candidates(p: &Pruner, protect: Option<Protect>) -> Vec<usize> {
    let n = p.model.n_layers();
    let (a, b) = protect.map_or((0, 0), |p| (p.first, p.last));
    (a.min(n)..n.saturating_sub(b)).collect()
}

fn drop_lowest(
    p: &mut Pruner,
    target: usize,
    importance: &[f64],
    protect: Option<Protect>,
) -> Result<()> {
    let what = p.spec.method().name();
    let mut cand = candidates(p, protect);
    let k = p.model.n_layers() - target;
    if cand.len() < k {
        return Err(Error::Invalid(format!(
            "{what}: {} layers are unprotected but {k} must go (lower protect_first/protect_last)",
            cand.len()
        )));
    }
    cand.sort_by(|&a, &b| importance[a].total_cmp(&importance[b]));
    let victims = cand
        .into_iter()
        .take(k)
        .map(|i| (i, importance[i]))
        .collect();
    drop_all(p, victims, what)
}

/// Magnitude: a layer's importance is the mean |w| over its weights.
pub fn magnitude(p: &mut Pruner, target: usize, protect: Option<Protect>) -> Result<()> {
    let imp: Vec<f64> = p
        .model
        .layers
        .iter()
        .map(|l| {
            let ts = l.named_tensors();
            let n: i64 = ts.iter().map(|(_, t)| t.numel() as i64).sum();
            ts.iter()
                .map(|(_, t)| t.abs().sum(Kind::Double).double_value(&[]))
                .sum::<f64>()
                / n as f64
        })
        .collect();
    drop_lowest(p, target, &imp, protect)
}

/// Taylor: a layer's importance is sum |w * dL/dw| of the calibration NLL.
pub fn taylor(p: &mut Pruner, target: usize, protect: Option<Protect>) -> Result<()> {
    let n_layers = p.model.n_layers();
    let mut imp = vec![0f64; n_layers];
    let leaves: Vec<Vec<Tensor>> = p
        .model
        .layers
        .iter()
        .map(|l| {
            l.named_tensors()
                .into_iter()
                .map(|(_, t)| t.set_requires_grad(true))
                .collect()
        })
        .collect();
    let n = p.state.ids.size()[0];
    for i in 0..n {
        let ids = p.state.ids.narrow(0, i, 1);
        let h = p
            .model
            .forward_hidden(&ids, None, &mut crate::model::forward::NoTap)?;
        let t = h.size()[1];
        let logits = p
            .model
            .lm_head(&p.model.final_norm(&h.narrow(1, 0, t - 1)))
            .to_kind(Kind::Float);
        let loss = logits
            .view([t - 1, -1])
            .cross_entropy_for_logits(&ids.narrow(1, 1, t - 1).view([t - 1]));
        loss.backward();
        for (l, ts) in leaves.iter().enumerate() {
            for w in ts {
                let g = w.grad();
                if g.defined() {
                    imp[l] += (w.detach() * &g).abs().sum(Kind::Double).double_value(&[]);
                    let _ = g.detach().zero_();
                }
            }
        }
    }
    for ts in &leaves {
        for w in ts {
            let _ = w.set_requires_grad(false);
        }
    }
    drop_lowest(p, target, &imp, protect)
}

/// Mean cosine similarity, over all calibration tokens, between the final hidden states of
/// the model with a candidate merge and `reference`.
fn final_similarity(
    p: &Pruner,
    at: usize,
    cand: &Layer,
    resume: usize,
    reference: &Tensor,
) -> Result<f64> {
    let (mut sum, mut count) = (0f64, 0i64);
    p.state.run_with(p.model, at, &[cand], resume, |c0, h| {
        let r = reference.narrow(0, c0, h.size()[0]);
        let a = h.to_kind(Kind::Float);
        let cos = (&a * &r).sum_dim_intlist(-1, false, Kind::Double)
            / (a.square().sum_dim_intlist(-1, false, Kind::Double).sqrt()
                * r.square().sum_dim_intlist(-1, false, Kind::Double).sqrt())
            .clamp_min(1e-12);
        sum += cos.sum(Kind::Double).double_value(&[]);
        count += cos.numel() as i64;
    })?;
    Ok(sum / count.max(1) as f64)
}

/// LaCo: from the top down, fold `span` consecutive layers into one
/// (`W_l + sum (W_{l+k} - W_l)`) when the final representations stay cosine-similar to the
/// dense model's (> threshold); step down `interval` after a merge, 1 otherwise. When a
/// sweep ends short of the target the threshold is relaxed by 10% (recorded).
pub fn laco(p: &mut Pruner, target: usize, laco: Laco) -> Result<()> {
    let reference = p.state.boundary(p.model.n_layers())?.to_kind(Kind::Float);
    let span = laco.span.max(2);
    let mut threshold = laco.threshold;
    for _sweep in 0..50 {
        let mut l = p.model.n_layers().saturating_sub(span) as i64;
        while l >= 1 && p.model.n_layers() > target {
            let t0 = Instant::now();
            let lu = l as usize;
            let c = span
                .min(p.model.n_layers() - target + 1)
                .min(p.model.n_layers() - lu);
            if c < 2 {
                l -= 1;
                continue;
            }
            let src: Vec<&Layer> = p.model.layers[lu..lu + c].iter().collect();
            let cand = merge::laco(&src);
            let sim = final_similarity(p, lu, &cand, lu + c, &reference)?;
            if sim > threshold {
                let originals = p.corr[lu..lu + c].concat();
                let mut st = step(
                    format!("laco {lu}..{} sim={sim:.3} T={threshold:.3}", lu + c - 1),
                    (lu..lu + c).collect(),
                    originals,
                    Some(sim),
                );
                st.nll = None;
                p.apply(lu, c, Some(cand))?;
                p.record(st, t0)?;
                l -= laco.interval.max(1) as i64;
            } else {
                l -= 1;
            }
        }
        if p.model.n_layers() <= target {
            return Ok(());
        }
        threshold *= 0.9;
    }
    Err(Error::Invalid(format!(
        "LaCo could not reach {target} layers"
    )))
}

/// MKA (approximation): merge the adjacent pair whose outputs are most similar, as
/// `alpha W_l + (1 - alpha) W_m` with alpha = that similarity. The paper measures
/// similarity on diffusion-map manifolds with an information-bottleneck score; we use the
/// mean cosine of the two layers' outputs (recorded as a deviation).
pub fn mka(p: &mut Pruner, target: usize) -> Result<()> {
    while p.model.n_layers() > target {
        let t0 = Instant::now();
        let pairs = super::eligible_pairs(p);
        let mut scored = vec![];
        for l in pairs {
            scored.push((l, 1.0 - p.state.layer_distance(l + 1)?));
        }
        let (l, sim) = scored
            .into_iter()
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .ok_or_else(|| {
                Error::Invalid("MKA: no eligible pair left; set no_repeat = false".into())
            })?;
        let alpha = sim.clamp(0.0, 1.0);
        let layer = merge::linear(
            &[&p.model.layers[l], &p.model.layers[l + 1]],
            &[alpha, 1.0 - alpha],
        )?;
        let mut st = step(
            format!("mka {l}+{} alpha={alpha:.3}", l + 1),
            vec![l, l + 1],
            [p.corr[l].clone(), p.corr[l + 1].clone()].concat(),
            Some(sim),
        );
        st.ratio = Some(alpha);
        p.apply(l, 2, Some(layer))?;
        p.record(st, t0)?;
    }
    Ok(())
}
