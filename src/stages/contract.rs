//! The contract every stage keeps. A stage is a value built from its typed input; it
//! knows its [`StageName`], the identity of its output ([`Stage::cache_key`], computed
//! there and nowhere else), and how to run; running yields its output for the next stage
//! together with everything the run store keeps of it ([`Done`]: metrics, artifacts,
//! data files read, per-document scores). What all stages of a run share is one
//! [`StageCtx`]: where the model computes, the [`Cache`] (layout and locks), the event
//! sink and the keep-alive that tells the store the run is still working.
//!
//! The grid runner wraps every stage the same way (cancellation check, timing, peak
//! memory, a stage record in the store); a stage itself never sees the store.

use crate::error::Result;
use crate::measure::{DocScore, Metric};
use crate::model::load::LoadOptions;
use crate::progress::Sink;
use crate::publish::{lock_entry, EntryLock};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The pipeline's stages, in the order a run goes through them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StageName {
    Model,
    Prune,
    Distill,
    Eval,
}

impl StageName {
    /// Every stage, in pipeline order.
    pub const ALL: [StageName; 4] = [
        StageName::Model,
        StageName::Prune,
        StageName::Distill,
        StageName::Eval,
    ];

    /// The name the store and the progress display use.
    pub const fn as_str(self) -> &'static str {
        match self {
            StageName::Model => "model",
            StageName::Prune => "prune",
            StageName::Distill => "distill",
            StageName::Eval => "eval",
        }
    }
}

impl std::fmt::Display for StageName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The on-disk cache of stage outputs: `models/<name>-<sha12>`, `pruned/<key16>`,
/// `distilled/<key16>`, and `teacher/` for the teacher states recovery reuses.
#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
}

impl Cache {
    pub fn new(root: impl Into<PathBuf>) -> Cache {
        Cache { root: root.into() }
    }

    /// Where imported models live (named by the importer: model name and source hash).
    pub fn models(&self) -> PathBuf {
        self.root.join("models")
    }

    /// Where teacher states are cached for recovery.
    pub fn teacher(&self) -> PathBuf {
        self.root.join("teacher")
    }

    /// The entry of a keyed stage output: `<stage dir>/<first 16 hex digits of key>`.
    pub fn entry(&self, stage: StageName, key: &str) -> PathBuf {
        let dir = match stage {
            StageName::Model => "models",
            StageName::Prune => "pruned",
            StageName::Distill => "distilled",
            StageName::Eval => "eval",
        };
        self.root.join(dir).join(&key[..key.len().min(16)])
    }
}

/// Where a stage puts its output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dest {
    /// The cache entry of this key (a grid's runs share it, and reuse it when built).
    Cache(String),
    /// A directory the user named (the commands' `--out`): built atomically, replacing
    /// what is there (the command asks `--force` first).
    Dir(PathBuf),
}

impl Dest {
    /// The cache key, when the output is cached.
    pub fn key(&self) -> Option<String> {
        match self {
            Dest::Cache(k) => Some(k.clone()),
            Dest::Dir(_) => None,
        }
    }
}

/// What every stage of one run shares.
pub struct StageCtx<'a> {
    /// Device and dtype the run's model computes in.
    pub load: LoadOptions,
    /// The grid's cache; None for a command that writes where it is told.
    pub cache: Option<&'a Cache>,
    pub events: Sink<'a>,
    /// Called while a stage works or waits for a lock (as often as it likes: the callee
    /// throttles), so that a store can tell a live run from a dead one.
    pub keepalive: &'a mut dyn FnMut(),
    /// Devices of the recovery workers within the run (CoMe-mp); empty: `load.device`.
    pub distill_devices: Vec<tch::Device>,
}

impl<'a> StageCtx<'a> {
    /// A context for one stage run by a command: no cache, no store to keep alive.
    pub fn standalone(load: LoadOptions, events: Sink<'a>, keepalive: &'a mut dyn FnMut()) -> Self {
        StageCtx {
            load,
            cache: None,
            events,
            keepalive,
            distill_devices: vec![],
        }
    }

