//! The `[models]` table: named model sources (HF directories, GGUF and llama2.c files),
//! with `${VAR}` expansion, and the check that they exist.

use super::*;
use crate::paths::expand_vars;

#[derive(Debug, Clone)]
pub(super) struct ModelEntry {
    pub(super) source: ModelSource,
    pub(super) loc: Loc,
}

pub(super) fn parse_models(node: &Node, diags: &mut Diags) -> BTreeMap<String, ModelEntry> {
    let mut out = BTreeMap::new();
    let Some(entries) = node.table() else {
        diags.push(node.loc, "models", "must be a table of named model sources");
        return out;
    };
    for e in entries {
        let key = format!("models.{}", e.key);
        let Some(fields) = e.node.table() else {
            diags.push(e.key_loc, &key, "expected a table such as { path = DIR }, { gguf = FILE } or { llama2c = FILE, tokenizer = FILE }");
            continue;
        };
        let Some(vals) = model_fields(&key, fields, diags) else {
            continue;
        };
        if let Some(source) = model_source(&vals, e.key_loc, &key, diags) {
            out.insert(
                e.key.clone(),
                ModelEntry {
                    source,
                    loc: e.key_loc,
                },
            );
        }
    }
    out
}

/// The fields of one `[models]` entry, `${VAR}`s expanded: every field is reported
/// (unknown keys, non-strings, unset variables) and `None` returned if any was wrong.
fn model_fields<'a>(
    key: &str,
    fields: &'a [Entry],
    diags: &mut Diags,
) -> Option<BTreeMap<&'a str, String>> {
    let mut vals: BTreeMap<&str, String> = BTreeMap::new();
    let mut ok = true;
    for f in fields {
        if !["path", "gguf", "llama2c", "tokenizer"].contains(&f.key.as_str()) {
            diags.push(
                f.key_loc,
                &format!("{key}.{}", f.key),
                "unknown key (expected path, gguf, or llama2c with tokenizer)",
            );
            ok = false;
            continue;
        }
        match &f.node.kind {
            Kind::Leaf(Value::String(s)) => match expand_vars(s) {
                Ok(x) => {
                    vals.insert(f.key.as_str(), x);
                }
                Err(m) => {
                    diags.push(f.node.loc, &format!("{key}.{}", f.key), m);
                    ok = false;
                }
            },
            _ => {
                diags.push(
                    f.node.loc,
                    &format!("{key}.{}", f.key),
                    "expected a path string",
                );
                ok = false;
            }
        }
    }
    ok.then_some(vals)
}

/// The source an entry's fields describe: exactly one of path, gguf, llama2c, with a
/// tokenizer for (and only for) llama2c; else a problem at `loc` and `None`.
fn model_source(
    vals: &BTreeMap<&str, String>,
    loc: Loc,
    key: &str,
    diags: &mut Diags,
) -> Option<ModelSource> {
    let kinds = ["path", "gguf", "llama2c"]
        .iter()
        .filter(|k| vals.contains_key(*k))
        .count();
    match (
        vals.get("path"),
        vals.get("gguf"),
        vals.get("llama2c"),
        vals.get("tokenizer"),
    ) {
        (Some(p), None, None, None) => Some(ModelSource::Path(PathBuf::from(p))),
        (None, Some(g), None, None) => Some(ModelSource::Gguf(PathBuf::from(g))),
        (None, None, Some(m), Some(t)) => Some(ModelSource::Llama2c {
            model: PathBuf::from(m),
            tokenizer: PathBuf::from(t),
        }),
        (None, None, Some(_), None) => {
            diags.push(loc, key, "a llama2c model needs `tokenizer = FILE`");
            None
        }
        _ if kinds != 1 => {
            diags.push(loc, key, "give exactly one of path, gguf, llama2c");
            None
        }
        _ => {
            diags.push(loc, key, "`tokenizer` belongs to llama2c models only");
            None
        }
    }
}

impl GridSpec {
    /// Every model a sub-grid can use must be known (else an error in `diags`); the
    /// problems of those whose files do not exist here are returned.
    pub(super) fn check_models(&self, diags: &mut Diags) -> Vec<String> {
        let mut missing = Diags { items: Vec::new() };
        let mut used: BTreeMap<String, Loc> = BTreeMap::new();
        for s in &self.subgrids {
            let mut from_axis = false;
            for d in &s.dims {
                if let Some(i) = d.keys.iter().position(|k| k == "model") {
                    from_axis = true;
                    for row in &d.rows {
                        if let Some((Value::String(m), l)) = row.get(i) {
                            used.entry(m.clone()).or_insert(*l);
                        }
                    }
                }
            }
            if !from_axis {
                let m = match s.base.get("model") {
                    Some(Value::String(m)) => m.clone(),
                    _ => Experiment::default().model,
                };
                let l = if s.base.contains_key("model") {
                    s.model_loc
                } else {
                    s.loc
                };
                used.entry(m).or_insert(l);
            }
        }
        for (name, loc) in used {
            match self.models.get(&name) {
                Some(entry) => {
                    for p in entry.source.paths() {
                        let ok = match &entry.source {
                            ModelSource::Path(_) => p.is_dir(),
                            _ => p.is_file(),
                        };
                        if !ok {
                            let what = if matches!(entry.source, ModelSource::Path(_)) {
                                "directory"
                            } else {
                                "file"
                            };
                            missing.push(
                                entry.loc,
                                &format!("models.{name}"),
                                format!("{what} {} does not exist", p.display()),
                            );
                        }
                    }
                }
                None if Path::new(&name).is_dir() => {}
                None => diags.push(
                    loc,
                    "model",
                    format!(
                        "model `{name}` is neither a key of [models] nor an existing directory"
                    ),
                ),
            }
        }
        missing.items
    }
}
