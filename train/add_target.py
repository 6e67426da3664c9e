"""A head for one more model on a scorer as it is: no retraining, every other head left bit-identical.

The new model's labelled rows are split by the scorer's own rule (its seed and held-out sources), so its
test rows are the questions the scorer never trained on. A frozen linear probe (`train.probe.LinearProbe`)
is fitted on the training rows' states at each candidate layer, read through the scorer's adapter, and the
layer is chosen on dev rows as the jointly trained heads' was: each source's dev rows judged by a probe
fitted on the other sources' (`train.head.transfer_folds`), the shallowest within `LAYER_TOLERANCE` of the
best. Only layers at or below the scorer's are candidates: the forward pass already runs through them, so
the new head adds one dot product to a score. Its calibrator is fitted on the calibration rows.
"""

from __future__ import annotations

import random
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import calibrators
from localmodel import LocalModel
from scorers.card import ScorerCard, TargetCard
from scorers.head import HEAD_FILE, HeadScorer
from train.data import QARecord, prompt
from train.head import transfer_folds
from train.jobs import read_labels
from train.probe import LinearProbe
from train.splits import split_rows
from train.states_cache import StatesCache

Row = dict[str, Any]
LAYER_STEP = 5
"""Candidate layers: every fifth up to the scorer's own (and it)."""
LAYER_TOLERANCE = 0.01


@dataclass(frozen=True)
class AddedHead:
    model: str
    layer: int
    weight: np.ndarray
    bias: float
    calibrator: calibrators.Calibrator | None
    report: dict[str, Any]


