//! Progressive recovery (`recovery.inputs = student`) against PyTorch, and the two modes
//! against each other: `scripts/golden/progressive_goldens.py` trains a 3-layer student of
//! a random 5-layer teacher (two consecutive merged layers) in both modes with
//! transformers' LlamaDecoderLayer and torch.optim.AdamW. Here the library's own stage
//! functions (teacher states, `train_units`, `progressive::train_in_order`) do the same.

mod common;

use come_repro::distill::config::{LayerInputs, LossKind, Losses, RecoveryConfig};
use come_repro::distill::data::DataSet;
use come_repro::distill::plan::Unit;
use come_repro::distill::progressive::train_in_order;
use come_repro::distill::record::DataRecord;
use come_repro::distill::resume::Partial;
use come_repro::distill::teacher::TeacherStates;
use come_repro::distill::workers::{train_units, Visits};
use come_repro::distill::Event;
use come_repro::model::{Layer, Linear, Model, ModelConfig};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use tch::{Device, Kind, Tensor};

struct Golden {
    json: Value,
    t: HashMap<String, Tensor>,
}

fn golden() -> Golden {
    let (json, t) = common::golden_pair("distill_progressive");
    Golden { json, t }
}

impl Golden {
    fn get(&self, n: &str) -> Tensor {
        self.t
            .get(n)
            .unwrap_or_else(|| panic!("golden has no tensor {n}"))
            .copy()
    }

    fn layer(&self, prefix: &str) -> Layer {
        let w = |n: &str| self.get(&format!("{prefix}.{n}"));
        let lin = |n: &str| Linear::new(w(&format!("{n}.weight")), None);
        Layer {
            input_norm: w("input_layernorm.weight"),
            q_proj: lin("self_attn.q_proj"),
            k_proj: lin("self_attn.k_proj"),
            v_proj: lin("self_attn.v_proj"),
            o_proj: lin("self_attn.o_proj"),
            q_norm: None,
            k_norm: None,
            post_norm: w("post_attention_layernorm.weight"),
            gate_proj: lin("mlp.gate_proj"),
            up_proj: lin("mlp.up_proj"),
            down_proj: lin("mlp.down_proj"),
        }
    }

    fn config(&self, layers: usize) -> ModelConfig {
        let c = &self.json["config"];
        come_repro::model::synthetic::tiny_config(serde_json::json!({
            "hidden_size": c["hidden_size"], "intermediate_size": c["intermediate_size"],
            "num_attention_heads": c["num_attention_heads"],
            "num_key_value_heads": c["num_key_value_heads"], "head_dim": c["head_dim"],
            "rms_norm_eps": c["rms_norm_eps"], "rope_theta": c["rope_theta"],
            "vocab_size": c["vocab_size"], "max_position_embeddings": c["max_position_embeddings"],
            "num_hidden_layers": layers,
        }))
        .unwrap()
    }

    /// A model of the golden's embedding and the named layers (the head is unused).
    fn model(&self, prefix: &str, layers: usize) -> Model {
        let config = self.config(layers);
        let h = config.hidden_size;
        let layers = (0..layers)
            .map(|i| self.layer(&format!("{prefix}.{i}")))
            .collect();
        let head = Tensor::zeros([config.vocab_size, h], (Kind::Float, Device::Cpu));
        Model::new(
            config,
            self.get("embed"),
            layers,
            Tensor::ones([h], (Kind::Float, Device::Cpu)),
            Some(head),
        )
    }

    fn ids(&self) -> Vec<Vec<i64>> {
        let ids = self.get("ids").to_kind(Kind::Int64);
        (0..ids.size()[0])
            .map(|i| Vec::<i64>::try_from(ids.get(i)).unwrap())
            .collect()
    }

    fn recovery(&self) -> RecoveryConfig {
        let h = &self.json["hyper"];
        let f = |k: &str| h[k].as_f64().unwrap();
        RecoveryConfig {
            loss: Losses(BTreeMap::from([(LossKind::Cosine, 1.0)])),
            micro_batch: h["micro_batch"].as_u64().unwrap() as usize,
            accum: h["accum"].as_u64().unwrap() as usize,
            lr: f("lr"),
            min_lr: f("min_lr"),
            warmup: f("warmup_frac"),
            betas: [
                h["betas"][0].as_f64().unwrap(),
                h["betas"][1].as_f64().unwrap(),
            ],
            eps: f("adam_eps"),
            weight_decay: f("weight_decay"),
            clip: None,
            val_tokens: 0,
            ..Default::default()
        }
    }
}

fn units() -> Vec<Unit> {
    vec![
        Unit {
            layer: 1,
            first: 1,
            last: 2,
        },
        Unit {
            layer: 2,
            first: 3,
            last: 4,
        },
    ]
}

