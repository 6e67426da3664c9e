"""Runs untrusted Python (a model's program and a task's tests) in a separate process, never in the caller's.

`run_python(source, limits)` writes the source into a fresh temporary folder (deleted after) and starts
jail.py there with `python -I -S` and an empty environment; jail.py shuts the program in (namespaces,
hidden and read-only files, seccomp, resource limits: its docstring says how) and runs harness.py, which
turns sockets off and runs the program. A wall-clock timeout kills the whole process group.

`guards()` says which of the guards hold on this machine: without user namespaces there is no network,
pid or file isolation, only the limits, the seccomp filter and the socket prelude.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import IO, Literal

from train.data import shared_data_dir
from train.sandbox.harness import FAILED, OUT_OF_MEMORY

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parents[1]
GUARDS_PREFIX = "sandbox-guards: "
ALL_GUARDS = ("netns", "pidns", "hidden", "readonly", "rlimits", "nocaps", "seccomp", "socket-prelude")
"""netns: no network; pidns: no other process seen or signalled; hidden: the project, its data and the home
folder are empty; readonly: nothing outside the program's own /tmp is writable; rlimits: CPU, memory,
processes, file size, open files; nocaps: no capability; seccomp: no fork, clone or socket;
socket-prelude: Python's sockets raise before the program runs."""

Status = Literal["passed", "failed", "timeout", "killed", "error"]
"""passed: ran to its end; failed: an AssertionError (the tests said no); timeout: the wall clock or the
CPU limit; killed: the memory limit (MemoryError) or a signal; error: any other exception, an early exit,
or a sandbox that could not be set up."""


@dataclass(frozen=True)
class Limits:
    seconds: float = 10.0
    """Wall clock from start to end; CPU time is held to the same, rounded up."""
    memory_bytes: int = 512 * 2**20
    """Address space (RLIMIT_AS): a program that allocates past it gets MemoryError."""
    file_bytes: int = 16 * 2**20
    """Largest file it may write (RLIMIT_FSIZE), and the size of its /tmp."""
    open_files: int = 64


@dataclass(frozen=True)
class Outcome:
    status: Status
    exit_status: int | None
    """The program's exit status as Popen reports it (negative: killed by that signal); None on timeout."""
    seconds: float
    guards: tuple[str, ...]
    message: str
    """The last line the program wrote to stderr (its exception, or the sandbox's complaint), cut short."""


def _hidden_folders() -> list[str]:
    folders = {PROJECT, shared_data_dir(), Path.home()}
    return sorted({str(f.resolve()) for f in folders if f.is_dir() and f.resolve() != Path("/")})


def _interpreter_folders() -> list[str]:
    return sorted({os.path.realpath(sys.base_prefix), os.path.realpath(sys.base_exec_prefix)})


def _tail(file: IO[bytes], size: int = 4096) -> str:
    file.seek(0, os.SEEK_END)
    file.seek(max(0, file.tell() - size))
    return file.read().decode(errors="replace")


def _status(exit_status: int, finished: bool) -> Status:
    if exit_status == 0:
        return "passed" if finished else "error"
    if exit_status == FAILED:
        return "failed"
    if exit_status == OUT_OF_MEMORY:
        return "killed"
    if exit_status in (-signal.SIGKILL, -signal.SIGXCPU):  # the CPU limit
        return "timeout"
    if exit_status < 0:
        return "killed"
    return "error"  # an exception, a sandbox that could not be set up (125), or the program's own exit code


def run_python(source: str, limits: Limits | None = None) -> Outcome:
    """Run `source` as a program in the sandbox and say how it ended."""
    limits = limits or Limits()
    token = secrets.token_hex(16)
    python = os.path.realpath(sys.executable)  # the interpreter itself: a venv's link lies in hidden folders
    started = time.monotonic()
    with (
        tempfile.TemporaryDirectory(prefix="sandbox-", ignore_cleanup_errors=True) as work,
        tempfile.NamedTemporaryFile() as out,
        tempfile.NamedTemporaryFile() as err,
    ):
        Path(work, "candidate.py").write_text(source, encoding="utf-8")
        shutil.copyfile(HERE / "harness.py", Path(work, "harness.py"))
        config = {
            "work": work,
            "python": python,
            "hide": _hidden_folders(),
            "keep": _interpreter_folders(),
            "limits": {
                "cpu_seconds": max(1, int(limits.seconds + 0.999)),
                "memory_bytes": limits.memory_bytes,
                "file_bytes": limits.file_bytes,
                "open_files": limits.open_files,
            },
        }
        process = subprocess.Popen(
            [python, "-I", "-S", str(HERE / "jail.py"), json.dumps(config)],
            stdin=subprocess.PIPE,
            stdout=out,
            stderr=err,
            cwd=work,
            env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
            start_new_session=True,  # its own process group, killed whole on timeout
        )
        exit_status: int | None
        try:
            process.communicate(f"{token}\n".encode(), timeout=limits.seconds)
            exit_status = process.returncode
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            exit_status = None
        seconds = time.monotonic() - started
        stdout, stderr = _tail(out), _tail(err)
    lines = stderr.splitlines()
    guard_line = next((line for line in lines if line.startswith(GUARDS_PREFIX)), "")
    guards = (*guard_line.removeprefix(GUARDS_PREFIX).split(), "socket-prelude")
    message = next((line for line in reversed(lines) if line.strip() and line != guard_line), "")[-300:]
    if exit_status is None:
        status: Status = "timeout"
    else:
        status = _status(exit_status, stdout.rstrip().endswith(token))
    return Outcome(status, exit_status, round(seconds, 3), guards, message)


@cache
def guards() -> tuple[str, ...]:
    """The guards that hold on this machine (ALL_GUARDS names them), from running an empty program; those
    missing are logged once."""
    outcome = run_python("", Limits(seconds=30))
    missing = [g for g in ALL_GUARDS if g not in outcome.guards]
    if missing:
        log.warning("code sandbox runs without %s (%s)", ", ".join(missing), outcome.message)
    return outcome.guards


__all__ = ["ALL_GUARDS", "Limits", "Outcome", "guards", "run_python"]
