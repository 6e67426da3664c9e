"""Closing the loop: answers, feedback, `router calibrate --from-feedback`, and a reload that adopts the
fitted calibrator."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from typer.testing import CliRunner

import calibrators
from calibrators.validation import FloatArray
from commands import app
from policies import load_policy
from router.feedback import FEEDBACK_WINDOW, FeedbackRecord
from router.state import RedisStore
from tests.conftest import Served, head_scorer_yaml
from tests.tolerance import close

ADMIN_KEY = "admin-key-for-tests"
# Every request is scored and logged; refusing spares drafting an answer nobody reads.
RULES = """\
targets:
  local: {kind: local}
rules:
  - {when: {confidence_at_least: 0.0}, action: refuse}
  - action: refuse
"""


def calibrate(redis_url: str, out: Path) -> subprocess.CompletedProcess[str]:
    command = ["calibrate", "--from-feedback", "--out", str(out), "--redis-url", redis_url]
    return subprocess.run(
        [sys.executable, "-m", "router", *command], capture_output=True, text=True, timeout=120
    )


def test_without_feedback_calibrate_says_so(fresh_redis: str, tmp_path: Path) -> None:
    result = calibrate(fresh_redis, tmp_path / "calibrator.json")
    assert result.returncode == 1
    assert result.stderr.strip() == "error: no feedback is logged in this store"
    assert not (tmp_path / "calibrator.json").exists()


def test_a_calibrator_fitted_on_feedback_is_adopted_by_a_reload(
    serve: Callable[..., Served],
    tiny_model: Path,
    tiny_head: Path,
    fresh_redis: str,
    tmp_path: Path,
    http: httpx.Client,
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(head_scorer_yaml(tiny_model, tiny_head) + RULES)
    served = serve(load_policy(policy), fresh_redis, policy, ADMIN_KEY)

    answered = []
    for i in range(60):
        chat = {"model": "router", "messages": [{"role": "user", "content": f"Fact {i}: true?"}]}
        keep = {"x-router-feedback": "keep"}
        response = http.post(f"{served.base_url}/v1/chat/completions", json=chat, headers=keep)
        answered.append(
            (response.headers["x-router-request-id"], float(response.headers["x-router-confidence"]))
        )
    # The more confident half turns out right: a calibrator should learn a rising map.
    median = sorted(confidence for _, confidence in answered)[30]
    for request_id, confidence in answered:
        body = {"request_id": request_id, "correct": confidence >= median}
        assert http.post(f"{served.base_url}/v1/feedback", json=body).status_code == 200
    before = http.post(f"{served.base_url}/v1/score", json={"question": "A new question?"}).json()

    out = tmp_path / "calibrator.json"
    result = calibrate(fresh_redis, out)
    assert result.returncode == 0, result.stderr
    assert "platt on 60 records (30 correct)" in result.stdout
    fitted = calibrators.load(out)

    policy.write_text(
        policy.read_text().replace("scorer: {method: head,", f'scorer: {{calibrator: "{out}", method: head,')
    )
    reloaded = http.post(f"{served.base_url}/admin/reload", headers={"authorization": f"Bearer {ADMIN_KEY}"})
    assert reloaded.status_code == 200, reloaded.text
    assert reloaded.json()["calibrator"] == str(out)

    # The same raw score (scored afresh: within float noise, tests/tolerance.py), recalibrated as it is
    # served, exactly as the fitted calibrator maps it; an unseen question's too.
    after = http.post(f"{served.base_url}/v1/score", json={"question": "A new question?"}).json()
    assert after["raw_score"] == close(before["raw_score"])
    assert after["confidence"] == float(fitted.transform([after["raw_score"]])[0]) != before["confidence"]
    unseen = http.post(f"{served.base_url}/v1/score", json={"question": "Never asked before?"}).json()
    assert unseen["confidence"] == float(fitted.transform([unseen["raw_score"]])[0])


@pytest.fixture
def mean_shift() -> Iterator[type[calibrators.Calibrator]]:
    """A calibrator defined here, outside calibrators/ (its class statement alone registers it), and one that
    cannot be fitted from raw scores and outcomes alone; both unregistered afterwards."""

    class MeanShift(calibrators.Calibrator, kind="test-mean-shift"):
        def _fit(self, x: FloatArray, y: FloatArray) -> None:
            self.shift = float(y.mean() - x.mean())

        def _transform(self, x: FloatArray) -> FloatArray:
            return np.clip(x + self.shift, 0.0, 1.0)

        def _get_params(self) -> dict[str, Any]:
            return {"shift": self.shift}

        def _set_params(self, params: Mapping[str, Any]) -> None:
            self.shift = float(params["shift"])

    class NeedsGroups(MeanShift, kind="test-needs-groups"):
        fits_from_feedback = False

    yield MeanShift
    for kind in ("test-mean-shift", "test-needs-groups"):
        del calibrators.CALIBRATORS[kind]


async def log_feedback(redis_url: str, raws: list[float]) -> None:
    """Feedback records in the window `router calibrate` reads, as the server writes them; the upper half
    is right."""
    store = RedisStore(redis_url)
    try:
        for raw in raws:
            record = FeedbackRecord(raw, raw, 1.0 if raw >= 0.5 else 0.0, "scorer-under-test", "local")
            await store.push(FEEDBACK_WINDOW, json.dumps(asdict(record)), len(raws))
    finally:
        await store.close()


def test_any_registered_calibrator_is_fitted_from_feedback(
    fresh_redis: str, tmp_path: Path, mean_shift: type[calibrators.Calibrator]
) -> None:
    asyncio.run(log_feedback(fresh_redis, [i / 40 for i in range(40)]))
    out = tmp_path / "calibrator.json"
    command = ["calibrate", "--from-feedback", "--redis-url", fresh_redis, "--min-samples", "40"]

    result = CliRunner().invoke(app, [*command, "--method", "test-mean-shift", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "test-mean-shift on 40 records (20 correct) of scorer scorer-under-test" in result.output
    assert isinstance(calibrators.load(out), mean_shift)

    refused = CliRunner().invoke(app, [*command, "--method", "test-needs-groups", "--out", str(out)])
    assert refused.exit_code == 1
    assert "unknown method 'test-needs-groups'" in refused.output
    assert "test-mean-shift" in refused.output  # among the methods it names
