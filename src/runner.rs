//! Executes a grid: each run is claimed in the store, goes through its stages (model ->
//! prune -> eval) and is finished in one transaction with all its metrics. Shared work is
//! cached on disk by content identity: an imported model once per source file, a pruned
//! checkpoint once per prune-config hash (reused by every eval variant). Everything is
//! written to a temporary path and renamed into place, so a kill at any point leaves
//! either nothing or a complete artifact, and the store says `running` for a run whose
//! process is gone, which the next invocation re-claims.

use crate::calib;
use crate::error::{Error, Result};
use crate::eval::harness::{evaluate_task, EvalOptions, TaskResult};
use crate::eval::loglik::ScoreOptions;
use crate::eval::perplexity::{perplexity, PplResult};
use crate::eval::ppl_corpus::Corpus;
use crate::eval::tasks::{load_task, subset, TaskSource};
use crate::experiment::Experiment;
use crate::grid::{GridSpec, ModelSource, RunSpec};
use crate::model::load::{load_model, LoadOptions};
use crate::model::save::save_model;
use crate::model::tokenizer::Tokenizer;
use crate::model::{gguf, import::write_checkpoint, llama2c};
use crate::prune::prune;
use crate::track::names;
use crate::track::{Artifact, Claim, Metric, StageRecord, StageStatus, Store};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// Set when the user asks to stop (Ctrl-C): the current stage ends, the run is marked
/// interrupted and no further run starts.
pub static STOP: AtomicBool = AtomicBool::new(false);

fn check_stop() -> Result<()> {
    if STOP.load(Ordering::SeqCst) {
        return Err(Error::Invalid("interrupted".into()));
    }
    Ok(())
}

/// Reports progress; the CLI draws bars, tests ignore it.
pub trait Progress {
    fn grid(&mut self, _done: usize, _total: usize, _current: &str) {}
    fn stage(&mut self, _run: &str, _stage: &str) {}
    fn items(&mut self, _what: &str, _done: usize, _total: usize) {}
    fn note(&mut self, _line: &str) {}
}

pub struct Quiet;
impl Progress for Quiet {}

#[derive(Debug, Clone)]
pub struct RunnerOptions {
    pub db: PathBuf,
    /// Where imported and pruned checkpoints are cached.
    pub cache_dir: PathBuf,
    pub force: bool,
    /// Only runs whose name contains one of these (empty: all).
    pub only: Vec<String>,
    /// Only runs whose flattened params match every `key=value`.
    pub filter: Vec<(String, String)>,
    pub threads: Option<usize>,
}

#[derive(Debug, Default, Clone)]
pub struct Summary {
    pub total: usize,
    pub ran: usize,
    pub skipped: usize,
    pub failed: Vec<(String, String)>,
    pub busy: usize,
    pub interrupted: bool,
}

/// Runs selected by `--only` / `--filter`.
pub fn select(runs: Vec<RunSpec>, opts: &RunnerOptions) -> Vec<RunSpec> {
    runs.into_iter()
        .filter(|r| opts.only.is_empty() || opts.only.iter().any(|o| r.name.contains(o.as_str())))
        .filter(|r| {
            let p = r.params();
            opts.filter.iter().all(|(k, v)| {
                p.get(k).is_some_and(|x| match x {
                    serde_json::Value::String(s) => s == v,
                    other => &other.to_string() == v,
                })
            })
        })
        .collect()
}

