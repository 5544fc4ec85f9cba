//! `come-repro import gguf|llama2c`: write a Hugging Face checkpoint directory.

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use come_repro::model::{gguf, import::write_checkpoint, llama2c};
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
