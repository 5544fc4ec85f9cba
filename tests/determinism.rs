//! Determinism on CPU: the same prune + eval run twice, in separate processes, gives a
//! bitwise-identical checkpoint (sha256 of model.safetensors), the same come.json apart
//! from its timings, and identical metrics. The settings that keep it are fixed here as
//! the README states them: f32, a fixed thread count.

use serde_json::Value;
use sha2::{Digest, Sha256};
use std::path::Path;
use std::process::Command;

mod common;

const BIN: &str = env!("CARGO_BIN_EXE_come-repro");

fn run(args: &[&str]) {
    let out = Command::new(BIN)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn sha256(p: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(p).unwrap()))
}

fn json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// Drop what measures the machine rather than the result: wall times, memory, dates.
fn strip_timings(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|k, _| {
                !(k.contains("seconds")
                    || k.contains("rss")
                    || k.ends_with("_per_s")
                    || k == "date"
                    || k == "source_model")
            });
            m.values_mut().for_each(strip_timings);
        }
        Value::Array(a) => a.iter_mut().for_each(strip_timings),
        _ => {}
    }
}

/// Prune stories260K with CoMe and evaluate it; returns (weights sha256, come.json,
/// eval results) with timings removed.
fn prune_and_eval(dir: &Path, method: &str, threads: &str) -> (String, Value, Value) {
    let m = common::stories();
    let out = dir.join(format!("{method}-{threads}"));
    let res = dir.join(format!("{method}-{threads}.json"));
    run(&[
        "prune",
        "--model",
        m.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--method",
        method,
        "--target-layers",
        "3",
        "--calib-rows",
        "16",
        "--calib-seqlen",
        "128",
        "--calib-seqs",
        "4",
        "--threads",
        threads,
    ]);
    run(&[
        "eval",
        "--model",
        out.to_str().unwrap(),
        "--tasks",
        "piqa,boolq",
        "--limit",
        "12",
        "--ppl",
        "wikitext2",
        "--seqlen",
        "128",
        "--max-windows",
        "4",
        "--threads",
        threads,
        "--output",
        res.to_str().unwrap(),
    ]);
    let mut come = json(&out.join("come.json"));
    strip_timings(&mut come);
    let mut results = json(&res);
    strip_timings(&mut results);
    let results = results.get("results").cloned().unwrap_or(results);
    (sha256(&out.join("model.safetensors")), come, results)
}

#[test]
fn same_prune_and_eval_twice_is_bitwise_identical() {
    for method in ["come", "come-p"] {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let first = prune_and_eval(a.path(), method, "2");
        let second = prune_and_eval(b.path(), method, "2");
        assert_eq!(first.0, second.0, "{method}: model.safetensors differs");
        assert_eq!(first.1, second.1, "{method}: come.json differs");
        assert_eq!(first.2, second.2, "{method}: metrics differ");
        assert!(first.2.get("piqa").is_some(), "{}", first.2);
    }
}
