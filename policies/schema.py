"""The shape of a policy file, and the cross-field checks pydantic cannot express per field."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError

from policies.actions import action, registered_action
from policies.checks import Location
from policies.conditions import CONDITIONS, When, hold_when, when_model
from policies.targets import LocalTarget, RemoteTarget, Target, hold_targets

VIRTUAL_MODEL = "router"
NO_TENANT = "-"
"""The tenant of requests without a key (no key name starts with `-`)."""


class _Strict(BaseModel):
    # A typo in a policy must be an error, not a silently ignored key.
    model_config = ConfigDict(extra="forbid", frozen=True)


class BatchSpec(_Strict):
    max_size: int = Field(32, ge=1)
    max_wait_ms: float = Field(5.0, ge=0)
    max_queue: int = Field(256, ge=1)
    """Requests waiting beyond this get HTTP 503 with Retry-After instead of an unbounded backlog."""


class ScorerSpec(_Strict):
    method: str = "nprob"
    """A registered scorer (scorers/): head, intrinsic, nprob, consistency. scorers/checks.py checks it."""
    model: str = "smollm2-135m-instruct"
    """The local model that drafts answers and scores them: a catalog name, a folder or a Hugging Face id."""
    adapter: str | None = None
    """The trained scorer folder (head and intrinsic); relative paths are relative to the policy file."""
    max_draft_tokens: int = Field(256, gt=0)
    samples: int = Field(5, ge=1)
    temperature: float = Field(0.7, gt=0)
    batch: BatchSpec = BatchSpec()
    cache_ttl_s: float = Field(3600.0, ge=0)
    """How long a score is reused for the same conversation; 0 turns the cache off."""
    calibrator: str | None = None
    """A calibrator.json mapping the scorer's raw score for its first (primary) target to the confidence
    (e.g. from `router calibrate --from-feedback`); replaces the scorer folder's own. Relative paths are
    relative to the policy file."""
    targets: dict[str, str] = {}
    """Policy target -> the model the scorer predicts for it (a `targets` entry of the scorer folder's
    scorer.json). A local target left out is predicted by the scorer's primary target."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """The head scorer's forward pass: auto is bf16 on a CPU with AMX (a few times faster, scores within
    0.01) and the model's own dtype elsewhere; fp32 turns it off. Generation is never affected.
    `ROUTER_SCORER_PRECISION` (`router serve --scorer-precision`) overrides it on one machine."""


class DriftSpec(_Strict):
    """When live confidences stop looking like the reference (docs/monitoring.md, the drift alarm rule)."""

    reference: Literal["auto", "scorer", "pinned"] = "auto"
    """scorer: the evaluation scores in the scorer folder's scorer.json; pinned: the first
    `reference_size` live scores, pinned in the shared store; auto: scorer when it has them, else pinned."""
    reference_size: int = Field(500, ge=50)
    window: int = Field(200, ge=20)
    """The most recent scored requests compared with the reference."""
    psi_alarm: float = Field(0.25, gt=0)
    ks_alpha: float = Field(0.001, gt=0, lt=1)


class LimitsSpec(_Strict):
    """Bounds on one request, so that no single request can exhaust the replica or hold the model for long."""

    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    """Larger request bodies get HTTP 413 before they are parsed."""
    max_messages: int = Field(2048, ge=1)
    """Conversations with more messages get HTTP 400 (OpenAI's own bound)."""
    max_prompt_tokens: int = Field(2048, ge=16)
    """Prompts the local model reads (to score or to answer) beyond this many tokens get HTTP 400
    (code context_length_exceeded); requests that only pass through to a remote target are not counted.
    It bounds how long one request holds the model's worker (docs/operations.md)."""
    max_local_answers: int = Field(8, ge=1)
    """Local answers written at once (as one batch, a step per job on the model); others wait for a turn.
    Each holds its prompt's KV cache, about 100 MB for SmolLM2-135M at 2,048 tokens."""


class DecisionsSpec(_Strict):
    """Which decisions the log keeps for feedback to join, so that what it holds is bounded by this, not by
    traffic (docs/operations.md, "What Redis holds")."""

    sample: float = Field(0.01, ge=0, le=1)
    """The share of requests whose decision is kept although their client did not ask for it (a request
    asks with the header `x-router-feedback: keep`)."""
    per_tenant: int = Field(100_000, ge=1)
    """The most decisions kept per tenant (an API key; every request without auth is one tenant): a newer
    one replaces the tenant's oldest, never another tenant's."""


class MonitoringSpec(_Strict):
    decision_ttl_s: float = Field(86400.0, gt=0)
    """How long a kept decision stays joinable with feedback."""
    feedback_retained: int = Field(10000, ge=100)
    """Feedback records kept for rolling calibration and `router calibrate --from-feedback`."""
    decisions: DecisionsSpec = DecisionsSpec()
    drift: DriftSpec = DriftSpec()


def _regex(pattern: str) -> str:
    try:
        re.compile(pattern)
    except re.error as exc:
        problem = {"problem": str(exc)}
        raise PydanticCustomError("regex", "not a regular expression: {problem}", problem) from exc
    return pattern


class CaptureSpec(_Strict):
    """A sampled share of the routed conversations and their answers, kept in Redis for labelling later
    (`router traffic export`; docs/policies.md, "Capturing traffic"). Off unless the policy has the block."""

    share: float = Field(ge=0, le=1)
    """The share of routed chat requests kept, chosen by a hash of the request id."""
    tenants: list[str] | None = Field(None, min_length=1)
    """Only these API keys' requests (`-`: requests without a key); absent: every tenant's."""
    max_rows: int = Field(10_000, ge=1)
    """The most rows kept per tenant: a newer one replaces the tenant's oldest."""
    retention_days: float = Field(30.0, gt=0)
    """A tenant's rows expire this long after its newest, and export skips rows older than this."""
    redact: list[Annotated[str, AfterValidator(_regex)]] = []
    """Regular expressions: every match in the conversation and the answer is stored as `[redacted]`."""


class ExploreSpec(_Strict):
    """Shadow answers: for a share of the captured requests, candidate targets that did not answer the
    client are asked too, off the request path, and their answers kept with the row (docs/policies.md,
    "Exploring: shadow answers"). Needs `capture:`."""

    share: float = Field(ge=0, le=1)
    """The share of captured requests explored, chosen by a hash of the request id."""
    targets: list[str] = Field(min_length=1)
    """The candidates: policy targets asked beside the one that answered the client."""
    budget_usd_per_day: float = Field(gt=0)
    """Dollars the shadow answers may cost per UTC day, every replica together."""
    concurrency: int = Field(2, ge=1)
    """Shadow answers asked for at once, per replica (a local candidate's: one at a time whatever this is)."""
    queue: int = Field(100, ge=1)
    """Explored requests waiting for their turn, per replica; one more is not explored (its row is kept
    with the client's answer alone)."""


class SessionsSpec(_Strict):
    """Pins a conversation to the target its first turn went to, in the store every replica shares
    (docs/policies.md, "Sessions"). Off unless the policy has the block."""

    key: Literal["header", "previous_response_id", "user"] = "header"
    """What tells a conversation: the request header named by `header`, the chain of POST /v1/responses
    requests linked by previous_response_id, or the request's `user` field."""
    header: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]{0,63}$")] = "x-session-id"
    """The header that carries a session id, lower case (key: header)."""
    ttl_s: float = Field(1800.0, gt=0)
    """A pin lasts this long after its conversation's latest turn."""
    allow_escalation: bool = True
    """A later turn whose rule escalates (escalate_to, or a pick that escalates) goes to that rule's
    target, which the conversation is pinned to from then on; false: escalations are pinned too."""


