"""Scoring: a request's chance of a right answer, per target. A cached raw score, else a place in the next
micro-batch on the model's worker; then the calibrators in force make confidences of it. This is the one
place in the request path where raw scores become confidences (`scorers.calibrate`), so a reload with a new
calibrator applies to cached scores at once: only raw scores are cached.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import calibrators
from localmodel import Draft, Message
from localmodel.interface import precision_override
from policies import Confidences, LocalTarget, Policy
from router.batcher import BatchLimits, MicroBatcher, Overloaded
from router.errors import APIError
from router.metrics import Metrics
from router.model_worker import ModelWorker
from router.schemas import within
from router.score_cache import ScoreCache
from router.stages.admission import characters
from router.state import StateStore
from scorers import RawScore, ScoreItem, Scorer, ScorerSettings, build_scorer, calibrate


@dataclass(frozen=True)
class Scored:
    raw: dict[str, float]
    """Scorer target (a model) -> raw score."""
    confidence: dict[str, float]
    """Scorer target -> calibrated confidence."""
    draft: Draft | None
    cached: bool
    latency_ms: float
    task: dict[str, float] | None = None
    """Task family -> probability, from a scorer with a task head."""
    family: str | None = None
    """The likeliest task family (None without a task head)."""


class Scoring:
    def __init__(
        self,
        policy: Policy,
        worker: ModelWorker,
        store: StateStore,
        metrics: Metrics,
        check_prompt: Callable[[list[Message]], Awaitable[None]],
    ) -> None:
        spec = policy.scorer
        settings = ScorerSettings(
            Path(spec.adapter) if spec.adapter else None,
            spec.samples,
            spec.temperature,
            precision_override() or spec.precision,  # the machine's setting over the policy's
        )
        self.scorer: Scorer = build_scorer(spec.method, worker.model, settings)
        self.tag = scorer_tag(self.scorer.version)
        """The scorer version in force as x-router-scorer and router_scorer_info name it."""
        self._worker = worker
        self.max_draft_tokens = spec.max_draft_tokens
        self.metrics, self._check_prompt = metrics, check_prompt
        # A policy's calibrator (e.g. fitted on feedback) replaces the scorer folder's own.
        self.calibrators = dict(self.scorer.calibrators)
        if spec.calibrator:
            self.calibrators[self.scorer.primary] = calibrators.load(spec.calibrator)
        self.predicts = predicted_targets(policy, self.scorer)
        """Policy target -> the scorer target (model) whose confidence is its chance of a right answer."""
        self.cache = ScoreCache(store, self.scorer.version, spec.cache_ttl_s) if spec.cache_ttl_s else None
        limits = BatchLimits(spec.batch.max_size, spec.batch.max_wait_ms, spec.batch.max_queue)
        self.batcher: MicroBatcher[ScoreItem, RawScore] = MicroBatcher(
            lambda items: worker.run(self.scorer.score_batch, items),
            lambda item: characters(item.messages),
            limits,
            metrics.batch_ran,
        )
        metrics.queue_capacity.set(limits.max_queue)

    def calibrate(self, raw: np.ndarray) -> np.ndarray:
        """The primary target's raw scores to confidences (the escalation budget's quantiles)."""
        return calibrate(self.scorer.primary, raw, self.calibrators)

    async def score(
        self,
        messages: list[Message],
        max_new_tokens: int | None = None,
        *,
        cached: bool = True,
        tenant: str | None = None,
    ) -> Scored:
        """`max_new_tokens`: the client's cap on a draft's length, within the scorer's. `cached=False`
        neither reads nor writes the shared score cache (see /v1/score); each tenant has a cache of its own,
        so that no caller can tell by the latency what another asked."""
        started = time.perf_counter()
        item = ScoreItem(messages, within(max_new_tokens, self.max_draft_tokens))
        # Pre-generation scores do not depend on the draft length, so it stays out of their cache key.
        length_key = 0 if self.scorer.pre_generation else item.max_new_tokens
        cache = self.cache if cached else None
        hit = await cache.get(messages, length_key, tenant) if cache else None
        if hit is not None:
            return self._scored(hit, True, started)
        await self._check_prompt(messages)
        try:
            score = await self.batcher.submit(item)
        except Overloaded as exc:
            raise APIError(
                503, f"Overloaded: {exc}", type="overloaded", headers={"Retry-After": "1"}
            ) from exc
        if cache:
            await cache.put(messages, length_key, score, tenant)
        return self._scored(score, False, started)

    def known(self, scored: Scored) -> Confidences:
        """What rules test: the primary's confidence and each predicted policy target's."""
        by_target = {name: scored.confidence[model] for name, model in self.predicts.items()}
        for name, confidence in by_target.items():
            self.metrics.target_confidence.labels(name).observe(confidence)
        return Confidences(scored.confidence[self.scorer.primary], by_target, scored.family)

    def _scored(self, score: RawScore, cached: bool, started: float) -> Scored:
        elapsed = time.perf_counter() - started
        self.metrics.scoring_seconds.labels("hit" if cached else "miss").observe(elapsed)
        confidence = {
            target: float(calibrate(target, [value], self.calibrators)[0])
            for target, value in score.raw.items()
        }
        return Scored(score.raw, confidence, score.draft, cached, 1000 * elapsed, score.task, score.family)

    async def close(self) -> None:
        await self.batcher.close()
        await self._worker.run(self.scorer.close)


class LazyScore:
    """One request's score, computed the first time a rule asks for it (a rule on request fields alone
    costs no scoring)."""

    def __init__(
        self, scoring: Scoring, messages: list[Message], max_new_tokens: int | None, tenant: str | None
    ) -> None:
        self.scoring, self.messages, self.max_new_tokens, self.tenant = (
            scoring,
            messages,
            max_new_tokens,
            tenant,
        )
        self.result: Scored | None = None

    async def confidences(self) -> Confidences:
        if self.result is None:
            self.result = await self.scoring.score(self.messages, self.max_new_tokens, tenant=self.tenant)
        return self.scoring.known(self.result)


def scorer_tag(version: str) -> str:
    """A scorer version as a header value: itself when it is short printable ASCII (a head scorer's folder
    digest, layer and pooling), else a digest of it (a version may hold a model's path)."""
    if version.isascii() and version.isprintable() and len(version) <= 120:
        return version
    return "sha256:" + hashlib.sha256(version.encode()).hexdigest()[:16]


def predicted_targets(policy: Policy, scorer: Scorer) -> dict[str, str]:
    """Policy target -> the scorer's target (a model) that predicts it: the mapped ones, and every local
    target by the primary."""
    mapped = dict(policy.scorer.targets)
    for name, target in policy.targets.items():
        if isinstance(target, LocalTarget):
            mapped.setdefault(name, scorer.primary)
    unknown = {name: model for name, model in mapped.items() if model not in scorer.targets}
    if unknown:
        raise ValueError(f"scorer.targets: the scorer predicts {', '.join(scorer.targets)}, not {unknown}")
    return mapped
