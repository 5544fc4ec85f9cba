//! Faults while writing: the binary runs with a file-size limit (RLIMIT_FSIZE, with
//! SIGXFSZ ignored), so the kernel fails its writes past the limit with EFBIG, as a full
//! disk fails them with ENOSPC. Each command must stop with a clear error, leave no
//! partial artifact where a later run would trust it, and lose no finished run from the
//! store; after the fault, the same command without the limit completes.

use come_repro::track::{RunFilter, Status, Store};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common;

const BIN: &str = env!("CARGO_BIN_EXE_come-repro");

/// Run the binary with files limited to `kib` KiB (`None`: no limit).
fn run(kib: Option<u64>, args: &[&str]) -> Output {
    let mut c = match kib {
        // dash's `ulimit -f` counts 512-byte blocks; an ignored SIGXFSZ is inherited
        // through exec, so an oversized write returns EFBIG instead of killing.
        Some(k) => {
            let mut c = Command::new("sh");
            c.args([
                "-c",
                "ulimit -f \"$1\"; shift; trap '' XFSZ; exec \"$@\"",
                "sh",
            ])
            .arg((k * 2).to_string())
            .arg(BIN);
            c
        }
        None => Command::new(BIN),
    };
    c.args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Failed with exit 1, no panic, and every `wants` in stderr.
fn failed_cleanly(out: &Output, wants: &[&str]) -> String {
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    assert!(!err.contains("panicked"), "{err}");
    for w in wants {
        assert!(err.contains(w), "`{w}` not in: {err}");
    }
    err
}

/// Every path under `dir` (recursively).
fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(tree(&p));
            }
            out.push(p);
        }
    }
    out
}

fn no_partials(dir: &Path) {
    let left: Vec<_> = tree(dir)
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("partial"))
        .collect();
    assert!(left.is_empty(), "partial files left behind: {left:?}");
}

#[test]
fn import_on_a_full_disk_leaves_nothing() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("stories");
    let bin = come_repro::paths::stories260k_bin();
    let tok = come_repro::paths::stories260k_tok();
    let args = [
        "import",
        "llama2c",
        s(&bin),
        "--tokenizer",
        s(&tok),
        "--out",
        s(&out),
    ];
    // The weights are about 1 MB: 256 KiB fails them.
    failed_cleanly(
        &run(Some(256), &args),
        &["File too large", "model.safetensors"],
    );
    assert!(!out.exists(), "a failed import left {}", out.display());
    no_partials(d.path());
    let ok = run(None, &args);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(out.join("config.json").exists());
}

#[test]
fn prune_on_a_full_disk_leaves_nothing() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("pruned");
    let m = common::stories();
    let args = [
        "prune",
        "--model",
        s(&m),
        "--out",
        s(&out),
        "--target-layers",
        "3",
        "--calib-rows",
        "8",
        "--calib-seqlen",
        "64",
        "--calib-seqs",
        "2",
    ];
    failed_cleanly(&run(Some(256), &args), &["File too large"]);
    assert!(!out.exists());
    no_partials(d.path());
    let ok = run(None, &args);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(out.join("come.json").exists());
}

fn write_grid(dir: &Path) -> PathBuf {
    let toml = format!(
        r#"dense = true
[base]
model = "{}"
[base.prune]
target_layers = 3
calib = {{ nrows = 8, seqlen = 64, max_sequences = 2 }}
[base.eval]
tasks = ["boolq"]
limit = 2
ppl_seqlen = 64
ppl_windows = 1
"#,
        common::stories().display()
    );
    let p = dir.join("grid.toml");
    std::fs::write(&p, toml).unwrap();
    p
}

/// name -> status of every run in the store.
fn statuses(db: &Path) -> BTreeMap<String, Status> {
    let s = Store::open(db).unwrap();
    s.runs(&RunFilter::default())
        .unwrap()
        .into_iter()
        .map(|r| (r.name, r.status))
        .collect()
}

