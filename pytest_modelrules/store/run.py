"""The Run: SageMaker Debugger's trial API over any layout, with fast bulk access for rules.

Step semantics follow SageMaker Debugger: every step has a global number and, within its
mode, a mode step counted from 0. ``steps(mode=TRAIN)`` answers TRAIN mode steps,
``steps()`` or ``steps(mode=GLOBAL)`` answers global steps, and ``tensor(n).value(s, mode)``
reads mode step ``s`` (global step when mode is None or GLOBAL). A step counts once every
worker committed it.

A tensor stored only as reductions (``smdebug/reductions/l2/gradient/x``, no ``gradient/x``)
opens by its base name as in SageMaker Debugger (:class:`ReducedTensor`); ``tensor_names()``
and ``has_tensor()`` still answer the names stored (see docs/format.md for why).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterable
from enum import IntEnum
from numbers import Integral
from typing import Any

import numpy as np

from ..exceptions import (
    CorruptRunError,
    InvalidWorker,
    ModelRulesError,
    NoMoreData,
    RunNotFoundError,
    ShapeUnavailableForStep,
    StepNotYetAvailable,
    StepUnavailable,
    TensorUnavailable,
    TensorUnavailableForStep,
)
from ..modes import ModeKeys, parse_mode
from .base import Backend
from .names import parse_reduction_name, printable, unprintable_name


class StepState(IntEnum):
    """Whether a step can be read yet (SageMaker Debugger's ``StepState``, same values), as
    :meth:`Run.has_passed_step` tells: AVAILABLE (every worker wrote it, or the run ended
    with it), NOT_YET_AVAILABLE (it may still come) or UNAVAILABLE (it never will)."""

    UNAVAILABLE = 0
    AVAILABLE = 1
    NOT_YET_AVAILABLE = 2


def _regex_union(regex: str | Iterable[str] | None, what: str = "regex") -> re.Pattern[str] | None:
    """One pattern matching any of ``regex`` (None: no filter); an invalid one is a
    ValueError naming it and ``what`` it came from."""
    if regex is None:
        return None
    try:
        parts = [regex] if isinstance(regex, str) else list(regex)
    except TypeError:
        raise ValueError(
            f"{what}: {regex!r} is neither a regular expression nor a list of them"
        ) from None
    if not parts:
        return None
    for part in parts:
        try:
            re.compile(part)
        except (re.error, TypeError) as exc:
            raise ValueError(f"{what}: {part!r} is not a regular expression ({exc})") from None
    return re.compile(parts[0] if len(parts) == 1 else "|".join(f"(?:{p})" for p in parts))


def _reduced_tensor(name: str) -> str:
    """The tensor a stored reduction was computed from (``smdebug/reductions/l2/fc.weight``:
    ``fc.weight``), else ``name``."""
    parsed = parse_reduction_name(name)
    return name if parsed is None else parsed[0]


class Series:
    """The saved values of one tensor in step order: what vectorised rules read.

    ``steps`` are mode steps when a mode was asked for, else global steps; ``arrays`` are
    read-only views (copy before changing them). When every value has one dtype and shape
    and the layout allows it, the series holds them as one stacked array and :meth:`stack`
    returns it without copying (a read-only view of the run's bytes).
    """

    def __init__(
        self,
        name: str,
        mode: ModeKeys | None,
        steps: np.ndarray,
        global_steps: np.ndarray,
        modes: np.ndarray,
        workers: np.ndarray,
        arrays: list[np.ndarray] | None = None,
        *,
        stacked: np.ndarray | None = None,
    ) -> None:
        if arrays is None and stacked is None:
            raise ValueError("a Series needs arrays or a stacked array")
        self.name = name
        self.mode = mode
        self.steps = steps
        self.global_steps = global_steps
        self.modes = modes
        self.workers = workers
        self._arrays = arrays
        self._stacked = stacked

    def __repr__(self) -> str:
        return f"Series({self.name!r}, mode={self.mode}, steps={len(self)})"

    def __len__(self) -> int:
        return len(self.steps)

    @property
    def arrays(self) -> list[np.ndarray]:
        """One array per step (views of the stacked array on the fast path)."""
        if self._arrays is None:
            from .native import split_stacked

            self._arrays = split_stacked(self._stacked)
        return self._arrays

    @arrays.setter
    def arrays(self, value: list[np.ndarray]) -> None:
        self._arrays = list(value)
        self._stacked = None

    @property
    def uniform(self) -> bool:
        """All values have one shape and dtype, so :meth:`stack` is possible."""
        if self._stacked is not None:
            return True
        arrays = self.arrays
        if not arrays:
            return True
        first = arrays[0]
        return all(a.shape == first.shape and a.dtype == first.dtype for a in arrays)

    def stack(self) -> np.ndarray:
        """One array of shape (len, *value_shape); ValueError if shapes differ between steps.

        Read-only (a view of the run's bytes when possible): copy before changing it."""
        if self._stacked is not None:
            return self._stacked
        if not self.arrays:
            return np.zeros((0,), dtype=np.float32)
        if not self.uniform:
            shapes = sorted({a.shape for a in self.arrays})
            raise ValueError(f"tensor {self.name!r} changes shape across steps: {shapes[:5]}")
        return np.stack(self.arrays)

    def concat(self) -> np.ndarray:
        """All values joined along their first axis (e.g. every label of every batch)."""
        if self._stacked is not None and self._stacked.ndim >= 2:
            st = self._stacked
            return st.reshape(st.shape[0] * st.shape[1], *st.shape[2:])
        if not self.arrays:
            return np.zeros((0,), dtype=np.float32)
        return np.concatenate([np.atleast_1d(a) for a in self.arrays])


class Collection:
    """A named group of tensors, as SageMaker Debugger's collections."""

    def __init__(self, name: str, info: dict[str, Any]) -> None:
        self.name = name
        listed = info.get("tensor_names")  # a run's own data: odd types are not names
        self.tensor_names: list[str] = (
            [n for n in listed if isinstance(n, str)] if isinstance(listed, list) else []
        )
        regex = info.get("include_regex") or []
        # kept as stored: a pattern that is not one is named when the collection is used
        self.include_regex: list[str] = list(regex) if isinstance(regex, (list, tuple)) else [regex]
        self.info = info

    def __repr__(self) -> str:
        return f"Collection({self.name!r}, {len(self.tensor_names)} tensors)"


class Tensor:
    """One tensor of a run; values by step and mode."""

    def __init__(self, run: Run, name: str) -> None:
        self.run = run
        self.name = name
        self._cache_key: int = -1
        self._valid_idx: np.ndarray | None = None
        self._lookup: dict[tuple[int, int | None], dict[int, int]] = {}

    def __repr__(self) -> str:
        return f"Tensor({self.name!r})"

    def _generation_ok(self) -> bool:
        """Still the right kind of tensor after a refresh (a full value may have arrived)."""
        return True

    # internal: the valid record indices, refreshed with the run
    def _records(self):
        return self.run._backend.tensor_records(self.name)

    def _valid(self) -> np.ndarray:
        """Indices of the records that belong to complete steps (cached per run refresh)."""
        if self._cache_key != self.run._generation:
            self._lookup.clear()
            self._valid_idx = None
            self._cache_key = self.run._generation
        if self._valid_idx is None:
            recs = self._records()
            self._valid_idx = np.flatnonzero(np.isin(recs.steps, self.run._complete))
        return self._valid_idx

    def _index_map(self, mode: ModeKeys | None, worker: int | None) -> dict[int, int]:
        """{step: record index} in step order; the lowest worker wins a step saved twice."""
        key = (int(mode) if mode else 0, worker)
        valid = self._valid()
        found = self._lookup.get(key)
        if found is not None:
            return found
        recs = self._records()
        if mode is not None:
            valid = valid[recs.modes[valid] == int(mode)]
            step_arr = recs.mode_steps
        else:
            step_arr = recs.steps
        if worker is not None:
            valid = valid[recs.workers[valid] == worker]
        order = valid[np.lexsort((recs.workers[valid], step_arr[valid]))]
        steps = step_arr[order]
        first = np.ones(len(order), bool)
        first[1:] = steps[1:] != steps[:-1]
        mapping = dict(zip(steps[first].tolist(), order[first].tolist()))
        self._lookup[key] = mapping
        return mapping

    def _worker_index(self, worker: str | None) -> int | None:
        if worker is None:
            return None
        try:
            return self.run._backend.workers().index(worker)
        except ValueError:
            workers = ", ".join(self.run._backend.workers()) or "none"
            raise InvalidWorker(worker, hint=f"its workers: {workers}") from None

    def _not_saved(
        self, step: int, mode: ModeKeys | None, hint: str
    ) -> StepUnavailable | TensorUnavailableForStep:
        """The error for a step at which this tensor has no value: the run's own for a step
        it does not have (:meth:`Run._step_error`), else TensorUnavailableForStep with
        ``hint``."""
        if not self.run._has_step(step, mode):
            return self.run._step_error(step, mode)
        return TensorUnavailableForStep(self.name, step, mode, hint=hint)

    def steps(
        self,
        mode: ModeKeys | str | None = None,
        show_incomplete_steps: bool = False,
        worker: str | None = None,
    ) -> list[int]:
        """The steps at which the tensor was saved (mode steps for a mode, else global), in
        SageMaker Debugger's argument order; ``show_incomplete_steps`` adds the steps not
        every worker has written yet."""
        if not isinstance(show_incomplete_steps, bool | np.bool_):
            # steps(mode, "worker_1"), this API's order before it took smdebug's
            raise TypeError(
                f"steps(): show_incomplete_steps must be True or False, got "
                f"{show_incomplete_steps!r}; give a worker as steps(mode, worker=...)"
            )
        m = _mode_arg(mode)
        w = self._worker_index(worker)
        if show_incomplete_steps and not isinstance(self, ReducedTensor):
            recs = self._records()
            sel = self.run._in_range(recs.steps)
            if m is not None:
                sel &= recs.modes == int(m)
            if w is not None:
                sel &= recs.workers == w
            return sorted(set((recs.mode_steps if m else recs.steps)[sel].tolist()))
        return list(self._index_map(m, w))

    def prev_steps(
        self, step: int, n: int | None = None, mode: ModeKeys | str | None = None
    ) -> list[int]:
        """SageMaker Debugger's ``prev_steps``: the saved steps up to and including ``step``
        (the last ``n`` of them when ``n`` is given)."""
        steps = [s for s in self.steps(mode) if s <= int(step)]
        return steps[-int(n) :] if n else steps

    def shape(
        self, step_num: int, mode: ModeKeys | str | None = None, worker: str | None = None
    ) -> tuple[int, ...]:
        """The shape of the value at a step (SageMaker Debugger's ``shape``);
        ShapeUnavailableForStep (a TensorUnavailableForStep) where it was not saved."""
        try:
            return tuple(self.value(step_num, mode, worker).shape)
        except TensorUnavailableForStep as exc:
            raise ShapeUnavailableForStep(exc.tensor_name, exc.step, exc.mode, exc.hint) from None

    def value(
        self,
        step_num: int,
        mode: ModeKeys | str | None = None,
        worker: str | None = None,
    ) -> np.ndarray:
        """The tensor at a step, as a new numpy array."""
        m = _mode_arg(mode)
        mapping = self._index_map(m, self._worker_index(worker))
        i = mapping.get(int(step_num))
        if i is None:
            raise self._not_saved(int(step_num), m, _saved_hint(list(mapping)))
        recs = self._records()
        value = recs.value(i)
        return value if getattr(recs, "fresh_values", False) else np.array(value)

    def values(
        self, mode: ModeKeys | str | None = None, worker: str | None = None
    ) -> dict[int, np.ndarray]:
        """Every saved value: {step: array}, steps as in :meth:`steps`.

        The arrays are read-only, and views of the run's bytes where the layout allows (no
        copy): reading every value of a run costs one pass over its files. For an array to
        change, use :meth:`value` (a new array) or ``np.array(v)``."""
        m = _mode_arg(mode)
        mapping = self._index_map(m, self._worker_index(worker))
        recs = self._records()
        idx = np.fromiter(mapping.values(), dtype=np.int64, count=len(mapping))
        stacked = _stacked(recs, idx)
        if stacked is not None:
            from .native import split_stacked

            return dict(zip(mapping, split_stacked(_read_only(stacked))))
        return dict(zip(mapping, (_read_only(a) for a in recs.values(idx))))

    def workers(self, step_num: int, mode: ModeKeys | str | None = None) -> list[str]:
        """The workers that saved this tensor at a step; as SageMaker Debugger,
        TensorUnavailableForStep where none did (StepUnavailable for a step the run does not
        have)."""
        m = _mode_arg(mode)
        recs = self._records()
        valid = self._valid()
        sel = (recs.mode_steps[valid] if m else recs.steps[valid]) == int(step_num)
        if m:
            sel &= recs.modes[valid] == int(m)
        names = self.run._backend.workers()
        found = [names[w] for w in sorted(set(recs.workers[valid][sel].tolist()))]
        if not found:
            hint = _saved_hint(list(self._index_map(m, None)))
            raise self._not_saved(int(step_num), m, hint)
        return found

    def series(
        self,
        mode: ModeKeys | str | None = None,
        worker: str | None = None,
        *,
        all_workers: bool = False,
    ) -> Series:
        """Values in step order for vectorised reading; ``all_workers`` keeps every shard's."""
        m = _mode_arg(mode)
        recs = self._records()
        if all_workers:
            valid = self._valid()
            if m is not None:
                valid = valid[recs.modes[valid] == int(m)]
            step_arr = recs.mode_steps if m else recs.steps
            idx = valid[np.lexsort((recs.workers[valid], step_arr[valid]))]
        else:
            idx = np.fromiter(
                self._index_map(m, self._worker_index(worker)).values(), dtype=np.int64
            )
        steps = (recs.mode_steps if m else recs.steps)[idx]
        stacked = _stacked(recs, idx)
        return Series(
            self.name,
            m,
            steps.astype(np.int64),
            recs.steps[idx].astype(np.int64),
            recs.modes[idx],
            recs.workers[idx],
            None if stacked is not None else recs.values(idx),
            stacked=stacked,
        )

    def has_reduction(self, reduction: str, abs: bool = False) -> bool:
        """The run holds a stored reduction of this tensor (``"abs_mean"``: ``"mean"`` with
        ``abs=True``)."""
        from .names import reduction_tensor_name, split_abs

        return self.run.has_tensor(reduction_tensor_name(self.name, *split_abs(reduction, abs)))

    def reduction_value(
        self,
        step_num: int,
        reduction_name: str,
        mode: ModeKeys | str | None = None,
        worker: str | None = None,
        abs: bool = False,
    ) -> np.ndarray:
        """A reduction (min, max, mean, std, variance, sum, l1, l2, positive_fraction, ...)
        at a step: the stored one when the run holds it, else computed from the full value.
        ``"abs_mean"`` (the stored name's spelling) is ``"mean"`` with ``abs=True``."""
        from .names import compute_reduction, reduction_tensor_name, split_abs

        reduction_name, abs = split_abs(reduction_name, abs)
        stored = reduction_tensor_name(self.name, reduction_name, abs)
        if self.run.has_tensor(stored):
            return self.run.tensor(stored).value(step_num, mode, worker)
        return compute_reduction(self.value(step_num, mode, worker), reduction_name, abs)

    def reduction_values(
        self,
        step_num: int,
        mode: ModeKeys | str | None = None,
        worker: str | None = None,
    ) -> dict[tuple[str, bool], np.ndarray]:
        """Every reduction of this tensor stored at a step, as SageMaker Debugger's
        ``reduction_values``: {(reduction name, abs): value}; {} when none is stored there
        (StepUnavailable for a step the run does not have)."""
        m = _mode_arg(mode)
        if not self.run._has_step(int(step_num), m):
            raise self.run._step_error(int(step_num), m)
        out: dict[tuple[str, bool], np.ndarray] = {}
        for name, reduction, absolute in self.run._reductions_of(self.name):
            tensor = self.run.tensor(name)
            if int(step_num) in tensor._index_map(m, tensor._worker_index(worker)):
                out[(reduction, absolute)] = tensor.value(step_num, mode, worker)
        return out


class ReducedTensor(Tensor):
    """A tensor stored only as reductions (e.g. ``smdebug/reductions/l2/gradient/x`` for
    ``gradient/x``), as SageMaker Debugger presents it: it has the steps at which any of its
    reductions is stored and :meth:`reduction_value` reads them; a full value is never
    available, so :meth:`value`, :meth:`values` and :meth:`series` raise
    TensorUnavailableForStep naming the stored reductions."""

    def __init__(self, run: Run, name: str, stored: list[str]) -> None:
        super().__init__(run, name)
        self._made_at = run._generation
        self.stored = sorted(stored)
        labels = []
        for n in self.stored:
            parsed = parse_reduction_name(n)
            assert parsed is not None
            labels.append((("abs_" if parsed[2] else "") + parsed[1], parsed[1], parsed[2]))
        #: the stored reductions, as "l2", "abs_mean", ...
        self.reductions = sorted({label for label, _r, _a in labels})
        plain = sorted((r, a) for _l, r, a in labels)
        red, absolute = plain[0] if plain else ("l2", False)
        call = f"reduction_value(step, {red!r}{', abs=True' if absolute else ''})"
        self._hint = f"only reductions are stored for it: {', '.join(self.reductions)}; use {call}"

    def __repr__(self) -> str:
        return f"ReducedTensor({self.name!r}, reductions={self.reductions})"

    def _generation_ok(self) -> bool:
        return self._made_at == self.run._generation

    def _index_map(self, mode: ModeKeys | None, worker: int | None) -> dict[int, int]:
        """{step: -1} for every step at which any stored reduction is saved."""
        steps: set[int] = set()
        for n in self.stored:
            steps.update(self.run.tensor(n)._index_map(mode, worker))
        return dict.fromkeys(sorted(steps), -1)

    def value(
        self,
        step_num: int,
        mode: ModeKeys | str | None = None,
        worker: str | None = None,
    ) -> np.ndarray:
        """Never available: raises TensorUnavailableForStep (StepUnavailable for a step the
        run does not have) naming the stored reductions."""
        raise self._not_saved(int(step_num), _mode_arg(mode), self._hint)

    def _no_values(self, mode: ModeKeys | str | None, worker: str | None) -> None:
        m = _mode_arg(mode)
        steps = list(self._index_map(m, self._worker_index(worker)))
        if steps:
            raise TensorUnavailableForStep(self.name, steps[0], m, hint=self._hint)

    def values(
        self, mode: ModeKeys | str | None = None, worker: str | None = None
    ) -> dict[int, np.ndarray]:
        """Raises TensorUnavailableForStep (only reductions are stored); {} with no step."""
        self._no_values(mode, worker)
        return {}

    def series(
        self,
        mode: ModeKeys | str | None = None,
        worker: str | None = None,
        *,
        all_workers: bool = False,
    ) -> Series:
        """Raises TensorUnavailableForStep: read ``run.tensor(stored_name).series()``."""
        self._no_values(mode, worker)
        empty = np.zeros(0, np.int64)
        return Series(self.name, _mode_arg(mode), empty, empty, np.zeros(0, np.uint8), empty, [])

    def workers(self, step_num: int, mode: ModeKeys | str | None = None) -> list[str]:
        """The workers that saved a reduction of this tensor at a step (TensorUnavailableForStep
        where none did)."""
        found: set[str] = set()
        for n in self.stored:
            try:
                found.update(self.run.tensor(n).workers(step_num, mode))
            except TensorUnavailableForStep:
                continue  # this reduction is not stored there; another may be
        if not found:
            raise self._not_saved(int(step_num), _mode_arg(mode), self._hint)
        return sorted(found, key=self.run._backend.workers().index)

    def reduction_value(
        self,
        step_num: int,
        reduction_name: str,
        mode: ModeKeys | str | None = None,
        worker: str | None = None,
        abs: bool = False,
    ) -> np.ndarray:
        """The stored reduction at a step; TensorUnavailableForStep when that one is not
        stored (it cannot be computed: there is no full value)."""
        from .names import reduction_tensor_name, split_abs

        reduction_name, abs = split_abs(reduction_name, abs)
        stored = reduction_tensor_name(self.name, reduction_name, abs)
        if self.run.has_tensor(stored):
            return self.run.tensor(stored).value(step_num, mode, worker)
        label = ("abs_" if abs else "") + reduction_name
        raise TensorUnavailableForStep(
            self.name,
            int(step_num),
            _mode_arg(mode),
            hint=f"its {label} reduction is not stored; {self._hint}",
        )


def _read_only(a: np.ndarray) -> np.ndarray:
    """``a`` itself when already read-only, else a read-only view of it (no copy)."""
    if not a.flags.writeable:
        return a
    view = a.view()
    view.flags.writeable = False
    return view


def _stacked(recs, idx: np.ndarray) -> np.ndarray | None:
    """The backend's stacked fast path, when it has one."""
    fn = getattr(recs, "stacked", None)
    return fn(idx) if fn is not None and len(idx) else None


def _mode_arg(mode: ModeKeys | str | int | None) -> ModeKeys | None:
    m = parse_mode(mode)
    return None if m is ModeKeys.GLOBAL else m


def _saved_hint(steps: list[int]) -> str:
    if not steps:
        return "it was saved at no step in that mode"
    if len(steps) <= 8:
        return f"it was saved at steps {steps}"
    return f"it was saved at {len(steps)} steps from {steps[0]} to {steps[-1]}"


class Run:
    """A recorded training run (SageMaker Debugger's "trial"), in any supported layout."""

    def __init__(
        self,
        backend: Backend,
        name: str | None = None,
        range_steps: tuple[int | None, int | None] | None = None,
    ) -> None:
        self._backend = backend
        self.path = backend.location
        self.name = name or _default_name(backend.location)
        #: (first, end): only global steps ``first <= step < end`` are read (either may be
        #: None: unbounded); SageMaker Debugger's ``create_trial(range_steps=...)``
        self.range_steps = _check_range_steps(range_steps)
        self._generation = 0
        self._tensors: dict[str, Tensor] = {}
        self._index()

    def __repr__(self) -> str:
        limit = "" if self.range_steps is None else f", range_steps={self.range_steps!r}"
        return f"Run({self.path!r}, layout={self.layout!r}, steps={len(self._complete)}{limit})"

    def _in_range(self, steps: np.ndarray) -> np.ndarray:
        """Which of these global steps ``range_steps`` keeps (all of them without one)."""
        keep = np.ones(len(steps), bool)
        if self.range_steps is not None:
            first, end = self.range_steps
            if first is not None:
                keep &= steps >= first
            if end is not None:
                keep &= steps < end
        return keep

    def _step_in_range(self, step: int) -> bool:
        """Whether ``range_steps`` keeps global step ``step``."""
        return bool(self._in_range(np.array([step]))[0])

    # -- internal step index -------------------------------------------------------------------

    def _index(self) -> None:
        self._check_names()
        table = self._backend.step_table()
        need = self._backend.num_workers()
        if len(table.steps):
            uniq, first, counts = np.unique(table.steps, return_index=True, return_counts=True)
            # distinct workers per step: rows are unique per (worker, step) in every layout
            done = counts >= need
            # past the range's end no step will be read (has_passed_step's "never")
            self._range_closed = bool(
                self.range_steps is not None
                and self.range_steps[1] is not None
                and (uniq[done] >= self.range_steps[1] - 1).any()
            )
            done &= self._in_range(uniq)
            self._complete = uniq[done]
            rows = first[done]
            self._modes = table.modes[rows].astype(np.uint8)
            self._mode_steps = table.mode_steps[rows].astype(np.int64)
            self._wall_rows = rows
        else:
            self._range_closed = False
            self._complete = np.zeros(0, np.int64)
            self._modes = np.zeros(0, np.uint8)
            self._mode_steps = np.zeros(0, np.int64)
            self._wall_rows = np.zeros(0, np.int64)
        # wall times are read on first use (SageMaker Debugger keeps them in the event files)
        self._walls_cache: np.ndarray | None = None
        self._reduced_cache: dict[str, list[str]] | None = None
        self._mode_lookup: dict[int, dict[int, int]] = {}
        for m in np.unique(self._modes):
            sel = self._modes == m
            self._mode_lookup[int(m)] = dict(
                zip(self._mode_steps[sel].tolist(), self._complete[sel].tolist())
            )
        # step lists answered by steps(): computed once per refresh, copied per call
        self._steps_of: dict[int, list[int]] = {
            m: sorted(lookup) for m, lookup in self._mode_lookup.items()
        }
        self._global_list = self._complete.tolist()
        self._generation += 1

    def _check_names(self) -> None:
        """Refuse a tensor or collection name with a control character or a lone surrogate
        (names.UNPRINTABLE): no writer makes one, and names reach CI logs, where a newline
        could start a line of the CI system's own commands. One search a refresh."""
        for what, names in (
            ("tensor", self._backend.tensor_names()),
            ("collection", list(self._backend.collections())),
        ):
            bad = unprintable_name(names)
            if bad is not None:
                raise CorruptRunError(
                    self.path,
                    f"{what} name {bad!r} holds a control character or a lone surrogate: no "
                    "writer makes such a name, and it would reach CI logs as it is",
                )

    @property
    def _walls(self) -> np.ndarray:
        """Wall time of each complete step, asked of the backend once per refresh."""
        if self._walls_cache is None:
            self._walls_cache = np.asarray(
                self._backend.wall_times(self._wall_rows), dtype=np.float64
            )
        return self._walls_cache

    def _reduced_only(self) -> dict[str, list[str]]:
        """{base name: its stored reduction tensors} for the tensors stored only as
        reductions (no full value at any step); computed once per refresh."""
        if self._reduced_cache is None:
            names = self._backend.tensor_names()
            out: dict[str, list[str]] = {}
            parsed = [(n, parse_reduction_name(n)) for n in names]
            full = {n for n, p in parsed if p is None}
            for n, p in parsed:
                if p is not None and p[0] not in full:
                    out.setdefault(p[0], []).append(n)
            self._reduced_cache = out
        return self._reduced_cache

    def _reductions_of(self, base: str) -> list[tuple[str, str, bool]]:
        """(stored name, reduction, abs) of every stored reduction of tensor ``base``."""
        found = []
        for name in self._backend.tensor_names():
            parsed = parse_reduction_name(name)
            if parsed is not None and parsed[0] == base:
                found.append((name, parsed[1], parsed[2]))
        return sorted(found)

    def _has_step(self, step: int, mode: ModeKeys | None) -> bool:
        if mode is None:
            pos = int(np.searchsorted(self._complete, step))
            return pos < len(self._complete) and int(self._complete[pos]) == step
        return step in self._mode_lookup.get(int(mode), {})

    def _step_error(self, step: int, mode: ModeKeys | None) -> StepUnavailable:
        """The error for a step the run does not have, as SageMaker Debugger tells them apart:
        past the last saved step NoMoreData once the run has ended, else StepNotYetAvailable
        (both StepUnavailable); a gap or a negative step StepUnavailable."""
        steps = self.steps(mode)
        hint = self._steps_hint(mode)
        if self.range_steps is not None:
            hint += f" within range_steps={self.range_steps!r}"
            if mode is None and not self._step_in_range(step):
                return StepUnavailable(step, mode, hint=f"{hint}, which leaves it out")
            if self._range_closed and step > (steps[-1] if steps else -1):
                return NoMoreData(step, mode, hint=f"{hint}, whose last step has been written")
        if step > (steps[-1] if steps else -1):
            if self.has_ended:
                return NoMoreData(step, mode, hint=f"{hint}; the run has ended")
            return StepNotYetAvailable(step, mode, hint=f"{hint}; the run has not ended")
        return StepUnavailable(step, mode, hint=hint)

    def _steps_hint(self, mode: ModeKeys | None) -> str:
        steps = self.steps(mode)
        what = "global steps" if mode is None else f"{mode.name} steps"
        if not steps:
            return f"it has no {what} at all"
        return f"its {what} run from {steps[0]} to {steps[-1]} ({len(steps)} saved)"

    # -- SageMaker Debugger trial API ----------------------------------------------------------

    @property
    def layout(self) -> str:
        """ "native" or "smdebug"."""
        return self._backend.layout

    def refresh(self) -> None:
        """Pick up what a training job still running has written since the run was opened."""
        self._backend.refresh()
        self._index()

    def steps(
        self, mode: ModeKeys | str | None = None, show_incomplete_steps: bool = False
    ) -> list[int]:
        """Saved steps: mode steps for a mode, global steps for GLOBAL or None."""
        m = _mode_arg(mode)
        if show_incomplete_steps:
            table = self._backend.step_table()
            sel = self._in_range(table.steps)
            if m is not None:
                sel &= table.modes == int(m)
            arr = table.mode_steps[sel] if m else table.steps[sel]
            return sorted(set(arr.tolist()))
        if m is None:
            return list(self._global_list)
        return list(self._steps_of.get(int(m), ()))

    @property
    def last_complete_step(self) -> int:
        """The last global step every worker has written (SageMaker Debugger's attribute; -1
        before any). A step only some workers wrote is never read, even after the end (where
        smdebug would read it): it stays out here too."""
        return int(self._complete[-1]) if len(self._complete) else -1

    def has_passed_step(self, step: int, mode: ModeKeys | str | None = None) -> StepState:
        """Whether ``step`` (a mode step for a mode, else global) can be read, as SageMaker
        Debugger's ``has_passed_step`` answers from what was read at the last refresh:
        AVAILABLE when every worker wrote it, UNAVAILABLE when it never will be (the run has
        ended without it, or every worker is past it without it; a step only some workers
        wrote before the end is not read, where smdebug would read it), else
        NOT_YET_AVAILABLE. Call :meth:`refresh` first to see new steps, or use
        :meth:`wait_for_steps`."""
        m = _mode_arg(mode)
        step = int(step)
        if self._has_step(step, m):
            return StepState.AVAILABLE
        if self._range_closed or (m is None and not self._step_in_range(step)):
            return StepState.UNAVAILABLE  # range_steps leaves it out, or no later step is read
        ended = self.has_ended
        if step in self.steps(m, show_incomplete_steps=True):  # some workers wrote it
            return StepState.UNAVAILABLE if ended else StepState.NOT_YET_AVAILABLE
        complete = self.steps(m)
        if ended or (complete and complete[-1] > step):
            return StepState.UNAVAILABLE  # every worker is past it: it was not saved
        return StepState.NOT_YET_AVAILABLE

    def wait_for_steps(
        self,
        required_steps: Iterable[int],
        mode: ModeKeys | str | None = None,
        *,
        timeout: float | None = None,
        poll_interval: float = 2.0,
    ) -> None:
        """Wait until every one of ``required_steps`` can be read (SageMaker Debugger's
        ``wait_for_steps``), refreshing the run every ``poll_interval`` seconds. A step that
        never will be raises StepUnavailable, or NoMoreData when the run has ended before
        it; ``timeout`` (seconds, None: wait as long as the run is written, as smdebug does)
        raises StepNotYetAvailable."""
        m = _mode_arg(mode)
        deadline = None if timeout is None else time.monotonic() + float(timeout)
        self.refresh()
        for step in required_steps:
            while True:
                state = self.has_passed_step(step, m)
                if state is StepState.AVAILABLE:
                    break
                if state is StepState.UNAVAILABLE:
                    raise self._step_error(int(step), m)
                if deadline is not None and time.monotonic() >= deadline:
                    raise StepNotYetAvailable(
                        int(step),
                        m,
                        hint=f"{self._steps_hint(m)}; still not written after {timeout} s",
                    )
                time.sleep(poll_interval)
                self.refresh()

    def modes(self) -> list[ModeKeys]:
        """The modes that have at least one saved step."""
        return [ModeKeys(int(m)) for m in sorted(self._mode_lookup)]

    def mode(self, global_step: int) -> ModeKeys:
        """The mode a global step belongs to."""
        pos = np.searchsorted(self._complete, global_step)
        if pos >= len(self._complete) or self._complete[pos] != global_step:
            raise StepUnavailable(global_step, hint=self._steps_hint(None))
        return ModeKeys(int(self._modes[pos]))

    def mode_step(self, global_step: int) -> int:
        """The mode step of a global step."""
        pos = np.searchsorted(self._complete, global_step)
        if pos >= len(self._complete) or self._complete[pos] != global_step:
            raise StepUnavailable(global_step, hint=self._steps_hint(None))
        return int(self._mode_steps[pos])

    def global_step(self, mode: ModeKeys | str, mode_step: int) -> int:
        """The global step of a mode step."""
        m = parse_mode(mode, allow_none=False)
        if m is ModeKeys.GLOBAL:
            return int(mode_step)
        try:
            return self._mode_lookup[int(m)][int(mode_step)]
        except KeyError:
            raise StepUnavailable(mode_step, m, hint=self._steps_hint(m)) from None

    def wall_time(self, global_step: int) -> float:
        """When a step was written (seconds since the epoch; NaN when the run has no wall
        time for it). Read from the backend on first use, then cached until a refresh."""
        pos = np.searchsorted(self._complete, global_step)
        if pos >= len(self._complete) or self._complete[pos] != global_step:
            raise StepUnavailable(global_step, hint=self._steps_hint(None))
        return float(self._walls[pos])

    def step_table(self) -> dict[str, np.ndarray]:
        """Complete global steps with their mode, mode step and wall time, as arrays."""
        return {
            "step": self._complete.copy(),
            "mode": self._modes.copy(),
            "mode_step": self._mode_steps.copy(),
            "wall_time": self._walls.copy(),
        }

    def workers(self) -> list[str]:
        return self._backend.workers()

    @property
    def num_workers(self) -> int:
        return self._backend.num_workers()

    @property
    def has_ended(self) -> bool:
        """The training job marked its end (no more steps will come)."""
        return self._backend.has_ended()

    # smdebug spelling
    @property
    def loaded_all_steps(self) -> bool:
        return self.has_ended

    def training_ended(self) -> bool:
        return self.has_ended

    @property
    def end_info(self) -> dict[str, Any]:
        """What the end markers say: e.g. the reason a RuleMonitor stopped training."""
        return self._backend.end_info()

    @property
    def metadata(self) -> dict[str, Any]:
        """What the training job stored: class names, recipe, anything JSON."""
        return self._backend.metadata()

    @property
    def class_names(self) -> list[str] | None:
        """Class names from the metadata (``class_names``), if the job stored them."""
        names = self.metadata.get("class_names")
        if isinstance(names, list) and all(isinstance(n, str) for n in names):
            return [printable(n) for n in names]  # shown in messages: no control characters
        return None

    def collections(self) -> dict[str, Collection]:
        return {n: Collection(n, i) for n, i in self._backend.collections().items()}

    def collection(self, name: str) -> Collection:
        cols = self._backend.collections()
        if name not in cols:
            raise KeyError(f"the run has no collection {name!r}; it has {sorted(cols)}")
        return Collection(name, cols[name])

    def tensor_names(
        self,
        regex: str | Iterable[str] | None = None,
        collection: str | Collection | Iterable[str] | None = None,
        *,
        step: int | None = None,
        mode: ModeKeys | str | None = None,
    ) -> list[str]:
        """Tensor names, filtered by regex (``re.search``; a list is a union), collection(s),
        and optionally only those saved at a step."""
        names = self._backend.tensor_names()
        if collection is not None:
            wanted: set[str] = set()
            cols = self._backend.collections()
            targets = (
                [collection] if isinstance(collection, (str, Collection)) else list(collection)
            )
            for c in targets:
                cname = c.name if isinstance(c, Collection) else c
                info = cols.get(cname)
                if info is None:
                    continue
                wanted.update(info.get("tensor_names", []))
                patt = _regex_union(
                    info.get("include_regex") or None,
                    f"collection {cname!r} of run {self.path} (its include_regex)",
                )
                if patt is not None:  # a stored reduction belongs where its tensor does
                    wanted.update(n for n in names if patt.search(_reduced_tensor(n)))
            names = [n for n in names if n in wanted]
        patt = _regex_union(regex)
        if patt is not None:
            names = [n for n in names if patt.search(n)]
        if step is not None:
            names = [
                n for n in names if int(step) in self.tensor(n)._index_map(_mode_arg(mode), None)
            ]
        return sorted(names)

    def has_tensor(self, name: str, *, reductions_only: bool = False) -> bool:
        """The run stores ``name`` (a full tensor, or a reduction tensor by its own name).

        With ``reductions_only=True`` a tensor of which only reductions are stored counts
        too (SageMaker Debugger's ``has_tensor``): :meth:`tensor` opens it either way. The
        default stays "stored under this name", which the built-in rules rely on to mean
        "the full value can be read"."""
        if name in self._backend.tensor_names():
            return True
        return reductions_only and name in self._reduced_only()

    def reduced_tensor_names(self) -> list[str]:
        """Base names of the tensors stored only as reductions (``gradient/fc.weight`` when
        the run holds ``smdebug/reductions/l2/gradient/fc.weight`` and no full value)."""
        return sorted(self._reduced_only())

    def tensor(self, name: str) -> Tensor:
        """A tensor by exact name; TensorUnavailable (with close names) when absent.

        A tensor stored only as reductions opens too, as in SageMaker Debugger: its steps are
        those of its reductions, ``reduction_value`` reads them, ``value`` explains."""
        found = self._tensors.get(name)
        if found is not None and found._generation_ok():
            return found
        reduced = None if self.has_tensor(name) else self._reduced_only().get(name)
        if reduced is not None:
            tensor = self._tensors[name] = ReducedTensor(self, name, reduced)
            return tensor
        if not self.has_tensor(name):
            import difflib

            close = difflib.get_close_matches(name, self._backend.tensor_names(), n=3)
            hint = (
                f"did you mean {', '.join(map(repr, close))}?"
                if close
                else (f"it holds {len(self._backend.tensor_names())} tensors")
            )
            raise TensorUnavailable(name, hint)
        tensor = self._tensors[name] = Tensor(self, name)
        return tensor


def _default_name(location: str) -> str:
    text = location.rstrip("/\\")
    base = re.split(r"[/\\]", text)[-1] or text
    return base


def detect_layout(location: str, storage=None) -> str:
    """ "native" or "smdebug", from the files at ``location``."""
    from . import layout
    from .fs import Storage

    st = storage or Storage(location)
    if st.exists(st.join(layout.RUN_FILE)):
        return "native"
    for marker in ("index", "events", "collections", "training_job_end.ts"):
        if st.exists(st.join(marker)):
            return "smdebug"
    if not st.exists(st.root):
        raise RunNotFoundError(f"{location}: no such file or folder")
    raise RunNotFoundError(
        f"{location}: neither a pytest-modelrules run (run.json) nor a SageMaker Debugger run "
        "(index/, events/, collections/)"
    )


def _check_range_steps(value: Any) -> tuple[int | None, int | None] | None:
    """``range_steps`` as SageMaker Debugger takes it: None, or ``(first, end)`` with either
    None; ``first <= step < end``."""
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 2:
        raise ValueError(f"range_steps must be (first, end), either of them None, got {value!r}")
    bounds: list[int | None] = []
    for bound in value:
        if bound is not None and (isinstance(bound, bool) or not isinstance(bound, Integral)):
            raise ValueError(f"range_steps bounds must be integers or None, got {value!r}")
        bounds.append(None if bound is None else int(bound))
    first, end = bounds
    if first is not None and end is not None and end < first:
        raise ValueError(f"range_steps={value!r}: the end is before the first step")
    return first, end


def open_run(
    path: str | os.PathLike | Run,
    *,
    name: str | None = None,
    storage_options: dict[str, Any] | None = None,
    layout: str | None = None,
    range_steps: tuple[int | None, int | None] | None = None,
) -> Run:
    """Open a run (native or SageMaker Debugger layout, detected) from a folder or fsspec URL.
    ``range_steps=(first, end)`` reads only the global steps ``first <= step < end`` (either
    bound None: open), as SageMaker Debugger's ``create_trial`` does.

    Loading never executes code from the run: see docs/security.md.
    """
    if isinstance(path, Run):
        if range_steps is not None:
            raise ValueError("range_steps applies when a run is opened, not to an open Run")
        return path
    range_steps = _check_range_steps(range_steps)
    from .fs import Storage, is_url

    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(
            f"a run is a path, an fsspec URL or an open Run, got {type(path).__name__}"
            + (" (no run given?)" if path is None else "")
        )
    location = os.fspath(path)
    try:
        storage = Storage(location, storage_options)
        kind = layout or detect_layout(location, storage)
    except ModelRulesError:
        raise
    except Exception as exc:
        if not is_url(location):
            raise
        # an unknown protocol, missing credentials, an unreachable server: said with the URL
        # (fsspec and its backends raise their own types)
        raise RunNotFoundError(
            f"{location}: cannot be opened ({type(exc).__name__}: {exc})"
        ) from exc
    if kind == "native":
        from .native import NativeBackend

        backend: Backend = NativeBackend(location, storage)
    elif kind == "smdebug":
        from .smdebug import SMDebugBackend

        backend = SMDebugBackend(location, storage)
    else:
        raise ValueError(f"unknown layout {kind!r}: expected 'native' or 'smdebug'")
    return Run(backend, name=name, range_steps=range_steps)


def create_trial(
    path: str | os.PathLike,
    name: str | None = None,
    range_steps: tuple[int | None, int | None] | None = None,
    check: bool = False,
    index_mode: bool = True,
    cache: bool = False,
    parallel: bool = True,
    **kwargs: Any,
) -> Run:
    """SageMaker Debugger's name for :func:`open_run`, with its keywords: ``range_steps`` as
    there; ``check`` (verify checksums: both readers always do), ``index_mode`` (read the
    index files: the smdebug-layout reader always does, and reads every event file's values
    from them), ``cache`` (keep values read: values are kept until a refresh) and
    ``parallel`` (read event files in several processes: one reads them fast enough) are
    accepted so that smdebug code runs unchanged, and change nothing."""
    del check, index_mode, cache, parallel
    return open_run(path, name=name, range_steps=range_steps, **kwargs)
