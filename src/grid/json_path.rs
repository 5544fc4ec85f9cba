//! Dotted paths into JSON objects (`prune.calib.nrows`): set, get, merge and compare.

use super::*;

/// Set `path` (dotted) in an object, creating tables on the way; a table value merges into
/// an existing table, anything else replaces.
pub(super) fn set_path(root: &mut Map<String, Value>, path: &str, value: Value) {
    let mut segs = path.split('.').peekable();
    let mut cur = root;
    while let Some(seg) = segs.next() {
        if segs.peek().is_none() {
            match (cur.get_mut(seg), value) {
                (Some(Value::Object(existing)), Value::Object(new)) => deep_merge(existing, new),
                (_, v) => {
                    cur.insert(seg.to_string(), v);
                }
            }
            return;
        }
        let slot = cur
            .entry(seg.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        if !slot.is_object() {
            *slot = Value::Object(Map::new());
        }
        match slot {
            Value::Object(m) => cur = m,
            _ => return,
        }
    }
}

pub(super) fn deep_merge(into: &mut Map<String, Value>, from: Map<String, Value>) {
    for (k, v) in from {
        match (into.get_mut(&k), v) {
            (Some(Value::Object(a)), Value::Object(b)) => deep_merge(a, b),
            (_, v) => {
                into.insert(k, v);
            }
        }
    }
}

pub(super) fn get_path<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.')
        .try_fold(v, |cur, seg| cur.as_object()?.get(seg))
}

/// Equality for exclude matching: numbers compare by value (1 == 1.0).
pub(super) fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same_value(p, q))
        }
        _ => a == b,
    }
}

// ---------------------------------------------------------------------------------------
// Validation against the Experiment's own shape.
