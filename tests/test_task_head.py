"""The kind-of-request head: fitted on a scorer's own states without touching its certainty heads, read on
the same forward pass, a fact policies test (`when: {task: ...}`), a header, a /v1/score field and a metric
label; the shipped scorer's head tells the families apart on rows it never saw."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import get_args

import httpx
import numpy as np
import pytest

from localmodel.model import LocalModel
from policies import DEFAULT_POLICY_PATH, Confidences, PolicyError, RequestFacts, decide, load_policy
from policies.facts import TASK_FAMILIES
from router.score_cache import ScoreCache
from router.state import RedisStore
from scorers import RawScore, ScoreItem
from scorers.card import ScorerCard
from scorers.head import HEAD_FILE, HeadScorer
from tests.conftest import Served, head_scorer_yaml
from train.data import Task, load_records, shared_data_dir
from train.task_head import as_sent, split, train_task_head

DATA = shared_data_dir()
SHIPPED = DEFAULT_POLICY_PATH.parent / "scorers" / "smollm2-head"


@pytest.fixture(scope="module")
def fitted(tiny_head: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, bytes], str]:
    """A copy of the tiny scorer with a task head fitted on three families: the folder, its certainty
    files' bytes before the fit, and its version before."""
    folder = tmp_path_factory.mktemp("task-head") / "scorer"
    shutil.copytree(tiny_head, folder)
    before = {name: (folder / name).read_bytes() for name in (HEAD_FILE, "adapter_model.safetensors")}
    old_version = HeadScorer(LocalModel(ScorerCard.load(folder).base_model), folder).version
    train_task_head(folder, FEW, frozenset(), per_source=40, seed=0, cache=folder.parent / "states.npz")
    return folder, before, old_version


FEW = [
    *load_records(DATA / "triviaqa" / "triviaqa_sm_sub.jsonl")[:40],
    *load_records(DATA / "gsm8k" / "test.jsonl")[:40],
    *load_records("humaneval")[:40],
]


def test_a_task_head_is_fitted_beside_the_certainty_heads_and_leaves_them_as_they_were(
    fitted: tuple[Path, dict[str, bytes], str],
) -> None:
    folder, before, old_version = fitted
    card = ScorerCard.load(folder)
    assert card.task_head is not None and card.task_head.families == ["qa", "math", "code"]
    assert {name: (folder / name).read_bytes() for name in before} == before
    report = card.task_head.model_extra or {}
    assert set(report["test_accuracy"]) <= {"qa", "math", "code"} and report["c"] in report["c_grid"]
    scorer = HeadScorer(LocalModel(card.base_model), folder)
    assert scorer.tasks == ("qa", "math", "code") and scorer.version != old_version
    scored = scorer.score_batch([ScoreItem([{"role": "user", "content": "What is 12 times 7?"}])])[0]
    assert scored.task is not None and set(scored.task) == {"qa", "math", "code"}
    assert sum(scored.task.values()) == pytest.approx(1, abs=1e-5)
    assert scored.family == max(scored.task, key=scored.task.__getitem__)


def test_a_refit_reads_the_states_it_has_seen_from_its_cache(
    fitted: tuple[Path, dict[str, bytes], str],
) -> None:
    folder = fitted[0]
    cache = folder.parent / "states.npz"
    cached, written = _keys(cache), cache.stat().st_mtime_ns
    train_task_head(folder, FEW, frozenset(), per_source=40, seed=0, cache=cache)
    assert _keys(cache) == cached and cache.stat().st_mtime_ns == written


def _keys(cache: Path) -> int:
    stored = np.load(cache)
    return sum(stored[name].size for name in stored.files if name.startswith("keys_"))


def test_short_answer_questions_are_sent_with_and_without_the_brevity_cue() -> None:
    records = FEW[:40]
    cued = [as_sent(r)[0]["content"].endswith(" Answer in a few words.") for r in records]
    assert 10 < sum(cued) < 30
    bare = next(r for r, c in zip(records, cued, strict=True) if not c)
    assert as_sent(bare) == [{"role": "user", "content": bare.question}]
    math = FEW[40]
    assert as_sent(math) == [{"role": "user", "content": math.question}]


def test_held_out_sources_only_judge() -> None:
    parts = split(FEW, 0, frozenset({"gsm8k_test"}))
    assert {r.source for r in parts.train + parts.dev} == {"triviaqa", "humaneval"}
    assert sum(r.source == "gsm8k_test" for r in parts.test) == 40


