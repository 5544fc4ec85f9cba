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

/// Shapes of published models, for benchmarks and device checks at their scale without
/// their weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Shape {
    /// LLaMA-2-7B: 32 layers, hidden 4096, MLP 11008, 32 heads (MHA), vocab 32000.
    #[value(name = "llama2-7b")]
    Llama2_7b,
    /// SmolLM2-135M: 30 layers, hidden 576, MLP 1536, 9 heads over 3 KV heads, vocab
    /// 49152, tied embeddings.
    #[value(name = "smollm2-135m")]
    Smollm2_135m,
}

impl Shape {
    /// The config, with `layers` layers instead of the model's own when given.
    pub fn config(self, layers: Option<usize>) -> Result<ModelConfig> {
        self.config_with(layers, serde_json::json!({}))
    }

    /// The config with `extra` keys of config.json replaced (e.g. `vocab_size`).
    pub fn config_with(
        self,
        layers: Option<usize>,
        extra: serde_json::Value,
    ) -> Result<ModelConfig> {
        let (n, v) = match self {
            Shape::Llama2_7b => (
                32,
                serde_json::json!({
                    "hidden_size": 4096, "intermediate_size": 11008,
                    "num_attention_heads": 32, "num_key_value_heads": 32,
                    "vocab_size": 32000, "rms_norm_eps": 1e-5, "max_position_embeddings": 4096,
                }),
            ),
            Shape::Smollm2_135m => (
                30,
                serde_json::json!({
                    "hidden_size": 576, "intermediate_size": 1536,
                    "num_attention_heads": 9, "num_key_value_heads": 3,
                    "vocab_size": 49152, "rms_norm_eps": 1e-5, "rope_theta": 100000.0,
                    "max_position_embeddings": 8192, "tie_word_embeddings": true,
                }),
            ),
        };
        let mut v = v;
        v["num_hidden_layers"] = layers.unwrap_or(n).into();
        if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
            for (k, x) in e {
                o.insert(k.clone(), x.clone());
            }
        }
        tiny_config(v)
    }
}

/// splitmix64's increment and mixing constants (as i64 bit patterns for tensor arithmetic).
const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;
const MIX1: u64 = 0xBF58_476D_1CE4_E5B9;
const MIX2: u64 = 0x94D0_49BB_1331_11EB;

/// `x >> k` as a logical shift of the 64-bit pattern (libtorch shifts int64 arithmetically).
fn shr(x: &Tensor, k: i64) -> Tensor {
    x.bitwise_right_shift_tensor_scalar(k)
        .bitwise_and(((1u64 << (64 - k)) - 1) as i64)
}

/// `n` uniform values in [-1, 1), element `j` a function of `(stream, j)` only: splitmix64
/// of a counter, computed with integer tensor operations where the tensor lives. The top
/// 24 bits become the value exactly (f32 holds them), so every device gives the same bits.
pub fn hashed_uniform(stream: u64, n: i64, device: tch::Device) -> Tensor {
    let base = SplitMix64::new(stream).next_u64();
    let x = Tensor::arange(n, (tch::Kind::Int64, device)) * (GOLDEN as i64) + (base as i64);
    let z = x.bitwise_xor_tensor(&shr(&x, 30)) * (MIX1 as i64);
    let z = z.bitwise_xor_tensor(&shr(&z, 27)) * (MIX2 as i64);
    let z = z.bitwise_xor_tensor(&shr(&z, 31));
    // 24 bits -> [0, 2^24) exactly in f32, then to [-1, 1) by a power of two and a
    // subtraction, both exact.
    shr(&z, 40).to_kind(tch::Kind::Float) * (1.0 / (1u64 << 23) as f64) - 1.0
}

