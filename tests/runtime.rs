//! Runtime behaviour that does not need a reference implementation: padding, KV cache,
//! save/load round trips and bad checkpoints.

use come_repro::model::forward::KvCache;
use come_repro::model::load::{load_model, LoadOptions};
use come_repro::model::save::{save_model, write_weights};
use come_repro::model::synthetic::{random_model, tiny_config, TensorRng};
use come_repro::Error;
use serde_json::json;
use tch::{Kind, Tensor};

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

fn ids(b: i64, t: i64, seed: i64) -> Tensor {
    TensorRng::new(seed as u64).ids(128, &[b, t])
}

#[test]
fn right_and_left_padding_match_unpadded_rows() {
    let m = random_model(tiny_config(json!({})).unwrap(), 1);
    let x = ids(2, 10, 2);
    let full0 = m.forward(&x.narrow(0, 0, 1), None).unwrap();
    let short1 = m.forward(&x.narrow(0, 1, 1).narrow(1, 0, 6), None).unwrap();
    // Right padding: row 1 has 6 real tokens.
    let mask = Tensor::ones([2, 10], (Kind::Int64, tch::Device::Cpu));
    let _ = mask.get(1).narrow(0, 6, 4).fill_(0);
    let out = m.forward(&x, Some(&mask)).unwrap();
    assert!(max_diff(&out.narrow(0, 0, 1), &full0) < 1e-5);
    assert!(max_diff(&out.get(1).narrow(0, 0, 6), &short1.get(0)) < 1e-5);
    // Left padding: the same 6 tokens at the end of row 1; positions follow the mask.
    let left = x.copy();
    left.get(1).narrow(0, 4, 6).copy_(&x.get(1).narrow(0, 0, 6));
    let lmask = Tensor::ones([2, 10], (Kind::Int64, tch::Device::Cpu));
    let _ = lmask.get(1).narrow(0, 0, 4).fill_(0);
    let out = m.forward(&left, Some(&lmask)).unwrap();
    assert!(max_diff(&out.get(1).narrow(0, 4, 6), &short1.get(0)) < 1e-5);
    assert!(
        out.isnan().any().int64_value(&[]) == 0,
        "padding rows must not produce NaN"
    );
}

#[test]
fn kv_cache_decoding_matches_full_forward() {
    let m = random_model(tiny_config(json!({})).unwrap(), 3);
    let x = ids(1, 12, 4);
    let full = m.lm_head(
        &m.final_norm(
            &m.forward_hidden(&x, None, &mut come_repro::model::forward::NoTap)
                .unwrap(),
        ),
    );
    let mut cache = KvCache::new(m.n_layers());
    let mut parts = vec![m.lm_head(
        &m.forward_cached(&x.narrow(1, 0, 5), None, &mut cache)
            .unwrap(),
    )];
    parts.push(
        m.lm_head(
            &m.forward_cached(&x.narrow(1, 5, 4), None, &mut cache)
                .unwrap(),
        ),
    );
    for t in 9..12 {
        parts.push(
            m.lm_head(
                &m.forward_cached(&x.narrow(1, t, 1), None, &mut cache)
                    .unwrap(),
            ),
        );
    }
    let inc = Tensor::cat(&parts, 1);
    assert!(
        max_diff(&inc, &full) < 1e-5,
        "diff {}",
        max_diff(&inc, &full)
    );
}

#[test]
fn sliding_window_limits_attention() {
    // One layer: with more, information hops the window once per layer.
    let cfg =
        tiny_config(json!({"model_type": "mistral", "sliding_window": 4, "num_hidden_layers": 1}))
            .unwrap();
    let m = random_model(cfg, 5);
    let x = ids(1, 10, 6);
    let out = m.forward(&x, None).unwrap();
    // With a window of 4, position 9 sees tokens 6..=9 only: changing token 0 must not
    // change its logits, but must change position 3's.
    let y = x.copy();
    let _ = y.get(0).get(0).fill_((x.int64_value(&[0, 0]) + 1) % 128);
    let out2 = m.forward(&y, None).unwrap();
    assert!(max_diff(&out.get(0).get(9), &out2.get(0).get(9)) < 1e-6);
    assert!(max_diff(&out.get(0).get(3), &out2.get(0).get(3)) > 1e-4);
}

