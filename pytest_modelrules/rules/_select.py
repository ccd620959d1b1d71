"""Shared helpers of the built-in rules: choosing tensors (collection_names / tensor_regex),
choosing where a value comes from (a stored reduction or the full tensor), vectorised
per-step computation over a Series, and the wording of steps and missing tensors.

Selection works on *base* tensor names: the full tensors of the run plus the tensors of which
only a reduction is stored (``smdebug/reductions/abs_mean/gradient/fc.weight`` counts as
``gradient/fc.weight``). Reduction tensors are never selected themselves, so a regex such as
``.*relu_output`` selects each layer once, whatever the run stored of it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from ..exceptions import MissingTensorError
from ..store.names import parse_reduction_name, reduction_tensor_name
from .result import TriggerStep

GRADIENT_PREFIX = "gradient/"


def full_names(run: Any) -> list[str]:
    """The run's tensors that are stored in full (no reduction tensors)."""
    return [n for n in run.tensor_names() if parse_reduction_name(n) is None]


def base_names(run: Any) -> list[str]:
    """Every tensor the run holds something of: full tensors and tensors with a stored
    reduction (by the name of the tensor reduced), sorted."""
    names: set[str] = set()
    for n in run.tensor_names():
        parsed = parse_reduction_name(n)
        names.add(parsed[0] if parsed else n)
    return sorted(names)


def stored_reduction(run: Any, name: str, reduction: str, abs: bool = False) -> str | None:
    """The name of a stored reduction of ``name``, or None when the run has none."""
    red = reduction_tensor_name(name, reduction, abs)
    return red if run.has_tensor(red) else None


def _as_list(value: str | Iterable[str] | None) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


def collection_members(run: Any, collection_names: str | Iterable[str] | None) -> set[str]:
    """Base tensor names that belong to the named collections (names listed or regex-matched).

    A collection the run does not define matches nothing; ``gradients`` also matches every
    ``gradient/...`` tensor, as SageMaker Debugger's default collection does.
    """
    wanted = _as_list(collection_names)
    if not wanted:
        return set()
    names = base_names(run)
    cols = run.collections()
    out: set[str] = set()
    for cname in wanted:
        col = cols.get(cname)
        if col is not None:
            out.update(n for n in col.tensor_names if n in names)
            for regex in col.include_regex:
                try:
                    patt = re.compile(regex)
                except re.error:
                    continue
                out.update(n for n in names if patt.search(n))
        if cname == "gradients":
            out.update(n for n in names if n.startswith(GRADIENT_PREFIX))
        elif cname == "losses":
            out.update(n for n in names if re.search(r"[Ll]oss_output_\d+$", n))
    return out


def select(
    run: Any,
    collection_names: str | Iterable[str] | None = None,
    tensor_regex: str | Iterable[str] | None = None,
    *,
    default_all: bool = False,
    names: Sequence[str] | None = None,
) -> list[str]:
    """Base tensor names chosen by collections and/or regexes (a union, ``re.search``).

    With neither given: every base tensor when ``default_all``, else nothing.
    ``names`` restricts the candidates (default: :func:`base_names`).
    """
    candidates = list(names) if names is not None else base_names(run)
    cols = _as_list(collection_names)
    regexes = _as_list(tensor_regex)
    if not cols and not regexes:
        return sorted(candidates) if default_all else []
    chosen: set[str] = set()
    if cols:
        members = collection_members(run, cols)
        chosen.update(n for n in candidates if n in members)
    if regexes:
        patt = re.compile("|".join(f"(?:{r})" for r in regexes))
        chosen.update(n for n in candidates if patt.search(n))
    return sorted(chosen)


def select_required(
    rule: str,
    run: Any,
    collection_names: str | Iterable[str] | None,
    tensor_regex: str | Iterable[str] | None,
    *,
    default_all: bool = False,
) -> list[str]:
    """:func:`select`, raising a MissingTensorError for ``rule`` when nothing matches."""
    names = select(run, collection_names, tensor_regex, default_all=default_all)
    if not names:
        raise missing(
            rule, f"no tensor matches {selection_text(collection_names, tensor_regex)}", run
        )
    return names


def describe_holdings(run: Any, limit: int = 8) -> str:
    """A short account of what a run holds, for error messages."""
    names = base_names(run)
    if not names:
        return "the run holds no tensors at all"
    shown = ", ".join(names[:limit])
    more = f", ... ({len(names)} in all)" if len(names) > limit else ""
    reductions = sorted({p[1] for n in run.tensor_names() if (p := parse_reduction_name(n))})
    red = f"; stored reductions: {', '.join(reductions)}" if reductions else ""
    return f"the run holds {shown}{more}{red}"


def missing(rule: str, what: str, run: Any) -> MissingTensorError:
    """A MissingTensorError saying what the rule looked for and what the run holds."""
    return MissingTensorError(f"{rule}: {what}; {describe_holdings(run)}")


