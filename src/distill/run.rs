//! The recovery stage as a whole: check the inputs, plan the units, prepare data and
//! teacher states, train (one worker per device, or in this thread), and write the
//! recovered checkpoint atomically. Finished units are kept in `<out>.partial/` under a
//! content key, so a killed run resumes from the last finished layer.

use super::config::{LayerInputs, Recovery, RecoveryConfig};
use super::data::{self, DataSet};
use super::plan::{self, Unit};
use super::record::{DistillRecord, LayerRecord};
use super::teacher::{dir_digest, TeacherStates};
use super::{resume, workers};
use crate::calib::CalibConfig;
use crate::error::{Error, Result};
use crate::memory::peak_rss_mib;
use crate::model::load::{load_model, LoadOptions};
use crate::model::tokenizer::Tokenizer;
use crate::model::{Model, ModelConfig};
use std::path::Path;
use std::time::Instant;

/// Everything the stage reads.
pub struct RecoverInputs<'a> {
    /// The model before pruning (HF directory).
    pub teacher: &'a Path,
    /// The pruned model (HF directory with its `come.json`: correspondence, calibration).
    pub student: &'a Path,
    /// Where the recovered checkpoint (+ `distill.json`) is written, atomically.
    pub out: &'a Path,
    pub cfg: &'a RecoveryConfig,
    pub load: LoadOptions,
    /// One worker per entry (`cpu` twice: two worker threads).
    pub devices: Vec<tch::Device>,
    /// Teacher-state cache root (None: in memory, or a temp dir when large).
    pub cache_dir: Option<&'a Path>,
}

pub use crate::progress::{Event, Sink};

/// Stop between steps when the user asked to (Ctrl-C in a grid).
pub use crate::cancel::check as check_stop;

/// The student's pruning facts that recovery needs, from its `come.json`.
struct Pruned {
    corr: Vec<Vec<usize>>,
    calib: CalibConfig,
    layers_before: usize,
}

fn read_pruned(dir: &Path) -> Result<Pruned> {
    let r = plan::read_pruned(dir)?.report;
    Ok(Pruned {
        corr: r.correspondence,
        calib: r.config.calib,
        layers_before: r.target.layers_before,
    })
}

/// Teacher and student must be the same architecture, the student the teacher pruned.
fn check_pair(t: &ModelConfig, student: &Model, pr: &Pruned, inp: &RecoverInputs) -> Result<()> {
    let s = &student.config;
    let dims = |c: &ModelConfig| {
        [
            c.hidden_size,
            c.intermediate_size,
            c.num_attention_heads,
            c.num_key_value_heads,
            c.head_dim,
            c.vocab_size,
        ]
    };
    if dims(t) != dims(s) {
        return Err(Error::Invalid(format!(
            "teacher {} and student {} do not match: [hidden, intermediate, heads, kv heads, head_dim, vocab] = {:?} vs {:?}",
            inp.teacher.display(), inp.student.display(), dims(t), dims(s)
        )));
    }
    let n_teacher = t.num_hidden_layers as usize;
    if pr.layers_before != n_teacher {
        let n = pr.layers_before;
        return Err(Error::Invalid(format!(
            "{} was pruned from a {n}-layer model, but the teacher {} has {n_teacher} layers",
            inp.student.display(),
            inp.teacher.display()
        )));
    }
    if pr.corr.len() != student.n_layers() {
        return Err(Error::Invalid(format!(
            "{}: come.json lists {} layers, the checkpoint has {}",
            inp.student.display(),
            pr.corr.len(),
            student.n_layers()
        )));
    }
    Ok(())
}

/// Refuse requests the stage cannot carry out before anything is loaded: an invalid
/// config, method `none`, or student inputs spread over several workers.
fn check_request(inp: &RecoverInputs) -> Result<()> {
    let cfg = inp.cfg;
    cfg.validate()?;
    if cfg.method == Recovery::None {
        return Err(Error::Invalid(
            "recovery method is `none`: nothing to do".into(),
        ));
    }
    if cfg.inputs == LayerInputs::Student && inp.devices.len() > 1 {
        return Err(Error::Invalid(format!(
            "recovery.inputs = student trains the merged layers one after another, each on the \
             states the layers before it produce: it cannot use {} workers (use 1, or inputs = teacher)",
            inp.devices.len()
        )));
    }
    Ok(())
}

