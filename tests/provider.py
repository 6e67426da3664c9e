"""An OpenAI-compatible provider over real HTTP, standing in for a remote model that no test can reach.

It answers every chat completion with a fixed text and usage. A held provider keeps each request open
until the test releases it, so a test can act while a request is certainly in flight.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ANSWER = "An answer from the provider."
USAGE = {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}


class Provider:
    def __init__(self, held: bool = False, reply_to: Callable[[str], str] | None = None) -> None:
        """`reply_to`: the reply to a request's last message (default: `ANSWER` to every one)."""
        self.arrived = threading.Event()
        self.released = threading.Event()
        if not held:
            self.released.set()
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                provider.arrived.set()
                provider.released.wait(timeout=120)
                reply = reply_to(str(body["messages"][-1]["content"])) if reply_to else ANSWER
                answer = {
                    "id": "chatcmpl-provider",
                    "object": "chat.completion",
                    "created": 0,
                    "model": body["model"],
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": reply},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": USAGE,
                }
                data = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:  # keep the test output clean
                return None

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def close(self) -> None:
        self.released.set()
        self._server.shutdown()
        self._server.server_close()


def reload_policy(name: str, scorer: str, provider_url: str, probe_action: str = "answer_with") -> str:
    """Requests from user `slow` go to the provider, from `probe` to `probe_action`, others are scored."""
    probe = "action: refuse" if probe_action == "refuse" else "action: answer_with\n    target: local"
    return f"""\
name: {name}
{scorer}targets:
  local: {{kind: local, max_tokens: 4}}
  remote:
    kind: litellm
    model: openai/held
    api_base: "{provider_url}"
    api_key_env: PROVIDER_KEY
    num_retries: 0
rules:
  - name: slow
    when: {{user: slow}}
    action: answer_with
    target: remote
  - name: probe
    when: {{user: probe}}
    {probe}
  - name: scored
    when: {{confidence_at_least: 0.0}}
    action: answer_with
    target: local
  - name: unscored
    action: refuse
"""
