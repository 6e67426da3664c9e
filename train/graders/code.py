"""Programs (HumanEval): the reply's program run against the task's tests in the sandbox (train/sandbox/),
a separate process with no network, no project files and time and memory limits. Right only if it passes.

The program is the reply's first ```python block, else its first unlabelled fenced block, else the whole
reply. When the task's prompt is Python (HumanEval's is a signature and docstring, with its imports and any
helper it names), the program runs after it, as HumanEval's own harness runs a completion: a bare function
body completes the prompt's function, and a whole function replaces it with the prompt's imports in scope.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from train.graders.base import Grade, Grader
from train.sandbox import Limits, guards, run_python

if TYPE_CHECKING:
    from train.data import QARecord

FENCE = re.compile(r"^[ \t]*```[ \t]*([\w+-]*)[^\n]*\n(.*?)(?:^[ \t]*```|\Z)", re.DOTALL | re.MULTILINE)
PYTHON_LABELS = {"python", "python3", "py"}
LIMITS = Limits(seconds=10, memory_bytes=512 * 2**20)


def extract_program(answer: str) -> tuple[str, str]:
    """The program in a reply and where it was found: `python block`, `unlabelled block` or `reply`."""
    blocks = [(m.group(1).lower(), m.group(2)) for m in FENCE.finditer(answer)]
    python = next((code for label, code in blocks if label in PYTHON_LABELS), None)
    if python is not None:
        return python, "python block"
    plain = next((code for label, code in blocks if not label), None)
    if plain is not None:
        return plain, "unlabelled block"
    return answer, "reply"


def _is_python(text: str) -> bool:
    try:
        compile(text, "<prompt>", "exec")  # parsed only, never run here
    except (SyntaxError, ValueError):
        return False
    return True


def program_source(program: str, record: QARecord) -> str:
    """What the sandbox runs: the prompt when it is Python, the program, the tests, and their call."""
    if _is_python(record.question):
        first_line = next((line for line in program.splitlines() if line.strip()), "")
        joint = "" if first_line.startswith((" ", "\t")) else "\n\n"  # a body continues the prompt's def
        program = record.question.rstrip("\n") + "\n" + joint + program
    return f"{program}\n\n{record.tests}\n\ncheck({record.entry_point})\n"


class CodeGrader(Grader, name="code"):
    rule = (
        "code/v1: the reply's program (its first ```python block, else its first unlabelled fenced block, "
        "else the whole reply), after the prompt when the prompt is Python, passes the task's tests "
        "(check(entry_point)) in a separate sandboxed process within 10 s and 512 MiB; any failure, "
        "exception, timeout or limit is wrong"
    )

    def __init__(self, limits: Limits = LIMITS) -> None:
        self.limits = limits
        guards()  # logs, once, any guard this machine cannot set

    @classmethod
    def handles(cls, record: QARecord) -> bool:
        return record.task == "code"

    def grade(self, answer: str, record: QARecord) -> Grade:
        if not record.tests or not record.entry_point:  # the record's fault: no label rather than a wrong one
            return Grade(None, self.rule, {"ungraded": "a code task needs tests and an entry point"})
        program, found_in = extract_program(answer)
        outcome = run_python(program_source(program, record), self.limits)
        return Grade(
            outcome.status == "passed",
            self.rule,
            {
                "program": found_in,
                "outcome": outcome.status,
                "exit_status": outcome.exit_status,
                "seconds": outcome.seconds,
                "message": outcome.message,
            },
        )
