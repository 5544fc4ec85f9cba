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

/// `f32`/`float32`, `f16`/`float16`, `bf16`/`bfloat16`.
pub fn parse_dtype(s: &str) -> Result<Kind> {
    match s.trim().to_ascii_lowercase().as_str() {
        "f32" | "fp32" | "float32" | "float" => Ok(Kind::Float),
        "f16" | "fp16" | "float16" | "half" => Ok(Kind::Half),
        "bf16" | "bfloat16" => Ok(Kind::BFloat16),
        other => Err(Error::Invalid(format!(
            "unknown dtype `{other}` (expected f32, f16 or bf16)"
        ))),
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
