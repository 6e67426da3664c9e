"""What a policy's `scorer:` must satisfy that only the scorers know: a registered method, the adapter
folder it needs, and `scorer.targets` naming models the folder predicts. Registered with policies'
checks when `scorers` is imported, so `load_policy` reports them with file, line and field."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from policies import Policy, policy_check
from policies.checks import Problem
from scorers.base import SCORERS
from scorers.card import ScorerCard


@policy_check
def method_problems(policy: Policy) -> Iterator[Problem]:
    spec = policy.scorer
    scorer = SCORERS.get(spec.method)
    if scorer is None:
        # Worded as pydantic words a field validator's ValueError, like the schema's own errors.
        known = ", ".join(SCORERS)
        yield ("scorer", "method"), f"Value error, unknown scorer method '{spec.method}' (known: {known})"
    elif scorer.needs_adapter and spec.adapter is None:
        yield ("scorer", "adapter"), f"the {spec.method} scorer needs an adapter folder"


@policy_check
def mapping_problems(policy: Policy) -> Iterator[Problem]:
    """Each scorer.targets entry must name a model the scorer predicts (its folder's scorer.json)."""
    adapter = policy.scorer.adapter
    if not policy.scorer.targets or (adapter is not None and not Path(adapter).is_dir()):
        return  # nothing mapped, or no folder to read (load_policy reports that one)
    if adapter is None or not (Path(adapter) / "scorer.json").is_file():  # a scorer of the local model
        predicted = [policy.scorer.model]
    else:
        try:
            card = ScorerCard.load(Path(adapter))
        except (OSError, ValueError) as exc:
            yield ("scorer", "adapter"), str(exc).splitlines()[0]
            return
        predicted = [t.model for t in card.predicted(Path(adapter))]
    for name, model in policy.scorer.targets.items():
        if model not in predicted:
            yield (
                ("scorer", "targets", name),
                f"the scorer predicts no '{model}' (it predicts: {', '.join(predicted)})",
            )


@policy_check
def task_problems(policy: Policy) -> Iterator[Problem]:
    """A rule testing `task` needs a scorer with a task head (its folder's scorer.json names one)."""
    testing = [i for i, rule in enumerate(policy.rules) if rule.when.task is not None]
    adapter = policy.scorer.adapter
    if not testing or (adapter is not None and not Path(adapter).is_dir()):
        return  # no rule asks, or no folder to read (load_policy reports that one)
    try:
        card = ScorerCard.load(Path(adapter)) if adapter is not None else None
    except (OSError, ValueError):
        return  # mapping_problems reports an unreadable card
    if card is None or card.task_head is None:
        for index in testing:
            yield ("rules", index, "when", "task"), "the scorer has no task head, so no request has a task"
