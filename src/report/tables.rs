//! The layouts: main tables (one per model, evaluation setting and level), the methods x
//! sparsity sweep, one-key ablations and the published rows alone. The table type and its
//! renderers live in [`super::table`], what the layouts share in [`super::common`].

use super::builder::{Builder, Entry};
use super::common::{
    average, cmp_values, dense_runs, eval_note, eval_sig, items_text, labels, level_groups,
    measure, method_label, method_of, method_rank, slug, value_text, Level, Measured,
};
use super::paper::{same_model, PublishedRow};
use super::recovery::{
    collapsed_params, recovery_cells, recovery_columns, recovery_method, recovery_name,
    recovery_rank,
};
use super::{Convention, RunData};
use crate::hashing::canonical_json;
use crate::names::{self, SEVEN_TASKS};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

pub use super::table::{Col, Row, Table};

/// One table per (model, evaluation setting, sparsity): the dense row, every pruned run,
/// then the published rows of the same model and sparsity. When some run of a table was
/// recovered, a Recovery column tells its rows apart ("w/o" or the recovery method).
pub fn main_tables(
    runs: &[RunData],
    published: &[PublishedRow],
    aliases: &BTreeMap<String, String>,
    conv: Convention,
) -> Vec<Table> {
    let dense = dense_runs(runs);
    let mut out = Vec::new();
    for g in level_groups(runs) {
        let paper_model = aliases
            .get(&g.model)
            .cloned()
            .unwrap_or_else(|| g.model.clone());
        let (key_columns, ours) = keyed_entries(&g.runs, labels(&g.runs));
        let pubs: Vec<&PublishedRow> = published
            .iter()
            .filter(|p| same_model(&p.model, &paper_model))
            .filter(|p| match (g.level, p.sparsity) {
                _ if p.is_dense() => true,
                (Level::Sparsity(s), Some(ps)) => (s - ps).abs() < 1e-9,
                _ => false,
            })
            .collect();
        let id = format!("main_{}_{}{}", slug(&g.model), g.level.slug(), g.suffix);
        let title = format!("{}, {}", g.model, g.level.text());
        let b = Builder {
            conv,
            dense: dense.get(&(g.model.clone(), g.sig.clone())).copied(),
            key_columns,
            ours,
            published: pubs,
        };
        out.push(b.build(id, title, &eval_note(g.runs.first().copied())));
    }
    out
}

/// Our rows of `runs` (labelled `labels`) in table order: by method, label, then recovery
/// ("w/o" first). With the key columns they need: "Recovery" when some run was recovered.
fn keyed_entries<'a>(runs: &[&'a RunData], labels: Vec<String>) -> (Vec<String>, Vec<Entry<'a>>) {
    let key_columns = recovery_columns(runs);
    let mut ours: Vec<Entry> = labels
        .into_iter()
        .zip(recovery_cells(runs))
        .zip(runs)
        .map(|((label, rec), r)| Entry {
            label,
            keys: if key_columns.is_empty() {
                Vec::new()
            } else {
                vec![rec]
            },
            run: r,
        })
        .collect();
    ours.sort_by_cached_key(|e| {
        (
            method_rank(&method_of(e.run)),
            e.label.clone(),
            recovery_rank(&recovery_method(e.run)),
            e.keys.clone(),
        )
    });
    (key_columns, ours)
}

/// One table per model whose pruned runs span several sparsities: a row per method (and
/// variant), its WikiText-2 perplexity at every sparsity and, where the seven tasks were
/// run, its average and retention: the "methods x sparsity" comparison in one place.
pub fn sweep_tables(runs: &[RunData], conv: Convention) -> Vec<Table> {
    let dense = dense_runs(runs);
    let mut by_model: BTreeMap<String, Vec<&RunData>> = BTreeMap::new();
    for r in runs.iter().filter(|r| !r.is_dense()) {
        if let Some(Level::Sparsity(_)) = Level::of(r) {
            by_model.entry(r.model()).or_default().push(r);
        }
    }
    by_model
        .into_iter()
        .filter_map(|(model, pruned)| sweep_table(&model, pruned, &dense, conv))
        .collect()
}

/// Dense runs by (model, evaluation setting), as [`dense_runs`] gives them.
type DenseRuns<'a> = BTreeMap<(String, String), &'a RunData>;

