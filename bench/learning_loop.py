"""The learning loop end to end, on real parts, each step timed: a router that knows only its local model
learns a second model from its own traffic.

1. Serve: Gemma-3-270M behind a `router serve` of its own; the router under test answers with SmolLM2-135M
   in process, scoring with a scorer that predicts SmolLM2 only, capturing every request and asking Gemma
   for a shadow answer to each (capture and explore at share 1.0, its own Redis database).
2. Traffic: `--questions` short-answer questions of the shared QA sets sent as a client would (the bare
   question), from the training split of the scorer's rule, so that no question judged in step 6 was sent.
3. `router traffic export`, then `router build-dataset --from-traffic --gold` once per model (alias grader).
4. `router add-target`: a Gemma head on the SmolLM2-only scorer, from Gemma's traffic labels.
5. `router eval-routing --candidate`: the learnt scorer against the shipped one (trained on gold labels of
   both models) on the held-out questions both models labelled (APGR, paired bootstrap).
6. Promotion: the candidate copied over the serving folder, `POST /admin/reload`; the next request carries
   the new scorer's version and a Gemma confidence.

    git archive 154aabd policies/scorers/smollm2-head | tar -x -C /tmp/start
    python -m bench.learning_loop --start /tmp/start/policies/scorers/smollm2-head --work /tmp/loop
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from train.data import load_records, shared_data_dir
from train.splits import split_of

ROOT = Path(__file__).parents[1]
SETS = ["triviaqa/triviaqa_sm_sub.jsonl", "nq_open/NQ-open.dev.jsonl", "wikidata/bigbench_qa_wikidata.jsonl"]
LABELS = ROOT / "train" / "labels"
SMOLLM2, GEMMA = "smollm2-135m-instruct", "gemma-3-270m"
ADMIN = "loop-admin"
TIMES: dict[str, float] = {}


@contextmanager
def step(name: str) -> Iterator[None]:
    begun = time.perf_counter()
    yield
    TIMES[name] = time.perf_counter() - begun
    print(f"{name}: {TIMES[name]:.0f} s", flush=True)


def policy(work: Path, gemma_port: int) -> Path:
    path = work / "policy.yaml"
    path.write_text(
        f"""version: 1
name: learning-loop
scorer: {{method: head, adapter: {work / "scorer"}, targets: {{{SMOLLM2}: {SMOLLM2}}}}}
targets:
  {SMOLLM2}: {{kind: local, max_tokens: 64}}
  {GEMMA}: {{kind: openai, model: gemma, api_base: "http://127.0.0.1:{gemma_port}/v1", timeout_s: 600,
    cost: {{input_per_million: 0.02, output_per_million: 0.04}}}}
capture: {{share: 1.0, max_rows: 100000}}
explore: {{share: 1.0, targets: [{GEMMA}], budget_usd_per_day: 10, concurrency: 1, queue: 100000}}
rules:
  - action: answer_with
    target: {SMOLLM2}
