//! Grid files: expansion semantics (product, zip, exclude, sub-grids, dense), hashing, and
//! the errors every kind of bad input gives.

use come_repro::grid::{GridSpec, ModelSource, RunSpec};
use proptest::prelude::*;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// A temp dir with a model directory `m/` and a file `tiny.gguf`.
fn models_dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir(d.path().join("m")).unwrap();
    std::fs::write(d.path().join("m/config.json"), "{}").unwrap();
    std::fs::write(d.path().join("tiny.gguf"), b"GGUF").unwrap();
    d
}

fn header(d: &Path) -> String {
    format!(
        "[models]\nm = {{ path = \"{}\" }}\ng = {{ gguf = \"{}\" }}\n",
        d.join("m").display(),
        d.join("tiny.gguf").display()
    )
}

fn load(d: &Path, body: &str) -> come_repro::Result<GridSpec> {
    let path = d.join("grid.toml");
    // Top-level keys must precede the first table header, so the body comes first.
    std::fs::write(&path, format!("{body}\n{}", header(d))).unwrap();
    GridSpec::load(&path)
}

fn expand(d: &Path, body: &str) -> Vec<RunSpec> {
    load(d, body).unwrap().expand().unwrap()
}

fn get(run: &RunSpec, key: &str) -> Value {
    run.params().get(key).cloned().unwrap_or(Value::Null)
}

/// The error text of a grid whose body is `body` (body line 0 is file line 1).
fn error_of(d: &Path, body: &str) -> String {
    match load(d, body).and_then(|g| g.expand()) {
        Ok(_) => panic!("expected an error for:\n{body}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn product_is_cartesian_first_axis_outermost() {
    let d = models_dir();
    let runs = expand(
        d.path(),
        r#"
[base]
model = "m"
[base.prune]
sparsity = 0.3
[axes]
"prune.method" = ["come", "shortgpt"]
"prune.merge" = ["concat", "linear", "drop"]
"#,
    );
    assert_eq!(runs.len(), 6);
    let got: Vec<(String, String)> = runs
        .iter()
        .map(|r| {
            (
                get(r, "prune.method").as_str().unwrap().into(),
                get(r, "prune.merge").as_str().unwrap().into(),
            )
        })
        .collect();
    let want: Vec<(String, String)> = ["come", "shortgpt"]
        .iter()
        .flat_map(|m| {
            ["concat", "linear", "drop"]
                .iter()
                .map(move |g| (m.to_string(), g.to_string()))
        })
        .collect();
    assert_eq!(got, want);
    assert_eq!(runs[0].name, "m/come/concat");
    assert!(runs.iter().all(|r| r.subgrid == "main"));
    assert!(runs.iter().all(|r| r.hash == r.experiment.hash()));
    // Every default is filled.
    assert_eq!(get(&runs[0], "prune.calib.seed"), json!(10));
    assert_eq!(get(&runs[0], "prune.sparsity"), json!(0.3));
}

#[test]
fn names_follow_the_varied_keys() {
    let d = models_dir();
    let runs = expand(
        d.path(),
        r#"
dense = true
[base]
model = "m"
[axes]
model = ["m", "g"]
"prune.method" = ["come"]
"prune.merge" = ["concat", "linear"]
"prune.sparsity" = [0.1, 0.3]
"#,
    );
    let names: Vec<&str> = runs.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "m/dense",
            "g/dense",
            "m/concat/s0.1",
            "m/concat/s0.3",
            "m/linear/s0.1",
            "m/linear/s0.3",
            "g/concat/s0.1",
            "g/concat/s0.3",
            "g/linear/s0.1",
            "g/linear/s0.3"
        ]
    );
    // One dense run per model, no pruning config.
    assert_eq!(
        runs.iter().filter(|r| r.experiment.prune.is_none()).count(),
        2
    );
}

#[test]
fn sub_grids_that_differ_only_in_their_bases_are_named_by_sub_grid() {
    let d = models_dir();
    let runs = expand(
        d.path(),
        r#"
[base]
model = "m"
prune = { sparsity = 0.3 }
recovery = { method = "hierarchical" }
[grids.default_rate]
axes = { "prune.merge" = ["concat", "drop"] }
[grids.fast]
base = { recovery = { lr = 3.2e-3 } }
axes = { "prune.merge" = ["concat", "drop"] }
[grids.only_concat]
base = { prune = { merge = "concat" }, recovery = { lr = 1e-2 } }
axes = { "recovery.seed" = [0, 1] }
[grids.partly]
base = { recovery = { lr = 5e-2 } }
axes = { "prune.merge" = ["concat", "linear"] }
"#,
    );
    let names: Vec<&str> = runs.iter().map(|r| r.name.as_str()).collect();
    // `only_concat`'s names are unique already; a sub-grid with one clash is named as a
    // whole (`partly` clashes on concat only).
    assert_eq!(
        names,
        [
            "m/default_rate/concat",
            "m/default_rate/drop",
            "m/fast/concat",
            "m/fast/drop",
            "m/seed=0",
            "m/seed=1",
            "m/partly/concat",
            "m/partly/linear",
        ]
    );
}

