//! The accuracy items: a model scored on the device against the same model scored on this
//! machine's CPU when the bundle was made, request by request.

use super::bundle::{DocRef, Reference, TaskRef};
use super::{goal, Ctx};
use anyhow::{Context, Result};
use come_repro::eval::batching::BatchSize;
use come_repro::eval::harness::{evaluate_task, EvalOptions};
use come_repro::eval::loglik::ScoreOptions;
use come_repro::eval::perplexity::{perplexity, PplOptions};
use come_repro::eval::shift::Shift;
use come_repro::eval::tasks::TaskData;
use come_repro::model::synthetic::{hashed_model, Shape};
use come_repro::model::tokenizer::Tokenizer;
use come_repro::model::Model;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use tch::{Device, Kind};

/// The synthetic small model: SmolLM2-135M's shape, weights from [`hashed_model`] built on
/// the CPU in f32 (the same bits as the reference), then moved and cast.
pub fn smol_model(seed: u64, device: Device, kind: Kind) -> Result<Model> {
    let config = Shape::Smollm2_135m.config(None)?;
    Ok(hashed_model(&config, seed, Device::Cpu, Kind::Float).to(device, kind))
}

/// Score the first `docs` documents of every task; `ppl_text`: also the perplexity of
/// that text in windows of `ppl_seqlen`.
pub fn score(
    model: &Model,
    tok: &Tokenizer,
    tasks: &[TaskData],
    docs: usize,
    ppl: Option<(&str, usize)>,
) -> Result<Reference> {
    let mut opts = EvalOptions {
        score: ScoreOptions {
            max_length: model.config.max_position_embeddings.max(1) as usize,
            token_budget: BatchSize::Auto.initial_tokens(model.device),
        },
        add_special: true,
    };
    let mut out = BTreeMap::new();
    for task in tasks {
        let idx: Vec<usize> = (0..docs.min(task.docs.len())).collect();
        let r = evaluate_task(model, tok, task, &idx, &mut opts, |_, _| {})
            .with_context(|| format!("scoring {}", task.name))?;
        let docs = r
            .docs
            .iter()
            .map(|d| DocRef {
                doc_id: d.doc_id,
                loglik: d.loglik.clone(),
            })
            .collect();
        let metrics = r
            .metrics
            .iter()
            .map(|(k, v)| (k.clone(), v.value))
            .collect();
        out.insert(task.name.clone(), TaskRef { docs, metrics });
    }
    let ppl = match ppl {
        Some((text, seqlen)) => {
            let ids = tok.encode(text, true)?;
            Some(
                perplexity(
                    model,
                    &ids,
                    seqlen,
                    PplOptions {
                        batch_size: 4,
                        ..Default::default()
                    },
                    |_, _| {},
                )?
                .ppl,
            )
        }
        None => None,
    };
    Ok(Reference { tasks: out, ppl })
}

/// How `got` differs from `want`, request by request: the largest and mean |Δ
/// log-likelihood|, the documents whose prediction changed, and every metric side by side.
pub fn compare(tasks: &[TaskData], want: &Reference, got: &Reference) -> Result<Value> {
    let mut total = Shift::default();
    let mut per_task = serde_json::Map::new();
    for (name, w) in &want.tasks {
        let g = got
            .tasks
            .get(name)
            .with_context(|| format!("task {name} was not scored"))?;
        let data = tasks
            .iter()
            .find(|t| &t.name == name)
            .with_context(|| format!("task {name} is not in the bundle"))?;
        let mut t = Shift::default();
        for (wd, gd) in w.docs.iter().zip(&g.docs) {
            let doc = data
                .docs
                .iter()
                .find(|d| d.doc_id == wd.doc_id)
                .with_context(|| format!("{name}: document {} is not in the bundle", wd.doc_id))?;
            t.add(doc, &wd.loglik, &gd.loglik);
        }
        total.merge(&t);
        let metrics: BTreeMap<&String, Value> = w
            .metrics
            .iter()
            .map(|(k, v)| (k, json!({ "reference": v, "device": g.metrics.get(k) })))
            .collect();
        per_task.insert(
            name.clone(),
            json!({ "docs": w.docs.len().min(g.docs.len()), "max_abs_dloglik": t.max_abs_loglik,
                    "changed_predictions": t.changed_docs, "metrics": metrics }),
        );
    }
    Ok(json!({
        "requests": total.requests,
        "max_abs_dloglik": total.max_abs_loglik,
        "mean_abs_dloglik": total.mean_abs_loglik,
        "changed_predictions": total.changed_docs,
        "tasks": per_task,
    }))
}

