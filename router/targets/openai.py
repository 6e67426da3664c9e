"""`kind: openai` targets: an OpenAI-compatible chat-completions API (OpenAI, vLLM, llama.cpp, another
router...), called over one pooled HTTP client per target, its answers passed on as they come.

No litellm on this path: a call through litellm cost ~3 ms of CPU on this project's benchmark machine (its
response types, cost calculation, logging, a thread hop), several times the rest of the request
(docs/benchmarks.md). The client is aiohttp's, not httpx's: httpx's connection pool scans every pooled
connection on every request, 1.7 ms of CPU per request at 32 concurrent ones against aiohttp's 0.09 ms.
The request is the allow-listed fields as JSON, the answer the upstream's JSON, a stream its server-sent
events parsed one by one. Retries, errors, usage and fallbacks are the litellm target's
(router/targets/remote.py, litellm_errors.py): the failures below are raised so that `classify` reads them
as it reads litellm's.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from policies import OpenAITarget, Target
from router.completions import Completion
from router.schemas import ChatCompletionRequest
from router.targets import responses_upstream
from router.targets.base import Asked, Embedded, LocalModelAccess, Responded, Usage
from router.targets.litellm_errors import Malformed
from router.targets.remote import Opened, RemoteAnswerer, StreamUsage
from router.targets.upstream_status import UpstreamStatus, opened_stream, sse_data, upstream_json

log = logging.getLogger("router")

KEEPALIVE_S = 30.0
"""How long an idle pooled connection is kept for the next request."""


class OpenAIUpstream(RemoteAnswerer, kind="openai"):
    target: OpenAITarget

    def __init__(self, name: str, target: OpenAITarget) -> None:
        super().__init__(name, target)
        self.url = target.api_base.rstrip("/") + "/chat/completions"
        self.embeddings_url = target.api_base.rstrip("/") + "/embeddings"
        self.responses_url = target.api_base.rstrip("/") + "/responses"
        # No redirects: one would be a wrong api_base (and may point the key at another host).
        self._options = {"allow_redirects": False, **_env_proxy(self.url)}
        self._prices = listed_prices(target.model) if target.cost is None else None
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._open: set[aiohttp.ClientResponse] = set()
        """Streams being passed on: `close` leaves the pool open until they are done."""
        self._closing = False

    @classmethod
    def build(cls, name: str, spec: Target, local: LocalModelAccess) -> OpenAIUpstream:
        assert isinstance(spec, OpenAITarget)
        return cls(name, spec)

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        """US dollars at the target's declared cost, else at litellm's list price for the model (its bundled
        price list, read once); 0 for a model the list does not price (self-hosted ones)."""
        if self.target.cost is not None:
            return self.target.cost.of(prompt_tokens, completion_tokens)
        if self._prices is None:
            return 0.0
        return prompt_tokens * self._prices[0] + completion_tokens * self._prices[1]

    def _http(self) -> aiohttp.ClientSession:
        """The pooled client, made in the loop that uses it (its connections belong to that loop): the
        router is built off the event loop, and a test may run one router in several loops."""
        loop = asyncio.get_running_loop()
        if self._session is None or self._loop is not loop:
            self._session, self._loop = _session(self.target.timeout_s), loop
        return self._session

    def _call(self, request: ChatCompletionRequest, streamed: bool) -> tuple[bytes, dict[str, str]]:
        """The request's JSON body and headers."""
        payload = self.forwarded(request, streamed)
        payload["model"] = self.target.model
        payload["messages"] = request.forwarded_messages()
        if streamed:
            payload["stream"] = True
            # Usage is asked for whether or not the client asked: an answer's tokens are metered and count
            # toward its caller's limits either way. A client that did not ask does not see it.
            payload["stream_options"] = {**(payload.get("stream_options") or {}), "include_usage": True}
        return json.dumps(payload, ensure_ascii=False).encode(), self._headers()

    def _headers(self) -> dict[str, str]:
        headers = {"content-type": "application/json"}
        key = self.api_key()
        if key is not None:
            headers["authorization"] = f"Bearer {key}"
        return headers

    async def embed(self, fields: dict[str, Any]) -> Embedded:
        """POSTs to `{api_base}/embeddings`, retrying like `complete`; the upstream's body is returned as its
        bytes, so the client reads exactly what the upstream wrote."""
        body = json.dumps({**fields, "model": self.target.model}, ensure_ascii=False).encode()
        headers = self._headers()

        async def attempt(_: float) -> Embedded:
            posted = self._http().post(self.embeddings_url, data=body, headers=headers, **self._options)
            async with posted as response:
                content = await response.read()
            if response.status >= 300:
                raise UpstreamStatus(response.status, response.headers, content)
            answer = upstream_json(content)
            if not isinstance(answer, dict) or not isinstance(answer.get("data"), list):
                raise Malformed("an embeddings answer without data")
            usage = answer.get("usage")
            return Embedded(content, usage if isinstance(usage, dict) else None)

        return await self.retrying(attempt)

    async def complete(self, request: ChatCompletionRequest, asked: Asked | None = None) -> Completion:
        body, headers = self._call(request, streamed=False)

        async def attempt(_: float) -> Completion:
            async with self._http().post(self.url, data=body, headers=headers, **self._options) as response:
                content = await response.read()
            if response.status >= 300:
                raise UpstreamStatus(response.status, response.headers, content)
            answer = upstream_json(content)
            if not isinstance(answer, dict) or not answer.get("choices"):
                raise Malformed("a completion without choices")
            return answer

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
        body, headers = self._call(request, streamed=True)
        http = self._http()

        async def attempt(_: float) -> tuple[aiohttp.ClientResponse, AsyncIterator[Completion], Completion]:
            return await opened_stream(http, self.url, body, headers, self._options, events)

        response, chunks, first = await self.retrying(attempt)
        usage = StreamUsage(on_usage, request.include_usage)
        release = self.held(response)
        return Opened(self.relay(first, chunks, usage, release), release)

    def held(self, response: aiohttp.ClientResponse) -> Callable[[], Awaitable[None]]:
        """Counts a stream being passed on (`close` waits for it); what releases it, once, however it ends."""
        self._open.add(response)

        async def release() -> None:
            if response not in self._open:
                return
            self._open.discard(response)
            if response.content.at_eof():
                response.release()  # read to its end: the connection goes back to the pool
            else:
                response.close()  # the upstream sees the connection go, and stops writing
            if self._closing and not self._open:
                await self.close()

        return release

    @property
    def speaks_responses(self) -> bool:
        return True

    async def respond(self, payload: dict[str, Any], on_usage: Callable[[Usage | None], None]) -> Responded:
        """POSTs to `{api_base}/responses` (router/targets/responses_upstream.py)."""
        return await responses_upstream.respond(self, payload, on_usage)

    async def respond_stream(
        self, payload: dict[str, Any], on_usage: Callable[[Usage | None], None]
    ) -> Opened:
        return await responses_upstream.respond_stream(self, payload, on_usage)

    async def close(self) -> None:
        """Closes the pool once the streams it still passes on are done."""
        self._closing = True
        if self._open or self._session is None:
            return
        session, self._session = self._session, None
        await session.close()