#[test]
fn zip_advances_together() {
    let d = models_dir();
    let runs = expand(
        d.path(),
        r#"
[base]
model = "m"
prune = { sparsity = 0.2 }
[axes]
"eval.seed" = [1, 2]
[[zip]]
"prune.merge" = ["concat", "linear", "drop"]
"prune.norm" = ["mean", "fold", "mean"]
"#,
    );
    assert_eq!(runs.len(), 6);
    let pairs: BTreeSet<(String, String)> = runs
        .iter()
        .map(|r| {
            (
                get(r, "prune.merge").as_str().unwrap().into(),
                get(r, "prune.norm").as_str().unwrap().into(),
            )
        })
        .collect();
    let want: BTreeSet<(String, String)> =
        [("concat", "mean"), ("linear", "fold"), ("drop", "mean")]
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
    assert_eq!(pairs, want);
}

#[test]
fn subgrids_union_and_dedupe() {
    let d = models_dir();
    let runs = expand(
        d.path(),
        r#"
[base]
model = "m"
[base.prune]
sparsity = 0.3
[axes]
"eval.seed" = [0]

[grids.methods]
axes = { "prune.method" = ["come", "shortgpt", "sleb"] }

[grids.merge]
axes = { "prune.merge" = ["concat", "linear"] }
base = { prune = { method = "come" } }
"#,
    );
    // methods: 3 runs; merge: 2 runs, of which come/concat equals methods' come.
    assert_eq!(runs.len(), 4);
    let hashes: BTreeSet<&str> = runs.iter().map(|r| r.hash.as_str()).collect();
    assert_eq!(hashes.len(), 4);
    let shared = runs
        .iter()
        .find(|r| {
            get(r, "prune.method") == json!("come") && get(r, "prune.merge") == json!("concat")
        })
        .unwrap();
    assert_eq!(shared.subgrid, "methods,merge");
    let linear = runs
        .iter()
        .find(|r| get(r, "prune.merge") == json!("linear"))
        .unwrap();
    assert_eq!(linear.subgrid, "merge");
    assert_eq!(linear.name, "m/linear");
    let spec = load(d.path(), "[base]\nmodel = \"m\"\n[grids.a]\n[grids.b]\n").unwrap();
    assert_eq!(spec.subgrid_names(), ["a", "b"]);
}

#[test]
fn subgrid_axis_replaces_shared_axis() {
    let d = models_dir();
    let runs = expand(
        d.path(),
        r#"
[base]
model = "m"
prune = { sparsity = 0.3 }
[axes]
"prune.seed" = [1, 2, 3]
[grids.one]
axes = { "prune.seed" = [7] }
"#,
    );
    assert_eq!(runs.len(), 1);
    assert_eq!(get(&runs[0], "prune.seed"), json!(7));
}

const ORDER_A: &str = r#"
[base]
model = "m"
[base.prune]
sparsity = 0.25
norm = "fold"
calib = { nrows = 64, seed = 3 }
[base.eval]
tasks = ["piqa", "boolq"]
limit = 50
[axes]
"prune.method" = ["come", "come-p"]
"eval.seed" = [1, 2]
"#;

const ORDER_B: &str = r#"
[axes]
eval.seed = [1, 2]
prune.method = ["come", "come-p"]
[base.eval]
limit = 50
tasks = ["piqa", "boolq"]
[base]
model = "m"
prune.calib.seed = 3
prune.calib.nrows = 64
prune.norm = "fold"
prune.sparsity = 2.5e-1
"#;

#[test]
fn hash_is_stable_under_key_order_and_spelling() {
    let d = models_dir();
    let a: BTreeSet<String> = expand(d.path(), ORDER_A)
        .into_iter()
        .map(|r| r.hash)
        .collect();
    let b: BTreeSet<String> = expand(d.path(), ORDER_B)
        .into_iter()
        .map(|r| r.hash)
        .collect();
    assert_eq!(a.len(), 4);
    assert_eq!(a, b);
}

#[test]
fn hash_changes_when_any_single_value_changes() {
    let d = models_dir();
    let base: BTreeSet<String> = expand(d.path(), ORDER_A)
        .into_iter()
        .map(|r| r.hash)
        .collect();
    let edits = [
        ("sparsity = 0.25", "sparsity = 0.26"),
        ("norm = \"fold\"", "norm = \"mean\""),
        ("nrows = 64", "nrows = 65"),
        ("seed = 3", "seed = 4"),
        ("\"piqa\", \"boolq\"", "\"boolq\", \"piqa\""),
        ("limit = 50", "limit = 51"),
        ("\"come-p\"]", "\"sleb\"]"),
        ("[1, 2]", "[1, 3]"),
        ("model = \"m\"", "model = \"g\""),
    ];
    for (from, to) in edits {
        assert!(ORDER_A.contains(from), "{from}");
        let changed: BTreeSet<String> = expand(d.path(), &ORDER_A.replacen(from, to, 1))
            .into_iter()
            .map(|r| r.hash)
            .collect();
        assert_eq!(changed.len(), 4);
        assert_ne!(
            changed, base,
            "editing {from} -> {to} must change some hash"
        );
        // Only the runs that carry the edited value change.
        let kept = changed.intersection(&base).count();
        let expect_kept = if from.starts_with("\"come-p\"") || from.starts_with("[1, 2]") {
            2
        } else {
            0
        };
        assert_eq!(kept, expect_kept, "{from} -> {to}");
    }
}

