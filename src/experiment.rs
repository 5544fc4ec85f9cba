//! One fully resolved experiment: which model, how it is pruned and recovered, how it is
//! evaluated and on what runtime. Every field has an explicit default. Its run hash is
//! the sha256 of its identity form ([`Identity`], written out field by field by each
//! config), not of its serialised layout: grids and stores read the serde form, which
//! can change without moving a hash.

use crate::calib::CalibConfig;
use crate::error::{Error, Result};
use crate::eval::latency::Protocol;
use crate::eval::perplexity::PplProtocol;
use crate::hashing::{hash_value, Fields, Identity};
use crate::prune::PruneConfig;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EvalConfig {
    /// Zero-shot tasks (lm-eval names): piqa, hellaswag, winogrande, arc_easy,
    /// arc_challenge, boolq, openbookqa, mmlu.
    pub tasks: Vec<String>,
    /// First N documents per task (lm-eval `--limit`), or a seeded sample when `seed` is set.
    pub limit: Option<usize>,
    pub fraction: Option<f64>,
    pub seed: Option<u64>,
    pub mmlu_fewshot: usize,
    /// WikiText-2 perplexity window length (None: no perplexity).
    pub ppl_seqlen: Option<usize>,
    pub ppl_windows: Option<usize>,
    /// Which tokens of each window are scored: `gptq` (all but the first, the default)
    /// or `llama_cpp` (the second half, as `llama-perplexity`). Left out when default.
    #[serde(default, skip_serializing_if = "PplProtocol::is_default")]
    pub ppl_protocol: PplProtocol,
    /// Also C4 validation perplexity (GPTQ's stream, the user's copy: `COME_C4` or
    /// `DATA/c4/`), at `ppl_seqlen`, `ppl_windows` or 256 windows. Left out of the
    /// serialised form when false, so hashes of runs made before it existed still match.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub ppl_c4: bool,
    /// Also perplexity on the held-out WikiText-2 train rows (`wikitext2_val`: the
    /// validation text of `recovery.validation = held_out`, never trained on), for
    /// choosing recovery settings without the test set. Left out when false.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub ppl_val: bool,
    /// Also perplexity on out-of-domain text (`tasks_ood`: HellaSwag and PIQA gold
    /// answers, which no recovery trains on). Left out when false.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub ppl_ood: bool,
    /// Also time prefill and generation under a named protocol (`"sleb"` or `"short"`,
    /// see [`crate::eval::latency`]): tables gain speed-up columns. Left out when off.
    /// The short protocol is written `true`, the form (and hash) of the runs timed before
    /// protocols had names; a grid's `latency = true` asks for the default, sleb.
    #[serde(skip_serializing_if = "Option::is_none", with = "latency_field")]
    pub latency: Option<Protocol>,
    /// Timed iterations of prefill and of generation, `[prefill, generation]`, in place of
    /// the protocol's (sleb: 50 and 10; short: 5 rounds of both), for CPU runs. The shapes
    /// stay the protocol's; the metric's context records the iterations. Left out when
    /// unset.
    #[serde(
        skip_serializing_if = "Option::is_none",
        deserialize_with = "positive_pair"
    )]
    pub latency_iters: Option<[usize; 2]>,
    /// Padded tokens per scoring batch, or `"auto"` (sized for the device). Either backs
    /// off when a batch runs out of memory.
    pub token_budget: crate::eval::batching::BatchSize,
    /// Task name -> its data (a file in the shared format or a Hugging Face schema, or a
    /// directory of the shared layout) in place of the data directory's, as `eval
    /// --task-path`; `${COME_DATA}` and environment variables expand when read. The run
    /// records the sha256 of every file read. Left out when empty.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub task_paths: BTreeMap<String, String>,
    /// Encode with the tokenizer's special tokens (BOS), as lm-eval 0.4.13 does; false
    /// encodes without them, as lm-eval before its PR #3347 (`eval --no-special-tokens`).
    /// Left out when true.
    #[serde(skip_serializing_if = "is_true")]
    pub special_tokens: bool,
    /// Also perplexity on each of these UTF-8 text files, one stream each, at `ppl_seqlen`
    /// (as `eval --ppl FILE`; recorded under the file's stem); variables expand when read.
    /// Left out when empty.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ppl_texts: Vec<String>,
}

