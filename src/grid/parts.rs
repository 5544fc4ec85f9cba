//! A grid's parts as parsed: the base, axes, zips, excludes and sub-grids.

use super::*;

#[derive(Debug, Clone)]
pub(super) struct Dim {
    pub(super) keys: Vec<String>,
    /// One row per position: the value of every key, with where it was written.
    pub(super) rows: Vec<Vec<(Value, Loc)>>,
}

#[derive(Debug, Clone)]
pub(super) struct Exclude {
    pub(super) conds: Vec<(String, Value)>,
    pub(super) loc: Loc,
}

#[derive(Debug, Clone, Default)]
pub(super) struct Part {
    pub(super) base: Map<String, Value>,
    pub(super) model_loc: Loc,
    pub(super) axes: Vec<Dim>,
    pub(super) zips: Vec<Dim>,
    pub(super) excludes: Vec<Exclude>,
    pub(super) dense: Option<bool>,
}

#[derive(Debug, Clone)]
pub(super) struct SubGrid {
    pub(super) name: String,
    pub(super) loc: Loc,
    pub(super) base: Map<String, Value>,
    pub(super) model_loc: Loc,
    pub(super) dims: Vec<Dim>,
    /// The keys this sub-grid sets itself (its base and its axes; the file's shared base
    /// is a default for every sub-grid, so it is not counted): some run must read each.
    pub(super) own_keys: Vec<String>,
    /// Indices into `GridSpec::excludes`.
    pub(super) excludes: Vec<usize>,
    pub(super) dense: bool,
}

/// The base / axes / zip / exclude / dense keys of the top level or of one sub-grid.
pub(super) fn parse_part(
    entries: &[Entry],
    prefix: &str,
    schema: &Value,
    diags: &mut Diags,
) -> Part {
    let mut part = Part::default();
    for e in entries {
        let here = format!("{prefix}{}", e.key);
        match e.key.as_str() {
            "base" => parse_base(e, &here, schema, diags, &mut part),
            "axes" => {
                let Some(t) = e.node.table() else {
                    diags.push(
                        e.key_loc,
                        &here,
                        "must be a table of `\"dotted.key\" = [values]`",
                    );
                    continue;
                };
                let mut ls = Vec::new();
                leaves("", t, &mut ls);
                for (k, node, kloc) in ls {
                    if let Some(d) = parse_axis(&k, node, kloc, schema, diags) {
                        if no_repeats(&d, diags) {
                            part.axes.push(d);
                        }
                    }
                }
            }
            "zip" => parse_zips(e, &here, schema, diags, &mut part),
            "exclude" => parse_excludes(e, &here, schema, diags, &mut part),
            "dense" => match &e.node.kind {
                Kind::Leaf(Value::Bool(b)) => part.dense = Some(*b),
                _ => diags.push(e.node.loc, &here, "expected true or false"),
            },
            _ => {}
        }
    }
    part
}

/// `base`: a partial experiment, each key known and each value of its key's type.
fn parse_base(e: &Entry, here: &str, schema: &Value, diags: &mut Diags, part: &mut Part) {
    let Some(t) = e.node.table() else {
        diags.push(e.key_loc, here, "must be a table (a partial experiment)");
        return;
    };
    let mut ls = Vec::new();
    leaves("", t, &mut ls);
    for (k, node, kloc) in ls {
        let Some(v) = checked_value(&k, node, kloc, schema, diags) else {
            continue;
        };
        if k == "model" {
            part.model_loc = node.loc;
        }
        set_path(&mut part.base, &k, v);
    }
}

/// The value of one `key = value` leaf, if the key is known and the value of its type;
/// otherwise the problem is reported where it was written.
fn checked_value(
    k: &str,
    node: &Node,
    kloc: Loc,
    schema: &Value,
    diags: &mut Diags,
) -> Option<Value> {
    if let Err(m) = check_key(schema, k) {
        diags.push(kloc, k, m);
        return None;
    }
    let v = node.to_json();
    if let Err(m) = check_value(k, &v) {
        diags.push(node.loc, k, m);
        return None;
    }
    Some(v)
}