class ResponsesSpec(_Strict):
    """How POST /v1/responses keeps conversations for previous_response_id and GET /v1/responses/{id}
    (docs/policies.md, "The Responses API")."""

    ttl_s: float = Field(86400.0, gt=0)
    """A stored response expires this long after it was written."""
    per_tenant: int = Field(10_000, ge=1)
    """The most responses kept per tenant: a newer one replaces the tenant's oldest."""
    max_bytes: int = Field(256 * 1024, ge=1024)
    """The most a stored conversation (its items as JSON) may hold: a request that would store more is a
    400 (store: false stores nothing, and is not held to it)."""


Fallback = Literal["most_likely", "hedge", "refuse"]


class Rule(_Strict):
    name: str | None = None
    when: When = Field(default_factory=lambda: when_model()())
    """Validated as the registered conditions' model (see _validate_when_as)."""
    action: Annotated[str, AfterValidator(registered_action)]
    """A registered action (policies/actions/)."""
    target: str | None = None
    message: str | None = None
    """Overrides the policy's refusal message (refuse, or pick falling back to refuse) or hedge template."""
    candidates: list[str] | None = None
    """pick: the targets to choose among (default: every target the scorer predicts)."""
    min_confidence: float | None = Field(None, ge=0, le=1)
    """pick: the cheapest candidate at least this likely to be right answers."""
    fallback: Fallback = "most_likely"
    """pick, when no candidate reaches min_confidence: the most likely candidate answers, hedges, or the
    router refuses."""


