//! One scoring forward: rows of real tokens laid end to end (hidden states carry no
//! padding), the attention mask of each row on the padded layout, and the forward itself
//! with its profile counts. Shared by both scoring layouts.

use super::profile::{Lap, ScoreProfile};
use crate::error::{Error, Result};
use crate::model::forward::{KvCache, Unpadded};
use crate::model::kept::KeptQueries;
use crate::model::Model;
use tch::Tensor;

/// A prefix trie in one row: node tokens, parents (parents precede children), positions,
/// and how many cached columns its roots see. A parent of -1 marks a root that sees the
/// first `sees` cached columns; `-2 - c` a root hanging from cached column `c`, which
/// sees what that column saw, and it.
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
    /// `cached` is the cached columns' own mask (`[past, past]`, as [`Rows::own_mask`]
    /// gives), needed by roots that hang from a cached column.
    pub fn tries(rows: &[TrieRow], past: usize, cached: Option<&[f32]>) -> Result<Rows> {
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
                    } else if par == -1 {
                        m[i * w..i * w + row.sees].fill(0.0);
                    } else {
                        let c = (-2 - par) as usize;
                        let view = cached
                            .filter(|v| c < past && v.len() == past * past)
                            .ok_or_else(|| {
                                Error::Invalid(format!(
                                    "internal: a root hangs from cached column {c} of {past} \
                                     without the cache's mask"
                                ))
                            })?;
                        m[i * w..i * w + past].copy_from_slice(&view[c * past..(c + 1) * past]);
                    }
                }
                m[i * w + past + i] = 0.0;
            }
        }
        Ok(Rows {
            ids,
            pos,
            lens,
            mask: Some(mask),
            past,
        })
    }

    /// The mask of a single row with nothing cached (`[n, n]`, additive): what each of its
    /// tokens attends to, for rows that hang from its keys and values later.
    pub fn own_mask(&self) -> Option<&[f32]> {
        (self.lens.len() == 1 && self.past == 0)
            .then_some(self.mask.as_deref())
            .flatten()
    }

    pub fn lens(&self) -> &[usize] {
        &self.lens
    }

    /// Hidden states after the last layer at the tokens `keep` (indices into the rows'
    /// tokens laid end to end, grouped by row), `[S, hidden]`: the last layer runs at those
    /// tokens only (see [`crate::model::kept`]). `cache` (when given) is in front of every
    /// row and takes the rows' keys and values. Time goes to `prof` (inputs since `lap`'s
    /// last reading, then the layers), with the counts.
    pub fn forward(
        &self,
        model: &Model,
        cache: Option<&mut KvCache>,
        keep: &[i64],
        lap: &mut Lap,
        prof: &mut ScoreProfile,
    ) -> Result<Tensor> {
        let dev = model.device;
        let (b, total) = (self.lens.len(), self.ids.len());
        let n = self.width();
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
        let kept = self.kept(model, keep)?;
        prof.inputs_s += lap.lap();
        let h = model.embed_tokens(&ids)?;
        let h = model.run_layers_kept(h, &ctx, &kept, cache)?;
        prof.forward_s += lap.lap();
        prof.forwards += 1;
        prof.rows += b;
        prof.padded_tokens += b * n;
        prof.forwarded_tokens += total;
        Ok(h.squeeze_dim(0))
    }

    fn width(&self) -> usize {
        self.lens.iter().copied().max().unwrap_or(1).max(1)
    }

    /// The last layer's queries at `keep`: per kept token, its row of this forward's mask
    /// (causal rows: every earlier token of the row and itself).
    fn kept(&self, model: &Model, keep: &[i64]) -> Result<KeptQueries> {
        let (rows, n) = (self.lens.len(), self.width());
        let w = self.past + n;
        let mut start = Vec::with_capacity(rows);
        let mut at = 0;
        for &len in &self.lens {
            start.push(at);
            at += len;
        }
        let mut per_row = vec![0usize; rows];
        let mut row_of = Vec::with_capacity(keep.len());
        let mut r = 0;
        for &t in keep {
            let t = usize::try_from(t).unwrap_or(usize::MAX);
            while r < rows && t >= start[r] + self.lens[r] {
                r += 1;
            }
            if r == rows || t < start[r] {
                return Err(Error::Invalid(format!(
                    "internal: kept token {t} is out of range or out of row order"
                )));
            }
            per_row[r] += 1;
            row_of.push(r);
        }
        let wq = per_row.iter().copied().max().unwrap_or(0).max(1);
        let mut mask = vec![f32::NEG_INFINITY; rows * wq * w];
        let mut filled = vec![0usize; rows];
        for (&t, &r) in keep.iter().zip(&row_of) {
            let i = t as usize - start[r];
            let dst = &mut mask[(r * wq + filled[r]) * w..][..w];
            match &self.mask {
                Some(m) => dst.copy_from_slice(&m[(r * n + i) * w..][..w]),
                None => dst[..=self.past + i].fill(0.0),
            }
            filled[r] += 1;
        }
        // Padding queries see one key, so no softmax row is empty; their outputs are dropped.
        for (r, &f) in filled.iter().enumerate() {
            for j in f..wq {
                mask[(r * wq + j) * w] = 0.0;
            }
        }
        let positions: Vec<i64> = keep.iter().map(|&t| self.pos[t as usize]).collect();
        let mask = Tensor::from_slice(&mask)
            .view([rows as i64, 1, wq as i64, w as i64])
            .to_kind(model.dtype);
        Ok(model.kept_queries(keep, &positions, &per_row, mask))
    }
}
