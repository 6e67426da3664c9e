"""Shared fixtures: the real default model, and proxies served over real sockets."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from localmodel import catalog as models
from localmodel.interface import PRECISION_ENV
from policies import Policy, load_policy
from router.app import create_app

DEFAULT_MODEL = "smollm2-135m-instruct"

# Tests compare scores served with scores computed in-process within float noise (tests/tolerance.py); on a
# CPU with AMX a served head scorer reads prompts in bf16 (`scorer.precision: auto`), which moves them in the
# third decimal. So the suite, and the servers it starts, score in fp32 unless a test says otherwise:
# tests/test_scorer_precision.py covers bf16 and `auto`.
os.environ.setdefault(PRECISION_ENV, "fp32")


@pytest.fixture(scope="session")
def smollm2() -> Path:
    """The real default model, pulled once into ROUTER_HOME (CI keeps that cache between runs)."""
    return models.pull(DEFAULT_MODEL)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(base_url: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base_url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{base_url} did not become ready in {timeout_s} s")


class Served:
    """A proxy on a free loopback port, running in a thread of the test process."""

    def __init__(
        self,
        policy: Policy,
        redis_url: str | None = None,
        policy_path: Path | None = None,
        admin_key: str | None = None,
    ) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        app = create_app(policy, redis_url, policy_path=policy_path, admin_key=admin_key)
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        wait_ready(self.base_url)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=30)


@pytest.fixture(scope="module")
def serve(smollm2: Path) -> Iterator[Callable[..., Served]]:
    started: list[Served] = []

    def start(
        policy: Policy,
        redis_url: str | None = None,
        policy_path: Path | None = None,
        admin_key: str | None = None,
    ) -> Served:
        started.append(Served(policy, redis_url, policy_path, admin_key))
        return started[-1]

    yield start
    for served in started:
        served.stop()


@pytest.fixture
def write_policy(tmp_path: Path) -> Callable[[str], Path]:
    def write(text: str, name: str = "policy.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write


def policy_from(text: str, tmp_path: Path) -> Policy:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    return load_policy(path)


@pytest.fixture(scope="session")
def tiny_model(smollm2: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-layer random Llama with the real tokenizer and chat template."""
    from tests.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"), smollm2)


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The real Redis this machine runs; its absence is an error, never a skip. ROUTER_TEST_REDIS_URL picks
    another database, so that two test runs at once do not empty each other's."""
    import redis

    url = os.environ.get("ROUTER_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
    client = redis.Redis.from_url(url)
    client.ping()
    client.flushdb()  # database 15 belongs to the tests: no score cached by an earlier run
    return url


@pytest.fixture(scope="session")
def cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A three-node Redis Cluster of the session's own, on free loopback ports."""
    from tests.redis_process import running_redis

    with running_redis(tmp_path_factory.mktemp("cluster"), "cluster") as cluster:
        yield cluster.url


@pytest.fixture(scope="session")
def sentinel_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis master and a Sentinel that names it, of the session's own, on free loopback ports."""
    from tests.redis_process import running_redis

    with running_redis(tmp_path_factory.mktemp("sentinel"), "sentinel") as sentinel:
        yield sentinel.url


BACKENDS = {"single": "redis_url", "cluster": "cluster_url", "sentinel": "sentinel_url"}
"""Each way of running Redis, and the fixture giving its URL (the forms of docs/operations.md)."""


@pytest.fixture(scope="session", params=list(BACKENDS))
def backend_url(request: pytest.FixtureRequest) -> str:
    """Redis as one server, as a Cluster and behind a Sentinel: a test taking this runs on each."""
    return str(request.getfixturevalue(BACKENDS[request.param]))


def emptied(redis_url: str) -> str:
    """The tests' Redis database, emptied, so that shared windows (feedback, traffic, drift) start empty."""
    from tests.redis_process import direct_client

    client = direct_client(redis_url)
    try:
        client.flushdb()
    finally:
        client.close()
    return redis_url


@pytest.fixture
def fresh_redis(redis_url: str) -> str:
    return emptied(redis_url)


@pytest.fixture
def fresh_backend(backend_url: str) -> str:
    return emptied(backend_url)


@pytest.fixture(scope="session")
def tiny_head(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A head scorer folder on the tiny model: a policy using it starts and scores fast."""
    from tests.tiny import make_head_scorer

    return make_head_scorer(tiny_model, tmp_path_factory.mktemp("tiny-head"), layer=3)


@pytest.fixture(scope="session")
def untied_model(smollm2: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama whose answers are varied text (see build_tiny_model's `tied`)."""
    from tests.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("untied-model"), smollm2, tied=False)


@pytest.fixture(scope="session")
def untied_head(untied_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.tiny import make_head_scorer

    return make_head_scorer(untied_model, tmp_path_factory.mktemp("untied-head"), layer=3)


def head_scorer_yaml(tiny_model: Path, tiny_head: Path) -> str:
    """The `scorer:` section of a policy that scores with `tiny_head`."""
    return f'scorer: {{method: head, model: "{tiny_model}", adapter: "{tiny_head}"}}\n'


@pytest.fixture(scope="session")
def http() -> Iterator[httpx.Client]:
    """One client for many requests: creating an httpx client costs tens of milliseconds (its SSL context),
    far more than a request to a proxy on the tiny model."""
    with httpx.Client(timeout=120) as client:
        yield client
