"""Budget-targeted thresholds: with `target_escalation_rate: r` the escalate_to rule's `confidence_below`
becomes the r-quantile of the confidences of the last WINDOW scored requests (the shared traffic window, so
every replica follows the same quantile), and about a share r of scored traffic escalates.

The threshold is recomputed every REFRESH_EVERY requests of this replica, not on every request, so the
shared window costs one read per REFRESH_EVERY requests. Until MIN_SAMPLES scores are in the window the
threshold written in the policy holds.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from policies import Policy
from router.feedback import DecisionLog

WINDOW = 1000
MIN_SAMPLES = 100
REFRESH_EVERY = 16


class EscalationBudget:
    def __init__(
        self, policy: Policy, log: DecisionLog, calibrate: Callable[[np.ndarray], np.ndarray]
    ) -> None:
        self.rule, self.rate = policy.budgeted_rule, policy.target_escalation_rate
        self.log, self.calibrate = log, calibrate
        self.threshold: float | None = None
        self._until_refresh = 0

    async def thresholds(self) -> dict[int, float]:
        """The rule-index -> confidence_below overrides for the next decision (empty without a budget)."""
        if self.rule is None or self.rate is None:
            return {}
        if self._until_refresh <= 0:
            scores = await self.log.recent_scores(WINDOW)
            if len(scores) >= MIN_SAMPLES:
                self.threshold = float(np.quantile(self.calibrate(np.asarray(scores)), self.rate))
            self._until_refresh = REFRESH_EVERY
        self._until_refresh -= 1
        return {} if self.threshold is None else {self.rule: self.threshold}
