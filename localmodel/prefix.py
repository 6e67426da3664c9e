"""The chat template's head, run once: what every scored prompt starts with is not run again for each one.

A single-question prompt opens with the template's system turn and the user turn's header (SmolLM2: about 21
of a typical 40 tokens). Attention is causal, so those tokens' keys, values and states do not depend on what
follows them: a `Prefix` keeps them, and a scoring pass runs only the tokens after it, reading the kept keys
and values through a cache, its means adding the kept states. A prompt shares with the head only what is
token for token the same (a custom system message shares the first few tokens), and the kept tensors are
never written to, only sliced and copied.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache


@dataclass(frozen=True)
class Prefix:
    """The head's pass through decoder layers 1..deepest: read-only once built."""

    keys: list[torch.Tensor]
    """Per layer from the first, [1, key-value heads, head tokens, head dim], in the pass's dtype."""
    values: list[torch.Tensor]
    normed: dict[int, torch.Tensor]
    """Per layer (1-based), the final norm of its output at each head token, [head tokens, hidden], fp32."""

    def cache(self, tokens: int, rows: int, config: Any) -> DynamicCache:
        """A fresh cache (of the layer kinds `config`, the decoder's, names) holding the first `tokens` of the
        head for each of `rows` rows; the pass that reads it appends to its own copies (`DynamicCache`
        concatenates), never to the kept tensors."""
        return DynamicCache(
            ddp_cache_data=[
                (k[:, :, :tokens].expand(rows, -1, -1, -1), v[:, :, :tokens].expand(rows, -1, -1, -1))
                for k, v in zip(self.keys, self.values, strict=True)
            ],
            config=config,
        )


class PrefixCache:
    """The `Prefix` of one set of weights (an adapter, or one twin) per deepest layer. The owner clears it
    whenever those weights change: the model on loading or unloading an adapter; a twin never changes."""

    def __init__(self) -> None:
        self._kept: dict[tuple[str | None, int], Prefix] = {}

    def get(self, adapter: str | None, deepest: int, build: Callable[[], Prefix]) -> Prefix:
        key = (adapter, deepest)
        if key not in self._kept:
            self._kept[key] = build()
        return self._kept[key]

    def clear(self) -> None:
        self._kept.clear()


def shared_tokens(head: Sequence[int], rows: Sequence[Sequence[int]]) -> int:
    """How many tokens every row shares with `head`, leaving each row at least one token of its own (the
    last token's state is read from the pass over the rest)."""
    shared = min([len(head), *(len(row) - 1 for row in rows)])
    for row in rows:
        shared = next((i for i in range(shared) if row[i] != head[i]), shared)
    return max(shared, 0)