#[test]
fn exclude_drops_matching_combinations() {
    let d = models_dir();
    let runs = expand(
        d.path(),
        r#"
exclude = [
  { "prune.method" = "shortgpt", "prune.merge" = "linear" },
  { "prune.method" = "sleb", prune.sparsity = 0.1 },
]
[base]
model = "m"
[axes]
"prune.method" = ["come", "shortgpt", "sleb"]
"prune.merge" = ["concat", "linear"]
"prune.sparsity" = [0.1, 0.2]
"#,
    );
    assert_eq!(runs.len(), 12 - 2 - 2);
    assert!(!runs
        .iter()
        .any(|r| get(r, "prune.method") == json!("shortgpt")
            && get(r, "prune.merge") == json!("linear")));
    assert!(
        !runs
            .iter()
            .any(|r| get(r, "prune.method") == json!("sleb")
                && get(r, "prune.sparsity") == json!(0.1))
    );
}

#[test]
fn model_sources_and_variables() {
    let d = models_dir();
    let spec = load(d.path(), "[base]\nmodel = \"m\"\n").unwrap();
    assert_eq!(
        spec.model_source("m").unwrap(),
        ModelSource::Path(d.path().join("m"))
    );
    assert_eq!(
        spec.model_source("g").unwrap(),
        ModelSource::Gguf(d.path().join("tiny.gguf"))
    );
    // A directory given by path works without a [models] entry.
    let dir = d.path().join("m").display().to_string();
    assert_eq!(
        spec.model_source(&dir).unwrap(),
        ModelSource::Path(PathBuf::from(&dir))
    );
    assert!(spec
        .model_source("nope")
        .unwrap_err()
        .to_string()
        .contains("nope"));

    // ${COME_MODELS} expands with the crate's default (or the caller's variable).
    let text = "[models]\ns = { llama2c = \"${COME_MODELS}/stories260K/stories260K.bin\", tokenizer = \"${COME_MODELS}/stories260K/tok512.bin\" }\n[base]\nmodel = \"s\"\n";
    let path = d.path().join("vars.toml");
    std::fs::write(&path, text).unwrap();
    let root = come_repro::paths::models_dir();
    let want = ModelSource::Llama2c {
        model: root.join("stories260K/stories260K.bin"),
        tokenizer: root.join("stories260K/tok512.bin"),
    };
    match GridSpec::load(&path) {
        Ok(spec) => assert_eq!(spec.model_source("s").unwrap(), want),
        // Without the shared models the error names the expanded file.
        Err(e) => assert!(
            e.to_string()
                .contains(&root.join("stories260K").display().to_string()),
            "{e}"
        ),
    }
}

// ---------------------------------------------------------------------------------------
// Bad input: every error names the file, the line and the key.

fn assert_error(d: &Path, body: &str, line_in_body: usize, needles: &[&str]) {
    let e = error_of(d, body);
    assert!(e.contains("grid.toml"), "no file name in: {e}");
    let line = format!("line {}:", 1 + line_in_body);
    assert!(e.contains(&line), "expected `{line}` in: {e}");
    for n in needles {
        assert!(e.contains(n), "expected `{n}` in: {e}");
    }
}

#[test]
fn unknown_keys_are_located_with_a_suggestion() {
    let d = models_dir();
    // Line numbers count from the first line of the body (0 = the leading newline).
    assert_error(
        d.path(),
        "\n[base]\nmodel = \"m\"\n[axes]\n\"prune.sparsty\" = [0.1]\n",
        4,
        &[
            "`prune.sparsty`",
            "unknown key",
            "did you mean `prune.sparsity`",
        ],
    );
    assert_error(
        d.path(),
        "\n[base]\nmodel = \"m\"\n[base.prune]\nsparsity = 0.3\nmetod = \"come\"\n",
        5,
        &["`prune.metod`", "did you mean `prune.method`"],
    );
    assert_error(
        d.path(),
        "\n[base]\nmodel = \"m\"\nevl = { limit = 3 }\n",
        3,
        &["`evl.limit`", "did you mean `eval`"],
    );
    assert_error(
        d.path(),
        "\n[base]\nmodel = \"m\"\n[axis]\n\"prune.sparsity\" = [0.1]\n",
        3,
        &["`axis`", "unknown top-level key"],
    );
    assert_error(
        d.path(),
        "\n[base]\nmodel = \"m\"\n[grids.a]\naxis = {}\n",
        4,
        &["`grids.a.axis`", "unknown sub-grid key"],
    );
    assert_error(d.path(), "\nexclude = [{ \"prune.mehtod\" = \"come\" }]\n[base]\nmodel = \"m\"\nprune = { sparsity = 0.1 }\n", 1, &["`prune.mehtod`"]);
}