class Policy(_Strict):
    version: Literal[1] = 1
    name: str = "policy"
    scorer: ScorerSpec = ScorerSpec()
    targets: dict[str, Target] = Field(min_length=1)
    """Each validated as the registered kind its `kind:` names (see _validate_targets_as)."""
    rules: list[Rule] = Field(min_length=1)
    hedge_template: str = "I am not certain about this, so please double-check it: {answer}"
    refusal_message: str = "I can't answer that reliably, so I won't guess."
    auth: Literal["off", "required"] = "off"
    """required: every endpoint but /healthz and /readyz takes an API key (`router keys create`) or the
    admin key as `Authorization: Bearer <key>`; the keys' limits and budgets apply. Keys live in Redis."""
    failure_aware: bool = False
    """Answer with JSON {decision, answer, justification, evidence_quality} instead of plain text."""
    target_escalation_rate: float | None = Field(None, gt=0, lt=1)
    """The escalate_to rule's confidence_below follows this quantile of recent confidences, so about this
    share of scored traffic escalates; the written threshold holds until enough traffic has been seen."""
    monitoring: MonitoringSpec = MonitoringSpec()
    limits: LimitsSpec = LimitsSpec()
    capture: CaptureSpec | None = None
    explore: ExploreSpec | None = None
    embeddings: str | None = None
    """The remote target (openai or litellm) that POST /v1/embeddings passes through to, unscored; none:
    that endpoint answers 404."""
    sessions: SessionsSpec | None = None
    responses: ResponsesSpec = ResponsesSpec()

    @field_validator("auth", mode="before")
    @classmethod
    def _unquoted_off(cls, value: object) -> object:
        # YAML reads a bare `off` as false.
        return "off" if value is False else value

    @property
    def model_names(self) -> list[str]:
        return [VIRTUAL_MODEL, *self.targets]

    def scored(self, target: str) -> bool:
        """Whether the scorer predicts this target's correctness (mapped, or a local target)."""
        spec = self.targets.get(target)
        return target in self.scorer.targets or isinstance(spec, LocalTarget)

    def candidates(self, rule: Rule) -> list[str]:
        return rule.candidates if rule.candidates is not None else [t for t in self.targets if self.scored(t)]

    @property
    def default_hedge_target(self) -> str | None:
        """A hedge without a target hedges the local draft."""
        return next((name for name, t in self.targets.items() if isinstance(t, LocalTarget)), None)

    @property
    def budgeted_rule(self) -> int | None:
        """The index of the rule whose threshold follows `target_escalation_rate`."""
        if self.target_escalation_rate is None:
            return None
        return next(
            (
                i
                for i, r in enumerate(self.rules)
                if r.action == "escalate_to" and r.when.confidence_below is not None
            ),
            None,
        )

    def rule_label(self, index: int) -> str:
        rule = self.rules[index]
        return rule.name or f"rules[{index}]"

    def problems(self) -> Iterator[tuple[Location, str]]:
        """Mistakes that span fields: dangling targets, rules that can never match, a missing catch-all."""
        if VIRTUAL_MODEL in self.targets:
            yield ("targets", VIRTUAL_MODEL), f"'{VIRTUAL_MODEL}' is the router's own model name"
        for name in self.scorer.targets:
            if name not in self.targets:
                yield (
                    ("scorer", "targets", name),
                    f"unknown target '{name}' (targets: {', '.join(self.targets)})",
                )
        if "{answer}" not in self.hedge_template:
            yield ("hedge_template",), "must contain {answer}"
        for i, rule in enumerate(self.rules):
            yield from action(rule.action).problems(self, i, rule)
            for condition in CONDITIONS.values():
                yield from condition.problems(self, i, rule)
        yield from _budget_problems(self)
        yield from _fallback_problems(self)
        for name, target in self.targets.items():
            if isinstance(target, LocalTarget) and target.answerer is not None and not self.failure_aware:
                yield (
                    ("targets", name, "answerer"),
                    "an answerer answers in JSON: it needs failure_aware: true",
                )
        listed = self.capture.tenants if self.capture is not None else None
        if listed is not None and self.auth == "off" and set(listed) != {NO_TENANT}:
            yield (
                ("capture", "tenants"),
                f"with auth off no request has a key: every request is the tenant '{NO_TENANT}'",
            )
        yield from _explore_problems(self)
        yield from _embeddings_problems(self)
        if not self.rules[-1].when.is_empty:
            yield (
                ("rules", len(self.rules) - 1, "when"),
                "the last rule must have no conditions, so that every request matches a rule",
            )


