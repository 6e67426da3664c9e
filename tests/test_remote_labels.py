"""`router build-dataset --policy FILE --target NAME`: labels with a policy's litellm target, over real HTTP.

The OpenAI-compatible server is the project's own proxy, answering with the tiny random model; failures come
from a small scripted server on loopback (401, 500) and from a port nobody listens on.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from commands import app
from policies import Policy
from tests.conftest import Served, free_port, policy_from
from train.data import shared_data_dir
from train.graders.alias import AliasGrader
from train.graders.math import MathGrader
from train.jobs import read_labels

KEY_VAR = "REMOTE_LABELS_KEY"
KEY = "sk-remote-labels-secret"
QUESTIONS = [
    ("What is the capital of France?", ["Paris"]),
    ("How many legs does a spider have?", ["eight", "8"]),
    ("Which planet is known as the red planet?", ["Mars"]),
    ("What is the largest ocean on Earth?", ["Pacific", "Pacific Ocean"]),
    ("Who wrote Hamlet?", ["William Shakespeare", "Shakespeare"]),
    ("What gas do plants absorb from the air?", ["carbon dioxide", "CO2"]),
]


@pytest.fixture(scope="module")
def proxy(
    serve: Callable[[Policy], Served], tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Served:
    text = (
        "targets: {local: {kind: local, max_tokens: 8}}\n"
        "rules: [{action: answer_with, target: local}]\n"
        f'scorer: {{model: "{tiny_model}"}}\n'
    )
    return serve(policy_from(text, tmp_path_factory.mktemp("proxy")))


@pytest.fixture(autouse=True)
def key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_VAR, KEY)


@pytest.fixture
def qa(tmp_path: Path) -> Path:
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps({"question": q, "answers": a}) + "\n" for q, a in QUESTIONS))
    return path


def labelling_policy(tmp_path: Path, api_base: str, model: str = "openai/local", **fields: object) -> Path:
    settings = {
        "api_base": f'"{api_base}"',
        "api_key_env": KEY_VAR,
        "timeout_s": 10,
        "num_retries": 1,
        **fields,
    }
    extra = "".join(f", {k}: {v}" for k, v in settings.items())
    path = tmp_path / "labelling.yaml"
    path.write_text(
        "targets:\n"
        f"  remote: {{kind: litellm, model: {model}{extra}}}\n"
        "  here: {kind: local}\n"
        "rules: [{action: answer_with, target: remote}]\n"
    )
    return path


def label(qa: Path, out: Path, *options: str) -> Result:
    return CliRunner().invoke(app, ["build-dataset", "--data", str(qa), "--out", str(out), *options])


def error_line(result: Result) -> str:
    """The one line a failed run says on stderr: no traceback, no retry warnings."""
    assert type(result.exception) is SystemExit, result.exception  # not an exception escaping the command
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and "Traceback" not in result.output
    return lines[0]


def rows(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.read_text().split("\n") if line]


def test_labels_every_question_with_the_target(proxy: Served, qa: Path, tmp_path: Path) -> None:
    policy = labelling_policy(tmp_path, f"{proxy.base_url}/v1")
    out = tmp_path / "labels.jsonl"
    options = ["--policy", str(policy), "--target", "remote", "--max-new-tokens", "6", "--batch-size", "4"]
    result = label(qa, out, *options, "--concurrency", "3")
    assert result.exit_code == 0, result.output
    assert "6 rows labelled now, 0 were already there" in result.stdout
    labelled = rows(out)
    assert sorted(str(r["question"]) for r in labelled) == sorted(q for q, _ in QUESTIONS)
    assert len({r["id"] for r in labelled}) == 6
    for row in labelled:
        assert (
            row["model"] == "openai/local" and row["grader"] == "alias" and row["grading"] == AliasGrader.rule
        )
        assert set(row["grade_details"]) == {"matched"}
        assert isinstance(row["greedy"], str) and isinstance(row["correct"], bool)
        assert isinstance(row["prompt_tokens"], int) and row["prompt_tokens"] > 0
        assert isinstance(row["completion_tokens"], int) and 0 < row["completion_tokens"] <= 6
        assert row["cost"] == 0.0  # a self-hosted model is not in litellm's cost map
        assert row["nprob"] is None and row["samples"] == [] and row["consistency"] is None

    # A rerun finds every row done: nothing is asked, nothing is written.
    before = out.read_bytes()
    result = label(qa, out, *options)
    assert result.exit_code == 0, result.output
    assert "0 rows labelled now, 6 were already there" in result.stdout
    assert out.read_bytes() == before

    # A run killed mid-write leaves its last line cut: that row, and only it, is labelled again.
    lines = before.decode().split("\n")[:-1]
    cut = lines[-1]
    out.write_text("\n".join(lines[:-1]) + "\n" + cut[: len(cut) // 2])
    result = label(qa, out, *options)
    assert result.exit_code == 0, result.output
    assert "1 rows labelled now, 5 were already there" in result.stdout
    again = rows(out)
    assert sorted(r["id"] for r in again) == sorted(r["id"] for r in labelled)
    assert again[:5] == labelled[:5] and again[5]["id"] == json.loads(cut)["id"]


class Scripted:
    """An OpenAI-compatible endpoint on loopback that answers with `script`'s statuses in turn (200 once
    the script is spent), each after `hold_s`, counting requests and how many were in flight at once."""

    def __init__(self, *script: int, hold_s: float = 0.0) -> None:
        self.script, self.calls, self.in_flight, self.most_in_flight = list(script), 0, 0, 0
        lock = threading.Lock()
        scripted = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                with lock:
                    scripted.calls += 1
                    scripted.in_flight += 1
                    scripted.most_in_flight = max(scripted.most_in_flight, scripted.in_flight)
                    status = scripted.script.pop(0) if scripted.script else 200
                time.sleep(hold_s)
                with lock:
                    scripted.in_flight -= 1
                if status == 200:
                    answer: dict[str, object] = {
                        "id": "chatcmpl-scripted",
                        "object": "chat.completion",
                        "created": 0,
                        "model": body["model"],
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": "Paris"},
                                "finish_reason": "stop",
                            }
                        ],
                        "usage": {"prompt_tokens": 12, "completion_tokens": 1, "total_tokens": 13},
                    }
                elif status == 401:  # OpenAI's words, quoting the key it was given
                    given = self.headers.get("authorization", "").removeprefix("Bearer ")
                    answer = {
                        "error": {
                            "message": f"Incorrect API key provided: {given}.",
                            "type": "invalid_request_error",
                            "param": None,
                            "code": "invalid_api_key",
                        }
                    }
                else:
                    answer = {
                        "error": {
                            "message": "scripted failure",
                            "type": "server_error",
                            "param": None,
                            "code": None,
                        }
                    }
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                return None

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def scripted() -> Iterator[Callable[..., Scripted]]:
    started: list[Scripted] = []

    def start(*script: int, hold_s: float = 0.0) -> Scripted:
        started.append(Scripted(*script, hold_s=hold_s))
        return started[-1]

    yield start
    for server in started:
        server.close()


def test_requests_in_flight_are_bounded_by_concurrency(
    scripted: Callable[..., Scripted], qa: Path, tmp_path: Path
) -> None:
    server = scripted(hold_s=0.4)
    policy = labelling_policy(tmp_path, server.base_url, model="openai/gpt-4o")
    out = tmp_path / "labels.jsonl"
    result = label(
        qa, out, "--policy", str(policy), "--target", "remote", "--batch-size", "6", "--concurrency", "3"
    )
    assert result.exit_code == 0, result.output
    assert server.calls == 6 and server.most_in_flight == 3
    labelled = rows(out)
    assert all(r["prompt_tokens"] == 12 and r["completion_tokens"] == 1 for r in labelled)
    assert {r["question"]: r["correct"] for r in labelled}["What is the capital of France?"] is True
    assert all(isinstance(r["cost"], float) and r["cost"] > 0 for r in labelled)  # litellm prices gpt-4o


def test_a_refused_key_stops_at_once_with_one_line(
    scripted: Callable[..., Scripted], qa: Path, tmp_path: Path
) -> None:
    server = scripted(401, 401, 401)
    policy = labelling_policy(tmp_path, server.base_url)
    out = tmp_path / "labels.jsonl"
    result = label(qa, out, "--policy", str(policy), "--target", "remote", "--concurrency", "1")
    assert result.exit_code == 1
    line = error_line(result)
    assert f"target 'remote' (openai/local at {server.base_url})" in line
    assert "refused" in line and "HTTP 401" in line and KEY_VAR in line
    assert KEY not in line  # the provider quoted the key; the user is not shown it
    assert server.calls == 1  # never retried
    assert not out.exists() or out.read_text() == ""


def test_a_failure_after_retries_stops_and_keeps_the_rows_written(
    scripted: Callable[..., Scripted], qa: Path, tmp_path: Path
) -> None:
    # The first batch answers; in the second, one row answers and the other fails twice (one retry).
    server = scripted(200, 200, 500, 200, 500)
    policy = labelling_policy(tmp_path, server.base_url, timeout_s=5, num_retries=1)
    out = tmp_path / "labels.jsonl"
    options = ["--policy", str(policy), "--target", "remote", "--batch-size", "2", "--concurrency", "2"]
    result = label(qa, out, *options)
    assert result.exit_code == 1
    assert "HTTP 500" in error_line(result)
    assert server.calls == 5
    assert len(rows(out)) == 2  # the batch that failed wrote nothing, not even its one good row
    result = label(qa, out, *options)  # the endpoint recovered: the rerun labels the rest
    assert result.exit_code == 0, result.output
    assert "4 rows labelled now, 2 were already there" in result.stdout
    assert len({r["id"] for r in rows(out)}) == 6


def test_each_row_is_graded_by_its_grader_and_ungraded_rows_train_nothing(
    scripted: Callable[..., Scripted], qa: Path, tmp_path: Path
) -> None:
    """GSM8K rows call for the math grader by their fields; `--grader` grades the rest, here with a grader
    that cannot grade them (choice, and they have no options): written with `correct: null`."""
    server = scripted()  # answers "Paris" to everything
    policy = labelling_policy(tmp_path, server.base_url)
    out = tmp_path / "labels.jsonl"
    gsm8k = shared_data_dir() / "gsm8k" / "test.jsonl"
    options = ["--data", str(gsm8k), "--limit", "3", "--policy", str(policy), "--target", "remote"]
    result = label(qa, out, *options, "--grader", "choice")
    assert result.exit_code == 0, result.output
    labelled = {r["source"]: r for r in rows(out)}
    math, plain = labelled["gsm8k_test"], labelled["qa"]
    assert (math["task"], math["grader"], math["grading"]) == ("math", "math", MathGrader.rule)
    assert math["correct"] is False and math["grade_details"] == {
        "extracted": None,
        "gold": math["answers"][0],
    }
    assert (plain["grader"], plain["correct"]) == ("choice", None) and "ungraded" in plain["grade_details"]
    assert {r["source"] for r in read_labels([out])} == {"gsm8k_test"}


def test_a_model_the_endpoint_does_not_have_is_one_line(proxy: Served, qa: Path, tmp_path: Path) -> None:
    policy = labelling_policy(tmp_path, f"{proxy.base_url}/v1", model="openai/no-such-model")
    result = label(qa, tmp_path / "labels.jsonl", "--policy", str(policy), "--target", "remote")
    assert result.exit_code == 1
    assert "HTTP 404" in error_line(result)


def test_an_unreachable_endpoint_is_one_line_and_exit_1(qa: Path, tmp_path: Path) -> None:
    """In a real process: nothing at exit (an unclosed client, a pending task) adds to the one line."""
    api_base = f"http://127.0.0.1:{free_port()}/v1"
    policy = labelling_policy(tmp_path, api_base, timeout_s=2)
    out = tmp_path / "labels.jsonl"
    router = Path(sys.executable).with_name("router")
    command = [str(router), "build-dataset", "--data", str(qa), "--out", str(out)]
    done = subprocess.run(
        [*command, "--policy", str(policy), "--target", "remote"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"error: target 'remote' (openai/local at {api_base}): cannot connect")


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["--model", "smollm2-135m-instruct", "--policy", "{policy}", "--target", "remote"], "exclusive"),
        (["--target", "remote"], "--target needs --policy"),
        (["--policy", "{policy}"], "needs --target; its litellm targets: remote"),
        (["--policy", "{policy}", "--target", "here"], "{policy}: target 'here' is local, not litellm"),
        (["--policy", "{policy}", "--target", "nowhere"], "{policy}: no target 'nowhere'"),
        (["--policy", "{policy}", "--target", "remote", "--samples", "2"], "greedily only"),
        (["--grader", "nope"], "error: --grader: unknown grader 'nope' (known: abstain, alias, choice, "),
    ],
)
def test_option_mistakes_are_one_line_and_exit_2(
    qa: Path, tmp_path: Path, options: list[str], expected: str
) -> None:
    policy = labelling_policy(tmp_path, f"http://127.0.0.1:{free_port()}/v1")
    result = label(qa, tmp_path / "labels.jsonl", *(o.format(policy=policy) for o in options))
    assert result.exit_code == 2, result.output
    assert expected.format(policy=policy) in error_line(result)
    assert not (tmp_path / "labels.jsonl").exists()


def test_a_row_naming_an_unknown_grader_is_one_line_and_exit_2(tmp_path: Path) -> None:
    qa = tmp_path / "qa.jsonl"
    qa.write_text(json.dumps({"question": "Capital of Peru?", "answers": ["Lima"], "grader": "nope"}) + "\n")
    result = label(qa, tmp_path / "labels.jsonl", "--limit", "1")
    assert result.exit_code == 2, result.output
    line = error_line(result)
    assert line.startswith("error: row qa:0: unknown grader 'nope' (known: ") and "alias" in line
    assert not (tmp_path / "labels.jsonl").exists()


def test_a_broken_policy_says_each_problem(qa: Path, tmp_path: Path) -> None:
    policy = tmp_path / "broken.yaml"
    policy.write_text(
        "targets:\n  remote: {kind: litellm, timeout_s: -1}\nrules: [{action: answer_with, target: remote}]\n"
    )
    result = label(qa, tmp_path / "labels.jsonl", "--policy", str(policy), "--target", "remote")
    assert result.exit_code == 2
    problems = result.stderr.strip().splitlines()
    assert len(problems) >= 2 and all(p.startswith(f"{policy}:") for p in problems), result.stderr


def test_the_local_path_still_labels_with_samples(tiny_model: Path, qa: Path, tmp_path: Path) -> None:
    out = tmp_path / "labels.jsonl"
    options = ["--model", str(tiny_model), "--samples", "2", "--max-new-tokens", "4", "--limit", "3"]
    result = label(qa, out, *options)
    assert result.exit_code == 0, result.output
    labelled = rows(out)
    assert len(labelled) == 3 and all(len(r["samples"]) == 2 and 0 < r["nprob"] <= 1 for r in labelled)
    assert all(r["model"] and "cost" not in r for r in labelled)
