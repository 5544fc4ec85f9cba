//! The pipeline stages as a library: the prune record reads files of every earlier
//! writer, a prune appears atomically, the eval stage reports through its hooks, run
//! identities did not move when the recovery axis arrived, and the distill cache key.

mod common;

use come_repro::distill::{RecoveryConfig, RecoveryMethod};
use come_repro::eval::harness::TaskResult;
use come_repro::eval::ppl_corpus::Corpus;
use come_repro::eval::tasks::{load_task, TaskSource};
use come_repro::experiment::Experiment;
use come_repro::grid::GridSpec;
use come_repro::model::load::{load_model, LoadOptions};
use come_repro::model::tokenizer::Tokenizer;
use come_repro::progress::{ignore, Event};
use come_repro::prune::{Method, PruneConfig};
use come_repro::stages::{
    self, evaluate, prune_checkpoint, EvalHooks, EvalInputs, PplOutcome, PplText, PruneRecord,
    Subset,
};
use std::collections::BTreeMap;
use std::path::Path;

/// A report as the code before `PruneRecord` wrote it: a NaN block influence came out as
/// `null`, `concat` / `ratio` / `nll` only where set.
const OLD_REPORT: &str = r#"{
  "config": { "method": "come", "merge": "concat", "target_layers": 3, "sparsity": null,
              "sensitivity": "act-l1", "pair_score": "sbi", "norm": "mean",
              "gqa_mapping": "hf", "no_repeat": true, "comep_grid": 20, "seed": 0,
              "calib": { "source": null, "nrows": 16, "seqlen": 64, "seed": 10,
                         "max_sequences": 2 } },
  "target": { "sparsity": null, "total_params": 260000, "params_per_layer": 40000,
              "layers_before": 5, "layers_removed": 2, "target_layers": 3,
              "rule": "explicit target_layers" },
  "calibration": { "n_sequences": 2, "seqlen": 64, "rows_available": 4444,
                   "rows_used": 16, "source": "data/calibration/wikitext2_train_5k.txt",
                   "source_sha256": "ab12", "deviation": "a prefix of the train split" },
  "correspondence": [[0], [1, 2], [3, 4]],
  "steps": [
    { "round": 0, "action": "concat 1+2", "positions": [1, 2], "originals": [1, 2],
      "score": 0.12, "bi": [0.3, null],
      "concat": { "shares": [0.5, 0.5], "mlp_kept": [[0, 1], [2]], "kv_heads_kept": [[0], []],
                  "q_heads_kept": [[0, 1], []] },
      "seconds": 0.5 },
    { "round": 1, "action": "drop 4 of 3+4", "positions": [2, 3], "originals": [4],
      "score": null, "bi": [0.1, 0.2], "seconds": 0.25 }
  ],
  "params_before": 260000,
  "params_after": 180000,
  "layer_passes": 9,
  "seconds": 1.5
}"#;

fn write_come_json(dir: &Path, extra: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let text = format!(
        "{{ \"source_model\": \"work/stories\", \"report\": {OLD_REPORT}{extra}, \
         \"crate_version\": \"0.1.0\" }}"
    );
    std::fs::write(dir.join("come.json"), text).unwrap();
}

