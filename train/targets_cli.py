"""`router add-target` and `router remove-target`: a scorer's set of predicted models changed without
retraining (train/add_target.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer


def add_target(
    scorer: Annotated[Path, typer.Option(help="A head scorer folder; it is read, never changed.")],
    labels: Annotated[
        list[Path], typer.Option("--labels", help="labels.jsonl of the new model's answers (repeatable).")
    ],
    out: Annotated[Path, typer.Option(help="The new scorer folder (must not exist, or be empty).")],
    target: Annotated[
        str | None, typer.Option(help="The model to add, where the labels hold several.")
    ] = None,
    train_rows: Annotated[
        int | None, typer.Option(min=10, help="Fit on at most this many training rows (a seeded sample).")
    ] = None,
    layer: Annotated[
        int | None, typer.Option(min=1, help="The layer the head reads; default: chosen on dev rows.")
    ] = None,
    states_cache: Annotated[
        Path | None, typer.Option(help="An .npz of prompt states kept between runs (computed once).")
    ] = None,
) -> None:
    """Fit a head for one more model on the scorer's frozen states; every other head stays bit-identical.

    The labels are split by the scorer's own rule: training rows fit the head, dev rows choose its layer,
    calibration rows its calibrator; test rows are left for `router eval-scorer --target`. A running server
    picks the new folder up when its policy names it (the policy reload).
    """
    from train.add_target import add_target as add

    try:
        report = add(scorer, labels, out, target, train_rows, layer, states_cache, log=typer.echo)
    except (ValueError, FileNotFoundError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(json.dumps({k: report[k] for k in ("layer", "rows", "positives", "seconds")}))
    typer.echo(f"{out}: added a head at layer {report['layer']}")


def remove_target(
    scorer: Annotated[Path, typer.Option(help="A head scorer folder; it is read, never changed.")],
    target: Annotated[str, typer.Option(help="The model to stop predicting.")],
    out: Annotated[Path, typer.Option(help="The new scorer folder (must not exist, or be empty).")],
) -> None:
    """Write a copy of the scorer that no longer predicts `target`; every other head stays bit-identical."""
    from train.add_target import remove_target as remove

    try:
        remove(scorer, target, out)
    except (ValueError, FileNotFoundError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(f"{out}: no longer predicts {target}")
