//! The regression baseline (`come-repro check`): every run's metrics, by run name, with
//! a tolerance per metric name. Reading the store's finished runs, writing a new baseline
//! and comparing against one live here; the command line only runs the grid and prints.

use super::{RunFilter, Status, Store};
use crate::error::{Error, Result};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::path::Path;

/// Metrics of each run, by run name.
pub type RunMetrics = BTreeMap<String, BTreeMap<String, f64>>;

/// The metrics of the finished runs among `names` (run hash -> name), leaving out
/// measurements of the machine (seconds, memory), which no baseline can fix.
pub fn finished_metrics(store: &Store, names: &BTreeMap<String, String>) -> Result<RunMetrics> {
    let mut out = RunMetrics::new();
    let finished = RunFilter {
        status: Some(Status::Finished),
        ..Default::default()
    };
    for row in store.runs(&finished)? {
        let Some(name) = names.get(&row.hash) else {
            continue;
        };
        let m = out.entry(name.clone()).or_default();
        for x in store.metrics(row.id)? {
            if !crate::names::is_machine_measurement(&x.key()) {
                m.insert(x.key(), x.value);
            }
        }
    }
    Ok(out)
}

/// Tolerances when a baseline is first written. Accuracies may move by one item (0.05 on
/// 20 documents) when a near-tie flips on another CPU's float rounding; perplexity
/// catches any real change of the logits.
fn default_tolerance() -> Value {
    json!({
        "default": {"abs": 1e-6},
        "acc": {"abs": 0.051},
        "acc_norm": {"abs": 0.051},
        "ppl_wikitext2": {"rel": 1e-3},
        "distill_loss": {"rel": 1e-2},
        "distill_val_loss": {"rel": 1e-2},
        "params": {"abs": 0.0},
        "layers": {"abs": 0.0},
        "layers_removed": {"abs": 0.0},
        "n": {"abs": 0.0},
    })
}

/// The baseline to write: `current`'s runs with the old file's tolerances. With
/// `keep_others` (a check of selected runs), the old file's other runs stay.
pub fn updated(old: Option<&Value>, grid: &Path, current: &RunMetrics, keep_others: bool) -> Value {
    let tol = old
        .and_then(|o| o.get("tolerance").cloned())
        .unwrap_or_else(default_tolerance);
    let mut runs: Map<String, Value> = match old.and_then(|o| o.get("runs")) {
        Some(Value::Object(m)) if keep_others => m.clone(),
        _ => Map::new(),
    };
    for (name, m) in current {
        runs.insert(name.clone(), json!(m));
    }
    json!({
        "grid": grid,
        "note": "Written by `come-repro check --update`; compared by `come-repro check`. Accuracies may move by one item (0.05 on 20 documents); perplexities are compared relatively, counts exactly.",
        "tolerance": tol,
        "runs": runs,
    })
}

/// A baseline file, parsed.
pub fn read(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let v: Value = serde_json::from_str(&text)
        .map_err(|e| Error::format(path, format!("not valid JSON: {e}")))?;
    if !v.get("runs").is_some_and(Value::is_object) {
        return Err(Error::format(path, "no `runs` object"));
    }
    Ok(v)
}

/// Tolerance for a metric name: absolute for accuracies (identical predictions are
/// expected, so any flipped item shows), relative for perplexities.
fn tolerance(tol: &Value, metric: &str) -> (f64, f64) {
    let name = metric.rsplit('/').next().unwrap_or(metric);
    let name = name.split('[').next().unwrap_or(name);
    let t = tol.get(name).or_else(|| tol.get("default"));
    let get = |k: &str| t.and_then(|t| t.get(k)).and_then(Value::as_f64);
    (get("abs").unwrap_or(1e-6), get("rel").unwrap_or(0.0))
}

/// What a comparison found: metrics compared, runs in the baseline, and each difference
/// beyond its tolerance as a readable line.
#[derive(Debug, Default)]
pub struct Comparison {
    pub compared: usize,
    pub runs: usize,
    pub problems: Vec<String>,
}

