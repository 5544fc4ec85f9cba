//! Every size, count and setting that comes from a file or the command line is checked
//! before anything is sized or run from it: a clear error naming the key, never an abort,
//! a NaN result, or an hour of unintended work.

mod common;
use common::bin::run;

use come_repro::model::config::ModelConfig;
use serde_json::{json, Value};
use std::path::Path;

/// Fails cleanly (exit 1 or clap's 2, no panic, no signal) with every `wants` in stderr.
fn fails_with(args: &[&str], wants: &[&str]) {
    let out = run(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        matches!(out.status.code(), Some(1 | 2)),
        "{args:?}: status {:?}, stderr: {err}",
        out.status
    );
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    for w in wants {
        assert!(err.contains(w), "{args:?}: `{w}` not in: {err}");
    }
}

fn stories_config() -> Value {
    let p = common::stories().join("config.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// The stories260K config with `patch` merged in, parsed.
fn parse_patched(patch: Value) -> Result<ModelConfig, String> {
    let mut c = stories_config();
    for (k, v) in patch.as_object().unwrap() {
        c[k] = v.clone();
    }
    ModelConfig::from_json(c, Path::new("config.json")).map_err(|e| e.to_string())
}

#[test]
fn config_values_out_of_range_name_the_key() {
    let cases = [
        (
            json!({"num_hidden_layers": 1_000_000_000}),
            "`num_hidden_layers`",
        ),
        (json!({"num_hidden_layers": 0}), "`num_hidden_layers`"),
        (json!({"hidden_size": 1e12}), "`hidden_size`"),
        (json!({"hidden_size": "64"}), "`hidden_size`"),
        (json!({"intermediate_size": -1}), "`intermediate_size`"),
        (json!({"vocab_size": 1u64 << 40}), "`vocab_size`"),
        (json!({"num_key_value_heads": 0}), "`num_key_value_heads`"),
        (
            json!({"num_key_value_heads": 3}),
            "multiple of num_key_value_heads",
        ),
        (json!({"head_dim": 7}), "even"),
        (
            json!({"max_position_embeddings": 0}),
            "`max_position_embeddings`",
        ),
        (
            json!({"max_position_embeddings": -5}),
            "`max_position_embeddings`",
        ),
        (
            json!({"max_position_embeddings": null}),
            "`max_position_embeddings`",
        ),
        (json!({"rms_norm_eps": null}), "`rms_norm_eps`"),
        (json!({"rms_norm_eps": -1}), "`rms_norm_eps`"),
        (json!({"rms_norm_eps": "1e-5"}), "`rms_norm_eps`"),
        (json!({"rope_theta": 0}), "`rope_theta`"),
        (json!({"rope_theta": null}), "`rope_theta`"),
        (
            json!({"rope_scaling": {"rope_type": "linear", "factor": 0}}),
            "`factor`",
        ),
        (
            json!({"rope_scaling": {"rope_type": "llama3", "factor": 8, "low_freq_factor": 1,
            "high_freq_factor": 4, "original_max_position_embeddings": -1}}),
            "`original_max_position_embeddings`",
        ),
        (
            json!({"tie_word_embeddings": "yes"}),
            "`tie_word_embeddings`",
        ),
        (json!({"attention_bias": 1}), "`attention_bias`"),
        (json!({"eos_token_id": "x"}), "`eos_token_id`"),
        (json!({"eos_token_id": [2, 9999]}), "`eos_token_id`"),
        (json!({"bos_token_id": -3}), "`bos_token_id`"),
        (json!({"hidden_act": 3}), "`hidden_act`"),
        (
            json!({"model_type": "mistral", "sliding_window": 0}),
            "`sliding_window`",
        ),
    ];
    for (patch, want) in cases {
        let err = parse_patched(patch.clone()).expect_err(&patch.to_string());
        assert!(err.contains(want), "{patch}: `{want}` not in `{err}`");
        assert!(
            err.contains("config.json"),
            "{patch}: the file is not named: {err}"
        );
    }
    // What transformers reads as "not set" stays accepted.
    for ok in [
        json!({"head_dim": null}),
        json!({"bos_token_id": null, "eos_token_id": null}),
        json!({"eos_token_id": [1, 2]}),
        json!({"model_type": "mistral", "sliding_window": null}),
        json!({"rope_theta": null, "rope_parameters": {"rope_type": "default", "rope_theta": 500.0}}),
    ] {
        parse_patched(ok.clone()).unwrap_or_else(|e| panic!("{ok}: {e}"));
    }
    let c = parse_patched(json!({"rope_theta": null, "rope_parameters": {"rope_theta": 500.0}}))
        .unwrap();
    assert_eq!(c.rope_theta, 500.0);
}

/// A config whose depth disagrees with the weights is named as such when loading, before
/// anything is allocated from it (a billion layers used to abort the process).
#[test]
fn config_depth_is_checked_against_the_weights() {
    let d = tempfile::tempdir().unwrap();
    for (layers, want) in [
        (
            1_000_000_000i64,
            "`num_hidden_layers` must be an integer in 1..=4096",
        ),
        (4, "num_hidden_layers is 4, but the weights hold 5 layer(s)"),
        (6, "num_hidden_layers is 6, but the weights hold 5 layer(s)"),
    ] {
        let m = d.path().join(format!("m{layers}"));
        std::fs::create_dir_all(&m).unwrap();
        for f in std::fs::read_dir(common::stories()).unwrap() {
            let f = f.unwrap().path();
            std::fs::copy(&f, m.join(f.file_name().unwrap())).unwrap();
        }
        let mut c = stories_config();
        c["num_hidden_layers"] = json!(layers);
        std::fs::write(m.join("config.json"), c.to_string()).unwrap();
        let ms = m.to_str().unwrap();
        fails_with(
            &["generate", "--model", ms, "--max-new-tokens", "2"],
            &[want, "config.json"],
        );
    }
}

#[test]
fn eval_counts_and_fractions_out_of_range_are_refused() {
    let m = common::stories();
    let m = m.to_str().unwrap();
    let eval = |extra: &[&str], wants: &[&str]| {
        let mut a = vec!["eval", "--model", m];
        a.extend_from_slice(extra);
        fails_with(&a, wants);
    };
    eval(
        &["--tasks", "piqa", "--fraction", "2"],
        &["`fraction` must be in (0, 1]"],
    );
    eval(&["--tasks", "piqa", "--fraction", "0"], &["`fraction`"]);
    eval(&["--tasks", "piqa", "--fraction", "nan"], &["`fraction`"]);
    // Through --set too: a NaN flag is not silently dropped by the settings' round trip.
    eval(
        &["--tasks", "piqa", "--fraction", "nan", "--set", "limit=3"],
        &["not a finite number"],
    );
    eval(
        &["--tasks", "piqa", "--limit", "0"],
        &["`limit` must be at least 1"],
    );
    eval(
        &["--tasks", "mmlu", "--mmlu-fewshot", "9"],
        &["`mmlu_fewshot`"],
    );
    eval(&["--ppl", "wikitext2", "--seqlen", "1"], &["at least 2"]);
    eval(
        &["--ppl", "wikitext2", "--seqlen", "64", "--max-windows", "0"],
        &["`windows` must be at least 1"],
    );
    eval(
        &[
            "--ppl",
            "wikitext2",
            "--seqlen",
            "100000",
            "--max-windows",
            "1",
        ],
        &["exceeds the model's max_position_embeddings (512)"],
    );
    eval(
        &["--tasks", "piqa", "--threads", "0"],
        &["--threads", "at least 1"],
    );
}

#[test]
fn prune_and_generate_settings_out_of_range_are_refused() {
    let m = common::stories();
    let m = m.to_str().unwrap();
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("p");
    let o = out.to_str().unwrap();
    let prune = |extra: &[&str], wants: &[&str]| {
        let mut a = vec!["prune", "--model", m, "--out", o, "--target-layers", "3"];
        a.extend_from_slice(extra);
        fails_with(&a, wants);
    };
    prune(
        &["--calib-seqlen", "1"],
        &["calibration: `seqlen` must be at least 2"],
    );
    prune(&["--calib-seqlen", "0"], &["calibration: `seqlen`"]);
    prune(&["--calib-nrows", "0"], &["calibration: `nrows`"]);
    prune(&["--calib-rows", "0"], &["calibration: `nrows`"]);
    prune(
        &["--calib-seqs", "0"],
        &["`max_sequences` must be at least 1"],
    );
    prune(
        &["--calib-max-sequences", "0"],
        &["`max_sequences` must be at least 1"],
    );
    prune(
        &["--comep-grid", "0"],
        &["`prune.comep_grid` must be at least 1"],
    );
    assert!(!out.exists(), "a refused prune leaves no output directory");
    let gen = |extra: &[&str], wants: &[&str]| {
        let mut a = vec!["generate", "--model", m, "--prompt", "Once"];
        a.extend_from_slice(extra);
        fails_with(&a, wants);
    };
    gen(
        &["--temperature", "nan"],
        &["temperature must be a number >= 0"],
    );
    gen(
        &["--max-new-tokens", "100000"],
        &["exceed the model's max_position_embeddings (512)"],
    );
}

/// Grids get the same checks as the command line, before any run starts.
#[test]
fn grid_settings_out_of_range_are_refused_before_running() {
    let d = tempfile::tempdir().unwrap();
    let stories = common::stories();
    for (eval, want) in [
        ("limit = 0", "`limit` must be at least 1"),
        ("fraction = 1.5", "`fraction` must be in (0, 1]"),
        (
            "ppl_seqlen = 64\nppl_windows = 0",
            "`windows` must be at least 1",
        ),
        ("mmlu_fewshot = 6", "`mmlu_fewshot`"),
    ] {
        let spec = format!(
            "[base]\nmodel = \"{}\"\n[base.prune]\ntarget_layers = 3\ncalib = {{ nrows = 8, seqlen = 64 }}\n[base.eval]\ntasks = [\"piqa\"]\n{eval}\n",
            stories.display()
        );
        let f = d.path().join("g.toml");
        std::fs::write(&f, spec).unwrap();
        let db = d.path().join("s.sqlite");
        fails_with(
            &["grid", f.to_str().unwrap(), "--db", db.to_str().unwrap()],
            &[want],
        );
    }
}
