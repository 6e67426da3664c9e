"""The head scorer's reduced-precision forward pass (localmodel/reduced.py): what it reads, what it leaves
alone, when it is chosen and who may turn it off; and on the real SmolLM2 with the shipped scorer, its
scores against fp32's."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from localmodel import Aborted, LocalModel
from localmodel import reduced as reduced_module
from localmodel.interface import PRECISION_ENV, precision_override
from localmodel.reduced import twin_dtype
from policies import PolicyError
from scorers import ScoreItem
from scorers.head import HeadScorer
from tests.conftest import policy_from
from tests.tiny import lora, make_head_scorer
from tests.tolerance import assert_same_drafts
from train.data import QARecord, prompt
from train.splits import split_of

SHIPPED = Path(__file__).parents[1] / "policies" / "scorers" / "smollm2-head"
LABELS = Path(__file__).parents[1] / "train" / "labels"
TOLERANCE = 0.02
"""How far a bf16 raw score may be from fp32's. bf16 keeps 8 bits of mantissa; through autocast the residual
stream stays fp32, and states move by 1-2%, logits by up to about 0.04: on 140 held-out rows of the shipped
scorer raw scores moved by 0.0012 on average and 0.0098 at most, the most where the sigmoid is steepest
(scores near 0.4). An adapter left out, or another layer read, moves them by far more."""
MEAN_TOLERANCE = 0.004
"""The average move over the prompts: a systematic shift would show here first."""
TASK_TOLERANCE = 0.05
"""The task head's probabilities (a softmax of larger weights): 0.0015 on average, 0.031 at most."""
ANSWER_LOCALLY = "targets: {local: {kind: local}}\nrules: [{action: answer_with, target: local}]\n"
STATE_TOLERANCE = 0.05
"""How far (relative) a bf16 state may be from fp32's; measured 1-2%."""
QUESTIONS = [
    "What is the capital of France?",
    "Who wrote the novel Moby-Dick, and in which year was it first published?",
    "2+2?",
    "Name the largest desert on Earth that is not a polar desert, and say which countries it spans.",
]


def items(questions: list[str] = QUESTIONS) -> list[ScoreItem]:
    return [ScoreItem([{"role": "user", "content": q}]) for q in questions]


@pytest.fixture(scope="module")
def model(tiny_model: Path) -> LocalModel:
    return LocalModel(str(tiny_model))


