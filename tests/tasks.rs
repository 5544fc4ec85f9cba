//! Task definitions against lm-evaluation-harness itself:
//! - the shared data: tests/golden/lm_eval_requests.json, written by
//!   scripts/golden/lm_eval_reference.py --requests-out (lm-eval 0.4.13 building every
//!   request through benches/lm_eval_tasks/): the first 3 documents verbatim, a digest of
//!   all of them, the document counts;
//! - the Hugging Face schemas: tests/fixtures/tasks/*, written with lm-eval's official
//!   task configs by tests/fixtures/tasks/make_fixtures.py;
//! - seeded subsets against an independent Python implementation (same script);
//! - bad input: every error names the file (and the line where there is one).

use come_repro::eval::tasks::{known_tasks, load_task, subset, Doc, Metric, TaskData, TaskSource};
use come_repro::Error;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn manifest() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn json(rel: &str) -> Value {
    let p = manifest().join(rel);
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

fn shared() -> TaskSource {
    TaskSource::new(come_repro::paths::data_dir())
}

fn with_override(task: &str, path: impl Into<PathBuf>) -> TaskSource {
    let mut src = TaskSource::new("/nonexistent-data-dir");
    src.overrides.insert(task.to_string(), path.into());
    src
}

/// The digest `digest_docs` in scripts/golden/lm_eval_reference.py computes.
fn digest<'a>(docs: impl IntoIterator<Item = &'a Doc>) -> String {
    let mut h = Sha256::new();
    for d in docs {
        for r in &d.requests {
            h.update(r.context.as_bytes());
            h.update([0x1f]);
            h.update(r.continuation.as_bytes());
            h.update([0x1e]);
        }
        for c in &d.choice_texts {
            h.update(c.as_bytes());
            h.update([0x1d]);
        }
        h.update(d.gold.to_string().as_bytes());
        h.update([0x1c]);
    }
    hex::encode(h.finalize())
}

