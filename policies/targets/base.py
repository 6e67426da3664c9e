"""The target spec contract: what a policy's `targets:` entry of each kind takes.

Each spec class registers itself under the value of its `kind` Literal, the `kind:` a policy's target entry
gives; `target_union()`, what `Policy.targets` validates each entry as, is built from every registered kind,
so a new kind's spec is one module in this folder (every module here is imported by the package, so it
registers) and its answerer one module of router/targets/.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from policies.keywords import forwarding_problem

TARGET_KINDS: dict[str, type[Target]] = {}
_holders: list[Callable[[Any], None]] = []


class _Strict(BaseModel):
    # A typo in a policy must be an error, not a silently ignored key.
    model_config = ConfigDict(extra="forbid", frozen=True)


class Cost(_Strict):
    """US dollars per million tokens."""

    input_per_million: float = Field(ge=0)
    output_per_million: float = Field(ge=0)

    @property
    def blended(self) -> float:
        """What `pick` orders candidates by: input and output priced alike."""
        return self.input_per_million + self.output_per_million

    def of(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.input_per_million + completion_tokens * self.output_per_million) / 1e6


class Target(_Strict):
    """What every kind of target takes. A subclass with a `kind: Literal["..."]` field registers as that
    kind; one without (RemoteTarget) only gathers what several kinds take."""

    fallbacks: list[str] = []
    """Other targets that answer, in this order, when this one times out, is unreachable, answers 5xx or
    429 (after its own retries), is overloaded (local), or is cooling down; never after the client's own
    errors (docs/upstream.md). Only this list is followed, not the fallbacks' own."""
    if TYPE_CHECKING:
        # Every kind declares these, cost with its own meaning of None (checked as the kind registers):
        # declared here, pydantic would validate them ahead of the kind's own fields and reorder its errors.
        kind: str
        cost: Cost | None
        """What its answers cost: the dollars the router meters and pick's price."""

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        # pydantic's hook, not __init_subclass__: the `kind` field exists only once the class is built.
        super().__pydantic_init_subclass__(**kwargs)
        field = cls.model_fields.get("kind")
        annotation = None if field is None else field.annotation
        if get_origin(annotation) is not Literal or len(get_args(annotation)) != 1:
            return
        (kind,) = get_args(annotation)
        if "cost" not in cls.model_fields:
            raise TypeError(
                f"target kind {kind!r} declares no cost: the router meters and prices every target"
            )
        if kind in TARGET_KINDS:
            raise TypeError(f"target kind {kind!r} is already registered by {TARGET_KINDS[kind].__name__}")
        TARGET_KINDS[kind] = cls
        refresh_targets()


def _forwardable(name: str) -> str:
    problem = forwarding_problem(name)
    if problem is not None:
        raise ValueError(problem)
    return name


class Cooldown(_Strict):
    """A target that failed `failures` times within `window_s` is not called for `cooldown_s`, by any
    replica. Only failures a retry could help count: timeouts, connection failures, 5xx, 429."""

    failures: int = Field(3, ge=0)
    """0 turns the cooldown off."""
    window_s: float = Field(30.0, gt=0)
    cooldown_s: float = Field(30.0, gt=0)


class RemoteTarget(Target):
    """What every kind of remote target takes: a model behind an HTTP API, called with retries."""

    api_base: str | None = None
    api_key_env: str | None = None
    timeout_s: float = Field(60.0, gt=0)
    """Bounds the whole call, retries and their waits included (for a stream: until its first chunk; after
    that, each chunk must follow the one before within this time)."""
    num_retries: int = Field(1, ge=0)
    """Extra attempts after a timeout, a connection failure, a 5xx or a 429, within `timeout_s`; never
    after another 4xx (docs/upstream.md)."""
    max_tokens: int | None = Field(None, gt=0)
    """A cap on the answer's length: a client's max_tokens or max_completion_tokens above it is lowered to
    it, and a request giving neither gets max_tokens set to it (as the local target's max_tokens does)."""
    cost: Cost | None = None
    """None: litellm's cost map for `model` (0 for a model it does not price)."""
    extra_fields: tuple[Annotated[str, AfterValidator(_forwardable)], ...] = ()
    """Request fields beyond the OpenAI ones the router forwards that clients may send to this target
    (provider-specific extras such as top_k), passed on as they come. litellm's control keywords (api_base,
    fallbacks, extra_headers, mock_response, ...) are refused here: see policies/keywords.py."""
    cooldown: Cooldown = Cooldown()


@functools.cache
def _union(kinds: tuple[type[Target], ...]) -> Any:
    # Union[...] takes a tuple built at run time; `X | Y` is spelled out in the source.
    return Annotated[Union[kinds], Field(discriminator="kind")]  # noqa: UP007


def target_union() -> Any:
    """The type of a policy's target entry: the registered kinds, told apart by `kind`. An unknown kind's
    error lists them in this order: the in-process kinds first, then the remote ones."""
    ordered = sorted(TARGET_KINDS.values(), key=lambda spec: issubclass(spec, RemoteTarget))
    return _union(tuple(ordered))


def hold_targets(rebuild: Callable[[Any], None]) -> None:
    """Call `rebuild` with `target_union()` now and whenever it changes: a model with a field of targets
    (policies.schema.Policy) must rebuild to validate the kinds registered since."""
    _holders.append(rebuild)
    rebuild(target_union())


def refresh_targets() -> None:
    """Hand the holders the union of the kinds registered now. A kind registering calls it; so must code that
    removes one from TARGET_KINDS (a test's own kind)."""
    union = target_union()
    for rebuild in _holders:
        rebuild(union)
