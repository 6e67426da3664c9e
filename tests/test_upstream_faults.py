"""Upstream failures over real HTTP: each becomes the error that says what happened, is retried only where
another attempt can help, within the target's timeout_s, and is never multiplied by the client's own retries.

The router's litellm targets point at tests/faults.py's stub; the `flaky` target's behaviour is scripted per
test, the others fail as their upstream model's name says. Timeouts are short (1.5 s) to keep this fast.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from policies import Policy
from tests.conftest import Served, free_port, head_scorer_yaml, policy_from
from tests.faults import ANSWER, FaultServer

TIMEOUT_S = 1.5
RETRIES = 2
QUESTION = [{"role": "user", "content": "Say something."}]
TARGETS = {
    "flaky": "openai/flaky",  # scripted per test; answers normally once its script is spent
    "broken": "openai/status-500",
    "hanging": "openai/hang-10",
}


@pytest.fixture(scope="module")
def faults() -> Iterator[FaultServer]:
    server = FaultServer()
    yield server
    server.close()


def _policy(scorer: str, faults: FaultServer) -> str:
    lines = [scorer, "targets:"]
    bases = {name: faults.base_url for name in TARGETS} | {"dead": f"http://127.0.0.1:{free_port()}/v1"}
    models = TARGETS | {"dead": "openai/anything"}
    # No cooldowns: these tests are about what one request does (tests/test_fallbacks.py has cooldowns).
    for name, model in models.items():
        lines.append(
            f'  {name}: {{kind: litellm, model: {model}, api_base: "{bases[name]}", api_key_env: FAULTS_KEY, '
            f"timeout_s: {TIMEOUT_S}, num_retries: {RETRIES}, cooldown: {{failures: 0}}}}"
        )
    lines.append("rules:")
    for name in models:
        lines += [f"  - when: {{model: {name}}}", "    action: answer_with", f"    target: {name}"]
    lines += ["  - action: answer_with", "    target: flaky"]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def router(
    serve: Callable[[Policy], Served],
    faults: FaultServer,
    tiny_model: Path,
    tiny_head: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Served]:
    text = _policy(head_scorer_yaml(tiny_model, tiny_head), faults)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("FAULTS_KEY", "sk-faults")
        yield serve(policy_from(text, tmp_path_factory.mktemp("faults")))


@pytest.fixture
def stub(faults: FaultServer) -> FaultServer:
    faults.reset()
    return faults


def post(router: Served, model: str = "flaky", **fields: Any) -> httpx.Response:
    body = {"model": model, "messages": QUESTION, **fields}
    return httpx.post(f"{router.base_url}/v1/chat/completions", json=body, timeout=30)


def openai_error(response: httpx.Response) -> dict[str, Any]:
    """The error object of an OpenAI-shaped error body (exactly its four fields)."""
    body = response.json()
    assert list(body) == ["error"], body
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return dict(body["error"])


def upstream_errors(router: Served, target: str, kind: str) -> float:
    text = httpx.get(f"{router.base_url}/metrics", timeout=30).text
    for line in text.splitlines():
        if line.startswith("router_upstream_errors_total{") and (
            f'target="{target}"' in line and f'kind="{kind}"' in line
        ):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.mark.parametrize(
    ("behaviour", "status", "code", "kind"),
    [
        ("status-400", 400, "upstream_bad_request", "bad_request"),
        ("status-413", 413, "upstream_request_too_large", "bad_request"),
        ("status-422", 400, "upstream_bad_request", "bad_request"),
        ("status-401", 502, "upstream_auth_failed", "auth"),
        ("status-403", 502, "upstream_auth_failed", "auth"),
        ("status-404", 502, "upstream_not_found", "not_found"),
        ("status-409", 502, "upstream_failed", "other"),
        ("not-json", 502, "upstream_malformed", "malformed"),
    ],
)
def test_errors_retrying_cannot_fix_are_answered_at_once(
    router: Served, stub: FaultServer, behaviour: str, status: int, code: str, kind: str
) -> None:
    stub.script("flaky", *[behaviour] * (RETRIES + 1))
    before = upstream_errors(router, "flaky", kind)
    response = post(router)
    assert response.status_code == status, response.text
    error = openai_error(response)
    assert error["code"] == code
    assert error["type"] == "upstream_error"
    assert stub.calls() == 1  # never retried
    assert response.headers["x-should-retry"] == "false"
    assert "retry-after" not in response.headers
    assert upstream_errors(router, "flaky", kind) == before + 1
    if status < 500:  # the client's request was at fault: the provider's own words help fix it
        assert f"stub says {behaviour.split('-')[1]}" in error["message"]
    if behaviour in ("status-401", "status-403"):
        assert "not your API key" in error["message"]


@pytest.mark.parametrize(
    ("behaviour", "kind"),
    [("status-500", "server"), ("status-502", "server"), ("status-503", "server"), ("reset", "connection")],
)
def test_5xx_and_connection_resets_are_retried_then_a_502(
    router: Served, stub: FaultServer, behaviour: str, kind: str
) -> None:
    stub.script("flaky", *[behaviour] * (RETRIES + 1))
    before = upstream_errors(router, "flaky", kind)
    response = post(router)
    assert response.status_code == 502, response.text
    assert (
        openai_error(response)["code"]
        == f"upstream_{'connection' if kind == 'connection' else 'server_error'}"
    )
    assert stub.calls() == RETRIES + 1
    assert response.headers["x-should-retry"] == "false"
    assert upstream_errors(router, "flaky", kind) == before + 1


def test_a_transient_failure_is_retried_into_an_answer(router: Served, stub: FaultServer) -> None:
    stub.script("flaky", "status-500", "reset")
    response = post(router)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == ANSWER
    assert stub.calls() == 3


def test_a_dead_target_is_a_502_labelled_connection(router: Served) -> None:
    before = upstream_errors(router, "dead", "connection")
    response = post(router, "dead")
    assert response.status_code == 502
    assert openai_error(response)["code"] == "upstream_connection"
    assert response.headers["x-should-retry"] == "false"
    assert upstream_errors(router, "dead", "connection") == before + 1


def test_a_429_whose_retry_after_exceeds_the_deadline_is_passed_on_at_once(
    router: Served, stub: FaultServer
) -> None:
    stub.script("flaky", "status-429-retry-30")
    before = upstream_errors(router, "flaky", "rate_limit")
    started = time.monotonic()
    response = post(router)
    assert response.status_code == 429
    assert response.headers["retry-after"] == "30"
    assert "x-should-retry" not in response.headers  # the SDKs then wait as told
    assert openai_error(response)["code"] == "upstream_rate_limited"
    assert stub.calls() == 1
    assert time.monotonic() - started < 1.0
    assert upstream_errors(router, "flaky", "rate_limit") == before + 1


def test_a_429_retry_after_within_the_deadline_is_waited_for(router: Served, stub: FaultServer) -> None:
    stub.script("flaky", "status-429-retry-1")
    started = time.monotonic()
    response = post(router)
    assert response.status_code == 200, response.text
    assert stub.calls() == 2
    assert time.monotonic() - started >= 1.0


def test_429s_without_retry_after_are_retried_with_backoff(router: Served, stub: FaultServer) -> None:
    stub.script("flaky", *["status-429"] * (RETRIES + 1))
    response = post(router)
    assert response.status_code == 429
    assert "retry-after" not in response.headers
    assert stub.calls() == RETRIES + 1


def test_a_503_with_retry_after_beyond_the_deadline_is_a_503_with_it(
    router: Served, stub: FaultServer
) -> None:
    stub.script("flaky", "status-503-retry-30")
    response = post(router)
    assert response.status_code == 503
    assert response.headers["retry-after"] == "30"
    assert openai_error(response)["code"] == "upstream_unavailable"
    assert stub.calls() == 1


def test_timeout_s_bounds_the_whole_call_retries_included(router: Served, stub: FaultServer) -> None:
    """A failure, a wait, then a hang: the client has its 504 at timeout_s, not after three timeouts."""
    stub.script("flaky", "status-500", "hang-10", "hang-10")
    before = upstream_errors(router, "flaky", "timeout")
    started = time.monotonic()
    response = post(router)
    elapsed = time.monotonic() - started
    assert response.status_code == 504, response.text
    assert openai_error(response)["code"] == "upstream_timeout"
    assert response.headers["x-should-retry"] == "false"
    assert TIMEOUT_S - 0.1 <= elapsed < TIMEOUT_S + 1.0
    assert stub.calls() == 2  # the hang took what was left of the deadline
    assert upstream_errors(router, "flaky", "timeout") == before + 1


def test_the_openai_sdk_does_not_multiply_the_routers_retries(router: Served, stub: FaultServer) -> None:
    client = openai.OpenAI(base_url=f"{router.base_url}/v1", api_key="unused")  # its default max_retries (2)
    assert client.max_retries == 2
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model="broken", messages=QUESTION)  # type: ignore[arg-type]
    assert caught.value.status_code == 502
    assert stub.calls() == RETRIES + 1

    stub.reset()  # connections reset: what a dead host behind a load balancer looks like
    stub.script("flaky", *["reset"] * 10)
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="flaky", messages=QUESTION)  # type: ignore[arg-type]
    assert stub.calls() == RETRIES + 1

    stub.reset()
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as timed_out:
        client.chat.completions.create(model="hanging", messages=QUESTION)  # type: ignore[arg-type]
    assert timed_out.value.status_code == 504
    assert stub.calls() == 1
    assert time.monotonic() - started < TIMEOUT_S + 1.0


def test_retry_after_takes_seconds_milliseconds_and_dates() -> None:
    import email.utils

    from router.targets.litellm import backoff
    from router.targets.litellm_errors import retry_after_s

    assert retry_after_s(httpx.Headers({"retry-after": "7"})) == 7
    assert retry_after_s(httpx.Headers({"retry-after": "2", "retry-after-ms": "1500"})) == 1.5
    soon = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 < (retry_after_s(httpx.Headers({"retry-after": soon})) or 0) <= 30
    assert retry_after_s(httpx.Headers({"retry-after": "whenever"})) is None
    assert retry_after_s(httpx.Headers({})) is None
    assert all(
        0.125 <= backoff(1) <= 0.25 and 2.0 <= backoff(5) <= 4.0 and backoff(50) <= 4.0 for _ in range(50)
    )


# Streams


def sse(response: httpx.Response) -> list[Any]:
    """The events of an SSE body: parsed JSON, or the string "[DONE]"."""
    events = []
    for line in response.text.splitlines():
        if line.startswith("data: "):
            data = line.removeprefix("data: ")
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


def test_a_healthy_stream_passes_through(router: Served, stub: FaultServer) -> None:
    response = post(router, stream=True)
    assert response.status_code == 200
    events = sse(response)
    assert events[-1] == "[DONE]"
    assert "".join(
        e["choices"][0]["delta"].get("content") or "" for e in events[:-1] if e["choices"]
    ).strip() == (ANSWER)
    assert events[-2]["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize("behaviour", ["stream-cut", "stream-end-early"])
def test_a_stream_broken_off_mid_way_ends_with_an_error_event(
    router: Served, stub: FaultServer, behaviour: str
) -> None:
    stub.script("flaky", behaviour)
    before = upstream_errors(router, "flaky", "stream_cut")
    response = post(router, stream=True)
    assert response.status_code == 200  # the headers were gone with the first chunk
    events = sse(response)
    assert events[-1] == "[DONE]"
    error = events[-2]["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == "stream_cut"
    assert "flaky" in error["message"]
    assert "Half " in json.dumps(events[0])  # what the upstream did send came through
    assert not any(
        e != "[DONE]" and any(c.get("finish_reason") for c in e.get("choices", [])) for e in events
    )
    assert stub.calls() == 1
    assert upstream_errors(router, "flaky", "stream_cut") == before + 1


@pytest.mark.parametrize("behaviour", ["not-json", "not-sse"])
def test_a_stream_that_is_not_one_is_a_502_before_any_chunk(
    router: Served, stub: FaultServer, behaviour: str
) -> None:
    """Nothing valid came, so nothing was sent: the client gets an HTTP error rather than an empty success
    (or a 200 carrying only an error event)."""
    stub.script("flaky", behaviour)
    before = upstream_errors(router, "flaky", "malformed")
    response = post(router, stream=True)
    assert response.status_code == 502, response.text
    assert openai_error(response)["code"] == "upstream_malformed"
    assert stub.calls() == 1
    assert upstream_errors(router, "flaky", "malformed") == before + 1


def test_a_stream_that_fails_before_its_first_chunk_is_retried(router: Served, stub: FaultServer) -> None:
    stub.script("flaky", "reset", "status-503")
    response = post(router, stream=True)
    assert response.status_code == 200
    assert sse(response)[-2]["choices"][0]["finish_reason"] == "stop"
    assert stub.calls() == 3


def test_a_streamed_429_keeps_its_status_and_retry_after(router: Served, stub: FaultServer) -> None:
    stub.script("flaky", "status-429-retry-30")
    response = post(router, stream=True)
    assert response.status_code == 429
    assert response.headers["retry-after"] == "30"
    openai_error(response)


def test_a_stream_that_never_starts_is_a_504_at_timeout_s(router: Served, stub: FaultServer) -> None:
    started = time.monotonic()
    response = post(router, "hanging", stream=True)
    assert response.status_code == 504
    assert openai_error(response)["code"] == "upstream_timeout"
    assert time.monotonic() - started < TIMEOUT_S + 1.0
    assert stub.calls() == 1


def test_the_sdk_raises_on_a_broken_stream(router: Served, stub: FaultServer) -> None:
    stub.script("flaky", "stream-cut")
    client = openai.OpenAI(base_url=f"{router.base_url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.APIError, match=re.escape("broke off the stream")):
        for _ in client.chat.completions.create(model="flaky", messages=QUESTION, stream=True):  # type: ignore[arg-type]
            pass


def test_an_opened_stream_that_is_never_read_still_releases_its_upstream(
    faults: FaultServer, tiny_model: Path, tiny_head: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A streamed answer the client leaves before reading (its response cancelled before the first event)."""
    import asyncio

    from localmodel.model import LocalModel
    from router.schemas import ChatCompletionRequest
    from router.service import Router

    monkeypatch.setenv("FAULTS_KEY", "sk-faults")
    policy = policy_from(_policy(head_scorer_yaml(tiny_model, tiny_head), faults), tmp_path)
    request = ChatCompletionRequest.model_validate({"model": "flaky", "messages": QUESTION, "stream": True})

    async def run() -> None:
        router = Router(policy, LocalModel(str(tiny_model)))
        faults.script("flaky", "stream-slow")
        before = faults.abandoned
        routed = await router.route(request)
        assert routed.chunks is not None
        await routed.chunks.aclose()  # not one chunk read
        for _ in range(100):
            if faults.abandoned > before:
                break
            await asyncio.sleep(0.05)
        assert faults.abandoned == before + 1  # the upstream saw the connection go
        await router.close()

    asyncio.run(run())
