//! Grids split over the tasks of a job array: `grid --shard I/N` runs its part into its own
//! store, `runs merge` folds the shard stores into one (idempotent, finished beats
//! unfinished, conflicts reported), and the merged store equals a one-process run's.

use come_repro::grid::GridSpec;
use come_repro::shard::{assign, Shard};
use come_repro::track::{Status, Store};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

mod common;
use common::bin::{ok, run_in, store_results};

/// dense + CoMe, ShortGPT and SLEB to 3 layers, CoMe also with recovery: the recovered run
/// shares CoMe's pruned checkpoint and must land in its shard.
fn write_grid(dir: &Path) -> PathBuf {
    let toml = format!(
        r#"dense = true
[base]
model = "{}"
[base.prune]
target_layers = 3
calib = {{ nrows = 16, seqlen = 64, max_sequences = 2 }}
[base.eval]
tasks = ["piqa"]
limit = 4
ppl_seqlen = 64
ppl_windows = 2
[grids.methods]
axes = {{ "prune.method" = ["come", "shortgpt", "sleb"] }}
[grids.recovered]
base = {{ prune = {{ method = "come" }}, recovery = {{ method = "hierarchical", tokens = 256, seqlen = 64, val_tokens = 128 }} }}
"#,
        common::stories().display()
    );
    let p = dir.join("g.toml");
    std::fs::write(&p, toml).unwrap();
    p
}

#[test]
fn shards_keep_shared_checkpoints_together() {
    let d = tempfile::tempdir().unwrap();
    let runs = GridSpec::load(write_grid(d.path()))
        .unwrap()
        .expand()
        .unwrap();
    assert_eq!(runs.len(), 5);
    for n in 1..=4 {
        let of = assign(&runs, n).unwrap();
        assert_eq!(of, assign(&runs, n).unwrap(), "not deterministic");
        let mut by_prune: BTreeMap<String, BTreeSet<usize>> = BTreeMap::new();
        for (r, s) in runs.iter().zip(&of) {
            assert!(*s < n);
            if let Some(h) = r.experiment.prune_hash() {
                by_prune.entry(h).or_default().insert(*s);
            }
        }
        assert!(by_prune.values().all(|s| s.len() == 1), "{n}: {by_prune:?}");
    }
    // Bad shard specs are refused by the parser.
    for bad in ["3/3", "1/0", "x/2", "2", "-1/2"] {
        assert!(bad.parse::<Shard>().is_err(), "{bad}");
    }
}

#[test]
fn three_shards_merged_equal_one_process() {
    let d = tempfile::tempdir().unwrap();
    let grid = write_grid(d.path());
    let g = grid.to_str().unwrap();
    let one = d.path().join("one.sqlite");
    ok(run_in(
        d.path(),
        &["grid", g, "--db", one.to_str().unwrap()],
    ));
    for i in 0..3 {
        ok(run_in(d.path(), &["grid", g, "--shard", &format!("{i}/3")]));
    }
    let shard_db = |i: usize| d.path().join(format!("results/shards/g-{i}-of-3.sqlite"));
    let total: usize = (0..3).map(|i| store_results(&shard_db(i)).len()).sum();
    assert_eq!(total, 5, "every run in exactly one shard store");
    let status = ok(run_in(d.path(), &["grid", g, "--status"]));
    assert!(status.contains("5 of 5 run(s) finished"), "{status}");
    assert!(!status.contains("with work left"), "{status}");

    let merged = d.path().join("merged.sqlite");
    let m = merged.to_str().unwrap();
    let shards: Vec<String> = (0..3).map(|i| shard_db(i).display().to_string()).collect();
    let mut args = vec!["runs", "merge"];
    args.extend(shards.iter().map(String::as_str));
    args.extend(["--into", m]);
    let first = ok(run_in(d.path(), &args));
    assert!(first.contains("conflicting"), "{first}");
    let again = ok(run_in(d.path(), &args));
    assert!(
        !again.contains(" 1 added") && again.matches("0 added").count() == 3,
        "{again}"
    );
    assert_eq!(
        store_results(&merged),
        store_results(&one),
        "merged shards differ from one process"
    );

    // `check` straight from the shard stores, against a baseline of the one-process run.
    let base = d.path().join("baseline.json");
    let b = base.to_str().unwrap();
    let o = one.to_str().unwrap();
    ok(run_in(
        d.path(),
        &["check", "--grid", g, "--baseline", b, "--db", o, "--update"],
    ));
    let mut c = vec!["check", "--grid", g, "--baseline", b];
    for s in &shards {
        c.extend(["--db", s.as_str()]);
    }
    let checked = ok(run_in(d.path(), &c));
    assert!(checked.contains("check passed"), "{checked}");

    // Tables straight from the shard stores.
    let mut t = vec!["tables", "--grid", g, "--out"];
    let out = d.path().join("tables");
    t.push(out.to_str().unwrap());
    for s in &shards {
        t.extend(["--db", s.as_str()]);
    }
    ok(run_in(d.path(), &t));
    assert!(std::fs::read_dir(&out).unwrap().count() > 0);
}

