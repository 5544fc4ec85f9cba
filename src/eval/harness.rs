//! Running tasks on a model and aggregating as lm-evaluation-harness does: per-document
//! predictions from summed continuation log-likelihoods, `acc` and `acc_norm` (by the
//! choice's character length), and their standard errors (sample standard deviation with
//! n - 1, divided by sqrt(n)).

use super::loglik::{encode_pair, score_documents, ScoreOptions, TokenRequest};
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
    pub files: Vec<(std::path::PathBuf, String)>,
    pub tokens_scored: usize,
    pub tokens_forwarded: usize,
    pub seconds: f64,
    #[serde(skip)]
    pub docs: Vec<DocResult>,
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
    let docs: Vec<&super::tasks::Doc> = indices.iter().filter_map(|&i| task.docs.get(i)).collect();
    let reqs: Vec<Vec<TokenRequest>> = docs
        .iter()
        .map(|d| {
            d.requests
                .iter()
                .map(|r| encode_pair(tok, &r.context, &r.continuation, opts.add_special))
                .collect::<Result<Vec<_>>>()
        })
        .collect::<Result<_>>()?;
    let tokens_scored: usize = reqs.iter().flatten().map(|r| r.continuation.len()).sum();
    let mut forwarded = 0;
    let total = docs.len();
    let scores = score_documents(model, &reqs, &mut opts.score, |done| {
        on_progress(done, total)
    })?;
    for r in &reqs {
        forwarded += super::loglik::packed_len(r, opts.score.max_length);
    }
    let mut results = Vec::with_capacity(docs.len());
    for (d, s) in docs.iter().zip(&scores) {
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
    let mut metrics = BTreeMap::new();
    for m in &task.metrics {
        let xs: Vec<f64> = results
            .iter()
            .map(|r| if *m == Metric::Acc { r.acc } else { r.acc_norm })
            .collect();
        metrics.insert(m.name().to_string(), mean_stderr(&xs));
    }
    let mut groups = BTreeMap::new();
    let mut by_group: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for r in &results {
        if let Some(g) = &r.group {
            by_group.entry(g.as_str()).or_default().push(r.acc);
        }
    }
    for (g, xs) in &by_group {
        groups.insert(g.to_string(), mean_stderr(xs));
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
    Ok(TaskResult {
        task: task.name.clone(),
        n_docs_total: task.docs.len(),
        n_docs: results.len(),
        num_fewshot: task.num_fewshot,
        metrics,
        groups,
        files: task.files.clone(),
        tokens_scored,
        tokens_forwarded: forwarded,
        seconds: t0.elapsed().as_secs_f64(),
        docs: results,
    })
}
