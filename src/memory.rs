//! Peak memory of a stretch of work, such as one stage of a run: host memory from the
//! kernel's high-water mark of this process's resident set, reset at the start where
//! Linux allows it (`/proc/self/clear_refs`), and, on CUDA, the device's used memory
//! sampled through NVML (all of this process's allocations, libtorch's cached blocks
//! included: what the device must have free).

use crate::device_memory::{Nvml, PeakSampler};
use std::sync::Arc;
use std::time::Duration;

/// A memory field of `/proc/self/status` in KiB (`VmRSS:`, `VmHWM:`, ...).
pub fn status_kib(field: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// Peak resident memory of this process (MiB) since it started or since the last
/// [`reset_peak_rss`]; NaN where /proc is unavailable.
pub fn peak_rss_mib() -> f64 {
    status_kib("VmHWM:").map_or(f64::NAN, |k| k as f64 / 1024.0)
}

/// Lower the high-water mark to the present resident set, so the next peak is that of
/// what follows; false where the kernel refuses (then peaks count from the start).
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// What [`PeakWindow::finish`] measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PeakMemory {
    /// Peak resident host memory (MiB), None where unavailable.
    pub host_mib: Option<f64>,
    /// Whether `host_mib` counts from the window's start (false: from the process's).
    pub host_from_start: bool,
    /// Peak used device memory (MiB) on CUDA with NVML, else None.
    pub device_mib: Option<f64>,
}

/// Measures the peaks between `start` and `finish`.
pub struct PeakWindow {
    reset: bool,
    device: Option<PeakSampler>,
}

impl PeakWindow {
    pub fn start(device: tch::Device) -> PeakWindow {
        let device = match device {
            tch::Device::Cuda(i) => Nvml::open(i as u32)
                .map(|n| PeakSampler::start(Arc::new(n), Duration::from_millis(20))),
            _ => None,
        };
        PeakWindow {
            reset: reset_peak_rss(),
            device,
        }
    }

    pub fn finish(self) -> PeakMemory {
        let host = peak_rss_mib();
        PeakMemory {
            host_mib: host.is_finite().then_some(host),
            host_from_start: self.reset,
            device_mib: self
                .device
                .map(|s| s.finish_absolute() as f64 / (1u64 << 20) as f64),
        }
    }
}
