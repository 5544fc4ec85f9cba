//! Device memory in use on an NVIDIA GPU, read through NVML (the driver's management
//! library, loaded at run time: nothing to link, and off NVIDIA machines it is simply
//! absent). libtorch does not expose its caching allocator's statistics through tch, so
//! peaks are sampled: a thread reads the device's used memory every few milliseconds.

use std::ffi::{c_char, c_int, c_uint, c_void, CStr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[repr(C)]
#[derive(Default)]
struct NvmlMemory {
    total: u64,
    free: u64,
    used: u64,
}

type Device = *mut c_void;
type InitFn = unsafe extern "C" fn() -> c_int;
type HandleFn = unsafe extern "C" fn(c_uint, *mut Device) -> c_int;
type MemoryFn = unsafe extern "C" fn(Device, *mut NvmlMemory) -> c_int;
type NameFn = unsafe extern "C" fn(Device, *mut c_char, c_uint) -> c_int;
type DriverFn = unsafe extern "C" fn(*mut c_char, c_uint) -> c_int;

/// One GPU as NVML sees it.
pub struct Nvml {
    device: Device,
    memory: MemoryFn,
    name: NameFn,
    driver: DriverFn,
}

// The handle is an opaque token NVML allows from any thread.
unsafe impl Send for Nvml {}
unsafe impl Sync for Nvml {}

fn symbol<T>(lib: &crate::dl::Library, name: &str) -> Option<T> {
    let p = lib.symbol(name)?;
    // SAFETY: `T` is the function pointer type NVML documents for `name`.
    Some(unsafe { std::mem::transmute_copy::<usize, T>(&p) })
}

impl Nvml {
    /// GPU `index` (NVML's numbering, which is CUDA's without CUDA_VISIBLE_DEVICES);
    /// None where there is no NVIDIA driver.
    pub fn open(index: u32) -> Option<Nvml> {
        let h = crate::dl::open("libnvidia-ml.so.1").ok()?;
        let h = &h;
        let init: InitFn = symbol(h, "nvmlInit_v2")?;
        let by_index: HandleFn = symbol(h, "nvmlDeviceGetHandleByIndex_v2")?;
        let mut device: Device = std::ptr::null_mut();
        unsafe {
            if init() != 0 || by_index(index, &mut device) != 0 {
                return None;
            }
        }
        Some(Nvml {
            device,
            memory: symbol(h, "nvmlDeviceGetMemoryInfo")?,
            name: symbol(h, "nvmlDeviceGetName")?,
            driver: symbol(h, "nvmlSystemGetDriverVersion")?,
        })
    }

    fn memory(&self) -> Option<NvmlMemory> {
        let mut m = NvmlMemory::default();
        (unsafe { (self.memory)(self.device, &mut m) } == 0).then_some(m)
    }

    /// Bytes in use on the device (every process's).
    pub fn used_bytes(&self) -> Option<u64> {
        self.memory().map(|m| m.used)
    }

    pub fn total_bytes(&self) -> Option<u64> {
        self.memory().map(|m| m.total)
    }

    pub fn name(&self) -> Option<String> {
        let mut buf = [0 as c_char; 96];
        (unsafe { (self.name)(self.device, buf.as_mut_ptr(), buf.len() as c_uint) } == 0).then(
            || {
                unsafe { CStr::from_ptr(buf.as_ptr()) }
                    .to_string_lossy()
                    .into_owned()
            },
        )
    }

    pub fn driver_version(&self) -> Option<String> {
        let mut buf = [0 as c_char; 96];
        (unsafe { (self.driver)(buf.as_mut_ptr(), buf.len() as c_uint) } == 0).then(|| {
            unsafe { CStr::from_ptr(buf.as_ptr()) }
                .to_string_lossy()
                .into_owned()
        })
    }
}

/// The largest device memory in use while it runs, above what was in use when it started.
pub struct PeakSampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    start: u64,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PeakSampler {
    pub fn start(nvml: Arc<Nvml>, every: Duration) -> PeakSampler {
        let start = nvml.used_bytes().unwrap_or(0);
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(start));
        let (s, p) = (stop.clone(), peak.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if let Some(u) = nvml.used_bytes() {
                    p.fetch_max(u, Ordering::Relaxed);
                }
                std::thread::sleep(every);
            }
        });
        PeakSampler {
            stop,
            peak,
            start,
            thread: Some(thread),
        }
    }

    /// Stop sampling; bytes above the starting level at the peak.
    pub fn finish(self) -> u64 {
        let start = self.start;
        self.finish_absolute().saturating_sub(start)
    }

    /// Stop sampling; bytes in use at the peak.
    pub fn finish_absolute(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.peak.load(Ordering::Relaxed)
    }
}

impl Drop for PeakSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
