"""Prometheus metrics. One registry per app; every label takes values from a small fixed set (decisions,
the policy's targets, error kinds, window sizes, route templates), never from request text."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from policies import Decision

if TYPE_CHECKING:
    from router.drift import DriftReport
    from router.feedback import CalibrationStats
    from router.state import StateStore

CONFIDENCE_BUCKETS = tuple(round(0.05 * i, 2) for i in range(1, 21))
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
CALIBRATION_WINDOWS = (100, 1000)
"""Rolling calibration is reported over the last 100 and the last 1000 feedback records."""

# The codes of the router's upstream errors (router/targets/litellm_errors.py) folded into a few kinds, so
# that the label stays bounded.
_ERROR_KINDS = {
    "upstream_timeout": "timeout",
    "upstream_rate_limited": "rate_limit",
    "upstream_auth_failed": "auth",
    "missing_api_key": "auth",
    "upstream_bad_request": "bad_request",
    "upstream_request_too_large": "bad_request",
    "upstream_not_found": "not_found",
    "upstream_connection": "connection",
    "upstream_server_error": "server",
    "upstream_unavailable": "server",
    "upstream_malformed": "malformed",
    "stream_cut": "stream_cut",
}
ERROR_KINDS = (*sorted(set(_ERROR_KINDS.values())), "other")
FEEDBACK_OUTCOMES = ("correct", "incorrect", "graded", "duplicate", "unknown", "conflict")
CAPTURE_OUTCOMES = ("stored", "skipped", "dropped", "aborted")
EXPLORE_OUTCOMES = ("asked", "dropped_queue_full", "over_budget", "failed")
SESSION_OUTCOMES = ("new", "pinned", "overridden", "escalated")
"""A session's turn: its first (or its pin gone); the pinned target answered as the rule chose; the pinned
target answered in place of the rule's; an escalation moved the pin (docs/policies.md, "Sessions")."""