/// A sweep row's key, in row order: (method rank, label, recovery rank, recovery cell).
type SweepKey = (usize, String, usize, String);

/// What the pruned runs of one model measured at the sweep's sparsities.
struct SweepCells {
    /// Per row, per level: (Wiki2 PPL, Avg, Ret.%); later runs override earlier ones.
    cells: BTreeMap<SweepKey, Vec<[Option<f64>; 3]>>,
    /// How the Wiki2 perplexities were measured, for the caption.
    ppl_settings: BTreeSet<String>,
    /// Every run with an Avg (its label and measurements), for the items per task.
    measured_avg: Vec<(String, Measured)>,
}

/// The sweep table of one model's pruned sparsity runs, or `None` when they cover fewer
/// than two sparsities.
fn sweep_table(
    model: &str,
    mut pruned: Vec<&RunData>,
    dense: &DenseRuns,
    conv: Convention,
) -> Option<Table> {
    let seven: Vec<String> = SEVEN_TASKS.iter().map(|t| t.to_string()).collect();
    pruned.sort_by(|a, b| (a.finished.as_str(), a.id).cmp(&(b.finished.as_str(), b.id)));
    let levels = sweep_levels(&pruned)?;
    let key_columns = recovery_columns(&pruned);
    let measured = sweep_cells(model, &pruned, &levels, dense, conv, &seven);
    let avg_levels: Vec<usize> = (0..levels.len())
        .filter(|&i| measured.cells.values().any(|v| v[i][1].is_some()))
        .collect();
    let columns = sweep_columns(&levels, &avg_levels);

    let mut rows = Vec::new();
    rows.extend(dense_sweep_row(
        model,
        dense,
        conv,
        &seven,
        levels.len(),
        &avg_levels,
        key_columns.len(),
    ));
    for ((_, label, _, rec), per) in &measured.cells {
        let mut c: Vec<Option<f64>> = per.iter().map(|x| x[0]).collect();
        for &i in &avg_levels {
            c.push(per[i][1]);
            c.push(per[i][2]);
        }
        rows.push(Row {
            label: label.clone(),
            keys: key_columns.iter().map(|_| rec.clone()).collect(),
            source: None,
            cells: c,
        });
    }
    let caption = sweep_caption(conv, !avg_levels.is_empty(), &measured, &seven);
    Some(Table {
        id: format!("sweep_{}", slug(model)),
        title: format!("{model}: every method across sparsities"),
        key_columns,
        columns,
        rows,
        caption,
        footnotes: Vec::new(),
    })
}

/// The distinct sparsities of `pruned`, ascending; `None` when there are fewer than two.
fn sweep_levels(pruned: &[&RunData]) -> Option<Vec<f64>> {
    let mut levels: Vec<f64> = Vec::new();
    for r in pruned {
        if let Some(Level::Sparsity(s)) = Level::of(r) {
            if !levels.iter().any(|x| (x - s).abs() < 1e-9) {
                levels.push(s);
            }
        }
    }
    if levels.len() < 2 {
        return None;
    }
    levels.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    Some(levels)
}

/// Each run's Wiki2 PPL, Avg and retention (against the dense Avg of the same model and
/// evaluation setting), filed under its row and level.
fn sweep_cells(
    model: &str,
    pruned: &[&RunData],
    levels: &[f64],
    dense: &DenseRuns,
    conv: Convention,
    seven: &[String],
) -> SweepCells {
    let level_of = |r: &RunData| match Level::of(r) {
        Some(Level::Sparsity(s)) => levels.iter().position(|x| (x - s).abs() < 1e-9),
        _ => None,
    };
    let dense_avg = |r: &RunData| {
        dense
            .get(&(model.to_string(), eval_sig(r)))
            .and_then(|d| average(&measure(d, conv), seven).0)
    };
    let labels = labels(pruned);
    let recovery = recovery_cells(pruned);
    let mut out = SweepCells {
        cells: BTreeMap::new(),
        ppl_settings: BTreeSet::new(),
        measured_avg: Vec::new(),
    };
    for ((label, rec), r) in labels.iter().zip(recovery).zip(pruned) {
        let Some(li) = level_of(r) else { continue };
        let m = measure(r, conv);
        let key = (
            method_rank(&method_of(r)),
            label.clone(),
            recovery_rank(&recovery_method(r)),
            rec,
        );
        let row = out
            .cells
            .entry(key)
            .or_insert_with(|| vec![[None; 3]; levels.len()]);
        if let Some(p) = m.ppl.get(names::PPL_WIKITEXT2) {
            row[li][0] = Some(*p);
            out.ppl_settings
                .extend(m.ppl_setting.get(names::PPL_WIKITEXT2).cloned());
        }
        if let Some(a) = average(&m, seven).0 {
            row[li][1] = Some(a);
            row[li][2] = dense_avg(r).map(|d| 100.0 * a / d);
            out.measured_avg.push((label.clone(), m));
        }
    }
    out
}

