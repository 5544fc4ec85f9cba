//! Which keys a grid may set and what values they take: the experiment's own default
//! JSON as the schema, with suggestions for unknown keys.

use super::*;

/// The Experiment's key tree, with default `prune` and `recovery` tables so their keys
/// are known.
pub(super) fn schema() -> Value {
    let mut v = Experiment::default().to_value();
    if let Some(m) = v.as_object_mut() {
        m.insert(
            "prune".into(),
            serde_json::to_value(PruneConfig::default()).unwrap_or(Value::Null),
        );
        let mut recovery = serde_json::to_value(RecoveryConfig::default()).unwrap_or(Value::Null);
        if let Some(r) = recovery.as_object_mut() {
            // `loss` may be written as a table of weights: every loss is a key of it.
            let losses: Map<String, Value> = LossKind::ALL
                .iter()
                .map(|k| (k.name().to_string(), Value::from(1.0)))
                .collect();
            r.insert("loss".into(), Value::Object(losses));
            for (k, v) in RecoveryConfig::opt_in_defaults() {
                r.insert(k.into(), v);
            }
        }
        m.insert("recovery".into(), recovery);
        // Opt-in keys that the serialised default leaves out (to keep old hashes).
        if let Some(Value::Object(e)) = m.get_mut("eval") {
            e.insert("ppl_c4".into(), Value::Bool(false));
            e.insert("ppl_val".into(), Value::Bool(false));
            e.insert("ppl_ood".into(), Value::Bool(false));
            e.insert("ppl_protocol".into(), Value::String("gptq".into()));
            e.insert("latency".into(), Value::Bool(false));
            e.insert("latency_iters".into(), serde_json::json!([1, 1]));
            e.insert("special_tokens".into(), Value::Bool(true));
            e.insert("ppl_texts".into(), Value::Array(vec![]));
            // Every task is a key of `task_paths`.
            let tasks = ALL_TASKS.iter().map(|t| (t.to_string(), Value::from("")));
            e.insert("task_paths".into(), Value::Object(tasks.collect()));
        }
        if let Some(Value::Object(c)) = m.get_mut("prune").and_then(|p| p.get_mut("calib")) {
            c.insert("ids".into(), Value::String(String::new()));
        }
    }
    v
}

pub(super) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Is `path` a key of the Experiment? The error names the closest known key.
pub(super) fn check_key(schema: &Value, path: &str) -> std::result::Result<(), String> {
    let mut node = schema;
    let mut done: Vec<&str> = Vec::new();
    for seg in path.split('.') {
        let parent = done.join(".");
        let Value::Object(m) = node else {
            return Err(format!("`{parent}` is a value, not a table"));
        };
        match m.get(seg) {
            Some(n) => node = n,
            None => {
                let best = m
                    .keys()
                    .map(|k| (edit_distance(seg, k), k))
                    .filter(|(d, k)| *d <= 2 || k.starts_with(seg) || seg.starts_with(k.as_str()))
                    .min();
                let within = if parent.is_empty() {
                    "the experiment".to_string()
                } else {
                    format!("`{parent}`")
                };
                let known: Vec<&str> = m.keys().map(String::as_str).collect();
                let hint = match best {
                    Some((_, k)) => {
                        let full = if parent.is_empty() {
                            k.clone()
                        } else {
                            format!("{parent}.{k}")
                        };
                        format!("; did you mean `{full}`?")
                    }
                    None => String::new(),
                };
                return Err(format!(
                    "unknown key (keys of {within}: {}){hint}",
                    known.join(", ")
                ));
            }
        }
        done.push(seg);
    }
    Ok(())
}

/// Does `value` at `path` deserialise (on top of all defaults)? Also checks task names.
pub(super) fn check_value(path: &str, value: &Value) -> std::result::Result<(), String> {
    let mut root = Map::new();
    set_path(&mut root, path, value.clone());
    let root = Value::Object(root);
    if let Some(Value::Array(tasks)) = get_path(&root, "eval.tasks") {
        for t in tasks {
            match t.as_str() {
                Some(s) if ALL_TASKS.contains(&s) => {}
                Some(s) => {
                    return Err(format!(
                        "unknown task `{s}` (known: {})",
                        ALL_TASKS.join(", ")
                    ))
                }
                None => return Err(format!("task names are strings, got {t}")),
            }
        }
    }
    if get_path(&root, "eval.ppl_c4") == Some(&Value::Bool(true)) {
        let p = crate::paths::c4_validation();
        if !p.is_file() {
            return Err(format!(
                "C4 perplexity needs the C4 validation shard, but {} does not exist (no copy \
                 is shipped; set COME_C4 to your copy)",
                p.display()
            ));
        }
    }
    if let Some(Value::Object(paths)) = get_path(&root, "eval.task_paths") {
        for (task, path) in paths {
            check_data_path(&format!("the data of `{task}`"), path)?;
        }
    }
    if let Some(Value::Array(texts)) = get_path(&root, "eval.ppl_texts") {
        for path in texts {
            check_data_path("the perplexity text", path)?;
        }
    }
    serde_json::from_value::<Experiment>(root)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// A data file the evaluation reads: a path that expands and exists here.
fn check_data_path(what: &str, path: &Value) -> std::result::Result<(), String> {
    let Some(path) = path.as_str() else {
        return Err(format!("the path of {what} is a string, got {path}"));
    };
    let expanded = crate::paths::expand_vars(path)?;
    if !Path::new(&expanded).exists() {
        return Err(format!("{what}, {expanded}, does not exist"));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The parsed grid.