/// Documents per task on the device: all the reference has, or a tenth in a quick run.
fn docs_for(ctx: &Ctx) -> usize {
    let n = ctx.bundle.info.docs_per_task;
    if ctx.quick {
        (n / 10).max(5)
    } else {
        n
    }
}

/// The reference cut to the first `docs` documents of each task.
fn first_docs(r: &Reference, docs: usize) -> Reference {
    Reference {
        tasks: r
            .tasks
            .iter()
            .map(|(k, t)| {
                (
                    k.clone(),
                    TaskRef {
                        docs: t.docs.iter().take(docs).cloned().collect(),
                        metrics: if docs >= t.docs.len() {
                            t.metrics.clone()
                        } else {
                            BTreeMap::new()
                        },
                    },
                )
            })
            .collect(),
        ppl: r.ppl,
    }
}

/// The synthetic SmolLM2-shape model in `kind` on the device vs its f32 CPU reference:
/// f32 must agree within 1e-4 nats per request with no prediction changed; bf16 is
/// reported as a shift.
pub fn smol(ctx: &Ctx, kind: Kind) -> Result<Value> {
    let info = &ctx.bundle.info;
    let model = smol_model(info.synthetic_seed, ctx.device, kind)?;
    let tok = ctx.bundle.tokenizer()?;
    let docs = docs_for(ctx);
    let t0 = std::time::Instant::now();
    let (got, peak) = ctx.peak_device(|| score(&model, &tok, &ctx.bundle.tasks, docs, None));
    let got = got?;
    ctx.sync();
    let seconds = t0.elapsed().as_secs_f64();
    let want = first_docs(
        &ctx.bundle.read_reference(super::bundle::SMOL_REFERENCE)?,
        docs,
    );
    let mut v = compare(&ctx.bundle.tasks, &want, &got)?;
    v["dtype"] = json!(come_repro::runtime::dtype_name(kind));
    v["docs_per_task"] = json!(docs);
    v["scoring_seconds"] = json!(seconds);
    v["peak_device_mib"] = json!(peak);
    if kind == Kind::Float {
        let (max, changed) = (
            v["max_abs_dloglik"].as_f64(),
            v["changed_predictions"].as_f64(),
        );
        v["goals"] = json!({
            "max_abs_dloglik": goal(max.unwrap_or(f64::INFINITY), 1e-4),
            "changed_predictions": goal(changed.unwrap_or(f64::INFINITY), 0.0),
        });
    }
    Ok(v)
}

/// stories260K (real weights, shipped) on the device in f32 vs its CPU results: the same
/// predictions, so every accuracy, and the same perplexity within 1e-4 relative.
pub fn stories(ctx: &Ctx) -> Result<Value> {
    let dir = ctx.bundle.import_stories(&ctx.scratch)?;
    let model = come_repro::model::load::load_model(
        &dir,
        come_repro::model::load::LoadOptions {
            device: ctx.device,
            dtype: Kind::Float,
        },
    )?;
    let tok = Tokenizer::from_dir(&dir)?;
    let docs = docs_for(ctx);
    let text = ctx.bundle.wikitext()?;
    let got = score(
        &model,
        &tok,
        &ctx.bundle.tasks,
        docs,
        Some((&text, super::bundle::STORIES_PPL_SEQLEN)),
    )?;
    let want = first_docs(
        &ctx.bundle
            .read_reference(super::bundle::STORIES_REFERENCE)?,
        docs,
    );
    let mut v = compare(&ctx.bundle.tasks, &want, &got)?;
    let (wp, gp) = (want.ppl.unwrap_or(f64::NAN), got.ppl.unwrap_or(f64::NAN));
    let rel = ((gp - wp) / wp).abs();
    v["ppl"] = json!({ "reference": wp, "device": gp, "relative_difference": rel });
    let changed = v["changed_predictions"].as_f64().unwrap_or(f64::INFINITY);
    v["goals"] = json!({
        "changed_predictions": goal(changed, 0.0),
        "ppl_relative_difference": goal(if rel.is_nan() { f64::INFINITY } else { rel }, 1e-4),
    });
    Ok(v)
}
