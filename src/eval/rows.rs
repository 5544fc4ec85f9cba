//! One scoring forward: rows of real tokens laid end to end (hidden states carry no
//! padding), the attention mask of each row on the padded layout, and the forward itself
//! with its profile counts. Shared by both scoring layouts.

use super::profile::{Lap, ScoreProfile};
use crate::error::Result;
use crate::model::forward::{KvCache, NoTap, Unpadded};
use crate::model::Model;
use tch::Tensor;

/// A prefix trie in one row: node tokens, parents (-1 for a root; parents precede
/// children), positions, and how many cached columns its roots see.
pub(super) struct TrieRow<'a> {
    pub tokens: &'a [i64],
    pub parent: &'a [i64],
    pub depth: &'a [i64],
    pub sees: usize,
}

/// The inputs of one forward.
pub(super) struct Rows {
    ids: Vec<i64>,
    pos: Vec<i64>,
    lens: Vec<usize>,
    /// Additive `[rows, 1, width, past + width]` (0 = attend, -inf = not); None = causal.
    mask: Option<Vec<f32>>,
    past: usize,
}

impl Rows {
    /// Plain sequences from position 0. No mask: in the padded layout each row's padding
    /// follows its real tokens, so causal attention keeps it out.
    pub fn causal<'a>(seqs: impl Iterator<Item = &'a [i64]>) -> Rows {
        let (mut ids, mut pos, mut lens) = (vec![], vec![], vec![]);
        for s in seqs {
            ids.extend_from_slice(s);
            pos.extend(0..s.len() as i64);
            lens.push(s.len());
        }
        Rows {
            ids,
            pos,
            lens,
            mask: None,
            past: 0,
        }
    }

    /// Tries after `past` cached columns: a node sees its root's cached columns and its
    /// ancestors. Padding queries see only themselves, so no softmax row is empty.
    pub fn tries(rows: &[TrieRow], past: usize) -> Rows {
        let n = rows
            .iter()
            .map(|r| r.tokens.len())
            .max()
            .unwrap_or(1)
            .max(1);
        let w = past + n;
        let (mut ids, mut pos, mut lens) = (vec![], vec![], vec![]);
        let mut mask = vec![f32::NEG_INFINITY; rows.len() * n * w];
        for (r, row) in rows.iter().enumerate() {
            ids.extend_from_slice(row.tokens);
            pos.extend_from_slice(row.depth);
            lens.push(row.tokens.len());
            let m = &mut mask[r * n * w..(r + 1) * n * w];
            for i in 0..n {
                if i < row.tokens.len() {
                    let par = row.parent[i];
                    if par >= 0 {
                        // Parents precede children: copy the parent's view.
                        let (before, after) = m.split_at_mut(i * w);
                        let prow = &before[par as usize * w..(par as usize + 1) * w];
                        after[..w].copy_from_slice(prow);
                    } else {
                        m[i * w..i * w + row.sees].fill(0.0);
                    }
                }
                m[i * w + past + i] = 0.0;
            }
        }
        Rows {
            ids,
            pos,
            lens,
            mask: Some(mask),
            past,
        }
    }

    pub fn lens(&self) -> &[usize] {
        &self.lens
    }

    /// Hidden states after the last layer, `[1, T, hidden]`, with `cache` (when given)
    /// in front of every row and filled with the rows' keys and values. Time goes to
    /// `prof` (inputs since `lap`'s last reading, then the layers), with the counts.
    pub fn forward(
        &self,
        model: &Model,
        cache: Option<&mut KvCache>,
        lap: &mut Lap,
        prof: &mut ScoreProfile,
    ) -> Result<Tensor> {
        let dev = model.device;
        let (b, total) = (self.lens.len(), self.ids.len());
        let n = self.lens.iter().copied().max().unwrap_or(1).max(1);
        let ids = Tensor::from_slice(&self.ids)
            .view([1, total as i64])
            .to_device(dev);
        let pos = Tensor::from_slice(&self.pos).view([1, total as i64]);
        let mask = self.mask.as_ref().map(|m| {
            Tensor::from_slice(m)
                .view([b as i64, 1, n as i64, (self.past + n) as i64])
                .to_device(dev)
                .to_kind(model.dtype)
        });
        let ctx = model.context_unpadded(&pos, mask, Unpadded::new(&self.lens, dev));
        prof.inputs_s += lap.lap();
        let h = model.embed_tokens(&ids)?;
        let h = model.run_layers(h, 0..model.n_layers(), &ctx, &mut NoTap, cache);
        prof.forward_s += lap.lap();
        prof.forwards += 1;
        prof.rows += b;
        prof.padded_tokens += b * n;
        prof.forwarded_tokens += total;
        Ok(h)
    }
}
