#!/usr/bin/env python3
"""Reference side of the zero-shot tasks: real lm-evaluation-harness (0.4.x) on the shared
benchmark files, through the local task configs in benches/lm_eval_tasks/ (verbatim copies
of the official prompts, with loaders for the shared file formats).

Two modes, both run by hand (not in CI):

1. Requests only, no model (writes tests/golden/lm_eval_requests.json, read by
   tests/tasks.rs):
     .venv/bin/python scripts/golden/lm_eval_reference.py --requests-out tests/golden/lm_eval_requests.json
   lm-eval builds every request of every task; the file keeps the first 3 documents of
   each task verbatim plus a SHA-256 digest of all of them (format in `digest_docs`).

2. Scores with a Hugging Face checkpoint on the CPU (item-level parity and speed):
     .venv/bin/python scripts/golden/lm_eval_reference.py --model work/models/smollm2-135m-instruct \
         --limit 50 --out tests/golden/lm_eval_smollm2.json
   `lm_eval.simple_evaluate(model="hf", dtype=float32, device=cpu, log_samples=True)` on
   the first --limit documents of each task (lm-eval's --limit: the first N in file
   order). MMLU: the first --limit test documents of each subject in MMLU_SUBJECTS,
   0-shot, plus the first --limit-5shot documents of MMLU_5SHOT_SUBJECTS 5-shot (first_n
   from dev, as lm-eval's default mmlu). Per document the file keeps the (context,
   continuation) pairs, each choice's log-likelihood and is_greedy, acc/acc_norm; plus
   the aggregate metrics with stderrs, the versions and the wall time.

The data root is $COME_DATA (default ../shared/data beside the project root).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
ROOT = Path(__file__).resolve().parents[2]
TASK_DIR = ROOT / "benches" / "lm_eval_tasks"

TASKS = [
    "cr_piqa",
    "cr_hellaswag",
    "cr_winogrande",
    "cr_arc_easy",
    "cr_arc_challenge",
    "cr_boolq",
    "cr_openbookqa",
]
# One subject from each of lm-eval's four MMLU categories (stem, humanities, social
# sciences, other), fixed so that runs are comparable.
MMLU_SUBJECTS = ["abstract_algebra", "international_law", "high_school_geography", "clinical_knowledge"]
MMLU_5SHOT_SUBJECTS = ["abstract_algebra", "high_school_geography"]
# Subjects whose first documents are kept verbatim in the requests file (college_mathematics
# has a CRLF inside a quoted dev question, which reaches the 5-shot contexts).
MMLU_GOLDEN_SUBJECTS = ["abstract_algebra", "college_mathematics"]


def task_manager():
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(TASK_DIR), include_defaults=False)


def load_tasks(tm, names, num_fewshot):
    tasks = tm.load(names)["tasks"]
    out = {}
    for name, task in tasks.items():
        task.set_config(key="num_fewshot", value=num_fewshot)
        task.set_fewshot_seed(seed=1234)
        out[getattr(task.config, "task", name)] = task
    return out


def gold_of(task, doc, choices):
    """Gold index the way ConfigurableTask.process_results finds it."""
    gold = task.doc_to_text(doc) if task.multiple_input else task.doc_to_target(doc)
    if isinstance(gold, str):
        gold = choices.index(gold)
    return int(gold)


def task_docs(task):
    """Every document's (context, continuation) pairs as lm-eval builds them."""
    task.build_all_requests(limit=None)
    by_doc = {}
    for inst in task.instances:
        by_doc.setdefault(inst.doc_id, []).append((inst.idx, inst.args))
    docs = []
    for doc_id in sorted(by_doc):
        doc = task.eval_docs[doc_id]
        choices = [str(c) for c in task.doc_to_choice(doc)]
        reqs = [list(args) for _, args in sorted(by_doc[doc_id], key=lambda x: x[0])]
        docs.append(
            {"doc_id": doc_id, "requests": reqs, "gold": gold_of(task, doc, choices), "choices": choices}
        )
    return docs


def digest_docs(docs) -> str:
    """SHA-256 over all documents: per request context 0x1F continuation 0x1E, per choice
    text 0x1D, then the gold index in decimal and 0x1C (tests/tasks.rs builds the same)."""
    h = hashlib.sha256()
    for d in docs:
        for ctx, cont in d["requests"]:
            h.update(ctx.encode() + b"\x1f" + cont.encode() + b"\x1e")
        for c in d["choices"]:
            h.update(c.encode() + b"\x1d")
        h.update(str(d["gold"]).encode() + b"\x1c")
    return h.hexdigest()


