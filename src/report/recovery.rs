//! The recovery axis in the tables: which recovery a run had, the Recovery column of the
//! other layouts, and the recovery table laid out as the paper does: per pruning method,
//! the model without recovery ("w/o") and after each recovery method, with the recovery
//! time and the change in average accuracy.
//!
//! A run without recovery has no `recovery.*` parameters (the experiment serialises its
//! recovery only when the method is not `none`), so absence reads as method `none`.

use super::builder::{Builder, Entry};
use super::common::{
    dense_runs, eval_note, labels, level_groups, method_of, method_rank, slug, value_text,
};
use super::table::{Col, Table};
use super::{Convention, RunData};
use crate::distill::{Losses, RecoveryConfig, RecoveryMethod};
use crate::hashing::canonical_json;
use crate::names;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

/// Recovery methods in table order.
const ORDER: [RecoveryMethod; 4] = [
    RecoveryMethod::None,
    RecoveryMethod::Hierarchical,
    RecoveryMethod::HierarchicalKd,
    RecoveryMethod::Lora,
];

const LOSS: &str = "recovery.loss";

/// The recovery method of a run, as its serde name (`none` when it has no recovery).
pub(super) fn recovery_method(run: &RunData) -> String {
    run.recovery().method.name().to_string()
}

/// Position of a recovery method in table order; unknown names after the known ones.
pub(super) fn recovery_rank(method: &str) -> usize {
    ORDER
        .iter()
        .position(|m| m.name() == method)
        .unwrap_or(ORDER.len())
}

fn is_recovered(run: &RunData) -> bool {
    recovery_rank(&recovery_method(run)) > 0
}

/// "w/o" for no recovery, else the method's name.
pub(super) fn recovery_name(method: &str) -> String {
    if recovery_rank(method) == 0 {
        "w/o".into()
    } else {
        method.to_string()
    }
}

/// The recovery loss of a run as a label (`mse`, `mse+cosine`, `0.5*cosine`), from the
/// flattened weight table `recovery.loss.<kind>`; None without recovery.
pub(super) fn loss_label(run: &RunData) -> Option<String> {
    if let Some(v) = run.param(LOSS) {
        return Some(value_text(v));
    }
    let prefix = format!("{LOSS}.");
    let weights: serde_json::Map<String, Value> = run
        .params
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix(&prefix)?.to_string(), v.clone())))
        .collect();
    if weights.is_empty() {
        return None;
    }
    match serde_json::from_value::<Losses>(Value::Object(weights.clone())) {
        Ok(l) => Some(l.label()),
        // A loss this build does not know: its weights as written.
        Err(_) => Some(
            weights
                .iter()
                .map(|(k, w)| match w.as_f64() {
                    Some(1.0) => k.clone(),
                    _ => format!("{}*{k}", value_text(w)),
                })
                .collect::<Vec<_>>()
                .join("+"),
        ),
    }
}

