"""The condition contract: a `when:` field of a rule, how it matches a request, and its mistakes.

Each class registers itself under its `name` and declares the `when:` fields it adds; `When`, the model
of `when:`, is built from every registered condition, so a new condition is one module in this folder
(every module here is imported by the package, so it registers). Conditions are classes of class methods:
what a rule asks for lives in its `When`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Self

from pydantic import BaseModel, BeforeValidator, ConfigDict, create_model

from policies.checks import Location

if TYPE_CHECKING:
    from policies.facts import Confidences, RequestFacts
    from policies.views import PolicyView, RuleView

CONDITIONS: dict[str, type[Condition]] = {}
_holders: list[Callable[[type[When]], None]] = []


class When(BaseModel):
    """What `when_model()` builds on: a rule's conditions; all those it gives must hold."""

    # A typo in a policy must be an error, not a silently ignored key.
    model_config = ConfigDict(extra="forbid", frozen=True)

    if TYPE_CHECKING:
        # The fields are the registered conditions', known only once they have registered.
        def __getattr__(self, name: str) -> Any: ...

    @functools.cached_property
    def conditions(self) -> tuple[type[Condition], ...]:
        """The registered conditions this `when:` gives, in registration order (kept: rules are frozen and
        the engine asks on every request)."""
        return tuple(condition for condition in CONDITIONS.values() if condition.given(self))

    @functools.cached_property
    def scored_conditions(self) -> tuple[type[Condition], ...]:
        """Those of `conditions` that read the request's confidences."""
        return tuple(condition for condition in self.conditions if condition.needs_confidence)

    @functools.cached_property
    def unscored_conditions(self) -> tuple[type[Condition], ...]:
        """Those of `conditions` that read the request alone: tested first, so that a rule they rule out
        costs no scoring."""
        return tuple(condition for condition in self.conditions if not condition.needs_confidence)

    @property
    def needs_confidence(self) -> bool:
        return bool(self.scored_conditions)

    @property
    def is_empty(self) -> bool:
        return not self.conditions

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        copied = super().model_copy(update=update, deep=deep)
        for cached in ("conditions", "scored_conditions", "unscored_conditions"):
            copied.__dict__.pop(cached, None)  # an update may change which conditions it gives
        return copied


class Condition:
    name: ClassVar[str]
    fields: ClassVar[dict[str, Any]] = {}
    """The `when:` fields it adds, as pydantic field definitions `(type, default or Field(...))`. Each
    defaults to None: a rule without it does not ask for this condition."""
    needs_confidence: ClassVar[bool] = False
    """Matching reads the request's confidences (the engine scores only for rules that need it)."""

    def __init_subclass__(cls, *, name: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if name is None:
            return
        if name in CONDITIONS:
            raise TypeError(f"condition {name!r} is already registered by {CONDITIONS[name].__name__}")
        owners = {field: other.name for other in CONDITIONS.values() for field in other.fields}
        for field in cls.fields:
            if field in owners:
                raise TypeError(f"when.{field} is already a field of the {owners[field]} condition")
        cls.name = name
        CONDITIONS[name] = cls
        refresh_when()

    @classmethod
    def given(cls, when: When) -> bool:
        """Whether the rule asks for this condition: it sets one of its fields."""
        # getattr's default: a `when` validated before this condition registered lacks its fields.
        return any(getattr(when, field, None) is not None for field in cls.fields)

    @classmethod
    def matches(
        cls, when: When, facts: RequestFacts, known: Confidences | None, threshold: float | None
    ) -> bool:
        """Whether the request meets it. `known` is given when `needs_confidence`; `threshold` is the
        budget's confidence_below for this rule, which replaces the one written (docs/monitoring.md)."""
        raise NotImplementedError

    @classmethod
    def problems(cls, policy: PolicyView, index: int, rule: RuleView) -> Iterator[tuple[Location, str]]:
        """Mistakes in rule `index`'s use of this condition's fields that the field types cannot catch."""
        yield from ()


def _one_or_many(value: object) -> object:
    return [value] if isinstance(value, str) else value


Names = Annotated[list[str] | None, BeforeValidator(_one_or_many)]
"""A list of accepted values, which a policy may write as one string."""


class RequestField(Condition):
    """The request's field of the condition's name is one of the values listed: `when:` gets one field,
    of that name, of type `Names`."""

    def __init_subclass__(cls, *, name: str | None = None, **kwargs: Any) -> None:
        if name is not None:
            cls.fields = {name: (Names, None)}
        super().__init_subclass__(name=name, **kwargs)

    @classmethod
    def matches(
        cls, when: When, facts: RequestFacts, known: Confidences | None, threshold: float | None
    ) -> bool:
        return getattr(facts, cls.name) in getattr(when, cls.name)


@functools.cache
def _model(conditions: tuple[type[Condition], ...]) -> type[When]:
    fields = {field: spec for condition in conditions for field, spec in condition.fields.items()}
    return create_model("When", __base__=When, __module__=__name__, **fields)


def when_model() -> type[When]:
    """The model of `when:`: every registered condition's fields, and nothing else."""
    return _model(tuple(CONDITIONS.values()))


def hold_when(rebuild: Callable[[type[When]], None]) -> None:
    """Call `rebuild` with the model of `when:` now and whenever it changes: a model with a `when` field
    (policies.schema.Rule) must rebuild to validate the conditions registered since."""
    _holders.append(rebuild)
    rebuild(when_model())


def refresh_when() -> None:
    """Hand the holders the model of the conditions registered now. A condition registering calls it; so
    must code that removes one from CONDITIONS (a test's own condition)."""
    model = when_model()
    for rebuild in _holders:
        rebuild(model)
