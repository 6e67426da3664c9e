"""Local answers: throughput of batched generation, and time to a streamed answer's first token.

1. Throughput, in-process on SmolLM2-135M, greedy, 64 new tokens: 16 concurrent local answers through the
   router (router/local_batch.py: one batch, a step per job) against the same 16 answered one at a time
   the way the router wrote them before batching (transformers' generate in 16-token segments, the KV cache
   carried, one request after another). The answers must be the same text. Rounds alternate, best of each.
2. Time to first content chunk over real HTTP (`router serve`, one request at a time): a streamed local
   answer against a replay, where the whole answer is written and then sent as chunks (a hedge whose
   template has text after "{answer}" takes that path, so both run on the same server).
3. The built-in policy (`router serve` with no --policy: the head scorer, a hedge below 0.5), streamed: when
   the first content chunk arrives, as a share of the whole answer's time. The headline, last.

    python -m bench.local_generation [--rounds 2] [--ttft-rounds 5]

Run it on a quiet machine: on two cores another busy process slows torch's threads many times over.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import torch

from localmodel.model import LocalModel, Message
from policies import load_policy
from router.schemas import ChatCompletionRequest
from router.service import Router
from tests.conftest import free_port, wait_ready

MODEL = "smollm2-135m-instruct"
NEW_TOKENS = 64
CONCURRENT = 16
SEGMENT_TOKENS = 16
"""The old path's segment: 16 tokens per job on the model's worker."""
TOPICS = [
    "a lighthouse keeper",
    "the first train across a desert",
    "a cat that learned to read",
    "the history of bread",
    "how volcanoes form",
    "a city under the sea",
    "the life of a honeybee",
    "why the sky is blue",
    "a chess game between two robots",
    "the invention of the printing press",
    "a journey to the north pole",
    "how rain forms in clouds",
    "a garden on the moon",
    "the oldest tree in the world",
    "a violin maker in an old town",
    "how a bridge is built",
]
"""Asked as 'Tell me about ...', some with more words around them: prompts of different lengths."""

POLICY = f"""\
scorer: {{method: nprob, model: {MODEL}}}
limits: {{max_local_answers: {CONCURRENT}}}
targets:
  local: {{kind: local, max_tokens: {NEW_TOKENS}}}
  replayed: {{kind: local, max_tokens: {NEW_TOKENS}}}
rules:
  - when: {{model: replayed}}
    action: hedge
    target: replayed
    message: "{{answer}} (replayed)"
  - action: answer_with
    target: local
"""
"""No rule needs a score: the scorer never runs, only generation is measured."""


def questions() -> list[list[Message]]:
    asked = []
    for k, topic in enumerate(TOPICS):
        detail = " Please go into detail, with examples, and take your time." * (k % 4)
        asked.append([{"role": "user", "content": f"Tell me about {topic}.{detail}"}])
    return asked


@torch.inference_mode()
def old_segment(model: LocalModel, ids: torch.Tensor, cache: Any, tokens: int) -> tuple[torch.Tensor, Any]:
    """Up to `tokens` more greedy tokens, the cache carried: one job of the router before batching."""
    with model.adapter(None) as base:
        out = base.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            cache=cache,
            max_new_tokens=tokens,
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            return_dict_in_generate=True,
            pad_token_id=model.tokenizer.pad_token_id,
        )
    return out.sequences, out.cache


async def old_answer(router: Router, messages: list[Message]) -> str:
    """An answer as the router wrote it before batching: SEGMENT_TOKENS at a time, each segment a job on
    the model's worker (torch work from another thread would slow both: each thread has its own pool)."""
    model = router.model
    ids = model.encode([model.prompt_text(messages)])["input_ids"]
    prompt, cache = ids.shape[1], None
    while ids.shape[1] - prompt < NEW_TOKENS:
        left = min(SEGMENT_TOKENS, NEW_TOKENS - (ids.shape[1] - prompt))
        before = ids.shape[1]
        ids, cache = await router.worker.run(old_segment, model, ids, cache, left)
        if any(token in model.stop_ids for token in ids[0, before:].tolist()):
            break
    written = ids[0, prompt:].tolist()
    return model.draft_of(written, [0.0] * len(written), prompt).text


def request(messages: list[Message], model: str = "local", **fields: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": model, "messages": messages, "max_tokens": NEW_TOKENS, **fields}
    )


