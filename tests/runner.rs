//! The grid runner end to end through the binary: resumable after kill -9 at random
//! points, Ctrl-C marks the run interrupted, two runners share one store, finished runs
//! are never recomputed, bad grids fail before any run starts.

use come_repro::track::{RunFilter, Status, Store};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;

const BIN: &str = env!("CARGO_BIN_EXE_come-repro");

/// A grid of 5 quick runs on stories260K (dense + 4 prunes), each a second or two.
fn write_grid(dir: &Path) -> PathBuf {
    let models = come_repro::paths::models_dir();
    let toml = format!(
        r#"dense = true
[base]
model = "stories"
[base.prune]
target_layers = 3
calib = {{ nrows = 16, seqlen = 64, max_sequences = 2 }}
[base.eval]
tasks = ["piqa", "arc_easy"]
limit = 4
ppl_seqlen = 64
ppl_windows = 2
[models]
stories = {{ llama2c = "{m}/stories260K/stories260K.bin", tokenizer = "{m}/stories260K/tok512.bin" }}
[axes]
"prune.method" = ["come", "shortgpt", "reverse", "sleb"]
"#,
        m = models.display()
    );
    let p = dir.join("grid.toml");
    std::fs::write(&p, toml).unwrap();
    p
}

/// `grid GRID --db DB` with its checkpoint cache in `dir`, on one thread.
fn grid_command(dir: &Path, grid: &Path, db: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.args(["grid"])
        .arg(grid)
        .arg("--db")
        .arg(db)
        .arg("--cache")
        .arg(dir.join("cache"))
        .args(["--threads", "1"])
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    c
}

fn spawn(dir: &Path, grid: &Path, db: &Path) -> Child {
    grid_command(dir, grid, db)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn finished(db: &Path) -> BTreeMap<String, (String, i64)> {
    if !db.exists() {
        return BTreeMap::new();
    }
    let s = Store::open(db).unwrap();
    s.runs(&RunFilter {
        status: Some(Status::Finished),
        ..Default::default()
    })
    .unwrap()
    .into_iter()
    .map(|r| (r.hash, (r.finished.unwrap_or_default(), r.attempts)))
    .collect()
}

#[test]
fn kill_nine_at_random_points_then_resume() {
    let d = tempfile::tempdir().unwrap();
    let grid = write_grid(d.path());
    let db = d.path().join("store.sqlite");
    // Fixed pseudo-random kill times (ms), so the test is reproducible.
    let mut rng = come_repro::rng::SplitMix64::new(42);
    let mut seen: BTreeMap<String, (String, i64)> = BTreeMap::new();
    for _ in 0..6 {
        let mut child = spawn(d.path(), &grid, &db);
        let wait = 300 + rng.below(2500);
        std::thread::sleep(Duration::from_millis(wait));
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        // The store opens fine, and no run finished earlier was touched again.
        let now = finished(&db);
        for (h, v) in &seen {
            assert_eq!(
                now.get(h),
                Some(v),
                "finished run {h} was recomputed or lost"
            );
        }
        seen = now;
    }
    let out = spawn(d.path(), &grid, &db).wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let done = finished(&db);
    assert_eq!(done.len(), 5, "every run finished");
    for (h, v) in &seen {
        assert_eq!(done.get(h), Some(v), "finished run {h} was recomputed");
    }
    // Nothing runs again.
    let out = spawn(d.path(), &grid, &db).wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("0 ran, 5 already finished"), "{err}");
    assert_eq!(finished(&db), done);
}

