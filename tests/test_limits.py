"""Bounded requests over real HTTP: no single request exhausts the replica or holds the model for long, and a
client that goes away takes its work with it."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from localmodel.model import Aborted, LocalModel
from policies import Policy
from tests.conftest import Served, head_scorer_yaml, policy_from
from tests.provider import Provider

Body = dict[str, Any]
SHORT: Body = {"model": "router", "messages": [{"role": "user", "content": "Is this short?"}]}
LONG_ANSWER = 1500
"""Tokens the `long` target may write: the random tiny model almost never stops on its own."""


@pytest.fixture(scope="module")
def provider() -> Iterator[Provider]:
    provider = Provider()
    yield provider
    provider.close()


@pytest.fixture(scope="module")
def served(
    serve: Callable[..., Served],
    tiny_model: Path,
    tiny_head: Path,
    provider: Provider,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Served]:
    limits = "limits: {max_body_bytes: 1048576, max_messages: 50, max_prompt_tokens: 300}"
    text = f"""\
{head_scorer_yaml(tiny_model, tiny_head)}{limits}
targets:
  local: {{kind: local, max_tokens: 8}}
  long: {{kind: local, max_tokens: {LONG_ANSWER}}}
  remote: {{kind: litellm, model: openai/any, api_base: "{provider.base_url}", api_key_env: LIMITS_KEY}}
rules:
  - when: {{model: remote}}
    action: answer_with
    target: remote
  - when: {{model: long}}
    action: answer_with
    target: long
  - when: {{confidence_at_least: 0.0}}
    action: answer_with
    target: local
  - action: refuse
