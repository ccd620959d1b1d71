"""RunWriter: the low-level, append-only writer of the native format.

The Recorder uses it; tests, benchmarks and synthetic runs use it directly. A step becomes
visible to readers only when it is committed (a record in ``steps.mrt``), which happens when
a write for a newer step arrives, on :meth:`RunWriter.end_step`, and on :meth:`close`. After
``kill -9`` every committed step reads back; the step in flight is ignored.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from collections import OrderedDict
from typing import Any

import numpy as np

from ..modes import ModeKeys, parse_mode
from . import layout
from .format import (
    FORMAT_NAME,
    FORMAT_VERSION,
    Fraction,
    encode_file_header,
    encode_record,
    encode_record_fast,
    encode_record_parts,
)
from .fs import is_url, local_path
from .names import check_printable

#: bounds of the default number of tensor files a writer keeps open
MIN_OPEN_FILES = 64
MAX_OPEN_FILES = 4096
_EMPTY = np.zeros((0,), dtype=np.uint8)
#: a row of scalars is split over rows files of at most this many tensors and this many bytes
#: of names (file headers stay far below the format's 1 MiB)
ROW_FILE_NAMES = 1024
ROW_FILE_NAME_BYTES = 256 * 1024
_WRITEV = getattr(os, "writev", None)


def write_parts(fh: Any, head: bytes, payload: bytes | memoryview) -> None:
    """Append ``head`` then ``payload`` to the unbuffered file ``fh`` without joining them:
    one ``os.writev`` where the platform has it (one system call per record, as one
    ``write`` of the joined bytes was), else two writes. Short writes are completed."""
    if _WRITEV is not None:
        done = _WRITEV(fh.fileno(), (head, payload))
        if done == len(head) + (len(payload) if type(payload) is bytes else payload.nbytes):
            return
    else:
        done = 0
    rest = memoryview(head)[done:] if done < len(head) else memoryview(b"")
    rest_payload = memoryview(payload)[max(0, done - len(head)) :]
    for view in (rest, rest_payload):
        while view.nbytes:
            view = view[fh.write(view) :]


def default_max_open_files() -> int:
    """How many tensor files a RunWriter keeps open by default: half the process's soft
    RLIMIT_NOFILE (the rest stays for the training job), within [64, 4096]; 256 where the
    limit cannot be read. A default ResNet-18 recording writes ~430 files: under the limit,
    every write would reopen its file."""
    try:
        import resource

        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):
        return 256
    if soft == resource.RLIM_INFINITY or soft < 0:
        return MAX_OPEN_FILES
    return max(MIN_OPEN_FILES, min(int(soft) // 2, MAX_OPEN_FILES))


def to_numpy(value: Any) -> np.ndarray:
    """A numpy array from a numpy array, a number, or a torch tensor (any device, any dtype).

    torch is never imported here: a tensor is recognised by its methods.
    """
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        tensor = value.detach()
        if str(getattr(tensor, "dtype", "")) in ("torch.bfloat16",):
            tensor = tensor.float()
        return tensor.cpu().numpy()
    arr = np.asarray(value)
    if arr.dtype == object:
        raise TypeError(f"cannot record a value of type {type(value).__name__}")
    return arr


def stored_value(value: Any) -> np.ndarray | Fraction:
    """What a write stores: a Fraction with numpy counts, or :func:`to_numpy` of ``value``."""
    if isinstance(value, Fraction):
        return Fraction(to_numpy(value.counts), value.denominator)
    return to_numpy(value)


def check_write(
    name: str,
    step: int,
    mode: ModeKeys | str | int,
    mode_step: int | None,
    current: tuple[int, int, int, float] | None,
    last_committed: int,
) -> tuple[int, int, bool]:
    """Check a ``write()`` against the open step (shared by RunWriter and the in-memory
    writer): ``(step, mode key, whether the write opens a new step)``; ValueError for an empty
    name, a step that goes back or was committed, or a mode / mode step unlike the open step's.
    """
    if not isinstance(name, str) or not name:
        raise ValueError("a tensor name must be a non-empty string")
    check_printable([name])
    step = int(step)
    mode_key = int(parse_mode(mode, allow_none=False))
    if current is None or step != current[0]:
        if current is not None and step < current[0]:
            raise ValueError(f"step {step} written after step {current[0]}: steps must not go back")
        if step <= last_committed:
            raise ValueError(f"step {step} was already committed")
        return step, mode_key, True
    if mode_key != current[1] or (mode_step is not None and int(mode_step) != current[2]):
        raise ValueError(
            f"step {step} was opened in mode {ModeKeys(current[1]).name} mode step {current[2]}; "
            f"got mode {ModeKeys(mode_key).name} mode step {mode_step}"
        )
    return step, mode_key, False


def check_end_reason(reason: object) -> None:
    """TypeError for an end reason that is not a string (or None): END's ``reason`` is text,
    and a reader refuses any other type. Writers check it before they change anything."""
    if reason is not None and not isinstance(reason, str):
        raise TypeError(f"the end reason must be a string, got {type(reason).__name__}")


def open_step(
    step: int, mode_key: int, mode_step: int | None, wall: float, mode_counts: dict[int, int]
) -> tuple[int, int, int, float]:
    """The ``(step, mode, mode_step, wall_time)`` of a new step; ``mode_step`` defaults to the
    per-mode counter ``mode_counts``, which is advanced past it."""
    if mode_step is None:
        mode_step = mode_counts.get(mode_key, 0)
    mode_counts[mode_key] = int(mode_step) + 1
    return (step, mode_key, int(mode_step), wall)


def _atomic_write_json(path: str, data: dict) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=1, sort_keys=True, default=_json_default)
        os.replace(tmp, path)
    except BaseException:  # a full disk: the half-written copy would only take more of it
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    return str(obj)


class RunWriter:
    """Append tensors of one worker of a run, step by step.

    ``path`` is a folder or an fsspec URL; for a URL the run is staged in a local folder and
    uploaded by :meth:`sync` and :meth:`close`. ``worker`` names this process's shard
    (``worker_0`` by default); under torch.distributed give each rank its own, with ``rank``
    and ``num_workers`` so that readers know when a step is complete. ``max_open_files``
    bounds the tensor files kept open between writes (least recently written closed first;
    default :func:`default_max_open_files`).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        worker: str = "worker_0",
        *,
        rank: int = 0,
        num_workers: int = 1,
        metadata: dict[str, Any] | None = None,
        fsync: bool = False,
        storage_options: dict[str, Any] | None = None,
        max_open_files: int | None = None,
    ) -> None:
        if max_open_files is None:
            max_open_files = default_max_open_files()
        if int(max_open_files) < 1:
            raise ValueError(f"max_open_files must be at least 1, got {max_open_files}")
        self.max_open_files = int(max_open_files)
        if not layout.valid_worker_name(worker):
            raise ValueError(f"worker name {worker!r}: use letters, digits, '-', '_' and '.'")
        if num_workers < 1 or not 0 <= rank < num_workers:
            raise ValueError(f"rank {rank} must lie in [0, num_workers={num_workers})")
        self.url = os.fspath(path)
        self.remote = is_url(self.url)
        self.storage_options = storage_options or {}
        self._uploaded: dict[str, tuple[int, int]] = {}  # rel path -> (size, mtime_ns) sent
        if self.remote:
            self._check_remote_free(worker)
            self.root = tempfile.mkdtemp(prefix="modelrules-stage-")
        else:
            self.root = local_path(self.url)
        self.worker = worker
        self.rank = rank
        self.num_workers = num_workers
        self.fsync = fsync
        self.closed = False
        self._metadata: dict[str, Any] = dict(metadata or {})
        self._collections: dict[str, Any] = {}
        self._files: OrderedDict[str, Any] = OrderedDict()
        # path -> length when last closed (a file closed at the open-file limit, or one whose
        # header write failed): with the open files' lengths at close, END's "files"
        self._lengths: dict[str, int] = {}
        self._known: dict[str, str] = {}  # tensor name -> file path
        self._names_checked: set[str] = set()  # names write_step found printable
        # a row's names -> its rows files: (first index, end index, path, file header fields)
        self._rows: dict[tuple[str, ...], list[tuple[int, int, str, dict[str, Any]]]] = {}
        self._current: tuple[int, int, int, float] | None = None  # step, mode, mode_step, wall
        self._last_committed = -1
        self._written_this_step: set[str] = set()
        self._mode_counts: dict[int, int] = {}
        self.worker_dir = os.path.join(self.root, layout.WORKERS_DIR, worker)
        self.tensor_dir = os.path.join(self.worker_dir, layout.TENSORS_DIR)
        self.rows_dir = os.path.join(self.worker_dir, layout.ROWS_DIR)
        if os.path.exists(os.path.join(self.worker_dir, layout.STEPS_FILE)):
            raise FileExistsError(
                f"{self.worker_dir} already holds a recorded run for worker {worker!r}; "
                "choose a new folder (nothing recorded is ever overwritten)"
            )
        os.makedirs(self.tensor_dir, exist_ok=True)
        run_file = os.path.join(self.root, layout.RUN_FILE)
        if not os.path.exists(run_file):
            _atomic_write_json(
                run_file,
                {"format": FORMAT_NAME, "version": FORMAT_VERSION, "created": time.time()},
            )
        self._write_worker_file()
        self._steps_fh = self._open(os.path.join(self.worker_dir, layout.STEPS_FILE), "steps", "")

    # -- files ---------------------------------------------------------------------------------

    def _open(self, path: str, kind: str, name: str, **fields: Any):
        fh = open(path, "ab", buffering=0)  # noqa: SIM115 (kept open across writes)
        if fh.tell() == 0:
            header = {"kind": kind, "name": name, "worker": self.worker, **fields}
            try:
                fh.write(encode_file_header(header))
            except BaseException:  # a full disk: the file exists, END must still list it
                with contextlib.suppress(OSError):
                    self._lengths[path] = os.fstat(fh.fileno()).st_size
                fh.close()
                raise
        return fh

    def _tensor_fh(self, name: str):
        path = self._known.get(name)
        if path is None:
            path = os.path.join(self.tensor_dir, layout.tensor_filename(name))
            self._known[name] = path
        return self._file(path, "tensor", name)

    def _row_files(self, names: list[str]) -> list[tuple[int, int, str, dict[str, Any]]]:
        """The rows files of a row of scalars named ``names`` (worked out once per list)."""
        key = tuple(names)
        found = self._rows.get(key)
        if found is None:
            found = []
            start = 0
            while start < len(names):
                end, size = start, 0
                while end < len(names) and end - start < ROW_FILE_NAMES:
                    size += len(names[end].encode()) + 4
                    if end > start and size > ROW_FILE_NAME_BYTES:
                        break
                    end += 1
                part = names[start:end]
                path = os.path.join(self.rows_dir, layout.rows_filename(part))
                found.append((start, end, path, {"names": part}))
                start = end
            os.makedirs(self.rows_dir, exist_ok=True)
            self._rows[key] = found
        return found

    def _file(self, path: str, kind: str, name: str, **fields: Any):
        """The open file at ``path`` (opened, with its header, on first use; the least
        recently written closed when max_open_files are open)."""
        files = self._files
        fh = files.get(path)
        if fh is not None:
            # least recently written first: the order only matters once the limit is reached
            if len(files) >= self.max_open_files:
                files.move_to_end(path)
            return fh
        if len(files) >= self.max_open_files:
            old_path, old = files.popitem(last=False)
            self._lengths[old_path] = os.fstat(old.fileno()).st_size
            if self.fsync:  # the commit's fsync only reaches files still open
                os.fsync(old.fileno())
            old.close()
        fh = files[path] = self._open(path, kind, name, **fields)
        return fh

    def _write_worker_file(self) -> None:
        _atomic_write_json(
            os.path.join(self.worker_dir, layout.WORKER_FILE),
            {
                "worker": self.worker,
                "rank": self.rank,
                "num_workers": self.num_workers,
                "metadata": self._metadata,
                "collections": self._collections,
            },
        )

    # -- public API ----------------------------------------------------------------------------

    def write(
        self,
        name: str,
        array: Any,
        step: int,
        mode: ModeKeys | str | int = ModeKeys.TRAIN,
        mode_step: int | None = None,
        wall_time: float | None = None,
    ) -> None:
        """Append ``array`` as tensor ``name`` at global ``step`` in ``mode``.

        ``mode_step`` defaults to a per-mode counter of the global steps written in that mode
        (0, 1, 2, ...), which is what SageMaker Debugger counts when every step is saved.
        Writing a newer step commits the previous one. A :class:`~.format.Fraction` (unsigned
        counts over a denominator) is stored as a fraction record and reads back as float32
        ``counts / denominator``: fractions of a batch in a quarter of float32's bytes.
        """
        self._check_open()
        step, mode_key, new_step = check_write(
            name, step, mode, mode_step, self._current, self._last_committed
        )
        if new_step:
            self.end_step()
            wall = time.time() if wall_time is None else float(wall_time)
            self._current = open_step(step, mode_key, mode_step, wall, self._mode_counts)
        cur = self._current
        if name in self._written_this_step:
            raise ValueError(f"tensor {name!r} written twice at step {step}")
        arr = stored_value(array)
        head, payload = encode_record_parts(
            arr, step=cur[0], mode=cur[1], mode_step=cur[2], wall_time=cur[3]
        )
        write_parts(self._tensor_fh(name), head, payload)
        self._written_this_step.add(name)

    def write_step(
        self,
        step: int,
        arrays: list[tuple[str, np.ndarray | np.generic | Fraction]],
        mode: ModeKeys | str | int = ModeKeys.TRAIN,
        mode_step: int | None = None,
        wall_time: float | None = None,
        *,
        scalars: list[tuple[list[str], np.ndarray]] = (),  # type: ignore[assignment]
    ) -> None:
        """Write every tensor of global ``step`` and commit it: :meth:`write` for each, then
        :meth:`end_step`, with the step checked once and less Python per record (the Recorder
        writes a few dozen records a step from a thread that shares the interpreter with the
        training loop). ``arrays``: ``(name, numpy array or scalar)`` pairs; ``scalars``:
        ``(names, 1-D array)`` pairs, element ``i`` the value of tensor ``names[i]`` (a 0-d
        array when read), written as one record of a rows file (docs/format.md): the norms
        of every parameter in one system call instead of one per parameter."""
        self._check_open()
        names = [name for name, _ in arrays]
        for row_names, values in scalars:
            if np.ndim(values) != 1 or len(row_names) != len(values):
                raise ValueError(
                    f"{len(row_names)} names for scalar values of shape {np.shape(values)}"
                )
            names.extend(row_names)
        if not names:
            return
        # checked before anything is written: a refused call leaves no half-written step
        # (set operations, in C: a default ResNet-18 step has about 200 names)
        if set(map(type, names)) != {str} or "" in (unique := set(names)):
            raise ValueError("a tensor name must be a non-empty string")
        if not unique <= self._names_checked:  # names new to this writer: printable?
            check_printable(list(unique - self._names_checked))
            self._names_checked |= unique
        step, mode_key, new_step = check_write(
            names[0], step, mode, mode_step, self._current, self._last_committed
        )
        before = set() if new_step else self._written_this_step  # the open step's
        if len(unique) != len(names) or not unique.isdisjoint(before):
            twice = next(n for i, n in enumerate(names) if n in names[:i] or n in before)
            raise ValueError(f"tensor {twice!r} written twice at step {step}")
        if new_step:
            self.end_step()
            wall = time.time() if wall_time is None else float(wall_time)
            self._current = open_step(step, mode_key, mode_step, wall, self._mode_counts)
        cur_step, cur_mode, cur_mode_step, cur_wall = self._current  # type: ignore[misc]
        step_fields = (cur_step, cur_mode, cur_mode_step, cur_wall)
        written = self._written_this_step
        fh_of = self._tensor_fh
        for name, array in arrays:
            if not isinstance(array, (np.ndarray, np.generic)):
                array = stored_value(array)
            head, payload = encode_record_fast(array, cur_step, cur_mode, cur_mode_step, cur_wall)
            write_parts(fh_of(name), head, payload)
            written.add(name)
        for row_names, values in scalars:
            if not row_names:
                continue
            row = np.asarray(values)
            for start, end, path, header in self._row_files(row_names):
                part = row[start:end] if end - start < len(row) else row
                head, payload = encode_record_fast(part, *step_fields)
                write_parts(self._file(path, "rows", "", **header), head, payload)
            written.update(row_names)
        self.end_step()

    def end_step(self) -> None:
        """Commit the open step: from now on readers see it (and a crash cannot lose it)."""
        cur = self._current
        if cur is None:
            return
        if self.fsync:
            for fh in self._files.values():
                os.fsync(fh.fileno())
        self._steps_fh.write(
            encode_record(_EMPTY, step=cur[0], mode=cur[1], mode_step=cur[2], wall_time=cur[3])
        )
        if self.fsync:
            os.fsync(self._steps_fh.fileno())
        self._last_committed = cur[0]
        self._current = None
        self._written_this_step.clear()

    def update_metadata(self, values: dict[str, Any] | None = None, **more: Any) -> None:
        """Merge JSON-able values (class names, the recipe, ...) into the run's metadata."""
        self._check_open()
        self._metadata.update(values or {})
        self._metadata.update(more)
        self._write_worker_file()

    def set_collections(self, collections: dict[str, Any]) -> None:
        """Record which tensors belong to which collection (name -> {"tensor_names": [...]}).
        A collection name no reader accepts (a control character) is a ValueError."""
        self._check_open()
        check_printable([str(name) for name in collections], "collection")
        self._collections = dict(collections)
        self._write_worker_file()

    @property
    def last_committed_step(self) -> int:
        """The newest committed global step, -1 before the first."""
        return self._last_committed

    def _remote_fs(self):
        import fsspec

        return fsspec.core.url_to_fs(self.url, **self.storage_options)

    def _check_remote_free(self, worker: str) -> None:
        fs, root = self._remote_fs()
        steps = f"{root.rstrip('/')}/{layout.WORKERS_DIR}/{worker}/{layout.STEPS_FILE}"
        if fs.exists(steps):
            raise FileExistsError(
                f"{self.url} already holds a recorded run for worker {worker!r}; "
                "choose a new location (nothing recorded is ever overwritten)"
            )

    def sync(self) -> None:
        """Upload the staged run to its URL (no-op for local runs).

        Files go up in commit order: tensor files, then worker.json, then steps.mrt, then END,
        so that a reader of the URL never sees a committed step whose records are not there
        yet (each object store write is atomic). Only files changed since the last sync are
        sent.
        """
        if not self.remote:
            return
        for fh in self._files.values():
            fh.flush()
        fs, root = self._remote_fs()
        order = {layout.WORKER_FILE: 1, layout.STEPS_FILE: 2, layout.END_FILE: 3}
        todo = []
        for dirpath, _dirs, files in os.walk(self.root):
            for fname in files:
                if fname.endswith(".tmp"):
                    continue
                src = os.path.join(dirpath, fname)
                rel = os.path.relpath(src, self.root).replace(os.sep, "/")
                st = os.stat(src)
                stamp = (st.st_size, st.st_mtime_ns)
                if self._uploaded.get(rel) == stamp:
                    continue
                rank = -1 if rel == layout.RUN_FILE else order.get(fname, 0)
                todo.append((rank, rel, src, stamp))
        for _rank, rel, src, stamp in sorted(todo):
            fs.put_file(src, f"{root.rstrip('/')}/{rel}")
            self._uploaded[rel] = stamp

    def close(self, reason: str | None = None) -> None:
        """Commit the last step, mark this worker ended (END: an optional stop reason and the
        length of every file written, so that a reader can tell a cut or deleted file), sync.

        For a URL, the staging folder is removed only once everything is uploaded; when the
        upload fails the error names the folder that still holds the run.
        """
        if self.closed:
            return
        check_end_reason(reason)
        self.end_step()
        lengths = self._final_lengths()
        for fh in self._files.values():
            fh.close()
        self._files.clear()
        self._steps_fh.close()
        end: dict[str, Any] = {"wall_time": time.time(), "last_step": self._last_committed}
        if reason:
            end["reason"] = reason
        end["files"] = lengths
        _atomic_write_json(os.path.join(self.worker_dir, layout.END_FILE), end)
        self.closed = True
        if self.remote:
            try:
                self.sync()
            except Exception as exc:
                raise OSError(
                    f"uploading the run to {self.url} failed ({exc}); "
                    f"the recorded run is kept in {self.root}"
                ) from exc
            shutil.rmtree(self.root, ignore_errors=True)

    def _final_lengths(self) -> dict[str, int]:
        """END's ``"files"``: every file this writer wrote (tensor files, rows files,
        steps.mrt), by its path below the worker folder ('/' separated), with its length now,
        after the last commit. The length is what is on disk through the writer's own
        descriptors (fstat), so a torn record a failed write left at a file's end is counted:
        a reader then finds exactly this length, and only a later cut or deletion is short."""
        lengths = dict(self._lengths)
        for path, fh in self._files.items():
            lengths[path] = os.fstat(fh.fileno()).st_size
        lengths[self._steps_fh.name] = os.fstat(self._steps_fh.fileno()).st_size
        base = self.worker_dir
        return {
            os.path.relpath(path, base).replace(os.sep, "/"): size for path, size in lengths.items()
        }

    def abort(self) -> None:
        """Close files without committing the open step or marking the end (used after errors)."""
        for fh in self._files.values():
            with contextlib.suppress(OSError):
                fh.close()
        self._files.clear()
        with contextlib.suppress(OSError):
            self._steps_fh.close()
        self.closed = True

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError("this RunWriter is closed")

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(self, exc_type: type | None, *exc: object) -> None:
        if exc_type is not None and not self.closed:
            # the step in flight may be half written: drop it rather than commit it
            self._current = None
            self._written_this_step.clear()
            self.close(reason=f"error: {exc_type.__name__}")
        else:
            self.close()
