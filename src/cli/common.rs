//! Options and helpers shared by subcommands.

use anyhow::{Context, Result};
use clap::Args;
use come_repro::model::load::{load_model, LoadOptions};
use come_repro::model::tokenizer::Tokenizer;
use come_repro::model::Model;
use come_repro::runtime;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Args, Debug, Clone)]
pub struct RuntimeArgs {
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "cpu")]
    pub device: runtime::DeviceSpec,
    #[arg(long, value_enum, default_value_t = runtime::Dtype::F32)]
    pub dtype: runtime::Dtype,
    /// libtorch intra-op threads (default: all cores).
    #[arg(long, value_parser = at_least_one)]
    pub threads: Option<usize>,
}

impl RuntimeArgs {
    pub fn load_options(&self) -> Result<LoadOptions> {
        runtime::set_threads(self.threads);
        Ok(LoadOptions {
            device: self.device.resolve()?,
            dtype: self.dtype.kind(),
        })
    }
}

/// A count that must be at least 1 (threads, workers): 0 is refused by clap with the
/// flag's name rather than read as "default".
pub fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

pub fn load(dir: &Path, rt: &RuntimeArgs) -> Result<(Model, Tokenizer)> {
    let opts = rt.load_options()?;
    let model =
        load_model(dir, opts).with_context(|| format!("loading model from {}", dir.display()))?;
    let tok = Tokenizer::from_dir(dir)
        .with_context(|| format!("loading tokenizer from {}", dir.display()))?;
    Ok((model, tok))
}

pub fn bar(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{msg:>12} [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    log_off_terminal(&pb);
    pb
}

/// How often a bar's state is logged when stderr is not a terminal.
const LOG_EVERY: Duration = Duration::from_secs(30);

/// Off a terminal (nohup, CI logs, `2> file`) indicatif draws nothing at all, so a
/// background job would be silent for an hour: there a thread logs the bar's state as a
/// plain line every `LOG_EVERY` until the bar is finished or dropped.
pub fn log_off_terminal(pb: &ProgressBar) {
    if std::io::stderr().is_terminal() {
        return;
    }
    let weak = pb.downgrade();
    std::thread::spawn(move || loop {
        std::thread::sleep(LOG_EVERY);
        let Some(pb) = weak.upgrade() else { return };
        if pb.is_finished() {
            return;
        }
        if let Some(line) = state_line(&pb) {
            eprintln!("{line}");
        }
    });
}

/// `prefix message pos/len rate/s eta H:MM:SS`, or nothing for a bar that has not started.
/// The rate is the mean since the bar started: indicatif's own estimate trails far behind
/// when items arrive in large batches, as scored documents do.
fn state_line(pb: &ProgressBar) -> Option<String> {
    let (pos, len) = (pb.position(), pb.length().unwrap_or(0));
    if pos == 0 && len == 0 {
        return None;
    }
    let what = [pb.prefix(), pb.message()]
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    if pos == 0 {
        return Some(format!("{what} 0/{len}"));
    }
    let rate = pos as f64 / pb.elapsed().as_secs_f64().max(1e-9);
    // Grid runs take minutes each: a rate below one per second reads better per minute.
    let speed = if rate >= 1.0 {
        format!("{rate:.1}/s")
    } else {
        format!("{:.1}/min", rate * 60.0)
    };
    if len == 0 {
        return Some(format!("{what} {pos} {speed}"));
    }
    let s = (len.saturating_sub(pos) as f64 / rate).round() as u64;
    Some(format!(
        "{what} {pos}/{len} {speed} eta {}:{:02}:{:02}",
        s / 3600,
        s / 60 % 60,
        s % 60
    ))
}

/// A line above the bars; printed plainly off a terminal, where `println` of a bar is dropped.
pub fn note(pb: &ProgressBar, line: &str) {
    if std::io::stderr().is_terminal() {
        pb.println(line);
    } else {
        eprintln!("{line}");
    }
}

/// The default place for imported checkpoints of the shipped models.
pub fn default_import_dir(name: &str) -> PathBuf {
    come_repro::paths::work_dir().join("models").join(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_line_names_the_bar_and_counts() {
        let pb = ProgressBar::hidden();
        assert_eq!(state_line(&pb), None, "an idle bar logs nothing");
        pb.set_length(40);
        pb.set_prefix("run1 eval");
        pb.set_message("piqa");
        assert_eq!(state_line(&pb).as_deref(), Some("run1 eval piqa 0/40"));
        pb.set_position(10);
        let line = state_line(&pb).unwrap();
        assert!(line.starts_with("run1 eval piqa 10/40 "), "{line}");
        assert!(line.contains(" eta "), "{line}");
        let open = ProgressBar::hidden();
        open.set_message("prune steps");
        open.set_position(3);
        let line = state_line(&open).unwrap();
        assert!(line.starts_with("prune steps 3 "), "{line}");
        assert!(!line.contains("eta"), "no ETA without a length: {line}");
    }
}
