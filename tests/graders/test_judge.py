"""The judge grader through `router build-dataset --judge-policy FILE --judge-target NAME`, over real HTTP.

The mechanism (verdicts, retries of malformed ones, resume, failures, self-judging) is checked against a
small OpenAI-compatible server on loopback that answers with scripted verdicts; the whole path once against
a real model served by the project itself (`router serve` on the tiny random model, which never writes a
verdict: its rows must be recorded unjudged, not guessed).
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from commands import app
from policies import Policy
from tests.conftest import Served, free_port, policy_from
from train.graders.alias import AliasGrader
from train.graders.judge import SYSTEM, JudgeGrader, MalformedVerdict, parse_verdict
from train.jobs import read_labels

KEY_VAR = "JUDGE_TEST_KEY"
ROWS: list[dict[str, Any]] = [
    {"id": "france", "question": "What is the capital of France?", "answers": ["Paris"]},
    {"id": "spider", "question": "How many legs does a spider have?", "answers": ["eight", "8"]},
    {
        "id": "party",
        "question": "Help me plan a birthday party for my 8 year old.",
        "answers": [],
        "task": "chat",
    },
    {"id": "hi", "question": "hi", "answers": [], "task": "chat"},
]
USAGE = {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120}
RULING = 0.0004  # 100 prompt tokens at $2 and 20 completion tokens at $10 per million: the judge's price


def verdict(said: str, score: float) -> str:
    return json.dumps({"verdict": said, "score": score, "reason": "scripted"})


class Provider:
    """An OpenAI-compatible endpoint on loopback. The labelled model (`answerer`) says "Paris" to everything;
    any other model is the judge, whose reply is `respond(request body)`. Judge requests are kept."""

    def __init__(self) -> None:
        self.respond: Callable[[dict[str, Any]], str] = lambda body: verdict("correct", 0.9)
        self.judged: list[dict[str, Any]] = []
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                if body["model"] == "answerer":
                    content = "Paris"
                else:
                    provider.judged.append(body)
                    content = provider.respond(body)
                message = {"role": "assistant", "content": content}
                data = json.dumps(
                    {
                        "id": "chatcmpl-judge",
                        "object": "chat.completion",
                        "created": 0,
                        "model": body["model"],
                        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                        "usage": USAGE,
                    }
                ).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                return None

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def judged_rows(self) -> list[str]:
        """Which row each judge request was about, by its question."""
        return [
            next(r["id"] for r in ROWS if r["question"] in b["messages"][1]["content"]) for b in self.judged
        ]


@pytest.fixture
def provider() -> Iterator[Provider]:
    server = Provider()
    yield server
    server._server.shutdown()
    server._server.server_close()


@pytest.fixture(autouse=True)
def key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_VAR, "sk-judge-test")


@pytest.fixture
def data(tmp_path: Path) -> Path:
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    return path


def policy(tmp_path: Path, api_base: str, timeout_s: int = 10) -> Path:
    remote = f'api_base: "{api_base}", api_key_env: {KEY_VAR}, timeout_s: {timeout_s}, num_retries: 0'
    price = "cost: {input_per_million: 2, output_per_million: 10}"
    path = tmp_path / "judging.yaml"
    path.write_text(
        "targets:\n"
        f"  answerer: {{kind: litellm, model: openai/answerer, {remote}}}\n"
        f"  judge: {{kind: litellm, model: openai/judge, {remote}, {price}}}\n"
        f"  same: {{kind: litellm, model: openai/Answerer, {remote}}}\n"
        "  here: {kind: local}\n"
        "rules: [{action: answer_with, target: answerer}]\n"
    )
    return path


def label(data: Path, out: Path, *options: str) -> Result:
    command = ["build-dataset", "--data", str(data), "--out", str(out), *options]
    return CliRunner().invoke(app, command)


def judged_by(judging: Path, target: str = "judge") -> list[str]:
    """Options labelling with the policy's `answerer`, judged by its `target`."""
    return [
        "--policy",
        str(judging),
        "--target",
        "answerer",
        "--judge-policy",
        str(judging),
        "--judge-target",
        target,
    ]


def rows(out: Path) -> dict[str, dict[str, Any]]:
    return {row["id"]: row for row in map(json.loads, out.read_text().splitlines())}


