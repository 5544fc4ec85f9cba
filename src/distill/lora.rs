//! The LoRA baseline (Shortened LLaMA's recovery): adapters on the seven projections of
//! every layer, next-token cross-entropy on the same data and token budget as the
//! layer-local stage, merged into the weights at the end so the checkpoint is plain.
//! A is drawn as PEFT initialises it (uniform in +-1/sqrt(in), our seeded generator),
//! B starts at zero, so the first forward equals the pruned model's.

use super::config::{LoraSettings, RecoveryConfig};
use super::data::{visit_order, DataSet};
use super::kd::ids_batch;
use super::record::LayerRecord;
use super::resume::Partial;
use super::run::{check_stop, Event, Sink};
use super::train::{self, Objective, Schedule};
use crate::error::{Error, Result};
use crate::model::layer::Adapter;
use crate::model::Model;
use crate::rng::SplitMix64;
use std::time::Instant;
use tch::{Kind, Tensor};

/// Attach fresh adapters to every projection; returns their tensors (A, B per adapter).
pub fn attach(model: &mut Model, lora: &LoraSettings, seed: u64) -> Vec<Tensor> {
    let mut rng = SplitMix64::new(seed ^ 0x10aa);
    let (r, dev) = (lora.rank as i64, model.device);
    let mut params = vec![];
    for layer in &mut model.layers {
        for (_, lin) in layer.projections_mut() {
            let size = lin.weight.size();
            let (out, inp) = (size[0], size[1]);
            let bound = 1.0 / (inp as f64).sqrt();
            let vals: Vec<f32> = (0..r * inp)
                .map(|_| ((rng.unit() * 2.0 - 1.0) * bound) as f32)
                .collect();
            let a = Tensor::from_slice(&vals)
                .view([r, inp])
                .to_device(dev)
                .set_requires_grad(true);
            let b = Tensor::zeros([out, r], (Kind::Float, dev)).set_requires_grad(true);
            params.push(a.shallow_clone());
            params.push(b.shallow_clone());
            lin.adapter = Some(Adapter {
                a,
                b,
                scale: lora.alpha / lora.rank as f64,
                dropout: lora.dropout,
                training: true,
            });
        }
    }
    params
}

fn set_training(model: &mut Model, on: bool) {
    for layer in &mut model.layers {
        for (_, lin) in layer.projections_mut() {
            if let Some(a) = lin.adapter.as_mut() {
                a.training = on;
            }
        }
    }
}

/// Mean next-token cross-entropy of `ids` `[B, T]` (positions 0..T-1 predict 1..T).
pub fn lm_loss(model: &Model, ids: &Tensor) -> Result<Tensor> {
    let t = ids.size()[1];
    let logits = model.forward(ids, None)?.to_kind(Kind::Float);
    let v = logits.size()[2];
    let pred = logits.narrow(1, 0, t - 1).reshape([-1, v]);
    let target = ids.narrow(1, 1, t - 1).reshape([-1]);
    Ok(pred.cross_entropy_for_logits(&target))
}

struct LoraObjective<'a> {
    model: &'a mut Model,
    data: &'a DataSet,
    order: Vec<usize>,
    mb: usize,
}

impl Objective for LoraObjective<'_> {
    fn train_loss(&mut self, micro: usize) -> Result<Tensor> {
        let idx = &self.order[micro * self.mb..(micro + 1) * self.mb];
        lm_loss(self.model, &ids_batch(self.data, idx, self.model.device))
    }

    fn val_loss(&mut self) -> Result<Option<f64>> {
        if self.data.val.is_empty() {
            return Ok(None);
        }
        set_training(self.model, false);
        let n = self.data.train.len();
        let mut sum = 0.0;
        for i in n..n + self.data.val.len() {
            let ids = ids_batch(self.data, &[i], self.model.device);
            sum += tch::no_grad(|| lm_loss(self.model, &ids))?.double_value(&[]);
        }
        set_training(self.model, true);
        Ok(Some(sum / self.data.val.len() as f64))
    }
}

