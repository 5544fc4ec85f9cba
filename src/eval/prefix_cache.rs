//! Cached-context scoring. A document's requests share a context (the trunk: the longest
//! input every request starts with). The trunk goes through the model once, in rows of
//! trunks of similar length with plain causal attention (right padding needs no mask, so
//! the fused causal kernel runs), and its keys and values are kept. Then the rest of each
//! document (its requests' continuations as a small prefix trie, the branches) runs
//! against those cached keys and values, many documents per forward. Every token sees
//! exactly what it would see as part of its own request's sequence, at the same position,
//! so scores equal separate sequences' (tests/loglik.rs).
//!
//! Documents go in groups whose kept keys and values fit a memory budget; within a group
//! they are sorted by length so padding stays small.

use super::batching::{self, catch_oom};
use super::head::{score_pairs, Pair};
use super::loglik::{Packed, Score};
use super::profile::{Lap, ScoreProfile};
use super::rows::{Rows, TrieRow};
use crate::error::{Error, Result};
use crate::model::forward::KvCache;
use crate::model::Model;
use std::collections::HashMap;
use std::rc::Rc;
use tch::Tensor;

/// Kept keys and values per group: the cache of a SmolLM2-135M token is 46 KB in f32.
const CACHE_BYTES_CPU: usize = 1 << 30;
const CACHE_BYTES_CUDA: usize = 2 << 30;
/// Branch rows per forward: each row gathers its document's whole cache.
const MAX_BRANCH_ROWS: usize = 64;

/// Where a scored token's prediction comes from.
#[derive(Debug, Clone, Copy)]
enum Node {
    Trunk(usize),
    Branch(usize),
}

/// A document split at the end of its trunk.
struct Split {
    trunk: Vec<i64>,
    /// Branch nodes: token, parent (branch index; -1 = hangs from the trunk's end, or is
    /// a root when the trunk is empty), absolute position.
    tokens: Vec<i64>,
    parent: Vec<i64>,
    depth: Vec<i64>,
    scored: Vec<Vec<(Node, i64)>>,
}

impl Split {
    fn new(p: &Packed) -> Split {
        let t = p.shared;
        let node = |n: usize| {
            if n < t {
                Node::Trunk(n)
            } else {
                Node::Branch(n - t)
            }
        };
        Split {
            trunk: p.tokens[..t].to_vec(),
            tokens: p.tokens[t..].to_vec(),
            parent: p.parent[t..]
                .iter()
                .map(|&x| if x < t as i64 { -1 } else { x - t as i64 })
                .collect(),
            depth: p.depth[t..].to_vec(),
            scored: p
                .scored
                .iter()
                .map(|r| r.iter().map(|&(n, tg)| (node(n), tg)).collect())
                .collect(),
        }
    }
}

/// A document's kept keys and values: row `row` of a trunk batch's cache.
struct Kept {
    cache: Rc<KvCache>,
    row: i64,
}

/// Per document, per request, per scored token: (log-probability, is argmax).
type TokenScores = Vec<Vec<Vec<(f64, bool)>>>;

pub(super) fn score(
    model: &Model,
    packed: &[Packed],
    budget: &mut usize,
    prof: &mut ScoreProfile,
    mut on_progress: impl FnMut(usize),
) -> Result<Vec<Vec<Score>>> {
    let splits: Vec<Split> = packed.iter().map(Split::new).collect();
    let mut got: TokenScores = splits
        .iter()
        .map(|s| {
            s.scored
                .iter()
                .map(|r| vec![(0.0, true); r.len()])
                .collect()
        })
        .collect();
    let c = &model.config;
    let token_bytes = model.n_layers()
        * 2
        * (c.num_key_value_heads * c.head_dim) as usize
        * model.dtype.elt_size_in_bytes();
    let cache_budget = if model.device.is_cuda() {
        CACHE_BYTES_CUDA
    } else {
        CACHE_BYTES_CPU
    };
    // Longest trunks first: the slowest batches come early (a realistic ETA, and an
    // out-of-memory back-off happens at once).
    let mut order: Vec<usize> = (0..splits.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(splits[i].trunk.len()));
    let mut done = 0;
    let mut start = 0;
    while start < order.len() {
        let mut bytes = 0;
        let mut end = start;
        while end < order.len() && (end == start || bytes < cache_budget) {
            let s = &splits[order[end]];
            if !s.tokens.is_empty() {
                bytes += s.trunk.len() * token_bytes;
            }
            end += 1;
        }
        let group = &order[start..end];
        let mut kept: HashMap<usize, Kept> = HashMap::new();
        let mut step = Step {
            model,
            splits: &splits,
            budget: &mut *budget,
            prof: &mut *prof,
            got: &mut got,
        };
        run_trunks(&mut step, group, &mut kept, |n| {
            done += n;
            on_progress(done)
        })?;
        run_branches(&mut step, group, &kept, |n| {
            done += n;
            on_progress(done)
        })?;
        start = end;
    }
    Ok(got
        .into_iter()
        .map(|doc| {
            doc.into_iter()
                .map(|req| Score {
                    logprob: req.iter().map(|x| x.0).sum(),
                    is_greedy: req.iter().all(|x| x.1),
                })
                .collect()
        })
        .collect())
}

