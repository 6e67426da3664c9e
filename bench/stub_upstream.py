"""The fastest OpenAI-compatible upstream this machine can serve, for gateway benchmarks: no delay, HTTP/1.1
keep-alive, one fixed answer (JSON, or SSE when the request streams), to chat completions and to the
Responses API (POST .../responses). Written on asyncio's protocol layer so
that its own cost per request (tens of microseconds) is small next to any gateway's.

    python -m bench.stub_upstream --port 9000   # prints its base URL (ending in /v1) once listening
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re

ANSWER_WORDS = ["The", "capital", "of", "France", "is", "Paris."]
USAGE = {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19}
ENVELOPE = {"id": "chatcmpl-stub", "created": 1764633600, "model": "stub", "system_fingerprint": None}


def _completion() -> bytes:
    message = {"role": "assistant", "content": " ".join(ANSWER_WORDS), "refusal": None}
    choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}
    body = {**ENVELOPE, "object": "chat.completion", "choices": [choice], "usage": USAGE}
    return json.dumps(body).encode()


def _events(include_usage: bool) -> bytes:
    def chunk(delta: dict[str, str], finish: str | None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return _event({**ENVELOPE, "object": "chat.completion.chunk", "choices": [choice]})

    parts = [chunk({"role": "assistant", "content": ""}, None)]
    parts += [chunk({"content": word if i == 0 else " " + word}, None) for i, word in enumerate(ANSWER_WORDS)]
    parts.append(chunk({}, "stop"))
    if include_usage:
        parts.append(_event({**ENVELOPE, "object": "chat.completion.chunk", "choices": [], "usage": USAGE}))
    parts.append(b"data: [DONE]\n\n")
    # One HTTP chunk per event, as a real provider sends them.
    return b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in parts) + b"0\r\n\r\n"


def _event(data: object) -> bytes:
    return b"data: " + json.dumps(data).encode() + b"\n\n"


def _response(status: str) -> dict[str, object]:
    done = status == "completed"
    part = {"type": "output_text", "text": " ".join(ANSWER_WORDS) if done else "", "annotations": []}
    message = {"type": "message", "id": "msg_stub", "status": status, "role": "assistant", "content": [part]}
    usage = {"input_tokens": 12, "output_tokens": 7, "total_tokens": 19}
    return {
        "id": "resp_stub",
        "object": "response",
        "created_at": ENVELOPE["created"],
        "status": status,
        "model": "stub",
        "output": [message] if done else [],
        "usage": usage if done else None,
    }


def _response_events() -> bytes:
    """A Responses stream: created, a delta per word, the text done, completed; one HTTP chunk per event."""
    where = {"item_id": "msg_stub", "output_index": 0, "content_index": 0}
    events: list[dict[str, object]] = [{"type": "response.created", "response": _response("in_progress")}]
    events += [
        {"type": "response.output_text.delta", **where, "delta": word if i == 0 else " " + word}
        for i, word in enumerate(ANSWER_WORDS)
    ]
    events.append({"type": "response.completed", "response": _response("completed")})
    parts = [
        b"event: %s\n%s" % (str(event["type"]).encode(), _event({**event, "sequence_number": n}))
        for n, event in enumerate(events)
    ]
    return b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in parts) + b"0\r\n\r\n"


COMPLETION = _completion()
JSON_RESPONSE = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(COMPLETION)
    + COMPLETION
)
STREAM_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
STREAM_RESPONSES = {usage: STREAM_HEAD + _events(usage) for usage in (False, True)}
RESPONSE = json.dumps(_response("completed")).encode()
JSON_RESPONSES = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(RESPONSE)
    + RESPONSE
)
STREAM_RESPONSES_EVENTS = STREAM_HEAD + _response_events()
NOT_FOUND = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"
_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)")


class Connection(asyncio.Protocol):
    """One client connection: answers each complete request in its buffer."""

    def __init__(self) -> None:
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:  # every complete request in the buffer (a client may pipeline)
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].lower()
            found = _LENGTH.search(head)
            length = int(found.group(1)) if found else 0
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4 : end + 4 + length]
            self.buffer = self.buffer[end + 4 + length :]
            assert self.transport is not None
            self.transport.write(_respond(head, body))


def _respond(head: bytes, body: bytes) -> bytes:
    line = head[: head.find(b"\r\n")]
    if head.startswith(b"post") and b"/responses" in line:
        return STREAM_RESPONSES_EVENTS if json.loads(body).get("stream") else JSON_RESPONSES
    if not head.startswith(b"post") or b"/chat/completions" not in line:
        return NOT_FOUND
    if b'"stream"' not in body:  # the cheap test first: almost every request says nothing of streams
        return JSON_RESPONSE
    request = json.loads(body)
    if not request.get("stream"):
        return JSON_RESPONSE
    usage = bool((request.get("stream_options") or {}).get("include_usage"))
    return STREAM_RESPONSES[usage]


async def serve(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(Connection, "127.0.0.1", port, backlog=1024)
    print(f"http://127.0.0.1:{port}/v1", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    asyncio.run(serve(parser.parse_args().port))


if __name__ == "__main__":
    main()