fn is_true(b: &bool) -> bool {
    *b
}

impl Default for EvalConfig {
    fn default() -> Self {
        EvalConfig {
            // The seven zero-shot tasks, lm-eval order.
            tasks: crate::names::SEVEN_TASKS_LM_EVAL
                .iter()
                .map(|t| t.to_string())
                .collect(),
            limit: None,
            fraction: None,
            seed: None,
            mmlu_fewshot: 0,
            ppl_seqlen: Some(2048),
            ppl_windows: None,
            ppl_protocol: PplProtocol::default(),
            ppl_c4: false,
            ppl_val: false,
            ppl_ood: false,
            latency: None,
            latency_iters: None,
            token_budget: crate::eval::batching::BatchSize::default(),
            task_paths: BTreeMap::new(),
            special_tokens: true,
            ppl_texts: Vec::new(),
        }
    }
}

/// Identity v1: every field under its serde name; the perplexity protocol, the extra
/// corpora, latency, task paths, special tokens and text files only away from their first
/// default (they came later).
impl Identity for EvalConfig {
    fn identity(&self) -> Value {
        let EvalConfig {
            tasks,
            limit,
            fraction,
            seed,
            mmlu_fewshot,
            ppl_seqlen,
            ppl_windows,
            ppl_protocol,
            ppl_c4,
            ppl_val,
            ppl_ood,
            latency,
            latency_iters,
            token_budget,
            task_paths,
            special_tokens,
            ppl_texts,
        } = self;
        let latency_spelling =
            latency_field::serialize(latency, serde_json::value::Serializer).unwrap_or(Value::Null);
        Fields::new()
            .leaf("tasks", tasks)
            .leaf("limit", limit)
            .leaf("fraction", fraction)
            .leaf("seed", seed)
            .leaf("mmlu_fewshot", mmlu_fewshot)
            .leaf("ppl_seqlen", ppl_seqlen)
            .leaf("ppl_windows", ppl_windows)
            .opt_in(!ppl_protocol.is_default(), "ppl_protocol", ppl_protocol)
            .opt_in(*ppl_c4, "ppl_c4", ppl_c4)
            .opt_in(*ppl_val, "ppl_val", ppl_val)
            .opt_in(*ppl_ood, "ppl_ood", ppl_ood)
            .opt_in(latency.is_some(), "latency", &latency_spelling)
            .opt_in(latency_iters.is_some(), "latency_iters", latency_iters)
            .leaf("token_budget", token_budget)
            .opt_in(!task_paths.is_empty(), "task_paths", task_paths)
            .opt_in(!special_tokens, "special_tokens", special_tokens)
            .opt_in(!ppl_texts.is_empty(), "ppl_texts", ppl_texts)
            .done()
    }
}

impl EvalConfig {
    pub fn subset(&self) -> crate::eval::tasks::Subset {
        crate::eval::tasks::Subset {
            limit: self.limit,
            fraction: self.fraction,
            seed: self.seed,
        }
    }

    /// The latency spec of this evaluation, if it times latency.
    pub fn latency_spec(&self) -> Option<crate::eval::latency::LatencySpec> {
        self.latency
            .map(|p| p.spec().with_iters(self.latency_iters))
    }

    /// Counts and sizes in range (task names are checked where the data is found).
    pub fn validate(&self) -> Result<()> {
        self.subset().validate()?;
        if let Some(t) = (self.task_paths.keys())
            .find(|t| !crate::eval::tasks::known_tasks().contains(&t.as_str()))
        {
            return Err(Error::Invalid(format!(
                "`eval.task_paths` names an unknown task `{t}` (known: {})",
                crate::eval::tasks::known_tasks().join(", ")
            )));
        }

        check_eval_sizes(self.mmlu_fewshot, self.ppl_seqlen, self.ppl_windows)
    }
}

