"""POST /v1/embeddings: a pass-through to the policy's embeddings target, over real HTTP to a provider on
loopback, with API keys, budgets and metering in a real Redis. (Its 404 without an embeddings target is in
tests/test_legacy_completions.py, whose policy names none.)"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from policies import LiteLLMTarget, Policy, PolicyError
from router.access.keys import ApiKey
from router.targets.litellm import LiteLLMUpstream
from tests.conftest import Served, emptied, head_scorer_yaml, policy_from
from tests.faults import FaultServer, embedding_answer
from tests.redis_process import direct_client
from tests.test_access import create, error

ADMIN = "admin-for-embeddings"


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
    redis_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Served:
    """Keys required; the embeddings target costs a dollar per input token, so that a budget runs out."""
    policy = policy_from(
        head_scorer_yaml(tiny_model, tiny_head)
        + f"""\
auth: required
targets:
  local: {{kind: local, max_tokens: 2}}
  embedder:
    kind: openai
    model: ok
    api_base: "{faults.base_url}"
    num_retries: 0
    cost: {{input_per_million: 1000000, output_per_million: 0}}
embeddings: embedder
rules: [{{action: answer_with, target: local}}]
""",
        tmp_path_factory.mktemp("embeddings"),
    )
    return serve(policy, emptied(redis_url), admin_key=ADMIN)


def embeddings(http: httpx.Client, proxy: Served, key: str, body: object) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"}
    return http.post(f"{proxy.base_url}/v1/embeddings", json=body, headers=headers)


def metered(http: httpx.Client, proxy: Served) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = http.get(f"{proxy.base_url}/metrics", headers={"Authorization": f"Bearer {ADMIN}"}).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_the_upstreams_body_comes_back_byte_for_byte_and_its_tokens_are_metered(
    proxy: Served, faults: FaultServer, http: httpx.Client, redis_url: str
) -> None:
    key = create(redis_url, ApiKey("embedding-reader"))
    before = metered(http, proxy)
    response = embeddings(http, proxy, key, {"model": "text-embedding-3-small", "input": ["one", "two"]})
    assert response.status_code == 200, response.text
    assert response.content == embedding_answer("ok", ["one", "two"])
    assert response.headers["content-type"] == "application/json"
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["x-router-request-id"])
    assert response.headers["x-router-target"] == "embedder"
    [sent] = [r for r in faults.recorded("ok") if r.path == "/v1/embeddings"]
    assert sent.body == {"model": "ok", "input": ["one", "two"]}  # the target's model, not the client's

    after = metered(http, proxy)
    prompt = ("router_tokens_total", (("direction", "prompt"), ("target", "embedder")))
    cost = ("router_cost_dollars_total", (("target", "embedder"),))
    assert after[prompt] - before.get(prompt, 0.0) == 4  # two tokens per input (tests/faults.py)
    assert after[cost] - before.get(cost, 0.0) == pytest.approx(4.0)

    client = openai.OpenAI(base_url=f"{proxy.base_url}/v1", api_key=key, max_retries=0)
    created = client.embeddings.create(model="text-embedding-3-small", input="three", encoding_format="float")
    assert [item.embedding for item in created.data] == [[0.25, -0.5, 0.125]]


def test_a_key_over_its_budget_is_refused_before_the_upstream_is_asked(
    proxy: Served, faults: FaultServer, http: httpx.Client, redis_url: str
) -> None:
    key = create(redis_url, ApiKey("embedding-budget", budget_usd=3.0))
    assert embeddings(http, proxy, key, {"model": "m", "input": ["a", "b"]}).status_code == 200  # $4
    deadline = time.monotonic() + 5  # the debit is made off the response path
    while (refused := embeddings(http, proxy, key, {"model": "m", "input": "a"})).status_code == 200:
        assert time.monotonic() < deadline, "the budget was never enforced"
        time.sleep(0.05)
    calls = faults.calls("ok")
    assert refused.status_code == 429 and error(refused)["code"] == "budget_exceeded"
    assert embeddings(http, proxy, key, {"model": "m", "input": "a"}).status_code == 429
    assert faults.calls("ok") == calls
    spent = float(direct_client(redis_url).get("confidence-router:limit:{embedding-budget}:spent") or 0)
    assert spent >= 4.0


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "m"}, "input"),
        ({"model": "m", "input": []}, "input"),
        ({"model": "m", "input": 7}, "input"),
        ({"model": "m", "input": "a", "dimensions": "3"}, "dimensions"),
        ({"model": "m", "input": "a", "truncate": True}, "truncate"),
        ({"input": "a"}, "model"),
    ],
)
def test_bad_input_is_a_400_in_openais_shape(
    proxy: Served, http: httpx.Client, redis_url: str, body: dict[str, object], param: str
) -> None:
    response = embeddings(http, proxy, ADMIN, body)
    assert response.status_code == 400
    assert error(response)["type"] == "invalid_request_error"
    assert str(error(response)["param"]).startswith(param)


def test_an_upstream_refusal_keeps_its_status(proxy: Served, faults: FaultServer, http: httpx.Client) -> None:
    faults.script("ok", "status-400")
    response = embeddings(http, proxy, ADMIN, {"model": "m", "input": "a"})
    assert response.status_code == 400 and error(response)["code"] == "upstream_bad_request"


def test_a_litellm_target_embeds_too(faults: FaultServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMBEDDINGS_TEST_KEY", "sk-test")
    spec = LiteLLMTarget(
        kind="litellm", model="openai/ok", api_base=faults.base_url, api_key_env="EMBEDDINGS_TEST_KEY"
    )
    embedded = asyncio.run(LiteLLMUpstream("lite", spec).embed({"input": ["a", "b", "c"]}))
    body = json.loads(embedded.content)
    assert [item["embedding"] for item in body["data"]] == [[0.25, -0.5, 0.125]] * 3
    assert embedded.usage is not None and embedded.usage["prompt_tokens"] == 6


@pytest.mark.parametrize(
    ("targets", "problem"),
    [
        ("local: {kind: local}", "unknown target 'nowhere'"),
        ("nowhere: {kind: local}", "'nowhere' is a local target: embeddings pass through to a remote one"),
    ],
)
def test_the_embeddings_target_must_exist_and_be_remote(targets: str, problem: str, tmp_path: Path) -> None:
    text = f"targets: {{{targets}}}\nembeddings: nowhere\nrules: [{{action: refuse}}]\n"
    with pytest.raises(PolicyError, match=re.escape(problem)):
        policy_from(text, tmp_path)


def test_a_policy_may_name_a_remote_embeddings_target(tmp_path: Path) -> None:
    text = """\
targets:
  embedder: {kind: openai, model: e, api_base: "http://127.0.0.1:9/v1"}
embeddings: embedder
rules: [{action: refuse}]
"""
    policy: Policy = policy_from(text, tmp_path)
    assert policy.embeddings == "embedder"
