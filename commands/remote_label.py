"""Label QA records with a policy's litellm target: any provider litellm reaches, an OpenAI-compatible
server included. Greedy answers only (temperature 0; no logprobs, so no N-Prob, and no samples), a bounded
number of requests at once, written through train/label.py's batch loop: whole lines, synced batch by
batch, resumed by id.

The calls go through router/targets/litellm.py's LiteLLMUpstream, so labelling retries and classifies failures
as the router does (within the target's timeout_s, at most num_retries extra attempts, only where another
attempt can help). A failure it gives up on stops the run with one line (`RemoteLabelError`): a row is never
written with a wrong label, and rows written before it stay. It joins train/'s labelling to router/'s
targets, so it sits above both, beside the command that runs it. The judge grader (commands/judge.py)
asks its judge through the same labeller (`RemoteLabeller.ask`, `bounded`, `label_on_one_loop`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from policies import LiteLLMTarget
from train.data import QARecord, prompt
from train.label import Grading, write_labels

# litellm fetches its model cost map from the internet at import unless told otherwise; we run offline.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Answered:
    """A target's reply, and what it cost."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    cost: float


class RemoteLabelError(Exception):
    """One line for the user: the target, where it is, and what went wrong."""


class PolicyTargetError(Exception):
    """The policy or the target named in it cannot label: one line per problem, for the user."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


def labeller_for(
    policy: Path,
    target: str | None,
    max_new_tokens: int,
    concurrency: int,
    flags: tuple[str, str] = ("--policy", "--target"),
    local_hint: str = "a local model is --model",
) -> RemoteLabeller:
    """The labeller for the litellm target `target` of the policy file `policy`; `flags` name the options
    that gave them, `local_hint` what to do instead with a local target, as the one-line errors say."""
    from policies import PolicyError, load_policy

    policy_flag, target_flag = flags
    try:
        loaded = load_policy(policy)
    except PolicyError as exc:
        raise PolicyTargetError(exc.problems) from None
    remote = sorted(name for name, t in loaded.targets.items() if isinstance(t, LiteLLMTarget))
    choices = f"its litellm targets: {', '.join(remote)}" if remote else "it has no litellm target"
    if target is None:
        raise PolicyTargetError([f"error: {policy_flag} {policy} needs {target_flag}; {choices}"])
    chosen = loaded.targets.get(target)
    if chosen is None:
        raise PolicyTargetError([f"error: {policy}: no target '{target}'; {choices}"])
    if not isinstance(chosen, LiteLLMTarget):
        kind = f"target '{target}' is {chosen.kind}, not litellm ({local_hint})"
        raise PolicyTargetError([f"error: {policy}: {kind}; {choices}"])
    try:
        return RemoteLabeller(target, chosen, max_new_tokens, concurrency)
    except ValueError as exc:
        raise PolicyTargetError([f"error: {policy}: {exc}"]) from None


@contextmanager
def quiet_upstream_log() -> Iterator[None]:
    """LiteLLMUpstream logs each failed attempt as a warning; labelling says a failure in one line instead."""
    logger = logging.getLogger("router")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


class RemoteLabeller:
    def __init__(self, name: str, target: LiteLLMTarget, max_new_tokens: int, concurrency: int) -> None:
        from router.targets.litellm import LiteLLMUpstream  # imports litellm: slow

        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.name, self.target = name, target
        self.max_new_tokens, self.concurrency = max_new_tokens, concurrency
        self._upstream = LiteLLMUpstream(name, target)

    @property
    def where(self) -> str:
        """`model at api_base`, or the model alone for a provider litellm knows the address of."""
        base = f" at {self.target.api_base}" if self.target.api_base else ""
        return f"{self.target.model}{base}"

    async def label_batch(self, records: list[QARecord], grading: Grading) -> list[dict[str, Any]]:
        """The batch's rows, in its order, `concurrency` requests at a time."""
        return await bounded(records, self.concurrency, lambda record: self._label(record, grading))

    async def ask(self, messages: list[dict[str, str]]) -> Answered:
        """The target's greedy reply to `messages`, at most `max_new_tokens` long (lowered to the target's
        max_tokens where it has one); a failure it gives up on is a RemoteLabelError."""
        from router.errors import APIError
        from router.schemas import ChatCompletionRequest

        request = ChatCompletionRequest.model_validate(
            {"model": self.name, "messages": messages, "temperature": 0.0, "max_tokens": self.max_new_tokens}
        )
        try:
            body = await self._upstream.complete(request)
        except APIError as exc:
            raise RemoteLabelError(self._describe(exc)) from None
        text = (body["choices"][0].get("message") or {}).get("content") or ""
        usage = body.get("usage") or {}
        prompt_tokens = int(usage.get("prompt_tokens") or 0)
        completion_tokens = int(usage.get("completion_tokens") or 0)
        cost = self._upstream.cost(prompt_tokens, completion_tokens)
        return Answered(text, prompt_tokens, completion_tokens, cost)

    async def _label(self, record: QARecord, grading: Grading) -> dict[str, Any]:
        answered = await self.ask(prompt(record))
        return {
            **record.model_dump(exclude_none=True),
            "greedy": answered.text,
            "nprob": None,  # no logprobs from a remote target
            "samples": [],
            "consistency": None,
            "sample_accuracy": None,
            "model": self.target.model,
            **grading.fields(answered.text, record),
            "prompt_tokens": answered.prompt_tokens,
            "completion_tokens": answered.completion_tokens,
            "cost": answered.cost,
        }

    def _describe(self, error: Exception) -> str:
        """The one line for a failure LiteLLMUpstream gave up on, from what litellm raised under it."""
        from router.targets.litellm_errors import classify

        cause = error.__cause__
        head = f"target '{self.name}' ({self.where})"
        if cause is None:  # refused before any call: a missing API key
            said = str(error).removeprefix(f"target '{self.name}' ").removeprefix("has ")
            return f"{head}: {_scrubbed(said, self.target)}"
        failure = classify(cause)
        kind, status = failure.kind, failure.status
        detail = _scrubbed(failure.detail or _innermost(cause), self.target)
        said = f": {detail}" if detail else ""
        if kind == "connection":
            what = f"cannot connect{said}"
        elif kind == "timeout":
            what = f"no answer within timeout_s ({self.target.timeout_s:g} s)"
        elif kind == "auth":
            key = f"the key in ${self.target.api_key_env}" if self.target.api_key_env else "the key"
            what = f"{key} was refused (HTTP {status}){said}"
        elif kind == "not_found":
            what = f"no such model or endpoint (HTTP {status}){said}"
        elif kind == "rate_limit":
            what = f"rate-limited (HTTP 429) beyond its retries{said}"
        elif kind == "server":
            what = f"server error (HTTP {status}) beyond its retries{said}"
        elif kind == "bad_request":
            what = f"it rejected the request (HTTP {status}){said}"
        elif kind == "malformed":
            what = f"its answer is not a chat completion{said}"
        else:
            what = f"{f'HTTP {status}' if status else 'failed'}{said}"
        return f"{head}: {what}"


