//! Losses between a student's output and the teacher's state, `[B, T, H]` each. Each is a
//! scalar f32 tensor with its autograd graph; `Losses` sums them with their weights.

use super::config::{LossKind, Losses};
use crate::model::forward::rms_norm;
use tch::{Kind, Tensor};

/// The frozen output path that `kl_logits` needs: final norm weight, eps and LM head.
pub struct Head<'a> {
    pub norm: &'a Tensor,
    pub eps: f64,
    pub weight: &'a Tensor,
}

/// Weighted sum of the configured losses. `positions` restricts `kl_logits` to those
/// time steps (the same for every sequence of the batch).
pub fn total(
    losses: &Losses,
    student: &Tensor,
    teacher: &Tensor,
    temperature: f64,
    head: Option<&Head>,
    positions: Option<&Tensor>,
) -> Tensor {
    let mut sum: Option<Tensor> = None;
    for (kind, w) in &losses.0 {
        let l = one(*kind, student, teacher, temperature, head, positions);
        let l = if *w == 1.0 { l } else { l * *w };
        sum = Some(match sum {
            None => l,
            Some(s) => s + l,
        });
    }
    sum.unwrap_or_else(|| Tensor::zeros([], (Kind::Float, student.device())))
}

pub fn one(
    kind: LossKind,
    s: &Tensor,
    y: &Tensor,
    temperature: f64,
    head: Option<&Head>,
    positions: Option<&Tensor>,
) -> Tensor {
    match kind {
        LossKind::Mse => (s - y).square().mean(Kind::Float),
        LossKind::Cosine => {
            let c = Tensor::cosine_similarity(s, y, -1, 1e-8);
            (c.ones_like() - c).mean(Kind::Float)
        }
        LossKind::KlHidden => kl(s, y, temperature),
        LossKind::KlLogits => {
            let Some(h) = head else {
                // Configuration checks guarantee a head; stay finite-safe regardless.
                return kl(s, y, temperature);
            };
            let (s, y) = match positions {
                Some(p) => (s.index_select(1, p), y.index_select(1, p)),
                None => (s.shallow_clone(), y.shallow_clone()),
            };
            let logits = |x: &Tensor| rms_norm(x, h.norm, h.eps).linear::<&Tensor>(h.weight, None);
            let teacher = tch::no_grad(|| logits(&y));
            kl(&logits(&s), &teacher, temperature)
        }
    }
}

/// KL(softmax(y / T) || softmax(s / T)) over the last dimension, mean over the other
/// dimensions, times T^2 (Hinton's scaling keeps gradients comparable across T).
pub fn kl(s: &Tensor, y: &Tensor, temperature: f64) -> Tensor {
    let t = temperature;
    let p_log = (y / t).log_softmax(-1, Kind::Float);
    let q_log = (s / t).log_softmax(-1, Kind::Float);
    let per = (p_log.exp() * (&p_log - q_log)).sum_dim_intlist(-1, false, Kind::Float);
    per.mean(Kind::Float) * (t * t)
}

/// Sorted distinct positions (all when `k` is None or covers the sequence).
pub fn sample_positions(t: usize, k: Option<usize>, seed: u64, dev: tch::Device) -> Option<Tensor> {
    let k = k.filter(|&k| k < t)?;
    let mut all: Vec<i64> = (0..t as i64).collect();
    crate::rng::SplitMix64::new(seed).shuffle(&mut all);
    let mut pick = all[..k].to_vec();
    pick.sort_unstable();
    Some(Tensor::from_slice(&pick).to_device(dev))
}
