"""deploy/compose.yaml without containers: its router services run as real `router serve` processes with the
command and environment the file gives them, on one real redis-server started with the file's Redis
command. Feedback sent to one replica moves the rolling calibration both report, the budget threshold is
the quantile of the traffic both share, and a score cached by one is a hit on the other. The Prometheus
and Grafana files the stack mounts are checked against the same services."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

import calibrators
import policies
from policies import load_policy
from router.budget import MIN_SAMPLES, REFRESH_EVERY
from tests.conftest import free_port, wait_ready
from tests.provider import Provider
from tests.redis_process import RedisProcess
from tests.test_metrics import promtool
from tests.test_replicas import Replica, ask, gauges

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
DOCKERFILE = "deploy/docker/Dockerfile"
POLICY_IN_IMAGE = "/etc/confidence-router/policy.yaml"
# A replica recomputes its threshold every REFRESH_EVERY requests from the scores already in the shared
# window, once it holds MIN_SAMPLES: the last of a's TRAFFIC requests sets a's threshold from the first
# FIRST_BUDGETED scores, and b's first request reads all TRAFFIC of them.
FIRST_BUDGETED = -(-MIN_SAMPLES // REFRESH_EVERY) * REFRESH_EVERY
TRAFFIC = FIRST_BUDGETED + 1

Service = dict[str, Any]


def services() -> dict[str, Service]:
    return dict(yaml.safe_load(COMPOSE.read_text())["services"])


def router_services() -> dict[str, Service]:
    found = {name: s for name, s in services().items() if s.get("build", {}).get("dockerfile") == DOCKERFILE}
    assert len(found) == 2, f"{COMPOSE}: expected two services built from {DOCKERFILE}, found {list(found)}"
    return found


def mounted(service: Service, target: str) -> Path:
    """The host file of the bind mount at `target`, as compose resolves it (relative to the file)."""
    for volume in service["volumes"]:
        source, mount_point, *_ = volume.split(":")
        if mount_point == target:
            return (COMPOSE.parent / source).resolve()
    raise AssertionError(f"{COMPOSE}: nothing is mounted at {target}")


def flag_value(command: list[str], flag: str) -> str:
    assert flag in command, f"{COMPOSE}: the router command {command} has no {flag}"
    return command[command.index(flag) + 1]


def local_command(service: Service, policy: Path, port: int) -> list[str]:
    """The service's command, listening on a loopback port of the test's and reading the test's policy."""
    command = list(service["command"])
    for flag, value in {"--host": "127.0.0.1", "--port": str(port), "--policy": str(policy)}.items():
        flag_value(command, flag)
        command[command.index(flag) + 1] = value
    return [sys.executable, "-m", "router", *command]


def local_environment(service: Service, redis_port: int) -> dict[str, str]:
    """The service's environment, with the Redis service's address mapped to the test's redis-server."""
    env = dict(os.environ)
    for name, value in service["environment"].items():
        if value is None:  # passed through from the shell: the provider takes any key
            env[name] = f"stand-in-{name.lower()}"
            continue
        env[name] = str(value)
    url = urlsplit(env["ROUTER_REDIS_URL"])
    assert url.hostname in services(), f"ROUTER_REDIS_URL names no compose service: {url.hostname}"
    env["ROUTER_REDIS_URL"] = url._replace(netloc=f"127.0.0.1:{redis_port}").geturl()
    return env


def local_policy(source: Path, folder: Path, tiny_model: Path, tiny_head: Path, provider_url: str) -> Path:
    """The mounted policy on the tiny model (fast scoring, short answers), its remote targets on the
    provider; rules, targets and the escalation budget as written."""
    data = yaml.safe_load(source.read_text())
    data["scorer"].update(model=str(tiny_model), adapter=str(tiny_head))
    for target in data["targets"].values():
        if "api_base" in target:
            target["api_base"] = provider_url
        if target["kind"] == "local":
            target["max_tokens"] = 4
    path = folder / "policy.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


