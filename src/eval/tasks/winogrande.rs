//! WinoGrande (lm_eval/tasks/winogrande/{default.yaml,preprocess_winogrande.py}), partial
//! scoring: `doc_to_text` returns the gold index, so lm-eval takes the choices as contexts.
//! With `i = sentence.index("_")`, the two contexts are `sentence[:i] + option1` and
//! `sentence[:i] + option2`, and both are scored on the same continuation
//! `" " + sentence[i+1:].strip()`; gold = answer "1" -> 0, "2" -> 1; acc only. The choice
//! texts (what `doc_to_choice` returns) are the two contexts.
//!
//! Shared copy (`winogrande/winogrande_xl_validation.jsonl`): {context_options[2],
//! continuation, gold}, already split at the blank; the continuation is stripped as
//! lm-eval strips it. Hugging Face schema: {sentence, option1, option2, answer}.

use super::lm_hash::PyJson;
use super::pytext::py_strip;
use super::read::{Files, Record, Records};
use super::{locate, non_empty, Doc, Request, TaskSource};
use crate::error::Result;

const SHARED: &[&str] = &["context_options", "continuation", "gold"];
const HF: &[&str] = &["sentence", "option1", "option2", "answer"];

pub fn load(src: &TaskSource, files: &mut Files) -> Result<Vec<Doc>> {
    let path = locate(
        src,
        "winogrande",
        "winogrande/winogrande_xl_validation.jsonl",
    );
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
        let (contexts, target, gold) = if hf {
            from_hf(&recs, r)?
        } else {
            from_shared(&recs, r)?
        };
        // The local config's document is the shared row (continuation unstripped).
        let lm_doc = if hf {
            None
        } else {
            Some(PyJson::dict(vec![
                ("context_options", PyJson::strs(&contexts)),
                ("continuation", PyJson::str(recs.str(r, "continuation")?)),
                ("gold", PyJson::Int(gold as i64)),
            ]))
        };
        let requests = contexts
            .iter()
            .map(|c| Request {
                context: c.clone(),
                continuation: format!(" {target}"),
            })
            .collect();
        let doc = Doc {
            doc_id: i,
            requests,
            gold,
            choice_texts: contexts,
            group: None,
            lm_eval_hash: None,
        };
        docs.push(doc.with_lm_eval(lm_doc, &target));
    }
    non_empty(&path, docs)
}

type Parts = (Vec<String>, String, usize);

fn from_shared(recs: &Records, r: &Record) -> Result<Parts> {
    let contexts = recs.str_list(r, "context_options")?;
    if contexts.len() != 2 {
        return Err(recs.err(
            r,
            format!("expected 2 context_options, found {}", contexts.len()),
        ));
    }
    let target = py_strip(recs.str(r, "continuation")?).to_string();
    let gold = recs.index(r, "gold")?;
    if gold > 1 {
        return Err(recs.err(r, format!("gold must be 0 or 1, found {gold}")));
    }
    Ok((contexts, target, gold))
}

fn from_hf(recs: &Records, r: &Record) -> Result<Parts> {
    let sentence = recs.str(r, "sentence")?;
    let Some(blank) = sentence.find('_') else {
        return Err(recs.err(r, "sentence has no `_` blank"));
    };
    let prefix = &sentence[..blank];
    let contexts = vec![
        format!("{prefix}{}", recs.str(r, "option1")?),
        format!("{prefix}{}", recs.str(r, "option2")?),
    ];
    let target = py_strip(&sentence[blank + 1..]).to_string();
    let gold = match recs.index(r, "answer") {
        Ok(1) => 0,
        Ok(2) => 1,
        _ => {
            let found = r
                .fields
                .get("answer")
                .map_or("nothing".into(), |v| v.to_string());
            return Err(recs.err(r, format!("answer must be \"1\" or \"2\", found {found}")));
        }
    };
    Ok((contexts, target, gold))
}