async def bounded(items: Sequence[T], concurrency: int, work: Callable[[T], Awaitable[R]]) -> list[R]:
    """`work` on every item, `concurrency` at a time; the results in the items' order. The first failure
    starts no further work and is raised once the work in flight has finished: cancelling it would cut
    calls off mid-way (litellm then leaves a coroutine of its own never awaited, which Python warns about)."""
    gate = asyncio.Semaphore(concurrency)
    failures: list[Exception] = []

    async def one(item: T) -> R | None:
        async with gate:
            if failures:
                return None
            try:
                return await work(item)
            except Exception as exc:
                failures.append(exc)  # before the gate opens for the next one
                return None

    results = await asyncio.gather(*(one(item) for item in items))
    if failures:
        raise failures[0]
    return [result for result in results if result is not None]


AsyncLabeller = Callable[[list[QARecord]], Coroutine[Any, Any, list[dict[str, Any]]]]
"""One labelled row per record of a batch, in the batch's order, on the run's event loop."""


def label_on_one_loop(
    label: AsyncLabeller,
    records: Iterable[QARecord],
    out: Path,
    batch_size: int,
    progress: Callable[[int], None] = lambda _: None,
) -> int:
    """Label every record whose id is not in `out` yet through train/label.py's `write_labels`; returns how
    many were labelled now. One event loop for the whole run: litellm keeps its HTTP clients per loop, so a
    loop per batch would reconnect each time (and trip over clients bound to a closed loop)."""
    with asyncio.Runner() as runner:
        return write_labels(lambda batch: runner.run(label(batch)), records, out, batch_size, progress)


def _innermost(exc: BaseException) -> str:
    """The deepest cause's words: for a connection failure, the socket's (`Connection refused`)."""
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return str(exc)


def _scrubbed(text: str, target: LiteLLMTarget, limit: int = 300) -> str:
    """One line, never the target's key, and not at any length."""
    key = os.environ.get(target.api_key_env) if target.api_key_env else None
    if key:
        text = text.replace(key, "***")
    text = re.sub(r"\s+", " ", text).strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."
