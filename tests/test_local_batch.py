"""Local answers streamed as they are written, and concurrent ones written as one batch: over real HTTP
and through the router, on a tiny random model whose answers are varied text."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from localmodel.model import LocalModel
from router.schemas import ChatCompletionRequest
from router.service import Router
from router.targets.local import _Text
from tests.conftest import Served, head_scorer_yaml, policy_from

Body = dict[str, Any]
LONG = 300
"""Tokens the `long` target may write: the random model never stops on its own."""


def policy_text(model: Path, head: Path, answers: int = 8) -> str:
    return f"""\
{head_scorer_yaml(model, head)}limits: {{max_prompt_tokens: 300, max_local_answers: {answers}}}
targets:
  local: {{kind: local, max_tokens: 48}}
  long: {{kind: local, max_tokens: {LONG}}}
rules:
  - when: {{model: long}}
    action: answer_with
    target: long
  - when: {{model: local}}
    action: answer_with
    target: local
  - when: {{confidence_at_least: 0.0}}
    action: answer_with
    target: local
  - action: refuse
"""


@pytest.fixture(scope="module")
def served(
    serve: Callable[..., Served],
    untied_model: Path,
    untied_head: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Served:
    # One answer at a time: a turn that a disconnected stream failed to give back would hang the next.
    text = policy_text(untied_model, untied_head, answers=1)
    return serve(policy_from(text, tmp_path_factory.mktemp("local-batch")))


def chat(served: Served) -> str:
    return f"{served.base_url}/v1/chat/completions"


def body(content: str, model: str = "router", **fields: Any) -> Body:
    return {"model": model, "messages": [{"role": "user", "content": content}], **fields}


def events(response: httpx.Response) -> Iterator[str]:
    for line in response.iter_lines():
        if line.startswith("data: "):
            yield line.removeprefix("data: ")


def metric(served: Served, name: str, labels: str = "") -> float:
    for line in httpx.get(f"{served.base_url}/metrics").text.splitlines():
        if line.startswith(f"{name}{labels} ") or line.startswith(f"{name}{{{labels}}} "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def jobs(served: Served) -> float:
    """Generation jobs (prefills and steps) the replica has run."""
    return metric(served, "router_local_batch_rows_count")


@pytest.mark.parametrize("model", ["router", "local"])  # scored (by a head: before generation), or not
def test_a_streamed_answer_is_the_answer_with_the_same_headers(served: Served, model: str) -> None:
    question = body("Tell me about lighthouses.", model, max_tokens=30)
    whole = httpx.post(chat(served), json=question, timeout=60)
    streamed = {**question, "stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", chat(served), json=streamed, timeout=60) as response:
        assert response.status_code == 200
        said = list(events(response))
    assert said[-1] == "[DONE]"
    chunks = [json.loads(event) for event in said[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    contents = [c["choices"][0]["delta"]["content"] for c in chunks[1:-2]]
    assert len(contents) > 5 and all(contents)  # a piece per token or so, none empty
    assert chunks[-2]["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "length"}
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == whole.json()["usage"]
    assert "".join(contents) == whole.json()["choices"][0]["message"]["content"]
    assert {c["id"] for c in chunks} == {chunks[0]["id"]} and chunks[0]["model"] == "local"
    # Each request draws its own id, and its own lot for the decision log's sampled share.
    per_request = {
        "x-router-request-id",
        "x-router-confidence",
        "x-router-confidences",
        "x-router-decision-kept",
    }
    same = {k: v for k, v in whole.headers.items() if k.startswith("x-router") and k not in per_request}
    assert same == {k: v for k, v in response.headers.items() if k in same}
    assert ("x-router-confidence" in response.headers) == (model == "router")


def test_usage_is_metered_at_the_end_of_a_stream_that_did_not_ask_for_it(served: Served) -> None:
    written = 'direction="completion",target="local"'
    before = metric(served, "router_tokens_total", written)
    question = body("Count the stars.", "local", max_tokens=20, stream=True)
    with httpx.stream("POST", chat(served), json=question, timeout=60) as response:
        chunks = [json.loads(e) for e in events(response) if e != "[DONE]"]
    assert all(chunk["choices"] for chunk in chunks)  # no usage chunk: the client did not ask
    assert metric(served, "router_tokens_total", written) == before + 20


def test_the_first_token_reaches_the_client_while_the_answer_is_being_written(served: Served) -> None:
    question = body("Tell me everything.", "long", stream=True)
    started = jobs(served)
    with httpx.stream("POST", chat(served), json=question, timeout=120) as response:
        said = events(response)
        for event in said:
            if json.loads(event)["choices"][0]["delta"].get("content"):
                at_first_token = jobs(served) - started
                break
        rest = list(said)
    assert rest[-1] == "[DONE]"
    # Replayed, the whole answer (a job per token) would be written before its first chunk is sent.
    assert at_first_token < (jobs(served) - started) / 4


def test_a_client_that_leaves_mid_stream_stops_its_generation(served: Served) -> None:
    question = body("Tell me everything.", "long", stream=True)
    started = jobs(served)
    with httpx.stream("POST", chat(served), json=question, timeout=120) as response:
        said = events(response)
        for _ in range(4):
            next(said)
    # The one turn (max_local_answers: 1) is free again: the next answer is written, not stuck behind.
    assert httpx.post(chat(served), json=body("Hi"), timeout=60).status_code == 200
    stopped = jobs(served)
    assert stopped - started < LONG / 2
    assert jobs(served) == stopped  # nothing is still being written


def test_a_prompt_too_long_is_a_400_on_every_local_path(served: Served) -> None:
    for model in ("router", "local"):
        for stream in (False, True):
            question = body("word " * 1000, model, stream=stream)
            response = httpx.post(chat(served), json=question, timeout=60)
            assert response.status_code == 400, response.text
            error = response.json()["error"]
            assert error["code"] == "context_length_exceeded" and "at most 300" in error["message"]


def test_concurrent_answers_are_written_together_and_as_they_are_alone(
    untied_model: Path, untied_head: Path, tmp_path: Path
) -> None:
    policy = policy_from(policy_text(untied_model, untied_head), tmp_path)
    questions = [
        ChatCompletionRequest.model_validate(body(" ".join(["Why"] * (1 + 4 * k)), max_tokens=8 + 5 * k))
        for k in range(6)
    ]

    async def answers(router: Router, together: bool) -> list[str]:
        if together:
            routed = await asyncio.gather(*[router.route(q) for q in questions])
        else:
            routed = [await router.route(q) for q in questions]
        return [r.body["choices"][0]["message"]["content"] for r in routed if r.body]

    async def run() -> None:
        router = Router(policy, LocalModel(str(untied_model)))
        alone = await answers(router, together=False)

        def jobs(rows: str = "+Inf") -> float:
            """Generation jobs so far that wrote at most `rows` rows."""
            sample = router.metrics.registry.get_sample_value
            return sample("router_local_batch_rows_bucket", {"le": rows}) or 0.0

        assert jobs("1.0") == jobs() > 0
        assert await answers(router, together=True) == alone and all(alone)
        assert jobs("1.0") < jobs()  # some jobs wrote several rows
        assert router.answering.writer.busy == 0
        await router.close()

    asyncio.run(run())


def test_a_router_stream_closed_unread_frees_its_row(
    untied_model: Path, untied_head: Path, tmp_path: Path
) -> None:
    policy = policy_from(policy_text(untied_model, untied_head, answers=1), tmp_path)

    async def run() -> None:
        router = Router(policy, LocalModel(str(untied_model)))
        routed = await router.route(ChatCompletionRequest.model_validate(body("Go", "long", stream=True)))
        assert routed.chunks is not None and router.answering.writer.busy == 1
        await routed.chunks.aclose()  # never read: the response failed before its first byte
        second = await router.route(ChatCompletionRequest.model_validate(body("Go", max_tokens=4)))
        assert second.body is not None and router.answering.writer.busy == 0
        await router.close()

    asyncio.run(run())


def test_text_comes_out_whole_however_the_tokens_split_it(untied_model: Path) -> None:
    model = LocalModel(str(untied_model))
    answer = "  Café au lait, 日本語 and 🙂🎉: naïve façade.  "
    tokens = model.tokenizer(answer, add_special_tokens=False).input_ids
    assert len(tokens) > len(answer.split())  # some characters take several tokens
    text = _Text(model)
    pieces = [text.more(tokens[: k + 1]) for k in range(len(tokens))]
    pieces.append(text.rest(model.draft_of(tokens, [0.0] * len(tokens), 1).text))
    assert "".join(pieces) == answer.strip()
    assert not any("\ufffd" in piece for piece in pieces)


def test_answers_written_at_once_are_bounded_by_the_turns(
    untied_model: Path, untied_head: Path, tmp_path: Path
) -> None:
    policy = policy_from(policy_text(untied_model, untied_head, answers=2), tmp_path)

    async def run() -> None:
        router = Router(policy, LocalModel(str(untied_model)))
        seen: list[int] = []

        async def watch() -> None:
            while True:
                seen.append(len(router.answering.writer.rows))
                await asyncio.sleep(0.001)

        watcher = asyncio.create_task(watch())
        question = ChatCompletionRequest.model_validate(body("Go on", "local", max_tokens=10))
        await asyncio.gather(*[router.route(question) for _ in range(5)])
        watcher.cancel()
        assert max(seen) == 2
        await router.close()

    asyncio.run(run())


def test_an_answer_the_scorer_drafted_is_replayed_not_written_again(
    untied_model: Path, tmp_path: Path
) -> None:
    policy = policy_from(
        f'scorer: {{method: nprob, model: "{untied_model}", max_draft_tokens: 12}}\n'
        "targets:\n  local: {kind: local, max_tokens: 12}\n"
        "rules:\n  - when: {confidence_at_least: 0.0}\n    action: answer_with\n    target: local\n"
        "  - action: refuse\n",
        tmp_path,
    )

    async def run() -> None:
        router = Router(policy, LocalModel(str(untied_model)))
        question = body("Tell me about rivers.", stream=True)
        routed = await router.route(ChatCompletionRequest.model_validate(question))
        assert routed.chunks is not None
        chunks = [chunk async for chunk in routed.chunks]
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
        assert text == router.model.draft(question["messages"], 12).text and text
        assert router.metrics.registry.get_sample_value("router_local_batch_rows_count") == 0
        await router.close()

    asyncio.run(run())