#[test]
fn wrong_types_are_located() {
    let d = models_dir();
    assert_error(
        d.path(),
        "\n[base]\nmodel = \"m\"\n[axes]\n\"prune.sparsity\" = [0.1,\n  \"a\"]\n",
        5,
        &["`prune.sparsity`", "invalid type"],
    );
    assert_error(
        d.path(),
        "\n[base]\nmodel = \"m\"\n[base.eval]\nlimit = \"ten\"\n",
        4,
        &["`eval.limit`", "invalid type"],
    );
    assert_error(
        d.path(),
        "\n[base]\nmodel = \"m\"\n[axes]\n\"prune.sparsity\" = 0.1\n",
        4,
        &["`prune.sparsity`", "must be an array"],
    );
    assert_error(
        d.path(),
        "\ndense = \"yes\"\n[base]\nmodel = \"m\"\n",
        1,
        &["`dense`", "true or false"],
    );
}

#[test]
fn unknown_method_merge_and_task_are_located() {
    let d = models_dir();
    assert_error(
        d.path(),
        "\n[base]\nmodel = \"m\"\n[axes]\n\"prune.method\" = [\"come\", \"comee\"]\n",
        4,
        &["`prune.method`", "unknown variant `comee`", "come-p"],
    );
    assert_error(
        d.path(),
        "\n[base]\nmodel = \"m\"\n[axes]\n\"prune.merge\" = [\"concat\", \"linaer\"]\n",
        4,
        &["`prune.merge`", "unknown variant `linaer`"],
    );
    assert_error(
        d.path(),
        "\n[base]\nmodel = \"m\"\n[base.eval]\ntasks = [\"piqa\", \"pqia\"]\n",
        4,
        &["`eval.tasks`", "unknown task `pqia`"],
    );
    assert_error(
        d.path(),
        "\n[base]\nmodel = \"m\"\n[axes]\n\"eval.tasks\" = [[\"boolq\"], [\"mmlu\", \"arc\"]]\n",
        4,
        &["`eval.tasks`", "unknown task `arc`"],
    );
}

#[test]
fn malformed_toml_gives_line_and_column() {
    let d = models_dir();
    assert_error(
        d.path(),
        "\n[base]\nmodel = \"m\"\n[axes\n",
        3,
        &["malformed TOML"],
    );
    let e = error_of(d.path(), "\n[base]\nmodel = \"m\"\nx = = 1\n");
    assert!(e.contains("line 4:5"), "{e}");
}

#[test]
fn unknown_models_and_missing_files_are_located() {
    let d = models_dir();
    assert_error(
        d.path(),
        "\n[base]\nmodel = \"nope\"\n",
        2,
        &[
            "`model`",
            "model `nope` is neither a key of [models] nor an existing directory",
        ],
    );
    assert_error(
        d.path(),
        "\n[base]\nmodel = \"m\"\n[axes]\nmodel = [\"m\", \"other\"]\n",
        4,
        &["model `other`"],
    );
    let missing = "\n[models]\nx = { gguf = \"/nonexistent/x.gguf\" }\n[base]\nmodel = \"x\"\n";
    // [models] appears twice when appended to the header: use a file of its own.
    let path = d.path().join("grid.toml");
    std::fs::write(&path, missing.replacen("\n[models]\n", "[models]\n", 1)).unwrap();
    // A missing model file does not stop planning (expansion, hashes, shards); it is
    // reported, located, and a run refuses.
    let spec = GridSpec::load(&path).unwrap();
    assert_eq!(spec.expand().unwrap().len(), 1);
    assert_eq!(spec.missing_models().len(), 1);
    let e = spec.require_models().unwrap_err().to_string();
    assert!(
        e.contains("grid.toml")
            && e.contains("line 2:1")
            && e.contains("`models.x`")
            && e.contains("/nonexistent/x.gguf does not exist"),
        "{e}"
    );
    std::fs::write(
        &path,
        "[models]\nl = { llama2c = \"a.bin\" }\n[base]\nmodel = \"l\"\n",
    )
    .unwrap();
    let e = GridSpec::load(&path).unwrap_err().to_string();
    assert!(
        e.contains("line 2:1") && e.contains("needs `tokenizer"),
        "{e}"
    );
    std::fs::write(
        &path,
        "[models]\nv = { path = \"${COME_GRID_TEST_UNSET_VARIABLE}/m\" }\n",
    )
    .unwrap();
    let e = GridSpec::load(&path).unwrap_err().to_string();
    assert!(
        e.contains("line 2:") && e.contains("COME_GRID_TEST_UNSET_VARIABLE"),
        "{e}"
    );
}

