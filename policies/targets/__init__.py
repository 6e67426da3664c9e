"""Target specs: what a policy's `targets:` entry of each kind takes (policies/targets/base.py has the
contract).

A new kind's spec is one module in this folder that subclasses `Target` (or `RemoteTarget`) with a
`kind: Literal["..."]` field: every module here is imported below, so it registers and policies accept it.
Its answerer, what calls it, is one module of router/targets/.
"""

import importlib
import pkgutil

from policies.targets.base import (
    TARGET_KINDS,
    Cooldown,
    Cost,
    RemoteTarget,
    Target,
    hold_targets,
    refresh_targets,
    target_union,
)
from policies.targets.litellm import LiteLLMTarget
from policies.targets.local import LocalTarget
from policies.targets.openai import OpenAITarget

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "TARGET_KINDS",
    "Cooldown",
    "Cost",
    "LiteLLMTarget",
    "LocalTarget",
    "OpenAITarget",
    "RemoteTarget",
    "Target",
    "hold_targets",
    "refresh_targets",
    "target_union",
]
