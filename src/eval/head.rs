//! The LM head at scored positions only: final norm, logits, log-softmax and argmax, for
//! the positions whose next token some request scores. Several requests often score the
//! same position (every answer's first token follows the same context), so each position
//! is computed once and each (position, target) pair reads its row.
//!
//! On CPU the logits are computed in tiles of the vocabulary with an online
//! log-sum-exp: a `[rows, 4096]` block stays in cache between the matmul and the
//! reductions, and the matmul runs on many rows at once. One `[128, 49k]` block per call
//! (the previous layout) ran the matmul at about half the layers' rate; tiles measured
//! about 35 % faster for the whole head (`bench eval` prints the head's seconds). On a GPU
//! the whole vocabulary is one tile.

use crate::error::{Error, Result};
use crate::model::Model;
use tch::{Device, Kind, Tensor};

/// Positions per block and vocabulary entries per tile, per device. The CPU block is
/// `[1024, 4096]` f32 = 16 MiB, under the heap's mapping threshold (see `crate::heap`),
/// so its buffers are reused rather than faulted in anew.
const ROWS_CPU: i64 = 1024;
const VOCAB_TILE_CPU: i64 = 4096;
const ROWS_CUDA: i64 = 1024;

/// A (row of `hidden`, target token) pair to score.
pub type Pair = (usize, i64);

/// Per pair: the target's log-probability (nats) and whether it is the argmax.
pub fn score_pairs(model: &Model, hidden: &Tensor, pairs: &[Pair]) -> Result<Vec<(f64, bool)>> {
    if pairs.is_empty() {
        return Ok(vec![]);
    }
    let dev = model.device;
    let vocab = model.head_weight().size()[0];
    if let Some(&(_, t)) = pairs.iter().find(|p| !(0..vocab).contains(&p.1)) {
        return Err(Error::Invalid(format!(
            "target token {t} is outside the vocabulary [0, {vocab})"
        )));
    }
    let (block, tile) = if dev.is_cuda() {
        (ROWS_CUDA, vocab)
    } else {
        (ROWS_CPU, VOCAB_TILE_CPU.min(vocab))
    };
    let rows = hidden.size()[0];
    let normed = model.final_norm(hidden);
    // Pairs sorted by row, so each block of rows reads a contiguous run of pairs.
    let mut order: Vec<usize> = (0..pairs.len()).collect();
    order.sort_by_key(|&i| pairs[i].0);
    let mut out = vec![(0.0, false); pairs.len()];
    let mut at = 0;
    let mut s0 = 0;
    while s0 < rows {
        let k = block.min(rows - s0);
        let end = order[at..]
            .iter()
            .position(|&i| pairs[i].0 as i64 >= s0 + k)
            .map_or(order.len(), |p| at + p);
        let mine = &order[at..end];
        if !mine.is_empty() {
            let scored = score_block(model, &normed.narrow(0, s0, k), s0, pairs, mine, tile)?;
            for (&i, r) in mine.iter().zip(scored) {
                out[i] = r;
            }
        }
        at = end;
        s0 += k;
    }
    Ok(out)
}

/// Per row of a tile's logits: its maximum and the sum of exp(logit - max).
fn max_sumexp(mut logits: Tensor) -> (Tensor, Tensor) {
    // One pass per row, in cache (at one thread on CPU).
    if let Some(ms) = crate::model::fused::max_sumexp(&logits) {
        return ms;
    }
    // The logits are not read again: exp(logit - max) in place.
    let mx = logits.amax([-1i64].as_slice(), true);
    let _ = logits.g_sub_(&mx);
    let _ = logits.exp_();
    let sums = logits.sum_dim_intlist(-1, false, logits.kind());
    (mx.squeeze_dim(-1), sums)
}

/// log-sum-exp over the tiles in f64 (max over tiles M, then log(sum_t s_t e^(m_t - M)) +
/// M), with the first tile that holds each row's maximum.
fn log_sum_exp(maxes: &[Tensor], sums: &[Tensor]) -> (Tensor, Tensor) {
    let maxes = Tensor::stack(maxes, 1).to_kind(Kind::Double);
    let sums = Tensor::stack(sums, 1).to_kind(Kind::Double);
    let (top, top_tile) = maxes.max_dim(1, false);
    let lse = ((maxes - top.unsqueeze(1)).exp() * sums)
        .sum_dim_intlist(1, false, Kind::Double)
        .log()
        + top;
    (lse, top_tile)
}

