//! `come-repro eval`: zero-shot tasks scored exactly as lm-evaluation-harness does, and
//! WikiText-2 (or any text's) perplexity; lm-eval-compatible JSON with `--output`.

use super::bars::Bars;
use super::common::RuntimeArgs;
use anyhow::{bail, Context, Result};
use clap::Args;
use come_repro::eval::batching::BatchSize;
use come_repro::eval::harness::TaskResult;
use come_repro::eval::latency::{Latency, Protocol};
use come_repro::eval::perplexity::PplProtocol;
use come_repro::eval::perplexity::PplResult;
use come_repro::eval::ppl_corpus::Corpus;
use come_repro::eval::profile::ScoreProfile;
use come_repro::eval::results::{lm_eval_json, table, RunInfo};
use come_repro::eval::tasks::known_tasks;
use come_repro::experiment::EvalConfig;
use come_repro::names;
use come_repro::stages::{EvalStage, Stage, StageCtx};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The grid's eval defaults, which the flags share.
static DEFAULT: std::sync::LazyLock<EvalConfig> = std::sync::LazyLock::new(EvalConfig::default);

#[derive(Args)]
pub struct EvalArgs {
    #[arg(long)]
    pub model: PathBuf,
    /// Comma-separated tasks: piqa, hellaswag, winogrande, arc_easy, arc_challenge, boolq,
    /// openbookqa, mmlu; `all7` for the seven zero-shot benchmarks.
    #[arg(long, value_delimiter = ',')]
    pub tasks: Vec<String>,
    /// First N documents per task (lm-eval --limit), or a seeded sample with --seed.
    #[arg(long)]
    pub limit: Option<usize>,
    /// A fraction of each task's documents (rounded up), instead of --limit.
    #[arg(long, conflicts_with = "limit")]
    pub fraction: Option<f64>,
    /// Sample the subset with this seed instead of taking the first documents.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Padded tokens per forward, or `auto` (4096 on CPU; on CUDA 65536, halved while a
    /// batch runs out of memory). A fixed size backs off the same way.
    /// (A grid's `eval.token_budget` defaults to 4096, which is `auto` on a CPU; it keeps
    /// that number so the hashes of runs made before `auto` existed stay.)
    #[arg(long, default_value = "auto")]
    pub batch_size: BatchSize,
    /// Root of the task data (default: $COME_DATA or ../shared/data).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Per-task data file or directory, e.g. `--task-path hellaswag=hs.parquet`.
    #[arg(long, value_parser = parse_kv)]
    pub task_path: Vec<(String, PathBuf)>,
    /// MMLU few-shot examples from dev (0 or 5).
    #[arg(long, default_value_t = DEFAULT.mmlu_fewshot)]
    pub mmlu_fewshot: usize,
    /// Encode without the tokenizer's special tokens (no BOS), as lm-eval did before its
    /// PR #3347 (Oct 2025); by default they apply, as in lm-eval 0.4.13 and in GPTQ-style
    /// perplexity code (which tokenises the whole stream with the tokenizer's defaults).
    #[arg(long)]
    pub no_special_tokens: bool,
    /// Perplexity corpora, comma-separated: `wikitext2` (the shared test split), `c4`
    /// (GPTQ's C4 validation stream from $COME_C4 or DATA/c4/), `c4=PATH`, `wikitext2_val` (the held-out WikiText-2 train rows recovery validates on), `tasks_ood` (HellaSwag and PIQA gold answers), or a text file.
    #[arg(long, value_delimiter = ',')]
    pub ppl: Vec<String>,
    /// Perplexity window length in tokens.
    #[arg(long, default_value_t = DEFAULT.ppl_seqlen.unwrap_or(2048))]
    pub seqlen: usize,
    /// Score only the first N perplexity windows (C4 default: 256, as GPTQ).
    #[arg(long)]
    pub max_windows: Option<usize>,
    /// Perplexity scoring: `gptq` (every token but each window's first) or `llama_cpp`
    /// (the second half of each window, as llama.cpp's `llama-perplexity`).
    #[arg(long, value_enum, default_value_t = DEFAULT.ppl_protocol)]
    pub ppl_protocol: PplProtocol,
    /// Write lm-eval-compatible results JSON here.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Also write per-document log-likelihoods (JSONL) here.
    #[arg(long)]
    pub samples: Option<PathBuf>,
    /// Also time prefill and generation under a protocol: `sleb` (the default: SLEB's and
    /// CoMe's, prefill 1 x 2048 and generation 64 x (64 + 128)) or `short` (batch 1, 512 +
    /// 64); prompts are shortened to fit a shorter context. `bench latency` scales sizes.
    #[arg(long, num_args = 0..=1, default_missing_value = "sleb", value_name = "PROTOCOL")]
    pub latency: Option<Protocol>,
    /// Timed iterations of prefill and of generation in place of the protocol's (sleb:
    /// 50,10), e.g. `5,2` on a CPU; recorded with the result.
    #[arg(long, value_delimiter = ',', num_args = 2, value_name = "PREFILL,GENERATION",
          value_parser = super::common::at_least_one)]
    pub latency_iters: Option<Vec<usize>>,
    /// Any other key a grid sets under `eval` (repeatable, applied after the flags
    /// above), in the grid's syntax: `--set ppl_val=true --set token_budget=2048`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub settings: Vec<String>,
    #[command(flatten)]
    pub rt: RuntimeArgs,
}

