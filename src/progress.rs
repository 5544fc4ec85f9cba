//! Progress: one event type for every long piece of work (a grid's runs, a run's stages,
//! a prune's steps, a recovery's units and optimiser steps, an evaluation's documents and
//! windows), delivered to one kind of sink. The command line draws bars from it, the grid
//! runner also turns it into heartbeats, tests ignore it. Cancellation is not an event:
//! work asks [`crate::cancel`] between units.

/// What a piece of work reports while it runs.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A grid reached run `done` of `total` (`name` is the run starting, empty at the end).
    Run {
        done: usize,
        total: usize,
        name: String,
    },
    /// Run `run` enters stage `stage`.
    Stage { run: String, stage: &'static str },
    /// `done` of `total` items of `what` (documents of a task, perplexity windows, teacher
    /// sequences, prune steps); `total` 0 while unknown.
    Items {
        what: String,
        done: usize,
        total: usize,
    },
    /// A training unit (a student layer, or the whole model) starts: index, count, label.
    Unit {
        index: usize,
        of: usize,
        label: String,
    },
    /// An optimiser step of `unit` finished.
    Step {
        unit: String,
        step: usize,
        steps: usize,
        loss: f64,
        tokens_per_s: f64,
    },
    /// A line worth telling the user (a resumed unit, an out-of-memory back-off, a prune
    /// decision).
    Note(String),
}

/// Where events go. `Send`, because recovery reports from its worker threads.
pub type Sink<'a> = &'a mut (dyn FnMut(Event) + Send);

/// A sink that drops every event.
pub fn ignore(_: Event) {}