/// One block of rows starting at `s0`: `mine` are the pairs (indices into `pairs`) whose
/// row lies in it, in row order.
fn score_block(
    model: &Model,
    normed: &Tensor,
    s0: i64,
    pairs: &[Pair],
    mine: &[usize],
    tile: i64,
) -> Result<Vec<(f64, bool)>> {
    let dev = model.device;
    let weight = model.head_weight();
    let vocab = weight.size()[0];
    let local: Vec<i64> = mine.iter().map(|&i| pairs[i].0 as i64 - s0).collect();
    let local_t = Tensor::from_slice(&local).to_device(dev);
    // Per tile: its maximum and sum of exp(logit - max) per row, the logits of the
    // targets that fall in it, and the first argmax of the tile's rows that have such a
    // target (an argmax over every row cost as much as the rest of the reductions).
    let (mut maxes, mut sums) = (vec![], vec![]);
    let (mut picked, mut local_arg) = (vec![], vec![]);
    let mut picked_of: Vec<usize> = vec![];
    let mut tile_of: Vec<i64> = vec![];
    let mut v0 = 0;
    while v0 < vocab {
        let n = tile.min(vocab - v0);
        let logits = normed.linear::<&Tensor>(&weight.narrow(0, v0, n), None);
        // Half-precision logits are upcast for the log-softmax; f64 stays f64.
        let logits = match logits.kind() {
            Kind::Double => logits,
            _ => logits.to_kind(Kind::Float),
        };
        let (rows, which): (Vec<i64>, Vec<usize>) = mine
            .iter()
            .enumerate()
            .filter(|(_, &i)| (v0..v0 + n).contains(&pairs[i].1))
            .map(|(j, &i)| (pairs[i].0 as i64 - s0, j))
            .unzip();
        if !rows.is_empty() {
            let rows = logits.index_select(0, &Tensor::from_slice(&rows).to_device(dev));
            let targets: Vec<i64> = which.iter().map(|&j| pairs[mine[j]].1 - v0).collect();
            let targets = Tensor::from_slice(&targets).to_device(dev).unsqueeze(1);
            picked.push(rows.gather(1, &targets, false).squeeze_dim(1));
            local_arg.push(rows.argmax(-1, false) + v0);
            tile_of.extend(std::iter::repeat_n(maxes.len() as i64, which.len()));
            picked_of.extend(which);
        }
        let (m, s) = max_sumexp(logits);
        maxes.push(m);
        sums.push(s);
        v0 += n;
    }
    let (lse, top_tile) = log_sum_exp(&maxes, &sums);
    let lse = Vec::<f64>::try_from(lse.index_select(0, &local_t).to_device(Device::Cpu))?;
    let top_tile = Vec::<i64>::try_from(top_tile.index_select(0, &local_t).to_device(Device::Cpu))?;
    let target = Vec::<f64>::try_from(
        Tensor::cat(&picked, 0)
            .to_kind(Kind::Double)
            .to_device(Device::Cpu),
    )?;
    let arg = Vec::<i64>::try_from(Tensor::cat(&local_arg, 0).to_device(Device::Cpu))?;
    // A target is the argmax over the whole vocabulary when it is its tile's first
    // argmax and its tile is the first holding the maximum: a single max over the
    // vocabulary returns the first of equal maxima.
    let mut logit = vec![0.0; mine.len()];
    let mut greedy = vec![false; mine.len()];
    for (((&j, t), a), tile) in picked_of.iter().zip(target).zip(arg).zip(tile_of) {
        logit[j] = t;
        greedy[j] = a == pairs[mine[j]].1 && tile == top_tile[j];
    }
    Ok((0..mine.len())
        .map(|j| (logit[j] - lse[j], greedy[j]))
        .collect())
}
