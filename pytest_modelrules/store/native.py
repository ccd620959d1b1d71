"""Reader of the native layout (see docs/format.md and :mod:`.format`).

Files are read incrementally: each refresh reads only the bytes appended since the last one
(a new chunk that starts at a record boundary), so a run still being written costs
O(new data) per refresh. Values are read-only views of those bytes.
"""

from __future__ import annotations

import json
import math
from typing import Any
from urllib.parse import unquote

import numpy as np

from ..exceptions import CorruptRunError, RunNotFoundError
from . import layout
from .base import Backend, StepTable, TensorRecords, merge_worker_collections
from .format import (
    FILE_HEADER,
    FORMAT_NAME,
    FORMAT_VERSION,
    RecordIndex,
    fraction_values,
    parse_file_header,
    parse_records,
    row_names,
    strided_view,
)
from .fs import Storage

MAX_JSON_BYTES = 64 << 20
#: END's file lengths are integers below 2^53 (exact in every JSON parser)
MAX_END_LENGTH = (1 << 53) - 1


def load_json(storage: Storage, path: str) -> dict[str, Any]:
    """A JSON object from a file; CorruptRunError naming the file when it is not one."""
    size = storage.size(path)
    if size > MAX_JSON_BYTES:
        raise CorruptRunError(path, f"JSON file of {size} bytes is larger than allowed")
    raw = storage.read(path)
    return parse_json_object(raw, path)


