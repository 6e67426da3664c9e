"""Local answers written as one batch, a step per job: each row's text is the one it gets alone, and
other requests are answered between steps."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from localmodel.model import LocalModel
from router.schemas import ChatCompletionRequest
from router.service import Router
from tests.batches import write_batched
from tests.conftest import head_scorer_yaml, policy_from

PROMPTS = [
    "Hello there.",
    "Tell me a story about a lighthouse on a cliff above a stormy sea, with its keeper and a ship.",
    "2 + 2 = ?",
    "What is the capital of France?",
    "Explain, step by step and for a child, how plants turn light, water and air into sugar.",
]
"""Of different lengths: rows read together are padded."""


def conversations() -> list[list[dict[str, str]]]:
    return [[{"role": "user", "content": prompt}] for prompt in PROMPTS]


@pytest.fixture(scope="module")
def untied(untied_model: Path) -> LocalModel:
    return LocalModel(str(untied_model))


@pytest.fixture(scope="module")
def smollm2_model(smollm2: Path) -> LocalModel:
    return LocalModel(str(smollm2))


def test_rows_written_together_get_the_tokens_they_get_alone(untied: LocalModel) -> None:
    lengths = [40, 25, 33, 10, 40]
    # Two rows start together, one joins a step later, two more later still; each leaves at its length.
    together = write_batched(untied, conversations(), lengths, [0, 0, 1, 5, 5])
    for messages, length, draft in zip(conversations(), lengths, together, strict=True):
        alone = untied.draft(messages, length)  # transformers' generate, one row
        assert draft.text == alone.text and draft.text
        assert draft.finish_reason == alone.finish_reason
        assert draft.token_logprobs == pytest.approx(alone.token_logprobs, abs=1e-4)


def test_smollm2_writes_the_same_answers_batched_as_alone(smollm2_model: LocalModel) -> None:
    """The real model, greedy, in fp32 on CPU: padded rows differ from a row alone only in the last bits of
    the log-probabilities, never in the tokens."""
    length = 10
    alone = [write_batched(smollm2_model, [m], [length], [0])[0] for m in conversations()]
    together = write_batched(smollm2_model, conversations(), [length] * len(PROMPTS), [0, 0, 2, 3, 3])
    for one, batched in zip(alone, together, strict=True):
        assert batched.text == one.text and batched.text
        assert batched.finish_reason == one.finish_reason
        assert batched.token_logprobs == pytest.approx(one.token_logprobs, abs=1e-4)
    # And the same as transformers' own generate writes.
    assert alone[1].text == smollm2_model.draft(conversations()[1], length).text


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
