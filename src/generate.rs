//! Text generation with a KV cache: greedy by default, or temperature sampling with a seed.

use crate::error::{Error, Result};
use crate::model::forward::KvCache;
use crate::model::Model;
use tch::{Kind, Tensor};

#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    /// 0 = greedy.
    pub temperature: f64,
    pub seed: u64,
    /// Stop at any of these ids (the model's EOS by default).
    pub stop_ids: Vec<u32>,
}

/// Continue `prompt` (token ids, non-empty); returns only the new ids.
pub fn generate(model: &Model, prompt: &[u32], opts: &GenerateOptions) -> Result<Vec<u32>> {
    if prompt.is_empty() {
        return Err(Error::Invalid(
            "cannot generate from an empty prompt".into(),
        ));
    }
    if !(opts.temperature.is_finite() && opts.temperature >= 0.0) {
        return Err(Error::Invalid(format!(
            "temperature must be a number >= 0 (0: greedy), got {}",
            opts.temperature
        )));
    }
    let max = model.config.max_position_embeddings as usize;
    if prompt.len().saturating_add(opts.max_new_tokens) > max {
        return Err(Error::Invalid(format!(
            "{} prompt tokens + {} new tokens exceed the model's max_position_embeddings ({max})",
            prompt.len(),
            opts.max_new_tokens
        )));
    }
    let _guard = tch::no_grad_guard();
    if opts.temperature > 0.0 {
        tch::manual_seed(opts.seed as i64);
    }
    let mut cache = KvCache::new(model.n_layers());
    let ids: Vec<i64> = prompt.iter().map(|&x| x as i64).collect();
    let mut input = Tensor::from_slice(&ids).unsqueeze(0);
    let mut out = vec![];
    for _ in 0..opts.max_new_tokens {
        let h = model.forward_cached(&input, None, &mut cache)?;
        let last = h.select(1, -1);
        let logits = model.lm_head(&last).to_kind(Kind::Float).squeeze_dim(0);
        let next = if opts.temperature > 0.0 {
            (logits / opts.temperature)
                .softmax(-1, Kind::Float)
                .multinomial(1, false)
                .int64_value(&[0])
        } else {
            logits.argmax(-1, false).int64_value(&[])
        };
        let next = next as u32;
        out.push(next);
        if opts.stop_ids.contains(&next) {
            break;
        }
        input = Tensor::from_slice(&[next as i64]).unsqueeze(0);
    }
    Ok(out)
}
