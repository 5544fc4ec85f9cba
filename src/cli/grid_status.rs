//! `come-repro grid FILE --status`: where a grid stands across its stores (the main store
//! and every shard store of the grid under results/shards/), and which shards still have
//! work, i.e. which array tasks to resubmit.

use super::grid::{options, GridArgs};
use anyhow::Result;
use come_repro::grid::{GridSpec, RunSpec};
use come_repro::runner::select;
use come_repro::shard::{assign, grid_stem, shard_dir, Shard};
use come_repro::track::{Status, Store};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The shard stores of `grid` on disk: (shard, path), ordered.
fn shard_stores(grid: &std::path::Path) -> Vec<(Shard, PathBuf)> {
    let prefix = format!("{}-", grid_stem(grid));
    let mut out: Vec<(Shard, PathBuf)> = std::fs::read_dir(shard_dir())
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let rest = name.strip_prefix(&prefix)?.strip_suffix(".sqlite")?;
            let (i, n) = rest.split_once("-of-")?;
            let shard: Shard = format!("{i}/{n}").parse().ok()?;
            Some((shard, e.path()))
        })
        .collect();
    out.sort_by_key(|(s, _)| (s.count, s.index));
    out
}

/// Counts of each status (absent runs are pending) of `runs` in `store`; the hashes of
/// the finished ones are added to `finished`.
fn counts(
    store: &Store,
    runs: &[&RunSpec],
    finished: &mut std::collections::BTreeSet<String>,
) -> Result<BTreeMap<&'static str, usize>> {
    let mut c = BTreeMap::new();
    for r in runs {
        let st = store.run_by_hash(&r.hash)?.map(|row| row.status);
        if st == Some(Status::Finished) {
            finished.insert(r.hash.clone());
        }
        *c.entry(st.map_or("pending", |s| s.as_str())).or_insert(0) += 1;
    }
    Ok(c)
}

fn line(label: &str, c: &BTreeMap<&str, usize>, total: usize) -> String {
    let get = |k: &str| c.get(k).copied().unwrap_or(0);
    format!(
        "  {label:<44} {total:>5} {:>9} {:>8} {:>7} {:>12} {:>8}",
        get(Status::Finished.as_str()),
        get(Status::Running.as_str()),
        get(Status::Failed.as_str()),
        get(Status::Interrupted.as_str()),
        get("pending"),
    )
}

pub fn show(a: &GridArgs, spec: &GridSpec) -> Result<()> {
    let mut opts = options(a);
    opts.shard = None;
    let runs = select(spec.expand()?, &opts)?;
    println!("{}: {} run(s)", a.file.display(), runs.len());
    println!(
        "  {:<44} {:>5} {:>9} {:>8} {:>7} {:>12} {:>8}",
        "store", "runs", "finished", "running", "failed", "interrupted", "pending"
    );
    let all: Vec<&RunSpec> = runs.iter().collect();
    let mut finished_anywhere = std::collections::BTreeSet::new();
    let main =
        a.db.clone()
            .unwrap_or_else(|| PathBuf::from(come_repro::track::store::DEFAULT_PATH));
    if main.exists() {
        let s = Store::open_read(&main)?;
        let c = counts(&s, &all, &mut finished_anywhere)?;
        println!("{}", line(&main.display().to_string(), &c, all.len()));
    }
    let mut resubmit: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    let mut any_failed = false;
    let stores = shard_stores(&a.file);
    // A shard whose store does not exist never started.
    for (n, _) in stores.iter().map(|(s, _)| (s.count, ())) {
        for i in 0..n {
            if !stores.iter().any(|(s, _)| s.count == n && s.index == i) {
                let e = resubmit.entry(n).or_default();
                if !e.contains(&i) {
                    e.push(i);
                }
            }
        }
    }
    for (shard, path) in stores {
        let of = assign(&runs, shard.count)?;
        let mine: Vec<&RunSpec> = runs
            .iter()
            .zip(&of)
            .filter(|(_, s)| **s == shard.index)
            .map(|(r, _)| r)
            .collect();
        let s = Store::open_read(&path)?;
        let c = counts(&s, &mine, &mut finished_anywhere)?;
        println!("{}", line(&path.display().to_string(), &c, mine.len()));
        any_failed |= c.contains_key(Status::Failed.as_str());
        if c.get(Status::Finished.as_str()).copied().unwrap_or(0) < mine.len() {
            resubmit.entry(shard.count).or_default().push(shard.index);
        }
    }
    println!(
        "{} of {} run(s) finished in at least one store",
        finished_anywhere.len(),
        runs.len()
    );
    for (n, mut idx) in resubmit {
        idx.sort_unstable();
        let list: Vec<String> = idx.iter().map(|i| i.to_string()).collect();
        println!(
            "shards of {n} with work left: {} (resubmit with sbatch --array={})",
            list.join(", "),
            list.join(",")
        );
    }
    if any_failed {
        println!("failed runs are not retried on resubmission unless the script is given --retry-failed (sbatch --array=I SCRIPT --retry-failed)");
    }
    Ok(())
}
