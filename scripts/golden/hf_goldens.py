#!/usr/bin/env python3
"""Golden values from Hugging Face transformers for the Rust runtime tests.

Writes (paths relative to the project root):
  tests/golden/smollm2_hf.safetensors + .json   SmolLM2-135M loaded by transformers' own GGUF
                                                reader (independent of our importer)
  tests/fixtures/tiny-{qwen2,qwen3,llama3,mistral}/   random-init checkpoints (save_pretrained)
  tests/golden/tiny-<name>_hf.safetensors + .json     their logits and hidden states

Everything runs on the CPU in float32 with eager attention and 2 threads, seeds fixed.
See scripts/golden/README.md for the layout of the files and the conventions they follow.

Run: .venv/bin/python scripts/golden/hf_goldens.py [--only smollm2|tiny] [--gguf PATH]
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import platform
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
GGUF_REL = "smollm2-135m-instruct-q4_1/SmolLM2-135M-Instruct.Q4_1.gguf"
DTYPE = torch.float32
# Eager attention is the plain softmax(QK^T/sqrt(d) + mask) V that our runtime also
# computes; the SDPA kernel is checked against it below and the difference recorded.
ATTN = "eager"
THREADS = 2
SEED = 1234

PROMPTS = [
    "The capital of France is",
    "Once upon a time, there was a little",
    # About 60 tokens of plain English, so that rotary positions well past the short
    # prompts are covered.
    "The old lighthouse keeper climbed the narrow stairs every evening to light the lamp, "
    "and from the top he could see the fishing boats returning to the harbour while the "
    "gulls circled above the grey water and the wind carried the smell of salt and rain "
    "across the quiet little town.",
    "In 1789, 954 people stormed the Bastille; by 5:30 p.m. it had fallen!",
]
BOUNDARIES = [0, 1, 2, 15, 29, 30]
N_VOCAB_IDS = 1024
# The padded batches keep only a prefix of `vocab_ids` to stay within the size budget;
# the prefix holds every argmax id, so greedy decisions are still covered.
N_VOCAB_IDS_BATCH = 384
# Cases longer than this carry no hidden states (size budget: 2 MB for the whole file).
HIDDEN_MAX_TOKENS = 40
SMOLLM2_PAD_ID = 2  # tokenizer.ggml.padding_token_id


def setup_torch() -> None:
    torch.set_num_threads(THREADS)
    torch.manual_seed(SEED)
    np.random.seed(SEED)
    torch.use_deterministic_algorithms(True)


def versions() -> dict:
    import safetensors
    import tokenizers
    import transformers

    out = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "safetensors": safetensors.__version__,
        "numpy": np.__version__,
    }
    try:
        import gguf

        out["gguf"] = getattr(gguf, "__version__", None) or _dist_version("gguf")
    except ImportError:
        pass
    return out


def _dist_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def default_gguf() -> Path:
    models = os.environ.get("COME_MODELS")
    base = Path(models) if models else ROOT.parent / "shared" / "models"
    return base / GGUF_REL


# ---------------------------------------------------------------------------------------
# SmolLM2 from GGUF: tokenizer and model
# ---------------------------------------------------------------------------------------

TOKENIZER_DESCRIPTION = (
    "tokenizers.Tokenizer(BPE(vocab=tokenizer.ggml.tokens, merges=tokenizer.ggml.merges, "
    "unk_token=None, fuse_unk=False, byte_fallback=False)); normalizer None; pre_tokenizer "
    "Sequence[Digits(individual_digits=True), ByteLevel(add_prefix_space=False, "
    "trim_offsets=True, use_regex=True)]; decoder ByteLevel; tokens of token_type 3 "
    "(control) added as special tokens; encode(text, add_special_tokens=False): no BOS"
)


def _gguf_field(reader, key: str):
    field = reader.fields.get(key)
    if field is None:
        raise KeyError(f"GGUF metadata key {key!r} is missing")
    return field.contents()


def smollm2_tokenizer(gguf_path: Path):
    """The original SmolLM2 tokenizer (tokenizer.json of HuggingFaceTB/SmolLM2-*), rebuilt
    from the vocabulary and merges stored in the GGUF. transformers' GGUF tokenizer uses a
    plain ByteLevel pre-tokenizer and so does not isolate digits; this one does."""
    from gguf import GGUFReader
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    reader = GGUFReader(str(gguf_path))
    kind = _gguf_field(reader, "tokenizer.ggml.model")
    if kind != "gpt2":
        raise ValueError(f"{gguf_path}: tokenizer.ggml.model is {kind!r}, expected 'gpt2'")
    tokens = list(_gguf_field(reader, "tokenizer.ggml.tokens"))
    merges_raw = list(_gguf_field(reader, "tokenizer.ggml.merges"))
    types = list(_gguf_field(reader, "tokenizer.ggml.token_type"))
    vocab = {t: i for i, t in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise ValueError(f"{gguf_path}: duplicate tokens in tokenizer.ggml.tokens")
    merges = []
    for m in merges_raw:
        parts = m.split(" ")
        if len(parts) != 2:
            raise ValueError(f"{gguf_path}: merge {m!r} is not two symbols")
        merges.append((parts[0], parts[1]))
    tok = Tokenizer(
        models.BPE(vocab=vocab, merges=merges, unk_token=None, fuse_unk=False, byte_fallback=False)
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    special = [tokens[i] for i, t in enumerate(types) if int(t) == 3]
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in special])
    for s in special:
        if tok.token_to_id(s) != vocab[s]:
            raise ValueError(f"special token {s!r} changed id while being added")
    return tok


def encode(tok, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False).ids


def load_gguf_model(gguf_path: Path, attn: str = ATTN):
    """SmolLM2 dequantised and un-permuted by transformers itself (gguf package)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name, dtype=DTYPE, attn_implementation=attn
    )
    model.eval()
    return model


