"""The drift alarm on real scores, replayed one request at a time through the drift monitor.

tests/data/drift_scores.json holds raw nprob scores of the real SmolLM2-135M-Instruct (drafts of at most 64
tokens) for TriviaQA, GSM8K and TruthfulQA questions, computed once by `python -m bench.drift_scores`
(about an hour on two CPU cores, so the suite replays them rather than scoring). The first 500 trivia
scores are the pinned reference; the other trivia rows are held-out stationary traffic.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from policies import Decision
from policies.schema import DriftSpec, MonitoringSpec
from router.drift import DriftMonitor
from router.feedback import DecisionLog
from router.state import MemoryStore

SCORES = json.loads((Path(__file__).parent / "data" / "drift_scores.json").read_text())
SPEC = DriftSpec(reference="pinned")
DECISION = Decision("answer_with", "local", "replay", 0.5, None, 0)


def scores(name: str) -> list[float]:
    return [raw for _, raw in SCORES[name]]


REFERENCE = scores("trivia")[: SCORES["reference_rows"]]
HELD_OUT = scores("trivia")[SCORES["reference_rows"] :]


def replay(stream: list[float]) -> list[bool]:
    """The alarm after each request, the reference pinned from the first `reference_size` requests."""

    async def run() -> list[bool]:
        store = MemoryStore()
        log = DecisionLog(store, MonitoringSpec(drift=SPEC), "replay", retained=2000)
        monitor = DriftMonitor(store, log, SPEC, scorer_reference=None)
        alarms = []
        for i, raw in enumerate(stream):
            await log.record(f"{i:032x}", DECISION, raw)
            alarms.append((await monitor.check()).alarm)
        return alarms

    return asyncio.run(run())


def test_stationary_trivia_raises_no_alarm_in_99_percent_of_windows() -> None:
    assert SPEC.reference_size == len(REFERENCE)
    alarms = replay(REFERENCE + HELD_OUT)
    # Windows made of held-out traffic only: from the request that fills the window after the reference on.
    windows = alarms[len(REFERENCE) + SPEC.window - 1 :]
    false_alarms = sum(windows)
    print(f"\nstationary: {false_alarms} alarms in {len(windows)} sliding windows of {SPEC.window} requests")
    assert len(windows) >= 1000
    assert false_alarms / len(windows) <= 0.01


@pytest.mark.parametrize(("switched_to", "holding"), [("gsm8k", 1.0), ("truthfulqa", 0.5)])
def test_switching_the_traffic_raises_the_alarm_within_200_requests(switched_to: str, holding: float) -> None:
    """`holding`: the least share of windows made of switched traffic only that must be in alarm. GSM8K's
    scores are far from trivia's; TruthfulQA's are close (PSI 0.20, KS at its critical value over a full
    window), so there the alarm comes and goes, and the alert rule looks at its share over 15 minutes."""
    # The state at the switch depends only on the reference and the last `window` requests before it.
    before = HELD_OUT[-SPEC.window :]
    alarms = replay(REFERENCE + before + scores(switched_to))
    assert not any(alarms[: len(REFERENCE) + len(before)])
    after = alarms[len(REFERENCE) + len(before) :]
    delay = after.index(True) + 1 if any(after) else None
    switched = after[SPEC.window - 1 :]
    share = sum(switched) / len(switched)
    print(
        f"\n{switched_to}: alarm after {delay} requests; in alarm in {share:.0%} of {len(switched)} windows"
    )
    assert delay is not None and delay <= 200
    assert share >= holding