#[test]
fn prune_record_reads_come_json_of_earlier_writers() {
    let d = tempfile::tempdir().unwrap();
    // The grid runner wrote source_model, report and crate_version only.
    let runner = d.path().join("runner");
    write_come_json(&runner, "");
    let rec = PruneRecord::read(&runner).unwrap();
    assert_eq!(rec.source_model, Path::new("work/stories"));
    assert_eq!(rec.crate_version, "0.1.0");
    assert_eq!(
        (rec.peak_rss_mib, rec.total_seconds, rec.threads),
        (None, None, None)
    );
    let r = &rec.report;
    assert_eq!(r.config.method, Method::Come);
    assert_eq!(r.config.calib.nrows, 16);
    assert_eq!(r.target.layers_removed, 2);
    assert_eq!(r.target.rule, "explicit target_layers");
    assert_eq!(r.calibration.rows_used, 16);
    assert!(r.calibration.sequences.is_empty());
    assert_eq!(r.correspondence, vec![vec![0], vec![1, 2], vec![3, 4]]);
    assert_eq!(r.steps.len(), 2);
    assert!(r.steps[0].bi[1].is_nan(), "null reads back as NaN");
    assert_eq!(r.steps[0].concat.as_ref().unwrap().mlp_kept[1], vec![2]);
    assert!(r.steps[1].concat.is_none() && r.steps[1].score.is_none());
    assert_eq!(
        (r.params_after, r.layer_passes, r.seconds),
        (180000, 9, 1.5)
    );

    // The prune command added measurements; a NaN peak RSS came out as null.
    let cli = d.path().join("cli");
    write_come_json(
        &cli,
        ", \"peak_rss_mib\": null, \"total_seconds\": 2.5, \"threads\": 2",
    );
    let rec = PruneRecord::read(&cli).unwrap();
    assert_eq!(
        (rec.peak_rss_mib, rec.total_seconds, rec.threads),
        (None, Some(2.5), Some(2))
    );

    // A broken file is an error naming it.
    std::fs::write(cli.join("come.json"), "{ \"report\": 1 }").unwrap();
    let e = PruneRecord::read(&cli).unwrap_err().to_string();
    assert!(e.contains("come.json"), "{e}");
}

fn stories_prune() -> PruneConfig {
    let mut cfg = PruneConfig {
        target_layers: Some(3),
        ..Default::default()
    };
    cfg.calib.nrows = 16;
    cfg.calib.seqlen = 64;
    cfg.calib.max_sequences = Some(2);
    cfg
}

/// Entries of `dir` other than `keep`.
fn leftovers(dir: &Path, keep: &str) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != keep)
        .collect()
}

#[test]
fn prune_checkpoint_writes_a_record_that_reads_back_and_replaces_atomically() {
    let base = common::stories();
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("cache/pruned/abc");
    let cfg = stories_prune();
    let mut events = vec![];
    let rec = prune_checkpoint(&base, &cfg, LoadOptions::default(), &out, &mut |e| {
        events.push(e)
    })
    .unwrap();
    // Each round: its count, then its description.
    let rounds: Vec<usize> = events
        .iter()
        .filter_map(|e| match e {
            Event::Items { what, done, .. } if what == "prune steps" => Some(*done),
            _ => None,
        })
        .collect();
    assert_eq!(rounds, [1, 2]);
    let notes: Vec<&Event> = events
        .iter()
        .filter(|e| matches!(e, Event::Note(_)))
        .collect();
    assert_eq!(notes.len(), 2);
    assert_eq!(rec.report.correspondence.len(), 3);
    assert_eq!(rec.source_model, base);
    assert!(rec.total_seconds.is_some() && rec.threads.is_some());
    // What was written reads back (floats to within JSON's decimal round trip).
    let back = PruneRecord::read(&out).unwrap();
    assert_eq!(back.report.config, cfg);
    assert_eq!(back.report.correspondence, rec.report.correspondence);
    assert_eq!(back.report.target.rule, rec.report.target.rule);
    assert_eq!(
        back.report.calibration.source_sha256,
        rec.report.calibration.source_sha256
    );
    assert_eq!(back.report.steps.len(), 2);
    for (a, b) in back.report.steps.iter().zip(&rec.report.steps) {
        assert_eq!((&a.action, &a.originals), (&b.action, &b.originals));
        let (ca, cb) = (a.concat.as_ref().unwrap(), b.concat.as_ref().unwrap());
        assert_eq!(ca.mlp_kept, cb.mlp_kept);
        assert!((ca.shares[0] - cb.shares[0]).abs() < 1e-12);
    }
    assert_eq!(back.threads, rec.threads);
    assert_eq!(
        load_model(&out, LoadOptions::default()).unwrap().n_layers(),
        3
    );
    assert_eq!(
        leftovers(out.parent().unwrap(), "abc"),
        Vec::<String>::new()
    );

    // The old runner wrote exactly this shape with `json!`: it reads as a record too.
    let old = serde_json::json!({
        "source_model": base, "report": rec.report, "crate_version": "0.1.0"
    });
    std::fs::write(out.join("come.json"), old.to_string()).unwrap();
    assert_eq!(PruneRecord::read(&out).unwrap().report.steps.len(), 2);

    // A failed prune leaves the existing output as it was, and no partial directory.
    let bad = PruneConfig {
        target_layers: Some(9),
        ..cfg.clone()
    };
    let e = prune_checkpoint(&base, &bad, LoadOptions::default(), &out, &mut ignore);
    assert!(e.is_err());
    assert!(out.join("config.json").exists());
    assert_eq!(
        leftovers(out.parent().unwrap(), "abc"),
        Vec::<String>::new()
    );

    // A second prune into the same place replaces it whole.
    let other = PruneConfig {
        method: Method::Reverse,
        ..cfg
    };
    let rec = prune_checkpoint(&base, &other, LoadOptions::default(), &out, &mut ignore).unwrap();
    assert_eq!(
        PruneRecord::read(&out).unwrap().report.config.method,
        rec.report.config.method
    );
    assert_eq!(
        leftovers(out.parent().unwrap(), "abc"),
        Vec::<String>::new()
    );
}

