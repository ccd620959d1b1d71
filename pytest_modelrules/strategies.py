"""Hypothesis strategies that generate training runs and the parts a rule reads.

Every strategy returns a small object holding the generated data *and the truth it was built
from* (a loss curve's plateau step, exact confusion counts, dead fraction per layer), so that
a property test can compare a rule's verdict with what the run really holds::

    from hypothesis import given
    from pytest_modelrules import strategies as mst

    @given(mst.training_runs(confused={(0, 1): 0.5}))
    def test_rule_counts(gen):
        result = MyRule().evaluate(gen.run)
        assert result.triggered == (gen.truth.pair_count(0, 1) > 10)

A strategy whose arguments promise a property (``loss_curves("decreasing", strict=True)``)
always delivers it; sizes are drawn by Hypothesis so that failing examples shrink to a few
steps, classes and samples. Arguments take a fixed value or a strategy to draw it from.
Values inside arrays come from a NumPy generator seeded by a drawn integer. This module
imports Hypothesis (the ``hypothesis`` extra); nothing else in the package imports it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument
from hypothesis.strategies import SearchStrategy

from .modes import parse_mode
from .store.memory import MemoryRun, MemoryRunBuilder
from .store.names import relu_tensor_base

__all__ = [
    "GRADIENT_SCALES",
    "LABELS",
    "LOGITS",
    "LOSS",
    "GeneratedRun",
    "LabelStream",
    "LossCurve",
    "ParamSeries",
    "Predictions",
    "ReluOutput",
    "RunTruth",
    "StepRow",
    "gradient_name",
    "label_streams",
    "loss_curves",
    "param_series",
    "predictions",
    "relu_name",
    "relu_outputs",
    "training_runs",
]

#: PyTorch / SageMaker Debugger tensor names of a classifier trained with CrossEntropyLoss
LOSS = "CrossEntropyLoss_output_0"
LOGITS = "CrossEntropyLoss_input_0"
LABELS = "CrossEntropyLoss_input_1"

#: mean |gradient| of the named gradient scales
GRADIENT_SCALES: dict[str, float] = {"vanishing": 1e-9, "normal": 1e-3, "exploding": 1e6}

#: ReLU modules of a ResNet, as their module paths (the first layers come first)
DEFAULT_RELU_LAYERS = ("relu", "layer1.0.relu", "layer1.1.relu", "layer2.0.relu", "layer2.1.relu")
#: parameters of a small classifier head: name -> shape (the class axis comes from the run)
DEFAULT_PARAMS = ("conv1.weight", "fc.weight", "fc.bias")

LOSS_SHAPES = ("decreasing", "plateau", "diverging", "noisy", "constant")
_FLOAT32_TINY = 1e-30


def relu_name(layer: str, call: int = 0) -> str:
    """The Recorder's name of the ``call``-th output of the ReLU module at path ``layer`` in a
    step: ``layer1.0.relu`` -> ``layer1.0.relu_output_0``, ``features.1`` ->
    ``features.1.relu_output_0`` (``.relu`` added where the path does not end in it)."""
    return f"{relu_tensor_base(layer)}_output_{call}"


def gradient_name(param: str) -> str:
    """``gradient/<param>``: SageMaker Debugger's name of a parameter's gradient."""
    return f"gradient/{param}"


def _v(draw: Any, x: Any) -> Any:
    """A fixed argument as is; a strategy argument drawn."""
    return draw(x) if isinstance(x, SearchStrategy) else x


def _ints(x: int | tuple[int, int] | SearchStrategy[int]) -> SearchStrategy[int] | int:
    """``(lo, hi)`` means "an integer in [lo, hi]"."""
    if isinstance(x, tuple):
        return st.integers(int(x[0]), int(x[1]))
    return x


def _floats(x: float | tuple[float, float] | SearchStrategy[float]) -> Any:
    """``(lo, hi)`` means "a float in [lo, hi]"."""
    if isinstance(x, tuple):
        return st.floats(float(x[0]), float(x[1]), allow_nan=False, allow_infinity=False)
    return x


def _rng(draw: Any) -> np.random.Generator:
    """A NumPy generator seeded by a drawn integer (shrinks to seed 0)."""
    return np.random.default_rng(draw(st.integers(0, 2**32 - 1), label="seed"))


class _Compact:
    """Hypothesis prints falsifying examples with ``_repr_pretty_``: keep them one line."""

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(repr(self))


def _short(values: np.ndarray, n: int = 6) -> str:
    vals = [f"{float(v):.7g}" for v in np.asarray(values).ravel()[:n]]
    more = (
        f", ... ({len(np.asarray(values).ravel())} values)" if np.asarray(values).size > n else ""
    )
    return "[" + ", ".join(vals) + more + "]"


# -- loss curves ----------------------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class LossCurve(_Compact):
    """A loss curve (float32 values, one per saved step) and the shape it was built with.

    Promises, for the finite values (every index outside ``nonfinite``):
    - "decreasing": ``values[i+1] < values[i]`` (``<=`` when not ``strict``);
    - "plateau": strictly decreasing up to ``change_index``, then within ``noise`` (relative)
      of ``values[change_index]`` (exactly equal when ``noise`` is 0);
    - "diverging": strictly decreasing up to ``change_index``, strictly increasing after it;
    - "noisy": ``|values[i] / trend[i] - 1| <= noise`` around a strictly decreasing trend;
    - "constant": all equal.
    ``nonfinite`` maps index -> the NaN/inf placed there; every other value is finite and > 0.
    """

    values: np.ndarray
    shape: str
    change_index: int | None = None
    strict: bool = True
    noise: float = 0.0
    trend: np.ndarray | None = None
    nonfinite: dict[int, float] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.values)

    @property
    def finite_mask(self) -> np.ndarray:
        return np.isfinite(self.values)

    def __repr__(self) -> str:
        extra = f", change_index={self.change_index}" if self.change_index is not None else ""
        if self.nonfinite:
            extra += f", nonfinite={self.nonfinite}"
        return f"LossCurve({self.shape!r}, {_short(self.values, 8)}{extra})"


def _decreasing(start: float, drops: Sequence[float], strict: bool) -> np.ndarray:
    vals = [start]
    for d in drops:
        vals.append(vals[-1] * (1.0 - d))
    out = np.asarray(vals, dtype=np.float32)
    for i in range(1, len(out)):
        if out[i] > out[i - 1] or (strict and out[i] == out[i - 1]):
            out[i] = np.nextafter(out[i - 1], np.float32(0)) if strict else out[i - 1]
    return out


def _increasing(start: np.float32, growths: Sequence[float]) -> np.ndarray:
    vals = [float(start)]
    for g in growths:
        vals.append(vals[-1] * (1.0 + g))
    out = np.asarray(vals, dtype=np.float32)
    for i in range(1, len(out)):
        if out[i] <= out[i - 1]:
            out[i] = np.nextafter(out[i - 1], np.float32(np.inf))
    return out


@st.composite
def loss_curves(
    draw: Any,
    shape: str | SearchStrategy[str] = "decreasing",
    *,
    length: int | tuple[int, int] | SearchStrategy[int] = (2, 20),
    start: float | tuple[float, float] | SearchStrategy[float] = (0.5, 10.0),
    max_drop: float = 0.2,
    strict: bool = True,
    change_index: int | SearchStrategy[int] | None = None,
    noise: float | tuple[float, float] | SearchStrategy[float] = 0.0,
    growth: tuple[float, float] = (0.01, 0.5),
    nonfinite: int | tuple[int, int] | SearchStrategy[int] = 0,
    nonfinite_values: Sequence[float] = (math.nan, math.inf),
) -> LossCurve:
    """A loss curve of ``shape`` ("decreasing", "plateau", "diverging", "noisy", "constant").

    ``max_drop`` bounds the relative drop per step (each drop is drawn in [0, max_drop]);
    ``change_index`` is where a plateau or divergence starts (drawn when None); ``noise`` is
    the relative noise of "noisy" curves and of the plateau; ``nonfinite`` values (NaN/inf
    from ``nonfinite_values``) replace that many values at drawn positions.
    """
    shape = _v(draw, shape)
    if shape not in LOSS_SHAPES:
        raise InvalidArgument(f"shape={shape!r}: expected one of {LOSS_SHAPES}")
    if not 0.0 <= max_drop < 1.0:
        raise InvalidArgument(f"max_drop={max_drop} must lie in [0, 1)")
    n = _v(draw, _ints(length))
    min_len = 2 if shape in ("plateau", "diverging") else 1
    if n < min_len:
        raise InvalidArgument(f"a {shape!r} curve needs at least {min_len} values, got {n}")
    s0 = _v(draw, _floats(start))
    if not s0 > 0:
        raise InvalidArgument(f"start={s0} must be > 0")
    if s0 * (1.0 - max_drop) ** n < _FLOAT32_TINY or s0 * (1.0 + growth[1]) ** n > 1e37:
        raise InvalidArgument(f"a curve of {n} values from {s0} leaves float32's range")
    noise_v = float(_v(draw, _floats(noise)))
    if not 0.0 <= noise_v < 1.0:
        raise InvalidArgument(f"noise={noise_v} must lie in [0, 1)")
    drop = st.floats(0.0, max_drop, allow_nan=False)
    change: int | None = None
    trend = None
    if shape == "decreasing":
        values = _decreasing(s0, draw(st.lists(drop, min_size=n - 1, max_size=n - 1)), strict)
    elif shape == "constant":
        values = np.full(n, s0, dtype=np.float32)
    elif shape in ("plateau", "diverging"):
        c = _v(draw, change_index)
        if c is None:
            c = draw(st.integers(0, n - 2), label="change_index")
        if not 0 <= c <= n - 2:
            raise InvalidArgument(f"change_index={c} must lie in [0, {n - 2}] for {n} values")
        change = int(c)
        head = _decreasing(s0, draw(st.lists(drop, min_size=change, max_size=change)), True)
        level = head[-1]
        if shape == "plateau":
            if noise_v == 0.0:
                tail = np.full(n - change - 1, level, dtype=np.float32)
            else:
                rng = _rng(draw)
                u = rng.uniform(-1.0, 1.0, n - change - 1)
                tail = (float(level) * (1.0 + noise_v * u)).astype(np.float32)
                tail = np.clip(tail, *_band(float(level), noise_v))
        else:
            g = st.floats(growth[0], growth[1], allow_nan=False)
            grows = draw(st.lists(g, min_size=n - change - 1, max_size=n - change - 1))
            tail = _increasing(level, grows)[1:]
        values = np.concatenate([head, tail]).astype(np.float32)
    else:  # noisy
        trend = _decreasing(s0, draw(st.lists(drop, min_size=n - 1, max_size=n - 1)), True)
        rng = _rng(draw)
        u = rng.uniform(-1.0, 1.0, n)
        values = (trend.astype(np.float64) * (1.0 + noise_v * u)).astype(np.float32)
        lo, hi = _band(trend.astype(np.float64), noise_v)
        values = np.clip(values, lo, hi).astype(np.float32)
    k = _v(draw, _ints(nonfinite))
    bad: dict[int, float] = {}
    if k:
        if k > n:
            raise InvalidArgument(f"nonfinite={k} is more than the {n} values")
        idx = draw(st.lists(st.integers(0, n - 1), min_size=k, max_size=k, unique=True))
        for i in sorted(idx):
            bad[i] = float(draw(st.sampled_from(list(nonfinite_values))))
            values[i] = bad[i]
    return LossCurve(values, shape, change, strict, noise_v, trend, bad)


def _band(center: Any, noise: float) -> tuple[Any, Any]:
    """float32 bounds that keep ``|x / center - 1| <= noise`` true after rounding."""
    c = np.asarray(center, dtype=np.float64)
    lo = np.asarray(c * (1.0 - noise), dtype=np.float32)
    hi = np.asarray(c * (1.0 + noise), dtype=np.float32)
    lo = np.where(
        lo.astype(np.float64) < c * (1.0 - noise), np.nextafter(lo, np.float32(np.inf)), lo
    )
    hi = np.where(hi.astype(np.float64) > c * (1.0 + noise), np.nextafter(hi, np.float32(0)), hi)
    return lo, hi


# -- labels and predictions -----------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class LabelStream(_Compact):
    """Labels (int64) split into batches, with the exact count of every class.

    Promise: ``counts.min() == min_count`` and ``counts.max() == round(ratio * min_count)``, so
    the generated ratio ``counts.max() / counts.min()`` lies within ``0.5 / min_count`` of the
    requested ``ratio``; every class has at least one label.
    """

    batches: list[np.ndarray]
    counts: np.ndarray
    requested_ratio: float

    @property
    def labels(self) -> np.ndarray:
        return np.concatenate(self.batches) if self.batches else np.zeros(0, np.int64)

    @property
    def num_classes(self) -> int:
        return len(self.counts)

    @property
    def min_count(self) -> int:
        return int(self.counts.min())

    @property
    def ratio(self) -> float:
        return float(self.counts.max() / self.counts.min())

    def __repr__(self) -> str:
        sizes = [len(b) for b in self.batches]
        return (
            f"LabelStream(counts={self.counts.tolist()}, ratio={self.ratio:.4g} "
            f"(asked {self.requested_ratio:.4g}), batch sizes={sizes})"
        )


def _draw_counts(draw: Any, num_classes: int, ratio: float, min_count: int) -> np.ndarray:
    if ratio < 1.0:
        raise InvalidArgument(f"imbalance ratio {ratio} must be >= 1 (max count / min count)")
    if num_classes < 1:
        raise InvalidArgument(f"num_classes={num_classes} must be >= 1")
    if num_classes == 1 and ratio != 1.0:
        raise InvalidArgument(f"one class cannot be imbalanced (ratio {ratio} asked)")
    m = int(min_count)
    big = max(m, math.floor(ratio * m + 0.5))
    if num_classes == 1:
        return np.array([m], dtype=np.int64)
    lo_cls = draw(st.integers(0, num_classes - 1), label="rarest class")
    hi_cls = draw(st.integers(0, num_classes - 2), label="commonest class")
    hi_cls += hi_cls >= lo_cls
    middle = draw(st.lists(st.integers(m, big), min_size=num_classes - 2, max_size=num_classes - 2))
    counts = np.empty(num_classes, dtype=np.int64)
    rest = iter(middle)
    for c in range(num_classes):
        counts[c] = m if c == lo_cls else big if c == hi_cls else next(rest)
    return counts


def _make_stream(
    draw: Any, num_classes: int, ratio: float, min_count: int, num_batches: int
) -> LabelStream:
    counts = _draw_counts(draw, num_classes, ratio, min_count)
    if counts.sum() < num_batches:
        raise InvalidArgument(f"{counts.sum()} labels cannot fill {num_batches} batches")
    labels = np.repeat(np.arange(num_classes, dtype=np.int64), counts)
    _rng(draw).shuffle(labels)
    batches = [b.astype(np.int64) for b in np.array_split(labels, num_batches)]
    return LabelStream(batches, counts, float(ratio))


@st.composite
def label_streams(
    draw: Any,
    *,
    num_classes: int | tuple[int, int] | SearchStrategy[int] = (2, 6),
    imbalance: float | tuple[float, float] | SearchStrategy[float] = 1.0,
    min_count: int | tuple[int, int] | SearchStrategy[int] = (1, 20),
    num_batches: int | tuple[int, int] | SearchStrategy[int] = (1, 5),
) -> LabelStream:
    """Labels of ``num_classes`` classes whose largest/smallest count is ``imbalance``.

    The rarest class has ``min_count`` labels, the commonest ``round(imbalance * min_count)``,
    the others a count in between; the shuffled labels are split into ``num_batches`` batches
    whose sizes differ by at most one (``min_count`` is raised to fill every batch).
    """
    c = _v(draw, _ints(num_classes))
    r = float(_v(draw, _floats(imbalance)))
    nb = _v(draw, _ints(num_batches))
    m = max(_v(draw, _ints(min_count)), -(-nb // max(c, 1)))
    return _make_stream(draw, c, r, m, nb)


@dataclass(frozen=True, repr=False)
class Predictions(_Compact):
    """Labels, logits (float32, samples x classes) and the exact confusion they hold.

    ``confusion[label, predicted]`` counts the samples; ``argmax(logits, 1)`` equals
    ``predicted`` with a unique maximum per row. Promises: for each requested pair
    ``(a, b): rate``, ``confusion[a, b] == round(rate * count of label a)``; no other sample is
    predicted across a requested pair (either direction) or a ``never_confuse`` pair; the
    number of correct predictions is ``round(accuracy * n)`` whenever that is reachable (the
    requested confusions leave enough samples and each wrong one has a class it may go to).
    """

    labels: np.ndarray
    predicted: np.ndarray
    logits: np.ndarray
    confusion: np.ndarray
    requested_accuracy: float
    confused: dict[tuple[int, int], float]
    never_confuse: frozenset[frozenset[int]] = frozenset()
    #: the requested accuracy was reachable, so ``correct == round(accuracy * n)``
    accuracy_reachable: bool = True

    @property
    def accuracy(self) -> float:
        n = len(self.labels)
        return float(np.trace(self.confusion) / n) if n else 1.0

    @property
    def correct(self) -> int:
        return int(np.trace(self.confusion))

    def pair_count(self, a: int, b: int, *, directed: bool = False) -> int:
        """Samples of label a predicted as b (plus b as a unless ``directed``)."""
        return _pair_count(self.confusion, a, b, directed)

    def __repr__(self) -> str:
        off = {
            (int(i), int(j)): int(self.confusion[i, j])
            for i, j in zip(*np.nonzero(self.confusion))
            if i != j
        }
        return (
            f"Predictions(n={len(self.labels)}, accuracy={self.accuracy:.4g} "
            f"(asked {self.requested_accuracy:.4g}), confusions={off})"
        )


def _pair_count(confusion: np.ndarray, a: int, b: int, directed: bool) -> int:
    c = len(confusion)
    if not (0 <= a < c and 0 <= b < c):
        return 0
    n = int(confusion[a, b])
    return n if directed else n + int(confusion[b, a])


def _check_confused(
    confused: Mapping[tuple[int, int], float], num_classes: int
) -> dict[tuple[int, int], float]:
    out: dict[tuple[int, int], float] = {}
    per_label: dict[int, float] = {}
    for (a, b), rate in confused.items():
        a, b, rate = int(a), int(b), float(rate)
        if a == b:
            raise InvalidArgument(f"confused pair ({a}, {b}): a class is not confused with itself")
        if not (0 <= a < num_classes and 0 <= b < num_classes):
            raise InvalidArgument(f"confused pair ({a}, {b}) outside the {num_classes} classes")
        if not 0.0 <= rate <= 1.0:
            raise InvalidArgument(f"confusion rate {rate} of ({a}, {b}) must lie in [0, 1]")
        per_label[a] = per_label.get(a, 0.0) + rate
        out[(a, b)] = rate
    for a, total in per_label.items():
        if total > 1.0 + 1e-12:
            raise InvalidArgument(f"confusion rates of label {a} add up to {total} > 1")
    return out


def _predict(
    rng: np.random.Generator,
    labels: np.ndarray,
    num_classes: int,
    accuracy: float,
    confused: dict[tuple[int, int], float],
    never: frozenset[frozenset[int]],
    margin: float,
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Predicted classes and float32 logits whose argmax is exactly the prediction."""
    n = len(labels)
    pred = labels.astype(np.int64).copy()
    free = np.ones(n, dtype=bool)
    for a in range(num_classes):
        idx = rng.permutation(np.nonzero(labels == a)[0])
        pos = 0
        for (pa, pb), rate in sorted(confused.items()):
            if pa != a:
                continue
            k = math.floor(rate * len(idx) + 0.5)
            chosen = idx[pos : pos + k]
            pred[chosen] = pb
            free[chosen] = False
            pos += k
    blocked = {frozenset(p) for p in confused} | set(never)
    allowed = {
        a: np.array(
            [b for b in range(num_classes) if b != a and frozenset((a, b)) not in blocked],
            dtype=np.int64,
        )
        for a in range(num_classes)
    }
    want_correct = math.floor(accuracy * n + 0.5)
    pool = rng.permutation(np.nonzero(free)[0])
    to_break = len(pool) - want_correct
    for i in pool:
        if to_break <= 0:
            break
        targets = allowed[int(labels[i])]
        if len(targets):
            pred[i] = targets[rng.integers(len(targets))]
            to_break -= 1
    logits = rng.normal(0.0, 1.0, (n, num_classes)).astype(np.float32)
    if n:
        top = logits.max(axis=1)
        logits[np.arange(n), pred] = top + np.float32(margin)
    return pred, logits, to_break == 0


