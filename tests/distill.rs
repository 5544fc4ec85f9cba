//! Recovery through the command line on stories260K: sp and mp give the same weights, a
//! killed run resumes to the same result, and bad input is refused with a clear error and
//! nothing left where a later run would trust it.

mod common;

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_come-repro");

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap()
}

fn ok(args: &[&str]) -> String {
    let out = run(args);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{args:?} failed: {err}");
    err
}

fn fails_with(args: &[&str], wants: &[&str]) -> String {
    let out = run(args);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "{args:?} should fail");
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    for w in wants {
        assert!(err.contains(w), "{args:?}: `{w}` not in: {err}");
    }
    err
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// stories260K pruned 5 -> 3 layers by `method` (calibration kept small).
fn pruned(dir: &Path, method: &str) -> PathBuf {
    let out = dir.join(format!("pruned-{method}"));
    let teacher = common::stories();
    ok(&[
        "prune",
        "--model",
        s(&teacher),
        "--method",
        method,
        "--target-layers",
        "3",
        "--calib-rows",
        "64",
        "--calib-seqlen",
        "128",
        "--calib-seqs",
        "2",
        "--out",
        s(&out),
        "--threads",
        "1",
    ]);
    out
}

/// Distillation arguments small enough for CI: 2 units of 8 steps of 64 tokens.
fn distill_args<'a>(
    teacher: &'a str,
    model: &'a str,
    out: &'a str,
    extra: &[&'a str],
) -> Vec<&'a str> {
    let mut a = vec![
        "distill",
        "--teacher",
        teacher,
        "--model",
        model,
        "--out",
        out,
        "--tokens",
        "512",
        "--seqlen",
        "64",
        "--val-tokens",
        "128",
        "--lr",
        "1e-3",
        "--threads",
        "1",
    ];
    a.extend_from_slice(extra);
    a
}

fn weights_sha(dir: &Path) -> String {
    hex::encode(Sha256::digest(
        std::fs::read(dir.join("model.safetensors")).unwrap(),
    ))
}

fn record(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("distill.json")).unwrap()).unwrap()
}

#[test]
fn sp_and_mp_train_identical_weights() {
    let d = tempfile::tempdir().unwrap();
    let student = pruned(d.path(), "come");
    let teacher = common::stories();
    let (sp, mp) = (d.path().join("sp"), d.path().join("mp"));
    ok(&distill_args(
        s(&teacher),
        s(&student),
        s(&sp),
        &["--workers", "1"],
    ));
    ok(&distill_args(
        s(&teacher),
        s(&student),
        s(&mp),
        &["--workers", "2"],
    ));
    assert_eq!(
        weights_sha(&sp),
        weights_sha(&mp),
        "sp and mp weights differ"
    );
    let rec = record(&sp);
    let units = rec["units"].as_array().unwrap();
    assert!(!units.is_empty());
    for u in units {
        let losses: Vec<f64> = u["train_loss"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        assert_eq!(losses.len(), 8, "512 tokens / 64 per step");
        assert!(
            losses.last() < losses.first(),
            "loss does not fall: {losses:?}"
        );
        assert!(u["best_val_loss"].as_f64().is_some());
    }
    assert_ne!(weights_sha(&sp), weights_sha(&student), "nothing trained");
    // Only merged layers change: the recovered model has the pruned one's shape and
    // loads and evaluates like any checkpoint.
    ok(&[
        "eval",
        "--model",
        s(&sp),
        "--ppl",
        "wikitext2",
        "--seqlen",
        "128",
        "--max-windows",
        "2",
        "--threads",
        "1",
    ]);
}

/// `--inputs student`: the first merged layer trains exactly as with teacher inputs (the
/// layers before it are the teacher's), the next one on the recovered student's states.
#[test]
fn student_inputs_train_the_later_layers_on_the_students_states() {
    let d = tempfile::tempdir().unwrap();
    let student = pruned(d.path(), "come");
    let teacher = common::stories();
    let (by_teacher, by_student) = (d.path().join("t"), d.path().join("s"));
    ok(&distill_args(s(&teacher), s(&student), s(&by_teacher), &[]));
    let log = ok(&distill_args(
        s(&teacher),
        s(&student),
        s(&by_student),
        &["--inputs", "student"],
    ));
    assert!(log.contains("student inputs"), "{log}");
    let (a, b) = (record(&by_teacher), record(&by_student));
    assert_eq!(b["config"]["inputs"], "student");
    assert!(
        a["config"].get("inputs").is_none(),
        "the default is left out"
    );
    let losses = |r: &serde_json::Value, k: usize| r["units"][k]["train_loss"].clone();
    let units = a["units"].as_array().unwrap().len();
    assert!(
        units >= 2,
        "stories260K's CoMe model should have two merged layers"
    );
    let first = a["units"][0]["originals"][0].as_u64().unwrap();
    // Every layer before the first unit is a teacher layer (CoMe keeps them as they are).
    let corr = a["correspondence"].as_array().unwrap();
    let before: Vec<u64> = corr
        .iter()
        .take(a["units"][0]["layer"].as_u64().unwrap() as usize)
        .flat_map(|g| g.as_array().unwrap().iter().map(|x| x.as_u64().unwrap()))
        .collect();
    assert_eq!(before, (0..first).collect::<Vec<_>>());
    assert_eq!(losses(&a, 0), losses(&b, 0));
    for k in 1..units {
        assert_ne!(losses(&a, k), losses(&b, k), "unit {k}");
    }
    assert_ne!(weights_sha(&by_teacher), weights_sha(&by_student));
    // Layers train one after another: several workers are refused, before any work.
    let out = d.path().join("refused");
    fails_with(
        &distill_args(
            s(&teacher),
            s(&student),
            s(&out),
            &["--inputs", "student", "--workers", "2"],
        ),
        &["inputs = student", "cannot use 2 workers"],
    );
    assert!(!out.exists());
}

#[test]
fn drop_methods_attach_removed_layers_before() {
    let d = tempfile::tempdir().unwrap();
    let student = pruned(d.path(), "shortgpt");
    let teacher = common::stories();
    let out = d.path().join("rec");
    ok(&distill_args(
        s(&teacher),
        s(&student),
        s(&out),
        &["--loss", "mse,cosine"],
    ));
    let rec = record(&out);
    let spans: Vec<(u64, u64)> = rec["units"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            (
                u["originals"][0].as_u64().unwrap(),
                u["originals"][1].as_u64().unwrap(),
            )
        })
        .collect();
    let removed: u64 = spans.iter().map(|(a, b)| b - a).sum();
    assert_eq!(removed, 2, "the two removed layers are covered: {spans:?}");
    fails_with(
        &distill_args(
            s(&teacher),
            s(&student),
            s(&d.path().join("none")),
            &["--attach", "none"],
        ),
        &["nothing to distil"],
    );
    assert!(!d.path().join("none").exists());
}

