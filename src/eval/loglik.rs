//! Log-likelihood scoring of (context, continuation) requests, as lm-evaluation-harness
//! defines it, computed with as little work as possible:
//! - all requests of one document go into one row as a prefix trie (the shared context is
//!   computed once; each continuation attends to its own ancestors only, with positions
//!   equal to its depth, which is exactly what separate sequences would compute);
//! - rows are sorted by length and batched under a token budget; hidden states hold only
//!   real tokens, so padding costs attention alone, and batches bound their padding;
//! - the LM head runs only at the positions whose next token is scored, once each, and
//!   so does the last layer apart from its keys and values ([`crate::model::kept`]);
//! - trie nodes that several documents of a batch share run once
//!   ([`super::shared_prefix`]);
//! - on CPU each core runs whole batches, the tasks' batches in one queue
//!   ([`super::pool`], [`super::workers`]);
//! - on CUDA, the shared context runs first and the continuations against its cached
//!   keys and values instead ([`ScoreLayout`]).
//!
//! `tests/loglik.rs` checks both layouts against separate sequences.

use super::batching::{self, catch_oom};
use super::profile::{Lap, ScoreProfile};
use super::rows::{Rows, TrieRow};
use super::shared_prefix::{score_split, Split, MIN_SAVED};
use crate::error::{Error, Result};
use crate::model::tokenizer::Tokenizer;
use crate::model::Model;
use std::collections::HashMap;

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

/// How documents are laid out for the model. Both compute what separate sequences would
/// (each request's own causal view, its own positions); they differ in speed only.
/// In both, hidden states hold only real tokens, so padding costs attention only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScoreLayout {
    /// A document's shared context is forwarded once, with plain causal attention, and
    /// its keys and values are kept; then every continuation (as a small trie) attends to
    /// them. See [`super::prefix_cache`].
    Cached,
    /// Each document as one prefix trie in a row of its own, under an explicit tree
    /// mask.
    Packed,
}

impl ScoreLayout {
    /// On CPU the two forward the same tokens and attention is a small share of the work;
    /// the packed tries measured 4% faster on SmolLM2 (seven tasks, 100 documents each:
    /// 125 s against 130 s), as they need one forward per batch instead of two and no
    /// cache gathers. On a GPU attention's share grows with context length and the
    /// cached layout runs its contexts through the fused causal kernel.
    pub fn for_device(device: tch::Device) -> ScoreLayout {
        if device.is_cuda() {
            ScoreLayout::Cached
        } else {
            ScoreLayout::Packed
        }
    }
}

/// Scoring limits.
#[derive(Debug, Clone, Copy)]
pub struct ScoreOptions {
    /// Longest input the model may see; longer requests are left-truncated (lm-eval's
    /// `max_length`).
    pub max_length: usize,
    /// Upper bound on padded tokens per forward batch (rows x longest row).
    pub token_budget: usize,
}

/// A document's requests packed as a prefix trie. Nodes are numbered in creation order,
/// so the first request's path is nodes `0..`, and the input every request starts with
/// is nodes `0..shared`.
pub(super) struct Packed {
    pub tokens: Vec<i64>,
    /// Parent node, -1 for a root.
    pub parent: Vec<i64>,
    /// Position in the request's (possibly left-truncated) input.
    pub depth: Vec<i64>,
    /// Per request: (node whose output predicts each target, target token).
    pub scored: Vec<Vec<(usize, i64)>>,
    /// Length of the longest common prefix of all requests' inputs.
    pub shared: usize,
}

