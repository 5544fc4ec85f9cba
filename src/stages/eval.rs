//! The eval stage: zero-shot tasks scored as lm-evaluation-harness does, then perplexity
//! on each corpus, then (if asked) prefill and decode latency, on a model already loaded. Task data and corpus texts are read by the
//! caller (before the model loads, so bad input fails fast); what is printed or stored
//! is the caller's too, through [`EvalHooks`].

use crate::error::{Error, Result};
use crate::eval::harness::{evaluate_task, EvalOptions, TaskResult};
use crate::eval::latency::{measure, Latency, LatencySpec};
use crate::eval::loglik::ScoreOptions;
use crate::eval::perplexity::{perplexity, PplResult};
use crate::eval::ppl_corpus::Corpus;
use crate::eval::tasks::{subset, TaskData};
use crate::model::tokenizer::Tokenizer;
use crate::model::Model;
use std::time::Instant;

/// Which documents of each task are scored: all, the first `limit` (or a seeded sample
/// of `limit` when `seed` is set), or a `fraction` of them.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Subset {
    pub limit: Option<usize>,
    pub fraction: Option<f64>,
    pub seed: Option<u64>,
}

impl Subset {
    /// Zero documents, or a fraction outside (0, 1], is a typo, not a request: refuse it
    /// rather than score nothing (NaN accuracies) or the whole split.
    pub fn validate(&self) -> Result<()> {
        if self.limit == Some(0) {
            return Err(Error::Invalid(
                "`limit` must be at least 1 document (leave it out for all)".into(),
            ));
        }
        if let Some(f) = self.fraction {
            if !(f > 0.0 && f <= 1.0) {
                return Err(Error::Invalid(format!(
                    "`fraction` must be in (0, 1], got {f}"
                )));
            }
        }
        Ok(())
    }
}

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
}

impl PplText {
    pub fn read(corpus: Corpus) -> Result<PplText> {
        let text = corpus.text()?;
        Ok(PplText { corpus, text })
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
    /// Also time prefill and decode (the prompt shortened to fit a short context).
    pub latency: Option<LatencySpec>,
}

/// One corpus's perplexity.
#[derive(Debug, Clone)]
pub struct PplOutcome {
    pub corpus: Corpus,
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
    /// Progress of a task (documents) or a corpus (windows); `total` 0 while unknown.
    fn progress(&mut self, _what: &str, _done: usize, _total: usize) {}
    /// A line worth telling the user (e.g. the out-of-memory back-off).
    fn note(&mut self, _line: &str) {}
    fn task_done(&mut self, _result: &TaskResult) {}
    fn ppl_done(&mut self, _result: &PplOutcome) {}
    /// Asked before each task and corpus; an error ends the stage with it (Ctrl-C).
    fn proceed(&mut self) -> Result<()> {
        Ok(())
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
    let mut tasks = Vec::with_capacity(inp.tasks.len());
    for data in inp.tasks {
        hooks.proceed()?;
        let s = inp.subset;
        let idx = subset(data.docs.len(), s.limit, s.fraction, s.seed);
        let before = opts.score.token_budget;
        hooks.progress(&data.name, 0, idx.len());
        let r = evaluate_task(model, tok, data, &idx, &mut opts, |done, total| {
            hooks.progress(&data.name, done, total)
        })?;
        if opts.score.token_budget < before {
            hooks.note(&format!(
                "{}: out of memory at {before} tokens per batch; continued with {}",
                data.name, opts.score.token_budget
            ));
        }
        hooks.task_done(&r);
        tasks.push(r);
    }
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
            hooks.progress("latency", 0, 0);
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
    hooks.progress(&name, 0, 0);
    let result = perplexity(model, &tokens, inp.ppl_seqlen, windows, 1, |done, total| {
        hooks.progress(&name, done, total)
    })
    .map_err(|e| match e {
        Error::Invalid(m) => Error::Invalid(format!("{name} perplexity: {m}")),
        other => other,
    })?;
    Ok(PplOutcome {
        corpus: p.corpus.clone(),
        result,
        seconds: t0.elapsed().as_secs_f64(),
    })
}
