#!/usr/bin/env python3
"""Tokenizer goldens for the llama2.c importer (stories260K's tok512.bin).

An independent, line-by-line port of llama2.c run.c's `encode` and `decode` (plain Python,
no tokenizer library) produces the reference ids and texts; the Rust importer's
tokenizer.json must reproduce them.

Writes tests/golden/stories260k_tokenizer.json:
  encode:    [{"text", "ids"}]  run.c encode(text, bos=1, eos=0), as run.c does for a prompt
  wikitext:  [ids]              the same for the `text` field of the first WIKI_ROWS rows of
                                WikiText-2 raw test
  decode:    [{"ids", "text"}]  what run.c's decode prints for ids[1:] (ids[0] is the BOS
                                the generation loop starts from), before safe_printf's
                                terminal filter
  n_merge_pairs                 piece pairs whose concatenation is a mergeable piece

With --hf DIR (a checkpoint written by the Rust importer) it also loads DIR with
transformers' AutoTokenizer (and, for information, the LlamaTokenizer class and the raw
`tokenizers` file) and prints whether they agree with the port. It never fails on a
mismatch; it reports.

Run: .venv/bin/python scripts/golden/llama2c_tokenizer_goldens.py [--hf DIR] [--no-write]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import struct
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests/golden/stories260k_tokenizer.json"
WIKI_ROWS = 200
BOS = 1

STRINGS = [
    "Once upon a time, there was a little girl named Lily.",
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the park.",
    "One day, Tim and his mom went to the park. They saw a big tree!",
    "",
    " ",
    "  ",
    "a",
    "The end.",
    " leading space",
    "  two leading spaces",
    "trailing space ",
    "trailing spaces  ",
    "double  space  inside",
    "  spaces   everywhere  ",
    "Hello, world!",
    "Lily's ball was red; the sun was hot.",
    'She said: "Let\'s play!"',
    "punctuation!?.,;:-()[]{}",
    "~tilde|pipe\\backslash<angle>",
    "100% sure & more #tag @user",
    "1234567890",
    "It was 3:45 pm on 12/25/2023.",
    "line one\nline two",
    "\n",
    "\n\nparagraph after blank lines\n",
    "tab\there",
    "windows\r\nline end",
    "café",
    "naïve résumé",
    "ß ü ö ä Ω",
    "emoji 😀 and 🐶",
    "日本語",
    "€100 — “quoted” ‘single’ …",
    "no\u00a0break and hair\u200aspace™",
    "ALL CAPS SHOUTING",
    "mIxEd CaSe WoRdS",
    "aaaaaaaaaaaaaaaa",
    "the the the the the",
    "x" * 60,
    "a-b_c+d=e*f/g^h",
]

# Inputs where the Hugging Face form is documented to differ from run.c (see
# src/model/llama2c.rs); reported by --hf, never written as goldens.
KNOWN_DIFFERENCES = ["<s>", "a</s>b", "<unk>", "\u2581x"]


def models_dir() -> Path:
    return Path(os.environ.get("COME_MODELS") or ROOT.parent / "shared/models")


def data_dir() -> Path:
    return Path(os.environ.get("COME_DATA") or ROOT.parent / "shared/data")


class RunCTokenizer:
    """run.c's Tokenizer: pieces are bytes, scores float32 (held exactly as Python floats)."""

    def __init__(self, path: Path, vocab_size: int):
        data = path.read_bytes()
        (self.max_token_length,) = struct.unpack_from("<i", data, 0)
        off = 4
        self.pieces: list[bytes] = []
        self.scores: list[float] = []
        for _ in range(vocab_size):
            score, n = struct.unpack_from("<fi", data, off)
            off += 8
            self.pieces.append(data[off : off + n])
            off += n
            self.scores.append(score)
        assert off == len(data), "tokenizer file has bytes left over"
        # run.c bsearches a sorted copy; with unique pieces that is an exact dict lookup.
        self.lookup = {p: i for i, p in enumerate(self.pieces)}
        assert len(self.lookup) == vocab_size, "duplicate pieces"

    def encode(self, text: str, bos: bool = True, eos: bool = False) -> list[int]:
        tokens = []
        if bos:
            tokens.append(BOS)
        if text != "":
            tokens.append(self.lookup[b" "])  # add_dummy_prefix
        for ch in text:  # one UTF-8 codepoint at a time
            b = ch.encode("utf-8")
            tid = self.lookup.get(b)
            if tid is not None:
                tokens.append(tid)
            else:
                tokens.extend(byte + 3 for byte in b)  # byte fallback
        while True:
            best_score, best_id, best_idx = -1e10, -1, -1
            for i in range(len(tokens) - 1):
                tid = self.lookup.get(self.pieces[tokens[i]] + self.pieces[tokens[i + 1]])
                if tid is not None and self.scores[tid] > best_score:
                    best_score, best_id, best_idx = self.scores[tid], tid, i
            if best_idx == -1:
                break
            tokens[best_idx : best_idx + 2] = [best_id]
        if eos:
            tokens.append(2)
        return tokens

    def decode_piece(self, prev: int, token: int) -> bytes:
        piece = self.pieces[token]
        if prev == BOS and piece[:1] == b" ":
            piece = piece[1:]
        m = re.match(rb"<0x([0-9A-Fa-f]{1,2})", piece)  # sscanf(piece, "<0x%02hhX>")
        if m:
            return bytes([int(m.group(1), 16)])
        return piece

    def decode(self, ids: list[int]) -> str:
        out = b"".join(self.decode_piece(ids[i - 1], ids[i]) for i in range(1, len(ids)))
        return out.decode("utf-8")

    def n_merge_pairs(self) -> int:
        n = 0
        for piece, score in zip(self.pieces, self.scores):
            if not score > -1e10:
                continue
            for k in range(1, len(piece)):
                if piece[:k] in self.lookup and piece[k:] in self.lookup:
                    n += 1
        return n


