"""A soak of the router on Redis: how Redis and the router's memory grow with traffic (issue 29).

One `router serve --redis-url` pinned to core 0, in front of bench/stub_upstream.py (an `openai` target that
answers at once), on a redis-server of the benchmark's own (no persistence, no maxmemory: nothing is
evicted, so its growth is what the router keeps). The upstream, Redis and this load generator share core 1.
Half the clients pass through (a rule on `user`), half go through a scored rule with the shipped head scorer
over `--prompts` rotating questions, whose scores are cached in a warm-up pass, as in the issue's soak.

First, the bytes each kind of record takes in Redis, written with the router's own classes (used_memory
before and after many of them). Then two soaks on a flushed Redis, each with a fresh router: the baseline,
keeping every decision (`sample: 1`, as the issue measured; `--baseline-seconds`, 0 skips it), and the
policy's defaults (or `--sample`, `--per-tenant`) for `--seconds`. Every `--every` seconds: the requests so
far, Redis's used_memory and keys, the router's RSS. At the end of each: Redis's growth per million
requests from the first minute on (a third of a shorter run: by then the bounded windows are full), against
the issue's figure (467 MB for 1.19 M requests) and, for the defaults, the goal (at most 50 MB per
million), and the router's RSS growth over the same span. The last line is the headline.

    python -m bench.redis_soak [--seconds 150] [--baseline-seconds 60] [--clients 32] [--prompts 200]
                               [--every 15] [--sample S] [--per-tenant N]

A benchmark, not a test: CI does not run it.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import itertools
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from bench import http_load
from bench.gateway import GATEWAY_CORE, UPSTREAM_CORE, Fleet, fleet, pinned, rss_mib, wait_up
from bench.http_load import Call
from policies import DEFAULT_POLICY_PATH, Decision
from policies.schema import MonitoringSpec
from router.access.keys import ApiKey, KeyRegistry
from router.access.limits import Limits
from router.feedback import FEEDBACK_WINDOW, DecisionLog, FeedbackRecord, Judged
from router.score_cache import ScoreCache
from router.state import RedisStore
from scorers import RawScore
from tests.conftest import free_port

ISSUE_BYTES, ISSUE_REQUESTS = 467e6, 1_192_825
"""The issue's soak: Redis from empty to 467 MB after 1,192,825 requests, one decision kept per request."""
ISSUE_PER_MILLION = ISSUE_BYTES / ISSUE_REQUESTS * 1e6
GOAL_PER_MILLION = 50e6
MB = 1e6
POLICY = """\
name: bench-soak
scorer: {{method: head, model: smollm2-135m-instruct, adapter: "{adapter}"}}
targets:
  remote: {{kind: openai, model: stub, api_base: "{upstream}", api_key_env: BENCH_KEY}}
rules:
  - {{name: pass, when: {{user: pass}}, action: answer_with, target: remote}}
  - {{name: scored, when: {{confidence_at_least: 0.0}}, action: answer_with, target: remote}}
  - {{action: answer_with, target: remote}}
{monitoring}"""
SCORER_VERSION = "head:0123456789abcdef:layer24:mean"
"""The form of the head scorer's version, which every kept decision carries."""


@contextmanager
def own_redis(folder: Path) -> Iterator[str]:
    """A redis-server on a free port, without persistence or a memory limit; its URL."""
    port = free_port()
    log = (folder / "redis.log").open("w")
    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    command += ["--appendonly", "no", "--dir", str(folder)]
    process = subprocess.Popen(pinned(UPSTREAM_CORE, command), stdout=log, stderr=subprocess.STDOUT)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        client = redis.Redis.from_url(url)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.exceptions.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        client.close()
        yield url
    finally:
        process.kill()
        process.wait(timeout=10)


def used_memory(client: Any) -> int:
    return int(client.info("memory")["used_memory"])


async def per_record(client: Any, count: int, write: Callable[[int], Awaitable[object]]) -> float:
    """Bytes of used_memory per record, over `count` records written by `write(i)`."""
    before = used_memory(client)
    for i in range(count):
        await write(i)
    return (used_memory(client) - before) / count


