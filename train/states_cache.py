"""A head scorer's pooled prompt states at chosen layers, computed once per prompt and kept on disk.

The forward pass is what fitting a head on frozen states costs (minutes per thousand prompts on a CPU); the
fit itself takes seconds. A refit (another layer, more rows, another sample) computes only what it has not
seen: states are keyed by the prompt and by what they depend on (base model, adapter, pooling, layer), never
by the heads on top, which they do not depend on.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from localmodel import Message
from scorers import ScoreItem
from scorers.card import ScorerCard, folder_digest
from scorers.head import HeadScorer

BATCH_CHARS = 24_000
"""At most this many prompt characters in a batch (about 6,000 tokens): a batch of long prompts costs its
rows times its longest prompt squared in attention memory."""


class StatesCache:
    def __init__(self, scorer: HeadScorer, path: Path | None = None, batch_size: int = 16) -> None:
        self.scorer, self.path, self.batch_size = scorer, path, batch_size
        adapter = folder_digest(scorer.folder, ["adapter_model.safetensors", "adapter_config.json"])
        self.reads = f"{ScorerCard.load(scorer.folder).base_model}:{adapter}:{scorer.pooling}"
        self.known: dict[int, dict[str, np.ndarray]] = {}
        if path and path.is_file():
            stored = np.load(path)
            for name in stored.files:
                if name.startswith("keys_"):
                    layer = int(name.removeprefix("keys_"))
                    keys = stored[name].tolist()
                    self.known[layer] = dict(zip(keys, stored[f"states_{layer}"], strict=True))

    def __call__(self, prompts: list[list[Message]], layers: list[int]) -> dict[int, np.ndarray]:
        """Rows x features at each layer, in the prompts' order."""
        keys = [self._key(p) for p in prompts]
        for layer in layers:
            self.known.setdefault(layer, {})
        unseen = {
            k: p for k, p in zip(keys, prompts, strict=True) if any(k not in self.known[n] for n in layers)
        }
        missing = sorted(unseen.items(), key=lambda pair: (_chars(pair[1]), pair[0]))
        for number, part in enumerate(self._batches(missing)):
            states = self.scorer.states_at([ScoreItem(p) for _, p in part], layers)
            for layer, values in states.items():
                rows = values.cpu().numpy().astype(np.float64)
                self.known[layer].update(zip([k for k, _ in part], rows, strict=True))
            if number % 20 == 19:
                self.save()  # an interrupted run keeps what it computed
        if missing:
            self.save()
        return {layer: np.stack([self.known[layer][k] for k in keys]) for layer in layers}

    def save(self) -> None:
        if self.path is None:
            return
        arrays = {}
        for layer, states in self.known.items():
            if states:
                arrays[f"keys_{layer}"] = np.array(list(states))
                arrays[f"states_{layer}"] = np.stack(list(states.values()))
        partial = self.path.with_name(f".{self.path.name}.partial.npz")
        np.savez(partial, **arrays)  # type: ignore[arg-type]
        partial.replace(self.path)

    def _batches(self, pairs: list[tuple[str, list[Message]]]) -> Iterator[list[tuple[str, list[Message]]]]:
        """Up to `batch_size` prompts and `BATCH_CHARS` characters; `pairs` come shortest first, so the last
        one added to a batch is its longest."""
        batch: list[tuple[str, list[Message]]] = []
        for pair in pairs:
            if batch and (len(batch) == self.batch_size or (len(batch) + 1) * _chars(pair[1]) > BATCH_CHARS):
                yield batch
                batch = []
            batch.append(pair)
        if batch:
            yield batch

    def _key(self, prompt: list[Message]) -> str:
        return hashlib.sha256(f"{self.reads}:{prompt!r}".encode()).hexdigest()[:24]


def _chars(prompt: list[Message]) -> int:
    return sum(len(str(m.get("content") or "")) for m in prompt)