def wikitext_rows() -> list[str]:
    path = data_dir() / "wikitext2/wikitext2_raw_test.rows.jsonl"
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            rows.append(json.loads(line)["text"])
            if len(rows) == WIKI_ROWS:
                break
    return rows


def decode_cases(tok: RunCTokenizer) -> list[list[int]]:
    ids = tok.lookup
    return [
        tok.encode(STRINGS[0]),
        tok.encode("  two leading spaces"),
        tok.encode("emoji 😀 and 🐶"),
        tok.encode("line one\nline two"),
        [BOS, ids[b"he"], ids[b" was"], ids[b" happy"] if b" happy" in ids else ids[b" a"]],
        [BOS, ids[b" "], ids[b" the"], 0x0A + 3, ids[b" b"]],
        [BOS, 0xC3 + 3, 0xA9 + 3, ids[b" T"]],
    ]


def compare(label: str, got: list, want: list, inputs: list) -> None:
    bad = [(x, g, w) for x, g, w in zip(inputs, got, want) if g != w]
    status = "OK" if not bad else f"{len(bad)} MISMATCH(ES)"
    print(f"  {label}: {len(inputs) - len(bad)}/{len(inputs)} agree -> {status}")
    for x, g, w in bad[:5]:
        print(f"    input {x!r}\n      hf:    {g!r}\n      run.c: {w!r}")


def check_hf(hf_dir: Path, tok: RunCTokenizer, strings: list[str], wiki: list[str]) -> None:
    from transformers import AutoTokenizer, LlamaTokenizer
    from tokenizers import Tokenizer

    texts = strings + wiki
    want = [tok.encode(s) for s in texts]
    cases = decode_cases(tok)
    want_dec = [tok.decode(c) for c in cases]
    loaders = {
        "AutoTokenizer": lambda: AutoTokenizer.from_pretrained(hf_dir),
        "LlamaTokenizer (transformers' own class)": lambda: LlamaTokenizer.from_pretrained(hf_dir),
    }
    for name, load in loaders.items():
        print(f"{name} from {hf_dir}:")
        try:
            hf = load()
        except Exception as e:  # report, do not fail
            print(f"  could not load: {e!r}")
            continue
        print(f"  class {type(hf).__name__}")
        compare("encode goldens + wikitext", [hf(s)["input_ids"] for s in texts], want, texts)
        compare("decode", [hf.decode(c, skip_special_tokens=True) for c in cases], want_dec, cases)
        rt = [hf.decode(hf(s)["input_ids"], skip_special_tokens=True) for s in strings]
        compare("decode(encode(s)) == s", rt, strings, strings)
        print("  known differences (documented, informational):")
        for s in KNOWN_DIFFERENCES:
            print(f"    {s!r}: hf {hf(s)['input_ids']} run.c {tok.encode(s)}")
    raw = Tokenizer.from_file(str(hf_dir / "tokenizer.json"))
    print("tokenizers.Tokenizer.from_file(tokenizer.json):")
    compare("encode goldens + wikitext", [raw.encode(s).ids for s in texts], want, texts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hf", type=Path, help="checkpoint dir written by the Rust importer")
    ap.add_argument("--no-write", action="store_true", help="do not rewrite the golden file")
    args = ap.parse_args()

    model = models_dir() / "stories260K/stories260K.bin"
    tok_path = models_dir() / "stories260K/tok512.bin"
    header = struct.unpack("<7i", model.read_bytes()[:28])
    vocab_size = abs(header[5])
    tok = RunCTokenizer(tok_path, vocab_size)
    wiki = wikitext_rows()

    if not args.no_write:
        golden = {
            "generator": "scripts/golden/llama2c_tokenizer_goldens.py (port of llama2.c run.c encode/decode)",
            "tokenizer_sha256": hashlib.sha256(tok_path.read_bytes()).hexdigest(),
            "vocab_size": vocab_size,
            "n_merge_pairs": tok.n_merge_pairs(),
            "encode": [{"text": s, "ids": tok.encode(s)} for s in STRINGS],
            "wikitext_rows": WIKI_ROWS,
            "wikitext": [tok.encode(s) for s in wiki],
            "decode": [{"ids": c, "text": tok.decode(c)} for c in decode_cases(tok)],
        }
        # One record per line keeps the file small and its diffs readable.
        lines = ["{"]
        items = list(golden.items())
        for k, (key, val) in enumerate(items):
            end = "," if k + 1 < len(items) else ""
            if isinstance(val, list):
                body = ",\n    ".join(json.dumps(x, ensure_ascii=False, separators=(",", ":")) for x in val)
                lines.append(f'  "{key}": [\n    {body}\n  ]{end}')
            else:
                lines.append(f'  "{key}": {json.dumps(val, ensure_ascii=False)}{end}')
        lines.append("}")
        OUT.parent.mkdir(parents=True, exist_ok=True)
        OUT.write_text("\n".join(lines) + "\n", encoding="utf-8")
        json.loads(OUT.read_text(encoding="utf-8"))
        print(f"wrote {OUT.relative_to(ROOT)} ({OUT.stat().st_size} bytes)")

    if args.hf:
        check_hf(args.hf, tok, STRINGS, wiki)
    return None


if __name__ == "__main__":
    sys.exit(main())