def error_line(result: Result) -> str:
    assert type(result.exception) is SystemExit, result.exception
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_chat_rows_are_judged_by_the_rubric_and_a_rerun_judges_nothing_again(
    provider: Provider, data: Path, tmp_path: Path
) -> None:
    provider.respond = lambda body: (
        verdict("incorrect", 0.2) if "birthday" in body["messages"][1]["content"] else verdict("correct", 0.9)
    )
    judging, out = policy(tmp_path, provider.base_url), tmp_path / "labels.jsonl"
    result = label(data, out, *judged_by(judging), "--concurrency", "3")
    assert result.exit_code == 0, result.output
    labelled = rows(out)
    # Rows with gold answers keep their gold grader; only the chat rows go to the judge.
    assert sorted(provider.judged_rows()) == ["hi", "party"]
    assert (labelled["france"]["grader"], labelled["france"]["correct"]) == ("alias", True)
    assert labelled["france"]["grading"] == AliasGrader.rule
    party, hi = labelled["party"], labelled["hi"]
    assert (party["correct"], hi["correct"]) == (False, True)
    assert party["grader"] == "judge" and party["grading"] == JudgeGrader.rule
    assert JudgeGrader.rule.startswith("judge/v1 (prompt ")
    details = party["grade_details"]
    assert details.pop("cost") == pytest.approx(RULING)
    assert details == {
        "judge": "openai/judge",
        "with_gold": False,
        "attempts": 1,
        "prompt_tokens": 100,
        "completion_tokens": 20,
        "verdict": "incorrect",
        "score": 0.2,
        "reason": "scripted",
    }
    asked = next(b for b in provider.judged if "birthday" in b["messages"][1]["content"])
    assert asked["temperature"] == 0 and asked["messages"][0] == {"role": "system", "content": SYSTEM}
    prompt = asked["messages"][1]["content"]
    assert "correct and helpful for the request" in prompt and "<response>\nParis\n</response>" in prompt
    assert "Reference answers" not in prompt

    before = out.read_bytes()
    result = label(data, out, *judged_by(judging))
    assert result.exit_code == 0, result.output
    assert "0 rows labelled now, 4 were already there" in result.stdout
    assert len(provider.judged) == 2 and out.read_bytes() == before


def test_grader_judge_judges_every_row_against_its_gold_answers_and_keeps_the_gold_grade(
    provider: Provider, data: Path, tmp_path: Path
) -> None:
    judging, out = policy(tmp_path, provider.base_url), tmp_path / "labels.jsonl"
    result = label(data, out, *judged_by(judging), "--grader", "judge")  # the judge says "correct" to all
    assert result.exit_code == 0, result.output
    assert sorted(provider.judged_rows()) == ["france", "hi", "party", "spider"]
    labelled = rows(out)
    assert all(row["grader"] == "judge" and row["correct"] is True for row in labelled.values())
    for rid, gold in (("france", True), ("spider", False)):  # the judge disagrees with alias on the spider
        details = labelled[rid]["grade_details"]
        assert details["with_gold"] is True
        assert details["gold"] == {"grader": "alias", "grading": AliasGrader.rule, "correct": gold}
    assert "gold" not in labelled["hi"]["grade_details"]  # a chat row has no gold grader
    asked = next(b for b in provider.judged if "spider" in b["messages"][1]["content"])
    assert (
        "Reference answers (matching any one of them is right):\n- eight\n- 8\n"
        in asked["messages"][1]["content"]
    )


