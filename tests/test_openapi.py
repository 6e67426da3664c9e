"""The OpenAPI document tells the truth: schemathesis reads /openapi.json from a proxy served over real HTTP,
generates valid and invalid requests for every operation, and checks each response against the document
(no 5xx; a documented status, content type, body schema and headers).

Schemathesis's Python API (`as_strategy`) rather than its pytest integration, which does not run on
pytest 9.2 (it sets `Function._nodeid`); its plugin is off (`-p no:schemathesis` in pyproject.toml)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import Case, GenerationMode
from schemathesis.checks import CheckFunction, not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.schemas import BaseSchema
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from policies import load_policy
from router.app import create_app
from router.openapi import ERRORS
from tests.conftest import Served, head_scorer_yaml
from tests.faults import FaultServer

ADMIN_KEY = "admin-key-for-openapi-tests"
CHECKS: list[CheckFunction] = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
# Generated requests per operation, valid and invalid ones together (operations without parameters stop
# after their one distinct request): the module takes about 20 s on two cores, half of it the fixtures.
EXAMPLES = 40
OPERATIONS = sorted(ERRORS, key=lambda operation: (operation[1], operation[0]))


@pytest.fixture(scope="module")
def faults() -> Iterator[FaultServer]:
    server = FaultServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def served(
    serve: Callable[..., Served],
    faults: FaultServer,
    tiny_model: Path,
    tiny_head: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Served:
    """Every decision has a path to it: answers and hedges of the tiny model (2 tokens, so generation is
    quick), refusals, a remote target without its key (502); embeddings from a provider on loopback; a 64 KiB
    body limit (413); a policy file and an admin key, so that reloads succeed."""
    path = tmp_path_factory.mktemp("openapi") / "policy.yaml"
    path.write_text(
        head_scorer_yaml(tiny_model, tiny_head)
        + f"""\
targets:
  local: {{kind: local, max_tokens: 2}}
  keyless: {{kind: litellm, model: openai/gpt-4o-mini, api_key_env: ROUTER_TEST_KEY_THAT_IS_NEVER_SET}}
  embedder: {{kind: openai, model: ok, api_base: "{faults.base_url}", num_retries: 0}}
embeddings: embedder
rules:
  - {{when: {{model: keyless}}, action: answer_with, target: keyless}}
  - {{when: {{user: refuse}}, action: refuse}}
  - {{when: {{confidence_below: 0.5}}, action: hedge, target: local}}
  - {{action: answer_with, target: local}}
