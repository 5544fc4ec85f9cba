//! `come-repro grid FILE --devices D1,D2,...`: one worker process per device on this node,
//! all claiming runs from one store. Worker k first tries part k of N of the grid (the
//! shard split, so runs sharing a pruned checkpoint start on one worker), then helps with
//! what is left; the store's claims keep any run from being done twice and the cache's
//! entry locks keep any checkpoint from being built twice.

use super::grid::GridArgs;
use anyhow::{bail, Context, Result};
use come_repro::grid::GridSpec;
use come_repro::runner::requeue_failed;
use come_repro::runtime::DeviceSpec;
use come_repro::shard::Shard;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

/// Threads of each CPU worker when `--threads` is not given: the machine's cores shared
/// out, so two workers do not oversubscribe it.
fn cpu_threads(cpu_workers: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cores / cpu_workers.max(1)).max(1)
}

/// The worker's command line: this invocation's selection, store and cache, plus its
/// device and preferred part.
fn worker_args(
    a: &GridArgs,
    device: DeviceSpec,
    k: usize,
    n: usize,
    threads: Option<usize>,
) -> Vec<String> {
    let mut v: Vec<String> = vec!["grid".into(), a.file.display().to_string()];
    v.extend(["--db".into(), a.db().display().to_string()]);
    v.extend(["--cache".into(), a.cache.display().to_string()]);
    for o in &a.only {
        v.extend(["--only".into(), o.clone()]);
    }
    for (key, val) in &a.filter {
        v.extend(["--filter".into(), format!("{key}={val}")]);
    }
    if let Some(s) = a.shard {
        v.extend(["--shard".into(), s.to_string()]);
    }
    if let Some(t) = threads {
        v.extend(["--threads".into(), t.to_string()]);
    }
    if !a.distill_devices.is_empty() {
        let list: Vec<String> = a.distill_devices.iter().map(|d| d.to_string()).collect();
        v.extend(["--distill-devices".into(), list.join(",")]);
    }
    // Not `--retry-failed`: this process requeues the failed runs once, before the
    // workers start, so that no run is retried by two of them.
    if a.fail_fast {
        v.push("--fail-fast".into());
    }
    v.extend(["--worker-device".into(), device.to_string()]);
    v.extend([
        "--worker-prefer".into(),
        Shard { index: k, count: n }.to_string(),
    ]);
    v
}

pub fn run(a: &GridArgs, spec: &GridSpec) -> Result<()> {
    if a.force {
        bail!("--force with --devices would have every worker redo every run: run --force without --devices");
    }
    if a.retry_failed {
        let n = requeue_failed(spec, &super::grid::options(a))?;
        eprintln!("retrying {n} failed run(s)");
    }
    for d in &a.devices {
        d.resolve().with_context(|| format!("--devices: `{d}`"))?;
    }
    let n = a.devices.len();
    let cpu_workers = a.devices.iter().filter(|d| **d == DeviceSpec::Cpu).count();
    let exe = std::env::current_exe().context("locating the come-repro binary")?;
    // Ctrl-C reaches the workers through the terminal; this process waits for them.
    let _ = ctrlc::set_handler(|| eprintln!("\nworkers stopping after their current stage"));
    let t0 = std::time::Instant::now();
    let mut children = vec![];
    for (k, dev) in a.devices.iter().enumerate() {
        let threads = a
            .threads
            .or((*dev == DeviceSpec::Cpu).then(|| cpu_threads(cpu_workers)));
        let mut child = Command::new(&exe)
            .args(worker_args(a, *dev, k, n, threads))
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting worker {k} on {dev}"))?;
        let err = child.stderr.take();
        let tag = format!("[{k} {dev}]");
        let echo = std::thread::spawn(move || {
            if let Some(err) = err {
                for line in BufReader::new(err).lines().map_while(|l| l.ok()) {
                    eprintln!("{tag} {line}");
                }
            }
        });
        eprintln!(
            "worker {k}: {dev}, {} thread(s), pid {}",
            threads.map_or("default".into(), |t| t.to_string()),
            child.id()
        );
        children.push((k, *dev, child, echo));
    }
    let mut failed = vec![];
    for (k, dev, mut child, echo) in children {
        let status = child
            .wait()
            .with_context(|| format!("waiting for worker {k}"))?;
        let _ = echo.join();
        if !status.success() {
            failed.push(format!("worker {k} ({dev}): {status}"));
        }
    }
    eprintln!(
        "{n} worker(s) done in {:.1} min",
        t0.elapsed().as_secs_f64() / 60.0
    );
    if !failed.is_empty() {
        bail!(
            "{}; rerun the same command to resume (failed runs are retried with --retry-failed)",
            failed.join("; ")
        );
    }
    Ok(())
}