def _confusion(labels: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    out = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(out, (labels.astype(np.int64), pred.astype(np.int64)), 1)
    return out


def _pairs(never_confuse: Iterable[tuple[int, int]]) -> frozenset[frozenset[int]]:
    return frozenset(frozenset((int(a), int(b))) for a, b in never_confuse)


@st.composite
def predictions(
    draw: Any,
    labels: np.ndarray | LabelStream | SearchStrategy[Any] | None = None,
    *,
    num_classes: int | None = None,
    accuracy: float | tuple[float, float] | SearchStrategy[float] = (0.0, 1.0),
    confused: Mapping[tuple[int, int], float] | SearchStrategy[Any] = {},  # noqa: B006
    never_confuse: Iterable[tuple[int, int]] = (),
    margin: float | tuple[float, float] | SearchStrategy[float] = (0.25, 4.0),
) -> Predictions:
    """Logits for ``labels`` (drawn from :func:`label_streams` when None) with a chosen
    ``accuracy`` and chosen directed confusions ``{(label, predicted): rate}``.

    ``margin`` is how far the predicted class's logit lies above the others.
    """
    lab = _v(draw, labels if labels is not None else label_streams())
    if isinstance(lab, LabelStream):
        num_classes = num_classes or lab.num_classes
        lab = lab.labels
    lab = np.asarray(lab, dtype=np.int64)
    c = num_classes or (int(lab.max()) + 1 if len(lab) else 1)
    conf = _check_confused(_v(draw, confused), c)
    acc = float(_v(draw, _floats(accuracy)))
    never = _pairs(never_confuse)
    rng = _rng(draw)
    pred, logits, ok = _predict(rng, lab, c, acc, conf, never, float(_v(draw, _floats(margin))))
    return Predictions(lab, pred, logits, _confusion(lab, pred, c), acc, conf, never, ok)


# -- activations, weights, gradients --------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class ReluOutput(_Compact):
    """One ReLU output batch: shape (batch, units) or (batch, channels, h, w).

    Promise: exactly ``dead_units`` units (channels for 4-D outputs) are 0 for every sample;
    every element of the other units is > 0 in at least ``ceil(active_min * batch)`` samples.
    Per element or per channel, the dead fraction is ``dead_fraction``.
    """

    array: np.ndarray
    dead_units: np.ndarray  # unit / channel indices
    requested_fraction: float

    @property
    def units(self) -> int:
        return int(self.array.shape[1])

    @property
    def dead_fraction(self) -> float:
        return len(self.dead_units) / self.units

    def __repr__(self) -> str:
        return (
            f"ReluOutput(shape={self.array.shape}, dead={self.dead_units.tolist()} "
            f"({self.dead_fraction:.4g}, asked {self.requested_fraction:.4g}))"
        )


def _dead_units(rng: np.random.Generator, units: int, fraction: float) -> np.ndarray:
    if not 0.0 <= fraction <= 1.0:
        raise InvalidArgument(f"dead fraction {fraction} must lie in [0, 1]")
    k = math.floor(fraction * units + 0.5)
    return np.sort(rng.choice(units, size=k, replace=False)).astype(np.int64)


def _relu_batch(
    rng: np.random.Generator,
    batch: int,
    unit_shape: tuple[int, ...],
    dead: np.ndarray,
    active_min: float,
) -> np.ndarray:
    size = int(np.prod(unit_shape))
    need = max(1, math.ceil(active_min * batch))
    active_counts = rng.integers(need, batch + 1, size)
    ranks = np.argsort(rng.random((batch, size)), axis=0).argsort(axis=0)
    active = ranks < active_counts[None, :]
    values = rng.uniform(0.05, 3.0, (batch, size)) * active
    out = values.reshape((batch, *unit_shape)).astype(np.float32)
    out[:, dead] = 0.0
    return out


@st.composite
def relu_outputs(
    draw: Any,
    dead_fraction: float | tuple[float, float] | SearchStrategy[float] = (0.0, 1.0),
    *,
    batch_size: int | tuple[int, int] | SearchStrategy[int] = (1, 16),
    units: int | tuple[int, int] | SearchStrategy[int] = (1, 32),
    spatial: tuple[int, int] | SearchStrategy[Any] | None = None,
    active_min: float = 0.5,
) -> ReluOutput:
    """A ReLU output whose dead units are ``round(dead_fraction * units)`` exactly.

    ``spatial=(h, w)`` gives a conv layer's (batch, channels, h, w) output with whole channels
    dead; alive elements are positive in at least ``active_min`` of the batch.
    """
    if not 0.0 < active_min <= 1.0:
        raise InvalidArgument(f"active_min={active_min} must lie in (0, 1]")
    frac = float(_v(draw, _floats(dead_fraction)))
    b = _v(draw, _ints(batch_size))
    u = _v(draw, _ints(units))
    hw = _v(draw, spatial)
    rng = _rng(draw)
    dead = _dead_units(rng, u, frac)
    shape = (u, *hw) if hw else (u,)
    return ReluOutput(_relu_batch(rng, b, shape, dead, active_min), dead, frac)


@dataclass(frozen=True, repr=False)
class ParamSeries(_Compact):
    """A parameter's weights and gradients over steps, with their exact statistics.

    Promises: ``mean(|gradient|)`` at every step is ``grad_scale`` within a relative 1e-5;
    with ``update_ratio == 0`` every weight equals the first exactly; otherwise
    ``norm(w[i+1] - w[i]) / norm(w[i])`` is ``update_ratio`` within a relative 1e-3 (float32).
    """

    name: str
    weights: list[np.ndarray]
    gradients: list[np.ndarray]
    grad_scale: float
    update_ratio: float

    @property
    def grad_mean_abs(self) -> list[float]:
        return [float(np.abs(g.astype(np.float64)).mean()) for g in self.gradients]

    @property
    def update_ratios(self) -> list[float]:
        out = []
        for a, b in zip(self.weights, self.weights[1:]):
            a64, b64 = a.astype(np.float64), b.astype(np.float64)
            out.append(float(np.linalg.norm(b64 - a64) / np.linalg.norm(a64)))
        return out

    def __repr__(self) -> str:
        return (
            f"ParamSeries({self.name!r}, shape={self.weights[0].shape}, steps={len(self.weights)}, "
            f"grad_scale={self.grad_scale:.3g}, update_ratio={self.update_ratio:.3g})"
        )


def _gradient(rng: np.random.Generator, shape: tuple[int, ...], scale: float) -> np.ndarray:
    u = rng.uniform(0.5, 1.5, shape) * rng.choice([-1.0, 1.0], shape)
    g = (u * (scale / np.abs(u).mean())).astype(np.float32)
    return g


def _weights(
    rng: np.random.Generator, shape: tuple[int, ...], steps: int, ratio: float, std: float
) -> list[np.ndarray]:
    w = rng.normal(0.0, std, shape).astype(np.float32)
    if not np.any(w):
        w.flat[0] = np.float32(std)
    out = [w]
    for _ in range(steps - 1):
        prev = out[-1]
        if ratio == 0.0:
            out.append(prev.copy())
            continue
        d = rng.normal(0.0, 1.0, shape)
        d *= ratio * np.linalg.norm(prev.astype(np.float64)) / max(np.linalg.norm(d), 1e-300)
        out.append((prev.astype(np.float64) + d).astype(np.float32))
    return out


def _scale(x: float | str) -> float:
    if isinstance(x, str):
        if x not in GRADIENT_SCALES:
            raise InvalidArgument(
                f"scale {x!r}: expected a number or one of {list(GRADIENT_SCALES)}"
            )
        return GRADIENT_SCALES[x]
    return float(x)


@st.composite
def param_series(
    draw: Any,
    name: str = "fc.weight",
    *,
    shape: tuple[int, ...] | SearchStrategy[tuple[int, ...]] = (4, 3),
    steps: int | tuple[int, int] | SearchStrategy[int] = (1, 6),
    grad_scale: float | str | SearchStrategy[Any] = "normal",
    update_ratio: float | tuple[float, float] | SearchStrategy[float] = 1e-3,
    weight_std: float = 0.1,
) -> ParamSeries:
    """Weights and gradients of one parameter: gradients of mean magnitude ``grad_scale``
    ("vanishing", "normal", "exploding" or a number) and weights that change by
    ``update_ratio`` (relative L2 norm) per step, or not at all when it is 0."""
    shp = tuple(_v(draw, shape))
    n = _v(draw, _ints(steps))
    gs = _scale(_v(draw, grad_scale))
    ur = float(_v(draw, _floats(update_ratio)))
    if gs <= 0 or ur < 0:
        raise InvalidArgument(f"grad_scale {gs} must be > 0 and update_ratio {ur} >= 0")
    rng = _rng(draw)
    ws = _weights(rng, shp, n, ur, weight_std)
    gr = [_gradient(rng, shp, gs) for _ in range(n)]
    return ParamSeries(name, ws, gr, gs, ur)


# -- whole runs -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class StepRow:
    """One global step of the generated schedule and who committed it."""

    step: int
    mode: str
    mode_step: int
    workers: tuple[str, ...]
    complete: bool


@dataclass(repr=False)
class RunTruth:
    """What a generated run holds, computed from the values written (complete steps only).

    ``steps[mode]`` are the mode steps the reader must answer; ``loss[mode].values[i]`` is
    the loss at ``steps[mode][i]``; ``confusion[mode]`` sums every worker's batches,
    ``confusion_by_worker[mode][worker]`` one worker's; ``dead_fraction`` per ReLU tensor;
    ``grad_scale`` per gradient tensor; ``update_ratio`` per weight tensor;
    ``batch_confusion[(global step, worker)]`` one batch's confusion matrix.
    """

    steps: dict[str, list[int]] = field(default_factory=dict)
    global_steps: list[int] = field(default_factory=list)
    missing: list[int] = field(default_factory=list)
    incomplete: list[int] = field(default_factory=list)
    loss: dict[str, LossCurve] = field(default_factory=dict)
    label_counts: dict[str, np.ndarray] = field(default_factory=dict)
    label_counts_by_worker: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    confusion: dict[str, np.ndarray] = field(default_factory=dict)
    confusion_by_worker: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    dead_fraction: dict[str, float] = field(default_factory=dict)
    grad_scale: dict[str, float] = field(default_factory=dict)
    update_ratio: dict[str, float] = field(default_factory=dict)
    batch_confusion: dict[tuple[int, str], np.ndarray] = field(default_factory=dict)

    def pair_count(
        self,
        a: int,
        b: int,
        *,
        mode: str | None = "TRAIN",
        directed: bool = False,
        worker: str | None = None,
    ) -> int:
        """Samples of label a predicted as b (plus b as a unless ``directed``) in a mode
        (every mode when None), over every worker or one."""
        total = 0
        for m in self.confusion if mode is None else [mode]:
            if worker is None:
                conf = self.confusion.get(m)
            else:
                conf = self.confusion_by_worker.get(m, {}).get(worker)
            if conf is not None:
                total += _pair_count(conf, a, b, directed)
        return total

    def cumulative_pair_counts(
        self, a: int, b: int, *, worker: str | None = "worker_0", directed: bool = False
    ) -> list[tuple[int, int]]:
        """(global step, a<->b confusions up to and including that step) for every complete
        step in global order, all modes together: what a step-wise rule sees. ``worker`` None
        counts every worker's batches (what a data-parallel-aware rule sees)."""
        out, total = [], 0
        for g in self.global_steps:
            for (step, w), conf in self.batch_confusion.items():
                if step == g and (worker is None or w == worker):
                    total += _pair_count(conf, a, b, directed)
            out.append((g, total))
        return out

    def plateau_step(self, mode: str = "TRAIN") -> int | None:
        """The mode step where the loss plateau (or divergence) starts, if the curve has one."""
        curve = self.loss.get(mode)
        if curve is None or curve.change_index is None:
            return None
        return self.steps[mode][curve.change_index]


@dataclass(repr=False)
class GeneratedRun(_Compact):
    """A generated run (an in-memory :class:`~pytest_modelrules.store.run.Run`) and its truth.

    ``save(path)`` writes it to disk (native layout) to inspect a failing example.
    """

    run: MemoryRun
    truth: RunTruth
    schedule: list[StepRow]
    workers: list[str]
    class_names: list[str]
    save_interval: dict[str, int]
    tensors: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def save(self, path: str | os.PathLike) -> Any:
        """Write the run to ``path`` and return it opened from disk."""
        return self.run.save(path)

    def __repr__(self) -> str:
        t = self.truth
        parts = [f"steps={t.steps}"]
        if len(self.workers) > 1:
            parts.append(f"workers={self.workers}")
        if t.missing:
            parts.append(f"missing={t.missing}")
        if t.incomplete:
            parts.append(f"incomplete={t.incomplete}")
        parts.append(f"classes={self.num_classes}")
        for mode, curve in t.loss.items():
            parts.append(f"loss[{mode}]={curve!r}")
        for mode, conf in t.confusion.items():
            off = {(int(i), int(j)): int(conf[i, j]) for i, j in zip(*np.nonzero(conf)) if i != j}
            parts.append(f"labels[{mode}]={t.label_counts[mode].tolist()}")
            parts.append(f"confusions[{mode}]={off}")
        if t.dead_fraction:
            parts.append(f"dead_fraction={ {k: round(v, 4) for k, v in t.dead_fraction.items()} }")
        if t.grad_scale:
            parts.append(f"grad_scale={t.grad_scale}")
        return "GeneratedRun(" + ", ".join(parts) + ")"


def _schedule(
    draw: Any,
    epochs: int,
    per_epoch: dict[str, int],
    intervals: dict[str, int],
) -> list[tuple[int, str, int]]:
    """(global step, mode, mode step) of every saved step, before dropping missing ones."""
    rows = []
    g = 0
    counters = dict.fromkeys(per_epoch, 0)
    for _ in range(epochs):
        for mode, count in per_epoch.items():
            for _ in range(count):
                ms = counters[mode]
                if ms % intervals[mode] == 0:
                    rows.append((g, mode, ms))
                counters[mode] += 1
                g += 1
    return rows


@st.composite
def training_runs(
    draw: Any,
    *,
    modes: Sequence[str] | SearchStrategy[Any] = ("TRAIN",),
    epochs: int | tuple[int, int] | SearchStrategy[int] = (1, 2),
    steps_per_epoch: int | tuple[int, int] | SearchStrategy[int] = (1, 8),
    eval_steps_per_epoch: int | tuple[int, int] | SearchStrategy[int] = (1, 3),
    save_interval: int | tuple[int, int] | SearchStrategy[int] = 1,
    missing_steps: int | tuple[int, int] | SearchStrategy[int] = 0,
    workers: int | tuple[int, int] | SearchStrategy[int] = 1,
    incomplete_steps: int | tuple[int, int] | SearchStrategy[int] = 0,
    tensors: Sequence[str] = ("loss", "classification"),
    loss: str | SearchStrategy[str] = "decreasing",
    loss_kwargs: Mapping[str, Any] | None = None,
    num_classes: int | tuple[int, int] | SearchStrategy[int] = (2, 5),
    class_names: Sequence[str] | None = None,
    imbalance: float | tuple[float, float] | SearchStrategy[float] = 1.0,
    min_count: int | tuple[int, int] | SearchStrategy[int] = (1, 8),
    accuracy: float | tuple[float, float] | SearchStrategy[float] = (0.0, 1.0),
    confused: Mapping[tuple[int, int], float] | SearchStrategy[Any] = {},  # noqa: B006
    never_confuse: Iterable[tuple[int, int]] = (),
    relu_layers: Sequence[str] | int | SearchStrategy[Any] = 2,
    dead_fraction: float | tuple[float, float] | SearchStrategy[float] | Mapping[str, Any] = (
        0.0,
        1.0,
    ),
    relu_units: int | tuple[int, int] | SearchStrategy[int] = (1, 12),
    relu_batch: int | tuple[int, int] | SearchStrategy[int] = (1, 8),
    relu_spatial: tuple[int, int] | SearchStrategy[Any] | None = None,
    params: Sequence[str] = DEFAULT_PARAMS,
    grad_scale: float | str | SearchStrategy[Any] | Mapping[str, Any] = "normal",
    update_ratio: float | tuple[float, float] | SearchStrategy[float] | Mapping[str, Any] = 1e-3,
    ended: bool = True,
    name: str = "generated-run",
) -> GeneratedRun:
    """A whole run: its schedule (modes, save intervals, missing and incomplete steps, workers)
    and the tensors named in ``tensors``: "loss", "classification" (logits and labels),
    "relu", "weights", "gradients" (weights and gradients in TRAIN steps only).

    Each epoch runs ``steps_per_epoch`` TRAIN steps then ``eval_steps_per_epoch`` EVAL steps
    (when "EVAL" is in ``modes``); a step is saved when its mode step is a multiple of the
    save interval, then ``missing_steps`` saved steps are dropped, and with several workers
    ``incomplete_steps`` are written by only some of them (readers must ignore those).
    ``dead_fraction``, ``grad_scale`` and ``update_ratio`` also take a mapping per ReLU layer
    (module path, e.g. ``{"layer1.0.relu": 0.9}``; others get 0) or per parameter (others get
    "normal" and 1e-3). ``relu_spatial=(h, w)`` makes ReLU outputs conv-shaped,
    (batch, channels, h, w), with whole channels dead. Labels, predictions, the loss and ReLU
    outputs follow :func:`label_streams`, :func:`predictions`, :func:`loss_curves` and
    :func:`relu_outputs`, over the complete steps of each mode; every worker writes its own
    batch of labels and logits and the same loss.
    """
    known = {"loss", "classification", "relu", "weights", "gradients"}
    if not tensors or set(tensors) - known:
        raise InvalidArgument(f"tensors={list(tensors)}: name one or more of {sorted(known)}")
    mode_list = [parse_mode(m, allow_none=False).name for m in _v(draw, modes)]
    if not mode_list or any(m not in ("TRAIN", "EVAL") for m in mode_list):
        raise InvalidArgument(f"modes={mode_list}: use TRAIN and/or EVAL")
    if "EVAL" in mode_list and set(tensors) <= {"weights", "gradients"}:
        raise InvalidArgument("EVAL steps save no weights or gradients: add another tensor group")
    n_epochs = _v(draw, _ints(epochs))
    per_epoch = {}
    for m in ("TRAIN", "EVAL"):
        if m in mode_list:
            per_epoch[m] = _v(
                draw, _ints(steps_per_epoch if m == "TRAIN" else eval_steps_per_epoch)
            )
    intervals = {m: _v(draw, _ints(save_interval)) for m in per_epoch}
    if any(i < 1 for i in intervals.values()):
        raise InvalidArgument(f"save_interval {intervals} must be >= 1")
    rows = _schedule(draw, n_epochs, per_epoch, intervals)
    n_missing = min(_v(draw, _ints(missing_steps)), max(len(rows) - 1, 0))
    missing: list[int] = []
    if n_missing:
        drop = draw(
            st.lists(st.sampled_from(rows), min_size=n_missing, max_size=n_missing, unique=True),
            label="missing steps",
        )
        missing = sorted(r[0] for r in drop)
        rows = [r for r in rows if r[0] not in missing]
    n_workers = _v(draw, _ints(workers))
    if n_workers < 1:
        raise InvalidArgument(f"workers={n_workers} must be >= 1")
    worker_names = [f"worker_{i}" for i in range(n_workers)]
    schedule: list[StepRow] = []
    incomplete: list[int] = []
    n_inc = _v(draw, _ints(incomplete_steps)) if n_workers > 1 else 0
    n_inc = min(n_inc, max(len(rows) - 1, 0))
    inc_steps = set()
    if n_inc:
        inc_steps = set(
            draw(
                st.lists(
                    st.sampled_from([r[0] for r in rows]),
                    min_size=n_inc,
                    max_size=n_inc,
                    unique=True,
                )
            )
        )
    for g, mode, ms in rows:
        if g in inc_steps:
            k = draw(st.integers(1, n_workers - 1))
            who = tuple(sorted(draw(st.permutations(worker_names))[:k], key=worker_names.index))
            incomplete.append(g)
            schedule.append(StepRow(g, mode, ms, who, False))
        else:
            schedule.append(StepRow(g, mode, ms, tuple(worker_names), True))
    complete = [r for r in schedule if r.complete]
    truth = RunTruth(
        steps={m: [r.mode_step for r in complete if r.mode == m] for m in per_epoch},
        global_steps=[r.step for r in complete],
        missing=missing,
        incomplete=sorted(incomplete),
    )
    # values[(global step, worker)][tensor name] = array
    values: dict[tuple[int, str], dict[str, np.ndarray]] = {
        (r.step, w): {} for r in schedule for w in r.workers
    }
    rng = _rng(draw)
    if class_names is not None:
        names = [str(c) for c in class_names]
    else:
        names = [f"class_{i}" for i in range(_v(draw, _ints(num_classes)))]
    n_classes = len(names)
    if "loss" in tensors:
        for m in per_epoch:
            mrows = [r for r in complete if r.mode == m]
            if not mrows:
                continue
            kwargs = dict(loss_kwargs or {})
            kwargs["length"] = len(mrows)
            if "nonfinite" in kwargs:  # no more than the steps the schedule left
                kwargs["nonfinite"] = min(_v(draw, _ints(kwargs["nonfinite"])), len(mrows))
            shape = _v(draw, loss)
            if len(mrows) < 2 and shape in ("plateau", "diverging"):
                shape = "constant"  # one value cannot change course
            curve = draw(loss_curves(shape, **kwargs))
            truth.loss[m] = curve
            for r, v in zip(mrows, curve.values):
                for w in r.workers:
                    values[(r.step, w)][LOSS] = np.float32(v)
        for r in schedule:
            if not r.complete:  # a value no reader may see: an obvious outlier
                for w in r.workers:
                    values[(r.step, w)][LOSS] = np.float32(1e4)
    if "classification" in tensors:
        conf = _check_confused(_v(draw, confused), n_classes)
        acc = float(_v(draw, _floats(accuracy)))
        ratio = float(_v(draw, _floats(imbalance)))
        never = _pairs(never_confuse)
        for m in per_epoch:
            slots = [(r.step, w) for r in complete if r.mode == m for w in r.workers]
            if not slots:
                continue
            mc = max(_v(draw, _ints(min_count)), -(-len(slots) // n_classes))
            stream = _make_stream(draw, n_classes, ratio, mc, len(slots))
            pred, logits, _ok = _predict(rng, stream.labels, n_classes, acc, conf, never, 1.0)
            pos = 0
            truth.label_counts_by_worker[m] = {}
            truth.confusion_by_worker[m] = {}
            for slot, batch in zip(slots, stream.batches):
                end = pos + len(batch)
                values[slot][LABELS] = batch
                values[slot][LOGITS] = logits[pos:end]
                w = slot[1]
                bc = _confusion(batch, pred[pos:end], n_classes)
                truth.batch_confusion[slot] = bc
                truth.confusion_by_worker[m][w] = truth.confusion_by_worker[m].get(w, 0) + bc
                pos = end
            truth.label_counts[m] = stream.counts
            truth.confusion[m] = _confusion(stream.labels, pred, n_classes)
            for w, cm in truth.confusion_by_worker[m].items():
                truth.label_counts_by_worker[m][w] = cm.sum(axis=1)
        for r in schedule:
            if not r.complete:  # class 0, predicted right: never counted by a correct reader
                for w in r.workers:
                    values[(r.step, w)][LABELS] = np.zeros(2, np.int64)
                    lg = np.zeros((2, n_classes), np.float32)
                    lg[:, 0] = 1.0
                    values[(r.step, w)][LOGITS] = lg
    if "relu" in tensors:
        layers = _v(draw, relu_layers)
        if isinstance(layers, int):
            if layers > len(DEFAULT_RELU_LAYERS):
                raise InvalidArgument(f"at most {len(DEFAULT_RELU_LAYERS)} default ReLU layers")
            layers = list(DEFAULT_RELU_LAYERS[:layers])
        batch = _v(draw, _ints(relu_batch))
        for layer in layers:
            tname = relu_name(layer)
            units = _v(draw, _ints(relu_units))
            spec = _v(draw, _floats(dead_fraction))
            if isinstance(spec, Mapping):
                spec = _v(draw, _floats(spec.get(layer, 0.0)))
            frac = float(spec)
            hw = _v(draw, relu_spatial)
            dead = _dead_units(rng, units, frac)
            truth.dead_fraction[tname] = len(dead) / units
            for key in values:
                values[key][tname] = _relu_batch(rng, batch, (units, *(hw or ())), dead, 0.5)
    train_rows = [r for r in schedule if r.mode == "TRAIN"]
    if train_rows and ("weights" in tensors or "gradients" in tensors):
        n_complete = sum(r.complete for r in train_rows)
        gs_any = _v(draw, grad_scale)
        ur_any = _v(draw, _floats(update_ratio))
        scales = gs_any if isinstance(gs_any, Mapping) else None
        ratios = ur_any if isinstance(ur_any, Mapping) else None
        gs_all = None if scales is not None else _scale(gs_any)
        ur_all = None if ratios is not None else float(ur_any)
        for p in params:
            gs = gs_all if scales is None else _scale(_v(draw, scales.get(p, "normal")))
            ur = ur_all if ratios is None else float(_v(draw, _floats(ratios.get(p, 1e-3))))
            shape = _param_shape(p, n_classes)
            ws = iter(_weights(rng, shape, max(n_complete, 1), ur, 0.1))
            if "weights" in tensors and n_complete:
                truth.update_ratio[p] = ur
                for r in train_rows:
                    # incomplete steps hold zeros: a reader that shows them breaks the ratio
                    wv = next(ws) if r.complete else np.zeros(shape, np.float32)
                    for w in r.workers:
                        values[(r.step, w)][p] = wv
            if "gradients" in tensors:
                gname = gradient_name(p)
                if n_complete:
                    truth.grad_scale[gname] = gs
                for r in train_rows:
                    g = _gradient(rng, shape, gs)
                    for w in r.workers:
                        values[(r.step, w)][gname] = g
    run = _write(name, worker_names, schedule, values, names, ended)
    written = sorted({n for v in values.values() for n in v})
    return GeneratedRun(run, truth, schedule, worker_names, names, intervals, written)


def _param_shape(param: str, num_classes: int) -> tuple[int, ...]:
    if param.startswith("fc."):
        return (num_classes, 4) if param.endswith("weight") else (num_classes,)
    if param.endswith("weight") and "conv" in param:
        return (4, 3, 3, 3)
    return (4,)


def _write(
    name: str,
    workers: list[str],
    schedule: list[StepRow],
    values: dict[tuple[int, str], dict[str, np.ndarray]],
    class_names: list[str],
    ended: bool,
) -> MemoryRun:
    builder = MemoryRunBuilder(name, workers[0], num_workers=len(workers))
    builder.update_metadata(class_names=list(class_names))
    writers = [builder.writer(w, rank=i) for i, w in enumerate(workers)]
    for row in schedule:
        for w in writers:
            if w.worker not in row.workers:
                continue
            for tname, arr in sorted(values[(row.step, w.worker)].items()):
                w.write(tname, arr, row.step, mode=row.mode, mode_step=row.mode_step)
            w.end_step()
    if ended:
        builder.close()
    return builder.run()