/// The sweep's columns: Wiki2 PPL at every level, then Avg and Ret.% at each level of
/// `avg_levels` (indices into `levels`).
fn sweep_columns(levels: &[f64], avg_levels: &[usize]) -> Vec<Col> {
    let pct = |s: f64| format!("{}%", (s * 1000.0).round() / 10.0);
    let ppl = Col::Ppl(names::PPL_WIKITEXT2.to_string());
    let mut columns: Vec<Col> = levels
        .iter()
        .map(|s| Col::At(Box::new(ppl.clone()), pct(*s)))
        .collect();
    for &i in avg_levels {
        columns.push(Col::At(Box::new(Col::Avg), pct(levels[i])));
        columns.push(Col::At(Box::new(Col::Retention), pct(levels[i])));
    }
    columns
}

/// The "Dense" row, its values repeated under every level (retention 100), when the model
/// has a dense run.
fn dense_sweep_row(
    model: &str,
    dense: &DenseRuns,
    conv: Convention,
    seven: &[String],
    n_levels: usize,
    avg_levels: &[usize],
    n_keys: usize,
) -> Option<Row> {
    let dense_of_model: Vec<&RunData> = dense
        .iter()
        .filter(|((m, _), _)| m == model)
        .map(|(_, r)| *r)
        .collect();
    if dense_of_model.is_empty() {
        return None;
    }
    let ms: Vec<Measured> = dense_of_model.iter().map(|d| measure(d, conv)).collect();
    let d_ppl = ms
        .iter()
        .find_map(|m| m.ppl.get(names::PPL_WIKITEXT2).copied());
    let d_avg = ms.iter().find_map(|m| average(m, seven).0);
    let mut c: Vec<Option<f64>> = vec![d_ppl; n_levels];
    for _ in avg_levels {
        c.push(d_avg);
        c.push(d_avg.map(|_| 100.0));
    }
    Some(Row {
        label: "Dense".into(),
        keys: vec!["-".to_string(); n_keys],
        source: None,
        cells: c,
    })
}

/// The sweep's caption: what Avg and Ret.% mean (when shown, with the items per task) and
/// how the perplexity was measured.
fn sweep_caption(
    conv: Convention,
    has_avg: bool,
    measured: &SweepCells,
    seven: &[String],
) -> String {
    let mut caption = String::new();
    if has_avg {
        let items = items_text(&measured.measured_avg, seven);
        caption.push_str(&format!(
            "Avg: mean zero-shot accuracy over the seven tasks ({}){}; Ret.%: Avg as a percentage of the dense Avg on the same documents. ",
            conv.describe(),
            if items.is_empty() { String::new() } else { format!(", items per task: {items}") }
        ));
    }
    caption.push_str("Wiki2 PPL: WikiText-2 test perplexity over non-overlapping windows");
    if !measured.ppl_settings.is_empty() {
        let list: Vec<String> = measured.ppl_settings.iter().cloned().collect();
        caption.push_str(&format!(" ({})", list.join("; ")));
    }
    caption.push_str(". Dense values are repeated under every sparsity.");
    caption
}

