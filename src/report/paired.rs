//! Two runs compared on the same documents: per task, the documents only one of them gets
//! right and McNemar's exact test on them; over the tasks, a paired bootstrap of the
//! difference in average accuracy (documents resampled within each task, both runs
//! together, so the spread is that of the difference, not of each run).
//!
//! Each side may also be several runs that differ only in their seed: a document's outcome
//! is then the fraction of the side's runs that get it right, the bootstrap resamples
//! documents of those seed-averaged outcomes, and the difference of each seed pair (A's
//! i-th run against B's i-th) is reported beside it. McNemar's test needs one 0/1 outcome
//! per document and side, so it is given only for one run per side.

use super::Convention;
use crate::error::{Error, Result};
use crate::names::ACC_NORM;
use crate::rng::SplitMix64;
use crate::track::DocScore;
use std::collections::BTreeMap;

/// One task of a comparison.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskPair {
    pub task: String,
    /// The metric compared (`acc` or `acc_norm`).
    pub metric: &'static str,
    /// Documents scored by both runs.
    pub n: usize,
    pub acc_a: f64,
    pub acc_b: f64,
    /// Documents A gets right more often than B, and the other way round (with one run
    /// per side: right in A only, right in B only).
    pub only_a: u64,
    pub only_b: u64,
    /// McNemar's exact two-sided p-value (one run per side only).
    pub p: Option<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    pub tasks: Vec<TaskPair>,
    /// Mean over tasks of (acc_b - acc_a), in accuracy units.
    pub avg_diff: f64,
    /// 95 % paired-bootstrap interval of `avg_diff`.
    pub ci95: (f64, f64),
    /// Two-sided bootstrap p-value of `avg_diff` (twice the smaller tail beyond zero).
    pub p_bootstrap: f64,
    pub resamples: usize,
    /// McNemar over every document of every task together (one run per side only).
    pub pooled_p: Option<f64>,
    /// Runs per side.
    pub runs: (usize, usize),
    /// With as many runs on each side: the difference in average accuracy of each pair of
    /// runs (B's i-th minus A's i-th), over the documents all runs scored.
    pub per_pair: Vec<f64>,
}

/// McNemar's exact test: under the null, each of the `only_a + only_b` discordant
/// documents is equally likely to favour either run; p = min(1, 2 P[X <= min]) with X ~
/// Binomial(only_a + only_b, 1/2). Summed in log space (large counts underflow 2^-n).
pub fn mcnemar_exact(only_a: u64, only_b: u64) -> f64 {
    let n = only_a + only_b;
    if n == 0 {
        return 1.0;
    }
    let k = only_a.min(only_b);
    let mut log_pmf = -(n as f64) * std::f64::consts::LN_2;
    let mut terms = Vec::with_capacity(k as usize + 1);
    for i in 0..=k {
        terms.push(log_pmf);
        log_pmf += ((n - i) as f64).ln() - ((i + 1) as f64).ln();
    }
    let max = terms.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let tail = max.exp() * terms.iter().map(|t| (t - max).exp()).sum::<f64>();
    (2.0 * tail).min(1.0)
}

/// Compare run A with run B on the documents both scored, per task in `conv`'s metric.
pub fn compare(
    a: &[DocScore],
    b: &[DocScore],
    conv: Convention,
    resamples: usize,
    seed: u64,
) -> Result<Comparison> {
    compare_groups(&[a], &[b], conv, resamples, seed)
}

/// A document: (task, id).
type DocKey = (String, i64);

