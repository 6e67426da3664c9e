"""The serving layer: micro-batching, backpressure, the score cache in memory and in Redis, /v1/score."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from localmodel.model import LocalModel
from policies import Policy
from router.batcher import BatchLimits, MicroBatcher, Overloaded
from router.service import Router
from router.state import MemoryStore, RedisStore, StateStore
from scorers import RawScore, ScoreItem
from scorers.head import HeadScorer
from tests.conftest import Served, policy_from
from tests.tiny import make_head_scorer
from tests.tolerance import close

QUESTIONS = [
    f"Question number {i}: what is {i} + {i * 3}?" + " Please be brief." * (i % 4) for i in range(24)
]


def item(question: str) -> ScoreItem:
    return ScoreItem([{"role": "user", "content": question}])


@pytest.fixture(scope="module")
def head_folder(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_head_scorer(tiny_model, tmp_path_factory.mktemp("scorer"), layer=3)


@pytest.fixture(scope="module")
def head_policy(tiny_model: Path, head_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Policy:
    text = f"""\
scorer:
  method: head
  model: "{tiny_model}"
  adapter: "{head_folder}"
  batch: {{max_size: 8, max_wait_ms: 20}}
targets:
  local: {{kind: local, max_tokens: 8}}
rules:
  - when: {{confidence_below: 0.5}}
    action: refuse
  - action: answer_with
    target: local