pub fn run_grid(
    spec: &GridSpec,
    opts: &RunnerOptions,
    progress: &mut dyn Progress,
) -> Result<Summary> {
    let runs = select(spec.expand()?, opts);
    let store = Store::open(&opts.db)?;
    store.register(&runs)?;
    let env = crate::track::env::collect();
    let mut sum = Summary {
        total: runs.len(),
        ..Default::default()
    };
    for (i, run) in runs.iter().enumerate() {
        if STOP.load(Ordering::SeqCst) {
            sum.interrupted = true;
            break;
        }
        progress.grid(i, runs.len(), &run.name);
        let id = match store.claim(run, opts.force)? {
            Claim::Skip(_) => {
                sum.skipped += 1;
                continue;
            }
            Claim::Busy { .. } => {
                sum.busy += 1;
                continue;
            }
            Claim::Run(id) => id,
        };
        CURRENT.store(id, Ordering::SeqCst);
        let mut env = env.clone();
        env.insert("threads".into(), tch::get_num_threads().to_string());
        let exp = &run.experiment;
        env.insert("device".into(), device_description(&exp.runtime.device));
        if let Some(p) = &exp.prune {
            env.insert("seed.prune".into(), p.seed.to_string());
            env.insert("seed.calibration".into(), p.calib.seed.to_string());
        }
        env.insert(
            "seed.eval_subset".into(),
            exp.eval
                .seed
                .map_or("none (first N)".into(), |s| s.to_string()),
        );
        store.record_env(id, &env)?;
        match execute(spec, run, id, &store, opts, progress) {
            Ok((metrics, artifacts)) => {
                store.finish(id, &metrics, &artifacts)?;
                sum.ran += 1;
            }
            Err(e) if STOP.load(Ordering::SeqCst) => {
                store.interrupt(id)?;
                sum.interrupted = true;
                progress.note(&format!("{}: interrupted ({e})", run.name));
                break;
            }
            Err(e) => {
                store.fail(id, &e.to_string())?;
                progress.note(&format!("{}: FAILED: {e}", run.name));
                sum.failed.push((run.name.clone(), e.to_string()));
            }
        }
        CURRENT.store(-1, Ordering::SeqCst);
    }
    progress.grid(runs.len(), runs.len(), "");
    Ok(sum)
}

/// "cpu", or the CUDA device index with the GPU count.
fn device_description(spec: &str) -> String {
    match crate::runtime::parse_device(spec) {
        Ok(tch::Device::Cuda(n)) => format!("cuda:{n} of {} GPU(s)", tch::Cuda::device_count()),
        Ok(d) => crate::runtime::device_name(d),
        Err(_) => spec.to_string(),
    }
}

/// The run being executed (for the Ctrl-C handler), -1 when none.
pub static CURRENT: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(-1);

fn stage<T>(
    store: &Store,
    id: i64,
    name: &str,
    cache_key: Option<String>,
    f: impl FnOnce() -> Result<(T, Option<String>, bool)>,
) -> Result<T> {
    check_stop()?;
    let t0 = Instant::now();
    let r = f();
    let (status, output, out) = match r {
        Ok((v, output, reused)) => (
            if reused {
                StageStatus::Reused
            } else {
                StageStatus::Finished
            },
            output,
            Ok(v),
        ),
        Err(e) => (StageStatus::Failed, None, Err(e)),
    };
    store.record_stage(
        id,
        &StageRecord {
            stage: name.into(),
            status,
            seconds: Some(t0.elapsed().as_secs_f64()),
            cache_key,
            output,
        },
    )?;
    out
}

type Outcome = (Vec<Metric>, Vec<Artifact>);