/// Train LoRA adapters on the whole student and merge them into its weights.
pub fn train_lora(
    student: &mut Model,
    data: &DataSet,
    cfg: &RecoveryConfig,
    done: &mut Partial,
    on: Sink,
) -> Result<LayerRecord> {
    if student.dtype != Kind::Float {
        return Err(Error::Invalid(
            "LoRA recovery runs in f32 (use --dtype f32)".into(),
        ));
    }
    let lora = cfg
        .method
        .lora()
        .ok_or_else(|| Error::Invalid("LoRA training needs recovery.method = lora".into()))?;
    tch::manual_seed(cfg.seed as i64);
    let params = attach(student, lora, cfg.seed);
    if let Some((tensors, rec)) = done.finished("lora", student.device)? {
        load_adapters(student, &tensors)?;
        merge(student);
        on(Event::Note("LoRA: finished earlier, resumed".into()));
        return Ok(rec);
    }
    let steps = cfg.steps_for(cfg.tokens);
    let order = visit_order(
        data.train.len(),
        steps * cfg.accum * cfg.micro_batch,
        cfg.seed,
    );
    on(Event::Unit {
        index: 0,
        of: 1,
        label: "LoRA (all layers)".into(),
    });
    let t0 = Instant::now();
    let per_step = cfg.tokens_per_step();
    let sched = Schedule::new(cfg, steps, lora.lr);
    let mut on_step = |s: usize, loss: f64| -> Result<()> {
        check_stop()?;
        let rate = ((s + 1) * per_step) as f64 / t0.elapsed().as_secs_f64().max(1e-9);
        on(Event::Step {
            unit: "lora".into(),
            step: s + 1,
            steps,
            loss,
            tokens_per_s: rate,
        });
        Ok(())
    };
    let mut obj = LoraObjective {
        model: student,
        data,
        order,
        mb: cfg.micro_batch,
    };
    let out = train::run(params, &sched, &mut obj, "LoRA", &mut on_step)?;
    let seconds = t0.elapsed().as_secs_f64();
    let rec = LayerRecord::from_outcome(None, None, steps, steps * per_step, out, seconds);
    let saved = adapter_tensors(student);
    let refs: Vec<(String, &Tensor)> = saved.iter().map(|(n, t)| (n.clone(), t)).collect();
    done.save("lora", &refs, &rec)?;
    merge(student);
    Ok(rec)
}

fn adapter_tensors(model: &mut Model) -> Vec<(String, Tensor)> {
    let mut out = vec![];
    for (i, layer) in model.layers.iter_mut().enumerate() {
        for (name, lin) in layer.projections_mut() {
            if let Some(a) = &lin.adapter {
                out.push((format!("{i}.{name}.lora_a"), a.a.detach()));
                out.push((format!("{i}.{name}.lora_b"), a.b.detach()));
            }
        }
    }
    out
}

fn load_adapters(model: &mut Model, tensors: &[(String, Tensor)]) -> Result<()> {
    for (i, layer) in model.layers.iter_mut().enumerate() {
        for (name, lin) in layer.projections_mut() {
            let Some(ad) = lin.adapter.as_mut() else {
                continue;
            };
            for (suffix, dst) in [("lora_a", &ad.a), ("lora_b", &ad.b)] {
                let key = format!("{i}.{name}.{suffix}");
                let src = tensors
                    .iter()
                    .find(|(n, _)| *n == key)
                    .ok_or_else(|| Error::Invalid(format!("saved LoRA adapters lack `{key}`")))?;
                tch::no_grad(|| dst.shallow_clone().copy_(&src.1));
            }
        }
    }
    Ok(())
}

fn merge(model: &mut Model) {
    for layer in &mut model.layers {
        for (_, lin) in layer.projections_mut() {
            lin.merge_adapter();
        }
    }
}
