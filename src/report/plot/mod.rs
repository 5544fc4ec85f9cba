//! Figures from the runs, per model and evaluation setting: where the runs cover several
//! pruning levels, line charts of average accuracy and WikiText-2 perplexity against the
//! level (one line per variant); where they cover one level (an ablation), horizontal
//! bar charts (one bar per variant); where recovered runs differ in their budget, budget
//! curves ([`budget`]). Drawn as SVG by hand ([`line`], [`bar`]) with an
//! embedded font, and rasterised to PNG from the same SVG ([`raster`]).

mod bar;
mod budget;
mod canvas;
mod line;
pub mod raster;

pub use bar::{Bar, BarChart};
pub use line::{LineChart, Point, Series};

use super::common::{average, eval_sig, labels, measure, method_label, method_of, Level};
use super::paper::{same_model, PublishedRow};
use super::recovery::{recovery_cells, recovery_method, recovery_rank};
use super::{Convention, RunData};
use crate::names::{self, SEVEN_TASKS};
use canvas::MAX_SERIES;
use std::collections::BTreeMap;

/// The runs of one chart group: one model, one evaluation setting.
struct Group<'a> {
    model: String,
    slug: String,
    dense: Option<&'a RunData>,
    /// Pruned runs with their level and label.
    members: Vec<(Level, &'a RunData, String)>,
    /// Tasks averaged (the seven the runs measured).
    tasks: Vec<String>,
    conv: Convention,
}

/// (file name, SVG text) of every chart the runs allow (see the module docs).
pub fn plots(
    runs: &[RunData],
    published: &[PublishedRow],
    aliases: &BTreeMap<String, String>,
    conv: Convention,
) -> Vec<(String, String)> {
    let mut by: BTreeMap<(String, String), Vec<(Level, &RunData)>> = BTreeMap::new();
    for r in runs.iter().filter(|r| !r.is_dense()) {
        if let Some(l) = Level::of(r) {
            by.entry((r.model(), eval_sig(r))).or_default().push((l, r));
        }
    }
    let per_model = |m: &str| by.keys().filter(|(x, _)| x == m).count();
    let mut out = Vec::new();
    for (i, ((model, sig), members)) in by.iter().enumerate() {
        let dense = runs
            .iter()
            .filter(|r| r.is_dense() && r.model() == *model && eval_sig(r) == *sig)
            .max_by(|a, b| (a.finished.as_str(), a.id).cmp(&(b.finished.as_str(), b.id)));
        let all: Vec<&RunData> = members.iter().map(|(_, r)| *r).collect();
        let labs = series_labels(&all);
        let tasks: Vec<String> = SEVEN_TASKS
            .iter()
            .filter(|t| {
                all.iter()
                    .chain(dense.iter())
                    .any(|r| r.metric(t, conv.metric_for(t)).is_some())
            })
            .map(|t| t.to_string())
            .collect();
        let suffix = if per_model(model) > 1 {
            format!("_{i}")
        } else {
            String::new()
        };
        let g = Group {
            model: model.clone(),
            slug: format!("{}{suffix}", file_slug(model)),
            dense,
            members: members
                .iter()
                .zip(labs)
                .map(|((l, r), lab)| (*l, *r, lab))
                .collect(),
            tasks,
            conv,
        };
        let mut levels: Vec<Level> = Vec::new();
        for (l, _, _) in &g.members {
            if !levels.iter().any(|x| x.same(l)) {
                levels.push(*l);
            }
        }
        out.extend(budget::budget_charts(&g));
        if levels.len() >= 2 {
            let paper_model = aliases.get(model).cloned().unwrap_or_else(|| model.clone());
            out.extend(sweep_charts(&g, published, &paper_model));
        } else if let Some(level) = levels.first() {
            out.extend(bar_charts(&g, level));
        }
    }
    out
}