fn parse_kv(s: &str) -> Result<(String, PathBuf), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), PathBuf::from(v)))
        .ok_or_else(|| format!("expected TASK=PATH, got `{s}`"))
}

/// The seven zero-shot tasks in lm-eval's order (what `all7` expands to).
pub const SEVEN: [&str; 7] = come_repro::names::SEVEN_TASKS_LM_EVAL;

pub fn expand_tasks(tasks: &[String]) -> Result<Vec<String>> {
    let mut out: Vec<String> = vec![];
    for t in tasks {
        let t = t.trim();
        if t == "all7" {
            out.extend(SEVEN.iter().map(|s| s.to_string()));
        } else if known_tasks().contains(&t) {
            out.push(t.to_string());
        } else if !t.is_empty() {
            bail!(
                "unknown task `{t}`; known tasks: {}, all7",
                known_tasks().join(", ")
            );
        }
    }
    out.dedup();
    Ok(out)
}

impl EvalArgs {
    /// The evaluation these flags ask for, as a grid's `eval` table would say it (the
    /// corpora are `--ppl`'s, read separately).
    fn config(&self) -> Result<EvalConfig> {
        let cfg = EvalConfig {
            tasks: expand_tasks(&self.tasks)?,
            limit: self.limit,
            fraction: self.fraction,
            seed: self.seed,
            mmlu_fewshot: self.mmlu_fewshot,
            ppl_seqlen: (!self.ppl.is_empty()).then_some(self.seqlen),
            ppl_windows: self.max_windows,
            ppl_protocol: self.ppl_protocol,
            ppl_c4: false,
            ppl_val: false,
            ppl_ood: false,
            latency: self.latency,
            latency_iters: self.latency_iters.as_deref().map(|v| [v[0], v[1]]),
            token_budget: self.batch_size,
            task_paths: (self.task_path.iter())
                .map(|(t, p)| (t.clone(), p.to_string_lossy().into_owned()))
                .collect(),
            special_tokens: !self.no_special_tokens,
            // The named corpora stay flags (`inputs`); a file is a config setting.
            ppl_texts: (self.ppl.iter().map(|p| p.trim()))
                .filter(|p| matches!(Corpus::parse(p), Corpus::Text(_)))
                .map(String::from)
                .collect(),
        };
        let mut cfg = come_repro::grid::apply_settings(&cfg, "eval", &self.settings)?;
        // A grid's extra corpora are measured at the window length of `--seqlen`.
        if (cfg.ppl_c4 || cfg.ppl_val || cfg.ppl_ood) && cfg.ppl_seqlen.is_none() {
            cfg.ppl_seqlen = Some(self.seqlen);
        }
        cfg.validate()?;
        Ok(cfg)
    }
}