async def record_sizes(url: str, count: int) -> dict[str, float]:
    """Bytes per record of each kind the router writes per request (and per API key), on a flushed Redis."""
    client = redis.Redis.from_url(url)
    store = RedisStore(url)
    decision = Decision("answer_with", "remote", "scored", 0.7312, None, 0)
    judged = Judged("smollm2-135m-instruct", -0.3468, 0.7312)
    ids = [uuid.uuid4().hex for _ in range(count)]
    sizes: dict[str, float] = {}
    try:
        client.flushall()
        log = DecisionLog(store, MonitoringSpec(feedback_retained=100), SCORER_VERSION, retained=2000)
        for i in range(2000):  # the traffic window at its bound first: from then on it does not grow
            await log.record(f"{i:032x}", decision, -0.35, judged)
        sizes["decision kept, with its index entry"] = await per_record(
            client, count, lambda i: log.record(ids[i], decision, -0.35, judged, asked=True)
        )
        for i in range(100):  # the feedback window at its bound (100 here) first
            await log.feedback(ids[i], 1.0)
        sizes["feedback marker"] = await per_record(
            client, count - 100, lambda i: log.feedback(ids[100 + i], 1.0)
        )
        client.flushall()
        entry = json.dumps(
            dataclasses.asdict(FeedbackRecord(0.7312, -0.3468, 1.0, SCORER_VERSION, "smollm2"))
        )
        sizes["feedback window entry (bounded)"] = await per_record(
            client, count, lambda i: store.push(FEEDBACK_WINDOW, entry, count)
        )
        sizes["traffic window entry (bounded)"] = await per_record(
            client, count, lambda i: store.push("window:traffic:0123456789abcdef", "answer -0.3468", count)
        )
        cache = ScoreCache(store, SCORER_VERSION, 3600)
        sizes["cached score, per distinct conversation"] = await per_record(
            client,
            count,
            lambda i: cache.put(
                [{"role": "user", "content": f"Question {i}?"}],
                256,
                RawScore({"smollm2-135m-instruct": -0.3468}),
            ),
        )
        registry, limits = KeyRegistry(store.client), Limits(store, store.client)
        keys = [ApiKey(f"tenant-{i}", rpm=600, tpm=100_000, budget_usd=25) for i in range(500)]
        sizes["API key (key table rows)"] = await per_record(
            client, len(keys), lambda i: registry.create(keys[i])
        )

        async def used(i: int) -> None:
            await limits.admit(keys[i])
            limits.settle(keys[i], 19, 0.0001)
            await limits.close()

        sizes["a key's limit buckets and spend"] = await per_record(client, len(keys), used)
    finally:
        client.flushall()
        client.close()
        await store.close()
    return sizes


def print_sizes(sizes: dict[str, float]) -> None:
    print("\nbytes of Redis used_memory per record:")
    for kind, size in sizes.items():
        print(f"  {kind:<42} {size:8.0f} B")


class Rotating(http_load._Client):
    """One keep-alive connection that sends each of `calls` in turn."""

    def __init__(self, calls: list[Call]) -> None:
        super().__init__(calls[0])
        self._wires = itertools.cycle([call.wire() for call in calls])

    async def send(self) -> tuple[float, float]:
        self.wire = next(self._wires)
        return await super().send()


def calls(port: int, prompts: int) -> tuple[Call, list[Call]]:
    """The pass-through call, and one scored call per prompt."""

    def call(body: dict[str, object]) -> Call:
        return Call("127.0.0.1", port, "/v1/chat/completions", json.dumps(body).encode())

    def asking(question: str, user: str) -> dict[str, object]:
        messages = [{"role": "user", "content": question}]
        return {"model": "router", "messages": messages, "max_tokens": 32, "user": user}

    scored = [
        call(asking(f"Question {i}: what is the capital of country {i}?", "scored")) for i in range(prompts)
    ]
    return call(asking("What is the capital of France?", "pass")), scored


@dataclass
class Sample:
    at_s: float
    requests: int
    redis_bytes: int
    keys: int
    rss_mib: float


