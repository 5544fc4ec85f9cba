//! Latency of a model under a named protocol, so that a speed-up can be traced to how it
//! was timed.
//!
//! - `sleb`: the protocol of SLEB's `latency.py`, which CoMe's is identical to. Prompt
//!   processing: one forward of a batch-1 prompt of 2048 tokens without KV cache, logits
//!   at every position, one untimed forward then the mean of 50. Generation: 64 prompts of
//!   64 tokens each generate 128 tokens greedily with a KV cache (the prompt's prefill
//!   included, as `model.generate` times it), one untimed round then the mean of 10.
//!   (We run two untimed rounds: see [`WARMUP`].)
//!   Speed-up = dense time / pruned time at the same sizes. CPU runs may scale the sizes
//!   down; the metric's context records the sizes used.
//! - `short`: batch 1, a 512-token prompt prefilled into an empty KV cache, then 64
//!   single-token decode steps on it; one untimed round, median of 5.
//!
//! Both use seeded prompt ids, none of them special (SLEB draws random ids below 32000
//! too: the ids do not change the time), so two checkpoints of one family compare.

use crate::error::{Error, Result};
use crate::model::forward::KvCache;
use crate::model::Model;
use serde::{Deserialize, Serialize};
use std::time::Instant;
use tch::Tensor;

/// How latency is timed (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// SLEB's and CoMe's: prefill 1 x 2048 (mean of 50), generation 64 x (64 + 128) (mean of 10).
    #[default]
    Sleb,
    /// Batch 1: prefill of 512 tokens, then 64 cached decode steps (median of 5).
    Short,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Sleb => "sleb",
            Protocol::Short => "short",
        }
    }

    /// The protocol's own sizes.
    pub fn spec(self) -> LatencySpec {
        match self {
            Protocol::Sleb => LatencySpec {
                protocol: self,
                prefill_len: 2048,
                prefill_iters: 50,
                gen_batch: 64,
                gen_prompt: 64,
                gen_new: 128,
                gen_iters: 10,
            },
            Protocol::Short => LatencySpec {
                protocol: self,
                prefill_len: 512,
                prefill_iters: 5,
                gen_batch: 1,
                gen_prompt: 512,
                gen_new: 64,
                gen_iters: 5,
            },
        }
    }
}

/// What is timed. Under `short` the decode steps follow the timed prefill (the prompt is
/// `prefill_len` tokens, `gen_batch` sequences, `prefill_iters` rounds); under `sleb` the
/// two phases are separate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LatencySpec {
    pub protocol: Protocol,
    pub prefill_len: usize,
    pub prefill_iters: usize,
    pub gen_batch: usize,
    pub gen_prompt: usize,
    pub gen_new: usize,
    pub gen_iters: usize,
}

impl Default for LatencySpec {
    fn default() -> Self {
        Protocol::default().spec()
    }
}

impl LatencySpec {
    /// The sizes of the phases (each at least 1) and whether they fit `max_positions`.
    pub fn check(&self, max_positions: usize) -> Result<()> {
        let sizes = [
            self.prefill_len,
            self.prefill_iters,
            self.gen_batch,
            self.gen_prompt,
            self.gen_new,
            self.gen_iters,
        ];
        if sizes.contains(&0) {
            return Err(Error::Invalid(format!(
                "latency ({}): prompt lengths, batches, generated tokens and iterations must be at least 1",
                self.protocol.name()
            )));
        }
        let longest = self.prefill_len.max(self.gen_prompt + self.gen_new);
        if longest > max_positions {
            return Err(Error::Invalid(format!(
                "latency ({}): {longest} positions exceed max_position_embeddings ({max_positions})",
                self.protocol.name()
            )));
        }
        Ok(())
    }

