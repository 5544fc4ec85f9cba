//! Structured-but-wrong input for every reader: config.json objects, safetensors headers,
//! GGUF metadata and tensor tables, llama2.c headers, task data rows, TOML grids and
//! come.json. Each property asserts `Ok` or a typed error, never a panic, and never a
//! single allocation larger than the input justifies (a count read from a header must
//! not size a buffer the file cannot fill). The inputs start from real files (the shipped
//! models, the shared data, the committed grids) and change a few fields, so the readers
//! get past their first checks and meet the wrong value deep inside.

mod common;

use come_repro::distill::config::Attach;
use come_repro::distill::plan::plan;
use come_repro::eval::tasks::{load_task, TaskSource};
use come_repro::grid::GridSpec;
use come_repro::model::config::ModelConfig;
use come_repro::model::gguf::GgufFile;
use come_repro::model::llama2c::Header;
use come_repro::model::safetensors_io::SafetensorsFile;
use come_repro::stages::prune::PruneRecord;
use proptest::prelude::*;
use serde_json::{json, Value};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

// ---------------------------------------------------------------------------------------
// The largest single allocation a reader asks for, per thread (proptest cases of one test
// run on one thread; tests run on several).

struct Counting;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(n: usize) {
    let _ = LARGEST.try_with(|c| c.set(c.get().max(n)));
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        note(l.size());
        System.alloc(l)
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        note(l.size());
        System.alloc_zeroed(l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        note(new);
        System.realloc(p, l, new)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, l)
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// `f()` and the largest single allocation it made.
fn largest_alloc<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST.with(|c| c.set(0));
    let r = f();
    (r, LARGEST.with(|c| c.get()))
}

/// What `len` input bytes justify in one allocation: parsed JSON values are up to 32
/// bytes per input byte pair, plus a fixed allowance for buffers and tables.
fn justified(len: usize) -> usize {
    (1 << 20) + 32 * len
}

fn check_alloc(what: &str, largest: usize, len: usize) -> Result<(), TestCaseError> {
    prop_assert!(
        largest <= justified(len),
        "{what}: one allocation of {largest} bytes for {len} bytes of input"
    );
    Ok(())
}

/// The bound is only as good as the counting: a large allocation must be seen.
#[test]
fn the_allocation_bound_sees_large_allocations() {
    let (v, largest) = largest_alloc(|| vec![0u8; 10 << 20]);
    assert_eq!(v.len(), 10 << 20);
    assert!(largest >= 10 << 20, "saw only {largest} bytes");
    assert!(largest > justified(64));
}

// ---------------------------------------------------------------------------------------
// Values that are almost right.

fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        prop_oneof![
            -4i64..70,
            any::<i64>(),
            Just(i64::MAX),
            Just(1i64 << 31),
            Just(-1)
        ]
        .prop_map(Value::from),
        prop_oneof![any::<f64>(), -2.0f64..2.0, Just(1e300)].prop_map(|x| json!(x)),
        "[a-z0-9_ ]{0,12}".prop_map(Value::from),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    json_leaf().prop_recursive(2, 12, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,8}", inner, 0..3)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Replace, add or remove keys of a JSON object (`None` removes).
fn patch_object(v: &mut Value, edits: &[(String, Option<Value>)]) {
    let Some(o) = v.as_object_mut() else { return };
    for (k, val) in edits {
        match val {
            Some(x) => {
                o.insert(k.clone(), x.clone());
            }
            None => {
                o.remove(k);
            }
        }
    }
}

fn edits(keys: &'static [&'static str]) -> impl Strategy<Value = Vec<(String, Option<Value>)>> {
    prop::collection::vec(
        (
            prop::sample::select(keys).prop_map(String::from),
            prop::option::weighted(0.85, json_value()),
        ),
        1..5,
    )
}

// ---------------------------------------------------------------------------------------
// Shared real inputs, made once per test binary.

fn stories_config() -> &'static Value {
    static C: OnceLock<Value> = OnceLock::new();
    C.get_or_init(|| {
        let p = common::stories().join("config.json");
        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
    })
}

const CONFIG_KEYS: &[&str] = &[
    "model_type",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "vocab_size",
    "max_position_embeddings",
    "rms_norm_eps",
    "rope_theta",
    "rope_scaling",
    "rope_parameters",
    "tie_word_embeddings",
    "attention_bias",
    "mlp_bias",
    "sliding_window",
    "use_sliding_window",
    "bos_token_id",
    "eos_token_id",
    "hidden_act",
];

