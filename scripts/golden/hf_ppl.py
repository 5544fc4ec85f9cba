#!/usr/bin/env python3
"""WikiText-2 perplexity with Hugging Face transformers, GPTQ style.

The test split (`$COME_DATA/wikitext2/wikitext2_raw_test.txt`, i.e. "\\n\\n".join(rows)) is
tokenised as ONE stream with the tokenizer's default special tokens (BOS at the start for
LLaMA tokenizers; SmolLM2's adds none), as GPTQ's `tokenizer(text)` does, and cut into n = len // seqlen
non-overlapping windows (the remainder is dropped). Each window is one forward pass from
its own start; it predicts its tokens 1..seqlen-1, so seqlen-1 predictions per window
(its first token is context only). As in the GPTQ code, ppl = exp(mean over windows of
the window's mean NLL); all windows have the same length, so this equals
exp(total NLL / (n * (seqlen - 1))).

Run:
  .venv/bin/python scripts/golden/hf_ppl.py --gguf PATH --seqlen 2048 [--max-windows N]
  .venv/bin/python scripts/golden/hf_ppl.py --model DIR --seqlen 2048
With neither --model nor --gguf the SmolLM2 GGUF under $COME_MODELS is used. The result
JSON goes to results/ (see --out); a .partial.json beside it lets --resume continue an
interrupted run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import hf_goldens as hg  # noqa: E402

DATA_REL = "wikitext2/wikitext2_raw_test.txt"


def default_data() -> Path:
    data = os.environ.get("COME_DATA")
    base = Path(data) if data else hg.ROOT.parent / "shared" / "data"
    return base / DATA_REL


def load_model_and_tokenizer(model_dir: Path | None, gguf: Path | None, attn: str):
    """(model, encode function, description of model and tokenizer)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if gguf is not None:
        tok = hg.smollm2_tokenizer(gguf)
        model = hg.load_gguf_model(gguf, attn)
        return (
            model,
            (lambda text: hg.encode(tok, text)),
            {
                "model": {"gguf": str(gguf), "sha256": hg.sha256_file(gguf)},
                "tokenizer": hg.TOKENIZER_DESCRIPTION,
            },
        )
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(
        str(model_dir), dtype=hg.DTYPE, attn_implementation=attn
    )
    model.eval()

    def enc(text: str) -> list[int]:
        # GPTQ-style perplexity code calls tokenizer(text): the tokenizer's default special
        # tokens apply (BOS at the start of the stream for LLaMA tokenizers).
        return tok(text)["input_ids"]

    return (
        model,
        enc,
        {
            "model": {"dir": str(model_dir)},
            "tokenizer": f"AutoTokenizer.from_pretrained(DIR) ({type(tok).__name__}), "
            "default special tokens",
        },
    )


@torch.no_grad()
def window_nll(model, window: torch.Tensor) -> float:
    """Summed NLL of tokens 1..T-1 of one window, each predicted from the tokens before it."""
    logits = model(input_ids=window[None], use_cache=False).logits[0].float()
    nll = torch.nn.functional.cross_entropy(logits[:-1], window[1:], reduction="sum")
    return float(nll.double())


def perplexity(
    model,
    ids: list[int],
    seqlen: int,
    max_windows: int | None = None,
    done: list[float] | None = None,
    on_window=None,
) -> dict:
    """GPTQ-style perplexity over non-overlapping windows; `done` holds the summed NLLs of
    windows already computed (resume), `on_window(list)` is called after each window."""
    if seqlen < 2:
        raise ValueError("seqlen must be at least 2")
    stream = torch.tensor(ids, dtype=torch.int64)
    available = stream.numel() // seqlen
    n = available if max_windows is None else min(available, max_windows)
    if n == 0:
        raise ValueError(f"{stream.numel()} tokens is less than one window of {seqlen}")
    sums = list(done or [])[:n]
    start = time.time()
    first = len(sums)
    for i in range(first, n):
        sums.append(window_nll(model, stream[i * seqlen : (i + 1) * seqlen]))
        if on_window is not None:
            on_window(sums)
        total = sum(sums)
        elapsed = time.time() - start
        eta = elapsed / (i + 1 - first) * (n - i - 1)
        print(
            f"window {i + 1}/{n}: mean nll {sums[-1] / (seqlen - 1):.4f}, running ppl "
            f"{math.exp(total / (len(sums) * (seqlen - 1))):.4f}, {elapsed:.0f}s, eta {eta:.0f}s",
            flush=True,
        )
    total = sum(sums)
    predicted = n * (seqlen - 1)
    return {
        "ppl": math.exp(total / predicted),
        "mean_nll": total / predicted,
        "total_nll": total,
        "n_windows": n,
        "n_windows_available": available,
        "n_tokens": int(stream.numel()),
        "n_predicted": predicted,
        "seqlen": seqlen,
        "window_nll_sums": sums,
    }


