//! GPTQ-style perplexity: the test text tokenised as one stream, cut into non-overlapping
//! windows of `seqlen` tokens (the remainder dropped); each window predicts its tokens
//! 1..seqlen from its own prefix; ppl = exp(total NLL / predicted tokens). With equal
//! windows this equals the usual exp(mean of per-window mean losses).

use super::head::{score_pairs, Pair};
use crate::error::{Error, Result};
use crate::model::forward::NoTap;
use crate::model::Model;
use serde::Serialize;
use tch::Tensor;

#[derive(Debug, Clone, Serialize)]
pub struct PplResult {
    pub ppl: f64,
    pub nll: f64,
    pub predicted_tokens: i64,
    pub windows: usize,
    pub seqlen: usize,
    pub stream_tokens: usize,
}

/// Sum of next-token NLL over one batch of windows `[B, S]` (each window independent).
fn window_nll(model: &Model, ids: &Tensor) -> Result<(f64, i64)> {
    let h = model.forward_hidden(ids, None, &mut NoTap)?;
    let (b, s, d) = (h.size()[0], h.size()[1], h.size()[2]);
    let h = h.narrow(1, 0, s - 1).reshape([b * (s - 1), d]);
    let ids = Vec::<i64>::try_from(ids.to_device(tch::Device::Cpu).reshape([-1]))?;
    let pairs: Vec<Pair> = (0..b as usize)
        .flat_map(|w| (1..s as usize).map(move |i| (w, i)))
        .enumerate()
        .map(|(row, (w, i))| (row, ids[w * s as usize + i]))
        .collect();
    let total = -score_pairs(model, &h, &pairs)?
        .iter()
        .map(|(lp, _)| lp)
        .sum::<f64>();
    Ok((total, b * (s - 1)))
}

/// Perplexity of `model` over `tokens`. `on_window` is called after each batch with the
/// number of windows done (for progress bars).
pub fn perplexity(
    model: &Model,
    tokens: &[u32],
    seqlen: usize,
    max_windows: Option<usize>,
    batch_size: usize,
    mut on_window: impl FnMut(usize, usize),
) -> Result<PplResult> {
    if seqlen < 2 {
        return Err(Error::Invalid(format!("seqlen must be >= 2, got {seqlen}")));
    }
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
        let slice: Vec<i64> = tokens[done * seqlen..(done + nb) * seqlen]
            .iter()
            .map(|&t| t as i64)
            .collect();
        let ids = Tensor::from_slice(&slice).view([nb as i64, seqlen as i64]);
        let (s, c) = window_nll(model, &ids)?;
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
    })
}
