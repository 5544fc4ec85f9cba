//! The run store: claim / skip / re-run, atomic finish, bad files, and several processes
//! claiming and finishing runs on one file.

use come_repro::experiment::Experiment;
use come_repro::grid::RunSpec;
use come_repro::prune::PruneConfig;
use come_repro::rng::SplitMix64;
use come_repro::track::store::{kinds, SCHEMA_VERSION};
use come_repro::track::{
    Artifact, Claim, Metric, RunFilter, StageRecord, StageStatus, Status, Store, StoreError,
};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

fn run(i: u64) -> RunSpec {
    let exp = Experiment {
        model: "m".into(),
        prune: Some(PruneConfig {
            sparsity: Some(0.3),
            seed: i,
            ..Default::default()
        }),
        ..Default::default()
    };
    RunSpec::new(format!("m/come/seed={i}"), "main", exp)
}

fn metrics(v: f64) -> Vec<Metric> {
    vec![
        Metric::new("piqa", "acc", v).with_stderr(0.01),
        Metric::new("piqa", "acc_norm", v + 0.01).with_stderr(0.01),
        Metric::new("piqa", "n", 100.0),
        Metric::new("wikitext2", "ppl_wikitext2", 12.5).with_context("n=3"),
    ]
}

fn raw(path: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open(path).unwrap()
}

#[test]
fn claim_skip_and_rerun() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("results/come.sqlite");
    let store = Store::open(&path).unwrap();
    let r = run(1);

    let Claim::Run(id) = store.claim(&r, false).unwrap() else {
        panic!("first claim must run")
    };
    let row = store.run(id).unwrap();
    assert_eq!((row.status, row.attempts), (Status::Running, 1));
    assert_eq!(row.pid, Some(i64::from(std::process::id())));
    assert_eq!(row.config, r.experiment.to_value());
    assert_eq!(
        store.params(id).unwrap().get("prune.seed"),
        Some(&serde_json::json!(1))
    );
    // A live owner (this process) keeps it.
    assert!(matches!(store.claim(&r, false).unwrap(), Claim::Busy { id: b, .. } if b == id));

    store.heartbeat(id).unwrap();
    let art = d.path().join("come.json");
    std::fs::write(&art, "{}").unwrap();
    let a = Artifact::from_path(&art, kinds::COME_JSON).unwrap();
    assert_eq!(
        a.sha256,
        "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
    );
    store
        .finish(id, &metrics(0.7), std::slice::from_ref(&a))
        .unwrap();
    let row = store.run(id).unwrap();
    assert_eq!(row.status, Status::Finished);
    assert!(row.finished.is_some());
    assert_eq!(store.metrics(id).unwrap(), metrics(0.7));
    assert_eq!(store.artifacts(id).unwrap(), vec![a]);

    // Finished: skipped unless forced; a forced re-run starts clean.
    assert_eq!(store.claim(&r, false).unwrap(), Claim::Skip(id));
    assert_eq!(store.claim(&r, true).unwrap(), Claim::Run(id));
    assert!(store.metrics(id).unwrap().is_empty());
    assert_eq!(store.run(id).unwrap().attempts, 2);

    // A failed run stays failed (reported with its error) until it is requeued or
    // forced; interrupted runs are claimed again.
    store.fail(id, "out of memory").unwrap();
    let row = store.run(id).unwrap();
    assert_eq!(
        (row.status, row.error.as_deref()),
        (Status::Failed, Some("out of memory"))
    );
    assert_eq!(
        store.claim(&r, false).unwrap(),
        Claim::Failed {
            id,
            error: Some("out of memory".into())
        }
    );
    assert_eq!(
        store.run(id).unwrap().attempts,
        2,
        "a refused claim is no attempt"
    );
    assert_eq!(
        store.requeue_failed(std::slice::from_ref(&r.hash)).unwrap(),
        1
    );
    assert_eq!(store.run(id).unwrap().status, Status::Pending);
    assert_eq!(
        store.requeue_failed(std::slice::from_ref(&r.hash)).unwrap(),
        0
    );
    assert_eq!(store.claim(&r, false).unwrap(), Claim::Run(id));
    store.interrupt(id).unwrap();
    assert_eq!(store.run(id).unwrap().status, Status::Interrupted);
    assert_eq!(store.claim(&r, false).unwrap(), Claim::Run(id));
    assert_eq!(store.run(id).unwrap().attempts, 4);
    // Not running any more: finishing it again is refused.
    store.finish(id, &metrics(0.5), &[]).unwrap();
    assert!(matches!(
        store.finish(id, &metrics(0.5), &[]),
        Err(StoreError::NotOwner { .. })
    ));
    assert!(matches!(
        store.heartbeat(id),
        Err(StoreError::NotOwner { .. })
    ));
    assert!(matches!(
        store.heartbeat(999),
        Err(StoreError::NoSuchRun { id: 999, .. })
    ));
}

