//! come-repro's NumPy permutation equals NumPy's own, element for element (goldens from
//! scripts/golden/numpy_permutation.py).

use come_repro::rng::numpy::{permutation, Pcg64};
use serde_json::Value;

fn goldens() -> Value {
    let p = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/golden/numpy_permutation.json"
    );
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

#[test]
fn permutations_equal_numpy() {
    let g = goldens();
    let cases = g["permutations"].as_array().unwrap();
    assert!(cases.len() >= 20);
    for c in cases {
        let seed = c["seed"].as_u64().unwrap();
        let n = c["n"].as_u64().unwrap() as usize;
        let want: Vec<usize> = serde_json::from_value(c["perm"].clone()).unwrap();
        assert_eq!(permutation(seed, n), want, "seed {seed}, n {n}");
    }
}

#[test]
fn raw_stream_equals_numpy() {
    let g = goldens();
    for c in g["pcg64_raw"].as_array().unwrap() {
        let seed = c["seed"].as_u64().unwrap();
        let want: Vec<u64> = c["u64"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().parse().unwrap())
            .collect();
        let mut r = Pcg64::from_seed(seed);
        let got: Vec<u64> = (0..want.len()).map(|_| r.next_u64()).collect();
        assert_eq!(got, want, "seed {seed}");
    }
}
