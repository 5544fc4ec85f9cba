//! ARC-Easy / ARC-Challenge (lm_eval/tasks/arc/arc_easy.yaml; arc_challenge.yaml includes
//! it): context `"Question: {question}\nAnswer:"`, choices `choices.text`, gold
//! `choices.label.index(answerKey)`; acc and acc_norm.
//!
//! Shared copy (`arc_*/arc_*_test.jsonl`): {query, choices, gold} where query is already
//! `"Question: " + question`; every item there has 4 choices (see README-tasks.md). Hugging
//! Face schema (allenai/ai2_arc): {question, choices {text, label}, answerKey}, 3-5 choices.

use super::lm_hash::PyJson;
use super::read::{Files, Records};
use super::{locate, mc_doc, non_empty, Doc, TaskSource};
use crate::error::Result;

const SHARED: &[&str] = &["query", "choices", "gold"];
const HF: &[&str] = &["question", "choices", "answerKey"];

pub fn load(task: &str, src: &TaskSource, files: &mut Files) -> Result<Vec<Doc>> {
    let rel = format!("{task}/{task}_test.jsonl");
    let path = locate(src, task, &rel);
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
        let (question, choices, gold) = if hf {
            let (choices, gold) = keyed_choices(&recs, r, recs.str(r, "answerKey")?)?;
            (recs.str(r, "question")?.to_string(), choices, gold)
        } else {
            let query = recs.str(r, "query")?;
            let Some(q) = query.strip_prefix("Question: ") else {
                return Err(recs.err(r, "query must start with `Question: `"));
            };
            let choices = recs.str_list(r, "choices")?;
            let gold = recs.index(r, "gold")?;
            check_choices(&recs, r, &choices, gold)?;
            (q.to_string(), choices, gold)
        };
        let lm_doc = (!hf).then(|| arc_like_doc("question", &question, &choices, gold));
        let context = format!("Question: {question}\nAnswer:");
        docs.push(mc_doc(i, context, choices, gold).with_lm_eval(lm_doc, &gold.to_string()));
    }
    non_empty(&path, docs)
}

/// The local configs' ARC-schema document of a shared row: the question under `key`, the
/// choices labelled A, B, ... and the gold's label as the answer key.
pub(super) fn arc_like_doc(key: &str, question: &str, choices: &[String], gold: usize) -> PyJson {
    let labels: Vec<String> = (0..choices.len())
        .map(|k| char::from(b'A' + k as u8).to_string())
        .collect();
    PyJson::dict(vec![
        (key, PyJson::str(question)),
        (
            "choices",
            PyJson::dict(vec![
                ("text", PyJson::strs(choices)),
                ("label", PyJson::strs(&labels)),
            ]),
        ),
        ("answerKey", PyJson::str(&labels[gold])),
    ])
}

/// `choices {text, label}` + the answer key -> (texts, index of the key among the labels).
pub(super) fn keyed_choices(
    recs: &Records,
    r: &super::read::Record,
    key: &str,
) -> Result<(Vec<String>, usize)> {
    let texts = recs.nested_str_list(r, "choices", "text")?;
    let labels = recs.nested_str_list(r, "choices", "label")?;
    if texts.len() != labels.len() {
        return Err(recs.err(
            r,
            format!(
                "choices has {} texts but {} labels",
                texts.len(),
                labels.len()
            ),
        ));
    }
    let Some(gold) = labels.iter().position(|l| l == key) else {
        return Err(recs.err(
            r,
            format!("answerKey `{key}` is not one of the labels {labels:?}"),
        ));
    };
    check_choices(recs, r, &texts, gold)?;
    Ok((texts, gold))
}

/// At least two choices, gold among them.
pub(super) fn check_choices(
    recs: &Records,
    r: &super::read::Record,
    choices: &[String],
    gold: usize,
) -> Result<()> {
    if choices.len() < 2 {
        return Err(recs.err(
            r,
            format!("expected at least 2 choices, found {}", choices.len()),
        ));
    }
    if gold >= choices.len() {
        return Err(recs.err(
            r,
            format!("gold {gold} out of range for {} choices", choices.len()),
        ));
    }
    Ok(())
}