pub(super) fn pack(reqs: &[TokenRequest], max_length: usize) -> Result<Packed> {
    let mut p = Packed {
        tokens: vec![],
        parent: vec![],
        depth: vec![],
        scored: vec![],
        shared: 0,
    };
    let mut first: Option<Vec<i64>> = None;
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
        match &first {
            None => {
                p.shared = input.len();
                first = Some(input.to_vec());
            }
            Some(f) => p.shared = p.shared.min(common_prefix(f, input)),
        }
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

/// Every document's tries, the time going to `prof.tokenize_s`.
pub(super) fn pack_docs(
    docs: &[Vec<TokenRequest>],
    max_length: usize,
    prof: &mut ScoreProfile,
) -> Result<Vec<Packed>> {
    let t0 = std::time::Instant::now();
    let packed = docs
        .iter()
        .map(|d| pack(d, max_length))
        .collect::<Result<_>>()?;
    prof.tokenize_s += t0.elapsed().as_secs_f64();
    Ok(packed)
}

fn common_prefix(a: &[i64], b: &[i64]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Score every document's requests; returns scores in the same shape as `docs`.
/// The layout is [`ScoreLayout::for_device`]'s. `on_progress(done_docs)` is called after
/// each batch. A batch that runs out of memory
/// is retried with half as many rows, and `opts.token_budget` keeps the smaller budget
/// for later calls; a single row that does not fit is an error.
pub fn score_documents(
    model: &Model,
    docs: &[Vec<TokenRequest>],
    opts: &mut ScoreOptions,
    prof: &mut ScoreProfile,
    on_progress: impl FnMut(usize),
) -> Result<Vec<Vec<Score>>> {
    score_documents_in(
        ScoreLayout::for_device(model.device),
        model,
        docs,
        opts,
        prof,
        on_progress,
    )
}

/// [`score_documents`] in a chosen layout (to compare them).
pub fn score_documents_in(
    layout: ScoreLayout,
    model: &Model,
    docs: &[Vec<TokenRequest>],
    opts: &mut ScoreOptions,
    prof: &mut ScoreProfile,
    on_progress: impl FnMut(usize),
) -> Result<Vec<Vec<Score>>> {
    let _g = tch::no_grad_guard();
    let packed = pack_docs(docs, opts.max_length, prof)?;
    match layout {
        ScoreLayout::Cached => {
            super::prefix_cache::score(model, &packed, &mut opts.token_budget, prof, on_progress)
        }
        ScoreLayout::Packed => {
            let all: Vec<&Packed> = packed.iter().collect();
            run_batches(&all, &mut opts.token_budget, on_progress, |rows| {
                catch_oom(|| score_batch(model, rows, prof))
            })
        }
    }
}

/// The batches [`run_batches`] forms when nothing runs out of memory: document indices,
/// longest rows first.
pub(super) fn plan_batches(packed: &[Packed], budget: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..packed.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(packed[i].tokens.len()));
    let mut plan = vec![];
    let mut start = 0;
    while start < order.len() {
        let n = batch_rows(
            order[start..].iter().map(|&i| packed[i].tokens.len()),
            budget,
        );
        plan.push(order[start..start + n].to_vec());
        start += n;
    }
    plan
}

/// Batches documents (one per row, longest first, so rows of a batch have similar
/// lengths) under `budget` padded tokens ([`batch_rows`]) and scores each batch with `score`, shrinking
/// `budget` when a batch reports `Error::OutOfMemory`.
pub(super) fn run_batches(
    packed: &[&Packed],
    budget: &mut usize,
    mut on_progress: impl FnMut(usize),
    mut score: impl FnMut(&[&Packed]) -> Result<Vec<Vec<Score>>>,
) -> Result<Vec<Vec<Score>>> {
    let mut order: Vec<usize> = (0..packed.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(packed[i].tokens.len()));
    let mut out: Vec<Vec<Score>> = vec![vec![]; packed.len()];
    let mut start = 0;
    while start < order.len() {
        let longest = packed[order[start]].tokens.len().max(1);
        let n_rows = batch_rows(
            order[start..].iter().map(|&i| packed[i].tokens.len()),
            *budget,
        );
        let batch = &order[start..start + n_rows];
        let rows: Vec<&Packed> = batch.iter().map(|&i| packed[i]).collect();
        let scores = match score(&rows) {
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
        for (&i, row_scores) in batch.iter().zip(scores) {
            out[i] = row_scores;
        }
        start += batch.len();
        on_progress(start);
    }
    Ok(out)
}

/// Attention runs on the padded rows while the projections skip padding, so a batch
/// stops taking rows once padding would pass this share of its attention slots. At the
/// old fill-the-budget rule a quarter of the slots were padding, and attention took 9-10 s
/// of 70 s on three tasks (SmolLM2, 100 documents each); at 7 % it took 5.4-5.9 s.
const MAX_PAD_SHARE: f64 = 0.10;
/// Below this many real tokens a forward's matrix products slow down (on this project's
/// CPU: 88 GFLOP/s at 256 rows, 95-97 at 512-1024), so a batch takes rows up to it
/// whatever the padding.
const MIN_BATCH_TOKENS: usize = 512;

/// How many of the next rows (lengths longest first) go into one batch: at least one, at
/// most `budget` padded tokens, and no more padding than [`MAX_PAD_SHARE`] once the batch
/// holds [`MIN_BATCH_TOKENS`] real tokens.
fn batch_rows(mut lens: impl Iterator<Item = usize>, budget: usize) -> usize {
    let Some(longest) = lens.next() else {
        return 0;
    };
    let longest = longest.max(1);
    let (mut rows, mut real) = (1usize, longest);
    for len in lens {
        let padded = (rows + 1) * longest;
        let pad_share = 1.0 - (real + len) as f64 / padded as f64;
        if padded > budget || (pad_share > MAX_PAD_SHARE && real >= MIN_BATCH_TOKENS) {
            break;
        }
        rows += 1;
        real += len;
    }
    rows
}

/// One forward over documents' tries, one per row. Hidden states hold only real tokens;
/// attention runs on the padded rows under each trie's mask.
pub(super) fn score_batch(
    model: &Model,
    rows: &[&Packed],
    prof: &mut ScoreProfile,
) -> Result<Vec<Vec<Score>>> {
    if let Some(split) = Split::of(rows, MIN_SAVED) {
        return score_split(model, rows, &split, prof);
    }
    let mut lap = Lap::start(model.device);
    let tries: Vec<TrieRow> = rows
        .iter()
        .map(|r| TrieRow {
            tokens: &r.tokens,
            parent: &r.parent,
            depth: &r.depth,
            sees: 0,
        })
        .collect();
    let inputs = Rows::tries(&tries, 0, None)?;
    // The last layer, norm, head and log-softmax only at the scored positions, each once.
    let mut node_row: HashMap<i64, usize> = HashMap::new();
    let mut flat_idx = vec![];
    let mut pairs = vec![];
    let mut offset = 0;
    for row in rows {
        for req in &row.scored {
            for &(node, t) in req {
                let at = (offset + node) as i64;
                let k = *node_row.entry(at).or_insert_with(|| {
                    flat_idx.push(at);
                    flat_idx.len() - 1
                });
                pairs.push((k, t));
            }
        }
        offset += row.tokens.len();
    }
    let hsel = inputs.forward(model, None, &flat_idx, &mut lap, prof)?;
    let scored = super::head::score_pairs(model, &hsel, &pairs)?;
    prof.head_s += lap.lap();
    prof.head_positions += flat_idx.len();
    Ok(per_request(rows, &scored))
}

/// Each request's score from its tokens' (log-probability, is argmax), which `scored`
/// holds in the order of `docs`' requests and their scored tokens.
pub(super) fn per_request(docs: &[&Packed], scored: &[(f64, bool)]) -> Vec<Vec<Score>> {
    let mut it = scored.iter();
    docs.iter()
        .map(|d| {
            d.scored
                .iter()
                .map(|req| {
                    let (mut logprob, mut is_greedy) = (0f64, true);
                    for &(lp, g) in it.by_ref().take(req.len()) {
                        logprob += lp;
                        is_greedy &= g;
                    }
                    Score { logprob, is_greedy }
                })
                .collect()
        })
        .collect()
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
    fn batches_fill_the_budget_but_bound_their_padding() {
        // Equal rows: the budget alone decides.
        assert_eq!(batch_rows([100; 50].into_iter(), 4096), 40);
        // A long row among short ones: the short rows wait for a batch of their own once
        // the batch holds enough real tokens.
        let lens = [600, 590, 300, 300, 300];
        assert_eq!(batch_rows(lens.into_iter(), 4096), 2);
        // Below the token floor padding is accepted.
        let lens = [100, 60, 60, 60, 60, 60, 60, 60, 60, 60];
        let n = batch_rows(lens.into_iter(), 4096);
        let real: usize = lens[..n].iter().sum();
        assert!(
            real >= MIN_BATCH_TOKENS && n < lens.len(),
            "{n} rows, {real} tokens"
        );
        // A row longer than the budget still runs, alone; no rows, no batch.
        assert_eq!(batch_rows([5000, 10].into_iter(), 4096), 1);
        assert_eq!(batch_rows(std::iter::empty(), 4096), 0);
    }

    #[test]
    fn out_of_memory_backs_off_and_scores_everything_once() {
        let owned = docs();
        let packed: Vec<&Packed> = owned.iter().collect();
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
        let owned = docs();
        let packed: Vec<&Packed> = owned.iter().collect();
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
        let owned = docs();
        let packed: Vec<&Packed> = owned.iter().collect();
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
