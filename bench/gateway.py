"""The router as a gateway, against the LiteLLM proxy: what each adds to a call to an OpenAI-compatible
upstream, and how much traffic each carries on one core.

Both gateways run pinned to core 0, one at a time busy; the upstream (bench/stub_upstream.py, answering at
once) and this load generator (bench/http_load.py) share core 1. Sides: the LiteLLM proxy (litellm[proxy],
pinned below, in a virtual environment of its own created on first run), and the router on a policy that
passes every request to the upstream (`pass`), one that scores every request first with the shipped head
scorer, the score cached after the first (`cached`), each also with Redis as its store (`-redis`); and the
pass-through policy capturing every request (`pass-capture-redis`) and also exploring every one of them
(`pass-explore-redis`: a shadow answer from a second, priced target on the same upstream), whose figures are
also printed against each other, exploring on against off, with the shadow answers counted and each round's
p50 at 1 client paired (its mean and 95% interval over the rounds); and the Responses API passed through to
the same upstream (`pass-responses`, `pass-responses-redis`: POST /v1/responses to an `openai` target, which
the router sends on to the upstream's /v1/responses), measured against the upstream's own /v1/responses and
printed against the chat side of the same name without `-responses` when it ran too (the LiteLLM proxy is
measured on chat only). Every side runs at its default log level.
Rounds interleave the sides (rotating their order), and each figure pools the rounds:

- added latency at 1 client: the side's p50 and p99 less those of the upstream called directly;
- throughput and p99 at `--clients` clients, and CPU per request (the server's process tree, from /proc);
- streaming: time to the first event at 1 client, less the upstream's own;
- memory: RSS after 5,000 and after `--memory-requests` requests (`--memory-requests 0` skips it).

    python -m bench.gateway [--rounds 6] [--kind openai|litellm] [--sides pass,pass-redis,cached,cached-redis]
                            [--memory-requests 50000] [--memory-side pass] [--no-litellm]

    # what exploring adds to the pass-through path: on (share 1.0) against off, in the same run
    python -m bench.gateway --sides pass-capture-redis,pass-explore-redis --memory-requests 0

    # the Responses API passed through, against chat passed through
    python -m bench.gateway --sides pass,pass-responses --memory-requests 0 --no-litellm

Every figure is printed with both sides and their ratio; the last line is the headline. A benchmark, not a
test: CI does not run it (it installs the LiteLLM proxy from PyPI on first run, and takes ten minutes).
`--no-litellm` leaves the LiteLLM proxy out (no install): the routers' figures stand alone, and the
exploring comparison is still made.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench import http_load
from bench.http_load import Call, Timings
from policies import DEFAULT_POLICY_PATH
from tests.conftest import free_port

LITELLM_PROXY = "litellm[proxy]==1.102.4"
"""Newer litellm needs a certifi the package registry lacks; the router pins the same litellm."""
PROXY_VENV = Path.home() / ".cache" / "confidence-router" / "bench-litellm-proxy"
GATEWAY_CORE, UPSTREAM_CORE = 0, 1
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
REDIS_URL = "redis://127.0.0.1:6379/14"
LITELLM_CONFIG = """\
model_list:
  - model_name: remote
    litellm_params: {{model: openai/stub, api_base: "{upstream}", api_key: unused}}
"""
TARGET = {
    "litellm": "{name}: {{kind: litellm, model: openai/stub, "
    'api_base: "{upstream}", api_key_env: BENCH_KEY{extra}}}',
    "openai": '{name}: {{kind: openai, model: stub, api_base: "{upstream}", api_key_env: BENCH_KEY{extra}}}',
}
SHADOW_COST = ", cost: {input_per_million: 1.0, output_per_million: 1.0}"
"""The explore candidate is priced, so that each shadow answer goes through the shared daily budget."""
CAPTURE = """\
capture:
  share: 1.0
"""
EXPLORE = """\
explore:
  share: 1.0
  targets: [shadow]
  budget_usd_per_day: 1000000
"""
T_975 = (12.71, 4.30, 3.18, 2.78, 2.57, 2.45, 2.36, 2.31, 2.26, 2.23)
"""Student's t, two-sided 95%, for 1 to 10 degrees of freedom (more rounds use the last)."""
EXPLORING = ("router pass-explore-redis", "router pass-capture-redis")
"""The sides compared with each other: exploring on, and off (capture alone)."""
PASS_POLICY = """\
name: bench-pass
targets:
  {target}
rules:
  - action: answer_with
    target: remote
"""
CACHED_POLICY = """\
name: bench-cached
scorer: {{method: head, model: smollm2-135m-instruct, adapter: "{adapter}"}}
targets:
  {target}
rules:
  - when: {{confidence_at_least: 0.0}}
    action: answer_with
    target: remote
  - action: answer_with
    target: remote
"""