#[test]
fn lora_and_kd_recover_and_merge() {
    let d = tempfile::tempdir().unwrap();
    let student = pruned(d.path(), "come");
    let teacher = common::stories();
    for (m, extra) in [
        ("lora", vec![]),
        (
            "hierarchical+kd",
            vec!["--kd-tokens", "256", "--kl-positions", "16"],
        ),
    ] {
        let out = d.path().join(m.replace('+', "_"));
        let mut a = distill_args(s(&teacher), s(&student), s(&out), &["--method", m]);
        a.extend(extra);
        ok(&a);
        let rec = record(&out);
        let last = rec["units"].as_array().unwrap().last().unwrap().clone();
        assert!(
            last["layer"].is_null(),
            "{m}: the last unit is the whole model"
        );
        // A merged LoRA checkpoint has no adapter tensors: same names as the student.
        let names = |p: &Path| {
            let b = std::fs::read(p.join("model.safetensors")).unwrap();
            let st = safetensors::SafeTensors::deserialize(&b).unwrap();
            let mut n: Vec<String> = st.names().into_iter().cloned().collect();
            n.sort();
            n
        };
        assert_eq!(names(&out), names(&student), "{m}");
    }
}

#[test]
fn killed_run_resumes_to_the_same_weights() {
    killed_and_resumed(&["--tokens", "4096"]);
}

/// Student inputs: a resumed unit's weights feed the next unit's inputs as if it had
/// just trained.
#[test]
fn killed_progressive_run_resumes_to_the_same_weights() {
    killed_and_resumed(&["--tokens", "4096", "--inputs", "student"]);
}

fn killed_and_resumed(extra: &[&str]) {
    let d = tempfile::tempdir().unwrap();
    let student = pruned(d.path(), "come");
    let teacher = common::stories();
    let (full, resumed) = (d.path().join("full"), d.path().join("resumed"));
    ok(&distill_args(s(&teacher), s(&student), s(&full), extra));
    let args = distill_args(s(&teacher), s(&student), s(&resumed), extra);
    let mut child = Command::new(BIN)
        .args(&args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let partial = d.path().join("resumed.partial");
    let t0 = std::time::Instant::now();
    loop {
        let finished = std::fs::read_dir(&partial)
            .map(|r| {
                r.filter_map(|e| e.ok())
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
                    .count()
            })
            .unwrap_or(0);
        if finished >= 1 || t0.elapsed().as_secs() > 120 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(!resumed.exists(), "a killed run must leave no output");
    let err = ok(&args);
    assert!(err.contains("finished earlier, resumed"), "{err}");
    assert_eq!(weights_sha(&full), weights_sha(&resumed));
    assert!(
        !partial.exists(),
        "the partial directory is removed once the output is complete"
    );
}

#[test]
fn bad_input_is_refused_clearly() {
    let d = tempfile::tempdir().unwrap();
    let student = pruned(d.path(), "come");
    let teacher = common::stories();
    let out = d.path().join("out");
    // A checkpoint without its correspondence.
    fails_with(
        &distill_args(s(&teacher), s(&teacher), s(&out), &[]),
        &["no come.json", "correspondence"],
    );
    // A teacher of another shape.
    let other = common::fixture("tiny-llama3");
    fails_with(
        &distill_args(s(&other), s(&student), s(&out), &[]),
        &["do not match"],
    );
    // A loss that diverges: named layer and step, nothing saved.
    fails_with(
        &distill_args(
            s(&teacher),
            s(&student),
            s(&out),
            &["--lr", "1e30", "--min-lr", "0", "--clip", "0"],
        ),
        &["layer", "step", "nothing was saved"],
    );
    assert!(!out.exists());
    // A zero budget, an unknown loss.
    fails_with(
        &distill_args(s(&teacher), s(&student), s(&out), &["--tokens", "0"]),
        &["zero token budget"],
    );
    fails_with(
        &distill_args(s(&teacher), s(&student), s(&out), &["--loss", "l1"]),
        &["unknown loss `l1`"],
    );
    assert!(!out.exists());
}
