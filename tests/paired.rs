//! Paired comparison of two runs on the same documents: McNemar's exact test against
//! binomial tails worked by hand, the bootstrap interval's behaviour on runs that agree
//! and runs that differ, the metric each task is compared in, and the store keeping
//! per-document scores through finish, re-run and merge.

use come_repro::experiment::Experiment;
use come_repro::grid::RunSpec;
use come_repro::report::mean_sd;
use come_repro::report::paired::{compare, compare_groups, mcnemar_exact};
use come_repro::report::Convention;
use come_repro::track::{Claim, DocScore, Metric, Store};

fn doc(task: &str, id: i64, acc: f64, acc_norm: f64) -> DocScore {
    DocScore {
        task: task.into(),
        doc_id: id,
        acc,
        acc_norm,
    }
}

#[test]
fn mcnemar_matches_binomial_tails_by_hand() {
    // 0 vs 5 discordant: 2 * (1/2)^5.
    assert_eq!(mcnemar_exact(0, 5), 0.0625);
    // 3 vs 10: 2 * (C(13,0) + C(13,1) + C(13,2) + C(13,3)) / 2^13 = 2 * 378 / 8192.
    assert!((mcnemar_exact(3, 10) - 756.0 / 8192.0).abs() < 1e-15);
    assert_eq!(mcnemar_exact(10, 3), mcnemar_exact(3, 10));
    // Balanced or empty: no evidence.
    assert_eq!(mcnemar_exact(5, 5), 1.0);
    assert_eq!(mcnemar_exact(0, 0), 1.0);
    // 400 vs 600 (z = -6.3 in the normal approximation, p about 2.6e-10): the log-space
    // sum does not underflow where (1/2)^1000 would.
    let p = mcnemar_exact(400, 600);
    assert!(p > 1e-11 && p < 1e-9, "{p}");
}

#[test]
fn a_run_that_wins_is_told_apart_and_identical_runs_are_not() {
    // PIQA (compared in acc): A right on all 20, B on the first 5. HellaSwag (acc_norm in
    // the mixed convention): equal in acc_norm, opposite in acc.
    let mut a = vec![];
    let mut b = vec![];
    for i in 0..20 {
        a.push(doc("piqa", i, 1.0, 1.0));
        b.push(doc("piqa", i, f64::from(i < 5), 0.0));
    }
    for i in 0..10 {
        a.push(doc("hellaswag", i, 0.0, 1.0));
        b.push(doc("hellaswag", i, 1.0, 1.0));
    }
    // A document only one run scored is left out.
    a.push(doc("piqa", 99, 0.0, 0.0));
    let c = compare(&a, &b, Convention::Mixed, 2000, 7).unwrap();
    assert_eq!(c.tasks.len(), 2);
    let (hs, piqa) = (&c.tasks[0], &c.tasks[1]);
    assert_eq!(
        (piqa.task.as_str(), piqa.metric, piqa.n),
        ("piqa", "acc", 20)
    );
    assert_eq!((piqa.acc_a, piqa.acc_b), (1.0, 0.25));
    assert_eq!((piqa.only_a, piqa.only_b), (15, 0));
    assert!((piqa.p.unwrap() - 2.0 * 0.5f64.powi(15)).abs() < 1e-15);
    assert_eq!(
        (hs.metric, hs.only_a, hs.only_b, hs.p),
        ("acc_norm", 0, 0, Some(1.0))
    );
    assert!((c.avg_diff - (-0.75 / 2.0)).abs() < 1e-12);
    assert!(c.ci95.1 < 0.0 && c.ci95.0 >= -0.5, "{:?}", c.ci95);
    assert_eq!(c.p_bootstrap, 0.0);
    assert!((c.pooled_p.unwrap() - 2.0 * 0.5f64.powi(15)).abs() < 1e-15);
    assert_eq!((c.runs, c.per_pair.len()), ((1, 1), 1));
    // In plain acc the HellaSwag documents count for B.
    let acc = compare(&a, &b, Convention::Acc, 100, 7).unwrap();
    assert_eq!((acc.tasks[0].only_a, acc.tasks[0].only_b), (0, 10));

    let same = compare(&a, &a, Convention::Mixed, 500, 1).unwrap();
    assert_eq!(
        (same.avg_diff, same.ci95, same.p_bootstrap),
        (0.0, (0.0, 0.0), 1.0)
    );
    assert_eq!(same.pooled_p, Some(1.0));
    // The same seed gives the same interval.
    assert_eq!(compare(&a, &b, Convention::Mixed, 2000, 7).unwrap(), c);

    let other = vec![doc("boolq", 0, 1.0, 1.0)];
    let e = compare(&a, &other, Convention::Mixed, 10, 0).unwrap_err();
    assert!(
        e.to_string().contains("no scored document in common"),
        "{e}"
    );
}