/// "Vary one key, hold the rest": for every `prune.*` key (method and sparsity aside) and
/// every `recovery.*` key (method aside: see [`super::recovery::recovery_tables`]) that
/// takes several values among runs equal in all other parameters. The recovery loss, a
/// table of weights in the store (`recovery.loss.mse`, ...), counts as one key whose
/// values are labels such as `mse` or `mse+0.5*cosine`.
pub fn ablation_tables(runs: &[RunData], conv: Convention) -> Vec<Table> {
    let dense = dense_runs(runs);
    let pruned: Vec<(&RunData, BTreeMap<String, Value>)> = runs
        .iter()
        .filter(|r| !r.is_dense())
        .map(|r| (r, collapsed_params(r)))
        .collect();
    let keys: BTreeSet<&String> = pruned
        .iter()
        .flat_map(|(_, p)| p.keys())
        .filter(|k| is_ablation_key(k))
        .collect();
    // Each table with the settings its rows share (for telling same-titled tables apart).
    let mut out: Vec<(BTreeMap<String, Value>, Table)> = Vec::new();
    for key in keys {
        for members in ablation_groups(&pruned, key).values() {
            out.extend(ablation_table(key, members, &dense, conv));
        }
    }
    name_shared_settings(&mut out);
    out.into_iter().map(|(_, t)| t).collect()
}

/// A run with its value of the varied key (`None` where it has no such parameter).
type Member<'a> = (&'a RunData, Option<&'a Value>);

/// The runs of `pruned` grouped by every parameter but `key`, keyed by those parameters'
/// canonical JSON, each with its value of `key`.
fn ablation_groups<'a>(
    pruned: &'a [(&'a RunData, BTreeMap<String, Value>)],
    key: &str,
) -> BTreeMap<String, Vec<Member<'a>>> {
    let mut groups: BTreeMap<String, Vec<Member<'a>>> = BTreeMap::new();
    for (r, params) in pruned {
        let rest: BTreeMap<&String, &Value> = params.iter().filter(|(k, _)| *k != key).collect();
        groups
            .entry(canonical_json(
                &serde_json::to_value(rest).unwrap_or(Value::Null),
            ))
            .or_default()
            .push((*r, params.get(key)));
    }
    groups
}

/// The ablation table of one group (rows ordered by the value of `key`), with the
/// settings its rows share; `None` unless `key` takes at least two values in it.
fn ablation_table(
    key: &str,
    members: &[Member],
    dense: &DenseRuns,
    conv: Convention,
) -> Option<(BTreeMap<String, Value>, Table)> {
    let distinct: BTreeSet<String> = members
        .iter()
        .map(|(_, v)| v.map(canonical_json).unwrap_or_default())
        .collect();
    if distinct.len() < 2 {
        return None;
    }
    let mut members = members.to_vec();
    members.sort_by(|a, b| cmp_values(a.1, b.1));
    let &(first, _) = members.first()?;
    let short = key.strip_prefix("prune.").unwrap_or(key);
    let (id, title) = ablation_heading(short, first);
    let member_runs: Vec<&RunData> = members.iter().map(|(r, _)| *r).collect();
    let key_columns = recovery_columns(&member_runs);
    let ours = members
        .iter()
        .map(|(r, v)| Entry {
            label: format!("{short}={}", v.map(value_text).unwrap_or_default()),
            keys: key_columns
                .iter()
                .map(|_| recovery_name(&recovery_method(r)))
                .collect(),
            run: r,
        })
        .collect();
    let b = Builder {
        conv,
        dense: dense.get(&(first.model(), eval_sig(first))).copied(),
        key_columns,
        ours,
        published: vec![],
    };
    let note = format!(
        "Rows differ only in `{key}`; every other setting is equal. {}",
        eval_note(Some(first))
    );
    let mut shared = collapsed_params(first);
    shared.remove(key);
    Some((shared, b.build(id, title, &note)))
}

/// The id and title of an ablation of `short` (the varied key, `prune.` dropped) whose
/// rows share `first`'s model, method, level and recovery method.
fn ablation_heading(short: &str, first: &RunData) -> (String, String) {
    let model = first.model();
    let method = method_of(first);
    let level = Level::of(first);
    // Equal within the group: recovery.method is never the varied key.
    let recovery = recovery_method(first);
    let recovered = recovery_rank(&recovery) > 0;
    let id = format!(
        "ablation_{}_{}_{}_{}{}",
        slug(short),
        slug(&model),
        slug(&method),
        level.map(|l| l.slug()).unwrap_or_default(),
        if recovered {
            format!("_{}", slug(&recovery))
        } else {
            String::new()
        }
    );
    let title = format!(
        "Ablation of {short}: {model}, {}, {}{}",
        method_label(&method),
        level.map(|l| l.text()).unwrap_or_default(),
        if recovered {
            format!(", {recovery} recovery")
        } else {
            String::new()
        }
    );
    (id, title)
}

