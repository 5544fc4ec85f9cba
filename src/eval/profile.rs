//! Where scoring time goes: wall-clock per phase and the shapes of what was forwarded.
//! Collected on every evaluation (the clock reads cost nothing next to a forward) so a
//! slow grid can be diagnosed from its results, not rerun under a profiler.

use serde::{Deserialize, Serialize};
use std::time::Instant;
use tch::Device;

/// One task's (or a whole evaluation's) scoring profile.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ScoreProfile {
    /// Tokenising requests (lm-eval's `_encode_pair`) and building prefix tries.
    pub tokenize_s: f64,
    /// Index, position and mask tensors of each batch, and cache gathers.
    pub inputs_s: f64,
    /// Embedding and decoder layers.
    pub forward_s: f64,
    /// Final norm, LM head, log-softmax and argmax at the scored positions, and the copy
    /// of the results to the host.
    pub head_s: f64,
    /// The rest of the task's wall time: batching, summing scores, metrics.
    pub other_s: f64,
    /// Real tokens through the decoder layers.
    pub forwarded_tokens: usize,
    /// Tokens the layers computed including padding (rows x longest row, per forward).
    pub padded_tokens: usize,
    /// Positions the LM head ran at.
    pub head_positions: usize,
    pub rows: usize,
    pub forwards: usize,
    /// Threads that ran forwards side by side (CPU scoring workers); with more than one,
    /// the phase times above are summed over them (worker-seconds, not wall time).
    #[serde(default = "one")]
    pub workers: usize,
}

fn one() -> usize {
    1
}

impl Default for ScoreProfile {
    fn default() -> Self {
        ScoreProfile {
            tokenize_s: 0.0,
            inputs_s: 0.0,
            forward_s: 0.0,
            head_s: 0.0,
            other_s: 0.0,
            forwarded_tokens: 0,
            padded_tokens: 0,
            head_positions: 0,
            rows: 0,
            forwards: 0,
            workers: 1,
        }
    }
}

impl ScoreProfile {
    pub fn add(&mut self, o: &ScoreProfile) {
        self.tokenize_s += o.tokenize_s;
        self.inputs_s += o.inputs_s;
        self.forward_s += o.forward_s;
        self.head_s += o.head_s;
        self.other_s += o.other_s;
        self.forwarded_tokens += o.forwarded_tokens;
        self.padded_tokens += o.padded_tokens;
        self.head_positions += o.head_positions;
        self.rows += o.rows;
        self.forwards += o.forwards;
        self.workers = self.workers.max(o.workers);
    }

    /// Several tasks' profiles added up.
    pub fn total<'a>(parts: impl IntoIterator<Item = &'a ScoreProfile>) -> ScoreProfile {
        let mut t = ScoreProfile::default();
        for p in parts {
            t.add(p);
        }
        t
    }

    pub fn timed_s(&self) -> f64 {
        self.tokenize_s + self.inputs_s + self.forward_s + self.head_s
    }

    pub fn rows_per_forward(&self) -> f64 {
        self.rows as f64 / self.forwards.max(1) as f64
    }

    /// Share of the layers' work spent on padding.
    pub fn padding_share(&self) -> f64 {
        1.0 - self.forwarded_tokens as f64 / self.padded_tokens.max(1) as f64
    }

    /// One line for a terminal.
    pub fn summary(&self) -> String {
        let per = if self.workers > 1 {
            format!(
                " per worker; {} workers, times summed over them",
                self.workers
            )
        } else {
            String::new()
        };
        format!(
            "tokenize {:.1}s, inputs {:.1}s, forward {:.1}s, head {:.1}s, other {:.1}s; \
             {} tokens forwarded ({:.0} tok/s in the layers{per}), {:.1}% padding, {} \
             forwards of {:.1} rows, head at {} positions",
            self.tokenize_s,
            self.inputs_s,
            self.forward_s,
            self.head_s,
            self.other_s,
            self.forwarded_tokens,
            self.forwarded_tokens as f64 / self.forward_s.max(1e-9),
            100.0 * self.padding_share(),
            self.forwards,
            self.rows_per_forward(),
            self.head_positions,
        )
    }
}

/// A stopwatch that waits for the device first, so asynchronous CUDA work is charged to
/// the phase that queued it rather than to whichever phase next reads a result.
pub struct Lap {
    device: Device,
    last: Instant,
}

impl Lap {
    pub fn start(device: Device) -> Lap {
        crate::runtime::synchronize(device);
        Lap {
            device,
            last: Instant::now(),
        }
    }

    /// Seconds since the previous lap (or the start).
    pub fn lap(&mut self) -> f64 {
        crate::runtime::synchronize(self.device);
        let now = Instant::now();
        let dt = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        dt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_and_derives() {
        let a = ScoreProfile {
            tokenize_s: 1.0,
            forward_s: 2.0,
            forwarded_tokens: 75,
            padded_tokens: 100,
            rows: 6,
            forwards: 2,
            ..Default::default()
        };
        let mut b = a;
        b.add(&a);
        assert_eq!(b.forward_s, 4.0);
        assert_eq!(b.rows_per_forward(), 3.0);
        assert!((b.padding_share() - 0.25).abs() < 1e-12);
        assert_eq!(b.timed_s(), 6.0);
        assert!(b.summary().contains("25.0% padding"), "{}", b.summary());
    }
}
