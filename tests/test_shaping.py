"""What a hedge does to an answer, over real HTTP: a template ending with {answer} streams (its prefix,
then the answer as the target writes it), one with text after {answer} is replayed whole, and output a
program parses (JSON mode, a JSON schema, tool calls) is never written around: the hedge is in the headers."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from router.openapi import DECISION_HEADERS
from tests.conftest import Served, head_scorer_yaml, policy_from

JSON_ANSWER = '{"city": "Paris", "country": "France"}'
TEXT_ANSWER = "Paris is the capital of France."
TOOL_CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "lookup", "arguments": '{"q": "Paris"}'},
}
TOOLS = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]


class Structured(ThreadingHTTPServer):
    """An OpenAI-compatible upstream: JSON for JSON mode, a tool call when tools are offered, else text;
    streamed a few characters per chunk when asked."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()
        self.base_url = f"http://127.0.0.1:{self.server_address[1]}/v1"


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        return None

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        message: dict[str, Any] = {"role": "assistant", "content": TEXT_ANSWER}
        if body.get("tools"):
            message = {"role": "assistant", "content": None, "tool_calls": [TOOL_CALL]}
        elif body.get("response_format"):
            message["content"] = JSON_ANSWER
        head = {"id": "chatcmpl-upstream", "created": 0, "model": body["model"]}
        if not body.get("stream"):
            choice = {"index": 0, "message": message, "finish_reason": "stop"}
            usage = {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}
            self._send("application/json", json.dumps({**head, "object": "chat.completion",
                       "choices": [choice], "usage": usage}).encode())  # fmt: skip
            return
        deltas: list[dict[str, Any]] = [{"role": "assistant", "content": ""}]
        content = message["content"] or ""
        deltas += [{"content": content[k : k + 6]} for k in range(0, len(content), 6)]
        if message.get("tool_calls"):
            deltas.append({"tool_calls": [{"index": 0, **TOOL_CALL}]})
        chunks = [{**head, "object": "chat.completion.chunk", "choices": [
            {"index": 0, "delta": delta, "finish_reason": None}]} for delta in deltas]  # fmt: skip
        chunks.append({**head, "object": "chat.completion.chunk",
                       "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})  # fmt: skip
        events = "".join(f"data: {json.dumps(chunk)}\n\n" for chunk in chunks) + "data: [DONE]\n\n"
        self._send("text/event-stream", events.encode())

    def _send(self, kind: str, data: bytes) -> None:
        self.send_response(200)
        self.send_header("content-type", kind)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture(scope="module")
def served(
    serve: Callable[..., Served],
    untied_model: Path,
    untied_head: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Served]:
    upstream = Structured()
    text = f"""\
{head_scorer_yaml(untied_model, untied_head)}targets:
  remote: {{kind: openai, model: upstream, api_base: "{upstream.base_url}"}}
  local: {{kind: local, max_tokens: 6}}
rules:
  - {{when: {{user: around}}, action: hedge, target: remote, message: "Unsure ({{answer}}), check it"}}
  - {{when: {{model: local}}, action: hedge, target: local}}
  - {{action: hedge, target: remote}}
"""
    yield serve(policy_from(text, tmp_path_factory.mktemp("shaping")))
    upstream.shutdown()
    upstream.server_close()


PREFIX = "I am not certain about this, so please double-check it: "


def ask(served: Served, stream: bool = False, model: str = "router", **fields: Any) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "Where?"}], "stream": stream, **fields}
    return httpx.post(f"{served.base_url}/v1/chat/completions", json=body, timeout=60)


def chunks(response: httpx.Response) -> list[dict[str, Any]]:
    lines = [line.removeprefix("data: ") for line in response.text.splitlines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


def pieces(events: list[dict[str, Any]]) -> list[str]:
    return [c["choices"][0]["delta"]["content"] for c in events if c["choices"][0]["delta"].get("content")]


def said(events: list[dict[str, Any]]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in events if c["choices"])


def test_a_hedge_streams_its_prefix_then_the_targets_own_chunks(served: Served) -> None:
    response = ask(served, stream=True)
    assert response.headers["x-router-decision"] == "hedge"
    assert {name for name in response.headers if name.startswith("x-router-")} <= set(DECISION_HEADERS)
    events = chunks(response)
    assert said(events) == PREFIX + TEXT_ANSWER
    # The upstream's own chunks (six characters each), the first with the prefix: passed on, not replayed.
    content = pieces(events)
    assert content[0] == PREFIX + TEXT_ANSWER[:6] and content[1:] == [
        TEXT_ANSWER[k : k + 6] for k in range(6, len(TEXT_ANSWER), 6)
    ]


def test_a_template_with_text_after_the_answer_is_replayed_whole(served: Served) -> None:
    whole = ask(served, user="around").json()["choices"][0]["message"]["content"]
    assert whole == f"Unsure ({TEXT_ANSWER}), check it"
    response = ask(served, stream=True, user="around")
    events = chunks(response)
    assert said(events) == whole
    assert pieces(events) == re.findall(r"\s*\S+", whole)  # replayed a word at a time


def test_a_local_hedge_streams_the_same_answer_it_would_write_whole(served: Served) -> None:
    whole = ask(served, model="local").json()["choices"][0]["message"]["content"]
    assert whole.startswith(PREFIX) and len(whole) > len(PREFIX)
    events = chunks(ask(served, stream=True, model="local"))
    assert said(events) == whole
    assert events[-1]["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize(
    "response_format",
    [
        {"type": "json_object"},
        {"type": "json_schema", "json_schema": {"name": "place", "schema": {"type": "object"}}},
    ],
)
@pytest.mark.parametrize("stream", [False, True])
def test_json_output_is_never_written_around(
    served: Served, response_format: dict[str, Any], stream: bool
) -> None:
    response = ask(served, stream=stream, response_format=response_format)
    assert response.headers["x-router-decision"] == "hedge"
    text = said(chunks(response)) if stream else response.json()["choices"][0]["message"]["content"]
    assert json.loads(text) == json.loads(JSON_ANSWER)


@pytest.mark.parametrize("stream", [False, True])
def test_tool_calls_are_never_written_around(served: Served, stream: bool) -> None:
    response = ask(served, stream=stream, tools=TOOLS)
    assert response.headers["x-router-decision"] == "hedge"
    if not stream:
        message = response.json()["choices"][0]["message"]
        assert message["content"] is None and message["tool_calls"][0]["function"] == TOOL_CALL["function"]
        return
    events = chunks(response)
    assert said(events) == ""
    calls = [
        c["choices"][0]["delta"]["tool_calls"] for c in events if c["choices"][0]["delta"].get("tool_calls")
    ]
    assert calls[0][0]["function"] == TOOL_CALL["function"]
