//! Progressive hierarchical distillation (`recovery.inputs = student`): the merged layers
//! train in order, and each one's input is the hidden state of the student as recovered so
//! far, not the teacher's. A layer then learns to map what the student actually feeds it to
//! the teacher's state after its span, correcting the error of every layer before it; the
//! price is that layers can no longer train in parallel. Targets stay the teacher's.
//!
//! The student's states are carried forward from unit to unit: those entering layer `i`
//! are run through layers `i..j` (with any trained weights) to give those entering `j`,
//! one sequence at a time exactly as the teacher's states are computed, so a unit whose
//! preceding layers equal the teacher's sees bit-identical inputs in both modes.

use super::plan::Unit;
use super::record::LayerRecord;
use super::resume::Partial;
use super::run::{Event, Sink};
use super::teacher::TeacherStates;
use super::workers::{train_units, Visits};
use crate::error::{Error, Result};
use crate::model::forward::NoTap;
use crate::model::Model;
use tch::{Device, Kind, Tensor};

/// Train `units` in order on the student's own states; `seqs` are the token ids of every
/// sequence the states hold (training then validation, as in `states`). Finished units in
/// `done` are loaded instead of trained, and their weights feed the next unit's inputs.
#[allow(clippy::too_many_arguments)]
pub fn train_in_order(
    student: &mut Model,
    units: &[Unit],
    states: &TeacherStates,
    seqs: &[&[i64]],
    visits: &Visits,
    cfg: &super::RecoveryConfig,
    device: Device,
    done: &mut Partial,
    on: Sink,
) -> Result<Vec<LayerRecord>> {
    if seqs.len() != states.n {
        return Err(Error::Invalid(format!(
            "{} sequences for states of {}",
            seqs.len(),
            states.n
        )));
    }
    if units.windows(2).any(|w| w[1].layer <= w[0].layer) {
        return Err(Error::Invalid(format!(
            "progressive recovery needs units in layer order, got {units:?}"
        )));
    }
    let mut inputs = embeddings(student, seqs)?;
    let mut at = 0;
    let mut records = vec![];
    let total = units.len();
    for (k, u) in units.iter().enumerate() {
        inputs = advance(student, seqs, inputs, at..u.layer)?;
        at = u.layer;
        let own = states.with_states_at(u.input_boundary(), Tensor::cat(&inputs, 0))?;
        // Report the unit's place in the whole run, not in this one-unit call.
        let mut relabel = |e: Event| {
            on(match e {
                Event::Unit { label, .. } => Event::Unit {
                    index: k,
                    of: total,
                    label: format!("{label} (student inputs)"),
                },
                e => e,
            })
        };
        records.extend(train_units(
            student,
            std::slice::from_ref(u),
            &own,
            visits,
            cfg,
            &[device],
            done,
            &mut relabel,
        )?);
    }
    Ok(records)
}

/// The student's input embeddings of every sequence, `[1, seqlen, hidden]` f32 on the CPU.
fn embeddings(student: &Model, seqs: &[&[i64]]) -> Result<Vec<Tensor>> {
    tch::no_grad(|| {
        seqs.iter()
            .map(|s| {
                let ids = Tensor::from_slice(s).view([1, -1]);
                Ok(student
                    .embed_tokens(&ids)?
                    .to_kind(Kind::Float)
                    .to_device(Device::Cpu))
            })
            .collect()
    })
}

/// Run each sequence's state through `layers` of the student (its current weights).
fn advance(
    student: &Model,
    seqs: &[&[i64]],
    states: Vec<Tensor>,
    layers: std::ops::Range<usize>,
) -> Result<Vec<Tensor>> {
    if layers.is_empty() {
        return Ok(states);
    }
    tch::no_grad(|| {
        seqs.iter()
            .zip(states)
            .map(|(s, h)| {
                let ids = Tensor::from_slice(s).view([1, -1]);
                let ctx = student.context(&ids, None, None, 0)?;
                let h = h.to_device(student.device).to_kind(student.dtype);
                let out = student.run_layers(h, layers.clone(), &ctx, &mut NoTap, None);
                Ok(out.to_kind(Kind::Float).to_device(Device::Cpu))
            })
            .collect()
    })
}
