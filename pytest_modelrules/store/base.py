"""What a run layout's backend gives the Run: committed steps and per-tensor records.

Each layout (native, SageMaker Debugger, in-memory) implements :class:`Backend`; the
:class:`~pytest_modelrules.store.run.Run` adds step semantics, modes and workers on top, the
same for all layouts.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class StepTable:
    """Committed steps, one row per (worker, global step): parallel arrays."""

    workers: np.ndarray  # int32 worker index (into Backend.workers())
    steps: np.ndarray  # int64 global steps
    modes: np.ndarray  # uint8 ModeKeys values
    mode_steps: np.ndarray  # int64
    wall_times: np.ndarray  # float64

    @classmethod
    def empty(cls) -> StepTable:
        return cls(
            np.zeros(0, np.int32),
            np.zeros(0, np.int64),
            np.zeros(0, np.uint8),
            np.zeros(0, np.int64),
            np.zeros(0, np.float64),
        )

    @classmethod
    def concat(cls, tables: list[StepTable]) -> StepTable:
        if not tables:
            return cls.empty()
        return cls(*(np.concatenate([getattr(t, f) for t in tables]) for f in _STEP_FIELDS))


_STEP_FIELDS = ("workers", "steps", "modes", "mode_steps", "wall_times")


class TensorRecords(ABC):
    """All saved values of one tensor: parallel arrays plus access to each value."""

    workers: np.ndarray  # int32
    steps: np.ndarray  # int64 global steps
    modes: np.ndarray  # uint8
    mode_steps: np.ndarray  # int64

    def __len__(self) -> int:
        return len(self.steps)

    @abstractmethod
    def value(self, i: int) -> np.ndarray:
        """The i-th record's array (read-only view or fresh array)."""

    def values(self, indices: np.ndarray) -> list[np.ndarray]:
        return [self.value(int(i)) for i in indices]

    def shapes(self, indices: np.ndarray) -> list[tuple[int, ...]]:
        return [self.value(int(i)).shape for i in indices]


@dataclass
class ArrayRecords(TensorRecords):
    """Records held as a list of arrays (in-memory runs, decoded SageMaker events)."""

    workers: np.ndarray
    steps: np.ndarray
    modes: np.ndarray
    mode_steps: np.ndarray
    arrays: list[np.ndarray] = field(default_factory=list)

    def value(self, i: int) -> np.ndarray:
        return self.arrays[i]


def merge_worker_collections(parts: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The collections of a run from each worker's (in rank order): tensor names united and
    sorted, other keys from the last worker that gives them; non-dict entries skipped."""
    merged: dict[str, dict[str, Any]] = {}
    for cols in parts:
        for cname, cinfo in cols.items():
            if not isinstance(cinfo, dict):
                continue
            entry = merged.setdefault(
                cname, {"name": cname, "tensor_names": [], "include_regex": []}
            )
            listed = cinfo.get("tensor_names")
            names = set(entry["tensor_names"]) | {
                n for n in (listed if isinstance(listed, list) else ()) if isinstance(n, str)
            }
            entry["tensor_names"] = sorted(names)
            for key, val in cinfo.items():
                if key not in ("tensor_names", "name"):
                    entry[key] = val
    return merged


class Backend(ABC):
    """One on-disk (or in-memory) layout of a run."""

    #: short name of the layout, e.g. "native" or "smdebug"
    layout: str = ""

    def __init__(self, location: str) -> None:
        self.location = location

    @abstractmethod
    def refresh(self) -> None:
        """Pick up steps and tensors written since the last call (runs still being written)."""

    @abstractmethod
    def workers(self) -> list[str]:
        """Worker names, ordered by rank."""

    @abstractmethod
    def num_workers(self) -> int:
        """How many workers must write a step before it counts as complete."""

    @abstractmethod
    def step_table(self) -> StepTable:
        """Every committed (worker, step)."""

    @abstractmethod
    def tensor_names(self) -> list[str]:
        """Every tensor name found so far."""

    @abstractmethod
    def tensor_records(self, name: str) -> TensorRecords:
        """The records of a tensor (KeyError when the run has no such tensor)."""

    def wall_times(self, rows: np.ndarray) -> np.ndarray:
        """Wall times of rows of :meth:`step_table` (seconds since the epoch, NaN unknown).

        The Run asks only when a wall time is wanted, so a layout that keeps them elsewhere
        (SageMaker Debugger: in the event files) reads them then, not when the run opens."""
        return self.step_table().wall_times[np.asarray(rows, np.int64)]

    def collections(self) -> dict[str, dict[str, Any]]:
        """Collection name -> {"tensor_names": [...], "include_regex": [...], ...}."""
        return {}

    def metadata(self) -> dict[str, Any]:
        """Whatever the training job stored (class names, recipe, ...)."""
        return {}

    @abstractmethod
    def has_ended(self) -> bool:
        """Every worker marked the end of training."""

    def end_info(self) -> dict[str, Any]:
        """What the end markers say (e.g. {"reason": ...} when a RuleMonitor stopped training)."""
        return {}