fn execute(
    spec: &GridSpec,
    run: &RunSpec,
    id: i64,
    store: &Store,
    opts: &RunnerOptions,
    progress: &mut dyn Progress,
) -> Result<Outcome> {
    let exp = &run.experiment;
    let lo = LoadOptions {
        device: crate::runtime::parse_device(&exp.runtime.device)?,
        dtype: crate::runtime::parse_dtype(&exp.runtime.dtype)?,
    };
    progress.stage(&run.name, "model");
    let source = spec.model_source(&exp.model)?;
    let base = stage(store, id, "model", None, || {
        let (dir, reused) = prepare_model(&source, &opts.cache_dir.join("models"), &exp.model)?;
        Ok((dir.clone(), Some(dir.display().to_string()), reused))
    })?;
    let mut metrics = vec![];
    let mut artifacts = vec![];
    let model_dir = match &exp.prune {
        None => base.clone(),
        Some(pc) => {
            progress.stage(&run.name, "prune");
            let key = exp.prune_hash().unwrap_or_default();
            let out = opts.cache_dir.join("pruned").join(&key[..16]);
            let dir = stage(store, id, "prune", Some(key.clone()), || {
                let reused = out.join("come.json").exists();
                if !reused {
                    prune_into(&base, pc, lo, &out, progress)?;
                }
                Ok((out.clone(), Some(out.display().to_string()), reused))
            })?;
            let rec: serde_json::Value =
                serde_json::from_str(&crate::error::read_to_string(dir.join("come.json"))?)
                    .map_err(|e| Error::format(dir.join("come.json"), e.to_string()))?;
            let rep = &rec["report"];
            // The store refuses NaN: record only what come.json holds.
            if let Some(s) = rep["seconds"].as_f64() {
                metrics.push(Metric::new("", names::RUN_PRUNE_SECONDS, s));
            }
            if let Some(n) = rep["target"]["layers_removed"].as_f64() {
                metrics.push(Metric::new("", "layers_removed", n));
            }
            artifacts.push(Artifact::from_path(dir.join("come.json"), "come.json")?);
            dir
        }
    };
    progress.stage(&run.name, "eval");
    let (model, tok) = (
        load_model(&model_dir, lo)?,
        Tokenizer::from_dir(&model_dir)?,
    );
    metrics.push(Metric::new("", names::RUN_LAYERS, model.n_layers() as f64));
    metrics.push(Metric::new(
        "",
        names::RUN_PARAMS,
        model.num_params() as f64,
    ));
    let t0 = Instant::now();
    let (tasks, ppl) = stage(store, id, "eval", None, || {
        let r = evaluate(&model, &tok, exp, store, id, progress)?;
        Ok((r, None, false))
    })?;
    metrics.push(Metric::new(
        "",
        names::RUN_EVAL_SECONDS,
        t0.elapsed().as_secs_f64(),
    ));
    // Every dataset file read, with its sha256, joins the run's environment.
    let mut data_env = std::collections::BTreeMap::new();
    for t in &tasks {
        for (path, sha) in &t.files {
            data_env.insert(format!("data.sha256:{}", path.display()), sha.clone());
        }
    }
    for (corpus, _) in &ppl {
        let p = corpus.path();
        data_env.insert(
            format!("data.sha256:{}", p.display()),
            crate::track::env::sha256_file(p)?,
        );
    }
    if let Some(pc) = &exp.prune {
        let p = pc.calib.source_path();
        data_env.insert(
            format!("data.sha256:{}", p.display()),
            crate::track::env::sha256_file(&p)?,
        );
    }
    store.record_env(id, &data_env)?;
    for t in &tasks {
        for (m, v) in &t.metrics {
            let mut x = Metric::new(&t.task, m, v.value);
            if v.stderr.is_finite() {
                x = x.with_stderr(v.stderr);
            }
            metrics.push(x);
        }
        metrics.push(Metric::new(&t.task, names::N, t.n_docs as f64));
    }
    for (corpus, p) in &ppl {
        let (task, metric) = match corpus {
            Corpus::C4(_) => (names::C4, names::PPL_C4),
            _ => (names::WIKITEXT2, names::PPL_WIKITEXT2),
        };
        metrics.push(Metric::new(task, metric, p.ppl).with_context(format!("seqlen={}", p.seqlen)));
        metrics.push(Metric::new(task, names::N, p.windows as f64));
    }
    Ok((metrics, artifacts))
}

/// A perplexity and the corpus it was measured on.
type CorpusPpl = (Corpus, PplResult);

