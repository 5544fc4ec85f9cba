//! Save a model as a standard Hugging Face checkpoint: safetensors (sharded with an index
//! when large), `config.json` describing the model as it is now, and the tokenizer files.

use super::Model;
use crate::error::{Error, Result};
use crate::publish::write_json;
use std::path::Path;
use tch::Tensor;

/// Files that make up a Hugging Face tokenizer; copied as they are when present.
pub const TOKENIZER_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    "chat_template.jinja",
];

/// Shard size above which weights are split into several files (transformers' default).
pub const DEFAULT_SHARD_BYTES: u64 = 5 << 30;

/// Write the weights of `tensors` into `dir` as `model.safetensors`, or as
/// `model-0000k-of-0000n.safetensors` plus `model.safetensors.index.json` when they exceed
/// `shard_bytes`.
pub fn write_weights(dir: &Path, tensors: &[(String, &Tensor)], shard_bytes: u64) -> Result<()> {
    let sizes: Vec<u64> = tensors
        .iter()
        .map(|(_, t)| t.numel() as u64 * t.kind().elt_size_in_bytes() as u64)
        .collect();
    let total: u64 = sizes.iter().sum();
    if total <= shard_bytes {
        return super::safetensors_io::write(&dir.join("model.safetensors"), tensors);
    }
    let mut shards: Vec<Vec<usize>> = vec![vec![]];
    let mut cur = 0u64;
    for (i, s) in sizes.iter().enumerate() {
        if cur + s > shard_bytes && !shards.last().unwrap().is_empty() {
            shards.push(vec![]);
            cur = 0;
        }
        shards.last_mut().unwrap().push(i);
        cur += s;
    }
    let n = shards.len();
    let mut weight_map = serde_json::Map::new();
    for (k, shard) in shards.iter().enumerate() {
        let fname = format!("model-{:05}-of-{:05}.safetensors", k + 1, n);
        let part: Vec<(String, &Tensor)> = shard
            .iter()
            .map(|&i| (tensors[i].0.clone(), tensors[i].1))
            .collect();
        super::safetensors_io::write(&dir.join(&fname), &part)?;
        for (name, _) in &part {
            weight_map.insert(name.clone(), fname.clone().into());
        }
    }
    write_json(
        &dir.join("model.safetensors.index.json"),
        &serde_json::json!({ "metadata": { "total_size": total }, "weight_map": weight_map }),
    )
}

/// Save `model` into `dir` (created if needed). Tokenizer files are copied from
/// `tokenizer_from` when given.
pub fn save_model(model: &Model, dir: &Path, tokenizer_from: Option<&Path>) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let config = model.current_config();
    let mut json = config.to_json();
    if let Some(o) = json.as_object_mut() {
        let dtype = match model.dtype {
            tch::Kind::Half => "float16",
            tch::Kind::BFloat16 => "bfloat16",
            _ => "float32",
        };
        o.insert("torch_dtype".into(), dtype.into());
    }
    write_weights(dir, &model.named_tensors(), DEFAULT_SHARD_BYTES)?;
    write_json(&dir.join("config.json"), &json)?;
    if let Some(src) = tokenizer_from {
        copy_tokenizer_files(src, dir)?;
    }
    Ok(())
}

pub fn copy_tokenizer_files(src: &Path, dst: &Path) -> Result<()> {
    if src == dst {
        return Ok(());
    }
    for f in TOKENIZER_FILES {
        let from = src.join(f);
        if from.exists() {
            std::fs::copy(&from, dst.join(f)).map_err(|e| Error::io(&from, e))?;
        }
    }
    Ok(())
}
