//! Paper-style tables and plots from the run store, beside the published numbers.
//!
//! From the finished runs (the latest per hash) [`write_report`] builds:
//! - main tables, one per model, evaluation setting and sparsity: rows = the dense model
//!   and every pruning method (plus published rows of the same model and sparsity),
//!   columns = the seven tasks, Avg, its standard error, retention (% of the dense Avg)
//!   and WikiText-2 / C4 perplexity when measured;
//! - ablation tables, "vary one key, hold the rest": for every `prune.*` key (other than
//!   method and sparsity) and `recovery.*` key (other than method) that the runs vary, one
//!   table per group of runs equal in every other parameter (merge operation, sensitivity,
//!   norm mode, GQA mapping, recovery loss, token budget, ...);
//! - recovery tables, one per model, evaluation setting and sparsity with a recovered run:
//!   per pruning method the rows "w/o" (no recovery) and one per recovery method, with the
//!   recovery time and the change in Avg (see [`recovery`]); the other layouts gain a
//!   Recovery column when a run of theirs was recovered;
//! - seed tables, where runs differ only in their recovery seed: one row per setting with
//!   the mean over seeds and the spread over seeds of every measure (see [`seeds`]);
//! - memory tables, one per model: the peak host (and GPU) memory of every stage a run
//!   made (see [`memory`]);
//! - tables of the published rows alone (so they show even for models we cannot run);
//! - figures (SVG and PNG): line charts of average accuracy and perplexity against the
//!   pruning level, one line per variant, or bar charts where the runs share one level
//!   (see [`plot`]).
//!
//! Each table is written as Markdown, CSV and LaTeX; `index.md` collects the Markdown.
//! Captions state the metric convention ([`Convention`]), the number of items per task
//! and how the standard error of the average is computed.

mod builder;
mod common;
pub mod memory;
pub mod paired;
pub mod paper;
pub mod plot;
pub mod recovery;
pub mod seeds;
pub mod table;
pub mod tables;

use crate::distill::RecoveryConfig;
use crate::error::{Error, Result};
use crate::experiment::Experiment;
use crate::prune::PruneConfig;
use crate::track::{Metric, RunFilter, Status, Store};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

pub use paper::PublishedRow;
pub use seeds::mean_sd;
pub use tables::Table;

/// Which accuracy a task reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Convention {
    /// Plain accuracy everywhere.
    Acc,
    /// `acc_norm` where lm-eval defines it (PIQA, HellaSwag, ARC-e, ARC-c, OBQA), `acc`
    /// elsewhere.
    AccNorm,
    /// `acc_norm` for HellaSwag, ARC-c and OBQA, `acc` elsewhere (the LLM-Pruner convention).
    #[default]
    Mixed,
}

impl Convention {
    pub fn parse(s: &str) -> Result<Convention> {
        match s {
            "acc" => Ok(Convention::Acc),
            "acc_norm" | "acc-norm" => Ok(Convention::AccNorm),
            "mixed" => Ok(Convention::Mixed),
            other => Err(Error::Invalid(format!(
                "unknown metric convention `{other}` (expected acc, acc_norm, mixed)"
            ))),
        }
    }

    /// The store metric name this convention reads for `task`.
    pub fn metric_for(self, task: &str) -> &'static str {
        use crate::names::{task_info, ACC, ACC_NORM};
        let info = task_info(task);
        let norm = match self {
            Convention::Acc => false,
            Convention::AccNorm => info.is_some_and(|t| t.acc_norm),
            Convention::Mixed => info.is_some_and(|t| t.mixed_reads_norm),
        };
        if norm {
            ACC_NORM
        } else {
            ACC
        }
    }

    /// One sentence for captions.
    pub fn describe(self) -> &'static str {
        match self {
            Convention::Acc => "Metric: acc (plain accuracy) for every task",
            Convention::AccNorm => {
                "Metric: acc_norm where lm-eval defines it (PIQA, HellaSwag, ARC-e, ARC-c, OBQA), acc for BoolQ, WinoGrande and MMLU"
            }
            Convention::Mixed => {
                "Metric: acc_norm for HellaSwag, ARC-c and OBQA, acc elsewhere (the LLM-Pruner convention)"
            }
        }
    }
}

/// A finished run as the report sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct RunData {
    pub id: i64,
    pub hash: String,
    pub name: String,
    pub finished: String,
    /// The run's experiment, typed: what the report reads of a run's settings.
    pub experiment: Experiment,
    /// Flattened experiment (dotted path -> value): for the generic comparisons (which
    /// keys vary between runs, ablation axes, labels), not for reading a setting.
    pub params: BTreeMap<String, Value>,
    pub metrics: Vec<Metric>,
}

impl RunData {
    /// The metric `name` of `task` (step 0; the first if several contexts exist).
    pub fn metric(&self, task: &str, name: &str) -> Option<&Metric> {
        self.metrics
            .iter()
            .find(|m| m.task == task && m.name == name && m.step == 0)
    }
    pub fn param(&self, key: &str) -> Option<&Value> {
        self.params.get(key)
    }
    pub fn prune(&self) -> Option<&PruneConfig> {
        self.experiment.prune.as_ref()
    }
    pub fn recovery(&self) -> &RecoveryConfig {
        &self.experiment.recovery
    }
    pub fn is_dense(&self) -> bool {
        self.prune().is_none()
    }
    pub fn model(&self) -> String {
        self.experiment.model.clone()
    }
}

