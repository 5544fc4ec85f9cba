//! Which runs a grid invocation takes on, and in what order.

use super::RunnerOptions;
use crate::error::Result;
use crate::grid::{GridSpec, RunSpec};
use crate::track::Store;

/// Put the failed runs of the selection back in the queue (`--retry-failed`); returns
/// how many. A grid with several workers does this once, before they start, so that no
/// run is retried twice.
pub fn requeue_failed(spec: &GridSpec, opts: &RunnerOptions) -> Result<usize> {
    let runs = select(spec.expand()?, opts)?;
    let store = Store::open(&opts.db)?;
    let hashes: Vec<String> = runs.into_iter().map(|r| r.hash).collect();
    Ok(store.requeue_failed(&hashes)?)
}

/// Runs selected by `--only` / `--filter`, then `--shard`.
pub fn select(runs: Vec<RunSpec>, opts: &RunnerOptions) -> Result<Vec<RunSpec>> {
    let runs = select_by_name_and_params(runs, opts);
    match opts.shard {
        Some(s) => crate::shard::select(runs, s),
        None => Ok(runs),
    }
}

fn select_by_name_and_params(runs: Vec<RunSpec>, opts: &RunnerOptions) -> Vec<RunSpec> {
    runs.into_iter()
        .filter(|r| opts.only.is_empty() || opts.only.iter().any(|o| r.name.contains(o.as_str())))
        .filter(|r| {
            let p = r.params();
            opts.filter.iter().all(|(k, v)| {
                p.get(k).is_some_and(|x| match x {
                    serde_json::Value::String(s) => s == v,
                    other => &other.to_string() == v,
                })
            })
        })
        .collect()
}

/// With a preferred part (a grid worker's own), that part's runs first, then the others,
/// each half in the grid's order.
pub(super) fn preferred_first(runs: Vec<RunSpec>, opts: &RunnerOptions) -> Result<Vec<RunSpec>> {
    let Some(p) = opts.prefer else {
        return Ok(runs);
    };
    let part = crate::shard::assign(&runs, p.count)?;
    let mut tagged: Vec<(bool, RunSpec)> =
        part.into_iter().map(|k| k != p.index).zip(runs).collect();
    // Stable: the grid's order within each half.
    tagged.sort_by_key(|(other, _)| *other);
    Ok(tagged.into_iter().map(|(_, r)| r).collect())
}
