//! glibc heap settings. libtorch's CPU tensors come from malloc, and a forward allocates
//! and frees the same large activation buffers over and over: when glibc returns them to
//! the system and maps them again, every page faults and is zeroed anew (measured on
//! SmolLM2 scoring: 3.5-5.1 s of system time out of 35 s, against 1.7 s when the blocks
//! stay in the heap).

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod glibc {
    extern "C" {
        pub fn malloc_trim(pad: usize) -> i32;
        pub fn mallopt(param: i32, value: i32) -> i32;
    }
    pub const M_TRIM_THRESHOLD: i32 = -1;
    pub const M_MMAP_THRESHOLD: i32 = -3;
}

/// Give freed heap memory back to the system. A calibration pass frees megabyte-sized
/// activations in a pattern that leaves glibc's arenas holding gigabytes (measured: a
/// one-pass ShortGPT on SmolLM2 peaked at 3.0 GB without, 0.7 GB with a fixed mmap
/// threshold).
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: glibc's malloc_trim takes a byte count and only releases free memory.
    unsafe {
        glibc::malloc_trim(0);
    }
}

/// While alive, freed blocks up to 32 MiB (glibc's largest mmap threshold) stay in the
/// heap for reuse instead of going back to the system. On drop the trim threshold
/// returns to what glibc's own adaptive setting reaches (twice the mmap threshold) and
/// free memory is released, so later stages see a normal heap.
pub struct KeepLargeBlocks(());

const MMAP_THRESHOLD: i32 = 32 << 20;

impl KeepLargeBlocks {
    pub fn new() -> KeepLargeBlocks {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: mallopt only changes allocator parameters; glibc refuses bad values.
        unsafe {
            glibc::mallopt(glibc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
            glibc::mallopt(glibc::M_TRIM_THRESHOLD, i32::MAX);
        }
        KeepLargeBlocks(())
    }
}

impl Default for KeepLargeBlocks {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for KeepLargeBlocks {
    fn drop(&mut self) {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: as in `new`.
        unsafe {
            glibc::mallopt(glibc::M_TRIM_THRESHOLD, 2 * MMAP_THRESHOLD);
        }
        trim();
    }
}
