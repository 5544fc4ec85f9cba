//! Published numbers (`paper/*.csv`): what the CoMe paper and its peers report, each row
//! with its source, shown beside our rows and labelled "published".
//!
//! Columns (header required, any order, empty cell = not reported): `model`, `method`
//! (`dense` for the unpruned model), `sparsity` (fraction, empty for dense),
//! `layers_removed`, the task columns `boolq piqa hellaswag winogrande arc_easy
//! arc_challenge openbookqa mmlu` (percent), `avg` (percent, as reported, over the
//! source's own task set), `retention` (percent of the source's dense average, as
//! reported), `ppl_wikitext2`, `ppl_c4`, `convention` (acc, acc_norm, mixed, ppl),
//! `source`, `location` (table / section), `note`.

use crate::error::{Error, Result};
use crate::names::ALL_TASKS;
use polars::prelude::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One published row.
#[derive(Debug, Clone, PartialEq)]
pub struct PublishedRow {
    pub model: String,
    pub method: String,
    pub sparsity: Option<f64>,
    pub layers_removed: Option<f64>,
    /// Task -> accuracy in percent.
    pub tasks: BTreeMap<String, f64>,
    pub avg: Option<f64>,
    pub retention: Option<f64>,
    pub ppl_wikitext2: Option<f64>,
    pub ppl_c4: Option<f64>,
    pub convention: String,
    pub source: String,
    pub location: String,
    pub note: String,
    /// File and line the row came from.
    pub origin: String,
}

impl PublishedRow {
    pub fn is_dense(&self) -> bool {
        self.method.eq_ignore_ascii_case("dense")
    }

    /// "source, location; metric convention; note" for footnotes.
    pub fn citation(&self) -> String {
        let mut s = self.source.clone();
        if !self.location.is_empty() {
            s.push_str(&format!(", {}", self.location));
        }
        if !self.convention.is_empty() {
            s.push_str(&format!("; metric: {}", self.convention));
        }
        if !self.note.is_empty() {
            s.push_str(&format!("; {}", self.note));
        }
        s
    }
}

/// Model names compare by their lower-case letters and digits ("LLaMA-2-7B" == "llama2-7b").
pub fn same_model(a: &str, b: &str) -> bool {
    let norm = |s: &str| {
        s.chars()
            .filter(char::is_ascii_alphanumeric)
            .map(|c| c.to_ascii_lowercase())
            .collect::<String>()
    };
    norm(a) == norm(b)
}

const REQUIRED: &[&str] = &["model", "method", "source"];

/// Read every `*.csv` in `dir` (sorted by name). A missing directory gives no rows.
pub fn load_dir(dir: &Path) -> Result<Vec<PublishedRow>> {
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "csv"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        out.extend(load_file(&f)?);
    }
    Ok(out)
}

/// Read one CSV of published rows; errors name the file and the line.
pub fn load_file(path: &Path) -> Result<Vec<PublishedRow>> {
    let (names, height, cols) = read_columns(path)?;
    check_known(path, &names)?;
    (0..height).map(|i| parse_row(path, &cols, i)).collect()
}

/// A CSV's cells by column name: trimmed, `None` where empty.
type Columns = BTreeMap<String, Vec<Option<String>>>;

/// Read `path` as text columns: the header's names (the required ones checked present),
/// the number of data rows and the cells.
fn read_columns(path: &Path) -> Result<(Vec<String>, usize, Columns)> {
    let df = CsvReadOptions::default()
        .with_has_header(true)
        .with_infer_schema_length(Some(0))
        .try_into_reader_with_file_path(Some(path.to_path_buf()))
        .and_then(|r| r.finish())
        .map_err(|e| Error::format(path, e.to_string()))?;
    let names: Vec<String> = df
        .get_column_names()
        .iter()
        .map(|s| s.to_string())
        .collect();
    for r in REQUIRED {
        if !names.iter().any(|n| n == r) {
            return Err(Error::data(path, 1, format!("missing column `{r}`")));
        }
    }
    let mut cols: Columns = BTreeMap::new();
    for n in &names {
        let s = df
            .column(n)
            .and_then(|c| c.as_materialized_series().str().cloned())
            .map_err(|e| Error::format(path, e.to_string()))?;
        cols.insert(
            n.clone(),
            s.into_iter()
                .map(|v| v.map(|x| x.trim().to_string()).filter(|x| !x.is_empty()))
                .collect(),
        );
    }
    Ok((names, df.height(), cols))
}

/// Reject a header naming a column this format does not define.
fn check_known(path: &Path, names: &[String]) -> Result<()> {
    let known: Vec<&str> = [
        "model",
        "method",
        "sparsity",
        "layers_removed",
        "avg",
        "retention",
        "ppl_wikitext2",
        "ppl_c4",
        "convention",
        "source",
        "location",
        "note",
    ]
    .into_iter()
    .chain(ALL_TASKS)
    .collect();
    if let Some(bad) = names.iter().find(|n| !known.contains(&n.as_str())) {
        return Err(Error::data(
            path,
            1,
            format!("unknown column `{bad}` (known: {})", known.join(", ")),
        ));
    }
    Ok(())
}

/// The published row in data row `i` (file line `i + 2`); numbers must parse and be
/// finite, the required columns non-empty.
fn parse_row(path: &Path, cols: &Columns, i: usize) -> Result<PublishedRow> {
    let line = i + 2;
    let text = |k: &str| {
        cols.get(k)
            .and_then(|c| c.get(i).cloned().flatten())
            .unwrap_or_default()
    };
    let num = |k: &str| -> Result<Option<f64>> {
        match cols.get(k).and_then(|c| c.get(i).cloned().flatten()) {
            None => Ok(None),
            Some(s) => s
                .parse::<f64>()
                .ok()
                .filter(|x| x.is_finite())
                .map(Some)
                .ok_or_else(|| {
                    Error::data(path, line, format!("column `{k}`: `{s}` is not a number"))
                }),
        }
    };
    let mut tasks = BTreeMap::new();
    for t in ALL_TASKS {
        if let Some(v) = num(t)? {
            tasks.insert(t.to_string(), v);
        }
    }
    let row = PublishedRow {
        model: text("model"),
        method: text("method"),
        sparsity: num("sparsity")?,
        layers_removed: num("layers_removed")?,
        tasks,
        avg: num("avg")?,
        retention: num("retention")?,
        ppl_wikitext2: num("ppl_wikitext2")?,
        ppl_c4: num("ppl_c4")?,
        convention: text("convention"),
        source: text("source"),
        location: text("location"),
        note: text("note"),
        origin: format!("{}:{line}", path.display()),
    };
    for r in REQUIRED {
        if text(r).is_empty() {
            return Err(Error::data(path, line, format!("empty `{r}`")));
        }
    }
    Ok(row)
}
