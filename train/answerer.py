"""A failure-aware answerer: LoRA SFT of the local model to reply in the failure-aware JSON.

    {"decision": "answer" | "uncertain" | "refuse", "answer", "justification", "evidence_quality"}

Targets come from the labels (`targets`): a question the model answers right is answered with its own
greedy answer; a wrong one is refused when the scorer's confidence is below a threshold chosen on dev rows,
else answered as uncertain; a question asked with another question's passage is refused. Training is the
shared loop (`train.loop`): cosine schedule with warmup, early stopping on dev, `--resume`. Each batch is
packed: its examples sit side by side in a few rows, position ids restarting at each example, so
transformers masks attention between them and no padding is computed; the loss reads only the reply's
tokens.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from peft import LoraConfig, get_peft_model

import calibrators
from localmodel import LocalModel
from policies.failure_aware import DECISIONS
from train.data import QARecord, prompt
from train.jobs import read_labels
from train.loop import Loop, LoopSettings, Objective, Progress, Stage, batches_of, save_adapter
from train.splits import RULE as SPLIT_RULE
from train.splits import split_rows

Row = dict[str, Any]
CARD = "answerer.json"
TARGETS = "targets.jsonl"
TEMPLATES = {
    "answer": ("I know this answer.", "high"),
    "uncertain": ("I am not sure of this answer; check it.", "medium"),
    "refuse": ("I do not know this well enough to answer.", "low"),
    "no_passage_answer": ("The passage does not answer this question.", "low"),
}
"""Decision -> (justification, evidence quality) of the training targets."""
RULE = (
    "right (graded) -> answer with the model's greedy answer; wrong -> refuse when the scorer's calibrated "
    "confidence is below the threshold, else uncertain with the greedy answer; asked with another "
    "question's passage -> refuse. The threshold maximises Youden's J (true-positive rate minus "
    "false-positive rate of confidence >= threshold for a right answer) on dev rows."
)


@dataclass(frozen=True)
class AnswererSettings:
    lora_r: int = 16
    lora_alpha: int = 64
    lora_dropout: float = 0.05
    learning_rate: float = 2e-4
    weight_decay: float = 0.01
    batch_size: int = 16
    gradient_accumulation: int = 1
    gradient_checkpointing: bool | None = None
    """None: on a GPU only (on a CPU memory is not what bounds a model this size, and recomputing the
    activations costs a third more time)."""
    pack_tokens: int = 512
    """Tokens per packed row: a batch's examples share rows of about this length."""
    epochs: float = 1.0
    train_rows: int | None = None
    """A seeded sample of the training split of this size (None: all of it)."""
    answer_share: float | None = None
    """In that sample, this share of rows the base model answers right (None: the split's own share). A
    model right on a few percent of questions otherwise learns that refusing is nearly always the reply."""
    dev_rows: int = 200
    """Dev rows judged at every evaluation (a seeded sample: each evaluation runs all of them)."""
    bf16: bool | None = None
    """Mixed precision in bf16; None: on a GPU only."""
    warmup_ratio: float = 0.1
    eval_every: int = 25
    patience: int = 4
    checkpoint_every: int = 25
    seed: int = 0


def reply(decision: str, answer: str | None, template: str | None = None) -> dict[str, Any]:
    justification, quality = TEMPLATES[template or decision]
    return {
        "decision": decision,
        "answer": None if decision == "refuse" else answer,
        "justification": justification,
        "evidence_quality": quality,
    }


def target(row: Row, confidence: float, threshold: float) -> dict[str, Any]:
    """The reply the answerer learns for one labelled row (see RULE)."""
    if not QARecord.of_label(row).answerable:
        return reply("refuse", None, "no_passage_answer")
    if row["correct"]:
        return reply("answer", row["greedy"])
    return reply("refuse" if confidence < threshold else "uncertain", row["greedy"])


@dataclass(frozen=True)
class Rows:
    train: list[Row]
    dev: list[Row]
    provenance: dict[str, Any]