def error_kind(code: str | None) -> str:
    return _ERROR_KINDS.get(code or "", "other")


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter(
            "router_requests",
            "Routed requests by decision and answering target.",
            ["decision", "target"],
            registry=r,
        )
        self.task_requests = Counter(
            "router_task_requests",
            "Scored requests by the task family the scorer's task head saw (one of its few families) and "
            "decision.",
            ["task", "decision"],
            registry=r,
        )
        self.confidence = Histogram(
            "router_confidence", "Confidence the policy acted on.", buckets=CONFIDENCE_BUCKETS, registry=r
        )
        self.target_confidence = Histogram(
            "router_target_confidence",
            "Each scored request's chance of a right answer from each target the scorer predicts.",
            ["target"],
            buckets=CONFIDENCE_BUCKETS,
            registry=r,
        )
        self.saved = Counter(
            "router_saved_dollars",
            "Estimated dollars pick rules saved against their dearest candidate, at the answers' tokens.",
            registry=r,
        )
        self.scoring_seconds = Histogram(
            "router_scoring_seconds",
            "Time to a score, from the cache (hit) or the scorer (miss, queueing included).",
            ["cache"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait_seconds = Histogram(
            "router_queue_wait_seconds",
            "Time a scoring request waited for its micro-batch to start.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_seconds = Histogram(
            "router_upstream_seconds",
            "Time for the answering target to produce the answer (the stream's opening when streamed).",
            ["target"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "router_batch_size", "Scoring requests per forward pass.", buckets=BATCH_BUCKETS, registry=r
        )
        self.local_batch_rows = Histogram(
            "router_local_batch_rows",
            "Local answers written together, per generation step or prompt read (router/generation.py).",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge("router_queue_depth", "Scoring requests waiting for a batch.", registry=r)
        self.queue_capacity = Gauge(
            "router_queue_capacity", "Waiting requests beyond which the router answers 503.", registry=r
        )
        self.upstream_errors = Counter(
            "router_upstream_errors", "Failed calls to remote targets.", ["target", "kind"], registry=r
        )
        self.fallbacks = Counter(
            "router_fallbacks",
            "Requests passed from a target to its next fallback, by why (a failure kind, or cooling_down).",
            ["from_target", "to_target", "reason"],
            registry=r,
        )
        self.target_up = Gauge(
            "router_target_up",
            "1 while a target may be called, 0 while it cools down after repeated failures.",
            ["target"],
            registry=r,
        )
        self.tokens = Counter(
            "router_tokens", "Tokens by answering target and direction.", ["target", "direction"], registry=r
        )
        self.cost = Counter(
            "router_cost_dollars",
            "Estimated cost in US dollars by target (its declared cost, else litellm's cost map; else 0).",
            ["target"],
            registry=r,
        )
        self.tenant_requests = Counter(
            "router_tenant_requests",
            "Requests by tenant (API key name; `other` beyond the first 100) and admission: admitted, "
            "forbidden, rate_limit_exceeded, budget_exceeded.",
            ["tenant", "result"],
            registry=r,
        )
        self.tenant_cost = Counter(
            "router_tenant_cost_dollars",
            "Estimated cost in US dollars of the answers each tenant received.",
            ["tenant"],
            registry=r,
        )
        self.auth_failures = Counter(
            "router_auth_failures",
            "Requests refused for want of a valid API key: missing, unknown (or revoked).",
            ["reason"],
            registry=r,
        )
        self.feedback = Counter(
            "router_feedback",
            "Feedback received: correct, incorrect, graded (a 0..1 score); duplicate, unknown id, conflict.",
            ["outcome"],
            registry=r,
        )
        self.calibration_ece = Gauge(
            "router_calibration_ece",
            "Expected calibration error (15 bins) over the feedback window.",
            ["window"],
            registry=r,
        )
        self.calibration_brier = Gauge(
            "router_calibration_brier", "Brier score over the feedback window.", ["window"], registry=r
        )
        self.calibration_auroc = Gauge(
            "router_calibration_auroc",
            "AUROC of confidence for correctness over the feedback window.",
            ["window"],
            registry=r,
        )
        self.calibration_samples = Gauge(
            "router_calibration_samples", "Feedback records in the window.", ["window"], registry=r
        )
        self.drift_psi = Gauge("router_drift_psi", "PSI of recent scores against the reference.", registry=r)
        self.drift_ks = Gauge(
            "router_drift_ks", "KS statistic of recent scores against the reference.", registry=r
        )
        self.drift_ks_critical = Gauge(
            "router_drift_ks_critical",
            "KS statistic at which the alarm fires for these sample sizes.",
            registry=r,
        )
        self.drift_alarm = Gauge(
            "router_drift_alarm", "1 while the drift alarm rule holds, else 0.", registry=r
        )
        self.drift_window_samples = Gauge(
            "router_drift_window_samples", "Recent scores compared with the reference.", registry=r
        )
        self.drift_reference_samples = Gauge(
            "router_drift_reference_samples",
            "Scores in the reference distribution (0: none yet).",
            registry=r,
        )
        self.escalation_ratio = Gauge(
            "router_escalation_ratio",
            "Share of the recent decisions (shared window) that escalated.",
            registry=r,
        )
        self.escalation_threshold = Gauge(
            "router_escalation_threshold",
            "The budget-targeted confidence threshold in force (NaN without target_escalation_rate).",
            registry=r,
        )
        self.http_requests = Counter(
            "router_http_requests", "HTTP responses by route and status code.", ["route", "code"], registry=r
        )
        self.reloads = Counter("router_reloads", "Policy and calibrator reloads.", ["result"], registry=r)
        self.scorer_info = Gauge(
            "router_scorer_info",
            "1 for the scorer version in force (x-router-scorer); one series, replaced on reload.",
            ["version"],
            registry=r,
        )
        self.captured = Counter(
            "router_captured",
            "Routed requests the policy's capture: looked at: stored; skipped (not sampled, or not a listed "
            "tenant); dropped (the store could not keep the row); aborted (a stream that did not end).",
            ["outcome"],
            registry=r,
        )
        self.explored = Counter(
            "router_explore_requests",
            "Shadow answers the policy's explore: sought from candidate targets: asked (an answer came), "
            "dropped_queue_full, over_budget (the day's budget spent, or unknown with Redis away), failed.",
            ["outcome"],
            registry=r,
        )
        self.explore_cost = Counter(
            "router_explore_dollars",
            "Estimated US dollars of shadow answers (explore:), by candidate target; not in router_cost.",
            ["target"],
            registry=r,
        )
        self.session_turns = Counter(
            "router_session_turns",
            "Turns of pinned conversations (the policy's sessions:): new (a pin was set), pinned (the pinned "
            "target answered, as the rule chose), overridden (it answered in place of the rule's), escalated "
            "(an escalation moved the pin).",
            ["outcome"],
            registry=r,
        )
        # Series for every value of a fixed label set exist from the start, so that rate() and alerts see
        # a zero before the first event rather than no series at all.
        for outcome in FEEDBACK_OUTCOMES:
            self.feedback.labels(outcome)
        for result in ("ok", "failed"):
            self.reloads.labels(result)
        for outcome in CAPTURE_OUTCOMES:
            self.captured.labels(outcome)
        for outcome in EXPLORE_OUTCOMES:
            self.explored.labels(outcome)
        for outcome in SESSION_OUTCOMES:
            self.session_turns.labels(outcome)
        self.escalation_threshold.set(math.nan)
        for window in CALIBRATION_WINDOWS:
            for gauge in (self.calibration_ece, self.calibration_brier, self.calibration_auroc):
                gauge.labels(str(window)).set(math.nan)
            self.calibration_samples.labels(str(window)).set(0)
        for gauge in (self.drift_psi, self.drift_ks, self.drift_ks_critical, self.escalation_ratio):
            gauge.set(math.nan)

    def decided(self, decision: Decision, family: str | None = None) -> None:
        """`family`: the task family the scorer's task head saw, for a request it scored."""
        self.requests.labels(decision.outcome, decision.target or "none").inc()
        if family is not None:
            self.task_requests.labels(family, decision.outcome).inc()
        if decision.confidence is not None:
            self.confidence.observe(decision.confidence)

    def scorer_in_force(self, version: str) -> None:
        # One series at a time: a scorer replaced on reload leaves none behind (bounded cardinality).
        self.scorer_info.clear()
        self.scorer_info.labels(version).set(1)

    def batch_ran(self, waits_s: list[float]) -> None:
        self.batch_size.observe(len(waits_s))
        for wait in waits_s:
            self.queue_wait_seconds.observe(wait)

    def upstream_failed(self, target: str, code: str | None) -> None:
        self.upstream_errors.labels(target, error_kind(code)).inc()

    def fell_back(self, from_target: str, to_target: str, reason: str) -> None:
        self.fallbacks.labels(from_target, to_target, reason).inc()

    def used(self, target: str, prompt_tokens: int, completion_tokens: int, cost: float) -> None:
        self.tokens.labels(target, "prompt").inc(prompt_tokens)
        self.tokens.labels(target, "completion").inc(completion_tokens)
        self.cost.labels(target).inc(cost)

    def calibrated(self, window: int, stats: CalibrationStats) -> None:
        label = str(window)
        self.calibration_samples.labels(label).set(stats.samples)
        self.calibration_ece.labels(label).set(stats.ece)
        self.calibration_brier.labels(label).set(stats.brier)
        self.calibration_auroc.labels(label).set(stats.auroc)

    def drifted(self, report: DriftReport) -> None:
        self.drift_psi.set(report.psi)
        self.drift_ks.set(report.ks)
        self.drift_ks_critical.set(report.ks_critical)
        self.drift_window_samples.set(report.window)
        self.drift_reference_samples.set(report.reference)
        self.drift_alarm.set(int(report.alarm))

    def track_queue(self, depth: Callable[[], float]) -> None:
        self.queue_depth.set_function(depth)

    def track_store(self, store: StateStore) -> None:
        """router_store_up, _outages_total, _pending_writes, _dropped_writes_total, read at each scrape."""
        self.registry.register(_StoreCollector(store))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _StoreCollector(Collector):
    """The state store's health, read when scraped (the store counts; a Counter could not be set)."""

    def __init__(self, store: StateStore) -> None:
        self.store = store

    def describe(self) -> Iterator[Metric]:
        return self._families(0, 0, 0, 0)

    def collect(self) -> Iterator[Metric]:
        health = self.store.health()
        return self._families(int(health.up), health.outages, health.pending_writes, health.dropped_writes)

    @staticmethod
    def _families(up: int, outages: int, pending: int, dropped: int) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "router_store_up", "1 while the shared state store answers (always 1 in memory), else 0.", up
        )
        yield CounterMetricFamily(
            "router_store_outages", "Times the state store became unreachable.", outages
        )
        yield GaugeMetricFamily(
            "router_store_pending_writes", "Writes kept for the state store until it answers again.", pending
        )
        yield CounterMetricFamily(
            "router_store_dropped_writes",
            "Writes the state store could not keep (replay buffer full, or rejected on replay).",
            dropped,
        )
