//! Which student layers train, on which teacher boundaries. Pruning records the
//! correspondence "new layer i <- original layers"; a unit trains student layer i to map
//! the teacher's state entering original layer `first` to the state leaving `last`.

use super::config::Attach;
use crate::error::{Error, Result};
use std::path::Path;

/// One student layer to train: input = teacher boundary `first`, target = `last + 1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unit {
    pub layer: usize,
    pub first: usize,
    pub last: usize,
}

impl Unit {
    pub fn input_boundary(&self) -> usize {
        self.first
    }
    pub fn target_boundary(&self) -> usize {
        self.last + 1
    }
    pub fn label(&self) -> String {
        format!("layer {} <- {}..={}", self.layer, self.first, self.last)
    }
}

/// A pruned checkpoint's `come.json` (its correspondence, calibration and depth).
pub fn read_pruned(dir: &Path) -> Result<crate::prune::record::PruneRecord> {
    let p = dir.join(crate::prune::record::FILE);
    if !p.is_file() {
        return Err(Error::Invalid(format!(
            "{}: no come.json, so the layer correspondence of this pruned model is unknown; \
             recovery needs a checkpoint written by `come-repro prune` (or a grid)",
            dir.display()
        )));
    }
    crate::prune::record::PruneRecord::read(dir)
}

/// Units of a correspondence over a teacher of `n_teacher` layers. Groups must be
/// increasing and disjoint (every pruning method here keeps layer order).
pub fn plan(corr: &[Vec<usize>], n_teacher: usize, attach: Attach) -> Result<Vec<Unit>> {
    let bad = |m: String| {
        Err(Error::Invalid(format!(
            "layer correspondence {corr:?}: {m}"
        )))
    };
    if corr.is_empty() {
        return bad("no layers".into());
    }
    let mut prev: Option<usize> = None;
    for (i, g) in corr.iter().enumerate() {
        let (Some(&lo), Some(&hi)) = (g.iter().min(), g.iter().max()) else {
            return bad(format!("student layer {i} has no original layer"));
        };
        if hi >= n_teacher {
            return bad(format!(
                "student layer {i} names original layer {hi}, but the teacher has {n_teacher} layers"
            ));
        }
        if g.windows(2).any(|w| w[1] <= w[0]) || prev.is_some_and(|p| lo <= p) {
            return bad(format!(
                "student layer {i} ({g:?}) is not in increasing original order"
            ));
        }
        prev = Some(hi);
    }
    let mut units = vec![];
    for (i, g) in corr.iter().enumerate() {
        let (lo, hi) = (g[0], g[g.len() - 1]);
        let (first, last) = match attach {
            Attach::None => (lo, hi),
            Attach::Before => {
                let first = if i == 0 { 0 } else { lo };
                let last = match corr.get(i + 1) {
                    Some(next) => next[0] - 1,
                    None => n_teacher - 1,
                };
                (first, last)
            }
        };
        if last > first {
            units.push(Unit {
                layer: i,
                first,
                last,
            });
        }
    }
    Ok(units)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concat_pairs_train_their_span() {
        let corr = vec![vec![0], vec![1, 2], vec![3], vec![4, 5]];
        let u = plan(&corr, 6, Attach::None).unwrap();
        assert_eq!(
            u,
            vec![
                Unit {
                    layer: 1,
                    first: 1,
                    last: 2
                },
                Unit {
                    layer: 3,
                    first: 4,
                    last: 5
                }
            ]
        );
    }

    #[test]
    fn dropped_runs_attach_before() {
        // ShortGPT removed 2, 3 and 0: layer 0's slot goes to the first kept layer.
        let corr = vec![vec![1], vec![4], vec![5]];
        let u = plan(&corr, 6, Attach::Before).unwrap();
        assert_eq!(
            u,
            vec![Unit {
                layer: 0,
                first: 0,
                last: 3
            },]
        );
        assert!(plan(&corr, 6, Attach::None).unwrap().is_empty());
        // A removed last layer joins the layer before it.
        let u = plan(&[vec![0], vec![1]], 3, Attach::Before).unwrap();
        assert_eq!(
            u,
            vec![Unit {
                layer: 1,
                first: 1,
                last: 2
            }]
        );
    }

    #[test]
    fn refuses_unordered_or_out_of_range() {
        assert!(plan(&[vec![1], vec![0]], 2, Attach::None).is_err());
        assert!(plan(&[vec![0], vec![7]], 3, Attach::None).is_err());
        assert!(plan(&[vec![0], vec![]], 3, Attach::None).is_err());
    }
}
