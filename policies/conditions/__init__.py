"""Conditions: the `when:` of a rule (policies/conditions/base.py has the contract).

A new condition is one module in this folder that subclasses `Condition` with `name="..."` and declares
the `when:` fields it adds: every module here is imported below, so it registers and `When` has them.
"""

import importlib
import pkgutil

from policies.conditions.base import (
    CONDITIONS,
    Condition,
    Names,
    RequestField,
    When,
    hold_when,
    refresh_when,
    when_model,
)

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "CONDITIONS",
    "Condition",
    "Names",
    "RequestField",
    "When",
    "hold_when",
    "refresh_when",
    "when_model",
]
