"""The grader contract: is a model's answer to a record right? One class per kind of answer (a short fact,
a choice, a number, code, an instruction's constraints, a judge's verdict), each registering itself under
its `name` with the versioned `rule` it applies, which every label it produces records.

A record names its grader (`grader`), else the first registered grader whose `handles` accepts its fields
grades it, else the caller's default (`--grader`). A new grader is one module in this folder (every module
here is imported by the package, so it registers) plus its tests.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from train.data import QARecord

GRADERS: dict[str, type[Grader]] = {}


@dataclass(frozen=True)
class Grade:
    correct: bool | None
    """None: not graded (a judge's verdict unreadable after its retries); such a row trains nothing."""
    rule: str
    """The versioned rule that decided, as labels record it (`grading`)."""
    details: Mapping[str, Any] = field(default_factory=dict)
    """What else the rule measured, kept with the label (strict and loose results, a judge's tokens...)."""


class Grader(ABC):
    name: ClassVar[str]
    rule: ClassVar[str]
    """`<name>/<version>: what counts as right`; a change of meaning is a new version."""

    def __init_subclass__(cls, *, name: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if name is None:
            return
        if name in GRADERS:
            raise TypeError(f"grader {name!r} is already registered by {GRADERS[name].__name__}")
        cls.name = name
        GRADERS[name] = cls

    @classmethod
    def handles(cls, record: QARecord) -> bool:
        """Whether the record's fields call for this grader when it names none."""
        return False

    @abstractmethod
    def grade(self, answer: str, record: QARecord) -> Grade:
        """The grade of `answer` (the model's whole reply) to `record`."""


def grader_for(record: QARecord, default: str | None = None) -> type[Grader]:
    """The record's own grader, else the first that handles its fields, else `default`, else `alias`."""
    name = record.grader
    if name is None:
        handled = (grader.name for grader in GRADERS.values() if grader.handles(record))
        name = next(handled, default or "alias")
    if name not in GRADERS:
        raise ValueError(f"unknown grader '{name}' (known: {', '.join(sorted(GRADERS))})")
    return GRADERS[name]
