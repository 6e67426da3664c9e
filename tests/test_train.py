"""Training jobs on real data: loaders, grading, resumable labelling, head training and evaluation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import calibrators
from localmodel.model import LocalModel, prompt_state
from scorers import ScoreItem
from scorers.card import ScorerCard
from scorers.head import HeadScorer
from scorers.intrinsic import IntrinsicScorer
from train.data import DataError, QARecord, load_records, prompt, shared_data_dir
from train.head import HeadSettings, HeadTrainer, transfer_folds
from train.intrinsic import IntrinsicSettings, target_digit
from train.jobs import (
    evaluate_scorer,
    read_labels,
    target_confidences,
    train_head_scorer,
    train_intrinsic_scorer,
)
from train.label import Grading, LabelSettings, build_dataset, done_ids
from train.prefix import FrozenPrefix
from train.probe import LinearProbe, cross_fitted, fold_of
from train.splits import split_of, split_rows
from train.targets import merged

DATA = shared_data_dir()
SHARED_FILES = sorted([*DATA.glob("*/*.jsonl"), *DATA.glob("*/*.csv")])
LABELS = Path(__file__).parents[1] / "train" / "labels" / "smollm2-135m-instruct.jsonl"
GEMMA_LABELS = LABELS.with_name("gemma-3-270m.jsonl")


def test_the_shared_data_is_here() -> None:
    assert len(SHARED_FILES) >= 12


@pytest.mark.parametrize("path", SHARED_FILES, ids=lambda p: p.name)
def test_every_shared_file_loads_as_canonical_records(path: Path) -> None:
    records = load_records(path)
    assert len(records) > 100
    assert len({r.id for r in records}) == len(records)
    assert all(r.question.strip() and all(a.strip() for a in r.answers) for r in records)
    assert all(r.answers[0] in r.choices for r in records if r.choices)
    assert "Answer:" not in records[0].question and not records[0].question.startswith("Question:")


def test_a_users_own_jsonl_and_csv(tmp_path: Path) -> None:
    rows = [
        {"question": "Capital of Peru?", "answers": ["Lima"]},
        {"id": "x7", "question": "2+3?", "answers": "5; five"},
    ]
    (tmp_path / "mine.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "mine.csv").write_text("question,answer\nLargest ocean?,Pacific;Pacific Ocean\n")
    jsonl, csv = load_records(tmp_path / "mine.jsonl"), load_records(tmp_path / "mine.csv")
    assert [(r.id, r.answers, r.source) for r in jsonl] == [
        ("mine:0", ["Lima"], "mine"),
        ("x7", ["5", "five"], "mine"),
    ]
    assert csv[0].answers == ["Pacific", "Pacific Ocean"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"question": "Why?"}\n', ":1: no known QA fields (have: question)"),
        ('{"question": "Why?", "answers": []}\n', ":1: answers: List should have at least 1 item"),
        ('{"question": "Why?", "answers": ["a"]}\n{not json\n', ":2: not JSON"),
    ],
)
def test_bad_rows_name_file_line_and_field(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(text)
    with pytest.raises(DataError) as caught:
        load_records(path)
    assert str(caught.value).startswith(f"{path}{expected}")


def record(question: str, answers: list[str], choices: list[str] | None = None) -> QARecord:
    return QARecord(id="t", question=question, answers=answers, choices=choices, source="t")


def test_splits_are_a_stable_function_of_id_and_seed() -> None:
    ids = [f"triviaqa:{i}" for i in range(2000)]
    first = [split_of(i, 0) for i in ids]
    assert first == [split_of(i, 0) for i in ids]
    assert first != [split_of(i, 1) for i in ids]
    shares = {name: first.count(name) / len(ids) for name in set(first)}
    assert shares["train"] == pytest.approx(0.7, abs=0.04) and shares["test"] == pytest.approx(0.1, abs=0.03)


def test_labelling_resumes_without_duplicates_or_torn_lines(tiny_model: Path, tmp_path: Path) -> None:
    model = LocalModel(str(tiny_model))
    records = load_records(DATA / "triviaqa" / "triviaqa_sm_sub.jsonl")[:10]
    # JSON leaves U+2028 and U+0085 unescaped; they must not split a line when the file is read back.
    records[1] = records[1].model_copy(update={"question": records[1].question + "\u2028\x85"})
    out = tmp_path / "labels.jsonl"
    settings = LabelSettings(samples=2, max_new_tokens=6, batch_size=4)
    assert build_dataset(model, records[:6], out, settings) == 6
    with out.open("a") as f:  # a run killed in the middle of a write
        f.write('{"id": "triviaqa:999", "question": "cut sh')
    assert done_ids(out) == {r.id for r in records[:6]}
    assert build_dataset(model, records, out, settings) == 4
    rows = read_labels([out])
    assert sorted(r["id"] for r in rows) == sorted(r.id for r in records)  # each once; grouped by length
    row = rows[0]
    assert len(row["samples"]) == 2 and row["consistency"] in {0.0, 0.5, 1.0}
    assert isinstance(row["correct"], bool) and 0 < row["nprob"] <= 1 and row["grading"].startswith("alias")


def test_label_rows_of_every_shape_load_and_train(tiny_model: Path, tmp_path: Path) -> None:
    """Rows build-dataset wrote before graders existed (no `task`, `grader` or `grade_details`; one combined
    rule in `grading`) train beside today's graded rows; a row its grader could not grade (`correct: null`)
    is written, and read by nothing that trains or judges."""
    old = [json.loads(line) for line in LABELS.read_text().split("\n")[:60]]
    assert all(r["grading"].startswith("alias-in-first-line/v1:") for r in old)
    assert not any({"task", "grader", "grade_details"} & r.keys() for r in old)
    problems = load_records(DATA / "gsm8k" / "test.jsonl")[:30]
    unreadable = [p.model_copy(update={"id": f"{p.id}?", "answers": ["???"]}) for p in problems[:4]]
    grading, new = Grading(), []
    for i, problem in enumerate(problems + unreadable):
        said = problem.answers[0] if i % 3 else "-1"  # a third answered wrong
        reply = f"So that makes {said}.\n#### {said}"
        new.append(
            {
                **problem.model_dump(exclude_none=True),
                "greedy": reply,
                "nprob": 0.5,
                "samples": [],
                "consistency": None,
                "sample_accuracy": None,
                "model": "smollm2-135m-instruct",
                **grading.fields(reply, problem),
            }
        )
    assert {r["grader"] for r in new} == {"math"} and [r["correct"] for r in new[-4:]] == [None] * 4
    assert {r["correct"] for r in new[:30]} == {True, False} and new[1]["grade_details"]["extracted"]
    labels = tmp_path / "labels.jsonl"
    labels.write_text("".join(json.dumps(r) + "\n" for r in old + new))
    rows = read_labels([labels])
    assert len(rows) == 90 and all(r["correct"] is not None for r in rows)
    settings = HeadSettings(layer=3, lora_layers=2, stage2_size=80, eval_every=2, patience=2)
    card = train_head_scorer(
        str(tiny_model), [labels], tmp_path / "scorer", settings, frozenset(), False, print
    )
    training = card.extra()["training"]
    assert training["labels"] == [{"file": str(labels), "rows": 90}] and training["history"][-1]["stage"] == 2
    assert sum(training["rows_by_source_and_split"]["train"].values()) == card.targets[0].rows


TINY_HEAD = HeadSettings(
    layer=3,
    lora_layers=2,  # layer 1 frozen: training runs on its kept output
    batch_size=16,
    stage2_size=120,
    eval_every=3,
    checkpoint_every=4,
    patience=10,
)


@pytest.fixture(scope="module")
def trained(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A head scorer on the tiny model, trained on real labels (SmolLM2's answers to real questions)."""
    out = tmp_path_factory.mktemp("scorer")
    labels = out / "labels.jsonl"
    labels.write_text("".join(LABELS.read_text().splitlines(keepends=True)[:160]))
    train_head_scorer(
        str(tiny_model), [labels], out / "scorer", TINY_HEAD, frozenset({"jeopardy"}), False, print
    )
    return out


