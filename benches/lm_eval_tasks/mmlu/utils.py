"""MMLU loader for the cr_mmlu_* configs: the shared per-subject CSVs
($COME_DATA/mmlu/{dev,test}/<subject>_{dev,test}.csv, header
question,choice0,choice1,choice2,choice3,answer) in the cais/mmlu schema
{question, subject, choices, answer}.

Read with the csv module (newline="" keeps a CR inside a quoted field, as the file has it),
never with pandas, whose type inference would turn choices such as "0" or "None" into
numbers or NaN.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import datasets

PROJECT_ROOT = Path(__file__).resolve().parents[3]
HEADER = ["question", "choice0", "choice1", "choice2", "choice3", "answer"]


def data_dir() -> Path:
    env = os.environ.get("COME_DATA")
    return Path(env) if env else PROJECT_ROOT / ".." / "shared" / "data"


def read_subject(subject: str, split: str) -> list[dict]:
    path = data_dir() / "mmlu" / split / f"{subject}_{split}.csv"
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    if not rows or rows[0] != HEADER:
        raise ValueError(f"{path}: header is not {','.join(HEADER)}")
    return [
        {"question": r[0], "subject": subject, "choices": r[1:5], "answer": int(r[5])}
        for r in rows[1:]
    ]


def load_mmlu(subject: str, **kwargs):
    return {
        "test": datasets.Dataset.from_list(read_subject(subject, "test")),
        "dev": datasets.Dataset.from_list(read_subject(subject, "dev")),
    }
