//! The eval stage of a run: its inputs read and checked before the model loads (shared
//! with the `eval` command), the evaluation ([`super::evaluate`]), and what the store
//! keeps of it: accuracies with standard errors, scoring profiles, perplexities, latency,
//! per-document scores and the sha256 of every data file read.

use super::contract::{data_env_entry, Done, Stage, StageCtx, StageName};
use super::eval::{evaluate, EvalHooks, EvalInputs, EvalOutcome, PplOutcome, PplText};
use crate::error::{Error, Result};
use crate::eval::harness::TaskResult;
use crate::eval::ppl_corpus::Corpus;
use crate::eval::tasks::{load_task, TaskData, TaskSource};
use crate::experiment::EvalConfig;
use crate::measure::{DocScore, Metric};
use crate::model::load::load_model;
use crate::model::tokenizer::Tokenizer;
use crate::names;
use crate::progress::{Event, Sink};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Task data and perplexity texts, read and checked (before any model loads, so that bad
/// input fails fast).
pub struct EvalData {
    pub tasks: Vec<TaskData>,
    pub ppl: Vec<PplText>,
}

impl EvalData {
    pub fn read(tasks: &[String], src: &TaskSource, corpora: Vec<Corpus>) -> Result<EvalData> {
        let mut ppl = Vec::with_capacity(corpora.len());
        for c in corpora {
            if matches!(c, Corpus::C4(_)) && !c.path().is_file() {
                return Err(Error::Invalid(format!(
                    "c4 perplexity: {} does not exist (no C4 copy is shipped: pass \
                     --ppl c4=PATH or set COME_C4)",
                    c.path().display()
                )));
            }
            ppl.push(PplText::read(c)?);
        }
        let tasks = tasks
            .iter()
            .map(|t| load_task(t, src))
            .collect::<Result<Vec<_>>>()?;
        Ok(EvalData { tasks, ppl })
    }
}

/// Where `cfg`'s task data comes from: `data_dir`'s shared layout, with the tasks of
/// `eval.task_paths` read from their own files (variables expanded).
pub fn task_source(cfg: &EvalConfig, data_dir: &Path) -> Result<TaskSource> {
    let mut src = TaskSource::new(data_dir);
    src.mmlu_fewshot = cfg.mmlu_fewshot;
    for (task, path) in &cfg.task_paths {
        let path = crate::paths::expand_vars(path)
            .map_err(|e| Error::Invalid(format!("`eval.task_paths.{task}`: {e}")))?;
        src.overrides.insert(task.clone(), path.into());
    }
    Ok(src)
}

/// What to evaluate: `cfg`'s subset, sizes, protocol and latency over `data`, on a model
/// on `device`. The one place the grid and the `eval` command turn a config into inputs.
pub fn eval_inputs<'a>(
    cfg: &EvalConfig,
    data: &'a EvalData,
    device: tch::Device,
) -> EvalInputs<'a> {
    EvalInputs {
        tasks: &data.tasks,
        subset: cfg.subset(),
        token_budget: cfg.token_budget.initial_tokens(device),
        add_special: cfg.special_tokens,
        ppl: &data.ppl,
        ppl_seqlen: cfg.ppl_seqlen.unwrap_or(0),
        ppl_windows: cfg.ppl_windows,
        ppl_protocol: cfg.ppl_protocol,
        latency: cfg.latency_spec(),
    }
}

/// The perplexity corpora an eval config asks for, in the order they are scored.
pub fn corpora(e: &EvalConfig) -> Vec<Corpus> {
    if e.ppl_seqlen.is_none() {
        return vec![];
    }
    let mut c = vec![Corpus::Wikitext2(crate::paths::wikitext2_test())];
    if e.ppl_c4 {
        c.push(Corpus::C4(crate::paths::c4_validation()));
    }
    if e.ppl_val {
        c.push(Corpus::parse(names::WIKITEXT2_VAL));
    }
    if e.ppl_ood {
        c.push(Corpus::parse(names::TASKS_OOD));
    }
    for t in &e.ppl_texts {
        // An unset variable leaves the path as written; reading it then names it.
        let path = crate::paths::expand_vars(t).unwrap_or_else(|_| t.clone());
        c.push(Corpus::Text(path.into()));
    }
    c
}

/// The eval stage: the model in `model_dir` evaluated as `cfg` says, on the task data of
/// `source` and the perplexity texts `corpora`. Not cached: every run evaluates. Its
/// output is the whole outcome (the `eval` command prints and writes it).
pub struct EvalStage<'a> {
    pub cfg: &'a EvalConfig,
    pub model_dir: &'a Path,
    /// Root of the task data's shared layout (`COME_DATA` in grids, `--data-dir`); the
    /// tasks of `cfg.task_paths` are read from their own files.
    pub data_dir: PathBuf,
    pub corpora: Vec<Corpus>,
}

impl<'a> EvalStage<'a> {
    /// A grid run's evaluation: the shared data and the corpora its config asks for.
    pub fn of_run(cfg: &'a EvalConfig, model_dir: &'a Path) -> Self {
        EvalStage {
            cfg,
            model_dir,
            data_dir: crate::paths::data_dir(),
            corpora: corpora(cfg),
        }
    }
}

