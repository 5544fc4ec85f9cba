//! How many tokens go into one scoring forward, and what happens when they do not fit.
//!
//! `auto` starts from a budget sized for the device and halves it whenever a forward runs
//! out of memory (the batch is retried, nothing is lost), the way lm-evaluation-harness's
//! `--batch_size auto` backs off from its largest batch. A fixed budget backs off the same
//! way instead of aborting a long grid; the budget that finally worked is reported.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::cell::Cell;
use std::fmt;
use std::panic::{self, AssertUnwindSafe};
use std::str::FromStr;
use std::sync::Once;
use tch::Device;

/// `auto` or a number of padded tokens per forward. Serialises as `"auto"` or the bare
/// number, so run hashes made when the budget was a plain integer stay the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchSize {
    Tokens(usize),
    Auto,
}

impl BatchSize {
    /// The budget the first forward tries. On CPU larger batches only add memory traffic
    /// (4096 measured fastest for SmolLM2 here); on a GPU a large budget keeps the device
    /// busy and is halved until it fits.
    pub fn initial_tokens(self, device: Device) -> usize {
        match self {
            BatchSize::Tokens(n) => n.max(1),
            BatchSize::Auto if device.is_cuda() => AUTO_CUDA_TOKENS,
            BatchSize::Auto => AUTO_CPU_TOKENS,
        }
    }
}

impl Serialize for BatchSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            BatchSize::Tokens(n) => s.serialize_u64(*n as u64),
            BatchSize::Auto => s.serialize_str("auto"),
        }
    }
}

impl<'de> Deserialize<'de> for BatchSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = BatchSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("`auto` or a positive number of tokens")
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> std::result::Result<BatchSize, E> {
                match n {
                    0 => Err(E::custom(
                        "batch size must be `auto` or a positive number of tokens, got 0",
                    )),
                    n => Ok(BatchSize::Tokens(n as usize)),
                }
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> std::result::Result<BatchSize, E> {
                match u64::try_from(n) {
                    Ok(n) => self.visit_u64(n),
                    Err(_) => Err(E::custom(format!(
                        "batch size must be `auto` or a positive number of tokens, got {n}"
                    ))),
                }
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> std::result::Result<BatchSize, E> {
                s.parse().map_err(|e: Error| E::custom(e))
            }
        }
        d.deserialize_any(V)
    }
}

pub const AUTO_CPU_TOKENS: usize = 4096;
pub const AUTO_CUDA_TOKENS: usize = 1 << 16;

impl Default for BatchSize {
    fn default() -> Self {
        BatchSize::Tokens(AUTO_CPU_TOKENS)
    }
}

impl fmt::Display for BatchSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BatchSize::Tokens(n) => write!(f, "{n}"),
            BatchSize::Auto => f.write_str("auto"),
        }
    }
}

impl FromStr for BatchSize {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("auto") {
            return Ok(BatchSize::Auto);
        }
        match s.parse::<usize>() {
            Ok(n) if n > 0 => Ok(BatchSize::Tokens(n)),
            _ => Err(Error::Invalid(format!(
                "batch size must be `auto` or a positive number of tokens, got `{s}`"
            ))),
        }
    }
}

/// Whether a libtorch error message reports an allocation failure (CUDA's caching
/// allocator, cuBLAS's workspace, or the CPU allocator).
pub fn is_oom(msg: &str) -> bool {
    const MARKS: [&str; 5] = [
        "out of memory",
        "CUBLAS_STATUS_ALLOC_FAILED",
        "can't allocate memory",
        "not enough memory",
        "Cannot allocate memory",
    ];
    MARKS.iter().any(|m| msg.contains(m))
}

thread_local! {
    static CATCHING: Cell<bool> = const { Cell::new(false) };
}
static QUIET_HOOK: Once = Once::new();

/// Runs `f`, turning an allocation failure inside libtorch into `Error::OutOfMemory`,
/// whether it surfaced as an error (fallible calls) or as a panic (tch's infallible
/// calls unwrap). Other panics continue to unwind. The default panic message is held back
/// for the out-of-memory panics caught here, since the caller retries smaller.
pub fn catch_oom<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    QUIET_HOOK.call_once(|| {
        let default = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            let quiet =
                CATCHING.with(Cell::get) && payload_text(info.payload()).is_some_and(is_oom);
            if !quiet {
                default(info);
            }
        }));
    });
    let was = CATCHING.with(|c| c.replace(true));
    let out = panic::catch_unwind(AssertUnwindSafe(f));
    CATCHING.with(|c| c.set(was));
    match out {
        Ok(Err(Error::Torch(e))) if is_oom(&e.to_string()) => {
            Err(Error::OutOfMemory(first_line(&e.to_string())))
        }
        Ok(r) => r,
        Err(payload) => match payload_text(payload.as_ref()) {
            Some(msg) if is_oom(msg) => Err(Error::OutOfMemory(first_line(msg))),
            _ => panic::resume_unwind(payload),
        },
    }
}

fn payload_text(p: &(dyn std::any::Any + Send)) -> Option<&str> {
    p.downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| p.downcast_ref::<&str>().copied())
}