#[test]
fn merge_edge_cases() {
    let d = tempfile::tempdir().unwrap();
    let grid = write_grid(d.path());
    let g = grid.to_str().unwrap();
    let full = d.path().join("full.sqlite");
    ok(run_in(
        d.path(),
        &["grid", g, "--db", full.to_str().unwrap(), "--only", "dense"],
    ));
    let runs = GridSpec::load(&grid).unwrap().expand().unwrap();
    let dense = runs.iter().find(|r| r.name.ends_with("dense")).unwrap();

    // A shard whose copy of the dense run was interrupted: merged first, it arrives as
    // interrupted (nobody owns it); the finished copy then replaces it.
    let partial = d.path().join("partial.sqlite");
    {
        let s = Store::open(&partial).unwrap();
        s.register(std::slice::from_ref(dense)).unwrap();
        s.claim(dense, false).unwrap();
    }
    let target = d.path().join("target.sqlite");
    let t = target.to_str().unwrap();
    ok(run_in(
        d.path(),
        &["runs", "merge", partial.to_str().unwrap(), "--into", t],
    ));
    assert_eq!(store_results(&target)[&dense.hash].0, Status::Interrupted);
    let r = ok(run_in(
        d.path(),
        &["runs", "merge", full.to_str().unwrap(), "--into", t],
    ));
    assert!(r.contains("1 replaced unfinished"), "{r}");
    assert_eq!(
        store_results(&target)[&dense.hash],
        store_results(&full)[&dense.hash]
    );
    // The unfinished copy merged again changes nothing.
    ok(run_in(
        d.path(),
        &["runs", "merge", partial.to_str().unwrap(), "--into", t],
    ));
    assert_eq!(store_results(&target)[&dense.hash].0, Status::Finished);

    // Two finished copies with different metrics: reported, exit 1, the target's kept.
    let other = d.path().join("other.sqlite");
    std::fs::copy(&full, &other).unwrap();
    let c = rusqlite::Connection::open(&other).unwrap();
    c.execute(
        "UPDATE metrics SET value = value + 0.25 WHERE name = 'acc'",
        [],
    )
    .unwrap();
    drop(c);
    let before = store_results(&target);
    let o = run_in(
        d.path(),
        &["runs", "merge", other.to_str().unwrap(), "--into", t],
    );
    let text = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{text}");
    assert!(
        text.contains("conflict") && text.contains("piqa/acc"),
        "{text}"
    );
    assert_eq!(store_results(&target), before);

    // A store of another schema version is refused, naming it.
    let newer = d.path().join("newer.sqlite");
    std::fs::copy(&full, &newer).unwrap();
    let c = rusqlite::Connection::open(&newer).unwrap();
    c.pragma_update(None, "user_version", 99).unwrap();
    drop(c);
    let o = run_in(
        d.path(),
        &["runs", "merge", newer.to_str().unwrap(), "--into", t],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("newer.sqlite") && err.contains("schema version 99"),
        "{err}"
    );
    assert_eq!(store_results(&target), before);
}

/// `--devices cpu,cpu`: two worker processes share one store; both run, no run is done
/// twice, the shared CoMe checkpoint is pruned once, and the results equal one process's.
#[test]
fn two_cpu_workers_equal_one_process() {
    let d = tempfile::tempdir().unwrap();
    let grid = write_grid(d.path());
    let g = grid.to_str().unwrap();
    let one = d.path().join("one.sqlite");
    ok(run_in(
        d.path(),
        &["grid", g, "--db", one.to_str().unwrap(), "--threads", "1"],
    ));
    let two = d.path().join("two.sqlite");
    let log = ok(run_in(
        d.path(),
        &[
            "grid",
            g,
            "--db",
            two.to_str().unwrap(),
            "--devices",
            "cpu,cpu",
            "--threads",
            "1",
            "--cache",
            "cache2",
        ],
    ));
    assert!(
        log.contains("worker 0: cpu") && log.contains("worker 1: cpu"),
        "{log}"
    );
    assert_eq!(
        store_results(&two),
        store_results(&one),
        "two workers differ from one process"
    );
    let s = Store::open(&two).unwrap();
    let rows = s.runs(&Default::default()).unwrap();
    assert_eq!(rows.len(), 5);
    assert!(
        rows.iter().all(|r| r.attempts == 1),
        "a run was claimed twice"
    );
    let pids: BTreeSet<Option<i64>> = rows.iter().map(|r| r.pid).collect();
    assert_eq!(pids.len(), 2, "both workers ran runs: {pids:?}");
    // Every prune stage computed at most once per checkpoint.
    let mut built: BTreeMap<String, usize> = BTreeMap::new();
    for r in &rows {
        for st in s.stages(r.id).unwrap() {
            if st.stage == "prune" && st.status == come_repro::track::StageStatus::Finished {
                *built.entry(st.cache_key.clone().unwrap()).or_default() += 1;
            }
        }
    }
    assert_eq!(built.len(), 3, "{built:?}");
    assert!(built.values().all(|&n| n == 1), "{built:?}");

    // Bad device names (a usage error, from the flag's parser) and --force are refused
    // before any worker starts.
    let o = run_in(d.path(), &["grid", g, "--devices", "cpu,gpu7"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("unknown device `gpu7`"), "{err}");
    let o = run_in(d.path(), &["grid", g, "--devices", "cpu,cpu", "--force"]);
    assert_eq!(o.status.code(), Some(1));
}
