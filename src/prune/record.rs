//! `come.json`, the record a prune leaves beside its checkpoint: what was pruned, the
//! prune's report (the pairs, the merges, the scores), and what it cost.

use super::PruneReport;
use crate::error::Result;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The record's file name inside a pruned checkpoint.
pub const FILE: &str = "come.json";

/// `come.json`: what a prune did. Files written before this type existed still read: the
/// grid runner wrote only `source_model`, `report` and `crate_version`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PruneRecord {
    /// The checkpoint that was pruned.
    pub source_model: PathBuf,
    pub report: PruneReport,
    /// Peak resident memory of the process (MiB), where known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_rss_mib: Option<f64>,
    /// Load + calibration + prune + save.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_seconds: Option<f64>,
    /// libtorch intra-op threads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<i32>,
    #[serde(default)]
    pub crate_version: String,
}

impl PruneRecord {
    /// Read `dir/come.json`.
    pub fn read(dir: &Path) -> Result<PruneRecord> {
        crate::error::read_json(&dir.join(FILE))
    }

    /// Write `dir/come.json`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        crate::publish::write_json(&dir.join(FILE), self)
    }
}
