"""Graders: is a model's answer right? train/graders/base.py has the contract; each module here registers
one grader, so importing the package registers them all."""

import importlib
import pkgutil

from train.graders.base import GRADERS, Grade, Grader, grader_for

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["GRADERS", "Grade", "Grader", "grader_for"]
