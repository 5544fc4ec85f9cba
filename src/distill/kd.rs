//! End-to-end logit KD after the layer-local stage (`hierarchical+kd`): the whole student
//! runs on the training tokens, only its merged layers train, and the loss is the KL
//! between the teacher's and the student's next-token distributions (temperature T,
//! sampled positions), the teacher's read from its cached last-layer states.

use super::config::RecoveryConfig;
use super::data::{visit_order, DataSet};
use super::layer::layer_params;
use super::loss::{kl, sample_positions};
use super::plan::Unit;
use super::record::LayerRecord;
use super::resume::{assign_layer, Partial};
use super::run::{Event, Sink};
use super::teacher::TeacherStates;
use super::train::{self, Objective, Schedule};
use crate::error::{Error, Result};
use crate::model::forward::NoTap;
use crate::model::Model;
use std::time::Instant;
use tch::{Kind, Tensor};

/// Token ids of sequences `idx` (training first, then validation), `[B, T]`.
pub fn ids_batch(data: &DataSet, idx: &[usize], dev: tch::Device) -> Tensor {
    let n = data.train.len();
    let rows: Vec<Tensor> = idx
        .iter()
        .map(|&i| {
            let s = if i < n {
                &data.train[i]
            } else {
                &data.val[i - n]
            };
            Tensor::from_slice(s)
        })
        .collect();
    Tensor::stack(&rows, 0).to_device(dev)
}

struct KdObjective<'a> {
    student: &'a Model,
    states: &'a TeacherStates,
    final_boundary: usize,
    data: &'a DataSet,
    order: Vec<usize>,
    cfg: &'a RecoveryConfig,
}

impl KdObjective<'_> {
    fn loss_on(&self, idx: &[usize], salt: u64) -> Result<Tensor> {
        let dev = self.student.device;
        let ids = ids_batch(self.data, idx, dev);
        let h = self.student.forward_hidden(&ids, None, &mut NoTap)?;
        let y = self.states.batch(self.final_boundary, idx, dev)?;
        let pos = sample_positions(
            self.states.seqlen,
            self.cfg.kl_positions,
            self.cfg.seed ^ salt,
            dev,
        );
        let (h, y) = match &pos {
            Some(p) => (h.index_select(1, p), y.index_select(1, p)),
            None => (h, y),
        };
        let logits = |x: &Tensor| {
            self.student
                .lm_head(&self.student.final_norm(x))
                .to_kind(Kind::Float)
        };
        let teacher = tch::no_grad(|| logits(&y.to_kind(self.student.dtype)));
        Ok(kl(&logits(&h), &teacher, self.cfg.temperature))
    }
}

impl Objective for KdObjective<'_> {
    fn train_loss(&mut self, micro: usize) -> Result<Tensor> {
        let mb = self.cfg.micro_batch;
        let idx = self.order[micro * mb..(micro + 1) * mb].to_vec();
        self.loss_on(&idx, micro as u64 + 1)
    }

    fn val_loss(&mut self) -> Result<Option<f64>> {
        let n = self.data.train.len();
        if self.data.val.is_empty() {
            return Ok(None);
        }
        let mut sum = 0.0;
        for i in n..n + self.data.val.len() {
            sum += tch::no_grad(|| self.loss_on(&[i], 0))?.double_value(&[]);
        }
        Ok(Some(sum / self.data.val.len() as f64))
    }
}

/// The merged layers' tensors, named `<layer>.<tensor>`: what a finished KD run saves.
fn unit_tensors(student: &Model, units: &[Unit]) -> Vec<(String, Tensor)> {
    units
        .iter()
        .flat_map(|u| {
            student.layers[u.layer]
                .named_tensors()
                .into_iter()
                .map(move |(n, t)| (format!("{}.{n}", u.layer), t.shallow_clone()))
        })
        .collect()
}

/// Put a finished run's saved tensors (named as by [`unit_tensors`]) back into the
/// student's merged layers, so a resumed run skips the KD stage.
fn restore_units(student: &Model, units: &[Unit], tensors: &[(String, Tensor)]) -> Result<()> {
    for u in units {
        let own: Vec<(String, Tensor)> = tensors
            .iter()
            .filter_map(|(n, t)| {
                n.strip_prefix(&format!("{}.", u.layer))
                    .map(|r| (r.to_string(), t.shallow_clone()))
            })
            .collect();
        assign_layer(&student.layers[u.layer], &own)?;
    }
    Ok(())
}

/// The merged layers' parameters, marked trainable; the rest of the student stays frozen.
fn trainable_params(student: &Model, units: &[Unit]) -> Vec<Tensor> {
    let params: Vec<Tensor> = units
        .iter()
        .flat_map(|u| layer_params(&student.layers[u.layer]))
        .collect();
    for p in &params {
        let _ = p.shallow_clone().set_requires_grad(true);
    }
    params
}

/// Logit KD of the whole student, training only the layers of `units`.
#[allow(clippy::too_many_arguments)]
pub fn train_kd(
    student: &mut Model,
    states: &TeacherStates,
    final_boundary: usize,
    units: &[Unit],
    data: &DataSet,
    cfg: &RecoveryConfig,
    done: &mut Partial,
    on: Sink,
) -> Result<LayerRecord> {
    if let Some((tensors, rec)) = done.finished("kd", student.device)? {
        restore_units(student, units, &tensors)?;
        on(Event::Note(
            "end-to-end KD: finished earlier, resumed".into(),
        ));
        return Ok(rec);
    }
    let kd = cfg.method.kd().ok_or_else(|| {
        Error::Invalid("end-to-end KD needs recovery.method = hierarchical+kd".into())
    })?;
    let steps = cfg.steps_for(kd.tokens.unwrap_or(cfg.tokens));
    let params = trainable_params(student, units);
    let order = visit_order(
        data.train.len(),
        steps * cfg.accum * cfg.micro_batch,
        cfg.seed ^ 0xcd,
    );
    on(Event::Unit {
        index: units.len(),
        of: units.len() + 1,
        label: "end-to-end KD".into(),
    });
    let t0 = Instant::now();
    let sched = Schedule::new(cfg, steps, kd.lr);
    let per_step = cfg.tokens_per_step();
    let mut obj = KdObjective {
        student,
        states,
        final_boundary,
        data,
        order,
        cfg,
    };
    let mut on_step = |s: usize, loss: f64| -> Result<()> {
        super::run::check_stop()?;
        let rate = ((s + 1) * per_step) as f64 / t0.elapsed().as_secs_f64().max(1e-9);
        on(Event::Step {
            unit: "kd".into(),
            step: s + 1,
            steps,
            loss,
            tokens_per_s: rate,
        });
        Ok(())
    };
    let out = train::run(params, &sched, &mut obj, "end-to-end KD", &mut on_step)?;
    let seconds = t0.elapsed().as_secs_f64();
    let rec = LayerRecord::from_outcome(None, None, steps, steps * per_step, out, seconds);
    let saved = unit_tensors(student, units);
    let refs: Vec<(String, &Tensor)> = saved.iter().map(|(n, t)| (n.clone(), t)).collect();
    done.save("kd", &refs, &rec)?;
    Ok(rec)
}
