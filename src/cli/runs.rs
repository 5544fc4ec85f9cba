//! `come-repro runs`: look into the run store.

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use come_repro::report::paired::Comparison;
use come_repro::track::{DocScore, RunFilter, Status, Store};
use std::path::{Path, PathBuf};

#[derive(Subcommand)]
pub enum RunsCmd {
    /// List runs.
    Ls {
        #[arg(long, default_value = "results/come.sqlite")]
        db: PathBuf,
        /// pending, running, finished, failed or interrupted.
        #[arg(long)]
        status: Option<String>,
        /// Runs whose name contains this.
        #[arg(long)]
        name: Option<String>,
    },
    /// One run: config, environment, stages, metrics, artifacts.
    Show {
        id: i64,
        #[arg(long, default_value = "results/come.sqlite")]
        db: PathBuf,
    },
    /// Parameters and metrics that differ between two runs.
    Diff {
        a: i64,
        b: i64,
        #[arg(long, default_value = "results/come.sqlite")]
        db: PathBuf,
    },
    /// Two runs on the documents both scored: per task, the documents only one gets right
    /// and McNemar's exact test; over the tasks, the difference in average accuracy with
    /// a 95 % paired-bootstrap interval. A side may be several runs that differ only in
    /// their seed (`1,2,3`): documents are then scored by the fraction of seeds right,
    /// and each seed pair's difference is listed.
    Compare {
        #[arg(value_delimiter = ',', num_args = 1)]
        a: Vec<i64>,
        #[arg(value_delimiter = ',', num_args = 1)]
        b: Vec<i64>,
        #[arg(long, default_value = "results/come.sqlite")]
        db: PathBuf,
        /// acc, acc_norm or mixed (acc_norm for HellaSwag, ARC-c and OBQA).
        #[arg(long, default_value = "mixed")]
        convention: String,
        #[arg(long, default_value_t = 10_000)]
        resamples: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Fold shard stores into one: runs deduplicated by hash, a finished copy wins over
    /// an unfinished one, finished copies whose metrics differ are reported (exit 1) and
    /// the target's kept. Merging twice adds nothing.
    Merge {
        #[arg(required = true)]
        shards: Vec<PathBuf>,
        #[arg(long)]
        into: PathBuf,
    },
    /// One row per (run, metric) with the parameters as columns (`--csv`, `--parquet`), or
    /// every run to an MLflow tracking server (`--mlflow http://HOST:PORT`): params,
    /// metrics with their steps, tags (config hash, git commit, stages), files through the
    /// artifact proxy, under a parent run for the store. Exporting again creates nothing
    /// new and updates runs whose status changed.
    Export {
        #[arg(long, default_value = "results/come.sqlite")]
        db: PathBuf,
        #[arg(long, conflicts_with_all = ["parquet", "mlflow"])]
        csv: Option<PathBuf>,
        #[arg(long, conflicts_with = "mlflow")]
        parquet: Option<PathBuf>,
        #[arg(long, value_name = "URL")]
        mlflow: Option<String>,
        /// MLflow experiment (created if missing).
        #[arg(long, default_value = "come-repro", requires = "mlflow")]
        experiment: String,
        /// Table files or directories (e.g. what `tables --out` wrote) to attach to the
        /// store's parent run under `tables/`.
        #[arg(long, requires = "mlflow")]
        tables: Vec<PathBuf>,
    },
}

/// Merge `shards` into the store at `into`, printing what each merge did; conflicts are
/// an error after every shard is merged.
pub fn merge(shards: &[PathBuf], into: &std::path::Path) -> Result<Store> {
    let target = Store::open(into)?;
    let mut conflicts = 0;
    for sh in shards {
        let r = target.merge_from(sh)?;
        println!(
            "{}: {} added, {} replaced unfinished, {} unchanged, {} conflicting",
            sh.display(),
            r.added,
            r.replaced,
            r.unchanged,
            r.conflicts.len()
        );
        for c in &r.conflicts {
            println!(
                "  conflict: {} ({}): {}",
                c.name,
                &c.hash[..12.min(c.hash.len())],
                c.differences.join("; ")
            );
        }
        conflicts += r.conflicts.len();
    }
    if conflicts > 0 {
        bail!(
            "{conflicts} run(s) finished in two stores with different metrics; {} kept its copies",
            into.display()
        );
    }
    Ok(target)
}

pub fn run(cmd: RunsCmd) -> Result<()> {
    // A listing piped into `head` ends quietly when the reader goes, as other Unix tools
    // do, instead of panicking on the closed pipe; nothing here is left half-written by it
    // (merges are one transaction).
    // SAFETY: resets one signal's disposition before any thread is started.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    match cmd {
        RunsCmd::Merge { shards, into } => merge(&shards, &into).map(|_| ()),
        RunsCmd::Ls { db, status, name } => ls(&db, status, name),
        RunsCmd::Show { id, db } => show(id, &db),
        RunsCmd::Diff { a, b, db } => diff(a, b, &db),
        RunsCmd::Compare {
            a,
            b,
            db,
            convention,
            resamples,
            seed,
        } => compare(&a, &b, &db, &convention, resamples, seed),
        RunsCmd::Export {
            db,
            csv,
            parquet,
            mlflow,
            experiment,
            tables,
        } => export(&db, csv, parquet, mlflow, &experiment, &tables),
    }
}

