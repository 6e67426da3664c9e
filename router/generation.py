"""Local answers written together: one batch of rows on the model's worker, a step at a time.

Every job on the worker is short, so scoring and other answers interleave with a long answer: a decode
`step` writes one token of every row (tens of milliseconds for SmolLM2-135M on two CPU cores), and a
`prefill` reads the prompts of rows joining the batch (bounded by `limits.max_prompt_tokens`, like a scoring
pass). Between jobs rows join (continuous batching) and leave (finished, or their client went away),
freeing their part of the KV cache.

Rows are left-padded so that every row's newest token sits in the last column; the attention mask hides
the padding and each row's position ids count only its own tokens, so a row's greedy tokens are the ones
it would get alone (tests/test_local_batch.py checks this on SmolLM2). Each row names the adapter it is
written with (a target's answerer) or None for the base weights; one batch mixes them (see
`LocalModel.per_row`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache

from localmodel.model import LocalModel

Token = tuple[int, float]
"""A generated token and its log-probability."""


@dataclass
class Batch:
    """Rows being written; the cache holds every token of each row but its newest (`pending`)."""

    cache: DynamicCache
    mask: torch.Tensor
    """rows x cached columns: 1 for a row's tokens, 0 for its left padding."""
    pending: torch.Tensor
    """Each row's newest token, which the next step reads."""
    adapters: list[str | None]
    """Each row's adapter (None: the base weights)."""

    @property
    def rows(self) -> int:
        return int(self.pending.shape[0])

    @property
    def columns(self) -> int:
        return int(self.mask.shape[1])


def _greedy(logits: torch.Tensor) -> tuple[torch.Tensor, list[Token]]:
    """The most likely next token of each row (the logits of its last position) and its log-probability."""
    logprobs = torch.log_softmax(logits[:, -1, :].float(), dim=-1)
    chosen = logprobs.argmax(dim=-1)
    picked = logprobs.gather(1, chosen.unsqueeze(1)).squeeze(1)
    return chosen, list(zip(chosen.tolist(), picked.tolist(), strict=True))


@torch.inference_mode()
def prefill(
    model: LocalModel, prompts: list[list[int]], adapters: list[str | None] | None = None
) -> tuple[Batch, list[Token]]:
    """A batch of new rows, one per tokenized prompt (written with `adapters`, by default the base
    weights), and each row's first token."""
    adapters = adapters or [None] * len(prompts)
    padded = model.pad_batch(prompts)
    # A cache of plain layers, whatever the model's config says (Gemma's sliding-window layers included):
    # rows can then be padded, joined and dropped alike in every layer. The sliding window still applies,
    # through the attention mask.
    cache = DynamicCache()
    with model.per_row(adapters) as (rows, extra):
        out = rows(**padded, cache=cache, use_cache=True, logits_to_keep=1, **extra)
    chosen, tokens = _greedy(out.logits)
    return Batch(cache, padded["attention_mask"], chosen, list(adapters)), tokens


@torch.inference_mode()
def step(model: LocalModel, batch: Batch) -> list[Token]:
    """The next token of every row."""
    ones = torch.ones_like(batch.mask[:, :1])
    mask = torch.cat([batch.mask, ones], dim=1)
    positions = batch.mask.sum(dim=1, keepdim=True)  # a row's own tokens so far, not its padding
    with model.per_row(batch.adapters) as (rows, extra):
        out = rows(
            input_ids=batch.pending.unsqueeze(1),
            attention_mask=mask,
            position_ids=positions,
            cache=batch.cache,
            use_cache=True,
            **extra,
        )
    batch.mask = mask
    batch.pending, tokens = _greedy(out.logits)
    return tokens


@torch.inference_mode()
def join(batch: Batch | None, joining: Batch) -> Batch:
    """One batch of both: the one with fewer columns is padded on the left."""
    if batch is None:
        return joining
    width = max(batch.columns, joining.columns)
    a, b = _widened(batch, width), _widened(joining, width)
    for ours, theirs in zip(a.cache.layers, b.cache.layers, strict=True):
        ours.keys = torch.cat([ours.keys, theirs.keys])
        ours.values = torch.cat([ours.values, theirs.values])
    pending = torch.cat([a.pending, b.pending])
    return Batch(a.cache, torch.cat([a.mask, b.mask]), pending, a.adapters + b.adapters)


def _widened(batch: Batch, width: int) -> Batch:
    extra = width - batch.columns
    if extra == 0:
        return batch
    for layer in batch.cache.layers:
        layer.keys, layer.values = _padded(layer.keys, extra, 2), _padded(layer.values, extra, 2)
    batch.mask = _padded(batch.mask, extra, 1)
    return batch


def _padded(tensor: torch.Tensor, extra: int, dim: int) -> torch.Tensor:
    """`extra` zeros before the tensor's first entry along `dim`."""
    shape = list(tensor.shape)
    shape[dim] = extra
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


@torch.inference_mode()
def keep(batch: Batch, rows: list[int]) -> Batch | None:
    """The batch of `rows` only (None if none): the others' cache is freed, and the columns that are
    padding in every row left."""
    if not rows:
        return None
    if rows == list(range(batch.rows)):
        return batch
    index = torch.tensor(rows, device=batch.mask.device)
    mask = batch.mask[index]
    used = mask.any(dim=0).nonzero()
    first = int(used[0]) if len(used) else mask.shape[1] - 1
    for layer in batch.cache.layers:
        # Copied, not viewed: a view would keep the whole of the old tensors alive.
        layer.keys = layer.keys[index, :, first:].contiguous()
        layer.values = layer.values[index, :, first:].contiguous()
    adapters = [batch.adapters[k] for k in rows]
    return Batch(batch.cache, mask[:, first:].contiguous(), batch.pending[index], adapters)