#[test]
fn abandoned_runs_are_taken_over() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("s.sqlite");
    let store = Store::open(&path).unwrap();
    let (a, b, c) = (run(1), run(2), run(3));
    let ids: Vec<i64> = [&a, &b, &c]
        .iter()
        .map(|r| match store.claim(r, false).unwrap() {
            Claim::Run(id) => id,
            other => panic!("{other:?}"),
        })
        .collect();
    let db = raw(&path);
    // a: its process is gone (no such pid on this host).
    db.execute("UPDATE runs SET pid = 2147483000 WHERE id = ?1", [ids[0]])
        .unwrap();
    // b: another host, silent for an hour.
    db.execute(
        "UPDATE runs SET host = 'elsewhere', heartbeat = '2001-01-01T00:00:00.000Z' WHERE id = ?1",
        [ids[1]],
    )
    .unwrap();
    // c: another host with a fresh heartbeat: still owned.
    db.execute("UPDATE runs SET host = 'elsewhere' WHERE id = ?1", [ids[2]])
        .unwrap();

    assert_eq!(store.reap_stale().unwrap(), vec![ids[0], ids[1]]);
    assert_eq!(store.run(ids[0]).unwrap().status, Status::Interrupted);
    assert_eq!(store.claim(&a, false).unwrap(), Claim::Run(ids[0]));
    assert_eq!(store.claim(&b, false).unwrap(), Claim::Run(ids[1]));
    assert!(
        matches!(store.claim(&c, false).unwrap(), Claim::Busy { host: Some(h), .. } if h == "elsewhere")
    );
    // Owned elsewhere: this process may not finish it.
    assert!(matches!(
        store.finish(ids[2], &[], &[]),
        Err(StoreError::NotOwner { .. })
    ));

    // A run that went silent while claimed here is taken over after `stale_after`.
    let mut store = store;
    store.set_stale_after(Duration::from_millis(50));
    db.execute(
        "UPDATE runs SET host = ?2 WHERE id = ?1",
        rusqlite::params![ids[2], store.run(ids[0]).unwrap().host],
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(120));
    assert_eq!(store.claim(&c, false).unwrap(), Claim::Run(ids[2]));
}

#[test]
fn finish_is_all_or_nothing() {
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(d.path().join("s.sqlite")).unwrap();
    let Claim::Run(id) = store.claim(&run(1), false).unwrap() else {
        panic!()
    };
    // The third metric repeats the first one's key: the insert fails midway.
    let mut bad = metrics(0.6);
    bad.insert(2, Metric::new("piqa", "acc", 0.1));
    let art = Artifact {
        path: "x".into(),
        sha256: "0".repeat(64),
        kind: kinds::RESULTS_JSON.into(),
        bytes: None,
    };
    let e = store
        .finish(id, &bad, std::slice::from_ref(&art))
        .unwrap_err();
    assert!(e.to_string().contains("UNIQUE"), "{e}");
    assert!(store.metrics(id).unwrap().is_empty());
    assert!(store.artifacts(id).unwrap().is_empty());
    assert_eq!(store.run(id).unwrap().status, Status::Running);
    // NaN is refused before anything is written.
    let e = store
        .finish(
            id,
            &[
                Metric::new("piqa", "acc", 0.5),
                Metric::new("piqa", "acc_norm", f64::NAN),
            ],
            &[],
        )
        .unwrap_err();
    assert!(
        e.to_string().contains("NaN") && e.to_string().contains("piqa/acc_norm"),
        "{e}"
    );
    assert!(store.metrics(id).unwrap().is_empty());
    assert_eq!(store.run(id).unwrap().status, Status::Running);
    // A correct finish still works afterwards; a diverged perplexity is kept, an undefined
    // stderr becomes missing.
    let mut ok = metrics(0.6);
    ok.push(Metric::new("c4", "ppl_c4", f64::INFINITY).with_stderr(f64::NAN));
    store.finish(id, &ok, &[art]).unwrap();
    let got = store.metrics(id).unwrap();
    assert_eq!(got.len(), 5);
    assert_eq!(got[4], Metric::new("c4", "ppl_c4", f64::INFINITY));
}

