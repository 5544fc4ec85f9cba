#!/usr/bin/env python3
"""Golden values for progressive hierarchical distillation (`recovery.inputs = student`).

A random 5-layer teacher (transformers' LlamaDecoderLayer, eager attention, float32) and a
3-layer student pruned from it with the correspondence [[0], [1, 2], [3, 4]]: student layer
0 is teacher layer 0, student layers 1 and 2 (two consecutive merged layers) start from
perturbed copies of teacher layers 1 and 3. Two units train: layer 1 maps the state
entering original layer 1 to the state leaving layer 2 (teacher boundaries 1 -> 3), layer
2 maps boundary 3 to boundary 5.

- teacher inputs: each unit's input is the teacher's state at its input boundary; the
  units are independent.
- student inputs: unit 1 as above (its input, the output of student layer 0 = teacher
  layer 0, is the teacher's boundary 1 exactly); then unit 2's input is the student's own
  state entering layer 2, i.e. trained layer 1 applied to layer 0's output.

Training per unit is distill_goldens.py's procedure (AdamW, warmup + cosine, accumulation,
sequential micro-batches), cosine loss. The whole procedure is repeated in float64 to give
the float32 noise of every final tensor.

Writes tests/golden/distill_progressive.safetensors + .json.
Run: .venv/bin/python scripts/golden/progressive_goldens.py
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import distill_goldens as dg  # noqa: E402
import hf_goldens as hg  # noqa: E402

GENERATOR = "scripts/golden/progressive_goldens.py"
SEED = 2468
N, T = 3, 16
TEACHER_LAYERS = 5
CORRESPONDENCE = [[0], [1, 2], [3, 4]]
# (student layer, input boundary, target boundary) of each unit, in order.
UNITS = [(1, 1, 3), (2, 3, 5)]
# distill_goldens' tiny layer at half the width, to keep the file small.
CONFIG = {**dg.TINY_CONFIG, "hidden_size": 32, "head_dim": 8, "intermediate_size": 64}
EMBED_STD = 1.0
PERTURB_STD = 0.02
LOSS = "cosine"
HP = {
    "steps": 6,
    "micro_batch": 1,
    "accum": 2,
    "lr": 2e-3,
    "min_lr": 2e-4,
    "warmup_frac": 0.34,
    "weight_decay": 0.01,
    "clip": {LOSS: None},
}


def random_layer(config, gen: torch.Generator, idx: int):
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    layer = LlamaDecoderLayer(config, layer_idx=idx)
    with torch.no_grad():
        for n in dg.PARAM_NAMES:
            p = layer.get_parameter(n)
            noise = torch.randn(p.shape, generator=gen)
            if n.endswith("layernorm.weight"):
                p.copy_(1.0 + dg.TINY_NORM_STD * noise)
            else:
                p.copy_(dg.TINY_LINEAR_STD * noise)
    return layer


def perturbed(layer, gen: torch.Generator):
    out = copy.deepcopy(layer)
    with torch.no_grad():
        for n in dg.PARAM_NAMES:
            p = out.get_parameter(n)
            p.add_(PERTURB_STD * torch.randn(p.shape, generator=gen))
    return out


def procedure(teacher, student, embed, ids, config, dtype) -> dict:
    """Both modes from the same start; returns boundaries, losses and final layers."""
    teacher = [copy.deepcopy(l).to(dtype) for l in teacher]
    student = [copy.deepcopy(l).to(dtype) for l in student]
    run = dg.LayerRunner(config, T, dtype)
    h = embed.to(dtype)[ids]
    bounds = {0: h}
    with torch.no_grad():
        for i, layer in enumerate(teacher):
            h = run(layer, h)
            bounds[i + 1] = h
    out = {"bounds": bounds, "teacher": {}, "student": {}}
    for mode in ("teacher", "student"):
        layers = [copy.deepcopy(l) for l in student]
        x_student = None
        for layer_idx, b_in, b_out in UNITS:
            if mode == "teacher":
                x = bounds[b_in]
            else:
                # The student's own state entering this layer: its layers 0..layer_idx
                # (trained ones included) on the embeddings.
                with torch.no_grad():
                    x = bounds[0]
                    for l in layers[:layer_idx]:
                        x = run(l, x)
                x_student = x
            rec = dg.train(layers[layer_idx], run, x, bounds[b_out], HP, LOSS)
            out[mode][layer_idx] = {"losses": rec["losses"], "lrs": rec["lrs"],
                                    "grad_norms": rec["grad_norms"]}
        out[mode]["layers"] = layers
        if mode == "student":
            out["student_inputs_unit2"] = x_student
    return out


def main() -> int:
    from transformers import LlamaConfig

    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    c = CONFIG
    config = LlamaConfig(**c, num_hidden_layers=1, attn_implementation="eager")
    gen = torch.Generator().manual_seed(SEED)
    teacher = [random_layer(config, gen, i) for i in range(TEACHER_LAYERS)]
    student = [copy.deepcopy(teacher[0]), perturbed(teacher[1], gen), perturbed(teacher[3], gen)]
    embed = EMBED_STD * torch.randn(c["vocab_size"], c["hidden_size"], generator=gen)
    ids = torch.randint(0, c["vocab_size"], (N, T), generator=gen)

    r32 = procedure(teacher, student, embed, ids, config, torch.float32)
    r64 = procedure(teacher, student, embed, ids, config, torch.float64)

    # Unit 1 is the same computation in both modes; unit 2 is not.
    for n in dg.PARAM_NAMES:
        a = r32["teacher"]["layers"][1].get_parameter(n)
        b = r32["student"]["layers"][1].get_parameter(n)
        if not torch.equal(a, b):
            raise AssertionError(f"unit 1 differs between modes in {n}")
    gap = {}
    noise = {}
    for mode in ("teacher", "student"):
        for li in (1, 2):
            for n in dg.PARAM_NAMES:
                f32 = r32[mode]["layers"][li].get_parameter(n).detach()
                f64 = r64[mode]["layers"][li].get_parameter(n).detach()
                noise[f"{mode}.layer{li}.{n}"] = float((f32.double() - f64).abs().max())
    for n in dg.PARAM_NAMES:
        a = r32["teacher"]["layers"][2].get_parameter(n).detach()
        b = r32["student"]["layers"][2].get_parameter(n).detach()
        gap[n] = float((a - b).abs().max())
        worst_noise = max(noise[f"{m}.layer2.{n}"] for m in ("teacher", "student"))
        if gap[n] < 100 * worst_noise:
            raise AssertionError(f"layer 2 {n}: modes differ by {gap[n]:.2e}, "
                                 f"float32 noise {worst_noise:.2e}: not a usable test")

    tensors = {"embed": embed, "ids": ids.to(torch.float32)}
    for i, layer in enumerate(teacher):
        for n in dg.PARAM_NAMES:
            tensors[f"teacher.{i}.{n}"] = layer.get_parameter(n).detach()
    for i, layer in enumerate(student):
        for n in dg.PARAM_NAMES:
            tensors[f"student.{i}.{n}"] = layer.get_parameter(n).detach()
    for mode in ("teacher", "student"):
        for li in ((1, 2) if mode == "teacher" else (2,)):
            for n in dg.PARAM_NAMES:
                tensors[f"{mode}.final.{li}.{n}"] = r32[mode]["layers"][li].get_parameter(n).detach()
    tensors["student_inputs_unit2"] = r32["student_inputs_unit2"]

    meta = {
        "generator": GENERATOR,
        "versions": hg.versions(),
        "config": dict(c),
        "seed": SEED,
        "init": "torch.Generator().manual_seed(seed); torch.randn in this order: the 5 "
        "teacher layers (tensors in param_names order; linear N(0, 0.05^2), norms 1 + 0.1 "
        "N(0,1)), student layer 1 = teacher layer 1 + 0.02 N(0,1) per tensor, student layer "
        "2 = teacher layer 3 + 0.02 N(0,1), embed N(0,1) [V, H], ids randint(V) [N, T] "
        "(stored as f32)",
        "param_names": dg.PARAM_NAMES,
        "n_sequences": N,
        "seq_len": T,
        "correspondence": CORRESPONDENCE,
        "units": [{"layer": l, "input_boundary": i, "target_boundary": o} for l, i, o in UNITS],
        "loss": LOSS,
        "hyper": dg.hp_meta(HP),
        "micro_batches": "step s, micro-batch m: sequence (s * accum + m) mod N",
        "runs": {
            mode: {str(li): r32[mode][li] for li in (1, 2)} for mode in ("teacher", "student")
        },
        "f32_vs_f64_max_abs_diff_final": noise,
        "modes_max_abs_diff_layer2": gap,
        "conventions": "teacher boundary b = state entering teacher layer b (0: embeddings). "
        "Tensors: embed, ids, teacher.<i>.<name>, student.<i>.<name> (initial), "
        "<mode>.final.<layer>.<name> (student mode: layer 2 only, its layer 1 equals the "
        "teacher mode's bit for bit), student_inputs_unit2 [N, T, H] (the student-mode "
        "input of unit 2). Everything float32.",
    }
    st_path = hg.ROOT / "tests" / "golden" / "distill_progressive.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.to(torch.float32).contiguous() for k, v in tensors.items()}, str(st_path),
              metadata={"generator": GENERATOR})
    with open(st_path.with_suffix(".json"), "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")
    print(f"wrote {hg.rel(st_path)} ({st_path.stat().st_size} bytes)")
    for mode in ("teacher", "student"):
        for li in (1, 2):
            ls = r32[mode][li]["losses"]
            print(f"  {mode:8s} layer {li}: loss {ls[0]:.6g} -> {ls[-1]:.6g}")
    print("  layer 2 modes differ by up to", f"{max(gap.values()):.3e}",
          "; float32 noise up to", f"{max(noise.values()):.3e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
