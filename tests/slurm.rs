//! `grid --slurm` against a real Slurm: the single-node cluster that
//! `scripts/slurm-local.sh` starts (scripts/test.sh starts it before the tests). Without a
//! cluster these tests fail and say how to start one; they are never skipped.

use come_repro::track::Status;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

mod common;
use common::bin::{ok, run_in, store_results, store_runs};

fn cluster_up() {
    let out = Command::new("sinfo").args(["-h", "-o", "%T"]).output();
    let ok = out
        .as_ref()
        .map(|o| {
            let s = String::from_utf8_lossy(&o.stdout);
            o.status.success() && ["idle", "mixed", "allocated"].iter().any(|t| s.contains(t))
        })
        .unwrap_or(false);
    assert!(
        ok,
        "no Slurm cluster is up here ({out:?}): start one with scripts/slurm-local.sh \
         (scripts/test.sh does this before the tests)"
    );
}

/// Four stories260K runs; `limit` sets how long each one evaluates.
fn write_grid(dir: &Path, limit: usize) -> PathBuf {
    let toml = format!(
        r#"dense = true
[base]
model = "{}"
[base.prune]
target_layers = 3
calib = {{ nrows = 16, seqlen = 64, max_sequences = 2 }}
[base.eval]
tasks = ["piqa", "arc_easy"]
limit = {limit}
ppl_seqlen = 64
ppl_windows = 2
[grids.methods]
axes = {{ "prune.method" = ["come", "shortgpt", "sleb"] }}
"#,
        common::stories().display()
    );
    let p = dir.join("g.toml");
    std::fs::write(&p, toml).unwrap();
    p
}

/// Submit grid `g` as an array of `shards` tasks; returns the job id.
fn submit(dir: &Path, g: &str, shards: usize) -> String {
    let n = shards.to_string();
    let args = [
        "grid",
        g,
        "--slurm",
        "--shards",
        &n,
        "--cpus-per-task",
        "1",
        "--mem",
        "1500",
    ];
    job_id(&ok(run_in(dir, &args)))
}

fn job_id(submit_output: &str) -> String {
    submit_output
        .lines()
        .find_map(|l| l.strip_prefix("submitted job array "))
        .and_then(|l| l.split(':').next())
        .unwrap_or_else(|| panic!("no job id in: {submit_output}"))
        .to_string()
}

/// Wait until no task of `job` is queued or running.
fn wait_for(job: &str, limit: Duration) {
    let t0 = Instant::now();
    loop {
        let q = Command::new("squeue")
            .args(["-h", "-j", job, "-o", "%i"])
            .output()
            .unwrap();
        if String::from_utf8_lossy(&q.stdout).trim().is_empty() {
            return;
        }
        assert!(
            t0.elapsed() < limit,
            "job {job} still queued after {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn merge(dir: &Path, n: usize) -> PathBuf {
    let merged = dir.join("merged.sqlite");
    let shards: Vec<String> = (0..n)
        .map(|i| format!("results/shards/g-{i}-of-{n}.sqlite"))
        .collect();
    let mut args = vec!["runs", "merge"];
    args.extend(shards.iter().map(String::as_str));
    let m = merged.display().to_string();
    args.extend(["--into", m.as_str()]);
    ok(run_in(dir, &args));
    merged
}

#[test]
fn job_array_of_three_shards_equals_one_process() {
    cluster_up();
    let d = tempfile::tempdir().unwrap();
    let grid = write_grid(d.path(), 4);
    let g = grid.to_str().unwrap();
    let job = submit(d.path(), g, 3);
    wait_for(&job, Duration::from_secs(600));
    let status = ok(run_in(d.path(), &["grid", g, "--status"]));
    assert!(status.contains("4 of 4 run(s) finished"), "{status}");
    let merged = merge(d.path(), 3);
    let one = d.path().join("one.sqlite");
    ok(run_in(
        d.path(),
        &["grid", g, "--db", one.to_str().unwrap()],
    ));
    assert_eq!(store_results(&merged), store_results(&one));
}

/// A task cancelled while it runs, then its index resubmitted: every run finishes, the
/// other shard's runs are not redone, and the cancelled run is taken over, not duplicated.
#[test]
fn cancelled_task_resumes_when_resubmitted() {
    cluster_up();
    let d = tempfile::tempdir().unwrap();
    let grid = write_grid(d.path(), 120);
    let g = grid.to_str().unwrap();
    let job = submit(d.path(), g, 2);
    let shard1 = d.path().join("results/shards/g-1-of-2.sqlite");
    // Cancel task 1 once one of its runs is running.
    let t0 = Instant::now();
    loop {
        let running =
            shard1.exists() && store_runs(&shard1).values().any(|r| r.0 == Status::Running);
        if running {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(300), "task 1 never ran");
        std::thread::sleep(Duration::from_millis(200));
    }
    let st = Command::new("scancel")
        .arg(format!("{job}_1"))
        .status()
        .unwrap();
    assert!(st.success());
    wait_for(&job, Duration::from_secs(600));
    let s0 = store_runs(&d.path().join("results/shards/g-0-of-2.sqlite"));
    let before1 = store_runs(&shard1);
    assert!(
        before1.values().any(|r| r.0 != Status::Finished),
        "task 1 finished before it was cancelled: {before1:?}"
    );
    let status = ok(run_in(d.path(), &["grid", g, "--status"]));
    assert!(status.contains("shards of 2 with work left: 1"), "{status}");

    let script = d.path().join("results/slurm/g/g-2.sbatch");
    let out = Command::new("sbatch")
        .args(["--parsable", "--array=1"])
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let job2 = String::from_utf8_lossy(&out.stdout).trim().to_string();
    wait_for(&job2, Duration::from_secs(600));
    let after1 = store_runs(&shard1);
    assert!(
        after1.values().all(|r| r.0 == Status::Finished),
        "{after1:?}"
    );
    // Finished before the cancel: untouched. Interrupted: taken over once.
    for (h, r) in &before1 {
        if r.0 == Status::Finished {
            assert_eq!(&after1[h], r, "a finished run was redone");
        } else {
            assert_eq!(
                after1[h].1,
                r.1 + 1,
                "an interrupted run was not taken over once"
            );
        }
    }
    assert_eq!(
        store_runs(&d.path().join("results/shards/g-0-of-2.sqlite")),
        s0
    );
    let merged = merge(d.path(), 2);
    let all = store_runs(&merged);
    assert_eq!(all.len(), 4);
    assert!(all.values().all(|r| r.0 == Status::Finished));
}