/// Runs `f` on consecutive batches of `items` (sorted longest first): as many as `budget`
/// allows for the first item's `cost`, at most `max_rows`. A batch that runs out of
/// memory is retried with half the rows; `f` must change nothing before it succeeds.
fn in_batches(
    items: &[usize],
    cost: impl Fn(usize) -> usize,
    budget: &mut usize,
    max_rows: usize,
    mut f: impl FnMut(&[usize]) -> Result<()>,
) -> Result<()> {
    let mut start = 0;
    while start < items.len() {
        let longest = cost(items[start]).max(1);
        let n = (*budget / longest).clamp(1, max_rows);
        let batch = &items[start..(start + n).min(items.len())];
        match catch_oom(|| f(batch)) {
            Err(Error::OutOfMemory(msg)) => match batching::shrink(batch.len(), longest) {
                Some(smaller) => *budget = smaller,
                None => {
                    return Err(Error::OutOfMemory(format!(
                        "one row of {longest} tokens does not fit ({msg}); use a smaller \
                         model dtype or a device with more memory"
                    )))
                }
            },
            other => {
                other?;
                start += batch.len();
            }
        }
    }
    Ok(())
}

/// What one group's passes share: the model, every document's split, the batch budget
/// (shrunk on out-of-memory), the profile, and the scores filled in so far.
struct Step<'a> {
    model: &'a Model,
    splits: &'a [Split],
    budget: &'a mut usize,
    prof: &'a mut ScoreProfile,
    got: &'a mut TokenScores,
}

/// Forwards the group's trunks, scores what they predict, and keeps the caches of the
/// documents that have branches. `finished(n)` reports documents with nothing left.
fn run_trunks(
    st: &mut Step,
    group: &[usize],
    kept: &mut HashMap<usize, Kept>,
    mut finished: impl FnMut(usize),
) -> Result<()> {
    let (model, splits) = (st.model, st.splits);
    let (budget, prof, got) = (&mut *st.budget, &mut *st.prof, &mut *st.got);
    let with_trunk: Vec<usize> = group
        .iter()
        .copied()
        .filter(|&d| !splits[d].trunk.is_empty())
        .collect();
    let longest = |d: usize| splits[d].trunk.len();
    in_batches(&with_trunk, longest, budget, usize::MAX, |batch| {
        let mut lap = Lap::start(model.device);
        let inputs = Rows::causal(batch.iter().map(|&d| splits[d].trunk.as_slice()));
        let keep = batch.iter().any(|&d| !splits[d].tokens.is_empty());
        let mut cache = keep.then(|| KvCache::new(model.n_layers()));
        let targets = collect_pairs(splits, batch, inputs.lens(), |node| match node {
            Node::Trunk(i) => Some(i),
            Node::Branch(_) => None,
        });
        let h = inputs.forward(model, cache.as_mut(), &targets.rows, &mut lap, prof)?;
        let scores = head(model, &h, &targets, prof)?;
        prof.head_s += lap.lap();
        // Nothing above changed any state but the profile: commit now.
        store(got, &targets.slots, &scores);
        let cache = cache.map(Rc::new);
        let mut ended = 0;
        for (r, &d) in batch.iter().enumerate() {
            match &cache {
                Some(c) if !splits[d].tokens.is_empty() => {
                    kept.insert(
                        d,
                        Kept {
                            cache: c.clone(),
                            row: r as i64,
                        },
                    );
                }
                _ => ended += 1,
            }
        }
        finished(ended);
        Ok(())
    })
}

