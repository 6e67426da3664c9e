"""SIGTERM on a real `router serve` process: stop accepting, drain within the grace period, exit 0."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port, head_scorer_yaml, wait_ready
from tests.provider import Provider

ROUTER = str(Path(sys.executable).with_name("router"))


@pytest.fixture
def held() -> Iterator[Provider]:
    provider = Provider(held=True)
    yield provider
    provider.close()


class Process:
    def __init__(self, policy: Path, grace_s: float) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        command = [
            ROUTER,
            "serve",
            "--policy",
            str(policy),
            "--port",
            str(self.port),
            "--grace-s",
            str(grace_s),
        ]
        env = {**os.environ, "SHUTDOWN_KEY": "sk-test"}
        self.proc = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
        wait_ready(self.base_url)

    def stop(self, timeout_s: float = 60) -> tuple[int, str]:
        self.proc.send_signal(signal.SIGTERM)
        _, stderr = self.proc.communicate(timeout=timeout_s)
        return self.proc.returncode, stderr

    def refuses_connections(self, within_s: float = 10) -> bool:
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            except ConnectionRefusedError:
                return True
            time.sleep(0.05)
        return False


@pytest.fixture
def policy(tmp_path: Path, tiny_model: Path, tiny_head: Path, held: Provider) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(f"""\
{head_scorer_yaml(tiny_model, tiny_head)}targets:
  local: {{kind: local, max_tokens: 1800}}
  remote: {{kind: litellm, model: openai/held, api_base: "{held.base_url}", api_key_env: SHUTDOWN_KEY}}
rules:
  - when: {{model: remote}}
    action: answer_with
    target: remote
  - action: answer_with
    target: local
""")
    return path


def in_flight(pool: ThreadPoolExecutor, base_url: str, model: str) -> Future[httpx.Response]:
    body = {"model": model, "messages": [{"role": "user", "content": "Tell me everything."}]}
    return pool.submit(httpx.post, f"{base_url}/v1/chat/completions", json=body, timeout=120)


def test_sigterm_drains_a_request_in_flight_then_exits_0(policy: Path, held: Provider) -> None:
    server = Process(policy, grace_s=30)
    with ThreadPoolExecutor(1) as pool:
        answer = in_flight(pool, server.base_url, "remote")
        assert held.arrived.wait(30)
        server.proc.send_signal(signal.SIGTERM)
        assert server.refuses_connections()  # no new work while the old finishes
        assert server.proc.poll() is None
        held.released.set()
        assert answer.result().status_code == 200
    returncode, stderr = server.stop()
    assert returncode == 0, stderr


def test_what_outlasts_the_grace_period_is_cancelled_and_the_exit_is_still_0(
    policy: Path, held: Provider
) -> None:
    server = Process(policy, grace_s=0.5)
    with ThreadPoolExecutor(2) as pool:
        upstream = in_flight(pool, server.base_url, "remote")
        assert held.arrived.wait(30)
        generating = in_flight(pool, server.base_url, "router")  # 1,800 tokens on the model's worker
        time.sleep(0.5)
        returncode, stderr = server.stop()
        assert returncode == 0, stderr
        for cut in (upstream, generating):
            assert cut.result().status_code == 503
            assert cut.result().json()["error"]["code"] == "shutting_down"
    assert "Cancel 2 running task(s)" in stderr
    assert "request=" not in stderr  # neither finished: the generation stopped where it was