/// The run's parameters with the loss table collapsed into one key, `recovery.loss` =
/// its label, so that "vary one key" sees a loss as one value.
/// Settings the run's recovery method does not read are left out (a LoRA run has no
/// layer loss, whatever its config says).
pub(super) fn collapsed_params(run: &RunData) -> BTreeMap<String, Value> {
    let prefix = format!("{LOSS}.");
    let unused: Vec<String> =
        serde_json::from_value::<RecoveryMethod>(Value::String(recovery_method(run)))
            .map(|m| {
                m.unused_keys()
                    .iter()
                    .map(|k| format!("recovery.{k}"))
                    .collect()
            })
            .unwrap_or_default();
    let mut out: BTreeMap<String, Value> = run
        .params
        .iter()
        .filter(|(k, _)| !k.starts_with(&prefix) && !unused.contains(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if let Some(l) = loss_label(run).filter(|_| !unused.iter().any(|k| k == LOSS)) {
        out.insert(LOSS.to_string(), Value::String(l));
    }
    // A recovered run without an opt-in key had its default (left out of the hash).
    if is_recovered(run) {
        for (k, v) in RecoveryConfig::opt_in_defaults() {
            let key = format!("recovery.{k}");
            if !unused.contains(&key) {
                out.entry(key).or_insert(v);
            }
        }
    }
    out
}

/// `["Recovery"]` when some run was recovered, else no key column.
pub(super) fn recovery_columns(runs: &[&RunData]) -> Vec<String> {
    if runs.iter().any(|r| is_recovered(r)) {
        vec!["Recovery".into()]
    } else {
        Vec::new()
    }
}

/// The Recovery cell of each run: "w/o", or the method plus the `recovery.*` settings
/// (method aside) whose values differ among the recovered runs, e.g.
/// `hierarchical (loss=mse+cosine)`.
pub(super) fn recovery_cells(runs: &[&RunData]) -> Vec<String> {
    let params: Vec<Option<BTreeMap<String, Value>>> = runs
        .iter()
        .map(|r| is_recovered(r).then(|| collapsed_params(r)))
        .collect();
    let keys: BTreeSet<&String> = params
        .iter()
        .flatten()
        .flat_map(|p| p.keys())
        .filter(|k| k.starts_with("recovery.") && *k != "recovery.method")
        .collect();
    let varying: Vec<&String> = keys
        .into_iter()
        .filter(|k| {
            // Among the runs whose method reads the key: a LoRA run has no layer loss.
            let vals: BTreeSet<String> = params
                .iter()
                .flatten()
                .filter_map(|p| p.get(*k).map(canonical_json))
                .collect();
            vals.len() > 1
        })
        .collect();
    runs.iter()
        .zip(&params)
        .map(|(r, p)| {
            let name = recovery_name(&recovery_method(r));
            let Some(p) = p else { return name };
            let extra: Vec<String> = varying
                .iter()
                .filter_map(|k| {
                    let v = value_text(p.get(*k)?);
                    Some(format!("{}={v}", k.trim_start_matches("recovery.")))
                })
                .collect();
            if extra.is_empty() {
                name
            } else {
                format!("{name} ({})", extra.join(", "))
            }
        })
        .collect()
}

/// One table per (model, evaluation setting, level) with a recovered run: the dense row,
/// then per pruning method with a recovered run its rows w/o, hierarchical,
/// hierarchical+kd, lora; the main tables' columns plus "Rec. s" (recovery seconds) and
/// "Δ Avg" (Avg minus the same method's w/o row).
pub fn recovery_tables(runs: &[RunData], conv: Convention) -> Vec<Table> {
    let dense = dense_runs(runs);
    let mut out = Vec::new();
    for g in level_groups(runs) {
        if !g.runs.iter().any(|r| is_recovered(r)) {
            continue;
        }
        let (ours, reference) = recovery_entries(&g.runs);
        let recovered: Vec<&RunData> = ours
            .iter()
            .map(|e| e.run)
            .filter(|r| is_recovered(r))
            .collect();
        let seconds: Vec<Option<f64>> = ours
            .iter()
            .map(|e| {
                e.run
                    .metric("", names::RUN_RECOVERY_SECONDS)
                    .map(|m| m.value)
            })
            .collect();
        let note = recovery_note(&recovered, g.runs.first().copied());

        let dense_run = dense.get(&(g.model.clone(), g.sig.clone())).copied();
        let b = Builder {
            conv,
            dense: dense_run,
            key_columns: vec!["Recovery".into()],
            ours,
            published: vec![],
        };
        let id = format!("recovery_{}_{}{}", slug(&g.model), g.level.slug(), g.suffix);
        let title = format!("Recovery: {}, {}", g.model, g.level.text());
        let mut t = b.build(id, title, &note);
        // `ours` rows follow the dense row.
        let skip = usize::from(dense_run.is_some());
        add_recovery_columns(&mut t, skip, &seconds, &reference);
        out.push(t);
    }
    out
}

/// The rows of one level group in table order: per pruning method (labelled as in the
/// main table) that has a recovered run, its w/o row then its recovered rows. With, per
/// row, the index (into the rows) of its group's w/o row, if it has one.
fn recovery_entries<'a>(runs: &[&'a RunData]) -> (Vec<Entry<'a>>, Vec<Option<usize>>) {
    // Pruning-method label (as in the main table) -> its rows.
    let mut groups: BTreeMap<(usize, String), Vec<Entry>> = BTreeMap::new();
    for ((label, rec), r) in labels(runs).into_iter().zip(recovery_cells(runs)).zip(runs) {
        groups
            .entry((method_rank(&method_of(r)), label.clone()))
            .or_default()
            .push(Entry {
                label,
                keys: vec![rec],
                run: r,
            });
    }
    groups.retain(|_, rows| rows.iter().any(|e| is_recovered(e.run)));
    let mut ours: Vec<Entry> = Vec::new();
    let mut reference: Vec<Option<usize>> = Vec::new();
    for mut rows in groups.into_values() {
        rows.sort_by_cached_key(|e| (recovery_rank(&recovery_method(e.run)), e.keys.clone()));
        let base = rows
            .iter()
            .position(|e| !is_recovered(e.run))
            .map(|i| ours.len() + i);
        reference.extend(rows.iter().map(|_| base));
        ours.extend(rows);
    }
    (ours, reference)
}