fn file_slug(model: &str) -> String {
    model
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Row labels, with the recovery method for recovered runs ("CoMe + lora").
fn series_labels(runs: &[&RunData]) -> Vec<String> {
    labels(runs)
        .into_iter()
        .zip(recovery_cells(runs))
        .zip(runs)
        .map(|((lab, rec), r)| {
            if recovery_rank(&recovery_method(r)) > 0 {
                format!("{lab} + {rec}")
            } else {
                lab
            }
        })
        .collect()
}

impl Group<'_> {
    /// (average accuracy, its SE) and WikiText-2 perplexity of a run.
    fn values(&self, r: &RunData) -> (Option<(f64, Option<f64>)>, Option<f64>) {
        let m = measure(r, self.conv);
        let (avg, se) = average(&m, &self.tasks);
        (
            avg.map(|a| (a, se)),
            m.ppl.get(names::PPL_WIKITEXT2).copied(),
        )
    }

    fn dense_values(&self) -> (Option<f64>, Option<f64>) {
        match self.dense {
            Some(d) => {
                let (a, p) = self.values(d);
                (a.map(|x| x.0), p)
            }
            None => (None, None),
        }
    }

    fn acc_title(&self, what: &str) -> String {
        format!(
            "{}: average accuracy ({} tasks), {what}",
            self.model,
            self.tasks.len()
        )
    }
}

/// One horizontal bar chart per metric at a single pruning level.
fn bar_charts(g: &Group, level: &Level) -> Vec<(String, String)> {
    let (dense_acc, dense_ppl) = g.dense_values();
    // Colour by method, in order of appearance.
    let mut methods: Vec<String> = Vec::new();
    let mut acc = Vec::new();
    let mut ppl = Vec::new();
    for (_, r, lab) in &g.members {
        let m = method_of(r);
        let group = methods.iter().position(|x| *x == m).unwrap_or_else(|| {
            methods.push(m.clone());
            methods.len() - 1
        });
        let (a, p) = g.values(r);
        if let Some((value, se)) = a {
            acc.push(Bar {
                label: lab.clone(),
                value,
                se,
                group,
            });
        }
        if let Some(value) = p {
            ppl.push(Bar {
                label: lab.clone(),
                value,
                se: None,
                group,
            });
        }
    }
    let mut out = Vec::new();
    let name = |kind: &str| format!("bars_{kind}_{}_{}.svg", g.slug, level.slug());
    if !acc.is_empty() {
        let c = BarChart {
            title: g.acc_title(&level.text()),
            axis_label: "average accuracy (%), ±1 SE".into(),
            bars: acc,
            reference: dense_acc.map(|a| (a, "dense".to_string())),
            log: false,
        };
        out.push((name("acc"), c.svg()));
    }
    if !ppl.is_empty() {
        let c = BarChart {
            title: format!("{}: WikiText-2 perplexity, {}", g.model, level.text()),
            axis_label: "perplexity (log scale, lower is better)".into(),
            bars: ppl,
            reference: dense_ppl.map(|p| (p, "dense".to_string())),
            log: true,
        };
        out.push((name("ppl"), c.svg()));
    }
    out
}

/// Line charts against the pruning level (sparsity, else layers kept), split into parts
/// of at most [`MAX_SERIES`] lines so that no colour repeats within a chart.
fn sweep_charts(g: &Group, published: &[PublishedRow], paper_model: &str) -> Vec<(String, String)> {
    let by_sparsity = g
        .members
        .iter()
        .any(|(l, _, _)| matches!(l, Level::Sparsity(_)));
    let (mut acc, mut ppl) = sweep_series(g, by_sparsity);
    if by_sparsity {
        push_published(&mut acc, &mut ppl, published, paper_model);
    }
    for s in acc.iter_mut().chain(ppl.iter_mut()) {
        s.points.sort_by(|a, b| a.x.total_cmp(&b.x));
    }
    let (dense_acc, dense_ppl) = g.dense_values();
    let x_label = if by_sparsity {
        "sparsity (fraction of parameters removed)"
    } else {
        "layers kept"
    };
    let mut out = Vec::new();
    for (kind, series, reference) in [("acc", acc, dense_acc), ("ppl", ppl, dense_ppl)] {
        out.extend(sweep_parts(g, kind, series, reference, x_label));
    }
    out
}

