"""Tensor naming shared by the Recorder, the readers and the rules.

Reductions are stored as tensors of their own, named as SageMaker Debugger names them
(``smdebug/reductions/[abs_]<reduction>/<tensor>``) for the reductions it knows, and under
``modelrules/reductions/<reduction>/<tensor>`` for ours (per-unit positive fraction, zero
fraction, histogram, 5th/95th percentile).
"""

from __future__ import annotations

import re

import numpy as np

#: characters no tensor or collection name holds: C0 and C1 controls (a newline, an escape)
#: and lone surrogates. A run comes from a pull request and its names reach CI logs, where a
#: newline could start a line of the CI system's own commands (GitHub's ``::...::``) and an
#: escape sequence rewrite what the log shows.
UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def unprintable_name(names: list[str]) -> str | None:
    """The first of ``names`` holding a character :data:`UNPRINTABLE` matches, or None
    (one search over all of them)."""
    if not UNPRINTABLE.search("".join(names)):
        return None
    return next(n for n in names if UNPRINTABLE.search(n))


def check_printable(names: list[str], what: str = "tensor") -> None:
    """ValueError for a (``what``: tensor or collection) name holding an :data:`UNPRINTABLE`
    character: what writers refuse, since readers refuse the run that holds it."""
    bad = unprintable_name(names)
    if bad is not None:
        raise ValueError(
            f"{what} name {bad!r} holds a control character or a lone surrogate, which no "
            "reader accepts"
        )


def printable(text: str) -> str:
    """``text`` with every :data:`UNPRINTABLE` character written as its escape (``\\x1b``):
    for text a run supplies (class names) shown in messages and logs."""
    if not UNPRINTABLE.search(text):
        return text
    return UNPRINTABLE.sub(
        lambda m: m.group().encode("unicode_escape", "backslashreplace").decode(), text
    )


SMDEBUG_REDUCTIONS = ("min", "max", "mean", "std", "variance", "sum", "prod", "l1", "l2")
OUR_REDUCTIONS = (
    "positive_fraction",
    "sample_channel_mean",
    "zero_fraction",
    "histogram",
    "nan_count",
    "inf_count",
    "p05",
    "p95",
    "numel",
)
HISTOGRAM_BINS = 32


def relu_tensor_base(path: str) -> str:
    """``layer1.0.relu`` -> ``layer1.0.relu``; ``features.1`` -> ``features.1.relu``; root -> relu.

    Every ReLU's tensors end up named ``<...>relu_output_<k>`` so that smdebug's regex
    ``.*relu_output`` finds them, whatever the module is called.
    """
    return activation_tensor_base(path, "relu")


def activation_tensor_base(path: str, kind: str) -> str:
    """The base name of an activation module's tensors: its path, with ``.<kind>`` added
    unless the path already ends in it (``encoder.act`` -> ``encoder.act.tanh``), so that
    smdebug's regexes (``.*tanh_input``, ``.*sigmoid_input``) find them."""
    if not path:
        return kind
    if path.rsplit(".", 1)[-1] == kind:
        return path
    return f"{path}.{kind}"


def split_abs(reduction: str, abs: bool = False) -> tuple[str, bool]:
    """``("abs_mean", False)`` -> ``("mean", True)``: the spelling of a stored reduction's name
    (and of messages that list them) as SageMaker Debugger's (name, abs) pair."""
    if not abs and reduction.startswith("abs_") and reduction[4:] in SMDEBUG_REDUCTIONS:
        return reduction[4:], True
    return reduction, abs


def reduction_tensor_name(tensor: str, reduction: str, abs: bool = False) -> str:
    """Where a reduction of ``tensor`` is stored."""
    if reduction in SMDEBUG_REDUCTIONS:
        return f"smdebug/reductions/{'abs_' if abs else ''}{reduction}/{tensor}"
    if reduction in OUR_REDUCTIONS:
        return f"modelrules/reductions/{reduction}/{tensor}"
    raise ValueError(
        f"unknown reduction {reduction!r}: expected one of {SMDEBUG_REDUCTIONS + OUR_REDUCTIONS}"
    )


