//! `come-repro grid FILE --slurm`: the grid as a Slurm job array, one task per shard.

use super::grid::{options, GridArgs};
use anyhow::{bail, Result};
use clap::Args;
use come_repro::grid::GridSpec;
use come_repro::runner::select;
use come_repro::shard::{grid_stem, group_count};
use come_repro::slurm::{absolute, passed_env, SlurmJob};

#[derive(Args, Debug, Clone, Default)]
pub struct SlurmArgs {
    /// Submit the grid to Slurm as a job array (one task per shard, each into its own
    /// store under results/shards/); with --dry-run, only write and print the script.
    #[arg(long)]
    pub slurm: bool,
    /// Array tasks [default: one per group of runs sharing a pruned checkpoint].
    #[arg(long, requires = "slurm", value_parser = super::common::at_least_one)]
    pub shards: Option<usize>,
    #[arg(long, requires = "slurm")]
    pub partition: Option<String>,
    #[arg(long, requires = "slurm")]
    pub gpus_per_task: Option<u32>,
    /// CPUs per task (also the task's --threads).
    #[arg(long, requires = "slurm", default_value_t = 2, value_parser = super::common::at_least_one)]
    pub cpus_per_task: usize,
    /// Memory per task, e.g. 32G.
    #[arg(long, requires = "slurm")]
    pub mem: Option<String>,
    /// Time limit per task, e.g. 12:00:00.
    #[arg(long, requires = "slurm")]
    pub time: Option<String>,
    /// At most this many tasks at once.
    #[arg(long, requires = "slurm", value_parser = super::common::at_least_one)]
    pub max_parallel: Option<usize>,
}

pub fn submit(a: &GridArgs, spec: &GridSpec) -> Result<()> {
    if a.shard.is_some() || a.db.is_some() {
        bail!("--slurm chooses the shards and their stores itself: drop --shard and --db");
    }
    let s = &a.slurm;
    let mut opts = options(a);
    opts.shard = None;
    let runs = select(spec.expand()?, &opts)?;
    if runs.is_empty() {
        bail!("{}: no runs selected", a.file.display());
    }
    let groups = group_count(&runs);
    let shards = s.shards.unwrap_or(groups).min(runs.len());
    let job = SlurmJob {
        grid: absolute(&a.file),
        shards,
        partition: s.partition.clone(),
        gpus_per_task: s.gpus_per_task,
        cpus_per_task: s.cpus_per_task,
        mem: s.mem.clone(),
        time: s.time.clone(),
        max_parallel: s.max_parallel,
        binary: absolute(&std::env::current_exe()?),
        workdir: absolute(&std::env::current_dir()?),
        env: passed_env(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
    };
    println!(
        "{}: {} run(s) in {groups} group(s) sharing a pruned checkpoint -> {shards} array task(s)",
        a.file.display(),
        runs.len()
    );
    if a.dry_run {
        let path = job.write_script()?;
        println!("wrote {} (not submitted):\n", path.display());
        print!("{}", job.script());
        return Ok(());
    }
    let id = job.submit()?;
    let stem = grid_stem(&a.file);
    let f = a.file.display();
    println!("submitted job array {id}: {}", job.script_path().display());
    println!(
        "follow it:   squeue -j {id}   (logs in {}/)",
        job.dir().display()
    );
    println!("progress:    come-repro grid {f} --status");
    println!(
        "afterwards:  come-repro runs merge results/shards/{stem}-*-of-{shards}.sqlite --into results/come.sqlite"
    );
    println!("             come-repro tables --grid {f}");
    Ok(())
}
