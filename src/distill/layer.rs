//! Hierarchical distillation of one student layer: its input is the teacher's state
//! entering original layer `first`, its target the teacher's state leaving `last`. Only
//! this layer's tensors train; every other weight is untouched.

use super::config::{LossKind, RecoveryConfig};
use super::loss::{self, Head};
use super::plan::Unit;
use super::teacher::TeacherStates;
use super::train::{self, Objective, Outcome, Schedule};
use crate::error::Result;
use crate::model::forward::{layer_forward, Context, NoTap};
use crate::model::{Layer, ModelConfig};
use tch::{Device, Tensor};

/// Every tensor of a layer, as shallow handles (the optimiser updates them in place).
pub fn layer_params(layer: &Layer) -> Vec<Tensor> {
    layer
        .named_tensors()
        .into_iter()
        .map(|(_, t)| t.shallow_clone())
        .collect()
}

/// The frozen output path, owned by a worker (for `kl_logits`).
pub struct HeadWeights {
    pub norm: Tensor,
    pub eps: f64,
    pub weight: Tensor,
}

impl HeadWeights {
    pub fn head(&self) -> Head<'_> {
        Head {
            norm: &self.norm,
            eps: self.eps,
            weight: &self.weight,
        }
    }
}

/// Everything one layer's training reads.
pub struct LayerJob<'a> {
    pub config: &'a ModelConfig,
    /// Rotary tables and causal mask for `[1, seqlen]` (broadcast over the batch).
    pub ctx: &'a Context,
    pub unit: Unit,
    pub states: &'a TeacherStates,
    pub head: Option<&'a HeadWeights>,
    pub rc: &'a RecoveryConfig,
    /// Training sequence visited by each micro-batch slot, in order.
    pub order: &'a [usize],
    /// Validation sequence indices (into the states).
    pub val: &'a [usize],
    pub device: Device,
    /// Run the forward under CUDA autocast (the weights stay f32).
    pub autocast: bool,
}

struct LayerObjective<'a, 'b> {
    job: &'b LayerJob<'a>,
    layer: &'b Layer,
}

impl LayerObjective<'_, '_> {
    fn loss_on(&self, idx: &[usize], positions: Option<&Tensor>) -> Result<Tensor> {
        let j = self.job;
        let dev = j.device;
        let x = j.states.batch(j.unit.input_boundary(), idx, dev)?;
        let y = j.states.batch(j.unit.target_boundary(), idx, dev)?;
        let out = tch::autocast(j.autocast, || {
            layer_forward(
                j.config,
                self.layer,
                j.unit.layer,
                &x,
                j.ctx,
                &mut NoTap,
                None,
            )
        });
        let head = j.head.map(HeadWeights::head);
        Ok(loss::total(
            &j.rc.loss,
            &out.to_kind(tch::Kind::Float),
            &y,
            j.rc.temperature,
            head.as_ref(),
            positions,
        ))
    }

    /// `kl_logits` positions: `kl_positions` distinct sorted time steps, seeded.
    fn positions(&self, salt: u64) -> Option<Tensor> {
        let j = self.job;
        let t = j.states.seqlen;
        if !j.rc.loss.0.contains_key(&LossKind::KlLogits) {
            return None;
        }
        let seed = j.rc.seed ^ salt.wrapping_mul(0x9E37_79B9) ^ (j.unit.layer as u64) << 40;
        loss::sample_positions(t, j.rc.kl_positions, seed, j.device)
    }
}

impl Objective for LayerObjective<'_, '_> {
    fn train_loss(&mut self, micro: usize) -> Result<Tensor> {
        let mb = self.job.rc.micro_batch;
        let idx = &self.job.order[micro * mb..(micro + 1) * mb];
        let pos = self.positions(micro as u64 + 1);
        self.loss_on(idx, pos.as_ref())
    }

    fn val_loss(&mut self) -> Result<Option<f64>> {
        if self.job.val.is_empty() {
            return Ok(None);
        }
        // Fixed positions, so validation losses compare across steps.
        let pos = self.positions(0);
        let mut sum = 0.0;
        for &i in self.job.val {
            sum += tch::no_grad(|| self.loss_on(&[i], pos.as_ref()))?.double_value(&[]);
        }
        Ok(Some(sum / self.job.val.len() as f64))
    }
}

/// Train `layer` in place for `steps` optimiser steps; `order` must cover
/// `steps * accum * micro_batch` slots.
pub fn train_layer(
    job: &LayerJob,
    layer: &Layer,
    steps: usize,
    on_step: &mut dyn FnMut(usize, f64) -> Result<()>,
) -> Result<Outcome> {
    let params = layer_params(layer);
    for p in &params {
        let _ = p.shallow_clone().set_requires_grad(true);
    }
    let sched = Schedule::new(job.rc, steps, job.rc.lr);
    let mut obj = LayerObjective { job, layer };
    train::run(params, &sched, &mut obj, &job.unit.label(), on_step)
}