# ---------------------------------------------------------------------------------------
# Forward with taps
# ---------------------------------------------------------------------------------------


@torch.no_grad()
def forward_taps(model, input_ids, attention_mask=None, position_ids=None):
    """Logits plus the residual stream at every layer boundary and the final-norm output.

    Boundary 0 is the input of layer 0 (the embeddings), boundary l+1 the output of layer
    l; the last boundary is the output of the last layer BEFORE the final norm. Captured
    with hooks rather than `output_hidden_states`, whose last entry is the normed output.
    """
    inner = model.model
    layers = inner.layers
    taps: dict = {}

    def pre_hook(_module, args, kwargs):
        h = args[0] if args else kwargs["hidden_states"]
        taps[0] = h.detach().clone()

    def post_hook(index):
        def hook(_module, _args, output):
            h = output[0] if isinstance(output, tuple) else output
            taps[index] = h.detach().clone()

        return hook

    def norm_hook(_module, _args, output):
        taps["final_norm"] = output.detach().clone()

    handles = [layers[0].register_forward_pre_hook(pre_hook, with_kwargs=True)]
    handles += [layer.register_forward_hook(post_hook(i + 1)) for i, layer in enumerate(layers)]
    handles.append(inner.norm.register_forward_hook(norm_hook))
    try:
        out = model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=False,
        )
    finally:
        for h in handles:
            h.remove()

    def up(t):  # float32 at least; a float64 run stays float64
        return t if t.dtype == torch.float64 else t.float()

    hidden = [up(taps[i]) for i in range(len(layers) + 1)]
    return up(out.logits), hidden, up(taps["final_norm"])


@torch.no_grad()
def check_boundary_convention(model, input_ids) -> None:
    """Our hooks must agree with output_hidden_states except for its last entry."""
    _, hidden, final = forward_taps(model, input_ids)
    hs = model(input_ids=input_ids, output_hidden_states=True, use_cache=False).hidden_states
    n = len(hidden) - 1
    if len(hs) != n + 1:
        raise AssertionError(f"output_hidden_states has {len(hs)} entries, expected {n + 1}")
    for i in range(n):
        if not torch.equal(hs[i].float(), hidden[i]):
            raise AssertionError(f"boundary {i} differs from output_hidden_states[{i}]")
    if not torch.equal(hs[n].float(), final):
        raise AssertionError("output_hidden_states[-1] is not the final-norm output")


def pad_batch(seqs: list[list[int]], pad_id: int, side: str):
    """Pad to the longest sequence. Left padding also returns HF-generate-style positions:
    cumsum(mask) - 1, clamped at 0 (generate fills pad positions with 1; pads are masked
    either way, so only the real positions matter)."""
    t = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), t), pad_id, dtype=torch.int64)
    mask = torch.zeros((len(seqs), t), dtype=torch.int64)
    for b, s in enumerate(seqs):
        if side == "right":
            ids[b, : len(s)] = torch.tensor(s)
            mask[b, : len(s)] = 1
        else:
            ids[b, t - len(s) :] = torch.tensor(s)
            mask[b, t - len(s) :] = 1
    pos = None
    if side == "left":
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids, mask, pos


