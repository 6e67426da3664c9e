"""Answers written through router/generation.py's batch directly, rows joining and leaving on a schedule."""

from __future__ import annotations

from localmodel.model import Draft, LocalModel, Message
from router import generation
from router.generation import Batch


def write_batched(
    model: LocalModel, conversations: list[list[Message]], max_new_tokens: list[int], joins_at: list[int]
) -> list[Draft]:
    """Conversation k joins the batch before step `joins_at[k]` (those joining together are read in one
    prefill); each row leaves once it reaches a stop token or its `max_new_tokens`."""
    prompts = [model.prompt_ids(messages) for messages in conversations]
    written: list[list[tuple[int, float]]] = [[] for _ in prompts]
    batch: Batch | None = None
    rows: list[int] = []  # the conversation of each batch row
    step = 0
    while step <= max(joins_at) or rows:
        joining = [k for k, at in enumerate(joins_at) if at == step]
        if joining:
            joined, tokens = generation.prefill(model, [prompts[k] for k in joining])
            batch = generation.join(batch, joined)
            rows += joining
        elif batch is not None:
            tokens = generation.step(model, batch)
        else:
            tokens = []
        for k, token in zip(joining or rows, tokens, strict=True):
            written[k].append(token)
        kept = [
            i
            for i, k in enumerate(rows)
            if len(written[k]) < max_new_tokens[k] and written[k][-1][0] not in model.stop_ids
        ]
        rows = [rows[i] for i in kept]
        batch = generation.keep(batch, kept) if batch is not None else None
        step += 1
    return [
        model.draft_of([t for t, _ in tokens], [lp for _, lp in tokens], len(prompt))
        for tokens, prompt in zip(written, prompts, strict=True)
    ]
