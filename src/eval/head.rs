//! The LM head at scored positions only: final norm, logits, log-softmax and argmax, for
//! the positions whose next token some request scores. Several requests often score the
//! same position (every answer's first token follows the same context), so each position
//! is computed once and each (position, target) pair reads its row.

use crate::error::Result;
use crate::model::Model;
use tch::{Device, Kind, Tensor};

/// Positions per head call. The logits block is `[chunk, vocab]` f32. On CPU it stays
/// under 24 MiB, so its buffers are reused from the heap (see `crate::heap`) rather than
/// mapped and faulted in anew per chunk (128 rows for SmolLM2's 49k vocabulary; the
/// matmul's speed hardly changes between 128 and 512 rows there). On a GPU 1024 rows
/// keep the device busy (0.5 GiB for a 128k vocabulary).
const CHUNK_BYTES_CPU: i64 = 24 << 20;
const CHUNK_CUDA: i64 = 1024;

/// A (row of `hidden`, target token) pair to score.
pub type Pair = (usize, i64);

/// Per pair: the target's log-probability (nats) and whether it is the argmax.
pub fn score_pairs(model: &Model, hidden: &Tensor, pairs: &[Pair]) -> Result<Vec<(f64, bool)>> {
    if pairs.is_empty() {
        return Ok(vec![]);
    }
    let dev = model.device;
    let vocab = model.config.vocab_size.max(1);
    let chunk = if dev.is_cuda() {
        CHUNK_CUDA
    } else {
        (CHUNK_BYTES_CPU / (4 * vocab)).clamp(16, 512)
    };
    let rows = hidden.size()[0];
    let normed = model.final_norm(hidden);
    let (mut lps, mut maxes) = (vec![], vec![]);
    // Pairs sorted by row, so each chunk of rows reads a contiguous run of pairs.
    let mut order: Vec<usize> = (0..pairs.len()).collect();
    order.sort_by_key(|&i| pairs[i].0);
    let mut at = 0;
    let mut s0 = 0;
    while s0 < rows {
        let k = chunk.min(rows - s0);
        let logits = model.lm_head(&normed.narrow(0, s0, k));
        // Half-precision logits are upcast for the log-softmax; f64 stays f64.
        let logits = match logits.kind() {
            Kind::Double => logits,
            _ => logits.to_kind(Kind::Float),
        };
        // logsumexp as libtorch computes it (max, then log-sum-exp of the shifted
        // values), keeping the max's index as the argmax.
        let (mx, arg) = logits.max_dim(-1, true);
        let mut shifted = &logits - &mx;
        let _ = shifted.exp_();
        let lse = shifted.sum_dim_intlist(-1, false, Kind::Float).log() + mx.squeeze_dim(-1);
        drop(shifted);
        let vocab = logits.size()[1];
        let end = order[at..]
            .iter()
            .position(|&i| pairs[i].0 as i64 >= s0 + k)
            .map_or(order.len(), |p| at + p);
        let flat: Vec<i64> = order[at..end]
            .iter()
            .map(|&i| (pairs[i].0 as i64 - s0) * vocab + pairs[i].1)
            .collect();
        let local: Vec<i64> = order[at..end]
            .iter()
            .map(|&i| pairs[i].0 as i64 - s0)
            .collect();
        let flat = Tensor::from_slice(&flat).to_device(dev);
        let local = Tensor::from_slice(&local).to_device(dev);
        lps.push(logits.view([-1]).index_select(0, &flat) - lse.index_select(0, &local));
        maxes.push(arg.squeeze_dim(-1).index_select(0, &local));
        at = end;
        s0 += k;
    }
    let lp = Vec::<f64>::try_from(
        Tensor::cat(&lps, 0)
            .to_kind(Kind::Double)
            .to_device(Device::Cpu),
    )?;
    let am = Vec::<i64>::try_from(Tensor::cat(&maxes, 0).to_device(Device::Cpu))?;
    let mut out = vec![(0.0, false); pairs.len()];
    for (k, &i) in order.iter().enumerate() {
        out[i] = (lp[k], am[k] == pairs[i].1);
    }
    Ok(out)
}