#[test]
fn structural_mistakes_are_reported() {
    let d = models_dir();
    assert_error(d.path(), "\n[base]\nmodel = \"m\"\nprune = { sparsity = 0.1 }\n[[zip]]\n\"prune.merge\" = [\"concat\", \"linear\"]\n\"prune.norm\" = [\"mean\"]\n", 6, &["zipped axes need equal lengths"]);
    assert_error(d.path(), "\nexclude = [{ \"prune.merge\" = \"linear\" }]\n[base]\nmodel = \"m\"\nprune = { sparsity = 0.1 }\n", 1, &["matches no combination"]);
    assert_error(
        d.path(),
        "\n[base]\nmodel = \"m\"\n[axes]\n\"prune.sparsity\" = []\n",
        4,
        &["empty axis"],
    );
    // A pruned run without a target is caught before anything runs.
    let e = error_of(
        d.path(),
        "\n[base]\nmodel = \"m\"\n[axes]\n\"prune.method\" = [\"come\"]\n",
    );
    assert!(
        e.contains("prune.sparsity") && e.contains("prune.target_layers"),
        "{e}"
    );
    // Several problems are reported together.
    let e = error_of(
        d.path(),
        "\n[base]\nmodel = \"m\"\nprune = { sparsty = 0.1, mthod = \"x\" }\n",
    );
    assert!(
        e.contains("prune.sparsty") && e.contains("prune.mthod"),
        "{e}"
    );
}

// ---------------------------------------------------------------------------------------
// Property: the expansion is exactly the product minus the excluded combinations.

/// Axis keys of different types, each with a pool of distinct values.
/// Axes for the expansion property. Every key must be read by every run whatever the
/// excludes leave (a grid refuses a key none of its runs reads): `prune.seed` is read only
/// by concatenating runs, and an exclude may remove them all, so the calibration's seed
/// stands in for it.
fn pool() -> Vec<(&'static str, Vec<Value>)> {
    vec![
        ("prune.calib.seed", (0..4).map(|i| json!(i)).collect()),
        ("eval.seed", (10..14).map(|i| json!(i)).collect()),
        (
            "prune.sparsity",
            [0.1, 0.2, 0.3, 0.4].iter().map(|x| json!(x)).collect(),
        ),
        (
            "prune.merge",
            ["concat", "linear", "linear-bi", "drop"]
                .iter()
                .map(|x| json!(x))
                .collect(),
        ),
        ("prune.calib.nrows", (32..36).map(|i| json!(i)).collect()),
    ]
}

fn toml_value(v: &Value) -> String {
    v.to_string()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn expansion_is_product_minus_excludes(
        picks in proptest::collection::vec((0usize..5, 1usize..4), 1..5),
        excl in proptest::collection::vec((0usize..8, 0usize..8, 0usize..4, 0usize..4, any::<bool>()), 0..4),
    ) {
        let pool = pool();
        // Distinct axes, each with its first n pool values.
        let mut axes: Vec<(&str, Vec<Value>)> = Vec::new();
        for (k, n) in picks {
            let (key, vals) = &pool[k];
            if !axes.iter().any(|(a, _)| a == key) {
                axes.push((key, vals[..n].to_vec()));
            }
        }
        // Excludes: one or two distinct axes, values drawn from those axes.
        let mut excludes: Vec<Vec<(&str, Value)>> = Vec::new();
        for (a, b, va, vb, two) in excl {
            let (ka, vals_a) = &axes[a % axes.len()];
            let mut e = vec![(*ka, vals_a[va % vals_a.len()].clone())];
            let (kb, vals_b) = &axes[b % axes.len()];
            if two && kb != ka {
                e.push((*kb, vals_b[vb % vals_b.len()].clone()));
            }
            excludes.push(e);
        }
        let mut body = String::from("exclude = [\n");
        for e in &excludes {
            let kv: Vec<String> = e.iter().map(|(k, v)| format!("\"{k}\" = {}", toml_value(v))).collect();
            body.push_str(&format!("  {{ {} }},\n", kv.join(", ")));
        }
        body.push_str("]\n[base]\nmodel = \"m\"\n[base.prune]\nsparsity = 0.5\n[axes]\n");
        for (k, vals) in &axes {
            let vs: Vec<String> = vals.iter().map(toml_value).collect();
            body.push_str(&format!("\"{k}\" = [{}]\n", vs.join(", ")));
        }

        // Expected: every index combination, minus those an exclude matches.
        let mut expected: BTreeSet<Vec<String>> = BTreeSet::new();
        let total: usize = axes.iter().map(|(_, v)| v.len()).product();
        for mut i in 0..total {
            let mut combo = Vec::new();
            for (_, vals) in axes.iter().rev() {
                combo.push(vals[i % vals.len()].clone());
                i /= vals.len();
            }
            combo.reverse();
            let excluded = excludes.iter().any(|e| {
                e.iter().all(|(k, v)| {
                    let pos = axes.iter().position(|(a, _)| a == k).unwrap();
                    &combo[pos] == v
                })
            });
            if !excluded {
                expected.insert(combo.iter().map(|v| v.to_string()).collect());
            }
        }

        let d = models_dir();
        let runs = expand(d.path(), &body);
        prop_assert_eq!(runs.len(), expected.len());
        let got: BTreeSet<Vec<String>> = runs
            .iter()
            .map(|r| axes.iter().map(|(k, _)| get(r, k).to_string()).collect())
            .collect();
        prop_assert_eq!(got, expected);
        let hashes: BTreeSet<&String> = runs.iter().map(|r| &r.hash).collect();
        prop_assert_eq!(hashes.len(), runs.len());
    }
}

