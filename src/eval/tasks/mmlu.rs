//! MMLU, lm-eval's default template (lm_eval/tasks/mmlu/default/_default_template_yaml and
//! the per-subject configs from `_generate_configs.py`): each subject is its own task with
//! the description `"The following are multiple choice questions (with answers) about
//! {subject with _ as space}.\n\n"`, the prompt `"{question.strip()}\nA. {c0}\nB. {c1}\nC.
//! {c2}\nD. {c3}\nAnswer:"`, choices `A`..`D`, gold `answer`; acc only. With `n` shots the
//! first `n` dev examples of the subject (sampler first_n) come between the description
//! and the prompt, each as `prompt + " " + letter + "\n\n"`.
//!
//! Shared layout (`mmlu/`): `test/<subject>_test.csv` and `dev/<subject>_dev.csv`, header
//! `question,choice0,choice1,choice2,choice3,answer`, answer 0-3; subjects in file-name
//! order, documents in file order. Hugging Face schema (cais/mmlu): a test file {question,
//! subject, choices[4], answer} in jsonl or parquet; for few-shot, the dev file beside it
//! (same name with the leading `test` replaced by `dev`, as in cais/mmlu's
//! `test-00000-of-00001.parquet` / `dev-00000-of-00001.parquet`).

use super::lm_hash::PyJson;
use super::pytext::py_strip;
use super::read::{parse_csv, Files, Records};
use super::{non_empty, Doc, Request, TaskSource};
use crate::error::{Error, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const HEADER: [&str; 6] = [
    "question", "choice0", "choice1", "choice2", "choice3", "answer",
];
const HF: &[&str] = &["question", "subject", "choices", "answer"];
const LETTERS: [&str; 4] = ["A", "B", "C", "D"];

/// lm-eval 0.4.13's four MMLU groups: each `mmlu_<subject>.yaml` is tagged
/// `mmlu_<category>_tasks`, and `mmlu` aggregates `mmlu_stem`, `mmlu_other`,
/// `mmlu_social_sciences` and `mmlu_humanities`.
const CATEGORIES: [(&str, &str); 57] = [
    ("abstract_algebra", "stem"),
    ("anatomy", "stem"),
    ("astronomy", "stem"),
    ("business_ethics", "other"),
    ("clinical_knowledge", "other"),
    ("college_biology", "stem"),
    ("college_chemistry", "stem"),
    ("college_computer_science", "stem"),
    ("college_mathematics", "stem"),
    ("college_medicine", "other"),
    ("college_physics", "stem"),
    ("computer_security", "stem"),
    ("conceptual_physics", "stem"),
    ("econometrics", "social_sciences"),
    ("electrical_engineering", "stem"),
    ("elementary_mathematics", "stem"),
    ("formal_logic", "humanities"),
    ("global_facts", "other"),
    ("high_school_biology", "stem"),
    ("high_school_chemistry", "stem"),
    ("high_school_computer_science", "stem"),
    ("high_school_european_history", "humanities"),
    ("high_school_geography", "social_sciences"),
    ("high_school_government_and_politics", "social_sciences"),
    ("high_school_macroeconomics", "social_sciences"),
    ("high_school_mathematics", "stem"),
    ("high_school_microeconomics", "social_sciences"),
    ("high_school_physics", "stem"),
    ("high_school_psychology", "social_sciences"),
    ("high_school_statistics", "stem"),
    ("high_school_us_history", "humanities"),
    ("high_school_world_history", "humanities"),
    ("human_aging", "other"),
    ("human_sexuality", "social_sciences"),
    ("international_law", "humanities"),
    ("jurisprudence", "humanities"),
    ("logical_fallacies", "humanities"),
    ("machine_learning", "stem"),
    ("management", "other"),
    ("marketing", "other"),
    ("medical_genetics", "other"),
    ("miscellaneous", "other"),
    ("moral_disputes", "humanities"),
    ("moral_scenarios", "humanities"),
    ("nutrition", "other"),
    ("philosophy", "humanities"),
    ("prehistory", "humanities"),
    ("professional_accounting", "other"),
    ("professional_law", "humanities"),
    ("professional_medicine", "other"),
    ("professional_psychology", "social_sciences"),
    ("public_relations", "social_sciences"),
    ("security_studies", "social_sciences"),
    ("sociology", "social_sciences"),
    ("us_foreign_policy", "social_sciences"),
    ("virology", "other"),
    ("world_religions", "humanities"),
];

/// The lm-eval group (`stem`, `other`, `social_sciences`, `humanities`) of an MMLU subject.
pub fn category(subject: &str) -> Option<&'static str> {
    CATEGORIES
        .binary_search_by(|(s, _)| (*s).cmp(subject))
        .ok()
        .map(|i| CATEGORIES[i].1)
}

