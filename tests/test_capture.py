"""Traffic capture (the policy's `capture:`) over real HTTP and real Redis, the tiny model answering: what is
kept and for whom, redaction before storage, streams, the bound per tenant, `router traffic export` and
`purge`, the policy's mistakes, and Redis going away under it."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from commands import app
from policies import Decision, PolicyError, load_policy
from router import completions
from router.access.keys import ApiKey, KeyRegistry
from router.metrics import CAPTURE_OUTCOMES, Metrics
from router.stages.capturing import Capturing, Gathered, sampled
from router.stages.shaping import Routed
from router.state import MemoryStore, RedisStore, ResilientStore, redis_client
from tests.conftest import Served, emptied, free_port, head_scorer_yaml
from tests.redis_process import RedisProcess, running_redis
from train.data import load_records

ADMIN = "admin-secret"
PREFIX = "confidence-router:"
API_SECRET = "sk-Zq8Xw3Lk9Vb2"
SSN = "123-45-6789"


def capture_policy(scorer: str, capture: str = "share: 1.0", auth: str = "required") -> str:
    return f"""\
name: capture
auth: {auth}
{scorer}targets:
  local: {{kind: local, max_tokens: 6}}
rules:
  - name: refused
    when: {{user: refuse-me}}
    action: refuse
  - name: scored
    when: {{confidence_at_least: 0.0}}
    action: answer_with
    target: local
  - action: answer_with
    target: local
capture:
  {capture}
  max_rows: 3
  redact: ['sk-[A-Za-z0-9]{{8,}}', '\\b\\d{{3}}-\\d{{2}}-\\d{{4}}\\b']
"""


@dataclass
class Site:
    """The module's proxy, the policy file it reloads, its Redis and the keys of the tenants A and B."""

    proxy: Served
    path: Path
    redis_url: str
    scorer: str
    keys: dict[str, str] = field(default_factory=dict)
    policy: str = ""

    def use(self, http: httpx.Client, capture: str = "share: 1.0") -> None:
        """Serve the capture policy with this `capture:` (reloaded only when it changes)."""
        text = capture_policy(self.scorer, capture)
        if text != self.policy:
            self.path.write_text(text)
            auth = {"Authorization": f"Bearer {ADMIN}"}
            response = http.post(f"{self.proxy.base_url}/admin/reload", headers=auth)
            assert response.status_code == 200, response.text
            self.policy = text

    def client(self) -> Any:
        return redis.Redis.from_url(self.redis_url, decode_responses=True)

    def rows(self, tenant: str) -> list[dict[str, Any]]:
        client = self.client()
        try:
            return [json.loads(row) for row in client.lrange(f"{PREFIX}capture:{tenant}", 0, -1)]
        finally:
            client.close()

    def forget(self) -> None:
        client = self.client()
        try:
            for key in client.scan_iter(match=f"{PREFIX}capture:*"):
                client.delete(key)
        finally:
            client.close()


def create_keys(redis_url: str, names: tuple[str, ...]) -> dict[str, str]:
    async def run() -> dict[str, str]:
        client = redis_client(redis_url, decode_responses=True)
        try:
            registry = KeyRegistry(client)
            return {name: await registry.create(ApiKey(name)) for name in names}
        finally:
            await client.aclose()

    keys = asyncio.run(run())
    time.sleep(0.7)  # every replica rereads the key table within 0.5 s
    return keys