async def throughput(router: Router, rounds: int) -> None:
    asked = questions()
    await old_answer(router, asked[0])  # warm-up, both ways
    await router.route(request(asked[0]))
    old_texts: list[str] = []
    new_texts: list[str] = []
    sample = router.metrics.registry.get_sample_value
    rows_before = (sample("router_local_batch_rows_sum") or 0, sample("router_local_batch_rows_count") or 0)
    best_old = best_new = float("inf")
    tokens = 0
    for _ in range(rounds):
        started = time.perf_counter()
        old_texts = [await old_answer(router, m) for m in asked]
        best_old = min(best_old, time.perf_counter() - started)
        started = time.perf_counter()
        routed = await asyncio.gather(*[router.route(request(m)) for m in asked])
        best_new = min(best_new, time.perf_counter() - started)
        bodies = [r.body for r in routed if r.body is not None]
        tokens = sum(body["usage"]["completion_tokens"] for body in bodies)
        new_texts = [body["choices"][0]["message"]["content"] for body in bodies]
    rows = (sample("router_local_batch_rows_sum") or 0) - rows_before[0]
    per_job = rows / ((sample("router_local_batch_rows_count") or 0) - rows_before[1])
    started = time.perf_counter()
    for m in asked:  # the new path one at a time: a batch of one row
        await router.route(request(m))
    alone = time.perf_counter() - started
    same = sum(a == b for a, b in zip(old_texts, new_texts, strict=True))
    print(
        f"answers: {len(asked)} x up to {NEW_TOKENS} tokens, {tokens} written; {same} the same text both ways"
    )
    print(f"old path, one at a time ({SEGMENT_TOKENS}-token segments): {tokens / best_old:.1f} tokens/s")
    print(f"new path, one at a time (a batch of one row): {tokens / alone:.1f} tokens/s")
    print(f"new path, {CONCURRENT} concurrent ({per_job:.1f} rows per job): {tokens / best_new:.1f} tokens/s")
    print(
        f"throughput at {CONCURRENT} concurrent local answers: {best_old / best_new:.2f}x one at a time "
        "(the old path)"
    )


def streamed_answer(client: httpx.Client, model: str, messages: list[Message]) -> tuple[float, float, str]:
    """Seconds to the first content chunk and to the stream's end, and the decision."""
    body = {"model": model, "messages": messages, "max_tokens": NEW_TOKENS, "stream": True}
    started = time.perf_counter()
    first = None
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            data = line.removeprefix("data: ")
            said = first is None and line.startswith("data: ") and data != "[DONE]"
            if said and json.loads(data)["choices"][0]["delta"].get("content"):
                first = time.perf_counter() - started
        decision = response.headers["x-router-decision"]
    assert first is not None
    return first, time.perf_counter() - started, decision


def first_content(client: httpx.Client, model: str, messages: list[Message]) -> float:
    return streamed_answer(client, model, messages)[0]


@contextmanager
def served(policy_path: Path | None) -> Iterator[httpx.Client]:
    port = free_port()
    command = [sys.executable, "-m", "router", "serve", "--port", str(port), "--log-level", "warning"]
    server = subprocess.Popen(command + (["--policy", str(policy_path)] if policy_path else []))
    try:
        wait_ready(f"http://127.0.0.1:{port}")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=600) as client:
            yield client
    finally:
        server.terminate()
        server.wait()


def built_in_policy(rounds: int) -> None:
    """Each question once per round, streamed through the built-in policy: first content chunk against the
    whole answer's time (a share of it, the median over questions and rounds)."""
    shares, decisions = [], []
    with served(None) as client:
        streamed_answer(client, "router", questions()[0])  # warm-up
        for _ in range(rounds):
            for messages in questions()[:4]:
                first, whole, decision = streamed_answer(client, "router", messages)
                shares.append(first / whole)
                decisions.append(decision)
    hedged = decisions.count("hedge")
    print(
        f"built-in policy, streamed ({hedged} of {len(decisions)} hedged, {NEW_TOKENS} tokens at most): "
        f"first content chunk at {statistics.median(shares):.3f}x the answer's time "
        f"(worst {max(shares):.3f}x)"
    )


def time_to_first_token(policy_path: Path, rounds: int) -> float:
    with served(policy_path) as client:
        asked = questions()[0]
        first_content(client, "local", asked)  # warm-up
        streamed, replayed = [], []
        for _ in range(rounds):
            streamed.append(first_content(client, "local", asked))
            replayed.append(first_content(client, "replayed", asked))
    live, old = statistics.median(streamed), statistics.median(replayed)
    print(f"time to first content chunk, {NEW_TOKENS}-token answer over HTTP, median of {rounds}:")
    print(
        f"  streamed as written {live * 1000:.0f} ms, replayed once written {old * 1000:.0f} ms: "
        f"{live / old:.3f}x"
    )
    return old / live


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--ttft-rounds", type=int, default=5)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "policy.yaml"
        path.write_text(POLICY)
        policy = load_policy(path)
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
        time_to_first_token(path, options.ttft_rounds)

        async def run() -> None:
            router = Router(policy, LocalModel(MODEL))
            await throughput(router, options.rounds)
            await router.close()

        asyncio.run(run())
    built_in_policy(options.ttft_rounds)


if __name__ == "__main__":
    main()
