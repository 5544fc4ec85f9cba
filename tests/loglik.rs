//! Log-likelihood scoring, in both layouts (cached context, packed tries), must equal
//! scoring each request as its own sequence, which is what lm-evaluation-harness
//! computes: per choice within 1e-5 nats, and the same greedy flags.

mod common;

use come_repro::eval::loglik::{
    score_documents, score_documents_in, ScoreLayout, ScoreOptions, TokenRequest,
};
use come_repro::eval::profile::ScoreProfile;
use come_repro::model::load::{load_model, LoadOptions};
use come_repro::model::synthetic::{random_model, tiny_config};
use come_repro::model::Model;
use proptest::prelude::*;
use serde_json::json;
use tch::{Kind, Tensor};

/// f32 models: summing a few tokens' log-probabilities of magnitude 5-20 nats, batch
/// shapes alone move results by some 1e-5 (libtorch's kernels block differently).
const TOL_F32: f64 = 1e-4;
/// f64 models: what is left is the layout's own error.
const TOL_F64: f64 = 1e-5;

thread_local! {
    // Grouped-query attention: 4 query heads over 2 key/value heads.
    static MODEL: Model = random_model(tiny_config(json!({})).unwrap(), 21);
}

/// `m` with f64 weights (saved and loaded back).
fn in_f64(m: &Model, name: &str) -> Model {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    come_repro::model::save::save_model(m, &dir, None).unwrap();
    load_model(
        &dir,
        LoadOptions {
            dtype: Kind::Double,
            ..LoadOptions::default()
        },
    )
    .unwrap()
}

