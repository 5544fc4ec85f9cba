//! Scoring several tasks through one queue of batches on CPU worker threads must give
//! what scoring each task alone gives (bitwise against one libtorch thread, as the
//! workers run), hand tasks over in order, and stop on the first error.

mod common;

use come_repro::error::Error;
use come_repro::eval::loglik::{score_documents, Score, ScoreOptions, TokenRequest};
use come_repro::eval::pool::{score_tasks_on, ScoreHooks};
use come_repro::eval::profile::ScoreProfile;
use come_repro::eval::workers;
use come_repro::model::load::{load_model, LoadOptions};
use come_repro::model::synthetic::{random_model, tiny_config};
use come_repro::model::Model;
use serde_json::json;

/// Thread-count-independent MKL results, as the binary sets them, before any product.
fn strict_mkl() {
    come_repro::mkl_dispatch::reproducible_across_threads();
}

/// `n` documents of 1-4 requests over `vocab`, with shared contexts, answers sharing
/// first tokens, one-token answers and contexts that differ near their end.
fn docs(seed: u32, n: usize, vocab: u32) -> Vec<Vec<TokenRequest>> {
    let mut x = seed.wrapping_mul(2_654_435_761) | 1;
    let mut next = move |m: u32| {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        x % m
    };
    (0..n)
        .map(|_| {
            let ctx: Vec<u32> = (0..1 + next(60)).map(|_| next(vocab)).collect();
            let vary = next(3) == 0;
            (0..1 + next(4))
                .map(|i| {
                    let mut context = ctx.clone();
                    if vary {
                        context.push((i * 7 + 1) % vocab);
                    }
                    let len = if next(4) == 0 { 1 } else { 1 + next(9) };
                    TokenRequest {
                        context,
                        continuation: (0..len).map(|_| next(vocab)).collect(),
                    }
                })
                .collect()
        })
        .collect()
}

#[derive(Default)]
struct Seen {
    scores: Vec<(usize, Vec<Vec<Score>>)>,
    progress: Vec<(usize, usize)>,
    profiles: Vec<ScoreProfile>,
    fail_at: Option<usize>,
}

impl ScoreHooks for Seen {
    fn progress(&mut self, task: usize, done: usize) {
        self.progress.push((task, done));
    }
    fn scored(
        &mut self,
        task: usize,
        scores: Vec<Vec<Score>>,
        prof: ScoreProfile,
    ) -> come_repro::error::Result<()> {
        self.scores.push((task, scores));
        self.profiles.push(prof);
        if self.fail_at == Some(task) {
            return Err(Error::Invalid(format!("stop after task {task}")));
        }
        Ok(())
    }
}

fn check_pooled_equals_alone(m: &Model) {
    let vocab = m.config.vocab_size as u32;
    let tasks = [
        docs(1, 40, vocab),
        vec![],
        docs(2, 1, vocab),
        docs(3, 25, vocab),
    ];
    let views: Vec<&[Vec<TokenRequest>]> = tasks.iter().map(Vec::as_slice).collect();
    for budget in [64, 4096] {
        let opts = ScoreOptions {
            max_length: 512,
            token_budget: budget,
        };
        let alone = |threads: i32| -> Vec<Vec<Vec<Score>>> {
            tch::set_num_threads(threads);
            tasks
                .iter()
                .map(|t| {
                    let mut prof = ScoreProfile::default();
                    score_documents(m, t, &mut opts.clone(), &mut prof, |_| {}).unwrap()
                })
                .collect()
        };
        // Workers run libtorch at one thread each: at one thread the same batches give
        // the same bits. Split over threads, some kernels sum in another order.
        let (one, two) = (alone(1), alone(2));
        for n in [2, 3] {
            let mut seen = Seen::default();
            score_tasks_on(m, &views, &mut opts.clone(), n, &mut seen).unwrap();
            let order: Vec<usize> = seen.scores.iter().map(|s| s.0).collect();
            assert_eq!(order, [0, 1, 2, 3], "tasks handed over in order, once each");
            for (k, got) in &seen.scores {
                assert_eq!(got, &one[*k], "task {k}, budget {budget}, {n} workers");
                for (g, w) in got.iter().flatten().zip(two[*k].iter().flatten()) {
                    assert!((g.logprob - w.logprob).abs() < 1e-4, "{g:?} vs {w:?}");
                    assert_eq!(g.is_greedy, w.is_greedy);
                }
            }
            for (k, task) in tasks.iter().enumerate() {
                let mine: Vec<usize> = seen
                    .progress
                    .iter()
                    .filter(|p| p.0 == k)
                    .map(|p| p.1)
                    .collect();
                assert!(mine.windows(2).all(|w| w[0] < w[1]), "task {k}: {mine:?}");
                assert_eq!(mine.last().copied().unwrap_or(0), task.len());
            }
            let forwarded: usize = seen.profiles.iter().map(|p| p.forwarded_tokens).sum();
            assert!(forwarded > 0);
            assert!(seen.profiles.iter().all(|p| p.workers == n));
        }
    }
}

