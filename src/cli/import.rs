//! `come-repro import gguf|llama2c`: write a Hugging Face checkpoint directory.

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use come_repro::model::save::save_model;
use come_repro::model::synthetic::{hashed_model, Shape};
use come_repro::model::{gguf, import::write_checkpoint, llama2c};
use come_repro::runtime::Dtype;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Subcommand)]
pub enum ImportCmd {
    /// A GGUF v2/v3 file (F32, F16, BF16, Q8_0, Q4_1 tensors; llama architecture).
    Gguf {
        file: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Replace an existing output directory.
        #[arg(long)]
        force: bool,
    },
    /// A model of a published shape with hashed uniform weights (no download), for
    /// measuring memory and time at that size: every stage runs on it as on a real one.
    /// The tokenizer files are copied from `--tokenizer-from` (ids must fit the vocab).
    Synthetic {
        #[arg(long, value_enum)]
        shape: Shape,
        /// Layers (default: the shape's own).
        #[arg(long)]
        layers: Option<usize>,
        #[arg(long)]
        tokenizer_from: PathBuf,
        /// Storage precision of the weights.
        #[arg(long, value_enum, default_value = "bf16")]
        dtype: Dtype,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        force: bool,
    },
    /// A llama2.c legacy `.bin` checkpoint with its `tokenizer.bin`.
    Llama2c {
        file: PathBuf,
        #[arg(long)]
        tokenizer: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        force: bool,
    },
}

pub fn run(cmd: ImportCmd) -> Result<()> {
    let t0 = Instant::now();
    let out = match cmd {
        ImportCmd::Gguf { file, out, force } => {
            import_into(&out, force, || Ok(gguf::import(&file)?))?;
            out
        }
        ImportCmd::Synthetic {
            shape,
            layers,
            tokenizer_from,
            dtype,
            seed,
            out,
            force,
        } => {
            synthetic(shape, layers, &tokenizer_from, dtype, seed, &out, force)?;
            out
        }
        ImportCmd::Llama2c {
            file,
            tokenizer,
            out,
            force,
        } => {
            import_into(&out, force, || Ok(llama2c::import(&file, &tokenizer)?))?;
            out
        }
    };
    eprintln!(
        "imported into {} in {:.1}s",
        out.display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

fn synthetic(
    shape: Shape,
    layers: Option<usize>,
    tokenizer_from: &Path,
    dtype: Dtype,
    seed: u64,
    out: &Path,
    force: bool,
) -> Result<()> {
    if out.exists() && !force {
        bail!(
            "{} already exists (use --force to replace it)",
            out.display()
        );
    }
    let tok = come_repro::model::tokenizer::Tokenizer::from_dir(tokenizer_from)
        .with_context(|| format!("tokenizer from {}", tokenizer_from.display()))?;
    let config = shape.config(layers)?;
    if tok.vocab_size() as i64 > config.vocab_size {
        bail!(
            "the tokenizer in {} has {} tokens, more than the model's vocab_size {}",
            tokenizer_from.display(),
            tok.vocab_size(),
            config.vocab_size
        );
    }
    let model = hashed_model(&config, seed, tch::Device::Cpu, dtype.kind());
    come_repro::publish::write_dir_atomically(out, |tmp| {
        save_model(&model, tmp, Some(tokenizer_from))
    })
    .with_context(|| format!("writing {}", out.display()))?;
    Ok(())
}

/// Import into a temporary sibling directory and rename it into place when complete, so
/// an interrupted import never leaves a directory that looks finished.
pub fn import_into(
    out: &Path,
    force: bool,
    build: impl FnOnce() -> Result<come_repro::model::import::ImportedCheckpoint>,
) -> Result<()> {
    if out.exists() && !force {
        bail!(
            "{} already exists (use --force to replace it)",
            out.display()
        );
    }
    let ck = build()?;
    come_repro::publish::write_dir_atomically(out, |tmp| write_checkpoint(&ck, tmp))
        .with_context(|| format!("writing {}", out.display()))?;
    Ok(())
}
