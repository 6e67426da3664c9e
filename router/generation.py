"""A local answer written a segment at a time, each segment its own job on the model's worker.

The worker runs one job at a time, so a 256-token answer written in one job (about 25 s on two CPU cores)
would hold every other request for as long. Written in segments of SEGMENT_TOKENS, with the model's KV
cache carried from one to the next, another request's scoring or answer waits for one segment at most;
greedy decoding makes the text the same as in one job.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from localmodel.model import Draft, LocalModel, Message

SEGMENT_TOKENS = 16
"""About 1.5 s of decoding for SmolLM2-135M on two CPU cores."""


@dataclass
class Generation:
    ids: torch.Tensor
    """The prompt and what has been generated so far (one row)."""
    prompt_tokens: int
    remaining: int
    cache: Any = None
    """The model's KV cache of every position but the last."""
    new_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    done: bool = False


def begin(model: LocalModel, messages: list[Message], max_new_tokens: int) -> Generation:
    ids = model.encode([model.prompt_text(messages)])["input_ids"]
    return Generation(ids, int(ids.shape[1]), max_new_tokens)


@torch.inference_mode()
def advance(model: LocalModel, generation: Generation, steps: int = SEGMENT_TOKENS) -> Generation:
    """Up to `steps` more greedy tokens; `done` once a stop token or the length limit is reached."""
    with model.adapter(None) as base:
        out = base.generate(
            input_ids=generation.ids,
            attention_mask=torch.ones_like(generation.ids),
            cache=generation.cache,
            max_new_tokens=min(steps, generation.remaining),
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            output_scores=True,
            return_dict_in_generate=True,
            pad_token_id=model.tokenizer.pad_token_id,
        )
    new = out.sequences[0, generation.ids.shape[1] :]
    generation.logprobs += [
        float(torch.log_softmax(step[0].float(), dim=-1)[token])
        for step, token in zip(out.scores, new, strict=True)
    ]
    generation.new_ids += new.tolist()
    generation.ids, generation.cache = out.sequences, out.cache
    generation.remaining -= len(new)
    generation.done = generation.remaining <= 0 or any(t in model.stop_ids for t in new.tolist())
    return generation


def finish(model: LocalModel, generation: Generation) -> Draft:
    return model.draft_of(generation.new_ids, generation.logprobs, generation.prompt_tokens)
