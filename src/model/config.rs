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

/// Upper bounds on sizes read from a config, far above any released model, so that a
/// corrupt or hostile value is refused before anything is sized from it (and products of
/// two sizes cannot overflow).
pub mod bounds {
    pub const HIDDEN: i64 = 1 << 20;
    pub const INTERMEDIATE: i64 = 1 << 22;
    pub const LAYERS: i64 = 1 << 12;
    pub const HEADS: i64 = 1 << 12;
    pub const HEAD_DIM: i64 = 1 << 14;
    pub const VOCAB: i64 = 1 << 24;
    pub const POSITIONS: i64 = 1 << 26;
}

/// Typed reads of config.json keys. An absent key takes transformers' default; a key that
/// is present with the wrong type, `null` where null means nothing, or a value out of
/// range is an error naming the key, never silently replaced.
struct Keys<'a> {
    raw: &'a Value,
    path: &'a Path,
}

impl Keys<'_> {
    fn err(&self, msg: String) -> Error {
        Error::config(self.path, msg)
    }

    /// An integer in `range`; None when absent. `null` counts as absent only if
    /// `null_is_absent` (keys such as `head_dim` or `sliding_window` where transformers
    /// reads null as "not set").
    fn int_in(
        &self,
        key: &str,
        range: std::ops::RangeInclusive<i64>,
        null_is_absent: bool,
    ) -> Result<Option<i64>> {
        let v = match self.raw.get(key) {
            None => return Ok(None),
            Some(Value::Null) if null_is_absent => return Ok(None),
            Some(v) => v,
        };
        match v.as_i64() {
            Some(n) if range.contains(&n) => Ok(Some(n)),
            _ => Err(self.err(format!(
                "`{key}` must be an integer in {}..={}, got {v}",
                range.start(),
                range.end()
            ))),
        }
    }

    fn required_int(&self, key: &str, range: std::ops::RangeInclusive<i64>) -> Result<i64> {
        self.int_in(key, range, false)?
            .ok_or_else(|| self.err(format!("missing integer key `{key}`")))
    }

    /// A finite number accepted by `ok` (described by `what`); None when absent.
    fn num(&self, key: &str, ok: fn(f64) -> bool, what: &str) -> Result<Option<f64>> {
        num_at(self.raw, key, ok, what).map_err(|m| self.err(m))
    }

    fn flag(&self, key: &str) -> Result<Option<bool>> {
        match self.raw.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(self.err(format!("`{key}` must be true or false, got {v}"))),
        }
    }

    /// `bos_token_id` / `eos_token_id`: null or absent, one id or a list of ids, each a
    /// valid index into the vocabulary.
    fn token_ids(&self, key: &str, vocab: i64) -> Result<Vec<i64>> {
        let bad = |v: &Value| {
            self.err(format!(
                "`{key}` must be a token id in 0..{vocab} (or a list of them), got {v}"
            ))
        };
        let one = |v: &Value| {
            v.as_i64()
                .filter(|n| (0..vocab).contains(n))
                .ok_or_else(|| bad(v))
        };
        match self.raw.get(key) {
            None | Some(Value::Null) => Ok(vec![]),
            Some(Value::Array(a)) => a.iter().map(one).collect(),
            Some(v) => Ok(vec![one(v)?]),
        }
    }
}

fn positive(x: f64) -> bool {
    x > 0.0
}

/// `obj[key]` as a finite number accepted by `ok`; None when absent. The error message
/// names the key.
fn num_at(
    obj: &Value,
    key: &str,
    ok: fn(f64) -> bool,
    what: &str,
) -> std::result::Result<Option<f64>, String> {
    match obj.get(key) {
        None => Ok(None),
        Some(v) => match v.as_f64() {
            Some(x) if x.is_finite() && ok(x) => Ok(Some(x)),
            _ => Err(format!("`{key}` must be {what}, got {v}")),
        },
    }
}