def parse_json_object(raw: bytes, path: str) -> dict[str, Any]:
    """Decode JSON bytes that must hold an object (plain data: JSON never runs code)."""
    if len(raw) > MAX_JSON_BYTES:
        raise CorruptRunError(path, f"JSON file of {len(raw)} bytes is larger than allowed")
    try:
        data = json.loads(raw.decode("utf-8") if isinstance(raw, (bytes, bytearray)) else raw)
    except (ValueError, RecursionError) as exc:  # also a 5,000-digit integer
        raise CorruptRunError(path, f"invalid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise CorruptRunError(path, f"expected a JSON object, found {type(data).__name__}")
    return data


_load_json = load_json  # the name other modules used before


def end_files(end: dict[str, Any], path: str) -> dict[str, int] | None:
    """END's ``"files"`` (path below the worker folder -> length), checked: None when END has
    no such key (every run written before it existed). A name is ``steps.mrt`` or
    ``tensors/<file>.mrt`` / ``rows/<file>.mrt`` (no other folder, no ``..``, nothing
    absolute): names are only ever compared with the folder's listing, never opened."""
    if "files" not in end:
        return None
    files = end["files"]
    if not isinstance(files, dict):
        raise CorruptRunError(
            path, f"'files' must be a JSON object of file -> length, found {type(files).__name__}"
        )
    for rel, length in files.items():
        folder, _, fname = rel.rpartition("/")
        if rel != layout.STEPS_FILE and not (
            folder in (layout.TENSORS_DIR, layout.ROWS_DIR) and _listed_file(fname)
        ):
            raise CorruptRunError(
                path,
                f"'files' names {rel[:200]!r}: expected {layout.STEPS_FILE}, "
                f"{layout.TENSORS_DIR}/<name>{layout.TENSOR_SUFFIX} or "
                f"{layout.ROWS_DIR}/<name>{layout.TENSOR_SUFFIX}",
            )
        if type(length) is not int or not 0 <= length <= MAX_END_LENGTH:
            raise CorruptRunError(
                path,
                f"'files' gives {rel!r} the length {str(length)[:40]}: "
                "expected an integer in [0, 2^53)",
            )
    return files


def check_end_fields(end: dict[str, Any], path: str) -> None:
    """END's other keys, each optional: ``last_step`` an integer in [-1, 2^63) (-1: no step
    committed), ``wall_time`` a finite number of seconds, ``reason`` a string."""
    last = end.get("last_step")
    if last is not None and (type(last) is not int or not -1 <= last < 2**63):
        raise CorruptRunError(
            path, f"'last_step' must be an integer from -1 up, found {str(last)[:40]}"
        )
    wall = end.get("wall_time")
    if wall is not None and (type(wall) not in (int, float) or not math.isfinite(wall)):
        raise CorruptRunError(path, f"'wall_time' must be a number, found {str(wall)[:40]}")
    reason = end.get("reason")
    if reason is not None and type(reason) is not str:
        raise CorruptRunError(path, f"'reason' must be a string, found {type(reason).__name__}")


def _listed_file(fname: str) -> bool:
    """Whether a name in a worker's tensors/ or rows/ folder is one of the run's files (what
    the reader reads): ``*.mrt``, not hidden, one path component."""
    return (
        fname.endswith(layout.TENSOR_SUFFIX)
        and not fname.startswith(".")
        and "/" not in fname
        and "\\" not in fname
        and "\0" not in fname
    )


#: files larger than this have their first 16 bytes checked before they are read whole
_PEEK_ABOVE = 1 << 20


def _missing(worker: str, length: int) -> str:
    """The problem of a file its worker's END lists that is not there."""
    return f"missing: END of {worker} records {length} bytes for it"


def _cut(worker: str, length: int, size: int) -> str:
    """The problem of a file shorter than its worker's END says."""
    return (
        f"cut: END of {worker} records {length} bytes, the file has {size} "
        "(copied or downloaded only in part?)"
    )


class _LogFile:
    """One append-only file of records, read incrementally (one chunk per refresh)."""

    def __init__(self, storage: Storage, path: str, expect_kind: str) -> None:
        self.storage = storage
        self.path = path
        self.expect_kind = expect_kind
        self.chunks: list[bytes] = []
        self.header: dict[str, Any] | None = None
        self.data_offset = 0
        self.index: RecordIndex | None = None
        self.read_to = 0  # file size at the last read
        self.names: list[str] | None = None  # a rows file's tensor names
        self.limit: int | None = None  # the commit limit of the last read
        self.error: CorruptRunError | None = None  # the damage found, once found
        # (worker, length) where the worker's END lists the file: shorter is damage
        self.end_length: tuple[str, int] | None = None

    def update(self, commit_limit: int | None) -> bool:
        """Read what was appended; True when new records arrived. A short tail (a record
        being written) is checked against ``commit_limit`` (a truncated record of a committed
        step is an error), again when a later call passes a newer limit with no new bytes: a
        file first read without one (for its header) is checked too. A file found damaged
        stays so: every later call raises the same error (its bytes were read past once, and
        a second read must not find "nothing new")."""
        if self.error is not None:
            raise CorruptRunError(self.error.path, self.error.problem, self.error.offset)
        try:
            return self._update(commit_limit)
        except CorruptRunError as exc:
            self.error = exc
            raise

    def _update(self, commit_limit: int | None) -> bool:
        try:
            size = self.storage.size(self.path)
        except FileNotFoundError:
            if self.end_length is not None:
                worker, length = self.end_length
                raise CorruptRunError(self.path, _missing(worker, length)) from None
            return False
        new = self._read(size, commit_limit)
        # after the read: damage inside a record is named more precisely by it
        if self.end_length is not None and size < self.end_length[1]:
            worker, length = self.end_length
            raise CorruptRunError(self.path, _cut(worker, length, size))
        return new

    def _read(self, size: int, commit_limit: int | None) -> bool:
        """Read the bytes past the last whole record of a file of ``size`` bytes."""
        if size < self.read_to:
            raise CorruptRunError(self.path, "file shrank while the run was being read")
        if size == self.read_to and not self._tail_to_check(commit_limit):
            return False
        start = self.index.end if self.index is not None else 0
        if self.header is None and size > _PEEK_ABOVE:
            # a large file's magic and header length first: a link to some big file of the
            # host is refused after 16 bytes, not read whole
            parse_file_header(self.storage.read(self.path, 0, FILE_HEADER.size), self.path)
        chunk = self.storage.read(self.path, start)
        self.read_to = start + len(chunk)
        local = 0
        if self.header is None:
            parsed = parse_file_header(chunk, self.path)
            if parsed is None:
                return False
            kind = parsed.fields.get("kind")
            if kind != self.expect_kind:
                raise CorruptRunError(
                    self.path, f"file kind {kind!r}, expected {self.expect_kind!r}"
                )
            name = parsed.fields.get("name")
            if not isinstance(name, str):
                raise CorruptRunError(self.path, "file header has no tensor name")
            if kind == "rows":
                self.names = row_names(parsed.fields, self.path)
            self.header = parsed.fields
            self.data_offset = local = parsed.data_offset
        new = parse_records(
            chunk,
            self.path,
            local,
            commit_limit=commit_limit,
            base=start,
            chunk=len(self.chunks),
        )
        self.limit = commit_limit
        if self.names is not None:
            width = (len(self.names),)
            for _dtype, shape, denominator in new.layouts:
                if shape != width:
                    raise CorruptRunError(
                        self.path,
                        f"a row of shape {shape} in a rows file that names {width[0]} tensors",
                    )
                if denominator is not None:
                    raise CorruptRunError(self.path, "a fraction record in a rows file")
        if len(new):
            self.chunks.append(chunk)
        if self.index is None:
            self.index = new
        else:
            old = self.index
            if len(new) and len(old) and new.steps[0] <= old.steps[-1]:
                raise CorruptRunError(
                    self.path,
                    f"record of step {int(new.steps[0])} follows step {int(old.steps[-1])}",
                    start,
                )
            self.index = old.extend(new)
        return len(new) > 0

    def _tail_to_check(self, commit_limit: int | None) -> bool:
        """Whether bytes past the last whole record were last checked against an older
        commit limit than ``commit_limit`` (or none)."""
        if commit_limit is None or self.index is None or self.read_to <= self.index.end:
            return False
        return self.limit is None or commit_limit > self.limit


def _check_one_record_a_step(name: str, parts: list[tuple[int, _LogFile, int | None]]) -> None:
    """Refuse a tensor saved twice at one step of a worker: in its own file and a rows file,
    or in two rows files (the writer never does; within one file steps increase, so only a
    worker with several files of the tensor is compared)."""
    by_worker: dict[int, list[_LogFile]] = {}
    for widx, log, _ in parts:
        if log.index is not None and len(log.index):
            by_worker.setdefault(widx, []).append(log)
    for logs in by_worker.values():
        if len(logs) < 2:
            continue
        steps = np.concatenate([log.index.steps for log in logs])
        owner = np.concatenate([np.full(len(log.index), i) for i, log in enumerate(logs)])
        order = np.argsort(steps, kind="stable")
        same = np.flatnonzero(steps[order][1:] == steps[order][:-1])
        if len(same):
            first, second = order[same[0]], order[same[0] + 1]
            raise CorruptRunError(
                logs[int(owner[second])].path,
                f"tensor {name!r} at step {int(steps[first])} is also in "
                f"{logs[int(owner[first])].path} (a tensor has one record a step)",
            )


class NativeRecords(TensorRecords):
    """Records of one tensor across workers; values are views of the files' bytes.

    ``parts``: (worker index, file, column): a tensor file's records (column None) or one
    column of a rows file's (each record a row; the tensor's value is its element there)."""

    def __init__(self, parts: list[tuple[int, _LogFile, int | None]]) -> None:
        self.parts = [(w, f, c) for w, f, c in parts if f.index is not None and len(f.index)]
        idx = [f.index for _, f, _ in self.parts]
        self.workers = np.concatenate(
            [np.full(len(i), w, np.int32) for (w, _, _), i in zip(self.parts, idx)]
            or [np.zeros(0, np.int32)]
        )
        self.steps = np.concatenate([i.steps for i in idx] or [np.zeros(0, np.int64)])
        self.modes = np.concatenate([i.modes for i in idx] or [np.zeros(0, np.uint8)])
        self.mode_steps = np.concatenate([i.mode_steps for i in idx] or [np.zeros(0, np.int64)])
        self._part = np.concatenate(
            [np.full(len(i), p, np.int32) for p, i in enumerate(idx)] or [np.zeros(0, np.int32)]
        )
        self._local = np.concatenate(
            [np.arange(len(i), dtype=np.int64) for i in idx] or [np.zeros(0, np.int64)]
        )

    def _layout(self, part: int, kind: int) -> tuple[np.dtype, tuple[int, ...], int, int | None]:
        """(dtype, shape, offset within the payload, denominator of a fraction record or None)
        of a record kind of a part."""
        _, log, column = self.parts[part]
        dtype, shape, denominator = log.index.layouts[kind]
        if column is None:
            return dtype, shape, 0, denominator
        return dtype, (), column * dtype.itemsize, None

    def value(self, i: int) -> np.ndarray:
        part = int(self._part[i])
        log = self.parts[part][1]
        j = int(self._local[i])
        index = log.index
        dtype, shape, extra, denominator = self._layout(part, int(index.kinds[j]))
        count = 1
        for dim in shape:
            count *= dim
        buf = log.chunks[int(index.chunks[j])]
        offset = int(index.offsets[j]) + extra
        value = np.frombuffer(buf, dtype, count=count, offset=offset).reshape(shape)
        if denominator is not None:
            value = fraction_values(value, denominator)
            value.flags.writeable = False  # like every other value read
        return value

    def shapes(self, indices: np.ndarray) -> list[tuple[int, ...]]:
        out = []
        for i in np.asarray(indices, np.int64).tolist():
            part = int(self._part[i])
            index = self.parts[part][1].index
            out.append(self._layout(part, int(index.kinds[int(self._local[i])]))[1])
        return out

    def stacked(self, indices: np.ndarray) -> np.ndarray | None:
        """The values at ``indices`` as one (n, *shape) array when they share dtype and shape:
        a strided view of the file's bytes (no copy) when they lie equally spaced in one
        buffer, else a concatenation of such views; fraction records (one denominator each)
        divided into a new float32 array. None when layouts differ."""
        indices = np.asarray(indices, np.int64)
        if not len(indices):
            return None
        parts = self._part[indices]
        local = self._local[indices]
        # maximal runs of (part, chunk) in the requested order
        chunk_ids = np.empty(len(indices), np.int64)
        for p in np.unique(parts).tolist():
            sel = parts == p
            chunk_ids[sel] = self.parts[p][1].index.chunks[local[sel]]
        key = parts.astype(np.int64) * (1 << 32) + chunk_ids
        cuts = np.flatnonzero(np.diff(key)) + 1
        pieces = []
        denominators: list[np.ndarray] = []
        layout_seen = None
        for seg in np.split(np.arange(len(indices)), cuts):
            part = int(parts[seg[0]])
            log = self.parts[part][1]
            index = log.index
            js = local[seg]
            kinds = index.kinds[js]
            dtype, shape, extra, den = self._layout(part, int(kinds[0]))
            if len(kinds) > 1 and not bool(np.all(kinds == kinds[0])):
                # fraction records of one dtype and shape may differ in their denominators
                others = [index.layouts[k] for k in np.unique(kinds).tolist()]
                if den is None or any(
                    o[0] != dtype or o[1] != shape or o[2] is None for o in others
                ):
                    return None
            lay = (dtype, shape, den is not None)
            if layout_seen is None:
                layout_seen = lay
            elif lay != layout_seen:
                return None
            if den is not None:
                table = np.array([d if d is not None else 0 for *_, d in index.layouts], np.int64)
                denominators.append(table[kinds])
            offs = index.offsets[js] + extra
            itemsize = lay[0].itemsize
            size = itemsize * int(np.prod(lay[1], dtype=np.int64)) if lay[1] else itemsize
            stride = int(offs[1] - offs[0]) if len(offs) > 1 else max(size, 1)
            if len(offs) > 2 and not bool(np.all(np.diff(offs) == stride)):
                return None
            if stride <= 0:
                return None
            buf = log.chunks[int(index.chunks[js[0]])]
            pieces.append(strided_view(buf, lay[0], lay[1], int(offs[0]), stride, len(offs)))
        stacked = pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
        if denominators:
            stacked = fraction_values(stacked, np.concatenate(denominators))
            stacked.flags.writeable = False
        return stacked

    def values(self, indices: np.ndarray) -> list[np.ndarray]:
        st = self.stacked(indices)
        if st is not None:
            return split_stacked(st)
        return [self.value(i) for i in np.asarray(indices, np.int64).tolist()]


def split_stacked(st: np.ndarray) -> list[np.ndarray]:
    """Per-step views of a stacked (n, *shape) array, 0-d arrays for scalars (not numpy
    scalars)."""
    if st.ndim > 1:
        return list(st)
    return [st[i, ...] for i in range(len(st))]


class NativeBackend(Backend):
    """A run in the native layout, local or behind an fsspec URL."""

    layout = "native"

    def __init__(self, location: str, storage: Storage | None = None) -> None:
        super().__init__(location)
        self.storage = storage or Storage(location)
        run_file = self.storage.join(layout.RUN_FILE)
        if not self.storage.exists(run_file):
            raise RunNotFoundError(
                f"{location}: no {layout.RUN_FILE}, so not a pytest-modelrules run"
            )
        info = load_json(self.storage, run_file)
        if info.get("format") != FORMAT_NAME:
            raise CorruptRunError(
                run_file, f"format is {info.get('format')!r}, not {FORMAT_NAME!r}"
            )
        version = info.get("version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise CorruptRunError(
                run_file, f"format version must be a positive integer, found {version!r}"
            )
        if version > FORMAT_VERSION:
            raise CorruptRunError(
                run_file,
                f"format version {version} is newer than this reader ({FORMAT_VERSION}); "
                "upgrade pytest-modelrules",
            )
        self.info = info
        self._workers: list[str] = []
        self._worker_info: dict[str, dict[str, Any]] = {}
        self._worker_raw: dict[str, int] = {}
        self._steps: dict[str, _LogFile] = {}
        self._ended: dict[str, dict[str, Any]] = {}
        self._tensor_files: dict[str, dict[str, str]] = {}  # name -> worker -> path
        # name -> worker -> [(rows file path, column)]; the rows files whose header was read
        self._row_columns: dict[str, dict[str, list[tuple[str, int]]]] = {}
        self._rows_seen: set[str] = set()
        self._rows_read: set[str] = set()  # rows files read since the last refresh
        self._logs: dict[str, _LogFile] = {}  # path -> log
        # path -> (worker, length) of the files listed in an END's "files"; and the workers
        # whose listing is yet to be compared with their END's "files"
        self._end_lengths: dict[str, tuple[str, int]] = {}
        self._unchecked: dict[str, dict[str, int]] = {}
        self._prefixes: dict[str, str] = {}  # worker -> its folder's path, ending in sep
        self._records: dict[str, NativeRecords] = {}
        self._table = StepTable.empty()
        self.refresh()

    # -- discovery -----------------------------------------------------------------------------

    def refresh(self) -> None:
        """Commits first, then the listing: every tensor file of a committed step is listed."""
        self.storage.invalidate()
        self._rows_read.clear()
        j = self.storage.join
        found = [
            w for w in self.storage.listdir(j(layout.WORKERS_DIR)) if layout.valid_worker_name(w)
        ]
        for worker in found:
            wfile = j(layout.WORKERS_DIR, worker, layout.WORKER_FILE)
            try:
                winfo = load_json(self.storage, wfile)
            except FileNotFoundError:
                # a worker being created, unless it has committed steps: the writer writes
                # worker.json before it opens the steps file
                steps = j(layout.WORKERS_DIR, worker, layout.STEPS_FILE)
                if self.storage.exists(steps):
                    raise CorruptRunError(
                        wfile, "missing, where the worker's steps file is there"
                    ) from None
                continue
            self._validate_worker(wfile, winfo)
            self._worker_info[worker] = winfo
            if worker not in self._steps:
                self._steps[worker] = _LogFile(
                    self.storage, j(layout.WORKERS_DIR, worker, layout.STEPS_FILE), "steps"
                )
            # END before the commit log: END is written after the last commit, so once it
            # is seen, the commit log read next holds every step
            end = None  # the path of an END seen in this refresh
            if worker not in self._ended:
                end_path = j(layout.WORKERS_DIR, worker, layout.END_FILE)
                if self.storage.exists(end_path):
                    end = end_path
                    self._end(worker, end, load_json(self.storage, end))
            self._steps[worker].update(None)
            if end is not None:  # the commit log just read is final
                self._check_last_step(worker, end)
        for worker in self._worker_info:
            tdir = j(layout.WORKERS_DIR, worker, layout.TENSORS_DIR)
            rdir = j(layout.WORKERS_DIR, worker, layout.ROWS_DIR)
            if worker in self._unchecked:  # END was just seen: this listing is complete
                tensor_sizes = self.storage.list_sizes(tdir)
                rows_sizes = self.storage.list_sizes(rdir)
                self._check_listing(worker, tensor_sizes, rows_sizes)
                tensor_files, rows_files = list(tensor_sizes), list(rows_sizes)
            else:
                tensor_files, rows_files = self.storage.listdir(tdir), self.storage.listdir(rdir)
            for fname in filter(_listed_file, tensor_files):
                path = j(layout.WORKERS_DIR, worker, layout.TENSORS_DIR, fname)
                stem = fname[: -len(layout.TENSOR_SUFFIX)]
                if "~" in stem:  # hashed long name: the header knows the real one
                    log = self._log(path, "tensor")
                    if log.header is None:
                        log.update(None)
                    if log.header is None:
                        continue
                    name = log.header["name"]
                else:
                    name = unquote(stem)
                held = self._tensor_files.setdefault(name, {})
                other = held.setdefault(worker, path)
                if other != path:  # e.g. "loss.mrt" and "lo%73s.mrt", or a hashed name
                    raise CorruptRunError(path, f"holds tensor {name!r}, as does {other}")
            self._find_rows(worker, rows_files)
        self._workers = sorted(self._worker_info, key=lambda w: (self._worker_info[w]["rank"], w))
        tables = []
        for widx, worker in enumerate(self._workers):
            idx = self._steps[worker].index
            if idx is None:
                continue
            tables.append(
                StepTable(
                    np.full(len(idx), widx, np.int32),
                    idx.steps,
                    idx.modes,
                    idx.mode_steps,
                    idx.wall_times,
                )
            )
        self._table = StepTable.concat(tables)
        self._records.clear()

    def _find_rows(self, worker: str, listed: list[str]) -> None:
        """Index the tensor names of the worker's rows files not seen yet (format version 2),
        ``listed``: the names in its rows folder. Each file's header lists them; a file whose
        header is not complete yet is left for the next refresh."""
        j = self.storage.join
        for fname in filter(_listed_file, listed):
            path = j(layout.WORKERS_DIR, worker, layout.ROWS_DIR, fname)  # j adds the root
            if path in self._rows_seen:
                continue
            log = self._log(path, "rows")
            log.update(self._last_committed(worker))
            self._rows_read.add(path)
            if log.names is None:
                continue
            self._rows_seen.add(path)
            for column, name in enumerate(log.names):
                self._row_columns.setdefault(name, {}).setdefault(worker, []).append((path, column))

    def _log(self, path: str, kind: str) -> _LogFile:
        """The reader of a tensor or rows file (made on first use, with the length END
        records for it, if any)."""
        log = self._logs.get(path)
        if log is None:
            log = self._logs[path] = _LogFile(self.storage, path, kind)
            log.end_length = self._end_lengths.get(path)
        return log

    def _end(self, worker: str, path: str, end: dict[str, Any]) -> None:
        """Take in a worker's END: with ``"files"``, the length of every file its writer
        wrote. The next listing must hold exactly those files, none shorter; a file is
        checked again whenever it is read (a cut made after the listing)."""
        files = end_files(end, path)
        check_end_fields(end, path)
        self._ended[worker] = {k: v for k, v in end.items() if k != "files"}
        if files is None:
            return
        for rel, length in files.items():
            fpath = self._worker_path(worker, rel)
            self._end_lengths[fpath] = (worker, length)
            log = self._logs.get(fpath)
            if log is not None:  # read before END was there (a run being followed)
                log.end_length = (worker, length)
        if layout.STEPS_FILE in files:
            self._steps[worker].end_length = (worker, files[layout.STEPS_FILE])
        self._unchecked[worker] = files

    def _check_last_step(self, worker: str, end_path: str) -> None:
        """The commit log of an ended worker must end at the step its END gives (written
        after the last commit): fewer steps mean committed steps were lost."""
        declared = self._ended[worker].get("last_step")
        if declared is None:
            return
        found = self._last_committed(worker)
        found = -1 if found is None else found
        if declared != found:
            ends = f"ends at step {found}" if found >= 0 else "holds no step"
            raise CorruptRunError(
                self._steps[worker].path,
                f"END of {worker} ({end_path}) gives {declared} as the last committed step; "
                f"the commit log {ends}"
                + (" (steps lost: cut, or replaced?)" if found < declared else ""),
            )

    def _worker_path(self, worker: str, rel: str) -> str:
        """The path of a file given by its path below a worker's folder ('/' separated):
        what ``join`` makes of the parts, without a join per file."""
        prefix = self._prefixes.get(worker)
        if prefix is None:
            prefix = self._prefixes[worker] = self.storage.join(layout.WORKERS_DIR, worker, "")
        return prefix + rel.replace("/", self.storage.sep)

    def _check_listing(
        self,
        worker: str,
        tensor_sizes: dict[str, int | None],
        rows_sizes: dict[str, int | None],
    ) -> None:
        """Compare a worker's tensors/ and rows/ folders (names and sizes) with its END's
        ``"files"``: a file END lists is there (else it was deleted, or never copied), and
        not shorter (cut); every file there is listed (else it was added after the worker
        ended: not the run's data). The steps file was checked as it was read."""
        files = self._unchecked[worker]
        listed = {
            f"{layout.TENSORS_DIR}/{f}": n for f, n in tensor_sizes.items() if _listed_file(f)
        }
        listed.update(
            (f"{layout.ROWS_DIR}/{f}", n) for f, n in rows_sizes.items() if _listed_file(f)
        )
        missing = [rel for rel in files if rel not in listed and rel != layout.STEPS_FILE]
        if missing:
            rel = min(missing)
            raise CorruptRunError(self._worker_path(worker, rel), _missing(worker, files[rel]))
        extra = sorted(listed.keys() - files.keys())
        if extra:
            raise CorruptRunError(
                self._worker_path(worker, extra[0]),
                f"not written by {worker}'s writer: its END, which lists every file it wrote, "
                "does not list it (added after the worker ended?)",
            )
        short = [rel for rel, size in listed.items() if size is not None and size < files[rel]]
        for rel in short:  # (None: not a plain file, which its read refuses)
            # read it now: damage inside a record gets its own, more precise message;
            # else the read ends with the cut (the log has END's length)
            kind = "rows" if rel.startswith(f"{layout.ROWS_DIR}/") else "tensor"
            self._log(self._worker_path(worker, rel), kind).update(self._last_committed(worker))
        del self._unchecked[worker]  # once: a later cut or deletion is found when it is read

    @staticmethod
    def _validate_worker(path: str, info: dict[str, Any]) -> None:
        rank, num = info.get("rank"), info.get("num_workers")
        if type(rank) is not int or type(num) is not int or num < 1 or not 0 <= rank < num:
            raise CorruptRunError(path, f"invalid rank {rank!r} / num_workers {num!r}")
        for key in ("metadata", "collections"):
            if not isinstance(info.get(key, {}), dict):
                raise CorruptRunError(path, f"{key!r} must be a JSON object")
        for name, entry in info.get("collections", {}).items():
            if not isinstance(entry, dict):
                raise CorruptRunError(path, f"collection {name!r} must be a JSON object")

    def _last_committed(self, worker: str) -> int | None:
        log = self._steps.get(worker)
        if log is None or log.index is None or not len(log.index):
            return None
        return int(log.index.steps[-1])

    # -- Backend API ---------------------------------------------------------------------------

    def workers(self) -> list[str]:
        return list(self._workers)

    def num_workers(self) -> int:
        declared = [info["num_workers"] for info in self._worker_info.values()]
        return max([*declared, len(self._workers), 1])

    def step_table(self) -> StepTable:
        return self._table

    def tensor_names(self) -> list[str]:
        return sorted(self._tensor_files.keys() | self._row_columns.keys())

    def tensor_records(self, name: str) -> NativeRecords:
        cached = self._records.get(name)
        if cached is not None:
            return cached
        files = self._tensor_files.get(name, {})
        columns = self._row_columns.get(name, {})
        if not files and not columns:
            raise KeyError(name)
        parts: list[tuple[int, _LogFile, int | None]] = []
        for widx, worker in enumerate(self._workers):
            path = files.get(worker)
            if path is not None:
                log = self._log(path, "tensor")
                log.update(self._last_committed(worker))
                if log.header is not None and log.header.get("name") != name:
                    raise CorruptRunError(
                        path, f"file holds tensor {log.header.get('name')!r}, expected {name!r}"
                    )
                parts.append((widx, log, None))
            for path, column in columns.get(worker, ()):
                log = self._logs[path]
                if path not in self._rows_read:  # one read for all the row's tensors
                    log.update(self._last_committed(worker))
                    self._rows_read.add(path)
                parts.append((widx, log, column))
        _check_one_record_a_step(name, parts)
        records = NativeRecords(parts)
        self._records[name] = records
        return records

    def collections(self) -> dict[str, dict[str, Any]]:
        return merge_worker_collections(
            [self._worker_info[worker].get("collections", {}) for worker in self._workers]
        )

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