def valid_max_diff(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    m = mask.bool()
    return float((a[m] - b[m]).abs().max()) if m.any() else 0.0


def write_outputs(tensors: dict, meta: dict, st_path: Path) -> None:
    from safetensors.torch import save_file

    st_path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    save_file(tensors, str(st_path), metadata={"generator": "scripts/golden/hf_goldens.py"})
    json_path = st_path.with_suffix(".json")
    with open(json_path, "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")
    print(f"wrote {rel(st_path)} ({st_path.stat().st_size} bytes), {rel(json_path)}")


def rel(p: Path) -> str:
    try:
        return str(p.resolve().relative_to(ROOT))
    except ValueError:
        return str(p)


CONVENTIONS = {
    "boundary": "boundary 0 = input of layer 0 (token embeddings); boundary l+1 = output of "
    "decoder layer l (residual stream), before the final norm; `final_norm` = output of "
    "model.norm (what the LM head sees)",
    "compare": "only positions with attention_mask == 1 are meaningful; padded positions hold "
    "whatever transformers computed there",
    "padding_none": "batch 1, no attention_mask passed to the model, positions 0..T-1",
    "padding_right": "sequences left-aligned, pads at the end; attention_mask passed; no "
    "position_ids passed, so positions are 0..T-1 for every row (real tokens get 0..len-1)",
    "padding_left": "pads at the start; attention_mask passed; explicit position_ids = "
    "cumsum(attention_mask) - 1 clamped at 0, so real tokens get 0..len-1",
    "mask": "causal, keys with attention_mask 0 masked out; sliding window (if any): key k is "
    "visible from query q iff q - window < k <= q (absolute indices in the padded row)",
}


# ---------------------------------------------------------------------------------------
# SmolLM2 goldens
# ---------------------------------------------------------------------------------------


def smollm2_prompt_ids(gguf_path: Path) -> tuple[list[list[int]], list[str]]:
    """Prompt ids from the rebuilt tokenizer, and the prompts on which transformers' own
    GGUF tokenizer (no digit splitting) was checked to give the same ids."""
    import transformers

    tok = smollm2_tokenizer(gguf_path)
    prompt_ids = [encode(tok, p) for p in PROMPTS]
    for p, ids in zip(PROMPTS, prompt_ids, strict=True):
        print(f"  {len(ids):3d} tokens: {p[:60]!r}")
    if [tok.decode(ids) for ids in prompt_ids] != PROMPTS:
        raise AssertionError("tokenizer does not round-trip the prompts")
    hf_tok = transformers.AutoTokenizer.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name
    )
    checked = []
    for p, ids in zip(PROMPTS, prompt_ids, strict=True):
        if any(c.isdigit() for c in p):
            continue
        other = hf_tok(p, add_special_tokens=False).input_ids
        if other != ids:
            raise AssertionError(f"tokenizers disagree on {p!r}: {ids} vs {other}")
        checked.append(p)
    return prompt_ids, checked


def smollm2_cases(prompt_ids: list[list[int]]) -> list[dict]:
    cases = [
        {
            "name": f"single_{i}",
            "prompts": [i],
            "padding": "none",
            "ids": torch.tensor([ids]),
            "mask": torch.ones((1, len(ids)), dtype=torch.int64),
            "pos": None,
        }
        for i, ids in enumerate(prompt_ids)
    ]
    for side in ("right", "left"):
        ids, mask, pos = pad_batch(prompt_ids, SMOLLM2_PAD_ID, side)
        cases.append(
            {
                "name": f"{side}_padded",
                "prompts": list(range(len(prompt_ids))),
                "padding": side,
                "ids": ids,
                "mask": mask,
                "pos": pos,
            }
        )
    return cases


def run_case(model, c: dict):
    mask_arg = None if c["padding"] == "none" else c["mask"]
    return forward_taps(model, c["ids"], mask_arg, c["pos"])


def batch_vs_single(cases: list[dict], results: dict) -> dict:
    """Batched rows must reproduce the single-prompt logits at real positions."""
    out = {}
    for c in cases:
        if c["padding"] == "none":
            continue
        worst = 0.0
        for row, pi in enumerate(c["prompts"]):
            single = results[f"single_{pi}"][0][0]
            m = c["mask"][row].bool()
            worst = max(worst, float((results[c["name"]][0][row][m] - single).abs().max()))
        out[c["name"]] = worst
        print(f"  {c['name']}: max |logit - single-prompt logit| at real positions = {worst:.3g}")
    return out


def sdpa_vs_eager(model, cases: list[dict], results: dict) -> dict:
    model.set_attn_implementation("sdpa")
    out = {}
    for c in cases:
        logits, _, _ = run_case(model, c)
        out[c["name"]] = valid_max_diff(logits, results[c["name"]][0], c["mask"])
    model.set_attn_implementation(ATTN)
    print(f"  sdpa vs eager max |diff| per case: {out}")
    return out


