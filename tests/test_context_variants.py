"""Passage questions asked three ways (`router build-dataset --context-variants`), the abstention rule the
mismatched ones are graded by, the splits they share, and the forms in which a RAG request reaches a head."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from commands import app
from localmodel import LocalModel
from localmodel.answers import first_line, normalise
from scorers import ScoreItem
from scorers.head import PASSAGE_CHARS, HeadScorer, as_trained
from train.data import QARecord, context_variants, load_records, prompt
from train.graders import grader_for
from train.graders.abstain import AbstainGrader, abstention
from train.jobs import evaluate_scorer
from train.splits import split_rows

MOON = "The Moon orbits the Earth once every 27.3 days and has no atmosphere to speak of."
NILE = "The Nile flows north through eleven countries and empties into the Mediterranean Sea."
OAK = "Oak trees produce acorns, which take between six and eighteen months to mature."
FIXTURE = [
    {"id": "q1", "question": "Does the Moon have an atmosphere?", "answers": ["no"], "context": MOON},
    {"id": "q2", "question": "Does the Moon orbit the Earth?", "answers": ["yes"], "context": MOON},
    {"id": "q3", "question": "Does the Nile flow south?", "answers": ["no"], "context": NILE},
    {"id": "q4", "question": "Do oaks produce acorns?", "answers": ["yes"], "context": OAK},
    {"id": "q5", "question": "Capital of Peru?", "answers": ["Lima"]},  # closed-book: passes through
]


@pytest.fixture
def qa(tmp_path: Path) -> Path:
    path = tmp_path / "passages.jsonl"
    path.write_text(
        "".join(
            json.dumps({**row, "choices": ["no", "yes"]} if "context" in row else row) + "\n"
            for row in FIXTURE
        )
    )
    return path


def test_each_passage_question_becomes_its_three_kinds(qa: Path) -> None:
    records = load_records(qa)
    rows = context_variants(records, seed=0)
    assert [r.id for r in rows] == [
        f"q{i}#{kind}" for i in range(1, 5) for kind in ("own", "other", "none")
    ] + ["q5"]
    by_id = {r.id: r for r in records}
    for row in rows[:-1]:
        original = by_id[row.variant_of or ""]
        assert (row.question, row.answers, row.choices, row.source) == (
            original.question,
            original.answers,
            original.choices,
            original.source,
        )
        if row.context_variant == "own":
            assert row.context == original.context and row.answerable and row.context_from is None
        elif row.context_variant == "none":
            assert row.context is None and row.answerable
            assert prompt(row)[0]["content"].startswith(row.question)
        else:  # another row's passage, never its own text (q1 and q2 share one passage)
            assert row.context_variant == "other" and not row.answerable
            assert row.context_from != original.id and row.context == by_id[row.context_from or ""].context
            assert row.context != original.context
    assert rows[-1] == by_id["q5"]
    # Seeded: the same records pair the same way, whatever order they come in.
    assert {r.id: r.context_from for r in context_variants(records[::-1], seed=0)} == {
        r.id: r.context_from for r in rows
    }


def test_pairing_stays_within_a_source_and_spreads_the_passages() -> None:
    records = [
        QARecord(
            id=f"{source}:{i}", question=f"q{i}?", answers=["yes"], context=f"{source} {i}", source=source
        )
        for source in ("a", "b")
        for i in range(50)
    ]
    other = [r for r in context_variants(records, seed=3) if r.context_variant == "other"]
    assert all(r.context_from and r.context_from.split(":")[0] == r.source for r in other)
    assert len({r.context_from for r in other}) == 100  # each passage serves once as another's
    assert [r.context_from for r in other] != [
        r.context_from for r in context_variants(records, seed=4) if r.context_variant == "other"
    ]


@pytest.mark.parametrize(
    ("answer", "abstained"),
    [
        ("I don't know.", True),
        ("The passage does not say.", True),
        ("It is not mentioned in the context.", True),
        ("This cannot be determined from the passage", True),
        ("Not enough information.\nYes", True),
        ("Unanswerable", True),
        ("yes", False),
        ("No, it does not.", False),  # an answer, not a refusal
        ("Yes.\nI don't know, though.", False),  # the first line decides
        ("The knowledge is sure", False),
    ],
)
def test_the_abstention_rule(answer: str, abstained: bool) -> None:
    mismatched = QARecord(
        id="q#other", question="Is it?", answers=["yes"], choices=["no", "yes"], context=NILE, source="s",
        variant_of="q", context_variant="other", context_from="r",
    )  # fmt: skip
    assert (abstention(answer) is not None) is abstained
    assert grader_for(mismatched) is AbstainGrader
    # With another passage, only abstaining is right.
    assert grader_for(mismatched)().grade(answer, mismatched).correct is abstained
    own = mismatched.model_copy(update={"context_variant": "own", "context_from": None})
    assert grader_for(own)().grade(answer, own).correct is (
        normalise(first_line(answer)) == "yes"
    )  # with its own: the gold option


def rows_of(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.read_text().split("\n") if line]


def test_build_dataset_labels_and_records_every_kind(
    qa: Path, tmp_path: Path, tiny_model: Path, tiny_head: Path
) -> None:
    out = tmp_path / "labels.jsonl"
    command = ["build-dataset", "--data", str(qa), "--out", str(out), "--model", str(tiny_model)]
    command += ["--samples", "0", "--max-new-tokens", "4", "--context-variants"]
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 0, result.output
    rows = {r["id"]: r for r in rows_of(out)}
    assert len(rows) == 13
    for row in rows.values():
        record = QARecord.of_label(row)
        grade = grader_for(record)().grade(row["greedy"], record)
        kind = row.get("context_variant")
        assert row["grader"] == ("abstain" if kind == "other" else "choice" if kind else "alias")
        assert (row["correct"], row["grading"], row["grade_details"]) == (
            grade.correct,
            grade.rule,
            grade.details,
        )
    assert rows["q3#other"]["context_from"] in {"q1", "q2", "q4"} and rows["q3#other"]["variant_of"] == "q3"
    assert "context" not in rows["q3#none"] and rows["q3#own"]["context"] == NILE
    assert rows["q5"].keys().isdisjoint({"variant_of", "context_variant", "context_from"})
    again = CliRunner().invoke(app, command)  # a rerun resumes: nothing is labelled twice
    assert again.exit_code == 0 and "0 rows labelled now" in again.output and len(rows_of(out)) == 13
    # eval-scorer reports each kind, and how well confidence tells own passages from others'.
    metrics = evaluate_scorer(tiny_head, [out], tmp_path / "eval", "all", None)
    figures = metrics["context_variants"]["passages"]
    assert {k: figures[k]["n"] for k in ("own", "other", "none")} == {"own": 4, "other": 4, "none": 4}
    assert (figures["own_vs_other"]["n"], figures["own_vs_other"]["positives"]) == (8, 4)
    assert figures["own_vs_other"]["auroc"] is not None
    cut = figures["own_vs_other"]["youden_threshold"]
    assert 0 <= cut["value"] <= 1 and 0 <= cut["j"] <= 1


def test_one_passage_cannot_be_paired(tmp_path: Path) -> None:
    path = tmp_path / "one.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in FIXTURE[:2]))  # two questions, one passage
    command = ["build-dataset", "--data", str(path), "--out", str(tmp_path / "l.jsonl"), "--context-variants"]
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: one: --context-variants needs at least two different passages"


def test_a_questions_variants_share_its_split() -> None:
    records = [
        QARecord(id=f"s:{i}", question=f"q{i}?", answers=["yes"], context=f"passage {i % 40}", source="s")
        for i in range(300)
    ]
    rows = [{**r.model_dump(), "correct": False} for r in context_variants(records, seed=0)]
    split_of = {r["id"]: name for name, part in split_rows(rows, seed=0).items() for r in part}
    for row in rows:
        assert split_of[row["id"]] == split_of[f"{row['variant_of']}#own"]
    assert len(set(split_of.values())) == 4


LONG_PASSAGE = MOON * 3
QUESTION = "Does the Moon have an atmosphere? Answer in a few words."


@pytest.mark.parametrize(
    ("messages", "expected"),
    [
        (  # a passage in a system message, then the question: one user turn, passage first
            [{"role": "system", "content": LONG_PASSAGE}, {"role": "user", "content": QUESTION}],
            [{"role": "user", "content": f"{LONG_PASSAGE}\n{QUESTION}"}],
        ),
        (  # a short role stays a system message; the passage beside it still moves
            [
                {"role": "system", "content": "You are a helpful assistant."},
                {"role": "system", "content": LONG_PASSAGE},
                {"role": "user", "content": [{"type": "text", "text": QUESTION}]},
            ],
            [
                {"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": f"{LONG_PASSAGE}\n{QUESTION}"},
            ],
        ),
    ],
)
def test_a_rag_request_is_read_in_the_trained_form(
    messages: list[dict[str, Any]], expected: list[dict[str, Any]]
) -> None:
    assert len(LONG_PASSAGE) >= PASSAGE_CHARS
    assert as_trained(messages) == expected


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "user", "content": f"{LONG_PASSAGE}\n{QUESTION}"}],  # the passage in the user turn
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": QUESTION}],
        [  # a conversation, not a single question
            {"role": "system", "content": LONG_PASSAGE},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": QUESTION},
        ],
    ],
)
def test_other_conversations_are_read_as_they_are(messages: list[dict[str, Any]]) -> None:
    assert as_trained(messages) == messages


def test_the_head_scores_both_rag_forms_alike(tiny_model: Path, tiny_head: Path) -> None:
    scorer = HeadScorer(LocalModel(str(tiny_model)), tiny_head)
    in_system = [{"role": "system", "content": LONG_PASSAGE}, {"role": "user", "content": QUESTION}]
    in_user = [{"role": "user", "content": f"{LONG_PASSAGE}\n{QUESTION}"}]
    closed_book = [{"role": "user", "content": QUESTION}]
    raw = scorer.raw_scores([ScoreItem(in_system), ScoreItem(in_user), ScoreItem(closed_book)])
    np.testing.assert_allclose(raw[0], raw[1], rtol=1e-5)
    assert not np.allclose(raw[0], raw[2])  # the passage is read, not dropped
