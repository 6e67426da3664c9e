"""The RAG guard example (policies/examples/rag-guard.yaml) over real HTTP, with the real SmolLM2 and the
shipped head: PubMedQA questions of the test split (never trained on) asked with their own passage and with
another question's, in both forms a RAG app sends a passage in."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from policies import load_policy
from scorers.card import ScorerCard
from tests.conftest import Served
from train.data import QARecord, prompt
from train.jobs import read_labels
from train.splits import split_rows

ROOT = Path(__file__).parents[1]
POLICY = ROOT / "policies" / "examples" / "rag-guard.yaml"
PASSAGES = ROOT / "train" / "labels" / "smollm2-135m-instruct-passages.jsonl"
QUESTIONS = 8


@pytest.fixture(scope="module")
def pairs() -> list[dict[str, dict[str, Any]]]:
    """The first PubMedQA questions of the shipped head's test split, each as {own, other} rows."""
    spec = load_policy(POLICY).scorer
    assert spec.adapter is not None
    training = ScorerCard.load(Path(spec.adapter)).extra()["training"]
    held_out = frozenset(training["held_out_sources"])
    test = split_rows(read_labels([PASSAGES]), training["seed"], held_out)["test"]
    pairs: dict[str, dict[str, Any]] = {}
    for row in test:
        if row["source"] == "pubmed_qa_labeled" and row["context_variant"] in ("own", "other"):
            pairs.setdefault(row["variant_of"], {})[row["context_variant"]] = row
    return [p for p in pairs.values() if len(p) == 2][:QUESTIONS]


def question_of(row: dict[str, Any]) -> str:
    """The question as the head was trained to read it, without its passage."""
    return prompt(QARecord.of_label(row).model_copy(update={"context": None}))[0]["content"]


@pytest.fixture(scope="module")
def guard(serve: Callable[..., Served]) -> Served:
    return serve(load_policy(POLICY))


def ask(
    guard: Served, passage: str, question: str, *, in_system: bool = True
) -> tuple[float, dict[str, Any]]:
    """The guard's confidence and its failure-aware verdict."""
    messages = (
        [{"role": "system", "content": passage}, {"role": "user", "content": question}]
        if in_system
        else [{"role": "user", "content": f"{passage}\n{question}"}]
    )
    response = httpx.post(
        f"{guard.base_url}/v1/chat/completions",
        json={"model": "router", "messages": messages, "max_tokens": 16},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    verdict = json.loads(response.json()["choices"][0]["message"]["content"])
    assert set(verdict) == {"decision", "answer", "justification", "evidence_quality"}
    return float(response.headers["x-router-confidence"]), verdict


def test_passages_that_cannot_answer_the_question_are_refused(
    guard: Served, pairs: list[dict[str, dict[str, Any]]]
) -> None:
    assert len(pairs) == QUESTIONS
    lower, refused, answered = 0, 0, 0
    for pair in pairs:
        own, other = pair["own"], pair["other"]
        assert other["context_from"] != own["variant_of"] and other["context"] != own["context"]
        question = question_of(own)
        supported_confidence, supported = ask(guard, own["context"], question)
        unsupported_confidence, unsupported = ask(guard, other["context"], question)
        lower += unsupported_confidence < supported_confidence
        if unsupported["decision"] == "refuse":
            refused += 1
            assert unsupported["answer"] is None
            assert "passage-does-not-support" in unsupported["justification"]
        if supported["decision"] == "answer":
            answered += 1
            assert supported["answer"]
    # On all 42 such test questions the guard refuses 79% of other passages and answers 90% of own ones.
    assert lower >= QUESTIONS - 1
    assert refused >= QUESTIONS * 3 // 4 and answered >= QUESTIONS * 3 // 4


def test_a_passage_in_the_user_turn_reads_the_same(
    guard: Served, pairs: list[dict[str, dict[str, Any]]]
) -> None:
    pair = pairs[0]
    question = question_of(pair["own"])
    for row in pair.values():
        in_system, _ = ask(guard, row["context"], question)
        in_user, _ = ask(guard, row["context"], question, in_system=False)
        assert in_user == pytest.approx(in_system, abs=1e-3)
