"""The eval-answerer job: what each way of answering states, and how often that statement is wrong.

Four arms on the same held-out rows: the base model (it always answers, with its labelled greedy answer),
the base model behind a guard policy (its rules on the head scorer's confidence, shaped into the
failure-aware JSON as the router shapes it), the tuned answerer (its own JSON, read as the router reads it),
and the answerer behind the guard (what a policy serving it returns). Each row's stated decision has a
stated confidence (answer 1, uncertain 0.5, refuse 0) for the ECE; its outcome is whether its answer is
right: the answer given, graded by the labels' rule, or for a refusal the base model's labelled answer.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

import calibrators
from localmodel import LocalModel
from policies import Confidences, Decision, Policy, RequestFacts, decide, load_policy
from policies.failure_aware import DECISIONS, failure_aware_text, read_stated, verdict
from scorers.card import folder_digest
from train.answerer import CARD, reply_prefix, scorer_confidences
from train.data import QARecord, prompt
from train.jobs import read_labels
from train.label import Grading
from train.splits import split_rows

Row = dict[str, Any]
STATED_CONFIDENCE = {"answer": 1.0, "uncertain": 0.5, "refuse": 0.0}
ADAPTER = "answerer"


def evaluate_answerer(
    folder: Path,
    label_files: list[Path],
    out: Path,
    policy_path: Path,
    scorer_folder: Path | None,
    split: str,
    limit: int | None,
    max_new_tokens: int,
    batch_size: int,
    log: Callable[[str], None],
) -> dict[str, Any]:
    card = json.loads((folder / CARD).read_text(encoding="utf-8"))
    base, training = card["base_model"], card["training"]
    scorer_folder = scorer_folder or Path(card["decision_rule"]["scorer"])
    rows = [r for r in read_labels(label_files) if (r.get("model") or base) == base]
    if split != "all":
        held_out = frozenset(training["held_out_sources"])
        rows = split_rows(rows, training["seed"], held_out)[split]
    if limit is not None and limit < len(rows):
        rows = random.Random(0).sample(rows, limit)
    if not rows:
        raise ValueError(f"no {split} rows labelled by {base} in {', '.join(map(str, label_files))}")
    policy = load_policy(policy_path)
    log(f"{len(rows)} {split} rows; scoring with {scorer_folder}")
    confidence = scorer_confidences(scorer_folder, base, rows)
    guarded = [_guard(policy, float(c)) for c in confidence]
    model = LocalModel(base)
    model.load_adapter(folder, ADAPTER)
    replies = kept_replies(out, folder, rows, max_new_tokens)
    if replies is None:
        replies = answerer_replies(model, rows, max_new_tokens, batch_size, log)
        keep_replies(out, folder, rows, max_new_tokens, replies)
    chance = answer_chances(model, rows, batch_size)
    arms = {
        "base": [_stated("answer", r["greedy"]) for r in rows],
        "guard": [_stated(_verdict(d), r["greedy"]) for d, r in zip(guarded, rows, strict=True)],
        "answerer": [read_stated(text) for text in replies],
        "answerer+guard": [
            json.loads(failure_aware_text(text, d, stated=True))
            for text, d in zip(replies, guarded, strict=True)
        ],
    }
    metrics: dict[str, Any] = {
        "n": len(rows),
        "split": split,
        "policy": str(policy_path),
        "scorer": str(scorer_folder),
        "rows_by_source": {
            s: sum(r["source"] == s for r in rows) for s in sorted({r["source"] for r in rows})
        },
        "arms": {name: arm_metrics(stated, rows) for name, stated in arms.items()},
        "ranking": ranking({"scorer confidence": confidence, "answerer P(answer)": chance}, rows),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    examples = [{"id": r["id"], **{name: arms[name][i] for name in arms}} for i, r in enumerate(rows[:50])]
    (out / "examples.json").write_text(json.dumps(examples, indent=2, ensure_ascii=False))
    (out / "report.md").write_text(report(metrics, folder))
    return metrics


def answerer_replies(
    model: LocalModel, rows: list[Row], max_new_tokens: int, batch_size: int, log: Callable[[str], None]
) -> list[str]:
    """The answerer's greedy reply to each row's question, in the rows' order (written in batches of
    similar length, as the labels were)."""
    order = sorted(range(len(rows)), key=lambda i: QARecord.of_label(rows[i]).prompt_chars)
    texts: dict[int, str] = {}
    for start in range(0, len(order), batch_size):
        part = order[start : start + batch_size]
        conversations = [prompt(QARecord.of_label(rows[i])) for i in part]
        drafts = model.draft_batch(conversations, max_new_tokens, adapter=ADAPTER)
        texts |= {i: d.text for i, d in zip(part, drafts, strict=True)}
        log(f"the answerer replied to {len(texts)} of {len(rows)} rows")
    return [texts[i] for i in range(len(rows))]


REPLIES = "replies.jsonl"


def _replies_key(folder: Path, max_new_tokens: int) -> dict[str, Any]:
    files = ["adapter_model.safetensors", "adapter_config.json"]
    return {"answerer": folder_digest(folder, files), "max_new_tokens": max_new_tokens}


def kept_replies(out: Path, folder: Path, rows: list[Row], max_new_tokens: int) -> list[str] | None:
    """The replies an earlier run on these rows wrote with the same adapter and cap (a rerun that only
    recomputes the metrics does not generate again); None if there are none."""
    path = out / REPLIES
    if not path.is_file():
        return None
    head, *lines = (json.loads(line) for line in path.read_text(encoding="utf-8").splitlines())
    replies = {line["id"]: line["reply"] for line in lines}
    if head != _replies_key(folder, max_new_tokens) or any(r["id"] not in replies for r in rows):
        return None
    return [replies[r["id"]] for r in rows]


def keep_replies(out: Path, folder: Path, rows: list[Row], max_new_tokens: int, replies: list[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    lines = [_replies_key(folder, max_new_tokens)]
    lines += [{"id": r["id"], "reply": text} for r, text in zip(rows, replies, strict=True)]
    (out / REPLIES).write_text(
        "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines), encoding="utf-8"
    )


@torch.inference_mode()
def answer_chances(model: LocalModel, rows: list[Row], batch_size: int) -> np.ndarray:
    """The answerer's probability of `answer` at its decision token (among the three decisions), per row:
    its confidence as a ranking, apart from which decision wins."""
    from train.answerer import decision_tokens

    prefix, (_, firsts) = reply_prefix(model), decision_tokens(model)
    order = sorted(range(len(rows)), key=lambda i: QARecord.of_label(rows[i]).prompt_chars)
    chances = np.zeros(len(rows))
    for start in range(0, len(order), batch_size):
        part = order[start : start + batch_size]
        ids = [model.prompt_ids(prompt(QARecord.of_label(rows[i]))) + prefix for i in part]
        with model.adapter(ADAPTER) as tuned:
            logits = tuned(**model.pad_batch(ids), logits_to_keep=1).logits[:, -1, firsts]
        chances[part] = torch.softmax(logits.float(), dim=-1)[:, 0].cpu().numpy()
    return chances


def ranking(scores: dict[str, np.ndarray], rows: list[Row]) -> dict[str, Any]:
    """How well each score ranks the base model's right answers above its wrong ones (AUROC) and how
    calibrated it is (ECE), on the rows with a passage of their own or none."""
    judged = np.array([QARecord.of_label(r).answerable for r in rows])
    correct = np.array([float(bool(r["correct"])) for r in rows])[judged]
    result: dict[str, Any] = {"n": int(judged.sum()), "right": int(correct.sum())}
    for name, score in scores.items():
        result[name] = {}
        for metric in ("auroc", "ece"):
            try:
                estimate = calibrators.bootstrap(getattr(calibrators, metric), score[judged], correct)
            except ValueError:
                result[name][metric] = None
                continue
            result[name][metric] = {"value": estimate.value, "low": estimate.low, "high": estimate.high}
    return result


def _guard(policy: Policy, confidence: float) -> Decision:
    async def known() -> Confidences:
        return Confidences(confidence)

    return asyncio.run(decide(policy, RequestFacts("router"), known))


def _verdict(decision: Decision) -> str:
    return verdict(decision.action)


def _stated(decision: str, answer: str) -> dict[str, Any]:
    return {"decision": decision, "answer": None if decision == "refuse" else answer}


def outcomes(stated: list[dict[str, Any]], rows: list[Row]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(decision index per row (answer 0, uncertain 1, refuse 2), its answer right, the row beyond the
    model: its labelled answer is wrong or its passage lacks the answer)."""
    decision = np.array([DECISIONS.index(s["decision"]) for s in stated], dtype=float)
    grading = Grading()  # a row's grader: the one it records, else inferred from its fields as it was
    right = np.array(
        [
            float(bool(r["correct"]))
            if s["answer"] is None
            else float(bool(grading.grade(s["answer"], QARecord.of_label(r)).correct))
            for s, r in zip(stated, rows, strict=True)
        ]
    )
    beyond = np.array([float(not QARecord.of_label(r).answerable or not r["correct"]) for r in rows])
    return decision, right, beyond


