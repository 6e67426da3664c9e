"""`router build-dataset --judge-policy FILE --judge-target NAME`: the `judge` grader's verdicts, asked of a
policy's litellm target.

Labelling grades each row as it is answered; the judge needs a network call, so a row whose grader is the
judge is left ungraded by it there (train/graders/judge.py) and judged here, batch by batch, after the
batch's answers: `--concurrency` verdicts at a time, through commands/remote_label.py's labeller, so the
judge is retried, classified and reported in one line as a labelling target is, and a batch whose judge
fails is not written (a rerun resumes at it). The prompt, the retries of malformed verdicts and the
parsing are train/'s; the call is router/'s: this joins them, above both.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from commands.remote_label import (
    AsyncLabeller,
    PolicyTargetError,
    RemoteLabelError,
    RemoteLabeller,
    bounded,
    labeller_for,
)
from train.data import QARecord
from train.graders import Grade, Grader, grader_for
from train.graders.judge import JudgeGrader
from train.label import Grading, LabelSettings

JUDGE_MAX_TOKENS = 512
"""A verdict and one sentence of reason fit with room to spare; the judge target's max_tokens lowers it."""


class Judge:
    """Judges the rows of a batch that its grading left to the judge."""

    def __init__(self, caller: RemoteLabeller) -> None:
        self.caller = caller
        self.grader = JudgeGrader()
        self._gold = Grading()

    @property
    def model(self) -> str:
        return self.caller.target.model

    def after(self, label: AsyncLabeller) -> AsyncLabeller:
        """`label`, then the judge's verdict on each of its rows graded `judge`."""

        async def labelled_and_judged(batch: list[QARecord]) -> list[dict[str, Any]]:
            rows = await label(batch)
            await self.judge_rows(batch, rows)
            return rows

        return labelled_and_judged

    async def judge_rows(self, records: list[QARecord], rows: list[dict[str, Any]]) -> None:
        """Each row graded `judge` gets the judge's grade of its greedy answer, in place."""
        todo = [(r, row) for r, row in zip(records, rows, strict=True) if row["grader"] == JudgeGrader.name]
        await bounded(todo, self.caller.concurrency, lambda pair: self._judge(*pair))

    async def _judge(self, record: QARecord, row: dict[str, Any]) -> Grade:
        try:
            grade = await self.grader.judge(row["greedy"], record, self.caller.ask, self.model)
        except RemoteLabelError as exc:
            raise RemoteLabelError(f"judge {exc}") from None
        details = dict(grade.details)
        gold = grader_for(record)
        if gold.name != JudgeGrader.name:  # judged on `--grader judge`: its gold grade beside, for agreement
            graded = self._gold.grade(row["greedy"], record)
            details["gold"] = {"grader": gold.name, "grading": graded.rule, "correct": graded.correct}
        row.update(correct=grade.correct, grading=grade.rule, grade_details=details)
        return grade


class JudgingEveryRow(Grading):
    """`--grader judge`: every row is the judge's, gold-graded ones too (their gold grade is recorded beside
    the verdict, so the judge's agreement with the gold graders is read off one labels file)."""

    def grader(self, record: QARecord) -> Grader:
        return super().grader(record.model_copy(update={"grader": JudgeGrader.name}))


def judge_for(
    policy: Path, target: str | None, concurrency: int, labelled: Collection[str], judge_self: bool
) -> Judge:
    """The judge: the litellm target `target` of `policy`. A model may not judge its own answers (the
    labelled models' names against the judge's, see `same_model`) unless `judge_self`."""
    caller = labeller_for(
        policy,
        target,
        JUDGE_MAX_TOKENS,
        concurrency,
        flags=("--judge-policy", "--judge-target"),
        local_hint="a local model judges once served: `router serve`, then an openai/ litellm target",
    )
    judge = caller.target.model
    own = sorted(model for model in labelled if same_model(judge, model))
    if not judge_self and own:
        said = f"--judge-target '{target}' is {judge}, the model being labelled ({own[0]})"
        raise PolicyTargetError(
            [f"error: {said}: a model may not judge its own answers; --judge-self allows it"]
        )
    return Judge(caller)


def same_model(judge: str, labelled: str) -> bool:
    """By name: litellm's provider prefix, a Hugging Face organisation or a folder, and case set aside
    (`openai/SmolLM2-135M-Instruct` is `smollm2-135m-instruct`). A judge served under another name, as a
    proxy's target is, is not recognised."""

    def name(model: str) -> str:
        return model.rstrip("/").rsplit("/", 1)[-1].lower()

    return name(judge) == name(labelled)


def answered_labeller(answers: Mapping[str, dict[str, Any]], grading: Grading) -> AsyncLabeller:
    """The answers already in labels files (`--answered`), graded again, on the judge's event loop."""
    from train.label import regrade_batch

    async def label(batch: list[QARecord]) -> list[dict[str, Any]]:
        return regrade_batch(answers, batch, grading)

    return label


def local_labeller(model: str, settings: LabelSettings, grading: Grading) -> AsyncLabeller:
    """train/label.py's local labelling of a batch, run on the judge's event loop."""
    from localmodel import LocalModel
    from train.label import label_batch

    loaded = LocalModel(model)

    async def label(batch: list[QARecord]) -> list[dict[str, Any]]:
        return label_batch(loaded, batch, settings, grading)

    return label
