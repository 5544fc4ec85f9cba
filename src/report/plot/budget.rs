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

fn at_level(g: &Group, level: &Level) -> Vec<(String, String)> {
    let runs: Vec<&RunData> = g
        .members
        .iter()
        .filter(|(l, r, _)| l.same(level) && recovery_rank(&recovery_method(r)) > 0)
        .map(|(_, r, _)| *r)
        .filter(|r| r.param(TOKENS).and_then(|v| v.as_f64()).is_some())
        .collect();
    let budgets: BTreeSet<u64> = runs
        .iter()
        .filter_map(|r| r.param(TOKENS)?.as_u64())
        .collect();
    if budgets.len() < 3 {
        return vec![];
    }
    // Lines are the runs without their budget: the same label for every budget.
    let stripped: Vec<RunData> = runs
        .iter()
        .map(|r| {
            let mut s = (*r).clone();
            s.params.remove(TOKENS);
            s
        })
        .collect();
    let refs: Vec<&RunData> = stripped.iter().collect();
    let line_labels: Vec<String> = labels(&refs)
        .into_iter()
        .zip(recovery_cells(&refs))
        .map(|(l, rec)| format!("{l} + {rec}"))
        .collect();
    // (file kind, chart title, y label, log scale, value of a run)
    type Value<'a> = Box<Measure<'a>>;
    let mut kinds: Vec<(String, String, String, bool, Value)> = vec![(
        "acc".into(),
        g.acc_title(&level.text()),
        "average accuracy (%), ±1 SE".into(),
        false,
        Box::new(|r: &RunData| {
            let (avg, se) = average(&measure(r, g.conv), &g.tasks);
            avg.map(|a| (a, se))
        }),
    )];
    for (_, metric, label) in names::PPL_CORPORA {
        kinds.push((
            metric.trim_start_matches("ppl_").to_string(),
            format!("{}: {label}, {}", g.model, level.text()),
            format!("{label} (log scale)"),
            true,
            Box::new(move |r: &RunData| measure(r, g.conv).ppl.get(metric).map(|p| (*p, None))),
        ));
    }
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
        for (kind, title, y_label, log_y, value) in &kinds {
            let mut series = lines(&runs, &line_labels, x, value);
            if series.is_empty() {
                continue;
            }
            series.truncate(MAX_SERIES);
            let chart = LineChart {
                title: title.clone(),
                x_label: x_label.into(),
                y_label: y_label.clone(),
                series,
                reference: None,
                log_y: *log_y,
            };
            out.push((
                format!("{prefix}_{kind}_{}_{}.svg", g.slug, level.slug()),
                chart.svg(),
            ));
        }
    }
    out
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
