"""Labels that are no class: which label values are left out, and the line that names them.

A label the model cannot predict (PyTorch's ignore_index -100, a -1 "unknown", 255 in
segmentation masks, or an id at or past the logits' width) is no class. The classification
rules and the report's plots both leave such labels out and name them with
:func:`left_out_note`, so a rule's explanation and a plot's note read the same.
"""

from __future__ import annotations

import numpy as np


def class_mask(values: np.ndarray, n: int | None) -> np.ndarray:
    """Mask of the values that are classes 0..n-1 (any value >= 0 when ``n`` is None)."""
    return values >= 0 if n is None else (values >= 0) & (values < n)


def value_counts(values: np.ndarray) -> dict[int, int]:
    """{value: how many times} of an integer array."""
    out, counts = np.unique(values, return_counts=True)
    return {int(v): int(c) for v, c in zip(out, counts)}


def in_range(values: np.ndarray, n: int | None) -> tuple[np.ndarray, dict[int, int]]:
    """(mask of the values that are classes 0..n-1, or >= 0 when n is None; {value left out:
    how many times})."""
    ok = class_mask(values, n)
    return ok, value_counts(values[~ok])


def left_out_note(
    outside: dict[int, int], n: int | None, what: str = "label", where: str = "", prefix: str = ""
) -> str:
    """One line naming the values left out, how many of each, e.g. "6 labels outside classes
    0-4 left out: -100 ×3, 7 ×3"; "" when none were."""
    if not outside:
        return ""
    total = sum(outside.values())
    span = f"outside classes 0-{n - 1}" if n else "below 0"
    items = sorted(outside.items())
    shown = ", ".join(f"{v} ×{c}" for v, c in items[:8])
    more = f" and {len(items) - 8} more values" if len(items) > 8 else ""
    plural = "" if total == 1 else "s"
    return f"{prefix}{total} {what}{plural} {span} left out{where}: {shown}{more}"


def with_note(text: str, note: str) -> str:
    """``text`` with ``note`` added as its last clause (a sentence when text ends one)."""
    if not note:
        return text
    return f"{text} {note}." if text.endswith(".") else f"{text}; {note}"


__all__ = ["class_mask", "in_range", "left_out_note", "value_counts", "with_note"]