fn ls(db: &Path, status: Option<String>, name: Option<String>) -> Result<()> {
    let s = Store::open_read(db)?;
    let status = match status {
        Some(x) => Some(Status::parse(&x).ok_or_else(|| anyhow::anyhow!("unknown status `{x}`"))?),
        None => None,
    };
    let rows = s.runs(&RunFilter {
        status,
        name_contains: name,
        ..Default::default()
    })?;
    println!(
        "{:>5}  {:<11} {:<12} {:<20} name",
        "id", "status", "hash", "finished"
    );
    for r in rows {
        println!(
            "{:>5}  {:<11} {:<12} {:<20} {}",
            r.id,
            r.status.as_str(),
            &r.hash[..12.min(r.hash.len())],
            r.finished
                .as_deref()
                .unwrap_or("-")
                .chars()
                .take(19)
                .collect::<String>(),
            r.name
        );
    }
    Ok(())
}

/// One run: config, stages, metrics, artifacts, environment.
fn show(id: i64, db: &Path) -> Result<()> {
    let s = Store::open_read(db)?;
    let r = s.run(id)?;
    println!(
        "run {} ({}) {} (identity version {}): {}",
        r.id,
        r.status.as_str(),
        r.hash,
        r.identity_version,
        r.name
    );
    if let Some(e) = &r.error {
        println!("error: {e}");
    }
    println!("config:\n{}", serde_json::to_string_pretty(&r.config)?);
    let metrics = s.metrics(id)?;
    println!("stages:");
    for st in s.stages(id)? {
        println!(
            "  {:<8} {:<9} {:>8.1}s {:>18} {}",
            st.stage,
            st.status.as_str(),
            st.seconds.unwrap_or(0.0),
            stage_peaks(&metrics, &st.stage),
            st.output.unwrap_or_default()
        );
    }
    println!("metrics:");
    for m in metrics {
        let se = m.stderr.map(|x| format!(" ± {x:.4}")).unwrap_or_default();
        println!("  {:<32} {:.6}{se}", m.key(), m.value);
    }
    println!("artifacts:");
    for a in s.artifacts(id)? {
        println!(
            "  {:<16} {} {}",
            a.kind,
            &a.sha256[..12.min(a.sha256.len())],
            a.path
        );
    }
    println!("environment:");
    for (k, v) in s.environment(id)? {
        println!("  {k} = {v}");
    }
    Ok(())
}

fn diff(a: i64, b: i64, db: &Path) -> Result<()> {
    let s = Store::open_read(db)?;
    let d = s.diff(a, b)?;
    println!(
        "{:<40} {:>20} {:>20}",
        "",
        format!("run {a}"),
        format!("run {b}")
    );
    let show =
        |v: &Option<serde_json::Value>| v.as_ref().map_or("-".to_string(), |x| x.to_string());
    for (k, x, y) in &d.params {
        println!("{k:<40} {:>20} {:>20}", show(x), show(y));
    }
    let f = |v: &Option<f64>| v.map_or("-".to_string(), |x| format!("{x:.6}"));
    for (k, x, y) in &d.metrics {
        println!("{k:<40} {:>20} {:>20}", f(x), f(y));
    }
    Ok(())
}

fn compare(
    a: &[i64],
    b: &[i64],
    db: &Path,
    convention: &str,
    resamples: usize,
    seed: u64,
) -> Result<()> {
    let s = Store::open_read(db)?;
    let conv = come_repro::report::Convention::parse(convention)?;
    seed_replicates(&s, a)?;
    seed_replicates(&s, b)?;
    let scores =
        |ids: &[i64]| -> Result<Vec<_>> { ids.iter().map(|&id| Ok(s.doc_scores(id)?)).collect() };
    let (da, db_) = (scores(a)?, scores(b)?);
    let (ra, rb): (Vec<&[DocScore]>, Vec<&[DocScore]>) = (
        da.iter().map(Vec::as_slice).collect(),
        db_.iter().map(Vec::as_slice).collect(),
    );
    let c = come_repro::report::paired::compare_groups(&ra, &rb, conv, resamples, seed)
        .with_context(|| format!("comparing runs {a:?} and {b:?} in {}", db.display()))?;
    print_comparison(&side(&s, a)?, &side(&s, b)?, &c);
    Ok(())
}

