//! The bundle's contents: what `prepare` writes on the build machine and `run` reads on
//! the GPU node. Nothing here needs the shared data or models at run time.
//!
//! ```text
//! BUILD.json            torch/tch/CUDA it was built for, commit, sizes (BuildInfo)
//! tasks.json            the first N documents of the seven tasks, as prepared requests
//! tokenizer/            SmolLM2's tokenizer (from the shipped GGUF)
//! stories/              stories260K.bin + tok512.bin (real weights, 1 MB)
//! wikitext2.txt         the start of WikiText-2 test (stories260K's perplexity)
//! reference/smol.json   the synthetic SmolLM2-shape model, f32, CPU: log-likelihoods
//! reference/stories.json  stories260K, f32, CPU: log-likelihoods and perplexity
//! ```

use super::accuracy;
use anyhow::{bail, Context, Result};
use clap::Args;
use come_repro::eval::tasks::{load_task, TaskData, TaskSource};
use come_repro::grid::ModelSource;
use come_repro::model::tokenizer::Tokenizer;
use come_repro::names::SEVEN_TASKS;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const SMOL_REFERENCE: &str = "reference/smol.json";
pub const STORIES_REFERENCE: &str = "reference/stories.json";
/// stories260K's context is 512 tokens.
pub const STORIES_PPL_SEQLEN: usize = 256;
/// Characters of WikiText-2 test shipped (stories260K's tokenizer: about 12 windows).
const WIKITEXT_CHARS: usize = 12_000;

/// What the bundle was built for and from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BuildInfo {
    pub torch: String,
    pub tch: String,
    pub cuda: String,
    pub git: String,
    pub prepared: String,
    pub docs_per_task: usize,
    /// Seed of the synthetic models' weights (`hashed_model`).
    pub synthetic_seed: u64,
}

