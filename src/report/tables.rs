//! Table layouts (main, ablation, published) and their Markdown / CSV / LaTeX forms.

use super::paper::{same_model, PublishedRow};
use super::{Convention, RunData};
use crate::error::{Error, Result};
use crate::experiment::canonical_json;
use crate::prune::Method;
use crate::track::names::{self, SEVEN_TASKS};
use polars::prelude::*;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// A column of a results table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Col {
    /// Accuracy of a task, in percent.
    Task(String),
    /// Mean accuracy over the averaged tasks, in percent.
    Avg,
    /// Standard error of Avg, in points.
    AvgSe,
    /// Avg as a percentage of the dense Avg.
    Retention,
    /// A perplexity; the store metric name (`ppl_wikitext2`, `ppl_c4`).
    Ppl(String),
    /// A column measured at one pruning level, e.g. perplexity at 20 % (sweep tables).
    At(Box<Col>, String),
}

impl Col {
    pub fn header(&self) -> String {
        match self {
            Col::Task(t) => names::task_label(t).to_string(),
            Col::Avg => "Avg".into(),
            Col::AvgSe => "±Avg".into(),
            Col::Retention => "Ret.%".into(),
            Col::Ppl(m) if m == names::PPL_WIKITEXT2 => "Wiki2 PPL".into(),
            Col::Ppl(m) if m == names::PPL_C4 => "C4 PPL".into(),
            Col::Ppl(m) => m.clone(),
            Col::At(c, level) => format!("{} @ {level}", c.header()),
        }
    }
    fn decimals(&self) -> usize {
        match self {
            Col::Retention => 1,
            Col::At(c, _) => c.decimals(),
            _ => 2,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub label: String,
    /// None: our run; Some(k): published, footnote k (1-based).
    pub source: Option<usize>,
    /// Aligned with the table's columns.
    pub cells: Vec<Option<f64>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    /// File stem, unique within a report.
    pub id: String,
    pub title: String,
    pub columns: Vec<Col>,
    pub rows: Vec<Row>,
    pub caption: String,
    /// Citations of the published rows, numbered from 1.
    pub footnotes: Vec<String>,
}

impl Table {
    /// The cell of `row` (by label) in `col` (by header).
    pub fn cell(&self, row: &str, col: &str) -> Option<f64> {
        let c = self.columns.iter().position(|x| x.header() == col)?;
        self.rows
            .iter()
            .find(|r| r.label == row)?
            .cells
            .get(c)
            .copied()
            .flatten()
    }

    fn source_text(&self, r: &Row) -> String {
        match r.source {
            None => "ours".into(),
            Some(k) => format!("published [{k}]"),
        }
    }

    fn fmt(&self, c: usize, v: Option<f64>) -> String {
        match (v, self.columns.get(c)) {
            (Some(x), Some(col)) => format!("{x:.*}", col.decimals()),
            _ => "-".into(),
        }
    }

    pub fn to_markdown(&self) -> String {
        let mut s = format!("### {}\n\n", self.title);
        let heads: Vec<String> = self.columns.iter().map(Col::header).collect();
        s.push_str(&format!("| Method | Source | {} |\n", heads.join(" | ")));
        s.push_str(&format!("|:--|:--|{}\n", "--:|".repeat(heads.len())));
        for r in &self.rows {
            let cells: Vec<String> = r
                .cells
                .iter()
                .enumerate()
                .map(|(c, v)| self.fmt(c, *v))
                .collect();
            s.push_str(&format!(
                "| {} | {} | {} |\n",
                md_escape(&r.label),
                self.source_text(r),
                cells.join(" | ")
            ));
        }
        s.push_str(&format!("\n{}\n", self.caption));
        for (i, f) in self.footnotes.iter().enumerate() {
            s.push_str(&format!("\n[{}] {}", i + 1, f));
        }
        if !self.footnotes.is_empty() {
            s.push('\n');
        }
        s
    }

    pub fn to_latex(&self) -> String {
        let mut s = String::from("\\begin{table}[t]\n\\centering\n\\small\n");
        let mut caption = latex_escape(&self.caption);
        for (i, f) in self.footnotes.iter().enumerate() {
            caption.push_str(&format!(" [{}] {}", i + 1, latex_escape(f)));
        }
        s.push_str(&format!(
            "\\caption{{{}. {}}}\n",
            latex_escape(&self.title),
            caption
        ));
        s.push_str(&format!("\\label{{tab:{}}}\n", self.id));
        s.push_str(&format!(
            "\\begin{{tabular}}{{ll{}}}\n\\toprule\n",
            "r".repeat(self.columns.len())
        ));
        let heads: Vec<String> = self
            .columns
            .iter()
            .map(|c| latex_escape(&c.header()))
            .collect();
        s.push_str(&format!(
            "Method & Source & {} \\\\\n\\midrule\n",
            heads.join(" & ")
        ));
        for r in &self.rows {
            let cells: Vec<String> = r
                .cells
                .iter()
                .enumerate()
                .map(|(c, v)| self.fmt(c, *v))
                .collect();
            s.push_str(&format!(
                "{} & {} & {} \\\\\n",
                latex_escape(&r.label),
                latex_escape(&self.source_text(r)),
                cells.join(" & ")
            ));
        }
        s.push_str("\\bottomrule\n\\end{tabular}\n\\end{table}\n");
        s
    }

    /// The table as a polars frame: `method`, `source`, then one Float64 column per column.
    pub fn to_frame(&self) -> PolarsResult<DataFrame> {
        let mut cols = vec![
            Column::new(
                "method".into(),
                self.rows
                    .iter()
                    .map(|r| r.label.clone())
                    .collect::<Vec<_>>(),
            ),
            Column::new(
                "source".into(),
                self.rows
                    .iter()
                    .map(|r| self.source_text(r))
                    .collect::<Vec<_>>(),
            ),
        ];
        for (c, col) in self.columns.iter().enumerate() {
            let vals: Vec<Option<f64>> = self
                .rows
                .iter()
                .map(|r| r.cells.get(c).copied().flatten())
                .collect();
            cols.push(Column::new(col.header().into(), vals));
        }
        DataFrame::new(cols)
    }

    pub fn write_csv(&self, path: &Path) -> Result<()> {
        let mut df = self
            .to_frame()
            .map_err(|e| Error::format(path, e.to_string()))?;
        let mut f = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
        CsvWriter::new(&mut f)
            .finish(&mut df)
            .map_err(|e| Error::format(path, e.to_string()))
    }
}

fn md_escape(s: &str) -> String {
    s.replace('|', "\\|")
}

fn latex_escape(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\textbackslash{}"),
            '&' | '%' | '$' | '#' | '_' | '{' | '}' => {
                out.push('\\');
                out.push(c);
            }
            '~' => out.push_str("\\textasciitilde{}"),
            '^' => out.push_str("\\textasciicircum{}"),
            '±' => out.push_str("$\\pm$"),
            'Σ' => out.push_str("$\\Sigma$"),
            '²' => out.push_str("$^2$"),
            _ => out.push(c),
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// What a run measured, under a convention.

/// Accuracies (fractions) with standard errors, perplexities and item counts of one run.
#[derive(Debug, Clone, Default)]
pub(crate) struct Measured {
    pub acc: BTreeMap<String, (f64, Option<f64>)>,
    pub ppl: BTreeMap<String, f64>,
    /// How each perplexity was measured, e.g. "seqlen=2048, 4 windows".
    pub ppl_setting: BTreeMap<String, String>,
    pub n: BTreeMap<String, f64>,
}

pub(crate) fn measure(run: &RunData, conv: Convention) -> Measured {
    let mut m = Measured::default();
    for t in names::ALL_TASKS {
        if let Some(x) = run.metric(t, conv.metric_for(t)) {
            m.acc.insert(t.to_string(), (x.value, x.stderr));
        }
        if let Some(x) = run.metric(t, names::N) {
            m.n.insert(t.to_string(), x.value);
        }
    }
    for (task, name) in [
        (names::WIKITEXT2, names::PPL_WIKITEXT2),
        (names::C4, names::PPL_C4),
    ] {
        if let Some(x) = run.metric(task, name) {
            m.ppl.insert(name.to_string(), x.value);
            let mut setting = x.context.clone();
            if let Some(n) = run.metric(task, names::N) {
                setting = format!("{setting}, {} windows", n.value);
            }
            m.ppl_setting.insert(name.to_string(), setting);
        }
    }
    m
}

/// Mean accuracy in percent over `tasks` (all must be present) and its standard error
/// sqrt(sum se_i^2) / k in points (None if a stderr is missing).
pub(crate) fn average(m: &Measured, tasks: &[String]) -> (Option<f64>, Option<f64>) {
    if tasks.is_empty() {
        return (None, None);
    }
    let vals: Option<Vec<(f64, Option<f64>)>> =
        tasks.iter().map(|t| m.acc.get(t).copied()).collect();
    let Some(vals) = vals else {
        return (None, None);
    };
    let k = vals.len() as f64;
    let avg = 100.0 * vals.iter().map(|v| v.0).sum::<f64>() / k;
    let se: Option<f64> = vals
        .iter()
        .map(|v| v.1.map(|s| (100.0 * s).powi(2)))
        .sum::<Option<f64>>()
        .map(|s| s.sqrt() / k);
    (Some(avg), se)
}

/// Parameters that identify the evaluation (everything under `eval.` and `runtime.`).
pub(crate) fn eval_sig(run: &RunData) -> String {
    let m: BTreeMap<&String, &Value> = run
        .params
        .iter()
        .filter(|(k, _)| k.starts_with("eval.") || k.starts_with("runtime."))
        .collect();
    canonical_json(&serde_json::to_value(m).unwrap_or(Value::Null))
}

/// How much a pruned run removes: a sparsity or a target depth.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub(crate) enum Level {
    Sparsity(f64),
    Layers(i64),
}

impl Level {
    pub fn of(run: &RunData) -> Option<Level> {
        if let Some(n) = run.param("prune.target_layers").and_then(Value::as_i64) {
            return Some(Level::Layers(n));
        }
        run.param("prune.sparsity")
            .and_then(Value::as_f64)
            .map(Level::Sparsity)
    }
    pub fn text(&self) -> String {
        match self {
            Level::Sparsity(s) => format!("sparsity {s}"),
            Level::Layers(n) => format!("{n} layers kept"),
        }
    }
    pub fn slug(&self) -> String {
        match self {
            Level::Sparsity(s) => format!("s{s}"),
            Level::Layers(n) => format!("L{n}"),
        }
    }
    fn same(&self, o: &Level) -> bool {
        match (self, o) {
            (Level::Sparsity(a), Level::Sparsity(b)) => (a - b).abs() < 1e-9,
            (Level::Layers(a), Level::Layers(b)) => a == b,
            _ => false,
        }
    }
}

pub(crate) fn method_label(method: &str) -> String {
    match method {
        "come" => "CoMe",
        "come-p" => "CoMe-P",
        "shortgpt" => "ShortGPT",
        "sleb" => "SLEB",
        "reverse" => "Reverse",
        "magnitude" => "Magnitude",
        "magnitude+" => "Magnitude+",
        "taylor" => "Taylor",
        "taylor+" => "Taylor+",
        "laco" => "LaCo",
        "mka" => "MKA",
        "slicegpt" => "SliceGPT",
        "dense" => "Dense",
        other => other,
    }
    .to_string()
}

fn method_rank(method: &str) -> usize {
    Method::ALL
        .iter()
        .position(|m| *m == method)
        .unwrap_or(Method::ALL.len())
}

pub(crate) fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "none".into(),
        other => other.to_string(),
    }
}

