"""POST /v1/responses over real HTTP with the official openai SDK, keys and stored responses in a real Redis:
the tiny local model answers translated requests (whole and as the Responses events), an `openai` target on
loopback gets them passed through (its answer back byte for byte), previous_response_id continues a stored
conversation per tenant (and is this policy's session key), and GET/DELETE read and remove stored ones."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import openai
import pytest
from openai.types.responses import EasyInputMessageParam

from router.access.keys import ApiKey
from tests.conftest import Served, emptied, head_scorer_yaml, policy_from
from tests.faults import FaultServer
from tests.test_access import create, error
from tests.upstream_answers import RESPONSE_TEXT, response_answer, response_events

ADMIN = "admin-for-responses"
EVENTS = [
    "response.created",
    "response.output_item.added",
    "response.content_part.added",
    "response.output_text.delta",
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
]
"""A translated stream's events, each kind's first in this order; then response.completed, or
response.incomplete when the answer was cut at max_output_tokens."""


@pytest.fixture(scope="module")
def faults() -> Iterator[FaultServer]:
    server = FaultServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def proxy(
    serve: Callable[..., Served],
    faults: FaultServer,
    untied_model: Path,
    untied_head: Path,
    redis_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Served:
    """Model `upstream` passes through to the provider; the rest is scored and answered locally, by a tiny
    model that writes text. Sessions follow previous_response_id chains; a stored conversation holds at most
    4 KiB."""
    policy = policy_from(
        head_scorer_yaml(untied_model, untied_head)
        + f"""\
auth: required
targets:
  local: {{kind: local, max_tokens: 3}}
  upstream: {{kind: openai, model: ok, api_base: "{faults.base_url}", num_retries: 0}}
sessions: {{key: previous_response_id}}
responses: {{max_bytes: 4096}}
rules:
  - {{name: passed, when: {{model: upstream}}, action: answer_with, target: upstream}}
  - {{name: scored, when: {{confidence_at_least: 0.0}}, action: answer_with, target: local}}
  - {{action: answer_with, target: local}}
""",
        tmp_path_factory.mktemp("responses"),
    )
    return serve(policy, emptied(redis_url), admin_key=ADMIN)


@pytest.fixture(scope="module")
def keys(proxy: Served, redis_url: str) -> tuple[str, str]:
    """Two tenants' keys."""
    return create(redis_url, ApiKey("responder-a")), create(redis_url, ApiKey("responder-b"))


