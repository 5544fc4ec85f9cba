//! Log-likelihood scoring of (context, continuation) requests, as lm-evaluation-harness
//! defines it, computed with as little work as possible:
//! - all requests of one document go into one row as a prefix trie (the shared context is
//!   computed once; each continuation attends to its own ancestors only, with positions
//!   equal to its depth, which is exactly what separate sequences would compute);
//! - rows are sorted by length and batched under a token budget, so padding stays small;
//! - the LM head runs only at the positions whose next token is scored.

use super::batching::{self, catch_oom};
use crate::error::{Error, Result};
use crate::model::forward::NoTap;
use crate::model::tokenizer::Tokenizer;
use crate::model::Model;
use std::collections::HashMap;
use tch::{Kind, Tensor};

/// One request after tokenisation: the model sees `context ++ continuation` and the
/// continuation's tokens are scored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequest {
    pub context: Vec<u32>,
    pub continuation: Vec<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Score {
    /// Sum of the continuation tokens' log-probabilities (nats).
    pub logprob: f64,
    /// Every continuation token is the argmax of its distribution.
    pub is_greedy: bool,
}

/// lm-eval's `_encode_pair`: trailing whitespace of the context moves to the front of the
/// continuation; the continuation's tokens are those of the joint encoding after the
/// context's own token count. An empty context becomes the prefix token (BOS, else EOS).
pub fn encode_pair(
    tok: &Tokenizer,
    context: &str,
    continuation: &str,
    add_special: bool,
) -> Result<TokenRequest> {
    if context.is_empty() {
        let prefix = tok
            .bos_id
            .or_else(|| tok.eos_ids.first().copied())
            .ok_or_else(|| {
                Error::Invalid("empty context and no BOS/EOS token to stand for it".into())
            })?;
        return Ok(TokenRequest {
            context: vec![prefix],
            continuation: tok.encode(continuation, add_special)?,
        });
    }
    // Python's str.rstrip(): its whitespace set is wider than Rust's (e.g. U+001C..U+001F).
    let trimmed = context.trim_end_matches(crate::eval::tasks::pytext::is_py_space);
    let moved = &context[trimmed.len()..];
    let cont = format!("{moved}{continuation}");
    let whole = tok.encode(&format!("{trimmed}{cont}"), add_special)?;
    let ctx = tok.encode(trimmed, add_special)?;
    let continuation = whole.get(ctx.len()..).unwrap_or_default().to_vec();
    Ok(TokenRequest {
        context: ctx,
        continuation,
    })
}

/// Scored positions per LM-head call: on CPU a small block stays in cache; on a GPU a
/// large one keeps the device busy ([chunk, vocab] f32 logits: 0.5 GiB for a 128k vocab).
const HEAD_CHUNK: i64 = 128;
const HEAD_CHUNK_CUDA: i64 = 1024;

/// Scoring limits.
#[derive(Debug, Clone, Copy)]
pub struct ScoreOptions {
    /// Longest input the model may see; longer requests are left-truncated (lm-eval's
    /// `max_length`).
    pub max_length: usize,
    /// Upper bound on padded tokens per forward batch (rows x longest row).
    pub token_budget: usize,
}

/// A document's requests packed as a prefix trie.
struct Packed {
    tokens: Vec<i64>,
    parent: Vec<i64>,
    depth: Vec<i64>,
    /// Per request: (node whose output predicts each target, target token).
    scored: Vec<Vec<(usize, i64)>>,
}

fn pack(reqs: &[TokenRequest], max_length: usize) -> Result<Packed> {
    let mut p = Packed {
        tokens: vec![],
        parent: vec![],
        depth: vec![],
        scored: vec![],
    };
    let mut children: HashMap<(i64, i64), usize> = HashMap::new();
    for r in reqs {
        if r.continuation.is_empty() {
            return Err(Error::Invalid("a request has an empty continuation".into()));
        }
        let mut whole: Vec<i64> = r
            .context
            .iter()
            .chain(&r.continuation)
            .map(|&t| t as i64)
            .collect();
        if whole.len() > max_length + 1 {
            whole.drain(..whole.len() - (max_length + 1));
        }
        let input = &whole[..whole.len() - 1];
        let n_cont = r.continuation.len().min(input.len());
        let mut node = -1i64;
        let mut path = Vec::with_capacity(input.len());
        for (d, &t) in input.iter().enumerate() {
            node = *children.entry((node, t)).or_insert_with(|| {
                p.tokens.push(t);
                p.parent.push(node);
                p.depth.push(d as i64);
                p.tokens.len() - 1
            }) as i64;
            path.push(node as usize);
        }
        let first = input.len() - n_cont;
        let targets = &whole[whole.len() - n_cont..];
        p.scored.push(
            path[first..]
                .iter()
                .copied()
                .zip(targets.iter().copied())
                .collect(),
        );
    }
    Ok(p)
}

