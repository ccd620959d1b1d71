"""The overhead benchmark runs (``--quick``) and prints its table; no timing is asserted."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("torchvision")
BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_capture.py"


def test_bench_capture_quick(capsys):
    spec = importlib.util.spec_from_file_location("bench_capture", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    ratios = module.main(["--quick"])
    out = capsys.readouterr().out
    assert "ResNet-18" in out and "median step (ms)" in out
    for label in ("no recorder", "save_interval=500", "save_interval=1"):
        assert label in out and ratios[label] > 0
    assert ratios["no recorder"] == 1.0
