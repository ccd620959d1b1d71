"""Reader of the native layout (see docs/format.md and :mod:`.format`)."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import unquote

import numpy as np

from ..exceptions import CorruptRunError, RunNotFoundError
from . import layout
from .base import Backend, StepTable, TensorRecords
from .format import FORMAT_NAME, FORMAT_VERSION, RecordIndex, array_at, parse_file_header, parse_records
from .fs import Storage

MAX_JSON_BYTES = 64 << 20


def _load_json(storage: Storage, path: str) -> dict[str, Any]:
    try:
        raw = storage.read(path)
    except FileNotFoundError:
        raise
    if len(raw) > MAX_JSON_BYTES:
        raise CorruptRunError(path, f"JSON file of {len(raw)} bytes is larger than allowed")
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptRunError(path, f"invalid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise CorruptRunError(path, "expected a JSON object")
    return data


class _LogFile:
    """One append-only file of records, read incrementally."""

    def __init__(self, storage: Storage, path: str, expect_kind: str) -> None:
        self.storage = storage
        self.path = path
        self.expect_kind = expect_kind
        self.buf: bytes = b""
        self.header: dict[str, Any] | None = None
        self.data_offset = 0
        self.index: RecordIndex | None = None

    def update(self, commit_limit: int | None) -> bool:
        """Read what was appended; True when new records arrived."""
        try:
            size = self.storage.size(self.path)
        except FileNotFoundError:
            return False
        if size == len(self.buf) and self.index is not None:
            return False
        if size < len(self.buf):
            raise CorruptRunError(self.path, "file shrank while the run was being read")
        self.buf = self.storage.read(self.path)
        if self.header is None:
            parsed = parse_file_header(self.buf, self.path)
            if parsed is None:
                return False
            kind = parsed.fields.get("kind")
            if kind != self.expect_kind:
                raise CorruptRunError(self.path, f"file kind {kind!r}, expected {self.expect_kind!r}")
            name = parsed.fields.get("name")
            if not isinstance(name, str):
                raise CorruptRunError(self.path, "file header has no tensor name")
            self.header = parsed.fields
            self.data_offset = parsed.data_offset
        start = self.index.end if self.index is not None else self.data_offset
        new = parse_records(self.buf, self.path, start, commit_limit=commit_limit)
        if self.index is None:
            self.index = new
        elif len(new):
            old = self.index
            self.index = RecordIndex(
                np.concatenate([old.steps, new.steps]),
                np.concatenate([old.modes, new.modes]),
                np.concatenate([old.mode_steps, new.mode_steps]),
                np.concatenate([old.wall_times, new.wall_times]),
                np.concatenate([old.offsets, new.offsets]),
                old.dtypes + new.dtypes,
                old.shapes + new.shapes,
                new.end,
            )
        else:
            self.index.end = new.end
        return len(new) > 0


class NativeRecords(TensorRecords):
    """Records of one tensor across workers; values are views of the files' bytes."""

    def __init__(self, parts: list[tuple[int, _LogFile]]) -> None:
        self.parts = [(w, f) for w, f in parts if f.index is not None]
        idx = [f.index for _, f in self.parts]
        self.workers = np.concatenate(
            [np.full(len(i), w, np.int32) for (w, _), i in zip(self.parts, idx)] or [np.zeros(0, np.int32)]
        )
        self.steps = np.concatenate([i.steps for i in idx] or [np.zeros(0, np.int64)])
        self.modes = np.concatenate([i.modes for i in idx] or [np.zeros(0, np.uint8)])
        self.mode_steps = np.concatenate([i.mode_steps for i in idx] or [np.zeros(0, np.int64)])
        self._bounds = np.cumsum([0] + [len(i) for i in idx])

    def _locate(self, i: int) -> tuple[_LogFile, int]:
        part = int(np.searchsorted(self._bounds, i, side="right")) - 1
        return self.parts[part][1], i - int(self._bounds[part])

    def value(self, i: int) -> np.ndarray:
        log, j = self._locate(i)
        return array_at(log.buf, log.index, j)

    def shapes(self, indices: np.ndarray) -> list[tuple[int, ...]]:
        out = []
        for i in indices:
            log, j = self._locate(int(i))
            out.append(log.index.shapes[j])
        return out


