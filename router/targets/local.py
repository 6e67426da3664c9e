"""`kind: local` targets: the scorer's own model answers, in-process, on the router's model thread.

A target with an `answerer` writes with that adapter, loaded into the shared model under a name of its
own: its rows of a batch run with it and every other row (other targets, the scorer's drafts) with the base
weights, and the scorer never reads it (each forward pass names the adapters it uses), so a confidence is
the same with or without an answerer loaded.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from policies import LocalTarget, Target
from router import completions
from router.completions import Completion
from router.errors import APIError
from router.schemas import ChatCompletionRequest
from router.targets.base import Answerer, Asked, Chunks, LocalModelAccess, TargetFailed, Usage

if TYPE_CHECKING:
    from localmodel import LocalModel
    from router.local_batch import Row


ANSWERER_CARD = "answerer.json"


def answerer_adapter(model: LocalModel, folder: Path) -> str:
    """Load the answerer in `folder` into `model` (again, if it was loaded before: a reload sees new
    weights) and return the adapter's name, one per folder."""
    card = folder / ANSWERER_CARD
    base = json.loads(card.read_text(encoding="utf-8")).get("base_model") if card.is_file() else None
    if base is not None and base != model.ref:
        raise ValueError(f"{folder}: an answerer for '{base}', not for the scorer's model '{model.ref}'")
    name = "answerer_" + hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:12]
    model.load_adapter(folder, name)
    return name


class LocalAnswerer(Answerer, kind="local"):
    def __init__(self, name: str, target: LocalTarget, local: LocalModelAccess) -> None:
        super().__init__(name, target)
        self.target, self.local = target, local
        self.adapter = (
            None if target.answerer is None else answerer_adapter(local.model, Path(target.answerer))
        )
        """The answerer's adapter name; None: the base weights write the answer."""

    @classmethod
    def build(cls, name: str, spec: Target, local: LocalModelAccess) -> LocalAnswerer:
        assert isinstance(spec, LocalTarget)
        return cls(name, spec, local)

    @property
    def takes_tools(self) -> bool:
        return self.target.accepts_tools

    async def complete(self, request: ChatCompletionRequest, asked: Asked) -> Completion:
        # The scored draft is the answer: the confidence is about exactly this text. Sampling parameters
        # do not apply to it for that reason. An answerer writes its own reply (the draft is the base
        # weights' answer), stating in it whether it answers.
        draft = asked.draft if self.adapter is None else None
        if draft is None:
            row = await self._write(request, asked)
            try:
                await _overloaded_as_failure(row.finished())
            finally:
                row.leave()  # a no-op once it is done; else the client left, and the batch drops it
            draft = row.draft(self.local.model)
        return completions.completion(
            asked.request_id,
            self.name,
            draft.text,
            draft.finish_reason,
            draft.prompt_tokens,
            draft.completion_tokens,
        )

    async def stream(
        self, request: ChatCompletionRequest, asked: Asked, on_usage: Callable[[Usage | None], None]
    ) -> Chunks:
        """Tokens as they are written; an answer the scorer already drafted is replayed. Returns once the
        first token is written, so that a failure before it (the server closing) is an HTTP error or a
        fallback, not a cut stream."""
        if asked.draft is not None or self.adapter is not None:
            return await super().stream(request, asked, on_usage)
        row = await self._write(request, asked)
        try:
            await _overloaded_as_failure(row.wait(0))
        except BaseException:
            row.leave()
            raise
        return Streamed(row, self.local.model, asked.request_id, self.name, request.include_usage, on_usage)

    async def _write(self, request: ChatCompletionRequest, asked: Asked) -> Row:
        if not asked.prompt_checked:
            await self.local.check_prompt(asked.messages)
        tokens = request.tokens_within(self.target.max_tokens)
        return await self.local.writer.write(asked.messages, tokens, self.adapter)


async def _overloaded_as_failure(waiting: Awaitable[None]) -> None:
    """Awaits `waiting`; the model overloaded or shutting down (a 503) is the target's failure, which
    another target may answer instead; a prompt too long is the client's to fix, not the model's state."""
    try:
        await waiting
    except APIError as exc:
        if exc.status != 503:
            raise
        fields = {"type": exc.type, "code": exc.code, "headers": exc.headers}
        raise TargetFailed("overloaded", exc.status, exc.message, **fields) from exc


class Streamed:
    """A local answer streamed as it is written. `aclose`, read or not, takes the row out of the batch
    (its KV cache freed at the next step) and meters what was written."""

    def __init__(
        self,
        row: Row,
        model: LocalModel,
        request_id: str,
        name: str,
        include_usage: bool,
        on_usage: Callable[[Usage | None], None],
    ) -> None:
        self.row, self.model, self.on_usage = row, model, on_usage
        self.head = completions.chunk_head(f"chatcmpl-{request_id}", int(time.time()), name)
        self._chunks = self._written(include_usage)
        self._metered = False

    def __aiter__(self) -> AsyncIterator[Completion]:
        return self._chunks

    async def aclose(self) -> None:
        self.row.leave()
        await self._chunks.aclose()
        self._meter()

    def _meter(self) -> Usage:
        draft = self.row.draft(self.model)
        usage = {
            "prompt_tokens": draft.prompt_tokens,
            "completion_tokens": draft.completion_tokens,
            "total_tokens": draft.prompt_tokens + draft.completion_tokens,
        }
        if not self._metered:  # once, at the end or when the client left
            self._metered = True
            self.on_usage(usage)
        return usage

    async def _written(self, include_usage: bool) -> AsyncGenerator[Completion]:
        head, row = self.head, self.row
        yield completions.chunk(head, {"role": "assistant", "content": ""})
        text = _Text(self.model)
        while True:
            seen = len(row.tokens)
            piece = text.more(row.tokens)
            if piece:
                yield completions.chunk(head, {"content": piece})
            if row.done:
                break
            await row.wait(seen)
        draft = row.draft(self.model)
        piece = text.rest(draft.text)
        if piece:
            yield completions.chunk(head, {"content": piece})
        yield completions.chunk(head, {}, draft.finish_reason)
        usage = self._meter()
        if include_usage:
            yield completions.usage_chunk(head, usage)


class _Text:
    """The answer's text as its tokens come, said once and never taken back: a token may end inside a
    character (its bytes come in the next token), and the answer is stripped, so a trailing incomplete
    character or whitespace waits for what follows."""

    def __init__(self, model: LocalModel) -> None:
        self.model = model
        self.said = ""

    def more(self, tokens: list[int]) -> str:
        """What the tokens so far add to what was said."""
        stops = self.model.stop_ids
        end = next((k for k, token in enumerate(tokens) if token in stops), len(tokens))
        # The whole answer decoded each time (not token by token): how a token reads can depend on the
        # ones before it (a SentencePiece word start, a character split across tokens).
        text = str(self.model.tokenizer.decode(tokens[:end], skip_special_tokens=True)).lstrip()
        sure = text.rstrip("\ufffd").rstrip()
        if not sure.startswith(self.said):
            return ""  # an earlier piece reads differently now: wait for the whole answer (see `rest`)
        piece, self.said = sure[len(self.said) :], sure
        return piece

    def rest(self, final: str) -> str:
        """The end of the answer, `final` being its whole text."""
        return final[len(self.said) :] if final.startswith(self.said) else ""