def selection_text(collection_names: Any, tensor_regex: Any) -> str:
    parts = []
    if collection_names:
        parts.append(f"collection_names={collection_names!r}")
    if tensor_regex:
        parts.append(f"tensor_regex={tensor_regex!r}")
    return " / ".join(parts) or "the default selection"


def apply_per_step(values: Any, fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """``fn`` over the values of a Series (or a list of arrays) stacked as (steps, *shape).

    A uniform Series is passed as its stacked array (no copy on the fast path). When the shape
    changes across steps (a smaller last batch), steps of each shape are stacked and computed
    together and the results put back in step order; ``fn`` must give results of one trailing
    shape whatever the input shape.
    """
    if hasattr(values, "stack") and hasattr(values, "uniform"):
        if len(values) == 0:
            return np.zeros((0,))
        if values.uniform:
            return np.asarray(fn(values.stack()))
        values = values.arrays
    arrays = list(values)
    if not arrays:
        return np.zeros((0,))
    first = arrays[0]
    if all(a.shape == first.shape for a in arrays):
        return np.asarray(fn(np.stack(arrays)))
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, a in enumerate(arrays):
        groups.setdefault(a.shape, []).append(i)
    parts = {
        shape: np.asarray(fn(np.stack([arrays[i] for i in idx]))) for shape, idx in groups.items()
    }
    sample = next(iter(parts.values()))
    out = np.empty((len(arrays), *sample.shape[1:]), dtype=np.result_type(*parts.values()))
    for shape, idx in groups.items():
        out[np.asarray(idx)] = parts[shape]
    return out


def align(per_tensor: dict[str, tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Global steps (the union) and a (steps x tensors) float matrix, NaN where not saved.

    ``per_tensor`` maps a name to (global steps, one number per step).
    """
    if not per_tensor:
        return np.zeros(0, np.int64), np.zeros((0, 0))
    steps = np.unique(np.concatenate([np.asarray(s, np.int64) for s, _ in per_tensor.values()]))
    mat = np.full((len(steps), len(per_tensor)), np.nan)
    for j, (s, v) in enumerate(per_tensor.values()):
        mat[np.searchsorted(steps, np.asarray(s, np.int64)), j] = np.asarray(v, np.float64)
    return steps, mat


def step_label(run: Any, global_step: int) -> str:
    """ "global step 37 (TRAIN step 21)", or "global step 37" when the mode is unknown."""
    try:
        g = int(global_step)
        return f"global step {g} ({run.mode(g).name} step {run.mode_step(g)})"
    except Exception:
        return f"global step {int(global_step)}"


def trigger_steps(rule: Any, run: Any, global_steps: Iterable[int]) -> list[TriggerStep]:
    """TriggerSteps (with mode and mode step) for sorted unique global steps."""
    return [rule.trigger_step(run, int(g)) for g in sorted({int(g) for g in global_steps})]


def fmt(x: float, digits: int = 4) -> str:
    """A number for an explanation: integers plainly, others with ``digits`` significant."""
    x = float(x)
    if np.isnan(x):
        return "nan"
    if np.isinf(x):
        return "inf" if x > 0 else "-inf"
    if x.is_integer() and abs(x) < 1e12:
        return str(int(x))
    return f"{x:.{digits}g}"


def pct(x: float) -> str:
    """A percentage: whole numbers plainly, else one decimal."""
    x = float(x)
    return f"{x:.0f}%" if abs(x - round(x)) < 0.05 else f"{x:.1f}%"


def flat_float(stacked: np.ndarray) -> np.ndarray:
    """(steps, *shape) -> (steps, elements) as float64."""
    return stacked.reshape(stacked.shape[0], -1).astype(np.float64, copy=False)


def rows_close(
    a: np.ndarray, b: np.ndarray, rtol: float, atol: float, equal_nan: bool = False
) -> np.ndarray:
    """Per row of two (rows, elements) arrays: ``numpy.allclose(a_row, b_row, ...)``.

    Same meaning as numpy.isclose (|a - b| <= atol + rtol * |b|, infinities equal only to
    themselves, NaN equal to NaN only with ``equal_nan``) at a fraction of its cost: rows that
    are exactly equal are settled by one comparison.
    """
    if a.dtype.kind not in "fc" or b.dtype.kind not in "fc":
        a = a.astype(np.float64)
        b = b.astype(np.float64)
    same = a == b
    out = same.all(axis=1)
    rest = np.nonzero(~out)[0]
    if len(rest):
        x, y, eq = a[rest], b[rest], same[rest]
        with np.errstate(invalid="ignore", over="ignore"):
            close = eq | ((np.abs(x - y) <= atol + rtol * np.abs(y)) & np.isfinite(y))
        if equal_nan:
            close |= np.isnan(x) & np.isnan(y)
        out[rest] = close.all(axis=1)
    return out
