//! Random-weight models built in memory, for tests and benchmarks that need a model of a
//! given shape without a checkpoint on disk.

use super::config::ModelConfig;
use super::layer::{Layer, Linear};
use super::Model;
use crate::error::Result;
use crate::rng::SplitMix64;
use std::path::Path;
use tch::Tensor;

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

/// Seeded random tensors drawn from our own generator rather than libtorch's global one,
/// so that tests running in parallel threads cannot disturb each other's draws.
pub struct TensorRng(SplitMix64);

impl TensorRng {
    pub fn new(seed: u64) -> Self {
        TensorRng(SplitMix64::new(seed))
    }

    /// Standard normal f32 tensor on the CPU.
    pub fn randn(&mut self, shape: &[i64]) -> Tensor {
        let n: i64 = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| self.0.normal() as f32).collect();
        Tensor::from_slice(&v).reshape(shape)
    }

    /// Uniform [0, 1) f64 values.
    pub fn uniform(&mut self, n: usize) -> Vec<f64> {
        (0..n).map(|_| self.0.unit()).collect()
    }

    /// Uniform token ids in `0..vocab`.
    pub fn ids(&mut self, vocab: i64, shape: &[i64]) -> Tensor {
        let n: i64 = shape.iter().product();
        let v: Vec<i64> = (0..n).map(|_| self.0.below(vocab as u64) as i64).collect();
        Tensor::from_slice(&v).reshape(shape)
    }
}

/// Random weights for `config` (seeded), with norm weights and biases away from their
/// usual init so that code ignoring them is caught.
pub fn random_model(config: ModelConfig, seed: i64) -> Model {
    let rng = std::cell::RefCell::new(TensorRng::new(seed as u64));
    let randn = |shape: &[i64]| rng.borrow_mut().randn(shape);
    let c = &config;
    let (h, i) = (c.hidden_size, c.intermediate_size);
    let q = c.num_attention_heads * c.head_dim;
    let kv = c.num_key_value_heads * c.head_dim;
    let w = |o: i64, n: i64| randn(&[o, n]) * (1.0 / (n as f64).sqrt());
    let b = |o: i64, on: bool| on.then(|| randn(&[o]) * 0.1);
    let norm = |n: i64| randn(&[n]) * 0.1 + 1.0;
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
    let embed = randn(&[c.vocab_size, h]);
    let lm_head = (!c.tie_word_embeddings).then(|| w(c.vocab_size, h));
    Model::new(config.clone(), embed, layers, norm(h), lm_head)
}

/// Shapes of published models, for benchmarks at their scale without their weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Shape {
    /// LLaMA-2-7B: 32 layers, hidden 4096, MLP 11008, 32 heads (MHA), vocab 32000.
    #[value(name = "llama2-7b")]
    Llama2_7b,
}

impl Shape {
    /// The config, with `layers` layers instead of the model's own when given.
    pub fn config(self, layers: Option<usize>) -> Result<ModelConfig> {
        let (n, v) = match self {
            Shape::Llama2_7b => (
                32,
                serde_json::json!({
                    "hidden_size": 4096, "intermediate_size": 11008,
                    "num_attention_heads": 32, "num_key_value_heads": 32,
                    "vocab_size": 32000, "rms_norm_eps": 1e-5, "max_position_embeddings": 4096,
                }),
            ),
        };
        let mut v = v;
        v["num_hidden_layers"] = layers.unwrap_or(n).into();
        tiny_config(v)
    }
}

/// Random weights of `config` drawn by libtorch on `device` in `kind` (seeded): fast at
/// billions of parameters, where [`random_model`]'s CPU generator is not.
pub fn random_model_on(
    config: &ModelConfig,
    device: tch::Device,
    kind: tch::Kind,
    seed: i64,
) -> Model {
    let _g = tch::no_grad_guard();
    tch::manual_seed(seed);
    let c = config;
    let (h, i) = (c.hidden_size, c.intermediate_size);
    let q = c.num_attention_heads * c.head_dim;
    let kv = c.num_key_value_heads * c.head_dim;
    let w = |o: i64, n: i64| Tensor::randn([o, n], (kind, device)) * (1.0 / (n as f64).sqrt());
    let ones = |n: i64| Tensor::ones([n], (kind, device));
    let layers = (0..c.num_hidden_layers)
        .map(|_| Layer {
            input_norm: ones(h),
            q_proj: Linear::new(w(q, h), None),
            k_proj: Linear::new(w(kv, h), None),
            v_proj: Linear::new(w(kv, h), None),
            o_proj: Linear::new(w(h, q), None),
            q_norm: None,
            k_norm: None,
            post_norm: ones(h),
            gate_proj: Linear::new(w(i, h), None),
            up_proj: Linear::new(w(i, h), None),
            down_proj: Linear::new(w(h, i), None),
        })
        .collect();
    let embed = Tensor::randn([c.vocab_size, h], (kind, device));
    let lm_head = (!c.tie_word_embeddings).then(|| w(c.vocab_size, h));
    Model::new(config.clone(), embed, layers, ones(h), lm_head)
}