#[test]
fn environment_stages_register_and_queries() {
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(d.path().join("s.sqlite")).unwrap();
    let runs: Vec<RunSpec> = (0..3).map(run).collect();
    assert_eq!(store.register(&runs).unwrap(), 3);
    assert_eq!(store.register(&runs).unwrap(), 0);
    // A grid that now names a run differently renames it; its id and hash stay.
    let mut renamed = runs.clone();
    renamed[2].name = "m/sub/come/seed=2".into();
    assert_eq!(store.register(&renamed).unwrap(), 0);
    let row = store.run(3).unwrap();
    assert_eq!(
        (row.name.as_str(), row.hash.as_str()),
        ("m/sub/come/seed=2", runs[2].hash.as_str())
    );
    store.register(&runs).unwrap();
    assert_eq!(
        store
            .runs(&RunFilter {
                status: Some(Status::Pending),
                ..Default::default()
            })
            .unwrap()
            .len(),
        3
    );
    let Claim::Run(a) = store.claim(&runs[0], false).unwrap() else {
        panic!()
    };
    let Claim::Run(b) = store.claim(&runs[1], false).unwrap() else {
        panic!()
    };

    let mut env = come_repro::track::env::collect();
    for k in [
        "crate.version",
        "git.sha",
        "git.dirty",
        "libtorch.version",
        "mkl.cpu_dispatch",
        "mkl.cbwr",
        "host",
        "cpus",
    ] {
        assert!(env.contains_key(k), "{k}");
    }
    env.insert("device".into(), "cpu".into());
    store.record_env(a, &env).unwrap();
    assert_eq!(store.environment(a).unwrap(), env);

    let st = StageRecord {
        stage: "prune".into(),
        status: StageStatus::Finished,
        seconds: Some(1.5),
        cache_key: runs[0].experiment.prune_hash(),
        output: Some("work/pruned/abc".into()),
    };
    store.record_stage(a, &st).unwrap();
    assert_eq!(store.stages(a).unwrap(), vec![st.clone()]);
    let key = st.cache_key.clone().unwrap();
    assert_eq!(store.cached_stage("prune", &key).unwrap(), Some((a, st)));
    assert_eq!(store.cached_stage("prune", "other").unwrap(), None);

    store.finish(a, &metrics(0.7), &[]).unwrap();
    store
        .finish(
            b,
            &[
                Metric::new("piqa", "acc", 0.6),
                Metric::new("boolq", "acc", 0.5),
            ],
            &[],
        )
        .unwrap();
    let diff = store.diff(a, b).unwrap();
    let pk: Vec<&str> = diff.params.iter().map(|p| p.0.as_str()).collect();
    assert_eq!(pk, ["prune.seed"]);
    let mk: BTreeMap<&str, (Option<f64>, Option<f64>)> = diff
        .metrics
        .iter()
        .map(|m| (m.0.as_str(), (m.1, m.2)))
        .collect();
    assert_eq!(mk.get("piqa/acc"), Some(&(Some(0.7), Some(0.6))));
    assert_eq!(mk.get("boolq/acc"), Some(&(None, Some(0.5))));
    assert_eq!(
        mk.get("wikitext2/ppl_wikitext2[n=3]"),
        Some(&(Some(12.5), None))
    );
    assert_eq!(
        store
            .runs(&RunFilter {
                name_contains: Some("seed=1".into()),
                ..Default::default()
            })
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        store.run_by_hash(&runs[2].hash).unwrap().map(|r| r.status),
        Some(Status::Pending)
    );

    // Export: one row per (run, metric), params as columns.
    let csv = d.path().join("out/all.csv");
    store.export_csv(&csv).unwrap();
    let text = std::fs::read_to_string(&csv).unwrap();
    let header = text.lines().next().unwrap();
    for col in [
        "run_id",
        "task",
        "metric",
        "value",
        "stderr",
        "prune.seed",
        "prune.sparsity",
        "eval.tasks",
        "model",
    ] {
        assert!(
            header.split(',').any(|h| h.trim_matches('"') == col),
            "{col} not in {header}"
        );
    }
    assert_eq!(text.lines().count(), 1 + 4 + 2);
    let pq = d.path().join("out/all.parquet");
    store.export_parquet(&pq).unwrap();
    use polars::prelude::SerReader;
    let df = polars::prelude::ParquetReader::new(std::fs::File::open(&pq).unwrap())
        .finish()
        .unwrap();
    assert_eq!(df.height(), 6);
    let seeds = df
        .column("prune.seed")
        .unwrap()
        .i64()
        .unwrap()
        .into_no_null_iter()
        .collect::<Vec<_>>();
    assert_eq!(seeds, [0, 0, 0, 0, 1, 1]);
}