/// Adds a point to the series labelled `label`, starting that series if it is new.
fn push_point(v: &mut Vec<Series>, label: &str, p: Point, dashed: bool) {
    match v.iter_mut().find(|s| s.label == label) {
        Some(s) => s.points.push(p),
        None => v.push(Series {
            label: label.to_string(),
            points: vec![p],
            dashed,
        }),
    }
}

/// (accuracy, perplexity) series of the group's runs, one per label, with x the sparsity
/// when `by_sparsity` and the layers kept otherwise; runs at the other kind of level are
/// left out.
fn sweep_series(g: &Group, by_sparsity: bool) -> (Vec<Series>, Vec<Series>) {
    let x_of = |l: &Level| match (l, by_sparsity) {
        (Level::Sparsity(s), true) => Some(*s),
        (Level::Layers(n), false) => Some(*n as f64),
        _ => None,
    };
    let mut acc: Vec<Series> = Vec::new();
    let mut ppl: Vec<Series> = Vec::new();
    for (l, r, lab) in &g.members {
        let Some(x) = x_of(l) else { continue };
        let (a, p) = g.values(r);
        if let Some((y, se)) = a {
            push_point(&mut acc, lab, Point { x, y, se }, false);
        }
        if let Some(y) = p {
            push_point(&mut ppl, lab, Point { x, y, se: None }, false);
        }
    }
    (acc, ppl)
}

/// Adds the published pruned rows of `paper_model` as dashed series, by sparsity.
fn push_published(
    acc: &mut Vec<Series>,
    ppl: &mut Vec<Series>,
    published: &[PublishedRow],
    paper_model: &str,
) {
    for p in published
        .iter()
        .filter(|p| !p.is_dense() && same_model(&p.model, paper_model))
    {
        let Some(x) = p.sparsity else { continue };
        let lab = format!("{} (published)", method_label(&p.method.to_lowercase()));
        if let Some(y) = p.avg {
            push_point(acc, &lab, Point { x, y, se: None }, true);
        }
        if let Some(y) = p.ppl_wikitext2 {
            push_point(ppl, &lab, Point { x, y, se: None }, true);
        }
    }
}

/// The line charts of one metric (`kind` "acc" or "ppl", the latter on a log scale), in
/// parts of at most [`MAX_SERIES`] series, with the dense value as reference line.
fn sweep_parts(
    g: &Group,
    kind: &str,
    series: Vec<Series>,
    reference: Option<f64>,
    x_label: &str,
) -> Vec<(String, String)> {
    let log_y = kind == "ppl";
    let chunks: Vec<Vec<Series>> = series.chunks(MAX_SERIES).map(|c| c.to_vec()).collect();
    let n = chunks.len();
    let mut out = Vec::new();
    for (k, series) in chunks.into_iter().enumerate() {
        let (part, part_title) = if n > 1 {
            (format!("_part{}", k + 1), format!(" ({}/{n})", k + 1))
        } else {
            (String::new(), String::new())
        };
        let reference = reference.map(|v| (v, "dense".to_string()));
        let chart = if log_y {
            LineChart {
                title: format!("{}: WikiText-2 perplexity{part_title}", g.model),
                x_label: x_label.into(),
                y_label: "perplexity (log scale)".into(),
                series,
                reference,
                log_y: true,
            }
        } else {
            LineChart {
                title: format!("{}{part_title}", g.acc_title("±1 SE")),
                x_label: x_label.into(),
                y_label: "average accuracy (%)".into(),
                series,
                reference,
                log_y: false,
            }
        };
        out.push((format!("plot_{kind}_{}{part}.svg", g.slug), chart.svg()));
    }
    out
}
