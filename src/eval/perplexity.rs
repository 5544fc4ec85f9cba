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

/// Sum of next-token NLL over `ids`, whole windows of `seqlen` tokens laid end to end
/// (each window independent), and the number of predicted tokens.
fn window_nll(model: &Model, ids: &[i64], seqlen: usize) -> Result<(f64, i64)> {
    let windows = ids.len() / seqlen;
    let x = Tensor::from_slice(ids).view([windows as i64, seqlen as i64]);
    let h = model.forward_hidden(&x, None, &mut NoTap)?;
    let d = h.size()[2];
    let predicted = windows * (seqlen - 1);
    let h = h
        .narrow(1, 0, seqlen as i64 - 1)
        .reshape([predicted as i64, d]);
    // Row w * (seqlen - 1) + i of `h` predicts token i + 1 of window w.
    let pairs: Vec<Pair> = ids
        .chunks_exact(seqlen)
        .flat_map(|w| &w[1..])
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
        let (s, c) = window_nll(model, &slice, seqlen)?;
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
