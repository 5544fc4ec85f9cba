//! Data-parallel scoring on CPU: whole batches go to one worker thread per core, each
//! running libtorch single-threaded, instead of every batch in turn split over the cores.
//! A product split over two threads waits at OpenMP barriers and leaves one core idle
//! through everything that runs serially (the dispatcher, small kernels, building the
//! batch); whole batches per core keep both busy.
//!
//! The batches are the sequential path's. Scores equal that path's bit for bit when it
//! runs libtorch at one thread, and within float rounding at more (a few kernels sum in
//! another order when split over threads; on SmolLM2, with MKL in its strict reproducible
//! mode (`crate::mkl_dispatch`), the seven tasks gave the same bits at two threads too).

use super::batching::catch_oom;
use crate::error::{Error, Result};
use crate::model::Model;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;

/// Worker threads for CPU scoring: one per libtorch thread the caller set (`--threads`);
/// `COME_SCORE_WORKERS=N` sets another count (1: each forward split over the threads, the
/// way scoring ran before). One on a GPU.
pub fn count(model: &Model) -> Result<usize> {
    if model.device.is_cuda() {
        return Ok(1);
    }
    match std::env::var(WORKERS_ENV) {
        Ok(v) => match v.trim().parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(Error::Invalid(format!(
                "{WORKERS_ENV} must be a positive number of worker threads, got `{v}`"
            ))),
        },
        Err(_) => Ok(tch::get_num_threads().max(1) as usize),
    }
}

pub const WORKERS_ENV: &str = "COME_SCORE_WORKERS";

/// What [`run`] leaves undone.
pub struct Leftover {
    /// Jobs that ran out of memory (nothing of theirs was delivered).
    pub out_of_memory: Vec<usize>,
}

/// Runs `score` on every job on `workers` threads, each with its own handle on `model`
/// and libtorch at one thread, and hands each result to `done(job, result)` on the
/// calling thread as it arrives. Jobs are taken in order. The first error (from `score`,
/// other than out-of-memory, or from `done`) stops the rest and is returned; jobs out of
/// memory are listed for the caller to retry smaller.
pub fn run<J: Sync, R: Send>(
    model: &Model,
    jobs: &[J],
    workers: usize,
    score: impl Fn(&Model, &J) -> Result<R> + Sync,
    mut done: impl FnMut(usize, R) -> Result<()>,
) -> Result<Leftover> {
    let threads = tch::get_num_threads();
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let (tx, rx) = mpsc::channel::<(usize, Result<R>)>();
    let mut left = Leftover {
        out_of_memory: vec![],
    };
    let mut first_err = None;
    std::thread::scope(|scope| {
        for _ in 0..workers {
            let (tx, next, stop, score) = (tx.clone(), &next, &stop, &score);
            let mine = model.shallow_clone();
            scope.spawn(move || {
                // Per thread: OpenMP's thread count is a per-thread setting.
                tch::set_num_threads(1);
                let _g = tch::no_grad_guard();
                while !stop.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(job) = jobs.get(i) else { break };
                    let r = catch_oom(|| score(&mine, job));
                    if tx.send((i, r)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(tx);
        for (i, r) in rx {
            if first_err.is_some() {
                continue;
            }
            let delivered = match r {
                Err(Error::OutOfMemory(_)) => {
                    left.out_of_memory.push(i);
                    Ok(())
                }
                Err(e) => Err(e),
                Ok(r) => done(i, r),
            };
            if let Err(e) = delivered {
                stop.store(true, Ordering::Relaxed);
                first_err = Some(e);
            }
        }
    });
    // MKL's thread count may be process-wide: give the caller back its own.
    tch::set_num_threads(threads);
    match first_err {
        Some(e) => Err(e),
        None => {
            left.out_of_memory.sort_unstable();
            Ok(left)
        }
    }
}
