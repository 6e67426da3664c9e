"""`kind: litellm` targets: any model litellm can reach.

A litellm target gets only the request fields the router knows (router.schemas.FORWARDED_FIELDS) and those
its policy entry declares (extra_fields); litellm's own control keywords never come from a client. The
router retries (router/targets/remote.py), not litellm nor the openai client under it. Upstream failures
become errors that say what happened (docs/upstream.md has the table).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import AsyncIterator, Callable
from typing import Any

from policies import LiteLLMTarget, Target
from router.completions import Completion
from router.schemas import ChatCompletionRequest
from router.targets.base import Asked, Embedded, LocalModelAccess, Usage
from router.targets.litellm_errors import Malformed
from router.targets.remote import Opened, RemoteAnswerer, StreamUsage, backoff, finishes

# litellm fetches its model cost map from the internet at import unless told otherwise; we run offline.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
# For providers that take images inline, litellm downloads a client's image URL from this host, blocking
# the event loop: a client could make the router fetch any public URL. Off unless the operator allows it.
os.environ.setdefault("MAX_IMAGE_URL_DOWNLOAD_SIZE_MB", "0")

log = logging.getLogger("router")
__all__ = ["LiteLLMUpstream", "backoff"]


class LiteLLMUpstream(RemoteAnswerer, kind="litellm"):
    target: LiteLLMTarget

    def __init__(self, name: str, target: LiteLLMTarget) -> None:
        super().__init__(name, target)
        import litellm  # slow to import: only policies with litellm targets pay for it
        from litellm.types.utils import all_litellm_params

        # policies/keywords.py refuses control keywords at policy load; this is litellm's own list, for a
        # keyword that list does not know yet.
        clash = sorted(set(target.extra_fields) & set(all_litellm_params))
        if clash:
            raise ValueError(f"target '{name}': extra_fields {', '.join(clash)} are litellm control keywords")
        self._litellm = litellm
        _warm_up(litellm)

    @classmethod
    def build(cls, name: str, spec: Target, local: LocalModelAccess) -> LiteLLMUpstream:
        assert isinstance(spec, LiteLLMTarget)
        return cls(name, spec)

    def _arguments(self, request: ChatCompletionRequest, streamed: bool) -> dict[str, Any]:
        arguments = self.forwarded(request, streamed)
        arguments.update(self._call(), messages=request.forwarded_messages())
        return arguments

    def _call(self) -> dict[str, Any]:
        """What every litellm call of this target takes: its model, endpoint and key."""
        # The router retries (see RemoteAnswerer.retrying); neither litellm nor the openai client may.
        arguments: dict[str, Any] = {"model": self.target.model, "num_retries": 0, "max_retries": 0}
        if self.target.api_base:
            arguments["api_base"] = self.target.api_base
        key = self.api_key()
        if key is not None:
            arguments["api_key"] = key
        return arguments

    async def embed(self, fields: dict[str, Any]) -> Embedded:
        """litellm's embeddings call, retrying like `complete`; the body is litellm's response as JSON."""
        arguments = {**fields, **self._call()}
        timeout = self.target.timeout_s  # one for every call: see `complete`

        async def attempt(_: float) -> Embedded:
            response = await self._litellm.aembedding(**arguments, timeout=timeout)
            body = dict(response.model_dump())
            if not isinstance(body.get("data"), list):
                raise Malformed("an embeddings answer without data")
            usage = body.get("usage")
            return Embedded(json.dumps(body).encode(), usage if isinstance(usage, dict) else None)

        return await self.retrying(attempt)

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        """US dollars at the target's declared cost, else litellm's cost map; 0 for models it does not
        price (self-hosted ones)."""
        if self.target.cost is not None:
            return self.target.cost.of(prompt_tokens, completion_tokens)
        try:
            prompt, completion = self._litellm.cost_per_token(
                model=self.target.model, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens
            )
        except Exception:  # litellm raises a bare Exception for a model missing from its map
            return 0.0
        return float(prompt + completion)

    async def complete(self, request: ChatCompletionRequest, asked: Asked | None = None) -> Completion:
        arguments = self._arguments(request, streamed=False)
        # One timeout for every call, the target's: litellm keys its cached clients by it, so a timeout of
        # what is left of the deadline (which `retrying` enforces anyway) built a new client, with an aiohttp
        # session of its own, per call.
        timeout = self.target.timeout_s

        async def attempt(_: float) -> Completion:
            response = await self._litellm.acompletion(**arguments, timeout=timeout)
            body = dict(response.model_dump())
            if not body.get("choices"):
                raise Malformed("a completion without choices")
            return body

        return await self.retrying(attempt)

    async def stream(
        self,
        request: ChatCompletionRequest,
        asked: Asked | None = None,
        on_usage: Callable[[Usage | None], None] | None = None,
    ) -> Opened:
        """Opens the stream and reads its first chunk before returning, retrying like `complete`: a target
        that fails before it has said anything is then an HTTP error, not a cut stream. A stream that breaks
        off later raises from the iterator (the client's stream then ends with an error event)."""
        arguments = self._arguments(request, streamed=True)
        # Usage is asked for whether or not the client asked: an answer's tokens are metered and count
        # toward its caller's limits either way. A client that did not ask does not see it.
        arguments["stream_options"] = {**(arguments.get("stream_options") or {}), "include_usage": True}
        # Each read may take timeout_s (the httpx timeout litellm sets); the deadline bounds the opening.
        read_timeout = self.target.timeout_s

        async def attempt(_: float) -> tuple[Any, AsyncIterator[Any], Completion]:
            response = await self._litellm.acompletion(**arguments, stream=True, timeout=read_timeout)
            chunks = aiter(response)
            try:
                first = await anext(chunks)
                data = dict(first.model_dump(exclude_none=True))
                self._check_chunk(response, data)
            except StopAsyncIteration:
                await _close(response)
                raise Malformed("an empty stream") from None
            except BaseException:
                await _close(response)
                raise
            return response, chunks, data

        response, chunks, first = await self.retrying(attempt)

        async def release() -> None:
            await _close(response)

        usage = StreamUsage(on_usage, request.include_usage)
        return Opened(self.relay(first, self._dumped(response, chunks), usage, release), release)

    async def _dumped(self, response: Any, chunks: AsyncIterator[Any]) -> AsyncIterator[Completion]:
        async for chunk in chunks:
            data = dict(chunk.model_dump(exclude_none=True))
            self._check_chunk(response, data)
            yield data

    @staticmethod
    def _check_chunk(response: Any, chunk: Completion) -> None:
        """litellm ends every stream with a finish_reason chunk, inventing "stop" when the upstream sent
        none: for a body that was not an event stream at all, or one cut short but cleanly closed. It keeps
        what the upstream did send, which tells the two apart."""
        if not finishes(chunk):
            return
        missing = object()
        received = getattr(response, "received_finish_reason", missing)
        if received is missing:  # a litellm without the attribute: nothing to tell by
            return
        if received is None and getattr(response, "intermittent_finish_reason", None) is None:
            raise Malformed("the stream ended without a finish_reason from the upstream")


_warmed = False


def _warm_up(litellm: Any) -> None:
    """litellm's first call imports the rest of litellm and the openai client (about a second, several on a
    busy machine), blocking the event loop and eating into the first request's deadline. A mocked call, made
    while the policy loads (off the event loop, without network), does it instead."""
    global _warmed
    if _warmed:
        return
    _warmed = True
    litellm.suppress_debug_info = True  # no "Give Feedback / Get Help" banners on stdout per failure
    try:
        import openai.resources.chat  # noqa: F401  (what the openai client imports on its first request)

        litellm.completion(
            model="openai/warm-up", messages=[{"role": "user", "content": "-"}], mock_response="-"
        )
    except Exception:
        log.debug("warming litellm up failed", exc_info=True)


async def _close(response: Any) -> None:
    """Releases a litellm stream's connection (best effort: it may be half gone already)."""
    close = getattr(response, "aclose", None)
    if close is None:
        return
    try:
        await close()
    except Exception:
        log.debug("closing a stream failed", exc_info=True)