/// Tokens one document occupies when packed (its trie size): what the model computes.
pub fn packed_len(reqs: &[TokenRequest], max_length: usize) -> usize {
    pack(reqs, max_length).map_or(0, |p| p.tokens.len())
}

/// Several documents' tries side by side in one row: their roots attend to nothing before
/// them, so documents never see each other, and short documents waste no padding.
fn concat_rows(parts: &[&Packed]) -> Packed {
    let mut row = Packed {
        tokens: vec![],
        parent: vec![],
        depth: vec![],
        scored: vec![],
    };
    for p in parts {
        let off = row.tokens.len();
        row.tokens.extend(&p.tokens);
        row.parent.extend(
            p.parent
                .iter()
                .map(|&x| if x < 0 { -1 } else { x + off as i64 }),
        );
        row.depth.extend(&p.depth);
        row.scored.extend(
            p.scored
                .iter()
                .map(|r| r.iter().map(|&(n, t)| (n + off, t)).collect()),
        );
    }
    row
}

/// Row length documents are packed into (a longer document gets a row of its own size).
/// Attention over a packed row costs O(row^2) although most pairs are masked, so rows stay
/// short enough for that to be a small fraction of the projections' work.
const ROW_TOKENS: usize = 256;

/// Score every document's requests; returns scores in the same shape as `docs`.
/// `on_progress(done_docs)` is called after each batch. A batch that runs out of memory
/// is retried with half as many rows, and `opts.token_budget` keeps the smaller budget
/// for later calls; a single row that does not fit is an error.
pub fn score_documents(
    model: &Model,
    docs: &[Vec<TokenRequest>],
    opts: &mut ScoreOptions,
    on_progress: impl FnMut(usize),
) -> Result<Vec<Vec<Score>>> {
    let _g = tch::no_grad_guard();
    let packed: Vec<Packed> = docs
        .iter()
        .map(|d| pack(d, opts.max_length))
        .collect::<Result<_>>()?;
    let head_chunk = if model.device.is_cuda() {
        HEAD_CHUNK_CUDA
    } else {
        HEAD_CHUNK
    };
    run_batches(&packed, &mut opts.token_budget, on_progress, |rows| {
        catch_oom(|| score_batch(model, rows, head_chunk))
    })
}

/// Packs documents into rows, batches rows under `budget` and scores each batch with
/// `score`, shrinking `budget` when a batch reports `Error::OutOfMemory`.
fn run_batches(
    packed: &[Packed],
    budget: &mut usize,
    mut on_progress: impl FnMut(usize),
    mut score: impl FnMut(&[&Packed]) -> Result<Vec<Vec<Score>>>,
) -> Result<Vec<Vec<Score>>> {
    // First-fit decreasing into rows of ROW_TOKENS: longest first, so the slowest batches
    // come early (a realistic ETA, and an out-of-memory back-off happens at once) and rows
    // of similar length share a batch.
    let mut order: Vec<usize> = (0..packed.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(packed[i].tokens.len()));
    let mut rows: Vec<(usize, Vec<usize>)> = vec![];
    for &i in &order {
        let len = packed[i].tokens.len();
        match rows.iter_mut().find(|(used, _)| used + len <= ROW_TOKENS) {
            Some((used, members)) => {
                *used += len;
                members.push(i);
            }
            None => rows.push((len, vec![i])),
        }
    }
    rows.sort_by_key(|(used, _)| std::cmp::Reverse(*used));
    let mut out: Vec<Vec<Score>> = vec![vec![]; packed.len()];
    let mut done = 0;
    let mut start = 0;
    while start < rows.len() {
        let longest = rows[start].0.max(1);
        let n_rows = (*budget / longest).max(1);
        let batch = &rows[start..(start + n_rows).min(rows.len())];
        let combined: Vec<Packed> = batch
            .iter()
            .map(|(_, m)| concat_rows(&m.iter().map(|&i| &packed[i]).collect::<Vec<_>>()))
            .collect();
        let scores = match score(&combined.iter().collect::<Vec<_>>()) {
            Err(Error::OutOfMemory(msg)) => match batching::shrink(batch.len(), longest) {
                Some(smaller) => {
                    *budget = smaller;
                    continue;
                }
                None => {
                    return Err(Error::OutOfMemory(format!(
                        "one row of {longest} tokens does not fit ({msg}); use a smaller \
                         model dtype or a device with more memory"
                    )))
                }
            },
            other => other?,
        };
        for ((_, members), row_scores) in batch.iter().zip(scores) {
            let mut it = row_scores.into_iter();
            for &i in members {
                out[i] = it.by_ref().take(packed[i].scored.len()).collect();
                done += 1;
            }
        }
        start += batch.len();
        on_progress(done);
    }
    Ok(out)
}

