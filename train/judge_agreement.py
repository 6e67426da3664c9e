"""How far an LLM judge agrees with the gold graders, read off a labels file written with `build-dataset
--grader judge`: each of its rows carries the judge's verdict (`correct`) and, beside it, the gold grader's
(`grade_details.gold`). Agreement alone flatters a judge on rows that are nearly all wrong (one that always
says "incorrect" agrees 97% of the time on SmolLM2's GSM8K answers), so the figure that decides is Cohen's
kappa, which counts agreement beyond chance; a judge also has to give a verdict at all.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import cohen_kappa_score

from train.task_head import wilson

KAPPA_BAR = 0.6
"""The kappa from which a judge's labels are trusted to teach certainty where no gold grader exists (chat):
"substantial" agreement on Landis and Koch's scale."""
BOOTSTRAP = 1000


@dataclass(frozen=True)
class Agreement:
    """One gold grader's rows: how many the judge gave a verdict on, and how those verdicts compare."""

    grader: str
    rows: int
    judged: int
    gold_right: int
    judge_right: int
    agree: int
    kappa: float | None
    kappa_interval: tuple[float, float] | None
    agreement_interval: tuple[float, float] | None
    judge: str
    completion_tokens: int
    cost: float

    @property
    def trusted(self) -> bool:
        """Every row judged is not asked; enough of them (half), and agreement beyond chance at the bar."""
        return self.kappa is not None and self.kappa >= KAPPA_BAR and 2 * self.judged >= self.rows


def judged_rows(paths: Iterable[Path]) -> list[dict[str, Any]]:
    """The rows a judge graded that have a gold grade beside the verdict (rows with none are left out)."""
    rows = []
    for path in paths:
        for line in path.read_text(encoding="utf-8").split("\n"):
            if line.strip():
                row = json.loads(line)
                if row.get("grader") == "judge" and "gold" in row.get("grade_details", {}):
                    rows.append(row)
    return rows


def agreement(rows: list[dict[str, Any]], seed: int = 0) -> list[Agreement]:
    """Per gold grader, in name order."""
    by_grader: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_grader[row["grade_details"]["gold"]["grader"]].append(row)
    return [_agreement(name, group, seed) for name, group in sorted(by_grader.items())]


def _agreement(grader: str, rows: list[dict[str, Any]], seed: int) -> Agreement:
    judged = [r for r in rows if r["correct"] is not None and _gold(r) is not None]
    judge = np.array([bool(r["correct"]) for r in judged])
    gold = np.array([bool(_gold(r)) for r in judged])
    agree = int((judge == gold).sum())
    details = [r["grade_details"] for r in rows]
    return Agreement(
        grader=grader,
        rows=len(rows),
        judged=len(judged),
        gold_right=int(gold.sum()),
        judge_right=int(judge.sum()),
        agree=agree,
        kappa=_kappa(gold, judge),
        kappa_interval=_kappa_interval(gold, judge, seed),
        agreement_interval=wilson(agree, len(judged)) if judged else None,
        judge=", ".join(sorted({d["judge"] for d in details if "judge" in d})),
        completion_tokens=sum(d.get("completion_tokens", 0) for d in details),
        cost=sum(d.get("cost", 0.0) for d in details),
    )


def _gold(row: dict[str, Any]) -> bool | None:
    correct: bool | None = row["grade_details"]["gold"]["correct"]
    return correct


def _kappa(gold: np.ndarray, judge: np.ndarray) -> float | None:
    """None where it is undefined: no rows, or both sides saying one thing throughout."""
    if len(gold) == 0 or (len(set(gold)) == 1 and len(set(judge)) == 1):
        return None
    return float(cohen_kappa_score(gold, judge))


def _kappa_interval(gold: np.ndarray, judge: np.ndarray, seed: int) -> tuple[float, float] | None:
    """A 95% percentile bootstrap interval over rows; None where kappa is undefined on most resamples."""
    if len(gold) == 0:
        return None
    rng = np.random.default_rng(seed)
    kappas = []
    for _ in range(BOOTSTRAP):
        pick = rng.integers(0, len(gold), len(gold))
        kappa = _kappa(gold[pick], judge[pick])
        if kappa is not None:
            kappas.append(kappa)
    if 2 * len(kappas) < BOOTSTRAP:
        return None
    low, high = np.percentile(kappas, [2.5, 97.5])
    return float(low), float(high)


def report(agreements: list[Agreement]) -> str:
    """A Markdown table, one gold grader a row, and what it means for the judge."""
    lines = [
        "| gold grader | judge | rows | judged | gold right | judge right | agreement | Cohen's kappa "
        "| cost |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for a in agreements:
        share = "-"
        if a.agreement_interval is not None:
            low, high = a.agreement_interval
            share = f"{a.agree / a.judged:.3f} [{low:.2f}, {high:.2f}]"
        kappa = "undefined" if a.kappa is None else f"{a.kappa:.3f}"
        if a.kappa_interval is not None:
            kappa += f" [{a.kappa_interval[0]:.2f}, {a.kappa_interval[1]:.2f}]"
        lines.append(
            f"| {a.grader} | {a.judge or '-'} | {a.rows} | {a.judged} | {a.gold_right} | {a.judge_right} "
            f"| {share} | {kappa} | ${a.cost:.4f} ({a.completion_tokens} tokens out) |"
        )
    trusted = [a.grader for a in agreements if a.trusted]
    verdict = (
        f"Trusted (kappa >= {KAPPA_BAR} on at least half the rows judged) on: {', '.join(trusted)}."
        if trusted
        else f"Not trusted: on no gold grader does the judge give a verdict on half the rows with kappa >= "
        f"{KAPPA_BAR}. Its labels must not teach certainty."
    )
    return "\n".join([*lines, "", verdict, ""])


def write(agreements: list[Agreement], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    metrics = {"kappa_bar": KAPPA_BAR, "graders": [asdict(a) | {"trusted": a.trusted} for a in agreements]}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (out / "report.md").write_text(report(agreements))
