//! Cancellation: one process-wide flag that Ctrl-C sets. Long work (a grid, a recovery's
//! steps, a prune's rounds, an evaluation's tasks) checks it between units and stops with
//! [`Error::Interrupted`], which the grid records as an interrupted run, not a failed one.

use crate::error::{Error, Result};
use std::sync::atomic::{AtomicBool, Ordering};

/// Set when the user asks to stop (Ctrl-C): the current stage ends, the run is marked
/// interrupted and no further run starts.
pub static STOP: AtomicBool = AtomicBool::new(false);

/// Whether a stop was asked for.
pub fn requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// [`Error::Interrupted`] once a stop was asked for.
pub fn check() -> Result<()> {
    if requested() {
        return Err(Error::Interrupted);
    }
    Ok(())
}
