//! HellaSwag (lm_eval/tasks/hellaswag/{hellaswag.yaml,utils.py}): context
//! `preprocess(activity_label + ": " + ctx_a + " " + ctx_b.capitalize())`, choices
//! `preprocess(ending)` for the 4 endings, gold `label`; acc and acc_norm.
//!
//! Shared copy (`hellaswag/hellaswag_val_full.txt`): 6 lines per item, the joined
//! `activity_label: ctx` line, the gold index, the 4 endings. `preprocess` is applied to
//! the first line and to each ending, as lm-eval applies it. Known deviation: that file
//! joins ctx_a and ctx_b without lm-eval's `capitalize()` of ctx_b (and the split point is
//! lost, so it cannot be restored): where lm-eval's query reads `... on a roof. He`, the
//! shared copy gives `... on a roof. he`. The Hugging Face schema {activity_label, ctx_a,
//! ctx_b, endings, label} (jsonl or parquet) gets lm-eval's query exactly.

use super::lm_hash::PyJson;
use super::pytext::{hellaswag_preprocess, py_capitalize};
use super::read::{numbered_lines, Files, Records};
use super::{locate, mc_doc, non_empty, Doc, TaskSource};
use crate::error::{Error, Result};
use std::path::Path;

const HF: &[&str] = &["activity_label", "ctx_a", "ctx_b", "endings", "label"];

pub fn load(src: &TaskSource, files: &mut Files) -> Result<Vec<Doc>> {
    let path = locate(src, "hellaswag", "hellaswag/hellaswag_val_full.txt");
    let is_txt = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("txt"));
    if is_txt {
        load_txt(files, &path)
    } else {
        load_hf(files, &path)
    }
}

fn load_txt(files: &mut Files, path: &Path) -> Result<Vec<Doc>> {
    let text = files.text(path)?;
    let lines = numbered_lines(&text);
    let mut docs = Vec::with_capacity(lines.len() / 6);
    for item in lines.chunks(6) {
        let [(ctx_line, ctx), (gold_line, gold), e1, e2, e3, e4] = item else {
            let first = item.first().map_or(1, |(n, _)| *n);
            return Err(Error::data(
                path,
                first,
                format!(
                    "incomplete item: {} lines, expected 6 (context, gold, 4 endings)",
                    item.len()
                ),
            ));
        };
        if ctx.trim().is_empty() {
            return Err(Error::data(path, *ctx_line, "empty context line"));
        }
        let gold = match gold.trim() {
            g @ ("0" | "1" | "2" | "3") => g.as_bytes()[0] as usize - b'0' as usize,
            g => {
                return Err(Error::data(
                    path,
                    *gold_line,
                    format!("gold must be 0-3, found `{g}`"),
                ))
            }
        };
        let choices: Vec<String> = [e1, e2, e3, e4]
            .iter()
            .map(|(_, e)| hellaswag_preprocess(e))
            .collect();
        let query = hellaswag_preprocess(ctx);
        let lm_doc = PyJson::dict(vec![
            ("query", PyJson::str(&query)),
            ("choices", PyJson::strs(&choices)),
            ("label", PyJson::Int(gold as i64)),
        ]);
        docs.push(
            mc_doc(docs.len(), query, choices, gold).with_lm_eval(Some(lm_doc), &gold.to_string()),
        );
    }
    non_empty(path, docs)
}

fn load_hf(files: &mut Files, path: &Path) -> Result<Vec<Doc>> {
    let recs = Records::read(files, path)?;
    if recs.rows.is_empty() {
        return Err(recs.empty_split());
    }
    if !recs.has_all(HF) {
        return Err(recs.schema_error(&["(a .txt file)"], HF));
    }
    let mut docs = Vec::with_capacity(recs.rows.len());
    for (i, r) in recs.rows.iter().enumerate() {
        let ctx = format!(
            "{} {}",
            recs.str(r, "ctx_a")?,
            py_capitalize(recs.str(r, "ctx_b")?)
        );
        let query = hellaswag_preprocess(&format!("{}: {ctx}", recs.str(r, "activity_label")?));
        let endings = recs.str_list(r, "endings")?;
        if endings.len() != 4 {
            return Err(recs.err(r, format!("expected 4 endings, found {}", endings.len())));
        }
        let gold = recs.index(r, "label")?;
        if gold >= endings.len() {
            return Err(recs.err(r, format!("label {gold} out of range 0-3")));
        }
        let choices = endings.iter().map(|e| hellaswag_preprocess(e)).collect();
        docs.push(mc_doc(i, query, choices, gold));
    }
    non_empty(path, docs)
}