class ComposeRedis(RedisProcess):
    """redis-server with the arguments of the compose file's Redis service, on a port and in a folder of
    the test's own."""

    def __init__(self, folder: Path, command: list[str]) -> None:
        super().__init__(folder)
        self.arguments = command

    @property
    def command(self) -> list[str]:
        return [*self.arguments, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder)]


@dataclass
class Traffic:
    """What replica a answered: the questions, their confidences and request ids."""

    questions: list[str]
    confidences: list[float]
    request_ids: list[str]


@pytest.fixture(scope="module")
def stack(
    tiny_model: Path, tiny_head: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[Replica]]:
    folder = tmp_path_factory.mktemp("compose")
    redis_command = services()["redis"]["command"]
    assert redis_command[0] == "redis-server", f"{COMPOSE}: the redis service does not run redis-server"
    redis = ComposeRedis(folder / "redis-data", redis_command)
    redis.folder.mkdir()
    provider = Provider()
    started: list[Replica] = []
    try:
        redis.start()
        for name, service in router_services().items():
            policy_folder = folder / name
            policy_folder.mkdir()
            source = mounted(service, flag_value(service["command"], "--policy"))
            policy = local_policy(source, policy_folder, tiny_model, tiny_head, provider.base_url)
            port, log = free_port(), policy_folder / "router.log"
            with log.open("w") as out:
                process = subprocess.Popen(
                    local_command(service, policy, port),
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    text=True,
                    env=local_environment(service, redis.port),
                )
            started.append(Replica(f"http://127.0.0.1:{port}", policy, process, log))
        for replica in started:
            wait_ready(replica.url)
        yield started
    finally:
        for replica in started:
            replica.process.send_signal(signal.SIGTERM)  # what `docker compose stop` sends
        exits = [replica.process.wait(timeout=60) for replica in started]
        redis.kill()
        provider.close()
        assert exits == [0] * len(started), f"replicas did not drain and exit 0 on SIGTERM: {exits}"


@pytest.fixture(scope="module")
def traffic(stack: list[Replica], http: httpx.Client) -> Traffic:
    """TRAFFIC distinct questions, all to replica a."""
    a = stack[0]
    questions = [f"Question {i}: which mountain is highest?" for i in range(TRAFFIC)]
    answered = [ask(a, question, http=http) for question in questions]
    return Traffic(
        questions,
        [float(r.headers["x-router-confidence"]) for r in answered],
        [r.headers["x-router-request-id"] for r in answered],
    )


