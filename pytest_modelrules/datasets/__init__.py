"""Synthetic GTSRB traffic signs and the GTSRB facts (names, counts, mirror pairs).

The facts import nothing; the generator (numpy) and loaders (torchvision) load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from .gtsrb_meta import CLASS_NAMES, MIRROR_PAIRS, NUM_CLASSES, TOTAL_TRAIN, TRAIN_COUNTS

_LAZY = {
    "SignsConfig": "synthetic",
    "class_counts": "synthetic",
    "generate_split": "synthetic",
    "write_gtsrb": "synthetic",
    "is_generated": "synthetic",
    "split_labels": "synthetic",
    "templates": "signs",
    "render": "signs",
    "Variation": "signs",
    "gtsrb_dataset": "loading",
    "gtsrb_root": "loading",
    "Preloaded": "loading",
    "dataset_targets": "loading",
}

__all__ = [
    "CLASS_NAMES",
    "MIRROR_PAIRS",
    "NUM_CLASSES",
    "TOTAL_TRAIN",
    "TRAIN_COUNTS",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'pytest_modelrules.datasets' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{mod}"), name)
    globals()[name] = value
    return value
