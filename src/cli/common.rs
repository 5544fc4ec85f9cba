//! Options and helpers shared by subcommands.

use anyhow::{Context, Result};
use clap::Args;
use come_repro::model::load::{load_model, LoadOptions};
use come_repro::model::tokenizer::Tokenizer;
use come_repro::model::Model;
use come_repro::runtime;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};

#[derive(Args, Debug, Clone)]
pub struct RuntimeArgs {
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// libtorch intra-op threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
}

impl RuntimeArgs {
    pub fn load_options(&self) -> Result<LoadOptions> {
        runtime::set_threads(self.threads);
        Ok(LoadOptions {
            device: runtime::parse_device(&self.device)?,
            dtype: runtime::parse_dtype(&self.dtype)?,
        })
    }
}

pub fn load(dir: &Path, rt: &RuntimeArgs) -> Result<(Model, Tokenizer)> {
    let opts = rt.load_options()?;
    let model =
        load_model(dir, opts).with_context(|| format!("loading model from {}", dir.display()))?;
    let tok = Tokenizer::from_dir(dir)
        .with_context(|| format!("loading tokenizer from {}", dir.display()))?;
    Ok((model, tok))
}

pub fn bar(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{msg:>12} [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

/// The default place for imported checkpoints of the shipped models.
pub fn default_import_dir(name: &str) -> PathBuf {
    come_repro::paths::work_dir().join("models").join(name)
}