def answerer_rows(
    label_files: list[Path], base: str, seed: int, held_out: frozenset[str], settings: AnswererSettings
) -> Rows:
    """The base model's labelled rows, split as the scorer's were; held-out sources are never read."""
    rows = [r for r in read_labels(label_files) if (r.get("model") or base) == base]
    if not rows:
        raise ValueError(f"no rows labelled by {base} in {', '.join(map(str, label_files))}")
    splits = split_rows(rows, seed, held_out)
    train, dev = splits["train"], splits["dev"]
    if settings.train_rows is not None and settings.train_rows < len(train):
        train = training_sample(train, settings.train_rows, settings.answer_share, seed)
    dev = random.Random(seed + 1).sample(dev, min(settings.dev_rows, len(dev)))
    provenance = {
        "labels": [str(p) for p in label_files],
        "rows_by_source": {
            "train": dict(Counter(r["source"] for r in train)),
            "dev": dict(Counter(r["source"] for r in dev)),
        },
        "held_out_sources": sorted(held_out),
        "split_rule": SPLIT_RULE,
        "seed": seed,
    }
    return Rows(train, dev, provenance)


def training_sample(train: list[Row], size: int, answer_share: float | None, seed: int) -> list[Row]:
    """A seeded sample of `size` rows; with `answer_share`, that share of it (as far as there are enough)
    drawn from the rows the base model answers right, the rest from the others."""
    draw = random.Random(seed)
    if answer_share is None:
        return draw.sample(train, size)
    right = [r for r in train if r["correct"] and QARecord.of_label(r).answerable]
    others = [r for r in train if not (r["correct"] and QARecord.of_label(r).answerable)]
    k = min(len(right), round(size * answer_share))
    sample = draw.sample(right, k) + draw.sample(others, min(len(others), size - k))
    draw.shuffle(sample)
    return sample


def scorer_confidences(scorer_folder: Path, base: str, rows: list[Row]) -> np.ndarray:
    """The scorer's calibrated confidence in the base model's answer, per row (on a model copy of its own,
    freed when done)."""
    from scorers.card import ScorerCard
    from scorers.head import HeadScorer
    from train.jobs import target_confidences

    card = ScorerCard.load(scorer_folder)
    if card.base_model != base:
        raise ValueError(f"{scorer_folder}: a scorer of '{card.base_model}', not of '{base}'")
    scorer = HeadScorer(LocalModel(base), scorer_folder)
    return target_confidences(scorer, rows)[scorer.primary]


def decision_tokens(local: LocalModel) -> tuple[int, list[int]]:
    """How many tokens of a reply come before its decision's first token, and that token for each
    decision (in `DECISIONS` order)."""
    spelled = [
        local.tokenizer(json.dumps({"decision": d}), add_special_tokens=False).input_ids for d in DECISIONS
    ]
    at = 0
    while all(len(s) > at for s in spelled) and len({s[at] for s in spelled}) == 1:
        at += 1
    firsts = [s[at] for s in spelled]
    if len(set(firsts)) != len(firsts):
        raise ValueError(f"{local.ref}: its tokenizer spells two decisions with the same first token")
    return at, firsts


def reply_prefix(local: LocalModel) -> list[int]:
    """The tokens every reply starts with, up to its decision."""
    at, _ = decision_tokens(local)
    return list(local.tokenizer(json.dumps({"decision": "answer"}), add_special_tokens=False).input_ids[:at])


Example = tuple[list[int], list[int]]
"""(prompt tokens, reply tokens): the reply ends with the model's end-of-turn token."""