def f64_noise(model, cases: list[dict], results: dict) -> dict:
    """The float32 rounding noise of the goldens, measured against the same model in
    float64: a correct float32 runtime is expected to land within a similar distance."""
    model.to(torch.float64)
    out = {}
    for c in cases:
        logits, hidden, final = run_case(model, c)
        ref_logits, ref_hidden, ref_final = results[c["name"]]
        m = c["mask"].bool()
        if not torch.isfinite(logits[m]).all():
            # transformers' float64 eager mask adds finfo(float64).min to the scores; pad
            # rows with no visible key overflow to -inf, softmax gives NaN there, and
            # 0 * NaN in the next layer's weights @ V spreads it to real positions. The
            # float32 path stays finite (finfo(float32).min + score does not overflow).
            out[c["name"]] = None
            print(f"  {c['name']}: float64 run is not finite (fully masked pad rows); skipped")
            continue
        noise = {"logits_max_abs": valid_max_diff(ref_logits.double(), logits, c["mask"])}
        for b in BOUNDARIES:
            d = (ref_hidden[b].double() - hidden[b])[m].abs().max()
            noise[f"hidden.{b}_max_abs"] = float(d)
            noise[f"hidden.{b}_max_abs_over_absmax"] = float(d / hidden[b][m].abs().max())
        noise["final_norm_max_abs"] = float((ref_final.double() - final)[m].abs().max())
        out[c["name"]] = noise
        print(f"  {c['name']}: f32 vs f64 max |logit diff| = {noise['logits_max_abs']:.3g}")
    model.to(DTYPE)
    return out


def choose_vocab_ids(cases: list[dict], results: dict, vocab_size: int) -> tuple[torch.Tensor, int]:
    """Every argmax id at a real position first (sorted), then a seeded sorted sample."""
    argmax_ids = set()
    for c in cases:
        am = results[c["name"]][0].argmax(-1)
        argmax_ids.update(am[c["mask"].bool()].tolist())
    argmax_sorted = sorted(argmax_ids)
    if len(argmax_sorted) > N_VOCAB_IDS_BATCH:
        raise AssertionError(f"{len(argmax_sorted)} argmax ids exceed the batch prefix")
    rest = np.setdiff1d(np.arange(vocab_size), np.array(argmax_sorted, dtype=np.int64))
    rng = np.random.default_rng(SEED)
    sample = np.sort(rng.choice(rest, size=N_VOCAB_IDS - len(argmax_sorted), replace=False))
    return torch.tensor(argmax_sorted + sample.tolist(), dtype=torch.int64), len(argmax_sorted)


def smollm2_goldens(gguf_path: Path, out_dir: Path) -> None:
    print(f"SmolLM2: loading {gguf_path} with transformers' GGUF reader")
    prompt_ids, tokenizer_crosscheck = smollm2_prompt_ids(gguf_path)
    model = load_gguf_model(gguf_path)
    cfg = model.config
    n_layers = cfg.num_hidden_layers
    if max(BOUNDARIES) > n_layers:
        raise AssertionError(f"model has {n_layers} layers; boundaries {BOUNDARIES}")
    check_boundary_convention(model, torch.tensor([prompt_ids[0]]))

    cases = smollm2_cases(prompt_ids)
    results = {c["name"]: run_case(model, c) for c in cases}
    consistency = batch_vs_single(cases, results)
    sdpa_diff = sdpa_vs_eager(model, cases, results)
    noise = f64_noise(model, cases, results)
    vocab_ids, n_argmax = choose_vocab_ids(cases, results, cfg.vocab_size)

    tensors = {"vocab_ids": vocab_ids}
    meta_cases = []
    for c in cases:
        name = c["name"]
        logits, hidden, final = results[name]
        batch, t = c["ids"].shape
        n_ids = N_VOCAB_IDS if c["padding"] == "none" else N_VOCAB_IDS_BATCH
        tensors[f"{name}.input_ids"] = c["ids"]
        tensors[f"{name}.attention_mask"] = c["mask"]
        if c["pos"] is not None:
            tensors[f"{name}.position_ids"] = c["pos"]
        tensors[f"{name}.logits"] = logits[:, :, vocab_ids[:n_ids]]
        tensors[f"{name}.logsumexp"] = torch.logsumexp(logits, dim=-1)
        tensors[f"{name}.argmax"] = logits.argmax(-1)
        with_hidden = batch * t <= HIDDEN_MAX_TOKENS
        if with_hidden:
            for b in BOUNDARIES:
                tensors[f"{name}.hidden.{b}"] = hidden[b]
            tensors[f"{name}.final_norm"] = final
        meta_cases.append(
            {
                "name": name,
                "prompts": c["prompts"],
                "batch": batch,
                "seq_len": t,
                "lengths": c["mask"].sum(-1).tolist(),
                "padding": c["padding"],
                "pad_id": None if c["padding"] == "none" else SMOLLM2_PAD_ID,
                "attention_mask_passed": c["padding"] != "none",
                "position_ids": "explicit" if c["pos"] is not None else "implicit 0..T-1",
                "n_vocab_ids": n_ids,
                "hidden_boundaries": BOUNDARIES if with_hidden else [],
                "has_final_norm": with_hidden,
                "tensors": sorted(k for k in tensors if k.startswith(name + ".")),
                "sdpa_max_abs_diff": sdpa_diff[name],
                "max_abs_diff_vs_single": consistency.get(name),
                "f32_vs_f64": noise[name],
            }
        )

    meta = {
        "generator": "scripts/golden/hf_goldens.py",
        "safetensors": "smollm2_hf.safetensors",
        "model": {
            "file": gguf_path.name,
            "sha256": sha256_file(gguf_path),
            "loaded_with": "AutoModelForCausalLM.from_pretrained(dir, gguf_file=name, "
            f"dtype=torch.float32, attn_implementation='{ATTN}')",
            "model_type": cfg.model_type,
            "num_hidden_layers": n_layers,
            "hidden_size": cfg.hidden_size,
            "vocab_size": cfg.vocab_size,
            "num_attention_heads": cfg.num_attention_heads,
            "num_key_value_heads": cfg.num_key_value_heads,
            "rms_norm_eps": cfg.rms_norm_eps,
            "rope_parameters": dict(cfg.rope_parameters),
            "tie_word_embeddings": cfg.tie_word_embeddings,
        },
        "versions": versions(),
        "dtype": "float32",
        "attn_implementation": ATTN,
        "torch_threads": THREADS,
        "seed": SEED,
        "tokenizer": {
            "construction": TOKENIZER_DESCRIPTION,
            "add_special_tokens": False,
            "agrees_with_transformers_gguf_tokenizer_on": tokenizer_crosscheck,
        },
        "prompts": [{"text": p, "ids": ids} for p, ids in zip(PROMPTS, prompt_ids, strict=True)],
        "boundaries": BOUNDARIES,
        "vocab_ids": {
            "tensor": "vocab_ids",
            "count": N_VOCAB_IDS,
            "n_argmax_prefix": n_argmax,
            "construction": "sorted argmax ids of all cases (real positions) first, then a "
            f"sorted sample without replacement from the other ids (numpy default_rng({SEED}))",
            "batch_prefix": N_VOCAB_IDS_BATCH,
        },
        "conventions": CONVENTIONS,
        "cases": meta_cases,
        "tensor_layout": {
            "vocab_ids": "int64 [S]",
            "<case>.input_ids": "int64 [B,T]",
            "<case>.attention_mask": "int64 [B,T]",
            "<case>.position_ids": "int64 [B,T] (left_padded only)",
            "<case>.logits": "f32 [B,T,n_vocab_ids]: logits[..., j] is the logit of vocab_ids[j]",
            "<case>.logsumexp": "f32 [B,T] over the full vocabulary",
            "<case>.argmax": "int64 [B,T] over the full vocabulary",
            "<case>.hidden.<b>": "f32 [B,T,H] residual stream at boundary b",
            "<case>.final_norm": "f32 [B,T,H]",
        },
    }
    write_outputs(tensors, meta, out_dir / "smollm2_hf.safetensors")