@pytest.fixture(scope="module")
def site_once(
    serve: Callable[..., Served],
    untied_model: Path,
    untied_head: Path,
    redis_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Site:
    scorer = head_scorer_yaml(untied_model, untied_head)  # a model whose answers are text
    path = tmp_path_factory.mktemp("capture") / "policy.yaml"
    text = capture_policy(scorer)
    path.write_text(text)
    proxy = serve(load_policy(path), emptied(redis_url), policy_path=path, admin_key=ADMIN)
    return Site(proxy, path, redis_url, scorer, create_keys(redis_url, ("A", "B")), text)


@pytest.fixture
def site(site_once: Site, http: httpx.Client) -> Site:
    """The module's proxy, capturing every request, with no rows kept yet."""
    site_once.use(http)
    site_once.forget()
    return site_once


def chat(
    http: httpx.Client, site: Site, tenant: str, question: str = "Hi?", **body: object
) -> httpx.Response:
    payload = {"model": "router", "messages": [{"role": "user", "content": question}], **body}
    headers = {"Authorization": f"Bearer {site.keys[tenant]}"}
    response = http.post(f"{site.proxy.base_url}/v1/chat/completions", json=payload, headers=headers)
    assert response.status_code == 200, response.text
    return response


def streamed(
    http: httpx.Client, base_url: str, headers: dict[str, str], question: str
) -> tuple[str, list[dict[str, Any]]]:
    """The request id and the chunks of a streamed answer."""
    payload = {"model": "router", "messages": [{"role": "user", "content": question}], "stream": True}
    url = f"{base_url}/v1/chat/completions"
    with http.stream("POST", url, json=payload, headers=headers) as response:
        assert response.status_code == 200
        events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
        request_id = response.headers["x-router-request-id"]
    assert events[-1] == "[DONE]"
    return request_id, [json.loads(event) for event in events[:-1]]


def text_of(chunks: list[dict[str, Any]]) -> str:
    return "".join((c["choices"] or [{}])[0].get("delta", {}).get("content") or "" for c in chunks)


def captured(http: httpx.Client, base_url: str, headers: dict[str, str] | None = None) -> dict[str, float]:
    text = http.get(f"{base_url}/metrics", headers=headers or {}).text
    return {
        sample.labels["outcome"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "router_captured_total"
    }


def invoke(*args: str) -> Any:
    return CliRunner().invoke(app, ["traffic", *args], prog_name="router")


def everything_stored(redis_url: str) -> bytes:
    """Every key and value in the Redis database, as bytes."""
    client: Any = redis.Redis.from_url(redis_url)  # bytes, whatever the values hold
    parts: list[bytes] = []
    try:
        for key in client.scan_iter():
            kind = client.type(key)
            parts.append(key)
            if kind == b"string":
                parts.append(client.get(key) or b"")
            elif kind == b"list":
                parts += client.lrange(key, 0, -1)
            elif kind == b"hash":
                parts += [k + b"=" + v for k, v in client.hgetall(key).items()]
            elif kind == b"set":
                parts += client.smembers(key)
            elif kind == b"zset":
                parts += client.zrange(key, 0, -1)
            else:
                raise AssertionError(f"{key!r}: a {kind!r}, which this test does not read")
    finally:
        client.close()
    return b"\n".join(parts)


def test_every_request_is_kept_at_share_1_and_secrets_never_reach_the_store(
    site: Site, http: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="router")
    admin = {"Authorization": f"Bearer {ADMIN}"}
    before = captured(http, site.proxy.base_url, admin)
    question = f"My key is {API_SECRET} and my SSN {SSN}: what is 2+2?"
    answered = [chat(http, site, "A", question), chat(http, site, "A", question)]
    answered.append(chat(http, site, "A", "Anything?", user="refuse-me"))

    rows = site.rows("A")
    assert [row["id"] for row in rows] == [r.headers["x-router-request-id"] for r in answered]
    first, refused = rows[0], rows[2]
    redacted = "My key is [redacted] and my SSN [redacted]: what is 2+2?"
    assert first["messages"] == [{"role": "user", "content": redacted}]
    assert first["tenant"] == "A" and first["target"] == "local"
    assert first["answer"] == answered[0].json()["choices"][0]["message"]["content"] != ""
    confidence = float(answered[0].headers["x-router-confidence"])
    assert first["decision"] == {
        "action": "answer_with",
        "outcome": "answer",
        "rule": "scored",
        "target": "local",
        "confidence": pytest.approx(confidence, abs=1e-4),
    }
    assert first["confidences"] == {"local": pytest.approx(confidence, abs=1e-4)}
    assert abs(first["time"] - time.time()) < 60
    assert refused["decision"]["outcome"] == "refuse" and refused["target"] is None
    assert refused["confidences"] == {}  # a rule on `user` alone: nothing was scored

    stored = everything_stored(site.redis_url)
    assert b"[redacted]" in stored
    assert API_SECRET.encode() not in stored and SSN.encode() not in stored
    after = captured(http, site.proxy.base_url, admin)
    assert after["stored"] - before["stored"] == 3
    assert after["dropped"] == before["dropped"] and after["skipped"] == before["skipped"]
    scrape = http.get(f"{site.proxy.base_url}/metrics", headers=admin).text
    assert "2+2" not in scrape and "2+2" not in caplog.text and API_SECRET not in caplog.text


def test_a_stream_is_kept_whole_and_its_chunks_reach_the_client_as_written(
    site: Site, http: httpx.Client
) -> None:
    headers = {"Authorization": f"Bearer {site.keys['A']}"}
    question = "Stream me an answer, please."
    request_id, chunks = streamed(http, site.proxy.base_url, headers, question)
    [row] = site.rows("A")
    assert row["id"] == request_id
    assert row["answer"] == text_of(chunks) and row["answer"]
    assert row["messages"] == [{"role": "user", "content": question}]

    site.use(http, "share: 0.0")  # the same question, not captured: the same chunks but for ids and times
    _, plain = streamed(http, site.proxy.base_url, headers, question)
    assert [(c["choices"], c.get("usage")) for c in chunks] == [(c["choices"], c.get("usage")) for c in plain]
    assert len(site.rows("A")) == 1


def test_share_0_keeps_nothing_and_a_tenant_list_keeps_only_its_tenants(
    site: Site, http: httpx.Client
) -> None:
    admin = {"Authorization": f"Bearer {ADMIN}"}
    before = captured(http, site.proxy.base_url, admin)
    site.use(http, "share: 0.0")
    chat(http, site, "A")
    assert site.rows("A") == []
    site.use(http, "share: 1.0\n  tenants: [B]")
    chat(http, site, "A")
    kept = chat(http, site, "B")
    assert site.rows("A") == []
    assert [row["id"] for row in site.rows("B")] == [kept.headers["x-router-request-id"]]
    after = captured(http, site.proxy.base_url, admin)
    assert after["skipped"] - before["skipped"] == 2 and after["stored"] - before["stored"] == 1


def test_tenants_keep_their_newest_rows_apart_and_export_as_records_to_label(
    site: Site, http: httpx.Client, tmp_path: Path
) -> None:
    of_a = [chat(http, site, "A", f"A question {i}?").headers["x-router-request-id"] for i in range(5)]
    of_b = chat(http, site, "B", "B question?").headers["x-router-request-id"]
    assert [row["id"] for row in site.rows("A")] == of_a[-3:]  # max_rows: the oldest went

    out = tmp_path / "a.jsonl"
    common = ("--policy", str(site.path), "--redis-url", site.redis_url)
    result = invoke("export", *common, "--out", str(out), "--tenant", "A")
    assert result.exit_code == 0, result.output
    assert result.output == f"{out}: 3 records\n"
    exported = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["id"] for row in exported] == of_a[-3:]
    assert {row["tenant"] for row in exported} == {"A"} and "B question" not in out.read_text()
    last = exported[-1]
    assert last["question"] == "A question 4?"
    assert last["messages"] == [{"role": "user", "content": "A question 4?"}]
    assert (last["answers"], last["task"], last["source"]) == ([], "chat", "traffic")
    assert set(last["answer"]) == {"local"} and last["decision"]["outcome"] == "answer"
    assert set(last["confidences"]) == {"local"}
    records = load_records(out)
    assert [(r.id, r.family, r.source) for r in records] == [(i, "chat", "traffic") for i in of_a[-3:]]

    every = tmp_path / "all.jsonl"
    assert invoke("export", *common, "--out", str(every)).exit_code == 0
    assert [json.loads(line)["id"] for line in every.read_text().splitlines()] == [*of_a[-3:], of_b]
    assert invoke("export", *common, "--out", str(every), "--since", "2999-01-01").exit_code == 0
    assert every.read_text() == ""
    since = str(time.time() - 3600)
    assert invoke("export", *common, "--out", str(every), "--since", since, "--tenant", "B").exit_code == 0
    assert [json.loads(line)["id"] for line in every.read_text().splitlines()] == [of_b]


def test_purge_deletes_one_tenants_rows_or_everyones_and_says_how_many(
    site: Site, http: httpx.Client
) -> None:
    chat(http, site, "A")
    chat(http, site, "A")
    chat(http, site, "B")
    url = ("--redis-url", site.redis_url)
    result = invoke("purge", *url, "--tenant", "B")
    assert (result.exit_code, result.output) == (0, "purged 1 rows\n")
    assert site.rows("B") == [] and len(site.rows("A")) == 2
    assert invoke("purge", *url).output == "purged 2 rows\n"
    assert site.rows("A") == []
    assert invoke("purge", *url).output == "purged 0 rows\n"


def test_bad_input_is_one_error_line_and_exit_2(site: Site, tmp_path: Path) -> None:
    out = str(tmp_path / "rows.jsonl")
    common = ("--policy", str(site.path), "--redis-url", site.redis_url, "--out", out)
    uncaptured = tmp_path / "plain.yaml"
    uncaptured.write_text("targets: {local: {kind: local}}\nrules: [{action: answer_with, target: local}]\n")
    for args, said in [
        ((*common, "--since", "last tuesday"), "error: --since 'last tuesday': give an ISO date or time"),
        ((*common, "--tenant", "no such/key"), "error: --tenant 'no such/key': neither a key name"),
        (
            ("--policy", str(uncaptured), "--redis-url", site.redis_url, "--out", out),
            f"error: {uncaptured}: no capture: block",
        ),
    ]:
        result = CliRunner().invoke(app, ["traffic", "export", *args])
        assert result.exit_code == 2, result.output
        assert result.output.startswith(said) and result.output.count("\n") == 1


def test_capture_mistakes_name_file_line_and_field(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(
        """\
targets: {local: {kind: local}}
rules: [{action: answer_with, target: local}]
capture:
  share: 1.5
  redact:
    - 'sk-[a-z]+'
    - '(unclosed'
"""
    )
    with pytest.raises(PolicyError) as raised:
        load_policy(path)
    assert raised.value.problems == [
        f"{path}:4: capture.share: Input should be less than or equal to 1",
        f"{path}:7: capture.redact.1: not a regular expression: missing ), unterminated subpattern at "
        "position 0",
    ]
    path.write_text(
        """\
targets: {local: {kind: local}}
rules: [{action: answer_with, target: local}]
capture:
  share: 0.1
  tenants: [alice]
"""
    )
    with pytest.raises(PolicyError) as raised:
        load_policy(path)
    assert raised.value.problems == [
        f"{path}:5: capture.tenants: with auth off no request has a key: every request is the tenant '-'"
    ]


def test_the_share_is_a_hash_of_the_request_id() -> None:
    ids = [f"{i:032x}" for i in range(2000)]
    chosen = [sampled(i, 0.25) for i in ids]
    assert chosen == [sampled(i, 0.25) for i in ids]
    assert 400 < sum(chosen) < 600
    assert all(sampled(i, 1.0) for i in ids) and not any(sampled(i, 0.0) for i in ids)


class Listed:
    """A stream of the given chunks that fails after them when told to."""

    def __init__(self, chunks: list[dict[str, Any]], fail: bool = False) -> None:
        self.chunks, self.fail, self.closed = chunks, fail, False
        self._iterator = self._chunks()

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self._iterator

    async def _chunks(self) -> AsyncIterator[dict[str, Any]]:
        for chunk in self.chunks:
            yield chunk
        if self.fail:
            raise RuntimeError("cut")

    async def aclose(self) -> None:
        self.closed = True


def test_a_gathered_stream_passes_each_chunk_itself_and_keeps_only_a_whole_answer() -> None:
    head = completions.chunk_head("id", 0, "m")
    chunks = [completions.chunk(head, {"content": part}) for part in ("Hel", "lo", "")]
    chunks.append({**head, "choices": [], "usage": {"total_tokens": 3}})

    async def go() -> None:
        done: list[str] = []
        aborted: list[bool] = []

        async def finished(text: str) -> None:
            done.append(text)

        whole = Gathered(Listed(chunks), finished, lambda: aborted.append(True))
        passed = [chunk async for chunk in whole]
        assert len(passed) == len(chunks) and all(a is b for a, b in zip(passed, chunks, strict=True))
        await whole.aclose()
        assert (done, aborted) == (["Hello"], [])

        source = Listed(chunks)
        left = Gathered(source, finished, lambda: aborted.append(True))
        iterator = aiter(left)
        await anext(iterator)
        await left.aclose()  # the client went away
        assert (done, aborted, source.closed) == (["Hello"], [True], True)

        failing = Gathered(Listed(chunks, fail=True), finished, lambda: aborted.append(True))
        with pytest.raises(RuntimeError):
            _ = [chunk async for chunk in failing]
        await failing.aclose()
        assert (done, aborted) == (["Hello"], [True, True])

        unread = Gathered(Listed(chunks), finished, lambda: aborted.append(True))
        await unread.aclose()  # closed before its first chunk
        assert aborted == [True, True, True]

    asyncio.run(go())


def counted(metrics: Metrics) -> dict[str, float | None]:
    return {
        outcome: metrics.registry.get_sample_value("router_captured_total", {"outcome": outcome})
        for outcome in CAPTURE_OUTCOMES
    }


def test_a_row_the_store_cannot_keep_is_dropped_and_counted_and_without_redis_capture_is_off(
    tmp_path: Path,
) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(capture_policy("", auth="off"))
    policy = load_policy(path)
    decision = Decision("answer_with", "local", "scored", 0.5, None, 1)
    routed = Routed("f" * 32, decision, body=completions.completion("f" * 32, "router", "Paris.", "stop"))
    messages = [{"role": "user", "content": "Capital of France?"}]

    async def go() -> None:
        metrics = Metrics()
        away = ResilientStore(RedisStore(f"redis://127.0.0.1:{free_port()}/0"), max_pending=0)
        try:
            capturing = Capturing(policy, away, metrics, {"local": "m"})
            assert await capturing.capture(routed, messages, None, None) is routed
        finally:
            await away.close(flush_timeout_s=0)
        assert counted(metrics) == {"stored": 0, "skipped": 0, "dropped": 1, "aborted": 0}

        in_process = Metrics()
        off = Capturing(policy, MemoryStore(), in_process, {"local": "m"})
        assert await off.capture(routed, messages, None, None) is routed
        assert set(counted(in_process).values()) == {0}

    asyncio.run(go())


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    with running_redis(tmp_path) as started:
        yield started


def test_with_redis_away_every_request_is_answered_and_its_row_waits_for_redis(
    serve: Callable[..., Served],
    own_redis: RedisProcess,
    untied_model: Path,
    untied_head: Path,
    tmp_path: Path,
    http: httpx.Client,
) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(capture_policy(head_scorer_yaml(untied_model, untied_head), auth="off"))
    proxy = serve(load_policy(path), own_redis.url)
    url = f"{proxy.base_url}/v1/chat/completions"
    own_redis.kill()
    started = time.monotonic()
    body = {"model": "router", "messages": [{"role": "user", "content": "During the outage?"}]}
    answered = http.post(url, json=body)
    assert answered.status_code == 200, answered.text
    stream_id, chunks = streamed(http, proxy.base_url, {}, "Streamed during the outage?")
    assert text_of(chunks)
    assert time.monotonic() - started < 20  # nothing waited on Redis
    assert captured(http, proxy.base_url)["stored"] == 2  # kept for Redis

    own_redis.start()
    client = own_redis.client()
    deadline = time.monotonic() + 10
    while client.llen(f"{PREFIX}capture:-") < 2:
        assert time.monotonic() < deadline, "the rows were not replayed within 10 s of Redis returning"
        time.sleep(0.1)
    rows = [json.loads(row) for row in client.lrange(f"{PREFIX}capture:-", 0, -1)]
    assert [row["id"] for row in rows] == [answered.headers["x-router-request-id"], stream_id]
    assert rows[1]["answer"] == text_of(chunks)
    assert 0 < client.pttl(f"{PREFIX}capture:-") <= 30 * 86400 * 1000
