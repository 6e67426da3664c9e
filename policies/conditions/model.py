"""`model`: the model name the request asked for is one of these (the router's own, or a target's)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from policies.checks import Location
from policies.conditions.base import RequestField

if TYPE_CHECKING:
    from policies.views import PolicyView, RuleView


class Model(RequestField, name="model"):
    """A request for a listed model; every name must be one the policy serves."""

    @classmethod
    def problems(cls, policy: PolicyView, index: int, rule: RuleView) -> Iterator[tuple[Location, str]]:
        for j, name in enumerate(rule.when.model or []):
            if name not in policy.model_names:
                yield ("rules", index, "when", "model", j), f"'{name}' is not a model this policy serves"
