"""The decision log and feedback, kept in the state store so that every replica sees the same windows.

- `decision:<request id>`: what was decided, for `monitoring.decision_ttl_s`; feedback joins with it. Kept
  only for requests whose client asks (`x-router-feedback: keep`) and a sampled share of the others
  (`monitoring.decisions.sample`), so that what the log holds is bounded by the policy, not by traffic.
- `decisions:<tenant>`: the tenant's index of its kept decisions, the newest
  `monitoring.decisions.per_tenant`; a decision pushed out of it is deleted with its feedback marker, so
  one tenant's decisions never push out another's.
- `feedback:<request id>`: the feedback given, for as long as its decision; it makes a repeated POST a no-op.
- `window:feedback`: joined (confidence, raw score, label) records, the newest `feedback_retained`.
- `window:traffic:<scorer>`: each decision's outcome and raw score, the newest `traffic_retained`, per
  scorer version (raw scores of two scorers are not comparable): drift, the escalation ratio and the
  budget-targeted threshold read it. Every request enters it, kept or not.

With Redis unreachable and this replica's replay buffer full (router/state/resilient.py), the decision
log drops its writes rather than the client's answer (the answer then says its decision was not kept), and
feedback raises StoreUnavailable (a 503), so that no feedback is acknowledged that could be lost.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import random
from dataclasses import asdict, dataclass

import numpy as np

import calibrators
from policies import Decision
from policies.schema import MonitoringSpec
from router.state import StateStore, StoreUnavailable

FEEDBACK_WINDOW = "window:feedback"
TRAFFIC_RETAINED = 2000
MIN_CALIBRATION_SAMPLES = 10
"""Fewer feedback records than this give NaN rather than a number that means little."""


class UnknownRequest(LookupError):
    """No decision is logged under this id: it was not kept, newer ones of its tenant replaced it, it is
    older than the decision TTL, or it never existed."""


class ConflictingFeedback(ValueError):
    """Feedback for this id was already given with a different value."""


@dataclass(frozen=True)
class Judged:
    """The score feedback on an answer is joined with: the answering model's, as the scorer predicted it."""

    predicted: str
    """The scorer target (a model name)."""
    raw: float
    confidence: float


@dataclass(frozen=True)
class LoggedDecision:
    outcome: str
    target: str | None
    rule: str
    confidence: float | None
    raw: float | None
    scorer: str
    predicted: str | None = None
    tenant: str | None = None
    """The key that made the request (with `auth: required`): the only one whose feedback it takes."""


@dataclass(frozen=True)
class FeedbackRecord:
    confidence: float
    raw: float
    label: float
    """1.0 correct, 0.0 incorrect, or a graded 0..1 score."""
    scorer: str
    predicted: str | None = None
    """The scorer target the confidence is for (None: records from before scorers predicted several)."""

    @property
    def correct(self) -> bool:
        """Calibration metrics and fitting need a binary outcome: a graded score counts from 0.5."""
        return self.label >= 0.5


@dataclass(frozen=True)
class CalibrationStats:
    samples: int
    ece: float
    brier: float
    auroc: float


def calibration_stats(records: list[FeedbackRecord]) -> CalibrationStats:
    if len(records) < MIN_CALIBRATION_SAMPLES:
        return CalibrationStats(len(records), math.nan, math.nan, math.nan)
    confidence = np.array([r.confidence for r in records])
    correct = np.array([r.correct for r in records], dtype=np.float64)
    both = 0 < correct.sum() < len(correct)
    return CalibrationStats(
        len(records),
        calibrators.ece(confidence, correct),
        calibrators.brier_score(confidence, correct),
        calibrators.auroc(confidence, correct) if both else math.nan,
    )


async def read_feedback(store: StateStore, count: int) -> list[FeedbackRecord]:
    """The newest `count` joined feedback records, oldest first."""
    return [FeedbackRecord(**json.loads(e)) for e in await store.recent(FEEDBACK_WINDOW, count)]


def scorer_key(version: str) -> str:
    return hashlib.sha256(version.encode()).hexdigest()[:16]


