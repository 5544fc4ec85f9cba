//! Budget curves: where recovered runs differ in their training budget
//! (`recovery.tokens`), line charts of average accuracy and of each perplexity against
//! the budget (log2 of the tokens), one line per pruned model and recovery method, so a
//! reader sees where each curve flattens. The same curves against compute (`budget_compute_*`:
//! the recorded layer-token passes, log2) compare methods at matched compute, where the
//! first compare them at matched training text.

use super::line::{LineChart, Point, Series};
use super::{Group, MAX_SERIES};
use crate::names;
use crate::report::common::{average, labels, measure, Level};
use crate::report::recovery::{recovery_cells, recovery_method, recovery_rank};
use crate::report::RunData;
use std::collections::BTreeSet;

const TOKENS: &str = "recovery.tokens";

/// What a chart plots of a run: a value and its standard error, if measured.
type Measure<'a> = dyn Fn(&RunData) -> Option<(f64, Option<f64>)> + 'a;

/// Where a run sits on a chart's x axis, if it was measured.
type XOf<'a> = dyn Fn(&RunData) -> Option<f64> + 'a;

/// Charts of `g` per pruning level where at least three budgets were run.
pub(super) fn budget_charts(g: &Group) -> Vec<(String, String)> {
    let mut levels: Vec<Level> = Vec::new();
    for (l, _, _) in &g.members {
        if !levels.iter().any(|x| x.same(l)) {
            levels.push(*l);
        }
    }
    levels.iter().flat_map(|level| at_level(g, level)).collect()
}

/// One y quantity of the budget charts.
struct YAxis<'a> {
    /// File name part ("acc", or the perplexity corpus).
    kind: String,
    title: String,
    y_label: String,
    log_y: bool,
    value: Box<Measure<'a>>,
}

/// The budget charts at one pruning level: none unless its recovered runs cover at least
/// three budgets.
fn at_level(g: &Group, level: &Level) -> Vec<(String, String)> {
    let runs = recovered_runs(g, level);
    let budgets: BTreeSet<u64> = runs
        .iter()
        .filter_map(|r| r.param(TOKENS)?.as_u64())
        .collect();
    if budgets.len() < 3 {
        return vec![];
    }
    let line_labels = line_labels(&runs);
    let kinds = y_axes(g, level);
    let text = |r: &RunData| r.param(TOKENS).and_then(|v| v.as_f64());
    let passes = |r: &RunData| {
        r.metric("", names::RUN_RECOVERY_LAYER_TOKEN_PASSES)
            .map(|m| m.value)
    };
    // (file prefix, x label, x of a run)
    let axes: [(&str, &str, &XOf); 2] = [
        (
            "budget",
            "training tokens per trained unit, log2 (13 = 8k, 16 = 64k, 19 = 512k)",
            &text,
        ),
        (
            "budget_compute",
            "compute: decoder-layer token passes (forward + backward), log2 (20 = 1M, 24 = 16M)",
            &passes,
        ),
    ];
    let mut out = Vec::new();
    for (prefix, x_label, x) in axes {
        for y in &kinds {
            let mut series = lines(&runs, &line_labels, x, &y.value);
            if series.is_empty() {
                continue;
            }
            series.truncate(MAX_SERIES);
            let chart = LineChart {
                title: y.title.clone(),
                x_label: x_label.into(),
                y_label: y.y_label.clone(),
                series,
                reference: None,
                log_y: y.log_y,
            };
            out.push((
                format!("{prefix}_{}_{}_{}.svg", y.kind, g.slug, level.slug()),
                chart.svg(),
            ));
        }
    }
    out
}

/// The recovered runs of `g` at `level` that record their budget.
fn recovered_runs<'a>(g: &Group<'a>, level: &Level) -> Vec<&'a RunData> {
    g.members
        .iter()
        .filter(|(l, r, _)| l.same(level) && recovery_rank(&recovery_method(r)) > 0)
        .map(|(_, r, _)| *r)
        .filter(|r| r.param(TOKENS).and_then(|v| v.as_f64()).is_some())
        .collect()
}

/// Line labels of `runs`: the runs without their budget, so that every budget of one
/// pruned model and recovery method gets the same label.
fn line_labels(runs: &[&RunData]) -> Vec<String> {
    let stripped: Vec<RunData> = runs
        .iter()
        .map(|r| {
            let mut s = (*r).clone();
            s.params.remove(TOKENS);
            s
        })
        .collect();
    let refs: Vec<&RunData> = stripped.iter().collect();
    labels(&refs)
        .into_iter()
        .zip(recovery_cells(&refs))
        .map(|(l, rec)| format!("{l} + {rec}"))
        .collect()
}

/// The quantities charted at `level`: average accuracy, then each perplexity.
fn y_axes<'a>(g: &'a Group, level: &Level) -> Vec<YAxis<'a>> {
    let mut kinds = vec![YAxis {
        kind: "acc".into(),
        title: g.acc_title(&level.text()),
        y_label: "average accuracy (%), ±1 SE".into(),
        log_y: false,
        value: Box::new(move |r: &RunData| {
            let (avg, se) = average(&measure(r, g.conv), &g.tasks);
            avg.map(|a| (a, se))
        }),
    }];
    for (_, metric, label) in names::PPL_CORPORA {
        kinds.push(YAxis {
            kind: metric.trim_start_matches("ppl_").to_string(),
            title: format!("{}: {label}, {}", g.model, level.text()),
            y_label: format!("{label} (log scale)"),
            log_y: true,
            value: Box::new(move |r: &RunData| {
                measure(r, g.conv).ppl.get(metric).map(|p| (*p, None))
            }),
        });
    }
    kinds
}

/// One line per label: (log2 of `x`, value) of its runs, in `x` order; lines of fewer
/// than two points are left out.
fn lines(runs: &[&RunData], labels: &[String], x: &XOf, value: &Measure) -> Vec<Series> {
    let mut series: Vec<Series> = Vec::new();
    for (r, label) in runs.iter().zip(labels) {
        let (Some(at), Some((y, se))) = (x(r).filter(|v| *v > 0.0), value(r)) else {
            continue;
        };
        let p = Point {
            x: at.log2(),
            y,
            se,
        };
        match series.iter_mut().find(|s| s.label == *label) {
            Some(s) => s.points.push(p),
            None => series.push(Series {
                label: label.clone(),
                points: vec![p],
                dashed: false,
            }),
        }
    }
    series.retain(|s| s.points.len() >= 2);
    for s in &mut series {
        s.points.sort_by(|a, b| a.x.total_cmp(&b.x));
    }
    series
}