@dataclass
class Side:
    name: str
    port: int
    model: str
    process: subprocess.Popen[bytes]
    log: Path
    one: Timings = field(default_factory=Timings)
    many: Timings = field(default_factory=Timings)
    stream: Timings = field(default_factory=Timings)
    cpu_s: float = 0.0
    log_lines: int = 0
    round_p50s: list[float] = field(default_factory=list)
    """Each round's p50 at 1 client, for the round-to-round noise."""
    api: str = "chat"
    """chat: POST /v1/chat/completions; responses: POST /v1/responses (a side named `*responses*`)."""

    def call(self, stream: bool = False) -> Call:
        if self.api == "responses":
            body: dict[str, object] = {"model": self.model, "input": QUESTION, "max_output_tokens": 32}
            path, expect = "/v1/responses", b"response.completed" if stream else b'"output"'
        else:
            body = {"model": self.model, "messages": QUESTION, "max_tokens": 32}
            path, expect = "/v1/chat/completions", b"[DONE]" if stream else b'"choices"'
        if stream:
            body["stream"] = True
        return Call("127.0.0.1", self.port, path, json.dumps(body).encode(), expect=expect)


def litellm_proxy() -> Path:
    """The LiteLLM proxy's executable, installed into its own virtual environment on first use."""
    executable, marker = PROXY_VENV / "bin" / "litellm", PROXY_VENV / "installed.txt"
    if executable.exists() and marker.exists() and marker.read_text() == LITELLM_PROXY:
        return executable
    print(f"installing {LITELLM_PROXY} into {PROXY_VENV} (once)", flush=True)
    subprocess.run(["python3", "-m", "venv", str(PROXY_VENV)], check=True)
    subprocess.run([str(PROXY_VENV / "bin" / "pip"), "install", "-q", LITELLM_PROXY], check=True)
    marker.write_text(LITELLM_PROXY)
    return executable


def pinned(core: int, command: list[str]) -> list[str]:
    return ["taskset", "-c", str(core), *command]