limits: {{max_body_bytes: 65536}}
"""
    )
    return serve(load_policy(path), policy_path=path, admin_key=ADMIN_KEY)


@pytest.fixture(scope="module")
def answered(served: Served) -> str:
    """The request id of one answer, so that some generated feedback is about a logged decision."""
    body = {"model": "router", "messages": [{"role": "user", "content": "Who wrote Hamlet?"}]}
    keep = {"x-router-feedback": "keep"}
    response = httpx.post(f"{served.base_url}/v1/chat/completions", json=body, headers=keep, timeout=60)
    assert response.status_code == 200, response.text
    return str(response.headers["x-router-request-id"])


@pytest.fixture(scope="module")
def api(served: Served) -> BaseSchema:
    return schemathesis.openapi.from_url(f"{served.base_url}/openapi.json", timeout=30)


def aimed(case: Case, request_id: str) -> None:
    """Random model names, request ids and keys miss; some of them become ones that exist, so that valid
    requests also reach answers, streams, refusals, recorded and conflicting feedback, and reloads. (Not the
    keyless target: its 502 is a server error by design, checked in KNOWN.)"""
    body = case.body
    model = body.get("model") if isinstance(body, dict) else None
    answered = ("/v1/chat/completions", "/v1/completions", "/v1/responses")
    if case.path in answered and isinstance(body, dict) and isinstance(model, str):
        body["model"] = (model, "router", "local")[len(model) % 3]
    if (
        case.path == "/v1/feedback"
        and isinstance(body, dict)
        and str(body.get("request_id"))[:1] in "01234567"
    ):
        body["request_id"] = request_id
    key = case.headers.get("authorization") if case.headers else None
    if case.path == "/admin/reload" and isinstance(key, str) and len(key) % 2 == 0:
        case.headers["authorization"] = f"Bearer {ADMIN_KEY}"


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m.upper()} {p}" for m, p in OPERATIONS])
def test_every_response_is_what_the_document_says(
    api: BaseSchema, answered: str, method: str, path: str
) -> None:
    operation = api[path][method.upper()]
    modes = [GenerationMode.POSITIVE]
    if "requestBody" in operation.definition.raw:  # nothing else can be made invalid: no query, no path
        modes.append(GenerationMode.NEGATIVE)
    cases = st.one_of(*(operation.as_strategy(generation_mode=mode) for mode in modes))

    @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(cases)
    def conforms(case: Case) -> None:
        aimed(case, answered)
        case.call_and_validate(checks=CHECKS, timeout=60)

    conforms()


QUESTION = [{"role": "user", "content": "Who wrote Hamlet?"}]
# Responses random requests seldom reach, each checked against the document the same way.
KNOWN: list[tuple[str, str, dict[str, Any] | None, dict[str, str], int]] = [
    ("post", "/v1/chat/completions", {"model": "router", "messages": QUESTION}, {}, 200),
    ("post", "/v1/chat/completions", {"model": "local", "messages": QUESTION, "stream": True}, {}, 200),
    (
        "post",
        "/v1/chat/completions",
        {"model": "router", "messages": QUESTION, "stream": True, "stream_options": {"include_usage": True}},
        {},
        200,
    ),
    ("post", "/v1/chat/completions", {"model": "router", "messages": QUESTION, "user": "refuse"}, {}, 200),
    ("post", "/v1/chat/completions", {"model": "keyless", "messages": QUESTION}, {}, 502),
    ("post", "/v1/chat/completions", {"model": "gpt-5", "messages": QUESTION}, {}, 404),
    ("post", "/v1/chat/completions", {"model": "router"}, {}, 400),
    (
        "post",
        "/v1/chat/completions",
        {"model": "router", "messages": [{"role": "user", "content": "x" * 70_000}]},
        {},
        413,
    ),
    ("post", "/v1/completions", {"model": "router", "prompt": "Who wrote Hamlet?"}, {}, 200),
    ("post", "/v1/completions", {"model": "local", "prompt": ["Who wrote Hamlet?"], "stream": True}, {}, 200),
    (
        "post",
        "/v1/completions",
        {"model": "router", "prompt": "Hi", "user": "refuse", "stream": True},
        {},
        200,
    ),
    ("post", "/v1/completions", {"model": "router", "prompt": ["one", "two"]}, {}, 400),
    ("post", "/v1/completions", {"model": "keyless", "prompt": "Who wrote Hamlet?"}, {}, 502),
    ("post", "/v1/responses", {"model": "router", "input": "Who wrote Hamlet?"}, {}, 200),
    ("post", "/v1/responses", {"model": "local", "input": "Who wrote Hamlet?", "stream": True}, {}, 200),
    ("post", "/v1/responses", {"model": "router", "input": "Hi", "user": "refuse", "stream": True}, {}, 200),
    ("post", "/v1/responses", {"model": "router", "input": [{"type": "reasoning"}]}, {}, 400),
    ("post", "/v1/responses", {"model": "keyless", "input": "Who wrote Hamlet?"}, {}, 502),
    ("get", "/v1/responses/resp_unknown", None, {}, 404),
    ("delete", "/v1/responses/resp_unknown", None, {}, 404),
    ("post", "/v1/embeddings", {"model": "m", "input": ["one", "two"]}, {}, 200),
    ("post", "/v1/embeddings", {"model": "m"}, {}, 400),
    ("post", "/v1/score", {"question": "Who wrote Hamlet?"}, {}, 200),
    ("post", "/v1/score", {"messages": QUESTION, "question": "Who wrote Hamlet?"}, {}, 400),
    ("post", "/v1/feedback", {"request_id": "0" * 32, "correct": True}, {}, 404),
    ("post", "/admin/reload", None, {"authorization": f"Bearer {ADMIN_KEY}"}, 200),
    ("post", "/admin/reload", None, {"authorization": "Bearer wrong"}, 401),
]


@pytest.mark.parametrize(("method", "path", "body", "headers", "status"), KNOWN)
def test_known_responses_are_what_the_document_says(
    api: BaseSchema,
    method: str,
    path: str,
    body: dict[str, Any] | None,
    headers: dict[str, str],
    status: int,
) -> None:
    if path.startswith("/v1/responses/"):  # a path parameter: the operation is the template's
        operation = api["/v1/responses/{response_id}"][method.upper()]
        case = operation.Case(headers=headers, path_parameters={"response_id": path.rsplit("/", 1)[1]})
        response = case.call_and_validate(checks=CHECKS, timeout=60)
        assert response.status_code == status, response.text
        return
    operation = api[path][method.upper()]
    if body is None:
        case = operation.Case(headers=headers)
    else:
        case = operation.Case(headers=headers, body=body, media_type="application/json")
    # A 5xx the policy provokes (a target without its key) is still checked against the document.
    checks = CHECKS if status < 500 else [check for check in CHECKS if check is not not_a_server_error]
    response = case.call_and_validate(checks=checks, timeout=60)
    assert response.status_code == status, response.text


def test_feedback_answers_are_what_the_document_says(api: BaseSchema, served: Served) -> None:
    chat = {"model": "router", "messages": QUESTION}
    keep = {"x-router-feedback": "keep"}
    response = httpx.post(f"{served.base_url}/v1/chat/completions", json=chat, headers=keep, timeout=60)
    request_id = response.headers["x-router-request-id"]
    operation = api["/v1/feedback"]["POST"]
    labels: list[tuple[dict[str, Any], int]] = [
        ({"correct": True}, 200),
        ({"correct": True}, 200),
        ({"score": 0.25}, 409),
    ]
    for label, status in labels:
        case = operation.Case(body={"request_id": request_id, **label}, media_type="application/json")
        assert case.call_and_validate(checks=CHECKS, timeout=60).status_code == status


def test_stored_responses_are_what_the_document_says(api: BaseSchema, served: Served) -> None:
    body = {"model": "router", "input": "Who wrote Hamlet?"}
    created = httpx.post(f"{served.base_url}/v1/responses", json=body, timeout=60).json()
    stored = api["/v1/responses/{response_id}"]
    for method, status in (("GET", 200), ("DELETE", 200), ("GET", 404), ("DELETE", 404)):
        case = stored[method].Case(path_parameters={"response_id": created["id"]})
        assert case.call_and_validate(checks=CHECKS, timeout=60).status_code == status


def test_the_document_covers_every_route(api: BaseSchema) -> None:
    results = list(api.get_all_operations())
    operations = [result.ok() for result in results if isinstance(result, Ok)]
    assert len(operations) == len(results)  # every operation is one schemathesis can test
    assert {(operation.method.lower(), operation.path) for operation in operations} == set(ERRORS)


def test_the_document_declares_the_real_errors_and_media_types(served: Served) -> None:
    document = httpx.get(f"{served.base_url}/openapi.json").json()
    paths = document["paths"]
    assert "HTTPValidationError" not in json.dumps(document)
    for item in paths.values():
        for operation in item.values():
            assert "422" not in operation["responses"]
            assert operation["responses"]["500"]["content"]["application/json"]["schema"] == {
                "$ref": "#/components/schemas/Error"
            }
    for routed in ("/v1/chat/completions", "/v1/responses"):
        answers = paths[routed]["post"]["responses"]
        assert set(answers) == {"200", "400", "401", "403", "404", "413", "429", "500", "502", "503", "504"}
        assert set(answers["200"]["content"]) == {"application/json", "text/event-stream"}
    assert set(paths["/v1/responses/{response_id}"]["get"]["responses"]) == {
        "200",
        "401",
        "404",
        "429",
        "500",
        "503",
    }
    assert set(paths["/v1/feedback"]["post"]["responses"]) == {
        "200",
        "400",
        "401",
        "404",
        "409",
        "413",
        "500",
        "503",
    }
    assert set(paths["/v1/score"]["post"]["responses"]) == {"200", "400", "401", "413", "429", "500", "503"}
    assert set(paths["/metrics"]["get"]["responses"]) == {"200", "401", "403", "500"}
    assert {"400", "401", "403", "409"} <= set(paths["/admin/reload"]["post"]["responses"])
    ready = paths["/readyz"]["get"]["responses"]["503"]["content"]["application/json"]["schema"]
    assert ready == {"$ref": "#/components/schemas/Readiness"}
    assert set(paths["/metrics"]["get"]["responses"]["200"]["content"]) == {"text/plain"}
    assert httpx.get(f"{served.base_url}/metrics").headers["content-type"].startswith("text/plain")


@pytest.fixture
def unstarted(tiny_model: Path, tiny_head: Path, tmp_path: Path) -> FastAPI:
    """An app whose lifespan never runs (TestClient without `with`): its model never loads."""
    path = tmp_path / "policy.yaml"
    path.write_text(
        head_scorer_yaml(tiny_model, tiny_head)
        + "targets: {local: {kind: local}}\nrules: [{action: answer_with, target: local}]\n"
    )
    return create_app(load_policy(path))


def test_not_ready_answers_are_what_the_document_says(unstarted: FastAPI) -> None:
    client = TestClient(unstarted)
    api = schemathesis.openapi.from_dict(unstarted.openapi())
    chat = {"model": "router", "messages": QUESTION}
    for method, path, body in [("get", "/readyz", None), ("post", "/v1/chat/completions", chat)]:
        response = client.request(method, path, json=body)
        assert response.status_code == 503
        operation = api[path][method.upper()]
        assert "503" in operation.responses.status_codes
        operation.validate_response(response)  # the body against the document's schema for 503
    assert client.get("/readyz").json() == {"status": "loading"}
    assert client.post("/v1/chat/completions", json=chat).headers["retry-after"] == "2"


def test_an_unexpected_exception_is_an_openai_shaped_500_and_a_logged_traceback(
    unstarted: FastAPI, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken() -> None:
        raise RuntimeError("a bug")

    unstarted.add_api_route("/broken", broken, methods=["POST"])
    secret = "PROMPT-TEXT-5e1d"
    with caplog.at_level("ERROR", logger="router"):
        response = TestClient(unstarted, raise_server_exceptions=False).post("/broken", json={"q": secret})
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {
        "error": {
            "message": "The server had an error while processing your request",
            "type": "server_error",
            "param": None,
            "code": None,
        }
    }
    [record] = [r for r in caplog.records if r.name == "router"]
    assert record.exc_info is not None and isinstance(record.exc_info[1], RuntimeError)
    assert "POST /broken" in record.getMessage()
    assert secret not in caplog.text