async def soak(
    clients: list[Rotating], seconds: float, every: float, sample: Callable[[float, int], Sample]
) -> list[Sample]:
    """Every client sends request after request for `seconds`; `sample` is taken every `every` seconds."""
    done, started = 0, time.monotonic()
    samples = [sample(0.0, 0)]

    async def drive(client: Rotating) -> None:
        nonlocal done
        while time.monotonic() - started < seconds:
            await client.send()
            done += 1

    async def watch() -> None:
        while True:
            await asyncio.sleep(every)
            samples.append(sample(time.monotonic() - started, done))
            last = samples[-1]
            print(
                f"  {last.at_s:6.0f} s: {last.requests:>9} requests ({last.requests / last.at_s:.0f}/s), "
                f"Redis {last.redis_bytes / MB:8.2f} MB in {last.keys} keys, "
                f"router RSS {last.rss_mib:.1f} MiB",
                flush=True,
            )

    watcher = asyncio.get_running_loop().create_task(watch())
    try:
        await asyncio.gather(*(drive(client) for client in clients))
    finally:
        watcher.cancel()
        await asyncio.gather(*(client.close() for client in clients))
    samples.append(sample(time.monotonic() - started, done))
    return samples


def start_router(
    started: Fleet, redis_url: str, name: str, decisions: dict[str, float]
) -> tuple[subprocess.Popen[bytes], int]:
    """`decisions`: the policy's monitoring.decisions (empty: its defaults)."""
    adapter = started.folder / "scorer"
    if not adapter.exists():  # a copy: a training run may rewrite the shipped folder meanwhile
        shutil.copytree(DEFAULT_POLICY_PATH.parent / "scorers" / "smollm2-head", adapter)
    monitoring = f"monitoring: {{decisions: {json.dumps(decisions)}}}\n" if decisions else ""
    policy = started.folder / f"{name}.yaml"
    policy.write_text(POLICY.format(adapter=adapter, upstream=started.upstream_url, monitoring=monitoring))
    port = free_port()
    command = [sys.executable, "-m", "router", "serve", "--policy", str(policy), "--port", str(port)]
    command += ["--redis-url", redis_url]
    process = started._start(name, pinned(GATEWAY_CORE, command), {**os.environ, "BENCH_KEY": "unused"})
    wait_up(f"http://127.0.0.1:{port}/readyz")
    return process, port


def phase(
    started: Fleet,
    redis_url: str,
    args: argparse.Namespace,
    name: str,
    decisions: dict[str, float],
    seconds: float,
    goal: bool = True,
) -> tuple[float, float]:
    """One router on a flushed Redis, warmed up and soaked for `seconds`: its growth figures (`report`),
    judged against the goal when `goal`."""
    client = redis.Redis.from_url(redis_url)
    client.flushall()
    process, port = start_router(started, redis_url, name, decisions)
    try:
        passing, scored = calls(port, args.prompts)
        for call in [passing, *scored]:  # warm-up: every prompt scored once, its score cached from then on
            asyncio.run(http_load.run(call, 1, 0, warm_up=1))
        half = args.clients // 2
        clients = [Rotating([passing]) for _ in range(half)]
        clients += [Rotating(scored[i:] + scored[:i]) for i in range(args.clients - half)]

        def sample(at_s: float, requests: int) -> Sample:
            return Sample(at_s, requests, used_memory(client), int(client.dbsize()), rss_mib(process.pid))

        warm = sample(0.0, 0)
        print(
            f"\n{name} (monitoring.decisions {decisions or 'as the policy defaults'}): {half} clients "
            f"passing through, {args.clients - half} scored over {args.prompts} prompts, {seconds:.0f} s",
            flush=True,
        )
        return report(asyncio.run(soak(clients, seconds, args.every, sample)), warm, goal)
    finally:
        process.terminate()
        process.wait(timeout=30)
        client.close()