fn finished_at(db: &Path) -> Vec<(String, Option<String>)> {
    let s = Store::open(db).unwrap();
    s.runs(&RunFilter {
        status: Some(Status::Finished),
        ..Default::default()
    })
    .unwrap()
    .into_iter()
    .map(|r| (r.hash, r.finished))
    .collect()
}

/// The checkpoint cache on a full disk: the pruned run fails cleanly and is recorded as
/// failed, the finished dense run stays finished, the cache holds no partial checkpoint,
/// and the next unlimited run finishes the pruned run without redoing the dense one.
/// Then the store itself on a full disk: the grid stops with an error naming the store,
/// and both finished runs are still there, unchanged.
#[test]
fn grid_cache_and_store_on_a_full_disk() {
    let d = tempfile::tempdir().unwrap();
    let grid = write_grid(d.path());
    let (db, cache) = (d.path().join("s.sqlite"), d.path().join("cache"));
    let grid_args = |only: Option<&'static str>| {
        let mut a = vec![
            "grid".to_string(),
            s(&grid).into(),
            "--db".into(),
            s(&db).into(),
            "--cache".into(),
            s(&cache).into(),
        ];
        if let Some(o) = only {
            a.extend(["--only".into(), o.into()]);
        }
        a
    };
    fn argv(a: &[String]) -> Vec<&str> {
        a.iter().map(String::as_str).collect()
    }
    let dense = run(None, &argv(&grid_args(Some("dense"))));
    assert!(
        dense.status.success(),
        "{}",
        String::from_utf8_lossy(&dense.stderr)
    );
    let before = finished_at(&db);
    assert_eq!(before.len(), 1);

    let err = failed_cleanly(
        &run(Some(256), &argv(&grid_args(None))),
        &["1 run(s) failed"],
    );
    assert!(err.contains("File too large"), "{err}");
    let st = statuses(&db);
    assert_eq!(
        st.values().filter(|s| **s == Status::Finished).count(),
        1,
        "{st:?}"
    );
    assert_eq!(
        st.values().filter(|s| **s == Status::Failed).count(),
        1,
        "{st:?}"
    );
    assert_eq!(finished_at(&db), before, "the finished run changed");
    no_partials(&cache);
    let trusted: Vec<_> = tree(&cache)
        .into_iter()
        .filter(|p| p.ends_with("config.json"))
        .collect();
    assert!(
        trusted.is_empty(),
        "a checkpoint was left in the cache: {trusted:?}"
    );

    // A failed run is not retried unless asked: the grid reports it and exits non-zero.
    let again = run(None, &argv(&grid_args(None)));
    let log = String::from_utf8_lossy(&again.stderr);
    assert!(!again.status.success(), "{log}");
    assert!(
        log.contains("0 ran, 1 already finished, 0 failed, 1 failed earlier")
            && log.contains("File too large")
            && log.contains("--retry-failed"),
        "{log}"
    );
    let mut retry = grid_args(None);
    retry.push("--retry-failed".into());
    let ok = run(None, &argv(&retry));
    let log = String::from_utf8_lossy(&ok.stderr);
    assert!(ok.status.success(), "{log}");
    assert!(log.contains("1 ran, 1 already finished"), "{log}");
    let all = finished_at(&db);
    assert_eq!(all.len(), 2);
    assert!(before.iter().all(|b| all.contains(b)));

    // The store on a full disk: a forced rerun must write to it, and cannot (4 KiB is
    // less than one write-ahead-log frame).
    let mut forced = grid_args(Some("dense"));
    forced.push("--force".into());
    let out = run(Some(4), &argv(&forced));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && !err.contains("panicked"), "{err}");
    assert!(err.contains(s(&db)), "the store is not named: {err}");
    assert_eq!(
        finished_at(&db),
        all,
        "finished runs changed after a failed store write"
    );
}
