//! Experiment grids: one TOML file expands into fully resolved, hashed runs.
//!
//! ```toml
//! # One dense run (prune = None) per distinct non-pruning setting of each sub-grid.
//! # Top-level keys (dense, exclude) come before the first [table].
//! dense = true
//!
//! # Shared starting point: a partial `Experiment`, same layout as its serde form.
//! [base]
//! model = "smollm2"
//! [base.prune]
//! calib = { nrows = 64, max_sequences = 2 }
//! [base.eval]
//! tasks = ["piqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "boolq", "openbookqa"]
//! limit = 100
//! ppl_windows = 8
//! token_budget = "auto"     # padded tokens per forward, or a number; backs off on OOM
//! # ppl_c4 = true           # C4 validation perplexity too (your copy, via COME_C4)
//! # latency = true          # batch-1 prefill/decode tokens/s; tables gain speed-ups
//! [base.runtime]
//! dtype = "f32"
//!
//! # Model sources, by name. Paths are relative to the project root (the working
//! # directory); ${COME_MODELS}, ${COME_DATA}, ${COME_WORK} expand with the defaults of
//! # `paths`, any other ${VAR} from the environment. Only models a run uses must exist.
//! [models]
//! smollm2 = { gguf = "${COME_MODELS}/smollm2-135m-instruct-q4_1/SmolLM2-135M-Instruct.Q4_1.gguf" }
//! stories = { llama2c = "${COME_MODELS}/stories260K/stories260K.bin", tokenizer = "${COME_MODELS}/stories260K/tok512.bin" }
//! llama2-7b = { path = "work/llama-2-7b-hf" }   # a Hugging Face checkpoint directory
//!
//! # Axes: dotted paths into the Experiment; the cartesian product is expanded, the first
//! # axis outermost. With [grids] present these are shared by every sub-grid (a sub-grid
//! # axis with the same key replaces a shared one); without [grids] they form the grid.
//! [axes]
//! model = ["smollm2"]
//! "prune.sparsity" = [0.1, 0.2, 0.3]         # `prune.sparsity = [...]` means the same
//!
//! # Named sub-grids, each with its own axes / zip / exclude / dense / base overrides on
//! # top of the shared ones; the expansion is their union, identical runs counted once.
//! [grids.main]
//! axes = { "prune.method" = ["come", "come-p", "shortgpt", "sleb", "reverse", "laco"] }
//! # Drop every combination that matches all the keys of one entry.
//! exclude = [{ "prune.method" = "laco", "prune.sparsity" = 0.1 }]
//!
//! [grids.merge]
//! axes = { "prune.merge" = ["concat", "linear", "linear-bi", "drop"] }
//! base = { prune = { method = "come" } }
//!
//! [grids.norm]
//! base = { prune = { method = "come" } }
//! # Axes that advance together (equal lengths): (mean, hf) and (fold, reference).
//! [[grids.norm.zip]]
//! "prune.norm" = ["mean", "fold"]
//! "prune.gqa_mapping" = ["hf", "reference"]
//! ```
//!
//! Every run is the merged JSON deserialised into [`Experiment`] (every default filled,
//! unknown fields rejected) and is identified by [`Experiment::hash`], so the TOML key
//! order and the way a value is spelled (`0.3`, `3e-1`) do not matter. Runs are named
//! from the model and the keys their sub-grid varies, e.g. `smollm2/come/concat/s0.3`
//! (dense runs `smollm2/dense`, a varied recovery method ends in `recovery=lora`); a name
//! shared by different runs gets `#` and the first eight hex digits of the hash appended.
//!
//! Every problem is reported before any run starts, all at once, each with the line and
//! column in the file and the key: malformed TOML, unknown keys (with a suggestion), values
//! of the wrong type, unknown methods / merges / tasks, unknown models, missing model files,
//! zips of unequal lengths, excludes that match nothing, pruned runs without a target,
//! recovery (`[base.recovery]`, axes such as `"recovery.method" = ["none", "lora"]`)
//! without a pruned model or with settings that cannot train.

use crate::distill::{LossKind, RecoveryConfig};
use crate::error::{Error, Result};
use crate::experiment::Experiment;
use crate::hashing::{canonical_json, hash_value};
use crate::names::ALL_TASKS;
use crate::prune::PruneConfig;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::{Path, PathBuf};

pub use crate::experiment::{flatten, ModelSource, RunSpec};

