//! (in progress: pipeline stages)