/// Weights of `config` from [`hashed_uniform`] streams numbered from `seed`: the same bits
/// on every machine and device, generated on `device` (billions of parameters in seconds
/// on a GPU), then cast to `kind`. Every matrix has standard deviation 0.02, transformers'
/// LLaMA `initializer_range`, so activations and log-likelihoods have the magnitudes of
/// a freshly initialised model (unit-variance embeddings tied to the head would make every
/// prediction extremely peaked, and a request's log-likelihood thousands of nats); norms
/// are 1 +- 0.1.
pub fn hashed_model(
    config: &ModelConfig,
    seed: u64,
    device: tch::Device,
    kind: tch::Kind,
) -> Model {
    let _g = tch::no_grad_guard();
    let c = config;
    let (h, i) = (c.hidden_size, c.intermediate_size);
    let q = c.num_attention_heads * c.head_dim;
    let kv = c.num_key_value_heads * c.head_dim;
    let stream = std::cell::Cell::new(seed.wrapping_mul(1 << 20));
    let draw = |shape: &[i64], scale: f64| {
        let n: i64 = shape.iter().product();
        stream.set(stream.get().wrapping_add(1));
        // Uniform on [-1, 1) has variance 1/3.
        (hashed_uniform(stream.get(), n, device) * (scale * 3f64.sqrt()))
            .reshape(shape)
            .to_kind(kind)
    };
    const STD: f64 = 0.02;
    let w = |o: i64, n: i64| draw(&[o, n], STD);
    let norm = |n: i64| (draw(&[n], 0.1 / 3f64.sqrt()) + 1.0).to_kind(kind);
    let layers = (0..c.num_hidden_layers)
        .map(|_| Layer {
            input_norm: norm(h),
            q_proj: Linear::new(w(q, h), None),
            k_proj: Linear::new(w(kv, h), None),
            v_proj: Linear::new(w(kv, h), None),
            o_proj: Linear::new(w(h, q), None),
            q_norm: c.qk_norm.then(|| norm(c.head_dim)),
            k_norm: c.qk_norm.then(|| norm(c.head_dim)),
            post_norm: norm(h),
            gate_proj: Linear::new(w(i, h), None),
            up_proj: Linear::new(w(i, h), None),
            down_proj: Linear::new(w(h, i), None),
        })
        .collect();
    let embed = draw(&[c.vocab_size, h], STD);
    let final_norm = norm(h);
    let lm_head = (!c.tie_word_embeddings).then(|| w(c.vocab_size, h));
    Model::new(config.clone(), embed, layers, final_norm, lm_head)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tensor arithmetic (wrapping products, logical shifts of int64) reproduces the
    /// definition as computed in plain integers by scripts/golden/hashed_uniform.py.
    #[test]
    fn hashed_uniform_matches_its_definition() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/golden/hashed_uniform.json"
        );
        let g: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        for case in g["cases"].as_array().unwrap() {
            let stream = case["stream"].as_u64().unwrap();
            let idx: Vec<i64> = serde_json::from_value(case["index"].clone()).unwrap();
            let k: Vec<u32> = serde_json::from_value(case["top24"].clone()).unwrap();
            let want: Vec<f64> = k
                .iter()
                .map(|&k| k as f64 / (1 << 23) as f64 - 1.0)
                .collect();
            let n = idx.iter().max().unwrap() + 1;
            let all = hashed_uniform(stream, n, tch::Device::Cpu);
            assert_eq!(all.kind(), tch::Kind::Float);
            for (j, w) in idx.iter().zip(&want) {
                let got = all.double_value(&[*j]);
                assert_eq!(got.to_bits(), w.to_bits(), "stream {stream}, element {j}");
            }
        }
    }

    #[test]
    fn hashed_models_are_the_same_built_twice_and_differ_by_seed() {
        let c = tiny_config(serde_json::json!({})).unwrap();
        let a = hashed_model(&c, 3, tch::Device::Cpu, tch::Kind::Float);
        let b = hashed_model(&c, 3, tch::Device::Cpu, tch::Kind::Float);
        let d = hashed_model(&c, 4, tch::Device::Cpu, tch::Kind::Float);
        for ((n, x), (_, y)) in a.named_tensors().iter().zip(b.named_tensors()) {
            assert!(x.equal(y), "{n}");
        }
        assert!(!a.embed.equal(&d.embed));
        let std = a.layers[0].q_proj.weight.std(true).double_value(&[]);
        assert!((std - 0.02).abs() < 0.002, "{std}");
    }
}
