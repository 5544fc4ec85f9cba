//! The command line's one view of progress [`Event`]s, for every subcommand: a bar of the
//! grid's runs (once a grid reports one), a bar of the current items (documents, windows,
//! optimiser steps, prune rounds, teacher sequences), and notes printed above them.

use super::common::{bar, log_off_terminal, note};
use come_repro::progress::Event;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

pub struct Bars {
    mp: MultiProgress,
    runs: Option<ProgressBar>,
    items: ProgressBar,
    /// What the items bar counts now: a new one restarts its rate and ETA.
    current: String,
    /// Inside a run's stage: notes are indented under it.
    in_stage: bool,
}

impl Bars {
    pub fn new() -> Bars {
        let mp = MultiProgress::new();
        let items = mp.add(bar(0, ""));
        Bars {
            mp,
            runs: None,
            items,
            current: String::new(),
            in_stage: false,
        }
    }

    /// A sink for the library: `run_grid(.., &mut bars.sink())`.
    pub fn sink(&mut self) -> impl FnMut(Event) + Send + '_ {
        |e| self.event(e)
    }

    pub fn event(&mut self, e: Event) {
        match e {
            Event::Run { done, total, name } => self.run(done, total, name),
            Event::Stage { run, stage } => {
                self.items.set_prefix(format!("{run} {stage}"));
                self.restart("");
                self.in_stage = true;
            }
            Event::Items { what, done, total } => self.count(&what, done, total),
            Event::Unit { index, of, label } => {
                self.note(&format!("distill {label} ({}/{of})", index + 1));
                self.restart(&label);
            }
            Event::Step {
                unit,
                step,
                steps,
                loss,
                tokens_per_s,
            } => {
                self.count(&unit, step, steps);
                self.items
                    .set_message(format!("{unit} loss {loss:.3e} {tokens_per_s:.0} tok/s"));
            }
            Event::Note(line) => self.note(&line),
        }
    }

    /// A line above the bars, indented when it belongs to a run's stage.
    pub fn note(&self, line: &str) {
        let line = match self.in_stage {
            true => format!("  {line}"),
            false => line.to_string(),
        };
        note(&self.items, &line);
    }

    pub fn finish(&self) {
        self.items.finish_and_clear();
        if let Some(r) = &self.runs {
            r.finish_and_clear();
        }
    }

    fn run(&mut self, done: usize, total: usize, name: String) {
        let runs = self.runs.get_or_insert_with(|| {
            let pb = self.mp.insert(0, bar(0, "runs"));
            // The items bar names its run and stage in a column of its own.
            self.items.set_style(
                ProgressStyle::with_template(
                    "{prefix:>24} {msg:>14} [{bar:30}] {pos}/{len} {per_sec} eta {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            log_off_terminal(&pb);
            pb
        });
        runs.set_length(total as u64);
        runs.set_position(done as u64);
        runs.set_message(name);
        self.in_stage = false;
        if done == total {
            self.finish();
        }
    }

    fn count(&mut self, what: &str, done: usize, total: usize) {
        if self.current != what {
            self.restart(what);
        }
        if total > 0 {
            self.items.set_length(total as u64);
        }
        self.items.set_position(done as u64);
    }

    /// Position and clock from zero, so each stage's and task's rate and ETA are its own.
    fn restart(&mut self, what: &str) {
        self.items.reset();
        self.items.set_length(0);
        self.items.set_message(what.to_string());
        self.current = what.to_string();
    }
}

impl Drop for Bars {
    fn drop(&mut self) {
        self.finish();
    }
}