/// Line and column (1-based) of something in the grid file; 0 when unknown.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Loc {
    line: usize,
    col: usize,
}

type Span = Option<Range<usize>>;

fn loc_of(src: &str, span: &Span) -> Loc {
    let Some(r) = span else { return Loc::default() };
    let Some(before) = src.get(..r.start.min(src.len())) else {
        return Loc::default();
    };
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |s| s.chars().count()) + 1;
    Loc { line, col }
}

/// Collects every problem so that all are reported at once.
struct Diags {
    items: Vec<String>,
}

impl Diags {
    fn push(&mut self, loc: Loc, key: &str, msg: impl std::fmt::Display) {
        let at = if loc.line > 0 {
            format!("line {}:{}: ", loc.line, loc.col)
        } else {
            String::new()
        };
        let k = if key.is_empty() {
            String::new()
        } else {
            format!("`{key}`: ")
        };
        self.items.push(format!("{at}{k}{msg}"));
    }
    fn finish(self, path: &Path) -> Result<()> {
        if self.items.is_empty() {
            return Ok(());
        }
        const MAX: usize = 30;
        if let [only] = self.items.as_slice() {
            return Err(Error::config(path, only.clone()));
        }
        let mut lines: Vec<String> = self.items.iter().take(MAX).cloned().collect();
        if self.items.len() > MAX {
            lines.push(format!("... and {} more", self.items.len() - MAX));
        }
        Err(Error::config(
            path,
            format!("{} problems:\n  {}", self.items.len(), lines.join("\n  ")),
        ))
    }
}

// ---------------------------------------------------------------------------------------
// TOML -> a small spanned tree (so every value keeps its position).

#[derive(Debug, Clone)]
struct Node {
    loc: Loc,
    kind: Kind,
}

#[derive(Debug, Clone)]
enum Kind {
    Table(Vec<Entry>),
    Array(Vec<Node>),
    Leaf(Value),
}

#[derive(Debug, Clone)]
struct Entry {
    key: String,
    key_loc: Loc,
    node: Node,
}

impl Node {
    fn to_json(&self) -> Value {
        match &self.kind {
            Kind::Leaf(v) => v.clone(),
            Kind::Array(a) => Value::Array(a.iter().map(Node::to_json).collect()),
            Kind::Table(es) => {
                let mut m = Map::new();
                for e in es {
                    set_path(&mut m, &e.key, e.node.to_json());
                }
                Value::Object(m)
            }
        }
    }
    fn table(&self) -> Option<&[Entry]> {
        match &self.kind {
            Kind::Table(es) => Some(es),
            _ => None,
        }
    }
}

struct Converter<'a> {
    src: &'a str,
    diags: &'a mut Diags,
}

impl Converter<'_> {
    fn loc(&self, span: Span) -> Loc {
        loc_of(self.src, &span)
    }

    fn item(&mut self, item: &toml_edit::Item) -> Option<Node> {
        use toml_edit::Item;
        match item {
            Item::None => None,
            Item::Value(v) => self.value(v),
            Item::Table(t) => Some(self.table(t)),
            Item::ArrayOfTables(a) => {
                let nodes: Vec<Node> = a.iter().map(|t| self.table(t)).collect();
                let loc = nodes.first().map_or_else(|| self.loc(a.span()), |n| n.loc);
                Some(Node {
                    loc,
                    kind: Kind::Array(nodes),
                })
            }
        }
    }

    fn table(&mut self, t: &toml_edit::Table) -> Node {
        let mut entries = Vec::new();
        for (k, item) in t.iter() {
            let key_loc = self.loc(t.key(k).and_then(|k| k.span()));
            if let Some(node) = self.item(item) {
                entries.push(Entry {
                    key: k.to_string(),
                    key_loc,
                    node,
                });
            }
        }
        let loc = match t.span() {
            Some(s) => self.loc(Some(s)),
            None => entries.first().map_or_else(Loc::default, |e| e.key_loc),
        };
        Node {
            loc,
            kind: Kind::Table(entries),
        }
    }

    fn value(&mut self, v: &toml_edit::Value) -> Option<Node> {
        use toml_edit::Value as V;
        let loc = self.loc(v.span());
        let kind = match v {
            V::String(s) => Kind::Leaf(Value::String(s.value().clone())),
            V::Integer(i) => Kind::Leaf(Value::from(*i.value())),
            V::Float(f) => match serde_json::Number::from_f64(*f.value()) {
                Some(n) => Kind::Leaf(Value::Number(n)),
                None => {
                    self.diags.push(loc, "", "nan and inf are not accepted");
                    return None;
                }
            },
            V::Boolean(b) => Kind::Leaf(Value::Bool(*b.value())),
            V::Datetime(_) => {
                self.diags
                    .push(loc, "", "dates and times are not accepted here");
                return None;
            }
            V::Array(a) => Kind::Array(a.iter().filter_map(|x| self.value(x)).collect()),
            V::InlineTable(t) => {
                let mut entries = Vec::new();
                for (k, x) in t.iter() {
                    let key_loc = self.loc(t.key(k).and_then(|k| k.span()));
                    if let Some(node) = self.value(x) {
                        entries.push(Entry {
                            key: k.to_string(),
                            key_loc,
                            node,
                        });
                    }
                }
                Kind::Table(entries)
            }
        };
        Some(Node { loc, kind })
    }
}