    /// This spec with its prompts shortened so that every phase fits `max_positions` (a
    /// small model's context is shorter than the protocol's prompts).
    pub fn fitted(self, max_positions: usize) -> Result<LatencySpec> {
        if self.gen_new + 1 > max_positions {
            return Err(Error::Invalid(format!(
                "latency: {} generated tokens do not fit in {max_positions} positions",
                self.gen_new
            )));
        }
        let room = max_positions - self.gen_new;
        let fitted = match self.protocol {
            Protocol::Short => {
                let p = self.prefill_len.min(room);
                LatencySpec {
                    prefill_len: p,
                    gen_prompt: p,
                    ..self
                }
            }
            Protocol::Sleb => LatencySpec {
                prefill_len: self.prefill_len.min(max_positions),
                gen_prompt: self.gen_prompt.min(room),
                ..self
            },
        };
        fitted.check(max_positions)?;
        Ok(fitted)
    }

    /// The store's context of a latency metric: the protocol and the sizes it was
    /// measured at. The short protocol keeps the form its first runs were stored with.
    pub fn context(&self) -> String {
        match self.protocol {
            Protocol::Short => {
                let batch = if self.gen_batch == 1 {
                    String::new()
                } else {
                    format!(",batch={}", self.gen_batch)
                };
                let rounds = if self.prefill_iters == 5 {
                    String::new()
                } else {
                    format!(",repeats={}", self.prefill_iters)
                };
                format!(
                    "prompt={},new={}{batch}{rounds}",
                    self.prefill_len, self.gen_new
                )
            }
            Protocol::Sleb => format!(
                "protocol=sleb,prefill=1x{}x{},generate={}x{}+{}x{}",
                self.prefill_len,
                self.prefill_iters,
                self.gen_batch,
                self.gen_prompt,
                self.gen_new,
                self.gen_iters
            ),
        }
    }

    /// These sizes with `[prefill, generation]` timed iterations (the short protocol
    /// times both phases in one round: the prefill count is its rounds).
    pub fn with_iters(self, iters: Option<[usize; 2]>) -> LatencySpec {
        let Some([p, g]) = iters else { return self };
        LatencySpec {
            prefill_iters: p,
            gen_iters: match self.protocol {
                Protocol::Short => p,
                Protocol::Sleb => g,
            },
            ..self
        }
    }

    /// Whether the sizes are the protocol's own (not scaled down).
    pub fn is_full(&self) -> bool {
        *self == self.protocol.spec()
    }
}

/// Seconds of one prefill and of one generation (or, under `short`, of its decode steps),
/// each the protocol's aggregate over iterations.
#[derive(Debug, Clone, Copy)]
pub struct Latency {
    pub spec: LatencySpec,
    pub prefill_s: f64,
    pub decode_s: f64,
}

impl Latency {
    /// Prompt tokens per second of the prefill phase.
    pub fn prefill_tokens_per_s(&self) -> f64 {
        let batch = match self.spec.protocol {
            Protocol::Short => self.spec.gen_batch,
            Protocol::Sleb => 1,
        };
        (batch * self.spec.prefill_len) as f64 / self.prefill_s
    }
    /// Generated tokens per second, over the whole batch.
    pub fn decode_tokens_per_s(&self) -> f64 {
        (self.spec.gen_batch * self.spec.gen_new) as f64 / self.decode_s
    }
}

pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

/// Seeded prompt ids `[batch, len]`, none of them special.
fn prompt(m: &Model, batch: usize, len: usize, seed: u64) -> Tensor {
    let mut rng = crate::rng::SplitMix64::new(seed);
    let vocab = m.config.vocab_size as u64;
    let ids: Vec<i64> = (0..batch * len)
        .map(|_| 3 + rng.below(vocab.saturating_sub(3).max(1)) as i64)
        .collect();
    Tensor::from_slice(&ids)
        .view([batch as i64, len as i64])
        .to_device(m.device)
}

/// Greedy next ids `[B, 1]` from final-normed hidden states.
fn next_ids(m: &Model, h: &Tensor) -> Tensor {
    m.lm_head(&h.select(1, -1)).argmax(-1, false).unsqueeze(1)
}

