//! `come-repro tables`: the paper's tables (Markdown, CSV, LaTeX) and plots from the store.

use anyhow::{bail, Result};
use clap::Args;
use come_repro::report::{paper, write_report, Convention, ReportOptions};
use come_repro::track::Store;
use std::path::PathBuf;

#[derive(Args)]
pub struct TablesArgs {
    /// Run store; several (`--db a --db b`, e.g. the shard stores of a grid) are merged
    /// into a temporary store first.
    #[arg(long, default_value = "results/come.sqlite")]
    pub db: Vec<PathBuf>,
    /// Restrict to the runs of this grid (default: every finished run in the store).
    #[arg(long)]
    pub grid: Option<PathBuf>,
    #[arg(long, default_value = "results/tables")]
    pub out: PathBuf,
    /// acc, acc_norm, or mixed (acc_norm for HellaSwag, ARC-c, OBQA; acc elsewhere).
    #[arg(long, default_value = "mixed")]
    pub convention: String,
    /// Published reference numbers (CSV files).
    #[arg(long, default_value = "paper")]
    pub paper: PathBuf,
}

pub fn run(a: TablesArgs) -> Result<()> {
    for db in &a.db {
        if !db.exists() {
            bail!(
                "{} does not exist: run `come-repro grid ...` first",
                db.display()
            );
        }
    }
    let merged = tempfile::tempdir()?;
    let store = match a.db.as_slice() {
        [one] => Store::open_read(one)?,
        many => super::runs::merge(many, &merged.path().join("merged.sqlite"))?,
    };
    let published = if a.paper.exists() {
        paper::load_dir(&a.paper)?
    } else {
        vec![]
    };
    let opts = ReportOptions {
        out_dir: a.out.clone(),
        convention: Convention::parse(&a.convention)?,
        published,
        model_aliases: Default::default(),
        only_hashes: match &a.grid {
            Some(g) => Some(
                come_repro::grid::GridSpec::load(g)?
                    .expand()?
                    .into_iter()
                    .map(|r| r.hash)
                    .collect(),
            ),
            None => None,
        },
    };
    let sum = write_report(&store, &opts)?;
    println!(
        "{} runs -> {} tables in {}",
        sum.runs,
        sum.tables.len(),
        a.out.display()
    );
    if let Ok(index) = std::fs::read_to_string(a.out.join("index.md")) {
        println!("\n{index}");
    }
    Ok(())
}