/// Leaves of a table as (dotted path, node, key location); nested tables are walked, an
/// array or a scalar is a leaf. Keys containing dots are paths too.
fn leaves<'a>(prefix: &str, entries: &'a [Entry], out: &mut Vec<(String, &'a Node, Loc)>) {
    for e in entries {
        let key = if prefix.is_empty() {
            e.key.clone()
        } else {
            format!("{prefix}.{}", e.key)
        };
        match &e.node.kind {
            Kind::Table(sub) if !sub.is_empty() => leaves(&key, sub, out),
            _ => out.push((key, &e.node, e.key_loc)),
        }
    }
}

fn find<'a>(entries: &'a [Entry], key: &str) -> Option<&'a Node> {
    entries.iter().find(|e| e.key == key).map(|e| &e.node)
}

// ---------------------------------------------------------------------------------------
// JSON helpers.

/// Set `path` (dotted) in an object, creating tables on the way; a table value merges into
/// an existing table, anything else replaces.
fn set_path(root: &mut Map<String, Value>, path: &str, value: Value) {
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

fn deep_merge(into: &mut Map<String, Value>, from: Map<String, Value>) {
    for (k, v) in from {
        match (into.get_mut(&k), v) {
            (Some(Value::Object(a)), Value::Object(b)) => deep_merge(a, b),
            (_, v) => {
                into.insert(k, v);
            }
        }
    }
}

fn get_path<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.')
        .try_fold(v, |cur, seg| cur.as_object()?.get(seg))
}

/// Equality for exclude matching: numbers compare by value (1 == 1.0).
fn same_value(a: &Value, b: &Value) -> bool {
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

/// The Experiment's key tree, with default `prune` and `recovery` tables so their keys
/// are known.
fn schema() -> Value {
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
            e.insert("latency".into(), Value::Bool(false));
        }
        if let Some(Value::Object(c)) = m.get_mut("prune").and_then(|p| p.get_mut("calib")) {
            c.insert("ids".into(), Value::String(String::new()));
        }
    }
    v
}

