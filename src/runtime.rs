//! Device, precision and thread settings shared by every command.

use crate::error::{Error, Result};
use tch::{Device, Kind};

/// libtorch's CUDA backend (libtorch_cuda.so) registers itself when loaded, but nothing
/// calls into it, so it is not linked: loaded here, once, when a device other than the
/// CPU is asked for (CPU runs never map its gigabyte of CUDA libraries). The message says
/// why it could not be loaded (a CPU-only libtorch, missing CUDA libraries).
pub fn load_cuda_backend() -> std::result::Result<(), String> {
    static LOADED: std::sync::OnceLock<std::result::Result<(), String>> =
        std::sync::OnceLock::new();
    LOADED
        .get_or_init(|| crate::dl::open("libtorch_cuda.so").map(|_| ()))
        .clone()
}

/// A device as a grid or the command line names it: `cpu`, `cuda` (`gpu`), `cuda:N`, or
/// `auto` (CUDA when available). Parsing checks only the spelling; whether the device
/// exists is checked where it is used ([`DeviceSpec::resolve`]), so a grid written for a
/// GPU node still parses on a laptop. Serialised as its canonical spelling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum DeviceSpec {
    #[default]
    Cpu,
    Auto,
    /// `cuda` (None: the first device) or `cuda:N`.
    Cuda(Option<usize>),
}

impl std::str::FromStr for DeviceSpec {
    type Err = Error;
    fn from_str(s: &str) -> Result<DeviceSpec> {
        let s = s.trim().to_ascii_lowercase();
        match s.as_str() {
            "cpu" => Ok(DeviceSpec::Cpu),
            "auto" => Ok(DeviceSpec::Auto),
            "cuda" | "gpu" => Ok(DeviceSpec::Cuda(None)),
            _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Ok(DeviceSpec::Cuda(Some(n))),
                _ => Err(Error::Invalid(format!(
                    "unknown device `{s}` (expected cpu, cuda, cuda:N or auto)"
                ))),
            },
        }
    }
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Auto => f.write_str("auto"),
            DeviceSpec::Cuda(None) => f.write_str("cuda"),
            DeviceSpec::Cuda(Some(n)) => write!(f, "cuda:{n}"),
        }
    }
}

impl serde::Serialize for DeviceSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for DeviceSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl DeviceSpec {
    /// The libtorch device; an error when it is not there (no such CUDA device, or a
    /// libtorch without CUDA).
    pub fn resolve(self) -> Result<Device> {
        if self != DeviceSpec::Cpu {
            // Without it every CUDA query answers "no device"; the error below says why.
            let _ = load_cuda_backend();
        }
        match self {
            DeviceSpec::Cpu => Ok(Device::Cpu),
            DeviceSpec::Auto => Ok(Device::cuda_if_available()),
            DeviceSpec::Cuda(n) => cuda(n.unwrap_or(0)),
        }
    }
}

/// `cpu`, `cuda`, `cuda:N`, or `auto` (CUDA when available), resolved.
pub fn parse_device(s: &str) -> Result<Device> {
    s.parse::<DeviceSpec>()?.resolve()
}

fn cuda(n: usize) -> Result<Device> {
    let count = tch::Cuda::device_count() as usize;
    if n >= count {
        let why = match load_cuda_backend() {
            Ok(()) => String::new(),
            Err(e) => format!(" (libtorch's CUDA backend did not load: {e})"),
        };
        return Err(Error::Invalid(format!(
            "device cuda:{n} requested but {count} CUDA device(s) are visible{why}"
        )));
    }
    Ok(Device::Cuda(n))
}

/// The precision a model is loaded and run in: one enum for grids (serde), the command
/// line (clap) and records, spelt `f32`, `f16`, `bf16` (the long names are aliases).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
pub enum Dtype {
    #[default]
    #[serde(rename = "f32", alias = "fp32", alias = "float32")]
    #[value(name = "f32", alias = "fp32", alias = "float32")]
    F32,
    #[serde(rename = "f16", alias = "fp16", alias = "float16")]
    #[value(name = "f16", alias = "fp16", alias = "float16")]
    F16,
    #[serde(rename = "bf16", alias = "bfloat16")]
    #[value(name = "bf16", alias = "bfloat16")]
    Bf16,
}

impl Dtype {
    pub fn kind(self) -> Kind {
        match self {
            Dtype::F32 => Kind::Float,
            Dtype::F16 => Kind::Half,
            Dtype::Bf16 => Kind::BFloat16,
        }
    }
    pub fn name(self) -> &'static str {
        dtype_name(self.kind())
    }
}

impl std::fmt::Display for Dtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

pub fn dtype_name(k: Kind) -> &'static str {
    match k {
        Kind::Half => "f16",
        Kind::BFloat16 => "bf16",
        _ => "f32",
    }
}

/// Wait for the device's queued work (timings end here); a no-op on the CPU.
pub fn synchronize(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

pub fn device_name(d: Device) -> String {
    match d {
        Device::Cpu => "cpu".into(),
        Device::Cuda(n) => format!("cuda:{n}"),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// Intra-op threads for libtorch (`None`: all cores). Returns the count in effect.
pub fn set_threads(n: Option<usize>) -> usize {
    if let Some(n) = n.filter(|n| *n > 0) {
        tch::set_num_threads(n as i32);
    }
    tch::get_num_threads() as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where the linked libtorch has a CUDA backend (the PyPI wheels do), it loads, so a
    /// GPU machine sees its devices; CPU-only libtorch builds give a reason instead.
    #[test]
    fn the_cuda_backend_loads_where_libtorch_has_one() {
        let lib = std::env::var_os("LIBTORCH").map(|d| std::path::PathBuf::from(d).join("lib"));
        let has = lib.is_some_and(|l| l.join("libtorch_cuda.so").exists());
        match load_cuda_backend() {
            // Loaded: a request beyond the visible devices is refused with the count.
            Ok(()) => {
                let n = tch::Cuda::device_count();
                let e = parse_device(&format!("cuda:{n}")).unwrap_err().to_string();
                assert!(
                    e.contains(&format!("{n} CUDA device(s) are visible")),
                    "{e}"
                );
            }
            Err(e) => assert!(!has, "libtorch_cuda.so is there but did not load: {e}"),
        }
        assert_eq!(parse_device("cpu").unwrap(), Device::Cpu);
        assert!(parse_device("tpu").is_err());
    }

    #[test]
    fn device_specs_keep_their_spelling_through_serde() {
        for (given, canonical) in [
            ("cpu", "cpu"),
            ("CPU", "cpu"),
            ("auto", "auto"),
            ("gpu", "cuda"),
            ("cuda", "cuda"),
            (" cuda:3 ", "cuda:3"),
        ] {
            let d: DeviceSpec = given.parse().unwrap();
            assert_eq!(d.to_string(), canonical);
            let json = serde_json::to_string(&d).unwrap();
            assert_eq!(json, format!("\"{canonical}\""));
            assert_eq!(serde_json::from_str::<DeviceSpec>(&json).unwrap(), d);
        }
        for bad in ["tpu", "cuda:", "cuda:x", ""] {
            let e = bad.parse::<DeviceSpec>().unwrap_err().to_string();
            assert!(e.contains("unknown device"), "{bad}: {e}");
        }
        let e = serde_json::from_str::<DeviceSpec>("\"mps\"").unwrap_err();
        assert!(e.to_string().contains("unknown device `mps`"), "{e}");
    }
}
