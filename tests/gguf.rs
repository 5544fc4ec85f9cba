//! The GGUF importer against the shipped SmolLM2-135M-Instruct Q4_1 file, against golden
//! values from scripts/golden/tokenizer_goldens.py (Python `gguf`, `tokenizers` and
//! transformers), and against small GGUF files written here.

use come_repro::model::gguf::{self, GgmlType, GgufFile};
use come_repro::model::gguf_tokenizer;
use come_repro::model::import::write_checkpoint;
use come_repro::model::load::load_model;
use come_repro::Error;
use proptest::prelude::*;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

mod common;
use common::gguf_writer::*;

fn real_gguf() -> PathBuf {
    come_repro::paths::smollm2_gguf()
}

fn golden() -> Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/smollm2_tokenizer.json");
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

fn ids_sha256(ids: &[u32]) -> String {
    let mut h = Sha256::new();
    for id in ids {
        h.update(id.to_le_bytes());
    }
    hex::encode(h.finalize())
}

fn as_u64(v: &Value) -> u64 {
    v.as_u64().unwrap()
}

fn f32s(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

/// `Err(Error::Format)` naming `path` and containing `needle`.
fn assert_format_err<T>(r: Result<T, Error>, path: &Path, needle: &str) {
    match r {
        Err(Error::Format { path: p, msg }) => {
            assert_eq!(p, path);
            assert!(msg.contains(needle), "message {msg:?} lacks {needle:?}");
        }
        other => panic!(
            "expected a format error containing {needle:?}, got {:?}",
            other.err()
        ),
    }
}

fn assert_unsupported<T>(r: Result<T, Error>, path: &Path, needles: &[&str]) {
    match r {
        Err(e @ Error::Unsupported { .. }) => {
            let s = e.to_string();
            assert!(s.contains(&path.display().to_string()), "{s}");
            for n in needles {
                assert!(s.contains(n), "message {s:?} lacks {n:?}");
            }
        }
        other => panic!("expected an unsupported error, got {:?}", other.err()),
    }
}

// ---------------------------------------------------------------------------------------
// The real file

#[test]
fn real_header_matches_gguf_package() {
    let g = GgufFile::open(&real_gguf()).unwrap();
    let gold = golden();
    let h = &gold["header"];
    assert_eq!(g.version as u64, as_u64(&h["version"]));
    assert_eq!(g.tensors.len() as u64, as_u64(&h["tensor_count"]));
    assert_eq!(g.metadata.len() as u64, as_u64(&h["kv_count"]));
    assert_eq!(g.data_offset, as_u64(&h["data_offset"]));
    assert_eq!(g.alignment, 32);
    // The README says 210 Q4_1 + 61 F32 + token_embd in Q8_0: that is 272 tensors.
    assert_eq!(g.tensors.len(), 272);
    let count = |t: GgmlType| g.tensors.iter().filter(|x| x.ggml_type == t).count();
    assert_eq!(count(GgmlType::Q4_1), 210);
    assert_eq!(count(GgmlType::F32), 61);
    assert_eq!(count(GgmlType::Q8_0), 1);
    for (name, n) in h["type_counts"].as_object().unwrap() {
        let got = g
            .tensors
            .iter()
            .filter(|t| t.ggml_type.name() == Some(name.as_str()))
            .count();
        assert_eq!(got as u64, as_u64(n), "{name}");
    }
    for t in h["tensors"].as_array().unwrap() {
        let info = g.tensor(t["name"].as_str().unwrap()).unwrap();
        let dims: Vec<u64> = t["dims"].as_array().unwrap().iter().map(as_u64).collect();
        assert_eq!(info.dims, dims);
        assert_eq!(info.ggml_type.0 as u64, as_u64(&t["ggml_type"]));
        assert_eq!(info.offset, as_u64(&t["offset"]));
        assert_eq!(info.n_bytes, Some(as_u64(&t["n_bytes"])));
    }
    assert_eq!(
        g.tensor("token_embd.weight").unwrap().shape(),
        vec![49152, 576]
    );

    assert_eq!(g.get_str("general.architecture").unwrap(), "llama");
    let u = |k: &str| g.get_u64(k).unwrap();
    assert_eq!(u("llama.block_count"), 30);
    assert_eq!(u("llama.context_length"), 8192);
    assert_eq!(u("llama.embedding_length"), 576);
    assert_eq!(u("llama.feed_forward_length"), 1536);
    assert_eq!(u("llama.attention.head_count"), 9);
    assert_eq!(u("llama.attention.head_count_kv"), 3);
    assert_eq!(u("llama.rope.dimension_count"), 64);
    assert_eq!(u("llama.vocab_size"), 49152);
    assert_eq!(g.get_f64("llama.rope.freq_base").unwrap(), 100000.0);
    assert_eq!(
        g.get_f64("llama.attention.layer_norm_rms_epsilon").unwrap() as f32,
        1e-5f32
    );
    assert_eq!(g.get_str("tokenizer.ggml.model").unwrap(), "gpt2");
    assert_eq!(g.get_str("tokenizer.ggml.pre").unwrap(), "smollm");
    assert_eq!(g.get_array("tokenizer.ggml.tokens").unwrap().len(), 49152);
    assert_eq!(g.get_array("tokenizer.ggml.merges").unwrap().len(), 48900);
    assert_eq!(u("tokenizer.ggml.bos_token_id"), 1);
    assert_eq!(u("tokenizer.ggml.eos_token_id"), 2);
    assert_eq!(
        g.get("tokenizer.ggml.add_bos_token").unwrap().as_bool(),
        Some(false)
    );
    let specials = g
        .get_array("tokenizer.ggml.token_type")
        .unwrap()
        .iter()
        .filter(|v| v.as_i64() == Some(3))
        .count();
    assert_eq!(specials, 17);
}

#[test]
fn real_tensors_dequantise_like_gguf_package() {
    let g = GgufFile::open(&real_gguf()).unwrap();
    let gold = golden();
    let n_head = g.get_u64("llama.attention.head_count").unwrap() as usize;
    let n_kv = g.get_u64("llama.attention.head_count_kv").unwrap() as usize;
    for (hf_name, t) in gold["weights"]["tensors"].as_object().unwrap() {
        let info = g.tensor(t["gguf_name"].as_str().unwrap()).unwrap();
        assert_eq!(
            Some(t["ggml_type"].as_str().unwrap()),
            info.ggml_type.name()
        );
        let shape = info.shape();
        let mut w = g.read_f32(info).unwrap();
        let heads = if hf_name.contains("q_proj") {
            Some(n_head)
        } else if hf_name.contains("k_proj") {
            Some(n_kv)
        } else {
            None
        };
        if let Some(h) = heads {
            w = gguf::unpermute_qk_rows(&w, shape[0] as usize, shape[1] as usize, h).unwrap();
        }
        let cols = *shape.last().unwrap() as usize;
        if let Some(rows) = t.get("rows") {
            for (r, want) in rows.as_object().unwrap() {
                let r: usize = r.parse().unwrap();
                let got = &w[r * cols..r * cols + 8];
                for (a, b) in got.iter().zip(f32s(want)) {
                    assert!(
                        (a - b).abs() <= 1e-6,
                        "{hf_name} row {r}: {got:?} vs {want}"
                    );
                }
            }
        } else {
            for (a, b) in w.iter().zip(f32s(&t["first_values"])) {
                assert!((a - b).abs() <= 1e-6, "{hf_name}");
            }
        }
        let sum: f64 = w.iter().map(|&x| x as f64).sum();
        let want = t["sum"].as_f64().unwrap();
        assert!(
            (sum - want).abs() <= 1e-6 * want.abs().max(1.0),
            "{hf_name}: sum {sum} vs {want}"
        );
    }
}

fn real_tokenizer() -> tokenizers::Tokenizer {
    let g = GgufFile::open(&real_gguf()).unwrap();
    gguf_tokenizer::build(&g).unwrap().tokenizer
}

#[test]
fn tokenizer_matches_original_smollm2_on_wikitext2() {
    let tok = real_tokenizer();
    let gold = golden();
    let wt = &gold["tokenizer"]["wikitext2_test"];
    let text = std::fs::read_to_string(come_repro::paths::wikitext2_test()).unwrap();
    let ids = tok
        .encode_fast(text.as_str(), true)
        .unwrap()
        .get_ids()
        .to_vec();
    let first: Vec<u32> = wt["first_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| as_u64(v) as u32)
        .collect();
    assert_eq!(&ids[..first.len()], &first[..]);

    // Per row, so a failure names the rows that differ.
    let rows_path = come_repro::paths::data_dir().join("wikitext2/wikitext2_raw_test.rows.jsonl");
    let rows: Vec<String> = std::fs::read_to_string(rows_path)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["text"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let counts = gold["tokenizer"]["wikitext2_rows"]["counts"]
        .as_array()
        .unwrap();
    let hashes = gold["tokenizer"]["wikitext2_rows"]["hashes"]
        .as_array()
        .unwrap();
    assert_eq!(rows.len(), counts.len());
    let enc = tok.encode_batch_fast(rows.clone(), false).unwrap();
    let bad: Vec<String> = enc
        .iter()
        .enumerate()
        .filter(|(i, e)| {
            e.get_ids().len() as u64 != as_u64(&counts[*i])
                || ids_sha256(e.get_ids())[..16] != *hashes[*i].as_str().unwrap()
        })
        .map(|(i, e)| {
            format!(
                "row {i} ({} tokens, want {}): {:?}",
                e.get_ids().len(),
                counts[i],
                rows[i].chars().take(60).collect::<String>()
            )
        })
        .collect();
    assert!(
        bad.is_empty(),
        "{} rows differ, first: {:#?}",
        bad.len(),
        &bad[..bad.len().min(5)]
    );

    assert_eq!(ids.len() as u64, as_u64(&wt["token_count"]));
    assert_eq!(ids_sha256(&ids), wt["ids_sha256"].as_str().unwrap());
}

#[test]
fn tokenizer_explicit_strings_and_roundtrip() {
    let tok = real_tokenizer();
    let gold = golden();
    for case in gold["tokenizer"]["strings"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| as_u64(v) as u32)
            .collect();
        // `true` asks for the default special tokens: SmolLM2 has none to add.
        let ids = tok.encode_fast(text, true).unwrap().get_ids().to_vec();
        assert_eq!(ids, want, "{text:?}");
        let decoded = tok.decode(&ids, false).unwrap();
        assert_eq!(decoded, case["decoded"].as_str().unwrap(), "{text:?}");
        if case["roundtrip"].as_bool().unwrap() {
            assert_eq!(decoded, text);
        }
    }
    // The special tokens are whole units and are skipped when asked.
    let ids = tok
        .encode_fast("<|im_start|>hi<|im_end|>", false)
        .unwrap()
        .get_ids()
        .to_vec();
    assert_eq!((ids[0], *ids.last().unwrap()), (1, 2));
    assert_eq!(tok.decode(&ids, true).unwrap(), "hi");
}

#[test]
fn import_real_file_end_to_end() {
    let path = real_gguf();
    let ck = gguf::import(&path).unwrap();
    let c = &ck.config;
    assert_eq!(c["model_type"], "llama");
    assert_eq!(c["architectures"][0], "LlamaForCausalLM");
    assert_eq!(c["rms_norm_eps"].as_f64(), Some(1e-5));
    assert_eq!(c["rope_theta"].as_f64(), Some(100000.0));
    assert_eq!(c["tie_word_embeddings"], true);
    assert_eq!(c["bos_token_id"], 1);
    assert_eq!(c["eos_token_id"], 2);
    assert_eq!(
        ck.tokenizer_config["tokenizer_class"],
        "PreTrainedTokenizerFast"
    );
    assert_eq!(ck.tokenizer_config["bos_token"], "<|im_start|>");
    assert_eq!(ck.tokenizer_config["eos_token"], "<|im_end|>");
    assert_eq!(ck.tokenizer_config["add_bos_token"], false);
    assert_eq!(ck.tokenizer_config["model_max_length"], 8192);
    assert!(ck.tokenizer_config["chat_template"]
        .as_str()
        .unwrap()
        .contains("<|im_start|>"));
    assert_eq!(ck.tensors.len(), 1 + 30 * 9 + 1);

    let dir = tempfile::tempdir().unwrap();
    write_checkpoint(&ck, dir.path()).unwrap();
    drop(ck);
    let model = load_model(dir.path(), Default::default()).unwrap();
    let cfg = &model.config;
    assert_eq!(
        (
            cfg.hidden_size,
            cfg.intermediate_size,
            cfg.num_hidden_layers
        ),
        (576, 1536, 30)
    );
    assert_eq!(
        (
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim
        ),
        (9, 3, 64)
    );
    assert_eq!((cfg.vocab_size, cfg.max_position_embeddings), (49152, 8192));
    assert_eq!(cfg.rope_theta, 100000.0);
    assert!(cfg.tie_word_embeddings && model.lm_head.is_none());

    // The written q/k are in HF layout: compare with the golden rows.
    let gold = golden();
    let q = &gold["weights"]["tensors"]["model.layers.0.self_attn.q_proj.weight"]["rows"];
    for (r, want) in q.as_object().unwrap() {
        let r: i64 = r.parse().unwrap();
        let got =
            Vec::<f32>::try_from(model.layers[0].q_proj.weight.get(r).narrow(0, 0, 8)).unwrap();
        assert_eq!(got, f32s(want), "q_proj row {r}");
    }
    let tok = tokenizers::Tokenizer::from_file(dir.path().join("tokenizer.json")).unwrap();
    let case = &gold["tokenizer"]["strings"][1];
    let ids = tok
        .encode(case["text"].as_str().unwrap(), true)
        .unwrap()
        .get_ids()
        .to_vec();
    let want: Vec<u32> = case["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| as_u64(v) as u32)
        .collect();
    assert_eq!(ids, want);
    let runtime = come_repro::model::tokenizer::Tokenizer::from_dir(dir.path()).unwrap();
    assert_eq!(runtime.eos_ids, vec![2]);
}

// ---------------------------------------------------------------------------------------
// Synthetic files

#[test]
fn hand_built_blocks_dequantise_through_the_file() {
    let dir = tempfile::tempdir().unwrap();
    // Q4_1: d = 0.25, m = 1.5, byte k = (k, 15 - k).
    let mut q41 = vec![];
    q41.extend(f16(0.25));
    q41.extend(f16(1.5));
    q41.extend((0..16u8).map(|k| k | ((15 - k) << 4)));
    // Q8_0: d = 0.5, q = -16..16.
    let mut q80 = vec![];
    q80.extend(f16(0.5));
    q80.extend((-16i8..16).map(|q| q as u8));
    let f16s: Vec<u8> = [1.0f32, -2.5, 65504.0, 0.0]
        .iter()
        .flat_map(|&v| f16(v))
        .collect();
    let bf16s: Vec<u8> = [1.0f32, -3.0]
        .iter()
        .flat_map(|&v| half::bf16::from_f32(v).to_bits().to_le_bytes())
        .collect();
    let mut w = Writer::new();
    w.str("general.architecture", "llama")
        .tensor("q41", &[32], 3, q41)
        .tensor("q80", &[32], 8, q80)
        .tensor("f16", &[2, 2], 1, f16s)
        .tensor("bf16", &[2], 30, bf16s);
    let path = w.write(dir.path(), "blocks.gguf");
    let g = GgufFile::open(&path).unwrap();
    let read = |n: &str| g.read_f32(g.tensor(n).unwrap()).unwrap();

    let q41 = read("q41");
    let want: Vec<f32> = (0..16)
        .map(|k| 0.25 * k as f32 + 1.5)
        .chain((0..16).map(|k| 0.25 * (15 - k) as f32 + 1.5))
        .collect();
    assert_eq!(q41, want);
    assert_eq!((q41[0], q41[15], q41[16], q41[31]), (1.5, 5.25, 5.25, 1.5));

    let q80 = read("q80");
    assert_eq!(q80, (-16..16).map(|q| 0.5 * q as f32).collect::<Vec<_>>());
    assert_eq!((q80[0], q80[31]), (-8.0, 7.5));

    assert_eq!(read("f16"), vec![1.0, -2.5, 65504.0, 0.0]);
    assert_eq!(g.tensor("f16").unwrap().shape(), vec![2, 2]);
    assert_eq!(read("bf16"), vec![1.0, -3.0]);
}

#[test]
fn version_2_parses_like_version_3() {
    let mut w = tiny_llama();
    let v3 = GgufFile::parse(&w.bytes(), Path::new("v3.gguf")).unwrap();
    w.version = 2;
    let v2 = GgufFile::parse(&w.bytes(), Path::new("v2.gguf")).unwrap();
    assert_eq!((v2.version, v3.version), (2, 3));
    assert_eq!(v2.metadata, v3.metadata);
    assert_eq!(v2.tensors, v3.tensors);
    assert_eq!(v2.data_offset, v3.data_offset);
}

#[test]
fn tiny_model_imports_in_hf_layout() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny_llama().write(dir.path(), "tiny.gguf");
    let ck = gguf::import(&path).unwrap();
    assert_eq!(ck.config["head_dim"], 4);
    assert_eq!(ck.config["num_key_value_heads"], 1);
    assert_eq!(ck.config["vocab_size"], 8);
    assert_eq!(ck.config["bos_token_id"], 7);
    let out = dir.path().join("hf");
    write_checkpoint(&ck, &out).unwrap();
    let m = load_model(&out, Default::default()).unwrap();
    let row = |t: &tch::Tensor, r: i64| Vec::<f32>::try_from(t.get(r)).unwrap();
    let gguf_row =
        |r: usize, cols: usize| (0..cols).map(|c| (r * 100 + c) as f32).collect::<Vec<_>>();
    // Heads of 4 rows: HF row order within a head is GGUF rows [0, 2, 1, 3].
    let q = &m.layers[0].q_proj.weight;
    for (hf, gg) in [
        (0, 0),
        (1, 2),
        (2, 1),
        (3, 3),
        (4, 4),
        (5, 6),
        (6, 5),
        (7, 7),
    ] {
        assert_eq!(row(q, hf), gguf_row(gg, 8), "q_proj row {hf}");
    }
    let k = &m.layers[0].k_proj.weight;
    assert_eq!(k.size(), vec![4, 8]);
    assert_eq!(row(k, 1), gguf_row(2, 8));
    // Other matrices keep their rows; GGUF [in, out] is (out, in).
    assert_eq!(row(&m.layers[0].v_proj.weight, 1), gguf_row(1, 8));
    assert_eq!(m.layers[0].down_proj.weight.size(), vec![8, 16]);
    assert_eq!(row(&m.layers[0].down_proj.weight, 3), gguf_row(3, 16));
    assert_eq!(row(&m.embed, 5), gguf_row(5, 8));
    // The tokenizer: merges apply, digits split, BOS not added.
    let tok = tokenizers::Tokenizer::from_file(out.join("tokenizer.json")).unwrap();
    let ids = tok
        .encode("ab a1<|im_start|>", true)
        .unwrap()
        .get_ids()
        .to_vec();
    assert_eq!(ids, vec![5, 6, 3, 7]);
}

#[test]
fn add_bos_token_prepends_bos() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = tiny_llama();
    w.bool("tokenizer.ggml.add_bos_token", true);
    // A key given twice is a corrupt file; rebuild instead.
    let path = w.write(dir.path(), "dup.gguf");
    assert_format_err(GgufFile::open(&path), &path, "duplicate key");

    // The last metadata byte is `add_bos_token`; set it.
    let mut w = tiny_llama();
    *w.kv.last_mut().unwrap() = 1;
    let path = w.write(dir.path(), "bos.gguf");
    let g = GgufFile::open(&path).unwrap();
    let t = gguf_tokenizer::build(&g).unwrap();
    assert_eq!(t.tokenizer_config["add_bos_token"], true);
    let ids = t.tokenizer.encode("ab", true).unwrap().get_ids().to_vec();
    assert_eq!(ids, vec![7, 5]);
    let ids = t.tokenizer.encode("ab", false).unwrap().get_ids().to_vec();
    assert_eq!(ids, vec![5]);
}

// ---------------------------------------------------------------------------------------
// Bad input

#[test]
fn truncated_real_file_is_a_clear_error() {
    let path = real_gguf();
    let bytes = std::fs::read(&path).unwrap();
    let g = GgufFile::parse(&bytes, &path).unwrap();
    let d = g.data_offset as usize;
    for (cut, needle) in [
        (0, "GGUF header"),
        (3, "GGUF header"),
        (10, "GGUF header"),
        (30, "metadata count 33 cannot fit in a file of 30 bytes"),
        (600, "truncated"),
        (1_000_000, "metadata entry"),
        (d - 2000, "tensor info"),
        (d, "truncated: tensor `token_embd.weight`"),
        (bytes.len() - 1, "truncated: tensor `output_norm.weight`"),
    ] {
        let r = GgufFile::parse(&bytes[..cut], &path);
        assert_format_err(r, &path, needle);
    }
    // The same through a file on disk, and a file that shrank after it was parsed.
    let dir = tempfile::tempdir().unwrap();
    let short = dir.path().join("short.gguf");
    std::fs::write(&short, &bytes[..d + 1000]).unwrap();
    let e = GgufFile::open(&short).unwrap_err();
    assert!(
        e.to_string().contains("short.gguf") && e.to_string().contains("truncated"),
        "{e}"
    );
    std::fs::write(&short, &bytes).unwrap();
    let g = GgufFile::open(&short).unwrap();
    std::fs::write(&short, &bytes[..d + 10]).unwrap();
    let r = g.read_f32(g.tensor("blk.0.attn_q.weight").unwrap());
    assert_format_err(r, &short, "truncated");
}

#[test]
fn corrupted_header_is_a_clear_error() {
    let path = real_gguf();
    let bytes = std::fs::read(&path).unwrap();
    let d = GgufFile::parse(&bytes, &path).unwrap().data_offset as usize;
    let header = &bytes[..d];
    let with = |at: usize, patch: &[u8]| {
        let mut b = bytes.clone();
        b[at..at + patch.len()].copy_from_slice(patch);
        GgufFile::parse(&b, &path)
    };
    assert_format_err(with(0, b"GGUG"), &path, "bad magic");
    assert_format_err(
        with(4, &4u32.to_le_bytes()),
        &path,
        "unsupported GGUF version 4",
    );
    assert_format_err(
        with(4, &1u32.to_le_bytes()),
        &path,
        "unsupported GGUF version 1",
    );
    assert_format_err(with(4, &3u32.to_be_bytes()), &path, "big-endian");
    assert_format_err(with(8, &(1u64 << 60).to_le_bytes()), &path, "tensor count");
    assert_format_err(
        with(16, &(1u64 << 60).to_le_bytes()),
        &path,
        "metadata count",
    );
    assert_format_err(
        with(24, &(u64::MAX / 2).to_le_bytes()),
        &path,
        "string length",
    );
    // The token array: key, type 9 (array), element type 8 (string), count.
    let key = b"tokenizer.ggml.tokens";
    let at = header.windows(key.len()).position(|w| w == key).unwrap() + key.len();
    assert_eq!(&header[at..at + 8], &[9, 0, 0, 0, 8, 0, 0, 0]);
    assert_format_err(
        with(at + 8, &(1u64 << 40).to_le_bytes()),
        &path,
        "array count",
    );
    assert_format_err(with(at, &[99]), &path, "unknown metadata value type 99");
    assert_format_err(with(at + 4, &[77]), &path, "unknown array element type 77");
    // The first token's length, made huge.
    assert_format_err(
        with(at + 16, &(1u64 << 50).to_le_bytes()),
        &path,
        "string length",
    );
}

#[test]
fn bad_tensor_infos_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = Writer::new();
    w.tensor("big", &[u64::MAX, 4], 0, vec![]);
    let p = w.write(dir.path(), "overflow.gguf");
    assert_format_err(GgufFile::open(&p), &p, "overflow");
    let mut w = Writer::new();
    w.tensor("q", &[20], 3, vec![0; 20]);
    let p = w.write(dir.path(), "partial_block.gguf");
    assert_format_err(
        GgufFile::open(&p),
        &p,
        "row length 20 is not a multiple of the Q4_1 (ggml type 3) block size 32",
    );
    let mut w = Writer::new();
    w.tensor("x", &[1, 1, 1, 1, 1], 0, vec![0; 4]);
    let p = w.write(dir.path(), "dims.gguf");
    assert_format_err(GgufFile::open(&p), &p, "5 dimensions");
    let mut w = Writer::new();
    w.f32_tensor("a", &[2], |_| 0.0)
        .f32_tensor("a", &[2], |_| 0.0);
    let p = w.write(dir.path(), "dup.gguf");
    assert_format_err(GgufFile::open(&p), &p, "duplicate tensor name");
    let mut w = Writer::new();
    w.u32("general.alignment", 24)
        .f32_tensor("a", &[2], |_| 0.0);
    let p = w.write(dir.path(), "align.gguf");
    assert_format_err(GgufFile::open(&p), &p, "power of two");
}