fn evaluate(
    model: &crate::model::Model,
    tok: &Tokenizer,
    exp: &Experiment,
    store: &Store,
    id: i64,
    progress: &mut dyn Progress,
) -> Result<(Vec<TaskResult>, Vec<CorpusPpl>)> {
    let e = &exp.eval;
    let src = TaskSource {
        mmlu_fewshot: e.mmlu_fewshot,
        ..TaskSource::default()
    };
    let mut opts = EvalOptions {
        score: ScoreOptions {
            max_length: model.config.max_position_embeddings.max(1) as usize,
            token_budget: e.token_budget.initial_tokens(model.device),
        },
        add_special: true,
    };
    let mut out = vec![];
    for t in &e.tasks {
        check_stop()?;
        let data = load_task(t, &src)?;
        let idx = subset(data.docs.len(), e.limit, e.fraction, e.seed);
        let mut last = Instant::now();
        let before = opts.score.token_budget;
        progress.items(t, 0, idx.len());
        let r = evaluate_task(model, tok, &data, &idx, &mut opts, |done, total| {
            progress.items(t, done, total);
            if last.elapsed().as_secs() >= 20 {
                let _ = store.heartbeat(id);
                last = Instant::now();
            }
        })?;
        if opts.score.token_budget < before {
            progress.note(&format!(
                "{t}: out of memory at {before} tokens per batch; continued with {}",
                opts.score.token_budget
            ));
        }
        out.push(r);
    }
    let mut ppl = vec![];
    if let Some(seqlen) = e.ppl_seqlen {
        let mut corpora = vec![Corpus::Wikitext2(crate::paths::wikitext2_test())];
        if e.ppl_c4 {
            corpora.push(Corpus::C4(crate::paths::c4_validation()));
        }
        for corpus in corpora {
            check_stop()?;
            // GPTQ-style: the tokenizer's default special tokens (BOS for LLaMA).
            let tokens = tok.encode(&corpus.text()?, true)?;
            let name = corpus.name();
            let mut last = Instant::now();
            let r = perplexity(
                model,
                &tokens,
                seqlen,
                e.ppl_windows.or(corpus.default_windows()),
                1,
                |d, n| {
                    progress.items(&name, d, n);
                    if last.elapsed().as_secs() >= 20 {
                        let _ = store.heartbeat(id);
                        last = Instant::now();
                    }
                },
            )?;
            ppl.push((corpus, r));
        }
    }
    Ok((out, ppl))
}

fn prune_into(
    base: &Path,
    pc: &crate::prune::PruneConfig,
    lo: LoadOptions,
    out: &Path,
    progress: &mut dyn Progress,
) -> Result<()> {
    let mut model = load_model(base, lo)?;
    let tok = Tokenizer::from_dir(base)?;
    let cal = calib::sample(&tok, &pc.calib)?;
    let report = prune(&mut model, cal, pc, |done, what| {
        progress.items("prune steps", done, 0);
        progress.note(&format!("  {what}"));
    })?;
    let tmp = out.with_extension(format!("partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    save_model(&model, &tmp, Some(base))?;
    let rec = serde_json::json!({ "source_model": base, "report": report, "crate_version": env!("CARGO_PKG_VERSION") });
    let path = tmp.join("come.json");
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&rec).unwrap_or_default() + "\n",
    )
    .map_err(|e| Error::io(&path, e))?;
    if out.exists() {
        let _ = std::fs::remove_dir_all(out);
    }
    std::fs::rename(&tmp, out).map_err(|e| Error::io(out, e))?;
    Ok(())
}

fn short_hash(path: &Path) -> Result<String> {
    let bytes = crate::error::read_file(path)?;
    Ok(hex::encode(Sha256::digest(&bytes))[..12].to_string())
}

/// An HF directory for `source`: used as is, or imported once into `cache` (keyed by the
/// source file's content hash) and reused. Returns (dir, reused).
pub fn prepare_model(source: &ModelSource, cache: &Path, name: &str) -> Result<(PathBuf, bool)> {
    let (dir, build): (
        PathBuf,
        Box<dyn Fn() -> Result<crate::model::import::ImportedCheckpoint>>,
    ) = match source {
        ModelSource::Path(p) => return Ok((p.clone(), true)),
        ModelSource::Gguf(f) => {
            let f2 = f.clone();
            (
                cache.join(format!("{name}-{}", short_hash(f)?)),
                Box::new(move || gguf::import(&f2)),
            )
        }
        ModelSource::Llama2c { model, tokenizer } => {
            let (m, t) = (model.clone(), tokenizer.clone());
            (
                cache.join(format!("{name}-{}", short_hash(model)?)),
                Box::new(move || llama2c::import(&m, &t)),
            )
        }
    };
    if dir.join("config.json").exists() {
        return Ok((dir, true));
    }
    let tmp = dir.with_extension(format!("partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    write_checkpoint(&build()?, &tmp)?;
    if std::fs::rename(&tmp, &dir).is_err() {
        // Another process finished the same import first: keep theirs.
        let _ = std::fs::remove_dir_all(&tmp);
    }
    Ok((dir, false))
}