/// The recovery table's caption note: how to read it, what the recovered rows held equal,
/// the KD setting, whose hyperparameters these are, the extra columns and the evaluation.
fn recovery_note(recovered: &[&RunData], first: Option<&RunData>) -> String {
    let kinds: BTreeSet<String> = recovered.iter().map(|r| recovery_method(r)).collect();
    let note: Vec<String> = vec![
        "Per pruning method: the pruned model without recovery (w/o) and after each recovery method, from the same pruned checkpoint.".into(),
        held_equal(recovered),
        kd_note(recovered, &kinds),
        "Recovery hyperparameters are ours: the paper publishes none.".into(),
        "Rec. s: wall-clock seconds of the recovery stage; Δ Avg: Avg minus the same method's w/o row, in points.".into(),
        eval_note(first),
    ];
    note.into_iter()
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Append the two extra columns to a built recovery table: "Rec. s" from `seconds` and,
/// when the table has an Avg column, "Δ Avg" against each row's w/o row (`reference`).
/// `seconds` and `reference` are per row of `ours`, which follow `skip` leading rows.
fn add_recovery_columns(
    t: &mut Table,
    skip: usize,
    seconds: &[Option<f64>],
    reference: &[Option<usize>],
) {
    let avg_col = t.columns.iter().position(|c| *c == Col::Avg);
    let avgs: Vec<Option<f64>> = t
        .rows
        .iter()
        .map(|r| avg_col.and_then(|c| r.cells[c]))
        .collect();
    t.columns.push(Col::RecoverySeconds);
    if avg_col.is_some() {
        t.columns.push(Col::DeltaAvg);
    }
    for (i, row) in t.rows.iter_mut().enumerate() {
        let j = i.checked_sub(skip);
        row.cells
            .push(j.and_then(|j| seconds.get(j).copied().flatten()));
        if avg_col.is_some() {
            // Against the group's w/o row, itself excluded.
            let base = j
                .and_then(|j| reference.get(j).copied().flatten().filter(|&b| b != j))
                .map(|b| b + skip);
            let delta = match (avgs[i], base.and_then(|b| avgs[b])) {
                (Some(a), Some(w)) => Some(a - w),
                _ => None,
            };
            row.cells.push(delta);
        }
    }
}

/// What the recovered rows held equal: the token budget, the loss and the sequence length
/// (or that they differ, and how).
fn held_equal(recovered: &[&RunData]) -> String {
    let values = |get: &dyn Fn(&RunData) -> Option<String>| -> Vec<String> {
        let set: BTreeSet<String> = recovered.iter().filter_map(|r| get(r)).collect();
        let mut v: Vec<String> = set.into_iter().collect();
        // Numbers in numeric order.
        v.sort_by(|a, b| match (a.parse::<f64>(), b.parse::<f64>()) {
            (Ok(x), Ok(y)) => x.total_cmp(&y),
            _ => a.cmp(b),
        });
        v
    };
    let lora = recovered.iter().any(|r| recovery_method(r) == "lora");
    let mut equal = Vec::new();
    let mut differ = Vec::new();
    let mut add = |vals: Vec<String>, key: &str, same: String| match vals.len() {
        0 => {}
        1 => equal.push(same),
        _ => differ.push(format!("`{key}` ({})", vals.join(", "))),
    };
    let tokens = values(&|r: &RunData| Some(r.recovery().tokens.to_string()));
    let one = tokens.first().cloned().unwrap_or_default();
    add(
        tokens,
        "recovery.tokens",
        format!(
            "a budget of {one} training tokens (`recovery.tokens`: per trained layer for hierarchical{})",
            if lora { ", for the whole model for lora" } else { "" }
        ),
    );
    let losses = values(&loss_label);
    let one = losses.first().cloned().unwrap_or_default();
    add(
        losses,
        "recovery.loss",
        format!(
            "the layer loss {one} (`recovery.loss`{})",
            if lora {
                "; lora trains on the LM loss"
            } else {
                ""
            }
        ),
    );
    let seqlens = values(&|r: &RunData| Some(r.recovery().seqlen.to_string()));
    let one = seqlens.first().cloned().unwrap_or_default();
    add(
        seqlens,
        "recovery.seqlen",
        format!("sequences of {one} tokens (`recovery.seqlen`)"),
    );
    let mut s = String::new();
    if !equal.is_empty() {
        s.push_str(&format!(
            "Held equal across the recovered rows: {}.",
            equal.join(", ")
        ));
    }
    if !differ.is_empty() {
        if !s.is_empty() {
            s.push(' ');
        }
        s.push_str(&format!(
            "Not held equal (the recovered rows differ in them): {}.",
            differ.join(", ")
        ));
    }
    s
}

/// hierarchical+kd trains twice: say how long its KD stage is.
fn kd_note(recovered: &[&RunData], kinds: &BTreeSet<String>) -> String {
    let kd = RecoveryMethod::HierarchicalKd.name();
    if !kinds.contains(kd) {
        return String::new();
    }
    let budgets: BTreeSet<String> = recovered
        .iter()
        .filter(|r| recovery_method(r) == kd)
        .map(|r| match r.recovery().method.kd().and_then(|k| k.tokens) {
            Some(n) => format!("{n} tokens"),
            None => "the same budget".into(),
        })
        .collect();
    format!(
        "{kd} adds an end-to-end logit-KD stage of {} (`recovery.kd_tokens`).",
        budgets.into_iter().collect::<Vec<_>>().join(" / ")
    )
}
