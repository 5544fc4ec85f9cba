//! lm-eval's task hashes, so that a results file proves its prompts are lm-eval's.
//!
//! lm-evaluation-harness 0.4.13 logs, per evaluated document, `doc_hash` = SHA-256 of
//! `json.dumps(doc, indent=2, ensure_ascii=False)` (the document as its task config sees
//! it), `prompt_hash` = SHA-256 of the first request's context and `target_hash` = SHA-256
//! of `str(doc_to_target(doc))`; its results JSON then carries, per task, `task_hashes` =
//! SHA-256 of the three hex digests of every document concatenated in document order.
//!
//! The documents are those of the local task configs (`benches/lm_eval_tasks/`, the
//! official prompts reading the shared files), rebuilt here by each loader from the shared
//! format; documents read from a Hugging Face schema carry no hash (their rows hold
//! columns this harness does not keep). Checked against lm-eval itself by
//! `scripts/golden/lm_eval_task_hashes.py` (`tests/tasks.rs`).

use super::Doc;
use crate::hashing::sha256_hex;
use std::collections::BTreeMap;

/// A document as Python sees it: dicts keep their key order.
#[derive(Debug, Clone, PartialEq)]
pub enum PyJson {
    Str(String),
    Int(i64),
    List(Vec<PyJson>),
    Dict(Vec<(String, PyJson)>),
}

impl PyJson {
    pub fn str(s: &str) -> PyJson {
        PyJson::Str(s.to_string())
    }

    pub fn strs(v: &[String]) -> PyJson {
        PyJson::List(v.iter().map(|s| PyJson::str(s)).collect())
    }

    pub fn dict(fields: Vec<(&str, PyJson)>) -> PyJson {
        PyJson::Dict(fields.into_iter().map(|(k, v)| (k.into(), v)).collect())
    }

    /// `json.dumps(self, indent=2, ensure_ascii=False)`.
    pub fn dumps(&self) -> String {
        let mut out = String::new();
        self.write(&mut out, 0);
        out
    }

    fn write(&self, out: &mut String, depth: usize) {
        let pad = |out: &mut String, d: usize| {
            out.push('\n');
            out.extend(std::iter::repeat_n(' ', 2 * d));
        };
        match self {
            PyJson::Str(s) => write_str(out, s),
            PyJson::Int(i) => out.push_str(&i.to_string()),
            PyJson::List(items) if items.is_empty() => out.push_str("[]"),
            PyJson::Dict(items) if items.is_empty() => out.push_str("{}"),
            PyJson::List(items) => {
                out.push('[');
                for (k, v) in items.iter().enumerate() {
                    if k > 0 {
                        out.push(',');
                    }
                    pad(out, depth + 1);
                    v.write(out, depth + 1);
                }
                pad(out, depth);
                out.push(']');
            }
            PyJson::Dict(items) => {
                out.push('{');
                for (k, (key, v)) in items.iter().enumerate() {
                    if k > 0 {
                        out.push(',');
                    }
                    pad(out, depth + 1);
                    write_str(out, key);
                    out.push_str(": ");
                    v.write(out, depth + 1);
                }
                pad(out, depth);
                out.push('}');
            }
        }
    }
}

/// A JSON string as Python's encoder writes it with `ensure_ascii=False`: only `"`, `\`
/// and the C0 controls are escaped (named escapes where JSON has them).
fn write_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// `doc_hash + prompt_hash + target_hash` of one document (192 hex digits).
pub fn doc_hashes(doc: &PyJson, prompt: &str, target: &str) -> String {
    let mut s = sha256_hex(doc.dumps().as_bytes());
    s.push_str(&sha256_hex(prompt.as_bytes()));
    s.push_str(&sha256_hex(target.as_bytes()));
    s
}

impl Doc {
    /// This document with its lm-eval hashes, from its lm-eval form (None: not known,
    /// no hash) and `str(doc_to_target(doc))`.
    pub(super) fn with_lm_eval(mut self, doc: Option<PyJson>, target: &str) -> Doc {
        self.lm_eval_hash = match (doc, self.requests.first()) {
            (Some(d), Some(r)) => Some(doc_hashes(&d, &r.context, target)),
            _ => None,
        };
        self
    }
}

/// lm-eval's `task_hashes` of the documents evaluated: per task, or per subject for a task
/// with subjects (MMLU: `mmlu_<subject>`, as lm-eval names its subtasks), in document
/// order. A task any of whose documents has no hash gets none.
pub fn task_hashes(task: &str, docs: &[&Doc]) -> BTreeMap<String, String> {
    let mut parts: BTreeMap<String, Option<String>> = BTreeMap::new();
    let mut sorted: Vec<&&Doc> = docs.iter().collect();
    sorted.sort_by_key(|d| d.doc_id);
    for d in sorted {
        let name = match &d.group {
            Some(g) => format!("{task}_{g}"),
            None => task.to_string(),
        };
        let entry = parts.entry(name).or_insert_with(|| Some(String::new()));
        match (entry.as_mut(), &d.lm_eval_hash) {
            (Some(acc), Some(h)) => acc.push_str(h),
            _ => *entry = None,
        }
    }
    parts
        .into_iter()
        .filter_map(|(name, joined)| Some((name, sha256_hex(joined?.as_bytes()))))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Python 3: json.dumps({"a": "x\"\\\n\t\u0001é", "b": [1, [], {}], "c": {"d": []}},
    /// indent=2, ensure_ascii=False).
    #[test]
    fn dumps_like_python() {
        let v = PyJson::dict(vec![
            ("a", PyJson::str("x\"\\\n\t\u{1}é")),
            (
                "b",
                PyJson::List(vec![
                    PyJson::Int(1),
                    PyJson::List(vec![]),
                    PyJson::Dict(vec![]),
                ]),
            ),
            ("c", PyJson::dict(vec![("d", PyJson::List(vec![]))])),
        ]);
        assert_eq!(
            v.dumps(),
            "{\n  \"a\": \"x\\\"\\\\\\n\\t\\u0001é\",\n  \"b\": [\n    1,\n    [],\n    {}\n  ],\n  \"c\": {\n    \"d\": []\n  }\n}"
        );
    }
}
