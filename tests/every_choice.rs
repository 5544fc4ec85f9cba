//! Every choice runs: each value of every enumerated option a grid (and so the CLI, which
//! parses into the same enums and calls the same stages) accepts is run at least once on
//! stories260K through the grid runner, in the combinations that matter, and must finish
//! with finite metrics. The values come from the enums themselves (`ValueEnum`), so a
//! variant added tomorrow is in this grid the day it is added. A combination that is
//! meant to be refused is listed in `REFUSED` with the error it must give.

use clap::ValueEnum;
use come_repro::calib::Shuffle;
use come_repro::distill::config::{Attach, LossKind, RecoveryMethod};
use come_repro::grid::GridSpec;
use come_repro::prune::merge::{GqaMapping, NormMode};
use come_repro::prune::score::Sensitivity;
use come_repro::prune::{MergeOp, Method, PairScore};
use come_repro::runner::{run_grid, Quiet, RunnerOptions};
use come_repro::runtime::Dtype;
use come_repro::track::names::ALL_TASKS;
use come_repro::track::{RunFilter, Status, Store};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::Path;

/// The names a grid spells an enum's values with (the same as the command line's).
fn names<T: ValueEnum>() -> Vec<String> {
    T::value_variants()
        .iter()
        .filter_map(|v| v.to_possible_value())
        .map(|p| p.get_name().to_string())
        .collect()
}

fn list(v: &[String]) -> String {
    let q: Vec<String> = v.iter().map(|s| format!("{s:?}")).collect();
    format!("[{}]", q.join(", "))
}

/// Every enumerated key of a run, with every value it takes. Each must appear in at least
/// one finished run (or a run refused on purpose).
fn enumerated() -> Vec<(&'static str, Vec<String>)> {
    vec![
        ("prune.method", names::<Method>()),
        ("prune.merge", names::<MergeOp>()),
        ("prune.sensitivity", names::<Sensitivity>()),
        ("prune.pair_score", names::<PairScore>()),
        ("prune.norm", names::<NormMode>()),
        ("prune.gqa_mapping", names::<GqaMapping>()),
        ("prune.calib.shuffle", names::<Shuffle>()),
        ("recovery.method", names::<RecoveryMethod>()),
        ("recovery.attach", names::<Attach>()),
        ("runtime.dtype", names::<Dtype>()),
    ]
}

/// Combinations refused on purpose: (a fragment of the run's name, a fragment of the
/// error it must report). Empty today: every value runs with every method it applies to.
const REFUSED: &[(&str, &str)] = &[];

/// The grid: one sub-grid per enumerated option, crossed with what it interacts with.
fn grid_toml() -> String {
    let m = come_repro::paths::models_dir();
    let losses: Vec<String> = names::<LossKind>()
        .into_iter()
        .chain(["mse,cosine".to_string()])
        .collect();
    let tasks: Vec<String> = ALL_TASKS.iter().map(|t| t.to_string()).collect();
    format!(
        r#"[base]
model = "stories"
[base.prune]
method = "come"
target_layers = 3
comep_grid = 2
calib = {{ nrows = 16, seqlen = 64, max_sequences = 2 }}
[base.recovery]
tokens = 128
seqlen = 32
val_tokens = 32
kd_tokens = 64
kl_positions = 8
[base.eval]
tasks = ["piqa"]
limit = 2
ppl_seqlen = 32
ppl_windows = 1
[models]
stories = {{ llama2c = "{m}/stories260K/stories260K.bin", tokenizer = "{m}/stories260K/tok512.bin" }}

# Every method at its defaults.
[grids.method]
axes = {{ "prune.method" = {methods} }}

# Every merge operation on CoMe's schedule.
[grids.merge]
axes = {{ "prune.merge" = {merges} }}

# Every channel sensitivity with both concat methods (the issue's crash).
[grids.sensitivity]
axes = {{ "prune.method" = ["come", "come-p"], "prune.sensitivity" = {sens} }}

[grids.pair_score]
axes = {{ "prune.pair_score" = {pairs} }}

# Norm handling x GQA mapping, with both concat methods.
[grids.norm_gqa]
axes = {{ "prune.method" = ["come", "come-p"], "prune.norm" = {norms}, "prune.gqa_mapping" = {gqa} }}

[grids.shuffle]
axes = {{ "prune.calib.shuffle" = {shuffles} }}

# Every recovery method on a concatenated and a dropped model.
[grids.recovery]
axes = {{ "prune.merge" = ["concat", "drop"], "recovery.method" = {recoveries} }}

# Every layer loss (and a sum of two) in hierarchical distillation.
[grids.loss]
base = {{ recovery = {{ method = "hierarchical" }} }}
axes = {{ "recovery.loss" = {losses} }}

# Where removed layers go, on a drop method.
[grids.attach]
base = {{ prune = {{ merge = "drop" }}, recovery = {{ method = "hierarchical" }} }}
axes = {{ "recovery.attach" = {attach} }}

# Every dtype, pruned and dense.
[grids.dtype]
dense = true
axes = {{ "runtime.dtype" = {dtypes} }}

# Evaluation: every task (MMLU too), WikiText-2 and C4 perplexity, both batch budgets.
[grids.eval]
dense = true
base = {{ eval = {{ tasks = {tasks}, ppl_c4 = true }} }}
axes = {{ "eval.token_budget" = ["auto", 256] }}
"#,
        m = m.display(),
        methods = list(&names::<Method>()),
        merges = list(&names::<MergeOp>()),
        sens = list(&names::<Sensitivity>()),
        pairs = list(&names::<PairScore>()),
        norms = list(&names::<NormMode>()),
        gqa = list(&names::<GqaMapping>()),
        shuffles = list(&names::<Shuffle>()),
        recoveries = list(&names::<RecoveryMethod>()),
        losses = list(&losses),
        attach = list(&names::<Attach>()),
        dtypes = list(&names::<Dtype>()),
        tasks = list(&tasks),
    )
}

