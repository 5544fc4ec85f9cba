//! The model config, read from a Hugging Face `config.json`. The raw JSON is kept so that a
//! saved checkpoint carries every key it came with, changed only where we changed it.

use crate::error::{Error, Result};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Architecture families we run. They differ only in small switches of one block design.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
}

impl Family {
    pub fn from_model_type(t: &str) -> Option<Family> {
        match t {
            "llama" | "smollm" => Some(Family::Llama),
            "mistral" => Some(Family::Mistral),
            "qwen2" => Some(Family::Qwen2),
            "qwen3" => Some(Family::Qwen3),
            _ => None,
        }
    }
}

/// LLaMA-3 style frequency-dependent RoPE scaling (`rope_type = "llama3"`), or plain linear.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    Linear {
        factor: f64,
    },
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
}

#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub family: Family,
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub num_key_value_heads: i64,
    pub head_dim: i64,
    pub vocab_size: i64,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    pub max_position_embeddings: i64,
    pub tie_word_embeddings: bool,
    /// Bias on q/k/v projections (always on for Qwen2; `attention_bias` elsewhere).
    pub qkv_bias: bool,
    /// Bias on o_proj (`attention_bias` for LLaMA-style configs).
    pub o_bias: bool,
    pub mlp_bias: bool,
    /// Per-head RMSNorm on q and k (Qwen3).
    pub qk_norm: bool,
    /// Keys further back than this are masked (Mistral / Qwen sliding window), if set.
    pub sliding_window: Option<i64>,
    pub bos_token_id: Option<i64>,
    pub eos_token_ids: Vec<i64>,
    /// The config.json this came from, verbatim; `to_json` updates it.
    pub raw: Value,
}

fn get_i64(raw: &Value, key: &str) -> Option<i64> {
    raw.get(key).and_then(Value::as_i64)
}
fn get_f64(raw: &Value, key: &str) -> Option<f64> {
    raw.get(key).and_then(Value::as_f64)
}
fn get_bool(raw: &Value, key: &str) -> Option<bool> {
    raw.get(key).and_then(Value::as_bool)
}