# ---------------------------------------------------------------------------------------
# Tiny random checkpoints
# ---------------------------------------------------------------------------------------

TINY_T = 20
TINY_T2 = 13
TINY_PAD_ID = 0
FIXTURE_LIMIT = 500 * 1024


def tiny_specs():
    from transformers import LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

    common = dict(
        vocab_size=256,
        hidden_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        hidden_act="silu",
        bos_token_id=1,
        eos_token_id=2,
    )
    return [
        {
            "name": "tiny-qwen2",
            "why": "q/k/v biases, untied LM head",
            "config": Qwen2Config(
                **common,
                intermediate_size=128,
                num_hidden_layers=2,
                max_position_embeddings=128,
                rope_theta=10000.0,
                rms_norm_eps=1e-6,
                tie_word_embeddings=False,
                use_sliding_window=False,
            ),
            "storage": torch.float32,
            "shard": None,
            "config_style": "legacy",
            "seed": 11,
        },
        {
            "name": "tiny-qwen3",
            "why": "per-head q_norm/k_norm, head_dim 32 with 4 heads != hidden 64, bf16 "
            "storage, rope_theta only inside rope_parameters",
            "config": Qwen3Config(
                **common,
                head_dim=32,
                intermediate_size=128,
                num_hidden_layers=3,
                max_position_embeddings=128,
                rope_theta=1000000.0,
                rms_norm_eps=1e-6,
                attention_bias=False,
                tie_word_embeddings=True,
                use_sliding_window=False,
            ),
            "storage": torch.bfloat16,
            "shard": None,
            "config_style": "transformers-5",
            "seed": 12,
        },
        {
            "name": "tiny-llama3",
            "why": "llama3 rope scaling (theta 500 puts 1 frequency in the unscaled band, 2 in "
            "the smooth band, 5 in the scaled band), GQA, tied embeddings, intermediate 96",
            "config": LlamaConfig(
                **common,
                intermediate_size=96,
                num_hidden_layers=3,
                max_position_embeddings=256,
                rope_theta=500.0,
                rope_scaling={
                    "rope_type": "llama3",
                    "factor": 8.0,
                    "low_freq_factor": 1.0,
                    "high_freq_factor": 4.0,
                    "original_max_position_embeddings": 32,
                },
                rms_norm_eps=1e-5,
                tie_word_embeddings=True,
            ),
            "storage": torch.float32,
            "shard": None,
            "config_style": "legacy",
            "seed": 13,
        },
        {
            "name": "tiny-mistral",
            "why": "sliding window 8 (matters on 20 tokens), untied, sharded safetensors",
            "config": MistralConfig(
                **common,
                head_dim=16,
                intermediate_size=128,
                num_hidden_layers=2,
                max_position_embeddings=256,
                rope_theta=1000000.0,
                rms_norm_eps=1e-5,
                sliding_window=8,
                tie_word_embeddings=False,
            ),
            "storage": torch.float32,
            "shard": "100KB",
            "config_style": "legacy",
            "seed": 14,
        },
    ]