/// `current` against `base`. With `selected_only`, baseline runs the grid did not
/// produce are not differences (they were left out of the selection).
pub fn compare(base: &Value, current: &RunMetrics, selected_only: bool) -> Comparison {
    let tol = base.get("tolerance").cloned().unwrap_or(json!({}));
    let empty = Map::new();
    let want = base
        .get("runs")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let mut c = Comparison {
        runs: want.len(),
        ..Default::default()
    };
    for (run, metrics) in want {
        let Some(got) = current.get(run) else {
            if !selected_only {
                c.problems.push(format!(
                    "{run}: in the baseline but not produced by the grid"
                ));
            }
            continue;
        };
        for (k, v) in metrics.as_object().into_iter().flatten() {
            let Some(w) = v.as_f64() else { continue };
            match got.get(k) {
                None => c
                    .problems
                    .push(format!("{run}: {k}: missing (baseline {w})")),
                Some(&g) => {
                    c.compared += 1;
                    let (abs, rel) = tolerance(&tol, k);
                    let allowed = abs.max(rel * w.abs());
                    if (g - w).abs() > allowed || g.is_nan() != w.is_nan() {
                        c.problems.push(format!("{run}: {k}: {g:.6} vs baseline {w:.6} (diff {:+.6}, tolerance {allowed:.2e})", g - w));
                    }
                }
            }
        }
    }
    for run in current.keys() {
        if !want.contains_key(run) {
            c.problems.push(format!(
                "{run}: produced by the grid but not in the baseline (run with --update to add it)"
            ));
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics(pairs: &[(&str, &[(&str, f64)])]) -> RunMetrics {
        pairs
            .iter()
            .map(|(run, ms)| {
                let m = ms.iter().map(|(k, v)| (k.to_string(), *v)).collect();
                (run.to_string(), m)
            })
            .collect()
    }

    #[test]
    fn differences_beyond_tolerance_are_reported_by_run_and_metric() {
        let base = updated(
            None,
            Path::new("g.toml"),
            &metrics(&[
                (
                    "a",
                    &[("piqa/acc", 0.5), ("wikitext2/ppl_wikitext2", 100.0)],
                ),
                ("b", &[("layers", 3.0)]),
            ]),
            false,
        );
        // One flipped item of 20 and a perplexity within 1e-3: passes.
        let near = metrics(&[
            (
                "a",
                &[("piqa/acc", 0.55), ("wikitext2/ppl_wikitext2", 100.05)],
            ),
            ("b", &[("layers", 3.0)]),
        ]);
        let c = compare(&base, &near, false);
        assert_eq!((c.compared, c.runs, c.problems.len()), (3, 2, 0));
        // Two items, a perplexity 1 % off, a run missing, a run new.
        let far = metrics(&[
            (
                "a",
                &[("piqa/acc", 0.6), ("wikitext2/ppl_wikitext2", 101.0)],
            ),
            ("c", &[("layers", 3.0)]),
        ]);
        let c = compare(&base, &far, false);
        assert_eq!(c.problems.len(), 4, "{:?}", c.problems);
        assert!(c.problems[0].starts_with("a: piqa/acc: 0.600000 vs baseline 0.500000"));
        assert!(c.problems[2].contains("b: in the baseline but not produced"));
        assert!(c.problems[3].contains("c: produced by the grid but not in the baseline"));
        // A selection does not miss the runs it left out.
        assert_eq!(compare(&base, &far, true).problems.len(), 3);
    }

    #[test]
    fn an_update_keeps_tolerances_and_with_a_selection_the_other_runs() {
        let mut old = updated(
            None,
            Path::new("g.toml"),
            &metrics(&[("a", &[("n", 1.0)])]),
            false,
        );
        old["tolerance"]["n"] = json!({"abs": 2.0});
        let new = updated(
            Some(&old),
            Path::new("g.toml"),
            &metrics(&[("b", &[("n", 5.0)])]),
            true,
        );
        assert_eq!(new["tolerance"]["n"], json!({"abs": 2.0}));
        assert_eq!(new["runs"]["a"]["n"], json!(1.0));
        let all = updated(
            Some(&old),
            Path::new("g.toml"),
            &metrics(&[("b", &[("n", 5.0)])]),
            false,
        );
        assert!(all["runs"].get("a").is_none());
    }

    #[test]
    fn a_baseline_without_runs_is_refused_with_its_path() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("base.json");
        std::fs::write(&p, "{\"tolerance\": {}}").unwrap();
        let e = read(&p).unwrap_err().to_string();
        assert!(
            e.contains("base.json") && e.contains("no `runs` object"),
            "{e}"
        );
        std::fs::write(&p, "{").unwrap();
        assert!(read(&p).unwrap_err().to_string().contains("not valid JSON"));
    }
}
