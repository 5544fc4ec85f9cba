//! The GPU check's own machinery on the CPU, so it does not rot between GPU runs: a
//! bundle's inputs are prepared (a few documents per task) and the whole check runs on
//! it at the quick sizes. Every item must run and the accuracy goals hold (device = CPU
//! here, against the CPU reference with other batch shapes).

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_come-repro");

#[test]
fn prepared_bundle_passes_the_quick_check_on_cpu() {
    let d = tempfile::tempdir().unwrap();
    let bundle = d.path().join("bundle");
    let out = Command::new(BIN)
        .args([
            "gpu-check",
            "prepare",
            "--docs",
            "6",
            "--torch-version",
            "test",
        ])
        .args(["--tch-version", "test", "--bundle"])
        .arg(&bundle)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in [
        "BUILD.json",
        "tasks.json",
        "tokenizer/tokenizer.json",
        "stories/stories260K.bin",
        "wikitext2.txt",
        "reference/smol.json",
        "reference/stories.json",
    ] {
        assert!(bundle.join(f).is_file(), "{f} missing");
    }
    let results = d.path().join("out");
    let out = Command::new(BIN)
        .args([
            "gpu-check",
            "run",
            "--device",
            "cpu",
            "--quick",
            "--threads",
            "2",
            "--bundle",
        ])
        .arg(&bundle)
        .arg("--out")
        .arg(&results)
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{log}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(results.join("summary.json")).unwrap())
            .unwrap();
    let items = s["items"].as_object().unwrap();
    assert_eq!(items.len(), 9, "{s}");
    for (name, v) in items {
        assert_eq!(v["ok"], true, "{name}: {v}");
    }
    assert_eq!(s["goals_met"]["all"], true, "{}", s["goals_met"]);
    // The scale items measured something.
    assert!(
        items["prune-7b"]["result"]["layer_passes"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert!(
        items["latency-7b"]["result"]["models"][1]["generate_speedup"]
            .as_f64()
            .unwrap()
            > 0.0
    );
}
