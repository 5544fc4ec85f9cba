//! Which documents to evaluate: all, the first N (lm-eval's `--limit`), or a seeded random
//! sample that any platform reproduces from the seed alone.

use crate::error::{Error, Result};
pub use crate::rng::SplitMix64;

/// Which documents of each task are scored: all, the first `limit` (or a seeded sample
/// of `limit` when `seed` is set), or a `fraction` of them.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Subset {
    pub limit: Option<usize>,
    pub fraction: Option<f64>,
    pub seed: Option<u64>,
}

impl Subset {
    /// Zero documents, or a fraction outside (0, 1], is a typo, not a request: refuse it
    /// rather than score nothing (NaN accuracies) or the whole split.
    pub fn validate(&self) -> Result<()> {
        if self.limit == Some(0) {
            return Err(Error::Invalid(
                "`limit` must be at least 1 document (leave it out for all)".into(),
            ));
        }
        if let Some(f) = self.fraction {
            if !(f > 0.0 && f <= 1.0) {
                return Err(Error::Invalid(format!(
                    "`fraction` must be in (0, 1], got {f}"
                )));
            }
        }
        Ok(())
    }
}

/// Indices of the documents to evaluate, ascending.
///
/// The count is `docs_len`, capped by `limit` and by `ceil(docs_len * fraction)` (lm-eval's
/// rule for a fractional `--limit`; a fraction that is not positive gives 0, one above 1
/// gives all). Without `seed` the first documents are taken, as lm-eval's `--limit` does.
/// With a seed: a forward Fisher-Yates shuffle of `0..docs_len` with [`SplitMix64`]
/// (`for i in 0..count { j = i + below(docs_len - i); swap(i, j) }`), stopped after `count`
/// steps; its first `count` entries, sorted, are the sample. A smaller count with the same
/// seed therefore gives a subset of a larger one.
pub fn subset(
    docs_len: usize,
    limit: Option<usize>,
    fraction: Option<f64>,
    seed: Option<u64>,
) -> Vec<usize> {
    let mut count = docs_len;
    if let Some(l) = limit {
        count = count.min(l);
    }
    if let Some(f) = fraction {
        let n = if f > 0.0 {
            // NaN fails `f > 0.0`; `as` saturates for huge values.
            ((docs_len as f64) * f).ceil() as usize
        } else {
            0
        };
        count = count.min(n);
    }
    let Some(seed) = seed else {
        return (0..count).collect();
    };
    let mut idx: Vec<usize> = (0..docs_len).collect();
    let mut rng = SplitMix64::new(seed);
    for i in 0..count {
        let j = i + rng.below((docs_len - i) as u64) as usize;
        idx.swap(i, j);
    }
    idx.truncate(count);
    idx.sort_unstable();
    idx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix64_reference_vector() {
        // The first outputs of Vigna's splitmix64.c for seed 1234567.
        let mut r = SplitMix64::new(1234567);
        let got: Vec<u64> = (0..5).map(|_| r.next_u64()).collect();
        assert_eq!(
            got,
            [
                6457827717110365317,
                3203168211198807973,
                9817491932198370423,
                4593380528125082431,
                16408922859458223821
            ]
        );
    }

    #[test]
    fn first_n_and_fraction() {
        assert_eq!(subset(5, None, None, None), vec![0, 1, 2, 3, 4]);
        assert_eq!(subset(5, Some(2), None, None), vec![0, 1]);
        assert_eq!(subset(5, Some(9), None, None).len(), 5);
        // ceil(1838 * 0.1) = 184, as lm-eval computes a fractional limit.
        assert_eq!(subset(1838, None, Some(0.1), None).len(), 184);
        assert_eq!(subset(10, Some(3), Some(0.5), None), vec![0, 1, 2]);
        assert!(subset(10, None, Some(0.0), None).is_empty());
        assert!(subset(10, None, Some(f64::NAN), None).is_empty());
        assert_eq!(subset(10, None, Some(7.0), None).len(), 10);
        assert!(subset(0, Some(3), None, Some(1)).is_empty());
    }

    #[test]
    fn seeded_is_deterministic_nested_and_in_range() {
        let a = subset(1000, Some(50), None, Some(7));
        assert_eq!(a, subset(1000, Some(50), None, Some(7)));
        assert_eq!(a.len(), 50);
        assert!(a.windows(2).all(|w| w[0] < w[1]) && a[49] < 1000);
        let small = subset(1000, Some(20), None, Some(7));
        assert!(small.iter().all(|i| a.contains(i)));
        assert_ne!(a, subset(1000, Some(50), None, Some(8)));
        assert_eq!(subset(6, None, None, Some(3)), (0..6).collect::<Vec<_>>());
    }
}
