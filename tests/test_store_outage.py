"""Redis killed under a serving proxy: answers, feedback, /metrics and /readyz keep working, and once Redis is
back (its AOF restores what it had) it holds every decision and every acknowledged feedback record."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from policies import load_policy
from router.feedback import FEEDBACK_WINDOW
from tests.conftest import Served, head_scorer_yaml
from tests.provider import ANSWER, Provider, reload_policy
from tests.redis_process import RedisProcess, running_redis

PREFIX = "confidence-router:"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisProcess]:
    with running_redis(tmp_path) as started:
        yield started


@pytest.fixture
def provider() -> Iterator[Provider]:
    answering = Provider()
    yield answering
    answering.close()


def chat(http: httpx.Client, proxy: Served, question: str, user: str | None = None) -> httpx.Response:
    body = {"model": "router", "messages": [{"role": "user", "content": question}], "user": user}
    keep = {"x-router-feedback": "keep"}  # feedback on any answer may follow
    response = http.post(f"{proxy.base_url}/v1/chat/completions", json=body, headers=keep)
    assert response.status_code == 200, response.text
    return response


def feedback(http: httpx.Client, proxy: Served, request_id: str, **label: object) -> str:
    response = http.post(f"{proxy.base_url}/v1/feedback", json={"request_id": request_id, **label})
    assert response.status_code == 200, response.text
    return str(response.json()["status"])


def samples(http: httpx.Client, proxy: Served) -> dict[str, float]:
    response = http.get(f"{proxy.base_url}/metrics")
    assert response.status_code == 200
    found = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            found[sample.name + (f"{{{labels}}}" if labels else "")] = sample.value
    return found


def readiness(http: httpx.Client, proxy: Served) -> dict[str, str]:
    """Status and store (Redis's eviction settings, read at start-up: tests/test_decision_retention.py)."""
    response = http.get(f"{proxy.base_url}/readyz")
    assert response.status_code == 200
    return {name: value for name, value in response.json().items() if name != "eviction"}


def test_a_redis_outage_loses_no_answer_and_no_acknowledged_feedback(
    serve: Callable[..., Served],
    server: RedisProcess,
    provider: Provider,
    tiny_model: Path,
    tiny_head: Path,
    tmp_path: Path,
    http: httpx.Client,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PROVIDER_KEY", "unused")
    policy = tmp_path / "policy.yaml"
    policy.write_text(reload_policy("outage", head_scorer_yaml(tiny_model, tiny_head), provider.base_url))
    proxy = serve(load_policy(policy), server.url)

    # Before: scored answers, feedback for two of them.
    before = [chat(http, proxy, f"Before {i}: what is the capital of France?") for i in range(3)]
    ids = [r.headers["x-router-request-id"] for r in before]
    assert feedback(http, proxy, ids[0], correct=True) == "recorded"
    assert feedback(http, proxy, ids[1], correct=False) == "recorded"
    assert readiness(http, proxy) == {"status": "ready", "store": "ok"}
    assert samples(http, proxy)["router_store_up"] == 1

    server.kill()
    started = time.monotonic()
    passed = chat(http, proxy, "Through to the provider.", user="slow")
    assert passed.json()["choices"][0]["message"]["content"] == ANSWER
    during = [chat(http, proxy, f"During {i}: how far is the moon?") for i in range(3)]
    hits = samples(http, proxy).get('router_scoring_seconds_count{cache="hit"}', 0)
    again = chat(http, proxy, "Before 0: what is the capital of France?")
    assert samples(http, proxy)['router_scoring_seconds_count{cache="hit"}'] == hits + 1  # from the mirror
    scored = http.post(f"{proxy.base_url}/v1/score", json={"question": "Scored during the outage?"})
    assert scored.status_code == 200
    assert time.monotonic() - started < 20  # nothing waited on Redis

    assert feedback(http, proxy, ids[2], correct=True) == "recorded"  # decided before the outage
    during_id = during[0].headers["x-router-request-id"]
    assert feedback(http, proxy, during_id, correct=False) == "recorded"  # decided during it
    assert feedback(http, proxy, during[1].headers["x-router-request-id"], score=0.75) == "recorded"
    assert feedback(http, proxy, ids[0], correct=True) == "duplicate"  # the marker is in the mirror too

    seen = samples(http, proxy)
    assert seen["router_store_up"] == 0
    assert seen["router_store_outages_total"] == 1
    assert seen["router_store_pending_writes"] > 0
    assert seen['router_calibration_samples{window="1000"}'] == 5  # the window as this replica knows it
    assert readiness(http, proxy) == {"status": "ready", "store": "degraded"}

    server.start()
    deadline = time.monotonic() + 10
    while readiness(http, proxy)["store"] != "ok":
        assert time.monotonic() < deadline, "the store did not recover within 10 s of Redis returning"
        time.sleep(0.1)
    seen = samples(http, proxy)
    assert seen["router_store_up"] == 1 and seen["router_store_pending_writes"] == 0
    assert seen["router_store_dropped_writes_total"] == 0

    direct = server.client()
    records = [json.loads(r) for r in direct.lrange(PREFIX + FEEDBACK_WINDOW, 0, -1)]
    assert [r["label"] for r in records] == [1.0, 0.0, 1.0, 0.0, 0.75]  # in the order acknowledged
    correct = sum(r["label"] == 1.0 for r in records)
    incorrect = sum(r["label"] == 0.0 for r in records)
    assert seen['router_feedback_total{outcome="correct"}'] == correct
    assert seen['router_feedback_total{outcome="incorrect"}'] == incorrect
    assert seen['router_feedback_total{outcome="graded"}'] == len(records) - correct - incorrect
    assert seen['router_calibration_samples{window="1000"}'] == len(records)  # read from Redis again

    for response in [*before, passed, *during, again]:
        assert direct.exists(PREFIX + "decision:" + response.headers["x-router-request-id"])
    [traffic_key] = direct.keys(PREFIX + "window:traffic:*")
    decided = sum(v for k, v in seen.items() if k.startswith("router_requests_total"))
    assert direct.llen(traffic_key) == decided == 8
