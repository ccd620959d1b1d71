"""The Recorder's writer in a process of its own: ``Recorder(..., writer_process=True)``.

Why: a batch-64 bf16 step on a GPU is bound by the host launching kernels, and a writer
*thread* shares the training thread's GIL. Each of its returns from a call that released the
GIL (a CRC, a ``writev``, some forty a seed-scale step) makes the training thread wait and be
woken: ``benchmarks/bench_writer_gil.py`` measured the thread at 1.75-2.37 ms added to a
launch-bound step on the 2-core VM, the same write in a process at -0.07-0.73 ms.

How: the Recorder's writer thread still waits for a step's copies to the host (CUDA events
live in the training process); then, instead of splitting and writing them, it sends the
transferred bytes and their segments down a pipe (one system call for the bytes) and waits for
the process's answer. The process (``python -m pytest_modelrules.capture.writer_process``:
numpy and the store only, no torch) splits them with the same code (capture/host.py) and
writes the step with a ``RunWriter``. Layouts travel once, as JSON (no pickle in either
direction); later steps name them by number.

What it keeps: every promise of the thread. A step is committed by the process before the
Recorder's thread hands the next one over (the rule monitor hears of it then). A failure in
the process (the disk) comes back as that step's answer: the Recorder reports it once and
stops recording. If the process dies, the next step finds the pipe closed: the same. If the
training process dies (``kill -9``), the process reads the end of its input, keeps every step
it committed and leaves the run unended, as a killed thread-writing run is.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import struct
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..store.writer import RunWriter, _json_default
from .host import layout_from_json, layout_to_json, write_blobs

#: a message: header JSON length, payload length; then the header, then the payload
_FRAME = struct.Struct("<IQ")
_MAX_HEADER = 256 << 20
#: seconds close() waits for the process to finish the run and exit
CLOSE_TIMEOUT_S = 120.0


class WriterProcessError(RuntimeError):
    """The writer process failed (its message says how) or is gone."""


def _write_all(fd: int, parts: list[Any]) -> None:
    """Write every byte of ``parts`` to ``fd`` (a pipe may take a large write in pieces)."""
    views = [memoryview(p).cast("B") for p in parts if len(p)]
    while views:
        done = os.writev(fd, views)
        while views and done >= len(views[0]):
            done -= len(views[0])
            views.pop(0)
        if done:
            views[0] = views[0][done:]


def _read_exact(stream: Any, n: int) -> bytes | None:
    """``n`` bytes from ``stream``; None at the end of input (before or inside them)."""
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = stream.readinto(view[got:])
        if not k:
            return None
        got += k
    return bytes(buf)


class ProcessWriter:
    """The part of ``RunWriter``'s API the Recorder uses, carried out by a writer process."""

    remote = False

    def __init__(
        self,
        path: str | os.PathLike,
        worker: str = "worker_0",
        *,
        rank: int = 0,
        num_workers: int = 1,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self.path = os.fspath(path)
        self.closed = False
        self._lock = threading.Lock()
        self._layouts: dict[int, tuple[int, Any]] = {}  # id(layout) -> (number, layout)
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[2])  # where pytest_modelrules is
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "pytest_modelrules.capture.writer_process"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, bufsize=0,
        )  # fmt: skip
        self._request(
            {"op": "open", "path": self.path, "worker": worker, "rank": rank,
             "num_workers": num_workers, "metadata": metadata or {}},
            opening=True,
        )  # fmt: skip

    @property
    def pid(self) -> int:
        return self._proc.pid

    def _request(
        self, head: dict[str, Any], payload: Sequence[Any] = (), opening: bool = False
    ) -> None:
        """Send one message and wait for the process's answer; raise what it reports."""
        raw = json.dumps(head, default=_json_default).encode()
        size = sum(memoryview(p).nbytes for p in payload)
        with self._lock:
            try:
                _write_all(self._proc.stdin.fileno(), [_FRAME.pack(len(raw), size), raw, *payload])
                answer = self._proc.stdout.readline()
            except (BrokenPipeError, ConnectionResetError, ValueError):
                answer = b""
            if not answer:
                code = self._proc.poll()
                raise WriterProcessError(
                    f"the writer process of {self.path} is gone (exit code {code})"
                )
        reply = json.loads(answer)
        error = reply.get("error")
        if error is not None:
            if opening:  # as RunWriter's own construction would raise
                kind = {"FileExistsError": FileExistsError, "ValueError": ValueError}.get(
                    reply.get("type"), OSError
                )
                raise kind(reply.get("message", error))
            raise WriterProcessError(f"the writer process failed: {error}")

    def _layout_numbers(self, blobs: list[tuple[list[Any], np.ndarray]]) -> tuple[list, dict]:
        """The blobs' segments with layouts as numbers, and the layouts new to the process."""
        new: dict[str, Any] = {}
        described = []
        for segments, data in blobs:
            segs = []
            for key, entries in segments:
                numbered = []
                for n, layout in entries:
                    known = self._layouts.get(id(layout))
                    if known is None:  # the layout is kept: its id is not reused
                        known = self._layouts[id(layout)] = (len(self._layouts), layout)
                        new[str(known[0])] = layout_to_json(layout)
                    numbered.append((n, known[0]))
                segs.append((key, numbered))
            described.append((int(data.nbytes), segs))
        return described, new

    def write_blobs(
        self,
        step: int,
        mode: int,
        mode_step: int,
        blobs: list[tuple[list[Any], np.ndarray]],
        collections: dict[str, Any] | None = None,
        dropped: set[str] | None = None,
    ) -> None:
        """Have the process split the step's transferred buffers (capture/host.py) and write
        and commit the step; returns once it is committed."""
        described, new = self._layout_numbers(blobs)
        head = {
            "op": "step", "step": int(step), "mode": int(mode), "mode_step": int(mode_step),
            "blobs": described, "layouts": new, "collections": collections,
            "dropped": sorted(dropped) if dropped else None,
        }  # fmt: skip
        self._request(head, [data for _, data in blobs])

    def update_metadata(self, values: dict[str, Any] | None = None, **more: Any) -> None:
        self._request({"op": "metadata", "values": {**dict(values or {}), **more}})

    def set_collections(self, collections: dict[str, Any]) -> None:
        self._request({"op": "collections", "value": collections})

    def sync(self) -> None:
        """Nothing to upload: the process writes a local run."""

    def close(self, reason: str | None = None) -> None:
        """Commit the last step, mark the worker ended, and wait for the process to exit."""
        if self.closed:
            return
        self.closed = True
        try:
            self._request({"op": "close", "reason": reason})
        finally:
            self._finish()

    def abort(self) -> None:
        """Close the run's files without marking the end (after an error); never raises."""
        if self.closed:
            return
        self.closed = True
        try:
            with contextlib.suppress(Exception):
                self._request({"op": "abort"})
        finally:
            self._finish()

    def _finish(self) -> None:
        for stream in (self._proc.stdin, self._proc.stdout):
            with contextlib.suppress(OSError):
                stream.close()
        try:
            self._proc.wait(timeout=CLOSE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


def _serve(inp: Any, out: Any) -> None:
    """The process's loop: one answer per message, until close, abort or end of input."""
    writer: RunWriter | None = None
    layouts: dict[int, Any] = {}

    def answer(reply: dict[str, Any]) -> None:
        try:
            out.write(json.dumps(reply).encode() + b"\n")
            out.flush()
        except OSError:  # the training process is gone: what was committed stays
            if writer is not None:
                writer.abort()
            raise SystemExit(0) from None

    while True:
        frame = _read_exact(inp, _FRAME.size)
        if frame is None:  # the training process is gone: keep what was committed
            if writer is not None:
                writer.abort()
            return
        hlen, size = _FRAME.unpack(frame)
        if hlen > _MAX_HEADER:
            answer({"error": f"message header of {hlen} bytes", "type": "ValueError"})
            return
        raw, payload = _read_exact(inp, hlen), _read_exact(inp, size)
        if raw is None or payload is None:  # cut off inside a message: the same
            if writer is not None:
                writer.abort()
            return
        head = json.loads(raw)
        op = head.get("op")
        try:
            if op == "open":
                writer = RunWriter(
                    head["path"], head["worker"], rank=head["rank"],
                    num_workers=head["num_workers"], metadata=head["metadata"],
                )  # fmt: skip
            elif writer is None:
                raise ValueError(f"{op!r} before the run was opened")
            elif op == "step":
                for number, value in head["layouts"].items():
                    layouts[int(number)] = layout_from_json(value)
                blobs, offset = [], 0
                for nbytes, segs in head["blobs"]:
                    data = np.frombuffer(payload, np.uint8, count=nbytes, offset=offset)
                    offset += nbytes
                    segments = [
                        (key, [(n, layouts[number]) for n, number in entries])
                        for key, entries in segs
                    ]
                    blobs.append((segments, data))
                write_blobs(
                    writer, head["step"], head["mode"], head["mode_step"], blobs,
                    head["collections"], set(head["dropped"] or ()),
                )  # fmt: skip
            elif op == "metadata":
                writer.update_metadata(head["values"])
            elif op == "collections":
                writer.set_collections(head["value"])
            elif op == "close":
                writer.close(reason=head.get("reason"))
            elif op == "abort":
                writer.abort()
            else:
                raise ValueError(f"unknown message {op!r}")
        except Exception as exc:
            name = type(exc).__name__
            answer({"error": f"{name}: {exc}", "message": str(exc), "type": name})
            if op == "open":
                return
            continue
        answer({"ok": True})
        if op in ("close", "abort"):
            return


def main() -> None:
    """Entry point of the writer process: messages on stdin, answers on stdout (anything
    else the process prints goes to stderr)."""
    # Ctrl-C reaches the whole process group: the training process decides what it means
    # (its Recorder closes the run with the reason); this process ends when told or at EOF
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr
    _serve(inp, out)


if __name__ == "__main__":
    main()