#[test]
fn bad_files_give_clear_errors() {
    let d = tempfile::tempdir().unwrap();
    // Not SQLite at all.
    let p = d.path().join("notes.txt");
    std::fs::write(&p, "hello, this is not a database at all").unwrap();
    let e = Store::open(&p).unwrap_err();
    assert!(matches!(e, StoreError::NotSqlite { .. }), "{e}");
    assert!(
        e.to_string().contains("notes.txt") && e.to_string().contains("not an SQLite database"),
        "{e}"
    );

    // SQLite magic, garbage after it.
    let p = d.path().join("corrupt.sqlite");
    let mut bytes = b"SQLite format 3\0".to_vec();
    let mut rng = SplitMix64::new(1);
    bytes.extend((0..8192).map(|_| rng.next_u64() as u8));
    std::fs::write(&p, bytes).unwrap();
    let e = Store::open(&p).unwrap_err();
    assert!(matches!(e, StoreError::Corrupt { .. }), "{e}");
    assert!(e.to_string().contains("corrupt.sqlite"), "{e}");

    // A store whose pages were overwritten after creation.
    let p = d.path().join("damaged.sqlite");
    {
        let s = Store::open(&p).unwrap();
        s.register(&(0..50).map(run).collect::<Vec<_>>()).unwrap();
    }
    let _ = std::fs::remove_file(d.path().join("damaged.sqlite-wal"));
    let mut bytes = std::fs::read(&p).unwrap();
    for b in bytes.iter_mut().skip(100) {
        *b = 0xA5;
    }
    std::fs::write(&p, bytes).unwrap();
    let e = Store::open(&p)
        .and_then(|s| s.runs(&RunFilter::default()).map(|_| ()))
        .unwrap_err();
    assert!(e.to_string().contains("damaged.sqlite"), "{e}");
    assert!(matches!(e, StoreError::Corrupt { .. }), "{e}");

    // Another application's SQLite database.
    let p = d.path().join("foreign.sqlite");
    raw(&p)
        .execute_batch("CREATE TABLE t (x INTEGER); INSERT INTO t VALUES (1);")
        .unwrap();
    let e = Store::open(&p).unwrap_err();
    assert!(matches!(e, StoreError::Foreign { found: 0, .. }), "{e}");
    assert!(
        e.to_string().contains("foreign.sqlite") && e.to_string().contains("another application"),
        "{e}"
    );
    let p = d.path().join("foreign2.sqlite");
    raw(&p)
        .execute_batch("PRAGMA application_id = 42;")
        .unwrap();
    assert!(matches!(
        Store::open(&p),
        Err(StoreError::Foreign { found: 42, .. })
    ));

    // A store from a newer version of the program.
    let p = d.path().join("newer.sqlite");
    drop(Store::open(&p).unwrap());
    raw(&p)
        .execute_batch(&format!("PRAGMA user_version = {};", SCHEMA_VERSION + 5))
        .unwrap();
    let e = Store::open(&p).unwrap_err();
    assert!(matches!(e, StoreError::TooNew { .. }), "{e}");
    let text = e.to_string();
    assert!(
        text.contains("newer.sqlite")
            && text.contains(&format!("{}", SCHEMA_VERSION + 5))
            && text.contains("newer"),
        "{text}"
    );

    // An empty file is a new store; reopening keeps the data; the schema is versioned.
    let p = d.path().join("empty.sqlite");
    std::fs::write(&p, b"").unwrap();
    Store::open(&p).unwrap().register(&[run(1)]).unwrap();
    assert_eq!(
        Store::open(&p)
            .unwrap()
            .runs(&RunFilter::default())
            .unwrap()
            .len(),
        1
    );
    let db = raw(&p);
    let v: i64 = db
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    let mode: String = db
        .pragma_query_value(None, "journal_mode", |r| r.get(0))
        .unwrap();
    assert_eq!((v, mode.as_str()), (SCHEMA_VERSION, "wal"));
    // The crate error wraps store errors.
    let e: come_repro::Error = Store::open(d.path().join("notes.txt")).unwrap_err().into();
    assert!(e.to_string().contains("notes.txt"));
}

