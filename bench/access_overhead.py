"""What API keys and per-key limits add to the pass-through path.

Baseline: `router serve` with `auth: off`, every request passed to a remote target (a minimal
OpenAI-compatible server on loopback, in its own process), no scoring. Measured: the same server and
policy with `auth: required`, called with a key that has requests, tokens and budget limits (high enough
never to refuse), so each request looks its key up, runs the admission script on Redis and debits after the
answer. Both routers share one Redis and run side by side; requests alternate between them in rounds, one at
a time. The headline is the difference of the medians (target: under 0.5 ms) and their ratio.

    python -m bench.access_overhead [--requests 2000] [--redis-url redis://127.0.0.1:6379/14]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import redis
import redis.asyncio

from router.access.keys import ApiKey, KeyRegistry
from tests.conftest import free_port, wait_ready

POLICY = """\
name: bench-{auth}
auth: {auth}
targets:
  remote: {{kind: litellm, model: openai/ok, api_base: "{upstream}", api_key_env: BENCH_KEY, num_retries: 0}}
rules:
  - action: answer_with
    target: remote
"""
UPSTREAM = (
    "import time; from tests.faults import FaultServer; "
    "s = FaultServer(); print(s.base_url, flush=True); time.sleep(1e9)"
)


# Both routers on one core, the stub upstream and this client on the other: the two sides compete for the
# same core alike (an unpinned run measured a 3 ms difference between two identical routers).
PINNED = shutil.which("taskset") is not None and len(os.sched_getaffinity(0)) >= 2
PIN_SERVERS = ["taskset", "-c", "1"] if PINNED else []
PIN_REST = ["taskset", "-c", "0"] if PINNED else []


def make_key(redis_url: str) -> str:
    async def run() -> str:
        client = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
        try:
            registry = KeyRegistry(client)
            if "bench" in {k.name for k, _ in await registry.listed()}:
                await registry.revoke("bench")
            return await registry.create(ApiKey("bench", rpm=10**7, tpm=10**9, budget_usd=10**6))
        finally:
            await client.aclose()

    return asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/14")
    args = parser.parse_args()
    redis.Redis.from_url(args.redis_url).flushdb()
    folder = Path(tempfile.mkdtemp(prefix="bench-access-"))
    upstream = subprocess.Popen(
        [*PIN_REST, sys.executable, "-c", UPSTREAM], stdout=subprocess.PIPE, text=True
    )
    if PIN_REST:
        os.sched_setaffinity(0, {0})  # the client shares the stub's core
    processes: list[subprocess.Popen[Any]] = [upstream]
    try:
        assert upstream.stdout is not None
        base = upstream.stdout.readline().strip()
        env = {**os.environ, "BENCH_KEY": "unused"}
        urls = {}
        for auth in ("off", "required"):
            path = folder / f"{auth}.yaml"
            path.write_text(POLICY.format(auth=auth, upstream=base))
            port = free_port()
            command = [sys.executable, "-m", "router", "serve", "--policy", str(path), "--port", str(port)]
            log = (folder / f"{auth}.log").open("w")
            processes.append(
                subprocess.Popen(
                    [*PIN_SERVERS, *command, "--redis-url", args.redis_url, "--log-level", "warning"],
                    stdout=log,
                    stderr=log,
                    env=env,
                )
            )
            urls[auth] = f"http://127.0.0.1:{port}"
        for url in urls.values():
            wait_ready(url)
        key = make_key(args.redis_url)
        time.sleep(1)  # the key table is reread every 0.5 s
        body = {"model": "router", "messages": [{"role": "user", "content": "Say hi."}]}
        headers = {"off": {}, "required": {"Authorization": f"Bearer {key}"}}
        times: dict[str, list[float]] = {"off": [], "required": []}
        with httpx.Client(timeout=30) as http:
            for auth, url in urls.items():  # warm-up: litellm's first calls, connections
                for _ in range(50):
                    http.post(
                        f"{url}/v1/chat/completions", json=body, headers=headers[auth]
                    ).raise_for_status()
            rounds, per_round = max(1, args.requests // 100), 50
            for _ in range(rounds):
                for auth in ("off", "required") if _ % 2 == 0 else ("required", "off"):
                    for _request in range(per_round):
                        started = time.perf_counter()
                        response = http.post(
                            f"{urls[auth]}/v1/chat/completions", json=body, headers=headers[auth]
                        )
                        times[auth].append(time.perf_counter() - started)
                        response.raise_for_status()
            keyed_url, keyed_headers = f"{urls['required']}/v1/chat/completions", headers["required"]
            keyed = http.post(keyed_url, json=body, headers=keyed_headers)
        checked = keyed.headers.get("x-ratelimit-remaining-requests")
        assert checked is not None, "the keyed router did not apply the key's limits"
        off, on = (1000 * statistics.median(times[a]) for a in ("off", "required"))
        p90 = {a: 1000 * statistics.quantiles(times[a], n=10)[-1] for a in times}
        print(f"requests per side: {len(times['off'])}, in {rounds} alternating rounds of {per_round}")
        print(f"auth off (baseline): p50 {off:.3f} ms, p90 {p90['off']:.3f} ms")
        print(f"auth required, key with rpm/tpm/budget: p50 {on:.3f} ms, p90 {p90['required']:.3f} ms")
        added = f"{on - off:.3f} ms at p50 ({on / off:.3f}x the path without them; target < 0.5 ms)"
        print(f"auth and limits add {added}")
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=30)


if __name__ == "__main__":
    main()
