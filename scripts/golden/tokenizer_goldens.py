#!/usr/bin/env python3
"""Golden values for the GGUF importer tests (tests/gguf.rs), made without the Rust code.

Run by hand from the project root:

    .venv/bin/python scripts/golden/tokenizer_goldens.py

It writes tests/golden/smollm2_tokenizer.json with

* token ids of the *original* SmolLM2 tokenizer for the WikiText-2 test stream (count,
  sha256, first ids), for every WikiText-2 row (count + short hash) and for a few explicit
  strings;
* how transformers' GGUF tokenizer loader differs from it (it omits the digit split), with
  proof that the digit split is the whole difference;
* header facts as the `gguf` package reads them (version, counts, data offset, types);
* a few dequantised weight values of SmolLM2-135M-Instruct.Q4_1.gguf in Hugging Face layout
  (q/k rows un-permuted), from the `gguf` package's dequantiser and a numpy inverse of
  llama.cpp's row permutation, cross-checked against transformers' GGUF model loader.

The reference tokenizer is built with the Python `tokenizers` package from the vocabulary
and merges stored in the GGUF (read with the `gguf` package), with the pre-tokenizer of the
original SmolLM2 tokenizer.json. Where that setting comes from:

* llama.cpp (src/llama-vocab.cpp) tokenizes `tokenizer.ggml.pre = "smollm"` with the regex
  list ["\\p{N}", <GPT-2 regex>], i.e. every numeric character split off before the GPT-2
  split; convert_hf_to_gguf_update.py assigns "smollm" to HuggingFaceTB/SmolLM-135M, the
  tokenizer SmolLM2 reuses (same 49152 tokens, same 17 special tokens).
* A public exporter pinned to HuggingFaceTB/SmolLM2-135M @ 93efa2f097d58c2a (found by a
  code search for `"individual_digits": true`) refuses any tokenizer.json whose
  pre_tokenizer is not exactly Sequence[Digits(individual_digits=true),
  ByteLevel(add_prefix_space=false, trim_offsets=true, use_regex=true)], whose normalizer
  is not null, or whose BPE model is not (unk_token null, byte_fallback false,
  ignore_merges false). We use exactly those settings.

The original tokenizer has no post-processor that adds tokens (SmolLM2 adds no BOS), so
everything here is encoded without special tokens.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import unicodedata
from pathlib import Path

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

ROOT = Path(__file__).resolve().parents[2]
MODELS = Path(os.environ.get("COME_MODELS") or ROOT.parent / "shared" / "models")
DATA = Path(os.environ.get("COME_DATA") or ROOT.parent / "shared" / "data")
GGUF = MODELS / "smollm2-135m-instruct-q4_1" / "SmolLM2-135M-Instruct.Q4_1.gguf"
WIKI_TXT = DATA / "wikitext2" / "wikitext2_raw_test.txt"
WIKI_ROWS = DATA / "wikitext2" / "wikitext2_raw_test.rows.jsonl"
OUT = ROOT / "tests" / "golden" / "smollm2_tokenizer.json"

# Explicit strings: digits in several scripts, vulgar fractions, whitespace runs, CRLF,
# unicode, code, special tokens, and one string with a byte the vocabulary lacks.
STRINGS = [
    "The capital of France is Paris.",
    "In 2004 Boulter landed 12,345 roles; pi is 3.14159.",
    " ½ cup and ¾ of 2½ pies, x² + y³",
    "Arabic-Indic ٣٤٥, Devanagari ४२, Roman Ⅻ, circled ①②",
    "  leading spaces, internal   runs,\ttabs\t\tand trailing   ",
    "line one\n\n\nline two\r\nCRLF line\n \n  \n",
    " 1 @,@ 000 @.@ 5 @-@ year",
    "Ünïcödé: naïve café — 日本語のテキスト, 한국어, Россия, مرحبا, emoji 😀👍🏽",
    "def f(x):\n    return x ** 2  # 100% sure\n",
    "<|im_start|>user\nWhat is 7*6?<|im_end|>\n<|im_start|>assistant\n42<|im_end|>",
    "<|endoftext|><repo_name>a/b<file_sep>x<jupyter_code>1+1<empty_output>",
    "I'm sure they'll say it's fine, don't you think? We've SEEN it.",
    "",
    "a\x04b",
]


def ids_hash(ids: list[int]) -> str:
    return hashlib.sha256(np.asarray(ids, dtype="<u4").tobytes()).hexdigest()


def gguf_strings(reader: GGUFReader, key: str) -> list[str]:
    return list(reader.fields[key].contents())


def reference_tokenizer(reader: GGUFReader) -> Tokenizer:
    tokens = gguf_strings(reader, "tokenizer.ggml.tokens")
    merges = [tuple(m.split(" ")) for m in gguf_strings(reader, "tokenizer.ggml.merges")]
    types = list(reader.fields["tokenizer.ggml.token_type"].contents())
    vocab = {t: i for i, t in enumerate(tokens)}
    assert len(vocab) == len(tokens), "duplicate tokens"
    tok = Tokenizer(
        models.BPE(vocab, merges, unk_token=None, byte_fallback=False, ignore_merges=False)
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    control = [AddedToken(tokens[i], special=True, normalized=False) for i, t in enumerate(types) if t == 3]
    tok.add_special_tokens(control)
    for i, t in enumerate(types):
        if t == 3:
            assert tok.token_to_id(tokens[i]) == i
    return tok


def has_numeric(s: str) -> bool:
    return any(unicodedata.category(c).startswith("N") for c in s)


def first_difference(a: list[int], b: list[int]) -> int:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return min(len(a), len(b))


def diff_regions(a: list[int], b: list[int], token_bytes) -> list[tuple[int, int, int, int]]:
    """Regions where two tokenizations of the same text disagree, as (i1, i2, j1, j2) token
    ranges, found by walking both with their byte positions (each byte-level token
    character is one byte), so a region ends where both put a token boundary again."""
    regions = []
    i = j = 0
    pa = pb = 0
    while i < len(a) and j < len(b):
        if a[i] == b[j] and pa == pb:
            pa += token_bytes(a[i])
            pb += token_bytes(b[j])
            i += 1
            j += 1
            continue
        i1, j1 = i, j
        pa += token_bytes(a[i])
        i += 1
        while pa != pb:
            if pa < pb:
                pa += token_bytes(a[i])
                i += 1
            else:
                pb += token_bytes(b[j])
                j += 1
        regions.append((i1, i, j1, j))
    if i < len(a) or j < len(b):
        regions.append((i, len(a), j, len(b)))
    return regions


def tokenizer_section(reader: GGUFReader) -> dict:
    ref = reference_tokenizer(reader)
    text = WIKI_TXT.read_bytes().decode("utf-8")
    rows = [json.loads(line)["text"] for line in WIKI_ROWS.read_text(encoding="utf-8").splitlines()]
    assert text == "\n\n".join(rows), "wikitext2_raw_test.txt is not the rows joined by blank lines"

    stream = ref.encode(text, add_special_tokens=False).ids
    row_ids = [e.ids for e in ref.encode_batch(rows, add_special_tokens=False)]

    strings = []
    for s in STRINGS:
        ids = ref.encode(s, add_special_tokens=False).ids
        decoded = ref.decode(ids, skip_special_tokens=False)
        strings.append({"text": s, "ids": ids, "decoded": decoded, "roundtrip": decoded == s})

    # transformers' own GGUF tokenizer for the same file: no digit split for "smollm".
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(GGUF.parent), gguf_file=GGUF.name)
    hf_pre = hf.backend_tokenizer.pre_tokenizer
    hf_stream = hf(text, add_special_tokens=False)["input_ids"]
    hf_rows = hf(rows, add_special_tokens=False)["input_ids"]
    differing = [i for i in range(len(rows)) if hf_rows[i] != row_ids[i]]
    examples = []
    for i in differing[:5]:
        k = first_difference(row_ids[i], hf_rows[i])
        examples.append(
            {
                "row": i,
                "original_tokens": [ref.id_to_token(t) for t in row_ids[i][max(0, k - 2) : k + 6]],
                "transformers_gguf_tokens": [hf.convert_ids_to_tokens(t) for t in hf_rows[i][max(0, k - 2) : k + 6]],
            }
        )
    token_len = {}

    def token_bytes(t: int) -> int:
        if t not in token_len:
            token_len[t] = len(ref.id_to_token(t))
        return token_len[t]

    regions = diff_regions(stream, hf_stream, token_bytes)
    stream_examples = [
        {
            "original_tokens": [ref.id_to_token(t) for t in stream[i1:i2]],
            "transformers_gguf_tokens": [ref.id_to_token(t) for t in hf_stream[j1:j2]],
            "context": ref.decode(stream[max(0, i1 - 3) : i2 + 3]),
        }
        for i1, i2, j1, j2 in regions
    ]
    short = {}
    for s in [" ½", " 2000", "  1", "x 12", " ٣٤"]:
        short[s] = {
            "original": [ref.id_to_token(t) for t in ref.encode(s, add_special_tokens=False).ids],
            "transformers_gguf": hf.convert_ids_to_tokens(hf(s, add_special_tokens=False)["input_ids"]),
        }
    # The whole difference is the digit split: give transformers' tokenizer the Digits step
    # and it agrees with the reference on every row and on the stream.
    hf.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), hf_pre]
    )
    fixed_rows = hf(rows, add_special_tokens=False)["input_ids"]
    fixed_stream = hf(text, add_special_tokens=False)["input_ids"]
    comparison = {
        "note": "transformers' GGUF loader builds a plain ByteLevel pre-tokenizer for tokenizer.ggml.pre = smollm; the original SmolLM2 tokenizer first splits every numeric character",
        "transformers_pre_tokenizer": json.loads(hf.backend_tokenizer.to_str())["pre_tokenizer"]["pretokenizers"][1],
        "stream_token_count": len(hf_stream),
        "stream_token_count_difference": len(stream) - len(hf_stream),
        "stream_position_first_difference": first_difference(stream, hf_stream),
        "stream_regions_differing": len(regions),
        "stream_tokens_in_differing_regions": {
            "original": sum(i2 - i1 for i1, i2, _, _ in regions),
            "transformers_gguf": sum(j2 - j1 for _, _, j1, j2 in regions),
        },
        "stream_differences": stream_examples[:12],
        "rows_differing": len(differing),
        "rows_differing_without_numeric_chars": sum(1 for i in differing if not has_numeric(rows[i])),
        "examples": examples,
        "short_strings": short,
        "rows_differing_after_adding_digit_split": sum(1 for i in range(len(rows)) if fixed_rows[i] != row_ids[i]),
        "stream_equal_after_adding_digit_split": fixed_stream == stream,
    }
    print(
        f"stream: {len(stream)} tokens (transformers GGUF: {len(hf_stream)}); rows differing: "
        f"{len(differing)} of {len(rows)}; after adding the digit split: "
        f"{comparison['rows_differing_after_adding_digit_split']}",
        file=sys.stderr,
    )
    return {
        "wikitext2_test": {
            "file": "wikitext2/wikitext2_raw_test.txt",
            "chars": len(text),
            "token_count": len(stream),
            "ids_sha256": ids_hash(stream),
            "first_ids": stream[:64],
        },
        "wikitext2_rows": {
            "file": "wikitext2/wikitext2_raw_test.rows.jsonl",
            "counts": [len(r) for r in row_ids],
            "hashes": [ids_hash(r)[:16] for r in row_ids],
        },
        "strings": strings,
        "transformers_gguf_tokenizer": comparison,
    }


def unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of llama.cpp's `w.reshape(n_head, 2, r/n_head/2, c).swapaxes(1, 2)`: row
    2j+s of a GGUF head is row s*d/2+j of the Hugging Face head."""
    rows, cols = w.shape
    return w.reshape(n_head, rows // n_head // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)


def permute(w: np.ndarray, n_head: int) -> np.ndarray:
    rows, cols = w.shape
    return w.reshape(n_head, 2, rows // n_head // 2, cols).swapaxes(1, 2).reshape(rows, cols)


def weights_section(reader: GGUFReader) -> dict:
    n_head = int(reader.fields["llama.attention.head_count"].contents())
    n_kv = int(reader.fields["llama.attention.head_count_kv"].contents())
    by_name = {t.name: t for t in reader.tensors}

    def deq(name: str) -> np.ndarray:
        t = by_name[name]
        w = dequantize(t.data, t.tensor_type).astype(np.float32)
        return w.reshape([int(d) for d in reversed(t.shape)])

    picks = {
        "model.layers.0.self_attn.q_proj.weight": ("blk.0.attn_q.weight", n_head, [0, 1, 32, 33, 64, 575]),
        "model.layers.0.self_attn.k_proj.weight": ("blk.0.attn_k.weight", n_kv, [0, 1, 32, 33, 64, 191]),
        "model.layers.29.self_attn.k_proj.weight": ("blk.29.attn_k.weight", n_kv, [0, 31, 32, 63, 191]),
        "model.layers.0.mlp.down_proj.weight": ("blk.0.ffn_down.weight", None, [0, 1, 575]),
        "model.embed_tokens.weight": ("token_embd.weight", None, [0, 1, 9707, 49151]),
        "model.layers.0.input_layernorm.weight": ("blk.0.attn_norm.weight", None, None),
        "model.norm.weight": ("output_norm.weight", None, None),
    }
    out = {}
    hf_layout = {}
    for hf_name, (gguf_name, heads, rows) in picks.items():
        w = deq(gguf_name)
        if heads is not None:
            u = unpermute(w, heads)
            assert np.array_equal(permute(u, heads), w), "unpermute is not the inverse"
            w = u
        hf_layout[hf_name] = w
        entry = {"gguf_name": gguf_name, "ggml_type": by_name[gguf_name].tensor_type.name, "shape": list(w.shape)}
        if rows is None:
            entry["first_values"] = [float(x) for x in w[:8]]
        else:
            entry["rows"] = {str(r): [float(x) for x in w[r, :8]] for r in rows}
        entry["sum"] = float(w.astype(np.float64).sum())
        out[hf_name] = entry

    # Independent check of the layout: transformers' GGUF model loader must give the same
    # tensors (it dequantises and reverses the permutation itself).
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(GGUF.parent), gguf_file=GGUF.name, dtype=torch.float32)
    sd = model.state_dict()
    diffs = {}
    for hf_name, w in hf_layout.items():
        t = sd[hf_name].detach().cpu().numpy()
        assert t.shape == w.shape, (hf_name, t.shape, w.shape)
        diffs[hf_name] = float(np.max(np.abs(t - w)))
    print(f"max |numpy - transformers| per tensor: {diffs}", file=sys.stderr)
    assert max(diffs.values()) < 1e-6, "numpy layout disagrees with transformers' GGUF loader"
    return {"tensors": out, "transformers_gguf_loader_max_abs_diff": diffs}


def header_section(reader: GGUFReader) -> dict:
    counts: dict[str, int] = {}
    for t in reader.tensors:
        counts[t.tensor_type.name] = counts.get(t.tensor_type.name, 0) + 1
    picks = [reader.tensors[i] for i in (0, 1, 2, 6, len(reader.tensors) - 1)]
    return {
        "version": int(reader.fields["GGUF.version"].contents()),
        "tensor_count": len(reader.tensors),
        "kv_count": int(reader.fields["GGUF.kv_count"].contents()),
        "data_offset": int(reader.data_offset),
        "type_counts": counts,
        "tensors": [
            {
                "name": t.name,
                "dims": [int(d) for d in t.shape],
                "ggml_type": int(t.tensor_type),
                "offset": int(t.data_offset - reader.data_offset),
                "n_bytes": int(t.n_bytes),
            }
            for t in picks
        ],
    }


def main() -> None:
    reader = GGUFReader(str(GGUF))
    golden = {
        "generator": "scripts/golden/tokenizer_goldens.py",
        "gguf": GGUF.name,
        "gguf_sha256": hashlib.sha256(GGUF.read_bytes()).hexdigest(),
        "ids_hash": "sha256 of the ids as little-endian u32; row hashes keep the first 16 hex digits",
        "header": header_section(reader),
        "tokenizer": tokenizer_section(reader),
        "weights": weights_section(reader),
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=OUT.parent, delete=False, encoding="utf-8") as f:
        json.dump(golden, f, ensure_ascii=False, indent=1)
        f.write("\n")
    os.chmod(f.name, 0o644)
    os.replace(f.name, OUT)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)", file=sys.stderr)


if __name__ == "__main__":
    main()
