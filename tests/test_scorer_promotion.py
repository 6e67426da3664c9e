"""Promoting a scorer: `router eval-routing --candidate` gates it (exit 1 when the candidate routes worse
beyond noise), and a running server takes the new folder on a reload, saying which scorer is in force in
x-router-scorer and router_scorer_info."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
from safetensors import safe_open
from safetensors.torch import save_file
from typer.testing import CliRunner

from commands import app
from localmodel import LocalModel
from policies import load_policy
from scorers.base import ScoreItem
from scorers.card import ScorerCard
from scorers.head import HEAD_FILE, HeadScorer
from tests.conftest import Served
from tests.tiny import make_head_scorer
from train.jobs import read_labels, target_confidences
from train.routing_compare import judge
from train.routing_job import judged_rows, matched_rows
from train.splits import split_of

LABELS = Path(__file__).parents[1] / "train" / "labels"
SMOLLM2, GEMMA = "smollm2-135m-instruct", "gemma-3-270m"
ADMIN_KEY = "admin-key-for-tests"
ADAPTER = "adapter_model.safetensors"
ROWS, RESAMPLES = 120, 200  # plenty for the gaps here; the defaults (1000 resamples) take seconds more


def negated(folder: Path, name: str, only: str = "") -> None:
    """Negate the tensors of one safetensors file in place (those whose name contains `only`): a head's
    weight and bias negated turn every raw score r into 1 - r; an adapter's lora_B negated, its update."""
    path = folder / name
    with safe_open(str(path), "pt") as f:
        tensors = {key: -f.get_tensor(key) if only in key else f.get_tensor(key) for key in f.keys()}  # noqa: SIM118
        metadata = f.metadata()
    save_file(tensors, str(path), metadata=metadata)


def altered(source: Path, out: Path) -> Path:
    """A copy of a head scorer folder with every weight changed and its card reading another layer."""
    shutil.copytree(source, out)
    negated(out, HEAD_FILE)
    negated(out, ADAPTER, only="lora_B")
    card = ScorerCard.load(out)
    card.model_copy(update={"layer": (card.layer or 1) - 1}).save(out)
    return out


