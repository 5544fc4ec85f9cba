//! The llama2.c importer on stories260K: header, weight layout, tokenizer goldens from
//! scripts/golden/llama2c_tokenizer_goldens.py (a Python port of run.c), end-to-end import,
//! and clear errors on damaged inputs.

use come_repro::model::import::write_checkpoint;
use come_repro::model::llama2c::{self, Header, Vocab};
use come_repro::model::load::load_model;
use come_repro::paths::{stories260k_bin, stories260k_tok};
use come_repro::Error;
use serde_json::Value;
use std::path::{Path, PathBuf};
use tch::Tensor;

const FILE_BYTES: u64 = 1_056_540;

fn golden() -> Value {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/stories260k_tokenizer.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn tokenizer() -> tokenizers::Tokenizer {
    let vocab = Vocab::read(&stories260k_tok(), 512).unwrap();
    llama2c::build_tokenizer(&vocab, &stories260k_tok()).unwrap()
}

/// f32s of the model file from float index `start` (after the header).
fn floats(bytes: &[u8], start: usize, n: usize) -> Vec<f32> {
    let at = 28 + 4 * start;
    bytes[at..at + 4 * n]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Float offset of a llama2.c tensor in the file, from the documented run.c order.
fn offset_of(name: &str) -> usize {
    let (v, d, l, h, kv, seq, hs) = (512, 64, 5, 172, 32, 512, 8);
    let order = [
        ("token_embedding_table", v * d),
        ("rms_att_weight", l * d),
        ("wq", l * d * d),
        ("wk", l * kv * d),
        ("wv", l * kv * d),
        ("wo", l * d * d),
        ("rms_ffn_weight", l * d),
        ("w1", l * h * d),
        ("w2", l * d * h),
        ("w3", l * h * d),
        ("rms_final_weight", d),
        ("freq_cis_real", seq * hs / 2),
        ("freq_cis_imag", seq * hs / 2),
    ];
    let mut off = 0;
    for (n, size) in order {
        if n == name {
            return off;
        }
        off += size;
    }
    assert_eq!(
        28 + 4 * off as u64,
        FILE_BYTES,
        "the documented layout covers the file"
    );
    off
}

#[test]
fn header_of_stories260k() {
    let h = Header::read(&stories260k_bin()).unwrap();
    let want = Header {
        dim: 64,
        hidden_dim: 172,
        n_layers: 5,
        n_heads: 8,
        n_kv_heads: 4,
        vocab_size: 512,
        seq_len: 512,
        shared_classifier: true,
    };
    assert_eq!(h, want);
    assert_eq!(
        std::fs::metadata(stories260k_bin()).unwrap().len(),
        FILE_BYTES
    );
    assert_eq!(h.expected_file_bytes(), Some(FILE_BYTES));
    assert_eq!(offset_of("end"), (FILE_BYTES as usize - 28) / 4);
}

/// The file's (unused by run.c) freq_cis tables are cos/sin of pos * 10000^(-2i/head_size):
/// the convention `rope_theta = 10000` reproduces.
#[test]
fn stored_rope_tables_match_theta_10000() {
    let bytes = std::fs::read(stories260k_bin()).unwrap();
    let (hs, seq) = (8usize, 512usize);
    let re = floats(&bytes, offset_of("freq_cis_real"), seq * hs / 2);
    let im = floats(&bytes, offset_of("freq_cis_imag"), seq * hs / 2);
    let mut worst = 0f64;
    for pos in 0..seq {
        for i in 0..hs / 2 {
            let angle = pos as f64 * 10000f64.powf(-((2 * i) as f64) / hs as f64);
            let k = pos * hs / 2 + i;
            worst = worst
                .max((re[k] as f64 - angle.cos()).abs())
                .max((im[k] as f64 - angle.sin()).abs());
        }
    }
    assert!(
        worst < 1e-3,
        "stored freq_cis differ from theta 10000 by {worst}"
    );
}

#[test]
fn tokenizer_encodes_goldens() {
    let g = golden();
    let tok = tokenizer();
    assert_eq!(g["vocab_size"], 512);
    for case in g["encode"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let got = tok.encode(text, true).unwrap().get_ids().to_vec();
        assert_eq!(got, ids(&case["ids"]), "encode {text:?}");
    }
    let merges = Vocab::read(&stories260k_tok(), 512)
        .unwrap()
        .merge_triples()
        .len();
    assert_eq!(merges as u64, g["n_merge_pairs"].as_u64().unwrap());
    // No overlapping equal-score merges: BPE's rank order cannot differ from run.c's
    // leftmost-first rule on this vocabulary.
    let vocab = Vocab::read(&stories260k_tok(), 512).unwrap();
    assert!(llama2c::tie_hazards(&vocab).is_empty());
}

#[test]
fn tokenizer_encodes_wikitext_rows() {
    let g = golden();
    let tok = tokenizer();
    let path = come_repro::paths::data_dir().join("wikitext2/wikitext2_raw_test.rows.jsonl");
    let rows: Vec<String> = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .take(g["wikitext_rows"].as_u64().unwrap() as usize)
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["text"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let want = g["wikitext"].as_array().unwrap();
    assert_eq!(rows.len(), want.len());
    for (i, (row, w)) in rows.iter().zip(want).enumerate() {
        let got = tok.encode(row.as_str(), true).unwrap().get_ids().to_vec();
        assert_eq!(got, ids(w), "wikitext row {i}: {row:?}");
    }
}

#[test]
fn tokenizer_decodes_goldens_and_round_trips() {
    let g = golden();
    let tok = tokenizer();
    for case in g["decode"].as_array().unwrap() {
        let got = tok.decode(&ids(&case["ids"]), true).unwrap();
        assert_eq!(
            got,
            case["text"].as_str().unwrap(),
            "decode {:?}",
            case["ids"]
        );
    }
    for case in g["encode"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let back = tok.decode(&ids(&case["ids"]), true).unwrap();
        assert_eq!(back, text, "decode(encode({text:?}))");
    }
}

#[test]
fn import_end_to_end() {
    let ck = llama2c::import(&stories260k_bin(), &stories260k_tok()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    write_checkpoint(&ck, dir.path()).unwrap();
    let m = load_model(dir.path(), Default::default()).unwrap();
    let c = &m.config;
    assert_eq!(
        (
            c.hidden_size,
            c.intermediate_size,
            c.num_hidden_layers,
            c.num_attention_heads
        ),
        (64, 172, 5, 8)
    );
    assert_eq!(
        (c.num_key_value_heads, c.head_dim, c.vocab_size),
        (4, 8, 512)
    );
    assert_eq!(c.max_position_embeddings, 512);
    assert!(c.tie_word_embeddings && m.lm_head.is_none());
    assert_eq!((c.rms_norm_eps, c.rope_theta), (1e-5, 10000.0));

    // Weights against the raw file: names, w1/w3 roles and the rotary row order.
    let bytes = std::fs::read(stories260k_bin()).unwrap();
    let emb = floats(&bytes, offset_of("token_embedding_table"), 512 * 64);
    assert_eq!(Vec::<f32>::try_from(m.embed.view([-1])).unwrap(), emb);
    let l = 3usize;
    let layer = &m.layers[l];
    let (d, hs, h) = (64usize, 8usize, 172usize);
    let raw_q = floats(&bytes, offset_of("wq") + l * d * d, d * d);
    let raw_k = floats(&bytes, offset_of("wk") + l * 32 * d, 32 * d);
    let q = Vec::<f32>::try_from(layer.q_proj.weight.view([-1])).unwrap();
    let k = Vec::<f32>::try_from(layer.k_proj.weight.view([-1])).unwrap();
    for (hf, raw, heads) in [(&q, &raw_q, 8), (&k, &raw_k, 4)] {
        for head in 0..heads {
            for i in 0..hs / 2 {
                for j in 0..2 {
                    let hf_row = head * hs + j * hs / 2 + i;
                    let raw_row = head * hs + 2 * i + j;
                    assert_eq!(
                        hf[hf_row * d..(hf_row + 1) * d],
                        raw[raw_row * d..(raw_row + 1) * d]
                    );
                }
            }
        }
    }
    let check = |t: &Tensor, name: &str, n: usize| {
        let want = floats(&bytes, offset_of(name) + l * n, n);
        assert_eq!(Vec::<f32>::try_from(t.view([-1])).unwrap(), want, "{name}");
    };
    check(&layer.v_proj.weight, "wv", 32 * d);
    check(&layer.o_proj.weight, "wo", d * d);
    check(&layer.gate_proj.weight, "w1", h * d);
    check(&layer.down_proj.weight, "w2", d * h);
    check(&layer.up_proj.weight, "w3", h * d);
    check(&layer.input_norm, "rms_att_weight", d);
    check(&layer.post_norm, "rms_ffn_weight", d);
    let norm = floats(&bytes, offset_of("rms_final_weight"), d);
    assert_eq!(Vec::<f32>::try_from(&m.norm).unwrap(), norm);

    // The saved tokenizer files, through the runtime loader, still match run.c.
    let rt = come_repro::model::tokenizer::Tokenizer::from_dir(dir.path()).unwrap();
    assert_eq!((rt.bos_id, rt.eos_ids.clone()), (Some(1), vec![2]));
    let g = golden();
    for case in g["encode"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        assert_eq!(
            rt.encode(text, true).unwrap(),
            ids(&case["ids"]),
            "{text:?}"
        );
    }
    for f in [
        "tokenizer_config.json",
        "special_tokens_map.json",
        "generation_config.json",
    ] {
        assert!(dir.path().join(f).exists(), "{f}");
    }
}

/// A small synthetic checkpoint: header plus `floats` zeros (or the exact count when None).
fn synthetic_model(dir: &Path, name: &str, header: [i32; 7], floats: Option<usize>) -> PathBuf {
    let [d, h, l, nh, nkv, v, seq] = header.map(|x| x.unsigned_abs() as usize);
    let (hs, kv) = (d / nh.max(1), d / nh.max(1) * nkv);
    let exact = v * d
        + 2 * l * d
        + 2 * l * d * d
        + 2 * l * kv * d
        + 3 * l * h * d
        + d
        + seq * hs
        + if header[5] < 0 { v * d } else { 0 };
    let n = floats.unwrap_or(exact);
    let mut bytes: Vec<u8> = header.iter().flat_map(|x| x.to_le_bytes()).collect();
    bytes.extend((0..n).flat_map(|i| ((i % 7) as f32 * 0.01).to_le_bytes()));
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn expect_format_err(r: come_repro::Result<impl Sized>, file: &Path, needle: &str) {
    let e = match r {
        Ok(_) => panic!("expected an error mentioning {needle:?}"),
        Err(e) => e,
    };
    let msg = e.to_string();
    assert!(
        matches!(e, Error::Format { .. }),
        "wanted a format error, got {msg}"
    );
    assert!(msg.contains(&file.display().to_string()), "{msg}");
    assert!(msg.contains(needle), "wanted {needle:?} in: {msg}");
}

#[test]
fn separate_classifier_imports() {
    let dir = tempfile::tempdir().unwrap();
    let model = synthetic_model(dir.path(), "m.bin", [8, 16, 2, 2, 1, -512, 4], None);
    let ck = llama2c::import(&model, &stories260k_tok()).unwrap();
    assert_eq!(ck.config["tie_word_embeddings"], false);
    assert!(ck
        .tensors
        .iter()
        .any(|(n, t)| n == "lm_head.weight" && t.size() == [512, 8]));
    let out = dir.path().join("hf");
    write_checkpoint(&ck, &out).unwrap();
    let m = load_model(&out, Default::default()).unwrap();
    assert!(m.lm_head.is_some());
    assert_eq!(m.layers[1].k_proj.weight.size(), [4, 8]);
}

#[test]
fn truncated_model_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let full = std::fs::read(stories260k_bin()).unwrap();
    let tok = stories260k_tok();
    for cut in [
        0usize,
        5,
        27,
        28,
        1000,
        full.len() / 2,
        full.len() - 4,
        full.len() - 1,
    ] {
        let p = dir.path().join(format!("cut{cut}.bin"));
        std::fs::write(&p, &full[..cut]).unwrap();
        let needle = if cut < 28 {
            "shorter than the 28-byte"
        } else {
            "truncated by"
        };
        expect_format_err(llama2c::import(&p, &tok), &p, needle);
    }
    let p = dir.path().join("long.bin");
    let mut long = full.clone();
    long.extend([0u8; 8]);
    std::fs::write(&p, &long).unwrap();
    expect_format_err(llama2c::import(&p, &tok), &p, "8 unexpected trailing bytes");
}

#[test]
fn bad_header_values_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let full = std::fs::read(stories260k_bin()).unwrap();
    let tok = stories260k_tok();
    let cases: &[(usize, i32, &str)] = &[
        (0, 0, "`dim` must be positive"),
        (1, -172, "`hidden_dim` must be positive"),
        (2, 0, "`n_layers` must be positive"),
        (3, -8, "`n_heads` must be positive"),
        (4, 3, "multiple of n_kv_heads"),
        (3, 6, "multiple of n_kv_heads"),
        (5, 0, "`vocab_size` must be non-zero"),
        (6, 0, "`seq_len` must be positive"),
        (6, 513, "truncated by"),
        (5, -512, "sign of vocab_size"),
        (0, i32::MAX, "multiple of n_heads"),
    ];
    for (k, (field, value, needle)) in cases.iter().enumerate() {
        let mut b = full.clone();
        b[4 * field..4 * field + 4].copy_from_slice(&value.to_le_bytes());
        let p = dir.path().join(format!("bad{k}.bin"));
        std::fs::write(&p, &b).unwrap();
        expect_format_err(llama2c::import(&p, &tok), &p, needle);
    }
}

#[test]
fn damaged_tokenizer_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let model = stories260k_bin();
    let full = std::fs::read(stories260k_tok()).unwrap();
    for cut in [0usize, 3, 4, 9, full.len() / 2, full.len() - 1] {
        let p = dir.path().join(format!("tok{cut}.bin"));
        std::fs::write(&p, &full[..cut]).unwrap();
        expect_format_err(llama2c::import(&model, &p), &p, "truncated");
    }
    // Piece 0's length field (bytes 8..12): negative, then past max_token_length.
    for (k, len) in [-1i32, 1000, i32::MAX].into_iter().enumerate() {
        let mut b = full.clone();
        b[8..12].copy_from_slice(&len.to_le_bytes());
        let p = dir.path().join(format!("len{k}.bin"));
        std::fs::write(&p, &b).unwrap();
        expect_format_err(llama2c::import(&model, &p), &p, &format!("length {len}"));
    }
    let mut b = full.clone();
    b[0..4].copy_from_slice(&(-7i32).to_le_bytes());
    let p = dir.path().join("mtl.bin");
    std::fs::write(&p, &b).unwrap();
    expect_format_err(llama2c::import(&model, &p), &p, "max_token_length");
}

#[test]
fn model_and_tokenizer_vocab_mismatch_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let tok = stories260k_tok();
    let bigger = synthetic_model(dir.path(), "v600.bin", [8, 16, 1, 2, 1, 600, 4], None);
    expect_format_err(llama2c::import(&bigger, &tok), &tok, "piece 512 of the 600");
    let smaller = synthetic_model(dir.path(), "v500.bin", [8, 16, 1, 2, 1, 500, 4], None);
    expect_format_err(
        llama2c::import(&smaller, &tok),
        &tok,
        "trailing bytes after the 500 pieces",
    );
}

#[test]
fn missing_files_are_io_errors() {
    let dir = tempfile::tempdir().unwrap();
    let nope = dir.path().join("nope.bin");
    let e = llama2c::import(&nope, &stories260k_tok()).err().unwrap();
    assert!(
        matches!(e, Error::Io { .. }) && e.to_string().contains("nope.bin"),
        "{e}"
    );
    let e = llama2c::import(&stories260k_bin(), &nope).err().unwrap();
    assert!(
        matches!(e, Error::Io { .. }) && e.to_string().contains("nope.bin"),
        "{e}"
    );
}