/// `short`: one cached prefill of `prompt`, then `new` greedy steps; (prefill s, decode s).
fn prefill_then_decode(m: &Model, prompt: &Tensor, new: usize) -> Result<(f64, f64)> {
    let _g = tch::no_grad_guard();
    let mut cache = KvCache::new(m.n_layers());
    crate::runtime::synchronize(m.device);
    let t0 = Instant::now();
    let h = m.forward_cached(prompt, None, &mut cache)?;
    let mut next = next_ids(m, &h);
    crate::runtime::synchronize(m.device);
    let prefill = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    for _ in 0..new {
        let h = m.forward_cached(&next, None, &mut cache)?;
        next = next_ids(m, &h);
    }
    // Reading the last id waits for the device.
    let _ = next.int64_value(&[0, 0]);
    Ok((prefill, t1.elapsed().as_secs_f64()))
}

/// `sleb` prompt processing: a forward without cache, logits at every position.
fn full_forward(m: &Model, prompt: &Tensor) -> Result<f64> {
    let _g = tch::no_grad_guard();
    crate::runtime::synchronize(m.device);
    let t0 = Instant::now();
    let logits = m.forward(prompt, None)?;
    let _ = logits.double_value(&[0, 0, 0]);
    Ok(t0.elapsed().as_secs_f64())
}

/// `sleb` generation: `new` tokens greedily after `prompt` with a KV cache, the prompt's
/// prefill included (the first token comes from it, the others from `new - 1` steps).
fn generate(m: &Model, prompt: &Tensor, new: usize) -> Result<f64> {
    let (prefill, steps) = prefill_then_decode(m, prompt, new.saturating_sub(1))?;
    Ok(prefill + steps)
}

/// Untimed rounds before each sleb phase. SLEB runs one; on a CPU the second forward of
/// a model still pays for first-touch allocation (SmolLM2, 2048 tokens, 2 threads: 3.2 s
/// against 1.7 s for every later one), so two keep it out of the mean.
pub const WARMUP: usize = 2;

/// Time `m` at `spec`; the prompts must fit the model (see [`LatencySpec::fitted`]).
pub fn measure(m: &Model, spec: LatencySpec) -> Result<Latency> {
    spec.check(m.config.max_position_embeddings.max(0) as usize)?;
    // Steady-state serving keeps its activation buffers; without this, glibc returns and
    // re-faults them on every forward and system time dominates (and varies) on a CPU.
    let _heap = crate::heap::KeepLargeBlocks::new();
    let (prefill_s, decode_s) = match spec.protocol {
        Protocol::Short => {
            let ids = prompt(m, spec.gen_batch, spec.prefill_len, 0);
            prefill_then_decode(m, &ids, spec.gen_new)?;
            let (mut p, mut d) = (vec![], vec![]);
            for _ in 0..spec.prefill_iters {
                let (x, y) = prefill_then_decode(m, &ids, spec.gen_new)?;
                p.push(x);
                d.push(y);
            }
            (median(&mut p), median(&mut d))
        }
        Protocol::Sleb => {
            let ids = prompt(m, 1, spec.prefill_len, 0);
            for _ in 0..WARMUP {
                full_forward(m, &ids)?;
            }
            let p: Vec<f64> = (0..spec.prefill_iters)
                .map(|_| full_forward(m, &ids))
                .collect::<Result<_>>()?;
            let ids = prompt(m, spec.gen_batch, spec.gen_prompt, 1);
            for _ in 0..WARMUP {
                generate(m, &ids, spec.gen_new)?;
            }
            let g: Vec<f64> = (0..spec.gen_iters)
                .map(|_| generate(m, &ids, spec.gen_new))
                .collect::<Result<_>>()?;
            (mean(&p), mean(&g))
        }
    };
    Ok(Latency {
        spec,
        prefill_s,
        decode_s,
    })
}
