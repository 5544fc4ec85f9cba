//! What the layouts share: what a run measured under a convention, its pruning level and
//! method label, the dense reference runs, and caption fragments.

use super::{Convention, RunData};
use crate::hashing::canonical_json;
use crate::names;
use crate::prune::Method;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

/// Accuracies (fractions) with standard errors, perplexities and item counts of one run.
#[derive(Debug, Clone, Default)]
pub(crate) struct Measured {
    pub acc: BTreeMap<String, (f64, Option<f64>)>,
    pub ppl: BTreeMap<String, f64>,
    /// How each perplexity was measured, e.g. "seqlen=2048, 4 windows".
    pub ppl_setting: BTreeMap<String, String>,
    pub n: BTreeMap<String, f64>,
    /// Batch-1 prefill and decode tokens/s, and the shape they were timed at.
    pub latency: Option<Latency>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Latency {
    pub prefill: f64,
    pub decode: f64,
    pub context: String,
}

impl Latency {
    /// Tokens/s of `kind` relative to `base`, when both were timed at the same shape.
    pub fn speedup(&self, base: &Latency, kind: super::table::Phase) -> Option<f64> {
        if self.context != base.context {
            return None;
        }
        let (a, b) = match kind {
            super::table::Phase::Prefill => (self.prefill, base.prefill),
            super::table::Phase::Decode => (self.decode, base.decode),
        };
        (b > 0.0).then(|| a / b)
    }
}

/// What the speed-up columns measured, from the metric's context (the protocol and its
/// sizes, see [`crate::eval::latency`]).
pub(crate) fn latency_caption(context: &str) -> String {
    if context.starts_with("protocol=sleb") {
        format!(
            " Prefill × / Decode ×: the dense model's time over this model's on the same machine, under SLEB's latency protocol (CoMe's latency.py; sizes as measured: {context}, where prefill=1xLxN is N forwards of a batch-1 prompt of L tokens without KV cache and generate=BxP+GxN is N generations of G tokens after B prompts of P tokens, KV-cached, the prompt's prefill included; mean over N after two untimed rounds, where SLEB runs one)."
        )
    } else {
        format!(
            " Prefill × / Decode ×: tokens/s at batch 1 ({context}; KV-cached decode, warm, median of repeats; the short protocol, not the paper's) over the dense model's on the same machine."
        )
    }
}

pub(crate) fn measure(run: &RunData, conv: Convention) -> Measured {
    let mut m = Measured::default();
    for t in names::ALL_TASKS {
        if let Some(x) = run.metric(t, conv.metric_for(t)) {
            m.acc.insert(t.to_string(), (x.value, x.stderr));
        }
        if let Some(x) = run.metric(t, names::N) {
            m.n.insert(t.to_string(), x.value);
        }
    }
    for (task, name, _) in names::PPL_CORPORA {
        if let Some(x) = run.metric(task, name) {
            m.ppl.insert(name.to_string(), x.value);
            let mut setting = x.context.clone();
            if let Some(n) = run.metric(task, names::N) {
                setting = format!("{setting}, {} windows", n.value);
            }
            m.ppl_setting.insert(name.to_string(), setting);
        }
    }
    let pre = run.metric("", names::RUN_PREFILL_TOKENS_PER_S);
    let dec = run.metric("", names::RUN_DECODE_TOKENS_PER_S);
    if let (Some(p), Some(d)) = (pre, dec) {
        m.latency = Some(Latency {
            prefill: p.value,
            decode: d.value,
            context: p.context.clone(),
        });
    }
    m
}

/// Mean accuracy in percent over `tasks` (all must be present) and its standard error
/// sqrt(sum se_i^2) / k in points (None if a stderr is missing).
pub(crate) fn average(m: &Measured, tasks: &[String]) -> (Option<f64>, Option<f64>) {
    if tasks.is_empty() {
        return (None, None);
    }
    let vals: Option<Vec<(f64, Option<f64>)>> =
        tasks.iter().map(|t| m.acc.get(t).copied()).collect();
    let Some(vals) = vals else {
        return (None, None);
    };
    let k = vals.len() as f64;
    let avg = 100.0 * vals.iter().map(|v| v.0).sum::<f64>() / k;
    let se: Option<f64> = vals
        .iter()
        .map(|v| v.1.map(|s| (100.0 * s).powi(2)))
        .sum::<Option<f64>>()
        .map(|s| s.sqrt() / k);
    (Some(avg), se)
}

/// Parameters that identify the evaluation (everything under `eval.` and `runtime.`).
pub(crate) fn eval_sig(run: &RunData) -> String {
    let m: BTreeMap<&String, &Value> = run
        .params
        .iter()
        .filter(|(k, _)| k.starts_with("eval.") || k.starts_with("runtime."))
        .collect();
    canonical_json(&serde_json::to_value(m).unwrap_or(Value::Null))
}

/// How much a pruned run removes: a sparsity or a target depth.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub(crate) enum Level {
    Sparsity(f64),
    Layers(i64),
}

