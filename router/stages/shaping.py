"""Shaping: what the client gets. The decision's action shapes the answer's text (a hedge's template, a
refusal's message: policies/actions/), the failure-aware form wraps it in JSON, and a stream is passed on as
written or replayed from the whole answer.

A hedge whose template ends with `{answer}` streams: its prefix first, then the answer as it is written.
Only a template with text after `{answer}`, or the failure-aware JSON, needs the whole answer first and is
replayed. Output a program parses (JSON mode, a JSON schema, tool calls) is never written around: there a
hedge travels in the headers (x-router-decision: hedge) and, in the failure-aware form, its `decision` field.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass

from policies import Decision, LocalTarget, Policy, action
from router import completions
from router.completions import Completion
from router.schemas import ChatCompletionRequest
from router.stages.answering import Answer
from router.targets import Chunks, replay


@dataclass(frozen=True)
class Routed:
    request_id: str
    decision: Decision
    """Its target is the one that answered: the rule's, or a fallback."""
    body: Completion | None = None
    chunks: Chunks | None = None
    fallback: str | None = None
    """The targets passed over and why (x-router-fallback), when a fallback answered."""
    decision_kept: bool = False
    """Whether the decision log keeps this decision, so that feedback can join it (x-router-decision-kept);
    set by recording."""
    task: str | None = None
    """The likeliest task family, when the request was scored by a scorer with a task head (x-router-task);
    set by recording."""
    scorer: str | None = None
    """The scorer version in force (x-router-scorer), whether or not this request was scored; set by
    recording."""
    session: str | None = None
    """x-router-session: `new` or `pinned` for a turn of a pinned conversation (router/stages/sessions.py)."""
    passed: bool = False
    """A Responses answer passed through as the target wrote it (router/stages/answering.py's Answer)."""
    raw: bytes | None = None
    """A passed answer's body, byte for byte."""

    def headers(self) -> dict[str, str]:
        headers = {
            "x-router-request-id": self.request_id,
            "x-router-decision": self.decision.outcome,
            "x-router-target": self.decision.target or "none",
            "x-router-rule": self.decision.rule,
            "x-router-decision-kept": "true" if self.decision_kept else "false",
        }
        if self.decision.confidence is not None:
            headers["x-router-confidence"] = f"{self.decision.confidence:.4f}"
        if self.decision.confidences is not None:
            listed = self.decision.confidences.items()
            headers["x-router-confidences"] = ",".join(f"{name}={value:.4f}" for name, value in listed)
        if self.task is not None:
            headers["x-router-task"] = self.task
        if self.scorer is not None:
            headers["x-router-scorer"] = self.scorer
        if self.fallback is not None:
            headers["x-router-fallback"] = self.fallback
        if self.session is not None:
            headers["x-router-session"] = self.session
        return headers


class Shaping:
    def __init__(self, policy: Policy) -> None:
        self.policy = policy

    def streams(self, request: ChatCompletionRequest, decision: Decision) -> bool:
        """Whether the target's answer reaches the client as it is written."""
        if not request.stream or self.policy.failure_aware:
            return False
        return self._prefix(request, decision) is not None

    def shape(self, request: ChatCompletionRequest, request_id: str, answer: Answer) -> Routed:
        decision, fallback = answer.decision, answer.fallback
        if answer.passed:  # the client gets it as the target wrote it: a hedge is in the headers alone
            body, chunks, raw = answer.body, answer.chunks, answer.raw
            return Routed(request_id, decision, body, chunks, fallback, passed=True, raw=raw)
        if answer.chunks is not None:
            prefix = self._prefix(request, decision)
            chunks = Prefixed(answer.chunks, prefix) if prefix else answer.chunks
            return Routed(request_id, decision, chunks=chunks, fallback=fallback)
        chosen = action(decision.action)
        if answer.body is None:  # no target answered: the action's own words (a refusal)
            body = completions.completion(request_id, "router", chosen.shape("", decision), "stop")
        elif self._shapes_text(request, decision) and not completions.calls_tools(answer.body):
            text = chosen.shape(completions.content_of(answer.body), decision)
            body = completions.with_content(answer.body, text)
        else:
            body = answer.body
        if self.policy.failure_aware:
            body = completions.failure_aware(body, decision, stated=self._answerer(decision))
        if request.stream:
            chunks = replay(completions.stream_chunks(body, request.include_usage))
            return Routed(request_id, decision, chunks=chunks, fallback=fallback)
        return Routed(request_id, decision, body=body, fallback=fallback)

    def _prefix(self, request: ChatCompletionRequest, decision: Decision) -> str | None:
        """What is said before the answer's first token; None: the answer must be whole to be shaped."""
        if not self._shapes_text(request, decision):
            return ""
        return action(decision.action).stream_prefix(decision)

    def _shapes_text(self, request: ChatCompletionRequest, decision: Decision) -> bool:
        # An answerer's JSON states its own doubt; a client's parser must get the answer as written.
        return not self._answerer(decision) and not request.structured

    def _answerer(self, decision: Decision) -> bool:
        target = self.policy.targets.get(decision.target or "")
        return isinstance(target, LocalTarget) and target.answerer is not None


class Prefixed:
    """A stream with `prefix` said before the answer: in its first chunk that carries content, or, if none
    does before the stream ends (an empty answer), in a chunk of its own before the end."""

    def __init__(self, chunks: Chunks, prefix: str) -> None:
        self.chunks, self.prefix = chunks, prefix
        self._iterator = self._prefixed()

    def __aiter__(self) -> AsyncIterator[Completion]:
        return self._iterator

    async def aclose(self) -> None:
        await self._iterator.aclose()
        await self.chunks.aclose()

    async def _prefixed(self) -> AsyncGenerator[Completion]:
        pending = True
        async for chunk in self.chunks:
            if pending:
                first = (chunk.get("choices") or [{}])[0]
                delta = first.get("delta") or {}
                if delta.get("content"):
                    chunk = completions.with_delta(
                        chunk, {**delta, "content": self.prefix + delta["content"]}
                    )
                    pending = False
                elif first.get("finish_reason") or not chunk.get("choices"):
                    head = completions.chunk_head(chunk["id"], chunk["created"], chunk["model"])
                    yield completions.chunk(head, {"content": self.prefix})
                    pending = False
            yield chunk