# `router eval-routing --candidate` ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def routing(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path, Path]:
    """(a two-target scorer, its copy, the same with its head negated, labels dir): ROWS real questions,
    labelled so that the scorer routes them well: SmolLM2 right where the scorer's expected gain from
    Gemma is below the median, Gemma always right."""
    root = tmp_path_factory.mktemp("promotion")
    current = make_head_scorer(tiny_model, root / "current", layer=3, targets=[SMOLLM2, GEMMA])
    same = Path(shutil.copytree(current, root / "same"))
    worse = Path(shutil.copytree(current, root / "worse"))
    negated(worse, HEAD_FILE)
    gemma = read_labels([LABELS / f"{GEMMA}.jsonl"])[:ROWS]
    smollm2 = [{**r, "model": SMOLLM2} for r in gemma]
    _, rows = matched_rows(smollm2 + gemma)
    confidences = target_confidences(HeadScorer(LocalModel(str(tiny_model)), current), rows)
    gain = confidences[GEMMA] - confidences[SMOLLM2]
    right = {r["id"]: bool(g < np.median(gain)) for r, g in zip(rows, gain, strict=True)}
    labels = root / "labels"
    labels.mkdir()
    for model, rows_of in ((SMOLLM2, smollm2), (GEMMA, gemma)):
        written = [{**r, "correct": right[r["id"]] if model == SMOLLM2 else True} for r in rows_of]
        (labels / f"{model}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in written))
    return current, same, worse, labels


def compare(current: Path, candidate: Path, labels: Path, out: Path) -> tuple[int, str]:
    args = ["eval-routing", "--scorer", str(current), "--candidate", str(candidate), "--out", str(out)]
    files = [arg for model in (SMOLLM2, GEMMA) for arg in ("--labels", str(labels / f"{model}.jsonl"))]
    result = CliRunner().invoke(app, [*args, *files, "--split", "all", "--resamples", str(RESAMPLES)])
    return result.exit_code, result.output


def test_the_same_scorer_is_no_worse_within_noise(
    routing: tuple[Path, Path, Path, Path], tmp_path: Path
) -> None:
    current, same, _, labels = routing
    code, output = compare(current, same, labels, tmp_path)
    assert code == 0, output
    assert output.splitlines()[-1] == "candidate no worse within noise"
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["n"] == ROWS and metrics["verdict"] == "no worse within noise"
    assert metrics["bootstrap"] == {"level": 0.95, "n_resamples": RESAMPLES, "seed": 0, "paired": True}
    for key in ("apgr", "cost_at_95"):
        difference = metrics["differences"][key]
        assert (difference["value"], difference["low"], difference["high"]) == (0.0, 0.0, 0.0)
    assert metrics["scorers"]["current"] == metrics["scorers"]["candidate"]
    assert metrics["scorers"]["current"]["apgr"]["value"] > 0.7  # the labels follow its confidences
    report = (tmp_path / "report.md").read_text()
    assert "**Verdict: the candidate is no worse within noise**." in report and "## By source" in report
    for role in ("current", "candidate"):  # each scorer's own report, on the same rows
        assert json.loads((tmp_path / role / "metrics.json").read_text())["n"] == ROWS


def test_a_worse_candidate_fails_with_one_line(
    routing: tuple[Path, Path, Path, Path], tmp_path: Path
) -> None:
    current, _, worse, labels = routing
    code, output = compare(current, worse, labels, tmp_path)
    assert code == 1, output
    [line] = [line for line in output.splitlines() if line.startswith("candidate ")]
    assert line.startswith("candidate worse beyond noise: APGR candidate - current -")
    assert "wholly below 0" in line and "cost at 95% candidate - current +" in line
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["verdict"] == "worse beyond noise" and len(metrics["reasons"]) == 2
    assert metrics["differences"]["apgr"]["high"] < 0 < metrics["differences"]["cost_at_95"]["low"]


def estimate(value: float, low: float, high: float) -> dict[str, float]:
    return {"value": value, "low": low, "high": high}


@pytest.mark.parametrize(
    ("apgr", "cost", "verdict"),
    [
        (estimate(-0.05, -0.09, -0.01), estimate(0.1, -0.2, 0.3), "worse beyond noise"),
        (estimate(0.0, -0.04, 0.03), estimate(0.2, 0.05, 0.4), "worse beyond noise"),
        (estimate(0.08, 0.01, 0.15), estimate(0.2, 0.05, 0.4), "worse beyond noise"),  # worse wins
        (estimate(0.0, -0.04, 0.03), estimate(-0.1, -0.3, 0.1), "no worse within noise"),
        (estimate(0.08, 0.01, 0.15), None, "better"),
        (None, estimate(-0.1, -0.3, -0.02), "better"),
    ],
)
def test_the_verdict_reads_the_paired_intervals(
    apgr: dict[str, float] | None, cost: dict[str, float] | None, verdict: str
) -> None:
    figures = {"cost_at_95": estimate(1, 1, 1)}
    said, reasons = judge({"current": figures, "candidate": figures}, {"apgr": apgr, "cost_at_95": cost})
    assert said == verdict and bool(reasons) == (verdict != "no worse within noise")


def test_a_candidate_that_never_reaches_95_percent_is_worse() -> None:
    scorers = {"current": {"cost_at_95": estimate(1, 1, 1)}, "candidate": {"cost_at_95": None}}
    assert judge(scorers, {"cost_at_95": None})[0] == "worse beyond noise"


def test_the_rows_judged_are_held_out_for_both_scorers() -> None:
    rows = [{"id": f"q{i}", "source": "held" if i % 5 == 0 else "kept"} for i in range(400)]
    first, second = {"seed": 0, "held_out_sources": ["held"]}, {"seed": 1}
    both = judged_rows(rows, [first, second], "test")
    assert both
    for training in (first, second):
        assert {r["id"] for r in both} <= {r["id"] for r in judged_rows(rows, [training], "test")}
    # A held-out source's row is a test row of the first scorer; of the second only in its test split.
    first_tests = {r["id"] for r in rows if r["source"] == "held" or split_of(r["id"], 0) == "test"}
    assert {r["id"] for r in both} == {i for i in first_tests if split_of(i, 1) == "test"}
    assert judged_rows(rows, [first, second], "all") == rows


def test_two_head_scorers_on_one_model_keep_their_own_adapters(tiny_model: Path, tiny_head: Path) -> None:
    """A reload's scorer loads beside the serving one; closing the old one leaves the new one as it was."""
    model = LocalModel(str(tiny_model))
    items = [ScoreItem([{"role": "user", "content": "Who wrote Hamlet?"}], 8)]
    old = HeadScorer(model, tiny_head)
    before = old.raw_scores(items)
    new = HeadScorer(model, tiny_head)
    assert new.adapter != old.adapter and (old.raw_scores(items) == before).all()
    assert old.adapter is not None
    old.close()
    with pytest.raises(KeyError):
        model.adapter_config(old.adapter)
    assert (new.raw_scores(items) == before).all()


# A reload takes the replaced folder ---------------------------------------------------------------------

POLICY = """\
name: promoted
scorer: {{method: head, model: "{model}", adapter: "{scorer}"}}
targets: {{local: {{kind: local, max_tokens: 2}}}}
rules:
  - when: {{confidence_at_least: 0.0}}
    action: answer_with
    target: local
  - action: refuse
"""


@pytest.fixture
def served_scorer(
    serve: Callable[..., Served], tiny_model: Path, tiny_head: Path, tmp_path: Path
) -> tuple[Served, Path, Path]:
    """(a server whose policy reads scorer/, a copy of tiny_head; a scorer of other weights and card)."""
    folder = Path(shutil.copytree(tiny_head, tmp_path / "scorer"))
    other = altered(tiny_head, tmp_path / "other")
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY.format(model=tiny_model, scorer=folder))
    return serve(load_policy(path), policy_path=path, admin_key=ADMIN_KEY), folder, other


