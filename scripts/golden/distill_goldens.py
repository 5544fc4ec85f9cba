#!/usr/bin/env python3
"""Golden values for layer-local distillation: a few AdamW steps on one LLaMA decoder layer.

A student layer (transformers' `LlamaDecoderLayer`, eager attention, float32, every
parameter trainable) is trained so that its output on hidden states X matches target
hidden states Y, with gradient accumulation, warmup + cosine learning rate, optional
global-norm clipping and one of four losses (mse, cosine, kl_hidden, kl_logits). The
per-step losses, learning rates, pre-clip gradient norms and the final weights are
recorded for the Rust trainer to reproduce.

Writes (paths relative to the project root):
  tests/golden/distill_layer.safetensors + .json

Cases: `tiny` (a random 64-wide layer; every weight stored) and `smollm2` (layer 10 of
SmolLM2-135M from the GGUF, trained towards the output of layer 11; samples of the final
weights stored). CPU, float32, 2 threads, deterministic algorithms, fixed seeds; every run
is repeated in float64 to measure the float32 noise. See scripts/golden/README.md.

Run: .venv/bin/python scripts/golden/distill_goldens.py [--gguf PATH] [--data PATH]
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import hf_goldens as hg  # noqa: E402

GENERATOR = "scripts/golden/distill_goldens.py"
OUT_NAME = "distill_layer.safetensors"
DATA_REL = "wikitext2/wikitext2_raw_test.rows.jsonl"
SIZE_LIMIT = 1536 * 1024

LOSSES = ["mse", "cosine", "kl_hidden", "kl_logits"]
TEMPERATURE = 2.0
BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
COS_EPS = 1e-8
CLIP_EPS = 1e-6  # torch: grad *= min(1, max_norm / (total_norm + 1e-6))
N_SAMPLE = 512

# HF parameter names of a LLaMA decoder layer, in the order used everywhere below.
PARAM_NAMES = [
    "input_layernorm.weight",
    "self_attn.q_proj.weight",
    "self_attn.k_proj.weight",
    "self_attn.v_proj.weight",
    "self_attn.o_proj.weight",
    "post_attention_layernorm.weight",
    "mlp.gate_proj.weight",
    "mlp.up_proj.weight",
    "mlp.down_proj.weight",
]

TINY_SEED = 4321
TINY_CONFIG = {
    "hidden_size": 64,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "intermediate_size": 128,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
    "vocab_size": 256,
    "max_position_embeddings": 128,
    "hidden_act": "silu",
    "attention_bias": False,
    "mlp_bias": False,
}
TINY_N, TINY_T = 3, 16
TINY_LINEAR_STD = 0.05
TINY_NORM_STD = 0.1
TINY_LM_HEAD_STD = 0.25
TINY_R_SCALE = 0.2
TINY_HP = {
    "steps": 6,
    "micro_batch": 1,
    "accum": 2,
    "lr": 1e-3,
    "min_lr": 1e-4,
    "warmup_frac": 0.34,
    "weight_decay": 0.01,
    "clip": {"mse": 0.05, "cosine": None, "kl_hidden": None, "kl_logits": 0.12},
}

SMOL_LAYER = 10  # student: original layer 10
SMOL_LAST = 11  # target: output of layer 11 (a merged pair 10+11)
SMOL_N, SMOL_T = 2, 32
SMOL_HP = {
    "steps": 4,
    "micro_batch": 1,
    "accum": 2,
    "lr": 5e-4,
    "min_lr": 5e-5,
    "warmup_frac": 0.25,
    "weight_decay": 1e-3,
    "clip": {"mse": 1.0, "cosine": None, "kl_hidden": None, "kl_logits": 1.0},
}


def default_data() -> Path:
    data = os.environ.get("COME_DATA")
    base = Path(data) if data else hg.ROOT.parent / "shared" / "data"
    return base / DATA_REL


# ---------------------------------------------------------------------------------------
# The procedure
# ---------------------------------------------------------------------------------------


def warmup_steps(hp: dict) -> int:
    return math.floor(hp["warmup_frac"] * hp["steps"])


def lr_at(step: int, hp: dict) -> float:
    total, w = hp["steps"], warmup_steps(hp)
    if step < w:
        return hp["lr"] * (step + 1) / w
    p = (step - w) / max(1, total - w)
    return hp["min_lr"] + (hp["lr"] - hp["min_lr"]) * 0.5 * (1.0 + math.cos(math.pi * p))


def micro_batch_indices(step: int, m: int, hp: dict, n: int) -> list[int]:
    start = (step * hp["accum"] + m) * hp["micro_batch"]
    return [k % n for k in range(start, start + hp["micro_batch"])]


def causal_mask(t: int, dtype: torch.dtype) -> torch.Tensor:
    """Additive causal mask [1, 1, T, T]: 0 on and below the diagonal, finfo.min above, as
    transformers' eager mask."""
    above = torch.ones(t, t, dtype=torch.bool).triu(1)
    mask = torch.zeros(t, t, dtype=dtype).masked_fill(above, torch.finfo(dtype).min)
    return mask[None, None]