def dump_requests(out: Path):
    import lm_eval

    tm = task_manager()
    result = {"lm_eval_version": lm_eval.__version__, "data_dir": "$COME_DATA", "tasks": {}, "mmlu": {}}
    for name, task in load_tasks(tm, TASKS, 0).items():
        docs = task_docs(task)
        result["tasks"][name.removeprefix("cr_")] = {
            "num_docs": len(docs),
            "sha256": digest_docs(docs),
            "first_docs": docs[:3],
        }
        print(f"{name}: {len(docs)} docs", file=sys.stderr)
    subjects = sorted(p.stem.removeprefix("cr_mmlu_") for p in (TASK_DIR / "mmlu").glob("cr_mmlu_*.yaml"))
    for shots in (0, 5):
        per = {}
        for name, task in load_tasks(tm, [f"cr_mmlu_{s}" for s in subjects], shots).items():
            s = name.removeprefix("cr_mmlu_")
            docs = task_docs(task)
            entry = {"num_docs": len(docs), "sha256": digest_docs(docs)}
            if s in MMLU_GOLDEN_SUBJECTS:
                entry["first_docs"] = docs[:3]
            per[s] = entry
        result["mmlu"][f"{shots}shot"] = per
        print(f"mmlu {shots}-shot: {sum(e['num_docs'] for e in per.values())} docs", file=sys.stderr)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {out} ({out.stat().st_size} bytes)", file=sys.stderr)


def sample_record(s):
    args = s["arguments"]
    if isinstance(args, dict):  # {"gen_args_0": {"arg_0": ctx, "arg_1": cont}, ...}
        pairs = [[a["arg_0"], a["arg_1"]] for _, a in sorted(args.items(), key=lambda kv: int(kv[0].split("_")[-1]))]
    else:
        pairs = [list(a) for a in args]
    resps = s["filtered_resps"]
    rec = {
        "doc_id": s["doc_id"],
        "requests": pairs,
        "loglik": [float(r[0]) for r in resps],
        "is_greedy": [bool(r[1]) for r in resps],
        "acc": s.get("acc"),
    }
    if "acc_norm" in s:
        rec["acc_norm"] = s["acc_norm"]
    return rec


def metrics_of(res):
    return {k.replace(",none", ""): v for k, v in res.items() if k != "alias" and not k.startswith("sample")}


def run_model(args):
    import lm_eval
    import torch
    import transformers

    torch.set_num_threads(args.threads)
    tm = task_manager()
    common = dict(
        model="hf",
        model_args=f"pretrained={args.model},dtype=float32",
        device="cpu",
        batch_size=args.batch_size,
        log_samples=True,
        task_manager=tm,
        random_seed=0,
        numpy_random_seed=1234,
        torch_random_seed=1234,
        fewshot_random_seed=1234,
    )
    runs = [
        ("0shot", TASKS + [f"cr_mmlu_{s}" for s in MMLU_SUBJECTS], 0, args.limit),
        ("mmlu_5shot", [f"cr_mmlu_{s}" for s in MMLU_5SHOT_SUBJECTS], 5, args.limit_5shot),
    ]
    out = {
        "model": str(args.model),
        "dtype": "float32",
        "device": "cpu",
        "batch_size": args.batch_size,
        "threads": args.threads,
        "versions": {
            "lm_eval": lm_eval.__version__,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "runs": {},
    }
    t_all = time.time()
    for label, tasks, shots, limit in runs:
        t0 = time.time()
        res = lm_eval.simple_evaluate(tasks=tasks, num_fewshot=shots, limit=limit, **common)
        wall = time.time() - t0
        per_task = {}
        for name in tasks:
            per_task[name.removeprefix("cr_")] = {
                "metrics": metrics_of(res["results"][name]),
                "docs": [sample_record(s) for s in sorted(res["samples"][name], key=lambda s: s["doc_id"])],
            }
        out["runs"][label] = {"num_fewshot": shots, "limit": limit, "wall_s": round(wall, 2), "tasks": per_task}
        print(f"{label}: {wall:.1f} s", file=sys.stderr)
    out["wall_s"] = round(time.time() - t_all, 2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests-out", type=Path, help="write lm-eval's requests (no model needed)")
    ap.add_argument("--model", type=Path, help="Hugging Face checkpoint directory")
    ap.add_argument("--limit", type=int, default=50, help="first N docs per task (per MMLU subject)")
    ap.add_argument("--limit-5shot", type=int, default=10, help="first N docs per 5-shot MMLU subject")
    ap.add_argument("--batch-size", default="8")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "tests" / "golden" / "lm_eval_smollm2.json")
    args = ap.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.requests_out:
        dump_requests(args.requests_out)
    if args.model:
        run_model(args)
    if not args.requests_out and not args.model:
        ap.error("give --requests-out and/or --model")


if __name__ == "__main__":
    main()