DEFINITION = (
    "stream = tokenize(file text, the tokenizer's default special tokens); n = len // seqlen windows "
    "stream[i*seqlen:(i+1)*seqlen] (remainder dropped; --max-windows keeps the first N); each "
    "window predicts its tokens 1..seqlen-1 from its own prefix (seqlen-1 predictions); "
    "ppl = exp(total_nll / (n*(seqlen-1))) = exp(mean of per-window mean NLL)"
)


def default_out(name: str, seqlen: int, max_windows: int | None) -> Path:
    stem = f"{name}_wikitext2_hf"
    if seqlen != 2048:
        stem += f"_s{seqlen}"
    if max_windows is not None:
        stem += f"_w{max_windows}"
    return hg.ROOT / "results" / f"{stem}.json"


def run(
    model_dir: Path | None,
    gguf: Path | None,
    seqlen: int,
    max_windows: int | None,
    out: Path | None,
    attn: str = hg.ATTN,
    data: Path | None = None,
    resume: bool = False,
    model=None,
    encode=None,
    described=None,
) -> dict:
    """Compute, print and write the perplexity JSON; reuses a loaded model if given."""
    t0 = time.time()
    data = data or default_data()
    text = data.read_text(encoding="utf-8")
    if model is None:
        model, encode, described = load_model_and_tokenizer(model_dir, gguf, attn)
    if gguf is not None:
        name = "smollm2" if "smollm2" in gguf.name.lower() else gguf.stem
    else:
        name = Path(model_dir).resolve().name
    out = out or default_out(name, seqlen, max_windows)
    t_tok = time.time()
    ids = encode(text)
    print(
        f"{data}: {len(text)} characters -> {len(ids)} tokens ({time.time() - t_tok:.1f}s)",
        flush=True,
    )

    partial = out.with_suffix(".partial.json")
    settings = {"seqlen": seqlen, "n_tokens": len(ids), "model": described["model"]}
    done = []
    if resume and partial.is_file():
        saved = json.loads(partial.read_text())
        if saved.get("settings") == settings:
            done = saved["window_nll_sums"]
            print(f"resuming after {len(done)} windows from {partial}", flush=True)

    def save_partial(sums):
        partial.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text(json.dumps({"settings": settings, "window_nll_sums": sums}))

    res = perplexity(model, ids, seqlen, max_windows, done, save_partial)
    result = {
        **{k: v for k, v in res.items() if k != "window_nll_sums"},
        "definition": DEFINITION,
        "data": {"file": str(data), "sha256": hg.sha256_file(data), "characters": len(text)},
        **described,
        "attn_implementation": attn,
        "dtype": "float32",
        "torch_threads": torch.get_num_threads(),
        "versions": hg.versions(),
        "generator": "scripts/golden/hf_ppl.py",
        "wall_time_s": round(time.time() - t0, 1),
        "window_nll_sums": res["window_nll_sums"],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    if partial.exists():
        partial.unlink()
    print(
        f"ppl {result['ppl']:.4f} over {result['n_windows']} windows of {seqlen} "
        f"({result['n_predicted']} predicted tokens); wrote {out}",
        flush=True,
    )
    return result


def add_ppl_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--seqlen", type=int, default=2048)
    ap.add_argument("--max-windows", type=int, default=None, help="only the first N windows")
    ap.add_argument(
        "--out",
        type=Path,
        default=None,
        help="result JSON (default results/<name>_wikitext2_hf[_sSEQ][_wN].json)",
    )
    ap.add_argument(
        "--data", type=Path, default=None, help=f"text file (default $COME_DATA/{DATA_REL})"
    )
    ap.add_argument("--resume", action="store_true", help="continue from OUT.partial.json")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--model", type=Path, help="Hugging Face checkpoint directory")
    src.add_argument("--gguf", type=Path, help="GGUF file (SmolLM2; default when no --model)")
    add_ppl_args(ap)
    ap.add_argument("--attn", default=hg.ATTN, choices=["eager", "sdpa"])
    ap.add_argument("--threads", type=int, default=hg.THREADS)
    args = ap.parse_args(argv)
    hg.setup_torch()
    torch.set_num_threads(args.threads)
    gguf = args.gguf
    if args.model is None and gguf is None:
        gguf = hg.default_gguf()
    for p in (gguf, args.model):
        if p is not None and not p.exists():
            print(f"error: {p}: no such file or directory", file=sys.stderr)
            return 2
    run(
        args.model, gguf, args.seqlen, args.max_windows, args.out, args.attn, args.data, args.resume
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
