//! The scale items, on a model of LLaMA-2-7B's shape (vocabulary widened to the SmolLM2
//! tokenizer's 49152, so the seven tasks can be scored) with weights from
//! `hashed_model`: eval throughput, CoMe's pruning, layer distillation, LoRA, latency.
//! `--quick` keeps the structure and shrinks every size (a CPU proof, not a measurement).

use super::Ctx;
use crate::cli::bench_prune::{synthetic_prune, SyntheticPrune};
use anyhow::{bail, Context, Result};
use come_repro::distill::layer::{train_layer, LayerJob};
use come_repro::distill::plan::Unit;
use come_repro::distill::record::DataRecord;
use come_repro::distill::teacher::TeacherStates;
use come_repro::distill::{data::DataSet, RecoveryConfig, RecoveryMethod};
use come_repro::eval::batching::BatchSize;
use come_repro::eval::harness::{evaluate_task, EvalOptions};
use come_repro::eval::latency::{measure, LatencySpec, Protocol};
use come_repro::eval::loglik::ScoreOptions;
use come_repro::memory::peak_rss_mib;
use come_repro::model::forward::{layer_forward, AttnMask, Context as FwdContext, NoTap};
use come_repro::model::load::LoadOptions;
use come_repro::model::synthetic::{hashed_model, tiny_config, Shape};
use come_repro::model::{Model, ModelConfig};
use come_repro::prune::PruneReport;
use come_repro::rng::SplitMix64;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Instant;
use tch::{Kind, Tensor};

/// H200 dense bf16 peak (NVIDIA's figure, without sparsity), for model FLOP utilisation.
const H200_BF16_FLOPS: f64 = 790e12;
/// The SmolLM2 tokenizer's vocabulary.
const VOCAB: i64 = 49152;

/// Models later items reuse: the dense 7B shape and its pruned version.
#[derive(Default)]
pub struct BigModels {
    dense: Option<Model>,
    pruned: Option<(Model, PruneReport)>,
}

/// Every size of the scale items.
struct Sizes {
    config: ModelConfig,
    target: usize,
    calib: (i64, i64),
    /// Sequences, sequence length, optimiser steps of the training items.
    train: (usize, usize, usize),
    prefill: usize,
    /// Batch, prompt, new tokens.
    generate: (usize, usize, usize),
    repeats: usize,
}

fn sizes(quick: bool) -> Result<Sizes> {
    if quick {
        let config = tiny_config(json!({
            "hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 8,
            "num_attention_heads": 8, "num_key_value_heads": 8, "vocab_size": VOCAB,
            "rms_norm_eps": 1e-5, "max_position_embeddings": 4096,
        }))?;
        return Ok(Sizes {
            config,
            target: 6,
            calib: (4, 256),
            train: (4, 256, 4),
            prefill: 256,
            generate: (4, 16, 16),
            repeats: 1,
        });
    }
    Ok(Sizes {
        config: Shape::Llama2_7b.config_with(None, json!({ "vocab_size": VOCAB }))?,
        // The paper's 7B setting: 32 -> 22 layers; its calibration: 18 windows of 2048.
        target: 22,
        calib: (18, 2048),
        train: (8, 2048, 16),
        prefill: 2048,
        generate: (64, 64, 128),
        repeats: 3,
    })
}

fn mib(bytes: i64) -> f64 {
    bytes as f64 / (1u64 << 20) as f64
}

fn dense(ctx: &mut Ctx, s: &Sizes) -> Result<(f64, bool)> {
    if ctx.big.dense.is_some() {
        return Ok((0.0, true));
    }
    let t0 = Instant::now();
    let m = hashed_model(&s.config, 0, ctx.device, Kind::BFloat16);
    ctx.sync();
    ctx.big.dense = Some(m);
    Ok((t0.elapsed().as_secs_f64(), false))
}