/// Forwards the group's branches against their documents' kept trunk caches.
fn run_branches(
    st: &mut Step,
    group: &[usize],
    kept: &HashMap<usize, Kept>,
    mut finished: impl FnMut(usize),
) -> Result<()> {
    let (model, splits) = (st.model, st.splits);
    let (budget, prof, got) = (&mut *st.budget, &mut *st.prof, &mut *st.got);
    let mut with_branch: Vec<usize> = group
        .iter()
        .copied()
        .filter(|&d| !splits[d].tokens.is_empty())
        .collect();
    with_branch.sort_by_key(|&d| std::cmp::Reverse(splits[d].tokens.len()));
    let longest = |d: usize| splits[d].tokens.len();
    in_batches(&with_branch, longest, budget, MAX_BRANCH_ROWS, |batch| {
        let mut lap = Lap::start(model.device);
        let past = batch
            .iter()
            .map(|&d| splits[d].trunk.len())
            .max()
            .unwrap_or(0);
        let tries: Vec<TrieRow> = batch
            .iter()
            .map(|&d| {
                let s = &splits[d];
                TrieRow {
                    tokens: &s.tokens,
                    parent: &s.parent,
                    depth: &s.depth,
                    sees: s.trunk.len(),
                }
            })
            .collect();
        let inputs = Rows::tries(&tries, past, None)?;
        let mut cache = gather_cache(model, splits, batch, kept, past)?;
        let targets = collect_pairs(splits, batch, inputs.lens(), |node| match node {
            Node::Branch(i) => Some(i),
            Node::Trunk(_) => None,
        });
        let h = inputs.forward(model, cache.as_mut(), &targets.rows, &mut lap, prof)?;
        let scores = head(model, &h, &targets, prof)?;
        prof.head_s += lap.lap();
        store(got, &targets.slots, &scores);
        finished(batch.len());
        Ok(())
    })
}

/// Each layer's kept keys and values for the batch's documents, right-padded to `past`
/// (the padding is masked out). None when no document has a trunk.
fn gather_cache(
    model: &Model,
    splits: &[Split],
    batch: &[usize],
    kept: &HashMap<usize, Kept>,
    past: usize,
) -> Result<Option<KvCache>> {
    if past == 0 {
        return Ok(None);
    }
    let c = &model.config;
    let shape = [
        batch.len() as i64,
        c.num_key_value_heads,
        past as i64,
        c.head_dim,
    ];
    let mut out = KvCache::new(model.n_layers());
    for l in 0..model.n_layers() {
        let k = Tensor::zeros(shape, (model.dtype, model.device));
        let v = Tensor::zeros(shape, (model.dtype, model.device));
        for (r, &d) in batch.iter().enumerate() {
            let len = splits[d].trunk.len() as i64;
            if len == 0 {
                continue;
            }
            let kp = kept.get(&d).ok_or_else(|| {
                Error::Invalid("internal: a branch's trunk cache is missing".into())
            })?;
            for (dst, src) in [(&k, &kp.cache.k[l]), (&v, &kp.cache.v[l])] {
                let src = src
                    .as_ref()
                    .ok_or_else(|| Error::Invalid("internal: a trunk cache has no layer".into()))?;
                dst.narrow(0, r as i64, 1)
                    .narrow(2, 0, len)
                    .copy_(&src.narrow(0, kp.row, 1).narrow(2, 0, len));
            }
        }
        out.k[l] = Some(k);
        out.v[l] = Some(v);
    }
    Ok(Some(out))
}

/// The head's work for one batch: the unique positions it reads (indices into the
/// batch's tokens laid end to end, grouped by row) and, per (position, target) pair,
/// where its score goes.
struct Targets {
    rows: Vec<i64>,
    pairs: Vec<Pair>,
    /// Per pair: (document, request, token index).
    slots: Vec<(usize, usize, usize)>,
}

fn collect_pairs(
    splits: &[Split],
    batch: &[usize],
    lens: &[usize],
    pick: impl Fn(Node) -> Option<usize>,
) -> Targets {
    let mut t = Targets {
        rows: vec![],
        pairs: vec![],
        slots: vec![],
    };
    let mut seen: HashMap<usize, usize> = HashMap::new();
    let mut offset = 0;
    for (&d, &len) in batch.iter().zip(lens) {
        for (q, req) in splits[d].scored.iter().enumerate() {
            for (k, &(node, tg)) in req.iter().enumerate() {
                if let Some(i) = pick(node) {
                    let next = seen.len();
                    let u = *seen.entry(offset + i).or_insert(next);
                    if u == t.rows.len() {
                        t.rows.push((offset + i) as i64);
                    }
                    t.pairs.push((u, tg));
                    t.slots.push((d, q, k));
                }
            }
        }
        offset += len;
    }
    t
}

/// Scores `t`'s pairs from the hidden states at its positions (`[positions, hidden]`).
fn head(
    model: &Model,
    h: &Tensor,
    t: &Targets,
    prof: &mut ScoreProfile,
) -> Result<Vec<(f64, bool)>> {
    if t.pairs.is_empty() {
        return Ok(vec![]);
    }
    prof.head_positions += t.rows.len();
    score_pairs(model, h, &t.pairs)
}

fn store(got: &mut TokenScores, slots: &[(usize, usize, usize)], scores: &[(f64, bool)]) {
    for (&(d, q, k), &s) in slots.iter().zip(scores) {
        got[d][q][k] = s;
    }
}
