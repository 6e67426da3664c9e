"""The proxy end to end over real HTTP, with the real SmolLM2 model and the built-in default policy."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from policies import DEFAULT_POLICY_PATH, Confidences, Policy, RequestFacts, decide, load_policy
from tests.conftest import Served

EASY = "What is the capital of France?"


@pytest.fixture(scope="module")
def default_policy() -> Policy:
    return load_policy(DEFAULT_POLICY_PATH)


@pytest.fixture(scope="module")
def proxy(serve: Callable[[Policy], Served], default_policy: Policy) -> Served:
    return serve(default_policy)


@pytest.fixture(scope="module")
def client(proxy: Served) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{proxy.base_url}/v1", api_key="unused", max_retries=0)


def ask(question: str) -> list[ChatCompletionMessageParam]:
    return [{"role": "user", "content": question}]


def expected_decision(policy: Policy, confidence: float, model: str = "router") -> tuple[str, str]:
    async def fixed() -> Confidences:
        return Confidences(confidence)

    decision = asyncio.run(decide(policy, RequestFacts(model), fixed))
    return decision.outcome, decision.target or "none"


def test_sdk_answers_an_easy_question_with_consistent_headers(
    client: openai.OpenAI, default_policy: Policy
) -> None:
    raw = client.chat.completions.with_raw_response.create(model="router", messages=ask(EASY))
    answer = raw.parse()
    assert "paris" in (answer.choices[0].message.content or "").lower()
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage is not None and answer.usage.completion_tokens > 0

    confidence = float(raw.headers["x-router-confidence"])
    assert 0.0 <= confidence <= 1.0
    assert len(raw.headers["x-router-request-id"]) == 32
    outcome, target = expected_decision(default_policy, confidence)
    assert (raw.headers["x-router-decision"], raw.headers["x-router-target"]) == (outcome, target)


def test_each_request_gets_its_own_id(client: openai.OpenAI) -> None:
    ids = {
        client.chat.completions.with_raw_response.create(model="router", messages=ask(EASY)).headers[
            "x-router-request-id"
        ]
        for _ in range(2)
    }
    assert len(ids) == 2


def test_streaming_yields_chunks_then_done(proxy: Served, client: openai.OpenAI) -> None:
    body = {"model": "router", "messages": ask(EASY), "stream": True}
    with httpx.stream("POST", f"{proxy.base_url}/v1/chat/completions", json=body, timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert {"x-router-decision", "x-router-confidence", "x-router-target"} <= set(response.headers)
        events = [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert len(chunks) >= 3
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    streamed = "".join(chunk["choices"][0]["delta"].get("content") or "" for chunk in chunks)

    whole = client.chat.completions.create(model="router", messages=ask(EASY))
    assert streamed == whole.choices[0].message.content  # greedy: the same answer either way


def test_sdk_streaming_with_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="router", messages=ask(EASY), stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "paris" in text.lower()
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0


def test_models_lists_the_router_and_the_policy_targets(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == ["router", "local"]


def test_health_and_readiness(proxy: Served) -> None:
    assert httpx.get(f"{proxy.base_url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{proxy.base_url}/readyz").json() == {"status": "ready", "store": "memory"}


@pytest.mark.parametrize(
    ("body", "param", "says"),
    [
        ("{not json", None, "Malformed JSON"),
        ("[1, 2]", None, "valid dictionary"),
        ('{"model": "router"}', "messages", "Field required"),
        ('{"messages": [{"role": "user", "content": "hi"}]}', "model", "Field required"),
        ('{"model": "router", "messages": []}', "messages", "at least 1 item"),
        ('{"model": "router", "messages": "hi"}', "messages", "valid list"),
        ('{"model": "router", "messages": [{"role": "wizard", "content": "hi"}]}', "messages.0.role",
         "Input should be"),
        ('{"model": "router", "messages": [{"role": "user", "content": "hi"}], "stream": "yes"}', "stream",
         "valid boolean"),
        ('{"model": "router", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}',
         "max_tokens", "greater than 0"),
        ('{"model": 7, "messages": [{"role": "user", "content": "hi"}]}', "model", "valid string"),
    ],
)  # fmt: skip
def test_bad_requests_get_openai_shaped_400(proxy: Served, body: str, param: str | None, says: str) -> None:
    response = httpx.post(
        f"{proxy.base_url}/v1/chat/completions", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert says in error["message"]


def test_unknown_model_is_a_404_the_sdk_understands(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-17", messages=ask(EASY))
    assert caught.value.code == "model_not_found"
    assert "gpt-17" in caught.value.message


def test_sdk_sees_bad_requests_as_bad_request_errors(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="at least 1 item"):
        client.chat.completions.create(model="router", messages=[])


def test_the_default_limits_turn_away_oversized_requests_while_a_short_one_is_answered(
    proxy: Served, client: openai.OpenAI
) -> None:
    oversized = {
        "request_too_large": [{"role": "user", "content": "x" * 10_000_000}],
        "context_length_exceeded": [{"role": "user", "content": "The river ran past the mill. " * 7_000}],
        "too_many_messages": [{"role": "user", "content": "m"}] * 10_000,
    }
    url = f"{proxy.base_url}/v1/chat/completions"
    with ThreadPoolExecutor(len(oversized)) as pool:
        sent = {
            code: pool.submit(httpx.post, url, json={"model": "router", "messages": m}, timeout=120)
            for code, m in oversized.items()
        }
        assert client.chat.completions.create(model="router", messages=ask(EASY)).choices[0].message.content
        for code, response in sent.items():
            assert response.result().status_code == (413 if code == "request_too_large" else 400)
            assert response.result().json()["error"]["code"] == code
