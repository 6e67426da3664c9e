from __future__ import annotations

from itertools import count
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

import calibrators
from localmodel import Message
from scorers.base import RawScore, ScoreItem, Scorer, ScorerSettings
from scorers.card import ScorerCard, folder_digest

# torch is imported where a head is loaded or saved, never by importing this module: registering the
# scorer (`import scorers`, a policy check) must not load it.
if TYPE_CHECKING:
    import torch

    from localmodel import LocalModel, Precision

ADAPTER_NAME = "certainty_head"
_LOADS = count()
HEAD_FILE = "head.safetensors"
PASSAGE_CHARS = 200
"""A system message at least this long is a passage (or instructions around one), not a one-line role."""


def as_trained(messages: list[Message]) -> list[Message]:
    """The conversation in the form the head was trained on: a passage in the user turn, before the question.

    RAG apps send a passage in one of two ways: in the user turn with the question (read as it is), or in
    a system message before a single user question. Training only ever asked the first way (with the chat
    template's default system prompt), so for a single question the system messages of at least
    `PASSAGE_CHARS` are moved into the user turn, in order, each on its own line; shorter ones (a role, "You
    are a helpful assistant") stay where they are. A conversation of more than one user turn is read as it is.
    """
    users = [m for m in messages if m.get("role") == "user"]
    if len(users) != 1 or messages[-1] is not users[0]:
        return messages
    passages = [m for m in messages[:-1] if m.get("role") == "system" and len(_text(m)) >= PASSAGE_CHARS]
    if not passages:
        return messages
    kept = [m for m in messages[:-1] if not any(m is p for p in passages)]
    question = "\n".join([*(_text(p) for p in passages), _text(users[0])])
    return [*kept, {**users[0], "content": question}]


def _text(message: Message) -> str:
    """Plain content, or the text parts of a list of content parts."""
    content = message.get("content") or ""
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if isinstance(part, dict))