"""
    )
    return path


def serve(
    args: list[str | Path], port: int, log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, "-m", "router", "serve", *map(str, args), "--port", str(port)],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
    )
    for _ in range(600):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        if process.poll() is not None:
            sys.exit(f"the server on port {port} stopped: see {log}")
        time.sleep(1)
    sys.exit(f"the server on port {port} did not start: see {log}")


def questions(count: int, seed: int) -> list[str]:
    data = shared_data_dir()
    records = [r for name in SETS for r in load_records(data / name) if split_of(r.id, seed) == "train"]
    random.Random(seed).shuffle(records)
    return [r.question for r in records[:count]]


async def send(url: str, asked: list[str], clients: int) -> list[dict[str, str]]:
    queue = list(asked)
    headers: list[dict[str, str]] = []

    async def client(http: httpx.AsyncClient) -> None:
        while queue:
            question = queue.pop()
            body = {"model": "router", "messages": [{"role": "user", "content": question}]}
            reply = await http.post(f"{url}/v1/chat/completions", json=body)
            reply.raise_for_status()
            headers.append(dict(reply.headers))

    async with httpx.AsyncClient(timeout=600) as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))
    return headers


def explored(url: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("router_explore_requests_total{")
    )


def router(*args: str | Path, check: bool = True) -> int:
    return subprocess.run([sys.executable, "-m", "router", *map(str, args)], check=check).returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--start", type=Path, required=True, help="A scorer folder predicting SmolLM2 only.")
    parser.add_argument("--shipped", type=Path, default=ROOT / "policies" / "scorers" / "smollm2-head")
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--questions", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/7")
    parser.add_argument("--ports", default="8010,8011")
    args = parser.parse_args()
    work, (port, gemma_port) = args.work, map(int, args.ports.split(","))
    work.mkdir(parents=True, exist_ok=True)
    shutil.copytree(args.start, work / "scorer", dirs_exist_ok=True)
    url, env = f"http://127.0.0.1:{port}", {"ROUTER_REDIS_URL": args.redis_url, "ROUTER_ADMIN_KEY": ADMIN}
    router("traffic", "purge", "--redis-url", args.redis_url)
    with step("1. serve both models"):
        gemma = serve(["--policy", ROOT / "policies/examples/gemma.yaml"], gemma_port, work / "gemma.log")
        ours = serve(
            ["--policy", policy(work, gemma_port), "--redis-url", args.redis_url],
            port,
            work / "router.log",
            env,
        )
    try:
        asked = questions(args.questions, 0)
        with step(f"2. {len(asked)} questions answered"):
            asyncio.run(send(url, asked, args.clients))
        with step("2b. shadow answers finished"):
            while explored(url) < len(asked):
                time.sleep(5)
        rows, gold = work / "rows.jsonl", [shared_data_dir() / name for name in SETS]
        with step("3. export and label"):
            router(
                "traffic",
                "export",
                "--policy",
                work / "policy.yaml",
                "--out",
                rows,
                "--redis-url",
                args.redis_url,
            )
            for model in (SMOLLM2, GEMMA):
                gold_args = [a for g in gold for a in ("--gold", g)]
                router(
                    "build-dataset",
                    "--from-traffic",
                    "--data",
                    rows,
                    "--answer-of",
                    model,
                    *gold_args,
                    "--out",
                    work / f"{model}.jsonl",
                )
        with step("4. add-target"):
            router(
                "add-target",
                "--scorer",
                args.start,
                "--labels",
                work / f"{GEMMA}.jsonl",
                "--out",
                work / "candidate",
                "--states-cache",
                work / "states.npz",
            )
        with step("5. eval-routing --candidate"):
            verdict = router(
                "eval-routing",
                "--scorer",
                args.shipped,
                "--candidate",
                work / "candidate",
                "--labels",
                LABELS / f"{SMOLLM2}.jsonl",
                "--labels",
                LABELS / f"{SMOLLM2}-efficientqa.jsonl",
                "--labels",
                LABELS / f"{GEMMA}.jsonl",
                "--out",
                work / "routing",
                check=False,
            )
        with step("6. promote and reload"):
            shutil.rmtree(work / "scorer")
            shutil.copytree(work / "candidate", work / "scorer")
            (work / "policy.yaml").write_text(
                (work / "policy.yaml")
                .read_text()
                .replace(f"{{{SMOLLM2}: {SMOLLM2}}}", f"{{{SMOLLM2}: {SMOLLM2}, {GEMMA}: {GEMMA}}}")
            )
            reloaded = httpx.post(
                f"{url}/admin/reload", headers={"authorization": f"Bearer {ADMIN}"}, timeout=120
            )
            after = asyncio.run(send(url, ["What is the capital of Peru?"], 1))[0]
        print(f"reload: {reloaded.json()}")
        print(
            f"next request: x-router-scorer {after.get('x-router-scorer')}, "
            f"x-router-confidences {after.get('x-router-confidences')}"
        )
        compared = json.loads((work / "routing" / "metrics.json").read_text())
        for key in ("n", "scorers", "differences", "verdict", "reasons"):
            print(f"{key}: {json.dumps(compared[key])}")
        print("times: " + ", ".join(f"{k} {v:.0f} s" for k, v in TIMES.items()))
        gap = compared["differences"].get("apgr") or {}
        print(
            f"learnt from traffic - shipped APGR {gap.get('value')} [{gap.get('low')}, {gap.get('high')}], "
            f"eval-routing --candidate exit {verdict}"
        )
    finally:
        for process in (ours, gemma):
            process.terminate()
            process.wait(30)


if __name__ == "__main__":
    main()