fn edit_distance(a: &str, b: &str) -> usize {
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
fn check_key(schema: &Value, path: &str) -> std::result::Result<(), String> {
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
fn check_value(path: &str, value: &Value) -> std::result::Result<(), String> {
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
    serde_json::from_value::<Experiment>(root)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

// ---------------------------------------------------------------------------------------
// The parsed grid.

#[derive(Debug, Clone)]
struct ModelEntry {
    source: ModelSource,
    loc: Loc,
}

#[derive(Debug, Clone)]
struct Dim {
    keys: Vec<String>,
    /// One row per position: the value of every key, with where it was written.
    rows: Vec<Vec<(Value, Loc)>>,
}

#[derive(Debug, Clone)]
struct Exclude {
    conds: Vec<(String, Value)>,
    loc: Loc,
}

#[derive(Debug, Clone, Default)]
struct Part {
    base: Map<String, Value>,
    model_loc: Loc,
    axes: Vec<Dim>,
    zips: Vec<Dim>,
    excludes: Vec<Exclude>,
    dense: Option<bool>,
}

#[derive(Debug, Clone)]
struct SubGrid {
    name: String,
    loc: Loc,
    base: Map<String, Value>,
    model_loc: Loc,
    dims: Vec<Dim>,
    /// Indices into `GridSpec::excludes`.
    excludes: Vec<usize>,
    dense: bool,
}

/// A loaded, validated grid file.
#[derive(Debug, Clone)]
pub struct GridSpec {
    path: PathBuf,
    models: BTreeMap<String, ModelEntry>,
    subgrids: Vec<SubGrid>,
    excludes: Vec<Exclude>,
    /// Model files the grid uses that are not on this machine, one message each: a plan
    /// (`--dry-run`, `--status`, a Slurm script) shows them as warnings, a run refuses.
    missing_models: Vec<String>,
}

const TOP_KEYS: &[&str] = &["base", "models", "axes", "zip", "exclude", "dense", "grids"];
const SUB_KEYS: &[&str] = &["base", "axes", "zip", "exclude", "dense"];
/// Refuse expansions beyond this many combinations per sub-grid (a typo guard).
const MAX_COMBINATIONS: usize = 100_000;

impl GridSpec {
    /// Read and validate a grid file. Every problem found is reported in one error that
    /// names the file and, per problem, the line:column and the key.
    pub fn load(path: impl AsRef<Path>) -> Result<GridSpec> {
        let path = path.as_ref();
        let src = crate::error::read_to_string(path)?;
        GridSpec::parse(&src, path)
    }

    /// [`GridSpec::load`] on text already read; `path` is used in messages only.
    pub fn parse(src: &str, path: &Path) -> Result<GridSpec> {
        let doc = toml_edit::ImDocument::parse(src).map_err(|e| {
            let loc = loc_of(src, &e.span());
            let at = if loc.line > 0 {
                format!("line {}:{}: ", loc.line, loc.col)
            } else {
                String::new()
            };
            Error::config(path, format!("{at}malformed TOML: {}", e.message().trim()))
        })?;
        let mut diags = Diags { items: Vec::new() };
        let root = {
            let mut conv = Converter {
                src,
                diags: &mut diags,
            };
            conv.table(doc.as_table())
        };
        let entries = root.table().unwrap_or(&[]);
        let schema = schema();

        for e in entries {
            if !TOP_KEYS.contains(&e.key.as_str()) {
                diags.push(
                    e.key_loc,
                    &e.key,
                    format!(
                        "unknown top-level key (expected one of: {})",
                        TOP_KEYS.join(", ")
                    ),
                );
            }
        }

        let models = match find(entries, "models") {
            Some(n) => parse_models(n, &mut diags),
            None => BTreeMap::new(),
        };
        let top = parse_part(entries, "", &schema, &mut diags);

        let mut spec = GridSpec {
            path: path.to_path_buf(),
            models,
            subgrids: Vec::new(),
            excludes: Vec::new(),
            missing_models: Vec::new(),
        };
        match find(entries, "grids") {
            None => {
                let sub = spec.combine("main", root.loc, &top, &Part::default(), &mut diags);
                spec.subgrids.push(sub);
            }
            Some(g) => {
                let Some(grids) = g.table() else {
                    diags.push(
                        g.loc,
                        "grids",
                        "must be a table of named sub-grids ([grids.NAME])",
                    );
                    diags.finish(path)?;
                    return Ok(spec);
                };
                if grids.is_empty() {
                    diags.push(g.loc, "grids", "no sub-grids defined");
                }
                // Shared excludes are registered once, then each sub-grid adds its own.
                let shared: Vec<usize> = top
                    .excludes
                    .iter()
                    .map(|x| {
                        spec.excludes.push(x.clone());
                        spec.excludes.len() - 1
                    })
                    .collect();
                for e in grids {
                    let Some(sub_entries) = e.node.table() else {
                        diags.push(
                            e.key_loc,
                            &format!("grids.{}", e.key),
                            "a sub-grid must be a table",
                        );
                        continue;
                    };
                    for se in sub_entries {
                        if !SUB_KEYS.contains(&se.key.as_str()) {
                            diags.push(
                                se.key_loc,
                                &format!("grids.{}.{}", e.key, se.key),
                                format!(
                                    "unknown sub-grid key (expected one of: {})",
                                    SUB_KEYS.join(", ")
                                ),
                            );
                        }
                    }
                    let part = parse_part(
                        sub_entries,
                        &format!("grids.{}.", e.key),
                        &schema,
                        &mut diags,
                    );
                    let mut sub =
                        spec.combine_shared(&e.key, e.key_loc, &top, &part, &shared, &mut diags);
                    sub.name = e.key.clone();
                    spec.subgrids.push(sub);
                }
            }
        }
        spec.missing_models = spec.check_models(&mut diags);
        diags.finish(path)?;
        Ok(spec)
    }

    /// Model files the grid uses that do not exist here (see [`GridSpec::require_models`]).
    pub fn missing_models(&self) -> &[String] {
        &self.missing_models
    }

    /// Refuse to run when a model file the grid uses is missing; planning commands only
    /// warn (a paper-scale grid is planned on a login node without the weights).
    pub fn require_models(&self) -> Result<()> {
        let diags = Diags {
            items: self.missing_models.clone(),
        };
        diags.finish(&self.path)
    }

    /// The file the grid came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sub-grid names in file order (`main` when the file has no `[grids]`).
    pub fn subgrid_names(&self) -> Vec<&str> {
        self.subgrids.iter().map(|s| s.name.as_str()).collect()
    }

    /// Named model sources of `[models]` (paths expanded).
    pub fn models(&self) -> impl Iterator<Item = (&str, &ModelSource)> {
        self.models.iter().map(|(k, v)| (k.as_str(), &v.source))
    }

    /// Where the weights of `name` come from: a `[models]` entry, or a directory given by
    /// path.
    pub fn model_source(&self, name: &str) -> Result<ModelSource> {
        if let Some(m) = self.models.get(name) {
            return Ok(m.source.clone());
        }
        let p = PathBuf::from(name);
        if p.is_dir() {
            return Ok(ModelSource::Path(p));
        }
        Err(Error::config(
            &self.path,
            format!("model `{name}` is neither a key of [models] nor an existing directory"),
        ))
    }

    fn combine(
        &mut self,
        name: &str,
        loc: Loc,
        top: &Part,
        sub: &Part,
        diags: &mut Diags,
    ) -> SubGrid {
        let shared: Vec<usize> = top
            .excludes
            .iter()
            .map(|x| {
                self.excludes.push(x.clone());
                self.excludes.len() - 1
            })
            .collect();
        self.combine_shared(name, loc, top, sub, &shared, diags)
    }

    /// Shared part + sub-grid part -> one sub-grid (sub-grid axes replace shared ones).
    fn combine_shared(
        &mut self,
        name: &str,
        loc: Loc,
        top: &Part,
        sub: &Part,
        shared_excludes: &[usize],
        diags: &mut Diags,
    ) -> SubGrid {
        let mut base = top.base.clone();
        deep_merge(&mut base, sub.base.clone());
        let model_loc = if sub.base.contains_key("model") {
            sub.model_loc
        } else {
            top.model_loc
        };
        let sub_keys: Vec<&String> = sub
            .axes
            .iter()
            .chain(&sub.zips)
            .flat_map(|d| &d.keys)
            .collect();
        let mut dims: Vec<Dim> = top
            .axes
            .iter()
            .filter(|d| !sub_keys.contains(&&d.keys[0]))
            .cloned()
            .collect();
        dims.extend(sub.axes.iter().cloned());
        for z in &top.zips {
            if let Some(k) = z.keys.iter().find(|k| sub_keys.contains(k)) {
                diags.push(
                    loc,
                    k,
                    format!("sub-grid `{name}` varies a key that a shared [[zip]] also sets"),
                );
            }
        }
        dims.extend(top.zips.iter().cloned());
        dims.extend(sub.zips.iter().cloned());
        // A key may be set by one dimension only.
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for (i, d) in dims.iter().enumerate() {
            for k in &d.keys {
                if let Some(j) = seen.insert(k, i) {
                    if j != i {
                        let at = d
                            .rows
                            .first()
                            .and_then(|r| r.first())
                            .map_or(loc, |(_, l)| *l);
                        diags.push(at, k, "set by two axes (an axis and a zip, or two zips)");
                    }
                }
            }
        }
        let mut excludes = shared_excludes.to_vec();
        for x in &sub.excludes {
            self.excludes.push(x.clone());
            excludes.push(self.excludes.len() - 1);
        }
        SubGrid {
            name: name.to_string(),
            loc,
            base,
            model_loc,
            dims,
            excludes,
            dense: sub.dense.or(top.dense).unwrap_or(false),
        }
    }

    /// Every model a sub-grid can use must be known (else an error in `diags`); the
    /// problems of those whose files do not exist here are returned.
    fn check_models(&self, diags: &mut Diags) -> Vec<String> {
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

    /// Expand into runs: per sub-grid the cartesian product of its axes (zips advance
    /// together), excludes removed, dense runs added; then the union over sub-grids with
    /// identical runs (same hash) kept once. Order: sub-grids in file order, dense runs
    /// first, then combinations with the first axis outermost.
    pub fn expand(&self) -> Result<Vec<RunSpec>> {
        let mut diags = Diags { items: Vec::new() };
        let mut matched = vec![false; self.excludes.len()];
        let mut runs: Vec<RunSpec> = Vec::new();
        let mut by_hash: HashMap<String, usize> = HashMap::new();
        for s in &self.subgrids {
            for run in self.expand_one(s, &mut matched, &mut diags) {
                match by_hash.get(&run.hash) {
                    Some(&i) => {
                        if let Some(r) = runs.get_mut(i) {
                            if !r.subgrid.split(',').any(|x| x == s.name) {
                                r.subgrid = format!("{},{}", r.subgrid, s.name);
                            }
                        }
                    }
                    None => {
                        by_hash.insert(run.hash.clone(), runs.len());
                        runs.push(run);
                    }
                }
            }
        }
        for (x, hit) in self.excludes.iter().zip(&matched) {
            if !*hit {
                let keys: Vec<String> = x.conds.iter().map(|(k, v)| format!("{k} = {v}")).collect();
                diags.push(
                    x.loc,
                    "exclude",
                    format!(
                        "{{ {} }} matches no combination (check the values)",
                        keys.join(", ")
                    ),
                );
            }
        }
        diags.finish(&self.path)?;
        // Names are labels: disambiguate the rare clash with the hash.
        let mut count: HashMap<String, usize> = HashMap::new();
        for r in &runs {
            *count.entry(r.name.clone()).or_default() += 1;
        }
        for r in &mut runs {
            if count.get(&r.name).copied().unwrap_or(0) > 1 {
                r.name = format!("{}#{}", r.name, r.hash.get(..8).unwrap_or(&r.hash));
            }
        }
        Ok(runs)
    }

    fn expand_one(&self, s: &SubGrid, matched: &mut [bool], diags: &mut Diags) -> Vec<RunSpec> {
        let mut reported = 0usize;
        let kept = self.combinations(s, matched, diags, &mut reported);
        let varied = varied_keys(s, &kept);
        let mut out: Vec<RunSpec> = Vec::new();
        if s.dense {
            let mut seen: Vec<String> = Vec::new();
            for (assign, exp) in &kept {
                // A dense run has nothing to prune and nothing to recover.
                let mut dense = exp.clone();
                dense.prune = None;
                dense.recovery = RecoveryConfig::default();
                let h = dense.hash();
                if seen.contains(&h) {
                    continue;
                }
                seen.push(h);
                let name = run_name(&dense, assign, &varied);
                out.push(RunSpec::new(name, s.name.clone(), dense));
            }
        }
        for (assign, mut exp) in kept {
            if let Some(msg) = run_problem(&exp) {
                if reported < 3 {
                    let what: Vec<String> =
                        assign.iter().map(|(k, v)| format!("{k} = {v}")).collect();
                    diags.push(
                        s.loc,
                        &s.name,
                        format!("combination {{ {} }}: {msg}", what.join(", ")),
                    );
                }
                reported += 1;
                continue;
            }
            if exp.recovery.is_none() {
                // Settings of a recovery that does not run are no part of the run.
                exp.recovery = RecoveryConfig::default();
            }
            let name = run_name(&exp, &assign, &varied);
            out.push(RunSpec::new(name, s.name.clone(), exp));
        }
        out
    }

    /// The sub-grid's combinations that deserialise and survive the excludes, each with
    /// its axis assignments. Combinations that fail are reported (the first three).
    fn combinations(
        &self,
        s: &SubGrid,
        matched: &mut [bool],
        diags: &mut Diags,
        reported: &mut usize,
    ) -> Vec<(Assign, Experiment)> {
        let sizes: Vec<usize> = s.dims.iter().map(|d| d.rows.len()).collect();
        let total = sizes.iter().try_fold(1usize, |acc, &n| acc.checked_mul(n));
        match total {
            Some(n) if n <= MAX_COMBINATIONS => {}
            _ => {
                diags.push(
                    s.loc,
                    &s.name,
                    format!("more than {MAX_COMBINATIONS} combinations; split the grid"),
                );
                return Vec::new();
            }
        }
        let mut kept: Vec<(Assign, Experiment)> = Vec::new();
        if sizes.contains(&0) {
            return kept;
        }
        let mut idx = vec![0usize; sizes.len()];
        loop {
            let mut assign: Assign = Vec::new();
            let mut json = s.base.clone();
            for (d, &i) in s.dims.iter().zip(&idx) {
                for (k, (v, _)) in d
                    .keys
                    .iter()
                    .zip(d.rows.get(i).map(Vec::as_slice).unwrap_or(&[]))
                {
                    set_path(&mut json, k, v.clone());
                    assign.push((k.clone(), v.clone()));
                }
            }
            // An ids file is part of the run's identity through its content hash.
            let resolved = Experiment::from_value(Value::Object(json)).and_then(|mut exp| {
                if let Some(p) = exp.prune.as_mut() {
                    p.calib.resolve()?;
                }
                Ok(exp)
            });
            match resolved {
                Ok(exp) => {
                    if !self.excluded(s, &exp, matched) {
                        kept.push((assign, exp));
                    }
                }
                Err(e) => {
                    if *reported < 3 {
                        let what: Vec<String> =
                            assign.iter().map(|(k, v)| format!("{k} = {v}")).collect();
                        diags.push(
                            s.loc,
                            &s.name,
                            format!("combination {{ {} }}: {e}", what.join(", ")),
                        );
                    }
                    *reported += 1;
                }
            }
            if !odometer_step(&mut idx, &sizes) {
                return kept;
            }
        }
    }

    /// Does an exclude of the sub-grid drop `exp`? Every exclude that matches is marked.
    fn excluded(&self, s: &SubGrid, exp: &Experiment, matched: &mut [bool]) -> bool {
        let mut resolved = exp.to_value();
        if let Some(m) = resolved.as_object_mut() {
            // Left out of the hashed form when off; matched as any other key here.
            m.entry("recovery")
                .or_insert_with(|| serde_json::to_value(&exp.recovery).unwrap_or(Value::Null));
        }
        let mut drop = false;
        for &xi in &s.excludes {
            let Some(x) = self.excludes.get(xi) else {
                continue;
            };
            let hit = x
                .conds
                .iter()
                .all(|(k, v)| get_path(&resolved, k).is_some_and(|r| same_value(r, v)));
            if hit {
                if let Some(m) = matched.get_mut(xi) {
                    *m = true;
                }
                drop = true;
            }
        }
        drop
    }
}

/// Axis assignments of one combination: (dotted key, value).
type Assign = Vec<(String, Value)>;

/// Advance a mixed-radix counter, last digit fastest; false once it wraps around.
fn odometer_step(idx: &mut [usize], sizes: &[usize]) -> bool {
    for d in (0..idx.len()).rev() {
        idx[d] += 1;
        if idx[d] < sizes[d] {
            return true;
        }
        idx[d] = 0;
    }
    false
}

/// Keys that take more than one value among the kept combinations (they name the runs),
/// in name order: method, merge, the other keys as declared, the pruning level, then the
/// recovery.
fn varied_keys(s: &SubGrid, kept: &[(Assign, Experiment)]) -> Vec<String> {
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
fn run_name(exp: &Experiment, assign: &Assign, varied: &[String]) -> String {
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
fn run_problem(exp: &Experiment) -> Option<String> {
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

fn model_label(model: &str) -> String {
    Path::new(model)
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| model.to_string())
}

/// A short label of one varied value for run names.
fn value_label(key: &str, v: &Value) -> String {
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

fn parse_models(node: &Node, diags: &mut Diags) -> BTreeMap<String, ModelEntry> {
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
        if !ok {
            continue;
        }
        let kinds = ["path", "gguf", "llama2c"]
            .iter()
            .filter(|k| vals.contains_key(*k))
            .count();
        let source = match (
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
                diags.push(e.key_loc, &key, "a llama2c model needs `tokenizer = FILE`");
                None
            }
            _ if kinds != 1 => {
                diags.push(e.key_loc, &key, "give exactly one of path, gguf, llama2c");
                None
            }
            _ => {
                diags.push(
                    e.key_loc,
                    &key,
                    "`tokenizer` belongs to llama2c models only",
                );
                None
            }
        };
        if let Some(source) = source {
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

/// Expand `${VAR}` in a path: the crate's roots with their defaults, else the environment.
fn expand_vars(s: &str) -> std::result::Result<String, String> {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let Some(j) = after.find('}') else {
            return Err(format!("unterminated `${{` in `{s}`"));
        };
        let name = &after[..j];
        let value = match name {
            "COME_MODELS" => crate::paths::models_dir().to_string_lossy().into_owned(),
            "COME_DATA" => crate::paths::data_dir().to_string_lossy().into_owned(),
            "COME_WORK" => crate::paths::work_dir().to_string_lossy().into_owned(),
            other => std::env::var(other)
                .map_err(|_| format!("environment variable `{other}` is not set (in `{s}`)"))?,
        };
        out.push_str(&value);
        rest = &after[j + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The base / axes / zip / exclude / dense keys of the top level or of one sub-grid.
fn parse_part(entries: &[Entry], prefix: &str, schema: &Value, diags: &mut Diags) -> Part {
    let mut part = Part::default();
    for e in entries {
        let here = format!("{prefix}{}", e.key);
        match e.key.as_str() {
            "base" => {
                let Some(t) = e.node.table() else {
                    diags.push(e.key_loc, &here, "must be a table (a partial experiment)");
                    continue;
                };
                let mut ls = Vec::new();
                leaves("", t, &mut ls);
                for (k, node, kloc) in ls {
                    if let Err(m) = check_key(schema, &k) {
                        diags.push(kloc, &k, m);
                        continue;
                    }
                    let v = node.to_json();
                    if let Err(m) = check_value(&k, &v) {
                        diags.push(node.loc, &k, m);
                        continue;
                    }
                    if k == "model" {
                        part.model_loc = node.loc;
                    }
                    set_path(&mut part.base, &k, v);
                }
            }
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
            "zip" => {
                let groups: Vec<&Node> = match &e.node.kind {
                    Kind::Array(a) => a.iter().collect(),
                    Kind::Table(_) => vec![&e.node],
                    Kind::Leaf(_) => {
                        diags.push(
                            e.key_loc,
                            &here,
                            "must be [[zip]] tables of equal-length arrays",
                        );
                        continue;
                    }
                };
                for g in groups {
                    let Some(t) = g.table() else {
                        diags.push(g.loc, &here, "each [[zip]] entry must be a table");
                        continue;
                    };
                    let mut ls = Vec::new();
                    leaves("", t, &mut ls);
                    let axes: Vec<Dim> = ls
                        .into_iter()
                        .filter_map(|(k, node, kloc)| parse_axis(&k, node, kloc, schema, diags))
                        .collect();
                    if axes.is_empty() {
                        diags.push(g.loc, &here, "empty [[zip]] group");
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
            "exclude" => {
                let Kind::Array(items) = &e.node.kind else {
                    diags.push(
                        e.key_loc,
                        &here,
                        "must be an array of tables: [{ \"key\" = value, ... }]",
                    );
                    continue;
                };
                for it in items {
                    let Some(t) = it.table() else {
                        diags.push(
                            it.loc,
                            &here,
                            "each entry must be a table { \"key\" = value }",
                        );
                        continue;
                    };
                    let mut ls = Vec::new();
                    leaves("", t, &mut ls);
                    let mut conds = Vec::new();
                    let mut ok = !ls.is_empty();
                    if ls.is_empty() {
                        diags.push(it.loc, &here, "empty exclude entry would drop every run");
                    }
                    for (k, node, kloc) in ls {
                        if let Err(m) = check_key(schema, &k) {
                            diags.push(kloc, &k, m);
                            ok = false;
                            continue;
                        }
                        let v = node.to_json();
                        if let Err(m) = check_value(&k, &v) {
                            diags.push(node.loc, &k, m);
                            ok = false;
                            continue;
                        }
                        conds.push((k, v));
                    }
                    if ok {
                        part.excludes.push(Exclude { conds, loc: it.loc });
                    }
                }
            }
            "dense" => match &e.node.kind {
                Kind::Leaf(Value::Bool(b)) => part.dense = Some(*b),
                _ => diags.push(e.node.loc, &here, "expected true or false"),
            },
            _ => {}
        }
    }
    part
}

/// One axis: a known key and a non-empty array of values that each deserialise.
/// A repeated value in an axis (a seed list `[0, 1, 0]`) would silently give fewer runs
/// than the list promises: the repeat has the same hash and is kept once. (A zip may
/// repeat a value in one of its columns: its rows differ in another.)
fn no_repeats(d: &Dim, diags: &mut Diags) -> bool {
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

fn parse_axis(key: &str, node: &Node, kloc: Loc, schema: &Value, diags: &mut Diags) -> Option<Dim> {
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
