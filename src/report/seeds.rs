//! Seed replicates: runs equal in every parameter but their recovery seed, shown as one
//! row with the mean over seeds and the spread (sample standard deviation over seeds) of
//! each measure. The seed chooses the training text's order and sample and LoRA's initial
//! weights, so the spread is what a reader should expect from rerunning recovery, beside
//! the documents' sampling error that the other tables give.

use super::common::{
    average, eval_note, labels, level_groups, measure, method_of, method_rank, slug, task_columns,
    Measured,
};
use super::recovery::{recovery_cells, recovery_method, recovery_rank};
use super::table::{Col, Row, Table};
use super::{Convention, RunData};
use crate::hashing::canonical_json;
use crate::names;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

/// Parameters whose values make seed replicates of otherwise equal runs.
pub const SEED_KEYS: [&str; 1] = ["recovery.seed"];

/// Mean and sample standard deviation (n - 1 in the denominator; None below two values).
pub fn mean_sd(xs: &[f64]) -> (f64, Option<f64>) {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let sd = (xs.len() > 1)
        .then(|| (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt());
    (mean, sd)
}

/// The run without its seed parameters: what its replicates share.
fn unseeded(run: &RunData) -> RunData {
    let mut r = run.clone();
    r.params.retain(|k, _| !SEED_KEYS.contains(&k.as_str()));
    r
}

/// The seed values of a replicate group, as text, in numeric order.
fn seed_list(runs: &[&RunData]) -> String {
    let mut seeds: Vec<i64> = runs
        .iter()
        .flat_map(|r| SEED_KEYS.iter().filter_map(|k| r.param(k)?.as_i64()))
        .collect();
    seeds.sort_unstable();
    seeds.dedup();
    seeds
        .iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// One table per (model, evaluation setting, level) where some runs differ only in a
/// seed: one row per group of replicates (two or more seeds), columns the tasks' mean
/// accuracy, Avg with its spread, every perplexity with its spread, and the seed count.
pub fn seed_tables(runs: &[RunData], conv: Convention) -> Vec<Table> {
    let mut out = Vec::new();
    for g in level_groups(runs) {
        let mut groups: BTreeMap<String, Vec<&RunData>> = BTreeMap::new();
        for r in &g.runs {
            let key = unseeded(r).params;
            let key = canonical_json(&serde_json::to_value(key).unwrap_or(Value::Null));
            groups.entry(key).or_default().push(r);
        }
        let groups: Vec<Vec<&RunData>> = groups.into_values().filter(|v| v.len() > 1).collect();
        if groups.is_empty() {
            continue;
        }
        let reps: Vec<RunData> = groups.iter().map(|v| unseeded(v[0])).collect();
        let rep_refs: Vec<&RunData> = reps.iter().collect();
        let mut rows: Vec<(String, String, &Vec<&RunData>)> = labels(&rep_refs)
            .into_iter()
            .zip(recovery_cells(&rep_refs))
            .zip(&groups)
            .map(|((l, k), v)| (l, k, v))
            .collect();
        rows.sort_by_cached_key(|(label, keys, v)| {
            let r = v[0];
            (
                method_rank(&method_of(r)),
                label.clone(),
                recovery_rank(&recovery_method(r)),
                keys.clone(),
            )
        });
        let id = format!("seeds_{}_{}{}", slug(&g.model), g.level.slug(), g.suffix);
        let title = format!("Seeds: {}, {}", g.model, g.level.text());
        let seeds: BTreeSet<String> = groups.iter().map(|v| seed_list(v)).collect();
        let caption = [
            format!(
                "Runs equal in every setting but the recovery seed (`recovery.seed`: {}), one row per setting: each measure's mean over the seeds and its sample standard deviation over the seeds (sd). The seed chooses which training sequences recovery reads and in which order, the positions sampled losses draw, and LoRA's initial weights; the pruned model is the same for every seed.",
                seeds.into_iter().collect::<Vec<_>>().join(" / ")
            ),
            "Avg is each seed's mean over the seven tasks, then averaged; its sd is over the seeds' Avgs and does not include the documents' sampling error (the ±Avg of the other tables).".into(),
            eval_note(g.runs.first().copied()),
        ]
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
        out.push(build(id, title, caption, &rows, conv));
    }
    out
}

/// The columns the measured runs fill (tasks, Avg and sd, each perplexity and its sd, the
/// seed count), and the tasks Avg averages.
fn columns(measured: &[Vec<Measured>]) -> (Vec<Col>, Vec<String>) {
    let (tasks, avg_tasks) =
        task_columns(|t| measured.iter().flatten().any(|m| m.acc.contains_key(t)));
    let ppls: Vec<String> = names::PPL_CORPORA
        .iter()
        .map(|(_, metric, _)| metric.to_string())
        .filter(|p| measured.iter().flatten().any(|m| m.ppl.contains_key(p)))
        .collect();
    let mut columns: Vec<Col> = tasks.iter().map(|t| Col::Task(t.clone())).collect();
    if !avg_tasks.is_empty() {
        columns.extend([Col::Avg, Col::Sd(Box::new(Col::Avg))]);
    }
    for p in &ppls {
        columns.extend([Col::Ppl(p.clone()), Col::Sd(Box::new(Col::Ppl(p.clone())))]);
    }
    columns.push(Col::Seeds);
    (columns, avg_tasks)
}

/// The table of replicate groups `rows` = (label, recovery cell, runs).
fn build(
    id: String,
    title: String,
    caption: String,
    rows: &[(String, String, &Vec<&RunData>)],
    conv: Convention,
) -> Table {
    let measured: Vec<Vec<Measured>> = rows
        .iter()
        .map(|(_, _, v)| v.iter().map(|r| measure(r, conv)).collect())
        .collect();
    let (columns, avg_tasks) = columns(&measured);
    // Every seed must have the value, or the row shows none (a mean of fewer seeds would
    // not be the row's).
    let stat = |xs: Vec<Option<f64>>| -> (Option<f64>, Option<f64>) {
        match xs.into_iter().collect::<Option<Vec<f64>>>() {
            Some(v) if !v.is_empty() => {
                let (m, sd) = mean_sd(&v);
                (Some(m), sd)
            }
            _ => (None, None),
        }
    };
    let value = |m: &Measured, c: &Col| -> Option<f64> {
        match c {
            Col::Task(t) => m.acc.get(t).map(|v| 100.0 * v.0),
            Col::Avg => average(m, &avg_tasks).0,
            Col::Ppl(p) => m.ppl.get(p).copied(),
            _ => None,
        }
    };
    let table_rows = rows
        .iter()
        .zip(&measured)
        .map(|((label, keys, runs), ms)| {
            let cells = columns
                .iter()
                .map(|c| match c {
                    Col::Seeds => Some(runs.len() as f64),
                    Col::Sd(inner) => stat(ms.iter().map(|m| value(m, inner)).collect()).1,
                    c => stat(ms.iter().map(|m| value(m, c)).collect()).0,
                })
                .collect();
            Row {
                label: label.clone(),
                keys: vec![keys.clone()],
                source: None,
                cells,
            }
        })
        .collect();
    Table {
        id,
        title,
        key_columns: vec!["Recovery".into()],
        columns,
        rows: table_rows,
        caption,
        footnotes: vec![],
    }
}