def _share(mask: np.ndarray, within: np.ndarray | None = None) -> float:
    if within is not None:
        if not within.any():
            raise ValueError("no rows to take a share of")
        mask = mask[within]
    return float(mask.mean())


def false_confidence(decision: np.ndarray, right: np.ndarray, beyond: np.ndarray) -> float:
    """Answered and wrong, over all rows."""
    return _share((decision == 0) & (right == 0))


def refused_beyond(decision: np.ndarray, right: np.ndarray, beyond: np.ndarray) -> float:
    """Refusals among the rows the model cannot answer."""
    return _share(decision == 2, beyond == 1)


def abstained_beyond(decision: np.ndarray, right: np.ndarray, beyond: np.ndarray) -> float:
    """Refusals and uncertain answers among the rows the model cannot answer."""
    return _share(decision != 0, beyond == 1)


def answered_accuracy(decision: np.ndarray, right: np.ndarray, beyond: np.ndarray) -> float:
    return _share(right == 1, decision == 0)


def answered(decision: np.ndarray, right: np.ndarray, beyond: np.ndarray) -> float:
    return _share(decision == 0)


def stated_ece(decision: np.ndarray, right: np.ndarray, beyond: np.ndarray) -> float:
    """ECE of the stated confidence (answer 1, uncertain 0.5, refuse 0) against the outcome."""
    stated = np.array([STATED_CONFIDENCE[DECISIONS[int(d)]] for d in decision])
    return float(calibrators.ece(stated, right))


