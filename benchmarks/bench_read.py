"""Benchmark: open a run and read every value, native layout vs the SageMaker Debugger layout.

    python benchmarks/bench_read.py [--steps 2000] [--repeats 7] [--quick]

Builds one run of ``--steps`` steps x (loss scalar, 64x43 float32 logits, 64 int64 labels)
in both layouts in a temporary folder, then measures in this one process, best of
``--repeats``: ``open_run(path)`` followed by ``tensor(name).values()`` for every tensor.
The reference is smdebug's own reader on that workload: 0.65 s (measured by the project
on its 2-core machine). When the ``smdebug`` package happens to be importable it is
measured too, on the same files. ``--quick`` (a few steps, one repeat) only checks that the
script works.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pytest_modelrules.store import RunWriter, open_run
from pytest_modelrules.store.smdebug_writer import SMDebugWriter

SMDEBUG_REFERENCE_S = 0.65
NAMES = ("CrossEntropyLoss_output_0", "CrossEntropyLoss_input_0", "CrossEntropyLoss_input_1")


def build(root: Path, steps: int, seed: int = 0) -> tuple[Path, Path]:
    """The same values in both layouts: (native path, smdebug path)."""
    rng = np.random.default_rng(seed)
    native, smd = root / "native", root / "smdebug"
    with RunWriter(native) as nw:
        sw = SMDebugWriter(smd)
        for g in range(steps):
            values = (
                np.float32(rng.random()),
                rng.standard_normal((64, 43)).astype(np.float32),
                rng.integers(0, 43, 64).astype(np.int64),
            )
            for name, val in zip(NAMES, values):
                nw.write(name, val, g, "TRAIN", g, wall_time=1.6e9 + g)
                sw.write(name, val, g, "TRAIN", g, wall_time=1.6e9 + g)
        sw.close()
    return native, smd


def read_all(path: Path) -> int:
    """Open the run and read every value of every tensor; the number of values read."""
    run = open_run(path)
    n = 0
    for name in run.tensor_names():
        n += len(run.tensor(name).values())
    return n


def read_all_smdebug(path: Path) -> int:
    from smdebug.trials import create_trial  # type: ignore[import-not-found]

    trial = create_trial(str(path))
    n = 0
    for name in trial.tensor_names():
        t = trial.tensor(name)
        for step in t.steps():
            t.value(step)
            n += 1
    return n


def best_of(fn, path: Path, repeats: int) -> tuple[float, float, int]:
    """(best wall time, best CPU time of this process, values read) over ``repeats`` runs.

    CPU time is reported too because it is what a loaded machine distorts least."""
    best = cpu_best = float("inf")
    count = 0
    for _ in range(repeats):
        gc.collect()
        c0 = time.process_time()
        t0 = time.perf_counter()
        count = fn(path)
        best = min(best, time.perf_counter() - t0)
        cpu_best = min(cpu_best, time.process_time() - c0)
    return best, cpu_best, count


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="20 steps, 1 repeat: a smoke test")
    args = ap.parse_args(argv)
    if args.quick:
        args.steps, args.repeats = 20, 1
    with tempfile.TemporaryDirectory(prefix="bench-read-") as tmp:
        native, smd = build(Path(tmp), args.steps)
        expected = args.steps * len(NAMES)
        rows = []
        for label, fn, path in (
            ("native layout (pytest-modelrules)", read_all, native),
            ("smdebug layout (pytest-modelrules)", read_all, smd),
        ):
            t, cpu, n = best_of(fn, path, args.repeats)
            if n != expected:
                raise SystemExit(f"{label}: read {n} values, expected {expected}")
            rows.append((label, t, cpu))
        try:
            import smdebug  # type: ignore[import-not-found]  # noqa: F401
        except ImportError:
            smdebug_note = "smdebug not importable: its reader not measured here"
        else:
            t, cpu, _ = best_of(read_all_smdebug, smd, max(1, args.repeats // 3))
            rows.append(("smdebug layout (smdebug's own reader)", t, cpu))
            smdebug_note = ""
    print(
        f"open + read every value: {args.steps} steps x {len(NAMES)} tensors "
        f"(loss, 64x43 float32 logits, 64 int64 labels), best of {args.repeats}"
    )
    print(f"{'reader':<38} {'wall':>10} {'cpu':>10} {'vs smdebug 0.65 s (wall)':>25}")
    for label, t, cpu in rows:
        print(
            f"{label:<38} {t * 1e3:>7.1f} ms {cpu * 1e3:>7.1f} ms {SMDEBUG_REFERENCE_S / t:>24.1f}x"
        )
    if smdebug_note:
        print(smdebug_note)
    print(f"(python {sys.version.split()[0]}, numpy {np.__version__}, {os.cpu_count()} cpus)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
