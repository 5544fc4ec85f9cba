//! Running tasks on a model and aggregating as lm-evaluation-harness does: per-document
//! predictions from summed continuation log-likelihoods, `acc` and `acc_norm` (by the
//! choice's character length), and their standard errors (sample standard deviation with
//! n - 1, divided by sqrt(n)).

use super::loglik::{encode_pair, score_documents, Score, ScoreOptions, TokenRequest};
use super::profile::ScoreProfile;
use super::tasks::{Metric, TaskData};
use crate::error::Result;
use crate::model::tokenizer::Tokenizer;
use crate::model::Model;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Instant;

#[derive(Debug, Clone, Serialize)]
pub struct DocResult {
    pub doc_id: usize,
    pub gold: usize,
    /// Summed continuation log-likelihood per choice.
    pub loglik: Vec<f64>,
    pub is_greedy: Vec<bool>,
    pub acc: f64,
    pub acc_norm: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MetricValue {
    pub value: f64,
    pub stderr: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct TaskResult {
    pub task: String,
    pub n_docs_total: usize,
    pub n_docs: usize,
    pub num_fewshot: usize,
    pub metrics: BTreeMap<String, MetricValue>,
    /// MMLU: per-subject accuracy; empty elsewhere.
    pub groups: BTreeMap<String, MetricValue>,
    /// MMLU: accuracy of lm-eval's four subject groups (stem, other, social_sciences,
    /// humanities) over the subjects evaluated; empty elsewhere.
    pub categories: BTreeMap<String, MetricValue>,
    pub files: Vec<(std::path::PathBuf, String)>,
    /// lm-eval's `task_hashes` of the documents evaluated (per MMLU subject for MMLU);
    /// empty where the documents' lm-eval form is not known.
    pub task_hashes: BTreeMap<String, String>,
    pub tokens_scored: usize,
    pub tokens_forwarded: usize,
    /// Wall time. Where tasks share CPU workers ([`super::pool`]) they overlap at their
    /// ends: the time since the previous task's result, plus this one's tokenising.
    pub seconds: f64,
    /// Where the task's time went.
    pub profile: ScoreProfile,
    #[serde(skip)]
    pub docs: Vec<DocResult>,
}

/// lm-eval's `pooled_sample_stderr` of a size-weighted group from its parts' (size,
/// stderr): sqrt(sum((n_i - 1) * n_i * se_i^2) / (N - k) / N). A part of one document has
/// no variance term ((n_i - 1) = 0), so its undefined stderr does not poison the group.
pub fn pooled_stderr(parts: impl Iterator<Item = (usize, f64)>) -> f64 {
    let (mut num, mut total, mut k) = (0.0, 0usize, 0usize);
    for (n, se) in parts {
        if n > 1 {
            num += (n - 1) as f64 * n as f64 * se * se;
        }
        total += n;
        k += 1;
    }
    if total <= k {
        return f64::NAN;
    }
    (num / (total - k) as f64 / total as f64).sqrt()
}

/// Mean and lm-eval's `mean_stderr` (sample std with ddof 1 over sqrt(n)).
pub fn mean_stderr(xs: &[f64]) -> MetricValue {
    let n = xs.len() as f64;
    if xs.is_empty() {
        return MetricValue {
            value: f64::NAN,
            stderr: f64::NAN,
        };
    }
    let mean = xs.iter().sum::<f64>() / n;
    let stderr = if xs.len() > 1 {
        (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt() / n.sqrt()
    } else {
        f64::NAN
    };
    MetricValue {
        value: mean,
        stderr,
    }
}

/// First index of the maximum (numpy argmax semantics).
fn argmax(xs: &[f64]) -> usize {
    let mut best = 0;
    for (i, x) in xs.iter().enumerate() {
        if *x > xs[best] {
            best = i;
        }
    }
    best
}

#[derive(Debug, Clone, Copy)]
pub struct EvalOptions {
    pub score: ScoreOptions,
    /// Encode with the tokenizer's default special tokens (a LLaMA tokenizer adds BOS), as
    /// lm-eval 0.4.13's HF backend does. lm-eval releases before its PR #3347 (Oct 2025)
    /// passed `add_special_tokens=False`: set false to reproduce numbers made with those.
    pub add_special: bool,
}

/// A task's documents with their requests tokenised, ready to score.
pub struct PreparedTask<'a> {
    pub task: &'a TaskData,
    docs: Vec<&'a super::tasks::Doc>,
    pub requests: Vec<Vec<TokenRequest>>,
    /// Continuation tokens over all requests.
    tokens_scored: usize,
    tokenize_s: f64,
}

impl PreparedTask<'_> {
    /// Seconds spent tokenising.
    pub fn tokenize_s(&self) -> f64 {
        self.tokenize_s
    }
}

/// Tokenise the documents `indices` of `task` as lm-eval's `_encode_pair` does.
pub fn prepare_task<'a>(
    tok: &Tokenizer,
    task: &'a TaskData,
    indices: &[usize],
    add_special: bool,
) -> Result<PreparedTask<'a>> {
    let t0 = Instant::now();
    let docs: Vec<&super::tasks::Doc> = indices.iter().filter_map(|&i| task.docs.get(i)).collect();
    let requests: Vec<Vec<TokenRequest>> = docs
        .iter()
        .map(|d| {
            d.requests
                .iter()
                .map(|r| encode_pair(tok, &r.context, &r.continuation, add_special))
                .collect::<Result<Vec<_>>>()
        })
        .collect::<Result<_>>()?;
    Ok(PreparedTask {
        task,
        docs,
        tokens_scored: requests
            .iter()
            .flatten()
            .map(|r| r.continuation.len())
            .sum(),
        requests,
        tokenize_s: t0.elapsed().as_secs_f64(),
    })
}