def parse_reduction_name(name: str) -> tuple[str, str, bool] | None:
    """(tensor, reduction, abs) for a reduction tensor's name, else None."""
    for prefix in ("smdebug/reductions/", "modelrules/reductions/"):
        if name.startswith(prefix):
            red, _, tensor = name[len(prefix) :].partition("/")
            absolute = red.startswith("abs_")
            return tensor, red[4:] if absolute else red, absolute
    return None


def is_reduction(name: str) -> bool:
    return parse_reduction_name(name) is not None


def _sample_channel_mean(xf: np.ndarray) -> np.ndarray:
    if xf.ndim == 0:
        return xf.reshape(1, 1)
    n = xf.shape[0]
    c = xf.shape[1] if xf.ndim >= 2 else 1
    if xf.size == 0:
        return np.full((n, c), np.nan)
    return xf.reshape(n, c, -1).mean(axis=2)


def compute_reduction(value: np.ndarray, reduction: str, abs: bool = False) -> np.ndarray:
    """A reduction of a full value, exactly as the Recorder computes it on the device.

    ``positive_fraction``: for a batch (first axis = samples), per unit the fraction of
    samples in which it is > 0 (what DeadRelu needs). A complex value is reduced as its
    magnitudes ``|z|``: its l2 and l1 are the true norms. ``sample_channel_mean``: for a batch
    (samples x channels x ...), the mean of each sample's channel, shape (samples, channels)
    (what CheckInputImages needs; a 0-d value is one sample of one channel, a 1-d batch has
    one channel). ``histogram``: counts in
    HISTOGRAM_BINS equal bins between min and max, followed by min and max.
    """
    x = np.asarray(value)
    if abs or np.iscomplexobj(x):  # a complex value: its magnitudes (the true norms)
        x = np.abs(x)
    if reduction == "positive_fraction":
        if x.ndim == 0:
            return np.asarray(float(x > 0), dtype=np.float32)
        return (x > 0).reshape(x.shape[0], -1).mean(axis=0).astype(np.float32)
    xf = x.astype(np.float64)
    if reduction == "sample_channel_mean":
        return _sample_channel_mean(xf)
    if reduction == "min":
        return np.asarray(xf.min() if xf.size else np.nan)
    if reduction == "max":
        return np.asarray(xf.max() if xf.size else np.nan)
    if reduction == "mean":
        return np.asarray(xf.mean() if xf.size else np.nan)
    if reduction == "std":
        return np.asarray(xf.std() if xf.size else np.nan)
    if reduction == "variance":
        return np.asarray(xf.var() if xf.size else np.nan)
    if reduction == "sum":
        return np.asarray(xf.sum())
    if reduction == "prod":
        return np.asarray(xf.prod())
    if reduction == "l1":
        return np.asarray(np.abs(xf).sum())
    if reduction == "l2":
        return np.asarray(np.sqrt((xf * xf).sum()))
    if reduction == "zero_fraction":
        return np.asarray((x == 0).mean() if x.size else np.nan)
    if reduction == "nan_count":
        return np.asarray(np.isnan(xf).sum(), dtype=np.int64)
    if reduction == "inf_count":
        return np.asarray(np.isinf(xf).sum(), dtype=np.int64)
    if reduction in ("p05", "p95"):
        q = 5 if reduction == "p05" else 95
        return np.asarray(np.percentile(xf, q) if xf.size else np.nan)
    if reduction == "numel":
        return np.asarray(x.size, dtype=np.int64)
    if reduction == "histogram":
        finite = xf[np.isfinite(xf)]
        if finite.size == 0:
            return np.zeros(HISTOGRAM_BINS + 2)
        lo, hi = float(finite.min()), float(finite.max())
        counts, _ = np.histogram(finite, bins=HISTOGRAM_BINS, range=(lo, hi if hi > lo else lo + 1))
        return np.concatenate([counts.astype(np.float64), [lo, hi]])
    raise ValueError(
        f"unknown reduction {reduction!r}: expected one of {SMDEBUG_REDUCTIONS + OUR_REDUCTIONS}"
    )