/// One document against lm-eval's {requests: [[ctx, cont]], gold, choices}.
fn assert_doc(what: &str, got: &Doc, want: &Value) {
    let reqs: Vec<(String, String)> = got
        .requests
        .iter()
        .map(|r| (r.context.clone(), r.continuation.clone()))
        .collect();
    let want_reqs: Vec<(String, String)> = want["requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p[0].as_str().unwrap().to_string(),
                p[1].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(reqs, want_reqs, "{what}: requests");
    assert_eq!(
        got.gold as u64,
        want["gold"].as_u64().unwrap(),
        "{what}: gold"
    );
    let choices: Vec<&str> = want["choices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(got.choice_texts, choices, "{what}: choices");
}

// ---------------------------------------------------------------------------------------
// The shared data against lm-eval.

/// Counts from ../shared/data/README.md.
const COUNTS: [(&str, usize); 7] = [
    ("piqa", 1838),
    ("hellaswag", 10042),
    ("winogrande", 1267),
    ("arc_easy", 2376),
    ("arc_challenge", 1172),
    ("boolq", 3270),
    ("openbookqa", 500),
];

#[test]
fn shared_tasks_match_lm_eval_requests() {
    let golden = json("tests/golden/lm_eval_requests.json");
    assert_eq!(golden["lm_eval_version"], "0.4.13");
    for (name, count) in COUNTS {
        let task = load_task(name, &shared()).unwrap();
        let want = &golden["tasks"][name];
        assert_eq!(task.name, name);
        assert_eq!(task.docs.len(), count, "{name}: README count");
        assert_eq!(task.docs.len() as u64, want["num_docs"].as_u64().unwrap());
        for (i, w) in want["first_docs"].as_array().unwrap().iter().enumerate() {
            assert_eq!(w["doc_id"].as_u64().unwrap(), i as u64);
            assert_eq!(task.docs[i].doc_id, i);
            assert_doc(&format!("{name} doc {i}"), &task.docs[i], w);
        }
        assert_eq!(
            digest(&task.docs),
            want["sha256"].as_str().unwrap(),
            "{name}: some request differs from lm-eval's"
        );
        assert!(task.docs.iter().all(|d| d.group.is_none()));
        assert_eq!(task.num_fewshot, 0);
    }
}

#[test]
fn first_requests_spelled_out() {
    // What lm-eval feeds the model for the first item of each task (also in the golden
    // file; spelled out here so that a reader sees the rules).
    let first = |t: &str| load_task(t, &shared()).unwrap().docs.swap_remove(0);
    let d = first("piqa");
    assert_eq!(
        d.requests[0].context,
        "Question: How do I ready a guinea pig cage for it's new occupants?\nAnswer:"
    );
    assert!(d.requests[1]
        .continuation
        .starts_with(" Provide the guinea pig"));
    let d = first("hellaswag");
    assert_eq!(
        d.requests[3].context,
        "Roof shingle removal: A man is sitting on a roof. he"
    );
    assert_eq!(
        d.requests[3].continuation,
        " starts pulling up roofing on a roof."
    );
    assert_eq!(d.gold, 3);
    let d = first("winogrande");
    assert_eq!(
        d.requests[1].context,
        "Sarah was a much better surgeon than Maria so Maria"
    );
    assert_eq!(d.requests[1].continuation, " always got the easier cases.");
    assert_eq!(d.gold, 1);
    let d = first("boolq");
    assert!(d.requests[0]
        .context
        .starts_with("All biomass goes through"));
    assert!(d.requests[0]
        .context
        .ends_with("\nQuestion: does ethanol take more energy make that produces?\nAnswer:"));
    assert_eq!(d.requests[1].continuation, " yes");
    let d = first("openbookqa");
    assert!(d.requests[0]
        .context
        .ends_with("the best way to save money is to"));
    assert_eq!(d.requests[1].continuation, " quit eating lunch out");
}

#[test]
fn metrics_and_files() {
    let t = load_task("piqa", &shared()).unwrap();
    assert_eq!(t.metrics, vec![Metric::Acc, Metric::AccNorm]);
    let sums = std::fs::read_to_string(come_repro::paths::data_dir().join("SHA256SUMS")).unwrap();
    let names: Vec<String> = t
        .files
        .iter()
        .map(|(p, sha)| {
            let name = p.strip_prefix(come_repro::paths::data_dir()).unwrap();
            let line = format!("{sha}  ./{}", name.display());
            assert!(sums.lines().any(|l| l == line), "{line} not in SHA256SUMS");
            name.display().to_string()
        })
        .collect();
    assert_eq!(names, ["piqa/valid.jsonl", "piqa/valid-labels.lst"]);
    for (name, metrics) in [
        ("winogrande", vec![Metric::Acc]),
        ("boolq", vec![Metric::Acc]),
        ("hellaswag", vec![Metric::Acc, Metric::AccNorm]),
    ] {
        assert_eq!(load_task(name, &shared()).unwrap().metrics, metrics);
    }
    assert_eq!(Metric::AccNorm.name(), "acc_norm");
    assert_eq!(
        known_tasks(),
        [
            "piqa",
            "hellaswag",
            "winogrande",
            "arc_easy",
            "arc_challenge",
            "boolq",
            "openbookqa",
            "mmlu"
        ]
    );
}

fn by_subject(t: &TaskData) -> BTreeMap<String, Vec<&Doc>> {
    let mut m: BTreeMap<String, Vec<&Doc>> = BTreeMap::new();
    for d in &t.docs {
        m.entry(d.group.clone().unwrap()).or_default().push(d);
    }
    m
}

#[test]
fn mmlu_matches_lm_eval_zero_and_five_shot() {
    let golden = json("tests/golden/lm_eval_requests.json");
    for shots in [0usize, 5] {
        let mut src = shared();
        src.mmlu_fewshot = shots;
        let t = load_task("mmlu", &src).unwrap();
        assert_eq!(t.docs.len(), 14042);
        assert_eq!(t.num_fewshot, shots);
        assert_eq!(t.metrics, vec![Metric::Acc]);
        assert!(t.docs.iter().enumerate().all(|(i, d)| d.doc_id == i));
        // 57 test files, plus 57 dev files for few-shot.
        assert_eq!(t.files.len(), if shots == 0 { 57 } else { 114 });
        let want = &golden["mmlu"][format!("{shots}shot")];
        let subjects = by_subject(&t);
        assert_eq!(subjects.len(), 57);
        for (subject, docs) in &subjects {
            let w = &want[subject.as_str()];
            assert_eq!(
                docs.len() as u64,
                w["num_docs"].as_u64().unwrap(),
                "{subject}"
            );
            assert_eq!(
                digest(docs.iter().copied()),
                w["sha256"].as_str().unwrap(),
                "{subject} {shots}-shot differs from lm-eval"
            );
            if let Some(first) = w["first_docs"].as_array() {
                for (i, fd) in first.iter().enumerate() {
                    assert_doc(&format!("mmlu {subject} {shots}-shot {i}"), docs[i], fd);
                }
            }
        }
    }
}

#[test]
fn mmlu_dev_has_five_per_subject() {
    // 285 dev examples = 5 for each of the 57 subjects: 5-shot works (above), 6-shot
    // names the first dev file that is short.
    let mut src = shared();
    src.mmlu_fewshot = 6;
    let err = load_task("mmlu", &src).unwrap_err().to_string();
    assert!(err.contains("abstract_algebra_dev.csv"), "{err}");
    assert!(err.contains("found 5"), "{err}");
}

#[test]
fn reference_run_requests_are_ours() {
    // tests/golden/lm_eval_smollm2.json (lm-eval scoring SmolLM2 on the first documents):
    // its requests must be exactly the ones built here, so that per-document scores can be
    // compared. MMLU: the first documents of each listed subject.
    let golden = json("tests/golden/lm_eval_smollm2.json");
    for (run, shots) in [("0shot", 0usize), ("mmlu_5shot", 5)] {
        let mut src = shared();
        src.mmlu_fewshot = shots;
        let mmlu = load_task("mmlu", &src).unwrap();
        let subjects = by_subject(&mmlu);
        for (name, t) in golden["runs"][run]["tasks"].as_object().unwrap() {
            let task;
            let docs: Vec<&Doc> = match name.strip_prefix("mmlu_") {
                Some(subject) => subjects[subject].clone(),
                None => {
                    task = load_task(name, &shared()).unwrap();
                    task.docs.iter().collect()
                }
            };
            let want = t["docs"].as_array().unwrap();
            assert!(!want.is_empty());
            for w in want {
                let i = w["doc_id"].as_u64().unwrap() as usize;
                let got: Vec<[&str; 2]> = docs[i]
                    .requests
                    .iter()
                    .map(|r| [r.context.as_str(), r.continuation.as_str()])
                    .collect();
                let exp: Vec<[&str; 2]> = w["requests"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| [p[0].as_str().unwrap(), p[1].as_str().unwrap()])
                    .collect();
                assert_eq!(got, exp, "{run} {name} doc {i}");
                assert_eq!(w["loglik"].as_array().unwrap().len(), got.len());
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Hugging Face schemas against lm-eval's official configs.

#[test]
fn hf_schema_fixtures_match_official_lm_eval() {
    let expected = json("tests/fixtures/tasks/expected.json");
    let dir = manifest().join("tests/fixtures/tasks");
    let files = expected["files"].as_object().unwrap();
    assert_eq!(files.len(), 11);
    for (key, want) in files {
        let rel = key.split('#').next().unwrap();
        let task = want["task"].as_str().unwrap();
        let mut src = with_override(task, dir.join(rel));
        src.mmlu_fewshot = want["num_fewshot"].as_u64().unwrap_or(0) as usize;
        let t = load_task(task, &src).unwrap_or_else(|e| panic!("{key}: {e}"));
        let docs = want["docs"].as_array().unwrap();
        assert_eq!(t.docs.len(), docs.len(), "{key}");
        for (i, (got, w)) in t.docs.iter().zip(docs).enumerate() {
            assert_doc(&format!("{key} doc {i}"), got, w);
        }
        let n_files = if src.mmlu_fewshot > 0 { 2 } else { 1 };
        assert_eq!(t.files.len(), n_files, "{key}");
        assert_eq!(t.files[0].0, dir.join(rel));
    }
}

#[test]
fn hf_mmlu_groups_follow_the_subject_column() {
    let dir = manifest().join("tests/fixtures/tasks/mmlu_hf");
    let t = load_task(
        "mmlu",
        &with_override("mmlu", dir.join("test-00000-of-00001.parquet")),
    )
    .unwrap();
    let groups: Vec<&str> = t.docs.iter().map(|d| d.group.as_deref().unwrap()).collect();
    assert_eq!(
        groups,
        [
            "abstract_algebra",
            "abstract_algebra",
            "high_school_geography",
            "high_school_geography"
        ]
    );
}

#[test]
fn override_directory_uses_the_shared_layout() {
    let dir = come_repro::paths::data_dir().join("openbookqa");
    let t = load_task("openbookqa", &with_override("openbookqa", &dir)).unwrap();
    assert_eq!(t.docs.len(), 500);
    assert_eq!(t.files[0].0, dir.join("openbookqa_main_test.jsonl"));
}

// ---------------------------------------------------------------------------------------
// Subsets.

#[test]
fn seeded_subsets_match_the_python_rule() {
    let golden = json("tests/fixtures/tasks/subset_golden.json");
    for case in golden.as_array().unwrap() {
        let n = case["n"].as_u64().unwrap() as usize;
        let count = case["count"].as_u64().unwrap() as usize;
        let seed = case["seed"].as_u64().unwrap();
        let want: Vec<usize> = case["indices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(subset(n, Some(count), None, Some(seed)), want, "{case}");
    }
    // Without a seed: lm-eval's --limit, the first N.
    assert_eq!(subset(1838, Some(3), None, None), [0, 1, 2]);
    assert_eq!(
        subset(1838, None, Some(0.01), None),
        (0..19).collect::<Vec<_>>()
    );
}

// ---------------------------------------------------------------------------------------
// Bad input.

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(&p, text).unwrap();
    p
}

/// Load and expect an error whose message contains every `needle`.
fn expect_err(task: &str, src: &TaskSource, needles: &[&str]) -> Error {
    let err = match load_task(task, src) {
        Ok(_) => panic!("{task}: expected an error containing {needles:?}"),
        Err(e) => e,
    };
    let msg = err.to_string();
    for n in needles {
        assert!(msg.contains(n), "`{msg}` lacks `{n}`");
    }
    err
}

fn loc(p: &Path, line: usize) -> String {
    format!("{}:{line}:", p.display())
}

#[test]
fn unknown_task_lists_the_known_ones() {
    let err = expect_err(
        "piqa2",
        &shared(),
        &["piqa2", "hellaswag", "openbookqa", "mmlu"],
    );
    assert!(matches!(err, Error::Invalid(_)));
}

#[test]
fn missing_files_are_named() {
    let d = tmp();
    let src = TaskSource::new(d.path());
    for (task, rel) in [
        ("piqa", "piqa/valid.jsonl"),
        ("hellaswag", "hellaswag/hellaswag_val_full.txt"),
        ("arc_challenge", "arc_challenge/arc_challenge_test.jsonl"),
        ("mmlu", "mmlu/test"),
    ] {
        let err = expect_err(task, &src, &[&d.path().join(rel).display().to_string()]);
        assert!(matches!(err, Error::Io { .. }), "{err:?}");
    }
    // PIQA: the labels file is missing.
    let p = write(
        d.path(),
        "p/valid.jsonl",
        "{\"goal\":\"g\",\"sol1\":\"a\",\"sol2\":\"b\"}\n",
    );
    expect_err("piqa", &with_override("piqa", &p), &["valid-labels.lst"]);
}

#[test]
fn jsonl_errors_carry_the_line() {
    let d = tmp();
    let good = r#"{"query":"Question: q?","choices":["a","b","c","d"],"gold":1}"#;
    let cases: Vec<(&str, String, usize, &str)> = vec![
        (
            "malformed",
            format!("{good}\n{{\"query\": \n"),
            2,
            "malformed JSON",
        ),
        (
            "not_object",
            format!("{good}\n\n[1,2]\n"),
            3,
            "expected a JSON object",
        ),
        (
            "missing",
            format!("{good}\n{{\"query\":\"Question: q\",\"gold\":0}}\n"),
            2,
            "missing field `choices`",
        ),
        (
            "gold",
            format!("{good}\n{}\n", good.replace("\"gold\":1", "\"gold\":4")),
            2,
            "gold 4 out of range",
        ),
        (
            "neg",
            format!("{}\n", good.replace("\"gold\":1", "\"gold\":-1")),
            1,
            "non-negative integer",
        ),
        (
            "one_choice",
            format!("{}\n", good.replace("[\"a\",\"b\",\"c\",\"d\"]", "[\"a\"]")),
            1,
            "at least 2 choices",
        ),
        (
            "prefix",
            format!("{}\n", good.replace("Question: ", "Q: ")),
            1,
            "must start with `Question: `",
        ),
        (
            "type",
            format!("{}\n", good.replace("\"gold\":1", "\"gold\":\"x\"")),
            1,
            "`gold`",
        ),
    ];
    for (name, text, line, msg) in cases {
        let p = write(d.path(), &format!("{name}.jsonl"), &text);
        let err = expect_err(
            "arc_easy",
            &with_override("arc_easy", &p),
            &[&loc(&p, line), msg],
        );
        assert!(matches!(err, Error::Data { .. }), "{name}: {err:?}");
    }
}

#[test]
fn empty_split_and_unknown_schema() {
    let d = tmp();
    let p = write(d.path(), "empty.jsonl", "\n\n");
    let err = expect_err(
        "openbookqa",
        &with_override("openbookqa", &p),
        &["empty.jsonl", "empty split"],
    );
    assert!(matches!(err, Error::Format { .. }));
    let p = write(d.path(), "other.jsonl", "{\"a\":1}\n");
    expect_err(
        "boolq",
        &with_override("boolq", &p),
        &["other.jsonl", "shared fields", "Hugging Face"],
    );
    let p = write(d.path(), "x.csv", "a,b\n");
    let err = expect_err("piqa", &with_override("piqa", &p), &["x.csv", ".parquet"]);
    assert!(matches!(err, Error::Unsupported { .. }));
    let p = write(d.path(), "h.txt", "");
    expect_err(
        "hellaswag",
        &with_override("hellaswag", &p),
        &["h.txt", "empty split"],
    );
    let p = write(d.path(), "bin.jsonl", "");
    std::fs::write(&p, [0xff, 0xfe, b'\n']).unwrap();
    expect_err(
        "winogrande",
        &with_override("winogrande", &p),
        &["bin.jsonl", "UTF-8"],
    );
}

#[test]
fn piqa_label_errors_name_both_files() {
    let d = tmp();
    let row = "{\"goal\":\"g\",\"sol1\":\"a\",\"sol2\":\"b\"}\n";
    let p = write(d.path(), "valid.jsonl", &row.repeat(3));
    let labels = write(d.path(), "valid-labels.lst", "0\n1\n");
    let err = expect_err(
        "piqa",
        &with_override("piqa", &p),
        &["valid-labels.lst", "valid.jsonl", "2 labels", "3 examples"],
    );
    assert!(matches!(err, Error::Format { .. }));
    std::fs::write(&labels, "0\n2\n1\n").unwrap();
    expect_err(
        "piqa",
        &with_override("piqa", &p),
        &[&loc(&labels, 2), "0 or 1"],
    );
}

#[test]
fn hellaswag_txt_errors() {
    let d = tmp();
    let item = "Label: ctx\n1\na\nb\nc\nd\n";
    let p = write(d.path(), "a.txt", &format!("{item}Label: ctx\n1\na\n"));
    expect_err(
        "hellaswag",
        &with_override("hellaswag", &p),
        &[&loc(&p, 7), "incomplete item"],
    );
    let p = write(
        d.path(),
        "b.txt",
        &format!("{item}{}", item.replace("\n1\n", "\n4\n")),
    );
    expect_err(
        "hellaswag",
        &with_override("hellaswag", &p),
        &[&loc(&p, 8), "gold must be 0-3"],
    );
    let p = write(d.path(), "c.txt", &item.replace("Label: ctx", " "));
    expect_err(
        "hellaswag",
        &with_override("hellaswag", &p),
        &[&loc(&p, 1), "empty context"],
    );
}

#[test]
fn winogrande_and_boolq_errors() {
    let d = tmp();
    let p = write(
        d.path(),
        "w.jsonl",
        "{\"context_options\":[\"a\"],\"continuation\":\"x\",\"gold\":0}\n",
    );
    expect_err(
        "winogrande",
        &with_override("winogrande", &p),
        &[&loc(&p, 1), "2 context_options"],
    );
    let p = write(
        d.path(),
        "w2.jsonl",
        "{\"sentence\":\"no blank\",\"option1\":\"a\",\"option2\":\"b\",\"answer\":\"1\"}\n\
         {\"sentence\":\"a _ b\",\"option1\":\"a\",\"option2\":\"b\",\"answer\":\"\"}\n",
    );
    expect_err(
        "winogrande",
        &with_override("winogrande", &p),
        &[&loc(&p, 1), "no `_` blank"],
    );
    let p = write(
        d.path(),
        "w3.jsonl",
        "{\"sentence\":\"a _ b\",\"option1\":\"a\",\"option2\":\"b\",\"answer\":\"\"}\n",
    );
    expect_err(
        "winogrande",
        &with_override("winogrande", &p),
        &[&loc(&p, 1), "answer must be"],
    );
    let p = write(
        d.path(),
        "b.jsonl",
        "{\"query\":\"Passage: p\\nQuestion: q?\",\"choices\":[\"no\",\"yes\"],\"gold\":2}\n",
    );
    expect_err(
        "boolq",
        &with_override("boolq", &p),
        &[&loc(&p, 1), "0 or 1"],
    );
    let p = write(
        d.path(),
        "b2.jsonl",
        "{\"query\":\"Passage: p\\nQuestion: q?\",\"choices\":[\"yes\",\"no\"],\"gold\":0}\n",
    );
    expect_err(
        "boolq",
        &with_override("boolq", &p),
        &[&loc(&p, 1), "choices must be"],
    );
}

#[test]
fn mmlu_csv_errors() {
    let d = tmp();
    let header = "question,choice0,choice1,choice2,choice3,answer\n";
    let root = d.path().join("m");
    let t = write(
        &root,
        "test/x_test.csv",
        &format!("{header}q,a,b,c,d,1\n\"q\nr\",a,b,c,d,7\n"),
    );
    expect_err(
        "mmlu",
        &with_override("mmlu", &root),
        &[&loc(&t, 3), "answer must be 0-3"],
    );
    write(&root, "test/x_test.csv", &format!("{header}q,a,b,c,1\n"));
    expect_err(
        "mmlu",
        &with_override("mmlu", &root),
        &[&loc(&t, 2), "expected 6 fields"],
    );
    write(&root, "test/x_test.csv", "q,a,b,c,d,1\n");
    expect_err(
        "mmlu",
        &with_override("mmlu", &root),
        &[&loc(&t, 1), "header"],
    );
    write(&root, "test/x_test.csv", header);
    expect_err(
        "mmlu",
        &with_override("mmlu", &root),
        &["x_test.csv", "empty split"],
    );
    write(&root, "test/x_test.csv", &format!("{header}q,a,b,c,d,1\n"));
    let mut src = with_override("mmlu", &root);
    src.mmlu_fewshot = 5;
    expect_err("mmlu", &src, &["dev/x_dev.csv"]);
    write(&root, "dev/x_dev.csv", &format!("{header}q,a,b,c,d,1\n"));
    expect_err("mmlu", &src, &["x_dev.csv", "5-shot needs 5", "found 1"]);
    let empty = d.path().join("none");
    std::fs::create_dir_all(empty.join("test")).unwrap();
    expect_err(
        "mmlu",
        &with_override("mmlu", &empty),
        &["none/test", "no <subject>_test.csv"],
    );
}

#[test]
fn parquet_errors_name_the_row() {
    // The fixtures hold other schemas: a task fed the wrong file says which columns it
    // expected; a valid file for 5-shot without a dev file beside it names the missing file.
    let dir = manifest().join("tests/fixtures/tasks");
    let p = dir.join("piqa_hf.parquet");
    expect_err(
        "arc_easy",
        &with_override("arc_easy", &p),
        &["piqa_hf.parquet", "answerKey"],
    );
    let d = tmp();
    let test = d.path().join("test-1.parquet");
    std::fs::copy(dir.join("mmlu_hf/test-00000-of-00001.parquet"), &test).unwrap();
    let mut src = with_override("mmlu", &test);
    src.mmlu_fewshot = 5;
    expect_err("mmlu", &src, &["dev-1.parquet"]);
    // A truncated parquet file.
    let bad = d.path().join("bad.parquet");
    let bytes = std::fs::read(dir.join("arc_hf.parquet")).unwrap();
    std::fs::write(&bad, &bytes[..bytes.len() / 2]).unwrap();
    let err = expect_err(
        "arc_easy",
        &with_override("arc_easy", &bad),
        &["bad.parquet"],
    );
    assert!(matches!(err, Error::Format { .. }), "{err:?}");
    let src = with_override("hellaswag", dir.join("arc_hf.parquet"));
    expect_err("hellaswag", &src, &["arc_hf.parquet", "activity_label"]);
    // Row-level errors in parquet give the 1-based row.
    let p = dir.join("piqa_bad_label.parquet");
    let err = expect_err(
        "piqa",
        &with_override("piqa", &p),
        &[&loc(&p, 2), "row 2", "0 or 1"],
    );
    assert!(matches!(err, Error::Data { line: 2, .. }), "{err:?}");
}

/// MMLU's `acc` and its four subject groups aggregate as lm-eval 0.4.13's groups do
/// (size-weighted mean, pooled stderr); goldens by `scripts/golden/lm_eval_mmlu_groups.py`,
/// which calls lm-eval's own aggregation functions.
#[test]
fn mmlu_groups_aggregate_as_lm_eval() {
    use come_repro::eval::harness::{summarize, DocResult};
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/lm_eval_mmlu_groups.json");
    let g: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let mut docs = vec![];
    for (subject, s) in g["subjects"].as_object().unwrap() {
        for x in s["docs"].as_array().unwrap() {
            let acc = x.as_f64().unwrap();
            docs.push(DocResult {
                doc_id: docs.len(),
                gold: 0,
                loglik: vec![0.0, -1.0],
                is_greedy: vec![true, false],
                acc,
                acc_norm: acc,
                group: Some(subject.clone()),
            });
        }
    }
    let sum = summarize(&[Metric::Acc], &docs);
    let close = |a: f64, b: &Value, what: &str| {
        let b = b.as_f64().unwrap();
        assert!((a - b).abs() < 1e-12, "{what}: {a} vs lm-eval {b}");
    };
    for (subject, s) in g["subjects"].as_object().unwrap() {
        close(sum.groups[subject].value, &s["acc"], subject);
        close(sum.groups[subject].stderr, &s["acc_stderr"], subject);
    }
    let expected = g["expected"].as_object().unwrap();
    close(
        sum.metrics["acc"].value,
        &expected["mmlu"]["acc"],
        "mmlu acc",
    );
    close(
        sum.metrics["acc"].stderr,
        &expected["mmlu"]["acc_stderr"],
        "mmlu stderr",
    );
    assert_eq!(sum.categories.len(), 4);
    for (c, v) in &sum.categories {
        let want = &expected[&format!("mmlu_{c}")];
        close(v.value, &want["acc"], c);
        close(v.stderr, &want["acc_stderr"], c);
    }
}

/// lm-eval's `task_hashes` (SHA-256 over every document's doc, prompt and target hashes),
/// equal to what lm-eval 0.4.13 itself wrote for the shipped data through the local task
/// configs (scripts/golden/lm_eval_task_hashes.py): every document of the seven tasks and
/// of each MMLU subject, and lm-eval's `--limit 100` (the first 100 of each).
#[test]
fn task_hashes_equal_lm_evals() {
    use come_repro::eval::tasks::lm_hash::task_hashes;
    let golden = json("tests/golden/lm_eval_task_hashes.json");
    let mut all = BTreeMap::new();
    let mut first_100 = BTreeMap::new();
    for name in known_tasks() {
        let t = load_task(name, &shared()).unwrap();
        let docs: Vec<&Doc> = t.docs.iter().collect();
        all.extend(task_hashes(name, &docs));
        if *name == "mmlu" {
            for subject_docs in by_subject(&t).values() {
                let n = subject_docs.len().min(100);
                first_100.extend(task_hashes(name, &subject_docs[..n]));
            }
        } else {
            first_100.extend(task_hashes(name, &docs[..100]));
        }
    }
    let as_map = |v: &Value| -> BTreeMap<String, String> {
        v.as_object()
            .unwrap()
            .iter()
            .map(|(k, h)| (k.clone(), h.as_str().unwrap().to_string()))
            .collect()
    };
    assert_eq!(all.len(), 7 + 57);
    assert_eq!(all, as_map(&golden["all"]));
    assert_eq!(first_100, as_map(&golden["limit_100"]));
}

/// A document read from a Hugging Face schema has no known lm-eval form: no hash, so its
/// task reports none rather than a wrong one.
#[test]
fn hf_schema_documents_carry_no_task_hash() {
    let path = manifest().join("tests/fixtures/tasks/piqa_hf.jsonl");
    let t = load_task("piqa", &with_override("piqa", path)).unwrap();
    assert!(t.docs.iter().all(|d| d.lm_eval_hash.is_none()));
    let docs: Vec<&Doc> = t.docs.iter().collect();
    assert!(come_repro::eval::tasks::lm_hash::task_hashes("piqa", &docs).is_empty());
}
