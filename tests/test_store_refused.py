"""A Redis that answers but refuses this client's writes (an ACL without them; protected mode and a wrong
password refuse everything) is an outage for the store: answers keep coming, /readyz says degraded."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from policies import load_policy
from router.state import RedisStore, ResilientStore
from tests.conftest import Served
from tests.redis_process import RedisProcess

READ_ONLY = ("--user", "default", "on", "nopass", "~*", "+@read", "+ping", "+client", "+hello", "+info")


@pytest.fixture(scope="module")
def refusing(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    """A real redis-server whose (default) user may PING and read, not write."""
    redis = RedisProcess(tmp_path_factory.mktemp("refusing"), extra=READ_ONLY).start()
    yield redis
    redis.kill()


def test_refused_writes_degrade_the_store_instead_of_failing(refusing: RedisProcess) -> None:
    async def go() -> None:
        store = ResilientStore(RedisStore(refusing.url), probe_interval_s=60)
        await store.set("decision:1", "kept", ttl_s=60)  # NOPERM, not raised to the request
        assert store.health().mode == "degraded"
        assert store.health().pending_writes == 1
        assert await store.get("decision:1") == "kept"  # from the replica's own mirror
        await store.close()

    asyncio.run(go())


def test_a_router_on_it_answers_and_reports_degraded(
    refusing: RedisProcess, serve: Callable[..., Served], tiny_model: Path, tmp_path: Path
) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(
        f'scorer: {{method: nprob, model: "{tiny_model}"}}\ntargets: {{local: {{kind: local}}}}\n'
        "rules:\n  - action: refuse\n"
    )
    served = serve(load_policy(path), redis_url=refusing.url)
    body = {"model": "router", "messages": [{"role": "user", "content": "Who wrote Hamlet?"}]}
    answer = httpx.post(f"{served.base_url}/v1/chat/completions", json=body, timeout=60)
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-router-decision"] == "refuse"
    ready = httpx.get(f"{served.base_url}/readyz", timeout=10)
    assert ready.status_code == 200
    assert ready.json()["store"] == "degraded"