/// `[[zip]]`: groups of axes of equal length that advance together.
fn parse_zips(e: &Entry, here: &str, schema: &Value, diags: &mut Diags, part: &mut Part) {
    let groups: Vec<&Node> = match &e.node.kind {
        Kind::Array(a) => a.iter().collect(),
        Kind::Table(_) => vec![&e.node],
        Kind::Leaf(_) => {
            diags.push(
                e.key_loc,
                here,
                "must be [[zip]] tables of equal-length arrays",
            );
            return;
        }
    };
    for g in groups {
        let Some(t) = g.table() else {
            diags.push(g.loc, here, "each [[zip]] entry must be a table");
            continue;
        };
        let mut ls = Vec::new();
        leaves("", t, &mut ls);
        let axes: Vec<Dim> = ls
            .into_iter()
            .filter_map(|(k, node, kloc)| parse_axis(&k, node, kloc, schema, diags))
            .collect();
        if axes.is_empty() {
            diags.push(g.loc, here, "empty [[zip]] group");
            continue;
        }
        let n = axes[0].rows.len();
        if let Some(bad) = axes.iter().find(|a| a.rows.len() != n) {
            let lens: Vec<String> = axes
                .iter()
                .map(|a| format!("{} has {}", a.keys[0], a.rows.len()))
                .collect();
            let at = bad
                .rows
                .first()
                .and_then(|r| r.first())
                .map_or(g.loc, |(_, l)| *l);
            diags.push(
                at,
                &bad.keys[0],
                format!("zipped axes need equal lengths ({})", lens.join(", ")),
            );
            continue;
        }
        let keys: Vec<String> = axes.iter().map(|a| a.keys[0].clone()).collect();
        let rows: Vec<Vec<(Value, Loc)>> = (0..n)
            .map(|i| {
                axes.iter()
                    .filter_map(|a| a.rows.get(i).and_then(|r| r.first()).cloned())
                    .collect()
            })
            .collect();
        part.zips.push(Dim { keys, rows });
    }
}

/// `exclude`: combinations to leave out, each a table of known keys and valid values.
fn parse_excludes(e: &Entry, here: &str, schema: &Value, diags: &mut Diags, part: &mut Part) {
    let Kind::Array(items) = &e.node.kind else {
        diags.push(
            e.key_loc,
            here,
            "must be an array of tables: [{ \"key\" = value, ... }]",
        );
        return;
    };
    for it in items {
        let Some(t) = it.table() else {
            diags.push(
                it.loc,
                here,
                "each entry must be a table { \"key\" = value }",
            );
            continue;
        };
        let mut ls = Vec::new();
        leaves("", t, &mut ls);
        let mut conds = Vec::new();
        let mut ok = !ls.is_empty();
        if ls.is_empty() {
            diags.push(it.loc, here, "empty exclude entry would drop every run");
        }
        for (k, node, kloc) in ls {
            match checked_value(&k, node, kloc, schema, diags) {
                Some(v) => conds.push((k, v)),
                None => ok = false,
            }
        }
        if ok {
            part.excludes.push(Exclude { conds, loc: it.loc });
        }
    }
}

/// One axis: a known key and a non-empty array of values that each deserialise.
/// A repeated value in an axis (a seed list `[0, 1, 0]`) would silently give fewer runs
/// than the list promises: the repeat has the same hash and is kept once. (A zip may
/// repeat a value in one of its columns: its rows differ in another.)
pub(super) fn no_repeats(d: &Dim, diags: &mut Diags) -> bool {
    let mut ok = true;
    for (i, row) in d.rows.iter().enumerate() {
        let (v, loc) = &row[0];
        if d.rows[..i].iter().any(|r| same_value(&r[0].0, v)) {
            let m = format!("{v} appears twice in this axis (the repeat would be the same runs)");
            diags.push(*loc, &d.keys[0], m);
            ok = false;
        }
    }
    ok
}

pub(super) fn parse_axis(
    key: &str,
    node: &Node,
    kloc: Loc,
    schema: &Value,
    diags: &mut Diags,
) -> Option<Dim> {
    if let Err(m) = check_key(schema, key) {
        diags.push(kloc, key, m);
        return None;
    }
    let Kind::Array(items) = &node.kind else {
        diags.push(
            node.loc,
            key,
            "an axis must be an array of values, e.g. [0.1, 0.2]",
        );
        return None;
    };
    if items.is_empty() {
        diags.push(node.loc, key, "empty axis (it would expand to no runs)");
        return None;
    }
    let mut rows = Vec::new();
    let mut ok = true;
    for it in items {
        let v = it.to_json();
        if let Err(m) = check_value(key, &v) {
            diags.push(it.loc, key, m);
            ok = false;
            continue;
        }
        rows.push(vec![(v, it.loc)]);
    }
    ok.then(|| Dim {
        keys: vec![key.to_string()],
        rows,
    })
}
