//! Every run in the committed stores reads back as a typed experiment with the hash it was
//! stored under: the report reads typed configs, and a change to the config types that
//! would orphan stored runs fails here.

use come_repro::experiment::{Experiment, IDENTITY_VERSION};
use come_repro::track::{RunFilter, Store};
use std::path::Path;

#[test]
fn committed_runs_read_back_as_typed_experiments_with_their_hashes() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("results");
    let mut stores = vec![];
    let mut stack = vec![root];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "sqlite") {
                stores.push(p);
            }
        }
    }
    assert!(!stores.is_empty(), "no committed stores under results/");
    let mut n = 0;
    for db in &stores {
        // A copy, as a grid may be writing the committed file; reading must leave it as it is.
        let dir = tempfile::tempdir().unwrap();
        let copy = dir.path().join("store.sqlite");
        std::fs::copy(db, &copy).unwrap();
        let before = std::fs::read(&copy).unwrap();
        let store = Store::open_read(&copy).unwrap();
        let runs = store.runs(&RunFilter::default()).unwrap();
        drop(store);
        assert!(
            std::fs::read(&copy).unwrap() == before,
            "{}: reading changed the file",
            db.display()
        );
        for r in runs {
            let exp = Experiment::from_value(r.config.clone())
                .unwrap_or_else(|e| panic!("{}: run {} ({}): {e}", db.display(), r.id, r.name));
            assert_eq!(
                exp.hash(),
                r.hash,
                "{}: run {} ({})",
                db.display(),
                r.id,
                r.name
            );
            // The hash recomputes with this binary's recipe, so the store must say so.
            assert_eq!(
                r.identity_version,
                i64::from(IDENTITY_VERSION),
                "{}: run {} ({})",
                db.display(),
                r.id,
                r.name
            );
            n += 1;
        }
    }
    assert!(n > 100, "only {n} runs read");
}