/// Eval throughput in bf16 on the bundle's documents of the seven tasks, batch budget
/// `auto` (it backs off on out-of-memory and keeps what fit).
pub fn eval(ctx: &mut Ctx) -> Result<Value> {
    let s = sizes(ctx.quick)?;
    let (build_s, _) = dense(ctx, &s)?;
    let model = ctx.big.dense.as_ref().context("no dense model")?;
    let tok = ctx.bundle.tokenizer()?;
    let docs = if ctx.quick {
        10
    } else {
        ctx.bundle.info.docs_per_task
    };
    let start = BatchSize::Auto.initial_tokens(ctx.device);
    let mut opts = EvalOptions {
        score: ScoreOptions {
            max_length: model.config.max_position_embeddings as usize,
            token_budget: start,
        },
        add_special: true,
    };
    let t0 = Instant::now();
    let (r, peak) = ctx.peak_device(|| -> Result<_> {
        let mut forwarded = 0usize;
        let mut head = 0usize;
        for task in &ctx.bundle.tasks {
            let idx: Vec<usize> = (0..docs.min(task.docs.len())).collect();
            let r = evaluate_task(model, &tok, task, &idx, &mut opts, |_, _| {})?;
            forwarded += r.profile.forwarded_tokens;
            head += r.profile.head_positions;
        }
        Ok((forwarded, head))
    });
    let (forwarded, head) = r?;
    ctx.sync();
    let seconds = t0.elapsed().as_secs_f64();
    let c = &model.config;
    let per_layer = c.params_per_layer() as f64;
    // Matrix products only: 2 FLOPs per weight per token (attention scores excluded).
    let flops = 2.0 * per_layer * c.num_hidden_layers as f64 * forwarded as f64
        + 2.0 * (c.vocab_size * c.hidden_size) as f64 * head as f64;
    Ok(json!({
        "params_b": model.num_params() as f64 / 1e9,
        "model_build_seconds": build_s,
        "docs_per_task": docs,
        "tokens_forwarded": forwarded,
        "head_positions": head,
        "seconds": seconds,
        "tokens_per_s": forwarded as f64 / seconds,
        "tflops_per_s": flops / seconds / 1e12,
        "mfu_vs_h200_bf16_peak": flops / seconds / H200_BF16_FLOPS,
        "token_budget_start": start,
        "token_budget_settled": opts.score.token_budget,
        "peak_device_mib": peak,
    }))
}

/// CoMe 32 -> 22 on the 7B shape in bf16, the paper's calibration size.
pub fn prune(ctx: &mut Ctx) -> Result<Value> {
    let s = sizes(ctx.quick)?;
    let opts = LoadOptions {
        device: ctx.device,
        dtype: Kind::BFloat16,
    };
    let (r, peak) =
        ctx.peak_device(|| synthetic_prune(&s.config, opts, s.calib.0, s.calib.1, s.target));
    let SyntheticPrune {
        model,
        report,
        build_s,
        prune_s,
        prune_peak_rss_mib,
        ..
    } = r?;
    let rounds: Vec<Value> = report
        .steps
        .iter()
        .map(|st| json!({ "action": st.action, "seconds": st.seconds }))
        .collect();
    let in_rounds: f64 = report.steps.iter().map(|st| st.seconds).sum();
    let v = json!({
        "layers": [s.config.num_hidden_layers, report.correspondence.len()],
        "calibration": [s.calib.0, s.calib.1],
        "model_build_seconds": build_s,
        "first_pass_seconds": prune_s - in_rounds,
        "rounds": rounds,
        "prune_seconds": prune_s,
        "layer_passes": report.layer_passes,
        "state_on_disk": report.state_on_disk,
        "peak_host_rss_mib": peak_rss_mib(),
        "prune_peak_host_rss_mib": prune_peak_rss_mib,
        "peak_device_mib": peak,
        "correspondence": report.correspondence,
        "goals": if ctx.quick { json!({}) } else { json!({ "prune_seconds": super::goal(prune_s, 120.0) }) },
    });
    ctx.big.pruned = Some((model, report));
    Ok(v)
}

/// Seeded random ids: `n` sequences of `len`.
fn random_ids(n: usize, len: usize, seed: u64) -> Vec<Vec<i64>> {
    let mut r = SplitMix64::new(seed);
    (0..n)
        .map(|_| (0..len).map(|_| r.below(VOCAB as u64) as i64).collect())
        .collect()
}

