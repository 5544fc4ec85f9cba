//! A grid as a Slurm job array: one array task per shard ([`crate::shard`]), each running
//! `come-repro grid FILE --shard I/N` into its own store. The script is written under
//! `results/slurm/<grid>/` (kept, so a resubmission of some indices uses the same
//! partition) and submitted with `sbatch`.

use crate::error::{Error, Result};
use std::fmt::Write;
use std::path::{Path, PathBuf};

/// What the array asks of the scheduler, and what each task runs.
#[derive(Debug, Clone, Default)]
pub struct SlurmJob {
    /// The grid file (absolute).
    pub grid: PathBuf,
    /// Array tasks = shards.
    pub shards: usize,
    pub partition: Option<String>,
    pub gpus_per_task: Option<u32>,
    pub cpus_per_task: usize,
    /// Slurm memory spec, e.g. `32G`.
    pub mem: Option<String>,
    /// Slurm time limit, e.g. `12:00:00`.
    pub time: Option<String>,
    /// At most this many tasks at once (`--array=...%K`).
    pub max_parallel: Option<usize>,
    /// The come-repro binary (absolute).
    pub binary: PathBuf,
    /// Where each task starts (the project directory).
    pub workdir: PathBuf,
    /// Environment the tasks need, written into the script.
    pub env: Vec<(String, String)>,
    /// The command line that made this script, for the record.
    pub command: String,
}

/// Environment variables a task needs to find libtorch, the data and the models.
pub const PASSED_ENV: &[&str] = &[
    "LD_LIBRARY_PATH",
    "COME_DATA",
    "COME_MODELS",
    "COME_WORK",
    "COME_TMP",
    "COME_C4",
    "COME_STATE_BUDGET_MIB",
];

impl SlurmJob {
    /// `results/slurm/<grid>/` under the working directory.
    pub fn dir(&self) -> PathBuf {
        self.workdir
            .join("results/slurm")
            .join(crate::shard::grid_stem(&self.grid))
    }

    pub fn script_path(&self) -> PathBuf {
        self.dir().join(format!(
            "{}-{}.sbatch",
            crate::shard::grid_stem(&self.grid),
            self.shards
        ))
    }

    /// The sbatch script.
    pub fn script(&self) -> String {
        let n = self.shards;
        let stem = crate::shard::grid_stem(&self.grid);
        let mut s = String::from("#!/bin/bash\n");
        let mut opt = |k: &str, v: String| {
            let _ = writeln!(s, "#SBATCH --{k}={v}");
        };
        opt("job-name", format!("come-{stem}"));
        let throttle = self.max_parallel.map_or(String::new(), |k| format!("%{k}"));
        opt("array", format!("0-{}{throttle}", n.saturating_sub(1)));
        opt("output", format!("{}/%A_%a.log", self.dir().display()));
        opt("chdir", self.workdir.display().to_string());
        opt("cpus-per-task", self.cpus_per_task.to_string());
        if let Some(p) = &self.partition {
            opt("partition", p.clone());
        }
        if let Some(g) = self.gpus_per_task {
            opt("gpus-per-task", g.to_string());
        }
        if let Some(m) = &self.mem {
            opt("mem", m.clone());
        }
        if let Some(t) = &self.time {
            opt("time", t.clone());
        }
        let _ = writeln!(
            s,
            "\n# Written by: {}\n# {n} shard(s) of {}: runs that share a pruned checkpoint are in one shard,\n# so no expensive stage is computed twice. Each task writes its own store,\n# results/shards/{stem}-<I>-of-{n}.sqlite; merge them with `come-repro runs merge`.\n# Resubmit some tasks with `sbatch --array=I,J {}`: the shard count is fixed below.",
            self.command,
            self.grid.display(),
            self.script_path().display()
        );
        s.push_str("set -euo pipefail\n");
        for (k, v) in &self.env {
            let _ = writeln!(s, "export {k}={}", shell_quote(v));
        }
        let _ = writeln!(
            s,
            "# Arguments after the script's name go to `come-repro grid` (e.g. --retry-failed).\nexec {} grid {} --shard \"$SLURM_ARRAY_TASK_ID/{n}\" --threads \"${{SLURM_CPUS_PER_TASK:-{}}}\" \"$@\"",
            shell_quote(&self.binary.display().to_string()),
            shell_quote(&self.grid.display().to_string()),
            self.cpus_per_task
        );
        s
    }

    /// Write the script and submit it; returns the job id.
    pub fn submit(&self) -> Result<String> {
        let path = self.write_script()?;
        let out = std::process::Command::new("sbatch")
            .arg("--parsable")
            .arg(&path)
            .output()
            .map_err(|e| {
                Error::Invalid(format!(
                    "cannot run sbatch ({e}): is Slurm installed here? `--dry-run` writes the script without submitting"
                ))
            })?;
        if !out.status.success() {
            return Err(Error::Invalid(format!(
                "sbatch {} failed: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let id = text
            .trim()
            .split(';')
            .next()
            .unwrap_or_default()
            .to_string();
        if id.is_empty() {
            return Err(Error::Invalid(format!("sbatch printed no job id: {text}")));
        }
        Ok(id)
    }

    pub fn write_script(&self) -> Result<PathBuf> {
        let path = self.script_path();
        let dir = self.dir();
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        crate::publish::write_atomically(&path, self.script().as_bytes())?;
        Ok(path)
    }
}

/// `'...'` with embedded quotes escaped, for paths and values in the script.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The environment to pass: the variables of [`PASSED_ENV`] that are set.
pub fn passed_env() -> Vec<(String, String)> {
    PASSED_ENV
        .iter()
        .filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v)))
        .collect()
}

/// An absolute form of `p` (relative to the current directory).
pub fn absolute(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    })
}
