//! Recovery's training and validation text: the held-out split (`validation = held_out`)
//! keeps the same rows for validation at every budget and never trains on them, refuses
//! text whose held-out rows repeat training rows, and is the text the `wikitext2_val`
//! perplexity measures; the out-of-domain corpus is built from the tasks' gold answers.

mod common;

use come_repro::distill::config::{RecoveryConfig, Validation};
use come_repro::distill::data::{self, HELD_OUT_ROWS};
use come_repro::eval::ppl_corpus::{tasks_ood_text, Corpus};
use come_repro::model::tokenizer::Tokenizer;
use std::path::Path;

/// 1000 rows: the first 600 about cats, the held-out 400 about dogs.
fn write_rows(dir: &Path, rows: &[String]) -> std::path::PathBuf {
    let p = dir.join("text.txt");
    std::fs::write(&p, rows.join("\n\n")).unwrap();
    p
}

fn cats_and_dogs() -> Vec<String> {
    (0..1000)
        .map(|i| {
            if i < 1000 - HELD_OUT_ROWS {
                format!("the cat sat on the mat and looked at row {i}.")
            } else {
                format!("a dog ran in the park and barked at row {i}.")
            }
        })
        .collect()
}

fn cfg(path: &Path, validation: Validation, tokens: usize) -> RecoveryConfig {
    RecoveryConfig {
        data: Some(path.to_path_buf()),
        validation,
        tokens,
        seqlen: 32,
        val_tokens: 64,
        ..Default::default()
    }
}

fn decode(tok: &Tokenizer, seqs: &[Vec<i64>]) -> String {
    seqs.iter()
        .map(|s| {
            let ids: Vec<u32> = s.iter().map(|&t| t as u32).collect();
            tok.decode(&ids, true).unwrap()
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn held_out_rows_validate_at_every_budget_and_never_train() {
    let d = tempfile::tempdir().unwrap();
    let tok = Tokenizer::from_dir(&common::stories()).unwrap();
    let path = write_rows(d.path(), &cats_and_dogs());
    let small = data::load(&tok, &cfg(&path, Validation::HeldOut, 256), None, 256).unwrap();
    // A budget larger than the training rows hold: cycled, still without the held-out rows.
    let big = 400_000;
    let large = data::load(&tok, &cfg(&path, Validation::HeldOut, big), None, big).unwrap();
    assert_eq!(
        small.val, large.val,
        "the validation text moved with the budget"
    );
    assert_eq!(small.val.len(), 2);
    for set in [&small, &large] {
        let (train, val) = (decode(&tok, &set.train), decode(&tok, &set.val));
        assert!(train.contains("cat") && !train.contains("dog"), "{train}");
        assert!(val.contains("dog") && !val.contains("cat"), "{val}");
    }
    assert!(
        large.record.note.contains("cycled"),
        "{}",
        large.record.note
    );
    assert!(large.record.note.contains("held out at every budget"));

    // The old tail split takes validation from right after the training text: it moves
    // with the budget, and a larger budget trains on a smaller one's validation text.
    let a = data::load(&tok, &cfg(&path, Validation::Tail, 256), None, 256).unwrap();
    let b = data::load(&tok, &cfg(&path, Validation::Tail, 2048), None, 2048).unwrap();
    assert_ne!(a.val, b.val);
    assert!(b.train.iter().any(|s| a.val.contains(s)));
}

#[test]
fn held_out_text_is_the_wikitext2_val_corpus() {
    let d = tempfile::tempdir().unwrap();
    let rows = cats_and_dogs();
    let path = write_rows(d.path(), &rows);
    let text = Corpus::HeldOut(path.clone()).text().unwrap();
    assert_eq!(text, rows[1000 - HELD_OUT_ROWS..].join("\n\n"));
    assert_eq!(Corpus::HeldOut(path).recorded_as().1, "ppl_wikitext2_val");
    // On the shared data: the last rows of the WikiText-2 train prefix.
    let shared = Corpus::parse("wikitext2_val");
    assert!(shared
        .path()
        .ends_with("calibration/wikitext2_train_5k.txt"));
    let t = shared.text().unwrap();
    assert_eq!(t.split("\n\n").count(), HELD_OUT_ROWS);
}

#[test]
fn held_out_refuses_overlap_and_short_text() {
    let d = tempfile::tempdir().unwrap();
    let tok = Tokenizer::from_dir(&common::stories()).unwrap();
    // A held-out row that the training rows repeat (long enough not to be a heading).
    let mut rows = cats_and_dogs();
    rows[950] = rows[10].clone();
    // Short rows (headings) may repeat.
    rows[20] = " = = History = = ".into();
    rows[960] = " = = History = = ".into();
    let path = write_rows(d.path(), &rows);
    let e = data::load(&tok, &cfg(&path, Validation::HeldOut, 256), None, 256)
        .err()
        .expect("an overlapping held-out slice must be refused")
        .to_string();
    assert!(e.contains("text.txt"), "{e}");
    assert!(e.contains("overlaps the training text"), "{e}");
    assert!(e.contains("1 of its rows (text row 951 first)"), "{e}");
    // Too few rows to hold any out.
    let path = write_rows(d.path(), &cats_and_dogs()[..700]);
    let e = data::load(&tok, &cfg(&path, Validation::HeldOut, 256), None, 256)
        .err()
        .expect("700 rows cannot give 400 held out and 400 to train")
        .to_string();
    assert!(
        e.contains("700 text rows") && e.contains("keeps the last 400"),
        "{e}"
    );
}

#[test]
fn tasks_ood_alternates_hellaswag_and_piqa_gold_answers() {
    use come_repro::eval::tasks::{load_task, TaskSource};
    let (text, files) = tasks_ood_text(&come_repro::paths::data_dir()).unwrap();
    assert!(files
        .iter()
        .any(|f| f.ends_with("hellaswag/hellaswag_val_full.txt")));
    assert!(files.iter().any(|f| f.ends_with("piqa/valid.jsonl")));
    let src = TaskSource::default();
    let gold = |t: &str, i: usize| {
        let doc = &load_task(t, &src).unwrap().docs[i];
        let r = &doc.requests[doc.gold];
        format!("{}{}", r.context, r.continuation)
    };
    let parts: Vec<&str> = text.split("\n\n").collect();
    assert_eq!(parts[0], gold("hellaswag", 0));
    assert_eq!(parts[1], gold("piqa", 0));
    assert_eq!(parts[2], gold("hellaswag", 1));
    assert!(parts[1].starts_with("Question: "));
    assert_eq!(
        Corpus::parse("tasks_ood").recorded_as(),
        ("tasks_ood".to_string(), "ppl_tasks_ood".to_string())
    );
}