/// Train `units` of the golden's student in `mode`; returns the trained student.
fn recover(g: &Golden, units: &[Unit], mode: LayerInputs) -> Model {
    let teacher = g.model("teacher", 5);
    let mut student = g.model("student", 3);
    let ids = g.ids();
    let seqlen = ids[0].len();
    let data = DataSet {
        train: ids.clone(),
        val: vec![],
        record: DataRecord {
            source: "golden".into(),
            sha256: String::new(),
            rows_available: 0,
            rows_excluded: 0,
            train_sequences: ids.len(),
            val_sequences: 0,
            seqlen,
            note: String::new(),
        },
    };
    let (states, _) =
        TeacherStates::prepare(&teacher, "golden", &data, &[1, 3, 5], None, |_, _| {}).unwrap();
    let cfg = RecoveryConfig {
        inputs: mode,
        ..g.recovery()
    };
    let steps = g.json["hyper"]["steps"].as_u64().unwrap() as usize;
    // The golden's micro-batches: sequence (s * accum + m) mod N.
    let visits = Visits {
        order: (0..steps * cfg.accum * cfg.micro_batch)
            .map(|k| k % ids.len())
            .collect(),
        val: vec![],
        steps,
    };
    let dir = tempfile::tempdir().unwrap();
    let mut done = Partial::open(&dir.path().join("out"), "key").unwrap();
    let mut on = |_: Event| {};
    match mode {
        LayerInputs::Teacher => {
            train_units(
                &mut student,
                units,
                &states,
                &visits,
                &cfg,
                &[Device::Cpu],
                &mut done,
                &mut on,
            )
            .unwrap();
        }
        LayerInputs::Student => {
            let seqs: Vec<&[i64]> = ids.iter().map(Vec::as_slice).collect();
            train_in_order(
                &mut student,
                units,
                &states,
                &seqs,
                &visits,
                &cfg,
                Device::Cpu,
                &mut done,
                &mut on,
            )
            .unwrap();
        }
    }
    student
}

fn max_diff(a: &Layer, b: &Layer) -> f64 {
    a.named_tensors()
        .iter()
        .zip(b.named_tensors())
        .map(|((_, x), (_, y))| (*x - y).abs().max().double_value(&[]))
        .fold(0.0, f64::max)
}

/// Final weights of `layer` within twice the golden's own float32-vs-float64 distance
/// (at least 1e-5), tensor by tensor.
fn assert_golden(g: &Golden, mode: &str, index: usize, layer: &Layer) {
    // The golden stores the first layer once: both modes train it alike.
    let stored = if index == 1 { "teacher" } else { mode };
    for (name, w) in layer.named_tensors() {
        let want = g.get(&format!("{stored}.final.{index}.{name}"));
        let diff = (w - &want).abs().max().double_value(&[]);
        let noise = g.json["f32_vs_f64_max_abs_diff_final"][format!("{mode}.layer{index}.{name}")]
            .as_f64()
            .unwrap();
        let tol = (2.0 * noise).max(1e-5);
        assert!(
            diff <= tol,
            "{mode} mode, layer {index} {name}: {diff:.3e} from PyTorch (tolerance {tol:.1e})"
        );
    }
}

#[test]
fn student_inputs_equal_pytorch_and_differ_from_teacher_inputs_in_the_second_layer() {
    let g = golden();
    let by_teacher = recover(&g, &units(), LayerInputs::Teacher);
    let by_student = recover(&g, &units(), LayerInputs::Student);
    for (mode, m) in [("teacher", &by_teacher), ("student", &by_student)] {
        assert_golden(&g, mode, 1, &m.layers[1]);
        assert_golden(&g, mode, 2, &m.layers[2]);
    }
    // The first merged layer's input is layer 0's output, the teacher's own boundary 1:
    // the same weights to the bit.
    assert_eq!(max_diff(&by_teacher.layers[1], &by_student.layers[1]), 0.0);
    // The second sees the recovered student's states: a different layer, by far more
    // than the tolerance above.
    let gap = max_diff(&by_teacher.layers[2], &by_student.layers[2]);
    assert!(gap > 1e-3, "modes differ by only {gap:.2e} in layer 2");
    // Untrained layers are untouched in both.
    assert_eq!(max_diff(&by_student.layers[0], &g.layer("student.0")), 0.0);
}

#[test]
fn one_merged_layer_trains_identically_in_both_modes() {
    let g = golden();
    let one = &units()[..1];
    let a = recover(&g, one, LayerInputs::Teacher);
    let b = recover(&g, one, LayerInputs::Student);
    assert_eq!(max_diff(&a.layers[1], &b.layers[1]), 0.0);
    assert!(max_diff(&a.layers[1], &g.layer("student.1")) > 1e-4);
    // And so does the second merged layer alone: the layers before it are untrained, so
    // the student's states entering it are its untrained layers' output, not the
    // teacher's boundary 3.
    let second = &units()[1..];
    let a = recover(&g, second, LayerInputs::Teacher);
    let b = recover(&g, second, LayerInputs::Student);
    assert!(max_diff(&a.layers[2], &b.layers[2]) > 1e-4);
}
