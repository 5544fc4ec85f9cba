//! A Hugging Face checkpoint (the ones this tool loads and writes, pruned ones included)
//! as a GGUF file for llama.cpp's `llama` architecture: hyper-parameters, tokenizer and
//! weights, q/k rows in llama.cpp's order, 2-D weights as f32, f16 or Q8_0 and norms as
//! f32, as llama.cpp's own converter stores them. Weights are read one tensor at a time.

use super::export_vocab::vocab_metadata;
use super::write::{encode_f16, encode_f32, encode_q8_0, write_gguf, TensorEntry, Q8_0_BLOCK};
use super::{permute_qk_rows, GgmlType, GgufValue};
use crate::error::{Error, Result};
use crate::model::config::{config_path, Family, ModelConfig, RopeScaling};
use crate::model::load::WeightFiles;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind};

/// The storage of the exported weight matrices (`--type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum GgufType {
    #[serde(rename = "f32")]
    #[value(name = "f32")]
    F32,
    #[serde(rename = "f16")]
    #[value(name = "f16")]
    F16,
    #[serde(rename = "q8_0")]
    #[value(name = "q8_0")]
    Q8_0,
}

impl GgufType {
    /// `general.file_type` (llama.cpp's `llama_ftype`).
    fn file_type(self) -> u32 {
        match self {
            GgufType::F32 => 0,
            GgufType::F16 => 1,
            GgufType::Q8_0 => 7,
        }
    }

    /// How a tensor of `rank` dims with rows of `cols` values is stored: vectors stay f32,
    /// and a matrix whose rows are not whole Q8_0 blocks falls back to f16 (as llama.cpp's
    /// converter does).
    fn storage(self, rank: usize, cols: i64) -> GgmlType {
        match self {
            _ if rank < 2 => GgmlType::F32,
            GgufType::F32 => GgmlType::F32,
            GgufType::F16 => GgmlType::F16,
            GgufType::Q8_0 if (cols as usize).is_multiple_of(Q8_0_BLOCK) => GgmlType::Q8_0,
            GgufType::Q8_0 => GgmlType::F16,
        }
    }
}

/// What an export wrote.
#[derive(Debug, Clone, Serialize)]
pub struct ExportReport {
    pub path: PathBuf,
    pub bytes: u64,
    pub layers: i64,
    pub tensors: usize,
    /// Tensors per storage type (`F32`, `F16`, `Q8_0`).
    pub by_type: BTreeMap<String, usize>,
    /// llama.cpp's name for the pre-tokenizer (`tokenizer.ggml.pre`).
    pub pre_tokenizer: String,
}

/// One tensor to write: where it comes from and how it is stored.
struct Planned {
    entry: TensorEntry,
    hf_name: String,
    hf_shape: Vec<i64>,
    /// Heads whose rows are reordered into llama.cpp's interleaved rotary order (q, k).
    permute_heads: Option<i64>,
}

/// The configs llama.cpp's `llama` architecture can express exactly; the rest are refused
/// rather than exported into a file that would compute something else.
fn check_supported(c: &ModelConfig, path: &Path) -> Result<()> {
    let refuse = |what: &str| Err(Error::unsupported(path, format!("GGUF export of {what}")));
    if c.family != Family::Llama {
        return refuse(&format!(
            "the {:?} family (only LLaMA-style models)",
            c.family
        ));
    }
    if c.qkv_bias || c.o_bias || c.mlp_bias {
        return refuse("models with attention or MLP biases");
    }
    if c.qk_norm || c.sliding_window.is_some() {
        return refuse("q/k norms or sliding-window attention");
    }
    if let RopeScaling::Llama3 { .. } = c.rope_scaling {
        return refuse(
            "LLaMA-3 rope scaling (llama.cpp needs a rope_freqs tensor not written here)",
        );
    }
    Ok(())
}