def metric(replica: Replica, name: str, absent: float | None = None, **labels: str) -> float:
    """A sample of the replica's /metrics; `absent` when it has none (a labelled series before its first
    event), else an error."""
    for family in text_string_to_metric_families(httpx.get(f"{replica.url}/metrics").text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    assert absent is not None, f"{replica.url}/metrics has no {name}{labels}"
    return absent


def test_a_score_cached_by_one_replica_is_a_hit_on_the_other(
    stack: list[Replica], traffic: Traffic, http: httpx.Client
) -> None:
    b = stack[1]
    hits = metric(b, "router_scoring_seconds_count", absent=0, cache="hit")
    response = ask(b, traffic.questions[0], http=http)
    assert metric(b, "router_scoring_seconds_count", cache="hit") == hits + 1
    assert float(response.headers["x-router-confidence"]) == traffic.confidences[0]


def test_the_budget_threshold_is_the_quantile_of_the_shared_traffic(
    stack: list[Replica], traffic: Traffic, http: httpx.Client
) -> None:
    a, b = stack
    rate = yaml.safe_load(mounted(router_services()["router-a"], POLICY_IN_IMAGE).read_text())[
        "target_escalation_rate"
    ]
    ask(b, "A question only b is asked.", http=http)
    # b has answered at most two requests, too few for a threshold of its own: it read a's traffic. The
    # headers carry the confidences to 4 decimals.
    assert metric(b, "router_escalation_threshold") == pytest.approx(
        np.quantile(traffic.confidences, rate), abs=1e-4
    )
    assert metric(a, "router_escalation_threshold") == pytest.approx(
        np.quantile(traffic.confidences[:FIRST_BUDGETED], rate), abs=1e-4
    )


def test_feedback_to_one_replica_moves_the_calibration_both_report(
    stack: list[Replica], traffic: Traffic, http: httpx.Client
) -> None:
    a, b = stack
    assert gauges(a)["router_calibration_samples[1000]"] in (0, None)
    ranks = sorted(range(TRAFFIC), key=lambda i: traffic.confidences[i])
    correct = [ranks.index(i) % 3 != 0 for i in range(TRAFFIC)]  # right roughly as often as confident
    for request_id, right in zip(traffic.request_ids, correct, strict=True):
        body = {"request_id": request_id, "correct": right}
        assert http.post(f"{b.url}/v1/feedback", json=body).json()["status"] == "recorded"

    seen_a, seen_b = gauges(a), gauges(b)
    assert seen_a == seen_b
    assert seen_a["router_calibration_samples[1000]"] == TRAFFIC
    assert seen_a["router_calibration_samples[100]"] == 100
    assert seen_a["router_calibration_ece[1000]"] == pytest.approx(
        calibrators.ece(traffic.confidences, correct), abs=1e-3
    )


def test_the_stacks_redis_is_bounded_and_never_evicts_keys_or_spend(stack: list[Replica]) -> None:
    for replica in stack:  # docs/operations.md, "Redis settings"
        eviction = httpx.get(f"{replica.url}/readyz").json()["eviction"]
        assert eviction["policy"] == "volatile-lru" and eviction["safe"] is True
        assert eviction["maxmemory_bytes"] == 1024**3
    command = services()["redis"]["command"]
    assert command[command.index("--appendonly") + 1] == "yes"


def test_the_mounted_policy_loads_as_the_image_lays_it_out(tmp_path: Path) -> None:
    """The image keeps its policy beside a link to the shipped scorers (deploy/docker/Dockerfile)."""
    for service in router_services().values():
        policy = tmp_path / "policy.yaml"
        shutil.copy(mounted(service, POLICY_IN_IMAGE), policy)
        (tmp_path / "scorers").unlink(missing_ok=True)
        (tmp_path / "scorers").symlink_to(Path(policies.__file__).parent / "scorers")
        assert load_policy(policy).target_escalation_rate is not None


def test_prometheus_scrapes_every_replica_and_loads_the_alert_rules() -> None:
    config = DEPLOY / "prometheus" / "prometheus.yml"
    result = subprocess.run([promtool(), "check", "config", str(config)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in result.stdout
    targets = {
        target
        for job in yaml.safe_load(config.read_text())["scrape_configs"]
        for static in job["static_configs"]
        for target in static["targets"]
    }
    ports = {flag_value(s["command"], "--port") for s in router_services().values()}
    assert targets == {f"{name}:{port}" for name in router_services() for port in ports}
    prometheus = services()["prometheus"]
    assert mounted(prometheus, "/etc/prometheus/prometheus.yml") == config
    assert mounted(prometheus, "/etc/prometheus/alerts.yml") == DEPLOY / "prometheus" / "alerts.yml"


def test_grafana_provisions_the_dashboard_on_the_stacks_prometheus() -> None:
    grafana = services()["grafana"]
    provisioning = mounted(grafana, "/etc/grafana/provisioning")
    dashboards = yaml.safe_load((provisioning / "dashboards" / "confidence-router.yml").read_text())
    [provider] = dashboards["providers"]
    dashboard = mounted(grafana, f"{provider['options']['path']}/confidence-router.json")
    assert dashboard == DEPLOY / "grafana" / "confidence-router.json"
    [source] = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert urlsplit(source["url"]).hostname in services()
    assert source["type"] == "prometheus" and source["isDefault"]
