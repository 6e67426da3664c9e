"""The learning loop end to end over real HTTP and real Redis: a router that predicts only its local model
captures its traffic with a remote model's shadow answers, the answers are exported and labelled by their
gold answers, `add-target` fits the remote model's head, and the promoted folder serves the next request
with the new scorer's version and a confidence for the remote model. (bench/learning_loop.py runs the same
loop with SmolLM2 and Gemma-3-270M and reports the figures: docs/learning-loop.md.)"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from commands import app
from localmodel import LocalModel
from policies import load_policy
from scorers.card import ScorerCard
from scorers.head import HeadScorer
from tests.conftest import Served, emptied
from tests.provider import Provider
from tests.redis_process import direct_client
from train.data import load_records, shared_data_dir

ADMIN = "admin-secret"
ROWS = "confidence-router:capture:-"
TRIVIA = shared_data_dir() / "triviaqa" / "triviaqa_sm_sub.jsonl"
QUESTIONS = {r.question: r.answers[0] for r in load_records(TRIVIA)[:60]}


def knows(question: str) -> bool:
    return int(hashlib.sha256(question.encode()).hexdigest(), 16) % 2 == 0


def remote_reply(question: str) -> str:
    """The right answer to half the questions (a hash decides), a wrong one to the rest."""
    return QUESTIONS.get(question, "") if knows(question) else "I believe it is Atlantis."


def loop_policy(model: Path, scorer: Path, remote_url: str, predicted: str) -> str:
    return f"""\
name: loop
scorer: {{method: head, model: "{model}", adapter: "{scorer}", targets: {{{predicted}}}}}
targets:
  local: {{kind: local, max_tokens: 4}}
  remote: {{kind: openai, model: remote-model, api_base: "{remote_url}", num_retries: 0}}
capture: {{share: 1.0}}
explore: {{share: 1.0, targets: [remote], budget_usd_per_day: 1.0}}
rules:
  - action: answer_with
    target: local
"""


def invoke(*args: str | Path) -> None:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output


def test_a_router_learns_a_second_model_from_its_own_traffic(
    serve: Callable[..., Served],
    untied_model: Path,
    untied_head: Path,
    redis_url: str,
    http: httpx.Client,
    tmp_path: Path,
) -> None:
    serving, remote = tmp_path / "serving", Provider(reply_to=remote_reply)
    shutil.copytree(untied_head, serving)
    path = tmp_path / "policy.yaml"
    path.write_text(loop_policy(untied_model, serving, remote.base_url, ""))
    proxy = serve(load_policy(path), emptied(redis_url), policy_path=path, admin_key=ADMIN)
    try:
        for question in QUESTIONS:
            body = {"model": "router", "messages": [{"role": "user", "content": question}]}
            assert http.post(f"{proxy.base_url}/v1/chat/completions", json=body).status_code == 200
        wait_for_shadow_answers(redis_url, len(QUESTIONS))
        rows, labels = tmp_path / "rows.jsonl", tmp_path / "remote.jsonl"
        invoke("traffic", "export", "--policy", path, "--out", rows, "--redis-url", redis_url)
        invoke(
            "build-dataset",
            "--from-traffic",
            "--data",
            rows,
            "--answer-of",
            "remote",
            "--gold",
            TRIVIA,
            "--out",
            labels,
        )
        graded = [json.loads(line) for line in labels.read_text().splitlines()]
        assert len(graded) == len(QUESTIONS)
        assert [r["correct"] for r in graded] == [knows(r["question"]) for r in graded]

        candidate = tmp_path / "candidate"
        invoke("add-target", "--scorer", serving, "--labels", labels, "--out", candidate, "--layer", "2")
        assert [t.model for t in ScorerCard.load(candidate).targets][-1] == "remote"
        shutil.rmtree(serving)
        shutil.copytree(candidate, serving)  # promotion: the folder the policy names, then a reload
        path.write_text(loop_policy(untied_model, serving, remote.base_url, "remote: remote"))
        reloaded = http.post(f"{proxy.base_url}/admin/reload", headers={"Authorization": f"Bearer {ADMIN}"})
        assert reloaded.status_code == 200, reloaded.text

        body = {"model": "router", "messages": [{"role": "user", "content": "Who wrote Hamlet?"}]}
        after = http.post(f"{proxy.base_url}/v1/chat/completions", json=body)
        version = HeadScorer(LocalModel(str(untied_model)), candidate).version
        assert after.headers["x-router-scorer"] == version == reloaded.json()["scorer_version"]
        scored = http.post(f"{proxy.base_url}/v1/score", json={"question": "Who wrote Hamlet?"}).json()
        assert scored["scorer_version"] == version and 0 < scored["confidences"]["remote"] < 1
    finally:
        remote.close()


def wait_for_shadow_answers(redis_url: str, count: int, timeout_s: float = 60) -> None:
    """Until `count` captured rows hold the remote model's answer."""
    client = direct_client(redis_url)
    try:
        deadline = time.monotonic() + timeout_s
        while sum("remote" in json.loads(r).get("shadow", {}) for r in client.lrange(ROWS, 0, -1)) < count:
            assert time.monotonic() < deadline, f"fewer than {count} shadow answers after {timeout_s} s"
            time.sleep(0.1)
    finally:
        client.close()


@pytest.fixture(autouse=True)
def _no_rows_left(redis_url: str) -> None:
    client = direct_client(redis_url)
    try:
        client.delete(ROWS)
    finally:
        client.close()