class LayerRunner:
    """Runs a decoder layer on [B, T, H] with positions 0..T-1 and a causal mask."""

    def __init__(self, config, t: int, dtype: torch.dtype):
        from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

        rope = LlamaRotaryEmbedding(config)
        pos = torch.arange(t)[None]
        probe = torch.zeros(1, t, 1, dtype=dtype)
        with torch.no_grad():
            self.cos, self.sin = rope(probe, pos)
        self.pos = pos
        self.mask = causal_mask(t, dtype)

    def __call__(self, layer, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        out = layer(
            x,
            attention_mask=self.mask,
            position_ids=self.pos.expand(b, -1),
            position_embeddings=(self.cos.expand(b, -1, -1), self.sin.expand(b, -1, -1)),
        )
        return out[0] if isinstance(out, tuple) else out


def kl_temperature(student: torch.Tensor, teacher: torch.Tensor, t: float) -> torch.Tensor:
    p_log = F.log_softmax(teacher / t, dim=-1)
    q_log = F.log_softmax(student / t, dim=-1)
    return (p_log.exp() * (p_log - q_log)).sum(-1).mean() * (t * t)


def make_loss(name: str, head=None):
    """head = (final_norm module, lm_head weight [V, H]), both frozen; kl_logits only."""
    if name == "mse":
        return lambda s, y: torch.mean((s - y) ** 2)
    if name == "cosine":
        return lambda s, y: torch.mean(1.0 - F.cosine_similarity(s, y, dim=-1, eps=COS_EPS))
    if name == "kl_hidden":
        return lambda s, y: kl_temperature(s, y, TEMPERATURE)
    if name == "kl_logits":
        norm, w = head

        def kl_logits(s, y):
            with torch.no_grad():
                teacher = F.linear(norm(y), w)
            return kl_temperature(F.linear(norm(s), w), teacher, TEMPERATURE)

        return kl_logits
    raise ValueError(name)


def total_grad_norm(params) -> torch.Tensor:
    return torch.nn.utils.get_total_norm([p.grad for p in params], norm_type=2.0, foreach=False)


def train(layer, runner: LayerRunner, x, y, hp: dict, loss_name: str, head=None) -> dict:
    """The procedure of the golden, step by step; `layer` is trained in place."""
    params = [layer.get_parameter(n) for n in PARAM_NAMES]
    if len(params) != len(list(layer.parameters())):
        raise AssertionError("PARAM_NAMES does not cover every parameter of the layer")
    for p in params:
        p.requires_grad_(True)
    layer.train()
    loss_fn = make_loss(loss_name, head)
    clip = hp["clip"][loss_name]
    opt = torch.optim.AdamW(
        params,
        lr=hp["lr"],
        betas=BETAS,
        eps=ADAM_EPS,
        weight_decay=hp["weight_decay"],
        amsgrad=False,
        foreach=False,
    )
    n = x.shape[0]
    rec = {"losses": [], "micro_losses": [], "lrs": [], "grad_norms": [], "micro_batches": []}
    for s in range(hp["steps"]):
        lr = lr_at(s, hp)
        for group in opt.param_groups:
            group["lr"] = lr
        micro, batches = [], []
        for m in range(hp["accum"]):
            idx = micro_batch_indices(s, m, hp, n)
            loss = loss_fn(runner(layer, x[idx]), y[idx])
            (loss / hp["accum"]).backward()
            micro.append(loss.item())
            batches.append(idx)
        norm = total_grad_norm(params)
        if clip is not None:
            returned = torch.nn.utils.clip_grad_norm_(params, clip, norm_type=2.0, foreach=False)
            if not torch.equal(returned, norm):
                raise AssertionError("clip_grad_norm_ returned another norm than get_total_norm")
        opt.step()
        opt.zero_grad()
        rec["losses"].append(sum(micro) / len(micro))
        rec["micro_losses"].append(micro)
        rec["lrs"].append(lr)
        rec["grad_norms"].append(norm.item())
        rec["micro_batches"].append(batches)
    rec["clip"] = clip
    rec["clip_triggered"] = None if clip is None else [g > clip for g in rec["grad_norms"]]
    return rec


def step0_loss(layer, runner, x, y, hp, loss_name, head=None) -> float:
    """The step-0 loss recomputed without training (sanity check of the recorded value)."""
    loss_fn = make_loss(loss_name, head)
    with torch.no_grad():
        micro = [
            loss_fn(runner(layer, x[idx]), y[idx]).item()
            for idx in (micro_batch_indices(0, m, hp, x.shape[0]) for m in range(hp["accum"]))
        ]
    return sum(micro) / len(micro)


def layer_state(layer) -> dict[str, torch.Tensor]:
    return {n: layer.get_parameter(n).detach().clone() for n in PARAM_NAMES}


def run_all_losses(layer0, config, x, y, hp: dict, head32, head64, label: str) -> dict:
    """Each loss from the same start (a deep copy of layer0), in float32 and again in
    float64 for the noise estimate."""
    t = x.shape[1]
    run32 = LayerRunner(config, t, torch.float32)
    run64 = LayerRunner(config, t, torch.float64)
    init = layer_state(layer0)
    out = {}
    for loss_name in LOSSES:
        student = copy.deepcopy(layer0)
        rec = train(student, run32, x, y, hp, loss_name, head32)
        final = layer_state(student)

        fresh = copy.deepcopy(layer0)
        again = step0_loss(fresh, run32, x, y, hp, loss_name, head32)
        gap = abs(again - rec["losses"][0])
        if gap > 1e-6 * max(1.0, abs(rec["losses"][0])):
            raise AssertionError(f"{label}/{loss_name}: step-0 loss {rec['losses'][0]} "
                                 f"not reproduced by a plain forward ({again})")
        rec["step0_loss_reforward_abs_diff"] = gap

        student64 = copy.deepcopy(layer0).double()
        rec64 = train(student64, run64, x.double(), y.double(), hp, loss_name, head64)
        final64 = layer_state(student64)
        rec["f32_vs_f64"] = noise_report(rec, rec64, init, final, final64)

        if loss_name.startswith("kl") and min(rec["losses"]) < 0:
            raise AssertionError(f"{label}/{loss_name}: negative KL {rec['losses']}")
        if loss_name == "mse" and not rec["losses"][-1] < rec["losses"][0]:
            raise AssertionError(f"{label}/mse: loss did not decrease: {rec['losses']}")
        out[loss_name] = (rec, final)
    return out


def noise_report(rec, rec64, init, final, final64) -> dict:
    def rel(a, b):
        return max(abs(u - v) / max(abs(v), 1e-30) for u, v in zip(a, b, strict=True))

    per_tensor = {}
    for n in PARAM_NAMES:
        d64 = final64[n] - init[n].double()
        d32 = (final[n] - init[n]).double()
        diff = (d32 - d64).abs()
        scale = d64.abs().max()
        per_tensor[n] = {
            "max_abs_diff_final": float((final[n].double() - final64[n]).abs().max()),
            "max_abs_delta_f64": float(scale),
            "max_abs_diff_delta_over_max_abs_delta": float(diff.max() / scale),
            "rel_l2_diff_delta": float(diff.norm() / d64.norm()),
            "frac_diff_delta_over_1pct_of_max": float((diff > 0.01 * scale).double().mean()),
        }
        if d64.numel() > N_SAMPLE:
            idx = torch.from_numpy(sample_indices(d64.numel()))
            ds64, dss = d64.reshape(-1)[idx], diff.reshape(-1)[idx]
            per_tensor[n]["sample_rel_l2_diff_delta"] = float(dss.norm() / ds64.norm())

    def worst(key):
        return max(v[key] for v in per_tensor.values())

    return {
        "losses_max_rel_diff": rel(rec["losses"], rec64["losses"]),
        "grad_norms_max_rel_diff": rel(rec["grad_norms"], rec64["grad_norms"]),
        "weights_max_abs_diff_delta_over_max_abs_delta": worst(
            "max_abs_diff_delta_over_max_abs_delta"
        ),
        "weights_rel_l2_diff_delta": worst("rel_l2_diff_delta"),
        "weights_frac_diff_delta_over_1pct_of_max": worst("frac_diff_delta_over_1pct_of_max"),
        "weights_sample_rel_l2_diff_delta": max(
            (v["sample_rel_l2_diff_delta"] for v in per_tensor.values()
             if "sample_rel_l2_diff_delta" in v),
            default=None,
        ),
        "per_tensor": per_tensor,
    }


def sample_indices(n: int) -> np.ndarray:
    idx = np.linspace(0, n - 1, N_SAMPLE).round().astype(np.int64)
    # The same indices in integer arithmetic (no ties: the fractional part of
    # i (n-1) / 511 is k / 511, never one half).
    i = np.arange(N_SAMPLE, dtype=np.int64)
    alt = (2 * i * (n - 1) + (N_SAMPLE - 1)) // (2 * (N_SAMPLE - 1))
    if not np.array_equal(idx, alt):
        raise AssertionError(f"sample indices for n={n} disagree with the integer rule")
    return idx


def stats(t: torch.Tensor) -> dict:
    d = t.double()
    return {
        "shape": list(t.shape),
        "numel": t.numel(),
        "sum": float(d.sum()),
        "sum_sq": float((d * d).sum()),
    }


def run_meta(rec: dict, hp: dict) -> dict:
    clip = rec["clip"]
    meta = {
        "clip": clip,
        "losses": rec["losses"],
        "micro_losses": rec["micro_losses"],
        "lrs": rec["lrs"],
        "grad_norms_pre_clip": rec["grad_norms"],
        "clip_triggered": rec["clip_triggered"],
        "micro_batches": rec["micro_batches"],
        "step0_loss_reforward_abs_diff": rec["step0_loss_reforward_abs_diff"],
        "f32_vs_f64": rec["f32_vs_f64"],
    }
    if clip is not None and not any(rec["clip_triggered"]):
        raise AssertionError(f"clip {clip} never triggered: {rec['grad_norms']}")
    return meta


def hp_meta(hp: dict) -> dict:
    return {
        "steps": hp["steps"],
        "micro_batch": hp["micro_batch"],
        "accum": hp["accum"],
        "lr": hp["lr"],
        "min_lr": hp["min_lr"],
        "warmup_frac": hp["warmup_frac"],
        "warmup_steps": warmup_steps(hp),
        "weight_decay": hp["weight_decay"],
        "betas": list(BETAS),
        "adam_eps": ADAM_EPS,
        "clip": hp["clip"],
        "temperature": TEMPERATURE,
    }


# ---------------------------------------------------------------------------------------
# Case 1: tiny random layer
# ---------------------------------------------------------------------------------------


def tiny_case(tensors: dict) -> dict:
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRMSNorm

    c = TINY_CONFIG
    config = LlamaConfig(**c, num_hidden_layers=1, attn_implementation="eager")
    h = c["hidden_size"]
    gen = torch.Generator().manual_seed(TINY_SEED)

    layer = LlamaDecoderLayer(config, layer_idx=0)
    with torch.no_grad():
        for n in PARAM_NAMES:
            p = layer.get_parameter(n)
            noise = torch.randn(p.shape, generator=gen)
            if n.endswith("layernorm.weight"):
                p.copy_(1.0 + TINY_NORM_STD * noise)
            else:
                p.copy_(TINY_LINEAR_STD * noise)
        final_norm_w = 1.0 + TINY_NORM_STD * torch.randn(h, generator=gen)
        lm_head = TINY_LM_HEAD_STD * torch.randn(c["vocab_size"], h, generator=gen)
        x = torch.randn(TINY_N, TINY_T, h, generator=gen)
        r = TINY_R_SCALE * torch.randn(h, h, generator=gen)
        y = x + 0.5 * torch.tanh(x @ r)

    norm32 = LlamaRMSNorm(h, eps=c["rms_norm_eps"])
    with torch.no_grad():
        norm32.weight.copy_(final_norm_w)
    norm32.requires_grad_(False)
    norm64 = copy.deepcopy(norm32).double()
    head32 = (norm32, lm_head)
    head64 = (norm64, lm_head.double())

    for n in PARAM_NAMES:
        tensors[f"tiny.init.{n}"] = layer.get_parameter(n).detach().clone()
    tensors["tiny.final_norm"] = final_norm_w
    tensors["tiny.lm_head"] = lm_head
    tensors["tiny.x"] = x
    tensors["tiny.y"] = y

    results = run_all_losses(layer, config, x, y, TINY_HP, head32, head64, "tiny")
    runs = {}
    for loss_name, (rec, final) in results.items():
        for n in PARAM_NAMES:
            tensors[f"tiny.{loss_name}.final.{n}"] = final[n]
        runs[loss_name] = run_meta(rec, TINY_HP)
    return {
        "config": dict(c),
        "init": {
            "seed": TINY_SEED,
            "generator": "torch.Generator().manual_seed(seed); torch.randn(shape, "
            "generator=gen) in this order: the layer's tensors in param_names order, "
            "final_norm, lm_head, x, r",
            "linear_weights": f"N(0, {TINY_LINEAR_STD}^2)",
            "norm_weights": f"1 + {TINY_NORM_STD} * N(0, 1) (input, post-attention, final)",
            "lm_head": f"N(0, {TINY_LM_HEAD_STD}^2), shape [vocab 256, hidden 64], untied",
            "x": f"N(0, 1), shape [{TINY_N}, {TINY_T}, {h}]",
            "y": f"x + 0.5 * tanh(x @ r), r = {TINY_R_SCALE} * N(0, 1) of shape [{h}, {h}]",
        },
        "n_sequences": TINY_N,
        "seq_len": TINY_T,
        "hyper": hp_meta(TINY_HP),
        "clip_note": "the clip values sit between the smallest and largest pre-clip norms "
        "(mse about 0.046-0.058, kl_logits about 0.107-0.137), so both branches of "
        "min(1, clip / (g + 1e-6)) occur; a clip of 0.5 would never act on this layer",
        "weights_stored": "full: tiny.init.<name> and tiny.<loss>.final.<name>",
        "runs": runs,
    }


# ---------------------------------------------------------------------------------------
# Case 2: SmolLM2 layer 10
# ---------------------------------------------------------------------------------------


def smollm2_text_ids(gguf_path: Path, data_path: Path) -> tuple[str, list[int]]:
    """The first WikiText-2 test row with at least 300 characters, stripped, encoded with
    the original SmolLM2 tokenizer (hf_goldens.smollm2_tokenizer, no BOS)."""
    tok = hg.smollm2_tokenizer(gguf_path)
    with open(data_path) as f:
        for line in f:
            text = json.loads(line)["text"].strip()
            if len(text) >= 300:
                break
        else:
            raise AssertionError(f"{data_path}: no row of 300 characters")
    ids = hg.encode(tok, text)
    need = SMOL_N * SMOL_T
    if len(ids) < need:
        raise AssertionError(f"paragraph has {len(ids)} tokens, need {need}")
    return text, ids[:need]


def smollm2_case(tensors: dict, gguf_path: Path, data_path: Path) -> dict:
    print(f"SmolLM2: loading {hg.rel(gguf_path)}")
    text, ids = smollm2_text_ids(gguf_path, data_path)
    model = hg.load_gguf_model(gguf_path)
    model.requires_grad_(False)
    cfg = model.config
    input_ids = torch.tensor(ids).reshape(SMOL_N, SMOL_T)
    with torch.no_grad():
        hs = model(input_ids=input_ids, output_hidden_states=True, use_cache=False).hidden_states
    if len(hs) != cfg.num_hidden_layers + 1 or SMOL_LAST + 1 >= cfg.num_hidden_layers:
        raise AssertionError("unexpected number of hidden states")
    x = hs[SMOL_LAYER].detach().clone()
    y = hs[SMOL_LAST + 1].detach().clone()
    tensors["smollm2.x"] = x
    tensors["smollm2.y"] = y

    layer0 = model.model.layers[SMOL_LAYER]
    run32 = LayerRunner(cfg, SMOL_T, torch.float32)
    with torch.no_grad():
        mine = run32(layer0, x)
    check = float((mine - hs[SMOL_LAYER + 1]).abs().max())
    scale = float(hs[SMOL_LAYER + 1].abs().max())
    if check > 1e-5 * scale:
        raise AssertionError(f"layer {SMOL_LAYER} run alone misses hidden_states "
                             f"[{SMOL_LAYER + 1}] by {check} (max {scale})")

    lm_head = model.lm_head.weight.detach()
    embed = model.model.embed_tokens.weight.detach()
    if not torch.equal(lm_head, embed):
        raise AssertionError("lm_head is not the (tied) embedding matrix")
    norm32 = copy.deepcopy(model.model.norm)
    norm32.requires_grad_(False)
    norm64 = copy.deepcopy(norm32).double()
    head32 = (norm32, lm_head)
    head64 = (norm64, lm_head.double())

    init = layer_state(layer0)
    init_stats = {n: stats(init[n]) for n in PARAM_NAMES}
    for n in PARAM_NAMES:
        tensors[f"smollm2.init.{n}"] = init[n].reshape(-1)[sample_indices(init[n].numel())]

    results = run_all_losses(layer0, cfg, x, y, SMOL_HP, head32, head64, "smollm2")
    runs = {}
    for loss_name, (rec, final) in results.items():
        meta = run_meta(rec, SMOL_HP)
        meta["final_stats"] = {}
        for n in PARAM_NAMES:
            idx = torch.from_numpy(sample_indices(final[n].numel()))
            tensors[f"smollm2.{loss_name}.final.{n}"] = final[n].reshape(-1)[idx]
            tensors[f"smollm2.{loss_name}.delta.{n}"] = (final[n] - init[n]).reshape(-1)[idx]
            d = (final[n] - init[n]).double()
            meta["final_stats"][n] = {
                "sum_sq": stats(final[n])["sum_sq"],
                "delta_sum_sq": float((d * d).sum()),
                "delta_max_abs": float(d.abs().max()),
            }
        runs[loss_name] = meta

    return {
        "model": {
            "file": gguf_path.name,
            "sha256": hg.sha256_file(gguf_path),
            "loaded_with": "AutoModelForCausalLM.from_pretrained(dir, gguf_file=name, "
            f"dtype=torch.float32, attn_implementation='{hg.ATTN}')",
            "model_type": cfg.model_type,
            "num_hidden_layers": cfg.num_hidden_layers,
            "hidden_size": cfg.hidden_size,
            "intermediate_size": cfg.intermediate_size,
            "num_attention_heads": cfg.num_attention_heads,
            "num_key_value_heads": cfg.num_key_value_heads,
            "head_dim": cfg.head_dim,
            "vocab_size": cfg.vocab_size,
            "rms_norm_eps": cfg.rms_norm_eps,
            "rope_parameters": dict(cfg.rope_parameters),
            "tie_word_embeddings": cfg.tie_word_embeddings,
        },
        "student_layer": SMOL_LAYER,
        "target_after_layer": SMOL_LAST,
        "x": f"hidden_states[{SMOL_LAYER}] of output_hidden_states (input of layer "
        f"{SMOL_LAYER})",
        "y": f"hidden_states[{SMOL_LAST + 1}] (output of layer {SMOL_LAST})",
        "layer_alone_vs_hidden_states_max_abs_diff": check,
        "text": {
            "source": f"$COME_DATA/{DATA_REL}: first row with >= 300 characters, "
            "stripped; first 64 tokens",
            "tokenizer": "original SmolLM2 tokenizer rebuilt from the GGUF "
            "(hf_goldens.smollm2_tokenizer), no special tokens",
            "text": text,
        },
        "input_ids": input_ids.tolist(),
        "n_sequences": SMOL_N,
        "seq_len": SMOL_T,
        "hyper": hp_meta(SMOL_HP),
        "kl_logits_head": "model.model.norm (weight model.norm.weight, eps rms_norm_eps) and "
        "lm_head = token embedding matrix (tied), both frozen",
        "init_stats": init_stats,
        "weights_stored": "samples: smollm2.init.<name>, smollm2.<loss>.final.<name>, "
        "smollm2.<loss>.delta.<name> (final - init), each f32 [512] at the sample indices",
        "runs": runs,
    }


# ---------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------

CONVENTIONS = f"""\
Student: one transformers LlamaDecoderLayer (eager attention, float32), HF parameter names
relative to the layer: {", ".join(PARAM_NAMES)}. Every one of these 9 tensors is trainable
(norm weights included); nothing else is.
Forward: out = layer(X_b) on [B, T, H], positions 0..T-1 for every sequence, causal
attention (additive mask 0 on/below the diagonal, finfo(f32).min above), no padding; rotary
cos/sin from LlamaRotaryEmbedding of the same config (default rope: inv_freq = 1 /
theta^(arange(0, d, 2) / d) in f32, angle = pos * inv_freq, cat(angle, angle), rotate_half
convention); out = hidden states after the layer, both residuals included.
Step s = 0..S-1 (S = hyper.steps): lr_s set in param_group["lr"] before the update, with
W = floor(warmup_frac * S): lr_s = lr * (s + 1) / W if s < W, else with p = (s - W) /
max(1, S - W): lr_s = min_lr + (lr - min_lr) * 0.5 * (1 + cos(pi p)) (python floats).
Micro-batches: step s consumes accum micro-batches of micro_batch sequences; micro-batch m
(m = 0..accum-1) holds sequences [k mod N for k in range((s*accum + m)*micro_batch,
(s*accum + m)*micro_batch + micro_batch)] in that order (runs.<loss>.micro_batches lists
them). For each: loss_m = LOSS(layer(X[idx]), Y[idx]) (f32 scalar); (loss_m /
accum).backward() accumulates gradients. Recorded loss of step s = python float64 mean of
the accum values loss_m.item() (before the update); micro_losses holds them.
Gradient norm: g = sqrt(sum over tensors of ||grad||_2^2), computed as
torch.nn.utils.get_total_norm (2-norm of the per-tensor 2-norms), recorded before clipping
(grad_norms_pre_clip) whether or not clipping is on. Clipping (clip not null):
clip_grad_norm_(params, clip): every grad *= min(1, clip / (g + 1e-6)); clip_triggered[s]
= g > clip. Then torch.optim.AdamW(lr, betas {BETAS}, eps {ADAM_EPS}, weight_decay wd,
amsgrad False, foreach False).step() with t = s + 1: p *= 1 - lr_s * wd; m = b1 m + (1 - b1)
grad; v = b2 v + (1 - b2) grad^2; p -= (lr_s / (1 - b1^t)) * m / (sqrt(v) / sqrt(1 - b2^t)
+ eps); weight decay applies to every tensor, norm weights included. Then zero_grad.
Losses, S = student output, Y = target, both [B, T, H], T_t = temperature = {TEMPERATURE}:
mse = mean((S - Y)^2) over all elements; cosine = mean over positions of 1 -
cosine_similarity(S, Y, dim=-1, eps={COS_EPS}) (S.Y / (|S| |Y|); norms are far above eps);
kl_hidden = T_t^2 * mean over positions of sum_h exp(p_h) (p_h - q_h), p = log_softmax(Y /
T_t), q = log_softmax(S / T_t) over the hidden dimension (KL(teacher || student));
kl_logits: the same with teacher logits lm_head(final_norm(Y)) and student logits
lm_head(final_norm(S)) over the vocabulary, final_norm = LlamaRMSNorm (w * x /
sqrt(mean(x^2) + eps)) with the model's final norm weight and rms_norm_eps, lm_head =
x @ W^T with W [V, H] (tiny: tiny.lm_head; smollm2: the tied embedding matrix); both frozen,
teacher logits carry no gradient.
Each loss is trained separately from the same initial layer (a fresh AdamW each time).
Stored tensors (all f32): tiny.init.<name> (full initial weights), tiny.final_norm [H],
tiny.lm_head [V, H], tiny.x, tiny.y [N, T, H], tiny.<loss>.final.<name> (full final
weights); smollm2.x, smollm2.y [N, T, H]; smollm2.init.<name>, smollm2.<loss>.final.<name>,
smollm2.<loss>.delta.<name> (final - initial, computed in f32 on the full tensor before
sampling): each [512], the flattened (row-major) tensor of n elements at indices
numpy.linspace(0, n - 1, 512).round() = floor((2 i (n - 1) + 511) / 1022), i = 0..511 (no
ties occur). smollm2 initial weights: layer 10 of the GGUF as transformers loads it (q/k
un-permuted); cases.smollm2.init_stats holds each tensor's sum and sum of squares
(float64 over the f32 values) to check the starting point, runs.<loss>.final_stats the final
sum of squares, the delta's sum of squares and max |delta|.
f32_vs_f64: the same run repeated with the layer, X, Y and head in float64 (transformers
still computes the rotary angles, the RMSNorm statistics and the attention softmax in f32);
losses_max_rel_diff and grad_norms_max_rel_diff over the steps; per tensor, with delta =
final - initial and e = |delta_f32 - delta_f64|: max e / max |delta_f64|, ||e||_2 /
||delta_f64||_2 (rel_l2), the fraction of elements with e > 1% of max |delta_f64|, and
rel_l2 on the 512 sample indices; the weights_* keys are the worst tensor. This is the
float32 noise floor to size tolerances against: AdamW's first updates are close to
lr * sign(grad), so elements with near-zero gradients carry much larger relative noise
than the tensor as a whole; compare deltas by relative L2 norm, not element by element."""


TENSOR_LAYOUT = {
    "tiny.init.<name>": "f32, the layer tensor's shape (q [64,64], k/v [32,64], o [64,64], "
    "gate/up [128,64], down [64,128], norms [64])",
    "tiny.final_norm": "f32 [64]",
    "tiny.lm_head": "f32 [256, 64]",
    "tiny.x": "f32 [3, 16, 64]",
    "tiny.y": "f32 [3, 16, 64]",
    "tiny.<loss>.final.<name>": "f32, same shape as tiny.init.<name>",
    "smollm2.x": "f32 [2, 32, 576]",
    "smollm2.y": "f32 [2, 32, 576]",
    "smollm2.init.<name>": "f32 [512] sample of the initial tensor",
    "smollm2.<loss>.final.<name>": "f32 [512] sample of the final tensor",
    "smollm2.<loss>.delta.<name>": "f32 [512] sample of final - initial",
}


def write(tensors: dict, meta: dict, st_path: Path) -> None:
    from safetensors.torch import save_file

    st_path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to(torch.float32).contiguous() for k, v in tensors.items()}
    save_file(tensors, str(st_path), metadata={"generator": GENERATOR})
    size = st_path.stat().st_size
    if size > SIZE_LIMIT:
        raise AssertionError(f"{st_path}: {size} bytes, over {SIZE_LIMIT}")
    json_path = st_path.with_suffix(".json")
    with open(json_path, "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")
    print(f"wrote {hg.rel(st_path)} ({size} bytes), {hg.rel(json_path)}")