/// Two counts, each at least 1 (checked while reading, so a grid's error has its line).
fn positive_pair<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<[usize; 2]>, D::Error> {
    let v = Option::<[usize; 2]>::deserialize(d)?;
    if let Some(it) = v.filter(|it| it.contains(&0)) {
        return Err(serde::de::Error::custom(format!(
            "iterations must be at least 1 each, got {it:?}"
        )));
    }
    Ok(v)
}

/// `eval.latency` in its stored form: false (off), `"sleb"`, `"short"`, or `true` for the
/// short protocol (what every run stored before protocols had names measured).
mod latency_field {
    use super::Protocol;
    use serde::de::{self, Visitor};
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Protocol>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            None => s.serialize_bool(false),
            Some(Protocol::Short) => s.serialize_bool(true),
            Some(p) => s.serialize_str(p.name()),
        }
    }

    struct Latency;

    impl Visitor<'_> for Latency {
        type Value = Option<Protocol>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("false, \"sleb\" or \"short\"")
        }
        fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
            Ok(v.then_some(Protocol::Short))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            match v {
                "sleb" => Ok(Some(Protocol::Sleb)),
                "short" => Ok(Some(Protocol::Short)),
                _ => Err(E::invalid_value(de::Unexpected::Str(v), &self)),
            }
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Protocol>, D::Error> {
        d.deserialize_any(Latency)
    }
}

/// The ranges of the evaluation sizes, shared by grids and `come-repro eval`: MMLU's dev
/// split has 5 examples per subject; a window needs a token to predict from; zero windows
/// is no perplexity at all.
pub fn check_eval_sizes(
    mmlu_fewshot: usize,
    ppl_seqlen: Option<usize>,
    ppl_windows: Option<usize>,
) -> Result<()> {
    if mmlu_fewshot > 5 {
        return Err(Error::Invalid(format!(
            "`mmlu_fewshot` must be 0..=5 (MMLU's dev split has 5 examples per subject), got {mmlu_fewshot}"
        )));
    }
    if let Some(n) = ppl_seqlen.filter(|&n| n < 2) {
        return Err(Error::Invalid(format!(
            "perplexity `seqlen` must be at least 2, got {n}"
        )));
    }
    if ppl_windows == Some(0) {
        return Err(Error::Invalid(
            "perplexity `windows` must be at least 1 (leave it out for all)".into(),
        ));
    }
    Ok(())
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    pub device: crate::runtime::DeviceSpec,
    pub dtype: crate::runtime::Dtype,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            device: crate::runtime::DeviceSpec::Cpu,
            dtype: crate::runtime::Dtype::F32,
        }
    }
}

