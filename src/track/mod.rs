//! Run tracking: the SQLite store of runs, their parameters, metrics, artifacts,
//! environment and stages ([`store`]), the static environment of a process ([`env`]), and
//! the metric naming every writer and reader shares ([`names`]).

pub mod baseline;
pub mod env;
pub mod merge;
pub mod mlflow;
pub mod store;

pub use merge::{Conflict, MergeReport};
pub use store::{
    Artifact, Claim, DocScore, Metric, RunDiff, RunFilter, RunRow, StageRecord, StageStatus,
    Status, Store, StoreError,
};

/// Metric and task names (kept here too: the store is where they are written).
pub use crate::names;
