"""Admission: what a request must be before any model work. A model this router serves, fields some target
takes, at most `limits.max_messages` messages; and, where the local model reads it, a prompt it may read.

The caller's key and its limits are checked before this, at the HTTP layer (router/access/).
"""

from __future__ import annotations

from collections.abc import Collection

from localmodel import LocalModel, Message
from policies import LocalTarget, Policy
from router.errors import APIError
from router.model_worker import ModelWorker
from router.schemas import ChatCompletionRequest
from router.targets import check_fields


def characters(messages: list[Message]) -> int:
    """A conversation's length in characters: what a prompt costs before it is tokenised."""
    return sum(len(str(m.get("content") or "")) for m in messages)


def prompt_token_limit(policy: Policy, model: LocalModel) -> int:
    """The policy's limit, within what the model can read beside the longest answer it may write."""
    longest = max(
        [policy.scorer.max_draft_tokens]
        + [t.max_tokens for t in policy.targets.values() if isinstance(t, LocalTarget)]
    )
    return min(policy.limits.max_prompt_tokens, model.context_length - longest)


class Admission:
    def __init__(self, policy: Policy, declared_fields: Collection[str]) -> None:
        """`declared_fields`: request fields beyond OpenAI's that some target of the policy takes."""
        self.policy, self.declared_fields = policy, declared_fields

    def admit(self, request: ChatCompletionRequest) -> None:
        """A 400 or 404 in OpenAI's words for a request no target should see."""
        if request.model not in self.policy.model_names:
            served = ", ".join(self.policy.model_names)
            message = f"The model '{request.model}' does not exist; this router serves: {served}"
            raise APIError(404, message, param="model", code="model_not_found")
        check_fields(request, self.declared_fields)
        self.check_count(len(request.messages))

    def check_count(self, messages: int) -> None:
        limit = self.policy.limits.max_messages
        if messages > limit:
            raise APIError(
                400,
                f"Too many messages: {messages}; this router takes at most {limit} "
                "(policy limits.max_messages)",
                param="messages",
                code="too_many_messages",
            )


class PromptLimit:
    """A prompt the local model reads must fit `max_prompt_tokens`: it bounds one job's time. Checked only
    where the model reads the prompt (scoring, a local answer), so a request passed through to a remote
    target is never counted."""

    def __init__(self, policy: Policy, worker: ModelWorker) -> None:
        self.worker = worker
        self.max_prompt_tokens = prompt_token_limit(policy, worker.model)
        # Each token is at least one byte and a character at most four bytes, so a prompt below this many
        # characters fits without being counted.
        self._framing = len(worker.model.prompt_text([{"role": "user", "content": ""}]).encode())

    async def check(self, messages: list[Message]) -> None:
        count = characters(messages)
        if 4 * count + self._framing * (len(messages) + 1) <= self.max_prompt_tokens:
            return
        length = "far too long"  # more characters than the limit's tokens could hold: no need to count
        if count <= self.max_prompt_tokens * self.worker.model.max_token_chars:
            tokens = await self.worker.prompt_tokens(messages)
            if tokens <= self.max_prompt_tokens:
                return
            length = f"{tokens} tokens long"
        raise APIError(
            400,
            f"This conversation is {length}; the local model reads at most {self.max_prompt_tokens} tokens "
            "(policy limits.max_prompt_tokens)",
            param="messages",
            code="context_length_exceeded",
        )
