#!/usr/bin/env python3
"""Seven-task evaluation speed, side by side in one run: come-repro vs lm-evaluation-harness
0.4.x (HF backend, `model="hf"`) on the same checkpoint, the same first N documents per
task (lm-eval --limit semantics), the same thread count, fp32 CPU. lm-eval reads the same
data files through the local task configs in benches/lm_eval_tasks/.

    .venv/bin/python benches/eval_vs_lm_eval.py --model work/models/smollm2-135m-instruct --limit 100

Needs lm-eval in the venv (`.venv/bin/pip install lm-eval==0.4.13`); not run by CI.
Prints wall time, tokens/s and every task's acc / acc_norm for both, and their difference.
Workload tokens are counted the same way for both: the sum over requests of the request's
input length (context + continuation - 1), which is what a one-request-per-row evaluator
feeds the model; come-repro's own forwarded tokens (after prefix sharing) are shown too.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TASKS = ["piqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "boolq", "openbookqa"]


def run_ours(args, out: Path) -> float:
    cmd = [
        str(ROOT / "target/release/come-repro"), "eval", "--model", args.model,
        "--tasks", ",".join(TASKS), "--limit", str(args.limit), "--threads", str(args.threads),
        "--output", str(out),
    ]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT)
    return time.perf_counter() - t0


def run_lm_eval(args):
    import lm_eval
    import torch
    from lm_eval.tasks import TaskManager

    torch.set_num_threads(args.threads)
    tm = TaskManager(include_path=str(ROOT / "benches/lm_eval_tasks"), include_defaults=False)
    t0 = time.perf_counter()
    res = lm_eval.simple_evaluate(
        model="hf",
        model_args=f"pretrained={args.model},dtype=float32",
        tasks=[f"cr_{t}" for t in TASKS],
        limit=args.limit,
        device="cpu",
        batch_size=args.lm_eval_batch_size,
        log_samples=True,
        task_manager=tm,
    )
    wall = time.perf_counter() - t0
    return res, wall, lm_eval.__version__


def workload_tokens(res, tokenizer) -> int:
    """Sum of input lengths over all requests, encoded as lm-eval encodes them."""
    total = 0
    for name, samples in res["samples"].items():
        for s in samples:
            for a in s["arguments"]:
                ctx, cont = a[0], a[1]
                n = len(ctx) - len(ctx.rstrip())
                if n:
                    cont = ctx[-n:] + cont
                    ctx = ctx[:-n]
                whole = tokenizer(ctx + cont)["input_ids"]
                total += len(whole) - 1
    return total


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="work/models/smollm2-135m-instruct")
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--lm-eval-batch-size", default="8")
    ap.add_argument("--out", default=None, help="write the comparison as JSON here")
    args = ap.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")

    with tempfile.TemporaryDirectory() as d:
        ours_path = Path(d) / "ours.json"
        ours_wall = run_ours(args, ours_path)
        ours = json.loads(ours_path.read_text())
    theirs, their_wall, version = run_lm_eval(args)

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(args.model)
    work = workload_tokens(theirs, tok)
    fwd = ours["come_repro"]["tokens_forwarded"]
    rows = []
    print(f"\nseven tasks x first {args.limit} docs, {args.threads} threads, fp32 CPU, {args.model}")
    print(f"{'':22}{'come-repro':>14}{'lm-eval ' + version:>18}")
    print(f"{'wall time (s)':22}{ours_wall:>14.1f}{their_wall:>18.1f}")
    print(f"{'workload tok/s':22}{work / ours_wall:>14.0f}{work / their_wall:>18.0f}")
    print(f"{'forwarded tokens':22}{fwd:>14}{work:>18}")
    print(f"{'speed-up':22}{their_wall / ours_wall:>13.2f}x")
    print(f"\n{'task':16}{'metric':10}{'come-repro':>12}{'lm-eval':>10}{'diff (pt)':>11}")
    worst = 0.0
    for t in TASKS:
        for m in ["acc", "acc_norm"]:
            key = f"{m},none"
            a = ours["results"].get(t, {}).get(key)
            b = theirs["results"].get(f"cr_{t}", {}).get(key)
            if a is None or b is None:
                continue
            diff = 100 * (a - b)
            worst = max(worst, abs(diff))
            rows.append({"task": t, "metric": m, "come_repro": a, "lm_eval": b})
            print(f"{t:16}{m:10}{a:>12.4f}{b:>10.4f}{diff:>11.2f}")
    print(f"\nlargest difference: {worst:.2f} points (goal <= 0.1)")
    if args.out:
        Path(args.out).write_text(json.dumps({
            "limit": args.limit, "threads": args.threads, "model": args.model,
            "lm_eval_version": version, "lm_eval_batch_size": args.lm_eval_batch_size,
            "come_repro_wall_s": ours_wall, "lm_eval_wall_s": their_wall,
            "workload_tokens": work, "come_repro_forwarded_tokens": fwd,
            "speedup": their_wall / ours_wall, "scores": rows, "max_diff_points": worst,
        }, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
