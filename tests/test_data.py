"""The shipped sets of requests without gold answers (`load_records("chatterbot")`, `"arena_creative"`,
`"arena_code"`): requests read from the installed wheels, each distinct request once, judged for want of a
gold answer."""

from __future__ import annotations

import pytest

from train.data import QARecord, load_records, prompt
from train.graders import grader_for
from train.graders.judge import JudgeGrader

JUDGED_SETS = {"chatterbot": ("chat", 248), "arena_creative": ("chat", 250), "arena_code": ("code", 253)}
"""Each set's family and distinct requests in its pinned version (pyproject.toml's `tasks` extra)."""


@pytest.fixture(scope="module")
def chat_sets() -> dict[str, list[QARecord]]:
    return {name: load_records(name) for name in JUDGED_SETS}


@pytest.mark.parametrize("name", JUDGED_SETS)
def test_a_set_loads_distinct_requests_for_the_judge(chat_sets: dict[str, list[QARecord]], name: str) -> None:
    records = chat_sets[name]
    family, count = JUDGED_SETS[name]
    assert len(records) == count
    assert [r.id for r in records] == [f"{name}:{i}" for i in range(len(records))]
    assert {(r.task, r.grader, r.source) for r in records} == {(family, "judge", name)}
    assert all(r.answers == [] and r.question and r.question == r.question.strip() for r in records)
    assert len({r.question for r in records}) == len(records)
    assert all(grader_for(r) is JudgeGrader for r in records)
    first = records[0]
    assert prompt(first) == [{"role": "user", "content": first.question}]  # asked as written


def test_chatterbot_keeps_small_talk_openings_only(chat_sets: dict[str, list[QARecord]]) -> None:
    questions = [r.question for r in chat_sets["chatterbot"]]
    assert questions[0] == "Hello"
    assert {"Tell me a joke", "Are you sentient?", "My computer won't turn on."} <= set(questions)
    # A conversation's opening is the request; the bot's script after it is not.
    assert "Good morning, how are you?" in questions
    assert "I am doing well, how about you?" not in questions
    # Trivia, closed-book questions and code requests belong to other families.
    assert "Who was the 37th President of the United States?" not in questions
    assert "what is capitalism" not in questions
    assert "can you write bubble sort?" not in questions


def test_arena_creative_keeps_the_creative_writing_prompts_only(
    chat_sets: dict[str, list[QARecord]],
) -> None:
    questions = [r.question for r in chat_sets["arena_creative"]]
    assert "Write 3 verses of iambic pentameter about a cat drinking milk at bedtime." in questions
    assert questions[-1] == "tell me a fun story today"
    coding = "please write a python script that takes a .mp4 file and outputs screenshots taken 10s apart"
    assert coding not in questions


def test_arena_code_keeps_coding_requests_in_users_words(chat_sets: dict[str, list[QARecord]]) -> None:
    questions = [r.question for r in chat_sets["arena_code"]]
    coding = "please write a python script that takes a .mp4 file and outputs screenshots taken 10s apart"
    assert coding in questions
    assert "Write 3 verses of iambic pentameter about a cat drinking milk at bedtime." not in questions
