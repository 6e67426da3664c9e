"""Every action over real HTTP: escalation through litellm to a second proxy, hedge, refuse, failure-aware."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from policies import Policy
from tests.conftest import Served, free_port, policy_from

QUESTION: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "Who wrote the play Hamlet? Answer in a few words."}
]

# Short answers keep the suite fast on two CPU cores.
LOCAL_ONLY = """\
scorer: {max_draft_tokens: 32}
targets:
  local: {kind: local, max_tokens: 32}
rules:
  - action: answer_with
    target: local
"""

# confidence_at_least: 0 matches every scored request, so these rules run the scorer and then act.
ESCALATING = """\
scorer: {max_draft_tokens: 32}
targets:
  local: {kind: local, max_tokens: 32}
  large: {kind: litellm, model: openai/local, api_base: "%s/v1", api_key_env: LARGE_KEY, num_retries: 0}
rules:
  - name: always-escalate
    when: {confidence_at_least: 0.0}
    action: escalate_to
    target: large
  - action: answer_with
    target: local
"""

HEDGING = """\
scorer: {max_draft_tokens: 32}
targets:
  local: {kind: local, max_tokens: 32}
rules:
  - name: direct
    when: {model: local}
    action: answer_with
    target: local
  - name: hedge-everything
    when: {confidence_at_least: 0.0}
    action: hedge
    message: "Not sure, but: {answer} (check this)"
  - action: answer_with
    target: local
"""

REFUSING = """\
failure_aware: %s
scorer: {max_draft_tokens: 32}
refusal_message: "No comment."
targets:
  local: {kind: local, max_tokens: 32}
rules:
  - name: refuse-everything
    when: {confidence_at_least: 0.0}
    action: refuse
  - action: answer_with
    target: local