#[derive(Clone)]
struct Item {
    question: String,
    choices: [String; 4],
    answer: usize,
}

pub fn load(src: &TaskSource, files: &mut Files) -> Result<Vec<Doc>> {
    let shots = src.mmlu_fewshot;
    let (path, subjects, shared) = match src.overrides.get("mmlu") {
        Some(p) if !p.is_dir() => (p.clone(), hf_file(files, p, shots)?, false),
        Some(p) => (p.join("test"), shared_layout(files, p, shots)?, true),
        None => {
            let root = src.data_dir.join("mmlu");
            (root.join("test"), shared_layout(files, &root, shots)?, true)
        }
    };
    let mut docs = Vec::new();
    for (subject, test, dev) in subjects {
        let mut prefix = format!(
            "The following are multiple choice questions (with answers) about {}.\n\n",
            subject.replace('_', " ")
        );
        for ex in &dev {
            prefix.push_str(&prompt(ex));
            prefix.push(' ');
            prefix.push_str(LETTERS[ex.answer]);
            prefix.push_str("\n\n");
        }
        for item in test {
            let context = format!("{prefix}{}", prompt(&item));
            // The local configs' document (cais/mmlu's schema, read from the CSVs).
            let lm_doc = shared.then(|| {
                PyJson::dict(vec![
                    ("question", PyJson::str(&item.question)),
                    ("subject", PyJson::str(&subject)),
                    ("choices", PyJson::strs(&item.choices)),
                    ("answer", PyJson::Int(item.answer as i64)),
                ])
            });
            let doc = Doc {
                doc_id: docs.len(),
                requests: LETTERS
                    .iter()
                    .map(|l| Request {
                        context: context.clone(),
                        continuation: format!(" {l}"),
                    })
                    .collect(),
                gold: item.answer,
                choice_texts: LETTERS.iter().map(|l| l.to_string()).collect(),
                group: Some(subject.clone()),
                lm_eval_hash: None,
            };
            docs.push(doc.with_lm_eval(lm_doc, &item.answer.to_string()));
        }
    }
    non_empty(&path, docs)
}

fn prompt(it: &Item) -> String {
    let [a, b, c, d] = &it.choices;
    format!(
        "{}\nA. {a}\nB. {b}\nC. {c}\nD. {d}\nAnswer:",
        py_strip(&it.question)
    )
}

/// (subject, test items, the first `shots` dev items), in subject order.
type Subject = (String, Vec<Item>, Vec<Item>);