/// A C4-format file (gzip jsonl, `text` fields) of 1100 short documents: C4 perplexity
/// reads GPTQ's first 1100 validation documents, from the user's copy.
fn write_c4(dir: &Path) -> std::path::PathBuf {
    let p = dir.join(come_repro::eval::ppl_corpus::C4_FILE);
    let f = std::fs::File::create(&p).unwrap();
    let mut gz = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
    for i in 0..1100 {
        let text = format!(
            "Once upon a time there was a little cat number {i}. It liked to play in the sun."
        );
        writeln!(gz, "{}", serde_json::json!({ "text": text })).unwrap();
    }
    gz.finish().unwrap();
    p
}

fn value_name(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[test]
fn every_value_of_every_enumerated_option_runs() {
    let d = tempfile::tempdir().unwrap();
    // The only environment change of this test binary, before any run reads it.
    std::env::set_var("COME_C4", write_c4(d.path()));
    let path = d.path().join("every_choice.toml");
    std::fs::write(&path, grid_toml()).unwrap();
    let spec = GridSpec::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let runs = spec.expand().unwrap();
    let opts = RunnerOptions {
        db: d.path().join("store.sqlite"),
        cache_dir: d.path().join("cache"),
        threads: Some(2),
        ..Default::default()
    };
    let t0 = std::time::Instant::now();
    let sum = run_grid(&spec, &opts, &mut Quiet).unwrap();
    eprintln!(
        "{} runs ({} ran, {} failed) in {:.1} s",
        sum.total,
        sum.ran,
        sum.failed.len(),
        t0.elapsed().as_secs_f64()
    );

    // Failures: exactly the refused combinations, each with its error.
    let mut unexpected = vec![];
    let mut refused_seen = BTreeSet::new();
    for (name, err) in &sum.failed {
        match REFUSED.iter().find(|(n, _)| name.contains(n)) {
            Some((n, want)) if err.contains(want) => {
                refused_seen.insert(*n);
            }
            Some((_, want)) => unexpected.push(format!("{name}: `{err}` (wanted `{want}`)")),
            None => unexpected.push(format!("{name}: {err}")),
        }
    }
    assert!(
        unexpected.is_empty(),
        "runs failed:\n{}",
        unexpected.join("\n")
    );
    for (n, _) in REFUSED {
        assert!(
            refused_seen.contains(n),
            "`{n}` was meant to be refused and was not"
        );
    }

    // Finished runs: every metric finite, at least one accuracy and one perplexity.
    let store = Store::open(&opts.db).unwrap();
    let finished = store
        .runs(&RunFilter {
            status: Some(Status::Finished),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(finished.len() + sum.failed.len(), runs.len());
    for row in &finished {
        let metrics = store.metrics(row.id).unwrap();
        for m in &metrics {
            assert!(
                m.value.is_finite() && m.stderr.is_none_or(f64::is_finite),
                "{}: {}/{} = {} ± {:?}",
                row.name,
                m.task,
                m.name,
                m.value,
                m.stderr
            );
        }
        let has = |name: &str| metrics.iter().any(|m| m.name == name);
        assert!(
            has("acc") && has("word_perplexity") || has("perplexity"),
            "{}: {metrics:?}",
            row.name
        );
    }

    // Coverage: every value of every enumerated key is in a finished (or refused) run.
    let mut seen: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let done: BTreeSet<&str> = finished.iter().map(|r| r.hash.as_str()).collect();
    for r in runs.iter().filter(|r| done.contains(r.hash.as_str())) {
        for (k, v) in r.params() {
            seen.entry(k).or_default().insert(value_name(&v));
        }
    }
    for (key, values) in enumerated() {
        for v in values {
            let refused = REFUSED.iter().any(|(n, _)| n.contains(&v));
            assert!(
                refused || seen.get(key).is_some_and(|s| s.contains(&v)),
                "no finished run has {key} = {v}"
            );
        }
    }
    let loss_keys: BTreeSet<String> = seen
        .keys()
        .filter(|k| k.starts_with("recovery.loss."))
        .cloned()
        .collect();
    for l in names::<LossKind>() {
        assert!(
            loss_keys.contains(&format!("recovery.loss.{l}")),
            "no run trained with loss {l}: {loss_keys:?}"
        );
    }
    let tasks_run: BTreeSet<String> = finished
        .iter()
        .flat_map(|r| store.metrics(r.id).unwrap())
        .map(|m| m.task)
        .collect();
    for t in ALL_TASKS {
        assert!(
            tasks_run.contains(t),
            "task {t} never scored: {tasks_run:?}"
        );
    }
    for corpus in ["wikitext2", "c4"] {
        assert!(
            tasks_run.contains(corpus),
            "no {corpus} perplexity: {tasks_run:?}"
        );
    }
}
