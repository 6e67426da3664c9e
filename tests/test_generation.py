"""Local answers written a segment at a time: the same text as in one job, and room for others between."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from localmodel.model import LocalModel
from router import generation
from router.schemas import ChatCompletionRequest
from router.service import Router
from tests.conftest import head_scorer_yaml, policy_from

PROMPTS = ["Hello there.", "Tell me a story about a lighthouse.", "2 + 2 = ?"]


@pytest.fixture(scope="module")
def model(tiny_model: Path) -> LocalModel:
    return LocalModel(str(tiny_model))


@pytest.mark.parametrize("steps", [1, 3, 64])
def test_segments_write_what_one_job_writes(model: LocalModel, steps: int) -> None:
    for prompt in PROMPTS:
        messages = [{"role": "user", "content": prompt}]
        whole = model.draft(messages, 40)
        written = generation.begin(model, messages, 40)
        segments = 0
        while not written.done:
            written = generation.advance(model, written, steps)
            segments += 1
        assert generation.finish(model, written) == whole
        assert segments == -(-len(written.new_ids) // steps)


def test_a_short_request_is_answered_while_a_long_answer_is_still_being_written(
    tiny_model: Path, tiny_head: Path, tmp_path: Path
) -> None:
    policy = policy_from(
        f"{head_scorer_yaml(tiny_model, tiny_head)}targets:\n"
        "  local: {kind: local, max_tokens: 8}\n  long: {kind: local, max_tokens: 1500}\n"
        "rules:\n  - when: {model: long}\n    action: answer_with\n    target: long\n"
        "  - action: answer_with\n    target: local\n",
        tmp_path,
    )

    def ask(model: str) -> ChatCompletionRequest:
        return ChatCompletionRequest.model_validate(
            {"model": model, "messages": [{"role": "user", "content": "Go on, at length."}]}
        )

    async def run() -> None:
        router = Router(policy, LocalModel(str(tiny_model)))
        long = asyncio.create_task(router.route(ask("long")))
        await asyncio.sleep(0.2)  # the long answer holds the model, a segment at a time
        short = await router.route(ask("router"))
        assert short.body is not None and not long.done()
        routed = await long
        assert routed.body is not None and routed.body["usage"]["completion_tokens"] > 100
        await router.close()

    asyncio.run(run())
