//! GPTQ-style perplexity: the test text tokenised as one stream, cut into non-overlapping
//! windows of `seqlen` tokens (the remainder dropped); each window predicts its tokens
//! 1..seqlen from its own prefix; ppl = exp(total NLL / predicted tokens). With equal
//! windows this equals the usual exp(mean of per-window mean losses).
//!
//! [`PplProtocol::LlamaCpp`] is `llama-perplexity`'s rule instead, so that numbers can be
//! set beside llama.cpp's on an exported GGUF: the same windows, but only the second half
//! of each is scored (tokens n/2+1..n-1, predicted with at least n/2 tokens of context),
//! and when the stream starts with BOS each window's first token is replaced by BOS.

use super::head::{score_pairs, Pair};
use crate::error::{Error, Result};
use crate::model::forward::NoTap;
use crate::model::Model;
use serde::Serialize;
use tch::Tensor;

/// Which tokens of a window are scored.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
pub enum PplProtocol {
    /// Every token but the first (GPTQ, and the pruning papers).
    #[default]
    Gptq,
    /// The second half of each window (llama.cpp's `llama-perplexity`).
    #[value(name = "llama_cpp")]
    LlamaCpp,
}

impl PplProtocol {
    pub fn is_default(&self) -> bool {
        *self == PplProtocol::Gptq
    }

    /// The first position whose prediction is scored in a window of `seqlen`.
    fn first_scored(self, seqlen: usize) -> usize {
        match self {
            PplProtocol::Gptq => 0,
            PplProtocol::LlamaCpp => seqlen / 2,
        }
    }
}

/// How [`perplexity`] windows and scores a stream.
#[derive(Debug, Clone, Copy, Default)]
pub struct PplOptions {
    /// Score only the first N windows (None: all).
    pub max_windows: Option<usize>,
    /// Windows per forward pass.
    pub batch_size: usize,
    pub protocol: PplProtocol,
    /// The tokenizer's BOS, which the llama.cpp protocol repeats at each window's start
    /// when the stream begins with it.
    pub bos: Option<u32>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PplResult {
    pub ppl: f64,
    pub nll: f64,
    pub predicted_tokens: i64,
    pub windows: usize,
    pub seqlen: usize,
    pub stream_tokens: usize,
    pub protocol: PplProtocol,
}

impl PplResult {
    /// How it was measured, as a metric context: `seqlen=N`, plus the protocol when it
    /// is not the default (so the contexts of earlier runs are unchanged).
    pub fn context(&self) -> String {
        match self.protocol {
            PplProtocol::Gptq => format!("seqlen={}", self.seqlen),
            PplProtocol::LlamaCpp => format!("seqlen={},protocol=llama_cpp", self.seqlen),
        }
    }
}

/// Sum of next-token NLL over `ids`, whole windows of `seqlen` tokens laid end to end
/// (each window independent), predictions from position `first` on, and the number of
/// predicted tokens.
fn window_nll(model: &Model, ids: &[i64], seqlen: usize, first: usize) -> Result<(f64, i64)> {
    let windows = ids.len() / seqlen;
    let x = Tensor::from_slice(ids).view([windows as i64, seqlen as i64]);
    let h = model.forward_hidden(&x, None, &mut NoTap)?;
    let d = h.size()[2];
    let per_window = seqlen - 1 - first;
    let predicted = windows * per_window;
    let h = h
        .narrow(1, first as i64, per_window as i64)
        .reshape([predicted as i64, d]);
    // Row w * per_window + i of `h` predicts token first + i + 1 of window w.
    let pairs: Vec<Pair> = ids
        .chunks_exact(seqlen)
        .flat_map(|w| &w[first + 1..])
        .enumerate()
        .map(|(row, &t)| (row, t))
        .collect();
    let total = -score_pairs(model, &h, &pairs)?
        .iter()
        .map(|(lp, _)| lp)
        .sum::<f64>();
    Ok((total, predicted as i64))
}

/// Perplexity of `model` over `tokens`. `on_window` is called after each batch with the
/// number of windows done (for progress bars).
pub fn perplexity(
    model: &Model,
    tokens: &[u32],
    seqlen: usize,
    opts: PplOptions,
    mut on_window: impl FnMut(usize, usize),
) -> Result<PplResult> {
    let PplOptions {
        max_windows,
        batch_size,
        protocol,
        bos,
    } = opts;
    let min = match protocol {
        PplProtocol::Gptq => 2,
        PplProtocol::LlamaCpp => 4,
    };
    if seqlen < min {
        return Err(Error::Invalid(format!(
            "seqlen must be >= {min}, got {seqlen}"
        )));
    }
    let first = protocol.first_scored(seqlen);
    // llama.cpp puts BOS at the start of every window when the tokenizer adds one, which
    // shows in the stream as a BOS first token.
    let bos = (protocol == PplProtocol::LlamaCpp)
        .then(|| bos.filter(|&b| tokens.first() == Some(&b)))
        .flatten();
    let available = tokens.len() / seqlen;
    if available == 0 {
        return Err(Error::Invalid(format!(
            "the text has {} tokens, fewer than one window of {seqlen}",
            tokens.len()
        )));
    }
    let windows = max_windows.map_or(available, |m| m.min(available));
    let bs = batch_size.max(1);
    let _guard = tch::no_grad_guard();
    let (mut nll, mut count) = (0f64, 0i64);
    let mut done = 0;
    while done < windows {
        let nb = bs.min(windows - done);
        let mut slice: Vec<i64> = tokens[done * seqlen..(done + nb) * seqlen]
            .iter()
            .map(|&t| t as i64)
            .collect();
        if let Some(b) = bos {
            slice.iter_mut().step_by(seqlen).for_each(|t| *t = b as i64);
        }
        let (s, c) = window_nll(model, &slice, seqlen, first)?;
        nll += s;
        count += c;
        done += nb;
        on_window(done, windows);
    }
    Ok(PplResult {
        ppl: (nll / count as f64).exp(),
        nll,
        predicted_tokens: count,
        windows,
        seqlen,
        stream_tokens: tokens.len(),
        protocol,
    })
}
