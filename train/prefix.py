"""The frozen layers under a head's LoRA, run once per row instead of once per training step.

With LoRA on only the top few layers below the head, everything beneath them is frozen: their output for
a prompt is the same in every epoch and never needs a gradient. Keeping it turns each training step from a
forward and backward pass through all the layers below the head into one through the adapted layers only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from localmodel.model import Pooling, hidden_after, pool
from train.data import QARecord

Row = dict[str, Any]


class FrozenPrefix:
    def __init__(
        self, decoder: Any, start: int, encode: Callable[[list[Row]], dict[str, torch.Tensor]]
    ) -> None:
        """`start`: how many decoder layers are frozen; the states kept are the output of layer `start`."""
        self.decoder, self.start, self.encode = decoder, start, encode
        # fp16 halves the memory of ~10k prompts' states; the adapted layers run in fp32 on top of them.
        self.states: dict[str, torch.Tensor] = {}

    @torch.no_grad()  # not inference_mode: these tensors feed the autograd graph of every training step
    def add(self, rows: list[Row], batch_size: int = 32) -> None:
        todo = sorted(
            (r for r in rows if r["id"] not in self.states), key=lambda r: QARecord.of_label(r).prompt_chars
        )
        for begin in range(0, len(todo), batch_size):
            batch = todo[begin : begin + batch_size]
            encoded = self.encode(batch)
            hidden = hidden_after(self.decoder, encoded, self.start)
            for row, states, mask in zip(batch, hidden, encoded["attention_mask"], strict=True):
                self.states[row["id"]] = states[mask.bool()].to(torch.float16).cpu()

    def prompt_state(self, rows: list[Row], stop: int, pooling: Pooling) -> torch.Tensor:
        """What `localmodel.model.prompt_state(decoder, batch, stop, pooling)` gives, from kept states."""
        sequences = [self.states[r["id"]] for r in rows]
        width = max(len(s) for s in sequences)
        device = next(self.decoder.parameters()).device
        hidden = torch.zeros(len(rows), width, sequences[0].shape[-1], device=device)
        mask = torch.zeros(len(rows), width, dtype=torch.long, device=device)
        for i, states in enumerate(sequences):  # left padding, as the tokenizer pads prompts
            hidden[i, width - len(states) :] = states.to(device, torch.float32)
            mask[i, width - len(states) :] = 1
        with _only_layers(self.decoder, self.start, stop):
            out = self.decoder(
                inputs_embeds=hidden,
                attention_mask=mask,
                position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                use_cache=False,
            )
        return pool(out.last_hidden_state, mask, pooling)  # the decoder applies its final norm


@contextmanager
def _only_layers(decoder: Any, start: int, stop: int) -> Iterator[None]:
    """The decoder runs layers start+1..stop (1-based) on `inputs_embeds` taken as layer `start`'s output."""
    every = decoder.layers
    decoder.layers = torch.nn.ModuleList(every[start:stop])
    try:
        yield
    finally:
        decoder.layers = every