@pytest.fixture(scope="module")
def folder(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_head_scorer(tiny_model, tmp_path_factory.mktemp("head"), layer=3)


def test_the_twin_reads_the_layers_with_the_adapter_merged(
    model: LocalModel, tiny_model: Path, folder: Path, tmp_path: Path
) -> None:
    fp32, bf16 = HeadScorer(model, folder, "fp32"), HeadScorer(model, folder, "bf16")
    assert fp32.twin is None and bf16.twin is not None
    probe = HeadScorer(model, make_head_scorer(tiny_model, tmp_path / "probe", layer=3, with_lora=False))
    states = {name: s.states(items()) for name, s in (("fp32", fp32), ("bf16", bf16), ("probe", probe))}
    # Each row within STATE_TOLERANCE of fp32's, and far closer to the states with the LoRA than the LoRA
    # is to the base weights: the adapter is merged. (The tiny model's random head, of norm about 8,
    # magnifies state errors into its scores; the real scorer's scores are held below.)
    moved = (states["bf16"] - states["fp32"]).norm(dim=1) / states["fp32"].norm(dim=1)
    assert moved.max() < STATE_TOLERANCE
    assert (states["bf16"] - states["fp32"]).norm() < 0.2 * (states["probe"] - states["fp32"]).norm()
    assert bf16.version == f"{fp32.version}:bfloat16"  # its scores are cached apart
    # Only the linear layers below the layer read are copied; embeddings and norms are the model's.
    twin: Any = bf16.twin.decoder
    assert len(twin.layers) == 3 and twin.embed_tokens is model.decoder.embed_tokens
    assert twin.layers[0].input_layernorm.weight is model.decoder.layers[0].input_layernorm.weight
    linears = [m for m in twin.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 3 * 7 and {m.weight.dtype for m in linears} == {torch.bfloat16}


def test_generation_and_the_fp32_scorer_are_untouched(tiny_model: Path, folder: Path) -> None:
    model = LocalModel(str(tiny_model))
    conversations = [i.messages for i in items()]
    before = model.draft_batch(conversations, 8)
    fp32 = HeadScorer(model, folder, "fp32")
    scores = fp32.raw_scores(items())
    bf16 = HeadScorer(model, folder, "bf16")
    assert bf16.twin is not None
    if sys.platform.startswith("linux"):  # the fp32 pages it copied were handed back (localmodel/pages.py)
        assert bf16.twin.released > 0
    bf16.score_batch(items())
    assert_same_drafts(model.draft_batch(conversations, 8), before)  # read back from the page cache
    assert (fp32.raw_scores(items()) == scores).all()
    assert {p.dtype for p in model.model.parameters()} == {torch.float32}
    bf16.close()
    assert bf16.twin is None


def test_another_adapter_on_the_model_stays_out_of_the_twin(
    tiny_model: Path, folder: Path, tmp_path: Path
) -> None:
    alone = HeadScorer(LocalModel(str(tiny_model)), folder, "bf16").raw_scores(items())
    model = LocalModel(str(tiny_model))
    lora(tiny_model, seed=7).save_pretrained(str(tmp_path / "answerer"))  # every linear layer, as answerers
    model.load_adapter(tmp_path / "answerer", "answerer")
    with model.adapter("answerer"):  # active last, as after a local answer written with it
        scorer = HeadScorer(model, folder, "bf16")
    np.testing.assert_allclose(scorer.raw_scores(items()), alone, rtol=1e-5, atol=1e-6)


def test_batching_changes_nothing_in_bf16(model: LocalModel, folder: Path) -> None:
    scorer = HeadScorer(model, folder, "bf16")
    batched = scorer.raw_scores(items())
    alone = np.concatenate([scorer.raw_scores([item]) for item in items()])
    # Padding does not leak into a row (attending to it moves these scores by 0.6). It does move bf16
    # rounding in torch's attention kernel, the more where it sits between the kept template head and the
    # row (localmodel/prefix.py): 0.0034 here, 0.0018 for the shipped scorer, in either path.
    np.testing.assert_allclose(batched, alone, atol=1e-2)


def test_auto_is_bf16_only_on_a_cpu_with_amx_and_never_on_cuda(
    model: LocalModel, folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    for amx in (False, True):
        monkeypatch.setattr(reduced_module, "amx_bf16", lambda amx=amx: amx)
        assert twin_dtype("auto", cpu) == (torch.bfloat16 if amx else None)
        assert twin_dtype("bf16", cpu) == torch.bfloat16 and twin_dtype("fp32", cpu) is None
        assert all(twin_dtype(p, cuda) is None for p in ("auto", "fp32", "bf16"))
        assert (HeadScorer(model, folder, "auto").twin is not None) is amx


def test_the_machine_setting_overrides_the_policy(
    tiny_model: Path, folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from router.service import Router

    def scorer_twin(precision: str) -> object:
        scorer = f'{{method: head, model: "{tiny_model}", adapter: "{folder}", precision: {precision}}}'
        policy = policy_from(f"scorer: {scorer}\n{ANSWER_LOCALLY}", tmp_path)
        router = Router(policy, LocalModel(str(tiny_model)))
        twin = router.scorer.twin  # type: ignore[attr-defined]
        asyncio.run(router.close())
        return twin

    monkeypatch.delenv(PRECISION_ENV, raising=False)
    assert precision_override() is None
    assert scorer_twin("bf16") is not None and scorer_twin("fp32") is None
    monkeypatch.setenv(PRECISION_ENV, "fp32")
    assert scorer_twin("bf16") is None
    monkeypatch.setenv(PRECISION_ENV, " BF16 ")
    assert scorer_twin("fp32") is not None
    monkeypatch.setenv(PRECISION_ENV, "int8")
    with pytest.raises(ValueError, match="ROUTER_SCORER_PRECISION='int8': expected one of auto, fp32, bf16"):
        precision_override()
    with pytest.raises(PolicyError, match="precision"):
        policy_from(f"scorer: {{method: head, precision: int8}}\n{ANSWER_LOCALLY}", tmp_path)


def test_the_command_line_names_a_wrong_precision(monkeypatch: pytest.MonkeyPatch) -> None:
    from commands import app

    monkeypatch.setenv(PRECISION_ENV, "fp32")  # restored afterwards: the command sets it for its process
    result = CliRunner().invoke(app, ["score", "--scorer-precision", "int8", "Hi"])
    assert result.exit_code == 2 and "expected one of auto, fp32, bf16" in result.output


def test_an_adapter_that_does_not_merge_scores_in_fp32(
    model: LocalModel, tiny_model: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = make_head_scorer(tiny_model, tmp_path / "dora", layer=3)
    config = LoraConfig(r=4, target_modules="all-linear", use_dora=True, init_lora_weights=False)
    get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model), config).save_pretrained(str(folder))
    with caplog.at_level(logging.WARNING, logger="localmodel.model"):
        scorer = HeadScorer(model, folder, "bf16")
    assert scorer.twin is None and not scorer.version.endswith("bfloat16")
    assert "DoRA" in caplog.text
    scorer.close()


def test_shutdown_stops_the_twin_within_a_layer(model: LocalModel, folder: Path) -> None:
    scorer = HeadScorer(model, folder, "bf16")
    model.closing.set()
    try:
        with pytest.raises(Aborted):
            scorer.score_batch(items())
    finally:
        model.closing.clear()


def real_prompts() -> list[ScoreItem]:
    """Held-out rows (the card's test split) of each kind the shipped scorer reads: short answers, multiple
    choice, passages, and the task families, with the questions above."""
    picked: list[ScoreItem] = items()
    for name, wanted in (
        ("smollm2-135m-instruct.jsonl", 16),
        ("smollm2-135m-instruct-passages.jsonl", 4),
        ("smollm2-135m-instruct-families.jsonl", 8),
    ):
        rows = [json.loads(line) for line in (LABELS / name).read_text().splitlines()[:400]]
        held_out = [r for r in rows if split_of(r.get("variant_of") or r["id"], 0) == "test"]
        picked += [ScoreItem(prompt(QARecord.of_label(r))) for r in held_out[:wanted]]
    return picked


def test_bf16_scores_stay_within_the_tolerance_of_fp32_on_the_real_model(smollm2: Path) -> None:
    model = LocalModel(str(smollm2))
    answer = [{"role": "user", "content": "What is the capital of France?"}]
    before = model.draft_batch([answer], 8)
    fp32, bf16 = HeadScorer(model, SHIPPED, "fp32"), HeadScorer(model, SHIPPED, "bf16")
    prompts = real_prompts()
    assert len(prompts) >= 28
    expected, got = fp32.score_batch(prompts), bf16.score_batch(prompts)
    for one, other in zip(expected, got, strict=True):
        assert one.raw == pytest.approx(other.raw, abs=TOLERANCE)
        assert one.task is not None and other.task is not None
        assert one.task == pytest.approx(other.task, abs=TASK_TOLERANCE)
        top, second = sorted(one.task.values())[-1:-3:-1]
        assert top - second < 0.1 or one.family == other.family
    raw, moved = (np.array([[s.raw[t] for t in fp32.targets] for s in scores]) for scores in (expected, got))
    assert np.abs(raw - moved).mean() < MEAN_TOLERANCE
    assert np.ptp(raw, axis=0).min() > 5 * TOLERANCE  # the prompts spread the scores far wider than that
    assert_same_drafts(model.draft_batch([answer], 8), before)