fn training_config(method: RecoveryMethod, seqlen: usize, steps: usize) -> RecoveryConfig {
    RecoveryConfig {
        method: come_repro::distill::Recovery::of(method),
        tokens: steps * seqlen,
        seqlen,
        val_tokens: 0,
        ..Default::default()
    }
}

/// The teacher's hidden states entering layers `boundaries` (f32, on the device).
fn teacher_states(teacher: &Model, ids: &Tensor, boundaries: &[usize]) -> Result<TeacherStates> {
    let _g = tch::no_grad_guard();
    let last = *boundaries.iter().max().context("no boundary")?;
    let ctx = teacher.context(ids, None, None, 0)?;
    let mut h = teacher.embed_tokens(ids)?;
    let mut out = BTreeMap::new();
    for l in 0..=last {
        if boundaries.contains(&l) {
            out.insert(l, h.to_kind(Kind::Float));
        }
        if l < teacher.n_layers() && l < last {
            h = layer_forward(
                &teacher.config,
                &teacher.layers[l],
                l,
                &h,
                &ctx,
                &mut NoTap,
                None,
            );
        }
    }
    Ok(TeacherStates::in_memory(out)?)
}

/// Hierarchical distillation of the first merged layer of the pruned student: fed the
/// teacher's state entering its first original layer, trained towards the state leaving
/// its last, f32 master weights under autocast on CUDA, a fixed number of steps.
pub fn distill(ctx: &mut Ctx) -> Result<Value> {
    let s = sizes(ctx.quick)?;
    dense(ctx, &s)?;
    let (student, report) = ctx
        .big
        .pruned
        .as_ref()
        .context("needs the pruned student of prune-7b, which did not run or failed")?;
    let teacher = ctx.big.dense.as_ref().context("no dense model")?;
    let (layer, originals) = report
        .correspondence
        .iter()
        .enumerate()
        .find(|(_, o)| o.len() > 1)
        .context("the pruned student has no merged layer")?;
    let unit = Unit {
        layer,
        first: originals[0],
        last: *originals.last().unwrap_or(&originals[0]),
    };
    let (n, seqlen, steps) = s.train;
    let ids: Vec<i64> = random_ids(n, seqlen, 2).concat();
    let ids = Tensor::from_slice(&ids)
        .view([n as i64, seqlen as i64])
        .to_device(ctx.device);
    let states = teacher_states(
        teacher,
        &ids,
        &[unit.input_boundary(), unit.target_boundary()],
    )?;
    let rc = training_config(RecoveryMethod::Hierarchical, seqlen, steps);
    let base = student.context(&ids.narrow(0, 0, 1), None, None, 0)?;
    let lctx = FwdContext {
        cos: base.cos.to_kind(Kind::Float),
        sin: base.sin.to_kind(Kind::Float),
        mask: AttnMask::Causal,
        valid: None,
        unpadded: None,
    };
    let order = come_repro::distill::data::visit_order(n, steps * rc.accum * rc.micro_batch, 0);
    let trained = student.layers[layer].map_tensors(&|t| t.to_kind(Kind::Float).copy());
    let job = LayerJob {
        config: &student.config,
        ctx: &lctx,
        unit,
        states: &states,
        head: None,
        rc: &rc,
        order: &order,
        val: &[],
        device: ctx.device,
        autocast: ctx.device.is_cuda(),
    };
    let t0 = Instant::now();
    let (out, peak) = ctx.peak_device(|| train_layer(&job, &trained, steps, &mut |_, _| Ok(())));
    let out = out?;
    ctx.sync();
    let seconds = t0.elapsed().as_secs_f64();
    Ok(json!({
        "unit": unit.label(),
        "steps": steps,
        "seqlen": seqlen,
        "seconds": seconds,
        "tokens_per_s": (steps * seqlen) as f64 / seconds,
        "loss_first_last": [out.train_loss.first(), out.train_loss.last()],
        "peak_device_mib": peak,
        "layer_params_m": trained.named_tensors().iter().map(|(_, t)| t.numel()).sum::<usize>() as f64 / 1e6,
    }))
}

