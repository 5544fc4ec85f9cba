//! Packed (prefix-trie) log-likelihood scoring must equal scoring each request as its own
//! sequence, which is what lm-evaluation-harness computes.

use come_repro::eval::loglik::{score_documents, ScoreOptions, TokenRequest};
use come_repro::model::synthetic::{random_model, tiny_config};
use come_repro::model::Model;
use proptest::prelude::*;
use serde_json::json;
use tch::{Kind, Tensor};

thread_local! {
    static MODEL: Model = random_model(tiny_config(json!({})).unwrap(), 21);
}

/// The definition: one sequence per request, left-truncated to max_length + 1 tokens.
fn naive(m: &Model, r: &TokenRequest, max_length: usize) -> (f64, bool) {
    let mut whole: Vec<i64> = r
        .context
        .iter()
        .chain(&r.continuation)
        .map(|&t| t as i64)
        .collect();
    if whole.len() > max_length + 1 {
        whole.drain(..whole.len() - max_length - 1);
    }
    let input = Tensor::from_slice(&whole[..whole.len() - 1]).unsqueeze(0);
    let logp = m
        .forward(&input, None)
        .unwrap()
        .log_softmax(-1, Kind::Float)
        .squeeze_dim(0);
    let n = r.continuation.len().min(whole.len() - 1);
    let t = whole.len() - 1;
    let (mut lp, mut greedy) = (0.0, true);
    for k in 0..n {
        let pos = (t - n + k) as i64;
        let tgt = whole[t - n + k + 1];
        lp += logp.double_value(&[pos, tgt]);
        greedy &= logp.get(pos).argmax(-1, false).int64_value(&[]) == tgt;
    }
    (lp, greedy)
}

fn doc_strategy() -> impl Strategy<Value = Vec<TokenRequest>> {
    // A shared context and 1-4 continuations, sometimes sharing their first tokens
    // (as " A"/" B" or common word starts do), sometimes with different contexts
    // (WinoGrande's partial scoring).
    (
        prop::collection::vec(0u32..128, 1..30),
        prop::collection::vec(prop::collection::vec(0u32..128, 1..8), 1..5),
        any::<bool>(),
        0u32..128,
    )
        .prop_map(|(ctx, conts, vary_ctx, extra)| {
            conts
                .into_iter()
                .enumerate()
                .map(|(i, c)| {
                    let mut context = ctx.clone();
                    if vary_ctx {
                        context.push((extra + i as u32) % 128);
                    }
                    TokenRequest {
                        context,
                        continuation: c,
                    }
                })
                .collect()
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn packed_scores_equal_separate_sequences(
        docs in prop::collection::vec(doc_strategy(), 1..6),
        budget in 16usize..200,
        max_length in prop::sample::select(vec![8usize, 20, 64]),
    ) {
        MODEL.with(|m| -> Result<(), TestCaseError> {
        let mut opts = ScoreOptions { max_length, token_budget: budget };
        let got = score_documents(m, &docs, &mut opts, |_| {}).unwrap();
        for (d, doc) in docs.iter().enumerate() {
            prop_assert_eq!(got[d].len(), doc.len());
            for (r, req) in doc.iter().enumerate() {
                let (lp, greedy) = naive(m, req, max_length);
                prop_assert!((got[d][r].logprob - lp).abs() < 1e-4, "doc {} req {}: {} vs {}", d, r, got[d][r].logprob, lp);
                prop_assert_eq!(got[d][r].is_greedy, greedy);
            }
        }
        Ok(())
        })?;
    }
}

#[test]
fn empty_continuation_is_an_error() {
    let docs = vec![vec![TokenRequest {
        context: vec![1, 2],
        continuation: vec![],
    }]];
    let mut opts = ScoreOptions {
        max_length: 64,
        token_budget: 64,
    };
    MODEL.with(|m| assert!(score_documents(m, &docs, &mut opts, |_| {}).is_err()));
}
