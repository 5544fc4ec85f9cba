//! Zero-shot (and MMLU few-shot) task definitions that produce exactly the log-likelihood
//! requests lm-evaluation-harness 0.4 builds (checked against lm-eval 0.4.13, see
//! `scripts/golden/README-tasks.md` and `tests/golden/lm_eval_requests.json`).
//!
//! A task is plain data: for every document, one `(context, continuation)` request per
//! choice, the gold index and the choice texts. Scoring lives elsewhere (`eval::loglik`).
//!
//! Rules shared by every task (lm-eval `ConfigurableTask`, `output_type: multiple_choice`):
//! - continuation = target delimiter `" "` + choice, context = the rendered prompt;
//!   the model side moves trailing whitespace of the context to the continuation;
//! - zero-shot: no description and no fewshot delimiter reach the context, except MMLU,
//!   whose description comes first, then `num_fewshot` examples each rendered as
//!   `prompt + " " + answer + "\n\n"`, then the prompt;
//! - `acc_norm` divides by the choice's length in characters (Python `len`, i.e. Unicode
//!   scalar values), without the delimiter: `Doc::choice_texts` holds those texts.
//!
//! Inputs: the shared copies (`TaskSource::data_dir`, formats in `../shared/data/README.md`)
//! or a user's own copy of the original Hugging Face dataset (parquet or jsonl, chosen by
//! extension and columns) through `TaskSource::overrides`.

mod arc;
mod boolq;
mod hellaswag;
pub mod lm_hash;
mod mmlu;
mod openbookqa;
mod piqa;
pub mod pytext;
mod read;
mod subset;
mod winogrande;

pub use mmlu::category as mmlu_category;
pub use subset::{subset, SplitMix64, Subset};

use crate::error::{Error, Result};
use read::Files;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One log-likelihood request. `continuation` already starts with the target delimiter
/// (`" " + choice`), exactly as lm-eval builds it, before the trailing-whitespace move.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Request {
    pub context: String,
    pub continuation: String,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Doc {
    /// Position of the document in the task (file order; for MMLU, over all subjects in
    /// the order read). lm-eval numbers MMLU documents per subject instead.
    pub doc_id: usize,
    pub requests: Vec<Request>,
    pub gold: usize,
    /// What lm-eval's `doc_to_choice` returns (the answers; for WinoGrande the two
    /// partial contexts). `acc_norm` uses their lengths in characters.
    pub choice_texts: Vec<String>,
    /// MMLU subject (e.g. `abstract_algebra`); `None` elsewhere.
    pub group: Option<String>,
    /// lm-eval's `doc_hash + prompt_hash + target_hash` of this document (see
    /// [`lm_hash`]); None where its lm-eval form is not known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lm_eval_hash: Option<String>,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    Acc,
    AccNorm,
}

impl Metric {
    /// lm-eval's metric name.
    pub fn name(self) -> &'static str {
        match self {
            Metric::Acc => "acc",
            Metric::AccNorm => "acc_norm",
        }
    }
}

/// A task's documents, ready to score; serialisable, so a prepared subset can travel
/// without the data files and their readers (the GPU bundle's `tasks.json`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct TaskData {
    pub name: String,
    /// Every file read, with its SHA-256 (lower-case hex), in reading order.
    pub files: Vec<(PathBuf, String)>,
    pub docs: Vec<Doc>,
    pub metrics: Vec<Metric>,
    pub num_fewshot: usize,
}

/// Where the task files are.
#[derive(Debug, Clone)]
pub struct TaskSource {
    /// Root of the shared layout (`piqa/valid.jsonl`, `mmlu/test/...`).
    pub data_dir: PathBuf,
    /// Task name -> a file (shared format or Hugging Face schema, by extension and
    /// columns) or a directory holding the shared layout of that task.
    pub overrides: BTreeMap<String, PathBuf>,
    /// MMLU examples per prompt from the dev split (lm-eval: first_n), 0 or 5.
    pub mmlu_fewshot: usize,
}

impl TaskSource {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        TaskSource {
            data_dir: data_dir.into(),
            overrides: BTreeMap::new(),
            mmlu_fewshot: 0,
        }
    }
}

impl Default for TaskSource {
    fn default() -> Self {
        TaskSource::new(crate::paths::data_dir())
    }
}

const KNOWN: [&str; crate::names::TASKS.len()] = crate::names::ALL_TASKS;

pub fn known_tasks() -> &'static [&'static str] {
    &KNOWN
}

/// Read a task's files and build its documents. Any bad input is an error naming the
/// file (and line or row); nothing partial is returned.
pub fn load_task(name: &str, src: &TaskSource) -> Result<TaskData> {
    let mut files = Files::default();
    let unknown = || {
        Error::Invalid(format!(
            "unknown task `{name}`; known tasks: {}",
            KNOWN.join(", ")
        ))
    };
    let info = crate::names::task_info(name).ok_or_else(unknown)?;
    let (docs, num_fewshot) = match name {
        "piqa" => (piqa::load(src, &mut files)?, 0),
        "hellaswag" => (hellaswag::load(src, &mut files)?, 0),
        "winogrande" => (winogrande::load(src, &mut files)?, 0),
        "arc_easy" | "arc_challenge" => (arc::load(name, src, &mut files)?, 0),
        "boolq" => (boolq::load(src, &mut files)?, 0),
        "openbookqa" => (openbookqa::load(src, &mut files)?, 0),
        "mmlu" => (mmlu::load(src, &mut files)?, src.mmlu_fewshot),
        _ => return Err(unknown()),
    };
    let metrics = if info.acc_norm {
        vec![Metric::Acc, Metric::AccNorm]
    } else {
        vec![Metric::Acc]
    };
    Ok(TaskData {
        name: name.to_string(),
        files: files.into_list(),
        docs,
        metrics,
        num_fewshot,
    })
}

/// The file a task reads: the override (a file, or a directory with the shared layout,
/// in which case `default_rel`'s file name is looked up inside it) or the shared copy.
fn locate(src: &TaskSource, task: &str, default_rel: &str) -> PathBuf {
    match src.overrides.get(task) {
        Some(p) if p.is_dir() => match Path::new(default_rel).file_name() {
            Some(name) => p.join(name),
            None => p.clone(),
        },
        Some(p) => p.clone(),
        None => src.data_dir.join(default_rel),
    }
}

/// A document whose requests share one context: `(context, " " + choice)` per choice.
fn mc_doc(doc_id: usize, context: String, choices: Vec<String>, gold: usize) -> Doc {
    let requests = choices
        .iter()
        .map(|c| Request {
            context: context.clone(),
            continuation: format!(" {c}"),
        })
        .collect();
    Doc {
        doc_id,
        requests,
        gold,
        choice_texts: choices,
        group: None,
        lm_eval_hash: None,
    }
}

/// Refuse an empty split (a task with no documents would report a meaningless accuracy).
fn non_empty(path: &Path, docs: Vec<Doc>) -> Result<Vec<Doc>> {
    if docs.is_empty() {
        return Err(Error::format(path, "empty split: no examples"));
    }
    Ok(docs)
}