impl Level {
    pub fn of(run: &RunData) -> Option<Level> {
        let p = run.prune()?;
        match p.target_layers {
            Some(n) => Some(Level::Layers(n as i64)),
            None => p.sparsity.map(Level::Sparsity),
        }
    }
    pub fn text(&self) -> String {
        match self {
            Level::Sparsity(s) => format!("sparsity {s}"),
            Level::Layers(n) => format!("{n} layers kept"),
        }
    }
    pub fn slug(&self) -> String {
        match self {
            Level::Sparsity(s) => format!("s{s}"),
            Level::Layers(n) => format!("L{n}"),
        }
    }
    pub(super) fn same(&self, o: &Level) -> bool {
        match (self, o) {
            (Level::Sparsity(a), Level::Sparsity(b)) => (a - b).abs() < 1e-9,
            (Level::Layers(a), Level::Layers(b)) => a == b,
            _ => false,
        }
    }
}

pub(crate) fn method_label(method: &str) -> String {
    match method {
        "come" => "CoMe",
        "come-p" => "CoMe-P",
        "shortgpt" => "ShortGPT",
        "sleb" => "SLEB",
        "reverse" => "Reverse",
        "magnitude" => "Magnitude",
        "magnitude+" => "Magnitude+",
        "taylor" => "Taylor",
        "taylor+" => "Taylor+",
        "laco" => "LaCo",
        "mka" => "MKA",
        "slicegpt" => "SliceGPT",
        "dense" => "Dense",
        other => other,
    }
    .to_string()
}

pub(super) fn method_rank(method: &str) -> usize {
    Method::all()
        .iter()
        .position(|m| m.name() == method)
        .unwrap_or(Method::all().len())
}

pub(crate) fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "none".into(),
        other => other.to_string(),
    }
}

pub(super) fn method_of(run: &RunData) -> String {
    run.prune()
        .and_then(|p| serde_json::to_value(p.method).ok())
        .map(|v| value_text(&v))
        .unwrap_or_else(|| "dense".into())
}

/// What a run's method reads of its prune settings (see [`crate::prune::PruneConfig::uses`]);
/// everything when the method is unknown to this build.
fn uses(run: &RunData, key: &str) -> bool {
    run.prune()
        .is_none_or(|p| p.uses(key.trim_start_matches("prune.")))
}

