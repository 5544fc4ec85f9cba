//! `runs export --mlflow` against a real MLflow tracking server: the one that
//! `scripts/mlflow-local.sh` starts on 127.0.0.1 (scripts/test.sh starts it before the
//! tests; `COME_MLFLOW_URL` points elsewhere). Without a server these tests fail and say
//! how to start one; they are never skipped. Everything is read back through MLflow's own
//! REST API and compared with the store.

use come_repro::experiment::{EvalConfig, Experiment};
use come_repro::grid::RunSpec;
use come_repro::track::mlflow::{metric_key, Client};
use come_repro::track::{Artifact, Claim, Metric, Store};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

mod common;

fn url() -> String {
    std::env::var("COME_MLFLOW_URL").unwrap_or_else(|_| "http://127.0.0.1:5055".into())
}

fn server_up() -> String {
    let u = url();
    let r = ureq::get(&format!("{u}/health")).call();
    assert!(
        r.is_ok(),
        "no MLflow server answers at {u} ({r:?}): start one with scripts/mlflow-local.sh \
         (scripts/test.sh does this before the tests)"
    );
    u
}

fn spec(limit: usize) -> RunSpec {
    let exp = Experiment {
        model: "m".into(),
        eval: EvalConfig {
            limit: Some(limit),
            ..Default::default()
        },
        ..Default::default()
    };
    RunSpec::new(format!("m/limit={limit}"), "main", exp)
}

/// A few metrics, and a loss curve longer than one MLflow batch (1000 metrics).
fn metrics() -> Vec<Metric> {
    let mut m = vec![
        Metric::new("piqa", "acc", 0.625).with_stderr(0.05),
        Metric::new("wikitext2", "ppl_wikitext2", 21.5).with_context("seqlen=2048"),
        Metric::new("", "distill_loss", 0.9).with_context("layer=3"),
        Metric::new("", "distill_loss", 0.4)
            .with_context("layer=3")
            .with_step(2),
    ];
    for step in 1..=1100 {
        m.push(
            Metric::new("", "train_loss", 1.0 / step as f64)
                .with_context("unit=0")
                .with_step(step),
        );
    }
    m
}

/// A store of two runs: one finished with metrics, an artifact and an environment, one
/// failed.
fn fill(dir: &Path) -> (Store, i64, i64) {
    let store = Store::open(dir.join("s.sqlite")).unwrap();
    let Claim::Run(a) = store.claim(&spec(10), false).unwrap() else {
        panic!("claim")
    };
    let file = dir.join("come.json");
    std::fs::write(&file, "{\"pairs\": [[3, 4]]}").unwrap();
    let art = Artifact::from_path(&file, "come_json").unwrap();
    let env = BTreeMap::from([("git.sha".to_string(), "0123abcd".to_string())]);
    store.record_env(a, &env).unwrap();
    store.finish(a, &metrics(), &[art]).unwrap();
    let Claim::Run(b) = store.claim(&spec(20), false).unwrap() else {
        panic!("claim")
    };
    store.fail(b, "boom").unwrap();
    (store, a, b)
}

fn export(db: &Path, url: &str, experiment: &str) -> std::process::Output {
    export_with(db, url, experiment, &[])
}

fn export_with(db: &Path, url: &str, experiment: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "runs",
        "export",
        "--db",
        db.to_str().unwrap(),
        "--mlflow",
        url,
        "--experiment",
        experiment,
    ];
    args.extend_from_slice(extra);
    common::bin::run(&args)
}

/// A file of a run through the artifact proxy.
fn artifact(url: &str, run: &Value, rel: &str) -> String {
    let uri = run["info"]["artifact_uri"].as_str().unwrap();
    let root = uri
        .strip_prefix("mlflow-artifacts:")
        .unwrap()
        .trim_start_matches('/');
    ureq::get(&format!(
        "{url}/api/2.0/mlflow-artifacts/artifacts/{root}/{rel}"
    ))
    .call()
    .unwrap()
    .into_string()
    .unwrap()
}

/// The MLflow run carrying config hash `hash`.
fn remote_run(c: &Client, exp: &str, hash: &str) -> Value {
    let runs = c.find_runs(exp, "come.config_hash", hash).unwrap();
    assert_eq!(runs.len(), 1, "{runs:?}");
    runs[0].clone()
}

