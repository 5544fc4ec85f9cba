#!/usr/bin/env python3
"""lm-eval's own `task_hashes` for the shipped task data, the golden of tests/tasks.rs
(`task_hashes_equal_lm_evals`).

lm-evaluation-harness 0.4.13 writes, per task, SHA-256 over every evaluated document's
doc_hash + prompt_hash + target_hash into its results JSON (`task_hashes`, computed by
`EvaluationTracker.save_results_aggregated` from the logged samples). This script runs
lm-eval itself, `simple_evaluate(model="dummy", log_samples=True)` (random
log-likelihoods: the hashes depend on the documents, prompts and targets only), on the
local task configs of benches/lm_eval_tasks/ (the official prompts, reading the shared
files, see scripts/golden/lm_eval_reference.py), then lets lm-eval's tracker write its
results file and copies `task_hashes` out of it. Run by hand, not by CI:

    .venv/bin/pip install lm_eval==0.4.13      # not part of scripts/setup.sh
    .venv/bin/python scripts/golden/lm_eval_task_hashes.py --out tests/golden/lm_eval_task_hashes.json

Two settings: every document (`all`) and lm-eval's `--limit 100` (`limit_100`, the first
100 documents of each task, as the CI grids evaluate). Tasks are named as come-repro names
them (`piqa`, ..., MMLU subjects as `mmlu_<subject>`, 0-shot). The data root is $COME_DATA
(default ../shared/data beside the project root).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from lm_eval_reference import TASKS, TASK_DIR, task_manager  # noqa: E402


def hashes(task_names: list[str], limit: int | None) -> dict[str, str]:
    import lm_eval
    from lm_eval.loggers import EvaluationTracker

    results = lm_eval.simple_evaluate(
        model="dummy",
        tasks=task_names,
        task_manager=task_manager(),
        num_fewshot=0,
        limit=limit,
        log_samples=True,
        random_seed=0,
        numpy_random_seed=0,
        torch_random_seed=0,
        fewshot_random_seed=1234,
    )
    samples = results.pop("samples")
    with tempfile.TemporaryDirectory() as d:
        tracker = EvaluationTracker(output_path=d)
        tracker.save_results_aggregated(results=results, samples=samples)
        written = list(Path(d).rglob("results_*.json"))
        if len(written) != 1:
            raise SystemExit(f"expected one results file from lm-eval, found {written}")
        task_hashes = json.loads(written[0].read_text())["task_hashes"]
    out = {}
    for name, h in task_hashes.items():
        ours = name.removeprefix("cr_")
        out[ours] = h
    return dict(sorted(out.items()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    import lm_eval

    subjects = sorted(p.stem.removeprefix("cr_mmlu_") for p in (TASK_DIR / "mmlu").glob("cr_mmlu_*.yaml"))
    names = TASKS + [f"cr_mmlu_{s}" for s in subjects]
    doc = {
        "lm_eval_version": lm_eval.__version__,
        "generator": "scripts/golden/lm_eval_task_hashes.py",
        "data_dir": "$COME_DATA",
        "all": hashes(names, None),
        "limit_100": hashes(names, 100),
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    print(f"wrote {a.out}: {len(doc['all'])} tasks", file=sys.stderr)


if __name__ == "__main__":
    main()