fn roundtrip(extra: serde_json::Value, dtype: Kind) {
    let m = random_model(tiny_config(extra.clone()).unwrap(), 7);
    let dir = tempfile::tempdir().unwrap();
    save_model(&m, dir.path(), None).unwrap();
    let back = load_model(
        dir.path(),
        LoadOptions {
            dtype,
            ..Default::default()
        },
    )
    .unwrap();
    let x = ids(2, 9, 8);
    let a = m.forward(&x, None).unwrap();
    let b = back.forward(&x, None).unwrap().to_kind(Kind::Float);
    let tol = if dtype == Kind::Float { 0.0 } else { 0.5 };
    assert!(
        max_diff(&a, &b) <= tol,
        "{extra:?} {dtype:?}: {}",
        max_diff(&a, &b)
    );
}

#[test]
fn save_load_roundtrip_is_exact_for_every_family() {
    roundtrip(json!({}), Kind::Float);
    roundtrip(json!({"tie_word_embeddings": true}), Kind::Float);
    roundtrip(json!({"model_type": "qwen2"}), Kind::Float);
    roundtrip(json!({"model_type": "qwen3", "head_dim": 32}), Kind::Float);
    roundtrip(
        json!({"attention_bias": true, "mlp_bias": true}),
        Kind::Float,
    );
    roundtrip(
        json!({"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 64}}),
        Kind::Float,
    );
    roundtrip(json!({}), Kind::BFloat16);
    roundtrip(json!({}), Kind::Half);
}

#[test]
fn sharded_checkpoints_load() {
    let m = random_model(tiny_config(json!({})).unwrap(), 9);
    let dir = tempfile::tempdir().unwrap();
    write_weights(dir.path(), &m.named_tensors(), 40_000).unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        serde_json::to_string(&m.current_config().to_json()).unwrap(),
    )
    .unwrap();
    assert!(dir.path().join("model.safetensors.index.json").exists());
    assert!(!dir.path().join("model.safetensors").exists());
    let back = load_model(dir.path(), LoadOptions::default()).unwrap();
    let x = ids(1, 5, 1);
    assert_eq!(
        max_diff(
            &m.forward(&x, None).unwrap(),
            &back.forward(&x, None).unwrap()
        ),
        0.0
    );
}

/// A saved tiny checkpoint to corrupt in the bad-input tests.
fn saved() -> (tempfile::TempDir, std::path::PathBuf) {
    let m = random_model(tiny_config(json!({})).unwrap(), 11);
    let dir = tempfile::tempdir().unwrap();
    save_model(&m, dir.path(), None).unwrap();
    let st = dir.path().join("model.safetensors");
    (dir, st)
}

fn err_of(dir: &std::path::Path) -> String {
    match load_model(dir, LoadOptions::default()) {
        Ok(_) => panic!("loading {} should fail", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn truncated_safetensors_is_a_clear_error() {
    let (dir, st) = saved();
    let bytes = std::fs::read(&st).unwrap();
    for cut in [0, 4, 8, 100, bytes.len() / 2, bytes.len() - 1] {
        std::fs::write(&st, &bytes[..cut]).unwrap();
        let e = err_of(dir.path());
        assert!(e.contains("model.safetensors"), "{cut}: {e}");
        assert!(
            e.contains("truncated") || e.contains("too short") || e.contains("header"),
            "{cut}: {e}"
        );
    }
}

#[test]
fn bit_flipped_header_is_a_clear_error() {
    let (dir, st) = saved();
    let good = std::fs::read(&st).unwrap();
    let hlen = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    let mut seen_ok = 0;
    // Flip one bit in each of many header bytes: every outcome is Ok or a named error.
    for pos in (0..8 + hlen).step_by(7) {
        let mut b = good.clone();
        b[pos] ^= 0x10;
        std::fs::write(&st, &b).unwrap();
        match load_model(dir.path(), LoadOptions::default()) {
            Ok(_) => seen_ok += 1,
            Err(e) => {
                let s = e.to_string();
                assert!(
                    s.contains(dir.path().to_str().unwrap()),
                    "error must name the file: {s}"
                );
            }
        }
    }
    assert!(seen_ok < (8 + hlen) / 7, "most flips must be detected");
}

#[test]
fn missing_tensor_and_shape_mismatch_and_extra_tensor() {
    let m = random_model(tiny_config(json!({})).unwrap(), 12);
    let dir = tempfile::tempdir().unwrap();
    save_model(&m, dir.path(), None).unwrap();
    // Missing: drop one tensor.
    let named: Vec<_> = m
        .named_tensors()
        .into_iter()
        .filter(|(n, _)| n != "model.layers.1.mlp.up_proj.weight")
        .collect();
    write_weights(dir.path(), &named, u64::MAX).unwrap();
    let e = err_of(dir.path());
    assert!(
        e.contains("missing tensor `model.layers.1.mlp.up_proj.weight`"),
        "{e}"
    );
    // Shape: config says a different intermediate size.
    write_weights(dir.path(), &m.named_tensors(), u64::MAX).unwrap();
    let mut cfg = m.current_config().to_json();
    cfg["intermediate_size"] = json!(80);
    std::fs::write(dir.path().join("config.json"), cfg.to_string()).unwrap();
    let e = err_of(dir.path());
    assert!(
        e.contains("gate_proj.weight") && e.contains("[96, 64]") && e.contains("[80, 64]"),
        "{e}"
    );
    // Extra: config claims fewer layers than the weights hold.
    let mut cfg = m.current_config().to_json();
    cfg["num_hidden_layers"] = json!(3);
    std::fs::write(dir.path().join("config.json"), cfg.to_string()).unwrap();
    let e = err_of(dir.path());
    assert!(
        e.contains("num_hidden_layers is 3, but the weights hold 4 layer(s)")
            && e.contains("model.layers.3"),
        "{e}"
    );
    // Extra: a tensor the config does not declare (a bias).
    let bias = tch::Tensor::zeros([64], (tch::Kind::Float, tch::Device::Cpu));
    let mut named = m.named_tensors();
    named.push(("model.layers.0.mlp.down_proj.bias".to_string(), &bias));
    write_weights(dir.path(), &named, u64::MAX).unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        m.current_config().to_json().to_string(),
    )
    .unwrap();
    let e = err_of(dir.path());
    assert!(
        e.contains("config does not describe") && e.contains("down_proj.bias"),
        "{e}"
    );
}

#[test]
fn bad_configs_are_named_errors() {
    let m = random_model(tiny_config(json!({})).unwrap(), 13);
    let dir = tempfile::tempdir().unwrap();
    save_model(&m, dir.path(), None).unwrap();
    let base = m.current_config().to_json();
    let cases: Vec<(serde_json::Value, &str)> = vec![
        (json!({"model_type": "gpt_neox"}), "model_type `gpt_neox`"),
        (json!({"hidden_act": "gelu"}), "hidden_act `gelu`"),
        (
            json!({"rope_scaling": {"type": "yarn", "factor": 4.0}}),
            "rope_scaling type `yarn`",
        ),
        (
            json!({"num_key_value_heads": 3}),
            "multiple of num_key_value_heads",
        ),
        (json!({"hidden_size": null}), "hidden_size"),
    ];
    for (patch, want) in cases {
        let mut cfg = base.clone();
        for (k, v) in patch.as_object().unwrap() {
            cfg[k] = v.clone();
        }
        std::fs::write(dir.path().join("config.json"), cfg.to_string()).unwrap();
        let e = err_of(dir.path());
        assert!(
            e.contains(want) && e.contains("config.json"),
            "want `{want}` in: {e}"
        );
    }
    std::fs::write(dir.path().join("config.json"), "{ not json").unwrap();
    let e = err_of(dir.path());
    assert!(
        e.contains("config.json") && e.contains("not valid JSON"),
        "{e}"
    );
    std::fs::remove_file(dir.path().join("config.json")).unwrap();
    assert!(matches!(
        load_model(dir.path(), LoadOptions::default()),
        Err(Error::Io { .. })
    ));
}
