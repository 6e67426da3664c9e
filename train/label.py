"""Label QA records with the target model's own answers: greedy answer, sampled answers, correctness (by
each record's grader, train/graders/), self-consistency and N-Prob. One JSON line per record, appended and
flushed batch by batch, so an interrupted run resumes where it stopped and never duplicates or half-writes a
line.
(commands/remote_label.py labels with a remote model through the same batch-writing loop.)"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from localmodel.answers import same_answer
from localmodel.model import LocalModel
from train.data import QARecord, prompt
from train.graders import Grade, Grader, grader_for


@dataclass(frozen=True)
class LabelSettings:
    samples: int = 4
    temperature: float = 1.0
    max_new_tokens: int = 24
    batch_size: int = 16


class Grading:
    """Grades answers as labels record them: each record by `grader_for(record, default)`, one instance of
    each grader for the whole run. `graders`: instances built by the caller, for graders that need settings
    (a judge's target); the others are built on first use."""

    def __init__(self, default: str | None = None, graders: Mapping[str, Grader] | None = None) -> None:
        self.default = default
        self._graders = dict(graders or {})

    def grader(self, record: QARecord) -> Grader:
        """Raises ValueError (one line) for a grader name nobody registered."""
        chosen = grader_for(record, self.default)
        if chosen.name not in self._graders:
            self._graders[chosen.name] = chosen()
        return self._graders[chosen.name]

    def grade(self, answer: str, record: QARecord) -> Grade:
        return self.grader(record).grade(answer, record)

    def fields(self, answer: str, record: QARecord) -> dict[str, Any]:
        """A labels row's grade of its greedy answer: `correct` (None: ungraded, which training skips),
        `grader`, its rule (`grading`) and what the rule measured (`grade_details`)."""
        grade = self.grade(answer, record)
        return {
            "correct": grade.correct,
            "grader": self.grader(record).name,
            "grading": grade.rule,
            "grade_details": dict(grade.details),
        }

    def accuracy(self, answers: list[str], record: QARecord) -> float | None:
        """The share of `answers` graded right, among those graded; None when none was."""
        graded = [g.correct for g in (self.grade(a, record) for a in answers) if g.correct is not None]
        return sum(graded) / len(graded) if graded else None


def done_ids(out: Path) -> set[str]:
    """Ids already labelled; a last line cut short by a kill is removed, so the file stays valid JSONL."""
    if not out.exists():
        return set()
    data = out.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    if len(complete) != len(data):
        with out.open("r+b") as f:
            f.truncate(len(complete))
    # Split on "\n" only: str.splitlines also breaks at U+2028 and friends, which JSON leaves unescaped.
    return {json.loads(line)["id"] for line in complete.decode("utf-8").split("\n") if line.strip()}


def label_batch(
    model: LocalModel, records: list[QARecord], settings: LabelSettings, grading: Grading
) -> list[dict[str, Any]]:
    conversations = [prompt(r) for r in records]
    greedy = model.draft_batch(conversations, settings.max_new_tokens)
    sampled = (
        model.draft_batch(
            conversations, settings.max_new_tokens, samples=settings.samples, temperature=settings.temperature
        )
        if settings.samples
        else []
    )
    rows = []
    for i, (record, answer) in enumerate(zip(records, greedy, strict=True)):
        mine = [s.text for s in sampled[i * settings.samples : (i + 1) * settings.samples]]
        rows.append(
            {
                **record.model_dump(exclude_none=True),
                "greedy": answer.text,
                "nprob": answer.nprob,
                "samples": mine,
                "consistency": sum(same_answer(answer.text, s) for s in mine) / len(mine) if mine else None,
                "sample_accuracy": grading.accuracy(mine, record),
                "model": model.ref,
                **grading.fields(answer.text, record),
            }
        )
    return rows


def answered_rows(paths: Iterable[Path]) -> dict[str, dict[str, Any]]:
    """The rows of labels files by id, for grading their answers again; raises ValueError naming the file
    and line of a row that holds no answer."""
    said = "greedy: missing (is this a labels file from build-dataset?)"
    return {row["id"]: row for row in _rows_with(paths, "greedy", str, said)}


def traffic_answers(paths: Iterable[Path], target: str) -> dict[str, dict[str, Any]]:
    """The answers `target` gave in `router traffic export` files, as answered rows by request id, its name
    as the rows' model; rows it did not answer are left out. Raises ValueError naming the file and line of a
    row that is not an export's."""
    said = "answer: missing (is this a file from `router traffic export`?)"
    return {
        row["id"]: {
            **{k: v for k, v in row.items() if k != "answer"},
            "greedy": text,
            "samples": [],
            "model": target,
        }
        for row in _rows_with(paths, "answer", dict, said)
        if isinstance(text := row["answer"].get(target), str)
    }


def _rows_with(paths: Iterable[Path], field: str, kind: type, said: str) -> Iterator[dict[str, Any]]:
    """Every JSON line of `paths`; ValueError naming the file and line of one whose `field` is no `kind`."""
    for path in paths:
        for line_no, line in enumerate(path.read_text(encoding="utf-8").split("\n"), start=1):
            if line.strip():
                row = json.loads(line)
                if not isinstance(row.get(field), kind):
                    raise ValueError(f"{path}:{line_no}: {said}")
                yield row


def with_gold(records: list[QARecord], gold: Iterable[QARecord]) -> list[QARecord]:
    """Captured requests that ask a question of a QA file, as that question (its gold answers, family and
    grader) under the request's id; a request is matched by its text, as sent with or without the brevity
    cue `prompt` adds. The others are left as they are."""
    known: dict[str, QARecord] = {}
    for record in gold:
        known.setdefault(record.question.strip(), record)
        known.setdefault(prompt(record)[-1]["content"].strip(), record)
    return [
        known[r.question.strip()].model_copy(update={"id": r.id}) if r.question.strip() in known else r
        for r in records
    ]


def regrade_batch(
    answered: Mapping[str, dict[str, Any]], records: list[QARecord], grading: Grading
) -> list[dict[str, Any]]:
    """Rows answered before, graded again by `grading`: the answers and what was measured of them are kept,
    the grades are the graders' of today."""
    rows = []
    for record in records:
        row = answered[record.id]
        rows.append(
            {
                **row,
                **record.model_dump(exclude_none=True),  # a captured request may have been given gold answers
                "sample_accuracy": grading.accuracy(row.get("samples", []), record),
                **grading.fields(row["greedy"], record),
            }
        )
    return rows


Labeller = Callable[[list[QARecord]], list[dict[str, Any]]]
"""One labelled row per record of a batch, in the batch's order."""


def build_dataset(
    model: LocalModel,
    records: Iterable[QARecord],
    out: Path,
    settings: LabelSettings,
    progress: Callable[[int], None] = lambda _: None,
    grading: Grading | None = None,
) -> int:
    """Label every record whose id is not in `out` yet; returns how many were labelled now."""
    grading = grading or Grading()
    return write_labels(
        lambda batch: label_batch(model, batch, settings, grading),
        records,
        out,
        settings.batch_size,
        progress,
    )


def write_labels(
    label: Labeller,
    records: Iterable[QARecord],
    out: Path,
    batch_size: int,
    progress: Callable[[int], None] = lambda _: None,
) -> int:
    """Label every record whose id is not in `out` yet with `label`, a batch at a time, appending each
    batch's rows as whole lines and syncing them to disk before the next batch; returns how many were
    labelled now. A batch whose labelling raises writes nothing: the rows before it stay."""
    done = done_ids(out)
    todo = [r for r in records if r.id not in done]
    out.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with out.open("a", encoding="utf-8") as f:
        for batch in _length_grouped(todo, batch_size):
            lines = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in label(batch))
            f.write(lines)  # whole lines only: a kill mid-write leaves one cut line, removed on resume
            f.flush()
            os.fsync(f.fileno())
            written += len(batch)
            progress(len(batch))
    return written


def _length_grouped(records: list[QARecord], size: int, window: int = 32) -> Iterable[list[QARecord]]:
    """Batches of similar prompt length: a batch is padded to its longest prompt, so one long passage in
    a batch of short questions multiplies its cost. Sorting within windows of `window` batches keeps the
    caller's order (sources interleaved) at a coarse grain, so a partial run still covers every source."""
    for start in range(0, len(records), size * window):
        chunk = sorted(records[start : start + size * window], key=lambda r: r.prompt_chars)
        yield from (chunk[i : i + size] for i in range(0, len(chunk), size))