def decisions_index(tenant: str | None) -> str:
    """The tenant's index of kept decisions; `-` (which no key name starts with) for requests without auth."""
    return f"decisions:{tenant or '-'}"


class DecisionLog:
    def __init__(self, store: StateStore, spec: MonitoringSpec, scorer_version: str, retained: int) -> None:
        self.store, self.spec, self.scorer_version = store, spec, scorer_version
        self.traffic_key = f"window:traffic:{scorer_key(scorer_version)}"
        self.traffic_retained = retained

    async def record(
        self,
        request_id: str,
        decision: Decision,
        traffic_raw: float | None,
        judged: Judged | None = None,
        tenant: str | None = None,
        *,
        asked: bool = False,
    ) -> bool:
        """`traffic_raw`: the primary target's raw score, for the traffic window; `judged`: the score that
        feedback on this answer joins with (None: feedback is accepted but joins with nothing); `asked`: the
        client asked to give feedback, so the decision is kept whatever the sample.

        Whether the decision is kept for feedback. Never fails for the store's sake: the answer is already
        made, and the client gets it."""
        kept = asked or random.random() < self.spec.decisions.sample
        if kept:
            logged = LoggedDecision(
                decision.outcome,
                decision.target,
                decision.rule,
                None if judged is None else judged.confidence,
                None if judged is None else judged.raw,
                self.scorer_version,
                None if judged is None else judged.predicted,
                tenant,
            )
            try:
                await self.store.set_indexed(
                    f"decision:{request_id}",
                    json.dumps(asdict(logged)),
                    self.spec.decision_ttl_s,
                    decisions_index(tenant),
                    self.spec.decisions.per_tenant,
                    owns=(f"feedback:{request_id}",),
                )
            except StoreUnavailable:  # kept locally; the store logged that it dropped it
                kept = False
        entry = f"{decision.outcome} {'-' if traffic_raw is None else repr(traffic_raw)}"
        with contextlib.suppress(StoreUnavailable):
            await self.store.push(self.traffic_key, entry, self.traffic_retained)
        return kept

    async def feedback(
        self, request_id: str, label: float, tenant: str | None = None, *, any_tenant: bool = True
    ) -> bool:
        """Join feedback with its decision; False when the same feedback was already recorded.

        Unless `any_tenant` (no auth, or the admin key), only the tenant that made the request may give
        it; to anyone else the request is unknown, so that ids cannot be probed.
        StoreUnavailable when the store could not keep it: nothing is written then, so a retry is safe."""
        found = await self.store.get(f"decision:{request_id}")
        if found is None:
            raise UnknownRequest(request_id)
        logged = LoggedDecision(**json.loads(found))
        if not any_tenant and logged.tenant != tenant:
            raise UnknownRequest(request_id)
        record = None
        if logged.confidence is not None and logged.raw is not None:
            record = FeedbackRecord(logged.confidence, logged.raw, label, logged.scorer, logged.predicted)
        # The marker and the record are kept together or not at all: a marker without its record would
        # make the client's retry a "duplicate" of feedback that was never kept.
        self.store.check_writable(1 if record is None else 2)
        key = f"feedback:{request_id}"
        if not await self.store.set_if_absent(key, repr(label), self.spec.decision_ttl_s):
            earlier = await self.store.get(key)
            if earlier is not None and float(earlier) != label:
                raise ConflictingFeedback(f"feedback for this request was already given as {earlier}")
            return False
        if record is not None:
            await self.store.push(FEEDBACK_WINDOW, json.dumps(asdict(record)), self.spec.feedback_retained)
        return True

    async def feedback_window(self, count: int) -> list[FeedbackRecord]:
        return await read_feedback(self.store, count)

    async def traffic(self) -> list[tuple[str, float | None]]:
        """The retained (outcome, raw score or None) of recent decisions, oldest first."""
        entries = [e.split(" ", 1) for e in await self.store.recent(self.traffic_key, self.traffic_retained)]
        return [(outcome, None if raw == "-" else float(raw)) for outcome, raw in entries]

    async def recent_scores(self, count: int) -> list[float]:
        scores = [raw for _, raw in await self.traffic() if raw is not None]
        return scores[-count:]
