//! Memory tables: the peak memory of each stage of each run, for "how much memory do I
//! need for this?". A stage's peak is recorded only when the run made its output (not
//! when it was reused from the cache), so a row shows what making that step cost.

use super::table::{Col, Row, Table};
use super::RunData;
use crate::names;
use crate::stages::StageName;
use std::collections::BTreeMap;

/// The stages in pipeline order, by their stored names.
const STAGES: [&str; StageName::ALL.len()] = {
    let mut names = [""; StageName::ALL.len()];
    let mut i = 0;
    while i < names.len() {
        names[i] = StageName::ALL[i].as_str();
        i += 1;
    }
    names
};

/// Peak of `stage` (host, or device) in MiB, from the run's metrics.
fn peak(run: &RunData, stage: &str, device: bool) -> Option<f64> {
    let name = if device {
        names::STAGE_PEAK_DEVICE_MIB
    } else {
        names::STAGE_PEAK_RSS_MIB
    };
    let want = format!("stage={stage}");
    run.metrics
        .iter()
        .find(|m| m.name == name && m.context.split(',').next() == Some(want.as_str()))
        .map(|m| m.value)
}

/// One table per model whose runs recorded stage peaks: a row per run, a column per stage
/// (host memory, then device memory where measured).
pub fn memory_tables(runs: &[RunData]) -> Vec<Table> {
    let mut by_model: BTreeMap<String, Vec<&RunData>> = BTreeMap::new();
    for r in runs {
        if STAGES.iter().any(|s| peak(r, s, false).is_some()) {
            by_model.entry(r.model()).or_default().push(r);
        }
    }
    by_model
        .into_iter()
        .map(|(model, rs)| {
            let columns: Vec<Col> = [false, true]
                .into_iter()
                .flat_map(|device| STAGES.iter().map(move |s| (*s, device)))
                .filter(|(s, device)| rs.iter().any(|r| peak(r, s, *device).is_some()))
                .map(|(s, device)| Col::PeakMemory {
                    stage: s.to_string(),
                    device,
                })
                .collect();
            let rows = rs
                .iter()
                .map(|r| Row {
                    label: r.name.clone(),
                    keys: vec![],
                    source: None,
                    cells: columns
                        .iter()
                        .map(|c| match c {
                            Col::PeakMemory { stage, device } => peak(r, stage, *device),
                            _ => None,
                        })
                        .collect(),
                })
                .collect();
            Table {
                id: format!("memory_{}", super::common::slug(&model)),
                title: format!("Peak memory per stage: {model}"),
                key_columns: vec![],
                columns,
                rows,
                caption: "Peak memory of each stage in MiB: host = the process's peak resident set from the stage's start (Linux's high-water mark, reset at each stage); GPU = the device's used memory at its peak (NVML, libtorch's cached blocks included). A stage reused from the cache shows -: its cost is in the row of the run that made it.".into(),
                footnotes: vec![],
            }
        })
        .collect()
}