/// Per task: the metric compared, and per document the outcomes of A's runs and of B's.
type PerTask = BTreeMap<String, (&'static str, Vec<(Vec<f64>, Vec<f64>)>)>;

/// Per task, each document every run of both sides scored: the outcomes of A's runs and of
/// B's runs, in `conv`'s metric.
fn outcomes(a: &[&[DocScore]], b: &[&[DocScore]], conv: Convention) -> PerTask {
    let index = |docs: &[DocScore]| -> BTreeMap<DocKey, (f64, f64)> {
        docs.iter()
            .map(|d| ((d.task.clone(), d.doc_id), (d.acc, d.acc_norm)))
            .collect()
    };
    let ia: Vec<_> = a.iter().map(|d| index(d)).collect();
    let ib: Vec<_> = b.iter().map(|d| index(d)).collect();
    let mut per_task = PerTask::new();
    let Some(first) = ia.first() else {
        return per_task;
    };
    for key in first.keys() {
        let metric = conv.metric_for(&key.0);
        let pick = |s: &(f64, f64)| if metric == ACC_NORM { s.1 } else { s.0 };
        let side = |runs: &[BTreeMap<DocKey, (f64, f64)>]| -> Option<Vec<f64>> {
            runs.iter().map(|r| r.get(key).map(pick)).collect()
        };
        if let (Some(xa), Some(xb)) = (side(&ia), side(&ib)) {
            per_task
                .entry(key.0.clone())
                .or_insert_with(|| (metric, vec![]))
                .1
                .push((xa, xb));
        }
    }
    per_task
}

/// Compare the runs of side A with those of side B (each side: one run, or runs that
/// differ only in their seed) on the documents every run scored.
pub fn compare_groups(
    a: &[&[DocScore]],
    b: &[&[DocScore]],
    conv: Convention,
    resamples: usize,
    seed: u64,
) -> Result<Comparison> {
    if a.is_empty() || b.is_empty() {
        return Err(Error::Invalid(
            "each side of a comparison needs a run".into(),
        ));
    }
    let per_task = outcomes(a, b, conv);
    if per_task.is_empty() {
        return Err(Error::Invalid(
            "the runs have no scored document in common (runs finished before \
             per-document scores were recorded have none: rerun them with --force)"
                .into(),
        ));
    }
    let single = a.len() == 1 && b.len() == 1;
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let mut tasks = vec![];
    let (mut pooled_a, mut pooled_b) = (0, 0);
    for (task, (metric, docs)) in &per_task {
        let n = docs.len();
        let only_a = docs.iter().filter(|(x, y)| mean(x) > mean(y)).count() as u64;
        let only_b = docs.iter().filter(|(x, y)| mean(y) > mean(x)).count() as u64;
        pooled_a += only_a;
        pooled_b += only_b;
        tasks.push(TaskPair {
            task: task.clone(),
            metric,
            n,
            acc_a: docs.iter().map(|d| mean(&d.0)).sum::<f64>() / n as f64,
            acc_b: docs.iter().map(|d| mean(&d.1)).sum::<f64>() / n as f64,
            only_a,
            only_b,
            p: single.then(|| mcnemar_exact(only_a, only_b)),
        });
    }
    let diffs: Vec<Vec<f64>> = per_task
        .values()
        .map(|(_, docs)| docs.iter().map(|(x, y)| mean(y) - mean(x)).collect())
        .collect();
    let avg_diff = diffs.iter().map(|d| mean(d)).sum::<f64>() / diffs.len() as f64;
    // Seed pairs: the i-th run of each side, averaged like the whole.
    let per_pair = if a.len() == b.len() {
        (0..a.len())
            .map(|i| {
                per_task
                    .values()
                    .map(|(_, docs)| {
                        mean(&docs.iter().map(|(x, y)| y[i] - x[i]).collect::<Vec<_>>())
                    })
                    .sum::<f64>()
                    / per_task.len() as f64
            })
            .collect()
    } else {
        vec![]
    };
    let boot = bootstrap(&diffs, resamples.max(1), seed);
    let at = |q: f64| boot[((q * (boot.len() - 1) as f64).round()) as usize];
    let below = boot.iter().filter(|x| **x <= 0.0).count() as f64 / boot.len() as f64;
    let above = boot.iter().filter(|x| **x >= 0.0).count() as f64 / boot.len() as f64;
    Ok(Comparison {
        tasks,
        avg_diff,
        ci95: (at(0.025), at(0.975)),
        p_bootstrap: (2.0 * below.min(above)).min(1.0),
        resamples: boot.len(),
        pooled_p: single.then(|| mcnemar_exact(pooled_a, pooled_b)),
        runs: (a.len(), b.len()),
        per_pair,
    })
}

/// Sorted bootstrap replicates of the mean over tasks of each task's mean difference.
fn bootstrap(diffs: &[Vec<f64>], resamples: usize, seed: u64) -> Vec<f64> {
    let mut rng = SplitMix64::new(seed ^ 0xb007_57a9);
    let mut out: Vec<f64> = (0..resamples)
        .map(|_| {
            let sum: f64 = diffs
                .iter()
                .map(|d| {
                    let n = d.len() as u64;
                    (0..n).map(|_| d[rng.below(n) as usize]).sum::<f64>() / n as f64
                })
                .sum();
            sum / diffs.len() as f64
        })
        .collect();
    out.sort_by(f64::total_cmp);
    out
}
