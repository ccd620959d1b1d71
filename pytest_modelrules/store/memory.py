"""In-memory runs: build a run with RunWriter's ``write()`` API and read it with the Run API.

Property tests and synthetic examples build thousands of small runs; writing each to disk
would cost more than the rule under test. :class:`MemoryRunBuilder` keeps every value in
memory with the same step semantics as :class:`~pytest_modelrules.store.writer.RunWriter`
(a write for a newer step commits the older one, readers see committed steps only, a step
counts once every worker committed it), and :meth:`MemoryRun.save` writes the run to disk
through RunWriter so that a failing example can be opened, plotted and shared.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..modes import ModeKeys
from . import layout
from .base import ArrayRecords, Backend, StepTable, merge_worker_collections
from .format import Fraction, fraction_values
from .run import Run
from .writer import check_end_reason, check_write, open_step, stored_value

#: wall time of global step 0 when none is given: a fixed epoch keeps built runs deterministic
BASE_WALL_TIME = 1_700_000_000.0


@dataclass
class _Record:
    step: int
    mode: int
    mode_step: int
    array: np.ndarray


@dataclass
class _WorkerState:
    name: str
    rank: int
    metadata: dict[str, Any]
    collections: dict[str, Any] = field(default_factory=dict)
    rows: list[tuple[int, int, int, float]] = field(default_factory=list)  # committed steps
    records: dict[str, list[_Record]] = field(default_factory=dict)  # committed values
    ended: dict[str, Any] | None = None


class MemoryWorkerWriter:
    """One worker's writer of an in-memory run: RunWriter's API and checks, no files."""

    def __init__(self, builder: MemoryRunBuilder, state: _WorkerState) -> None:
        self._builder = builder
        self._state = state
        self.worker = state.name
        self.rank = state.rank
        self.closed = False
        self._current: tuple[int, int, int, float] | None = None
        self._pending: dict[str, np.ndarray] = {}
        self._last_committed = -1
        self._mode_counts: dict[int, int] = {}

    @property
    def num_workers(self) -> int:
        return self._builder.num_workers

    def write(
        self,
        name: str,
        array: Any,
        step: int,
        mode: ModeKeys | str | int = ModeKeys.TRAIN,
        mode_step: int | None = None,
        wall_time: float | None = None,
    ) -> None:
        """Add ``array`` as tensor ``name`` at global ``step`` in ``mode`` (as RunWriter.write;
        a :class:`~.format.Fraction` is held as the float32 values a reader gives).

        ``wall_time`` defaults to ``BASE_WALL_TIME + step`` so that built runs are deterministic.
        """
        self._check_open()
        step, mode_key, new_step = check_write(
            name, step, mode, mode_step, self._current, self._last_committed
        )
        if new_step:
            self.end_step()
            wall = BASE_WALL_TIME + step if wall_time is None else float(wall_time)
            self._current = open_step(step, mode_key, mode_step, wall, self._mode_counts)
        if name in self._pending:
            raise ValueError(f"tensor {name!r} written twice at step {step}")
        value = stored_value(array)
        if isinstance(value, Fraction):  # held as what a reader of the record would give
            arr = fraction_values(*value.checked())
        else:
            arr = np.array(value, copy=True)
        arr.setflags(write=False)
        self._pending[name] = arr

    def end_step(self) -> None:
        """Commit the open step: from now on readers see it."""
        cur = self._current
        if cur is None:
            return
        st = self._state
        st.rows.append(cur)
        for name, arr in self._pending.items():
            st.records.setdefault(name, []).append(_Record(cur[0], cur[1], cur[2], arr))
        self._last_committed = cur[0]
        self._current = None
        self._pending = {}

    def update_metadata(self, values: dict[str, Any] | None = None, **more: Any) -> None:
        """Merge JSON-able values (class names, the recipe, ...) into the run's metadata."""
        self._check_open()
        self._state.metadata.update(copy.deepcopy(values or {}))
        self._state.metadata.update(copy.deepcopy(more))

    def set_collections(self, collections: dict[str, Any]) -> None:
        """Record which tensors belong to which collection (name -> {"tensor_names": [...]})."""
        self._check_open()
        self._state.collections = copy.deepcopy(dict(collections))

    @property
    def last_committed_step(self) -> int:
        return self._last_committed

    def sync(self) -> None:
        """Nothing to upload (RunWriter API)."""

    def close(self, reason: str | None = None) -> None:
        """Commit the last step and mark this worker ended (with an optional stop reason)."""
        if self.closed:
            return
        check_end_reason(reason)
        self.end_step()
        end: dict[str, Any] = {"last_step": self._last_committed}
        if reason:
            end["reason"] = reason
        self._state.ended = end
        self.closed = True

    def abort(self) -> None:
        """Drop the open step without marking the end (a worker that crashed)."""
        self._current = None
        self._pending = {}
        self.closed = True

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError("this writer is closed")

    def __enter__(self) -> MemoryWorkerWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class MemoryRunBuilder:
    """Build a run in memory; ``write()`` & co. act as worker 0's RunWriter.

    ``writer(name, rank)`` gives further workers of a distributed run. ``run()`` opens the
    run with the reader API (a live view: call ``run.refresh()`` after more writes, as for a
    run still being written on disk).
    """

    def __init__(
        self,
        name: str = "memory-run",
        worker: str = "worker_0",
        *,
        num_workers: int = 1,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        if num_workers < 1:
            raise ValueError(f"num_workers must be at least 1, got {num_workers}")
        self.name = name
        self.num_workers = num_workers
        self._metadata = dict(metadata or {})
        self._workers: dict[str, _WorkerState] = {}
        self._writers: dict[str, MemoryWorkerWriter] = {}
        self._main = self.writer(worker, rank=0)

    def writer(self, worker: str, rank: int | None = None) -> MemoryWorkerWriter:
        """The writer of a worker (created on first use with the next free rank)."""
        found = self._writers.get(worker)
        if found is not None:
            if rank is not None and rank != found.rank:
                raise ValueError(f"worker {worker!r} has rank {found.rank}, not {rank}")
            return found
        if not layout.valid_worker_name(worker):
            raise ValueError(f"worker name {worker!r}: use letters, digits, '-', '_' and '.'")
        rank = len(self._workers) if rank is None else int(rank)
        if not 0 <= rank < self.num_workers:
            raise ValueError(f"rank {rank} must lie in [0, num_workers={self.num_workers})")
        if any(s.rank == rank for s in self._workers.values()):
            raise ValueError(f"rank {rank} is already taken")
        state = _WorkerState(worker, rank, copy.deepcopy(self._metadata))
        self._workers[worker] = state
        writer = self._writers[worker] = MemoryWorkerWriter(self, state)
        return writer

    # worker 0's RunWriter API -------------------------------------------------------------------

    def write(
        self,
        name: str,
        array: Any,
        step: int,
        mode: ModeKeys | str | int = ModeKeys.TRAIN,
        mode_step: int | None = None,
        wall_time: float | None = None,
    ) -> None:
        """Worker 0's :meth:`MemoryWorkerWriter.write` (RunWriter.write's signature)."""
        self._main.write(name, array, step, mode, mode_step, wall_time)

    def end_step(self) -> None:
        self._main.end_step()

    def update_metadata(self, values: dict[str, Any] | None = None, **more: Any) -> None:
        """Merge values into every worker's metadata (and into workers created later)."""
        self._metadata.update(copy.deepcopy(values or {}))
        self._metadata.update(copy.deepcopy(more))
        for w in self._writers.values():
            if not w.closed:
                w.update_metadata(values, **more)

    def set_collections(self, collections: dict[str, Any]) -> None:
        self._main.set_collections(collections)

    def close(self, reason: str | None = None) -> None:
        """Close every worker's writer (all workers end)."""
        for w in self._writers.values():
            w.close(reason)

    def __enter__(self) -> MemoryRunBuilder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # reading --------------------------------------------------------------------------------------

    def run(self, name: str | None = None) -> MemoryRun:
        """Open what was committed so far with the Run API."""
        return MemoryRun(MemoryBackend(self), name=name or self.name)


class MemoryBackend(Backend):
    """The Backend of an in-memory run: a snapshot of a builder, renewed by ``refresh()``."""

    layout = "memory"

    def __init__(self, builder: MemoryRunBuilder) -> None:
        super().__init__(f"memory://{builder.name}")
        self._builder = builder
        self.refresh()

    def refresh(self) -> None:
        states = sorted(self._builder._workers.values(), key=lambda s: (s.rank, s.name))
        self._states = states
        self._workers = [s.name for s in states]
        tables = []
        for widx, st in enumerate(states):
            rows = list(st.rows)
            if not rows:
                continue
            steps, modes, mode_steps, walls = zip(*rows)
            tables.append(
                StepTable(
                    np.full(len(rows), widx, np.int32),
                    np.asarray(steps, np.int64),
                    np.asarray(modes, np.uint8),
                    np.asarray(mode_steps, np.int64),
                    np.asarray(walls, np.float64),
                )
            )
        self._table = StepTable.concat(tables)
        recs: dict[str, list[tuple[int, _Record]]] = {}
        for widx, st in enumerate(states):
            for name, lst in st.records.items():
                recs.setdefault(name, []).extend((widx, r) for r in lst)
        self._records: dict[str, ArrayRecords] = {}
        for name, items in recs.items():
            self._records[name] = ArrayRecords(
                np.asarray([w for w, _ in items], np.int32),
                np.asarray([r.step for _, r in items], np.int64),
                np.asarray([r.mode for _, r in items], np.uint8),
                np.asarray([r.mode_step for _, r in items], np.int64),
                [r.array for _, r in items],
            )
        self._names = sorted(set(self._records) | _pending_names(self._builder))
        self._metadata: dict[str, Any] = {}
        for st in reversed(states):  # rank 0 wins, as on disk
            self._metadata.update(copy.deepcopy(st.metadata))
        self._collections = merge_worker_collections([s.collections for s in states])
        self._ended = {s.name: dict(s.ended) for s in states if s.ended is not None}

    def workers(self) -> list[str]:
        return list(self._workers)

    def num_workers(self) -> int:
        return max(self._builder.num_workers, len(self._workers), 1)

    def step_table(self) -> StepTable:
        return self._table

    def tensor_names(self) -> list[str]:
        return list(self._names)

    def tensor_records(self, name: str) -> ArrayRecords:
        found = self._records.get(name)
        if found is not None:
            return found
        if name in self._names:  # written, not committed yet
            empty = np.zeros(0, np.int64)
            return ArrayRecords(np.zeros(0, np.int32), empty, np.zeros(0, np.uint8), empty, [])
        raise KeyError(name)

    def collections(self) -> dict[str, dict[str, Any]]:
        return copy.deepcopy(self._collections)

    def metadata(self) -> dict[str, Any]:
        return copy.deepcopy(self._metadata)

    def has_ended(self) -> bool:
        return bool(self._workers) and all(w in self._ended for w in self._workers)

    def end_info(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for w in reversed(self._workers):
            out.update(self._ended.get(w, {}))
        return out


def _pending_names(builder: MemoryRunBuilder) -> set[str]:
    names: set[str] = set()
    for w in builder._writers.values():
        names.update(w._pending)
    return names


class MemoryRun(Run):
    """A Run held in memory; :meth:`save` writes it to disk to debug a failing example."""

    _backend: MemoryBackend

    def save(self, path: str | os.PathLike) -> Run:
        """Write this run (every worker, committed step and value) as a native run at ``path``
        and return it opened from disk. ``path`` must not hold a run already."""
        from .run import open_run

        save_run(self, path)
        return open_run(path, name=self.name)


def save_run(run: Run, path: str | os.PathLike) -> None:
    """Write any run (in memory or opened from disk) to ``path`` in the native layout.

    Each worker's committed steps are written in order through RunWriter, keeping modes, mode
    steps, wall times, metadata, collections and end markers.
    """
    from .writer import RunWriter

    def make_writer(worker: str, rank: int, num: int, metadata: dict[str, Any]) -> Any:
        return RunWriter(path, worker, rank=rank, num_workers=num, metadata=metadata)

    _replay(run, make_writer, None, None)


def transform_run(
    run: Run,
    fn: Callable[[str, np.ndarray], np.ndarray | None] | None = None,
    *,
    add: Callable[[str, np.ndarray], Mapping[str, Any]] | None = None,
    name: str | None = None,
) -> MemoryRun:
    """A copy of ``run`` in memory with every value replaced by ``fn(tensor_name, array)``
    (None drops the value) and, at the same step, the tensors ``add(tensor_name, array)``
    returns ({name: array}). For metamorphic tests: scale the loss, permute class ids, store
    reductions beside (or instead of) the full tensors, ..."""
    builder = MemoryRunBuilder(name or run.name)
    builder._workers.clear()
    builder._writers.clear()

    def make_writer(worker: str, rank: int, num: int, metadata: dict[str, Any]) -> Any:
        builder.num_workers = num
        builder._metadata = dict(metadata)
        return builder.writer(worker, rank)

    _replay(run, make_writer, fn, add)
    return builder.run()


def _replay(
    run: Run,
    make_writer: Callable[[str, int, int, dict[str, Any]], Any],
    fn: Callable[[str, np.ndarray], np.ndarray | None] | None,
    add: Callable[[str, np.ndarray], Mapping[str, Any]] | None,
) -> None:
    backend = run._backend
    table = backend.step_table()
    workers = backend.workers()
    num = backend.num_workers()
    names = backend.tensor_names()
    records = {n: backend.tensor_records(n) for n in names}
    metadata = backend.metadata()
    collections = backend.collections()
    ended = backend.has_ended()
    reason = backend.end_info().get("reason")
    for widx, worker in enumerate(workers):
        writer = make_writer(worker, widx, num, metadata)
        if collections:
            writer.set_collections(collections)
        sel = np.nonzero(table.workers == widx)[0]
        by_step: dict[int, list[tuple[str, int]]] = {}
        for tname, rec in records.items():
            for i in np.nonzero(rec.workers == widx)[0]:
                by_step.setdefault(int(rec.steps[i]), []).append((tname, int(i)))
        for row in sel[np.argsort(table.steps[sel], kind="stable")]:
            step = int(table.steps[row])
            extra: dict[str, Any] = {}
            out: list[tuple[str, Any]] = []
            for tname, i in by_step.get(step, []):
                original = records[tname].value(i)
                value = original if fn is None else fn(tname, np.array(original))
                if value is not None:
                    out.append((tname, value))
                if add is not None:
                    extra.update(add(tname, np.array(original)))
            out.extend((k, v) for k, v in extra.items() if k not in dict(out))
            for tname, value in out:
                writer.write(
                    tname,
                    value,
                    step,
                    mode=int(table.modes[row]),
                    mode_step=int(table.mode_steps[row]),
                    wall_time=float(table.wall_times[row]),
                )
            writer.end_step()
        if ended:
            writer.close(reason)
        else:
            writer.abort()


def build_run(
    steps: Mapping[int, Mapping[str, Any]],
    *,
    modes: Mapping[int, ModeKeys | str] | ModeKeys | str = ModeKeys.TRAIN,
    metadata: dict[str, Any] | None = None,
    collections: dict[str, Any] | None = None,
    name: str = "memory-run",
    ended: bool = True,
) -> MemoryRun:
    """A one-worker run from ``{global_step: {tensor_name: array}}`` (steps in any order).

    ``modes`` is one mode for every step or ``{global_step: mode}``; mode steps are counted
    per mode as RunWriter counts them. Example::

        run = build_run({0: {"CrossEntropyLoss_output_0": np.float32(2.3)}, 1: {...}})
    """
    builder = MemoryRunBuilder(name, metadata=metadata)
    if collections:
        builder.set_collections(collections)
    for step in sorted(steps):
        mode = modes.get(step, ModeKeys.TRAIN) if isinstance(modes, Mapping) else modes
        tensors = steps[step]
        if not tensors:
            raise ValueError(f"step {step} has no tensors: a saved step holds at least one")
        for tname, value in tensors.items():
            builder.write(tname, value, step, mode=mode)
    if ended:
        builder.close()
    else:
        builder.end_step()
    return builder.run()


def run_differences(a: Run, b: Run, *, max_items: int = 20) -> list[str]:
    """What differs between two runs' contents (empty when they read back the same).

    Compares workers, complete steps with modes and mode steps, tensor names, every value of
    every worker (dtype, shape, bits; NaN equals NaN), metadata, collections and end state.
    """
    out: list[str] = []

    def diff(what: str, x: Any, y: Any) -> None:
        if x != y and len(out) < max_items:
            out.append(f"{what}: {x!r} != {y!r}")

    diff("workers", a.workers(), b.workers())
    diff("num_workers", a.num_workers, b.num_workers)
    ta, tb = a.step_table(), b.step_table()
    for key in ("step", "mode", "mode_step"):
        diff(f"step table {key}", ta[key].tolist(), tb[key].tolist())
    diff("modes", a.modes(), b.modes())
    diff("tensor names", a.tensor_names(), b.tensor_names())
    diff("metadata", a.metadata, b.metadata)
    diff(
        "collections",
        {k: sorted(v.tensor_names) for k, v in a.collections().items()},
        {k: sorted(v.tensor_names) for k, v in b.collections().items()},
    )
    diff("has_ended", a.has_ended, b.has_ended)
    diff("end reason", a.end_info.get("reason"), b.end_info.get("reason"))
    for name in sorted(set(a.tensor_names()) & set(b.tensor_names())):
        sa = a.tensor(name).series(all_workers=True)
        sb = b.tensor(name).series(all_workers=True)
        keys_a = list(zip(sa.global_steps.tolist(), sa.workers.tolist()))
        keys_b = list(zip(sb.global_steps.tolist(), sb.workers.tolist()))
        if keys_a != keys_b:
            diff(f"{name} (step, worker) records", keys_a, keys_b)
            continue
        for (step, worker), xa, xb in zip(keys_a, sa.arrays, sb.arrays):
            if xa.dtype != xb.dtype or xa.shape != xb.shape:
                diff(
                    f"{name} at step {step} worker {worker}",
                    (xa.dtype, xa.shape),
                    (xb.dtype, xb.shape),
                )
            elif not np.array_equal(xa, xb, equal_nan=xa.dtype.kind in "fc"):
                diff(f"{name} values at step {step} worker {worker}", xa.tolist(), xb.tolist())
    return out
