"""Recording a PyTorch training run: the Recorder and its collection / save configuration.

``Recorder`` is imported lazily (it needs torch); the configuration classes are plain Python.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .config import (
    DEFAULT_COLLECTION_NAMES,
    CollectionConfig,
    SaveConfig,
    SaveConfigMode,
    default_collections,
)

__all__ = [
    "DEFAULT_COLLECTION_NAMES",
    "CollectionConfig",
    "Recorder",
    "SaveConfig",
    "SaveConfigMode",
    "default_collections",
]


def __getattr__(name: str) -> Any:
    if name == "Recorder":
        value = importlib.import_module(".recorder", __name__).Recorder
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if TYPE_CHECKING:
    from .recorder import Recorder
