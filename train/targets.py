"""Labels from several models on the same questions: one row per question, each model's grade beside it.

A labels file holds one model's answers (`model` on every row, from build-dataset). A scorer that predicts
several models trains on the questions any of them labelled; each head learns from the rows its model
labelled, and rows are matched across models by id.
"""

from __future__ import annotations

from typing import Any

from train.data import QARecord

Row = dict[str, Any]
OWN_FIELDS = ("correct", "greedy", "nprob", "samples", "consistency", "sample_accuracy")
"""What a labels row says about its model's answer, not about the question."""


def targets_of(rows: list[Row], default: str) -> list[str]:
    """The models the rows were labelled by, in the order they first appear (the first labels file's model
    is the primary target); a row without `model` was labelled by `default`."""
    return list(dict.fromkeys(r.get("model") or default for r in rows))


def merged(rows: list[Row], default: str) -> list[Row]:
    """One row per id: the question's fields, `labels` (model -> 0/1), and the primary target's own fields
    (`correct` is None where the primary did not label the question)."""
    primary = targets_of(rows, default)[0]
    by_id: dict[str, Row] = {}
    for row in rows:
        model = row.get("model") or default
        question = {name: row[name] for name in QARecord.model_fields if name in row}
        entry = by_id.setdefault(row["id"], {**question, "correct": None, "labels": {}})
        if model in entry["labels"]:
            raise ValueError(f"{row['id']}: labelled twice by {model}")
        entry["labels"][model] = float(row["correct"])
        if model == primary:
            entry.update({name: row[name] for name in OWN_FIELDS if name in row})
    return list(by_id.values())


def labelled_by(rows: list[Row], model: str) -> list[Row]:
    return [r for r in rows if model in r["labels"]]
