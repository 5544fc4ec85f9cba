//! The results table and its Markdown / CSV / LaTeX forms.

use crate::error::{Error, Result};
use crate::names;
use polars::prelude::*;
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
    /// Wall-clock seconds of the recovery stage.
    RecoverySeconds,
    /// Avg minus the Avg of a reference row (recovery tables: the same method without
    /// recovery), in points.
    DeltaAvg,
    /// Batch-1 tokens/s relative to the dense model's (`eval.latency`).
    SpeedUp(Phase),
    /// The sample standard deviation over seeds of another column (seed tables).
    Sd(Box<Col>),
    /// How many seeds a row averages.
    Seeds,
    /// Peak memory of a stage in MiB, host or device (memory tables).
    PeakMemory { stage: String, device: bool },
}

/// The phase of generation a speed-up is measured in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Prefill,
    Decode,
}

impl Col {
    pub fn header(&self) -> String {
        match self {
            Col::Task(t) => names::task_label(t).to_string(),
            Col::Avg => "Avg".into(),
            Col::AvgSe => "±Avg".into(),
            Col::Retention => "Ret.%".into(),
            Col::Ppl(m) => names::PPL_CORPORA
                .iter()
                .find(|(_, metric, _)| metric == m)
                .map_or_else(|| m.clone(), |(_, _, label)| label.to_string()),
            Col::At(c, level) => format!("{} @ {level}", c.header()),
            Col::RecoverySeconds => "Rec. s".into(),
            Col::DeltaAvg => "Δ Avg".into(),
            Col::SpeedUp(Phase::Prefill) => "Prefill ×".into(),
            Col::SpeedUp(Phase::Decode) => "Decode ×".into(),
            Col::Sd(c) => format!("sd {}", c.header()),
            Col::Seeds => "Seeds".into(),
            Col::PeakMemory { stage, device } => {
                format!("{stage} {}", if *device { "GPU MiB" } else { "MiB" })
            }
        }
    }
    fn decimals(&self) -> usize {
        match self {
            Col::Retention | Col::RecoverySeconds => 1,
            Col::At(c, _) | Col::Sd(c) => c.decimals(),
            Col::Seeds | Col::PeakMemory { .. } => 0,
            _ => 2,
        }
    }
    /// Whether a positive value is written with its sign.
    fn signed(&self) -> bool {
        matches!(self, Col::DeltaAvg)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub label: String,
    /// Values of the table's key columns (e.g. the recovery method), aligned with
    /// [`Table::key_columns`].
    pub keys: Vec<String>,
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
    /// Text columns between Method and Source that, with the label, identify a row
    /// (e.g. "Recovery"); empty in most tables.
    pub key_columns: Vec<String>,
    pub columns: Vec<Col>,
    pub rows: Vec<Row>,
    pub caption: String,
    /// Citations of the published rows, numbered from 1.
    pub footnotes: Vec<String>,
}

impl Table {
    /// The cell of `row` (by label; the first such row) in `col` (by header).
    pub fn cell(&self, row: &str, col: &str) -> Option<f64> {
        self.cell_keyed(&[row], col)
    }

    /// The cell of the first row whose label, then key values, start with `row`, in `col`
    /// (by header): `cell_keyed(&["CoMe", "lora"], "Avg")`.
    pub fn cell_keyed(&self, row: &[&str], col: &str) -> Option<f64> {
        let c = self.columns.iter().position(|x| x.header() == col)?;
        self.rows
            .iter()
            .find(|r| {
                let ids = std::iter::once(&r.label).chain(&r.keys);
                row.len() <= 1 + r.keys.len() && ids.zip(row).all(|(a, b)| a.as_str() == *b)
            })?
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
            (Some(x), Some(col)) if col.signed() => format!("{x:+.*}", col.decimals()),
            (Some(x), Some(col)) => format!("{x:.*}", col.decimals()),
            _ => "-".into(),
        }
    }

    /// A row's cells as text, in column order: label, key columns, source, values.
    fn row_fields(&self, r: &Row, escape: fn(&str) -> String, source: String) -> Vec<String> {
        let mut f = vec![escape(&r.label)];
        f.extend(r.keys.iter().map(|k| escape(k)));
        f.push(source);
        f.extend(r.cells.iter().enumerate().map(|(c, v)| self.fmt(c, *v)));
        f
    }

    pub fn to_markdown(&self) -> String {
        let mut s = format!("### {}\n\n", self.title);
        let heads: Vec<String> = self.columns.iter().map(Col::header).collect();
        let keys: String = self
            .key_columns
            .iter()
            .map(|k| format!("{} | ", md_escape(k)))
            .collect();
        s.push_str(&format!(
            "| Method | {keys}Source | {} |\n",
            heads.join(" | ")
        ));
        s.push_str(&format!(
            "|:--|{}:--|{}\n",
            ":--|".repeat(self.key_columns.len()),
            "--:|".repeat(heads.len())
        ));
        for r in &self.rows {
            let fields = self.row_fields(r, md_escape, self.source_text(r));
            s.push_str(&format!("| {} |\n", fields.join(" | ")));
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
            "\\begin{{tabular}}{{ll{}{}}}\n\\toprule\n",
            "l".repeat(self.key_columns.len()),
            "r".repeat(self.columns.len())
        ));
        let heads: Vec<String> = self
            .columns
            .iter()
            .map(|c| latex_escape(&c.header()))
            .collect();
        let keys: String = self
            .key_columns
            .iter()
            .map(|k| format!("{} & ", latex_escape(k)))
            .collect();
        s.push_str(&format!(
            "Method & {keys}Source & {} \\\\\n\\midrule\n",
            heads.join(" & ")
        ));
        for r in &self.rows {
            let fields = self.row_fields(r, latex_escape, latex_escape(&self.source_text(r)));
            s.push_str(&format!("{} \\\\\n", fields.join(" & ")));
        }
        s.push_str("\\bottomrule\n\\end{tabular}\n\\end{table}\n");
        s
    }

    /// The table as a polars frame: `method`, the key columns (lower case), `source`,
    /// then one Float64 column per column.
    pub fn to_frame(&self) -> PolarsResult<DataFrame> {
        let mut cols = vec![Column::new(
            "method".into(),
            self.rows
                .iter()
                .map(|r| r.label.clone())
                .collect::<Vec<_>>(),
        )];
        for (k, name) in self.key_columns.iter().enumerate() {
            cols.push(Column::new(
                name.to_lowercase().into(),
                self.rows
                    .iter()
                    .map(|r| r.keys.get(k).cloned().unwrap_or_default())
                    .collect::<Vec<_>>(),
            ));
        }
        cols.push(Column::new(
            "source".into(),
            self.rows
                .iter()
                .map(|r| self.source_text(r))
                .collect::<Vec<_>>(),
        ));
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
            'Δ' => out.push_str("$\\Delta$"),
            '²' => out.push_str("$^2$"),
            _ => out.push(c),
        }
    }
    out
}
