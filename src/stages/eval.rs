//! The eval stage: zero-shot tasks scored as lm-evaluation-harness does, then perplexity
//! on each corpus, then (if asked) prefill and decode latency, on a model already loaded. Task data and corpus texts are read by the
//! caller (before the model loads, so bad input fails fast); what is printed or stored
//! is the caller's too, through [`EvalHooks`].

use crate::error::{Error, Result};
use crate::eval::harness::{finish_task, prepare_task, EvalOptions, PreparedTask, TaskResult};
use crate::eval::latency::{measure, Latency, LatencySpec};
use crate::eval::loglik::ScoreOptions;
use crate::eval::loglik::{Score, TokenRequest};
use crate::eval::perplexity::{perplexity, PplOptions, PplProtocol, PplResult};
use crate::eval::pool::ScoreHooks;
use crate::eval::ppl_corpus::Corpus;
use crate::eval::profile::ScoreProfile;
use crate::eval::tasks::{subset, TaskData};
use crate::model::tokenizer::Tokenizer;
use crate::model::Model;
use crate::progress::Event;
use std::time::Instant;

pub use crate::eval::tasks::Subset;

/// Sizes checked before any scoring: nothing is scored that would end as a NaN, and no
/// window is longer than the positions the model was trained for.
fn check_inputs(model: &Model, inp: &EvalInputs) -> Result<()> {
    inp.subset.validate()?;
    if inp.ppl.is_empty() {
        return Ok(());
    }
    crate::experiment::check_eval_sizes(0, Some(inp.ppl_seqlen), inp.ppl_windows)?;
    let max = model.config.max_position_embeddings;
    if inp.ppl_seqlen as i64 > max {
        return Err(Error::Invalid(format!(
            "perplexity seqlen {} exceeds the model's max_position_embeddings ({max})",
            inp.ppl_seqlen
        )));
    }
    Ok(())
}

/// A perplexity corpus and its text, already read.
#[derive(Debug, Clone)]
pub struct PplText {
    pub corpus: Corpus,
    pub text: String,
    /// The files the text was built from.
    pub sources: Vec<std::path::PathBuf>,
}

impl PplText {
    pub fn read(corpus: Corpus) -> Result<PplText> {
        let (text, sources) = corpus.read()?;
        Ok(PplText {
            corpus,
            text,
            sources,
        })
    }
}

/// What to evaluate.
#[derive(Debug, Clone, Copy)]
pub struct EvalInputs<'a> {
    pub tasks: &'a [TaskData],
    pub subset: Subset,
    /// Padded tokens per scoring batch at the start (halved while a batch runs out of
    /// memory).
    pub token_budget: usize,
    /// Encode with the tokenizer's default special tokens (lm-eval 0.4.13; GPTQ-style
    /// perplexity streams).
    pub add_special: bool,
    pub ppl: &'a [PplText],
    pub ppl_seqlen: usize,
    /// Windows scored per corpus (None: the corpus default: all, or 256 for C4).
    pub ppl_windows: Option<usize>,
    pub ppl_protocol: PplProtocol,
    /// Also time prefill and decode (the prompt shortened to fit a short context).
    pub latency: Option<LatencySpec>,
}

/// One corpus's perplexity.
#[derive(Debug, Clone)]
pub struct PplOutcome {
    pub corpus: Corpus,
    /// The files its text was built from.
    pub sources: Vec<std::path::PathBuf>,
    pub result: PplResult,
    /// Tokenisation and scoring.
    pub seconds: f64,
}

#[derive(Debug, Clone)]
pub struct EvalOutcome {
    pub tasks: Vec<TaskResult>,
    pub ppl: Vec<PplOutcome>,
    /// The token budget in effect at the end (below the initial one after a back-off).
    pub final_token_budget: usize,
    pub latency: Option<Latency>,
}

/// What the caller sees while the stage runs; every method has a no-op default.
pub trait EvalHooks {
    /// Progress ([`Event::Items`] of a task's documents or a corpus's windows) and notes
    /// (e.g. the out-of-memory back-off).
    fn event(&mut self, _e: Event) {}
    fn task_done(&mut self, _result: &TaskResult) {}
    fn ppl_done(&mut self, _result: &PplOutcome) {}
    /// Asked before each task and corpus; an error ends the stage with it. By default,
    /// whether the user asked to stop (Ctrl-C).
    fn proceed(&mut self) -> Result<()> {
        crate::cancel::check()
    }
}

fn items(what: &str, done: usize, total: usize) -> Event {
    Event::Items {
        what: what.to_string(),
        done,
        total,
    }
}

/// Hooks that see nothing.
pub struct NoHooks;
impl EvalHooks for NoHooks {}

