//! PIQA (lm_eval/tasks/piqa/piqa.yaml): context `"Question: {goal}\nAnswer:"`, choices
//! `sol1`, `sol2`, gold `label`; acc and acc_norm.
//!
//! Shared copy: `piqa/valid.jsonl` {goal, sol1, sol2} with the labels in
//! `valid-labels.lst` beside it (for any `X.jsonl`, `X-labels.lst`), one 0/1 per line,
//! aligned by record. Hugging Face schema: {goal, sol1, sol2, label} in jsonl or parquet.

use super::lm_hash::PyJson;
use super::read::{numbered_lines, Files, Records};
use super::{locate, mc_doc, non_empty, Doc, TaskSource};
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

const SHARED: &[&str] = &["goal", "sol1", "sol2"];
const HF: &[&str] = &["goal", "sol1", "sol2", "label"];

pub fn load(src: &TaskSource, files: &mut Files) -> Result<Vec<Doc>> {
    let path = locate(src, "piqa", "piqa/valid.jsonl");
    let recs = Records::read(files, &path)?;
    if recs.rows.is_empty() {
        return Err(recs.empty_split());
    }
    let labels = if recs.has_all(HF) {
        None
    } else if recs.has_all(SHARED) {
        let lp = labels_path(&path);
        Some(read_labels(files, &lp, &path, recs.rows.len())?)
    } else {
        return Err(recs.schema_error(SHARED, HF));
    };
    let mut docs = Vec::with_capacity(recs.rows.len());
    for (i, r) in recs.rows.iter().enumerate() {
        let goal = recs.str(r, "goal")?;
        let choices = vec![
            recs.str(r, "sol1")?.to_string(),
            recs.str(r, "sol2")?.to_string(),
        ];
        let gold = match &labels {
            Some(l) => l[i],
            None => {
                let g = recs.index(r, "label")?;
                if g > 1 {
                    return Err(recs.err(r, format!("label must be 0 or 1, found {g}")));
                }
                g
            }
        };
        // The local config's document: the row with the label from the labels file.
        let lm_doc = labels.is_some().then(|| {
            PyJson::dict(vec![
                ("goal", PyJson::str(goal)),
                ("sol1", PyJson::str(&choices[0])),
                ("sol2", PyJson::str(&choices[1])),
                ("label", PyJson::Int(gold as i64)),
            ])
        });
        docs.push(
            mc_doc(i, format!("Question: {goal}\nAnswer:"), choices, gold)
                .with_lm_eval(lm_doc, &gold.to_string()),
        );
    }
    non_empty(&path, docs)
}

/// `valid.jsonl` -> `valid-labels.lst` in the same folder.
fn labels_path(jsonl: &Path) -> PathBuf {
    let stem = jsonl
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("valid");
    jsonl.with_file_name(format!("{stem}-labels.lst"))
}

fn read_labels(files: &mut Files, path: &Path, jsonl: &Path, expect: usize) -> Result<Vec<usize>> {
    let text = files.text(path)?;
    let mut labels = Vec::with_capacity(expect);
    for (line, l) in numbered_lines(&text) {
        match l.trim() {
            "0" => labels.push(0),
            "1" => labels.push(1),
            other => {
                return Err(Error::data(
                    path,
                    line,
                    format!("label must be 0 or 1, found `{other}`"),
                ))
            }
        }
    }
    if labels.len() != expect {
        return Err(Error::format(
            path,
            format!(
                "{} labels, but {} has {} examples (the files must be line-aligned)",
                labels.len(),
                jsonl.display(),
                expect
            ),
        ));
    }
    Ok(labels)
}