def ask(served: Served, http: httpx.Client) -> httpx.Response:
    body = {"model": "router", "messages": [{"role": "user", "content": "Who wrote Hamlet?"}]}
    response = http.post(f"{served.base_url}/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    return response


def scored(served: Served, http: httpx.Client) -> dict[str, object]:
    body = {"messages": [{"role": "user", "content": "Who wrote Hamlet?"}]}
    return dict(http.post(f"{served.base_url}/v1/score", json=body).json())


def reload(served: Served, http: httpx.Client) -> httpx.Response:
    return http.post(f"{served.base_url}/admin/reload", headers={"authorization": f"Bearer {ADMIN_KEY}"})


def scorer_info(served: Served, http: httpx.Client) -> list[str]:
    scrape = http.get(f"{served.base_url}/metrics").text
    return [line for line in scrape.splitlines() if line.startswith("router_scorer_info{")]


def test_a_replaced_scorer_folder_is_served_after_a_reload(
    served_scorer: tuple[Served, Path, Path], http: httpx.Client
) -> None:
    served, folder, other = served_scorer
    before = scored(served, http)
    old = ask(served, http).headers["x-router-scorer"]
    assert old == before["scorer_version"] and old.startswith("head:")
    assert scorer_info(served, http) == [f'router_scorer_info{{version="{old}"}} 1.0']

    shutil.copytree(other, folder, dirs_exist_ok=True)  # as `cp -r`: into the files the server read
    assert scored(served, http)["raw_score"] == before["raw_score"]  # nothing changes before the reload
    response = reload(served, http)
    assert response.status_code == 200, response.text
    new = response.json()["scorer_version"]
    assert new != old and new.endswith(":layer2:last")  # the card's layer, not only the weights
    assert ask(served, http).headers["x-router-scorer"] == new
    after = scored(served, http)
    assert after["scorer_version"] == new and after["raw_score"] != before["raw_score"]
    assert scorer_info(served, http) == [f'router_scorer_info{{version="{new}"}} 1.0']


def test_a_broken_replacement_leaves_the_serving_scorer_whole(
    served_scorer: tuple[Served, Path, Path], http: httpx.Client
) -> None:
    served, folder, other = served_scorer
    before = scored(served, http)
    # Half a promotion: the other adapter is in, the head that goes with it is not readable.
    for name in (ADAPTER, "adapter_config.json"):
        shutil.copy(other / name, folder / name)
    (folder / HEAD_FILE).write_bytes(b"not a safetensors file")
    response = reload(served, http)
    assert response.status_code == 400 and "Reload failed" in response.text
    after = scored(served, http)
    for key in ("scorer_version", "raw_score", "confidence"):
        assert after[key] == before[key], key
    assert ask(served, http).headers["x-router-scorer"] == before["scorer_version"]
