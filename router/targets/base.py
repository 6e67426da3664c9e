"""The target contract: whatever answers a request, the in-process model or a remote one, answers through
`Answerer`, so that fallbacks, cooldowns, pick's prices and metrics treat every kind alike.

Each class registers itself under its `kind`, the name a policy's target entry uses for it. A new kind is
two modules: its spec, what a policy's entry of that kind takes, in policies/targets/ (policies/ imports
nothing of router/), and its answerer in this folder (every module here is imported by the package, so it
registers).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Collection, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from router import completions
from router.completions import Completion
from router.errors import APIError
from router.schemas import ChatCompletionRequest

if TYPE_CHECKING:
    from localmodel import Draft, LocalModel, Message
    from policies import Cooldown, Target
    from router.local_batch import GenerationBatcher

ANSWERERS: dict[str, type[Answerer]] = {}
Usage = dict[str, int]


class Chunks(Protocol):
    """A streamed answer; `aclose` releases what produces it (an upstream connection), read or not."""

    def __aiter__(self) -> AsyncIterator[Completion]: ...

    async def aclose(self) -> None: ...


class TargetFailed(APIError):
    """A failure that is news about the target, not about the request: it timed out, was unreachable,
    answered 5xx or 429, or is overloaded. Another target may answer instead, and it counts toward the
    target's cooldown. Uncaught, it is the client's error like any APIError."""

    def __init__(self, reason: str, status: int, message: str, **fields: Any) -> None:
        super().__init__(status, message, **fields)
        self.reason = reason
        """The failure's kind (timeout, connection, server, rate_limit, overloaded): a metric label."""


@dataclass(frozen=True)
class Asked:
    """One request as a target answers it, beyond the request itself."""

    request_id: str
    messages: list[Message]
    """The conversation as plain text messages, as the local model reads it."""
    draft: Draft | None = None
    """The local model's answer the scorer judged, when it drafted one: a local target answers with it."""
    prompt_checked: bool = False
    """The prompt already fits `limits.max_prompt_tokens` (a score computed for it just now checked)."""


@dataclass(frozen=True)
class Embedded:
    """Embeddings as a remote target answered them (POST /v1/embeddings)."""

    content: bytes
    """The JSON body the client gets: the upstream's own bytes where the target passes them through."""
    usage: Usage | None
    """Its token counts (prompt_tokens), when the upstream said."""


@dataclass(frozen=True)
class Responded:
    """A Responses request as a target that speaks that API answered it (POST /v1/responses)."""

    content: bytes
    """The upstream's body, byte for byte: what the client gets."""
    body: dict[str, Any]
    """The same, parsed: what the router stores and meters."""


@dataclass(frozen=True)
class LocalModelAccess:
    """What answering with the in-process model needs from the router that owns it."""

    model: LocalModel
    writer: GenerationBatcher
    """Writes local answers, concurrent ones as one batch; it bounds how many are written at once."""
    check_prompt: Callable[[list[Message]], Awaitable[None]]
    """Raises a 400 for a prompt longer than the model may read."""


class Answerer(ABC):
    kind: ClassVar[str]

    def __init__(self, name: str, spec: Target) -> None:
        self.name, self.spec = name, spec

    def __init_subclass__(cls, *, kind: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if kind is None:
            return
        if kind in ANSWERERS:
            raise TypeError(f"target kind {kind!r} is already registered by {ANSWERERS[kind].__name__}")
        cls.kind = kind
        ANSWERERS[kind] = cls

    @classmethod
    @abstractmethod
    def build(cls, name: str, spec: Target, local: LocalModelAccess) -> Answerer:
        """The answerer for the policy's target `name`; `local` is there for kinds that use the model."""

    @abstractmethod
    async def complete(self, request: ChatCompletionRequest, asked: Asked) -> Completion:
        """The whole answer."""

    async def stream(
        self, request: ChatCompletionRequest, asked: Asked, on_usage: Callable[[Usage | None], None]
    ) -> Chunks:
        """The answer as the client's stream, opened: failures before its first chunk raise from here.
        `on_usage` hears the answer's token counts where they are known (from a provider's stream, only
        when the client asked for them).

        By default, the whole answer replayed a word at a time."""
        body = await self.complete(request, asked)
        on_usage(body.get("usage"))
        return replay(completions.stream_chunks(body, request.include_usage))

    async def embed(self, fields: dict[str, Any]) -> Embedded:
        """Embeddings of an OpenAI embeddings request's `fields` (all but `model`, which is the target's).
        Kinds that cannot embed say so; a policy names only a remote target for embeddings."""
        raise APIError(
            404,
            f"The embeddings target '{self.name}' (kind {self.kind}) cannot embed",
            param="model",
            code="model_not_found",
        )

    @property
    def takes_tools(self) -> bool:
        """Whether it may answer a request that offers tools: every remote kind; a local target only when its
        policy entry says `accepts_tools` (the local model cannot call them)."""
        return True

    @property
    def speaks_responses(self) -> bool:
        """Whether its API takes OpenAI Responses requests (POST /v1/responses passes through to it, its
        answer passed back as it came); the others answer the request translated to chat."""
        return False

    async def respond(self, payload: dict[str, Any], on_usage: Callable[[Usage | None], None]) -> Responded:
        """A Responses request's answer, whole (`speaks_responses` kinds only); `payload`: the request's
        fields but the model, which is the target's."""
        raise NotImplementedError(f"target kind {self.kind} does not speak the Responses API")

    async def respond_stream(
        self, payload: dict[str, Any], on_usage: Callable[[Usage | None], None]
    ) -> Chunks:
        """A Responses request's answer as its stream of events, opened (`speaks_responses` kinds only)."""
        raise NotImplementedError(f"target kind {self.kind} does not speak the Responses API")

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        """US dollars at the target's declared cost; 0 without one."""
        cost = self.spec.cost
        return 0.0 if cost is None else cost.of(prompt_tokens, completion_tokens)

    @property
    def price(self) -> float:
        """Dollars per million tokens, input and output alike: what a pick rule orders candidates by."""
        million = 1_000_000
        return self.cost(million, 0) + self.cost(0, million)

    @property
    def extra_fields(self) -> Collection[str]:
        """Request fields beyond OpenAI's that this target takes."""
        return ()

    @property
    def cooldown(self) -> Cooldown | None:
        """None: never cooled down (its failures are this replica's own, as the local model's are)."""
        return None

    async def close(self) -> None:
        """Releases what the answerer holds (a connection pool) once its router is retired; streams it is
        still passing on may finish first."""
        return None


def build_answerer(name: str, spec: Target, local: LocalModelAccess) -> Answerer:
    return ANSWERERS[spec.kind].build(name, spec, local)


async def replay(chunks: Iterable[Completion]) -> AsyncGenerator[Completion]:
    for chunk in chunks:
        yield chunk


def check_fields(request: ChatCompletionRequest, declared: Collection[str]) -> None:
    """A 400 in OpenAI's words for fields that no target of the policy would take, before any model work.

    `declared`: the extra_fields of every target. A field some target declares is accepted whichever target
    answers, and reaches only the targets that declare it: whether a request is refused does not depend on
    how it happens to be routed."""
    unknown = request.unknown_fields(declared)
    if unknown:
        plural = "s" if len(unknown) > 1 else ""
        raise APIError(
            400,
            f"Unrecognized request argument{plural} supplied: {', '.join(unknown)}",
            param=unknown[0],
            code="unknown_parameter",
        )
