//! Random-weight models built in memory, for tests and benchmarks that need a model of a
//! given shape without a checkpoint on disk.

use super::config::ModelConfig;
use super::layer::{Layer, Linear};
use super::Model;
use crate::error::Result;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// A small LLaMA-style config (GQA); override keys with `extra`.
pub fn tiny_config(extra: serde_json::Value) -> Result<ModelConfig> {
    let mut v = serde_json::json!({
        "model_type": "llama",
        "hidden_size": 64,
        "intermediate_size": 96,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 128,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "max_position_embeddings": 512,
        "tie_word_embeddings": false,
    });
    if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
        for (k, x) in e {
            o.insert(k.clone(), x.clone());
        }
    }
    ModelConfig::from_json(v, Path::new("<synthetic>"))
}

/// Random weights for `config` (seeded), with norm weights and biases away from their
/// usual init so that code ignoring them is caught.
pub fn random_model(config: ModelConfig, seed: i64) -> Model {
    tch::manual_seed(seed);
    let opts = (Kind::Float, Device::Cpu);
    let c = &config;
    let (h, i) = (c.hidden_size, c.intermediate_size);
    let q = c.num_attention_heads * c.head_dim;
    let kv = c.num_key_value_heads * c.head_dim;
    let w = |o: i64, n: i64| Tensor::randn([o, n], opts) * (1.0 / (n as f64).sqrt());
    let b = |o: i64, on: bool| on.then(|| Tensor::randn([o], opts) * 0.1);
    let norm = |n: i64| Tensor::randn([n], opts) * 0.1 + 1.0;
    let layers = (0..c.num_hidden_layers)
        .map(|_| Layer {
            input_norm: norm(h),
            q_proj: Linear::new(w(q, h), b(q, c.qkv_bias)),
            k_proj: Linear::new(w(kv, h), b(kv, c.qkv_bias)),
            v_proj: Linear::new(w(kv, h), b(kv, c.qkv_bias)),
            o_proj: Linear::new(w(h, q), b(h, c.o_bias)),
            q_norm: c.qk_norm.then(|| norm(c.head_dim)),
            k_norm: c.qk_norm.then(|| norm(c.head_dim)),
            post_norm: norm(h),
            gate_proj: Linear::new(w(i, h), b(i, c.mlp_bias)),
            up_proj: Linear::new(w(i, h), b(i, c.mlp_bias)),
            down_proj: Linear::new(w(h, i), b(h, c.mlp_bias)),
        })
        .collect();
    let embed = Tensor::randn([c.vocab_size, h], opts);
    let lm_head = (!c.tie_word_embeddings).then(|| w(c.vocab_size, h));
    Model::new(config.clone(), embed, layers, norm(h), lm_head)
}
