"""POST /v1/feedback over real HTTP with Redis (one server, a Cluster, a master behind a Sentinel): the join
with the decision log, idempotence, expiry, decisions kept only when the client asks, and OpenAI-shaped
errors for everything a client can get wrong."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from policies import load_policy
from tests.conftest import Served, head_scorer_yaml
from tests.redis_process import direct_client

RULES = """\
targets:
  local: {kind: local, max_tokens: 2}
rules:
  - {name: unscored, when: {user: tagged}, action: refuse}
  - {name: scored, when: {confidence_at_least: 0.0}, action: answer_with, target: local}
  - action: refuse
"""


@pytest.fixture(scope="module")
def served(
    serve: Callable[..., Served],
    tiny_model: Path,
    tiny_head: Path,
    backend_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Served:
    path = tmp_path_factory.mktemp("feedback") / "policy.yaml"
    # No sample: a decision is kept only when its client asks.
    monitoring = "monitoring: {decisions: {sample: 0}}\n"
    path.write_text(head_scorer_yaml(tiny_model, tiny_head) + monitoring + RULES)
    return serve(load_policy(path), backend_url)


@pytest.fixture(scope="module")
def forgetful(
    serve: Callable[..., Served],
    tiny_model: Path,
    tiny_head: Path,
    backend_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Served:
    """Keeps decisions for one second."""
    path = tmp_path_factory.mktemp("forgetful") / "policy.yaml"
    path.write_text(head_scorer_yaml(tiny_model, tiny_head) + "monitoring: {decision_ttl_s: 1}\n" + RULES)
    return serve(load_policy(path), backend_url)


def ask(
    http: httpx.Client, served: Served, question: str, user: str | None = None, *, keep: bool = True
) -> str:
    """The request id of an answer; `keep`: it asks for its decision to be kept (x-router-feedback)."""
    body = {"model": "router", "messages": [{"role": "user", "content": question}], "user": user}
    headers = {"x-router-feedback": "keep"} if keep else {}
    response = http.post(f"{served.base_url}/v1/chat/completions", json=body, headers=headers)
    assert response.status_code == 200
    assert response.headers["x-router-decision-kept"] == ("true" if keep else "false")
    return response.headers["x-router-request-id"]


def feedback(http: httpx.Client, served: Served, body: dict[str, object]) -> httpx.Response:
    return http.post(f"{served.base_url}/v1/feedback", json=body)


def metric(http: httpx.Client, served: Served, line_start: str) -> float:
    text = http.get(f"{served.base_url}/metrics").text
    return float(next(line for line in text.splitlines() if line.startswith(line_start)).split()[-1])


def test_feedback_joins_once_and_repeats_are_no_ops(served: Served, http: httpx.Client) -> None:
    before = metric(http, served, 'router_calibration_samples{window="1000"}')
    request_id = ask(http, served, "Is feedback joined once?")
    first = feedback(http, served, {"request_id": request_id, "correct": True})
    assert first.status_code == 200 and first.json() == {"request_id": request_id, "status": "recorded"}
    again = feedback(http, served, {"request_id": request_id, "correct": True})
    assert again.status_code == 200 and again.json()["status"] == "duplicate"
    assert metric(http, served, 'router_calibration_samples{window="1000"}') == before + 1
    assert metric(http, served, 'router_feedback_total{outcome="duplicate"}') >= 1

    conflict = feedback(http, served, {"request_id": request_id, "correct": False})
    assert conflict.status_code == 409
    assert conflict.json()["error"]["code"] == "feedback_conflict"
    assert metric(http, served, 'router_calibration_samples{window="1000"}') == before + 1


def test_graded_feedback_and_decisions_without_a_confidence(served: Served, http: httpx.Client) -> None:
    before = metric(http, served, 'router_calibration_samples{window="1000"}')
    graded = feedback(http, served, {"request_id": ask(http, served, "Partly right?"), "score": 0.75})
    assert graded.json()["status"] == "recorded"
    assert metric(http, served, 'router_feedback_total{outcome="graded"}') >= 1
    # Accepted, but a decision made without a score has nothing to calibrate.
    unscored = feedback(
        http, served, {"request_id": ask(http, served, "Tagged.", user="tagged"), "correct": False}
    )
    assert unscored.json()["status"] == "recorded"
    assert metric(http, served, 'router_calibration_samples{window="1000"}') == before + 1


def test_unknown_and_expired_ids_are_a_clear_404(
    forgetful: Served, backend_url: str, http: httpx.Client
) -> None:
    unknown = feedback(http, forgetful, {"request_id": uuid.uuid4().hex, "correct": True})  # never logged
    assert unknown.status_code == 404
    error = unknown.json()["error"]
    assert error["type"] == "not_found_error" and error["param"] == "request_id"
    assert "unknown, or older than the decision log keeps decisions (1 s)" in error["message"]

    request_id = ask(http, forgetful, "Will this expire?")
    store = direct_client(backend_url)
    deadline = time.monotonic() + 30
    while store.exists(f"confidence-router:decision:{request_id}"):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert feedback(http, forgetful, {"request_id": request_id, "correct": True}).status_code == 404


def test_feedback_on_a_decision_not_kept_is_a_404_that_says_so(
    served: Served, backend_url: str, http: httpx.Client
) -> None:
    request_id = ask(http, served, "Nobody will grade this.", keep=False)
    assert not direct_client(backend_url).exists(f"confidence-router:decision:{request_id}")
    response = feedback(http, served, {"request_id": request_id, "correct": True})
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == "request_not_found" and error["param"] == "request_id"
    said = "it was not kept (its answer said x-router-decision-kept: false; send x-router-feedback: keep"
    assert said in error["message"]


def test_only_keep_asks_for_a_decision_to_be_kept(served: Served, http: httpx.Client) -> None:
    body = {"model": "router", "messages": [{"role": "user", "content": "Keep?"}]}
    url = f"{served.base_url}/v1/chat/completions"
    response = http.post(url, json=body, headers={"x-router-feedback": "yes"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_value"
    assert "x-router-feedback" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"request_id": "a" * 32}, "give either correct (true or false) or score (0..1)"),
        ({"request_id": "a" * 32, "correct": True, "score": 1.0}, "give either correct"),
        ({"request_id": "a" * 32, "score": 1.5}, "score: Input should be less than or equal to 1"),
        ({"request_id": "a" * 32, "correct": "yes"}, "correct: Input should be a valid boolean"),
        ({"request_id": "not-an-id", "correct": True}, "request_id: String should match pattern"),
        ({"correct": True}, "request_id: Field required"),
    ],
)
def test_malformed_feedback_is_a_400(
    served: Served, http: httpx.Client, body: dict[str, object], says: str
) -> None:
    response = feedback(http, served, body)
    assert response.status_code == 400
    assert says in response.json()["error"]["message"]