#[derive(Default)]
struct Seen {
    progress: BTreeMap<String, (usize, usize)>,
    tasks: Vec<String>,
    ppl: Vec<String>,
}

impl EvalHooks for Seen {
    fn event(&mut self, e: Event) {
        if let Event::Items { what, done, total } = e {
            self.progress.insert(what, (done, total));
        }
    }
    fn task_done(&mut self, r: &TaskResult) {
        self.tasks.push(r.task.clone());
    }
    fn ppl_done(&mut self, r: &PplOutcome) {
        self.ppl.push(r.corpus.name());
    }
}

#[test]
fn eval_stage_scores_tasks_and_corpora_through_its_hooks() {
    let dir = common::stories();
    let model = load_model(&dir, LoadOptions::default()).unwrap();
    let tok = Tokenizer::from_dir(&dir).unwrap();
    let src = TaskSource::default();
    let tasks = vec![
        load_task("piqa", &src).unwrap(),
        load_task("arc_easy", &src).unwrap(),
    ];
    let ppl = vec![PplText::read(Corpus::parse("wikitext2")).unwrap()];
    let inputs = EvalInputs {
        tasks: &tasks,
        subset: Subset {
            limit: Some(3),
            ..Default::default()
        },
        token_budget: 4096,
        add_special: true,
        ppl: &ppl,
        ppl_seqlen: 64,
        ppl_windows: Some(2),
        ppl_protocol: Default::default(),
        latency: None,
    };
    let mut seen = Seen::default();
    let out = evaluate(&model, &tok, &inputs, &mut seen).unwrap();
    assert_eq!(seen.tasks, ["piqa", "arc_easy"]);
    assert_eq!(seen.ppl, ["wikitext2"]);
    assert_eq!(seen.progress["piqa"], (3, 3));
    assert_eq!(seen.progress["wikitext2"], (2, 2));
    assert!(out.tasks.iter().all(|t| t.n_docs == 3));
    // The time breakdown adds up: every document's tokens went through the layers (some
    // padding on top), the head ran at most once per scored token, and the phases fit in
    // the task's wall time (all tasks' wall time, with several workers).
    for t in &out.tasks {
        let p = &t.profile;
        assert_eq!(t.tokens_forwarded, p.forwarded_tokens);
        assert!(
            p.forwarded_tokens > 0 && p.padded_tokens >= p.forwarded_tokens,
            "{p:?}"
        );
        assert!(p.forwards >= 1 && p.rows >= 3, "{p:?}");
        assert!(
            p.head_positions > 0 && p.head_positions <= t.tokens_scored,
            "{p:?}"
        );
        assert!(p.forward_s > 0.0 && p.head_s > 0.0, "{p:?}");
        if p.workers == 1 {
            assert!(p.timed_s() <= t.seconds + 1e-6, "{p:?} vs {}", t.seconds);
        }
    }
    // With CPU workers the phases are worker-seconds, and tasks overlap at their ends:
    // in all they fit in the workers' share of the wall time.
    let workers = out.tasks[0].profile.workers as f64;
    let busy: f64 = out.tasks.iter().map(|t| t.profile.timed_s()).sum();
    let wall: f64 = out.tasks.iter().map(|t| t.seconds).sum();
    assert!(busy <= workers * wall + 1e-6, "{busy} worker-s in {wall} s");
    assert_eq!(out.ppl[0].result.windows, 2);
    assert!(out.ppl[0].result.ppl.is_finite());
    assert_eq!(out.final_token_budget, 4096);

    // `proceed` stops the stage between tasks.
    struct Stop;
    impl EvalHooks for Stop {
        fn proceed(&mut self) -> come_repro::Result<()> {
            Err(come_repro::Error::Invalid("interrupted".into()))
        }
    }
    let e = evaluate(&model, &tok, &inputs, &mut Stop).unwrap_err();
    assert_eq!(e.to_string(), "interrupted");
}

