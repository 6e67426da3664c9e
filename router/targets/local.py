"""`kind: local` targets: the scorer's own model answers, in-process, on the router's model thread."""

from __future__ import annotations

from typing import TYPE_CHECKING

from policies import LocalTarget, Target
from router import completions, generation
from router.completions import Completion
from router.errors import APIError
from router.schemas import ChatCompletionRequest
from router.targets.base import Answerer, Asked, LocalModelAccess, TargetFailed

if TYPE_CHECKING:
    from localmodel import Draft


class LocalAnswerer(Answerer, kind="local"):
    def __init__(self, name: str, target: LocalTarget, local: LocalModelAccess) -> None:
        super().__init__(name, target)
        self.target, self.local = target, local

    @classmethod
    def build(cls, name: str, spec: Target, local: LocalModelAccess) -> LocalAnswerer:
        assert isinstance(spec, LocalTarget)
        return cls(name, spec, local)

    def max_new_tokens(self, request: ChatCompletionRequest) -> int:
        """The client's token cap, within the target's."""
        cap = self.target.max_tokens
        return min(request.token_cap or cap, cap)

    async def complete(self, request: ChatCompletionRequest, asked: Asked) -> Completion:
        # The scored draft is the answer: the confidence is about exactly this text. Sampling parameters
        # do not apply to it for that reason.
        draft = asked.draft
        if draft is None:
            try:
                draft = await self._write(request, asked)
            except APIError as exc:
                if exc.status != 503:  # a prompt too long is the client's to fix, not the model's state
                    raise
                # Overloaded or shutting down: another target may still answer.
                fields = {"type": exc.type, "code": exc.code, "headers": exc.headers}
                raise TargetFailed("overloaded", exc.status, exc.message, **fields) from exc
        return completions.completion(
            asked.request_id,
            self.name,
            draft.text,
            draft.finish_reason,
            draft.prompt_tokens,
            draft.completion_tokens,
        )

    async def _write(self, request: ChatCompletionRequest, asked: Asked) -> Draft:
        messages = request.plain_messages()
        if not asked.prompt_checked:
            await self.local.check_prompt(messages)
        model, run = self.local.model, self.local.run
        # A segment per job: other requests' work on the model runs between segments.
        async with self.local.turns:  # each answer being written holds its KV cache between segments
            written = await run(generation.begin, model, messages, self.max_new_tokens(request))
            while not written.done:
                written = await run(generation.advance, model, written)
        return generation.finish(model, written)
