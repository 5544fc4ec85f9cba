//! The static environment of this process, recorded with every run: code version, library
//! versions, machine. The runner adds what only it knows (device name, seeds, dataset
//! sha256s via [`crate::hashing::file_sha256`]) before calling `Store::record_env`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Keys: `crate.version`, `git.sha`, `git.dirty` (true/false), `libtorch.dir`,
/// `libtorch.version` (from `torch/version.py` beside the libtorch libraries, else the
/// `build-version` file of a plain libtorch download), `torch.threads`,
/// `mkl.cpu_dispatch` and `mkl.cbwr` (see [`crate::mkl_dispatch::settings`]), `host`, `os`,
/// `arch`, `cpus`. A value that cannot be found is "unknown".
pub fn collect() -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    m.insert(
        "crate.version".into(),
        env!("CARGO_PKG_VERSION").to_string(),
    );
    let (sha, dirty) = git_state();
    m.insert("git.sha".into(), sha);
    m.insert("git.dirty".into(), dirty);
    let dir = libtorch_dir();
    m.insert(
        "libtorch.dir".into(),
        dir.as_ref()
            .map_or("unknown".into(), |d| d.display().to_string()),
    );
    m.insert(
        "libtorch.version".into(),
        dir.as_deref()
            .and_then(libtorch_version)
            .unwrap_or_else(|| "unknown".into()),
    );
    m.insert("torch.threads".into(), tch::get_num_threads().to_string());
    for (k, v) in crate::mkl_dispatch::settings() {
        m.insert(format!("mkl.{k}"), v);
    }
    m.insert("host".into(), hostname());
    m.insert("os".into(), std::env::consts::OS.into());
    m.insert("arch".into(), std::env::consts::ARCH.into());
    m.insert(
        "cpus".into(),
        std::thread::available_parallelism().map_or("unknown".into(), |n| n.get().to_string()),
    );
    m
}

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// (HEAD sha, "true"/"false" for uncommitted changes to tracked files).
fn git_state() -> (String, String) {
    match git(&["rev-parse", "HEAD"]) {
        Some(sha) if !sha.is_empty() => {
            let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
                .map_or("unknown".into(), |s| (!s.is_empty()).to_string());
            (sha, dirty)
        }
        _ => ("unknown".into(), "unknown".into()),
    }
}

/// `LIBTORCH` at run time, else the value the crate was built with.
fn libtorch_dir() -> Option<PathBuf> {
    std::env::var_os("LIBTORCH")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| option_env!("LIBTORCH").map(PathBuf::from))
}

/// `tch` exposes no version: read it from the files shipped with libtorch.
fn libtorch_version(dir: &Path) -> Option<String> {
    if let Ok(text) = std::fs::read_to_string(dir.join("version.py")) {
        for line in text.lines() {
            if let Some(rest) = line.trim().strip_prefix("__version__") {
                let v = rest
                    .trim_start_matches([' ', '='])
                    .trim()
                    .trim_matches(['\'', '"']);
                if !v.is_empty() {
                    return Some(v.to_string());
                }
            }
        }
    }
    std::fs::read_to_string(dir.join("build-version"))
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// The machine's host name (Linux: /proc; elsewhere the HOSTNAME / COMPUTERNAME
/// variables), "unknown" if none is found.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|s| !s.is_empty()))
        .or_else(|| std::env::var("COMPUTERNAME").ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "unknown".into())
}