def test_a_malformed_verdict_is_asked_again_and_never_guessed(
    provider: Provider, data: Path, tmp_path: Path
) -> None:
    """`hi`: prose, then a verdict. `party`: three malformed replies, so it is recorded unjudged."""
    scripts = {
        "hi": ["Looks fine to me.", verdict("correct", 1)],
        "party": ["{not json", '```json\n{"verdict": "maybe", "score": 0.5}\n```', verdict("correct", 1.5)],
    }

    def respond(body: dict[str, Any]) -> str:
        rid = "party" if "birthday" in body["messages"][1]["content"] else "hi"
        return scripts[rid][len(body["messages"]) // 2 - 1]  # two messages more per attempt

    provider.respond = respond
    judging, out = policy(tmp_path, provider.base_url), tmp_path / "labels.jsonl"
    result = label(data, out, *judged_by(judging))
    assert result.exit_code == 0, result.output
    hi, party = rows(out)["hi"], rows(out)["party"]
    assert hi["correct"] is True
    assert hi["grade_details"]["attempts"] == 2 and hi["grade_details"]["prompt_tokens"] == 200
    asked_hi = [b for b in provider.judged if "birthday" not in b["messages"][1]["content"]]
    again = asked_hi[1]
    assert again["messages"][2] == {"role": "assistant", "content": "Looks fine to me."}
    assert again["messages"][3]["content"].startswith(
        "That reply is not the JSON object asked for (no JSON object)"
    )

    assert party["correct"] is None and party["grader"] == "judge"
    details = party["grade_details"]
    assert details["attempts"] == 3 and details["completion_tokens"] == 60
    assert details["ungraded"] == 'no verdict in 3 replies: "score" must be a number from 0 to 1'
    assert details["last_reply"] == verdict("correct", 1.5)
    assert "verdict" not in details
    assert "party" not in {row["id"] for row in read_labels([out])}  # an unjudged row trains nothing


def test_an_unreachable_judge_is_one_line_and_writes_nothing(
    data: Path, provider: Provider, tmp_path: Path
) -> None:
    judge_base = f"http://127.0.0.1:{free_port()}/v1"
    answers = policy(tmp_path, provider.base_url)
    (tmp_path / "judge").mkdir()
    judging = policy(tmp_path / "judge", judge_base, timeout_s=2)
    out = tmp_path / "labels.jsonl"
    options = ["--policy", str(answers), "--target", "answerer", "--judge-policy", str(judging)]
    result = label(data, out, *options, "--judge-target", "judge")
    assert result.exit_code == 1
    assert error_line(result).startswith(
        f"error: judge target 'judge' (openai/judge at {judge_base}): cannot connect"
    )
    assert out.read_text() == ""  # the batch the judge failed on is not written: a rerun labels it


def test_a_model_may_not_judge_its_own_answers_unless_told(
    provider: Provider, data: Path, tmp_path: Path
) -> None:
    judging, out = policy(tmp_path, provider.base_url), tmp_path / "labels.jsonl"
    result = label(data, out, *judged_by(judging, "same"))
    assert result.exit_code == 2
    assert error_line(result) == (
        "error: --judge-target 'same' is openai/Answerer, the model being labelled (openai/answerer): "
        "a model may not judge its own answers; --judge-self allows it"
    )
    # A local model, by its catalog name, against the same model behind an endpoint.
    local = ["--model", "smollm2-135m-instruct", "--judge-policy", str(judging), "--judge-target", "judge"]
    judging.write_text(judging.read_text().replace("openai/judge", "openai/SmolLM2-135M-Instruct"))
    assert "model being labelled (smollm2-135m-instruct)" in error_line(label(data, out, *local))
    assert not out.exists() and provider.judged == []

    result = label(data, out, *judged_by(judging, "same"), "--judge-self")
    assert result.exit_code == 0, result.output
    assert rows(out)["hi"]["grade_details"]["judge"] == "openai/Answerer"


@pytest.mark.parametrize(
    ("options", "said"),
    [
        (
            ["--grader", "judge"],
            "error: --grader judge needs a judge: --judge-policy FILE --judge-target NAME",
        ),
        (["--judge-target", "judge"], "error: --judge-target needs --judge-policy"),
        (["--judge-policy", "{policy}"], "needs --judge-target; its litellm targets: answerer, judge, same"),
        (["--judge-policy", "{policy}", "--judge-target", "here"], "target 'here' is local, not litellm"),
    ],
)
def test_a_judge_missing_or_wrong_is_one_line(
    options: list[str], said: str, data: Path, tmp_path: Path
) -> None:
    judging = policy(tmp_path, "http://127.0.0.1:9/v1")
    result = label(data, tmp_path / "labels.jsonl", *(o.format(policy=judging) for o in options))
    assert result.exit_code == 2
    assert said in error_line(result)


@pytest.mark.parametrize(
    ("reply", "parsed"),
    [
        ('{"verdict": "correct", "score": 1, "reason": "same city"}', (True, 1.0, "same city")),
        ('Sure.\n```json\n{"verdict": "Incorrect", "score": 0.25}\n```', (False, 0.25, "")),
        ('{"verdict": "correct", "score": true}', '"score" must be a number from 0 to 1'),
        ('{"verdict": "yes", "score": 1}', '"verdict" must be "correct" or "incorrect"'),
        ('["correct", 1]', "no JSON object"),
        ("{'verdict': 'correct'}", "invalid JSON: Expecting property name enclosed in double quotes"),
    ],
)
def test_a_verdict_is_read_from_json_only(reply: str, parsed: tuple[bool, float, str] | str) -> None:
    if isinstance(parsed, str):
        with pytest.raises(MalformedVerdict, match=f"^{re.escape(parsed)}$"):
            parse_verdict(reply)
        return
    read = parse_verdict(reply)
    assert (read.correct, read.score, read.reason) == parsed


@pytest.fixture(scope="module")
def served_judge(
    serve: Callable[[Policy], Served], untied_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Served:
    text = (
        "targets: {local: {kind: local, max_tokens: 8}}\n"
        "rules: [{action: answer_with, target: local}]\n"
        f'scorer: {{model: "{untied_model}"}}\n'
    )
    return serve(policy_from(text, tmp_path_factory.mktemp("judge-proxy")))


def test_a_served_model_judges_end_to_end_and_its_non_verdicts_are_recorded_unjudged(
    served_judge: Served, untied_model: Path, tmp_path: Path
) -> None:
    """A local model's answers, judged by a model the project serves, reached as a litellm openai/ target.
    The tiny random model writes no JSON: each row is asked three times, then recorded unjudged."""
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in ROWS[::2]))  # france (gold) and party (chat)
    judging = tmp_path / "judge.yaml"
    judging.write_text(
        "targets:\n"
        f'  judge: {{kind: litellm, model: openai/local, api_base: "{served_judge.base_url}/v1", '
        f"api_key_env: {KEY_VAR}, timeout_s: 60, num_retries: 0}}\n"
        "rules: [{action: answer_with, target: judge}]\n"
    )
    out = tmp_path / "labels.jsonl"
    local = ["--model", str(untied_model), "--samples", "0", "--max-new-tokens", "4", "--grader", "judge"]
    result = label(data, out, *local, "--judge-policy", str(judging), "--judge-target", "judge")
    assert result.exit_code == 0, result.output
    labelled = rows(out)
    assert set(labelled) == {"france", "party"}
    for row in labelled.values():
        details = row["grade_details"]
        assert row["correct"] is None and row["grader"] == "judge" and row["grading"] == JudgeGrader.rule
        assert details["judge"] == "openai/local" and details["attempts"] == 3
        assert details["ungraded"].startswith("no verdict in 3 replies: ")
        assert 0 < details["completion_tokens"] <= 24 and details["prompt_tokens"] > 0
    assert labelled["france"]["grade_details"]["gold"]["grader"] == "alias"


