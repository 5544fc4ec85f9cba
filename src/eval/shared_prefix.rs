//! Prefixes shared across the documents of a batch. Many documents begin alike (a task's
//! "Question:", a HellaSwag activity label, WinoGrande's twin sentences up to the word
//! that differs): 5 % of the seven tasks' tokens on SmolLM2's tokenizer, 18 % of
//! WinoGrande's. A node of the batch's merged trie that two or more documents share runs
//! once, in a forward of its own whose keys and values every row then attends to; each
//! row keeps only its document's own nodes. Every token still sees exactly its own
//! ancestors at its own position, so scores equal the rows' without sharing (up to float
//! rounding: the sums run over other blocks).

use super::head::score_pairs;
use super::loglik::{per_request, Packed, Score};
use super::profile::{Lap, ScoreProfile};
use super::rows::{Rows, TrieRow};
use crate::error::{Error, Result};
use crate::model::forward::KvCache;
use crate::model::Model;
use std::collections::{HashMap, HashSet};

/// Below this many tokens saved, the shared forward (one more pass through every layer)
/// costs about what it saves.
pub(super) const MIN_SAVED: usize = 16;

/// Where one of a document's nodes is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Place {
    Shared(usize),
    Own(usize),
}

/// A trie's nodes: tokens, parents and positions.
#[derive(Debug, Default)]
struct Nodes {
    tokens: Vec<i64>,
    parent: Vec<i64>,
    depth: Vec<i64>,
}

impl Nodes {
    fn push(&mut self, token: i64, parent: i64, depth: i64) -> usize {
        self.tokens.push(token);
        self.parent.push(parent);
        self.depth.push(depth);
        self.tokens.len() - 1
    }

    fn row(&self) -> TrieRow<'_> {
        TrieRow {
            tokens: &self.tokens,
            parent: &self.parent,
            depth: &self.depth,
            sees: 0,
        }
    }
}

/// A batch split into the nodes its documents share and each document's own.
#[derive(Debug)]
pub(super) struct Split {
    shared: Nodes,
    /// Per document: its own nodes; a root's parent is `-2 - c` when it hangs from shared
    /// node `c`, -1 when it has no parent at all.
    own: Vec<Nodes>,
    /// Per document, per node of its trie: where it is computed.
    place: Vec<Vec<Place>>,
}

impl Split {
    /// The split of `docs`, or None when sharing would save fewer than `min_saved` tokens.
    pub fn of(docs: &[&Packed], min_saved: usize) -> Option<Split> {
        // Merged trie: node ids by (parent id, token); a node's users are the documents
        // whose tries hold it. Parents get their id before their children.
        let mut ids: HashMap<(i64, i64), usize> = HashMap::new();
        let mut users: Vec<usize> = vec![];
        let mut last_user: Vec<usize> = vec![];
        let mut global: Vec<Vec<usize>> = Vec::with_capacity(docs.len());
        for (d, p) in docs.iter().enumerate() {
            let mut mine = Vec::with_capacity(p.tokens.len());
            for n in 0..p.tokens.len() {
                let par = match p.parent[n] {
                    -1 => -1,
                    q => mine[q as usize] as i64,
                };
                let next = ids.len();
                let g = *ids.entry((par, p.tokens[n])).or_insert(next);
                if g == users.len() {
                    users.push(0);
                    last_user.push(usize::MAX);
                }
                if last_user[g] != d {
                    last_user[g] = d;
                    users[g] += 1;
                }
                mine.push(g);
            }
            global.push(mine);
        }
        let saved: usize = users.iter().map(|&u| u.saturating_sub(1)).sum();
        if saved < min_saved {
            return None;
        }
        let mut shared = Nodes::default();
        let mut shared_of: HashMap<usize, usize> = HashMap::new();
        let mut own = Vec::with_capacity(docs.len());
        let mut place = Vec::with_capacity(docs.len());
        for (p, mine) in docs.iter().zip(&global) {
            let mut nodes = Nodes::default();
            let mut at = Vec::with_capacity(mine.len());
            for (n, &g) in mine.iter().enumerate() {
                let par = p.parent[n];
                let parent_place = (par >= 0).then(|| at[par as usize]);
                // A shared node's parent is shared by the same documents, so a node under
                // one of the document's own is its own too.
                let under_own = matches!(parent_place, Some(Place::Own(_)));
                let here = if users[g] > 1 && !under_own {
                    let s = match shared_of.get(&g) {
                        Some(&s) => s,
                        None => {
                            let sp = match parent_place {
                                Some(Place::Shared(s)) => s as i64,
                                _ => -1,
                            };
                            let s = shared.push(p.tokens[n], sp, p.depth[n]);
                            shared_of.insert(g, s);
                            s
                        }
                    };
                    Place::Shared(s)
                } else {
                    let op = match parent_place {
                        Some(Place::Own(o)) => o as i64,
                        Some(Place::Shared(s)) => -2 - s as i64,
                        None => -1,
                    };
                    Place::Own(nodes.push(p.tokens[n], op, p.depth[n]))
                };
                at.push(here);
            }
            own.push(nodes);
            place.push(at);
        }
        Some(Split { shared, own, place })
    }
}