METRICS: dict[str, Callable[[np.ndarray, np.ndarray, np.ndarray], float]] = {
    "false_confidence": false_confidence,
    "refusal_on_unanswerable": refused_beyond,
    "abstention_on_unanswerable": abstained_beyond,
    "answered_accuracy": answered_accuracy,
    "answered_share": answered,
    "stated_ece": stated_ece,
}


def arm_metrics(stated: list[dict[str, Any]], rows: list[Row]) -> dict[str, Any]:
    decision, right, beyond = outcomes(stated, rows)
    result: dict[str, Any] = {
        "decisions": {d: int((decision == k).sum()) for k, d in enumerate(DECISIONS)},
        "unanswerable_rows": int(beyond.sum()),
    }
    for name, metric in METRICS.items():
        # calibrators.bootstrap resamples whole rows: the "scores" column carries the decision.
        try:
            estimate = calibrators.bootstrap(metric, decision, right, beyond, n_resamples=1000)
        except ValueError:  # no row it is defined on (nothing answered, say)
            result[name] = None
            continue
        result[name] = {"value": estimate.value, "low": estimate.low, "high": estimate.high}
    return result


TITLES = {
    "false_confidence": "false confidence (answered and wrong, of all rows)",
    "refusal_on_unanswerable": "refusal rate on rows it cannot answer",
    "abstention_on_unanswerable": "refuse or uncertain on rows it cannot answer",
    "answered_accuracy": "accuracy of what is answered",
    "answered_share": "share answered",
    "stated_ece": "ECE of the stated decision",
}


def report(metrics: dict[str, Any], folder: Path) -> str:
    arms = metrics["arms"]
    names = list(arms)
    lines = [
        f"# {folder.name} on {metrics['split']} ({metrics['n']} rows)",
        "",
        f"Guard: {metrics['policy']} on {metrics['scorer']}. Rows by source: {metrics['rows_by_source']}.",
        "Intervals: 95% bootstrap over rows (1,000 resamples).",
        "",
        "| metric | " + " | ".join(names) + " |",
        "| --- |" + " --- |" * len(names),
    ]
    for key, title in TITLES.items():
        cells = [_cell(arms[name][key]) for name in names]
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    decided = ["/".join(str(arms[n]["decisions"][d]) for d in DECISIONS) for n in names]
    lines.append("| answer/uncertain/refuse | " + " | ".join(decided) + " |")
    lines.append(
        f"| rows it cannot answer | {arms[names[0]]['unanswerable_rows']} |" + " |" * (len(names) - 1)
    )
    ranked = metrics["ranking"]
    lines += [
        "",
        f"Ranking the base model's right answers ({ranked['n']} rows, {ranked['right']} right):",
        "",
        "| score | AUROC | ECE |",
        "| --- | --- | --- |",
    ]
    for name in [k for k in ranked if k not in ("n", "right")]:
        lines.append(f"| {name} | {_cell(ranked[name]['auroc'])} | {_cell(ranked[name]['ece'])} |")
    return "\n".join(lines) + "\n"


def _cell(value: dict[str, float] | None) -> str:
    if value is None:
        return "undefined"
    return f"{value['value']:.3f} [{value['low']:.3f}, {value['high']:.3f}]"
