#!/usr/bin/env python3
"""Golden values for MMLU's group aggregation, computed by lm-evaluation-harness 0.4.13's
own functions (writes tests/golden/lm_eval_mmlu_groups.json, read by tests/tasks.rs):

    .venv/bin/python -m pip install lm_eval==0.4.13
    .venv/bin/python scripts/golden/lm_eval_mmlu_groups.py --out tests/golden/lm_eval_mmlu_groups.json

Per-document 0/1 accuracies for nine subjects (two or three in each of lm-eval's four MMLU groups,
sizes 2 to 40, drawn from a fixed seed) are aggregated as lm-eval does: per subject
`mean` and `mean_stderr`; per group (`mmlu_stem`, ... and `mmlu` over all subjects, whose
configs say `weight_by_size: True` for `acc`) `aggregate_subtask_metrics` and
`pooled_sample_stderr` over the group's leaf subjects, as `lm_eval.api.group.Group.aggregate`
does. The subject-to-group map is read from the installed package's `mmlu_<subject>.yaml`
tags, not restated here.
"""

from __future__ import annotations

import argparse
import json
import random
from importlib import resources
from pathlib import Path

import yaml
from lm_eval.api.metrics import (
    aggregate_subtask_metrics,
    mean,
    mean_stderr,
    pooled_sample_stderr,
)

SUBJECTS = [
    "abstract_algebra",
    "high_school_physics",
    "anatomy",
    "clinical_knowledge",
    "nutrition",
    "econometrics",
    "sociology",
    "philosophy",
    "world_religions",
]


def category(subject: str) -> str:
    root = resources.files("lm_eval") / "tasks" / "mmlu" / "default"
    text = (root / f"mmlu_{subject}.yaml").read_text(encoding="utf-8")
    tag = yaml.safe_load(text)["tag"]
    return tag.removeprefix("mmlu_").removesuffix("_tasks")


def group(names: list[str], accs: dict[str, list[int]]) -> dict:
    cfg_root = resources.files("lm_eval") / "tasks" / "mmlu" / "default"
    agg = yaml.safe_load((cfg_root / "_mmlu.yaml").read_text())["aggregate_metric_list"][0]
    assert agg["metric"] == "acc" and agg["weight_by_size"] is True
    values = [mean(accs[s]) for s in names]
    stderrs = [mean_stderr(accs[s]) for s in names]
    sizes = [len(accs[s]) for s in names]
    return {
        "acc": aggregate_subtask_metrics(values, sizes, True),
        "acc_stderr": pooled_sample_stderr(stderrs, sizes),
        "n": sum(sizes),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=20261129)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    accs = {}
    for s in SUBJECTS:
        n = rng.randint(2, 40)
        p = rng.uniform(0.15, 0.6)
        xs = [int(rng.random() < p) for _ in range(n)]
        if len(set(xs)) == 1:  # keep every subject's stderr non-zero
            xs[0] = 1 - xs[0]
        accs[s] = xs
    cats: dict[str, list[str]] = {}
    for s in SUBJECTS:
        cats.setdefault(category(s), []).append(s)
    expected = {"mmlu": group(SUBJECTS, accs)}
    for c, names in sorted(cats.items()):
        expected[f"mmlu_{c}"] = group(names, accs)
    subjects = {
        s: {"acc": mean(accs[s]), "acc_stderr": mean_stderr(accs[s]), "docs": accs[s]}
        for s in SUBJECTS
    }
    out = {"lm_eval": "0.4.13", "seed": a.seed, "subjects": subjects, "expected": expected}
    a.out.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(expected, indent=1))


if __name__ == "__main__":
    main()