impl Identity for RuntimeConfig {
    fn identity(&self) -> Value {
        let RuntimeConfig { device, dtype } = self;
        Fields::new()
            .leaf("device", device)
            .leaf("dtype", dtype)
            .done()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Experiment {
    /// A key of the grid's `[models]` table, or a checkpoint directory.
    pub model: String,
    /// None: the dense model.
    pub prune: Option<PruneConfig>,
    /// Recovery of the pruned model before evaluation (default: none). Left out of the
    /// serialised form when its method is `none`, so hashes of runs made before it
    /// existed still match.
    #[serde(skip_serializing_if = "crate::distill::RecoveryConfig::is_none")]
    pub recovery: crate::distill::RecoveryConfig,
    pub eval: EvalConfig,
    pub runtime: RuntimeConfig,
}

impl Default for Experiment {
    fn default() -> Self {
        Experiment {
            model: "smollm2-135m".into(),
            prune: None,
            recovery: crate::distill::RecoveryConfig::default(),
            eval: EvalConfig::default(),
            runtime: RuntimeConfig::default(),
        }
    }
}

/// The run identity, version [`IDENTITY_VERSION`]: the model key, the prune settings (null
/// for a dense run), the recovery settings (left out when none), the evaluation and the
/// runtime, each written out field by field by its config. Version 1 is the layout the
/// serialised `Experiment` had when the first runs were stored (no version key); a later
/// version adds `"identity": N` at the top, so no two versions can share a hash.
impl Identity for Experiment {
    fn identity(&self) -> Value {
        let Experiment {
            model,
            prune,
            recovery,
            eval,
            runtime,
        } = self;
        let prune = prune.as_ref().map_or(Value::Null, |p| p.identity());
        Fields::new()
            .leaf("model", model)
            .leaf("prune", &prune)
            .opt_in(!recovery.is_none(), "recovery", &recovery.identity())
            .part("eval", eval)
            .part("runtime", runtime)
            .done()
    }
}

/// The version of the run identity's form ([`Experiment`]'s `Identity`).
pub const IDENTITY_VERSION: u32 = 1;

impl Experiment {
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }

    /// The run identity: sha256 (hex) of the canonical JSON of its identity form, not of
    /// its serialised layout.
    pub fn hash(&self) -> String {
        self.identity_hash()
    }

    /// Identity of the pruned checkpoint: only what changes its weights.
    pub fn prune_hash(&self) -> Option<String> {
        let p = self.prune.as_ref()?;
        let v = serde_json::json!({ "model": self.model, "prune": p.identity(), "dtype": self.runtime.dtype });
        Some(hash_value(&v))
    }

    pub fn from_value(v: serde_json::Value) -> Result<Self> {
        serde_json::from_value(v).map_err(|e| Error::Invalid(format!("invalid experiment: {e}")))
    }
}

/// Default calibration used when an experiment does not override it.
pub fn default_calib() -> CalibConfig {
    CalibConfig::default()
}

/// Where a model's weights come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// A Hugging Face checkpoint directory (config.json + safetensors).
    Path(PathBuf),
    /// A GGUF file (weights and tokenizer inside).
    Gguf(PathBuf),
    /// A llama2.c checkpoint with its tokenizer file.
    Llama2c { model: PathBuf, tokenizer: PathBuf },
}

impl ModelSource {
    /// The files (or directory) that must exist.
    pub fn paths(&self) -> Vec<&Path> {
        match self {
            ModelSource::Path(p) | ModelSource::Gguf(p) => vec![p],
            ModelSource::Llama2c { model, tokenizer } => vec![model, tokenizer],
        }
    }
}

/// One run of a grid: a resolved experiment and its identity.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSpec {
    /// Human-readable label built from the varied keys (not an identity).
    pub name: String,
    /// The sub-grid(s) that produced the run, comma-separated (`main` without `[grids]`).
    pub subgrid: String,
    pub experiment: Experiment,
    /// [`Experiment::hash`].
    pub hash: String,
}

impl RunSpec {
    pub fn new(
        name: impl Into<String>,
        subgrid: impl Into<String>,
        experiment: Experiment,
    ) -> RunSpec {
        let hash = experiment.hash();
        RunSpec {
            name: name.into(),
            subgrid: subgrid.into(),
            experiment,
            hash,
        }
    }

    /// The experiment as dotted-path leaves (`prune.sparsity` -> 0.3); see [`flatten`].
    pub fn params(&self) -> BTreeMap<String, Value> {
        flatten(&self.experiment.to_value())
    }
}

/// Dotted-path leaves of a JSON object: objects are walked, arrays and scalars (null
/// included) are leaves. `{"prune": null}` gives `prune = null` (a dense run).
pub fn flatten(v: &Value) -> BTreeMap<String, Value> {
    fn walk(prefix: &str, v: &Value, out: &mut BTreeMap<String, Value>) {
        match v {
            Value::Object(m) if !m.is_empty() => {
                for (k, x) in m {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, x, out);
                }
            }
            other => {
                out.insert(prefix.to_string(), other.clone());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk("", v, &mut out);
    out
}