/// Per-request log-likelihoods of one model on the bundle's documents.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reference {
    pub tasks: BTreeMap<String, TaskRef>,
    pub ppl: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskRef {
    pub docs: Vec<DocRef>,
    pub metrics: BTreeMap<String, f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DocRef {
    pub doc_id: usize,
    /// Summed continuation log-likelihood per choice.
    pub loglik: Vec<f64>,
}

pub struct Bundle {
    pub dir: PathBuf,
    pub info: BuildInfo,
    pub tasks: Vec<TaskData>,
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    Ok(come_repro::error::read_json(path)?)
}

impl Bundle {
    pub fn open(dir: &Path) -> Result<Bundle> {
        let info: BuildInfo = read_json(&dir.join("BUILD.json"))
            .with_context(|| format!("{} is not a prepared bundle", dir.display()))?;
        let tasks: Vec<TaskData> = read_json(&dir.join("tasks.json"))?;
        Ok(Bundle {
            dir: dir.to_path_buf(),
            info,
            tasks,
        })
    }

    pub fn tokenizer(&self) -> Result<Tokenizer> {
        Ok(Tokenizer::from_dir(&self.dir.join("tokenizer"))?)
    }

    pub fn read_reference(&self, rel: &str) -> Result<Reference> {
        read_json(&self.dir.join(rel))
    }

    pub fn wikitext(&self) -> Result<String> {
        Ok(come_repro::error::read_to_string(
            self.dir.join("wikitext2.txt"),
        )?)
    }

    /// stories260K imported into `scratch` (an HF checkpoint directory).
    pub fn import_stories(&self, scratch: &Path) -> Result<PathBuf> {
        stories_checkpoint(&self.dir.join("stories"), scratch)
    }
}

fn stories_checkpoint(from: &Path, cache: &Path) -> Result<PathBuf> {
    let source = ModelSource::Llama2c {
        model: from.join("stories260K.bin"),
        tokenizer: from.join("tok512.bin"),
    };
    let (dir, _) = come_repro::stages::prepare_model(&source, cache, "stories260K")?;
    Ok(dir)
}

#[derive(Args)]
pub struct PrepareArgs {
    /// The bundle directory to fill (it must hold the binary; everything else is written).
    #[arg(long)]
    pub bundle: PathBuf,
    /// Documents per task shipped and referenced.
    #[arg(long, default_value_t = 200)]
    pub docs: usize,
    #[arg(long)]
    pub torch_version: String,
    #[arg(long)]
    pub tch_version: String,
    /// The CUDA version of the torch build it links (torch.version.cuda).
    #[arg(long, default_value = "none")]
    pub cuda: String,
    #[arg(long, default_value = "unknown")]
    pub git: String,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// Both CPU references (f32), computed by this binary: the synthetic SmolLM2-shape
/// model's log-likelihoods, and stories260K's with its perplexity on `excerpt`.
fn write_references(bundle: &Bundle, excerpt: &str) -> Result<()> {
    let (dir, docs, seed) = (
        &bundle.dir,
        bundle.info.docs_per_task,
        bundle.info.synthetic_seed,
    );
    let t0 = std::time::Instant::now();
    let tok = bundle.tokenizer()?;
    let model = accuracy::smol_model(seed, tch::Device::Cpu, tch::Kind::Float)?;
    let smol = accuracy::score(&model, &tok, &bundle.tasks, docs, None)?;
    come_repro::publish::write_json(&dir.join(SMOL_REFERENCE), &smol)?;
    println!(
        "reference: synthetic SmolLM2 shape, {} tasks x {docs} docs, f32 CPU, {:.1} s",
        bundle.tasks.len(),
        t0.elapsed().as_secs_f64()
    );
    let scratch = tempfile::tempdir()?;
    let sdir = bundle.import_stories(scratch.path())?;
    let sm = come_repro::model::load::load_model(&sdir, Default::default())?;
    let stok = Tokenizer::from_dir(&sdir)?;
    let st = accuracy::score(
        &sm,
        &stok,
        &bundle.tasks,
        docs,
        Some((excerpt, STORIES_PPL_SEQLEN)),
    )?;
    come_repro::publish::write_json(&dir.join(STORIES_REFERENCE), &st)?;
    Ok(())
}

fn copy(from: &Path, to: &Path) -> Result<()> {
    if let Some(p) = to.parent() {
        std::fs::create_dir_all(p).with_context(|| format!("creating {}", p.display()))?;
    }
    std::fs::copy(from, to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    Ok(())
}

/// Fill the bundle from the shared data and models: the tasks' first documents, the
/// tokenizer, stories260K, a WikiText-2 excerpt, and both CPU references (f32), computed
/// here by this binary.
pub fn prepare(a: PrepareArgs) -> Result<()> {
    if a.docs == 0 {
        bail!("--docs must be at least 1");
    }
    let dir = &a.bundle;
    std::fs::create_dir_all(dir.join("reference"))?;
    let src = TaskSource::default();
    let mut tasks = vec![];
    for name in SEVEN_TASKS {
        let mut t = load_task(name, &src)?;
        t.docs.truncate(a.docs);
        tasks.push(t);
    }
    come_repro::publish::write_json(&dir.join("tasks.json"), &tasks)?;

    let gguf = come_repro::paths::smollm2_gguf();
    let ck = come_repro::model::gguf::import(&gguf)?;
    let tok_dir = dir.join("tokenizer");
    std::fs::create_dir_all(&tok_dir)?;
    ck.tokenizer
        .save(tok_dir.join("tokenizer.json"), false)
        .map_err(|e| anyhow::anyhow!("writing the tokenizer: {e}"))?;
    come_repro::publish::write_json(&tok_dir.join("tokenizer_config.json"), &ck.tokenizer_config)?;
    drop(ck);

    let stories = dir.join("stories");
    copy(
        &come_repro::paths::stories260k_bin(),
        &stories.join("stories260K.bin"),
    )?;
    copy(
        &come_repro::paths::models_dir().join("stories260K/tok512.bin"),
        &stories.join("tok512.bin"),
    )?;
    let wiki = come_repro::error::read_to_string(
        come_repro::paths::data_dir().join("wikitext2/wikitext2_raw_test.txt"),
    )?;
    let excerpt: String = wiki.chars().take(WIKITEXT_CHARS).collect();
    std::fs::write(dir.join("wikitext2.txt"), &excerpt)?;

    let info = BuildInfo {
        torch: a.torch_version,
        tch: a.tch_version,
        cuda: a.cuda,
        git: a.git,
        prepared: come_repro::track::store::now_rfc3339(),
        docs_per_task: a.docs,
        synthetic_seed: a.seed,
    };
    let bundle = Bundle {
        dir: dir.clone(),
        info: info.clone(),
        tasks,
    };
    write_references(&bundle, &excerpt)?;
    // Last: a bundle without BUILD.json is not a bundle (`Bundle::open`).
    come_repro::publish::write_json(&dir.join("BUILD.json"), &info)?;
    println!("prepared {}", dir.display());
    Ok(())
}
