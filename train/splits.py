"""Which rows train, which tune, which calibrate and which judge: a rule of the id and a seed, so anyone can
recompute it from the labels alone."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

BOUNDS = {"train": (0, 70), "dev": (70, 80), "calibration": (80, 90), "test": (90, 100)}
RULE = (
    "bucket = int(sha256(f'{seed}:{id}')[:8], 16) % 100, a context variant's id being its variant_of; "
    "train [0,70), dev [70,80), calibration [80,90), test [90,100); rows of held-out sources are test "
    "rows only"
)


def split_of(row_id: str, seed: int) -> str:
    bucket = int(hashlib.sha256(f"{seed}:{row_id}".encode()).hexdigest()[:8], 16) % 100
    return next(name for name, (low, high) in BOUNDS.items() if low <= bucket < high)


def split_rows(
    rows: Iterable[dict[str, Any]], seed: int, held_out: frozenset[str] = frozenset()
) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {name: [] for name in BOUNDS}
    for row in rows:
        # A question's three context variants share its split: none of them judges what another trained.
        key = row.get("variant_of") or row["id"]
        out["test" if row["source"] in held_out else split_of(key, seed)].append(row)
    return out