    /// The cache, or an error naming the stage that needs one.
    pub fn need_cache(&self, stage: StageName) -> Result<&'a Cache> {
        self.cache.ok_or_else(|| {
            crate::error::Error::Invalid(format!("the {stage} stage needs a cache directory"))
        })
    }

    /// The output of stage `stage` at `dest`: for a cache key, reused when its record
    /// file `record` exists, else built under the entry's lock ([`StageCtx::cached`]); for
    /// a directory, built there. Returns the directory and whether it was reused.
    pub fn produce(
        &mut self,
        stage: StageName,
        dest: &Dest,
        record: &str,
        build: impl FnOnce(&mut StageCtx, &Path) -> Result<()>,
    ) -> Result<(PathBuf, bool)> {
        match dest {
            Dest::Cache(key) => self.cached(stage, key, record, build),
            Dest::Dir(dir) => {
                build(self, dir)?;
                Ok((dir.clone(), false))
            }
        }
    }

    /// The cache entry `dir` for this run alone, staying alive while another process
    /// builds it.
    pub fn lock(&mut self, dir: &Path) -> Result<EntryLock> {
        let alive = &mut *self.keepalive;
        lock_entry(dir, alive)
    }

    /// The keyed output `entry` of stage `stage`: reused when its record file `record`
    /// exists, else built by `build` into the entry's directory, under the entry's lock
    /// (so two workers never build it twice). Returns the directory and whether it was
    /// reused.
    pub fn cached(
        &mut self,
        stage: StageName,
        key: &str,
        record: &str,
        build: impl FnOnce(&mut StageCtx, &Path) -> Result<()>,
    ) -> Result<(PathBuf, bool)> {
        let dir = self.need_cache(stage)?.entry(stage, key);
        let _lock = self.lock(&dir)?;
        let reused = dir.join(record).exists();
        if !reused {
            build(self, &dir)?;
        }
        Ok((dir, reused))
    }
}

/// A finished stage: its output for the next stage and what the store keeps of it.
#[derive(Debug)]
pub struct Done<T> {
    pub value: T,
    /// Where the output lives (a checkpoint directory), for the stage record.
    pub output: Option<PathBuf>,
    /// Taken from the cache rather than computed.
    pub reused: bool,
    pub metrics: Vec<Metric>,
    /// Files the run produced, with their kinds ([`crate::measure::kinds`]).
    pub artifacts: Vec<(PathBuf, &'static str)>,
    /// Environment entries: the sha256 of every data file read (`data.sha256:<path>`).
    pub env: BTreeMap<String, String>,
    pub docs: Vec<DocScore>,
}

impl<T> Done<T> {
    /// `value` with nothing recorded yet.
    pub fn new(value: T, reused: bool) -> Done<T> {
        Done {
            value,
            output: None,
            reused,
            metrics: vec![],
            artifacts: vec![],
            env: BTreeMap::new(),
            docs: vec![],
        }
    }

    pub fn at(mut self, output: &Path) -> Done<T> {
        self.output = Some(output.to_path_buf());
        self
    }
}

/// One stage of the pipeline.
pub trait Stage {
    const NAME: StageName;
    /// What the next stage takes.
    type Output;

    /// Identity of the stage's cached output; None when the stage is not cached.
    fn cache_key(&self) -> Option<String>;

    fn run(self, ctx: &mut StageCtx) -> Result<Done<Self::Output>>;
}

/// `data.sha256:<path>` for a data file a stage read.
pub fn data_env_entry(path: &Path) -> Result<(String, String)> {
    let sha = crate::hashing::file_sha256(path)?;
    Ok((format!("data.sha256:{}", path.display()), sha))
}

#[cfg(test)]
mod tests {
    use super::StageName;

    /// `ALL` holds every stage once, in pipeline order (a new stage fails to compile here
    /// until it is placed).
    #[test]
    fn all_lists_every_stage_in_pipeline_order() {
        for (i, s) in StageName::ALL.iter().enumerate() {
            let position = match s {
                StageName::Model => 0,
                StageName::Prune => 1,
                StageName::Distill => 2,
                StageName::Eval => 3,
            };
            assert_eq!(position, i, "{s}");
        }
    }
}