def process_tree(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        found.append(current)
        pending += children.get(current, [])
    return found


def cpu_seconds(pid: int) -> float:
    """User and system time of the process and its descendants."""
    total = 0
    for member in process_tree(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def wait_up(url: str, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{url} did not come up in {timeout_s} s")


class Fleet:
    """The upstream and every gateway, started in a folder of their own and stopped together."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.processes: list[subprocess.Popen[bytes]] = []
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        port = free_port()
        self.upstream = self._start("upstream", pinned(UPSTREAM_CORE, self._stub(port)), env)
        self.upstream_port = port
        self.upstream_url = f"http://127.0.0.1:{port}/v1"

    @staticmethod
    def _stub(port: int) -> list[str]:
        return [sys.executable, "-m", "bench.stub_upstream", "--port", str(port)]

    def _start(self, name: str, command: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = (self.folder / f"{name}.log").open("w")
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        self.processes.append(process)
        return process

    def litellm(self) -> Side:
        config = self.folder / "litellm.yaml"
        config.write_text(LITELLM_CONFIG.format(upstream=self.upstream_url))
        port = free_port()
        # Its cost map from the bundled copy: this machine cannot fetch the live one. Nothing of ours on its
        # path: it runs as installed.
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
        command = [str(litellm_proxy()), "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
        process = self._start("litellm-proxy", pinned(GATEWAY_CORE, [*command, "--telemetry", "False"]), env)
        return Side("LiteLLM proxy", port, "remote", process, self.folder / "litellm-proxy.log")

    def router(self, name: str, kind: str, instance: str | None = None) -> Side:
        """`name`: pass or cached, perhaps with -redis, or pass-capture-redis, pass-explore-redis; `instance`
        names its files (default: `name`)."""
        instance = instance or name
        policy = self.folder / f"{instance}.yaml"
        target = TARGET[kind].format(name="remote", upstream=self.upstream_url, extra="")
        if name.startswith("cached"):
            adapter = self.folder / "scorer"
            if not adapter.exists():  # a copy: a training run may rewrite the shipped folder meanwhile
                shutil.copytree(DEFAULT_POLICY_PATH.parent / "scorers" / "smollm2-head", adapter)
            policy.write_text(CACHED_POLICY.format(adapter=adapter, target=target))
        elif name.startswith(("pass-capture", "pass-explore")):
            shadow = TARGET[kind].format(name="shadow", upstream=self.upstream_url, extra=SHADOW_COST)
            # The same targets on both sides: only the explore: block differs.
            text = PASS_POLICY.format(target=f"{target}\n  {shadow}") + CAPTURE
            policy.write_text(text + (EXPLORE if name.startswith("pass-explore") else ""))
        else:
            policy.write_text(PASS_POLICY.format(target=target))
        port = free_port()
        command = [sys.executable, "-m", "router", "serve", "--policy", str(policy), "--port", str(port)]
        if name.endswith("-redis"):
            command += ["--redis-url", REDIS_URL]
        env = {**os.environ, "BENCH_KEY": "unused"}
        process = self._start(instance, pinned(GATEWAY_CORE, command), env)
        api = "responses" if "responses" in name else "chat"
        return Side(f"router {name}", port, "router", process, self.folder / f"{instance}.log", api=api)

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


@contextmanager
def fleet() -> Iterator[Fleet]:
    folder = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    started = Fleet(folder)
    try:
        yield started
    finally:
        started.stop()


def ms(seconds: float) -> str:
    return f"{1000 * seconds:.2f} ms"


def p50(values: list[float]) -> float:
    return statistics.median(values)


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[-1]


def ratio(ours: float, theirs: float) -> str:
    return f"{ours / theirs:.2f}x" if theirs else "n/a"


def measure(args: argparse.Namespace, sides: list[Side], direct: list[Side]) -> None:
    """`direct`: the upstream called directly, once per API the sides call."""
    for number in range(args.rounds):
        order = sides[number % len(sides) :] + sides[: number % len(sides)]
        for side in [*direct, *order]:
            one = asyncio.run(http_load.run(side.call(), 1, args.one))
            side.one.extend(one)
            side.round_p50s.append(p50(one.latency_s))
            side.stream.extend(asyncio.run(http_load.run(side.call(stream=True), 1, args.stream)))
            settle(side)
        for side in order:
            lines = _lines(side.log)
            before = cpu_seconds(side.process.pid)
            side.many.extend(asyncio.run(http_load.run(side.call(), args.clients, args.many)))
            settle(side)
            side.cpu_s += cpu_seconds(side.process.pid) - before
            side.log_lines += _lines(side.log) - lines
        print(f"round {number + 1}/{args.rounds} done", flush=True)


def settle(side: Side, quiet_s: float = 0.2, most_s: float = 30.0) -> None:
    """Wait until the side has done its own work off the request path (a shadow answer, a row written): it
    shares core 0 with the side measured next, and that work is its cost, not the next side's."""
    deadline = time.monotonic() + most_s
    used = cpu_seconds(side.process.pid)
    while time.monotonic() < deadline:
        time.sleep(quiet_s)
        now = cpu_seconds(side.process.pid)
        if now - used < 0.02 * quiet_s:  # idle but for its timers
            return
        used = now


def paired_p50s(on: Side, off: Side) -> str:
    """The p50 at 1 client, on less off, round by round: their mean and its 95% interval (Student's t over
    the rounds, so the drift between rounds, the larger noise here, is inside it)."""
    differences = [a - b for a, b in zip(on.round_p50s, off.round_p50s, strict=True)]
    mean = statistics.fmean(differences)
    if len(differences) < 2:
        return f"p50 on less off: {ms(mean)} (one round: no interval)"
    half = T_975[min(len(differences) - 1, len(T_975)) - 1] * statistics.stdev(differences)
    half /= len(differences) ** 0.5
    rounds = " ".join(f"{1000 * d:+.2f}" for d in differences)
    verdict = "within noise" if mean - half <= 0 <= mean + half else "beyond noise"
    return (
        f"p50 at 1 client, on less off, by round (ms): {rounds}; mean {1000 * mean:+.2f} ms, 95% interval "
        f"[{1000 * (mean - half):+.2f}, {1000 * (mean + half):+.2f}]: {verdict}"
    )


def explored(side: Side) -> str:
    """The side's router_explore_requests_total by outcome, from its /metrics."""
    text = httpx.get(f"http://127.0.0.1:{side.port}/metrics", timeout=10).text
    counts = {}
    for line in text.splitlines():
        if line.startswith("router_explore_requests_total{"):
            outcome = line.split('outcome="', 1)[1].split('"', 1)[0]
            counts[outcome] = int(float(line.rsplit(" ", 1)[1]))
    return ", ".join(f"{outcome} {count}" for outcome, count in sorted(counts.items()))


def _lines(path: Path) -> int:
    with path.open("rb") as log:
        return sum(1 for _ in log)


@dataclass(frozen=True)
class Figure:
    label: str
    ours: float
    theirs: float
    unit: str = "ms"
    goal: str = ""
    """`<= 0.5`, `< 1`, `>= 2`: the ratio ours / theirs the goal asks for; empty for none."""

    def shown(self, value: float) -> str:
        return {"ms": ms, "req/s": lambda v: f"{v:.0f} req/s", "": lambda v: f"{v:.2f}"}[self.unit](value)

    def alone(self) -> str:
        """Our figure without another side's."""
        return f"  {self.label:<36} {self.shown(self.ours):>12}"

    def line(self) -> str:
        value = self.shown
        ratio_ = self.ours / self.theirs if self.theirs else float("inf")
        verdict = f"  (goal {self.goal}x: {'met' if self.met else 'MISSED'})" if self.goal else ""
        return (
            f"  {self.label:<36} {value(self.ours):>12} vs {value(self.theirs):>12}  {ratio_:6.2f}x{verdict}"
        )

    @property
    def met(self) -> bool:
        if not self.goal:
            return True
        sign, bound = self.goal.split()
        value = self.ours / self.theirs if self.theirs else float("inf")
        return {"<=": value <= float(bound), "<": value < float(bound), ">=": value >= float(bound)}[sign]


def report(
    args: argparse.Namespace, litellm: Side | None, routers: list[Side], direct: list[Side]
) -> list[str]:
    """Prints every figure; returns the goals that were missed. Each side's added latency is against the
    upstream called directly on the same API (`direct`, one side per API)."""
    bases = {side.api: side for side in direct}
    for side in direct:
        print(
            f"\nupstream called directly ({side.api}): p50 {ms(p50(side.one.latency_s))}, p99 "
            f"{ms(p99(side.one.latency_s))}; first event of a stream p50 {ms(p50(side.stream.first_byte_s))}"
        )

    def figures(side: Side) -> list[float]:
        base = bases[side.api]
        return [
            p50(side.one.latency_s) - p50(base.one.latency_s),
            p99(side.one.latency_s) - p99(base.one.latency_s),
            p50(side.stream.first_byte_s) - p50(base.stream.first_byte_s),
            p99(side.many.latency_s),
            side.many.throughput,
            side.cpu_s / len(side.many.latency_s),
            side.log_lines / (len(side.many.latency_s) + side.many.untimed),
        ]

    many = f"at {args.clients} clients"
    labels = [
        ("added latency p50, 1 client", "ms", "<= 0.5"),
        ("added latency p99, 1 client", "ms", ""),
        ("stream: first event added, p50", "ms", "<= 0.5"),
        (f"p99 {many}", "ms", "< 1"),
        (f"throughput {many}", "req/s", ">= 2"),
        (f"CPU per request {many}", "ms", ""),
        ("log lines per request", "", ""),
    ]
    missed = []
    # The LiteLLM proxy is measured on chat: a Responses side is shown alone, and against the router's own
    # chat pass-through when that side ran too.
    alone = routers if litellm is None else [side for side in routers if side.api != "chat"]
    for side in alone:
        print(f"\n{side.name}:")
        for (label, unit, _), ours in zip(labels, figures(side), strict=True):
            print(Figure(label, ours, 0.0, unit).alone())
    if litellm is not None:
        theirs = figures(litellm)
        for side in [side for side in routers if side.api == "chat"]:
            print(f"\n{side.name} vs {litellm.name}:")
            for (label, unit, goal), ours, other in zip(labels, figures(side), theirs, strict=True):
                figure = Figure(label, ours, other, unit, goal)
                print(figure.line())
                if not figure.met:
                    missed.append(f"{side.name}: {label}")
    named = {side.name: side for side in routers}
    for side in alone:
        chat = named.get(side.name.replace("-responses", ""))
        if side.api == "responses" and chat is not None and chat.api == "chat":
            print(f"\n{side.name} vs {chat.name} (the Responses API passed through, against chat):")
            for (label, unit, _), ours, other in zip(labels, figures(side), figures(chat), strict=True):
                print(Figure(label, ours, other, unit).line())
    if all(name in named for name in EXPLORING):
        on, off = (named[name] for name in EXPLORING)
        print(f"\n{on.name} vs {off.name} (exploring every captured request, against capture alone):")
        for (label, unit, _), ours, other in zip(labels, figures(on), figures(off), strict=True):
            print(Figure(label, ours, other, unit).line())
        print(f"  shadow answers: {explored(on)}")
        print(f"  {paired_p50s(on, off)}")
    return missed


def memory(fleet: Fleet, side_name: str, kind: str, requests: int, clients: int) -> float:
    """RSS after `requests` over RSS after the first 5,000, for a fresh router."""
    side = fleet.router(side_name, kind, f"{side_name}-memory")
    wait_up(f"http://127.0.0.1:{side.port}/readyz")
    first = 5000
    asyncio.run(http_load.run(side.call(), clients, first))
    early = rss_mib(side.process.pid)
    done, step = first, 5000
    while done < requests:
        asyncio.run(http_load.run(side.call(), clients, min(step, requests - done)))
        done += min(step, requests - done)
        print(f"  {done} requests: RSS {rss_mib(side.process.pid):.1f} MiB", flush=True)
    late = rss_mib(side.process.pid)
    verdict = "met" if abs(late / early - 1) <= 0.05 else "MISSED"
    print(
        f"\nmemory, {side.name}: RSS after {first} requests {early:.1f} MiB, after {requests} "
        f"{late:.1f} MiB: {late / early:.3f}x (goal within 5%: {verdict})"
    )
    return late / early


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=6, help="0: the memory run alone")
    parser.add_argument("--kind", choices=sorted(TARGET), default="openai", help="the router's target kind")
    parser.add_argument("--sides", default="pass,pass-redis,cached,cached-redis")
    parser.add_argument("--one", type=int, default=300, help="requests per round at 1 client")
    parser.add_argument("--stream", type=int, default=200, help="streamed requests per round at 1 client")
    parser.add_argument("--many", type=int, default=2000, help="requests per round at --clients clients")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--memory-requests", type=int, default=50_000, help="0: no memory run")
    parser.add_argument("--memory-side", default="pass", help="the router the memory run starts")
    parser.add_argument(
        "--litellm",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="compare with the LiteLLM proxy",
    )
    args = parser.parse_args()
    os.sched_setaffinity(0, {UPSTREAM_CORE})
    names = [name for name in args.sides.split(",") if name]
    if any(name.endswith("-redis") for name in [*names, args.memory_side]):
        import redis

        redis.Redis.from_url(REDIS_URL).flushdb()
    missed: list[str] = []
    headline = ""
    with fleet() as started:
        print(f"logs in {started.folder}", flush=True)
        if args.rounds:
            missed, headline = compare(args, started, names)
        if args.memory_requests:
            growth = memory(started, args.memory_side, args.kind, args.memory_requests, args.clients)
            if abs(growth - 1) > 0.05:
                missed.append("memory growth")
    print(f"\ngoals missed: {', '.join(missed) if missed else 'none'}")
    if headline:
        print(headline)


def compare(args: argparse.Namespace, started: Fleet, names: list[str]) -> tuple[list[str], str]:
    """The interleaved rounds and their report: the goals missed, and the headline."""
    routers = [started.router(name, args.kind) for name in names]
    direct = [
        Side(
            "upstream",
            started.upstream_port,
            "stub",
            started.upstream,
            started.folder / "upstream.log",
            api=api,
        )
        for api in sorted({side.api for side in routers} | {"chat"})
    ]
    litellm = started.litellm() if args.litellm else None
    others = [litellm] if litellm is not None else []
    if litellm is not None:
        wait_up(f"http://127.0.0.1:{litellm.port}/health/liveliness")
    for side in routers:
        wait_up(f"http://127.0.0.1:{side.port}/readyz")
    for side in [*direct, *others, *routers]:  # warm-up: first calls, connection pools, caches
        asyncio.run(http_load.run(side.call(), 8, 400))
        asyncio.run(http_load.run(side.call(stream=True), 1, 20))
    measure(args, [*others, *routers], direct)
    missed = report(args, litellm, routers, direct)
    for side in [*others, *routers]:  # they stop: a memory run has core 0 alone
        side.process.terminate()
        side.process.wait(timeout=30)
    chats = [side for side in routers if side.api == "chat"]
    if litellm is None or not chats:
        return missed, ""
    first, chat = chats[0], direct[0]
    ours = p50(first.one.latency_s) - p50(chat.one.latency_s)
    theirs = p50(litellm.one.latency_s) - p50(chat.one.latency_s)
    headline = (
        f"headline: {first.name} adds {ms(ours)} at p50 against the LiteLLM proxy's {ms(theirs)}: "
        f"{ratio(ours, theirs)} (goal <= 0.5x); {first.many.throughput / litellm.many.throughput:.2f}x "
        f"its throughput at {args.clients} clients (goal >= 2x)"
    )
    return missed, headline


if __name__ == "__main__":
    main()