def test_a_task_rule_matches_the_family_the_scorer_saw(
    write_policy: Callable[[str], Path], tiny_model: Path, fitted: tuple[Path, dict[str, bytes], str]
) -> None:
    policy = load_policy(
        write_policy(
            head_scorer_yaml(tiny_model, fitted[0])
            + "targets: {local: {kind: local}}\n"
            + "rules:\n"
            + "  - {name: small-talk, when: {task: [chat, instructions]}, action: answer_with,"
            + " target: local}\n"
            + "  - {name: rest, action: hedge}\n"
        ),
    )

    async def seen(family: str | None) -> str:
        async def confidences() -> Confidences:
            return Confidences(0.1, {}, family)

        return (await decide(policy, RequestFacts("router"), confidences)).rule

    assert asyncio.run(seen("chat")) == "small-talk"
    assert asyncio.run(seen("instructions")) == "small-talk"
    assert asyncio.run(seen("qa")) == "rest"
    assert asyncio.run(seen(None)) == "rest"  # a scorer without a task head


def test_a_task_rule_names_known_families_and_needs_a_task_head(
    write_policy: Callable[[str], Path], tiny_model: Path, tiny_head: Path
) -> None:
    rules = "rules:\n  - {when: {task: [chat, smalltalk]}, action: hedge}\n"
    rules += "  - {action: answer_with, target: local}\n"
    path = write_policy(head_scorer_yaml(tiny_model, tiny_head) + "targets: {local: {kind: local}}\n" + rules)
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    said = str(caught.value)
    assert "policy.yaml:4: rules.0.when.task.1: 'smalltalk' is not a task family" in said
    assert "policy.yaml:4: rules.0.when.task: the scorer has no task head" in said  # the tiny one has none


def test_a_cached_score_keeps_the_family(fresh_redis: str) -> None:
    async def round_trip() -> RawScore | None:
        store = RedisStore(fresh_redis)
        cache = ScoreCache(store, "test-task-cache", 60)
        messages = [{"role": "user", "content": "hi"}]
        await cache.put(messages, 0, RawScore({"m": 0.25}, task={"chat": 0.9, "qa": 0.1}))
        found = await cache.get(messages, 0)
        await store.close()
        return found

    found = asyncio.run(round_trip())
    assert found is not None and found.task == {"chat": 0.9, "qa": 0.1} and found.family == "chat"


def test_the_shipped_task_head_was_judged_on_every_family() -> None:
    head = ScorerCard.load(SHIPPED).task_head
    assert head is not None and head.families == list(TASK_FAMILIES)
    measured = head.model_extra or {}
    held_out = set(measured["held_out_sources"])
    assert {"jeopardy", "nq_open_efficientqa_test", "openbook_qa"} <= held_out
    for family in TASK_FAMILIES:
        assert measured["rows"]["train"][family] >= 100
        assert measured["test_accuracy"][family]["n"] >= 15
        assert measured["test_accuracy"][family]["accuracy"] >= 0.9  # the bar, on rows never fitted
    for source in held_out:
        assert measured["test_accuracy_by_source"][source]["n"] == 300


@pytest.fixture(scope="module")
def shipped(serve: Callable[..., Served], tmp_path_factory: pytest.TempPathFactory) -> Served:
    path = tmp_path_factory.mktemp("task-policy") / "policy.yaml"
    path.write_text(
        "scorer: {method: head, model: smollm2-135m-instruct, adapter: " + str(SHIPPED) + "}\n"
        "targets: {local: {kind: local, max_tokens: 8}}\n"
        "rules:\n"
        "  - {name: small-talk, when: {task: chat}, action: answer_with, target: local}\n"
        "  - {name: rest, action: hedge}\n"
    )
    return serve(load_policy(path))


@pytest.mark.parametrize(
    ("content", "family", "rule"),
    [
        ("Hello! How are you today?", "chat", "small-talk"),
        ("Write a short poem about the sea at night.", "chat", "small-talk"),
        ("Who wrote the novel Moby-Dick?", "qa", "rest"),
    ],
)
def test_the_family_is_a_header_a_rule_and_a_metric_over_http(
    shipped: Served, content: str, family: str, rule: str
) -> None:
    body = {"model": "router", "messages": [{"role": "user", "content": content}], "max_tokens": 8}
    response = httpx.post(f"{shipped.base_url}/v1/chat/completions", json=body, timeout=120)
    assert response.status_code == 200, response.text
    assert response.headers["x-router-task"] == family and response.headers["x-router-rule"] == rule
    metrics = httpx.get(f"{shipped.base_url}/metrics", timeout=30).text
    outcome = response.headers["x-router-decision"]
    assert f'router_task_requests_total{{decision="{outcome}",task="{family}"}}' in metrics


def test_the_score_endpoint_gives_each_familys_probability(shipped: Served) -> None:
    body = {"messages": [{"role": "user", "content": "What is the capital of France?"}]}
    scored = httpx.post(f"{shipped.base_url}/v1/score", json=body, timeout=120).json()
    assert set(scored["task_probabilities"]) == set(TASK_FAMILIES)
    assert sum(scored["task_probabilities"].values()) == pytest.approx(1, abs=1e-5)
    assert scored["task"] == "qa"


def test_the_policy_language_knows_every_family_a_record_can_have() -> None:
    assert set(get_args(Task)) == set(TASK_FAMILIES)