fn shared_layout(files: &mut Files, root: &Path, shots: usize) -> Result<Vec<Subject>> {
    let test_dir = root.join("test");
    let mut names: Vec<(String, PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(&test_dir).map_err(|e| Error::io(&test_dir, e))? {
        let entry = entry.map_err(|e| Error::io(&test_dir, e))?;
        let file = entry.file_name();
        if let Some(subject) = file.to_str().and_then(|f| f.strip_suffix("_test.csv")) {
            names.push((subject.to_string(), entry.path()));
        }
    }
    if names.is_empty() {
        return Err(Error::format(&test_dir, "no <subject>_test.csv files"));
    }
    names.sort();
    let mut out = Vec::with_capacity(names.len());
    for (subject, test_path) in names {
        let test = read_csv(files, &test_path)?;
        let dev = if shots > 0 {
            let dev_path = root.join("dev").join(format!("{subject}_dev.csv"));
            let dev = read_csv(files, &dev_path)?;
            first_n(dev, shots, &dev_path, &subject)?
        } else {
            Vec::new()
        };
        out.push((subject, test, dev));
    }
    Ok(out)
}

fn read_csv(files: &mut Files, path: &Path) -> Result<Vec<Item>> {
    let text = files.text(path)?;
    let mut recs = parse_csv(path, &text)?.into_iter();
    match recs.next() {
        Some((_, h)) if h == HEADER => {}
        _ => {
            return Err(Error::data(
                path,
                1,
                format!("the header must be `{}`", HEADER.join(",")),
            ))
        }
    }
    let mut items = Vec::new();
    for (line, fields) in recs {
        if fields.len() == 1 && fields[0].is_empty() {
            continue; // blank line
        }
        let Ok([question, c0, c1, c2, c3, answer]) = <[String; 6]>::try_from(fields) else {
            return Err(Error::data(path, line, "expected 6 fields"));
        };
        let answer = match answer.trim() {
            a @ ("0" | "1" | "2" | "3") => a.as_bytes()[0] as usize - b'0' as usize,
            a => {
                return Err(Error::data(
                    path,
                    line,
                    format!("answer must be 0-3, found `{a}`"),
                ))
            }
        };
        items.push(Item {
            question,
            choices: [c0, c1, c2, c3],
            answer,
        });
    }
    if items.is_empty() {
        return Err(Error::format(path, "empty split: no examples"));
    }
    Ok(items)
}

fn first_n(mut dev: Vec<Item>, shots: usize, path: &Path, subject: &str) -> Result<Vec<Item>> {
    if dev.len() < shots {
        return Err(Error::format(
            path,
            format!(
                "{shots}-shot needs {shots} dev examples of `{subject}`, found {}",
                dev.len()
            ),
        ));
    }
    dev.truncate(shots);
    Ok(dev)
}

/// Items of a cais/mmlu-schema file, with their subjects, in file order.
fn hf_items(files: &mut Files, path: &Path) -> Result<Vec<(String, Item)>> {
    let recs = Records::read(files, path)?;
    if recs.rows.is_empty() {
        return Err(recs.empty_split());
    }
    if !recs.has_all(HF) {
        return Err(recs.schema_error(&["(a folder with test/ and dev/)"], HF));
    }
    let mut out = Vec::with_capacity(recs.rows.len());
    for r in &recs.rows {
        let choices = recs.str_list(r, "choices")?;
        let Ok(choices) = <[String; 4]>::try_from(choices) else {
            return Err(recs.err(r, "expected 4 choices"));
        };
        let answer = recs.index(r, "answer")?;
        if answer > 3 {
            return Err(recs.err(r, format!("answer must be 0-3, found {answer}")));
        }
        let subject = recs.str(r, "subject")?;
        if subject.is_empty() {
            return Err(recs.err(r, "empty subject"));
        }
        let question = recs.str(r, "question")?.to_string();
        out.push((
            subject.to_string(),
            Item {
                question,
                choices,
                answer,
            },
        ));
    }
    Ok(out)
}

fn hf_file(files: &mut Files, path: &Path, shots: usize) -> Result<Vec<Subject>> {
    let test = hf_items(files, path)?;
    let mut dev: BTreeMap<String, Vec<Item>> = BTreeMap::new();
    let mut dev_path = PathBuf::new();
    if shots > 0 {
        dev_path = dev_sibling(path)?;
        for (s, it) in hf_items(files, &dev_path)? {
            dev.entry(s).or_default().push(it);
        }
    }
    // Consecutive runs of one subject form a group, so file order is kept.
    let mut out: Vec<Subject> = Vec::new();
    for (subject, item) in test {
        match out.last_mut() {
            Some((s, items, _)) if *s == subject => items.push(item),
            _ => {
                let examples = if shots > 0 {
                    let pool = dev.get(&subject).map_or(&[][..], Vec::as_slice);
                    if pool.len() < shots {
                        return Err(Error::format(
                            &dev_path,
                            format!(
                                "{shots}-shot needs {shots} dev examples of `{subject}`, found {}",
                                pool.len()
                            ),
                        ));
                    }
                    pool[..shots].to_vec()
                } else {
                    Vec::new()
                };
                out.push((subject, vec![item], examples));
            }
        }
    }
    Ok(out)
}

/// `.../test-00000-of-00001.parquet` -> `.../dev-00000-of-00001.parquet`.
fn dev_sibling(test: &Path) -> Result<PathBuf> {
    let name = test.file_name().and_then(|n| n.to_str()).unwrap_or("");
    match name.strip_prefix("test") {
        Some(rest) => Ok(test.with_file_name(format!("dev{rest}"))),
        None => Err(Error::Invalid(format!(
            "{}: few-shot MMLU needs the dev split beside the test file; name the test file \
             test*.{{parquet,jsonl}} and the dev file dev*.{{parquet,jsonl}}",
            test.display()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn categories_cover_the_57_subjects_in_lm_evals_groups() {
        assert!(
            CATEGORIES.windows(2).all(|w| w[0].0 < w[1].0),
            "sorted for search"
        );
        let count = |c| CATEGORIES.iter().filter(|(_, k)| *k == c).count();
        assert_eq!(
            [
                count("stem"),
                count("other"),
                count("social_sciences"),
                count("humanities")
            ],
            [19, 13, 12, 13]
        );
        assert_eq!(category("anatomy"), Some("stem"));
        assert_eq!(category("world_religions"), Some("humanities"));
        assert_eq!(category("not_a_subject"), None);
    }
}