fn kv(run: &Value, what: &str) -> BTreeMap<String, String> {
    run["data"][what]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            (
                p["key"].as_str().unwrap().to_string(),
                p["value"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn export_round_trips_and_is_idempotent() {
    let url = server_up();
    let d = tempfile::tempdir().unwrap();
    let (store, a, b) = fill(d.path());
    let db = d.path().join("s.sqlite");
    // A new experiment each time: the server outlives the test (same config hashes).
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let experiment = format!("come-test-{}-{nanos}", std::process::id());
    // Tables (a directory with a subdirectory) go to the parent run.
    let tables = d.path().join("tables");
    std::fs::create_dir_all(tables.join("figures")).unwrap();
    std::fs::write(tables.join("main.md"), "| a | b |\n").unwrap();
    std::fs::write(tables.join("figures/curve.svg"), "<svg/>").unwrap();
    let out = common::bin::ok(export_with(
        &db,
        &url,
        &experiment,
        &["--tables", tables.to_str().unwrap()],
    ));
    assert!(
        out.contains("2 runs created, 0 updated, 0 unchanged"),
        "{out}"
    );

    let c = Client::new(&url);
    let exp = c.experiment_id(&experiment).unwrap();
    let ra = store.run(a).unwrap();
    let run = remote_run(&c, &exp, &ra.hash);
    let id = run["info"]["run_id"].as_str().unwrap().to_string();
    assert_eq!(run["info"]["status"], "FINISHED");
    assert_eq!(run["info"]["run_name"], ra.name.as_str());
    // Every param, as the store flattens the config.
    let params = kv(&run, "params");
    let want: BTreeMap<String, String> = store
        .params(a)
        .unwrap()
        .into_iter()
        .map(|(k, v)| {
            let s = match v {
                Value::String(s) => s,
                other => other.to_string(),
            };
            (k, s)
        })
        .collect();
    assert_eq!(params, want);
    // Every metric with its steps (each key's whole history), and the standard error
    // beside it.
    let mut want: BTreeMap<String, Vec<(i64, f64)>> = BTreeMap::new();
    for m in store.metrics(a).unwrap() {
        want.entry(metric_key(&m))
            .or_default()
            .push((m.step, m.value));
        if let Some(se) = m.stderr {
            want.entry(format!("{}_stderr", metric_key(&m)))
                .or_default()
                .push((m.step, se));
        }
    }
    assert_eq!(want["train_loss/unit_0"].len(), 1100);
    assert_eq!(want["distill_loss/layer_3"].len(), 2);
    for (key, mut points) in want {
        let mut got: Vec<(i64, f64)> = c
            .metric_history(&id, &key)
            .unwrap()
            .iter()
            .map(|h| {
                (
                    h["step"].as_i64().unwrap_or(0),
                    h["value"].as_f64().unwrap(),
                )
            })
            .collect();
        got.sort_by(|x, y| x.partial_cmp(y).unwrap());
        points.sort_by(|x, y| x.partial_cmp(y).unwrap());
        assert_eq!(got.len(), points.len(), "{key}");
        // The server gives back some values a few ulps off (1/11 as ...093, not ...091).
        let diff = got
            .iter()
            .zip(&points)
            .find(|(g, p)| g.0 != p.0 || (g.1 - p.1).abs() > 1e-12 * p.1.abs().max(1.0));
        assert!(diff.is_none(), "{key}: first difference {diff:?}");
    }
    let tags = kv(&run, "tags");
    assert_eq!(tags["come.config_hash"], ra.hash);
    assert_eq!(tags["mlflow.source.git.commit"], "0123abcd");
    assert_eq!(tags["come.status"], "finished");
    assert_eq!(
        tags["come.identity_version"],
        come_repro::experiment::IDENTITY_VERSION.to_string()
    );
    let parent = tags["mlflow.parentRunId"].clone();
    let parent_run = c.get_run(&parent).unwrap()["run"].clone();
    assert_eq!(parent_run["info"]["status"], "FINISHED");
    assert_eq!(artifact(&url, &parent_run, "tables/main.md"), "| a | b |\n");
    assert_eq!(
        artifact(&url, &parent_run, "tables/figures/curve.svg"),
        "<svg/>"
    );
    // The run's results JSON: its config and every metric as the store keeps them.
    let record: Value = serde_json::from_str(&artifact(&url, &run, "results/run.json")).unwrap();
    assert_eq!(record["hash"], ra.hash.as_str());
    assert_eq!(record["status"], "finished");
    assert_eq!(record["config"], ra.config);
    // serde_json reads some floats back an ulp off, so values compare to 1e-12.
    let stored = store.metrics(a).unwrap();
    let sent = record["metrics"].as_array().unwrap();
    assert_eq!(sent.len(), stored.len());
    for (s, m) in sent.iter().zip(&stored) {
        let same = s["task"] == m.task.as_str()
            && s["name"] == m.name.as_str()
            && s["context"] == m.context.as_str()
            && s["step"] == m.step
            && (s["value"].as_f64().unwrap() - m.value).abs() <= 1e-12 * m.value.abs().max(1.0)
            && s["stderr"].as_f64() == m.stderr;
        assert!(same, "{s} vs {m:?}");
    }
    // The artifact went through the proxy, byte for byte.
    let uri = run["info"]["artifact_uri"].as_str().unwrap();
    let root = uri
        .strip_prefix("mlflow-artifacts:")
        .unwrap()
        .trim_start_matches('/');
    let got = ureq::get(&format!(
        "{url}/api/2.0/mlflow-artifacts/artifacts/{root}/come_json/come.json"
    ))
    .call()
    .unwrap()
    .into_string()
    .unwrap();
    assert_eq!(got, "{\"pairs\": [[3, 4]]}");
    let failed = remote_run(&c, &exp, &store.run(b).unwrap().hash);
    assert_eq!(failed["info"]["status"], "FAILED");
    assert_eq!(kv(&failed, "tags")["come.error"], "boom");
    assert_eq!(kv(&failed, "tags")["mlflow.parentRunId"], parent);

    // Again: nothing new.
    let out = common::bin::ok(export(&db, &url, &experiment));
    assert!(
        out.contains("0 runs created, 0 updated, 2 unchanged"),
        "{out}"
    );
    assert_eq!(
        c.find_runs(&exp, "mlflow.parentRunId", &parent)
            .unwrap()
            .len(),
        2
    );

    // The failed run finishes after a rerun: its MLflow run is updated, not duplicated.
    let Claim::Run(b2) = store.claim(&spec(20), true).unwrap() else {
        panic!("claim")
    };
    store.finish(b2, &metrics(), &[]).unwrap();
    let out = common::bin::ok(export(&db, &url, &experiment));
    assert!(
        out.contains("0 runs created, 1 updated, 1 unchanged"),
        "{out}"
    );
    let rerun = remote_run(&c, &exp, &store.run(b2).unwrap().hash);
    assert_eq!(rerun["info"]["status"], "FINISHED");
    let rid = rerun["info"]["run_id"].as_str().unwrap();
    assert_eq!(c.metric_history(rid, "piqa/acc").unwrap().len(), 1);
    assert_eq!(
        c.metric_history(rid, "train_loss/unit_0").unwrap().len(),
        1100
    );
}

fn sha(p: &Path) -> String {
    come_repro::hashing::sha256_hex(&std::fs::read(p).unwrap())
}

/// A server that is down or answers an error: a clear error, nothing written to the store.
#[test]
fn server_errors_are_clear_and_leave_the_store_alone() {
    let url = server_up();
    let d = tempfile::tempdir().unwrap();
    let (store, _, _) = fill(d.path());
    drop(store);
    let db = d.path().join("s.sqlite");
    let before = sha(&db);
    let down = export(&db, "http://127.0.0.1:9", "come-down");
    let err = String::from_utf8_lossy(&down.stderr);
    assert!(!down.status.success());
    assert!(
        err.contains("unreachable") && err.contains("127.0.0.1:9"),
        "{err}"
    );
    let missing = export(&db, &format!("{url}/no-such-prefix"), "come-404");
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(!missing.status.success());
    assert!(err.contains("answered HTTP 404"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(sha(&db), before);
    // Table files that do not exist: refused before anything is sent (the server is down
    // here, so a request would fail with another message).
    let gone = d.path().join("no-tables");
    let o = export_with(
        &db,
        "http://127.0.0.1:9",
        "come-x",
        &["--tables", gone.to_str().unwrap()],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("no-tables") && err.contains("no such table"),
        "{err}"
    );
}
