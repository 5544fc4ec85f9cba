//! MKL's kernel choice on non-Intel CPUs. The PyTorch wheel links Intel MKL into libtorch,
//! and MKL asks `mkl_serv_intel_cpu_true()` whether the CPU is an Intel one before it
//! uses its tuned AVX2 / AVX-512 matrix-product kernels; on an AMD CPU the answer is no
//! and it falls back to slower ones. The function is an exported symbol of libtorch, and
//! an executable's exported symbols come first in the dynamic linker's lookup, so the one
//! defined here answers instead: rustc exports a `#[no_mangle]` function from every
//! executable that links it (a test below checks that the name resolves to it).
//!
//! MKL still checks the CPU's feature flags itself, so the kernels it picks run on the
//! CPU at hand. Measured on a 2-core AMD EPYC (Zen 3): SmolLM2 scoring's layers 18 %
//! and its LM head 30 % faster, log-likelihoods within 5e-5 nats of MKL's own choice, no
//! score changed. `COME_MKL_VENDOR_CHECK=1` restores MKL's own check.
//!
//! MKL's Intel kernels split the inner dimension of skinny products across threads, so a
//! result could depend on the thread count (stories260K's 64-wide products differed by
//! 1e-5 between 1 and 2 threads), and a Slurm shard on one CPU would not reproduce a run
//! on two. [`reproducible_across_threads`] asks MKL for its strict reproducible mode,
//! which keeps products bitwise equal at any thread count (no speed lost that we could
//! measure on SmolLM2 scoring).

use std::os::raw::c_int;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

/// The environment variable that keeps MKL's vendor check.
pub const KEEP_CHECK_ENV: &str = "COME_MKL_VENDOR_CHECK";

static ASKED: AtomicBool = AtomicBool::new(false);

/// Whether MKL is told the CPU is an Intel one (MKL may ask on every call: decided once).
fn answer() -> bool {
    static ANSWER: OnceLock<bool> = OnceLock::new();
    *ANSWER.get_or_init(|| decide(std::env::var(KEEP_CHECK_ENV).ok().as_deref(), is_intel()))
}

/// The answer for a value of [`KEEP_CHECK_ENV`] and the CPU's vendor.
fn decide(keep_env: Option<&str>, intel: bool) -> bool {
    let keep = keep_env.is_some_and(|v| v.trim() == "1");
    !keep || intel
}

/// MKL's own question, answered by [`answer`].
#[no_mangle]
pub extern "C" fn mkl_serv_intel_cpu_true() -> c_int {
    ASKED.store(true, Ordering::Relaxed);
    c_int::from(answer())
}

/// Whether MKL has asked this process's question yet (it asks when it first picks
/// kernels; never, when libtorch was built without MKL).
pub fn asked() -> bool {
    ASKED.load(Ordering::Relaxed)
}

/// The CPU vendor string is "GenuineIntel" (what MKL's own check tests).
fn is_intel() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        let r = std::arch::x86_64::__cpuid(0);
        let mut v = [0u8; 12];
        v[..4].copy_from_slice(&r.ebx.to_le_bytes());
        v[4..8].copy_from_slice(&r.edx.to_le_bytes());
        v[8..].copy_from_slice(&r.ecx.to_le_bytes());
        &v == b"GenuineIntel"
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// What a run records of MKL's settings: `cpu_dispatch` (see [`describe`]) and `cbwr`
/// (the reproducibility mode in effect, `unset` for MKL's default).
pub fn settings() -> [(&'static str, String); 2] {
    let cbwr = std::env::var(CBWR_ENV).unwrap_or_else(|_| "unset".into());
    [("cpu_dispatch", describe().into()), ("cbwr", cbwr)]
}

/// `intel` (MKL's own choice), `forced` (a non-Intel CPU given MKL's Intel kernels) or
/// `vendor-check` (a non-Intel CPU left to MKL's check).
fn describe() -> &'static str {
    match (is_intel(), answer()) {
        (true, _) => "intel",
        (false, true) => "forced",
        (false, false) => "vendor-check",
    }
}

/// MKL's variable for its reproducibility mode, read when MKL first runs.
pub const CBWR_ENV: &str = "MKL_CBWR";

/// Set MKL's strict reproducible mode (`MKL_CBWR=AUTO,STRICT`) unless the user chose a
/// mode. Call before anything runs on libtorch and before threads start (it sets a
/// process environment variable).
pub fn reproducible_across_threads() {
    if std::env::var_os(CBWR_ENV).is_none() {
        std::env::set_var(CBWR_ENV, "AUTO,STRICT");
    }
}

/// The address of a symbol in the process's global scope (libtorch's MKL included), or
/// None where it is not there.
#[cfg(target_os = "linux")]
pub(crate) fn global_symbol(name: &std::ffi::CStr) -> Option<usize> {
    crate::dl::global_symbol(name)
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn global_symbol(_name: &std::ffi::CStr) -> Option<usize> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_variable_keeps_the_check_only_when_set_to_one() {
        assert!(decide(None, false));
        assert!(decide(Some("0"), false));
        assert!(!decide(Some("1"), false));
        assert!(!decide(Some(" 1\n"), false));
        assert!(decide(Some("1"), true));
    }

    /// The dynamic linker resolves MKL's symbol to this crate's function (the export in
    /// build.rs), and MKL asks it when it runs a matrix product.
    #[cfg(target_os = "linux")]
    #[test]
    fn mkl_asks_this_crate() {
        let found = global_symbol(c"mkl_serv_intel_cpu_true");
        assert_eq!(found, Some(mkl_serv_intel_cpu_true as *const () as usize));
        if tch::utils::has_mkl() {
            let a = tch::Tensor::ones([256, 256], (tch::Kind::Float, tch::Device::Cpu));
            let _ = a.matmul(&a);
            assert!(asked(), "MKL ran a matrix product without asking");
        }
    }
}