def summary(name: str, case: dict) -> None:
    for loss_name, r in case["runs"].items():
        trig = "off" if r["clip"] is None else (
            f"clip {r['clip']}: triggered on steps "
            f"{[i for i, t in enumerate(r['clip_triggered']) if t]}"
        )
        print(
            f"  {name:8s} {loss_name:10s} loss {r['losses'][0]:.6g} -> {r['losses'][-1]:.6g}"
            f"  grad norm {r['grad_norms_pre_clip'][0]:.4g} -> "
            f"{r['grad_norms_pre_clip'][-1]:.4g}  {trig}  f32/f64 delta noise "
            f"max {r['f32_vs_f64']['weights_max_abs_diff_delta_over_max_abs_delta']:.1e} "
            f"l2 {r['f32_vs_f64']['weights_rel_l2_diff_delta']:.1e}"
        )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--gguf", type=Path, default=None,
                    help="SmolLM2 GGUF (default: $COME_MODELS/" + hg.GGUF_REL + ")")
    ap.add_argument("--data", type=Path, default=None,
                    help="WikiText-2 rows (default: $COME_DATA/" + DATA_REL + ")")
    ap.add_argument("--golden-dir", type=Path, default=hg.ROOT / "tests" / "golden")
    args = ap.parse_args(argv)
    gguf_path = args.gguf or hg.default_gguf()
    data_path = args.data or default_data()
    for p, what in ((gguf_path, "COME_MODELS or --gguf"), (data_path, "COME_DATA or --data")):
        if not p.is_file():
            print(f"error: {p}: no such file (set {what})", file=sys.stderr)
            return 2
    hg.setup_torch()

    tensors: dict = {}
    tiny = tiny_case(tensors)
    smol = smollm2_case(tensors, gguf_path, data_path)
    meta = {
        "generator": GENERATOR,
        "safetensors": OUT_NAME,
        "versions": hg.versions(),
        "dtype": "float32",
        "attn_implementation": hg.ATTN,
        "torch_threads": hg.THREADS,
        "deterministic_algorithms": True,
        "losses": LOSSES,
        "param_names": PARAM_NAMES,
        "sample": {
            "count": N_SAMPLE,
            "rule": "flattened row-major tensor of n elements at indices "
            "numpy.linspace(0, n-1, 512).round().astype(int64) "
            "== floor((2*i*(n-1) + 511) / 1022), i = 0..511",
        },
        "conventions": CONVENTIONS,
        "tensor_layout": TENSOR_LAYOUT,
        "cases": {"tiny": tiny, "smollm2": smol},
    }
    write(tensors, meta, args.golden_dir / OUT_NAME)
    print("summary (first -> last step):")
    summary("tiny", tiny)
    summary("smollm2", smol)
    return 0


if __name__ == "__main__":
    sys.exit(main())
