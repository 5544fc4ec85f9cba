//! Command-line entry: parse, dispatch, report errors. One file per subcommand.

mod bars;
mod bench;
mod bench_attention;
mod bench_latency;
mod bench_precision;
mod bench_prune;
mod check;
mod common;
mod demo;
mod distill;
mod eval;
mod export;
mod generate;
mod gpu_check;
mod grid;
mod grid_slurm;
mod grid_status;
mod grid_workers;
mod import;
mod prune;
mod runs;
mod tables;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "come-repro",
    version,
    about = "Reproduce and extend CoMe layer-concatenation pruning of LLaMA-family models"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Convert a GGUF or llama2.c checkpoint into a Hugging Face checkpoint directory.
    #[command(subcommand)]
    Import(import::ImportCmd),
    /// Write a checkpoint in another format: `export gguf` for llama.cpp.
    #[command(subcommand)]
    Export(export::ExportCmd),
    /// Continue a prompt with a model (greedy unless --temperature is set).
    Generate(generate::GenerateArgs),
    /// Evaluate a model: zero-shot tasks scored as lm-evaluation-harness does, perplexity.
    Eval(eval::EvalArgs),
    /// Prune a checkpoint (CoMe, CoMe-P or a baseline) and save it as an HF checkpoint.
    Prune(prune::PruneArgs),
    /// Recover a pruned checkpoint against its teacher (layer-local distillation or LoRA).
    Distill(distill::DistillArgs),
    /// Run (or resume) a grid of experiments into the run store.
    Grid(grid::GridArgs),
    /// Inspect the run store: ls, show, diff, export.
    #[command(subcommand)]
    Runs(runs::RunsCmd),
    /// Build the paper's tables and plots from the run store.
    Tables(tables::TablesArgs),
    /// CI regression check: run a grid and compare its metrics with a baseline.
    Check(check::CheckArgs),
    /// Benchmarks that print come-repro next to its reference.
    #[command(subcommand)]
    Bench(bench::BenchCmd),
    /// The embedded default job: import SmolLM2, generate, and measure perplexity on CPU.
    Demo(demo::DemoArgs),
    /// Every CUDA question in one run, from a self-contained bundle (scripts/bundle.sh).
    #[command(subcommand)]
    GpuCheck(gpu_check::GpuCheckCmd),
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Import(c) => import::run(c),
        Command::Export(c) => export::run(c),
        Command::Generate(a) => generate::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Prune(a) => prune::run(a),
        Command::Distill(a) => distill::run(a),
        Command::Grid(a) => grid::run(a),
        Command::Runs(c) => runs::run(c),
        Command::Tables(a) => tables::run(a),
        Command::Check(a) => check::run(a),
        Command::Bench(c) => bench::run(c),
        Command::Demo(a) => demo::run(a),
        Command::GpuCheck(c) => gpu_check::run(c),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
