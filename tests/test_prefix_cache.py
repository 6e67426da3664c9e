"""The chat template's head run once (localmodel/prefix.py): on the real SmolLM2, scoring through the kept
head gives the states and scores of the whole pass, through the shipped adapter and the base weights, alone
and in a batch of mixed lengths, for prompts that share all of the head or only its first tokens; and a
reloaded adapter is never read through a head kept for the weights it replaced."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import TypeVar

import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from localmodel import LocalModel, Pooling
from localmodel.prefix import shared_tokens
from scorers import ScoreItem
from scorers.head import HeadScorer

T = TypeVar("T")
SHIPPED = Path(__file__).parents[1] / "policies" / "scorers" / "smollm2-head"
SCORE_TOLERANCE = 1e-4
"""How far a raw score through the kept head may be from the whole pass's, in fp32. Only the order of float
sums differs (the head's keys computed at batch 1, the mean summed in two parts): measured 5e-7."""
STATE_TOLERANCE = 1e-4
"""The same for a pooled state, relative to the state's largest entry (about 20): measured 5e-7."""
BF16_TOLERANCE = 0.01
"""The same through the bf16 twin, where the products round to 8 bits of mantissa and summing in another
order moves a score by up to about 0.003 (tests/test_scorer_precision.py allows 0.02 against fp32)."""
PLAIN = ["What is the capital of France?", "2+2?"]
LONG = "Name the largest desert on Earth that is not a polar desert, and say which countries it spans."
CUSTOM = [
    {"role": "system", "content": "Answer in one word."},
    {"role": "user", "content": "Why is the sky blue?"},
]


def conversations() -> list[list[dict[str, str]]]:
    return [[{"role": "user", "content": q}] for q in [*PLAIN, LONG]]


@pytest.fixture(scope="module")
def model(smollm2: Path) -> LocalModel:
    return LocalModel(str(smollm2))


@pytest.fixture(scope="module")
def shipped(model: LocalModel) -> Iterator[HeadScorer]:
    scorer = HeadScorer(model, SHIPPED, "fp32")
    yield scorer
    scorer.close()


def both_ways(model: LocalModel, fn: Callable[[], T]) -> tuple[T, T]:
    """`fn()` through the kept head, then through the whole pass."""
    try:
        model.reuse_prefix = True
        kept = fn()
        model.reuse_prefix = False
        return kept, fn()
    finally:
        model.reuse_prefix = True


def test_the_head_is_the_template_up_to_the_users_text(model: LocalModel) -> None:
    rows = [model.prompt_ids(c) for c in conversations()]
    head = model.template_head
    assert model.tokenizer.decode(head).endswith("<|im_start|>user\n") and len(head) > 20
    assert shared_tokens(head, rows) == len(head)  # the whole head, token for token
    assert shared_tokens(head, [*rows, model.prompt_ids(CUSTOM)]) == 3  # "<|im_start|>system\n" only
    assert shared_tokens(head, [head]) == len(head) - 1  # a row keeps a token of its own
    assert shared_tokens(head, [[0, *head]]) == 0 and shared_tokens([], rows) == 0


@pytest.mark.parametrize("adapter", ["shipped", "base"])
def test_states_through_the_kept_head_are_the_whole_pass(
    model: LocalModel, shipped: HeadScorer, adapter: str
) -> None:
    name = shipped.adapter if adapter == "shipped" else None
    texts = [model.prompt_text(c) for c in [*conversations(), CUSTOM]]
    # mixed lengths, alone, a custom system message (a few tokens shared), all; "last" pooling once
    cases: list[tuple[list[str], Pooling]] = [
        *((batch, "last+mean") for batch in (texts[:3], texts[2:3], texts[3:], texts)),
        (texts, "last"),
    ]
    for batch, pooling in cases:
        kept, whole = both_ways(model, partial(model.prompt_states_at, batch, [12, 20], pooling, name))
        for layer in (12, 20):
            scale = float(whole[layer].abs().max())
            torch.testing.assert_close(kept[layer], whole[layer], rtol=0, atol=STATE_TOLERANCE * scale)


def test_the_shipped_scorer_scores_as_the_whole_pass(model: LocalModel, shipped: HeadScorer) -> None:
    items = [ScoreItem(c) for c in [*conversations(), CUSTOM]]
    for batch in (items[:3], items[:1], items[3:], items):
        kept, whole = both_ways(model, partial(shipped.raw_scores, batch))
        np.testing.assert_allclose(kept, whole, rtol=0, atol=SCORE_TOLERANCE)
    # The task head reads the same states.
    kept_tasks, whole_tasks = both_ways(model, lambda: shipped.score_batch(items[:3]))
    for a, b in zip(kept_tasks, whole_tasks, strict=True):
        assert a.task is not None and b.task is not None
        np.testing.assert_allclose(list(a.task.values()), list(b.task.values()), atol=SCORE_TOLERANCE)


def test_a_reloaded_adapter_is_read_with_its_new_weights(
    model: LocalModel, smollm2: Path, tmp_path: Path
) -> None:
    texts = [model.prompt_text(c) for c in conversations()]
    for seed in (0, 1):  # the same name, other weights: the head kept for the first must not be read
        torch.manual_seed(seed)
        lora = LoraConfig(
            task_type="CAUSAL_LM", r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False
        )
        get_peft_model(AutoModelForCausalLM.from_pretrained(smollm2), lora).save_pretrained(
            str(tmp_path / str(seed))
        )
        model.load_adapter(tmp_path / str(seed), "reloaded")
        kept, whole = both_ways(model, lambda: model.prompt_states_at(texts, [20], "last+mean", "reloaded"))
        scale = float(whole[20].abs().max())
        torch.testing.assert_close(kept[20], whole[20], rtol=0, atol=STATE_TOLERANCE * scale)
    model.unload_adapter("reloaded")


def test_the_bf16_twin_keeps_its_own_head(model: LocalModel) -> None:
    scorer = HeadScorer(model, SHIPPED, "bf16")
    try:
        assert scorer.twin is not None
        items = [ScoreItem(c) for c in [*conversations(), CUSTOM]]
        kept, whole = both_ways(model, lambda: scorer.raw_scores(items))
        np.testing.assert_allclose(kept, whole, rtol=0, atol=BF16_TOLERANCE)
    finally:
        scorer.close()
