//! Perplexity corpora: C4 validation built by GPTQ's rule (first documents' `text` joined
//! with one space, 256 windows), read from gzipped or plain JSON lines, with located errors.

mod common;

use come_repro::eval::ppl_corpus::{c4_text, Corpus, C4_WINDOWS};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

const DOCS: [&str; 3] = [
    r#"{"text": "Beginners BBQ Class Taking Place in Missoula!\nDo you want to get better?", "timestamp": "2019-04-25T12:57:54Z", "url": "https://example.org/a"}"#,
    r#"{"text": "Discussion in 'Mac OS X Lion (10.7)' started by axboi87", "timestamp": "2019-04-21T10:07:13Z", "url": "https://example.org/b"}"#,
    r#"{"text": "Foil plaid lycra and spandex shortall.", "timestamp": "2019-04-22T08:00:00Z", "url": "https://example.org/c"}"#,
];

fn write_jsonl(dir: &Path, name: &str, lines: &[&str], gz: bool) -> PathBuf {
    let p = dir.join(name);
    let body = lines.join("\n") + "\n";
    if gz {
        let f = std::fs::File::create(&p).unwrap();
        let mut e = flate2::write::GzEncoder::new(f, flate2::Compression::default());
        e.write_all(body.as_bytes()).unwrap();
        e.finish().unwrap();
    } else {
        std::fs::write(&p, body).unwrap();
    }
    p
}

/// `come-repro eval` on stories260K (one thread) with `args`; the results JSON it wrote.
fn eval_json(dir: &Path, args: &[&str]) -> serde_json::Value {
    let model = common::stories();
    let out = dir.join("out.json");
    let st = Command::new(env!("CARGO_BIN_EXE_come-repro"))
        .args(["eval", "--model", model.to_str().unwrap(), "--threads", "1"])
        .args(args)
        .args(["--output", out.to_str().unwrap()])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&st.stderr);
    assert!(st.status.success(), "{args:?}: {err}");
    serde_json::from_str(&std::fs::read_to_string(out).unwrap()).unwrap()
}

#[test]
fn c4_stream_joins_the_first_documents_with_one_space() {
    let d = tempfile::tempdir().unwrap();
    // Written out by hand: the first two texts, one space between them.
    let want = "Beginners BBQ Class Taking Place in Missoula!\nDo you want to get better? \
                Discussion in 'Mac OS X Lion (10.7)' started by axboi87";
    for gz in [true, false] {
        let p = write_jsonl(d.path(), &format!("c4_{gz}.json"), &DOCS, gz);
        assert_eq!(c4_text(&p, 2).unwrap(), want, "gz={gz}");
    }
}