/// LoRA (rank 8 on all seven projections) on the whole pruned student in f32, a fixed
/// number of steps, next-token loss.
pub fn lora(ctx: &mut Ctx) -> Result<Value> {
    let s = sizes(ctx.quick)?;
    let (pruned, _) = ctx
        .big
        .pruned
        .as_ref()
        .context("needs the pruned student of prune-7b, which did not run or failed")?;
    let mut student = pruned.to(ctx.device, Kind::Float);
    let (n, seqlen, steps) = s.train;
    let data = DataSet {
        train: random_ids(n, seqlen, 3),
        val: vec![],
        record: DataRecord {
            source: "uniform random token ids".into(),
            sha256: String::new(),
            rows_available: n,
            rows_excluded: 0,
            train_sequences: n,
            val_sequences: 0,
            seqlen,
            note: "gpu-check: throughput only".into(),
        },
    };
    let cfg = training_config(RecoveryMethod::Lora, seqlen, steps);
    let partial_dir = ctx.scratch.join("lora");
    let mut done = come_repro::distill::resume::Partial::open(&partial_dir, "gpu-check")?;
    let mut sink = |_: come_repro::distill::Event| {};
    let t0 = Instant::now();
    let (rec, peak) = ctx.peak_device(|| {
        come_repro::distill::lora::train_lora(&mut student, &data, &cfg, &mut done, &mut sink)
    });
    let rec = rec?;
    ctx.sync();
    let seconds = t0.elapsed().as_secs_f64();
    drop(student);
    let _ = std::fs::remove_dir_all(ctx.scratch.join("lora.partial"));
    Ok(json!({
        "steps": steps,
        "seqlen": seqlen,
        "seconds": seconds,
        "tokens_per_s": (steps * seqlen) as f64 / seconds,
        "loss_first_last": [rec.train_loss.first(), rec.train_loss.last()],
        "peak_device_mib": peak,
        "student_params_b": pruned.num_params() as f64 / 1e9,
        "student_f32_mib": mib(pruned.num_params() * 4),
    }))
}

/// Prefill at batch 1 and generation at batch 64 (SLEB's protocol, as CoMe reports),
/// dense vs pruned, with the speed-ups.
pub fn latency(ctx: &mut Ctx) -> Result<Value> {
    let s = sizes(ctx.quick)?;
    dense(ctx, &s)?;
    let dense_m = ctx.big.dense.as_ref().context("no dense model")?;
    let Some((pruned, _)) = ctx.big.pruned.as_ref() else {
        bail!("needs the pruned model of prune-7b, which did not run or failed");
    };
    let (b, p, g) = s.generate;
    // SLEB's protocol at its shapes; the iterations scaled to the check's time.
    let spec = LatencySpec {
        protocol: Protocol::Sleb,
        prefill_len: s.prefill,
        prefill_iters: s.repeats,
        gen_batch: b,
        gen_prompt: p,
        gen_new: g,
        gen_iters: s.repeats,
    };
    let mut rows = vec![];
    for (name, m) in [("dense", dense_m), ("pruned", pruned)] {
        let (r, peak) = ctx.peak_device(|| measure(m, spec));
        rows.push((name, m.n_layers(), r?, peak));
    }
    let (pf0, g0) = (rows[0].2.prefill_s, rows[0].2.decode_s);
    let table: Vec<Value> = rows
        .iter()
        .map(|(name, layers, t, peak)| {
            json!({
                "model": name, "layers": layers,
                "prefill_seconds": t.prefill_s, "prefill_tokens_per_s": t.prefill_tokens_per_s(),
                "generate_seconds": t.decode_s, "generate_tokens_per_s": t.decode_tokens_per_s(),
                "prefill_speedup": pf0 / t.prefill_s, "generate_speedup": g0 / t.decode_s,
                "peak_device_mib": peak,
            })
        })
        .collect();
    Ok(json!({
        "prefill": { "batch": 1, "prompt": s.prefill },
        "generate": { "batch": b, "prompt": p, "new_tokens": g },
        "repeats": s.repeats,
        "context": spec.context(),
        "models": table,
    }))
}