/// The layer-local units to train (none for LoRA, which trains the whole student); an
/// error when the pruning merged nothing, as there is then nothing to distil.
fn plan_units(inp: &RecoverInputs, pr: &Pruned, n_teacher: usize) -> Result<Vec<Unit>> {
    let cfg = inp.cfg;
    Ok(match cfg.method {
        Recovery::Lora(_) => vec![],
        _ => {
            let u = plan::plan(&pr.corr, n_teacher, cfg.attach)?;
            if u.is_empty() {
                return Err(Error::Invalid(format!(
                    "{}: no student layer stands for more than one original layer (correspondence {:?}, attach = {:?}): nothing to distil",
                    inp.student.display(), pr.corr, cfg.attach
                )));
            }
            u
        }
    })
}

/// The training text, tokenised with the student's tokenizer; `hierarchical+kd` loads
/// enough for the larger of its two token budgets.
fn load_data(inp: &RecoverInputs, calib: &CalibConfig) -> Result<DataSet> {
    let cfg = inp.cfg;
    let tok = Tokenizer::from_dir(inp.student)?;
    let budget = match cfg.method.kd() {
        Some(kd) => cfg.tokens.max(kd.tokens.unwrap_or(cfg.tokens)),
        None => cfg.tokens,
    };
    data::load(&tok, cfg, Some(calib), budget)
}

/// Content key of the run (both models, config, data, dtype): finished units saved
/// under another key are not reused.
fn run_key(inp: &RecoverInputs, teacher_digest: &str, data: &DataSet) -> Result<String> {
    Ok(crate::hashing::hash_value(&serde_json::json!({
        "teacher": teacher_digest, "student": dir_digest(inp.student)?,
        "config": crate::hashing::Identity::identity(inp.cfg),
        "data": data.digest(), "dtype": crate::runtime::dtype_name(inp.load.dtype),
    })))
}

/// Everything training reads once the units are planned and the data and teacher
/// states are ready.
struct Prepared {
    units: Vec<Unit>,
    data: DataSet,
    states: TeacherStates,
    n_teacher: usize,
    teacher_seconds: f64,
    teacher_cached: bool,
}

/// Load the teacher and compute (or read cached) its states at the units' boundaries;
/// LoRA learns from the text alone, so it loads no teacher and gets empty states.
fn prepare_teacher(
    inp: &RecoverInputs,
    teacher_cfg: &ModelConfig,
    digest: &str,
    data: &DataSet,
    units: &[Unit],
    on: Sink,
) -> Result<(TeacherStates, bool)> {
    if inp.cfg.method.lora().is_some() {
        Ok((
            TeacherStates::empty(data.record.seqlen, teacher_cfg.hidden_size as usize),
            false,
        ))
    } else {
        let teacher = load_model(inp.teacher, inp.load)?;
        teacher_states(&teacher, digest, data, units, inp.cfg, inp, on)
    }
}

/// Layer-local training of every unit: on teacher inputs (one worker per device), or
/// in order on the states the student's own earlier layers produce.
fn train_layers(
    student: &mut Model,
    p: &Prepared,
    inp: &RecoverInputs,
    done: &mut resume::Partial,
    on: Sink,
) -> Result<Vec<LayerRecord>> {
    let cfg = inp.cfg;
    let visits = workers::Visits::of(&p.data, cfg);
    match cfg.inputs {
        LayerInputs::Teacher => workers::train_units(
            student,
            &p.units,
            &p.states,
            &visits,
            cfg,
            &inp.devices,
            done,
            on,
        ),
        LayerInputs::Student => {
            let seqs: Vec<&[i64]> = p
                .data
                .train
                .iter()
                .chain(&p.data.val)
                .map(Vec::as_slice)
                .collect();
            let device = inp.devices.first().copied().unwrap_or(student.device);
            super::progressive::train_in_order(
                student, &p.units, &p.states, &seqs, &visits, cfg, device, done, on,
            )
        }
    }
}