fn export(
    db: &Path,
    csv: Option<PathBuf>,
    parquet: Option<PathBuf>,
    mlflow: Option<String>,
    experiment: &str,
    tables: &[PathBuf],
) -> Result<()> {
    let s = Store::open_read(db)?;
    match (csv, parquet, mlflow) {
        (Some(p), _, _) => s.export_csv(&p)?,
        (None, Some(p), _) => s.export_parquet(&p)?,
        (None, None, Some(url)) => {
            use come_repro::track::mlflow::{export_store, Client};
            let r = export_store(&s, &Client::new(&url), experiment, tables)
                .with_context(|| format!("exporting {} to MLflow at {url}", db.display()))?;
            println!(
                "MLflow experiment `{experiment}` (id {}): {} runs created, {} updated, {} unchanged; {} metrics, {} params, {} artifacts sent",
                r.experiment_id, r.created, r.updated, r.unchanged, r.metrics, r.params, r.artifacts
            );
        }
        (None, None, None) => bail!("pass --csv FILE, --parquet FILE or --mlflow URL"),
    }
    Ok(())
}

/// The runs of one side may differ only in a seed: anything else would average unlike
/// things.
fn seed_replicates(s: &Store, ids: &[i64]) -> Result<()> {
    let Some((&first, rest)) = ids.split_first() else {
        bail!("a side of the comparison names no run");
    };
    for &id in rest {
        let d = s.diff(first, id)?;
        let other: Vec<&str> = d
            .params
            .iter()
            .map(|(k, _, _)| k.as_str())
            .filter(|k| !k.ends_with(".seed"))
            .collect();
        if !other.is_empty() {
            bail!(
                "runs {first} and {id} are on the same side of the comparison but differ in {} \
                 (a side's runs may differ only in their seed)",
                other.join(", ")
            );
        }
    }
    Ok(())
}

/// "run 3 (name)" or "runs 3, 4, 5 (name of 3, ...)".
fn side(s: &Store, ids: &[i64]) -> Result<String> {
    let name = s.run(ids[0])?.name;
    Ok(match ids {
        [id] => format!("run {id} ({name})"),
        _ => {
            let list: Vec<String> = ids.iter().map(i64::to_string).collect();
            format!("runs {} (seeds of {name})", list.join(", "))
        }
    })
}

fn print_comparison(a: &str, b: &str, c: &Comparison) {
    let p = |x: Option<f64>| x.map_or("-".to_string(), |p| format!("{p:.4}"));
    println!("A = {a}\nB = {b}");
    let (only_a, only_b) = if c.runs == (1, 1) {
        ("A only", "B only")
    } else {
        ("A more", "B more")
    };
    println!(
        "{:<14} {:>8} {:>5} {:>7} {:>7} {:>7} {:>7} {:>7} {:>9}",
        "task", "metric", "n", "A %", "B %", "B-A", only_a, only_b, "McNemar p"
    );
    for t in &c.tasks {
        println!(
            "{:<14} {:>8} {:>5} {:>7.2} {:>7.2} {:>+7.2} {:>7} {:>7} {:>9}",
            t.task,
            t.metric,
            t.n,
            100.0 * t.acc_a,
            100.0 * t.acc_b,
            100.0 * (t.acc_b - t.acc_a),
            t.only_a,
            t.only_b,
            p(t.p)
        );
    }
    println!(
        "average over {} tasks: B - A = {:+.2} points, 95 % paired bootstrap [{:+.2}, {:+.2}] ({} resamples, p = {:.4}); McNemar over all documents p = {}",
        c.tasks.len(),
        100.0 * c.avg_diff,
        100.0 * c.ci95.0,
        100.0 * c.ci95.1,
        c.resamples,
        c.p_bootstrap,
        p(c.pooled_p)
    );
    if c.per_pair.len() > 1 {
        let d: Vec<String> = c
            .per_pair
            .iter()
            .map(|x| format!("{:+.2}", 100.0 * x))
            .collect();
        let (m, sd) = come_repro::report::mean_sd(&c.per_pair);
        println!(
            "per seed pair (B_i - A_i): {} points; mean {:+.2}, sd {:.2}",
            d.join(", "),
            100.0 * m,
            100.0 * sd.unwrap_or(0.0)
        );
    }
}

/// "peak 812 MiB" (host), with the device's after a slash on CUDA; empty for a stage that
/// did not run (reused from the cache) or ran before peaks were recorded.
fn stage_peaks(metrics: &[come_repro::track::Metric], stage: &str) -> String {
    let of = |name: &str| {
        metrics.iter().find(|m| {
            m.name == name && m.context.split(',').next() == Some(&format!("stage={stage}"))
        })
    };
    match (
        of(come_repro::names::STAGE_PEAK_RSS_MIB),
        of(come_repro::names::STAGE_PEAK_DEVICE_MIB),
    ) {
        (Some(h), Some(d)) => format!("peak {:.0}/{:.0} MiB", h.value, d.value),
        (Some(h), None) => format!("peak {:.0} MiB", h.value),
        (None, Some(d)) => format!("device {:.0} MiB", d.value),
        (None, None) => String::new(),
    }
}