impl ModelConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = crate::error::read_to_string(path)?;
        let raw: Value = serde_json::from_str(&text)
            .map_err(|e| Error::format(path, format!("not valid JSON: {e}")))?;
        Self::from_json(raw, path)
    }

    pub fn from_json(raw: Value, path: &Path) -> Result<Self> {
        if !raw.is_object() {
            return Err(Error::config(path, "config.json must be a JSON object"));
        }
        let k = Keys { raw: &raw, path };
        let family = family_of(&raw, path)?;
        let hidden_size = k.required_int("hidden_size", 1..=bounds::HIDDEN)?;
        let intermediate_size = k.required_int("intermediate_size", 1..=bounds::INTERMEDIATE)?;
        let num_hidden_layers = k.required_int("num_hidden_layers", 1..=bounds::LAYERS)?;
        let (num_attention_heads, num_key_value_heads, head_dim) = heads(&k, hidden_size)?;
        let vocab_size = k.required_int("vocab_size", 1..=bounds::VOCAB)?;
        let act = match raw.get("hidden_act") {
            None => "silu",
            Some(v) => v
                .as_str()
                .ok_or_else(|| k.err(format!("`hidden_act` must be a string, got {v}")))?,
        };
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
        // A null top-level `rope_theta` defers to `rope_parameters` when that has one.
        let top_theta = match raw.get("rope_theta") {
            Some(Value::Null) if rope_params.is_some_and(|p| p.get("rope_theta").is_some()) => None,
            _ => k.num("rope_theta", positive, "a positive number")?,
        };
        let rope_theta = match top_theta {
            Some(t) => t,
            None => rope_params
                .map(|p| num_at(p, "rope_theta", positive, "a positive number"))
                .transpose()
                .map_err(|m| k.err(format!("rope_parameters: {m}")))?
                .flatten()
                .unwrap_or(10000.0),
        };
        let attention_bias = k.flag("attention_bias")?.unwrap_or(false);
        let (qkv_bias, o_bias) = match family {
            Family::Qwen2 => (true, false),
            Family::Qwen3 | Family::Llama | Family::Mistral => (attention_bias, attention_bias),
        };
        let sliding_window = sliding_window(&k, family)?;
        let rms_norm_eps = k
            .num("rms_norm_eps", positive, "a positive number")?
            .unwrap_or(1e-6);
        let max_position_embeddings = k
            .int_in("max_position_embeddings", 1..=bounds::POSITIONS, false)?
            .unwrap_or(2048);
        Ok(ModelConfig {
            family,
            hidden_size,
            intermediate_size,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            vocab_size,
            rms_norm_eps,
            rope_theta,
            rope_scaling,
            max_position_embeddings,
            tie_word_embeddings: k.flag("tie_word_embeddings")?.unwrap_or(false),
            qkv_bias,
            o_bias,
            mlp_bias: k.flag("mlp_bias")?.unwrap_or(false),
            qk_norm: family == Family::Qwen3,
            sliding_window,
            bos_token_id: k.token_ids("bos_token_id", vocab_size)?.first().copied(),
            eos_token_ids: k.token_ids("eos_token_id", vocab_size)?,
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

fn family_of(raw: &Value, path: &Path) -> Result<Family> {
    let model_type = raw
        .get("model_type")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::config(path, "missing string key `model_type`"))?;
    Family::from_model_type(model_type).ok_or_else(|| {
        Error::unsupported(
            path,
            format!("model_type `{model_type}` (supported: llama, smollm, mistral, qwen2, qwen3)"),
        )
    })
}

/// Query heads, key/value heads and the head dimension, checked against each other.
fn heads(k: &Keys, hidden_size: i64) -> Result<(i64, i64, i64)> {
    let n_heads = k.required_int("num_attention_heads", 1..=bounds::HEADS)?;
    let n_kv = k
        .int_in("num_key_value_heads", 1..=bounds::HEADS, true)?
        .unwrap_or(n_heads);
    if n_heads % n_kv != 0 {
        return Err(k.err(format!(
            "num_attention_heads ({n_heads}) must be a multiple of num_key_value_heads ({n_kv})"
        )));
    }
    let head_dim = match k.int_in("head_dim", 1..=bounds::HEAD_DIM, true)? {
        Some(d) => d,
        None if hidden_size % n_heads == 0 => hidden_size / n_heads,
        None => {
            return Err(k.err(format!(
                "hidden_size ({hidden_size}) is not divisible by num_attention_heads ({n_heads}) and no head_dim is given"
            )))
        }
    };
    if head_dim % 2 != 0 {
        return Err(k.err(format!("head_dim must be even for RoPE, got {head_dim}")));
    }
    Ok((n_heads, n_kv, head_dim))
}

fn sliding_window(k: &Keys, family: Family) -> Result<Option<i64>> {
    match family {
        Family::Mistral => k.int_in("sliding_window", 1..=bounds::POSITIONS, true),
        Family::Qwen2 | Family::Qwen3 => {
            if k.flag("use_sliding_window")?.unwrap_or(false) {
                // Qwen applies the window only from `max_window_layers` on; we refuse
                // rather than silently apply it everywhere.
                return Err(Error::unsupported(
                    k.path,
                    "use_sliding_window = true for Qwen models",
                ));
            }
            Ok(None)
        }
        Family::Llama => Ok(None),
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
        num_at(v, key, positive, "a positive number")
            .map_err(|m| Error::config(path, format!("rope_scaling: {m}")))?
            .ok_or_else(|| {
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
