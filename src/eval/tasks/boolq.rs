//! BoolQ (lm_eval/tasks/super_glue/boolq/default.yaml): context
//! `"{passage}\nQuestion: {question}?\nAnswer:"` (the template adds the `?`), choices
//! `no`, `yes`, gold `label`; acc only.
//!
//! Shared copy (`boolq/boolq_validation.jsonl`): {query: "Passage: {passage}\nQuestion:
//! {question}?", choices ["no", "yes"], gold}; the context is the query without its
//! leading `Passage: `, plus `\nAnswer:`. Its passages lack the `{title} -- ` prefix that
//! super_glue's passages carry (see README-tasks.md). Hugging Face schema: super_glue
//! {question, passage, label} or google/boolq {question, passage, answer (bool)}.

use super::lm_hash::PyJson;
use super::read::{Files, Records};
use super::{locate, mc_doc, non_empty, Doc, TaskSource};
use crate::error::Result;
use serde_json::Value;

const SHARED: &[&str] = &["query", "gold"];
const HF: &[&str] = &["question", "passage"];

pub fn load(src: &TaskSource, files: &mut Files) -> Result<Vec<Doc>> {
    let path = locate(src, "boolq", "boolq/boolq_validation.jsonl");
    let recs = Records::read(files, &path)?;
    if recs.rows.is_empty() {
        return Err(recs.empty_split());
    }
    let hf = if recs.has_all(SHARED) {
        false
    } else if recs.has_all(HF) {
        true
    } else {
        return Err(recs.schema_error(SHARED, &["question", "passage", "label|answer"]));
    };
    let mut docs = Vec::with_capacity(recs.rows.len());
    for (i, r) in recs.rows.iter().enumerate() {
        let (context, gold, lm_doc) = if hf {
            let gold = match (r.fields.get("label"), r.fields.get("answer")) {
                (Some(v), _) if !v.is_null() => recs.index(r, "label")?,
                (_, Some(Value::Bool(b))) => usize::from(*b),
                _ => return Err(recs.err(r, "missing field `label` (0/1) or `answer` (bool)")),
            };
            let context = format!(
                "{}\nQuestion: {}?\nAnswer:",
                recs.str(r, "passage")?,
                recs.str(r, "question")?
            );
            (context, gold, None)
        } else {
            let query = recs.str(r, "query")?;
            let Some(body) = query.strip_prefix("Passage: ") else {
                return Err(recs.err(r, "query must start with `Passage: `"));
            };
            if !body.contains("\nQuestion: ") || !body.ends_with('?') {
                return Err(recs.err(r, "query must be `Passage: ...\\nQuestion: ...?`"));
            }
            if let Some(c) = r.fields.get("choices") {
                if c != &serde_json::json!(["no", "yes"]) {
                    return Err(
                        recs.err(r, format!("choices must be [\"no\", \"yes\"], found {c}"))
                    );
                }
            }
            let gold = recs.index(r, "gold")?;
            // The local config's document: passage and question split at the last
            // "\nQuestion: ", the question without its "?" (the template adds it back).
            let cut = body.rfind("\nQuestion: ").unwrap_or(0);
            let question = &body[cut + "\nQuestion: ".len()..body.len() - 1];
            let lm_doc = PyJson::dict(vec![
                ("passage", PyJson::str(&body[..cut])),
                ("question", PyJson::str(question)),
                ("label", PyJson::Int(gold as i64)),
            ]);
            (format!("{body}\nAnswer:"), gold, Some(lm_doc))
        };
        if gold > 1 {
            return Err(recs.err(r, format!("label must be 0 or 1, found {gold}")));
        }
        let doc = mc_doc(i, context, vec!["no".into(), "yes".into()], gold);
        docs.push(doc.with_lm_eval(lm_doc, &gold.to_string()));
    }
    non_empty(&path, docs)
}
