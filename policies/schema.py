"""The shape of a policy file, and the cross-field checks pydantic cannot express per field."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Action = Literal["answer_with", "escalate_to", "hedge", "refuse"]
VIRTUAL_MODEL = "router"
Location = tuple[str | int, ...]


class _Strict(BaseModel):
    # A typo in a policy must be an error, not a silently ignored key.
    model_config = ConfigDict(extra="forbid", frozen=True)


class BatchSpec(_Strict):
    max_size: int = Field(32, ge=1)
    max_wait_ms: float = Field(5.0, ge=0)
    max_queue: int = Field(256, ge=1)
    """Requests waiting beyond this get HTTP 503 with Retry-After instead of an unbounded backlog."""


class ScorerSpec(_Strict):
    method: Literal["head", "intrinsic", "nprob", "consistency"] = "nprob"
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


class LocalTarget(_Strict):
    """Generation in-process with the scorer's model."""

    kind: Literal["local"]
    max_tokens: int = Field(256, gt=0)


class LiteLLMTarget(_Strict):
    """Any model litellm can call. Keys come from `api_key_env` or litellm's own environment variables."""

    kind: Literal["litellm"]
    model: str = Field(min_length=1)
    api_base: str | None = None
    api_key_env: str | None = None
    timeout_s: float = Field(60.0, gt=0)
    num_retries: int = Field(1, ge=0)


Target = Annotated[LocalTarget | LiteLLMTarget, Field(discriminator="kind")]


class When(_Strict):
    """Conditions of a rule; all given conditions must hold. Confidence bounds are [at_least, below)."""

    confidence_below: float | None = Field(None, ge=0, le=1)
    confidence_at_least: float | None = Field(None, ge=0, le=1)
    model: list[str] | None = None
    user: list[str] | None = None

    @field_validator("model", "user", mode="before")
    @classmethod
    def _one_or_many(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value

    @property
    def needs_confidence(self) -> bool:
        return self.confidence_below is not None or self.confidence_at_least is not None

    @property
    def is_empty(self) -> bool:
        return not self.needs_confidence and self.model is None and self.user is None


class Rule(_Strict):
    name: str | None = None
    when: When = When()
    action: Action
    target: str | None = None
    message: str | None = None
    """Overrides the policy's refusal message (refuse) or hedge template (hedge)."""


class Policy(_Strict):
    version: Literal[1] = 1
    name: str = "policy"
    scorer: ScorerSpec = ScorerSpec()
    targets: dict[str, Target] = Field(min_length=1)
    rules: list[Rule] = Field(min_length=1)
    hedge_template: str = "I am not certain about this, so please double-check it: {answer}"
    refusal_message: str = "I can't answer that reliably, so I won't guess."
    failure_aware: bool = False
    """Answer with JSON {decision, answer, justification, evidence_quality} instead of plain text."""

    @property
    def model_names(self) -> list[str]:
        return [VIRTUAL_MODEL, *self.targets]

    @property
    def default_hedge_target(self) -> str | None:
        """A hedge without a target hedges the local draft."""
        return next((name for name, t in self.targets.items() if isinstance(t, LocalTarget)), None)

    def rule_label(self, index: int) -> str:
        rule = self.rules[index]
        return rule.name or f"rules[{index}]"

    def problems(self) -> Iterator[tuple[Location, str]]:
        """Mistakes that span fields: dangling targets, rules that can never match, a missing catch-all."""
        if VIRTUAL_MODEL in self.targets:
            yield ("targets", VIRTUAL_MODEL), f"'{VIRTUAL_MODEL}' is the router's own model name"
        if self.scorer.method in ("head", "intrinsic") and self.scorer.adapter is None:
            yield ("scorer", "adapter"), f"the {self.scorer.method} scorer needs an adapter folder"
        if "{answer}" not in self.hedge_template:
            yield ("hedge_template",), "must contain {answer}"
        for i, rule in enumerate(self.rules):
            yield from _rule_problems(self, i, rule)
        if not self.rules[-1].when.is_empty:
            yield (
                ("rules", len(self.rules) - 1, "when"),
                "the last rule must have no conditions, so that every request matches a rule",
            )


def _rule_problems(policy: Policy, i: int, rule: Rule) -> Iterator[tuple[Location, str]]:
    where: Location = ("rules", i)
    takes_target = rule.action in ("answer_with", "escalate_to", "hedge")
    if rule.action in ("answer_with", "escalate_to") and rule.target is None:
        yield (*where, "target"), f"{rule.action} needs a target"
    if not takes_target and rule.target is not None:
        yield (*where, "target"), f"{rule.action} takes no target"
    if rule.target is not None and rule.target not in policy.targets:
        yield (*where, "target"), f"unknown target '{rule.target}' (targets: {', '.join(policy.targets)})"
    if rule.action == "hedge" and rule.target is None and policy.default_hedge_target is None:
        yield (*where, "target"), "hedge needs a target when the policy has no local target"
    if rule.action == "hedge" and rule.message is not None and "{answer}" not in rule.message:
        yield (*where, "message"), "a hedge message must contain {answer}"
    if rule.action in ("answer_with", "escalate_to") and rule.message is not None:
        yield (*where, "message"), f"{rule.action} takes no message"
    low, high = rule.when.confidence_at_least, rule.when.confidence_below
    if low is not None and high is not None and low >= high:
        yield (*where, "when"), f"confidence_at_least {low} >= confidence_below {high}: never matches"
    for j, name in enumerate(rule.when.model or []):
        if name not in policy.model_names:
            yield (*where, "when", "model", j), f"'{name}' is not a model this policy serves"