/// The example in the module documentation of `grid` is a valid grid (it uses the shared
/// models, so it is checked only where they are present).
#[test]
fn documented_example_expands() {
    let src = std::fs::read_to_string("src/grid/mod.rs").unwrap();
    let doc: Vec<&str> = src
        .lines()
        .filter_map(|l| l.strip_prefix("//!"))
        .map(|l| l.strip_prefix(' ').unwrap_or(l))
        .collect();
    let start = doc.iter().position(|l| *l == "```toml").unwrap() + 1;
    let len = doc[start..].iter().position(|l| *l == "```").unwrap();
    let text = doc[start..start + len].join("\n");
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("example.toml");
    std::fs::write(&path, &text).unwrap();
    let gguf = come_repro::paths::smollm2_gguf();
    let spec = GridSpec::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(spec.missing_models().is_empty(), gguf.exists());
    assert_eq!(spec.subgrid_names(), ["main", "merge", "norm"]);
    let runs = spec.expand().unwrap();
    // main: 6 methods x 3 sparsities - 1 excluded = 17; merge: 12, of which the 3 concat
    // runs equal main's CoMe runs; norm: 6, of which (mean, hf) equal them too; one dense.
    assert_eq!(runs.len(), 1 + 17 + 9 + 3);
    assert_eq!(runs[0].name, "smollm2/dense");
    let names: Vec<&str> = runs.iter().map(|r| r.name.as_str()).collect();
    assert!(names.contains(&"smollm2/come/s0.3"), "{names:?}");
    assert!(names.contains(&"smollm2/linear-bi/s0.2"), "{names:?}");
    assert!(names.contains(&"smollm2/fold/reference/s0.1"), "{names:?}");
    assert!(!names.contains(&"smollm2/laco/s0.1"));
    let shared = runs.iter().find(|r| r.name == "smollm2/come/s0.3").unwrap();
    assert_eq!(shared.subgrid, "main,merge,norm");
    assert_eq!(
        spec.model_source("smollm2").unwrap(),
        ModelSource::Gguf(gguf)
    );
}

#[test]
fn batch_budget_is_a_number_or_auto() {
    let d = models_dir();
    let hash = |body: &str| expand(d.path(), body)[0].hash.clone();
    let plain = hash("[base]\nmodel = \"m\"\n");
    // An explicit default spells the same run as leaving it out (hashes of stores made
    // when the budget was a plain integer stay valid).
    assert_eq!(
        hash("[base]\nmodel = \"m\"\n[base.eval]\ntoken_budget = 4096\n"),
        plain
    );
    let auto = hash("[base]\nmodel = \"m\"\n[base.eval]\ntoken_budget = \"auto\"\n");
    assert_ne!(auto, plain);
    let run = &expand(
        d.path(),
        "[base]\nmodel = \"m\"\n[base.eval]\ntoken_budget = \"auto\"\n",
    )[0];
    assert_eq!(
        run.experiment.eval.token_budget,
        come_repro::eval::batching::BatchSize::Auto
    );
    assert_error(
        d.path(),
        "\n[base]\nmodel = \"m\"\n[base.eval]\ntoken_budget = \"lots\"\n",
        4,
        &["`eval.token_budget`", "`auto` or a positive number"],
    );
    assert_error(
        d.path(),
        "\n[base]\nmodel = \"m\"\n[base.eval]\ntoken_budget = 0\n",
        4,
        &["`eval.token_budget`", "got 0"],
    );
}

