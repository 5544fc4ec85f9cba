//! Scoring several tasks in one go. On CPU workers ([`super::workers`]) the tasks'
//! batches form one queue, so a core that finishes a task's last batch starts on the
//! next task instead of waiting for the other core (measured: per task, the last batch
//! left a core idle for about 8 % of the wall time). Each task keeps its own batches, so
//! its scores do not depend on which other tasks run beside it, nor on the worker count.
//! Elsewhere (a GPU, one thread) tasks run one after another, as [`score_documents`]
//! alone would.

use super::batching::catch_oom;
use super::loglik::{
    pack_docs, plan_batches, run_batches, score_batch, score_documents, Packed, Score, ScoreLayout,
    ScoreOptions, TokenRequest,
};
use super::profile::ScoreProfile;
use super::workers;
use crate::error::Result;
use crate::model::Model;

/// What the caller sees while tasks are scored.
pub trait ScoreHooks {
    /// `done` of task `task`'s documents are scored.
    fn progress(&mut self, _task: usize, _done: usize) {}
    /// Every document of `task` is scored (tasks are handed over in order), with where
    /// its time went. An error stops the scoring of the remaining tasks.
    fn scored(&mut self, task: usize, scores: Vec<Vec<Score>>, prof: ScoreProfile) -> Result<()>;
}

/// Scores every task's documents (per task, per document, per request), on
/// [`workers::count`] workers.
pub fn score_tasks(
    model: &Model,
    tasks: &[&[Vec<TokenRequest>]],
    opts: &mut ScoreOptions,
    hooks: &mut dyn ScoreHooks,
) -> Result<()> {
    let n = workers::count(model)?;
    score_tasks_on(model, tasks, opts, n, hooks)
}

/// [`score_tasks`] on `n` workers (one: each task in turn, as [`score_documents`]).
pub fn score_tasks_on(
    model: &Model,
    tasks: &[&[Vec<TokenRequest>]],
    opts: &mut ScoreOptions,
    n: usize,
    hooks: &mut dyn ScoreHooks,
) -> Result<()> {
    if n <= 1 || ScoreLayout::for_device(model.device) != ScoreLayout::Packed {
        for (k, docs) in tasks.iter().enumerate() {
            let mut prof = ScoreProfile::default();
            let scores = score_documents(model, docs, opts, &mut prof, |d| hooks.progress(k, d))?;
            hooks.scored(k, scores, prof)?;
        }
        return Ok(());
    }
    let _g = tch::no_grad_guard();
    let (mut packed, mut state) = (Vec::with_capacity(tasks.len()), vec![]);
    for docs in tasks {
        let mut prof = ScoreProfile {
            workers: n,
            ..Default::default()
        };
        let p = pack_docs(docs, opts.max_length, &mut prof)?;
        state.push(TaskState::new(p.len(), prof));
        packed.push(p);
    }
    let packed = packed;
    // Jobs in task order, each task's longest rows first.
    let jobs: Vec<(usize, Vec<usize>)> = packed
        .iter()
        .enumerate()
        .flat_map(|(k, p)| {
            plan_batches(p, opts.token_budget)
                .into_iter()
                .map(move |b| (k, b))
        })
        .collect();
    let mut handed = 0;
    let left = workers::run(
        model,
        &jobs,
        n.min(jobs.len()).max(1),
        |m, (k, batch)| {
            let rows: Vec<&Packed> = batch.iter().map(|&i| &packed[*k][i]).collect();
            let mut prof = ScoreProfile::default();
            let scores = score_batch(m, &rows, &mut prof)?;
            Ok((scores, prof))
        },
        |j, (scores, prof)| {
            let (k, batch) = &jobs[j];
            let s = &mut state[*k];
            s.fill(batch, scores, &prof);
            hooks.progress(*k, s.done);
            hand_over(&mut state, &mut handed, hooks)
        },
    )?;
    let oom = left.out_of_memory;
    retry_out_of_memory(model, &packed, &jobs, &oom, opts, &mut state, hooks)?;
    hand_over(&mut state, &mut handed, hooks)
}

/// Scores the jobs that ran out of memory, task by task, one after another under a
/// shrinking budget.
fn retry_out_of_memory(
    model: &Model,
    packed: &[Vec<Packed>],
    jobs: &[(usize, Vec<usize>)],
    oom: &[usize],
    opts: &mut ScoreOptions,
    state: &mut [TaskState],
    hooks: &mut dyn ScoreHooks,
) -> Result<()> {
    for (k, s) in state.iter_mut().enumerate() {
        let retry: Vec<usize> = oom
            .iter()
            .filter(|&&j| jobs[j].0 == k)
            .flat_map(|&j| jobs[j].1.iter().copied())
            .collect();
        if retry.is_empty() {
            continue;
        }
        let rows: Vec<&Packed> = retry.iter().map(|&i| &packed[k][i]).collect();
        let mut prof = ScoreProfile::default();
        let done = s.done;
        let scores = run_batches(
            &rows,
            &mut opts.token_budget,
            |d| hooks.progress(k, done + d),
            |r| catch_oom(|| score_batch(model, r, &mut prof)),
        )?;
        s.fill(&retry, scores, &prof);
    }
    Ok(())
}

/// A task's scores so far.
struct TaskState {
    scores: Vec<Vec<Score>>,
    done: usize,
    prof: ScoreProfile,
}

impl TaskState {
    fn new(docs: usize, prof: ScoreProfile) -> TaskState {
        TaskState {
            scores: vec![vec![]; docs],
            done: 0,
            prof,
        }
    }

    fn fill(&mut self, docs: &[usize], scores: Vec<Vec<Score>>, prof: &ScoreProfile) {
        for (&i, s) in docs.iter().zip(scores) {
            self.scores[i] = s;
        }
        self.done += docs.len();
        self.prof.add(prof);
    }
}

/// Hands every finished task after the last one handed over, in order.
fn hand_over(
    state: &mut [TaskState],
    handed: &mut usize,
    hooks: &mut dyn ScoreHooks,
) -> Result<()> {
    while let Some(s) = state.get_mut(*handed) {
        if s.done < s.scores.len() {
            break;
        }
        let scores = std::mem::take(&mut s.scores);
        hooks.scored(*handed, scores, s.prof)?;
        *handed += 1;
    }
    Ok(())
}
