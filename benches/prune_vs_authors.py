#!/usr/bin/env python3
"""Pruning side by side on this machine, in one run: come-repro's `bench prune` and the
CoMe authors' own code on the same checkpoint, the same calibration ids and the same
thread count, f32 CPU.

    .venv/bin/python benches/prune_vs_authors.py --authors PATH/TO/CoMe               # ShortGPT
    .venv/bin/python benches/prune_vs_authors.py --authors PATH/TO/CoMe --method come --target-layers 27

`--authors` is a checkout of the authors' public code (github.com/WangFei-2019/CoMe,
commit 7bb695a: the code behind ../shared/reference/come-smollm2). Nothing of it is
copied here: the script imports it and feeds it the ids in place of its data loader.
- shortgpt: their `methods.shortgpt.get_layer_importance` (the transformers model with
  `output_hidden_states=True` on each 2048-token window, block influence per layer), the
  span their log reports as "Total time elapsed" (68.5 s in the reference file, measured
  on another day on a shared machine). Checks their BI here against the reference file.
- come: their `methods.concat_merge.main_func` with the README's CoMe arguments
  (`--skip-method bi --merge-item 2 --wo-repeat`, seed 10), down to `--target-layers`,
  timed whole (rounds of scoring and merging, then one save); prints each round's merged
  pair for both sides.
  Their CoMe model class (`models_unit/llama/modeling_llama.py`) imports modules that
  transformers 5 removed: run this mode with transformers 4.46 (e.g. a venv with
  `transformers==4.46.3 tokenizers==0.20.3 huggingface-hub==0.26.5` over this one's torch).
come-repro's side is the prune stage's own time from `bench prune`. The two sides
alternate `--rounds` times, so machine-speed drift hits both alike. Not run by CI.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT.parent / "shared" / "reference" / "come-smollm2"


def run_ours(args) -> tuple[float, str]:
    """come-repro's prune time (the prune stage alone, as its log reports it)."""
    cmd = [
        args.bin, "bench", "prune", "--model", args.model,
        "--methods", args.method, "--threads", str(args.threads),
        "--calib-ids", str(args.ids), "--target-layers", str(args.target_layers),
    ]
    out = subprocess.run(
        cmd, check=True, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ).stdout
    m = re.search(r"\(prune ([0-9.]+)s, (\d+) layer passes\)", out)
    if not m:
        sys.exit(f"could not find the prune time in come-repro's output:\n{out}")
    pairs = re.findall(r"concat (\d+)\+(\d+)", out)
    corr = re.search(r"correspondence: (.*)", out)
    what = " ".join(f"{a}+{b}" for a, b in pairs) if pairs else (corr.group(1) if corr else "?")
    return float(m.group(1)), what


class Windows:
    """What their loader returns: one `[1, n * seqlen]` stream and its attention mask."""

    def __init__(self, ids, torch):
        flat = [t for w in ids for t in w]
        self.input_ids = torch.tensor([flat], dtype=torch.long)
        self.attention_mask = torch.ones_like(self.input_ids)


def run_theirs_shortgpt(args, torch) -> tuple[float, str]:
    from transformers import LlamaForCausalLM

    import methods.shortgpt as shortgpt  # the authors' module

    # As their ModelHandler loads it (torch_dtype="auto": f32 here), plus their seqlen.
    model = LlamaForCausalLM.from_pretrained(str(ROOT / args.model), torch_dtype="auto")
    model.eval()
    model.seqlen = 2048
    loader = Windows(json.loads(Path(args.ids).read_text()), torch)
    t0 = time.perf_counter()
    bi = shortgpt.get_layer_importance(model, loader, bs=1, device=torch.device("cpu"))
    took = time.perf_counter() - t0
    ref = json.loads((REFERENCE / "shortgpt_t21.json").read_text())
    worst = max(abs(a - b) / abs(b) for a, b in zip(bi, ref["bi_per_layer"]))
    drop = sorted(sorted(range(len(bi)), key=lambda i: bi[i])[: len(bi) - args.target_layers])
    return took, f"removes {drop}; BI vs the reference file: largest relative difference {worst:.1e}"


def run_theirs_come(args, torch) -> tuple[float, str]:
    import tempfile

    import methods.concat_merge as concat_merge  # the authors' module
    from utils.model_utils import ModelHandler

    handler = ModelHandler(str(ROOT / args.model), device_map="cpu", merge_method=True)
    handler.model.seqlen = 2048
    loader = Windows(json.loads(Path(args.ids).read_text()), torch)
    # Their loader downloads the dataset; the ids are what it would return here.
    concat_merge.get_trainloaders = lambda *a, **k: loader
    with tempfile.TemporaryDirectory() as tmp:
        ns = argparse.Namespace(
            calibration_dataset="wiki2", nsamples=256, seed=10, save_name="bench",
            skip_method="bi", merge_item=2, wo_repeat=True, psu=1, min_max=0.0,
            target_layers=args.target_layers, save_path=tmp, continue_saving=False,
            ppl_data=[], method="concat_merge",
        )
        t0 = time.perf_counter()
        concat_merge.main_func(ns, handler)
        took = time.perf_counter() - t0
        info = json.loads(Path(tmp, "bench_bi_info.json").read_text())
    rounds = [v["merge_list"] for k, v in info.items() if isinstance(v, dict) and "merge_list" in v]
    return took, " ".join("+".join(str(i) for i in r) for r in rounds)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--authors", required=True, help="checkout of github.com/WangFei-2019/CoMe")
    ap.add_argument("--model", default="work/models/smollm2-135m-instruct")
    ap.add_argument("--ids", default=str(REFERENCE / "calib_ids.json"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--method", choices=["shortgpt", "come"], default="shortgpt")
    ap.add_argument("--target-layers", type=int, default=21)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--bin", default=str(ROOT / "target/release/come-repro"))
    args = ap.parse_args()

    authors = Path(args.authors).resolve()
    if not (authors / "methods" / "shortgpt.py").is_file():
        sys.exit(f"{authors}: not a checkout of the authors' code (no methods/shortgpt.py)")
    sys.path.insert(0, str(authors))
    import torch

    torch.set_num_threads(args.threads)
    theirs_fn = run_theirs_come if args.method == "come" else run_theirs_shortgpt
    ours_s, theirs_s = [], []
    for r in range(args.rounds):
        s, ours_what = run_ours(args)
        ours_s.append(s)
        print(f"round {r + 1}: come-repro {s:.1f} s", flush=True)
        s, theirs_what = theirs_fn(args, torch)
        theirs_s.append(s)
        print(f"round {r + 1}: authors' code {s:.1f} s", flush=True)

    ref_file = "concat_merge_t21.json" if args.method == "come" else "shortgpt_t21.json"
    ref = json.loads((REFERENCE / ref_file).read_text())
    print(f"\n{args.method} 30 -> {args.target_layers} layers, {args.model}, "
          f"{args.threads} threads, f32 CPU, same ids")
    print(f"{'':24}{'come-repro':>12}{'authors':>12}")
    for r, (a, b) in enumerate(zip(ours_s, theirs_s)):
        print(f"{'round ' + str(r + 1) + ' (s)':24}{a:>12.1f}{b:>12.1f}   {b / a:.2f}x")
    print(f"{'reference file, to 21 (s)':24}{'':>12}{ref['pruning_wall_s']:>12.1f}")
    print(f"come-repro: {ours_what}")
    print(f"authors:    {theirs_what}")


if __name__ == "__main__":
    main()