/// The whole-model stage after the layer-local one, if the method has one: end-to-end
/// logit KD (`hierarchical+kd`) or LoRA.
fn train_final(
    student: &mut Model,
    p: &Prepared,
    cfg: &RecoveryConfig,
    done: &mut resume::Partial,
    on: Sink,
) -> Result<Option<LayerRecord>> {
    Ok(match cfg.method {
        Recovery::HierarchicalKd(_) => Some(super::kd::train_kd(
            student,
            &p.states,
            p.n_teacher,
            &p.units,
            &p.data,
            cfg,
            done,
            on,
        )?),
        Recovery::Lora(_) => Some(super::lora::train_lora(student, &p.data, cfg, done, on)?),
        _ => None,
    })
}

/// The run's record: what was trained, on what, where, and how fast (`t0`: stage start).
fn distill_record(
    inp: &RecoverInputs,
    correspondence: Vec<Vec<usize>>,
    records: Vec<LayerRecord>,
    p: &Prepared,
    student_layers: usize,
    t0: Instant,
) -> DistillRecord {
    let tokens: usize = records.iter().map(|r| r.tokens).sum();
    let (text_tokens, layer_token_passes) = DistillRecord::token_counts(&records, student_layers);
    let seconds = t0.elapsed().as_secs_f64();
    DistillRecord {
        teacher: inp.teacher.to_path_buf(),
        student: inp.student.to_path_buf(),
        config: inp.cfg.clone(),
        correspondence,
        units: records,
        data: p.data.record.clone(),
        workers: inp
            .devices
            .iter()
            .map(|d| crate::runtime::device_name(*d))
            .collect(),
        teacher_seconds: p.teacher_seconds,
        teacher_cached: p.teacher_cached,
        tokens,
        text_tokens,
        layer_token_passes,
        seconds,
        tokens_per_s: tokens as f64 / seconds.max(1e-9),
        peak_rss_mib: peak_rss_mib(),
        threads: tch::get_num_threads(),
        crate_version: env!("CARGO_PKG_VERSION").into(),
    }
}

/// Recover `inp.student` against `inp.teacher`; writes `inp.out` and returns its record.
pub fn recover(inp: &RecoverInputs, on: Sink) -> Result<DistillRecord> {
    let t0 = Instant::now();
    check_request(inp)?;
    let pr = read_pruned(inp.student)?;
    let teacher_cfg = ModelConfig::from_file(&crate::model::config::config_path(inp.teacher))?;
    let mut student = load_model(inp.student, inp.load)?;
    check_pair(&teacher_cfg, &student, &pr, inp)?;
    let n_teacher = teacher_cfg.num_hidden_layers as usize;
    let units = plan_units(inp, &pr, n_teacher)?;
    let data = load_data(inp, &pr.calib)?;
    let teacher_digest = dir_digest(inp.teacher)?;
    let key = run_key(inp, &teacher_digest, &data)?;
    let mut done = resume::Partial::open(inp.out, &key)?;
    let t_teacher = Instant::now();
    let (states, teacher_cached) =
        prepare_teacher(inp, &teacher_cfg, &teacher_digest, &data, &units, on)?;
    let prep = Prepared {
        units,
        data,
        states,
        n_teacher,
        teacher_seconds: t_teacher.elapsed().as_secs_f64(),
        teacher_cached,
    };
    let mut records = train_layers(&mut student, &prep, inp, &mut done, on)?;
    records.extend(train_final(&mut student, &prep, inp.cfg, &mut done, on)?);
    let rec = distill_record(inp, pr.corr, records, &prep, student.n_layers(), t0);
    done.commit(&student, inp.student, &rec)?;
    Ok(rec)
}

/// Teacher states at every boundary the units read (none for LoRA).
fn teacher_states(
    teacher: &Model,
    digest: &str,
    data: &DataSet,
    units: &[Unit],
    cfg: &RecoveryConfig,
    inp: &RecoverInputs,
    on: Sink,
) -> Result<(TeacherStates, bool)> {
    let mut b: Vec<usize> = units
        .iter()
        .flat_map(|u| [u.input_boundary(), u.target_boundary()])
        .collect();
    if cfg.method.kd().is_some() {
        b.push(teacher.n_layers());
    }
    b.sort_unstable();
    b.dedup();
    let cache = inp.cache_dir.map(|c| c.join("teacher"));
    TeacherStates::prepare(
        teacher,
        digest,
        data,
        &b,
        cache.as_deref(),
        |done, total| {
            on(Event::Items {
                what: "teacher states".into(),
                done,
                total,
            })
        },
    )
}
