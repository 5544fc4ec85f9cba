"""Loaders that turn the shared benchmark files into the documents lm-evaluation-harness's
official task configs expect (0.4.x field names), so that the prompt templates in the
cr_*.yaml files can stay verbatim copies of the official ones.

Each loader is a `custom_dataset` for lm-eval: it is called with the task's metadata and
dataset_kwargs and returns {"test": datasets.Dataset}. The data root is $COME_DATA, or
`../shared/data` beside the project root.

The files are read with the Python standard library only (json, csv), never with pandas
type inference, so that every string reaches the template byte for byte.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import datasets

# The official HellaSwag cleaning, imported rather than restated so that it cannot drift.
from lm_eval.tasks.hellaswag.utils import preprocess as hellaswag_preprocess

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def data_dir() -> Path:
    env = os.environ.get("COME_DATA")
    return Path(env) if env else PROJECT_ROOT / ".." / "shared" / "data"


def _jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _split(docs: list[dict]) -> dict:
    return {"test": datasets.Dataset.from_list(docs)}


# ---- PIQA: valid.jsonl {goal, sol1, sol2} + valid-labels.lst, one label per line --------


def load_piqa(**kwargs):
    root = data_dir() / "piqa"
    rows = _jsonl(root / "valid.jsonl")
    with open(root / "valid-labels.lst", encoding="utf-8") as f:
        labels = [int(x) for x in f.read().split()]
    if len(labels) != len(rows):
        raise ValueError(f"piqa: {len(rows)} examples but {len(labels)} labels")
    return _split(
        [{"goal": r["goal"], "sol1": r["sol1"], "sol2": r["sol2"], "label": y} for r, y in zip(rows, labels)]
    )


# ---- HellaSwag: 6 lines per item: "activity_label: ctx", gold, 4 endings ----------------
# The official process_docs builds the query from ctx_a and ctx_b.capitalize(); the shared
# file only has the joined text (ctx_b as in the raw data), so the query is the first line,
# cleaned with the official `preprocess` exactly as the official query is.


def load_hellaswag(**kwargs):
    path = data_dir() / "hellaswag" / "hellaswag_val_full.txt"
    with open(path, encoding="utf-8", newline="") as f:
        lines = f.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) % 6:
        raise ValueError(f"{path}: {len(lines)} lines is not a multiple of 6")
    docs = []
    for i in range(0, len(lines), 6):
        ctx, gold, endings = lines[i], lines[i + 1], lines[i + 2 : i + 6]
        docs.append(
            {
                "query": hellaswag_preprocess(ctx),
                "choices": [hellaswag_preprocess(e) for e in endings],
                "label": int(gold),
            }
        )
    return _split(docs)


# ---- WinoGrande: {context_options[2], continuation, gold} (already split at the blank) ----
# Official: doc_to_text = gold index, doc_to_choice = the two partial sentences,
# doc_to_target = the text after the blank, stripped.


def load_winogrande(**kwargs):
    rows = _jsonl(data_dir() / "winogrande" / "winogrande_xl_validation.jsonl")
    return _split(
        [
            {"context_options": r["context_options"], "continuation": r["continuation"], "gold": int(r["gold"])}
            for r in rows
        ]
    )


def winogrande_doc_to_text(doc):
    return doc["gold"]


def winogrande_doc_to_choice(doc):
    return list(doc["context_options"])


def winogrande_doc_to_target(doc):
    return doc["continuation"].strip()


# ---- ARC: {query: "Question: ...", choices[], gold} -> ai2_arc schema ----------------------


def _arc_like(path: Path, question_key: str, prefix: str):
    docs = []
    for r in _jsonl(path):
        q = r["query"]
        if prefix:
            if not q.startswith(prefix):
                raise ValueError(f"{path}: query does not start with {prefix!r}: {q[:60]!r}")
            q = q[len(prefix) :]
        labels = [chr(ord("A") + k) for k in range(len(r["choices"]))]
        docs.append(
            {
                question_key: q,
                "choices": {"text": list(r["choices"]), "label": labels},
                "answerKey": labels[int(r["gold"])],
            }
        )
    return _split(docs)


def load_arc_easy(**kwargs):
    return _arc_like(data_dir() / "arc_easy" / "arc_easy_test.jsonl", "question", "Question: ")


def load_arc_challenge(**kwargs):
    return _arc_like(data_dir() / "arc_challenge" / "arc_challenge_test.jsonl", "question", "Question: ")


# ---- OpenBookQA: {query: question stem, choices[4], gold} -> openbookqa schema ------------


def load_openbookqa(**kwargs):
    return _arc_like(data_dir() / "openbookqa" / "openbookqa_main_test.jsonl", "question_stem", "")


# ---- BoolQ: {query: "Passage: P\nQuestion: Q?", choices [no, yes], gold} -> super_glue ----
# The official template appends "?" to the question; the shared question already ends with
# one, so exactly one trailing "?" is removed here and the template puts it back.


def load_boolq(**kwargs):
    path = data_dir() / "boolq" / "boolq_validation.jsonl"
    docs = []
    for r in _jsonl(path):
        q = r["query"]
        if not q.startswith("Passage: "):
            raise ValueError(f"{path}: query does not start with 'Passage: '")
        cut = q.rindex("\nQuestion: ")
        passage, question = q[len("Passage: ") : cut], q[cut + len("\nQuestion: ") :]
        if not question.endswith("?"):
            raise ValueError(f"{path}: question does not end with '?': {question!r}")
        docs.append({"passage": passage, "question": question[:-1], "label": int(r["gold"])})
    return _split(docs)