impl ModelConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = crate::error::read_to_string(path)?;
        let raw: Value = serde_json::from_str(&text)
            .map_err(|e| Error::format(path, format!("not valid JSON: {e}")))?;
        Self::from_json(raw, path)
    }

    pub fn from_json(raw: Value, path: &Path) -> Result<Self> {
        let err = |msg: String| Error::config(path, msg);
        if !raw.is_object() {
            return Err(err("config.json must be a JSON object".into()));
        }
        let model_type = raw
            .get("model_type")
            .and_then(Value::as_str)
            .ok_or_else(|| err("missing string key `model_type`".into()))?;
        let family = Family::from_model_type(model_type).ok_or_else(|| {
            Error::unsupported(
                path,
                format!(
                    "model_type `{model_type}` (supported: llama, smollm, mistral, qwen2, qwen3)"
                ),
            )
        })?;
        let req = |key: &str| -> Result<i64> {
            let v =
                get_i64(&raw, key).ok_or_else(|| err(format!("missing integer key `{key}`")))?;
            if v <= 0 {
                return Err(err(format!("`{key}` must be positive, got {v}")));
            }
            Ok(v)
        };
        let hidden_size = req("hidden_size")?;
        let intermediate_size = req("intermediate_size")?;
        let num_hidden_layers = get_i64(&raw, "num_hidden_layers")
            .ok_or_else(|| err("missing integer key `num_hidden_layers`".into()))?;
        if num_hidden_layers < 1 {
            return Err(err(format!(
                "`num_hidden_layers` must be >= 1, got {num_hidden_layers}"
            )));
        }
        let num_attention_heads = req("num_attention_heads")?;
        let num_key_value_heads =
            get_i64(&raw, "num_key_value_heads").unwrap_or(num_attention_heads);
        if num_key_value_heads <= 0 || num_attention_heads % num_key_value_heads != 0 {
            return Err(err(format!(
                "num_attention_heads ({num_attention_heads}) must be a multiple of num_key_value_heads ({num_key_value_heads})"
            )));
        }
        let head_dim = match raw.get("head_dim") {
            Some(Value::Null) | None => {
                if hidden_size % num_attention_heads != 0 {
                    return Err(err(format!(
                        "hidden_size ({hidden_size}) is not divisible by num_attention_heads ({num_attention_heads}) and no head_dim is given"
                    )));
                }
                hidden_size / num_attention_heads
            }
            Some(v) => v
                .as_i64()
                .filter(|d| *d > 0)
                .ok_or_else(|| err(format!("`head_dim` must be a positive integer, got {v}")))?,
        };
        if head_dim % 2 != 0 {
            return Err(err(format!(
                "head_dim must be even for RoPE, got {head_dim}"
            )));
        }
        let vocab_size = req("vocab_size")?;
        let act = raw
            .get("hidden_act")
            .and_then(Value::as_str)
            .unwrap_or("silu");
        if act != "silu" {
            return Err(Error::unsupported(
                path,
                format!("hidden_act `{act}` (only silu / SwiGLU is implemented)"),
            ));
        }
        // transformers 5 writes `rope_parameters` {rope_type, rope_theta, ...}; older
        // configs use top-level `rope_theta` and `rope_scaling`. Accept both.
        let rope_params = raw.get("rope_parameters").filter(|v| v.is_object());
        let rope_scaling = match raw.get("rope_scaling").filter(|v| !v.is_null()) {
            Some(v) => parse_rope_scaling(Some(v), path)?,
            None => parse_rope_scaling(rope_params, path)?,
        };
        let rope_theta = get_f64(&raw, "rope_theta")
            .or_else(|| rope_params.and_then(|p| get_f64(p, "rope_theta")))
            .unwrap_or(10000.0);
        let attention_bias = get_bool(&raw, "attention_bias").unwrap_or(false);
        let (qkv_bias, o_bias) = match family {
            Family::Qwen2 => (true, false),
            Family::Qwen3 => (attention_bias, attention_bias),
            Family::Llama | Family::Mistral => (attention_bias, attention_bias),
        };
        let sliding_window = match family {
            Family::Mistral => get_i64(&raw, "sliding_window"),
            Family::Qwen2 | Family::Qwen3 => {
                if get_bool(&raw, "use_sliding_window").unwrap_or(false) {
                    // Qwen applies the window only from `max_window_layers` on; we refuse
                    // rather than silently apply it everywhere.
                    return Err(Error::unsupported(
                        path,
                        "use_sliding_window = true for Qwen models",
                    ));
                }
                None
            }
            Family::Llama => None,
        };
        let eos_token_ids = match raw.get("eos_token_id") {
            Some(Value::Number(n)) => n.as_i64().into_iter().collect(),
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_i64).collect(),
            _ => vec![],
        };
        let default_tie = false;
        Ok(ModelConfig {
            family,
            hidden_size,
            intermediate_size,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            vocab_size,
            rms_norm_eps: get_f64(&raw, "rms_norm_eps").unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            max_position_embeddings: get_i64(&raw, "max_position_embeddings").unwrap_or(2048),
            tie_word_embeddings: get_bool(&raw, "tie_word_embeddings").unwrap_or(default_tie),
            qkv_bias,
            o_bias,
            mlp_bias: get_bool(&raw, "mlp_bias").unwrap_or(false),
            qk_norm: family == Family::Qwen3,
            sliding_window,
            bos_token_id: get_i64(&raw, "bos_token_id"),
            eos_token_ids,
            raw,
        })
    }

    pub fn n_rep(&self) -> i64 {
        self.num_attention_heads / self.num_key_value_heads
    }

    /// The config as JSON, with the fields that pruning can change written back.
    pub fn to_json(&self) -> Value {
        let mut v = self.raw.clone();
        if let Some(o) = v.as_object_mut() {
            o.insert("num_hidden_layers".into(), self.num_hidden_layers.into());
            o.insert(
                "tie_word_embeddings".into(),
                self.tie_word_embeddings.into(),
            );
        }
        v
    }

    /// Parameter count of one decoder layer (all layers have the same shape).
    pub fn params_per_layer(&self) -> i64 {
        let h = self.hidden_size;
        let q = self.num_attention_heads * self.head_dim;
        let kv = self.num_key_value_heads * self.head_dim;
        let mut n = h * q + 2 * h * kv + q * h + 3 * h * self.intermediate_size + 2 * h;
        if self.qkv_bias {
            n += q + 2 * kv;
        }
        if self.o_bias {
            n += h;
        }
        if self.mlp_bias {
            n += 2 * self.intermediate_size + h;
        }
        if self.qk_norm {
            n += 2 * self.head_dim;
        }
        n
    }

    /// Total parameter count (tied embeddings counted once).
    pub fn total_params(&self) -> i64 {
        let emb = self.vocab_size * self.hidden_size;
        let head = if self.tie_word_embeddings { 0 } else { emb };
        emb + head + self.hidden_size + self.num_hidden_layers * self.params_per_layer()
    }
}

fn parse_rope_scaling(v: Option<&Value>, path: &Path) -> Result<RopeScaling> {
    let v = match v {
        None | Some(Value::Null) => return Ok(RopeScaling::None),
        Some(v) => v,
    };
    let kind = v
        .get("rope_type")
        .or_else(|| v.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let num = |key: &str| -> Result<f64> {
        v.get(key).and_then(Value::as_f64).ok_or_else(|| {
            Error::config(
                path,
                format!("rope_scaling of type `{kind}` needs number `{key}`"),
            )
        })
    };
    match kind {
        "default" => Ok(RopeScaling::None),
        "" if v.get("factor").is_none() => Ok(RopeScaling::None),
        "linear" => Ok(RopeScaling::Linear {
            factor: num("factor")?,
        }),
        "llama3" => Ok(RopeScaling::Llama3 {
            factor: num("factor")?,
            low_freq_factor: num("low_freq_factor")?,
            high_freq_factor: num("high_freq_factor")?,
            original_max_position_embeddings: num("original_max_position_embeddings")?,
        }),
        other => Err(Error::unsupported(
            path,
            format!("rope_scaling type `{other}` (supported: linear, llama3)"),
        )),
    }
}

/// `config.json` inside a checkpoint directory.
pub fn config_path(dir: &Path) -> PathBuf {
    dir.join("config.json")
}
