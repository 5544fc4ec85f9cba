//! Running the built binary from tests, and reading back what a run store holds.

use come_repro::track::{RunFilter, Status, Store};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

pub const BIN: &str = env!("CARGO_BIN_EXE_come-repro");

/// The binary with `args`, from the project root.
pub fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap()
}

/// The binary with `args`, from `dir` (its relative `results/...` paths land there), with
/// the shared data found from anywhere.
pub fn run_in(dir: &Path, args: &[&str]) -> Output {
    let data = std::fs::canonicalize(come_repro::paths::data_dir()).unwrap();
    Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env("COME_DATA", data)
        .output()
        .unwrap()
}

/// stdout + stderr of a run that must have succeeded.
pub fn ok(o: Output) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "{text}");
    text
}

/// (task, name, value) of a run's result metrics, sorted.
pub type Results = Vec<(String, String, String)>;
/// hash -> (status, attempts, finished time, result metrics).
pub type Runs = BTreeMap<String, (Status, i64, Option<String>, Results)>;

/// Every run of the store at `db`; timings and memory (machine measurements) left out.
pub fn store_runs(db: &Path) -> Runs {
    let s = Store::open(db).unwrap();
    s.runs(&RunFilter::default())
        .unwrap()
        .into_iter()
        .map(|r| {
            let mut m: Results = s
                .metrics(r.id)
                .unwrap()
                .into_iter()
                .filter(|m| !come_repro::track::names::is_machine_measurement(&m.name))
                .map(|m| (m.task, m.name, format!("{:?}", m.value)))
                .collect();
            m.sort();
            (r.hash, (r.status, r.attempts, r.finished, m))
        })
        .collect()
}

/// hash -> (status, result metrics): what must agree between two stores of one grid.
pub fn store_results(db: &Path) -> BTreeMap<String, (Status, Results)> {
    store_runs(db)
        .into_iter()
        .map(|(h, (s, _, _, m))| (h, (s, m)))
        .collect()
}
