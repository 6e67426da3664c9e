"""An LLM judge: another model reads the request and the reply and says whether the reply is right.

With gold answers the judge grades against them; without (chat rows), by a stated rubric: is the reply
correct and helpful for the request. It answers with a JSON verdict, `{"verdict": "correct"|"incorrect",
"score": 0..1, "reason": ...}`; a reply that is not one is pointed out and asked again, up to `RETRIES`
times, and a row still without a verdict is recorded ungraded (`correct` None), never guessed.

This module is what judging means: the prompt (whose hash versions the rule), the retry rule and the
parsing. Asking a model is injected (`Ask`): commands/judge.py asks a policy's litellm target, so train/
needs nothing of router/. Without a judge (`grade`), a row is left ungraded and says why.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from train.graders.base import Grade, Grader

if TYPE_CHECKING:
    from train.data import QARecord

SYSTEM = (
    "You grade the responses of an AI assistant, strictly and fairly. You reply with one JSON object and "
    "nothing else."
)
VERDICT_FORMAT = (
    '{"verdict": "correct" or "incorrect", "score": your probability from 0 to 1 that the response is '
    'correct, "reason": "one short sentence"}'
)
WITH_GOLD = """Grade the response to the request below against the reference answers.

The request:
<request>
{request}
</request>

Reference answers (matching any one of them is right):
{gold}

The response:
<response>
{response}
</response>

The response is correct if its answer means the same as a reference answer; wording, extra explanation \
and format do not matter. It is incorrect if it gives another answer, several conflicting answers, or none.

Reply with only this JSON object:
{verdict_format}"""
RUBRIC = """Grade the response to the request below.

The request:
<request>
{request}
</request>

The response:
<response>
{response}
</response>

The response is correct if it is correct and helpful for the request: it does what was asked, what it \
states is true, and a reasonable user would be satisfied with it. It is incorrect if it is wrong, \
off-topic, incomplete, not understandable, or refuses without need.