#[test]
fn c4_errors_name_the_file_and_line() {
    let d = tempfile::tempdir().unwrap();
    let short = write_jsonl(d.path(), "short.json.gz", &DOCS, true);
    let e = c4_text(&short, 1100).unwrap_err().to_string();
    assert!(
        e.contains("short.json.gz") && e.contains("3 documents") && e.contains("1100"),
        "{e}"
    );

    let bad = write_jsonl(
        d.path(),
        "bad.jsonl",
        &[DOCS[0], "{not json", DOCS[2]],
        false,
    );
    let e = c4_text(&bad, 3).unwrap_err().to_string();
    assert!(e.contains("bad.jsonl:2") && e.contains("JSON"), "{e}");

    let no_text = write_jsonl(d.path(), "nt.jsonl", &[DOCS[0], r#"{"url": "x"}"#], false);
    let e = c4_text(&no_text, 2).unwrap_err().to_string();
    assert!(
        e.contains("nt.jsonl:2") && e.contains("no `text` field"),
        "{e}"
    );

    let e = c4_text(&d.path().join("absent.json.gz"), 2)
        .unwrap_err()
        .to_string();
    assert!(e.contains("absent.json.gz"), "{e}");

    // A gzip stream cut short: an error, not a silently shorter corpus.
    let full = write_jsonl(d.path(), "full.json.gz", &DOCS, true);
    let bytes = std::fs::read(&full).unwrap();
    let cut = d.path().join("cut.json.gz");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    assert!(c4_text(&cut, 3).is_err());
}

#[test]
fn corpus_specs() {
    assert!(matches!(Corpus::parse("wikitext2"), Corpus::Wikitext2(_)));
    assert_eq!(Corpus::parse("wikitext2").name(), "wikitext2");
    assert_eq!(
        Corpus::parse("c4=/x/y.json.gz"),
        Corpus::C4("/x/y.json.gz".into())
    );
    assert_eq!(Corpus::parse("c4").name(), "c4");
    assert_eq!(Corpus::parse("c4").default_windows(), Some(C4_WINDOWS));
    assert_eq!(Corpus::parse("notes/my_text.txt").name(), "my_text");
    assert_eq!(Corpus::parse("notes/my_text.txt").default_windows(), None);
}

/// `eval --ppl c4=FILE` scores the same stream as `--ppl TEXT` holding the joined text
/// written out by hand, and writes it under `perplexity.c4`.
#[test]
fn eval_c4_equals_the_hand_joined_text() {
    let d = tempfile::tempdir().unwrap();
    // 1100 documents: the three above, repeated.
    let lines: Vec<&str> = (0..1100).map(|i| DOCS[i % 3]).collect();
    let c4 = write_jsonl(d.path(), "c4-validation.json.gz", &lines, true);
    let texts: Vec<String> = lines
        .iter()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["text"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let plain = d.path().join("joined.txt");
    std::fs::write(&plain, texts.join(" ")).unwrap();
    let run = |extra: &[&str]| {
        let mut args = vec!["--seqlen", "64"];
        args.extend_from_slice(extra);
        eval_json(d.path(), &args)
    };
    let c4_spec = format!("c4={}", c4.display());
    let plain_s = plain.to_str().unwrap();
    let a = run(&["--ppl", &c4_spec]);
    let both = format!("{plain_s},wikitext2");
    let b = run(&["--ppl", &both, "--max-windows", "300"]);
    let c = run(&["--ppl", plain_s, "--max-windows", "256"]);
    let pa = &a["perplexity"]["c4"];
    let (pb, pc) = (&b["perplexity"]["joined"], &c["perplexity"]["joined"]);
    // GPTQ's window count by default, over the same token stream as the hand-joined text.
    assert_eq!(pa["windows"], C4_WINDOWS, "{a}");
    assert_eq!(pa["stream_tokens"], pb["stream_tokens"]);
    assert_eq!(pb["windows"], 300);
    assert_eq!((&pa["ppl"], &pa["nll"]), (&pc["ppl"], &pc["nll"]));
    assert_ne!(pa["nll"], pb["nll"]);
    assert_eq!(b["perplexity"]["wikitext2"]["windows"], 300);
}

#[test]
fn missing_c4_is_a_clear_error_before_loading_the_model() {
    let out = Command::new(env!("CARGO_BIN_EXE_come-repro"))
        .args([
            "eval",
            "--model",
            "/nonexistent/model",
            "--ppl",
            "c4=/nonexistent/c4.json.gz",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("/nonexistent/c4.json.gz") && err.contains("COME_C4"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

/// The perplexity stream is tokenised with the tokenizer's default special tokens, as
/// GPTQ-style code does; stories260K's tokenizer adds BOS, so this is where it shows.
/// Golden: scripts/golden/hf_ppl.py (transformers) on the same imported checkpoint.
#[test]
fn stream_with_default_special_tokens_matches_transformers() {
    let golden: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(common::golden("stories260k_wikitext2_hf_s256_w8.json")).unwrap(),
    )
    .unwrap();
    let d = tempfile::tempdir().unwrap();
    let run = |extra: &[&str]| {
        let mut args = vec![
            "--ppl",
            "wikitext2",
            "--seqlen",
            "256",
            "--max-windows",
            "8",
        ];
        args.extend_from_slice(extra);
        eval_json(d.path(), &args)["perplexity"]["wikitext2"].clone()
    };
    let ours = run(&[]);
    let want = golden["ppl"].as_f64().unwrap();
    let got = ours["ppl"].as_f64().unwrap();
    assert!(
        (got - want).abs() / want < 1e-5,
        "ours {got} vs transformers {want}"
    );
    assert_eq!(ours["stream_tokens"], golden["n_tokens"]);
    // Without special tokens the stream loses its BOS and every window shifts by one.
    let plain = run(&["--no-special-tokens"]);
    assert_eq!(
        plain["stream_tokens"].as_u64().unwrap() + 1,
        golden["n_tokens"].as_u64().unwrap()
    );
    assert!((plain["ppl"].as_f64().unwrap() - want).abs() > 1e-3);
}
