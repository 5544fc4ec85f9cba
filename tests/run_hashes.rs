//! Run identities do not drift: every run of every committed grid (`experiments/*.toml`)
//! expands to the hash and name listed in `tests/golden/run_hashes.txt`, which
//! `scripts/golden/run_hashes.sh` wrote from `grid --dry-run` of a binary built before the
//! change. A refactor that moves or retypes configs must keep this list; a grid added or
//! changed on purpose regenerates it.

use come_repro::grid::GridSpec;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

#[test]
fn every_committed_grid_keeps_its_run_hashes_and_names() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let golden = std::fs::read_to_string(root.join("tests/golden/run_hashes.txt")).unwrap();
    let mut want: BTreeMap<String, BTreeSet<(String, String)>> = BTreeMap::new();
    for line in golden.lines().filter(|l| !l.trim().is_empty()) {
        let mut parts = line.splitn(3, ' ');
        let (file, hash, name) = (
            parts.next().unwrap(),
            parts.next().unwrap(),
            parts.next().unwrap(),
        );
        want.entry(file.to_string())
            .or_default()
            .insert((hash.to_string(), name.to_string()));
    }
    let mut files: Vec<String> = std::fs::read_dir(root.join("experiments"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .map(|p| format!("experiments/{}", p.file_name().unwrap().to_string_lossy()))
        .collect();
    files.sort();
    let listed: Vec<&String> = want.keys().collect();
    assert_eq!(
        files.iter().collect::<Vec<_>>(),
        listed,
        "the golden list and experiments/ name different grids: rerun scripts/golden/run_hashes.sh"
    );
    for file in &files {
        let spec = GridSpec::load(root.join(file)).unwrap();
        let got: BTreeSet<(String, String)> = spec
            .expand()
            .unwrap()
            .into_iter()
            .map(|r| (r.hash[..12].to_string(), r.name))
            .collect();
        let w = &want[file];
        let lost: Vec<_> = w.difference(&got).collect();
        let new: Vec<_> = got.difference(w).collect();
        assert!(
            lost.is_empty() && new.is_empty(),
            "{file}: runs whose identity changed\n  listed, now gone: {lost:?}\n  new: {new:?}"
        );
    }
}