/// Evaluate the documents `indices` of `task`. `on_progress(done, total)` counts documents.
pub fn evaluate_task(
    model: &Model,
    tok: &Tokenizer,
    task: &TaskData,
    indices: &[usize],
    opts: &mut EvalOptions,
    mut on_progress: impl FnMut(usize, usize),
) -> Result<TaskResult> {
    let t0 = Instant::now();
    let prep = prepare_task(tok, task, indices, opts.add_special)?;
    let total = prep.docs.len();
    let mut profile = ScoreProfile::default();
    let scores = score_documents(
        model,
        &prep.requests,
        &mut opts.score,
        &mut profile,
        |done| on_progress(done, total),
    )?;
    Ok(finish_task(
        &prep,
        &scores,
        profile,
        t0.elapsed().as_secs_f64(),
    ))
}

/// A task's result from its documents' scores. `profile` is the scoring's (tokenising is
/// added here); `seconds` the task's wall time.
pub fn finish_task(
    prep: &PreparedTask,
    scores: &[Vec<Score>],
    mut profile: ScoreProfile,
    seconds: f64,
) -> TaskResult {
    let PreparedTask {
        task,
        ref docs,
        tokens_scored,
        tokenize_s,
        ..
    } = *prep;
    profile.tokenize_s += tokenize_s;
    let mut results = Vec::with_capacity(docs.len());
    for (d, s) in docs.iter().zip(scores) {
        let ll: Vec<f64> = s.iter().map(|x| x.logprob).collect();
        let norm: Vec<f64> = ll
            .iter()
            .zip(&d.choice_texts)
            .map(|(l, c)| l / c.chars().count().max(1) as f64)
            .collect();
        results.push(DocResult {
            doc_id: d.doc_id,
            gold: d.gold,
            acc: (argmax(&ll) == d.gold) as u8 as f64,
            acc_norm: (argmax(&norm) == d.gold) as u8 as f64,
            is_greedy: s.iter().map(|x| x.is_greedy).collect(),
            loglik: ll,
            group: d.group.clone(),
        });
    }
    let Summary {
        metrics,
        groups,
        categories,
    } = summarize(&task.metrics, &results);
    profile.other_s = (seconds - profile.timed_s()).max(0.0);
    TaskResult {
        task: task.name.clone(),
        n_docs_total: task.docs.len(),
        n_docs: results.len(),
        num_fewshot: task.num_fewshot,
        metrics,
        groups,
        categories,
        files: task.files.clone(),
        task_hashes: super::tasks::lm_hash::task_hashes(&task.name, docs),
        tokens_scored,
        tokens_forwarded: profile.forwarded_tokens,
        seconds,
        profile,
        docs: results,
    }
}

/// A task's aggregates, as lm-eval reports them.
pub struct Summary {
    pub metrics: BTreeMap<String, MetricValue>,
    /// Per subject (documents with a `group`).
    pub groups: BTreeMap<String, MetricValue>,
    /// Per lm-eval subject group of MMLU.
    pub categories: BTreeMap<String, MetricValue>,
}

/// The metrics `wanted` over scored documents, plus per-subject and per-subject-group
/// accuracy for documents that carry a subject.
pub fn summarize(wanted: &[Metric], results: &[DocResult]) -> Summary {
    let mut metrics = BTreeMap::new();
    for m in wanted {
        let xs: Vec<f64> = results
            .iter()
            .map(|r| if *m == Metric::Acc { r.acc } else { r.acc_norm })
            .collect();
        metrics.insert(m.name().to_string(), mean_stderr(&xs));
    }
    let mut groups = BTreeMap::new();
    let mut by_group: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for r in results {
        if let Some(g) = &r.group {
            by_group.entry(g.as_str()).or_default().push(r.acc);
        }
    }
    for (g, xs) in &by_group {
        groups.insert(g.to_string(), mean_stderr(xs));
    }
    let mut categories = BTreeMap::new();
    if !groups.is_empty() {
        // lm-eval's groups take the size-weighted mean of their subtasks (which equals the
        // mean over all their documents) with the pooled standard error: so for `acc` of
        // the whole task and for each of the four subject groups.
        let part = |g: &str| (by_group[g].len(), groups[g].stderr);
        if let Some(acc) = metrics.get_mut("acc") {
            acc.stderr = pooled_stderr(groups.keys().map(|g| part(g)));
        }
        let mut by_category: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for g in groups.keys() {
            if let Some(c) = super::tasks::mmlu_category(g) {
                by_category.entry(c).or_default().push(g);
            }
        }
        for (c, subjects) in by_category {
            let n: usize = subjects.iter().map(|g| by_group[g].len()).sum();
            let hits: f64 = subjects
                .iter()
                .map(|g| by_group[g].iter().sum::<f64>())
                .sum();
            let stderr = pooled_stderr(subjects.iter().map(|g| part(g)));
            categories.insert(
                c.to_string(),
                MetricValue {
                    value: hits / n as f64,
                    stderr,
                },
            );
        }
    }
    if !groups.is_empty() {
        // Macro average over subjects beside lm-eval's size-weighted (micro) `acc`.
        let macro_avg = groups.values().map(|v| v.value).sum::<f64>() / groups.len() as f64;
        let se =
            (groups.values().map(|v| v.stderr.powi(2)).sum::<f64>()).sqrt() / groups.len() as f64;
        metrics.insert(
            "acc_macro".into(),
            MetricValue {
                value: macro_avg,
                stderr: se,
            },
        );
    }
    Summary {
        metrics,
        groups,
        categories,
    }
}