#[test]
fn pooled_tasks_score_exactly_what_each_task_alone_scores_on_stories260k() {
    strict_mkl();
    let m = load_model(&common::stories(), LoadOptions::default()).unwrap();
    check_pooled_equals_alone(&m);
}

#[test]
fn pooled_tasks_score_exactly_what_each_task_alone_scores_on_a_tiny_gqa_model() {
    strict_mkl();
    let m = random_model(tiny_config(json!({})).unwrap(), 7);
    assert!(m.config.num_key_value_heads < m.config.num_attention_heads);
    check_pooled_equals_alone(&m);
}

#[test]
fn an_error_from_a_handed_over_task_stops_the_rest() {
    strict_mkl();
    let m = random_model(tiny_config(json!({})).unwrap(), 7);
    let v = m.config.vocab_size as u32;
    let tasks = [docs(4, 30, v), docs(5, 30, v), docs(6, 30, v)];
    let views: Vec<&[Vec<TokenRequest>]> = tasks.iter().map(Vec::as_slice).collect();
    let mut opts = ScoreOptions {
        max_length: 512,
        token_budget: 64,
    };
    let mut seen = Seen {
        fail_at: Some(0),
        ..Default::default()
    };
    let e = score_tasks_on(&m, &views, &mut opts, 2, &mut seen).unwrap_err();
    assert!(e.to_string().contains("stop after task 0"), "{e}");
    assert_eq!(seen.scores.len(), 1, "nothing handed over after the error");
}

#[test]
fn workers_list_jobs_out_of_memory_and_stop_on_other_errors() {
    strict_mkl();
    let m = random_model(tiny_config(json!({})).unwrap(), 7);
    let jobs: Vec<usize> = (0..20).collect();
    let mut got = vec![];
    let left = workers::run(
        &m,
        &jobs,
        3,
        |_, &j| {
            if j % 5 == 0 {
                Err(Error::OutOfMemory("simulated".into()))
            } else {
                Ok(j * 10)
            }
        },
        |j, r| {
            got.push((j, r));
            Ok(())
        },
    )
    .unwrap();
    assert_eq!(left.out_of_memory, [0, 5, 10, 15]);
    got.sort_unstable();
    let want: Vec<(usize, usize)> = jobs
        .iter()
        .filter(|&&j| j % 5 != 0)
        .map(|&j| (j, j * 10))
        .collect();
    assert_eq!(got, want);

    let mut delivered = 0;
    let e = workers::run(
        &m,
        &jobs,
        2,
        |_, &j| {
            if j == 3 {
                Err(Error::Invalid("job 3 is broken".into()))
            } else {
                Ok(j)
            }
        },
        |_, _| {
            delivered += 1;
            Ok(())
        },
    )
    .err()
    .expect("an error");
    assert!(e.to_string().contains("job 3 is broken"), "{e}");
    assert!(delivered < jobs.len());
}
