"""tests/test_fallbacks.py's fallbacks and cooldowns, collected here again (imported), against the same policy
with its remote targets of `kind: openai` (tests/test_openai_target.py says why)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from policies import Policy
from tests.conftest import Served, head_scorer_yaml, policy_from
from tests.faults import FaultServer
from tests.test_fallbacks import (  # noqa: F401  (collected here again, against kind: openai)
    _policy,
    test_a_cooldown_reaches_another_replica_within_a_second,
    test_a_cooldown_without_fallbacks_is_a_fast_503_and_ends_after_cooldown_s,
    test_a_failing_remote_falls_back_to_the_local_model,
    test_a_failing_remote_falls_back_to_the_next_remote,
    test_a_healthy_target_answers_without_a_fallback_header,
    test_a_healthy_target_costs_no_store_read_per_request,
    test_a_local_model_that_cannot_answer_falls_back,
    test_a_stream_cut_after_its_first_chunk_does_not_fall_back,
    test_a_stream_that_fails_before_its_first_chunk_falls_back,
    test_a_target_that_keeps_failing_is_no_longer_called,
    test_errors_another_target_would_not_mend_do_not_fall_back,
    test_the_escalate_route_falls_back,
    test_the_hedge_route_falls_back,
    test_when_every_choice_fails_the_client_gets_the_first_failure,
)
from tests.test_openai_target import as_openai


@pytest.fixture(scope="module")
def faults() -> Iterator[FaultServer]:
    server = FaultServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def policy(
    faults: FaultServer, tiny_model: Path, tiny_head: Path, tmp_path_factory: pytest.TempPathFactory
) -> Policy:
    text = as_openai(_policy(head_scorer_yaml(tiny_model, tiny_head), faults))
    return policy_from(text, tmp_path_factory.mktemp("openai-fallbacks"))


@pytest.fixture(scope="module")
def router(serve: Callable[[Policy], Served], policy: Policy) -> Iterator[Served]:
    with pytest.MonkeyPatch.context() as env:
        env.setenv("FAULTS_KEY", "sk-faults")
        yield serve(policy)


@pytest.fixture
def stub(faults: FaultServer) -> FaultServer:
    faults.reset()
    return faults


def test_the_remote_targets_are_openai_ones(policy: Policy) -> None:
    kinds = {target.kind for target in policy.targets.values()}
    assert kinds == {"local", "openai"}
