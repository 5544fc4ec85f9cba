//! `come-repro demo`: the embedded default job. Imports the shipped models (once), shows a
//! greedy continuation from each, and measures SmolLM2's WikiText-2 perplexity on a few
//! windows, all on CPU in a few minutes.

use super::common::{bar, default_import_dir, load, RuntimeArgs};
use super::import::import_into;
use anyhow::Result;
use clap::Args;
use come_repro::eval::perplexity::{perplexity, PplOptions};
use come_repro::generate::{generate, GenerateOptions};
use come_repro::model::{gguf, llama2c};
use come_repro::paths;
use std::time::Instant;

#[derive(Args)]
pub struct DemoArgs {
    /// WikiText-2 windows of 2048 tokens to score.
    #[arg(long, default_value_t = 4)]
    pub windows: usize,
    #[command(flatten)]
    pub rt: RuntimeArgs,
}

pub fn run(a: DemoArgs) -> Result<()> {
    let smol = default_import_dir("smollm2-135m-instruct");
    if !smol.exists() {
        eprintln!(
            "importing {} -> {}",
            paths::show(&paths::smollm2_gguf()),
            smol.display()
        );
        import_into(&smol, false, || Ok(gguf::import(&paths::smollm2_gguf())?))?;
    }
    let stories = default_import_dir("stories260k");
    if !stories.exists() {
        eprintln!(
            "importing {} -> {}",
            paths::show(&paths::stories260k_bin()),
            stories.display()
        );
        import_into(&stories, false, || {
            Ok(llama2c::import(
                &paths::stories260k_bin(),
                &paths::stories260k_tok(),
            )?)
        })?;
    }

    let (model, tok) = load(&stories, &a.rt)?;
    let bos = tok.bos_id.unwrap_or(1);
    let opts = GenerateOptions {
        max_new_tokens: 48,
        temperature: 0.0,
        seed: 0,
        stop_ids: vec![bos],
    };
    let new = generate(&model, &[bos], &opts)?;
    println!(
        "stories260K, greedy from BOS:\n  {}\n",
        tok.decode(&new, true)?.trim()
    );

    let (model, tok) = load(&smol, &a.rt)?;
    let prompt = "The capital of France is";
    let ids = tok.encode(prompt, true)?;
    let opts = GenerateOptions {
        max_new_tokens: 12,
        temperature: 0.0,
        seed: 0,
        stop_ids: tok.eos_ids.clone(),
    };
    let new = generate(&model, &ids, &opts)?;
    println!(
        "SmolLM2-135M-Instruct, greedy:\n  {prompt}{}\n",
        tok.decode(&new, true)?
    );

    let text_path = paths::wikitext2_test();
    let text = std::fs::read_to_string(&text_path)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", text_path.display()))?;
    let tokens = tok.encode(&text, true)?;
    let t0 = Instant::now();
    let pb = bar(a.windows as u64, "ppl windows");
    let opts = PplOptions {
        max_windows: Some(a.windows),
        batch_size: 1,
        ..Default::default()
    };
    let res = perplexity(&model, &tokens, 2048, opts, |d, _| {
        pb.set_position(d as u64)
    })?;
    pb.finish_and_clear();
    println!(
        "SmolLM2-135M-Instruct WikiText-2 perplexity (seqlen 2048, first {} of {} windows): {:.3}  [{:.1}s, {:.0} tok/s]",
        res.windows,
        tokens.len() / 2048,
        res.ppl,
        t0.elapsed().as_secs_f64(),
        (res.windows * 2048) as f64 / t0.elapsed().as_secs_f64()
    );
    Ok(())
}