fn refs(v: &[Vec<DocScore>]) -> Vec<&[DocScore]> {
    v.iter().map(Vec::as_slice).collect()
}

#[test]
fn seed_replicates_are_averaged_per_document_and_paired_by_seed() {
    // Three seeds per side on 10 PIQA documents. A: seed i gets the first 4 + i right.
    // B: every seed gets the first 8 right. Seed pairs: +0.4, +0.3, +0.2.
    let side = |right: &dyn Fn(usize, i64) -> bool| -> Vec<Vec<DocScore>> {
        (0..3)
            .map(|s| {
                (0..10)
                    .map(|i| {
                        let x = f64::from(u8::from(right(s, i)));
                        doc("piqa", i, x, x)
                    })
                    .collect()
            })
            .collect()
    };
    let a = side(&|s, i| i < 4 + s as i64);
    let b = side(&|_, i| i < 8);
    let c = compare_groups(&refs(&a), &refs(&b), Convention::Acc, 2000, 3).unwrap();
    assert_eq!(c.runs, (3, 3));
    let t = &c.tasks[0];
    // A's seed-averaged accuracy: (4 + 5 + 6) / 30; B's 0.8.
    assert!((t.acc_a - 0.5).abs() < 1e-12 && (t.acc_b - 0.8).abs() < 1e-12);
    // Documents 4 and 5 are right in some of A's seeds only: B is "more right" on 4..8.
    assert_eq!((t.only_a, t.only_b), (0, 4));
    // No McNemar test on seed-averaged outcomes.
    assert_eq!((t.p, c.pooled_p), (None, None));
    assert!((c.avg_diff - 0.3).abs() < 1e-12);
    let pairs: Vec<i64> = c
        .per_pair
        .iter()
        .map(|x| (x * 10.0).round() as i64)
        .collect();
    assert_eq!(pairs, [4, 3, 2]);
    let (m, sd) = mean_sd(&c.per_pair);
    assert!((m - 0.3).abs() < 1e-12 && (sd.unwrap() - 0.1).abs() < 1e-12);
    assert!(c.ci95.0 > 0.0, "{:?}", c.ci95);
    // A document that one seed did not score is left out of the comparison.
    let mut short = a.clone();
    short[2].retain(|d| d.doc_id != 9);
    let c = compare_groups(&refs(&short), &refs(&b), Convention::Acc, 100, 3).unwrap();
    assert_eq!(c.tasks[0].n, 9);
    // Unequal sides: no seed pairs, the average still.
    let c = compare_groups(&refs(&a[..2]), &refs(&b), Convention::Acc, 100, 3).unwrap();
    assert!(c.per_pair.is_empty());
    assert!((c.avg_diff - (0.8 - 0.45)).abs() < 1e-12);
    assert!(compare_groups(&[], &refs(&b), Convention::Acc, 10, 0).is_err());
}

fn finished_with_docs(store: &Store, seed: u64, docs: &[DocScore]) -> i64 {
    let exp = Experiment {
        model: format!("m{seed}"),
        ..Default::default()
    };
    let r = RunSpec::new(format!("m/{seed}"), "main", exp);
    let Claim::Run(id) = store.claim(&r, true).unwrap() else {
        panic!("claim")
    };
    let m = [Metric::new("piqa", "acc", 0.5)];
    store.finish_scored(id, &m, &[], docs).unwrap();
    id
}

#[test]
fn the_store_keeps_document_scores_through_rerun_and_merge() {
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(d.path().join("a.sqlite")).unwrap();
    let docs = vec![doc("piqa", 0, 1.0, 0.0), doc("piqa", 1, 0.0, 1.0)];
    let id = finished_with_docs(&store, 1, &docs);
    assert_eq!(store.doc_scores(id).unwrap(), docs);
    // A re-run replaces them (none left from the first attempt).
    let again = finished_with_docs(&store, 1, &docs[..1]);
    assert_eq!(again, id);
    assert_eq!(store.doc_scores(id).unwrap(), docs[..1]);
    // A shard's documents travel with its runs.
    let shard = Store::open(d.path().join("b.sqlite")).unwrap();
    finished_with_docs(&shard, 2, &docs);
    drop(shard);
    let r = store.merge_from(&d.path().join("b.sqlite")).unwrap();
    assert_eq!(r.added, 1);
    let merged = store
        .runs(&Default::default())
        .unwrap()
        .into_iter()
        .find(|x| x.name == "m/2")
        .unwrap();
    assert_eq!(store.doc_scores(merged.id).unwrap(), docs);
}
