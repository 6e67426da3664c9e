"""`kind: openai` targets keep what the litellm target's fault tests pin: the tests of
tests/test_upstream_faults.py are collected here again (imported), against a router whose remote targets are
the same policy's with `kind: openai` (tests/test_openai_fallbacks.py and test_openai_forwarding.py do the
same for fallbacks and forwarding). Then what only this kind does: the upstream's answer passed on as it
came, exactly the allow-listed fields sent, one pooled connection reused, its event-stream parser, and its
pool closed only once its streams are done.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from policies import OpenAITarget, Policy
from router.schemas import ChatCompletionRequest
from router.targets.litellm_errors import Malformed
from router.targets.openai import OpenAIUpstream, UpstreamStatus, events
from tests.conftest import Served, head_scorer_yaml, policy_from
from tests.faults import ANSWER, USAGE, FaultServer
from tests.test_policies import expect_problems
from tests.test_upstream_faults import (  # noqa: F401  (collected here again, against kind: openai)
    QUESTION,
    _policy,
    post,
    sse,
    test_5xx_and_connection_resets_are_retried_then_a_502,
    test_429s_without_retry_after_are_retried_with_backoff,
    test_a_429_retry_after_within_the_deadline_is_waited_for,
    test_a_429_whose_retry_after_exceeds_the_deadline_is_passed_on_at_once,
    test_a_503_with_retry_after_beyond_the_deadline_is_a_503_with_it,
    test_a_dead_target_is_a_502_labelled_connection,
    test_a_healthy_stream_passes_through,
    test_a_stream_broken_off_mid_way_ends_with_an_error_event,
    test_a_stream_that_fails_before_its_first_chunk_is_retried,
    test_a_stream_that_is_not_one_is_a_502_before_any_chunk,
    test_a_stream_that_never_starts_is_a_504_at_timeout_s,
    test_a_streamed_429_keeps_its_status_and_retry_after,
    test_a_transient_failure_is_retried_into_an_answer,
    test_errors_retrying_cannot_fix_are_answered_at_once,
    test_the_openai_sdk_does_not_multiply_the_routers_retries,
    test_the_sdk_raises_on_a_broken_stream,
    test_timeout_s_bounds_the_whole_call_retries_included,
)


def as_openai(policy: str) -> str:
    """A policy of litellm targets on OpenAI-compatible upstreams, as the same targets of kind openai (whose
    model is the upstream's own name, without litellm's provider prefix)."""
    converted = policy.replace("kind: litellm", "kind: openai").replace("model: openai/", "model: ")
    assert "kind: openai" in converted
    return converted


@pytest.fixture(scope="module")
def faults() -> Iterator[FaultServer]:
    server = FaultServer()
    yield server
    server.close()


@pytest.fixture
def stub(faults: FaultServer) -> FaultServer:
    faults.reset()
    return faults


@pytest.fixture(scope="module")
def router(
    serve: Callable[[Policy], Served],
    faults: FaultServer,
    tiny_model: Path,
    tiny_head: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Served]:
    text = as_openai(_policy(head_scorer_yaml(tiny_model, tiny_head), faults))
    with pytest.MonkeyPatch.context() as env:
        env.setenv("FAULTS_KEY", "sk-faults")
        yield serve(policy_from(text, tmp_path_factory.mktemp("openai-faults")))


def metric(router: Served, name: str, **labels: str) -> float:
    text = httpx.get(f"{router.base_url}/metrics", timeout=30).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return 0.0


def test_the_calls_do_not_go_through_litellm(router: Served, stub: FaultServer) -> None:
    """So the imported tests hold the openai kind: its calls are aiohttp's own, not the openai SDK's."""
    assert post(router).status_code == 200
    agent = stub.recorded("flaky")[-1].headers["user-agent"]
    assert "aiohttp/" in agent and "OpenAI" not in agent


def test_the_upstreams_answer_is_passed_on_as_it_came(router: Served, stub: FaultServer) -> None:
    response = post(router)
    assert response.status_code == 200, response.text
    message = {"role": "assistant", "content": ANSWER}
    assert response.json() == {
        "id": "chatcmpl-faults",
        "object": "chat.completion",
        "created": 0,
        "model": "flaky",
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        "usage": USAGE,
    }
    assert response.headers["x-router-target"] == "flaky"


def test_exactly_the_allowed_fields_and_the_key_reach_the_upstream(router: Served, stub: FaultServer) -> None:
    assert post(router, temperature=0.5, seed=3).status_code == 200
    assert post(router, stream=True).status_code == 200
    plain, streamed = stub.recorded("flaky")
    assert plain.path == streamed.path == "/v1/chat/completions"
    assert plain.headers["authorization"] == "Bearer sk-faults"
    assert plain.body == {"temperature": 0.5, "seed": 3, "model": "flaky", "messages": QUESTION}
    # A stream always asks for usage, so that its tokens are metered whether or not the client asked.
    stream_options = {"include_usage": True}
    assert streamed.body == {
        "model": "flaky",
        "messages": QUESTION,
        "stream": True,
        "stream_options": stream_options,
    }


def test_usage_is_metered_and_a_stream_shows_it_only_when_asked(router: Served, stub: FaultServer) -> None:
    def tokens() -> float:
        return metric(router, "router_tokens_total", target="flaky", direction="completion")

    before = tokens()
    assert post(router).status_code == 200
    assert tokens() == before + USAGE["completion_tokens"]

    hidden = post(router, stream=True)
    assert not any("usage" in event for event in sse(hidden) if event != "[DONE]")
    assert tokens() == before + 2 * USAGE["completion_tokens"]

    shown = post(router, stream=True, stream_options={"include_usage": True})
    assert sse(shown)[-2]["usage"] == USAGE
    assert tokens() == before + 3 * USAGE["completion_tokens"]


def test_costs_come_from_the_declared_cost_else_litellms_price_list() -> None:
    import litellm

    listed = OpenAIUpstream("t", OpenAITarget(kind="openai", model="gpt-4o-mini", api_base="http://h/v1"))
    prompt, completion = litellm.cost_per_token(
        model="openai/gpt-4o-mini", prompt_tokens=1000, completion_tokens=500
    )
    assert listed.cost(1000, 500) == pytest.approx(prompt + completion)
    unlisted = OpenAIUpstream("t", OpenAITarget(kind="openai", model="my-qwen", api_base="http://h/v1"))
    assert unlisted.cost(1000, 500) == 0.0
    declared = OpenAITarget.model_validate(
        {
            "kind": "openai",
            "model": "gpt-4o-mini",
            "api_base": "http://h/v1",
            "cost": {"input_per_million": 1, "output_per_million": 2},
        }
    )
    assert OpenAIUpstream("t", declared).cost(1_000_000, 1_000_000) == 3.0


def test_one_pooled_connection_carries_sequential_calls() -> None:
    from bench.stub_upstream import Connection

    accepted = []

    class Counted(Connection):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            accepted.append(transport)
            super().connection_made(transport)

    async def run() -> None:
        server = await asyncio.get_running_loop().create_server(Counted, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        target = OpenAITarget(kind="openai", model="stub", api_base=f"http://127.0.0.1:{port}/v1")
        upstream = OpenAIUpstream("stub", target)
        request = ChatCompletionRequest.model_validate({"model": "stub", "messages": QUESTION})
        try:
            for _ in range(20):
                assert (await upstream.complete(request))["choices"]
            streamed = request.model_copy(update={"stream": True})
            opened = await upstream.stream(streamed, None, lambda usage: None)
            assert [c async for c in opened][-1]["choices"][0]["finish_reason"] == "stop"
            await opened.aclose()
            assert (await upstream.complete(request))["choices"]
        finally:
            await upstream.close()
            server.close()
        assert len(accepted) == 1

    asyncio.run(run())


async def _parsed(body: bytes, piece: int = 7) -> list[Any]:
    """The chunks `events` finds in `body`, arriving `piece` bytes at a time (splitting lines anywhere)."""

    async def pieces() -> AsyncIterator[bytes]:
        for start in range(0, len(body), piece):
            yield body[start : start + piece]

    return [chunk async for chunk in events(pieces())]


@pytest.mark.parametrize(
    ("body", "chunks"),
    [
        (b'data: {"a": 1}\n\ndata: {"b": 2}\n\ndata: [DONE]\n\n', [{"a": 1}, {"b": 2}]),
        (b': keep-alive\r\n\r\nevent: chunk\r\ndata:{"a": 1}\r\n\r\n', [{"a": 1}]),  # CRLF, comments, events
        (b'data: {"a":\ndata: 1}\n\n', [{"a": 1}]),  # one event over two data lines
        (b'data: {"a": 1}', [{"a": 1}]),  # the last event without its blank line
        (b'data: {"a": 1}\n\ndata: [DONE]\n\ndata: {"after": 1}\n\n', [{"a": 1}]),  # nothing after [DONE]
        (b"<html>not a stream</html>", []),
    ],
)
def test_the_event_stream_parser(body: bytes, chunks: list[Any]) -> None:
    assert asyncio.run(_parsed(body)) == asyncio.run(_parsed(body, len(body) or 1)) == chunks


def test_an_error_inside_a_stream_is_raised_with_its_status() -> None:
    error = {"object": "error", "message": "too long", "type": "BadRequestError", "code": 400}
    with pytest.raises(UpstreamStatus) as caught:
        asyncio.run(_parsed(b"data: " + json.dumps({"error": error}).encode() + b"\n\n"))
    assert (caught.value.status_code, caught.value.body) == (400, error)
    with pytest.raises(UpstreamStatus) as unnumbered:
        asyncio.run(_parsed(b'data: {"error": {"message": "boom"}}\n\n'))
    assert unnumbered.value.status_code == 502
    with pytest.raises(Malformed):
        asyncio.run(_parsed(b"data: [1, 2]\n\n"))
    for not_json in (b"data: {not json\n\n", b"data: \xff\xfe\n\n"):
        with pytest.raises(Malformed):
            asyncio.run(_parsed(not_json))


def test_closing_waits_for_the_streams_still_passed_on(faults: FaultServer) -> None:
    """A reload retires the old router while its streams may still run: they finish on the old pool, which
    closes after the last."""
    faults.reset()
    target = OpenAITarget(kind="openai", model="stream-slow", api_base=faults.base_url)
    request = ChatCompletionRequest.model_validate({"model": "x", "messages": QUESTION, "stream": True})

    async def run() -> None:
        upstream = OpenAIUpstream("slow", target)
        opened = await upstream.stream(request, None, lambda usage: None)
        chunks = aiter(opened)
        await anext(chunks)
        await upstream.close()
        assert (await anext(chunks))["choices"][0]["delta"]["content"] == "more "  # still flowing
        assert upstream._session is not None
        await opened.aclose()
        assert upstream._session is None  # closed with the last stream

    asyncio.run(run())


def test_an_opened_stream_that_is_never_read_still_releases_its_upstream(
    faults: FaultServer, tiny_model: Path, tiny_head: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from localmodel.model import LocalModel
    from router.service import Router

    monkeypatch.setenv("FAULTS_KEY", "sk-faults")
    policy = policy_from(as_openai(_policy(head_scorer_yaml(tiny_model, tiny_head), faults)), tmp_path)
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


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ("{kind: openai, model: m}", r"targets\.remote\.api_base: Field required"),
        ('{kind: openai, model: m, api_base: "127.0.0.1:8000/v1"}', r"api_base: String should match pattern"),
        ('{kind: openai, api_base: "http://h/v1"}', r"targets\.remote\.model: Field required"),
        (
            '{kind: openai, model: m, api_base: "http://h/v1", base: x}',
            r"base: Extra inputs are not permitted",
        ),
    ],
)
def test_an_openai_target_needs_a_model_and_a_url(
    write_policy: Callable[[str], Path], entry: str, problem: str
) -> None:
    text = f"targets:\n  remote: {entry}\nrules:\n  - action: answer_with\n    target: remote\n"
    problems = expect_problems(write_policy, text)
    assert any(re.search(problem, line) for line in problems), problems


def test_the_environments_proxy_is_used(faults: FaultServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """HTTP(S)_PROXY and NO_PROXY, as litellm's clients take them (looked up once, not per request)."""
    faults.reset()
    monkeypatch.setenv("HTTP_PROXY", faults.url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    target = OpenAITarget(kind="openai", model="ok", api_base="http://upstream.invalid/v1")
    upstream = OpenAIUpstream("proxied", target)
    request = ChatCompletionRequest.model_validate({"model": "x", "messages": QUESTION})

    async def run() -> None:
        try:
            assert (await upstream.complete(request))["choices"][0]["message"]["content"] == ANSWER
        finally:
            await upstream.close()

    asyncio.run(run())
    assert [r.path for r in faults.recorded()] == ["http://upstream.invalid/v1/chat/completions"]


def test_each_request_logs_one_line_saying_how_it_was_routed(
    router: Served, stub: FaultServer, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="router"):
        response = post(router)
        refused = post(router, model="nonexistent")
    assert (response.status_code, refused.status_code) == (200, 404)
    lines = [r.getMessage() for r in caplog.records if r.name == "router" and r.levelno == logging.INFO]
    assert len(lines) == 2, lines
    routed = response.headers
    assert re.fullmatch(
        rf"POST /v1/chat/completions 200 \d+\.\d ms request={routed['x-router-request-id']} "
        r"rule=rules\[\d+\] decision=answer target=flaky",
        lines[0],
    ), lines[0]
    assert re.fullmatch(r"POST /v1/chat/completions 404 \d+\.\d ms", lines[1]), lines[1]
    assert QUESTION[0]["content"] not in "".join(lines)
