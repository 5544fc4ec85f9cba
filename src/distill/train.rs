//! The optimisation loop every recovery unit shares: micro-batches with gradient
//! accumulation, warmup + cosine learning rate, clipping, AdamW, periodic validation and
//! best-checkpoint selection, and a hard stop when the loss stops being finite.

use super::config::RecoveryConfig;
use super::optim::{clip_grad_norm, lr_at, AdamW};
use crate::error::{Error, Result};
use tch::Tensor;

/// What the loop optimises: a training loss per micro-batch, a validation loss.
pub trait Objective {
    /// Loss of global micro-batch `micro` (0, 1, 2, ... over the whole run).
    fn train_loss(&mut self, micro: usize) -> Result<Tensor>;
    /// Mean validation loss without gradients (None: no validation data).
    fn val_loss(&mut self) -> Result<Option<f64>>;
}

/// Loop settings, from a `RecoveryConfig` and the unit's budget.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub steps: usize,
    pub accum: usize,
    pub lr: f64,
    pub min_lr: f64,
    pub warmup: f64,
    pub betas: [f64; 2],
    pub eps: f64,
    pub weight_decay: f64,
    pub clip: Option<f64>,
    pub eval_every: Option<usize>,
}

impl Schedule {
    pub fn new(rc: &RecoveryConfig, steps: usize, lr: f64) -> Schedule {
        Schedule {
            steps,
            accum: rc.accum,
            lr,
            min_lr: rc.min_lr.min(lr),
            warmup: rc.warmup,
            betas: rc.betas,
            eps: rc.eps,
            weight_decay: rc.weight_decay,
            clip: rc.clip,
            eval_every: rc.eval_every,
        }
    }

    /// Steps after which validation runs (always the last one).
    fn validates_after(&self, s: usize) -> bool {
        let every = self
            .eval_every
            .unwrap_or_else(|| self.steps.div_ceil(4).max(1));
        (s + 1).is_multiple_of(every) || s + 1 == self.steps
    }
}

#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub train_loss: Vec<f64>,
    pub lrs: Vec<f64>,
    pub grad_norms: Vec<f64>,
    pub val_loss: Vec<(usize, f64)>,
    pub best_step: usize,
    pub best_val: Option<f64>,
}

/// Train `params` (leaf tensors that require grad) on `obj`. `label` names the unit in
/// errors; `on_step(step, loss)` is called after every optimiser step. With validation,
/// the weights of the best validation loss (step 0 = untouched) are restored at the end.
pub fn run(
    params: Vec<Tensor>,
    sched: &Schedule,
    obj: &mut dyn Objective,
    label: &str,
    on_step: &mut dyn FnMut(usize, f64) -> Result<()>,
) -> Result<Outcome> {
    let mut opt = AdamW::new(params, sched.betas, sched.eps, sched.weight_decay);
    let mut out = Outcome::default();
    let snapshot = |opt: &AdamW| -> Vec<Tensor> {
        tch::no_grad(|| opt.params().iter().map(|p| p.detach().copy()).collect())
    };
    let mut best: Option<Vec<Tensor>> = None;
    if let Some(v) = obj.val_loss()? {
        out.val_loss.push((0, v));
        out.best_val = Some(v);
        best = Some(snapshot(&opt));
    }
    for s in 0..sched.steps {
        let lr = lr_at(s, sched.steps, sched.lr, sched.min_lr, sched.warmup);
        let mut sum = 0.0;
        for m in 0..sched.accum {
            let loss = obj.train_loss(s * sched.accum + m)?;
            let v = loss.double_value(&[]);
            if !v.is_finite() {
                return Err(non_finite(label, s, "loss", v));
            }
            (loss / sched.accum as f64).backward();
            sum += v;
        }
        let norm = clip_grad_norm(opt.params(), sched.clip);
        if !norm.is_finite() {
            return Err(non_finite(label, s, "gradient norm", norm));
        }
        opt.step(lr);
        opt.zero_grad();
        let loss = sum / sched.accum as f64;
        out.train_loss.push(loss);
        out.lrs.push(lr);
        out.grad_norms.push(norm);
        if sched.validates_after(s) {
            if let Some(v) = obj.val_loss()? {
                if !v.is_finite() {
                    return Err(non_finite(label, s, "validation loss", v));
                }
                out.val_loss.push((s + 1, v));
                if out.best_val.is_none_or(|b| v < b) {
                    out.best_val = Some(v);
                    out.best_step = s + 1;
                    best = Some(snapshot(&opt));
                }
            }
        }
        on_step(s, loss)?;
    }
    match best {
        Some(w) => tch::no_grad(|| {
            for (p, b) in opt.params().iter().zip(&w) {
                p.shallow_clone().copy_(b);
            }
        }),
        None => out.best_step = sched.steps,
    }
    for p in opt.params() {
        let _ = p.shallow_clone().set_requires_grad(false);
    }
    Ok(out)
}

fn non_finite(label: &str, step: usize, what: &str, v: f64) -> Error {
    Error::Invalid(format!(
        "recovery of {label}: the {what} became {v} at step {step}; nothing was saved \
         (lower recovery.lr, enable recovery.clip, or check the teacher and the student)"
    ))
}