#[test]
fn ctrl_c_marks_the_run_interrupted_and_a_rerun_finishes() {
    let d = tempfile::tempdir().unwrap();
    let grid = write_grid(d.path());
    let db = d.path().join("store.sqlite");
    let child = spawn(d.path(), &grid, &db);
    // Wait until a run is in progress, then interrupt twice (stop now).
    let t0 = Instant::now();
    loop {
        if db.exists() {
            if let Ok(s) = Store::open(&db) {
                if !s
                    .runs(&RunFilter {
                        status: Some(Status::Running),
                        ..Default::default()
                    })
                    .unwrap()
                    .is_empty()
                {
                    break;
                }
            }
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "no run started");
        std::thread::sleep(Duration::from_millis(50));
    }
    for _ in 0..2 {
        Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    let s = Store::open(&db).unwrap();
    let interrupted = s
        .runs(&RunFilter {
            status: Some(Status::Interrupted),
            ..Default::default()
        })
        .unwrap();
    let running = s
        .runs(&RunFilter {
            status: Some(Status::Running),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        interrupted.len() + running.len(),
        1,
        "exactly one run was cut short"
    );
    assert_eq!(interrupted.len(), 1, "Ctrl-C marks it interrupted");
    drop(s);
    let out = spawn(d.path(), &grid, &db).wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(finished(&db).len(), 5);
}

#[test]
fn two_runners_share_one_store() {
    let d = tempfile::tempdir().unwrap();
    let grid = write_grid(d.path());
    let db = d.path().join("store.sqlite");
    let a = spawn(d.path(), &grid, &db);
    let b = spawn(d.path(), &grid, &db);
    for c in [a, b] {
        let out = c.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{err}");
        assert!(!err.to_lowercase().contains("locked"), "{err}");
    }
    let done = finished(&db);
    assert_eq!(done.len(), 5);
    assert!(
        done.values().all(|(_, attempts)| *attempts == 1),
        "a run ran twice: {done:?}"
    );
}

fn grid_error(toml: &str) -> String {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("bad.toml");
    std::fs::write(&p, toml).unwrap();
    let db = d.path().join("store.sqlite");
    let out = Command::new(BIN)
        .arg("grid")
        .arg(&p)
        .arg("--db")
        .arg(&db)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        !db.exists(),
        "a bad grid must fail before any run starts (no store created)"
    );
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(err.contains("bad.toml"), "error must name the file: {err}");
    err
}

#[test]
fn bad_grids_fail_before_any_run() {
    let models = come_repro::paths::models_dir();
    let head = format!(
        "[models]\nstories = {{ llama2c = \"{m}/stories260K/stories260K.bin\", tokenizer = \"{m}/stories260K/tok512.bin\" }}\n",
        m = models.display()
    );
    let e = grid_error("[base\nmodel = 1");
    assert!(e.contains("1:") || e.contains("line 1"), "{e}");
    let e = grid_error(&format!(
        "[base]\nmodel = \"stories\"\n[base.prune]\ntarget_layers = 3\nmethod = \"coome\"\n{head}"
    ));
    assert!(e.contains("coome"), "{e}");
    let e = grid_error(&format!(
        "[base]\nmodel = \"stories\"\n{head}[axes]\n\"prune.sparsity\" = [\"a\"]\n"
    ));
    assert!(e.contains("prune.sparsity"), "{e}");
    let e = grid_error(&format!(
        "[base]\nmodel = \"stories\"\n[base.eval]\ntasks = [\"piqa\", \"squad\"]\n{head}"
    ));
    assert!(e.contains("squad"), "{e}");
    let e = grid_error(&format!(
        "[base]\nmodel = \"stories\"\n[base.eval]\ntask_paths = {{ squad = \"x\" }}\n{head}"
    ));
    assert!(e.contains("eval.task_paths.squad"), "{e}");
    let e = grid_error(&format!(
        "[base]\nmodel = \"stories\"\n[base.eval]\ntask_paths = {{ piqa = \"/no/such/piqa\" }}\n{head}"
    ));
    assert!(
        e.contains("the data of `piqa`, /no/such/piqa, does not exist"),
        "{e}"
    );
    // A key no run of its sub-grid reads: LoRA's rate is not `lr`; ShortGPT merges nothing.
    let e = grid_error(&format!(
        "[base]\nmodel = \"stories\"\n[base.prune]\ntarget_layers = 3\n{head}\
         [grids.lora]\nbase = {{ recovery = {{ method = \"lora\", lr = 1e-3 }} }}\n\
         [grids.shortgpt]\nbase = {{ prune = {{ method = \"shortgpt\" }} }}\n\
         axes = {{ \"prune.merge\" = [\"concat\", \"drop\"] }}\n"
    ));
    for want in [
        "`lora`: `recovery.lr` is set here, but no run of this sub-grid reads it (its runs' \
         methods: lora); LoRA's rate is `recovery.lora_lr`",
        "`shortgpt`: `prune.merge` is set here, but no run of this sub-grid reads it (its \
         runs' methods: shortgpt)",
    ] {
        assert!(e.contains(want), "{want}\n not in {e}");
    }
    let e = grid_error("[base]\nmodel = \"nowhere\"\n");
    assert!(e.contains("nowhere"), "{e}");
    let e = grid_error("[base]\nmodel = \"m\"\n[models]\nm = { gguf = \"/no/such/file.gguf\" }\n");
    assert!(e.contains("/no/such/file.gguf"), "{e}");
}

#[test]
fn check_passes_on_its_own_baseline_and_fails_with_a_readable_diff() {
    let d = tempfile::tempdir().unwrap();
    let grid = write_grid(d.path());
    let base = d.path().join("baseline.json");
    let check = |extra: &[&str]| {
        Command::new(BIN)
            .args(["check", "--grid"])
            .arg(&grid)
            .arg("--baseline")
            .arg(&base)
            .args(["--threads", "1", "--only", "shortgpt"])
            .args(extra)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .unwrap()
    };
    let out = check(&["--update"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = check(&[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Move one perplexity beyond its tolerance: the check names run, metric and values.
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&base).unwrap()).unwrap();
    let runs = v["runs"].as_object_mut().unwrap();
    let (name, metrics) = runs.iter_mut().next().unwrap();
    let name = name.clone();
    let key = "wikitext2/ppl_wikitext2[seqlen=64]";
    let old = metrics[key].as_f64().unwrap();
    metrics[key] = serde_json::json!(old * 1.01);
    std::fs::write(&base, serde_json::to_string_pretty(&v).unwrap()).unwrap();
    let out = check(&[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&name) && err.contains(key) && err.contains("check failed"),
        "{err}"
    );
}

#[test]
fn bad_recovery_fails_before_any_run() {
    let models = come_repro::paths::models_dir();
    let head = format!(
        "[models]\nstories = {{ llama2c = \"{m}/stories260K/stories260K.bin\", tokenizer = \"{m}/stories260K/tok512.bin\" }}\n",
        m = models.display()
    );
    let pruned = "[base]\nmodel = \"stories\"\n[base.prune]\ntarget_layers = 3\n";
    let e = grid_error(&format!(
        "{pruned}[base.recovery]\nmethod = \"hierarchical\"\ntokens = 0\n{head}"
    ));
    assert!(e.contains("recovery.tokens must be > 0"), "{e}");
    let e = grid_error(&format!(
        "{pruned}{head}[axes]\n\"recovery.lrr\" = [1e-4]\n"
    ));
    assert!(e.contains("did you mean `recovery.lr`"), "{e}");
    let e = grid_error(&format!(
        "[base]\nmodel = \"stories\"\n[base.recovery]\nmethod = \"lora\"\n{head}"
    ));
    assert!(e.contains("recovery needs a pruned model"), "{e}");
}

/// A grid of one recovered run on stories260K (hierarchical, 2 trained layers).
fn write_recovery_grid(dir: &Path) -> PathBuf {
    let models = come_repro::paths::models_dir();
    let toml = format!(
        r#"[base]
model = "stories"
[base.prune]
method = "come"
target_layers = 3
calib = {{ nrows = 16, seqlen = 64, max_sequences = 2 }}
[base.recovery]
method = "hierarchical"
tokens = 4096
seqlen = 64
val_tokens = 128
[base.eval]
tasks = ["piqa"]
limit = 4
ppl_seqlen = 64
ppl_windows = 2
[models]
stories = {{ llama2c = "{m}/stories260K/stories260K.bin", tokenizer = "{m}/stories260K/tok512.bin" }}
"#,
        m = models.display()
    );
    let p = dir.join("grid.toml");
    std::fs::write(&p, toml).unwrap();
    p
}

fn metrics_of(db: &Path) -> BTreeMap<String, f64> {
    let s = Store::open(db).unwrap();
    let runs = s
        .runs(&RunFilter {
            status: Some(Status::Finished),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(runs.len(), 1);
    s.metrics(runs[0].id)
        .unwrap()
        .into_iter()
        .filter(|m| !come_repro::track::names::is_machine_measurement(&m.key()))
        .map(|m| (m.key(), m.value))
        .collect()
}

#[test]
fn grid_killed_during_distillation_resumes_to_the_uninterrupted_result() {
    let d = tempfile::tempdir().unwrap();
    let grid = write_recovery_grid(d.path());
    // Uninterrupted, in its own store and cache.
    let clean = d.path().join("clean");
    std::fs::create_dir_all(&clean).unwrap();
    let out = spawn(&clean, &grid, &clean.join("store.sqlite"))
        .wait_with_output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Every stage that ran recorded its peak host memory, from its own start.
    let store = Store::open(clean.join("store.sqlite")).unwrap();
    let run = &store.runs(&RunFilter::default()).unwrap()[0];
    let peaks: BTreeMap<String, f64> = store
        .metrics(run.id)
        .unwrap()
        .into_iter()
        .filter(|m| m.name == come_repro::names::STAGE_PEAK_RSS_MIB)
        .map(|m| (m.context, m.value))
        .collect();
    let stages: Vec<&str> = peaks.keys().map(|c| c.split(',').next().unwrap()).collect();
    assert_eq!(
        stages,
        ["stage=distill", "stage=eval", "stage=model", "stage=prune"]
    );
    assert!(
        peaks.values().all(|&v| v > 10.0 && v < 64.0 * 1024.0),
        "{peaks:?}"
    );
    drop(store);
    // Killed once the first layer is finished, then rerun.
    let db = d.path().join("store.sqlite");
    let mut child = spawn(d.path(), &grid, &db);
    let distilled = d.path().join("cache/distilled");
    let t0 = Instant::now();
    let layer_done = || {
        std::fs::read_dir(&distilled)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| {
                std::fs::read_dir(e.path())
                    .into_iter()
                    .flatten()
                    .flatten()
                    .any(|f| f.file_name().to_string_lossy().ends_with(".json"))
            })
    };
    while !layer_done() && t0.elapsed() < Duration::from_secs(180) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(layer_done(), "no layer finished within 180 s");
    let _ = child.kill(); // SIGKILL, in the middle of the distill stage
    let _ = child.wait();
    assert!(
        finished(&db).is_empty(),
        "nothing may be finished after the kill"
    );
    let out = spawn(d.path(), &grid, &db).wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("finished earlier, resumed"), "{err}");
    assert_eq!(metrics_of(&db), metrics_of(&clean.join("store.sqlite")));
}

type Statuses = BTreeMap<String, (Status, Option<String>, i64)>;

fn count(runs: &Statuses, status: Status) -> usize {
    runs.values().filter(|(s, _, _)| *s == status).count()
}

/// Three good runs, one whose model cannot load (a config.json that is not one) and one
/// that panics (injected): the grid finishes the good runs, records both failures with
/// their message (the panic with its source location), exits non-zero with a summary,
/// does not retry them on resume unless `--retry-failed`, and `--fail-fast` stops at the
/// first failure.
#[test]
fn failing_runs_do_not_stop_the_grid() {
    let d = tempfile::tempdir().unwrap();
    let broken = d.path().join("broken-model");
    std::fs::create_dir(&broken).unwrap();
    std::fs::write(broken.join("config.json"), "not json").unwrap();
    let models = come_repro::paths::models_dir();
    let grid = d.path().join("grid.toml");
    std::fs::write(
        &grid,
        format!(
            r#"dense = true
[base]
model = "stories"
[base.prune]
target_layers = 3
calib = {{ nrows = 16, seqlen = 64, max_sequences = 2 }}
[base.eval]
tasks = ["piqa"]
limit = 4
ppl_seqlen = 64
ppl_windows = 1
[models]
stories = {{ llama2c = "{m}/stories260K/stories260K.bin", tokenizer = "{m}/stories260K/tok512.bin" }}
broken = {{ path = "{b}" }}
[grids.good]
axes = {{ "prune.method" = ["come", "shortgpt", "reverse"] }}
[grids.broken]
dense = false
base = {{ model = "broken" }}
axes = {{ "prune.method" = ["come"] }}
"#,
            m = models.display(),
            b = broken.display()
        ),
    )
    .unwrap();
    let db = d.path().join("store.sqlite");
    let grid_run = |extra: &[&str], panic_in: Option<&str>| {
        let mut c = Command::new(BIN);
        c.arg("grid")
            .arg(&grid)
            .arg("--db")
            .arg(&db)
            .arg("--cache")
            .arg(d.path().join("cache"))
            .args(["--threads", "1"])
            .args(extra)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env_remove("COME_INJECT_PANIC");
        if let Some(p) = panic_in {
            c.env("COME_INJECT_PANIC", p);
        }
        let out = c.output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let statuses = || -> Statuses {
        Store::open(&db)
            .unwrap()
            .runs(&RunFilter::default())
            .unwrap()
            .into_iter()
            .map(|r| (r.name, (r.status, r.error, r.attempts)))
            .collect()
    };

    let (ok, log) = grid_run(&[], Some("shortgpt"));
    assert!(!ok, "{log}");
    assert!(
        log.contains("5 run(s): 3 ran, 0 already finished, 2 failed"),
        "{log}"
    );
    assert!(log.contains("2 run(s) failed"), "{log}");
    let st = statuses();
    assert_eq!(st.len(), 5, "{st:?}");
    let failed: Vec<&String> = st
        .iter()
        .filter(|(_, (s, _, _))| *s == Status::Failed)
        .map(|(n, _)| n)
        .collect();
    assert_eq!(failed.len(), 2, "{st:?}");
    assert_eq!(count(&st, Status::Finished), 3, "{st:?}");
    let (name, (_, err, _)) = st.iter().find(|(n, _)| n.contains("shortgpt")).unwrap();
    let err = err.as_deref().unwrap_or("");
    assert!(
        err.contains("panicked at src/runner/pipeline.rs:") && err.contains("injected panic"),
        "{name}: {err}"
    );
    assert!(
        log.contains(&format!(
            "failed: {name}: panicked at src/runner/pipeline.rs:"
        )),
        "{log}"
    );
    let (name, (_, err, _)) = st.iter().find(|(n, _)| n.starts_with("broken")).unwrap();
    let err = err.as_deref().unwrap_or("");
    assert!(
        err.contains("broken-model") && err.contains("config.json"),
        "{name}: {err}"
    );

    // Resume: failed runs are reported, not retried.
    let (ok, log) = grid_run(&[], None);
    assert!(!ok, "{log}");
    assert!(
        log.contains("0 ran, 3 already finished, 0 failed, 2 failed earlier")
            && log.contains("--retry-failed"),
        "{log}"
    );
    assert_eq!(statuses(), st, "nothing was retried");

    // --fail-fast with --retry-failed: the first failed run stops the grid.
    let (ok, log) = grid_run(&["--retry-failed", "--fail-fast"], Some("shortgpt"));
    assert!(!ok, "{log}");
    assert!(
        log.contains("1 failed") && log.contains("--fail-fast: stopped"),
        "{log}"
    );
    let now = statuses();
    assert_eq!(
        count(&now, Status::Pending),
        1,
        "the other requeued run waits: {now:?}"
    );

    // --retry-failed without the injected panic: that run finishes, the broken one fails again.
    let (ok, log) = grid_run(&["--retry-failed"], None);
    assert!(!ok, "{log}");
    assert!(
        log.contains("1 ran, 3 already finished, 1 failed, 0 failed earlier"),
        "{log}"
    );
    let last = statuses();
    assert_eq!(count(&last, Status::Finished), 4, "{last:?}");
    assert_eq!(last[failed[0]].0, Status::Failed, "{last:?}");
}

/// A paper-scale grid is planned where the weights are not: `--dry-run`, `--status` and
/// `--slurm --dry-run` list the runs with one warning per missing model; a run refuses,
/// naming the file, before it creates a store.
#[test]
fn planning_works_without_the_weights() {
    let d = tempfile::tempdir().unwrap();
    let grid = d.path().join("plan.toml");
    std::fs::write(
        &grid,
        r#"dense = true
[base]
model = "big"
[base.prune]
sparsity = 0.3
[models]
big = { path = "weights/Llama-2-7b-hf" }
[axes]
"prune.method" = ["come", "shortgpt"]
"#,
    )
    .unwrap();
    let db = d.path().join("store.sqlite");
    let run = |extra: &[&str]| {
        let out = Command::new(BIN)
            .arg("grid")
            .arg(&grid)
            .args(extra)
            .current_dir(d.path())
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let warning =
        "`models.big`: directory weights/Llama-2-7b-hf does not exist (a run would refuse)";
    let (ok, out, err) = run(&["--dry-run"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("3 run(s)") && out.contains("big/shortgpt"),
        "{out}"
    );
    assert_eq!(err.matches(warning).count(), 1, "{err}");
    let (ok, out, err) = run(&["--slurm", "--dry-run"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("array task(s)") && out.contains("#SBATCH --array="),
        "{out}"
    );
    assert!(err.contains(warning), "{err}");
    let (ok, _, err) = run(&["--status"]);
    assert!(ok && err.contains(warning), "{err}");
    let (ok, _, err) = run(&["--db", db.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        err.contains("weights/Llama-2-7b-hf does not exist") && !err.contains("warning"),
        "{err}"
    );
    assert!(!db.exists(), "a refused run created a store");
}

/// A grid names a task's own data (`eval.task_paths`, variables expanded), a text to
/// measure perplexity on (`eval.ppl_texts`) and encodes without special tokens, as `eval
/// --task-path`, `--ppl FILE` and `--no-special-tokens` do: the run reads that copy (its
/// sha256 recorded under its path), measures the text and keeps the settings.
#[test]
fn a_grid_reads_a_task_from_its_own_path() {
    let d = tempfile::tempdir().unwrap();
    let own = d.path().join("my-piqa");
    std::fs::create_dir(&own).unwrap();
    for f in ["valid.jsonl", "valid-labels.lst"] {
        std::fs::copy(
            come_repro::paths::data_dir().join("piqa").join(f),
            own.join(f),
        )
        .unwrap();
    }
    let text = "Once upon a time there was a little girl who liked to play in the park. ";
    std::fs::write(d.path().join("my-text.txt"), text.repeat(20)).unwrap();
    let models = come_repro::paths::models_dir();
    let grid = d.path().join("own.toml");
    std::fs::write(
        &grid,
        format!(
            r#"[base]
model = "stories"
[base.eval]
tasks = ["piqa"]
limit = 4
ppl_seqlen = 64
ppl_windows = 1
special_tokens = false
task_paths = {{ piqa = "${{OWN_DATA}}/my-piqa" }}
ppl_texts = ["${{OWN_DATA}}/my-text.txt"]
[models]
stories = {{ llama2c = "{m}/stories260K/stories260K.bin", tokenizer = "{m}/stories260K/tok512.bin" }}
"#,
            m = models.display()
        ),
    )
    .unwrap();
    let db = d.path().join("store.sqlite");
    common::bin::ok(
        grid_command(d.path(), &grid, &db)
            .env("OWN_DATA", d.path())
            .output()
            .unwrap(),
    );
    let store = Store::open(&db).unwrap();
    let runs = store.runs(&RunFilter::default()).unwrap();
    assert_eq!(runs.len(), 1);
    let eval = &runs[0].config["eval"];
    assert_eq!(eval["special_tokens"], false);
    assert_eq!(eval["task_paths"]["piqa"], "${OWN_DATA}/my-piqa");
    let texts: Vec<_> = (store.metrics(runs[0].id).unwrap().into_iter())
        .filter(|m| m.task == "my-text")
        .collect();
    assert!(texts.iter().any(|m| m.name.starts_with("ppl")), "{texts:?}");
    let env = store.environment(runs[0].id).unwrap();
    let key = format!("data.sha256:{}", own.join("valid.jsonl").display());
    assert!(env.contains_key(&key), "{key} not in {:?}", env.keys());
    assert!(
        !env.keys().any(|k| k.contains("shared/data/piqa")),
        "the shared copy was read: {:?}",
        env.keys()
    );
}