def _session(timeout_s: float) -> aiohttp.ClientSession:
    # Each read and each connect may take timeout_s (a stream's chunks); the deadline in `retrying` bounds a
    # whole call. No limit on connections (the clients' concurrency bounds them). trust_env off: with it
    # aiohttp looks the proxy up on a worker thread per request; _env_proxy does it once.
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeout_s, sock_read=timeout_s)
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=KEEPALIVE_S)
    return aiohttp.ClientSession(
        connector=connector, timeout=timeout, trust_env=False, raise_for_status=False
    )


def _env_proxy(url: str) -> dict[str, Any]:
    """The proxy HTTP(S)_PROXY and NO_PROXY give for `url` (as litellm's clients take them), as
    `post` keywords; none without one."""
    from aiohttp.helpers import get_env_proxy_for_url
    from yarl import URL

    try:
        proxy, auth = get_env_proxy_for_url(URL(url))
    except LookupError:
        return {}
    return {"proxy": proxy, "proxy_auth": auth}


async def events(pieces: AsyncIterator[bytes]) -> AsyncIterator[Completion]:
    """The chat-completion chunks of a server-sent event stream (its body as it arrives, in pieces of any
    size), until `data: [DONE]` or its end. A data line that is not a JSON object raises Malformed; an
    error event raises UpstreamStatus with the status it names (else 502). Comments
    (keep-alives) and other fields are skipped."""
    async for event in sse_data(pieces):
        yield _chunk(event)


def _chunk(event: bytes) -> Completion:
    chunk = upstream_json(event)
    if not isinstance(chunk, dict):
        raise Malformed("an event that is not a chat completion chunk")
    error = chunk.get("error")
    if error is not None:  # vLLM and others report a failure inside the stream
        code = error.get("code") if isinstance(error, dict) else None
        status = code if isinstance(code, int) and 400 <= code < 600 else 502
        raise UpstreamStatus(status, {}, json.dumps({"error": error}).encode())
    return chunk


@functools.cache
def _price_list() -> dict[str, tuple[float, float]]:
    """litellm's bundled price list as model -> (dollars per input token, per output token), read from its
    JSON without importing litellm (seconds, and a hundred MB); empty where litellm is not installed."""
    spec = importlib.util.find_spec("litellm")
    if spec is None or spec.origin is None:
        return {}
    path = Path(spec.origin).parent / "model_prices_and_context_window_backup.json"
    try:
        listed = json.loads(path.read_text())
    except (OSError, ValueError):
        log.warning("litellm's price list at %s could not be read: openai targets cost 0", path)
        return {}
    prices = {}
    for model, entry in listed.items():
        if isinstance(entry, dict):
            given, taken = entry.get("input_cost_per_token"), entry.get("output_cost_per_token")
            if isinstance(given, int | float) and isinstance(taken, int | float):
                prices[model] = (float(given), float(taken))
    return prices


def listed_prices(model: str) -> tuple[float, float] | None:
    return _price_list().get(model)
