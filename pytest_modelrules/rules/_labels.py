"""Classes from labels and logits, and the labels that are no class.

The class axis of class scores is axis 1, PyTorch's convention (CrossEntropyLoss takes logits
(N, C) or (N, C, d1, d2, ...) with labels (N) or (N, d1, d2, ...)): :func:`decode_classes`
turns one step's labels and predictions into class ids, flattened so that a segmentation
model's pixels are samples one by one, and refuses shapes that do not fit (naming the tensors,
the step and the shapes). The classification rules and the report's plots both decode with it.

A label the model cannot predict (PyTorch's ignore_index -100, a -1 "unknown", 255 in
segmentation masks, or an id at or past the logits' width) is no class. The classification
rules and the report's plots both leave such labels out and name them with
:func:`left_out_note`, so a rule's explanation and a plot's note read the same.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..exceptions import ClassAxisError

#: the class axis of class scores (N, C, d1, ...): PyTorch's; for (N, C) also the last axis
CLASS_AXIS = 1


def scores_width(scores: Any) -> int | None:
    """How many classes a batch of class scores holds (its axis 1); None for class ids (one
    axis) and for one score per sample (axis 1 of length 1)."""
    shape = np.shape(scores)
    return int(shape[CLASS_AXIS]) if len(shape) >= 2 and shape[CLASS_AXIS] > 1 else None


def are_probabilities(lab: np.ndarray, predictions: Any | None) -> bool:
    """Whether labels ``lab`` are class probabilities (CrossEntropyLoss's other target; one-hot
    labels included): rows of values in [0, 1] summing to 1 over axis 1, of the shape of the
    float class scores ``predictions`` or of that shape with predicted class ids (axis 1 left
    out); with no predictions known (None), 2-D labels (N, C) only. Any batch of the
    predictions will do: only the shape past axis 0 and the dtype are read."""
    if lab.ndim < 2:
        return False
    if predictions is None:
        fits = lab.ndim == 2
    else:
        per_sample = tuple(np.shape(predictions)[1:])
        floats = np.asarray(predictions).dtype.kind == "f"
        fits = (per_sample == lab.shape[1:] and floats) or per_sample == lab.shape[2:]
    return fits and _probability_rows(lab)


def _shape(shape: tuple[int, ...]) -> str:
    return str(tuple(int(d) for d in shape))


def _probability_rows(a: np.ndarray) -> bool:
    """Whether ``a`` (ndim >= 2) holds class probabilities along axis 1: values in [0, 1]
    summing to 1 (one-hot labels included)."""
    if a.ndim < 2 or a.shape[CLASS_AXIS] < 2 or a.size == 0 or a.dtype.kind not in "biuf":
        return False
    if a.min() < 0 or a.max() > 1:
        return False
    return bool(np.allclose(a.sum(axis=CLASS_AXIS, dtype=np.float64), 1.0, atol=1e-3))


def _without_ones(shape: tuple[int, ...]) -> tuple[int, ...]:
    """A shape without its axes of length 1 (they do not change the order of the values)."""
    return tuple(int(d) for d in shape if d != 1)


def decode_labels(labels: Any, predictions: Any | None = None) -> np.ndarray:
    """One step's labels as class ids, flattened: class probabilities (see
    :func:`decode_classes`; ``predictions``, any batch of the run's predictions, tells their
    shape) give their argmax over axis 1, class ids of any shape ((N,), (N, H, W)) are
    returned as they are."""
    a = np.asarray(labels)
    if are_probabilities(a, predictions):
        return a.argmax(axis=CLASS_AXIS).reshape(-1)
    return a.reshape(-1)


def decode_classes(
    labels: Any,
    predictions: Any,
    *,
    labels_name: str,
    predictions_name: str,
    where: str | Callable[[], str],
    argmax: bool = True,
) -> tuple[np.ndarray, np.ndarray, int | None]:
    """(labels, predicted classes as int64, the scores' width or None for class ids) of one
    step, both flattened in the same order (a segmentation model's pixels one by one).

    Labels of the float scores' shape (or with one more axis than predicted class ids) whose
    values lie in [0, 1] and sum to 1 over axis 1 are class probabilities (CrossEntropyLoss's
    other target; one-hot labels): their argmax over axis 1 is the class. Predictions are
    class scores when they hold one more axis than the (decoded) labels (or, with ``argmax``,
    more values); the predicted class is their argmax over axis 1 (axis 0 of a single
    sample's (C,) scores). Labels then must have the scores' shape without axis 1 (axes of
    length 1 aside):
    anything else, and scores with one value per sample (binary logits, as BCEWithLogitsLoss
    takes), is a :class:`~pytest_modelrules.exceptions.ClassAxisError` naming the tensors,
    ``where`` (e.g. "at global step 5", or a function giving it: asked only for an error) and
    the shapes. Otherwise predictions are class ids holding as many values as the labels.
    Labels are returned as stored (dtype unchanged)."""
    lab, pred = np.asarray(labels), np.asarray(predictions)

    def at() -> str:
        return where if isinstance(where, str) else where()

    if are_probabilities(lab, pred):
        lab = lab.argmax(axis=CLASS_AXIS)  # class probabilities: their class
    scores = pred.ndim == lab.ndim + 1 or (argmax and pred.ndim >= 1 and pred.size > lab.size)
    if not scores:
        if pred.size != lab.size:
            hint = "; argmax=True reads them as class scores" if pred.size > lab.size else ""
            raise ClassAxisError(
                f"{predictions_name} {at()} has shape {_shape(pred.shape)} but {labels_name} "
                f"has shape {_shape(np.shape(labels))}: class ids hold one value per label, "
                f"class scores one more axis (the class axis 1, as in PyTorch's (N, C, ...)){hint}"
            )
        flat = pred.reshape(-1)
        if flat.dtype.kind == "f" and not np.all(flat == np.round(flat)):
            raise ClassAxisError(
                f"{predictions_name} {at()} has shape {_shape(pred.shape)} and fractional "
                f"values, as {labels_name} has shape {_shape(np.shape(labels))}: no class ids, "
                "and no class axis to take argmax over (class scores are (N, C, ...) with "
                "labels (N, ...)); one score per sample (binary logits, as BCEWithLogitsLoss "
                "takes) names no class: save the predicted class ids instead"
            )
        return lab.reshape(-1), flat.astype(np.int64), None
    axis = CLASS_AXIS if pred.ndim >= 2 else 0
    width = int(pred.shape[axis])
    if width == 1:
        raise ClassAxisError(
            f"{predictions_name} {at()} has shape {_shape(pred.shape)}: one score per sample "
            f"on the class axis {axis} (binary logits, as BCEWithLogitsLoss takes) names no "
            "class to take argmax over; save CrossEntropyLoss's (N, C, ...) logits or the "
            "predicted class ids (the labels' shape) instead"
        )
    expected = pred.shape[:axis] + pred.shape[axis + 1 :]
    if _without_ones(lab.shape) != _without_ones(expected):
        raise ClassAxisError(
            f"{predictions_name} {at()} has shape {_shape(pred.shape)}, whose class axis is "
            f"{axis} (PyTorch's (N, C, d1, ...)): it needs labels of shape {_shape(expected)}, "
            f"but {labels_name} has shape {_shape(np.shape(labels))}"
        )
    return lab.reshape(-1), pred.argmax(axis=axis).reshape(-1).astype(np.int64), width


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


__all__ = [
    "CLASS_AXIS",
    "are_probabilities",
    "class_mask",
    "decode_classes",
    "decode_labels",
    "in_range",
    "left_out_note",
    "scores_width",
    "value_counts",
    "with_note",
]