/// libtorch messages carry a C++ backtrace after the first lines; keep the part that says
/// what failed.
fn first_line(msg: &str) -> String {
    let line = msg
        .lines()
        .find(|l| is_oom(l))
        .or_else(|| msg.lines().next())
        .unwrap_or(msg);
    line.trim().chars().take(300).collect()
}

/// The next budget after an out-of-memory failure of a batch of `rows` rows of up to
/// `longest` tokens: half the rows (at least one). None when a single row already failed,
/// since nothing smaller can be tried.
pub fn shrink(rows: usize, longest: usize) -> Option<usize> {
    (rows > 1).then(|| (rows / 2).max(1) * longest.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        assert_eq!("auto".parse::<BatchSize>().unwrap(), BatchSize::Auto);
        assert_eq!(" AUTO ".parse::<BatchSize>().unwrap(), BatchSize::Auto);
        assert_eq!("512".parse::<BatchSize>().unwrap(), BatchSize::Tokens(512));
        for bad in ["0", "-3", "lots", ""] {
            let e = bad.parse::<BatchSize>().unwrap_err().to_string();
            assert!(e.contains("auto") && e.contains(bad), "{e}");
        }
        assert_eq!(BatchSize::Auto.to_string(), "auto");
        assert_eq!(BatchSize::Tokens(7).to_string(), "7");
    }

    #[test]
    fn serialises_as_number_or_auto() {
        assert_eq!(
            serde_json::to_string(&BatchSize::Tokens(4096)).unwrap(),
            "4096"
        );
        assert_eq!(serde_json::to_string(&BatchSize::Auto).unwrap(), "\"auto\"");
        let b: BatchSize = serde_json::from_str("\"auto\"").unwrap();
        assert_eq!(b, BatchSize::Auto);
        let b: BatchSize = serde_json::from_str("123").unwrap();
        assert_eq!(b, BatchSize::Tokens(123));
        for bad in ["\"big\"", "0", "-5", "1.5"] {
            let e = serde_json::from_str::<BatchSize>(bad)
                .unwrap_err()
                .to_string();
            assert!(e.contains("auto"), "{bad}: {e}");
        }
    }

    #[test]
    fn initial_budget_by_device() {
        assert_eq!(BatchSize::Auto.initial_tokens(Device::Cpu), AUTO_CPU_TOKENS);
        assert_eq!(
            BatchSize::Auto.initial_tokens(Device::Cuda(0)),
            AUTO_CUDA_TOKENS
        );
        assert_eq!(BatchSize::Tokens(99).initial_tokens(Device::Cuda(0)), 99);
    }

    #[test]
    fn shrink_halves_rows_and_stops_at_one() {
        assert_eq!(shrink(8, 100), Some(400));
        assert_eq!(shrink(3, 100), Some(100));
        assert_eq!(shrink(2, 100), Some(100));
        assert_eq!(shrink(1, 100), None);
    }

    #[test]
    fn recognises_libtorch_allocation_failures() {
        assert!(is_oom("CUDA out of memory. Tried to allocate 20.00 MiB. GPU 0 has a total capacity of 79.1 GiB"));
        assert!(is_oom(
            "CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"
        ));
        assert!(is_oom("[enforce fail at alloc_cpu.cpp:117] err == 0. DefaultCPUAllocator: can't allocate memory: you tried to allocate 9007199254740992 bytes. Error code 12 (Cannot allocate memory)"));
        assert!(!is_oom("shape '[2, 3]' is invalid for input of size 5"));
    }

    #[test]
    fn a_real_allocation_failure_is_caught_and_later_work_goes_on() {
        // 2^53 bytes: far beyond any address space, so the CPU allocator refuses at once.
        let r = catch_oom(|| {
            let t = tch::Tensor::empty([1i64 << 51], (tch::Kind::Float, Device::Cpu));
            Ok(t.size())
        });
        match r {
            Err(Error::OutOfMemory(msg)) => assert!(is_oom(&msg) && !msg.contains('\n'), "{msg}"),
            other => panic!("expected OutOfMemory, got {other:?}"),
        }
        let ok = catch_oom(|| {
            Ok(tch::Tensor::ones([4], (tch::Kind::Float, Device::Cpu))
                .sum(tch::Kind::Float)
                .double_value(&[]))
        });
        assert_eq!(ok.unwrap(), 4.0);
        // The fallible API's error takes the same path.
        let r = catch_oom(|| {
            Ok(tch::Tensor::f_empty([1i64 << 51], (tch::Kind::Float, Device::Cpu))?.size())
        });
        assert!(matches!(r, Err(Error::OutOfMemory(_))), "{r:?}");
    }

    #[test]
    fn other_panics_still_unwind() {
        let r = panic::catch_unwind(|| catch_oom(|| -> Result<()> { panic!("a bug, not memory") }));
        assert!(r.is_err());
        let e = catch_oom(|| -> Result<()> { Err(Error::Invalid("plain error".into())) });
        assert!(matches!(e, Err(Error::Invalid(_))));
    }
}