/// Run hashes of experiments/ci.toml as they were before the recovery axis existed: the
/// runs recorded in stores (and named in results/ci-baseline.json) keep their identity.
const CI_HASHES: &[(&str, &str)] = &[
    (
        "stories/dense",
        "e7a7e8ce5748b89255845e5b1d57666559a33ee8095c59dd4356df39b59a1ea5",
    ),
    (
        "stories/come",
        "f71ae8d53fd871848a2572dd10a81fd14f3d0bd70a69a27880182a592a5f7038",
    ),
    (
        "stories/come-p",
        "661ccf06f938daa1090330280661eecf2c2f75d3b08d862e79ef82386b4e8e1b",
    ),
    (
        "stories/shortgpt",
        "3c7cbb65c1739cbcd22bb79d529a6a3da0c10d1174dfe1fe4fb722c237b3e3f9",
    ),
    (
        "stories/sleb",
        "31b652ffdb74cf32d8e9ceeb27ce00b7723d8901d1c03f77be240a0c8c0338cd",
    ),
    (
        "stories/reverse",
        "d1c5ad0c06cd1c570ab3d991f6259a31200239304ff462151350bffabbc9fec9",
    ),
    (
        "stories/laco",
        "f42644a3cf609efcb843d2c454be307b3cf06ef0179e26f74937af1ef5e0dc36",
    ),
    (
        "stories/magnitude",
        "9244969bdae8b8dd4808011409cb27fabff0cb52b1ecdc57c702b680d6307388",
    ),
    (
        "stories/taylor",
        "99ab95e54332ea92c35641d2da75d317cbda962a8ba61730a13f4f68749eba37",
    ),
    (
        "stories/mka",
        "437ed5fb8a0b81c54e37c2b6a966bf3d2a6c86c8f68573c356a07008bf862866",
    ),
    (
        "stories/linear",
        "5f0ecffb60fe040123ee08ea2054db41182d5631d399a025a4a452acec1d18a5",
    ),
    (
        "stories/linear-bi",
        "0b6a7fd8ebb5837a31bd626c2a83baff89592317af9bbde42b6ad1c3397d40d6",
    ),
    (
        "stories/drop",
        "f4b82b8c14768fe67601fd02f5ac34cf08fae0d624c60f344800982586e01715",
    ),
    (
        "stories/fold/hf",
        "252bde4f2ee62caf2adbe16e0c3a5f89150c1069f1f34592dbda268568a4963e",
    ),
    (
        "stories/mean/reference",
        "05db4640e422103be6a35bd3f1097acb58e8b37bdad43ea58ec78d4c69a061ee",
    ),
    (
        "smollm2/dense",
        "d39d7b18a27e15867d3e4a98447142a9d7545879599626fa414a454bf1d1336d",
    ),
    (
        "smollm2/come",
        "6ee869b735f2f3ff7902941f9f21b3d68cb18e5080ff20417faa0d99d63f9b98",
    ),
    (
        "smollm2/shortgpt",
        "6eac4c301b10f205f36ab87d67903bc3217dbe9c158d9a4e6a2d863ecadfdd1c",
    ),
];