def _explore_problems(policy: Policy) -> Iterator[tuple[Location, str]]:
    if policy.explore is None:
        return
    if policy.capture is None:
        yield ("explore",), "needs a capture: block: shadow answers are kept with the captured rows"
    for j, name in enumerate(policy.explore.targets):
        where: Location = ("explore", "targets", j)
        if name not in policy.targets:
            yield where, f"unknown target '{name}' (targets: {', '.join(policy.targets)})"
        elif name in policy.explore.targets[:j]:
            yield where, f"'{name}' is listed twice"


def _embeddings_problems(policy: Policy) -> Iterator[tuple[Location, str]]:
    name = policy.embeddings
    if name is None:
        return
    target = policy.targets.get(name)
    if target is None:
        yield ("embeddings",), f"unknown target '{name}' (targets: {', '.join(policy.targets)})"
    elif not isinstance(target, RemoteTarget):
        yield ("embeddings",), f"'{name}' is a {target.kind} target: embeddings pass through to a remote one"


def _fallback_problems(policy: Policy) -> Iterator[tuple[Location, str]]:
    for name, target in policy.targets.items():
        for j, other in enumerate(target.fallbacks):
            where: Location = ("targets", name, "fallbacks", j)
            if other == name:
                yield where, "a target cannot be its own fallback"
            elif other not in policy.targets:
                yield where, f"unknown target '{other}' (targets: {', '.join(policy.targets)})"
            elif other in target.fallbacks[:j]:
                yield where, f"'{other}' is listed twice"


def _budget_problems(policy: Policy) -> Iterator[tuple[Location, str]]:
    if policy.target_escalation_rate is None:
        return
    escalating = [
        i
        for i, r in enumerate(policy.rules)
        if r.action == "escalate_to" and r.when.confidence_below is not None
    ]
    if len(escalating) != 1:
        yield (
            ("target_escalation_rate",),
            "needs exactly one escalate_to rule with confidence_below (its threshold is the one that "
            f"follows the rate); found {len(escalating)}",
        )
        return
    if policy.rules[escalating[0]].when.confidence_of is not None:
        yield (
            ("rules", escalating[0], "when", "confidence_of"),
            "the budget follows the scorer's primary confidence; this rule must test that one",
        )
    first_scored = next(i for i, r in enumerate(policy.rules) if r.when.needs_confidence)
    if escalating[0] != first_scored:
        yield (
            ("rules", first_scored, "when"),
            f"with target_escalation_rate the escalate_to rule ({policy.rule_label(escalating[0])}) must be "
            "the first rule that looks at confidence, or this rule takes part of its traffic",
        )


def _validate_when_as(model: type[When]) -> None:
    """Rules validate `when:` with `model`, the registered conditions' (Policy holds rules, so it rebuilds
    too)."""
    Rule.model_fields["when"] = FieldInfo.from_annotated_attribute(model, Field(default_factory=model))
    Rule.model_rebuild(force=True)
    Policy.model_rebuild(force=True)


hold_when(_validate_when_as)


def _validate_targets_as(union: Any) -> None:
    """Policies validate each target entry with `union`, the registered kinds' (policies/targets/)."""
    Policy.model_fields["targets"] = FieldInfo.from_annotated_attribute(dict[str, union], Field(min_length=1))
    Policy.model_rebuild(force=True)


hold_targets(_validate_targets_as)