/// A pruned stories260K checkpoint (for its come.json), pruned once.
fn pruned_come_json() -> &'static Value {
    static C: OnceLock<Value> = OnceLock::new();
    C.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fuzz-pruned");
        if !dir.join("come.json").exists() {
            let mut cfg = come_repro::prune::PruneConfig {
                target_layers: Some(3),
                ..Default::default()
            };
            cfg.calib.nrows = 8;
            cfg.calib.seqlen = 64;
            cfg.calib.max_sequences = Some(2);
            come_repro::stages::prune::prune_checkpoint(
                &common::stories(),
                &cfg,
                Default::default(),
                &dir,
                &mut come_repro::progress::ignore,
            )
            .unwrap();
        }
        serde_json::from_str(&std::fs::read_to_string(dir.join("come.json")).unwrap()).unwrap()
    })
}

/// Set `v` at a `/`-separated path of object keys and array indices, where it exists.
fn set_at(root: &mut Value, path: &str, v: Value) {
    if let Some(slot) = root.pointer_mut(path) {
        *slot = v;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(192))]

    #[test]
    fn config_json_fields(e in edits(CONFIG_KEYS)) {
        let mut c = stories_config().clone();
        patch_object(&mut c, &e);
        let len = c.to_string().len();
        let (r, largest) = largest_alloc(|| ModelConfig::from_json(c, Path::new("config.json")));
        check_alloc("config.json", largest, len)?;
        if let Ok(c) = r {
            prop_assert!(c.hidden_size > 0 && c.num_hidden_layers > 0 && c.vocab_size > 0);
            prop_assert!(c.num_attention_heads % c.num_key_value_heads == 0);
            prop_assert!(c.head_dim % 2 == 0 && c.max_position_embeddings > 0);
            prop_assert!(c.rms_norm_eps > 0.0 && c.rms_norm_eps.is_finite());
            prop_assert!(c.rope_theta > 0.0 && c.rope_theta.is_finite());
            prop_assert!(c.total_params() > c.params_per_layer());
            prop_assert!(c.eos_token_ids.iter().all(|&t| (0..c.vocab_size).contains(&t)));
        }
    }

    #[test]
    fn llama2c_headers(
        fields in prop::collection::vec(prop_oneof![-2i32..600, any::<i32>()], 7),
        file_len in prop_oneof![0u64..2_000_000, any::<u64>()],
    ) {
        let bytes: Vec<u8> = fields.iter().flat_map(|f| f.to_le_bytes()).collect();
        let (r, largest) = largest_alloc(|| Header::parse(&bytes, file_len, Path::new("m.bin")));
        check_alloc("llama2.c header", largest, bytes.len())?;
        if let Ok(h) = r {
            prop_assert_eq!(h.expected_file_bytes(), Some(file_len));
            prop_assert!(h.dim > 0 && h.n_layers > 0 && h.n_heads > 0 && h.n_kv_heads > 0);
            prop_assert!(h.vocab_size > 0 && h.seq_len > 0);
        }
    }

    #[test]
    fn come_json_fields(
        path in prop::sample::select(&[
            "/report/correspondence", "/report/correspondence/0", "/report/correspondence/1/0",
            "/report/target/layers_before", "/report/config/calib", "/report/config/calib/seqlen",
            "/report/config/method", "/report", "/source_model", "/report/steps",
        ][..]),
        v in json_value(),
        n_teacher in 0usize..8,
        attach in prop::sample::select(&[Attach::Before, Attach::None][..]),
    ) {
        let mut c = pruned_come_json().clone();
        set_at(&mut c, path, v);
        let len = c.to_string().len();
        let (r, largest) = largest_alloc(|| {
            let rec: PruneRecord = serde_json::from_value(c).map_err(|e| e.to_string())?;
            plan(&rec.report.correspondence, n_teacher, attach).map_err(|e| e.to_string())
        });
        check_alloc("come.json", largest, len)?;
        if let Ok(units) = r {
            prop_assert!(units.iter().all(|u| u.first <= u.last && u.last < n_teacher));
        }
    }

    #[test]
    fn layer_correspondences(
        corr in prop::collection::vec(prop::collection::vec(0usize..12, 0..4), 0..8),
        n_teacher in 0usize..12,
        attach in prop::sample::select(&[Attach::Before, Attach::None][..]),
    ) {
        if let Ok(units) = plan(&corr, n_teacher, attach) {
            prop_assert!(units.iter().all(|u| u.first <= u.last && u.last < n_teacher));
        }
    }
}

// ---------------------------------------------------------------------------------------
// Binary headers.

const ST_DTYPES: &[&str] = &["F32", "F16", "BF16", "I64", "U8", "BOOL", "F8", ""];

