"""Distillation throughput: come-repro's layer-local training loop next to the same loop in
PyTorch (transformers' LlamaDecoderLayer, torch.optim.AdamW, clip_grad_norm_), same layer
shapes, sequence length, loss, micro-batch, thread count, in one run.

    .venv/bin/python benches/distill_vs_torch.py --teacher DIR --student PRUNED [--threads 2]

DIR is the model before pruning and PRUNED a checkpoint written by `come-repro prune`
(both HF directories; transformers loads them). The come-repro side runs
`target/release/come-repro distill` and reads each trained layer's tokens/s from its
distill.json (the training loop only: teacher states are timed separately); the PyTorch
side trains the same student layers on the teacher's states for the same number of steps
and times the loop the same way. Peak RSS of the come-repro process is printed next to
the f32 size of the student. Needs transformers in the venv (see scripts/golden/README.md).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

ROOT = Path(__file__).resolve().parents[1]
ap = argparse.ArgumentParser()
ap.add_argument("--teacher", required=True)
ap.add_argument("--student", required=True)
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--seqlen", type=int, default=2048)
ap.add_argument("--steps", type=int, default=4, help="optimiser steps per layer")
ap.add_argument("--layers", type=int, default=2, help="trained layers timed on the PyTorch side")
ap.add_argument("--output", help="write the comparison as JSON here")
a = ap.parse_args()
torch.set_num_threads(a.threads)

come = json.loads((Path(a.student) / "come.json").read_text())
corr = come["report"]["correspondence"]
# The units come-repro trains (attach = none: merged layers only, so both sides agree).
units = [(i, g[0], g[-1]) for i, g in enumerate(corr) if len(g) > 1][: a.layers]
if not units:
    sys.exit("the student has no merged layer")

# --- come-repro --------------------------------------------------------------------
tokens = a.steps * a.seqlen
with tempfile.TemporaryDirectory() as tmp:
    out = Path(tmp) / "rec"
    cmd = [str(ROOT / "target/release/come-repro"), "distill", "--teacher", a.teacher,
           "--model", a.student, "--out", str(out), "--tokens", str(tokens),
           "--seqlen", str(a.seqlen), "--val-tokens", "0", "--attach", "none", "--loss", "mse",
           "--threads", str(a.threads)]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    rec = json.loads((out / "distill.json").read_text())
ours = [u for u in rec["units"] if u["layer"] is not None]
ours_tps = sum(u["tokens"] for u in ours) / sum(u["seconds"] for u in ours)

# --- PyTorch -----------------------------------------------------------------------
teacher = AutoModelForCausalLM.from_pretrained(a.teacher, dtype=torch.float32).eval()
student = AutoModelForCausalLM.from_pretrained(a.student, dtype=torch.float32)
torch.manual_seed(0)
ids = torch.randint(0, teacher.config.vocab_size, (1, a.seqlen))
with torch.no_grad():
    hs = teacher(ids, output_hidden_states=True).hidden_states
rotary = student.model.rotary_emb
pos = torch.arange(a.seqlen).unsqueeze(0)
trained_tokens, trained_seconds = 0, 0.0
for layer_idx, first, last in units:
    layer = student.model.layers[layer_idx]
    x, y = hs[first], hs[last + 1]
    pe = rotary(x, pos)
    params = list(layer.parameters())
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=2e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-3, foreach=False)
    t0 = time.perf_counter()
    for _ in range(a.steps):
        # No mask: transformers' SDPA path then runs causal attention (is_causal), as ours.
        o = layer(x, attention_mask=None, position_ids=pos, position_embeddings=pe)
        o = o[0] if isinstance(o, tuple) else o
        loss = torch.mean((o - y) ** 2)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        opt.step()
        opt.zero_grad()
    trained_seconds += time.perf_counter() - t0
    trained_tokens += a.steps * a.seqlen
torch_tps = trained_tokens / trained_seconds

f32_mib = sum(p.numel() for p in student.parameters()) * 4 / 2**20
res = {
    "threads": a.threads, "seqlen": a.seqlen, "steps_per_layer": a.steps,
    "come_repro": {"layers": len(ours), "tokens_per_s": ours_tps, "wall_s": wall,
                   "teacher_states_s": rec["teacher_seconds"], "peak_rss_mib": rec["peak_rss_mib"]},
    "pytorch": {"layers": len(units), "tokens_per_s": torch_tps, "torch": torch.__version__},
    "speedup": ours_tps / torch_tps,
    "student_f32_mib": f32_mib,
}
print(f"layer-local training, {a.seqlen}-token sequences, mse, AdamW, {a.threads} threads")
print(f"  come-repro: {ours_tps:8.0f} tok/s over {len(ours)} layers (wall {wall:.1f}s incl. load and teacher states)")
print(f"  PyTorch   : {torch_tps:8.0f} tok/s over {len(units)} layers")
print(f"  ratio     : {res['speedup']:.2f}x")
print(f"  peak RSS  : {rec['peak_rss_mib']:.0f} MiB = {rec['peak_rss_mib'] / f32_mib:.2f}x the student's f32 size ({f32_mib:.0f} MiB)")
if a.output:
    Path(a.output).write_text(json.dumps(res, indent=2) + "\n")
