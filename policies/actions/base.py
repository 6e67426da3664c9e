"""The action contract: what a rule does once it matches, and how that shapes the text the client gets.

Each class registers itself under its `name`, the `action:` a policy rule gives; a new action is one module
in this folder (every module here is imported by the package, so it registers). Actions are classes of
class methods: a policy names one, it holds no state.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic_core import PydanticCustomError

from policies.checks import Location

if TYPE_CHECKING:
    from policies.facts import Confidences
    from policies.views import PolicyView, RuleView

ACTIONS: dict[str, type[Action]] = {}
OPTIONAL_FIELDS = ("candidates", "min_confidence", "target", "message")
"""The rule fields an action may read; a rule giving one its action does not read is a mistake."""


@dataclass(frozen=True)
class Decision:
    action: str
    """A registered action; never one that chooses another (pick decides answer_with, escalate_to, hedge
    or refuse)."""
    target: str | None
    rule: str
    confidence: float | None
    """The answering target's, for a pick rule; else the confidence the rule tested (the primary's)."""
    message: str | None
    """The refusal text, or the hedge template with an {answer} slot."""
    rule_index: int
    confidences: Mapping[str, float] | None = None
    """A pick rule's candidates and their confidences, cheapest first."""

    def __post_init__(self) -> None:
        if not hasattr(action(self.action), "outcome"):
            raise ValueError(f"{self.action} chooses another action: a decision carries the one it chose")

    @property
    def outcome(self) -> str:
        """What happened, in the words clients see: answer, escalate, hedge or refuse."""
        return action(self.action).outcome


class Action:
    name: ClassVar[str]
    outcome: ClassVar[str]
    """What clients see in x-router-decision: answer, escalate, hedge or refuse. An action that only
    chooses another (pick) has none: its decisions carry the action it chose."""
    needs_confidence: ClassVar[bool] = False
    """Reads the request's confidences whatever the rule's conditions are (pick: every candidate's)."""
    generates: ClassVar[bool] = True
    """A target answers; False: the shaped text is all there is (refuse)."""
    takes: ClassVar[frozenset[str]] = frozenset()
    """The OPTIONAL_FIELDS of a rule it reads."""

    def __init_subclass__(cls, *, name: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if name is None:
            return
        if name in ACTIONS:
            raise TypeError(f"action {name!r} is already registered by {ACTIONS[name].__name__}")
        cls.name = name
        ACTIONS[name] = cls

    @classmethod
    def problems(cls, policy: PolicyView, index: int, rule: RuleView) -> Iterator[tuple[Location, str]]:
        """Mistakes in a rule with this action: here, rule fields it does not read and an unknown target;
        subclasses add their own."""
        where: Location = ("rules", index)
        for field in OPTIONAL_FIELDS:
            if field not in cls.takes and getattr(rule, field) is not None:
                readers = [other.name for other in ACTIONS.values() if field in other.takes]
                only = f" (only {readers[0]} does)" if len(readers) == 1 else ""
                yield (*where, field), f"{cls.name} takes no {field}{only}"
        if rule.target is not None and rule.target not in policy.targets:
            yield (*where, "target"), f"unknown target '{rule.target}' (targets: {', '.join(policy.targets)})"

    @classmethod
    def default_message(cls, policy: PolicyView) -> str | None:
        """The message of a rule that gives none (hedge: the policy's template; refuse: its refusal)."""
        return None

    @classmethod
    def decide(
        cls,
        policy: PolicyView,
        index: int,
        rule: RuleView,
        known: Confidences | None,
        prices: Mapping[str, float],
    ) -> Decision:
        """The decision of the matching rule `index`; `known` is None when nothing asked for a score."""
        message = rule.message if rule.message is not None else cls.default_message(policy)
        tested = None if known is None else known.of(rule.when.confidence_of)
        return Decision(cls.name, rule.target, policy.rule_label(index), tested, message, index)

    @classmethod
    def shape(cls, answer: str, decision: Decision) -> str:
        """The text the client gets, from the answering target's."""
        return answer

    @classmethod
    def stream_prefix(cls, decision: Decision) -> str | None:
        """The text sent before the answer's tokens when the shaped text is that prefix and the answer;
        None: the shaped text needs the whole answer first."""
        return ""


def action(name: str) -> type[Action]:
    try:
        return ACTIONS[name]
    except KeyError:
        raise ValueError(f"unknown action '{name}' (known: {', '.join(known_actions())})") from None


def known_actions() -> list[str]:
    """The registered actions as errors list them: those that act alone first, then those that read
    confidences to choose another (pick)."""
    return sorted(ACTIONS, key=lambda name: ACTIONS[name].needs_confidence)


def registered_action(name: str) -> str:
    """A rule's `action:` as pydantic validates it, with the error a Literal of the known actions gives."""
    if name not in ACTIONS:
        quoted = [f"'{known}'" for known in known_actions()]
        expected = quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"
        raise PydanticCustomError("literal_error", "Input should be {expected}", {"expected": expected})
    return name
