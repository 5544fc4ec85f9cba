//! OpenBookQA (lm_eval/tasks/openbookqa/openbookqa.yaml): context = the question stem as
//! is, choices `choices.text`, gold `choices.label.index(answerKey.lstrip())`; acc and
//! acc_norm.
//!
//! Shared copy (`openbookqa/openbookqa_main_test.jsonl`): {query (the stem), choices,
//! gold}. Hugging Face schema (allenai/openbookqa `main`): {question_stem, choices {text,
//! label}, answerKey}.

use super::arc::{check_choices, keyed_choices};
use super::pytext::py_lstrip;
use super::read::{Files, Records};
use super::{locate, mc_doc, non_empty, Doc, TaskSource};
use crate::error::Result;

const SHARED: &[&str] = &["query", "choices", "gold"];
const HF: &[&str] = &["question_stem", "choices", "answerKey"];

pub fn load(src: &TaskSource, files: &mut Files) -> Result<Vec<Doc>> {
    let path = locate(src, "openbookqa", "openbookqa/openbookqa_main_test.jsonl");
    let recs = Records::read(files, &path)?;
    if recs.rows.is_empty() {
        return Err(recs.empty_split());
    }
    let hf = if recs.has_all(SHARED) {
        false
    } else if recs.has_all(HF) {
        true
    } else {
        return Err(recs.schema_error(SHARED, HF));
    };
    let mut docs = Vec::with_capacity(recs.rows.len());
    for (i, r) in recs.rows.iter().enumerate() {
        let (stem, choices, gold) = if hf {
            let key = py_lstrip(recs.str(r, "answerKey")?);
            let (choices, gold) = keyed_choices(&recs, r, key)?;
            (recs.str(r, "question_stem")?, choices, gold)
        } else {
            let choices = recs.str_list(r, "choices")?;
            let gold = recs.index(r, "gold")?;
            check_choices(&recs, r, &choices, gold)?;
            (recs.str(r, "query")?, choices, gold)
        };
        let lm_doc = (!hf).then(|| super::arc::arc_like_doc("question_stem", stem, &choices, gold));
        docs.push(
            mc_doc(i, stem.to_string(), choices, gold).with_lm_eval(lm_doc, &gold.to_string()),
        );
    }
    non_empty(&path, docs)
}
