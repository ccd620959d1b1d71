"""Reader of SageMaker Debugger's layout (smdebug 1.0.x; /shared/SMDEBUG_FORMAT.md).

What it does better than smdebug's own reader:

- every dtype of TensorFlow's enum that numpy has reads back as itself (int8 stays int8;
  int16, uint16, uint32, uint64, complex work), strings read as str arrays;
- no sleep on the end marker, and no per-call O(steps) scan: steps and records live in
  numpy arrays that the Run indexes once per refresh;
- a refresh lists only the index folders that can still change (the newest one and any with
  a step not yet written by every worker), and reads only index files it has not read;
- index files are fetched concurrently from object stores; a value reads only its own byte
  range of its event file, so opening a run downloads no event file at all.

Every index file is still read once: the step table needs each step's mode, and only the
index files hold it (the event files hold it too, but are much larger).
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from ..exceptions import CorruptRunError, RunNotFoundError
from .base import Backend, StepTable, TensorRecords
from .fs import Storage
from .native import MAX_JSON_BYTES, parse_json_object
from .tfrecord import FramingError, decode_event, length_crc, unframe_record

END_MARKER = "training_job_end.ts"
INDEX_DIR = "index"
EVENTS_DIR = "events"
COLLECTIONS_DIR = "collections"
_INDEX_FILE = re.compile(r"^(\d{12})_(.+)\.json$")
_DIR9 = re.compile(r"^\d{9}$")
_EVENT_DIR = re.compile(r"^\d{12}$")
_EVENT_FILE = re.compile(r"^(\d{12})_([^/\\]+)\.tfevents$")
_COLLECTIONS_FILE = re.compile(r"^(.+)_collections\.json$")
_MODES = {"TRAIN": 1, "EVAL": 2, "PREDICT": 3, "GLOBAL": 4}
MAX_RECORD_BYTES = 1 << 40
#: an index file lists one entry per tensor of a step: 64 MiB is far beyond any real one
MAX_INDEX_BYTES = 64 << 20


#: a record's length (8), its CRC (4), then the Event's field 1 (wall_time): tag + double
_WALL_BYTES = 8 + 4 + 1 + 8


def _first_wall_time(blob: bytes, path: str) -> float:
    """The wall_time of the first Event of an event file, from its first ``_WALL_BYTES``.

    0.0 when the event omits it (protobuf leaves out a zero double)."""
    if len(blob) < 12:
        raise CorruptRunError(path, f"event file of {len(blob)} bytes has no complete record", 0)
    if length_crc(blob[:8]) != int.from_bytes(blob[8:12], "little"):
        raise CorruptRunError(path, "first record's length fails its CRC", 8)
    length = int.from_bytes(blob[:8], "little")
    if length == 0 or blob[12:13] != b"\x09":
        return 0.0  # the first field is not wall_time: the event has none
    if length < 9 or len(blob) < _WALL_BYTES:
        raise CorruptRunError(path, "first event ends inside its wall_time", 12)
    return float(np.frombuffer(blob, "<f8", 1, 13)[0])


def _json_file(raw: bytes | None, path: str, limit: int = MAX_JSON_BYTES) -> dict[str, Any]:
    if raw is None:
        raise CorruptRunError(path, f"JSON file larger than {limit} bytes")
    return parse_json_object(raw, path)


def _worker_key(name: str) -> tuple[int, str]:
    """Order workers by their trailing number (worker_2 before worker_10), then by name."""
    m = re.search(r"(\d+)$", name)
    return (int(m.group(1)) if m else 1 << 62, name)


_INT64_MAX = 2**63 - 1


def _int(value: Any) -> bool:
    """A JSON integer that fits the int64 columns the index is kept in."""
    return type(value) is int and -_INT64_MAX <= value <= _INT64_MAX


class _Columns:
    """Growing parallel columns (Python lists) turned into numpy arrays on demand."""

    def __init__(self, *names: str) -> None:
        self.names = names
        self.cols: dict[str, list] = {n: [] for n in names}
        self._arrays: dict[str, np.ndarray] | None = None

    def add(self, *values: Any) -> None:
        for n, v in zip(self.names, values):
            self.cols[n].append(v)
        self._arrays = None

    def __len__(self) -> int:
        return len(self.cols[self.names[0]])

    def arrays(self, dtypes: dict[str, Any]) -> dict[str, np.ndarray]:
        if self._arrays is None:
            self._arrays = {n: np.asarray(self.cols[n], dtype=dtypes[n]) for n in self.names}
        return self._arrays


_ENTRY_DTYPES = {
    "worker": np.int32,
    "step": np.int64,
    "mode": np.uint8,
    "mode_step": np.int64,
    "event": np.int64,
    "start": np.int64,
    "length": np.int64,
}


class SMDebugRecords(TensorRecords):
    """Where each saved value of one tensor lies (event file, byte range); values decoded on
    demand, in bulk for :meth:`values`."""

    #: every value is a new writable array of its own (no copy needed before handing it out)
    fresh_values = True

    def __init__(self, backend: SMDebugBackend, name: str, cols: dict[str, np.ndarray]) -> None:
        self.backend = backend
        self.name = name
        self.workers = cols["worker"]
        self.steps = cols["step"]
        self.modes = cols["mode"]
        self.mode_steps = cols["mode_step"]
        self._event = cols["event"]
        self._start = cols["start"]
        self._length = cols["length"]

    def value(self, i: int) -> np.ndarray:
        return self.values(np.asarray([i]))[0]

    def values(self, indices: np.ndarray) -> list[np.ndarray]:
        idx = np.asarray(indices, np.int64)
        paths_of = self.backend._event_paths
        paths = [paths_of[e] for e in self._event[idx].tolist()]
        starts = self._start[idx].tolist()
        lengths = self._length[idx].tolist()
        blobs = self.backend.read_events(paths, starts, lengths, writable=True)
        steps = self.steps[idx].tolist()
        modes = self.modes[idx].tolist()
        mode_steps = self.mode_steps[idx].tolist()
        out = []
        name = self.name
        for path, start, length, blob, step, mode, mode_step in zip(
            paths, starts, lengths, blobs, steps, modes, mode_steps
        ):
            if len(blob) != length:
                raise CorruptRunError(
                    path, f"the index places {length} bytes here; the file ends first", start
                )
            try:
                p0, p1 = unframe_record(blob, 0, length)
                ev = decode_event(blob, p0, p1, name, (mode, mode_step))
            except FramingError as exc:
                raise CorruptRunError(path, exc.problem, start + exc.offset) from None
            if ev.step != step:
                raise CorruptRunError(
                    path, f"event of {name!r} holds step {ev.step}, its index says {step}", start
                )
            if (ev.mode is not None and ev.mode != mode) or (
                ev.mode_step is not None and ev.mode_step != mode_step
            ):
                raise CorruptRunError(
                    path,
                    f"event of {name!r} holds mode {ev.mode} step {ev.mode_step}, "
                    f"its index says mode {mode} step {mode_step}",
                    start,
                )
            out.append(ev.value)
        return out

    def shapes(self, indices: np.ndarray) -> list[tuple[int, ...]]:
        return [v.shape for v in self.values(indices)]


class SMDebugBackend(Backend):
    """A SageMaker Debugger run (local folder or fsspec URL), read incrementally."""

    layout = "smdebug"

    def __init__(self, location: str, storage: Storage | None = None) -> None:
        super().__init__(location)
        self.storage = storage or Storage(location)
        if not any(
            self.storage.exists(self.storage.join(m))
            for m in (INDEX_DIR, EVENTS_DIR, COLLECTIONS_DIR, END_MARKER)
        ):
            raise RunNotFoundError(f"{location}: not a SageMaker Debugger run")
        self._ended = False
        self._collections_raw: dict[str, dict[str, Any]] = {}  # path -> parsed json
        self._declared_workers = 0
        self._worker_ids: dict[str, int] = {}  # name -> id in order of discovery
        self._seen_index: set[str] = set()
        self._sealed_dirs: set[str] = set()
        self._dir_steps: dict[str, set[int]] = {}
        self._step_workers: dict[int, set[int]] = {}
        self._rows = _Columns("worker", "step", "mode", "mode_step", "event")
        self._event_walls: dict[int, float] = {}  # event file id -> wall time of its 1st event
        self._event_paths: list[str] = []
        self._event_ids: dict[str, int] = {}
        self._entries: dict[str, _Columns] = {}
        self._records: dict[str, SMDebugRecords] = {}
        self._table = StepTable.empty()
        self._order: list[str] = []
        self._events_prefix = self.storage.join(EVENTS_DIR) + self.storage.sep
        self.refresh()

    # -- discovery -----------------------------------------------------------------------------

    def refresh(self) -> None:
        st = self.storage
        st.invalidate()
        # the end marker first: when it is there, the listing that follows is complete
        was_ended = self._ended
        if not self._ended:
            self._ended = st.exists(st.join(END_MARKER))
        if not was_ended:
            self._read_collections()
        self._read_new_index_files()
        self._build_table()

    def _read_collections(self) -> None:
        st = self.storage
        paths = []
        for sub in st.listdir(st.join(COLLECTIONS_DIR)):
            for fname in st.listdir(st.join(COLLECTIONS_DIR, sub)):
                if _COLLECTIONS_FILE.match(fname):
                    paths.append(st.join(COLLECTIONS_DIR, sub, fname))
        for path, raw in zip(paths, st.read_many(paths, MAX_JSON_BYTES)):
            data = _json_file(raw, path)
            cols = data.get("collections", {})
            meta = data.get("_meta", {})
            if not isinstance(cols, dict) or not isinstance(meta, dict):
                raise CorruptRunError(path, "'collections' and '_meta' must be JSON objects")
            num = meta.get("num_workers", 1)
            if not _int(num) or num < 1:
                raise CorruptRunError(path, f"invalid _meta.num_workers {num!r}")
            for cname, info in cols.items():
                if not isinstance(info, dict):
                    raise CorruptRunError(path, f"collection {cname!r} is not a JSON object")
                for key in ("tensor_names", "include_regex"):
                    val = info.get(key) or []
                    if not isinstance(val, list) or not all(isinstance(v, str) for v in val):
                        raise CorruptRunError(
                            path, f"collection {cname!r}: {key} must be a list of strings"
                        )
            self._collections_raw[path] = data
        self._declared_workers = max(
            [d.get("_meta", {}).get("num_workers", 1) for d in self._collections_raw.values()]
            or [0]
        )

    def _read_new_index_files(self) -> None:
        st = self.storage
        dirs = [d for d in st.listdir(st.join(INDEX_DIR)) if _DIR9.match(d)]
        todo: list[tuple[str, str, int, str]] = []  # rel path, full path, step, worker
        seen = self._seen_index
        match = _INDEX_FILE.match
        for d in dirs:
            if d in self._sealed_dirs:
                continue
            dpath = st.join(INDEX_DIR, d)
            prefix = dpath + st.sep
            for fname in st.listdir(dpath):
                rel = f"{d}/{fname}"
                if rel in seen:
                    continue
                m = match(fname)
                if m is None:
                    continue  # *.tmp and anything else: not (yet) an index file
                todo.append((rel, prefix + fname, int(m.group(1)), m.group(2)))
        if todo:
            blobs = st.read_many([t[1] for t in todo], MAX_INDEX_BYTES)
            for (rel, path, step, worker), raw in zip(todo, blobs):
                self._add_index(path, raw, step, worker)
                self._seen_index.add(rel)
                self._dir_steps.setdefault(rel.split("/", 1)[0], set()).add(step)
        # seal folders that can no longer change: not the newest, every step complete
        need = self.num_workers()
        for d in dirs[:-1]:
            if d in self._sealed_dirs:
                continue
            steps = self._dir_steps.get(d, set())
            if all(len(self._step_workers.get(s, ())) >= need for s in steps):
                self._sealed_dirs.add(d)

    def _add_index(self, path: str, raw: bytes | None, step: int, worker: str) -> None:
        data = _json_file(raw, path, MAX_INDEX_BYTES)
        meta = data.get("meta")
        if not isinstance(meta, dict):
            raise CorruptRunError(path, "index file has no 'meta' object")
        mode_name = meta.get("mode")
        if not isinstance(mode_name, str) or mode_name.split(".")[-1].upper() not in _MODES:
            raise CorruptRunError(path, f"unknown mode {mode_name!r}")
        mode = _MODES[mode_name.split(".")[-1].upper()]
        mode_step = meta.get("mode_step")
        if not _int(mode_step) or mode_step < 0:
            raise CorruptRunError(path, f"invalid mode_step {mode_step!r}")
        payload = data.get("tensor_payload", [])
        shapes = data.get("shape_payload", [])
        if not isinstance(payload, list) or not isinstance(shapes, list):
            raise CorruptRunError(path, "tensor_payload and shape_payload must be lists")
        event = None
        if payload:
            event = self._event_path(path, meta.get("event_file_name"), step, worker)
        wid = self._worker_ids.get(worker, len(self._worker_ids))
        if wid in self._step_workers.get(step, ()):  # it would count as a second worker
            raise CorruptRunError(path, f"step {step} of {worker} is indexed a second time")
        self._worker_ids.setdefault(worker, wid)
        seen_names: set[str] = set()
        for entry in payload:
            if not isinstance(entry, dict):
                raise CorruptRunError(path, "tensor_payload entries must be JSON objects")
            name = entry.get("tensorname")
            start = entry.get("start_idx")
            length = entry.get("length")
            if not isinstance(name, str) or not name:
                raise CorruptRunError(path, f"invalid tensorname {name!r}")
            if not _int(start) or start < 0:
                raise CorruptRunError(path, f"tensor {name!r}: invalid start_idx {start!r}")
            if not _int(length) or not 16 <= length <= MAX_RECORD_BYTES:
                raise CorruptRunError(path, f"tensor {name!r}: invalid length {length!r}")
            if name in seen_names:
                raise CorruptRunError(path, f"tensor {name!r} is indexed twice")
            seen_names.add(name)
            cols = self._entries.get(name)
            if cols is None:
                cols = self._entries[name] = _Columns(*_ENTRY_DTYPES)
            c = cols.cols
            c["worker"].append(wid)
            c["step"].append(step)
            c["mode"].append(mode)
            c["mode_step"].append(mode_step)
            c["event"].append(event)
            c["start"].append(start)
            c["length"].append(length)
            cols._arrays = None
            self._records.pop(name, None)
        rows = self._rows.cols
        rows["worker"].append(wid)
        rows["step"].append(step)
        rows["mode"].append(mode)
        rows["mode_step"].append(mode_step)
        rows["event"].append(-1 if event is None else event)
        self._rows._arrays = None
        self._step_workers.setdefault(step, set()).add(wid)

    def _event_path(self, index_path: str, name: Any, step: int, worker: str) -> int:
        """The event file an index names, rebuilt from its last two path parts (so that an
        index can never point outside the run)."""
        if not isinstance(name, str):
            raise CorruptRunError(index_path, f"invalid event_file_name {name!r}")
        if name == f"{EVENTS_DIR}/{step:012d}/{step:012d}_{worker}.tfevents" and "/" not in worker:
            rel = name[len(EVENTS_DIR) + 1 :]
            eid = self._event_ids.get(rel)
            if eid is None:
                eid = self._event_ids[rel] = len(self._event_paths)
                sep = self.storage.sep
                self._event_paths.append(self._events_prefix + rel.replace("/", sep))
            return eid
        parts = name.replace("\\", "/").rstrip("/").split("/")
        if len(parts) < 2 or not _EVENT_DIR.match(parts[-2]) or not _EVENT_FILE.match(parts[-1]):
            raise CorruptRunError(index_path, f"invalid event_file_name {name!r}")
        rel = f"{parts[-2]}/{parts[-1]}"
        eid = self._event_ids.get(rel)
        if eid is None:
            eid = self._event_ids[rel] = len(self._event_paths)
            self._event_paths.append(self.storage.join(EVENTS_DIR, parts[-2], parts[-1]))
        return eid

    def _build_table(self) -> None:
        self._order = sorted(self._worker_ids, key=_worker_key)
        rank = np.zeros(max(len(self._worker_ids), 1), np.int32)
        for r, w in enumerate(self._order):
            rank[self._worker_ids[w]] = r
        self._rank = rank
        if not len(self._rows):
            self._table = StepTable.empty()
            return
        a = self._rows.arrays(_ENTRY_DTYPES)
        self._table = StepTable(
            rank[a["worker"]],
            a["step"],
            a["mode"],
            a["mode_step"],
            np.full(len(a["step"]), np.nan),  # in the event files: see wall_times()
        )

    # -- Backend API ---------------------------------------------------------------------------

    def workers(self) -> list[str]:
        return list(self._order)

    def num_workers(self) -> int:
        if self._declared_workers:
            return int(self._declared_workers)
        return max(len(self._worker_ids), 1)

    def step_table(self) -> StepTable:
        return self._table

    def read_events(
        self, paths: list[str], starts: list[int], lengths: list[int], writable: bool = False
    ) -> list[Any]:
        """Byte ranges of event files (``Storage.read_ranges``); an event file an index names
        but that is missing is a CorruptRunError naming it."""
        try:
            return self.storage.read_ranges(paths, starts, lengths, writable=writable)
        except FileNotFoundError as exc:
            raise CorruptRunError(
                str(exc.filename or paths[0]), "an index names this event file; it is missing"
            ) from None

    def wall_times(self, rows: np.ndarray) -> np.ndarray:
        """The wall time of each row's step: that of the first event in the step's event file
        (smdebug stamps every event of a step alike). One small ranged read per event file
        not read before (the record header and the Event's first field), cached; NaN for a
        step whose index lists no tensor (it has no event file)."""
        rows = np.asarray(rows, np.int64)
        if not len(self._rows):
            return np.full(len(rows), np.nan)
        events = self._rows.arrays(_ENTRY_DTYPES)["event"][rows]
        cache = self._event_walls
        todo = sorted({int(e) for e in events.tolist() if e >= 0 and int(e) not in cache})
        if todo:
            paths = [self._event_paths[e] for e in todo]
            blobs = self.read_events(paths, [0] * len(todo), [_WALL_BYTES] * len(todo))
            for e, path, blob in zip(todo, paths, blobs):
                cache[e] = _first_wall_time(bytes(blob), path)
        return np.array([cache[e] if e >= 0 else np.nan for e in events.tolist()], np.float64)

    def tensor_names(self) -> list[str]:
        return sorted(self._entries)

    def tensor_records(self, name: str) -> SMDebugRecords:
        rec = self._records.get(name)
        if rec is None:
            cols = self._entries.get(name)
            if cols is None:
                raise KeyError(name)
            arrays = dict(cols.arrays(_ENTRY_DTYPES))
            arrays["worker"] = self._rank[arrays["worker"]]
            rec = self._records[name] = SMDebugRecords(self, name, arrays)
        return rec

    def collections(self) -> dict[str, dict[str, Any]]:
        merged: dict[str, dict[str, Any]] = {}
        for data in self._collections_raw.values():
            for cname, info in data.get("collections", {}).items():
                entry = merged.setdefault(
                    cname, {"name": cname, "tensor_names": [], "include_regex": []}
                )
                entry["tensor_names"] = sorted(
                    set(entry["tensor_names"]) | set(info.get("tensor_names") or [])
                )
                for rx in info.get("include_regex") or []:
                    if rx not in entry["include_regex"]:
                        entry["include_regex"].append(rx)
                for key, val in info.items():
                    if key not in ("name", "tensor_names", "include_regex"):
                        entry[key] = val
        return merged

    def has_ended(self) -> bool:
        return self._ended

    def end_info(self) -> dict[str, Any]:
        return {}
