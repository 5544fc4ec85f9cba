//! The calibration state's restart points on disk give the same decisions and weights as
//! in memory. Its own test binary: the store is chosen through an environment variable,
//! which no other test may see change.

use come_repro::calib::CalibSet;
use come_repro::model::synthetic::{random_model, tiny_config, TensorRng};
use come_repro::prune::{prune, Method, PruneConfig, PruneReport};
use come_repro::rng::SplitMix64;
use serde_json::json;

fn calib(seqs: usize, len: usize) -> CalibSet {
    let mut r = SplitMix64::new(5);
    let sequences: Vec<Vec<u32>> = (0..seqs)
        .map(|_| (0..len).map(|_| r.below(128) as u32).collect())
        .collect();
    CalibSet::from_sequences(sequences, "<random>")
}

fn run(method: &str) -> (PruneReport, tch::Tensor) {
    let base = tiny_config(json!({"num_hidden_layers": 8})).unwrap();
    let mut m = random_model(base, 21);
    let cfg = PruneConfig {
        method: Method::parse(method).unwrap(),
        target_layers: Some(5),
        comep_grid: 4,
        chunk: 2,
        ..Default::default()
    };
    // 5 sequences in chunks of 2: a short last chunk is read back too.
    let rep = prune(
        &mut m,
        calib(5, 16),
        &cfg,
        &mut come_repro::progress::ignore,
    )
    .unwrap();
    let ids = TensorRng::new(6).ids(128, &[1, 6]);
    (rep, m.forward(&ids, None).unwrap())
}

#[test]
fn disk_and_memory_states_decide_the_same() {
    for method in ["come", "come-p", "sleb", "laco", "mka"] {
        std::env::set_var("COME_STATE_BUDGET_MIB", "0");
        let (disk, ld) = run(method);
        std::env::remove_var("COME_STATE_BUDGET_MIB");
        let (mem, lm) = run(method);
        assert!(disk.state_on_disk && !mem.state_on_disk, "{method}");
        assert_eq!(disk.correspondence, mem.correspondence, "{method}");
        assert_eq!(disk.layer_passes, mem.layer_passes, "{method}");
        let scores = |r: &PruneReport| r.steps.iter().map(|s| s.score).collect::<Vec<_>>();
        assert_eq!(scores(&disk), scores(&mem), "{method}");
        assert_eq!(
            (&ld - &lm).abs().max().double_value(&[]),
            0.0,
            "{method}: weights differ"
        );
    }
}