/// `eval.latency` names a protocol; `true` in a grid is the default (sleb), while the
/// short protocol keeps the stored form `true` of the runs timed before protocols had
/// names, so their hashes still match.
#[test]
fn latency_names_a_protocol_and_short_keeps_old_hashes() {
    use come_repro::eval::latency::Protocol;
    let d = models_dir();
    let run = |v: &str| {
        expand(
            d.path(),
            &format!("[base]\nmodel = \"m\"\n[base.eval]\nlatency = {v}\n"),
        )
        .remove(0)
    };
    let plain = expand(d.path(), "[base]\nmodel = \"m\"\n").remove(0);
    assert_eq!(run("false").hash, plain.hash);
    let sleb = run("true");
    assert_eq!(sleb.experiment.eval.latency, Some(Protocol::Sleb));
    assert_eq!(run("\"sleb\"").hash, sleb.hash);
    assert_eq!(get(&sleb, "eval.latency"), json!("sleb"));
    let short = run("\"short\"");
    assert_eq!(short.experiment.eval.latency, Some(Protocol::Short));
    assert_ne!(short.hash, sleb.hash);
    let stored = short.experiment.to_value();
    assert_eq!(stored["eval"]["latency"], json!(true));
    // The stored form reads back as what was run.
    let back = come_repro::experiment::Experiment::from_value(stored).unwrap();
    assert_eq!(back.eval.latency, Some(Protocol::Short));
    // Iterations scaled for a CPU: the shapes stay, the context records the counts.
    let scaled = run("\"sleb\"\nlatency_iters = [10, 3]");
    let spec = scaled.experiment.eval.latency_spec().unwrap();
    assert_eq!(
        spec.context(),
        "protocol=sleb,prefill=1x2048x10,generate=64x64+128x3"
    );
    assert_ne!(scaled.hash, sleb.hash);
    assert_error(
        d.path(),
        "\n[base]\nmodel = \"m\"\n[base.eval]\nlatency = \"sleb\"\nlatency_iters = [0, 3]\n",
        5,
        &["`eval.latency_iters`", "at least 1 each"],
    );
    assert_error(
        d.path(),
        "\n[base]\nmodel = \"m\"\n[base.eval]\nlatency = \"fast\"\n",
        4,
        &["`eval.latency`", "\"sleb\" or \"short\""],
    );
}

/// `eval.ppl_protocol`: the default (gptq) is left out of the hash; llama.cpp's rule is
/// a different run; an unknown name is refused naming the choices.
#[test]
fn ppl_protocol_is_a_choice_and_the_default_keeps_old_hashes() {
    use come_repro::eval::perplexity::PplProtocol;
    let d = models_dir();
    let run = |v: &str| {
        expand(
            d.path(),
            &format!("[base]\nmodel = \"m\"\n[base.eval]\nppl_protocol = {v}\n"),
        )
        .remove(0)
    };
    let plain = expand(d.path(), "[base]\nmodel = \"m\"\n").remove(0);
    assert_eq!(run("\"gptq\"").hash, plain.hash);
    let l = run("\"llama_cpp\"");
    assert_eq!(l.experiment.eval.ppl_protocol, PplProtocol::LlamaCpp);
    assert_ne!(l.hash, plain.hash);
    assert_eq!(get(&l, "eval.ppl_protocol"), json!("llama_cpp"));
    assert_error(
        d.path(),
        "\n[base]\nmodel = \"m\"\n[base.eval]\nppl_protocol = \"llama\"\n",
        4,
        &["`eval.ppl_protocol`", "gptq", "llama_cpp"],
    );
}

#[test]
fn c4_perplexity_is_opt_in_and_needs_the_file() {
    let d = models_dir();
    let hash = |body: &str| expand(d.path(), body)[0].hash.clone();
    // Off by default and left out of the hash, so older runs keep their identity.
    assert_eq!(
        hash("[base]\nmodel = \"m\"\n[base.eval]\nppl_c4 = false\n"),
        hash("[base]\nmodel = \"m\"\n")
    );
    if std::env::var_os("COME_C4").is_none() && !come_repro::paths::c4_validation().exists() {
        assert_error(
            d.path(),
            "\n[base]\nmodel = \"m\"\n[base.eval]\nppl_c4 = true\n",
            4,
            &["`eval.ppl_c4`", "C4 validation shard", "COME_C4"],
        );
    }
}

#[test]
fn recovery_is_an_axis_with_validated_keys() {
    let d = models_dir();
    let runs = expand(
        d.path(),
        r#"dense = true
[base]
model = "m"
[base.prune]
sparsity = 0.3
[base.recovery]
tokens = 4096
loss = { mse = 1.0, cosine = 0.5 }
[axes]
"recovery.method" = ["none", "hierarchical", "lora"]
"#,
    );
    let names: Vec<&str> = runs.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "m/dense",
            "m/recovery=none",
            "m/recovery=hierarchical",
            "m/recovery=lora"
        ]
    );
    // A dense run recovers nothing; a recovery that is off hashes as a plain prune.
    assert!(runs[0].experiment.recovery.is_none());
    assert_eq!(runs[0].experiment.recovery, Default::default());
    let plain = expand(
        d.path(),
        "[base]\nmodel = \"m\"\n[base.prune]\nsparsity = 0.3\n",
    );
    assert_eq!(runs[1].hash, plain[0].hash);
    assert_eq!(runs[1].experiment.recovery, Default::default());
    let lora = &runs[3].experiment.recovery;
    assert_eq!(lora.tokens, 4096);
    assert_eq!(lora.loss.label(), "mse+0.5*cosine");
    assert_eq!(get(&runs[3], "recovery.method"), json!("lora"));
    assert_eq!(get(&runs[2], "recovery.tokens"), json!(4096));
    // Excludes see the recovery method even where it is off.
    let kept = expand(
        d.path(),
        r#"exclude = [{ "recovery.method" = "none" }]
[base]
model = "m"
[base.prune]
sparsity = 0.3
[axes]
"recovery.method" = ["none", "lora"]
"#,
    );
    assert_eq!(kept.len(), 1);
    assert!(!kept[0].experiment.recovery.is_none());
}