/// Tables of one ablation that share a title (the same key varied on the same model,
/// method and level, with other settings fixed at different values, e.g. two learning
/// rates) name those settings in the title, so a reader can tell them apart.
fn name_shared_settings(tables: &mut [(BTreeMap<String, Value>, Table)]) {
    let mut by_id: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, (_, t)) in tables.iter().enumerate() {
        by_id.entry(t.id.clone()).or_default().push(i);
    }
    for same in by_id.values().filter(|v| v.len() > 1) {
        let keys: BTreeSet<&String> = same.iter().flat_map(|&i| tables[i].0.keys()).collect();
        let differing: Vec<String> = keys
            .into_iter()
            .filter(|k| {
                let values: BTreeSet<String> = same
                    .iter()
                    .map(|&i| tables[i].0.get(*k).map(canonical_json).unwrap_or_default())
                    .collect();
                values.len() > 1
            })
            .cloned()
            .collect();
        for &i in same {
            let (shared, t) = &mut tables[i];
            let fixed: Vec<String> = differing
                .iter()
                .map(|k| {
                    let v = shared.get(k).map(value_text).unwrap_or_else(|| "-".into());
                    format!("{k}={v}")
                })
                .collect();
            if fixed.is_empty() {
                continue;
            }
            t.title = format!("{} ({})", t.title, fixed.join(", "));
        }
    }
}

/// Keys the one-key ablations vary: pruning settings other than the method and the level,
/// and recovery settings other than the method.
fn is_ablation_key(k: &str) -> bool {
    let skip = [
        "prune.method",
        "prune.sparsity",
        "prune.target_layers",
        "recovery.method",
    ];
    (k.starts_with("prune.") || k.starts_with("recovery.")) && !skip.contains(&k)
}

/// The published rows alone: one table per (model, sparsity), with that model's dense rows.
pub fn published_tables(published: &[PublishedRow], conv: Convention) -> Vec<Table> {
    let mut models: Vec<&str> = Vec::new();
    for p in published {
        if !models.iter().any(|m| same_model(m, &p.model)) {
            models.push(&p.model);
        }
    }
    let mut out = Vec::new();
    for model in models {
        let rows: Vec<&PublishedRow> = published
            .iter()
            .filter(|p| same_model(&p.model, model))
            .collect();
        let dense: Vec<&PublishedRow> = rows.iter().copied().filter(|p| p.is_dense()).collect();
        let mut levels: Vec<f64> = rows
            .iter()
            .filter(|p| !p.is_dense())
            .filter_map(|p| p.sparsity)
            .collect();
        levels.sort_by(f64::total_cmp);
        levels.dedup_by(|a, b| (*a - *b).abs() < 1e-9);
        let mut groups: Vec<(String, Vec<&PublishedRow>)> =
            levels
                .iter()
                .map(|s| {
                    let mut g = dense.clone();
                    g.extend(rows.iter().copied().filter(|p| {
                        !p.is_dense() && p.sparsity.is_some_and(|x| (x - s).abs() < 1e-9)
                    }));
                    (format!("s{s}"), g)
                })
                .collect();
        if levels.is_empty() && !dense.is_empty() {
            groups.push(("dense".into(), dense.clone()));
        }
        for (lv, g) in groups {
            let b = Builder {
                conv,
                dense: None,
                key_columns: Vec::new(),
                ours: vec![],
                published: g,
            };
            let title = if lv == "dense" {
                format!("Published: {model}, dense")
            } else {
                format!("Published: {model}, sparsity {}", &lv[1..])
            };
            let mut t = b.build(format!("published_{}_{lv}", slug(model)), title, "");
            // The convention sentence describes our rows; these tables have none.
            t.caption = t.caption.replacen(&format!("{}. ", conv.describe()), "", 1);
            out.push(t);
        }
    }
    out
}

/// Make table ids unique by numbering repeats.
pub fn unique_ids(tables: &mut [Table]) {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for t in tables.iter_mut() {
        let n = seen.entry(t.id.clone()).or_insert(0);
        *n += 1;
        if *n > 1 {
            t.id = format!("{}_{}", t.id, n);
        }
    }
}
