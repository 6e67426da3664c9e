"""/metrics on a real scrape: promtool's lint, counters that follow the traffic, bounded labels without
prompt text; the alert rules' unit tests; the dashboard and alerts name only metrics that exist."""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import litellm
import pytest
from prometheus_client.parser import text_string_to_metric_families

from policies import load_policy
from router.metrics import ERROR_KINDS
from tests.conftest import Served, emptied, free_port, head_scorer_yaml
from tests.provider import USAGE, Provider

DEPLOY = Path(__file__).parents[1] / "deploy"
SECRET = "PROMPT-TEXT-7f3a"
ROUTES = {
    "/healthz",
    "/readyz",
    "/metrics",
    "/v1/models",
    "/v1/chat/completions",
    "/v1/score",
    "/v1/feedback",
    "/admin/reload",
    "unmatched",
}


def promtool() -> str:
    found = shutil.which("promtool")
    # Not a skip: `make test` installs promtool (the Makefile's `tools`), and these checks must not quietly
    # stop running.
    assert found, "promtool is missing: run `make tools` (Debian's prometheus package), or put it on PATH"
    return found


class Collecting(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def provider() -> Iterator[Provider]:
    answering = Provider()
    yield answering
    answering.close()


@pytest.fixture(scope="module")
def scrape(
    serve: Callable[..., Served],
    tiny_model: Path,
    tiny_head: Path,
    provider: Provider,
    redis_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[str, list[logging.LogRecord]]]:
    """A proxy after known traffic: 5 scored questions, one priced remote answer, one failing remote call,
    one bad request, one feedback. Yields the scrape and what the router logged."""
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setenv("PROVIDER_KEY", "unused")
    path = tmp_path_factory.mktemp("metrics") / "policy.yaml"
    path.write_text(
        head_scorer_yaml(tiny_model, tiny_head)
        + f"""\
targets:
  local: {{kind: local, max_tokens: 4}}
  priced:
    kind: litellm
    model: openai/gpt-4o-mini
    api_base: "{provider.base_url}"
    api_key_env: PROVIDER_KEY
  broken:
    kind: litellm
    model: openai/broken
    api_base: "http://127.0.0.1:{free_port()}/v1"
    api_key_env: PROVIDER_KEY
    num_retries: 0
rules:
  - {{when: {{model: priced}}, action: answer_with, target: priced}}
  - {{when: {{model: broken}}, action: answer_with, target: broken}}
  - {{when: {{confidence_at_least: 0.0}}, action: answer_with, target: local}}
  - action: refuse
"""
    )
    handler = Collecting()
    records = handler.records
    logger = logging.getLogger("router")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        served = serve(load_policy(path), emptied(redis_url))
        url = f"{served.base_url}/v1/chat/completions"

        def chat(model: str, text: str) -> httpx.Response:
            body = {"model": model, "messages": [{"role": "user", "content": text}]}
            return httpx.post(url, json=body, headers={"x-router-feedback": "keep"}, timeout=60)

        answered = [chat("router", f"{SECRET} question {i}?") for i in range(5)]
        assert [r.status_code for r in answered] == [200] * 5
        assert chat("priced", f"{SECRET} priced").status_code == 200
        assert chat("broken", f"{SECRET} broken").status_code == 502
        assert httpx.post(url, json={"model": "router"}).status_code == 400
        feedback = {"request_id": answered[0].headers["x-router-request-id"], "correct": True}
        assert httpx.post(f"{served.base_url}/v1/feedback", json=feedback).status_code == 200
        yield httpx.get(f"{served.base_url}/metrics").text, records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        monkeypatch.undo()


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(text: str, name: str, **labels: str) -> float:
    return samples(text)[(name, frozenset(labels.items()))]


def test_a_scrape_passes_promtool_check_metrics(scrape: tuple[str, list[logging.LogRecord]]) -> None:
    text, _ = scrape
    result = subprocess.run([promtool(), "check", "metrics"], input=text, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == ""


def test_alert_rules_pass_their_unit_tests() -> None:
    rules = DEPLOY / "prometheus"
    checked = subprocess.run(
        [promtool(), "check", "rules", "alerts.yml"], cwd=rules, capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run(
        [promtool(), "test", "rules", "alerts_test.yml"], cwd=rules, capture_output=True, text=True
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_dashboard_and_alerts_name_only_metrics_that_exist(
    scrape: tuple[str, list[logging.LogRecord]],
) -> None:
    text, _ = scrape
    exposed = {s.name for family in text_string_to_metric_families(text) for s in family.samples}
    dashboard = json.loads((DEPLOY / "grafana" / "confidence-router.json").read_text())
    expressions = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(expressions) > 20
    used = set(re.findall(r"\brouter_[a-z_]+", " ".join(expressions)))
    used |= set(re.findall(r"\brouter_[a-z_]+", (DEPLOY / "prometheus" / "alerts.yml").read_text()))
    assert used - exposed == set()
    assert len(used) > 20


def test_counters_follow_the_traffic(scrape: tuple[str, list[logging.LogRecord]]) -> None:
    text, _ = scrape
    assert value(text, "router_requests_total", decision="answer", target="local") == 5
    assert value(text, "router_requests_total", decision="answer", target="priced") == 1
    assert value(text, "router_confidence_count") == 5
    assert value(text, "router_scoring_seconds_count", cache="miss") == 5
    assert value(text, "router_batch_size_sum") == 5
    assert value(text, "router_queue_wait_seconds_count") == 5
    assert value(text, "router_queue_capacity") == 256
    assert value(text, "router_upstream_seconds_count", target="priced") == 1
    failures = {
        dict(labels)["kind"]: n
        for (name, labels), n in samples(text).items()
        if name == "router_upstream_errors_total" and dict(labels)["target"] == "broken"
    }
    assert sum(failures.values()) == 1  # litellm names a refused connection InternalServerError: "server"
    assert value(text, "router_tokens_total", target="priced", direction="prompt") == USAGE["prompt_tokens"]
    assert (
        value(text, "router_tokens_total", target="priced", direction="completion")
        == USAGE["completion_tokens"]
    )
    prompt_cost, completion_cost = litellm.cost_per_token(
        model="openai/gpt-4o-mini",
        prompt_tokens=USAGE["prompt_tokens"],
        completion_tokens=USAGE["completion_tokens"],
    )
    assert value(text, "router_cost_dollars_total", target="priced") == pytest.approx(
        prompt_cost + completion_cost
    )
    assert prompt_cost + completion_cost > 0
    assert value(text, "router_cost_dollars_total", target="local") == 0
    assert value(text, "router_feedback_total", outcome="correct") == 1
    assert value(text, "router_feedback_total", outcome="duplicate") == 0
    assert value(text, "router_http_requests_total", route="/v1/chat/completions", code="502") == 1
    assert value(text, "router_http_requests_total", route="/v1/chat/completions", code="400") == 1
    assert value(text, "router_drift_window_samples") == 5


def test_labels_are_bounded_and_carry_no_prompt_text(scrape: tuple[str, list[logging.LogRecord]]) -> None:
    text, records = scrape
    assert SECRET not in text
    assert records and not [r for r in records if SECRET in r.getMessage()]
    targets = {"local", "priced", "broken", "none"}
    for (name, labels), _ in samples(text).items():
        found = dict(labels)
        assert set(found) <= {
            "decision",
            "target",
            "cache",
            "kind",
            "direction",
            "outcome",
            "window",
            "route",
            "code",
            "result",
            "from_target",
            "to_target",
            "reason",
            "tenant",
            "version",
            "le",
        }, name
        assert {found.get("from_target", "none"), found.get("to_target", "none")} <= targets
        assert found.get("decision", "answer") in {"answer", "escalate", "hedge", "refuse"}
        assert found.get("target", "none") in targets
        assert found.get("kind", "other") in ERROR_KINDS
        assert found.get("route", "/metrics") in ROUTES
        assert re.fullmatch(r"[1-5]\d\d", found.get("code", "200"))
    # The scorer in force, one series: a version per scorer loaded, never per request.
    assert [name for name, _ in samples(text)].count("router_scorer_info") == 1
