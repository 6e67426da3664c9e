"""POST /v1/completions, the legacy text completions, over real HTTP with the official openai SDK: the prompt
is scored and routed as a chat request's one user message, and the answer comes back as a text completion,
whole or streamed, with the router's headers. The tiny model answers."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import httpx
import openai
import pytest

from policies import Policy
from tests.conftest import Served, head_scorer_yaml, policy_from
from tests.test_access import error

REFUSAL = "Not answered here."


@pytest.fixture(scope="module")
def policy(tiny_model: Path, tiny_head: Path, tmp_path_factory: pytest.TempPathFactory) -> Policy:
    """No embeddings target: POST /v1/embeddings is a 404 here."""
    return policy_from(
        head_scorer_yaml(tiny_model, tiny_head)
        + f"""\
targets:
  local: {{kind: local, max_tokens: 4}}
refusal_message: "{REFUSAL}"
rules:
  - {{name: refused, when: {{user: refuse}}, action: refuse}}
  - {{name: scored, when: {{confidence_at_least: 0.0}}, action: answer_with, target: local}}
  - {{action: answer_with, target: local}}
""",
        tmp_path_factory.mktemp("legacy"),
    )


@pytest.fixture(scope="module")
def proxy(serve: Callable[..., Served], policy: Policy) -> Served:
    return serve(policy)


@pytest.fixture(scope="module")
def client(proxy: Served) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{proxy.base_url}/v1", api_key="unused", max_retries=0, timeout=60)


def test_a_prompt_is_scored_routed_and_answered_as_a_text_completion(client: openai.OpenAI) -> None:
    raw = client.completions.with_raw_response.create(
        model="router", prompt="Who wrote Hamlet?", max_tokens=3
    )
    assert raw.headers["x-router-rule"] == "scored"  # scored: its confidence was computed
    assert 0 <= float(raw.headers["x-router-confidence"]) <= 1
    assert raw.headers["x-router-target"] == "local"
    assert re.fullmatch(r"[0-9a-f]{32}", raw.headers["x-router-request-id"])
    completion = raw.parse()
    assert completion.object == "text_completion"
    assert completion.id == f"cmpl-{raw.headers['x-router-request-id']}"
    [choice] = completion.choices
    assert isinstance(choice.text, str) and choice.finish_reason in ("stop", "length")
    assert completion.usage is not None and 0 < completion.usage.completion_tokens <= 3

    refused = client.completions.create(model="router", prompt=["Who wrote Hamlet?"], user="refuse")
    assert [c.text for c in refused.choices] == [REFUSAL]  # a list of one prompt is that prompt


def test_a_stream_is_text_completion_chunks_then_done(client: openai.OpenAI, proxy: Served) -> None:
    stream = client.completions.create(
        model="router",
        prompt="Who wrote Hamlet?",
        max_tokens=3,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert {chunk.object for chunk in chunks} == {"text_completion"}
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-2].choices[0].finish_reason in ("stop", "length")

    body = {"model": "router", "prompt": "Who wrote Hamlet?", "stream": True, "user": "refuse"}
    with httpx.stream("POST", f"{proxy.base_url}/v1/completions", json=body, timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-router-decision"] == "refuse"
        events = [line.removeprefix("data: ") for line in response.iter_lines() if line]
    assert events[-1] == "[DONE]"
    said = [json.loads(event) for event in events[:-1]]
    assert "".join(c["text"] for chunk in said for c in chunk["choices"]) == REFUSAL
    assert all("delta" not in c for chunk in said for c in chunk["choices"])


@pytest.mark.parametrize(
    ("fields", "param", "code"),
    [
        ({"prompt": ["one", "two"]}, "prompt", "invalid_value"),
        ({"prompt": []}, "prompt", "invalid_value"),
        ({"prompt": [1, 2, 3]}, "prompt", "invalid_value"),
        ({"prompt": "x", "max_tokens": "4"}, "max_tokens", "invalid_value"),
        ({"prompt": "x", "messages": []}, "messages", "unknown_parameter"),
        ({"prompt": "x", "echo": True}, "echo", "unsupported_parameter"),
        ({"prompt": "x", "top_k": 3}, "top_k", "unknown_parameter"),
    ],
)
def test_what_a_text_completion_cannot_ask_is_a_400_in_openais_shape(
    proxy: Served, http: httpx.Client, fields: dict[str, object], param: str, code: str
) -> None:
    response = http.post(f"{proxy.base_url}/v1/completions", json={"model": "router", **fields})
    assert response.status_code == 400, response.text
    assert error(response)["type"] == "invalid_request_error"
    assert str(error(response)["param"]).startswith(param) and error(response)["code"] == code


def test_several_prompts_are_refused_by_the_sdk_as_a_bad_request(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="one prompt per request and got 2"):
        client.completions.create(model="router", prompt=["one", "two"])


def test_embeddings_without_a_target_in_the_policy_are_a_404(proxy: Served, http: httpx.Client) -> None:
    response = http.post(f"{proxy.base_url}/v1/embeddings", json={"model": "m", "input": "a"})
    assert response.status_code == 404
    assert error(response) | {"message": ""} == {
        "message": "",
        "type": "invalid_request_error",
        "param": "model",
        "code": "model_not_found",
    }