/// Scores a batch split by [`Split::of`]: the shared nodes first, keeping their keys and
/// values, then every document's own nodes in rows that attend to them.
pub(super) fn score_split(
    model: &Model,
    docs: &[&Packed],
    split: &Split,
    prof: &mut ScoreProfile,
) -> Result<Vec<Vec<Score>>> {
    let mut lap = Lap::start(model.device);
    let trunk = Rows::tries(&[split.shared.row()], 0, None)?;
    // Rows with no nodes of their own (a document wholly shared) are left out.
    let kept_rows: Vec<usize> = (0..docs.len())
        .filter(|&d| !split.own[d].tokens.is_empty())
        .collect();
    let own_rows: Vec<TrieRow> = kept_rows.iter().map(|&d| split.own[d].row()).collect();
    let past = split.shared.tokens.len();
    let rows = Rows::tries(&own_rows, past, trunk.own_mask())?;
    let mut offset = vec![usize::MAX; docs.len()];
    let mut at = 0;
    for &d in &kept_rows {
        offset[d] = at;
        at += split.own[d].tokens.len();
    }
    let (trunk_keep, row_keep, pairs) = scored_positions(docs, split, &offset);
    let mut cache = KvCache::new(model.n_layers());
    let h_shared = trunk.forward(model, Some(&mut cache), &trunk_keep, &mut lap, prof)?;
    let h = if kept_rows.is_empty() {
        h_shared
    } else {
        let b = kept_rows.len() as i64;
        for kv in cache.k.iter_mut().chain(cache.v.iter_mut()) {
            let t = kv.take().ok_or_else(|| {
                Error::Invalid("internal: the shared forward kept no cache".into())
            })?;
            *kv = Some(t.expand([b, -1, -1, -1], false));
        }
        let h_rows = rows.forward(model, Some(&mut cache), &row_keep, &mut lap, prof)?;
        tch::Tensor::cat(&[h_shared, h_rows], 0)
    };
    let scored = score_pairs(model, &h, &pairs)?;
    prof.head_s += lap.lap();
    prof.head_positions += trunk_keep.len() + row_keep.len();
    Ok(per_request(docs, &scored))
}

/// The positions the head reads, each once: the shared nodes' (`[shared]`) and the rows'
/// (indices into the rows' tokens laid end to end), both in row order, and per scored
/// token, (its position among shared-then-row positions, target).
fn scored_positions(
    docs: &[&Packed],
    split: &Split,
    offset: &[usize],
) -> (Vec<i64>, Vec<i64>, Vec<(usize, i64)>) {
    let (mut trunk_keep, mut row_keep) = (vec![], vec![]);
    let mut seen: HashSet<Place> = HashSet::new();
    let mut refs: Vec<(Place, i64)> = vec![];
    for (d, p) in docs.iter().enumerate() {
        for req in &p.scored {
            for &(node, target) in req {
                let pl = split.place[d][node];
                let key = match pl {
                    Place::Shared(_) => pl,
                    Place::Own(o) => Place::Own(offset[d] + o),
                };
                if seen.insert(key) {
                    match key {
                        Place::Shared(s) => trunk_keep.push(s as i64),
                        Place::Own(o) => row_keep.push(o as i64),
                    }
                }
                refs.push((key, target));
            }
        }
    }
    // Keep lists must be in row order.
    trunk_keep.sort_unstable();
    row_keep.sort_unstable();
    let rank = |key: Place| -> usize {
        match key {
            Place::Shared(s) => trunk_keep.binary_search(&(s as i64)).unwrap_or(0),
            Place::Own(o) => trunk_keep.len() + row_keep.binary_search(&(o as i64)).unwrap_or(0),
        }
    };
    let pairs: Vec<(usize, i64)> = refs.iter().map(|&(k, t)| (rank(k), t)).collect();
    (trunk_keep, row_keep, pairs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::loglik::{pack, TokenRequest};

    fn doc(ctx: &[u32], conts: &[&[u32]]) -> Packed {
        let reqs: Vec<TokenRequest> = conts
            .iter()
            .map(|c| TokenRequest {
                context: ctx.to_vec(),
                continuation: c.to_vec(),
            })
            .collect();
        pack(&reqs, 512).unwrap()
    }

    #[test]
    fn shared_nodes_run_once_and_own_nodes_hang_from_them() {
        let a = doc(&[1, 2, 3, 4, 5], &[&[9, 9], &[8]]);
        let b = doc(&[1, 2, 3, 7], &[&[6]]);
        let c = doc(&[2, 2], &[&[1]]);
        let docs = [&a, &b, &c];
        let s = Split::of(&docs, 1).expect("tokens 1, 2, 3 are shared");
        assert_eq!(s.shared.tokens, [1, 2, 3]);
        assert_eq!(s.shared.parent, [-1, 0, 1]);
        assert_eq!(s.shared.depth, [0, 1, 2]);
        // a: 4 hangs from shared node 2 (parent -2 - 2), then its own chain.
        assert_eq!(s.own[0].tokens, [4, 5, 9]);
        assert_eq!(s.own[0].parent, [-4, 0, 1]);
        assert_eq!(s.own[0].depth, [3, 4, 5]);
        assert_eq!(s.own[1].tokens, [7]);
        assert_eq!(s.own[1].parent, [-4]);
        // c shares nothing: its root sees nothing cached.
        assert_eq!(s.own[2].tokens, [2, 2]);
        assert_eq!(s.own[2].parent, [-1, 0]);
        assert_eq!(
            s.place[0][..4],
            [
                Place::Shared(0),
                Place::Shared(1),
                Place::Shared(2),
                Place::Own(0)
            ]
        );
        // Too little to share: no split.
        assert!(Split::of(&docs, 4).is_none());
        assert!(Split::of(&[&a], 1).is_none());
    }

    #[test]
    fn a_document_wholly_inside_others_has_no_own_nodes() {
        let a = doc(&[1, 2, 3], &[&[4]]);
        let b = doc(&[1, 2, 3], &[&[4]]);
        let s = Split::of(&[&a, &b], 1).unwrap();
        assert_eq!(s.shared.tokens, [1, 2, 3]);
        assert!(s.own.iter().all(|o| o.tokens.is_empty()));
    }
}
