//! `come-repro export gguf`: a checkpoint as one GGUF file for llama.cpp.

use super::common::bar;
use anyhow::{bail, Context, Result};
use clap::Subcommand;
use come_repro::model::gguf::{export, GgufType};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Subcommand)]
pub enum ExportCmd {
    /// A Hugging Face checkpoint directory (as `import` and `prune` write them) as GGUF for
    /// llama.cpp's `llama` architecture, tokenizer included. GGUF or llama2.c models go
    /// through `import` first.
    Gguf {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Storage of the weight matrices; norms stay f32.
        #[arg(long = "type", value_enum, default_value = "f16")]
        ty: GgufType,
        /// Replace an existing output file.
        #[arg(long)]
        force: bool,
    },
}

pub fn run(cmd: ExportCmd) -> Result<()> {
    let ExportCmd::Gguf {
        model,
        out,
        ty,
        force,
    } = cmd;
    if out.exists() && !force {
        bail!(
            "{} already exists (use --force to replace it)",
            out.display()
        );
    }
    let t0 = Instant::now();
    let pb = bar(0, "export");
    let report = export(&model, &out, ty, |done, total| {
        pb.set_length(total as u64);
        pb.set_position(done as u64);
    })
    .with_context(|| format!("exporting {} to {}", model.display(), out.display()))?;
    pb.finish_and_clear();
    let types: Vec<String> = report
        .by_type
        .iter()
        .map(|(t, n)| format!("{n} {t}"))
        .collect();
    eprintln!(
        "wrote {} ({:.1} MiB, {} layers, {} tensors: {}; pre-tokenizer {}) in {:.1}s",
        report.path.display(),
        report.bytes as f64 / (1 << 20) as f64,
        report.layers,
        report.tensors,
        types.join(", "),
        report.pre_tokenizer,
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