@torch.no_grad()
def perturb_init(model, seed: int) -> None:
    """Weights large enough that every part changes the logits visibly: embeddings and
    linear weights N(0, 1/hidden) and N(0, 1/fan_in) (logits of order 1, tied or not),
    biases N(0, 0.5^2), every RMSNorm weight
    (input, post-attention, final, q_norm, k_norm) N(1, 0.1^2), so that a loader which
    ignores a norm or a bias fails."""
    g = torch.Generator().manual_seed(seed)
    for name, p in sorted(model.named_parameters()):
        if name.endswith("norm.weight"):
            p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
        elif name.endswith(".bias"):
            p.copy_(0.5 * torch.randn(p.shape, generator=g))
        elif "embed_tokens" in name:
            p.copy_(torch.randn(p.shape, generator=g) / p.shape[1] ** 0.5)
        elif p.dim() == 2:
            p.copy_(torch.randn(p.shape, generator=g) / p.shape[1] ** 0.5)
        else:
            raise AssertionError(f"unexpected parameter {name} {tuple(p.shape)}")


def legacy_config(path: Path) -> None:
    """Rewrite config.json the way transformers 4.x and most Hub checkpoints write it:
    `rope_theta` (and `rope_scaling`) at the top level instead of `rope_parameters`, no
    `layer_types`, `torch_dtype` instead of `dtype`."""
    cfg = json.loads(path.read_text())
    rp = cfg.pop("rope_parameters")
    cfg["rope_theta"] = rp["rope_theta"]
    scaling = {k: v for k, v in rp.items() if k != "rope_theta"}
    cfg["rope_scaling"] = None if scaling.get("rope_type") == "default" else scaling
    cfg.pop("layer_types", None)
    if "dtype" in cfg:
        cfg["torch_dtype"] = cfg.pop("dtype")
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def tiny_inputs(seed: int):
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(0, 256, (TINY_T,), generator=g).tolist()
    b = torch.randint(0, 256, (TINY_T2,), generator=g).tolist()
    return a, b


def write_fixture(spec: dict, fixtures_dir: Path) -> Path:
    """Random-init model saved with save_pretrained; reloaded and checked bit for bit."""
    from transformers import AutoConfig, AutoModelForCausalLM

    name, cfg = spec["name"], spec["config"]
    torch.manual_seed(spec["seed"])
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32, attn_implementation=ATTN)
    perturb_init(model, spec["seed"])
    model.eval()
    model = model.to(spec["storage"])
    # What the file will hold, as f32 (Module.to works in place, so copy the tensors).
    ref_sd = {k: v.detach().to(torch.float32).clone() for k, v in model.state_dict().items()}

    out = fixtures_dir / name
    if out.exists():
        shutil.rmtree(out)
    kwargs = {"max_shard_size": spec["shard"]} if spec["shard"] else {}
    model.save_pretrained(str(out), **kwargs)
    if spec["config_style"] == "legacy":
        legacy_config(out / "config.json")
    total = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    if total > FIXTURE_LIMIT:
        raise AssertionError(f"{name}: {total} bytes exceeds the fixture limit")
    sharded = (out / "model.safetensors.index.json").exists()
    if bool(spec["shard"]) != sharded:
        raise AssertionError(f"{name}: sharding is {sharded}, expected {bool(spec['shard'])}")

    if dict(AutoConfig.from_pretrained(str(out)).rope_parameters) != dict(cfg.rope_parameters):
        raise AssertionError(f"{name}: rope parameters changed on reload")
    loaded = AutoModelForCausalLM.from_pretrained(
        str(out), dtype=torch.float32, attn_implementation=ATTN
    )
    for k, v in loaded.state_dict().items():
        if not torch.equal(v, ref_sd[k]):
            raise AssertionError(f"{name}: {k} changed on save/reload")
    return out


