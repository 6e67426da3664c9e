"""A fault-injecting OpenAI-compatible provider over real sockets, for tests of what the router does when
its upstream misbehaves.

What a request gets is chosen by the model it asks for (the part of a litellm target's `model` after
`openai/`), or by a script queued for that model, which takes precedence while it lasts:

    ok                       a normal answer (JSON, or SSE when the request streams)
    status-<code>            that status with an OpenAI-shaped error body
    status-<code>-retry-<s>  the same with `Retry-After: <s>`
    hang[-<s>]               waits <s> seconds (default 30), then answers normally
    reset                    reads the request, then resets the connection (SO_LINGER 0, close)
    stream-cut               streams two content chunks, then resets the connection
    stream-end-early         streams two content chunks, then ends the body cleanly (no finish_reason, [DONE])
    not-json                 200 with an HTML body (streamed or not)
    not-sse                  200 with content-type text/event-stream and lines that are not JSON events
    stream-slow              a chunk every 50 ms for 20 s; a client that hangs up is counted (`abandoned`)
    tool-call                a chat answer that calls a tool (tests/upstream_answers.py), streamed or not

Any other name is answered normally (a POST to .../embeddings with `embedding_answer`, to .../responses with
a Responses answer or its events: tests/upstream_answers.py, whose stream-cut is two events then a reset); a
stream asked for `stream_options.include_usage` ends with a usage chunk. Every request is recorded (path,
headers, body) and every accepted connection counted, so a test can prove what reached this server and what
did not.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.upstream_answers import response_answer, response_events, tool_call_answer, tool_call_deltas

ANSWER = "A fault-free answer."
USAGE = {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9}


@dataclass(frozen=True)
class Recorded:
    path: str
    headers: dict[str, str]
    """Lower-cased names."""
    body: dict[str, Any] | None
    """The parsed JSON body; None when it was not JSON."""

    @property
    def model(self) -> str:
        return str((self.body or {}).get("model", ""))


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, owner: FaultServer) -> None:
        self.owner = owner
        super().__init__(("127.0.0.1", 0), _Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        accepted = super().get_request()
        with self.owner._lock:
            self.owner.connections += 1
        return accepted

    def handle_error(self, request: object, client_address: object) -> None:
        return None  # resets and clients that hang up are the point here, not news


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        return None

    def do_GET(self) -> None:
        self._record(None)
        self._json(404, {"error": {"message": "no such route", "type": "invalid_request_error"}})

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("content-length") or 0))
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        self._record(body if isinstance(body, dict) else None)
        model = str((body or {}).get("model", "ok"))
        behaviour = self.server.owner._next(model)
        streamed = bool((body or {}).get("stream"))
        self.usage_wanted = bool(((body or {}).get("stream_options") or {}).get("include_usage"))
        self.inputs = (body or {}).get("input")
        self._behave(behaviour, model, streamed)

    def _record(self, body: dict[str, Any] | None) -> None:
        headers = {k.lower(): v for k, v in self.headers.items()}
        self.server.owner._recorded(Recorded(self.path, headers, body))

    def _behave(self, behaviour: str, model: str, streamed: bool) -> None:
        parts = behaviour.split("-")
        if parts[0] == "status" and len(parts) >= 2:
            status = int(parts[1])
            headers = {"retry-after": parts[3]} if len(parts) == 4 and parts[2] == "retry" else {}
            error = {"message": f"stub says {status}", "type": "stub_error", "param": None, "code": None}
            self._json(status, {"error": error}, headers)
        elif parts[0] == "hang":
            time.sleep(float(parts[1]) if len(parts) > 1 else 30.0)
            self._answer(model, streamed)
        elif behaviour == "reset":
            self._reset()
        elif behaviour in ("stream-cut", "stream-end-early"):
            self._start_stream()
            if self.path.endswith("/responses"):
                half = response_events(model)[:2]
            else:
                half = [_event(_delta(model, {"content": text}, None)) for text in ("Half ", "an answer")]
            for event in half:
                self._chunk(event)
            if behaviour == "stream-cut":
                self._reset()
            else:
                self._chunk(b"")
        elif behaviour == "not-json":
            data = b"<html><body>502 Bad Gateway (but sent as 200)</body></html>"
            self._send(200, "text/html", data)
        elif behaviour == "stream-slow":
            self._start_stream()
            try:
                for _ in range(400):
                    self._chunk(_event(_delta(model, {"content": "more "}, None)))
                    time.sleep(0.05)
            except OSError:  # the client closed the connection: it no longer wants the answer
                with self.server.owner._lock:
                    self.server.owner.abandoned += 1
        elif behaviour == "not-sse":
            self._start_stream()
            self._chunk(b"this is not an event stream\n\nnor: is this\n\ndata: {not json\n\n")
            self._chunk(b"")
        else:
            self._answer(model, streamed)

    def _answer(self, model: str, streamed: bool) -> None:
        if self.path.endswith("/embeddings"):
            self._send(200, "application/json", embedding_answer(model, self.inputs))
            return
        if self.path.endswith("/responses"):
            self._responses(model, streamed)
            return
        if model == "tool-call":
            self._tool_call(model, streamed)
            return
        if not streamed:
            message = {"role": "assistant", "content": ANSWER}
            choice = {"index": 0, "message": message, "finish_reason": "stop"}
            self._json(200, {**_envelope(model, "chat.completion"), "choices": [choice], "usage": USAGE})
            return
        self._start_stream()
        self._chunk(_event(_delta(model, {"role": "assistant", "content": ""}, None)))
        for word in ANSWER.split(" "):
            self._chunk(_event(_delta(model, {"content": word + " "}, None)))
        self._chunk(_event(_delta(model, {}, "stop")))
        if self.usage_wanted:  # as OpenAI does: a last chunk with no choices, only the usage
            self._chunk(_event({**_envelope(model, "chat.completion.chunk"), "choices": [], "usage": USAGE}))
        self._chunk(b"data: [DONE]\n\n")
        self._chunk(b"")

    def _responses(self, model: str, streamed: bool) -> None:
        if not streamed:
            self._send(200, "application/json", response_answer(model))
            return
        self._start_stream()
        for event in response_events(model):
            self._chunk(event)
        self._chunk(b"")

    def _tool_call(self, model: str, streamed: bool) -> None:
        if not streamed:
            self._json(200, tool_call_answer(model))
            return
        self._start_stream()
        for delta, finish_reason in tool_call_deltas():
            self._chunk(_event(_delta(model, delta, finish_reason)))
        self._chunk(b"data: [DONE]\n\n")
        self._chunk(b"")

    def _json(self, status: int, body: object, headers: dict[str, str] | None = None) -> None:
        self._send(status, "application/json", json.dumps(body).encode(), headers)

    def _send(self, status: int, kind: str, data: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("content-type", kind)
        self.send_header("content-length", str(len(data)))
        self.send_header("connection", "close")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)
        self.close_connection = True

    def _start_stream(self) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("transfer-encoding", "chunked")
        self.send_header("connection", "close")
        self.end_headers()
        self.close_connection = True

    def _chunk(self, data: bytes) -> None:
        """One HTTP chunk; an empty one ends the body."""
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _reset(self) -> None:
        self.wfile.flush()
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()
        self.close_connection = True


def embedding_answer(model: str, inputs: object) -> bytes:
    """The body of an embeddings answer, byte for byte: a vector per input, two tokens per input."""
    count = len(inputs) if isinstance(inputs, list) else 1
    data = [{"object": "embedding", "index": i, "embedding": [0.25, -0.5, 0.125]} for i in range(count)]
    usage = {"prompt_tokens": 2 * count, "total_tokens": 2 * count}
    return json.dumps({"object": "list", "data": data, "model": model, "usage": usage}).encode()


def _envelope(model: str, kind: str) -> dict[str, Any]:
    return {"id": "chatcmpl-faults", "object": kind, "created": 0, "model": model}


def _delta(model: str, delta: dict[str, Any], finish_reason: str | None) -> dict[str, Any]:
    choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
    return {**_envelope(model, "chat.completion.chunk"), "choices": [choice]}


def _event(chunk: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(chunk)}\n\n".encode()


class FaultServer:
    """The provider on a free loopback port; `base_url` ends in /v1, as litellm's api_base does."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._scripts: dict[str, deque[str]] = defaultdict(deque)
        self.requests: list[Recorded] = []
        self.connections = 0
        self.abandoned = 0
        """Streams whose client hung up before their end."""
        self._server = _Server(self)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self.base_url = f"{self.url}/v1"

    def script(self, model: str, *behaviours: str) -> None:
        """The next requests for `model` behave so, in order; after that, as the model's name says."""
        with self._lock:
            self._scripts[model].extend(behaviours)

    def calls(self, model: str | None = None) -> int:
        with self._lock:
            return sum(1 for r in self.requests if model is None or r.model == model)

    def recorded(self, model: str | None = None) -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if model is None or r.model == model]

    def reset(self) -> None:
        """Forget what was recorded and scripted (the server keeps running)."""
        with self._lock:
            self.requests.clear()
            self._scripts.clear()
            self.connections = 0

    def _next(self, model: str) -> str:
        with self._lock:
            queued = self._scripts.get(model)
            return queued.popleft() if queued else model

    def _recorded(self, request: Recorded) -> None:
        with self._lock:
            self.requests.append(request)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
