//! Bad input through the command line: every mistake is a one-line error naming the file
//! (or argument) and the problem, a non-zero exit, and no partial output left behind.

mod common;
use common::bin::run;

fn fails_with(args: &[&str], wants: &[&str]) {
    let out = run(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} should fail");
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    for w in wants {
        assert!(err.contains(w), "{args:?}: `{w}` not in: {err}");
    }
}

#[test]
fn eval_rejects_unknown_tasks_and_bad_data() {
    let m = common::stories();
    let m = m.to_str().unwrap();
    fails_with(
        &["eval", "--model", m, "--tasks", "piqa,squad"],
        &["unknown task `squad`"],
    );
    fails_with(
        &["eval", "--model", m, "--tasks", "piqa", "--batch-size", "0"],
        &["--batch-size", "`auto` or a positive number"],
    );
    // A data directory without the task's files: the error names the missing file.
    let d = tempfile::tempdir().unwrap();
    let dd = d.path().to_str().unwrap();
    fails_with(
        &["eval", "--model", m, "--tasks", "boolq", "--data-dir", dd],
        &["boolq_validation.jsonl"],
    );
    // A malformed JSON line: file and line.
    std::fs::create_dir_all(d.path().join("boolq")).unwrap();
    let f = d.path().join("boolq/boolq_validation.jsonl");
    std::fs::write(&f, "{\"query\": \"Passage: a\\nQuestion: b?\", \"choices\": [\"no\", \"yes\"], \"gold\": 1}\n{not json\n").unwrap();
    fails_with(
        &["eval", "--model", m, "--tasks", "boolq", "--data-dir", dd],
        &["boolq_validation.jsonl:2"],
    );
    // A label out of range.
    std::fs::write(
        &f,
        "{\"query\": \"Passage: a\\nQuestion: b?\", \"choices\": [\"no\", \"yes\"], \"gold\": 7}\n",
    )
    .unwrap();
    fails_with(
        &["eval", "--model", m, "--tasks", "boolq", "--data-dir", dd],
        &["boolq_validation.jsonl:1"],
    );
    // An empty split.
    std::fs::write(&f, "").unwrap();
    fails_with(
        &["eval", "--model", m, "--tasks", "boolq", "--data-dir", dd],
        &["boolq_validation.jsonl", "empty"],
    );
    // Nothing partial is written when evaluation fails.
    let out = d.path().join("results.json");
    fails_with(
        &[
            "eval",
            "--model",
            m,
            "--tasks",
            "boolq",
            "--data-dir",
            dd,
            "--output",
            out.to_str().unwrap(),
        ],
        &["empty"],
    );
    assert!(!out.exists());
}

#[test]
fn prune_rejects_bad_targets_and_short_calibration() {
    let m = common::stories();
    let m = m.to_str().unwrap();
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("p");
    let o = out.to_str().unwrap();
    fails_with(
        &["prune", "--model", m, "--out", o, "--sparsity", "1.5"],
        &["`prune.sparsity` must be in (0, 1)"],
    );
    fails_with(
        &["prune", "--model", m, "--out", o, "--target-layers", "5"],
        &["target depth 5"],
    );
    // A 3-layer target with one extra option.
    let prune3 = |k: &'static str, v: String| -> Vec<String> {
        ["prune", "--model", m, "--out", o, "--target-layers", "3", k]
            .iter()
            .map(|x| x.to_string())
            .chain([v])
            .collect()
    };
    fails_with(
        &strs(&prune3("--method", "foo".into())),
        &["invalid value 'foo' for '--method", "come-p", "magnitude+"],
    );
    let short = d.path().join("short.txt");
    std::fs::write(&short, "just a few words\n").unwrap();
    fails_with(
        &strs(&prune3("--calib-source", short.display().to_string())),
        &["calibration text too short"],
    );
    fails_with(
        &strs(&prune3("--set", "laco_spam=3".into())),
        &["--set laco_spam=3", "did you mean `prune.laco_span`"],
    );
    assert!(!out.exists(), "a failed prune leaves no output directory");
}