pub fn run(a: EvalArgs) -> Result<()> {
    let cfg = a.config()?;
    let (data_dir, corpora) = inputs(&a, &cfg)?;
    let t_all = Instant::now();
    let load = a.rt.load_options()?;
    let budget = cfg.token_budget.initial_tokens(load.device);
    let mut bars = Bars::new();
    let mut sink = bars.sink();
    let mut alive = || {};
    let mut ctx = StageCtx::standalone(load, &mut sink, &mut alive);
    let stage = EvalStage {
        cfg: &cfg,
        model_dir: &a.model,
        data_dir,
        corpora,
    };
    let done = stage
        .run(&mut ctx)
        .with_context(|| format!("evaluating {}", a.model.display()))?;
    drop(sink);
    bars.finish();
    let load_seconds = (done.metrics.iter())
        .find(|m| m.name == names::RUN_EVAL_LOAD_SECONDS)
        .map_or(f64::NAN, |m| m.value);
    let outcome = done.value;
    let ppl: Vec<(String, PplResult)> = outcome
        .ppl
        .iter()
        .map(|p| (p.corpus.name(), p.result.clone()))
        .collect();
    let results = outcome.tasks;
    print_summary(&results, &ppl, outcome.latency.as_ref(), load_seconds);
    let info = RunInfo {
        model: a.model.display().to_string(),
        model_args: format!("pretrained={},dtype={}", a.model.display(), a.rt.dtype),
        device: a.rt.device.to_string(),
        limit: a.limit,
        fraction: a.fraction,
        seed: a.seed,
        batch_size: a.batch_size,
        token_budget: budget,
        final_token_budget: outcome.final_token_budget,
        threads: tch::get_num_threads() as usize,
        load_seconds,
        seconds: t_all.elapsed().as_secs_f64(),
    };
    if let Some(out) = &a.output {
        write_lm_eval(out, &results, &ppl, &info, outcome.latency.as_ref())?;
    }
    if let Some(path) = &a.samples {
        write_samples(path, &results)?;
    }
    Ok(())
}

/// The data directory and the perplexity texts the flags name (read and checked by the
/// stage before the model loads, so that bad input fails fast).
fn inputs(a: &EvalArgs, cfg: &EvalConfig) -> Result<(PathBuf, Vec<Corpus>)> {
    let mut corpora: Vec<Corpus> = (a.ppl.iter())
        .map(|spec| Corpus::parse(spec.trim()))
        .filter(|c| !matches!(c, Corpus::Text(_)))
        .collect();
    // The corpora of the config's keys (`--set ppl_val=true`, the text files of `--ppl`),
    // unless named already; WikiText-2's test split only when `--ppl` names it.
    let extra = come_repro::stages::eval_stage::corpora(cfg);
    for c in extra
        .into_iter()
        .filter(|c| !matches!(c, Corpus::Wikitext2(_)))
    {
        if !corpora.iter().any(|k| k.name() == c.name()) {
            corpora.push(c);
        }
    }
    if cfg.tasks.is_empty() && corpora.is_empty() {
        bail!("nothing to evaluate: pass --tasks and/or --ppl wikitext2");
    }
    let data_dir = (a.data_dir.clone()).unwrap_or_else(come_repro::paths::data_dir);
    Ok((data_dir, corpora))
}

/// Prints the scoring profile (stderr), the results table and the latency, if measured.
fn print_summary(
    results: &[TaskResult],
    ppl: &[(String, PplResult)],
    latency: Option<&Latency>,
    load_seconds: f64,
) {
    if !results.is_empty() {
        let total = ScoreProfile::total(results.iter().map(|r| &r.profile));
        eprintln!(
            "model load {load_seconds:.1}s; scoring: {}",
            total.summary()
        );
    }
    println!("{}", table(results, ppl));
    if let Some(l) = latency {
        println!(
            "latency ({}): prefill {:.0} tok/s, generation {:.1} tok/s",
            l.spec.context(),
            l.prefill_tokens_per_s(),
            l.decode_tokens_per_s()
        );
    }
}

/// Writes the lm-eval-compatible results JSON to `out`, with the latency if measured.
fn write_lm_eval(
    out: &Path,
    results: &[TaskResult],
    ppl: &[(String, PplResult)],
    info: &RunInfo,
    latency: Option<&Latency>,
) -> Result<()> {
    let mut v = lm_eval_json(results, ppl, info);
    if let (Some(l), Some(obj)) = (latency, v.as_object_mut()) {
        obj.insert(
            "latency".into(),
            serde_json::json!({
                "protocol": l.spec.protocol, "context": l.spec.context(),
                "prefill_tokens_per_s": l.prefill_tokens_per_s(),
                "decode_tokens_per_s": l.decode_tokens_per_s(),
            }),
        );
    }
    come_repro::publish::write_json(out, &v)?;
    eprintln!("wrote {}", out.display());
    Ok(())
}

/// Writes the per-document log-likelihoods to `path`, one JSON line per document.
fn write_samples(path: &Path, results: &[TaskResult]) -> Result<()> {
    let mut lines = String::new();
    for r in results {
        for d in &r.docs {
            lines += &serde_json::to_string(&serde_json::json!({"task": r.task, "doc": d}))?;
            lines.push('\n');
        }
    }
    come_repro::publish::write_atomically(path, lines.as_bytes())?;
    Ok(())
}