impl Stage for EvalStage<'_> {
    const NAME: StageName = StageName::Eval;
    type Output = EvalOutcome;

    fn cache_key(&self) -> Option<String> {
        None
    }

    fn run(self, ctx: &mut StageCtx) -> Result<Done<EvalOutcome>> {
        let e = self.cfg;
        let data = EvalData::read(&e.tasks, &task_source(e, &self.data_dir)?, self.corpora)?;
        let t_load = Instant::now();
        let model = load_model(self.model_dir, ctx.load)?;
        let tok = Tokenizer::from_dir(self.model_dir)?;
        let mut metrics = vec![];
        metrics.extend([
            Metric::new(
                "",
                names::RUN_EVAL_LOAD_SECONDS,
                t_load.elapsed().as_secs_f64(),
            ),
            Metric::new("", names::RUN_LAYERS, model.n_layers() as f64),
            Metric::new("", names::RUN_PARAMS, model.num_params() as f64),
        ]);
        let inputs = eval_inputs(e, &data, model.device);
        let t0 = Instant::now();
        let mut hooks = Hooks {
            events: &mut *ctx.events,
            keepalive: &mut *ctx.keepalive,
        };
        let result = evaluate(&model, &tok, &inputs, &mut hooks)?;
        metrics.push(Metric::new(
            "",
            names::RUN_EVAL_SECONDS,
            t0.elapsed().as_secs_f64(),
        ));
        metrics.extend(eval_metrics(&result));
        let docs = doc_scores(&result);
        let mut env = std::collections::BTreeMap::new();
        for t in &result.tasks {
            for (path, sha) in &t.files {
                env.insert(format!("data.sha256:{}", path.display()), sha.clone());
            }
        }
        for path in result.ppl.iter().flat_map(|p| &p.sources) {
            let (k, v) = data_env_entry(path)?;
            env.insert(k, v);
        }
        let mut done = Done::new(result, false);
        (done.metrics, done.docs, done.env) = (metrics, docs, env);
        Ok(done)
    }
}

/// Progress to the run's sink, keeping the run alive while items move.
struct Hooks<'a, 'p> {
    events: Sink<'p>,
    keepalive: &'a mut dyn FnMut(),
}

impl EvalHooks for Hooks<'_, '_> {
    fn event(&mut self, e: Event) {
        (self.events)(e);
        (self.keepalive)();
    }

    fn task_done(&mut self, r: &TaskResult) {
        let summary: Vec<String> = (r.metrics.iter())
            .map(|(m, v)| format!("{m} {:.4}", v.value))
            .collect();
        let line = format!(
            "{:>14}: {} docs in {:.1}s ({:.0} tok/s): {}\n{:>14}  {}",
            r.task,
            r.n_docs,
            r.seconds,
            r.tokens_forwarded as f64 / r.seconds.max(1e-9),
            summary.join(", "),
            "",
            r.profile.summary()
        );
        (self.events)(Event::Note(line));
    }

    fn ppl_done(&mut self, p: &PplOutcome) {
        let (res, dt) = (&p.result, p.seconds);
        (self.events)(Event::Note(format!(
            "{:>14}: ppl {:.4} over {} window(s) of {} ({} predicted) in {:.1}s ({:.0} tok/s)",
            p.corpus.name(),
            res.ppl,
            res.windows,
            res.seqlen,
            res.predicted_tokens,
            dt,
            (res.windows * res.seqlen) as f64 / dt.max(1e-9)
        )));
    }
}

/// Every scored document, as the store keeps it.
pub fn doc_scores(r: &EvalOutcome) -> Vec<DocScore> {
    r.tasks
        .iter()
        .flat_map(|t| {
            t.docs.iter().map(|d| DocScore {
                task: t.task.clone(),
                doc_id: d.doc_id as i64,
                acc: d.acc,
                acc_norm: d.acc_norm,
            })
        })
        .collect()
}

/// Accuracies (with standard errors) and counts per task; perplexities per corpus.
pub fn eval_metrics(r: &EvalOutcome) -> Vec<Metric> {
    let mut metrics = vec![];
    for t in &r.tasks {
        for (m, v) in &t.metrics {
            let mut x = Metric::new(&t.task, m, v.value);
            if v.stderr.is_finite() {
                x = x.with_stderr(v.stderr);
            }
            metrics.push(x);
        }
        metrics.push(Metric::new(&t.task, names::N, t.n_docs as f64));
        let p = &t.profile;
        for (name, v) in [
            (names::PROFILE_TOKENIZE_SECONDS, p.tokenize_s),
            (names::PROFILE_INPUTS_SECONDS, p.inputs_s),
            (names::PROFILE_FORWARD_SECONDS, p.forward_s),
            (names::PROFILE_HEAD_SECONDS, p.head_s),
            (names::PROFILE_OTHER_SECONDS, p.other_s),
            (names::TOKENS_FORWARDED, p.forwarded_tokens as f64),
            (names::TOKENS_PADDED, p.padded_tokens as f64),
            (names::HEAD_POSITIONS, p.head_positions as f64),
            (names::FORWARDS, p.forwards as f64),
        ] {
            metrics.push(Metric::new(&t.task, name, v));
        }
    }
    for p in &r.ppl {
        let (task, metric) = p.corpus.recorded_as();
        let res = &p.result;
        metrics.push(Metric::new(&task, &metric, res.ppl).with_context(res.context()));
        metrics.push(Metric::new(&task, names::N, res.windows as f64));
    }
    if let Some(l) = &r.latency {
        let ctx = l.spec.context();
        for (name, v) in [
            (names::RUN_PREFILL_TOKENS_PER_S, l.prefill_tokens_per_s()),
            (names::RUN_DECODE_TOKENS_PER_S, l.decode_tokens_per_s()),
        ] {
            metrics.push(Metric::new("", name, v).with_context(ctx.clone()));
        }
    }
    metrics
}
