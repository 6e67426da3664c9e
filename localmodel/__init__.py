"""The in-process language model and where its weights come from.

`LocalModel` runs generation and every scorer on one copy of the weights; `catalog` fetches models from
the package registry. Depends on torch and transformers, never on router/, scorers/ or policies/.

Importing the package loads neither torch nor transformers: the names callers pass and get back
(localmodel/interface.py) are plain Python, and `LocalModel` is imported on first use, so `import scorers`
and `router policy validate` stay light.
"""

from typing import TYPE_CHECKING, Any

from localmodel.interface import Aborted, Draft, Message, Pooling, Precision

if TYPE_CHECKING:
    from localmodel.model import LocalModel

__all__ = ["Aborted", "Draft", "LocalModel", "Message", "Pooling", "Precision"]


def __getattr__(name: str) -> Any:
    if name == "LocalModel":
        from localmodel.model import LocalModel

        return LocalModel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
