"""POST, GET and DELETE /v1/responses: a Responses request resolved against the stored conversation it
continues, routed as the chat request it translates to, and answered as a Response object or its events;
the finished response stored for the tenant unless the request says store: false."""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from router.errors import APIError
from router.responses.events import ResponseEvents, sse
from router.responses.request import Item, ResponsesRequest
from router.responses.store import ResponseStore, Stored, not_found, previous_not_found
from router.responses.translate import Response, chat_request, from_chat, size, skeleton, stored_output
from router.stages.shaping import Routed

if TYPE_CHECKING:
    from router.service import Router
    from router.stages.answering import Spent

PASSED = ("instructions", "max_output_tokens", "tools", "tool_choice", "parallel_tool_calls", "temperature")
PASSED_TOO = ("top_p", "user")
"""The fields a target that speaks the API gets as the client sent them, besides `input`; it gets
`store: false` too: the router keeps conversations itself, per tenant, where an upstream would keep every
tenant's on the operator's account."""


@dataclass(frozen=True)
class Created:
    routed: Routed
    """What the x-router-* headers say."""
    content: bytes | None = None
    """The whole Response object's JSON; None for a stream."""
    stream: AsyncIterator[bytes] | None = None
    """The server-sent events of a stream."""


def _check_fields(request: ResponsesRequest) -> None:
    unknown = list(request.model_extra or {})
    if unknown:
        plural = "s" if len(unknown) > 1 else ""
        raise APIError(
            400,
            f"Unrecognized request argument{plural} supplied: {', '.join(unknown)}",
            param=unknown[0],
            code="unknown_parameter",
        )


def _upstream(request: ResponsesRequest, given: str | list[Item]) -> dict[str, Any]:
    payload: dict[str, Any] = {"input": given, "store": False}
    for name in (*PASSED, *PASSED_TOO):
        if getattr(request, name) is not None:
            payload[name] = getattr(request, name)
    return payload


async def create(
    router: Router,
    request: ResponsesRequest,
    tenant: str | None,
    spent: Spent | None,
    *,
    feedback: bool = False,
    session: str | None = None,
) -> Created:
    """`session`: the session key the HTTP layer found (a header, the user), when the policy pins sessions;
    with `sessions.key: previous_response_id` the chain's first response id is the key instead."""
    _check_fields(request)
    store = ResponseStore(router.policy.responses, router.store)
    previous = None
    if request.previous_response_id is not None:
        previous = await store.get(tenant, request.previous_response_id)
        if previous is None:
            raise previous_not_found(request.previous_response_id)
    items = [*(previous.items if previous else ()), *request.items]
    limit = router.policy.responses.max_bytes
    if request.store and (stored := size(items)) > limit:
        raise APIError(
            400,
            f"This conversation is {stored} bytes as JSON; the router stores at most {limit} (policy "
            "responses.max_bytes): start a new one, or send it with store: false",
            param="previous_response_id" if previous else "input",
            code="conversation_too_large",
        )
    response_id = f"resp_{uuid.uuid4().hex}"
    chain = previous.session if previous else response_id
    sessions = router.policy.sessions
    if sessions is not None and sessions.key == "previous_response_id":
        session = chain
    chat = chat_request(request, items)
    passthrough = _upstream(request, items if previous else request.input)
    routed = await router.route(
        chat, tenant, spent, feedback=feedback, session=session, passthrough=passthrough
    )
    response = skeleton(response_id, request, chat.model)

    async def keep(done: Response) -> None:
        await store.put(tenant, Stored(done, [*items, *stored_output(done)], chain))

    if routed.chunks is not None:
        events = routed.chunks if routed.passed else ResponseEvents(routed.chunks, response)
        routed = dataclasses.replace(routed, chunks=events)
        kept = keep if request.store else None
        return Created(routed, stream=sse(routed, events, response, router.metrics, kept))
    assert routed.body is not None
    if routed.passed:
        done, content = routed.body, routed.raw
    else:
        done = from_chat(routed.body, response)
        content = json.dumps(done, ensure_ascii=False).encode()
    if request.store:
        await keep(done)
    return Created(routed, content=content)


async def retrieve(router: Router, tenant: str | None, response_id: str) -> Response:
    stored = await ResponseStore(router.policy.responses, router.store).get(tenant, response_id)
    if stored is None:
        raise not_found(response_id)
    return stored.response


async def delete(router: Router, tenant: str | None, response_id: str) -> dict[str, Any]:
    if not await ResponseStore(router.policy.responses, router.store).delete(tenant, response_id):
        raise not_found(response_id)
    return {"id": response_id, "object": "response.deleted", "deleted": True}