/// Scores `docs` in `layout` and compares every choice with separate sequences.
fn check(
    m: &Model,
    layout: ScoreLayout,
    docs: &[Vec<TokenRequest>],
    budget: usize,
    max_length: usize,
) -> Result<(), String> {
    let tol = if m.dtype == Kind::Double {
        TOL_F64
    } else {
        TOL_F32
    };
    let mut opts = ScoreOptions {
        max_length,
        token_budget: budget,
    };
    let mut prof = ScoreProfile::default();
    let got = score_documents_in(layout, m, docs, &mut opts, &mut prof, |_| {})
        .map_err(|e| e.to_string())?;
    for (d, doc) in docs.iter().enumerate() {
        if got[d].len() != doc.len() {
            return Err(format!(
                "doc {d}: {} scores for {} requests",
                got[d].len(),
                doc.len()
            ));
        }
        for (r, req) in doc.iter().enumerate() {
            let (lp, greedy) = naive(m, req, max_length);
            let g = got[d][r];
            if (g.logprob - lp).abs() > tol || g.is_greedy != greedy {
                return Err(format!(
                    "{layout:?} doc {d} req {r}: {} / {} vs separate {lp} / {greedy}",
                    g.logprob, g.is_greedy
                ));
            }
        }
    }
    Ok(())
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
    let logp = m.forward(&input, None).unwrap();
    let logp = logp.log_softmax(-1, logp.kind()).squeeze_dim(0);
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
            for layout in [ScoreLayout::Cached, ScoreLayout::Packed] {
                check(m, layout, &docs, budget, max_length).map_err(TestCaseError::fail)?;
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
    let mut prof = ScoreProfile::default();
    MODEL.with(|m| assert!(score_documents(m, &docs, &mut opts, &mut prof, |_| {}).is_err()));
}

/// Documents that exercise the cached path's edges, over a vocabulary of `vocab`:
/// contexts longer than a whole batch, one-token continuations (BoolQ's " yes"/" no",
/// which end at the context and have no branch at all), answers sharing first tokens,
/// WinoGrande-like contexts that differ near the end, requests that share no first token
/// (no trunk), and a document of one request.
fn edge_docs(vocab: u32) -> Vec<Vec<TokenRequest>> {
    let seq = |seed: u32, n: usize| -> Vec<u32> {
        (0..n as u32)
            .map(|i| (seed.wrapping_mul(2_654_435_761).wrapping_add(i * 40_503) >> 7) % vocab)
            .collect()
    };
    let req = |context: Vec<u32>, continuation: Vec<u32>| TokenRequest {
        context,
        continuation,
    };
    let long = seq(1, 300);
    let mid = seq(2, 90);
    let mut wino_a = seq(3, 40);
    let mut wino_b = wino_a.clone();
    wino_a.extend(seq(4, 3));
    wino_b.extend(seq(5, 2));
    vec![
        // Longer than one batch, with multi-token answers.
        vec![
            req(long.clone(), seq(10, 7)),
            req(long.clone(), seq(11, 12)),
            req(long.clone(), seq(12, 1)),
        ],
        // One-token continuations.
        vec![req(mid.clone(), vec![3]), req(mid.clone(), vec![9])],
        vec![
            req(long[..200].to_vec(), vec![5]),
            req(long[..200].to_vec(), vec![6]),
        ],
        // Answers sharing their first tokens.
        vec![
            req(mid.clone(), [seq(20, 3), seq(21, 5)].concat()),
            req(mid.clone(), [seq(20, 3), seq(22, 2)].concat()),
            req(mid.clone(), seq(23, 4)),
        ],
        // Contexts that differ before the scored part (partial scoring).
        vec![req(wino_a, seq(30, 6)), req(wino_b, seq(30, 6))],
        // No common first token.
        vec![req(vec![1, 2, 3], seq(40, 4)), req(vec![4, 5], seq(41, 3))],
        // A single request.
        vec![req(seq(50, 17), seq(51, 9))],
    ]
}

#[test]
fn cached_context_equals_separate_sequences_on_a_tiny_gqa_model() {
    MODEL.with(|m32| {
        let m = in_f64(m32, "tiny-gqa-f64");
        let docs = edge_docs(128);
        for budget in [64, 4096] {
            for layout in [ScoreLayout::Cached, ScoreLayout::Packed] {
                check(&m, layout, &docs, budget, 512).unwrap();
                check(m32, layout, &docs, budget, 512).unwrap();
            }
        }
        // Left truncation to a short max_length (requests then share less).
        check(&m, ScoreLayout::Cached, &docs, 128, 48).unwrap();
    });
}

/// stories260K in f64 and in f32.
fn stories_f64_f32() -> (Model, Model) {
    let dir = common::stories();
    let f64_opts = LoadOptions {
        dtype: Kind::Double,
        ..LoadOptions::default()
    };
    (
        load_model(&dir, f64_opts).unwrap(),
        load_model(&dir, LoadOptions::default()).unwrap(),
    )
}

#[test]
fn cached_context_equals_separate_sequences_on_stories260k() {
    let (m, m32) = stories_f64_f32();
    assert!(m.config.num_key_value_heads < m.config.num_attention_heads);
    let docs = edge_docs(m.config.vocab_size as u32);
    for budget in [64, 4096] {
        for layout in [ScoreLayout::Cached, ScoreLayout::Packed] {
            check(&m, layout, &docs, budget, 512).unwrap();
            check(&m32, layout, &docs, budget, 512).unwrap();
        }
    }
}

/// Documents that share prefixes with each other (a task's common opening, twin
/// sentences, a duplicated document, one-token answers): the batch's shared nodes run
/// once ([`ScoreLayout::Packed`]'s shared forward) and every score still equals separate
/// sequences'.
fn shared_docs(vocab: u32) -> Vec<Vec<TokenRequest>> {
    let tok = |i: u32| (i.wrapping_mul(2_654_435_761) >> 9) % vocab;
    let opening: Vec<u32> = (0..6).map(tok).collect();
    let mut docs = vec![];
    for d in 0..24u32 {
        let mut ctx = opening.clone();
        ctx.extend((0..(3 + d % 11)).map(|i| tok(100 + d * 31 + i)));
        let twin = d % 4 == 1;
        let conts: Vec<Vec<u32>> = (0..(1 + d % 4))
            .map(|c| {
                (0..(1 + (c + d) % 5))
                    .map(|i| tok(900 + d * 7 + c * 3 + i))
                    .collect()
            })
            .collect();
        let reqs: Vec<TokenRequest> = conts
            .iter()
            .enumerate()
            .map(|(c, cont)| {
                let mut context = ctx.clone();
                if twin {
                    context.push(tok(5000 + c as u32));
                }
                TokenRequest {
                    context,
                    continuation: cont.clone(),
                }
            })
            .collect();
        if d % 6 == 0 {
            docs.push(reqs.clone());
        }
        docs.push(reqs);
    }
    docs
}

#[test]
fn prefixes_shared_across_documents_equal_separate_sequences() {
    let (m, m32) = stories_f64_f32();
    let docs = shared_docs(m.config.vocab_size as u32);
    for budget in [96, 4096] {
        check(&m, ScoreLayout::Packed, &docs, budget, 512).unwrap();
        check(&m32, ScoreLayout::Packed, &docs, budget, 512).unwrap();
    }
    // The sharing happened: fewer tokens forwarded than the documents' own tries hold.
    let own_nodes: usize = docs
        .iter()
        .map(|d| {
            let mut prefixes = std::collections::HashSet::new();
            for r in d {
                let whole: Vec<u32> = r.context.iter().chain(&r.continuation).copied().collect();
                for n in 1..whole.len() {
                    prefixes.insert(whole[..n].to_vec());
                }
            }
            prefixes.len()
        })
        .sum();
    let mut opts = ScoreOptions {
        max_length: 512,
        token_budget: 4096,
    };
    let mut prof = ScoreProfile::default();
    score_documents_in(
        ScoreLayout::Packed,
        &m32,
        &docs,
        &mut opts,
        &mut prof,
        |_| {},
    )
    .unwrap();
    assert!(
        prof.forwarded_tokens + 100 < own_nodes,
        "{} forwarded of {own_nodes}",
        prof.forwarded_tokens
    );
    MODEL.with(|tiny| {
        let docs = shared_docs(tiny.config.vocab_size as u32);
        let t64 = in_f64(tiny, "tiny-gqa-f64-shared");
        check(&t64, ScoreLayout::Packed, &docs, 4096, 512).unwrap();
        check(&t64, ScoreLayout::Packed, &docs, 4096, 12).unwrap();
    });
}

/// A vocabulary of several head tiles (the CPU head works in tiles of 4096 entries, the
/// last one partial): log-probabilities and greedy flags still equal a full log-softmax.
#[test]
fn head_tiles_equal_a_full_log_softmax() {
    let m32 = random_model(tiny_config(json!({"vocab_size": 10_000})).unwrap(), 5);
    let m = in_f64(&m32, "tiny-10k-vocab-f64");
    // Targets in every tile, including the last entry of the vocabulary.
    let mut docs = edge_docs(10_000);
    docs.push(vec![
        TokenRequest {
            context: vec![7, 4_100, 9_999],
            continuation: vec![9_999, 0, 4_095, 4_096, 8_192],
        },
        TokenRequest {
            context: vec![7, 4_100, 9_999],
            continuation: vec![8_191],
        },
    ]);
    for layout in [ScoreLayout::Cached, ScoreLayout::Packed] {
        check(&m, layout, &docs, 4096, 512).unwrap();
        check(&m32, layout, &docs, 4096, 512).unwrap();
    }
}

#[test]
fn a_target_outside_the_vocabulary_is_an_error() {
    MODEL.with(|m| {
        let h = Tensor::zeros([2, m.config.hidden_size], (Kind::Float, tch::Device::Cpu));
        let vocab = m.config.vocab_size;
        for bad in [vocab, -1] {
            let e = come_repro::eval::head::score_pairs(m, &h, &[(0, 1), (1, bad)])
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(&bad.to_string()) && e.contains("vocabulary"),
                "{e}"
            );
        }
    });
}