class HeadScorer(Scorer, method="head"):
    """EliCal-style pre-generation scorer: LoRA on the base model, a linear head per predicted model on the
    prompt's states.

    One forward pass over the prompt, stopped at the layer the heads read, serves every head; nothing is
    generated.
    """

    pre_generation = True
    needs_adapter = True

    def __init__(self, model: LocalModel, folder: Path, precision: Precision = "fp32") -> None:
        """`precision`: the forward pass's (localmodel/reduced.py); fp32 reads the model itself, as training
        and evaluation do."""
        card = ScorerCard.load(folder)
        if card.method != "head":
            raise ValueError(f"{folder}: a '{card.method}' scorer, not a head scorer")
        self.model, self.folder = model, folder
        self.layer, self.pooling = card.layer or model.num_layers, card.pooling
        predicted = card.predicted(folder)
        joint = [t for t in predicted if t.head is None]
        weights = _tensors(folder / HEAD_FILE)
        self.weight = weights["weight"].float().reshape(len(joint), -1).to(model.device)
        self.bias = weights["bias"].float().reshape(len(joint)).to(model.device)
        self.own_heads = {t.model: self._own_head(folder / t.head, t.layer) for t in predicted if t.head}
        self.targets = tuple(t.model for t in predicted)
        self.family_heads = {
            (f.model, f.family): self._own_head(folder / f.head, f.layer) for f in card.family_heads
        }
        """(model, family) -> its head, read on the rows the task head takes for that family."""
        heads = [*self.own_heads.values(), *self.family_heads.values()]
        self.layers = sorted({self.layer, *(layer for layer, _, _ in heads)})
        self.calibrators = {
            t.model: calibrators.load(folder / t.calibrator) for t in predicted if t.calibrator
        }
        self.reference_scores = card.extra().get("reference_scores")
        self.task_weight: torch.Tensor | None = None
        self.task_bias: torch.Tensor | None = None
        if card.task_head:
            tasks = _tensors(folder / card.task_head.file)
            self.task_weight = tasks["weight"].float().to(model.device)
            self.task_bias = tasks["bias"].float().to(model.device)
            self.tasks = tuple(card.task_head.families)
        _check_family_heads(card, folder, self.targets, self.tasks)
        files = [HEAD_FILE, *(t.head for t in predicted if t.head), "adapter_model.safetensors"]
        files += [f.head for f in card.family_heads]
        files += ["adapter_config.json"]
        files += [t.calibrator for t in predicted if t.calibrator]
        files += [card.task_head.file] if card.task_head else []
        self.version = f"head:{folder_digest(folder, files)}:layer{self.layer}:{self.pooling}"
        # A head on frozen states (a probe) has no adapter; it scores with the base weights. The adapter
        # loads last, so a folder that fails to load leaves the model as it was, and under a name of its
        # own: a reload's scorer loads beside the one it replaces, whose requests in flight keep theirs.
        self.adapter: str | None = None
        if (folder / "adapter_config.json").is_file():
            self.adapter = f"{ADAPTER_NAME}_{next(_LOADS)}"
            try:
                model.load_adapter(folder, self.adapter)
            except Exception:
                model.unload_adapter(self.adapter)  # PEFT adds an adapter before it reads the weights
                raise
        # Built after the adapter, whose LoRA it merges; the model's weights (generation's) stay as loaded.
        self.twin = model.scoring_twin(self.adapter, max(self.layers), precision)
        if self.twin is not None:  # its scores differ from fp32's in the third decimal: not the same cache
            self.version += f":{str(self.twin.dtype).removeprefix('torch.')}"

    @classmethod
    def build(cls, model: LocalModel, settings: ScorerSettings) -> HeadScorer:
        assert settings.adapter is not None
        return cls(model, settings.adapter, settings.precision)

    def close(self) -> None:
        self.twin = None  # its weights go with it
        if self.adapter:
            self.model.unload_adapter(self.adapter)

    def _own_head(self, path: Path, layer: int | None) -> tuple[int, torch.Tensor, torch.Tensor]:
        tensors = _tensors(path)
        weight, bias = tensors["weight"].float().reshape(1, -1), tensors["bias"].float().reshape(1)
        return layer or self.layer, weight.to(self.model.device), bias.to(self.model.device)

    def states(self, items: list[ScoreItem]) -> torch.Tensor:
        """The pooled prompt states the jointly trained heads (and the task head) read: rows x features."""
        return self.states_at(items, [self.layer])[self.layer]

    def states_at(self, items: list[ScoreItem], layers: list[int]) -> dict[int, torch.Tensor]:
        """The pooled prompt states at each of `layers`, from one forward pass."""
        texts = [self.model.prompt_text(as_trained(i.messages)) for i in items]
        return self.model.prompt_states_at(texts, layers, self.pooling, self.adapter, self.twin)

    def raw_scores(self, items: list[ScoreItem]) -> np.ndarray:
        """Rows x targets."""
        states = self.states_at(items, self.layers)
        return self._certainty(states, self._tasks(states[self.layer]))

    def score_batch(self, items: list[ScoreItem]) -> list[RawScore]:
        states = self.states_at(items, self.layers)
        tasks = self._tasks(states[self.layer])
        return [
            RawScore(
                {t: float(v) for t, v in zip(self.targets, row, strict=True)},
                task=None if tasks is None else dict(zip(self.tasks, map(float, tasks[i]), strict=True)),
            )
            for i, row in enumerate(self._certainty(states, tasks))
        ]

    def _certainty(self, states: dict[int, torch.Tensor], tasks: np.ndarray | None) -> np.ndarray:
        """Rows x targets in the card's order: the joint head's rows, each own head at its layer, and on the
        rows whose likeliest family has a head of its own for a target, that head."""
        joint = iter((states[self.layer] @ self.weight.T + self.bias).T)
        logits = states[self.layer].new_empty((len(states[self.layer]), len(self.targets)))
        for k, target in enumerate(self.targets):
            if target in self.own_heads:
                layer, weight, bias = self.own_heads[target]
                logits[:, k] = states[layer] @ weight[0] + bias[0]
            else:
                logits[:, k] = next(joint)
        if tasks is not None and self.family_heads:
            likeliest = tasks.argmax(axis=1)
            for (target, family), (layer, weight, bias) in self.family_heads.items():
                rows = np.flatnonzero(likeliest == self.tasks.index(family))
                if len(rows):
                    at = logits.new_tensor(rows).long()
                    logits[at, self.targets.index(target)] = states[layer][at] @ weight[0] + bias[0]
        return logits.sigmoid().cpu().numpy().astype(np.float64)

    def _tasks(self, states: torch.Tensor) -> np.ndarray | None:
        """Rows x task families, each row a probability distribution; None without a task head."""
        if self.task_weight is None or self.task_bias is None:
            return None
        logits = states @ self.task_weight.T + self.task_bias
        return logits.softmax(dim=-1).cpu().numpy().astype(np.float64)


def _check_family_heads(
    card: ScorerCard, folder: Path, targets: tuple[str, ...], tasks: tuple[str, ...]
) -> None:
    for head in card.family_heads:
        if head.model not in targets:
            raise ValueError(f"{folder}: a family head for {head.model}, which the scorer does not predict")
        if head.family not in tasks:
            raise ValueError(f"{folder}: a family head for '{head.family}', which no task head tells apart")


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file read whole, never memory-mapped: a folder copied over in place (`cp` writes into
    the same files) must not change the weights of the scorer still serving from it."""
    from safetensors.torch import load

    return load(path.read_bytes())


def save_head(folder: Path, weight: torch.Tensor, bias: torch.Tensor, card: ScorerCard) -> None:
    """Write the heads (one row of `weight` per target) and the card; the PEFT adapter (if any) and the
    calibrators are saved beside them."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    rows = max(sum(t.head is None for t in card.targets), 1)
    tensors = {
        "weight": weight.detach().reshape(rows, -1).float().cpu(),
        "bias": bias.detach().reshape(rows).float().cpu(),
    }
    save_file(tensors, str(folder / HEAD_FILE))
    card.save(folder)