def add_target(
    folder: Path,
    label_files: list[Path],
    out: Path,
    model: str | None = None,
    train_rows: int | None = None,
    layer: int | None = None,
    cache: Path | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Write to `out` the scorer in `folder` with a head for the model that labelled `label_files` (`model`
    picks one where the files hold several). Returns what the card records about the new head."""
    started = time.perf_counter()
    card = ScorerCard.load(folder)
    if card.method != "head":
        raise ValueError(f"{folder}: a '{card.method}' scorer; only a head scorer takes another target")
    rows, model = _rows_of(read_labels(label_files), model)
    if model in {t.model for t in card.predicted(folder)}:
        raise ValueError(f"{folder} already predicts {model} (remove-target drops it first)")
    training = card.extra().get("training", {})
    splits = split_rows(rows, training.get("seed", 0), frozenset(training.get("held_out_sources", [])))
    train = splits["train"]
    if train_rows is not None:
        train = random.Random(0).sample(train, min(train_rows, len(train)))
    scorer = HeadScorer(LocalModel(card.base_model), folder)
    states = StatesCache(scorer, cache)
    head = fit_head(states, model, train, splits["dev"], splits["calibration"], layer, log)
    head.report.update(labels=[str(p) for p in label_files], seconds=round(time.perf_counter() - started, 1))
    write_with_head(folder, out, card, head)
    return head.report


def _rows_of(rows: list[Row], model: str | None) -> tuple[list[Row], str]:
    models = sorted({r.get("model") or "" for r in rows})
    if model is None:
        if len(models) != 1 or not models[0]:
            raise ValueError(f"the labels hold rows of {models or 'no model'}: name one with --target")
        model = models[0]
    chosen = [r for r in rows if r.get("model") == model]
    if not chosen:
        raise ValueError(f"no rows labelled by {model} (the labels hold {', '.join(models)})")
    return chosen, model


def fit_head(
    states: StatesCache,
    model: str,
    train: list[Row],
    dev: list[Row],
    calibration: list[Row],
    layer: int | None,
    log: Callable[[str], None],
) -> AddedHead:
    """The probe at `layer`, else at the candidate layer dev rows rank best (see the module's docstring)."""
    if not 0 < sum(r["correct"] for r in train) < len(train):  # a probe fits on both classes
        raise ValueError(
            f"{model}'s {len(train)} training rows are all right or all wrong; a head needs both"
        )
    top = states.scorer.layer
    y_train, y_dev = _labels(train), _labels(dev)
    if not layer and not 0 < y_dev.sum() < len(y_dev):  # nothing to rank layers by
        log(f"{model}: its {len(dev)} dev rows are all right or all wrong; the head reads layer {top}")
        layer = top
    candidates = [layer] if layer else sorted({*range(LAYER_STEP, top, LAYER_STEP), top})
    x_train = row_states(states, train, candidates)
    by_layer: dict[int, float] = {}
    chosen = layer or 0
    if not layer:  # a layer given is no choice: dev rows are not read
        x_dev, folds = row_states(states, dev, candidates), transfer_folds(train, dev)
        by_layer = {
            k: float(np.mean([_auroc(x_train[k][f], y_train[f], x_dev[k][j], y_dev[j]) for f, j in folds]))
            for k in candidates
        }
        best = max(by_layer.values())
        chosen = min(k for k, v in by_layer.items() if v >= best - LAYER_TOLERANCE)
        log(f"{model}: layer {chosen} (dev AUROC by layer: {by_layer})")
    probe = LinearProbe().fit(x_train[chosen], y_train)
    raw = probe.transform(row_states(states, calibration, [chosen])[chosen])
    y_cal = _labels(calibration)
    calibrator = calibrators.PlattScaling().fit(raw, y_cal) if 0 < y_cal.sum() < len(y_cal) else None
    report = {
        "layer": chosen,
        "dev_auroc_by_layer": {str(k): round(v, 4) for k, v in by_layer.items()},
        "rows": {"train": len(train), "dev": len(dev), "calibration": len(calibration)},
        "positives": {"train": int(y_train.sum()), "dev": int(y_dev.sum()), "calibration": int(y_cal.sum())},
        "probe_c": probe.c,
    }
    return AddedHead(model, chosen, probe.weights, probe.bias, calibrator, report)


def _auroc(x_fit: np.ndarray, y_fit: np.ndarray, x_judged: np.ndarray, y_judged: np.ndarray) -> float:
    return calibrators.auroc(LinearProbe().fit(x_fit, y_fit).transform(x_judged), y_judged)


def row_states(states: StatesCache, rows: list[Row], layers: list[int]) -> dict[int, np.ndarray]:
    return states([prompt(QARecord.of_label(r)) for r in rows], layers)


def _labels(rows: list[Row]) -> np.ndarray:
    return np.array([r["correct"] for r in rows], dtype=float)


def file_stem(model: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", model)


def write_with_head(folder: Path, out: Path, card: ScorerCard, head: AddedHead) -> None:
    """A copy of `folder` (every file as it was) with the head, its calibrator and the card naming them."""
    import torch
    from safetensors.torch import save_file

    def add(staged: Path) -> None:
        stem = file_stem(head.model)
        head_file, calibrator_file = f"head.{stem}.safetensors", f"calibrator.{stem}.json"
        weight = torch.from_numpy(head.weight).float().reshape(1, -1)
        save_file({"weight": weight, "bias": torch.tensor([head.bias]).float()}, str(staged / head_file))
        if head.calibrator is not None:
            head.calibrator.save(staged / calibrator_file)
        target = TargetCard(
            model=head.model,
            calibrator=calibrator_file if head.calibrator is not None else None,
            base_rate=head.report["positives"]["train"] / max(head.report["rows"]["train"], 1),
            rows=head.report["rows"]["train"],
            head=head_file,
            layer=head.layer,
        )
        added = {**card.extra().get("added_targets", {}), head.model: head.report}
        ScorerCard.model_validate(
            {**card.model_dump(), "targets": [*card.predicted(folder), target], "added_targets": added}
        ).save(staged)

    replaced_copy(folder, out, add)


def remove_target(folder: Path, model: str, out: Path) -> None:
    """A copy of `folder` that no longer predicts `model`: its head (its row of the joint head, or its own
    file) and its calibrator dropped, every other file as it was."""
    card = ScorerCard.load(folder)
    targets = card.predicted(folder)
    names = [t.model for t in targets]
    if model not in names:
        raise ValueError(f"{folder} does not predict {model} (it predicts {', '.join(names)})")
    if len(targets) == 1:
        raise ValueError(f"{model} is the only model {folder} predicts; a scorer needs one")
    gone = targets[names.index(model)]

    def drop(staged: Path) -> None:
        for name in (gone.head, gone.calibrator):
            if name:
                (staged / name).unlink(missing_ok=True)
        if gone.head is None:
            _drop_joint_row(staged, [t for t in targets if t.head is None].index(gone))
        data = card.model_dump()
        if names.index(model) == 0:
            data.pop("reference_scores", None)  # the drift reference was the removed primary's scores
        data.get("added_targets", {}).pop(model, None)
        data["targets"] = [t.model_dump(exclude_none=True) for t in targets if t.model != model]
        ScorerCard.model_validate(data).save(staged)

    replaced_copy(folder, out, drop)


def _drop_joint_row(folder: Path, row: int) -> None:
    """head.safetensors without one row; the other rows' values are copied, not recomputed."""
    from safetensors.torch import load, save_file

    tensors = load((folder / HEAD_FILE).read_bytes())
    keep = [i for i in range(tensors["bias"].shape[0]) if i != row]
    save_file({k: v[keep].contiguous() for k, v in tensors.items()}, str(folder / HEAD_FILE))


def replaced_copy(folder: Path, out: Path, change: Callable[[Path], None]) -> None:
    """Copy `folder`, change the copy, then move it to `out` whole: a failure leaves nothing half-written."""
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out}: not empty; name a new folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as scratch:
        staged = Path(scratch) / "scorer"
        shutil.copytree(folder, staged, ignore=shutil.ignore_patterns(".*"))
        change(staged)
        ScorerCard.load(staged)  # what was written reads back
        if out.exists():
            out.rmdir()
        staged.rename(out)
