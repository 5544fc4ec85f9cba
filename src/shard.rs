//! Splitting a grid over the tasks of a job array. Runs that share an expensive stage
//! (the pruned checkpoint, and whatever is built on it) form one group, and a group is
//! never split: no shard prunes what another shard prunes too. Groups go, largest first,
//! to the shard with the fewest runs so far (ties: the lower index), so every task of the
//! array computes the same partition from the grid alone.

use crate::error::{Error, Result};
use crate::experiment::RunSpec;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// Part `index` (0-based, as Slurm's `SLURM_ARRAY_TASK_ID` with `--array=0-(N-1)`) of
/// `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl FromStr for Shard {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Shard, String> {
        let bad = || format!("expected I/N with 0 <= I < N (e.g. 0/3), got `{s}`");
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let index: usize = i.trim().parse().map_err(|_| bad())?;
        let count: usize = n.trim().parse().map_err(|_| bad())?;
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl Shard {
    /// The shard's own store: `results/shards/<grid>-<I>-of-<N>.sqlite`.
    pub fn default_db(&self, grid: &Path) -> PathBuf {
        shard_dir().join(format!(
            "{}-{}-of-{}.sqlite",
            grid_stem(grid),
            self.index,
            self.count
        ))
    }
}

pub fn shard_dir() -> PathBuf {
    PathBuf::from("results/shards")
}

pub fn grid_stem(grid: &Path) -> String {
    grid.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "grid".into())
}

/// The stage a run shares with others: its pruned checkpoint, or (dense runs) itself.
fn group_key(r: &RunSpec) -> String {
    r.experiment
        .prune_hash()
        .map_or_else(|| format!("run:{}", r.hash), |h| format!("prune:{h}"))
}

/// How many groups (runs sharing a pruned checkpoint) the runs form: the most shards that
/// can all have work.
pub fn group_count(runs: &[RunSpec]) -> usize {
    runs.iter()
        .map(group_key)
        .collect::<std::collections::BTreeSet<_>>()
        .len()
}

/// The shard index of every run, in order.
pub fn assign(runs: &[RunSpec], count: usize) -> Result<Vec<usize>> {
    if count == 0 {
        return Err(Error::Invalid(
            "a grid cannot be split into 0 shards".into(),
        ));
    }
    let mut groups: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, r) in runs.iter().enumerate() {
        groups.entry(group_key(r)).or_default().push(i);
    }
    let mut order: Vec<(&String, &Vec<usize>)> = groups.iter().collect();
    order.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then(a.0.cmp(b.0)));
    let mut load = vec![0usize; count];
    let mut out = vec![0usize; runs.len()];
    for (_, members) in order {
        let target = (0..count).min_by_key(|&s| (load[s], s)).unwrap_or(0);
        load[target] += members.len();
        for &m in members {
            out[m] = target;
        }
    }
    Ok(out)
}

/// The runs of `shard`, in grid order.
pub fn select(runs: Vec<RunSpec>, shard: Shard) -> Result<Vec<RunSpec>> {
    let of = assign(&runs, shard.count)?;
    Ok(runs
        .into_iter()
        .zip(of)
        .filter(|(_, s)| *s == shard.index)
        .map(|(r, _)| r)
        .collect())
}
