"""Actions: what a rule does once it matches (policies/actions/base.py has the contract).

A new action is one module in this folder that subclasses `Action` with `name="..."`, the `action:` of a
policy rule: every module here is imported below, so it registers.
"""

import importlib
import pkgutil

from policies.actions.base import ACTIONS, Action, Decision, action, known_actions, registered_action

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["ACTIONS", "Action", "Decision", "action", "known_actions", "registered_action"]