def test_training_writes_a_scorer_folder_the_server_loads(trained: Path, tiny_model: Path) -> None:
    folder = trained / "scorer"
    assert {"adapter_config.json", "adapter_model.safetensors", "head.safetensors", "scorer.json"} <= {
        p.name for p in folder.iterdir()
    }
    card = ScorerCard.load(folder)
    training = card.extra()["training"]
    assert card.method == "head" and card.layer == 3
    assert not (folder / "README.md").exists()  # PEFT's placeholder card; scorer.json is the card
    adapter_config = json.loads((folder / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == str(tiny_model)
    calibration = training["calibration"]["smollm2-135m-instruct"]
    assert len(card.extra()["reference_scores"]) == calibration["rows"] > 0  # the drift reference
    assert training["held_out_sources"] == ["jeopardy"]
    assert "jeopardy" not in training["rows_by_source_and_split"]["train"]
    assert training["labels"][0]["rows"] == 160 and training["split_rule"].startswith("bucket")
    assert [h["stage"] for h in training["history"]][:1] == [1] and training["history"][-1]["stage"] == 2
    scores = HeadScorer(LocalModel(str(tiny_model)), folder).score_batch(
        [ScoreItem(prompt(record("Hi?", ["x"])))]
    )
    assert 0 <= scores[0].raw["smollm2-135m-instruct"] <= 1  # the labels' model, not the backbone's name


def test_one_scorer_learns_every_model_that_labelled_the_questions(tiny_model: Path, tmp_path: Path) -> None:
    """Real labels from two models on the same questions (matched by id) plus questions only one labelled."""
    gemma = read_labels([GEMMA_LABELS])[:150]
    ids = {r["id"] for r in gemma}
    smollm2 = [r for r in read_labels([LABELS, LABELS.with_name("smollm2-135m-instruct-efficientqa.jsonl")])]
    smollm2 = [r for r in smollm2 if r["id"] in ids] + [r for r in smollm2[:60] if r["id"] not in ids]
    files = []
    for name, rows in (("smollm2", smollm2), ("gemma", gemma)):
        files.append(tmp_path / f"{name}.jsonl")
        files[-1].write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "scorer"
    card = train_head_scorer(str(tiny_model), files, out, TINY_HEAD, frozenset(), False, print)
    assert [t.model for t in card.targets] == ["smollm2-135m-instruct", "gemma-3-270m"]
    train = split_rows(merged(smollm2 + gemma, "?"), 0)["train"]
    for target in card.targets:  # each head's row count and base rate: its own model's training rows
        mine = [r["labels"][target.model] for r in train if target.model in r["labels"]]
        assert (target.rows, target.base_rate) == (len(mine), pytest.approx(np.mean(mine)))
    scorer = HeadScorer(LocalModel(str(tiny_model)), out)
    assert scorer.weight.shape[0] == 2 and set(scorer.calibrators) <= set(scorer.targets)
    both = target_confidences(scorer, gemma[:20])
    assert all(((c >= 0) & (c <= 1)).all() for c in both.values())
    assert not np.allclose(both["smollm2-135m-instruct"], both["gemma-3-270m"])
    metrics = evaluate_scorer(out, files, tmp_path / "eval", "all", None, target="gemma-3-270m")
    assert metrics["scorer"]["n"] == len(gemma)  # only gemma's rows judge gemma's head


def test_layer_choice_takes_the_shallowest_layer_within_the_tolerance(
    tiny_model: Path, tmp_path: Path
) -> None:
    rows = [json.loads(line) for line in LABELS.read_text().split("\n")[:200]]
    train, dev = rows[:150], rows[150:]
    strict, scores = HeadTrainer(str(tiny_model), HeadSettings(layer_tolerance=0.0), tmp_path).choose_layer(
        train, dev
    )
    loose, _ = HeadTrainer(str(tiny_model), HeadSettings(layer_tolerance=1.0), tmp_path).choose_layer(
        train, dev
    )
    assert sorted(scores) == [1, 2, 3, 4]
    assert scores[strict] == max(scores.values()) and loose == 1


def test_layer_choice_judges_each_free_form_source_with_a_probe_that_never_saw_it() -> None:
    def rows(source: str, n: int, positives: int, choices: list[str] | None = None) -> list[dict[str, Any]]:
        return [{"source": source, "correct": i < positives, "choices": choices} for i in range(n)]

    fit = rows("trivia", 40, 10) + rows("nq", 40, 10) + rows("arc", 40, 10, ["a", "b"])
    dev = rows("trivia", 20, 6) + rows("nq", 20, 6) + rows("arc", 20, 6, ["a", "b"])
    dev += rows("unseen", 20, 6)
    folds = transfer_folds(fit, dev)
    judged = [
        ({fit[i]["source"] for i in np.flatnonzero(f)}, {dev[i]["source"] for i in np.flatnonzero(j)})
        for f, j in folds
    ]
    assert judged == [({"trivia", "arc"}, {"nq"}), ({"nq", "arc"}, {"trivia"})]
    # One source to judge is no transfer test: one probe on every training row, judged on all of dev.
    [(fit_all, judge_all)] = transfer_folds(fit, rows("trivia", 20, 6))
    assert fit_all.all() and judge_all.all()


def test_frozen_prefix_gives_the_states_of_a_full_forward(tiny_model: Path, tmp_path: Path) -> None:
    trainer = HeadTrainer(str(tiny_model), HeadSettings(), tmp_path)
    decoder = trainer.base_model.get_decoder()
    rows = [json.loads(line) for line in LABELS.read_text().splitlines()[:12]]
    prefix = FrozenPrefix(decoder, 2, trainer._encode)
    prefix.add(rows, batch_size=5)
    with torch.no_grad():
        kept = prefix.prompt_state(rows, 4, "last+mean")
        full = prompt_state(decoder, trainer._encode(rows), 4, "last+mean")
    assert len(decoder.layers) == 4  # every layer is back in place
    assert torch.allclose(kept, full, atol=2e-2) and not torch.allclose(kept[0], kept[1], atol=2e-2)


def test_training_resumes_from_its_checkpoint(trained: Path, tiny_model: Path) -> None:
    folder = trained / "scorer"
    progress = torch.load(folder / "checkpoint.pt", weights_only=False)["progress"]
    assert progress["step"] > 0
    card = train_head_scorer(
        str(tiny_model), [trained / "labels.jsonl"], folder, TINY_HEAD, frozenset({"jeopardy"}), True, print
    )
    history = card.extra()["training"]["history"]
    before = len(progress["history"])
    assert history[:before] == progress["history"]
    new = history[before:]  # it went on from the checkpoint, not from the start
    assert new and all((h["stage"], h["step"]) > (progress["stage"], progress["step"]) for h in new)


def test_eval_writes_metrics_with_intervals_and_baselines(trained: Path) -> None:
    metrics = evaluate_scorer(trained / "scorer", [trained / "labels.jsonl"], trained / "eval", "all", None)
    for block in (metrics["scorer"], metrics["baselines"]["nprob"], metrics["baselines"]["consistency"]):
        assert block["n"] == 160
        assert block["positives"] == sum(
            json.loads(line)["correct"] for line in (trained / "labels.jsonl").open()
        )
        for key in ("accuracy", "auroc", "ece", "brier", "prr"):
            assert block[key]["low"] <= block[key]["value"] <= block[key]["high"]
    assert json.loads((trained / "eval" / "metrics.json").read_text()) == metrics
    report = (trained / "eval" / "report.md").read_text()
    assert "reliability.png" in report and (trained / "eval" / "reliability.png").stat().st_size > 1000


def test_eval_on_a_split_compares_with_a_probe_and_with_baselines_where_rows_have_them(
    trained: Path,
) -> None:
    rows = [json.loads(line) for line in (trained / "labels.jsonl").open()]
    for row in rows[::2]:  # greedy-only labels (build-dataset --samples 0) have no self-consistency
        row.update(samples=[], consistency=None, sample_accuracy=None)
    mixed = trained / "mixed.jsonl"
    mixed.write_text("".join(json.dumps(r) + "\n" for r in rows))
    metrics = evaluate_scorer(trained / "scorer", [mixed], trained / "eval-test", "test", None)
    n = metrics["scorer"]["n"]
    baselines = metrics["baselines"]
    assert baselines["probe"]["n"] == baselines["probe_last+mean"]["n"] == baselines["nprob"]["n"] == n
    consistency = metrics["baselines"]["consistency"]
    assert 0 < consistency["n"] < n and consistency["scorer_on_these_rows"]["n"] == consistency["n"]
    assert set(metrics["by_source"]) == {r["source"] for r in rows if split_of(r["id"], 0) == "test"} | {
        "jeopardy"
    }
    trivia = evaluate_scorer(
        trained / "scorer", [mixed], trained / "eval-trivia", "test", None, frozenset({"triviaqa"})
    )
    assert list(trivia["by_source"]) == ["triviaqa"]
    alone, within = trivia["scorer"], metrics["by_source"]["triviaqa"]["scorer"]
    assert (alone["n"], alone["positives"]) == (within["n"], within["positives"])
    assert alone["brier"]["value"] == pytest.approx(within["brier"]["value"], abs=1e-6)


def test_cross_fitted_scores_come_from_probes_that_never_saw_their_row() -> None:
    rng = np.random.default_rng(0)
    rows = [{"id": f"r{i}", "correct": bool(c)} for i, c in enumerate(rng.random(300) < 0.3)]
    labels = np.array([r["correct"] for r in rows], dtype=float)
    noise = rng.normal(size=(300, 400))  # wider than the rows: a probe can memorise its labels
    memorised = calibrators.auroc(LinearProbe().fit(noise, labels).transform(noise), labels)
    held_out = calibrators.auroc(cross_fitted(noise, rows, 5), labels)
    assert memorised > 0.9 and abs(held_out - 0.5) < 0.12
    signal = noise + 0.2 * labels[:, None]  # a real signal survives cross-fitting
    assert calibrators.auroc(cross_fitted(signal, rows, 5), labels) > 0.8
    assert len({fold_of(str(r["id"]), 5) for r in rows}) == 5


def test_the_probe_weighs_rare_positives_but_predicts_their_real_rate() -> None:
    rng = np.random.default_rng(1)
    labels = (rng.random(4000) < 0.07).astype(float)
    states = rng.normal(size=(4000, 64)) + 0.3 * labels[:, None] * (np.arange(64) < 8)
    fit, judge = slice(0, 3000), slice(3000, None)
    probe = LinearProbe().fit(states[fit], labels[fit])
    predicted = probe.transform(states[judge])
    # Equal class weights alone would centre predictions near 0.5; the prior shift brings them back.
    assert abs(predicted.mean() - labels[fit].mean()) < 0.02
    assert calibrators.auroc(predicted, labels[judge]) > 0.7


def test_eval_can_judge_the_recipe_on_every_trained_row(trained: Path) -> None:
    rows = [json.loads(line) for line in (trained / "labels.jsonl").open()]
    metrics = evaluate_scorer(
        trained / "scorer", [trained / "labels.jsonl"], trained / "eval-cf", "test", None, cross_fit=3
    )
    cross = metrics["cross_fitted_probe"]
    assert cross["folds"] == 3 and set(cross["by_source"]) == {r["source"] for r in rows} - {"jeopardy"}
    for source, block in cross["by_source"].items():
        of_source = [r for r in rows if r["source"] == source]
        assert (
            block["probe"]["n"]
            == block["nprob"]["n"]
            == len(of_source)
            > metrics["by_source"].get(source, {"scorer": {"n": 0}})["scorer"]["n"]
        )
        assert block["probe"]["positives"] == sum(r["correct"] for r in of_source)


@pytest.mark.parametrize(
    ("row", "digit"),
    [
        ({"correct": True, "samples": ["a"] * 4, "sample_accuracy": 1.0}, 9),  # 5 of 5 right: capped at 9
        ({"correct": False, "samples": ["a"] * 4, "sample_accuracy": 0.5}, 4),  # 2 of 5
        ({"correct": True, "samples": [], "sample_accuracy": None}, 9),
        ({"correct": False, "samples": ["a"] * 4, "sample_accuracy": 0.0}, 0),
    ],
)
def test_intrinsic_target_digit(row: dict[str, object], digit: int) -> None:
    assert target_digit(row) == digit


def test_intrinsic_training_writes_a_granite_style_folder_and_resumes(
    tiny_model: Path, tmp_path: Path
) -> None:
    labels = tmp_path / "labels.jsonl"
    labels.write_text("".join(LABELS.read_text().splitlines(keepends=True)[:64]))
    out = tmp_path / "intrinsic"
    settings = IntrinsicSettings(batch_size=8, epochs=1.0, eval_every=2, checkpoint_every=2, patience=10)
    card = train_intrinsic_scorer(str(tiny_model), [labels], out, settings, frozenset(), False, print)
    assert card.method == "intrinsic" and (out / "io.yaml").is_file()
    history = card.extra()["training"]["history"]
    assert len(history) >= 2 and all(0 <= h["dev_auroc"] <= 1 for h in history)
    saved = torch.load(out / "checkpoint.pt", weights_only=False)["progress"]
    resumed = train_intrinsic_scorer(str(tiny_model), [labels], out, settings, frozenset(), True, print)
    again = resumed.extra()["training"]["history"]
    assert again[: len(saved["history"])] == saved["history"]
    assert all(h["step"] > saved["step"] for h in again[len(saved["history"]) :])
    scorer = IntrinsicScorer(LocalModel(str(tiny_model)), out)
    assert scorer.activated  # an aLoRA: serving reuses the base model's cache
    [score] = scorer.score_batch([ScoreItem(prompt(record("What is 2+2?", ["4"])), 4)])
    assert 0.05 <= score.raw[scorer.primary] <= 0.95 and score.draft is not None
