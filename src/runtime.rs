//! Device, precision and thread settings shared by every command.

use crate::error::{Error, Result};
use tch::{Device, Kind};

/// `cpu`, `cuda`, `cuda:N`, or `auto` (CUDA when available).
pub fn parse_device(s: &str) -> Result<Device> {
    let s = s.trim().to_ascii_lowercase();
    match s.as_str() {
        "cpu" => Ok(Device::Cpu),
        "auto" => Ok(Device::cuda_if_available()),
        "cuda" | "gpu" => cuda(0),
        _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => cuda(n),
            _ => Err(Error::Invalid(format!(
                "unknown device `{s}` (expected cpu, cuda, cuda:N or auto)"
            ))),
        },
    }
}

fn cuda(n: usize) -> Result<Device> {
    let count = tch::Cuda::device_count() as usize;
    if n >= count {
        return Err(Error::Invalid(format!(
            "device cuda:{n} requested but {count} CUDA device(s) are visible"
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