// ---------------------------------------------------------------------------------------
// Concurrency: several processes (this test binary re-invoked) and several threads.

const N_RUNS: u64 = 24;

/// Claim and finish every run it can; prints the ids it finished. Runs only when started
/// by `processes_share_one_store` (the variable names the store).
#[test]
fn store_worker() {
    let Ok(path) = std::env::var("COME_STORE_WORKER") else {
        return;
    };
    let path = Path::new(&path);
    // Start together: announce readiness, wait for the parent's signal.
    let dir = path.parent().unwrap();
    std::fs::write(dir.join(format!("ready.{}", std::process::id())), "").unwrap();
    let t0 = std::time::Instant::now();
    while !dir.join("go").exists() && t0.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(2));
    }
    let finished = work(path, u64::from(std::process::id()));
    println!(
        "FINISHED {}",
        finished
            .iter()
            .map(i64::to_string)
            .collect::<Vec<_>>()
            .join(",")
    );
}

fn work(path: &Path, seed: u64) -> Vec<i64> {
    let store = Store::open(path).unwrap();
    let mut order: Vec<u64> = (0..N_RUNS).collect();
    SplitMix64::new(seed).shuffle(&mut order);
    let mut done = Vec::new();
    for i in order {
        match store.claim(&run(i), false).unwrap() {
            Claim::Run(id) => {
                store.heartbeat(id).unwrap();
                // Stand-in for the run's work, so that workers overlap.
                std::thread::sleep(Duration::from_millis(4));
                store
                    .record_env(
                        id,
                        &BTreeMap::from([("worker".to_string(), seed.to_string())]),
                    )
                    .unwrap();
                store.finish(id, &metrics(i as f64 / 100.0), &[]).unwrap();
                done.push(id);
            }
            Claim::Skip(_) | Claim::Failed { .. } | Claim::Busy { .. } => {}
        }
    }
    done
}

fn check_all_finished_once(path: &Path, finished: &[i64]) {
    let store = Store::open(path).unwrap();
    let rows = store.runs(&RunFilter::default()).unwrap();
    assert_eq!(rows.len() as u64, N_RUNS);
    assert!(
        rows.iter()
            .all(|r| r.status == Status::Finished && r.attempts == 1),
        "{rows:?}"
    );
    let unique: BTreeSet<i64> = finished.iter().copied().collect();
    assert_eq!(finished.len(), unique.len(), "a run was finished twice");
    assert_eq!(unique, rows.iter().map(|r| r.id).collect());
    for r in &rows {
        assert_eq!(store.metrics(r.id).unwrap().len(), 4);
    }
}

#[test]
fn processes_share_one_store() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("shared.sqlite");
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..4)
        .map(|_| {
            std::process::Command::new(&exe)
                .args(["store_worker", "--exact", "--nocapture", "--test-threads=1"])
                .env("COME_STORE_WORKER", &path)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let t0 = std::time::Instant::now();
    let ready = || {
        std::fs::read_dir(d.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with("ready.")
            })
            .count()
    };
    while ready() < children.len() && t0.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(5));
    }
    std::fs::write(d.path().join("go"), "").unwrap();
    let mut finished = Vec::new();
    let mut busy_workers = 0;
    for c in children {
        let out = c.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "worker failed:\n{stdout}\n{stderr}");
        assert!(
            !stdout.contains("locked") && !stderr.contains("locked"),
            "{stdout}{stderr}"
        );
        // libtest prints the test name on the same line.
        let line = stdout
            .lines()
            .find_map(|l| l.split_once("FINISHED ").map(|x| x.1.trim()))
            .unwrap_or_else(|| panic!("no result line:\n{stdout}"));
        let mine: Vec<i64> = line
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|s| s.parse::<i64>().unwrap())
            .collect();
        busy_workers += usize::from(!mine.is_empty());
        finished.extend(mine);
    }
    check_all_finished_once(&path, &finished);
    // Started together, the workers really did share the work.
    assert!(
        busy_workers >= 2,
        "only {busy_workers} worker finished runs"
    );
}

