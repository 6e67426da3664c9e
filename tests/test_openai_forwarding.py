"""tests/test_forwarding.py's checks of what a client's fields may reach, collected here again (imported),
against the same policy with its targets of `kind: openai` (tests/test_openai_target.py says why). This kind
sends a body of its own making, not litellm's keywords: a control keyword would reach the upstream only as
a field, and is refused all the same, so that whether a request is taken never depends on the kind."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from policies import Policy
from tests.conftest import Served, head_scorer_yaml, policy_from
from tests.faults import FaultServer
from tests.test_forwarding import (  # noqa: F401  (collected here again, against kind: openai)
    KEY_VARIABLE,
    POLICY,
    SECRET,
    test_a_control_keyword_is_a_400_naming_it,
    test_a_declared_extra_field_reaches_its_target_and_an_undeclared_one_is_a_400,
    test_a_lone_surrogate_in_a_key_is_a_400_that_still_encodes,
    test_allowed_fields_reach_the_upstream_body,
    test_an_extra_field_goes_only_to_the_targets_that_declare_it,
    test_harm_inside_allowed_fields_is_a_400_before_any_call,
    test_several_unknown_fields_are_all_named,
    test_the_key_reaches_the_real_upstream_only,
    test_the_targets_max_tokens_caps_the_clients,
    test_unknown_message_fields_are_refused_too,
)
from tests.test_openai_target import as_openai


@pytest.fixture(scope="module")
def stub() -> Iterator[FaultServer]:
    server = FaultServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def attacker() -> Iterator[FaultServer]:
    server = FaultServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def router(
    serve: Callable[[Policy], Served],
    stub: FaultServer,
    tiny_model: Path,
    tiny_head: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Served]:
    text = POLICY.format(scorer=head_scorer_yaml(tiny_model, tiny_head), stub=stub.base_url, key=KEY_VARIABLE)
    with pytest.MonkeyPatch.context() as env:
        env.setenv(KEY_VARIABLE, SECRET)
        yield serve(policy_from(as_openai(text), tmp_path_factory.mktemp("openai-forwarding")))


def test_the_targets_are_openai_ones(router: Served, stub: FaultServer) -> None:
    import httpx  # the test's client

    body = {"model": "plain", "messages": [{"role": "user", "content": "hi"}]}
    assert httpx.post(f"{router.base_url}/v1/chat/completions", json=body, timeout=30).status_code == 200
    assert "aiohttp/" in stub.recorded("plain")[-1].headers["user-agent"]
