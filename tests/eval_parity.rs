//! Item-level parity with lm-evaluation-harness 0.4 (HF backend) on SmolLM2: the goldens
//! in tests/golden/lm_eval_smollm2.json were written by scripts/golden/lm_eval_reference.py,
//! which ran lm-eval itself on the imported checkpoint with task configs reading the same
//! data files (benches/lm_eval_tasks). Every request string must be identical, every
//! per-choice log-likelihood within 1e-3 nats, every per-document prediction the same.
//! CI checks the first 20 documents per task (10 per MMLU subject); set
//! COME_PARITY_FULL=1 to check every golden document.

mod common;

use come_repro::eval::harness::{evaluate_task, EvalOptions};
use come_repro::eval::loglik::ScoreOptions;
use come_repro::eval::tasks::{load_task, TaskSource};
use come_repro::model::load::{load_model, LoadOptions};
use come_repro::model::tokenizer::Tokenizer;
use serde_json::Value;

const TOL: f64 = 1e-3;

fn goldens() -> Value {
    let text = std::fs::read_to_string(common::golden("lm_eval_smollm2.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn check_run(run: &Value, fewshot: usize, per_task: usize) {
    let dir = common::smollm2();
    let model = load_model(&dir, LoadOptions::default()).unwrap();
    let tok = Tokenizer::from_dir(&dir).unwrap();
    let mut opts = EvalOptions {
        score: ScoreOptions {
            max_length: 8192,
            token_budget: 4096,
        },
        add_special: true,
    };
    let src = TaskSource {
        mmlu_fewshot: fewshot,
        ..TaskSource::default()
    };
    let mut mmlu = None;
    let mut checked = 0;
    for (name, t) in run["tasks"].as_object().unwrap() {
        let (task, subject) = match name.strip_prefix("mmlu_") {
            Some(s) => ("mmlu", Some(s)),
            None => (name.as_str(), None),
        };
        let data = if task == "mmlu" {
            mmlu.get_or_insert_with(|| load_task("mmlu", &src).unwrap())
                .clone()
        } else {
            load_task(task, &src).unwrap()
        };
        // lm-eval numbers MMLU documents per subject; ours run over all subjects.
        let pool: Vec<usize> = (0..data.docs.len())
            .filter(|&i| subject.is_none_or(|s| data.docs[i].group.as_deref() == Some(s)))
            .collect();
        let gdocs = t["docs"].as_array().unwrap();
        let n = gdocs.len().min(if subject.is_some() {
            per_task / 2
        } else {
            per_task
        });
        let idx: Vec<usize> = gdocs[..n]
            .iter()
            .map(|d| pool[d["doc_id"].as_u64().unwrap() as usize])
            .collect();
        let res = evaluate_task(&model, &tok, &data, &idx, &mut opts, |_, _| {}).unwrap();
        for (g, (ours, &i)) in gdocs[..n].iter().zip(res.docs.iter().zip(&idx)) {
            let reqs = g["requests"].as_array().unwrap();
            for (k, r) in reqs.iter().enumerate() {
                assert_eq!(
                    data.docs[i].requests[k].context,
                    r[0].as_str().unwrap(),
                    "{name} doc {} context {k}",
                    g["doc_id"]
                );
                assert_eq!(
                    data.docs[i].requests[k].continuation,
                    r[1].as_str().unwrap(),
                    "{name} doc {} continuation {k}",
                    g["doc_id"]
                );
            }
            let want: Vec<f64> = g["loglik"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect();
            assert_eq!(ours.loglik.len(), want.len());
            for (k, (a, b)) in ours.loglik.iter().zip(&want).enumerate() {
                assert!(
                    (a - b).abs() <= TOL,
                    "{name} doc {} choice {k}: {a} vs lm-eval {b}",
                    g["doc_id"]
                );
            }
            assert_eq!(
                ours.acc,
                g["acc"].as_f64().unwrap(),
                "{name} doc {} acc",
                g["doc_id"]
            );
            if let Some(an) = g.get("acc_norm").and_then(Value::as_f64) {
                assert_eq!(ours.acc_norm, an, "{name} doc {} acc_norm", g["doc_id"]);
            }
            checked += 1;
        }
    }
    assert!(checked > 0);
}

fn per_task() -> usize {
    if std::env::var_os("COME_PARITY_FULL").is_some() {
        usize::MAX
    } else {
        20
    }
}

#[test]
fn zero_shot_items_match_lm_eval() {
    let g = goldens();
    check_run(&g["runs"]["0shot"], 0, per_task());
}

#[test]
fn mmlu_five_shot_items_match_lm_eval() {
    let g = goldens();
    check_run(&g["runs"]["mmlu_5shot"], 5, per_task().saturating_mul(2));
}