Reply with only this JSON object:
{verdict_format}"""
REPAIR = (
    "That reply is not the JSON object asked for ({problem}). Reply with only the JSON object:\n"
    "{verdict_format}"
)
PROMPT_HASH = hashlib.sha256(
    "\0".join([SYSTEM, VERDICT_FORMAT, WITH_GOLD, RUBRIC, REPAIR]).encode()
).hexdigest()[:12]
"""Versions the rule: any change of wording is a new rule, so labels from two prompts are never mixed up."""
RETRIES = 2
"""Malformed verdicts asked again before a row is recorded unjudged: three replies in all."""
NO_JUDGE = "no judge given (build-dataset --judge-policy FILE --judge-target NAME)"


class Reply(Protocol):
    """What the judge said, and what saying it cost."""

    @property
    def text(self) -> str: ...
    @property
    def prompt_tokens(self) -> int: ...
    @property
    def completion_tokens(self) -> int: ...
    @property
    def cost(self) -> float: ...


Ask = Callable[[list[dict[str, str]]], Awaitable[Reply]]
"""Sends a conversation to the judge (greedily) and returns its reply; raises when the judge cannot answer."""


@dataclass(frozen=True)
class Verdict:
    correct: bool
    score: float
    reason: str


class MalformedVerdict(ValueError):
    """Why a reply is not a verdict, in a few words the judge is shown when asked again."""


def parse_verdict(text: str) -> Verdict:
    """The verdict in a reply: its first JSON object (prose or a code fence around it is allowed)."""
    start = text.find("{")
    if start < 0:
        raise MalformedVerdict("no JSON object")
    try:
        value: dict[str, Any] = json.JSONDecoder().raw_decode(text, start)[0]  # an object: it opens with {
    except json.JSONDecodeError as exc:
        raise MalformedVerdict(f"invalid JSON: {exc.msg}") from None
    verdict = value.get("verdict")
    if not isinstance(verdict, str) or verdict.strip().lower() not in ("correct", "incorrect"):
        raise MalformedVerdict('"verdict" must be "correct" or "incorrect"')
    score = value.get("score")
    if isinstance(score, bool) or not isinstance(score, int | float) or not (0 <= score <= 1):
        raise MalformedVerdict('"score" must be a number from 0 to 1')
    reason = value.get("reason", "")
    if not isinstance(reason, str):
        raise MalformedVerdict('"reason" must be a string')
    return Verdict(verdict.strip().lower() == "correct", float(score), reason)


def graded_against_gold(record: QARecord) -> bool:
    """Gold answers decide where the row has them and they apply (not to a question asked with another
    question's passage, whose right answer is to abstain)."""
    return bool(record.answers) and record.answerable


def conversation(answer: str, record: QARecord) -> list[dict[str, str]]:
    """The judge's prompt for `answer` to `record`: the request as the model was asked it."""
    from train.data import prompt

    request = "\n\n".join(message["content"] for message in prompt(record))
    if graded_against_gold(record):
        gold = "\n".join(f"- {a}" for a in record.answers)
        task = WITH_GOLD.format(request=request, gold=gold, response=answer, verdict_format=VERDICT_FORMAT)
    else:
        task = RUBRIC.format(request=request, response=answer, verdict_format=VERDICT_FORMAT)
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": task}]


class JudgeGrader(Grader, name="judge"):
    rule = (
        f"judge/v1 (prompt {PROMPT_HASH}): an LLM judge's JSON verdict on the reply, against the gold "
        "answers where the row has them, else by the rubric 'correct and helpful for the request'; a "
        f"malformed verdict is asked again up to {RETRIES} times, then the row is ungraded"
    )

    @classmethod
    def handles(cls, record: QARecord) -> bool:
        # Chat rows have no gold answer and no checkable constraint: only a judge can grade them.
        return record.task == "chat"

    def grade(self, answer: str, record: QARecord) -> Grade:
        """Without a judge to ask: ungraded, saying so (commands/judge.py judges such rows)."""
        return Grade(None, self.rule, {"ungraded": NO_JUDGE})

    async def judge(self, answer: str, record: QARecord, ask: Ask, judge: str) -> Grade:
        """The judge's grade of `answer`; `judge` names the model asked, as the row records it. A failure
        to get any reply (`ask` raising) propagates: that is the judge's fault, not the row's."""
        messages = conversation(answer, record)
        replies: list[Reply] = []
        problem = ""
        for _ in range(1 + RETRIES):
            reply = await ask(messages)
            replies.append(reply)
            try:
                verdict = parse_verdict(reply.text)
            except MalformedVerdict as exc:
                problem = str(exc)
                repair = REPAIR.format(problem=problem, verdict_format=VERDICT_FORMAT)
                messages = [
                    *messages,
                    {"role": "assistant", "content": reply.text or "(nothing)"},  # some refuse an empty turn
                    {"role": "user", "content": repair},
                ]
                continue
            said = {
                "verdict": "correct" if verdict.correct else "incorrect",
                "score": verdict.score,
                "reason": verdict.reason,
            }
            return Grade(verdict.correct, self.rule, {**_spent(judge, record, replies), **said})
        unjudged = {
            "ungraded": f"no verdict in {len(replies)} replies: {problem}",
            "last_reply": replies[-1].text[:300],
        }
        return Grade(None, self.rule, {**_spent(judge, record, replies), **unjudged})


def _spent(judge: str, record: QARecord, replies: list[Reply]) -> dict[str, Any]:
    """Who judged, how, and what it cost: tokens and US dollars over every reply asked for."""
    return {
        "judge": judge,
        "with_gold": graded_against_gold(record),
        "attempts": len(replies),
        "prompt_tokens": sum(r.prompt_tokens for r in replies),
        "completion_tokens": sum(r.completion_tokens for r in replies),
        "cost": sum(r.cost for r in replies),
    }