"""
    return policy_from(text, tmp_path_factory.mktemp("policy"))


def test_concurrent_requests_share_batches_and_get_their_own_scores(
    tiny_model: Path, head_folder: Path
) -> None:
    scorer = HeadScorer(LocalModel(str(tiny_model)), head_folder)
    alone = {q: scorer.score_batch([item(q)])[0].raw[scorer.primary] for q in QUESTIONS}

    async def run() -> tuple[list[RawScore], list[int]]:
        async def score(batch: list[ScoreItem]) -> list[RawScore]:
            return await asyncio.to_thread(scorer.score_batch, batch)

        batcher = MicroBatcher(score, lambda i: len(i.messages[0]["content"]), BatchLimits(8, 20.0, 64))
        results = await asyncio.gather(*(batcher.submit(item(q)) for q in QUESTIONS))
        await batcher.close()
        return results, list(batcher.batch_sizes)

    results, sizes = asyncio.run(run())
    assert [r.raw[scorer.primary] for r in results] == pytest.approx(
        [alone[q] for q in QUESTIONS], rel=1e-4, abs=1e-6
    )
    assert sum(sizes) == len(QUESTIONS)
    assert max(sizes) > 1 and max(sizes) <= 8  # batched, within the limit


def test_length_aware_grouping_bounds_padding() -> None:
    async def run() -> list[list[int]]:
        seen: list[list[int]] = []

        async def record(batch: list[int]) -> list[int]:
            seen.append(batch)
            return batch

        batcher = MicroBatcher(
            record, lambda n: n, BatchLimits(max_size=16, max_wait_ms=50, max_length_ratio=2.0)
        )
        await asyncio.gather(*(batcher.submit(n) for n in [5, 100, 6, 180, 9, 11, 40]))
        await batcher.close()
        return seen

    assert asyncio.run(run()) == [[5, 6, 9], [11], [40], [100, 180]]


def test_a_full_queue_refuses_instead_of_growing() -> None:
    async def run() -> None:
        release = asyncio.Event()

        async def slow(batch: list[int]) -> list[int]:
            await release.wait()
            return batch

        batcher = MicroBatcher(slow, lambda n: n, BatchLimits(max_size=1, max_wait_ms=0, max_queue=2))
        first = asyncio.create_task(batcher.submit(1))
        await asyncio.sleep(0.01)  # the worker takes it: one in flight, the queue empty
        queued = [asyncio.create_task(batcher.submit(n)) for n in (2, 3)]
        await asyncio.sleep(0.01)
        with pytest.raises(Overloaded):
            await batcher.submit(4)
        release.set()
        assert await first == 1
        assert [await q for q in queued] == [2, 3]
        await batcher.close()

    asyncio.run(run())


def test_a_failing_batch_fails_its_callers_and_the_batcher_lives_on() -> None:
    async def run() -> None:
        async def picky(batch: list[int]) -> list[int]:
            if 13 in batch:
                raise ValueError("unlucky")
            return batch

        batcher = MicroBatcher(picky, lambda n: n, BatchLimits(max_size=1, max_wait_ms=0))
        with pytest.raises(ValueError, match="unlucky"):
            await batcher.submit(13)
        assert await batcher.submit(7) == 7
        await batcher.close()

    asyncio.run(run())


@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_cache_hit_returns_the_identical_score(
    tiny_model: Path, head_policy: Policy, redis_url: str, backend: str
) -> None:
    async def run() -> None:
        store: StateStore = RedisStore(redis_url) if backend == "redis" else MemoryStore()
        router = Router(head_policy, LocalModel(str(tiny_model)), store)
        messages = [{"role": "user", "content": f"Is the cache in {backend} exact?"}]
        first = await router.score(messages)
        again = await router.score([{"role": "user", "content": f"Is  the cache in {backend}   exact? "}])
        other = await router.score([{"role": "user", "content": "A different question."}])
        assert (first.cached, again.cached, other.cached) == (False, True, False)
        assert (again.raw, again.confidence) == (first.raw, first.confidence)
        await router.close()
        await store.close()

    asyncio.run(run())


def test_memory_and_redis_caches_agree(tiny_model: Path, head_policy: Policy, redis_url: str) -> None:
    async def scores(store: StateStore) -> list[tuple[object, ...]]:
        router = Router(head_policy, LocalModel(str(tiny_model)), store)
        out: list[tuple[object, ...]] = []
        for q in QUESTIONS[:3]:
            await router.score([{"role": "user", "content": q}])
            again = await router.score([{"role": "user", "content": q}])
            out.append((again.raw, again.confidence, again.draft))
        await router.close()
        await store.close()
        return out

    in_memory, in_redis = asyncio.run(scores(MemoryStore())), asyncio.run(scores(RedisStore(redis_url)))
    # Each router scored afresh before caching: the two agree within float noise (tests/tolerance.py).
    for (raw, confidence, draft), expected in zip(in_redis, in_memory, strict=True):
        assert (raw, confidence, draft) == (close(expected[0]), close(expected[1]), expected[2])


def test_score_endpoint_and_head_policy_over_http(
    serve: Callable[..., Served], head_policy: Policy, redis_url: str
) -> None:
    served = serve(head_policy, redis_url)
    first = httpx.post(f"{served.base_url}/v1/score", json={"question": "Where is Timbuktu?"}).json()
    again = httpx.post(
        f"{served.base_url}/v1/score", json={"messages": [{"role": "user", "content": "Where is Timbuktu?"}]}
    ).json()
    # Never from the cache: scored twice, the same within float noise (tests/tolerance.py).
    assert first["scorer"] == "head" and again["confidence"] == close(first["confidence"])
    assert "cached" not in first  # whether someone else asked this is not the caller's business
    assert 0 <= first["confidence"] <= 1 and first["latency_ms"] > 0

    chat = httpx.post(
        f"{served.base_url}/v1/chat/completions",
        json={"model": "router", "messages": [{"role": "user", "content": "Where is Timbuktu?"}]},
    )
    assert float(chat.headers["x-router-confidence"]) == pytest.approx(first["confidence"], abs=1e-4)
    expected = "refuse" if first["confidence"] < 0.5 else "answer"
    assert chat.headers["x-router-decision"] == expected


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({}, "give either messages or question"),
        (
            {"question": "a", "messages": [{"role": "user", "content": "b"}]},
            "give either messages or question",
        ),
        ({"question": ""}, "at least 1 character"),
        ({"question": "a", "extra": 1}, "Extra inputs"),
    ],
)
def test_score_endpoint_rejects_bad_bodies(
    serve: Callable[..., Served], head_policy: Policy, body: dict[str, object], says: str
) -> None:
    served = serve(head_policy)
    response = httpx.post(f"{served.base_url}/v1/score", json=body)
    assert response.status_code == 400
    assert says in response.json()["error"]["message"]


def test_overload_is_a_503_with_retry_after(serve: Callable[..., Served], tmp_path: Path) -> None:
    """The real model drafting (slow) behind a queue of one: a burst must be refused, not queued."""
    policy = policy_from(
        """\
scorer: {method: nprob, max_draft_tokens: 24, batch: {max_size: 1, max_queue: 1}}
targets:
  local: {kind: local}
rules:
  - action: answer_with
    target: local
""",
        tmp_path,
    )
    served = serve(policy)

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=served.base_url, timeout=120) as client:
            return await asyncio.gather(
                *(client.post("/v1/score", json={"question": f"Name {n} famous rivers."}) for n in range(12))
            )

    responses = asyncio.run(burst())
    refused = [r for r in responses if r.status_code == 503]
    assert refused, "nothing was refused"
    assert all(r.headers["retry-after"] == "1" and r.json()["error"]["type"] == "overloaded" for r in refused)
    assert all(r.status_code == 200 for r in responses if r not in refused)
    assert len(refused) < len(responses)
