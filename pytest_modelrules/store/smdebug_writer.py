"""A minimal writer of SageMaker Debugger's layout, for tests, benchmarks and fixtures.

It writes what smdebug 1.0's own writer writes, byte for byte for the events (checked
against shared/fixtures): one event file and one index file per (global step, worker), both
written as ``*.tmp`` and renamed when complete, the collections file with
``_meta.num_workers``, and ``training_job_end.ts`` on :meth:`SMDebugWriter.close`.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import numpy as np

from ..modes import ModeKeys, parse_mode
from .smdebug import COLLECTIONS_DIR, END_MARKER, EVENTS_DIR, INDEX_DIR
from .tfrecord import encode_event, frame_record
from .writer import to_numpy


def _write_atomic(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


class SMDebugWriter:
    """Write one worker's tensors in SageMaker Debugger's layout, step by step.

    ``write_checksum=True`` puts the payload's real CRC32C in each record's footer (what
    TensorFlow writes) instead of smdebug's constant.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        worker: str = "worker_0",
        *,
        num_workers: int = 1,
        collections: dict[str, Any] | None = None,
        write_checksum: bool = False,
    ) -> None:
        self.path = os.fspath(path)
        self.worker = worker
        self.num_workers = num_workers
        self.write_checksum = write_checksum
        self.closed = False
        self._step: tuple[int, int, int] | None = None  # global step, mode, mode step
        self._events: list[tuple[str, bytes]] = []
        self._mode_counts: dict[int, int] = {}
        self._last = -1
        os.makedirs(self.path, exist_ok=True)
        cols = {"collections": collections or {}, "_meta": {"num_workers": num_workers}}
        _write_atomic(
            os.path.join(self.path, COLLECTIONS_DIR, "000000000", f"{worker}_collections.json"),
            json.dumps(cols).encode(),
        )

    def write(
        self,
        name: str,
        array: Any,
        step: int,
        mode: ModeKeys | str | int = ModeKeys.TRAIN,
        mode_step: int | None = None,
        wall_time: float | None = None,
    ) -> None:
        """Add tensor ``name`` at global ``step``; a newer step closes the older one's files."""
        if self.closed:
            raise ValueError("this SMDebugWriter is closed")
        step = int(step)
        m = int(parse_mode(mode, allow_none=False))
        if self._step is None or step != self._step[0]:
            if step <= self._last:
                raise ValueError(f"step {step} written after step {self._last}")
            self.end_step()
            if mode_step is None:
                mode_step = self._mode_counts.get(m, 0)
            self._step = (step, m, int(mode_step))
            self._mode_counts[m] = int(mode_step) + 1
        elif m != self._step[1]:
            raise ValueError(f"step {step} was opened in mode {ModeKeys(self._step[1]).name}")
        if any(n == name for n, _ in self._events):
            raise ValueError(f"tensor {name!r} written twice at step {step}")
        g, m, ms = self._step
        wall = time.time() if wall_time is None else float(wall_time)
        arr = to_numpy(array) if not isinstance(array, np.ndarray) else array
        payload = encode_event(name, arr, step=g, wall_time=wall, mode=m, mode_step=ms)
        self._events.append((name, frame_record(payload, checksum=self.write_checksum)))

    def end_step(self) -> None:
        """Write the open step's event file, then its index file (which commits the step)."""
        if self._step is None:
            return
        g, m, ms = self._step
        rel_event = f"{EVENTS_DIR}/{g:012d}/{g:012d}_{self.worker}.tfevents"
        payload = []
        pos = 0
        for name, rec in self._events:
            payload.append({"tensorname": name, "start_idx": pos, "length": len(rec)})
            pos += len(rec)
        _write_atomic(os.path.join(self.path, rel_event), b"".join(r for _, r in self._events))
        index = {
            "meta": {"mode": ModeKeys(m).name, "mode_step": ms, "event_file_name": rel_event},
            "tensor_payload": payload,
            "shape_payload": [],
        }
        _write_atomic(
            os.path.join(self.path, INDEX_DIR, f"{g // 1000:09d}", f"{g:012d}_{self.worker}.json"),
            json.dumps(index).encode(),
        )
        self._last = g
        self._step = None
        self._events = []

    def close(self, end_of_job: bool = True) -> None:
        """Write the last step and (by default) the end-of-training marker."""
        if self.closed:
            return
        self.end_step()
        if end_of_job:
            _write_atomic(os.path.join(self.path, END_MARKER), b"")
        self.closed = True

    def __enter__(self) -> SMDebugWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