fn st_tensor() -> impl Strategy<Value = Value> {
    (
        prop::sample::select(ST_DTYPES),
        prop::collection::vec(prop_oneof![0u64..6, any::<u64>(), Just(1u64 << 40)], 0..4),
        prop_oneof![0u64..200, any::<u64>()],
        prop_oneof![0u64..200, any::<u64>()],
    )
        .prop_map(|(dt, shape, a, b)| json!({"dtype": dt, "shape": shape, "data_offsets": [a, b]}))
}

/// A safetensors file: 8-byte header length (right or not), the JSON header, a body.
fn safetensors_bytes() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::collection::btree_map("[a-z.]{1,10}", prop_oneof![st_tensor(), json_value()], 0..4),
        prop_oneof![
            Just(None),
            any::<u64>().prop_map(Some),
            (0u64..64).prop_map(Some)
        ],
        0usize..256,
    )
        .prop_map(|(tensors, len_override, body)| {
            let header = serde_json::to_vec(&tensors).unwrap();
            let n = len_override.unwrap_or(header.len() as u64);
            let mut b = n.to_le_bytes().to_vec();
            b.extend(header);
            b.resize(b.len() + body, 0x3f);
            b
        })
}

/// The tiny GGUF with a few bytes changed in its metadata or tensor table (not in the
/// tensor data, where every byte pattern is valid).
fn gguf_bytes() -> impl Strategy<Value = Vec<u8>> {
    let base = common::gguf_writer::tiny_llama().bytes();
    let header_end = base.len() - 1024;
    (
        prop::collection::vec(
            (0..header_end, prop_oneof![any::<u8>(), Just(0xff), Just(0)]),
            1..6,
        ),
        prop::option::of(0..base.len()),
    )
        .prop_map(move |(edits, cut)| {
            let mut b = base.clone();
            for (i, v) in edits {
                b[i] = v;
            }
            if let Some(c) = cut {
                b.truncate(c);
            }
            b
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn safetensors_headers(bytes in safetensors_bytes()) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("model.safetensors");
        std::fs::write(&p, &bytes).unwrap();
        let (r, largest) = largest_alloc(|| SafetensorsFile::open(&p));
        check_alloc("safetensors", largest, bytes.len())?;
        if let Ok(f) = r {
            for (name, t) in &f.tensors {
                let n: u64 = t.shape.iter().map(|&d| d as u64).product();
                prop_assert!(t.shape.iter().all(|&d| d >= 0), "{name}");
                prop_assert!(n <= bytes.len() as u64, "{name}: {n} elements in {} bytes", bytes.len());
            }
        }
    }

    #[test]
    fn gguf_metadata_and_tensor_tables(bytes in gguf_bytes()) {
        let (r, largest) = largest_alloc(|| GgufFile::parse(&bytes, Path::new("f.gguf")));
        check_alloc("gguf", largest, bytes.len())?;
        if let Ok(g) = r {
            let (r2, largest2) = largest_alloc(|| come_repro::model::gguf_tokenizer::build(&g));
            check_alloc("gguf tokenizer", largest2, bytes.len())?;
            drop(r2);
            let fits = g.tensors.iter().all(|t| {
                t.offset + t.n_bytes.unwrap_or(0) + g.data_offset <= bytes.len() as u64
            });
            prop_assert!(fits, "a tensor reaches past the end of the file");
        }
    }
}

// ---------------------------------------------------------------------------------------
// Text inputs: task data rows and TOML grids.

/// The first rows of every file of `task` in the shared data, relative path -> lines.
fn task_files(task: &str) -> Vec<(PathBuf, Vec<String>)> {
    let data = come_repro::paths::data_dir();
    let rel: Vec<&str> = match task {
        "piqa" => vec!["piqa/valid.jsonl", "piqa/valid-labels.lst"],
        "hellaswag" => vec!["hellaswag/hellaswag_val_full.txt"],
        "winogrande" => vec!["winogrande/winogrande_xl_validation.jsonl"],
        "arc_easy" => vec!["arc_easy/arc_easy_test.jsonl"],
        "arc_challenge" => vec!["arc_challenge/arc_challenge_test.jsonl"],
        "boolq" => vec!["boolq/boolq_validation.jsonl"],
        "openbookqa" => vec!["openbookqa/openbookqa_main_test.jsonl"],
        _ => vec![],
    };
    rel.into_iter()
        .filter(|r| data.join(r).is_file())
        .map(|r| {
            let text = std::fs::read_to_string(data.join(r)).unwrap();
            let lines = text.lines().take(12).map(String::from).collect();
            (PathBuf::from(r), lines)
        })
        .collect()
}

/// Change one row: a JSON row gets a field replaced or removed; any other line is cut or
/// has a character replaced.
fn mutate_line(line: &str, key: usize, v: Option<Value>, at: usize, ch: char) -> String {
    if let Ok(Value::Object(mut o)) = serde_json::from_str::<Value>(line) {
        if let Some(k) = o.keys().nth(key % o.len().max(1)).cloned() {
            match v {
                Some(v) => o.insert(k, v),
                None => o.remove(&k),
            };
        }
        return Value::Object(o).to_string();
    }
    let chars: Vec<char> = line.chars().collect();
    let i = at % (chars.len() + 1);
    if ch == '\0' {
        return chars[..i].iter().collect();
    }
    let mut out: Vec<char> = chars;
    if i < out.len() {
        out[i] = ch;
    } else {
        out.push(ch);
    }
    out.into_iter().collect()
}

const TASKS: &[&str] = &come_repro::track::names::SEVEN_TASKS;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(160))]

    #[test]
    fn task_data_rows(
        task in prop::sample::select(TASKS),
        file in any::<prop::sample::Index>(),
        row in 0usize..12,
        key in 0usize..16,
        v in prop::option::weighted(0.8, json_value()),
        at in 0usize..200,
        ch in prop::sample::select(&['\0', '"', '{', '9', '-', '\n', 'x', ' '][..]),
    ) {
        let mut files = task_files(task);
        prop_assume!(!files.is_empty());
        let d = tempfile::tempdir().unwrap();
        let fi = file.index(files.len());
        let lines = &mut files[fi].1;
        let r = row % lines.len().max(1);
        if let Some(l) = lines.get_mut(r) {
            *l = mutate_line(l, key, v, at, ch);
        }
        let mut len = 0;
        for (rel, lines) in &files {
            let p = d.path().join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            let text = lines.join("\n") + "\n";
            len += text.len();
            std::fs::write(p, text).unwrap();
        }
        let src = TaskSource::new(d.path());
        let (r, largest) = largest_alloc(|| load_task(task, &src));
        check_alloc(task, largest, len)?;
        if let Ok(t) = r {
            for doc in &t.docs {
                prop_assert!(!doc.requests.is_empty(), "{task}: a document without choices");
                prop_assert!(doc.gold < doc.requests.len(), "{task}: gold {} of {}", doc.gold, doc.requests.len());
            }
        }
    }

    #[test]
    fn toml_grid_values(
        grid in prop::sample::select(&["ci.toml", "ablation.toml", "recovery.toml"][..]),
        target in any::<prop::sample::Index>(),
        v in prop_oneof![
            Just("0".to_string()), Just("-1".to_string()), Just("nan".to_string()),
            Just("inf".to_string()), Just("1e308".to_string()), Just("9223372036854775807".to_string()),
            Just("\"\"".to_string()), Just("[]".to_string()), Just("{}".to_string()),
            Just("true".to_string()), Just("[0, -3, 1.5]".to_string()),
            Just("{ method = \"zzz\" }".to_string()), "\"[a-z_.]{0,10}\"",
        ],
    ) {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments").join(grid);
        let src = std::fs::read_to_string(&path).unwrap();
        let mut doc: toml_edit::DocumentMut = src.parse().unwrap();
        let mut slots = vec![];
        collect_values(doc.as_item(), "", &mut slots);
        prop_assume!(!slots.is_empty());
        let slot = &slots[target.index(slots.len())];
        let new: toml_edit::Value = v.parse().unwrap();
        set_toml(doc.as_item_mut(), slot, new);
        let text = doc.to_string();
        let (r, largest) = largest_alloc(|| {
            GridSpec::parse(&text, &path).and_then(|g| g.expand().map(|runs| runs.len()))
        });
        check_alloc("grid", largest, text.len())?;
        drop(r);
    }
}

/// Paths (`a/b/0`) of every value in a TOML document.
fn collect_values(item: &toml_edit::Item, at: &str, out: &mut Vec<String>) {
    match item {
        toml_edit::Item::Table(t) => {
            for (k, v) in t.iter() {
                collect_values(v, &format!("{at}/{k}"), out);
            }
        }
        // Arrays of tables (`[[grids.x.zip]]`) are left alone: their values are reached
        // through the same readers as inline ones.
        toml_edit::Item::ArrayOfTables(_) => {}
        toml_edit::Item::Value(v) => {
            out.push(at.to_string());
            if let Some(t) = v.as_inline_table() {
                for (k, v) in t.iter() {
                    collect_values(
                        &toml_edit::Item::Value(v.clone()),
                        &format!("{at}/{k}"),
                        out,
                    );
                }
            }
        }
        toml_edit::Item::None => {}
    }
}

fn set_toml(root: &mut toml_edit::Item, path: &str, new: toml_edit::Value) {
    let mut cur = root;
    for part in path.trim_start_matches('/').split('/') {
        let Some(n) = cur.get_mut(part) else { return };
        cur = n;
    }
    *cur = toml_edit::Item::Value(new);
}
