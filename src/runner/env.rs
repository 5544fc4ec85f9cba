//! What the store records of the environment a run executed in.

use super::RunnerOptions;
use crate::grid::RunSpec;
use crate::runtime::DeviceSpec;

/// The machine's environment plus what this run adds: threads, device, seeds.
pub(super) fn run_env(
    machine: &std::collections::BTreeMap<String, String>,
    run: &RunSpec,
    opts: &RunnerOptions,
) -> std::collections::BTreeMap<String, String> {
    let mut env = machine.clone();
    env.insert("threads".into(), tch::get_num_threads().to_string());
    let exp = &run.experiment;
    env.insert("device".into(), device_description(opts.device_for(exp)));
    if let Some(p) = &exp.prune {
        env.insert("seed.prune".into(), p.seed.to_string());
        env.insert("seed.calibration".into(), p.calib.seed.to_string());
    }
    if !exp.recovery.is_none() {
        env.insert("seed.recovery".into(), exp.recovery.seed.to_string());
    }
    env.insert(
        "seed.eval_subset".into(),
        exp.eval
            .seed
            .map_or("none (first N)".into(), |s| s.to_string()),
    );
    env
}

/// "cpu", or the CUDA device index with the GPU count.
fn device_description(spec: DeviceSpec) -> String {
    match spec.resolve() {
        Ok(tch::Device::Cuda(n)) => format!("cuda:{n} of {} GPU(s)", tch::Cuda::device_count()),
        Ok(d) => crate::runtime::device_name(d),
        Err(_) => spec.to_string(),
    }
}