/// Finished runs, the latest (by finish time, then id) per hash.
pub fn load_runs(store: &Store) -> Result<Vec<RunData>> {
    let rows = store.runs(&RunFilter {
        status: Some(Status::Finished),
        ..Default::default()
    })?;
    let mut latest: HashMap<String, usize> = HashMap::new();
    let mut out: Vec<RunData> = Vec::new();
    for r in rows {
        let experiment = Experiment::from_value(r.config.clone()).map_err(|e| {
            Error::Invalid(format!(
                "run {} ({}): its stored config does not read as an experiment of this \
                 version: {e}",
                r.id, r.name
            ))
        })?;
        let data = RunData {
            experiment,
            id: r.id,
            hash: r.hash.clone(),
            name: r.name.clone(),
            finished: r.finished.clone().unwrap_or_default(),
            params: store.params(r.id)?,
            metrics: store.metrics(r.id)?,
        };
        match latest.get(&r.hash) {
            Some(&i) => {
                if let Some(prev) = out.get_mut(i) {
                    if (data.finished.as_str(), data.id) > (prev.finished.as_str(), prev.id) {
                        *prev = data;
                    }
                }
            }
            None => {
                latest.insert(r.hash.clone(), out.len());
                out.push(data);
            }
        }
    }
    Ok(out)
}

/// What to build and where.
#[derive(Debug, Clone, Default)]
pub struct ReportOptions {
    pub out_dir: PathBuf,
    pub convention: Convention,
    /// Published rows (see [`paper::load_dir`], usually `paper/`).
    pub published: Vec<PublishedRow>,
    /// Our model name -> the model name used in the published rows, for names that do
    /// not already agree up to case and punctuation.
    pub model_aliases: BTreeMap<String, String>,
    /// Only runs with these hashes (e.g. one grid's runs); None: every finished run.
    pub only_hashes: Option<std::collections::BTreeSet<String>>,
}

/// What [`write_report`] wrote.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReportSummary {
    pub runs: usize,
    pub tables: Vec<String>,
    pub files: Vec<PathBuf>,
}

/// Every table, and every plot as (file name, SVG text), of `runs` (see [`load_runs`]).
pub fn build(runs: &[RunData], opts: &ReportOptions) -> (Vec<Table>, Vec<(String, String)>) {
    let mut tables =
        tables::main_tables(runs, &opts.published, &opts.model_aliases, opts.convention);
    tables.extend(tables::sweep_tables(runs, opts.convention));
    tables.extend(tables::ablation_tables(runs, opts.convention));
    tables.extend(recovery::recovery_tables(runs, opts.convention));
    tables.extend(seeds::seed_tables(runs, opts.convention));
    tables.extend(memory::memory_tables(runs));
    tables.extend(tables::published_tables(&opts.published, opts.convention));
    tables::unique_ids(&mut tables);
    let plots = plot::plots(runs, &opts.published, &opts.model_aliases, opts.convention);
    (tables, plots)
}

/// Build everything from the store and write it into `opts.out_dir`.
pub fn write_report(store: &Store, opts: &ReportOptions) -> Result<ReportSummary> {
    let mut runs = load_runs(store)?;
    if let Some(keep) = &opts.only_hashes {
        runs.retain(|r| keep.contains(&r.hash));
    }
    let (tables, plots) = build(&runs, opts);
    let dir = &opts.out_dir;
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut summary = ReportSummary {
        runs: runs.len(),
        ..Default::default()
    };
    let mut index = String::from("# Results\n\n");
    index.push_str(&format!(
        "{} finished runs from `{}`. {}.\n\n",
        runs.len(),
        store.path().display(),
        opts.convention.describe()
    ));
    for t in &tables {
        let md = t.to_markdown();
        write(dir, &format!("{}.md", t.id), &md, &mut summary.files)?;
        write(
            dir,
            &format!("{}.tex", t.id),
            &t.to_latex(),
            &mut summary.files,
        )?;
        let csv = dir.join(format!("{}.csv", t.id));
        t.write_csv(&csv)?;
        summary.files.push(csv);
        summary.tables.push(t.id.clone());
        index.push_str(&md);
        index.push('\n');
    }
    for (name, svg) in &plots {
        write(dir, name, svg, &mut summary.files)?;
        // The same chart as PNG (terminal image viewers, GitHub, PDFs).
        let png_name = name.replace(".svg", ".png");
        let png = dir.join(&png_name);
        crate::publish::write_atomically(&png, &plot::raster::png(svg, 2.0)?)?;
        summary.files.push(png);
        index.push_str(&format!("![{name}]({png_name})\n\n"));
    }
    write(dir, "index.md", &index, &mut summary.files)?;
    Ok(summary)
}

fn write(dir: &Path, name: &str, text: &str, files: &mut Vec<PathBuf>) -> Result<()> {
    let p = dir.join(name);
    std::fs::write(&p, text).map_err(|e| Error::io(&p, e))?;
    files.push(p);
    Ok(())
}
