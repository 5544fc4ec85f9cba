//! The recovery stage as a whole: check the inputs, plan the units, prepare data and
//! teacher states, train (one worker per device, or in this thread), and write the
//! recovered checkpoint atomically. Finished units are kept in `<out>.partial/` under a
//! content key, so a killed run resumes from the last finished layer.

use super::config::{LayerInputs, RecoveryConfig, RecoveryMethod};
use super::data::{self, DataSet};
use super::plan::{self, Unit};
use super::record::DistillRecord;
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

/// Recover `inp.student` against `inp.teacher`; writes `inp.out` and returns its record.
pub fn recover(inp: &RecoverInputs, on: Sink) -> Result<DistillRecord> {
    let t0 = Instant::now();
    let cfg = inp.cfg;
    cfg.validate()?;
    if cfg.method == RecoveryMethod::None {
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
    let pr = read_pruned(inp.student)?;
    let teacher_cfg = ModelConfig::from_file(&crate::model::config::config_path(inp.teacher))?;
    let mut student = load_model(inp.student, inp.load)?;
    check_pair(&teacher_cfg, &student, &pr, inp)?;
    let n_teacher = teacher_cfg.num_hidden_layers as usize;
    let units = match cfg.method {
        RecoveryMethod::Lora => vec![],
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
    };
    let tok = Tokenizer::from_dir(inp.student)?;
    let kd_tokens = cfg.kd_tokens.unwrap_or(cfg.tokens);
    let budget = match cfg.method {
        RecoveryMethod::HierarchicalKd => cfg.tokens.max(kd_tokens),
        _ => cfg.tokens,
    };
    let data = data::load(&tok, cfg, Some(&pr.calib), budget)?;
    let teacher_digest = dir_digest(inp.teacher)?;
    let key = crate::hashing::hash_value(&serde_json::json!({
        "teacher": teacher_digest, "student": dir_digest(inp.student)?, "config": cfg,
        "data": data.digest(), "dtype": crate::runtime::dtype_name(inp.load.dtype),
    }));
    let mut done = resume::Partial::open(inp.out, &key)?;
    let t_teacher = Instant::now();
    // LoRA learns from the text alone: no teacher is loaded.
    let (states, teacher_cached) = if cfg.method == RecoveryMethod::Lora {
        (
            TeacherStates::empty(data.record.seqlen, teacher_cfg.hidden_size as usize),
            false,
        )
    } else {
        let teacher = load_model(inp.teacher, inp.load)?;
        teacher_states(&teacher, &teacher_digest, &data, &units, cfg, inp, on)?
    };
    let teacher_seconds = t_teacher.elapsed().as_secs_f64();
    let visits = workers::Visits::of(&data, cfg);
    let mut records = match cfg.inputs {
        LayerInputs::Teacher => workers::train_units(
            &mut student,
            &units,
            &states,
            &visits,
            cfg,
            &inp.devices,
            &mut done,
            on,
        )?,
        LayerInputs::Student => {
            let seqs: Vec<&[i64]> = data
                .train
                .iter()
                .chain(&data.val)
                .map(Vec::as_slice)
                .collect();
            let device = inp.devices.first().copied().unwrap_or(student.device);
            super::progressive::train_in_order(
                &mut student,
                &units,
                &states,
                &seqs,
                &visits,
                cfg,
                device,
                &mut done,
                on,
            )?
        }
    };
    match cfg.method {
        RecoveryMethod::HierarchicalKd => records.push(super::kd::train_kd(
            &mut student,
            &states,
            n_teacher,
            &units,
            &data,
            cfg,
            &mut done,
            on,
        )?),
        RecoveryMethod::Lora => records.push(super::lora::train_lora(
            &mut student,
            &data,
            cfg,
            &mut done,
            on,
        )?),
        _ => {}
    }
    let tokens: usize = records.iter().map(|r| r.tokens).sum();
    let (text_tokens, layer_token_passes) =
        DistillRecord::token_counts(&records, student.n_layers());
    let seconds = t0.elapsed().as_secs_f64();
    let rec = DistillRecord {
        teacher: inp.teacher.to_path_buf(),
        student: inp.student.to_path_buf(),
        config: cfg.clone(),
        correspondence: pr.corr,
        units: records,
        data: data.record.clone(),
        workers: inp
            .devices
            .iter()
            .map(|d| crate::runtime::device_name(*d))
            .collect(),
        teacher_seconds,
        teacher_cached,
        tokens,
        text_tokens,
        layer_token_passes,
        seconds,
        tokens_per_s: tokens as f64 / seconds.max(1e-9),
        peak_rss_mib: peak_rss_mib(),
        threads: tch::get_num_threads(),
        crate_version: env!("CARGO_PKG_VERSION").into(),
    };
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
    if cfg.method == RecoveryMethod::HierarchicalKd {
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
