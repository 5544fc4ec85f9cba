//! Where shared data and models live. Users point the tool at their own copies with
//! `COME_DATA` / `COME_MODELS`; the default is `../shared/...` beside the project root.

use std::path::{Path, PathBuf};

fn project_root() -> PathBuf {
    // At run time the binary may be anywhere; prefer the working directory, which is the
    // project root for every documented command.
    std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."))
}

fn from_env_or(var: &str, default_rel: &str) -> PathBuf {
    match std::env::var_os(var) {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => project_root().join(default_rel),
    }
}

/// Root of the benchmark data (`COME_DATA`, default `../shared/data`).
pub fn data_dir() -> PathBuf {
    from_env_or("COME_DATA", "../shared/data")
}

/// Root of the shipped models (`COME_MODELS`, default `../shared/models`).
pub fn models_dir() -> PathBuf {
    from_env_or("COME_MODELS", "../shared/models")
}

/// Where imported/pruned checkpoints are cached (`COME_WORK`, default `work/`).
pub fn work_dir() -> PathBuf {
    from_env_or("COME_WORK", "work")
}

/// Decisions of other implementations to test against (`COME_REFERENCE`, default
/// `../shared/reference`).
pub fn reference_dir() -> PathBuf {
    from_env_or("COME_REFERENCE", "../shared/reference")
}

pub fn wikitext2_test() -> PathBuf {
    data_dir().join("wikitext2/wikitext2_raw_test.txt")
}

/// The C4 validation shard GPTQ-style perplexity reads (the user's copy).
pub const C4_FILE: &str = "c4-validation.00000-of-00008.json.gz";

/// The user's C4 validation shard (`COME_C4`, default `c4/` under the data directory;
/// no copy is shipped).
pub fn c4_validation() -> PathBuf {
    match std::env::var_os("COME_C4") {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => data_dir().join("c4").join(C4_FILE),
    }
}

pub fn smollm2_gguf() -> PathBuf {
    models_dir().join("smollm2-135m-instruct-q4_1/SmolLM2-135M-Instruct.Q4_1.gguf")
}

pub fn stories260k_bin() -> PathBuf {
    models_dir().join("stories260K/stories260K.bin")
}

pub fn stories260k_tok() -> PathBuf {
    models_dir().join("stories260K/tok512.bin")
}

/// Display a path relative to the working directory when possible (shorter messages).
pub fn show(p: &Path) -> String {
    p.strip_prefix(project_root())
        .unwrap_or(p)
        .display()
        .to_string()
}

/// Expand `${VAR}` in a path: the crate's roots with their defaults, else the environment.
pub fn expand_vars(s: &str) -> std::result::Result<String, String> {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let Some(j) = after.find('}') else {
            return Err(format!("unterminated `${{` in `{s}`"));
        };
        let name = &after[..j];
        let value = match name {
            "COME_MODELS" => models_dir().to_string_lossy().into_owned(),
            "COME_DATA" => data_dir().to_string_lossy().into_owned(),
            "COME_WORK" => work_dir().to_string_lossy().into_owned(),
            other => std::env::var(other)
                .map_err(|_| format!("environment variable `{other}` is not set (in `{s}`)"))?,
        };
        out.push_str(&value);
        rest = &after[j + 1..];
    }
    out.push_str(rest);
    Ok(out)
}
