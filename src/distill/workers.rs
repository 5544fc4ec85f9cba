//! Hierarchical units on one or several workers. Each worker (a thread bound to one
//! device) trains the units assigned to it round-robin, on its own copies of the layer,
//! the rotary tables and the head, and reports through a channel; the results are the
//! same whatever the number of workers, because every unit sees the same data order and
//! seed and runs with the same intra-op thread count.

use super::config::{LossKind, RecoveryConfig};
use super::data::{visit_order, DataSet};
use super::layer::{train_layer, HeadWeights, LayerJob};
use super::plan::Unit;
use super::record::LayerRecord;
use super::resume::{assign_layer, Partial};
use super::run::{Event, Sink};
use super::teacher::TeacherStates;
use crate::error::{Error, Result};
use crate::model::forward::{AttnMask, Context};
use crate::model::{Layer, Model, ModelConfig};
use std::sync::mpsc;
use std::time::Instant;
use tch::{Device, Tensor};

enum Msg {
    Event(Event),
    Done(usize, Box<Layer>, LayerRecord),
    Failed(Error),
}

/// What one worker owns.
struct Worker {
    device: Device,
    jobs: Vec<(usize, Unit, Layer)>,
    states: TeacherStates,
    cos: Tensor,
    sin: Tensor,
    head: Option<HeadWeights>,
    /// bf16/f16 models on CUDA: forward under autocast, f32 master weights.
    autocast: bool,
}

pub fn unit_name(u: &Unit) -> String {
    format!("layer-{}", u.layer)
}

/// What every unit of a run visits: training sequences in order (one per micro-batch
/// slot), the validation sequences (indices into the states) and the optimiser steps.
/// The same for every unit, so layers stay comparable.
#[derive(Debug, Clone, PartialEq)]
pub struct Visits {
    pub order: Vec<usize>,
    pub val: Vec<usize>,
    pub steps: usize,
}

impl Visits {
    /// The run's visits: `cfg.tokens` per unit over `data`'s training sequences, in the
    /// seeded order, validated on `data`'s validation sequences.
    pub fn of(data: &DataSet, cfg: &RecoveryConfig) -> Visits {
        let n_train = data.train.len();
        let steps = cfg.steps_for(cfg.tokens);
        Visits {
            order: visit_order(n_train, steps * cfg.accum * cfg.micro_batch, cfg.seed),
            val: (n_train..n_train + data.val.len()).collect(),
            steps,
        }
    }
}

