"""Tools: `has_tools` and `tool_names` are facts rules test; a local target takes requests with tools only
with accepts_tools (else a 400 that says why); tool calls and tool results pass through a remote target
unchanged, streamed or not, and a Responses request's tools reach a litellm target as chat tools, its tool
call coming back as a function_call item. The remote model is tests/faults.py's provider on loopback."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionFunctionToolParam, ChatCompletionMessageParam
from openai.types.responses import (
    FunctionToolParam,
    ResponseFunctionCallArgumentsDoneEvent,
    ResponseInputItemParam,
)

from policies import Confidences, PolicyError, RequestFacts, decide
from tests.conftest import Served, head_scorer_yaml, policy_from
from tests.faults import FaultServer
from tests.test_access import error
from tests.upstream_answers import TOOL_CALL

WEATHER: ChatCompletionFunctionToolParam = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
RULES = """\
rules:
  - {{name: weather, when: {{tool_names: [get_weather]}}, action: answer_with, target: remote}}
  - {{name: lookup, when: {{tool_names: lookup}}, action: answer_with, target: lite}}
  - {{name: helper, when: {{has_tools: true, user: helper}}, action: answer_with, target: helper}}
  - {{name: tools, when: {{has_tools: true}}, action: answer_with, target: local}}
  - {{name: plain, action: answer_with, target: local}}
"""


@pytest.fixture(scope="module")
def faults() -> Iterator[FaultServer]:
    server = FaultServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def proxy(
    serve: Callable[..., Served],
    faults: FaultServer,
    tiny_model: Path,
    tiny_head: Path,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch_module: pytest.MonkeyPatch,
) -> Served:
    monkeypatch_module.setenv("TOOLS_TEST_KEY", "sk-test")
    remote = f'api_base: "{faults.base_url}", num_retries: 0'
    policy = policy_from(
        head_scorer_yaml(tiny_model, tiny_head)
        + f"""\
targets:
  local: {{kind: local, max_tokens: 2}}
  helper: {{kind: local, max_tokens: 2, accepts_tools: true}}
  remote: {{kind: openai, model: tool-call, {remote}}}
  lite: {{kind: litellm, model: openai/tool-call, api_key_env: TOOLS_TEST_KEY, {remote}}}
"""
        + RULES.format(),
        tmp_path_factory.mktemp("tools"),
    )
    return serve(policy)


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.fixture(scope="module")
def sdk(proxy: Served) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{proxy.base_url}/v1", api_key="unused", max_retries=0, timeout=60)


def test_rules_test_whether_a_request_has_tools_and_their_names(tmp_path: Path) -> None:
    targets = """\
targets:
  local: {kind: local}
  helper: {kind: local, accepts_tools: true}
  remote: {kind: openai, model: m, api_base: "http://127.0.0.1:9/v1"}
  lite: {kind: litellm, model: openai/m}
