"""Benchmark: what the Recorder's writer costs a launch-bound training thread, as a thread and
as a separate process, side by side in one run.

    python benchmarks/bench_writer_gil.py [--rounds 30] [--ops 3000] [--json PATH] [--quick]

A batch-64 ResNet-18 step in bf16 on a GPU is bound by the host launching kernels: the
training thread runs thousands of small torch calls, each of which releases Python's GIL.
A writer *thread* in that process takes the GIL whenever it runs Python, and at every return
from a call that released it (each CRC of a large payload, each ``writev``); each time, the
training thread waits for the GIL and is then woken. A writer *process* shares no GIL, only
the machine's cores, caches and memory bandwidth.

Measured here, with no GPU needed (the writer's work is the host's): a "probe" step of
``--ops`` tiny torch operations on the main thread (a stand-in for a launch-bound step),
timed alone and while one step of the seed's scale is written (``RunWriter.write_step`` of
the records the Recorder writes at 224 px with the default collections and the Triton count
kernel: 17 fraction records of uint8 ReLU counts, 2.3 MB; loss inputs and output; each
sample's input channel means; 3 rows of parameter norms), rounds interleaved:

- ``writer thread``: the write on a thread of this process, as the Recorder does it;
- ``writer process``: the same write in a forked process (Linux; skipped where fork is
  unavailable);
- two controls on a thread: one call that releases the GIL for its whole length (a CRC32 of
  the step's bytes), and pure Python of about a millisecond.

"added" is the probe step's median minus its median alone; thread minus process is what the
GIL costs (the process pays only for sharing the machine). ``--quick`` (ResNet-18 at 32 px,
a few rounds) only checks that the script works. On a machine whose CPUs share cores (the
project's 2-core VM) two processes slow each other too; run it on the GPU machine's host for
the figure that matters there (``benchmarks/gpu_figures.sh`` does).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pytest_modelrules.store import RunWriter
from pytest_modelrules.store.format import Fraction
from pytest_modelrules.store.names import reduction_tensor_name

Arrays = list[tuple[str, Any]]
Scalars = list[tuple[list[str], np.ndarray]]


def seed_step(size: int = 224, batch: int = 64, classes: int = 43) -> tuple[Arrays, Scalars]:
    """The arrays and rows one saving step of the default collections writes for ResNet-18 at
    ``size`` px (the Triton kernel's uint8 counts; bf16 logits stored as float32), with the
    Recorder's tensor names and random values: what the writer thread gets from
    ``capture.host.unpack_step``."""
    import torch
    import torchvision

    rng = np.random.default_rng(0)
    model = torchvision.models.resnet18(weights=None, num_classes=classes).eval()
    shapes: list[tuple[str, tuple[int, ...]]] = []
    calls: dict[str, int] = {}

    def hook(name: str) -> Callable[..., None]:
        def record(_module: Any, _args: Any, out: torch.Tensor) -> None:
            k = calls.get(name, 0)
            calls[name] = k + 1
            shapes.append((f"{name}_output_{k}", tuple(out.shape[1:])))

        return record

    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ReLU):
            module.register_forward_hook(hook(name))
    with torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    arrays: Arrays = [
        (
            reduction_tensor_name(name, "positive_fraction"),
            Fraction(rng.integers(0, batch + 1, size=math.prod(shape), dtype=np.uint8), batch),
        )
        for name, shape in shapes
    ]
    arrays += [
        ("CrossEntropyLoss_input_0", rng.standard_normal((batch, classes), dtype=np.float32)),
        ("CrossEntropyLoss_input_1", rng.integers(0, classes, batch, dtype=np.int64)),
        ("CrossEntropyLoss_output_0", np.float32(rng.random())),
        (
            reduction_tensor_name("ResNet_input_0", "sample_channel_mean"),
            rng.standard_normal((batch, 3)),  # float64, as stored
        ),
    ]
    params = [name for name, _ in model.named_parameters()]
    scalars: Scalars = [
        ([reduction_tensor_name(p, "l2") for p in params], rng.random(len(params))),
        (
            [reduction_tensor_name(f"gradient/{p}", "l2") for p in params],
            rng.random(len(params)),
        ),
        (
            [reduction_tensor_name(f"gradient/{p}", "mean", True) for p in params],
            rng.random(len(params)),
        ),
    ]
    return arrays, scalars


def step_bytes(arrays: Arrays) -> int:
    """Payload bytes of a step's arrays (fraction records: their counts)."""
    return sum(np.asarray(a.counts if isinstance(a, Fraction) else a).nbytes for _, a in arrays)


class Writes:
    """Writes the step again and again into one run (a new global step each time)."""

    def __init__(self, path: Path, arrays: Arrays, scalars: Scalars) -> None:
        self.writer = RunWriter(path)
        self.arrays, self.scalars = arrays, scalars
        self.step = 0

    def __call__(self) -> None:
        self.writer.write_step(self.step, self.arrays, scalars=self.scalars)
        self.step += 1


def _child(conn: Any, path: str, arrays: Arrays, scalars: Scalars) -> None:
    """The writer process: one step written per message, its CPU time sent back."""
    write = Writes(Path(path), arrays, scalars)
    while conn.recv():
        start = time.thread_time()
        write()
        conn.send(time.thread_time() - start)
    write.writer.close()


class _Worker:
    """A job run on demand on another thread (``kind="thread"``) or process."""

    def __init__(self, kind: str, job: Callable[[], None] | None = None, child: tuple = ()) -> None:
        self.kind = kind
        self.cpu: list[float] = []
        if kind == "process":
            ctx = mp.get_context("fork")
            self.conn, there = ctx.Pipe()
            self.proc = ctx.Process(target=_child, args=(there, *child), daemon=True)
            self.proc.start()
        else:
            self.job = job
            self.go, self.done = threading.Semaphore(0), threading.Semaphore(0)
            self.stop = False
            self.thread = threading.Thread(target=self._loop, daemon=True)
            self.thread.start()

    def _loop(self) -> None:
        while True:
            self.go.acquire()
            if self.stop:
                return
            start = time.thread_time()
            self.job()  # type: ignore[misc]
            self.cpu.append(time.thread_time() - start)
            self.done.release()

    def start(self) -> None:
        if self.kind == "process":
            self.conn.send(True)
        else:
            self.go.release()

    def wait(self) -> None:
        if self.kind == "process":
            self.cpu.append(self.conn.recv())
        else:
            self.done.acquire()

    def close(self) -> None:
        if self.kind == "process":
            self.conn.send(False)
            self.proc.join(timeout=60)
        else:
            self.stop = True
            self.go.release()
            self.thread.join(timeout=60)


def probe_step(ops: int) -> float:
    """Seconds for ``ops`` tiny torch operations (each releases the GIL, as a launch does)."""
    import torch

    t = _PROBE.get("t")
    if t is None:
        t = _PROBE["t"] = torch.zeros(4)
    start = time.perf_counter()
    for _ in range(ops):
        t.add_(1)
    return time.perf_counter() - start


_PROBE: dict[str, Any] = {}


def _python_ms() -> None:
    """About a millisecond of pure Python (holds the GIL throughout)."""
    total = 0
    for i in range(40_000):
        total += i


def measure(variants: dict[str, _Worker], rounds: int, ops: int) -> dict[str, list[float]]:
    """Probe step times per variant, rounds interleaved: alone, then with each worker busy
    (started right before the probe; waited for, and the machine let settle, after)."""
    times: dict[str, list[float]] = {"alone": [], **{name: [] for name in variants}}
    for _ in range(3):
        probe_step(ops)
    for _ in range(rounds):
        times["alone"].append(probe_step(ops))
        for name, worker in variants.items():
            worker.start()
            times[name].append(probe_step(ops))
            worker.wait()
            time.sleep(0.005)
    return times


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--ops", type=int, default=3000, help="tiny torch operations per probe step")
    ap.add_argument("--size", type=int, default=224, help="image size of the recorded step")
    ap.add_argument("--json", help="write the figures to this file")
    ap.add_argument("--quick", action="store_true", help="32 px, 3 rounds: a smoke test")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.ops, args.size = 3, 300, 32
    import torch

    torch.set_num_threads(1)
    arrays, scalars = seed_step(args.size)
    nbytes = step_bytes(arrays)
    counts = [a.counts.reshape(-1) for _, a in arrays if isinstance(a, Fraction)]
    blob = memoryview(np.concatenate(counts))  # the bytes the step's large CRCs read
    tmp = Path(tempfile.mkdtemp(prefix="bench-writer-gil-"))
    variants: dict[str, _Worker] = {}
    # the process first: forked before this process starts any thread of its own
    if "fork" in mp.get_all_start_methods():
        variants["writer process"] = _Worker(
            "process", child=(str(tmp / "process"), arrays, scalars)
        )
    thread_writes = Writes(tmp / "thread", arrays, scalars)
    variants["writer thread"] = _Worker("thread", thread_writes)
    variants["control: one GIL-free call (CRC32)"] = _Worker("thread", lambda: zlib.crc32(blob))
    variants["control: pure Python"] = _Worker("thread", _python_ms)
    try:
        times = measure(variants, args.rounds, args.ops)
    finally:
        for worker in variants.values():
            worker.close()
        thread_writes.writer.close()
        shutil.rmtree(tmp, ignore_errors=True)
    alone = statistics.median(times["alone"])
    print(
        f"one step of ResNet-18 at {args.size} px: {len(arrays)} records ({nbytes / 1e6:.2f} MB) "
        f"and {len(scalars)} rows; probe step: {args.ops} tiny torch operations; {args.rounds} "
        f"rounds, interleaved; {os.cpu_count()} CPUs"
    )
    print(f"{'variant':38s} {'probe step (ms)':>16s} {'added (ms)':>11s} {'worker CPU (ms)':>16s}")
    print(f"{'alone':38s} {1e3 * alone:16.2f} {0:11.2f} {0:16.2f}")
    added: dict[str, float] = {}
    for name, worker in variants.items():
        median = statistics.median(times[name])
        added[name] = median - alone
        cpu = statistics.median(worker.cpu) if worker.cpu else float("nan")
        print(f"{name:38s} {1e3 * median:16.2f} {1e3 * added[name]:11.2f} {1e3 * cpu:16.2f}")
    if "writer process" in added:
        gil = added["writer thread"] - added["writer process"]
        print(f"the GIL's share (thread - process): {1e3 * gil:.2f} ms a step")
    else:
        print("no fork on this platform: the writer process was not measured")
    if args.json:
        figures = {
            "size": args.size, "ops": args.ops, "rounds": args.rounds, "step_bytes": nbytes,
            "alone_s": alone, "added_s": added,
            "worker_cpu_s": {n: statistics.median(w.cpu) for n, w in variants.items() if w.cpu},
        }  # fmt: skip
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return added


if __name__ == "__main__":
    main()
