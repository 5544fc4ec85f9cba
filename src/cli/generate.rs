//! `come-repro generate`: the quickest way to see that a (pruned) model still works.

use super::common::{load, RuntimeArgs};
use anyhow::Result;
use clap::Args;
use come_repro::generate::{generate, GenerateOptions};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args)]
pub struct GenerateArgs {
    #[arg(long)]
    pub model: PathBuf,
    /// Text to continue (empty: start from BOS, for models that have one).
    #[arg(long, default_value = "")]
    pub prompt: String,
    #[arg(long, default_value_t = 32)]
    pub max_new_tokens: usize,
    /// 0 means greedy decoding.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub rt: RuntimeArgs,
}

pub fn run(a: GenerateArgs) -> Result<()> {
    let (model, tok) = load(&a.model, &a.rt)?;
    let mut ids = tok.encode(&a.prompt, true)?;
    if ids.is_empty() {
        match tok.bos_id {
            Some(b) => ids.push(b),
            None => anyhow::bail!("empty prompt and the tokenizer has no BOS token to start from"),
        }
    }
    let opts = GenerateOptions {
        max_new_tokens: a.max_new_tokens,
        temperature: a.temperature,
        seed: a.seed,
        stop_ids: tok.eos_ids.clone(),
    };
    let t0 = Instant::now();
    let new = generate(&model, &ids, &opts)?;
    let dt = t0.elapsed().as_secs_f64();
    // Decoded after the prompt, not alone: a SentencePiece decoder strips the leading
    // space of the first piece it sees, which would glue the continuation to the prompt.
    let prefix = tok.decode(&ids, true)?;
    let full = tok.decode(&[ids.as_slice(), new.as_slice()].concat(), true)?;
    let text = match full.strip_prefix(prefix.as_str()) {
        Some(rest) => rest.to_string(),
        None => tok.decode(&new, true)?,
    };
    println!("{}{}", a.prompt, text);
    eprintln!(
        "[{} new tokens in {:.2}s, {:.1} tok/s]",
        new.len(),
        dt,
        new.len() as f64 / dt
    );
    Ok(())
}
