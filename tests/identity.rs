//! The run identity is written out field by field (`hashing::Identity`), apart from the
//! serialised layout that grids and stores read. These tests guard the two directions:
//! every setting an experiment can hold moves its hash (no setting silently left out of the
//! identity), and the identity of version 1 is still the layout every stored run was
//! hashed with (tests/run_hashes.rs and tests/stored_configs.rs check the stored hashes).

use clap::ValueEnum;
use come_repro::calib::{CalibConfig, Shuffle};
use come_repro::distill::config::{
    Attach, KdSettings, LayerInputs, LoraSettings, Losses, Recovery, RecoveryConfig,
    RecoveryMethod, Validation,
};
use come_repro::eval::latency::Protocol;
use come_repro::eval::perplexity::PplProtocol;
use come_repro::experiment::{flatten, EvalConfig, Experiment, RuntimeConfig};
use come_repro::hashing::{canonical_json, Identity};
use come_repro::prune::merge::{GqaMapping, NormMode, ShareOptions};
use come_repro::prune::score::Sensitivity;
use come_repro::prune::{MergeOp, Method, PairScore, PruneConfig};
use come_repro::runtime::{DeviceSpec, Dtype};
use serde_json::Value;
use std::path::PathBuf;

/// Every optional setting set and every opt-in on, each away from its default; recovered
/// by hierarchical+kd (KD's settings) or by LoRA (LoRA's).
fn maximal_with(method: Recovery) -> Experiment {
    Experiment {
        model: "smollm2-135m".into(),
        prune: Some(PruneConfig {
            method: Method::ComeP,
            merge: MergeOp::Linear,
            target_layers: Some(20),
            sparsity: Some(0.3),
            sensitivity: Sensitivity::ActL1,
            pair_score: PairScore::Sbi,
            norm: NormMode::Mean,
            gqa_mapping: GqaMapping::Hf,
            share: ShareOptions {
                power: 2.0,
                cap: Some(0.75),
            },
            no_repeat: false,
            comep_grid: 8,
            laco_span: 3,
            laco_interval: 1,
            laco_threshold: 0.5,
            protect_first: 3,
            protect_last: 1,
            calib: CalibConfig {
                source: Some(PathBuf::from("calib.txt")),
                nrows: 64,
                seqlen: 512,
                seed: 3,
                max_sequences: Some(2),
                shuffle: Shuffle::Numpy,
                ids: Some(PathBuf::from("ids.npy")),
                ids_sha256: Some("ab".repeat(32)),
            },
            chunk: 2,
            incremental: false,
            seed: 5,
        }),
        recovery: RecoveryConfig {
            method,
            attach: Attach::None,
            inputs: LayerInputs::Student,
            loss: Losses::parse("mse:0.5,cosine").unwrap(),
            temperature: 2.0,
            kl_positions: Some(64),
            tokens: 8192,
            seqlen: 512,
            micro_batch: 2,
            accum: 3,
            lr: 1e-3,
            min_lr: 1e-5,
            warmup: 0.1,
            betas: [0.8, 0.95],
            eps: 1e-6,
            weight_decay: 0.01,
            clip: Some(1.0),
            val_tokens: 1024,
            validation: Validation::HeldOut,
            eval_every: Some(4),
            data: Some(PathBuf::from("train.txt")),
            seed: 7,
        },
        eval: EvalConfig {
            tasks: vec!["piqa".into(), "boolq".into(), "mmlu".into()],
            limit: Some(100),
            fraction: Some(0.5),
            seed: Some(1),
            mmlu_fewshot: 5,
            ppl_seqlen: Some(1024),
            ppl_windows: Some(4),
            ppl_protocol: PplProtocol::LlamaCpp,
            ppl_c4: true,
            ppl_val: true,
            ppl_ood: true,
            latency: Some(Protocol::Sleb),
            latency_iters: Some([2, 3]),
            token_budget: come_repro::eval::batching::BatchSize::Tokens(2048),
            task_paths: [(
                "hellaswag".to_string(),
                "${COME_DATA}/hs.parquet".to_string(),
            )]
            .into(),
            special_tokens: false,
            ppl_texts: vec!["${COME_DATA}/extra.txt".into()],
        },
        runtime: RuntimeConfig {
            device: DeviceSpec::Cuda(Some(0)),
            dtype: Dtype::Bf16,
        },
    }
}

fn maximal() -> Experiment {
    maximal_with(Recovery::HierarchicalKd(KdSettings {
        tokens: Some(4096),
        lr: 1e-5,
    }))
}

fn maximal_lora() -> Experiment {
    maximal_with(Recovery::Lora(LoraSettings {
        rank: 4,
        alpha: 8.0,
        dropout: 0.1,
        lr: 3e-3,
    }))
}

/// The serde names of every enumerated setting: the spellings a string leaf may take.
fn spellings() -> Vec<String> {
    fn names<T: ValueEnum>() -> Vec<String> {
        T::value_variants()
            .iter()
            .filter_map(|v| v.to_possible_value())
            .map(|p| p.get_name().to_string())
            .collect()
    }
    let mut out = [
        names::<Method>(),
        names::<MergeOp>(),
        names::<PairScore>(),
        names::<Sensitivity>(),
        names::<NormMode>(),
        names::<GqaMapping>(),
        names::<Shuffle>(),
        names::<RecoveryMethod>(),
        names::<Attach>(),
        names::<LayerInputs>(),
        names::<Validation>(),
        names::<PplProtocol>(),
        names::<Protocol>(),
        names::<Dtype>(),
    ]
    .concat();
    out.extend(["cpu", "cuda", "cuda:1", "auto"].map(String::from));
    out
}

