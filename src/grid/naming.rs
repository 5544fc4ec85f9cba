//! Run names built from the keys a sub-grid varies, and the problems that make a run
//! impossible before it starts.

use super::*;

/// Keys that take more than one value among the kept combinations (they name the runs),
/// in name order: method, merge, the other keys as declared, the pruning level, then the
/// recovery.
pub(super) fn varied_keys(s: &SubGrid, kept: &[(Assign, Experiment)]) -> Vec<String> {
    let mut varied: Vec<String> = Vec::new();
    for d in &s.dims {
        for k in &d.keys {
            let mut distinct: Vec<String> = Vec::new();
            for (assign, _) in kept {
                if let Some((_, v)) = assign.iter().find(|(kk, _)| kk == k) {
                    let c = canonical_json(v);
                    if !distinct.contains(&c) {
                        distinct.push(c);
                    }
                }
            }
            if distinct.len() > 1 && k != "model" {
                varied.push(k.clone());
            }
        }
    }
    let rank = |k: &str| match k {
        "prune.method" => 0,
        "prune.merge" => 1,
        "prune.sparsity" | "prune.target_layers" => 3,
        "recovery.method" => 4,
        _ if k.starts_with("recovery.") => 5,
        _ => 2,
    };
    varied.sort_by_key(|k| rank(k));
    varied
}

/// `model/dense` or `model/<varied values>`; keys of a stage the run does not have
/// (prune and recovery of a dense run, the settings of a recovery that is off) are left
/// out.
pub(super) fn run_name(exp: &Experiment, assign: &Assign, varied: &[String]) -> String {
    let mut parts = vec![model_label(&exp.model)];
    if exp.prune.is_none() {
        parts.push("dense".into());
    }
    for k in varied {
        let absent = (exp.prune.is_none() && (k.starts_with("prune") || k.starts_with("recovery")))
            || (exp.recovery.is_none() && k.starts_with("recovery.") && k != "recovery.method");
        if absent {
            continue;
        }
        if let Some((_, v)) = assign.iter().find(|(kk, _)| kk == k) {
            parts.push(value_label(k, v));
        }
    }
    parts.join("/")
}

/// Why a resolved run cannot run (checked before any run starts), if it cannot.
pub(super) fn run_problem(exp: &Experiment) -> Option<String> {
    let checked = match &exp.prune {
        Some(p) => p.validate(),
        None if !exp.recovery.is_none() => Err(crate::error::Error::Invalid(format!(
            "recovery needs a pruned model: `recovery.method = \"{}\"` without a `prune` table",
            exp.recovery.method.name()
        ))),
        None => Ok(()),
    };
    checked
        .and_then(|_| exp.eval.validate())
        .and_then(|_| match exp.recovery.is_none() {
            true => Ok(()),
            false => exp.recovery.validate(),
        })
        .err()
        .map(|e| e.to_string())
}

pub(super) fn model_label(model: &str) -> String {
    Path::new(model)
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| model.to_string())
}

/// A short label of one varied value for run names.
pub(super) fn value_label(key: &str, v: &Value) -> String {
    let last = key.rsplit('.').next().unwrap_or(key);
    match v {
        // `none` alone would not say what is absent.
        Value::String(s) if key == "recovery.method" => format!("recovery={}", s.replace('/', "_")),
        Value::String(s) => s.replace('/', "_"),
        Value::Number(n) => match key {
            "prune.sparsity" => format!("s{n}"),
            "prune.target_layers" => format!("L{n}"),
            _ => format!("{last}={n}"),
        },
        Value::Bool(b) => format!("{last}={b}"),
        Value::Array(a) if a.iter().all(Value::is_string) => {
            let items: Vec<&str> = a.iter().filter_map(Value::as_str).collect();
            format!("{last}={}", items.join("+"))
        }
        other => format!("{last}#{}", hash_value(other).get(..8).unwrap_or_default()),
    }
}
