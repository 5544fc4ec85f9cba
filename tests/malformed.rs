//! The malformed-input corpus: the real shipped files (llama2.c checkpoint and tokenizer,
//! GGUF, an imported safetensors checkpoint with its config and tokenizer.json, task data,
//! a grid, a run store, a come.json) truncated at many offsets, with bits flipped in their
//! headers and runs of zero and 0xFF bytes written into them, each fed to the binary. A
//! case passes when the binary exits 0 or with a clean error (exit 1 or 2, a message,
//! no panic) and, when it failed, left no output behind; a panic (exit 101), a signal or
//! a hang fails it. CI runs a deterministic slice; `cargo test --release --test malformed
//! -- --ignored` runs the whole corpus and prints the count of each outcome.

mod common;

use come_repro::rng::SplitMix64;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_come-repro");
/// Longer than any well-formed case here takes on two loaded cores.
const TIMEOUT: Duration = Duration::from_secs(120);

/// How one damaged file is made from the original bytes.
#[derive(Debug, Clone, Copy)]
enum Damage {
    Truncate(usize),
    FlipBit(usize, u8),
    Fill(usize, usize, u8),
}

impl Damage {
    fn apply(self, b: &[u8]) -> Vec<u8> {
        let mut out = b.to_vec();
        match self {
            Damage::Truncate(n) => out.truncate(n),
            Damage::FlipBit(i, bit) => out[i] ^= 1 << bit,
            Damage::Fill(i, n, v) => out[i..(i + n).min(b.len())].fill(v),
        }
        out
    }
}

/// `count` damages of each kind for a file of `len` bytes whose header is the first
/// `header` bytes: truncations anywhere (and inside the header), bit flips and filled
/// runs inside the header, a few filled runs in the body.
fn damages(len: usize, header: usize, count: usize, seed: u64) -> Vec<Damage> {
    let mut r = SplitMix64::new(seed);
    let header = header.clamp(1, len);
    let mut out = vec![Damage::Truncate(0), Damage::Truncate(len - 1)];
    for _ in 0..count {
        out.push(Damage::Truncate(r.below(len as u64) as usize));
        out.push(Damage::Truncate(r.below(header as u64) as usize));
        out.push(Damage::FlipBit(
            r.below(header as u64) as usize,
            r.below(8) as u8,
        ));
        let v = if r.below(2) == 0 { 0 } else { 0xff };
        out.push(Damage::Fill(r.below(header as u64) as usize, 8, v));
    }
    for _ in 0..count.div_ceil(2) {
        out.push(Damage::Fill(r.below(len as u64) as usize, 64, 0xff));
    }
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    Ok,
    CleanError,
    Panic,
    Signal,
    Hang,
    /// Failed, but left its output (or a part of it) behind.
    LeftOutput,
}

/// Run the binary with `args`; `out` must not exist afterwards if the run failed.
fn run(args: &[String], out: Option<&Path>, env: &[(&str, &Path)]) -> (Outcome, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if t0.elapsed() > TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut err);
    }
    let last = err.lines().last().unwrap_or_default().to_string();
    let outcome = match status.map(|s| s.code()) {
        None => Outcome::Hang,
        Some(None) => Outcome::Signal,
        Some(Some(0)) => Outcome::Ok,
        Some(Some(101)) => Outcome::Panic,
        Some(Some(_)) if err.contains("panicked") || err.trim().is_empty() => Outcome::Panic,
        Some(Some(_)) if out.is_some_and(Path::exists) => Outcome::LeftOutput,
        Some(Some(_)) => Outcome::CleanError,
    };
    (outcome, last)
}