def client(proxy: Served, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{proxy.base_url}/v1", api_key=key, max_retries=0, timeout=60)


def test_a_response_is_routed_answered_stored_and_continued(proxy: Served, keys: tuple[str, str]) -> None:
    sdk = client(proxy, keys[0])
    raw = sdk.responses.with_raw_response.create(
        model="router", input="Who wrote Hamlet?", instructions="Answer briefly.", max_output_tokens=3
    )
    assert raw.headers["x-router-rule"] == "scored" and raw.headers["x-router-target"] == "local"
    assert 0 <= float(raw.headers["x-router-confidence"]) <= 1
    assert re.fullmatch(r"[0-9a-f]{32}", raw.headers["x-router-request-id"])
    assert raw.headers["x-router-session"] == "new"  # the first response of a chain
    first = raw.parse()
    assert first.object == "response" and first.status in ("completed", "incomplete")
    assert first.instructions == "Answer briefly." and first.model == "local"
    [message] = first.output
    assert message.type == "message" and message.content[0].type == "output_text"
    assert first.usage is not None and 0 < first.usage.output_tokens <= 3
    assert first.usage.total_tokens == first.usage.input_tokens + first.usage.output_tokens
    assert sdk.responses.retrieve(first.id).output_text == first.output_text

    # The rule would pass this one through, but its chain is pinned to the local model; its conversation is
    # the stored one and the new input, so the local model reads more than the new input alone.
    item: EasyInputMessageParam = {
        "role": "user",
        "content": [{"type": "input_text", "text": "And Macbeth?"}],
    }
    raw = sdk.responses.with_raw_response.create(
        model="upstream", input=[item], previous_response_id=first.id
    )
    assert raw.headers["x-router-rule"] == "passed" and raw.headers["x-router-target"] == "local"
    assert raw.headers["x-router-session"] == "pinned"
    second = raw.parse()
    assert second.previous_response_id == first.id
    assert second.usage is not None and second.usage.input_tokens > first.usage.input_tokens


def test_a_stream_is_the_responses_events_and_is_stored(proxy: Served, keys: tuple[str, str]) -> None:
    sdk = client(proxy, keys[0])
    events = list(sdk.responses.create(model="router", input="Who wrote Hamlet?", stream=True))
    kinds = [event.type for event in events]
    assert [kind for i, kind in enumerate(kinds[:-1]) if kind not in kinds[:i]] == EVENTS
    assert kinds[-1] == f"response.{events[-1].response.status}"  # type: ignore[union-attr]
    assert [event.sequence_number for event in events] == list(range(len(events)))
    text = "".join(event.delta for event in events if event.type == "response.output_text.delta")
    [done] = [event for event in events if event.type == "response.output_text.done"]
    completed = events[-1].response  # type: ignore[union-attr]
    assert done.text == text == completed.output_text
    assert completed.status in ("completed", "incomplete") and completed.usage is not None
    assert sdk.responses.retrieve(completed.id).output_text == text


def test_store_false_keeps_nothing_and_stored_responses_are_the_tenants_own(
    proxy: Served, keys: tuple[str, str]
) -> None:
    mine, theirs = client(proxy, keys[0]), client(proxy, keys[1])
    unstored = mine.responses.create(model="router", input="Hello", store=False)
    with pytest.raises(openai.NotFoundError):
        mine.responses.retrieve(unstored.id)
    with pytest.raises(openai.BadRequestError, match="not found") as refused:
        mine.responses.create(model="router", input="Again", previous_response_id=unstored.id)
    assert refused.value.code == "previous_response_not_found"

    kept = mine.responses.create(model="router", input="Hello")
    for attempt in (theirs.responses.retrieve, theirs.responses.delete):
        with pytest.raises(openai.NotFoundError):
            attempt(kept.id)
    with pytest.raises(openai.BadRequestError):  # nor can another tenant continue it
        theirs.responses.create(model="router", input="Hi", previous_response_id=kept.id)
    deleted = httpx.delete(
        f"{proxy.base_url}/v1/responses/{kept.id}", headers={"Authorization": f"Bearer {keys[0]}"}
    )
    assert deleted.json() == {"id": kept.id, "object": "response.deleted", "deleted": True}
    with pytest.raises(openai.NotFoundError):
        mine.responses.retrieve(kept.id)


def test_an_openai_target_gets_the_request_and_its_answer_comes_back_byte_for_byte(
    proxy: Served, faults: FaultServer, http: httpx.Client, keys: tuple[str, str]
) -> None:
    faults.reset()
    auth = {"Authorization": f"Bearer {keys[1]}"}
    body = {
        "model": "upstream",
        "input": "Who wrote Hamlet?",
        "metadata": {"team": "a"},
        "max_output_tokens": 9,
    }
    response = http.post(f"{proxy.base_url}/v1/responses", json=body, headers=auth)
    assert response.status_code == 200, response.text
    assert response.content == response_answer("ok")
    assert response.headers["x-router-target"] == "upstream" and response.headers["x-router-session"] == "new"
    [sent] = faults.recorded("ok")
    assert sent.path == "/v1/responses"
    assert sent.body == {
        "model": "ok",
        "input": "Who wrote Hamlet?",
        "max_output_tokens": 9,
        "store": False,  # the router keeps conversations, per tenant
        "stream": False,
    }

    chained = {"model": "upstream", "input": "And Macbeth?", "previous_response_id": "resp_upstream_1"}
    with http.stream(
        "POST", f"{proxy.base_url}/v1/responses", json={**chained, "stream": True}, headers=auth
    ) as streamed:
        assert streamed.status_code == 200 and streamed.headers["x-router-session"] == "pinned"
        assert streamed.headers["content-type"].startswith("text/event-stream")
        assert streamed.read() == b"".join(response_events("ok"))
    assert faults.recorded("ok")[-1].body["input"] == [  # type: ignore[index]
        {"type": "message", "role": "user", "content": "Who wrote Hamlet?"},
        {"type": "message", "role": "assistant", "content": RESPONSE_TEXT},
        {"type": "message", "role": "user", "content": "And Macbeth?"},
    ]


def test_an_upstream_that_breaks_off_mid_stream_ends_it_with_response_failed(
    proxy: Served, faults: FaultServer, keys: tuple[str, str]
) -> None:
    faults.script("ok", "stream-cut")
    events = list(client(proxy, keys[0]).responses.create(model="upstream", input="Hi", stream=True))
    assert [event.type for event in events] == [
        "response.created",
        "response.output_text.delta",
        "response.failed",
    ]
    failed = events[-1].response  # type: ignore[union-attr]
    assert failed.status == "failed" and failed.error is not None and "broke off" in failed.error.message
    assert failed.id == "resp_upstream_1"  # the response the upstream had begun


@pytest.mark.parametrize(
    ("fields", "param", "code"),
    [
        ({}, "input", "invalid_value"),
        ({"input": []}, "input", "invalid_value"),
        ({"input": [{"type": "input_image", "image_url": "http://x"}]}, "input", "invalid_value"),
        ({"input": [{"role": "user", "content": [{"type": "input_file"}]}]}, "input", "invalid_value"),
        ({"input": "x", "max_output_tokens": "4"}, "max_output_tokens", "invalid_value"),
        ({"input": "x", "tools": [{"type": "web_search"}]}, "tools", "invalid_value"),
        ({"input": "x", "reasoning": {"effort": "low"}}, "reasoning", "unknown_parameter"),
        (
            {"input": "x", "previous_response_id": "resp_nope"},
            "previous_response_id",
            "previous_response_not_found",
        ),
        ({"input": "x" * 5000}, "input", "conversation_too_large"),
    ],
)
def test_bad_input_is_a_400_in_openais_shape(
    proxy: Served, http: httpx.Client, fields: dict[str, object], param: str, code: str
) -> None:
    body = json.dumps({"model": "router", **fields})
    headers = {"Authorization": f"Bearer {ADMIN}", "content-type": "application/json"}
    response = http.post(f"{proxy.base_url}/v1/responses", content=body, headers=headers)
    assert response.status_code == 400, response.text
    assert error(response)["type"] == "invalid_request_error"
    assert str(error(response)["param"]).startswith(param) and error(response)["code"] == code