/// Other values of a leaf, in the same JSON type, that may still deserialise.
fn variants(v: &Value, spellings: &[String]) -> Vec<Value> {
    match v {
        Value::Bool(b) => vec![Value::Bool(!b)],
        Value::Number(n) => match (n.as_u64(), n.as_f64()) {
            (Some(u), _) => vec![Value::from(u + 1), Value::from("auto")],
            (None, Some(f)) => vec![Value::from(f * 0.5), Value::from(f * 1.5 + 0.125)],
            _ => vec![],
        },
        Value::String(s) => {
            let mut out: Vec<Value> = spellings
                .iter()
                .filter(|c| *c != s)
                .map(|c| Value::from(c.as_str()))
                .collect();
            out.push(Value::from(format!("{s}x")));
            out.push(Value::Bool(false));
            out.push(Value::from(4096));
            out
        }
        Value::Array(a) if !a.is_empty() => {
            let mut shorter = a.clone();
            shorter.pop();
            let mut changed = a.clone();
            changed[0] = variants(&a[0], spellings)
                .into_iter()
                .next()
                .unwrap_or(Value::Null);
            vec![Value::Array(shorter), Value::Array(changed)]
        }
        _ => vec![],
    }
}

fn set(root: &mut Value, path: &str, v: Value) {
    let mut node = root;
    for seg in path.split('.') {
        node = node.get_mut(seg).expect("a path of the value");
    }
    *node = v;
}

#[test]
fn every_setting_of_an_experiment_moves_its_hash() {
    let spellings = spellings();
    let mut moved = std::collections::BTreeSet::new();
    let mut kept = vec![];
    let mut all = std::collections::BTreeSet::new();
    for base in [maximal(), maximal_lora()] {
        let base_value = serde_json::to_value(&base).unwrap();
        let leaves = flatten(&base_value);
        assert!(
            leaves.len() > 60,
            "the maximal experiment has {} leaves",
            leaves.len()
        );
        for (path, leaf) in &leaves {
            all.insert(path.clone());
            // Every other value of the leaf that still reads as another experiment (a
            // setting of a method the base does not use reads as the same experiment).
            let changed = variants(leaf, &spellings).into_iter().filter_map(|v| {
                let mut x = base_value.clone();
                set(&mut x, path, v);
                serde_json::from_value::<Experiment>(x).ok()
            });
            for e in changed.filter(|e| *e != base) {
                if e.hash() == base.hash() {
                    kept.push(format!("{path}: {leaf} -> {:?} keeps the hash", e));
                } else {
                    moved.insert(path.clone());
                }
            }
        }
    }
    assert!(kept.is_empty(), "settings outside the identity: {kept:#?}");
    let never: Vec<_> = all.difference(&moved).collect();
    assert!(
        never.is_empty(),
        "settings no other value of which reads: {never:?}"
    );
}

#[test]
fn opt_in_settings_leave_the_identity_only_at_their_first_default() {
    // Version 1 is the serialised layout at the time the runs were stored: equal here for
    // the default, the maximal and a dense experiment. When the serde layout changes on
    // purpose, this test names the keys that moved and is updated with them; the hashes
    // (tests/run_hashes.rs) may not move.
    let dense = Experiment {
        prune: None,
        ..maximal()
    };
    let none = Experiment {
        recovery: RecoveryConfig::default(),
        ..maximal()
    };
    for e in [
        Experiment::default(),
        maximal(),
        maximal_lora(),
        dense,
        none,
    ] {
        assert_eq!(
            canonical_json(&e.identity()),
            canonical_json(&serde_json::to_value(&e).unwrap())
        );
    }
    // A run without recovery has no recovery key at all; a default one has no opt-ins.
    let d = Experiment::default().identity();
    assert!(d.get("recovery").is_none());
    for k in [
        "ppl_c4",
        "ppl_val",
        "ppl_ood",
        "ppl_protocol",
        "latency",
        "latency_iters",
    ] {
        assert!(
            d["eval"].get(k).is_none(),
            "eval.{k} in the default identity"
        );
    }
}

#[test]
fn stage_keys_follow_only_what_changes_their_output() {
    let base = maximal();
    // The evaluation does not change the pruned checkpoint.
    let mut other_eval = base.clone();
    other_eval.eval.limit = Some(7);
    assert_eq!(base.prune_hash(), other_eval.prune_hash());
    assert_ne!(base.hash(), other_eval.hash());
    // Recovery does not either; the prune settings do.
    let mut other_rec = base.clone();
    other_rec.recovery.lr = 5e-4;
    assert_eq!(base.prune_hash(), other_rec.prune_hash());
    let mut other_prune = base.clone();
    other_prune.prune.as_mut().unwrap().calib.nrows = 65;
    assert_ne!(base.prune_hash(), other_prune.prune_hash());
    assert_eq!(
        Experiment {
            prune: None,
            ..base
        }
        .prune_hash(),
        None
    );
}

#[test]
fn a_setting_of_another_method_is_not_part_of_the_run() {
    // A grid may set `lora_lr` in its base and cross recovery methods: the hierarchical
    // run reads as if it were not set, and hashes as such.
    let mut v = serde_json::to_value(maximal()).unwrap();
    v["recovery"]["lora_lr"] = Value::from(0.5);
    v["recovery"]["kd_lr"] = Value::from(0.25);
    let e: Experiment = serde_json::from_value(v).unwrap();
    assert_eq!(e.recovery.method.kd().unwrap().lr, 0.25);
    assert_eq!(
        serde_json::to_value(&e).unwrap()["recovery"]["lora_lr"],
        1e-4
    );
    let mut plain = maximal();
    if let Recovery::HierarchicalKd(k) = &mut plain.recovery.method {
        k.lr = 0.25;
    }
    assert_eq!(e.hash(), plain.hash());
}
