"""A local target with an answerer: its rows of a batch run with the answerer's adapter, everything else
(the scorer, other targets' rows) with the weights it reads without one, and over HTTP its reply is always
the failure-aware JSON, whatever the model writes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from localmodel import LocalModel
from policies import LocalTarget, PolicyError, load_policy
from policies.failure_aware import DECISIONS
from router import generation
from router.targets.local import answerer_adapter
from scorers import ScoreItem
from scorers.head import HeadScorer
from tests.conftest import Served, head_scorer_yaml
from tests.tiny import lora
from tests.tolerance import assert_same_drafts, close
from train.data import QARecord, prompt

QUESTIONS = ["Who wrote Hamlet?", "What is the capital of France?", "How many legs has a spider?"]


@pytest.fixture(scope="module")
def answerer(untied_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An answerer folder whose adapter is random and non-zero, so that applying it shows."""
    folder = tmp_path_factory.mktemp("answerers") / "random"
    lora(untied_model, seed=3).save_pretrained(str(folder))
    (folder / "answerer.json").write_text(json.dumps({"base_model": str(untied_model)}))
    return folder


def items() -> list[ScoreItem]:
    return [ScoreItem(prompt(QARecord(id=q, question=q, answers=["x"], source="s"))) for q in QUESTIONS]


@pytest.mark.parametrize("answerer_first", [False, True])
def test_the_scorer_reads_the_same_weights_with_an_answerer_loaded(
    untied_model: Path, untied_head: Path, answerer: Path, answerer_first: bool
) -> None:
    alone = HeadScorer(LocalModel(str(untied_model)), untied_head).raw_scores(items())
    model = LocalModel(str(untied_model))
    if answerer_first:  # then the answerer is the adapter that wraps the model
        answerer_adapter(model, answerer)
    scorer = HeadScorer(model, untied_head)
    name = answerer_adapter(model, answerer)
    model.draft_batch([i.messages for i in items()], 4, adapter=name)  # the answerer was active last
    assert scorer.raw_scores(items()) == close(alone)  # within float noise (tests/tolerance.py)
    drafts = LocalModel(str(untied_model)).draft_batch([i.messages for i in items()], 6)
    assert_same_drafts(model.draft_batch([i.messages for i in items()], 6), drafts)  # the base weights' too


def written(
    model: LocalModel, prompts: list[list[int]], adapters: list[str | None], steps: int
) -> list[list[int]]:
    batch, tokens = generation.prefill(model, prompts, adapters)
    rows = [[t] for t, _ in tokens]
    for _ in range(steps):
        for r, (t, _) in zip(rows, generation.step(model, batch), strict=True):
            r.append(t)
    return rows


def test_one_batch_writes_answerer_rows_and_base_rows_each_as_alone(
    untied_model: Path, answerer: Path
) -> None:
    model = LocalModel(str(untied_model))
    name = answerer_adapter(model, answerer)
    prompts = [model.prompt_ids(i.messages) for i in items()]
    mixed = written(model, prompts, [None, name, None], 8)
    base = [written(model, [p], [None], 8)[0] for p in prompts]
    tuned = [written(model, [p], [name], 8)[0] for p in prompts]
    assert mixed == [base[0], tuned[1], base[2]]
    assert tuned != base  # the adapter changes what is written


def policy_text(model: Path, head: Path, answerer: str, failure_aware: bool = True) -> str:
    return f"""\
failure_aware: {str(failure_aware).lower()}
{head_scorer_yaml(model, head)}targets:
  tuned: {{kind: local, max_tokens: 24, answerer: {answerer}}}
  plain: {{kind: local, max_tokens: 24}}
rules:
  - when: {{model: plain}}
    action: answer_with
    target: plain
  - when: {{model: tuned, confidence_at_least: 0.0}}
    action: answer_with
    target: tuned
  - action: hedge
    target: tuned
"""


def test_a_policy_names_its_answerer_relative_to_the_policy_file(
    untied_model: Path, untied_head: Path, answerer: Path
) -> None:
    path = answerer.parent / "policy.yaml"
    path.write_text(policy_text(untied_model, untied_head, answerer.name))
    tuned = load_policy(path).targets["tuned"]
    assert isinstance(tuned, LocalTarget) and tuned.answerer == str(answerer)
    path.write_text(policy_text(untied_model, untied_head, "missing"))
    with pytest.raises(PolicyError) as missing:
        load_policy(path)
    assert missing.value.problems == [
        f"{path}:4: targets.tuned.answerer: no adapter folder: {answerer.parent}/missing"
    ]
    path.write_text(policy_text(untied_model, untied_head, answerer.name, failure_aware=False))
    with pytest.raises(PolicyError) as plain:
        load_policy(path)
    assert plain.value.problems == [
        f"{path}:4: targets.tuned.answerer: an answerer answers in JSON: it needs failure_aware: true"
    ]


def test_the_answerers_reply_is_always_failure_aware_json(
    serve: Callable[..., Served], untied_model: Path, untied_head: Path, answerer: Path
) -> None:
    path = answerer.parent / "served.yaml"
    path.write_text(policy_text(untied_model, untied_head, answerer.name))
    served = serve(load_policy(path))

    async def ask(model: str, question: str) -> httpx.Response:
        async with httpx.AsyncClient(base_url=served.base_url, timeout=120) as client:
            body = {"model": model, "messages": [{"role": "user", "content": question}]}
            return await client.post("/v1/chat/completions", json=body)

    async def together() -> list[httpx.Response]:  # tuned and plain rows share the batch
        asks = [ask(m, q) for q in QUESTIONS for m in ("tuned", "plain", "router")]
        return await asyncio.gather(*asks)

    asked = [m for _ in QUESTIONS for m in ("tuned", "plain", "router")]
    for response, model in zip(asyncio.run(together()), asked, strict=True):
        assert response.status_code == 200, response.text
        stated = json.loads(response.json()["choices"][0]["message"]["content"])
        assert list(stated) == ["decision", "answer", "justification", "evidence_quality"]
        assert stated["decision"] in DECISIONS
        if model == "router":  # the hedge rule: unsure, and no hedge template around the JSON
            assert stated["decision"] != "answer" and "double-check" not in (stated["answer"] or "")
        if model != "plain":
            # A random model writes no JSON: its words are an uncertain answer, said to be unreadable.
            assert stated["decision"] in {"uncertain", "refuse"}
            assert "not the failure-aware JSON" in stated["justification"] or stated["decision"] == "refuse"