#[test]
fn prune_distill_and_eval_take_any_grid_key_with_set() {
    let m = common::stories();
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("p");
    let args = [
        "prune",
        "--model",
        m.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--method",
        "laco",
        "--target-layers",
        "3",
        "--set",
        "laco_span=3",
        "--set",
        "prune.laco_threshold=0.5",
        "--calib-rows",
        "16",
        "--calib-seqlen",
        "64",
    ];
    let r = run(&args);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let come: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("come.json")).unwrap()).unwrap();
    let cfg = &come["report"]["config"];
    assert_eq!(
        (&cfg["laco_span"], &cfg["laco_threshold"]),
        (&3.into(), &0.5.into())
    );
    assert_eq!(cfg["calib"]["nrows"], 16);
    // A flag the method does not read would be silently unused: refused, nothing written.
    let unread = d.path().join("unread");
    fails_with(
        &[
            "prune",
            "--model",
            m.to_str().unwrap(),
            "--out",
            unread.to_str().unwrap(),
            "--method",
            "shortgpt",
            "--target-layers",
            "3",
            "--merge",
            "drop",
            "--set",
            "laco_span=3",
        ],
        &[
            "--method shortgpt does not read",
            "`merge` (--merge) is read by --method come",
            "`laco_span` (--set laco_span=...) is read by --method laco",
        ],
    );
    assert!(!unread.exists());
    // A recovery key only grids had: the optimiser's betas.
    let rec = d.path().join("r");
    let distill_fails = |extra: &[&str], wants: &[&str]| {
        let mut args = vec![
            "distill",
            "--teacher",
            m.to_str().unwrap(),
            "--model",
            out.to_str().unwrap(),
            "--out",
            rec.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        fails_with(&args, wants);
        assert!(!rec.exists());
    };
    distill_fails(&["--set", "betas=[0.9]"], &["--set betas=[0.9]"]);
    // A flag of another recovery method would be silently unused: refused.
    distill_fails(
        &["--method", "hierarchical", "--lora-lr", "1e-3"],
        &["--lora-lr is a setting of --method lora, not of hierarchical"],
    );
    // eval takes the grid's `eval` keys too: a corpus only grids named before.
    let json = d.path().join("e.json");
    let r = run(&[
        "eval",
        "--model",
        out.to_str().unwrap(),
        "--set",
        "ppl_val=true",
        "--set",
        "ppl_windows=1",
        "--seqlen",
        "64",
        "--output",
        json.to_str().unwrap(),
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let res: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(res["perplexity"]["wikitext2_val"]["windows"], 1, "{res}");
    fails_with(
        &[
            "eval",
            "--model",
            out.to_str().unwrap(),
            "--set",
            "ppl_vall=true",
        ],
        &["--set ppl_vall=true", "did you mean `eval.ppl_val`?"],
    );
}

#[test]
fn import_rejects_truncated_and_missing_files() {
    let d = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(come_repro::paths::smollm2_gguf()).unwrap();
    let cut = d.path().join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() / 3]).unwrap();
    let out = d.path().join("o");
    fails_with(
        &[
            "import",
            "gguf",
            cut.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        &["cut.gguf"],
    );
    assert!(!out.exists());
    fails_with(
        &[
            "import",
            "gguf",
            "/no/such.gguf",
            "--out",
            out.to_str().unwrap(),
        ],
        &["/no/such.gguf"],
    );
    fails_with(
        &[
            "import",
            "llama2c",
            "/no/model.bin",
            "--tokenizer",
            "/no/tok.bin",
            "--out",
            out.to_str().unwrap(),
        ],
        &["/no/model.bin"],
    );
}

#[test]
fn generate_works_and_rejects_a_missing_model() {
    let m = common::stories();
    let out = run(&[
        "generate",
        "--model",
        m.to_str().unwrap(),
        "--max-new-tokens",
        "12",
    ]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("Once upon a time"));
    fails_with(
        &["generate", "--model", "/no/model/dir", "--prompt", "x"],
        &["/no/model/dir"],
    );
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn bench_latency_prints_the_speedup_table() {
    let m = common::stories();
    let m = m.to_str().unwrap();
    let args = [
        "bench",
        "latency",
        "--model",
        m,
        "--model",
        m,
        "--protocol",
        "short",
        "--prefill-len",
        "16",
        "--gen-new",
        "4",
        "--prefill-iters",
        "1",
    ];
    let out = run(&args);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(text.matches("| 5 | 0.3 |").count(), 2, "{text}");
    assert!(text.contains("1.00x"), "{text}");
    assert!(
        text.starts_with("prompt=16,new=4,repeats=1 (scaled down"),
        "{text}"
    );
    // SLEB's protocol, scaled down: the sizes used are printed with it.
    let out = run(&[
        "bench",
        "latency",
        "--model",
        m,
        "--prefill-len",
        "32",
        "--prefill-iters",
        "2",
        "--gen-batch",
        "3",
        "--gen-prompt",
        "8",
        "--gen-new",
        "4",
        "--gen-iters",
        "2",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.starts_with("protocol=sleb,prefill=1x32x2,generate=3x8+4x2 (scaled down"),
        "{text}"
    );
    // Longer than the model's positions: refused, under either protocol (the sleb
    // default's 2048-token prompt too).
    fails_with(
        &[
            "bench",
            "latency",
            "--model",
            m,
            "--protocol",
            "short",
            "--prefill-len",
            "600",
        ],
        &["max_position_embeddings (512)"],
    );
    fails_with(
        &["bench", "latency", "--model", m],
        &["2048 positions exceed max_position_embeddings (512)"],
    );
}

/// `eval.latency = true` (the default protocol, sleb): every run records prefill and
/// generation tokens/s (the prefill prompt fitted to stories260K's 512 positions), and
/// the main table gains speed-up columns against the dense run, 1.00 on the dense row
/// itself, with the protocol and its sizes in the caption.
#[test]
fn grid_latency_gives_speedup_columns() {
    let d = tempfile::tempdir().unwrap();
    let toml = format!(
        r#"dense = true
[base]
model = "{}"
[base.prune]
method = "come"
target_layers = 3
calib = {{ nrows = 16, seqlen = 64, max_sequences = 2 }}
[base.eval]
tasks = ["piqa"]
limit = 2
ppl_seqlen = 64
ppl_windows = 1
latency = true
"#,
        common::stories().display()
    );
    let g = d.path().join("lat.toml");
    std::fs::write(&g, toml).unwrap();
    let g = g.to_str().unwrap();
    common::bin::ok(common::bin::run_in(d.path(), &["grid", g]));
    let s = come_repro::track::Store::open(d.path().join("results/come.sqlite")).unwrap();
    let runs = s.runs(&Default::default()).unwrap();
    assert_eq!(runs.len(), 2);
    for r in &runs {
        let m = s.metrics(r.id).unwrap();
        for name in ["prefill_tokens_per_s", "decode_tokens_per_s"] {
            let x = m.iter().find(|x| x.name == name).expect(name);
            assert!(x.value > 0.0 && x.value.is_finite(), "{name} {}", x.value);
            assert_eq!(
                x.context,
                "protocol=sleb,prefill=1x512x50,generate=64x64+128x10"
            );
        }
        // The scoring profile is stored per task, the model load per run.
        let get = |task: &str, name: &str| {
            m.iter()
                .find(|x| x.task == task && x.name == name)
                .unwrap_or_else(|| panic!("{task}/{name} missing"))
                .value
        };
        let fwd = get("piqa", "tokens_forwarded");
        assert!(fwd > 0.0 && get("piqa", "tokens_padded") >= fwd);
        assert!(get("piqa", "forwards") >= 1.0 && get("piqa", "head_positions") > 0.0);
        assert!(get("piqa", "profile_forward_seconds") > 0.0);
        assert!(get("", "eval_load_seconds") > 0.0);
    }
    let out = d.path().join("tables");
    common::bin::ok(common::bin::run_in(
        d.path(),
        &["tables", "--grid", g, "--out", out.to_str().unwrap()],
    ));
    let md = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            let n = p.file_name().unwrap().to_string_lossy().to_string();
            n.starts_with("main_") && n.ends_with(".md")
        })
        .expect("a main table");
    let text = std::fs::read_to_string(md).unwrap();
    assert!(
        text.contains("Prefill ×") && text.contains("Decode ×"),
        "{text}"
    );
    let dense = text.lines().find(|l| l.starts_with("| Dense")).unwrap();
    assert!(dense.trim_end().ends_with("| 1.00 | 1.00 |"), "{dense}");
    assert!(
        text.contains("SLEB's latency protocol")
            && text.contains("protocol=sleb,prefill=1x512x50,generate=64x64+128x10"),
        "{text}"
    );
}