"""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("LIMITS_KEY", "sk-test")
        yield serve(policy_from(text, tmp_path_factory.mktemp("limits")))


def chat(served: Served, body: Body | None = None, **kwargs: Any) -> httpx.Response:
    return httpx.post(f"{served.base_url}/v1/chat/completions", json=body or SHORT, timeout=60, **kwargs)


def error_of(response: httpx.Response) -> dict[str, object]:
    assert response.headers["content-type"].startswith("application/json"), response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return dict(error)


def test_a_body_over_the_limit_is_a_413_before_it_is_parsed(served: Served) -> None:
    huge = {"model": "router", "messages": [{"role": "user", "content": "x" * 10_000_000}]}
    response = chat(served, huge)
    assert response.status_code == 413
    assert error_of(response)["code"] == "request_too_large"
    assert "1048576 bytes" in str(error_of(response)["message"])
    assert chat(served).status_code == 200


def test_a_chunked_body_is_counted_as_it_arrives(served: Served) -> None:
    def pieces() -> Iterator[bytes]:  # no content-length: the server cannot know the size up front
        yield b'{"model": "router", "messages": [{"role": "user", "content": "'
        for _ in range(200):
            yield b"y" * 10_000
        yield b'"}]}'

    response = httpx.post(
        f"{served.base_url}/v1/chat/completions",
        content=pieces(),
        headers={"content-type": "application/json"},
        timeout=60,
    )
    assert response.status_code == 413
    assert error_of(response)["code"] == "request_too_large"


def test_a_prompt_too_long_for_the_local_model_is_a_400_naming_the_limit(served: Served) -> None:
    long = {"model": "router", "messages": [{"role": "user", "content": "word " * 10_000}]}
    for path in ("/v1/chat/completions", "/v1/score"):
        body = long if path.endswith("completions") else {"messages": long["messages"]}
        response = httpx.post(f"{served.base_url}{path}", json=body, timeout=60)
        assert response.status_code == 400, response.text
        error = error_of(response)
        assert (error["code"], error["param"]) == ("context_length_exceeded", "messages")
        assert "at most 300" in str(error["message"])


def test_the_prompt_limit_does_not_apply_to_what_only_passes_through(served: Served) -> None:
    long = {"model": "remote", "messages": [{"role": "user", "content": "word " * 5_000}]}
    assert chat(served, long).status_code == 200


def test_too_many_messages_is_a_400(served: Served) -> None:
    for model in ("router", "remote"):  # counted before any routing
        response = chat(served, {"model": model, "messages": [{"role": "user", "content": "hi"}] * 51})
        assert response.status_code == 400
        assert error_of(response)["code"] == "too_many_messages"
        assert "at most 50" in str(error_of(response)["message"])


def test_a_long_user_tag_is_a_400(served: Served) -> None:
    response = chat(served, {**SHORT, "user": "u" * 257})
    assert response.status_code == 400
    assert error_of(response)["param"] == "user"


@pytest.mark.parametrize("model", ["router", "remote"])
def test_a_lone_surrogate_is_a_400_on_every_path(served: Served, provider: Provider, model: str) -> None:
    body = '{"model": "MODEL", "messages": [{"role": "user", "content": "bad \\ud800 text"}]}'
    body = body.replace("MODEL", model)
    response = httpx.post(
        f"{served.base_url}/v1/chat/completions",
        content=body,
        headers={"content-type": "application/json"},
        timeout=60,
    )
    assert response.status_code == 400
    assert "messages.0.content holds a lone UTF-16 surrogate" in str(error_of(response)["message"])


def test_oversized_requests_do_not_hold_up_a_short_one(served: Served) -> None:
    oversized = [
        {"model": "router", "messages": [{"role": "user", "content": "x" * 10_000_000}]},
        {"model": "router", "messages": [{"role": "user", "content": "z" * 200_000}]},
        {"model": "router", "messages": [{"role": "user", "content": "m"}] * 10_000},
    ]
    with ThreadPoolExecutor(4) as pool:
        bad = [pool.submit(chat, served, body) for body in oversized]
        short = pool.submit(chat, served)
        assert short.result().status_code == 200
        assert sorted(f.result().status_code for f in bad) == [400, 400, 413]


def requests_answered(served: Served, code: str) -> float:
    for line in httpx.get(f"{served.base_url}/metrics").text.splitlines():
        series = line.startswith("router_http_requests_total{") and 'route="/v1/chat/completions"' in line
        if series and f'code="{code}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_a_client_that_disconnects_cancels_its_generation(served: Served) -> None:
    before = requests_answered(served, "499")
    body = b'{"model": "long", "messages": [{"role": "user", "content": "Tell me everything."}]}'
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n%s" % (len(body), body)
    )
    with socket.create_connection(("127.0.0.1", served.port)) as sock:
        sock.sendall(request)
        time.sleep(0.5)  # the generation is under way
    deadline = time.monotonic() + 30
    while requests_answered(served, "499") == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert requests_answered(served, "499") == before + 1
    assert chat(served).status_code == 200


def test_an_aborted_job_stops_within_a_step(tiny_model: Path) -> None:
    model = LocalModel(str(tiny_model))
    steps: list[int] = []
    model.decoder.layers[0].register_forward_hook(lambda *_: steps.append(1))
    abort = threading.Event()
    threading.Timer(0.3, abort.set).start()
    with pytest.raises(Aborted):
        model.run_abortable(abort, model.draft, [{"role": "user", "content": "Go on."}], LONG_ANSWER)
    ran = len(steps)
    assert 0 < ran < LONG_ANSWER / 2
    # The model is free again and answers a short job in full.
    assert model.run_abortable(threading.Event(), model.draft, [{"role": "user", "content": "Hi"}], 4)
    assert model.closing.is_set() is False


def test_cancelling_a_caller_aborts_its_job_on_the_model_thread(tiny_model: Path, tiny_head: Path) -> None:
    from router.service import Router

    policy: Policy = policy_from(
        f"{head_scorer_yaml(tiny_model, tiny_head)}targets:\n  local: {{kind: local, max_tokens: 8}}\n"
        "rules:\n  - action: answer_with\n    target: local\n",
        Path(tiny_head).parent,
    )
    router = Router(policy, LocalModel(str(tiny_model)))
    steps: list[int] = []
    router.model.decoder.layers[0].register_forward_hook(lambda *_: steps.append(1))

    async def run() -> None:
        job = asyncio.create_task(
            router.worker.run(router.model.draft, [{"role": "user", "content": "Go on."}], LONG_ANSWER)
        )
        await asyncio.sleep(0.3)
        job.cancel()
        with pytest.raises(asyncio.CancelledError):
            await job
        # The next job runs only once the cancelled one has left the model's worker.
        await router.worker.run(lambda: None)
        assert 0 < len(steps) < LONG_ANSWER / 2
        await router.close()

    asyncio.run(run())


def test_a_scorers_draft_never_outgrows_max_draft_tokens(tiny_model: Path, tmp_path: Path) -> None:
    from router.service import Router

    policy = policy_from(
        f'scorer: {{method: nprob, model: "{tiny_model}", max_draft_tokens: 8}}\n'
        "targets:\n  local: {kind: local, max_tokens: 8}\n"
        "rules:\n  - action: answer_with\n    target: local\n",
        tmp_path,
    )

    async def run() -> None:
        router = Router(policy, LocalModel(str(tiny_model)))
        scored = await router.score([{"role": "user", "content": "Go on."}], 1_000_000, cached=False)
        assert scored.draft is not None and scored.draft.completion_tokens <= 8
        await router.close()

    asyncio.run(run())
