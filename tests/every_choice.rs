//! Every choice runs: each value of every enumerated option a grid (and so the CLI, which
//! parses into the same enums and calls the same stages) accepts is run at least once on
//! stories260K through the grid runner, in the combinations that matter, and must finish
//! with finite metrics. The values come from the enums themselves (`ValueEnum`), so a
//! variant added tomorrow is in this grid the day it is added. A combination that is
//! meant to be refused is listed in `REFUSED` with the error it must give.

use clap::ValueEnum;
use come_repro::calib::Shuffle;
use come_repro::distill::config::{Attach, LayerInputs, LossKind, RecoveryMethod, Validation};
use come_repro::eval::perplexity::PplProtocol;
use come_repro::experiment::Experiment;
use come_repro::grid::GridSpec;
use come_repro::prune::merge::{GqaMapping, NormMode};
use come_repro::prune::score::Sensitivity;
use come_repro::prune::{MergeOp, Method, PairScore};
use come_repro::runner::{run_grid, RunnerOptions};
use come_repro::runtime::Dtype;
use come_repro::track::names::{self, ALL_TASKS};
use come_repro::track::{RunFilter, Status, Store};
use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;

/// The names a grid spells an enum's values with (the same as the command line's).
fn values<T: ValueEnum>() -> Vec<String> {
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

/// The name of one value.
fn name_of<T: ValueEnum>(v: &T) -> String {
    v.to_possible_value()
        .map_or_else(String::new, |p| p.get_name().to_string())
}

/// What a run's value of one key is called (None: the run has no such stage).
type Getter = fn(&Experiment) -> Option<String>;

/// Every enumerated key of a run, with every value it takes and how to read it from a run
/// (typed, so a value left out of the serialised form, like the legacy shuffle, counts).
/// Each value must appear in at least one finished run.
fn enumerated() -> Vec<(&'static str, Vec<String>, Getter)> {
    vec![
        ("prune.method", values::<Method>(), |e| {
            e.prune.as_ref().map(|p| name_of(&p.method))
        }),
        ("prune.merge", values::<MergeOp>(), |e| {
            e.prune.as_ref().map(|p| name_of(&p.merge))
        }),
        ("prune.sensitivity", values::<Sensitivity>(), |e| {
            e.prune.as_ref().map(|p| name_of(&p.sensitivity))
        }),
        ("prune.pair_score", values::<PairScore>(), |e| {
            e.prune.as_ref().map(|p| name_of(&p.pair_score))
        }),
        ("prune.norm", values::<NormMode>(), |e| {
            e.prune.as_ref().map(|p| name_of(&p.norm))
        }),
        ("prune.gqa_mapping", values::<GqaMapping>(), |e| {
            e.prune.as_ref().map(|p| name_of(&p.gqa_mapping))
        }),
        ("prune.calib.shuffle", values::<Shuffle>(), |e| {
            e.prune.as_ref().map(|p| name_of(&p.calib.shuffle))
        }),
        ("recovery.method", values::<RecoveryMethod>(), |e| {
            Some(name_of(&e.recovery.method.kind()))
        }),
        ("recovery.attach", values::<Attach>(), |e| {
            (!e.recovery.is_none()).then(|| name_of(&e.recovery.attach))
        }),
        ("recovery.inputs", values::<LayerInputs>(), |e| {
            (!e.recovery.is_none()).then(|| name_of(&e.recovery.inputs))
        }),
        ("recovery.validation", values::<Validation>(), |e| {
            (!e.recovery.is_none()).then(|| name_of(&e.recovery.validation))
        }),
        ("runtime.dtype", values::<Dtype>(), |e| {
            Some(name_of(&e.runtime.dtype))
        }),
        ("eval.ppl_protocol", values::<PplProtocol>(), |e| {
            Some(name_of(&e.eval.ppl_protocol))
        }),
    ]
}

/// Combinations refused on purpose: (sub-grid, a fragment of the error every failed run
/// of that sub-grid must report). Every other run must finish.
const REFUSED: &[(&str, &str)] = &[
    // A drop model whose removed layers join no kept layer has nothing to train.
    ("attach_refused", "nothing to distil"),
    // The "+" baselines protect 4 + 2 layers by default: a 5-layer model has none left.
    ("protect_refused", "0 layers are unprotected but 2 must go"),
];

/// The grid: one sub-grid per enumerated option, crossed with what it interacts with.
fn grid_toml() -> String {
    let m = come_repro::paths::models_dir();
    let losses: Vec<String> = values::<LossKind>()
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
protect_first = 1
protect_last = 1
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

# Where removed layers go, on a concatenated and a dropped model.
[grids.attach]
base = {{ recovery = {{ method = "hierarchical" }} }}
axes = {{ "prune.merge" = ["concat", "drop"], "recovery.attach" = {attach} }}
exclude = [{{ "prune.merge" = "drop", "recovery.attach" = "none" }}]
# What merged layers train on, with the end-to-end stage after them, on a concatenated
# and a dropped model.
[grids.inputs]
base = {{ recovery = {{ method = "hierarchical+kd" }} }}
axes = {{ "prune.merge" = ["concat", "drop"], "recovery.inputs" = {inputs} }}
# Where validation text comes from.
[grids.validation]
base = {{ recovery = {{ method = "hierarchical" }} }}
axes = {{ "recovery.validation" = {validation} }}
[grids.attach_refused]
base = {{ prune = {{ merge = "drop" }}, recovery = {{ method = "hierarchical", attach = "none" }} }}

# The "+" baselines at their default protection, which a 5-layer model cannot give.
[grids.protect_refused]
axes = {{ "prune.method" = ["magnitude+", "taylor+"] }}
base = {{ prune = {{ protect_first = 4, protect_last = 2 }} }}

# Every dtype, pruned and dense.
[grids.dtype]
dense = true
axes = {{ "runtime.dtype" = {dtypes} }}

# Evaluation: every task (MMLU too), every perplexity corpus, both batch budgets.
[grids.eval]
dense = true
base = {{ eval = {{ tasks = {tasks}, ppl_c4 = true, ppl_val = true, ppl_ood = true }} }}
axes = {{ "eval.token_budget" = ["auto", 256] }}

# Both perplexity protocols.
[grids.ppl_protocol]
dense = true
axes = {{ "eval.ppl_protocol" = {ppl_protocols} }}
"#,
        m = m.display(),
        methods = list(&values::<Method>()),
        merges = list(&values::<MergeOp>()),
        sens = list(&values::<Sensitivity>()),
        pairs = list(&values::<PairScore>()),
        norms = list(&values::<NormMode>()),
        gqa = list(&values::<GqaMapping>()),
        shuffles = list(&values::<Shuffle>()),
        recoveries = list(&values::<RecoveryMethod>()),
        losses = list(&losses),
        attach = list(&values::<Attach>()),
        inputs = list(&values::<LayerInputs>()),
        validation = list(&values::<Validation>()),
        dtypes = list(&values::<Dtype>()),
        tasks = list(&tasks),
        ppl_protocols = list(&values::<PplProtocol>()),
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
    let sum = run_grid(&spec, &opts, &mut come_repro::progress::ignore).unwrap();
    eprintln!(
        "{} runs ({} ran, {} failed) in {:.1} s",
        sum.total,
        sum.ran,
        sum.failed.len(),
        t0.elapsed().as_secs_f64()
    );

    // The combinations, for the log (`cargo test --test every_choice -- --nocapture`).
    for r in &runs {
        eprintln!("  [{}] {}", r.subgrid, r.name);
    }
    // Failures: exactly the refused sub-grids' runs, each with its error.
    let store = Store::open(&opts.db).unwrap();
    let all = store.runs(&RunFilter::default()).unwrap();
    let mut unexpected = vec![];
    let mut refused_seen = BTreeSet::new();
    for row in all.iter().filter(|r| r.status != Status::Finished) {
        let err = row.error.clone().unwrap_or_default();
        let want = REFUSED
            .iter()
            .find(|(g, _)| row.subgrid.split(',').any(|s| s == *g));
        match want {
            Some((g, want)) if row.status == Status::Failed && err.contains(want) => {
                refused_seen.insert(*g);
            }
            _ => unexpected.push(format!(
                "{} [{}] {:?}: {err}",
                row.name, row.subgrid, row.status
            )),
        }
    }
    assert!(
        unexpected.is_empty(),
        "runs failed:\n{}",
        unexpected.join("\n")
    );
    for (g, _) in REFUSED {
        assert!(
            refused_seen.contains(g),
            "sub-grid `{g}` was meant to be refused and was not"
        );
    }

    // Finished runs: every metric finite, at least one accuracy and one perplexity.
    let finished = store
        .runs(&RunFilter {
            status: Some(Status::Finished),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(finished.len() + sum.failed.len(), runs.len());
    assert_eq!(sum.ran + sum.failed.len(), runs.len(), "every run ran once");
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
        let has = |name: &str| {
            metrics
                .iter()
                .any(|m| m.name == name && m.value.is_finite())
        };
        assert!(
            has(names::ACC) && has(names::PPL_WIKITEXT2),
            "{}: no accuracy or no perplexity: {metrics:?}",
            row.name
        );
        // Every scored document is kept, for paired comparisons: as many per task as
        // its `n`, and agreeing with its accuracy.
        let docs = store.doc_scores(row.id).unwrap();
        for m in metrics
            .iter()
            .filter(|m| m.name == names::ACC && m.context.is_empty())
        {
            let mine: Vec<_> = docs.iter().filter(|d| d.task == m.task).collect();
            let n = metrics
                .iter()
                .find(|x| x.task == m.task && x.name == names::N)
                .map(|x| x.value as usize);
            assert_eq!(Some(mine.len()), n, "{}: {}", row.name, m.task);
            let acc = mine.iter().map(|d| d.acc).sum::<f64>() / mine.len() as f64;
            assert!((acc - m.value).abs() < 1e-12, "{}: {}", row.name, m.task);
        }
    }

    // Coverage: every value of every enumerated key is in a finished run.
    let done: BTreeSet<&str> = finished.iter().map(|r| r.hash.as_str()).collect();
    let finished_runs: Vec<&Experiment> = runs
        .iter()
        .filter(|r| done.contains(r.hash.as_str()))
        .map(|r| &r.experiment)
        .collect();
    for (key, values, get) in enumerated() {
        let seen: BTreeSet<String> = finished_runs.iter().filter_map(|e| get(e)).collect();
        for v in values {
            assert!(
                seen.contains(&v),
                "no finished run has {key} = {v}: {seen:?}"
            );
        }
    }
    let losses: BTreeSet<LossKind> = finished_runs
        .iter()
        .filter(|e| !e.recovery.is_none())
        .flat_map(|e| e.recovery.loss.0.keys().copied())
        .collect();
    for l in LossKind::value_variants() {
        assert!(
            losses.contains(l),
            "no run trained with loss {l:?}: {losses:?}"
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
    for (corpus, _, _) in come_repro::track::names::PPL_CORPORA {
        assert!(
            tasks_run.contains(corpus),
            "no {corpus} perplexity: {tasks_run:?}"
        );
    }
}