#[test]
fn threads_share_one_store() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("threads.sqlite");
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let p = path.clone();
            std::thread::spawn(move || work(&p, 1000 + t))
        })
        .collect();
    let finished: Vec<i64> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    check_all_finished_once(&path, &finished);
}

/// A store as the previous schema (version 2) left it: this schema without the column
/// version 3 added. Built from a current store, as SQLite can drop the column again.
fn version_2_store(path: &Path) {
    let s = Store::open(path).unwrap();
    let Claim::Run(id) = s.claim(&run(1), false).unwrap() else {
        panic!("a new run must be claimed")
    };
    let doc = come_repro::track::DocScore {
        task: "piqa".into(),
        doc_id: 7,
        acc: 1.0,
        acc_norm: 0.0,
    };
    s.finish_scored(id, &metrics(0.5), &[], &[doc]).unwrap();
    drop(s);
    raw(path)
        .execute_batch("ALTER TABLE runs DROP COLUMN identity_version; PRAGMA user_version = 2;")
        .unwrap();
}

#[test]
fn reading_leaves_a_store_as_it_is_and_writing_migrates_it() {
    let identity = i64::from(come_repro::experiment::IDENTITY_VERSION);
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("old.sqlite");
    version_2_store(&p);
    let before = std::fs::read(&p).unwrap();

    // Reading: the old file is read as it is, nothing is written, no side files remain.
    let s = Store::open_read(&p).unwrap();
    assert_eq!(s.schema_version(), 2);
    let rows = s.runs(&RunFilter::default()).unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0].status, rows[0].identity_version),
        (Status::Finished, 1)
    );
    assert_eq!(s.doc_scores(rows[0].id).unwrap().len(), 1);
    assert_eq!(s.metrics(rows[0].id).unwrap().len(), 4);
    // A write through a reading handle is refused by SQLite, not carried out.
    assert!(s.register(&[run(2)]).is_err());
    drop(s);
    assert!(
        std::fs::read(&p).unwrap() == before,
        "reading changed the file"
    );
    for side in ["old.sqlite-wal", "old.sqlite-shm"] {
        assert!(!d.path().join(side).exists(), "{side} left behind");
    }

    // Merging the old store into a new one copies its runs and documents as they are.
    let merged = Store::open(d.path().join("merged.sqlite")).unwrap();
    let r = merged.merge_from(&p).unwrap();
    assert_eq!(r.added, 1);
    let m = merged.runs(&RunFilter::default()).unwrap();
    assert_eq!(
        (m[0].hash.as_str(), m[0].identity_version),
        (rows[0].hash.as_str(), 1)
    );
    assert_eq!(merged.doc_scores(m[0].id).unwrap().len(), 1);
    assert!(
        std::fs::read(&p).unwrap() == before,
        "merging changed the shard"
    );

    // Writing: opening migrates; old runs keep version 1, new runs get this binary's.
    let s = Store::open(&p).unwrap();
    assert_eq!(s.schema_version(), SCHEMA_VERSION);
    s.register(&[run(2)]).unwrap();
    let rows = s.runs(&RunFilter::default()).unwrap();
    let versions: Vec<i64> = rows.iter().map(|r| r.identity_version).collect();
    assert_eq!(versions, vec![1, identity]);
    assert_eq!(
        Store::open_read(&p).unwrap().schema_version(),
        SCHEMA_VERSION
    );
}

#[test]
fn reading_a_missing_or_empty_store_is_an_error_not_a_new_store() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("typo/come.sqlite");
    let e = Store::open_read(&p).unwrap_err();
    assert!(matches!(e, StoreError::Missing { .. }), "{e}");
    assert!(e.to_string().contains("typo/come.sqlite"), "{e}");
    assert!(
        !d.path().join("typo").exists(),
        "reading created a directory"
    );

    let p = d.path().join("empty.sqlite");
    std::fs::write(&p, b"").unwrap();
    let e = Store::open_read(&p).unwrap_err();
    assert!(e.to_string().contains("empty"), "{e}");
    assert_eq!(std::fs::metadata(&p).unwrap().len(), 0);

    let p = d.path().join("notes.txt");
    std::fs::write(&p, "not a database").unwrap();
    assert!(matches!(
        Store::open_read(&p),
        Err(StoreError::NotSqlite { .. })
    ));
}