class AnswererTrainer(Objective):
    """Cross-entropy on the reply's tokens, batches packed; dev also reads P(decision = answer)."""

    def __init__(self, local: LocalModel, settings: AnswererSettings, replies: dict[str, str]) -> None:
        self.local, self.settings, self.replies = local, settings, replies
        self._examples: dict[str, Example] = {}
        config = LoraConfig(
            task_type="CAUSAL_LM",
            r=settings.lora_r,
            lora_alpha=settings.lora_alpha,
            lora_dropout=settings.lora_dropout,
            target_modules="all-linear",
        )
        self.model = get_peft_model(local.model, config)
        on_gpu = local.device.type == "cuda"
        if on_gpu if settings.gradient_checkpointing is None else settings.gradient_checkpointing:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        bf16 = on_gpu if settings.bf16 is None else settings.bf16
        self.accelerator = Accelerator(
            gradient_accumulation_steps=settings.gradient_accumulation,
            mixed_precision="bf16" if bf16 else "no",
            cpu=local.device.type == "cpu",
        )
        self.decision_at, self.decision_ids = decision_tokens(local)

    def example(self, row: Row) -> Example:
        if row["id"] not in self._examples:
            messages = prompt(QARecord.of_label(row))
            asked = self.local.prompt_text(messages)
            answered = self.local.prompt_text(
                [*messages, {"role": "assistant", "content": self.replies[row["id"]]}],
                generation_prompt=False,
            )
            if not answered.startswith(asked):
                raise ValueError(
                    f"{self.local.ref}: its chat template does not extend the prompt with the reply"
                )
            ids = self.local.tokenizer(answered[len(asked) :], add_special_tokens=False).input_ids
            end = next((i for i, t in enumerate(ids) if t in self.local.stop_ids), None)
            ids = ids[: end + 1] if end is not None else [*ids, self.local.tokenizer.eos_token_id]
            self._examples[row["id"]] = (self.local.prompt_ids(messages), ids)
        return self._examples[row["id"]]

    def modules(self) -> list[torch.nn.Module]:
        return [self.model]

    def param_groups(self) -> list[dict[str, Any]]:
        return [
            {
                "params": [p for p in self.model.parameters() if p.requires_grad],
                "lr": self.settings.learning_rate,
                "weight_decay": self.settings.weight_decay,
            }
        ]

    def loss(self, prepared: list[Any], batch: list[Row], target: str) -> torch.Tensor:
        logits, labels, _ = self._reply_logits(prepared[0], batch)
        return torch.nn.functional.cross_entropy(logits, labels)

    def _reply_logits(self, model: Any, batch: list[Row]) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """Logits at every position that predicts a reply token, those tokens, and where each example's
        decision token is among them (in the batch's order)."""
        examples = [self.example(r) for r in batch]
        rows = pack([len(p) + len(r) for p, r in examples], self.settings.pack_tokens)
        width = max(sum(len(p) + len(r) for p, r in (examples[i] for i in row)) for row in rows)
        pad = self.local.tokenizer.pad_token_id
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        positions = torch.zeros((len(rows), width), dtype=torch.long)
        at_row: list[int] = []
        at_column: list[int] = []
        labels: list[int] = []
        decisions = [0] * len(examples)
        for k, row in enumerate(rows):
            start = 0
            for i in row:
                asked, replied = examples[i]
                tokens = asked + replied
                ids[k, start : start + len(tokens)] = torch.tensor(tokens)
                positions[k, start : start + len(tokens)] = torch.arange(len(tokens))
                decisions[i] = len(labels) + self.decision_at
                for j, token in enumerate(replied):
                    at_row.append(k)
                    at_column.append(start + len(asked) + j - 1)  # the position that predicts token j
                    labels.append(token)
                start += len(tokens)
            # The padding is one more sequence of its own (positions from 0), so nothing attends to it.
            positions[k, start:] = torch.arange(width - start)
        device = self.accelerator.device
        decoder = self.accelerator.unwrap_model(model).get_base_model().get_decoder()
        head = self.accelerator.unwrap_model(model).get_base_model().get_output_embeddings()
        with self.accelerator.autocast():
            # No attention mask and no cache: transformers reads the restarting position ids as packed
            # sequences and masks attention across them.
            hidden = decoder(input_ids=ids.to(device), position_ids=positions.to(device), use_cache=False)
            states = hidden.last_hidden_state[torch.tensor(at_row), torch.tensor(at_column)]
            logits = head(states).float()
        return logits, torch.tensor(labels, device=logits.device), decisions

    @torch.no_grad()
    def evaluate(self, dev: list[Row], target: str) -> tuple[float, float]:
        """Dev loss on the reply's tokens, and the AUROC of P(decision = answer) for a right answer."""
        self.model.eval()
        total, tokens, answer = 0.0, 0, []
        for batch in batches_of(dev, self.settings.batch_size):
            logits, labels, decisions = self._reply_logits(self.model, batch)
            total += torch.nn.functional.cross_entropy(logits, labels, reduction="sum").item()
            tokens += len(labels)
            chosen = torch.softmax(logits[decisions][:, self.decision_ids], dim=-1)
            answer += chosen[:, 0].tolist()
        # Questions asked with another's passage have no right answer to rank.
        judged = np.array([QARecord.of_label(r).answerable for r in dev])
        correct = np.array([float(bool(r["correct"])) for r in dev])[judged]
        ranked = 0 < correct.sum() < len(correct)
        auroc = calibrators.auroc(np.array(answer)[judged], correct) if ranked else np.nan
        return total / max(tokens, 1), float(auroc)

    def trainable_state(self) -> dict[str, dict[str, torch.Tensor]]:
        return {"adapter": {k: v for k, v in self.model.state_dict().items() if "lora_" in k}}

    def load_trainable_state(self, state: dict[str, dict[str, torch.Tensor]]) -> None:
        self.model.load_state_dict(state["adapter"], strict=False)