/// Score every task, then every perplexity corpus, on `model`.
pub fn evaluate(
    model: &Model,
    tok: &Tokenizer,
    inp: &EvalInputs,
    hooks: &mut dyn EvalHooks,
) -> Result<EvalOutcome> {
    check_inputs(model, inp)?;
    let _heap = crate::heap::KeepLargeBlocks::new();
    let mut opts = EvalOptions {
        score: ScoreOptions {
            max_length: model.config.max_position_embeddings.max(1) as usize,
            token_budget: inp.token_budget,
        },
        add_special: inp.add_special,
    };
    let tasks = score_tasks(model, tok, inp, &mut opts, hooks)?;
    let mut ppl = Vec::with_capacity(inp.ppl.len());
    for p in inp.ppl {
        hooks.proceed()?;
        let r = corpus_ppl(model, tok, p, inp, hooks)?;
        hooks.ppl_done(&r);
        ppl.push(r);
    }
    let latency = match inp.latency {
        Some(spec) => {
            hooks.proceed()?;
            hooks.event(items("latency", 0, 0));
            let max = model.config.max_position_embeddings.max(0) as usize;
            Some(measure(model, spec.fitted(max)?)?)
        }
        None => None,
    };
    Ok(EvalOutcome {
        tasks,
        ppl,
        final_token_budget: opts.score.token_budget,
        latency,
    })
}

/// Every task's documents, scored through one queue ([`score_tasks`](crate::eval::pool)),
/// each task's result handed to `hooks` as soon as it and the tasks before it are done.
fn score_tasks(
    model: &Model,
    tok: &Tokenizer,
    inp: &EvalInputs,
    opts: &mut EvalOptions,
    hooks: &mut dyn EvalHooks,
) -> Result<Vec<TaskResult>> {
    hooks.proceed()?;
    let mut prepared = Vec::with_capacity(inp.tasks.len());
    for data in inp.tasks {
        let s = inp.subset;
        let idx = subset(data.docs.len(), s.limit, s.fraction, s.seed);
        prepared.push(prepare_task(tok, data, &idx, opts.add_special)?);
    }
    let views: Vec<&[Vec<TokenRequest>]> = prepared.iter().map(|p| p.requests.as_slice()).collect();
    let before = opts.score.token_budget;
    let mut collect = Collect {
        prepared: &prepared,
        done: vec![0; prepared.len()],
        results: vec![],
        hooks,
        since: Instant::now(),
    };
    collect.show_current();
    crate::eval::pool::score_tasks(model, &views, &mut opts.score, &mut collect)?;
    if opts.score.token_budget < before {
        collect.hooks.event(Event::Note(format!(
            "out of memory at {before} tokens per batch; continued with {}",
            opts.score.token_budget
        )));
    }
    Ok(collect.results)
}

/// Turns each task's scores into its result as the pool hands them over.
struct Collect<'a, 'h> {
    prepared: &'a [PreparedTask<'a>],
    /// Documents scored per task. Progress is shown for the first unfinished task only
    /// (its successor may have started beside it), so the display stays one task at a time.
    done: Vec<usize>,
    results: Vec<TaskResult>,
    hooks: &'h mut dyn EvalHooks,
    /// When the previous task was handed over: a task's wall time is what passed since.
    since: Instant,
}

impl Collect<'_, '_> {
    fn show_current(&mut self) {
        let k = self.results.len();
        if let Some(p) = self.prepared.get(k) {
            self.hooks
                .event(items(&p.task.name, self.done[k], p.requests.len()));
        }
    }
}

impl ScoreHooks for Collect<'_, '_> {
    fn progress(&mut self, task: usize, done: usize) {
        self.done[task] = done;
        if task == self.results.len() {
            self.show_current();
        }
    }

    fn scored(&mut self, task: usize, scores: Vec<Vec<Score>>, prof: ScoreProfile) -> Result<()> {
        let prep = &self.prepared[task];
        let seconds = self.since.elapsed().as_secs_f64() + prep.tokenize_s();
        self.since = Instant::now();
        let r = finish_task(prep, &scores, prof, seconds);
        self.hooks.task_done(&r);
        self.results.push(r);
        self.hooks.proceed()?;
        self.show_current();
        Ok(())
    }
}

fn corpus_ppl(
    model: &Model,
    tok: &Tokenizer,
    p: &PplText,
    inp: &EvalInputs,
    hooks: &mut dyn EvalHooks,
) -> Result<PplOutcome> {
    let t0 = Instant::now();
    // As GPTQ-style perplexity code does: `tokenizer(text)` with its default special
    // tokens (a LLaMA tokenizer puts BOS at the start of the stream, SmolLM2's adds none).
    let tokens = tok.encode(&p.text, inp.add_special)?;
    let name = p.corpus.name();
    let windows = inp.ppl_windows.or(p.corpus.default_windows());
    hooks.event(items(&name, 0, 0));
    let opts = PplOptions {
        max_windows: windows,
        batch_size: 1,
        protocol: inp.ppl_protocol,
        bos: tok.bos_id,
    };
    let result = perplexity(model, &tokens, inp.ppl_seqlen, opts, |done, total| {
        hooks.event(items(&name, done, total))
    })
    .map_err(|e| match e {
        Error::Invalid(m) => Error::Invalid(format!("{name} perplexity: {m}")),
        other => other,
    })?;
    Ok(PplOutcome {
        corpus: p.corpus.clone(),
        sources: p.sources.clone(),
        result,
        seconds: t0.elapsed().as_secs_f64(),
    })
}
