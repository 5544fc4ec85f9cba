//! Cancellation: one process-wide flag that Ctrl-C sets. Long work (a grid, a recovery's
//! steps) checks it between units and stops with an error the grid records as
//! "interrupted".

use crate::error::{Error, Result};
use std::sync::atomic::{AtomicBool, Ordering};

/// Set when the user asks to stop (Ctrl-C): the current stage ends, the run is marked
/// interrupted and no further run starts.
pub static STOP: AtomicBool = AtomicBool::new(false);

/// Whether a stop was asked for.
pub fn requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// Err("interrupted") once a stop was asked for.
pub fn check() -> Result<()> {
    if requested() {
        return Err(Error::Invalid("interrupted".into()));
    }
    Ok(())
}
