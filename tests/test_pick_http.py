"""A pick policy over real HTTP: one scorer pass predicts both targets, and requests go each way."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from localmodel import LocalModel
from policies import Policy
from scorers import ScoreItem, calibrate
from scorers.head import HeadScorer
from tests.conftest import Served, policy_from
from tests.tiny import make_head_scorer

QUESTIONS = [
    "What is the capital of France?",
    "Who painted the Mona Lisa?",
    "How many legs does a spider have?",
    "Which planet is known as the red planet?",
    "What is the boiling point of water in Celsius?",
    "Who wrote Pride and Prejudice?",
    "What is the largest ocean on Earth?",
    "In which year did the Berlin Wall fall?",
    "What gas do plants absorb from the air?",
    "Which metal is liquid at room temperature?",
]

PICK = """\
scorer:
  {method: head, model: "%(model)s", adapter: "%(scorer)s", targets: {small: tiny-small, large: tiny-large}}
targets:
  small: {kind: local, max_tokens: 8}
  large:
    kind: litellm
    model: openai/local
    api_base: "%(large)s/v1"
    api_key_env: LARGE_KEY
    cost: {input_per_million: 1.0, output_per_million: 3.0}
rules:
  - name: cheapest-likely
    action: pick
    min_confidence: %(threshold)s
    fallback: refuse
"""


def confidences(model: Path, scorer: Path) -> dict[str, tuple[float, float]]:
    head = HeadScorer(LocalModel(str(model)), scorer)
    scores = head.score_batch([ScoreItem([{"role": "user", "content": q}]) for q in QUESTIONS])
    small, large = ([calibrate(t, [s.raw[t]], head.calibrators)[0] for s in scores] for t in head.targets)
    return {q: (float(a), float(b)) for q, a, b in zip(QUESTIONS, small, large, strict=True)}


@pytest.fixture(scope="module")
def routed(
    serve: Callable[[Policy], Served], tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Served, str, str, dict[str, tuple[float, float]]]]:
    folder = tmp_path_factory.mktemp("pick")
    scorer = make_head_scorer(tiny_model, folder / "scorer", layer=3, targets=["tiny-small", "tiny-large"])
    known = confidences(tiny_model, scorer)

    # Two questions and a threshold between their small-target confidences, where the less likely one is
    # likely enough on the large target: one must stay local, the other must go up.
    def between(a: str, b: str) -> float:
        return round((known[a][0] + known[b][0]) / 2, 6)

    pairs = itertools.permutations(QUESTIONS, 2)
    stays, goes = next((a, b) for a, b in pairs if known[a][0] > known[b][0] and known[b][1] >= between(a, b))
    threshold = between(stays, goes)
    large = serve(
        policy_from(f'scorer: {{model: "{tiny_model}"}}\n' + LOCAL, tmp_path_factory.mktemp("large"))
    )
    text = PICK % {"model": tiny_model, "scorer": scorer, "large": large.base_url, "threshold": threshold}
    with pytest.MonkeyPatch.context() as env:
        env.setenv("LARGE_KEY", "unused-by-the-second-proxy")
        routing = serve(policy_from(text, tmp_path_factory.mktemp("router")))
        routing.upstream = large  # type: ignore[attr-defined]
        yield routing, stays, goes, known


LOCAL = (
    "targets:\n  local: {kind: local, max_tokens: 8}\nrules:\n  - action: answer_with\n    target: local\n"
)


def ask(served: Served, question: str) -> httpx.Response:
    body = {"model": "router", "messages": [{"role": "user", "content": question}]}
    return httpx.post(f"{served.base_url}/v1/chat/completions", json=body, timeout=60)


def test_a_confident_question_stays_local_and_another_goes_up(
    routed: tuple[Served, str, str, dict[str, tuple[float, float]]],
) -> None:
    served, stays, goes, known = routed
    local = ask(served, stays)
    assert local.status_code == 200, local.text
    assert (local.headers["x-router-target"], local.headers["x-router-decision"]) == ("small", "answer")
    small, large = known[stays]
    # Scored here and by the server, each in its own batch: equal to the header's 4 decimals, give or take
    # float noise (tests/tolerance.py) that may move the last one.
    listed = [pair.split("=") for pair in local.headers["x-router-confidences"].split(",")]
    assert [name for name, _ in listed] == ["small", "large"]
    assert [float(value) for _, value in listed] == pytest.approx([small, large], abs=1e-4)
    assert float(local.headers["x-router-confidence"]) == pytest.approx(small, abs=1e-4)
    up = ask(served, goes)
    assert up.status_code == 200, up.text
    # Not likely enough on the small target, likely enough on the large one: escalated there.
    assert (up.headers["x-router-target"], up.headers["x-router-decision"]) == ("large", "escalate")
    assert float(up.headers["x-router-confidence"]) == pytest.approx(known[goes][1], abs=1e-4)
    answered = httpx.get(f"{served.upstream.base_url}/metrics").text  # type: ignore[attr-defined]
    assert 'router_requests_total{decision="answer",target="local"} 1.0' in answered  # by the other server


def test_metrics_carry_each_targets_confidence_and_the_savings(
    routed: tuple[Served, str, str, dict[str, tuple[float, float]]],
) -> None:
    served, stays, _, _ = routed
    before = httpx.get(f"{served.base_url}/metrics").text
    assert ask(served, stays).status_code == 200
    after = httpx.get(f"{served.base_url}/metrics").text

    def value(text: str, series: str) -> float:
        return next((float(line.split()[-1]) for line in text.splitlines() if line.startswith(series)), 0.0)

    for target in ("small", "large"):
        series = f'router_target_confidence_count{{target="{target}"}}'
        assert value(after, series) == value(before, series) + 1
    # Answered locally (free) instead of by the large target at its declared price: a saving.
    assert value(after, "router_saved_dollars_total") > value(before, "router_saved_dollars_total")