"""
    policy = policy_from(targets + RULES.format(), tmp_path)

    def rule(facts: RequestFacts) -> str:
        async def unscored() -> Confidences:
            raise AssertionError("no rule here needs a score")

        return asyncio.run(decide(policy, facts, unscored)).rule

    assert rule(RequestFacts("router")) == "plain"
    assert rule(RequestFacts("router", has_tools=True, tool_names=("other", "get_weather"))) == "weather"
    assert rule(RequestFacts("router", has_tools=True, tool_names=("lookup",))) == "lookup"
    assert rule(RequestFacts("router", "helper", has_tools=True, tool_names=("x",))) == "helper"
    assert rule(RequestFacts("router", has_tools=True)) == "tools"
    with pytest.raises(PolicyError, match="has_tools"):
        policy_from(
            targets + "rules: [{when: {has_tools: sometimes}, action: refuse}, {action: refuse}]\n", tmp_path
        )


def test_a_tool_call_and_its_result_pass_through_unchanged_streamed_or_not(
    sdk: openai.OpenAI, faults: FaultServer
) -> None:
    ask: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Weather in Paris?"}]
    raw = sdk.chat.completions.with_raw_response.create(model="router", messages=ask, tools=[WEATHER])
    assert raw.headers["x-router-rule"] == "weather" and raw.headers["x-router-target"] == "remote"
    [choice] = raw.parse().choices
    assert choice.finish_reason == "tool_calls"
    assert [call.model_dump(exclude_none=True) for call in choice.message.tool_calls or []] == [TOOL_CALL]

    stream = sdk.chat.completions.create(model="router", messages=ask, tools=[WEATHER], stream=True)
    calls = [call for chunk in stream for choice in chunk.choices for call in choice.delta.tool_calls or []]
    assert calls[0].id == TOOL_CALL["id"] and calls[0].function and calls[0].function.name == "get_weather"
    written = "".join(call.function.arguments or "" for call in calls if call.function)
    assert written == TOOL_CALL["function"]["arguments"]

    turns: list[ChatCompletionMessageParam] = [
        *ask,
        {"role": "assistant", "tool_calls": [TOOL_CALL]},
        {"role": "tool", "tool_call_id": TOOL_CALL["id"], "content": '{"celsius": 21}'},
    ]
    sdk.chat.completions.create(model="router", messages=turns, tools=[WEATHER])
    assert (faults.recorded("tool-call")[-1].body or {})["messages"] == turns


def test_a_target_that_takes_no_tools_is_a_400_that_says_why(proxy: Served, http: httpx.Client) -> None:
    body = {"model": "router", "messages": [{"role": "user", "content": "Hi"}], "tools": [WEATHER]}
    body["tools"] = [{"type": "function", "function": {"name": "other"}}]
    response = http.post(f"{proxy.base_url}/v1/chat/completions", json=body)
    assert response.status_code == 400
    said = error(response)
    assert said["code"] == "tools_not_supported" and said["param"] == "tools"
    assert "'tools'" in str(said["message"]) and "'local'" in str(said["message"])
    assert "accepts_tools" in str(said["message"])
    answered = http.post(f"{proxy.base_url}/v1/chat/completions", json={**body, "user": "helper"})
    assert answered.status_code == 200 and answered.headers["x-router-target"] == "helper"


def test_a_responses_tool_call_comes_back_from_a_litellm_target_as_a_function_call(
    sdk: openai.OpenAI, faults: FaultServer
) -> None:
    lookup: FunctionToolParam = {"type": "function", "name": "lookup", "parameters": {}, "strict": None}
    raw = sdk.responses.with_raw_response.create(model="router", input="Weather in Paris?", tools=[lookup])
    assert raw.headers["x-router-target"] == "lite"
    [call] = raw.parse().output
    assert call.type == "function_call" and call.call_id == TOOL_CALL["id"] and call.name == "get_weather"
    assert call.arguments == TOOL_CALL["function"]["arguments"]
    sent = faults.recorded("tool-call")[-1].body or {}
    assert [tool["function"]["name"] for tool in sent["tools"]] == ["lookup"]  # chat's nested form

    events = list(sdk.responses.create(model="router", input="Weather?", tools=[lookup], stream=True))
    kinds = [event.type for event in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert "response.function_call_arguments.delta" in kinds
    [done] = [event for event in events if isinstance(event, ResponseFunctionCallArgumentsDoneEvent)]
    assert done.arguments == TOOL_CALL["function"]["arguments"]

    result: ResponseInputItemParam = {
        "type": "function_call_output",
        "call_id": call.call_id,
        "output": json.dumps({"celsius": 21}),
    }
    sdk.responses.create(model="router", input=[result], tools=[lookup], previous_response_id=raw.parse().id)
    sent = faults.recorded("tool-call")[-1].body or {}
    assert [m["role"] for m in sent["messages"]] == ["user", "assistant", "tool"]
    assert sent["messages"][2] == {
        "role": "tool",
        "tool_call_id": TOOL_CALL["id"],
        "content": '{"celsius": 21}',
    }