/// Row labels for pruned runs: the method, plus the `prune.*` keys (other than method,
/// sparsity, target) whose values differ among `runs` and which the run's method uses
/// ("ShortGPT", not "ShortGPT (merge=concat)"). Labels that would coincide name every
/// differing key, and as a last resort the run hash, so no two runs share one.
pub(crate) fn labels(runs: &[&RunData]) -> Vec<String> {
    let skip = ["prune.method", "prune.sparsity", "prune.target_layers"];
    let keys: BTreeSet<&String> = runs
        .iter()
        .flat_map(|r| r.params.keys())
        .filter(|k| k.starts_with("prune.") && !skip.contains(&k.as_str()))
        .collect();
    let varying: Vec<&String> = keys
        .into_iter()
        .filter(|k| {
            let vals: BTreeSet<String> = runs
                .iter()
                .map(|r| r.param(k).map(canonical_json).unwrap_or_default())
                .collect();
            vals.len() > 1
        })
        .collect();
    let label = |r: &RunData, relevant_only: bool| {
        let base = method_label(&method_of(r));
        let extra: Vec<String> = varying
            .iter()
            .filter(|k| !relevant_only || uses(r, k))
            .map(|k| {
                format!(
                    "{}={}",
                    k.trim_start_matches("prune."),
                    r.param(k).map(value_text).unwrap_or_default()
                )
            })
            .collect();
        if extra.is_empty() {
            base
        } else {
            format!("{base} ({})", extra.join(", "))
        }
    };
    let mut out: Vec<String> = runs.iter().map(|r| label(r, true)).collect();
    // Two pruned models at one level with one label differ only in keys their method
    // ignores: tell them apart by every varying key.
    let count = |v: &[String], l: &str| v.iter().filter(|x| *x == l).count();
    let prune_params = |r: &RunData| -> Vec<(String, String)> {
        r.params
            .iter()
            .filter(|(k, _)| k.starts_with("prune."))
            .map(|(k, v)| (k.clone(), canonical_json(v)))
            .collect()
    };
    let level = |r: &RunData| {
        r.prune()
            .map(|p| (p.sparsity.map(f64::to_bits), p.target_layers))
    };
    // Runs of one pruned model (e.g. with and without recovery) rightly share a label.
    let clash: Vec<bool> = (0..runs.len())
        .map(|i| {
            (0..runs.len()).any(|j| {
                j != i
                    && out[j] == out[i]
                    && level(runs[i]) == level(runs[j])
                    && prune_params(runs[i]) != prune_params(runs[j])
            })
        })
        .collect();
    for (i, r) in runs.iter().enumerate() {
        if clash[i] {
            out[i] = label(r, false);
        }
    }
    let full = out.clone();
    for (i, r) in runs.iter().enumerate() {
        if clash[i] && count(&full, &full[i]) > 1 {
            out[i] = format!("{} [{}]", full[i], &r.hash[..r.hash.len().min(8)]);
        }
    }
    out
}