/// Ties: a zero hidden state gives every logit the same value, and a single argmax over
/// the vocabulary returns the first entry, so only target 0 is greedy, not the first
/// entry of a later tile nor a later entry of the first tile.
#[test]
fn the_first_of_tied_maxima_is_the_greedy_token() {
    let m = random_model(tiny_config(json!({"vocab_size": 10_000})).unwrap(), 7);
    let h = Tensor::zeros([2, m.config.hidden_size], (Kind::Float, tch::Device::Cpu));
    let pairs = [(0, 0), (0, 1), (0, 4_096), (1, 8_192), (1, 9_999), (1, 0)];
    let got = come_repro::eval::head::score_pairs(&m, &h, &pairs).unwrap();
    let uniform = -(10_000f64).ln();
    for (&(r, t), &(lp, greedy)) in pairs.iter().zip(&got) {
        assert!((lp - uniform).abs() < 1e-6, "row {r} target {t}: {lp}");
        assert_eq!(greedy, t == 0, "row {r} target {t}");
    }
}

/// More positions than one head block (1024 rows on CPU), several pairs per row, targets
/// in every tile: each pair equals the full log-softmax of its row.
#[test]
fn head_blocks_and_tiles_equal_a_full_log_softmax() {
    let m = random_model(tiny_config(json!({"vocab_size": 10_000})).unwrap(), 6);
    head_check(&m);
    head_check(&load_model(&common::smollm2(), LoadOptions::default()).unwrap());
}

fn head_check(m: &Model) {
    let v = m.config.vocab_size;
    let rows = 2_500;
    let h = Tensor::randn(
        [rows, m.config.hidden_size],
        (Kind::Float, tch::Device::Cpu),
    );
    let pairs: Vec<(usize, i64)> = (0..rows as usize)
        .rev()
        .flat_map(|r| {
            [
                (r, (r as i64 * 7_919) % v),
                (r, (r as i64 * 104_729 + 3) % v),
            ]
        })
        .collect();
    let got = come_repro::eval::head::score_pairs(m, &h, &pairs).unwrap();
    let logp = m.lm_head(&m.final_norm(&h)).log_softmax(-1, Kind::Float);
    let argmax = logp.argmax(-1, false);
    for (&(r, t), &(lp, greedy)) in pairs.iter().zip(&got) {
        let want = logp.double_value(&[r as i64, t]);
        assert!(
            (lp - want).abs() < 1e-4,
            "row {r} target {t}: {lp} vs {want}"
        );
        assert_eq!(greedy, argmax.int64_value(&[r as i64]) == t, "row {r}");
    }
}