fn hyper_parameters(c: &ModelConfig, name: &str, ty: GgufType) -> Vec<(String, GgufValue)> {
    let u = |v: i64| GgufValue::U32(v as u32);
    let s = |v: &str| GgufValue::String(v.to_string());
    let mut kv = vec![
        ("general.architecture", s("llama")),
        ("general.name", s(name)),
        ("llama.context_length", u(c.max_position_embeddings)),
        ("llama.embedding_length", u(c.hidden_size)),
        ("llama.block_count", u(c.num_hidden_layers)),
        ("llama.feed_forward_length", u(c.intermediate_size)),
        ("llama.attention.head_count", u(c.num_attention_heads)),
        ("llama.attention.head_count_kv", u(c.num_key_value_heads)),
        ("llama.rope.freq_base", GgufValue::F32(c.rope_theta as f32)),
        (
            "llama.attention.layer_norm_rms_epsilon",
            GgufValue::F32(c.rms_norm_eps as f32),
        ),
        ("llama.rope.dimension_count", u(c.head_dim)),
        ("llama.vocab_size", u(c.vocab_size)),
        ("general.file_type", GgufValue::U32(ty.file_type())),
        ("general.quantization_version", GgufValue::U32(2)),
    ];
    if c.head_dim * c.num_attention_heads != c.hidden_size {
        kv.push(("llama.attention.key_length", u(c.head_dim)));
        kv.push(("llama.attention.value_length", u(c.head_dim)));
    }
    if let RopeScaling::Linear { factor } = c.rope_scaling {
        kv.push(("llama.rope.scaling.type", s("linear")));
        kv.push(("llama.rope.scaling.factor", GgufValue::F32(factor as f32)));
    }
    kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

fn plan(c: &ModelConfig, weights: &WeightFiles, ty: GgufType) -> Vec<Planned> {
    let sizes = super::names::LlamaSizes {
        layers: c.num_hidden_layers,
        hidden: c.hidden_size,
        ff: c.intermediate_size,
        vocab: c.vocab_size,
        heads: c.num_attention_heads,
        kv_heads: c.num_key_value_heads,
        head_dim: c.head_dim,
        // A separate head only when the checkpoint has one; llama.cpp reuses token_embd
        // otherwise, as tied embeddings do.
        lm_head: !c.tie_word_embeddings || weights.contains("lm_head.weight"),
    };
    super::names::llama_tensors(sizes)
        .into_iter()
        .map(|t| Planned {
            entry: TensorEntry {
                name: t.gguf,
                dims: t.shape.iter().rev().map(|&d| d as u64).collect(),
                ty: ty.storage(t.shape.len(), *t.shape.last().unwrap_or(&0)),
            },
            hf_name: t.hf,
            hf_shape: t.shape,
            permute_heads: t.qk_heads,
        })
        .collect()
}

/// The bytes of one planned tensor, read from the checkpoint.
fn encode(p: &Planned, weights: &WeightFiles) -> Result<Vec<u8>> {
    let t = weights.load(&p.hf_name, &p.hf_shape, Kind::Float, Device::Cpu)?;
    let mut data = Vec::<f32>::try_from(t.contiguous().view([-1]))?;
    if let Some(heads) = p.permute_heads {
        let (rows, cols) = (p.hf_shape[0] as usize, p.hf_shape[1] as usize);
        data = permute_qk_rows(&data, rows, cols, heads as usize)
            .map_err(|m| Error::Invalid(format!("{}: {m}", p.hf_name)))?;
    }
    Ok(match p.entry.ty {
        GgmlType::F16 => encode_f16(&data),
        GgmlType::Q8_0 => {
            encode_q8_0(&data).map_err(|m| Error::Invalid(format!("{}: {m}", p.hf_name)))?
        }
        _ => encode_f32(&data),
    })
}

/// Export the checkpoint in `dir` to the GGUF file `out`. `on_tensor(done, total)` is
/// called after each tensor. `out` appears only when complete.
pub fn export(
    dir: &Path,
    out: &Path,
    ty: GgufType,
    mut on_tensor: impl FnMut(usize, usize),
) -> Result<ExportReport> {
    let cfg_path = config_path(dir);
    let cfg = ModelConfig::from_file(&cfg_path)?;
    check_supported(&cfg, &cfg_path)?;
    let weights = WeightFiles::open(dir)?;
    let name = dir
        .canonicalize()
        .ok()
        .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "model".into());
    let mut kv = hyper_parameters(&cfg, &name, ty);
    let (vocab_kv, pre) = vocab_metadata(dir, cfg.vocab_size as usize)?;
    kv.extend(vocab_kv);
    let planned = plan(&cfg, &weights, ty);
    let entries: Vec<TensorEntry> = planned.iter().map(|p| p.entry.clone()).collect();
    let total = planned.len();
    let bytes = write_gguf(out, &kv, &entries, |i| {
        let b = encode(&planned[i], &weights)?;
        on_tensor(i + 1, total);
        Ok(b)
    })?;
    let mut by_type = BTreeMap::new();
    for e in &entries {
        *by_type
            .entry(e.ty.name().unwrap_or("?").to_string())
            .or_insert(0) += 1;
    }
    Ok(ExportReport {
        path: out.to_path_buf(),
        bytes,
        layers: cfg.num_hidden_layers,
        tensors: total,
        by_type,
        pre_tokenizer: pre.to_string(),
    })
}
