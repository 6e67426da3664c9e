"""Recording: what a routed request leaves behind. Its decision in the log that feedback joins later (when
its client asks for that, or the policy's sample picks it: router/feedback.py), the decision and latency
metrics, and the gauges computed from the shared windows (rolling calibration, drift, the escalation ratio
and the budget's threshold)."""

from __future__ import annotations

import dataclasses
import logging
import math
import time

from policies import Decision, Policy
from router.budget import WINDOW, EscalationBudget
from router.drift import DriftMonitor
from router.feedback import TRAFFIC_RETAINED, DecisionLog, Judged, calibration_stats
from router.metrics import CALIBRATION_WINDOWS, Metrics
from router.stages.scoring import Scored, Scoring
from router.stages.shaping import Routed
from router.state import StateStore

log = logging.getLogger("router")


class Recording:
    def __init__(self, policy: Policy, store: StateStore, metrics: Metrics, scoring: Scoring) -> None:
        drift = policy.monitoring.drift
        retained = max(TRAFFIC_RETAINED, drift.reference_size, drift.window)
        scorer = scoring.scorer
        self.log = DecisionLog(store, policy.monitoring, scorer.version, retained)
        self.drift = DriftMonitor(store, self.log, drift, scorer.reference_scores)
        self.budget = EscalationBudget(policy, self.log, scoring.calibrate)
        self.metrics, self.predicts, self.primary = metrics, scoring.predicts, scorer.primary
        self.scorer_tag = scoring.tag

    async def record(
        self,
        routed: Routed,
        scored: Scored | None,
        tenant: str | None,
        started: float,
        *,
        asked: bool = False,
    ) -> Routed:
        """`started`: when the target was first asked (perf_counter); `asked`: the client asked to give
        feedback (x-router-feedback: keep). `routed`, saying whether its decision was kept. If recording
        fails or is cancelled (the client left), an opened stream is closed: it must not linger."""
        decision, family = routed.decision, scored.family if scored else None
        try:
            if decision.target is not None:
                elapsed = time.perf_counter() - started
                self.metrics.upstream_seconds.labels(decision.target).observe(elapsed)
            self.metrics.decided(decision, family)
            kept = await self._logged(routed.request_id, decision, scored, tenant, asked)
        except BaseException:
            if routed.chunks is not None:
                await routed.chunks.aclose()
            raise
        # DEBUG: over HTTP the request's one INFO line (router/asgi.py) says the same from its headers.
        log.debug(
            "request=%s rule=%s decision=%s target=%s confidence=%s",
            routed.request_id,
            decision.rule,
            decision.action,
            decision.target,
            "-" if decision.confidence is None else f"{decision.confidence:.3f}",
        )
        return dataclasses.replace(routed, decision_kept=kept, task=family, scorer=self.scorer_tag)

    async def _logged(
        self, request_id: str, decision: Decision, scored: Scored | None, tenant: str | None, asked: bool
    ) -> bool:
        """Feedback joins with the answering target's score where the scorer predicts that target, else with
        the primary's; the traffic window keeps the primary's raw score (drift and the budget)."""
        if scored is None:
            return await self.log.record(request_id, decision, None, tenant=tenant, asked=asked)
        model = self.predicts.get(decision.target or "", self.primary)
        judged = Judged(model, scored.raw[model], scored.confidence[model])
        return await self.log.record(
            request_id, decision, scored.raw[self.primary], judged, tenant, asked=asked
        )

    async def observe(self) -> None:
        """The gauges computed from the shared windows."""
        records = await self.log.feedback_window(max(CALIBRATION_WINDOWS))
        for window in CALIBRATION_WINDOWS:
            self.metrics.calibrated(window, calibration_stats(records[-window:]))
        self.metrics.drifted(await self.drift.check())
        outcomes = [outcome for outcome, _ in await self.log.traffic()][-WINDOW:]
        ratio = outcomes.count("escalate") / len(outcomes) if outcomes else math.nan
        self.metrics.escalation_ratio.set(ratio)
        threshold = self.budget.threshold
        self.metrics.escalation_threshold.set(math.nan if threshold is None else threshold)