/// Train every unit not already finished in `done`; finished ones are loaded into
/// `student`. Returns the records in unit order.
#[allow(clippy::too_many_arguments)]
pub fn train_units(
    student: &mut Model,
    units: &[Unit],
    states: &TeacherStates,
    visits: &Visits,
    cfg: &RecoveryConfig,
    devices: &[Device],
    done: &mut Partial,
    on: Sink,
) -> Result<Vec<LayerRecord>> {
    let mut records: Vec<Option<LayerRecord>> = vec![None; units.len()];
    let mut pending = vec![];
    for (k, u) in units.iter().enumerate() {
        match done.finished(&unit_name(u), student.device)? {
            Some((tensors, rec)) => {
                assign_layer(&student.layers[u.layer], &tensors)?;
                on(Event::Note(format!(
                    "{}: finished earlier, resumed",
                    u.label()
                )));
                records[k] = Some(rec);
            }
            None => pending.push(k),
        }
    }
    let devices = if devices.is_empty() {
        vec![student.device]
    } else {
        devices.to_vec()
    };
    let workers = make_workers(student, units, &pending, states, cfg, &devices)?;
    let (order, val, steps) = (&visits.order, &visits.val, visits.steps);
    let threads = tch::get_num_threads();
    let (tx, rx) = mpsc::channel::<Msg>();
    let config = &student.config;
    let done_ref: &Partial = done;
    let total = units.len();
    std::thread::scope(|scope| -> Result<()> {
        for w in workers {
            let tx = tx.clone();
            scope.spawn(move || {
                tch::set_num_threads(threads);
                if let Err(e) = run_worker(w, config, cfg, order, val, steps, total, done_ref, &tx)
                {
                    let _ = tx.send(Msg::Failed(e));
                }
            });
        }
        drop(tx);
        let mut first_err = None;
        for msg in rx {
            match msg {
                Msg::Event(e) => on(e),
                Msg::Done(k, layer, rec) => {
                    let i = units[k].layer;
                    student.layers[i] = convert_layer(&layer, student.device, student.dtype);
                    records[k] = Some(rec);
                }
                Msg::Failed(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    })?;
    Ok(records.into_iter().flatten().collect())
}

/// A fresh copy of `layer` on `dev` as `kind` (new storage: training never touches the
/// source). Workers train f32 master copies whatever the model's dtype.
fn convert_layer(layer: &Layer, dev: Device, kind: tch::Kind) -> Layer {
    layer.map_tensors(&|t| t.to_device(dev).to_kind(kind).copy())
}

/// Round-robin assignment of the pending units to one worker per device.
fn make_workers(
    student: &Model,
    units: &[Unit],
    pending: &[usize],
    states: &TeacherStates,
    cfg: &RecoveryConfig,
    devices: &[Device],
) -> Result<Vec<Worker>> {
    let t = states.seqlen as i64;
    let ids = Tensor::zeros([1, t], (tch::Kind::Int64, student.device));
    let base = student.context(&ids, None, None, 0)?;
    let needs_head = cfg.loss.0.contains_key(&LossKind::KlLogits);
    let mut workers: Vec<Worker> = devices
        .iter()
        .map(|&d| Worker {
            device: d,
            jobs: vec![],
            states: states.handle(),
            cos: base.cos.to_device(d).to_kind(tch::Kind::Float),
            sin: base.sin.to_device(d).to_kind(tch::Kind::Float),
            head: needs_head.then(|| HeadWeights {
                norm: student.norm.to_device(d).to_kind(tch::Kind::Float),
                eps: student.config.rms_norm_eps,
                weight: student.head_weight().to_device(d).to_kind(tch::Kind::Float),
            }),
            autocast: student.dtype != tch::Kind::Float && d.is_cuda(),
        })
        .collect();
    let n = workers.len();
    for (j, &k) in pending.iter().enumerate() {
        let u = units[k];
        let w = &mut workers[j % n];
        let layer = convert_layer(&student.layers[u.layer], w.device, tch::Kind::Float);
        w.jobs.push((k, u, layer));
    }
    workers.retain(|w| !w.jobs.is_empty());
    Ok(workers)
}

#[allow(clippy::too_many_arguments)]
fn run_worker(
    w: Worker,
    config: &ModelConfig,
    cfg: &RecoveryConfig,
    order: &[usize],
    val: &[usize],
    steps: usize,
    total: usize,
    done: &Partial,
    tx: &mpsc::Sender<Msg>,
) -> Result<()> {
    let ctx = Context {
        cos: w.cos,
        sin: w.sin,
        mask: AttnMask::Causal,
        valid: None,
        unpadded: None,
    };
    for (k, unit, layer) in w.jobs {
        let label = unit.label();
        let _ = tx.send(Msg::Event(Event::Unit {
            index: k,
            of: total,
            label: label.clone(),
        }));
        let job = LayerJob {
            config,
            ctx: &ctx,
            unit,
            states: &w.states,
            head: w.head.as_ref(),
            rc: cfg,
            order,
            val,
            device: w.device,
            autocast: w.autocast,
        };
        let t0 = Instant::now();
        let per_step = cfg.tokens_per_step();
        let mut on_step = |s: usize, loss: f64| -> Result<()> {
            super::run::check_stop()?;
            let rate = ((s + 1) * per_step) as f64 / t0.elapsed().as_secs_f64().max(1e-9);
            let _ = tx.send(Msg::Event(Event::Step {
                unit: label.clone(),
                step: s + 1,
                steps,
                loss,
                tokens_per_s: rate,
            }));
            Ok(())
        };
        let out = train_layer(&job, &layer, steps, &mut on_step)?;
        let seconds = t0.elapsed().as_secs_f64();
        let tokens = steps * per_step;
        let originals = Some((unit.first, unit.last));
        let rec =
            LayerRecord::from_outcome(Some(unit.layer), originals, steps, tokens, out, seconds);
        done.save(&unit_name(&unit), &layer.named_tensors(), &rec)?;
        let _ = tx.send(Msg::Done(k, Box::new(layer), rec));
    }
    Ok(())
}
