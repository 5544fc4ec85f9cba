#!/usr/bin/env python3
"""Check that a checkpoint directory written by our Rust tool is a valid Hugging Face
checkpoint: transformers loads it, its tokenizer works, and (with --gguf) its logits
match the model that transformers reads from the original GGUF.

Run:
  .venv/bin/python scripts/golden/hf_roundtrip.py DIR [--gguf PATH] [--tol 1e-4]
        [--ppl --seqlen 2048 [--max-windows N]]

Prints the config transformers sees, the golden prompts' ids and next-token choices, the
largest logit difference against the GGUF model (with --gguf; also the tensors that
differ most), a greedy continuation of "The capital of France is" and, when the model
has a BOS token, a greedy continuation from BOS alone (how stories260K is sampled).
Exits 1 when the largest logit difference exceeds --tol or when the directory's tokenizer
gives other ids than the original SmolLM2 tokenizer; 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import hf_goldens as hg  # noqa: E402
import hf_ppl  # noqa: E402

CONTINUE_PROMPT = "The capital of France is"


def load_dir_tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    # transformers 5 builds an empty tokenizer for some model types when no files exist.
    names = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
    if not any((model_dir / n).is_file() for n in names):
        print(f"no tokenizer files in {model_dir}")
        return None
    try:
        tok = AutoTokenizer.from_pretrained(str(model_dir))
        if not tok("The capital of France is")["input_ids"]:
            print(f"the tokenizer in {model_dir} encodes text to nothing; not used")
            return None
        return tok
    except Exception as e:  # a checkpoint without tokenizer files is still a checkpoint
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        print(f"no usable tokenizer in {model_dir}: {type(e).__name__}: {first}")
        return None


@torch.no_grad()
def greedy(model, ids: list[int], n: int, eos: list[int]) -> list[int]:
    out = model.generate(
        torch.tensor([ids]),
        attention_mask=torch.ones((1, len(ids)), dtype=torch.int64),
        max_new_tokens=n,
        do_sample=False,
        pad_token_id=eos[0] if eos else 0,
    )
    return out[0, len(ids) :].tolist()


def eos_ids(config) -> list[int]:
    e = config.eos_token_id
    if e is None:
        return []
    return list(e) if isinstance(e, (list, tuple)) else [e]


@torch.no_grad()
def compare_weights(a, b, top: int = 5) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    diffs = []
    for k, v in sa.items():
        if k not in sb:
            print(f"  tensor {k} is missing from the GGUF model")
            continue
        if sb[k].shape != v.shape:
            print(f"  tensor {k}: shape {tuple(v.shape)} vs {tuple(sb[k].shape)}")
            continue
        diffs.append((float((v.float() - sb[k].float()).abs().max()), k))
    for k in sb:
        if k not in sa:
            print(f"  tensor {k} is missing from the directory's model")
    diffs.sort(reverse=True)
    n_diff = sum(1 for d, _ in diffs if d > 0)
    print(f"  weights: {n_diff} of {len(diffs)} tensors differ from the GGUF model")
    for d, k in diffs[:top]:
        if d > 0:
            print(f"    {k}: max |diff| {d:.3g}")


def main(argv=None) -> int:
    from transformers import AutoConfig, AutoModelForCausalLM

    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("dir", type=Path, help="checkpoint directory (config.json + safetensors)")
    ap.add_argument("--gguf", type=Path, default=None, help="compare logits with this GGUF")
    ap.add_argument("--tol", type=float, default=1e-4, help="largest allowed |logit diff|")
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--ppl", action="store_true", help="also WikiText-2 perplexity of DIR")
    hf_ppl.add_ppl_args(ap)
    args = ap.parse_args(argv)
    hg.setup_torch()
    if not (args.dir / "config.json").is_file():
        print(f"error: {args.dir}: no config.json", file=sys.stderr)
        return 2
    if args.gguf is not None and not args.gguf.is_file():
        print(f"error: {args.gguf}: no such file", file=sys.stderr)
        return 2

    config = AutoConfig.from_pretrained(str(args.dir))
    print(f"config transformers sees for {args.dir}:")
    print(config.to_json_string(use_diff=False))
    model = AutoModelForCausalLM.from_pretrained(
        str(args.dir), dtype=hg.DTYPE, attn_implementation=hg.ATTN
    )
    model.eval()
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"loaded {type(model).__name__}: {n_params} parameters, "
        f"{model.config.num_hidden_layers} layers"
    )

    tok = load_dir_tokenizer(args.dir)
    failed = False
    ref_tok = hg.smollm2_tokenizer(args.gguf) if args.gguf is not None else None
    if tok is not None:

        def encode(text: str) -> list[int]:
            return tok(text)["input_ids"]

        def decode(ids: list[int]) -> str:
            return tok.decode(ids)
    elif ref_tok is not None:
        print("using the tokenizer rebuilt from the GGUF instead")

        def encode(text: str) -> list[int]:
            return hg.encode(ref_tok, text)

        def decode(ids: list[int]) -> str:
            return ref_tok.decode(ids)
    else:
        encode = None

        def decode(ids: list[int]) -> str:
            return str(ids)

    prompts = []
    if encode is not None:
        for p in hg.PROMPTS:
            ids = encode(p)
            prompts.append((p, ids))
            print(f"{len(ids):3d} ids for {p[:50]!r}: {ids[:12]}{' ...' if len(ids) > 12 else ''}")
            if ref_tok is not None:
                want = hg.encode(ref_tok, p)
                if ids != want:
                    print(f"  MISMATCH: the original SmolLM2 tokenizer gives {want}")
                    failed = True
    else:
        g = torch.Generator().manual_seed(hg.SEED)
        ids = torch.randint(0, config.vocab_size, (20,), generator=g).tolist()
        prompts.append(("<20 random ids>", ids))
        print(f"no tokenizer: using 20 random ids {ids}")

    gguf_model = None
    if args.gguf is not None:
        gguf_model = hg.load_gguf_model(args.gguf)
        if gguf_model.config.num_hidden_layers != model.config.num_hidden_layers:
            print(
                f"error: {args.dir} has {model.config.num_hidden_layers} layers, the GGUF "
                f"{gguf_model.config.num_hidden_layers}: nothing to compare",
                file=sys.stderr,
            )
            return 2

    worst = 0.0
    for text, ids in prompts:
        x = torch.tensor([ids])
        with torch.no_grad():
            logits = model(input_ids=x, use_cache=False).logits[0].float()
        nxt = int(logits[-1].argmax())
        line = f"{text[:40]!r}: next token {nxt} {decode([nxt])!r}"
        if gguf_model is not None:
            with torch.no_grad():
                ref = gguf_model(input_ids=x, use_cache=False).logits[0].float()
            d = float((logits - ref).abs().max())
            worst = max(worst, d)
            line += f", max |logit diff| vs GGUF {d:.3g}"
        print(line)
    if gguf_model is not None:
        print(f"largest |logit diff| vs GGUF: {worst:.3g} (tolerance {args.tol:g})")
        if worst > args.tol:
            failed = True
            compare_weights(model, gguf_model)
        del gguf_model

    eos = eos_ids(model.config)
    if encode is not None:
        ids = encode(CONTINUE_PROMPT)
        cont = greedy(model, ids, args.max_new_tokens, eos)
        print(f"greedy: {CONTINUE_PROMPT!r} -> {decode(cont)!r}")
    bos = model.config.bos_token_id
    if bos is not None:
        cont = greedy(model, [bos], max(args.max_new_tokens, 48), eos)
        print(f"greedy from BOS ({bos}): {decode(cont)!r}")

    if args.ppl:
        if encode is None:
            print("error: --ppl needs a tokenizer", file=sys.stderr)
            return 2
        if tok is not None:

            def encode_plain(text: str) -> list[int]:
                # The tokenizer's defaults, as GPTQ-style perplexity code and come-repro do.
                return tok(text)["input_ids"]

            tok_desc = "AutoTokenizer.from_pretrained(DIR), default special tokens"
        else:

            def encode_plain(text: str) -> list[int]:
                return hg.encode(ref_tok, text)

            tok_desc = hg.TOKENIZER_DESCRIPTION
        hf_ppl.run(
            args.dir,
            None,
            args.seqlen,
            args.max_windows,
            args.out,
            hg.ATTN,
            args.data,
            args.resume,
            model=model,
            encode=encode_plain,
            described={"model": {"dir": str(args.dir)}, "tokenizer": tok_desc},
        )
    if failed:
        print("FAILED", file=sys.stderr)
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