#[test]
fn bad_recovery_settings_fail_before_any_run() {
    let d = models_dir();
    let pruned = "\n[base]\nmodel = \"m\"\n[base.prune]\nsparsity = 0.3\n";
    // An unknown key, located, with a suggestion.
    assert_error(
        d.path(),
        &format!("{pruned}[axes]\n\"recovery.lrr\" = [1e-4]\n"),
        6,
        &[
            "`recovery.lrr`",
            "unknown key",
            "did you mean `recovery.lr`",
        ],
    );
    assert_error(
        d.path(),
        &format!("{pruned}[base.recovery]\nmethod = \"hierarchical\"\nlosss = \"mse\"\n"),
        7,
        &["`recovery.losss`", "did you mean `recovery.loss`"],
    );
    // Values of the wrong kind, located.
    assert_error(
        d.path(),
        &format!("{pruned}[axes]\n\"recovery.method\" = [\"none\", \"lorra\"]\n"),
        6,
        &["`recovery.method`", "lorra"],
    );
    assert_error(
        d.path(),
        &format!("{pruned}[base.recovery]\nloss = \"mse,l1\"\n"),
        6,
        &["`recovery.loss`", "unknown loss `l1`"],
    );
    // Settings that cannot train: found when the grid expands, naming the file.
    let e = error_of(
        d.path(),
        &format!("{pruned}[base.recovery]\nmethod = \"hierarchical\"\ntokens = 0\n"),
    );
    assert!(e.contains("grid.toml"), "{e}");
    assert!(e.contains("recovery.tokens must be > 0"), "{e}");
    // A recovery that is off is not checked.
    expand(d.path(), &format!("{pruned}[base.recovery]\ntokens = 0\n"));
    // A budget below one optimiser step, for the layers and for the KD stage.
    let e = error_of(
        d.path(),
        &format!("{pruned}[base.recovery]\nmethod = \"hierarchical\"\ntokens = 1000\nseqlen = 512\naccum = 2\n"),
    );
    assert!(
        e.contains("recovery.tokens = 1000 is less than one optimiser step of 1024 tokens"),
        "{e}"
    );
    let e = error_of(
        d.path(),
        &format!("{pruned}[base.recovery]\nmethod = \"hierarchical+kd\"\ntokens = 1024\nkd_tokens = 100\nseqlen = 512\n"),
    );
    assert!(e.contains("recovery.kd_tokens = 100"), "{e}");
    // Held-out validation with nothing to validate on.
    let e = error_of(
        d.path(),
        &format!("{pruned}[base.recovery]\nmethod = \"hierarchical\"\nvalidation = \"held_out\"\nval_tokens = 0\n"),
    );
    assert!(e.contains("held_out needs val_tokens > 0"), "{e}");
    // A seed list with a repeat, located at the repeat.
    assert_error(
        d.path(),
        &format!(
            "{pruned}[base.recovery]\nmethod = \"lora\"\n[axes]\n\"recovery.seed\" = [0, 1, 0]\n"
        ),
        8,
        &["`recovery.seed`", "0 appears twice"],
    );
    // Recovery needs something pruned.
    let e = error_of(
        d.path(),
        "\n[base]\nmodel = \"m\"\n[base.recovery]\nmethod = \"lora\"\n",
    );
    assert!(e.contains("grid.toml"), "{e}");
    assert!(e.contains("recovery needs a pruned model"), "{e}");
}

#[test]
fn calibration_ids_files_are_hashed_by_content() {
    let d = models_dir();
    let ids = d.path().join("ids.json");
    let body = format!(
        "[base]\nmodel = \"m\"\n[base.prune]\ntarget_layers = 2\ncalib = {{ ids = \"{}\" }}\n",
        ids.display()
    );
    std::fs::write(&ids, "[[1, 2, 3]]").unwrap();
    let a = expand(d.path(), &body);
    std::fs::write(&ids, "[[1, 2, 4]]").unwrap();
    let b = expand(d.path(), &body);
    assert_eq!(a.len(), 1);
    assert_ne!(
        a[0].hash, b[0].hash,
        "a changed ids file must change the run"
    );
    std::fs::remove_file(&ids).unwrap();
    let e = error_of(d.path(), &body);
    assert!(e.contains("ids.json"), "{e}");
    // The paper's NumPy shuffle is the default; the older one is still accepted.
    let legacy = "[base]\nmodel = \"m\"\n[base.prune]\ntarget_layers = 2\ncalib = { shuffle = \"splitmix64\" }\n";
    let paper = "[base]\nmodel = \"m\"\n[base.prune]\ntarget_layers = 2\n";
    assert_ne!(
        expand(d.path(), legacy)[0].hash,
        expand(d.path(), paper)[0].hash
    );
    let e = error_of(d.path(), "[base]\nmodel = \"m\"\n[base.prune]\ntarget_layers = 2\ncalib = { shuffle = \"python\" }\n");
    assert!(e.contains("python"), "{e}");
}
