"""`router serve --watch-policy`: a real server process whose policy file is replaced the way the kubelet
replaces a ConfigMap volume's files (a fresh timestamped folder, then an atomic swap of the `..data`
symlink that the file's own symlink goes through) reloads the policy in place, with no restart."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from itertools import count
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port, head_scorer_yaml, wait_ready

ROUTER = str(Path(sys.executable).with_name("router"))
WATCH_S = 0.3
RELOADED = re.compile(r"reloaded: policy '(\w+)'")


class ConfigMapVolume:
    """A folder laid out as the kubelet lays out a ConfigMap volume: `policy.yaml -> ..data/policy.yaml`
    (a link per key), `..data -> ..<timestamp>/`, the files in the timestamped folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._versions = count()
        self.root.mkdir()

    @property
    def policy(self) -> Path:
        return self.root / "policy.yaml"

    def publish(self, text: str, **others: str) -> None:
        """`text`: policy.yaml's; `others`: more keys, by file name with `_` for `.`."""
        files = {"policy.yaml": text} | {name.replace("_", "."): body for name, body in others.items()}
        current = self.root / "..data"
        previous = self.root / os.readlink(current) if current.is_symlink() else None
        version = self.root / f"..2026_01_01_00_00_00.{next(self._versions):09d}"
        version.mkdir()
        for name, body in files.items():
            (version / name).write_text(body)
        (self.root / "..data_tmp").symlink_to(version.name)
        os.rename(self.root / "..data_tmp", current)  # the swap: atomic, as the kubelet's
        for name in files:
            if not (self.root / name).is_symlink():
                (self.root / name).symlink_to(f"..data/{name}")
        if previous is not None:
            shutil.rmtree(previous)


class Server:
    """`router serve` as its own process, its log in a file so that the test can read what it said."""

    def __init__(self, policy: Path, log: Path, watch_env: str | None) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log = log
        env = {**os.environ}
        env.pop("ROUTER_WATCH_POLICY_S", None)
        if watch_env is not None:  # through the environment, as the chart sets it
            env["ROUTER_WATCH_POLICY_S"] = watch_env
        command = [ROUTER, "serve", "--policy", str(policy), "--port", str(self.port)]
        with log.open("w") as sink:
            self.proc = subprocess.Popen(command, env=env, stderr=sink, stdout=sink)
        wait_ready(self.base_url)

    def said(self) -> str:
        return self.log.read_text()

    def reloads(self) -> list[str]:
        return RELOADED.findall(self.said())

    def targets(self) -> list[str]:
        models = httpx.get(f"{self.base_url}/v1/models", timeout=10).json()["data"]
        return [model["id"] for model in models if model["id"] != "router"]

    def decision(self) -> str:
        body = {"model": "router", "messages": [{"role": "user", "content": "Who wrote Hamlet?"}]}
        answer = httpx.post(f"{self.base_url}/v1/chat/completions", json=body, timeout=60)
        assert answer.status_code == 200, answer.text
        return answer.headers["x-router-decision"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=60)


@pytest.fixture
def policy_text(tiny_model: Path, tiny_head: Path) -> Callable[..., str]:
    def text(name: str, action: str, calibrator: str | None = None) -> str:
        rule = "action: refuse" if action == "refuse" else "action: answer_with\n    target: " + name
        scorer = head_scorer_yaml(tiny_model, tiny_head)
        if calibrator is not None:
            scorer = scorer.replace("}", f", calibrator: {calibrator}}}")
        return (
            f"name: {name}\n{scorer}"
            f"targets:\n  {name}: {{kind: local, max_tokens: 2}}\n"
            f"rules:\n  - name: only\n    {rule}\n"
        )

    return text


def constant_calibrator(confidence_logit: float) -> str:
    """A Platt calibrator that ignores the score: every confidence is sigmoid(`confidence_logit`)."""
    params = {"slope": 0.0, "intercept": confidence_logit}
    return json.dumps(
        {"format": "confidence-router/calibrator", "version": 1, "kind": "platt"}
        | {"input_kind": "probability", "params": params}
    )


@pytest.fixture
def volume(tmp_path: Path) -> ConfigMapVolume:
    return ConfigMapVolume(tmp_path / "policy")


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[[Path, str | None], Server]]:
    servers: list[Server] = []

    def started(policy: Path, watch_env: str | None) -> Server:
        servers.append(Server(policy, tmp_path / f"router-{len(servers)}.log", watch_env))
        return servers[-1]

    yield started
    for server in servers:
        server.stop()