fn method_of(run: &RunData) -> String {
    run.param("prune.method")
        .map(value_text)
        .unwrap_or_else(|| "dense".into())
}

/// Row labels for pruned runs: the method, plus the `prune.*` keys (other than method,
/// sparsity, target) whose values differ among `runs`.
pub(crate) fn labels(runs: &[&RunData]) -> Vec<String> {
    let skip = ["prune.method", "prune.sparsity", "prune.target_layers"];
    let keys: BTreeSet<&String> = runs
        .iter()
        .flat_map(|r| r.params.keys())
        .filter(|k| k.starts_with("prune.") && !skip.contains(&k.as_str()))
        .collect();
    let varying: Vec<&String> = keys
        .into_iter()
        .filter(|k| {
            let vals: BTreeSet<String> = runs
                .iter()
                .map(|r| r.param(k).map(canonical_json).unwrap_or_default())
                .collect();
            vals.len() > 1
        })
        .collect();
    runs.iter()
        .map(|r| {
            let base = method_label(&method_of(r));
            let extra: Vec<String> = varying
                .iter()
                .map(|k| {
                    format!(
                        "{}={}",
                        k.trim_start_matches("prune."),
                        r.param(k).map(value_text).unwrap_or_default()
                    )
                })
                .collect();
            if extra.is_empty() {
                base
            } else {
                format!("{base} ({})", extra.join(", "))
            }
        })
        .collect()
}

