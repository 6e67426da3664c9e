"""`router eval-routing` end to end: real labels of two models matched by id, a two-target scorer, the
report on disk, and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from commands import app
from tests.tiny import make_head_scorer
from tests.tolerance import close
from train.jobs import read_labels

LABELS = Path(__file__).parents[1] / "train" / "labels"
SMOLLM2, GEMMA = "smollm2-135m-instruct", "gemma-3-270m"


@pytest.fixture(scope="module")
def labels(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, int]:
    """200 real Gemma labels, SmolLM2's on the same questions, and 30 SmolLM2 rows Gemma never labelled."""
    out = tmp_path_factory.mktemp("labels")
    gemma = read_labels([LABELS / f"{GEMMA}.jsonl"])[:200]
    ids = {r["id"] for r in gemma}
    smollm2 = read_labels([LABELS / f"{SMOLLM2}.jsonl", LABELS / f"{SMOLLM2}-efficientqa.jsonl"])
    mine = [r for r in smollm2 if r["id"] in ids] + [r for r in smollm2 if r["id"] not in ids][:30]
    files = out / "smollm2.jsonl", out / "gemma.jsonl"
    for path, rows in zip(files, (mine, gemma), strict=True):
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return files[0], files[1], len({r["id"] for r in mine} & ids)


def test_eval_routing_writes_the_report_for_matched_questions(
    tiny_model: Path, tmp_path: Path, labels: tuple[Path, Path, int]
) -> None:
    weak, strong, matched = labels
    scorer = make_head_scorer(tiny_model, tmp_path / "scorer", layer=3, targets=[SMOLLM2, GEMMA])
    out = tmp_path / "routing"
    args = ["eval-routing", "--scorer", str(scorer), "--labels", str(weak), "--labels", str(strong)]
    result = CliRunner().invoke(app, [*args, "--out", str(out), "--split", "all"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == matched  # only questions both models labelled
    assert sum(entry["n"] for entry in metrics["by_family"].values()) == matched
    assert set(metrics["by_family"]) <= {"qa", "choice", "passage"}  # Gemma labelled short answers only
    assert set(metrics["strategies"]) >= {"scorer", "cascade", "nprob", "random", "oracle"}
    assert metrics["strategies"]["random"]["apgr"]["value"] == pytest.approx(0.5)
    oracle, scored = (metrics["strategies"][name]["apgr"]["value"] for name in ("oracle", "scorer"))
    assert oracle > scored  # a random tiny scorer cannot match knowing every answer
    assert {"report.md", "pgr.png", "cost_quality.png"} <= {p.name for p in out.iterdir()}
    report = (out / "report.md").read_text()
    assert "matched by id" in report and "none given" in report
    # Prices change the cost curves, not the PGR ones.
    priced = tmp_path / "priced"
    costs = ["--cost", f"{SMOLLM2}=0", "--cost", f"{GEMMA}=2.5"]
    assert CliRunner().invoke(app, [*args, "--out", str(priced), "--split", "all", *costs]).exit_code == 0
    again = json.loads((priced / "metrics.json").read_text())
    # The scorer scored the questions afresh: the same within float noise (tests/tolerance.py).
    assert again["strategies"]["scorer"]["apgr"] == close(metrics["strategies"]["scorer"]["apgr"])
    assert again["targets"][GEMMA]["cost_per_1k"] == pytest.approx(2.5)


def test_eval_routing_names_what_is_wrong(
    tiny_model: Path, tmp_path: Path, labels: tuple[Path, Path, int]
) -> None:
    weak, strong, _ = labels
    one_target = make_head_scorer(tiny_model, tmp_path / "one", layer=3, targets=[SMOLLM2])
    runner = CliRunner()
    base = ["eval-routing", "--out", str(tmp_path / "x"), "--split", "all"]
    result = runner.invoke(
        app, [*base, "--scorer", str(one_target), "--labels", str(weak), "--labels", str(strong)]
    )
    assert result.exit_code == 2 and f"predicts {SMOLLM2}, not {GEMMA}" in result.output
    result = runner.invoke(app, [*base, "--scorer", str(one_target), "--labels", str(weak)])
    assert result.exit_code == 2 and "at least two models" in result.output
    result = runner.invoke(
        app,
        [*base, "--scorer", str(one_target), "--labels", str(weak), "--labels", str(strong), "--cost", "x"],
    )
    assert result.exit_code == 2 and "MODEL=DOLLARS" in result.output
