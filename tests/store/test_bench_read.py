"""benchmarks/bench_read.py runs and prints its table (its timings are not asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_bench_read_quick_prints_the_table():
    out = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_read.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert "20 steps x 3 tensors" in out
    lines = {line.split("  ")[0]: line for line in out.splitlines()}
    for label in ("native layout (pytest-modelrules)", "smdebug layout (pytest-modelrules)"):
        row = lines[label]
        assert " ms " in row and row.rstrip().endswith("x")
    assert "vs smdebug 0.65 s" in out