def answered_file(tmp_path: Path, model: str = "answerer") -> Path:
    """A labels file as `build-dataset` writes one: ROWS' gold-graded rows answered "Paris", graded wrong
    on purpose, so that grading them again shows."""
    path = tmp_path / "answered.jsonl"
    answered = [
        {**row, "greedy": "Paris", "samples": [], "model": model, "correct": None, "grader": "alias"}
        for row in ROWS
        if row["answers"]
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in answered))
    return path


def test_answered_rows_are_graded_again_without_asking_any_model(tmp_path: Path) -> None:
    answered, out = answered_file(tmp_path), tmp_path / "regraded.jsonl"
    said = "error: --source rows: no row of it in the --data files (their sources: answered)"
    assert error_line(label(answered, out, "--answered", "--source", "rows")) == said
    result = label(answered, out, "--answered")
    assert result.exit_code == 0, result.output
    regraded = rows(out)
    assert (regraded["france"]["correct"], regraded["spider"]["correct"]) == (True, False)
    assert regraded["france"]["greedy"] == "Paris" and regraded["france"]["model"] == "answerer"
    assert regraded["france"]["grading"] == AliasGrader.rule

    no_answers = tmp_path / "questions.jsonl"
    no_answers.write_text(json.dumps(ROWS[0]) + "\n")
    said = f"error: {no_answers}:1: greedy: missing (is this a labels file from build-dataset?)"
    assert error_line(label(no_answers, tmp_path / "x.jsonl", "--answered")) == said
    refused = label(answered, out, "--answered", "--model", "smollm2-135m-instruct")
    assert error_line(refused).startswith("error: --answered grades the answers already in the --data files")


