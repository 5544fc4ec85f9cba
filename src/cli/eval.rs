//! `come-repro eval`: perplexity now; the zero-shot tasks join here.

use super::common::{bar, load, RuntimeArgs};
use anyhow::{bail, Context, Result};
use clap::Args;
use come_repro::eval::perplexity::perplexity;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args)]
pub struct EvalArgs {
    #[arg(long)]
    pub model: PathBuf,
    /// Perplexity dataset: `wikitext2` (the shared test split) or a path to a text file.
    #[arg(long)]
    pub ppl: Option<String>,
    #[arg(long, default_value_t = 2048)]
    pub seqlen: usize,
    /// Score only the first N windows.
    #[arg(long)]
    pub max_windows: Option<usize>,
    #[arg(long, default_value_t = 1)]
    pub batch_size: usize,
    /// Write the result as JSON here.
    #[arg(long)]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    pub rt: RuntimeArgs,
}

pub fn run(a: EvalArgs) -> Result<()> {
    let Some(ppl) = &a.ppl else {
        bail!("nothing to evaluate: pass --ppl wikitext2");
    };
    let text_path = match ppl.as_str() {
        "wikitext2" => come_repro::paths::wikitext2_test(),
        other => PathBuf::from(other),
    };
    let (model, tok) = load(&a.model, &a.rt)?;
    let text = std::fs::read_to_string(&text_path)
        .with_context(|| format!("reading {}", text_path.display()))?;
    let t0 = Instant::now();
    let tokens = tok.encode(&text, false)?;
    let pb = bar(0, "windows");
    let res = perplexity(
        &model,
        &tokens,
        a.seqlen,
        a.max_windows,
        a.batch_size,
        |done, total| {
            pb.set_length(total as u64);
            pb.set_position(done as u64);
        },
    )?;
    pb.finish_and_clear();
    let dt = t0.elapsed().as_secs_f64();
    println!(
        "{}: ppl {:.4} over {} window(s) of {} tokens ({} predicted), {:.1}s, {:.0} tok/s",
        text_path.display(),
        res.ppl,
        res.windows,
        res.seqlen,
        res.predicted_tokens,
        dt,
        (res.windows * res.seqlen) as f64 / dt
    );
    if let Some(out) = &a.output {
        let v = serde_json::json!({
            "model": a.model,
            "dataset": text_path,
            "result": res,
            "seconds": dt,
        });
        std::fs::write(out, serde_json::to_string_pretty(&v)? + "\n")
            .with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(())
}
