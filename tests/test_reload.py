"""Reloading the policy through the admin endpoint: the key, failures that keep the old policy serving,
and a request in flight that finishes on the policy it started with."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from policies import load_policy
from tests.conftest import Served, head_scorer_yaml
from tests.provider import ANSWER, Provider, reload_policy

ADMIN_KEY = "admin-key-for-tests"


@pytest.fixture(scope="module")
def provider() -> Iterator[Provider]:
    held = Provider(held=True)
    yield held
    held.close()


@pytest.fixture
def setup(
    serve: Callable[..., Served],
    tiny_model: Path,
    tiny_head: Path,
    provider: Provider,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[Served, Path, Callable[..., str]]:
    monkeypatch.setenv("PROVIDER_KEY", "unused")
    scorer = head_scorer_yaml(tiny_model, tiny_head)

    def text(name: str, probe_action: str = "answer_with") -> str:
        return reload_policy(name, scorer, provider.base_url, probe_action)

    path = tmp_path / "policy.yaml"
    path.write_text(text("v1"))
    return serve(load_policy(path), policy_path=path, admin_key=ADMIN_KEY), path, text


def ask(served: Served, user: str) -> httpx.Response:
    body = {"model": "router", "user": user, "messages": [{"role": "user", "content": "Who wrote Hamlet?"}]}
    return httpx.post(f"{served.base_url}/v1/chat/completions", json=body, timeout=120)


def reload(served: Served, key: str | None = ADMIN_KEY) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.post(f"{served.base_url}/admin/reload", headers=headers, timeout=60)


def test_a_request_in_flight_finishes_on_its_policy_while_new_ones_get_the_new_one(
    setup: tuple[Served, Path, Callable[..., str]], provider: Provider
) -> None:
    served, path, text = setup
    assert ask(served, "probe").headers["x-router-decision"] == "answer"
    provider.released.clear()
    in_flight: list[httpx.Response] = []
    slow = threading.Thread(target=lambda: in_flight.append(ask(served, "slow")))
    slow.start()
    assert provider.arrived.wait(timeout=60), "the slow request never reached the provider"

    path.write_text(text("v2", probe_action="refuse"))
    reloaded = reload(served)
    assert reloaded.status_code == 200, reloaded.text
    assert reloaded.json()["policy"] == "v2"
    assert ask(served, "probe").headers["x-router-decision"] == "refuse"
    assert not in_flight  # still held by the provider, across the reload

    provider.released.set()
    slow.join(timeout=60)
    [response] = in_flight
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == ANSWER
    assert response.headers["x-router-rule"] == "slow"
    assert 'router_reloads_total{result="ok"} 1.0' in httpx.get(f"{served.base_url}/metrics").text


@pytest.mark.parametrize("key", [None, "wrong"])
def test_reload_needs_the_admin_key(setup: tuple[Served, Path, Callable[..., str]], key: str | None) -> None:
    served, _, _ = setup
    response = reload(served, key)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["error"]["type"] == "authentication_error"


def test_admin_endpoints_are_off_without_a_key(
    serve: Callable[..., Served], tiny_model: Path, tiny_head: Path, tmp_path: Path
) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(
        head_scorer_yaml(tiny_model, tiny_head)
        + "targets: {local: {kind: local}}\nrules: [{action: refuse}]\n"
    )
    served = serve(load_policy(path), policy_path=path)
    response = reload(served)
    assert response.status_code == 403
    assert "ROUTER_ADMIN_KEY" in response.json()["error"]["message"]


def test_a_broken_policy_is_reported_and_the_old_one_keeps_serving(
    setup: tuple[Served, Path, Callable[..., str]],
) -> None:
    served, path, text = setup
    path.write_text(text("v1") + "  - action: fly\n")
    response = reload(served)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "reload_failed"
    assert error["message"].startswith(f"Reload failed: {path}:")
    assert "rules.4.action: Input should be" in error["message"]
    assert ask(served, "probe").headers["x-router-rule"] == "probe"


def test_changing_the_model_needs_a_restart(
    setup: tuple[Served, Path, Callable[..., str]], tiny_model: Path, smollm2: Path
) -> None:
    served, path, text = setup
    path.write_text(text("v3").replace(f'model: "{tiny_model}"', f'model: "{smollm2}"'))
    response = reload(served)
    assert response.status_code == 400
    assert "needs a restart" in response.json()["error"]["message"]
    assert 'router_reloads_total{result="failed"} 1.0' in httpx.get(f"{served.base_url}/metrics").text


def test_a_target_the_reload_removes_leaves_no_metric_series(
    setup: tuple[Served, Path, Callable[..., str]], tiny_model: Path, tiny_head: Path
) -> None:
    served, path, _ = setup
    assert 'router_target_up{target="remote"} 1.0' in httpx.get(f"{served.base_url}/metrics").text
    scorer = head_scorer_yaml(tiny_model, tiny_head)
    path.write_text(
        f"name: local-only\n{scorer}targets:\n  local: {{kind: local, max_tokens: 4}}\n"
        "rules:\n  - action: answer_with\n    target: local\n"
    )
    assert reload(served).status_code == 200
    scrape = httpx.get(f"{served.base_url}/metrics").text
    assert 'router_target_up{target="local"} 1.0' in scrape
    assert 'target="remote"' not in scrape.split("# HELP router_target_up")[1].split("# HELP")[0]
