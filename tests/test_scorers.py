"""Scorer mechanics on a tiny random model loaded through the real path, and one real SmolLM2 score."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from localmodel import LocalModel
from scorers import SCORERS, ScoreItem, ScorerSettings, build_scorer, calibrate
from scorers.consistency import ConsistencyScorer
from scorers.head import HeadScorer
from scorers.intrinsic import ADAPTER_NAME, IntrinsicScorer, IOConfig, certainty_suffix
from scorers.nprob import NProbScorer
from tests.tiny import make_head_scorer, make_intrinsic_scorer
from tests.tolerance import assert_same_drafts

GOLDEN = Path(__file__).parent / "golden"
QUESTIONS = [
    "What is the capital of France?",
    "Who wrote the novel Moby-Dick, and in which year was it first published?",
    "2+2?",
    "Name the largest desert on Earth that is not a polar desert, and say which countries it spans.",
]


def items(questions: list[str] = QUESTIONS, max_new_tokens: int = 8) -> list[ScoreItem]:
    return [ScoreItem([{"role": "user", "content": q}], max_new_tokens) for q in questions]


@pytest.fixture(scope="module")
def model(tiny_model: Path) -> LocalModel:
    return LocalModel(str(tiny_model))


@pytest.mark.parametrize("layer", [2, 4])
def test_early_exit_states_equal_the_full_forward_pass_unpadded(model: LocalModel, layer: int) -> None:
    texts = [model.prompt_text(i.messages) for i in items()]
    ours = model.prompt_states(texts, layer, "last+mean", adapter=None)
    assert ours.shape == (len(texts), 2 * model.model.config.hidden_size)
    torch.testing.assert_close(ours[:, : ours.shape[1] // 2], model.prompt_states(texts, layer, "last", None))
    for row, text in enumerate(texts):  # one at a time: no padding, so every position is the prompt's
        ids = model.tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
        with torch.inference_mode():
            hidden = model.model(ids, output_hidden_states=True).hidden_states
        # hidden_states[-1] is already normed; earlier layers are not, and the head reads them normed.
        states = hidden[layer][0] if layer == model.num_layers else model.decoder.norm(hidden[layer][0])
        expected = torch.cat([states[-1], states.mean(0)])
        torch.testing.assert_close(ours[row], expected.float(), rtol=1e-4, atol=1e-5)


def test_head_scorer_scores_in_0_1_and_batching_changes_nothing(
    model: LocalModel, tiny_model: Path, tmp_path: Path
) -> None:
    scorer = HeadScorer(model, make_head_scorer(tiny_model, tmp_path / "head", layer=2))
    assert scorer.targets == (str(tiny_model),)  # a folder from before multi-target heads: its base model
    batched = [s.raw[scorer.primary] for s in scorer.score_batch(items())]
    alone = [scorer.score_batch([item])[0].raw[scorer.primary] for item in items()]
    assert all(0.0 <= s <= 1.0 for s in batched)
    assert len({round(s, 6) for s in batched}) == len(QUESTIONS)  # the head reads each prompt
    np.testing.assert_allclose(batched, alone, rtol=1e-4, atol=1e-6)
    assert all(s.draft is None for s in scorer.score_batch(items()))  # pre-generation: nothing generated


def test_head_lora_is_applied_and_base_generation_is_not_affected(
    model: LocalModel, tiny_model: Path, tmp_path: Path
) -> None:
    before = model.draft([{"role": "user", "content": "Hi"}], 6)
    with_lora = HeadScorer(model, make_head_scorer(tiny_model, tmp_path / "lora", layer=4))
    probe = HeadScorer(model, make_head_scorer(tiny_model, tmp_path / "probe", layer=4, with_lora=False))
    assert with_lora.raw_scores(items()) != pytest.approx(
        probe.raw_scores(items())
    )  # same head, LoRA on or off
    after = model.draft([{"role": "user", "content": "Hi"}], 6)
    assert_same_drafts([after], [before])  # the adapter stays out of generation


def test_head_calibrator_maps_raw_scores(model: LocalModel, tiny_model: Path, tmp_path: Path) -> None:
    import calibrators

    folder = make_head_scorer(tiny_model, tmp_path / "head", layer=3)
    scorer = HeadScorer(model, folder)
    raw = [s.raw[scorer.primary] for s in scorer.score_batch(items())]
    expected = calibrators.load(folder / "calibrator.json").transform(raw)
    assert list(calibrate(scorer.primary, raw, scorer.calibrators)) == list(expected)
    assert list(calibrate("another-model", raw, scorer.calibrators)) == raw  # uncalibrated: raw as it is


def test_one_forward_pass_serves_every_head(model: LocalModel, tiny_model: Path, tmp_path: Path) -> None:
    single = make_head_scorer(tiny_model, tmp_path / "one", layer=3)
    both = make_head_scorer(tiny_model, tmp_path / "two", layer=3, targets=["small", "large"])
    two = HeadScorer(model, both)
    assert two.targets == ("small", "large") and set(two.calibrators) == {"small", "large"}
    scores = two.score_batch(items())
    small, large = ([s.raw[t] for s in scores] for t in two.targets)
    assert small != pytest.approx(large)  # each head has its own weights
    # The first head is the single-target folder's (same seed): adding a head leaves it alone.
    one = HeadScorer(model, single)
    np.testing.assert_allclose(small, [s.raw[one.primary] for s in one.score_batch(items())], rtol=1e-5)
    assert two.version != one.version


def test_scorers_register_by_method() -> None:
    assert {"head", "intrinsic", "nprob", "consistency"} <= set(SCORERS)
    assert SCORERS["head"].pre_generation and SCORERS["head"].needs_adapter
    assert not SCORERS["nprob"].pre_generation and not SCORERS["nprob"].needs_adapter
    with pytest.raises(TypeError, match="already registered"):

        class Again(NProbScorer, method="nprob"):
            pass


def test_build_scorer_names_the_problem(model: LocalModel) -> None:
    with pytest.raises(ValueError, match="unknown scorer method 'nope'"):
        build_scorer("nope", model, ScorerSettings())
    with pytest.raises(ValueError, match="needs an adapter"):
        build_scorer("head", model, ScorerSettings())
    assert isinstance(build_scorer("consistency", model, ScorerSettings(samples=2)), ConsistencyScorer)


def test_io_yaml_golden() -> None:
    """Known category probabilities in, known certainty out (granite-common's likelihood transform)."""
    cases = json.loads((GOLDEN / "certainty_cases.json").read_text())
    io = IOConfig.load(GOLDEN / "certainty_io.yaml")
    assert (io.invocation, io.field, io.max_completion_tokens) == ("<certainty>", "score", 12)
    assert io.answer_prefix == '{"score": "'
    for case in cases:
        probabilities = {c: float(np.exp(lp)) for c, lp in case["logprobs"].items()}
        assert io.expected_value(probabilities) == pytest.approx(case["certainty"], abs=1e-12), case["name"]


def test_io_yaml_in_the_older_bare_digit_format(tmp_path: Path) -> None:
    (tmp_path / "io.yaml").write_text(
        "transformations:\n- type: likelihood\n  categories_to_values: {0: 0.05, 9: 0.95}\n  input_path: []\n"
    )
    io = IOConfig.load(tmp_path / "io.yaml")
    assert (io.field, io.answer_prefix, io.invocation) == (None, "", "<certainty>")
    assert io.expected_value({"0": 0.25, "9": 0.25}) == pytest.approx(0.5)


@pytest.mark.parametrize("activated", [False, True], ids=["lora", "alora"])
def test_intrinsic_adapters_load_and_score(
    model: LocalModel, tiny_model: Path, tmp_path: Path, activated: bool
) -> None:
    folder = make_intrinsic_scorer(tiny_model, tmp_path / "intrinsic", activated)
    assert not (folder / "scorer.json").exists()  # a Granite folder loads as it is
    scorer = IntrinsicScorer(model, folder)
    assert scorer.activated is activated
    scores = scorer.score_batch(items())
    assert all(0.05 <= s.raw[scorer.primary] <= 0.95 for s in scores)
    assert all(s.draft is not None for s in scores)  # post-generation: the scored draft comes back


def test_alora_reuses_the_base_cache_and_matches_a_full_pass(
    model: LocalModel, tiny_model: Path, tmp_path: Path
) -> None:
    scorer = IntrinsicScorer(model, make_intrinsic_scorer(tiny_model, tmp_path / "alora", activated=True))
    conversations = [i.messages for i in items()]
    answers = ["Paris.", "Herman Melville, 1851, in London first.", "4", "The Sahara."]
    via_cache = scorer.raw_scores(conversations, answers)
    # Reference: the whole sequence through PEFT, which finds the invocation and activates the adapter there.
    expected: list[float] = []
    base_only: list[float] = []
    for messages, answer in zip(conversations, answers, strict=True):
        prefix, suffix = certainty_suffix(model, messages, answer, scorer.io)
        ids = (
            model.tokenizer(prefix, add_special_tokens=False).input_ids
            + model.tokenizer(suffix, add_special_tokens=False).input_ids
        )
        for adapter, out in ((ADAPTER_NAME, expected), (None, base_only)):
            with model.adapter(adapter) as peft, torch.inference_mode():
                logits = peft(input_ids=torch.tensor([ids])).logits[0, -1]
            probs = torch.softmax(logits.float(), -1)[list(scorer.category_ids.values())].numpy()
            out.append(scorer.io.expected_value(dict(zip(scorer.category_ids, probs, strict=True))))
    np.testing.assert_allclose(via_cache, expected, rtol=1e-4)
    assert not np.allclose(via_cache, base_only, rtol=1e-4)  # and the adapter did change them


def test_nprob_and_consistency_on_the_tiny_model(model: LocalModel) -> None:
    nprob = NProbScorer(model).score_batch(items())
    assert all(s.draft is not None and s.raw[model.ref] == pytest.approx(s.draft.nprob) for s in nprob)
    torch.manual_seed(0)
    consistency = ConsistencyScorer(model, samples=4, temperature=1.0).score_batch(items())
    assert all(s.raw[model.ref] in {0.0, 0.25, 0.5, 0.75, 1.0} for s in consistency)
    assert [s.draft.text for s in consistency] == [s.draft.text for s in nprob]  # type: ignore[union-attr]


def test_batched_greedy_drafts_equal_one_at_a_time(model: LocalModel) -> None:
    batched = model.draft_batch([i.messages for i in items()], 8)
    alone = [model.draft(i.messages, 8) for i in items()]
    assert [d.text for d in batched] == [d.text for d in alone]
    for b, a in zip(batched, alone, strict=True):
        np.testing.assert_allclose(b.token_logprobs, a.token_logprobs, rtol=1e-3, atol=1e-4)


def test_score_command_with_the_real_model_and_the_shipped_scorer(smollm2: Path) -> None:
    def score(question: str) -> dict[str, Any]:
        result = subprocess.run(
            [sys.executable, "-m", "router", "score", question], capture_output=True, text=True, timeout=300
        )
        assert result.returncode == 0, result.stderr
        report: dict[str, Any] = json.loads(result.stdout)
        return report

    known = score("What is the capital of France?")
    obscure = score("Which Lancashire town hosted the first Rushcart festival in the 18th century?")
    assert known["scorer"] == "head" and "draft" not in known  # read from the prompt, nothing generated
    assert known["confidence"] > 4 * obscure["confidence"]
    assert known["latency_ms"] > 0