fn slug(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The latest dense run per (model, evaluation signature).
fn dense_runs(runs: &[RunData]) -> BTreeMap<(String, String), &RunData> {
    let mut out: BTreeMap<(String, String), &RunData> = BTreeMap::new();
    for r in runs.iter().filter(|r| r.is_dense()) {
        let key = (r.model(), eval_sig(r));
        match out.get(&key) {
            Some(prev) if (prev.finished.as_str(), prev.id) > (r.finished.as_str(), r.id) => {}
            _ => {
                out.insert(key, r);
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// Assembling one table.

struct Builder<'a> {
    conv: Convention,
    dense: Option<&'a RunData>,
    ours: Vec<(String, &'a RunData)>,
    published: Vec<&'a PublishedRow>,
}

impl Builder<'_> {
    fn build(self, id: String, title: String, extra_caption: &str) -> Table {
        let mut ours: Vec<(String, Measured)> = Vec::new();
        if let Some(d) = self.dense {
            ours.push(("Dense".into(), measure(d, self.conv)));
        }
        for (label, r) in &self.ours {
            ours.push((label.clone(), measure(r, self.conv)));
        }
        let order: Vec<&str> = SEVEN_TASKS.iter().copied().chain(["mmlu"]).collect();
        let tasks: Vec<String> = order
            .iter()
            .filter(|t| {
                ours.iter().any(|(_, m)| m.acc.contains_key(**t))
                    || self.published.iter().any(|p| p.tasks.contains_key(**t))
            })
            .map(|t| t.to_string())
            .collect();
        let avg_tasks: Vec<String> = tasks
            .iter()
            .filter(|t| SEVEN_TASKS.contains(&t.as_str()))
            .cloned()
            .collect();
        let ppl_cols: Vec<String> = [names::PPL_WIKITEXT2, names::PPL_C4]
            .iter()
            .filter(|p| {
                ours.iter().any(|(_, m)| m.ppl.contains_key(**p))
                    || self.published.iter().any(|r| {
                        (**p == names::PPL_WIKITEXT2 && r.ppl_wikitext2.is_some())
                            || (**p == names::PPL_C4 && r.ppl_c4.is_some())
                    })
            })
            .map(|p| p.to_string())
            .collect();
        let has_se = ours.iter().any(|(_, m)| average(m, &avg_tasks).1.is_some());
        let mut columns: Vec<Col> = tasks.iter().map(|t| Col::Task(t.clone())).collect();
        if !avg_tasks.is_empty() {
            columns.push(Col::Avg);
            if has_se {
                columns.push(Col::AvgSe);
            }
            columns.push(Col::Retention);
        }
        columns.extend(ppl_cols.iter().map(|p| Col::Ppl(p.clone())));

        let dense_avg = self
            .dense
            .and_then(|_| ours.first())
            .and_then(|(_, m)| average(m, &avg_tasks).0);
        let mut rows = Vec::new();
        let mut max_se: Option<f64> = None;
        for (label, m) in &ours {
            let (avg, se) = average(m, &avg_tasks);
            if let Some(s) = se {
                max_se = Some(max_se.map_or(s, |x: f64| x.max(s)));
            }
            let cells = columns
                .iter()
                .map(|c| match c {
                    Col::Task(t) => m.acc.get(t).map(|v| 100.0 * v.0),
                    Col::Avg => avg,
                    Col::AvgSe => se,
                    Col::Retention => match (avg, dense_avg) {
                        (Some(a), Some(d)) if d > 0.0 => Some(100.0 * a / d),
                        _ => None,
                    },
                    Col::Ppl(p) => m.ppl.get(p).copied(),
                    Col::At(..) => None,
                })
                .collect();
            rows.push(Row {
                label: label.clone(),
                source: None,
                cells,
            });
        }
        let mut footnotes: Vec<String> = Vec::new();
        for p in &self.published {
            let cite = p.citation();
            let k = match footnotes.iter().position(|f| *f == cite) {
                Some(i) => i + 1,
                None => {
                    footnotes.push(cite);
                    footnotes.len()
                }
            };
            // As reported, else computed from the averaged tasks when all are reported.
            let avg_of = |r: &PublishedRow| {
                let v: Option<Vec<f64>> =
                    avg_tasks.iter().map(|t| r.tasks.get(t).copied()).collect();
                r.avg.or(v
                    .filter(|v| !v.is_empty())
                    .map(|v| v.iter().sum::<f64>() / v.len() as f64))
            };
            let avg = avg_of(p);
            // Retention against the same source's dense row, unless the source states it.
            let dense_avg = self
                .published
                .iter()
                .find(|d| d.is_dense() && d.source == p.source && same_model(&d.model, &p.model))
                .and_then(|d| avg_of(d));
            let retention = p.retention.or(match (avg, dense_avg) {
                (Some(a), Some(d)) if d > 0.0 && !p.is_dense() => Some(100.0 * a / d),
                _ => None,
            });
            let cells = columns
                .iter()
                .map(|c| match c {
                    Col::Task(t) => p.tasks.get(t).copied(),
                    Col::Avg => avg,
                    Col::AvgSe => None,
                    Col::Retention => retention,
                    Col::Ppl(x) if x == names::PPL_WIKITEXT2 => p.ppl_wikitext2,
                    Col::Ppl(x) if x == names::PPL_C4 => p.ppl_c4,
                    Col::Ppl(_) | Col::At(..) => None,
                })
                .collect();
            let label = match p.sparsity {
                Some(s) if !p.is_dense() => {
                    format!("{} (s={s})", method_label(&p.method.to_lowercase()))
                }
                _ => method_label(&p.method.to_lowercase()),
            };
            rows.push(Row {
                label,
                source: Some(k),
                cells,
            });
        }

        let mut caption = String::new();
        if !extra_caption.is_empty() {
            caption.push_str(extra_caption);
            caption.push(' ');
        }
        if !tasks.is_empty() {
            caption.push_str(&format!("{}.", self.conv.describe()));
        }
        let items = items_text(&ours, &tasks);
        if !items.is_empty() {
            caption.push_str(&format!(" Items per task: {items}."));
        }
        if !avg_tasks.is_empty() {
            let labels: Vec<&str> = avg_tasks.iter().map(|t| names::task_label(t)).collect();
            caption.push_str(&format!(
                " Avg: mean accuracy over the {} tasks shown ({}), MMLU excluded",
                avg_tasks.len(),
                labels.join(", ")
            ));
            if has_se {
                caption.push_str(&format!(
                    "; ±Avg: its standard error, sqrt(Σ se_i²)/{} from the per-task standard errors",
                    avg_tasks.len()
                ));
            }
            match max_se {
                Some(s) => caption.push_str(&format!(", at most {s:.2} points here.")),
                None => caption.push('.'),
            }
            caption.push_str(" Ret.%: Avg as a percentage of the dense Avg.");
        }
        if !ppl_cols.is_empty() {
            let settings: std::collections::BTreeSet<&str> = ours
                .iter()
                .flat_map(|(_, m)| m.ppl_setting.values().map(|s| s.as_str()))
                .filter(|s| !s.is_empty())
                .collect();
            caption.push_str(" Perplexity: non-overlapping windows of the test text");
            if !settings.is_empty() {
                let list: Vec<&str> = settings.into_iter().collect();
                caption.push_str(&format!(" ({})", list.join("; ")));
            }
            caption.push('.');
        }
        if !self.published.is_empty() {
            caption.push_str(
                " Published rows are copied from their sources (their own evaluation settings and metric; Avg and Ret.% as reported or, if absent, computed from the tasks shown).",
            );
        }
        Table {
            id,
            title,
            columns,
            rows,
            caption: caption.trim().to_string(),
            footnotes,
        }
    }
}

/// "BoolQ 100, PIQA 100" or "100 each" from the `n` metrics of our rows.
fn items_text(ours: &[(String, Measured)], tasks: &[String]) -> String {
    let mut per: Vec<(String, String)> = Vec::new();
    for t in tasks {
        let ns: BTreeSet<i64> = ours
            .iter()
            .filter_map(|(_, m)| m.n.get(t))
            .map(|v| v.round() as i64)
            .collect();
        if ns.is_empty() {
            continue;
        }
        let text = ns.iter().map(i64::to_string).collect::<Vec<_>>().join("/");
        per.push((names::task_label(t).to_string(), text));
    }
    if per.is_empty() {
        return String::new();
    }
    let all_same = per.iter().all(|(_, n)| *n == per[0].1);
    if all_same && per.len() == tasks.len() && per.len() > 1 {
        format!("{} each", per[0].1)
    } else {
        per.iter()
            .map(|(t, n)| format!("{t} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

// ---------------------------------------------------------------------------------------
// The layouts.

/// One table per (model, evaluation setting, sparsity): the dense row, every pruned run,
/// then the published rows of the same model and sparsity.
pub fn main_tables(
    runs: &[RunData],
    published: &[PublishedRow],
    aliases: &BTreeMap<String, String>,
    conv: Convention,
) -> Vec<Table> {
    let dense = dense_runs(runs);
    // (model, eval signature) -> level -> runs
    let mut groups: BTreeMap<(String, String), Vec<(Level, &RunData)>> = BTreeMap::new();
    for r in runs.iter().filter(|r| !r.is_dense()) {
        if let Some(level) = Level::of(r) {
            groups
                .entry((r.model(), eval_sig(r)))
                .or_default()
                .push((level, r));
        }
    }
    let evals_per_model = |model: &str| groups.keys().filter(|(m, _)| m == model).count();
    let mut out = Vec::new();
    for ((model, sig), members) in &groups {
        let mut levels: Vec<Level> = Vec::new();
        for (l, _) in members {
            if !levels.iter().any(|x| x.same(l)) {
                levels.push(*l);
            }
        }
        levels.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
        let paper_model = aliases.get(model).cloned().unwrap_or_else(|| model.clone());
        for level in levels {
            let these: Vec<&RunData> = members
                .iter()
                .filter(|(l, _)| l.same(&level))
                .map(|(_, r)| *r)
                .collect();
            let mut ours: Vec<(String, &RunData)> = labels(&these).into_iter().zip(these).collect();
            ours.sort_by(|a, b| {
                (method_rank(&method_of(a.1)), &a.0).cmp(&(method_rank(&method_of(b.1)), &b.0))
            });
            let pubs: Vec<&PublishedRow> = published
                .iter()
                .filter(|p| same_model(&p.model, &paper_model))
                .filter(|p| match (level, p.sparsity) {
                    _ if p.is_dense() => true,
                    (Level::Sparsity(s), Some(ps)) => (s - ps).abs() < 1e-9,
                    _ => false,
                })
                .collect();
            let suffix = if evals_per_model(model) > 1 {
                format!(
                    "_e{}",
                    &crate::experiment::hash_value(&Value::String(sig.clone()))[..6]
                )
            } else {
                String::new()
            };
            let id = format!("main_{}_{}{suffix}", slug(model), level.slug());
            let title = format!("{model}, {}", level.text());
            let b = Builder {
                conv,
                dense: dense.get(&(model.clone(), sig.clone())).copied(),
                ours,
                published: pubs,
            };
            let eval_note = eval_note(members.first().map(|(_, r)| *r));
            out.push(b.build(id, title, &eval_note));
        }
    }
    out
}

/// "Evaluation: tasks limited to N documents" etc., from the eval params of a run.
fn eval_note(run: Option<&RunData>) -> String {
    let Some(r) = run else { return String::new() };
    let no_tasks = r
        .param("eval.tasks")
        .and_then(Value::as_array)
        .is_some_and(|t| t.is_empty());
    if no_tasks {
        return String::new();
    }
    let mut parts = Vec::new();
    if let Some(l) = r.param("eval.limit").and_then(Value::as_i64) {
        parts.push(format!("first {l} documents per task"));
    }
    if let Some(f) = r.param("eval.fraction").and_then(Value::as_f64) {
        parts.push(format!("a {f} fraction of each task"));
    }
    if let Some(s) = r.param("eval.seed").and_then(Value::as_i64) {
        parts.push(format!("documents sampled with seed {s}"));
    }
    if parts.is_empty() {
        "Zero-shot, full task sets.".into()
    } else {
        format!("Zero-shot, {}.", parts.join(", "))
    }
}

/// One table per model whose pruned runs span several sparsities: a row per method (and
/// variant), its WikiText-2 perplexity at every sparsity and, where the seven tasks were
/// run, its average and retention: the "methods x sparsity" comparison in one place.
pub fn sweep_tables(runs: &[RunData], conv: Convention) -> Vec<Table> {
    let seven: Vec<String> = SEVEN_TASKS.iter().map(|t| t.to_string()).collect();
    let dense = dense_runs(runs);
    let mut by_model: BTreeMap<String, Vec<&RunData>> = BTreeMap::new();
    for r in runs.iter().filter(|r| !r.is_dense()) {
        if let Some(Level::Sparsity(_)) = Level::of(r) {
            by_model.entry(r.model()).or_default().push(r);
        }
    }
    let mut out = Vec::new();
    for (model, mut pruned) in by_model {
        pruned.sort_by(|a, b| (a.finished.as_str(), a.id).cmp(&(b.finished.as_str(), b.id)));
        let mut levels: Vec<f64> = Vec::new();
        for r in &pruned {
            if let Some(Level::Sparsity(s)) = Level::of(r) {
                if !levels.iter().any(|x| (x - s).abs() < 1e-9) {
                    levels.push(s);
                }
            }
        }
        if levels.len() < 2 {
            continue;
        }
        levels.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
        let level_of = |r: &RunData| match Level::of(r) {
            Some(Level::Sparsity(s)) => levels.iter().position(|x| (x - s).abs() < 1e-9),
            _ => None,
        };
        let pct = |s: f64| format!("{}%", (s * 1000.0).round() / 10.0);
        let dense_avg = |r: &RunData| {
            dense
                .get(&(model.clone(), eval_sig(r)))
                .and_then(|d| average(&measure(d, conv), &seven).0)
        };

        // label -> per level (ppl, avg, retention); later runs override earlier ones.
        let labels = labels(&pruned);
        let mut cells: BTreeMap<(usize, String), Vec<[Option<f64>; 3]>> = BTreeMap::new();
        let mut ppl_settings = BTreeSet::new();
        let mut measured_avg = Vec::new();
        for (label, r) in labels.iter().zip(&pruned) {
            let Some(li) = level_of(r) else { continue };
            let m = measure(r, conv);
            let row = cells
                .entry((method_rank(&method_of(r)), label.clone()))
                .or_insert_with(|| vec![[None; 3]; levels.len()]);
            if let Some(p) = m.ppl.get(names::PPL_WIKITEXT2) {
                row[li][0] = Some(*p);
                ppl_settings.extend(m.ppl_setting.get(names::PPL_WIKITEXT2).cloned());
            }
            if let Some(a) = average(&m, &seven).0 {
                row[li][1] = Some(a);
                row[li][2] = dense_avg(r).map(|d| 100.0 * a / d);
                measured_avg.push((label.clone(), m));
            }
        }
        let avg_levels: Vec<usize> = (0..levels.len())
            .filter(|&i| cells.values().any(|v| v[i][1].is_some()))
            .collect();
        let ppl = Col::Ppl(names::PPL_WIKITEXT2.to_string());
        let mut columns: Vec<Col> = levels
            .iter()
            .map(|s| Col::At(Box::new(ppl.clone()), pct(*s)))
            .collect();
        for &i in &avg_levels {
            columns.push(Col::At(Box::new(Col::Avg), pct(levels[i])));
            columns.push(Col::At(Box::new(Col::Retention), pct(levels[i])));
        }

        let mut rows = Vec::new();
        let dense_of_model: Vec<&RunData> = dense
            .iter()
            .filter(|((m, _), _)| *m == model)
            .map(|(_, r)| *r)
            .collect();
        if !dense_of_model.is_empty() {
            let ms: Vec<Measured> = dense_of_model.iter().map(|d| measure(d, conv)).collect();
            let d_ppl = ms
                .iter()
                .find_map(|m| m.ppl.get(names::PPL_WIKITEXT2).copied());
            let d_avg = ms.iter().find_map(|m| average(m, &seven).0);
            let mut c: Vec<Option<f64>> = vec![d_ppl; levels.len()];
            for _ in &avg_levels {
                c.push(d_avg);
                c.push(d_avg.map(|_| 100.0));
            }
            rows.push(Row {
                label: "Dense".into(),
                source: None,
                cells: c,
            });
        }
        for ((_, label), per) in &cells {
            let mut c: Vec<Option<f64>> = per.iter().map(|x| x[0]).collect();
            for &i in &avg_levels {
                c.push(per[i][1]);
                c.push(per[i][2]);
            }
            rows.push(Row {
                label: label.clone(),
                source: None,
                cells: c,
            });
        }

        let mut caption = String::new();
        if !avg_levels.is_empty() {
            let items = items_text(&measured_avg, &seven);
            caption.push_str(&format!(
                "Avg: mean zero-shot accuracy over the seven tasks ({}){}; Ret.%: Avg as a percentage of the dense Avg on the same documents. ",
                conv.describe(),
                if items.is_empty() { String::new() } else { format!(", items per task: {items}") }
            ));
        }
        caption.push_str("Wiki2 PPL: WikiText-2 test perplexity over non-overlapping windows");
        if !ppl_settings.is_empty() {
            let list: Vec<String> = ppl_settings.into_iter().collect();
            caption.push_str(&format!(" ({})", list.join("; ")));
        }
        caption.push_str(". Dense values are repeated under every sparsity.");
        out.push(Table {
            id: format!("sweep_{}", slug(&model)),
            title: format!("{model}: every method across sparsities"),
            columns,
            rows,
            caption,
            footnotes: Vec::new(),
        });
    }
    out
}

/// "Vary one key, hold the rest": for every `prune.*` key (method and sparsity aside) that
/// takes several values among runs equal in all other parameters.
pub fn ablation_tables(runs: &[RunData], conv: Convention) -> Vec<Table> {
    let dense = dense_runs(runs);
    let pruned: Vec<&RunData> = runs.iter().filter(|r| !r.is_dense()).collect();
    let skip = ["prune.method", "prune.sparsity", "prune.target_layers"];
    let keys: BTreeSet<&String> = pruned
        .iter()
        .flat_map(|r| r.params.keys())
        .filter(|k| k.starts_with("prune.") && !skip.contains(&k.as_str()))
        .collect();
    let mut out = Vec::new();
    for key in keys {
        let mut groups: BTreeMap<String, Vec<&RunData>> = BTreeMap::new();
        for r in &pruned {
            let rest: BTreeMap<&String, &Value> =
                r.params.iter().filter(|(k, _)| *k != key).collect();
            groups
                .entry(canonical_json(
                    &serde_json::to_value(rest).unwrap_or(Value::Null),
                ))
                .or_default()
                .push(r);
        }
        for members in groups.values() {
            let distinct: BTreeSet<String> = members
                .iter()
                .map(|r| r.param(key).map(canonical_json).unwrap_or_default())
                .collect();
            if distinct.len() < 2 {
                continue;
            }
            let mut members = members.clone();
            members.sort_by(|a, b| cmp_values(a.param(key), b.param(key)));
            let Some(first) = members.first() else {
                continue;
            };
            let model = first.model();
            let method = method_of(first);
            let level = Level::of(first);
            let short = key.trim_start_matches("prune.");
            let id = format!(
                "ablation_{}_{}_{}_{}",
                slug(short),
                slug(&model),
                slug(&method),
                level.map(|l| l.slug()).unwrap_or_default()
            );
            let title = format!(
                "Ablation of {short}: {model}, {}, {}",
                method_label(&method),
                level.map(|l| l.text()).unwrap_or_default()
            );
            let ours = members
                .iter()
                .map(|r| {
                    (
                        format!(
                            "{short}={}",
                            r.param(key).map(value_text).unwrap_or_default()
                        ),
                        *r,
                    )
                })
                .collect();
            let b = Builder {
                conv,
                dense: dense.get(&(model.clone(), eval_sig(first))).copied(),
                ours,
                published: vec![],
            };
            let note = format!(
                "Rows differ only in `{key}`; every other setting is equal. {}",
                eval_note(Some(first))
            );
            out.push(b.build(id, title, &note));
        }
    }
    out
}

fn cmp_values(a: Option<&Value>, b: Option<&Value>) -> std::cmp::Ordering {
    match (a.and_then(Value::as_f64), b.and_then(Value::as_f64)) {
        (Some(x), Some(y)) => x.total_cmp(&y),
        _ => a.map(value_text).cmp(&b.map(value_text)),
    }
}

/// The published rows alone: one table per (model, sparsity), with that model's dense rows.
pub fn published_tables(published: &[PublishedRow], conv: Convention) -> Vec<Table> {
    let mut models: Vec<&str> = Vec::new();
    for p in published {
        if !models.iter().any(|m| same_model(m, &p.model)) {
            models.push(&p.model);
        }
    }
    let mut out = Vec::new();
    for model in models {
        let rows: Vec<&PublishedRow> = published
            .iter()
            .filter(|p| same_model(&p.model, model))
            .collect();
        let dense: Vec<&PublishedRow> = rows.iter().copied().filter(|p| p.is_dense()).collect();
        let mut levels: Vec<f64> = rows
            .iter()
            .filter(|p| !p.is_dense())
            .filter_map(|p| p.sparsity)
            .collect();
        levels.sort_by(f64::total_cmp);
        levels.dedup_by(|a, b| (*a - *b).abs() < 1e-9);
        let mut groups: Vec<(String, Vec<&PublishedRow>)> =
            levels
                .iter()
                .map(|s| {
                    let mut g = dense.clone();
                    g.extend(rows.iter().copied().filter(|p| {
                        !p.is_dense() && p.sparsity.is_some_and(|x| (x - s).abs() < 1e-9)
                    }));
                    (format!("s{s}"), g)
                })
                .collect();
        if levels.is_empty() && !dense.is_empty() {
            groups.push(("dense".into(), dense.clone()));
        }
        for (lv, g) in groups {
            let b = Builder {
                conv,
                dense: None,
                ours: vec![],
                published: g,
            };
            let title = if lv == "dense" {
                format!("Published: {model}, dense")
            } else {
                format!("Published: {model}, sparsity {}", &lv[1..])
            };
            let mut t = b.build(format!("published_{}_{lv}", slug(model)), title, "");
            // The convention sentence describes our rows; these tables have none.
            t.caption = t.caption.replacen(&format!("{}. ", conv.describe()), "", 1);
            out.push(t);
        }
    }
    out
}

/// Make table ids unique by numbering repeats.
pub fn unique_ids(tables: &mut [Table]) {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for t in tables.iter_mut() {
        let n = seen.entry(t.id.clone()).or_insert(0);
        *n += 1;
        if *n > 1 {
            t.id = format!("{}_{}", t.id, n);
        }
    }
}