fn score_batch(model: &Model, rows: &[&Packed], head_chunk: i64) -> Result<Vec<Vec<Score>>> {
    let b = rows.len();
    let n = rows
        .iter()
        .map(|r| r.tokens.len())
        .max()
        .unwrap_or(1)
        .max(1);
    let mut ids = vec![0i64; b * n];
    let mut pos = vec![0i64; b * n];
    let mut mask = vec![false; b * n * n];
    for (r, row) in rows.iter().enumerate() {
        let m = &mut mask[r * n * n..(r + 1) * n * n];
        for i in 0..n {
            if i < row.tokens.len() {
                ids[r * n + i] = row.tokens[i];
                pos[r * n + i] = row.depth[i];
                // A node sees its parent's view plus itself (parents precede children).
                let par = row.parent[i];
                if par >= 0 {
                    let (before, after) = m.split_at_mut(i * n);
                    let prow = &before[par as usize * n..par as usize * n + n];
                    after[..n].copy_from_slice(prow);
                }
            }
            m[i * n + i] = true; // padding nodes see only themselves (no NaN rows)
        }
    }
    let dev = model.device;
    let ids_t = Tensor::from_slice(&ids)
        .view([b as i64, n as i64])
        .to_device(dev);
    let pos_t = Tensor::from_slice(&pos).view([b as i64, n as i64]);
    let mask_t = Tensor::from_slice(&mask).view([b as i64, 1, n as i64, n as i64]);
    let ctx = model.context_explicit(&pos_t, mask_t, None);
    let h = model.embed_tokens(&ids_t)?;
    let h = model.run_layers(h, 0..model.n_layers(), &ctx, &mut NoTap, None);
    // Gather only the scored positions, then norm + head + log-softmax on those.
    let mut flat_idx = vec![];
    let mut targets = vec![];
    for (r, row) in rows.iter().enumerate() {
        for req in &row.scored {
            for &(node, t) in req {
                flat_idx.push((r * n + node) as i64);
                targets.push(t);
            }
        }
    }
    let hsel = h
        .view([(b * n) as i64, -1])
        .index_select(0, &Tensor::from_slice(&flat_idx).to_device(dev));
    let hsel = model.final_norm(&hsel);
    let tgt_all = Tensor::from_slice(&targets).to_device(dev);
    // The head runs in chunks: a [scored, vocab] logits block for a whole batch would be
    // gigabytes, and streaming it through memory costs more than the matmul itself.
    // Results stay on the device until the end: one transfer per batch, not per chunk.
    let (mut lps, mut maxes) = (vec![], vec![]);
    let total = targets.len() as i64;
    let mut s0 = 0;
    while s0 < total {
        let k = head_chunk.min(total - s0);
        let logits = model.lm_head(&hsel.narrow(0, s0, k)).to_kind(Kind::Float);
        let lse = logits.logsumexp([-1i64], false);
        let tgt = tgt_all.narrow(0, s0, k).unsqueeze(-1);
        lps.push(logits.gather(-1, &tgt, false).squeeze_dim(-1) - lse);
        maxes.push(logits.argmax(-1, false));
        s0 += k;
    }
    let (tok_lp, argmax) = if lps.is_empty() {
        (vec![], vec![])
    } else {
        let lp = Tensor::cat(&lps, 0).to_kind(Kind::Double);
        (
            Vec::<f64>::try_from(lp.to_device(tch::Device::Cpu))?,
            Vec::<i64>::try_from(Tensor::cat(&maxes, 0).to_device(tch::Device::Cpu))?,
        )
    };
    let mut k = 0;
    let mut res = Vec::with_capacity(b);
    for row in rows {
        let mut scores = vec![];
        for req in &row.scored {
            let (mut lp, mut greedy) = (0f64, true);
            for &(_, t) in req {
                lp += tok_lp[k];
                greedy &= argmax[k] == t;
                k += 1;
            }
            scores.push(Score {
                logprob: lp,
                is_greedy: greedy,
            });
        }
        res.push(scores);
    }
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn docs() -> Vec<Packed> {
        (0..40u32)
            .map(|d| {
                let reqs: Vec<TokenRequest> = (0..3u32)
                    .map(|c| TokenRequest {
                        context: (0..(5 + d % 17)).map(|t| t + d).collect(),
                        continuation: (0..(1 + (c + d) % 4)).map(|t| 100 + t + c).collect(),
                    })
                    .collect();
                pack(&reqs, 64).unwrap()
            })
            .collect()
    }

    /// Scores each request by a function of its targets alone, and fails like a device
    /// out of memory when a batch holds more than `limit` padded tokens.
    fn fake(
        limit: usize,
        calls: &mut Vec<usize>,
    ) -> impl FnMut(&[&Packed]) -> Result<Vec<Vec<Score>>> + '_ {
        move |rows| {
            let padded = rows.len() * rows.iter().map(|r| r.tokens.len()).max().unwrap_or(0);
            calls.push(padded);
            if padded > limit {
                return Err(Error::OutOfMemory("CUDA out of memory (simulated)".into()));
            }
            Ok(rows
                .iter()
                .map(|r| {
                    r.scored
                        .iter()
                        .map(|req| Score {
                            logprob: req.iter().map(|&(_, t)| -(t as f64)).sum(),
                            is_greedy: req.len() == 1,
                        })
                        .collect()
                })
                .collect())
        }
    }

    #[test]
    fn out_of_memory_backs_off_and_scores_everything_once() {
        let packed = docs();
        let mut calls = vec![];
        let mut big = usize::MAX / 2;
        let want = run_batches(&packed, &mut big, |_| {}, fake(usize::MAX, &mut calls)).unwrap();
        let mut calls = vec![];
        let mut budget = 4096;
        let mut progress = vec![];
        let got = run_batches(
            &packed,
            &mut budget,
            |d| progress.push(d),
            fake(600, &mut calls),
        )
        .unwrap();
        assert_eq!(got, want);
        assert!(budget <= 600 && budget > 0, "budget {budget}");
        // The first batch failed at least once, later ones never needed to.
        assert!(calls[0] > 600);
        let fails = calls.iter().filter(|&&c| c > 600).count();
        assert!(calls[fails..].iter().all(|&c| c <= 600), "{calls:?}");
        assert_eq!(progress.last(), Some(&packed.len()));
        assert!(progress.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn a_row_that_never_fits_is_an_error_not_a_loop() {
        let packed = docs();
        let mut calls = vec![];
        let mut budget = 4096;
        let e = run_batches(&packed, &mut budget, |_| {}, fake(3, &mut calls)).unwrap_err();
        assert!(
            matches!(&e, Error::OutOfMemory(m) if m.contains("one row")),
            "{e}"
        );
        assert!(calls.len() < 20, "{calls:?}");
    }

    #[test]
    fn other_errors_are_not_retried() {
        let packed = docs();
        let mut n = 0;
        let mut budget = 4096;
        let e = run_batches(
            &packed,
            &mut budget,
            |_| {},
            |_| {
                n += 1;
                Err(Error::Invalid("broken".into()))
            },
        );
        assert!(matches!(e, Err(Error::Invalid(_))));
        assert_eq!((n, budget), (1, 4096));
    }
}
