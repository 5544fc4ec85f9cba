#!/usr/bin/env python3
"""Writes one cr_mmlu_<subject>.yaml per subject of $COME_DATA/mmlu/test and the group file
_cr_mmlu.yaml, the way lm_eval/tasks/mmlu/_generate_configs.py writes the official ones
(description "The following are multiple choice questions (with answers) about
<subject with _ as space>.\\n\\n"). Run from anywhere; rewrites the files beside it."""

import json
from pathlib import Path

from utils import data_dir

HERE = Path(__file__).resolve().parent

subjects = sorted(p.name[: -len("_test.csv")] for p in (data_dir() / "mmlu" / "test").glob("*_test.csv"))
for s in subjects:
    desc = f"The following are multiple choice questions (with answers) about {' '.join(s.split('_'))}.\n\n"
    text = (
        'include: _cr_mmlu_template_yaml\n'
        f'task: cr_mmlu_{s}\n'
        f'task_alias: {s}\n'
        f'dataset_kwargs:\n  subject: {s}\n'
        f'description: {json.dumps(desc)}\n'
    )
    (HERE / f"cr_mmlu_{s}.yaml").write_text(text)
group = "group: cr_mmlu\ntask:\n" + "".join(f"  - cr_mmlu_{s}\n" for s in subjects)
group += "aggregate_metric_list:\n  - metric: acc\n    weight_by_size: true\nmetadata:\n  version: 2\n"
(HERE / "_cr_mmlu.yaml").write_text(group)
print(f"{len(subjects)} subjects")
