"""Where the drift monitor's reference comes from: the scorer's scorer.json, or a window pinned once in the
shared store for every replica."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import calibrators
from localmodel.model import LocalModel
from policies import Decision
from policies.schema import DriftSpec, MonitoringSpec
from router.drift import DriftMonitor
from router.feedback import DecisionLog
from router.state import MemoryStore, RedisStore, StateStore
from scorers.head import HeadScorer

DECISION = Decision("answer_with", "local", "test", 0.5, None, 0)
SPEC = DriftSpec(reference_size=100, window=50)


def monitor(store: StateStore, spec: DriftSpec = SPEC, reference: list[float] | None = None) -> DriftMonitor:
    log = DecisionLog(store, MonitoringSpec(drift=spec), "scorer-v1", retained=2000)
    return DriftMonitor(store, log, spec, reference)


async def record(monitor: DriftMonitor, scores: np.ndarray) -> None:
    for i, raw in enumerate(scores):
        await monitor.log.record(f"{i:032x}", DECISION, float(raw))


def test_the_reference_comes_from_scorer_json(tiny_model: Path, tiny_head: Path, tmp_path: Path) -> None:
    folder = Path(shutil.copytree(tiny_head, tmp_path / "scorer"))
    card = json.loads((folder / "scorer.json").read_text())
    reference = [round(float(x), 6) for x in np.random.default_rng(0).beta(2, 5, 300)]
    (folder / "scorer.json").write_text(json.dumps({**card, "reference_scores": reference}))
    scorer = HeadScorer(LocalModel(str(tiny_model)), folder)
    assert scorer.reference_scores == reference

    async def run() -> None:

        live = np.random.default_rng(1).beta(5, 2, 50)
        drift = monitor(MemoryStore(), DriftSpec(reference="scorer", window=50), scorer.reference_scores)
        await record(drift, live)
        report = await drift.check()
        assert report.reference == 300 and report.window == 50
        assert report.psi == pytest.approx(calibrators.psi(reference, live))
        assert report.alarm  # beta(5, 2) is nothing like beta(2, 5)

    asyncio.run(run())


def test_reference_scorer_needs_scores_in_scorer_json() -> None:
    with pytest.raises(ValueError, match=r"scorer\.json has no reference_scores"):
        monitor(MemoryStore(), DriftSpec(reference="scorer"), None)


def test_replicas_pin_one_reference_and_agree(fresh_redis: str) -> None:
    async def run() -> None:
        a_store, b_store = RedisStore(fresh_redis), RedisStore(fresh_redis)
        a, b = monitor(a_store), monitor(b_store)
        rng = np.random.default_rng(2)
        await record(a, rng.random(99))
        assert (await b.check()).reference == 0  # one short of reference_size: nothing pinned yet
        await record(a, rng.random(1))
        first, second = await b.check(), await a.check()
        assert first == second and first.reference == 100 and not first.alarm
        await record(b, rng.random(200) ** 4)  # either replica's traffic moves the shared window
        assert (await a.check()).alarm and (await b.check()).reference == 100  # the pin stays
        await a_store.close()
        await b_store.close()

    asyncio.run(run())