pub(super) fn slug(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The latest dense run per (model, evaluation signature).
pub(super) fn dense_runs(runs: &[RunData]) -> BTreeMap<(String, String), &RunData> {
    let mut out: BTreeMap<(String, String), &RunData> = BTreeMap::new();
    for r in runs.iter().filter(|r| r.is_dense()) {
        let key = (r.model(), eval_sig(r));
        match out.get(&key) {
            Some(prev) if (prev.finished.as_str(), prev.id) > (r.finished.as_str(), r.id) => {}
            _ => {
                out.insert(key, r);
            }
        }
    }
    out
}
/// "BoolQ 100, PIQA 100" or "100 each" from the `n` metrics of our rows.
pub(super) fn items_text(ours: &[(String, Measured)], tasks: &[String]) -> String {
    let mut per: Vec<(String, String)> = Vec::new();
    for t in tasks {
        let ns: BTreeSet<i64> = ours
            .iter()
            .filter_map(|(_, m)| m.n.get(t))
            .map(|v| v.round() as i64)
            .collect();
        if ns.is_empty() {
            continue;
        }
        let text = ns.iter().map(i64::to_string).collect::<Vec<_>>().join("/");
        per.push((names::task_label(t).to_string(), text));
    }
    if per.is_empty() {
        return String::new();
    }
    let all_same = per.iter().all(|(_, n)| *n == per[0].1);
    if all_same && per.len() == tasks.len() && per.len() > 1 {
        format!("{} each", per[0].1)
    } else {
        per.iter()
            .map(|(t, n)| format!("{t} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}
/// "Evaluation: tasks limited to N documents" etc., from the eval params of a run.
pub(super) fn eval_note(run: Option<&RunData>) -> String {
    let Some(r) = run else { return String::new() };
    let e = &r.experiment.eval;
    if e.tasks.is_empty() {
        return String::new();
    }
    let mut parts = Vec::new();
    if let Some(l) = e.limit {
        parts.push(format!("first {l} documents per task"));
    }
    if let Some(f) = e.fraction {
        parts.push(format!("a {f} fraction of each task"));
    }
    if let Some(s) = e.seed {
        parts.push(format!("documents sampled with seed {s}"));
    }
    if parts.is_empty() {
        "Zero-shot, full task sets.".into()
    } else {
        format!("Zero-shot, {}.", parts.join(", "))
    }
}
pub(super) fn cmp_values(a: Option<&Value>, b: Option<&Value>) -> std::cmp::Ordering {
    match (a.and_then(Value::as_f64), b.and_then(Value::as_f64)) {
        (Some(x), Some(y)) => x.total_cmp(&y),
        _ => a.map(value_text).cmp(&b.map(value_text)),
    }
}

/// The pruned runs of one model, evaluation setting and level: what a main table shows.
pub(super) struct LevelGroup<'a> {
    pub model: String,
    /// [`eval_sig`] of every run in the group.
    pub sig: String,
    pub level: Level,
    /// In store order.
    pub runs: Vec<&'a RunData>,
    /// Table id suffix: `_e<hash>` when the model was evaluated in several settings.
    pub suffix: String,
}

/// Pruned runs grouped per (model, evaluation setting, level): by model and setting, then
/// by level ascending.
pub(super) fn level_groups(runs: &[RunData]) -> Vec<LevelGroup<'_>> {
    let mut groups: BTreeMap<(String, String), Vec<(Level, &RunData)>> = BTreeMap::new();
    for r in runs.iter().filter(|r| !r.is_dense()) {
        if let Some(level) = Level::of(r) {
            groups
                .entry((r.model(), eval_sig(r)))
                .or_default()
                .push((level, r));
        }
    }
    let evals_per_model = |model: &str| groups.keys().filter(|(m, _)| m == model).count();
    let mut out = Vec::new();
    for ((model, sig), members) in &groups {
        let mut levels: Vec<Level> = Vec::new();
        for (l, _) in members {
            if !levels.iter().any(|x| x.same(l)) {
                levels.push(*l);
            }
        }
        levels.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
        let suffix = if evals_per_model(model) > 1 {
            format!(
                "_e{}",
                &crate::hashing::hash_value(&Value::String(sig.clone()))[..6]
            )
        } else {
            String::new()
        };
        for level in levels {
            out.push(LevelGroup {
                model: model.clone(),
                sig: sig.clone(),
                level,
                runs: members
                    .iter()
                    .filter(|(l, _)| l.same(&level))
                    .map(|(_, r)| *r)
                    .collect(),
                suffix: suffix.clone(),
            });
        }
    }
    out
}

/// The task columns of a table in paper order (the seven, then every other registered
/// task, MMLU first), those for which `measured` holds, and the ones its Avg averages (the
/// seven among them).
pub(super) fn task_columns(measured: impl Fn(&str) -> bool) -> (Vec<String>, Vec<String>) {
    let others = (names::ALL_TASKS.iter().copied()).filter(|t| !names::SEVEN_TASKS.contains(t));
    let tasks: Vec<String> = names::SEVEN_TASKS
        .iter()
        .copied()
        .chain(others)
        .filter(|t| measured(t))
        .map(str::to_string)
        .collect();
    let avg_tasks = tasks
        .iter()
        .filter(|t| names::SEVEN_TASKS.contains(&t.as_str()))
        .cloned()
        .collect();
    (tasks, avg_tasks)
}