/// One input file of the corpus, and how to feed a damaged copy of it to the binary.
struct Target {
    name: &'static str,
    /// The original file.
    file: PathBuf,
    /// Bytes of header to aim flips at.
    header: usize,
    /// Lay out the damaged bytes under `dir` and return the arguments, the output path
    /// that a failure must not leave, and environment overrides.
    #[allow(clippy::type_complexity)]
    setup:
        Box<dyn Fn(&Path, &[u8]) -> (Vec<String>, Option<PathBuf>, Vec<(&'static str, PathBuf)>)>,
}

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

fn strings(a: &[&str]) -> Vec<String> {
    a.iter().map(|x| x.to_string()).collect()
}

/// A copy of the checkpoint directory `src` in `dir/m` with `file` replaced by `bytes`.
fn checkpoint_with(src: &Path, dir: &Path, file: &str, bytes: &[u8]) -> PathBuf {
    let m = dir.join("m");
    std::fs::create_dir_all(&m).unwrap();
    for f in std::fs::read_dir(src).unwrap() {
        let f = f.unwrap().path();
        let name = f.file_name().unwrap();
        if name == file {
            std::fs::write(m.join(name), bytes).unwrap();
        } else if f.is_file() {
            std::fs::copy(&f, m.join(name)).unwrap();
        }
    }
    m
}

fn targets() -> Vec<Target> {
    let stories = common::stories();
    let tok = come_repro::paths::stories260k_tok();
    let bin = come_repro::paths::stories260k_bin();
    let data = come_repro::paths::data_dir();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut t = vec![];
    let tk = tok.clone();
    t.push(Target {
        name: "llama2c checkpoint",
        file: bin.clone(),
        header: 28,
        setup: Box::new(move |d, b| {
            let f = d.join("m.bin");
            std::fs::write(&f, b).unwrap();
            let out = d.join("out");
            let a = [
                "import",
                "llama2c",
                &s(&f),
                "--tokenizer",
                &s(&tk),
                "--out",
                &s(&out),
            ];
            (strings(&a), Some(out), vec![])
        }),
    });
    let bn = bin.clone();
    t.push(Target {
        name: "llama2c tokenizer",
        file: tok.clone(),
        header: 64,
        setup: Box::new(move |d, b| {
            let f = d.join("tok.bin");
            std::fs::write(&f, b).unwrap();
            let out = d.join("out");
            let a = [
                "import",
                "llama2c",
                &s(&bn),
                "--tokenizer",
                &s(&f),
                "--out",
                &s(&out),
            ];
            (strings(&a), Some(out), vec![])
        }),
    });
    for (name, file, header) in [
        ("safetensors", "model.safetensors", 2048),
        ("config.json", "config.json", 800),
        ("tokenizer.json", "tokenizer.json", 4096),
    ] {
        let src = stories.clone();
        t.push(Target {
            name,
            file: stories.join(file),
            header,
            setup: Box::new(move |d, b| {
                let m = checkpoint_with(&src, d, file, b);
                let a = [
                    "generate",
                    "--model",
                    &s(&m),
                    "--prompt",
                    "Once",
                    "--max-new-tokens",
                    "3",
                ];
                (strings(&a), None, vec![])
            }),
        });
    }
    let st = stories.clone();
    t.push(Target {
        name: "task data (boolq)",
        file: data.join("boolq/boolq_validation.jsonl"),
        header: 4096,
        setup: Box::new(move |d, b| {
            std::fs::create_dir_all(d.join("boolq")).unwrap();
            std::fs::write(d.join("boolq/boolq_validation.jsonl"), b).unwrap();
            let out = d.join("results.json");
            let a = [
                "eval",
                "--model",
                &s(&st),
                "--tasks",
                "boolq",
                "--limit",
                "3",
                "--data-dir",
                &s(d),
                "--output",
                &s(&out),
            ];
            (strings(&a), Some(out), vec![])
        }),
    });
    t.push(Target {
        name: "grid TOML",
        file: root.join("experiments/ci.toml"),
        header: 2048,
        setup: Box::new(move |d, b| {
            let f = d.join("g.toml");
            std::fs::write(&f, b).unwrap();
            let db = d.join("s.sqlite");
            let a = ["grid", &s(&f), "--dry-run", "--db", &s(&db)];
            (strings(&a), None, vec![])
        }),
    });
    t.push(Target {
        name: "run store",
        file: small_store(),
        header: 4096,
        setup: Box::new(move |d, b| {
            let f = d.join("s.sqlite");
            std::fs::write(&f, b).unwrap();
            (strings(&["runs", "ls", "--db", &s(&f)]), None, vec![])
        }),
    });
    t.push(gguf_target());
    t
}

/// The SmolLM2 GGUF: damage is aimed at its metadata (tokenizer included) and tensor
/// table; the tensor data is shared, unchanged, by a hard-to-damage copy per case.
fn gguf_target() -> Target {
    Target {
        name: "GGUF",
        file: come_repro::paths::smollm2_gguf(),
        header: 1 << 20,
        setup: Box::new(|d, b| {
            let f = d.join("m.gguf");
            std::fs::write(&f, b).unwrap();
            let out = d.join("out");
            (
                strings(&["import", "gguf", &s(&f), "--out", &s(&out)]),
                Some(out),
                vec![],
            )
        }),
    }
}

/// A run store with one finished run of a tiny grid, made once.
fn small_store() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("malformed-store");
    let db = dir.join("s.sqlite");
    if !db.exists() {
        std::fs::create_dir_all(&dir).unwrap();
        let grid = dir.join("g.toml");
        let spec = format!(
            "[base]\nmodel = \"{}\"\n[base.eval]\ntasks = [\"boolq\"]\nlimit = 2\nppl_seqlen = 64\nppl_windows = 1\n",
            common::stories().display()
        );
        std::fs::write(&grid, spec).unwrap();
        let st = Command::new(BIN)
            .args([
                "grid",
                &s(&grid),
                "--db",
                &s(&db),
                "--cache",
                &s(&dir.join("cache")),
            ])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .unwrap();
        assert!(
            st.status.success(),
            "{}",
            String::from_utf8_lossy(&st.stderr)
        );
        // One file: fold the write-ahead log into the database.
        let c = rusqlite::Connection::open(&db).unwrap();
        c.pragma_update(None, "journal_mode", "DELETE").unwrap();
    }
    db
}

/// Run `count` damages per target; returns the outcome counts and the failures.
fn corpus(count: usize, only: Option<&str>) -> (BTreeMap<(String, Outcome), usize>, Vec<String>) {
    let mut tally = BTreeMap::new();
    let mut failures = vec![];
    for (ti, t) in targets().into_iter().enumerate() {
        if only.is_some_and(|o| !t.name.contains(o)) {
            continue;
        }
        let bytes = std::fs::read(&t.file).unwrap();
        let n = if t.name == "GGUF" {
            count.div_ceil(3)
        } else {
            count
        };
        for dmg in damages(bytes.len(), t.header, n, 0xC0FFEE + ti as u64) {
            let d = tempfile::tempdir().unwrap();
            let (args, out, env) = (t.setup)(d.path(), &dmg.apply(&bytes));
            let env: Vec<(&str, &Path)> = env.iter().map(|(k, v)| (*k, v.as_path())).collect();
            let (o, last) = run(&args, out.as_deref(), &env);
            *tally.entry((t.name.to_string(), o)).or_insert(0) += 1;
            if !matches!(o, Outcome::Ok | Outcome::CleanError) {
                failures.push(format!("{} {dmg:?}: {o:?}: {last}", t.name));
            }
        }
    }
    (tally, failures)
}

fn report(tally: &BTreeMap<(String, Outcome), usize>) {
    let total: usize = tally.values().sum();
    eprintln!("{total} malformed inputs:");
    for ((name, o), n) in tally {
        eprintln!("  {name:<20} {o:?}: {n}");
    }
}

/// The CI slice: 3 damages of each kind per file (about 140 cases).
#[test]
fn malformed_inputs_never_crash() {
    let (tally, failures) = corpus(3, None);
    report(&tally);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The whole corpus (about 1,000 cases; minutes).
#[test]
#[ignore]
fn malformed_corpus_full() {
    let only = std::env::var("COME_MALFORMED_ONLY").ok();
    let (tally, failures) = corpus(24, only.as_deref());
    report(&tally);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
