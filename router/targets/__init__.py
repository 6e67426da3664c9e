"""Targets: what answers a request once the policy has chosen (router/targets/base.py has the contract).

A new kind of target is one module in this folder that subclasses `Answerer` with `kind="name"`, the
`kind` of its policy entry: every module here is imported below, so it registers.
"""

import importlib
import pkgutil

from router.targets.base import (
    ANSWERERS,
    Answerer,
    Asked,
    Chunks,
    Embedded,
    LocalModelAccess,
    Responded,
    TargetFailed,
    build_answerer,
    check_fields,
    replay,
)

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "ANSWERERS",
    "Answerer",
    "Asked",
    "Chunks",
    "Embedded",
    "LocalModelAccess",
    "Responded",
    "TargetFailed",
    "build_answerer",
    "check_fields",
    "replay",
]
