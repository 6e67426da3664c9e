"""How long the longest request the default limits admit can hold up everyone else.

The model has one worker, so a short request that arrives while a long one runs waits for the long one's
job on that worker to end. `limits.max_prompt_tokens` bounds that job. Baseline: a short question through
`router serve` (default policy) alone. Measured: the same question sent while a prompt just under the limit
is scored and answered. The headline is the short request's latency while the longest runs, against alone.

    python -m bench.longest_wait
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from localmodel.model import LocalModel
from policies import DEFAULT_POLICY_PATH, load_policy
from tests.conftest import free_port, wait_ready

SHORT: dict[str, Any] = {
    "model": "router",
    "messages": [{"role": "user", "content": "What is the capital of Japan?"}],
}
ROUNDS = 3


def longest_prompt(model: LocalModel, limit: int) -> str:
    """Plain prose, as long as the limit lets through."""
    sentence = "The river ran past the old mill and the children counted the boats that went by. "
    words = sentence * (limit // 15)
    while model.prompt_tokens([{"role": "user", "content": words}]) > limit:
        words = words[: int(len(words) * 0.97)]
    return words


def timed(client: httpx.Client, body: dict[str, Any]) -> float:
    started = time.perf_counter()
    client.post("/v1/chat/completions", json=body).raise_for_status()
    return time.perf_counter() - started


def main() -> None:
    policy = load_policy(DEFAULT_POLICY_PATH)
    limit = policy.limits.max_prompt_tokens
    long_body: dict[str, Any] = {
        "model": "router",
        "messages": [{"role": "user", "content": longest_prompt(LocalModel(policy.scorer.model), limit)}],
    }
    port = free_port()
    command = [sys.executable, "-m", "router", "serve", "--port", str(port), "--log-level", "warning"]
    server = subprocess.Popen(command)
    try:
        wait_ready(f"http://127.0.0.1:{port}")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=600) as client:
            timed(client, SHORT)  # warm-up
            alone = [timed(client, SHORT) for _ in range(5)]
            longest, waited = [], []
            with ThreadPoolExecutor(1) as pool:
                for _ in range(ROUNDS):
                    running = pool.submit(timed, client, long_body)
                    time.sleep(0.2)  # the long one holds the worker
                    waited.append(timed(client, SHORT))
                    longest.append(running.result())
    finally:
        server.terminate()
        server.wait()
    base = statistics.median(alone)
    print(f"baseline  short question alone: median {base * 1000:.0f} ms")
    print(f"longest   {limit}-token prompt, scored and answered: max {max(longest):.2f} s")
    print(
        f"measured  short question meanwhile: max {max(waited):.2f} s, "
        f"median {statistics.median(waited):.2f} s"
    )
    print(f"short request's latency while the longest admitted request runs: {max(waited) / base:.1f}x alone")


if __name__ == "__main__":
    main()