#[test]
fn run_hashes_did_not_change_with_the_recovery_axis_or_the_calibration_default() {
    // The calibration recipe before the paper's NumPy shuffle became the default: stated
    // explicitly, it still hashes as it did.
    let mut legacy = PruneConfig::default();
    legacy.calib.shuffle = come_repro::calib::Shuffle::Splitmix64;
    legacy.calib.max_sequences = Some(8);
    let pruned = Experiment {
        prune: Some(legacy),
        ..Default::default()
    };
    assert_eq!(
        pruned.hash(),
        "2cb8f85b99626034104ca66c851feddac9d61b258b3ef1e6ac2d64e1febe30c1"
    );
    let paper = Experiment {
        prune: Some(PruneConfig::default()),
        ..Default::default()
    };
    assert_ne!(paper.hash(), pruned.hash());
    assert_eq!(Experiment::from_value(paper.to_value()).unwrap(), paper);
    // A record written before the key existed reads back as the recipe it used.
    assert_eq!(Experiment::from_value(pruned.to_value()).unwrap(), pruned);
    assert_eq!(
        Experiment::default().hash(),
        "7106689b32abed745189ec443475b4501bcbc48f9fdd0df6a7665b6e757ba79d"
    );
    // A recovery that is off is no part of the identity, whatever its other settings.
    let mut off = pruned.clone();
    off.recovery.tokens = 123;
    assert_eq!(off.hash(), pruned.hash());
    assert!(off.to_value().get("recovery").is_none());
    let mut on = pruned.clone();
    on.recovery.method = come_repro::distill::Recovery::Hierarchical;
    assert_ne!(on.hash(), pruned.hash());
    assert_eq!(Experiment::from_value(on.to_value()).unwrap(), on);

    // The committed CI grid expands to the same runs (where the shipped models exist).
    let spec = match GridSpec::load("experiments/ci.toml") {
        Ok(s) => s,
        Err(e) if !come_repro::paths::smollm2_gguf().exists() => {
            assert!(e.to_string().contains("does not exist"), "{e}");
            return;
        }
        Err(e) => panic!("{e}"),
    };
    let got: Vec<(String, String)> = spec
        .expand()
        .unwrap()
        .into_iter()
        .map(|r| (r.name, r.hash))
        .collect();
    let want: Vec<(String, String)> = CI_HASHES
        .iter()
        .map(|(n, h)| (n.to_string(), h.to_string()))
        .collect();
    // Runs added later (recovered ones, the "+" baselines) are new; every earlier one is
    // still there with its hash.
    let missing: Vec<_> = want.iter().filter(|w| !got.contains(w)).collect();
    assert!(missing.is_empty(), "CI runs gone or re-hashed: {missing:?}");
    let added = ["recovery=", "/magnitude+", "/taylor+"];
    for (name, _) in got.iter().filter(|g| !want.contains(g)) {
        assert!(
            added.iter().any(|a| name.contains(a)),
            "unexpected new CI run {name}"
        );
    }
    // ... and results/ci-baseline.json names exactly the grid's runs.
    let baseline: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string("results/ci-baseline.json").unwrap())
            .unwrap();
    let mut names: Vec<&str> = baseline["runs"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let mut expected: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
    names.sort();
    expected.sort();
    assert_eq!(names, expected);
}

#[test]
fn distill_cache_key_follows_the_pruned_checkpoint_and_the_recovery() {
    let dense = Experiment::default();
    assert_eq!(stages::distill::cache_key(&dense), None);
    let pruned = Experiment {
        prune: Some(PruneConfig {
            sparsity: Some(0.3),
            ..Default::default()
        }),
        ..Default::default()
    };
    assert_eq!(stages::distill::cache_key(&pruned), None, "recovery off");
    let lora = Experiment {
        recovery: RecoveryConfig {
            method: come_repro::distill::Recovery::of(RecoveryMethod::Lora),
            ..Default::default()
        },
        ..pruned.clone()
    };
    let key = stages::distill::cache_key(&lora).unwrap();
    assert_eq!(key.len(), 64);
    assert_ne!(Some(key.clone()), lora.prune_hash());
    // Evaluation settings do not change the recovered checkpoint; recovery settings and
    // the pruned checkpoint do.
    let mut e = lora.clone();
    e.eval.limit = Some(5);
    assert_eq!(stages::distill::cache_key(&e).unwrap(), key);
    let mut r = lora.clone();
    r.recovery.tokens *= 2;
    assert_ne!(stages::distill::cache_key(&r).unwrap(), key);
    let mut p = lora.clone();
    p.prune.as_mut().unwrap().sparsity = Some(0.2);
    assert_ne!(stages::distill::cache_key(&p).unwrap(), key);
    // Dense with a recovery set (the grid refuses it): nothing to recover.
    let no_prune = Experiment {
        prune: None,
        ..lora
    };
    assert_eq!(stages::distill::cache_key(&no_prune), None);
}
