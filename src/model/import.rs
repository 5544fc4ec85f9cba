//! What an importer produces: a complete Hugging Face checkpoint held in memory, written
//! out by one shared function so every importer yields the same file set.

use super::save::{write_weights, DEFAULT_SHARD_BYTES};
use crate::error::{Error, Result};
use crate::publish::write_json;
use serde_json::Value;
use std::path::Path;
use tch::Tensor;

pub struct ImportedCheckpoint {
    /// HF `config.json` contents.
    pub config: Value,
    /// Weights under their HF names (`model.layers.0.self_attn.q_proj.weight`, ...), in
    /// HF layouts (rotate-half q/k rows), f32.
    pub tensors: Vec<(String, Tensor)>,
    pub tokenizer: tokenizers::Tokenizer,
    /// HF `tokenizer_config.json` contents (bos/eos tokens, add_bos_token, chat_template...).
    pub tokenizer_config: Value,
    pub special_tokens_map: Option<Value>,
    pub generation_config: Option<Value>,
}

/// Write the checkpoint to `dir`, then load it back with the runtime loader so a bad
/// import fails here rather than in a later command.
pub fn write_checkpoint(ck: &ImportedCheckpoint, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let named: Vec<(String, &Tensor)> = ck.tensors.iter().map(|(n, t)| (n.clone(), t)).collect();
    write_weights(dir, &named, DEFAULT_SHARD_BYTES)?;
    write_json(&dir.join("config.json"), &ck.config)?;
    let tok_path = dir.join("tokenizer.json");
    ck.tokenizer
        .save(&tok_path, true)
        .map_err(|e| Error::tokenizer(&tok_path, e))?;
    write_json(&dir.join("tokenizer_config.json"), &ck.tokenizer_config)?;
    if let Some(v) = &ck.special_tokens_map {
        write_json(&dir.join("special_tokens_map.json"), v)?;
    }
    if let Some(v) = &ck.generation_config {
        write_json(&dir.join("generation_config.json"), v)?;
    }
    super::load::load_model(dir, Default::default())?;
    Ok(())
}
