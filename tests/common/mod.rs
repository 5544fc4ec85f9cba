//! Shared helpers for integration tests: the imported shipped models, cached once per
//! build under cargo's integration-test temp dir.
#![allow(dead_code)]

pub mod bin;
pub mod gguf_writer;

use come_repro::model::import::write_checkpoint;
use come_repro::model::{gguf, llama2c};
use std::path::PathBuf;

pub fn cached(name: &str, build: impl FnOnce(&std::path::Path)) -> PathBuf {
    // Tests of one binary run on threads: serialise the import within the process.
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    if !dir.join("config.json").exists() {
        // Build beside, then rename: concurrent test binaries never see half a checkpoint.
        let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("{name}.{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        build(&tmp);
        if std::fs::rename(&tmp, &dir).is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
    }
    dir
}

/// SmolLM2-135M-Instruct imported from the shipped GGUF.
pub fn smollm2() -> PathBuf {
    cached("smollm2-135m-instruct", |d| {
        let ck = gguf::import(&come_repro::paths::smollm2_gguf()).expect("import SmolLM2 GGUF");
        write_checkpoint(&ck, d).expect("write SmolLM2 checkpoint");
    })
}

/// stories260K imported from the shipped llama2.c files.
pub fn stories() -> PathBuf {
    cached("stories260k", |d| {
        let ck = llama2c::import(
            &come_repro::paths::stories260k_bin(),
            &come_repro::paths::stories260k_tok(),
        )
        .expect("import stories260K");
        write_checkpoint(&ck, d).expect("write stories260K checkpoint");
    })
}

pub fn golden(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name)
}

/// A golden pair `tests/golden/<stem>.json` + `<stem>.safetensors`: the JSON and the
/// tensors by name.
#[allow(dead_code)]
pub fn golden_pair(
    stem: &str,
) -> (
    serde_json::Value,
    std::collections::HashMap<String, tch::Tensor>,
) {
    let json =
        serde_json::from_str(&std::fs::read_to_string(golden(&format!("{stem}.json"))).unwrap())
            .unwrap();
    let tensors = tch::Tensor::read_safetensors(golden(&format!("{stem}.safetensors")))
        .unwrap()
        .into_iter()
        .collect();
    (json, tensors)
}

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}
