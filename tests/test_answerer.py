"""The failure-aware answerer: its training targets, its training on the tiny model (a loadable adapter
that resumes), packed batches, the reading of its JSON, and eval-answerer."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from peft import PeftModel
from transformers import AutoModelForCausalLM

from localmodel import LocalModel
from policies import Decision
from policies.failure_aware import DECISIONS, EVIDENCE, read_stated
from router import completions
from train.answerer import (
    TEMPLATES,
    AnswererSettings,
    AnswererTrainer,
    pack,
    reply,
    target,
    train_answerer,
    training_sample,
)
from train.answerer_eval import evaluate_answerer
from train.data import QARecord, prompt
from train.jobs import read_labels

ROOT = Path(__file__).parents[1]
LABELS = ROOT / "train" / "labels" / "smollm2-135m-instruct.jsonl"
GUARD = ROOT / "policies" / "examples" / "guard.yaml"
TINY = AnswererSettings(
    batch_size=8, train_rows=48, dev_rows=16, eval_every=2, checkpoint_every=4, patience=10
)


def tiny_labels(model: Path, out: Path, rows: int = 240) -> Path:
    """Real labels (SmolLM2's answers to real questions), relabelled as the tiny model's own."""
    lines = [json.loads(line) for line in LABELS.read_text().splitlines()[:rows]]
    out.write_text("".join(json.dumps({**row, "model": str(model)}) + "\n" for row in lines))
    return out


@pytest.fixture(scope="module")
def trained(tiny_model: Path, tiny_head: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("answerer")
    labels = tiny_labels(tiny_model, root / "labels.jsonl")
    train_answerer(
        str(tiny_model), [labels], root / "answerer", tiny_head, TINY, frozenset({"jeopardy"}), False, print
    )
    return root


# Targets ------------------------------------------------------------------------------------------------


def row(correct: bool) -> dict[str, Any]:
    return {
        "id": "q",
        "question": "Who?",
        "answers": ["Ann"],
        "source": "s",
        "greedy": "Ann",
        "correct": correct,
    }


def test_targets_answer_what_is_right_and_refuse_or_hedge_what_is_wrong() -> None:
    assert target(row(True), 0.01, 0.2) == reply("answer", "Ann")
    assert target(row(False), 0.1, 0.2)["decision"] == "refuse"
    unsure = target(row(False), 0.3, 0.2)
    assert unsure["decision"] == "uncertain" and unsure["answer"] == "Ann"
    other = {**row(True), "context": "A passage.", "context_variant": "other", "variant_of": "q0"}
    assert target(other, 0.9, 0.2) == reply("refuse", None, "no_passage_answer")
    assert reply("refuse", "Ann")["answer"] is None
    assert reply("refuse", None)["justification"] == TEMPLATES["refuse"][0]


def test_the_sample_holds_the_asked_share_of_right_answers() -> None:
    rows = [json.loads(line) for line in LABELS.read_text().splitlines()[:2000]]
    right = {r["id"] for r in rows if r["correct"]}
    assert 0 < len(right) < 0.2 * len(rows)
    plain = training_sample(rows, 300, None, seed=0)
    balanced = training_sample(rows, 300, 1 / 3, seed=0)
    assert len(plain) == len(balanced) == len({r["id"] for r in balanced}) == 300
    assert sum(r["id"] in right for r in balanced) == 100 > sum(r["id"] in right for r in plain)
    assert training_sample(rows, 300, 1 / 3, seed=0) == balanced
    assert sum(r["id"] in right for r in training_sample(rows, 1500, 0.9, seed=0)) == len(right)


def test_packing_fills_rows_and_never_splits_an_example() -> None:
    rows = pack([300, 200, 100, 250, 600], 512)
    assert sorted(i for r in rows for i in r) == [0, 1, 2, 3, 4]
    assert [4] in rows  # longer than a row: a row of its own
    assert all(sum([300, 200, 100, 250, 600][i] for i in r) <= 512 for r in rows if r != [4])


def test_a_packed_batch_gives_each_reply_the_logits_it_has_alone(tiny_model: Path) -> None:
    rows = read_labels([LABELS])[:6]
    replies = {r["id"]: json.dumps(reply("answer", r["greedy"])) for r in rows}
    trainer = AnswererTrainer(LocalModel(str(tiny_model)), AnswererSettings(pack_tokens=300), replies)
    trainer.model.eval()
    with torch.no_grad():
        together, labels, decisions = trainer._reply_logits(trainer.model, rows)
        alone = [trainer._reply_logits(trainer.model, [r]) for r in rows]
    assert len(together) == sum(len(a[0]) for a in alone)  # nothing but reply tokens is predicted
    for i, (logits, tokens, [decision]) in enumerate(alone):
        # The example's decision token sits at the same offset within its reply, packed or alone.
        start = decisions[i] - decision
        assert torch.equal(labels[start : start + len(tokens)], tokens)
        assert labels[decisions[i]] == trainer.decision_ids[DECISIONS.index("answer")]
        assert torch.allclose(together[start : start + len(tokens)], logits, atol=1e-4)


# Training -----------------------------------------------------------------------------------------------


def test_training_writes_a_plain_peft_adapter_and_a_card(trained: Path, tiny_model: Path) -> None:
    folder = trained / "answerer"
    assert {"adapter_config.json", "adapter_model.safetensors", "answerer.json"} <= {
        p.name for p in folder.iterdir()
    }
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), str(folder))
    card = json.loads((folder / "answerer.json").read_text())
    rule = card["decision_rule"]
    assert card["base_model"] == str(tiny_model) and 0 <= rule["threshold"] <= 1
    assert sum(rule["train_decisions"].values()) == TINY.train_rows
    assert "jeopardy" not in card["training"]["rows_by_source"]["train"]
    history = card["training"]["history"]
    assert len(history) >= 3 and all(h["dev_loss"] > 0 for h in history)
    targets = [json.loads(line) for line in (folder / "targets.jsonl").read_text().splitlines()]
    assert all(json.loads(t["reply"])["decision"] in DECISIONS for t in targets[1:])


def test_training_resumes_from_its_checkpoint(trained: Path, tiny_model: Path, tiny_head: Path) -> None:
    folder = trained / "answerer"
    saved = torch.load(folder / "checkpoint.pt", weights_only=False)["progress"]
    assert saved["step"] > 0
    card = train_answerer(
        str(tiny_model),
        [trained / "labels.jsonl"],
        folder,
        tiny_head,
        TINY,
        frozenset({"jeopardy"}),
        True,
        print,
    )
    history = card["training"]["history"]
    assert history[: len(saved["history"])] == saved["history"]
    new = history[len(saved["history"]) :]  # it went on from the checkpoint, not from the start
    assert new and all(h["step"] > saved["step"] for h in new)


def test_the_command_reports_bad_labels_in_one_line(tmp_path: Path, tiny_head: Path) -> None:
    bad = tmp_path / "labels.jsonl"
    bad.write_text('{"id": "x", "question": "q"}\n')
    done = subprocess.run(
        [sys.executable, "-m", "router", "train-answerer", "--data", str(bad), "--out", str(tmp_path / "o"),
         "--scorer", str(tiny_head)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert (
        done.stderr.strip() == f"error: {bad}:1: correct: missing (is this a labels file from build-dataset?)"
    )


# Reading the answerer's JSON ----------------------------------------------------------------------------

words = st.text(min_size=1).filter(lambda t: t == t.strip() and t != "")
payloads = st.fixed_dictionaries(
    {
        "decision": st.sampled_from(DECISIONS),
        "answer": st.one_of(st.none(), words),
        "justification": words,
        "evidence_quality": st.sampled_from(EVIDENCE),
    }
)


def well_formed(stated: dict[str, Any]) -> None:
    assert list(stated) == ["decision", "answer", "justification", "evidence_quality"]
    assert stated["decision"] in DECISIONS and stated["evidence_quality"] in EVIDENCE
    assert stated["answer"] is None or isinstance(stated["answer"], str)
    assert stated["decision"] != "refuse" or stated["answer"] is None
    assert stated["decision"] != "answer" or stated["answer"]
    assert isinstance(stated["justification"], str) and stated["justification"]
    json.dumps(stated)


@given(st.text())
def test_any_text_reads_as_a_well_formed_decision(text: str) -> None:
    well_formed(read_stated(text))


@given(payloads, st.text().filter(lambda t: "{" not in t), st.text())
def test_a_reply_is_read_back_exactly_whatever_surrounds_it(
    payload: dict[str, Any], before: str, after: str
) -> None:
    stated = read_stated(before + json.dumps(payload, ensure_ascii=False) + after)
    well_formed(stated)
    if payload["decision"] == "answer" and payload["answer"] is None:
        assert stated == {**payload, "decision": "uncertain"}  # an answer without one
    else:
        assert stated == {**payload, "answer": None if payload["decision"] == "refuse" else payload["answer"]}


@given(payloads, st.integers(min_value=0, max_value=400))
def test_a_reply_cut_short_keeps_what_was_complete(payload: dict[str, Any], cut: int) -> None:
    text = json.dumps(payload)
    stated = read_stated(text[:cut])
    well_formed(stated)
    if cut < len(text) and stated["decision"] != "uncertain":
        assert stated["decision"] == payload["decision"]


def test_unreadable_replies_are_uncertain() -> None:
    assert read_stated("Paris")["decision"] == "uncertain" and read_stated("Paris")["answer"] == "Paris"
    assert read_stated('{"decision": "answer"}')["decision"] == "uncertain"  # an answer without one
    assert read_stated('{"decision": "maybe", "answer": "x"}')["decision"] == "uncertain"


def decision(action: str) -> Decision:
    return Decision(action, None if action == "refuse" else "local", "r", 0.5, None, 0)


@pytest.mark.parametrize(
    ("action", "said", "expected"),
    [
        ("answer_with", "answer", "answer"),
        ("answer_with", "refuse", "refuse"),
        ("hedge", "answer", "uncertain"),
        ("hedge", "refuse", "refuse"),
        ("refuse", "answer", "refuse"),
    ],
)
def test_the_router_only_ever_makes_the_answerers_decision_more_cautious(
    action: str, said: str, expected: str
) -> None:
    body = completions.completion("x", "local", json.dumps(reply(said, "Paris")), "stop")
    shaped = json.loads(
        completions.content_of(completions.failure_aware(body, decision(action), stated=True))
    )
    assert shaped["decision"] == expected
    assert shaped["answer"] == (None if expected == "refuse" else "Paris")


# Evaluation ---------------------------------------------------------------------------------------------


def test_eval_compares_the_base_model_the_guard_and_the_answerer(trained: Path, tiny_model: Path) -> None:
    metrics = evaluate_answerer(
        trained / "answerer", [trained / "labels.jsonl"], trained / "eval", GUARD,
        None, "test", 12, 16, 8, print,
    )  # fmt: skip
    assert metrics["n"] == 12 and set(metrics["arms"]) == {"base", "guard", "answerer", "answerer+guard"}
    base = metrics["arms"]["base"]
    assert base["decisions"]["answer"] == 12 and base["answered_share"]["value"] == 1.0
    for arm in metrics["arms"].values():
        assert sum(arm["decisions"].values()) == 12
        fc = arm["false_confidence"]
        assert fc is not None and fc["low"] <= fc["value"] <= fc["high"]
    assert (trained / "eval" / "report.md").read_text().count("\n| ") >= 8
    ranked = metrics["ranking"]
    assert {"scorer confidence", "answerer P(answer)"} <= set(ranked) and ranked["n"] == 12
    kept = (trained / "eval" / "replies.jsonl").stat().st_mtime_ns
    again = evaluate_answerer(
        trained / "answerer",
        [trained / "labels.jsonl"],
        trained / "eval",
        GUARD,
        None,
        "test",
        12,
        16,
        8,
        print,
    )
    assert again == metrics and (trained / "eval" / "replies.jsonl").stat().st_mtime_ns == kept  # reused


# The shipped answerer -----------------------------------------------------------------------------------

SHIPPED = ROOT / "policies" / "answerers" / "smollm2-failure-aware"


def test_the_shipped_answerer_replies_in_its_json_to_questions_it_never_saw(smollm2: Path) -> None:
    card = json.loads((SHIPPED / "answerer.json").read_text())
    held_out = set(card["training"]["held_out_sources"])
    rows = [r for r in read_labels([LABELS]) if r["source"] in held_out][:8]
    model = LocalModel(card["base_model"])
    model.load_adapter(SHIPPED, "answerer")
    drafts = model.draft_batch([prompt(QARecord.of_label(r)) for r in rows], 80, adapter="answerer")
    justifications = {j for j, _ in TEMPLATES.values()}
    for draft in drafts:
        stated = json.loads(draft.text)  # its own JSON, no repair needed
        assert stated["decision"] in DECISIONS and stated["justification"] in justifications
        assert read_stated(draft.text) == stated