def pack(lengths: list[int], capacity: int) -> list[list[int]]:
    """Example indices grouped into rows of at most `capacity` tokens (first fit, longest first); an
    example longer than that has a row of its own."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        k = next((k for k, left in enumerate(room) if left >= lengths[i]), None)
        if k is None:
            rows.append([i])
            room.append(capacity - lengths[i])
        else:
            rows[k].append(i)
            room[k] -= lengths[i]
    return rows


def decide_targets(
    rows: Rows, base: str, scorer_folder: Path, out: Path, log: Callable[[str], None]
) -> tuple[dict[str, str], dict[str, Any]]:
    """Each training and dev row's reply (JSON text), and the decision rule as chosen; kept in `out`
    (targets.jsonl), so that a resumed run trains on exactly the same targets without scoring again."""
    kept = out / TARGETS
    if kept.is_file():
        lines = [json.loads(line) for line in kept.read_text(encoding="utf-8").splitlines() if line]
        replies = {line["id"]: line["reply"] for line in lines[1:]}
        if any(r["id"] not in replies for r in rows.train + rows.dev):
            raise ValueError(f"{kept}: made for other rows; train again without --resume")
        return replies, lines[0]["rule"]
    everything = rows.train + rows.dev
    scores = scorer_confidences(scorer_folder, base, everything)
    confidence = dict(zip((r["id"] for r in everything), scores, strict=True))
    judged = [r for r in rows.dev if QARecord.of_label(r).answerable]
    threshold, j = calibrators.youden_threshold(
        np.array([confidence[r["id"]] for r in judged]), np.array([float(r["correct"]) for r in judged])
    )
    replies = {
        r["id"]: json.dumps(target(r, confidence[r["id"]], threshold), ensure_ascii=False) for r in everything
    }
    decided = Counter(json.loads(replies[r["id"]])["decision"] for r in rows.train)
    rule = {
        "rule": RULE,
        "scorer": str(scorer_folder),
        "threshold": round(threshold, 6),
        "youden_j_on_dev": round(j, 4),
        "dev_rows": len(judged),
        "train_decisions": dict(decided),
        "templates": {k: {"justification": v[0], "evidence_quality": v[1]} for k, v in TEMPLATES.items()},
    }
    log(
        f"threshold {threshold:.4f} (J {j:.3f} on {len(judged)} dev rows); training decisions {dict(decided)}"
    )
    out.mkdir(parents=True, exist_ok=True)
    lines = [{"rule": rule}, *({"id": k, "reply": v} for k, v in replies.items())]
    partial = out / f"{TARGETS}.partial"
    partial.write_text(
        "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines), encoding="utf-8"
    )
    partial.replace(kept)
    return replies, rule


def train_answerer(
    base: str,
    label_files: list[Path],
    out: Path,
    scorer_folder: Path,
    settings: AnswererSettings,
    held_out: frozenset[str] | None,
    resume: bool,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Train and write the answerer folder: a PEFT adapter and answerer.json. `held_out`: sources kept
    out (None: the scorer's own, so the answerer never trains on what the scorer is judged on)."""
    started = time.perf_counter()
    scorer_training = json.loads((scorer_folder / "scorer.json").read_text()).get("training", {})
    seed = int(scorer_training.get("seed", settings.seed))
    if held_out is None:
        held_out = frozenset(scorer_training.get("held_out_sources", []))
    rows = answerer_rows(label_files, base, seed, held_out, settings)
    log(f"{len(rows.train)} training rows, {len(rows.dev)} dev rows (split seed {seed})")
    if not resume:
        (out / TARGETS).unlink(missing_ok=True)
    replies, rule = decide_targets(rows, base, scorer_folder, out, log)
    torch.manual_seed(settings.seed)
    trainer = AnswererTrainer(LocalModel(base), settings, replies)
    stages = [Stage(1, rows.train, "reply", settings.epochs)]
    loop = Loop(LoopSettings.of(settings), out, trainer.accelerator)
    progress: Progress = loop.run(trainer, stages, rows.dev, resume, log)
    save_adapter(trainer.model, base, out)
    card = {
        "method": "failure-aware-answerer",
        "base_model": base,
        "prompt_format": "chat_template+generation_prompt",
        "reply_format": "JSON {decision: answer|uncertain|refuse, answer, justification, evidence_quality}",
        "decision_rule": rule,
        "training": {
            **rows.provenance,
            "settings": asdict(settings),
            "history": progress.history,
            "seconds": round(time.perf_counter() - started, 1),
        },
    }
    (out / CARD).write_text(json.dumps(card, indent=2, ensure_ascii=False), encoding="utf-8")
    return card
