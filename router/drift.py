"""The drift monitor: are recent scores still distributed like the reference?

Compares the raw scores of the last `drift.window` scored requests (shared by all replicas through the
state store) with a reference sample: the scorer's own evaluation scores (`reference_scores` in
scorer.json), or the first `drift.reference_size` live scores, pinned once in the store. Raw scores, not
calibrated confidences: a monotone calibrator maps both samples alike, so PSI over reference-quantile bins
and KS are unchanged by it, and a recalibration does not look like drift.

The alarm rule: the window is full and PSI > `drift.psi_alarm` or KS > the critical value at
`drift.ks_alpha` for the two sample sizes.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import calibrators
from policies.schema import DriftSpec
from router.feedback import DecisionLog, scorer_key
from router.state import StateStore


@dataclass(frozen=True)
class DriftReport:
    psi: float
    ks: float
    ks_critical: float
    window: int
    reference: int
    alarm: bool


def alarm(psi: float, ks: float, ks_critical: float, window: int, spec: DriftSpec) -> bool:
    return window >= spec.window and (psi > spec.psi_alarm or ks > ks_critical)


class DriftMonitor:
    def __init__(
        self, store: StateStore, log: DecisionLog, spec: DriftSpec, scorer_reference: list[float] | None
    ) -> None:
        if spec.reference == "scorer" and not scorer_reference:
            raise ValueError(
                "drift.reference is 'scorer' but the scorer's scorer.json has no reference_scores"
            )
        self.store, self.log, self.spec = store, log, spec
        self.fixed = scorer_reference if spec.reference != "pinned" else None
        self.pin_key = f"drift:reference:{scorer_key(log.scorer_version)}"

    async def reference(self) -> list[float] | None:
        if self.fixed:
            return self.fixed
        pinned = await self.store.get(self.pin_key)
        if pinned is None:
            scores = await self.log.recent_scores(self.spec.reference_size)
            if len(scores) < self.spec.reference_size:
                return None
            # Replicas may race to pin: the first one wins and everyone reads its reference back.
            await self.store.set_if_absent(self.pin_key, json.dumps(scores))
            pinned = await self.store.get(self.pin_key)
        return None if pinned is None else [float(s) for s in json.loads(pinned)]

    async def check(self) -> DriftReport:
        reference = await self.reference()
        live = await self.log.recent_scores(self.spec.window)
        if not reference or not live:
            return DriftReport(math.nan, math.nan, math.nan, len(live), len(reference or []), False)
        psi = calibrators.psi(reference, live)
        ks = calibrators.ks_statistic(reference, live)
        critical = calibrators.ks_critical_value(len(reference), len(live), self.spec.ks_alpha)
        return DriftReport(
            psi, ks, critical, len(live), len(reference), alarm(psi, ks, critical, len(live), self.spec)
        )