def test_answered_rows_judged_give_the_judges_agreement_with_the_gold_graders(
    provider: Provider, tmp_path: Path
) -> None:
    """The judge says "correct" to the France row, "incorrect" to the spider one, as the alias grader does:
    it agrees on both, and kappa is 1. Said "correct" to both, it agrees on one, and kappa is 0."""
    provider.respond = lambda body: (
        verdict("correct", 0.9) if "France" in body["messages"][1]["content"] else verdict("incorrect", 0.1)
    )
    judging, answered = policy(tmp_path, provider.base_url), answered_file(tmp_path)
    judge = ["--answered", "--grader", "judge", "--judge-policy", str(judging), "--judge-target", "judge"]
    assert "model being labelled (answerer)" in error_line(
        label(answered, tmp_path / "self.jsonl", *judge[:-1], "same")
    )
    out = tmp_path / "judged.jsonl"
    result = label(answered, out, *judge)
    assert result.exit_code == 0, result.output
    assert sorted(provider.judged_rows()) == ["france", "spider"]
    judged = rows(out)
    assert (
        judged["spider"]["correct"] is False and judged["spider"]["grade_details"]["gold"]["correct"] is False
    )

    report = tmp_path / "agreement"
    result = CliRunner().invoke(app, ["eval-judge", "--labels", str(out), "--out", str(report)])
    assert result.exit_code == 0, result.output
    (alias,) = json.loads((report / "metrics.json").read_text())["graders"]
    assert (alias["grader"], alias["rows"], alias["judged"], alias["agree"]) == ("alias", 2, 2, 2)
    assert alias["kappa"] == pytest.approx(1.0) and alias["cost"] == pytest.approx(2 * RULING)
    assert alias["trusted"] is True
    assert "| alias | openai/judge | 2 | 2 | 1 | 1 | 1.000 [0.34, 1.00] | 1.000" in result.stdout

    provider.respond = lambda body: verdict("correct", 0.9)
    again = tmp_path / "always-correct.jsonl"
    assert label(answered, again, *judge).exit_code == 0
    result = CliRunner().invoke(app, ["eval-judge", "--labels", str(again), "--out", str(report)])
    (alias,) = json.loads((report / "metrics.json").read_text())["graders"]
    assert (alias["agree"], alias["kappa"], alias["trusted"]) == (1, 0.0, False)
    assert "Not trusted" in result.stdout

    result = CliRunner().invoke(app, ["eval-judge", "--labels", str(answered), "--out", str(report)])
    assert error_line(result).endswith("no row was judged beside a gold grade (label with --grader judge)")


def traffic_file(tmp_path: Path) -> Path:
    """Two captured requests as `router traffic export` writes them: a question of ROWS asked as a client
    of the labels' format would ask it, answered by `local` and, as a shadow answer, by `remote`; and a
    greeting only `local` answered."""
    from router.traffic_cli import _record

    def captured(rid: str, question: str, answers: dict[str, str]) -> dict[str, Any]:
        local, *_ = answers
        decision = {"action": "answer_with", "outcome": "answer", "rule": "r", "target": local}
        row = {"id": rid, "messages": [{"role": "user", "content": question}], "target": local}
        return (
            _record(
                {**row, "answer": answers[local], "shadow": {k: v for k, v in answers.items() if k != local}}
                | {"decision": decision, "confidences": {}, "family": None, "tenant": "-", "time": 0.0}
            )
            or {}
        )

    path = tmp_path / "traffic.jsonl"
    rows = [
        captured(
            "req-1",
            "What is the capital of France? Answer in a few words.",
            {"local": "Lyon", "remote": "Paris"},
        ),
        captured("req-2", "hi", {"local": "Hello!"}),
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_captured_answers_are_graded_by_gold_answers_where_known_and_by_the_judge_elsewhere(
    provider: Provider, data: Path, tmp_path: Path
) -> None:
    traffic, judging = traffic_file(tmp_path), policy(tmp_path, provider.base_url)
    judge = ["--judge-policy", str(judging), "--judge-target", "judge"]
    for target, right in (("local", False), ("remote", True)):
        out = tmp_path / f"{target}.jsonl"
        options = ["--from-traffic", "--answer-of", target, "--gold", str(data), *judge]
        result = label(traffic, out, *options)
        assert result.exit_code == 0, result.output
        labelled = rows(out)
        france = labelled["req-1"]
        assert (france["correct"], france["grader"], france["answers"]) == (right, "alias", ["Paris"])
        assert france["model"] == target and france["question"] == "What is the capital of France?"
    assert set(rows(tmp_path / "remote.jsonl")) == {"req-1"}  # `remote` never answered the greeting
    hi = rows(tmp_path / "local.jsonl")["req-2"]
    assert (hi["grader"], hi["correct"], hi["greedy"]) == ("judge", True, "Hello!")  # the judge said so
    assert provider.judged_rows() == ["hi"]

    said = "error: --from-traffic needs --answer-of TARGET: the target whose answers are labelled"
    assert error_line(label(traffic, tmp_path / "x.jsonl", "--from-traffic")) == said
    not_traffic = error_line(label(data, tmp_path / "x.jsonl", "--from-traffic", "--answer-of", "local"))
    assert not_traffic == f"error: {data}:1: answer: missing (is this a file from `router traffic export`?)"
