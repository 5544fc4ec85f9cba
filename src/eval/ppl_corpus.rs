//! The texts perplexity is measured on, built the way pruning papers build them.
//!
//! - WikiText-2: the shared test split, already `"\n\n".join(rows)`.
//! - C4: GPTQ's rule, which SLEB, ShortGPT-style and CoMe-style evaluations reuse: the
//!   first 1100 documents of `c4-validation.00000-of-00008.json.gz`, their `text` fields
//!   joined with one space, tokenised as one stream, the first 256 windows scored. The
//!   file is the user's own copy (`COME_C4`, or `c4/` under the data directory); plain or
//!   gzipped JSON lines are read.
//! - `wikitext2_val`: the last rows of the shared WikiText-2 train prefix, which recovery
//!   with `validation = held_out` validates on and never trains on; rows joined with
//!   "\n\n". For choosing recovery settings without looking at the test set.
//! - `tasks_ood`: text from another domain than any training text here: the gold answers
//!   of HellaSwag (ActivityNet / WikiHow) and PIQA validation, each as lm-eval frames it
//!   (context + gold continuation), alternating between the two, joined with "\n\n".

use crate::error::{Error, Result};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

/// Documents of C4 validation joined into the stream (GPTQ's `valdata[:1100]`).
pub const C4_DOCS: usize = 1100;
/// Windows scored on C4 (GPTQ's `[:, :256 * seqlen]`).
pub const C4_WINDOWS: usize = 256;
pub use crate::paths::C4_FILE;

/// A perplexity corpus: what the results call it and the file it comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Corpus {
    Wikitext2(PathBuf),
    C4(PathBuf),
    /// The held-out rows at the end of a recovery text file (`wikitext2_val`).
    HeldOut(PathBuf),
    /// Gold answers of HellaSwag and PIQA under a data directory (`tasks_ood`).
    TasksOod(PathBuf),
    /// Any UTF-8 text file, tokenised as one stream.
    Text(PathBuf),
}

impl Corpus {
    /// `wikitext2`, `c4`, `c4=PATH`, or a path to a text file.
    pub fn parse(spec: &str) -> Corpus {
        match spec.split_once('=') {
            Some(("c4", p)) => Corpus::C4(PathBuf::from(p)),
            _ => match spec {
                "wikitext2" => Corpus::Wikitext2(crate::paths::wikitext2_test()),
                "c4" => Corpus::C4(crate::paths::c4_validation()),
                "wikitext2_val" => {
                    Corpus::HeldOut(crate::calib::CalibConfig::default().source_path())
                }
                "tasks_ood" => Corpus::TasksOod(crate::paths::data_dir()),
                other => Corpus::Text(PathBuf::from(other)),
            },
        }
    }

    /// The task name its perplexity is recorded under.
    pub fn name(&self) -> String {
        match self {
            Corpus::Wikitext2(_) => crate::names::WIKITEXT2.into(),
            Corpus::C4(_) => crate::names::C4.into(),
            Corpus::HeldOut(_) => crate::names::WIKITEXT2_VAL.into(),
            Corpus::TasksOod(_) => crate::names::TASKS_OOD.into(),
            Corpus::Text(p) => p
                .file_stem()
                .map_or_else(|| "text".into(), |s| s.to_string_lossy().into_owned()),
        }
    }

    pub fn path(&self) -> &Path {
        match self {
            Corpus::Wikitext2(p)
            | Corpus::C4(p)
            | Corpus::HeldOut(p)
            | Corpus::TasksOod(p)
            | Corpus::Text(p) => p,
        }
    }

    /// (task, metric) the store records its perplexity under: `ppl_<name>`.
    pub fn recorded_as(&self) -> (String, String) {
        let name = self.name();
        (name.clone(), format!("ppl_{name}"))
    }

    /// The windows scored when the user sets no limit (C4: GPTQ's 256).
    pub fn default_windows(&self) -> Option<usize> {
        matches!(self, Corpus::C4(_)).then_some(C4_WINDOWS)
    }

    /// The text to tokenise as one stream.
    pub fn text(&self) -> Result<String> {
        Ok(self.read()?.0)
    }

    /// The text, and the files it was built from (for the run's data checksums).
    pub fn read(&self) -> Result<(String, Vec<PathBuf>)> {
        let one = |p: &Path, text: Result<String>| Ok((text?, vec![p.to_path_buf()]));
        match self {
            Corpus::Wikitext2(p) | Corpus::Text(p) => one(p, crate::error::read_to_string(p)),
            Corpus::C4(p) => one(p, c4_text(p, C4_DOCS)),
            Corpus::HeldOut(p) => {
                let rows = crate::distill::data::held_out_rows(p);
                one(p, rows.map(|r| r.join("\n\n")))
            }
            Corpus::TasksOod(dir) => tasks_ood_text(dir),
        }
    }
}

/// The `text` fields of the first `max_docs` JSON lines of `path` (gzip or plain), joined
/// with single spaces. Fewer documents than `max_docs` is an error: the stream would not
/// be the one the papers measured.
pub fn c4_text(path: &Path, max_docs: usize) -> Result<String> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut head = BufReader::new(file);
    let gz = head
        .fill_buf()
        .map_err(|e| Error::io(path, e))?
        .starts_with(&[0x1f, 0x8b]);
    let reader: Box<dyn Read> = if gz {
        Box::new(flate2::read::MultiGzDecoder::new(head))
    } else {
        Box::new(head)
    };
    let mut texts: Vec<String> = Vec::with_capacity(max_docs);
    for (i, line) in BufReader::new(reader).lines().enumerate() {
        if texts.len() == max_docs {
            break;
        }
        let line = line.map_err(|e| Error::format(path, format!("line {}: {e}", i + 1)))?;
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(&line)
            .map_err(|e| Error::data(path, i + 1, format!("not a JSON object: {e}")))?;
        match v.get("text") {
            Some(serde_json::Value::String(t)) => texts.push(t.clone()),
            Some(_) => return Err(Error::data(path, i + 1, "`text` is not a string")),
            None => return Err(Error::data(path, i + 1, "no `text` field")),
        }
    }
    if texts.len() < max_docs {
        return Err(Error::format(
            path,
            format!(
                "{} documents, but C4 perplexity joins the first {max_docs} (is the file truncated?)",
                texts.len()
            ),
        ));
    }
    Ok(texts.join(" "))
}

/// The `tasks_ood` text: HellaSwag and PIQA gold answers (context + gold continuation, as
/// lm-eval frames them), alternating document by document, joined with "\n\n".
pub fn tasks_ood_text(data_dir: &Path) -> Result<(String, Vec<PathBuf>)> {
    use crate::eval::tasks::{load_task, TaskSource};
    let src = TaskSource {
        data_dir: data_dir.to_path_buf(),
        ..TaskSource::default()
    };
    let mut files = vec![];
    let mut gold = |task: &str| -> Result<Vec<String>> {
        let t = load_task(task, &src)?;
        files.extend(t.files.iter().map(|(p, _)| p.clone()));
        Ok(t.docs
            .iter()
            .filter_map(|d| d.requests.get(d.gold))
            .map(|r| format!("{}{}", r.context, r.continuation))
            .collect())
    };
    let (a, b) = (gold("hellaswag")?, gold("piqa")?);
    let mut parts = Vec::with_capacity(a.len() + b.len());
    for i in 0..a.len().max(b.len()) {
        parts.extend(a.get(i).cloned());
        parts.extend(b.get(i).cloned());
    }
    Ok((parts.join("\n\n"), files))
}