#[test]
fn unsupported_quant_type_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = Writer::new();
    w.tensor("blk.0.ffn_up.weight", &[256], 12, vec![0; 144])
        .tensor("odd", &[7], 99, vec![0; 7]);
    let path = w.write(dir.path(), "q4k.gguf");
    let g = GgufFile::open(&path).unwrap();
    let q4k = g.tensor("blk.0.ffn_up.weight").unwrap();
    assert_eq!(q4k.n_bytes, Some(144));
    assert_unsupported(
        g.read_f32(q4k),
        &path,
        &["Q4_K", "ggml type 12", "blk.0.ffn_up.weight"],
    );
    assert_unsupported(
        g.read_f32(g.tensor("odd").unwrap()),
        &path,
        &["unknown ggml type 99", "odd"],
    );

    // In a model, the importer refuses it before dequantising anything.
    let mut w = tiny_llama();
    let t = w
        .tensors
        .iter_mut()
        .find(|t| t.0 == "output_norm.weight")
        .unwrap();
    // 8 elements cannot be a Q4_K block, so use a type with 1-element blocks: I32.
    t.2 = 26;
    let path = w.write(dir.path(), "tiny_i32.gguf");
    assert_unsupported(gguf::import(&path), &path, &["output_norm.weight", "I32"]);
}