def tiny_cases(seed: int) -> list[dict]:
    a, b = tiny_inputs(seed)
    cases = [
        {
            "name": "single",
            "padding": "none",
            "ids": torch.tensor([a]),
            "pos": None,
            "mask": torch.ones((1, TINY_T), dtype=torch.int64),
        },
    ]
    for side in ("right", "left"):
        ids, mask, pos = pad_batch([a, b], TINY_PAD_ID, side)
        cases.append(
            {"name": f"{side}_padded", "padding": side, "ids": ids, "mask": mask, "pos": pos}
        )
    return cases


def tiny_model(spec: dict, fixtures_dir: Path, golden_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    name = spec["name"]
    out = write_fixture(spec, fixtures_dir)
    files = sorted(p for p in out.iterdir() if p.is_file())
    total = sum(p.stat().st_size for p in files)
    # Goldens come from the checkpoint as transformers reads it back, upcast to f32.
    loaded = AutoModelForCausalLM.from_pretrained(
        str(out), dtype=torch.float32, attn_implementation=ATTN
    )
    loaded.eval()
    cases = tiny_cases(spec["seed"] + 100)

    check_boundary_convention(loaded, cases[0]["ids"])
    n_layers = loaded.config.num_hidden_layers
    tensors = {}
    meta_cases = []
    results = {}
    for c in cases:
        logits, hidden, final = run_case(loaded, c)
        results[c["name"]] = logits
        tensors[f"{c['name']}.input_ids"] = c["ids"]
        tensors[f"{c['name']}.attention_mask"] = c["mask"]
        if c["pos"] is not None:
            tensors[f"{c['name']}.position_ids"] = c["pos"]
        tensors[f"{c['name']}.logits"] = logits
        for i, h in enumerate(hidden):
            tensors[f"{c['name']}.hidden.{i}"] = h
        tensors[f"{c['name']}.final_norm"] = final
        meta_cases.append(
            {
                "name": c["name"],
                "batch": c["ids"].shape[0],
                "seq_len": c["ids"].shape[1],
                "lengths": c["mask"].sum(-1).tolist(),
                "padding": c["padding"],
                "pad_id": None if c["padding"] == "none" else TINY_PAD_ID,
                "attention_mask_passed": c["padding"] != "none",
                "position_ids": "explicit" if c["pos"] is not None else "implicit 0..T-1",
                "hidden_boundaries": list(range(n_layers + 1)),
                "has_final_norm": True,
                "tensors": sorted(k for k in tensors if k.startswith(c["name"] + ".")),
            }
        )

    # Row 0 of both batches is the single input; row 1 must agree between the batches.
    single = results["single"][0]
    for c in cases[1:]:
        d0 = float((results[c["name"]][0] - single).abs().max())
        print(f"  {name} {c['name']}: row 0 vs single max |diff| = {d0:.3g}")
    r = results["right_padded"][1][:TINY_T2]
    left = results["left_padded"][1][TINY_T - TINY_T2 :]
    print(
        f"  {name}: short row right vs left padded max |diff| = {float((r - left).abs().max()):.3g}"
    )
    sensitivity = check_sensitivity(spec, loaded, cases[0]["ids"], single)

    # Float32 noise of these goldens against the same checkpoint in float64 (null where
    # float64 eager is not finite: fully masked left-pad rows, see smollm2_goldens).
    loaded.to(torch.float64)
    for c, mc in zip(cases, meta_cases, strict=True):
        l64, _, _ = run_case(loaded, c)
        m = c["mask"].bool()
        finite = bool(torch.isfinite(l64[m]).all())
        mc["f32_vs_f64_logits_max_abs"] = (
            valid_max_diff(results[c["name"]].double(), l64, c["mask"]) if finite else None
        )
    loaded.to(torch.float32)

    lc = loaded.config
    meta = {
        "generator": "scripts/golden/hf_goldens.py",
        "safetensors": f"{name}_hf.safetensors",
        "fixture": rel(out),
        "purpose": spec["why"],
        "files": [
            {"name": p.name, "bytes": p.stat().st_size, "sha256": sha256_file(p)} for p in files
        ],
        "storage_dtype": str(spec["storage"]).replace("torch.", ""),
        "sharded": (out / "model.safetensors.index.json").exists(),
        "config_style": spec["config_style"],
        "config_style_note": "legacy = rope_theta/rope_scaling at the top level of config.json "
        "(transformers 4.x, most Hub checkpoints); transformers-5 = rope_parameters "
        "{rope_type, rope_theta, ...} as save_pretrained writes it now",
        "model_type": lc.model_type,
        "config": {
            "num_hidden_layers": n_layers,
            "hidden_size": lc.hidden_size,
            "intermediate_size": lc.intermediate_size,
            "num_attention_heads": lc.num_attention_heads,
            "num_key_value_heads": lc.num_key_value_heads,
            "head_dim": getattr(lc, "head_dim", None) or lc.hidden_size // lc.num_attention_heads,
            "vocab_size": lc.vocab_size,
            "rms_norm_eps": lc.rms_norm_eps,
            "rope_parameters": dict(lc.rope_parameters),
            "tie_word_embeddings": lc.tie_word_embeddings,
            "sliding_window": getattr(lc, "sliding_window", None),
        },
        "init": {
            "seed": spec["seed"],
            "description": "embeddings N(0,1/hidden), linear weights N(0,1/fan_in), biases "
            "N(0,0.25), RMSNorm weights N(1,0.01)",
        },
        "inputs_seed": spec["seed"] + 100,
        "sensitivity": {
            "note": "max |logit diff| on the single case when a feature is switched off; "
            "a runtime that ignores the feature misses by about this much",
            **sensitivity,
        },
        "versions": versions(),
        "dtype": "float32 (weights upcast after loading)",
        "attn_implementation": ATTN,
        "torch_threads": THREADS,
        "conventions": CONVENTIONS,
        "cases": meta_cases,
        "tensor_layout": {
            "<case>.input_ids": "int64 [B,T]",
            "<case>.attention_mask": "int64 [B,T]",
            "<case>.position_ids": "int64 [B,T] (left_padded only)",
            "<case>.logits": "f32 [B,T,V], full vocabulary",
            "<case>.hidden.<b>": "f32 [B,T,H] for b = 0..num_hidden_layers",
            "<case>.final_norm": "f32 [B,T,H]",
        },
    }
    write_outputs(tensors, meta, golden_dir / f"{name}_hf.safetensors")
    print(f"  fixture {rel(out)}: {total} bytes in {len(files)} files")


@torch.no_grad()
def check_sensitivity(spec: dict, loaded, ids, single) -> dict:
    """Each fixture's special feature must change the logits visibly, so that a runtime
    that ignores it fails the test: the sliding window, the llama3 rope scaling, a
    rope_theta that differs from the common default of 10000, the norm weights and the
    biases."""
    from transformers import AutoModelForCausalLM

    variants = []
    cfg = loaded.config
    sd = loaded.state_dict()
    for suffix in ("norm.weight", "q_norm.weight", ".bias"):
        keys = [k for k in sd if k.endswith(suffix)]
        if keys:
            fill = 0.0 if suffix == ".bias" else 1.0
            variants.append(
                (f"with every *{suffix} reset to {fill:g}", {}, {k: fill for k in keys})
            )
    if getattr(cfg, "sliding_window", None):
        variants.append(("without the sliding window", {"sliding_window": None}, {}))
    rp = dict(cfg.rope_parameters)
    if rp.get("rope_type") != "default":
        variants.append(
            (
                "with plain rope",
                {"rope_parameters": {"rope_type": "default", "rope_theta": rp["rope_theta"]}},
                {},
            )
        )
    if rp["rope_theta"] != 10000.0:
        variants.append(
            ("with rope_theta 10000", {"rope_parameters": {**rp, "rope_theta": 10000.0}}, {})
        )
    found = {}
    for what, change, fills in variants:
        alt_cfg = copy.deepcopy(cfg)
        for k, v in change.items():
            setattr(alt_cfg, k, v)
        alt = AutoModelForCausalLM.from_config(
            alt_cfg, dtype=torch.float32, attn_implementation=ATTN
        )
        alt.load_state_dict(sd)
        for k, fill in fills.items():
            alt.state_dict()[k].fill_(fill)
        alt.eval()
        logits = alt(input_ids=ids, use_cache=False).logits[0]
        d = float((logits - single).abs().max())
        print(f"  {spec['name']}: logits {what} differ by up to {d:.3g}")
        found[what] = d
        if d < 1e-2:
            raise AssertionError(f"{spec['name']}: no visible effect {what}")
    return found


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--gguf",
        type=Path,
        default=None,
        help="SmolLM2 GGUF (default: $COME_MODELS/" + GGUF_REL + ")",
    )
    ap.add_argument("--only", choices=["smollm2", "tiny"], default=None)
    ap.add_argument("--golden-dir", type=Path, default=ROOT / "tests" / "golden")
    ap.add_argument("--fixtures-dir", type=Path, default=ROOT / "tests" / "fixtures")
    args = ap.parse_args(argv)
    setup_torch()
    if args.only in (None, "smollm2"):
        gguf_path = args.gguf or default_gguf()
        if not gguf_path.is_file():
            print(
                f"error: {gguf_path}: no such file (set COME_MODELS or pass --gguf)",
                file=sys.stderr,
            )
            return 2
        smollm2_goldens(gguf_path, args.golden_dir)
    if args.only in (None, "tiny"):
        for spec in tiny_specs():
            print(f"{spec['name']}:")
            tiny_model(spec, args.fixtures_dir, args.golden_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