"""


def sdk(served: Served) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{served.base_url}/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def large(serve: Callable[[Policy], Served], tmp_path_factory: pytest.TempPathFactory) -> Served:
    """The 'large' model: a second proxy answering with its local model, reached through litellm."""
    return serve(policy_from(LOCAL_ONLY, tmp_path_factory.mktemp("large")))


@pytest.fixture(scope="module")
def escalating(
    serve: Callable[[Policy], Served], large: Served, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    with pytest.MonkeyPatch.context() as env:
        env.setenv("LARGE_KEY", "unused-by-the-second-proxy")
        yield serve(policy_from(ESCALATING % large.base_url, tmp_path_factory.mktemp("escalating")))


def test_missing_api_key_is_named_in_a_502(
    serve: Callable[[Policy], Served], large: Served, tmp_path: Path
) -> None:
    served = serve(policy_from(ESCALATING % large.base_url, tmp_path))
    response = httpx.post(
        f"{served.base_url}/v1/chat/completions", json={"model": "router", "messages": QUESTION}, timeout=60
    )
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "missing_api_key"
    assert "LARGE_KEY" in response.json()["error"]["message"]


def test_escalation_returns_the_large_models_answer(escalating: Served, large: Served) -> None:
    direct = sdk(large).chat.completions.create(model="local", messages=QUESTION)
    raw = sdk(escalating).chat.completions.with_raw_response.create(model="router", messages=QUESTION)
    answer = raw.parse()
    assert raw.headers["x-router-decision"] == "escalate"
    assert raw.headers["x-router-target"] == "large"
    assert raw.headers["x-router-rule"] == "always-escalate"
    assert 0.0 <= float(raw.headers["x-router-confidence"]) <= 1.0
    assert answer.choices[0].message.content == direct.choices[0].message.content
    assert answer.usage is not None and answer.usage.total_tokens > 0


def test_escalated_stream_passes_the_large_models_chunks_through(escalating: Served, large: Served) -> None:
    direct = sdk(large).chat.completions.create(model="local", messages=QUESTION)
    with sdk(escalating).chat.completions.with_streaming_response.create(
        model="router", messages=QUESTION, stream=True
    ) as response:
        assert response.headers["x-router-decision"] == "escalate"
        chunks = list(response.parse())
    assert len(chunks) >= 3
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
        direct.choices[0].message.content
    )


def test_unreachable_upstream_is_a_502_in_openai_shape(
    serve: Callable[[Policy], Served], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LARGE_KEY", "unused")
    dead = f"http://127.0.0.1:{free_port()}"
    served = serve(policy_from(ESCALATING % dead, tmp_path))
    response = httpx.post(
        f"{served.base_url}/v1/chat/completions", json={"model": "router", "messages": QUESTION}, timeout=60
    )
    assert response.status_code == 502
    error = response.json()["error"]
    assert error["type"] == "upstream_error"
    assert "target 'large' failed" in error["message"]


def test_upstream_key_never_reaches_the_error(
    serve: Callable[[Policy], Served], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LARGE_KEY", "sk-secret-value-123")
    served = serve(policy_from(ESCALATING % f"http://127.0.0.1:{free_port()}", tmp_path))
    response = httpx.post(
        f"{served.base_url}/v1/chat/completions", json={"model": "router", "messages": QUESTION}, timeout=60
    )
    assert response.status_code == 502
    assert "sk-secret" not in response.text


@pytest.fixture(scope="module")
def hedging(serve: Callable[[Policy], Served], tmp_path_factory: pytest.TempPathFactory) -> Served:
    return serve(policy_from(HEDGING, tmp_path_factory.mktemp("hedging")))


def test_hedge_wraps_the_local_answer_in_the_policy_message(hedging: Served) -> None:
    client = sdk(hedging)
    plain = client.chat.completions.with_raw_response.create(model="local", messages=QUESTION)
    hedged = client.chat.completions.with_raw_response.create(model="router", messages=QUESTION)
    assert plain.headers["x-router-decision"] == "answer"
    assert "x-router-confidence" not in plain.headers  # a rule on the model name alone needs no score
    assert hedged.headers["x-router-decision"] == "hedge"
    assert hedged.headers["x-router-target"] == "local"
    answer = plain.parse().choices[0].message.content
    assert hedged.parse().choices[0].message.content == f"Not sure, but: {answer} (check this)"


def test_hedged_stream_carries_the_hedge(hedging: Served) -> None:
    chunks = list(sdk(hedging).chat.completions.create(model="router", messages=QUESTION, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith("Not sure, but: ") and text.endswith(" (check this)")


@pytest.mark.parametrize("failure_aware", [False, True])
def test_refuse_is_a_valid_completion_with_the_policy_message(
    serve: Callable[[Policy], Served], tmp_path: Path, failure_aware: bool
) -> None:
    served = serve(policy_from(REFUSING % str(failure_aware).lower(), tmp_path))
    raw = sdk(served).chat.completions.with_raw_response.create(model="router", messages=QUESTION)
    assert raw.headers["x-router-decision"] == "refuse"
    assert raw.headers["x-router-target"] == "none"
    content = raw.parse().choices[0].message.content or ""
    if not failure_aware:
        assert content == "No comment."
        return
    body = json.loads(content)
    assert body["decision"] == "refuse"
    assert body["answer"] is None
    assert "refuse-everything" in body["justification"]
    assert body["evidence_quality"] in {"high", "medium", "low"}


def test_failure_aware_answer_carries_the_answer_and_its_evidence(
    serve: Callable[[Policy], Served], large: Served, tmp_path: Path
) -> None:
    served = serve(policy_from("failure_aware: true\n" + LOCAL_ONLY, tmp_path))
    plain = sdk(large).chat.completions.create(model="router", messages=QUESTION).choices[0].message.content
    content = (
        sdk(served).chat.completions.create(model="router", messages=QUESTION).choices[0].message.content
    )
    body = json.loads(content or "")
    assert body["decision"] == "answer"
    assert body["answer"] == plain  # the same model and policy without failure_aware
    assert body["evidence_quality"] == "unknown"  # this policy never asks for a score
