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
//! # latency = "sleb"        # prefill/generation speed (SLEB's protocol; true = "sleb",
//!                           # "short" = batch-1 512+64); tables gain speed-ups
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
//! (dense runs `smollm2/dense`, a varied recovery method ends in `recovery=lora`); the runs
//! of a sub-grid whose names would clash with another sub-grid's (they differ only in their
//! bases) carry the sub-grid's name after the model (`smollm2/lora/concat`), and a name
//! still shared gets `#` and the first eight hex digits of the hash appended.
//!
//! Every problem is reported before any run starts, all at once, each with the line and
//! column in the file and the key: malformed TOML, unknown keys (with a suggestion), values
//! of the wrong type, unknown methods / merges / tasks, unknown models, missing model files,
//! zips of unequal lengths, excludes that match nothing, pruned runs without a target,
//! recovery (`[base.recovery]`, axes such as `"recovery.method" = ["none", "lora"]`)
//! without a pruned model or with settings that cannot train, task data or perplexity
//! texts (`eval.task_paths`, `eval.ppl_texts`) that do not exist, and a key a sub-grid
//! sets (its base or an axis) that none of its runs reads (`recovery.lr` under LoRA,
//! `prune.merge` under ShortGPT; the shared `[base]` is exempt).

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

mod expand;
mod json_path;
mod models;
mod naming;
mod parts;
mod schema;
mod settings;
mod source;

use expand::*;
use json_path::*;
use models::*;
use naming::*;
use parts::*;
use schema::*;
use source::*;

pub use settings::apply_settings;

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
        let doc = toml_document(src, path)?;
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
        check_top_keys(entries, &mut diags);

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
                spec.add_subgrids(g.loc, grids, &top, &schema, &mut diags);
            }
        }
        spec.missing_models = spec.check_models(&mut diags);
        diags.finish(path)?;
        Ok(spec)
    }

    /// Expand each `[grids.NAME]` on top of the shared `top` part: the shared excludes
    /// are registered once, then every sub-grid adds its own.
    fn add_subgrids(
        &mut self,
        loc: Loc,
        grids: &[Entry],
        top: &Part,
        schema: &Value,
        diags: &mut Diags,
    ) {
        if grids.is_empty() {
            diags.push(loc, "grids", "no sub-grids defined");
        }
        let shared: Vec<usize> = top
            .excludes
            .iter()
            .map(|x| {
                self.excludes.push(x.clone());
                self.excludes.len() - 1
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
            check_sub_keys(&e.key, sub_entries, diags);
            let part = parse_part(sub_entries, &format!("grids.{}.", e.key), schema, diags);
            let mut sub = self.combine_shared(&e.key, e.key_loc, top, &part, &shared, diags);
            sub.name = e.key.clone();
            self.subgrids.push(sub);
        }
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
}

/// The TOML document of `src`, or the parser's message with its line:column.
fn toml_document<'s>(src: &'s str, path: &Path) -> Result<toml_edit::ImDocument<&'s str>> {
    toml_edit::ImDocument::parse(src).map_err(|e| {
        let loc = loc_of(src, &e.span());
        let at = if loc.line > 0 {
            format!("line {}:{}: ", loc.line, loc.col)
        } else {
            String::new()
        };
        Error::config(path, format!("{at}malformed TOML: {}", e.message().trim()))
    })
}

/// Report every top-level key that is not one of [`TOP_KEYS`].
fn check_top_keys(entries: &[Entry], diags: &mut Diags) {
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
}

/// Report every key of sub-grid `name` that is not one of [`SUB_KEYS`].
fn check_sub_keys(name: &str, entries: &[Entry], diags: &mut Diags) {
    for se in entries {
        if !SUB_KEYS.contains(&se.key.as_str()) {
            diags.push(
                se.key_loc,
                &format!("grids.{name}.{}", se.key),
                format!(
                    "unknown sub-grid key (expected one of: {})",
                    SUB_KEYS.join(", ")
                ),
            );
        }
    }
}