def eventually(check: Callable[[], bool], within_s: float = 30) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return False


def test_a_swapped_configmap_file_is_reloaded_in_place(
    volume: ConfigMapVolume,
    start: Callable[[Path, str | None], Server],
    policy_text: Callable[..., str],
) -> None:
    volume.publish(policy_text("first", "answer"))
    server = start(volume.policy, str(WATCH_S))
    pid = server.proc.pid
    assert server.targets() == ["first"]
    assert server.decision() == "answer"

    volume.publish(policy_text("second", "refuse"))
    assert eventually(lambda: server.targets() == ["second"]), server.said()
    assert server.decision() == "refuse"
    assert server.reloads() == ["second"]
    assert server.proc.poll() is None and server.proc.pid == pid  # the same process: no restart

    # The same content again, through a fresh folder and symlink: nothing to reload.
    volume.publish(policy_text("second", "refuse"))
    time.sleep(WATCH_S * 6)
    assert server.reloads() == ["second"]

    volume.publish(policy_text("third", "answer"))
    assert eventually(lambda: server.reloads() == ["second", "third"]), server.said()
    assert server.targets() == ["third"]
    assert server.decision() == "answer"
    metrics = httpx.get(f"{server.base_url}/metrics", timeout=10).text
    assert 'router_reloads_total{result="ok"} 2.0' in metrics


def test_a_broken_policy_logs_one_error_and_the_old_one_keeps_serving(
    volume: ConfigMapVolume,
    start: Callable[[Path, str | None], Server],
    policy_text: Callable[..., str],
) -> None:
    volume.publish(policy_text("first", "refuse"))
    server = start(volume.policy, str(WATCH_S))

    volume.publish(policy_text("broken", "refuse") + "  - action: fly\n")
    assert eventually(lambda: "policy watch: Reload failed" in server.said()), server.said()
    time.sleep(WATCH_S * 6)  # several more looks at the same broken content
    [failure] = [line for line in server.said().splitlines() if "policy watch" in line]
    assert f"{volume.policy}:" in failure and "rules.1.action" in failure
    assert server.targets() == ["first"]
    assert server.decision() == "refuse"

    volume.publish(policy_text("fixed", "answer"))
    assert eventually(lambda: server.reloads() == ["fixed"]), server.said()
    assert server.decision() == "answer"
    assert server.proc.poll() is None


def test_without_the_watch_a_changed_file_waits_for_a_reload(
    volume: ConfigMapVolume,
    start: Callable[[Path, str | None], Server],
    policy_text: Callable[..., str],
) -> None:
    volume.publish(policy_text("first", "refuse"))
    server = start(volume.policy, None)
    volume.publish(policy_text("second", "answer"))
    time.sleep(2)
    assert server.targets() == ["first"]
    server.proc.send_signal(signal.SIGHUP)
    assert eventually(lambda: server.targets() == ["second"]), server.said()


def test_a_changed_calibrator_beside_the_policy_is_reloaded_too(
    volume: ConfigMapVolume,
    start: Callable[[Path, str | None], Server],
    policy_text: Callable[..., str],
) -> None:
    policy = policy_text("first", "answer", calibrator="calibrator.json")
    volume.publish(policy, calibrator_json=constant_calibrator(0.0))
    server = start(volume.policy, str(WATCH_S))

    def confidence() -> float:
        body = {"messages": [{"role": "user", "content": "Who wrote Hamlet?"}]}
        scored = httpx.post(f"{server.base_url}/v1/score", json=body, timeout=60).json()
        return float(scored["confidence"])

    assert confidence() == pytest.approx(0.5)
    volume.publish(policy, calibrator_json=constant_calibrator(2.0))  # the policy file as it was
    assert eventually(lambda: server.reloads() == ["first"]), server.said()
    assert confidence() == pytest.approx(1 / (1 + math.exp(-2.0)))


def test_a_negative_interval_is_refused() -> None:
    result = subprocess.run(
        [ROUTER, "serve", "--watch-policy", "-1"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "Invalid value for '--watch-policy' (env var: 'ROUTER_WATCH_POLICY_S')" in result.stderr