#[test]
fn model_level_errors_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    // A missing layer tensor.
    let mut w = tiny_llama();
    w.tensors.retain(|t| t.0 != "blk.0.attn_v.weight");
    let path = w.write(dir.path(), "missing.gguf");
    match gguf::import(&path) {
        Err(Error::MissingTensor { path: p, name }) => {
            assert_eq!(p, path);
            assert_eq!(name, "blk.0.attn_v.weight");
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
    // A tensor we do not map.
    let mut w = tiny_llama();
    w.f32_tensor("rope_freqs.weight", &[2], |_| 1.0);
    let path = w.write(dir.path(), "extra.gguf");
    assert_unsupported(gguf::import(&path), &path, &["rope_freqs.weight"]);
    // Another architecture, and other tokenizers: patch values of equal length in place.
    let src = tiny_llama().bytes();
    let patched = |key: &[u8], value: &[u8], name: &str| {
        // key, then the value type (u32) and the string length (u64), then the string.
        let at = src.windows(key.len()).position(|x| x == key).unwrap() + key.len() + 4 + 8;
        let mut b = src.clone();
        b[at..at + value.len()].copy_from_slice(value);
        let p = dir.path().join(name);
        std::fs::write(&p, &b).unwrap();
        p
    };
    let path = patched(b"general.architecture", b"qwen2", "qwen.gguf");
    assert_unsupported(
        gguf::import(&path),
        &path,
        &["general.architecture `qwen2`"],
    );
    let path = patched(b"tokenizer.ggml.model", b"lama", "spm.gguf");
    assert_unsupported(gguf::import(&path), &path, &["tokenizer.ggml.model `lama`"]);
    let path = patched(b"tokenizer.ggml.pre", b"qwen35", "pre.gguf");
    assert_unsupported(gguf::import(&path), &path, &["tokenizer.ggml.pre `qwen35`"]);
    // A missing hyper-parameter (its key renamed).
    let key = b"llama.feed_forward_length";
    let at = src.windows(key.len()).position(|x| x == key).unwrap();
    let mut b = src.clone();
    b[at..at + 5].copy_from_slice(b"LLAMA");
    let path = dir.path().join("noff.gguf");
    std::fs::write(&path, &b).unwrap();
    assert_format_err(
        gguf::import(&path),
        &path,
        "missing metadata key `llama.feed_forward_length`",
    );
}
// ---------------------------------------------------------------------------------------
// The parser on arbitrary input

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn parser_survives_arbitrary_bytes(
        tail in proptest::collection::vec(any::<u8>(), 0..400),
        prefix in 0usize..3,
    ) {
        // Half the time start like a real file so the parser gets past the magic.
        let mut b = match prefix {
            0 => vec![],
            1 => b"GGUF\x03\x00\x00\x00".to_vec(),
            _ => b"GGUF\x02\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x02\x00\x00\x00\x00\x00\x00\x00".to_vec(),
        };
        b.extend(tail);
        let _ = GgufFile::parse(&b, Path::new("fuzz.gguf"));
    }

    #[test]
    fn parser_survives_mutated_valid_files(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let mut b = tiny_llama().bytes();
        for (i, v) in edits {
            let i = i.index(b.len());
            b[i] = v;
        }
        if truncate {
            b.truncate(cut.index(b.len()));
        }
        let path = Path::new("mutated.gguf");
        if let Ok(g) = GgufFile::parse(&b, path) {
            // Whatever parsed must be safe to turn into a tokenizer as well.
            let _ = gguf_tokenizer::build(&g);
            prop_assert!(g.tensors.iter().all(|t| t.offset + t.n_bytes.unwrap_or(0) + g.data_offset <= b.len() as u64));
        }
    }
}