class NativeBackend(Backend):
    """A run in the native layout, local or behind an fsspec URL."""

    layout = "native"

    def __init__(self, location: str, storage: Storage | None = None) -> None:
        super().__init__(location)
        self.storage = storage or Storage(location)
        run_file = self.storage.join(layout.RUN_FILE)
        if not self.storage.exists(run_file):
            raise RunNotFoundError(f"{location}: no {layout.RUN_FILE}, so not a pytest-modelrules run")
        info = _load_json(self.storage, run_file)
        if info.get("format") != FORMAT_NAME:
            raise CorruptRunError(run_file, f"format is {info.get('format')!r}, not {FORMAT_NAME!r}")
        version = info.get("version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise CorruptRunError(
                run_file,
                f"format version {version!r} is newer than this reader ({FORMAT_VERSION}); "
                "upgrade pytest-modelrules",
            )
        self.info = info
        self._workers: list[str] = []
        self._worker_info: dict[str, dict[str, Any]] = {}
        self._steps: dict[str, _LogFile] = {}
        self._ended: dict[str, dict[str, Any]] = {}
        self._tensor_files: dict[str, dict[str, str]] = {}  # name -> worker -> path
        self._logs: dict[str, _LogFile] = {}  # path -> log
        self._records: dict[str, NativeRecords] = {}
        self._table = StepTable.empty()
        self.refresh()

    # -- discovery -----------------------------------------------------------------------------

    def refresh(self) -> None:
        workers_dir = self.storage.join(layout.WORKERS_DIR)
        found = [w for w in self.storage.listdir(workers_dir) if layout.valid_worker_name(w)]
        for worker in found:
            wdir = self.storage.join(layout.WORKERS_DIR, worker)
            wfile = self.storage.join(layout.WORKERS_DIR, worker, layout.WORKER_FILE)
            try:
                winfo = _load_json(self.storage, wfile)
            except FileNotFoundError:
                continue  # a worker being created
            self._validate_worker(wfile, winfo)
            self._worker_info[worker] = winfo
            if worker not in self._steps:
                self._steps[worker] = _LogFile(
                    self.storage, self.storage.join(layout.WORKERS_DIR, worker, layout.STEPS_FILE), "steps"
                )
            if worker not in self._ended:
                end = self.storage.join(layout.WORKERS_DIR, worker, layout.END_FILE)
                if self.storage.exists(end):
                    self._ended[worker] = _load_json(self.storage, end)
            tdir = self.storage.join(layout.WORKERS_DIR, worker, layout.TENSORS_DIR)
            del wdir
            for fname in self.storage.listdir(tdir):
                if not fname.endswith(layout.TENSOR_SUFFIX) or fname.startswith("."):
                    continue
                path = self.storage.join(layout.WORKERS_DIR, worker, layout.TENSORS_DIR, fname)
                stem = fname[: -len(layout.TENSOR_SUFFIX)]
                if "~" in stem:  # hashed long name: the header knows the real one
                    log = self._logs.get(path) or _LogFile(self.storage, path, "tensor")
                    self._logs[path] = log
                    log.update(None)
                    if log.header is None:
                        continue
                    name = log.header["name"]
                else:
                    name = unquote(stem)
                self._tensor_files.setdefault(name, {})[worker] = path
        self._workers = sorted(self._worker_info, key=lambda w: (self._worker_info[w]["rank"], w))
        tables = []
        for widx, worker in enumerate(self._workers):
            log = self._steps[worker]
            log.update(None)
            if log.index is None:
                continue
            idx = log.index
            tables.append(
                StepTable(np.full(len(idx), widx, np.int32), idx.steps, idx.modes, idx.mode_steps, idx.wall_times)
            )
        self._table = StepTable.concat(tables)
        self._records.clear()

    @staticmethod
    def _validate_worker(path: str, info: dict[str, Any]) -> None:
        rank, num = info.get("rank"), info.get("num_workers")
        if not isinstance(rank, int) or not isinstance(num, int) or num < 1 or not 0 <= rank < num:
            raise CorruptRunError(path, f"invalid rank {rank!r} / num_workers {num!r}")
        for key in ("metadata", "collections"):
            if not isinstance(info.get(key, {}), dict):
                raise CorruptRunError(path, f"{key!r} must be a JSON object")

    def _last_committed(self, worker: str) -> int | None:
        log = self._steps.get(worker)
        if log is None or log.index is None or not len(log.index):
            return None
        return int(log.index.steps.max())

    # -- Backend API ---------------------------------------------------------------------------

    def workers(self) -> list[str]:
        return list(self._workers)

    def num_workers(self) -> int:
        declared = [info["num_workers"] for info in self._worker_info.values()]
        return max(declared + [len(self._workers), 1])

    def step_table(self) -> StepTable:
        return self._table

    def tensor_names(self) -> list[str]:
        return sorted(self._tensor_files)

    def tensor_records(self, name: str) -> NativeRecords:
        cached = self._records.get(name)
        if cached is not None:
            return cached
        files = self._tensor_files.get(name)
        if files is None:
            raise KeyError(name)
        parts = []
        for widx, worker in enumerate(self._workers):
            path = files.get(worker)
            if path is None:
                continue
            log = self._logs.get(path)
            if log is None:
                log = self._logs[path] = _LogFile(self.storage, path, "tensor")
            log.update(self._last_committed(worker))
            if log.header is not None and log.header.get("name") != name:
                raise CorruptRunError(path, f"file holds tensor {log.header.get('name')!r}, expected {name!r}")
            parts.append((widx, log))
        records = NativeRecords(parts)
        self._records[name] = records
        return records

    def collections(self) -> dict[str, dict[str, Any]]:
        merged: dict[str, dict[str, Any]] = {}
        for worker in self._workers:
            for cname, cinfo in self._worker_info[worker].get("collections", {}).items():
                if not isinstance(cinfo, dict):
                    continue
                entry = merged.setdefault(cname, {"name": cname, "tensor_names": [], "include_regex": []})
                names = set(entry["tensor_names"]) | {n for n in cinfo.get("tensor_names", []) if isinstance(n, str)}
                entry["tensor_names"] = sorted(names)
                for key, val in cinfo.items():
                    if key not in ("tensor_names", "name"):
                        entry[key] = val
        return merged

    def metadata(self) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        for worker in reversed(self._workers):  # rank 0 wins
            merged.update(self._worker_info[worker].get("metadata", {}))
        return merged

    def has_ended(self) -> bool:
        return bool(self._workers) and all(w in self._ended for w in self._workers)

    def end_info(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for worker in reversed(self._workers):
            out.update(self._ended.get(worker, {}))
        return out
