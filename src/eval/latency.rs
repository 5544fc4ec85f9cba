//! Latency of a model as the paper reports it. Prefill: one forward of a fixed-length
//! prompt into an empty KV cache (batch 1 by default). Decode: greedy single-token steps
//! on that cache, the LM head included; `batch` prompts at once measure generation
//! throughput (SLEB's protocol: batch 64). Warm (one untimed round first), median of
//! `repeats`; every model sees the same seeded prompts, so the numbers of two
//! checkpoints of one family compare.

use crate::error::{Error, Result};
use crate::model::forward::KvCache;
use crate::model::Model;
use std::time::Instant;
use tch::Tensor;

/// What is timed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LatencySpec {
    pub prompt_len: usize,
    pub new_tokens: usize,
    pub repeats: usize,
    /// Sequences decoded together.
    pub batch: usize,
}

impl Default for LatencySpec {
    fn default() -> Self {
        LatencySpec {
            prompt_len: 512,
            new_tokens: 64,
            repeats: 5,
            batch: 1,
        }
    }
}

impl LatencySpec {
    /// This spec with the prompt shortened so that prompt and decoded tokens fit in
    /// `max_positions` (a small model's context is shorter than the default prompt).
    pub fn fitted(self, max_positions: usize) -> Result<LatencySpec> {
        if self.new_tokens + 1 > max_positions {
            return Err(Error::Invalid(format!(
                "latency: {} decoded tokens do not fit in {max_positions} positions",
                self.new_tokens
            )));
        }
        Ok(LatencySpec {
            prompt_len: self.prompt_len.min(max_positions - self.new_tokens),
            ..self
        })
    }

    /// The store's context of a latency metric: the shape it was measured at.
    pub fn context(&self) -> String {
        let batch = if self.batch == 1 {
            String::new()
        } else {
            format!(",batch={}", self.batch)
        };
        format!("prompt={},new={}{batch}", self.prompt_len, self.new_tokens)
    }
}

/// Median seconds of one prefill and of all decode steps.
#[derive(Debug, Clone, Copy)]
pub struct Latency {
    pub spec: LatencySpec,
    pub prefill_s: f64,
    pub decode_s: f64,
}

impl Latency {
    pub fn prefill_tokens_per_s(&self) -> f64 {
        (self.spec.batch * self.spec.prompt_len) as f64 / self.prefill_s
    }
    /// Generated tokens per second, over the whole batch.
    pub fn decode_tokens_per_s(&self) -> f64 {
        (self.spec.batch * self.spec.new_tokens) as f64 / self.decode_s
    }
}

pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// One prefill of `prompt`, then `new` greedy steps; (prefill s, decode s).
fn once(m: &Model, prompt: &Tensor, new: usize) -> Result<(f64, f64)> {
    let _g = tch::no_grad_guard();
    let mut cache = KvCache::new(m.n_layers());
    crate::runtime::synchronize(m.device);
    let t0 = Instant::now();
    let h = m.forward_cached(prompt, None, &mut cache)?;
    let mut next = m.lm_head(&h.select(1, -1)).argmax(-1, false).unsqueeze(1);
    crate::runtime::synchronize(m.device);
    let prefill = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    for _ in 0..new {
        let h = m.forward_cached(&next, None, &mut cache)?;
        next = m.lm_head(&h.select(1, -1)).argmax(-1, false).unsqueeze(1);
    }
    // Reading the last id waits for the device.
    let _ = next.int64_value(&[0, 0]);
    Ok((prefill, t1.elapsed().as_secs_f64()))
}

/// Time `m` at `spec`; the prompt must fit the model (see [`LatencySpec::fitted`]).
pub fn measure(m: &Model, spec: LatencySpec) -> Result<Latency> {
    let max = m.config.max_position_embeddings.max(0) as usize;
    if spec.prompt_len == 0 || spec.new_tokens == 0 || spec.repeats == 0 || spec.batch == 0 {
        return Err(Error::Invalid(
            "latency: prompt length, decoded tokens, repeats and batch must be at least 1".into(),
        ));
    }
    if spec.prompt_len + spec.new_tokens > max {
        return Err(Error::Invalid(format!(
            "latency: a prompt of {} plus {} decoded tokens exceed max_position_embeddings ({max})",
            spec.prompt_len, spec.new_tokens
        )));
    }
    // Seeded ids, none of them special.
    let mut rng = crate::rng::SplitMix64::new(0);
    let vocab = m.config.vocab_size as u64;
    let ids: Vec<i64> = (0..spec.batch * spec.prompt_len)
        .map(|_| 3 + rng.below(vocab.saturating_sub(3).max(1)) as i64)
        .collect();
    let prompt = Tensor::from_slice(&ids)
        .view([spec.batch as i64, spec.prompt_len as i64])
        .to_device(m.device);
    once(m, &prompt, spec.new_tokens)?;
    let (mut p, mut d) = (vec![], vec![]);
    for _ in 0..spec.repeats {
        let (x, y) = once(m, &prompt, spec.new_tokens)?;
        p.push(x);
        d.push(y);
    }
    Ok(Latency {
        spec,
        prefill_s: median(&mut p),
        decode_s: median(&mut d),
    })
}
