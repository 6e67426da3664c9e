"""Read a policy file and report every problem as `file:line: field: message`."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import yaml
from pydantic import ValidationError

from policies.checks import Location, Problem
from policies.schema import LocalTarget, Policy

DEFAULT_POLICY_PATH = Path(__file__).with_name("default.yaml")
Check = Callable[[Policy], Iterable[Problem]]
CHECKS: list[Check] = []


def policy_check(check: Check) -> Check:
    """Register a check of a policy that only a layer above policies can make (scorers/checks.py: the scorer
    method and its folder), so that policies imports none of those layers and `load_policy` still reports
    every mistake with its file, line and field. It runs on every policy that passes schema validation (its
    relative paths resolved), after the policy's own checks."""
    CHECKS.append(check)
    return check


def registered_problems(policy: Policy) -> Iterator[Problem]:
    for check in CHECKS:
        yield from check(policy)


class PolicyError(ValueError):
    """One line per problem, each naming file, line and field."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def _locate(node: yaml.Node, location: Location) -> tuple[int, str]:
    """The line (1-based) of the deepest YAML node the location reaches, and the field as the file spells it.

    Pydantic locations may hold steps the file does not (a union's tag): those are left out, except a
    last step, which names a missing field.
    """
    line, shown = node.start_mark.line + 1, []
    for depth, step in enumerate(location):
        child: yaml.Node | None = None
        if isinstance(node, yaml.MappingNode):
            pair = next(((k, v) for k, v in node.value if k.value == str(step)), None)
            if pair is not None:
                line, child = pair[0].start_mark.line + 1, pair[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(step, int) and step < len(node.value):
            child = node.value[step]
            line = child.start_mark.line + 1
        if child is not None:
            node = child
        if child is not None or depth == len(location) - 1:
            shown.append(str(step))
    return line, ".".join(shown) or "(top level)"


def _resolve_paths(policy: Policy, base: Path) -> Policy:
    """Relative adapter, calibrator and answerer paths are relative to the policy file, so they travel
    together."""
    update = {}
    for field in ("adapter", "calibrator"):
        value = getattr(policy.scorer, field)
        if value is not None and not Path(value).expanduser().is_absolute():
            update[field] = str((base / value).resolve())
    targets = {
        name: target.model_copy(
            update={"answerer": str((base / Path(target.answerer).expanduser()).resolve())}
        )
        for name, target in policy.targets.items()
        if isinstance(target, LocalTarget) and target.answerer is not None
    }
    if not update and not targets:
        return policy
    scorer = policy.scorer.model_copy(update=update)
    return policy.model_copy(update={"scorer": scorer, "targets": {**policy.targets, **targets}})


def load_policy(path: Path | str) -> Policy:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError([f"{path}: cannot read: {exc.strerror}"]) from exc
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f"{mark.line + 1}" if mark is not None else "?"
        raise PolicyError([f"{path}:{line}: (yaml): {getattr(exc, 'problem', None) or exc}"]) from exc
    if root is None or not isinstance(data, dict):
        raise PolicyError([f"{path}:1: (top level): a policy must be a YAML mapping"])

    try:
        policy = Policy.model_validate(data)
    except ValidationError as exc:
        problems = [(tuple(e["loc"]), e["msg"]) for e in exc.errors()]
    else:
        policy = _resolve_paths(policy, path.parent)
        problems = [*policy.problems(), *registered_problems(policy)]
        adapter, calibrator = policy.scorer.adapter, policy.scorer.calibrator
        if adapter is not None and not Path(adapter).is_dir():
            problems.append((("scorer", "adapter"), f"no such folder: {adapter}"))
        if calibrator is not None and not Path(calibrator).is_file():
            problems.append((("scorer", "calibrator"), f"no such file: {calibrator}"))
        for name, target in policy.targets.items():
            answerer = getattr(target, "answerer", None)
            if answerer is not None and not (Path(answerer) / "adapter_config.json").is_file():
                problems.append((("targets", name, "answerer"), f"no adapter folder: {answerer}"))
    if problems:
        located = sorted(((*_locate(root, loc), msg) for loc, msg in problems), key=lambda p: p[0])
        raise PolicyError([f"{path}:{line}: {field}: {msg}" for line, field, msg in located])
    return policy
