"""Each family is asked the way its requests come: short-answer questions with a brevity cue, math,
instructions and chat as written, a function to complete in a fenced block."""

from __future__ import annotations

from train.data import QARecord, load_records, prompt, shared_data_dir


def content(record: QARecord) -> str:
    [message] = prompt(record)
    assert message["role"] == "user"
    return message["content"]


def test_a_short_answer_question_keeps_its_brevity_cue() -> None:
    [record] = load_records(shared_data_dir() / "triviaqa" / "triviaqa_sm_sub.jsonl")[:1]
    assert record.task is None and content(record) == f"{record.question} Answer in a few words."


def test_math_and_instruction_requests_are_asked_as_written() -> None:
    sum_ = load_records(shared_data_dir() / "gsm8k" / "test.jsonl")[0]
    instruction = load_records("ifeval")[0]
    assert (sum_.task, instruction.task) == ("math", "instructions")
    assert content(sum_) == sum_.question
    assert content(instruction) == instruction.question
    chat = QARecord(id="chat:1", question="hi", answers=[], source="chat", task="chat")
    assert content(chat) == "hi"


def test_a_function_is_asked_for_in_a_fenced_block() -> None:
    problem = load_records("humaneval")[0]
    asked = content(problem)
    assert asked.startswith("Complete this Python function.\n\n```python\n")
    assert asked.endswith("\n```") and problem.question.rstrip() in asked
