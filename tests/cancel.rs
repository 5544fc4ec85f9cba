//! Ctrl-C reaches the prune: it stops after the round in progress with the typed
//! `Error::Interrupted` (which the grid records as an interrupted run, not a failure), as
//! recovery does between steps and evaluation before each task. One test in its own
//! binary: the stop flag is process-wide.

use come_repro::calib::CalibSet;
use come_repro::cancel;
use come_repro::model::synthetic::{random_model, tiny_config};
use come_repro::progress::Event;
use come_repro::prune::{prune, Method, PruneConfig};
use come_repro::rng::SplitMix64;
use come_repro::Error;
use serde_json::json;
use std::sync::atomic::Ordering;

fn calib() -> CalibSet {
    let mut r = SplitMix64::new(5);
    let sequences: Vec<Vec<u32>> = (0..2)
        .map(|_| (0..16).map(|_| r.below(128) as u32).collect())
        .collect();
    CalibSet::from_sequences(sequences, "<random>")
}

#[test]
fn a_stop_request_ends_prune_rounds_and_is_typed() {
    let cfg = PruneConfig {
        method: Method::Come,
        target_layers: Some(4),
        ..Default::default()
    };
    let config = tiny_config(json!({"num_hidden_layers": 8})).unwrap();

    // Without a stop: four rounds (8 -> 4 layers).
    let mut m = random_model(config.clone(), 3);
    let mut rounds = 0;
    prune(&mut m, calib(), &cfg, &mut |e| {
        if matches!(e, Event::Items { .. }) {
            rounds += 1
        }
    })
    .unwrap();
    assert_eq!((rounds, m.n_layers()), (4, 4));

    // A stop asked for during the first round: that round completes, no second starts.
    let mut m = random_model(config, 3);
    let mut rounds = 0;
    let e = prune(&mut m, calib(), &cfg, &mut |e| {
        if matches!(e, Event::Items { .. }) {
            rounds += 1;
            cancel::STOP.store(true, Ordering::SeqCst);
        }
    })
    .unwrap_err();
    assert!(matches!(e, Error::Interrupted), "{e}");
    assert_eq!(e.to_string(), "interrupted");
    assert_eq!((rounds, m.n_layers()), (1, 7));
    assert!(cancel::check().is_err());
    cancel::STOP.store(false, Ordering::SeqCst);
    assert!(cancel::check().is_ok());
}
