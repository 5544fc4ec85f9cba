//! How far two scorings of the same documents lie apart (another dtype, another device):
//! per-request log-likelihood differences and the documents whose predicted choice moved.
//! `bench precision` and the GPU check report the same numbers from here.

use super::tasks::Doc;
use serde::Serialize;

/// The choice a document's log-likelihoods pick: by sum (`acc`) and per character of the
/// choice text (`acc_norm`, lm-eval's length normalisation).
pub fn predictions(doc: &Doc, loglik: &[f64]) -> (usize, usize) {
    let argmax = |f: &dyn Fn(usize) -> f64| {
        (0..loglik.len())
            .max_by(|&a, &b| f(a).total_cmp(&f(b)))
            .unwrap_or(0)
    };
    let chars = |i: usize| {
        doc.choice_texts
            .get(i)
            .map_or(1, |c| c.chars().count().max(1)) as f64
    };
    (argmax(&|i| loglik[i]), argmax(&|i| loglik[i] / chars(i)))
}

/// Accumulated over documents with [`Shift::add`].
#[derive(Debug, Default, Clone, Serialize)]
pub struct Shift {
    pub requests: usize,
    pub max_abs_loglik: f64,
    pub mean_abs_loglik: f64,
    /// Documents whose `acc` prediction moved.
    pub changed_acc: usize,
    /// Documents whose `acc_norm` prediction moved.
    pub changed_acc_norm: usize,
    /// Documents whose either prediction moved.
    pub changed_docs: usize,
    #[serde(skip)]
    sum_abs: f64,
}

impl Shift {
    /// One document scored twice (`a`, `b`: log-likelihood per choice).
    pub fn add(&mut self, doc: &Doc, a: &[f64], b: &[f64]) {
        for (x, y) in a.iter().zip(b) {
            let d = (x - y).abs();
            self.max_abs_loglik = self.max_abs_loglik.max(d);
            self.sum_abs += d;
            self.requests += 1;
        }
        self.mean_abs_loglik = self.sum_abs / self.requests.max(1) as f64;
        let (pa, pb) = (predictions(doc, a), predictions(doc, b));
        self.changed_acc += (pa.0 != pb.0) as usize;
        self.changed_acc_norm += (pa.1 != pb.1) as usize;
        self.changed_docs += (pa != pb) as usize;
    }

    /// Both together (tasks into a total).
    pub fn merge(&mut self, o: &Shift) {
        self.requests += o.requests;
        self.sum_abs += o.sum_abs;
        self.max_abs_loglik = self.max_abs_loglik.max(o.max_abs_loglik);
        self.mean_abs_loglik = self.sum_abs / self.requests.max(1) as f64;
        self.changed_acc += o.changed_acc;
        self.changed_acc_norm += o.changed_acc_norm;
        self.changed_docs += o.changed_docs;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(choices: &[&str]) -> Doc {
        Doc {
            doc_id: 0,
            requests: vec![],
            gold: 0,
            choice_texts: choices.iter().map(|s| s.to_string()).collect(),
            group: None,
            lm_eval_hash: None,
        }
    }

    #[test]
    fn predictions_by_sum_and_per_character() {
        let d = doc(&["a", "bbbb"]);
        // Sum prefers the short choice; per character the long one (-4/4 > -2/1).
        assert_eq!(predictions(&d, &[-2.0, -4.0]), (0, 1));
        let mut s = Shift::default();
        s.add(&d, &[-2.0, -4.0], &[-2.5, -4.0]);
        assert_eq!((s.requests, s.changed_docs), (2, 0));
        assert_eq!(s.max_abs_loglik, 0.5);
        assert_eq!(s.mean_abs_loglik, 0.25);
        s.add(&d, &[-2.0, -4.0], &[-5.0, -4.0]);
        assert_eq!(
            (s.changed_acc, s.changed_acc_norm, s.changed_docs),
            (1, 0, 1)
        );
        let mut t = Shift::default();
        t.merge(&s);
        t.merge(&s);
        assert_eq!((t.requests, t.changed_docs, t.max_abs_loglik), (8, 2, 3.0));
        assert_eq!(t.mean_abs_loglik, s.mean_abs_loglik);
    }
}