def report(samples: list[Sample], warm: Sample, goal: bool) -> tuple[float, float]:
    """Redis's growth per million requests and the router's RSS growth (MiB), both from the sample at the
    first minute (a third of the run if shorter) to the end: by then the bounded windows are full and every
    connection is open, so what grows after is what the router keeps per request."""
    end = samples[-1]
    settled = next(s for s in samples if s.at_s >= min(60.0, end.at_s / 3))
    served = max(end.requests - settled.requests, 1)
    per_million = (end.redis_bytes - settled.redis_bytes) / served * 1e6
    verdict = "met" if per_million <= GOAL_PER_MILLION else "MISSED"
    judged = f": {less(ISSUE_PER_MILLION, per_million)} (goal <= {GOAL_PER_MILLION / MB:.0f} MB: {verdict})"
    print(
        f"\nRedis: {warm.redis_bytes / MB:.2f} MB after the warm-up, {settled.redis_bytes / MB:.2f} MB at "
        f"{settled.at_s:.0f} s, {end.redis_bytes / MB:.2f} MB after {end.requests} requests in "
        f"{end.at_s:.0f} s ({end.requests / end.at_s:.0f}/s); {end.keys} keys"
    )
    print(
        f"Redis growth per million requests since {settled.at_s:.0f} s: {per_million / MB:.2f} MB, against "
        f"{ISSUE_PER_MILLION / MB:.1f} MB in the issue ({ISSUE_BYTES / MB:.0f} MB per "
        f"{ISSUE_REQUESTS / 1e6:.2f} M){judged if goal else ''}"
    )
    growth = end.rss_mib - settled.rss_mib
    print(
        f"router RSS: {warm.rss_mib:.1f} MiB after the warm-up, {settled.rss_mib:.1f} MiB at "
        f"{settled.at_s:.0f} s, {end.rss_mib:.1f} MiB at the end: {growth:+.1f} MiB since "
        f"(the issue: +0.1 MB over 1.19 M requests after its first two minutes)"
    )
    return per_million, growth


def less(before: float, after: float) -> str:
    """How many times less `after` grows than `before`; flat within the noise of used_memory (0.5 MB per
    million requests, some tens of kilobytes in a short run)."""
    return "flat" if after < 0.5 * MB else f"{before / after:.0f}x less"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=150, help="how long the soak runs")
    parser.add_argument(
        "--baseline-seconds",
        type=float,
        default=60,
        help="first, a soak as long keeping every decision (sample 1, as before issue 29); 0: none",
    )
    parser.add_argument("--clients", type=int, default=32, help="half pass through, half are scored")
    parser.add_argument("--prompts", type=int, default=200, help="questions the scored clients rotate over")
    parser.add_argument("--every", type=float, default=15, help="seconds between samples")
    parser.add_argument("--sample", type=float, help="monitoring.decisions.sample (default: the policy's)")
    parser.add_argument(
        "--per-tenant", type=int, help="monitoring.decisions.per_tenant (default: the policy's)"
    )
    parser.add_argument("--records", type=int, default=20_000, help="records per kind when measuring sizes")
    args = parser.parse_args()
    os.sched_setaffinity(0, {UPSTREAM_CORE})
    chosen = {k: v for k, v in (("sample", args.sample), ("per_tenant", args.per_tenant)) if v is not None}
    baseline = None
    with fleet() as started, own_redis(started.folder) as redis_url:
        print(f"logs in {started.folder}", flush=True)
        print_sizes(asyncio.run(record_sizes(redis_url, args.records)))
        if args.baseline_seconds:
            every = {"sample": 1.0, "per_tenant": 10_000_000}
            seconds = args.baseline_seconds
            baseline, _ = phase(started, redis_url, args, "every-decision", every, seconds, goal=False)
        per_million, growth = phase(started, redis_url, args, "bounded", chosen, args.seconds)
    settings = ", ".join(f"{k} {v:g}" for k, v in chosen.items()) or "the policy's defaults"
    against = f"the issue's {ISSUE_PER_MILLION / MB:.0f} MB"
    if baseline is not None:
        against += f" and {baseline / MB:.0f} MB keeping every decision here"
    verdict = less(baseline or ISSUE_PER_MILLION, per_million)
    print(
        f"headline: Redis grows {per_million / MB:.2f} MB per million requests at {settings}, against "
        f"{against}: {verdict} (goal <= {GOAL_PER_MILLION / MB:.0f} MB); router RSS {growth:+.1f} MiB "
        f"after its first minute (a third of a shorter run)"
    )


if __name__ == "__main__":
    main()
