"""Two real `router serve` processes on one Redis: the same rolling calibration whichever replica got the
feedback, and a SIGHUP reload that lets a request in flight finish."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

import calibrators
from tests.conftest import emptied, free_port, head_scorer_yaml, wait_ready
from tests.provider import ANSWER, Provider, reload_policy


@dataclass
class Replica:
    url: str
    policy: Path
    process: subprocess.Popen[str]
    log: Path


@pytest.fixture(scope="module")
def provider() -> Iterator[Provider]:
    held = Provider(held=True)
    yield held
    held.close()


@pytest.fixture(scope="module")
def replicas(
    redis_url: str,
    tiny_model: Path,
    tiny_head: Path,
    provider: Provider,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[list[Replica]]:
    emptied(redis_url)
    folder = tmp_path_factory.mktemp("replicas")
    # One torch thread each: two replicas and the test process share the cores without spinning on them.
    env = {**os.environ, "PROVIDER_KEY": "unused", "ROUTER_THREADS": "1"}
    started = []
    for name in ("a", "b"):
        policy = folder / f"{name}.yaml"
        policy.write_text(reload_policy(name, head_scorer_yaml(tiny_model, tiny_head), provider.base_url))
        port, log = free_port(), folder / f"{name}.log"
        command = [sys.executable, "-m", "router", "serve", "--policy", str(policy), "--port", str(port)]
        with log.open("w") as out:
            process = subprocess.Popen(
                [*command, "--redis-url", redis_url], stdout=out, stderr=subprocess.STDOUT, text=True, env=env
            )
        started.append(Replica(f"http://127.0.0.1:{port}", policy, process, log))
    try:
        for replica in started:
            wait_ready(replica.url)
        yield started
    finally:
        for replica in started:
            replica.process.send_signal(signal.SIGINT)
        for replica in started:
            replica.process.wait(timeout=30)


def ask(
    replica: Replica, question: str, user: str = "anyone", http: httpx.Client | None = None
) -> httpx.Response:
    body = {"model": "router", "user": user, "messages": [{"role": "user", "content": question}]}
    keep = {"x-router-feedback": "keep"}  # feedback on any answer may follow
    response = (http or httpx).post(
        f"{replica.url}/v1/chat/completions", json=body, headers=keep, timeout=120
    )
    assert response.status_code == 200, response.text
    return response


def gauges(replica: Replica) -> dict[str, float | None]:
    text = httpx.get(f"{replica.url}/metrics").text
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith(("router_calibration_", "router_drift_", "router_escalation_ratio")):
                window = sample.labels.get("window")
                # NaN (nothing to measure yet) compares unequal to itself; None does not.
                value = None if math.isnan(sample.value) else sample.value
                found[sample.name + (f"[{window}]" if window else "")] = value
    return found


def test_feedback_to_either_replica_gives_both_the_same_rolling_calibration(
    replicas: list[Replica], http: httpx.Client
) -> None:
    answered = [ask(replicas[i % 2], f"Question {i}: which river is longest?", http=http) for i in range(40)]
    confidences = [float(r.headers["x-router-confidence"]) for r in answered]
    # Correct roughly in proportion to the confidence, so that every metric has something to measure.
    ranks = sorted(range(40), key=lambda i: confidences[i])
    correct = [ranks.index(i) % 3 != 0 for i in range(40)]
    for i, response in enumerate(answered):
        other = replicas[(i + 1) % 2]  # feedback to the replica that did not answer
        body = {"request_id": response.headers["x-router-request-id"], "correct": correct[i]}
        assert http.post(f"{other.url}/v1/feedback", json=body).json()["status"] == "recorded"

    seen_a, seen_b = gauges(replicas[0]), gauges(replicas[1])
    assert seen_a == seen_b
    for window in ("100", "1000"):
        assert seen_a[f"router_calibration_samples[{window}]"] == 40
        # The headers carry the confidence to 4 decimals; the replicas computed on the exact values.
        assert seen_a[f"router_calibration_ece[{window}]"] == pytest.approx(
            calibrators.ece(confidences, correct), abs=1e-3
        )
        assert seen_a[f"router_calibration_brier[{window}]"] == pytest.approx(
            calibrators.brier_score(confidences, correct), abs=1e-3
        )
        assert seen_a[f"router_calibration_auroc[{window}]"] == pytest.approx(
            calibrators.auroc(confidences, correct), abs=1e-9
        )
    assert seen_a["router_drift_window_samples"] == 40


def test_sighup_reloads_and_a_request_in_flight_finishes(
    replicas: list[Replica], provider: Provider, tiny_model: Path, tiny_head: Path
) -> None:
    a, b = replicas
    provider.released.clear()
    in_flight: list[httpx.Response] = []
    slow = threading.Thread(target=lambda: in_flight.append(ask(a, "Anything.", user="slow")))
    slow.start()
    assert provider.arrived.wait(timeout=60), "the slow request never reached the provider"

    a.policy.write_text(
        reload_policy("a2", head_scorer_yaml(tiny_model, tiny_head), provider.base_url, "refuse")
    )
    a.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 60
    while ask(a, "Probe.", user="probe").headers["x-router-decision"] != "refuse":
        assert time.monotonic() < deadline, "the SIGHUP reload never took effect"
    assert not in_flight
    assert ask(b, "Probe.", user="probe").headers["x-router-decision"] == "answer"  # b was not signalled

    provider.released.set()
    slow.join(timeout=60)
    [response] = in_flight
    assert response.json()["choices"][0]["message"]["content"] == ANSWER
    assert response.headers["x-router-rule"] == "slow"
    assert "reloaded: policy 'a2'" in a.log.read_text()
